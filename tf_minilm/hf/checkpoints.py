"""Hugging Face checkpoint folders in and out (BERT, RoBERTa, XLM-R, MPNet): config and weights.

Owns: the 1:1 map between `Encoder` weights and HF tensor names, reading
`model.safetensors` / `pytorch_model.bin`, and writing a folder `transformers` loads
(through `fileio.staged_folder`, with the sentence-transformers files of `hf.st_folder`).
Imports: `model`, `hf.tokenizer`, `hf.errors`, `hf.st_folder`, `constants`, `fileio`.

`load_hf_checkpoint` reads `config.json`, `model.safetensors` (or `pytorch_model.bin`
when torch is installed) and `tokenizer.json` (or `vocab.txt`); `save_hf_checkpoint`
writes a folder that `transformers.AutoModel.from_pretrained` loads. HF Linear weights
are [out, in]; Keras Dense kernels are [in, out], so they are transposed both ways.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tokenizers

from tf_minilm.constants import HF_WEIGHT_FILES, SAFETENSORS_FILE
from tf_minilm.fileio import NotOurFolderError, check_replaceable, staged_folder
from tf_minilm.hf.errors import CheckpointError
from tf_minilm.hf.st_folder import sentence_transformers_files, write_files
from tf_minilm.hf.tokenizer import load_tokenizer, tokenizer_files
from tf_minilm.model.config import ConfigError, EncoderConfig
from tf_minilm.model.encoder import Encoder
from tf_minilm.model.pooling import PoolingSpec

logger = logging.getLogger(__name__)

KNOWN_PREFIXES = ("bert.", "roberta.", "mpnet.", "model.")


# --------------------------------------------------------------------------- naming
def weight_map(encoder: Encoder) -> Iterator[tuple[str, Any, bool]]:
    """Yield (HF tensor name, Keras variable, is_linear_kernel) for every encoder weight."""
    mpnet = encoder.config.model_type == "mpnet"
    emb = encoder.embeddings
    yield "embeddings.word_embeddings.weight", emb.word_embeddings, False
    yield "embeddings.position_embeddings.weight", emb.position_embeddings, False
    if emb.token_type_embeddings is not None:
        yield "embeddings.token_type_embeddings.weight", emb.token_type_embeddings, False
    yield "embeddings.LayerNorm.weight", emb.layer_norm.gamma, False
    yield "embeddings.LayerNorm.bias", emb.layer_norm.beta, False
    # MPNet names its attention attention.attn.{q,k,v,o} and its norm attention.LayerNorm.
    attention_names = (("attention.attn.q", "attention.attn.k", "attention.attn.v",
                        "attention.attn.o", "attention.LayerNorm") if mpnet else
                       ("attention.self.query", "attention.self.key", "attention.self.value",
                        "attention.output.dense", "attention.output.LayerNorm"))
    for index, block in enumerate(encoder.blocks):
        prefix = f"encoder.layer.{index}."
        query, key, value, output, attention_norm = attention_names
        dense_layers = {
            query: block.attention.query,
            key: block.attention.key,
            value: block.attention.value,
            output: block.attention_output,
            "intermediate.dense": block.intermediate,
            "output.dense": block.output_dense,
        }
        for name, dense in dense_layers.items():
            yield prefix + name + ".weight", dense.kernel, True
            yield prefix + name + ".bias", dense.bias, False
        for name, norm in (
            (attention_norm, block.attention_layer_norm),
            ("output.LayerNorm", block.output_layer_norm),
        ):
            yield prefix + name + ".weight", norm.gamma, False
            yield prefix + name + ".bias", norm.beta, False
    if encoder.relative_position_bias is not None:
        yield ("encoder.relative_attention_bias.weight",
               encoder.relative_position_bias.embeddings, False)
    yield "pooler.dense.weight", encoder.pooler.kernel, True
    yield "pooler.dense.bias", encoder.pooler.bias, False


def _canonical_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip a `bert.`/`roberta.` prefix and map old `gamma`/`beta` LayerNorm names."""
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        for prefix in KNOWN_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if ".LayerNorm." in name:
            name = name.replace(".LayerNorm.gamma", ".LayerNorm.weight")
            name = name.replace(".LayerNorm.beta", ".LayerNorm.bias")
        out[name] = value
    return out


def encoder_state_dict(encoder: Encoder) -> dict[str, np.ndarray]:
    """The encoder's weights under HF names, as float32 arrays in HF layout."""
    state = {}
    for name, variable, kernel in weight_map(encoder):
        value = np.asarray(variable.numpy(), dtype=np.float32)
        state[name] = np.ascontiguousarray(value.T if kernel else value)
    return state


