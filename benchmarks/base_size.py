"""The papers' setting: a base-size teacher, all-mpnet-base-v2 (MPNet, 12 x 768), distilled
into 6 x 384 and 3 x 384 students on this machine.

Rows, for each student depth D in 6 and 3 (every distilled row at the same budget:
--steps steps of --batch-size sequences of --max-seq-len tokens on the default corpus):

    teacher           all-mpnet-base-v2 itself
    layers-D          layer dropping: D teacher layers spread over the 12 (first and last
                      kept), D x 768, no training
    st-D              sentence-transformers' distillation recipe: embedding MSE from those
                      layers, lr 1e-4, D x 768 (the outside peer)
    best-D            the objective chosen on the small teacher (10 x embedding MSE +
                      hidden-state MSE, lr 6e-4), D x 384 from random initialisation
    pruned-D          the same objective and rate, D x 384 (6 heads of 64, FFN 1536) from a
                      pruned start: the strongest channels, heads and neurons of D spread
                      teacher layers (`--init prune`), MPNet layout
    minilmv2-D        MiniLMv2 (Q-Q/K-K/V-V relations, 48 relation heads, lr 3e-4), D x 384
    minilm-D          MiniLM v1 (attention distributions + value relation), D x 384
    assistant         MiniLMv2 teacher assistant, 12 x 384 (the teacher's depth), trained
                      once at the same budget and shared by the -ta rows
    minilmv2-ta-D     MiniLMv2 from the assistant (the assistant's steps come on top)

The D x 384 students are BERT-layout (`--student-layout bert`: MPNet's vocabulary and
tokenizer, absolute positions, no relative bias), which export fully fused; the D x 768
rows keep MPNet's layout (they are the teacher's layers).

Columns: fidelity to the teacher on the MR test sentences (texts outside the corpus;
Spearman of pairwise cosines, linear CKA, kNN@10 overlap), MR accuracy of a linear probe
on frozen embeddings and of the fine-tuned encoder (2 epochs on --max-train examples at
--finetune-lr: 2e-4 by default, the best single rate of the small-teacher table's
students and teacher; several rates: each model's chosen on 20% of the training split,
three fine-tunings a row), parameters, distillation steps and wall time; then ONNX latency at batch 1 x 128 of one model per architecture: fp32 and
int8, and the int8 speed-up over the teacher's fp32 graph (all timed in one run, so the
ratios hold on a shared machine).

Budget: 120 steps of 32 x 64 tokens per distilled row (245,760 tokens, a sixth of the
default corpus), about 2.2 s a step on 2 CPU cores with the 12 x 768 teacher in the loop
(3.5 s with a 768-wide student): the eleven distillations of docs/base-size.md's table took
about an hour and three quarters there beside other jobs, exports and timing 4 minutes,
fine-tuning 1.5 minutes per 384-wide row (--finetune-rows limits it).
With --targets, the teacher runs once: `tf-minilm prepare --targets embedding,hidden`
stores its sentence embedding and last hidden states for every row of a corpus (the first
--corpus-docs documents of a seeded shuffle of the default corpus, written to
OUTPUT/corpus.jsonl; the whole corpus's 35,000 rows would take about 50 minutes of
teacher forwards here at the 90 ms a row the 9,399-row sample took before rows were
batched by length), and every row whose objective the targets serve (best, pruned, st)
distils from them without the teacher in the step (`distill --data`). Each row then
records its CPU time (user + system, this process): the distillation's, the end-of-run
fidelity included, plus the preparation's, which every such row pays in full.
Every finished row is saved under OUTPUT/rows/ (fine-tuning as NAME.finetune.json, the
latencies in latency.json), and every distillation resumes, so an interrupted table picks
up where it stopped.

    ./dev setup --teacher mpnet
    .venv/bin/python benchmarks/base_size.py --output runs/base_size
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.resumable import cached_json  # noqa: E402
from tf_minilm.argtypes import finite_floats  # noqa: E402

DEPTHS = (6, 3)
BEST_LOSS = "10*embedding_mse + hidden_mse"
DISTILLED_SPECS: dict[str, dict[str, Any]] = {
    "st": {"loss": "embedding_mse", "learning_rate": 1e-4, "wide": True},
    "best": {"loss": BEST_LOSS, "learning_rate": 6e-4},
    "pruned": {"loss": BEST_LOSS, "learning_rate": 6e-4, "pruned": True},
    "minilmv2": {"method": "minilmv2", "learning_rate": 3e-4},
    "minilm": {"method": "minilm", "learning_rate": 3e-4},
    "minilmv2-ta": {"method": "minilmv2", "learning_rate": 3e-4, "from_assistant": True},
}
ROWS = ("teacher", *(f"{kind}-{depth}" for depth in DEPTHS
                     for kind in ("layers", *DISTILLED_SPECS)), "assistant")
ASSISTANT_HIDDEN = 384
STUDENT_HIDDEN, STUDENT_HEADS = 384, 12
MR_MAX_SEQ_LEN = 64
logger = logging.getLogger("base_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", default="runs/base_size", help="folder for rows and table")
    parser.add_argument("--rows", nargs="+", default=[r for r in ROWS if r != "assistant"],
                        choices=[r for r in ROWS if r != "assistant"],
                        help="rows to build (the assistant is trained when a -ta row needs it)")
    parser.add_argument("--steps", type=int, default=120, help="distillation steps per row")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-len", type=int, default=64)
    parser.add_argument("--max-train", type=int, default=2000,
                        help="MR training examples for the probe and fine-tuning")
    parser.add_argument("--max-test", type=int, default=None,
                        help="cap on MR test examples (smoke runs only)")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    parser.add_argument("--finetune-lr", type=finite_floats, default=(2e-4,),
                        metavar="LR[,LR...]",
                        help="fine-tuning rates each model chooses from (on 20%% of the "
                             "training split)")
    parser.add_argument("--no-finetune", action="store_true", help="probe only (smoke runs)")
    parser.add_argument("--finetune-rows", nargs="+", default=None, metavar="ROW",
                        help="fine-tune only these rows (default: every row)")
    parser.add_argument("--latency-threads", type=int, default=2)
    parser.add_argument("--latency-passes", type=int, default=3,
                        help="alternating timing passes over all graphs (100 calls each)")
    parser.add_argument("--no-latency", action="store_true", help="skip export and timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", action="store_true",
                        help="store the teacher's targets once (prepare --targets) and distil "
                             "the rows they serve from them")
    parser.add_argument("--corpus-docs", type=int, default=5000,
                        help="with --targets: documents of the default corpus prepared")
    parser.add_argument("--targets-dtype", choices=("float16", "bfloat16"), default="float16")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak rate of every distilled row (default: each row's own)")
    return parser.parse_args(argv)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare_targets(args: argparse.Namespace, teacher_dir: str) -> dict[str, Any]:
    """The prepared rows with the teacher's stored targets (made once; resumable).

    Returns:
        {"data": folder, "rows": training rows, "docs": documents, "cpu_seconds",
        "wall_seconds"} of the preparation.
    """
    from tf_minilm.cli import main as cli_main
    from tf_minilm.data.corpus import (
        DEFAULT_CORPUS_TEXT_COLUMN,
        ReadOptions,
        default_corpus_paths,
        iter_documents,
    )
    from tf_minilm.fileio import write_text_atomic

    corpus = os.path.join(args.output, "corpus.jsonl")
    data = os.path.join(args.output, "data")

    def compute() -> dict[str, Any]:
        start_cpu, start = cpu_seconds(), time.perf_counter()
        if not os.path.exists(corpus):
            docs = list(iter_documents(default_corpus_paths(),
                                       ReadOptions(text_column=DEFAULT_CORPUS_TEXT_COLUMN)))
            random.Random(args.seed).shuffle(docs)
            write_text_atomic(corpus, "".join(json.dumps({"text": doc}) + "\n"
                                              for doc in docs[:args.corpus_docs]))
        code = cli_main(["prepare", "--teacher", teacher_dir, "--output", data,
                         "--max-seq-len", str(args.max_seq_len), "--targets",
                         "embedding,hidden", "--targets-dtype", args.targets_dtype,
                         "--no-progress", corpus])
        if code != 0:
            raise SystemExit(f"base_size: prepare --targets failed ({code})")
        with open(os.path.join(data, "manifest.json"), encoding="utf-8") as handle:
            manifest = json.load(handle)
        return {"data": data, "rows": manifest["rows"], "docs": args.corpus_docs,
                "cpu_seconds": round(cpu_seconds() - start_cpu, 1),
                "wall_seconds": round(time.perf_counter() - start, 1)}

    return cached_json(os.path.join(args.output, "prepare.json"), compute,
                       "storing the teacher's targets")


def split_row(name: str) -> tuple[str, int | None]:
    """'minilmv2-ta-3' -> ('minilmv2-ta', 3); 'teacher' -> ('teacher', None)."""
    kind, _, depth = name.rpartition("-")
    return (kind, int(depth)) if depth.isdigit() else (name, None)


def distill(folder: str, teacher_dir: str, args: argparse.Namespace, **fields: Any) -> str:
    """`tf-minilm distill` into `folder` (resuming an interrupted run); returns student/."""
    from tf_minilm.distill import job
    from tf_minilm.distill.config import DistillConfig
    from tf_minilm.fileio import write_json_atomic

    result_path = os.path.join(folder, "result.json")
    if not os.path.exists(result_path):
        where = ({"data": fields.pop("data")} if fields.get("data") else
                 {"cache_dir": os.path.join(args.output, "cache")})
        config = DistillConfig(
            teacher=teacher_dir, steps=args.steps, batch_size=args.batch_size,
            max_seq_len=args.max_seq_len, seed=args.seed, output=folder,
            resume=os.path.exists(os.path.join(folder, "config.json")),
            checkpoint_every=max(1, args.steps // 4), log_every=max(1, args.steps // 20),
            **where, **fields)
        start, start_cpu = time.perf_counter(), cpu_seconds()
        job.run(config)
        with open(result_path, encoding="utf-8") as handle:
            summary = json.load(handle)
        summary["wall_seconds"] = time.perf_counter() - start
        # An interrupted and resumed row counts only its last part.
        summary["cpu_seconds"] = cpu_seconds() - start_cpu
        write_json_atomic(result_path, summary)
    return os.path.join(folder, "student")


def build_row(name: str, args: argparse.Namespace, context: dict[str, Any]
              ) -> tuple[str, dict[str, Any]]:
    """Make row `name`'s model folder; returns (folder, what the row was built with)."""
    from tf_minilm.hf.checkpoints import save_hf_checkpoint
    from tf_minilm.model.student import build_student, spread_layers

    kind, depth = split_row(name)
    folder = os.path.join(args.output, "rows", name)
    if kind == "teacher":
        return context["teacher_dir"], {"objective": "-", "init": "-"}
    if kind == "layers":
        layers = spread_layers(12, depth)
        student_dir = os.path.join(folder, "student")
        if not os.path.exists(os.path.join(student_dir, "config.json")):
            student = build_student(context["teacher"], depth, 768, 12, 3072,
                                    init="teacher-layers", teacher_layers=layers)
            save_hf_checkpoint(student, context["tokenizer"], student_dir)
        return student_dir, {"objective": "-", "init": ",".join(map(str, layers))}
    if kind == "assistant":
        student_dir = distill(folder, context["teacher_dir"], args, method="minilmv2",
                              learning_rate=3e-4, student_layers=12,
                              student_hidden=ASSISTANT_HIDDEN, student_heads=STUDENT_HEADS,
                              init="random")
        return student_dir, {"objective": "minilmv2", "init": "random"}
    spec = dict(DISTILLED_SPECS[kind])
    if args.learning_rate is not None:
        spec["learning_rate"] = args.learning_rate
    if args.targets and "loss" in spec and not spec.get("from_assistant"):
        spec["data"] = context["targets"]()["data"]  # alignment terms: served by the targets
    objective = {"loss": spec.pop("loss")} if "loss" in spec else {"method": spec.pop("method")}
    teacher_dir = context["teacher_dir"]
    if spec.pop("from_assistant", False):
        teacher_dir = context["assistant_dir"]()
    if spec.pop("pruned", False):
        layers = ",".join(map(str, spread_layers(12, depth)))
        shape = {"student_hidden": STUDENT_HIDDEN, "student_heads": STUDENT_HIDDEN // 64,
                 "student_intermediate": 4 * STUDENT_HIDDEN, "init": "prune",
                 "init_layers": layers}
        init = f"prune {layers}"
    elif spec.pop("wide", False):
        layers = spread_layers(12, depth)
        shape = {"student_hidden": 768, "student_heads": 12, "student_intermediate": 3072,
                 "init_layers": ",".join(map(str, layers))}
        init = shape["init_layers"]
    else:
        shape = {"student_hidden": STUDENT_HIDDEN, "student_heads": STUDENT_HEADS,
                 "student_layout": "bert", "init": "random"}
        init = "random"
    data = spec.get("data")
    student_dir = distill(folder, teacher_dir, args, student_layers=depth, **objective,
                          **shape, **spec)
    return student_dir, {"objective": next(iter(objective.values())), "init": init,
                         "learning_rate": spec["learning_rate"], "stored_targets": bool(data)}


