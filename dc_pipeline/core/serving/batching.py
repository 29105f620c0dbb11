"""Dynamic batching: concurrent requests for one model scored together in one forward pass.

A request joins a queue; one worker takes the first waiting request, then everything that arrives
within ``max_wait_seconds`` (or is already waiting) up to ``max_batch``, scores the batch in a thread
(torch releases the GIL) and answers each request. ``max_batch = 1`` scores requests one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class DynamicBatcher(Generic[Item, Result]):
    """Batches ``submit``-ted items for ``score(items) -> results`` (same order, same length)."""

    def __init__(
        self, score: Callable[[Sequence[Item]], Sequence[Result]], max_batch: int = 64, max_wait_seconds: float = 0.002
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_seconds < 0:
            raise ValueError(f"max_wait_seconds must be >= 0, got {max_wait_seconds}")
        self.score = score
        self.max_batch = max_batch
        self.max_wait_seconds = max_wait_seconds
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Item) -> tuple[Result, int]:
        """The item's result and the size of the batch it was scored in."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def _gather(self) -> list[tuple[Item, asyncio.Future]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_seconds
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            live = [(item, future) for item, future in batch if not future.done()]  # callers that gave up
            if not live:
                continue
            try:
                results = await asyncio.to_thread(self.score, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"scored {len(results)} results for {len(live)} items")
            except Exception as exc:  # every caller of the batch gets the error
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result((result, len(live)))
