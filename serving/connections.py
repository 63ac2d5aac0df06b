"""Connection-level guards of the HTTP server, beneath aiohttp's request handling.

Owns: what aiohttp's own settings leave open and a public server needs - a deadline for a
request's head (request line and headers), caps on open connections in all and per client
address - and the JSON form of the errors aiohttp's HTTP parser answers by itself (a
malformed request line, a bad Content-Length, oversized headers), each counted in
`/metrics`. Imports: `aiohttp`, `serving.metrics`.

Written here because aiohttp (3.14, the version pinned) has neither: its keep-alive timer
closes a connection idle between requests, but a client that trickles a request line a byte
at a time is not idle, and nothing caps how many such connections are open. The guard
subclasses aiohttp's `Server` and `RequestHandler` (the protocol object of one connection),
so the same HTTP parser, limits and graceful shutdown stay aiohttp's:

- `ConnectionGuard.admit` runs when a connection is accepted; past a cap the client gets a
  JSON 503 and the connection is closed before aiohttp sees a byte of it.
- a head timer runs from the connection's start, and again from the first byte of each later
  request on a kept-alive connection; if no complete head has arrived when it fires, the
  client gets a JSON 408 and the connection is closed.
- `handle_error` (aiohttp's answer to what its parser rejects) answers JSON and counts it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

# How long a connection answered below the routes stays open for the client to read the
# answer: closing at once with the client's bytes still arriving makes the kernel send a
# reset, which can destroy the answer before the client reads it. A client that closes on
# the answer (as HTTP clients do) ends it sooner.
LINGER_S = 1.0

# The `endpoint` label of what is answered below the routes (no request reached the app).
CONNECTION_ENDPOINT = "connection"
REQUEST_HEAD_ENDPOINT = "request_head"

# The `type` of an error answered by status alone (aiohttp's own HTTP errors).
ERROR_KINDS = {400: "invalid_request_error", 404: "not_found", 405: "method_not_allowed",
               408: "request_timeout", 413: "request_too_large", 431: "request_too_large",
               503: "server_overloaded"}


def error_body(message: str, kind: str) -> bytes:
    """The JSON error body every error of the server sends: `{"error": {message, type}}`."""
    return json.dumps({"error": {"message": message, "type": kind}}).encode("utf-8")


def _raw_response(status: int, message: str, kind: str, extra_headers: str = "") -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for answering on the bare
    transport (no request object exists yet)."""
    body = error_body(message, kind)
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra_headers}\r\n")
    return head.encode("ascii") + body


class ConnectionGuard:
    """Counts open connections in all and per client address, and says who is refused.

    Args:
        max_connections: most open connections in all.
        max_connections_per_client: most open connections from one client address.
        header_timeout_s: longest wait for a complete request head, in seconds.
        metrics: where refusals and timeouts are counted.

    Example:
    >>> guard = ConnectionGuard(2, 1, 10.0, ServingMetrics())
    >>> guard.admit("127.0.0.1"), guard.admit("127.0.0.1")
    (None, 'too many open connections from 127.0.0.1 (the limit is 1 per client)')
    """

    def __init__(self, max_connections: int, max_connections_per_client: int,
                 header_timeout_s: float, metrics: ServingMetrics) -> None:
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.header_timeout_s = header_timeout_s
        self.metrics = metrics
        self.open = 0
        self.per_client: Counter[str] = Counter()

    def admit(self, client: str) -> str | None:
        """Takes a place for a new connection from `client`; returns None, or why not
        (the place is then not taken)."""
        if self.open >= self.max_connections:
            return f"too many open connections (the limit is {self.max_connections})"
        if self.per_client[client] >= self.max_connections_per_client:
            return (f"too many open connections from {client} (the limit is "
                    f"{self.max_connections_per_client} per client)")
        self.open += 1
        self.per_client[client] += 1
        return None

    def release(self, client: str) -> None:
        """Gives back the place of a closed connection."""
        self.open -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]

    def count(self, endpoint: str, status: int) -> None:
        """Counts one answer sent below the routes (method unknown: "-")."""
        self.metrics.observe_request(endpoint, "-", status, 0.0)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol of one connection, with the guard's admission and head deadline."""

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._client: str | None = None  # set once admitted
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads_at_arming = 0
        self._lingering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if peer else "unknown"
        refused = self._guard.admit(client)
        if refused is not None:
            self._guard.metrics.connections_refused.inc()
            self._guard.count(CONNECTION_ENDPOINT, 503)
            logger.info("refused a connection: %s", refused)
            self._answer_and_close(transport, _raw_response(
                503, f"{refused}; retry later", "server_overloaded", "Retry-After: 1\r\n"))
            return
        self._client = client
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._client is None:
            return  # refused in connection_made: aiohttp never saw this connection
        self._cancel_head_timer()
        self._guard.release(self._client)
        self._client = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._client is None or self._lingering:
            return  # refused, or answered and closing: what the client still sends is dropped
        waiting_for_head = self._waiter is not None and not self._waiter.done()
        heads = self._request_count
        super().data_received(data)
        if self._request_count > heads:
            self._cancel_head_timer()
        elif waiting_for_head and self._head_timer is None:
            self._arm_head_timer()  # the first bytes of the next request of a kept-alive one

    def _arm_head_timer(self) -> None:
        self._heads_at_arming = self._request_count
        self._head_timer = self._loop.call_later(self._guard.header_timeout_s,
                                                 self._head_deadline)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self._request_count > self._heads_at_arming or self.transport is None:
            return
        if self._force_close or self._close:
            return
        self._guard.count(REQUEST_HEAD_ENDPOINT, 408)
        self._guard.metrics.header_timeouts.inc()
        self._answer_and_close(self.transport, _raw_response(
            408, f"request line and headers not received within "
                 f"{self._guard.header_timeout_s:g} s", "request_timeout"))

    def _answer_and_close(self, transport: Any, answer: bytes) -> None:
        """Send `answer`, half-close (FIN after it), drop what else arrives, and close after
        `LINGER_S` at the latest (at once when the client closes its side)."""
        self._lingering = True
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER_S, transport.close)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """What aiohttp's parser refused (or an error past the app's own handling), as JSON."""
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)  # raises: sent already
        if status >= 500:
            logger.error("error handling a request from %s", request.remote, exc_info=exc)
            text = "internal server error"
        else:
            logger.info("refused a malformed request from %s: %s", request.remote,
                        message or exc)
            text = f"malformed HTTP request: {message or exc or HTTPStatus(status).phrase}"
        self._guard.count(REQUEST_HEAD_ENDPOINT, status)
        response = web.Response(body=error_body(text, ERROR_KINDS.get(status, "http_error")),
                                status=status, content_type="application/json")
        response.force_close()
        return response


class GuardedServer(web.Server):
    """aiohttp's `Server` (the protocol factory) making `GuardedRequestHandler`s."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, guard=self.guard, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """`web.AppRunner` whose server is a `GuardedServer`; everything else is aiohttp's
    (sites, graceful shutdown with `shutdown_timeout`, `keepalive_timeout`).

    Example:
    >>> runner = GuardedAppRunner(app, guard=guard, keepalive_timeout=15, shutdown_timeout=10)
    >>> await runner.setup(); await web.TCPSite(runner, "127.0.0.1", 8080).start()
    """

    def __init__(self, app: web.Application, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # the app's startup runs here
        return GuardedServer(made.request_handler, request_factory=made.request_factory,
                             handler_cancellation=made.handler_cancellation, loop=made._loop,
                             guard=self.guard, **made._kwargs)
