"""Tool calls through `flashmoe serve` with the official `openai` client: tool_choice auto / required / named /
none, streamed and not, and a multi-turn agent loop that sends tool results back. The tiny random model is
steered where its output must be a known text: `required` and a named function are grammar-constrained by the
server itself (string parameters bounded with maxLength, so that the random model's strings end); for `auto`, the request's llama-cpp-python `grammar` field (extra_body) forces the Qwen-style
tool-call text, which the server must then recognise as a call."""

from __future__ import annotations

import json
from typing import Any

import pytest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 16}}, "required": ["tz"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

# the model's whole answer for `auto`: one call in the Qwen/Hermes layout the server's parser reads
AUTO_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'
AUTO_GRAMMAR = "root ::= " + json.dumps(AUTO_CALL)


def _args(call: Any) -> dict[str, Any]:
    assert call.type == "function" and call.id
    args = json.loads(call.function.arguments)       # valid JSON, always
    assert isinstance(args, dict)
    return args


def test_auto_recognises_the_models_call(openai_client) -> None:  # type: ignore[no-untyped-def]
    r = openai_client.chat.completions.create(model="x", messages=ASK, tools=[WEATHER, TIME], tool_choice="auto",
                                              max_tokens=256, temperature=0, extra_body={"grammar": AUTO_GRAMMAR})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and _args(call) == {"city": "Paris", "unit": "C"}


def test_auto_streamed(openai_client) -> None:  # type: ignore[no-untyped-def]
    stream = openai_client.chat.completions.create(model="x", messages=ASK, tools=[WEATHER], tool_choice="auto",
                                                   max_tokens=256, temperature=0, stream=True,
                                                   extra_body={"grammar": AUTO_GRAMMAR})
    calls: dict[int, dict[str, str]] = {}
    content, finish = "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            c = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            c["id"] += tc.id or ""
            if tc.function:
                c["name"] += tc.function.name or ""
                c["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and not content.strip()
    assert [c["name"] for c in calls.values()] == ["get_weather"] and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "C"}


@pytest.mark.parametrize("stream", [False, True])
def test_required_is_a_valid_call_of_one_of_the_tools(openai_client, stream: bool) -> None:  # type: ignore[no-untyped-def]
    kw = dict(model="x", messages=ASK, tools=[WEATHER, TIME], tool_choice="required", max_tokens=512, temperature=0)
    if not stream:
        r = openai_client.chat.completions.create(**kw)
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and calls
        for call in calls:
            args = _args(call)
            assert call.function.name in ("get_weather", "get_time")
            assert ("city" in args) if call.function.name == "get_weather" else ("tz" in args)
        return
    names, arguments, finish = [], [], None
    for chunk in openai_client.chat.completions.create(stream=True, **kw):
        for tc in chunk.choices[0].delta.tool_calls or []:
            if tc.function and tc.function.name:
                names.append(tc.function.name)
                arguments.append("")
            if tc.function and tc.function.arguments:
                arguments[-1] += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and names and all(n in ("get_weather", "get_time") for n in names)
    assert all(isinstance(json.loads(a), dict) for a in arguments)


def test_named_function_is_called(openai_client) -> None:  # type: ignore[no-untyped-def]
    r = openai_client.chat.completions.create(
        model="x", messages=ASK, tools=[WEATHER, TIME], max_tokens=512, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = r.choices[0].message.tool_calls
    assert calls and all(c.function.name == "get_time" and "tz" in _args(c) for c in calls)


def test_none_answers_in_text(openai_client) -> None:  # type: ignore[no-untyped-def]
    r = openai_client.chat.completions.create(model="x", messages=ASK, tools=[WEATHER], tool_choice="none",
                                              max_tokens=16, temperature=0)
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason in ("stop", "length")


def test_unknown_named_function_is_a_400(openai_client) -> None:  # type: ignore[no-untyped-def]
    import openai
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model="x", messages=ASK, tools=[WEATHER], max_tokens=8,
                                              tool_choice={"type": "function", "function": {"name": "nope"}})


def test_agent_loop_with_tool_results(openai_client, served_tiny) -> None:  # type: ignore[no-untyped-def]
    """call a tool, send its result back, get a text answer; then the next turn, with the whole history"""
    messages: list[dict[str, Any]] = list(ASK)
    r = openai_client.chat.completions.create(model="x", messages=messages, tools=[WEATHER], max_tokens=512,
                                              temperature=0, tool_choice="required")
    msg = r.choices[0].message
    assert msg.tool_calls
    messages.append({"role": "assistant", "content": msg.content or "",
                     "tool_calls": [tc.model_dump() for tc in msg.tool_calls]})
    for tc in msg.tool_calls:
        messages.append({"role": "tool", "tool_call_id": tc.id, "content": json.dumps({"temp_c": 21})})
    evals_before = served_tiny.metric("flashmoe_tokens_evaluated_total")
    r2 = openai_client.chat.completions.create(model="x", messages=messages, tools=[WEATHER], max_tokens=12,
                                               temperature=0, tool_choice="none")
    assert r2.choices[0].message.content is not None and not r2.choices[0].message.tool_calls
    messages.append({"role": "assistant", "content": r2.choices[0].message.content})
    messages.append({"role": "user", "content": "And in Rome?"})
    r3 = openai_client.chat.completions.create(model="x", messages=messages, tools=[WEATHER], max_tokens=512,
                                               temperature=0, tool_choice="required")
    assert r3.choices[0].message.tool_calls
    assert served_tiny.metric("flashmoe_tokens_evaluated_total") > evals_before
