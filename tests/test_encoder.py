"""Encoder and layers: NumPy-oracle parity, Q/K/V capture, early stop, masks, serialisation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.keras_harness import run_serialization_test
from tests.numpy_bert import bert_forward
from tf_minilm.hf.checkpoints import encoder_state_dict
from tf_minilm.model.config import EncoderConfig
from tf_minilm.model.encoder import Encoder
from tf_minilm.model.layers import Embeddings, SelfAttention, TransformerBlock

TINY = dict(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=40)


def scrambled_encoder(model_type="bert", seed=0, **overrides):
    """A tiny encoder whose weights are large enough that every sub-layer matters."""
    values = dict(TINY, model_type=model_type, **overrides)
    if model_type != "bert":
        values.setdefault("pad_token_id", 1)
        values.setdefault("type_vocab_size", 1)
    encoder = Encoder(EncoderConfig(**values))
    rng = np.random.default_rng(seed)
    for weight in encoder.weights:
        scale = 0.3 if len(weight.shape) > 1 else 0.1
        base = 1.0 if weight.path.endswith("gamma") else 0.0
        weight.assign(base + scale * rng.standard_normal(weight.shape).astype("float32"))
    return encoder


def ragged_batch(config, lengths=(9, 5, 1), seq=9, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, config.vocab_size, size=(len(lengths), seq)).astype("int32")
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids[mask == 0] = config.pad_token_id
    types = (rng.random(ids.shape) < 0.3).astype("int32") * (config.type_vocab_size > 1)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types.astype("int32")}


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_matches_numpy_oracle_on_real_tokens(model_type):
    encoder = scrambled_encoder(model_type)
    batch = ragged_batch(encoder.config)
    out = encoder(batch, qkv_layers=(1, 3))
    ref, ref_qkv = bert_forward(encoder_state_dict(encoder), encoder.config, batch["input_ids"],
                                batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].astype(bool)
    got = out["last_hidden_state"].numpy()
    assert np.abs(got[real] - ref[real]).max() < 1e-4
    for (q, k, v), layer in zip(out["qkv"], (1, 3), strict=True):
        for mine, theirs in zip((q, k, v), ref_qkv[layer - 1], strict=True):
            assert np.abs(mine.numpy()[real] - theirs[real]).max() < 1e-4


def test_padding_does_not_change_real_tokens():
    encoder = scrambled_encoder()
    batch = ragged_batch(encoder.config, lengths=(5,), seq=5)
    padded = {k: np.pad(v, ((0, 0), (0, 4))) for k, v in batch.items()}
    short = encoder(batch)["last_hidden_state"].numpy()
    long = encoder(padded)["last_hidden_state"].numpy()[:, :5]
    np.testing.assert_allclose(short, long, atol=1e-5)


def test_stop_after_qkv_gives_same_qkv_and_skips_later_layers():
    encoder = scrambled_encoder()
    batch = ragged_batch(encoder.config)
    full = encoder(batch, qkv_layers=(2,))["qkv"][0]
    # Poison everything the early stop must not touch: block 2's attention output and FFN,
    # block 3 and the pooler. The captured Q/K/V must stay finite and identical.
    block = encoder.blocks[1]
    poisoned = (block.attention_output.weights + block.intermediate.weights
                + block.output_dense.weights + encoder.blocks[2].weights + encoder.pooler.weights)
    for weight in poisoned:
        weight.assign(np.full(weight.shape, np.nan, "float32"))
    stopped = encoder(batch, qkv_layers=(2,), stop_after_qkv=True)
    assert set(stopped) == {"qkv"}
    for a, b in zip(full, stopped["qkv"][0], strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_layer_numbers_are_one_based_and_checked():
    encoder = scrambled_encoder()
    batch = ragged_batch(encoder.config)
    with pytest.raises(ValueError, match=r"layer 0 is out of range.* 1-based: 1\.\.3"):
        encoder(batch, qkv_layers=(0,))
    with pytest.raises(ValueError, match="layer 4 is out of range"):
        encoder(batch, qkv_layers=(4,))
    with pytest.raises(ValueError, match="stop_after_qkv=True needs"):
        encoder(batch, stop_after_qkv=True)


def test_dropout_only_in_training():
    encoder = scrambled_encoder()
    batch = ragged_batch(encoder.config)
    a = encoder(batch, training=False)["last_hidden_state"].numpy()
    b = encoder(batch, training=False)["last_hidden_state"].numpy()
    c = encoder(batch, training=True)["last_hidden_state"].numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_keras_file_round_trip_is_identical():
    encoder = scrambled_encoder("roberta")  # the shared harness: config, .keras, weights, outputs
    restored = run_serialization_test(encoder, ragged_batch(encoder.config), atol=0.0)
    assert isinstance(restored, Encoder) and restored.config == encoder.config


@pytest.mark.parametrize(
    "layer",
    [
        Embeddings(vocab_size=10, hidden_size=8, max_position_embeddings=12, type_vocab_size=1,
                   pad_token_id=1, position_offset=2, dropout=0.0),
        SelfAttention(hidden_size=8, num_heads=2, dropout=0.2),
        TransformerBlock(hidden_size=8, num_heads=2, intermediate_size=16, layer_norm_eps=1e-5),
    ],
)
def test_layer_get_config_round_trip(layer):
    run_serialization_test(layer)


def test_mixed_bfloat16_runs_and_stays_close():
    reference = scrambled_encoder()
    batch = ragged_batch(reference.config)
    mixed = Encoder(reference.config, dtype="mixed_bfloat16")
    for target, source in zip(mixed.weights, reference.weights, strict=True):
        target.assign(source)
    assert mixed.weights[0].dtype == "float32"
    out = mixed(batch)["last_hidden_state"]
    assert "bfloat16" in str(out.dtype)
    ref = reference(batch)["last_hidden_state"].numpy()
    real = batch["attention_mask"].astype(bool)
    got = np.asarray(out, dtype="float32")
    assert np.isfinite(got).all()
    assert np.abs(got[real] - ref[real]).max() < 0.25


def test_attention_heads_must_divide_hidden():
    with pytest.raises(ValueError, match=r"num_heads \(4\) does not divide hidden_size \(10\)"):
        SelfAttention(hidden_size=10, num_heads=4)


def test_fresh_weights_are_all_different_and_seeded():
    config = EncoderConfig(**TINY)
    keras.utils.set_random_seed(11)
    first = Encoder(config)
    keras.utils.set_random_seed(11)
    second = Encoder(config)
    matrices = [w.numpy() for w in first.weights if len(w.shape) == 2]
    # A shared unseeded initialiser once gave Q, K and V (and the first embedding rows)
    # identical values; every matrix must start different from every other.
    rows = [m[:2, :4].ravel() for m in matrices]
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            assert not np.array_equal(rows[i], rows[j]), (first.weights[i].path, j)
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
