"""HF checkpoints in and out: parity with transformers (PyTorch), round trips, bad input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.conftest import make_wordpiece_tokenizer
from tf_minilm.hf.checkpoints import encoder_state_dict, load_hf_checkpoint, save_hf_checkpoint
from tf_minilm.hf.errors import CheckpointError
from tf_minilm.model.config import EncoderConfig
from tf_minilm.model.encoder import Encoder

SENTENCES = [
    "MiniLM distils the self-attention of a large teacher into a small student.",
    "Short one.",
    "The bank raised interest rates again, and markets fell sharply in early trading today.",
    "ok",
]


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed (CI installs it)")


def _transformers():
    return pytest.importorskip("transformers", reason="transformers is not installed")


def _batch(tokenizer, texts, pad_id):
    tokenizer.enable_padding(pad_id=pad_id)
    encodings = tokenizer.encode_batch(texts)
    tokenizer.no_padding()
    ids = np.array([e.ids for e in encodings], dtype="int64")
    mask = np.array([e.attention_mask for e in encodings], dtype="int64")
    return ids, mask


def _ours(encoder, ids, mask):
    inputs = {"input_ids": ids.astype("int32"), "attention_mask": mask.astype("int32"),
              "token_type_ids": np.zeros_like(ids, dtype="int32")}
    return encoder(inputs)["last_hidden_state"].numpy()


def _theirs(model, ids, mask):
    torch = _torch()
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     token_type_ids=torch.zeros_like(torch.tensor(ids))).last_hidden_state.numpy()


@pytest.mark.slow
def test_real_teacher_matches_transformers_bert(real_teacher_dir, tmp_path):
    _torch()
    transformers = _transformers()
    encoder, tokenizer = load_hf_checkpoint(real_teacher_dir)
    ids, mask = _batch(tokenizer, SENTENCES, pad_id=0)
    assert (mask == 0).any(), "the batch must contain padding"
    reference = transformers.BertModel.from_pretrained(real_teacher_dir).eval()
    ours = _ours(encoder, ids, mask)
    assert np.abs(ours - _theirs(reference, ids, mask)).max() <= 1e-4

    # Round trip: our saved folder loads in transformers (model and tokenizer) and agrees.
    saved = save_hf_checkpoint(encoder, tokenizer, tmp_path / "teacher")
    reloaded = transformers.AutoModel.from_pretrained(saved).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(saved)
    hf_ids = hf_tokenizer(SENTENCES, padding=True, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(hf_ids, ids)
    assert np.abs(_theirs(reloaded, ids, mask) - ours).max() <= 1e-4


def test_vocab_txt_tokenizer_matches_tokenizer_json(real_teacher_dir, tmp_path):
    folder = tmp_path / "vocab_only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(real_teacher_dir, name), folder / name)
    _, from_vocab = load_hf_checkpoint(folder)
    _, from_json = load_hf_checkpoint(real_teacher_dir)
    for text in SENTENCES:
        assert from_vocab.encode(text).ids == from_json.encode(text).ids


def _tiny_roberta(tmp_path, prefixed=False, safe=True):
    torch = _torch()
    transformers = _transformers()
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
    )
    cls = transformers.RobertaForMaskedLM if prefixed else transformers.RobertaModel
    model = cls(config).eval()
    with torch.no_grad():
        for param in model.parameters():  # make every weight matter for the comparison
            param.add_(0.2 * torch.randn_like(param))
    folder = tmp_path / ("roberta_mlm" if prefixed else "roberta")
    model.save_pretrained(folder, safe_serialization=safe)
    base = model.roberta if prefixed else model
    return folder, base


@pytest.mark.parametrize("prefixed", [False, True], ids=["plain", "roberta-prefix"])
def test_tiny_roberta_matches_transformers(tmp_path, prefixed):
    folder, reference = _tiny_roberta(tmp_path, prefixed=prefixed)
    make_wordpiece_tokenizer().save(str(folder / "tokenizer.json"))
    encoder, _ = load_hf_checkpoint(folder)
    assert encoder.config.model_type == "roberta"
    assert encoder.config.position_offset == 2 and encoder.config.type_vocab_size == 1
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 120, size=(3, 11))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 1
    assert np.abs(_ours(encoder, ids, mask) - _theirs(reference, ids, mask)).max() <= 1e-4


def test_pytorch_bin_checkpoint_loads_when_torch_present(tmp_path):
    torch = _torch()
    folder, reference = _tiny_roberta(tmp_path)
    os.remove(folder / "model.safetensors")
    torch.save(reference.state_dict(), folder / "pytorch_model.bin")
    make_wordpiece_tokenizer().save(str(folder / "tokenizer.json"))
    encoder, _ = load_hf_checkpoint(folder)
    ids = np.arange(3, 13)[None, :]
    mask = np.ones_like(ids)
    assert np.abs(_ours(encoder, ids, mask) - _theirs(reference, ids, mask)).max() <= 1e-4


def test_corrupt_pytorch_bin(tmp_path):
    _torch()
    folder, _ = _tiny_roberta(tmp_path)
    os.remove(folder / "model.safetensors")
    (folder / "pytorch_model.bin").write_bytes(b"not a torch file")
    make_wordpiece_tokenizer().save(str(folder / "tokenizer.json"))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot read weights"):
        load_hf_checkpoint(folder)


# ------------------------------------------------------------------------ bad input
@pytest.fixture
def tiny_folder(tmp_path):
    config = EncoderConfig(vocab_size=120, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    folder = save_hf_checkpoint(Encoder(config), make_wordpiece_tokenizer(), tmp_path / "tiny")
    return folder


def _edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    with open(path) as handle:
        values = json.load(handle)
    values.update(changes)
    with open(path, "w") as handle:
        json.dump(values, handle)


def test_saved_folder_round_trips_exactly(tiny_folder):
    encoder, tokenizer = load_hf_checkpoint(tiny_folder)
    again = save_hf_checkpoint(encoder, tokenizer, tiny_folder + "_again")
    second, _ = load_hf_checkpoint(again)
    for (name, a), b in zip(encoder_state_dict(encoder).items(),
                            encoder_state_dict(second).values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert sorted(os.listdir(again)) == sorted(os.listdir(tiny_folder))


def test_missing_weights_file(tiny_folder):
    os.remove(os.path.join(tiny_folder, "model.safetensors"))
    with pytest.raises(CheckpointError, match="no weights file .*model.safetensors"):
        load_hf_checkpoint(tiny_folder)


def test_corrupt_weights_file(tiny_folder):
    path = os.path.join(tiny_folder, "model.safetensors")
    with open(path, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read weights"):
        load_hf_checkpoint(tiny_folder)


def test_unknown_architecture(tiny_folder):
    _edit_config(tiny_folder, model_type="gpt2", architectures=["GPT2Model"])
    with pytest.raises(CheckpointError, match=r"config\.json: field 'model_type' is 'gpt2'"):
        load_hf_checkpoint(tiny_folder)


def test_shape_mismatch_names_tensor(tiny_folder):
    _edit_config(tiny_folder, intermediate_size=48)
    with pytest.raises(CheckpointError,
                       match=r"tensor 'encoder\.layer\.0\.intermediate\.dense\.weight' has shape"):
        load_hf_checkpoint(tiny_folder)


def test_tokenizer_larger_than_vocab(tiny_folder):
    _edit_config(tiny_folder, vocab_size=20)
    with pytest.raises(CheckpointError, match=r"tokenizer has \d+ tokens but config\.json field "
                                              r"'vocab_size' is 20"):
        load_hf_checkpoint(tiny_folder)


def test_hidden_not_divisible_by_heads(tiny_folder):
    _edit_config(tiny_folder, num_attention_heads=3)
    with pytest.raises(CheckpointError, match=r"config\.json: field 'num_attention_heads' \(3\) "
                                              r"does not divide field 'hidden_size' \(16\)"):
        load_hf_checkpoint(tiny_folder)


def test_missing_config_and_bad_json(tiny_folder):
    path = os.path.join(tiny_folder, "config.json")
    with open(path, "w") as handle:
        handle.write("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_hf_checkpoint(tiny_folder)
    os.remove(path)
    with pytest.raises(CheckpointError, match=r"config\.json: file not found"):
        load_hf_checkpoint(tiny_folder)
    with pytest.raises(CheckpointError, match="not a folder"):
        load_hf_checkpoint(os.path.join(tiny_folder, "nope"))


def test_missing_tokenizer(tiny_folder):
    for name in ("tokenizer.json", "vocab.txt"):
        os.remove(os.path.join(tiny_folder, name))
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_hf_checkpoint(tiny_folder)


def test_failed_save_keeps_previous_folder(tiny_folder, monkeypatch):
    import tf_minilm.hf.checkpoints as checkpoints

    before = sorted(os.listdir(tiny_folder))
    encoder, tokenizer = load_hf_checkpoint(tiny_folder)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "encoder_state_dict", broken)
    with pytest.raises(OSError, match="disk full"):
        save_hf_checkpoint(encoder, tokenizer, tiny_folder)
    assert sorted(os.listdir(tiny_folder)) == before
    parent = os.path.dirname(tiny_folder)
    assert not [name for name in os.listdir(parent) if "staging" in name]
    load_hf_checkpoint(tiny_folder)
