"""EncoderConfig: HF config.json in and out, validation messages."""

from __future__ import annotations

import json

import pytest

from tf_minilm.model.config import ConfigError, EncoderConfig


def test_hf_round_trip_keeps_every_field():
    config = EncoderConfig(hidden_size=64, num_attention_heads=4, intermediate_size=256,
                           num_hidden_layers=2, model_type="roberta", pad_token_id=1,
                           type_vocab_size=1, layer_norm_eps=1e-5)
    again = EncoderConfig.from_hf_dict(json.loads(json.dumps(config.to_hf_dict())))
    assert again == config
    assert config.to_hf_dict()["architectures"] == ["RobertaModel"]


def test_roberta_defaults_and_position_offset():
    config = EncoderConfig.from_hf_dict({
        "model_type": "xlm-roberta", "vocab_size": 250, "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 514,
    })
    assert config.pad_token_id == 1 and config.type_vocab_size == 1
    assert config.position_offset == 2 and config.max_sequence_length == 512


def test_architecture_guessed_from_architectures_field():
    values = {"architectures": ["BertForMaskedLM"], "vocab_size": 10, "hidden_size": 8,
              "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16}
    assert EncoderConfig.from_hf_dict(values).model_type == "bert"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "gpt2"}, r"x\.json: field 'model_type' is 'gpt2'"),
        ({"hidden_act": "relu"}, r"x\.json: field 'hidden_act' is 'relu'"),
        ({"position_embedding_type": "relative_key"}, "field 'position_embedding_type'"),
        ({"num_attention_heads": 5}, r"x\.json: field 'num_attention_heads' \(5\) does not divide field 'hidden_size' \(8\)"),
        ({"vocab_size": 0}, "field 'vocab_size' must be a positive integer, got 0"),
        ({"hidden_dropout_prob": 1.5}, "field 'hidden_dropout_prob' must be in"),
    ],
)
def test_bad_values_name_file_and_field(changes, message):
    values = {"model_type": "bert", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 16}
    values.update(changes)
    with pytest.raises(ConfigError, match=message):
        EncoderConfig.from_hf_dict(values, source="x.json")


def test_missing_fields_and_unknown_keys():
    with pytest.raises(ConfigError, match="missing field"):
        EncoderConfig.from_hf_dict({"model_type": "bert"}, source="x.json")
    with pytest.raises(ConfigError, match="unknown field"):
        EncoderConfig.from_dict({"hidden_sise": 3})
