"""One run specification: built once, resolved once, consumed as it is.

The distill command's settings become a frozen `TrainSpec` in one resolution; the loss
spec is parsed once on the way from the flags to the `Distiller`, the teacher's pooling is
one object from its folder to the written student, and one fingerprint with one
comparison decides a resume, in the job (config.json) and in the trainer (checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from tf_minilm.distill import job, objectives
from tf_minilm.distill.config import TRAIN_FIELDS, DistillConfig
from tf_minilm.distill.options import DEFAULT_LOSS, TrainOptions
from tf_minilm.distill.spec import continue_run, fingerprint_differences
from tf_minilm.model.config import ConfigError


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"the model reads line {i} of the corpus\n" for i in range(50)),
                    encoding="utf-8")
    return path


def _config(teacher, corpus, output, **values):
    sizes = {"student_layers": 1, "student_hidden": 16, "student_heads": 2,
             "relation_heads": 4, "max_seq_len": 16}
    return DistillConfig(teacher=str(teacher), corpus=[str(corpus)], output=str(output),
                         **{**sizes, **values})


def test_the_cli_and_python_users_share_the_training_defaults():
    options, config = TrainOptions(), DistillConfig()
    for name in TRAIN_FIELDS:
        given = getattr(config, name)
        assert (tuple(given) if isinstance(given, list) else given) == getattr(options, name), \
            name
    assert config.validate() == TrainOptions(eval_every=config.checkpoint_every).resolve()
    assert config.validate().objective.loss == DEFAULT_LOSS


def test_the_spec_is_frozen_and_its_parts_keep_the_flag_names():
    spec = TrainOptions(steps=40, loss="minilmv2", relation_heads=4).resolve()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.steps = 50
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.objective.relation_heads = 8
    flags = {f.name for f in dataclasses.fields(DistillConfig)}
    parts = [spec.objective, spec.optimizer, spec.checkpoints, spec.runtime]
    names = {f.name for part in parts for f in dataclasses.fields(part)}
    # every field is its flag's name, or one that no flag sets (Python only, the teacher's)
    assert names - flags == {"student_layer", "adam_beta_1", "adam_beta_2", "adam_epsilon",
                             "eval_every", "eval_steps", "jit_compile", "pooling",
                             "warmup_explicit"}


def test_from_the_flags_to_the_distiller_the_loss_is_parsed_once_and_pooling_is_one_object(
        tiny_model_dir, corpus, tmp_path, monkeypatch):
    from tf_minilm.distill.trainer import make_distiller
    from tf_minilm.hf.checkpoints import load_hf_checkpoint

    parsed = []
    original = objectives.parse_objective

    def counting(spec):
        if isinstance(spec, str):
            parsed.append(spec)
        return original(spec)

    monkeypatch.setattr(objectives, "parse_objective", counting)
    config = _config(tiny_model_dir, corpus, tmp_path / "run",
                     loss="minilmv2 + 0.5*hidden_mse", steps=20,
                     init="random")  # a pruned start (auto's here) needs calibration rows
    resolved = job.check_output_folder(job.resolve(config))
    resolved.to_dict()  # what config.json receives
    teacher = load_hf_checkpoint(resolved.teacher_dir)[0]
    distiller = make_distiller(teacher, resolved.build_student(teacher), resolved.train)
    assert parsed == ["minilmv2 + 0.5*hidden_mse"]
    assert distiller.stage_objectives == ((("minilmv2", 1.0), ("hidden_mse", 0.5)),)
    assert distiller.pooling is resolved.pooling is resolved.train.objective.pooling
    assert distiller.num_relation_heads == resolved.config.relation_heads == 4
    pruned = job.resolve(_config(tiny_model_dir, corpus, tmp_path / "pruned"))
    assert pruned.init == "prune"  # auto, for a narrower student
    with pytest.raises(ConfigError, match=r"--init auto resolved to prune\): build_student "
                                          r"needs calibration batches"):
        pruned.build_student(teacher)


def test_resuming_with_init_auto_keeps_the_start_the_run_began_with(tiny_model_dir, corpus,
                                                                    tmp_path):
    """A run begun when `auto` started narrower students at random resumes as random."""
    config = _config(tiny_model_dir, corpus, tmp_path / "run", steps=20)
    began = job.resolve(dataclasses.replace(config, init="random"))
    os.makedirs(config.output)
    with open(os.path.join(config.output, "config.json"), "w", encoding="utf-8") as handle:
        json.dump({"fingerprint": began.train.fingerprint()}, handle)
    resumed = job.check_output_folder(job.resolve(dataclasses.replace(config, resume=True)))
    assert resumed.init == "random" and resumed.train.fingerprint() == began.train.fingerprint()


def test_a_failed_rule_names_the_flag_once_resolved(tiny_model_dir, corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"^--relation-heads must be a positive integer"):
        job.resolve(_config(tiny_model_dir, corpus, tmp_path / "a", **{"relation_heads": 0}))
    with pytest.raises(ConfigError, match=r"^--stages: the stages mix relation methods"):
        job.resolve(_config(tiny_model_dir, corpus, tmp_path / "b", steps=20,
                            stages=["minilmv2:12", "minilm"]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_config_json_and_the_resume_share_one_fingerprint(tiny_model_dir, corpus, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    first = job.resolve(_config(tiny_model_dir, corpus, output, steps=40))
    (output / "config.json").write_text(json.dumps(first.to_dict()))
    saved = json.loads((output / "config.json").read_text())["fingerprint"]
    assert saved == json.loads(json.dumps(first.train.fingerprint()))
    # same settings, other log cadence and chunk size: the same run
    same = job.check_output_folder(job.resolve(_config(
        tiny_model_dir, corpus, output, steps=40, resume=True, log_every=3,
        relation_chunk_mb=8)))
    assert same.train.fingerprint() == first.train.fingerprint() and not same.extensions
    # more steps extend the run and keep its warm-up
    longer = job.check_output_folder(job.resolve(_config(
        tiny_model_dir, corpus, output, steps=80, resume=True)))
    assert longer.train.warmup_steps == 4 and longer.extensions == (
        {"from_steps": 40, "to_steps": 80},)
    # anything that changes the weights is refused, naming its flag
    with pytest.raises(ConfigError, match=r"--batch-size \(run: 32, now: 8\)"):
        job.check_output_folder(job.resolve(_config(
            tiny_model_dir, corpus, output, steps=40, resume=True, batch_size=8)))
    with pytest.raises(ConfigError, match=r"--student-hidden \(run: 16, now: 8\)"):
        job.check_output_folder(job.resolve(_config(
            tiny_model_dir, corpus, output, steps=40, resume=True, student_hidden=8)))


def test_continue_run_and_the_comparison():
    spec = TrainOptions(steps=40, loss="minilmv2").resolve()
    saved = spec.fingerprint()
    longer, extended_from = continue_run(TrainOptions(steps=80, loss="minilmv2").resolve(),
                                         saved)
    assert extended_from == 40 and longer.warmup_steps == 4
    assert fingerprint_differences(saved, longer.fingerprint(), extended_from) == []
    assert [key for key, _, _ in fingerprint_differences(saved, longer.fingerprint())] == \
        ["steps", "stages"]
    given, _ = continue_run(TrainOptions(steps=80, loss="minilmv2", warmup_steps=2).resolve(),
                            saved)
    assert [key for key, _, _ in fingerprint_differences(saved, given.fingerprint(), 40)] == \
        ["warmup_steps"]
    shorter, extended_from = continue_run(TrainOptions(steps=20, loss="minilmv2").resolve(),
                                          saved)
    assert extended_from is None
    assert ("steps", 40, 20) in fingerprint_differences(saved, shorter.fingerprint())
