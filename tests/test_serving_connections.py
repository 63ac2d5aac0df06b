"""Tests of the server's connection guards: head deadline, connection caps, aiohttp's own
errors as JSON, graceful shutdown, and a bounded soak by slow and malformed clients."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from serving.limits import ServerConfigError
from serving.loadtest import local_server_process
from serving.runtime import EmbeddingModel
from serving.server import BackgroundServer, ServerConfig, create_app
from serving.soak import run_soak
from tests.serving_model import build_tiny_model_dir
from tests.test_serving_server import metric_values, request, subprocess_env


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> EmbeddingModel:
    tiny = build_tiny_model_dir(tmp_path_factory.mktemp("conn") / "tiny-model", int8=False)
    return EmbeddingModel(tiny.folder, intra_op_threads=1)


def connect(server: BackgroundServer, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10,
                                    source_address=(source, 0))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def json_body(reply: bytes) -> dict:
    return json.loads(reply.partition(b"\r\n\r\n")[2])


def metrics(server: BackgroundServer) -> dict[str, float]:
    return metric_values(request(server.url + "/metrics", method="GET")[1])


def test_a_trickled_or_silent_request_head_is_408_and_closed_within_the_timeout(model):
    config = ServerConfig(header_timeout_s=0.5)
    with BackgroundServer(create_app(model, config)) as server:
        with connect(server) as trickler:
            start = time.monotonic()
            reply = b""
            for byte in b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n":
                try:
                    trickler.sendall(bytes([byte]))
                except OSError:
                    break
                trickler.settimeout(0.1)
                try:
                    reply = trickler.recv(65536)
                    break
                except TimeoutError:
                    continue
            trickler.settimeout(10)
            reply += read_until_closed(trickler)
            elapsed = time.monotonic() - start
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert json_body(reply)["error"]["type"] == "request_timeout"
        assert 0.45 <= elapsed < 1.5, elapsed

        with connect(server) as silent:
            start = time.monotonic()
            reply = read_until_closed(silent)
            assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 1.5

        # A kept-alive connection: a whole request is answered, then a trickled second one
        # gets the deadline from its first byte.
        with connect(server) as kept:
            body = b'{"input": "cat"}'
            kept.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            first = kept.recv(65536)
            assert first.startswith(b"HTTP/1.1 200"), first
            time.sleep(0.8)  # idle, not slow: the keep-alive timeout (15 s) governs this
            kept.sendall(b"POS")
            start = time.monotonic()
            reply = read_until_closed(kept)
            assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 1.5
        values = metrics(server)
    assert values["tf_minilm_header_timeouts_total"] == 3
    assert values['tf_minilm_requests_total{endpoint="request_head",method="-",status="408"}'] == 3
    assert values['tf_minilm_requests_total{endpoint="/v1/embeddings",method="POST",'
                  'status="200"}'] == 1


@pytest.mark.parametrize("raw, fragment", [
    (b"NOT-HTTP\r\n\r\n", "malformed HTTP request"),
    (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", "Content-Length"),
    (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
     "malformed HTTP request"),
])
def test_what_aiohttps_parser_refuses_is_json_and_counted(model, raw, fragment):
    with BackgroundServer(create_app(model)) as server:
        with connect(server) as sock:
            sock.sendall(raw)
            reply = read_until_closed(sock)
        assert reply.split(b" ", 2)[1] == b"400", reply[:200]  # HTTP/1.0 with no version read
        assert b"application/json" in reply.partition(b"\r\n\r\n")[0]
        error = json_body(reply)["error"]
        assert error["type"] == "invalid_request_error" and fragment in error["message"]
        values = metrics(server)
    assert values['tf_minilm_requests_total{endpoint="request_head",method="-",status="400"}'] == 1


def test_connection_caps_refuse_with_json_503_and_free_their_places(model):
    config = ServerConfig(max_connections=3, max_connections_per_client=2)
    with BackgroundServer(create_app(model, config)) as server:
        held = [connect(server, "127.0.0.2"), connect(server, "127.0.0.2")]
        time.sleep(0.2)
        with connect(server, "127.0.0.2") as third:
            reply = read_until_closed(third)
        assert reply.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in reply
        assert "from 127.0.0.2 (the limit is 2 per client)" in json_body(reply)["error"]["message"]
        held.append(connect(server, "127.0.0.1"))  # another client still gets in: 3 open
        time.sleep(0.2)
        with connect(server, "127.0.0.3") as over_total:
            reply = read_until_closed(over_total)
        assert "(the limit is 3)" in json_body(reply)["error"]["message"]
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert request(server.url + "/v1/embeddings", {"input": ["cat"]})[0] == 200
        values = metrics(server)
    assert values["tf_minilm_connections_refused_total"] == 2
    assert values['tf_minilm_requests_total{endpoint="connection",method="-",status="503"}'] == 2


@pytest.mark.parametrize("kwargs, field", [
    ({"header_timeout_s": 0}, "header_timeout_s"),
    ({"max_connections": 0}, "max_connections"),
    ({"shutdown_timeout_s": float("inf")}, "shutdown_timeout_s"),
    ({"max_wait_ms": True}, "max_wait_ms"),
])
def test_server_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ServerConfigError) as err:
        ServerConfig(**kwargs)
    assert err.value.field == field and f"ServerConfig.{field}" in str(err.value)


def test_cli_names_the_flag_of_a_bad_limit(model):
    script = ("import argparse, sys; from serving import cli_serve; p = argparse.ArgumentParser();"
              "cli_serve.add_arguments(p); sys.exit(cli_serve.run(p.parse_args(sys.argv[1:])))")
    out = subprocess.run([sys.executable, "-c", script, str(model.folder), "--header-timeout",
                          "0"], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert out.returncode == 2, out.stderr
    assert "--header-timeout must be a finite number > 0, got 0.0" in out.stderr


def test_sigterm_answers_in_flight_requests_refuses_new_ones_and_exits(model):
    # --max-wait-ms holds each request in the batcher for a second: in flight at SIGTERM.
    args = ["--max-wait-ms", "1000", "--shutdown-timeout", "5"]
    with local_server_process(model.folder, threads=1, extra_args=args) as (url, proc):
        answers: list = []
        worker = threading.Thread(target=lambda: answers.append(
            request(url + "/v1/embeddings", {"input": ["in flight"]})))
        worker.start()
        time.sleep(0.3)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        worker.join(10)
        assert proc.wait(timeout=10) == 0
        elapsed = time.monotonic() - start
    assert answers and answers[0][0] == 200, answers
    assert len(answers[0][1]["data"]) == 1
    assert elapsed < 5, elapsed


@pytest.mark.slow
def test_soak_good_clients_are_all_served_beside_slow_and_malformed_ones(model):
    args = ["--header-timeout", "1", "--max-connections-per-client", "16"]
    with local_server_process(model.folder, threads=1, extra_args=args) as (url, proc):
        report = run_soak(url, proc.pid, seconds=4.0, good_clients=3, slow_clients=24,
                          malformed_clients=2, byte_gap_s=0.2)
    good, slow, malformed = report["good"], report["slow"], report["malformed"]
    assert good["requests"] > 50 and good["statuses"] == {"200": good["requests"]}, report
    assert good["p99_ms"] > 0
    # 16 slowloris connections are let in and closed at the deadline, 8 refused at once.
    assert slow["statuses"].get("408", 0) >= 16 and slow["statuses"].get("503", 0) >= 1, report
    assert slow["longest_open_s"] < 1.0 + 0.5, report
    assert malformed["requests"] >= 8 and set(malformed["statuses"]) == {"400"}, report
    assert malformed["not_json"] == []
    before, after = report["server_before"], report["server_after"]
    assert after["fds"] <= before["fds"] + 1, report
    assert after["rss_mib"] - before["rss_mib"] < 30, report
