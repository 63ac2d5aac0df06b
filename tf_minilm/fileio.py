"""Atomic writes of files and folders: write beside the destination, then move into place.

Owns: every write that must never leave a partial result under its final name (run
files, checkpoints' JSON, model folders, exports). An interrupted write leaves the old
file or folder as it was, and outputs get ordinary permissions (tempfile's private
0600/0700 are relaxed to the umask). Imports: the standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

PARTIAL = ".partial"
"""Marks the temporary file of an atomic write (a killed write leaves one behind)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: str) -> None:
    """Give a file 0666 or a folder 0777, less the process umask."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it replaces `path`.

    Args:
        path: the final file.
        durable: fsync the written file before the rename and its folder after it, so
            the new file survives a power loss once this returns (training checkpoints,
            caches); plain writes skip the two syncs.

    The temporary file is `.<name>.<random>.partial<ext>` (the extension kept, so
    writers that add one, such as `np.savez`, write exactly there).

    Example:
    >>> with atomic_path("out/model.keras") as tmp:  # doctest: +SKIP
    ...     model.save(tmp)
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    handle, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f"{PARTIAL}{ext}", dir=directory)
    os.close(handle)
    try:
        yield tmp
        public_mode(tmp)
        if durable:
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_directory(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fsync_directory(directory: str) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, value: Any, sort_keys: bool = True) -> None:
    """Write `value` as indented JSON to `path` atomically (keys sorted unless told not to)."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=sort_keys, default=str) + "\n")


def replace_folder(staging: str, folder: str) -> None:
    """Move a fully written `staging` folder to `folder`, replacing any previous one.

    The old folder is kept aside until the new one is in place, so an interruption
    never leaves a half-written folder under the final name.
    """
    for name in os.listdir(staging):
        public_mode(os.path.join(staging, name))
    public_mode(staging)
    backup = None
    if os.path.exists(folder):
        backup = folder.rstrip(os.sep) + ".old-" + os.path.basename(staging)
        os.rename(folder, backup)
    os.rename(staging, folder)
    if backup:
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[str]:
    """Yield an empty staging folder beside `folder`; on success it replaces `folder`.

    On an exception the staging folder is removed and `folder` is left untouched.

    Example:
    >>> with staged_folder("runs/x/student") as staging:  # doctest: +SKIP
    ...     write_everything_into(staging)
    """
    folder = os.path.abspath(os.fspath(folder))
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.staging-", dir=parent)
    try:
        yield staging
        replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
