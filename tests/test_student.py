"""Student construction: sizes, shared vocabulary, random and teacher-layer initialisation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_minilm.model.config import ConfigError, EncoderConfig
from tf_minilm.model.encoder import Encoder
from tf_minilm.model.student import build_student

TEACHER = EncoderConfig(vocab_size=90, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=24)


@pytest.fixture(scope="module")
def teacher():
    keras.utils.set_random_seed(3)
    return Encoder(TEACHER)


def test_sizes_vocabulary_and_default_ffn(teacher):
    student = build_student(teacher, num_layers=2, hidden_size=16, num_heads=2, seed=0)
    config = student.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 16, 2)
    assert config.intermediate_size == 64  # 4 x hidden, not the teacher's FFN width
    assert config.vocab_size == TEACHER.vocab_size
    assert config.max_position_embeddings == TEACHER.max_position_embeddings
    assert student.count_params() < teacher.count_params()


def test_random_init_statistics_and_seed(teacher):
    a = build_student(teacher, num_layers=2, hidden_size=32, num_heads=4, seed=7)
    b = build_student(teacher, num_layers=2, hidden_size=32, num_heads=4, seed=7)
    kernel = a.blocks[0].intermediate.kernel.numpy()
    assert abs(kernel.std() - TEACHER.initializer_range) < 0.003
    np.testing.assert_array_equal(a.blocks[0].intermediate.bias.numpy(), 0.0)
    np.testing.assert_array_equal(a.blocks[1].output_layer_norm.gamma.numpy(), 1.0)
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_teacher_layer_init_copies_chosen_blocks(teacher):
    student = build_student(teacher, num_layers=2, hidden_size=32, num_heads=4,
                            intermediate_size=128, init="teacher-layers", teacher_layers=(1, 3))
    np.testing.assert_array_equal(student.embeddings.word_embeddings.numpy(),
                                  teacher.embeddings.word_embeddings.numpy())
    for mine, theirs in ((student.blocks[0], teacher.blocks[0]), (student.blocks[1], teacher.blocks[2])):
        for x, y in zip(mine.weights, theirs.weights, strict=True):
            np.testing.assert_array_equal(x.numpy(), y.numpy())
    # With the first k layers copied, the student's layer-k Q/K/V equal the teacher's.
    first_two = build_student(teacher, num_layers=2, hidden_size=32, num_heads=4,
                              intermediate_size=128, init="teacher-layers")
    ids = np.arange(1, 11, dtype="int32")[None, :]
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    s = first_two(batch, qkv_layers=(2,), stop_after_qkv=True)["qkv"][0]
    t = teacher(batch, qkv_layers=(2,), stop_after_qkv=True)["qkv"][0]
    for x, y in zip(s, t, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_teacher_layer_init_errors(teacher):
    with pytest.raises(ConfigError, match=r"'hidden_size' \(16\) to equal the teacher's \(32\)"):
        build_student(teacher, num_layers=2, hidden_size=16, num_heads=4, init="teacher-layers")
    with pytest.raises(ConfigError, match=r"'intermediate_size' \(64\)"):
        build_student(teacher, num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64,
                      init="teacher-layers")
    with pytest.raises(ConfigError, match=r"got 1 teacher layer\(s\) \[2\] for a student with 2"):
        build_student(teacher, num_layers=2, hidden_size=32, num_heads=4, intermediate_size=128,
                      init="teacher-layers", teacher_layers=(2,))
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        build_student(teacher, num_layers=2, hidden_size=32, num_heads=4, intermediate_size=128,
                      init="teacher-layers", teacher_layers=(1, 5))
    with pytest.raises(ConfigError, match="--init is 'copy'"):
        build_student(teacher, num_layers=2, hidden_size=32, num_heads=4, init="copy")
    with pytest.raises(ConfigError, match=r"'num_attention_heads' \(4\) does not divide "
                                          r"field 'hidden_size' \(30\)"):
        build_student(teacher, num_layers=2, hidden_size=30, num_heads=4)


def test_student_keras_round_trip(teacher, tmp_path):
    student = build_student(teacher, num_layers=2, hidden_size=16, num_heads=2, seed=1)
    path = tmp_path / "student.keras"
    student.save(path)
    restored = keras.saving.load_model(path)
    ids = np.array([[2, 9, 14, 33, 3, 0, 0]], dtype="int32")
    batch = {"input_ids": ids, "attention_mask": (ids > 0).astype("int32")}
    np.testing.assert_array_equal(student(batch)["last_hidden_state"].numpy(),
                                  restored(batch)["last_hidden_state"].numpy())
