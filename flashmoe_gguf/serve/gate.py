"""The bounded queue in front of the model: one request on the model at a time, in arrival order, and at most
`capacity` waiting; one more is refused at once (QueueFull: 503 with Retry-After) rather than left to wait
for minutes behind long generations."""

from __future__ import annotations

import math
import time

import anyio


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(f"the model is busy and {waiting} request{'s are' if waiting != 1 else ' is'} already "
                         f"waiting for it; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    def __init__(self) -> None:
        super().__init__("the server is shutting down")


class Gate:
    """Admission to the model. acquire() and release() may be called from different tasks (a streamed response
    releases the model when its stream ends)."""

    RETRY_MIN_S, RETRY_MAX_S = 1, 120

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._turn = anyio.Semaphore(1)     # FIFO: waiters are served in arrival order
        self.waiting = 0
        self.active = False
        self.closing = False
        self.rejected = 0                   # requests refused because the queue was full
        self._started = 0.0
        self._mean_s = 0.0                  # moving average of a request's time on the model

    async def acquire(self) -> None:
        if self.closing:
            raise ShuttingDown()
        busy = self.active or self.waiting > 0
        if busy and self.waiting >= self.capacity:
            self.rejected += 1
            raise QueueFull(self.waiting, self.retry_after_s())
        self.waiting += 1
        try:
            await self._turn.acquire()
        finally:
            self.waiting -= 1
        if self.closing:
            self._turn.release()
            raise ShuttingDown()
        self.active = True
        self._started = time.monotonic()

    def release(self) -> None:
        took = time.monotonic() - self._started
        self._mean_s = took if self._mean_s == 0.0 else 0.8 * self._mean_s + 0.2 * took
        self.active = False
        self._turn.release()

    def retry_after_s(self) -> int:
        """About when a place frees: one request's usual time on the model (a place frees when the active
        request ends)."""
        return min(self.RETRY_MAX_S, max(self.RETRY_MIN_S, math.ceil(self._mean_s)))
