"""Bounded loopback load test of a running embedding or classifier server.

Owns: the load loop and its report. Imports: nothing from the project (standard library
and aiohttp).

At each concurrency level, that many client tasks send `POST /v1/embeddings` (or
`/v1/classify`, when `/healthz` says the server holds a classifier) in a loop until the level's request count or time budget is used up, a chosen share of them
malformed (`MALFORMED_BODIES`); the result gives requests/s and latency percentiles of
the good requests, counts errors by status, how the malformed ones were answered, and
whether the server was healthy afterwards. Only loopback servers (127.0.0.1 / localhost) are accepted.
`start_local_server` (and `local_server_process`, which also yields the process) runs
`python -m serving.cli_serve` on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
MALFORMED_BODIES = (
    b"{not json",
    b'{"input": "lone surrogate \\ud800 here"}',
    b'{"input": []}',
    b'{"input": 7}',
    b'{"input": ["ok", null]}',
    b'{"input": "ok", "dimensions": -3}',
    b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"\xff\xfe\x00",
)
"""Bad requests a load test of `/v1/embeddings` mixes in; each must get a 4xx, never a 5xx."""
EMBEDDINGS_PATH, CLASSIFY_PATH = "/v1/embeddings", "/v1/classify"


def malformed_bodies(path: str) -> tuple[bytes, ...]:
    """`MALFORMED_BODIES` for the endpoint at `path` (`/v1/classify` has `top_k` where
    embeddings have `dimensions`)."""
    if path != CLASSIFY_PATH:
        return MALFORMED_BODIES
    return tuple(b'{"input": "ok", "top_k": -3}' if b"dimensions" in body else body
                 for body in MALFORMED_BODIES)
WORDS = ("the model reads short and long sentences about cats dogs weather markets music "
         "films science sport travel food code servers latency tokens vectors search "
         "questions answers news today tomorrow quickly slowly").split()


def check_loopback_url(url: str) -> str:
    """Returns `url` without a trailing slash if it is http on 127.0.0.1/localhost.

    Raises:
        ValueError: another scheme or host.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or parts.port is None:
        raise ValueError(f"load tests only target http://127.0.0.1:PORT (loopback); got {url!r}")
    return url.rstrip("/")


