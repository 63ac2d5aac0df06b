"""Texts to model inputs: tokenize with special tokens, truncate, right-pad per batch.

Owns: the one tokenize -> truncate -> pad path used by evaluation, fidelity, the export's
parity check and serving, and the pad id of a tokenizer. (Training rows are packed by
`tf_minilm.data.packing` instead: fixed-length rows, no per-batch padding.)
Imports: NumPy, `tokenizers` and `constants` (no TensorFlow), so the serving package uses
it.

Example:
>>> tokenizer = truncating_copy(load_tokenizer("teacher"), max_seq_len=128)  # doctest: +SKIP
>>> batch = pad_encodings(tokenizer.encode_batch(["a text", "another"]), pad_id=0)  # doctest: +SKIP
>>> sorted(batch)  # doctest: +SKIP
['attention_mask', 'input_ids', 'token_type_ids']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tf_minilm.constants import INPUT_NAMES

PAD_TOKENS = ("[PAD]", "<pad>")
"""Padding tokens of BERT-style and RoBERTa-style vocabularies."""


def truncating_copy(tokenizer: Any, max_seq_len: int) -> Any:
    """A copy of a `tokenizers.Tokenizer` that truncates to `max_seq_len` and never pads.

    The caller's tokenizer keeps its own settings.
    """
    import tokenizers

    copy = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length=max_seq_len)
    return copy


def pad_id_of(tokenizer: Any, default: int = 0) -> int:
    """The tokenizer's padding id: its padding setting, else [PAD] / <pad>, else `default`."""
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in PAD_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return default


def tokenize(tokenizer: Any, texts: Sequence[str], max_seq_len: int) -> list[list[int]]:
    """Token ids of every text, special tokens added, truncated to `max_seq_len`."""
    return [encoding.ids for encoding in truncating_copy(tokenizer, max_seq_len)
            .encode_batch(list(texts))]


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int,
              type_ids: Sequence[Sequence[int]] | None = None,
              dtype: Any = np.int32) -> dict[str, np.ndarray]:
    """Right-pad token id lists to the longest: `input_ids`, `attention_mask`, `token_type_ids`.

    Args:
        ids: token ids per text.
        pad_id: id written after each text's end.
        type_ids: token type ids per text (default zeros: single-text inputs).
        dtype: integer dtype of the arrays (int32 for Keras, int64 for ONNX graphs).

    Returns:
        Arrays [len(ids), longest] named as in `INPUT_NAMES` ([0, 0] when `ids` is empty).
    """
    width = max((len(row) for row in ids), default=0)
    batch = {name: np.zeros((len(ids), width), dtype) for name in INPUT_NAMES}
    batch["input_ids"].fill(pad_id)
    for i, row in enumerate(ids):
        batch["input_ids"][i, :len(row)] = row
        batch["attention_mask"][i, :len(row)] = 1
        if type_ids is not None:
            batch["token_type_ids"][i, :len(row)] = type_ids[i]
    return batch


def pad_encodings(encodings: Sequence[Any], pad_id: int, dtype: Any = np.int64
                  ) -> dict[str, np.ndarray]:
    """`pad_batch` of `tokenizers` encodings, their token type ids kept."""
    return pad_batch([e.ids for e in encodings], pad_id, [e.type_ids for e in encodings], dtype)


def batched_apply(fn: Callable[[dict[str, np.ndarray]], Any], ids: Sequence[Sequence[int]],
                  batch_size: int, pad_id: int) -> np.ndarray:
    """`fn` over padded batches of `ids`, rows back in input order.

    Texts are batched by length (little padding); `fn` gets a `pad_batch` dict and
    returns one row per example.
    """
    order = np.argsort([len(row) for row in ids], kind="stable")
    outputs: list[np.ndarray] = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        outputs.append(np.asarray(fn(pad_batch([ids[i] for i in rows], pad_id))))
    stacked = np.concatenate(outputs, axis=0)
    result = np.empty_like(stacked)
    result[order] = stacked
    return result
