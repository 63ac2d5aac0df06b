"""Peak memory and time of `tf-minilm export` for encoders from 3 x 384 to the 12 x 768 teacher.

Each export runs in a fresh process (`tf-minilm export` in-process there, so its peak
RSS is the export's alone, TensorFlow's import included) and prints one JSON line:
the model's float32 weight bytes, the peak RSS, the bound the export is held to
(3 x weight bytes + 2 GB) and the wall time. The export of a large graph quantizes in
child processes (`export.quantize.quantize_int8`), so the bound is checked on the
process tree's memory: the sum of the resident sets of the export and its children,
sampled every 20 ms (`tree_peak_rss_gb`; a spike shorter than that can be missed,
which the export process's own exact `VmHWM`, `peak_rss_gb`, bounds from below). `--frozen-values` also runs the conversion
as it was before the weights were converted as graph inputs (tf2onnx on the frozen
values) for the models up to `--frozen-values-max-params`; larger ones do not fit.

Models: all-mpnet-base-v2 (MPNet, 12 x 768) and two students of it saved as HF folders,
3 x 384 (BERT layout, the size the base-size table serves) and 6 x 768 (MPNet layout, the
teacher's layers 1, 3, 5, 8, 10, 12).

    ./dev setup --teacher mpnet
    .venv/bin/python benchmarks/export_memory.py --output /tmp/export-memory --frozen-values
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

BOUND_FACTOR = 3
BOUND_EXTRA_BYTES = 2 * 2**30


def child(source: str, output: str, frozen_values: bool, quantize: str) -> None:
    """Export `source` in this process; print its peak RSS (VmHWM: `ru_maxrss` would carry
    the parent's RSS at the fork over the exec on Linux) and seconds."""

    if frozen_values:
        import export.convert as convert

        plain = convert._convert
        convert._convert = lambda function, signature, opset, check=None: plain(
            function, signature, opset, stand_ins=False, check=check)
    from tf_minilm.cli import main

    start = time.perf_counter()
    code = main(["--log-level", "WARNING", "export", source, "--output", output,
                 "--quantize", quantize])
    seconds = time.perf_counter() - start
    with open(os.path.join(output, "export_report.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    print(json.dumps({"exit": code, "peak_rss_bytes": peak_rss_bytes(),
                      "seconds": round(seconds, 1),
                      "int8": (report.get("int8") or {}).get("variant"),
                      "fused": report.get("fused_operator_groups")}))


def peak_rss_bytes() -> int:
    """This process's peak resident set (Linux `VmHWM`)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="ascii") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(parent, []).append(int(name))
    return tree


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(root: int) -> int:
    """Resident bytes of process `root` and all its descendants, now."""
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_bytes(pid)
        todo += tree.get(pid, [])
    return total


def run_sampled(command: list[str]) -> tuple[subprocess.CompletedProcess, int]:
    """Run `command`; return its result and the peak of its process tree's resident set."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_bytes(process.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), peak[0]


def student_folder(teacher_dir: str, folder: str, layers: int, hidden: int, heads: int,
                   layout: str) -> str:
    """A student of the teacher saved as an HF folder (copied layers when as wide)."""
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return folder
    from tf_minilm.hf.checkpoints import load_hf_checkpoint, save_hf_checkpoint
    from tf_minilm.model.student import build_student

    teacher, tokenizer = load_hf_checkpoint(teacher_dir)
    same = hidden == teacher.config.hidden_size
    student = build_student(teacher, layers, hidden, heads, 4 * hidden,
                            init="teacher-layers" if same else "random", seed=0,
                            layout=layout)
    save_hf_checkpoint(student, tokenizer, folder, teacher_folder=teacher_dir)
    return folder


def weight_bytes(folder: str) -> int:
    """Float32 bytes of the folder's weights (their element count x 4)."""
    import numpy as np
    from safetensors import safe_open

    with safe_open(os.path.join(folder, "model.safetensors"), "np") as weights:
        return sum(int(np.prod(weights.get_slice(key).get_shape())) * 4
                   for key in weights.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="/tmp/export-memory")
    parser.add_argument("--teacher", default=None, help="default: the assembled MPNet folder")
    parser.add_argument("--quantize", default="int8", choices=("int8", "none"))
    parser.add_argument("--frozen-values", action="store_true")
    parser.add_argument("--frozen-values-max-params", type=int, default=60_000_000)
    parser.add_argument("--only", default=None, help="export only the models whose name "
                        "contains this (e.g. teacher)")
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "OUTPUT"))
    parser.add_argument("--child-frozen-values", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.child_frozen_values, args.quantize)
        return
    from tf_minilm.assets import mpnet_teacher_dir

    teacher_dir = mpnet_teacher_dir(args.teacher)
    os.makedirs(args.output, exist_ok=True)
    models = {
        "3x384 (bert layout)": student_folder(teacher_dir, os.path.join(args.output, "s3x384"),
                                              3, 384, 12, "bert"),
        "6x768 (mpnet layout)": student_folder(teacher_dir,
                                               os.path.join(args.output, "s6x768"),
                                               6, 768, 12, "teacher"),
        "12x768 teacher": teacher_dir,
    }
    for name, folder in models.items():
        if args.only and args.only not in name:
            continue
        weights = weight_bytes(folder)
        ways = [False] + ([True] if args.frozen_values
                          and weights // 4 <= args.frozen_values_max_params else [])
        for frozen in ways:
            out = os.path.join(args.output, name.split()[0] + ("-frozen" if frozen else ""))
            command = [sys.executable, os.path.abspath(__file__), "--child", folder, out,
                       "--quantize", args.quantize] + (["--child-frozen-values"] if frozen
                                                       else [])
            result, tree_peak = run_sampled(command)
            lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
            if result.returncode or not lines:
                print(json.dumps({"model": name, "frozen_values": frozen,
                                  "error": result.stderr[-2000:]}))
                continue
            row = json.loads(lines[-1])
            bound = BOUND_FACTOR * weights + BOUND_EXTRA_BYTES
            print(json.dumps({"model": name, "conversion": "frozen values" if frozen
                              else "weights as inputs", "weight_bytes": weights,
                              "peak_rss_gb": round(row["peak_rss_bytes"] / 2**30, 2),
                              "tree_peak_rss_gb": round(tree_peak / 2**30, 2),
                              "bound_gb": round(bound / 2**30, 2),
                              "within_bound": max(tree_peak, row["peak_rss_bytes"]) <= bound,
                              "seconds": row["seconds"], "int8": row["int8"],
                              "fused": row["fused"]}), flush=True)


if __name__ == "__main__":
    main()
