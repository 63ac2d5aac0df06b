"""ONNX export of tf-minilm encoders: convert, fuse, quantize, validate, write atomically.

`export_model` runs the whole stage (see `export.pipeline`); the pieces live in one
module each: `export.convert` (Keras -> ONNX through tf2onnx), `export.fusion`
(onnxruntime transformer fusions, checked), `export.quantize` (dynamic int8) and
`export.validate` (parity against the Keras float32 model).

Names are imported lazily (PEP 562) so that `import export` (and the `tf-minilm`
command line) does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ExportError": "export.errors",
    "FusionError": "export.errors",
    "ParityError": "export.errors",
    "export_model": "export.pipeline",
    "load_student": "export.pipeline",
    "embedding_function": "export.convert",
    "float32_copy": "export.convert",
    "function_to_onnx": "export.convert",
    "to_onnx": "export.convert",
    "optimize_onnx": "export.fusion",
    "expected_fusions": "export.fusion",
    "quantize_int8": "export.quantize",
    "validate_export": "export.validate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
