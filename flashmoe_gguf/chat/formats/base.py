"""What a chat format is: how its tool calls and reasoning look in the model's output (the parser), how to
force a well-formed call (the grammar), and what its template needs from the messages."""

from __future__ import annotations

import abc
from typing import Any, Sequence

from ..grammar import WS, Function, Grammar, lit
from ..scan import CallReader, dumps, scan_calls, split_reasoning
from ..types import Parsed, ParseOptions, ReasoningState, ToolCall

THINK_TAGS = ("<think>", "</think>")


class ChatFormat(abc.ABC):
    """One family's output conventions. Instances are immutable configuration (no state between requests)."""

    name: str = "?"

    def __init__(self, think_tags: tuple[str, str] | None = None) -> None:
        self.think_tags = think_tags

    # -- prompt side ---------------------------------------------------------------------------------------

    def prepare_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Family-specific changes to the (already copied) OpenAI messages before the template sees them."""
        return messages

    def stops(self) -> tuple[str, ...]:
        """Strings that end generation (beyond the vocabulary's end-of-generation tokens)."""
        return ()

    def reasoning_state(self, prompt: str) -> ReasoningState:
        """Where the rendered prompt leaves the reasoning block."""
        if self.think_tags is None:
            return "none"
        tail = prompt.rstrip()
        if tail.endswith(self.think_tags[0]):
            return "open"
        if tail.endswith(self.think_tags[1]):
            return "closed"
        return "none"

    def call_example(self) -> str:
        """One call in the format's layout (told to models whose template does not describe the tools)."""
        return ""

    def new_call_id(self, random_text: str) -> str:
        """An id for a call the model gave none (random_text: random alphanumerics)."""
        return "call_" + random_text

    # -- output side ---------------------------------------------------------------------------------------

    @abc.abstractmethod
    def parse(self, text: str, final: bool, opts: ParseOptions) -> Parsed:
        """The model's output so far (final: all of it) as reasoning, content and tool calls."""

    @abc.abstractmethod
    def calls_rule(self, g: Grammar, functions: Sequence[Function], parallel: bool) -> str:
        """Grammar rule for the format's tool calls (one call of one of `functions`, or several if parallel)."""

    def grammar(self, functions: Sequence[Function], parallel: bool, state: ReasoningState) -> str:
        """GBNF of an output that is (after an optional reasoning block) the format's tool calls."""
        g = Grammar()
        calls = self.calls_rule(g, functions, parallel)
        return g.text(f"{self.reasoning_rule(g, state)} {calls}".strip())

    def reasoning_rule(self, g: Grammar, state: ReasoningState) -> str:
        """What may precede the calls: the rest of an open reasoning block, or an optional whole one."""
        if self.think_tags is None or state == "closed":
            return ""
        open_tag, close_tag = self.think_tags
        rest = f"{g.until(close_tag)} {lit(close_tag)} {WS}"
        return rest if state == "open" else f"( {lit(open_tag)} {rest} )?"


class MarkerFormat(ChatFormat):
    """A format whose calls start at a marker in the output, after an optional <think> block."""

    openers: tuple[str, ...] = ()

    @abc.abstractmethod
    def reader(self, tools: dict[str, Any]) -> CallReader:
        """Reads the call(s) at an opening marker."""

    def parse(self, text: str, final: bool, opts: ParseOptions) -> Parsed:
        reasoning, rest = split_reasoning(text, final, self.think_tags, opts.reasoning)
        if opts.tools:
            content, calls = scan_calls(rest, final, self.openers, self.reader(dict(opts.tools)))
        else:
            content, calls = rest, []
        return Parsed(reasoning.strip(), content.strip(), tuple(calls))


def known_call(tools: dict[str, Any], name: str, arguments: dict | None,
               call_id: str | None = None) -> ToolCall | None:
    """A ToolCall when the name is one of the tools and the arguments an object, else None."""
    if arguments is None or name not in tools:
        return None
    return ToolCall(name, dumps(arguments), call_id)
