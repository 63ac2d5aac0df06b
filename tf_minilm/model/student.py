"""Student construction: a smaller encoder sharing the teacher's vocabulary and tokenizer.

Owns: the student's sizes and initialisation, including which teacher layers it copies
or prunes. Imports: `model.config`, `model.encoder`, `model.prune`, `constants`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import keras

from tf_minilm.constants import STUDENT_INITS, STUDENT_LAYOUTS
from tf_minilm.model.config import ConfigError, EncoderConfig, check_layer_number
from tf_minilm.model.encoder import Encoder


def student_config(
    teacher_config: EncoderConfig,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    intermediate_size: int | None = None,
    layout: str = "teacher",
) -> EncoderConfig:
    """The teacher's config with the student's sizes (FFN defaults to 4 x hidden).

    Vocabulary, padding id and dropout are always the teacher's, so the teacher's
    tokenizer serves the student unchanged.

    Args:
        teacher_config: the teacher's architecture.
        num_layers, hidden_size, num_heads: the student's depth, width and heads.
        intermediate_size: FFN width; default 4 x `hidden_size`.
        layout: "teacher" (the teacher's architecture: positions, token types, relative
            position bias) or "bert": a BERT encoder (absolute positions from 0, one
            token type, no relative bias) over the teacher's vocabulary, as long as the
            teacher's longest input; what onnxruntime fuses completely.

    Returns:
        The student's `EncoderConfig`.
    """
    if layout not in STUDENT_LAYOUTS:
        raise ConfigError(f"--student-layout is {layout!r}; choose one of "
                          f"{', '.join(STUDENT_LAYOUTS)}")
    if intermediate_size is None:
        intermediate_size = 4 * hidden_size
    values = dataclasses.asdict(teacher_config)
    values.update(
        num_hidden_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
    )
    if layout == "bert" and teacher_config.model_type != "bert":
        # Absolute positions 0..S-1 need no offset rows; the tokenizer gives no token
        # types (MPNet) or only type 0 (RoBERTa), so one type row.
        values.update(model_type="bert", relative_attention_num_buckets=0, type_vocab_size=1,
                      max_position_embeddings=teacher_config.max_sequence_length)
    return EncoderConfig.from_dict(values, source="student")


def spread_layers(teacher_depth: int, student_depth: int) -> tuple[int, ...]:
    """`student_depth` teacher layers (1-based) spread evenly, the first and the last kept.

    The layer-reduction choice of sentence-transformers' distillation examples: the
    student keeps the teacher's output layer. 6 -> 3 gives (1, 3, 6); 12 -> 6 gives
    (1, 3, 5, 7, 9, 12).

    Args:
        teacher_depth: the teacher's layer count.
        student_depth: how many layers to pick (at most `teacher_depth`).

    Returns:
        Increasing 1-based layer numbers.
    """
    if not 1 <= student_depth <= teacher_depth:
        raise ConfigError(f"cannot pick {student_depth} of the teacher's {teacher_depth} layers")
    if student_depth == 1:
        return (teacher_depth,)
    return tuple(1 + (i * (teacher_depth - 1)) // (student_depth - 1)
                 for i in range(student_depth))


def parse_layer_list(text: str) -> tuple[int, ...]:
    """'1,3,6' -> (1, 3, 6); raises `ConfigError` for anything but comma-separated integers."""
    try:
        layers = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise ConfigError(f"{text!r} is not a comma-separated list of layer numbers "
                          "(e.g. 1,3,6)") from None
    return layers


def check_layer_choice(teacher_layers: Sequence[int], teacher_depth: int,
                       student_depth: int) -> tuple[int, ...]:
    """Validate teacher layers (1-based) to copy into a student; returns them as a tuple.

    Raises:
        ConfigError: a layer out of 1..teacher_depth, layers not strictly increasing, or
            a count other than the student's depth.
    """
    layers = tuple(int(layer) for layer in teacher_layers)
    for layer in layers:
        check_layer_number(layer, teacher_depth, "teacher")
    if any(b <= a for a, b in zip(layers, layers[1:], strict=False)):
        raise ConfigError(f"teacher layers {list(layers)} must be strictly increasing (each "
                          "layer once, in the teacher's order)")
    if len(layers) != student_depth:
        raise ConfigError(f"got {len(layers)} teacher layer(s) {list(layers)} for a student "
                          f"with {student_depth} layers")
    return layers


def copy_teacher_layers(
    student: Encoder, teacher: Encoder, teacher_layers: Sequence[int]
) -> None:
    """Copy embeddings, the chosen teacher blocks (1-based) and the pooler into `student`.

    Raises:
        ConfigError: widths, heads or FFN sizes differ, or the layer list is wrong.
    """
    s, t = student.config, teacher.config
    for field in ("model_type", "hidden_size", "num_attention_heads", "intermediate_size",
                  "vocab_size", "max_position_embeddings", "type_vocab_size",
                  "relative_attention_num_buckets"):
        if getattr(s, field) != getattr(t, field):
            raise ConfigError(
                f"--init teacher-layers needs the student's '{field}' ({getattr(s, field)}) to "
                f"equal the teacher's ({getattr(t, field)})"
            )
    try:
        layers = check_layer_choice(teacher_layers, t.num_hidden_layers, s.num_hidden_layers)
    except ConfigError as err:
        raise ConfigError(f"--init-layers: {err}") from err
    pairs = [(student.embeddings, teacher.embeddings), (student.pooler, teacher.pooler)]
    pairs += [(student.blocks[i], teacher.blocks[layer - 1]) for i, layer in enumerate(layers)]
    for target, source in pairs:
        for target_weight, source_weight in zip(target.weights, source.weights, strict=True):
            target_weight.assign(source_weight)


def build_student(
    teacher: Encoder,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    intermediate_size: int | None = None,
    init: str = "random",
    teacher_layers: Sequence[int] | None = None,
    seed: int | None = None,
    dtype: Any = None,
    layout: str = "teacher",
    calibration: Iterable[dict[str, Any]] | None = None,
) -> Encoder:
    """A student encoder for `teacher`: random, copied teacher layers, or pruned ones.

    Args:
        teacher: the teacher encoder (its vocabulary and embedding layout are reused).
        num_layers: student depth.
        hidden_size: student width.
        num_heads: student attention heads (must divide `hidden_size`).
        intermediate_size: FFN width; default 4 x `hidden_size`.
        init: "random" (BERT initialisation: normal(0, initializer_range) weights,
            zero biases, unit LayerNorm), "teacher-layers" (copy embeddings, pooler and
            the blocks `teacher_layers`; needs equal widths) or "prune" (the strongest
            channels, heads and neurons of those blocks on `calibration`, for a narrower
            student: `model.prune`; the chosen plan is kept as `student.pruning_plan`).
        teacher_layers: 1-based teacher blocks for "teacher-layers" and "prune", strictly
            increasing; default the first `num_layers` for "teacher-layers"
            (`spread_layers` keeps the teacher's last layer instead), spread for "prune".
        seed: seed for the random initialisation.
        dtype: Keras dtype policy for the student (default: the global policy).
        layout: "teacher" or "bert" (see `student_config`); "bert" from a non-BERT
            teacher needs init "random".
        calibration: batches (dicts of `input_ids`, `attention_mask`) the "prune" init
            ranks the teacher's activations on.

    Returns:
        The student `Encoder`.

    Example:
    >>> student = build_student(teacher, num_layers=3, hidden_size=384, num_heads=12,
    ...                         init="teacher-layers")  # doctest: +SKIP
    """
    if init not in STUDENT_INITS:
        raise ConfigError(f"--init is {init!r}; choose one of {', '.join(STUDENT_INITS)}")
    config = student_config(teacher.config, num_layers, hidden_size, num_heads, intermediate_size,
                            layout)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    student = Encoder(config, name="student", **kwargs)
    if init == "teacher-layers":
        copy_teacher_layers(student, teacher, teacher_layers or range(1, num_layers + 1))
    elif init == "prune":
        from tf_minilm.model.prune import measure_importance, plan_pruning, prune_into

        if calibration is None:
            raise ConfigError("--init prune needs calibration rows to rank the teacher's "
                              "channels, heads and neurons on")
        depth = teacher.config.num_hidden_layers
        layers = check_layer_choice(teacher_layers or spread_layers(depth, num_layers), depth,
                                    num_layers)
        plan = plan_pruning(config, teacher.config, layers,
                            measure_importance(teacher, calibration))
        prune_into(student, teacher, plan)
        student.pruning_plan = plan
    return student
