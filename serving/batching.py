"""Dynamic batching: texts of concurrent requests share one model call.

Owns: the request queue and the batch loop. Imports: `serving.metrics`.

Requests wait in a bounded asyncio queue. One worker task takes the oldest request,
then keeps taking requests for up to `max_wait_ms` (or until `max_batch_size` texts
are gathered), runs the model on all their texts in a worker thread so the event
loop never blocks, and hands each request its own slice of the result. When a shared
call fails, each of its requests runs alone, so an error reaches only the request that
caused it. A full queue rejects new requests at once (`QueueFullError`) instead of
growing without bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)


class BatchResult(Protocol):
    """What a model call returns (`Embeddings`, `Classifications`): one token count per
    text, and the results of a range of its texts."""

    token_counts: list[int]

    def slice(self, start: int, stop: int) -> BatchResult: ...


class QueueFullError(RuntimeError):
    """The request queue is full; the caller should answer 503 and let the client retry."""


class BatcherClosedError(RuntimeError):
    """The batcher was closed (server shutting down) before the request ran."""


@dataclasses.dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future


class DynamicBatcher:
    """Gathers the texts of concurrent requests into model calls.

    Args:
        embed: called in a worker thread with a list of texts; returns a `BatchResult`
            (`Embeddings`, `Classifications`) with one row and one token count per
            text, in order.
        max_batch_size: most texts gathered into one call (a single request with more
            texts still runs alone; `embed` splits it).
        max_wait_ms: how long the first request of a batch waits for company.
        max_queue: most requests waiting; further ones get `QueueFullError`.
        metrics: optional `ServingMetrics` receiving batch sizes and timings.

    Example:
    >>> batcher = DynamicBatcher(lambda texts: model.embed(texts, batch_size=32))
    >>> await batcher.start()
    >>> result = await batcher.submit(["hello", "world"])
    >>> await batcher.close()
    """

    def __init__(self, embed: Callable[[list[str]], BatchResult], max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 64,
                 metrics: ServingMetrics | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self._embed = embed
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: asyncio.Queue[_Request] | None = None
        self._carry: _Request | None = None
        self._inflight: list[_Request] = []
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the batch being computed)."""
        queued = self._queue.qsize() if self._queue is not None else 0
        return queued + (1 if self._carry is not None else 0)

    async def start(self) -> None:
        """Starts the worker task on the running event loop."""
        if self._task is not None:
            raise RuntimeError("DynamicBatcher already started")
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serving-model")
        self._task = asyncio.create_task(self._work(), name="serving-batcher")

    async def submit(self, texts: Sequence[str]) -> BatchResult:
        """Queues texts and waits for their embeddings.

        Args:
            texts: non-empty list of strings.

        Returns:
            The `BatchResult` of exactly these texts, in order.

        Raises:
            QueueFullError: `max_queue` requests are already waiting.
            BatcherClosedError: the batcher closed before the request ran.
        """
        if self._queue is None or self._task is None or self._task.done():
            raise BatcherClosedError("the batcher is not running")
        request = _Request(list(texts), asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            raise QueueFullError(
                f"request queue is full ({self.max_queue} requests waiting)") from None
        return await request.future

    async def close(self) -> None:
        """Stops the worker; requests still waiting fail with `BatcherClosedError`."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        waiting = list(self._inflight)
        if self._carry is not None:
            waiting.append(self._carry)
            self._carry = None
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for request in waiting:
            if not request.future.done():
                request.future.set_exception(BatcherClosedError("server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _next_batch(self) -> list[_Request]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch, size = [first], len(first.texts)
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch_size:
            try:
                request = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(request.texts) > self.max_batch_size:
                self._carry = request  # first of the next batch
                break
            batch.append(request)
            size += len(request.texts)
        return batch

    async def _run_alone(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        for request in batch:
            if request.future.done():
                continue
            start = time.perf_counter()
            try:
                result = await loop.run_in_executor(self._executor, self._embed, request.texts)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if not request.future.done():
                    request.future.set_exception(err)
                continue
            if self.metrics is not None:
                self.metrics.observe_batch(len(request.texts), sum(result.token_counts),
                                           time.perf_counter() - start)
            if not request.future.done():
                request.future.set_result(result)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [r for r in await self._next_batch() if not r.future.done()]
            if not batch:
                continue
            texts = [text for request in batch for text in request.texts]
            self._inflight = batch
            start = time.perf_counter()
            try:
                result = await loop.run_in_executor(self._executor, self._embed, texts)
            except asyncio.CancelledError:
                raise  # close() fails the in-flight requests
            except Exception as err:
                if len(batch) == 1:
                    self._inflight = []
                    logger.warning("model call on %d texts failed: %s", len(texts), err)
                    if not batch[0].future.done():
                        batch[0].future.set_exception(err)
                    continue
                # An error belongs to its request: run each alone, so one bad text (or a
                # row the model cannot embed) fails only the request that sent it.
                logger.warning("model call on %d requests failed (%s); running each alone",
                               len(batch), err)
                await self._run_alone(batch)
                self._inflight = []
                continue
            self._inflight = []
            if self.metrics is not None:
                self.metrics.observe_batch(len(texts), sum(result.token_counts),
                                           time.perf_counter() - start)
            offset = 0
            for request in batch:
                n = len(request.texts)
                if not request.future.done():
                    request.future.set_result(result.slice(offset, offset + n))
                offset += n
