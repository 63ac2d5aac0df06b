"""A bounded soak of a loopback server by good, slow and malformed clients at once.

Owns: the hostile-client soak and its report. Imports: aiohttp, NumPy and, to run a
server from the command line, `serving.loadtest`.

For `seconds`, three kinds of client run side by side against one server process:

- good clients (from 127.0.0.1) post `/v1/embeddings` in a loop; their latencies give
  p50/p99 and every answer must be a 200;
- slow clients (from `slow_source`, another loopback address) trickle a request line
  a byte at a time, slowloris-style, and reconnect when closed: each must be answered
  408 and closed within the server's header timeout, or refused 503 over its per-client
  connection cap;
- malformed clients (from `bad_source`) send what aiohttp's HTTP parser refuses (a bad
  request line, a bad Content-Length, an oversized header) or a body that is not JSON;
  each answer must be a JSON 4xx.

The server's file descriptors and resident memory are read from `/proc/<pid>` after a
warm-up and again once every client has gone: growth means a leak. Only loopback
addresses are ever contacted, and every loop stops at the deadline.

Run it: `python -m serving.soak MODEL_DIR [--seconds 20]` prints the report as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

MALFORMED_REQUESTS = (
    b"NOT-HTTP\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"Content-Length: abc\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"Content-Length: 9\r\n\r\n{not json",
)
TRICKLE = b"POST /v1/embeddings HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"


def process_usage(pid: int) -> dict[str, float]:
    """Open file descriptors and resident memory (MiB) of process `pid`, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        rss_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "rss_mib": rss_kb / 1024}


def _status(reply: bytes) -> int | None:
    """The status code of a raw HTTP response (None: the server closed without one)."""
    if not reply.startswith(b"HTTP/1."):
        return None
    return int(reply.split(b" ", 2)[1])


async def _read_all(reader: asyncio.StreamReader, first: bytes, timeout: float) -> bytes:
    """`first` and the rest of what the server sends until it closes the connection."""
    return first + await asyncio.wait_for(reader.read(), timeout)


async def _good_client(url: str, deadline: float, latencies: list[float],
                       statuses: Counter) -> None:
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            async with session.post(url + "/v1/embeddings",
                                    json={"input": ["a good request", "and another"]}) as resp:
                await resp.read()
                statuses[resp.status] += 1
            latencies.append(time.perf_counter() - start)


async def _slow_client(host: str, port: int, source: str, deadline: float, byte_gap_s: float,
                       closes: list[float], statuses: Counter) -> None:
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        opened = time.monotonic()
        try:
            first = None
            for byte in TRICKLE:
                if time.monotonic() >= deadline:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                try:  # the gap between bytes, cut short by the server's answer
                    first = await asyncio.wait_for(reader.read(65536), byte_gap_s)
                    break
                except TimeoutError:
                    continue
            if first is None:
                if time.monotonic() >= deadline:
                    break  # still open at the deadline: neither answered nor counted
                first = await asyncio.wait_for(reader.read(65536), 60.0)
            reply = await _read_all(reader, first, 10.0)
            status = _status(reply)
        except (ConnectionError, TimeoutError):
            status = "reset"
        finally:
            writer.close()
        statuses[status] += 1
        closes.append(time.monotonic() - opened)
        if status != 408:  # refused: come back later, as Retry-After asks
            await asyncio.sleep(1.0)


async def _malformed_client(host: str, port: int, source: str, deadline: float,
                            answers: Counter, not_json: list[bytes]) -> None:
    index = 0
    while time.monotonic() < deadline:
        raw = MALFORMED_REQUESTS[index % len(MALFORMED_REQUESTS)]
        index += 1
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
        try:
            writer.write(raw)
            await writer.drain()
            reply = await _read_all(reader, b"", 10.0)
        except (ConnectionError, TimeoutError):
            reply = b""
        finally:
            writer.close()
        answers[_status(reply)] += 1
        try:
            if "error" not in json.loads(reply.partition(b"\r\n\r\n")[2]):
                raise ValueError("no error field")
        except ValueError:
            not_json.append(raw[:40])
        await asyncio.sleep(0.05)


