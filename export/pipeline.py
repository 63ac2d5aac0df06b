"""The whole export: load, convert, fuse, quantize, validate, then move into place.

Owns: the order of the export steps and the export folder's contents (report included).
Imports: `tf_minilm.rules`, the other `export` modules, `tf_minilm.hf`, `tf_minilm.model.encoder`,
`tf_minilm.model.classifier`, `tf_minilm.model.pooling`, `tf_minilm.card`,
`tf_minilm.constants`, `tf_minilm.fileio`, `tf_minilm.versions`, `serving.runtime` (the
fp32/int8 timing and the rule of when int8 pays).

Everything is written into a staging folder beside the output folder and moved into
place only when every check passed, so a failed export leaves no half-written model
and an earlier good export untouched. The folder holds:

    model.onnx            float32 graph (onnxruntime-fused unless optimize=False)
    model.int8.onnx       the first int8 variant that holds (`export.quantize.choose_int8`;
                          unless quantize="none")
    tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json, config.json
    labels.json           a classifier's label names (config.json gets `id2label` too)
    export_report.json    options, fused operator counts, parity figures, the int8 variants
                          tried, sizes, versions
    README.md             the model card

An encoder exports `last_hidden_state` and `sentence_embedding`; a fine-tuned
`SequenceClassifier` (what `tf-minilm evaluate --save-model` writes) exports `logits`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
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
from export.validate import (
    FP32_TOLERANCE,
    INT8_MAX_PROBABILITY_DIFF,
    INT8_MIN_COSINE,
    calibration_feeds,
)
from tf_minilm import rules
from tf_minilm.card import CARD_FILE, export_card, write_card
from tf_minilm.constants import (
    CLASSIFIER_OUTPUTS,
    EMBEDDING_OUTPUTS,
    EXPORT_KINDS,
    EXPORT_REPORT_FILE,
    INPUT_NAMES,
    LABELS_FILE,
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
    """A loaded model to export: an encoder, or a fine-tuned classifier on one.

    Args:
        encoder: the `Encoder` (any dtype policy); a classifier's own encoder.
        tokenizer: its `tokenizers.Tokenizer`.
        source: where it came from (absolute path, or a description).
        source_type: "hf" (checkpoint folder), "keras" (.keras file) or "object".
        tokenizer_dir: folder whose tokenizer files are copied next to the models, or None.
        classifier: the `SequenceClassifier` when a fine-tuned classifier is exported.
        label_names: the classifier's label names, in logit order.
        fine_tuning: what `tf-minilm evaluate --save-model` recorded beside the classifier
            (task, max_seq_len, accuracy, ...), {} when nothing was found.
    """

    encoder: Any
    tokenizer: Any
    source: str
    source_type: str
    tokenizer_dir: str | None = None
    classifier: Any = None
    label_names: list[str] | None = None
    fine_tuning: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> str:
        """"classifier" or "embedding" (one of `EXPORT_KINDS`)."""
        return EXPORT_KINDS[1] if self.classifier is not None else EXPORT_KINDS[0]

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


def resolve_pooling(student: Student, pooling: str | None) -> tuple[Any, str]:
    """The export's pooling (mode and normalisation) and where it came from.

    The model folder is the HF folder itself, or for a `.keras` file or an object the
    folder its tokenizer came from. Its sentence-transformers files give the mode and
    whether a `Normalize` module follows; without them: mean, normalised. A flag that
    disagrees with the folder's mode wins, with a warning naming both, and keeps the
    folder's normalisation.

    Returns:
        (`model.pooling.PoolingSpec`, "flag" | the folder's modules.json | "default").

    Raises:
        ExportError: malformed sentence-transformers files (naming the file and field).
    """
    from tf_minilm.model.pooling import PoolingError, PoolingSpec, read_pooling

    folder = student.model_folder
    declared = None
    modules_file = os.path.join(folder, ST_MODULES_FILE) if folder is not None else None
    if modules_file is not None and os.path.isfile(modules_file):
        try:
            declared = read_pooling(folder)
        except PoolingError as err:
            raise ExportError(f"pooling of {folder}: {err}") from err
    if declared is not None and not declared.normalize:
        logger.info("%s declares no Normalize module: sentence_embedding is exported "
                    "unnormalised, as sentence-transformers computes it", folder)
    if pooling is None:
        if declared is None:
            return PoolingSpec("mean", normalize=True), "default"
        return declared, modules_file
    if declared is not None and declared.mode != pooling:
        logger.warning("--pooling %s overrides the %s pooling that %s declares", pooling,
                       declared.mode, modules_file)
    normalize = declared.normalize if declared is not None else True
    return PoolingSpec(pooling, normalize=normalize), "flag"


def classifier_sidecar(keras_path: str) -> str:
    """The JSON `tf-minilm evaluate --save-model` writes beside a classifier's `.keras` file."""
    return keras_path[: -len(".keras")] + ".json" if keras_path.endswith(".keras") \
        else keras_path + ".json"


def _read_sidecar(keras_path: str) -> dict[str, Any]:
    path = classifier_sidecar(keras_path)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"cannot read {path}: {err}") from err
    if not isinstance(value, dict):
        raise ExportError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def check_labels(labels: Any, num_classes: int, where: str) -> list[str]:
    """`labels` as a list of `num_classes` distinct non-empty strings, else `ExportError`
    naming `where` (the flag or file they came from)."""
    if not isinstance(labels, list | tuple) or not all(isinstance(x, str) and x.strip()
                                                        for x in labels):
        raise ExportError(f"{where}: labels must be a list of non-empty strings, got {labels!r}")
    if len(labels) != num_classes:
        raise ExportError(f"{where}: {len(labels)} labels for a classifier with {num_classes} "
                          f"outputs; give one name per class, in logit order")
    if len(set(labels)) != len(labels):
        raise ExportError(f"{where}: label names must be distinct, got {list(labels)}")
    return [str(x) for x in labels]


