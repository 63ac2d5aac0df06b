"""Training-state checkpoints: `ckpt-<step>.npz` files that make resume exact.

Owns: the checkpoint file format and folder. `CheckpointManager` writes files holding
every student variable (weights and dropout seed states), every optimizer variable
(step counter, Adam moments, loss-scale state) and a JSON header (global step, run
fingerprint, elapsed time). Files are written to a temporary name in the same folder,
fsync'ed and renamed with `os.replace`, so a checkpoint under its final name is always
complete (`fileio.atomic_path`, durable); states with a non-finite value are refused.
Imports: Keras, NumPy, `fileio`, `rules`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import keras
import numpy as np

from tf_minilm import rules
from tf_minilm.fileio import PARTIAL, atomic_path

logger = logging.getLogger(__name__)


CHECKPOINT_FORMAT = 1


_CHECKPOINT_RE = re.compile(r"^ckpt-(\d{8,})\.npz$")


_TEMP_PREFIX = ".ckpt-"


class TrainingCheckpointError(ValueError):
    """A training checkpoint that cannot be written, read or applied to this run."""


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
        rules.positive_int(keep, "keep_checkpoints", error=ValueError)
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

    def newest_readable(self) -> tuple[str, dict[str, Any]] | None:
        """(path, header) of the newest checkpoint that reads back intact, or None.

        A newer checkpoint that does not read (truncated, zeroed, bad CRC) is renamed
        `<name>.corrupt` (kept, never deleted) with a warning naming it, and the previous
        one is used; resume then continues from there.

        Raises:
            TrainingCheckpointError: checkpoints exist but none of them reads.
        """
        found = self.checkpoints()
        problems = []
        for _, path in reversed(found):
            try:
                header = self.read(path)[2]
            except TrainingCheckpointError as err:
                problems.append(str(err))
                logger.warning("%s; trying the previous checkpoint", err)
                if self.is_chief:
                    os.replace(path, path + ".corrupt")
                continue
            if problems:
                logger.warning("resuming from %s, the newest intact checkpoint", path)
            return path, header
        if problems:
            raise TrainingCheckpointError("no training checkpoint in " + self.directory
                                          + " reads back: " + "; ".join(problems))
        return None

    def remove_stale_temporaries(self) -> None:
        """Delete temporary files left by a save that was killed half-way."""
        if not self.is_chief or not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            if name.startswith(_TEMP_PREFIX) and (PARTIAL in name or name.endswith(".tmp")):
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
        with atomic_path(final, durable=True) as partial:
            np.savez(partial, **arrays)
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
        except Exception as err:  # zip, CRC, zlib, EOF, JSON, missing keys: all corruption
            raise TrainingCheckpointError(
                f"{path}: not a readable training checkpoint ({type(err).__name__}: {err})"
            ) from err
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
