"""Every shared value rule is checked by its owner, `tf_minilm.rules`, and nowhere else.

Each settings object's fields are enumerated: a field that a shared rule governs is given a
bad value with that rule's message template swapped for a sentinel, so the error can only
carry the sentinel if the owner raised it (a copy of the rule elsewhere would give its own
wording). Every field must be listed, either under its shared rule or under the owner of
the rule that is its own, so a new setting cannot slip past unclassified.
"""

from __future__ import annotations

import dataclasses

import pytest

from tf_minilm import rules
from tf_minilm.distill.config import DistillConfig
from tf_minilm.distill.options import TrainOptions
from tf_minilm.evaluate.settings import EvalSettings, EvaluationError
from tf_minilm.model.config import ConfigError

TEMPLATES = {"positive": "POSITIVE_INT", "finite": "FINITE_NUMBER", "seq_len": "SEQ_LEN"}

# DistillConfig field -> (shared rule, a value it refuses) or the owner of its own rule.
DISTILL_FIELDS = {
    **{name: ("positive", 0) for name in (
        "prepare_workers", "student_layers", "student_hidden", "student_heads",
        "student_intermediate", "relation_heads", "relation_chunk_mb", "assistant_hidden",
        "assistant_steps", "batch_size", "steps", "checkpoint_every", "keep_checkpoints",
        "log_every")},
    "max_seq_len": ("seq_len", 2),
    "learning_rate": ("finite", float("nan")),
    "weight_decay": ("finite", 1.0),
    "eval_fraction": ("finite", 0.5),
    **{name: "choices (DistillConfig.validate)" for name in (
        "doc_separator", "packing", "student_layout", "method", "init", "precision",
        "strategy")},
    **{name: "paths and names, checked against the files (distill.job.resolve)" for name in (
        "teacher", "corpus", "data", "student_config", "output", "cache_dir", "text_column")},
    "loss": "distill.objectives", "stages": "distill.objectives",
    "relations": "distill.objectives",
    "teacher_layer": "TrainOptions.resolve (1-based), model.config.check_layer_number (depth)",
    "init_layers": "model.student", "warmup_steps": "distill.options",
    "clipnorm": "distill.options", "seed": "data.schedule.check_seed", "resume": "a switch",
}

TRAIN_FIELDS = {
    **{name: ("positive", 0) for name in (
        "steps", "checkpoint_every", "keep_checkpoints", "log_every", "relation_heads",
        "eval_every", "eval_steps", "relation_chunk_mb")},
    "learning_rate": ("finite", 0.0), "weight_decay": ("finite", -0.1),
    "adam_beta_1": ("finite", 1.0), "adam_beta_2": ("finite", float("inf")),
    "adam_epsilon": ("finite", 0.0),
    "warmup_steps": "distill.options", "clipnorm": "distill.options",
    "method": "choices", "strategy": "choices", "precision": "choices",
    "jit_compile": "a switch", "loss": "distill.objectives",
    "stages": "distill.objectives", "relations": "distill.objectives",
    "teacher_layer": "TrainOptions.resolve (1-based), the Distiller (its depth)",
    "student_layer": "TrainOptions.resolve (1-based), the Distiller (its depth)",
    "seed": "data.schedule.check_seed", "resume": "a switch", "pooling": "model.pooling",
}

EVAL_FIELDS = {
    "epochs": ("positive", 0), "batch_size": ("positive", -1), "probe_max_iter": ("positive", 0),
    "max_seq_len": ("seq_len", 2), "weight_decay": ("finite", 1.5),
}


def _sentinel(monkeypatch: pytest.MonkeyPatch, rule: str) -> str:
    marker = f"OWNED-BY-RULES-{rule}"
    monkeypatch.setattr(rules, TEMPLATES[rule], marker + " {name}")
    return marker


def test_every_distill_field_is_classified():
    assert set(DISTILL_FIELDS) == {f.name for f in dataclasses.fields(DistillConfig)}
    assert set(TRAIN_FIELDS) == {f.name for f in dataclasses.fields(TrainOptions)}


