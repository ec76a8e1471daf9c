"""One chat request made ready for generation, without the model: the rendered prompt, the grammar that
enforces the tool choice, the stop strings, and what the parser is told."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .formats import ChatFormat
from .grammar import Function, Grammar
from .history import TemplateTraits, normalize_messages, with_tool_instructions
from .template import ChatTemplate
from .types import ParseOptions


@dataclass(frozen=True)
class Prepared:
    prompt: str
    grammar: str | None         # GBNF, or None
    stops: tuple[str, ...]
    options: ParseOptions
    parallel: bool


def legacy_to_tools(functions: Sequence[Mapping[str, Any]] | None, function_call: Any,
                    tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any) -> tuple[list[dict], Any]:
    """OpenAI's older functions / function_call as tools / tool_choice."""
    tools = [dict(t) for t in tools or []]
    if functions and not tools:
        tools = [{"type": "function", "function": dict(f)} for f in functions]
    if function_call is not None and tool_choice is None:
        if isinstance(function_call, str):
            tool_choice = function_call
        elif isinstance(function_call, Mapping) and "name" in function_call:
            tool_choice = {"type": "function", "function": {"name": function_call["name"]}}
    return tools, tool_choice


def functions_of(tools: Sequence[Mapping[str, Any]]) -> list[Function]:
    out = []
    for t in tools:
        fn = t.get("function") if isinstance(t, Mapping) else None
        if (t.get("type", "function") != "function" or not isinstance(fn, Mapping)
                or not isinstance(fn.get("name"), str)):
            raise ValueError(f"a tool must be {{'type': 'function', 'function': {{'name': ...}}}}, got {t!r}")
        params = fn.get("parameters")
        out.append(Function(fn["name"], params if isinstance(params, Mapping) and params else
                            {"type": "object", "properties": {}}))
    return out


def choice_of(tool_choice: Any, functions: Sequence[Function]) -> tuple[str, list[Function]]:
    """("none" | "auto" | "required", the functions a grammar allows)."""
    if tool_choice is None:
        return ("auto" if functions else "none"), list(functions)
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise ValueError(f"tool_choice must be 'none', 'auto', 'required' or a function, got {tool_choice!r}")
        if tool_choice != "none" and not functions:
            if tool_choice == "required":
                raise ValueError("tool_choice 'required' needs tools")
            return "none", []
        return tool_choice, list(functions)
    name = (tool_choice.get("function") or {}).get("name") if isinstance(tool_choice, Mapping) else None
    chosen = [f for f in functions if f.name == name]
    if not chosen:
        raise ValueError(f"tool_choice names {name!r}, which is not one of the tools")
    return "required", chosen


def _response_grammar(fmt: ChatFormat, response_format: Mapping[str, Any] | None, state: Any) -> str | None:
    if not response_format or response_format.get("type") not in ("json_object", "json_schema"):
        return None
    schema: Mapping[str, Any] = {}
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        schema = (spec.get("schema") or {}) if isinstance(spec, Mapping) else {}
    elif isinstance(response_format.get("schema"), Mapping):
        schema = response_format["schema"]
    g = Grammar()
    body = g.json(json.loads(json.dumps(schema)) if schema else {"type": "object"}, "response")
    return g.text(f"{fmt.reasoning_rule(g, state)} {body}".strip())


def prepare(template: ChatTemplate, traits: TemplateTraits, fmt: ChatFormat, messages: Sequence[Mapping[str, Any]],
            tools: Sequence[Mapping[str, Any]], tool_choice: Any, parallel: bool = True,
            response_format: Mapping[str, Any] | None = None, template_kwargs: Mapping[str, Any] | None = None,
            user_grammar: bool = False, user_stops: Sequence[str] = ()) -> Prepared:
    functions = functions_of(tools)
    choice, allowed = choice_of(tool_choice, functions)
    msgs = normalize_messages(messages, traits, keep_developer=fmt.name == "harmony")
    if tools and choice != "none" and not traits.renders_tools and fmt.call_example():
        msgs = normalize_messages(with_tool_instructions(msgs, tools, fmt.call_example()), traits)
    msgs = fmt.prepare_messages(msgs)
    # llama.cpp passes enable_thinking=true unless told otherwise; templates that read it close the reasoning
    # block in the prompt when it is false
    kwargs = {"enable_thinking": True, **dict(template_kwargs or {})}
    prompt = template.render(msgs, tools or None, add_generation_prompt=True, **kwargs)
    state = fmt.reasoning_state(prompt)
    grammar = None
    if not user_grammar:
        if choice == "required":
            grammar = fmt.grammar(allowed, parallel, state)
        elif choice == "none" or not functions:
            grammar = _response_grammar(fmt, response_format, state)
    options = ParseOptions(tools={f.name: f.parameters for f in functions} if choice != "none" else {},
                           reasoning=state)
    stops = tuple(dict.fromkeys([*fmt.stops(), *([template.eos_token] if template.eos_token else []), *user_stops]))
    return Prepared(prompt, grammar, stops, options, parallel)
