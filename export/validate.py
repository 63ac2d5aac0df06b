"""Parity of exported ONNX graphs with the Keras float32 model, on real tokenized text.

Owns: the validation sentences, the tolerances and the parity report. Imports:
`export.errors`, `tf_minilm.tokens`, `serving.runtime` (its onnxruntime session).

A fixed set of sentences of very different lengths is tokenized with the model's own
tokenizer and run as one right-padded batch through the Keras float32 function and
through onnxruntime. The float32 graph must match to `FP32_TOLERANCE` (max abs over
real tokens of `last_hidden_state`, and over `sentence_embedding`); the int8 graph's
sentence embeddings must keep a cosine of at least `INT8_MIN_COSINE` for every
sentence; a classifier's int8 graph must move no class probability by more than
`INT8_MAX_PROBABILITY_DIFF`.
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
INT8_MAX_PROBABILITY_DIFF = 0.05
"""A classifier's int8 graph may move no class probability by more than this."""

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


CALIBRATION_SENTENCES = (
    "Yes.",
    "Thanks a lot!",
    "Where did you park the car last night?",
    "The river rose three metres after a week of heavy rain in the hills.",
    "Shares in the airline jumped 12% once the merger was approved.",
    "I would not watch it again.",
    "A warm, funny and quietly brilliant little film.",
    "Please send the invoice by Friday, 5 June.",
    "The new library opens at 9am and closes at 8pm on weekdays.",
    "He scored in the 89th minute to win the cup for his home town.",
    "What a waste of two hours",
    "Model compression keeps the accuracy while cutting the cost of inference.",
    "The minister denied the claims, saying the figures had been taken out of context "
    "and that the budget for schools would rise in real terms next year.",
    "no",
    "Rain, then sun; then rain again.",
    "The orchestra played Beyond the Sea, and the hall fell silent.",
    "Tickets cost $40 (about 37 euros) each.",
    "She spent the winter of 1998 in a small village north of Oslo.",
    "Three new vaccines are in trial, the agency said on Thursday.",
    "Loud, long and pointless.",
    "Can it run on a phone?",
    "The server returned error 503 after the update.",
    "An honest, moving portrait of a family that refuses to give up.",
    "Our team meets every Monday to plan the week.",
    "Inflation slowed for the third month in a row, easing pressure on households "
    "that had seen food and energy bills climb throughout the year.",
    "The vote was delayed until after the summer break.",
    "Best pizza in town.",
    "Why does the sky look blue?",
    "He fixed the bug, wrote a test, and went home.",
    "The striker signed a four-year contract with the club.",
    "Nothing here works.",
    "An asteroid about the size of a bus passed close to Earth this week.",
)
"""Texts for activation ranges (int8 smoothing, outlier channels); never the validation
sentences, so the check does not grade its own calibration."""


def calibration_feeds(tokenizer: Any, max_seq_len: int, pad_id: int,
                      batch_size: int = 8) -> list[dict[str, np.ndarray]]:
    """`CALIBRATION_SENTENCES` as right-padded int64 batches of `batch_size`."""
    texts = CALIBRATION_SENTENCES
    return [tokenize(tokenizer, texts[i:i + batch_size], max_seq_len, pad_id)
            for i in range(0, len(texts), batch_size)]


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


