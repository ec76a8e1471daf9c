"""Chat completions end to end through flashmoe_gguf.Llama on a tiny random MoE (Qwen3-MoE, real Qwen2
tokenizer): its output is steered to a known tool-call text by a logits processor (auto), or constrained by
our grammar (required / named); create_chat_completion returns the parsed calls, streamed or not."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from chat_support import TOOLS, assemble, flat, template, without_ids
from conftest import converted
from flashmoe_gguf.chat import chat_handler_for, install_chat_handler

MSGS = [{"role": "user", "content": "What's the weather in Paris, and the time?"}]
QWEN_CALLS = ('<think>\nTwo tools.\n</think>\n\n'
              '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}\n</tool_call>')
WANT = [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {"timezone": "Europe/Paris"})]
BOUNDED = [{"type": "function", "function": {"name": "set_unit", "parameters": {
    "type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer"}},
    "required": ["unit", "days"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": False}}}]


@pytest.fixture(scope="module")
def llm() -> Any:
    from flashmoe_gguf import Llama
    model = Llama(model_path=str(converted("qwen3_moe", "default")), n_ctx=4096, n_batch=512, verbose=False,
                  ram_budget="64M", n_threads=2, seed=0)
    yield model
    model.close()


def steer(llm: Any, text: str) -> Any:
    """A logits processor that makes the model write `text` and then end."""
    from llama_cpp import LogitsProcessorList
    target = llm.tokenize(text.encode(), add_bos=False, special=True)
    start: list[int] = []

    def force(input_ids: Any, scores: Any) -> Any:
        if not start:
            start.append(len(input_ids))
        k = len(input_ids) - start[0]
        out = np.full_like(scores, -np.inf)
        out[target[k] if k < len(target) else llm.token_eos()] = 0.0
        return out
    return LogitsProcessorList([force])


def calls_of(message: dict) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or []]


def with_template(llm: Any, name: str, **kw: Any) -> Any:
    llm.metadata["tokenizer.chat_template"] = template(name)
    return install_chat_handler(llm, **kw)


def test_family_from_the_gguf(llm: Any) -> None:
    original = llm.metadata["tokenizer.chat_template"]
    try:
        assert chat_handler_for(llm).family == "hermes"        # ChatML without tools: qwen3moe's format
        assert with_template(llm, "qwen3.5").family == "qwen-xml"
        assert with_template(llm, "gpt-oss").family == "harmony"
        assert chat_handler_for(llm, template=template("deepseek-v3.1")).family == "deepseek"
        assert chat_handler_for(llm, family="mistral").family == "mistral"
    finally:
        llm.metadata["tokenizer.chat_template"] = original


def test_auto_tool_calls(llm: Any) -> None:
    with_template(llm, "qwen3")
    r = llm.create_chat_completion(MSGS, tools=TOOLS, tool_choice="auto", logits_processor=steer(llm, QWEN_CALLS),
                                   temperature=0.0, max_tokens=200)
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert calls_of(choice["message"]) == WANT
    assert choice["message"]["content"] is None and choice["message"]["reasoning_content"] == "Two tools."
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in choice["message"]["tool_calls"])
    assert r["usage"]["completion_tokens"] == len(llm.tokenize(QWEN_CALLS.encode(), add_bos=False, special=True))


def test_auto_streamed_equals_whole(llm: Any) -> None:
    openai_types = pytest.importorskip("openai.types.chat")
    with_template(llm, "qwen3")
    kw = dict(tools=TOOLS, tool_choice="auto", temperature=0.0, max_tokens=200)
    whole = llm.create_chat_completion(MSGS, logits_processor=steer(llm, QWEN_CALLS), **kw)
    chunks = list(llm.create_chat_completion(MSGS, logits_processor=steer(llm, QWEN_CALLS), stream=True, **kw))
    for c in chunks:
        openai_types.ChatCompletionChunk(**c)
    got = assemble(chunks)
    assert without_ids(got) == without_ids(flat(whole["choices"][0]["message"], whole["choices"][0]["finish_reason"]))
    assert len({c["id"] for c in chunks}) == 1 and got["role"] == "assistant"


def test_tool_choice_none_leaves_text(llm: Any) -> None:
    with_template(llm, "qwen3")
    r = llm.create_chat_completion(MSGS, tools=TOOLS, tool_choice="none", logits_processor=steer(llm, QWEN_CALLS),
                                   temperature=0.0, max_tokens=200)
    msg = r["choices"][0]["message"]
    assert "tool_calls" not in msg and msg["content"].startswith("<tool_call>")
    assert r["choices"][0]["finish_reason"] == "stop"


def test_required_is_a_well_formed_call(llm: Any) -> None:
    """Random weights, our grammar: whatever the model picks is a call of one of the tools, valid by schema
    (thinking off: the grammar allows a reasoning block first, where a random model would stay)."""
    with_template(llm, "qwen3", template_kwargs={"enable_thinking": False})
    for stream in (False, True):
        out = llm.create_chat_completion(MSGS, tools=BOUNDED, tool_choice="required", temperature=0.0,
                                         max_tokens=300, stream=stream)
        msg = assemble(out) if stream else flat(out["choices"][0]["message"], out["choices"][0]["finish_reason"])
        assert msg["tool_calls"], msg
        for call in msg["tool_calls"][:-1] if msg["finish_reason"] == "length" else msg["tool_calls"]:
            args = json.loads(call["arguments"])
            if call["name"] == "set_unit":
                assert args["unit"] in ("celsius", "fahrenheit") and isinstance(args["days"], int)
            else:
                assert call["name"] == "get_time" and args["zone"] in ("UTC", "CET")


def test_named_tool(llm: Any) -> None:
    handler = with_template(llm, "qwen3")
    choice = {"type": "function", "function": {"name": "get_time"}}
    r = handler(llama=llm, messages=MSGS, tools=BOUNDED, tool_choice=choice, temperature=0.0, max_tokens=100,
                parallel_tool_calls=False, chat_template_kwargs={"enable_thinking": False})
    assert r["choices"][0]["finish_reason"] == "tool_calls"
    assert [name for name, _ in calls_of(r["choices"][0]["message"])] == ["get_time"]
    chunks = list(handler(llama=llm, messages=MSGS, tools=BOUNDED, tool_choice=choice, temperature=0.0,
                          max_tokens=100, parallel_tool_calls=False, stream=True,
                          chat_template_kwargs={"enable_thinking": False}))
    assert without_ids(assemble(chunks)) == without_ids(flat(r["choices"][0]["message"], "tool_calls"))


def test_qwen35_xml_calls(llm: Any) -> None:
    with_template(llm, "qwen3.5")
    text = ("Paris, two days.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
            "</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>")
    r = llm.create_chat_completion(MSGS, tools=TOOLS, logits_processor=steer(llm, text), temperature=0.0,
                                   max_tokens=200)
    msg = r["choices"][0]["message"]
    assert calls_of(msg) == WANT[:1] and msg["reasoning_content"] == "Paris, two days."


def test_deepseek_markers_split_into_bytes(llm: Any) -> None:
    """The tiny vocabulary spells DeepSeek's full-width markers byte by byte: characters split across tokens."""
    with_template(llm, "deepseek-v3.1")
    text = ('Checking.</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>'
            '{"city": "Paris", "days": 2}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>'
            '{"timezone": "Europe/Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
    kw = dict(tools=TOOLS, temperature=0.0, max_tokens=300)
    r = llm.create_chat_completion(MSGS, logits_processor=steer(llm, text), **kw)
    assert calls_of(r["choices"][0]["message"]) == WANT
    assert r["choices"][0]["message"]["reasoning_content"] == "Checking."
    got = assemble(llm.create_chat_completion(MSGS, logits_processor=steer(llm, text), stream=True, **kw))
    assert without_ids(got) == without_ids(flat(r["choices"][0]["message"], "tool_calls"))


def test_harmony_call_stops_at_call_token(llm: Any) -> None:
    with_template(llm, "gpt-oss")
    text = ("<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
            'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris", "days": 2}<|call|>'
            "<|start|>assistant<|channel|>final<|message|>never reached")
    r = llm.create_chat_completion(MSGS, tools=TOOLS, logits_processor=steer(llm, text), temperature=0.0,
                                   max_tokens=300)
    msg = r["choices"][0]["message"]
    assert calls_of(msg) == WANT[:1] and msg["reasoning_content"] == "Need weather."
    assert r["choices"][0]["finish_reason"] == "tool_calls"


def test_length_and_plain_answer(llm: Any) -> None:
    with_template(llm, "qwen3")
    r = llm.create_chat_completion(MSGS, tools=TOOLS, logits_processor=steer(llm, "Hello there, friend."),
                                   temperature=0.0, max_tokens=2)
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 2
    r = llm.create_chat_completion(MSGS, logits_processor=steer(llm, "Hello there, friend."), temperature=0.0)
    assert r["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "Hello there, friend."},
                               "logprobs": None, "finish_reason": "stop"}


def test_openai_v1_wrapper(llm: Any) -> None:
    pytest.importorskip("openai")
    with_template(llm, "qwen3")
    r = llm.create_chat_completion_openai_v1(MSGS, tools=TOOLS, logits_processor=steer(llm, QWEN_CALLS),
                                             temperature=0.0, max_tokens=200)
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["get_weather", "get_time"]


def test_stop_strings_and_response_format(llm: Any) -> None:
    with_template(llm, "qwen3", template_kwargs={"enable_thinking": False})
    text = "Hello there, friend. Bye."
    for stream in (False, True):
        out = llm.create_chat_completion(MSGS, logits_processor=steer(llm, text), temperature=0.0, stop=["friend"],
                                         stream=stream)
        msg = assemble(out) if stream else flat(out["choices"][0]["message"], out["choices"][0]["finish_reason"])
        assert msg["content"] == "Hello there," and msg["finish_reason"] == "stop"
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
              "additionalProperties": False}
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    r = llm.create_chat_completion(MSGS, temperature=0.0, max_tokens=60, response_format=response_format)
    assert json.loads(r["choices"][0]["message"]["content"])["answer"] in ("yes", "no")


