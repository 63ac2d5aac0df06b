"""The `tf-minilm distill` job: resolve a `DistillConfig` once into a `ResolvedJob`, then run it.

Owns: the distill job read top to bottom (resolve against the teacher, check the output
folder, prepare the corpus, train, save the student, measure fidelity) and the output
folder's layout. Imports: `distill` (config, options, spec, objectives, trainer,
assistant), `data`, `hf`, `model`, `evaluate.fidelity`, `card`, `rules`, `constants`,
`fileio`, `versions`, `assets`.

Everything that can be checked without loading weights is checked first (sizes,
layers, relation heads, corpus paths, the output folder), so a bad flag fails in a
second with a message naming it. The output folder then receives:

    config.json        the resolved configuration (what was run)
    versions.json      exact package versions
    metrics.jsonl      one JSON line per logging interval (train and eval losses)
    logs/              TensorBoard scalars
    checkpoints/       atomic training checkpoints (resume with --resume)
    stages/            with a teacher assistant: one run folder per stage instead
    student/           the student as an HF folder (loads in transformers), with tokenizer
    student.keras      the student as a native Keras file
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

from tf_minilm import rules
from tf_minilm.constants import RUN_FILES
from tf_minilm.distill.config import DEFAULT_MAX_SEQ_LEN, DistillConfig
from tf_minilm.distill.spec import TrainSpec, continue_run, fingerprint_differences
from tf_minilm.fileio import (
    NotOurFolderError,
    atomic_path,
    check_replaceable,
    claim_folder,
    write_json_atomic,
)
from tf_minilm.model.config import ConfigError, EncoderConfig, check_layer_number
from tf_minilm.versions import environment

logger = logging.getLogger(__name__)



# DistillConfig fields outside the training spec that change the weights: with the
# spec's own fingerprint they decide whether --resume continues the same run.
IDENTITY_FIELDS = ("teacher", "corpus", "data", "text_column", "doc_separator", "packing",
                   "max_seq_len", "eval_fraction", "batch_size", "student_layout",
                   "student_layers", "student_hidden", "student_heads", "student_intermediate",
                   "init", "init_layers", "assistant_hidden", "assistant_steps", "strategy")


@dataclasses.dataclass(frozen=True)
class ResolvedJob:
    """A `DistillConfig` resolved once against the teacher and the prepared data.

    Attributes:
        config: the settings as given, with `max_seq_len` filled in.
        teacher_dir: the teacher's folder.
        corpus: the corpus paths (empty with --data).
        teacher_config, student_config: the two encoders' sizes.
        init: the student's initialisation (`auto` resolved).
        init_layers: the teacher layers copied or pruned into the student, if any.
        train: the run's `TrainSpec` (stages, pooling, teacher layer, identity).
        extensions: the run's earlier extensions (`--resume` with more `--steps`).
        teacher_targets: the kinds of stored teacher targets of --data the run trains on
            (`data.targets`; empty: the teacher runs in every step).
    """

    config: DistillConfig
    teacher_dir: str
    corpus: list[str]
    teacher_config: EncoderConfig
    student_config: EncoderConfig
    init: str
    init_layers: tuple[int, ...] | None
    train: TrainSpec
    extensions: tuple[dict[str, int], ...] = ()
    teacher_targets: tuple[str, ...] = ()

    @property
    def pooling(self) -> Any:
        """The teacher's `PoolingSpec`: the embedding terms', the written student's."""
        return self.train.objective.pooling

    @property
    def teacher_layer(self) -> int:
        return self.train.objective.teacher_layer

    def to_dict(self) -> dict[str, Any]:
        """config.json: every setting as run, and the fingerprint a resume must match."""
        values = self.config.to_dict()
        values.update(self.train.identity)
        objective = self.train.objective
        values.update(method=objective.method, loss=objective.loss,
                      teacher_layer=objective.teacher_layer, pooling=objective.pooling.to_dict(),
                      warmup_steps=self.train.warmup_steps,
                      learning_rate=self.train.optimizer.learning_rate,
                      cache_dir=self.cache_dir, fingerprint=self.train.fingerprint())
        if self.extensions:
            values["extensions"] = list(self.extensions)
        return values

    def identity(self) -> dict[str, Any]:
        """The resolved values of `IDENTITY_FIELDS`, as JSON values."""
        sizes = self.student_config
        values = {name: getattr(self.config, name) for name in IDENTITY_FIELDS}
        values.update(teacher=self.teacher_dir, corpus=list(self.corpus), init=self.init,
                      init_layers=",".join(map(str, self.init_layers)) if self.init_layers
                      else None,
                      student_layers=sizes.num_hidden_layers, student_hidden=sizes.hidden_size,
                      student_heads=sizes.num_attention_heads,
                      student_intermediate=sizes.intermediate_size,
                      teacher_targets=list(self.teacher_targets))
        return values

    def build_student(self, teacher: Any, calibration: Any = None) -> Any:
        """The student `Encoder` this job trains, initialised from `teacher` as resolved
        (`calibration`: the batches a pruned start ranks the teacher's activations on,
        `calibration_batches`; needed whenever `init` resolved to "prune")."""
        from tf_minilm.model.student import build_student

        if self.init == "prune" and calibration is None:
            raise ConfigError(
                f"this run starts from a pruned student (--init {self.config.init} resolved to "
                "prune): build_student needs calibration batches (calibration_batches(rows, "
                "batch_size)), or resolve with --init random")
        sizes = self.student_config
        return build_student(teacher, sizes.num_hidden_layers, sizes.hidden_size,
                             sizes.num_attention_heads, sizes.intermediate_size,
                             init=self.init, teacher_layers=self.init_layers,
                             seed=self.config.seed, layout=self.config.student_layout,
                             calibration=calibration)

    @property
    def cache_dir(self) -> str:
        return self.config.cache_dir or os.path.join(self.config.output, "cache")


