"""Prepared directories: the same rows as the in-memory path, byte-identical shards for 1 and
N workers, resume after SIGKILL, every damaged input named, workers reading disjoint rows,
Parquet / Arrow corpora, the `prepare` command and `distill --data` with exact resume."""

from __future__ import annotations

import filecmp
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import WORDS, make_wordpiece_tokenizer
from tf_minilm.data.corpus import CorpusError, ReadOptions, iter_documents
from tf_minilm.data.packing import pack_documents, split_train_eval
from tf_minilm.data.pipeline import make_dataset
from tf_minilm.data.schedule import BatchSchedule
from tf_minilm.data.shards import (
    MANIFEST_FILE,
    PreparedDataError,
    open_prepared,
    prepare_directory,
    shard_names,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = ReadOptions(doc_separator="line")


def write_lines(path, count, seed=0):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(count):
            handle.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return make_wordpiece_tokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_lines(folder / "a.txt", 600, 0)
    write_lines(folder / "b.txt", 400, 1)
    return folder


def npy_files(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".npy"))


@pytest.mark.parametrize("packing", ["packed", "per-document"])
def test_rows_and_split_are_the_in_memory_paths(corpus, tokenizer, tmp_path, packing):
    manifest = prepare_directory(corpus, tokenizer, tmp_path / "d", max_seq_len=24,
                                 packing=packing, read_options=OPTIONS, eval_fraction=0.05,
                                 seed=3, shard_tokens=2000)
    assert len(manifest["shards"]) > 3 and manifest["dtype"] == "uint16"
    rows = pack_documents(iter_documents(corpus, OPTIONS), tokenizer, max_seq_len=24,
                          packing=packing)
    train, held = split_train_eval(rows, 0.05, 3)
    data = open_prepared(tmp_path / "d", tokenizer, 24)
    assert manifest["rows"] == len(rows) and manifest["tokens"] == rows.num_tokens
    np.testing.assert_array_equal(data.train.sequences().input_ids, train.input_ids)
    np.testing.assert_array_equal(data.train.sequences().attention_mask, train.attention_mask)
    np.testing.assert_array_equal(data.eval.input_ids, held.input_ids)
    # A random gather agrees with the in-memory rows too.
    picks = np.random.default_rng(0).integers(0, len(train), 50)
    ids, mask = data.train.gather(picks)
    np.testing.assert_array_equal(ids, train.input_ids[picks])
    np.testing.assert_array_equal(mask, train.attention_mask[picks])


def test_shards_are_byte_identical_for_one_and_two_workers(corpus, tokenizer, tmp_path):
    for workers in (1, 2):
        prepare_directory(corpus, tokenizer, tmp_path / f"w{workers}", max_seq_len=24,
                          read_options=OPTIONS, workers=workers, shard_tokens=2000)
    names = npy_files(tmp_path / "w1")
    assert names == npy_files(tmp_path / "w2") and len(names) > 6
    for name in names:
        assert filecmp.cmp(tmp_path / "w1" / name, tmp_path / "w2" / name, shallow=False), name
    one, two = (json.loads((tmp_path / f"w{w}" / MANIFEST_FILE).read_text()) for w in (1, 2))
    assert one["shards"] == two["shards"] and one["settings"] == two["settings"]


def test_a_finished_directory_is_reused_and_other_settings_are_refused(corpus, tokenizer, tmp_path):
    first = prepare_directory(corpus, tokenizer, tmp_path / "d", max_seq_len=24,
                              read_options=OPTIONS)
    assert prepare_directory(corpus, tokenizer, tmp_path / "d", max_seq_len=24,
                             read_options=OPTIONS) == first
    with pytest.raises(PreparedDataError, match="prepared with other settings"):
        prepare_directory(corpus, tokenizer, tmp_path / "d", max_seq_len=16, read_options=OPTIONS)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(PreparedDataError, match="--output: .*not empty"):
        prepare_directory(corpus, tokenizer, tmp_path / "mine", read_options=OPTIONS)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


KILLED_PREPARE = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.conftest import make_wordpiece_tokenizer
from tf_minilm.data import shards
from tf_minilm.data.corpus import ReadOptions
real = shards.write_npy
def slow(path, array):
    digest = real(path, array)
    time.sleep(0.3)
    return digest
shards.write_npy = slow
shards.prepare_directory({corpus!r}, make_wordpiece_tokenizer(), {out!r}, max_seq_len=24,
                         read_options=ReadOptions(doc_separator="line"), shard_tokens=2000)
