"""Keras -> ONNX through tf2onnx, from a float32 copy, with a checked signature.

Owns: the exported signature, the float32 copy for export and the tf2onnx conversion.
Pooling is `tf_minilm.model.pooling`'s. Imports: `export.errors`, `export.logs`,
`tf_minilm.constants`, `tf_minilm.model`.

The exported graph takes three int64 [batch, seq] inputs `input_ids`,
`attention_mask` and `token_type_ids`. `embedding_function` gives the encoder graph
its outputs `last_hidden_state` [batch, seq, hidden] and `sentence_embedding`
[batch, hidden] (mean- or CLS-pooled, L2-normalised unless the model declares no
`Normalize`); `function_to_onnx` converts any
`tf.function` with that input signature that returns a dict of named tensors (for
example a classifier head's `{"logits": ...}`).

The exported graph's structure never depends on the weight values. tf2onnx freezes the
variables into constants and then runs grappler's constant folding, which simplifies
arithmetic with a neutral constant (`x + 0`, `x * 1`, ...) whenever it can prove the
shapes equal. A bias that is exactly zero (a fresh Dense, or a student layer that
MiniLM distillation never trains past its Q/K/V projections) then loses its `Add`, and
onnxruntime's fusions, which match the full MatMul + bias subgraph, silently skip that
layer. `function_to_onnx` therefore freezes the function itself, marks every frozen
weight read that feeds elementwise arithmetic `_grappler_do_not_remove` (grappler
neither folds a preserved node nor sees through it, so the arithmetic keeps its
operands), and hands the graph to `tf2onnx.convert.from_graph_def`, which runs the
same grappler and ONNX optimisation as `from_function`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from export.errors import ExportError
from export.logs import quiet
from tf_minilm.constants import INPUT_NAMES

logger = logging.getLogger(__name__)

MIN_OPSET = 13
MAX_OPSET = 18
DEFAULT_OPSET = 17
ARITHMETIC_OPS = frozenset({"Add", "AddV2", "BiasAdd", "Sub", "Mul", "RealDiv", "Div"})
"""TensorFlow ops grappler simplifies when one operand is a neutral constant (0 or 1)."""
PASS_THROUGH_OPS = frozenset({"Identity", "Cast"})
"""Ops between a weight read and the arithmetic that consumes it."""
PROTECT_ATTR = "_grappler_do_not_remove"
STAND_IN_MIN_ELEMENTS = 1024
"""Float32 constants with at least this many elements convert as stand-ins (`stand_in_weights`)."""
STAND_IN_BASE = 4096.0


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
    from tf_minilm.model.pooling import PoolingError, PoolingSpec

    try:
        return PoolingSpec(pooling).mode
    except PoolingError as err:
        raise ExportError(f"pooling: {err}") from err


def input_signature() -> list[Any]:
    """The three int64 [None, None] `tf.TensorSpec`s named as in `INPUT_NAMES`."""
    import tensorflow as tf

    return [tf.TensorSpec((None, None), tf.int64, name=name) for name in INPUT_NAMES]


def float32_copy(encoder: Any) -> Any:
    """`encoder` with float32 variables and compute: itself when it is float32, else a new
    `Encoder` holding its weights.

    A model built under `mixed_bfloat16` exports a graph onnxruntime refuses, so the
    export always converts a float32 model; one that is float32 already is not copied
    (a base-size encoder's copy is 440 MB more memory, and the export only reads it).

    Args:
        encoder: a `tf_minilm.model.encoder.Encoder` under any dtype policy.

    Returns:
        The float32 encoder (the original is left untouched).
    """
    from tf_minilm.model.encoder import Encoder, copy_encoder

    if not isinstance(encoder, Encoder):
        raise ExportError(f"expected a tf_minilm Encoder, got {type(encoder).__name__}")
    policy = encoder.dtype_policy
    if policy.compute_dtype == "float32" and policy.variable_dtype == "float32":
        return encoder
    try:
        return copy_encoder(encoder, "float32")
    except ValueError as err:
        raise ExportError(f"cannot copy {encoder.name} to float32: {err}") from err


def embedding_function(encoder: Any, pooling: str = "mean", normalize: bool = True) -> Any:
    """A `tf.function` over the three int64 inputs returning the embedding outputs.

    Args:
        encoder: a float32 `Encoder` (see `float32_copy`).
        pooling: "mean" (over real tokens) or "cls" (first token).
        normalize: L2-normalise `sentence_embedding` (sentence-transformers' `Normalize`).

    Returns:
        A `tf.function` with `input_signature()` returning
        `{"last_hidden_state": [B, S, H], "sentence_embedding": [B, H]}` in float32.
    """
    import tensorflow as tf

    from tf_minilm.model.pooling import PoolingSpec, sentence_embedding

    spec = PoolingSpec(check_pooling(pooling), normalize=bool(normalize))

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
            "sentence_embedding": sentence_embedding(hidden, attention_mask, spec),
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


def protect_weight_reads(graph_def: Any) -> int:
    """Mark, in place, the frozen weight reads that feed elementwise arithmetic.

    A frozen variable read is an `Identity` of a `Const`. Marked
    `_grappler_do_not_remove`, grappler keeps it as it is, so `x + bias` stays an
    `Add` (and `x * gamma` a `Mul`) even when the bias is all zeros or gamma all ones;
    tf2onnx's identity optimiser then removes the `Identity`, leaving the weight as the
    `Add`'s initializer operand. Values are untouched. (Marking the `Add` itself does
    not help: grappler then keeps the node's name but rewrites it into an `Identity`.)

    Args:
        graph_def: a frozen `tf.compat.v1.GraphDef` (function bodies are not visited;
            `convert_variables_to_constants_v2(aggressive_inlining=True)` inlines them).

    Returns:
        How many reads were marked.
    """
    nodes = {node.name: node for node in graph_def.node}
    consumers: dict[str, list[Any]] = {}
    for node in graph_def.node:
        for name in node.input:
            if not name.startswith("^"):
                consumers.setdefault(name.split(":")[0], []).append(node)

    def feeds_arithmetic(name: str, depth: int = 0) -> bool:
        for node in consumers.get(name, ()):
            if node.op in ARITHMETIC_OPS:
                return True
            if node.op in PASS_THROUGH_OPS and depth < 8 and feeds_arithmetic(node.name, depth + 1):
                return True
        return False

    marked = 0
    for node in graph_def.node:
        if node.op != "Identity" or not node.input:
            continue
        source = nodes.get(node.input[0].split(":")[0])
        if source is not None and source.op == "Const" and feeds_arithmetic(node.name):
            node.attr[PROTECT_ATTR].b = True
            marked += 1
    return marked


def _convert(function: Any, signature: list[Any], opset: int, stand_ins: bool = True,
             check: Callable[[Any], None] | None = None) -> Any:
    """`tf2onnx.convert.from_graph_def` of the frozen function, with the weight reads
    protected before grappler and (`stand_ins`) the large weights as graph inputs while
    it runs, written in as initializers afterwards (`freeze_with_weights_as_inputs`);
    `check` sees the converted graph before that."""
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    concrete = function.get_concrete_function(*signature)
    input_names = [t.name for t in concrete.inputs if t.dtype != tf.dtypes.resource]
    output_names = [t.name for t in concrete.outputs if t.dtype != tf.dtypes.resource]
    weights: dict[str, Any] = {}
    with tf.device("/cpu:0"):
        if stand_ins:
            graph_def, weights = freeze_with_weights_as_inputs(concrete)
        else:
            frozen = convert_variables_to_constants_v2(
                concrete, lower_control_flow=False, aggressive_inlining=True
            )
            graph_def = frozen.graph.as_graph_def(add_shapes=True)
            del frozen  # its graph holds a copy of every weight
    graph_def = tf2onnx.tf_loader.fix_freezing_errors_part2(graph_def)
    marked = protect_weight_reads(graph_def)
    logger.debug("protected %d weight reads from grappler's arithmetic simplification", marked)
    logger.debug("converting with %d weights as inputs (%.1f MB kept aside)", len(weights),
                 sum(value.nbytes for value in weights.values()) / 1e6)
    renames = tf2onnx.convert.tensor_names_from_structed(concrete, input_names, output_names)
    with _optimizer_errors_raised():
        model, _ = tf2onnx.convert.from_graph_def(
            graph_def, name=concrete.name, input_names=input_names + list(weights),
            output_names=output_names, opset=opset, tensors_to_rename=renames)
    del graph_def
    if check is not None:
        check(model)
    restore_weights(model, weights)
    return model


def freeze_with_weights_as_inputs(concrete: Any) -> tuple[Any, dict[str, Any]]:
    """Freeze `concrete` as `convert_variables_to_constants_v2` does, except that every
    large float32 variable becomes a `Placeholder` of its shape; return the graph and them.

    With the values in the graph, freezing took about 9 copies of the weights and
    tf2onnx's ONNX optimiser passes one more per pass (some 20 passes): about 250 bytes of
    memory per parameter (9.2 GB for a 2 x 768 encoder). As placeholders they cost
    nothing there, and grappler and tf2onnx convert the same graph (`restore_weights`
    turns them into the initializers they would have been; a test checks the result is
    the frozen-values export node for node). The freezing steps are TensorFlow's own
    (`convert_to_constants`): only the values of the large weights are held aside, as
    the variables' NumPy views, and the Const nodes that would hold them are made
    placeholders; small constants (biases, LayerNorms, scalars) stay values, as grappler
    needs them to be.

    Returns:
        (GraphDef with shapes, placeholder name `NAME:0` -> the weight's NumPy array).
    """
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants

    class _WeightsAside(convert_to_constants._FunctionConverterDataInEager):
        def _build_tensor_data(self) -> None:
            super()._build_tensor_data()
            for name, data in list(self._tensor_data.items()):
                if data.numpy.dtype == np.float32 and data.numpy.size >= STAND_IN_MIN_ELEMENTS:
                    aside[name] = data.numpy
                    self._tensor_data[name] = data._replace(numpy=np.float32(0))

    aside: dict[str, Any] = {}
    converter = _WeightsAside(func=concrete, lower_control_flow=False,
                              aggressive_inlining=True)
    graph_def, _ = convert_to_constants._replace_variables_by_constants(converter)
    del converter
    for node in graph_def.node:
        if node.name in aside:
            if node.op != "Const":
                raise ExportError(f"weight {node.name} froze into a {node.op}, not a Const")
            node.op = "Placeholder"
            node.attr.pop("value")
            node.attr["shape"].shape.CopyFrom(
                tf.TensorShape(aside[node.name].shape).as_proto())
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
    return graph.as_graph_def(add_shapes=True), {f"{name}:0": value
                                                 for name, value in aside.items()}


def restore_weights(model: Any, weights: dict[str, Any]) -> None:
    """Turn the stand-in inputs of the converted model into initializers, in place
    (emptying `weights`).

    Raises:
        ExportError: a stand-in that is no longer an input of the graph with the
            weight's shape.
    """
    from onnx import numpy_helper

    inputs = {value.name: value for value in model.graph.input}
    for name in list(weights):
        value = weights.pop(name)  # each array is freed once it is an initializer
        if name not in inputs:
            used = any(name in node.input for node in model.graph.node)
            if used:
                raise ExportError(f"weight {name} is used but is no input of the converted "
                                  "graph")
            continue  # not reached by the outputs
        dims = [dim.dim_value for dim in inputs[name].type.tensor_type.shape.dim]
        if dims != list(value.shape):
            raise ExportError(f"weight {name} has shape {list(value.shape)}, its input in the "
                              f"converted graph {dims}")
        model.graph.input.remove(inputs[name])
        model.graph.initializer.append(numpy_helper.from_array(value, name))


@contextlib.contextmanager
def _optimizer_errors_raised() -> Any:
    """Run tf2onnx's ONNX optimisers without a deep copy of the graph before each one.

    By default tf2onnx copies the whole graph, weights included, before every optimiser
    pass so that it can fall back when one fails; for a 768-wide model those copies are
    most of the conversion's memory (a 2 x 768 BERT encoder: 14.1 GB peak with them,
    9.2 GB without). Setting `TF2ONNX_CATCH_ERRORS` (tf2onnx 1.17 reads any value as
    "do not catch") turns the copies off; an optimiser's error then fails the export,
    which `function_to_onnx` reports as an `ExportError`.
    """
    name = "TF2ONNX_CATCH_ERRORS"
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


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
            model = _convert(function, list(signature), opset, check=_check_graph)
    except ExportError:
        raise
    except Exception as err:  # tf2onnx raises many exception types
        raise ExportError(f"tf2onnx could not convert the model at opset {opset}: {err}") from err
    got_inputs = [value.name for value in model.graph.input]
    if tuple(got_inputs) != INPUT_NAMES:
        raise ExportError(f"converted graph has inputs {got_inputs}, expected {list(INPUT_NAMES)}")
    if path is not None:
        onnx.save(model, os.fspath(path))
    logger.info("converted to ONNX opset %d: %d nodes, outputs %s", opset, len(model.graph.node),
                [value.name for value in model.graph.output])
    return model


def _check_graph(model: Any) -> None:
    """Every op converted and the graph valid ONNX; run before the large weights are
    written in, so the checker serialises a graph of a few megabytes."""
    import onnx

    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
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
