"""`SequenceClassifier`: an `Encoder` with a pooled, dropout-regularised linear head.

Owns: `SequenceClassifier`. Imports: `model.encoder`, `model.pooling`, `constants`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tf_minilm.constants import CLASSIFIER_POOLINGS, INPUT_NAMES
from tf_minilm.model.encoder import Encoder, copy_weights
from tf_minilm.model.pooling import mean_pool


@keras.saving.register_keras_serializable(package="tf_minilm")
class SequenceClassifier(keras.Model):
    """Sequence classification on top of an `Encoder`: pool, dropout, dense logits.

    Called on a dict of int tensors `input_ids`, `attention_mask` (1 real, 0 pad) and
    optionally `token_type_ids`, all [batch, seq]; returns float32 logits
    [batch, num_classes] (the head runs in float32 under any dtype policy). The call is
    a plain function of those three inputs, so a `tf.function` over three int64
    [None, None] tensors traces it (see `inference_function`).

    Args:
        encoder: the `Encoder` to fine-tune (it becomes a sub-model and is saved with
            the classifier). Its pooler is set non-trainable unless `pooling="pooler"`.
        num_classes: number of labels (>= 2).
        dropout: dropout rate on the pooled vector before the head.
        pooling: "cls" (final hidden state of the first token), "mean" (average over
            real tokens, the sentence-transformers pooling) or "pooler" (the encoder's
            tanh pooler on the first token, as HF `BertForSequenceClassification`).
        initializer_range: stddev of the head's normal initialiser; default the
            encoder config's `initializer_range`.
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:
    >>> from tf_minilm.model.config import EncoderConfig
    >>> encoder = Encoder(EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
    ...                                 num_attention_heads=4, intermediate_size=128))
    >>> model = SequenceClassifier(encoder, num_classes=3, pooling="mean")
    >>> inputs = {"input_ids": keras.ops.ones((2, 7), "int32"),
    ...           "attention_mask": keras.ops.ones((2, 7), "int32")}
    >>> model(inputs).shape
    (2, 3)
    >>> model.compile(optimizer="adam",
    ...               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        dropout: float = 0.1,
        pooling: str = "cls",
        initializer_range: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"pooling is {pooling!r}; choose one of {', '.join(CLASSIFIER_POOLINGS)}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(encoder, Encoder):
            raise TypeError(f"encoder must be a tf_minilm Encoder, got {type(encoder).__name__}")
        self.encoder = encoder
        self.num_classes = num_classes
        self.dropout_rate = float(dropout)
        self.pooling = pooling
        if initializer_range is None:
            initializer_range = encoder.config.initializer_range
        self.initializer_range = float(initializer_range)
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="classifier_dropout")
        self.head = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.RandomNormal(stddev=self.initializer_range),
            dtype="float32",
            name="classifier",
        )
        self.head.build((None, encoder.config.hidden_size))
        # Only "pooler" pooling reads the encoder's pooler; elsewhere it would get no
        # gradient (and Keras would warn every step), so it is frozen.
        encoder.pooler.trainable = pooling == "pooler"
        self.built = True

    @property
    def hidden_size(self) -> int:
        """Width of the pooled vector."""
        return self.encoder.config.hidden_size

    def pool(self, outputs: dict[str, Any], attention_mask: Any) -> Any:
        """The pooled [batch, hidden] vector of encoder `outputs`, per `self.pooling`."""
        if self.pooling == "pooler":
            return outputs["pooler_output"]
        hidden = outputs["last_hidden_state"]
        if self.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, attention_mask)

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        input_ids = inputs["input_ids"]
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            attention_mask = ops.ones_like(input_ids)
        encoder_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if inputs.get("token_type_ids") is not None:
            encoder_inputs["token_type_ids"] = inputs["token_type_ids"]
        outputs = self.encoder(encoder_inputs, training=training)
        pooled = ops.cast(self.pool(outputs, attention_mask), "float32")
        return self.head(self.dropout(pooled, training=training))

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (None, self.num_classes)

    def float32_copy(self) -> SequenceClassifier:
        """A copy with float32 variables and compute (for export), weights shared by value.

        Export needs a float32 graph: a model built under `mixed_bfloat16` exports a
        graph onnxruntime refuses.
        """
        encoder = Encoder(self.encoder.config, dtype="float32", name=self.encoder.name)
        copy = SequenceClassifier(
            encoder,
            num_classes=self.num_classes,
            dropout=self.dropout_rate,
            pooling=self.pooling,
            initializer_range=self.initializer_range,
            dtype="float32",
            name=self.name,
        )
        copy_weights(self, copy)
        return copy

    def inference_function(self) -> Any:
        """A `tf.function` of three int64 [batch, seq] tensors returning `{"logits": ...}`.

        The input names are `input_ids`, `attention_mask`, `token_type_ids` (the
        encoder's `INPUT_NAMES`), the form the ONNX export traces. Call it on a
        `float32_copy()` when the model was trained under a mixed policy.
        """
        import tensorflow as tf

        spec = [tf.TensorSpec((None, None), tf.int64, name=name) for name in INPUT_NAMES]

        @tf.function(input_signature=spec)
        def logits(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> dict[str, Any]:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                      "token_type_ids": token_type_ids}
            return {"logits": self(inputs, training=False)}

        return logits

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "num_classes": self.num_classes,
                "dropout": self.dropout_rate,
                "pooling": self.pooling,
                "initializer_range": self.initializer_range,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SequenceClassifier:
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
