"""Classification scores of the downstream evaluation: accuracy and (macro-)F1.

Owns: the scores every evaluation table reports. F1 is scikit-learn's (`f1_score`,
zero when a class is never predicted nor present). Imports: NumPy, scikit-learn.
"""

from __future__ import annotations

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of predictions equal to the labels."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"need equal, non-empty label arrays, got {y_true.shape}, {y_pred.shape}")
    return float(np.mean(y_true == y_pred))


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """F1 of every class id in [0, num_classes) (0 for a class never present or predicted)."""
    from sklearn.metrics import f1_score

    return np.asarray(f1_score(y_true, y_pred, labels=list(range(num_classes)), average=None,
                               zero_division=0), np.float64)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 scores."""
    return float(np.mean(f1_per_class(y_true, y_pred, num_classes)))
