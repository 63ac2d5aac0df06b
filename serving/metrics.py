"""Minimal Prometheus metrics (text exposition format 0.0.4), no dependencies.

Only what the server needs: counters and histograms with labels, and gauges whose
value is read from a callback at scrape time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def format_value(value: float) -> str:
    """Formats a sample value the way Prometheus parses it (`+Inf`, `NaN`, ...)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(str(value))}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> tuple[str, ...]:
        key = tuple(str(v) for v in labels)
        if len(key) != len(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {key}")
        return key

    def header(self) -> list[str]:
        doc = self.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        return [f"# HELP {self.name} {doc}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        return "\n".join(self.header() + self.samples()) + "\n"


class Counter(_Metric):
    """A monotonically increasing count per label set.

    Args:
        name: metric name (by convention ending in `_total`).
        documentation: HELP text.
        labelnames: label names; `inc` takes the values in the same order.

    Example:
    >>> requests = Counter("requests_total", "Requests.", ["status"])
    >>> requests.inc(("200",))
    >>> requests.value(("200",))
    1.0
    """

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: Sequence[str] = (), amount: float = 1.0) -> None:
        """Adds `amount` (>= 0) to the count of `labels`."""
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease (amount {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, labels: Sequence[str] = ()) -> float:
        """Current count of `labels` (0 when never incremented)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, key)} {format_value(value)}"
                for key, value in items]


class Histogram(_Metric):
    """Cumulative bucket counts, sum and count of observations per label set.

    Args:
        name: metric name.
        documentation: HELP text.
        buckets: increasing upper bounds; `+Inf` is added.
        labelnames: label names.

    Example:
    >>> latency = Histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0))
    >>> latency.observe(0.3)
    >>> latency.count()
    1
    """

    kind = "histogram"

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        bounds = [float(b) for b in buckets]
        if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"histogram {name} buckets must be non-empty and increasing: {buckets}")
        if not math.isinf(bounds[-1]):
            bounds.append(math.inf)
        self.buckets = tuple(bounds)
        self._data: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, labels: Sequence[str] = ()) -> None:
        """Records one observation."""
        key = self._key(labels)
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * len(self.buckets), [0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            total[0] += value

    def count(self, labels: Sequence[str] = ()) -> int:
        """Number of observations of `labels`."""
        with self._lock:
            data = self._data.get(self._key(labels))
            return sum(data[0]) if data else 0

    def samples(self) -> list[str]:
        lines = []
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._data.items())
        for key, (counts, total) in items:
            cumulative = 0
            for bound, count in zip(self.buckets, counts, strict=True):
                cumulative += count
                le = f'le="{format_value(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {cumulative}")
            labels = _labels(self.labelnames, key)
            lines.append(f"{self.name}_sum{labels} {format_value(total)}")
            lines.append(f"{self.name}_count{labels} {cumulative}")
        return lines


class Gauge(_Metric):
    """A value read from `read()` at scrape time.

    Args:
        name: metric name.
        documentation: HELP text.
        read: callable returning the current value.
    """

    kind = "gauge"

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        super().__init__(name, documentation)
        self.read = read

    def samples(self) -> list[str]:
        return [f"{self.name} {format_value(float(self.read()))}"]


class Registry:
    """An ordered set of metrics rendered together.

    Example:
    >>> registry = Registry()
    >>> hits = registry.register(Counter("hits_total", "Hits."))
    >>> hits.inc()
    >>> "hits_total 1" in registry.render()
    True
    """

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _Metric) -> _Metric:
        """Adds `metric`; names must be unique. Returns the metric."""
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name!r} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        """The whole registry in Prometheus text format."""
        return "".join(metric.render() for metric in self._metrics.values())


class ServingMetrics:
    """The metrics of the embedding server.

    Args:
        prefix: name prefix of every metric.
        queue_depth: callable giving the number of requests waiting for the model.

    Attributes:
        requests: `<prefix>_requests_total{endpoint,method,status}`.
        latency: `<prefix>_request_duration_seconds{endpoint}` histogram.
        batch_size: `<prefix>_batch_size` histogram (texts per model call).
        batch_latency: `<prefix>_batch_duration_seconds` histogram (model call time).
        texts: `<prefix>_texts_total` embedded texts.
        tokens: `<prefix>_tokens_total` tokens fed to the model.
    """

    def __init__(self, prefix: str = "tf_minilm", queue_depth: Callable[[], float] = lambda: 0):
        self.registry = Registry()
        self.requests = self.registry.register(Counter(
            f"{prefix}_requests_total", "HTTP requests by endpoint, method and status code.",
            ["endpoint", "method", "status"]))
        self.latency = self.registry.register(Histogram(
            f"{prefix}_request_duration_seconds", "HTTP request latency in seconds.",
            LATENCY_BUCKETS, ["endpoint"]))
        self.batch_size = self.registry.register(Histogram(
            f"{prefix}_batch_size", "Texts per dynamic batch sent to the model.", BATCH_BUCKETS))
        self.batch_latency = self.registry.register(Histogram(
            f"{prefix}_batch_duration_seconds", "Model time per dynamic batch in seconds.",
            LATENCY_BUCKETS))
        self.texts = self.registry.register(Counter(f"{prefix}_texts_total", "Texts embedded."))
        self.tokens = self.registry.register(Counter(
            f"{prefix}_tokens_total", "Tokens fed to the model (after truncation)."))
        self.queue_depth = self.registry.register(Gauge(
            f"{prefix}_queue_depth", "Requests waiting for the model.", queue_depth))

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Counts one finished HTTP request."""
        self.requests.inc((endpoint, method, str(status)))
        self.latency.observe(seconds, (endpoint,))

    def observe_batch(self, texts: int, tokens: int, seconds: float) -> None:
        """Records one model call over `texts` texts holding `tokens` tokens."""
        self.batch_size.observe(texts)
        self.batch_latency.observe(seconds)
        self.texts.inc(amount=texts)
        self.tokens.inc(amount=tokens)

    def render(self) -> str:
        """All metrics in Prometheus text format."""
        return self.registry.render()
