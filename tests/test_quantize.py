"""SmoothQuant-style smoothing (export/smoothing.py), outlier-channel splitting (export/outliers.py) and the int8 variant choice of a tiny
fused encoder: sites found, exact in float32, outlier range moved, int8 still close."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_wordpiece_tokenizer
from tf_minilm.model.config import EncoderConfig
from tf_minilm.model.encoder import Encoder

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from export.errors import ExportError, ParityError  # noqa: E402
from export.outliers import split_outlier_channels, split_sites  # noqa: E402
from export.pipeline import export_model  # noqa: E402
from export.quantize import (  # noqa: E402
    VARIANTS,
    Int8Variant,
    choose_int8,
    quantize_int8,
    write_variant,
)
from export.smoothing import (  # noqa: E402
    KINDS,
    activation_channel_max,
    find_sites,
    smooth_model,
    smooth_onnx,
    smoothing_scales,
)
from export.validate import VALIDATION_SENTENCES, tokenize  # noqa: E402
from serving.runtime import timing_feeds  # noqa: E402

LAYERS = 2
OUTLIER_CHANNEL = 5


@pytest.fixture(scope="module")
def tokenizer():
    return make_wordpiece_tokenizer()


@pytest.fixture(scope="module")
def fused(tmp_path_factory, tokenizer):
    """A tiny fused fp32 export whose LayerNorms have one outlier channel (like BERT's)."""
    config = EncoderConfig(vocab_size=tokenizer.get_vocab_size() + 7, hidden_size=64,
                           num_hidden_layers=LAYERS, num_attention_heads=4,
                           intermediate_size=256, max_position_embeddings=64)
    encoder = Encoder(config)
    rng = np.random.default_rng(0)
    for weight in encoder.weights:
        base = 1.0 if weight.path.endswith("gamma") else 0.0
        value = base + 0.05 * rng.standard_normal(weight.shape).astype("float32")
        if weight.path.endswith("gamma"):
            value[OUTLIER_CHANNEL] = 8.0
        weight.assign(value)
    out = tmp_path_factory.mktemp("fused") / "onnx"
    # Hidden states ~8x larger than usual in one channel: Keras parity to 1e-3 here.
    export_model(encoder, out, quantize="none", tokenizer=tokenizer, fp32_tolerance=1e-3)
    return str(out / "model.onnx")


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenize(tokenizer, VALIDATION_SENTENCES, 64, 0)


def run(path_or_model, feeds):
    data = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds),
                    strict=True))


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_every_layer_has_one_site_of_each_kind(fused):
    sites = find_sites(onnx.load(fused))
    for kind in KINDS:
        assert sum(site["kind"] == kind for site in sites) == LAYERS, kind
    assert len({site["node"] for site in sites}) == 4 * LAYERS
    assert [s["kind"] for s in find_sites(onnx.load(fused), ["gelu_matmul"])] == ["gelu_matmul"] * 2
    with pytest.raises(ExportError, match="unknown smoothing site kinds"):
        find_sites(onnx.load(fused), ["conv"])


