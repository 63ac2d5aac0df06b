"""SequenceClassifier: pooling against a NumPy oracle, padding invariance, .keras round
trip, float32 copy, int64 inference function, training with fit."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.keras_harness import run_serialization_test
from tf_minilm.model.classifier import SequenceClassifier
from tf_minilm.model.config import EncoderConfig
from tf_minilm.model.encoder import Encoder


def tiny_encoder(dtype=None, seed=0):
    keras.utils.set_random_seed(seed)
    config = EncoderConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64,
                           max_position_embeddings=32)
    return Encoder(config, **({"dtype": dtype} if dtype else {}))


def batch(lengths=(7, 5, 2), width=7, seed=1):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(5, 60, n)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def pooled_oracle(hidden, mask, pooling, pooler):
    """Explicit loops: mean over real tokens, first token, or the pooler output."""
    out = np.zeros((hidden.shape[0], hidden.shape[2]))
    for b in range(hidden.shape[0]):
        if pooling == "cls":
            out[b] = hidden[b, 0]
        elif pooling == "pooler":
            out[b] = pooler[b]
        else:
            real = [hidden[b, t] for t in range(hidden.shape[1]) if mask[b, t] == 1]
            out[b] = np.sum(real, axis=0) / len(real)
    return out


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_logits_match_numpy_oracle(pooling):
    encoder = tiny_encoder()
    model = SequenceClassifier(encoder, num_classes=3, pooling=pooling)
    inputs = batch()
    logits = np.asarray(model(inputs, training=False))
    assert logits.shape == (3, 3) and logits.dtype == np.float32
    outputs = encoder(inputs, training=False)
    pooled = pooled_oracle(np.asarray(outputs["last_hidden_state"], np.float64),
                           inputs["attention_mask"], pooling,
                           np.asarray(outputs["pooler_output"], np.float64))
    kernel, bias = (np.asarray(w, np.float64) for w in model.head.weights)
    np.testing.assert_allclose(logits, pooled @ kernel + bias, atol=1e-5)


def test_mean_pooling_ignores_padding():
    model = SequenceClassifier(tiny_encoder(), num_classes=2, pooling="mean")
    short = batch(lengths=(4, 3), width=4)
    padded = {k: np.pad(v, ((0, 0), (0, 5))) for k, v in short.items()}
    np.testing.assert_allclose(np.asarray(model(short)), np.asarray(model(padded)), atol=1e-5)


def test_keras_round_trip_gives_identical_outputs():
    model = SequenceClassifier(tiny_encoder(), num_classes=4, dropout=0.2, pooling="mean")
    loaded = run_serialization_test(model, batch(), atol=0.0)  # the shared harness
    assert isinstance(loaded, SequenceClassifier) and isinstance(loaded.encoder, Encoder)
    assert (loaded.num_classes, loaded.dropout_rate, loaded.pooling) == (4, 0.2, "mean")
    assert loaded.encoder.config == model.encoder.config


def test_pooler_is_frozen_unless_used():
    assert not SequenceClassifier(tiny_encoder(), 2, pooling="cls").encoder.pooler.trainable
    assert SequenceClassifier(tiny_encoder(), 2, pooling="pooler").encoder.pooler.trainable


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_classes": 1}, "num_classes"), ({"num_classes": 2, "pooling": "max"}, "pooling"),
     ({"num_classes": 2, "dropout": 1.0}, "dropout")],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SequenceClassifier(tiny_encoder(), **kwargs)


def test_inference_function_takes_int64_and_matches_call():
    model = SequenceClassifier(tiny_encoder(), num_classes=3, pooling="mean")
    inputs = batch()
    function = model.inference_function()
    spec_names = [s.name for s in function.input_signature]
    assert spec_names == ["input_ids", "attention_mask", "token_type_ids"]
    out = function(**{k: v.astype(np.int64) for k, v in inputs.items()})["logits"].numpy()
    np.testing.assert_allclose(out, np.asarray(model(inputs)), atol=1e-5)


def test_float32_copy_of_a_mixed_precision_model():
    encoder = tiny_encoder(dtype="mixed_bfloat16")
    model = SequenceClassifier(encoder, num_classes=2, pooling="mean", dtype="mixed_bfloat16")
    copy = model.float32_copy()
    assert copy.encoder.compute_dtype == "float32" and copy.compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in copy.weights)
    for a, b in zip(copy.weights, model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    inputs = batch()
    np.testing.assert_allclose(np.asarray(copy(inputs)), np.asarray(model(inputs)), atol=0.05)
    copy.head.kernel.assign(np.zeros(copy.head.kernel.shape))  # independent variables
    assert np.abs(np.asarray(model.head.kernel)).sum() > 0


def test_fit_lowers_the_loss():
    model = SequenceClassifier(tiny_encoder(), num_classes=2, pooling="mean", dropout=0.0)
    inputs = batch(lengths=(7, 6, 5, 4, 3, 2, 7, 5), width=7, seed=4)
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(inputs, labels, epochs=8, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_exports_to_fused_onnx_like_the_encoder(tmp_path, pooling):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (extra 'export')")
    from export.convert import function_to_onnx
    from export.fusion import expected_fusions, optimize_onnx

    model = SequenceClassifier(tiny_encoder(seed=3), num_classes=3, pooling=pooling)
    onnx_model = function_to_onnx(model.float32_copy().inference_function())
    path = tmp_path / "classifier.onnx"
    config = model.encoder.config
    counts = optimize_onnx(onnx_model, path, config.num_attention_heads, config.hidden_size,
                           expected_fusions(config.num_hidden_layers))
    assert counts["Attention"] == config.num_hidden_layers
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = batch(lengths=(7, 4, 1), width=7, seed=5)
    (logits,) = session.run(["logits"], {k: v.astype(np.int64) for k, v in inputs.items()})
    np.testing.assert_allclose(logits, np.asarray(model(inputs)), atol=1e-4)
