"""Atomic file writes: write beside the destination, then move into place.

An interrupted write never leaves a truncated file under the final name, and the
files get ordinary permissions (tempfile's private 0600/0700 are relaxed to the umask).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: str) -> None:
    """Give a file 0666 or a folder 0777, less the process umask."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it replaces `path`.

    Example:
    >>> with atomic_path("out/model.keras") as tmp:  # doctest: +SKIP
    ...     model.save(tmp)
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    handle, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".partial{ext}", dir=directory)
    os.close(handle)
    try:
        yield tmp
        public_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, value: Any, sort_keys: bool = True) -> None:
    """Write `value` as indented JSON to `path` atomically (keys sorted unless told not to)."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=sort_keys, default=str) + "\n")
