"""SmoothQuant-style rescaling of a fused float32 encoder graph before dynamic int8.

Owns: smoothing sites, per-channel activation maxima on calibration feeds and the exact
rescaling. Imports: `export.errors`, onnx, onnxruntime. Used by the int8 ladder as one
of the remedies it tries when plain dynamic int8 misses the floor (the LayerNorm-fed
sites only: on all-MiniLM-L6-v2 smoothing the GELU-fed products made int8 worse,
`benchmarks/int8_sweep.py`); written here because onnxruntime's dynamic quantizer has
no smoothing.

onnxruntime's dynamic quantizer gives each activation tensor one scale, so a few
outlier channels of BERT hidden states (tens of times larger than the rest) leave the
other channels with a handful of int8 levels. Smoothing divides input channel j of a
quantized matrix product by `s_j` and multiplies row j of its weight by `s_j`:

    s_j = max|x_j| ** alpha / max|W_j,:| ** (1 - alpha)

which is exact in float32 (up to rounding) and moves range from the activation into
the per-channel-quantized weight. Three kinds of consumers are handled:

- `Attention` / `MatMul` fed by a LayerNorm (`EmbedLayerNormalization`,
  `SkipLayerNormalization`): the LayerNorm output also feeds the next residual add, so
  its gamma/beta cannot absorb `1/s`; a `Mul` by `1/s` is inserted in front of the
  consumer only (elementwise on [batch, seq, hidden], cheap next to the product).
- `MatMul` fed by `BiasGelu` (the FFN output projection): a `Mul` as well.
- `MatMul` fed by `Attention` (the attention output projection): `1/s` is folded into
  the V columns of the Attention's packed QKV weight and bias (the attention output is
  a convex combination of V rows, so per-channel scaling passes through exactly); no
  extra node.

Per-channel activation maxima come from running the float32 graph on calibration
feeds (`activation_channel_max`).

Caveat measured on all-MiniLM-L6-v2 (benchmarks/int8_sweep.py): on a CPU without VNNI
(AVX2 only) onnxruntime's u8 x s8 kernel sums pairs of products in saturating int16,
and smoothing makes the weight rows of outlier channels large, so smoothed graphs must
be quantized with QUInt8 weights there (exact u8 x u8 kernel, slower); with QInt8
weights they come out worse than unsmoothed ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from export.errors import ExportError

logger = logging.getLogger(__name__)

LAYER_NORM_OPS = ("EmbedLayerNormalization", "SkipLayerNormalization", "LayerNormalization")
GELU_OPS = ("BiasGelu", "Gelu", "FastGelu")
KINDS = ("ln_attention", "ln_matmul", "gelu_matmul", "attention_matmul")
"""Smoothing sites: LayerNorm -> Attention, LayerNorm -> MatMul, Gelu -> MatMul,
Attention -> MatMul (the last folded into the Attention's V weights, no extra node)."""
DEFAULT_ALPHA = 0.5
MIN_SCALE = 1e-5


def _initializers(model: Any) -> dict[str, Any]:
    return {init.name: init for init in model.graph.initializer}


def _producers(model: Any) -> dict[str, Any]:
    return {output: node for node in model.graph.node for output in node.output}


def _consumers(model: Any) -> dict[str, list[Any]]:
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def find_sites(model: Any, kinds: Iterable[str] = KINDS) -> list[dict[str, Any]]:
    """The quantizable products whose input channels can be smoothed.

    Args:
        model: a fused float32 `onnx.ModelProto`.
        kinds: which of `KINDS` to return.

    Returns:
        One dict per site: `kind`, `node` (the consumer's name), `input` (the activation
        tensor), `weight` (its [in, out] initializer name) and, for "attention_matmul",
        `attention` (the producing Attention node's name).
    """
    kinds = set(kinds)
    unknown = kinds - set(KINDS)
    if unknown:
        raise ExportError(f"unknown smoothing site kinds {sorted(unknown)}; choose from {KINDS}")
    inits = _initializers(model)
    producers = _producers(model)
    consumers = _consumers(model)
    sites = []
    for node in model.graph.node:
        if node.op_type not in ("Attention", "MatMul") or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight not in inits or len(inits[weight].dims) != 2:
            continue
        source = producers.get(node.input[0])
        if source is None:
            continue
        kind = None
        if source.op_type in LAYER_NORM_OPS and node.input[0] == source.output[0]:
            kind = "ln_attention" if node.op_type == "Attention" else "ln_matmul"
        elif source.op_type in GELU_OPS and node.op_type == "MatMul":
            kind = "gelu_matmul"
        elif (source.op_type == "Attention" and node.op_type == "MatMul"
              and len(consumers.get(node.input[0], [])) == 1
              and not any(a.name == "qkv_hidden_sizes" for a in source.attribute)
              and source.input[1] in inits and len(source.input) > 2
              and source.input[2] in inits):
            kind = "attention_matmul"
        if kind in kinds:
            site = {"kind": kind, "node": node.name, "input": node.input[0], "weight": weight}
            if kind == "attention_matmul":
                site["attention"] = source.name
            sites.append(site)
    return sites


def activation_channel_max(
    model: Any, feeds: Sequence[dict[str, np.ndarray]], tensors: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-channel max |x| of `tensors` ([batch, seq, channels]) over real tokens.

    Args:
        model: float32 `onnx.ModelProto` (not modified).
        feeds: onnxruntime feed dicts, each with an `attention_mask` [batch, seq].
        tensors: names of intermediate tensors.

    Returns:
        `{name: float32 [channels]}`.
    """
    import onnx
    import onnxruntime as ort

    # The tensors become graph outputs of the serialised probe only: adding them to
    # `model` for the serialisation and removing them after, instead of probing a copy,
    # spares a second copy of a base-size model's weights.
    graph_outputs = model.graph.output
    count = len(graph_outputs)
    present = {output.name for output in graph_outputs}
    try:
        for name in tensors:
            if name not in present:
                graph_outputs.append(
                    onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        probe = model.SerializeToString()
    finally:
        del graph_outputs[count:]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe, options, providers=["CPUExecutionProvider"])
    del probe
    names = list(tensors)
    maxima: dict[str, np.ndarray] = {}
    for feed in feeds:
        real = feed["attention_mask"].astype(bool)
        for name, value in zip(names, session.run(names, feed), strict=True):
            if value.ndim != 3 or value.shape[:2] != real.shape:
                raise ExportError(f"tensor {name} has shape {value.shape}; expected "
                                  f"[batch, seq, channels] with [batch, seq] = {real.shape}")
            peak = np.abs(value[real]).max(axis=0)
            maxima[name] = peak if name not in maxima else np.maximum(maxima[name], peak)
    return {name: value.astype(np.float32) for name, value in maxima.items()}


def smoothing_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """`s_j = act_max_j ** alpha / weight_max_j ** (1 - alpha)`, with zero channels kept at 1."""
    act = np.asarray(act_max, np.float64)
    wgt = np.asarray(weight_max, np.float64)
    scales = np.ones_like(act)
    ok = (act > 0) & (wgt > 0)
    scales[ok] = act[ok] ** alpha / wgt[ok] ** (1.0 - alpha)
    return np.maximum(scales, MIN_SCALE).astype(np.float32)


def smooth_model(
    model: Any,
    act_max: dict[str, np.ndarray],
    alpha: float = DEFAULT_ALPHA,
    kinds: Iterable[str] = KINDS,
) -> list[dict[str, Any]]:
    """Rescale, in place, the input channels of every smoothing site of `model`.

    Args:
        model: fused float32 `onnx.ModelProto`; modified in place.
        act_max: per-channel max |x| for each site's input (`activation_channel_max`).
        alpha: migration strength in [0, 1]; 0 leaves activations alone, 1 moves all of
            their range into the weights.
        kinds: which of `KINDS` to smooth.

    Returns:
        The sites smoothed, each with the ratio `act_range` of its activation's largest
        to median channel maximum before and after.
    """
    from onnx import helper, numpy_helper

    if not 0.0 <= alpha <= 1.0:
        raise ExportError(f"smoothing alpha must be in [0, 1], got {alpha}")
    inits = _initializers(model)
    nodes = {node.name: node for node in model.graph.node}
    sites = find_sites(model, kinds)

    def replace(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    shared = {}
    for init_name in {s["weight"] for s in sites}:
        shared[init_name] = sum(s["weight"] == init_name for s in sites)
    done = []
    new_nodes: list[tuple[int, Any]] = []
    for site in sites:
        if shared[site["weight"]] > 1:
            logger.warning("weight %s is shared; not smoothing %s", site["weight"], site["node"])
            continue
        if site["input"] not in act_max:
            raise ExportError(f"no activation maxima for {site['input']} (input of {site['node']})")
        node = nodes[site["node"]]
        weight = numpy_helper.to_array(inits[site["weight"]]).astype(np.float32)
        peak = np.asarray(act_max[site["input"]], np.float32)
        if peak.shape != (weight.shape[0],):
            raise ExportError(f"activation maxima of {site['input']} have shape {peak.shape}; "
                              f"weight {site['weight']} has {weight.shape[0]} input channels")
        scales = smoothing_scales(peak, np.abs(weight).max(axis=1), alpha)
        replace(site["weight"], weight * scales[:, None])
        if site["kind"] == "attention_matmul":
            attention = nodes[site["attention"]]
            qkv = numpy_helper.to_array(inits[attention.input[1]]).astype(np.float32)
            bias = numpy_helper.to_array(inits[attention.input[2]]).astype(np.float32)
            hidden = weight.shape[0]
            if qkv.shape[1] != 3 * hidden or bias.shape != (3 * hidden,):
                raise ExportError(f"Attention {attention.name} packs QKV as {qkv.shape}; "
                                  f"expected [*, {3 * hidden}]")
            qkv[:, 2 * hidden:] /= scales
            bias[2 * hidden:] /= scales
            replace(attention.input[1], qkv)
            replace(attention.input[2], bias)
        else:
            inverse = f"{node.name}__smooth_inv_scale"
            smoothed = f"{node.name}__smoothed_input"
            model.graph.initializer.append(
                numpy_helper.from_array((1.0 / scales).astype(np.float32), inverse))
            mul = helper.make_node("Mul", [site["input"], inverse], [smoothed],
                                   name=f"{node.name}__smooth")
            node.input[0] = smoothed
            new_nodes.append((list(model.graph.node).index(node), mul))
        after = peak / scales
        done.append(dict(site, act_range=[float(peak.max() / np.median(peak)),
                                          float(after.max() / np.median(after))]))
    for index, mul in sorted(new_nodes, key=lambda item: -item[0]):
        model.graph.node.insert(index, mul)
    return done


def smooth_onnx(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    feeds: Sequence[dict[str, np.ndarray]],
    alpha: float = DEFAULT_ALPHA,
    kinds: Iterable[str] = KINDS,
) -> list[dict[str, Any]]:
    """Calibrate on `feeds`, smooth the model at `source` and save it to `destination`.

    Args:
        source: fused float32 ONNX file.
        destination: output file (may equal `source`).
        feeds: calibration batches (onnxruntime feed dicts).
        alpha: migration strength (see `smooth_model`).
        kinds: which of `KINDS` to smooth.

    Returns:
        The sites smoothed (see `smooth_model`).

    Example:
    >>> sites = smooth_onnx("out/model.onnx", "out/model.smooth.onnx", [feeds], alpha=0.5)
    """
    import onnx

    model = onnx.load(os.fspath(source))
    kinds = tuple(kinds)
    tensors = sorted({site["input"] for site in find_sites(model, kinds)})
    act_max = activation_channel_max(model, feeds, tensors)
    sites = smooth_model(model, act_max, alpha, kinds)
    onnx.save(model, os.fspath(destination))
    logger.info("smoothed %d sites (alpha %.2f)", len(sites), alpha)
    return sites
