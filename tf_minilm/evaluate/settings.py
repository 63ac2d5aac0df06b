"""How a downstream evaluation runs: `EvalSettings` and `EvaluationError`.

Owns: the evaluation's settings and their checks (the CLI re-raises naming its flags).
Imports: `tf_minilm.constants`, `tf_minilm.rules`.
"""

from __future__ import annotations

import dataclasses
import math

from tf_minilm import rules
from tf_minilm.constants import CLASSIFIER_POOLINGS

MODES = ("fine-tune", "probe")

FINETUNE_LR_GRID = (5e-5, 1e-4, 2e-4)
"""Fine-tuning peak learning rates the paper table chooses from, per model (as the MiniLM
papers choose theirs per task from a small grid)."""

FINETUNE_VALIDATION_FRACTION = 0.2
"""Share of the training split a learning-rate choice is scored on (stratified)."""


class EvaluationError(ValueError):
    """A setting or input the evaluation cannot use; the message names it."""


@dataclasses.dataclass
class EvalSettings:
    """How to evaluate (every field has a working default).

    Args:
        mode: "fine-tune" (whole encoder + head) or "probe" (logistic regression on
            frozen pooled embeddings).
        epochs: fine-tuning epochs.
        batch_size: examples per step (and per inference batch).
        learning_rate: peak AdamW learning rate of fine-tuning (when no grid is given).
        learning_rate_grid: peak learning rates to choose from instead, by accuracy on a
            stratified `FINETUNE_VALIDATION_FRACTION` of the training split (each fine-tuned
            on the rest); the model is then fine-tuned on the whole training split at the
            chosen rate. The held-out test split is never looked at. None: no choice.
        warmup_fraction: share of the fine-tuning steps spent warming the learning rate
            up linearly from 0; it then decays linearly to 0.
        weight_decay: AdamW decoupled weight decay (not applied to biases/LayerNorm).
        max_seq_len: tokens per text after truncation ([CLS] and [SEP] included).
        pooling: "mean", "cls" or "pooler" (see `SequenceClassifier`).
        dropout: dropout before the fine-tuning head.
        seed: seed of the head initialisation, dropout and shuffling.
        probe_l2: L2 penalty of the probe's weights (on standardised features); None
            chooses it from `PROBE_L2_GRID` by accuracy on 10% of the training split.
        probe_max_iter: most solver (L-BFGS) iterations of the probe.

    Example:
    >>> settings = EvalSettings(mode="probe", max_seq_len=128)
    """

    mode: str = "fine-tune"
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-5
    learning_rate_grid: tuple[float, ...] | None = None
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_seq_len: int = 64
    pooling: str = "mean"
    dropout: float = 0.1
    seed: int = 0
    probe_l2: float | None = None
    probe_max_iter: int = 100

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise EvaluationError(f"mode is {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.pooling not in CLASSIFIER_POOLINGS:
            raise EvaluationError(
                f"pooling is {self.pooling!r}; choose one of {', '.join(CLASSIFIER_POOLINGS)}")
        for name in ("epochs", "batch_size", "probe_max_iter"):
            rules.positive_int(getattr(self, name), name, error=EvaluationError)
        rules.seq_len(self.max_seq_len, "max_seq_len", error=EvaluationError)
        if not 0.0 < float(self.learning_rate) < math.inf:
            raise EvaluationError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.learning_rate_grid is not None:
            grid = tuple(self.learning_rate_grid)
            if not grid or any(isinstance(rate, bool) or not isinstance(rate, int | float)
                               or not 0.0 < float(rate) < math.inf for rate in grid):
                raise EvaluationError("learning_rate_grid must be a non-empty list of rates > 0, "
                                      f"got {self.learning_rate_grid!r}")
            if len(set(grid)) != len(grid):
                raise EvaluationError(f"learning_rate_grid repeats a rate: {grid!r}")
            self.learning_rate_grid = tuple(sorted(float(rate) for rate in grid))
            if self.mode != "fine-tune":
                raise EvaluationError("learning_rate_grid applies to fine-tuning, not to "
                                      f"mode {self.mode!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise EvaluationError(
                f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise EvaluationError(f"dropout must be in [0, 1), got {self.dropout!r}")
        rules.weight_decay(self.weight_decay, "weight_decay", error=EvaluationError)
        if self.probe_l2 is not None and not float(self.probe_l2) > 0.0:
            raise EvaluationError(f"probe_l2 must be > 0 (or None: chosen), got {self.probe_l2!r}")
