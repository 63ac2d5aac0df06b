"""Tests for tf_minilm.distill.losses against a float64 NumPy oracle written with plain loops."""

from __future__ import annotations

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_minilm.distill.losses import (  # noqa: E402
    minilm_v1_loss,
    minilm_v1_losses,
    minilm_v2_loss,
    relation_losses,
)
from tf_minilm.distill.objectives import check_minilm_v1_heads  # noqa: E402

BATCH, SEQ = 4, 7
TEACHER_HIDDEN, STUDENT_HIDDEN = 48, 32
# Ragged padding: a full row, a length-1 row, and two partial rows.
LENGTHS = (7, 1, 5, 3)


# --------------------------------------------------------------------------- oracle


def _log_softmax_1d(scores: list[float]) -> list[float]:
    top = max(scores)
    total = sum(np.exp(s - top) for s in scores)
    log_total = top + np.log(total)
    return [s - log_total for s in scores]


def oracle_relation_loss(
    teacher_qkv, student_qkv, mask, num_heads: int, pair: str, normalise_by: str = "real"
) -> float:
    """Relation KL loss by explicit loops over examples, heads and query rows, in float64.

    Padded keys are dropped from each softmax (rather than masked with a big negative),
    padded query rows are skipped. `normalise_by="padded"` divides by the padded length
    instead, to show that this choice changes the number.
    """
    index = {"q": 0, "k": 1, "v": 2}
    sides = []
    for qkv in (teacher_qkv, student_qkv):
        x = np.asarray(qkv[index[pair[0]]], dtype=np.float64)
        y = np.asarray(qkv[index[pair[1]]], dtype=np.float64)
        sides.append((x, y))
    mask = np.asarray(mask)
    batch, seq = mask.shape
    per_example = []
    for b in range(batch):
        real = [i for i in range(seq) if mask[b, i] > 0]
        if not real:
            per_example.append(0.0)
            continue
        total = 0.0
        for a in range(num_heads):
            log_rows = []
            for x, y in sides:
                d = x.shape[-1] // num_heads
                cols = slice(a * d, (a + 1) * d)
                rows = {}
                for t in real:
                    scores = [
                        float(np.dot(x[b, t, cols], y[b, u, cols])) / np.sqrt(d) for u in real
                    ]
                    rows[t] = _log_softmax_1d(scores)
                log_rows.append(rows)
            log_t, log_s = log_rows
            for t in real:
                for lt, ls in zip(log_t[t], log_s[t], strict=True):
                    total += np.exp(lt) * (lt - ls)
        length = len(real) if normalise_by == "real" else seq
        per_example.append(total / (num_heads * length))
    return float(np.mean(per_example))


# --------------------------------------------------------------------------- helpers


def _mask(lengths=LENGTHS, seq=SEQ, dtype=np.int32) -> np.ndarray:
    mask = np.zeros((len(lengths), seq), dtype=dtype)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return mask


def _qkv(rng: np.random.Generator, hidden: int, batch=BATCH, seq=SEQ, scale=1.0):
    return tuple(
        (rng.standard_normal((batch, seq, hidden)) * scale).astype(np.float32) for _ in range(3)
    )


