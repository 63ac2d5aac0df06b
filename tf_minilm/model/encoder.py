"""`Encoder`: a BERT / RoBERTa / XLM-R / MPNet encoder as a Keras 3 model that exposes Q/K/V.

Owns: `Encoder`, `copy_encoder` and `copy_weights` (the one weight copy), and
`non_finite_weights` (the corrupt-weights check of models loaded from `.keras`). Imports:
`model.config`, `model.layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from tf_minilm.model.config import EncoderConfig, check_layer_number
from tf_minilm.model.layers import (
    Embeddings,
    RelativePositionBias,
    TransformerBlock,
    additive_attention_mask,
)


@keras.saving.register_keras_serializable(package="tf_minilm")
class Encoder(keras.Model):
    """BERT-family encoder (post-LayerNorm, absolute positions, erf GELU, HF mask).

    MPNet (`model_type` "mpnet") is the same encoder without token types and with a
    learned relative position bias, shared by all layers, added to the attention scores.

    Called on a dict of int tensors `input_ids`, `attention_mask` (1 real, 0 pad) and
    optionally `token_type_ids`, all [batch, seq]. Returns a dict with
    `last_hidden_state` [batch, seq, hidden] and `pooler_output` [batch, hidden]
    (tanh dense on the first token, as in HF). With `qkv_layers` (1-based) it also
    returns `qkv`: one (q, k, v) tuple per requested layer, each [batch, seq, hidden]
    with heads concatenated. With `stop_after_qkv=True` nothing runs past the last
    requested layer's Q/K/V projections and only `qkv` is returned. `capture` (a list)
    receives the embeddings' output, then each block's inner activations
    (`TransformerBlock.finish`), for width pruning.

    Args:
        config: an `EncoderConfig` (or its dict form, as stored by `get_config`).

    Example:
    >>> config = EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
    ...                        num_attention_heads=4, intermediate_size=128)
    >>> encoder = Encoder(config)
    >>> inputs = {"input_ids": keras.ops.ones((2, 7), "int32"),
    ...           "attention_mask": keras.ops.ones((2, 7), "int32")}
    >>> encoder(inputs)["last_hidden_state"].shape
    (2, 7, 32)
    >>> q, k, v = encoder(inputs, qkv_layers=(2,), stop_after_qkv=True)["qkv"][0]
    """

    def __init__(self, config: EncoderConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = EncoderConfig.from_dict(config, source=f"{self.name} config")
        self.config = config
        policy = self.dtype_policy
        self.embeddings = Embeddings(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            max_position_embeddings=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            pad_token_id=config.pad_token_id,
            position_offset=config.position_offset,
            layer_norm_eps=config.layer_norm_eps,
            dropout=config.hidden_dropout_prob,
            initializer_range=config.initializer_range,
            dtype=policy,
            name="embeddings",
        )
        self.blocks = [
            TransformerBlock(
                hidden_size=config.hidden_size,
                num_heads=config.num_attention_heads,
                intermediate_size=config.intermediate_size,
                dropout=config.hidden_dropout_prob,
                attention_dropout=config.attention_probs_dropout_prob,
                layer_norm_eps=config.layer_norm_eps,
                initializer_range=config.initializer_range,
                dtype=policy,
                name=f"layer_{index}",
            )
            for index in range(config.num_hidden_layers)
        ]
        self.relative_position_bias = RelativePositionBias(
            config.relative_attention_num_buckets, config.num_attention_heads,
            initializer_range=config.initializer_range, dtype=policy,
            name="relative_position_bias",
        ) if config.relative_attention_num_buckets else None
        self.pooler = keras.layers.Dense(
            config.hidden_size,
            activation="tanh",
            kernel_initializer=keras.initializers.RandomNormal(stddev=config.initializer_range),
            dtype=policy,
            name="pooler",
        )
        self.build(None)

    def build(self, input_shape: Any = None) -> None:
        """Create every weight up front so checkpoints can be assigned before a call."""
        if self.built:
            return
        hidden_shape = (None, None, self.config.hidden_size)
        self.embeddings.build((None, None))
        for block in self.blocks:
            block.build(hidden_shape)
        self.pooler.build((None, self.config.hidden_size))
        if self.relative_position_bias is not None:
            self.relative_position_bias.build((None, None))
        self.built = True

    def resolve_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        """Check 1-based layer numbers against the depth; returns them as a tuple."""
        depth = self.config.num_hidden_layers
        return tuple(check_layer_number(int(layer), depth) for layer in layers)

    def call(
        self,
        inputs: dict[str, Any],
        training: bool | None = None,
        qkv_layers: Sequence[int] | None = None,
        stop_after_qkv: bool = False,
        capture: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        input_ids = inputs["input_ids"]
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            attention_mask = ops.ones_like(input_ids)
        token_type_ids = inputs.get("token_type_ids")
        requested = self.resolve_layers(qkv_layers or ())
        if stop_after_qkv and not requested:
            raise ValueError("stop_after_qkv=True needs at least one layer in qkv_layers")
        last_needed = max(requested) if stop_after_qkv else self.config.num_hidden_layers

        hidden = self.embeddings(input_ids, token_type_ids, training=training)
        if capture is not None:
            capture.append({"embeddings": hidden})
        mask = additive_attention_mask(attention_mask, self.compute_dtype)
        if self.relative_position_bias is not None:  # [B, 1, 1, S] + [1, heads, S, S]
            mask = mask + self.relative_position_bias(input_ids)
        captured: dict[int, tuple[Any, Any, Any]] = {}
        for number, block in enumerate(self.blocks[:last_needed], start=1):
            qkv = block.project_qkv(hidden)
            if number in requested:
                captured[number] = qkv
            if number == last_needed and stop_after_qkv:
                break
            inner = None if capture is None else {}
            hidden = block.finish(hidden, qkv, mask, training, capture=inner)
            if capture is not None:
                capture.append(inner)

        outputs: dict[str, Any] = {}
        if not stop_after_qkv:
            outputs["last_hidden_state"] = hidden
            outputs["pooler_output"] = self.pooler(hidden[:, 0])
        if requested:
            outputs["qkv"] = tuple(captured[layer] for layer in requested)
        return outputs

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["config"] = self.config.to_dict()
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Encoder:
        config = dict(config)
        return cls(config.pop("config"), **config)


def copy_encoder(encoder: Encoder, dtype: Any = "float32", name: str | None = None) -> Encoder:
    """A new `Encoder` with the same config and weights under another dtype policy.

    Export and saving use a float32 copy of a model trained under mixed precision.

    Args:
        encoder: the source encoder.
        dtype: Keras dtype policy of the copy.
        name: name of the copy (default: the source's).

    Returns:
        The copy.
    """
    copy = Encoder(encoder.config, name=name or encoder.name, dtype=dtype)
    copy_weights(encoder, copy)
    return copy


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Assign `source`'s weights to `target` of the same architecture, cast to its dtypes.

    The one weight copy of the project (a float32 copy for export or saving, an
    assistant re-built for the next stage, a classifier's float32 twin).

    Raises:
        ValueError: the two models' weights differ in number, path or shape.
    """
    if len(target.weights) != len(source.weights):
        raise ValueError(f"cannot copy {source.name} into {target.name}: {len(source.weights)} "
                         f"weights, the target has {len(target.weights)}")
    def inner(variable: Any) -> str:  # the path below the model's name
        return variable.path.split("/", 1)[1] if "/" in variable.path else variable.path

    for to, frm in zip(target.weights, source.weights, strict=True):
        if inner(to) != inner(frm) or tuple(to.shape) != tuple(frm.shape):
            raise ValueError(f"cannot copy {source.name} into {target.name}: weight {frm.path} "
                             f"{tuple(frm.shape)} does not match {to.path} {tuple(to.shape)}")
        to.assign(ops.cast(frm, to.dtype))


def non_finite_weights(model: keras.Model) -> list[str]:
    """Paths of `model`'s weights that hold a NaN or an infinity (corrupt weights)."""
    import numpy as np

    return [w.path for w in model.weights
            if not np.isfinite(np.asarray(ops.convert_to_numpy(w), np.float64)).all()]
