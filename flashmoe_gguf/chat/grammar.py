"""GBNF grammars (llama.cpp's grammar language) that make the model's output a well-formed tool call.

`Grammar` collects rules: JSON values of a schema (llama-cpp-python's JSON-schema converter writes those),
literals, and `until` (any text that does not contain a given string: how free text such as reasoning or an
XML parameter value is allowed up to its closing tag). Each chat format writes the rule of its calls; the
handler adds what comes before (a reasoning block) and asks `text()` for the grammar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# whitespace between the parts of a call: bounded, so that a model cannot run away in it
WS = "[ \\t\\n]{0,4}"


def lit(text: str) -> str:
    """A GBNF literal."""
    return '"' + "".join(_ESCAPES.get(c, c) for c in text) + '"'


def _char_class_excluding(chars: Sequence[str]) -> str:
    inner = "".join(_ESCAPES.get(c, "\\]" if c == "]" else "\\^" if c == "^" else "\\-" if c == "-" else c)
                    for c in chars)
    return f"[^{inner}]"


@dataclass(frozen=True)
class Function:
    """A tool as the grammars and parsers need it: its name and the JSON schema of its parameters."""
    name: str
    parameters: Mapping[str, Any]

    def properties(self) -> list[tuple[str, Mapping[str, Any], bool]]:
        """(name, schema, required) of each parameter, in the schema's order."""
        props = self.parameters.get("properties") or {}
        required = set(self.parameters.get("required") or [])
        return [(k, v if isinstance(v, Mapping) else {}, k in required) for k, v in props.items()]


class Grammar:
    """Rules of one grammar under construction."""

    def __init__(self) -> None:
        from llama_cpp.llama_grammar import SchemaConverter
        self._json = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self._rules: dict[str, str] = {}
        self._until: dict[str, str] = {}

    def rule(self, name: str, body: str) -> str:
        """Add `fm-<name> ::= body`; returns the rule's name."""
        key = f"fm-{name}"
        if self._rules.get(key, body) != body:
            raise ValueError(f"grammar rule {key} defined twice")
        self._rules[key] = body
        return key

    def json(self, schema: Mapping[str, Any], name: str) -> str:
        """Rule for a JSON value valid under schema."""
        resolved = self._json.resolve_refs(json.loads(json.dumps(schema)), name)
        return str(self._json.visit(resolved, f"js-{name}"))

    def until(self, stop: str) -> str:
        """Rule for any text that does not contain `stop` (a string automaton: state k = the first k characters
        of stop just read; text may end in any state, so that `until(s) lit(s)` ends at the first s)."""
        if stop in self._until:
            return self._until[stop]
        base = f"until{len(self._until)}"
        chars = sorted(set(stop))
        fail = [0] * len(stop)          # KMP failure function
        k = 0
        for i in range(1, len(stop)):
            while k and stop[i] != stop[k]:
                k = fail[k - 1]
            if stop[i] == stop[k]:
                k += 1
            fail[i] = k

        def step(state: int, c: str) -> int:
            while state and stop[state] != c:
                state = fail[state - 1]
            return state + 1 if stop[state] == c else 0

        for state in range(len(stop)):
            alts = [f"{_char_class_excluding(chars)} fm-{base}-0"]
            for c in chars:
                nxt = step(state, c)
                if nxt < len(stop):
                    alts.append(f"{lit(c)} fm-{base}-{nxt}")
            self.rule(f"{base}-{state}", "( " + " | ".join(alts) + " )?")
        self._until[stop] = f"fm-{base}-0"
        return self._until[stop]

    def text(self, root: str) -> str:
        """The grammar with `root ::= root`."""
        own = "\n".join(f"{k} ::= {v}" for k, v in self._rules.items())
        return f"root ::= {root}\n{own}\n{_strict_json_chars(self._json.format_grammar())}\n"


# A JSON string character: anything but a quote, a backslash or a control character (RFC 8259), or an escape.
# llama-cpp-python's schema converter (0.3.36) allows control characters, so grammar-constrained arguments could
# hold a raw \x11 and not be JSON at all.
JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


def _strict_json_chars(rules: str) -> str:
    return "\n".join(JSON_CHAR if line.startswith("char ::= ") else line for line in rules.splitlines())


def one_or_more(item: str, sep: str, many: bool) -> str:
    """item, or item (sep item)* when several are allowed."""
    return f"{item} ( {sep} {item} )*" if many else item
