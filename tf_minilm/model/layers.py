"""Keras 3 layers of a BERT-family encoder, written to match Hugging Face numerics.

Owns: the embedding, attention and transformer-block layers, and MPNet's relative
position bias. Imports: Keras and `tf_minilm.rules` only.

The attention is spelled out as Dense -> reshape -> transpose -> matmul with a scale
`Div` and an HF-style additive mask, which is both what `transformers` computes and
the subgraph onnxruntime's transformer optimizer knows how to fuse. GELU is the exact
erf form written out (tf2onnx cannot convert `Erfc`).

onnxruntime's fusions (EmbedLayerNormalization, Attention, SkipLayerNormalization,
BiasGelu) match exact ONNX subgraphs and fail silently otherwise, so the forward pass
is spelled to export (through tf2onnx) as the subgraphs PyTorch's HF BERT exports:
token projections as one einsum (ONNX MatMul + Add; Keras `Dense` on 3-D inputs
exports a Reshape/MatMul/Reshape `tensordot`), LayerNorm as ReduceMean, Sub, Pow,
ReduceMean, Add, Sqrt, Div, Mul, Add (`layer_norm`), GELU as x * (0.5 * (1 + erf)),
embedding lookups as plain gathers (`ops.take` adds a negative-index fix-up) and BERT
position ids as Range(Gather(Shape(ids), 1)) expanded to the ids' shape. The
numerics are those of the plain Keras layers up to float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from tf_minilm import rules

MASK_VALUE = -10000.0
"""Additive mask for padded keys: finite in float16/bfloat16, zero probability after softmax."""


def gelu_erf(x: Any) -> Any:
    """Exact GELU, 0.5 * x * (1 + erf(x / sqrt(2))), in ops tf2onnx exports and ORT fuses.

    The order x * (0.5 * (1 + erf(.))) is the one onnxruntime's Gelu fusion matches.
    """
    return x * (0.5 * (1.0 + ops.erf(x / math.sqrt(2.0))))


def dense_tokens(dense: keras.layers.Dense, x: Any) -> Any:
    """`dense(x)` (no activation) for x [batch, seq, in], exported as one MatMul + Add.

    Uses the layer's own `kernel` and `bias`; computes in the dtype of `x`.
    """
    kernel = ops.cast(dense.kernel, x.dtype)
    return ops.einsum("bsi,io->bso", x, kernel) + ops.cast(dense.bias, x.dtype)


def layer_norm(norm: keras.layers.LayerNormalization, x: Any) -> Any:
    """`norm(x)` over the last axis, computed in float32 as Keras does, HF-spelled.

    (x - mean) / sqrt(mean((x - mean) ** 2) + eps) * gamma + beta, returned in the
    layer's compute dtype; exports as the subgraph onnxruntime fuses to LayerNormalization.
    """
    x = ops.cast(x, "float32")
    mean = ops.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = ops.mean(ops.power(centered, 2.0), axis=-1, keepdims=True)
    normed = centered / ops.sqrt(variance + norm.epsilon)
    out = normed * ops.cast(norm.gamma, "float32") + ops.cast(norm.beta, "float32")
    return ops.cast(out, norm.compute_dtype)


def additive_attention_mask(attention_mask: Any, dtype: str) -> Any:
    """[batch, seq] 1/0 mask -> [batch, 1, 1, seq] additive mask (0 real, -10000 padded).

    The Unsqueeze, Unsqueeze, Cast, Sub, Mul sequence is the HF pattern onnxruntime fuses.
    """
    mask = ops.expand_dims(ops.expand_dims(attention_mask, 1), 1)
    mask = ops.cast(mask, dtype)
    return (1.0 - mask) * MASK_VALUE


def _dense(units: int, name: str, stddev: float, dtype: Any) -> keras.layers.Dense:
    """A Dense layer with its own normal(0, stddev) kernel initialiser and zero bias."""
    return keras.layers.Dense(units, name=name, kernel_initializer=_normal(stddev), dtype=dtype)


def _normal(stddev: float) -> keras.initializers.Initializer:
    """A fresh initialiser: one unseeded instance reused gives every weight the same values."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=stddev)


