"""The tokenizer of a Hugging Face folder, in and out.

Owns: loading `tokenizer.json` (or building a WordPiece tokenizer from `vocab.txt` and
`tokenizer_config.json`) and the tokenizer files a saved folder carries. Imports:
`tokenizers`, `hf.errors`, `model.config`.
"""

from __future__ import annotations

import json
import logging
import os

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from tf_minilm.hf.errors import CheckpointError
from tf_minilm.model.config import EncoderConfig

logger = logging.getLogger(__name__)


def _wordpiece_tokenizer(vocab_path: str, lowercase: bool) -> tokenizers.Tokenizer:
    vocab: dict[str, int] = {}
    with open(vocab_path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            token = line.rstrip("\n")
            if token:
                vocab[token] = index
    for special in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"):
        if special not in vocab:
            raise CheckpointError(f"{vocab_path}: special token {special} is not in the vocabulary")
    tokenizer = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tokenizer


def load_tokenizer(folder: str) -> tokenizers.Tokenizer:
    """`tokenizer.json` if present, else a BERT WordPiece tokenizer from `vocab.txt`.

    Padding and truncation stored in `tokenizer.json` are switched off: every caller sets
    its own (packing, serving and evaluation want different ones).
    """
    json_path = os.path.join(folder, "tokenizer.json")
    if os.path.exists(json_path):
        try:
            tokenizer = tokenizers.Tokenizer.from_file(json_path)
        except Exception as err:  # tokenizers raises a bare Exception on bad JSON
            raise CheckpointError(f"{json_path}: cannot read tokenizer ({err})") from err
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer
    vocab_path = os.path.join(folder, "vocab.txt")
    if os.path.exists(vocab_path):
        lowercase = True
        config_path = os.path.join(folder, "tokenizer_config.json")
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as handle:
                lowercase = bool(json.load(handle).get("do_lower_case", True))
        return _wordpiece_tokenizer(vocab_path, lowercase)
    raise CheckpointError(f"{folder}: no tokenizer (expected tokenizer.json or vocab.txt)")


# --------------------------------------------------------------------------- writing
_S_FRAMED_FAMILIES = {"WordPiece": "mpnet", "BPE": "roberta", "Unigram": "xlm-roberta"}
"""Tokenizer model -> family, for tokenizers that frame with <s> ... </s>."""


def tokenizer_family(tokenizer: tokenizers.Tokenizer, config: EncoderConfig) -> str:
    """Which HF tokenizer family a folder's tokenizer belongs to (its side files follow it).

    The encoder's model type decides, except for a BERT encoder over a tokenizer that
    frames with <s> ... </s> (a BERT-layout student of an MPNet or RoBERTa teacher):
    that tokenizer keeps its own family, told by its model (WordPiece: MPNet, BPE:
    RoBERTa, Unigram: XLM-R).

    Args:
        tokenizer: the folder's tokenizer.
        config: the encoder saved with it.

    Returns:
        "bert", "roberta", "xlm-roberta" or "mpnet".
    """
    if config.model_type != "bert":
        return config.model_type
    if tokenizer.encode("", add_special_tokens=True).tokens[:1] != ["<s>"]:
        return "bert"
    model_type = json.loads(tokenizer.to_str()).get("model", {}).get("type")
    return _S_FRAMED_FAMILIES.get(model_type, "roberta")


def tokenizer_files(tokenizer: tokenizers.Tokenizer, config: EncoderConfig) -> dict[str, str]:
    """Text of the tokenizer side files that let `AutoTokenizer` load the folder."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    family = tokenizer_family(tokenizer, config)
    if family != "bert":
        special = {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>",
                   "sep_token": "</s>", "pad_token": "<pad>",
                   "unk_token": "[UNK]" if family == "mpnet" else "<unk>",
                   "mask_token": "<mask>"}
        tokenizer_class = {"xlm-roberta": "XLMRobertaTokenizerFast",
                           "mpnet": "MPNetTokenizerFast"}.get(family, "RobertaTokenizerFast")
    else:
        special = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                   "unk_token": "[UNK]", "mask_token": "[MASK]"}
        tokenizer_class = "BertTokenizerFast"
    special = {key: token for key, token in special.items() if token in vocab}
    normalizer = json.loads(tokenizer.to_str()).get("normalizer") or {}
    tokenizer_config = {
        "tokenizer_class": tokenizer_class,
        "model_max_length": config.max_sequence_length,
        "do_lower_case": bool(normalizer.get("lowercase", False)),
        **special,
    }
    files = {
        "tokenizer.json": tokenizer.to_str(pretty=True),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }
    model = json.loads(tokenizer.to_str()).get("model", {})
    if model.get("type") == "WordPiece":
        ordered = sorted(vocab.items(), key=lambda item: item[1])
        files["vocab.txt"] = "".join(token + "\n" for token, _ in ordered)
    return files
