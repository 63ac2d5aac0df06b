"""onnxruntime inference for an exported tf-minilm model folder.

Owns: reading an export folder, the onnxruntime session setup (`make_session`, used
everywhere), the fp32/int8 speed ratio and the rule of which file `--model-file auto`
serves (`choose_served_file`), what every served model shares (`OnnxTextModel`), the
embedding model and the NumPy twin of the pooling (tested equal to
`tf_minilm.model.pooling`). Imports: `tf_minilm.rules`, `tf_minilm.constants`, `tf_minilm.tokens`,
`tf_minilm.versions` (no TensorFlow).

The exported folder (written by `tf-minilm export`) holds:

- `model.onnx` (fp32) and usually `model.int8.onnx`, with int64 inputs
  `input_ids`, `attention_mask`, `token_type_ids` of shape [batch, seq] and float32
  outputs `last_hidden_state` [batch, seq, hidden] and `sentence_embedding`
  [batch, hidden] (pooled, and L2-normalised unless the model declares no
  normalisation, inside the graph); a classifier export (`kind` "classifier") has one
  output `logits` [batch, labels] and a `labels.json` (see `serving.classify`);
- `tokenizer.json` (Hugging Face `tokenizers`);
- `export_report.json` with at least `max_seq_len`, `pooling` and `hidden_size`.

Nothing here imports TensorFlow: serving needs onnxruntime, tokenizers and NumPy only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tf_minilm import rules
from tf_minilm.constants import (
    CLASSIFIER_POOLINGS,
    EMBEDDING_OUTPUTS,
    EXPORT_KINDS,
    EXPORT_REPORT_FILE,
    INPUT_NAMES,
    ONNX_INT8_FILE,
    ONNX_MODEL_FILE,
    POOLING_MODES,
)
from tf_minilm.tokens import pad_encodings, pad_id_of

logger = logging.getLogger(__name__)

HIDDEN_OUTPUT, EMBEDDING_OUTPUT = EMBEDDING_OUTPUTS

DEFAULT_MAX_SEQ_LEN = 128


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN or infinite values; never returned as an embedding.

    Attributes:
        rows: indices (in the texts given) of the embeddings that were not finite.
    """

    def __init__(self, message: str, rows: Sequence[int]) -> None:
        super().__init__(message)
        self.rows = list(rows)


class ModelFolderError(ValueError):
    """The model folder or one of its files is missing or invalid; the message names it."""


def resolve_model_path(model_path: str | os.PathLike[str],
                       model_file: str = ONNX_MODEL_FILE) -> tuple[Path, Path]:
    """Finds the ONNX file and the folder holding the tokenizer and report.

    Args:
        model_path: an exported model folder, or directly a `.onnx` file whose folder
            holds the tokenizer.
        model_file: file name inside the folder (ignored when `model_path` is a file).

    Returns:
        `(folder, onnx_file)`.

    Raises:
        ModelFolderError: the path or the ONNX file does not exist.
    """
    path = Path(model_path)
    if path.is_file():
        if path.suffix != ".onnx":
            raise ModelFolderError(
                f"model path {str(path)!r} is a file but not an .onnx model; pass the exported "
                "model folder or its .onnx file")
        return path.parent, path
    if not path.is_dir():
        raise ModelFolderError(f"model path {str(path)!r} does not exist")
    onnx_file = path / model_file
    if not onnx_file.is_file():
        present = sorted(p.name for p in path.glob("*.onnx"))
        hint = (f"; ONNX files present: {', '.join(present)} (choose one with --model-file)"
                if present else "; no .onnx file is present (run `tf-minilm export` first)")
        raise ModelFolderError(f"model folder {str(path)!r} has no {model_file!r}{hint}")
    return path, onnx_file


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """The fields of `export_report.json` that serving relies on.

    Args:
        max_seq_len: longest token sequence the model was exported for.
        pooling: how the graph pools: "mean" or "cls" for an embedding export, also
            "pooler" for a classifier.
        hidden_size: embedding width, or None when the report does not say.
        raw: the whole report as read (empty when the file is absent).
        kind: "embedding" or "classifier" (`EXPORT_KINDS`; reports before classifier
            exports have none and are embedding exports).
        normalize: whether `sentence_embedding` is L2-normalised (reports before the
            field: yes).
    """

    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    pooling: str = "mean"
    hidden_size: int | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)
    kind: str = EXPORT_KINDS[0]
    normalize: bool = True


