"""Width pruning: a narrower student started from slices of chosen teacher layers.

Owns: ranking a teacher's hidden channels, attention heads and FFN neurons by their
activations on calibration rows (`measure_importance`), choosing the strongest for a
student's sizes (`plan_pruning`), and copying those slices of the teacher's weights,
embeddings, LayerNorms and pooler included, into the student (`prune_into`). Imports:
NumPy, Keras ops, `model.config`, `model.encoder`.

This is the width pruning NVIDIA's Minitron runs before it distils (Muralidharan et al.
2024, "Compact Language Models via Pruning and Knowledge Distillation"): activation-based
importance from a small calibration set, no gradients. Per real (unpadded) token:
- a hidden channel scores the root mean square of its LayerNorm outputs (the embeddings'
  and both of every block's), the residual stream every layer reads and writes;
- an attention head scores the root mean square of its slice of the attention output
  (the heads' contexts before the output projection), per layer;
- an FFN neuron scores the mean absolute value of its activation after GELU, per layer.
The kept indices stay in the teacher's order. A head keeps its size (the student's
hidden / heads must equal the teacher's), so a 768-wide, 12-head teacher prunes to 384
wide with 6 heads. MPNet's relative position bias has one column per head shared by all
layers, so a student with it keeps one head set everywhere (ranked on the chosen layers'
summed scores). Written here because no kept library prunes Keras encoders.

With nothing pruned the student is the teacher's chosen layers exactly; what pruning
changes beyond dropping the slices is the LayerNorm statistics, now over the kept
channels only (as in Minitron), which distillation then repairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from keras import ops

from tf_minilm.model.config import ConfigError, EncoderConfig
from tf_minilm.model.encoder import Encoder

# The fields a pruned student must share with its teacher (its tokenizer and positions).
SAME_FIELDS = ("model_type", "vocab_size", "max_position_embeddings", "type_vocab_size",
               "relative_attention_num_buckets", "pad_token_id")


@dataclasses.dataclass(frozen=True)
class WidthImportance:
    """Activation scores of a teacher's channels, heads and neurons.

    Attributes:
        hidden: [hidden] score of each hidden channel.
        heads: one [heads] array per teacher layer (layer 1 first).
        neurons: one [intermediate] array per teacher layer.
        tokens: real tokens the scores were measured on.
    """

    hidden: np.ndarray
    heads: tuple[np.ndarray, ...]
    neurons: tuple[np.ndarray, ...]
    tokens: int


@dataclasses.dataclass(frozen=True)
class PruningPlan:
    """What a pruned student keeps, indices into the teacher's (in the teacher's order).

    Attributes:
        teacher_layers: the 1-based teacher layer behind each student layer.
        channels: kept hidden channels.
        heads: kept heads of each student layer.
        neurons: kept FFN neurons of each student layer.
    """

    teacher_layers: tuple[int, ...]
    channels: tuple[int, ...]
    heads: tuple[tuple[int, ...], ...]
    neurons: tuple[tuple[int, ...], ...]

    def summary(self) -> dict[str, Any]:
        """A small JSON-able record (counts, and the heads kept per layer)."""
        return {"teacher_layers": list(self.teacher_layers), "hidden": len(self.channels),
                "heads": [list(h) for h in self.heads],
                "intermediate": [len(n) for n in self.neurons]}


def measure_importance(teacher: Encoder, batches: Iterable[dict[str, Any]]) -> WidthImportance:
    """Score the teacher's channels, heads and neurons on calibration `batches`.

    Args:
        teacher: the teacher encoder.
        batches: dicts of int `input_ids`, `attention_mask` (and `token_type_ids`).

    Returns:
        The `WidthImportance`.

    Raises:
        ConfigError: the batches hold no real token.
    """
    config = teacher.config
    heads, head_size = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    layers = config.num_hidden_layers
    hidden_sq = np.zeros(config.hidden_size)
    head_sq = np.zeros((layers, heads))
    neuron_abs = np.zeros((layers, config.intermediate_size))
    tokens = 0
    for batch in batches:
        captured: list[dict[str, Any]] = []
        # `call`, not `__call__`: Keras copies a list argument, the capture would stay empty.
        teacher.call({key: ops.convert_to_tensor(value) for key, value in batch.items()},
                     training=False, capture=captured)
        real = np.asarray(ops.convert_to_numpy(batch["attention_mask"])).astype(bool)
        count = int(real.sum())
        if not count:
            continue
        tokens += count

        hidden_sq += (_real_rows(captured[0]["embeddings"], real) ** 2).sum(0)
        for index, inner in enumerate(captured[1:]):
            hidden_sq += (_real_rows(inner["attention_norm"], real) ** 2).sum(0)
            hidden_sq += (_real_rows(inner["output_norm"], real) ** 2).sum(0)
            context = _real_rows(inner["context"], real).reshape(count, heads, head_size)
            head_sq[index] += (context ** 2).sum(axis=(0, 2)) / head_size
            neuron_abs[index] += np.abs(_real_rows(inner["inner"], real)).sum(0)
    if not tokens:
        raise ConfigError("width pruning needs calibration rows with real tokens; got none")
    norms = 1 + 2 * layers
    return WidthImportance(hidden=np.sqrt(hidden_sq / (tokens * norms)),
                           heads=tuple(np.sqrt(row / tokens) for row in head_sq),
                           neurons=tuple(row / tokens for row in neuron_abs), tokens=tokens)


def _real_rows(tensor: Any, real: np.ndarray) -> np.ndarray:
    """A [batch, seq, width] activation's rows at real tokens, as float32 [tokens, width]."""
    return np.asarray(ops.convert_to_numpy(ops.cast(tensor, "float32")))[real]


