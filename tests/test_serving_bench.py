"""Tests of the latency benchmark, its CLI and the loopback load test."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pytest

from serving import cli_bench
from serving.bench import (
    BenchConfig,
    BenchError,
    discover_targets,
    median_of_round_medians_ms,
    run_benchmarks,
    summarize,
    synthetic_batch,
    time_calls,
    time_in_passes,
    time_interleaved,
    time_onnx_interleaved,
)
from serving.loadtest import check_loopback_url, run_load_test
from serving.runtime import EmbeddingModel
from serving.server import BackgroundServer, ServerConfig, create_app
from tests.serving_model import build_tiny_model_dir

TINY_CONFIG = BenchConfig(seq_lens=(8, 16), throughput_batch=4, throughput_seq=16, warmup=1,
                          repeats=3, time_budget_s=5.0, threads=1)
ROW_KEYS = {"model", "path", "file", "backend", "precision", "mode", "batch", "seq", "threads",
            "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_seq_per_s", "speedup"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("bench") / "tiny-onnx", max_seq_len=16)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_bench.add_arguments(parser)
    return parser.parse_args(argv)


def test_discover_targets(tiny, tmp_path):
    targets = discover_targets(tiny.folder)
    assert [(t.backend, t.precision, t.file) for t in targets] == [
        ("onnxruntime", "fp32", "model.onnx"), ("onnxruntime", "int8", "model.int8.onnx")]
    assert all(t.name == "tiny-onnx" for t in targets)
    (single,) = discover_targets(tiny.folder / "model.int8.onnx")
    assert (single.precision, single.file) == ("int8", "model.int8.onnx")

    hf = tmp_path / "hf-student"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    (target,) = discover_targets(hf)
    assert (target.backend, target.file) == ("tensorflow", "model.safetensors")
    (hf / "student.keras").write_bytes(b"")
    assert [t.file for t in discover_targets(hf)] == ["student.keras"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BenchError, match="holds nothing to benchmark"):
        discover_targets(empty)
    with pytest.raises(BenchError, match="does not exist"):
        discover_targets(tmp_path / "missing")
    with pytest.raises(BenchError, match="neither an .onnx nor a .keras"):
        discover_targets(hf / "config.json")


def test_synthetic_batch_is_fixed_and_in_range():
    a = synthetic_batch(99, 4, 16, seed=0)
    b = synthetic_batch(99, 4, 16, seed=0)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert a[name].shape == (4, 16) and a[name].dtype == np.int64
    assert a["input_ids"].min() >= 49 and a["input_ids"].max() < 99
    assert a["attention_mask"].all() and not a["token_type_ids"].any()
    assert not np.array_equal(a["input_ids"], synthetic_batch(99, 4, 16, seed=1)["input_ids"])


def test_time_calls_respects_repeats_and_budget():
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=2, repeats=5, time_budget_s=10)
    assert len(times) == 5 and len(calls) == 7
    start = time.perf_counter()
    times = time_calls(lambda: time.sleep(0.02), warmup=0, repeats=1000, time_budget_s=0.1)
    assert 3 <= len(times) < 20 and time.perf_counter() - start < 1.0
    stats = summarize(np.array([0.001, 0.002, 0.003, 0.004]), batch=8)
    assert stats["p50_ms"] == pytest.approx(2.5) and stats["mean_ms"] == pytest.approx(2.5)
    assert stats["throughput_seq_per_s"] == pytest.approx(8 * 4 / 0.010)
    assert stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= 4.0


def test_time_interleaved_alternates_entries_round_by_round():
    order = []
    times = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                             warmup=1, rounds=3, per_round=2)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert {name: values.shape for name, values in times.items()} == {"a": (3, 2), "b": (3, 2)}
    # One slow round moves the median of round medians by a rank, not by its size.
    rounds = np.array([[0.001, 0.003], [0.002, 0.002], [1.0, 1.0]])
    assert median_of_round_medians_ms(rounds) == pytest.approx(2.0)


def test_time_onnx_interleaved_times_every_graph_of_an_export(tiny):
    feeds = synthetic_batch(99, 1, 8, seed=0)
    times = time_onnx_interleaved({"fp32": str(tiny.folder / "model.onnx"),
                                   "int8": str(tiny.folder / "model.int8.onnx")}, feeds,
                                  threads=1, rounds=2, per_round=3, warmup=1)
    assert {name: values.shape for name, values in times.items()} == {"fp32": (2, 3),
                                                                      "int8": (2, 3)}
    assert all((values > 0).all() for values in times.values())


def test_time_in_passes_keeps_one_entry_alive_at_a_time():
    events = []

    def opener(name):
        def open_call():
            events.append(f"open {name}")
            return lambda: events.append(name)
        return open_call

    times = time_in_passes({"a": opener("a"), "b": opener("b")}, warmup=1, passes=2, calls=2)
    one_pass = ["open a", "a", "a", "a", "open b", "b", "b", "b"]
    assert events == one_pass * 2
    assert {name: values.shape for name, values in times.items()} == {"a": (2, 2), "b": (2, 2)}


def test_run_benchmarks_rows(tiny):
    result = run_benchmarks([tiny.folder], TINY_CONFIG)
    rows = result["rows"]
    assert [(r["precision"], r["mode"], r["batch"], r["seq"]) for r in rows] == [
        ("fp32", "latency", 1, 8), ("fp32", "latency", 1, 16), ("fp32", "throughput", 4, 16),
        ("int8", "latency", 1, 8), ("int8", "latency", 1, 16), ("int8", "throughput", 4, 16)]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["runs"] == 3 and row["threads"] == 1 and row["backend"] == "onnxruntime"
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["throughput_seq_per_s"] == pytest.approx(
            row["batch"] * 1000.0 / row["mean_ms"], rel=1e-6)
    assert [r["speedup"] for r in rows[:3]] == [1.0, 1.0, 1.0]
    assert rows[3]["speedup"] == pytest.approx(rows[0]["p50_ms"] / rows[3]["p50_ms"])
    assert result["versions"]["onnxruntime"] and result["config"]["threads"] == 1
    assert "tensorflow" not in result["versions"]


def test_rows_longer_than_max_seq_len_are_skipped(tiny):
    config = BenchConfig(seq_lens=(8, 64), throughput_batch=2, throughput_seq=32, warmup=0,
                         repeats=2, threads=1)
    rows = run_benchmarks([tiny.folder / "model.onnx"], config)["rows"]
    assert [(r["mode"], r["seq"]) for r in rows] == [("latency", 8)]


def test_cli_bench_writes_json_and_table(tiny, tmp_path, capsys):
    out = tmp_path / "results" / "bench.json"
    code = cli_bench.run(parse([str(tiny.folder), "--seq-lens", "8,16", "--throughput-batch",
                                "4", "--throughput-seq", "16", "--warmup", "1", "--repeats",
                                "3", "--threads", "1", "--json", str(out)]))
    assert code == 0
    stdout = capsys.readouterr().out
    assert "model.int8.onnx" in stdout and "p99 ms" in stdout and f"wrote {out}" in stdout
    payload = json.loads(out.read_text())
    assert len(payload["rows"]) == 6
    assert {r["file"] for r in payload["rows"]} == {"model.onnx", "model.int8.onnx"}
    assert payload["config"]["seq_lens"] == [8, 16] and payload["versions"]["numpy"]
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temporary left


def test_cli_bench_bad_arguments(tiny, tmp_path, caplog):
    assert cli_bench.run(parse([])) == 2
    assert cli_bench.run(parse([str(tmp_path / "missing")])) == 2
    assert "does not exist" in caplog.text
    assert cli_bench.run(parse(["--server-url", "http://example.com:80"])) == 2
    assert "loopback" in caplog.text
    with pytest.raises(SystemExit):
        parse([str(tiny.folder), "--seq-lens", "8,x"])


def test_check_loopback_url():
    assert check_loopback_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert check_loopback_url("http://localhost:9000") == "http://localhost:9000"
    for url in ("http://10.0.0.1:8080", "https://127.0.0.1:8080", "http://127.0.0.1",
                "http://example.com:8080"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback_url(url)


def test_load_test_against_a_running_server(tiny):
    model = EmbeddingModel(tiny.folder, intra_op_threads=1)
    with BackgroundServer(create_app(model, ServerConfig(max_wait_ms=1))) as server:
        levels = run_load_test(server.url, concurrency_levels=(1, 3), requests_per_level=12,
                               time_budget_s=10, texts_per_request=2)
    assert [level["concurrency"] for level in levels] == [1, 3]
    for level in levels:
        assert level["requests"] == level["ok"] == 12 and level["errors"] == {}
        assert level["requests_per_s"] > 0 and level["texts_per_s"] == pytest.approx(
            2 * level["requests_per_s"])
        assert 0 < level["p50_ms"] <= level["p99_ms"]


def test_load_test_with_malformed_requests_mixed_in(tiny):
    model = EmbeddingModel(tiny.folder, intra_op_threads=1)
    with BackgroundServer(create_app(model, ServerConfig(max_wait_ms=2))) as server:
        levels = run_load_test(server.url, concurrency_levels=(1, 4, 8), requests_per_level=64,
                               time_budget_s=30, bad_fraction=0.25)
    for level in levels:
        assert level["requests"] == 64 and level["malformed"] == 16
        assert level["malformed_answers"] == {"4xx": 16}  # every bad one refused, no 5xx
        assert level["ok"] == 48 and level["errors"] == {}  # every good one served
        assert level["p99_ms"] is not None and level["healthy_after"]


def test_load_test_stops_at_time_budget_and_counts_errors(tiny):
    model = EmbeddingModel(tiny.folder, intra_op_threads=1)
    config = ServerConfig(max_chars_per_text=5)  # every synthetic text is rejected with 413
    with BackgroundServer(create_app(model, config)) as server:
        start = time.perf_counter()
        (level,) = run_load_test(server.url, concurrency_levels=(2,),
                                 requests_per_level=10**6, time_budget_s=0.3)
        assert time.perf_counter() - start < 5
    assert level["ok"] == 0 and level["p99_ms"] is None
    assert level["errors"] == {"413": level["requests"]} and level["requests"] > 0


def test_cli_bench_load_test_starts_its_own_server(tiny, tmp_path, capsys):
    out = tmp_path / "load.json"
    code = cli_bench.run(parse([str(tiny.folder), "--seq-lens", "8", "--throughput-batch", "2",
                                "--throughput-seq", "8", "--warmup", "0", "--repeats", "2",
                                "--threads", "1", "--load-test", "--concurrency", "1,4",
                                "--load-requests", "8", "--json", str(out)]))
    assert code == 0
    payload = json.loads(out.read_text())
    load = payload["load_test"]
    assert load["server"].startswith("http://127.0.0.1:") and load["model_file"] == "model.onnx"
    assert [(lv["concurrency"], lv["ok"]) for lv in load["levels"]] == [(1, 8), (4, 8)]
    assert "load test of http://127.0.0.1:" in capsys.readouterr().out


def test_keras_baseline_row(tmp_path):
    try:
        import keras

        from tf_minilm.hf.checkpoints import save_hf_checkpoint
        from tf_minilm.model.config import EncoderConfig
        from tf_minilm.model.encoder import Encoder
    except ImportError as err:
        pytest.skip(f"tf_minilm encoder/checkpoints not importable yet: {err}")
    from tokenizers import Tokenizer

    tiny = build_tiny_model_dir(tmp_path / "onnx", hidden_size=8, max_seq_len=16, int8=False)
    config = EncoderConfig(vocab_size=len(tiny.vocab), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=32)
    encoder = Encoder(config)
    ones = np.ones((1, 4), np.int32)
    encoder({"input_ids": ones, "attention_mask": ones, "token_type_ids": 0 * ones})
    tokenizer = Tokenizer.from_file(str(tiny.folder / "tokenizer.json"))
    save_hf_checkpoint(encoder, tokenizer, tmp_path / "hf-student")
    keras_dir = tmp_path / "keras-student"
    keras_dir.mkdir()
    keras.saving.save_model(encoder, keras_dir / "student.keras")

    config = BenchConfig(seq_lens=(8, 64), throughput_batch=2, throughput_seq=8, warmup=1,
                         repeats=2, threads=1)
    result = run_benchmarks([tmp_path / "hf-student", keras_dir, tiny.folder], config)
    rows = result["rows"]
    assert [(r["backend"], r["file"], r["mode"], r["seq"]) for r in rows] == [
        ("tensorflow", "model.safetensors", "latency", 8),
        ("tensorflow", "model.safetensors", "throughput", 8),
        ("tensorflow", "student.keras", "latency", 8),
        ("tensorflow", "student.keras", "throughput", 8),
        ("onnxruntime", "model.onnx", "latency", 8),
        ("onnxruntime", "model.onnx", "throughput", 8)]
    assert all(r["runs"] == 2 and r["p50_ms"] > 0 for r in rows)
    assert rows[0]["speedup"] == 1.0 and rows[4]["speedup"] > 0
    assert result["versions"].get("keras")


def test_bench_records_its_latency_in_tf_minilm_cards_only(tiny, tmp_path, capsys):
    import shutil

    from tf_minilm.card import LATENCY_HEADING, read_card

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder in (ours, theirs):
        shutil.copytree(tiny.folder, folder)
    (ours / "README.md").write_text("---\ntags:\n- onnx\n- tf-minilm\n---\n\n# tiny\n\n"
                                    "## ONNX export\n\nfacts\n")
    user_card = "# my notes\n\nkeep me\n"
    (theirs / "README.md").write_text(user_card)
    argv = [str(ours), str(theirs), "--seq-lens", "8", "--throughput-batch", "2",
            "--throughput-seq", "8", "--warmup", "1", "--repeats", "2", "--threads", "1"]
    for _ in range(2):  # a second run replaces the section, never adds one
        assert cli_bench.run(parse(argv)) == 0
    assert f"latency recorded in {ours / 'README.md'}" in capsys.readouterr().out
    front, body = read_card(str(ours / "README.md"))
    assert front["tags"] == ["onnx", "tf-minilm"]
    assert body.count(LATENCY_HEADING) == 1 and "## ONNX export" in body and "facts" in body
    table = body.split(LATENCY_HEADING)[1]
    assert "| model.onnx (fp32) | onnxruntime | 1 x 8 |" in table
    assert "| model.int8.onnx (int8) | onnxruntime | 2 x 8 |" in table
    assert "1 thread." in table
    assert (theirs / "README.md").read_text() == user_card
    assert cli_bench.run(parse(argv[:1] + argv[2:] + ["--no-card"])) == 0
    assert read_card(str(ours / "README.md"))[1] == body
