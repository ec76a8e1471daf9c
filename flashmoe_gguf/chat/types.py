"""What a chat format's parser returns, and what it is told about the request."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

# where the prompt leaves the model's reasoning block: "open" (the template wrote the opening tag, so the output
# starts inside it), "closed" (the template wrote an empty block: no reasoning expected), "none" (the model may
# open one itself)
ReasoningState = Literal["open", "closed", "none"]


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: `arguments` is JSON text of an object; `id` the one the model wrote, if any."""
    name: str
    arguments: str
    id: str | None = None


@dataclass(frozen=True)
class Parsed:
    """The model's output split into reasoning, content and tool calls.

    A parse of a partial output (final=False) only holds what later text cannot change, so each partial parse
    is a prefix of the next one and of the final one (fields grow, calls are appended): streaming sends the
    differences.
    """
    reasoning: str = ""
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()

    def first_call_only(self) -> "Parsed":
        return dataclasses.replace(self, tool_calls=self.tool_calls[:1])


@dataclass(frozen=True)
class ParseOptions:
    """tools: name -> JSON schema of its parameters, the tools whose calls are parsed (empty: none are, the
    text stays content); reasoning: where the prompt left the reasoning block."""
    tools: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    reasoning: ReasoningState = "none"