"""


def test_a_prepare_killed_mid_way_resumes_to_the_same_shards(corpus, tokenizer, tmp_path):
    prepare_directory(corpus, tokenizer, tmp_path / "whole", max_seq_len=24, read_options=OPTIONS,
                      shard_tokens=2000)
    out = tmp_path / "killed"
    code = KILLED_PREPARE.format(repo=REPO, corpus=str(corpus), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    deadline = time.monotonic() + 120
    while not (out / shard_names(2)[2]).exists():
        assert proc.poll() is None, "the prepare ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / MANIFEST_FILE).exists()
    with pytest.raises(PreparedDataError, match="no manifest.json"):
        open_prepared(out)
    manifest = prepare_directory(corpus, tokenizer, out, max_seq_len=24, read_options=OPTIONS,
                                 shard_tokens=2000)
    assert npy_files(out) == npy_files(tmp_path / "whole")
    for name in npy_files(out):
        assert filecmp.cmp(out / name, tmp_path / "whole" / name, shallow=False), name
    whole = json.loads((tmp_path / "whole" / MANIFEST_FILE).read_text())
    assert manifest["shards"] == whole["shards"] and manifest["stats"] == whole["stats"]


def test_damaged_or_foreign_directories_are_named(corpus, tokenizer, tmp_path):
    import shutil

    prepare_directory(corpus, tokenizer, tmp_path / "good", max_seq_len=24, read_options=OPTIONS,
                      shard_tokens=2000)

    def copy(name):
        shutil.copytree(tmp_path / "good", tmp_path / name)
        return tmp_path / name

    changed = copy("changed")
    with open(changed / "shard-00001.ids.npy", "r+b") as handle:
        handle.seek(-2, os.SEEK_END)
        handle.write(b"\x01\x02")
    with pytest.raises(PreparedDataError, match=r"shard-00001.ids.npy fails its checksum"):
        open_prepared(changed, tokenizer, 24)
    truncated = copy("truncated")
    path = truncated / "shard-00002.offsets.npy"
    os.truncate(path, os.path.getsize(path) - 16)
    with pytest.raises(PreparedDataError, match=r"shard-00002.offsets.npy is truncated"):
        open_prepared(truncated, tokenizer, 24)
    missing = copy("missing")
    os.remove(missing / "heldout.npy")
    with pytest.raises(PreparedDataError, match=r"heldout.npy is missing"):
        open_prepared(missing)
    from tests.test_data import BERT_SPECIALS, word_tokenizer

    other = word_tokenizer(BERT_SPECIALS + WORDS, "[UNK]")
    with pytest.raises(PreparedDataError, match=r"manifest.json was prepared with another tokenizer"):
        open_prepared(tmp_path / "good", other, 24)
    with pytest.raises(PreparedDataError, match=r"holds rows of 24 tokens, not 32"):
        open_prepared(tmp_path / "good", tokenizer, 32)
    (tmp_path / "good" / MANIFEST_FILE).write_text("{\"format\": 99}")
    with pytest.raises(PreparedDataError, match="not a format-1 manifest"):
        open_prepared(tmp_path / "good")


def test_two_workers_read_disjoint_rows_whose_union_is_the_global_batch(corpus, tokenizer, tmp_path):
    prepare_directory(corpus, tokenizer, tmp_path / "d", max_seq_len=24, read_options=OPTIONS,
                      shard_tokens=2000)
    rows = open_prepared(tmp_path / "d").train
    seen = {}
    real_gather = rows.gather

    def recording(key):
        def gather(indices):
            seen.setdefault(key, []).append(rows.global_rows(indices).tolist())
            return real_gather(indices)
        return gather

    batches = {}
    for key, (shards, index) in {"global": (1, 0), "w0": (2, 0), "w1": (2, 1)}.items():
        rows.gather = recording(key)
        batches[key] = [b["input_ids"].numpy() for b in make_dataset(
            rows, 8, seed=4, num_steps=5, num_shards=shards, shard_index=index)]
    # Each pipeline read exactly its slices (gathers run in parallel: compare as sets).
    schedule = BatchSchedule(len(rows), 8, seed=4)
    for key, (shards, index) in {"w0": (2, 0), "w1": (2, 1)}.items():
        expected = sorted(tuple(rows.global_rows(schedule.rows(step, shards, index)).tolist())
                          for step in range(5))
        assert sorted(map(tuple, seen[key])) == expected, key
    for step in range(5):
        w0, w1 = (set(schedule.rows(step, 2, i).tolist()) for i in (0, 1))
        assert not w0 & w1 and w0 | w1 == set(schedule.rows(step).tolist())
        np.testing.assert_array_equal(np.concatenate([batches["w0"][step], batches["w1"][step]]),
                                      batches["global"][step])


# ----------------------------------------------------------------- Parquet and Arrow
def test_parquet_and_arrow_corpora_read_their_text_column(tmp_path, tokenizer):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    rng = random.Random(5)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(20)]
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=7)
    feather.write_feather(table, tmp_path / "c.arrow")
    with pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    for name in ("c.parquet", "c.arrow", "s.arrow"):
        assert list(iter_documents(tmp_path / name)) == texts, name
    with pytest.raises(CorpusError, match=r"c.parquet: no column 'body' \(columns: 'id', 'text'\)"):
        list(iter_documents(tmp_path / "c.parquet", ReadOptions(text_column="body")))
    with pytest.raises(CorpusError, match="column 'id' holds int64, not text"):
        list(iter_documents(tmp_path / "c.arrow", ReadOptions(text_column="id")))
    manifest = prepare_directory(tmp_path / "c.parquet", tokenizer, tmp_path / "d",
                                 max_seq_len=16, eval_fraction=0.1)
    assert manifest["stats"]["documents"] == len(texts)


# ----------------------------------------------------------- the command and --data
@pytest.mark.slow
def test_prepare_command_then_distill_from_it_resumes_bit_identically(corpus, tmp_path, caplog,
                                                                     capsys):
    import keras

    from tests.test_distill_cli import TEACHER  # noqa: F401  (same tiny teacher shape)
    from tf_minilm.cli import main
    from tf_minilm.hf.checkpoints import save_hf_checkpoint
    from tf_minilm.model.encoder import Encoder

    keras.utils.set_random_seed(0)
    teacher = save_hf_checkpoint(Encoder(TEACHER), make_wordpiece_tokenizer(), tmp_path / "t")
    data = tmp_path / "data"
    assert main(["prepare", str(corpus), "--teacher", str(teacher), "--output", str(data),
                 "--max-seq-len", "24", "--doc-separator", "line", "--workers", "2",
                 "--shard-tokens", "3000"]) == 0
    assert "train with `tf-minilm distill --data" in capsys.readouterr().out

    def distill(output, *extra):
        return main(["--log-level", "WARNING", "distill", "--teacher", str(teacher), "--data",
                     str(data), "--student-layers", "1", "--student-hidden", "16",
                     "--student-heads", "4", "--batch-size", "8",
                     "--steps", "8", "--checkpoint-every", "4", "--output", str(output), *extra])

    # No --max-seq-len: the run takes the prepared rows' length from the manifest.

    assert distill(tmp_path / "whole") == 0
    result = json.loads((tmp_path / "whole" / "result.json").read_text())
    manifest = json.loads((data / MANIFEST_FILE).read_text())
    assert result["data_dir"] == str(data)
    assert result["train_sequences"] + result["eval_sequences"] == manifest["rows"]
    assert not (tmp_path / "whole" / "cache").exists()  # nothing was prepared again
    card = (tmp_path / "whole" / "student" / "README.md").read_text()
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["max_seq_len"] == 24
    assert "a prepared directory (`data`)" in card and str(data) not in card

    # Killed after its step-4 checkpoint: resume gives the same weights, bit for bit.
    import shutil

    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    for name in os.listdir(tmp_path / "cut" / "checkpoints"):
        if "00000008" in name:
            os.remove(tmp_path / "cut" / "checkpoints" / name)
    shutil.rmtree(tmp_path / "cut" / "student")
    for name in ("student.keras", "result.json"):
        os.remove(tmp_path / "cut" / name)
    assert distill(tmp_path / "cut", "--resume") == 0
    whole = keras.saving.load_model(tmp_path / "whole" / "student.keras")
    cut = keras.saving.load_model(tmp_path / "cut" / "student.keras")
    for a, b in zip(whole.weights, cut.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # Bad input is named before any work.
    assert distill(tmp_path / "x", "--max-seq-len", "32") == 2  # a real conflict
    assert "--data" in caplog.text and "rows of 24 tokens" in caplog.text
    assert "leave --max-seq-len out" in caplog.text
    assert distill(tmp_path / "same", "--max-seq-len", "24", "--steps", "1") == 0
    assert distill(tmp_path / "y", "--corpus", str(corpus)) == 2
    assert "--data and --corpus are exclusive" in caplog.text
    assert main(["distill", "--data", str(tmp_path / "nothing"), "--output",
                 str(tmp_path / "z")]) == 2
    assert "no manifest.json" in caplog.text
    assert main(["prepare", str(corpus), "--output", str(tmp_path / "p"), "--workers", "0"]) == 2
    assert "--workers must be a positive integer" in caplog.text