def run_row(name: str, args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any]:
    """Build row `name` and measure its fidelity and MR probe (fine-tuning: `finetune_row`)."""
    from tf_minilm.evaluate import fidelity
    from tf_minilm.hf.checkpoints import load_hf_checkpoint

    model_dir, built = build_row(name, args, context)
    encoder = context["teacher"] if name == "teacher" else load_hf_checkpoint(model_dir)[0]
    result_path = os.path.join(os.path.dirname(model_dir), "result.json")
    result: dict[str, Any] = {}
    if name != "teacher" and os.path.exists(result_path):
        with open(result_path, encoding="utf-8") as handle:
            result = json.load(handle)
    if result and not split_row(name)[0].endswith("-ta"):
        # Distilled from the MPNet teacher: the fidelity `tf-minilm distill` recorded.
        metrics = result["fidelity"]["mr"]
    else:  # a -ta row's own record is against its assistant; measured here the same way
        embed = (lambda texts: context["teacher_embeddings"]) if name == "teacher" else \
            fidelity.encoder_embedder(encoder, context["tokenizer"], context["pooling"])
        metrics = fidelity.fidelity_metrics(context["teacher_embeddings"],
                                            embed(context["fidelity_texts"].texts))
    config = encoder.config
    start = time.perf_counter()
    from tf_minilm.evaluate.downstream import evaluate_model
    from tf_minilm.evaluate.settings import EvalSettings

    probe = evaluate_model(model_dir, context["mr"], EvalSettings(
        mode="probe", max_seq_len=MR_MAX_SEQ_LEN, seed=args.seed))
    return {
        "row": name, "model_dir": model_dir, **built,
        "architecture": f"{config.model_type} {config.num_hidden_layers}x{config.hidden_size}",
        "parameters": int(encoder.count_params()),
        "distill_steps": result.get("step", 0),
        "distill_seconds": round(result.get("wall_seconds", 0.0), 1),
        "distill_cpu_seconds": round(result.get("cpu_seconds", 0.0), 1),
        "prepare_cpu_seconds": (context["targets"]()["cpu_seconds"]
                                if built.get("stored_targets") else 0.0),
        "fidelity": {key: float(metrics[key]) for key in ("spearman", "cka", "knn@10")},
        "mr": {"probe": float(probe["accuracy"])},
        "eval_seconds": round(time.perf_counter() - start, 1),
    }