async def _soak(url: str, seconds: float, good_clients: int, slow_clients: int,
                malformed_clients: int, slow_source: str, bad_source: str,
                byte_gap_s: float) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", int(parts.port or 80)
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    good, slow, malformed = Counter(), Counter(), Counter()
    closes: list[float] = []
    not_json: list[bytes] = []
    await asyncio.gather(
        *(_good_client(url, deadline, latencies, good) for _ in range(good_clients)),
        *(_slow_client(host, port, slow_source, deadline, byte_gap_s, closes, slow)
          for _ in range(slow_clients)),
        *(_malformed_client(host, port, bad_source, deadline, malformed, not_json)
          for _ in range(malformed_clients)))
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "good": {"requests": len(latencies), "statuses": {str(k): v for k, v in good.items()},
                 "p50_ms": round(float(np.percentile(ms, 50)), 2),
                 "p99_ms": round(float(np.percentile(ms, 99)), 2)},
        "slow": {"connections": len(closes), "statuses": {str(k): v for k, v in slow.items()},
                 "longest_open_s": round(max(closes), 3) if closes else None},
        "malformed": {"requests": sum(malformed.values()),
                      "statuses": {str(k): v for k, v in malformed.items()},
                      "not_json": [raw.decode("latin-1") for raw in not_json]},
    }


def run_soak(url: str, pid: int, seconds: float = 5.0, good_clients: int = 4,
             slow_clients: int = 16, malformed_clients: int = 2,
             slow_source: str = "127.0.0.2", bad_source: str = "127.0.0.3",
             byte_gap_s: float = 0.2, settle_s: float = 1.0) -> dict[str, Any]:
    """Soaks the loopback server at `url` (process `pid`) for `seconds`; see the module
    docstring.

    Args:
        url: the server's base URL (loopback only).
        pid: the server's process, whose descriptors and memory are watched.
        seconds: how long the clients run.
        good_clients, slow_clients, malformed_clients: how many of each run at once.
        slow_source, bad_source: loopback source addresses of the slow and malformed
            clients (so a per-client cap meets them and not the good clients).
        byte_gap_s: seconds between the slow clients' bytes.
        settle_s: wait after the clients are gone before the last usage reading.

    Returns:
        The report: each kind's counts by status, the good requests' p50/p99 in ms, the
        longest a slow connection stayed open, and the server's usage before and after.

    Raises:
        ValueError: `url` is not a loopback address.
    """
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"the soak only runs against loopback servers, got {url}")
    warm = asyncio.run(_soak(url, 0.5, 1, 0, 0, slow_source, bad_source, byte_gap_s))
    before = process_usage(pid)
    report = asyncio.run(_soak(url, seconds, good_clients, slow_clients, malformed_clients,
                               slow_source, bad_source, byte_gap_s))
    time.sleep(settle_s)
    after = process_usage(pid)
    report.update(seconds=seconds, warmup_requests=warm["good"]["requests"],
                  server_before=before, server_after=after)
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.soak MODEL_DIR`: runs a server and soaks it; prints the report."""
    from serving.loadtest import local_server_process

    parser = argparse.ArgumentParser(prog="python -m serving.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--good-clients", type=int, default=4)
    parser.add_argument("--slow-clients", type=int, default=64)
    parser.add_argument("--malformed-clients", type=int, default=2)
    parser.add_argument("--header-timeout", type=float, default=2.0)
    parser.add_argument("--max-connections-per-client", type=int, default=32)
    args = parser.parse_args(argv)
    extra = ["--header-timeout", str(args.header_timeout),
             "--max-connections-per-client", str(args.max_connections_per_client)]
    with local_server_process(args.model_dir, threads=1, extra_args=extra) as (url, proc):
        report = run_soak(url, proc.pid, args.seconds, args.good_clients, args.slow_clients,
                          args.malformed_clients)
    report.update(header_timeout_s=args.header_timeout,
                  max_connections_per_client=args.max_connections_per_client)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