def _classifier_student(classifier: Any, source: str, source_type: str, tokenizer: Any,
                        tokenizer_dir: str | None, sidecar: dict[str, Any],
                        sidecar_path: str | None) -> Student:
    """A `Student` for a `SequenceClassifier`: tokenizer and labels from the sidecar when
    the caller gave none."""
    if tokenizer is None and sidecar.get("tokenizer_dir") is not None:
        folder = sidecar["tokenizer_dir"]
        if not isinstance(folder, str) or not (os.path.isdir(folder) and _has_tokenizer(folder)):
            raise ExportError(
                f"{sidecar_path}: field 'tokenizer_dir' is {folder!r}, which holds no "
                "tokenizer.json or vocab.txt; pass --tokenizer DIR")
        tokenizer_dir = os.path.abspath(folder)
        tokenizer = _load_tokenizer_dir(tokenizer_dir)
    if tokenizer is None:
        raise ExportError(
            f"{source} is a classifier with no tokenizer: pass --tokenizer DIR (a folder with "
            f"tokenizer.json or vocab.txt)"
            + (f"; {sidecar_path} names none" if sidecar_path else ""))
    labels = None
    if "label_names" in sidecar:
        labels = check_labels(sidecar["label_names"], classifier.num_classes,
                              f"{sidecar_path}, field 'label_names'")
    _check_finite(classifier, source)
    _check_vocabulary(tokenizer, classifier.encoder.config.vocab_size, source)
    return Student(classifier.encoder, tokenizer, source, source_type, tokenizer_dir,
                   classifier=classifier, label_names=labels, fine_tuning=sidecar)


def _check_vocabulary(tokenizer: Any, vocab_size: int, source: str) -> None:
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise ExportError(
            f"the tokenizer has {size} tokens but {source} has a vocabulary of "
            f"{vocab_size}; the tokenizer does not belong to this model"
        )