def synthetic_texts(count: int, seed: int = 0, min_words: int = 4,
                    max_words: int = 48) -> list[str]:
    """Reproducible English-like texts of varied length."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(min_words, max_words + 1))))
            for _ in range(count)]


async def _level(url: str, texts: Sequence[str], concurrency: int, max_requests: int,
                 time_budget_s: float, texts_per_request: int,
                 bad_fraction: float = 0.0, path: str = EMBEDDINGS_PATH) -> dict[str, Any]:
    import aiohttp

    bodies = malformed_bodies(path)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    bad: dict[str, int] = {}
    issued = 0
    # Request i is malformed when it crosses a multiple of 1 / bad_fraction: an exact,
    # evenly spread share, the same in every run.
    def is_bad(i: int) -> bool:
        return int((i + 1) * bad_fraction) > int(i * bad_fraction)
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.perf_counter()
        deadline = start + time_budget_s

        async def client() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                index = issued
                first = (issued * texts_per_request) % len(texts)
                issued += 1
                if is_bad(index):
                    raw = bodies[index % len(bodies)]
                    try:
                        async with session.post(url + path, data=raw, headers={
                                "Content-Type": "application/json"}) as resp:
                            await resp.read()
                            key = "4xx" if 400 <= resp.status < 500 else str(resp.status)
                    except (aiohttp.ClientError, TimeoutError) as err:
                        key = type(err).__name__
                    bad[key] = bad.get(key, 0) + 1
                    continue
                body = {"input": [texts[(first + i) % len(texts)]
                                  for i in range(texts_per_request)]}
                t0 = time.perf_counter()
                try:
                    async with session.post(url + path, json=body) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as err:
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                    continue
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000.0
    ok = len(latencies)

    def pct(q: float) -> float | None:
        return float(np.percentile(ms, q)) if ok else None

    return {"path": path, "concurrency": concurrency, "texts_per_request": texts_per_request,
            "requests": issued, "ok": ok, "errors": errors,
            "malformed": sum(bad.values()), "malformed_answers": bad, "duration_s": elapsed,
            "requests_per_s": ok / elapsed if elapsed > 0 else 0.0,
            "texts_per_s": ok * texts_per_request / elapsed if elapsed > 0 else 0.0,
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99)}


def run_load_test(url: str, concurrency_levels: Sequence[int] = (1, 4, 16),
                  requests_per_level: int = 200, time_budget_s: float = 10.0,
                  texts_per_request: int = 1, seed: int = 0,
                  bad_fraction: float = 0.0) -> list[dict[str, Any]]:
    """Loads a loopback server at several concurrency levels.

    Args:
        url: server base URL, `http://127.0.0.1:PORT`.
        concurrency_levels: simultaneous clients per level.
        requests_per_level: most requests sent per level.
        time_budget_s: most seconds per level (requests in flight are awaited).
        texts_per_request: texts in each request's `input`.
        seed: seed of the synthetic texts.
        bad_fraction: share of requests replaced by a `MALFORMED_BODIES` body, in [0, 1).

    Returns:
        One dict per level: path, concurrency, texts_per_request, requests, ok, errors
        (count per status or exception, good requests only), malformed and
        malformed_answers ("4xx" or the status / exception otherwise), duration_s,
        requests_per_s, texts_per_s, p50_ms, p90_ms, p99_ms of the good requests (None
        when nothing succeeded), and healthy_after (GET /healthz answered 200).

    Raises:
        ValueError: `url` is not loopback or a bound is not positive.
    """
    url = check_loopback_url(url)
    if requests_per_level < 1 or time_budget_s <= 0 or texts_per_request < 1:
        raise ValueError("requests_per_level, time_budget_s and texts_per_request must be > 0")
    if not 0 <= bad_fraction < 1:
        raise ValueError(f"bad_fraction must be in [0, 1), got {bad_fraction}")
    if not concurrency_levels or any(c < 1 for c in concurrency_levels):
        raise ValueError(f"concurrency levels must be >= 1, got {list(concurrency_levels)}")
    texts = synthetic_texts(256, seed)

    async def main() -> list[dict[str, Any]]:
        path = await _endpoint(url)
        await _level(url, texts, 1, 2, time_budget_s, texts_per_request, path=path)  # warm-up
        levels = []
        for c in concurrency_levels:
            level = await _level(url, texts, c, requests_per_level, time_budget_s,
                                 texts_per_request, bad_fraction, path)
            level["healthy_after"] = await _healthy(url)
            levels.append(level)
        return levels

    return asyncio.run(main())


async def _endpoint(url: str) -> str:
    """The path to load: `/v1/classify` when `/healthz` reports a classifier."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
            session.get(url + "/healthz") as resp:
        payload = await resp.json() if resp.status == 200 else {}
    info = payload.get("model_info") if isinstance(payload, dict) else None
    kind = info.get("kind") if isinstance(info, dict) else None
    return CLASSIFY_PATH if kind == "classifier" else EMBEDDINGS_PATH


async def _healthy(url: str) -> bool:
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
                session.get(url + "/healthz") as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def start_local_server(model_dir: str | os.PathLike[str], model_file: str = "model.onnx",
                       threads: int = 2, max_queue: int = 256, timeout_s: float = 60.0,
                       extra_args: Sequence[str] = ()) -> Iterator[str]:
    """Runs `python -m serving.cli_serve` on a free 127.0.0.1 port; yields its URL.

    The server runs in its own process (its own interpreter lock) and is stopped with
    SIGINT (then killed if it does not exit) when the block ends.

    Raises:
        RuntimeError: the server exited or did not answer /healthz within `timeout_s`.
    """
    with local_server_process(model_dir, model_file, threads, max_queue, timeout_s,
                              extra_args) as (url, _):
        yield url


@contextlib.contextmanager
def local_server_process(model_dir: str | os.PathLike[str], model_file: str = "model.onnx",
                         threads: int = 2, max_queue: int = 256, timeout_s: float = 60.0,
                         extra_args: Sequence[str] = ()
                         ) -> Iterator[tuple[str, subprocess.Popen]]:
    """`start_local_server`, yielding the server's process too (its pid, to watch its file
    descriptors and memory)."""
    port = free_loopback_port()
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "serving.cli_serve", os.fspath(model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--model-file", model_file,
               "--threads", str(threads), "--max-queue", str(max_queue), *extra_args]
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # a pipe could fill and block
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"server exited with code {proc.returncode}: {log.read()}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server on {url} did not start in {timeout_s} s") from None
                time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
