"""Output parsers of each family on the text those models write (as their chat templates and model cards
show it): several calls, reasoning with calls, malformed output degrading to content; streamed output split
at every position gives the same message as the whole."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from chat_support import SCHEMAS, assemble, flat, without_ids
from flashmoe_gguf.chat import make_format
from flashmoe_gguf.chat.formats.qwen_xml import coerce
from flashmoe_gguf.chat.response import CallIds, DeltaStream, Meta, chunk, finish_reason, message
from flashmoe_gguf.chat.types import Parsed, ParseOptions, ToolCall

DS_BEGIN, DS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL, DS_CALL_END, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
THINK = "<think></think>"       # a template source that has reasoning tags


def W(city: str = "Paris", **kw: Any) -> ToolCall:
    return ToolCall("get_weather", json.dumps({"city": city, **kw}))


T = ToolCall("get_time", json.dumps({"timezone": "Europe/Paris"}))
T0 = ToolCall("get_time", "{}")

# (id, family, template source features, reasoning state, output text, expected)
CASES: list[tuple[str, str, str, str, str, Parsed]] = [
    # -- Qwen3 / Qwen2.5 / QwQ --
    ("qwen3-two-calls-with-reasoning", "hermes", THINK, "none",
     "<think>\nThe user wants the weather and the time in Paris. I'll call both tools.\n</think>\n\n"
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}\n</tool_call>',
     Parsed("The user wants the weather and the time in Paris. I'll call both tools.", "", (W(), T))),
    ("qwen2.5-content-then-call", "hermes", "", "none",
     'Let me check that for you.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}'
     "\n</tool_call>", Parsed("", "Let me check that for you.", (W(days=3),))),
    ("qwen3-answer-only", "hermes", THINK, "none",
     "<think>\nSimple question.\n</think>\n\nThe capital of France is Paris.",
     Parsed("Simple question.", "The capital of France is Paris.")),
    ("qwq-open-reasoning", "hermes", THINK, "open",
     "Okay, the user asks for the time.\n</think>\n\n"
     '<tool_call>\n{"name": "get_time", "arguments": "{\\"timezone\\": \\"Europe/Paris\\"}"}\n</tool_call>',
     Parsed("Okay, the user asks for the time.", "", (T,))),
    ("qwen3-unterminated-call", "hermes", THINK, "none",
     'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
     Parsed("", 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}')),
    ("qwen3-invalid-json", "hermes", THINK, "none",
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}}\n</tool_call>',
     Parsed("", '<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}}\n</tool_call>')),
    ("qwen3-unknown-tool-then-good-call", "hermes", THINK, "none",
     '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>\n'
     '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
     Parsed("", '<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>', (T0,))),
    ("qwen3-unterminated-reasoning", "hermes", THINK, "none", "<think>\nHmm, let me think about",
     Parsed("Hmm, let me think about")),
    ("qwen3-markup-looking-text", "hermes", THINK, "none", "Use <b>bold</b> and a < b, or <tool_cal",
     Parsed("", "Use <b>bold</b> and a < b, or <tool_cal")),
    # -- Qwen3.5 / Qwen3-Coder --
    ("qwen3.5-reasoning-and-xml-call", "qwen-xml", THINK, "open",
     "The user wants a 3-day forecast for Paris.\n</think>\n\n<tool_call>\n<function=get_weather>\n"
     "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
     Parsed("The user wants a 3-day forecast for Paris.", "", (W(days=3),))),
    ("qwen3-coder-two-calls-multiline", "qwen-xml", "", "none",
     "I'll look up both.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\nCity\n</parameter>\n"
     "<parameter=unit>\ncelsius\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n"
     "<parameter=timezone>\nEurope/Paris\n</parameter>\n</function>\n</tool_call>",
     Parsed("", "I'll look up both.", (W("New York\nCity", unit="celsius"), T))),
    ("qwen3-coder-value-with-markup", "qwen-xml", "", "none",
     "<tool_call>\n<function=get_weather>\n<parameter=city>\n<b>Paris</b> </function> x\n</parameter>\n"
     "</function>\n</tool_call>", Parsed("", "", (W("<b>Paris</b> </function> x"),))),
    ("qwen3-coder-missing-function-end", "qwen-xml", "", "none",
     "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</tool_call> after",
     Parsed("", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</tool_call> after")),
    ("qwen3-coder-unknown-function", "qwen-xml", "", "none",
     "<tool_call>\n<function=rm_rf>\n</function>\n</tool_call>",
     Parsed("", "<tool_call>\n<function=rm_rf>\n</function>\n</tool_call>")),
    ("qwen3-coder-unterminated", "qwen-xml", "", "none",
     "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar",
     Parsed("", "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar")),
    # -- DeepSeek V3.1 / V3 / R1 --
    ("deepseek-v3.1-two-calls", "deepseek", THINK, "closed",
     f'{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}{{"city": "Paris"}}{DS_CALL_END}'
     f'{DS_CALL}get_time{DS_SEP}{{"timezone": "Europe/Paris"}}{DS_CALL_END}{DS_END}', Parsed("", "", (W(), T))),
    ("deepseek-v3.1-thinking-content-call", "deepseek", THINK, "open",
     f'The user wants the weather.</think>Let me check.{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}{{"city": "Paris"}}'
     f"{DS_CALL_END}{DS_END}", Parsed("The user wants the weather.", "Let me check.", (W(),))),
    ("deepseek-r1-fenced-calls", "deepseek", THINK, "open",
     f'\nI need two tools.\n</think>\n\n{DS_BEGIN}{DS_CALL}function{DS_SEP}get_weather\n```json\n{{"city": "Paris"}}'
     f'\n```{DS_CALL_END}\n{DS_CALL}function{DS_SEP}get_time\n```json\n{{"timezone": "Europe/Paris"}}\n```'
     f"{DS_CALL_END}{DS_END}", Parsed("I need two tools.", "", (W(), T))),
    ("deepseek-block-left-open", "deepseek", "", "none",
     f'{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}{{"city": "Paris"}}{DS_CALL_END}{DS_CALL}get_ti',
     Parsed("", f"{DS_CALL}get_ti", (W(),))),
    ("deepseek-bad-json", "deepseek", "", "none",
     f'{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}{{"city": Paris}}{DS_CALL_END}{DS_END}',
     Parsed("", f'{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}{{"city": Paris}}{DS_CALL_END}{DS_END}')),
    # -- Mistral / Mixtral --
    ("mistral-nemo-list", "mistral", "", "none",
     '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1B2c3D4e"}, '
     '{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}]',
     Parsed("", "", (ToolCall(W().name, W().arguments, "a1B2c3D4e"), T))),
    ("mixtral-list-with-space", "mistral", "", "none",
     ' [TOOL_CALLS] [{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}]', Parsed("", "", (T,))),
    ("mistral-small-args-form", "mistral", "", "none",
     '[TOOL_CALLS]get_weather[CALL_ID]Zz9Yy8Xx7[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]'
     '{"timezone": "Europe/Paris"}', Parsed("", "", (ToolCall(W().name, W().arguments, "Zz9Yy8Xx7"), T))),
    ("mistral-truncated-json", "mistral", "", "none", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"ci',
     Parsed("", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"ci')),
    ("mistral-unknown-tool", "mistral", "", "none", '[TOOL_CALLS]nuke[ARGS]{"x": 1}',
     Parsed("", '[TOOL_CALLS]nuke[ARGS]{"x": 1}')),
    ("mistral-plain-answer", "mistral", "", "none", " The weather is [mostly] sunny.",
     Parsed("", "The weather is [mostly] sunny.")),
    # -- GPT-OSS harmony --
    ("harmony-analysis-then-call", "harmony", "", "none",
     "<|channel|>analysis<|message|>User asks weather in Paris. Use get_weather.<|end|><|start|>assistant"
     '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}',
     Parsed("User asks weather in Paris. Use get_weather.", "", (W(),))),
    ("harmony-recipient-in-role-header", "harmony", "", "none",
     ' to=functions.get_time<|channel|>commentary json<|message|>{"timezone": "Europe/Paris"}<|call|>',
     Parsed("", "", (T,))),
    ("harmony-final-answer", "harmony", "", "none",
     "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final<|message|>Paris is sunny.",
     Parsed("Easy.", "Paris is sunny.")),
    ("harmony-preamble-and-call", "harmony", "", "none",
     "<|channel|>analysis<|message|>Need tool.<|end|><|start|>assistant<|channel|>commentary<|message|>"
     "Checking the weather now.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather "
     '<|constrain|>json<|message|>{"city": "Paris", "days": 2}',
     Parsed("Need tool.", "Checking the weather now.", (W(days=2),))),
    ("harmony-bad-json", "harmony", "", "none",
     '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": Par',
     Parsed("", '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": Par')),
    ("harmony-unknown-function", "harmony", "", "none",
     '<|channel|>commentary to=functions.nuke <|constrain|>json<|message|>{}',
     Parsed("", "<|channel|>commentary to=functions.nuke <|constrain|>json<|message|>{}")),
    ("harmony-unterminated-analysis", "harmony", "", "none", "<|channel|>analysis<|message|>Thinking about it",
     Parsed("Thinking about it")),
    ("harmony-no-channels", "harmony", "", "none", "Just text.", Parsed("", "Just text.")),
    # -- no tool format --
    ("plain-think", "plain", THINK, "none", "<think>Why?</think>Because.", Parsed("Why?", "Because.")),
    ("plain-no-tags", "plain", "", "none", "<think>Why?</think>Because.", Parsed("", "<think>Why?</think>Because.")),
]
IDS = [c[0] for c in CASES]


def opts(state: str, tools: bool = True) -> ParseOptions:
    return ParseOptions(SCHEMAS if tools else {}, state)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parse(case: tuple) -> None:
    _, family, src, state, text, want = case
    assert make_format(family, src).parse(text, True, opts(state)) == want


def _stream(family: str, src: str, state: str, pieces: list[str], parallel: bool = True) -> dict[str, Any]:
    """What a client assembles from the chunks of this output arriving in these pieces (as the handler
    streams it)."""
    fmt = make_format(family, src)
    ids = CallIds(fmt, lambda: "RANDOMID0123")
    meta = Meta("chatcmpl-x", 0, "m")
    stream = DeltaStream(ids)

    def parse(text: str, final: bool) -> Parsed:
        p = fmt.parse(text, final, opts(state))
        return p if parallel else p.first_call_only()
    chunks = [chunk(meta, {"role": "assistant"})]
    text = ""
    for piece in pieces:
        text += piece
        chunks += [chunk(meta, d) for d in stream.deltas(parse(text, False))]
    final = parse(text, True)
    chunks += [chunk(meta, d) for d in stream.deltas(final)]
    chunks.append(chunk(meta, {}, finish_reason(final, "stop")))
    return assemble(chunks)


def _whole(family: str, src: str, state: str, text: str, parallel: bool = True) -> dict[str, Any]:
    fmt = make_format(family, src)
    p = fmt.parse(text, True, opts(state))
    p = p if parallel else p.first_call_only()
    return flat(message(p, CallIds(fmt, lambda: "RANDOMID0123")), finish_reason(p, "stop"))


def _tokens(text: str) -> list[str]:
    """Pieces the way a tokenizer would cut the text: special markers whole, words, spaces, punctuation."""
    return re.findall(r"<\|[a-z_]+\|>|<｜[^｜]+｜>|\[[A-Z_]+\]|</?[a-z_]+>|\w+|\s+|.", text)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_stream_equals_whole(case: tuple) -> None:
    _, family, src, state, text, _ = case
    whole = _whole(family, src, state, text)
    assert _stream(family, src, state, list(text)) == whole                     # character by character
    assert _stream(family, src, state, _tokens(text)) == whole                  # token by token
    for i in range(len(text) + 1):                                              # split at every position
        assert _stream(family, src, state, [text[:i], text[i:]]) == whole, i
    assert _stream(family, src, state, list(text), parallel=False) == _whole(family, src, state, text, False)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_partial_parses_only_grow(case: tuple) -> None:
    """Every partial parse is a prefix of the next and of the final one (what streaming relies on)."""
    _, family, src, state, text, _ = case
    fmt = make_format(family, src)
    prev = Parsed()
    for i in range(len(text) + 1):
        p = fmt.parse(text[:i], i == len(text), opts(state))
        assert p.reasoning.startswith(prev.reasoning) and p.content.startswith(prev.content), (i, prev, p)
        assert p.tool_calls[:len(prev.tool_calls)] == prev.tool_calls, i
        prev = p


def test_marker_prefix_held_back_until_decided() -> None:
    fmt = make_format("hermes", THINK)
    assert fmt.parse("Sure. <tool_", False, opts("none")).content == "Sure."
    assert fmt.parse("Sure. <tool_", True, opts("none")).content == "Sure. <tool_"
    assert fmt.parse("Sure. <tool_call>\n{\"name\": \"get_we", False, opts("none")) == Parsed("", "Sure.")
    assert fmt.parse("<thi", False, opts("none")) == Parsed()
    assert fmt.parse("<thi", True, opts("none")) == Parsed("", "<thi")


def test_tool_choice_none_keeps_calls_as_content() -> None:
    text = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert make_format("hermes", "").parse(text, True, opts("none", tools=False)) == Parsed("", text)
    harmony = '<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{}'
    assert make_format("harmony", "").parse(harmony, True, opts("none", tools=False)).tool_calls == ()


def test_parallel_false_keeps_first_call() -> None:
    text = CASES[0][4]
    got = _whole("hermes", THINK, "none", text, parallel=False)
    assert [c["name"] for c in got["tool_calls"]] == ["get_weather"]


@pytest.mark.parametrize("raw,schema,want", [
    ("3", {"type": "integer"}, 3), ("3.5", {"type": "number"}, 3.5), ("True", {"type": "boolean"}, True),
    ("false", {"type": "boolean"}, False), ('{"a": [1]}', {"type": "object"}, {"a": [1]}),
    ("[1, 2]", {"type": "array"}, [1, 2]), ("null", {"type": ["string", "null"]}, None),
    ("42", {"type": "string"}, "42"), ("42", None, "42"), ("abc", {"type": "integer"}, "abc"),
    ("7", {"anyOf": [{"type": "integer"}, {"type": "string"}]}, 7),
    ("seven", {"anyOf": [{"type": "integer"}, {"type": "string"}]}, "seven"),
    (" 12 ", {"type": "integer"}, 12), ("celsius", {"enum": ["celsius", "fahrenheit"]}, "celsius"),
])
def test_xml_values_typed_by_schema(raw: str, schema: Any, want: Any) -> None:
    assert coerce(raw, schema) == want


def test_ids() -> None:
    mistral, qwen = make_format("mistral", "[ARGS]"), make_format("hermes", "")
    p = Parsed("", "", (W(), ToolCall("get_time", "{}", "Given1234")))
    msg = message(p, CallIds(mistral))
    ids = [c["id"] for c in msg["tool_calls"]]
    assert re.fullmatch(r"[A-Za-z0-9]{9}", ids[0]) and ids[1] == "Given1234"
    msg = message(p, CallIds(qwen))
    assert msg["tool_calls"][0]["id"].startswith("call_") and msg["content"] is None


def test_openai_package_accepts_the_objects() -> None:
    openai_types = pytest.importorskip("openai.types.chat")
    from flashmoe_gguf.chat.response import completion
    fmt = make_format("hermes", THINK)
    p = fmt.parse(CASES[0][4], True, opts("none"))
    obj = openai_types.ChatCompletion(**completion(Meta("chatcmpl-x", 0, "m"), p, CallIds(fmt), "tool_calls", 10, 5))
    assert obj.choices[0].message.tool_calls[1].function.name == "get_time"
    assert obj.choices[0].message.reasoning_content == p.reasoning          # type: ignore[attr-defined]
    meta, stream = Meta("chatcmpl-x", 0, "m"), DeltaStream(CallIds(fmt))
    deltas = [{"role": "assistant"}, *stream.deltas(p)]
    chunks = [openai_types.ChatCompletionChunk(**chunk(meta, d)) for d in deltas]
    chunks.append(openai_types.ChatCompletionChunk(**chunk(meta, {}, "tool_calls")))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert [c.choices[0].delta.tool_calls[0].index for c in chunks if c.choices[0].delta.tool_calls] == [0, 0, 1, 1]


def test_without_ids_helper() -> None:
    assert without_ids({"tool_calls": [{"id": "x", "name": "n"}]}) == {"tool_calls": [{"id": None, "name": "n"}]}
