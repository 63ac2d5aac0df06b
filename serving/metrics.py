"""The embedding server's Prometheus metrics, kept with `prometheus_client`.

Owns: the metric names, labels and buckets of `tf-minilm serve` and their text
exposition (format 0.0.4, which every Prometheus scraper reads). Each `ServingMetrics`
has a registry of its own, so several servers (or tests) in one process never share
counts. Imports: `prometheus_client` only (small, pure Python; no TensorFlow).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, exposition

CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """The metrics of the embedding server.

    Args:
        prefix: name prefix of every metric.
        queue_depth: callable giving the number of requests waiting for the model.

    Attributes:
        registry: the `prometheus_client.CollectorRegistry` holding them all.
        requests: `<prefix>_requests_total{endpoint,method,status}`.
        latency: `<prefix>_request_duration_seconds{endpoint}` histogram.
        batch_size: `<prefix>_batch_size` histogram (texts per model call).
        batch_latency: `<prefix>_batch_duration_seconds` histogram (model call time).
        texts: `<prefix>_texts_total` embedded texts.
        tokens: `<prefix>_tokens_total` tokens fed to the model.
        model_errors: `<prefix>_model_errors_total{kind}` requests the model failed on.
        queue_depth: `<prefix>_queue_depth` gauge, read at scrape time.
        open_connections: `<prefix>_open_connections` gauge (set by the server's runner).
        connections_refused: `<prefix>_connections_refused_total`, over a connection cap.
        header_timeouts: `<prefix>_header_timeouts_total`, request heads not received in time.

    Example:
    >>> metrics = ServingMetrics()
    >>> metrics.observe_batch(texts=3, tokens=40, seconds=0.01)
    >>> metrics.value("tf_minilm_texts_total")
    3.0
    """

    def __init__(self, prefix: str = "tf_minilm",
                 queue_depth: Callable[[], float] = lambda: 0) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{prefix}_requests", "HTTP requests by endpoint, method and status code.",
            ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            f"{prefix}_request_duration_seconds", "HTTP request latency in seconds.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram(
            f"{prefix}_batch_size", "Texts per dynamic batch sent to the model.",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_latency = Histogram(
            f"{prefix}_batch_duration_seconds", "Model time per dynamic batch in seconds.",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.texts = Counter(f"{prefix}_texts", "Texts embedded.", registry=self.registry)
        self.tokens = Counter(f"{prefix}_tokens", "Tokens fed to the model (after truncation).",
                              registry=self.registry)
        self.model_errors = Counter(
            f"{prefix}_model_errors", "Requests the model could not embed, by kind "
            "(non_finite: NaN/inf output; otherwise the exception's type).", ["kind"],
            registry=self.registry)
        self.queue_depth = Gauge(f"{prefix}_queue_depth", "Requests waiting for the model.",
                                 registry=self.registry)
        self.queue_depth.set_function(queue_depth)
        self.open_connections = Gauge(f"{prefix}_open_connections",
                                      "Open client connections.", registry=self.registry)
        self.connections_refused = Counter(
            f"{prefix}_connections_refused", "Connections refused (503) over the total or "
            "per-client cap.", registry=self.registry)
        self.header_timeouts = Counter(
            f"{prefix}_header_timeouts", "Connections closed (408) whose request line and "
            "headers did not arrive in time.", registry=self.registry)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Counts one finished HTTP request."""
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, texts: int, tokens: int, seconds: float) -> None:
        """Records one model call over `texts` texts holding `tokens` tokens."""
        self.batch_size.observe(texts)
        self.batch_latency.observe(seconds)
        self.texts.inc(texts)
        self.tokens.inc(tokens)

    def value(self, sample: str, labels: dict[str, str] | None = None) -> float | None:
        """The current value of one sample (e.g. "tf_minilm_batch_size_count"), or None."""
        return self.registry.get_sample_value(sample, labels or {})

    def render(self) -> str:
        """All metrics in the Prometheus text format (0.0.4)."""
        return exposition.generate_latest(self.registry).decode("utf-8")
