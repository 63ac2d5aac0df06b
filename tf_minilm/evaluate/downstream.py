"""Downstream evaluation of one model folder: fine-tuning or a linear probe on a `TaskData`.

Owns: `evaluate_model`, the driver behind `tf-minilm evaluate --task mr|bbc`: load the
checkpoint, check the sequence length, run `finetune.fine_tune` or `probe.probe`, score
the held-out split (accuracy, macro-F1) and assemble the report (parameter counts, wall
times, the exported ONNX folder's facts and bench latencies when found), optionally
saving the fine-tuned classifier. Imports: `hf.checkpoints` and the other `evaluate`
modules.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

from tf_minilm.evaluate.finetune import fine_tune, select_learning_rate
from tf_minilm.evaluate.metrics import accuracy, f1_per_class, macro_f1
from tf_minilm.evaluate.probe import probe
from tf_minilm.evaluate.report import (
    model_name,
    onnx_info,
    parameter_counts,
    save_classifier,
    write_json,
)
from tf_minilm.evaluate.settings import EvalSettings, EvaluationError
from tf_minilm.evaluate.tasks import TaskData

logger = logging.getLogger(__name__)


def _check_length(encoder: Any, max_seq_len: int, model_dir: str) -> None:
    limit = encoder.config.max_sequence_length
    if max_seq_len > limit:
        raise EvaluationError(
            f"max_seq_len {max_seq_len} exceeds what {model_dir} supports ({limit} positions)")


def evaluate_model(
    model_dir: str,
    task: TaskData,
    settings: EvalSettings,
    onnx_dir: str | None = None,
    bench_file: str | None = None,
    save_dir: str | None = None,
    verbose: int | str = 0,
) -> dict[str, Any]:
    """Evaluate the HF checkpoint in `model_dir` on `task`.

    Args:
        model_dir: HF BERT/RoBERTa/XLM-R folder (teacher, student, any checkpoint).
        task: the task, already split.
        settings: how to evaluate.
        onnx_dir: exported ONNX folder of this model (default: `<model_dir>/../onnx`
            when it holds `export_report.json`).
        bench_file: `tf-minilm bench` JSON to take latencies from.
        save_dir: fine-tune mode: save the trained classifier as
            `<save_dir>/<parent>-<folder>-<task>.keras` (atomic), with a `.json` beside it
            holding the label names, tokenizer folder, max_seq_len and pooling.
        verbose: Keras `fit` verbosity.

    Returns:
        A JSON-ready dict: model, model_dir, mode, accuracy, macro_f1, f1_per_class,
        parameter counts, timings, training figures and `onnx` (or None).

    Raises:
        CheckpointError: the folder is not a readable checkpoint.
        EvaluationError: a setting the model cannot use.
    """
    import keras

    from tf_minilm.hf.checkpoints import load_hf_checkpoint

    keras.utils.set_random_seed(settings.seed)
    load_start = time.perf_counter()
    encoder, tokenizer = load_hf_checkpoint(model_dir)
    _check_length(encoder, settings.max_seq_len, model_dir)
    # Look for the ONNX folder and read the bench file before hours of training.
    onnx = onnx_info(model_dir, onnx_dir, bench_file)
    load_seconds = time.perf_counter() - load_start
    if settings.mode == "probe":
        outcome = probe(encoder, tokenizer, task, settings)
    else:
        validation = None
        if settings.learning_rate_grid:
            rate, validation = select_learning_rate(
                lambda: load_hf_checkpoint(model_dir)[0], tokenizer, task, settings)
            logger.info("%s: fine-tuning learning rate %g chosen on the training split "
                        "(accuracy by rate: %s)", model_dir, rate, validation)
            settings = dataclasses.replace(settings, learning_rate=rate,
                                           learning_rate_grid=None)
        outcome = fine_tune(encoder, tokenizer, task, settings, verbose=verbose)
        outcome["learning_rate_validation_accuracy"] = validation
    predictions = outcome.pop("predictions")
    model = outcome.pop("model", None)
    name = model_name(model_dir)
    result: dict[str, Any] = {
        "model": name,
        "model_dir": os.path.abspath(model_dir),
        "task": task.name,
        "mode": settings.mode,
        "accuracy": accuracy(task.test_labels, predictions),
        "macro_f1": macro_f1(task.test_labels, predictions, task.num_classes),
        "f1_per_class": dict(zip(task.label_names,
                                 f1_per_class(task.test_labels, predictions,
                                              task.num_classes).round(6).tolist(),
                                 strict=True)),
        "num_train": len(task.train_texts),
        "num_test": len(task.test_texts),
        "layers": encoder.config.num_hidden_layers,
        "hidden_size": encoder.config.hidden_size,
        **parameter_counts(encoder),
        "load_seconds": load_seconds,
        **outcome,
        "onnx": onnx,
    }
    if save_dir is not None and model is not None:
        path = os.path.join(save_dir, f"{name.replace('/', '-')}-{task.name}.keras")
        result["saved_model"] = save_classifier(model, path)
        # What export/serving need beside the weights: label names and the tokenizer folder.
        write_json(path[: -len(".keras")] + ".json", {
            "task": task.name, "label_names": list(task.label_names),
            "tokenizer_dir": result["model_dir"], "max_seq_len": settings.max_seq_len,
            "pooling": settings.pooling, "accuracy": result["accuracy"],
            "macro_f1": result["macro_f1"]})
    logger.info("%s on %s (%s): accuracy %.4f, macro-F1 %.4f", name, task.name, settings.mode,
                result["accuracy"], result["macro_f1"])
    return result


