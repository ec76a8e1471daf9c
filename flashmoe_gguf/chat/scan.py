"""Building blocks of the output parsers: held-back marker prefixes, the reasoning block, a scanner for
marker-opened tool calls, and JSON helpers.

Every function takes `final`: False while the output is still growing (streaming). A partial parse keeps
back whatever later text could change: a suffix that may be the start of a marker, a call not yet complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from .types import ReasoningState, ToolCall

# strict=False: a raw control character inside a string (models write tabs and newlines there) is read; the
# arguments are written out again by dumps(), as valid JSON
_DECODER = json.JSONDecoder(strict=False)


def held_back(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of one of the markers."""
    longest = max((len(m) for m in markers), default=0)
    for k in range(min(longest - 1, len(text)), 0, -1):
        tail = text[-k:]
        if any(m.startswith(tail) for m in markers):
            return k
    return 0


def visible(text: str, final: bool, markers: Sequence[str]) -> str:
    """text without a held-back marker prefix (while partial)."""
    return text if final else text[:len(text) - held_back(text, markers)]


def split_reasoning(text: str, final: bool, tags: tuple[str, str] | None,
                    state: ReasoningState) -> tuple[str, str]:
    """(reasoning, rest): the block between tags[0] and tags[1] at the start of the output (or from the start,
    when the prompt opened it). An unterminated block is reasoning to the end."""
    if tags is None or state == "closed":
        return "", text
    open_tag, close_tag = tags
    start = 0
    if state != "open":
        stripped = text.lstrip()
        if stripped.startswith(open_tag):
            start = len(text) - len(stripped) + len(open_tag)
        elif not final and open_tag.startswith(stripped):
            return "", ""          # only whitespace or the start of the opening tag so far
        else:
            return "", text
    end = text.find(close_tag, start)
    if end < 0:
        return visible(text[start:], final, [close_tag]), ""
    return text[start:end], text[end + len(close_tag):]


@dataclass(frozen=True)
class Found:
    """What a call reader made of the text at one opening marker.

    state "done": `calls` end at `end`; "pending": `calls` (possibly none) end at `end`, the text after it is
    not complete yet (at the end of the output it is content); "invalid": `calls` end at `end`, the text from
    there to `resume` is content and scanning goes on at `resume`.
    """
    calls: tuple[ToolCall, ...]
    end: int
    state: Literal["done", "pending", "invalid"]
    resume: int = -1


CallReader = Callable[[str, int, bool], Found]


def _first(text: str, markers: Sequence[str], pos: int) -> int:
    hits = [i for i in (text.find(m, pos) for m in markers) if i >= 0]
    return min(hits) if hits else -1


def scan_calls(text: str, final: bool, openers: Sequence[str], read: CallReader) -> tuple[str, list[ToolCall]]:
    """(content, calls) of text where tool calls start at one of the opening markers and `read` reads them."""
    content: list[str] = []
    calls: list[ToolCall] = []
    pos = 0
    while True:
        i = _first(text, openers, pos)
        if i < 0:
            content.append(visible(text[pos:], final, openers))
            break
        content.append(text[pos:i])
        found = read(text, i, final)
        calls.extend(found.calls)
        if found.state == "done":
            pos = found.end
        elif found.state == "pending":
            if final:
                content.append(text[found.end:])
            break
        else:
            content.append(text[found.end:found.resume])
            pos = found.resume
    return "".join(content), calls


# -- JSON ------------------------------------------------------------------------------------------------------

def dumps(value: Any) -> str:
    """Arguments as the JSON text OpenAI clients get."""
    return json.dumps(value, ensure_ascii=False)


def object_at(text: str, pos: int) -> tuple[Any, int] | None:
    """The JSON value that starts at text[pos] (after whitespace) and where it ends, or None."""
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    try:
        return _DECODER.raw_decode(text, pos)
    except ValueError:
        return None


def parse_object(text: str) -> dict | None:
    """text (stripped) as a JSON object, or None."""
    try:
        value = _DECODER.decode(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def arguments_object(value: Any) -> dict | None:
    """Arguments as the model wrote them (an object, JSON text of one, or nothing) as an object, or None."""
    if value is None:
        return {}
    if isinstance(value, str):
        return parse_object(value.strip() or "{}")
    return value if isinstance(value, dict) else None


def join_nonempty(parts: Sequence[str], sep: str) -> str:
    """The stripped non-empty parts joined (how separate messages of one kind become one field)."""
    return sep.join(s for s in (p.strip() for p in parts) if s)