def _student_sizes(config: DistillConfig, teacher: EncoderConfig) -> EncoderConfig:
    from tf_minilm.model.student import student_config

    layers, hidden = config.student_layers, config.student_hidden or teacher.hidden_size
    heads, intermediate = config.student_heads, config.student_intermediate
    if config.student_config:
        try:
            given = EncoderConfig.from_json_file(config.student_config)
        except ConfigError as err:
            raise ConfigError(f"--student-config: {err}") from err
        layers, hidden = given.num_hidden_layers, given.hidden_size
        heads, intermediate = given.num_attention_heads, given.intermediate_size
    heads = heads or teacher.num_attention_heads
    rules.divides(heads, hidden, "--student-heads", "--student-hidden", error=ConfigError)
    try:
        student = student_config(teacher, layers, hidden, heads, intermediate,
                                 config.student_layout)
    except ConfigError as err:
        raise ConfigError(f"student sizes: {err}") from err
    if config.student_config:
        unused = _unused_fields(config.student_config, given, student)
        if unused:
            logger.warning("--student-config %s: only the student's sizes are read from it; "
                           "the student takes the rest from the teacher and its layout, so "
                           "these fields of the file are not used: %s", config.student_config,
                           "; ".join(unused))
    return student


STUDENT_SIZE_FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads",
                       "intermediate_size")
"""The fields `--student-config` gives the student; the rest come from the teacher."""


def _unused_fields(path: str, given: EncoderConfig, student: EncoderConfig) -> list[str]:
    """The fields written in the file at `path` whose values the student does not take
    (a dropout of 0 there, say, is the teacher's 0.1 in the student), as "name: file's
    value (student's)"."""
    with open(path, encoding="utf-8") as handle:
        written = set(json.load(handle))
    return [f"{field.name}: {getattr(given, field.name)!r} "
            f"(student: {getattr(student, field.name)!r})"
            for field in dataclasses.fields(EncoderConfig)
            if field.name in written and field.name not in STUDENT_SIZE_FIELDS
            and getattr(given, field.name) != getattr(student, field.name)]


