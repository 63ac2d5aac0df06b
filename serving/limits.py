"""`ServerConfig`: the embedding server's limits and batching, and their rules.

Owns: the server's settings, their defaults (which `tf-minilm serve`'s flags show) and
their checks (through `tf_minilm.rules`), in a module light enough for the CLI to import
before aiohttp or onnxruntime load. Imports: `tf_minilm.rules`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tf_minilm import rules


@dataclasses.dataclass
class ServerConfig:
    """Limits and batching of the embedding server.

    Args:
        max_batch_size: most texts per model call (dynamic batch).
        max_wait_ms: how long a request waits for others to share its batch, in ms.
        max_queue: most requests waiting for the model; more get 503.
        max_texts_per_request: most texts in one request's `input`.
        max_chars_per_text: most characters in one text.
        max_body_bytes: largest request body in bytes.
        read_timeout_s: longest wait for a request body; a stalled client gets 408.
        header_timeout_s: longest wait for a request's line and headers, from the
            connection's start or from the first byte of a later request on it; a client
            slower than that (e.g. one trickling a byte at a time) gets 408 and is closed.
        keepalive_timeout_s: how long an idle kept-alive connection stays open.
        max_connections: most open connections in all; more are answered 503 and closed.
        max_connections_per_client: most open connections from one client address (a
            reverse proxy is one client: raise it behind one).
        shutdown_timeout_s: on SIGTERM/SIGINT, how long in-flight requests may take to
            finish once new connections are refused.
        model_name: name reported in responses; default: the model's name.

    Example:
    >>> config = ServerConfig(max_batch_size=64, max_wait_ms=2.0)
    """

    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 64
    max_texts_per_request: int = 256
    max_chars_per_text: int = 20_000
    max_body_bytes: int = 8 * 1024 * 1024
    read_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0
    max_connections: int = 512
    max_connections_per_client: int = 64
    shutdown_timeout_s: float = 10.0
    model_name: str | None = None

    def __post_init__(self) -> None:
        def error(field: str) -> Callable[[str], Exception]:
            return lambda message: ServerConfigError(field, message)

        for field in ("max_batch_size", "max_queue", "max_texts_per_request",
                      "max_chars_per_text", "max_body_bytes", "max_connections",
                      "max_connections_per_client"):
            rules.positive_int(getattr(self, field), f"ServerConfig.{field}", error=error(field))
        rules.finite_number(self.max_wait_ms, "ServerConfig.max_wait_ms", at_least=0,
                            error=error("max_wait_ms"))
        for field in ("read_timeout_s", "header_timeout_s", "keepalive_timeout_s",
                      "shutdown_timeout_s"):
            rules.finite_number(getattr(self, field), f"ServerConfig.{field}", above=0,
                                error=error(field))


class ServerConfigError(ValueError):
    """A `ServerConfig` field out of range; `field` names it, so a CLI can name its flag."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def naming(self, flag: str) -> str:
        """The message with `flag` in place of the field's name."""
        return str(self).replace(f"ServerConfig.{self.field}", flag, 1)