def _inputs(seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return _qkv(rng, TEACHER_HIDDEN, scale=scale), _qkv(rng, STUDENT_HIDDEN, scale=scale), _mask()


def _assert_close(value, reference: float, tol: float = 1e-5) -> None:
    value = float(value)
    assert abs(value - reference) <= tol * max(1.0, abs(reference)), (value, reference)


# --------------------------------------------------------------------------- oracle agreement


@pytest.mark.parametrize("num_relation_heads", [4, 8])
def test_v2_default_relations_match_oracle(num_relation_heads):
    teacher, student, mask = _inputs(seed=num_relation_heads)
    losses = relation_losses(teacher, student, mask, num_relation_heads)
    assert list(losses) == ["qq", "kk", "vv"]
    for name, value in losses.items():
        assert value.dtype == tf.float32 and value.shape == ()
        _assert_close(value, oracle_relation_loss(teacher, student, mask, num_relation_heads, name))
    total = minilm_v2_loss(teacher, student, mask, num_relation_heads)
    _assert_close(total, sum(float(v) for v in losses.values()))


def test_v2_cross_relations_match_oracle():
    teacher, student, mask = _inputs(seed=11)
    losses = relation_losses(teacher, student, mask, 8, relations=("qk", "vq"))
    assert list(losses) == ["qk", "vq"]
    for name in ("qk", "vq"):
        _assert_close(losses[name], oracle_relation_loss(teacher, student, mask, 8, name))
    # "qk" and "kq" are different relations (rows vs columns), so they must differ.
    kq = relation_losses(teacher, student, mask, 8, relations=("kq",))["kq"]
    assert abs(float(kq) - float(losses["qk"])) > 1e-4


@pytest.mark.parametrize("num_heads", [2, 16])
def test_v1_matches_oracle(num_heads):
    teacher, student, mask = _inputs(seed=20 + num_heads)
    losses = minilm_v1_losses(teacher, student, mask, num_heads)
    assert sorted(losses) == ["attention", "value_relation"]
    _assert_close(
        losses["attention"], oracle_relation_loss(teacher, student, mask, num_heads, "qk")
    )
    _assert_close(
        losses["value_relation"], oracle_relation_loss(teacher, student, mask, num_heads, "vv")
    )
    _assert_close(
        minilm_v1_loss(teacher, student, mask, num_heads),
        float(losses["attention"]) + float(losses["value_relation"]),
    )


def test_float_and_int_masks_agree():
    teacher, student, mask = _inputs(seed=3)
    as_int = minilm_v2_loss(teacher, student, mask.astype(np.int32), 4)
    as_float = minilm_v2_loss(teacher, student, mask.astype(np.float32), 4)
    assert float(as_int) == pytest.approx(float(as_float), abs=1e-7)


# --------------------------------------------------------------------------- masking


def test_values_at_padded_positions_do_not_matter():
    teacher, student, mask = _inputs(seed=5)
    rng = np.random.default_rng(99)
    pad = (mask == 0)[:, :, None]

    def scramble(qkv):
        return tuple(
            np.where(pad, rng.standard_normal(x.shape) * 50.0, x).astype(np.float32) for x in qkv
        )

    base_v2 = relation_losses(teacher, student, mask, 4, relations=("qq", "kk", "vv", "qk"))
    new_v2 = relation_losses(
        scramble(teacher), scramble(student), mask, 4, relations=("qq", "kk", "vv", "qk")
    )
    for name in base_v2:
        assert float(new_v2[name]) == pytest.approx(float(base_v2[name]), abs=1e-6)
    base_v1 = minilm_v1_loss(teacher, student, mask, 2)
    new_v1 = minilm_v1_loss(scramble(teacher), scramble(student), mask, 2)
    assert float(new_v1) == pytest.approx(float(base_v1), abs=1e-6)


def test_normalisation_uses_real_length_not_padded_length():
    teacher, student, mask = _inputs(seed=6)
    value = float(relation_losses(teacher, student, mask, 4, relations=("kk",))["kk"])
    real = oracle_relation_loss(teacher, student, mask, 4, "kk", normalise_by="real")
    padded = oracle_relation_loss(teacher, student, mask, 4, "kk", normalise_by="padded")
    # The two conventions differ clearly on ragged input; the loss follows the real one.
    assert abs(real - padded) > 0.05 * real
    _assert_close(value, real)
    assert abs(value - padded) > 1e3 * 1e-5 * max(1.0, padded)


def test_fully_padded_example_contributes_zero():
    teacher, student, _ = _inputs(seed=7)
    mask = _mask(lengths=(7, 0, 4, 2))
    value = minilm_v2_loss(teacher, student, mask, 4)
    assert np.isfinite(float(value))
    expected = sum(
        oracle_relation_loss(teacher, student, mask, 4, name) for name in ("qq", "kk", "vv")
    )
    _assert_close(value, expected)
    # Same as the mean over the three live examples, scaled by 3/4 (the dead one adds 0).
    live = [0, 2, 3]
    live_value = minilm_v2_loss(
        tuple(x[live] for x in teacher), tuple(x[live] for x in student), mask[live], 4
    )
    _assert_close(value, 0.75 * float(live_value))
    # A batch with no real token at all is 0 with finite gradients.
    empty = np.zeros_like(mask)
    student_vars = [tf.Variable(x) for x in student]
    with tf.GradientTape() as tape:
        loss = minilm_v2_loss(teacher, tuple(student_vars), empty, 4)
    assert float(loss) == 0.0
    for grad in tape.gradient(loss, student_vars):
        assert grad is None or np.all(np.isfinite(grad.numpy()))


# --------------------------------------------------------------------------- properties


def test_identical_inputs_give_zero_loss():
    rng = np.random.default_rng(8)
    qkv = _qkv(rng, TEACHER_HIDDEN)
    mask = _mask()
    assert float(minilm_v2_loss(qkv, qkv, mask, 8, relations=("qq", "kk", "vv", "qk"))) == (
        pytest.approx(0.0, abs=1e-7)
    )
    assert float(minilm_v1_loss(qkv, qkv, mask, 4)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_is_positive_for_different_inputs(seed):
    teacher, student, mask = _inputs(seed=30 + seed)
    for value in relation_losses(teacher, student, mask, 4, ("qq", "kk", "vv", "kv")).values():
        assert float(value) > 0.0
    for value in minilm_v1_losses(teacher, student, mask, 4).values():
        assert float(value) > 0.0


@pytest.mark.parametrize(("dtype", "loose_tol"), [(tf.float16, 5e-3), (tf.bfloat16, 5e-2)])
def test_half_precision_inputs_compute_in_float32(dtype, loose_tol):
    teacher, student, mask = _inputs(seed=9)
    low_t = tuple(tf.cast(x, dtype) for x in teacher)
    low_s = tuple(tf.cast(x, dtype) for x in student)
    value = minilm_v2_loss(low_t, low_s, mask, 4)
    assert value.dtype == tf.float32
    assert np.isfinite(float(value))
    # Exactly the float32 computation on the rounded inputs ...
    rounded = minilm_v2_loss(
        tuple(tf.cast(x, tf.float32) for x in low_t),
        tuple(tf.cast(x, tf.float32) for x in low_s),
        mask,
        4,
    )
    assert float(value) == pytest.approx(float(rounded), rel=1e-6)
    # ... and close to the float32 result on the unrounded inputs.
    reference = float(minilm_v2_loss(teacher, student, mask, 4))
    assert float(value) == pytest.approx(reference, rel=loose_tol)
    v1 = minilm_v1_loss(low_t, low_s, mask, 2)
    assert v1.dtype == tf.float32
    assert float(v1) == pytest.approx(
        float(minilm_v1_loss(teacher, student, mask, 2)), rel=loose_tol
    )


def test_extreme_logits_stay_finite():
    teacher, student, _ = _inputs(seed=10, scale=1e3)
    mask = _mask(lengths=(7, 1, 0, 3))
    student_vars = [tf.Variable(x) for x in student]
    with tf.GradientTape() as tape:
        v2 = minilm_v2_loss(teacher, tuple(student_vars), mask, 4)
        v1 = minilm_v1_loss(teacher, tuple(student_vars), mask, 2)
        total = v2 + v1
    assert np.isfinite(float(v2)) and np.isfinite(float(v1))
    assert float(v2) > 0.0
    expected = sum(
        oracle_relation_loss(teacher, student, mask, 4, name) for name in ("qq", "kk", "vv")
    )
    assert float(v2) == pytest.approx(expected, rel=1e-3)
    for grad in tape.gradient(total, student_vars):
        assert np.all(np.isfinite(grad.numpy()))


def test_gradient_wrt_student_is_finite_nonzero_and_ignores_padding():
    teacher, student, mask = _inputs(seed=12)
    student_vars = [tf.Variable(x) for x in student]
    with tf.GradientTape() as tape:
        loss = minilm_v2_loss(teacher, tuple(student_vars), mask, 8)
    grads = tape.gradient(loss, student_vars)
    pad = mask == 0
    for grad in grads:
        grad = grad.numpy()
        assert np.all(np.isfinite(grad))
        assert np.abs(grad[~pad]).max() > 0.0
        assert np.all(grad[pad] == 0.0)
    # v1 reaches q and k through the attention term and v through the value relation.
    with tf.GradientTape() as tape:
        loss = minilm_v1_loss(teacher, tuple(student_vars), mask, 2)
    for grad in tape.gradient(loss, student_vars):
        assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).max() > 0.0


@pytest.mark.parametrize("static_hidden", [True, False])
def test_runs_in_tf_function_with_dynamic_shapes(static_hidden):
    t_hidden = TEACHER_HIDDEN if static_hidden else None
    s_hidden = STUDENT_HIDDEN if static_hidden else None
    signature = [
        tuple(tf.TensorSpec([None, None, t_hidden], tf.float32) for _ in range(3)),
        tuple(tf.TensorSpec([None, None, s_hidden], tf.float32) for _ in range(3)),
        tf.TensorSpec([None, None], tf.int32),
    ]

    @tf.function(input_signature=signature)
    def both(teacher, student, mask):
        return minilm_v2_loss(teacher, student, mask, 4), minilm_v1_loss(teacher, student, mask, 2)

    rng = np.random.default_rng(13)
    for batch, seq, lengths in ((4, 7, LENGTHS), (2, 5, (2, 5))):
        teacher = _qkv(rng, TEACHER_HIDDEN, batch=batch, seq=seq)
        student = _qkv(rng, STUDENT_HIDDEN, batch=batch, seq=seq)
        mask = _mask(lengths=lengths, seq=seq)
        v2, v1 = both(teacher, student, mask)
        _assert_close(v2, float(minilm_v2_loss(teacher, student, mask, 4)), tol=1e-6)
        _assert_close(v1, float(minilm_v1_loss(teacher, student, mask, 2)), tol=1e-6)
    assert len(both.get_concrete_function().graph.as_graph_def().node) > 0
    if not static_hidden:
        bad_teacher = _qkv(rng, 36, batch=2, seq=5)  # 36 is not divisible by 8
        with pytest.raises(tf.errors.InvalidArgumentError, match="teacher hidden size"):
            tf.function(lambda t, s, m: minilm_v2_loss(t, s, m, 8), input_signature=signature)(
                bad_teacher, _qkv(rng, STUDENT_HIDDEN, batch=2, seq=5), _mask((2, 5), seq=5)
            )


# --------------------------------------------------------------------------- errors


def test_hidden_not_divisible_names_side_and_size():
    teacher, student, mask = _inputs()
    with pytest.raises(ValueError, match=r"num_relation_heads=5 does not divide the teacher q hidden size 48"):
        relation_losses(teacher, student, mask, 5)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"num_relation_heads=8 does not divide the student q hidden size 36"):
        relation_losses(teacher, _qkv(rng, 36), mask, 8)
    with pytest.raises(ValueError, match=r"num_heads=3 does not divide the student q hidden size 32"):
        minilm_v1_losses(_qkv(rng, 36), student, mask, 3)