def _with_row_length(config: DistillConfig) -> DistillConfig:
    """`config` with its `max_seq_len` filled in: the flag, else the rows of --data, else
    the default. A flag that disagrees with the prepared rows is the one real conflict."""
    from tf_minilm.data.corpus import CorpusError

    prepared_len = None
    if config.data is not None:
        from tf_minilm.data.shards import read_manifest

        try:
            prepared_len = read_manifest(config.data)["settings"]["max_seq_len"]
        except CorpusError as err:
            raise ConfigError(f"--data: {err}") from err
    if config.max_seq_len is None:
        return dataclasses.replace(config, max_seq_len=prepared_len or DEFAULT_MAX_SEQ_LEN)
    if prepared_len is not None and prepared_len != config.max_seq_len:
        raise ConfigError(f"--max-seq-len {config.max_seq_len}: --data {config.data} holds "
                          f"rows of {prepared_len} tokens; leave --max-seq-len out to train "
                          f"on them, or prepare again with --max-seq-len {config.max_seq_len}")
    return config


def resolve(config: DistillConfig) -> ResolvedJob:
    """Fill in defaults and validate against the teacher's config.json (no weights loaded).

    Raises:
        ConfigError: naming the flag at fault.
    """
    from tf_minilm.assets import default_teacher_dir
    from tf_minilm.data.corpus import CorpusError, collect_files, default_corpus_paths

    train = config.validate()
    config = _with_row_length(config)
    teacher_dir = config.teacher or default_teacher_dir()
    if not os.path.isdir(teacher_dir):
        raise ConfigError(f"--teacher {teacher_dir}: not a folder (expected an HF checkpoint folder)")
    teacher = EncoderConfig.from_json_file(os.path.join(teacher_dir, "config.json"))
    student = _student_sizes(config, teacher)

    teacher_layer = check_layer_number(config.teacher_layer or teacher.num_hidden_layers,
                                       teacher.num_hidden_layers, "teacher", "--teacher-layer")
    if config.max_seq_len > teacher.max_sequence_length:
        raise ConfigError(f"--max-seq-len {config.max_seq_len} exceeds the teacher's "
                          f"{teacher.max_sequence_length} positions")
    sizes = {"teacher": teacher.hidden_size, "student": student.hidden_size}
    if config.assistant_hidden:
        # The assistant has the student's head count.
        rules.divides(student.num_attention_heads, config.assistant_hidden,
                      "--student-heads (the assistant's too)", "--assistant-hidden",
                      error=ConfigError)
        sizes["assistant"] = config.assistant_hidden
    from tf_minilm.distill import objectives

    relation = {objectives.relation_term(stage.objective)
                for stage in train.objective.stages} - {None}
    try:
        if "minilmv2" in relation:
            objectives.check_relation_heads(config.relation_heads, sizes, "--relation-heads")
        elif "minilm" in relation:
            objectives.check_minilm_v1_heads(teacher.num_attention_heads,
                                             student.num_attention_heads)
    except objectives.ObjectiveError as err:
        raise ConfigError(str(err) if "minilmv2" in relation else
                          f"--method minilm with --student-heads "
                          f"{student.num_attention_heads}: {err}") from err

    same_shape = all(getattr(student, f) == getattr(teacher, f)
                     for f in ("model_type", "hidden_size", "num_attention_heads",
                               "intermediate_size"))
    fits = student.num_hidden_layers <= teacher.num_hidden_layers and not config.assistant_hidden
    init = config.init
    if config.init_layers is not None:
        if init == "random":
            raise ConfigError("--init-layers copies teacher layers; it cannot go with --init random")
        if init != "prune":
            init = "teacher-layers"
    prune_problem = None if init in ("random", "teacher-layers") else \
        _prune_problem(student, teacher, fits)
    if init == "auto":
        if same_shape and fits:
            init = "teacher-layers"
        else:  # a pruned start where width pruning can cut the student out of the teacher
            # (ahead of random starts at every measured budget but one,
            # docs/base-size.md#pruned-starts), else random
            init = "random" if prune_problem else "prune"
            if prune_problem and fits:
                logger.info("--init auto: random start (no pruned start: %s)", prune_problem)
    elif init == "teacher-layers" and not (same_shape and fits):
        raise ConfigError(
            "--init teacher-layers needs a student of the teacher's layout and width "
            f"(layout, hidden, heads, FFN: {teacher.model_type}/{teacher.hidden_size}/"
            f"{teacher.num_attention_heads}/{teacher.intermediate_size}, student "
            f"{student.model_type}/{student.hidden_size}/{student.num_attention_heads}/"
            f"{student.intermediate_size}) with at most as many layers and no teacher "
            "assistant; use --init random"
        )

    if init == "prune" and prune_problem:
        raise ConfigError(prune_problem)
    init_layers = None
    if init in ("teacher-layers", "prune"):
        from tf_minilm.model.student import check_layer_choice, parse_layer_list, spread_layers

        try:
            init_layers = check_layer_choice(
                parse_layer_list(config.init_layers) if config.init_layers is not None
                else spread_layers(teacher.num_hidden_layers, student.num_hidden_layers),
                teacher.num_hidden_layers, student.num_hidden_layers)
        except ConfigError as err:
            raise ConfigError(f"--init-layers: {err}") from err

    from tf_minilm.model.pooling import PoolingError, read_pooling

    try:
        pooling = read_pooling(teacher_dir)
    except PoolingError as err:
        raise ConfigError(f"--teacher {teacher_dir}: {err}") from err

    if config.data is not None:
        corpus = []
    else:
        corpus = [os.fspath(p) for p in config.corpus] or default_corpus_paths()
        try:
            collect_files(corpus)
        except CorpusError as err:
            raise ConfigError(f"--corpus: {err}") from err
    job = ResolvedJob(config, teacher_dir, corpus, teacher, student, init, init_layers,
                      train.replace(teacher_layer=teacher_layer, pooling=pooling),
                      teacher_targets=_stored_target_kinds(config, train))
    return dataclasses.replace(job, train=job.train.replace(
        identity=tuple(job.identity().items())))


