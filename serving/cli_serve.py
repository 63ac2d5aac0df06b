"""`tf-minilm serve`: OpenAI-compatible embedding server over an exported ONNX folder.

Owns: the command's flags. Imports: `serving.server`, `serving.runtime` (inside `run`), `tf_minilm.argtypes`.

Imports nothing heavy at module level (no TensorFlow ever; onnxruntime and aiohttp
only inside `run`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging

from tf_minilm.argtypes import finite_float

HELP = ("serve an exported ONNX model folder over HTTP (POST /v1/embeddings for an encoder, "
        "POST /v1/classify for a fine-tuned classifier; GET /healthz, GET /metrics) with "
        "dynamic batching on onnxruntime")

logger = logging.getLogger(__name__)

# The flag of each `ServerConfig` field, for its errors (--max-body-mb is given in MiB).
CONFIG_FLAGS = {
    "max_batch_size": "--max-batch-size", "max_wait_ms": "--max-wait-ms",
    "max_queue": "--max-queue", "max_texts_per_request": "--max-texts",
    "max_chars_per_text": "--max-chars", "max_body_bytes": "--max-body-mb (in bytes)",
    "header_timeout_s": "--header-timeout", "keepalive_timeout_s": "--keepalive-timeout",
    "max_connections": "--max-connections",
    "max_connections_per_client": "--max-connections-per-client",
    "shutdown_timeout_s": "--shutdown-timeout",
}


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
    parser.add_argument("--max-batch-size", type=int, default=32,
                        help="most texts per model call (dynamic batch)")
    parser.add_argument("--max-wait-ms", type=finite_float, default=2.0,
                        help="how long a request waits for others to share its batch, in ms")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="most requests waiting for the model; more are answered 503")
    parser.add_argument("--max-texts", type=int, default=256,
                        help="most texts per request")
    parser.add_argument("--max-chars", type=int, default=20_000,
                        help="most characters per text")
    parser.add_argument("--max-body-mb", type=finite_float, default=8.0,
                        help="largest request body, in MiB")
    parser.add_argument("--header-timeout", type=finite_float, default=10.0,
                        help="seconds a client has to send a request line and headers (a "
                             "slower one gets 408 and is closed)")
    parser.add_argument("--keepalive-timeout", type=finite_float, default=15.0,
                        help="seconds an idle kept-alive connection stays open")
    parser.add_argument("--max-connections", type=int, default=512,
                        help="most open connections in all (more are answered 503)")
    parser.add_argument("--max-connections-per-client", type=int, default=64,
                        help="most open connections from one client address (a reverse "
                             "proxy is one client)")
    parser.add_argument("--shutdown-timeout", type=finite_float, default=10.0,
                        help="on SIGTERM/SIGINT, seconds in-flight requests may take to finish")
    parser.add_argument("--access-log", action="store_true",
                        help="log one line per request")


def run(args: argparse.Namespace) -> int:
    """Serves until interrupted; returns the exit code (2 on a bad model folder/flag)."""
    from serving.runtime import ModelFolderError
    from serving.server import ServerConfig, ServerConfigError, serve

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
        config = ServerConfig(
            max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue, max_texts_per_request=args.max_texts,
            max_chars_per_text=args.max_chars,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            header_timeout_s=args.header_timeout, keepalive_timeout_s=args.keepalive_timeout,
            max_connections=args.max_connections,
            max_connections_per_client=args.max_connections_per_client,
            shutdown_timeout_s=args.shutdown_timeout, model_name=args.model_name)
        serve(args.model_dir, host=args.host, port=args.port, model_file=args.model_file,
              max_seq_len=args.max_seq_len, threads=args.threads or None, config=config,
              access_log=args.access_log)
    except ServerConfigError as err:
        logger.error("%s", err.naming(CONFIG_FLAGS.get(err.field, err.field)))
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