@pytest.mark.parametrize("bad", ["qx", "q", "qqq", "QQ", "", 7])
def test_bad_relation_name_is_rejected(bad):
    teacher, student, mask = _inputs()
    with pytest.raises(ValueError, match=re.escape(f"bad relation name {bad!r}")):
        relation_losses(teacher, student, mask, 4, relations=("qq", bad))


def test_bad_relation_containers_are_rejected():
    teacher, student, mask = _inputs()
    with pytest.raises(ValueError, match="single string 'qq'"):
        relation_losses(teacher, student, mask, 4, relations="qq")
    with pytest.raises(ValueError, match="empty"):
        minilm_v2_loss(teacher, student, mask, 4, relations=())
    with pytest.raises(ValueError, match="more than once"):
        relation_losses(teacher, student, mask, 4, relations=("qq", "qq"))
    with pytest.raises(ValueError, match="num_relation_heads must be a positive integer"):
        relation_losses(teacher, student, mask, 0)


def test_shape_mismatch_is_rejected():
    teacher, student, mask = _inputs()
    with pytest.raises(ValueError, match="student q has seq size 6, expected 7"):
        relation_losses(teacher, tuple(x[:, :6] for x in student), mask, 4)
    with pytest.raises(ValueError, match=r"\(q, k, v\) tuple"):
        relation_losses(teacher, student[:2], mask, 4)


