"""onnxruntime transformer fusions (Attention, SkipLayerNormalization, BiasGelu,
EmbedLayerNormalization), applied and then checked, because they fail silently.

Owns: applying and verifying onnxruntime's transformer fusions. Imports:
`export.errors`, `export.logs`, `export.memory`.

onnxruntime's optimizer matches the exact subgraphs PyTorch's HF BERT exports. The
encoder layers are spelled to export those subgraphs (see `tf_minilm.model.layers`);
`prepare_for_fusion` undoes the two rewrites tf2onnx/grappler make on top:

- a mean over the last axis of a rank-3 tensor becomes `GlobalAveragePool`
  (tf2onnx's global-pool optimizer); it is put back as `ReduceMean(axes=[-1])`;
- the attention scale `scores / sqrt(d)` becomes `scores * (1 / sqrt(d))` (grappler
  constant folding); onnxruntime takes the first `Mul` parent of the mask `Add` as the
  mask, so the scale is put back as a `Div`.

Both are exact rewrites (the second up to one float rounding of the scale). A third
grappler rewrite, dropping `x + bias` / `x * gamma` when the weight is all zeros / all
ones (a fresh or partly distilled student), is prevented at conversion instead
(`export.convert.protect_weight_reads`), so the graph structure, and therefore the
fusions, never depend on weight values.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from export.errors import FusionError
from export.logs import quiet
from export.memory import LARGE_INITIALIZER_BYTES, read_weights_back, weights_on_disk

logger = logging.getLogger(__name__)

GELU_OPS = ("BiasGelu", "FastGelu", "Gelu")
ATTENTION_OPS = ("Attention", "MultiHeadAttention")


def _producers(model: Any) -> dict[str, Any]:
    return {output: node for node in model.graph.node for output in node.output}


def _hollow_copy(model: Any) -> Any:
    """A copy of `model` whose large initializers are typed graph inputs instead.

    Shape inference serialises the whole model in and out (four copies of a base-size
    model's 440 MB of weights at its peak); it needs the weights' types and shapes, not
    their values, except for small constants such as Reshape targets, which stay.
    """
    from onnx import helper

    graph = model.graph
    small, stand_ins = [], []
    for init in graph.initializer:
        if init.ByteSize() >= LARGE_INITIALIZER_BYTES:
            stand_ins.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                           list(init.dims)))
        else:
            small.append(init)
    hollow = helper.make_graph(list(graph.node), graph.name, [*graph.input, *stand_ins],
                               list(graph.output), initializer=small)
    return helper.make_model(hollow, opset_imports=list(model.opset_import),
                             ir_version=model.ir_version)


def _ranks(model: Any) -> dict[str, int]:
    """Rank of every tensor ONNX shape inference can tell (graph inputs included)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(_hollow_copy(model))
    ranks = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            ranks[value.name] = len(tensor_type.shape.dim)
    return ranks


def _restore_reduce_mean(model: Any) -> int:
    """GlobalAveragePool on rank-3 tensors -> ReduceMean(axes=[-1], keepdims=1)."""
    from onnx import helper, numpy_helper

    opset = next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx"))
    pools = [node for node in model.graph.node if node.op_type == "GlobalAveragePool"]
    if not pools:
        return 0
    ranks = _ranks(model)
    rewritten = 0
    for node in pools:
        if ranks.get(node.input[0]) != 3:
            continue
        node.op_type = "ReduceMean"
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("keepdims", 1))
        if opset >= 18:
            axes_name = f"{node.name}__axes"
            model.graph.initializer.append(
                numpy_helper.from_array(np.array([-1], dtype=np.int64), axes_name)
            )
            node.input.append(axes_name)
        else:
            node.attribute.append(helper.make_attribute("axes", [-1]))
        rewritten += 1
    return rewritten


