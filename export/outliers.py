"""Outlier channels kept in float32: an exact split of a quantized matrix product.

Owns: finding the input channels of a product whose activations reach far beyond the
rest, and rewriting `y = x W` as `y = (x * m) W + x[:, :, J] W[J, :]` with `m` zero on
the outlier channels `J`. Imports: `tf_minilm.rules`, `export.errors`, `export.smoothing` (its
activation maxima), onnx.

onnxruntime's dynamic quantizer gives an activation tensor one scale; a few channels of
a BERT FFN's GELU output (or of an attention output) tens of times larger than the
rest then leave every other channel a handful of int8 levels. Splitting them off (the
mixed decomposition of LLM.int8()) leaves the int8 product a tensor without them and
computes the outliers' share in a small float32 product ([tokens, |J|] x [|J|, out]),
which the export keeps out of quantization. Exact in float32 up to rounding; costs an
elementwise `Mul`, a `Gather`, the small product and an `Add`. Written here because
onnxruntime's quantizer has no such option.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from export.errors import ExportError
from export.smoothing import GELU_OPS, activation_channel_max
from tf_minilm import rules

logger = logging.getLogger(__name__)

PRODUCER_KINDS = {"gelu": GELU_OPS, "attention": ("Attention",)}
"""Which products are split, by the op producing their input: the FFN output projection
(fed by GELU) and the attention output projection (fed by the fused Attention)."""
DEFAULT_CHANNELS = 16
FP32_SUFFIX = "__outliers_fp32"


def split_sites(model: Any, kinds: Sequence[str]) -> list[Any]:
    """The `MatMul` nodes with a constant weight whose input comes from a `kinds` op."""
    unknown = [kind for kind in kinds if kind not in PRODUCER_KINDS]
    if unknown:
        raise ExportError(f"unknown outlier split kind(s) {unknown}; choose from "
                          f"{sorted(PRODUCER_KINDS)}")
    ops = {op for kind in kinds for op in PRODUCER_KINDS[kind]}
    producers = {output: node for node in model.graph.node for output in node.output}
    weights = {init.name for init in model.graph.initializer}
    return [node for node in model.graph.node
            if node.op_type == "MatMul" and node.input[1] in weights
            and getattr(producers.get(node.input[0]), "op_type", None) in ops]


def split_outlier_channels(model: Any, feeds: Sequence[dict[str, np.ndarray]],
                           kinds: Sequence[str] = ("gelu", "attention"),
                           channels: int = DEFAULT_CHANNELS) -> list[str]:
    """Split, in place, the `channels` largest-range input channels of every site off.

    Args:
        model: a fused float32 `onnx.ModelProto`; modified in place.
        feeds: calibration batches (onnxruntime feed dicts with `attention_mask`).
        kinds: which producers' products to split (keys of `PRODUCER_KINDS`).
        channels: outlier channels per product (capped at half its input width).

    Returns:
        The names of the new float32 products: pass them to the quantizer's
        `nodes_to_exclude`.
    """
    import onnx
    from onnx import helper, numpy_helper

    rules.positive_int(channels, "outlier channels", error=ExportError)
    sites = split_sites(model, kinds)
    if not sites:
        return []
    maxima = activation_channel_max(model, feeds, [node.input[0] for node in sites])
    inits = {init.name: init for init in model.graph.initializer}
    replaced: dict[str, list[Any]] = {}
    kept = []
    for node in sites:
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        peak = maxima[node.input[0]]
        count = min(channels, weight.shape[0] // 2)
        outliers = np.sort(np.argsort(-peak, kind="stable")[:count]).astype(np.int64)
        mask = np.ones(weight.shape[0], np.float32)
        mask[outliers] = 0.0
        base = node.name
        model.graph.initializer.extend([
            numpy_helper.from_array(mask, f"{base}__inlier_mask"),
            numpy_helper.from_array(outliers, f"{base}__outlier_index"),
            numpy_helper.from_array(weight[outliers], f"{base}__outlier_weight"),
        ])
        source, output = node.input[0], node.output[0]
        before = [
            helper.make_node("Mul", [source, f"{base}__inlier_mask"], [f"{base}__inliers"],
                             name=f"{base}__inlier_mask_mul"),
            helper.make_node("Gather", [source, f"{base}__outlier_index"], [f"{base}__outliers"],
                             axis=2, name=f"{base}__outlier_gather"),
        ]
        node.input[0] = f"{base}__inliers"
        node.output[0] = f"{base}__inlier_product"
        after = [
            helper.make_node("MatMul", [f"{base}__outliers", f"{base}__outlier_weight"],
                             [f"{base}__outlier_product"], name=base + FP32_SUFFIX),
            helper.make_node("Add", [f"{base}__inlier_product", f"{base}__outlier_product"],
                             [output], name=f"{base}__outlier_sum"),
        ]
        replaced[base] = before + [node] + after
        kept.append(base + FP32_SUFFIX)
    nodes = []
    for old in model.graph.node:
        for new in replaced.get(old.name, [old]):
            copy = onnx.NodeProto()
            copy.CopyFrom(new)
            nodes.append(copy)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    logger.info("split %d outlier channels off %d products (%s)", channels, len(sites),
                ", ".join(kinds))
    return kept