def test_scales_match_formula_elementwise():
    act = np.array([4.0, 0.0, 9.0, 1.0], np.float32)
    wgt = np.array([0.25, 1.0, 0.0, 16.0], np.float32)
    got = smoothing_scales(act, wgt, 0.5)
    expected = []
    for a, w in zip(act.tolist(), wgt.tolist(), strict=True):
        expected.append(a ** 0.5 / w ** 0.5 if a > 0 and w > 0 else 1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_channel_max_ignores_padding_and_leaves_the_model_as_it_was(fused, tokenizer):
    model = onnx.load(fused)
    before = model.SerializeToString()
    tensors = sorted({site["input"] for site in find_sites(model)})
    texts = ("ok", VALIDATION_SENTENCES[12])
    padded = activation_channel_max(model, [tokenize(tokenizer, texts, 64, 0)], tensors)
    assert model.SerializeToString() == before  # the probe outputs were added, then removed
    alone = [activation_channel_max(model, [tokenize(tokenizer, (t,), 64, 0)], tensors)
             for t in texts]
    for name in tensors:
        np.testing.assert_allclose(padded[name], np.maximum(alone[0][name], alone[1][name]),
                                   rtol=1e-5, atol=1e-6)
    assert padded[tensors[0]].argmax() == OUTLIER_CHANNEL


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smoothing_is_exact_in_float32_and_flattens_the_outlier(fused, batch, tokenizer, alpha):
    model = onnx.load(fused)
    feeds = [tokenize(tokenizer, VALIDATION_SENTENCES[i:i + 4], 64, 0) for i in range(0, 16, 4)]
    tensors = sorted({site["input"] for site in find_sites(model)})
    act_max = activation_channel_max(model, feeds, tensors)
    sites = smooth_model(model, act_max, alpha)
    assert len(sites) == 4 * LAYERS
    muls = [n for n in model.graph.node if n.name.endswith("__smooth")]
    assert len(muls) == 3 * LAYERS  # attention_matmul sites are folded into V
    for site in sites:
        if site["kind"].startswith("ln_"):
            before, after = site["act_range"]
            assert before > 5 and after < before / 2, site
    reference, smoothed = run(fused, batch), run(model, batch)
    real = batch["attention_mask"].astype(bool)
    assert np.abs(reference["last_hidden_state"][real] - smoothed["last_hidden_state"][real]
                  ).max() <= 1e-4
    assert np.abs(reference["sentence_embedding"] - smoothed["sentence_embedding"]).max() <= 1e-5


def test_smoothed_int8_stays_close(fused, batch, tokenizer, tmp_path):
    feeds = [tokenize(tokenizer, VALIDATION_SENTENCES, 64, 0)]
    smooth_onnx(fused, tmp_path / "smooth.onnx", feeds, alpha=0.7)
    quantize_int8(tmp_path / "smooth.onnx", tmp_path / "smooth.int8.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "smooth.int8.onnx")).graph.node}
    assert {"QAttention", "MatMulInteger"} <= ops
    ref = run(fused, batch)["sentence_embedding"]
    got = run(str(tmp_path / "smooth.int8.onnx"), batch)["sentence_embedding"]
    assert cosines(ref, got).min() >= 0.99


def test_quantizing_in_a_child_process_writes_the_same_graph(fused, tmp_path):
    """Large graphs are quantized in a spawned process (the quantizer's leftover heap
    goes with it): same file as in this process, and its failure still names the file."""
    quantize_int8(fused, tmp_path / "here.onnx", separate_process=False)
    quantize_int8(fused, tmp_path / "child.onnx", separate_process=True)
    assert (tmp_path / "here.onnx").read_bytes() == (tmp_path / "child.onnx").read_bytes()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx graph")
    with pytest.raises(ExportError, match="broken.onnx"):
        quantize_int8(broken, tmp_path / "out.onnx", separate_process=True)


def test_bad_alpha_and_missing_maxima_are_named(fused):
    model = onnx.load(fused)
    with pytest.raises(ExportError, match="alpha must be in"):
        smooth_model(model, {}, alpha=1.5)
    with pytest.raises(ExportError, match="no activation maxima"):
        smooth_model(model, {}, alpha=0.5)


# ------------------------------------------------------------------- outlier channels
def with_ffn_outlier(fused, tmp_path, factor=30.0):
    """The fused model with one FFN channel per layer made `factor` x larger before the
    GELU (weight column and bias) and its FFN-output weight row `factor` x smaller: a
    GELU output with an outlier channel, as the FFN output projection of BERT sees."""
    from onnx import numpy_helper

    model = onnx.load(fused)
    inits = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}

    def scale(name, index, value):
        array = numpy_helper.to_array(inits[name]).copy()
        array[index] *= value
        inits[name].CopyFrom(numpy_helper.from_array(array, name))

    for node in split_sites(model, ["gelu"]):
        gelu = producers[node.input[0]]
        ffn_in = producers[gelu.input[0]]
        scale(ffn_in.input[1], (slice(None), OUTLIER_CHANNEL), factor)
        scale(gelu.input[1], OUTLIER_CHANNEL, factor)
        scale(node.input[1], OUTLIER_CHANNEL, 1.0 / factor)
    path = str(tmp_path / "outlier.onnx")
    onnx.save(model, path)
    return path


def test_outlier_split_is_exact_and_takes_the_largest_channels(fused, batch, tokenizer):
    model = onnx.load(fused)
    feeds = [tokenize(tokenizer, VALIDATION_SENTENCES[i:i + 4], 64, 0) for i in range(0, 16, 4)]
    sites = [(node.name, node.input[0]) for node in split_sites(model, ["gelu", "attention"])]
    assert len(sites) == 2 * LAYERS
    maxima = activation_channel_max(model, feeds, [source for _, source in sites])
    kept = split_outlier_channels(model, feeds, ["gelu", "attention"], channels=3)
    assert len(kept) == 2 * LAYERS and all(name.endswith("__outliers_fp32") for name in kept)
    onnx.checker.check_model(model)
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    for name, source in sites:
        chosen = inits[f"{name}__outlier_index"]
        np.testing.assert_array_equal(np.sort(chosen), np.sort(np.argsort(-maxima[source])[:3]))
        assert (inits[f"{name}__inlier_mask"][chosen] == 0).all()
    reference, split = run(fused, batch), run(model, batch)
    real = batch["attention_mask"].astype(bool)
    # Exact up to float32 re-association (the same bound as smoothing's, hidden states ~8).
    assert np.abs(reference["last_hidden_state"][real] - split["last_hidden_state"][real]
                  ).max() <= 1e-4
    assert np.abs(reference["sentence_embedding"] - split["sentence_embedding"]).max() <= 1e-5
    with pytest.raises(ExportError, match="unknown outlier split kind"):
        split_sites(model, ["conv"])


def test_ladder_picks_the_first_variant_that_holds(fused, tmp_path):
    calls = []

    def check(path):
        calls.append(path)
        return {"min_cosine": 0.9 + 0.01 * len(calls), "passed": len(calls) == 3}

    out = tmp_path / "int8.onnx"
    choice = choose_int8(fused, out, check, [], failure=lambda f: "no", timing=None,
                         variants=[Int8Variant("a"), Int8Variant("b", keep_embeddings=True),
                                   Int8Variant("c", keep_embeddings=True),
                                   Int8Variant("d")])
    assert choice["variant"] == "c" and [r["variant"] for r in choice["tried"]] == ["a", "b", "c"]
    assert choice["kept_fp32_nodes"] >= 1 and out.exists()
    names = {n.name for n in onnx.load(str(out)).graph.node}
    assert "EmbedLayerNormalization_0" in names or any("Embed" in n for n in names)

    with pytest.raises(ParityError, match="Remedies tried") as caught:
        choose_int8(fused, out, lambda path: {"min_cosine": 0.5, "passed": False}, [],
                    failure=lambda f: "int8 too far", variants=VARIANTS[:2])
    assert [r["variant"] for r in caught.value.figures["int8_tried"]] == [
        v.name for v in VARIANTS[:2]]
    assert not out.exists()  # no int8 file is left behind when none holds


def test_remedies_recover_an_outlier_that_plain_int8_loses(fused, tokenizer, tmp_path):
    from export.validate import calibration_feeds, check_int8, onnx_outputs

    path = with_ffn_outlier(fused, tmp_path)
    feeds = tokenize(tokenizer, VALIDATION_SENTENCES, 64, 0)
    reference = onnx_outputs(path, feeds)
    calibration = calibration_feeds(tokenizer, 64, 0)
    figures = {}
    for variant in VARIANTS:
        write_variant(path, tmp_path / "v.onnx", variant, calibration)
        figures[variant.name] = check_int8(reference, tmp_path / "v.onnx", feeds, 0.0)["min_cosine"]
    # The FFN outlier is what costs int8 here: splitting it off recovers most of it.
    plain, smoothed = figures["dynamic"], figures["smoothed 0.5"]
    split = figures["smoothed 0.5, fp32 FFN outliers"]
    assert 1 - split < (1 - smoothed) / 2 and 1 - split < (1 - plain) / 2, figures
    floor = (max(figures["smoothed 0.5"], figures["smoothed 0.7"]) + split) / 2
    choice = choose_int8(path, tmp_path / "c.onnx",
                         lambda p: check_int8(reference, p, feeds, floor),
                         calibration, failure=lambda f: "no",
                         timing=timing_feeds(tokenizer.get_vocab_size(), 16))
    assert choice["variant"] == "smoothed 0.5, fp32 FFN outliers" and choice["figures"]["passed"]
    assert choice["outlier_channels"] == 16 and choice["smooth_alpha"] == 0.5
    assert choice["speedup"] > 0 and choice["timing_shape"] == [1, 16]
