"""Fidelity of a student to its teacher: how closely its sentence embeddings track the teacher's.

Owns: the fidelity metrics, the embedder of a model in any form (HF folder, .keras, ONNX
export) and the texts they are measured on. Imports: `evaluate.embed`, `evaluate.tasks`,
`hf`, `model`, `tokens`, `serving.runtime` (ONNX exports).

No labels are needed. Both models embed the same texts (their pooling, L2-normalised);
then, with T and S the [n, d] embedding matrices:

- `pairwise_spearman`: Spearman correlation between the n(n-1)/2 cosine similarities
  of all pairs i < j under the teacher and under the student (does the student rank
  pairs of texts as the teacher does? the figure embedding users care about);
- `linear_cka`: linear centred kernel alignment (Kornblith et al. 2019),
  ||S_c^T T_c||_F^2 / (||T_c^T T_c||_F ||S_c^T S_c||_F) on the column-centred
  matrices (invariant to rotations and isotropic scaling, so widths may differ);
- `knn_overlap`: the share of each text's k nearest neighbours under the teacher
  (cosine, itself excluded) that are also among its k nearest under the student.

A model scores 1 on each against itself and against any rotation of itself.
`embedder` turns an HF folder, a `.keras` encoder file or an exported ONNX folder into
a texts -> embeddings function, so the three forms of a student are measured alike.
Spearman comes from SciPy; CKA and kNN overlap are a few lines of NumPy that no
kept library provides.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tf_minilm.model.pooling import PoolingSpec, read_pooling

logger = logging.getLogger(__name__)

DEFAULT_K = 10
Embedder = Callable[[Sequence[str]], np.ndarray]


class FidelityError(ValueError):
    """Inputs the fidelity measurement cannot use; the message names the file or flag."""


# ----------------------------------------------------------------------- metrics
def _check_pair(teacher: np.ndarray, student: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    teacher = np.asarray(teacher, np.float64)
    student = np.asarray(student, np.float64)
    if teacher.ndim != 2 or student.ndim != 2 or len(teacher) != len(student):
        raise FidelityError(f"need two [n, dim] embedding matrices with the same n, got "
                            f"{teacher.shape} and {student.shape}")
    if len(teacher) < 3:
        raise FidelityError(f"need at least 3 texts to compare, got {len(teacher)}")
    if not (np.all(np.isfinite(teacher)) and np.all(np.isfinite(student))):
        raise FidelityError("embeddings hold NaN or inf")
    return teacher, student


def _cosine_matrix(x: np.ndarray) -> np.ndarray:
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def pairwise_spearman(teacher: np.ndarray, student: np.ndarray) -> float:
    """Spearman correlation of all pairwise cosine similarities (i < j), teacher vs student."""
    from scipy.stats import spearmanr

    teacher, student = _check_pair(teacher, student)
    upper = np.triu_indices(len(teacher), k=1)
    rho = spearmanr(_cosine_matrix(teacher)[upper], _cosine_matrix(student)[upper]).statistic
    return float(rho)


def linear_cka(teacher: np.ndarray, student: np.ndarray) -> float:
    """Linear CKA of the column-centred embedding matrices (1 = same up to rotation/scale)."""
    teacher, student = _check_pair(teacher, student)
    t = teacher - teacher.mean(axis=0)
    s = student - student.mean(axis=0)
    cross = np.linalg.norm(s.T @ t, "fro") ** 2
    return float(cross / (np.linalg.norm(t.T @ t, "fro") * np.linalg.norm(s.T @ s, "fro")))


def _neighbours(x: np.ndarray, k: int) -> np.ndarray:
    similarity = _cosine_matrix(x)
    np.fill_diagonal(similarity, -np.inf)
    return np.argpartition(-similarity, k - 1, axis=1)[:, :k]


def knn_overlap(teacher: np.ndarray, student: np.ndarray, k: int = DEFAULT_K) -> float:
    """Mean share of each text's k teacher neighbours found among its k student neighbours."""
    teacher, student = _check_pair(teacher, student)
    if not 1 <= k < len(teacher):
        raise FidelityError(f"k={k} must be in 1..{len(teacher) - 1} for {len(teacher)} texts")
    mine, theirs = _neighbours(student, k), _neighbours(teacher, k)
    shared = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(mine, theirs,
                                                                           strict=True)]
    return float(np.mean(shared) / k)


