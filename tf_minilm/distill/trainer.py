"""The training loop of a distillation: build, resume, train the stages, checkpoint, evaluate.

Owns: `run_distillation` (read it top to bottom: 1 strategy/precision/resume plan,
2 build in scope, 3 restore, 4 fit each stage, 5 last checkpoint and evaluation), the
resume plan (the run's fingerprint, `distill.spec`, compared with the checkpoint's) and
`DistillationResult`. It takes a resolved `TrainSpec` (or `TrainOptions`, resolved once
on entry) and checks nothing again. Imports: the other `distill` modules,
`model.encoder`, `schedules`, `fileio`; nothing above it (the `distill` command's job, the
CLI) is imported here.

`run_distillation` is the one call the `distill` job makes:

    result = run_distillation(
        build_models=lambda: (teacher_encoder(), student_encoder()),   # called in scope
        make_train_dataset=lambda start_step: batches_from(start_step),
        output_dir="runs/x",
        options=TrainOptions(steps=1000, learning_rate=1e-4),   # or its resolved TrainSpec
    )

It resolves the tf.distribute strategy and the Keras precision policy, builds the
models inside `strategy.scope()` (hence the builder callable), wraps them in a
`Distiller`, trains with `fit` and writes, under `output_dir`:

    checkpoints/ckpt-<step>.npz   every `checkpoint_every` steps (last `keep_checkpoints`)
    metrics.jsonl                 one JSON line per `log_every` steps (+ eval lines)
    tensorboard/                  the same scalars for TensorBoard
    train_options.json            the resolved spec and its fingerprint

Stages (`TrainSpec.objective.stages`) run one after the other in the same `Distiller`, the
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
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from tf_minilm.distill import objectives as objectives_lib
from tf_minilm.distill.callbacks import (
    MetricsLogger,
    NonFiniteGuard,
    NonFiniteLossError,
    PeriodicCheckpoint,
    PeriodicEvaluation,
    truncate_jsonl,
)
from tf_minilm.distill.distiller import Distiller
from tf_minilm.distill.optimizer import make_optimizer, no_decay_variables
from tf_minilm.distill.options import TrainOptions
from tf_minilm.distill.runtime import (
    is_chief,
    resolve_jit_compile,
    resolve_precision,
    resolve_relation_chunk_bytes,
    resolve_strategy,
)
from tf_minilm.distill.spec import TrainSpec, continue_run, fingerprint_differences
from tf_minilm.distill.state import CheckpointManager, TrainingCheckpointError
from tf_minilm.fileio import write_json_atomic
from tf_minilm.model.encoder import Encoder
from tf_minilm.schedules import WarmupLinearDecay

logger = logging.getLogger(__name__)


class DataExhaustedError(RuntimeError):
    """The training dataset ended before the requested number of steps."""


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

    spec: TrainSpec
    checkpoint: str | None
    header: dict[str, Any] | None
    base_steps: int
    replans: list[tuple[int, int]]
    extended_from: int | None


def _plan_resume(manager: CheckpointManager, spec: TrainSpec) -> _ResumePlan:
    """Read the newest checkpoint's header; `spec.continue_run` keeps the run's warm-up
    and lets a larger `steps` extend it, the linear decay re-planned from the checkpoint's
    step to the new total."""
    existing = manager.checkpoints()
    if existing and not spec.checkpoints.resume:
        raise TrainingCheckpointError(
            f"{manager.directory} already holds checkpoints of a run (latest: step "
            f"{existing[-1][0]}); resume it (resume=True) or use a new output folder"
        )
    newest = manager.newest_readable() if existing else None
    if newest is None:
        return _ResumePlan(spec, None, None, spec.steps, [], None)
    path, header = newest
    saved = header.get("fingerprint", {})
    replans = [(int(a), int(b)) for a, b in saved.get("replans", [])]
    base_steps = int(saved.get("base_steps", saved.get("steps") or spec.steps))
    spec, extended_from = continue_run(spec, saved)
    if extended_from is not None:
        replans.append((int(header["step"]), spec.steps))
        logger.info("extending the run from %d to %d steps at step %d (warm-up %d kept, decay "
                    "re-planned)", extended_from, spec.steps, header["step"], spec.warmup_steps)
    return _ResumePlan(spec, path, header, base_steps, replans, extended_from)


def _fingerprint(plan: _ResumePlan, distiller: Distiller, policy: str) -> dict[str, Any]:
    """The run's fingerprint (`TrainSpec.fingerprint`) with what the trainer adds: the
    student's sizes, the precision policy it resolved, and the decay's re-plans."""
    return {
        **plan.spec.fingerprint(),
        "student_config": distiller.student.config.to_dict(),
        "precision_policy": policy,
        "base_steps": plan.base_steps,
        "replans": [list(pair) for pair in plan.replans],
    }


def _check_fingerprint(path: str, saved: dict[str, Any], current: dict[str, Any],
                       extended_from: int | None = None) -> None:
    differences = [f"{key}={was!r} in the checkpoint, {now!r} now"
                   for key, was, now in fingerprint_differences(saved, current, extended_from)]
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
    options: TrainSpec | TrainOptions | None = None,
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
            `steps - start_step` batches.
        output_dir: run folder (checkpoints, metrics.jsonl, tensorboard, options).
        options: the run's resolved `TrainSpec`, or `TrainOptions` (resolved here, once;
            default `TrainOptions()`).
        eval_dataset: finite dataset of held-out batches; its relation losses are
            logged as "eval_*" every `eval_every` steps and at the end.
        callbacks: extra Keras callbacks, run after the built-in ones.
        strategy: an existing strategy (overrides the spec's strategy), e.g. to run
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
    spec = options if isinstance(options, TrainSpec) else (options or TrainOptions()).resolve()
    output_dir = os.fspath(output_dir)
    checkpoint_dir = os.fspath(checkpoint_dir or os.path.join(output_dir, "checkpoints"))
    log_dir = os.fspath(log_dir or os.path.join(output_dir, "tensorboard"))
    metrics_path = os.path.join(output_dir, "metrics.jsonl")

    # 1. Where and how: strategy, precision, and what the newest checkpoint means.
    if strategy is None:
        strategy = resolve_strategy(spec.runtime.strategy)
    policy = resolve_precision(spec.runtime.precision, strategy)
    chief = is_chief(strategy)
    manager = CheckpointManager(checkpoint_dir, spec.checkpoints.keep_checkpoints,
                                is_chief=chief)
    manager.remove_stale_temporaries()
    plan = _plan_resume(manager, spec)
    spec = plan.spec  # with the run's warm-up when resumed
    stages = spec.objective.stages

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        # 2. Build teacher, student, Distiller and optimizer inside the strategy scope.
        keras.utils.set_random_seed(spec.runtime.seed)
        distiller, schedule = _build(build_models, plan, strategy, policy)

        # 3. Resume: restore the newest checkpoint of this same run, trim the metrics log.
        fingerprint = _fingerprint(plan, distiller, policy)
        start_step, elapsed_offset = 0, 0.0
        if plan.checkpoint is not None:
            _check_fingerprint(plan.checkpoint, plan.header.get("fingerprint", {}), fingerprint,
                               plan.extended_from)
            manager.restore(plan.checkpoint, distiller.state_variables,
                            distiller.optimizer.variables)
            start_step = int(plan.header["step"])
            elapsed_offset = float(plan.header.get("elapsed_s", 0.0))
            logger.info("resuming from %s at step %d", plan.checkpoint, start_step)
        if chief and (plan.checkpoint is not None or os.path.exists(metrics_path)):
            truncate_jsonl(metrics_path, start_step)
        if chief:
            extensions = [{"at_step": start, "to_steps": total} for start, total in plan.replans]
            write_json_atomic(os.path.join(output_dir, "train_options.json"),
                              {**dataclasses.asdict(spec), "fingerprint": fingerprint,
                               "extensions": extensions})

        # 4. Train: the stages in order, one `fit` each, checkpointed at every boundary.
        metrics_logger = MetricsLogger(
            metrics_path, log_dir, spec.checkpoints.log_every, start_step,
            learning_rate=schedule, elapsed_offset=elapsed_offset, write=chief,
            total_steps=spec.steps,
        )
        try:
            if plan.extended_from is not None:
                metrics_logger.write_record({"step": start_step, "event": "extended",
                                             "from_steps": plan.extended_from,
                                             "to_steps": spec.steps})

            def save(step: int) -> str | None:
                meta = {"fingerprint": fingerprint, "elapsed_s": metrics_logger.elapsed}
                return manager.save(step, distiller.state_variables,
                                    distiller.optimizer.variables, meta)

            guard = NonFiniteGuard(start_step, last_checkpoint=manager.latest)
            checkpointer = PeriodicCheckpoint(save, spec.checkpoints.checkpoint_every,
                                              start_step)
            evaluator = PeriodicEvaluation(eval_dataset, spec.checkpoints.eval_every,
                                           spec.checkpoints.eval_steps, metrics_logger,
                                           start_step)
            evaluator.set_model(distiller)
            fit_callbacks = [guard, checkpointer, metrics_logger, evaluator, *callbacks]
            if verbose is None:
                verbose = 1 if sys.stdout.isatty() else 0
            step = start_step
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
                              callbacks=fit_callbacks, verbose=verbose, shuffle=False)
                step = checkpointer.step
                if guard.tripped or step < stage.end_step:
                    break
                if chief and index < len(stages) - 1 and checkpointer.last_saved != step:
                    save(step)  # a stage boundary is always a checkpoint
            if guard.tripped:
                raise NonFiniteLossError(guard.message)

            # 5. The last checkpoint and the final evaluation.
            saved = manager.checkpoints()
            checkpoint = saved[-1][1] if saved else None
            if chief and (not saved or saved[-1][0] != step):
                checkpoint = save(step)
            if step < spec.steps:
                raise DataExhaustedError(
                    f"the training dataset ended after global step {step} of {spec.steps}; "
                    f"the state of step {step} is saved in {checkpoint}. Make the dataset "
                    "repeat (or yield at least steps - start_step batches)."
                )
            eval_metrics = None
            if eval_dataset is not None:
                distiller.set_stage(len(stages) - 1)
                eval_metrics = evaluator.last_result if evaluator.last_step == step \
                    else evaluator.run(step, write=step > start_step)
        finally:
            metrics_logger.close()
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return DistillationResult(
        distiller=distiller, teacher=distiller.teacher, student=distiller.student, step=step,
        train_metrics=dict(metrics_logger.last_values), eval_metrics=eval_metrics,
        checkpoint=checkpoint if chief else None, output_dir=output_dir, strategy=strategy,
        precision=policy,
    )


def _build(build_models: Callable[[], tuple[Encoder, Encoder]], plan: _ResumePlan,
           strategy: tf.distribute.Strategy, policy: str) -> tuple[Distiller, WarmupLinearDecay]:
    """Teacher and student from `build_models`, the `Distiller` and its built AdamW, in scope."""
    spec = plan.spec
    optimizer_spec = spec.optimizer
    with strategy.scope():
        distiller = make_distiller(*build_models(), spec)
        schedule = WarmupLinearDecay(optimizer_spec.learning_rate, spec.warmup_steps,
                                     plan.base_steps, replans=plan.replans)
        optimizer = make_optimizer(
            schedule,
            weight_decay=optimizer_spec.weight_decay,
            no_decay=no_decay_variables(distiller.all_stage_variables),
            beta_1=optimizer_spec.adam_beta_1,
            beta_2=optimizer_spec.adam_beta_2,
            epsilon=optimizer_spec.adam_epsilon,
        )
        distiller.compile(optimizer=optimizer, steps_per_execution=1,
                          jit_compile=resolve_jit_compile(spec.runtime.jit_compile, strategy,
                                                          policy))
        distiller.optimizer.build(distiller.all_stage_variables)
    return distiller, schedule


def make_distiller(teacher: Encoder, student: Encoder, spec: TrainSpec) -> Distiller:
    """The `Distiller` of a run: the spec's objective, its clipping, the device's chunk size."""
    return Distiller.from_spec(
        teacher, student, spec.objective, clipnorm=spec.optimizer.clipnorm,
        relation_chunk_bytes=resolve_relation_chunk_bytes(spec.objective.relation_chunk_mb),
        name="distiller")


def learning_rate_at(spec: TrainSpec, step: int) -> float:
    """The learning rate used by the update that follows `step` completed updates."""
    schedule = WarmupLinearDecay(spec.optimizer.learning_rate, spec.warmup_steps, spec.steps)
    return float(schedule(step))
