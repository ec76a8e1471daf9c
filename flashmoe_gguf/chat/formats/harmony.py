"""GPT-OSS (OpenAI harmony): messages in channels; reasoning in `analysis`, the answer in `final`, tool calls
in `commentary` addressed to functions.NAME.

    <|channel|>analysis<|message|>The user wants the weather.<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}
    (then <|call|>, which ends generation)

The prompt ends with `<|start|>assistant`, so the output starts with the first message's header. The recipient
may also stand in the role header (`<|start|>assistant to=functions.get_weather<|channel|>commentary json`).
<|call|> and <|return|> end the turn; <|end|> only ends a message.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..grammar import Function, Grammar, lit
from ..scan import dumps, join_nonempty, object_at, visible
from ..types import Parsed, ParseOptions, ReasoningState, ToolCall
from .base import ChatFormat

START, CHANNEL, MESSAGE, CONSTRAIN = "<|start|>", "<|channel|>", "<|message|>", "<|constrain|>"
END, CALL, RETURN = "<|end|>", "<|call|>", "<|return|>"
_BODY_ENDS = (END, CALL, RETURN, START)
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")


def _first_end(text: str, pos: int) -> tuple[int, str]:
    hits = [(i, m) for m in _BODY_ENDS if (i := text.find(m, pos)) >= 0]
    return min(hits) if hits else (-1, "")


class HarmonyFormat(ChatFormat):
    name = "harmony"

    def prepare_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # the template reads an assistant turn's reasoning from `thinking`; with tool calls it renders
        # content or thinking, not both (as llama.cpp does: the reasoning is kept)
        for m in messages:
            if isinstance(m.get("reasoning_content"), str) and m.get("role") == "assistant":
                m["thinking"] = m.pop("reasoning_content")
                if m.get("tool_calls"):
                    m.pop("content", None)
        return messages

    def stops(self) -> tuple[str, ...]:
        return (CALL, RETURN)

    def call_example(self) -> str:
        return f'{CHANNEL}commentary to=functions.function_name {CONSTRAIN}json{MESSAGE}{{"parameter": "value"}}{CALL}'

    def parse(self, text: str, final: bool, opts: ParseOptions) -> Parsed:
        reasoning: list[str] = []
        content: list[str] = []
        calls: list[ToolCall] = []
        pos = 0
        while pos < len(text):
            m = text.find(MESSAGE, pos)
            if m < 0:               # a header still being written; at the end, text that is no header is content
                rest = text[pos:]
                if final and not rest.lstrip().startswith(("assistant", "<|", "to=")):
                    content.append(rest)
                break
            header = text[pos:m]
            body_start = m + len(MESSAGE)
            t, marker = _first_end(text, body_start)
            complete = t >= 0
            body = text[body_start:t] if complete else visible(text[body_start:], final, _BODY_ENDS)
            recipient = _RECIPIENT.search(header)
            channel = _CHANNEL.search(header)
            if recipient:
                name = recipient.group(1).removeprefix("functions.")
                call = None
                if recipient.group(1).startswith("functions.") and name in opts.tools:
                    got = object_at(body, 0)
                    if got is None and not (complete or final):
                        break                   # arguments still being written
                    if got is not None and isinstance(got[0], dict):
                        call = ToolCall(name, dumps(got[0]))
                if call is not None:
                    calls.append(call)
                else:
                    content.append(text[pos:m] + MESSAGE + body)
            elif channel and channel.group(1) == "analysis":
                reasoning.append(body)
            else:
                content.append(body)
            if not complete:
                break
            pos = t + (len(marker) if marker != START else 0)
            if text.startswith(START, pos):
                pos += len(START)
            elif not final and START.startswith(text[pos:]):
                break
        return Parsed(join_nonempty(reasoning, "\n\n"), join_nonempty(content, "\n\n"), tuple(calls))

    def calls_rule(self, g: Grammar, functions: Sequence[Function], parallel: bool) -> str:
        # one call per turn: <|call|> ends generation
        alts = [f"{lit(f'{CHANNEL}commentary to=functions.{f.name} {CONSTRAIN}json{MESSAGE}')} "
                f"{g.json(f.parameters, f'args{k}')}" for k, f in enumerate(functions)]
        return g.rule("call", " | ".join(f"( {a} )" for a in alts))

    def reasoning_rule(self, g: Grammar, state: ReasoningState) -> str:
        analysis = f"{lit(f'{CHANNEL}analysis{MESSAGE}')} {g.until(END)} {lit(f'{END}{START}assistant')}"
        return f"( {analysis} )?"
