"""Text classification from an exported fine-tuned classifier, on onnxruntime.

Owns: `ClassifierModel` (labels and per-label scores of texts), `Classifications`, the
labels file's reading, and `open_model`, which opens whichever kind of model an export
folder holds. Imports: `serving.runtime`, `tf_minilm.constants` (no TensorFlow).

A classifier export (`tf-minilm export` of what `tf-minilm evaluate --save-model`
saved) holds `model.onnx` / `model.int8.onnx` with one output `logits` [batch, labels],
`labels.json` (`{"labels": [...]}`, in logit order), the tokenizer and an
`export_report.json` whose `kind` is "classifier".
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.runtime import (
    EmbeddingModel,
    ModelFolderError,
    OnnxTextModel,
    load_export_report,
    resolve_model_path,
)
from tf_minilm.constants import CLASSIFIER_OUTPUTS, EXPORT_KINDS, LABELS_FILE, ONNX_MODEL_FILE

(LOGITS_OUTPUT,) = CLASSIFIER_OUTPUTS


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float32 out, computed in float64)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class Classifications:
    """Result of `ClassifierModel.classify`.

    Args:
        scores: float32 [n, labels] class probabilities, row i for text i.
        labels: the label names, in column order.
        token_counts: tokens fed to the model for each text.
    """

    scores: np.ndarray
    labels: list[str]
    token_counts: list[int]

    @property
    def predicted(self) -> list[str]:
        """The most probable label of each text."""
        return [self.labels[i] for i in self.scores.argmax(axis=1)]

    def slice(self, start: int, stop: int) -> Classifications:
        """The results of texts `start:stop` (how the batcher hands each request its own)."""
        return Classifications(self.scores[start:stop], self.labels,
                               self.token_counts[start:stop])


def read_labels(folder: str | os.PathLike[str]) -> list[str]:
    """The label names of a classifier export (`labels.json`).

    Raises:
        ModelFolderError: the file is missing or is not `{"labels": [distinct strings]}`.
    """
    path = os.path.join(os.fspath(folder), LABELS_FILE)
    if not os.path.isfile(path):
        raise ModelFolderError(f"classifier folder {os.fspath(folder)!r} has no {LABELS_FILE!r} "
                               "(the export writes it beside the .onnx files)")
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"cannot read {path!r}: {err}") from err
    labels = value.get("labels") if isinstance(value, dict) else None
    if not isinstance(labels, list) or not labels or not all(
            isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
        raise ModelFolderError(f"{path!r}: field 'labels' must be a list of distinct non-empty "
                               f"strings, got {labels!r}")
    return labels


class ClassifierModel(OnnxTextModel):
    """Labels and per-label scores of texts from an exported classifier folder.

    Texts are tokenized, batched by length and run as in `EmbeddingModel`; the logits
    become probabilities (softmax) over the folder's labels.

    Args:
        model_dir: exported classifier folder (or a `.onnx` file in it).
        model_file: "model.onnx" (fp32) or "model.int8.onnx" (int8).
        max_seq_len: truncation length; default: `export_report.json`'s (the length
            the classifier was fine-tuned at).
        intra_op_threads: onnxruntime threads per operator; None lets it decide.

    Example:
    >>> model = ClassifierModel("runs/mr-classifier-onnx")
    >>> model.classify(["a warm and funny film"]).predicted
    ['fresh']
    """

    kind = EXPORT_KINDS[1]

    def __init__(self, model_dir: str | os.PathLike[str], model_file: str = ONNX_MODEL_FILE,
                 max_seq_len: int | None = None, intra_op_threads: int | None = None) -> None:
        super().__init__(model_dir, model_file, max_seq_len, intra_op_threads)
        self.labels = read_labels(self.folder)
        outputs = {o.name: o for o in self.session.get_outputs()}
        if LOGITS_OUTPUT not in outputs:
            raise ModelFolderError(f"{str(self.model_path)!r} has outputs {sorted(outputs)}; a "
                                   f"classifier needs {LOGITS_OUTPUT!r}")
        width = outputs[LOGITS_OUTPUT].shape[-1]
        if isinstance(width, int) and width != len(self.labels):
            raise ModelFolderError(
                f"{str(self.model_path)!r} gives {width} logits but {LABELS_FILE} names "
                f"{len(self.labels)} labels")

    @property
    def num_labels(self) -> int:
        """How many labels the model chooses from."""
        return len(self.labels)

    def info(self) -> dict[str, Any]:
        """Model facts for health checks and logs: `OnnxTextModel.info` plus the labels."""
        return {**super().info(), "labels": list(self.labels)}

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray,
               token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """The float32 [batch, labels] logits of tokenized, padded inputs."""
        feeds = self.feeds(input_ids, attention_mask, token_type_ids)
        (values,) = self.session.run([LOGITS_OUTPUT], feeds)
        return values

    def classify(self, texts: Sequence[str], batch_size: int = 32) -> Classifications:
        """Class probabilities of texts.

        Args:
            texts: list of strings.
            batch_size: texts per onnxruntime call.

        Returns:
            `Classifications` in input order.

        Raises:
            NonFiniteOutputError: the logits of a text hold NaN or inf (nothing is returned).
        """
        logits, counts = self._run_sorted(texts, batch_size, self.num_labels,
                                          lambda batch: self.logits(**batch))
        return Classifications(softmax(logits), list(self.labels), counts)

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[str]:
        """The most probable label of each text."""
        return self.classify(texts, batch_size).predicted


def open_model(model_dir: str | os.PathLike[str], model_file: str = ONNX_MODEL_FILE,
               max_seq_len: int | None = None,
               intra_op_threads: int | None = None) -> EmbeddingModel | ClassifierModel:
    """The model an export folder holds: a `ClassifierModel` when its report's `kind` is
    "classifier", else an `EmbeddingModel` (arguments as theirs)."""
    folder, _ = resolve_model_path(model_dir, model_file)
    cls = ClassifierModel if load_export_report(folder).kind == EXPORT_KINDS[1] else EmbeddingModel
    return cls(model_dir, model_file=model_file, max_seq_len=max_seq_len,
               intra_op_threads=intra_op_threads)
