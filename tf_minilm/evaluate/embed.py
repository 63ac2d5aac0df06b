"""Sentence embeddings of a Keras `Encoder` for evaluation: one traced forward + pooling.

Owns: running an encoder (dropout off) on token ids and pooling its output, for the
probe (frozen features) and the fidelity metrics. The pooling itself is
`tf_minilm.model.pooling.sentence_embedding`, the definition distillation, export and
serving use. Imports: TensorFlow, `model.pooling`, `tokens`.

Example:
>>> forward = pooled_forward(encoder, PoolingSpec("mean"))  # doctest: +SKIP
>>> vectors = embed_ids(forward, tokenize(tokenizer, texts, 128), pad_id=0)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tf_minilm.model.pooling import PoolingSpec, sentence_embedding
from tf_minilm.tokens import batched_apply

Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pooled_forward(encoder: Any, pooling: PoolingSpec | str) -> Forward:
    """(input_ids, attention_mask) -> float32 [n, hidden] embeddings, traced once.

    Args:
        encoder: a `tf_minilm.model.encoder.Encoder`.
        pooling: a `PoolingSpec` (the sentence embedding), or a classifier pooling:
            "mean" / "cls" (not normalised) or "pooler" (BERT's tanh pooler output).
    """
    import tensorflow as tf

    spec = None if pooling == "pooler" else pooling if isinstance(pooling, PoolingSpec) \
        else PoolingSpec(pooling, normalize=False)
    signature = [tf.TensorSpec((None, None), tf.int32)] * 2

    @tf.function(input_signature=signature)
    def forward(input_ids: Any, mask: Any) -> Any:
        outputs = encoder({"input_ids": input_ids, "attention_mask": mask,
                           "token_type_ids": tf.zeros_like(input_ids)}, training=False)
        if spec is None:
            return tf.cast(outputs["pooler_output"], tf.float32)
        return sentence_embedding(outputs["last_hidden_state"], mask, spec)

    return lambda input_ids, mask: forward(input_ids, mask).numpy()


def embed_ids(forward: Forward, ids: Sequence[Sequence[int]], pad_id: int,
              batch_size: int = 64) -> np.ndarray:
    """`forward` over token id lists, padded per batch (batched by length, input order kept)."""
    return batched_apply(lambda b: forward(b["input_ids"], b["attention_mask"]), ids,
                         batch_size, pad_id)


def embed_rows(encoder: Any, input_ids: np.ndarray, attention_mask: np.ndarray,
               pooling: PoolingSpec | str, batch_size: int = 64) -> np.ndarray:
    """Embeddings of already padded rows (e.g. a corpus's held-out sequences)."""
    forward = pooled_forward(encoder, pooling)
    out = [forward(input_ids[i:i + batch_size], attention_mask[i:i + batch_size])
           for i in range(0, len(input_ids), batch_size)]
    return np.concatenate(out, axis=0)
