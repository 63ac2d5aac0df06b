"""Tests of the embedding HTTP server, its dynamic batcher and its metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from serving.batching import BatcherClosedError, DynamicBatcher, QueueFullError
from serving.metrics import ServingMetrics
from serving.runtime import EmbeddingModel, Embeddings
from serving.server import BackgroundServer, ServerConfig, create_app
from tests.serving_model import build_tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["Hello world", "the quick brown fox jumps over the lazy dog", "cat", "a red mat"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> EmbeddingModel:
    tiny = build_tiny_model_dir(tmp_path_factory.mktemp("srv") / "tiny-model", int8=False)
    return EmbeddingModel(tiny.folder, intra_op_threads=1)


def request(url: str, body: object = None, raw: bytes | None = None,
            method: str = "POST") -> tuple[int, dict | str, dict]:
    """Sends one request; returns (status, decoded JSON or text, headers)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, payload, headers = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        status, payload, headers = err.code, err.read(), dict(err.headers)
    text = payload.decode()
    try:
        return status, json.loads(text), headers
    except json.JSONDecodeError:
        return status, text, headers


def metric_values(text: str) -> dict[str, float]:
    """Sample lines of a Prometheus text exposition as {name{labels}: value}."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


class SlowModel:
    """Wraps a model; every call sleeps first and is recorded."""

    def __init__(self, model: EmbeddingModel, delay: float) -> None:
        self.model, self.delay = model, delay
        self.name, self.dimension = "slow", model.dimension
        self.calls: list[list[str]] = []

    def embed(self, texts, batch_size=32):
        self.calls.append(list(texts))
        time.sleep(self.delay)
        return self.model.embed(texts, batch_size=batch_size)

    def info(self):
        return {"name": self.name}


class FailingModel(SlowModel):
    def embed(self, texts, batch_size=32):
        if "boom" in texts:
            raise RuntimeError("model exploded")
        return super().embed(texts, batch_size)


async def post_many(url: str, bodies: list[object]) -> list[tuple[int, dict, dict]]:
    async with aiohttp.ClientSession() as session:
        async def one(body):
            async with session.post(url + "/v1/embeddings", json=body) as resp:
                return resp.status, await resp.json(), dict(resp.headers)
        return await asyncio.gather(*(one(body) for body in bodies))


# -- metrics ------------------------------------------------------------------------------------
def test_prometheus_text_format():
    metrics = ServingMetrics(prefix="t", queue_depth=lambda: 7)
    metrics.observe_request('/a"b\\c\n', "GET", 200, 0.003)
    metrics.observe_request("/x", "POST", 400, 0.2)
    metrics.observe_request("/x", "POST", 400, 20.0)
    for texts in (1, 3, 3, 10):
        metrics.observe_batch(texts, tokens=5 * texts, seconds=0.01)
    text = metrics.render()
    values = metric_values(text)
    lines = text.splitlines()
    assert lines[:2] == ["# HELP t_requests_total HTTP requests by endpoint, method and status code.",
                         "# TYPE t_requests_total counter"]
    assert values['t_requests_total{endpoint="/a\\"b\\\\c\\n",method="GET",status="200"}'] == 1
    assert values['t_requests_total{endpoint="/x",method="POST",status="400"}'] == 2
    assert "# TYPE t_batch_size histogram" in lines
    assert values['t_batch_size_bucket{le="1.0"}'] == 1
    assert values['t_batch_size_bucket{le="4.0"}'] == 3
    assert values['t_batch_size_bucket{le="+Inf"}'] == 4
    assert values["t_batch_size_sum"] == 17 and values["t_batch_size_count"] == 4
    assert values['t_request_duration_seconds_bucket{endpoint="/x",le="10.0"}'] == 1
    assert values["t_texts_total"] == 17 and values["t_tokens_total"] == 85
    assert values["t_queue_depth"] == 7
    assert metrics.value("t_batch_size_count") == 4
    # every server has its own registry: nothing is shared between instances
    assert ServingMetrics(prefix="t").value("t_texts_total") == 0


# -- batcher ------------------------------------------------------------------------------------
def fake_embed(calls: list[list[str]], delay: float = 0.0):
    def embed(texts: list[str]) -> Embeddings:
        calls.append(list(texts))
        time.sleep(delay)
        vectors = np.array([[len(t), sum(map(ord, t))] for t in texts], np.float32)
        return Embeddings(vectors, [len(t) for t in texts])
    return embed


def test_batcher_gathers_requests_without_overflowing_and_slices_results():
    calls: list[list[str]] = []
    metrics = ServingMetrics()

    async def main():
        batcher = DynamicBatcher(fake_embed(calls), max_batch_size=4, max_wait_ms=200,
                                 max_queue=16, metrics=metrics)
        await batcher.start()
        requests = [["a"], ["bb", "ccc"], ["dddd", "e", "ff"], ["g"], ["hhhhhhh"] * 6]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.close()
        return requests, results

    requests, results = asyncio.run(main())
    for texts, result in zip(requests, results, strict=True):
        assert result.token_counts == [len(t) for t in texts]
        assert result.vectors[:, 0].tolist() == [len(t) for t in texts]
        assert result.vectors[:, 1].tolist() == [sum(map(ord, t)) for t in texts]
    # FIFO, at most 4 texts unless one request alone is larger; the request that would
    # overflow starts the next batch.
    assert calls == [["a", "bb", "ccc"], ["dddd", "e", "ff", "g"], ["hhhhhhh"] * 6]
    assert metrics.value("tf_minilm_batch_size_count") == 3
    assert metrics.value("tf_minilm_texts_total") == 13


def test_batcher_rejects_when_queue_full_and_fails_waiting_requests_on_close():
    calls: list[list[str]] = []

    async def main():
        batcher = DynamicBatcher(fake_embed(calls, delay=0.3), max_batch_size=1,
                                 max_wait_ms=0, max_queue=2)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(["1"]))
        await asyncio.sleep(0.1)  # the worker now runs the first request
        waiting = [asyncio.ensure_future(batcher.submit([str(i)])) for i in (2, 3)]
        await asyncio.sleep(0)
        assert batcher.depth == 2
        with pytest.raises(QueueFullError, match="2 requests waiting"):
            await batcher.submit(["4"])
        await batcher.close()
        outcomes = await asyncio.gather(first, *waiting, return_exceptions=True)
        with pytest.raises(BatcherClosedError):
            await batcher.submit(["5"])
        return outcomes

    outcomes = asyncio.run(main())
    assert all(isinstance(o, BatcherClosedError) for o in outcomes), outcomes


# -- server -------------------------------------------------------------------------------------
def test_embeddings_endpoint_matches_encode(model):
    with BackgroundServer(create_app(model)) as server:
        status, body, _ = request(server.url + "/v1/embeddings",
                                  {"input": TEXTS, "model": "anything"})
        assert status == 200
        assert body["object"] == "list" and body["model"] == "tiny-model"
        assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
        assert all(d["object"] == "embedding" for d in body["data"])
        got = np.array([d["embedding"] for d in body["data"]], np.float32)
        np.testing.assert_allclose(got, model.encode(TEXTS), atol=1e-6)
        tokens = sum(model.embed(TEXTS).token_counts)
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

        status, body, _ = request(server.url + "/v1/embeddings", {"input": "cat"})
        assert status == 200 and len(body["data"]) == 1
        np.testing.assert_allclose(body["data"][0]["embedding"], model.encode(["cat"])[0],
                                   atol=1e-6)

        status, body, _ = request(server.url + "/v1/embeddings",
                                  {"input": TEXTS[:2], "encoding_format": "base64"})
        assert status == 200
        decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
                            for d in body["data"]])
        np.testing.assert_allclose(decoded, model.encode(TEXTS[:2]), atol=1e-6)


def test_concurrent_requests_share_batches(model):
    config = ServerConfig(max_wait_ms=300, max_batch_size=32)
    app = create_app(model, config)
    with BackgroundServer(app) as server:
        bodies = [{"input": [text]} for text in TEXTS * 2]
        results = asyncio.run(post_many(server.url, bodies))
        expected = model.encode(TEXTS * 2)
        for row, (status, body, _) in enumerate(results):
            assert status == 200
            np.testing.assert_allclose(body["data"][0]["embedding"], expected[row], atol=1e-6)
        _, text, _ = request(server.url + "/metrics", method="GET")
    values = metric_values(text)
    assert values["tf_minilm_texts_total"] == 8
    assert values["tf_minilm_batch_size_count"] < 8  # at least two requests shared a call


BAD_REQUESTS = [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b"{}", 400, "missing required field 'input'"),
    (b'{"input": 5}', 400, "'input' must be a string or a list of strings, got int"),
    (b'{"input": {"a": 1}}', 400, "got dict"),
    (b'{"input": ["ok", 3]}', 400, "'input[1]' must be a string, got int (token arrays"),
    (b'{"input": ["ok", null]}', 400, "'input[1]' must be a string, got NoneType"),
    (b'{"input": []}', 400, "must not be an empty list"),
    (b'{"input": ""}', 400, "'input' is an empty string"),
    (b'{"input": ["ok", ""]}', 400, "'input[1]' is an empty string"),
    (b'{"input": "ok", "model": 3}', 400, "'model' must be a string"),
    (b'{"input": "ok", "encoding_format": "int8"}', 400, "'encoding_format' must be one of"),
    (json.dumps({"input": ["a"] * 5}).encode(), 413, "5 texts; the limit is 4"),
    (json.dumps({"input": ["ok", "x" * 61]}).encode(), 413,
     "'input[1]' has 61 characters; the limit is 60"),
    (json.dumps({"input": ["x" * 50] * 4 + ["y"]}).encode() + b" " * 400, 413,
     "the limit is 400"),
]


@pytest.fixture(scope="module")
def strict_server(model):
    config = ServerConfig(max_texts_per_request=4, max_chars_per_text=60, max_body_bytes=400)
    with BackgroundServer(create_app(model, config)) as server:
        yield server


@pytest.mark.parametrize("raw,status,message", BAD_REQUESTS)
def test_bad_requests_get_json_4xx_and_server_keeps_serving(strict_server, model, raw, status,
                                                            message):
    got_status, body, _ = request(strict_server.url + "/v1/embeddings", raw=raw)
    assert got_status == status, body
    assert message in body["error"]["message"]
    assert body["error"]["type"] == ("request_too_large" if status == 413
                                     else "invalid_request_error")
    ok_status, ok_body, _ = request(strict_server.url + "/v1/embeddings", {"input": ["cat"]})
    assert ok_status == 200
    np.testing.assert_allclose(ok_body["data"][0]["embedding"], model.encode(["cat"])[0],
                               atol=1e-6)


def test_unknown_route_and_wrong_method_are_json(strict_server):
    status, body, _ = request(strict_server.url + "/v2/nothing", method="GET")
    assert status == 404 and body["error"]["type"] == "not_found"
    status, body, _ = request(strict_server.url + "/v1/embeddings", method="GET")
    assert status == 405 and body["error"]["type"] == "method_not_allowed"


def test_full_queue_answers_503_then_recovers(model):
    slow = SlowModel(model, delay=0.4)
    config = ServerConfig(max_queue=1, max_batch_size=1, max_wait_ms=0)
    with BackgroundServer(create_app(slow, config)) as server:
        results = asyncio.run(post_many(server.url, [{"input": [t]} for t in TEXTS + TEXTS]))
        statuses = [status for status, _, _ in results]
        assert set(statuses) == {200, 503}, statuses
        # one in the model, one queued (plus at most one that beat the worker to the queue)
        assert statuses.count(200) <= 3
        rejected = next((body, headers) for status, body, headers in results if status == 503)
        assert rejected[0]["error"]["type"] == "server_overloaded"
        assert "queue is full" in rejected[0]["error"]["message"]
        assert rejected[1]["Retry-After"] == "1"
        status, _, _ = request(server.url + "/v1/embeddings", {"input": ["cat"]})
        assert status == 200
        _, text, _ = request(server.url + "/metrics", method="GET")
    values = metric_values(text)
    key = 'tf_minilm_requests_total{endpoint="/v1/embeddings",method="POST",status="503"}'
    assert values[key] == statuses.count(503)


def test_model_failure_is_500_and_server_recovers(model):
    failing = FailingModel(model, delay=0.0)
    with BackgroundServer(create_app(failing)) as server:
        status, body, _ = request(server.url + "/v1/embeddings", {"input": ["boom"]})
        assert status == 500 and body["error"]["type"] == "internal_error"
        status, _, _ = request(server.url + "/v1/embeddings", {"input": ["cat"]})
        assert status == 200


def test_metrics_and_healthz(model):
    with BackgroundServer(create_app(model, ServerConfig(model_name="mini"))) as server:
        tokens = 0
        for texts in (TEXTS, TEXTS[:1], TEXTS[2:]):
            status, body, _ = request(server.url + "/v1/embeddings", {"input": texts})
            assert status == 200 and body["model"] == "mini"
            tokens += body["usage"]["total_tokens"]
        request(server.url + "/v1/embeddings", raw=b"nope")
        status, health, _ = request(server.url + "/healthz", method="GET")
        assert status == 200 and health["status"] == "ok" and health["model"] == "mini"
        assert health["model_info"]["dimension"] == model.dimension
        assert health["model_info"]["model_file"] == "model.onnx"
        assert health["limits"]["max_batch_size"] == 32
        status, text, headers = request(server.url + "/metrics", method="GET")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE tf_minilm_requests_total counter" in text
    assert "# TYPE tf_minilm_request_duration_seconds histogram" in text
    assert "# TYPE tf_minilm_batch_size histogram" in text
    assert "# TYPE tf_minilm_queue_depth gauge" in text
    values = metric_values(text)
    prefix = 'tf_minilm_requests_total{endpoint="/v1/embeddings",method="POST",status='
    assert values[prefix + '"200"}'] == 3 and values[prefix + '"400"}'] == 1
    assert values['tf_minilm_requests_total{endpoint="/healthz",method="GET",status="200"}'] == 1
    assert values['tf_minilm_request_duration_seconds_count{endpoint="/v1/embeddings"}'] == 4
    assert values['tf_minilm_batch_size_bucket{le="+Inf"}'] == 3
    assert values["tf_minilm_batch_size_sum"] == len(TEXTS) + 1 + 2
    assert values["tf_minilm_tokens_total"] == tokens
    assert values["tf_minilm_queue_depth"] == 0


# -- command line and the no-TensorFlow guarantee -----------------------------------------------
def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def test_serving_never_imports_tensorflow(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys, urllib.request
        import serving, serving.cli_serve, serving.cli_bench, serving.bench
        from serving import EmbeddingModel, create_app, BackgroundServer
        from tests.serving_model import build_tiny_model_dir
        from serving.bench import BenchConfig, run_benchmarks
        tiny = build_tiny_model_dir({str(tmp_path / "m")!r})
        model = EmbeddingModel(tiny.folder)
        model.encode(["hello world", "cat"])
        with BackgroundServer(create_app(model)) as server:
            req = urllib.request.Request(server.url + "/v1/embeddings",
                                         data=json.dumps({{"input": ["cat"]}}).encode())
            assert urllib.request.urlopen(req).status == 200
        run_benchmarks([tiny.folder], BenchConfig(seq_lens=(8,), warmup=1, repeats=2,
                                                  throughput_batch=2, throughput_seq=8))
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print(json.dumps(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=subprocess_env(), timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_cli_serve_runs_until_interrupted(model, tmp_path):
    script = ("import argparse, sys; from serving import cli_serve; p = argparse.ArgumentParser();"
              "cli_serve.add_arguments(p); sys.exit(cli_serve.run(p.parse_args(sys.argv[1:])))")
    bad = subprocess.run([sys.executable, "-c", script, str(tmp_path / "missing")],
                         capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert bad.returncode == 2 and "does not exist" in bad.stderr

    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "import logging; logging.basicConfig(level='INFO');" + script,
         str(model.folder), "--port", str(port), "--model-name", "cli-model", "--threads", "1",
         "--max-texts", "2"],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                status, health, _ = request(url + "/healthz", method="GET")
                break
            except urllib.error.URLError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
        assert status == 200 and health["model"] == "cli-model"
        assert health["model_info"]["intra_op_threads"] == 1
        status, body, _ = request(url + "/v1/embeddings", {"input": ["a", "b", "c"]})
        assert status == 413 and "limit is 2" in body["error"]["message"]
        status, body, _ = request(url + "/v1/embeddings", {"input": ["cat"]})
        np.testing.assert_allclose(body["data"][0]["embedding"], model.encode(["cat"])[0],
                                   atol=1e-6)
    finally:
        proc.send_signal(signal.SIGINT)
        stderr = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0, stderr
    assert "serving cli-model" in stderr


def test_background_server_is_loopback_and_stops(model):
    server = BackgroundServer(create_app(model)).start()
    assert server.url.startswith("http://127.0.0.1:")
    url, thread = server.url, server._thread
    assert request(url + "/healthz", method="GET")[0] == 200
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/healthz", timeout=2)
    assert thread is not None and not thread.is_alive()


# -- hostile inputs: an error belongs to its request ---------------------------------------
def test_batcher_runs_each_request_alone_when_a_shared_call_fails():
    calls: list[list[str]] = []
    inner = fake_embed(calls)

    def embed(texts):
        if "poison" in texts:
            calls.append(list(texts))
            raise ValueError("cannot embed 'poison'")
        return inner(texts)

    async def main():
        batcher = DynamicBatcher(embed, max_batch_size=16, max_wait_ms=200, max_queue=16)
        await batcher.start()
        requests = [["a"], ["poison", "b"], ["cc"], ["ddd"]]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests),
                                       return_exceptions=True)
        await batcher.close()
        return requests, results

    requests, results = asyncio.run(main())
    assert isinstance(results[1], ValueError)
    for texts, result in zip(requests, results, strict=True):
        if texts != ["poison", "b"]:
            assert result.vectors[:, 0].tolist() == [len(t) for t in texts]
    assert calls[0] == ["a", "poison", "b", "cc", "ddd"]  # shared, failed, then one by one


def poisoned_model_dir(tmp_path, word: str = "fox"):
    """A tiny export whose embedding row of `word` is NaN (a corrupt weight)."""
    import onnx
    from onnx import numpy_helper

    from tests.serving_model import VOCAB

    tiny = build_tiny_model_dir(tmp_path / "poisoned", int8=False)
    path = tiny.folder / "model.onnx"
    graph = onnx.load(path)
    for index, init in enumerate(graph.graph.initializer):
        if init.name == "word_emb":
            table = numpy_helper.to_array(init).copy()
            table[VOCAB.index(word)] = np.nan
            graph.graph.initializer[index].CopyFrom(numpy_helper.from_array(table, "word_emb"))
    onnx.save(graph, path)
    return tiny.folder


def test_non_finite_embeddings_are_never_served(tmp_path):
    from serving.runtime import NonFiniteOutputError

    poisoned = EmbeddingModel(poisoned_model_dir(tmp_path), intra_op_threads=1)
    with pytest.raises(NonFiniteOutputError, match=r"non-finite values for 1 of 2 texts"):
        poisoned.embed(["the cat", "the fox"])
    config = ServerConfig(max_wait_ms=300, max_batch_size=32)
    with BackgroundServer(create_app(poisoned, config)) as server:
        bodies = [{"input": ["the cat"]}, {"input": ["a quick fox"]}, {"input": ["the dog"]}]
        results = asyncio.run(post_many(server.url, bodies))
        assert [status for status, _, _ in results] == [200, 500, 200]
        assert results[1][1]["error"]["type"] == "model_error"
        _, text, _ = request(server.url + "/metrics", method="GET")
    assert metric_values(text)['tf_minilm_model_errors_total{kind="non_finite"}'] == 1


def test_a_lone_surrogate_is_a_400_for_its_request_only(model):
    config = ServerConfig(max_wait_ms=300, max_batch_size=64)
    with BackgroundServer(create_app(model, config)) as server:
        good = [{"input": [text]} for text in TEXTS * 3]
        bodies = good[:5] + [{"input": ["bad \ud800 text"]}] + good[5:]
        results = asyncio.run(post_many(server.url, bodies))
    statuses = [status for status, _, _ in results]
    assert statuses[5] == 400 and "not valid Unicode" in results[5][1]["error"]["message"]
    assert statuses[:5] + statuses[6:] == [200] * len(good)


@pytest.mark.parametrize("raw,message", [
    (b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"input": "ok", "dimensions": 0}', "'dimensions' must be an integer in [1, 16]"),
    (b'{"input": "ok", "dimensions": 17}', "'dimensions' must be an integer in [1, 16]"),
    (b'{"input": "ok", "dimensions": "8"}', "'dimensions' must be an integer"),
    (b'{"input": "ok", "x": ' + b"9" * 5000 + b"}", "not valid JSON"),
])
def test_more_bad_bodies_are_json_400(model, raw, message):
    with BackgroundServer(create_app(model)) as server:
        status, body, _ = request(server.url + "/v1/embeddings", raw=raw)
        assert status == 400 and message in body["error"]["message"], body
        assert request(server.url + "/v1/embeddings", {"input": ["cat"]})[0] == 200


def test_dimensions_truncates_and_renormalises(model):
    with BackgroundServer(create_app(model)) as server:
        status, body, _ = request(server.url + "/v1/embeddings",
                                  {"input": ["the cat sat"], "dimensions": 8})
    assert status == 200
    got = np.asarray(body["data"][0]["embedding"])
    full = model.encode(["the cat sat"])[0]
    np.testing.assert_allclose(got, full[:8] / np.linalg.norm(full[:8]), atol=1e-6)


def test_stalled_and_vanishing_clients_get_408_and_no_500(model):
    import socket

    config = ServerConfig(read_timeout_s=0.5)
    with BackgroundServer(create_app(model, config)) as server:
        head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n")
        with socket.create_connection((server.host, server.port), timeout=10) as stalled:
            stalled.sendall(head + b'{"input": ')
            reply = stalled.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 408") and "request_timeout" in reply
        with socket.create_connection((server.host, server.port), timeout=10) as gone:
            gone.sendall(head + b'{"input": ')
        time.sleep(1.0)
        assert request(server.url + "/v1/embeddings", {"input": ["cat"]})[0] == 200
        _, text, _ = request(server.url + "/metrics", method="GET")
    values = metric_values(text)
    assert not [k for k in values if 'status="500"' in k], text
