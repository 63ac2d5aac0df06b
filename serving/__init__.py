"""Serving of exported tf-minilm models (encoders and classifiers): onnxruntime runtime,
HTTP server, benchmark.

Nothing in this package imports TensorFlow (only the Keras baseline of the benchmark
does, lazily, when a Keras model folder is benchmarked). Public names are imported
lazily so that `import serving` stays cheap.

Example:
>>> from serving import EmbeddingModel
>>> model = EmbeddingModel("runs/student-onnx")
>>> model.encode(["hello world"]).shape
(1, 384)
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "EmbeddingModel": "serving.runtime",
    "Embeddings": "serving.runtime",
    "ModelFolderError": "serving.runtime",
    "ClassifierModel": "serving.classify",
    "Classifications": "serving.classify",
    "open_model": "serving.classify",
    "ServerConfig": "serving.limits",
    "create_app": "serving.server",
    "serve": "serving.server",
    "BackgroundServer": "serving.server",
    "DynamicBatcher": "serving.batching",
    "QueueFullError": "serving.batching",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
