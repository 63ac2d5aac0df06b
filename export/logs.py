"""Silencing the chatty loggers of tf2onnx and onnxruntime's Python tools for a block.

Owns: the list of noisy loggers and the `quiet` block. Imports: nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

# onnxruntime.transformers modules log under their bare module names (they put their
# own folder on sys.path); quantize_dynamic warns on the root logger.
NOISY_LOGGERS = (
    "tf2onnx",
    "onnxruntime",
    "onnx_model",
    "onnx_model_bert",
    "fusion_base",
    "fusion_utils",
    "fusion_attention",
    "fusion_embedlayer",
    "fusion_skiplayernorm",
    "fusion_layernorm",
    "fusion_constant_fold",
    "fusion_rotary_attention",
    "optimizer",
    "shape_infer_helper",
    "symbolic_shape_infer",
    "",
)


@contextlib.contextmanager
def quiet(level: int = logging.ERROR, names: tuple[str, ...] = NOISY_LOGGERS) -> Iterator[None]:
    """Raise the level of `names` (the root logger is "") to `level` inside the block.

    Skipped when the root logger is at DEBUG, so `--log-level DEBUG` shows everything.
    """
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    loggers = [logging.getLogger(name) for name in names]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(level, logger.level))
    try:
        yield
    finally:
        for logger, old in zip(loggers, saved, strict=True):
            logger.setLevel(old)
