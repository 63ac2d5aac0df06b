"""Tests of serving.runtime.EmbeddingModel against a NumPy oracle of the tiny model."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from tokenizers import Tokenizer

from serving.runtime import EmbeddingModel, ModelFolderError, load_export_report
from tests.serving_model import build_tiny_model_dir

TEXTS = [
    "Hello world",
    "the quick brown fox jumps over the lazy dog .",
    "",
    "cat",
    "Zebras playing, walking and running fast over the mat!",
    "a dog sat on the red mat and it is slow",
    "x y z",
    "Ünïcödé §§ 🙂 text",
]
LONG_TEXT = " ".join(["embedding"] * 100)


def oracle_token_states(weights: dict[str, np.ndarray], ids: list[int],
                        type_ids: list[int]) -> np.ndarray:
    """last_hidden_state of one unpadded sequence, with explicit loops."""
    n = len(ids)
    hidden = weights["w"].shape[1]
    h = np.zeros((n, hidden), np.float64)
    for t in range(n):
        x = (weights["word_emb"][ids[t]].astype(np.float64) + weights["type_emb"][type_ids[t]]
             + weights["pos_emb"][t])
        for j in range(hidden):
            h[t, j] = math.tanh(sum(x[i] * weights["w"][i, j] for i in range(hidden))
                                + weights["b"][j])
    out = np.zeros_like(h)
    for q in range(n):
        scores = [sum(h[q, i] * h[k, i] for i in range(hidden)) / math.sqrt(hidden)
                  for k in range(n)]
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        total = sum(exps)
        for k in range(n):
            out[q] += exps[k] / total * h[k]
    return h + out


def oracle_embedding(weights: dict[str, np.ndarray], ids: list[int], type_ids: list[int],
                     pooling: str) -> np.ndarray:
    states = oracle_token_states(weights, ids, type_ids)
    pooled = states.mean(axis=0) if pooling == "mean" else states[0]
    return pooled / math.sqrt(sum(v * v for v in pooled))


def plain_tokenizer(folder, max_len: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_len)
    return tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-model", hidden_size=16,
                                max_seq_len=32)


@pytest.fixture(scope="module")
def model(tiny):
    return EmbeddingModel(tiny.folder, intra_op_threads=1)


def test_tokenize_pads_per_batch_to_longest_and_truncates(tiny, model):
    vocab = {token: i for i, token in enumerate(tiny.vocab)}
    batch = model.tokenize(["Hello world", "the cat"])
    expected_ids = [[vocab["[CLS]"], vocab["hello"], vocab["world"], vocab["[SEP]"]],
                    [vocab["[CLS]"], vocab["the"], vocab["cat"], vocab["[SEP]"]]]
    assert batch["input_ids"].dtype == np.int64
    assert batch["input_ids"].tolist() == expected_ids  # not the fixed 32 from tokenizer.json
    assert batch["attention_mask"].tolist() == [[1] * 4, [1] * 4]

    batch = model.tokenize(["cat", LONG_TEXT])
    assert batch["input_ids"].shape == (2, 32)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 29
    assert batch["input_ids"][0, 3:].tolist() == [vocab["[PAD]"]] * 29
    assert batch["input_ids"][1, -1] == vocab["[SEP]"]
    assert batch["attention_mask"][1].sum() == 32
    assert set(batch["token_type_ids"].ravel().tolist()) == {0}


def test_encode_matches_numpy_oracle(tiny, model):
    texts = TEXTS + [LONG_TEXT]
    tokenizer = plain_tokenizer(tiny.folder, tiny.max_seq_len)
    got = model.encode(texts, batch_size=4)
    assert got.dtype == np.float32 and got.shape == (len(texts), tiny.hidden_size)
    for row, text in enumerate(texts):
        encoding = tokenizer.encode(text)
        want = oracle_embedding(tiny.weights, encoding.ids, encoding.type_ids, "mean")
        np.testing.assert_allclose(got[row], want, atol=2e-5, err_msg=text)


def test_run_returns_both_outputs_matching_the_oracle(tiny, model):
    batch = model.tokenize(["Hello world", "the quick brown fox"])
    out = model.run(**batch)
    assert out["last_hidden_state"].shape == (2, batch["input_ids"].shape[1], tiny.hidden_size)
    assert out["sentence_embedding"].shape == (2, tiny.hidden_size)
    for row in range(2):
        n = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row, :n].tolist()
        want = oracle_token_states(tiny.weights, ids, [0] * n)
        np.testing.assert_allclose(out["last_hidden_state"][row, :n], want, atol=2e-5)
    # token_type_ids default to zeros
    without = model.run(batch["input_ids"], batch["attention_mask"])
    np.testing.assert_array_equal(without["sentence_embedding"], out["sentence_embedding"])
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.run(batch["input_ids"], batch["attention_mask"][:, :2])


def test_order_padding_and_batch_size_do_not_change_embeddings(model):
    reference = model.encode(TEXTS, batch_size=64)
    for batch_size in (1, 2, 3, 5):
        np.testing.assert_allclose(model.encode(TEXTS, batch_size=batch_size), reference,
                                   atol=1e-6)
    alone = np.stack([model.encode([text])[0] for text in TEXTS])  # no padding at all
    np.testing.assert_allclose(alone, reference, atol=1e-6)
    permutation = np.random.default_rng(1).permutation(len(TEXTS))
    shuffled = model.encode([TEXTS[i] for i in permutation], batch_size=3)
    np.testing.assert_allclose(shuffled, reference[permutation], atol=1e-6)
    # distinct texts give distinct vectors (order really is restored, not just sorted)
    assert not np.allclose(reference[0], reference[1])


def test_embed_counts_tokens_after_truncation(model):
    result = model.embed(["Hello world", "", LONG_TEXT], batch_size=2)
    assert result.token_counts == [4, 2, 32]
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_empty_list_and_bad_texts(model):
    assert model.encode([]).shape == (0, model.dimension)
    with pytest.raises(TypeError, match="single str"):
        model.encode("Hello world")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        model.encode(["ok", 3])
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(["ok"], batch_size=0)


def test_properties_and_info(tiny, model):
    assert model.dimension == tiny.hidden_size
    assert model.max_seq_len == 32
    assert model.precision == "fp32"
    info = model.info()
    assert info["name"] == "tiny-model" and info["model_file"] == "model.onnx"
    assert info["pooling"] == "mean" and info["dimension"] == 16
    assert model.session.get_session_options().intra_op_num_threads == 1


def test_max_seq_len_override_truncates(tiny):
    short = EmbeddingModel(tiny.folder, max_seq_len=8)
    assert short.tokenize([LONG_TEXT])["input_ids"].shape == (1, 8)
    tokenizer = plain_tokenizer(tiny.folder, 8)
    encoding = tokenizer.encode(LONG_TEXT)
    want = oracle_embedding(tiny.weights, encoding.ids, encoding.type_ids, "mean")
    np.testing.assert_allclose(short.encode([LONG_TEXT])[0], want, atol=2e-5)


def test_int8_file_and_direct_onnx_path(tiny, model):
    int8 = EmbeddingModel(tiny.folder, model_file="model.int8.onnx")
    assert int8.precision == "int8"
    fp32 = model.encode(TEXTS)
    quantized = int8.encode(TEXTS)
    cosine = (fp32 * quantized).sum(axis=1)
    assert cosine.min() > 0.95
    assert not np.array_equal(fp32, quantized)  # really the other file
    direct = EmbeddingModel(tiny.folder / "model.onnx")
    np.testing.assert_array_equal(direct.encode(TEXTS), fp32)


@pytest.mark.parametrize("pooling,with_output", [("cls", True), ("mean", False), ("cls", False)])
def test_cls_pooling_and_graph_without_sentence_embedding(tmp_path, pooling, with_output):
    tiny = build_tiny_model_dir(tmp_path / "m", hidden_size=8, max_seq_len=16, pooling=pooling,
                                seed=3, int8=False, with_embedding_output=with_output)
    model = EmbeddingModel(tiny.folder)
    assert model.dimension == 8
    tokenizer = plain_tokenizer(tiny.folder, 16)
    got = model.encode(TEXTS, batch_size=3)
    for row, text in enumerate(TEXTS):
        encoding = tokenizer.encode(text)
        want = oracle_embedding(tiny.weights, encoding.ids, encoding.type_ids, pooling)
        np.testing.assert_allclose(got[row], want, atol=2e-5, err_msg=text)
    assert set(model.run(**model.tokenize(TEXTS[:2]))) == {"last_hidden_state",
                                                           "sentence_embedding"}


def test_missing_files_give_clear_errors(tiny, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        EmbeddingModel(tmp_path / "nowhere")
    with pytest.raises(ModelFolderError, match=r"has no 'model\.q4\.onnx'.*model\.int8\.onnx, "
                                               r"model\.onnx.*--model-file"):
        EmbeddingModel(tiny.folder, model_file="model.q4.onnx")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFolderError, match="no .onnx file is present"):
        EmbeddingModel(empty)
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    shutil.copy(tiny.folder / "model.onnx", no_tok / "model.onnx")
    with pytest.raises(ModelFolderError, match=r"no-tokenizer.*has no 'tokenizer\.json'"):
        EmbeddingModel(no_tok)
    (no_tok / "model.txt").write_text("x")
    with pytest.raises(ModelFolderError, match="not an .onnx model"):
        EmbeddingModel(no_tok / "model.txt")


def test_export_report_defaults_and_validation(tiny, tmp_path):
    folder = tmp_path / "no-report"
    shutil.copytree(tiny.folder, folder)
    (folder / "export_report.json").unlink()
    report = load_export_report(folder)
    assert (report.max_seq_len, report.pooling, report.hidden_size) == (128, "mean", None)
    model = EmbeddingModel(folder)
    assert model.max_seq_len == 128 and model.dimension == 16

    (folder / "export_report.json").write_text(json.dumps({"max_seq_len": "long"}))
    with pytest.raises(ModelFolderError, match=r"export_report\.json.*'max_seq_len'.*'long'"):
        EmbeddingModel(folder)
    (folder / "export_report.json").write_text(json.dumps({"pooling": "max"}))
    with pytest.raises(ModelFolderError, match="'pooling'.*'max'"):
        EmbeddingModel(folder)
    (folder / "export_report.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="cannot read"):
        EmbeddingModel(folder)


def test_model_file_auto_serves_int8_only_where_it_pays(tmp_path, monkeypatch):
    import serving.runtime as runtime
    from tf_minilm.versions import cpu_int8_kind

    fp32_only = build_tiny_model_dir(tmp_path / "fp32", int8=False).folder
    assert runtime.choose_served_file(fp32_only)[0] == "model.onnx"
    folder = build_tiny_model_dir(tmp_path / "both", int8=True).folder
    report_path = folder / "export_report.json"
    report = json.loads(report_path.read_text())

    def with_int8(**values):
        report_path.write_text(json.dumps({**report, "int8": values}))
        return runtime.choose_served_file(folder)

    here = cpu_int8_kind()
    file, why = with_int8(speedup=2.0, cpu_int8_kind=here)
    assert file == "model.int8.onnx" and "2.00x" in why and "export's timing" in why
    file, why = with_int8(speedup=1.01, cpu_int8_kind=here)
    assert file == "model.onnx" and "only 1.01x" in why and "fp32 is served" in why

    # Exported on another kind of CPU: the ratio is timed again here, not trusted.
    timed = []

    def fake_ratio(fp32, int8, feeds, **kwargs):
        timed.append((fp32.name, int8.name, feeds["input_ids"].shape))
        vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
        assert feeds["input_ids"].max() < report.get("vocab_size", vocab)  # ids the model has
        return {"speedup": 1.5}

    monkeypatch.setattr(runtime, "speed_ratio", fake_ratio)
    file, why = with_int8(speedup=0.5, cpu_int8_kind="not-" + here)
    assert file == "model.int8.onnx" and "timed now" in why
    assert timed == [("model.onnx", "model.int8.onnx", (1, report["max_seq_len"]))]
    assert runtime.choose_served_file(folder / "model.onnx")[0] == "model.onnx"  # a file given
