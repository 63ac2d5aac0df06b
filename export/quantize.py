"""Dynamic int8 quantization of an exported (fused or plain) ONNX graph.

Owns: the int8 quantization settings. Imports: `export.errors`, `export.logs`.

Weights are stored as signed int8 per output channel (per-tensor scales cost about four
points of cosine on real MiniLM weights, 7-bit `reduce_range` far more); activations
are quantized on the fly. `DefaultTensorType` tells the quantizer the element type of
tensors its shape inference cannot type, which happens behind the fused com.microsoft
operators.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from export.errors import ExportError
from export.logs import quiet

logger = logging.getLogger(__name__)

DEFAULT_OP_TYPES: tuple[str, ...] | None = None
"""None quantizes every operator type onnxruntime's dynamic quantizer supports."""


def quantize_int8(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    per_channel: bool = True,
    op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
    nodes_to_exclude: Sequence[str] = (),
) -> None:
    """Write `destination`, the dynamic-int8 version of the ONNX model at `source`.

    Args:
        source: float32 ONNX model file.
        destination: output file.
        per_channel: one weight scale per output channel (recommended).
        op_types: operator types to quantize (e.g. `("MatMul", "Attention")`), or None
            for all supported ones.
        nodes_to_exclude: node names kept in float32.

    Raises:
        ExportError: onnxruntime's quantizer failed.

    Example:
    >>> quantize_int8("out/model.onnx", "out/model.int8.onnx")
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with quiet():
            quantize_dynamic(
                os.fspath(source),
                os.fspath(destination),
                op_types_to_quantize=list(op_types) if op_types else None,
                per_channel=per_channel,
                reduce_range=False,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(nodes_to_exclude) or None,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    except Exception as err:  # the quantizer raises assorted exception types
        raise ExportError(f"int8 quantization of {os.fspath(source)} failed: {err}") from err
    logger.info("wrote %s (%.1f MB)", destination, os.path.getsize(destination) / 1e6)
