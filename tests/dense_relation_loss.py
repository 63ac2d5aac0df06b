"""The relation loss as it was before chunking: every [batch, heads, seq, seq] tensor at once.

Owns: a reference for tests and `benchmarks/distill_step.py` (value, gradient, memory)
that the chunked `tf_minilm.distill.losses` must match. TensorFlow's own autodiff gives
its gradient, so it is independent of the chunked loss's hand-written one.
Imports: TensorFlow.
"""

from __future__ import annotations

import math

import tensorflow as tf

MASK_VALUE = -1e9


def _split(x: tf.Tensor, heads: int) -> tuple[tf.Tensor, float]:
    x = tf.cast(x, tf.float32)
    batch, seq, hidden = x.shape
    d = hidden // heads
    x = tf.reshape(x, [-1, tf.shape(x)[1], heads, d])
    return tf.transpose(x, [0, 2, 1, 3]), 1.0 / math.sqrt(d)


def dense_relation_losses(teacher_qkv, student_qkv, attention_mask, heads: int,
                          pairs: dict[str, str]) -> dict[str, tf.Tensor]:
    """{name: letter pair} -> batch-mean KL(teacher || student) per relation, float32."""
    letters = "qkv"
    real = tf.cast(attention_mask, tf.float32) > 0.0
    real_f = tf.cast(real, tf.float32)
    key_bias = tf.where(real, 0.0, MASK_VALUE)[:, None, None, :]
    cell_mask = real_f[:, None, :, None] * real_f[:, None, None, :]
    lengths = tf.reduce_sum(real_f, axis=1)
    has_tokens = lengths > 0.0
    denom = tf.where(has_tokens, heads * lengths, 1.0)
    out = {}
    for name, (a, b) in pairs.items():
        logs = []
        for qkv in (teacher_qkv, student_qkv):
            (x, scale), (y, _) = _split(qkv[letters.index(a)], heads), _split(
                qkv[letters.index(b)], heads)
            scores = tf.matmul(x, y, transpose_b=True) * scale + key_bias
            logs.append(tf.nn.log_softmax(scores, axis=-1))
        log_t, log_s = logs
        cell_kl = tf.exp(log_t) * (log_t - log_s) * cell_mask
        per_example = tf.reduce_sum(cell_kl, axis=[1, 2, 3]) / denom
        out[name] = tf.reduce_mean(tf.where(has_tokens, per_example, 0.0))
    return out
