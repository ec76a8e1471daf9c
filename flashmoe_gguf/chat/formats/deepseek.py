"""DeepSeek-V3 / V3.1 / R1 tool calls, between special tokens; reasoning in <think>.

V3.1:   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>
        <｜tool▁call▁begin｜>...<｜tool▁call▁end｜><｜tool▁calls▁end｜>
V3/R1:  <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
        ```json
        {"city": "Paris"}
        ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

Each call is decided at its own end token; a block the model leaves open keeps the calls it completed.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..grammar import WS, Function, Grammar, lit
from ..scan import CallReader, Found, parse_object
from ..types import ToolCall
from .base import MarkerFormat, known_call

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
_FENCED = re.compile(r"^\s*([^\n`]+?)\s*\n\s*```(?:json)?\s*\n?(.*?)\s*```\s*$", re.S)


def _call(body: str, tools: dict[str, Any]) -> ToolCall | None:
    left, sep, right = body.partition(SEP)
    if not sep:
        return None
    fenced = _FENCED.match(right)
    if fenced:                                  # V3 / R1: type<sep>name\n```json\n{...}\n```
        name, args = fenced.group(1).strip(), fenced.group(2)
    else:                                       # V3.1: name<sep>{...}
        name, args = left.strip(), right
    return known_call(tools, name, parse_object(args.strip()))


class DeepSeekFormat(MarkerFormat):
    name = "deepseek"
    openers = (CALLS_BEGIN, CALL_BEGIN)

    def __init__(self, think_tags: tuple[str, str] | None = None, fenced: bool = False) -> None:
        super().__init__(think_tags)
        self.fenced = fenced        # the template writes the V3/R1 form (the grammar writes that one)

    def call_example(self) -> str:
        if self.fenced:
            return (f'{CALLS_BEGIN}{CALL_BEGIN}function{SEP}function_name\n```json\n{{"parameter": "value"}}\n```'
                    f'{CALL_END}{CALLS_END}')
        return f'{CALLS_BEGIN}{CALL_BEGIN}function_name{SEP}{{"parameter": "value"}}{CALL_END}{CALLS_END}'

    def reader(self, tools: dict[str, Any]) -> CallReader:
        def read(text: str, i: int, final: bool) -> Found:
            pos = i + len(CALLS_BEGIN) if text.startswith(CALLS_BEGIN, i) else i
            calls: list[ToolCall] = []
            end = i
            while True:
                while pos < len(text) and text[pos] in " \t\r\n":
                    pos += 1
                if text.startswith(CALLS_END, pos):
                    return Found(tuple(calls), pos + len(CALLS_END), "done") if calls else \
                        Found((), i, "invalid", pos + len(CALLS_END))
                if text.startswith(CALL_BEGIN, pos):
                    k = text.find(CALL_END, pos)
                    if k < 0:
                        return Found(tuple(calls), end, "pending")
                    call = _call(text[pos + len(CALL_BEGIN):k], tools)
                    if call is None:
                        return Found(tuple(calls), end, "invalid", k + len(CALL_END))
                    calls.append(call)
                    pos = end = k + len(CALL_END)
                    continue
                rest = text[pos:]
                if not final and (CALLS_END.startswith(rest) or CALL_BEGIN.startswith(rest)):
                    return Found(tuple(calls), end, "pending")
                if calls:       # the block ends without its end token: the text after it is content
                    return Found(tuple(calls), end, "done")
                return Found((), i, "invalid", max(pos, i + 1))
        return read

    def calls_rule(self, g: Grammar, functions: Sequence[Function], parallel: bool) -> str:
        alts = []
        for k, f in enumerate(functions):
            args = g.json(f.parameters, f"args{k}")
            if self.fenced:
                alts.append(f"{lit(f'{CALL_BEGIN}function{SEP}{f.name}' + chr(10) + '```json' + chr(10))} "
                            f"{args} {lit(chr(10) + '```' + CALL_END)}")
            else:
                alts.append(f"{lit(f'{CALL_BEGIN}{f.name}{SEP}')} {args} {lit(CALL_END)}")
        call = g.rule("call", " | ".join(f"( {a} )" for a in alts))
        calls = f"{call} ( {WS} {call} )*" if parallel else call
        return f"{lit(CALLS_BEGIN)} {calls} {lit(CALLS_END)}"
