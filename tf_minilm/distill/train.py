"""Training plumbing for distillation: strategy, precision, optimizer, resume, run.

`run_distillation` is the one call the `distill` command makes:

    result = run_distillation(
        build_models=lambda: (teacher_encoder(), student_encoder()),   # called in scope
        make_train_dataset=lambda start_step: batches_from(start_step),
        output_dir="runs/x",
        options=TrainOptions(steps=1000, learning_rate=1e-4),
    )

It resolves the tf.distribute strategy and the Keras precision policy, builds the
models inside `strategy.scope()` (hence the builder callable), wraps them in a
`Distiller`, trains with `fit` and writes, under `output_dir`:

    checkpoints/ckpt-<step>.npz   every `checkpoint_every` steps (last `keep_checkpoints`)
    metrics.jsonl                 one JSON line per `log_every` steps (+ eval lines)
    tensorboard/                  the same scalars for TensorBoard
    train_options.json            the resolved options

Stages (`TrainOptions.stages`) run one after the other in the same `Distiller`, the
same optimizer and one global step counter; each stage boundary is checkpointed. A run
resumed with a larger `steps` is extended: the warm-up is kept and the linear decay is
re-planned from the resume step (`WarmupLinearDecay.replans`).

Exact resume: a checkpoint holds the student (weights and dropout seed states), the
width projection of the alignment terms if any, the optimizer (step counter, moments,
loss scale) and the global step. The training
data must be a pure function of the global step: `make_train_dataset(start_step)`
returns the global batches from `start_step` on (each batch the full global batch;
it is split over replicas and, with the DATA auto-shard policy set here, over
workers). Resuming after a crash then gives the same weights as an uninterrupted
run with the same seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from tf_minilm.distill import objectives as objectives_lib
from tf_minilm.distill.callbacks import (
    CheckpointManager,
    MetricsLogger,
    NonFiniteGuard,
    NonFiniteLossError,
    PeriodicCheckpoint,
    TrainingCheckpointError,
    truncate_jsonl,
)
from tf_minilm.distill.distiller import METHODS, Distiller
from tf_minilm.distill.schedules import WarmupLinearDecay
from tf_minilm.fileio import write_json_atomic
from tf_minilm.model.encoder import Encoder, copy_encoder
from tf_minilm.model.pooling import PoolingSpec
from tf_minilm.model.student import build_student

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "multi-worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
NO_DECAY_NAMES = ("bias", "gamma", "beta")
"""Variables named like this (Dense biases, LayerNorm scale/offset) get no weight decay."""


class StrategyError(ValueError):
    """A distribution strategy or precision that this machine cannot provide."""


class DataExhaustedError(RuntimeError):
    """The training dataset ended before the requested number of steps."""


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
        jit_compile: compile the train step with XLA; None (auto): on with a single
            replica (about 15% less CPU time per step on CPU, where Keras' own "auto"
            would leave it off), Keras' choice with several replicas (XLA with
            MirroredStrategy over logical CPU devices fails).
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
        def positive_int(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainOptions.{name} must be a positive integer, got {value!r}")

        for name in ("steps", "checkpoint_every", "keep_checkpoints", "log_every",
                     "num_relation_heads"):
            positive_int(name, getattr(self, name))
        for name in ("eval_every", "eval_steps"):
            positive_int(name, getattr(self, name), allow_none=True)
        if self.warmup_steps is not None and (
            isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int)
            or not 0 <= self.warmup_steps < self.steps
        ):
            raise ValueError(
                f"TrainOptions.warmup_steps must be an integer in [0, steps={self.steps}), "
                f"got {self.warmup_steps!r}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"TrainOptions.learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainOptions.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.clipnorm is not None and not self.clipnorm >= 0:
            raise ValueError(f"TrainOptions.clipnorm must be >= 0 or None, got {self.clipnorm!r}")
        for name in ("adam_beta_1", "adam_beta_2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TrainOptions.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.adam_epsilon > 0:
            raise ValueError(f"TrainOptions.adam_epsilon must be > 0, got {self.adam_epsilon!r}")
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
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"TrainOptions.seed must be an integer, got {self.seed!r}")
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

    def resolved_jit_compile(self, strategy: tf.distribute.Strategy) -> bool | str:
        """XLA on with one replica (unless set); Keras' "auto" with several."""
        if self.jit_compile is not None:
            return self.jit_compile
        if strategy.num_replicas_in_sync == 1 and not isinstance(
            strategy, tf.distribute.TPUStrategy
        ):
            return True
        return "auto"

    @property
    def resolved_warmup_steps(self) -> int:
        """`warmup_steps`, or 10% of `steps` when it is None."""
        return self.warmup_steps if self.warmup_steps is not None else self.steps // 10

    @property
    def resolved_clipnorm(self) -> float | None:
        """`clipnorm` with 0 meaning off (None)."""
        return self.clipnorm if self.clipnorm else None