def test_prompt_tokens_bos(llm: Any) -> None:
    """BOS is added only where the model wants one and the template did not write it."""
    from flashmoe_gguf.chat.handler import prompt_tokens
    assert not llm._model.add_bos_token()
    assert prompt_tokens(llm, "<|im_start|>user\nhi") == llm.tokenize(b"<|im_start|>user\nhi", add_bos=False,
                                                                        special=True)


def test_mistral_on_a_sentencepiece_model() -> None:
    """Mixtral-shaped tiny model (Mistral's sentencepiece vocabulary, byte fallback) with Mistral Small 3.2's
    template: two calls in the [ARGS] form, 9-character ids, streamed and not."""
    from flashmoe_gguf import Llama
    llm = Llama(model_path=str(converted("mixtral", "default")), n_ctx=4096, verbose=False, ram_budget="64M",
                n_threads=2, seed=0)
    try:
        with_template(llm, "mistral-small-3.2")
        # compact JSON: the tiny vocabulary has no lone "▁" piece (a space before a digit would come out as
        # its byte-fallback bytes, "▁", in stock llama.cpp's detokenizer too)
        text = ('[TOOL_CALLS]get_weather[ARGS]{"city":"Paris","days":2}'
                '[TOOL_CALLS]get_time[ARGS]{"timezone":"Europe/Paris"}')
        history = [*MSGS, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0123456789", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0123456789", "content": "12:00"},
            {"role": "assistant", "content": "It is noon."}, {"role": "user", "content": "And the weather?"}]
        kw = dict(tools=TOOLS, temperature=0.0, max_tokens=300)
        r = llm.create_chat_completion(history, logits_processor=steer(llm, text), **kw)
        msg = r["choices"][0]["message"]
        assert calls_of(msg) == WANT and msg["content"] is None
        assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in msg["tool_calls"])
        got = assemble(llm.create_chat_completion(history, logits_processor=steer(llm, text), stream=True, **kw))
        assert without_ids(got) == without_ids(flat(msg, "tool_calls"))
    finally:
        llm.close()
