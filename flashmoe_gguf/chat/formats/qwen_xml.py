"""Qwen3-Coder / Qwen3.5 tool calls: XML-like parameters, each value typed by the tool's JSON schema.

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    <parameter=days>
    3
    </parameter>
    </function>
    </tool_call>
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from ..grammar import Function, Grammar, lit, one_or_more
from ..scan import CallReader, Found, dumps
from ..types import ToolCall
from .base import MarkerFormat

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FUNC, FUNC_END = "<function=", "</function>"
PARAM, PARAM_END = "<parameter=", "</parameter>"
_PENDING = object()


def _types(schema: Mapping[str, Any]) -> set[str]:
    t = schema.get("type")
    out = set(t) if isinstance(t, list) else {t} if isinstance(t, str) else set()
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            if isinstance(sub, Mapping):
                out |= _types(sub)
    if not out and "enum" in schema:
        out = {"string" if isinstance(v, str) else "number" for v in schema["enum"]}
    return out


def _matches(value: Any, types: set[str]) -> bool:
    checks = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None,
              "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list)}
    return any(checks[t](value) for t in types if t in checks)


def coerce(raw: str, schema: Mapping[str, Any] | None) -> Any:
    """A parameter's text as the value its schema says (text when the schema allows a string, or says
    nothing, or the text is not a value of the other types)."""
    types = _types(schema) if schema is not None else set()
    if not types or types == {"string"}:
        return raw
    text = raw.strip()
    try:
        value = json.loads(text.lower() if text in ("True", "False", "None") else text)
    except ValueError:
        return raw
    if text == "None":
        value = None
    if _matches(value, types):
        return value
    return raw if "string" in types else value


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _incomplete(rest: str, markers: Sequence[str]) -> bool:
    return any(m.startswith(rest) for m in markers)


def _function(text: str, pos: int, tools: dict[str, Any]) -> Any:
    """(ToolCall, end) of the <function=...> at pos; _PENDING if it is not complete yet; None if malformed."""
    gt = text.find(">", pos + len(FUNC))
    if gt < 0:
        return None if "\n" in text[pos:] else _PENDING
    name = text[pos + len(FUNC):gt].strip()
    if name not in tools:
        return None
    props = (tools[name].get("properties") or {}) if isinstance(tools[name], Mapping) else {}
    args: dict[str, Any] = {}
    p = gt + 1
    while True:
        p = _skip_ws(text, p)
        if text.startswith(PARAM, p):
            e = text.find(">", p + len(PARAM))
            if e < 0:
                return None if "\n" in text[p:] else _PENDING
            v_end = text.find(PARAM_END, e + 1)
            if v_end < 0:
                return _PENDING
            pname = text[p + len(PARAM):e].strip()
            raw = text[e + 1:v_end]
            raw = raw[1:] if raw.startswith("\n") else raw
            raw = raw[:-1] if raw.endswith("\n") else raw
            args[pname] = coerce(raw, props.get(pname))
            p = v_end + len(PARAM_END)
        elif text.startswith(FUNC_END, p):
            return ToolCall(name, dumps(args)), p + len(FUNC_END)
        elif _incomplete(text[p:], (PARAM, FUNC_END)):
            return _PENDING
        else:
            return None


class QwenXmlFormat(MarkerFormat):
    name = "qwen-xml"
    openers = (OPEN,)

    def call_example(self) -> str:
        return f"{OPEN}\n{FUNC}function_name>\n{PARAM}parameter>\nvalue\n{PARAM_END}\n{FUNC_END}\n{CLOSE}"

    def reader(self, tools: dict[str, Any]) -> CallReader:
        def malformed(text: str, i: int, pos: int) -> Found:
            j = text.find(CLOSE, pos)
            return Found((), i, "pending") if j < 0 else Found((), i, "invalid", j + len(CLOSE))

        def read(text: str, i: int, final: bool) -> Found:
            calls: list[ToolCall] = []
            pos = i + len(OPEN)
            while True:
                pos = _skip_ws(text, pos)
                if calls and text.startswith(CLOSE, pos):
                    return Found(tuple(calls), pos + len(CLOSE), "done")
                if text.startswith(FUNC, pos):
                    got = _function(text, pos, tools)
                    if got is _PENDING:
                        return Found((), i, "pending")
                    if got is None:
                        return malformed(text, i, pos)
                    calls.append(got[0])
                    pos = got[1]
                elif _incomplete(text[pos:], (CLOSE, FUNC) if calls else (FUNC,)):
                    return Found((), i, "pending")
                else:
                    return malformed(text, i, pos)
        return read

    def calls_rule(self, g: Grammar, functions: Sequence[Function], parallel: bool) -> str:
        alts = []
        for k, f in enumerate(functions):
            parts = [lit(f"{OPEN}\n{FUNC}{f.name}>\n")]
            for j, (pname, schema, required) in enumerate(f.properties()):
                value = self._value_rule(g, schema, f"p{k}-{j}")
                param = f"{lit(f'{PARAM}{pname}>' + chr(10))} {value} {lit(chr(10) + PARAM_END + chr(10))}"
                parts.append(param if required else f"( {param} )?")
            parts.append(lit(f"{FUNC_END}\n{CLOSE}"))
            alts.append(" ".join(parts))
        call = g.rule("call", " | ".join(f"( {a} )" for a in alts))
        return one_or_more(call, lit("\n"), parallel)

    @staticmethod
    def _value_rule(g: Grammar, schema: Mapping[str, Any], name: str) -> str:
        values = schema.get("enum")
        if "const" in schema and isinstance(schema["const"], str):
            return lit(schema["const"])
        if values and all(isinstance(v, str) for v in values):
            return "( " + " | ".join(lit(v) for v in values) + " )"
        types = _types(schema)
        if not types or "string" in types:
            return g.until("\n" + PARAM_END)
        return g.json(schema, name)
