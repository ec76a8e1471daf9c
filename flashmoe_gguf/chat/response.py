"""OpenAI chat completion objects: the whole message, and the stream of deltas between successive parses."""

from __future__ import annotations

import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from .formats import ChatFormat
from .types import Parsed, ToolCall

_ALNUM = string.ascii_letters + string.digits


def random_alnum(n: int = 24) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


@dataclass
class CallIds:
    """Ids of one response's tool calls: the model's own when it wrote one, else new ones (the format's
    kind, e.g. Mistral's 9 letters and digits). `random_text` is replaceable for reproducible tests."""
    fmt: ChatFormat
    random_text: Callable[[], str] = random_alnum
    _given: list[str] = field(default_factory=list)

    def get(self, index: int, call: ToolCall) -> str:
        while len(self._given) <= index:
            self._given.append("")
        if not self._given[index]:
            self._given[index] = call.id or self.fmt.new_call_id(self.random_text())
        return self._given[index]


@dataclass(frozen=True)
class Meta:
    """What every object of one response shares."""
    id: str
    created: int
    model: str

    @staticmethod
    def new(model: str) -> "Meta":
        return Meta(f"chatcmpl-{uuid.uuid4()}", int(time.time()), model)


def finish_reason(parsed: Parsed, generation_reason: str | None) -> str:
    if generation_reason == "length":
        return "length"
    return "tool_calls" if parsed.tool_calls else "stop"


def message(parsed: Parsed, ids: CallIds) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant",
                           "content": parsed.content if parsed.content or not parsed.tool_calls else None}
    if parsed.reasoning:
        msg["reasoning_content"] = parsed.reasoning
    if parsed.tool_calls:
        msg["tool_calls"] = [{"id": ids.get(i, c), "type": "function",
                              "function": {"name": c.name, "arguments": c.arguments}}
                             for i, c in enumerate(parsed.tool_calls)]
    return msg


def completion(meta: Meta, parsed: Parsed, ids: CallIds, reason: str, prompt_tokens: int,
               completion_tokens: int) -> dict[str, Any]:
    return {"id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
            "choices": [{"index": 0, "message": message(parsed, ids), "logprobs": None, "finish_reason": reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def chunk(meta: Meta, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}


@dataclass
class DeltaStream:
    """Turns successive parses of the growing output into deltas: new reasoning text, new content text, and
    each new tool call (its id, type and name, then its arguments). Parses are prefixes of the next (see
    types.Parsed); a parse that is not (which the parsers never produce) adds nothing rather than
    contradicting what was sent."""
    ids: CallIds
    reasoning: str = ""
    content: str = ""
    n_calls: int = 0

    def deltas(self, parsed: Parsed) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if parsed.reasoning.startswith(self.reasoning) and len(parsed.reasoning) > len(self.reasoning):
            out.append({"reasoning_content": parsed.reasoning[len(self.reasoning):]})
            self.reasoning = parsed.reasoning
        if parsed.content.startswith(self.content) and len(parsed.content) > len(self.content):
            out.append({"content": parsed.content[len(self.content):]})
            self.content = parsed.content
        for i in range(self.n_calls, len(parsed.tool_calls)):
            call = parsed.tool_calls[i]
            out.append({"tool_calls": [{"index": i, "id": self.ids.get(i, call), "type": "function",
                                        "function": {"name": call.name, "arguments": ""}}]})
            out.append({"tool_calls": [{"index": i, "function": {"arguments": call.arguments}}]})
        self.n_calls = max(self.n_calls, len(parsed.tool_calls))
        return out
