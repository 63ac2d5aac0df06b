"""OpenAI-compatible HTTP server (aiohttp) over an `EmbeddingModel` or a `ClassifierModel`.

Owns: the HTTP API (routes, request checks, responses), the server's limits
(`ServerConfig`) and its run until a signal. Imports: `serving.batching`,
`serving.classify`, `serving.connections`, `serving.limits`, `serving.metrics`, `serving.runtime`,
`tf_minilm.constants`.

Endpoints:

- `POST /v1/embeddings` (an embedding export) with `{"input": "text" | ["text", ...],
  "model": optional, "encoding_format": "float" | "base64", "dimensions": optional}`
  answers `{"object": "list", "data": [{"object": "embedding", "index": i, "embedding":
  [...]}], "model": name, "usage": {"prompt_tokens": n, "total_tokens": n}}`.
- `POST /v1/classify` (a classifier export) with `{"input": ..., "model": optional,
  "top_k": optional}` answers `{"object": "list", "data": [{"object": "classification",
  "index": i, "label": best, "score": p, "scores": {label: p, ...}}], "model", "usage"}`
  (scores are softmax probabilities, most probable first; `top_k` lists only that many).
  The endpoint of the other kind answers 404 naming the right one.
- `GET /healthz`: model facts as JSON.
- `GET /metrics`: Prometheus text format.

`model` is optional and only type-checked: one server serves one model, whose name
every response reports. `dimensions` keeps the first N components and renormalises them
(Matryoshka-style, as OpenAI clients expect). Unknown fields (e.g. `user`) are ignored.

Errors are JSON `{"error": {"message": ..., "type": ...}}`, every one counted in
`/metrics`: 400 for malformed or invalid bodies (lone surrogates, nesting too deep, a body
cut short) and for what aiohttp's HTTP parser refuses (a bad request line or
Content-Length, oversized headers), 408 for a request head not received within
`header_timeout_s` or a body not received within `read_timeout_s`, 413 for requests over
the configured limits, 503 when the request queue is full or a connection cap is reached
(`serving.connections`), 500 when the model cannot embed or classify this request's texts
(`model_error` for a non-finite output, which is never sent). Each request succeeds or
fails on its own texts: the batcher re-runs a failed shared call request by request.
Both endpoints share the batching, limits, metrics and error handling.

`serve` stops gracefully on SIGTERM or SIGINT: the listening socket closes (new
connections are refused), idle connections close, in-flight requests are answered for up
to `shutdown_timeout_s`, then the batcher stops and the process exits. No TensorFlow is
imported.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from serving.batching import BatcherClosedError, DynamicBatcher, QueueFullError
from serving.classify import Classifications, open_model
from serving.connections import ERROR_KINDS, ConnectionGuard, GuardedAppRunner, error_body
from serving.limits import ServerConfig
from serving.metrics import CONTENT_TYPE, ServingMetrics
from serving.runtime import (
    AUTO_MODEL_FILE,
    Embeddings,
    NonFiniteOutputError,
    choose_served_file,
    resolve_model_path,
)
from tf_minilm.constants import EXPORT_KINDS, ONNX_MODEL_FILE

logger = logging.getLogger(__name__)

ENCODING_FORMATS = ("float", "base64")
EMBEDDINGS_PATH = "/v1/embeddings"
CLASSIFY_PATH = "/v1/classify"


class Embedder(Protocol):
    """What the server needs from an embedding model (`EmbeddingModel` satisfies it)."""

    name: str
    dimension: int

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> Embeddings: ...

    def info(self) -> dict[str, Any]: ...


class Classifier(Protocol):
    """What the server needs from a classifier (`ClassifierModel` satisfies it)."""

    name: str
    kind: str
    num_labels: int

    def classify(self, texts: Sequence[str], batch_size: int = 32) -> Classifications: ...

    def info(self) -> dict[str, Any]: ...


class RequestError(Exception):
    """A client error answered as JSON with `status`."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


MODEL_KEY = web.AppKey("model", object)
CONFIG_KEY = web.AppKey("config", ServerConfig)
METRICS_KEY = web.AppKey("metrics", ServingMetrics)
BATCHER_KEY = web.AppKey("batcher", DynamicBatcher)
NAME_KEY = web.AppKey("model_name", str)


