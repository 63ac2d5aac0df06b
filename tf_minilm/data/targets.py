"""Teacher targets stored beside a prepared directory: one teacher forward per row, ever.

Owns: the targets format (`targets/` in a prepared directory), `write_targets` (runs the
teacher over every row once, shard by shard, each part written atomically and the
manifest last, so a killed run resumes at the first missing part), `open_targets` (every
check before training: the rows, the teacher's weights, its pooling, the dtype, each
file's shape and checksum) and `StoredTargets.gather` (a batch's targets by row).
Imports: NumPy, `data.shards` (its error too), `fileio`, `model.pooling`; the
teacher forward imports TensorFlow inside `write_targets` only.

Why: with a 12 x 768 teacher and a 3 x 384 student the teacher's forward is most of a
distillation step, and a live run repeats it for every row every time the row comes
round. The alignment terms need only the teacher's outputs, so they are computed once
here (as sentence-transformers' distillation computes the teacher's embeddings once) and
read through memory maps during training. MiniLM's relation terms need the teacher's
Q/K/V of a layer, [rows, tokens, 3 x hidden] per row; they are not stored (a run with a
relation term runs the teacher live).

Layout of `DATA_DIR/targets/`, for shard k of the prepared directory:

    embedding-0000k.npy   [rows of shard k, hidden]: the teacher's sentence embedding
                          (its own pooling and normalisation)
    hidden-0000k.npy      [tokens of shard k, hidden]: the teacher's last hidden state of
                          each real token, in the order of the shard's ids, so row r's
                          states are at the shard's offsets[r]:offsets[r + 1]
    targets.json          written last: kinds, dtype, the teacher's weight SHA-256 and
                          pooling, the SHA-256 of the rows' manifest, and each part's
                          shape and SHA-256

float16 parts are NumPy float16; bfloat16 parts hold the bfloat16 bits as uint16 (NumPy
has no bfloat16 of its own; `ml_dtypes`, which TensorFlow ships, reads them back).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tf_minilm.data.shards import (
    MANIFEST_FILE,
    PreparedData,
    PreparedDataError,
    file_sha256,
    read_format_json,
    write_npy,
)
from tf_minilm.fileio import write_json_atomic
from tf_minilm.model.pooling import PoolingSpec

logger = logging.getLogger(__name__)

TARGETS_DIR = "targets"
TARGETS_MANIFEST = "targets.json"
TARGETS_FORMAT = 1
TARGET_KINDS = ("embedding", "hidden")
TARGET_DTYPES = ("float16", "bfloat16")
WEIGHT_FILE_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "tf_model*.h5")

# Terms of the objective each kind serves: the embedding terms pool the teacher's hidden
# states, so stored hidden states serve them too.
SERVES = {"embedding": ("embedding_mse", "embedding_cosine"),
          "hidden": ("embedding_mse", "embedding_cosine", "hidden_mse")}


class TargetsError(PreparedDataError):
    """Stored targets that cannot be used as asked; the message names the file or flag."""


def parse_kinds(text: str | Sequence[str], flag: str = "--targets") -> tuple[str, ...]:
    """`embedding,hidden` -> ("embedding", "hidden"), checked; errors name `flag`."""
    names = [part.strip() for part in (text.split(",") if isinstance(text, str) else text)]
    unknown = [name for name in names if name not in TARGET_KINDS]
    if unknown or not names or len(set(names)) != len(names):
        raise TargetsError(f"{flag} {','.join(names)!s}: give one or more of "
                           f"{', '.join(TARGET_KINDS)}, each once")
    return tuple(name for name in TARGET_KINDS if name in names)


def uncovered_terms(kinds: Sequence[str], terms: Sequence[str]) -> list[str]:
    """The objective's terms the stored `kinds` cannot serve (the teacher must run live)."""
    served = {term for kind in kinds for term in SERVES[kind]}
    return [term for term in terms if term not in served]


