"""Fine-tuning an encoder with a classification head through `model.fit`.

Owns: the fine-tuning recipe (AdamW, linear warm-up then decay, no decay on biases and
LayerNorm, global norm clipped to 1, as HF `Trainer` for GLUE) and its padded,
reshuffled `tf.data` input, and the choice of its peak learning rate from a grid on a
slice of the training split (`select_learning_rate`). Imports: Keras/TensorFlow,
`model.classifier`, `schedules`, `evaluate.settings`, `evaluate.tasks`,
`evaluate.metrics`, `tokens`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tf_minilm.evaluate.metrics import accuracy
from tf_minilm.evaluate.settings import FINETUNE_VALIDATION_FRACTION, EvalSettings
from tf_minilm.evaluate.tasks import TaskData, stratified_split
from tf_minilm.tokens import batched_apply, tokenize

logger = logging.getLogger(__name__)


def training_dataset(ids: Sequence[Sequence[int]], labels: np.ndarray, batch_size: int,
                     pad_id: int, seed: int) -> Any:
    """A reshuffled-every-epoch `tf.data.Dataset` of (inputs dict, label), padded per batch."""
    import tensorflow as tf

    lengths = np.array([len(row) for row in ids], np.int64)
    flat = np.fromiter((t for row in ids for t in row), np.int32, count=int(lengths.sum()))
    ragged_ids = tf.RaggedTensor.from_row_lengths(flat, lengths)
    ragged_mask = tf.RaggedTensor.from_row_lengths(np.ones_like(flat), lengths)
    dataset = tf.data.Dataset.from_tensor_slices(
        (ragged_ids, ragged_mask, np.asarray(labels, np.int32)))
    dataset = dataset.shuffle(len(lengths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.ragged_batch(batch_size)

    def to_inputs(input_ids: Any, mask: Any, label: Any) -> tuple[dict[str, Any], Any]:
        input_ids = input_ids.to_tensor(default_value=pad_id)
        inputs = {"input_ids": input_ids, "attention_mask": mask.to_tensor(default_value=0),
                  "token_type_ids": tf.zeros_like(input_ids)}
        return inputs, label

    return dataset.map(to_inputs).prefetch(2)


def fine_tune(encoder: Any, tokenizer: Any, task: TaskData, settings: EvalSettings,
              verbose: int | str = 0) -> dict[str, Any]:
    """Fine-tune `encoder` with a `SequenceClassifier` head; held-out predictions.

    Returns:
        A dict with timings, final-epoch training loss/accuracy, predictions and the
        trained `model` (a `SequenceClassifier`).
    """
    import keras

    from tf_minilm.model.classifier import SequenceClassifier
    from tf_minilm.schedules import WarmupLinearDecay

    keras.utils.set_random_seed(settings.seed)
    model = SequenceClassifier(encoder, task.num_classes, dropout=settings.dropout,
                               pooling=settings.pooling)
    pad_id = encoder.config.pad_token_id
    train_ids = tokenize(tokenizer, task.train_texts, settings.max_seq_len)
    test_ids = tokenize(tokenizer, task.test_texts, settings.max_seq_len)
    steps_per_epoch = math.ceil(len(train_ids) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup_steps = int(round(settings.warmup_fraction * total_steps))
    optimizer = keras.optimizers.AdamW(
        learning_rate=WarmupLinearDecay(settings.learning_rate, warmup_steps, total_steps),
        weight_decay=settings.weight_decay, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
        global_clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    dataset = training_dataset(train_ids, task.train_labels, settings.batch_size, pad_id,
                               settings.seed)
    logger.info("fine-tuning on %d examples: %d epochs x %d steps (warmup %d), lr %g",
                len(train_ids), settings.epochs, steps_per_epoch, warmup_steps,
                settings.learning_rate)
    start = time.perf_counter()
    history = model.fit(dataset, epochs=settings.epochs, verbose=verbose, shuffle=False)
    train_seconds = time.perf_counter() - start

    import tensorflow as tf

    spec = [tf.TensorSpec((None, None), tf.int32)] * 3

    @tf.function(input_signature=spec)
    def logits(input_ids: Any, mask: Any, types: Any) -> Any:
        return model({"input_ids": input_ids, "attention_mask": mask,
                      "token_type_ids": types}, training=False)

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        return logits(batch["input_ids"], batch["attention_mask"],
                      batch["token_type_ids"]).numpy()

    eval_start = time.perf_counter()
    test_logits = batched_apply(run, test_ids, settings.batch_size, pad_id)
    return {
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - eval_start,
        "train_loss": float(history.history["loss"][-1]),
        "train_accuracy": float(history.history["accuracy"][-1]),
        "learning_rate": settings.learning_rate,
        "steps": total_steps,
        "warmup_steps": warmup_steps,
        "predictions": np.argmax(test_logits, axis=1),
        "model": model,
    }


def select_learning_rate(load_encoder: Callable[[], Any], tokenizer: Any, task: TaskData,
                         settings: EvalSettings,
                         validation_fraction: float = FINETUNE_VALIDATION_FRACTION,
                         ) -> tuple[float, dict[str, float]]:
    """Choose the fine-tuning peak learning rate from `settings.learning_rate_grid`.

    Every rate fine-tunes a fresh encoder (`load_encoder()`) on the training split less a
    stratified `validation_fraction`, and is scored by accuracy on that slice; the held-out
    test split is never looked at. Ties go to the smaller rate.

    Args:
        load_encoder: returns a freshly loaded encoder (fine-tuning changes its weights).
        tokenizer: the encoder's tokenizer.
        task: the task; only its training split is used.
        settings: the evaluation settings; `learning_rate_grid` must be set.
        validation_fraction: share of the training split scored.

    Returns:
        `(best_rate, {str(rate): validation accuracy})`.
    """
    grid = settings.learning_rate_grid
    if not grid:
        raise ValueError("settings.learning_rate_grid is empty: nothing to choose from")
    train, valid = stratified_split(task.train_labels, validation_fraction, settings.seed)
    slice_task = dataclasses.replace(
        task, name=f"{task.name} (learning-rate choice)",
        train_texts=[task.train_texts[i] for i in train], train_labels=task.train_labels[train],
        test_texts=[task.train_texts[i] for i in valid], test_labels=task.train_labels[valid])
    scores: dict[str, float] = {}
    best, best_score = grid[0], -1.0
    for rate in grid:
        outcome = fine_tune(load_encoder(), tokenizer, slice_task,
                            dataclasses.replace(settings, learning_rate=rate))
        score = accuracy(slice_task.test_labels, outcome["predictions"])
        scores[repr(rate)] = score
        logger.info("learning rate %g: accuracy %.4f on %d validation examples", rate, score,
                    len(valid))
        if score > best_score:
            best, best_score = rate, score
    return float(best), scores
