"""Distiller: validation, which variables train, losses, fit/evaluate, clipping, saving."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from _multiworker_worker import (
    batch_for_step,
    eval_dataset,
    make_dataset,
    tiny_student,
    tiny_teacher,
)

from tests.keras_harness import run_serialization_test
from tf_minilm.distill import losses
from tf_minilm.distill.distiller import Distiller


@pytest.fixture(scope="module")
def teacher():
    keras.utils.set_random_seed(0)
    return tiny_teacher(0)


@pytest.fixture
def student(teacher):
    return tiny_student(teacher, 1)


def _qkv(encoder, batch, layer, training=False):
    return encoder(batch, training=training, qkv_layers=(layer,), stop_after_qkv=True)["qkv"][0]


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("layer", [0, 3, -1])
def test_teacher_layer_out_of_range_names_the_1_based_range(teacher, student, layer):
    with pytest.raises(ValueError, match=r"teacher_layer=.*1-based: 1\.\.2"):
        Distiller(teacher, student, teacher_layer=layer, num_relation_heads=4)


def test_student_layer_out_of_range(teacher, student):
    with pytest.raises(ValueError, match=r"student_layer=5 .*1\.\.2"):
        Distiller(teacher, student, student_layer=5, num_relation_heads=4)


def test_relation_heads_must_divide_each_hidden_size_and_the_error_names_which(teacher):
    student_24 = tiny_student(teacher, 1, hidden=24, heads=2)  # teacher 32, student 24
    with pytest.raises(ValueError, match="does not divide the student hidden size 24"):
        Distiller(teacher, student_24, num_relation_heads=16)
    student_48 = tiny_student(teacher, 1, hidden=48, heads=2)
    with pytest.raises(ValueError, match="does not divide the teacher hidden size 32"):
        Distiller(teacher, student_48, num_relation_heads=3)
    Distiller(teacher, student_24, num_relation_heads=8)  # 32/8 and 24/8 are fine


def test_minilm_v1_needs_equal_heads(teacher, student):
    with pytest.raises(ValueError, match="equal attention-head counts.*teacher 4 heads.*student 2"):
        Distiller(teacher, student, method="minilm")


def test_unknown_method_relations_and_types(teacher, student):
    with pytest.raises(ValueError, match="unknown method 'minilm3'"):
        Distiller(teacher, student, method="minilm3")
    with pytest.raises(ValueError, match="bad relation name 'qx'"):
        Distiller(teacher, student, num_relation_heads=4, relations=("qq", "qx"))
    with pytest.raises(ValueError, match="single string|list of names"):
        Distiller(teacher, student, num_relation_heads=4, relations="qq")
    with pytest.raises(ValueError, match="twice"):
        Distiller(teacher, student, num_relation_heads=4, relations=("qq", "qq"))
    with pytest.raises(TypeError, match="student must be a tf_minilm Encoder"):
        Distiller(teacher, keras.Sequential(), num_relation_heads=4)
    with pytest.raises(ValueError, match="clipnorm"):
        Distiller(teacher, student, num_relation_heads=4, clipnorm=-1.0)


# ------------------------------------------------------------------------ what trains
def _gradient_pattern(distiller, student):
    with tf.GradientTape() as tape:
        loss = distiller.compute_losses(batch_for_step(0), training=True)["loss"]
    grads = tape.gradient(loss, student.trainable_weights)
    return {v.path for v, g in zip(student.trainable_weights, grads, strict=True) if g is not None}


@pytest.mark.parametrize(
    ("relations", "last_projections"),
    [(("qq", "kk", "vv"), {"query", "key", "value"}), (("qq",), {"query"}), (("kv",), {"key", "value"})],
)
def test_trainable_weights_are_exactly_the_variables_with_a_gradient(
    teacher, student, relations, last_projections
):
    distiller = Distiller(teacher, student, num_relation_heads=4, relations=relations)
    with_gradient = _gradient_pattern(distiller, student)
    assert {v.path for v in distiller.trainable_weights} == with_gradient
    assert {v.path for v in distiller.trainable_variables} == with_gradient
    last = student.blocks[-1]
    projections = {name for name in ("query", "key", "value")
                   if getattr(last.attention, name).kernel.path in with_gradient}
    assert projections == last_projections
    for layer in (last.attention_output, last.intermediate, last.output_dense,
                  last.attention_layer_norm, last.output_layer_norm, student.pooler):
        assert not {v.path for v in layer.weights} & with_gradient
    # everything before the last block trains, embeddings included
    assert {v.path for v in student.blocks[0].weights} <= with_gradient
    assert student.embeddings.word_embeddings.path in with_gradient
    assert not {v.path for v in teacher.weights} & with_gradient


def test_earlier_student_layer_leaves_later_layers_out(teacher, student):
    distiller = Distiller(teacher, student, student_layer=1, num_relation_heads=4)
    assert {v.path for v in distiller.trainable_weights} == _gradient_pattern(distiller, student)
    assert not {v.path for v in student.blocks[1].weights} & {
        v.path for v in distiller.trainable_weights}


def test_teacher_is_frozen_and_runs_without_dropout(teacher, student):
    distiller = Distiller(teacher, student, num_relation_heads=4)
    assert teacher.trainable is False
    batch = batch_for_step(3)
    t1, s1 = distiller._qkv(batch, training=True)
    t2, s2 = distiller._qkv(batch, training=True)
    for a, b in zip(t1, t2, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # the student does use dropout in training (dropout 0.1 in the tiny config)
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(s1, s2, strict=True))


# ----------------------------------------------------------------------------- losses
def test_v2_losses_equal_the_loss_functions_on_the_chosen_layers(teacher, student):
    distiller = Distiller(teacher, student, teacher_layer=1, num_relation_heads=8,
                          relations=("qq", "kv"))
    batch = batch_for_step(5)
    got = distiller(batch)
    expected = losses.relation_losses(_qkv(teacher, batch, 1), _qkv(student, batch, 2),
                                      batch["attention_mask"], 8, ("qq", "kv"))
    assert sorted(got) == ["loss", "loss_kv", "loss_qq"]
    for name in ("qq", "kv"):
        np.testing.assert_allclose(got[f"loss_{name}"].numpy(), expected[name].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["loss"].numpy(),
                               expected["qq"].numpy() + expected["kv"].numpy(), rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_a_train_step_does_not_depend_on_the_relation_chunk(teacher, jit):
    """One pair per chunk and everything at once: same loss, same updated student."""
    results = []
    for chunk_bytes in (4, 10**9):
        student = tiny_student(teacher, 1)
        distiller = Distiller(teacher, student, num_relation_heads=8, clipnorm=1.0,
                              relation_chunk_bytes=chunk_bytes)
        # SGD: the update is the gradient itself (Adam would blow up rounding in tiny ones).
        distiller.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=jit)
        logs = distiller.train_on_batch(batch_for_step(3), return_dict=True)
        results.append((logs["loss"], [w.numpy() for w in student.trainable_weights]))
    (loss_a, weights_a), (loss_b, weights_b) = results
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_v1_losses_and_metric_names(teacher):
    student = tiny_student(teacher, 2, hidden=16, heads=4)
    distiller = Distiller(teacher, student, method="minilm")
    batch = batch_for_step(1)
    got = distiller(batch)
    expected = losses.minilm_v1_losses(_qkv(teacher, batch, 2), _qkv(student, batch, 2),
                                       batch["attention_mask"], 4)
    np.testing.assert_allclose(got["loss_attention"].numpy(), expected["attention"].numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(got["loss_value_relation"].numpy(),
                               expected["value_relation"].numpy(), rtol=1e-6)
    distiller.compile(optimizer=keras.optimizers.AdamW(1e-3))
    history = distiller.fit(make_dataset(0), steps_per_epoch=3, verbose=0, shuffle=False)
    assert set(history.history) == {"loss", "loss_attention", "loss_value_relation"}


def test_missing_inputs_are_a_clear_error(teacher, student):
    distiller = Distiller(teacher, student, num_relation_heads=4)
    with pytest.raises(ValueError, match="'input_ids' and 'attention_mask'"):
        distiller({"input_ids": tf.ones((2, 4), tf.int32)})


# ------------------------------------------------------------------------- training
def test_fit_learns_and_beats_a_random_student_on_held_out_batches(teacher):
    keras.utils.set_random_seed(7)
    student = tiny_student(teacher, 1)
    random_student = tiny_student(teacher, 1)
    distiller = Distiller(teacher, student, num_relation_heads=4)
    distiller.compile(optimizer=keras.optimizers.AdamW(3e-3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = distiller.fit(make_dataset(0, seed=3), epochs=3, steps_per_epoch=100,
                                verbose=0, shuffle=False)
    assert not [w for w in caught if "radient" in str(w.message)], [str(w.message) for w in caught]
    assert set(history.history) == {"loss", "loss_qq", "loss_kk", "loss_vv"}
    first, last = history.history["loss"][0], history.history["loss"][-1]
    assert last < 0.6 * first, history.history["loss"]

    held_out = eval_dataset()
    trained = distiller.evaluate(held_out, verbose=0, return_dict=True)
    baseline = Distiller(teacher, random_student, num_relation_heads=4)
    baseline.compile()
    untrained = baseline.evaluate(held_out, verbose=0, return_dict=True)
    assert trained["loss"] < 0.3 * untrained["loss"], (trained, untrained)
    for name in ("loss_qq", "loss_kk", "loss_vv"):
        assert trained[name] < untrained[name]


def test_teacher_and_unconnected_student_weights_do_not_change(teacher, student):
    before_teacher = [v.numpy() for v in teacher.weights]
    pooler = student.pooler.kernel.numpy()
    ffn = student.blocks[-1].intermediate.kernel.numpy()
    distiller = Distiller(teacher, student, num_relation_heads=4)
    distiller.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.0))
    distiller.fit(make_dataset(0), steps_per_epoch=3, verbose=0, shuffle=False)
    for v, b in zip(teacher.weights, before_teacher, strict=True):
        np.testing.assert_array_equal(v.numpy(), b)
    np.testing.assert_array_equal(student.pooler.kernel.numpy(), pooler)
    np.testing.assert_array_equal(student.blocks[-1].intermediate.kernel.numpy(), ffn)
    assert not np.array_equal(student.blocks[0].attention.query.kernel.numpy(),
                              tiny_student(teacher, 1).blocks[0].attention.query.kernel.numpy())


def _sgd_step(teacher, clipnorm):
    """One SGD(lr=1) step through fit; returns (delta of each trainable weight, dense grads)."""
    student = tiny_student(teacher, 4)
    distiller = Distiller(teacher, student, num_relation_heads=4, clipnorm=clipnorm)
    batch = batch_for_step(2)
    with tf.GradientTape() as tape:
        loss = distiller.compute_losses(batch, training=True)["loss"]
    grads = [tf.convert_to_tensor(g).numpy()
             for g in tape.gradient(loss, distiller.trainable_weights)]
    before = [v.numpy() for v in distiller.trainable_weights]
    distiller.compile(optimizer=keras.optimizers.SGD(1.0))
    distiller.fit(tf.data.Dataset.from_tensors(batch), steps_per_epoch=1, verbose=0,
                  shuffle=False)
    deltas = [v.numpy() - b for v, b in zip(distiller.trainable_weights, before, strict=True)]
    return deltas, grads


def test_clipnorm_scales_the_global_gradient_and_embedding_rows_sum():
    teacher = tiny_teacher(0, dropout=0.0)
    deltas, grads = _sgd_step(teacher, clipnorm=None)
    for delta, grad in zip(deltas, grads, strict=True):  # plain SGD: w -= g (dense sums)
        np.testing.assert_allclose(delta, -grad, atol=1e-6)
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    clip = norm / 4
    deltas, grads = _sgd_step(teacher, clipnorm=clip)
    for delta, grad in zip(deltas, grads, strict=True):
        np.testing.assert_allclose(delta, -grad * (clip / norm), atol=1e-6)
    deltas, _ = _sgd_step(teacher, clipnorm=norm * 10)  # inactive above the norm
    for delta, grad in zip(deltas, grads, strict=True):
        np.testing.assert_allclose(delta, -grad, atol=1e-6)


def test_adamw_first_step_is_bounded_by_the_learning_rate_for_embeddings(teacher):
    # Regression: sparse (IndexedSlices) embedding gradients with repeated ids made
    # Keras Adam step by more than lr; the distiller densifies them.
    student = tiny_student(teacher, 1)
    before = [v.numpy() for v in student.weights]
    distiller = Distiller(teacher, student, num_relation_heads=4)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    distiller.fit(tf.data.Dataset.from_tensors(batch_for_step(0)), steps_per_epoch=1, verbose=0,
                  shuffle=False)
    moved = max(float(np.max(np.abs(v.numpy() - b)))
                for v, b in zip(student.weights, before, strict=True))
    assert 0.005 < moved <= 1e-2 * 1.001


# ---------------------------------------------------------------------- serialisation
def test_get_config_from_config_round_trip(teacher, student):
    distiller = Distiller(teacher, student, method="minilmv2", teacher_layer=1,
                          num_relation_heads=8, relations=("kk", "vq"), clipnorm=0.5)
    clone = run_serialization_test(distiller)  # the shared harness: config round trip
    for name in ("method", "teacher_layer", "student_layer", "num_relation_heads",
                 "relations", "relation_chunk_bytes", "clipnorm", "term_names"):
        assert getattr(clone, name) == getattr(distiller, name), name
    assert clone.student.config == student.config
    assert clone.teacher.config == teacher.config


def test_keras_file_round_trip_keeps_weights_optimizer_and_losses(teacher, tmp_path):
    student = tiny_student(teacher, 1)
    distiller = Distiller(teacher, student, num_relation_heads=4, relations=("qq", "vv"),
                          clipnorm=1.0)
    distiller.compile(optimizer=keras.optimizers.AdamW(1e-3))
    distiller.fit(make_dataset(0), steps_per_epoch=2, verbose=0, shuffle=False)
    path = str(tmp_path / "distiller.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distiller.save(path)
        loaded = keras.saving.load_model(path)
    assert not [w for w in caught if "Skipping" in str(w.message) or "compile" in str(w.message)]
    assert isinstance(loaded, Distiller)
    assert loaded.relations == ("qq", "vv") and loaded.clipnorm == 1.0
    assert loaded.teacher.trainable is False
    for a, b in zip(distiller.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert len(loaded.optimizer.variables) == len(distiller.optimizer.variables)
    for a, b in zip(distiller.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))
    batch = batch_for_step(9)
    np.testing.assert_allclose(loaded(batch)["loss"].numpy(), distiller(batch)["loss"].numpy(),
                               rtol=1e-6)
