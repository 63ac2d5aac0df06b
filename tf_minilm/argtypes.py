"""Argument types of the command lines: numbers checked where they are parsed.

Owns: `finite_float` (and `finite_floats`, a comma-separated list of them), the `type=`
of the float flags of `evaluate`, `export`, `serve` and `bench`, so `nan`, `inf` and `1e999` are refused by argparse with the flag's name
before any work (`distill`'s are checked by `DistillConfig`, which also reads config
files). Imports: the standard library only (serving uses it).
"""

from __future__ import annotations

import argparse
import math


def finite_float(text: str) -> float:
    """`float(text)` when it is a finite number; argparse reports anything else.

    Example:
    >>> finite_float("3e-4")
    0.0003
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def finite_floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of finite numbers, e.g. a grid of learning rates.

    Example:
    >>> finite_floats("5e-5,1e-4")
    (5e-05, 0.0001)
    """
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item; give numbers "
                                         "separated by commas, e.g. 5e-5,1e-4")
    return tuple(finite_float(part) for part in parts)
