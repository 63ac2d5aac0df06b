"""Width pruning (`tf_minilm.model.prune`): the kept slices are exactly the teacher's, a
student with nothing pruned is the teacher, and pruning what contributes nothing changes
nothing; the scores rank a silenced head or neuron last; bad sizes are refused by name."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_minilm.model.config import ConfigError, EncoderConfig
from tf_minilm.model.encoder import Encoder
from tf_minilm.model.prune import (
    PruningPlan,
    WidthImportance,
    check_prunable,
    measure_importance,
    prune_into,
)
from tf_minilm.model.student import build_student, student_config

TEACHER = EncoderConfig(vocab_size=60, hidden_size=16, num_hidden_layers=3,
                        num_attention_heads=4, intermediate_size=32, max_position_embeddings=24,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
MPNET = EncoderConfig(model_type="mpnet", vocab_size=60, hidden_size=16, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=32, max_position_embeddings=26,
                      pad_token_id=1, relative_attention_num_buckets=8, type_vocab_size=0,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def batches(seed: int = 0, count: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ids = rng.integers(5, 60, (4, 10)).astype("int32")
        mask = np.ones_like(ids)
        mask[1, 7:] = 0
        ids[1, 7:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return out


def teacher_of(config: EncoderConfig = TEACHER, seed: int = 0) -> Encoder:
    keras.utils.set_random_seed(seed)
    return Encoder(config, name="teacher")


def run(model: Encoder, batch: dict) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(batch, training=False)["last_hidden_state"])


def test_nothing_pruned_is_the_teacher():
    teacher = teacher_of()
    student = build_student(teacher, num_layers=3, hidden_size=16, num_heads=4,
                            intermediate_size=32, init="prune", teacher_layers=(1, 2, 3),
                            calibration=batches())
    for batch in batches(1):
        np.testing.assert_array_equal(run(student, batch), run(teacher, batch))
    assert student.pruning_plan.summary() == {"teacher_layers": [1, 2, 3], "hidden": 16,
                                              "heads": [[0, 1, 2, 3]] * 3,
                                              "intermediate": [32, 32, 32]}


def test_the_kept_slices_are_exactly_the_teachers():
    teacher = teacher_of()
    config = student_config(TEACHER, 2, 8, 2, 12)
    plan = PruningPlan(teacher_layers=(1, 3), channels=(0, 2, 3, 5, 8, 9, 12, 15),
                       heads=((1, 3), (0, 2)), neurons=(tuple(range(0, 24, 2)),
                                                        tuple(range(12, 24))))
    student = Encoder(config, name="student")
    prune_into(student, teacher, plan)
    rows = np.asarray(plan.channels)
    value = keras.ops.convert_to_numpy
    np.testing.assert_array_equal(value(student.embeddings.word_embeddings),
                                  value(teacher.embeddings.word_embeddings)[:, rows])
    np.testing.assert_array_equal(value(student.embeddings.layer_norm.gamma),
                                  value(teacher.embeddings.layer_norm.gamma)[rows])
    for block, layer, heads, neurons in zip(student.blocks, plan.teacher_layers, plan.heads,
                                            plan.neurons, strict=True):
        source = teacher.blocks[layer - 1]
        cols = np.concatenate([np.arange(h * 4, h * 4 + 4) for h in heads])
        np.testing.assert_array_equal(value(block.attention.key.kernel),
                                      value(source.attention.key.kernel)[rows][:, cols])
        np.testing.assert_array_equal(value(block.attention_output.kernel),
                                      value(source.attention_output.kernel)[cols][:, rows])
        np.testing.assert_array_equal(value(block.intermediate.bias),
                                      value(source.intermediate.bias)[list(neurons)])
        np.testing.assert_array_equal(value(block.output_dense.kernel),
                                      value(source.output_dense.kernel)[list(neurons)][:, rows])
        np.testing.assert_array_equal(value(block.output_layer_norm.beta),
                                      value(source.output_layer_norm.beta)[rows])
    np.testing.assert_array_equal(value(student.pooler.kernel),
                                  value(teacher.pooler.kernel)[rows][:, rows])


def silence(teacher: Encoder, layer: int, head: int | None = None,
            neurons: tuple[int, ...] = ()) -> None:
    """Make a head's output and some FFN neurons contribute nothing to a layer."""
    block = teacher.blocks[layer - 1]
    if head is not None:
        kernel = keras.ops.convert_to_numpy(block.attention_output.kernel).copy()
        kernel[head * 4:(head + 1) * 4] = 0
        block.attention_output.kernel.assign(kernel)
        for name in ("value",):
            dense = getattr(block.attention, name)
            k = keras.ops.convert_to_numpy(dense.kernel).copy()
            b = keras.ops.convert_to_numpy(dense.bias).copy()
            k[:, head * 4:(head + 1) * 4] = 0
            b[head * 4:(head + 1) * 4] = 0
            dense.kernel.assign(k)
            dense.bias.assign(b)
    if neurons:
        kernel = keras.ops.convert_to_numpy(block.intermediate.kernel).copy()
        bias = keras.ops.convert_to_numpy(block.intermediate.bias).copy()
        kernel[:, list(neurons)] = 0
        bias[list(neurons)] = 0  # GELU(0) = 0: these neurons add nothing
        block.intermediate.kernel.assign(kernel)
        block.intermediate.bias.assign(bias)


