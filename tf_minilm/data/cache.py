"""The on-disk cache of packed rows, keyed by everything that determines them.

Owns: the corpus fingerprint (files, sizes, mtimes, tokenizer, packing settings) and
reading/writing the cached `Sequences` atomically. Imports: NumPy, `data.corpus`,
`data.packing`, `fileio`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tf_minilm.data.corpus import (
    CorpusFile,
    CorpusStats,
    ReadOptions,
)
from tf_minilm.data.packing import (
    Packing,
    Sequences,
    plain_tokenizer,
)
from tf_minilm.fileio import atomic_path

if TYPE_CHECKING:
    import tokenizers

logger = logging.getLogger(__name__)


_CACHE_FORMAT = 1


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def corpus_fingerprint(
    files: Sequence[CorpusFile],
    options: ReadOptions,
    tokenizer: tokenizers.Tokenizer,
    max_seq_len: int,
    packing: Packing,
) -> str:
    """A JSON key of everything the packed rows depend on.

    Covers each file's real path, size and modification time (ns), the
    reading options, the SHA-256 of the tokenizer JSON (without truncation and
    padding settings), `max_seq_len` and `packing`.
    """
    entries = []
    for f in files:
        st = os.stat(f.path)
        entries.append([os.path.realpath(f.path), st.st_size, st.st_mtime_ns])
    key = {
        "format": _CACHE_FORMAT,
        "files": entries,
        "read_options": dataclasses.asdict(options),
        "tokenizer_sha256": sha256_hex(plain_tokenizer(tokenizer).to_str()),
        "max_seq_len": max_seq_len,
        "packing": packing,
    }
    return json.dumps(key, sort_keys=True)


def load_cache(path: str, key: str, max_seq_len: int) -> tuple[Sequences, CorpusStats] | None:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"][()]))
            ids, lengths = data["input_ids"], data["lengths"]
        if meta.get("key") != key:
            logger.warning("corpus cache %s has a different key; rebuilding it", path)
            return None
        if ids.ndim != 2 or ids.shape != (lengths.shape[0], max_seq_len):
            raise ValueError(f"arrays of shape {ids.shape} and {lengths.shape}")
    except (OSError, ValueError, KeyError) as err:
        logger.warning("corpus cache %s is unreadable (%s); rebuilding it", path, err)
        return None
    return Sequences.from_lengths(ids, lengths), CorpusStats.from_dict(meta["stats"])


def write_cache(path: str, key: str, sequences: Sequences, stats: CorpusStats) -> bool:
    try:
        with atomic_path(path, durable=True) as partial:
            meta = json.dumps({"key": key, "stats": stats.to_dict()})
            np.savez(partial, input_ids=sequences.input_ids, lengths=sequences.lengths,
                     meta=np.array(meta))
        return True
    except OSError as err:
        logger.warning("could not write the corpus cache %s (%s); continuing without it",
                       path, err)
        return False
