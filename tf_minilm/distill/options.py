"""`TrainOptions`, the settings of one training run, and the rules on its numbers.

Owns: the fields of a run (steps, schedule, optimizer, objective, checkpoints, strategy
and precision names), their defaults, and the rules shared with the CLI's
`DistillConfig`: `check_warmup_steps` (the decay needs at least one step) and
`resolve_clipnorm` (None or 0 is off, else a positive norm). Imports: `rules`, `constants`,
`distill.objectives`, `model.pooling`, `data.schedule` (its seed rule); all TF-free.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tf_minilm import rules
from tf_minilm.constants import METHODS, PRECISIONS, STRATEGIES
from tf_minilm.data.schedule import check_seed
from tf_minilm.distill import objectives as objectives_lib
from tf_minilm.model.pooling import PoolingSpec


class OptionError(ValueError):
    """A training setting out of its range; the message names it."""


def check_warmup_steps(warmup_steps: int | None, steps: int, name: str = "warmup_steps",
                       steps_name: str = "steps") -> int:
    """Warm-up steps: None means 10% of `steps`; else an integer in [0, steps).

    Args:
        warmup_steps: the value given, or None.
        steps: total steps of the run.
        name, steps_name: what the caller calls the two (flags, fields).

    Returns:
        The warm-up to use.

    Raises:
        OptionError: not an integer, or not below `steps` (the linear decay after the
            warm-up needs at least one step).
    """
    if warmup_steps is None:
        return steps // 10
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) \
            or not 0 <= warmup_steps < steps:
        raise OptionError(f"{name} must be an integer in [0, {steps_name}={steps}) (the decay "
                          f"needs at least one step), got {warmup_steps!r}")
    return warmup_steps


def resolve_clipnorm(clipnorm: float | None, name: str = "clipnorm") -> float | None:
    """Gradient-norm clipping: None or 0 is off (None); else a positive finite norm.

    Raises:
        OptionError: negative, not a number, or not finite.
    """
    if clipnorm is None:
        return None
    if isinstance(clipnorm, bool) or not isinstance(clipnorm, (int, float)) \
            or not math.isfinite(clipnorm) or clipnorm < 0:
        raise OptionError(f"{name} must be a finite number >= 0 (0 disables clipping), got "
                          f"{clipnorm!r}")
    return float(clipnorm) or None


# ----------------------------------------------------------------------------- options
@dataclasses.dataclass
class TrainOptions:
    """Settings of one distillation run (every field has a working default).

    Args:
        steps: optimizer steps in total (a resumed run stops at the same total).
        learning_rate: peak AdamW learning rate.
        warmup_steps: linear warm-up steps; None = 10% of `steps`.
        weight_decay: decoupled AdamW weight decay (not on LayerNorm and biases).
        clipnorm: global gradient-norm clip of the summed gradient; None or 0: off.
        adam_beta_1, adam_beta_2, adam_epsilon: AdamW moments and epsilon.
        method: "minilmv2" or "minilm" (v1).
        teacher_layer, student_layer: 1-based layers to distil; None = the last.
        num_relation_heads: MiniLMv2 A_r.
        relations: MiniLMv2 relations.
        relation_chunk_mb: memory budget (MiB) of one chunk of relation scores; None:
            `runtime.resolve_relation_chunk_bytes` picks it for the device.
        seed: seed of initialisation, dropout and (via the dataset callable) data order.
        checkpoint_every: steps between checkpoints.
        keep_checkpoints: newest checkpoints kept on disk.
        log_every: steps between metrics.jsonl / TensorBoard records.
        eval_every: steps between evaluations of `eval_dataset`; None = only at the end.
        eval_steps: batches per evaluation; None = the whole (finite) eval dataset.
        resume: continue from the newest checkpoint in the checkpoint folder; when False,
            a folder that already holds checkpoints is an error (nothing is overwritten).
        strategy: "auto", "default", "mirrored", "multi-worker" or "tpu".
        precision: "auto", "float32", "mixed_float16" or "mixed_bfloat16".
        jit_compile: compile the train step with XLA; None (auto): off on CPUs (oneDNN's
            kernels beat XLA's there), on with a single GPU/TPU replica, Keras' choice
            with several (`distill.runtime.resolve_jit_compile`).
        objective: loss spec of the whole run (`tf_minilm.distill.objectives`), e.g.
            "embedding_mse + hidden_mse"; None: `method` alone.
        stages: stage specs `SPEC:STEPS` (the last may be `SPEC`), filling `steps`,
            instead of `objective`.
        pooling: the teacher's pooling as a `PoolingSpec` dict (embedding terms);
            None: mean + normalise.

    Example:
    >>> options = TrainOptions(steps=1000, learning_rate=3e-4, num_relation_heads=48)
    >>> options.resolved_warmup_steps
    100
    """

    steps: int = 1000
    learning_rate: float = 1e-4
    warmup_steps: int | None = None
    weight_decay: float = 0.01
    clipnorm: float | None = 1.0
    adam_beta_1: float = 0.9
    adam_beta_2: float = 0.999
    adam_epsilon: float = 1e-6
    method: str = "minilmv2"
    teacher_layer: int | None = None
    student_layer: int | None = None
    num_relation_heads: int = 48
    relations: tuple[str, ...] = ("qq", "kk", "vv")
    relation_chunk_mb: int | None = None
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 100
    eval_every: int | None = None
    eval_steps: int | None = None
    resume: bool = True
    strategy: str = "auto"
    precision: str = "auto"
    jit_compile: bool | None = None
    objective: str | None = None
    stages: tuple[str, ...] | None = None
    pooling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.relations = tuple(self.relations)
        if self.stages is not None:
            self.stages = tuple(self.stages)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field for any out-of-range value."""
        def name(field: str) -> str:
            return f"TrainOptions.{field}"

        for field in ("steps", "checkpoint_every", "keep_checkpoints", "log_every",
                      "num_relation_heads"):
            rules.positive_int(getattr(self, field), name(field), error=ValueError)
        for field in ("eval_every", "eval_steps", "relation_chunk_mb"):
            rules.positive_int(getattr(self, field), name(field), error=ValueError,
                               optional=True)
        check_warmup_steps(self.warmup_steps, self.steps, "TrainOptions.warmup_steps")
        resolve_clipnorm(self.clipnorm, "TrainOptions.clipnorm")
        rules.finite_number(self.learning_rate, name("learning_rate"), above=0, error=ValueError)
        rules.weight_decay(self.weight_decay, name("weight_decay"), error=ValueError)
        for field in ("adam_beta_1", "adam_beta_2"):
            rules.finite_number(getattr(self, field), name(field), at_least=0, below=1,
                                error=ValueError)
        rules.finite_number(self.adam_epsilon, name("adam_epsilon"), above=0, error=ValueError)
        if self.method not in METHODS:
            raise ValueError(f"TrainOptions.method is {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"TrainOptions.strategy is {self.strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainOptions.precision is {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        check_seed(self.seed, "TrainOptions.seed")
        if self.jit_compile not in (None, True, False):
            raise ValueError(
                f"TrainOptions.jit_compile must be True, False or None (auto), got "
                f"{self.jit_compile!r}"
            )
        if self.objective is not None and self.stages is not None:
            raise ValueError("TrainOptions: give objective or stages, not both")
        try:
            self.resolved_stages()
        except objectives_lib.ObjectiveError as err:
            field = "stages" if self.stages is not None else "objective"
            raise ValueError(f"TrainOptions.{field}: {err}") from err
        if self.pooling is not None:
            PoolingSpec(**self.pooling)

    def resolved_stages(self) -> tuple[objectives_lib.Stage, ...]:
        """The run's stages: `stages`, or one stage of `objective` (or `method`)."""
        if self.stages is not None:
            return objectives_lib.parse_stages(self.stages, self.steps)
        spec = self.objective if self.objective is not None else self.method
        return (objectives_lib.Stage(objectives_lib.parse_objective(spec), self.steps),)

    @property
    def resolved_warmup_steps(self) -> int:
        """`warmup_steps`, or 10% of `steps` when it is None."""
        return check_warmup_steps(self.warmup_steps, self.steps)

    @property
    def resolved_clipnorm(self) -> float | None:
        """`clipnorm` with 0 meaning off (None)."""
        return resolve_clipnorm(self.clipnorm)
