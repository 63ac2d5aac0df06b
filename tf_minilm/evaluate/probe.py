"""The linear probe: a logistic regression on frozen sentence embeddings.

Owns: fitting the probe (scikit-learn's `LogisticRegression` on standardised features,
the field's standard; L2 chosen on a slice of the training split, SentEval-style) and
scoring it. Imports: NumPy, scikit-learn, `evaluate.embed`, `evaluate.metrics`,
`evaluate.settings`, `evaluate.tasks`, `tokens`. scikit-learn is a core dependency of
tf-minilm, never of the TF-free serving extra.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from tf_minilm.evaluate.embed import embed_ids, pooled_forward
from tf_minilm.evaluate.metrics import accuracy
from tf_minilm.evaluate.settings import EvalSettings
from tf_minilm.evaluate.tasks import TaskData, stratified_split
from tf_minilm.tokens import tokenize

logger = logging.getLogger(__name__)

MIN_SCALE = 1e-6
"""Floor of a feature's standard deviation in the probe's standardisation."""


@dataclasses.dataclass
class LinearProbe:
    """A fitted multinomial logistic regression on standardised features.

    The objective is mean cross-entropy + `l2`/2 * ||weights||^2 on standardised
    features (the bias is not penalised), i.e. scikit-learn's with C = 1 / (l2 * n).

    Args:
        mean: feature means of the training set [dim].
        scale: feature standard deviations of the training set [dim] (>= `MIN_SCALE`).
        weights: [dim, num_classes] on standardised features.
        bias: [num_classes].
        loss: final training objective.
        steps: solver iterations taken.

    Example:
    >>> probe = fit_linear_probe(features, labels, num_classes=2, l2=1e-2)  # doctest: +SKIP
    >>> probe.predict(features[:3])  # doctest: +SKIP
    array([1, 0, 1])
    """

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    loss: float
    steps: int

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Class scores [n, num_classes] of raw (unstandardised) features."""
        return ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.weights \
            + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Most likely class id of every row."""
        return np.argmax(self.logits(features), axis=1)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, num_classes: int,
                     l2: float = 1e-2, max_iter: int = 100,
                     tolerance: float = 1e-8) -> LinearProbe:
    """Fit the probe with scikit-learn (multinomial, L-BFGS, float64, deterministic).

    Args:
        features: [n, dim] training features.
        labels: [n] int label ids in [0, num_classes).
        num_classes: number of classes (a class absent from `labels` gets no weight).
        l2: L2 penalty on the weights (> 0 keeps the optimum finite on separable data).
        max_iter: most solver iterations.
        tolerance: the solver's stopping tolerance.

    Returns:
        The fitted `LinearProbe`.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"features {x.shape} and labels {y.shape} do not match")
    scaler = StandardScaler().fit(x)
    # A (near-)constant embedding dimension must not become a unit-variance feature of
    # float rounding noise: its scale is floored (MIN_SCALE) so it stays near zero.
    scaler.scale_ = np.maximum(scaler.scale_, MIN_SCALE)
    x = scaler.transform(x)
    weights = np.zeros((x.shape[1], num_classes))
    bias = np.full(num_classes, -1e9)  # classes never seen in training are never predicted
    present = np.unique(y)
    if len(present) == 1:
        bias[present[0]] = 0.0
        loss, steps = 0.0, 0
    else:
        # Two classes: scikit-learn fits one logit z with penalty ||z||^2 / (2 C); the
        # symmetric pair (-z/2, z/2) of the multinomial objective costs l2/4 * ||z||^2.
        scale = 2.0 if len(present) == 2 else 1.0
        model = LogisticRegression(C=scale / (l2 * len(y)), max_iter=max_iter, tol=tolerance)
        model.fit(x, y)
        coef, intercept = model.coef_, model.intercept_
        if len(present) == 2:  # scikit-learn keeps one logit for two classes
            coef = np.concatenate([-coef / 2, coef / 2])
            intercept = np.concatenate([-intercept / 2, intercept / 2])
        weights[:, present] = coef.T
        bias[present] = intercept
        logits = x @ weights[:, present] + bias[present]
        logits -= logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        index = np.searchsorted(present, y)
        loss = float(-log_probs[np.arange(len(y)), index].mean() + 0.5 * l2 * np.sum(weights ** 2))
        steps = int(np.max(model.n_iter_))
    return LinearProbe(scaler.mean_, scaler.scale_, weights, bias, loss, steps)


