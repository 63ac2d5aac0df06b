"""The whole export: load, convert, fuse, quantize, validate, then move into place.

Owns: the order of the export steps and the export folder's contents (report included).
Imports: the other `export` modules, `tf_minilm.hf`, `tf_minilm.model.encoder`,
`tf_minilm.constants`, `tf_minilm.fileio`, `tf_minilm.versions`.

Everything is written into a staging folder beside the output folder and moved into
place only when every check passed, so a failed export leaves no half-written model
and an earlier good export untouched. The folder holds:

    model.onnx            float32 graph (onnxruntime-fused unless optimize=False)
    model.int8.onnx       dynamic int8 graph (unless quantize="none")
    tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json, config.json
    export_report.json    options, fused operator counts, parity figures, sizes, versions
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import time
from typing import Any

from export.convert import (
    DEFAULT_OPSET,
    check_opset,
    check_pooling,
    embedding_function,
    float32_copy,
    function_to_onnx,
)
from export.errors import ExportError
from export.validate import FP32_TOLERANCE, INT8_MIN_COSINE
from tf_minilm.card import CARD_FILE, export_card, write_card
from tf_minilm.constants import (
    EMBEDDING_OUTPUTS,
    EXPORT_REPORT_FILE,
    INPUT_NAMES,
    ONNX_INT8_FILE,
    ONNX_MODEL_FILE,
    ST_MODULES_FILE,
    TOKENIZER_FILES,
)
from tf_minilm.fileio import NotOurFolderError, check_replaceable, staged_folder
from tf_minilm.versions import installed_versions

logger = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("int8", "none")
DEFAULT_MAX_SEQ_LEN = 128
REPORT_VERSION = 1
VERSIONED_PACKAGES = ("tf-minilm", "tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx",
                      "onnxruntime", "numpy", "tokenizers")


@dataclasses.dataclass
class Student:
    """A loaded model to export.

    Args:
        encoder: the `Encoder` (any dtype policy).
        tokenizer: its `tokenizers.Tokenizer`.
        source: where it came from (absolute path, or a description).
        source_type: "hf" (checkpoint folder), "keras" (.keras file) or "object".
        tokenizer_dir: folder whose tokenizer files are copied next to the models, or None.
    """

    encoder: Any
    tokenizer: Any
    source: str
    source_type: str
    tokenizer_dir: str | None = None

    @property
    def model_folder(self) -> str | None:
        """The folder describing the model (its pooling, its card): the HF folder itself,
        else the folder its tokenizer came from."""
        return self.source if self.source_type == "hf" else self.tokenizer_dir


def _has_tokenizer(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in ("tokenizer.json", "vocab.txt"))


def _load_tokenizer_dir(folder: str) -> Any:
    from tf_minilm.hf.errors import CheckpointError
    from tf_minilm.hf.tokenizer import load_tokenizer

    if not os.path.isdir(folder):
        raise ExportError(f"tokenizer folder {folder} does not exist")
    try:
        return load_tokenizer(folder)
    except CheckpointError as err:
        raise ExportError(str(err)) from err


def resolve_pooling(student: Student, pooling: str | None) -> tuple[str, str]:
    """The export's pooling mode and where it came from ("flag", the folder's file, "default").

    The model folder is the HF folder itself, or for a `.keras` file or an object the
    folder its tokenizer came from. A flag that disagrees with the folder wins, with a
    warning naming both; a folder without normalisation is reported, because the
    export's `sentence_embedding` is always L2-normalised.

    Raises:
        ExportError: malformed sentence-transformers files (naming the file and field).
    """
    from tf_minilm.model.pooling import PoolingError, read_pooling

    folder = student.model_folder
    declared = None
    modules_file = os.path.join(folder, ST_MODULES_FILE) if folder is not None else None
    if modules_file is not None and os.path.isfile(modules_file):
        try:
            declared = read_pooling(folder)
        except PoolingError as err:
            raise ExportError(f"pooling of {folder}: {err}") from err
    if declared is not None and not declared.normalize:
        logger.warning("%s declares no Normalize module; the export's sentence_embedding is "
                       "L2-normalised all the same (last_hidden_state is not)", folder)
    if pooling is None:
        if declared is None:
            return "mean", "default"
        return declared.mode, modules_file
    if declared is not None and declared.mode != pooling:
        logger.warning("--pooling %s overrides the %s pooling that %s declares", pooling,
                       declared.mode, modules_file)
    return pooling, "flag"


def load_student(source: Any, tokenizer: Any = None) -> Student:
    """Load what `export_model` exports.

    Args:
        source: an HF checkpoint folder (config.json + weights + tokenizer), a `.keras`
            file holding an `Encoder`, or an `Encoder` object.
        tokenizer: for a `.keras` file or an object: a folder with tokenizer.json or
            vocab.txt, or a `tokenizers.Tokenizer`. Default for a `.keras` file: the
            `student/` folder beside it.

    Returns:
        A `Student`.

    Raises:
        ExportError: unreadable or corrupt source, not an Encoder, no tokenizer.
    """
    from tf_minilm.hf.checkpoints import load_hf_checkpoint
    from tf_minilm.hf.errors import CheckpointError
    from tf_minilm.model.encoder import Encoder

    tokenizer_dir = None
    if isinstance(tokenizer, str | os.PathLike):
        tokenizer_dir = os.path.abspath(os.fspath(tokenizer))
        tokenizer = _load_tokenizer_dir(tokenizer_dir)

    if isinstance(source, Encoder):
        if tokenizer is None:
            raise ExportError("exporting an Encoder object needs a tokenizer (folder or object)")
        _check_finite(source, f"<{source.name}>")
        return Student(source, tokenizer, f"<{source.name}>", "object", tokenizer_dir)

    if not isinstance(source, str | os.PathLike):
        raise ExportError(f"cannot export a {type(source).__name__}; pass an HF folder, a .keras "
                          "file or an Encoder")
    path = os.path.abspath(os.fspath(source))
    if os.path.isdir(path):
        try:
            encoder, loaded_tokenizer = load_hf_checkpoint(path)
        except CheckpointError as err:
            raise ExportError(f"cannot load the student: {err}") from err
        if tokenizer is None:
            tokenizer, tokenizer_dir = loaded_tokenizer, path
        return Student(encoder, tokenizer, path, "hf", tokenizer_dir)

    if not os.path.exists(path):
        raise ExportError(f"student {path} does not exist (expected an HF checkpoint folder or "
                          "a .keras file)")
    if not path.endswith(".keras"):
        raise ExportError(f"student {path} is neither a folder nor a .keras file")
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:  # Keras raises assorted types for unreadable archives
        raise ExportError(f"cannot load {path}: {err}") from err
    if not isinstance(model, Encoder):
        raise ExportError(f"{path} holds a {type(model).__name__}, not a tf_minilm Encoder")
    _check_finite(model, path)
    if tokenizer is None:
        sibling = os.path.join(os.path.dirname(path), "student")
        if not (os.path.isdir(sibling) and _has_tokenizer(sibling)):
            raise ExportError(
                f"{path} carries no tokenizer: pass --tokenizer DIR (a folder with tokenizer.json "
                f"or vocab.txt); none was found in the sibling folder {sibling}"
            )
        tokenizer_dir = sibling
        tokenizer = _load_tokenizer_dir(sibling)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > model.config.vocab_size:
        raise ExportError(
            f"the tokenizer has {size} tokens but {path} has a vocabulary of "
            f"{model.config.vocab_size}; the tokenizer does not belong to this model"
        )
    return Student(model, tokenizer, path, "keras", tokenizer_dir)


def _check_finite(encoder: Any, source: str) -> None:
    from tf_minilm.model.encoder import non_finite_weights

    bad = non_finite_weights(encoder)
    if bad:
        raise ExportError(f"cannot export {source}: weight(s) {', '.join(bad[:3])} hold NaN or "
                          "infinite values (corrupt weights); nothing was written")


def _check_output_dir(output_dir: str, student: Student) -> None:
    if student.source_type != "object":
        real_out = os.path.realpath(output_dir)
        real_src = os.path.realpath(student.source)
        if real_src == real_out or real_src.startswith(real_out + os.sep):
            raise ExportError(f"output {output_dir} would replace the student {student.source}")
    try:
        check_replaceable(output_dir)
    except NotOurFolderError as err:
        raise ExportError(f"refusing to replace the output: {err}") from err


def _write_side_files(staging: str, student: Student) -> list[str]:
    """Tokenizer files and config.json next to the models; returns the names written."""
    written = []
    if student.tokenizer_dir:
        for name in TOKENIZER_FILES:
            path = os.path.join(student.tokenizer_dir, name)
            if os.path.isfile(path):
                shutil.copyfile(path, os.path.join(staging, name))
                written.append(name)
    if "tokenizer.json" not in written:
        student.tokenizer.save(os.path.join(staging, "tokenizer.json"))
        written.append("tokenizer.json")
    with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(student.encoder.config.to_hf_dict(), handle, indent=2, sort_keys=True)
    written.append("config.json")
    return sorted(written)


def _graph_io(model: Any) -> tuple[list[dict], list[dict]]:
    import onnx

    def describe(values: Any) -> list[dict]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [dim.dim_param or (dim.dim_value if dim.HasField("dim_value") else None)
                    for dim in tensor.shape.dim]
            out.append({"name": value.name,
                        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                        "shape": dims})
        return out

    return describe(model.graph.input), describe(model.graph.output)


def export_model(
    source: Any,
    output_dir: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    quantize: str = "int8",
    optimize: bool = True,
    pooling: str | None = None,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    tokenizer: Any = None,
    fp32_tolerance: float = FP32_TOLERANCE,
    int8_min_cosine: float = INT8_MIN_COSINE,
) -> dict[str, Any]:
    """Export a student to an ONNX model folder, checked, written atomically.

    Args:
        source: HF checkpoint folder, `.keras` file or `Encoder` (see `load_student`).
        output_dir: destination folder; replaced only if the export succeeds (an
            existing folder must be empty or an earlier export).
        opset: ONNX opset, 13-18.
        quantize: "int8" (also write model.int8.onnx) or "none".
        optimize: apply and require onnxruntime's transformer fusions.
        pooling: "mean" or "cls" pooling of `sentence_embedding`; None: the model
            folder's (its sentence-transformers files, `model.pooling.read_pooling`),
            mean when it has none. A given pooling that differs from the folder's
            overrides it with a warning.
        max_seq_len: longest input in tokens, capped by the model's position table.
        tokenizer: tokenizer folder or object (for `.keras` files and objects).
        fp32_tolerance: max abs difference allowed between the float32 graph and Keras.
        int8_min_cosine: least cosine allowed between int8 and Keras sentence embeddings.

    Returns:
        The report written to `export_report.json`.

    Raises:
        ExportError: bad option or source, conversion failure; `FusionError` when
            fusions are missing; `ParityError` when a parity check fails.

    Example:
    >>> report = export_model("runs/student", "runs/student-onnx", pooling="mean")
    >>> report["fused_operator_groups"]["Attention"] == report["num_layers"]
    True
    """
    started = time.perf_counter()
    opset = check_opset(opset)
    if pooling is not None:
        pooling = check_pooling(pooling)
    if quantize not in QUANTIZE_CHOICES:
        raise ExportError(f"quantize is {quantize!r}; choose one of {', '.join(QUANTIZE_CHOICES)}")
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise ExportError(f"max_seq_len must be an integer >= 2, got {max_seq_len!r}")
    output_dir = os.path.abspath(os.fspath(output_dir))

    student = load_student(source, tokenizer)
    pooling, pooling_source = resolve_pooling(student, pooling)
    _check_output_dir(output_dir, student)
    config = student.encoder.config
    if max_seq_len > config.max_sequence_length:
        logger.warning("max_seq_len %d capped to %d, the model's position table", max_seq_len,
                       config.max_sequence_length)
        max_seq_len = config.max_sequence_length

    import onnx

    from export.fusion import expected_fusions, grouped_counts, optimize_onnx
    from export.quantize import quantize_int8
    from export.validate import validate_export

    with staged_folder(output_dir, "onnx-export") as staging:
        function = embedding_function(float32_copy(student.encoder), pooling)
        logger.info("converting %s (opset %d, %s pooling)", student.source, opset, pooling)
        model = function_to_onnx(function, opset)
        fp32_path = os.path.join(staging, ONNX_MODEL_FILE)
        statistics = expected = None
        if optimize:
            expected = expected_fusions(config.num_hidden_layers,
                                        embed_layer_norm=not config.is_roberta_like)
            statistics = optimize_onnx(model, fp32_path, config.num_attention_heads,
                                       config.hidden_size, expected)
        else:
            onnx.save(model, fp32_path)
        int8_path = None
        if quantize == "int8":
            int8_path = os.path.join(staging, ONNX_INT8_FILE)
            quantize_int8(fp32_path, int8_path)
        logger.info("validating against the Keras float32 model")
        parity = validate_export(function, student.tokenizer, fp32_path, int8_path,
                                 max_seq_len=max_seq_len, pad_id=config.pad_token_id,
                                 fp32_tolerance=fp32_tolerance, int8_min_cosine=int8_min_cosine)
        side_files = _write_side_files(staging, student)
        inputs, outputs = _graph_io(onnx.load(fp32_path))
        files = {name: os.path.getsize(os.path.join(staging, name))
                 for name in (ONNX_MODEL_FILE, ONNX_INT8_FILE) if os.path.isfile(os.path.join(staging, name))}
        report = {
            "report_version": REPORT_VERSION,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "source": student.source,
            "source_type": student.source_type,
            "model_type": config.model_type,
            "hidden_size": config.hidden_size,
            "num_layers": config.num_hidden_layers,
            "num_heads": config.num_attention_heads,
            "intermediate_size": config.intermediate_size,
            "vocab_size": config.vocab_size,
            "max_seq_len": max_seq_len,
            "pooling": pooling,
            "pooling_source": pooling_source,
            "opset": opset,
            "optimized": bool(optimize),
            "quantize": quantize,
            "inputs": inputs,
            "outputs": outputs,
            "input_names": list(INPUT_NAMES),
            "output_names": [o["name"] for o in outputs],
            "fused_operators": ({op: n for op, n in statistics.items() if n}
                                if statistics is not None else None),
            "fused_operator_groups": grouped_counts(statistics) if statistics else None,
            "expected_fusions": expected,
            "parity": parity,
            "files": {"model_bytes": files, "side_files": side_files},
            "versions": installed_versions(VERSIONED_PACKAGES),
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        if tuple(report["output_names"]) != EMBEDDING_OUTPUTS:
            raise ExportError(f"exported graph has outputs {report['output_names']}, expected "
                              f"{list(EMBEDDING_OUTPUTS)}")
        with open(os.path.join(staging, EXPORT_REPORT_FILE), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        folder = student.model_folder
        write_card(staging, export_card(
            staging, os.path.join(folder, CARD_FILE) if folder else None))
    logger.info("exported %s -> %s in %.1f s", student.source, output_dir,
                time.perf_counter() - started)
    return report
