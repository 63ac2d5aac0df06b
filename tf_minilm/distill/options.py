"""`TrainOptions`, the settings of one training run as given, and their one resolution.

Owns: the fields of a run (steps, schedule, optimizer, objective, checkpoints, strategy
and precision names) with the names and defaults of the `tf-minilm distill` flags (the
CLI's `DistillConfig` takes its training fields' defaults from here), the measured
default objective and learning rates, the warm-up and clipping rules, and
`TrainOptions.resolve`: every training rule called once, each error naming the field as
the caller calls it, giving the frozen `distill.spec.TrainSpec`. Imports: `rules`,
`constants`, `distill.objectives`, `distill.spec`, `model.pooling`, `data.schedule` (its
seed rule); all TF-free.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tf_minilm import rules
from tf_minilm.constants import METHODS, PRECISIONS, STRATEGIES
from tf_minilm.data.schedule import check_seed
from tf_minilm.distill import objectives as objectives_lib
from tf_minilm.distill import spec as spec_lib
from tf_minilm.model.pooling import PoolingError, PoolingSpec

# Chosen by measurement (docs/paper-tables.md): on texts outside the corpus this
# objective from spread teacher layers tracks the teacher more closely than
# layer-dropping and than sentence-transformers' embedding-MSE recipe at the same budget.
DEFAULT_LOSS = "10*embedding_mse + hidden_mse"

ALIGNED_LEARNING_RATE = 6e-4  # best of 1e-4 / 3e-4 / 6e-4 for the alignment rows (docs/paper-tables.md)

RELATION_LEARNING_RATE = 3e-4  # the papers' rate for 384-wide students


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
    """The settings of one distillation run as given; `resolve()` checks them once.

    Names and defaults are those of the `tf-minilm distill` flags (`relation_heads` is
    `--relation-heads`), so a Python run and a CLI run with the same values are the same
    run. Fields without a flag are marked (Python only).

    Args:
        steps: optimizer steps in total (a resumed run stops at the same total).
        learning_rate: peak AdamW learning rate; None: 6e-4 when the loss has an
            alignment term, else 3e-4.
        warmup_steps: linear warm-up steps; None = 10% of `steps`.
        weight_decay: decoupled AdamW weight decay in [0, 1) (not on LayerNorm and biases).
        clipnorm: global gradient-norm clip of the summed gradient; None or 0: off.
        adam_beta_1, adam_beta_2, adam_epsilon: AdamW moments and epsilon (Python only).
        method: the papers' objective alone ("minilmv2" or "minilm"): the loss when
            `loss` and `stages` are None, else it must agree with their relation term.
        loss: loss spec of the whole run (`tf_minilm.distill.objectives`), e.g.
            "embedding_mse + hidden_mse"; None: `method`, else `DEFAULT_LOSS`.
        stages: stage specs `SPEC:STEPS` (the last may be `SPEC`), filling `steps`,
            instead of `loss`.
        teacher_layer, student_layer: 1-based layers to distil; None = the last
            (`student_layer`: Python only).
        relation_heads: MiniLMv2 A_r.
        relations: MiniLMv2 relations.
        relation_chunk_mb: memory budget (MiB) of one chunk of relation scores; None:
            `runtime.resolve_relation_chunk_bytes` picks it for the device.
        seed: seed of initialisation, dropout and (via the dataset callable) data order.
        checkpoint_every: steps between checkpoints.
        keep_checkpoints: newest checkpoints kept on disk.
        log_every: steps between metrics.jsonl / TensorBoard records.
        eval_every: steps between evaluations of `eval_dataset`; None = only at the end
            (Python only; the CLI evaluates at every checkpoint).
        eval_steps: batches per evaluation; None = the whole eval dataset (Python only).
        resume: continue from the newest checkpoint in the checkpoint folder; when False,
            a folder that already holds checkpoints is an error (nothing is overwritten).
        strategy: "auto", "default", "mirrored", "multi-worker" or "tpu".
        precision: "auto", "float32", "mixed_float16" or "mixed_bfloat16".
        jit_compile: compile the train step with XLA; None (auto): off on CPUs (oneDNN's
            kernels beat XLA's there), on with a single GPU/TPU replica, Keras' choice
            with several (`distill.runtime.resolve_jit_compile`) (Python only).
        pooling: the teacher's pooling (`PoolingSpec` or its dict) for the embedding
            terms; None: mean + normalise (the CLI reads the teacher's folder).

    Example:
    >>> options = TrainOptions(steps=1000, loss="minilmv2", relation_heads=48)
    >>> spec = options.resolve()
    >>> spec.warmup_steps, spec.optimizer.learning_rate
    (100, 0.0003)
    """

    steps: int = 500
    learning_rate: float | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.01
    clipnorm: float | None = 1.0
    adam_beta_1: float = 0.9
    adam_beta_2: float = 0.999
    adam_epsilon: float = 1e-6
    method: str | None = None
    loss: str | None = None
    stages: tuple[str, ...] | None = None
    teacher_layer: int | None = None
    student_layer: int | None = None
    relation_heads: int = 48
    relations: tuple[str, ...] = ("qq", "kk", "vv")
    relation_chunk_mb: int | None = None
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every: int | None = None
    eval_steps: int | None = None
    resume: bool = False
    strategy: str = "auto"
    precision: str = "auto"
    jit_compile: bool | None = None
    pooling: PoolingSpec | dict[str, Any] | None = None

    def resolve(self, name: Any = None, error: Any = OptionError) -> spec_lib.TrainSpec:
        """Check every field once and return the frozen `TrainSpec`.

        Args:
            name: field name -> what the caller calls it in messages (a flag); default
                `TrainOptions.<field>`.
            error: the exception type raised.

        Raises:
            `error` (default `OptionError`): naming the field at fault.
        """
        def called(field: str) -> str:
            return name(field) if name is not None else f"TrainOptions.{field}"

        for field in ("steps", "checkpoint_every", "keep_checkpoints", "log_every",
                      "relation_heads"):
            rules.positive_int(getattr(self, field), called(field), error=error)
        for field in ("eval_every", "eval_steps", "relation_chunk_mb"):
            rules.positive_int(getattr(self, field), called(field), error=error, optional=True)
        for field in ("teacher_layer", "student_layer"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise error(f"{called(field)} is 1-based; got {value!r}")
        if self.learning_rate is not None:
            rules.finite_number(self.learning_rate, called("learning_rate"), above=0,
                                error=error)
        rules.weight_decay(self.weight_decay, called("weight_decay"), error=error)
        for field in ("adam_beta_1", "adam_beta_2"):
            rules.finite_number(getattr(self, field), called(field), at_least=0, below=1,
                                error=error)
        rules.finite_number(self.adam_epsilon, called("adam_epsilon"), above=0, error=error)
        for field, choices in (("strategy", STRATEGIES), ("precision", PRECISIONS)):
            if getattr(self, field) not in choices:
                raise error(f"{called(field)} is {getattr(self, field)!r}; choose one of "
                            f"{', '.join(choices)}")
        if self.method is not None and self.method not in METHODS:
            raise error(f"{called('method')} is {self.method!r}; choose one of "
                        f"{', '.join(METHODS)}")
        if self.jit_compile not in (None, True, False):
            raise error(f"{called('jit_compile')} must be True, False or None (auto), got "
                        f"{self.jit_compile!r}")
        try:
            warmup = check_warmup_steps(self.warmup_steps, self.steps, called("warmup_steps"),
                                        called("steps"))
            clipnorm = resolve_clipnorm(self.clipnorm, called("clipnorm"))
            check_seed(self.seed, called("seed"))
        except (OptionError, ValueError) as err:
            raise error(str(err)) from err
        try:
            relations = objectives_lib.check_relations(tuple(self.relations))
        except objectives_lib.ObjectiveError as err:
            raise error(f"{called('relations')}: {err}") from err
        stages = self._stages(called, error)
        try:
            pooling = self.pooling if isinstance(self.pooling, PoolingSpec) \
                else PoolingSpec(**(self.pooling or {}))
        except (PoolingError, TypeError) as err:
            raise error(f"{called('pooling')}: {err}") from err
        method = objectives_lib.relation_method([stage.objective for stage in stages]) \
            or self.method or "minilmv2"
        learning_rate = self.learning_rate
        if learning_rate is None:
            aligned = any(objectives_lib.needs_alignment(stage.objective) for stage in stages)
            learning_rate = ALIGNED_LEARNING_RATE if aligned else RELATION_LEARNING_RATE
        return spec_lib.TrainSpec(
            steps=self.steps,
            objective=spec_lib.ObjectiveSpec(
                stages=stages, method=method, teacher_layer=self.teacher_layer,
                student_layer=self.student_layer, relation_heads=self.relation_heads,
                relations=relations, relation_chunk_mb=self.relation_chunk_mb,
                pooling=pooling),
            optimizer=spec_lib.OptimizerSpec(
                learning_rate=float(learning_rate), warmup_steps=warmup,
                weight_decay=float(self.weight_decay), clipnorm=clipnorm,
                adam_beta_1=float(self.adam_beta_1), adam_beta_2=float(self.adam_beta_2),
                adam_epsilon=float(self.adam_epsilon),
                warmup_explicit=self.warmup_steps is not None),
            checkpoints=spec_lib.CheckpointSpec(
                checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints,
                log_every=self.log_every, eval_every=self.eval_every,
                eval_steps=self.eval_steps, resume=bool(self.resume)),
            runtime=spec_lib.RuntimeSpec(strategy=self.strategy, precision=self.precision,
                                         jit_compile=self.jit_compile, seed=self.seed),
        )

    def _stages(self, called: Any, error: Any) -> tuple[objectives_lib.Stage, ...]:
        """The run's stages from `stages`, `loss` or `method`, parsed once."""
        if self.stages is not None and self.loss is not None:
            raise error(f"give {called('loss')} or {called('stages')}, not both")
        given = "stages" if self.stages is not None else "loss" if self.loss is not None \
            else "method" if self.method is not None else None
        try:
            if self.stages is not None:
                stages = objectives_lib.parse_stages(
                    [self.stages] if isinstance(self.stages, str) else list(self.stages),
                    self.steps)
            else:
                spec = self.loss if self.loss is not None else self.method or DEFAULT_LOSS
                stages = (objectives_lib.Stage(objectives_lib.parse_objective(spec),
                                               self.steps),)
        except objectives_lib.ObjectiveError as err:
            raise error(f"{called(given or 'loss')}: {err}") from err
        relation = {objectives_lib.relation_term(stage.objective) for stage in stages} - {None}
        if self.method is not None and given in ("stages", "loss") \
                and relation != {self.method}:
            raise error(f"{called('method')} {self.method} disagrees with {called(given)} (its "
                        f"relation term: {', '.join(relation) or 'none'}); put the method in "
                        f"{called(given)} or leave {called('method')} out")
        return stages
