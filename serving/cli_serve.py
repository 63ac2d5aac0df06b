"""`tf-minilm serve`: OpenAI-compatible embedding server over an exported ONNX folder.

Owns: the command's flags (the limits' defaults are `ServerConfig`'s). Imports:
`serving.limits`, `serving.server`, `serving.runtime` (inside `run`), `tf_minilm.argtypes`.

Imports nothing heavy at module level (no TensorFlow ever; onnxruntime and aiohttp
only inside `run`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging

from serving.limits import ServerConfig, ServerConfigError
from tf_minilm.argtypes import finite_float

HELP = ("serve an exported ONNX model folder over HTTP (POST /v1/embeddings for an encoder, "
        "POST /v1/classify for a fine-tuned classifier; GET /healthz, GET /metrics) with "
        "dynamic batching on onnxruntime")

logger = logging.getLogger(__name__)

# The flags of the `ServerConfig` limits: (flag, field, type, help); their defaults are
# ServerConfig's own. --max-body-mb (MiB) is the one whose unit differs from its field's.
LIMIT_FLAGS = (
    ("--max-batch-size", "max_batch_size", int, "most texts per model call (dynamic batch)"),
    ("--max-wait-ms", "max_wait_ms", finite_float,
     "how long a request waits for others to share its batch, in ms"),
    ("--max-queue", "max_queue", int,
     "most requests waiting for the model; more are answered 503"),
    ("--max-texts", "max_texts_per_request", int, "most texts per request"),
    ("--max-chars", "max_chars_per_text", int, "most characters per text"),
    ("--header-timeout", "header_timeout_s", finite_float,
     "seconds a client has to send a request line and headers (a slower one gets 408 and is "
     "closed)"),
    ("--keepalive-timeout", "keepalive_timeout_s", finite_float,
     "seconds an idle kept-alive connection stays open"),
    ("--max-connections", "max_connections", int,
     "most open connections in all (more are answered 503)"),
    ("--max-connections-per-client", "max_connections_per_client", int,
     "most open connections from one client address (a reverse proxy is one client)"),
    ("--shutdown-timeout", "shutdown_timeout_s", finite_float,
     "on SIGTERM/SIGINT, seconds in-flight requests may take to finish"),
)
MIB = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `serve` flags to `parser`."""
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="exported model folder (model.onnx, tokenizer.json, "
                             "export_report.json; labels.json for a classifier) or a .onnx "
                             "file inside one%(default).0s")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; anything but loopback exposes the server")
    parser.add_argument("--port", type=int, default=8080, help="TCP port")
    parser.add_argument("--model-file", default="auto",
                        help="ONNX file in MODEL_DIR: model.onnx (fp32), model.int8.onnx (int8), "
                             "or auto: int8 where it is at least 1.2x as fast as fp32 on this "
                             "kind of CPU (the export's timing, or a short one here), else fp32")
    parser.add_argument("--model-name", default=None,
                        help="model name in responses (default: the folder name)%(default).0s")
    parser.add_argument("--max-seq-len", type=int, default=None,
                        help="truncation length in tokens (default: export_report.json's "
                             "max_seq_len, else 128)%(default).0s")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads (0: one per physical core)")
    defaults = ServerConfig()
    for flag, field, kind, help_text in LIMIT_FLAGS:
        parser.add_argument(flag, type=kind, default=getattr(defaults, field), help=help_text)
    parser.add_argument("--max-body-mb", type=finite_float, default=defaults.max_body_bytes / MIB,
                        help="largest request body, in MiB")
    parser.add_argument("--access-log", action="store_true",
                        help="log one line per request")


def run(args: argparse.Namespace) -> int:
    """Serves until interrupted; returns the exit code (2 on a bad model folder/flag)."""
    from serving.runtime import ModelFolderError
    from serving.server import serve

    if args.threads < 0:
        logger.error("--threads must be >= 0, got %d", args.threads)
        return 2
    if not 0 <= args.port <= 65535:
        logger.error("--port must be in 0..65535, got %d", args.port)
        return 2
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            logger.warning("binding %s: the server is reachable from other machines", args.host)
    except ValueError:
        if args.host != "localhost":
            logger.warning("binding %s: the server may be reachable from other machines",
                           args.host)
    try:
        limits = {field: getattr(args, flag[2:].replace("-", "_"))
                  for flag, field, _, _ in LIMIT_FLAGS}
        config = ServerConfig(**limits, max_body_bytes=int(args.max_body_mb * MIB),
                              model_name=args.model_name)
        serve(args.model_dir, host=args.host, port=args.port, model_file=args.model_file,
              max_seq_len=args.max_seq_len, threads=args.threads or None, config=config,
              access_log=args.access_log)
    except ServerConfigError as err:
        flags = {field: flag for flag, field, _, _ in LIMIT_FLAGS}
        flags["max_body_bytes"] = "--max-body-mb (in bytes)"
        logger.error("%s", err.naming(flags.get(err.field, err.field)))
        return 2
    except (ModelFolderError, ValueError) as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":  # `python -m serving.cli_serve MODEL_DIR ...` (used by the load test)
    import sys

    _parser = argparse.ArgumentParser(prog="python -m serving.cli_serve", description=HELP,
                                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(_parser)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run(_parser.parse_args()))
