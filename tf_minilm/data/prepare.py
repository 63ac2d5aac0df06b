"""`prepare_corpus`: documents to train/eval rows in one call, through a prepared directory.

Owns: the order of the data steps before training and `PreparedCorpus`, what they
return. Imports: `data.corpus`, `data.cache` (the fingerprint), `data.packing`,
`data.shards`, `constants`.

There is one data path: a corpus given to `tf-minilm distill --corpus` is prepared
(`data.shards.prepare_directory`: tokenized, packed, written as memory-mapped shards)
into the cache folder, under a name derived from everything the rows depend on, and
trained from there exactly as a directory made by `tf-minilm prepare` (`--data`). A
second run with the same corpus and settings reuses it; an interrupted one resumes it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tf_minilm.constants import PACKING_MODES
from tf_minilm.data.cache import corpus_fingerprint, sha256_hex
from tf_minilm.data.corpus import (
    CorpusError,
    CorpusStats,
    ReadOptions,
    collect_files,
)
from tf_minilm.data.packing import (
    Packing,
    Sequences,
    SpecialTokens,
)
from tf_minilm.data.shards import (
    MANIFEST_FILE,
    PreparedData,
    PreparedDataError,
    ShardedRows,
    open_prepared,
    prepare_directory,
)

if TYPE_CHECKING:
    import tokenizers

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedCorpus:
    """A tokenized, packed and split corpus, ready for `make_dataset`.

    Attributes:
        train: training rows (memory-mapped, `data.shards.ShardedRows`).
        eval: held-out rows, in memory (empty if `eval_fraction` was 0).
        stats: reading/tokenizing counts; log `stats.summary()`.
        special_tokens: the ids used to frame and pad rows.
        max_seq_len: row length.
        packing: "packed" or "per-document".
        data_dir: the prepared directory the rows come from.
        reused: True when that directory was complete before this call.

    Example:
    >>> prepared = prepare_corpus(default_corpus_paths(), tokenizer, cache_dir="c")  # doctest: +SKIP
    >>> ds = make_dataset(prepared.train, 32, seed=0)  # doctest: +SKIP
    """

    train: ShardedRows
    eval: Sequences
    stats: CorpusStats
    special_tokens: SpecialTokens
    max_seq_len: int
    packing: Packing
    data_dir: str
    reused: bool = False

    @classmethod
    def from_prepared(cls, data: PreparedData, reused: bool) -> PreparedCorpus:
        """The `PreparedCorpus` of an opened prepared directory."""
        return cls(train=data.train, eval=data.eval, stats=data.stats,
                   special_tokens=data.special_tokens, max_seq_len=data.max_seq_len,
                   packing=data.packing, data_dir=data.folder, reused=reused)


def prepared_dir_name(files: list, options: ReadOptions, tokenizer: tokenizers.Tokenizer,
                      max_seq_len: int, packing: Packing, eval_fraction: float,
                      seed: int) -> str:
    """`corpus-<hash>`: the cache folder name of everything the prepared rows depend on."""
    key = corpus_fingerprint(files, options, tokenizer, max_seq_len, packing)
    return f"corpus-{sha256_hex(f'{key}|{eval_fraction!r}|{seed}')[:24]}"


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
    workers: int = 1,
) -> PreparedCorpus:
    """Read, tokenize, pack and split a corpus into a prepared directory, and open it.

    Args:
        paths: files and folders (see `tf_minilm.data.corpus`).
        tokenizer: the teacher's `tokenizers.Tokenizer`.
        max_seq_len: row length in tokens, [CLS] and [SEP] included.
        eval_fraction: share of rows held out for evaluation (as `split_train_eval`).
        seed: seed of the held-out split.
        cache_dir: the folder holding prepared directories (`corpus-<hash>/`, see
            `prepared_dir_name`); reused when no file, option, tokenizer, `max_seq_len`,
            `packing`, `eval_fraction` or `seed` changed. None: a temporary directory,
            removed once its files are mapped.
        packing: "packed" or "per-document".
        read_options: how files are split into documents.
        progress: see `data.shards.prepare_directory`.
        workers: tokenizer processes.

    Returns:
        A `PreparedCorpus`.

    Raises:
        CorpusError: see `tf_minilm.data.corpus.iter_documents` and
            `data.shards.prepare_directory`.
    """
    options = read_options or ReadOptions()
    if packing not in PACKING_MODES:
        raise CorpusError(f"packing={packing!r} is not one of {', '.join(PACKING_MODES)}")
    if cache_dir is None:
        import tempfile

        # A throw-away directory: the open memory maps keep its files readable after
        # it is removed (POSIX), and nothing is left on disk.
        scratch = tempfile.mkdtemp(prefix="tf-minilm-corpus-")
        try:
            return prepare_corpus(paths, tokenizer, max_seq_len, eval_fraction, seed, scratch,
                                  packing=packing, read_options=options, progress=progress,
                                  workers=workers)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    files = collect_files(paths, CorpusStats())
    folder = os.path.join(os.fspath(cache_dir), prepared_dir_name(
        files, options, tokenizer, max_seq_len, packing, eval_fraction, seed))
    reused = os.path.isfile(os.path.join(folder, MANIFEST_FILE))

    def prepare_and_open() -> PreparedData:
        prepare_directory(paths, tokenizer, folder, max_seq_len=max_seq_len, packing=packing,
                          read_options=options, eval_fraction=eval_fraction, seed=seed,
                          workers=workers, progress=progress)
        return open_prepared(folder, tokenizer, max_seq_len)

    try:
        data = prepare_and_open()
    except PreparedDataError as err:
        if not reused:
            raise
        # Derived data of our own cache (never a --data directory): made again.
        logger.warning("the cached corpus is damaged (%s); preparing it again", err)
        shutil.rmtree(folder)
        reused = False
        data = prepare_and_open()
    except CorpusError:
        # A corpus that cannot be prepared (empty, no tokens): leave no cache folder behind
        # (an interruption is not caught here, so an interrupted prepare still resumes).
        shutil.rmtree(folder, ignore_errors=True)
        raise
    prepared = PreparedCorpus.from_prepared(data, reused)
    logger.info("corpus %s (%s): %s; %d train / %d eval sequences of %d tokens", folder,
                "reused" if reused else "prepared", prepared.stats.summary(),
                len(prepared.train), len(prepared.eval), max_seq_len)
    return prepared