def fidelity_metrics(teacher: np.ndarray, student: np.ndarray, k: int = DEFAULT_K
                     ) -> dict[str, float]:
    """{"spearman", "cka", "knn@k"} of `student` embeddings against `teacher` embeddings."""
    return {"spearman": pairwise_spearman(teacher, student),
            "cka": linear_cka(teacher, student),
            f"knn@{k}": knn_overlap(teacher, student, k)}


# ----------------------------------------------------------------------- embedders
def encoder_embedder(encoder: Any, tokenizer: Any, pooling: PoolingSpec, max_seq_len: int = 128,
                     batch_size: int = 64) -> Embedder:
    """texts -> [n, hidden] float32 sentence embeddings of a Keras `Encoder` (dropout off).

    Uses `tf_minilm.model.pooling.sentence_embedding`, the pooling of distillation. Texts
    are truncated to `max_seq_len` tokens, or to the encoder's position table if shorter.
    """
    from tf_minilm.evaluate.embed import embed_ids, pooled_forward
    from tf_minilm.tokens import tokenize

    forward = pooled_forward(encoder, pooling)
    max_seq_len = min(max_seq_len, encoder.config.max_sequence_length)
    return lambda texts: embed_ids(forward, tokenize(tokenizer, texts, max_seq_len),
                                   encoder.config.pad_token_id, batch_size)


def embedder(path: str, tokenizer_dir: str | None = None, pooling: PoolingSpec | None = None,
             max_seq_len: int = 128, batch_size: int = 64,
             default_pooling: PoolingSpec | None = None) -> tuple[Embedder, dict[str, Any]]:
    """An embedding function for a model in any of its forms, and a description of it.

    Args:
        path: an HF checkpoint folder (config.json), a `.keras` file holding an `Encoder`,
            or an exported ONNX folder (export_report.json; pooling and normalisation are
            inside its graph).
        tokenizer_dir: folder of the tokenizer for a `.keras` file (which has none);
            default: the file's folder.
        pooling: pooling of an HF folder or `.keras` file; default what the folder's
            sentence-transformers files say, else `default_pooling`.
        max_seq_len: truncation length in tokens.
        batch_size: texts per forward pass.
        default_pooling: pooling of a folder without sentence-transformers files (e.g.
            the teacher's, for its students); default mean + normalise.

    Returns:
        (texts -> embeddings, {"path", "form", "pooling"}).

    Raises:
        FidelityError: a path that is none of the three forms.
    """
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "export_report.json")):
        from serving.runtime import EmbeddingModel

        model = EmbeddingModel(path, max_seq_len=max_seq_len)
        info = {"path": path, "form": "onnx", "pooling": model.report.pooling}
        return (lambda texts: model.encode(list(texts), batch_size=batch_size)), info
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        from tf_minilm.hf.checkpoints import load_hf_checkpoint

        encoder, tokenizer = load_hf_checkpoint(path)
        spec = pooling or read_pooling(path, default_pooling)
    elif os.path.isfile(path) and path.endswith(".keras"):
        import keras

        from tf_minilm.hf.tokenizer import load_tokenizer
        from tf_minilm.model.encoder import Encoder

        encoder = keras.saving.load_model(path)
        if not isinstance(encoder, Encoder):
            raise FidelityError(f"{path}: holds a {type(encoder).__name__}, not a tf_minilm "
                                "Encoder")
        folder = tokenizer_dir or os.path.dirname(os.path.abspath(path))
        tokenizer = load_tokenizer(folder)
        spec = pooling or read_pooling(folder, default_pooling)
    else:
        raise FidelityError(f"{path}: not an HF model folder (config.json), a .keras file or an "
                            "exported ONNX folder (export_report.json)")
    info = {"path": path, "form": "keras" if path.endswith(".keras") else "hf",
            "pooling": spec.to_dict()}
    return encoder_embedder(encoder, tokenizer, spec, max_seq_len, batch_size), info


# ----------------------------------------------------------------------- texts
@dataclasses.dataclass
class FidelityTexts:
    """The texts a fidelity figure was measured on, and where they come from."""

    texts: list[str]
    source: str


def mr_test_texts(seed: int = 0, max_texts: int | None = None) -> FidelityTexts:
    """The MR (Rotten Tomatoes) held-out sentences of `tf-minilm evaluate --task mr`.

    The default distillation corpus never contains them (BBC News and other text).
    """
    from tf_minilm.evaluate.tasks import load_task

    task = load_task("mr", seed=seed, max_test=max_texts)
    return FidelityTexts(list(task.test_texts),
                         f"MR test split (seed {seed}, {len(task.test_texts)} sentences)")


