"""A request's turn on the model: wait in the bounded queue, get the model, run llama-cpp-python's call in a
worker thread, and stop it within a token when the client leaves or the server stops.

Every use of the model runs in a worker thread (model loads take seconds, tokens take what they take) and
only during a turn: one at a time, so llama-cpp-python's Llama, which is not thread-safe, is never shared. A
thread cannot be cancelled, so the event loop waits for the one in flight; what makes that short is the stop
check the served model consults before every token (model.py). When the expert store fails (FlashMoeError),
the model is closed, and the next request loads it again (proxy.py).
"""

from __future__ import annotations

import threading
from typing import Any, Awaitable, Callable, Optional, TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from ..runtime_errors import FlashMoeError
from .errors import ModelFailed
from .gate import Gate
from .metrics import RequestCounters
from .model import ServedLlama
from .proxy import ModelProxy

T = TypeVar("T")


class StopSignal:
    """A request's "stop now": set from the event loop (client gone), read by the worker thread before every
    evaluation. It remembers how many evaluations the model had done when it was set, so the turn can count
    those that ran after it (at most the one in flight)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.llama: Optional[ServedLlama] = None     # the model, once the request has its turn
        self.evals_at_stop: Optional[int] = None

    def set(self) -> None:
        if self._event.is_set():
            return
        if self.llama is not None:
            self.evals_at_stop = self.llama.evals    # read first: an eval finishing after this counts as after
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class Turn:
    """One request's hold on the model, from its place in the queue to end(); the model is `llama`."""

    def __init__(self, service: "Service", llama: ServedLlama, stop: StopSignal) -> None:
        self.service, self.llama, self.stop = service, llama, stop
        stop.llama = llama
        self._ended = False

    def should_stop(self) -> bool:
        return self.stop.is_set() or self.service.stopping.is_set()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker thread, the model stoppable meanwhile. An expert store failure closes the model
        and is raised as ModelFailed."""
        service = self.service

        def work() -> T:
            with service.in_use:
                self.llama.stop_when(self.should_stop)
                try:
                    return fn(*args)
                except FlashMoeError as exc:
                    reason = (f"the expert store failed: {exc}. The model cannot continue and was closed; the "
                              f"server loads it again for the next request (GET /health shows its state)")
                    service.proxy.discard(reason)
                    raise ModelFailed(reason) from exc
                finally:
                    self.llama.stop_when(None)

        return await anyio.to_thread.run_sync(work)

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self.stop.evals_at_stop is not None:
            self.service.counters.evals_after_stop += self.llama.evals - self.stop.evals_at_stop
        self.service.gate.release()


class Service:
    """The model behind the routes: the queue (Gate), the loaded model (ModelProxy) and the counters."""

    def __init__(self, proxy: ModelProxy, gate: Gate, counters: RequestCounters) -> None:
        self.proxy, self.gate, self.counters = proxy, gate, counters
        self.stopping = threading.Event()
        self.in_use = threading.Lock()     # held by the worker thread that runs the model

    async def begin(self, alias: Optional[str], stop: StopSignal) -> Turn:
        """Wait for the model (QueueFull, ShuttingDown), then load it if another one is loaded or it failed
        (ModelUnavailable)."""
        await self.gate.acquire()
        try:
            def model() -> ServedLlama:
                with self.in_use:
                    return self.proxy(alias)
            llama = await anyio.to_thread.run_sync(model)
        except BaseException:
            self.gate.release()
            raise
        return Turn(self, llama, stop)

    def begin_stop(self) -> None:
        """Shutdown: refuse new and waiting requests, stop the running generation before its next token.
        Called from a signal handler: sets flags only."""
        self.stopping.set()
        self.gate.closing = True

    def close(self, wait_s: float) -> bool:
        """Close the model once the worker thread in flight (if any) is done; False if it did not end in time."""
        if not self.in_use.acquire(timeout=wait_s):
            return False
        try:
            self.proxy.free()
        finally:
            self.in_use.release()
        return True


async def until_disconnect(request: Request, stop: StopSignal,
                           body: Callable[[], Awaitable[T]]) -> tuple[Optional[T], bool]:
    """Run body() while watching the client: when it disconnects, set `stop` (the model stops before its next
    token) and cancel body's wait (in the queue, or for the worker thread in flight to end). Returns (result,
    client_gone); body's exceptions are raised when the client is still there."""
    result: Optional[T] = None
    error: Optional[Exception] = None
    gone = False
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                nonlocal gone
                while True:
                    message = await request.receive()
                    if message["type"] == "http.disconnect":
                        gone = True
                        stop.set()
                        scope.cancel()
                        return

            tg.start_soon(watch)
            try:
                result = await body()
            except Exception as exc:
                error = exc
            finally:
                tg.cancel_scope.cancel()
    if gone:
        return result, True
    if error is not None:
        raise error
    return result, False