def _restore_scale_div(model: Any) -> int:
    """Softmax(Add(Mul(MatMul, c), mask)) -> Softmax(Add(Div(MatMul, 1 / c), mask))."""
    from onnx import numpy_helper

    producers = _producers(model)
    initializers = {init.name: init for init in model.graph.initializer}
    rewritten = 0
    for softmax in [node for node in model.graph.node if node.op_type == "Softmax"]:
        add = producers.get(softmax.input[0])
        if add is None or add.op_type != "Add":
            continue
        for name in add.input:
            mul = producers.get(name)
            if mul is None or mul.op_type != "Mul":
                continue
            constants = [i for i in mul.input if i in initializers]
            others = [i for i in mul.input if i not in initializers]
            if len(constants) != 1 or len(others) != 1:
                continue
            source = producers.get(others[0])
            value = numpy_helper.to_array(initializers[constants[0]])
            if source is None or source.op_type != "MatMul" or value.size != 1 or value.item() == 0:
                continue
            divisor_name = f"{mul.name}__divisor"
            divisor = np.asarray(1.0 / float(value.item()), dtype=value.dtype)
            model.graph.initializer.append(numpy_helper.from_array(divisor, divisor_name))
            initializers[divisor_name] = model.graph.initializer[-1]
            mul.op_type = "Div"
            del mul.input[:]
            mul.input.extend([others[0], divisor_name])
            rewritten += 1
    return rewritten


def prepare_for_fusion(model: Any) -> dict[str, int]:
    """Rewrite, in place, the tf2onnx spellings onnxruntime's matchers do not know.

    Args:
        model: an `onnx.ModelProto` from `export.convert`.

    Returns:
        How many nodes each rewrite changed: `{"reduce_mean": n, "scale_div": m}`.
    """
    return {"reduce_mean": _restore_reduce_mean(model), "scale_div": _restore_scale_div(model)}


UNFUSED_RELATIVE_ATTENTION = (
    "attention stays unfused (MatMul/Softmax): the relative position bias is added to the "
    "scores beside the padding mask, a pattern onnxruntime's BERT attention fusion does "
    "not match (it takes an extra score bias only after a Where-style mask). Rewritten "
    "into onnxruntime's MultiHeadAttention with the summed bias as its attention_bias, it "
    "measured no faster in int8 and at most as fast in fp32, and the packed Attention's "
    "int8 form drops the bias (docs/benchmarks.md#mpnet-attention); a BERT-layout student "
    "(tf-minilm distill --student-layout bert) exports fused")
"""Why an encoder with a relative position bias (MPNet) exports without fused Attention."""


def unfused_operators(relative_attention: bool) -> dict[str, str]:
    """What onnxruntime cannot fuse for an encoder, and why (empty for BERT/RoBERTa).

    Args:
        relative_attention: the encoder adds a relative position bias to its scores.

    Returns:
        `{"Attention": reason}` for relative attention, else `{}`.
    """
    return {"Attention": UNFUSED_RELATIVE_ATTENTION} if relative_attention else {}


def expected_fusions(num_layers: int, embed_layer_norm: bool = True,
                     attention: bool = True) -> dict[str, int]:
    """Fused operator counts a BERT-family encoder of `num_layers` blocks must reach.

    Args:
        num_layers: transformer blocks.
        embed_layer_norm: expect `EmbedLayerNormalization` (BERT position ids, and
            MPNet's, which reach the fused node as explicit position ids; onnxruntime does
            not fuse RoBERTa's padding-offset positions beside its token-type lookup).
        attention: expect fused `Attention` (False for a relative position bias, see
            `unfused_operators`).

    Returns:
        `{"Attention": L, "SkipLayerNormalization": 2L, "Gelu": L,
        "EmbedLayerNormalization": 1 or 0}` where "Attention" counts Attention and
        MultiHeadAttention and "Gelu" counts BiasGelu, FastGelu and Gelu.
    """
    return {
        "Attention": num_layers if attention else 0,
        "SkipLayerNormalization": 2 * num_layers,
        "Gelu": num_layers,
        "EmbedLayerNormalization": 1 if embed_layer_norm else 0,
    }


def grouped_counts(statistics: dict[str, int]) -> dict[str, int]:
    """`get_fused_operator_statistics()` grouped the way `expected_fusions` counts."""
    return {
        "Attention": sum(statistics.get(op, 0) for op in ATTENTION_OPS),
        "SkipLayerNormalization": statistics.get("SkipLayerNormalization", 0),
        "Gelu": sum(statistics.get(op, 0) for op in GELU_OPS),
        "EmbedLayerNormalization": statistics.get("EmbedLayerNormalization", 0),
    }