def test_v1_head_check():
    check_minilm_v1_heads(12, 12)
    with pytest.raises(ValueError, match=r"equal attention-head counts.*teacher 12.*student 6"):
        check_minilm_v1_heads(12, 6)
    with pytest.raises(ValueError, match="positive integer"):
        check_minilm_v1_heads(12, 0)


# --------------------------------------------------------------------------- chunking

# Budgets in bytes of one [pairs, seq, seq] float32 chunk at SEQ = 7 (196 bytes a pair):
# one pair per chunk, 3 pairs (does not divide batch x heads), and everything at once.
CHUNK_BUDGETS = (1, 3 * 4 * SEQ * SEQ, 10**9)


def _dense(teacher, student, mask, heads, pairs):
    from dense_relation_loss import dense_relation_losses

    return dense_relation_losses(teacher, student, mask, heads, pairs)


def _value_and_grads(fn, student):
    variables = [tf.Variable(x) for x in student]
    with tf.GradientTape() as tape:
        losses = fn(tuple(variables))
        total = tf.add_n(list(losses.values()))
    return losses, [g.numpy() for g in tape.gradient(total, variables)]


@pytest.mark.parametrize("chunk_bytes", CHUNK_BUDGETS)
@pytest.mark.parametrize("relations", [("qq", "kk", "vv"), ("qk", "vq")])
def test_chunked_loss_and_gradient_equal_the_whole_tensor_form_and_the_oracle(
        chunk_bytes, relations):
    teacher, student, mask = _inputs(seed=21)
    chunked, chunked_grads = _value_and_grads(
        lambda s: relation_losses(teacher, s, mask, 4, relations, chunk_bytes=chunk_bytes),
        student)
    dense, dense_grads = _value_and_grads(
        lambda s: _dense(teacher, s, mask, 4, {n: n for n in relations}), student)
    for name in relations:
        _assert_close(chunked[name], float(dense[name]))
        _assert_close(chunked[name], oracle_relation_loss(teacher, student, mask, 4, name))
    for ours, reference in zip(chunked_grads, dense_grads, strict=True):
        assert np.abs(ours - reference).max() <= 1e-5 * max(1.0, np.abs(reference).max())
        assert np.abs(reference).max() > 0.0