def _prune_problem(student: EncoderConfig, teacher: EncoderConfig, fits: bool) -> str | None:
    """Why width pruning cannot cut `student` out of `teacher`, in `--init prune`'s
    words (None: it can). `fits`: at most the teacher's layers and no teacher assistant."""
    from tf_minilm.model.prune import check_prunable

    if not fits:
        return ("--init prune needs a student with at most the teacher's "
                f"{teacher.num_hidden_layers} layers and no teacher assistant")
    try:
        check_prunable(student, teacher)
    except ConfigError as err:
        return (f"--init prune: {err} (check --student-hidden, --student-heads, "
                "--student-intermediate, --student-layout)")
    return None


def _stored_target_kinds(config: DistillConfig, train: TrainSpec) -> tuple[str, ...]:
    """The kinds of teacher targets --data stores, when they serve a stage of the loss.

    Raises:
        ConfigError: --data holds targets that serve no stage (every stage has a term
            only the live teacher gives), or goes with a teacher assistant (whose second
            stage distils the assistant, not the teacher): refused rather than misused.
    """
    from tf_minilm.data.corpus import CorpusError
    from tf_minilm.data.targets import (
        read_targets_manifest,
        targets_manifest_path,
        uncovered_terms,
    )

    if config.data is None:
        return ()
    path = targets_manifest_path(config.data)
    if not os.path.isfile(path):
        return ()
    if config.assistant_hidden is not None:
        raise ConfigError(f"--assistant-hidden with --data {config.data}: its stored targets "
                          f"({path}) are the teacher's, and the assistant -> student stage "
                          "must distil the assistant's outputs; use rows prepared without "
                          "--targets for a teacher-assistant run")
    try:
        kinds = tuple(read_targets_manifest(path)["kinds"])
    except (CorpusError, KeyError) as err:
        raise ConfigError(f"--data: {err}") from err
    served = [not uncovered_terms(kinds, [name for name, _ in stage.objective])
              for stage in train.objective.stages]
    if not any(served):
        given = "--stages" if config.stages is not None else "--loss"
        raise ConfigError(
            f"--data {config.data} stores teacher targets ({', '.join(kinds)}, {path}) that "
            f"serve no stage of {given} {train.objective.loss or ' '.join(config.stages)}: "
            "relation terms need the teacher's Q/K/V and hidden_mse its hidden states; use "
            "an alignment loss the targets serve, or rows prepared without --targets")
    return kinds


