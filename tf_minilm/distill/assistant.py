"""MiniLM's teacher assistant: teacher -> assistant -> student, two runs in one call.

Owns: sizing the assistant (the teacher's depth, the student's width) and chaining two
`run_distillation` runs in sub-folders, each on its part of one `TrainSpec`. Imports:
`distill.trainer`, `distill.options`, `distill.spec`, `rules`, `distill.objectives`,
`distill.runtime`, `model`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from tf_minilm import rules
from tf_minilm.distill import objectives as objectives_lib
from tf_minilm.distill.options import TrainOptions
from tf_minilm.distill.runtime import resolve_strategy
from tf_minilm.distill.spec import TrainSpec
from tf_minilm.distill.trainer import DistillationResult, run_distillation
from tf_minilm.model.encoder import Encoder, copy_encoder
from tf_minilm.model.student import build_student


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
    options: TrainSpec | TrainOptions | None = None,
    *,
    assistant_steps: int | None = None,
    assistant_hidden: int | None = None,
    assistant_heads: int | None = None,
    student_init: str = "random",
    student_layout: str = "teacher",
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
        options: the resolved `TrainSpec` (or `TrainOptions`, resolved here) of both
            stages; its `steps` are the student stage's.
        assistant_steps: steps of the teacher -> assistant stage; default half of
            `options.steps` (at least 1).
        assistant_hidden, assistant_heads: assistant width/heads; default the student's.
        student_init: "random" or "teacher-layers" (copy the assistant's first layers;
            possible when the widths are equal).
        student_layout: "teacher" (the assistant's, which is the teacher's) or "bert"
            (see `model.student.student_config`).
        eval_dataset, callbacks, strategy, verbose: as for `run_distillation`.

    Returns:
        An `AssistantResult` with both encoders and both stage results.
    """
    spec = options if isinstance(options, TrainSpec) else (options or TrainOptions()).resolve()
    if assistant_steps is None:
        assistant_steps = max(1, spec.steps // 2)
    hidden = assistant_hidden or student_hidden
    heads = assistant_heads or student_heads
    rules.divides(heads, hidden, "the assistant's heads (default: the student's; set "
                  "assistant_heads)", "its hidden size", error=ValueError)
    if spec.objective.method == "minilmv2" and spec.objective.uses_relations:
        objectives_lib.check_relation_heads(spec.objective.relation_heads, {"assistant": hidden})
    rules.positive_int(assistant_steps, "assistant_steps", error=ValueError)
    if len(spec.objective.stages) > 1:
        raise ValueError("a teacher-assistant run has two stages of its own; give it one "
                         "loss, not stages")
    stage_one, stage_two = stage_specs(spec, assistant_steps)
    seed = spec.runtime.seed
    if strategy is None:
        strategy = resolve_strategy(spec.runtime.strategy)

    def build_stage_one() -> tuple[Encoder, Encoder]:
        teacher = build_teacher()
        return teacher, build_assistant(teacher, hidden, heads, seed)

    output_dir = os.fspath(output_dir)
    first = run_distillation(
        build_stage_one, make_train_dataset, os.path.join(output_dir, "assistant"), stage_one,
        eval_dataset=eval_dataset, callbacks=callbacks, strategy=strategy, verbose=verbose,
    )

    def build_stage_two() -> tuple[Encoder, Encoder]:
        assistant = copy_encoder(first.student, first.student.dtype_policy, name="assistant")
        student = build_student(
            assistant, student_layers, student_hidden, student_heads, student_intermediate,
            init=student_init, seed=seed, layout=student_layout,
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


def stage_specs(spec: TrainSpec, assistant_steps: int) -> tuple[TrainSpec, TrainSpec]:
    """The two stages' specs: teacher -> assistant (`assistant_steps`, the teacher layer of
    `spec`, a given warm-up clipped to the stage, else 10% of it), then assistant ->
    student (its last layer)."""
    warmup = min(spec.warmup_steps, assistant_steps - 1) if spec.optimizer.warmup_explicit \
        else assistant_steps // 10
    stage_one = spec.with_steps(assistant_steps, warmup).replace(student_layer=None)
    return stage_one, spec.replace(teacher_layer=None)


def build_assistant(teacher: Encoder, hidden: int, heads: int, seed: int) -> Encoder:
    """The assistant: the teacher's depth, `hidden` wide with `heads` heads, a 4x FFN."""
    return build_student(teacher, teacher.config.num_hidden_layers, hidden, heads, 4 * hidden,
                         init="random", seed=seed)