def error_response(status: int, message: str, kind: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error body `{"error": {"message", "type"}}` with `status`."""
    return web.Response(body=error_body(message, kind), status=status,
                        content_type="application/json", headers=headers)


@dataclasses.dataclass
class EmbeddingRequest:
    """A validated `/v1/embeddings` body."""

    texts: list[str]
    encoding_format: str = "float"
    dimensions: int | None = None


@dataclasses.dataclass
class ClassifyRequest:
    """A validated `/v1/classify` body."""

    texts: list[str]
    top_k: int | None = None


def parse_texts(body: Any, config: ServerConfig) -> list[str]:
    """The checked texts of a request body's `input` (a string or a list of strings).

    Args:
        body: the decoded JSON.
        config: limits.

    Returns:
        The texts.

    Raises:
        RequestError: the body is invalid (400) or over a limit (413).
    """
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object with an 'input' field, "
                                f"got {type(body).__name__}")
    if "input" not in body:
        raise RequestError(400, "missing required field 'input' (a string or a list of strings)")
    raw = body["input"]
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list):
        texts = raw
    else:
        raise RequestError(400, "'input' must be a string or a list of strings, got "
                                f"{type(raw).__name__}")
    if not texts:
        raise RequestError(400, "'input' must not be an empty list")
    if len(texts) > config.max_texts_per_request:
        raise RequestError(413, f"'input' has {len(texts)} texts; the limit is "
                                f"{config.max_texts_per_request} per request",
                           "request_too_large")
    for index, text in enumerate(texts):
        where = "'input'" if isinstance(raw, str) else f"'input[{index}]'"
        if not isinstance(text, str):
            hint = " (token arrays are not supported; send text)" if isinstance(
                text, int | list) else ""
            raise RequestError(400, f"{where} must be a string, got {type(text).__name__}{hint}")
        if not text:
            raise RequestError(400, f"{where} is an empty string")
        if len(text) > config.max_chars_per_text:
            raise RequestError(413, f"{where} has {len(text)} characters; the limit is "
                                    f"{config.max_chars_per_text}", "request_too_large")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RequestError(400, f"{where} is not valid Unicode text: {err.reason} at "
                                    f"character {err.start}") from None
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, f"'model' must be a string, got {type(model).__name__}")
    return texts


def parse_embedding_request(body: Any, config: ServerConfig,
                            dimension: int | None = None) -> EmbeddingRequest:
    """Validates a decoded `/v1/embeddings` body.

    Args:
        body: the decoded JSON.
        config: limits.
        dimension: the model's embedding size (the upper bound of `dimensions`).

    Returns:
        The `EmbeddingRequest`.

    Raises:
        RequestError: the body is invalid (400) or over a limit (413).
    """
    texts = parse_texts(body, config)
    encoding_format = body.get("encoding_format", "float")
    if encoding_format not in ENCODING_FORMATS:
        raise RequestError(400, f"'encoding_format' must be one of {list(ENCODING_FORMATS)}, "
                                f"got {encoding_format!r}")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        limit = dimension if dimension is not None else dimensions
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) \
                or not 1 <= dimensions <= limit:
            raise RequestError(400, f"'dimensions' must be an integer in [1, {limit}] (the "
                                    f"model's embedding size), got {dimensions!r}")
    return EmbeddingRequest(texts, encoding_format, dimensions)


def parse_classify_request(body: Any, config: ServerConfig,
                           num_labels: int | None = None) -> ClassifyRequest:
    """Validates a decoded `/v1/classify` body: `input` as for embeddings, and an
    optional `top_k` (how many labels to list per text, most probable first).

    Raises:
        RequestError: the body is invalid (400) or over a limit (413).
    """
    texts = parse_texts(body, config)
    top_k = body.get("top_k")
    if top_k is not None:
        limit = num_labels if num_labels is not None else top_k
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= limit:
            raise RequestError(400, f"'top_k' must be an integer in [1, {limit}] (the number "
                                    f"of labels), got {top_k!r}")
    return ClassifyRequest(texts, top_k)


def shorten(vectors: Any, dimensions: int | None, normalize: bool = True) -> Any:
    """The first `dimensions` components of each vector, renormalised to unit length
    (Matryoshka-style truncation, as OpenAI's `dimensions` asks) when the model's
    embeddings are normalised; unchanged when None."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    import numpy as np

    cut = vectors[:, :dimensions]
    if not normalize:
        return cut
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)


async def _read_body(request: web.Request, config: ServerConfig) -> Any:
    """The decoded JSON body, within the size and time limits.

    Raises:
        RequestError: too large (413), too slow (408), cut short or not JSON (400).
    """
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        raise RequestError(413, f"request body has {request.content_length} bytes; the limit "
                                f"is {config.max_body_bytes}", "request_too_large")
    try:
        raw = await asyncio.wait_for(request.read(), config.read_timeout_s)
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(413, f"request body is larger than the limit of "
                                f"{config.max_body_bytes} bytes", "request_too_large") from None
    except TimeoutError:
        raise RequestError(408, f"request body not received within "
                                f"{config.read_timeout_s:g} s", "request_timeout") from None
    except (ConnectionError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError) as err:
        logger.info("client went away while sending its body: %s", err)
        raise RequestError(400, f"request body ended early ({err})",
                           "incomplete_body") from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError, int-size limits
        raise RequestError(400, f"request body is not valid JSON: {err}") from None
    except RecursionError:
        raise RequestError(400, "request body is nested too deeply to parse") from None


async def _run_model(app: web.Application, texts: list[str]) -> Any:
    """The batched model call on `texts`, or the JSON error response for this request."""
    try:
        return await app[BATCHER_KEY].submit(texts)
    except QueueFullError as err:
        return error_response(503, f"server is overloaded: {err}; retry later",
                              "server_overloaded", headers={"Retry-After": "1"})
    except BatcherClosedError as err:
        return error_response(503, str(err), "server_unavailable")
    except NonFiniteOutputError as err:
        app[METRICS_KEY].model_errors.labels("non_finite").inc()
        logger.error("%s", err)
        return error_response(500, "the model produced non-finite values for this input; "
                                   "no result is returned", "model_error")
    except Exception as err:  # the model or tokenizer failed on this request alone
        app[METRICS_KEY].model_errors.labels(type(err).__name__).inc()
        logger.exception("model failed on a request of %d texts: %s", len(texts), err)
        return error_response(500, f"internal server error: the model failed on this input "
                                   f"({type(err).__name__})", "internal_error")


def _usage(token_counts: Sequence[int]) -> dict[str, int]:
    tokens = int(sum(token_counts))
    return {"prompt_tokens": tokens, "total_tokens": tokens}


async def _parse_and_run(request: web.Request, parse: Callable[[Any], Any]) -> Any:
    """The shared part of both endpoints: read and check the body (`parse` it), run the
    batched model on its texts. Returns `(parsed, result)`, or the JSON error response."""
    app = request.app
    try:
        parsed = parse(await _read_body(request, app[CONFIG_KEY]))
    except RequestError as err:
        return error_response(err.status, err.message, err.kind)
    result = await _run_model(app, parsed.texts)
    return result if isinstance(result, web.Response) else (parsed, result)


async def _embeddings(request: web.Request) -> web.Response:
    app = request.app
    answer = await _parse_and_run(request, lambda body: parse_embedding_request(
        body, app[CONFIG_KEY], app[MODEL_KEY].dimension))
    if isinstance(answer, web.Response):
        return answer
    parsed, result = answer
    data = []
    normalize = getattr(app[MODEL_KEY], "normalize", True)
    for index, vector in enumerate(shorten(result.vectors, parsed.dimensions, normalize)):
        if parsed.encoding_format == "base64":
            embedding: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return web.json_response({"object": "list", "data": data, "model": app[NAME_KEY],
                              "usage": _usage(result.token_counts)})


async def _classify(request: web.Request) -> web.Response:
    app = request.app
    answer = await _parse_and_run(request, lambda body: parse_classify_request(
        body, app[CONFIG_KEY], app[MODEL_KEY].num_labels))
    if isinstance(answer, web.Response):
        return answer
    parsed, result = answer
    data = []
    for index, row in enumerate(result.scores):
        order = sorted(range(len(result.labels)), key=lambda i: -float(row[i]))
        shown = order[:parsed.top_k] if parsed.top_k is not None else order
        data.append({"object": "classification", "index": index,
                     "label": result.labels[order[0]], "score": float(row[order[0]]),
                     "scores": {result.labels[i]: float(row[i]) for i in shown}})
    return web.json_response({"object": "list", "data": data, "model": app[NAME_KEY],
                              "usage": _usage(result.token_counts)})


def _elsewhere(path: str, kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler for the endpoint of the other model kind: a 404 naming the right one."""
    async def handler(request: web.Request) -> web.Response:
        return error_response(404, f"this server serves a {kind} model; use POST {path}",
                              "not_found")

    return handler


async def _healthz(request: web.Request) -> web.Response:
    app = request.app
    config = app[CONFIG_KEY]
    return web.json_response({
        "status": "ok",
        "model": app[NAME_KEY],
        "model_info": app[MODEL_KEY].info(),
        "queue_depth": app[BATCHER_KEY].depth,
        "limits": dataclasses.asdict(config),
    })


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS_KEY].render().encode("utf-8"),
                        headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def _observe(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
    """Counts every request and turns aiohttp's own HTTP errors into JSON errors."""
    start = time.perf_counter()
    resource = request.match_info.route.resource
    endpoint = resource.canonical if resource is not None else "unmatched"
    status = 500
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                status = exc.status
                raise
            response = error_response(exc.status, exc.reason,
                                      ERROR_KINDS.get(exc.status, "http_error"))
        except Exception:
            logger.exception("unhandled error on %s %s", request.method, request.path)
            response = error_response(500, "internal server error", "internal_error")
        status = response.status
        return response
    finally:
        request.app[METRICS_KEY].observe_request(endpoint, request.method, status,
                                                 time.perf_counter() - start)


def create_app(model: Embedder | Classifier, config: ServerConfig | None = None) -> web.Application:
    """Builds the aiohttp application serving `model`.

    An embedding model is served at `POST /v1/embeddings`, a classifier (a model whose
    `kind` is "classifier") at `POST /v1/classify`; the other path answers 404 naming
    the right one. The dynamic batcher and its model thread start with the application
    and stop with its cleanup.

    Args:
        model: an `EmbeddingModel` or `serving.classify.ClassifierModel` (or anything
            with their `embed` / `classify`, `info`, `name`).
        config: limits and batching; defaults when None.

    Returns:
        The `web.Application`.

    Example:
    >>> app = create_app(open_model("runs/student-onnx"), ServerConfig(max_wait_ms=2))
    >>> web.run_app(app, host="127.0.0.1", port=8080)
    """
    config = config or ServerConfig()
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[_observe])
    app[MODEL_KEY] = model
    app[CONFIG_KEY] = config
    app[NAME_KEY] = config.model_name or model.name
    classifier = getattr(model, "kind", EXPORT_KINDS[0]) == EXPORT_KINDS[1]
    if classifier:
        def run(texts: list[str]) -> Any:
            return model.classify(texts, batch_size=config.max_batch_size)
    else:
        def run(texts: list[str]) -> Any:
            return model.embed(texts, batch_size=config.max_batch_size)
    batcher = DynamicBatcher(run, max_batch_size=config.max_batch_size,
                             max_wait_ms=config.max_wait_ms, max_queue=config.max_queue)
    metrics = ServingMetrics(queue_depth=lambda: batcher.depth)
    batcher.metrics = metrics
    app[BATCHER_KEY] = batcher
    app[METRICS_KEY] = metrics

    async def start_batcher(app: web.Application) -> None:
        await app[BATCHER_KEY].start()

    async def stop_batcher(app: web.Application) -> None:
        await app[BATCHER_KEY].close()

    app.on_startup.append(start_batcher)
    app.on_cleanup.append(stop_batcher)
    if classifier:
        app.router.add_post(CLASSIFY_PATH, _classify)
        app.router.add_post(EMBEDDINGS_PATH, _elsewhere(CLASSIFY_PATH, "classifier"))
    else:
        app.router.add_post(EMBEDDINGS_PATH, _embeddings)
        app.router.add_post(CLASSIFY_PATH, _elsewhere(EMBEDDINGS_PATH, "embedding"))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


def make_runner(app: web.Application, access_log: logging.Logger | None = None
                ) -> GuardedAppRunner:
    """The runner of an application made by `create_app`, with its `ServerConfig`'s
    connection caps, head deadline, keep-alive and shutdown bounds."""
    config, metrics = app[CONFIG_KEY], app[METRICS_KEY]
    guard = ConnectionGuard(config.max_connections, config.max_connections_per_client,
                            config.header_timeout_s, metrics)
    metrics.open_connections.set_function(lambda: guard.open)
    return GuardedAppRunner(app, guard=guard, access_log=access_log,
                            keepalive_timeout=config.keepalive_timeout_s,
                            shutdown_timeout=config.shutdown_timeout_s)


class BackgroundServer:
    """Runs an aiohttp application on 127.0.0.1 in a background thread.

    Used by the load test (`tf-minilm bench --load-test`) and by tests.

    Args:
        app: the application.
        host: address to bind; loopback by default.
        port: TCP port; 0 picks a free one (see `port` / `url` after `start`).

    Example:
    >>> with BackgroundServer(create_app(model)) as server:
    ...     requests.post(server.url + "/v1/embeddings", json={"input": "hi"})
    """

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: GuardedAppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:41234`."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        """Starts the server; returns once it accepts connections."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="serving-http",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout)
        return self

    async def _start(self) -> None:
        self._runner = make_runner(self.app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the server and its thread."""
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        self._loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(model_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8080,
          model_file: str = ONNX_MODEL_FILE, max_seq_len: int | None = None,
          threads: int | None = None, config: ServerConfig | None = None,
          access_log: bool = False) -> None:
    """Loads the model folder and serves it until SIGTERM/SIGINT, then stops gracefully.

    Args:
        model_dir: exported model folder (or a `.onnx` file in it): an embedding
            export, served at `/v1/embeddings`, or a classifier, at `/v1/classify`.
        host: address to bind (loopback by default).
        port: TCP port.
        model_file: ONNX file in the folder ("model.onnx", "model.int8.onnx", or "auto":
            `serving.runtime.choose_served_file`).
        max_seq_len: truncation length; default from `export_report.json`.
        threads: onnxruntime intra-op threads; None lets onnxruntime decide.
        config: limits and batching.
        access_log: log one line per request (logger `aiohttp.access`).
    """
    if model_file == AUTO_MODEL_FILE:
        resolve_model_path(model_dir)  # a missing folder is named before any timing
        model_file, why = choose_served_file(model_dir, threads)
        logger.info("--model-file auto: %s (%s)", model_file, why)
    model = open_model(model_dir, model_file=model_file, max_seq_len=max_seq_len,
                       intra_op_threads=threads)
    app = create_app(model, config)
    what = (f"labels {', '.join(model.labels)}" if model.kind == EXPORT_KINDS[1]
            else f"dim {model.dimension}")
    logger.info("serving %s (%s %s, %s, %s) on http://%s:%d%s", app[NAME_KEY], model.kind,
                model.model_path.name, model.precision, what, host, port,
                CLASSIFY_PATH if model.kind == EXPORT_KINDS[1] else EMBEDDINGS_PATH)
    asyncio.run(_serve_until_signal(
        app, host, port, logging.getLogger("aiohttp.access") if access_log else None))


async def _serve_until_signal(app: web.Application, host: str, port: int,
                              access_log: logging.Logger | None) -> None:
    """Serves `app` until SIGTERM or SIGINT, then shuts down gracefully (see the module
    docstring): aiohttp's runner cleanup refuses new connections first and waits at most
    `shutdown_timeout_s` for in-flight requests."""
    runner = make_runner(app, access_log)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        logger.info("stopping: new connections refused, in-flight requests answered "
                    "(at most %g s)", app[CONFIG_KEY].shutdown_timeout_s)
    finally:
        await runner.cleanup()
    logger.info("stopped")
