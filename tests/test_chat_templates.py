"""The GGUF's own chat template, rendered as transformers does, with tools, tool calls and tool results in
the history: the model vendors' real templates (llama.cpp ships them; read from the pinned sdist)."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from chat_support import TEMPLATES, TOOLS, template
from flashmoe_gguf.chat import ChatHandler, ChatTemplate, TemplateError, detect_family, make_format
from flashmoe_gguf.chat.history import probe_traits
from flashmoe_gguf.chat.types import ParseOptions

BOS = {"deepseek-v3.1": "<｜begin▁of▁sentence｜>", "deepseek-r1-distill": "<｜begin▁of▁sentence｜>",
       "mistral-nemo": "<s>", "mistral-small-3.2": "<s>", "devstral": "<s>"}
EOS = {"deepseek-v3.1": "<｜end▁of▁sentence｜>", "deepseek-r1-distill": "<｜end▁of▁sentence｜>",
       "mistral-nemo": "</s>", "mistral-small-3.2": "</s>", "devstral": "</s>", "gpt-oss": "<|return|>"}
FAMILY = {"qwen3": "hermes", "qwen2.5": "hermes", "qwq": "hermes", "qwen3.5": "qwen-xml",
          "qwen3-coder": "qwen-xml", "deepseek-v3.1": "deepseek", "deepseek-r1-distill": "deepseek",
          "mistral-nemo": "mistral", "mistral-small-3.2": "mistral", "devstral": "mistral", "gpt-oss": "harmony"}
# how each template writes the assistant's tool call in the history (the format the model was taught)
CALL_TEXT = {
    "qwen3": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
    "qwen2.5": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
    "qwq": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
    "qwen3.5": "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
               "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>",
    "qwen3-coder": "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                   "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>",
    "deepseek-v3.1": '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris", "days": 2}'
                     '<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    "deepseek-r1-distill": '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n'
                           '{"city": "Paris", "days": 2}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    "mistral-nemo": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}, "id": "',
    "mistral-small-3.2": '[TOOL_CALLS]get_weather[CALL_ID]',
    "devstral": '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 2}',
    "gpt-oss": '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>'
               '{"city": "Paris", "days": 2}<|call|>',
}
# what the template writes for the tool result
RESULT_TEXT = {"qwen3": "<tool_response>\n{\"temp\": 21}\n</tool_response>",
               "qwen3.5": "<tool_response>\n{\"temp\": 21}\n</tool_response>",
               "deepseek-v3.1": '<｜tool▁output▁begin｜>{"temp": 21}<｜tool▁output▁end｜>',
               "mistral-small-3.2": '[TOOL_CONTENT]{"temp": 21}[/TOOL_RESULTS]',
               "gpt-oss": '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>'
                          '"{\\"temp\\": 21}"<|end|>'}
# the end of the prompt (the generation prompt, with enable_thinking true as llama.cpp passes it)
PROMPT_END = {"qwen3": "<|im_start|>assistant\n", "qwen3.5": "<|im_start|>assistant\n<think>\n",
              "qwq": "<|im_start|>assistant\n<think>\n", "deepseek-v3.1": "<｜Assistant｜><think>",
              "deepseek-r1-distill": "<｜Assistant｜><think>\n", "mistral-nemo": "And tomorrow?[/INST]",
              "gpt-oss": "<|start|>assistant"}
REASONING_STATE = {"qwen3": "none", "qwen3.5": "open", "qwq": "open", "deepseek-v3.1": "open",
                   "deepseek-r1-distill": "open", "mistral-nemo": "none", "gpt-oss": "none"}

NOW = datetime(2025, 3, 14, 15, 9)


def history(arguments: object = '{"city": "Paris", "days": 2}', call_id: str = "call_w1") -> list[dict]:
    return [{"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "reasoning_content": "The user wants the weather.",
             "tool_calls": [{"id": call_id, "type": "function",
                             "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": call_id, "content": '{"temp": 21}'},
            {"role": "assistant", "content": "It is 21 degrees in Paris."},
            {"role": "user", "content": "And tomorrow?"}]


def handler(name: str, **kw: object) -> ChatHandler:
    src = template(name)
    return ChatHandler(ChatTemplate(src, BOS.get(name, ""), EOS.get(name, "<|im_end|>"), now=lambda: NOW),
                       make_format(detect_family(src), src), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_family_detected(name: str) -> None:
    assert detect_family(template(name)) == FAMILY[name]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_history_with_tool_calls_and_results(name: str) -> None:
    h = handler(name)
    prompt = h.prepare(history(), tools=TOOLS).prompt
    assert CALL_TEXT[name] in prompt
    assert "get_time" in prompt and "City name" in prompt           # the tools, described by the template
    assert RESULT_TEXT.get(name, '{"temp": 21}') in prompt
    if name in PROMPT_END:
        assert prompt.endswith(PROMPT_END[name])
        assert h.prepare(history(), tools=TOOLS).options.reasoning == REASONING_STATE[name]
    if name in BOS:
        assert prompt.startswith(BOS[name])


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_arguments_as_text_or_object_render_alike(name: str) -> None:
    """OpenAI clients send arguments as JSON text; templates that iterate over them get a mapping."""
    h = handler(name)
    as_text = h.prepare(history('{"city": "Paris", "days": 2}'), tools=TOOLS).prompt
    as_object = h.prepare(history({"city": "Paris", "days": 2}), tools=TOOLS).prompt
    assert as_text == as_object
    assert "\\\"city\\\"" not in as_text          # no JSON text written as a JSON string


def test_traits() -> None:
    assert probe_traits(ChatTemplate(template("qwen3.5"))).object_arguments
    assert probe_traits(ChatTemplate(template("deepseek-v3.1"))).object_arguments
    string_args = ChatTemplate("{% for m in messages %}{% for c in m.tool_calls or [] %}"
                               "{{ c.function.name + ':' + c.function.arguments }}{% endfor %}{% endfor %}")
    assert not probe_traits(string_args).object_arguments
    h = ChatHandler(string_args, make_format("hermes", None))
    assert h.prepare(history({"city": "Paris"}), tools=TOOLS).prompt == 'get_weather:{"city": "Paris"}'
    assert probe_traits(ChatTemplate(template("mistral-nemo"))).short_ids
    assert not probe_traits(ChatTemplate(template("qwen3"))).short_ids


def test_mistral_ids_mapped_consistently() -> None:
    prompt = handler("mistral-small-3.2").prepare(history(call_id="call_0123456789abcdef"), tools=TOOLS).prompt
    call_id = prompt.split("[CALL_ID]")[1][:9]
    assert call_id.isalnum() and len(call_id) == 9
    assert f"[TOOL_RESULTS]{call_id}[TOOL_CONTENT]" in prompt
    # an id that already fits is kept
    assert "[CALL_ID]abcDEF123[ARGS]" in handler("mistral-small-3.2").prepare(history(call_id="abcDEF123"),
                                                                               tools=TOOLS).prompt


def test_strftime_now_and_default_system() -> None:
    prompt = handler("mistral-small-3.2").prepare([{"role": "user", "content": "Hi"}]).prompt
    assert "The current date is 2025-03-14." in prompt
    assert prompt.startswith("<s>[SYSTEM_PROMPT]You are Mistral Small 3") and prompt.endswith("[INST]Hi[/INST]")
    assert "Current date: 2025-03-14" in handler("gpt-oss").prepare([{"role": "user", "content": "Hi"}]).prompt


def test_raise_exception_is_a_template_error() -> None:
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(TemplateError, match="alternate"):
        handler("mistral-nemo").prepare(bad)


def test_enable_thinking_and_template_kwargs() -> None:
    h = handler("qwen3")
    p = h.prepare([{"role": "user", "content": "Hi"}], chat_template_kwargs={"enable_thinking": False})
    assert p.prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and p.options.reasoning == "closed"
    p = handler("deepseek-v3.1").prepare([{"role": "user", "content": "Hi"}],
                                          chat_template_kwargs={"enable_thinking": False})
    assert p.prompt.endswith("<｜Assistant｜><think></think>") and p.options.reasoning == "closed"
    p = handler("gpt-oss", template_kwargs={"reasoning_effort": "high"}).prepare([{"role": "user", "content": "Hi"}])
    assert "Reasoning: high" in p.prompt


def test_harmony_reasoning_goes_to_thinking() -> None:
    """gpt-oss renders the analysis of a tool-call turn that no final answer follows yet (from `thinking`)."""
    msgs = history()[:4]
    prompt = handler("gpt-oss").prepare(msgs, tools=TOOLS).prompt
    assert ("<|start|>assistant<|channel|>analysis<|message|>The user wants the weather.<|end|>"
            "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>") in prompt


def test_content_parts_and_developer_role() -> None:
    msgs = [{"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    prompt = handler("qwen3").prepare(msgs).prompt
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt and "Hello\nthere" in prompt
    assert "# Instructions\n\nBe brief." in handler("gpt-oss").prepare(msgs).prompt


def test_tool_choice_none_still_renders_tools() -> None:
    p = handler("qwen3").prepare([{"role": "user", "content": "Hi"}], tools=TOOLS, tool_choice="none")
    assert "<tools>" in p.prompt and dict(p.options.tools) == {} and p.grammar is None


def test_bad_requests() -> None:
    h = handler("qwen3")
    msgs = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="not one of the tools"):
        h.prepare(msgs, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ValueError, match="needs tools"):
        h.prepare(msgs, tool_choice="required")
    with pytest.raises(ValueError, match="tool_choice"):
        h.prepare(msgs, tools=TOOLS, tool_choice="sometimes")
    with pytest.raises(ValueError, match="not JSON"):
        h.prepare(history("{not json"), tools=TOOLS)


def test_legacy_functions() -> None:
    h = handler("qwen3")
    p = h.prepare([{"role": "user", "content": "Hi"}], functions=[t["function"] for t in TOOLS],
                  function_call={"name": "get_time"})
    assert "get_time" in p.prompt and p.grammar is not None and "get_weather" not in p.grammar


def _assistant_output(h: ChatHandler, msgs: list[dict], role_header: str) -> str:
    """The text a template writes for the last (assistant) message: what the model is taught to output."""
    t = h.template
    before = t.render(_normalized(h, msgs[:-1]), TOOLS, add_generation_prompt=False, enable_thinking=True)
    full = t.render(_normalized(h, msgs), TOOLS, add_generation_prompt=False, enable_thinking=True)
    assert full.startswith(before)
    out = full[len(before):]
    assert out.startswith(role_header), out[:80]
    out = out[len(role_header):]
    ends = [out.find(s) for s in (*h.format.stops(), t.eos_token, "<|im_end|>") if s and s in out]
    return out[:min(ends)] if ends else out


def _normalized(h: ChatHandler, msgs: list[dict]) -> list[dict]:
    from flashmoe_gguf.chat.history import normalize_messages
    return h.format.prepare_messages(normalize_messages(msgs, probe_traits(h.template), h.format.name == "harmony"))


ROLE_HEADER = {"qwen3": "<|im_start|>assistant\n", "qwen2.5": "<|im_start|>assistant\n",
               "qwq": "<|im_start|>assistant\n", "qwen3.5": "<|im_start|>assistant\n",
               "qwen3-coder": "<|im_start|>assistant\n", "deepseek-v3.1": "<｜Assistant｜>",
               "deepseek-r1-distill": "<｜Assistant｜>", "mistral-nemo": "", "mistral-small-3.2": "",
               "devstral": "", "gpt-oss": "<|start|>assistant"}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_parser_reads_what_the_template_writes(name: str) -> None:
    """The template's rendering of an assistant turn with tool calls, parsed by the family's parser, gives
    the same calls back (gpt-oss renders one call per turn)."""
    h = handler(name)
    calls = [{"id": f"call{i}abcd", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
             for i, (n, a) in enumerate([("get_weather", {"city": "Paris", "days": 2, "unit": "celsius"}),
                                         ("get_time", {"timezone": "Europe/Paris"})])]
    msgs = [{"role": "user", "content": "Weather and time in Paris?"},
            {"role": "assistant", "content": "", "reasoning_content": "Two tools.", "tool_calls": calls}]
    out = _assistant_output(h, msgs, ROLE_HEADER[name])
    parsed = h.format.parse(out, True, ParseOptions({t["function"]["name"]: t["function"]["parameters"]
                                                     for t in TOOLS}))
    want = calls[:1] if name == "gpt-oss" else calls
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == \
        [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in want]
    assert parsed.content == ""
