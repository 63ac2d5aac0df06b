"""From documents to training batches: tokenize, pack, split, shuffle, shard, cache.

Pipeline (`prepare_corpus` runs the first four steps, `make_dataset` the last):

1. read documents with `tf_minilm.data.corpus` (files and folders, bounded memory);
2. tokenize them with the teacher's `tokenizers.Tokenizer` (`encode_batch`,
   parallel in Rust, without special tokens, truncation or padding);
3. pack the token ids into rows of `max_seq_len`: `[CLS] chunk [SEP] pad...`
   (`<s> chunk </s> <pad>...` for RoBERTa-style vocabularies), each chunk at
   most `max_seq_len - 2` tokens. `packing="packed"` concatenates all documents
   and cuts the stream into chunks (only the very last row is padded);
   `packing="per-document"` chunks every document on its own (the last chunk
   of each document is padded, so masks are ragged);
4. hold out a deterministic evaluation split; optionally cache the packed rows
   on disk, keyed by a fingerprint of everything that determines them;
5. `make_dataset`: batches of a global batch size whose content is a pure
   function of (seed, global step), so a run resumed at step s sees exactly the
   batches a run from 0 would have seen; each worker takes its slice.

Rows are NumPy arrays (`Sequences`); TensorFlow is only imported by the
`make_*dataset` functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tf_minilm.constants import PACKING_MODES
from tf_minilm.data.corpus import (
    CorpusError,
    CorpusFile,
    CorpusStats,
    ReadOptions,
    collect_files,
    default_corpus_paths,
    iter_documents,
)

if TYPE_CHECKING:
    import tensorflow as tf
    import tokenizers

__all__ = [
    "BatchSchedule",
    "CorpusError",
    "CorpusStats",
    "PreparedCorpus",
    "ReadOptions",
    "Sequences",
    "SpecialTokens",
    "corpus_fingerprint",
    "default_corpus_paths",
    "make_dataset",
    "make_eval_dataset",
    "pack_documents",
    "prepare_corpus",
    "special_tokens",
    "split_train_eval",
]

logger = logging.getLogger(__name__)

Packing = Literal["packed", "per-document"]
_CACHE_FORMAT = 1
_SPECIAL_TOKEN_STYLES = (("[CLS]", "[SEP]", "[PAD]"), ("<s>", "</s>", "<pad>"))


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """The ids that frame and pad a packed row.

    Example:
    >>> SpecialTokens(cls_id=101, sep_id=102, pad_id=0).pad_id
    0
    """

    cls_id: int
    sep_id: int
    pad_id: int


def special_tokens(tokenizer: tokenizers.Tokenizer) -> SpecialTokens:
    """Find [CLS]/[SEP]/[PAD] (BERT) or <s>/</s>/<pad> (RoBERTa) in the vocabulary.

    Args:
        tokenizer: a `tokenizers.Tokenizer`.

    Returns:
        The ids of the first style whose start and end tokens are present.

    Raises:
        CorpusError: neither style is present, or its pad token is missing.
    """
    for cls_tok, sep_tok, pad_tok in _SPECIAL_TOKEN_STYLES:
        cls_id, sep_id = tokenizer.token_to_id(cls_tok), tokenizer.token_to_id(sep_tok)
        if cls_id is None or sep_id is None:
            continue
        pad_id = tokenizer.token_to_id(pad_tok)
        if pad_id is None:
            raise CorpusError(
                f"the tokenizer has {cls_tok} and {sep_tok} but no {pad_tok} token to pad with"
            )
        return SpecialTokens(cls_id=cls_id, sep_id=sep_id, pad_id=pad_id)
    wanted = " or ".join("/".join(style[:2]) for style in _SPECIAL_TOKEN_STYLES)
    raise CorpusError(
        f"the tokenizer vocabulary has neither {wanted}; cannot frame sequences "
        f"(vocabulary size {tokenizer.get_vocab_size()})"
    )


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Packed rows: `input_ids` and `attention_mask`, both int32 [N, max_seq_len].

    The mask is 1 on real tokens (including [CLS]/[SEP]) and 0 on padding,
    which always comes after the real tokens. Token type ids are all zero and
    not stored.

    Example:
    >>> rows = Sequences.from_lengths(np.array([[101, 7, 102, 0]]), np.array([3]))
    >>> rows.attention_mask.tolist()
    [[1, 1, 1, 0]]
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray

    @classmethod
    def from_lengths(cls, input_ids: np.ndarray, lengths: np.ndarray) -> Sequences:
        """Rows from ids and the number of real tokens per row."""
        input_ids = np.asarray(input_ids, dtype=np.int32)
        positions = np.arange(input_ids.shape[1], dtype=np.int32)
        mask = (positions[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
        return cls(input_ids, mask)

    @classmethod
    def empty(cls, max_seq_len: int) -> Sequences:
        z = np.zeros((0, max_seq_len), dtype=np.int32)
        return cls(z, z.copy())

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """Real tokens per row (int32 [N])."""
        return self.attention_mask.sum(axis=1, dtype=np.int32)

    @property
    def num_tokens(self) -> int:
        """Real tokens in all rows, [CLS]/[SEP] included."""
        return int(self.attention_mask.sum())

    def take(self, rows: np.ndarray) -> Sequences:
        """The rows at the given indices, in that order."""
        return Sequences(self.input_ids[rows], self.attention_mask[rows])


def _layout(
    flat: np.ndarray, lengths: np.ndarray, special: SpecialTokens, max_seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Chunk each document of `flat` (doc sizes `lengths`) into framed, padded rows.

    Returns ids [N, max_seq_len] and the real length of each row (N).
    """
    body = max_seq_len - 2
    lengths = np.asarray(lengths, dtype=np.int64)
    lengths = lengths[lengths > 0]
    if lengths.size == 0:
        return np.zeros((0, max_seq_len), np.int32), np.zeros((0,), np.int32)
    chunks = -(-lengths // body)  # ceil
    num_rows = int(chunks.sum())
    first_row = np.cumsum(chunks) - chunks
    doc_start = np.cumsum(lengths) - lengths
    # Token t of document d sits at position p = t - doc_start[d] of d.
    doc_of_token = np.repeat(np.arange(lengths.size), lengths)
    pos = np.arange(flat.size, dtype=np.int64) - doc_start[doc_of_token]
    rows = first_row[doc_of_token] + pos // body
    cols = 1 + pos % body
    ids = np.full((num_rows, max_seq_len), special.pad_id, dtype=np.int32)
    ids[rows, cols] = flat
    # Real tokens of chunk k of document d: min(body, len_d - k*body).
    doc_of_row = np.repeat(np.arange(lengths.size), chunks)
    chunk_index = np.arange(num_rows) - first_row[doc_of_row]
    body_len = np.minimum(body, lengths[doc_of_row] - chunk_index * body)
    ids[:, 0] = special.cls_id
    ids[np.arange(num_rows), body_len + 1] = special.sep_id
    return ids, (body_len + 2).astype(np.int32)


class _Packer:
    """Streams tokenized documents into rows (see `packing` in the module docstring)."""

    def __init__(self, special: SpecialTokens, max_seq_len: int, packing: Packing) -> None:
        self.special, self.max_seq_len, self.packing = special, max_seq_len, packing
        self.body = max_seq_len - 2
        self.carry = np.zeros((0,), np.int32)
        self.id_blocks: list[np.ndarray] = []
        self.len_blocks: list[np.ndarray] = []

    def _emit(self, flat: np.ndarray, lengths: Sequence[int] | np.ndarray) -> None:
        ids, lens = _layout(flat, np.asarray(lengths), self.special, self.max_seq_len)
        if len(ids):
            self.id_blocks.append(ids)
            self.len_blocks.append(lens)

    def add(self, flat: np.ndarray, lengths: Sequence[int]) -> None:
        if self.packing == "per-document":
            self._emit(flat, lengths)
            return
        stream = np.concatenate([self.carry, flat])
        full = (stream.size // self.body) * self.body
        if full:
            self._emit(stream[:full], [full])
        self.carry = stream[full:]

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self.carry.size:
            self._emit(self.carry, [self.carry.size])
            self.carry = self.carry[:0]
        if not self.id_blocks:
            return np.zeros((0, self.max_seq_len), np.int32), np.zeros((0,), np.int32)
        return np.concatenate(self.id_blocks), np.concatenate(self.len_blocks)


class _Progress:
    """A Keras progress bar on a terminal, a log line every few seconds otherwise."""

    def __init__(self, total_files: int, stats: CorpusStats, enabled: bool | None) -> None:
        self.stats, self.total = stats, total_files
        self.start = self.last_log = time.monotonic()
        self.bar = None
        self.enabled = enabled is not False
        if enabled is True or (enabled is None and sys.stdout.isatty()):
            import keras

            self.bar = keras.utils.Progbar(
                total_files, unit_name="file", stateful_metrics=["documents", "tokens"]
            )

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(
                self.stats.files_read,
                values=[("documents", self.stats.documents), ("tokens", self.stats.tokens)],
            )
        elif self.enabled and time.monotonic() - self.last_log >= 10.0:
            self.last_log = time.monotonic()
            self._log("tokenizing")

    def done(self) -> None:
        if self.bar is not None:
            self.update()
        if self.enabled:
            self._log("tokenized")

    def _log(self, verb: str) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        logger.info(
            "%s: %d/%d files, %d documents, %d tokens (%.0f tokens/s)",
            verb, self.stats.files_read, self.total, self.stats.documents,
            self.stats.tokens, self.stats.tokens / elapsed,
        )


def _plain_tokenizer(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """A copy without truncation and padding (a tokenizer.json may enable both)."""
    import tokenizers

    plain = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def _batches(docs: Iterable[str], max_docs: int, max_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def pack_documents(
    documents: Iterable[str],
    tokenizer: tokenizers.Tokenizer,
    *,
    max_seq_len: int = 128,
    packing: Packing = "packed",
    stats: CorpusStats | None = None,
    progress: bool | None = None,
    total_files: int = 0,
    batch_docs: int = 1024,
    batch_chars: int = 4 << 20,
) -> Sequences:
    """Tokenize documents in batches and pack the ids into framed rows.

    Args:
        documents: texts (any iterable; consumed once, in batches).
        tokenizer: the teacher's `tokenizers.Tokenizer`; its truncation and
            padding settings are ignored (a copy without them is used).
        max_seq_len: row length, [CLS] and [SEP] included (at least 3).
        packing: "packed" (across documents) or "per-document".
        stats: `tokens` and `sequences` are set here (documents are counted by
            the reader that updates the same object, if any).
        progress: True for a Keras progress bar, False for nothing, None for a
            bar on a terminal and a log line every 10 s otherwise.
        total_files: number of files, for the progress bar.
        batch_docs: documents per `encode_batch` call.
        batch_chars: characters per `encode_batch` call (whichever comes first).

    Returns:
        The packed rows, in document order.

    Raises:
        CorpusError: bad `max_seq_len`/`packing`, unknown special tokens, or no
            tokens at all.
    """
    if packing not in PACKING_MODES:
        raise CorpusError(f"packing={packing!r} is not one of {', '.join(PACKING_MODES)}")
    if max_seq_len < 3:
        raise CorpusError(f"max_seq_len={max_seq_len} leaves no room for text (minimum 3)")
    special = special_tokens(tokenizer)
    plain = _plain_tokenizer(tokenizer)
    encode = getattr(plain, "encode_batch_fast", plain.encode_batch)
    stats = stats if stats is not None else CorpusStats()
    packer = _Packer(special, max_seq_len, packing)
    bar = _Progress(total_files, stats, progress)
    for batch in _batches(documents, batch_docs, batch_chars):
        encodings = encode(batch, add_special_tokens=False)
        lengths = [len(e.ids) for e in encodings]
        flat = np.fromiter(
            itertools.chain.from_iterable(e.ids for e in encodings),
            dtype=np.int32, count=sum(lengths),
        )
        packer.add(flat, lengths)
        stats.tokens += int(flat.size)
        bar.update()
    ids, lens = packer.finish()
    bar.done()
    if len(ids) == 0:
        raise CorpusError(
            f"the documents produced no tokens ({stats.summary()}); is this the right tokenizer?"
        )
    stats.sequences = len(ids)
    return Sequences.from_lengths(ids, lens)


def split_train_eval(
    sequences: Sequences, eval_fraction: float = 0.01, seed: int = 0
) -> tuple[Sequences, Sequences]:
    """Hold out a deterministic random subset of rows for evaluation.

    Args:
        sequences: all rows.
        eval_fraction: share of rows held out, in [0, 1); when positive at
            least 1 row is held out and at least 1 row is left for training.
        seed: the same seed and rows always give the same split.

    Returns:
        `(train, eval)`; both keep the original row order. `eval` is empty
        when `eval_fraction` is 0.

    Raises:
        CorpusError: bad fraction, or too few rows to hold any out.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise CorpusError(f"eval_fraction={eval_fraction} must be in [0, 1)")
    n = len(sequences)
    if eval_fraction == 0.0:
        return sequences, Sequences.empty(sequences.max_seq_len)
    n_eval = max(1, int(round(n * eval_fraction)))
    if n - n_eval < 1:
        raise CorpusError(
            f"the corpus has {n} sequences: too few to hold out {n_eval} for evaluation "
            f"(eval_fraction={eval_fraction}) and keep at least 1 for training"
        )
    rng = np.random.default_rng(np.random.SeedSequence([_check_seed(seed), 0x5EED, 0]))
    held = np.zeros(n, dtype=bool)
    held[rng.choice(n, size=n_eval, replace=False)] = True
    return sequences.take(np.flatnonzero(~held)), sequences.take(np.flatnonzero(held))


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CorpusError(f"seed={seed!r} must be a non-negative integer")
    return int(seed)


class BatchSchedule:
    """Which rows make up the batch of every global step: a pure function of (seed, step).

    Epoch `e` visits the rows in the order `permutation(e)` (drawn from
    `(seed, e)`; the identity when `shuffle=False`); step `s` is batch
    `s % steps_per_epoch` of epoch `s // steps_per_epoch`. The last
    `num_examples % global_batch_size` rows of each epoch's order are dropped.

    Args:
        num_examples: rows in the training set.
        global_batch_size: rows per step over all workers.
        seed: non-negative shuffling seed.
        shuffle: shuffle each epoch (True) or keep row order.

    Example:
    >>> schedule = BatchSchedule(10, 4, seed=0)
    >>> schedule.steps_per_epoch
    2
    >>> len(set(schedule.rows(0)) | set(schedule.rows(1)))
    8
    """

    def __init__(
        self, num_examples: int, global_batch_size: int, seed: int = 0, shuffle: bool = True
    ) -> None:
        if global_batch_size < 1:
            raise CorpusError(f"global_batch_size={global_batch_size} must be positive")
        if num_examples < global_batch_size:
            raise CorpusError(
                f"the training set has {num_examples} sequences, fewer than one global batch "
                f"of {global_batch_size}; use a smaller batch or a larger corpus"
            )
        self.num_examples = int(num_examples)
        self.global_batch_size = int(global_batch_size)
        self.seed = _check_seed(seed)
        self.shuffle = shuffle
        self.steps_per_epoch = self.num_examples // self.global_batch_size
        self._lock = threading.Lock()
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The row order of `epoch` (int64 [num_examples])."""
        with self._lock:
            perm = self._cache.get(epoch)
            if perm is None:
                if self.shuffle:
                    seq = np.random.SeedSequence([self.seed, 0x5EED, 1, int(epoch)])
                    perm = np.random.default_rng(seq).permutation(self.num_examples)
                else:
                    perm = np.arange(self.num_examples)
                if len(self._cache) >= 2:
                    self._cache.pop(min(self._cache))
                self._cache[epoch] = perm
            return perm

    def rows(self, step: int, num_shards: int = 1, shard_index: int = 0) -> np.ndarray:
        """Row indices of global step `step`, or of shard `shard_index` of it.

        Shard i of n is the i-th contiguous slice of the global batch, of size
        `global_batch_size // n`.
        """
        if step < 0:
            raise CorpusError(f"step={step} must be non-negative")
        per_shard = _per_shard(self.global_batch_size, num_shards, shard_index)
        epoch, index = divmod(int(step), self.steps_per_epoch)
        start = index * self.global_batch_size + shard_index * per_shard
        return self.permutation(epoch)[start:start + per_shard]


def _per_shard(global_batch_size: int, num_shards: int, shard_index: int) -> int:
    if num_shards < 1:
        raise CorpusError(f"num_shards={num_shards} must be positive")
    if not 0 <= shard_index < num_shards:
        raise CorpusError(f"shard_index={shard_index} must be in [0, {num_shards})")
    if global_batch_size % num_shards:
        raise CorpusError(
            f"global batch size {global_batch_size} is not divisible by "
            f"num_shards={num_shards}"
        )
    return global_batch_size // num_shards


def _batch_dict(tf: Any, ids: Any, mask: Any) -> dict[str, Any]:
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tf.zeros_like(ids)}


def make_dataset(
    sequences: Sequences,
    global_batch_size: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    num_steps: int | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    shuffle: bool = True,
) -> tf.data.Dataset:
    """Training batches in the order of `BatchSchedule`, from `start_step` on.

    Element `k` is the batch of global step `start_step + k` (restricted to
    this shard), so a run resumed with `start_step=s` sees exactly what a run
    from step 0 sees from its step s on. The dataset repeats epochs forever
    unless `num_steps` is given; rows are gathered in NumPy (no copy of the
    corpus inside the TensorFlow graph) and prefetched.

    Args:
        sequences: training rows (`PreparedCorpus.train`).
        global_batch_size: rows per step over all shards.
        seed: shuffling seed.
        start_step: first global step to produce (0 for a fresh run).
        num_steps: produce this many steps, or forever if None.
        num_shards: number of input pipelines (workers).
        shard_index: which slice of every global batch this pipeline yields.
        shuffle: shuffle each epoch.

    Returns:
        A `tf.data.Dataset` of dicts `input_ids`, `attention_mask`,
        `token_type_ids`, each int32 [global_batch_size // num_shards,
        max_seq_len]. Its auto-sharding is off: sharding is done here, so with
        `tf.distribute` pass `num_shards=input_context.num_input_pipelines`,
        `shard_index=input_context.input_pipeline_id` (e.g. from
        `distribute_datasets_from_function`).

    Raises:
        CorpusError: bad batch size, shard, step or seed.

    Example:
    >>> rows = Sequences.from_lengths(np.arange(40).reshape(10, 4), np.full(10, 4))
    >>> ds = make_dataset(rows, 4, seed=1, num_steps=3)
    >>> [b["input_ids"].shape.as_list() for b in ds]
    [[4, 4], [4, 4], [4, 4]]
    """
    import tensorflow as tf

    schedule = BatchSchedule(len(sequences), global_batch_size, seed, shuffle)
    per_shard = _per_shard(global_batch_size, num_shards, shard_index)
    if start_step < 0:
        raise CorpusError(f"start_step={start_step} must be non-negative")
    if num_steps is not None and num_steps < 0:
        raise CorpusError(f"num_steps={num_steps} must be non-negative or None")
    input_ids, attention_mask = sequences.input_ids, sequences.attention_mask
    max_seq_len = sequences.max_seq_len

    def gather(step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = schedule.rows(int(step), num_shards, shard_index)
        return input_ids[rows], attention_mask[rows]

    def load(step: tf.Tensor) -> dict[str, tf.Tensor]:
        ids, mask = tf.numpy_function(gather, [step], (tf.int32, tf.int32), stateful=False)
        ids.set_shape([per_shard, max_seq_len])
        mask.set_shape([per_shard, max_seq_len])
        return _batch_dict(tf, ids, mask)

    if num_steps is None:
        ds = tf.data.Dataset.counter(start_step)  # infinite cardinality: Keras needs steps
    else:
        ds = tf.data.Dataset.range(start_step, start_step + num_steps)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return ds.with_options(options)


def make_eval_dataset(sequences: Sequences, batch_size: int) -> tf.data.Dataset:
    """Evaluation batches: all rows once, in order, the last batch possibly smaller.

    Args:
        sequences: evaluation rows (`PreparedCorpus.eval`).
        batch_size: rows per batch.

    Returns:
        A finite `tf.data.Dataset` of the same dicts as `make_dataset`.

    Raises:
        CorpusError: no rows or a bad batch size.
    """
    import tensorflow as tf

    if batch_size < 1:
        raise CorpusError(f"batch_size={batch_size} must be positive")
    if len(sequences) == 0:
        raise CorpusError("no evaluation sequences (eval_fraction=0?)")
    ds = tf.data.Dataset.from_tensor_slices((sequences.input_ids, sequences.attention_mask))
    ds = ds.batch(batch_size).map(lambda ids, mask: _batch_dict(tf, ids, mask))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


# ---------------------------------------------------------------- caching


def _sha256(text: str) -> str:
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
        "tokenizer_sha256": _sha256(_plain_tokenizer(tokenizer).to_str()),
        "max_seq_len": max_seq_len,
        "packing": packing,
    }
    return json.dumps(key, sort_keys=True)


def _load_cache(path: str, key: str, max_seq_len: int) -> tuple[Sequences, CorpusStats] | None:
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


def _write_cache(path: str, key: str, sequences: Sequences, stats: CorpusStats) -> bool:
    folder = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".corpus-", suffix=".npz.tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            meta = json.dumps({"key": key, "stats": stats.to_dict()})
            np.savez(f, input_ids=sequences.input_ids, lengths=sequences.lengths,
                     meta=np.array(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return True
    except OSError as err:
        logger.warning("could not write the corpus cache %s (%s); continuing without it",
                       path, err)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return False


# ---------------------------------------------------------------- entry point


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
        cache_path = os.path.join(os.fspath(cache_dir), f"corpus-{_sha256(key)[:24]}.npz")
        loaded = _load_cache(cache_path, key, max_seq_len)
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
        if cache_path is not None and _write_cache(cache_path, key, sequences, stats):
            logger.info("corpus cache written: %s", cache_path)
    train, held_out = split_train_eval(sequences, eval_fraction, seed)
    logger.info("corpus: %s; %d train / %d eval sequences of %d tokens",
                stats.summary(), len(train), len(held_out), max_seq_len)
    return PreparedCorpus(
        train=train, eval=held_out, stats=stats, special_tokens=special,
        max_seq_len=max_seq_len, packing=packing, cache_path=cache_path, cache_hit=cache_hit,
    )
