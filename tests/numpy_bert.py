"""An independent NumPy forward pass of HF BERT/RoBERTa from an HF-named state dict.

Written from the BERT equations (not from tf_minilm code) to check the Keras port.
"""

from __future__ import annotations

import math

import numpy as np


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def bert_forward(state, config, input_ids, attention_mask, token_type_ids=None):
    """Return (last_hidden_state, [(q, k, v) per layer]) in float64."""
    s = {k: np.asarray(v, np.float64) for k, v in state.items()}
    batch, seq = input_ids.shape
    if token_type_ids is None:
        token_type_ids = np.zeros_like(input_ids)
    if config.model_type in ("roberta", "xlm-roberta"):
        real = (input_ids != config.pad_token_id).astype(np.int64)
        positions = np.cumsum(real, axis=1) * real + config.pad_token_id
    else:
        positions = np.tile(np.arange(seq), (batch, 1))
    h = (s["embeddings.word_embeddings.weight"][input_ids]
         + s["embeddings.position_embeddings.weight"][positions]
         + s["embeddings.token_type_embeddings.weight"][token_type_ids])
    eps = config.layer_norm_eps
    h = _layer_norm(h, s["embeddings.LayerNorm.weight"], s["embeddings.LayerNorm.bias"], eps)
    heads = config.num_attention_heads
    d = config.hidden_size // heads
    bias = (1.0 - attention_mask[:, None, None, :].astype(np.float64)) * -1e9
    qkvs = []
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}."

        def lin(x, name, p=p):
            return x @ s[p + name + ".weight"].T + s[p + name + ".bias"]

        q, k, v = (lin(h, f"attention.self.{n}") for n in ("query", "key", "value"))
        qkvs.append((q, k, v))

        def split(t):
            return t.reshape(batch, seq, heads, d).transpose(0, 2, 1, 3)

        probs = _softmax(split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(d) + bias)
        ctx = (probs @ split(v)).transpose(0, 2, 1, 3).reshape(batch, seq, -1)
        h = _layer_norm(lin(ctx, "attention.output.dense") + h,
                        s[p + "attention.output.LayerNorm.weight"],
                        s[p + "attention.output.LayerNorm.bias"], eps)
        inner = _gelu(lin(h, "intermediate.dense"))
        h = _layer_norm(lin(inner, "output.dense") + h, s[p + "output.LayerNorm.weight"],
                        s[p + "output.LayerNorm.bias"], eps)
    return h, qkvs
