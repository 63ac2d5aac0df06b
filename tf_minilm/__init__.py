"""tf-minilm: MiniLM / MiniLMv2 distillation of BERT-family encoders in Keras 3.

The public names are imported lazily so that light entry points (for example
`tf-minilm serve`, which must not import TensorFlow) stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "EncoderConfig": "tf_minilm.model.config",
    "ConfigError": "tf_minilm.model.config",
    "Encoder": "tf_minilm.model.encoder",
    "load_hf_checkpoint": "tf_minilm.hf.checkpoints",
    "save_hf_checkpoint": "tf_minilm.hf.checkpoints",
    "CheckpointError": "tf_minilm.hf.errors",
    "build_student": "tf_minilm.model.student",
    "Distiller": "tf_minilm.distill.distiller",
    "SequenceClassifier": "tf_minilm.model.classifier",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tf_minilm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
