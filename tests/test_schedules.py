"""WarmupLinearDecay: values at key steps against the closed form, errors, serialisation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_minilm.schedules import WarmupLinearDecay


def reference(step: int, peak: float, warmup: int, total: int) -> float:
    if step < warmup:
        return peak * step / warmup
    return peak * max(total - step, 0) / (total - warmup)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.0), (1, 1e-4), (50, 5e-3), (99, 9.9e-3), (100, 1e-2), (101, 1e-2 * 899 / 900),
     (550, 5e-3), (999, 1e-2 / 900), (1000, 0.0), (5000, 0.0)],
)
def test_values_at_key_steps(step, expected):
    schedule = WarmupLinearDecay(1e-2, warmup_steps=100, total_steps=1000)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_matches_closed_form_everywhere_and_is_continuous_at_the_peak():
    schedule = WarmupLinearDecay(3e-4, warmup_steps=40, total_steps=400)
    steps = np.arange(0, 420)
    got = np.array([float(v) for v in schedule(steps)])
    want = np.array([reference(int(s), 3e-4, 40, 400) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert np.argmax(got) == 40


def test_zero_warmup_starts_at_the_peak():
    schedule = WarmupLinearDecay(1.0, warmup_steps=0, total_steps=10)
    assert [round(float(schedule(s)), 6) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"peak_learning_rate": 0.0}, "learning rate must be > 0"),
     ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
     ({"warmup_steps": 10}, r"warmup_steps \(10\) must be smaller"),
     ({"total_steps": 0}, "total steps must be a positive integer")],
)
def test_bad_arguments(kwargs, message):
    values = {"peak_learning_rate": 1e-3, "warmup_steps": 1, "total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        WarmupLinearDecay(**values)


def test_config_round_trip_inside_an_optimizer():
    schedule = WarmupLinearDecay(2e-4, warmup_steps=5, total_steps=50)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    clone = keras.optimizers.AdamW.from_config(optimizer.get_config())
    restored = keras.saving.deserialize_keras_object(clone.get_config()["learning_rate"])
    assert isinstance(restored, WarmupLinearDecay)
    assert restored.get_config() == schedule.get_config()
    assert float(restored(20)) == pytest.approx(float(schedule(20)))