@pytest.mark.parametrize("chunk_bytes", CHUNK_BUDGETS[:2])
def test_chunked_v1_gradient_equals_the_whole_tensor_form(chunk_bytes):
    teacher, student, mask = _inputs(seed=22)
    chunked, chunked_grads = _value_and_grads(
        lambda s: minilm_v1_losses(teacher, s, mask, 2, chunk_bytes=chunk_bytes), student)
    dense, dense_grads = _value_and_grads(
        lambda s: _dense(teacher, s, mask, 2, {"attention": "qk", "value_relation": "vv"}),
        student)
    for name in ("attention", "value_relation"):
        _assert_close(chunked[name], float(dense[name]))
    for ours, reference in zip(chunked_grads, dense_grads, strict=True):
        assert np.abs(ours - reference).max() <= 1e-5 * max(1.0, np.abs(reference).max())


def test_chunk_pairs_fit_the_budget_and_even_out():
    from tf_minilm.distill.losses import relation_chunk_pairs

    assert relation_chunk_pairs(1536, 512, 2 * 2**20) == 2  # 1 MiB a pair
    assert relation_chunk_pairs(1536, 128, 2 * 2**20) == 32
    assert relation_chunk_pairs(10, 8, 4 * 64 * 4) == 4  # at most 4 fit: 4, 3, 3 -> 4 each
    assert relation_chunk_pairs(9, 8, 4 * 64 * 4) == 3  # 3 chunks of 3, no padding
    assert relation_chunk_pairs(5, 8, 10**9) == 5  # all at once, never more than there are
    assert relation_chunk_pairs(None, 8, 4 * 64 * 4) == 4
    assert relation_chunk_pairs(7, 4096, 1) == 1


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "2"])
def test_bad_chunk_budget_is_refused(bad):
    teacher, student, mask = _inputs()
    with pytest.raises(ValueError, match="chunk_bytes must be a positive number of bytes"):
        relation_losses(teacher, student, mask, 4, chunk_bytes=bad)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_chunked_gradient_under_xla_and_half_precision(dtype):
    """XLA-compiled, from half-precision projections: value and gradient as in float32."""
    teacher, student, mask = _inputs(seed=23)
    low_t = tuple(tf.cast(x, dtype) for x in teacher)
    variables = [tf.Variable(tf.cast(x, dtype)) for x in student]

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            loss = minilm_v2_loss(low_t, tuple(variables), mask, 4, chunk_bytes=3 * 4 * SEQ * SEQ)
        return loss, tape.gradient(loss, variables)

    loss, grads = step()
    rounded = [tf.cast(v, tf.float32).numpy() for v in variables]
    reference, reference_grads = _value_and_grads(
        lambda s: _dense(tuple(tf.cast(x, tf.float32) for x in low_t), s, mask, 4,
                         {"qq": "qq", "kk": "kk", "vv": "vv"}), rounded)
    assert loss.dtype == tf.float32
    _assert_close(loss, float(tf.add_n(list(reference.values()))))
    for grad, ref in zip(grads, reference_grads, strict=True):
        assert grad.dtype == dtype
        tol = 1e-2 if dtype == tf.bfloat16 else 1e-3
        assert np.abs(tf.cast(grad, tf.float32).numpy() - ref).max() <= tol * np.abs(ref).max()


