"""Streamed answers (Server-Sent Events, sse-starlette as llama_cpp.server uses it) that hold the model's turn
until the stream ends.

The request waits for its turn and computes the head of the stream, up to the first chunk that carries
generated output (the prompt's evaluation and first token; a chat handler may yield the assistant's role
before it), before the response starts, so a full queue, a prompt longer than the context or a failing model
are HTTP errors with their status code. After that, an error ends the stream with an OpenAI-style error event
(`data: {"error": {...}}`, which the openai client raises as APIError) instead of `data: [DONE]`.

The client's disconnect (sse-starlette's listener) stops the model before its next token; the turn ends, and
the next request gets the model, once the worker thread in flight is done. Nothing runs ahead of the client:
a chunk is computed when the previous one was handed to the connection, so a client that stops reading stops
the generation (and holds the model until it reads, disconnects, or a send waits SEND_TIMEOUT_S).
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Iterator, Optional

import anyio
from sse_starlette.sse import EventSourceResponse, SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from .errors import error_body, response_for
from .model import GenerationStopped
from .service import StopSignal, Turn

SEND_TIMEOUT_S = 120.0     # a client that takes no data for this long is dropped, and the model freed

_END = object()
log = logging.getLogger("flashmoe.serve")


def next_chunk(iterator: Iterator[Any]) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        return _END


def _generated(chunk: Any) -> bool:
    """Whether a chunk carries generated output (or ends the stream), not only a chat reply's role."""
    if chunk is _END or not isinstance(chunk, dict):
        return True
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        if choice.get("finish_reason") or delta is None or any(v for k, v in delta.items() if k != "role"):
            return True
    return False


def stream_head(iterator: Iterator[Any]) -> list[Any]:
    """The chunks up to and including the first with generated output (or the end)."""
    head = [next_chunk(iterator)]
    while not _generated(head[-1]):
        head.append(next_chunk(iterator))
    return head


def _close(iterator: Iterator[Any]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


class HeldStream:
    """The model's turn, the llama iterator and the stream's head (stream_head), until the stream is over."""

    def __init__(self, turn: Turn, iterator: Iterator[Any], head: list[Any]) -> None:
        self.turn, self.iterator, self.head = turn, iterator, head
        self.generated = False           # the model's part is over: what is left is sending the last event
        self._finished = False

    @property
    def stop(self) -> StopSignal:
        return self.turn.stop

    async def events(self) -> AsyncIterator[dict[str, str]]:
        counters = self.turn.service.counters
        item: Any = None
        try:
            for item in self.head:
                if item is _END:
                    break
                yield {"data": json.dumps(item)}
            while item is not _END:
                item = await self.turn.run(next_chunk, self.iterator)
                if item is not _END:
                    yield {"data": json.dumps(item)}
            self.generated = True
            yield {"data": "[DONE]"}
        except GenerationStopped:
            self.generated = True
            if not self.stop.is_set():       # the server is stopping (a gone client reads nothing more)
                counters.stream_errors += 1
                yield {"data": json.dumps(error_body("the server is shutting down", "server_error",
                                                     "server_shutting_down"))}
        except Exception as exc:
            self.generated = True
            counters.stream_errors += 1
            yield {"data": bytes(response_for(exc).body).decode()}
        finally:
            await self.finish()

    async def finish(self) -> None:
        """Close the llama iterator (in the worker, it is the model's code) and end the turn; once."""
        if self._finished:
            return
        self._finished = True
        with anyio.CancelScope(shield=True):
            try:
                await self.turn.run(_close, self.iterator)
            except Exception:
                pass                        # a failed model was closed already; the turn ends anyway
            finally:
                self.turn.end()


class HeldEventSource(EventSourceResponse):
    """sse-starlette's response for a HeldStream: stops the model when the client leaves, ends the turn when
    the response is over however it ends (even if the stream never started)."""

    def __init__(self, held: HeldStream, ping_s: Optional[float]) -> None:
        self._held = held

        async def client_left(_message: Message) -> None:
            # uvicorn also reports a disconnect once the response is complete: only a client leaving while the
            # model still works for it counts
            if not held.generated:
                held.stop.set()
                held.turn.service.counters.disconnects += 1

        super().__init__(held.events(), sep="\n", ping=ping_s, send_timeout=SEND_TIMEOUT_S,
                         client_close_handler_callable=client_left)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.warning("a client took no data for %.0f s: its stream was dropped", SEND_TIMEOUT_S)
        finally:
            with anyio.CancelScope(shield=True):
                await self._held.finish()
