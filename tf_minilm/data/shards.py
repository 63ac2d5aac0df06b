"""Prepared corpora: packed rows in memory-mapped shards, written in parallel and resumably.

Owns: the prepared-directory format, `prepare_directory` (documents -> tokenized in N
processes -> packed -> shards, resuming at the last complete shard), `open_prepared`
(every check before training) and `ShardedRows` (random access by row through memory
maps). Imports: `tf_minilm.rules`, NumPy, `tokenizers`, `data.corpus`, `data.packing`, `data.cache` (the
corpus fingerprint), `data.schedule` (the seed rule), `fileio`, `constants`; no
TensorFlow.

A prepared directory holds, for shard k:

    shard-0000k.ids.npy       the real tokens of its rows, [CLS]/[SEP] included, one
                              after the other (uint16 when the vocabulary fits, else int32)
    shard-0000k.offsets.npy   int64 [rows + 1]: row r is ids[offsets[r]:offsets[r + 1]]
    shard-0000k.json          its progress record: rows, tokens, SHA-256 of both files,
                              and where the document stream stood when it was closed

and, written last and atomically, `heldout.npy` (the sorted global row numbers held out
for evaluation) and `manifest.json` (format, tokenizer hash, settings, corpus counts,
every shard's counts and checksums). No mask is stored: padding is rebuilt from the
offsets. Files are NumPy's `.npy` format (read with `numpy.load(mmap_mode="r")`, so a
row costs a page fault, not a copy of the corpus), JSON for the rest: no hand-written
binary format.

Rows are exactly those of `packing.pack_documents` on the same documents (the same
`_Packer`, fed in the same batches), and the held-out rows are exactly those of
`packing.split_train_eval`: a corpus trains the same whether it was prepared here or in
memory. Shards close at the end of a tokenization batch once they hold `shard_tokens`
tokens, so their content depends on the documents and settings only, never on the
number of worker processes. Each record says how many documents had been consumed and
which tokens the packer carried over; an interrupted prepare re-reads (without
tokenizing) that many documents and goes on from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tf_minilm import rules
from tf_minilm.constants import PACKING_MODES
from tf_minilm.data.cache import corpus_fingerprint, sha256_hex
from tf_minilm.data.corpus import (
    CorpusError,
    CorpusStats,
    ReadOptions,
    collect_files,
    read_documents,
)
from tf_minilm.data.packing import (
    Packing,
    Sequences,
    SpecialTokens,
    _batches,
    _Packer,
    heldout_rows,
    plain_tokenizer,
    special_tokens,
)
from tf_minilm.data.schedule import check_seed
from tf_minilm.fileio import atomic_path, claim_folder, write_json_atomic

if TYPE_CHECKING:
    import tokenizers

logger = logging.getLogger(__name__)

FORMAT = 1
MANIFEST_FILE = "manifest.json"
HELDOUT_FILE = "heldout.npy"
DEFAULT_SHARD_TOKENS = 1 << 22
"""About 4.2 M tokens (8 MB of uint16) per shard: a prepare's memory is a few shards'
worth of tokens, and a large corpus is still only hundreds of files (3 B tokens: ~720)."""
BATCH_DOCS = 256
BATCH_CHARS = 1 << 20
"""Documents and characters per tokenization batch (and so the granularity of a shard)."""
_HASH_BLOCK = 1 << 22


class PreparedDataError(CorpusError):
    """A prepared directory that cannot be used; the message names the file at fault."""


def shard_names(index: int) -> tuple[str, str, str]:
    """The ids, offsets and record file names of shard `index`."""
    stem = f"shard-{index:05d}"
    return f"{stem}.ids.npy", f"{stem}.offsets.npy", f"{stem}.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else int32."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def file_sha256(path: str) -> str:
    """SHA-256 of a file, read in blocks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_sha256(tokenizer: tokenizers.Tokenizer) -> str:
    """SHA-256 of the tokenizer's JSON without truncation and padding (what rows depend on)."""
    return sha256_hex(plain_tokenizer(tokenizer).to_str())


# ------------------------------------------------------------------ tokenization
_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer_json: str) -> None:
    """Worker set-up: one thread per process (the processes are the parallelism)."""
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import tokenizers

    _WORKER_TOKENIZER = tokenizers.Tokenizer.from_str(tokenizer_json)