def load_export_report(folder: str | os.PathLike[str]) -> ExportReport:
    """Reads `export_report.json` from `folder`, with defaults for missing keys.

    Args:
        folder: exported model folder.

    Returns:
        An `ExportReport`; all defaults when the file does not exist.

    Raises:
        ModelFolderError: the file exists but is not a JSON object or holds a bad value.
    """
    path = Path(folder) / EXPORT_REPORT_FILE
    if not path.is_file():
        logger.warning("%s not found; assuming max_seq_len=%d and mean pooling",
                       path, DEFAULT_MAX_SEQ_LEN)
        return ExportReport()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"cannot read {str(path)!r}: {err}") from err
    if not isinstance(raw, dict):
        raise ModelFolderError(f"{str(path)!r} must hold a JSON object, got {type(raw).__name__}")
    kind = raw.get("kind", EXPORT_KINDS[0])
    if kind not in EXPORT_KINDS:
        raise ModelFolderError(
            f"{str(path)!r}: field 'kind' must be one of {EXPORT_KINDS}, got {kind!r}")
    max_seq_len = raw.get("max_seq_len", DEFAULT_MAX_SEQ_LEN)
    rules.seq_len(max_seq_len, f"{str(path)!r}: field 'max_seq_len'", error=ModelFolderError)
    poolings = CLASSIFIER_POOLINGS if kind == "classifier" else POOLING_MODES
    pooling = raw.get("pooling", "mean")
    if pooling not in poolings:
        raise ModelFolderError(
            f"{str(path)!r}: field 'pooling' must be one of {poolings}, got {pooling!r}")
    hidden_size = raw.get("hidden_size")
    rules.positive_int(hidden_size, f"{str(path)!r}: field 'hidden_size'",
                       error=ModelFolderError, optional=True)
    normalize = raw.get("normalize")
    if normalize is None:
        normalize = True
    if not isinstance(normalize, bool):
        raise ModelFolderError(
            f"{str(path)!r}: field 'normalize' must be true or false, got {normalize!r}")
    return ExportReport(max_seq_len=max_seq_len, pooling=pooling, hidden_size=hidden_size,
                        raw=raw, kind=kind, normalize=normalize)


