"""OpenAI chat messages made into what a Hugging Face chat template expects.

What templates differ in is probed once per template by rendering sample conversations (as llama.cpp does):
whether tool call arguments are read as a mapping (then JSON-text arguments are parsed into one) or as text
(then mappings are written as JSON text), and whether a system message is rendered at all (if not, it is
joined to the first user message). Mistral's templates refuse tool call ids that are not 9 letters and
digits: other ids are mapped to such ids, the same on the call and on its result. A template that does not
describe the tools (DeepSeek-R1 distills) gets them in a system message, with the family's call layout.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .template import ChatTemplate, TemplateError

_VALUE = "probe_value_7f3a"
_TOOL = {"type": "function", "function": {"name": "probe_tool", "description": "d", "parameters": {
    "type": "object", "properties": {"probe_arg": {"type": "string"}}, "required": ["probe_arg"]}}}
_SHORT_ID = re.compile(r"^[A-Za-z0-9]{9}$")


@dataclass(frozen=True)
class TemplateTraits:
    object_arguments: bool = True
    system_role: bool = True
    short_ids: bool = False
    renders_tools: bool = True


def _conversation(arguments: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call00001", "type": "function", "function": {"name": "probe_tool", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call00001", "content": "result"},
            {"role": "assistant", "content": "done"},
            {"role": "user", "content": "Again"}]


def probe_traits(template: ChatTemplate) -> TemplateTraits:
    """How the template treats tool call arguments and system messages."""
    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str | None:
        try:
            return template.render(messages, tools)
        except TemplateError:
            return None

    as_object = render(_conversation({"probe_arg": _VALUE}), [_TOOL])
    object_arguments = as_object is not None and _VALUE in as_object and "{'probe_arg'" not in as_object
    system = render([{"role": "system", "content": "probe_system_51c"}, {"role": "user", "content": "Hi"}])
    with_tools = render([{"role": "user", "content": "Hi"}], [_TOOL])
    return TemplateTraits(object_arguments=object_arguments,
                          system_role=system is not None and "probe_system_51c" in system,
                          short_ids="length != 9" in template.source,
                          renders_tools=with_tools is None or "probe_tool" in with_tools)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return str(content)


def _short_id(call_id: Any) -> Any:
    if not isinstance(call_id, str) or _SHORT_ID.match(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).digest()
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(alphabet[b % len(alphabet)] for b in digest[:9])


def _arguments(value: Any, as_object: bool) -> Any:
    if as_object and isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except ValueError as exc:
            raise ValueError(f"tool call arguments are not JSON: {value[:80]!r}") from exc
    if not as_object and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return value


def normalize_messages(messages: Sequence[Mapping[str, Any]], traits: TemplateTraits,
                       keep_developer: bool = False) -> list[dict[str, Any]]:
    """A copy of the OpenAI messages as the template wants them: text content (parts joined, null as ""),
    tool call arguments as the template reads them, ids it accepts, developer as system (unless kept),
    a system message joined to the next one where the template has no system role."""
    out: list[dict[str, Any]] = []
    for message in messages:
        m = copy.deepcopy(dict(message))
        if m.get("role") == "developer" and not keep_developer:
            m["role"] = "system"
        m["content"] = _text(m.get("content"))
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                call = dict(call)
                fn = dict(call.get("function") or {})
                fn["arguments"] = _arguments(fn.get("arguments", {}), traits.object_arguments)
                call["function"] = fn
                call.setdefault("type", "function")
                if traits.short_ids:
                    call["id"] = _short_id(call.get("id"))
                calls.append(call)
            m["tool_calls"] = calls
        elif "tool_calls" in m:
            del m["tool_calls"]         # an empty list or null: templates test `message.tool_calls is defined`
        if traits.short_ids and "tool_call_id" in m:
            m["tool_call_id"] = _short_id(m["tool_call_id"])
        out.append(m)
    if not traits.system_role and out and out[0]["role"] == "system":
        system = out.pop(0)
        if out:
            out[0]["content"] = system["content"] + "\n" + out[0]["content"]
    return out


def with_tool_instructions(messages: list[dict[str, Any]], tools: Sequence[Mapping[str, Any]],
                           example: str) -> list[dict[str, Any]]:
    """messages with the tools and how to call them (example: the layout of one call) in the system message
    (for templates that do not write the tools themselves)."""
    text = ("You can call the following tools. To call one, write:\n" + example + "\n\nTools:\n"
            + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
