"""The corpus fingerprint: everything that determines the packed rows.

Owns: the fingerprint (files, sizes, mtimes, reading options, tokenizer, packing
settings) that names a prepared directory in the cache and is recorded in its manifest.
Imports: `data.corpus`, `data.packing`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tf_minilm.data.corpus import (
    CorpusFile,
    ReadOptions,
)
from tf_minilm.data.packing import (
    Packing,
    plain_tokenizer,
)

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