def finetune_row(row: dict[str, Any], args: argparse.Namespace, context: dict[str, Any]
                 ) -> dict[str, Any]:
    """MR accuracy of the fine-tuned encoder (its rate chosen from --finetune-lr)."""
    from tf_minilm.evaluate.downstream import evaluate_model
    from tf_minilm.evaluate.settings import EvalSettings

    rates = tuple(args.finetune_lr)
    start = time.perf_counter()
    tuned = evaluate_model(row["model_dir"], context["mr"], EvalSettings(
        mode="fine-tune", epochs=args.epochs, max_seq_len=MR_MAX_SEQ_LEN, seed=args.seed,
        learning_rate=rates[0], learning_rate_grid=rates if len(rates) > 1 else None))
    return {"fine_tune": float(tuned["accuracy"]),
            "fine_tune_lr": tuned.get("learning_rate", rates[0]),
            "fine_tune_seconds": round(time.perf_counter() - start, 1)}


def latencies(rows: list[dict[str, Any]], args: argparse.Namespace,
              context: dict[str, Any]) -> dict[str, Any]:
    """ONNX fp32 and int8 p50 latency at batch 1 x 128 of one model per architecture.

    Every model goes through `tf-minilm export` (fused, its int8 ladder; MPNet-layout
    graphs keep their attention unfused, see the export's report). All graphs are timed
    in this one run, in --latency-passes alternating passes with one session alive at a
    time (`serving.bench.time_in_passes`: a serving process holds one model, and graphs
    from 3 x 384 to 12 x 768 disturb each other's caches when alive together), with the
    same onnxruntime session settings and inputs; p50 is the median of the passes'
    medians, and the slowest and fastest pass medians are kept beside it. Each fp32 graph
    is checked against the Keras model on those inputs first.
    """
    import numpy as np

    from export import export_model
    from serving.bench import median_of_round_medians_ms, synthetic_batch, time_in_passes
    from serving.runtime import make_session
    from tf_minilm.hf.checkpoints import load_hf_checkpoint

    chosen: dict[str, str] = {}
    for row in rows:
        chosen.setdefault(row["architecture"], row["model_dir"])
    feeds = synthetic_batch(context["tokenizer"].get_vocab_size(), 1, 128, args.seed)
    out: dict[str, Any] = {}
    openers: dict[str, Any] = {}

    def opener(path: str) -> Any:
        def open_call() -> Any:
            session = make_session(path, args.latency_threads)
            names = [i.name for i in session.get_inputs()]
            given = {name: feeds[name] for name in names}
            return lambda: session.run(None, given)
        return open_call

    for architecture, model_dir in chosen.items():
        folder = os.path.join(args.output, "onnx", architecture.replace(" ", "-"))
        if not os.path.exists(os.path.join(folder, "export_report.json")):
            export_model(model_dir, folder)
        encoder = context["teacher"] if model_dir == context["teacher_dir"] \
            else load_hf_checkpoint(model_dir)[0]
        keras_hidden = encoder({"input_ids": feeds["input_ids"].astype("int32"),
                                "attention_mask": feeds["attention_mask"].astype("int32")}
                               )["last_hidden_state"].numpy()
        fp32 = make_session(os.path.join(folder, "model.onnx"), args.latency_threads)
        onnx_hidden = fp32.run(["last_hidden_state"], {
            i.name: feeds[i.name] for i in fp32.get_inputs()})[0]
        del fp32
        out[architecture] = {"export": "tf-minilm export",
                             "fp32_max_abs_vs_keras": float(np.abs(onnx_hidden
                                                                   - keras_hidden).max())}
        for precision, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
            openers[f"{architecture} {precision}"] = opener(os.path.join(folder, file))
    times = time_in_passes(openers, warmup=10, passes=args.latency_passes, calls=100)
    for name, values in times.items():
        architecture, precision = name.rsplit(" ", 1)
        pass_medians = np.median(values, axis=1) * 1000.0
        out[architecture].update({
            f"{precision}_p50_ms": median_of_round_medians_ms(values),
            f"{precision}_pass_p50_range_ms": [float(pass_medians.min()),
                                               float(pass_medians.max())]})
    out["timing"] = {"passes": args.latency_passes, "calls_per_pass": 100,
                     "threads": args.latency_threads, "batch": 1, "seq": 128,
                     "method": "serving.bench.time_in_passes"}
    logger.info("latency: %s", out)
    return out


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict[str, Any]], latency: dict[str, Any]) -> str:
    teacher_fp32 = latency.get("mpnet 12x768", {}).get("fp32_p50_ms")
    lines = ["| row | student | objective | init | Spearman | CKA | kNN@10 | MR probe | "
             "MR fine-tuned (lr) | params | steps | distill s | CPU s | fp32 ms 1x128 | "
             "int8 ms 1x128 | int8 speed-up vs teacher fp32 |", "|---" * 16 + "|"]
    for row in rows:
        fid, mr = row["fidelity"], row["mr"]
        tuned = (f"{mr['fine_tune']:.4f} ({mr['fine_tune_lr']:g})" if "fine_tune" in mr
                 else "n/a")
        timed = latency.get(row["architecture"], {})
        fp32, int8 = timed.get("fp32_p50_ms"), timed.get("int8_p50_ms")
        speedup = f"{teacher_fp32 / int8:.1f}x" if int8 and teacher_fp32 else "n/a"
        cpu = row.get("distill_cpu_seconds", 0.0)
        prepared = row.get("prepare_cpu_seconds", 0.0)
        cpu_text = (f"{cpu + prepared:.0f} ({prepared:.0f} + {cpu:.0f})" if prepared
                    else f"{cpu:.0f}" if cpu else "n/a")
        lines.append(
            f"| {row['row']} | {row['architecture']} | {row['objective']} | {row['init']} | "
            f"{_number(fid['spearman'])} | {_number(fid['cka'])} | {_number(fid['knn@10'])} | "
            f"{_number(mr['probe'])} | {tuned} | {row['parameters'] / 1e6:.1f}M | "
            f"{row['distill_steps']} | {row['distill_seconds']:.0f} | {cpu_text} | "
            f"{_number(fp32, 1)} | {_number(int8, 1)} | {speedup} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from tf_minilm.assets import mpnet_teacher_dir
    from tf_minilm.evaluate import fidelity
    from tf_minilm.evaluate.tasks import load_task
    from tf_minilm.fileio import write_json_atomic, write_text_atomic
    from tf_minilm.hf.checkpoints import load_hf_checkpoint
    from tf_minilm.model.config import ConfigError
    from tf_minilm.model.pooling import read_pooling

    try:
        teacher_dir = mpnet_teacher_dir()
    except ConfigError as err:
        raise SystemExit(f"base_size: {err}") from err
    teacher, tokenizer = load_hf_checkpoint(teacher_dir)
    context: dict[str, Any] = {
        "teacher_dir": teacher_dir, "teacher": teacher, "tokenizer": tokenizer,
        "pooling": read_pooling(teacher_dir), "fidelity_texts": fidelity.mr_test_texts(args.seed),
        "mr": load_task("mr", seed=args.seed, max_train=args.max_train, max_test=args.max_test),
    }
    context["teacher_embeddings"] = fidelity.encoder_embedder(  # the fidelity reference
        teacher, tokenizer, context["pooling"])(context["fidelity_texts"].texts)
    context["assistant_dir"] = lambda: build_row("assistant", args, context)[0]
    context["targets"] = lambda: prepare_targets(args, teacher_dir)
    rows = []
    for name in args.rows:
        rows.append(cached_json(os.path.join(args.output, "rows", f"{name}.json"),
                                lambda name=name: run_row(name, args, context), f"row {name}"))
        write_text_atomic(os.path.join(args.output, "table.md"), format_table(rows, {}) + "\n")
    latency = {} if args.no_latency else cached_json(
        os.path.join(args.output, "latency.json"), lambda: latencies(rows, args, context),
        "latency")
    write_text_atomic(os.path.join(args.output, "table.md"), format_table(rows, latency) + "\n")
    # Fine-tuning last (the costliest column): every row's probe, fidelity and latency
    # are on disk before it starts.
    for row in rows if not args.no_finetune else []:
        if args.finetune_rows is not None and row["row"] not in args.finetune_rows:
            continue
        row["mr"].update(cached_json(
            os.path.join(args.output, "rows", f"{row['row']}.finetune.json"),
            lambda row=row: finetune_row(row, args, context), f"fine-tuning row {row['row']}"))
        write_text_atomic(os.path.join(args.output, "table.md"),
                          format_table(rows, latency) + "\n")
    table = format_table(rows, latency)
    settings = {**vars(args), "finetune_lr": list(args.finetune_lr),
                "fidelity_texts": context["fidelity_texts"].source}
    write_json_atomic(os.path.join(args.output, "table.json"),
                      {"settings": settings, "rows": rows, "latency": latency})
    write_text_atomic(os.path.join(args.output, "table.md"), table + "\n")
    sys.stdout.write(table + "\n" + json.dumps(latency, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
