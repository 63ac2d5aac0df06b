"""A small-scale version of the MiniLM / MiniLMv2 papers' comparison, on this machine.

Rows (all students 3 x 384, 12 heads, FFN 1536, distilled from the embedded default
teacher all-MiniLM-L6-v2 on the BBC News corpus, every distilled row with --steps
student steps at the same batch size and learning rate):

    teacher          the 6 x 384 teacher itself
    random           random initialisation, no distillation
    layers           the teacher's first 3 layers, no distillation
    minilm           MiniLM (v1) from random initialisation
    minilmv2         MiniLMv2 from random initialisation
    minilmv2-layers  MiniLMv2 from the teacher's first 3 layers
    minilmv2-ta      MiniLMv2 through a teacher assistant of the teacher's depth and the
                     student's width (6 x 384 here): --steps / 2 teacher -> assistant steps,
                     then --steps assistant -> student steps (more compute than other rows)

Columns: MR and BBC accuracy (linear probe on frozen embeddings by default, or
fine-tuned with --mode fine-tune), held-out MiniLMv2 relation loss to the
teacher (BBC held-out split, A_r = 48, teacher layer 6), parameters, ONNX int8 latency
(batch 1, seq 128) and the speed-up over the teacher's int8 model.

Every finished row is saved under OUTPUT/rows/, so an interrupted table resumes.

    .venv/bin/python benchmarks/paper_table.py --output runs/paper_table --steps 200 \
        --max-train 2500
    # the same students, fine-tuned on MR instead of probed:
    .venv/bin/python benchmarks/paper_table.py --output runs/paper_table_ft \
        --students-from runs/paper_table --mode fine-tune --tasks mr --max-train 2500
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

TASKS = ("mr", "bbc")
MAX_SEQ_LEN = {"mr": 64, "bbc": 128}
ROWS = ("teacher", "random", "layers", "minilm", "minilmv2", "minilmv2-layers", "minilmv2-ta")
DISTILLED = {
    "minilm": {"method": "minilm", "init": "random"},
    "minilmv2": {"method": "minilmv2", "init": "random"},
    "minilmv2-layers": {"method": "minilmv2", "init": "teacher-layers"},
    "minilmv2-ta": {"method": "minilmv2", "init": "random", "assistant_hidden": 384},
}
logger = logging.getLogger("paper_table")
# As `tf-minilm distill` does (tf_minilm.cli): must be set before TensorFlow starts.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", default="runs/paper_table", help="folder for rows and table")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--steps", type=int, default=300, help="distillation steps per row")
    parser.add_argument("--batch-size", type=int, default=32, help="distillation batch")
    parser.add_argument("--learning-rate", type=float, default=3e-4,
                        help="distillation peak learning rate (paper: 3e-4 for 384-wide students)")
    parser.add_argument("--mode", choices=("fine-tune", "probe"), default="probe",
                        help="downstream protocol for both tasks: fine-tune the encoder, or a "
                             "logistic-regression probe on frozen mean-pooled embeddings")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS,
                        help="downstream tasks to score")
    parser.add_argument("--students-from", default=None,
                        help="an earlier table's --output whose students (rows/NAME/) are "
                             "reused instead of distilled again, e.g. to score the same "
                             "students by fine-tuning after probing")
    parser.add_argument("--max-train", type=int, default=None,
                        help="cap on training examples per task (quick runs)")
    parser.add_argument("--max-test", type=int, default=None,
                        help="cap on test examples per task (smoke runs only)")
    parser.add_argument("--latency-threads", type=int, default=2)
    parser.add_argument("--int8-min-cosine", type=float, default=None,
                        help="export's int8 parity floor (default: the export default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build_undistilled(name: str, teacher_dir: str, folder: str, seed: int) -> str:
    """Save the random or teacher-layers student (no training) as an HF folder."""
    from tf_minilm.checkpoints import load_hf_checkpoint, save_hf_checkpoint
    from tf_minilm.student import build_student

    if not os.path.exists(os.path.join(folder, "config.json")):
        teacher, tokenizer = load_hf_checkpoint(teacher_dir)
        init = "teacher-layers" if name == "layers" else "random"
        student = build_student(teacher, 3, 384, 12, init=init, seed=seed)
        save_hf_checkpoint(student, tokenizer, folder)
    return folder


def distill_row(name: str, args: argparse.Namespace, folder: str) -> tuple[str, float]:
    """Run `tf-minilm distill` for a row (resuming if interrupted); returns (student, seconds)."""
    from tf_minilm import job
    from tf_minilm.config import DistillConfig

    result_path = os.path.join(folder, "result.json")
    if os.path.exists(result_path):
        with open(result_path, encoding="utf-8") as handle:
            return os.path.join(folder, "student"), json.load(handle).get("wall_seconds", 0.0)
    config = DistillConfig(
        student_layers=3, student_hidden=384, student_heads=12, steps=args.steps,
        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
        output=folder, resume=os.path.exists(os.path.join(folder, "config.json")),
        checkpoint_every=max(1, args.steps // 3), log_every=max(1, args.steps // 20),
        cache_dir=os.path.join(args.output, "cache"), **DISTILLED[name],
    )
    start = time.perf_counter()
    job.run(config)
    seconds = time.perf_counter() - start
    with open(result_path, encoding="utf-8") as handle:
        summary = json.load(handle)
    summary["wall_seconds"] = seconds
    from tf_minilm.fileio import write_json_atomic

    write_json_atomic(result_path, summary)
    return os.path.join(folder, "student"), seconds


def relation_loss(teacher: Any, student: Any, eval_sequences: Any) -> float:
    """Held-out MiniLMv2 loss (A_r 48, last layers) of the `student` encoder against `teacher`."""
    from tf_minilm.data import make_eval_dataset
    from tf_minilm.distiller import Distiller

    distiller = Distiller(teacher, student, method="minilmv2", num_relation_heads=48)
    total, count = 0.0, 0
    for batch in make_eval_dataset(eval_sequences, 32):
        size = int(batch["input_ids"].shape[0])
        total += float(distiller.compute_losses(batch, training=False)["loss"]) * size
        count += size
    return total / count


def int8_latency(model_dir: str, export_dir: str, args: argparse.Namespace) -> dict[str, float]:
    """Export `model_dir` (once) and time ONNX fp32/int8 at batch 1, seq 128."""
    from export import export_model
    from serving.bench import BenchConfig, run_benchmarks

    if not os.path.exists(os.path.join(export_dir, "export_report.json")):
        kwargs = {}
        if args.int8_min_cosine is not None:
            kwargs["int8_min_cosine"] = args.int8_min_cosine
        export_model(model_dir, export_dir, **kwargs)
    config = BenchConfig(threads=args.latency_threads, seq_lens=(128,))
    rows = run_benchmarks([export_dir], config)["rows"]
    return {row["precision"]: row["p50_ms"] for row in rows
            if row["mode"] == "latency" and row["batch"] == 1 and row["seq"] == 128}


def evaluate(model_dir: str, task: Any, mode: str, epochs: int, max_seq_len: int,
             seed: int) -> float:
    from tf_minilm.evaluation import EvalSettings, evaluate_model

    settings = EvalSettings(mode=mode, epochs=epochs, max_seq_len=max_seq_len, seed=seed)
    return float(evaluate_model(model_dir, task, settings)["accuracy"])


def run_row(name: str, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any]:
    from tf_minilm.checkpoints import load_hf_checkpoint

    folder = os.path.join(args.students_from or args.output, "rows", name)
    if name != "teacher" and args.students_from and not os.path.isdir(folder):
        raise SystemExit(f"--students-from: {folder} does not exist (run that table first)")
    teacher_dir = context["teacher_dir"]
    distill_seconds = 0.0
    if name == "teacher":
        model_dir = teacher_dir
    elif name in DISTILLED:
        model_dir, distill_seconds = distill_row(name, args, folder)
    else:
        model_dir = build_undistilled(name, teacher_dir, os.path.join(folder, "student"), args.seed)
    encoder = context["teacher"] if name == "teacher" else load_hf_checkpoint(model_dir)[0]
    row: dict[str, Any] = {
        "row": name,
        "model_dir": model_dir,
        "parameters": int(encoder.count_params()),
        "distill_steps": args.steps if name in DISTILLED else 0,
        "distill_seconds": round(distill_seconds, 1),
        "relation_loss": 0.0 if name == "teacher" else relation_loss(
            context["teacher"], encoder, context["eval_sequences"]),
    }
    start = time.perf_counter()
    for task in args.tasks:
        row[f"{task}_accuracy"] = evaluate(model_dir, context[task], args.mode, args.epochs,
                                           MAX_SEQ_LEN[task], args.seed)
    row["eval_seconds"] = round(time.perf_counter() - start, 1)
    return row


def _accuracy(row: dict[str, Any], task: str) -> str:
    value = row.get(f"{task}_accuracy")
    return "n/a" if value is None else f"{value:.4f}"


def format_table(rows: list[dict[str, Any]], latency: dict[str, dict[str, float]]) -> str:
    lines = ["| row | MR acc | BBC acc | held-out relation loss | params | ONNX int8 b1/s128 | "
             "speed-up vs teacher int8 |", "|---|---|---|---|---|---|---|"]
    teacher_ms = latency.get("teacher", {}).get("int8")
    for row in rows:
        arch = "teacher" if row["row"] == "teacher" else "student"
        ms = latency.get(arch, {}).get("int8")
        speed = f"{teacher_ms / ms:.2f}x" if ms and teacher_ms else "n/a"
        lines.append(
            f"| {row['row']} | {_accuracy(row, 'mr')} | {_accuracy(row, 'bbc')} | "
            f"{row['relation_loss']:.4f} | {row['parameters'] / 1e6:.1f}M | "
            f"{f'{ms:.2f} ms' if ms else 'n/a'} | {speed} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from tf_minilm.checkpoints import load_hf_checkpoint
    from tf_minilm.corpus import default_corpus_paths
    from tf_minilm.data import prepare_corpus
    from tf_minilm.defaults import default_teacher_dir
    from tf_minilm.fileio import write_json_atomic, write_text_atomic
    from tf_minilm.tasks import load_task

    teacher_dir = default_teacher_dir()
    teacher, tokenizer = load_hf_checkpoint(teacher_dir)  # loaded once, shared by every row
    prepared = prepare_corpus(default_corpus_paths(), tokenizer, 128,
                              seed=args.seed, cache_dir=os.path.join(args.output, "cache"))
    context = {
        "teacher_dir": teacher_dir,
        "teacher": teacher,
        "eval_sequences": prepared.eval,
    }
    for task in args.tasks:
        context[task] = load_task(task, seed=args.seed, max_train=args.max_train,
                                  max_test=args.max_test)
    rows = []
    for name in args.rows:
        path = os.path.join(args.output, "rows", f"{name}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                rows.append(json.load(handle))
            continue
        logger.info("row %s", name)
        row = run_row(name, args, context)
        write_json_atomic(path, row)
        rows.append(row)

    latency: dict[str, dict[str, float]] = {}
    latency_path = os.path.join(args.output, "latency.json")
    if os.path.exists(latency_path):
        with open(latency_path, encoding="utf-8") as handle:
            latency = json.load(handle)
    student_row = next((r for r in rows if r["row"] in DISTILLED), None)
    sources = {"teacher": teacher_dir, "student": student_row and student_row["model_dir"]}
    for arch, model_dir in sources.items():
        if arch not in latency and model_dir:
            latency[arch] = int8_latency(model_dir, os.path.join(args.output, "onnx", arch), args)
            write_json_atomic(latency_path, latency)
    table = format_table(rows, latency)
    write_json_atomic(os.path.join(args.output, "table.json"),
                      {"settings": vars(args), "rows": rows, "latency_ms": latency})
    write_text_atomic(os.path.join(args.output, "table.md"), table + "\n")
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
