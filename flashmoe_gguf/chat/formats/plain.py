"""Templates with no tool-call format we know: content (and a <think> block when the template has one).
Tool calls are not parsed, and `required` / named tool choices have no grammar."""

from __future__ import annotations

from typing import Sequence

from ..grammar import Function, Grammar
from ..scan import split_reasoning
from ..types import Parsed, ParseOptions
from .base import ChatFormat


class PlainFormat(ChatFormat):
    name = "plain"

    def parse(self, text: str, final: bool, opts: ParseOptions) -> Parsed:
        reasoning, rest = split_reasoning(text, final, self.think_tags, opts.reasoning)
        return Parsed(reasoning.strip(), rest.strip())

    def calls_rule(self, g: Grammar, functions: Sequence[Function], parallel: bool) -> str:
        raise ValueError("this model's chat template has no tool-call format flashmoe knows: "
                         "tool_choice 'required' or a named function cannot be enforced")
