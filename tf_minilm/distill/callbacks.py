"""The Keras callbacks of a distillation run, and the metrics log they write.

Owns: stopping at a non-finite loss, periodic checkpoints (through a `save` callable;
the file format is `distill.state`'s), `metrics.jsonl` + TensorBoard, and periodic
evaluation. Imports: Keras, `fileio`.

Callbacks (put them in this order, before any other):
    `NonFiniteGuard`     stops training at the first non-finite loss and says where;
    `PeriodicCheckpoint` saves every N steps (never after a non-finite loss);
    `MetricsLogger`      appends one JSON line per interval to metrics.jsonl and the
                         same scalars to TensorBoard, then resets the running means
                         so each line averages its own interval;
    `PeriodicEvaluation` evaluates held-out batches every N steps ("eval_*" lines).
Each counts global steps from `initial_step` (one `on_train_batch_end` per step,
so the model must use `steps_per_execution=1`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import keras

from tf_minilm.fileio import atomic_path

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training stopped because a loss became NaN or infinite."""


def _finite_losses(logs: dict[str, Any] | None) -> tuple[bool, dict[str, float]]:
    values = {k: float(v) for k, v in (logs or {}).items() if k == "loss" or k.startswith("loss_")}
    return all(math.isfinite(v) for v in values.values()), values


def _scalar_metadata() -> Any:
    """TensorBoard "scalars" plugin metadata, so scalars need no `tensorboard` package."""
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )


class _StepCallback(keras.callbacks.Callback):
    """Counts global steps: `initial_step` + one per training batch."""

    def __init__(self, initial_step: int = 0) -> None:
        super().__init__()
        self.step = int(initial_step)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if getattr(self.model, "steps_per_execution", 1) != 1:
            raise ValueError(
                f"{type(self).__name__} counts one step per batch; compile the model with "
                "steps_per_execution=1"
            )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.step += 1


class NonFiniteGuard(_StepCallback):
    """Stops training at the first step whose loss is NaN or infinite.

    After training, `tripped` is True and `message` names the step and the losses;
    the run should then raise `NonFiniteLossError(message)`.

    Args:
        initial_step: global step before the first batch of this `fit`.
        last_checkpoint: callable returning the newest checkpoint path (for the message).

    Example:
    >>> guard = NonFiniteGuard(initial_step=0)
    >>> distiller.fit(dataset, steps_per_epoch=100, callbacks=[guard])  # doctest: +SKIP
    >>> if guard.tripped:  # doctest: +SKIP
    ...     raise NonFiniteLossError(guard.message)
    """

    def __init__(self, initial_step: int = 0,
                 last_checkpoint: Callable[[], str | None] | None = None) -> None:
        super().__init__(initial_step)
        self.last_checkpoint = last_checkpoint
        self.tripped = False
        self.message = ""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_train_batch_end(batch, logs)
        finite, values = _finite_losses(logs)
        if finite or self.tripped:
            return
        self.tripped = True
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        kept = self.last_checkpoint() if self.last_checkpoint else None
        self.message = (
            f"non-finite loss at step {self.step} ({shown}); training stopped. "
            + (f"Last good checkpoint: {kept}" if kept else "No checkpoint was written.")
            + " Lower the learning rate or check the data and the precision policy."
        )
        logger.error(self.message)
        self.model.stop_training = True


class PeriodicCheckpoint(_StepCallback):
    """Saves the training state every `every` global steps.

    Args:
        save: callable taking the global step and writing the checkpoint.
        every: interval in global steps.
        initial_step: global step before the first batch of this `fit`.

    Example:
    >>> checkpointer = PeriodicCheckpoint(
    ...     lambda step: manager.save(step, student.variables, optimizer.variables, {}),
    ...     every=1000)  # doctest: +SKIP
    """

    def __init__(self, save: Callable[[int], Any], every: int, initial_step: int = 0) -> None:
        super().__init__(initial_step)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"checkpoint_every must be an integer >= 1, got {every!r}")
        self.save = save
        self.every = every
        self.last_saved: int | None = None
        self._stopped = False

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_train_batch_end(batch, logs)
        finite, _ = _finite_losses(logs)
        if not finite:
            self._stopped = True
        if self._stopped or self.step % self.every:
            return
        self.save(self.step)
        self.last_saved = self.step