@keras.saving.register_keras_serializable(package="tf_minilm")
class Embeddings(keras.layers.Layer):
    """Word + position + token-type embeddings, then LayerNorm and dropout.

    Args:
        vocab_size: rows of the word table.
        hidden_size: embedding width.
        max_position_embeddings: rows of the position table.
        type_vocab_size: rows of the token-type table; 0: none (MPNet), token types ignored.
        pad_token_id: padding id; RoBERTa-style position ids are computed from it.
        position_offset: 0 for BERT (positions 0..S-1); `pad_token_id + 1` for
            RoBERTa/XLM-R, whose real tokens take positions offset.. and padding
            takes `pad_token_id`, as in HF `create_position_ids_from_input_ids`.
        layer_norm_eps: LayerNorm epsilon.
        dropout: dropout rate after the LayerNorm.
        initializer_range: stddev of the normal initialiser.

    Example:
    >>> layer = Embeddings(vocab_size=100, hidden_size=16, max_position_embeddings=32,
    ...                    type_vocab_size=2)
    >>> ids = keras.ops.ones((2, 5), dtype="int32")
    >>> layer(ids, keras.ops.zeros((2, 5), dtype="int32")).shape
    (2, 5, 16)
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_position_embeddings: int,
        type_vocab_size: int,
        pad_token_id: int = 0,
        position_offset: int = 0,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.1,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.pad_token_id = pad_token_id
        self.position_offset = position_offset
        self.layer_norm_eps = layer_norm_eps
        self.dropout_rate = dropout
        self.initializer_range = initializer_range
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_eps, dtype=self.dtype_policy, name="layer_norm"
        )
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")

    def build(self, input_shape: Any = None) -> None:
        self.word_embeddings = self.add_weight(
            name="word_embeddings",
            shape=(self.vocab_size, self.hidden_size),
            initializer=_normal(self.initializer_range),
        )
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(self.max_position_embeddings, self.hidden_size),
            initializer=_normal(self.initializer_range),
        )
        self.token_type_embeddings = self.add_weight(
            name="token_type_embeddings",
            shape=(self.type_vocab_size, self.hidden_size),
            initializer=_normal(self.initializer_range),
        ) if self.type_vocab_size else None
        self.layer_norm.build((None, None, self.hidden_size))
        self.built = True

    def position_ids(self, input_ids: Any) -> Any:
        """Position id of every token, following the HF convention of the architecture."""
        if self.position_offset == 0:
            # Range(0, Gather(Shape(ids), 1)) expanded to Shape(ids): the position
            # subgraph onnxruntime's EmbedLayerNormalization fusion recognises.
            shape = tf.shape(input_ids, out_type="int64")
            positions = tf.range(0, tf.gather(shape, 1), 1, dtype="int64")
            return tf.broadcast_to(tf.expand_dims(positions, 0), shape)
        real = ops.cast(ops.not_equal(input_ids, self.pad_token_id), "int32")
        return ops.cumsum(real, axis=1) * real + self.pad_token_id

    def call(self, input_ids: Any, token_type_ids: Any = None, training: bool | None = None) -> Any:
        # Plain gathers: ids are never negative, and `ops.take`'s negative-index
        # fix-up would hide the lookups from onnxruntime's embedding fusion.
        words = tf.gather(self.word_embeddings, input_ids)
        positions = tf.gather(self.position_embeddings, self.position_ids(input_ids))
        hidden = words + positions
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = ops.zeros_like(input_ids)
            hidden = hidden + tf.gather(self.token_type_embeddings, token_type_ids)
        return self.dropout(layer_norm(self.layer_norm, hidden), training=training)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return tuple(input_shape) + (self.hidden_size,)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "max_position_embeddings": self.max_position_embeddings,
                "type_vocab_size": self.type_vocab_size,
                "pad_token_id": self.pad_token_id,
                "position_offset": self.position_offset,
                "layer_norm_eps": self.layer_norm_eps,
                "dropout": self.dropout_rate,
                "initializer_range": self.initializer_range,
            }
        )
        return config


def relative_position_buckets(seq_len: Any, num_buckets: int, max_distance: int) -> Any:
    """[seq, seq] int32 bucket of every (query i, key j) pair, as HF MPNet computes it.

    Half the buckets take keys before the query, half keys after; within each half,
    distances below a quarter of the buckets get one bucket each and longer ones share
    log-spaced buckets up to `max_distance` (further keys take the last bucket).
    """
    positions = tf.range(seq_len, dtype="int32")
    distance = positions[:, None] - positions[None, :]  # query - key = -(key - query)
    half = num_buckets // 2
    side = tf.cast(distance < 0, "int32") * half  # keys after the query
    distance = tf.abs(distance)
    exact = half // 2
    scaled = tf.math.log(tf.cast(tf.maximum(distance, 1), "float32") / exact) \
        / math.log(max_distance / exact) * (half - exact)
    far = tf.minimum(exact + tf.cast(scaled, "int32"), half - 1)
    return side + tf.where(distance < exact, distance, far)


@keras.saving.register_keras_serializable(package="tf_minilm")
class RelativePositionBias(keras.layers.Layer):
    """MPNet's bucketed relative position bias, [1, heads, seq, seq], shared by all layers.

    Args:
        num_buckets: relative-distance buckets (32 in MPNet checkpoints).
        num_heads: attention heads (one bias per bucket and head).
        max_distance: distance from which all keys share the last bucket (128 in MPNet).
        initializer_range: stddev of the normal initialiser.

    Example:
    >>> bias = RelativePositionBias(num_buckets=32, num_heads=4)
    >>> bias(keras.ops.ones((2, 5), "int32")).shape
    (1, 4, 5, 5)
    """

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int = 128,
                 initializer_range: float = 0.02, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_buckets = num_buckets
        self.num_heads = num_heads
        self.max_distance = max_distance
        self.initializer_range = initializer_range

    def build(self, input_shape: Any = None) -> None:
        self.embeddings = self.add_weight(
            name="relative_attention_bias", shape=(self.num_buckets, self.num_heads),
            initializer=_normal(self.initializer_range))
        self.built = True

    def call(self, input_ids: Any) -> Any:
        """The bias for a batch of `input_ids` [batch, seq] (only its length is used)."""
        buckets = relative_position_buckets(tf.shape(input_ids)[1], self.num_buckets,
                                            self.max_distance)
        values = tf.gather(ops.cast(self.embeddings, self.compute_dtype), buckets)
        return ops.expand_dims(ops.transpose(values, (2, 0, 1)), 0)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (1, self.num_heads, input_shape[1], input_shape[1])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"num_buckets": self.num_buckets, "num_heads": self.num_heads,
                       "max_distance": self.max_distance,
                       "initializer_range": self.initializer_range})
        return config


@keras.saving.register_keras_serializable(package="tf_minilm")
class SelfAttention(keras.layers.Layer):
    """Multi-head self-attention whose Q, K and V projections can be returned.

    Args:
        hidden_size: model width (Q/K/V width, heads concatenated).
        num_heads: attention heads; must divide `hidden_size`.
        dropout: dropout on the attention probabilities.
        initializer_range: stddev of the normal initialiser.

    Example:
    >>> attention = SelfAttention(hidden_size=16, num_heads=4)
    >>> x = keras.random.normal((2, 5, 16))
    >>> mask = additive_attention_mask(keras.ops.ones((2, 5)), "float32")
    >>> attention(x, mask).shape
    (2, 5, 16)
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float = 0.1,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        rules.divides(num_heads, hidden_size, "num_heads", "hidden_size", error=ValueError)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.dropout_rate = dropout
        self.initializer_range = initializer_range
        self.query = _dense(hidden_size, "query", initializer_range, self.dtype_policy)
        self.key = _dense(hidden_size, "key", initializer_range, self.dtype_policy)
        self.value = _dense(hidden_size, "value", initializer_range, self.dtype_policy)
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")

    def build(self, input_shape: Any = None) -> None:
        for dense in (self.query, self.key, self.value):
            dense.build((None, None, self.hidden_size))
        self.built = True

    def project_qkv(self, hidden: Any) -> tuple[Any, Any, Any]:
        """Q, K, V projections, each [batch, seq, hidden] with heads concatenated."""
        return (dense_tokens(self.query, hidden), dense_tokens(self.key, hidden),
                dense_tokens(self.value, hidden))

    def _split_heads(self, x: Any) -> Any:
        batch, seq = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (batch, seq, self.num_heads, self.head_size))
        return ops.transpose(x, (0, 2, 1, 3))

    def attend(self, qkv: tuple[Any, Any, Any], additive_mask: Any, training: bool | None) -> Any:
        """Scaled dot-product attention over projected Q/K/V; returns the context [B, S, H]."""
        q, k, v = (self._split_heads(t) for t in qkv)
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(self.head_size)
        scores = scores + ops.cast(additive_mask, scores.dtype)
        probs = self.dropout(ops.softmax(scores, axis=-1), training=training)
        context = ops.transpose(ops.matmul(probs, v), (0, 2, 1, 3))
        batch, seq = ops.shape(context)[0], ops.shape(context)[1]
        return ops.reshape(context, (batch, seq, self.hidden_size))

    def call(self, hidden: Any, additive_mask: Any, training: bool | None = None) -> Any:
        return self.attend(self.project_qkv(hidden), additive_mask, training)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "dropout": self.dropout_rate,
                "initializer_range": self.initializer_range,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tf_minilm")
