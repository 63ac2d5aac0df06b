"""A tiny but real exported-model folder, for tests, demos and benchmark smoke runs.

`build_tiny_model_dir` writes a folder in exactly the layout `tf-minilm export`
produces (`model.onnx`, optionally `model.int8.onnx`, `tokenizer.json` and friends,
`export_report.json`), with a small random model instead of a distilled encoder:

    x  = word_emb[input_ids] + type_emb[token_type_ids] + pos_emb[0..seq)
    h  = tanh(x @ w + b)
    a  = softmax(h h^T / sqrt(hidden) + (1 - mask) * -10000) h      (masked over keys)
    last_hidden_state  = h + a
    sentence_embedding = l2_normalise(masked_mean(last_hidden_state))  (or the first token)

The weights are returned so that tests can recompute the outputs independently.
Needs the `onnx` package (imported inside the function).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import string
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the", "a", "an", "cat", "dog", "sat", "on", "mat", "quick", "brown", "fox", "jumps",
    "over", "lazy", "hello", "world", "model", "serving", "test", "embedding", "sentence",
    "is", "this", "and", "of", "to", "in", "it", "run", "play", "walk", "fast", "slow",
    "red", "blue", "green", "##s", "##ing", "##ed", "##er", ".", ",", "!", "?",
]
# Single letters and "##" letters make every lowercase ASCII word tokenizable.
_PIECES = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
VOCAB = SPECIAL_TOKENS + WORDS + [p for p in _PIECES if p not in WORDS]


@dataclasses.dataclass
class TinyModel:
    """What `build_tiny_model_dir` wrote.

    Args:
        folder: the model folder.
        weights: float32 arrays `word_emb`, `type_emb`, `pos_emb`, `w`, `b`.
        pooling: "mean" or "cls".
        max_seq_len: value written to `export_report.json`.
        vocab: the WordPiece vocabulary (index = token id).
    """

    folder: Path
    weights: dict[str, np.ndarray]
    pooling: str
    max_seq_len: int
    vocab: list[str]

    @property
    def hidden_size(self) -> int:
        """Embedding width."""
        return int(self.weights["w"].shape[1])


def _tokenizer(max_seq_len: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(VOCAB)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    # Like real sentence-transformers exports: fixed-length padding baked into the file,
    # which the runtime must override with per-batch padding.
    tokenizer.enable_truncation(max_length=max_seq_len)
    tokenizer.enable_padding(length=max_seq_len, pad_id=vocab["[PAD]"], pad_token="[PAD]")
    return tokenizer


def _graph(weights: dict[str, np.ndarray], pooling: str, with_embedding_output: bool):
    from onnx import TensorProto, helper, numpy_helper

    hidden = weights["w"].shape[1]
    nodes = []

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    inits = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    consts = {
        "one_i": np.array(1, np.int64), "zero_i": np.array(0, np.int64),
        "axis1": np.array([1], np.int64), "axis2": np.array([2], np.int64),
        "one_f": np.array(1.0, np.float32), "neg_big": np.array(-10000.0, np.float32),
        "inv_sqrt_h": np.array(1.0 / np.sqrt(hidden), np.float32),
        "eps_count": np.array(1e-9, np.float32), "eps_norm": np.array(1e-12, np.float32),
    }
    inits += [numpy_helper.from_array(value, name) for name, value in consts.items()]

    word = node("Gather", ["word_emb", "input_ids"], "word")
    typ = node("Gather", ["type_emb", "token_type_ids"], "typ")
    shape = node("Shape", ["input_ids"], "shape")
    seq = node("Gather", [shape, "one_i"], "seq", axis=0)
    positions = node("Range", ["zero_i", seq, "one_i"], "positions")
    pos = node("Gather", ["pos_emb", positions], "pos")
    x = node("Add", [node("Add", [word, typ], "word_typ"), pos], "x")
    h = node("Tanh", [node("Add", [node("MatMul", [x, "w"], "xw"), "b"], "xwb")], "h")
    scores = node("Mul", [node("MatMul", [h, node("Transpose", [h], "h_t", perm=[0, 2, 1])],
                                "hh"), "inv_sqrt_h"], "scores")
    mask_f = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    key_mask = node("Unsqueeze", [mask_f, "axis1"], "key_mask")
    bias = node("Mul", [node("Sub", ["one_f", key_mask], "not_mask"), "neg_big"], "bias")
    probs = node("Softmax", [node("Add", [scores, bias], "masked_scores")], "probs", axis=-1)
    mixed = node("MatMul", [probs, h], "mixed")
    node("Add", [h, mixed], "last_hidden_state")
    outputs = [helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])]
    if with_embedding_output:
        if pooling == "mean":
            token_mask = node("Unsqueeze", [mask_f, "axis2"], "token_mask")
            total = node("ReduceSum", [node("Mul", ["last_hidden_state", token_mask], "masked"),
                                       "axis1"], "total", keepdims=0)
            count = node("Max", [node("ReduceSum", [token_mask, "axis1"], "count_raw", keepdims=0),
                                 "eps_count"], "count")
            pooled = node("Div", [total, count], "pooled")
        else:
            pooled = node("Gather", ["last_hidden_state", "zero_i"], "pooled", axis=1)
        squares = node("ReduceSum", [node("Mul", [pooled, pooled], "sq"), "axis1"], "sq_sum",
                       keepdims=1)
        norm = node("Max", [node("Sqrt", [squares], "norm_raw"), "eps_norm"], "norm")
        node("Div", [pooled, norm], "sentence_embedding")
        outputs.append(helper.make_tensor_value_info(
            "sentence_embedding", TensorProto.FLOAT, ["batch", hidden]))
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
              for name in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(nodes, "tiny_encoder", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="tf-minilm tests.serving_model")
    model.ir_version = 8
    return model


def build_tiny_model_dir(folder: str | os.PathLike[str], hidden_size: int = 16,
                         max_seq_len: int = 32, pooling: str = "mean", seed: int = 0,
                         int8: bool = True, with_embedding_output: bool = True,
                         write_report: bool = True) -> TinyModel:
    """Writes a tiny exported-model folder (see the module docstring for the graph).

    Args:
        folder: output folder (created if needed).
        hidden_size: embedding width.
        max_seq_len: truncation length written to `export_report.json`; also the
            number of position embeddings.
        pooling: "mean" or "cls".
        seed: NumPy seed of the random weights.
        int8: also write `model.int8.onnx` (onnxruntime dynamic quantization).
        with_embedding_output: include the `sentence_embedding` output.
        write_report: write `export_report.json`.

    Returns:
        A `TinyModel` with the folder and the weights.
    """
    import onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 0.5) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {
        "word_emb": rand(len(VOCAB), hidden_size),
        "type_emb": rand(2, hidden_size),
        "pos_emb": rand(max_seq_len, hidden_size, scale=0.2),
        "w": rand(hidden_size, hidden_size, scale=1.0 / np.sqrt(hidden_size)),
        "b": rand(hidden_size, scale=0.1),
    }
    model = _graph(weights, pooling, with_embedding_output)
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(folder / "model.onnx"))
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic warns about pre-processing on root
        try:
            quantize_dynamic(folder / "model.onnx", folder / "model.int8.onnx",
                             weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)

    _tokenizer(max_seq_len).save(os.fspath(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]"}), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": True, "model_max_length": max_seq_len,
        "tokenizer_class": "BertTokenizer"}), encoding="utf-8")
    if write_report:
        (folder / "export_report.json").write_text(json.dumps({
            "max_seq_len": max_seq_len, "pooling": pooling, "hidden_size": hidden_size,
            "source": "tests.serving_model.build_tiny_model_dir", "opset": 17}, indent=2),
            encoding="utf-8")
    return TinyModel(folder=folder, weights=weights, pooling=pooling,
                     max_seq_len=max_seq_len, vocab=list(VOCAB))
