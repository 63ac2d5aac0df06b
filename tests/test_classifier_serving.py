"""A fine-tuned classifier end to end: `evaluate --save-model`, `export`, `serve /v1/classify`.

The classifier `tf-minilm evaluate` saves (a `.keras` file and its JSON) exports to a
fused, parity-checked ONNX graph with a `logits` output and `labels.json`; the served
labels and scores equal the Keras model's softmax; the endpoint shares the embeddings
endpoint's limits, metrics and error handling.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.conftest import make_wordpiece_tokenizer
from tests.test_evaluation import toy_task
from tests.test_serving_server import request
from tf_minilm.tokens import pad_batch, tokenize

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

TEXTS = ["good film", "bad", "the model was good good", "a bad bad film of music", "it"]


@pytest.fixture(scope="module")
def saved_classifier(tiny_model_dir, tmp_path_factory):
    """What `tf-minilm evaluate --save-model` writes for the toy task: (.keras path, task)."""
    from tf_minilm.evaluate.downstream import evaluate_model
    from tf_minilm.evaluate.settings import EvalSettings

    task = toy_task()
    settings = EvalSettings(epochs=10, learning_rate=5e-3, batch_size=16, max_seq_len=32)
    result = evaluate_model(tiny_model_dir, task, settings,
                            save_dir=str(tmp_path_factory.mktemp("saved")))
    assert result["accuracy"] == 1.0
    return result["saved_model"], task


@pytest.fixture(scope="module")
def exported(saved_classifier, tmp_path_factory):
    from export.pipeline import export_model

    path, _ = saved_classifier
    out = tmp_path_factory.mktemp("clf") / "onnx"
    report = export_model(path, out)
    return out, report


def keras_probabilities(path, texts, max_seq_len=32):
    import keras

    model = keras.saving.load_model(path)
    logits = np.asarray(model(pad_batch(tokenize(make_wordpiece_tokenizer(), texts,
                                                 max_seq_len), 0), training=False))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_export_writes_a_fused_checked_classifier_with_its_labels(exported, saved_classifier):
    out, report = exported
    assert report["kind"] == "classifier" and report["labels"] == ["neg", "pos"]
    assert report["output_names"] == ["logits"]
    assert report["max_seq_len"] == 32  # the fine-tuning length, from the sidecar
    assert report["fused_operator_groups"] == report["expected_fusions"]
    assert report["parity"]["fp32"]["max_abs_logits"] <= 1e-4
    int8 = report["parity"]["int8"]
    assert int8["passed"] and int8["max_abs_probability"] <= 0.05
    assert report["int8"]["variant"] and report["int8"]["speedup"] > 0
    from serving.runtime import INT8_PAYS_SPEEDUP
    from tf_minilm.versions import cpu_int8_kind

    assert report["int8"]["cpu_int8_kind"] == cpu_int8_kind()
    assert report["int8"]["pays"] == (report["int8"]["speedup"] >= INT8_PAYS_SPEEDUP)
    assert report["serve_default"] == ("model.int8.onnx" if report["int8"]["pays"]
                                       else "model.onnx")
    assert report["fine_tuning"] == {"task": "toy", "accuracy": 1.0, "macro_f1": 1.0}
    assert json.loads((out / "labels.json").read_text()) == {"labels": ["neg", "pos"]}
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"]["pos"] == 1
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "`POST /v1/classify`" in card
    assert "Fine-tuned by `tf-minilm evaluate` on the `toy` task" in card


@pytest.mark.parametrize("model_file", ["model.onnx", "model.int8.onnx"])
def test_classifier_model_matches_keras(exported, saved_classifier, model_file):
    from serving.classify import ClassifierModel, open_model

    out, _ = exported
    path, _ = saved_classifier
    model = open_model(out, model_file=model_file)
    assert isinstance(model, ClassifierModel) and model.labels == ["neg", "pos"]
    got = model.classify(TEXTS, batch_size=2)
    expected = keras_probabilities(path, TEXTS)
    tolerance = 1e-5 if model_file == "model.onnx" else 0.05
    assert np.abs(got.scores - expected).max() <= tolerance
    assert got.predicted == [["neg", "pos"][i] for i in expected.argmax(axis=1)]
    assert got.token_counts == [len(ids) for ids in tokenize(make_wordpiece_tokenizer(),
                                                             TEXTS, 32)]
    assert model.info()["kind"] == "classifier"


def test_the_wrong_model_class_names_the_kind(exported, tmp_path):
    from serving.classify import ClassifierModel
    from serving.runtime import EmbeddingModel, ModelFolderError
    from tests.serving_model import build_tiny_model_dir

    out, _ = exported
    with pytest.raises(ModelFolderError, match="is a classifier export"):
        EmbeddingModel(out)
    with pytest.raises(ModelFolderError, match="is an embedding export"):
        ClassifierModel(build_tiny_model_dir(tmp_path / "emb", int8=False).folder)


def test_a_broken_labels_file_is_named(exported, tmp_path):
    import shutil

    from serving.classify import ClassifierModel
    from serving.runtime import ModelFolderError

    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "labels.json").write_text('{"labels": ["neg", "pos", "pos"]}')
    with pytest.raises(ModelFolderError, match=r"labels.json'.*distinct"):
        ClassifierModel(copy)
    (copy / "labels.json").write_text('{"labels": ["a", "b", "c"]}')
    with pytest.raises(ModelFolderError, match="gives 2 logits but labels.json names 3"):
        ClassifierModel(copy)
    (copy / "labels.json").unlink()
    with pytest.raises(ModelFolderError, match="has no 'labels.json'"):
        ClassifierModel(copy)


def test_bad_classifier_exports_are_refused_before_any_work(saved_classifier, tmp_path):
    from export.errors import ExportError
    from export.pipeline import export_model

    path, _ = saved_classifier
    with pytest.raises(ExportError, match="3 labels for a classifier with 2 outputs"):
        export_model(path, tmp_path / "a", labels=["x", "y", "z"])
    with pytest.raises(ExportError, match="label names must be distinct"):
        export_model(path, tmp_path / "a", labels=["x", "x"])
    with pytest.raises(ExportError, match="pooling applies to encoders"):
        export_model(path, tmp_path / "a", pooling="cls")
    sidecar = path[: -len(".keras")] + ".json"
    original = open(sidecar, encoding="utf-8").read()
    try:
        payload = json.loads(original)
        payload["tokenizer_dir"] = str(tmp_path / "gone")
        with open(sidecar, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
        with pytest.raises(ExportError, match=r"\.json: field 'tokenizer_dir' is .*gone"):
            export_model(path, tmp_path / "a")
        payload["label_names"] = ["only one"]
        payload["tokenizer_dir"] = json.loads(original)["tokenizer_dir"]
        with open(sidecar, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
        with pytest.raises(ExportError, match=r"field 'label_names': 1 labels"):
            export_model(path, tmp_path / "a")
    finally:
        with open(sidecar, "w", encoding="utf-8") as handle:
            handle.write(original)
    assert not os.path.exists(tmp_path / "a")


def test_labels_flag_names_the_classes_and_encoders_refuse_it(saved_classifier, tmp_path,
                                                              tiny_model_dir, capsys):
    import argparse

    from export.cli import add_arguments, run

    path, _ = saved_classifier
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([path, "--output", str(tmp_path / "o"), "--labels", "rotten,fresh",
                              "--quantize", "none"])
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "(classifier)" in printed and "labels: rotten, fresh" in printed
    assert json.loads((tmp_path / "o" / "labels.json").read_text())["labels"] == [
        "rotten", "fresh"]
    args = parser.parse_args([tiny_model_dir, "--output", str(tmp_path / "e"), "--labels", "a,b"])
    assert run(args) == 1
    assert "labels apply to classifiers" in capsys.readouterr().err
    assert run(parser.parse_args([path, "--labels", "a,,b"])) == 2


# ------------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def server(exported):
    from serving.classify import ClassifierModel
    from serving.server import BackgroundServer, ServerConfig, create_app

    out, _ = exported
    app = create_app(ClassifierModel(out, intra_op_threads=1),
                     ServerConfig(max_texts_per_request=4, max_wait_ms=1))
    with BackgroundServer(app) as running:
        yield running


def test_classify_endpoint_answers_labels_and_scores(server, saved_classifier):
    path, _ = saved_classifier
    status, body, _ = request(server.url + "/v1/classify", {"input": TEXTS[:4]})
    assert status == 200
    expected = keras_probabilities(path, TEXTS[:4])
    assert [row["index"] for row in body["data"]] == [0, 1, 2, 3]
    for row, probs in zip(body["data"], expected, strict=True):
        assert row["object"] == "classification"
        assert row["label"] == ["neg", "pos"][int(probs.argmax())]
        assert list(row["scores"]) == sorted(row["scores"], key=lambda k: -row["scores"][k])
        assert abs(row["scores"]["pos"] - probs[1]) <= 1e-5
        assert row["score"] == row["scores"][row["label"]]
    assert body["usage"]["prompt_tokens"] == sum(
        len(ids) for ids in tokenize(make_wordpiece_tokenizer(), TEXTS[:4], 32))
    status, body, _ = request(server.url + "/v1/classify", {"input": "good", "top_k": 1})
    assert status == 200 and len(body["data"][0]["scores"]) == 1


def test_classify_endpoint_shares_the_limits_and_errors(server):
    for body, status, text in [({"input": []}, 400, "must not be an empty list"),
                               ({"input": ["a"] * 5}, 413, "the limit is 4"),
                               ({"input": "ok", "top_k": 3}, 400, "'top_k' must be an integer"),
                               ({"input": [7]}, 400, "must be a string")]:
        got, answer, _ = request(server.url + "/v1/classify", body)
        assert got == status and text in answer["error"]["message"]
    got, _, _ = request(server.url + "/v1/classify", raw=b"{not json")
    assert got == 400
    got, answer, _ = request(server.url + "/v1/embeddings", {"input": "good"})
    assert got == 404 and "use POST /v1/classify" in answer["error"]["message"]
    _, metrics, _ = request(server.url + "/metrics", method="GET")
    assert 'endpoint="/v1/classify"' in metrics and 'status="413"' in metrics
    _, health, _ = request(server.url + "/healthz", method="GET")
    assert health["model_info"]["labels"] == ["neg", "pos"]


def test_a_non_finite_classification_is_never_sent(exported):
    from serving.classify import ClassifierModel
    from serving.server import BackgroundServer, create_app

    out, _ = exported
    model = ClassifierModel(out, intra_op_threads=1)
    real = model.logits
    bad_id = model.tokenizer.token_to_id("bad")

    def poisoned(input_ids, attention_mask, token_type_ids=None):
        values = real(input_ids, attention_mask, token_type_ids)
        values[(np.asarray(input_ids) == bad_id).any(axis=1)] = np.nan
        return values

    model.logits = poisoned
    with BackgroundServer(create_app(model)) as running:
        status, body, _ = request(running.url + "/v1/classify", {"input": ["bad film"]})
        assert status == 500 and body["error"]["type"] == "model_error"
        status, _, _ = request(running.url + "/v1/classify", {"input": ["good film"]})
        assert status == 200


def test_load_test_uses_the_classify_endpoint(exported):
    from serving.loadtest import run_load_test, start_local_server

    out, _ = exported
    with start_local_server(out, threads=1) as url:
        levels = run_load_test(url, concurrency_levels=(1, 4), requests_per_level=40,
                               time_budget_s=10, bad_fraction=0.2)
    for level in levels:
        assert level["path"] == "/v1/classify"
        assert level["errors"] == {} and level["ok"] == level["requests"] - level["malformed"]
        assert level["malformed_answers"] == {"4xx": level["malformed"]}
        assert level["healthy_after"]
