"""Teacher targets stored beside prepared rows: equal to the live teacher's within their
rounding, resumable, checked on open, and a run on them never runs the teacher's forward."""

from __future__ import annotations

import json
import logging
import os
import random

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import WORDS
from tf_minilm.cli import main
from tf_minilm.data.shards import open_prepared
from tf_minilm.data.targets import (
    TARGETS_DIR,
    TARGETS_MANIFEST,
    TargetsError,
    open_targets,
    uncovered_terms,
)
from tf_minilm.distill.distiller import Distiller
from tf_minilm.hf.checkpoints import load_hf_checkpoint, save_hf_checkpoint
from tf_minilm.model.pooling import PoolingSpec, read_pooling, sentence_embedding
from tf_minilm.model.student import build_student

SEQ = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "lines.txt"
    rng = random.Random(0)
    path.write_text("".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20)))
                            + "\n" for _ in range(700)), encoding="utf-8")
    return path


def prepare(corpus, teacher, output, *extra):
    return main(["--log-level", "WARNING", "prepare", str(corpus), "--teacher", str(teacher),
                 "--output", str(output), "--doc-separator", "line", "--max-seq-len", str(SEQ),
                 "--shard-tokens", "400", "--eval-fraction", "0.1", *extra])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus, tiny_model_dir):
    output = tmp_path_factory.mktemp("data") / "d"
    assert prepare(corpus, tiny_model_dir, output, "--targets", "embedding,hidden") == 0
    return output


def test_stored_targets_are_the_teachers_outputs_within_float16(prepared, tiny_model_dir):
    teacher, tokenizer = load_hf_checkpoint(tiny_model_dir)
    data = open_prepared(prepared, tokenizer)
    assert len(data.manifest["shards"]) > 2  # targets span several parts
    targets = open_targets(data, tiny_model_dir, read_pooling(tiny_model_dir))
    rows = np.array([0, 3, len(data.rows) - 1, *data.heldout[:2].tolist()])
    ids, mask = data.rows.gather(rows)
    live = teacher({"input_ids": ids, "attention_mask": mask,
                    "token_type_ids": np.zeros_like(ids)})["last_hidden_state"].numpy()
    stored = targets.gather(rows, SEQ)
    real = mask.astype(bool)
    np.testing.assert_allclose(stored["teacher_hidden"][real], live[real], rtol=2e-3,
                               atol=2e-3)
    assert not stored["teacher_hidden"][~real].any()  # nothing stored past a row's tokens
    embedding = np.asarray(sentence_embedding(live, mask, PoolingSpec()))
    np.testing.assert_allclose(stored["teacher_embedding"], embedding, rtol=2e-3, atol=1e-3)


def test_loss_and_gradients_from_stored_targets_equal_the_live_teachers(prepared,
                                                                         tiny_model_dir):
    teacher, tokenizer = load_hf_checkpoint(tiny_model_dir)
    data = open_prepared(prepared, tokenizer)
    targets = open_targets(data, tiny_model_dir, read_pooling(tiny_model_dir))
    keras.utils.set_random_seed(1)
    student = build_student(teacher, 1, 16, 2)
    distiller = Distiller(teacher, student, objective="embedding_mse + hidden_mse",
                          num_relation_heads=4)
    rows = np.arange(8)
    ids, mask = data.rows.gather(rows)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    results = []
    for inputs in (batch, {**batch, **targets.gather(rows, SEQ)}):
        with tf.GradientTape() as tape:
            losses = distiller.compute_losses(inputs, training=False)
        gradients = tape.gradient(losses["loss"], distiller.trainable_weights)
        results.append((losses, [tf.convert_to_tensor(g) for g in gradients]))
    assert not distiller.stored_targets_serve(batch)
    assert distiller.stored_targets_serve({**batch, **targets.gather(rows, SEQ)})
    (live, live_grads), (stored, stored_grads) = results
    for name in ("loss", "loss_embedding_mse", "loss_hidden_mse"):
        assert float(stored[name]) == pytest.approx(float(live[name]), rel=5e-3)
    for a, b in zip(live_grads, stored_grads, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-2,
                                   atol=2e-3 * float(np.abs(np.asarray(a)).max()) + 1e-9)