def load_student(source: Any, tokenizer: Any = None) -> Student:
    """Load what `export_model` exports.

    Args:
        source: an HF checkpoint folder (config.json + weights + tokenizer), a `.keras`
            file holding an `Encoder` or a fine-tuned `SequenceClassifier` (what
            `tf-minilm evaluate --save-model` writes), or such an object.
        tokenizer: for a `.keras` file or an object: a folder with tokenizer.json or
            vocab.txt, or a `tokenizers.Tokenizer`. Default for an encoder's `.keras`
            file: the `student/` folder beside it; for a classifier's: the
            `tokenizer_dir` of the JSON saved beside it (`classifier_sidecar`).

    Returns:
        A `Student`.

    Raises:
        ExportError: unreadable or corrupt source, not an Encoder or classifier, no
            tokenizer, labels that do not fit the classifier.
    """
    from tf_minilm.hf.checkpoints import load_hf_checkpoint
    from tf_minilm.hf.errors import CheckpointError
    from tf_minilm.model.classifier import SequenceClassifier
    from tf_minilm.model.encoder import Encoder

    tokenizer_dir = None
    if isinstance(tokenizer, str | os.PathLike):
        tokenizer_dir = os.path.abspath(os.fspath(tokenizer))
        tokenizer = _load_tokenizer_dir(tokenizer_dir)

    if isinstance(source, SequenceClassifier):
        return _classifier_student(source, f"<{source.name}>", "object", tokenizer,
                                   tokenizer_dir, {}, None)
    if isinstance(source, Encoder):
        if tokenizer is None:
            raise ExportError("exporting an Encoder object needs a tokenizer (folder or object)")
        _check_finite(source, f"<{source.name}>")
        return Student(source, tokenizer, f"<{source.name}>", "object", tokenizer_dir)

    if not isinstance(source, str | os.PathLike):
        raise ExportError(f"cannot export a {type(source).__name__}; pass an HF folder, a .keras "
                          "file, an Encoder or a SequenceClassifier")
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
    if isinstance(model, SequenceClassifier):
        sidecar_path = classifier_sidecar(path)
        sidecar = _read_sidecar(path)
        return _classifier_student(model, path, "keras", tokenizer, tokenizer_dir, sidecar,
                                   sidecar_path if sidecar else None)
    if not isinstance(model, Encoder):
        raise ExportError(f"{path} holds a {type(model).__name__}, not a tf_minilm Encoder or "
                          "SequenceClassifier")
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
    _check_vocabulary(tokenizer, model.config.vocab_size, path)
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


def _write_side_files(staging: str, student: Student, encoder_config: Any,
                      classifier: dict[str, Any] | None = None) -> list[str]:
    """Tokenizer files, config.json (`encoder_config`'s, with `id2label` for a
    classifier) and a classifier's labels.json next to the models; returns the names
    written."""
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
    config = encoder_config.to_hf_dict()
    if classifier is not None:
        names = classifier["labels"]
        config["id2label"] = {str(i): name for i, name in enumerate(names)}
        config["label2id"] = {name: i for i, name in enumerate(names)}
        with open(os.path.join(staging, LABELS_FILE), "w", encoding="utf-8") as handle:
            json.dump({"labels": names}, handle, indent=2)
        written.append(LABELS_FILE)
    with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
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


def _resolve_max_seq_len(student: Student, max_seq_len: int | None) -> int:
    """The flag; else a classifier's fine-tuning length (its sidecar); else 128. Capped
    by the model's position table."""
    if max_seq_len is None:
        max_seq_len = student.fine_tuning.get("max_seq_len", DEFAULT_MAX_SEQ_LEN)
        rules.seq_len(max_seq_len, f"{classifier_sidecar(student.source)}: field 'max_seq_len'",
                      error=ExportError)
    else:
        rules.seq_len(max_seq_len, "max_seq_len", error=ExportError)
    limit = student.encoder.config.max_sequence_length
    if max_seq_len > limit:
        logger.warning("max_seq_len %d capped to %d, the model's position table", max_seq_len,
                       limit)
        max_seq_len = limit
    return max_seq_len


def _graph_function(student: Student, pooling: Any) -> Any:
    """The `tf.function` converted: the classifier's logits, or the embedding outputs."""
    if student.classifier is not None:
        return student.classifier.float32_copy().inference_function()
    return embedding_function(float32_copy(student.encoder), pooling.mode, pooling.normalize)


def _classifier_report(student: Student, labels: Any) -> dict[str, Any]:
    num_classes = student.classifier.num_classes
    if labels is not None:
        names = check_labels(list(labels), num_classes, "labels")
    elif student.label_names is not None:
        names = student.label_names
    else:
        names = [f"LABEL_{i}" for i in range(num_classes)]
        logger.warning("%s has no label names (no %s beside it); the export calls them %s",
                       student.source, os.path.basename(classifier_sidecar(student.source)),
                       ", ".join(names))
    fine_tuning = {key: student.fine_tuning[key] for key in ("task", "accuracy", "macro_f1")
                   if key in student.fine_tuning}
    return {"labels": names, "classifier_pooling": student.classifier.pooling,
            "fine_tuning": fine_tuning}


