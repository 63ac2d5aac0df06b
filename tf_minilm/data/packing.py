"""Token ids into training rows: tokenize documents, frame and pack them, hold rows out.

Owns: the special tokens that frame a row ([CLS]/[SEP]/[PAD] or <s>/</s>/<pad>), the two
packings (`packed`: documents concatenated and cut into full rows; `per-document`: each
document starts a row, its last chunk padded), the `Sequences` rows and the
deterministic train/eval split (`heldout_rows`). `pack_documents` packs in memory (the
reference the prepared directories of `data.shards` are tested against). Imports: `tf_minilm.rules`, NumPy, `tokenizers`, `data.corpus`,
`data.schedule`, `constants`; no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from tf_minilm import rules
from tf_minilm.constants import PACKING_MODES
from tf_minilm.data.corpus import (
    CorpusError,
    CorpusStats,
)
from tf_minilm.data.schedule import check_seed

if TYPE_CHECKING:
    import tokenizers

logger = logging.getLogger(__name__)


Packing = Literal["packed", "per-document"]


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
    """Find [CLS]/[SEP]/[PAD] (BERT) or <s>/</s>/<pad> (RoBERTa, MPNet) in the vocabulary.

    When the tokenizer frames texts itself (its post-processor), the style is the one it
    frames with: MPNet's vocabulary holds both styles and frames with <s> ... </s>.

    Args:
        tokenizer: a `tokenizers.Tokenizer`.

    Returns:
        The ids of the style the tokenizer frames with, else of the first style whose
        start and end tokens are present.

    Raises:
        CorpusError: neither style is present, or its pad token is missing.
    """
    framed = tokenizer.encode("", add_special_tokens=True).tokens
    styles = sorted(_SPECIAL_TOKEN_STYLES, key=lambda style: framed[:1] != [style[0]])
    for cls_tok, sep_tok, pad_tok in styles:
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

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`input_ids` and `attention_mask` of the rows at these indices (what
        `data.pipeline.make_dataset` reads, as from `data.shards.ShardedRows`)."""
        return self.input_ids[rows], self.attention_mask[rows]


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


def plain_tokenizer(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
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
    rules.seq_len(max_seq_len, "max_seq_len", error=CorpusError)
    special = special_tokens(tokenizer)
    plain = plain_tokenizer(tokenizer)
    encode = getattr(plain, "encode_batch_fast", plain.encode_batch)
    stats = stats if stats is not None else CorpusStats()
    packer = _Packer(special, max_seq_len, packing)
    for batch in _batches(documents, batch_docs, batch_chars):
        encodings = encode(batch, add_special_tokens=False)
        lengths = [len(e.ids) for e in encodings]
        flat = np.fromiter(
            itertools.chain.from_iterable(e.ids for e in encodings),
            dtype=np.int32, count=sum(lengths),
        )
        packer.add(flat, lengths)
        stats.tokens += int(flat.size)
    ids, lens = packer.finish()
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
    if eval_fraction == 0.0:
        return sequences, Sequences.empty(sequences.max_seq_len)
    held = np.zeros(len(sequences), dtype=bool)
    held[heldout_rows(len(sequences), eval_fraction, seed)] = True
    return sequences.take(np.flatnonzero(~held)), sequences.take(np.flatnonzero(held))


def heldout_rows(num_rows: int, eval_fraction: float, seed: int) -> np.ndarray:
    """The sorted rows held out of `num_rows` (int64): the one held-out rule, used by
    `split_train_eval` and by prepared directories (`data.shards`).

    Raises:
        CorpusError: too few rows to hold any out and keep one for training.
    """
    if eval_fraction == 0.0:
        return np.zeros(0, np.int64)
    n_eval = max(1, int(round(num_rows * eval_fraction)))
    if num_rows - n_eval < 1:
        raise CorpusError(
            f"the corpus has {num_rows} sequences: too few to hold out {n_eval} for evaluation "
            f"(eval_fraction={eval_fraction}) and keep at least 1 for training"
        )
    rng = np.random.default_rng(np.random.SeedSequence([check_seed(seed), 0x5EED, 0]))
    return np.sort(rng.choice(num_rows, size=n_eval, replace=False)).astype(np.int64)
