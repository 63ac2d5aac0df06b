"""A shared test harness for tf-minilm's Keras objects (keras-hub's TestCase is the model).

`run_serialization_test` round-trips an object through `get_config` / `from_config` and,
for layers and models, through a `.keras` file, checking the config and (given inputs)
the outputs. `run_precision_test` builds an object under each precision policy and
checks its variables stay float32 and its outputs have the policy's compute dtype
(float32 for what must stay float32, such as relation losses and sentence embeddings).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
COMPUTE_DTYPE = {"float32": "float32", "mixed_float16": "float16",
                 "mixed_bfloat16": "bfloat16"}


def _outputs(value: Any) -> list[np.ndarray]:
    """Every tensor of a (possibly nested) output, as float32 NumPy arrays in a fixed order."""
    return [np.asarray(keras.ops.convert_to_numpy(t), np.float32)
            for t in tf.nest.flatten(value)]


def _call(obj: Any, inputs: Any) -> Any:
    if isinstance(inputs, Mapping) and not isinstance(obj, keras.Model):
        return obj(**inputs)
    return obj(inputs)


def run_serialization_test(obj: Any, inputs: Any = None, atol: float = 0.0) -> Any:
    """Round-trip `obj` through its config and (layers, models) a `.keras` file.

    Args:
        obj: a registered tf-minilm layer, model or schedule.
        inputs: what to call it with (kwargs dict for a layer, the input for a model, a
            step for a schedule); None: config only.
        atol: allowed difference of the outputs (dropout must be off in `inputs` calls).

    Returns:
        The object loaded from the `.keras` file (or rebuilt from its config).
    """
    config = obj.get_config()
    clone = type(obj).from_config(config)
    assert clone.get_config() == config, f"{type(obj).__name__}: config changes on round trip"
    expected = None if inputs is None else _outputs(_call(obj, inputs))
    if isinstance(obj, keras.layers.Layer):
        if not obj.built and inputs is not None:
            _call(obj, inputs)
        folder = tempfile.mkdtemp()
        path = os.path.join(folder, "object.keras")
        model = obj if isinstance(obj, keras.Model) else _wrap(obj)
        model.save(path)
        loaded_model = keras.saving.load_model(path)
        loaded = loaded_model if isinstance(obj, keras.Model) else loaded_model.layers[-1]
        assert type(loaded) is type(obj)
        assert loaded.get_config() == config, f"{type(obj).__name__}: .keras changes the config"
        for a, b in zip(obj.weights, loaded.weights, strict=True):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                          keras.ops.convert_to_numpy(b))
        clone = loaded
    if inputs is not None:
        if not getattr(clone, "built", True):
            _call(clone, inputs)
            for a, b in zip(obj.weights, clone.weights, strict=True):
                b.assign(a)
        for want, got in zip(expected, _outputs(_call(clone, inputs)), strict=True):
            np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    return clone


class _Holder(keras.Model):
    """Saves one layer inside a model (a `.keras` file holds a model)."""

    def __init__(self, layer: keras.layers.Layer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inner = layer

    def call(self, inputs: Any) -> Any:  # pragma: no cover - never called
        return self.inner(inputs)

    def get_config(self) -> dict[str, Any]:
        return {"layer": keras.saving.serialize_keras_object(self.inner), "name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _Holder:
        return cls(keras.saving.deserialize_keras_object(config.pop("layer")), **config)


keras.saving.register_keras_serializable(package="tf_minilm_tests")(_Holder)


def _wrap(layer: keras.layers.Layer) -> keras.Model:
    holder = _Holder(layer)
    holder.built = True
    return holder


def run_precision_test(build: Callable[[str], Any], inputs: Any,
                       float32_outputs: tuple[str, ...] = ()) -> None:
    """Build `build(policy)` under every policy of `PRECISIONS` and call it on `inputs`.

    Args:
        build: policy name -> a fresh object with that dtype policy.
        inputs: what to call it with.
        float32_outputs: keys of a dict output that must be float32 whatever the policy.
    """
    for policy in PRECISIONS:
        obj = build(policy)
        out = _call(obj, inputs)
        for variable in obj.weights:
            if variable.trainable:
                assert variable.dtype == "float32", (policy, variable.path, variable.dtype)
        named = out if isinstance(out, Mapping) else {"output": out}
        for key, value in named.items():
            want = "float32" if key in float32_outputs else COMPUTE_DTYPE[policy]
            for tensor in tf.nest.flatten(value):
                dtype = keras.backend.standardize_dtype(tensor.dtype)
                if dtype.startswith("int"):
                    continue
                assert dtype == want, (type(obj).__name__, policy, key, dtype)
