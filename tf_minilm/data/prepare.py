"""`prepare_corpus`: documents to train/eval rows in one call (read, pack, split, cache).

Owns: the order of the data steps before training and `PreparedCorpus`, what they
return. Imports: `data.corpus`, `data.packing`, `data.cache`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tf_minilm.constants import PACKING_MODES
from tf_minilm.data.cache import corpus_fingerprint, load_cache, sha256_hex, write_cache
from tf_minilm.data.corpus import (
    CorpusError,
    CorpusStats,
    ReadOptions,
    collect_files,
    iter_documents,
)
from tf_minilm.data.packing import (
    Packing,
    Sequences,
    SpecialTokens,
    pack_documents,
    special_tokens,
    split_train_eval,
)

if TYPE_CHECKING:
    import tokenizers

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedCorpus:
    """A tokenized, packed and split corpus, ready for `make_dataset`.

    Attributes:
        train: training rows.
        eval: held-out rows (empty if `eval_fraction` was 0).
        stats: reading/tokenizing counts (from the cache when it was hit);
            log `stats.summary()`.
        special_tokens: the ids used to frame and pad rows.
        max_seq_len: row length.
        packing: "packed" or "per-document".
        cache_path: the cache file used or written, or None.
        cache_hit: True when the rows came from the cache.

    Example:
    >>> prepared = prepare_corpus(default_corpus_paths(), tokenizer)  # doctest: +SKIP
    >>> ds = make_dataset(prepared.train, 32, seed=0)  # doctest: +SKIP
    """

    train: Sequences
    eval: Sequences
    stats: CorpusStats
    special_tokens: SpecialTokens
    max_seq_len: int
    packing: Packing
    cache_path: str | None = None
    cache_hit: bool = False


def prepare_corpus(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    tokenizer: tokenizers.Tokenizer,
    max_seq_len: int = 128,
    eval_fraction: float = 0.01,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    *,
    packing: Packing = "packed",
    read_options: ReadOptions | None = None,
    progress: bool | None = None,
) -> PreparedCorpus:
    """Read, tokenize, pack (or load from cache) and split a corpus.

    Args:
        paths: files and folders (see `tf_minilm.data.corpus`).
        tokenizer: the teacher's `tokenizers.Tokenizer`.
        max_seq_len: row length in tokens, [CLS] and [SEP] included.
        eval_fraction: share of rows held out for evaluation (see `split_train_eval`).
        seed: seed of the held-out split.
        cache_dir: folder for the cache of packed rows (`corpus-<hash>.npz`,
            written atomically); None disables caching. The cache is reused
            when no file, option, tokenizer, `max_seq_len` or `packing`
            changed, and rebuilt otherwise.
        packing: "packed" or "per-document".
        read_options: how files are split into documents.
        progress: see `pack_documents`.

    Returns:
        A `PreparedCorpus`.

    Raises:
        CorpusError: see `tf_minilm.data.corpus.iter_documents`, `pack_documents`
            and `split_train_eval`.
    """
    options = read_options or ReadOptions()
    if packing not in PACKING_MODES:
        raise CorpusError(f"packing={packing!r} is not one of {', '.join(PACKING_MODES)}")
    special = special_tokens(tokenizer)
    stats = CorpusStats()
    files = collect_files(paths, stats)
    cache_path = None
    sequences = None
    cache_hit = False
    if cache_dir is not None:
        key = corpus_fingerprint(files, options, tokenizer, max_seq_len, packing)
        cache_path = os.path.join(os.fspath(cache_dir), f"corpus-{sha256_hex(key)[:24]}.npz")
        loaded = load_cache(cache_path, key, max_seq_len)
        if loaded is not None:
            sequences, cached_stats = loaded
            cached_stats.unsupported_files = stats.unsupported_files
            stats = cached_stats
            cache_hit = True
            logger.info("corpus cache hit: %s (%d sequences)", cache_path, len(sequences))
        else:
            logger.info("corpus cache miss: building %s", cache_path)
    if sequences is None:
        documents = iter_documents(paths, options, stats, files=files)
        sequences = pack_documents(
            documents, tokenizer, max_seq_len=max_seq_len, packing=packing,
            stats=stats, progress=progress, total_files=len(files),
        )
        if cache_path is not None and write_cache(cache_path, key, sequences, stats):
            logger.info("corpus cache written: %s", cache_path)
    train, held_out = split_train_eval(sequences, eval_fraction, seed)
    logger.info("corpus: %s; %d train / %d eval sequences of %d tokens",
                stats.summary(), len(train), len(held_out), max_seq_len)
    return PreparedCorpus(
        train=train, eval=held_out, stats=stats, special_tokens=special,
        max_seq_len=max_seq_len, packing=packing, cache_path=cache_path, cache_hit=cache_hit,
    )