def _encode(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, list[int]]:
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encodings = encode(texts, add_special_tokens=False)
    lengths = [len(e.ids) for e in encodings]
    flat = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings),
                       dtype=np.int32, count=sum(lengths))
    return flat, lengths


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, list[int], int]:
    flat, lengths = _encode(_WORKER_TOKENIZER, texts)
    return flat, lengths, len(texts)


class _Tokenize:
    """Ordered tokenization of document batches, in this process or in N workers.

    Workers are spawned processes (the parent may hold TensorFlow's or tokenizers'
    threads, which a fork would copy mid-flight); a bounded window of batches is in
    flight, and a worker that dies fails the prepare (`BrokenProcessPool`) instead of
    hanging it.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, workers: int) -> None:
        self.plain = plain_tokenizer(tokenizer)
        self.workers = workers
        self.pool = None
        if workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(self.plain.to_str(),))

    def __call__(self, batches: Iterable[list[str]]) -> Iterator[tuple[np.ndarray, list[int], int]]:
        if self.pool is None:
            for batch in batches:
                flat, lengths = _encode(self.plain, batch)
                yield flat, lengths, len(batch)
            return
        import collections

        window: collections.deque = collections.deque()
        for batch in batches:
            window.append(self.pool.submit(_encode_in_worker, batch))
            if len(window) >= 2 * self.workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _Progress:
    """tokens/s and an ETA from the bytes of the files read: a bar on a terminal, a log
    line every 10 s otherwise."""

    def __init__(self, total_bytes: int, enabled: bool | None) -> None:
        self.total = max(total_bytes, 1)
        self.start = self.last = time.monotonic()
        self.bar = (enabled is True) or (enabled is None and sys.stderr.isatty())
        self.enabled = enabled is not False

    def update(self, stats: CorpusStats, done_bytes: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < (0.5 if self.bar else 10.0)):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        share = min(done_bytes / self.total, 1.0)
        eta = elapsed * (1 - share) / share if share > 0 else float("nan")
        text = (f"{share:6.1%} of {self.total / 1e6:,.0f} MB, {stats.documents:,} documents, "
                f"{stats.tokens:,} tokens, {stats.tokens / elapsed:,.0f} tokens/s, "
                f"ETA {eta:,.0f} s")
        if self.bar:
            sys.stderr.write("\r" + text + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            logger.info("tokenizing: %s", text)


# ---------------------------------------------------------------------- writing
@dataclasses.dataclass
class _State:
    """Where a prepare stands after its last complete shard."""

    shards: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    documents: int = 0
    tokens: int = 0
    carry: list[int] = dataclasses.field(default_factory=list)


def _settings(files: Sequence[Any], options: ReadOptions, tokenizer: tokenizers.Tokenizer,
              max_seq_len: int, packing: Packing, eval_fraction: float, seed: int,
              shard_tokens: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "fingerprint": sha256_hex(corpus_fingerprint(files, options, tokenizer, max_seq_len,
                                                     packing)),
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "max_seq_len": max_seq_len,
        "packing": packing,
        "read_options": dataclasses.asdict(options),
        "eval_fraction": eval_fraction,
        "seed": seed,
        "shard_tokens": shard_tokens,
    }


def write_npy(path: str, array: np.ndarray) -> str:
    """Save `array` to `path` atomically and durably; return the file's SHA-256."""
    with atomic_path(path, durable=True) as partial:
        with open(partial, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    return file_sha256(path)


def _resume_state(output: str, settings: dict[str, Any]) -> _State:
    """The complete shards already written for these settings (checked), in order."""
    state = _State()
    index = 0
    while True:
        ids_name, offsets_name, record_name = shard_names(index)
        record_path = os.path.join(output, record_name)
        if not os.path.isfile(record_path):
            break
        try:
            with open(record_path, encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            break
        if record.get("settings") != settings:
            raise PreparedDataError(
                f"{record_path} belongs to a prepare with other settings (corpus files, "
                "tokenizer, --max-seq-len, --packing, --eval-fraction, --seed or "
                "--shard-tokens changed); use a new --output folder")
        if not all(os.path.isfile(os.path.join(output, name))
                   and file_sha256(os.path.join(output, name)) == record[key]
                   for name, key in ((ids_name, "ids_sha256"), (offsets_name, "offsets_sha256"))):
            logger.warning("shard %d of %s is incomplete; preparing again from there", index,
                           output)
            break
        state.shards.append(record)
        state.documents, state.tokens, state.carry = (record["documents_end"],
                                                      record["tokens_end"], record["carry"])
        index += 1
    if state.shards:
        logger.info("resuming %s after %d complete shard(s) (%d documents)", output,
                    len(state.shards), state.documents)
    return state


def prepare_directory(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    tokenizer: tokenizers.Tokenizer,
    output: str | os.PathLike,
    *,
    max_seq_len: int = 64,
    packing: Packing = "packed",
    read_options: ReadOptions | None = None,
    eval_fraction: float = 0.01,
    seed: int = 0,
    workers: int = 1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Tokenize, pack and shard a corpus into `output` (see the module docstring).

    Memory stays bounded by one shard plus the tokenization batches in flight, whatever
    the corpus size. A complete directory with the same settings is returned as it
    is; an interrupted one resumes at its last complete shard.

    Args:
        paths: corpus files and folders (`data.corpus`: text, JSONL, CSV, Parquet, Arrow).
        tokenizer: the teacher's tokenizer.
        output: the prepared directory (new, empty, or an earlier prepare's).
        max_seq_len: row length in tokens, [CLS] and [SEP] included.
        packing: "packed" or "per-document".
        read_options: how files become documents.
        eval_fraction: share of rows held out (as `packing.split_train_eval`).
        seed: seed of the held-out split.
        workers: tokenizer processes (1: in this process, with tokenizers' own threads).
        shard_tokens: tokens after which a shard is closed (at the end of a batch).
        progress: True for a progress line, False for nothing, None: on a terminal, else
            a log line every 10 s.

    Returns:
        The manifest.

    Raises:
        CorpusError: a bad setting, unreadable corpus, no tokens; `PreparedDataError`
            when `output` holds another prepare's files (or is not tf-minilm's).
    """
    from tf_minilm.fileio import NotOurFolderError

    if packing not in PACKING_MODES:
        raise CorpusError(f"packing={packing!r} is not one of {', '.join(PACKING_MODES)}")
    rules.seq_len(max_seq_len, "max_seq_len", error=CorpusError)
    rules.positive_int(workers, "workers", error=CorpusError)
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < max_seq_len:
        raise CorpusError(f"shard_tokens={shard_tokens!r} must be an integer >= max_seq_len "
                          f"({max_seq_len})")
    if not 0.0 <= eval_fraction < 1.0:
        raise CorpusError(f"eval_fraction={eval_fraction} must be in [0, 1)")
    seed = check_seed(seed)
    options = read_options or ReadOptions()
    output = os.path.abspath(os.fspath(output))
    special = special_tokens(tokenizer)
    stats = CorpusStats()
    files = collect_files(paths, stats)
    if not files:
        raise CorpusError(f"no corpus files under {paths!r} ({stats.summary()})")
    settings = _settings(files, options, tokenizer, max_seq_len, packing, eval_fraction, seed,
                         shard_tokens)
    manifest_path = os.path.join(output, MANIFEST_FILE)
    if os.path.isfile(manifest_path):
        manifest = read_manifest(output)
        if manifest.get("settings") == settings:
            logger.info("%s is already prepared with these settings", output)
            return manifest
        raise PreparedDataError(f"{manifest_path} was prepared with other settings; use a new "
                                "--output folder (nothing was changed)")
    try:
        claim_folder(output, "prepared-corpus")
    except NotOurFolderError as err:
        raise PreparedDataError(f"--output: {err}") from err
    for name in os.listdir(output):  # half-written files of a killed prepare (ours)
        if name.startswith(".") and ".partial" in name:
            os.remove(os.path.join(output, name))
    state = _resume_state(output, settings)
    dtype = token_dtype(tokenizer.get_vocab_size(with_added_tokens=True))
    read_bytes = np.concatenate([[0], np.cumsum([os.path.getsize(f.path) for f in files])])
    total_bytes = int(read_bytes[-1])

    reader_stats = CorpusStats(unsupported_files=stats.unsupported_files)
    documents = read_documents(files, options, reader_stats)
    skipped = 0
    for _ in itertools.islice(documents, state.documents):  # already in complete shards
        skipped += 1
    if skipped < state.documents:
        raise PreparedDataError(f"{output}: the corpus now has fewer documents ({skipped}) than "
                                f"the shards already written ({state.documents}); use a new "
                                "--output folder")
    packer = _Packer(special, max_seq_len, packing)
    packer.carry = np.asarray(state.carry, np.int32)
    reader_stats.tokens = state.tokens
    bar = _Progress(total_bytes, progress)
    tokenize = _Tokenize(tokenizer, workers)
    consumed = state.documents
    pending_ids: list[np.ndarray] = []
    pending_lens: list[np.ndarray] = []
    pending_tokens = 0

    def drain() -> None:
        # Rows leave the packer as their real tokens only (2 bytes a token for uint16):
        # a shard's buffer is a few bytes per token, not a padded int32 row each.
        nonlocal pending_tokens
        for ids, lens in zip(packer.id_blocks, packer.len_blocks, strict=True):
            real = np.arange(max_seq_len)[None, :] < lens[:, None]
            pending_ids.append(ids[real].astype(dtype))
            pending_lens.append(lens)
            pending_tokens += int(lens.sum())
        packer.id_blocks.clear()
        packer.len_blocks.clear()

    def flush(final: bool) -> None:
        nonlocal pending_tokens
        if not pending_ids:
            if final and state.shards:  # nothing after the last shard: it is the last
                last = dict(state.shards[-1], final=True)
                write_json_atomic(os.path.join(output, shard_names(last["index"])[2]), last)
                state.shards[-1] = last
            return
        index = len(state.shards)
        ids_name, offsets_name, record_name = shard_names(index)
        lens = np.concatenate(pending_lens)
        flat = np.concatenate(pending_ids)
        offsets = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        record = {
            "settings": settings, "index": index, "ids": ids_name, "offsets": offsets_name,
            "rows": int(len(lens)), "tokens": int(flat.size), "dtype": dtype.name,
            "ids_sha256": write_npy(os.path.join(output, ids_name), flat),
            "offsets_sha256": write_npy(os.path.join(output, offsets_name), offsets),
            "documents_end": consumed, "tokens_end": int(reader_stats.tokens),
            "carry": [int(t) for t in packer.carry], "final": final,
        }
        write_json_atomic(os.path.join(output, record_name), record)
        state.shards.append(record)
        pending_ids.clear()
        pending_lens.clear()
        pending_tokens = 0
        logger.info("wrote shard %d of %s: %d rows, %d tokens", index, output, record["rows"],
                    record["tokens"])

    finished = bool(state.shards) and state.shards[-1]["final"]
    try:
        batches = () if finished else _batches(documents, BATCH_DOCS, BATCH_CHARS)
        for flat, lengths, count in tokenize(batches):
            consumed += count
            packer.add(flat, lengths)
            reader_stats.tokens += int(flat.size)
            drain()
            if pending_tokens >= shard_tokens:
                flush(final=False)
            bar.update(reader_stats, int(read_bytes[reader_stats.files_read]))
        if not finished:
            packer.finish()
            drain()
            flush(final=True)
    finally:
        tokenize.close()
    bar.update(reader_stats, total_bytes, final=True)
    if reader_stats.documents == 0:
        raise CorpusError(f"empty corpus: no documents in {paths!r} ({len(files)} supported "
                          f"files found; {reader_stats.summary()})")
    rows_total = sum(record["rows"] for record in state.shards)
    if rows_total == 0:
        raise CorpusError(f"the documents produced no tokens ({reader_stats.summary()}); is "
                          "this the right tokenizer?")
    reader_stats.sequences = rows_total
    heldout = heldout_rows(rows_total, eval_fraction, seed)
    heldout_sha = write_npy(os.path.join(output, HELDOUT_FILE), heldout)
    manifest = {
        "format": FORMAT,
        "settings": settings,
        "special_tokens": dataclasses.asdict(special),
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "dtype": dtype.name,
        "rows": rows_total,
        "tokens": sum(record["tokens"] for record in state.shards),
        "heldout": {"file": HELDOUT_FILE, "rows": int(heldout.size), "sha256": heldout_sha},
        "stats": reader_stats.to_dict(),
        "shards": [{key: record[key] for key in ("index", "ids", "offsets", "rows", "tokens",
                                                  "ids_sha256", "offsets_sha256")}
                   for record in state.shards],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(manifest_path, manifest)
    logger.info("prepared %s: %d rows (%d held out), %d tokens in %d shard(s)", output,
                rows_total, heldout.size, manifest["tokens"], len(state.shards))
    return manifest


# ---------------------------------------------------------------------- reading
def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared directory (no file but the manifest is read).

    Raises:
        PreparedDataError: no manifest (not prepared, or interrupted) or a foreign one.
    """
    folder = os.fspath(folder)
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        raise PreparedDataError(
            f"{folder} is not a prepared directory (no {MANIFEST_FILE}; an interrupted "
            "`tf-minilm prepare` resumes when run again with the same flags)")
    return read_format_json(path, FORMAT, "manifest of tf-minilm", PreparedDataError)


def read_format_json(path: str, version: int, what: str, error: type[Exception]) -> dict[str, Any]:
    """A JSON manifest whose `format` is `version`; else `error` naming `path` and `what`."""
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise error(f"cannot read {path}: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != version:
        raise error(f"{path}: not a format-{version} {what}")
    return manifest


def _load_checked(folder: str, name: str, sha256: str, verify: bool, shape: tuple[int, ...],
                  dtype: str) -> np.ndarray:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise PreparedDataError(f"{path} is missing (listed in {MANIFEST_FILE})")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:  # a truncated file: "mmap length is greater..."
        raise PreparedDataError(f"{path} is truncated or unreadable ({err})") from err
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise PreparedDataError(f"{path} holds {array.dtype} {array.shape}; the manifest says "
                                f"{dtype} {shape} (a truncated or foreign file)")
    if verify and file_sha256(path) != sha256:
        raise PreparedDataError(f"{path} fails its checksum (SHA-256 differs from "
                                f"{MANIFEST_FILE}): the file changed since it was prepared")
    return array


class ShardedRows:
    """Rows of a prepared directory, by index, through memory maps (no copy of the corpus).

    Implements what `data.pipeline.make_dataset` needs (`len`, `max_seq_len`,
    `gather`), for the training rows (every row not held out, in order) or for any
    chosen global rows.

    Args:
        ids: each shard's ids (memory-mapped).
        offsets: each shard's offsets (memory-mapped).
        max_seq_len: row length.
        pad_id: id of the padding.
        excluded: sorted global rows to leave out (the held-out ones), or None.

    Example:
    >>> data = open_prepared("runs/data")  # doctest: +SKIP
    >>> ids, mask = data.train.gather(np.array([0, 5]))  # doctest: +SKIP
    """

    def __init__(self, ids: Sequence[np.ndarray], offsets: Sequence[np.ndarray],
                 max_seq_len: int, pad_id: int, excluded: np.ndarray | None = None) -> None:
        self._ids, self._offsets = list(ids), list(offsets)
        counts = np.array([len(o) - 1 for o in self._offsets], np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._max_seq_len, self.pad_id = int(max_seq_len), int(pad_id)
        excluded = np.zeros(0, np.int64) if excluded is None else np.asarray(excluded, np.int64)
        self._skip = excluded - np.arange(excluded.size)  # for index -> global row
        self._len = int(self._starts[-1]) - int(excluded.size)

    def __len__(self) -> int:
        return self._len

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    def global_rows(self, indices: np.ndarray) -> np.ndarray:
        """The global row numbers of these training-row indices."""
        indices = np.asarray(indices, np.int64)
        return indices + np.searchsorted(self._skip, indices, side="right")

    def locate(self, rows: np.ndarray) -> list[tuple[int, int, int, int]]:
        """(shard, row within it, first token, end token) of each global row: where its
        tokens, and anything stored per token or per row beside them, are."""
        rows = np.asarray(rows, np.int64)
        shards = np.searchsorted(self._starts, rows, side="right") - 1
        places = []
        for row, shard in zip(rows.tolist(), shards.tolist(), strict=True):
            local = row - int(self._starts[shard])
            offsets = self._offsets[shard]
            places.append((shard, local, int(offsets[local]), int(offsets[local + 1])))
        return places

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`input_ids` and `attention_mask`, int32 [len(indices), max_seq_len]."""
        rows = self.global_rows(indices)
        ids = np.full((rows.size, self._max_seq_len), self.pad_id, np.int32)
        mask = np.zeros((rows.size, self._max_seq_len), np.int32)
        for out, (shard, _, start, stop) in enumerate(self.locate(rows)):
            ids[out, :stop - start] = self._ids[shard][start:stop]
            mask[out, :stop - start] = 1
        return ids, mask

    def sequences(self, indices: np.ndarray | None = None) -> Sequences:
        """These rows (default: all) as in-memory `Sequences` (for small sets)."""
        indices = np.arange(len(self)) if indices is None else indices
        ids, mask = self.gather(indices)
        return Sequences(ids, mask)


@dataclasses.dataclass
class PreparedData:
    """An opened prepared directory.

    Attributes:
        folder: the directory.
        manifest: its manifest.
        train: the training rows (`ShardedRows`).
        eval: the held-out rows, in memory (`Sequences`).
        stats: the corpus counts of the prepare.
        special_tokens: the framing and padding ids.
        rows: every row, held-out ones included, by global row number.
        heldout: the global row numbers of `eval`, in its order.
    """

    folder: str
    manifest: dict[str, Any]
    train: ShardedRows
    eval: Sequences
    stats: CorpusStats
    special_tokens: SpecialTokens
    rows: ShardedRows
    heldout: np.ndarray

    @property
    def max_seq_len(self) -> int:
        return int(self.manifest["settings"]["max_seq_len"])

    @property
    def packing(self) -> str:
        return str(self.manifest["settings"]["packing"])


def open_prepared(folder: str | os.PathLike, tokenizer: tokenizers.Tokenizer | None = None,
                  max_seq_len: int | None = None, verify: bool = True) -> PreparedData:
    """Open a prepared directory for training, after checking it.

    Args:
        folder: the directory `prepare_directory` wrote.
        tokenizer: the teacher's tokenizer; its hash must be the manifest's.
        max_seq_len: the row length the run expects, or None.
        verify: check every file's SHA-256 (reads each file once).

    Returns:
        A `PreparedData`.

    Raises:
        PreparedDataError: no or foreign manifest, another tokenizer or `max_seq_len`, a
            missing, truncated or changed file (each names the file).
    """
    folder = os.path.abspath(os.fspath(folder))
    manifest = read_manifest(folder)
    path = os.path.join(folder, MANIFEST_FILE)
    settings = manifest["settings"]
    if tokenizer is not None and tokenizer_sha256(tokenizer) != settings["tokenizer_sha256"]:
        raise PreparedDataError(f"{path} was prepared with another tokenizer than the teacher's "
                                "(tokenizer SHA-256 differs); prepare the corpus again with "
                                "this --teacher")
    if max_seq_len is not None and max_seq_len != settings["max_seq_len"]:
        raise PreparedDataError(f"{path} holds rows of {settings['max_seq_len']} tokens, not "
                                f"{max_seq_len}; pass --max-seq-len {settings['max_seq_len']} "
                                "or prepare again")
    ids, offsets = [], []
    for shard in manifest["shards"]:
        ids.append(_load_checked(folder, shard["ids"], shard["ids_sha256"], verify,
                                 (shard["tokens"],), manifest["dtype"]))
        offsets.append(_load_checked(folder, shard["offsets"], shard["offsets_sha256"], verify,
                                     (shard["rows"] + 1,), "int64"))
    held = manifest["heldout"]
    heldout = np.asarray(_load_checked(folder, held["file"], held["sha256"], verify,
                                       (held["rows"],), "int64"))
    special = SpecialTokens(**manifest["special_tokens"])
    everything = ShardedRows(ids, offsets, settings["max_seq_len"], special.pad_id)
    train = ShardedRows(ids, offsets, settings["max_seq_len"], special.pad_id, heldout)
    eval_rows = everything.sequences(heldout) if heldout.size else Sequences.empty(
        settings["max_seq_len"])
    return PreparedData(folder, manifest, train, eval_rows,
                        CorpusStats.from_dict(manifest["stats"]), special, everything,
                        np.asarray(heldout))