def test_only_alignment_terms_are_served():
    assert uncovered_terms(("embedding",), ["embedding_mse", "hidden_mse"]) == ["hidden_mse"]
    assert uncovered_terms(("hidden",), ["embedding_cosine", "hidden_mse"]) == []
    assert uncovered_terms(("embedding", "hidden"), ["minilmv2"]) == ["minilmv2"]


def copy_rows(prepared, destination):
    """The prepared rows of `prepared` (hard links), without its targets."""
    os.makedirs(destination)
    for name in os.listdir(prepared):
        if name != TARGETS_DIR:
            os.link(prepared / name, destination / name)
    return destination


def distill_args(prepared, teacher, output, *extra):
    return ["--log-level", "WARNING", "distill", "--data", str(prepared), "--teacher",
            str(teacher), "--student-layers", "1", "--student-hidden", "16",
            "--student-heads", "2", "--relation-heads", "4", "--batch-size", "8", "--steps",
            "8", "--checkpoint-every", "8", "--log-every", "4", "--precision", "float32",
            "--output", str(output), *extra]


@pytest.mark.slow
def test_a_run_on_stored_targets_never_runs_the_teacher_and_matches_a_live_run(
        prepared, tiny_model_dir, tmp_path, monkeypatch):
    # The same rows without targets, for the live run.
    live_data = copy_rows(prepared, tmp_path / "live-data")
    live = tmp_path / "live"
    assert main(distill_args(live_data, tiny_model_dir, live)) == 0

    def no_teacher(self, *args, **kwargs):
        raise AssertionError("the teacher ran in a distillation step")

    monkeypatch.setattr(Distiller, "_run_models", no_teacher)
    stored = tmp_path / "stored"
    assert main(distill_args(prepared, tiny_model_dir, stored)) == 0
    config = json.loads((stored / "config.json").read_text())
    assert config["fingerprint"]["teacher_targets"] == ["embedding", "hidden"]
    results = [json.loads((run / "result.json").read_text()) for run in (live, stored)]
    assert results[1]["eval"]["loss"] == pytest.approx(results[0]["eval"]["loss"], rel=0.02)
    spearman = [r["fidelity"]["held_out"]["spearman"] for r in results]
    assert spearman[1] == pytest.approx(spearman[0], abs=0.02)


def test_targets_of_another_teacher_or_a_truncated_part_are_refused(prepared, tiny_model_dir,
                                                                    tmp_path, caplog):
    teacher, tokenizer = load_hf_checkpoint(tiny_model_dir)
    other = tmp_path / "other"
    teacher.weights[0].assign(teacher.weights[0] * 1.5)
    save_hf_checkpoint(teacher, tokenizer, other)
    data = open_prepared(prepared, tokenizer)
    with pytest.raises(TargetsError, match=r"targets.json was computed by another teacher "
                                           r"than --teacher .*other"):
        open_targets(data, str(other), PoolingSpec())
    with pytest.raises(TargetsError, match="pools as"):
        open_targets(data, tiny_model_dir, PoolingSpec("cls"))
    caplog.set_level(logging.ERROR)
    assert main(distill_args(prepared, other, tmp_path / "run")) == 2
    assert "computed by another teacher" in caplog.text
    assert not (tmp_path / "run" / "config.json").exists()

    broken = copy_rows(prepared, tmp_path / "broken")
    os.makedirs(broken / TARGETS_DIR)
    for name in os.listdir(prepared / TARGETS_DIR):
        (broken / TARGETS_DIR / name).write_bytes((prepared / TARGETS_DIR / name).read_bytes())
    part = broken / TARGETS_DIR / "hidden-00001.npy"
    part.write_bytes(part.read_bytes()[:-64])
    with pytest.raises(TargetsError, match=r"hidden-00001.npy is truncated"):
        open_targets(open_prepared(broken, tokenizer), tiny_model_dir, PoolingSpec())