# ----------------------------------------------------------------------------- output
def check_output_folder(job: ResolvedJob) -> ResolvedJob:
    """Refuse to overwrite a run; on --resume, the job continuing the run in --output.

    The run's fingerprint in its config.json must match this job's
    (`spec.fingerprint_differences`, the comparison the trainer makes with each
    checkpoint); more --steps extend the run, keeping its warm-up unless one is given.

    Returns:
        `job`, or on --resume the job with the run's warm-up and extensions.
    """
    output = job.config.output
    existing = [name for name in RUN_FILES if os.path.exists(os.path.join(output, name))]
    if not job.config.resume:
        if existing:
            raise ConfigError(
                f"--output {output} already holds a run ({', '.join(existing)}); pass --resume to "
                "continue it, or choose another --output (nothing was changed)"
            )
        try:
            check_replaceable(output)
        except NotOurFolderError as err:
            raise ConfigError(f"--output: {err}") from err
        return job

    saved_path = os.path.join(output, "config.json")
    if not os.path.exists(saved_path):
        raise ConfigError(f"--resume: {saved_path} not found; there is no run to resume in {output}")
    try:
        with open(saved_path, encoding="utf-8") as handle:
            saved = json.load(handle)
        fingerprint = saved["fingerprint"]
        if not isinstance(fingerprint, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--resume: {saved_path} holds no run fingerprint ({err!r}); it was "
                          "not written by this version of tf-minilm distill, so the run cannot "
                          "be continued safely; start a new --output") from err
    if job.config.init == "auto" and fingerprint.get("init") not in (None, job.init):
        # `auto` picks the start by the rules of the version that began the run (before
        # 2026-12-04 it started narrower students at random); continuing keeps that start.
        # When that start does not fit the settings given now, the differences below
        # name what changed.
        try:
            job = resolve(dataclasses.replace(job.config, init=fingerprint["init"]))
            logger.info("--resume: --init auto continues the run's %s start",
                        fingerprint["init"])
        except ConfigError:
            pass
    train, extended_from = continue_run(job.train, fingerprint)
    extensions = tuple(saved.get("extensions", []))
    if extended_from is not None:
        extensions += ({"from_steps": extended_from, "to_steps": train.steps},)
        logger.info("--resume --steps %d: extending the run in %s from %d steps", train.steps,
                    output, extended_from)
    names = {f.name for f in dataclasses.fields(DistillConfig)}
    differences = [f"{'--' + key.replace('_', '-') if key in names else key} (run: {was!r}, "
                   f"now: {now!r})" for key, was, now in
                   fingerprint_differences(fingerprint, train.fingerprint(), extended_from)]
    if differences:
        raise ConfigError(f"--resume: settings differ from the run in {output}: "
                          f"{'; '.join(differences)}")
    return dataclasses.replace(job, train=train, extensions=extensions)