def export_model(
    source: Any,
    output_dir: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    quantize: str = "int8",
    optimize: bool = True,
    pooling: str | None = None,
    max_seq_len: int | None = None,
    tokenizer: Any = None,
    fp32_tolerance: float = FP32_TOLERANCE,
    int8_min_cosine: float = INT8_MIN_COSINE,
    labels: Sequence[str] | None = None,
    int8_max_probability_diff: float = INT8_MAX_PROBABILITY_DIFF,
) -> dict[str, Any]:
    """Export a student or a fine-tuned classifier to an ONNX folder, checked, atomically.

    Args:
        source: HF checkpoint folder, `.keras` file (an `Encoder` or a fine-tuned
            `SequenceClassifier`), or such an object (see `load_student`).
        output_dir: destination folder; replaced only if the export succeeds (an
            existing folder must be empty or an earlier export).
        opset: ONNX opset, 13-18.
        quantize: "int8" (also write model.int8.onnx, the fastest int8 variant that
            holds, see `export.quantize.choose_int8`) or "none".
        optimize: apply and require onnxruntime's transformer fusions.
        pooling: encoders only: "mean" or "cls" pooling of `sentence_embedding`; None:
            the model folder's (its sentence-transformers files, with their
            normalisation), mean and normalised when it has none. A given pooling that
            differs from the folder's overrides it with a warning.
        max_seq_len: longest input in tokens, capped by the model's position table;
            None: a classifier's fine-tuning length when recorded, else 128.
        tokenizer: tokenizer folder or object (for `.keras` files and objects).
        fp32_tolerance: max abs difference allowed between the float32 graph and Keras.
        int8_min_cosine: least cosine allowed between int8 and Keras sentence embeddings.
        labels: classifiers only: label names in logit order (default: the names
            `tf-minilm evaluate` saved beside the `.keras` file, else `LABEL_<i>`).
        int8_max_probability_diff: classifiers only: largest class-probability change
            allowed between the int8 graph and Keras.

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
    output_dir = os.path.abspath(os.fspath(output_dir))

    student = load_student(source, tokenizer)
    if student.kind == "classifier":
        if pooling is not None:
            raise ExportError(f"pooling applies to encoders; {student.source} is a classifier, "
                              f"which pools as it was fine-tuned ({student.classifier.pooling})")
        classifier = _classifier_report(student, labels)
        spec, pooling_source = None, "classifier"
    else:
        if labels is not None:
            raise ExportError(f"labels apply to classifiers; {student.source} is an encoder")
        classifier = None
        spec, pooling_source = resolve_pooling(student, pooling)
    max_seq_len = _resolve_max_seq_len(student, max_seq_len)
    _check_output_dir(output_dir, student)
    config = student.encoder.config

    import onnx

    from export.fusion import expected_fusions, grouped_counts, optimize_onnx, unfused_operators
    from export.memory import release_freed_heap
    from export.quantize import choose_int8
    from export.validate import check_int8, int8_failure, reference_outputs, validate_export
    from serving.runtime import INT8_PAYS_SPEEDUP, timing_feeds
    from tf_minilm.versions import cpu_int8_kind

    kind = student.kind
    with staged_folder(output_dir, "onnx-export") as staging:
        function = _graph_function(student, spec)
        logger.info("converting %s (%s, opset %d)", student.source, kind, opset)
        model = function_to_onnx(function, opset)
        feeds, reference = reference_outputs(function, student.tokenizer, max_seq_len,
                                             config.pad_token_id)
        # Keras is done: every later check compares with `reference`. Dropping its model
        # before fusion keeps a base-size export to one copy of the weights at a time
        # (TensorFlow returns them only when `tf-minilm export` set it up to,
        # export.memory.free_tensorflow_memory_on_release).
        del function
        student.encoder = student.classifier = None
        release_freed_heap()
        fp32_path = os.path.join(staging, ONNX_MODEL_FILE)
        statistics = expected = None
        unfused = unfused_operators(bool(config.relative_attention_num_buckets))
        if optimize:
            expected = expected_fusions(config.num_hidden_layers,
                                        embed_layer_norm=not config.is_roberta_like,
                                        attention="Attention" not in unfused)
            for op, reason in unfused.items():
                logger.warning("%s (%s): %s", op, config.model_type, reason)
            statistics = optimize_onnx(model, fp32_path, config.num_attention_heads,
                                       config.hidden_size, expected)
        else:
            onnx.save(model, fp32_path)
        # The graph's inputs and outputs as saved (fusion keeps both), read before the
        # model goes: loading fp32_path again would hold a base-size model twice.
        inputs, outputs = _graph_io(model)
        del model  # the graph is in fp32_path now; a base-size model's is 440 MB
        logger.info("validating against the Keras float32 model")
        parity = validate_export(None, student.tokenizer, fp32_path, None,
                                 max_seq_len=max_seq_len, pad_id=config.pad_token_id,
                                 fp32_tolerance=fp32_tolerance, reference=(feeds, reference))
        int8_choice = None
        if quantize == "int8":
            release_freed_heap()  # conversion's and fusion's buffers, before the ladder's
            int8_choice = choose_int8(
                fp32_path, os.path.join(staging, ONNX_INT8_FILE),
                check=lambda path: check_int8(reference, path, feeds, int8_min_cosine,
                                              int8_max_probability_diff),
                calibration=calibration_feeds(student.tokenizer, max_seq_len,
                                              config.pad_token_id),
                failure=int8_failure,
                timing=timing_feeds(config.vocab_size, min(DEFAULT_MAX_SEQ_LEN, max_seq_len)))
            parity["int8"] = int8_choice.pop("figures")
            int8_choice["cpu_int8_kind"] = cpu_int8_kind()
            int8_choice["pays"] = int8_choice["speedup"] >= INT8_PAYS_SPEEDUP
            if not int8_choice["pays"]:
                logger.warning(
                    "int8 is only %.2fx fp32 on this CPU (%s int8 kernels), under %.1fx: "
                    "`tf-minilm serve --model-file auto` serves model.onnx (fp32) on CPUs of "
                    "this kind and re-times int8 on others", int8_choice["speedup"],
                    int8_choice["cpu_int8_kind"], INT8_PAYS_SPEEDUP)
        side_files = _write_side_files(staging, student, config, classifier)
        files = {name: os.path.getsize(os.path.join(staging, name))
                 for name in (ONNX_MODEL_FILE, ONNX_INT8_FILE) if os.path.isfile(os.path.join(staging, name))}
        report = {
            "report_version": REPORT_VERSION,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "kind": kind,
            "source": student.source,
            "source_type": student.source_type,
            "model_type": config.model_type,
            "hidden_size": config.hidden_size,
            "num_layers": config.num_hidden_layers,
            "num_heads": config.num_attention_heads,
            "intermediate_size": config.intermediate_size,
            "vocab_size": config.vocab_size,
            "max_seq_len": max_seq_len,
            "pooling": spec.mode if spec is not None else classifier["classifier_pooling"],
            "normalize": spec.normalize if spec is not None else None,
            "pooling_source": pooling_source,
            **({"labels": classifier["labels"], "fine_tuning": classifier["fine_tuning"]}
               if classifier is not None else {}),
            "opset": opset,
            "optimized": bool(optimize),
            "quantize": quantize,
            "int8": int8_choice,
            # What `tf-minilm serve --model-file auto` serves on a CPU of this kind.
            "serve_default": ONNX_INT8_FILE if int8_choice and int8_choice["pays"]
            else ONNX_MODEL_FILE,
            "inputs": inputs,
            "outputs": outputs,
            "input_names": list(INPUT_NAMES),
            "output_names": [o["name"] for o in outputs],
            "fused_operators": ({op: n for op, n in statistics.items() if n}
                                if statistics is not None else None),
            "fused_operator_groups": grouped_counts(statistics) if statistics else None,
            "expected_fusions": expected,
            "unfused_operators": unfused if optimize else None,
            "parity": parity,
            "files": {"model_bytes": files, "side_files": side_files},
            "versions": installed_versions(VERSIONED_PACKAGES),
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        wanted = CLASSIFIER_OUTPUTS if classifier is not None else EMBEDDING_OUTPUTS
        if tuple(report["output_names"]) != wanted:
            raise ExportError(f"exported graph has outputs {report['output_names']}, expected "
                              f"{list(wanted)}")
        with open(os.path.join(staging, EXPORT_REPORT_FILE), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        folder = student.model_folder
        write_card(staging, export_card(
            staging, os.path.join(folder, CARD_FILE) if folder else None))
    logger.info("exported %s -> %s in %.1f s", student.source, output_dir,
                time.perf_counter() - started)
    return report