def assign_state_dict(encoder: Encoder, state: dict[str, np.ndarray], source: str) -> None:
    """Assign HF-named arrays to the encoder; errors name `source` and the tensor.

    The pooler is optional (sentence-embedding checkpoints often drop it); every other
    tensor must be present with the expected shape and hold finite values only.
    """
    state = _canonical_names(state)
    missing = []
    for name, variable, kernel in weight_map(encoder):
        if name not in state:
            if not name.startswith("pooler."):
                missing.append(name)
            continue
        value = np.asarray(state[name], dtype=np.float32)
        if kernel:
            value = value.T
        if tuple(value.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"{source}: tensor '{name}' has shape {tuple(np.asarray(state[name]).shape)}, "
                f"expected {tuple(variable.shape[::-1]) if kernel else tuple(variable.shape)} "
                "from config.json"
            )
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise CheckpointError(f"{source}: tensor '{name}' holds {bad} NaN or infinite "
                                  "value(s); the weights file is corrupt")
        variable.assign(value)
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise CheckpointError(f"{source}: missing tensor(s) {shown}")


# --------------------------------------------------------------------------- reading
def _read_weights(folder: str) -> tuple[dict[str, np.ndarray], str]:
    safetensors_path = os.path.join(folder, SAFETENSORS_FILE)
    torch_path = os.path.join(folder, "pytorch_model.bin")
    if os.path.exists(safetensors_path):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(safetensors_path), safetensors_path
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{safetensors_path}: cannot read weights ({err})") from err
    if os.path.exists(torch_path):
        try:
            import torch
        except ImportError as err:
            raise CheckpointError(
                f"{torch_path}: reading pytorch_model.bin needs torch; install it or convert the "
                "checkpoint to model.safetensors"
            ) from err
        try:
            raw = torch.load(torch_path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a corrupt pickle/zip
            raise CheckpointError(f"{torch_path}: cannot read weights ({err})") from err
        return {k: v.float().numpy() for k, v in raw.items()}, torch_path
    raise CheckpointError(
        f"{folder}: no weights file (expected one of {', '.join(HF_WEIGHT_FILES)})"
    )


def load_hf_checkpoint(
    folder: str | os.PathLike, dtype: str | None = None
) -> tuple[Encoder, tokenizers.Tokenizer]:
    """Read an HF BERT/RoBERTa/XLM-R/MPNet folder into an `Encoder` and its tokenizer.

    Args:
        folder: folder with `config.json`, weights and tokenizer files.
        dtype: optional Keras dtype policy for the encoder (e.g. "mixed_bfloat16").

    Returns:
        `(encoder, tokenizer)`.

    Raises:
        CheckpointError: missing/corrupt files, unknown architecture, shape mismatches,
            a tokenizer larger than the embedding table.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: not a folder (expected an HF checkpoint folder)")
    try:
        config = EncoderConfig.from_json_file(os.path.join(folder, "config.json"))
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    tokenizer = load_tokenizer(folder)
    tokenizer_size = tokenizer.get_vocab_size(with_added_tokens=True)
    if tokenizer_size > config.vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer has {tokenizer_size} tokens but config.json field 'vocab_size' "
            f"is {config.vocab_size}; the tokenizer does not belong to this model"
        )
    state, source = _read_weights(folder)
    kwargs = {"dtype": dtype} if dtype else {}
    encoder = Encoder(config, **kwargs)
    assign_state_dict(encoder, state, source)
    logger.info("loaded %s (%s, %d layers x %d)", folder, config.model_type,
                config.num_hidden_layers, config.hidden_size)
    return encoder, tokenizer


def save_hf_checkpoint(
    encoder: Encoder, tokenizer: tokenizers.Tokenizer | None, folder: str | os.PathLike,
    pooling: PoolingSpec | None = None, teacher_folder: str | None = None,
) -> str:
    """Write `encoder` (and `tokenizer`) as a folder `transformers` and sentence-transformers load.

    The folder is written beside its final place and moved in when complete. Besides
    `config.json` and the weights it holds the sentence-transformers files
    (`hf.st_folder`): `SentenceTransformer(folder)` pools and normalises as `pooling` says.

    Args:
        encoder: the encoder to save (weights are written as float32).
        tokenizer: its tokenizer, or None to write weights and config only.
        folder: destination folder (replaced if it exists and tf-minilm wrote it; a
            non-empty folder of anyone else's is refused).
        pooling: the model's sentence-embedding pooling (default mean + normalise).
        teacher_folder: the teacher's folder, whose max length and prompts carry over.

    Returns:
        The folder path.
    """
    from safetensors.numpy import save_file

    folder = os.path.abspath(os.fspath(folder))
    try:
        check_replaceable(folder)
    except NotOurFolderError as err:
        raise CheckpointError(f"cannot save the checkpoint: {err}") from err
    with staged_folder(folder, "hf-checkpoint") as staging:
        config = encoder.config
        with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(config.to_hf_dict(), handle, indent=2, sort_keys=True)
        save_file(encoder_state_dict(encoder), os.path.join(staging, SAFETENSORS_FILE),
                  metadata={"format": "pt"})
        if tokenizer is not None:
            for name, text in tokenizer_files(tokenizer, config).items():
                with open(os.path.join(staging, name), "w", encoding="utf-8") as handle:
                    handle.write(text)
        write_files(staging, sentence_transformers_files(
            pooling or PoolingSpec(), config.hidden_size, config.max_sequence_length,
            teacher_folder))
    return folder
