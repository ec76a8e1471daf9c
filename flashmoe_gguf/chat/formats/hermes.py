"""Qwen2.5 / Qwen3 / QwQ (Hermes-style) tool calls: JSON in <tool_call> tags, several possible.

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from ..grammar import Function, Grammar, lit, one_or_more
from ..scan import CallReader, Found, arguments_object, parse_object
from .base import MarkerFormat, known_call

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesFormat(MarkerFormat):
    name = "hermes"
    openers = (OPEN,)

    def call_example(self) -> str:
        return OPEN + '\n{"name": "function_name", "arguments": {"parameter": "value"}}\n' + CLOSE

    def reader(self, tools: dict[str, Any]) -> CallReader:
        def read(text: str, i: int, final: bool) -> Found:
            start = i + len(OPEN)
            j = text.find(CLOSE, start)
            if j < 0:
                return Found((), i, "pending")
            body = parse_object(text[start:j].strip())
            call = None
            if body is not None and isinstance(body.get("name"), str):
                args = body.get("arguments", body.get("parameters"))
                call = known_call(tools, body["name"], arguments_object(args))
            if call is None:
                return Found((), i, "invalid", j + len(CLOSE))
            return Found((call,), j + len(CLOSE), "done")
        return read

    def calls_rule(self, g: Grammar, functions: Sequence[Function], parallel: bool) -> str:
        alts = []
        for k, f in enumerate(functions):
            head = lit(OPEN + '\n{"name": ' + json.dumps(f.name, ensure_ascii=False) + ', "arguments": ')
            alts.append(f"{head} {g.json(f.parameters, f'args{k}')} {lit('}' + chr(10) + CLOSE)}")
        call = g.rule("call", " | ".join(alts))
        return one_or_more(call, lit("\n"), parallel)
