"""Sentence-embedding pooling: which pooling a model folder declares, and the pooling itself.

Owns: `PoolingSpec`, reading a sentence-transformers folder's pooling, and the one
pooling definition on tensors. Imports: `constants` (Keras ops inside the tensor
functions only).

This module owns the one definition of how token states become a sentence embedding
(`sentence_embedding`, used by distillation, fidelity and evaluation) and reads the
sentence-transformers description of it from a model folder (`modules.json`,
`1_Pooling/config.json`, a `Normalize` module). It imports Keras only inside the
tensor functions, so TF-free code (serving) can read a folder's pooling; serving's
NumPy twin (`serving.runtime.pool_and_normalize`) is tested equal to it.

Example:
>>> spec = read_pooling("path/to/all-MiniLM-L6-v2")  # doctest: +SKIP
>>> spec
PoolingSpec(mode='mean', normalize=True)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from tf_minilm.constants import POOLING_MODES, ST_MODULES_FILE

_ST_MODE_FIELDS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_ST_POOLING = "sentence_transformers.models.Pooling"


class PoolingError(ValueError):
    """A pooling description that cannot be used; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class PoolingSpec:
    """How a model turns token states into its sentence embedding.

    Args:
        mode: "mean" (average over real tokens) or "cls" (the first token's state).
        normalize: L2-normalise the pooled vector (sentence-transformers' `Normalize`).
    """

    mode: str = "mean"
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise PoolingError(
                f"pooling mode {self.mode!r} is not supported; choose one of "
                f"{', '.join(POOLING_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as err:
        raise PoolingError(f"{path}: cannot read ({err.strerror or err})") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PoolingError(f"{path}: not valid JSON ({err})") from err


def _class_name(module_type: str) -> str:
    """'sentence_transformers.models.Pooling' -> 'Pooling'."""
    return module_type.rsplit(".", 1)[-1]


def read_pooling(folder: str, default: PoolingSpec | None = None) -> PoolingSpec:
    """The pooling a model folder declares in its sentence-transformers files.

    Args:
        folder: a model folder; `modules.json` lists its modules (the `Pooling` module's
            folder holds `config.json`, a `Normalize` module means normalisation).
        default: returned when the folder has no `modules.json` (default: mean pooling
            with normalisation, the sentence-transformers convention for BERT encoders).

    Returns:
        The folder's `PoolingSpec`.

    Raises:
        PoolingError: malformed `modules.json` or pooling config, or a pooling mode other
            than mean or CLS; the message names the file and the field.
    """
    modules_path = os.path.join(folder, ST_MODULES_FILE)
    if not os.path.isfile(modules_path):
        return default if default is not None else PoolingSpec()
    modules = _read_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise PoolingError(f"{modules_path}: expected a list of module objects")
    types = [str(module.get("type", "")) for module in modules]
    pooling = [m for m, t in zip(modules, types, strict=True) if _class_name(t) == "Pooling"]
    if len(pooling) != 1:
        raise PoolingError(
            f"{modules_path}: expected one {_ST_POOLING} module, found {len(pooling)} "
            f"(types: {', '.join(types) or 'none'})")
    config_path = os.path.join(folder, str(pooling[0].get("path", "")), "config.json")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise PoolingError(f"{config_path}: expected a JSON object")
    chosen = [mode for field, mode in _ST_MODE_FIELDS.items() if config.get(field) is True]
    if len(chosen) != 1:
        raise PoolingError(
            f"{config_path}: exactly one pooling_mode_* field must be true, got "
            f"{chosen or 'none'}")
    if chosen[0] not in POOLING_MODES:
        field = next(f for f, m in _ST_MODE_FIELDS.items() if m == chosen[0])
        raise PoolingError(
            f"{config_path}: field '{field}' selects {chosen[0]} pooling; supported are "
            f"{', '.join(POOLING_MODES)}")
    return PoolingSpec(mode=chosen[0], normalize=any(_class_name(t) == "Normalize" for t in types))


# ----------------------------------------------------------------------- tensors
def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Average of `hidden` [B, S, H] over the real tokens of `attention_mask` [B, S].

    Rows without any real token give zeros (the denominator is clamped to 1e-9).
    """
    from keras import ops

    mask = ops.expand_dims(ops.cast(attention_mask, hidden.dtype), -1)
    total = ops.sum(hidden * mask, axis=1)
    count = ops.maximum(ops.sum(mask, axis=1), ops.cast(1e-9, hidden.dtype))
    return total / count


def pool(hidden: Any, attention_mask: Any, mode: str) -> Any:
    """Pool [B, S, H] token states into [B, H]: "mean" over real tokens or "cls" (first)."""
    if mode == "mean":
        return mean_pool(hidden, attention_mask)
    if mode == "cls":
        return hidden[:, 0]
    raise PoolingError(f"pooling mode {mode!r} is not supported; choose one of "
                       f"{', '.join(POOLING_MODES)}")


def sentence_embedding(hidden: Any, attention_mask: Any, spec: PoolingSpec) -> Any:
    """The float32 sentence embedding [B, H] of token states under `spec`.

    Args:
        hidden: [B, S, H] last hidden states (any float dtype).
        attention_mask: [B, S], 1 for real tokens.
        spec: the pooling (and normalisation) to apply.

    Returns:
        [B, H] float32; L2-normalised when `spec.normalize` (epsilon 1e-12, as
        sentence-transformers' `Normalize`).
    """
    from keras import ops

    pooled = pool(ops.cast(hidden, "float32"), attention_mask, spec.mode)
    if spec.normalize:
        norm = ops.sqrt(ops.sum(ops.square(pooled), axis=-1, keepdims=True))
        pooled = pooled / ops.maximum(norm, 1e-12)
    return pooled
