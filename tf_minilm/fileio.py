"""Atomic writes of files and folders: write beside the destination, then move into place.

Owns: every write that must never leave a partial result under its final name (run
files, checkpoints, model folders, exports), and folder ownership: a folder is ours only
if it holds the `OWNER_MARKER` file we wrote, so a user's folder is never replaced or
written into because of what its files are called. An interrupted write leaves the old
file or folder as it was (stale staging folders of killed writes are removed by the next
write of the same folder), and outputs get ordinary permissions (tempfile's private
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

OWNER_MARKER = ".tf-minilm-owned"
"""A file tf-minilm writes into every folder it creates; only such folders are replaced."""
STAGING = ".staging-"
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


class NotOurFolderError(ValueError):
    """A non-empty folder without tf-minilm's marker: it is the user's, not ours to replace."""


def is_owned(folder: str | os.PathLike) -> bool:
    """True if `folder` holds the marker tf-minilm writes into the folders it creates."""
    return os.path.isfile(os.path.join(os.fspath(folder), OWNER_MARKER))


def check_replaceable(folder: str | os.PathLike) -> None:
    """Raise `NotOurFolderError` unless `folder` is absent, empty, or ours (marked).

    Raises:
        NotOurFolderError: the message names the folder and what to do.
    """
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotOurFolderError(f"{folder} exists and is not a folder")
    if os.path.isdir(folder) and os.listdir(folder) and not is_owned(folder):
        raise NotOurFolderError(
            f"{folder} is not empty and was not written by tf-minilm (no {OWNER_MARKER} "
            "file); nothing in it was changed: choose a new or empty folder")


def claim_folder(folder: str | os.PathLike, kind: str) -> None:
    """Create `folder` (or take an empty one) and mark it as tf-minilm's `kind` output.

    Raises:
        NotOurFolderError: it is a non-empty folder that is not ours.
    """
    check_replaceable(folder)
    os.makedirs(folder, exist_ok=True)
    if not is_owned(folder):
        write_json_atomic(os.path.join(os.fspath(folder), OWNER_MARKER),
                          {"written_by": "tf-minilm", "kind": kind})


def _remove_stale_staging(folder: str) -> None:
    """Staging folders and backups of `folder` left by a write that was killed."""
    parent, name = os.path.split(folder)
    for entry in os.listdir(parent):
        stale = entry.startswith(f".{name}{STAGING}") or entry.startswith(f"{name}.old-.")
        if stale and os.path.isdir(os.path.join(parent, entry)):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike, kind: str = "folder") -> Iterator[str]:
    """Yield an empty staging folder beside `folder`; on success it replaces `folder`.

    `folder` must be absent, empty or ours (`check_replaceable`); the result is marked
    ours. On an exception the staging folder is removed and `folder` is left untouched.

    Args:
        folder: the final folder.
        kind: what it holds, recorded in the marker ("hf-checkpoint", "onnx-export").

    Raises:
        NotOurFolderError: `folder` holds files tf-minilm did not write.

    Example:
    >>> with staged_folder("runs/x/student") as staging:  # doctest: +SKIP
    ...     write_everything_into(staging)
    """
    folder = os.path.abspath(os.fspath(folder))
    check_replaceable(folder)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_staging(folder)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}{STAGING}", dir=parent)
    try:
        yield staging
        write_json_atomic(os.path.join(staging, OWNER_MARKER),
                          {"written_by": "tf-minilm", "kind": kind})
        replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