class TransformerBlock(keras.layers.Layer):
    """Post-LayerNorm BERT block: self-attention, add & norm, erf-GELU FFN, add & norm.

    Args:
        hidden_size: model width.
        num_heads: attention heads.
        intermediate_size: feed-forward width.
        dropout: dropout on sub-layer outputs.
        attention_dropout: dropout on attention probabilities.
        layer_norm_eps: LayerNorm epsilon.
        initializer_range: stddev of the normal initialiser.

    Example:
    >>> block = TransformerBlock(hidden_size=16, num_heads=4, intermediate_size=64)
    >>> x = keras.random.normal((2, 5, 16))
    >>> mask = additive_attention_mask(keras.ops.ones((2, 5)), "float32")
    >>> block(x, mask).shape
    (2, 5, 16)
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.dropout_rate = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        policy = self.dtype_policy
        self.attention = SelfAttention(
            hidden_size, num_heads, attention_dropout, initializer_range, dtype=policy,
            name="attention",
        )
        self.attention_output = _dense(hidden_size, "attention_output", initializer_range, policy)
        self.attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_eps, dtype=policy, name="attention_layer_norm"
        )
        self.intermediate = _dense(intermediate_size, "intermediate", initializer_range, policy)
        self.output_dense = _dense(hidden_size, "output", initializer_range, policy)
        self.output_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_eps, dtype=policy, name="output_layer_norm"
        )
        self.dropout = keras.layers.Dropout(dropout, dtype=policy, name="dropout")

    def build(self, input_shape: Any = None) -> None:
        hidden_shape = (None, None, self.hidden_size)
        self.attention.build(hidden_shape)
        self.attention_output.build(hidden_shape)
        self.attention_layer_norm.build(hidden_shape)
        self.intermediate.build(hidden_shape)
        self.output_dense.build((None, None, self.intermediate_size))
        self.output_layer_norm.build(hidden_shape)
        self.built = True

    def project_qkv(self, hidden: Any) -> tuple[Any, Any, Any]:
        """This block's Q, K, V projections of its input."""
        return self.attention.project_qkv(hidden)

    def finish(
        self, hidden: Any, qkv: tuple[Any, Any, Any], additive_mask: Any, training: bool | None,
        capture: dict[str, Any] | None = None,
    ) -> Any:
        """The rest of the block after the Q/K/V projections.

        `capture`, when given, receives the block's inner activations (`context`: the
        attention heads' outputs concatenated, `attention_norm`, `inner`: the FFN's after
        GELU, `output_norm`), which width pruning ranks (`model.prune`).
        """
        context = self.attention.attend(qkv, additive_mask, training)
        attended = self.dropout(dense_tokens(self.attention_output, context), training=training)
        hidden = layer_norm(self.attention_layer_norm, attended + hidden)
        inner = gelu_erf(dense_tokens(self.intermediate, hidden))
        out = self.dropout(dense_tokens(self.output_dense, inner), training=training)
        output = layer_norm(self.output_layer_norm, out + hidden)
        if capture is not None:
            capture.update(context=context, attention_norm=hidden, inner=inner,
                           output_norm=output)
        return output

    def call(self, hidden: Any, additive_mask: Any, training: bool | None = None) -> Any:
        return self.finish(hidden, self.project_qkv(hidden), additive_mask, training)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "intermediate_size": self.intermediate_size,
                "dropout": self.dropout_rate,
                "attention_dropout": self.attention_dropout,
                "layer_norm_eps": self.layer_norm_eps,
                "initializer_range": self.initializer_range,
            }
        )
        return config
