"""Resumable benchmark tables: one JSON file per finished unit of work (a row, a column).

Owns: reading a finished unit back, or computing it and writing it atomically, so a table
interrupted at any point resumes at the first unit not on disk. Imports: `tf_minilm.fileio`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("benchmarks")


def cached_json(path: str, compute: Callable[[], Any], what: str) -> Any:
    """The JSON saved at `path`, or `compute()` written there (atomically) and returned.

    Args:
        path: the unit's file.
        compute: makes the unit's JSON-ready value when the file is absent.
        what: the unit's name, logged when it is computed.

    Returns:
        The unit's value.
    """
    from tf_minilm.fileio import write_json_atomic

    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    logger.info("%s", what)
    value = compute()
    write_json_atomic(path, value)
    return value
