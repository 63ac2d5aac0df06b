"""Every `tf-minilm distill` setting either runs or fails before any work, naming its flag.

The cases are enumerated, not hand-picked: each field of `DistillConfig` takes the values
of its type (edges, out-of-range, wrong choices, non-finite numbers), and the pairs of
fields that constrain each other (warm-up and steps, loss and method and stages, init
and widths and layers, relation heads and sizes, the teacher assistant) take a grid.
For every case the flag-level validation and the teacher-level resolution run, as
`tf-minilm distill` runs them before reading the corpus. A rejected case must raise a
`ConfigError` (or the corpus's `CorpusError`) whose message names a flag; an accepted
case must then be accepted by everything the run builds from it (`TrainSpec`, the
student, the `Distiller` of each stage, the learning-rate schedule), so no setting can
pass the flags and fail later on an internal field, as `--warmup-steps 300 --steps 300`
once did.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

import keras
import numpy as np
import pytest

from tests.conftest import make_wordpiece_tokenizer
from tf_minilm.constants import INIT_CHOICES, METHODS
from tf_minilm.data.corpus import CorpusError
from tf_minilm.distill import job
from tf_minilm.distill.assistant import build_assistant, stage_specs
from tf_minilm.distill.config import DistillConfig
from tf_minilm.distill.trainer import make_distiller
from tf_minilm.hf.checkpoints import load_hf_checkpoint, save_hf_checkpoint
from tf_minilm.model.config import ConfigError, EncoderConfig
from tf_minilm.model.encoder import Encoder
from tf_minilm.schedules import WarmupLinearDecay

TEACHER = EncoderConfig(vocab_size=200, hidden_size=32, num_hidden_layers=3,
                        num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
INTS = (-1, 0, 1, 2, 3, 4, 8, 23, 24, 25, 64, 65, 300)
FLOATS = (-1.0, 0.0, 1e-9, 0.3, 0.5, 1.0, math.nan, math.inf)
LOSSES = ("minilmv2", "minilm", "embedding_mse", "10*embedding_mse + hidden_mse",
          "minilmv2 + 0.5*embedding_cosine", "0*minilmv2 + hidden_mse", "-1*hidden_mse",
          "embedding_mse + embedding_mse", "bogus", "", "minilm + minilmv2")
STAGES = (["minilmv2:10", "embedding_mse"], ["minilmv2:30", "hidden_mse"],
          ["embedding_mse:0", "hidden_mse"], ["x:5"], ["minilmv2:10", "minilm:20"],
          ["embedding_mse:10", "hidden_mse:14"], ["hidden_mse"])
INIT_LAYERS = ("1,3", "1,2", "2,3", "3,1", "1,4", "0,1", "1", "a,b", "1,3,3", "1, 3")
RELATIONS = (["qq"], ["qx"], ["qq", "qq"], ["kv", "vq"], [], ["qkv"])
SKIPPED = {"teacher", "corpus", "output", "resume", "cache_dir", "text_column",
           "data"}  # paths: below and tests/test_shards.py


def base(teacher_dir, corpus_dir, output) -> dict:
    return {"teacher": str(teacher_dir), "corpus": [str(corpus_dir)], "doc_separator": "line",
            "student_layers": 2, "student_hidden": 16, "student_heads": 4,
            "relation_heads": 4, "max_seq_len": 32, "batch_size": 8, "steps": 24,
            "checkpoint_every": 8, "log_every": 4, "output": str(output)}


def single_field_cases() -> list[dict]:
    cases = []
    for field in dataclasses.fields(DistillConfig):
        if field.name in SKIPPED:
            continue
        kind, choices = str(field.type), field.metadata.get("choices")
        if choices:
            values = [*choices, "bogus"]
        elif field.name == "loss":
            values = list(LOSSES)
        elif field.name == "stages":
            values = list(STAGES)
        elif field.name == "init_layers":
            values = list(INIT_LAYERS)
        elif field.name == "relations":
            values = list(RELATIONS)
        elif field.name == "student_config":
            values = ["/nonexistent/config.json"]
        elif kind.startswith("int"):
            values = list(INTS)
        elif kind.startswith("float"):
            values = list(FLOATS)
        else:
            raise AssertionError(f"no values for field {field.name} ({kind}): add them here")
        cases += [{field.name: value} for value in values]
    return cases


def pair_cases() -> list[dict]:
    cases = []
    for steps, warmup in itertools.product((1, 2, 24, 300), (None, 0, 1, 23, 24, 299, 300, 301)):
        cases.append({"steps": steps, "warmup_steps": warmup})
    for method, loss in itertools.product((None, *METHODS), (None, *LOSSES[:5])):
        cases.append({"method": method, "loss": loss})
    for method, stages in itertools.product((None, *METHODS), STAGES[:2]):
        cases.append({"method": method, "stages": stages, "loss": None})
    cases.append({"stages": STAGES[0], "loss": "minilmv2"})
    for hidden, heads, relation in itertools.product((16, 24, 32), (2, 4, 8), (2, 4, 8, 16)):
        cases.append({"student_hidden": hidden, "student_heads": heads, "relation_heads": relation,
                      "method": "minilmv2"})
    for init, layers, hidden, depth in itertools.product(
            INIT_CHOICES, (None, "1,3", "2,3,3"), (16, 32), (2, 3, 4)):
        cases.append({"init": init, "init_layers": layers, "student_hidden": hidden,
                      "student_layers": depth, "student_intermediate": 128 if hidden == 32
                      else None})
    for hidden, steps, stages in itertools.product((None, 16, 18, 24), (None, 1, 12, 24),
                                                   (None, STAGES[0])):
        cases.append({"assistant_hidden": hidden, "assistant_steps": steps, "stages": stages,
                      "method": "minilmv2"})
    for layer, method in itertools.product((1, 3, 4), METHODS):
        cases.append({"teacher_layer": layer, "method": method})
    cases.append({"method": "minilm", "student_heads": 2})
    cases.append({"teacher": "/nonexistent/teacher"})
    cases.append({"corpus": ["/nonexistent/corpus.txt"]})
    return cases


CASES = single_field_cases() + pair_cases()
FLAG = re.compile(r"--[a-z][a-z-]+")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    keras.utils.set_random_seed(0)
    return save_hf_checkpoint(Encoder(TEACHER), make_wordpiece_tokenizer(),
                              tmp_path_factory.mktemp("teacher") / "teacher")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["the", "model", "film", "good", "bad", "music", "game", "news"]
    (folder / "lines.txt").write_text(
        "\n".join(" ".join(rng.choice(words, size=12)) for _ in range(50)) + "\n")
    return folder


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return load_hf_checkpoint(teacher_dir)[0]


_STUDENTS: dict[str, Encoder] = {}


def built_student(resolved: job.ResolvedJob, teacher: Encoder) -> Encoder:
    """`resolved.build_student(teacher)`, built once per distinct student: building is a
    pure function of the student's sizes, init, layers, seed and layout, so a second build
    of the same student would check nothing new (and building is most of this test's time)."""
    import json

    key = json.dumps([resolved.student_config.to_dict(), resolved.init, resolved.init_layers,
                      resolved.config.seed, resolved.config.student_layout], sort_keys=True,
                     default=str)
    if key not in _STUDENTS:
        rng = np.random.default_rng(0)  # a pruned start ranks the teacher on rows like these
        ids = rng.integers(5, TEACHER.vocab_size, (8, 16)).astype("int32")
        calibration = [{"input_ids": ids, "attention_mask": np.ones_like(ids),
                        "token_type_ids": np.zeros_like(ids)}]
        _STUDENTS[key] = resolved.build_student(teacher, calibration)
    return _STUDENTS[key]


def check_runs(resolved: job.ResolvedJob, teacher: Encoder) -> None:
    """Build what the run builds from an accepted configuration (no training step)."""
    spec = resolved.train
    config = resolved.config
    WarmupLinearDecay(spec.optimizer.learning_rate, spec.warmup_steps, spec.steps)
    if config.assistant_hidden:
        steps = config.assistant_steps or max(1, spec.steps // 2)
        first, second = stage_specs(spec, steps)
        sizes = resolved.student_config
        assistant = build_assistant(teacher, config.assistant_hidden,
                                    sizes.num_attention_heads, config.seed)
        make_distiller(teacher, assistant, first)
        make_distiller(assistant, resolved.build_student(assistant), second)
    else:
        make_distiller(teacher, built_student(resolved, teacher), spec)


def test_the_enumeration_is_large_and_covers_every_field():
    covered = {key for case in CASES for key in case}
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    assert fields - covered <= {"output", "resume", "cache_dir", "text_column", "data"}
    assert len(CASES) > 400


CHUNKS = 4  # the cases in four tests, so that parallel workers share them


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_case_runs_or_fails_naming_a_flag(teacher_dir, corpus_dir, teacher, tmp_path,
                                                chunk):
    accepted = rejected = 0
    problems = []
    for index, overrides in list(enumerate(CASES))[chunk::CHUNKS]:
        output = tmp_path / f"run{index}"
        values = {**base(teacher_dir, corpus_dir, output), **overrides}
        values = {key: value for key, value in values.items() if value is not None}
        try:
            resolved = job.resolve(DistillConfig.from_mapping(values, "test"))
            job.check_output_folder(resolved)
        except (ConfigError, CorpusError) as err:
            rejected += 1
            if not FLAG.search(str(err)):
                problems.append(f"{overrides}: rejected without naming a flag: {err}")
            if output.exists():
                problems.append(f"{overrides}: rejected after writing {output}")
            continue
        except Exception as err:  # anything else is a validation path that leaks
            problems.append(f"{overrides}: {type(err).__name__} instead of ConfigError: {err}")
            continue
        try:
            check_runs(resolved, teacher)
        except Exception as err:
            problems.append(f"{overrides}: accepted by the flags, then {type(err).__name__}: "
                            f"{err}")
        accepted += 1
    assert not problems, "\n".join(problems)
    assert accepted > 100 // CHUNKS and rejected > 100 // CHUNKS, (accepted, rejected)


def test_warmup_equal_to_steps_fails_naming_the_flag(teacher_dir, corpus_dir, tmp_path):
    values = {**base(teacher_dir, corpus_dir, tmp_path / "run"), "steps": 300,
              "warmup_steps": 300}
    with pytest.raises(ConfigError, match=r"^--warmup-steps must be an integer in \[0, "
                                          r"--steps=300\)"):
        job.resolve(DistillConfig.from_mapping(values, "test"))


@pytest.mark.parametrize("argv", [
    ["evaluate", "x", "--learning-rate", "inf"],
    ["evaluate", "x", "--weight-decay", "nan"],
    ["export", "x", "--int8-min-cosine", "nan"],
    ["serve", "x", "--max-wait-ms", "nan"],
    ["bench", "x", "--bad-fraction", "inf"],
    ["bench", "x", "--time-budget", "1e999"],
])
def test_non_finite_float_flags_are_refused_where_parsed(argv, capsys):
    from tf_minilm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    flag = next(a for a in argv if a.startswith("--"))
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "is not a finite number" in err, err
