"""Export the real all-MiniLM-L6-v2 teacher and time fp32 vs int8 in onnxruntime.

Prints the fused operator counts, the parity figures of the export report, the int8
variants the export tried and the latency of `model.onnx`, `model.int8.onnx` (the
variant the export chose) and, for comparison, plain dynamic int8 (`dynamic.int8.onnx`,
written beside the export), in interleaved rounds so that load from other processes
hits all alike.

    .venv/bin/python benchmarks/export_real_teacher.py --output /tmp/teacher-onnx \
        --batch 1 --seq 128 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_minilm.assets import default_teacher_dir  # noqa: E402


def time_models(folder: str, batch: int, seq: int, threads: int, rounds: int,
                per_round: int, extra: dict[str, str] | None = None) -> dict[str, list[float]]:
    """ms of every call of each graph of the export folder (and `extra`), interleaved."""
    from serving.bench import synthetic_batch, time_onnx_interleaved

    feeds = synthetic_batch(29000, batch, seq, seed=0)
    paths = {name: os.path.join(folder, name) for name in ("model.onnx", "model.int8.onnx")
             if os.path.exists(os.path.join(folder, name))}
    paths.update(extra or {})
    times = time_onnx_interleaved(paths, feeds, threads, rounds, per_round)
    return {name: (values.ravel() * 1e3).tolist() for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="/tmp/teacher-onnx", help="export folder")
    parser.add_argument("--skip-export", action="store_true", help="time an existing export")
    parser.add_argument("--int8-min-cosine", type=float, default=0.99,
                        help="int8 floor of the export (its default)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=5)
    args = parser.parse_args()

    import numpy as np

    if not args.skip_export:
        from export.pipeline import export_model

        start = time.perf_counter()
        report = export_model(default_teacher_dir(), args.output, int8_min_cosine=args.int8_min_cosine)
        print(f"export took {time.perf_counter() - start:.1f} s")
    with open(os.path.join(args.output, "export_report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    print("fused operators:", report["fused_operators"])
    print("parity:", json.dumps({k: report["parity"][k] for k in ("fp32", "int8")
                                 if k in report["parity"]}, indent=1))
    print("sizes (bytes):", report["files"]["model_bytes"])
    choice = report.get("int8") or {}
    for row in choice.get("tried", []):
        print(f"  int8 variant {row['variant']!r}: min cosine {row['min_cosine']:.4f}, "
              f"mean {row['mean_cosine']:.4f}, {'held' if row['passed'] else 'missed'}")
    extra = {}
    if choice.get("variant") not in (None, "dynamic"):
        from export.quantize import VARIANTS, write_variant

        plain = os.path.join(os.path.dirname(os.path.abspath(args.output)), "dynamic.int8.onnx")
        write_variant(os.path.join(args.output, "model.onnx"), plain, VARIANTS[0], [])
        extra["dynamic.int8.onnx"] = plain
    times = time_models(args.output, args.batch, args.seq, args.threads, args.rounds,
                        args.per_round, extra)
    print(f"latency, batch {args.batch} seq {args.seq}, {args.threads} threads "
          f"({args.rounds} x {args.per_round} runs each, interleaved):")
    for name, values in times.items():
        ms = np.array(values)
        print(f"  {name:16s} median {np.median(ms):7.2f} ms  p10 {np.percentile(ms, 10):7.2f} ms"
              f"  min {ms.min():7.2f} ms")
    for name in times:
        if name != "model.onnx":
            ratio = np.median(times["model.onnx"]) / np.median(times[name])
            print(f"  {name} speed-up over model.onnx (median): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