def check_fusions(statistics: dict[str, int], expected: dict[str, int]) -> None:
    """Raise `FusionError` (with the statistics) unless every expected count is reached."""
    got = grouped_counts(statistics)
    wrong = [f"{name}: expected {count}, got {got.get(name, 0)}"
             for name, count in expected.items() if got.get(name, 0) != count]
    if wrong:
        fused = {op: n for op, n in statistics.items() if n}
        raise FusionError(
            "onnxruntime's transformer optimizer did not fuse the graph as expected ("
            + "; ".join(wrong) + f"). Fused operator statistics: {fused}. The encoder's "
            "forward pass no longer exports the subgraphs onnxruntime matches (see "
            "tf_minilm/model/layers.py); export with --no-optimize to ship the unfused graph.",
            statistics,
        )


def _keep_graph_inputs(optimized: Any, original_inputs: list[Any]) -> None:
    """Put back graph inputs the optimizer pruned because nothing reads them.

    An encoder without token types (MPNet) still takes `token_type_ids`, as every
    exported graph does; onnxruntime's optimizer drops such an unused input, which
    would change the graph's signature with the fusions.
    """
    kept = {value.name for value in optimized.graph.input}
    for position, value in enumerate(original_inputs):
        if value.name not in kept:
            optimized.graph.input.insert(position, value)


def optimize_onnx(
    model: Any,
    path: str | os.PathLike,
    num_heads: int,
    hidden_size: int,
    expected: dict[str, int] | None = None,
) -> dict[str, int]:
    """Apply onnxruntime's BERT fusions to a converted encoder graph and check them.

    Runs `prepare_for_fusion`, then `optimize_model(model_type="bert", opt_level=0)`
    (Python fusions only, so torch is never imported) with the raw 2-D attention mask
    kept as the Attention mask input (correct for any padding side). The large weights
    wait on disk meanwhile (`export.memory.weights_on_disk`: onnxruntime's optimizer
    copies and re-serialises the whole model in each of its two symbolic shape
    inferences), so its copies are of the graph only.

    Args:
        model: the converted `onnx.ModelProto`, rewritten in place (no copy: a
            base-size model's graph is 440 MB); save it first to keep it. Its large
            initializers are external data afterwards (unusable): pass a model that is
            not needed again.
        path: where to save the optimized model, one file (written only when the check
            passes); a temporary folder beside it holds the weights while the optimizer
            runs.
        num_heads: attention heads.
        hidden_size: model width.
        expected: counts from `expected_fusions`, or None to skip the check.

    Returns:
        The fused operator statistics (`get_fused_operator_statistics()`).

    Raises:
        FusionError: an expected fusion is missing (message includes the statistics).
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    original_inputs = [onnx.ValueInfoProto() for _ in model.graph.input]
    for copy, value in zip(original_inputs, model.graph.input, strict=True):
        copy.CopyFrom(value)
    rewrites = prepare_for_fusion(model)
    logger.debug("pre-fusion rewrites: %s", rewrites)
    options = FusionOptions("bert")
    options.use_raw_attention_mask(True)
    beside = os.path.dirname(os.path.abspath(os.fspath(path)))
    with weights_on_disk(model, beside, chdir=True) as folder:
        with quiet():
            optimized = optimize_model(
                model,
                model_type="bert",
                num_heads=num_heads,
                hidden_size=hidden_size,
                optimization_options=options,
                opt_level=0,
            )
            statistics = {op: int(n)
                          for op, n in optimized.get_fused_operator_statistics().items()}
        read_weights_back(optimized.model, folder)
    _keep_graph_inputs(optimized.model, original_inputs)
    logger.info("fused operators: %s", {op: n for op, n in statistics.items() if n})
    if expected is not None:
        check_fusions(statistics, expected)
    with quiet():  # also adds the com.microsoft opset import the fused nodes need
        optimized.save_model_to_file(os.fspath(path))
    return statistics
