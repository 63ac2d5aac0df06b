"""The optimizer of a distillation run: AdamW with decay chosen by variable name.

Owns: which variables get no weight decay (biases, LayerNorm gamma/beta) and building
the AdamW (the schedule is `distill.schedules`; clipping is the `Distiller`'s).
Imports: Keras.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

NO_DECAY_NAMES = ("bias", "gamma", "beta")
"""Variables named like this (Dense biases, LayerNorm scale/offset) get no weight decay."""


# --------------------------------------------------------------------------- optimizer
def no_decay_variables(model_or_variables: Any) -> list[Any]:
    """Variables excluded from weight decay: biases and LayerNorm gamma/beta.

    Args:
        model_or_variables: a Keras model (its trainable weights) or a list of variables.
    """
    variables = getattr(model_or_variables, "trainable_weights", model_or_variables)
    return [v for v in variables if v.name in NO_DECAY_NAMES]


def make_optimizer(
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    weight_decay: float = 0.01,
    no_decay: Sequence[Any] = (),
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-6,
) -> keras.optimizers.AdamW:
    """AdamW with decoupled weight decay, skipping `no_decay` variables.

    Gradient clipping is not set here: the `Distiller` clips the summed gradient
    (`clipnorm`), which stays correct with several replicas.

    Args:
        learning_rate: a float or a schedule (e.g. `WarmupLinearDecay`).
        weight_decay: decay rate (multiplied by the learning rate, as in AdamW).
        no_decay: variables without weight decay (see `no_decay_variables`).
        beta_1, beta_2, epsilon: Adam hyper-parameters.

    Returns:
        An unbuilt `keras.optimizers.AdamW`.
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
    )
    if no_decay:
        optimizer.exclude_from_weight_decay(var_list=list(no_decay))
    return optimizer
