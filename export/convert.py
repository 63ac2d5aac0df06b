"""Keras -> ONNX through tf2onnx, from a float32 copy, with a checked signature.

The exported graph takes three int64 [batch, seq] inputs `input_ids`,
`attention_mask` and `token_type_ids`. `embedding_function` gives the encoder graph
its outputs `last_hidden_state` [batch, seq, hidden] and `sentence_embedding`
[batch, hidden] (mean- or CLS-pooled, L2-normalised); `function_to_onnx` converts any
`tf.function` with that input signature that returns a dict of named tensors (for
example a classifier head's `{"logits": ...}`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from export.errors import ExportError
from export.logs import quiet

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
EMBEDDING_OUTPUTS = ("last_hidden_state", "sentence_embedding")
POOLINGS = ("mean", "cls")
MIN_OPSET = 13
MAX_OPSET = 18
DEFAULT_OPSET = 17
COUNT_EPSILON = 1e-9
"""Floor of the real-token count in mean pooling (a row without real tokens pools to 0)."""
NORM_EPSILON = 1e-12
"""Floor of the L2 norm (a zero vector stays zero instead of becoming NaN)."""


def check_opset(opset: int) -> int:
    """Return `opset` if tf2onnx 1.17 can target it (13..18), else raise `ExportError`."""
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ExportError(f"opset must be an integer, got {opset!r}")
    if opset > MAX_OPSET:
        raise ExportError(
            f"opset {opset} is not supported: tf2onnx 1.17 converts opsets {MIN_OPSET}-{MAX_OPSET} "
            f"only (19 and later fail); use --opset {DEFAULT_OPSET}"
        )
    if opset < MIN_OPSET:
        raise ExportError(
            f"opset {opset} is not supported: use {MIN_OPSET}-{MAX_OPSET} (default {DEFAULT_OPSET})"
        )
    return opset


def check_pooling(pooling: str) -> str:
    """Return `pooling` if it is "mean" or "cls", else raise `ExportError`."""
    if pooling not in POOLINGS:
        raise ExportError(f"pooling is {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return pooling


def input_signature() -> list[Any]:
    """The three int64 [None, None] `tf.TensorSpec`s named as in `INPUT_NAMES`."""
    import tensorflow as tf

    return [tf.TensorSpec((None, None), tf.int64, name=name) for name in INPUT_NAMES]


def float32_copy(encoder: Any) -> Any:
    """A new `Encoder` with float32 variables and compute holding `encoder`'s weights.

    A model built under `mixed_bfloat16` exports a graph onnxruntime refuses, so the
    export always converts this copy.

    Args:
        encoder: a `tf_minilm.encoder.Encoder` under any dtype policy.

    Returns:
        The float32 copy (the original is left untouched).
    """
    from keras import ops

    from tf_minilm.encoder import Encoder

    if not isinstance(encoder, Encoder):
        raise ExportError(f"expected a tf_minilm Encoder, got {type(encoder).__name__}")
    copy = Encoder(encoder.config, dtype="float32", name=encoder.name)
    if len(copy.weights) != len(encoder.weights):
        raise ExportError(
            f"cannot copy {encoder.name} to float32: {len(encoder.weights)} weights, "
            f"a fresh encoder of the same config has {len(copy.weights)}"
        )
    for target, source in zip(copy.weights, encoder.weights, strict=True):
        if target.path != source.path or tuple(target.shape) != tuple(source.shape):
            raise ExportError(
                f"cannot copy {encoder.name} to float32: weight {source.path} "
                f"{tuple(source.shape)} does not match {target.path} {tuple(target.shape)}"
            )
        target.assign(ops.cast(source, "float32"))
    return copy


def pool_and_normalize(hidden: Any, attention_mask: Any, pooling: str = "mean") -> Any:
    """[batch, seq, hidden] -> [batch, hidden]: masked mean or first token, L2-normalised."""
    import tensorflow as tf

    check_pooling(pooling)
    if pooling == "cls":
        pooled = hidden[:, 0, :]
    else:
        mask = tf.expand_dims(tf.cast(attention_mask, hidden.dtype), -1)
        total = tf.reduce_sum(hidden * mask, axis=1)
        count = tf.maximum(tf.reduce_sum(mask, axis=1), COUNT_EPSILON)
        pooled = total / count
    norm = tf.sqrt(tf.reduce_sum(pooled * pooled, axis=-1, keepdims=True))
    return pooled / tf.maximum(norm, NORM_EPSILON)


def embedding_function(encoder: Any, pooling: str = "mean") -> Any:
    """A `tf.function` over the three int64 inputs returning the embedding outputs.

    Args:
        encoder: a float32 `Encoder` (see `float32_copy`).
        pooling: "mean" (over real tokens) or "cls" (first token).

    Returns:
        A `tf.function` with `input_signature()` returning
        `{"last_hidden_state": [B, S, H], "sentence_embedding": [B, H]}` in float32.
    """
    import tensorflow as tf

    check_pooling(pooling)

    @tf.function(input_signature=input_signature())
    def embed(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> dict[str, Any]:
        inputs = {
            "input_ids": tf.cast(input_ids, tf.int32),
            "attention_mask": tf.cast(attention_mask, tf.int32),
            "token_type_ids": tf.cast(token_type_ids, tf.int32),
        }
        hidden = tf.cast(encoder(inputs, training=False)["last_hidden_state"], tf.float32)
        return {
            "last_hidden_state": hidden,
            "sentence_embedding": pool_and_normalize(hidden, attention_mask, pooling),
        }

    return embed


def _unconverted_ops(model: Any) -> list[str]:
    """Default-domain op types with no ONNX schema: ops tf2onnx left as they were (`Erfc`)."""
    import onnx

    opset = next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx"))
    missing = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            missing.add(node.op_type)
    return sorted(missing)


def function_to_onnx(
    function: Callable[..., dict[str, Any]],
    opset: int = DEFAULT_OPSET,
    path: str | os.PathLike | None = None,
) -> Any:
    """Convert a `tf.function` of the three int64 inputs to an ONNX model.

    Args:
        function: a `tf.function` whose `input_signature` is `input_signature()` and
            which returns a dict of named tensors (they become the graph outputs).
        opset: ONNX opset, 13-18.
        path: where to save the model, or None.

    Returns:
        The `onnx.ModelProto`.

    Raises:
        ExportError: bad signature or opset, tf2onnx failure, or ops tf2onnx could not
            convert (named in the message).
    """
    import onnx
    import tf2onnx

    opset = check_opset(opset)
    signature = getattr(function, "input_signature", None)
    names = tuple(spec.name for spec in signature or ())
    if names != INPUT_NAMES or any(spec.dtype.name != "int64" for spec in signature):
        raise ExportError(
            f"the function to export must take int64 inputs {', '.join(INPUT_NAMES)}; "
            f"its input_signature is {signature!r}"
        )
    try:
        with quiet():
            model, _ = tf2onnx.convert.from_function(
                function, input_signature=list(signature), opset=opset
            )
    except Exception as err:  # tf2onnx raises many exception types
        raise ExportError(f"tf2onnx could not convert the model at opset {opset}: {err}") from err
    missing = _unconverted_ops(model)
    if missing:
        hint = (
            " (Erfc comes from keras.activations.gelu's exact form; write GELU as "
            "0.5 * x * (1 + erf(x / sqrt(2))))" if "Erfc" in missing else ""
        )
        raise ExportError(
            f"tf2onnx could not convert op(s) {', '.join(missing)} at opset {opset}; the model "
            f"cannot be exported{hint}"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"tf2onnx produced an invalid ONNX graph at opset {opset}: {err}") from err
    got_inputs = [value.name for value in model.graph.input]
    if tuple(got_inputs) != INPUT_NAMES:
        raise ExportError(f"converted graph has inputs {got_inputs}, expected {list(INPUT_NAMES)}")
    if path is not None:
        onnx.save(model, os.fspath(path))
    logger.info("converted to ONNX opset %d: %d nodes, outputs %s", opset, len(model.graph.node),
                [value.name for value in model.graph.output])
    return model


def to_onnx(
    encoder: Any,
    path: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    pooling: str = "mean",
) -> Any:
    """Convert `encoder` (any dtype policy) with the embedding outputs; see `function_to_onnx`.

    Example:
    >>> model = to_onnx(encoder, "model.raw.onnx", opset=17, pooling="mean")
    >>> [o.name for o in model.graph.output]
    ['last_hidden_state', 'sentence_embedding']
    """
    return function_to_onnx(embedding_function(float32_copy(encoder), pooling), opset, path)
