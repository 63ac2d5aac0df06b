"""What a CPU without AVX-512 gets from the default distillation, emulated on this machine.

The machines of this project's kind differ (REFERENCE: an AMD Zen 5 with AVX-512 BF16, an
Intel Xeon with AVX-512 VNNI, an AMD Zen 3 with AVX2 only). TensorFlow's heavy kernels on
CPU are oneDNN's, which choose their instruction set when they run; `ONEDNN_MAX_CPU_ISA`
caps that choice, and `XLA_FLAGS=--xla_cpu_max_isa` caps XLA's code generation. So on an
AVX-512 machine the step an AVX2-only CPU runs can be timed: float32 (no native bfloat16
there, so `--precision auto` picks float32, and with it XLA, `distill.runtime`), with the
kernels held to AVX2, with XLA and without. Every row runs `benchmarks/distill_step.py` (the default student's step:
6 x 384 teacher -> 3 x 384 student, batch 32) in child processes of one invocation, one
after the other, so the ratios are measured on the same machine in the same hour.

onnxruntime's MLAS kernels choose their instruction set from CPUID alone, with no cap to
set, so the int8-versus-fp32 ratio of an AVX2 CPU cannot be emulated here; the export
measures it on the machine it runs on (`export_report.json["int8"]["speedup"]`) and
`tf-minilm serve --model-file auto` re-measures it where the CPU's int8 kind differs.

Usage:
    .venv/bin/python benchmarks/cpu_isa.py [--seq 64] [--steps 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}
ROWS = (
    ("this CPU, --precision auto (the default)", {}, ["--precision", "auto"]),
    ("this CPU, float32 + XLA", {}, ["--precision", "float32", "--jit", "on"]),
    ("AVX2 kernels, float32 + XLA (auto's choice there)", AVX2,
     ["--precision", "float32", "--jit", "auto"]),
    ("AVX2 kernels, float32, no XLA", AVX2, ["--precision", "float32", "--jit", "off"]),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=64, help="tokens per row (default 64, "
                                                             "the distill default)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="write the rows here as JSON")
    args = parser.parse_args(argv)
    rows = []
    for label, env, flags in ROWS:
        with tempfile.TemporaryDirectory() as scratch:
            out = os.path.join(scratch, "rows.json")
            command = [sys.executable, str(HERE / "distill_step.py"), "--seqs", str(args.seq),
                       "--peer-seqs", "", "--batch", str(args.batch), "--steps",
                       str(args.steps), "--json", out, *flags]
            done = subprocess.run(command, env={**os.environ, **env}, capture_output=True,
                                  text=True)
            if done.returncode != 0 or not os.path.exists(out):
                rows.append({"row": label, "failed": done.stderr[-2000:]})
                continue
            with open(out, encoding="utf-8") as handle:
                step = json.load(handle)["rows"][0]
        rows.append({"row": label, "env": env, "flags": flags, "step_ms": step["step_ms"],
                     "tokens_per_s": step["tokens_per_s"], "precision": step.get("precision"),
                     "impl": step.get("impl")})
        print(f"{label}: {step['step_ms']:.0f} ms/step", flush=True)
    base = rows[0].get("step_ms")
    print(f"\nbatch {args.batch} x {args.seq}, median of {args.steps} steps; time relative to "
          "the first row (this machine, --precision auto)")
    for row in rows:
        if "failed" in row:
            print(f"{row['row']:<48} failed: {row['failed'].splitlines()[-1:]}")
        else:
            print(f"{row['row']:<48} {row['step_ms']:>7.0f} ms  {row['step_ms'] / base:>5.2f}x"
                  f"  {row['impl']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"argv": sys.argv[1:], "rows": rows}, handle, indent=2)
    return 0 if all("failed" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