def test_targets_the_loss_cannot_use_are_refused_before_work(prepared, tiny_model_dir,
                                                             tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    assert main(distill_args(prepared, tiny_model_dir, tmp_path / "run", "--loss",
                             "minilmv2")) == 2
    assert "serve no stage of --loss minilmv2" in caplog.text
    assert not (tmp_path / "run").exists()
    assert main(distill_args(prepared, tiny_model_dir, tmp_path / "run",
                             "--assistant-hidden", "16")) == 2
    assert "the assistant -> student stage must distil the assistant's outputs" in caplog.text
    assert not (tmp_path / "run").exists()
    assert prepare("x", tiny_model_dir, tmp_path / "d", "--targets", "embedding,logits") == 2
    assert "--targets embedding,logits: give one or more of embedding, hidden" in caplog.text


def test_an_interrupted_targets_prepare_resumes_at_the_first_missing_part(
        corpus, tiny_model_dir, prepared, tmp_path):
    output = tmp_path / "d"
    assert prepare(corpus, tiny_model_dir, output) == 0  # rows only
    assert not (output / TARGETS_DIR).exists()
    assert prepare(corpus, tiny_model_dir, output, "--targets", "embedding,hidden") == 0
    folder = output / TARGETS_DIR
    manifest = json.loads((folder / TARGETS_MANIFEST).read_text())
    # as if killed after the first two parts: the manifest and the later parts missing
    kept = {name: os.stat(folder / name).st_mtime_ns for name in
            ("embedding-00000.npy", "hidden-00000.npy")}
    for name in os.listdir(folder):
        if name not in kept:
            os.remove(folder / name)
    assert prepare(corpus, tiny_model_dir, output, "--targets", "embedding,hidden") == 0
    assert json.loads((folder / TARGETS_MANIFEST).read_text()) == manifest
    assert {name: os.stat(folder / name).st_mtime_ns for name in kept} == kept
    # the same rows and teacher give the same targets as the module's directory
    reference = json.loads((prepared / TARGETS_DIR / TARGETS_MANIFEST).read_text())
    assert [p["sha256"] for p in manifest["parts"]] == [p["sha256"] for p in
                                                        reference["parts"]]
    # targets of other kinds are never written over the stored ones
    assert prepare(corpus, tiny_model_dir, output, "--targets", "embedding") == 2
    assert json.loads((folder / TARGETS_MANIFEST).read_text()) == manifest


def test_bfloat16_targets_and_what_open_refuses(corpus, tiny_model_dir, prepared, tmp_path):
    output = tmp_path / "d"
    flags = ("--targets", "hidden", "--targets-dtype", "bfloat16")
    assert prepare(corpus, tiny_model_dir, output, *flags) == 0
    manifest = json.loads((output / TARGETS_DIR / TARGETS_MANIFEST).read_text())
    assert prepare(corpus, tiny_model_dir, output, *flags) == 0  # done: nothing rewritten
    assert json.loads((output / TARGETS_DIR / TARGETS_MANIFEST).read_text()) == manifest
    _, tokenizer = load_hf_checkpoint(tiny_model_dir)
    data = open_prepared(output, tokenizer)
    rows = np.arange(6)
    bf16 = open_targets(data, tiny_model_dir, PoolingSpec()).gather(rows, SEQ)
    fp16 = open_targets(open_prepared(prepared, tokenizer), tiny_model_dir,
                        PoolingSpec()).gather(rows, SEQ)
    assert sorted(bf16) == ["teacher_hidden"]  # embedding terms pool these
    np.testing.assert_allclose(bf16["teacher_hidden"], fp16["teacher_hidden"], rtol=1e-2,
                               atol=1e-2)

    folder = output / TARGETS_DIR
    part = folder / "hidden-00002.npy"
    original = part.read_bytes()
    part.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(TargetsError, match=r"hidden-00002.npy fails its checksum"):
        open_targets(data, tiny_model_dir, PoolingSpec())
    part.unlink()
    with pytest.raises(TargetsError, match=r"hidden-00002.npy is missing"):
        open_targets(data, tiny_model_dir, PoolingSpec())
    part.write_bytes(original)
    edited = {**manifest, "rows_manifest_sha256": "0" * 64}
    (folder / TARGETS_MANIFEST).write_text(json.dumps(edited))
    with pytest.raises(TargetsError, match="computed for other rows"):
        open_targets(data, tiny_model_dir, PoolingSpec())
    (folder / TARGETS_MANIFEST).write_text("{")
    with pytest.raises(TargetsError, match="cannot read"):
        open_targets(data, tiny_model_dir, PoolingSpec())
    (folder / TARGETS_MANIFEST).unlink()
    with pytest.raises(TargetsError, match="holds no teacher targets"):
        open_targets(data, tiny_model_dir, PoolingSpec())
    with pytest.raises(TargetsError, match="no weight file"):
        open_targets(open_prepared(prepared, tokenizer), str(tmp_path), PoolingSpec())
