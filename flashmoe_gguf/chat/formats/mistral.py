"""Mistral / Mixtral tool calls after the [TOOL_CALLS] token, in either of Mistral's two forms.

Nemo, Mixtral-8x22B (a JSON list):   [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, ...]
                                     (a single object without the list is read too)
Small 3.2, Devstral (name and args): [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]...
                                     (Small 3.2 may write [CALL_ID]abcdef123 before [ARGS])

There is no closing token (the end of the turn closes the calls): a call is decided when its JSON is.
Mistral's templates want tool call ids of 9 letters and digits; ours are made so.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from ..grammar import Function, Grammar, lit, one_or_more
from ..scan import CallReader, Found, arguments_object, object_at
from .base import MarkerFormat, known_call

TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
_ID = re.compile(r"^[A-Za-z0-9]{9}$")


def _model_id(value: Any) -> str | None:
    return value if isinstance(value, str) and _ID.match(value) else None


class MistralFormat(MarkerFormat):
    name = "mistral"
    openers = (TOOL_CALLS,)

    def __init__(self, think_tags: tuple[str, str] | None = None, args_form: bool = False) -> None:
        super().__init__(think_tags)
        self.args_form = args_form      # the template writes NAME[ARGS]{...} (the grammar writes that form)

    def call_example(self) -> str:
        if self.args_form:
            return TOOL_CALLS + 'function_name' + ARGS + '{"parameter": "value"}'
        return TOOL_CALLS + '[{"name": "function_name", "arguments": {"parameter": "value"}}]'

    def new_call_id(self, random_text: str) -> str:
        return random_text[:9]

    def reader(self, tools: dict[str, Any]) -> CallReader:
        def read(text: str, i: int, final: bool) -> Found:
            pos = i + len(TOOL_CALLS)
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos == len(text):
                return Found((), i, "pending")
            if text[pos] in "[{":
                return _list_form(text, i, pos, final, tools)
            return _args_form(text, i, pos, final, tools)
        return read

    def calls_rule(self, g: Grammar, functions: Sequence[Function], parallel: bool) -> str:
        alts = []
        for k, f in enumerate(functions):
            args = g.json(f.parameters, f"args{k}")
            if self.args_form:
                alts.append(f'{lit(TOOL_CALLS + f.name)} ( {lit(CALL_ID)} [a-zA-Z0-9]{{9}} )? {lit(ARGS)} {args}')
            else:
                head = lit('{"name": ' + json.dumps(f.name, ensure_ascii=False) + ', "arguments": ')
                alts.append(f"{head} {args} {lit('}')}")
        call = g.rule("call", " | ".join(f"( {a} )" for a in alts))
        if self.args_form:
            return one_or_more(call, "", parallel)
        return f"{lit(TOOL_CALLS + '[')} {one_or_more(call, lit(', '), parallel)} {lit(']')}"


def _list_form(text: str, i: int, pos: int, final: bool, tools: dict[str, Any]) -> Found:
    got = object_at(text, pos)
    if got is None:
        return Found((), i, "pending") if not final else Found((), i, "invalid", pos)
    value, end = got
    calls = []
    for item in value if isinstance(value, list) else [value]:
        call = None
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            call = known_call(tools, item["name"], arguments_object(item.get("arguments", item.get("parameters"))),
                              _model_id(item.get("id")))
        if call is None:
            return Found((), i, "invalid", end)
        calls.append(call)
    return Found(tuple(calls), end, "done") if calls else Found((), i, "invalid", end)


def _args_form(text: str, i: int, pos: int, final: bool, tools: dict[str, Any]) -> Found:
    k = text.find(ARGS, pos)
    if k < 0:
        return Found((), i, "pending")
    head = text[pos:k]
    name, _, call_id = head.partition(CALL_ID)
    got = object_at(text, k + len(ARGS))
    if got is None:
        return Found((), i, "pending") if not final else Found((), i, "invalid", k + len(ARGS))
    args, end = got
    call = known_call(tools, name.strip(), args if isinstance(args, dict) else None, _model_id(call_id.strip()))
    if call is None:
        return Found((), i, "invalid", end)
    return Found((call,), end, "done")