class MetricsLogger(_StepCallback):
    """One JSON line (and TensorBoard scalars) per `every` steps, averaged over the interval.

    Each line holds `step`, every loss in the logs, `learning_rate` (the rate the
    last update used), `tokens_per_s` (sequence positions per second over the
    interval) and `elapsed_s` (wall time since the run first started, across
    resumes). After writing, the model's running metrics are reset so the next line
    averages only its own interval.

    Args:
        jsonl_path: metrics.jsonl file (appended to; flushed every line); None: no file.
        log_dir: TensorBoard folder; None: no TensorBoard.
        every: interval in global steps.
        initial_step: global step before the first batch of this `fit`.
        tokens_per_step: sequence positions per global batch (batch x seq).
        learning_rate: callable step -> learning rate (the schedule); default: read
            the optimizer's current rate.
        elapsed_offset: seconds spent before this process started (resume).
        write: False on non-chief workers (they still reset the metrics).
        total_steps: shown in the progress line logged (INFO) with each record.

    The first interval includes the tracing/compilation of the train step, so its
    tokens_per_s is low.

    Example:
    >>> logger_cb = MetricsLogger("runs/x/metrics.jsonl", "runs/x/tensorboard", every=100,
    ...                           tokens_per_step=32 * 128)  # doctest: +SKIP
    """

    def __init__(
        self,
        jsonl_path: str | None,
        log_dir: str | None,
        every: int,
        initial_step: int = 0,
        tokens_per_step: int = 0,
        learning_rate: Callable[[Any], Any] | None = None,
        elapsed_offset: float = 0.0,
        write: bool = True,
        total_steps: int | None = None,
    ) -> None:
        super().__init__(initial_step)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"log_every must be an integer >= 1, got {every!r}")
        self.jsonl_path = jsonl_path
        self.log_dir = log_dir
        self.every = every
        self.tokens_per_step = tokens_per_step
        self.learning_rate = learning_rate
        self.elapsed_offset = float(elapsed_offset)
        self.write = write
        self.total_steps = total_steps
        self.last_logged = int(initial_step)
        self.last_values: dict[str, float] = {}
        self._writer: Any = None
        self._pending_logs: dict[str, Any] | None = None
        self._start = time.perf_counter()
        self._interval_start = self._start
        self._began = False

    @property
    def elapsed(self) -> float:
        """Seconds since the run first started (including earlier processes)."""
        return self.elapsed_offset + time.perf_counter() - self._start

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        if self._began:  # a later stage's fit: keep the time of the earlier ones
            self.elapsed_offset = self.elapsed
        self._began = True
        self._start = self._interval_start = time.perf_counter()
        if self.write and self.log_dir and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(self.log_dir)

    def _current_learning_rate(self) -> float:
        optimizer = self.model.optimizer
        if self.learning_rate is not None:
            iterations = int(keras.ops.convert_to_numpy(optimizer.iterations.value))
            return float(self.learning_rate(max(iterations - 1, 0)))
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    def write_record(self, record: dict[str, Any], prefix: str = "") -> None:
        """Append `record` as one JSON line and as TensorBoard scalars (chief only)."""
        if not self.write:
            return
        if self.jsonl_path:
            directory = os.path.dirname(self.jsonl_path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            with open(self.jsonl_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
        if self._writer is not None:
            import tensorflow as tf

            with self._writer.as_default():
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)):
                        tf.summary.write(prefix + key, tf.constant(float(value), tf.float32),
                                         step=record["step"], metadata=_scalar_metadata())
            self._writer.flush()

    def _log_interval(self, logs: dict[str, Any] | None) -> None:
        steps = self.step - self.last_logged
        if steps <= 0 or not _finite_losses(logs)[0]:
            return  # non-finite intervals are reported by NonFiniteGuard, not recorded
        now = time.perf_counter()
        seconds = max(now - self._interval_start, 1e-9)
        record: dict[str, Any] = {"step": self.step}
        record.update({k: float(v) for k, v in (logs or {}).items()})
        record["learning_rate"] = self._current_learning_rate()
        optimizer = self.model.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            record["loss_scale"] = float(
                keras.ops.convert_to_numpy(optimizer.dynamic_scale.value)
            )
        record["tokens_per_s"] = self.tokens_per_step * steps / seconds
        record["elapsed_s"] = self.elapsed
        self.write_record(record)
        losses = " ".join(f"{k}={v:.6g}" for k, v in record.items() if k.startswith("loss"))
        logger.info(
            "step %d%s %s lr=%.3g tokens/s=%.0f", self.step,
            f"/{self.total_steps}" if self.total_steps else "", losses,
            record["learning_rate"], record["tokens_per_s"],
        )
        self.last_values = record
        self.last_logged = self.step
        self._interval_start = now
        self.model.reset_metrics()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_train_batch_end(batch, logs)
        if self.step % self.every == 0:
            self._log_interval(logs)
        else:
            self._pending_logs = logs

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        pending = self._pending_logs
        if pending is not None and self.step > self.last_logged:
            self._log_interval(pending)
        self._pending_logs = None

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def truncate_jsonl(path: str, after_step: int) -> None:
    """Drop lines of a metrics.jsonl whose `step` exceeds `after_step` (rewritten atomically).

    A run killed after its last checkpoint logged steps that the resumed run logs
    again; this keeps each step once.
    """
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if int(record.get("step", 0)) <= after_step:
                kept.append(json.dumps(record) + "\n")
    with atomic_path(path, durable=True) as partial, \
            open(partial, "w", encoding="utf-8") as handle:
        handle.writelines(kept)


class PeriodicEvaluation(keras.callbacks.Callback):
    """Evaluates `dataset` every `every` steps (None: only when asked); records "eval_*" lines.

    Args:
        dataset: a finite dataset of held-out batches, or None.
        every: steps between evaluations, or None.
        eval_steps: batches per evaluation; None = the whole dataset.
        metrics_logger: the run's `MetricsLogger` (eval lines go to its file).
        initial_step: the global step training starts from.
    """

    def __init__(self, dataset: Any, every: int | None, eval_steps: int | None,
                 metrics_logger: MetricsLogger, initial_step: int) -> None:
        super().__init__()
        self.dataset = dataset
        self.every = every
        self.eval_steps = eval_steps
        self.metrics_logger = metrics_logger
        self.step = initial_step
        self.last_step: int | None = None
        self.last_result: dict[str, float] | None = None

    def run(self, step: int, write: bool = True) -> dict[str, float]:
        """Evaluate now; record (unless `write` is False) and return {"loss": ..., ...}."""
        values = self.model.evaluate(self.dataset, steps=self.eval_steps, verbose=0,
                                     return_dict=True)
        values = {key: float(value) for key, value in values.items()}
        self.last_step, self.last_result = step, values
        if write:
            self.metrics_logger.write_record(
                {"step": step, **{f"eval_{k}": v for k, v in values.items()}}
            )
        logger.info("step %d eval %s", step,
                    " ".join(f"{k}={v:.6g}" for k, v in sorted(values.items())))
        return values

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.step += 1
        if self.dataset is not None and self.every and self.step % self.every == 0 \
                and not self.model.stop_training:
            self.run(self.step)
            self.model.reset_metrics()
