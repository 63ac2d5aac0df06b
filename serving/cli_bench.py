"""`tf-minilm bench`: latency/throughput of ONNX (fp32, int8) and Keras models, and a
bounded loopback load test of the HTTP server.

Owns: the command's flags. Imports: `tf_minilm.rules`, `serving.bench`, `serving.loadtest`,
`serving.runtime` (inside `run`), `tf_minilm.argtypes`.

Imports nothing heavy at module level; TensorFlow is loaded only when a Keras model
is benchmarked.
"""

from __future__ import annotations

import argparse
import logging

from tf_minilm import rules
from tf_minilm.argtypes import finite_float

HELP = ("benchmark exported ONNX models (fp32/int8) against the Keras student: latency "
        "p50/p90/p99 at batch 1, throughput at batch 32, and an HTTP load test")

logger = logging.getLogger(__name__)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    for value in values:
        rules.positive_int(value, "each value", error=argparse.ArgumentTypeError)
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `bench` flags to `parser`."""
    parser.add_argument("models", metavar="MODEL_DIR", nargs="*",
                        help="exported ONNX folders (fp32 + int8 rows), .onnx files, Keras "
                             "students (folder with student.keras, .keras file, or HF folder "
                             "with config.json + model.safetensors); list the baseline first%(default).0s")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads for onnxruntime and TensorFlow (and the server)")
    parser.add_argument("--seq-lens", type=_int_list, default="16,32,128",
                        help="sequence lengths of the latency rows, comma-separated (tokens)")
    parser.add_argument("--latency-batch", type=int, default=1,
                        help="batch size of the latency rows")
    parser.add_argument("--throughput-batch", type=int, default=32,
                        help="batch size of the throughput row")
    parser.add_argument("--throughput-seq", type=int, default=128,
                        help="sequence length of the throughput row (tokens)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before each row")
    parser.add_argument("--repeats", type=int, default=100, help="most timed calls per row")
    parser.add_argument("--time-budget", type=finite_float, default=10.0,
                        help="most seconds of timed calls per row")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write every figure (and versions) to this JSON file%(default).0s")
    parser.add_argument("--no-card", action="store_true",
                        help="do not write the latency table into the benchmarked folders' "
                             "model cards (README.md files tf-minilm wrote)")
    load = parser.add_argument_group("HTTP load test (loopback only)")
    load.add_argument("--server-url", default=None,
                      help="load-test a running server, e.g. http://127.0.0.1:8080%(default).0s")
    load.add_argument("--load-test", action="store_true",
                      help="start `serve` on a free 127.0.0.1 port with the first ONNX model "
                           "and load-test it")
    load.add_argument("--load-model-file", default="model.onnx",
                      help="ONNX file the --load-test server loads")
    load.add_argument("--concurrency", type=_int_list, default="1,4,16",
                      help="concurrency levels, comma-separated (simultaneous clients)")
    load.add_argument("--load-requests", type=int, default=200,
                      help="most requests per concurrency level")
    load.add_argument("--load-time-budget", type=finite_float, default=10.0,
                      help="most seconds per concurrency level")
    load.add_argument("--texts-per-request", type=int, default=1,
                      help="texts in each load-test request")
    load.add_argument("--bad-fraction", type=finite_float, default=0.0,
                      help="share of load-test requests replaced by malformed ones "
                           "(each must get a 4xx), in [0, 1)")


def _load_test_model(models: list[str]) -> str | None:
    from serving.bench import discover_targets

    for model in models:
        for target in discover_targets(model):
            if target.backend == "onnxruntime":
                return str(target.path.parent)
    return None


def run(args: argparse.Namespace) -> int:
    """Runs the benchmark; prints tables; returns 0, or 2 on bad arguments/models."""
    from serving.bench import BenchConfig, BenchError, format_table, run_benchmarks, write_json
    from serving.loadtest import check_loopback_url, run_load_test, start_local_server
    from serving.runtime import ModelFolderError

    if not args.models and not args.server_url:
        logger.error("give at least one MODEL_DIR, or --server-url")
        return 2
    if args.server_url and args.load_test:
        logger.error("use either --server-url (running server) or --load-test (start one)")
        return 2
    try:
        if args.server_url:
            check_loopback_url(args.server_url)
        config = BenchConfig(
            seq_lens=args.seq_lens, latency_batch=args.latency_batch,
            throughput_batch=args.throughput_batch, throughput_seq=args.throughput_seq,
            warmup=args.warmup, repeats=args.repeats, time_budget_s=args.time_budget,
            threads=args.threads, seed=args.seed)
        load_model = _load_test_model(args.models) if args.load_test else None
        if args.load_test and load_model is None:
            raise BenchError("--load-test needs an exported ONNX folder among the models")
        result = run_benchmarks(args.models, config) if args.models else {
            "config": None, "rows": []}
        if result["rows"]:
            print(format_table(result["rows"]))
            if not args.no_card:
                from serving.bench import record_in_cards

                for card in record_in_cards(result):
                    print(f"latency recorded in {card}")
        load_kwargs = dict(concurrency_levels=args.concurrency,
                           requests_per_level=args.load_requests,
                           time_budget_s=args.load_time_budget,
                           texts_per_request=args.texts_per_request, seed=args.seed,
                           bad_fraction=args.bad_fraction)
        if args.server_url:
            result["load_test"] = {"server": args.server_url,
                                   "levels": run_load_test(args.server_url, **load_kwargs)}
        elif load_model is not None:
            with start_local_server(load_model, model_file=args.load_model_file,
                                    threads=args.threads,
                                    max_queue=max(64, 2 * max(args.concurrency))) as url:
                result["load_test"] = {"server": url, "model": load_model,
                                       "model_file": args.load_model_file,
                                       "levels": run_load_test(url, **load_kwargs)}
    except (BenchError, ModelFolderError, ValueError) as err:
        logger.error("%s", err)
        return 2
    except RuntimeError as err:  # the load-test server failed to start
        logger.error("%s", err)
        return 1
    if "load_test" in result:
        print()
        print(f"load test of {result['load_test']['server']} "
              f"({args.texts_per_request} text(s) per request)")
        print(f"{'clients':>7} {'requests':>8} {'ok':>6} {'errors':>8} {'bad':>5} "
              f"{'bad 4xx':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'healthy':>7}")
        for level in result["load_test"]["levels"]:
            p50 = "-" if level["p50_ms"] is None else f"{level['p50_ms']:.1f}"
            p99 = "-" if level["p99_ms"] is None else f"{level['p99_ms']:.1f}"
            print(f"{level['concurrency']:>7} {level['requests']:>8} {level['ok']:>6} "
                  f"{sum(level['errors'].values()):>8} {level['malformed']:>5} "
                  f"{level['malformed_answers'].get('4xx', 0):>7} "
                  f"{level['requests_per_s']:>8.1f} {p50:>8} {p99:>8} "
                  f"{'yes' if level['healthy_after'] else 'NO':>7}")
    if args.json:
        if "versions" not in result:
            from serving.bench import versions

            result["versions"] = versions()
        write_json(args.json, result)
        print(f"\nwrote {args.json}")
    return 0
