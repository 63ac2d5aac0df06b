"""Exceptions of the export stage; every message names the file, check or value at fault.

Owns: `ExportError` and its kinds. Imports: nothing.
"""

from __future__ import annotations


class ExportError(RuntimeError):
    """The export cannot be completed (bad source, unconvertible model, bad option)."""


class FusionError(ExportError):
    """onnxruntime's transformer fusions did not produce the expected fused operators.

    Args:
        message: what is missing.
        statistics: `get_fused_operator_statistics()` of the optimized graph.
    """

    def __init__(self, message: str, statistics: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.statistics = dict(statistics or {})


class ParityError(ExportError):
    """The exported graph's outputs differ from the Keras float32 model beyond tolerance.

    Args:
        message: which check failed, with the figures.
        figures: all parity figures measured (as written to the export report).
    """

    def __init__(self, message: str, figures: dict | None = None) -> None:
        super().__init__(message)
        self.figures = dict(figures or {})