def _strongest(scores: np.ndarray, count: int) -> tuple[int, ...]:
    """The `count` highest-scoring indices, in ascending index order (ties: lower first)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return tuple(int(i) for i in sorted(order[:count]))


def check_prunable(student: EncoderConfig, teacher: EncoderConfig) -> None:
    """Whether `student` can be cut out of `teacher` by width pruning.

    Raises:
        ConfigError: a field that must match differs, a size is larger than the
            teacher's, or the head size differs (the message says the heads to use).
    """
    for field in SAME_FIELDS:
        if getattr(student, field) != getattr(teacher, field):
            raise ConfigError(f"width pruning keeps the teacher's '{field}' "
                              f"({getattr(teacher, field)}); the student has "
                              f"{getattr(student, field)}")
    head_size = teacher.hidden_size // teacher.num_attention_heads
    if student.hidden_size % head_size:
        raise ConfigError(f"width pruning keeps whole heads of {head_size} (the teacher's head "
                          f"size): the student's width must be a multiple of {head_size}, "
                          f"not {student.hidden_size}")
    if student.hidden_size != student.num_attention_heads * head_size:
        raise ConfigError(
            f"width pruning keeps whole heads of {head_size} (the teacher's head size): a "
            f"{student.hidden_size}-wide student needs {student.hidden_size // head_size} "
            f"heads, not {student.num_attention_heads}")
    for field in ("hidden_size", "num_attention_heads", "intermediate_size"):
        if getattr(student, field) > getattr(teacher, field):
            raise ConfigError(f"width pruning cannot widen: the student's '{field}' "
                              f"({getattr(student, field)}) exceeds the teacher's "
                              f"({getattr(teacher, field)})")


def plan_pruning(student: EncoderConfig, teacher: EncoderConfig,
                 teacher_layers: Sequence[int], importance: WidthImportance) -> PruningPlan:
    """The strongest channels, heads and neurons for `student`'s sizes.

    Args:
        student: the student's config (sizes).
        teacher: the teacher's config.
        teacher_layers: the 1-based teacher layer of each student layer.
        importance: the teacher's scores (`measure_importance`).

    Returns:
        The `PruningPlan`.
    """
    check_prunable(student, teacher)
    layers = tuple(int(layer) for layer in teacher_layers)
    if len(layers) != student.num_hidden_layers:
        raise ConfigError(f"got {len(layers)} teacher layers for a student with "
                          f"{student.num_hidden_layers}")
    channels = _strongest(importance.hidden, student.hidden_size)
    if teacher.relative_attention_num_buckets:
        shared = _strongest(sum(importance.heads[layer - 1] for layer in layers),
                            student.num_attention_heads)
        heads = tuple(shared for _ in layers)
    else:
        heads = tuple(_strongest(importance.heads[layer - 1], student.num_attention_heads)
                      for layer in layers)
    neurons = tuple(_strongest(importance.neurons[layer - 1], student.intermediate_size)
                    for layer in layers)
    return PruningPlan(layers, channels, heads, neurons)


def prune_into(student: Encoder, teacher: Encoder, plan: PruningPlan) -> None:
    """Copy the slices of `teacher` that `plan` keeps into `student` (built to its sizes).

    Raises:
        ConfigError: the student cannot hold the plan (sizes or fields differ).
    """
    s, t = student.config, teacher.config
    check_prunable(s, t)
    head_size = t.hidden_size // t.num_attention_heads
    rows = np.asarray(plan.channels)

    def value(variable: Any) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(variable))

    def put(variable: Any, array: np.ndarray) -> None:
        if tuple(variable.shape) != array.shape:
            raise ConfigError(f"pruning plan does not fit {variable.path}: "
                              f"{tuple(variable.shape)} vs {array.shape}")
        variable.assign(array.astype(value(variable).dtype))

    se, te = student.embeddings, teacher.embeddings
    put(se.word_embeddings, value(te.word_embeddings)[:, rows])
    put(se.position_embeddings, value(te.position_embeddings)[:, rows])
    if te.token_type_embeddings is not None:
        put(se.token_type_embeddings, value(te.token_type_embeddings)[:, rows])
    _copy_norm(se.layer_norm, te.layer_norm, rows, put, value)
    for block, layer, heads, neurons in zip(student.blocks, plan.teacher_layers, plan.heads,
                                            plan.neurons, strict=True):
        source = teacher.blocks[layer - 1]
        cols = np.concatenate([np.arange(h * head_size, (h + 1) * head_size) for h in heads])
        kept = np.asarray(neurons)
        for name in ("query", "key", "value"):
            to, frm = getattr(block.attention, name), getattr(source.attention, name)
            put(to.kernel, value(frm.kernel)[rows][:, cols])
            put(to.bias, value(frm.bias)[cols])
        put(block.attention_output.kernel, value(source.attention_output.kernel)[cols][:, rows])
        put(block.attention_output.bias, value(source.attention_output.bias)[rows])
        _copy_norm(block.attention_layer_norm, source.attention_layer_norm, rows, put, value)
        put(block.intermediate.kernel, value(source.intermediate.kernel)[rows][:, kept])
        put(block.intermediate.bias, value(source.intermediate.bias)[kept])
        put(block.output_dense.kernel, value(source.output_dense.kernel)[kept][:, rows])
        put(block.output_dense.bias, value(source.output_dense.bias)[rows])
        _copy_norm(block.output_layer_norm, source.output_layer_norm, rows, put, value)
    put(student.pooler.kernel, value(teacher.pooler.kernel)[rows][:, rows])
    put(student.pooler.bias, value(teacher.pooler.bias)[rows])
    if teacher.relative_position_bias is not None:
        if len(set(plan.heads)) > 1:
            raise ConfigError("the relative position bias is shared by all layers: a pruning "
                              "plan for it keeps one head set in every layer")
        put(student.relative_position_bias.embeddings,
            value(teacher.relative_position_bias.embeddings)[:, np.asarray(plan.heads[0])])


def _copy_norm(to: Any, frm: Any, rows: np.ndarray, put: Any, value: Any) -> None:
    put(to.gamma, value(frm.gamma)[rows])
    put(to.beta, value(frm.beta)[rows])
