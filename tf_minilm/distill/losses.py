"""Distillation losses for MiniLM (v1) and MiniLMv2, as pure tensor functions.

Owns: the relation losses' math (pure tensors in, float32 scalars out), computed in
memory-bounded chunks with a hand-written gradient. The rules on
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

Computation in chunks
---------------------
Built whole, each relation is a [batch, A, seq, seq] tensor on each side, and autodiff
keeps several of them per relation for the backward pass (1.6 GB each at 32 x 48 x
512 x 512). Here the (example, head) pairs are walked a chunk at a time in a
`tf.while_loop`; a step builds the chunk's teacher and student relations, adds their
divergence and, from the same probabilities, the gradient with respect to the student's
projections (d KL / d logits = p_S - p_T on a real row). A custom gradient returns those
stored [batch, seq, hidden] gradients, so the backward pass recomputes nothing and
nothing S x S outlives a loop step: the loss's memory is bounded by the chunk budget
(`chunk_bytes`, chosen per device by `distill.runtime`), not by batch x heads x S^2.
No library does this fused KL; `tests/dense_relation_loss.py` keeps the whole-tensor
form with TensorFlow's own gradient as the reference the tests compare against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from tf_minilm.constants import QKV_LETTERS
from tf_minilm.distill.objectives import check_head_count, check_relation_heads, check_relations

# Added to padded-key scores before the softmax; finite so that 0 * it stays 0.
MASK_VALUE = -1e9

# Default budget for one [pairs, seq, seq] float32 relation tensor of the chunked loss
# (the CPU's; `distill.runtime.resolve_relation_chunk_bytes` picks one per device).
CHUNK_BYTES = 2 * 2**20


DEFAULT_RELATIONS: tuple[str, ...] = ("qq", "kk", "vv")
V1_TERMS: Mapping[str, str] = {"attention": "qk", "value_relation": "vv"}

QKV = tuple[tf.Tensor, tf.Tensor, tf.Tensor]


def check_chunk_bytes(chunk_bytes: int, name: str = "chunk_bytes") -> int:
    """Refuse a relation chunk budget that is not a positive whole number of bytes.

    Args:
        chunk_bytes: the budget to check.
        name: the flag or field to name in the error.

    Returns:
        `chunk_bytes` unchanged.
    """
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise ValueError(f"{name} must be a positive number of bytes, got {chunk_bytes!r}")
    return chunk_bytes


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
    """Cast to float32 and cut [B, S, H] into [B * A, S, H/A] (pair b * A + a).

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
    x = tf.transpose(x, [0, 2, 1, 3])
    return tf.reshape(x, [shape[0] * num_heads, shape[1], head_dim]), inv_scale


