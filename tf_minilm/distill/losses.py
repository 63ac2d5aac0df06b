"""Distillation losses for MiniLM (v1) and MiniLMv2, as pure tensor functions.

Owns: the relation losses' math (pure tensors in, float32 scalars out). The rules on
relation names and heads are `distill.objectives`'. Imports: TensorFlow,
`distill.objectives`, `constants`.

The math
--------
Both losses compare, row by row, probability distributions built from the
query/key/value projections of one teacher layer and one student layer.

Relation heads. A projection X (queries, keys or values) arrives with every
attention head concatenated: shape [batch, seq, hidden]. Pick a head count A
(the same number on both sides). Each side cuts its own hidden width into A
equal slices of width d = hidden / A, giving [batch, A, seq, d]. The teacher and
the student may have different hidden widths, so their d differ; the count A is
what lines the two sides up.

Relation. For two projections X and Y of one side (for example X = Q, Y = K),
relation head a gives a seq x seq matrix of scores
    S[a, t, u] = <X[a, t], Y[a, u]> / sqrt(d)
and each row t becomes a distribution over the key positions u with a softmax.
Key positions u that are padding are pushed out of the softmax by adding a large
finite negative number (-1e9) to their score, on the teacher and on the student
alike, so they carry no probability.

Divergence. For a real query row t, the row divergence is the Kullback-Leibler
divergence from the teacher's row to the student's row,
    KL_t = sum_u p_T(u) * (log p_T(u) - log p_S(u)),
written with log-softmax on both sides (never log of a softmax) so it stays
finite for very peaked rows. Padded query rows are left out.

Normalisation. For one example with n real tokens the relation loss is
    (1 / (A * n)) * sum over heads a and real rows t of KL_t,
i.e. the mean row divergence over the example's real rows and heads; an example
with no real token contributes 0 (not 0/0). The batch loss is the plain mean of
the per-example losses over the batch (fully padded examples still count in that
mean, with value 0).

MiniLMv2 uses A = A_r relation heads (48 for base teachers, 64 for large ones,
unrelated to either model's attention-head count) and sums the Q-Q, K-K and V-V
relations by default; any pair from {q, k, v} can be requested ("qk", "vq", ...).

MiniLM (v1) uses the models' own attention heads, A = num_heads, which must be
equal on the two sides. Its two terms are the attention distribution (the Q-K
relation) and the value relation (V-V); the loss is their sum.

Every computation runs in float32 whatever the dtype of the inputs (float16 and
bfloat16 inputs are cast first), and the padding value is only ever built in
float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import tensorflow as tf

from tf_minilm.constants import QKV_LETTERS
from tf_minilm.distill.objectives import check_head_count, check_relation_heads, check_relations

# Added to padded-key scores before the softmax; finite so that 0 * it stays 0.
MASK_VALUE = -1e9

DEFAULT_RELATIONS: tuple[str, ...] = ("qq", "kk", "vv")
V1_TERMS: Mapping[str, str] = {"attention": "qk", "value_relation": "vv"}

QKV = tuple[tf.Tensor, tf.Tensor, tf.Tensor]


def _check_qkv(qkv: Sequence[tf.Tensor], side: str) -> None:
    if not isinstance(qkv, (tuple, list)) or len(qkv) != 3:
        raise ValueError(
            f"{side}_qkv must be a (q, k, v) tuple of three [batch, seq, hidden] tensors, "
            f"got {type(qkv).__name__} of length {len(qkv) if hasattr(qkv, '__len__') else '?'}"
        )


def _check_static_shapes(
    teacher_qkv: Sequence[tf.Tensor],
    student_qkv: Sequence[tf.Tensor],
    mask: tf.Tensor,
    letters: set[str],
) -> None:
    """Compare the statically known batch/seq/hidden sizes; unknown ones pass."""
    batch_seq = mask.shape.as_list() if mask.shape.rank == 2 else [None, None]
    for side, qkv in (("teacher", teacher_qkv), ("student", student_qkv)):
        hidden_seen: dict[str, int] = {}
        for letter in [c for c in QKV_LETTERS if c in letters]:
            shape = tf.TensorShape(getattr(qkv[QKV_LETTERS.index(letter)], "shape", None))
            if shape.rank is None:
                continue
            if shape.rank != 3:
                raise ValueError(
                    f"{side} {letter} must have shape [batch, seq, hidden], got shape {shape}"
                )
            dims = shape.as_list()
            for axis, axis_name in ((0, "batch"), (1, "seq")):
                expected = batch_seq[axis]
                if expected is not None and dims[axis] is not None and dims[axis] != expected:
                    raise ValueError(
                        f"{side} {letter} has {axis_name} size {dims[axis]}, expected "
                        f"{expected} to match attention_mask (shape {mask.shape}) and "
                        "the other q/k/v tensors"
                    )
                if expected is None:
                    batch_seq[axis] = dims[axis]
            if dims[2] is not None:
                hidden_seen[letter] = dims[2]
        if len(set(hidden_seen.values())) > 1:
            raise ValueError(f"{side} q/k/v hidden sizes differ: {hidden_seen}")


def _split_heads(
    x: tf.Tensor, num_heads: int, heads_name: str, side: str, letter: str
) -> tuple[tf.Tensor, tf.Tensor]:
    """Cast to float32 and cut [B, S, H] into [B, A, S, H/A].

    Returns the split tensor and 1/sqrt(d) as a float32 scalar.
    """
    x = tf.cast(x, tf.float32)
    if x.shape.rank is not None and x.shape.rank != 3:
        raise ValueError(
            f"{side} {letter} must have shape [batch, seq, hidden], got shape {x.shape}"
        )
    hidden = x.shape[-1]
    shape = tf.shape(x)
    if hidden is not None:
        check_relation_heads(num_heads, {f"{side} {letter}": hidden}, heads_name)
        head_dim = hidden // num_heads
        inv_scale = tf.constant(1.0 / math.sqrt(head_dim), tf.float32)
    else:
        dynamic_hidden = shape[2]
        with tf.control_dependencies(
            [
                tf.debugging.assert_equal(
                    dynamic_hidden % num_heads,
                    0,
                    message=f"{side} hidden size (of {letter}) is not divisible by {heads_name}={num_heads}",
                )
            ]
        ):
            head_dim = tf.identity(dynamic_hidden // num_heads)
        inv_scale = tf.math.rsqrt(tf.cast(head_dim, tf.float32))
    x = tf.reshape(x, [shape[0], shape[1], num_heads, head_dim])
    return tf.transpose(x, [0, 2, 1, 3]), inv_scale


def _log_relation(
    x: tf.Tensor, y: tf.Tensor, inv_scale: tf.Tensor, key_bias: tf.Tensor
) -> tf.Tensor:
    """log softmax(x y^T / sqrt(d) + key_bias) over the last axis, [B, A, S, S]."""
    scores = tf.matmul(x, y, transpose_b=True) * inv_scale
    return tf.nn.log_softmax(scores + key_bias, axis=-1)


def _relation_kl_losses(
    teacher_qkv: Sequence[tf.Tensor],
    student_qkv: Sequence[tf.Tensor],
    attention_mask: tf.Tensor,
    num_heads: int,
    heads_name: str,
    pairs: Mapping[str, str],
) -> dict[str, tf.Tensor]:
    """Shared core: {output name: letter pair} -> {output name: scalar loss}."""
    _check_qkv(teacher_qkv, "teacher")
    _check_qkv(student_qkv, "student")

    mask = tf.convert_to_tensor(attention_mask)
    if mask.shape.rank is not None and mask.shape.rank != 2:
        raise ValueError(f"attention_mask must have shape [batch, seq], got shape {mask.shape}")
    real = tf.cast(mask, tf.float32) > 0.0  # [B, S] bool, built in float32 only
    real_f = tf.cast(real, tf.float32)

    # Padded keys: a large finite negative added to the scores on both sides.
    key_bias = tf.where(real, 0.0, MASK_VALUE)[:, tf.newaxis, tf.newaxis, :]  # [B,1,1,S]
    # Which (query row, key) cells count: real rows, real keys.
    cell_mask = (
        real_f[:, tf.newaxis, :, tf.newaxis] * real_f[:, tf.newaxis, tf.newaxis, :]
    )  # [B,1,S,S]
    lengths = tf.reduce_sum(real_f, axis=1)  # [B]
    denom = tf.cast(num_heads, tf.float32) * lengths
    has_tokens = lengths > 0.0
    safe_denom = tf.where(has_tokens, denom, 1.0)

    needed = {letter for pair in pairs.values() for letter in pair}
    _check_static_shapes(teacher_qkv, student_qkv, mask, needed)
    split = {}
    for side, qkv in (("teacher", teacher_qkv), ("student", student_qkv)):
        for letter in [c for c in QKV_LETTERS if c in needed]:
            split[side, letter] = _split_heads(
                qkv[QKV_LETTERS.index(letter)], num_heads, heads_name, side, letter
            )

    losses: dict[str, tf.Tensor] = {}
    for out_name, (a, b) in pairs.items():
        (t_a, t_scale), (t_b, _) = split["teacher", a], split["teacher", b]
        (s_a, s_scale), (s_b, _) = split["student", a], split["student", b]
        log_t = _log_relation(t_a, t_b, t_scale, key_bias)
        log_s = _log_relation(s_a, s_b, s_scale, key_bias)
        # p_T log p_T - p_T log p_S, zeroed outside real rows x real keys.
        cell_kl = tf.exp(log_t) * (log_t - log_s) * cell_mask
        per_example = tf.reduce_sum(cell_kl, axis=[1, 2, 3])  # [B]
        per_example = tf.where(has_tokens, per_example / safe_denom, 0.0)
        losses[out_name] = tf.reduce_mean(per_example)
    return losses


def relation_losses(
    teacher_qkv: QKV,
    student_qkv: QKV,
    attention_mask: tf.Tensor,
    num_relation_heads: int,
    relations: Sequence[str] = DEFAULT_RELATIONS,
) -> dict[str, tf.Tensor]:
    """MiniLMv2 self-attention relation losses, one scalar per relation.

    Args:
        teacher_qkv: (q, k, v) of the teacher layer, each [batch, seq, hidden_T]
            with heads concatenated; any float dtype.
        student_qkv: (q, k, v) of the student layer, each [batch, seq, hidden_S].
        attention_mask: [batch, seq], 1 (or any positive value) for real tokens,
            0 for padding; int or float.
        num_relation_heads: A_r, the number of relation heads both sides are cut
            into; hidden_T and hidden_S must both be divisible by it.
        relations: names of the relations to compute, each two letters from
            {"q", "k", "v"}; "qk" relates queries (rows) to keys (columns).

    Returns:
        Dict mapping each name in `relations` (exactly as given) to a float32
        scalar: the batch mean of the per-example KL(teacher || student) summed
        over relation heads and real query rows, divided by A_r x real length.

    Raises:
        ValueError: on a bad relation name, a hidden size not divisible by
            `num_relation_heads` (naming the side and size), or malformed inputs.
    """
    check_head_count(num_relation_heads, "num_relation_heads")
    names = check_relations(relations)
    return _relation_kl_losses(
        teacher_qkv,
        student_qkv,
        attention_mask,
        num_relation_heads,
        "num_relation_heads",
        {n: n for n in names},
    )


def minilm_v2_loss(
    teacher_qkv: QKV,
    student_qkv: QKV,
    attention_mask: tf.Tensor,
    num_relation_heads: int,
    relations: Sequence[str] = DEFAULT_RELATIONS,
) -> tf.Tensor:
    """MiniLMv2 loss: the sum of `relation_losses` (weight 1 each).

    Args:
        teacher_qkv: (q, k, v) of the teacher layer, each [batch, seq, hidden_T].
        student_qkv: (q, k, v) of the student layer, each [batch, seq, hidden_S].
        attention_mask: [batch, seq], 1 for real tokens, 0 for padding.
        num_relation_heads: A_r, relation heads on both sides.
        relations: relation names to sum, default ("qq", "kk", "vv").

    Returns:
        float32 scalar loss.
    """
    losses = relation_losses(
        teacher_qkv, student_qkv, attention_mask, num_relation_heads, relations
    )
    return tf.add_n(list(losses.values()))


def minilm_v1_losses(
    teacher_qkv: QKV,
    student_qkv: QKV,
    attention_mask: tf.Tensor,
    num_heads: int,
) -> dict[str, tf.Tensor]:
    """MiniLM (v1) attention-transfer and value-relation losses.

    Both models must have `num_heads` attention heads (check with
    `check_minilm_v1_heads` first); each side's head width is its own
    hidden / num_heads.

    Args:
        teacher_qkv: (q, k, v) of the teacher's last layer, each [batch, seq, hidden_T].
        student_qkv: (q, k, v) of the student's last layer, each [batch, seq, hidden_S].
        attention_mask: [batch, seq], 1 for real tokens, 0 for padding.
        num_heads: the attention-head count shared by teacher and student.

    Returns:
        Dict with float32 scalars "attention" (KL between softmax(Q K^T / sqrt(d_k))
        distributions) and "value_relation" (the same for softmax(V V^T / sqrt(d_k))),
        each normalised per example by num_heads x real length, then averaged
        over the batch.
    """
    check_head_count(num_heads, "num_heads")
    return _relation_kl_losses(
        teacher_qkv, student_qkv, attention_mask, num_heads, "num_heads", V1_TERMS
    )


def minilm_v1_loss(
    teacher_qkv: QKV,
    student_qkv: QKV,
    attention_mask: tf.Tensor,
    num_heads: int,
) -> tf.Tensor:
    """MiniLM (v1) loss: attention-transfer loss + value-relation loss.

    Args:
        teacher_qkv: (q, k, v) of the teacher's last layer.
        student_qkv: (q, k, v) of the student's last layer.
        attention_mask: [batch, seq], 1 for real tokens, 0 for padding.
        num_heads: the attention-head count shared by teacher and student.

    Returns:
        float32 scalar loss.
    """
    losses = minilm_v1_losses(teacher_qkv, student_qkv, attention_mask, num_heads)
    return losses["attention"] + losses["value_relation"]