def teacher_weights_sha256(teacher_dir: str) -> str:
    """One SHA-256 over the teacher folder's weight files (names and contents, sorted)."""
    import hashlib

    paths = sorted({path for pattern in WEIGHT_FILE_PATTERNS
                    for path in glob.glob(os.path.join(teacher_dir, pattern))})
    if not paths:
        raise TargetsError(f"--teacher {teacher_dir}: no weight file "
                           f"({', '.join(WEIGHT_FILE_PATTERNS)})")
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.basename(path).encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def _part_name(kind: str, shard: int) -> str:
    return f"{kind}-{shard:05d}.npy"


def _stored(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return values.astype(np.float16)
    import ml_dtypes

    return values.astype(ml_dtypes.bfloat16).view(np.uint16)


def _as_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return np.asarray(values, np.float32)
    import ml_dtypes

    return np.asarray(values).view(ml_dtypes.bfloat16).astype(np.float32)


def _storage_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.float16 if dtype == "float16" else np.uint16)


def write_targets(data: PreparedData, teacher: Any, teacher_dir: str, pooling: PoolingSpec,
                  kinds: Sequence[str], dtype: str = "float16",
                  batch_size: int = 64) -> dict[str, Any]:
    """Run `teacher` once over every row of `data` and store its outputs beside the shards.

    Args:
        data: the opened prepared directory.
        teacher: the teacher `Encoder` (float32 policy: the stored targets are its float32
            outputs rounded once to `dtype`).
        teacher_dir: its folder (the manifest records its weights' SHA-256).
        pooling: the teacher's pooling (embedding targets).
        kinds: some of `TARGET_KINDS`.
        dtype: "float16" or "bfloat16".
        batch_size: rows per teacher forward.

    Returns:
        The targets manifest.

    Raises:
        TargetsError: `data` already holds targets of another teacher, pooling, kinds or
            dtype (nothing is overwritten), or a bad `dtype`.
    """
    import tensorflow as tf

    from tf_minilm.model.pooling import sentence_embedding

    if dtype not in TARGET_DTYPES:
        raise TargetsError(f"--targets-dtype {dtype!r}: choose one of {', '.join(TARGET_DTYPES)}")
    kinds = parse_kinds(list(kinds))
    folder = os.path.join(data.folder, TARGETS_DIR)
    identity = {"format": TARGETS_FORMAT, "kinds": list(kinds), "dtype": dtype,
                "teacher_weights_sha256": teacher_weights_sha256(teacher_dir),
                "pooling": pooling.to_dict(),
                "hidden_size": int(teacher.config.hidden_size),
                "rows_manifest_sha256": file_sha256(os.path.join(data.folder, MANIFEST_FILE))}
    manifest_path = targets_manifest_path(data.folder)
    if os.path.exists(manifest_path):
        done = read_targets_manifest(manifest_path)
        differ = [key for key, value in identity.items() if done.get(key) != value]
        if differ:
            raise TargetsError(
                f"{manifest_path} holds targets with other {', '.join(differ)} (it has "
                f"{', '.join(f'{key}={done.get(key)!r}' for key in differ)}); prepare into "
                "another --output, or delete that targets folder yourself")
        return done
    os.makedirs(folder, exist_ok=True)
    hidden_size = int(teacher.config.hidden_size)
    storage = _storage_dtype(dtype)
    parts = []
    first = 0  # the global row number of the shard's first row
    for index, shard in enumerate(data.manifest["shards"]):
        rows_in_shard, tokens = int(shard["rows"]), int(shard["tokens"])
        shapes = {"embedding": (rows_in_shard, hidden_size), "hidden": (tokens, hidden_size)}
        pending = [kind for kind in kinds
                   if not _complete(os.path.join(folder, _part_name(kind, index)),
                                    shapes[kind], storage)]
        if pending:
            outputs = {kind: np.zeros(shapes[kind], np.float32) for kind in pending}
            # Rows batched by length, each batch cut to its longest row: the padding a
            # row never attends to is not computed (a third of the tokens of the default
            # corpus's per-document rows). The outputs go back to the rows' own places.
            shard_rows = np.arange(first, first + rows_in_shard)
            spans = np.array([(begin, end) for _, _, begin, end
                              in data.rows.locate(shard_rows)], np.int64).reshape(-1, 2)
            by_length = shard_rows[np.argsort(spans[:, 1] - spans[:, 0], kind="stable")]
            batches = range(0, rows_in_shard, batch_size)
            for number, start in enumerate(batches):
                rows = by_length[start:start + batch_size]
                ids, mask = data.rows.gather(rows)
                width = max(1, int(mask.sum(axis=1).max()))
                ids, mask = ids[:, :width], mask[:, :width]
                hidden = teacher({"input_ids": ids, "attention_mask": mask,
                                  "token_type_ids": np.zeros_like(ids)},
                                 training=False)["last_hidden_state"]
                hidden = tf.cast(hidden, tf.float32)
                if "embedding" in outputs:
                    outputs["embedding"][rows - first] = np.asarray(
                        sentence_embedding(hidden, mask, pooling))
                if "hidden" in outputs:
                    states = np.asarray(hidden)
                    for out, (begin, end) in enumerate(spans[rows - first].tolist()):
                        outputs["hidden"][begin:end] = states[out, :end - begin]
                if (number + 1) % max(1, len(batches) // 10) == 0:
                    logger.info("targets: shard %d: %d of %d rows", index + 1,
                                min(start + batch_size, rows_in_shard), rows_in_shard)
            for kind in pending:
                write_npy(os.path.join(folder, _part_name(kind, index)),
                           _stored(outputs[kind], dtype))
            logger.info("targets: shard %d of %d (%d rows) done", index + 1,
                        len(data.manifest["shards"]), rows_in_shard)
        for kind in kinds:
            path = os.path.join(folder, _part_name(kind, index))
            parts.append({"kind": kind, "shard": index, "file": _part_name(kind, index),
                          "shape": list(shapes[kind]), "sha256": file_sha256(path)})
        first += rows_in_shard
    manifest = {**identity, "parts": parts}
    write_json_atomic(manifest_path, manifest)
    return manifest


def _complete(path: str, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """A part already written (atomically, so present means whole) with the right shape."""
    if not os.path.isfile(path):
        return False
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return array.shape == tuple(shape) and array.dtype == dtype


def read_targets_manifest(path: str) -> dict[str, Any]:
    """The targets manifest at `path`, or `TargetsError` naming it."""
    return read_format_json(path, TARGETS_FORMAT, "targets manifest", TargetsError)


def targets_manifest_path(data_dir: str) -> str:
    """Where a prepared directory's targets manifest is (present once they are complete)."""
    return os.path.join(data_dir, TARGETS_DIR, TARGETS_MANIFEST)


class StoredTargets:
    """The teacher targets of a prepared directory, read by row through memory maps.

    Args:
        data: the opened prepared directory.
        manifest: its targets manifest.
        parts: kind -> each shard's memory-mapped part.

    Example:
    >>> targets = open_targets(data, "teacher_dir", pooling)  # doctest: +SKIP
    >>> batch = targets.gather(np.array([0, 5]), 64)  # doctest: +SKIP
    >>> sorted(batch)  # doctest: +SKIP
    ['teacher_embedding', 'teacher_hidden']
    """

    def __init__(self, data: PreparedData, manifest: dict[str, Any],
                 parts: dict[str, list[np.ndarray]]) -> None:
        self.data, self.manifest, self.parts = data, manifest, parts
        self.kinds = tuple(manifest["kinds"])
        self.dtype = manifest["dtype"]
        self.hidden_size = int(manifest["hidden_size"])

    def gather(self, rows: np.ndarray, max_seq_len: int) -> dict[str, np.ndarray]:
        """Float32 targets of these global rows: `teacher_embedding` [n, hidden],
        `teacher_hidden` [n, max_seq_len, hidden] (zero past each row's tokens)."""
        places = self.data.rows.locate(np.asarray(rows, np.int64))
        out: dict[str, np.ndarray] = {}
        if "embedding" in self.parts:
            out["teacher_embedding"] = np.stack([
                _as_float32(self.parts["embedding"][shard][local], self.dtype)
                for shard, local, _, _ in places]) if places else \
                np.zeros((0, self.hidden_size), np.float32)
        if "hidden" in self.parts:
            hidden = np.zeros((len(places), max_seq_len, self.hidden_size), np.float32)
            for out_row, (shard, _, begin, end) in enumerate(places):
                hidden[out_row, :end - begin] = _as_float32(
                    self.parts["hidden"][shard][begin:end], self.dtype)
            out["teacher_hidden"] = hidden
        return out


def open_targets(data: PreparedData, teacher_dir: str, pooling: PoolingSpec,
                 verify: bool = True) -> StoredTargets:
    """Open and check the targets of `data` for a run with this teacher and pooling.

    Raises:
        TargetsError: no targets, targets of other rows, of another teacher (weights
            differ), another pooling, or a missing, truncated or changed part; each
            message names the file.
    """
    path = targets_manifest_path(data.folder)
    if not os.path.isfile(path):
        raise TargetsError(f"{data.folder} holds no teacher targets ({TARGETS_DIR}/"
                           f"{TARGETS_MANIFEST}); prepare with --targets")
    manifest = read_targets_manifest(path)
    rows_sha = file_sha256(os.path.join(data.folder, MANIFEST_FILE))
    if manifest.get("rows_manifest_sha256") != rows_sha:
        raise TargetsError(f"{path} was computed for other rows ({MANIFEST_FILE} changed "
                           "since); prepare the targets again")
    if manifest.get("teacher_weights_sha256") != teacher_weights_sha256(teacher_dir):
        raise TargetsError(f"{path} was computed by another teacher than --teacher "
                           f"{teacher_dir} (weight SHA-256 differs); prepare the targets "
                           "with this teacher, or distil from the teacher that made them")
    if manifest.get("pooling") != pooling.to_dict():
        raise TargetsError(f"{path} pools as {manifest.get('pooling')}, the teacher "
                           f"{teacher_dir} as {pooling.to_dict()}")
    dtype = manifest.get("dtype")
    if dtype not in TARGET_DTYPES:
        raise TargetsError(f"{path}: dtype {dtype!r} is not one of {', '.join(TARGET_DTYPES)}")
    storage = _storage_dtype(dtype)
    parts: dict[str, list[np.ndarray]] = {kind: [] for kind in manifest.get("kinds", [])}
    for part in manifest.get("parts", []):
        file = os.path.join(data.folder, TARGETS_DIR, part["file"])
        if not os.path.isfile(file):
            raise TargetsError(f"{file} is missing (listed in {path})")
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise TargetsError(f"{file} is truncated or unreadable ({err})") from err
        if array.shape != tuple(part["shape"]) or array.dtype != storage:
            raise TargetsError(f"{file} holds {array.dtype} {array.shape}; {path} says "
                               f"{storage} {tuple(part['shape'])} (a truncated or foreign file)")
        if verify and file_sha256(file) != part["sha256"]:
            raise TargetsError(f"{file} fails its checksum (SHA-256 differs from {path})")
        parts[part["kind"]].append(array)
    shards = len(data.manifest["shards"])
    if any(len(arrays) != shards for arrays in parts.values()):
        raise TargetsError(f"{path} lists parts for {[len(a) for a in parts.values()]} of "
                           f"the {shards} shards")
    return StoredTargets(data, manifest, parts)
