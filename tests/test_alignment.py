"""Output-alignment losses against a NumPy oracle, and the distiller's use of them."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from _multiworker_worker import batch_for_step, tiny_student, tiny_teacher

from tf_minilm.distill import alignment
from tf_minilm.distill.distiller import Distiller
from tf_minilm.model.pooling import PoolingSpec


def oracle_embedding(hidden, mask, mode="mean", normalize=True):
    """Loop-by-loop sentence embeddings, independent of tf_minilm.model.pooling."""
    out = []
    for b in range(hidden.shape[0]):
        if mode == "cls":
            vector = hidden[b, 0].astype(np.float64)
        else:
            rows = [hidden[b, t] for t in range(hidden.shape[1]) if mask[b, t] > 0]
            vector = np.mean(rows, axis=0) if rows else np.zeros(hidden.shape[2])
        if normalize:
            vector = vector / max(np.sqrt(np.sum(vector ** 2)), 1e-12)
        out.append(vector)
    return np.array(out)


def oracle_hidden_mse(teacher, student, mask):
    per_example = []
    for b in range(teacher.shape[0]):
        errors = [np.mean((teacher[b, t] - student[b, t]) ** 2)
                  for t in range(teacher.shape[1]) if mask[b, t] > 0]
        per_example.append(np.mean(errors) if errors else 0.0)
    return float(np.mean(per_example))


def ragged_mask():
    return np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0],
                     [1, 1, 1, 1, 1, 0]], np.int32)


def test_losses_match_the_oracle_with_padding():
    rng = np.random.default_rng(0)
    mask = ragged_mask()
    teacher = rng.normal(size=(4, 6, 8)).astype(np.float32)
    student = rng.normal(size=(4, 6, 8)).astype(np.float32)
    # padded positions hold garbage that must not count
    student[mask == 0] = 1e3
    e_t, e_s = oracle_embedding(teacher, mask), oracle_embedding(student, mask)
    assert float(alignment.embedding_mse(e_t, e_s)) == pytest.approx(np.mean((e_t - e_s) ** 2),
                                                                     rel=1e-5)
    cosine = np.mean([1 - a @ b / np.linalg.norm(a) / max(np.linalg.norm(b), 1e-12)
                      for a, b in zip(e_t, e_s, strict=True) if np.linalg.norm(b) > 0]
                     + [1.0])  # the all-padding row embeds to zeros: cosine 0
    assert float(alignment.embedding_cosine(e_t, e_s)) == pytest.approx(cosine, rel=1e-5)
    assert float(alignment.hidden_mse(teacher, student, mask)) == pytest.approx(
        oracle_hidden_mse(teacher, student, mask), rel=1e-5)
    # float16 / bfloat16 inputs are computed in float32
    half = alignment.hidden_mse(tf.constant(teacher, tf.bfloat16), tf.constant(student,
                                tf.bfloat16), mask)
    assert half.dtype == tf.float32
    with pytest.raises(ValueError, match="project the student"):
        alignment.hidden_mse(teacher, student[..., :4], mask)


@pytest.mark.parametrize("mode", ["mean", "cls"])
def test_distiller_terms_with_different_widths_match_the_oracle(mode):
    teacher = tiny_teacher(0)
    student = tiny_student(teacher, 1)  # 16 wide, the teacher 32: a projection is needed
    distiller = Distiller(teacher, student, objective="embedding_mse + 0.5*hidden_mse",
                          pooling=PoolingSpec(mode, normalize=True))
    assert distiller.projection is not None
    batch = {k: v.numpy() for k, v in batch_for_step(3).items()}
    values = {k: float(v) for k, v in distiller(batch).items()}
    mask = batch["attention_mask"]
    t_hidden = teacher(batch, training=False)["last_hidden_state"].numpy()
    s_hidden = student(batch, training=False)["last_hidden_state"].numpy()
    kernel, bias = (w.numpy() for w in distiller.projection.weights)
    projected = s_hidden @ kernel + bias
    e_t = oracle_embedding(t_hidden, mask, mode)
    e_s = oracle_embedding(projected, mask, mode)
    assert values["loss_embedding_mse"] == pytest.approx(np.mean((e_t - e_s) ** 2), rel=1e-4)
    assert values["loss_hidden_mse"] == pytest.approx(
        oracle_hidden_mse(t_hidden, projected, mask), rel=1e-4)
    assert values["loss"] == pytest.approx(
        values["loss_embedding_mse"] + 0.5 * values["loss_hidden_mse"], rel=1e-5)


def test_alignment_trains_every_student_weight_but_the_pooler():
    teacher = tiny_teacher(0)
    student = tiny_student(teacher, 1)
    relations = Distiller(teacher, student, num_relation_heads=4)
    aligned = Distiller(teacher, student, objective="embedding_mse", num_relation_heads=4)
    student_paths = {v.path for v in student.trainable_weights}
    pooler = {v.path for v in student.pooler.trainable_weights}
    aligned_paths = {v.path for v in aligned.trainable_weights}
    assert aligned_paths >= student_paths - pooler and not aligned_paths & pooler
    assert {v.path for v in aligned.projection.trainable_weights} <= aligned_paths
    assert {v.path for v in relations.trainable_weights} < aligned_paths
    # every listed variable really gets a gradient
    batch = batch_for_step(0)
    with tf.GradientTape() as tape:
        loss = aligned.compute_losses(batch, training=True)["loss"]
    gradients = tape.gradient(loss, aligned.trainable_weights)
    assert all(g is not None for g in gradients)
    # a zero-weight alignment term trains nothing beyond the relation path
    zero = Distiller(teacher, student, objective="minilmv2 + 0*embedding_mse",
                     num_relation_heads=4)
    assert {v.path for v in zero.trainable_weights} == {v.path for v in
                                                        relations.trainable_weights}
    assert "loss_embedding_mse" in zero(batch)


def test_stages_switch_objective_and_trainable_set():
    teacher = tiny_teacher(0)
    student = tiny_student(teacher, 1)
    distiller = Distiller(teacher, student, stage_objectives=["minilmv2", "embedding_mse"],
                          num_relation_heads=4)
    first = {v.path for v in distiller.trainable_weights}
    distiller.set_stage(1)
    second = {v.path for v in distiller.trainable_weights}
    assert first < second and {v.path for v in distiller.all_stage_variables} == second
    assert sorted(distiller(batch_for_step(0))) == ["loss", "loss_embedding_mse"]
    with pytest.raises(ValueError, match="stage 2 does not exist"):
        distiller.set_stage(2)
    with pytest.raises(ValueError, match="mix relation methods"):
        Distiller(teacher, student, stage_objectives=["minilmv2", "minilm"])
    with pytest.raises(ValueError, match="unknown loss term"):
        Distiller(teacher, student, objective="embedding")


def test_distiller_with_objective_round_trips_through_keras(tmp_path):
    teacher = tiny_teacher(0)
    student = tiny_student(teacher, 1)
    distiller = Distiller(teacher, student, stage_objectives=["minilmv2", "hidden_mse"],
                          pooling=PoolingSpec("cls", normalize=False), num_relation_heads=4)
    restored = Distiller.from_config(distiller.get_config())
    assert restored.stage_objectives == distiller.stage_objectives
    assert restored.pooling == PoolingSpec("cls", normalize=False)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.stage_objectives == distiller.stage_objectives
    for a, b in zip(distiller.projection.weights, loaded.projection.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