def test_pruning_what_contributes_nothing_changes_nothing():
    """Every channel and head kept, the FFN neurons the teacher silenced dropped: the
    student gives the teacher's outputs (to float rounding: the sums skip zero terms)."""
    teacher = teacher_of()
    silence(teacher, 1, neurons=(3, 7, 30))
    silence(teacher, 2, neurons=(10, 11, 12))
    silence(teacher, 3, neurons=(0, 1, 2))
    student = build_student(teacher, num_layers=3, hidden_size=16, num_heads=4,
                            intermediate_size=29, init="prune", teacher_layers=(1, 2, 3),
                            calibration=batches())
    kept = student.pruning_plan.neurons
    assert not {3, 7, 30} & set(kept[0]) and not {10, 11, 12} & set(kept[1])
    assert not {0, 1, 2} & set(kept[2])
    for batch in batches(1):
        np.testing.assert_allclose(run(student, batch), run(teacher, batch), rtol=0, atol=2e-6)


def test_measured_scores_rank_silenced_parts_last_and_need_real_tokens():
    teacher = teacher_of()
    silence(teacher, 3, head=2, neurons=(0, 1))
    importance = measure_importance(teacher, batches())
    assert int(np.argmin(importance.heads[2])) == 2
    assert set(np.argsort(importance.neurons[2])[:2].tolist()) == {0, 1}
    assert importance.tokens == 3 * (4 * 10 - 3)
    empty = [{**batch, "attention_mask": np.zeros_like(batch["attention_mask"])}
             for batch in batches()]
    with pytest.raises(ConfigError, match="calibration rows with real tokens"):
        measure_importance(teacher, empty)


def test_a_shared_relative_bias_keeps_one_head_set():
    teacher = teacher_of(MPNET)
    student = build_student(teacher, num_layers=2, hidden_size=8, num_heads=2,
                            intermediate_size=16, init="prune", calibration=batches())
    heads = student.pruning_plan.heads
    assert len(set(heads)) == 1 and len(heads[0]) == 2
    value = keras.ops.convert_to_numpy
    np.testing.assert_array_equal(value(student.relative_position_bias.embeddings),
                                  value(teacher.relative_position_bias.embeddings)[:, list(heads[0])])
    plan = PruningPlan((1, 2), tuple(range(8)), ((0, 1), (2, 3)), (tuple(range(16)),) * 2)
    with pytest.raises(ConfigError, match="one head set in every layer"):
        prune_into(Encoder(student.config), teacher, plan)


@pytest.mark.parametrize("sizes, message", [
    ((16, 8, 32), r"keeps whole heads of 4 .* a 16-wide student needs 4 heads, not 8"),
    ((10, 2, 32), r"the student's width must be a multiple of 4, not 10"),
    ((16, 4, 64), r"cannot widen: the student's 'intermediate_size' \(64\)"),
])
def test_sizes_that_cannot_be_pruned_are_named(sizes, message):
    hidden, heads, ffn = sizes
    config = EncoderConfig.from_dict({**TEACHER.to_dict(), "hidden_size": hidden,
                                      "num_attention_heads": heads, "intermediate_size": ffn},
                                     source="student")
    with pytest.raises(ConfigError, match=message):
        check_prunable(config, TEACHER)


def test_build_student_prune_needs_calibration():
    with pytest.raises(ConfigError, match="--init prune needs calibration rows"):
        build_student(teacher_of(), num_layers=2, hidden_size=8, num_heads=2, init="prune")


def test_importance_is_a_plain_record():
    importance = WidthImportance(np.ones(4), (np.ones(2),), (np.ones(3),), 5)
    assert importance.tokens == 5