def _softmax_and_log(logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """softmax and log-softmax over the last axis with one exp per element.

    `tf.nn.log_softmax` followed by `tf.exp` costs two; the exponentials are most of
    the relation loss's time on a CPU.
    """
    shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
    exps = tf.exp(shifted)
    total = tf.reduce_sum(exps, axis=-1, keepdims=True)
    return exps * tf.math.reciprocal(total), shifted - tf.math.log(total)


def relation_chunk_pairs(pairs: int | None, seq: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many (example, relation head) pairs one step of the chunked loss takes.

    The most pairs whose [pairs, seq, seq] float32 relation tensor fits in
    `chunk_bytes`, then evened out over the chunks the pairs need, so that the last
    chunk is not mostly padding (with `pairs` unknown, the most that fit).

    Args:
        pairs: batch x relation heads, or None when the batch size is not static.
        seq: sequence length.
        chunk_bytes: budget for one [pairs, seq, seq] float32 tensor.

    Returns:
        Pairs per chunk, at least 1.
    """
    most = max(1, int(chunk_bytes) // (4 * seq * seq))
    if pairs is None or pairs <= most:
        return most if pairs is None else max(1, pairs)
    chunks = -(-pairs // most)
    return -(-pairs // chunks)


def _chunked_relation_kl(
    teacher_rows: tf.Tensor,
    teacher_cols: tf.Tensor,
    teacher_scale: tf.Tensor,
    key_bias: tf.Tensor,
    row_weight: tf.Tensor,
    chunk: int | tf.Tensor,
    student_rows: tf.Tensor,
    student_cols: tf.Tensor,
    student_scale: tf.Tensor,
) -> tf.Tensor:
    """sum over pairs, rows r: row_weight[r] * KL(teacher row r || student row r).

    Every tensor is float32 and flattened over (example, relation head) pairs:
    `*_rows` / `*_cols` are [pairs, seq, d] (d per side), `key_bias` and `row_weight`
    are [pairs, seq]. A `tf.while_loop` walks `chunk` pairs at a time; each step
    builds both sides' [chunk, seq, seq] relations, adds its rows' divergences to
    the total and, while the relations are at hand, the gradient with respect to
    the student's rows and columns: with z = scale * rows cols^T + key_bias,
    d KL / d z = p_S - p_T on each row (the teacher's row sums to 1 over real keys),
    so d / d rows = (w (p_S - p_T) scale) cols and d / d cols = its transpose
    times rows. Only those [pairs, seq, d] gradients outlive a step, never a
    relation tensor; the custom gradient hands them back scaled by the upstream
    gradient. The teacher side gets no gradient.
    """

    @tf.custom_gradient
    def loss_and_gradient(rows: tf.Tensor, cols: tf.Tensor) -> tuple[tf.Tensor, Any]:
        pairs = tf.shape(rows)[0]
        num_chunks = (pairs + chunk - 1) // chunk
        padding = num_chunks * chunk - pairs

        def blocks(x: tf.Tensor) -> tf.Tensor:
            # [pairs, ...] -> [num_chunks, chunk, ...]; padded pairs have weight 0.
            x = tf.pad(x, [[0, padding]] + [[0, 0]] * (x.shape.rank - 1))
            return tf.reshape(x, tf.concat([[num_chunks, chunk], tf.shape(x)[1:]], 0))

        parts = [blocks(x) for x in (teacher_rows, teacher_cols, rows, cols, key_bias,
                                      row_weight)]

        def step(i, total, rows_grads, cols_grads):
            t_rows, t_cols, s_rows, s_cols, bias, weight = (p[i] for p in parts)
            bias = bias[:, tf.newaxis, :]
            p_t, log_t = _softmax_and_log(
                tf.matmul(t_rows, t_cols, transpose_b=True) * teacher_scale + bias)
            p_s, log_s = _softmax_and_log(
                tf.matmul(s_rows, s_cols, transpose_b=True) * student_scale + bias)
            row_kl = tf.reduce_sum(p_t * (log_t - log_s), axis=-1)  # [chunk, seq]
            total += tf.reduce_sum(row_kl * weight)
            logit_grad = (p_s - p_t) * (weight[:, :, tf.newaxis] * student_scale)
            rows_grads = rows_grads.write(i, tf.matmul(logit_grad, s_cols))
            cols_grads = cols_grads.write(i, tf.matmul(logit_grad, s_rows, transpose_a=True))
            return i + 1, total, rows_grads, cols_grads

        arrays = [tf.TensorArray(tf.float32, size=num_chunks) for _ in range(2)]
        _, total, rows_grads, cols_grads = tf.while_loop(
            lambda i, *_: i < num_chunks,
            step,
            (tf.constant(0), tf.constant(0.0, tf.float32), *arrays),
            parallel_iterations=1,  # one chunk's relations alive at a time
        )

        def unblock(grads: tf.TensorArray, like: tf.Tensor) -> tf.Tensor:
            stacked = grads.stack()
            return tf.reshape(stacked, tf.concat([[-1], tf.shape(like)[1:]], 0))[:pairs]

        rows_grad, cols_grad = unblock(rows_grads, rows), unblock(cols_grads, cols)

        def gradient(upstream: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return upstream * rows_grad, upstream * cols_grad

        return total, gradient

    return loss_and_gradient(student_rows, student_cols)


def _relation_kl_losses(
    teacher_qkv: Sequence[tf.Tensor],
    student_qkv: Sequence[tf.Tensor],
    attention_mask: tf.Tensor,
    num_heads: int,
    heads_name: str,
    pairs: Mapping[str, str],
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, tf.Tensor]:
    """Shared core: {output name: letter pair} -> {output name: scalar loss}."""
    _check_qkv(teacher_qkv, "teacher")
    _check_qkv(student_qkv, "student")
    check_chunk_bytes(chunk_bytes)

    mask = tf.convert_to_tensor(attention_mask)
    if mask.shape.rank is not None and mask.shape.rank != 2:
        raise ValueError(f"attention_mask must have shape [batch, seq], got shape {mask.shape}")
    real = tf.cast(mask, tf.float32) > 0.0  # [B, S] bool, built in float32 only
    real_f = tf.cast(real, tf.float32)

    needed = {letter for pair in pairs.values() for letter in pair}
    _check_static_shapes(teacher_qkv, student_qkv, mask, needed)

    # Per (example, head) pair: padded keys get a large finite negative on both sides;
    # each real row weighs 1 / (A x real length x batch), so the sum over pairs and rows
    # is the batch mean of the per-example losses (0 for an example without tokens).
    lengths = tf.reduce_sum(real_f, axis=1)  # [B]
    batch = tf.cast(tf.shape(mask)[0], tf.float32)
    example_weight = tf.where(
        lengths > 0.0, 1.0 / (tf.cast(num_heads, tf.float32) * tf.maximum(lengths, 1.0) * batch),
        0.0)
    key_bias = tf.repeat(tf.where(real, 0.0, MASK_VALUE), num_heads, axis=0)  # [B*A, S]
    row_weight = tf.repeat(real_f * example_weight[:, tf.newaxis], num_heads, axis=0)

    split = {}
    for side, qkv in (("teacher", teacher_qkv), ("student", student_qkv)):
        for letter in [c for c in QKV_LETTERS if c in needed]:
            split[side, letter] = _split_heads(
                qkv[QKV_LETTERS.index(letter)], num_heads, heads_name, side, letter
            )
    seq = mask.shape[1]
    flat_pairs = None if mask.shape[0] is None else mask.shape[0] * num_heads
    if seq is not None:
        chunk = relation_chunk_pairs(flat_pairs, seq, chunk_bytes)
    else:
        # relation_chunk_pairs' rule on a dynamic length: the most pairs that fit.
        dynamic_seq = tf.shape(mask)[1]
        chunk = tf.maximum(1, chunk_bytes // (4 * dynamic_seq * dynamic_seq))

    losses: dict[str, tf.Tensor] = {}
    for out_name, (a, b) in pairs.items():
        (t_a, t_scale), (t_b, _) = split["teacher", a], split["teacher", b]
        (s_a, s_scale), (s_b, _) = split["student", a], split["student", b]
        losses[out_name] = _chunked_relation_kl(
            t_a, t_b, t_scale, key_bias, row_weight, chunk, s_a, s_b, s_scale)
    return losses


def relation_losses(
    teacher_qkv: QKV,
    student_qkv: QKV,
    attention_mask: tf.Tensor,
    num_relation_heads: int,
    relations: Sequence[str] = DEFAULT_RELATIONS,
    chunk_bytes: int = CHUNK_BYTES,
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
        chunk_bytes: memory budget of one chunk's [pairs, seq, seq] float32
            relation tensor (see `relation_chunk_pairs`); it changes memory and
            speed, never the value beyond float rounding.

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
        chunk_bytes,
    )


def minilm_v2_loss(
    teacher_qkv: QKV,
    student_qkv: QKV,
    attention_mask: tf.Tensor,
    num_relation_heads: int,
    relations: Sequence[str] = DEFAULT_RELATIONS,
    chunk_bytes: int = CHUNK_BYTES,
) -> tf.Tensor:
    """MiniLMv2 loss: the sum of `relation_losses` (weight 1 each).

    Args:
        teacher_qkv: (q, k, v) of the teacher layer, each [batch, seq, hidden_T].
        student_qkv: (q, k, v) of the student layer, each [batch, seq, hidden_S].
        attention_mask: [batch, seq], 1 for real tokens, 0 for padding.
        num_relation_heads: A_r, relation heads on both sides.
        relations: relation names to sum, default ("qq", "kk", "vv").
        chunk_bytes: memory budget of one chunk's relation tensor.

    Returns:
        float32 scalar loss.
    """
    losses = relation_losses(
        teacher_qkv, student_qkv, attention_mask, num_relation_heads, relations, chunk_bytes
    )
    return tf.add_n(list(losses.values()))


def minilm_v1_losses(
    teacher_qkv: QKV,
    student_qkv: QKV,
    attention_mask: tf.Tensor,
    num_heads: int,
    chunk_bytes: int = CHUNK_BYTES,
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
        chunk_bytes: memory budget of one chunk's relation tensor.

    Returns:
        Dict with float32 scalars "attention" (KL between softmax(Q K^T / sqrt(d_k))
        distributions) and "value_relation" (the same for softmax(V V^T / sqrt(d_k))),
        each normalised per example by num_heads x real length, then averaged
        over the batch.
    """
    check_head_count(num_heads, "num_heads")
    return _relation_kl_losses(
        teacher_qkv, student_qkv, attention_mask, num_heads, "num_heads", V1_TERMS, chunk_bytes
    )


def minilm_v1_loss(
    teacher_qkv: QKV,
    student_qkv: QKV,
    attention_mask: tf.Tensor,
    num_heads: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> tf.Tensor:
    """MiniLM (v1) loss: attention-transfer loss + value-relation loss.

    Args:
        teacher_qkv: (q, k, v) of the teacher's last layer.
        student_qkv: (q, k, v) of the student's last layer.
        attention_mask: [batch, seq], 1 for real tokens, 0 for padding.
        num_heads: the attention-head count shared by teacher and student.
        chunk_bytes: memory budget of one chunk's relation tensor.

    Returns:
        float32 scalar loss.
    """
    losses = minilm_v1_losses(teacher_qkv, student_qkv, attention_mask, num_heads, chunk_bytes)
    return losses["attention"] + losses["value_relation"]
