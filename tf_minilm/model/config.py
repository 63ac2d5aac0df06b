"""The encoder's architecture: `EncoderConfig`, `ConfigError` and the layer-number rule.

Owns: the fields of a Hugging Face BERT/RoBERTa/XLM-R/MPNet `config.json` (read and written
without loss) and the checks on them, and `check_layer_number`, the one place that says
what a 1-based layer number may be. Imports: `tf_minilm.rules`, the standard library only (no TensorFlow),
so configuration and the CLI can check a teacher before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from tf_minilm import rules

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "mpnet")
ROBERTA_LIKE = ("roberta", "xlm-roberta")
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "mpnet")
"""Architectures whose position ids start at `pad_token_id + 1` (HF
`create_position_ids_from_input_ids`)."""
SUPPORTED_ACTIVATIONS = ("gelu",)


class ConfigError(ValueError):
    """An invalid configuration value; the message names the source and the field."""


def check_layer_number(layer: int, depth: int, who: str = "encoder",
                       name: str | None = None) -> int:
    """The one rule for layer numbers: 1-based, 1..depth.

    Args:
        layer: the layer number given.
        depth: layers of the model it refers to.
        who: the model ("teacher", "student", "encoder"), named in the message.
        name: what the caller calls the number (a flag such as "--teacher-layer", a
            field; end it with "=" for "name=value"); default "<who> layer".

    Returns:
        `layer` as an int.

    Raises:
        ConfigError: not an integer, or outside 1..depth.
    """
    label = name or ("layer" if who == "encoder" else f"{who} layer")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= depth:
        sep = "" if label.endswith("=") else " "
        raise ConfigError(f"{label}{sep}{layer!r} is out of range: the {who} has {depth} layers "
                          f"(layer numbers are 1-based: 1..{depth})")
    return layer


@dataclasses.dataclass
class EncoderConfig:
    """Architecture of a BERT-family encoder (the fields of an HF `config.json`).

    Args:
        vocab_size: number of token ids.
        hidden_size: width of every layer.
        num_hidden_layers: number of transformer blocks.
        num_attention_heads: attention heads per block; must divide `hidden_size`.
        intermediate_size: width of the feed-forward block.
        hidden_act: feed-forward activation; only the exact erf "gelu" is supported.
        hidden_dropout_prob: dropout on embeddings and block outputs.
        attention_probs_dropout_prob: dropout on attention probabilities.
        max_position_embeddings: rows of the position table (RoBERTa counts the
            `pad_token_id + 1` offset inside this number, as HF does).
        type_vocab_size: rows of the token-type table (1 for RoBERTa/XLM-R; 0 for MPNet,
            which has none).
        layer_norm_eps: LayerNorm epsilon.
        initializer_range: stddev of the truncated-normal weight initialiser.
        pad_token_id: id of the padding token.
        model_type: "bert", "roberta", "xlm-roberta" or "mpnet".
        relative_attention_num_buckets: MPNet's relative position buckets (32): a learned
            [buckets, heads] bias, shared by all layers, added to the attention scores;
            0 (no relative bias) for the other architectures.

    Example:
    >>> config = EncoderConfig(hidden_size=128, num_hidden_layers=2,
    ...                        num_attention_heads=4, intermediate_size=512)
    >>> config.head_size
    32
    """

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    model_type: str = "bert"
    relative_attention_num_buckets: int = 0

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "EncoderConfig") -> None:
        """Raise `ConfigError` naming `source` and the field when a value is invalid."""
        positive = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ) + (() if self.model_type == "mpnet" else ("type_vocab_size",))
        for name in positive:
            rules.positive_int(getattr(self, name), f"{source}: field '{name}'",
                               error=ConfigError)
        rules.divides(self.num_attention_heads, self.hidden_size,
                      f"{source}: field 'num_attention_heads'", "field 'hidden_size'",
                      error=ConfigError)
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: field 'model_type' is {self.model_type!r}; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        buckets = self.relative_attention_num_buckets
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 0:
            raise ConfigError(f"{source}: field 'relative_attention_num_buckets' must be an "
                              f"integer >= 0, got {buckets!r}")
        if self.model_type == "mpnet":
            if buckets < 4 or buckets % 2:
                raise ConfigError(f"{source}: field 'relative_attention_num_buckets' is "
                                  f"{buckets}; MPNet needs an even number >= 4 (32 in its "
                                  "checkpoints)")
            if self.pad_token_id != 1:  # transformers' MPNetEmbeddings hard-codes it
                raise ConfigError(f"{source}: field 'pad_token_id' is {self.pad_token_id!r}; "
                                  "MPNet's position ids take id 1 as padding (transformers "
                                  "hard-codes it), so its tokenizer must pad with id 1")
            if self.type_vocab_size != 0:
                raise ConfigError(f"{source}: field 'type_vocab_size' is "
                                  f"{self.type_vocab_size!r}; MPNet has no token types (0)")
        elif buckets:
            raise ConfigError(f"{source}: field 'relative_attention_num_buckets' is {buckets}; "
                              f"only MPNet has a relative position bias, not {self.model_type}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"{source}: field 'hidden_act' is {self.hidden_act!r}; only the exact erf "
                "'gelu' of BERT/RoBERTa is supported"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"{source}: field '{name}' must be in [0, 1), got {value!r}")
        if self.position_offset >= self.max_position_embeddings:
            raise ConfigError(
                f"{source}: field 'max_position_embeddings' ({self.max_position_embeddings}) "
                f"leaves no positions after the RoBERTa offset {self.position_offset}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"{source}: field 'pad_token_id' ({self.pad_token_id}) is outside the vocabulary "
                f"of {self.vocab_size}"
            )

    # --------------------------------------------------------------- derived
    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def is_roberta_like(self) -> bool:
        """True for RoBERTa and XLM-R (position ids offset by `pad_token_id + 1`)."""
        return self.model_type in ROBERTA_LIKE

    @property
    def position_offset(self) -> int:
        """First position id used for real tokens (HF RoBERTa, MPNet: `pad_token_id + 1`)."""
        return self.pad_token_id + 1 if self.model_type in OFFSET_POSITIONS else 0

    @property
    def max_sequence_length(self) -> int:
        """Longest input the position table supports."""
        return self.max_position_embeddings - self.position_offset

    # ------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (the form `get_config` stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "EncoderConfig") -> EncoderConfig:
        """Build from a dict of our own field names; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}")
        config = cls.__new__(cls)
        for field in dataclasses.fields(cls):
            default = field.default
            setattr(config, field.name, values.get(field.name, default))
        config.validate(source)
        return config

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` content Hugging Face `transformers` expects."""
        architecture = {
            "bert": "BertModel",
            "roberta": "RobertaModel",
            "xlm-roberta": "XLMRobertaModel",
            "mpnet": "MPNetModel",
        }[self.model_type]
        out = self.to_dict()
        if self.model_type == "mpnet":  # no token types, relative (not absolute) positions
            del out["type_vocab_size"]
            out.update({"architectures": [architecture], "bos_token_id": 0, "eos_token_id": 2})
            return out
        del out["relative_attention_num_buckets"]
        out.update(
            {
                "architectures": [architecture],
                "position_embedding_type": "absolute",
                "use_cache": False,
                "classifier_dropout": None,
            }
        )
        if self.is_roberta_like:
            out.update({"bos_token_id": 0, "eos_token_id": 2})
        return out

    @classmethod
    def from_hf_dict(cls, values: dict[str, Any], source: str = "config.json") -> EncoderConfig:
        """Read an HF `config.json` dict; raises `ConfigError` naming `source` and the field."""
        model_type = values.get("model_type")
        if model_type is None:
            architectures = values.get("architectures") or []
            guess = " ".join(architectures).lower()
            model_type = (
                "xlm-roberta" if "xlmroberta" in guess else "roberta" if "roberta" in guess
                else "mpnet" if "mpnet" in guess else "bert" if "bert" in guess else None
            )
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: field 'model_type' is {model_type!r}; supported architectures are "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} (BERT, RoBERTa, XLM-R, MPNet)"
            )
        position_type = values.get("position_embedding_type", "absolute")
        if position_type != "absolute" and model_type != "mpnet":
            raise ConfigError(
                f"{source}: field 'position_embedding_type' is {position_type!r}; only "
                "'absolute' positions are supported"
            )
        hidden_act = values.get("hidden_act", "gelu")
        if hidden_act != "gelu":
            raise ConfigError(
                f"{source}: field 'hidden_act' is {hidden_act!r}; only the exact erf 'gelu' is "
                "supported"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in names}
        kept["model_type"] = model_type
        required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size")
        missing = [k for k in required if k not in values]
        if missing:
            raise ConfigError(f"{source}: missing field(s) {', '.join(missing)}")
        if model_type == "mpnet":
            kept.setdefault("pad_token_id", 1)
            kept.setdefault("layer_norm_eps", 1e-5)
            kept.setdefault("relative_attention_num_buckets", 32)
            kept["type_vocab_size"] = 0
        if model_type in ROBERTA_LIKE:
            kept.setdefault("pad_token_id", 1)
            kept.setdefault("type_vocab_size", 1)
            kept.setdefault("layer_norm_eps", 1e-5)
        if kept.get("pad_token_id") is None:
            kept["pad_token_id"] = 0
        return cls.from_dict(kept, source)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> EncoderConfig:
        """Read an HF `config.json` file."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as handle:
                values = json.load(handle)
        except FileNotFoundError as err:
            raise ConfigError(f"{path}: file not found") from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(values).__name__}")
        return cls.from_hf_dict(values, source=path)