@pytest.mark.parametrize("name", sorted(n for n, v in DISTILL_FIELDS.items()
                                        if isinstance(v, tuple)))
def test_distill_flags_get_their_message_from_the_owner(monkeypatch, name):
    rule, bad = DISTILL_FIELDS[name]
    flag = "--" + name.replace("_", "-")
    extra = {"assistant_hidden": 16} if name == "assistant_steps" else {}
    with pytest.raises(ConfigError) as plain:
        DistillConfig(**{name: bad, **extra}).validate()
    assert str(plain.value).startswith(flag + " must be"), plain.value
    marker = _sentinel(monkeypatch, rule)
    with pytest.raises(ConfigError) as owned:
        DistillConfig(**{name: bad, **extra}).validate()
    assert str(owned.value) == f"{marker} {flag}"


def _train_spec(**values):
    return TrainOptions(**values).resolve()


SETTINGS = [(_train_spec, ValueError, "TrainOptions.{}", TRAIN_FIELDS),
            (EvalSettings, EvaluationError, "{}", EVAL_FIELDS)]


@pytest.mark.parametrize("kind, error, form, name", [
    (kind, error, form, name) for kind, error, form, fields in SETTINGS
    for name, value in sorted(fields.items()) if isinstance(value, tuple)],
    ids=lambda value: getattr(value, "__name__", value))
def test_settings_objects_get_their_message_from_the_owner(monkeypatch, kind, error, form,
                                                           name):
    fields = next(fields for cls, _, _, fields in SETTINGS if cls is kind)
    rule, bad = fields[name]
    marker = _sentinel(monkeypatch, rule)
    with pytest.raises(error) as owned:
        kind(**{name: bad})
    assert str(owned.value) == f"{marker} {form.format(name)}"


@pytest.mark.parametrize("field, bad, rule", [
    ("max_queue", 0, "positive"), ("max_connections_per_client", -2, "positive"),
    ("max_wait_ms", -1.0, "finite"), ("header_timeout_s", float("nan"), "finite"),
])
def test_server_limits_get_their_message_from_the_owner(monkeypatch, field, bad, rule):
    from serving.limits import ServerConfig, ServerConfigError

    marker = _sentinel(monkeypatch, rule)
    with pytest.raises(ServerConfigError) as owned:
        ServerConfig(**{field: bad})
    assert owned.value.field == field and str(owned.value) == f"{marker} ServerConfig.{field}"
    assert owned.value.naming("--flag") == f"{marker} --flag"


def test_heads_dividing_a_width_has_one_message_everywhere():
    from tf_minilm.model.config import EncoderConfig
    from tf_minilm.model.layers import SelfAttention

    expected = rules.DIVIDES.format(heads_name="num_heads", heads=5, width_name="hidden_size",
                                    width=16)
    with pytest.raises(ValueError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
        SelfAttention(hidden_size=16, num_heads=5)
    with pytest.raises(ConfigError, match=r"field 'num_attention_heads' \(5\) does not divide "
                                          r"field 'hidden_size' \(16\)"):
        EncoderConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=5, intermediate_size=32).validate("config.json")


def test_the_rules_themselves():
    assert rules.positive_int(None, "x", optional=True) is None
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(rules.RuleError, match="x must be a positive integer"):
            rules.positive_int(bad, "x")
    assert rules.seq_len(3, "n") == 3
    with pytest.raises(rules.RuleError, match=r"n must be an integer of at least 3"):
        rules.seq_len(2, "n")
    assert rules.weight_decay(0, "wd") == 0.0
    for bad in (1, -0.01, float("nan"), True):
        with pytest.raises(rules.RuleError, match=r"wd must be a finite number >= 0 and < 1"):
            rules.weight_decay(bad, "wd")
    with pytest.raises(rules.RuleError, match=r"lr must be a finite number > 0, got inf"):
        rules.finite_number(float("inf"), "lr", above=0)
