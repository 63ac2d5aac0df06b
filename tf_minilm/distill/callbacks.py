"""Training-state checkpoints and the Keras callbacks of a distillation run.

`CheckpointManager` writes `ckpt-<step>.npz` files holding every student variable
(weights and dropout seed states), every optimizer variable (step counter, Adam
moments, loss-scale state) and a JSON header (global step, run fingerprint,
student config, elapsed time). Files are written to a temporary name in the same
folder, fsync'ed and renamed with `os.replace`, so a checkpoint under its final
name is always complete; states with a non-finite value are refused.

Callbacks (put them in this order, before any other):
    `NonFiniteGuard`     stops training at the first non-finite loss and says where;
    `PeriodicCheckpoint` saves every N steps (never after a non-finite loss);
    `MetricsLogger`      appends one JSON line per interval to metrics.jsonl and the
                         same scalars to TensorBoard, then resets the running means
                         so each line averages its own interval.
Each counts global steps from `initial_step` (one `on_train_batch_end` per step,
so the model must use `steps_per_execution=1`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_CHECKPOINT_RE = re.compile(r"^ckpt-(\d{8,})\.npz$")
_TEMP_PREFIX = ".ckpt-"


class TrainingCheckpointError(ValueError):
    """A training checkpoint that cannot be written, read or applied to this run."""


class NonFiniteLossError(RuntimeError):
    """Training stopped because a loss became NaN or infinite."""


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _variable_values(variables: list[Any]) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in variables]


class CheckpointManager:
    """Atomic, rotating training checkpoints in one folder.

    Args:
        directory: folder of the `ckpt-<step>.npz` files (created on first save).
        keep: how many of the newest checkpoints to keep (>= 1).
        is_chief: only the chief writes; other workers only read (multi-worker).

    Example:
    >>> manager = CheckpointManager("runs/x/checkpoints", keep=3)  # doctest: +SKIP
    >>> path = manager.save(100, student.variables, optimizer.variables, {})  # doctest: +SKIP
    >>> meta = manager.restore(manager.latest(), student.variables,
    ...                        optimizer.variables)  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, is_chief: bool = True) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep_checkpoints must be an integer >= 1, got {keep!r}")
        self.directory = os.fspath(directory)
        self.keep = keep
        self.is_chief = is_chief

    def path(self, step: int) -> str:
        """Final file name of the checkpoint of global step `step`."""
        return os.path.join(self.directory, f"ckpt-{step:08d}.npz")

    def checkpoints(self) -> list[tuple[int, str]]:
        """(step, path) of every complete checkpoint, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = _CHECKPOINT_RE.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.directory, name)))
        return sorted(found)

    def latest(self) -> str | None:
        """Path of the newest checkpoint, or None."""
        found = self.checkpoints()
        return found[-1][1] if found else None

    def remove_stale_temporaries(self) -> None:
        """Delete temporary files left by a save that was killed half-way."""
        if not self.is_chief or not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            if name.startswith(_TEMP_PREFIX) and name.endswith(".tmp"):
                os.remove(os.path.join(self.directory, name))

    def save(
        self,
        step: int,
        student_variables: list[Any],
        optimizer_variables: list[Any],
        meta: dict[str, Any],
    ) -> str | None:
        """Write the state of global step `step`; returns the path (None on non-chief workers).

        Raises:
            TrainingCheckpointError: a value is NaN/inf (nothing is written).
        """
        if not self.is_chief:
            return None
        student = _variable_values(student_variables)
        optimizer = _variable_values(optimizer_variables)
        for group, values, variables in (
            ("student", student, student_variables),
            ("optimizer", optimizer, optimizer_variables),
        ):
            for value, variable in zip(values, variables, strict=True):
                if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                    raise TrainingCheckpointError(
                        f"refusing to save step {step}: {group} variable {variable.path} holds "
                        "NaN or inf"
                    )
        header = dict(meta)
        header.update(
            {
                "format": CHECKPOINT_FORMAT,
                "step": int(step),
                "student_variables": [v.path for v in student_variables],
                "optimizer_variables": [v.path for v in optimizer_variables],
            }
        )
        arrays = {f"student/{i:05d}": value for i, value in enumerate(student)}
        arrays.update({f"optimizer/{i:05d}": value for i, value in enumerate(optimizer)})
        arrays["header"] = np.array(json.dumps(header))
        os.makedirs(self.directory, exist_ok=True)
        final = self.path(step)
        handle = tempfile.NamedTemporaryFile(
            dir=self.directory, prefix=_TEMP_PREFIX, suffix=".tmp", delete=False
        )
        try:
            with handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, final)
        except BaseException:
            if os.path.exists(handle.name):
                os.remove(handle.name)
            raise
        _fsync_directory(self.directory)
        for _, old in self.checkpoints()[: -self.keep]:
            os.remove(old)
        logger.info("saved checkpoint %s", final)
        return final

    @staticmethod
    def read(path: str) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
        """(student arrays, optimizer arrays, header) of a checkpoint file."""
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                student = [data[f"student/{i:05d}"] for i in range(len(header["student_variables"]))]
                optimizer = [
                    data[f"optimizer/{i:05d}"] for i in range(len(header["optimizer_variables"]))
                ]
        except (OSError, KeyError, ValueError) as err:
            raise TrainingCheckpointError(f"{path}: not a readable training checkpoint ({err})") \
                from err
        if header.get("format") != CHECKPOINT_FORMAT:
            raise TrainingCheckpointError(
                f"{path}: checkpoint format {header.get('format')!r}, expected {CHECKPOINT_FORMAT}"
            )
        return student, optimizer, header

    def restore(
        self, path: str, student_variables: list[Any], optimizer_variables: list[Any]
    ) -> dict[str, Any]:
        """Assign a checkpoint to the variables (call in cross-replica context); returns its header.

        Raises:
            TrainingCheckpointError: the checkpoint does not match the variables
                (count, shape or dtype), naming the first mismatch.
        """
        student, optimizer, header = self.read(path)
        for group, values, variables in (
            ("student", student, student_variables),
            ("optimizer", optimizer, optimizer_variables),
        ):
            if len(values) != len(variables):
                raise TrainingCheckpointError(
                    f"{path}: holds {len(values)} {group} variables, this run has "
                    f"{len(variables)} (different model, optimizer or precision?)"
                )
            for value, variable, saved_name in zip(
                values, variables, header[f"{group}_variables"], strict=True
            ):
                shape = tuple(variable.shape)
                if value.shape != shape or np.dtype(value.dtype) != np.dtype(variable.dtype):
                    raise TrainingCheckpointError(
                        f"{path}: {group} variable {saved_name} is {value.dtype}{list(value.shape)}"
                        f" but this run's {variable.path} is {variable.dtype}{list(shape)}"
                    )
        for values, variables in ((student, student_variables), (optimizer, optimizer_variables)):
            for value, variable in zip(values, variables, strict=True):
                variable.assign(value)
        logger.info("restored checkpoint %s (step %d)", path, header["step"])
        return header


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
    directory = os.path.dirname(path) or "."
    handle = tempfile.NamedTemporaryFile(
        "w", dir=directory, prefix=".metrics-", suffix=".tmp", delete=False, encoding="utf-8"
    )
    with handle:
        handle.writelines(kept)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)