def reference_outputs(function: Any, tokenizer: Any, max_seq_len: int, pad_id: int,
                      texts: tuple[str, ...] = VALIDATION_SENTENCES
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The validation feeds and the Keras float32 `function`'s outputs on them."""
    feeds = tokenize(tokenizer, texts, max_seq_len, pad_id)
    return feeds, keras_outputs(function, feeds)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (class probabilities of a classifier's logits)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def check_fp32(reference: dict[str, np.ndarray], fp32_path: str | os.PathLike,
               feeds: dict[str, np.ndarray], tolerance: float = FP32_TOLERANCE) -> dict[str, Any]:
    """The float32 graph's figures against Keras: every output's max abs difference,
    `tolerance` and `passed` (all of them within it)."""
    figures: dict[str, Any] = compare(reference, onnx_outputs(fp32_path, feeds),
                                      feeds["attention_mask"])
    worst = max(value for key, value in figures.items() if key.startswith("max_abs_"))
    figures.update({"tolerance": tolerance, "passed": bool(worst <= tolerance)})
    return figures


def check_int8(reference: dict[str, np.ndarray], int8_path: str | os.PathLike,
               feeds: dict[str, np.ndarray], min_cosine: float = INT8_MIN_COSINE,
               max_probability_diff: float = INT8_MAX_PROBABILITY_DIFF) -> dict[str, Any]:
    """An int8 graph's figures against Keras float32, and whether it holds.

    An embedding graph holds when every sentence embedding keeps a cosine of at least
    `min_cosine`; a classifier (a `logits` output) when no class probability moves by
    more than `max_probability_diff` (the share of unchanged labels is reported too).

    Returns:
        The `compare` figures plus the threshold and `passed`.
    """
    outputs = onnx_outputs(int8_path, feeds)
    figures: dict[str, Any] = compare(reference, outputs, feeds["attention_mask"])
    if "sentence_embedding" in reference:
        figures.update({"threshold": min_cosine,
                        "passed": bool(figures["min_cosine"] >= min_cosine)})
    elif "logits" in reference:
        expected, actual = softmax(reference["logits"]), softmax(outputs["logits"])
        figures["max_abs_probability"] = float(np.abs(actual - expected).max())
        figures["label_agreement"] = float(
            (actual.argmax(axis=1) == expected.argmax(axis=1)).mean())
        figures.update({"threshold": max_probability_diff,
                        "passed": bool(figures["max_abs_probability"] <= max_probability_diff)})
    else:
        raise ParityError("int8 validation needs a 'sentence_embedding' or 'logits' output")
    return figures


def int8_failure(figures: dict[str, Any]) -> str:
    """The sentence explaining why an int8 graph's `figures` (from `check_int8`) fail."""
    if "min_cosine" in figures:
        return (f"int8 graph's sentence embeddings reach a min cosine of "
                f"{figures['min_cosine']:.4f} to Keras float32 (threshold "
                f"{figures['threshold']}): {figures}. Dynamic int8 quantizes activations per "
                "tensor, which costs most on inputs of 1-3 tokens; accept a lower floor with "
                "--int8-min-cosine or export with --quantize none")
    return (f"int8 graph's class probabilities move by up to {figures['max_abs_probability']:.4f} "
            f"from Keras float32 (threshold {figures['threshold']}): {figures}; accept more with "
            "--int8-max-prob-diff or export with --quantize none")


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
    int8_max_probability_diff: float = INT8_MAX_PROBABILITY_DIFF,
    reference: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Check the exported graphs against the Keras float32 `function`.

    Args:
        function: the `tf.function` that was converted (three int64 inputs); None
            when `reference` is given.
        tokenizer: the model's `tokenizers.Tokenizer`.
        fp32_path: float32 ONNX file.
        int8_path: int8 ONNX file, or None.
        max_seq_len: truncation length.
        pad_id: id written into padded positions.
        fp32_tolerance: max abs difference allowed for float32 outputs.
        int8_min_cosine: least cosine to the Keras sentence embedding allowed for int8.
        texts: sentences to run.
        int8_max_probability_diff: a classifier's largest allowed class-probability change.
        reference: `reference_outputs(...)` of these texts when the caller already has
            them (the Keras model then is not run again).

    Returns:
        `{"sentences", "batch_shape", "token_counts", "fp32": {...}, "int8": {...}}`;
        each entry holds the figures, the threshold and `passed`.

    Raises:
        ParityError: a check failed; `err.figures` holds everything measured.
    """
    if reference is None and function is None:
        raise ValueError("validate_export needs the converted function or its reference outputs")
    feeds, reference = reference or reference_outputs(function, tokenizer, max_seq_len, pad_id,
                                                      texts)
    mask = feeds["attention_mask"]
    figures: dict[str, Any] = {
        "sentences": len(texts),
        "batch_shape": list(mask.shape),
        "token_counts": [int(n) for n in mask.sum(axis=1)],
    }
    fp32 = check_fp32(reference, fp32_path, feeds, fp32_tolerance)
    figures["fp32"] = fp32
    failures = []
    if not fp32["passed"]:
        worst = max(value for key, value in fp32.items() if key.startswith("max_abs_"))
        failures.append(
            f"float32 graph differs from Keras by {worst:.3g} (max abs; tolerance "
            f"{fp32_tolerance:g}): {fp32}"
        )
    if int8_path is not None:
        int8 = check_int8(reference, int8_path, feeds, int8_min_cosine, int8_max_probability_diff)
        figures["int8"] = int8
        if not int8["passed"]:
            failures.append(int8_failure(int8))
    if failures:
        raise ParityError("parity check failed: " + " | ".join(failures), figures)
    logger.info("parity: fp32 %s%s", fp32,
                f", int8 {figures['int8']}" if "int8" in figures else "")
    return figures