def run(config: DistillConfig, command: list[str] | None = None) -> dict[str, Any]:
    """Run a distillation end to end; returns the summary written to `result.json`.

    `command` (the command line, when known) goes into the student's model card.
    """
    job = check_output_folder(resolve(config))
    config = job.config  # with the defaults the teacher and --data fill in
    output = job.config.output
    try:
        claim_folder(output, "distill-run")
    except NotOurFolderError as err:
        raise ConfigError(f"--output: {err}") from err

    from tf_minilm.hf.checkpoints import load_hf_checkpoint
    from tf_minilm.hf.errors import CheckpointError

    try:  # corrupt weights or a foreign tokenizer fail here, before the corpus is read
        load_hf_checkpoint(job.teacher_dir)
    except CheckpointError as err:
        raise ConfigError(f"--teacher: {err}") from err
    logger.info("teacher %s (%d x %d), student %d x %d (%d heads, FFN %d), init %s, %s",
                job.teacher_dir, job.teacher_config.num_hidden_layers,
                job.teacher_config.hidden_size, job.student_config.num_hidden_layers,
                job.student_config.hidden_size, job.student_config.num_attention_heads,
                job.student_config.intermediate_size, job.init,
                job.train.objective.loss or " then ".join(config.stages or []))

    from tf_minilm.data.corpus import DEFAULT_CORPUS_TEXT_COLUMN, CorpusError, ReadOptions
    from tf_minilm.data.pipeline import make_dataset, make_eval_dataset
    from tf_minilm.data.prepare import PreparedCorpus, prepare_corpus
    from tf_minilm.data.shards import open_prepared
    from tf_minilm.hf.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(job.teacher_dir)
    targets = None
    if config.data is not None:
        try:
            data = open_prepared(config.data, tokenizer, config.max_seq_len)
            prepared = PreparedCorpus.from_prepared(data, reused=True)
            if job.teacher_targets:
                from tf_minilm.data.targets import open_targets

                targets = open_targets(data, job.teacher_dir, job.pooling)
                logger.info("teacher targets (%s) from %s: the teacher does not run in the "
                            "steps they serve", ", ".join(targets.kinds), config.data)
        except CorpusError as err:
            raise ConfigError(f"--data: {err}") from err
    else:
        prepared = prepare_corpus(
            job.corpus, tokenizer, max_seq_len=config.max_seq_len,
            eval_fraction=config.eval_fraction, seed=config.seed, cache_dir=job.cache_dir,
            packing=config.packing, workers=config.prepare_workers,
            read_options=ReadOptions(doc_separator=config.doc_separator,
                                     text_field=config.text_column,
                                     text_column=config.text_column if config.corpus
                                     else DEFAULT_CORPUS_TEXT_COLUMN),
        )
    logger.info("corpus: %s", prepared.stats.summary())
    if len(prepared.train) < config.batch_size:
        raise ConfigError(f"--batch-size {config.batch_size} is larger than the {len(prepared.train)} "
                          "training sequences of the corpus")
    # The inputs are known good: only now does the folder become a run (a start that
    # failed above leaves no config.json, so the same command can simply be run again).
    write_json_atomic(os.path.join(output, "config.json"), job.to_dict())
    write_json_atomic(os.path.join(output, "versions.json"), environment())

    def make_train_dataset(start_step: int) -> Any:
        return make_dataset(prepared.train, config.batch_size, seed=config.seed,
                            start_step=start_step, targets=targets)

    eval_dataset = make_eval_dataset(
        prepared.eval, config.batch_size,
        targets.gather(data.heldout, config.max_seq_len) if targets is not None else None)
    student_config = job.student_config
    log_dir = os.path.join(output, "logs")
    if config.assistant_hidden:
        from tf_minilm.distill.assistant import distill_with_assistant

        # Each stage is a run folder of its own (checkpoints, metrics, TensorBoard) under
        # stages/, apart from the final student/ folder.
        result = distill_with_assistant(
            lambda: load_hf_checkpoint(job.teacher_dir)[0], make_train_dataset,
            os.path.join(output, "stages"),
            student_config.num_hidden_layers, student_config.hidden_size,
            student_config.num_attention_heads, student_config.intermediate_size, job.train,
            assistant_steps=config.assistant_steps, assistant_hidden=config.assistant_hidden,
            student_init="random", student_layout=config.student_layout,
            eval_dataset=eval_dataset,
        )
        student, final = result.student, result.student_stage
    else:
        from tf_minilm.distill.trainer import run_distillation

        def build_models() -> tuple[Any, Any]:
            teacher = load_hf_checkpoint(job.teacher_dir)[0]
            calibration = calibration_batches(prepared.train, config.batch_size) \
                if job.init == "prune" else None
            student = job.build_student(teacher, calibration)
            plan = getattr(student, "pruning_plan", None)
            if plan is not None:
                logger.info("pruned start: %s", plan.summary())
                write_json_atomic(os.path.join(output, PRUNING_FILE), plan.summary())
            return teacher, student

        final = run_distillation(build_models, make_train_dataset, output, job.train,
                                 eval_dataset=eval_dataset, log_dir=log_dir)
        student = final.student

    student = save_student(student, tokenizer, output, job)
    from tf_minilm.evaluate.fidelity import run_fidelity

    teacher = result.assistant_stage.teacher if config.assistant_hidden else final.teacher
    fidelity = run_fidelity(teacher, student, tokenizer, job.pooling,
                            prepared.eval, seed=config.seed)
    logger.info("fidelity to the teacher: %s", "; ".join(
        f"{where}: " + " ".join(f"{k}={v:.4f}" for k, v in values.items()
                                if isinstance(v, float))
        for where, values in fidelity.items()))
    summary = {
        "step": final.step,
        "train": final.train_metrics,
        "eval": final.eval_metrics,
        "precision": final.precision,
        "student_parameters": int(student.count_params()),
        "corpus": prepared.stats.to_dict(),
        "data_dir": prepared.data_dir,
        "train_sequences": len(prepared.train),
        "eval_sequences": len(prepared.eval),
        "fidelity": fidelity,
    }
    write_json_atomic(os.path.join(output, "result.json"), summary)
    from tf_minilm.card import student_card, write_card

    write_card(os.path.join(output, "student"), student_card(output, command))
    return summary


