"""Parity of exported ONNX graphs with the Keras float32 model, on real tokenized text.

Owns: the validation sentences, the tolerances and the parity report. Imports:
`export.errors`, `tf_minilm.tokens`, `serving.runtime` (its onnxruntime session).

A fixed set of sentences of very different lengths is tokenized with the model's own
tokenizer and run as one right-padded batch through the Keras float32 function and
through onnxruntime. The float32 graph must match to `FP32_TOLERANCE` (max abs over
real tokens of `last_hidden_state`, and over `sentence_embedding`); the int8 graph's
sentence embeddings must keep a cosine of at least `INT8_MIN_COSINE` for every
sentence.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from export.errors import ParityError

logger = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.99

VALIDATION_SENTENCES = (
    "Hi.",
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "Is this the right way to the station?",
    "Stocks fell sharply on Monday after the central bank raised interest rates "
    "by half a point, the largest increase in two decades.",
    "She won the match 6-4, 3-6, 7-5 in just under three hours.",
    "Distillation trains a small student model to imitate a large teacher.",
    "ok",
    "The film is long, slow and frankly rather dull, but the final twenty minutes "
    "are worth the wait: tense, beautifully shot and surprisingly moving.",
    "Numbers like 3.14159, 2,718 and 1e-9 should tokenize too.",
    "Why?",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e na\u00efve r\u00e9sum\u00e9",
    "The committee said that the report, which was published on Tuesday, had been "
    "reviewed by independent experts from several universities and research "
    "institutes before it was sent to the ministry for a final decision on the "
    "funding of the programme over the next five years, and that no further "
    "changes were expected.",
    "Good music, bad sound.",
    "The team played well in the second half and scored twice.",
    "attention value query key layer",
)


def tokenize(
    tokenizer: Any, texts: tuple[str, ...] | list[str], max_seq_len: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Tokenize `texts` into one right-padded int64 batch (truncated to `max_seq_len`).

    The tokenizer's own padding/truncation settings are ignored (a copy is used).

    Returns:
        `{"input_ids", "attention_mask", "token_type_ids"}`, each int64 [n, longest].
    """
    from tf_minilm.tokens import pad_encodings, truncating_copy

    return pad_encodings(truncating_copy(tokenizer, max_seq_len).encode_batch(list(texts)), pad_id)


def keras_outputs(function: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the Keras `tf.function` on `feeds`; outputs as float32 NumPy arrays."""
    import tensorflow as tf

    outputs = function(**{name: tf.constant(value) for name, value in feeds.items()})
    return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}


def onnx_outputs(path: str | os.PathLike, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the ONNX model at `path` with onnxruntime (all graph optimizations, CPU)."""
    from serving.runtime import make_session

    session = make_session(path)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return (a * b).sum(axis=1) / norms


def compare(
    reference: dict[str, np.ndarray], got: dict[str, np.ndarray], attention_mask: np.ndarray
) -> dict[str, float]:
    """Max abs differences over real tokens / sentences and embedding cosines.

    Outputs other than `last_hidden_state` and `sentence_embedding` are compared whole
    (`max_abs_<name>`).
    """
    figures: dict[str, float] = {}
    real = attention_mask.astype(bool)
    for name, expected in reference.items():
        if name not in got:
            raise ParityError(f"the ONNX graph has no output {name!r} (has {sorted(got)})")
        actual = got[name]
        if actual.shape != expected.shape:
            raise ParityError(
                f"output {name!r} has shape {actual.shape}, Keras gives {expected.shape}"
            )
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        if name == "last_hidden_state":
            diff = diff[real]
        figures[f"max_abs_{name}"] = float(diff.max()) if diff.size else 0.0
    if "sentence_embedding" in reference:
        cosines = _cosines(reference["sentence_embedding"], got["sentence_embedding"])
        figures["min_cosine"] = float(cosines.min())
        figures["mean_cosine"] = float(cosines.mean())
    return figures


def validate_export(
    function: Any,
    tokenizer: Any,
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike | None = None,
    max_seq_len: int = 128,
    pad_id: int = 0,
    fp32_tolerance: float = FP32_TOLERANCE,
    int8_min_cosine: float = INT8_MIN_COSINE,
    texts: tuple[str, ...] = VALIDATION_SENTENCES,
) -> dict[str, Any]:
    """Check the exported graphs against the Keras float32 `function`.

    Args:
        function: the `tf.function` that was converted (three int64 inputs).
        tokenizer: the model's `tokenizers.Tokenizer`.
        fp32_path: float32 ONNX file.
        int8_path: int8 ONNX file, or None.
        max_seq_len: truncation length.
        pad_id: id written into padded positions.
        fp32_tolerance: max abs difference allowed for float32 outputs.
        int8_min_cosine: least cosine to the Keras sentence embedding allowed for int8.
        texts: sentences to run.

    Returns:
        `{"sentences", "batch_shape", "token_counts", "fp32": {...}, "int8": {...}}`;
        each entry holds the figures, the threshold and `passed`.

    Raises:
        ParityError: a check failed; `err.figures` holds everything measured.
    """
    feeds = tokenize(tokenizer, texts, max_seq_len, pad_id)
    mask = feeds["attention_mask"]
    reference = keras_outputs(function, feeds)
    figures: dict[str, Any] = {
        "sentences": len(texts),
        "batch_shape": list(mask.shape),
        "token_counts": [int(n) for n in mask.sum(axis=1)],
    }
    fp32 = compare(reference, onnx_outputs(fp32_path, feeds), mask)
    fp32_max = max(value for key, value in fp32.items() if key.startswith("max_abs_"))
    fp32.update({"tolerance": fp32_tolerance, "passed": bool(fp32_max <= fp32_tolerance)})
    figures["fp32"] = fp32
    failures = []
    if not fp32["passed"]:
        failures.append(
            f"float32 graph differs from Keras by {fp32_max:.3g} (max abs; tolerance "
            f"{fp32_tolerance:g}): {fp32}"
        )
    if int8_path is not None:
        int8 = compare(reference, onnx_outputs(int8_path, feeds), mask)
        if "min_cosine" not in int8:
            raise ParityError("int8 validation needs a 'sentence_embedding' output")
        int8.update({"threshold": int8_min_cosine,
                     "passed": bool(int8["min_cosine"] >= int8_min_cosine)})
        figures["int8"] = int8
        if not int8["passed"]:
            failures.append(
                f"int8 graph's sentence embeddings reach a min cosine of {int8['min_cosine']:.4f} "
                f"to Keras float32 (threshold {int8_min_cosine}): {int8}. Dynamic int8 quantizes "
                "activations per tensor, which costs most on inputs of 1-3 tokens; accept a lower "
                "floor with --int8-min-cosine or export with --quantize none"
            )
    if failures:
        raise ParityError("parity check failed: " + " | ".join(failures), figures)
    logger.info("parity: fp32 %s%s", fp32,
                f", int8 {figures['int8']}" if "int8" in figures else "")
    return figures
