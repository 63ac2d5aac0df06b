"""Learning-rate schedule of the MiniLM recipe: linear warm-up, then linear decay to 0.

Owns: `WarmupLinearDecay` (distillation and fine-tuning). Imports: Keras and `rules`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from tf_minilm import rules


@keras.saving.register_keras_serializable(package="tf_minilm")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak_learning_rate`, then linear decay to 0.

    With `step` the number of optimizer updates already applied (Keras'
    `optimizer.iterations`, so the first update uses step 0):

        lr(step) = peak * step / warmup_steps                      if step < warmup_steps
        lr(step) = peak * (total - step) / (total - warmup_steps)  if warmup_steps <= step < total
        lr(step) = 0                                               if step >= total

    This is the schedule of BERT/MiniLM (and Hugging Face
    `get_linear_schedule_with_warmup`); the very first update has learning rate 0
    when `warmup_steps > 0`.

    A run extended after it started (`--resume --steps N`) re-plans the decay: each
    `(start_step, total)` pair of `replans` makes the steps from `start_step` on follow
    the same formula with `total` in place of `total_steps` (the warm-up is kept).

    Args:
        peak_learning_rate: learning rate at the end of warm-up.
        warmup_steps: number of warm-up updates (0 starts at the peak).
        total_steps: number of updates after which the rate is 0; must exceed
            `warmup_steps`.
        replans: `(start_step, total)` pairs in increasing order of both: from
            `start_step` on, the decay ends at `total` instead.

    Example:
    >>> schedule = WarmupLinearDecay(1e-3, warmup_steps=10, total_steps=110)
    >>> [round(float(schedule(step)), 6) for step in (0, 5, 10, 60, 110)]
    [0.0, 0.0005, 0.001, 0.0005, 0.0]
    >>> longer = WarmupLinearDecay(1e-3, 10, 110, replans=[(110, 210)])
    >>> [round(float(longer(step)), 6) for step in (60, 110, 160, 210)]
    [0.0005, 0.0005, 0.00025, 0.0]
    """

    def __init__(self, peak_learning_rate: float, warmup_steps: int, total_steps: int,
                 replans: Sequence[Sequence[int]] = ()) -> None:
        if not float(peak_learning_rate) > 0.0:
            raise ValueError(f"peak learning rate must be > 0, got {peak_learning_rate!r}")
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        rules.positive_int(total_steps, "total steps", error=ValueError)
        if warmup_steps >= total_steps:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) must be smaller than the total number of steps "
                f"({total_steps})"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.replans = [(int(start), int(total)) for start, total in replans]
        last_start, last_total = 0, self.total_steps
        for start, total in self.replans:
            if start < last_start or total <= last_total or start > last_total:
                raise ValueError(
                    f"replans must start inside the plan before them and end later, in order; "
                    f"got {self.replans} after a plan of {self.total_steps} steps")
            last_start, last_total = start, total

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        peak = ops.cast(self.peak_learning_rate, "float32")
        warmup = float(self.warmup_steps)
        total = ops.cast(self.total_steps, "float32")
        for start, replanned in self.replans:
            total = ops.where(step >= float(start), float(replanned), total)
        warm = peak * step / max(warmup, 1.0)
        decay = peak * ops.maximum(total - step, 0.0) / (total - warmup)
        return ops.where(step < warmup, warm, decay)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }
        if self.replans:
            config["replans"] = [list(pair) for pair in self.replans]
        return config
