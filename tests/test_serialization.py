"""Every registered tf-minilm serializable, through the shared harness (tests/keras_harness.py).

A class registered with `keras.saving.register_keras_serializable(package="tf_minilm")`
and missing from `CASES` fails `test_every_registered_serializable_has_a_case`, so a new
layer or model cannot skip the config / `.keras` / precision checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest
from _multiworker_worker import tiny_student, tiny_teacher
from keras_harness import run_precision_test, run_serialization_test

from tf_minilm.distill.distiller import Distiller
from tf_minilm.model.classifier import SequenceClassifier
from tf_minilm.model.config import EncoderConfig
from tf_minilm.model.encoder import Encoder
from tf_minilm.model.layers import (
    Embeddings,
    RelativePositionBias,
    SelfAttention,
    TransformerBlock,
)
from tf_minilm.schedules import WarmupLinearDecay

CONFIG = EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=24,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


MPNET_CONFIG = EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=32,
                             max_position_embeddings=24, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, model_type="mpnet",
                             pad_token_id=1, type_vocab_size=0,
                             relative_attention_num_buckets=8)


def _batch(seq: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, CONFIG.vocab_size, size=(3, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _hidden_inputs() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(3, 7, 16)).astype(np.float32)
    additive = np.zeros((3, 1, 1, 7), np.float32)
    additive[1, ..., 4:] = -1e9
    return {"hidden": hidden, "additive_mask": additive}


def _distiller(dtype: str | None = None) -> Distiller:
    with _Policy(dtype):
        teacher = tiny_teacher(dropout=0.0)
        student = tiny_student(teacher)
        return Distiller(teacher, student, num_relation_heads=4, relations=("qq", "vv"),
                         objective="minilmv2 + embedding_mse + hidden_mse")


class _Policy:
    """Sets the global dtype policy inside a `with` block (models built there follow it)."""

    def __init__(self, name: str | None) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.previous = keras.config.dtype_policy()
        if self.name:
            keras.config.set_dtype_policy(self.name)

    def __exit__(self, *args: Any) -> None:
        keras.config.set_dtype_policy(self.previous)


def _classifier(dtype: str | None = None) -> SequenceClassifier:
    with _Policy(dtype):
        return SequenceClassifier(Encoder(CONFIG), num_classes=3, dropout=0.0, pooling="mean")


# name -> (build(policy or None), inputs, outputs that stay float32 under every policy)
CASES: dict[str, tuple[Callable[[str | None], Any], Any, tuple[str, ...]]] = {
    "Embeddings": (lambda dtype: Embeddings(vocab_size=50, hidden_size=16,
                                            max_position_embeddings=24, type_vocab_size=2,
                                            pad_token_id=0, position_offset=0, dropout=0.0,
                                            dtype=dtype),
                   {"input_ids": _batch()["input_ids"]}, ()),
    "SelfAttention": (lambda dtype: SelfAttention(hidden_size=16, num_heads=2, dropout=0.0,
                                                  dtype=dtype), _hidden_inputs(), ()),
    "TransformerBlock": (lambda dtype: TransformerBlock(hidden_size=16, num_heads=2,
                                                        intermediate_size=32, dtype=dtype),
                         _hidden_inputs(), ()),
    "Encoder": (lambda dtype: Encoder(CONFIG, dtype=dtype), _batch(), ()),
    "MPNetEncoder": (lambda dtype: Encoder(MPNET_CONFIG, dtype=dtype), _batch(), ()),
    "RelativePositionBias": (lambda dtype: RelativePositionBias(num_buckets=8, num_heads=2,
                                                                max_distance=16, dtype=dtype),
                             {"input_ids": _batch(seq=20)["input_ids"]}, ()),
    "SequenceClassifier": (_classifier, _batch(), ("output",)),
    # Relations, KL and alignment losses are float32 whatever the compute dtype.
    "Distiller": (_distiller, _batch(), ("loss", "loss_qq", "loss_vv", "loss_minilmv2",
                                         "loss_embedding_mse", "loss_hidden_mse")),
    "WarmupLinearDecay": (lambda dtype: WarmupLinearDecay(1e-3, 10, 100, replans=[(50, 200)]),
                          None, ()),
}


def test_every_registered_serializable_has_a_case():
    registered = {name.split(">", 1)[1] for name in keras.saving.get_custom_objects()
                  if name.startswith("tf_minilm>")}
    covered = set(CASES) - {"MPNetEncoder"}  # a second case of Encoder
    assert registered == covered, f"no harness case for {sorted(registered - covered)}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_serialization_round_trip(name):
    build, inputs, _ = CASES[name]
    obj = build(None)
    if isinstance(obj, WarmupLinearDecay):
        clone = run_serialization_test(obj)
        for step in (0, 5, 10, 60, 199):
            assert float(clone(step)) == float(obj(step))
        return
    run_serialization_test(obj, inputs, atol=1e-6)


@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n][1] is not None))
def test_precision_policies(name):
    build, inputs, float32_outputs = CASES[name]
    run_precision_test(build, inputs, float32_outputs)
