"""Output-alignment losses: the student's sentence embedding and hidden states vs the teacher's.

Owns: the alignment terms' math. Imports: TensorFlow only.

Pure tensor functions (float32 whatever the input dtype), as `tf_minilm.distill.losses` is for
the relation losses. The math, with B examples, real-token mask m[b, t] and width H:

    embedding_mse(e_T, e_S)    = 1/(B*H) * sum_b ||e_T[b] - e_S[b]||^2
                                 (torch.nn.MSELoss, what sentence-transformers'
                                 distillation recipe minimises)
    embedding_cosine(e_T, e_S) = 1/B * sum_b (1 - cos(e_T[b], e_S[b]))
    hidden_mse(h_T, h_S, m)    = 1/B * sum_b [ 1/(H*n_b) * sum_{t real} ||h_T[b,t] - h_S[b,t]||^2 ]
                                 (n_b real tokens; an example without any contributes 0)

e_T and e_S are sentence embeddings produced by `tf_minilm.model.pooling.sentence_embedding`
(the teacher's pooling and normalisation applied to both models). When the widths
differ, the student side is first mapped to the teacher's width by a learned linear
projection that lives in the `Distiller` (training only).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def _float32(*tensors: Any) -> list[tf.Tensor]:
    return [tf.cast(tensor, tf.float32) for tensor in tensors]


def _check_same_shape(teacher: tf.Tensor, student: tf.Tensor, what: str) -> None:
    if teacher.shape.rank is not None and student.shape.rank is not None \
            and not teacher.shape.is_compatible_with(student.shape):
        raise ValueError(
            f"{what}: teacher shape {teacher.shape} and student shape {student.shape} differ "
            "(project the student to the teacher's width first)")


def embedding_mse(teacher_embedding: Any, student_embedding: Any) -> tf.Tensor:
    """Mean squared error over batch and dimensions of two [batch, hidden] embeddings.

    Args:
        teacher_embedding: [batch, hidden] teacher sentence embeddings.
        student_embedding: [batch, hidden] student embeddings (projected to the
            teacher's width if needed).

    Returns:
        float32 scalar.
    """
    teacher, student = _float32(teacher_embedding, student_embedding)
    _check_same_shape(teacher, student, "embedding_mse")
    return tf.reduce_mean(tf.square(teacher - student))


def embedding_cosine(teacher_embedding: Any, student_embedding: Any) -> tf.Tensor:
    """Batch mean of 1 - cosine similarity between two [batch, hidden] embeddings.

    Args:
        teacher_embedding: [batch, hidden].
        student_embedding: [batch, hidden].

    Returns:
        float32 scalar in [0, 2].
    """
    teacher, student = _float32(teacher_embedding, student_embedding)
    _check_same_shape(teacher, student, "embedding_cosine")
    teacher = tf.math.l2_normalize(teacher, axis=-1, epsilon=1e-12)
    student = tf.math.l2_normalize(student, axis=-1, epsilon=1e-12)
    return tf.reduce_mean(1.0 - tf.reduce_sum(teacher * student, axis=-1))


def hidden_mse(teacher_hidden: Any, student_hidden: Any, attention_mask: Any) -> tf.Tensor:
    """Per-example mean squared error over real tokens and dimensions, averaged over the batch.

    Args:
        teacher_hidden: [batch, seq, hidden] teacher last hidden states.
        student_hidden: [batch, seq, hidden] student last hidden states (projected).
        attention_mask: [batch, seq], 1 for real tokens, 0 for padding.

    Returns:
        float32 scalar; padded positions contribute nothing and an example with no real
        token contributes 0.
    """
    teacher, student, mask = _float32(teacher_hidden, student_hidden, attention_mask)
    _check_same_shape(teacher, student, "hidden_mse")
    real = tf.cast(mask > 0.0, tf.float32)
    per_token = tf.reduce_mean(tf.square(teacher - student), axis=-1)  # [B, S]
    lengths = tf.reduce_sum(real, axis=1)
    total = tf.reduce_sum(per_token * real, axis=1)
    per_example = tf.where(lengths > 0.0, total / tf.maximum(lengths, 1.0), 0.0)
    return tf.reduce_mean(per_example)