# Rows a pruned start ranks the teacher's activations on (Minitron used 1,024 samples;
# at 64 tokens a row, 512 rows are about 30 k tokens), spread over the training rows.
PRUNE_CALIBRATION_ROWS = 512
PRUNING_FILE = "pruning.json"


def calibration_batches(rows: Any, batch_size: int) -> list[dict[str, Any]]:
    """Batches of at most `PRUNE_CALIBRATION_ROWS` training rows, evenly spread over them."""
    import numpy as np

    count = min(len(rows), PRUNE_CALIBRATION_ROWS)
    ids, mask = rows.gather(np.linspace(0, len(rows) - 1, count).astype(np.int64))
    return [{"input_ids": ids[i:i + batch_size], "attention_mask": mask[i:i + batch_size],
             "token_type_ids": np.zeros_like(ids[i:i + batch_size])}
            for i in range(0, count, batch_size)]


def save_student(student: Any, tokenizer: Any, output: str, job: ResolvedJob) -> Any:
    """Write `student/` (HF + sentence-transformers, float32) and `student.keras`, atomically.

    The student folder pools as the teacher does and keeps the teacher's max length.

    Returns:
        The float32 copy of the student that was saved.
    """
    from tf_minilm.hf.checkpoints import save_hf_checkpoint
    from tf_minilm.model.encoder import copy_encoder

    float32 = copy_encoder(student, "float32", name="student")
    save_hf_checkpoint(float32, tokenizer, os.path.join(output, "student"),
                       pooling=job.pooling, teacher_folder=job.teacher_dir)
    with atomic_path(os.path.join(output, "student.keras")) as partial:
        float32.save(partial)
    return float32