PROBE_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""L2 penalties tried when the probe chooses its own (SentEval-style model selection)."""


FALLBACK_PROBE_L2 = 1e-2


def select_probe_l2(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                    grid: Sequence[float] = PROBE_L2_GRID,
                    validation_fraction: float = 0.1) -> tuple[float, dict[str, float]]:
    """Choose the probe's L2 penalty by accuracy on a stratified slice of the training set.

    The held-out test split is never looked at. Ties go to the larger penalty. With
    fewer than 20 training examples there is nothing to validate on and
    `FALLBACK_PROBE_L2` is returned.

    Returns:
        `(best_l2, {str(l2): validation accuracy})`.
    """
    if len(labels) * validation_fraction < 2:
        logger.warning("only %d training examples: probe L2 fixed at %g", len(labels),
                       FALLBACK_PROBE_L2)
        return FALLBACK_PROBE_L2, {}
    train, valid = stratified_split(labels, validation_fraction, seed)
    scores: dict[str, float] = {}
    best, best_score = None, -1.0
    for l2 in sorted(grid, reverse=True):
        fitted = fit_linear_probe(features[train], labels[train], num_classes, l2=l2)
        score = accuracy(labels[valid], fitted.predict(features[valid]))
        scores[repr(l2)] = score
        if score > best_score:
            best, best_score = l2, score
    return float(best), scores


def probe(encoder: Any, tokenizer: Any, task: TaskData, settings: EvalSettings
          ) -> dict[str, Any]:
    """Linear probe: frozen pooled embeddings + `fit_linear_probe`; held-out scores.

    The L2 penalty is `settings.probe_l2`, or chosen by `select_probe_l2` when None.

    Returns:
        A dict with the held-out `predictions`, timings, the chosen L2 and training
        loss/accuracy.
    """
    start = time.perf_counter()
    train_ids = tokenize(tokenizer, task.train_texts, settings.max_seq_len)
    test_ids = tokenize(tokenizer, task.test_texts, settings.max_seq_len)
    forward = pooled_forward(encoder, settings.pooling)
    pad_id = encoder.config.pad_token_id
    train_x = embed_ids(forward, train_ids, pad_id, settings.batch_size)
    encode_seconds = time.perf_counter() - start
    fit_start = time.perf_counter()
    l2, validation = settings.probe_l2, None
    if l2 is None:
        l2, validation = select_probe_l2(train_x, task.train_labels, task.num_classes,
                                         settings.seed)
        logger.info("probe L2 %g chosen on 10%% of the training split (accuracy by L2: %s)",
                    l2, validation)
    fitted = fit_linear_probe(train_x, task.train_labels, task.num_classes, l2=l2,
                              max_iter=settings.probe_max_iter)
    train_seconds = time.perf_counter() - start
    logger.info("probe fitted in %d L-BFGS steps (%.2fs), loss %.4f", fitted.steps,
                time.perf_counter() - fit_start, fitted.loss)
    eval_start = time.perf_counter()
    test_x = embed_ids(forward, test_ids, pad_id, settings.batch_size)
    predictions = fitted.predict(test_x)
    return {
        "train_seconds": train_seconds,
        "encode_train_seconds": encode_seconds,
        "eval_seconds": time.perf_counter() - eval_start,
        "train_accuracy": accuracy(task.train_labels, fitted.predict(train_x)),
        "train_loss": fitted.loss,
        "probe_l2": l2,
        "probe_validation_accuracy": validation,
        "probe_solver_steps": fitted.steps,
        "predictions": predictions,
    }