MEMORY_PROBE = r"""
import json, os, sys
os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, sys.argv[1])
import numpy as np, tensorflow as tf
from tf_minilm.distill.losses import minilm_v2_loss
from dense_relation_loss import dense_relation_losses

batch, seq, hidden, heads, chunk_bytes = 8, 256, 96, 12, 2**20
rng = np.random.default_rng(0)
teacher = [tf.constant(rng.standard_normal((batch, seq, hidden)), tf.float32) for _ in range(3)]
student = [tf.Variable(rng.standard_normal((batch, seq, hidden)), dtype=tf.float32)
           for _ in range(3)]
mask = tf.ones((batch, seq), tf.int32)

def dense():
    return tf.add_n(list(dense_relation_losses(
        teacher, student, mask, heads, {"qq": "qq", "kk": "kk", "vv": "vv"}).values()))

def chunked():
    return minilm_v2_loss(teacher, tuple(student), mask, heads, chunk_bytes=chunk_bytes)

peaks = {}
for name, fn in (("chunked", chunked), ("dense", dense)):
    @tf.function
    def step(fn=fn):
        with tf.GradientTape() as tape:
            loss = fn()
        return loss, tape.gradient(loss, student)
    step()  # trace and warm up outside the measured window
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tf.config.experimental.reset_memory_stats("CPU:0")
    loss, grads = step()
    float(loss)
    peaks[name] = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
print(json.dumps({"peaks": peaks, "projection_bytes": batch * seq * hidden * 4,
                  "relation_bytes": batch * heads * seq * seq * 4, "chunk_bytes": chunk_bytes}))
"""


def test_chunked_loss_peak_memory_is_bounded_by_the_chunk(tmp_path):
    """Allocator peak bytes of one loss + gradient step, not wall time.

    The whole-tensor form needs several [batch, heads, seq, seq] tensors (25 MiB each
    here); the chunked one needs the projections, their gradients and a few chunks.
    """
    import json
    import subprocess
    import sys

    tests_dir = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, tests_dir], capture_output=True,
                         text=True, timeout=600, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    peaks = figures["peaks"]
    # 6 projections, their float32 head-split copies and 2 gradients each per relation:
    # at most 30 projection-sized buffers, plus 8 chunk-sized working tensors.
    bound = 30 * figures["projection_bytes"] + 8 * figures["chunk_bytes"]
    assert peaks["dense"] >= 3 * figures["relation_bytes"], figures  # the probe sees S^2 tensors
    assert peaks["chunked"] <= bound, figures
    assert peaks["chunked"] * 5 <= peaks["dense"], figures
