"""The rules on plain values that many settings share, each written once.

Owns: positive integers, finite numbers in a range, sequence lengths (`MIN_SEQ_LEN`), the
weight decay range, and a head count dividing a width, with the one message of each
(`POSITIVE_INT`, ...). Every check takes the caller's name for the value (a flag, a field,
a key) and the caller's error type, so a flag's error names the flag and keeps the
caller's exception class without a try/except around each call. Imports: the standard
library only (layer 0: the CLIs, serving and the model use it).

The distill command's own rules (stages, relation heads, warm-up, clipping, layers) stay
with their owners (`distill.objectives`, `distill.options`, `model.config`); this module
holds only what is the same wherever it appears.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# A row holds [CLS], at least one token and [SEP].
MIN_SEQ_LEN = 3

POSITIVE_INT = "{name} must be a positive integer, got {value!r}"
FINITE_NUMBER = "{name} must be a finite number{bounds}, got {value!r}"
SEQ_LEN = "{name} must be an integer of at least {minimum} ([CLS], a token, [SEP]), got {value!r}"
DIVIDES = "{heads_name} ({heads}) does not divide {width_name} ({width})"

ErrorType = Callable[[str], Exception]


class RuleError(ValueError):
    """A value that breaks one of these rules (the default error type)."""


def positive_int(value: Any, name: str, *, error: ErrorType = RuleError,
                 optional: bool = False) -> int | None:
    """`value` as an integer >= 1 (None passes when `optional`).

    Example:
    >>> positive_int(3, "--steps")
    3
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(POSITIVE_INT.format(name=name, value=value))
    return value


def finite_number(value: Any, name: str, *, at_least: float | None = None,
                  above: float | None = None, below: float | None = None,
                  error: ErrorType = RuleError) -> float:
    """`value` as a finite float within the bounds given (`at_least` inclusive, `above`
    and `below` exclusive).

    Example:
    >>> finite_number(0.01, "--weight-decay", at_least=0, below=1)
    0.01
    """
    parts = []
    if at_least is not None:
        parts.append(f">= {at_least:g}")
    if above is not None:
        parts.append(f"> {above:g}")
    if below is not None:
        parts.append(f"< {below:g}")
    bounds = (" " + " and ".join(parts)) if parts else ""
    ok = not isinstance(value, bool) and isinstance(value, int | float) \
        and math.isfinite(value) \
        and (at_least is None or value >= at_least) and (above is None or value > above) \
        and (below is None or value < below)
    if not ok:
        raise error(FINITE_NUMBER.format(name=name, bounds=bounds, value=value))
    return float(value)


def seq_len(value: Any, name: str, *, error: ErrorType = RuleError) -> int:
    """A sequence length: an integer of at least `MIN_SEQ_LEN`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_SEQ_LEN:
        raise error(SEQ_LEN.format(name=name, minimum=MIN_SEQ_LEN, value=value))
    return value


def weight_decay(value: Any, name: str, *, error: ErrorType = RuleError) -> float:
    """Decoupled weight decay: a finite number in [0, 1) (1 would erase the weights each
    step at a learning rate of 1)."""
    return finite_number(value, name, at_least=0, below=1, error=error)


def divides(heads: int, width: int, heads_name: str, width_name: str, *,
            error: ErrorType = RuleError) -> None:
    """Attention heads must split a width into equal head sizes.

    Example:
    >>> divides(12, 384, "--student-heads", "--student-hidden")
    """
    if width % heads:
        raise error(DIVIDES.format(heads_name=heads_name, heads=heads, width_name=width_name,
                                   width=width))