def make_session(onnx_file: str | os.PathLike[str], intra_op_threads: int | None = None) -> Any:
    """Creates a CPU onnxruntime session with all graph optimisations enabled.

    The one session setup of the project (serving, benchmarks, the export's parity check).

    Args:
        onnx_file: path of the `.onnx` model.
        intra_op_threads: threads for one operator; None or 0 lets onnxruntime decide
            (one per physical core).

    Returns:
        An `onnxruntime.InferenceSession`.

    Raises:
        ModelFolderError: onnxruntime cannot load the file.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: load-time warnings are not the caller's
    if intra_op_threads:
        if intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {intra_op_threads}")
        options.intra_op_num_threads = int(intra_op_threads)
    try:
        return ort.InferenceSession(os.fspath(onnx_file), sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ModelFolderError(f"onnxruntime cannot load {str(onnx_file)!r}: {err}") from err


def timing_feeds(vocab_size: int, seq_len: int = 128, seed: int = 0) -> dict[str, Any]:
    """A batch 1 x `seq_len` of random token ids (no padding), for the speed ratio."""
    rng = np.random.default_rng(seed)
    low = min(1000, max(vocab_size // 2, 1))
    return {"input_ids": rng.integers(low, vocab_size, (1, seq_len)).astype(np.int64),
            "attention_mask": np.ones((1, seq_len), np.int64),
            "token_type_ids": np.zeros((1, seq_len), np.int64)}


def speed_ratio(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                feeds: dict[str, Any], rounds: int = 9, per_round: int = 8,
                intra_op_threads: int | None = None) -> dict[str, Any]:
    """fp32 / int8 latency, from interleaved rounds in one process (median of the rounds'
    ratios of median latencies), so machine load hits both alike."""
    import statistics
    import time

    sessions = [make_session(fp32_path, intra_op_threads),
                make_session(int8_path, intra_op_threads)]
    names = [[output.name for output in s.get_outputs()][-1:] for s in sessions]
    feeds_of = [{i.name: feeds[i.name] for i in s.get_inputs()} for s in sessions]
    for session, out, feed in zip(sessions, names, feeds_of, strict=True):
        for _ in range(3):
            session.run(out, feed)
    ratios, fp32_ms, int8_ms = [], [], []
    for _ in range(rounds):
        medians = []
        for session, out, feed in zip(sessions, names, feeds_of, strict=True):
            times = []
            for _ in range(per_round):
                start = time.perf_counter()
                session.run(out, feed)
                times.append(time.perf_counter() - start)
            medians.append(statistics.median(times) * 1e3)
        fp32_ms.append(medians[0])
        int8_ms.append(medians[1])
        ratios.append(medians[0] / medians[1])
    return {"timing_shape": [int(n) for n in feeds["input_ids"].shape],
            "fp32_ms": round(statistics.median(fp32_ms), 3),
            "int8_ms": round(statistics.median(int8_ms), 3),
            "speedup": round(statistics.median(ratios), 3)}


# int8 is served by default where it is at least this much faster than fp32: below it,
# its small loss of fidelity buys too little (an AVX2-only CPU measured 1.01x).
INT8_PAYS_SPEEDUP = 1.2
AUTO_MODEL_FILE = "auto"


def choose_served_file(folder: str | os.PathLike[str], intra_op_threads: int | None = None
                       ) -> tuple[str, str]:
    """The ONNX file `--model-file auto` serves from an export folder, and why.

    int8 when the folder has it and it is at least `INT8_PAYS_SPEEDUP` times as fast as
    fp32 on this machine's kind of CPU (`tf_minilm.versions.cpu_int8_kind`): the export's
    own timing when it ran on the same kind, else a short timing here; fp32 otherwise.

    Returns:
        (file name in the folder, the reason, for the log).
    """
    from tf_minilm.versions import cpu_int8_kind

    path = Path(folder)
    if path.is_file():
        return path.name, "a file was given"
    if not (path / ONNX_INT8_FILE).is_file():
        return ONNX_MODEL_FILE, f"the folder has no {ONNX_INT8_FILE}"
    report = load_export_report(path)
    measured = report.raw.get("int8") if isinstance(report.raw.get("int8"), dict) else {}
    here = cpu_int8_kind()
    speedup = measured.get("speedup")
    if isinstance(speedup, int | float) and measured.get("cpu_int8_kind") == here:
        where = f"the export's timing on a CPU of this kind ({here})"
    else:
        vocab = report.raw.get("vocab_size")
        if not isinstance(vocab, int) or isinstance(vocab, bool):  # an older report
            from tokenizers import Tokenizer

            vocab = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
        feeds = timing_feeds(vocab, min(DEFAULT_MAX_SEQ_LEN, report.max_seq_len))
        speedup = speed_ratio(path / ONNX_MODEL_FILE, path / ONNX_INT8_FILE, feeds, rounds=3,
                              per_round=4, intra_op_threads=intra_op_threads)["speedup"]
        where = f"timed now on this {here} CPU (the export ran on " \
                f"{measured.get('cpu_int8_kind') or 'an unrecorded kind'})"
    if speedup >= INT8_PAYS_SPEEDUP:
        return ONNX_INT8_FILE, f"int8 is {speedup:.2f}x fp32 by {where}"
    return ONNX_MODEL_FILE, (f"int8 is only {speedup:.2f}x fp32 by {where}, under "
                             f"{INT8_PAYS_SPEEDUP}x: fp32 is served")


def pool_and_normalize(hidden: np.ndarray, attention_mask: np.ndarray,
                       pooling: str = "mean", normalize: bool = True) -> np.ndarray:
    """Pools token states into (L2-normalised) sentence embeddings (NumPy).

    Used only when a graph lacks the `sentence_embedding` output.

    Args:
        hidden: [batch, seq, hidden] token states.
        attention_mask: [batch, seq], 1 for real tokens and 0 for padding.
        pooling: "mean" (masked mean over real tokens) or "cls" (first token).
        normalize: L2-normalise each row.

    Returns:
        float32 [batch, hidden], with unit L2 norm per row when `normalize` (zero rows
        stay zero).
    """
    hidden = hidden.astype(np.float32, copy=False)
    if pooling == "cls":
        pooled = hidden[:, 0, :]
    elif pooling == "mean":
        mask = attention_mask.astype(np.float32)[:, :, None]
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    else:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
    if not normalize:
        return pooled.astype(np.float32)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)


@dataclasses.dataclass
class Embeddings:
    """Result of `EmbeddingModel.embed`.

    Args:
        vectors: float32 [n, hidden], row i for text i.
        token_counts: tokens fed to the model for each text (after truncation,
            special tokens included).
    """

    vectors: np.ndarray
    token_counts: list[int]

    def slice(self, start: int, stop: int) -> Embeddings:
        """The results of texts `start:stop` (how the batcher hands each request its own)."""
        return Embeddings(self.vectors[start:stop], self.token_counts[start:stop])


class OnnxTextModel:
    """What every exported model served here shares: the folder, its report and
    tokenizer, the onnxruntime session and length-sorted batching of texts.

    Subclasses (`EmbeddingModel`, `serving.classify.ClassifierModel`) check the graph's
    outputs and turn them into results.

    Args:
        model_dir: exported folder (or a `.onnx` file whose folder holds the tokenizer).
        model_file: ONNX file inside the folder: "model.onnx" (fp32) or
            "model.int8.onnx" (int8).
        max_seq_len: truncation length in tokens; default: `export_report.json`'s
            `max_seq_len` (128 when absent).
        intra_op_threads: onnxruntime threads per operator; None lets it decide.
    """

    kind = EXPORT_KINDS[0]
    """The export kind this class serves (`export_report.json`'s `kind`)."""

    def __init__(self, model_dir: str | os.PathLike[str], model_file: str = ONNX_MODEL_FILE,
                 max_seq_len: int | None = None, intra_op_threads: int | None = None) -> None:
        self.folder, self.model_path = resolve_model_path(model_dir, model_file)
        self.report = load_export_report(self.folder)
        if self.report.kind != self.kind:
            article = "an" if self.report.kind[0] in "aeiou" else "a"
            raise ModelFolderError(
                f"{str(self.folder)!r} is {article} {self.report.kind} export "
                f"({EXPORT_REPORT_FILE}: kind {self.report.kind!r}); "
                f"{type(self).__name__} serves {self.kind} exports (see `serving.open_model`)")
        if max_seq_len is None:
            max_seq_len = self.report.max_seq_len
        rules.seq_len(max_seq_len, "max_seq_len", error=ValueError)
        if max_seq_len > self.report.max_seq_len and "max_seq_len" in self.report.raw:
            logger.warning("max_seq_len=%d exceeds the exported max_seq_len=%d of %s",
                           max_seq_len, self.report.max_seq_len, self.folder)
        self.max_seq_len = max_seq_len
        self.intra_op_threads = intra_op_threads
        self.tokenizer, self.pad_id = self._load_tokenizer()
        self.session = make_session(self.model_path, intra_op_threads)
        inputs = {i.name for i in self.session.get_inputs()}
        missing = [name for name in ("input_ids", "attention_mask") if name not in inputs]
        unknown = [name for name in inputs if name not in INPUT_NAMES]
        if missing or unknown:
            raise ModelFolderError(
                f"{str(self.model_path)!r} has inputs {sorted(inputs)}; expected {list(INPUT_NAMES)}")
        self._input_names = [name for name in INPUT_NAMES if name in inputs]
        self._output_names = [o.name for o in self.session.get_outputs()]

    def _load_tokenizer(self) -> tuple[Any, int]:
        from tokenizers import Tokenizer

        path = self.folder / "tokenizer.json"
        if not path.is_file():
            raise ModelFolderError(
                f"model folder {str(self.folder)!r} has no 'tokenizer.json' (the export writes it "
                "next to the .onnx files)")
        try:
            tokenizer = Tokenizer.from_file(os.fspath(path))
        except Exception as err:  # tokenizers raises a bare Exception subclass
            raise ModelFolderError(f"cannot load tokenizer {str(path)!r}: {err}") from err
        pad_id = pad_id_of(tokenizer)
        # Padding is done here per batch (to the longest text), never to a fixed length.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_seq_len)
        return tokenizer, pad_id

    @property
    def name(self) -> str:
        """Model name reported by the server: the folder's name."""
        return self.folder.resolve().name

    @property
    def precision(self) -> str:
        """"int8" for a quantized file (name contains "int8"), else "fp32"."""
        return "int8" if "int8" in self.model_path.name else "fp32"

    def info(self) -> dict[str, Any]:
        """Model facts for health checks and logs.

        Returns:
            JSON-serialisable dict: name, kind, folder, model_file, precision,
            max_seq_len, pooling, intra_op_threads (subclasses add theirs).
        """
        return {
            "name": self.name,
            "kind": self.kind,
            "folder": str(self.folder),
            "model_file": self.model_path.name,
            "precision": self.precision,
            "max_seq_len": self.max_seq_len,
            "pooling": self.report.pooling,
            "intra_op_threads": self.intra_op_threads,
        }

    def feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray,
              token_type_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Checked int64 feeds of the graph's inputs (token types zero when None).

        Raises:
            ValueError: the arrays are not 2-D or their shapes differ.
        """
        input_ids = np.asarray(input_ids)
        attention_mask = np.asarray(attention_mask)
        if token_type_ids is None:
            token_type_ids = np.zeros_like(input_ids)
        token_type_ids = np.asarray(token_type_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be 2-D [batch, seq], got shape {input_ids.shape}")
        for name, array in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if array.shape != input_ids.shape:
                raise ValueError(
                    f"{name} has shape {array.shape}, input_ids has {input_ids.shape}; they must match")
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids}
        return {name: feeds[name].astype(np.int64, copy=False) for name in self._input_names}

    def _encodings(self, texts: Sequence[str]) -> list[Any]:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got a single str; wrap it in a list")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}")
        return self.tokenizer.encode_batch(list(texts), add_special_tokens=True)

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Tokenizes texts into padded int64 model inputs (input order kept).

        Args:
            texts: list of strings.

        Returns:
            Dict of int64 [len(texts), longest] arrays `input_ids`, `attention_mask`,
            `token_type_ids`; each text truncated to `max_seq_len` tokens.
        """
        return pad_encodings(self._encodings(texts), self.pad_id)

    def _run_sorted(self, texts: Sequence[str], batch_size: int, width: int,
                    run: Any) -> tuple[np.ndarray, list[int]]:
        """`run(padded batch) -> [rows, width]` over length-sorted batches of `texts`;
        the float32 [len(texts), width] rows in input order and the token counts.

        Raises:
            NonFiniteOutputError: a row holds NaN or inf (no result is returned).
        """
        rules.positive_int(batch_size, "batch_size", error=ValueError)
        encodings = self._encodings(texts)
        counts = [len(e.ids) for e in encodings]
        rows = np.zeros((len(encodings), width), dtype=np.float32)
        # Longest first: texts of similar length share a batch, so padding stays small.
        order = sorted(range(len(encodings)), key=lambda i: counts[i], reverse=True)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            rows[chunk] = run(pad_encodings([encodings[i] for i in chunk], self.pad_id))
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if bad.size:
            raise NonFiniteOutputError(
                f"{self.model_path.name} produced non-finite values for {bad.size} of "
                f"{len(rows)} texts (indices {bad[:10].tolist()}); its weights may be "
                "corrupt", bad.tolist())
        return rows, counts


class EmbeddingModel(OnnxTextModel):
    """Sentence embeddings from an exported ONNX model folder, on onnxruntime.

    Texts are tokenized with the folder's `tokenizer.json` (truncated to
    `max_seq_len`, padded per batch to the longest text), sorted by length so each
    batch carries little padding, run through the graph, and returned in input order.

    Args:
        model_dir, model_file, max_seq_len, intra_op_threads: as `OnnxTextModel`'s.

    Example:
    >>> model = EmbeddingModel("runs/student-onnx", model_file="model.int8.onnx")
    >>> vectors = model.encode(["a first sentence", "another one"])
    >>> vectors.shape == (2, model.dimension)
    True
    """

    kind = EXPORT_KINDS[0]

    def __init__(self, model_dir: str | os.PathLike[str], model_file: str = ONNX_MODEL_FILE,
                 max_seq_len: int | None = None, intra_op_threads: int | None = None) -> None:
        super().__init__(model_dir, model_file, max_seq_len, intra_op_threads)
        self._check_graph()

    def _check_graph(self) -> None:
        outputs = {o.name: o for o in self.session.get_outputs()}
        if EMBEDDING_OUTPUT not in outputs and HIDDEN_OUTPUT not in outputs:
            raise ModelFolderError(
                f"{str(self.model_path)!r} has outputs {sorted(outputs)}; expected "
                f"{EMBEDDING_OUTPUT!r} and {HIDDEN_OUTPUT!r}")
        self._has_embedding_output = EMBEDDING_OUTPUT in outputs
        dim = None
        if self._has_embedding_output:
            dim = outputs[EMBEDDING_OUTPUT].shape[-1]
        elif HIDDEN_OUTPUT in outputs:
            dim = outputs[HIDDEN_OUTPUT].shape[-1]
        if not isinstance(dim, int):
            dim = self.report.hidden_size
        if dim is None:
            probe = self.run(np.zeros((1, 2), np.int64), np.ones((1, 2), np.int64))
            dim = int(probe[EMBEDDING_OUTPUT].shape[-1])
        self._dimension = int(dim)

    @property
    def dimension(self) -> int:
        """Width of the sentence embeddings."""
        return self._dimension

    @property
    def pooling(self) -> str:
        """Pooling recorded in the export report ("mean" or "cls")."""
        return self.report.pooling

    @property
    def normalize(self) -> bool:
        """Whether the embeddings are L2-normalised (the export report's `normalize`)."""
        return self.report.normalize

    def info(self) -> dict[str, Any]:
        """Model facts for health checks and logs: `OnnxTextModel.info` plus
        dimension and normalize."""
        return {**super().info(), "dimension": self.dimension, "normalize": self.normalize}

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            token_type_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Runs the graph on already tokenized, padded inputs.

        Args:
            input_ids: int [batch, seq] token ids.
            attention_mask: int [batch, seq], 1 for real tokens, 0 for padding.
            token_type_ids: int [batch, seq]; zeros when None.

        Returns:
            Dict with `last_hidden_state` float32 [batch, seq, hidden] (when the graph
            has it) and `sentence_embedding` float32 [batch, hidden].

        Raises:
            ValueError: the arrays are not 2-D or their shapes differ.
        """
        feeds = self.feeds(input_ids, attention_mask, token_type_ids)
        values = self.session.run(self._output_names, feeds)
        result = dict(zip(self._output_names, values, strict=True))
        if EMBEDDING_OUTPUT not in result:
            result[EMBEDDING_OUTPUT] = pool_and_normalize(
                result[HIDDEN_OUTPUT], feeds["attention_mask"], self.pooling, self.normalize)
        return result

    def _embed_padded(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        if not self._has_embedding_output:
            return self.run(**batch)[EMBEDDING_OUTPUT]
        feeds = {name: batch[name] for name in self._input_names}
        (vectors,) = self.session.run([EMBEDDING_OUTPUT], feeds)
        return vectors

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> Embeddings:
        """Embeds texts and counts their tokens.

        Args:
            texts: list of strings.
            batch_size: texts per onnxruntime call.

        Returns:
            `Embeddings` with float32 [len(texts), dimension] vectors in input order and
            the token count of each text.

        Raises:
            NonFiniteOutputError: an embedding holds NaN or inf (no result is returned).
        """
        vectors, counts = self._run_sorted(texts, batch_size, self.dimension, self._embed_padded)
        return Embeddings(vectors=vectors, token_counts=counts)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embeds texts.

        Args:
            texts: list of strings.
            batch_size: texts per onnxruntime call.

        Returns:
            float32 [len(texts), dimension] rows in input order (L2-normalised unless
            the model declares no normalisation).
        """
        return self.embed(texts, batch_size=batch_size).vectors
