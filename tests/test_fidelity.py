"""Fidelity metrics against independent references, and `evaluate --task fidelity`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tf_minilm.cli import main
from tf_minilm.evaluate import fidelity


def ranks(values):
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values))
    out[order] = np.arange(len(values))
    return out


def oracle_spearman(teacher, student):
    """Pearson of ranks over the pairs i < j, written out loop by loop (no ties here)."""
    def cos(x, i, j):
        return x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
    pairs = [(i, j) for i in range(len(teacher)) for j in range(i + 1, len(teacher))]
    a = ranks(np.array([cos(teacher, i, j) for i, j in pairs]))
    b = ranks(np.array([cos(student, i, j) for i, j in pairs]))
    return float(np.corrcoef(a, b)[0, 1])


def oracle_knn(teacher, student, k):
    def neighbours(x, i):
        sims = [(-(x[i] @ x[j]) / np.linalg.norm(x[i]) / np.linalg.norm(x[j]), j)
                for j in range(len(x)) if j != i]
        return {j for _, j in sorted(sims)[:k]}
    return float(np.mean([len(neighbours(teacher, i) & neighbours(student, i)) / k
                          for i in range(len(teacher))]))


def test_metrics_match_references_and_are_one_for_rotations():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(40, 12))
    student = teacher[:, :8] + 0.5 * rng.normal(size=(40, 8))  # other width, related
    assert fidelity.pairwise_spearman(teacher, student) == pytest.approx(
        oracle_spearman(teacher, student), abs=1e-9)
    assert fidelity.knn_overlap(teacher, student, 5) == pytest.approx(
        oracle_knn(teacher, student, 5))
    t, s = teacher - teacher.mean(0), student - student.mean(0)
    hsic = np.trace(t @ t.T @ s @ s.T)
    expected = hsic / np.sqrt(np.trace(t @ t.T @ t @ t.T) * np.trace(s @ s.T @ s @ s.T))
    assert fidelity.linear_cka(teacher, student) == pytest.approx(expected, rel=1e-9)
    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    for name, value in fidelity.fidelity_metrics(teacher, 3.0 * teacher @ rotation).items():
        assert value == pytest.approx(1.0, abs=1e-9), name
    unrelated = fidelity.fidelity_metrics(teacher, rng.normal(size=(40, 12)))
    assert unrelated["spearman"] < 0.3 and unrelated["knn@10"] < 0.5


def test_bad_inputs_are_refused():
    with pytest.raises(fidelity.FidelityError, match="same n"):
        fidelity.fidelity_metrics(np.ones((5, 3)), np.ones((4, 3)))
    with pytest.raises(fidelity.FidelityError, match="NaN or inf"):
        fidelity.linear_cka(np.full((5, 3), np.nan), np.ones((5, 3)))
    with pytest.raises(fidelity.FidelityError, match="k=10 must be in 1..4"):
        fidelity.knn_overlap(np.eye(5), np.eye(5))
    with pytest.raises(fidelity.FidelityError, match="not an HF model folder"):
        fidelity.embedder("/nonexistent")


def test_evaluate_fidelity_on_hf_keras_and_onnx_forms(tiny_model_dir, tmp_path, caplog):
    """A model scores 1 against itself in every form; the table and JSON say which texts."""
    from tf_minilm.hf.checkpoints import load_hf_checkpoint

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(["the film was good", "a bad game", "news of the bank market",
                                "the team play a great year", "music review", "new model",
                                "small fast student", "the value of a layer"]) + "\n")
    from export import export_model

    encoder, _ = load_hf_checkpoint(tiny_model_dir)
    keras_file = tmp_path / "student.keras"
    encoder.save(keras_file)
    onnx_dir = tmp_path / "onnx"
    export_model(str(tiny_model_dir), onnx_dir, quantize="none", max_seq_len=64)
    output = tmp_path / "fidelity.json"
    code = main(["evaluate", str(tiny_model_dir), str(keras_file), str(onnx_dir),
                 "--task", "fidelity", "--max-seq-len", "64",
                 "--teacher", str(tiny_model_dir), "--texts", str(texts), "--k", "3",
                 "--output", str(output)])
    assert code == 0
    report = json.loads(output.read_text())
    assert report["texts"].startswith(str(texts)) and report["num_texts"] == 8
    for values in report["results"].values():
        assert values["spearman"] == pytest.approx(1.0, abs=1e-5)
        assert values["knn@3"] == pytest.approx(1.0)
    assert report["models"][str(keras_file)]["form"] == "keras"
    assert report["models"][str(onnx_dir)]["form"] == "onnx"
    # a missing model and an unreadable texts file are named
    assert main(["evaluate", str(tmp_path / "nope"), "--task", "fidelity", "--teacher",
                 str(tiny_model_dir), "--texts", str(texts)]) == 2
    assert "nope: no such file" in caplog.text
    assert main(["evaluate", str(tiny_model_dir), "--task", "fidelity", "--teacher",
                 str(tiny_model_dir), "--texts", str(tmp_path / "none.txt")]) == 2
    assert "--texts" in caplog.text and "cannot read" in caplog.text


def test_a_student_folder_without_pooling_files_pools_as_its_teacher(tiny_model_dir, tmp_path):
    """A CLS-pooled teacher: its plain HF student is CLS-pooled too (same weights: score 1)."""
    import shutil

    from tests.test_pooling import write_folder

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher)
    write_folder(teacher, mode="cls")
    # A plain HF folder (another tool's): no sentence-transformers files at all.
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    for name in ("modules.json", "sentence_bert_config.json"):
        (plain / name).unlink()
    for name in ("1_Pooling", "2_Normalize"):
        shutil.rmtree(plain / name)
    texts = tmp_path / "texts.txt"
    texts.write_text("the film\na bad game\nnews of the bank\ngood music\nthe team\n")
    output = tmp_path / "out.json"
    assert main(["evaluate", str(plain), "--task", "fidelity", "--teacher",
                 str(teacher), "--texts", str(texts), "--k", "2", "--max-seq-len", "32",
                 "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["models"][str(plain)]["pooling"] == {"mode": "cls", "normalize": True}
    assert report["results"][str(plain)]["spearman"] == pytest.approx(1.0, abs=1e-5)


def test_held_out_fidelity_samples_a_large_held_out_set(tiny_model_dir, monkeypatch):
    from tf_minilm.data.packing import Sequences
    from tf_minilm.evaluate import fidelity as fidelity_lib
    from tf_minilm.evaluate.tasks import TaskError
    from tf_minilm.hf.checkpoints import load_hf_checkpoint
    from tf_minilm.model.pooling import PoolingSpec

    def no_mr(seed):
        raise TaskError("MR is not under test here")

    monkeypatch.setattr(fidelity_lib, "mr_test_texts", no_mr)
    monkeypatch.setattr(fidelity_lib, "MAX_HELD_OUT_ROWS", 40)
    encoder, tokenizer = load_hf_checkpoint(tiny_model_dir)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, tokenizer.get_vocab_size(), (100, 12)).astype("int32")
    ids[:, 0], ids[:, -1] = 2, 3
    rows = Sequences.from_lengths(ids, np.full(100, 12))
    report = fidelity_lib.run_fidelity(encoder, encoder, tokenizer, PoolingSpec(), rows, k=5)
    held = report["held_out"]
    assert held["num_texts"] == 40 and held["texts"] == "held-out corpus rows (40 sampled of 100)"
    assert held["spearman"] == pytest.approx(1.0) and "skipped" in report["mr"]
    small = fidelity_lib.run_fidelity(encoder, encoder, tokenizer, PoolingSpec(), rows.take(
        np.arange(30)), k=5)
    assert small["held_out"]["texts"] == "held-out corpus rows (30)"