def file_texts(path: str, max_texts: int | None = None) -> FidelityTexts:
    """One text per non-blank line of a UTF-8 file."""
    try:
        with open(path, encoding="utf-8") as handle:
            texts = [line.strip() for line in handle if line.strip()]
    except OSError as err:
        raise FidelityError(f"--texts {path}: cannot read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise FidelityError(f"--texts {path}: not UTF-8 text ({err})") from err
    if max_texts is not None:
        texts = texts[:max_texts]
    if len(texts) < 3:
        raise FidelityError(f"--texts {path}: needs at least 3 non-blank lines, has {len(texts)}")
    return FidelityTexts(texts, f"{path} ({len(texts)} lines)")


MAX_HELD_OUT_ROWS = 2550
"""Held-out rows `run_fidelity` compares at most (the size of the MR test set): its
pairwise metrics cost n^2 memory and time, so a large corpus's 1% is sampled."""


def run_fidelity(teacher: Any, student: Any, tokenizer: Any, pooling: PoolingSpec,
                 held_out: Any | None, max_seq_len: int = 128, k: int = DEFAULT_K,
                 seed: int = 0) -> dict[str, Any]:
    """What `tf-minilm distill` records at the end: fidelity on held-out rows and on MR.

    Args:
        teacher, student: Keras `Encoder`s.
        tokenizer: the teacher's tokenizer (for the MR sentences).
        pooling: the teacher's pooling, applied to both.
        held_out: the corpus's held-out `Sequences` (None or fewer than k + 1 rows: skipped;
            more than `MAX_HELD_OUT_ROWS`: a sample of that many, drawn from `seed`).
        max_seq_len: truncation of the MR sentences.
        k: neighbours for kNN overlap.
        seed: the MR split seed (as `tf-minilm evaluate`).

    Returns:
        {"held_out": {...}, "mr": {...}}, each with the texts used and the metrics; a
        part that cannot be measured (MR package missing) says why instead.
    """
    report: dict[str, Any] = {}
    if held_out is not None and len(held_out) > k:
        from tf_minilm.evaluate.embed import embed_rows

        total = len(held_out)
        if total > MAX_HELD_OUT_ROWS:
            # The pairwise metrics grow with n^2: a fixed-size sample of a large corpus's rows.
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF1DE]))
            held_out = held_out.take(np.sort(rng.choice(total, MAX_HELD_OUT_ROWS, replace=False)))
        teacher_rows = embed_rows(teacher, held_out.input_ids, held_out.attention_mask, pooling)
        student_rows = embed_rows(student, held_out.input_ids, held_out.attention_mask, pooling)
        used = len(held_out)
        report["held_out"] = {"texts": f"held-out corpus rows ({used}"
                                       + (f" sampled of {total}" if used < total else "") + ")",
                              "num_texts": used,
                              **fidelity_metrics(teacher_rows, student_rows, k)}
    from tf_minilm.evaluate.tasks import TaskError

    try:
        texts = mr_test_texts(seed)
    except TaskError as err:
        report["mr"] = {"skipped": str(err)}
        return report
    measured = measure(encoder_embedder(teacher, tokenizer, pooling, max_seq_len),
                       {"student": encoder_embedder(student, tokenizer, pooling, max_seq_len)},
                       texts, k)
    report["mr"] = {"texts": measured["texts"], "num_texts": measured["num_texts"],
                    **measured["results"]["student"]}
    return report


def measure(teacher: Embedder, students: dict[str, Embedder], texts: FidelityTexts,
            k: int = DEFAULT_K) -> dict[str, Any]:
    """Fidelity of each student to the teacher on `texts`.

    Returns:
        {"texts": source, "num_texts": n, "k": k, "results": {name: metrics}}.
    """
    reference = teacher(texts.texts)
    results = {name: fidelity_metrics(reference, embed(texts.texts), k)
               for name, embed in students.items()}
    for name, values in results.items():
        logger.info("fidelity of %s on %s: %s", name, texts.source,
                    " ".join(f"{key}={value:.4f}" for key, value in values.items()))
    return {"texts": texts.source, "num_texts": len(texts.texts), "k": k, "results": results}