# ---------------------------------------------------------------------------- strategy
def _tf_config() -> dict[str, Any] | None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise StrategyError(f"environment variable TF_CONFIG is not valid JSON ({err})") from err
    if not isinstance(value, dict) or not isinstance(value.get("cluster"), dict):
        raise StrategyError("environment variable TF_CONFIG has no 'cluster' mapping")
    return value


def _cluster_workers(tf_config: dict[str, Any] | None) -> int:
    if not tf_config:
        return 0
    cluster = tf_config["cluster"]
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def resolve_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Build the tf.distribute strategy called `name`.

    Args:
        name: "default" (no distribution), "mirrored" (all local GPUs; on a CPU-only
            host, all logical CPU devices), "multi-worker" (MultiWorkerMirroredStrategy
            from TF_CONFIG), "tpu" (TPUStrategy; TPU_NAME or a local TPU), or "auto":
            multi-worker when TF_CONFIG lists more than one worker, mirrored with more
            than one GPU, otherwise default.

    Returns:
        The strategy. Create it before any other TensorFlow work (multi-worker and TPU
        must initialise first).

    Raises:
        StrategyError: an unknown name, or hardware/environment that cannot provide it.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        if _cluster_workers(_tf_config()) > 1:
            name = "multi-worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
        logger.info("strategy auto -> %s", name)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi-worker":
        tf_config = _tf_config()
        if tf_config is None:
            raise StrategyError(
                "strategy 'multi-worker' needs the TF_CONFIG environment variable (cluster and "
                "task of this worker); it is not set"
            )
        task = tf_config.get("task") or {}
        if "type" not in task or "index" not in task:
            raise StrategyError("TF_CONFIG has no task type/index for this worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    # tpu
    tpu_name = os.environ.get("TPU_NAME", "")
    has_local = bool(tf.config.list_logical_devices("TPU"))
    if not tpu_name and not has_local:
        raise StrategyError(
            "strategy 'tpu' needs a TPU, but none was found (no TPU device and TPU_NAME is not "
            "set); use 'auto', 'default' or 'mirrored'"
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_name)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        raise StrategyError(f"strategy 'tpu': cannot connect to TPU {tpu_name!r} ({err})") from err
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints and logs (always true without multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and task_id == 0 and \
        "chief" not in resolver.cluster_spec().as_dict()


def resolve_precision(name: str = "auto", strategy: tf.distribute.Strategy | None = None) -> str:
    """The Keras dtype policy name for `name`.

    Args:
        name: "float32", "mixed_float16", "mixed_bfloat16" or "auto" (mixed_float16 on a
            CUDA GPU, mixed_bfloat16 under a TPU strategy, float32 otherwise).
        strategy: the strategy in use (to recognise TPUs).

    Returns:
        A Keras policy name ("float32", "mixed_float16" or "mixed_bfloat16").

    Raises:
        StrategyError: an unknown name, or float16 on a TPU.
    """
    if name not in PRECISIONS:
        raise StrategyError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    cuda_gpu = bool(tf.config.list_physical_devices("GPU")) and tf.test.is_built_with_cuda()
    if name == "auto":
        name = "mixed_bfloat16" if on_tpu else "mixed_float16" if cuda_gpu else "float32"
        logger.info("precision auto -> %s", name)
    if name == "mixed_float16" and on_tpu:
        raise StrategyError("precision 'mixed_float16' is not supported on TPU; use mixed_bfloat16")
    if name == "mixed_float16" and not cuda_gpu:
        logger.warning("precision mixed_float16 without a CUDA GPU: float16 matmuls on CPU are "
                       "about 2x slower than float32")
    return name


# --------------------------------------------------------------------------- optimizer
def no_decay_variables(model: keras.Model) -> list[Any]:
    """Trainable variables excluded from weight decay: biases and LayerNorm gamma/beta."""
    return [v for v in model.trainable_weights if v.name in NO_DECAY_NAMES]


def make_optimizer(
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    weight_decay: float = 0.01,
    no_decay: Sequence[Any] = (),
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-6,
) -> keras.optimizers.AdamW:
    """AdamW with decoupled weight decay, skipping `no_decay` variables.

    Gradient clipping is not set here: the `Distiller` clips the summed gradient
    (`clipnorm`), which stays correct with several replicas.

    Args:
        learning_rate: a float or a schedule (e.g. `WarmupLinearDecay`).
        weight_decay: decay rate (multiplied by the learning rate, as in AdamW).
        no_decay: variables without weight decay (see `no_decay_variables`).
        beta_1, beta_2, epsilon: Adam hyper-parameters.

    Returns:
        An unbuilt `keras.optimizers.AdamW`.
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
    )
    if no_decay:
        optimizer.exclude_from_weight_decay(var_list=list(no_decay))
    return optimizer


# ------------------------------------------------------------------------------- run
@dataclasses.dataclass
class DistillationResult:
    """What `run_distillation` returns.

    Attributes:
        distiller: the trained `Distiller` (teacher + student).
        teacher: the (frozen) teacher.
        student: the trained student `Encoder`.
        step: global step reached (== options.steps on success).
        train_metrics: the last metrics.jsonl training record.
        eval_metrics: final evaluation ({"loss": ..., "loss_qq": ...}) or None.
        checkpoint: path of the final checkpoint (None on non-chief workers).
        output_dir: the run folder.
        strategy: the strategy used.
        precision: the Keras policy used.
    """

    distiller: Distiller
    teacher: Encoder
    student: Encoder
    step: int
    train_metrics: dict[str, Any]
    eval_metrics: dict[str, float] | None
    checkpoint: str | None
    output_dir: str
    strategy: Any
    precision: str


@dataclasses.dataclass
class _ResumePlan:
    """What the newest checkpoint (if any) means for this run: where to start, what changed."""

    checkpoint: str | None
    header: dict[str, Any] | None
    warmup_steps: int
    base_steps: int
    replans: list[tuple[int, int]]
    extended_from: int | None


def _plan_resume(manager: CheckpointManager, options: TrainOptions) -> _ResumePlan:
    """Read the newest checkpoint's header; a larger `steps` extends the run.

    Extending keeps the warm-up of the run (unless `warmup_steps` is given) and
    re-plans the linear decay from the checkpoint's step to the new total.
    """
    existing = manager.checkpoints()
    if existing and not options.resume:
        raise TrainingCheckpointError(
            f"{manager.directory} already holds checkpoints of a run (latest: step "
            f"{existing[-1][0]}); resume it (resume=True) or use a new output folder"
        )
    warmup = options.resolved_warmup_steps
    if not existing:
        return _ResumePlan(None, None, warmup, options.steps, [], None)
    path = existing[-1][1]
    header = CheckpointManager.read(path)[2]
    saved = header.get("fingerprint", {})
    replans = [(int(a), int(b)) for a, b in saved.get("replans", [])]
    saved_steps = saved.get("steps")
    base_steps = int(saved.get("base_steps", saved_steps or options.steps))
    extended_from = None
    if isinstance(saved_steps, int) and options.steps > saved_steps:
        extended_from = saved_steps
        replans.append((int(header["step"]), options.steps))
        if options.warmup_steps is None and isinstance(saved.get("warmup_steps"), int):
            warmup = saved["warmup_steps"]
        logger.info("extending the run from %d to %d steps at step %d (warm-up %d kept, decay "
                    "re-planned)", saved_steps, options.steps, header["step"], warmup)
    return _ResumePlan(path, header, warmup, base_steps, replans, extended_from)


def _fingerprint(options: TrainOptions, distiller: Distiller, policy: str,
                 plan: _ResumePlan) -> dict[str, Any]:
    """The settings that determine the training trajectory (must match on resume)."""
    return {
        "steps": options.steps,
        "learning_rate": options.learning_rate,
        "warmup_steps": plan.warmup_steps,
        "weight_decay": options.weight_decay,
        "clipnorm": options.resolved_clipnorm,
        "adam_beta_1": options.adam_beta_1,
        "adam_beta_2": options.adam_beta_2,
        "adam_epsilon": options.adam_epsilon,
        "method": distiller.method,
        "teacher_layer": distiller.teacher_layer,
        "student_layer": distiller.student_layer,
        "num_relation_heads": distiller.num_relation_heads,
        "relations": list(distiller.relations),
        "seed": options.seed,
        "precision": policy,
        "student_config": distiller.student.config.to_dict(),
        "stages": [stage.to_dict() for stage in options.resolved_stages()],
        "pooling": distiller.pooling.to_dict(),
        "base_steps": plan.base_steps,
        "replans": [list(pair) for pair in plan.replans],
    }


def _check_fingerprint(path: str, saved: dict[str, Any], current: dict[str, Any],
                       extended_from: int | None = None) -> None:
    expected = dict(saved)
    if extended_from is not None:
        # A longer run: only the total, the last stage's end and the new re-plan differ.
        expected["steps"] = current["steps"]
        stages = [dict(stage) for stage in saved.get("stages") or []]
        if stages:
            stages[-1]["end_step"] = current["steps"]
        expected["stages"] = stages
        expected["replans"] = current["replans"]
    differences = [
        f"{key}={expected.get(key)!r} in the checkpoint, {value!r} now"
        for key, value in current.items()
        if expected.get(key) != value
    ]
    if differences:
        raise TrainingCheckpointError(
            f"{path}: cannot resume, the run settings differ ({'; '.join(differences)}). "
            "Resume with the original settings, or start a new run in a new output folder."
        )


def _tokens_per_step(dataset: tf.data.Dataset) -> int:
    spec = dataset.element_spec
    if isinstance(spec, tuple):
        spec = spec[0]
    if not isinstance(spec, dict) or "input_ids" not in spec:
        raise ValueError(
            "the training dataset must yield dicts with 'input_ids', 'attention_mask' (and "
            f"optionally 'token_type_ids'); its element spec is {spec}"
        )
    shape = spec["input_ids"].shape
    if shape.rank != 2:
        raise ValueError(f"'input_ids' batches must be [batch, seq]; the dataset gives {shape}")
    if shape.is_fully_defined():
        return int(shape[0] * shape[1])
    first = next(iter(dataset.take(1)))
    if isinstance(first, tuple):
        first = first[0]
    return int(tf.size(first["input_ids"]))


def _shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def run_distillation(
    build_models: Callable[[], tuple[Encoder, Encoder]],
    make_train_dataset: Callable[[int], tf.data.Dataset],
    output_dir: str | os.PathLike,
    options: TrainOptions | None = None,
    *,
    eval_dataset: tf.data.Dataset | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    strategy: tf.distribute.Strategy | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    log_dir: str | os.PathLike | None = None,
    verbose: int | str | None = None,
) -> DistillationResult:
    """Distil a teacher into a student with checkpoints, logs and exact resume.

    Args:
        build_models: returns (teacher, student) `Encoder`s; called inside
            `strategy.scope()` with the precision policy already set, e.g.
            `lambda: (load_hf_checkpoint(dir)[0], build_student(...))`.
        make_train_dataset: start_step -> tf.data.Dataset of global batches (dicts of
            int32 [global_batch, seq] `input_ids`, `attention_mask`, `token_type_ids`),
            the first being the batch of global step `start_step`. It must be a pure
            function of the step (and the seed) and yield at least
            `options.steps - start_step` batches.
        output_dir: run folder (checkpoints, metrics.jsonl, tensorboard, options).
        options: `TrainOptions` (default: `TrainOptions()`).
        eval_dataset: finite dataset of held-out batches; its relation losses are
            logged as "eval_*" every `options.eval_every` steps and at the end.
        callbacks: extra Keras callbacks, run after the built-in ones.
        strategy: an existing strategy (overrides `options.strategy`), e.g. to run
            several stages in one process.
        checkpoint_dir: default `output_dir/checkpoints` (must be shared by workers).
        log_dir: TensorBoard folder, default `output_dir/tensorboard`.
        verbose: Keras progress bar (1) or none (0); default 1 on a terminal, else 0
            (progress then goes to `logging` every `log_every` steps).

    Returns:
        A `DistillationResult`.

    Example:
    >>> from tf_minilm.hf.checkpoints import load_hf_checkpoint
    >>> def build():
    ...     teacher, _ = load_hf_checkpoint("teacher_dir")
    ...     return teacher, build_student(teacher, 3, 384, 12)
    >>> result = run_distillation(build, lambda step: make_dataset(start_step=step),
    ...                           "runs/x", TrainOptions(steps=400))  # doctest: +SKIP
    >>> result.student  # doctest: +SKIP

    Raises:
        NonFiniteLossError: a loss became NaN/inf; the message names the step and the
            last good checkpoint (no later checkpoint is written).
        TrainingCheckpointError: resuming from a checkpoint of a different run.
        DataExhaustedError: the dataset ended early (a checkpoint of the last step
            reached is written first).
        StrategyError: impossible strategy/precision for this machine.
    """
    options = options or TrainOptions()
    options.validate()
    output_dir = os.fspath(output_dir)
    checkpoint_dir = os.fspath(checkpoint_dir or os.path.join(output_dir, "checkpoints"))
    log_dir = os.fspath(log_dir or os.path.join(output_dir, "tensorboard"))
    metrics_path = os.path.join(output_dir, "metrics.jsonl")
    if strategy is None:
        strategy = resolve_strategy(options.strategy)
    policy = resolve_precision(options.precision, strategy)
    chief = is_chief(strategy)
    manager = CheckpointManager(checkpoint_dir, options.keep_checkpoints, is_chief=chief)
    manager.remove_stale_temporaries()
    plan = _plan_resume(manager, options)
    stages = options.resolved_stages()

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(options.seed)
        with strategy.scope():
            teacher, student = build_models()
            distiller = Distiller(
                teacher,
                student,
                method=options.method,
                teacher_layer=options.teacher_layer,
                student_layer=options.student_layer,
                num_relation_heads=options.num_relation_heads,
                relations=options.relations,
                clipnorm=options.resolved_clipnorm,
                stage_objectives=[stage.objective for stage in stages],
                pooling=options.pooling,
                name="distiller",
            )
            schedule = WarmupLinearDecay(options.learning_rate, plan.warmup_steps,
                                         plan.base_steps, replans=plan.replans)
            optimizer = make_optimizer(
                schedule,
                weight_decay=options.weight_decay,
                no_decay=[v for v in distiller.all_stage_variables if v.name in NO_DECAY_NAMES],
                beta_1=options.adam_beta_1,
                beta_2=options.adam_beta_2,
                epsilon=options.adam_epsilon,
            )
            distiller.compile(optimizer=optimizer, steps_per_execution=1,
                              jit_compile=options.resolved_jit_compile(strategy))
            distiller.optimizer.build(distiller.all_stage_variables)
        return _train(distiller, stages, plan, schedule, manager, make_train_dataset, options,
                      policy, strategy, chief, output_dir, log_dir, metrics_path, eval_dataset,
                      callbacks, verbose)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(
    distiller: Distiller,
    stages: Sequence[objectives_lib.Stage],
    plan: _ResumePlan,
    schedule: WarmupLinearDecay,
    manager: CheckpointManager,
    make_train_dataset: Callable[[int], tf.data.Dataset],
    options: TrainOptions,
    policy: str,
    strategy: tf.distribute.Strategy,
    chief: bool,
    output_dir: str,
    log_dir: str,
    metrics_path: str,
    eval_dataset: tf.data.Dataset | None,
    extra_callbacks: Sequence[keras.callbacks.Callback],
    verbose: int | str | None,
) -> DistillationResult:
    student = distiller.student
    fingerprint = _fingerprint(options, distiller, policy, plan)
    start_step, elapsed_offset = 0, 0.0
    if plan.checkpoint is not None:
        header = plan.header
        _check_fingerprint(plan.checkpoint, header.get("fingerprint", {}), fingerprint,
                           plan.extended_from)
        manager.restore(plan.checkpoint, distiller.state_variables, distiller.optimizer.variables)
        start_step = int(header["step"])
        elapsed_offset = float(header.get("elapsed_s", 0.0))
        logger.info("resuming from %s at step %d", plan.checkpoint, start_step)
        if chief:
            truncate_jsonl(metrics_path, start_step)
    elif chief and os.path.exists(metrics_path):
        truncate_jsonl(metrics_path, 0)
    if chief:
        extensions = [{"at_step": start, "to_steps": total} for start, total in plan.replans]
        write_json_atomic(os.path.join(output_dir, "train_options.json"),
                          {**dataclasses.asdict(options), "resolved": fingerprint,
                           "extensions": extensions})

    metrics_logger = MetricsLogger(
        metrics_path, log_dir, options.log_every, start_step, learning_rate=schedule,
        elapsed_offset=elapsed_offset, write=chief, total_steps=options.steps,
    )
    if plan.extended_from is not None:
        metrics_logger.write_record({"step": start_step, "event": "extended",
                                     "from_steps": plan.extended_from, "to_steps": options.steps})

    def save(step: int) -> str | None:
        meta = {"fingerprint": fingerprint, "elapsed_s": metrics_logger.elapsed}
        return manager.save(step, distiller.state_variables, distiller.optimizer.variables, meta)

    guard = NonFiniteGuard(start_step, last_checkpoint=manager.latest)
    checkpointer = PeriodicCheckpoint(save, options.checkpoint_every, start_step)
    evaluator = _PeriodicEvaluation(eval_dataset, options, metrics_logger, start_step)
    evaluator.set_model(distiller)
    callbacks = [guard, checkpointer, metrics_logger, evaluator, *extra_callbacks]
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 0
    step = start_step
    try:
        for index, stage in enumerate(stages):
            if stage.end_step <= step:
                continue
            distiller.set_stage(index)
            if len(stages) > 1:
                logger.info("stage %d/%d: %s, steps %d..%d", index + 1, len(stages),
                            objectives_lib.format_objective(stage.objective), step,
                            stage.end_step)
            dataset = _shard_by_data(make_train_dataset(step))
            metrics_logger.tokens_per_step = _tokens_per_step(dataset)
            distiller.fit(dataset, epochs=1, steps_per_epoch=stage.end_step - step,
                          callbacks=callbacks, verbose=verbose, shuffle=False)
            step = checkpointer.step
            if guard.tripped or step < stage.end_step:
                break
            if chief and index < len(stages) - 1 and checkpointer.last_saved != step:
                save(step)  # a stage boundary is always a checkpoint
        if guard.tripped:
            raise NonFiniteLossError(guard.message)
        saved = manager.checkpoints()
        checkpoint = saved[-1][1] if saved else None
        if chief and (not saved or saved[-1][0] != step):
            checkpoint = save(step)
        if step < options.steps:
            raise DataExhaustedError(
                f"the training dataset ended after global step {step} of {options.steps}; the "
                f"state of step {step} is saved in {checkpoint}. Make the dataset repeat (or "
                "yield at least steps - start_step batches)."
            )
        eval_metrics = None
        if eval_dataset is not None:
            distiller.set_stage(len(stages) - 1)
            eval_metrics = evaluator.last_result if evaluator.last_step == step \
                else evaluator.run(step, write=step > start_step)
    finally:
        metrics_logger.close()
    return DistillationResult(
        distiller=distiller, teacher=distiller.teacher, student=student, step=step,
        train_metrics=dict(metrics_logger.last_values), eval_metrics=eval_metrics,
        checkpoint=checkpoint if chief else None, output_dir=output_dir, strategy=strategy,
        precision=policy,
    )


class _PeriodicEvaluation(keras.callbacks.Callback):
    """Evaluates `eval_dataset` every `eval_every` steps; records "eval_*" lines."""

    def __init__(self, dataset: tf.data.Dataset | None, options: TrainOptions,
                 metrics_logger: MetricsLogger, initial_step: int) -> None:
        super().__init__()
        self.dataset = dataset
        self.every = options.eval_every
        self.eval_steps = options.eval_steps
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


# --------------------------------------------------------------------- teacher assistant
@dataclasses.dataclass
class AssistantResult:
    """What `distill_with_assistant` returns: both stages' results."""

    assistant: Encoder
    student: Encoder
    assistant_stage: DistillationResult
    student_stage: DistillationResult


def distill_with_assistant(
    build_teacher: Callable[[], Encoder],
    make_train_dataset: Callable[[int], tf.data.Dataset],
    output_dir: str | os.PathLike,
    student_layers: int,
    student_hidden: int,
    student_heads: int,
    student_intermediate: int | None = None,
    options: TrainOptions | None = None,
    *,
    assistant_steps: int | None = None,
    assistant_hidden: int | None = None,
    assistant_heads: int | None = None,
    student_init: str = "random",
    eval_dataset: tf.data.Dataset | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    strategy: tf.distribute.Strategy | None = None,
    verbose: int | str | None = None,
) -> AssistantResult:
    """Teacher -> assistant -> student (MiniLM's teacher assistant), in one call.

    Stage 1 distils the teacher into an assistant with the teacher's depth, the
    student's width and heads (or `assistant_hidden`/`assistant_heads`) and a 4x
    FFN, for `assistant_steps` steps, in `output_dir/assistant`. Stage 2 distils the
    (frozen) assistant into the student for `options.steps` steps, in
    `output_dir/student`. Both stages use `options` otherwise (the warm-up default of
    10% applies per stage) and resume independently.

    Args:
        build_teacher: returns the teacher `Encoder` (called inside the strategy scope).
        make_train_dataset: start_step -> dataset, as for `run_distillation` (both
            stages count steps from 0).
        output_dir: parent folder of the two stage folders.
        student_layers, student_hidden, student_heads, student_intermediate: student
            sizes (FFN default 4 x hidden).
        options: `TrainOptions` of both stages; `options.steps` is the student stage.
        assistant_steps: steps of the teacher -> assistant stage; default half of
            `options.steps` (at least 1).
        assistant_hidden, assistant_heads: assistant width/heads; default the student's.
        student_init: "random" or "teacher-layers" (copy the assistant's first layers;
            possible when the widths are equal).
        eval_dataset, callbacks, strategy, verbose: as for `run_distillation`.

    Returns:
        An `AssistantResult` with both encoders and both stage results.
    """
    options = options or TrainOptions()
    if assistant_steps is None:
        assistant_steps = max(1, options.steps // 2)
    hidden = assistant_hidden or student_hidden
    heads = assistant_heads or student_heads
    if hidden % heads:
        raise ValueError(
            f"the assistant's hidden size {hidden} is not divisible by its {heads} heads "
            "(default: the student's head count); set assistant_heads"
        )
    if options.method == "minilmv2" and hidden % options.num_relation_heads:
        raise ValueError(
            f"num_relation_heads={options.num_relation_heads} does not divide the assistant "
            f"hidden size {hidden}"
        )
    if isinstance(assistant_steps, bool) or not isinstance(assistant_steps, int) \
            or assistant_steps < 1:
        raise ValueError(f"assistant_steps must be a positive integer, got {assistant_steps!r}")
    stage_one = dataclasses.replace(
        options, steps=assistant_steps,
        warmup_steps=None if options.warmup_steps is None
        else min(options.warmup_steps, assistant_steps - 1),
        teacher_layer=options.teacher_layer, student_layer=None,
    )
    stage_two = dataclasses.replace(options, teacher_layer=None)
    if strategy is None:
        strategy = resolve_strategy(options.strategy)

    def build_stage_one() -> tuple[Encoder, Encoder]:
        teacher = build_teacher()
        assistant = build_student(
            teacher, teacher.config.num_hidden_layers, hidden, heads, 4 * hidden,
            init="random", seed=options.seed,
        )
        return teacher, assistant

    output_dir = os.fspath(output_dir)
    first = run_distillation(
        build_stage_one, make_train_dataset, os.path.join(output_dir, "assistant"), stage_one,
        eval_dataset=eval_dataset, callbacks=callbacks, strategy=strategy, verbose=verbose,
    )

    def build_stage_two() -> tuple[Encoder, Encoder]:
        assistant = copy_encoder(first.student, first.student.dtype_policy, name="assistant")
        student = build_student(
            assistant, student_layers, student_hidden, student_heads, student_intermediate,
            init=student_init, seed=options.seed,
        )
        return assistant, student

    second = run_distillation(
        build_stage_two, make_train_dataset, os.path.join(output_dir, "student"), stage_two,
        eval_dataset=eval_dataset, callbacks=callbacks, strategy=strategy, verbose=verbose,
    )
    return AssistantResult(
        assistant=first.student, student=second.student,
        assistant_stage=first, student_stage=second,
    )


def learning_rate_at(options: TrainOptions, step: int) -> float:
    """The learning rate used by the update that follows `step` completed updates."""
    schedule = WarmupLinearDecay(options.learning_rate, options.resolved_warmup_steps, options.steps)
    return float(schedule(step))
