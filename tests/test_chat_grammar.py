"""The grammars that enforce tool_choice "required" / a named function, run by llama.cpp's own grammar
engine (the sampler the generation uses) on the tiny test vocabulary: the call layouts the templates teach
are accepted (with the reasoning a template allows before them), other text is not."""

from __future__ import annotations

import ctypes
import math
from typing import Any

import pytest

from chat_support import TOOLS
from conftest import converted
from flashmoe_gguf.chat import make_format
from flashmoe_gguf.chat.grammar import Grammar, lit
from flashmoe_gguf.chat.request import functions_of

W_HERMES = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
T_HERMES = '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "UTC"}}\n</tool_call>'
W_XML = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n\nCity\n</parameter>\n"
         "<parameter=days>\n2\n</parameter>\n<parameter=unit>\ncelsius\n</parameter>\n</function>\n</tool_call>")
T_XML = "<tool_call>\n<function=get_time>\n</function>\n</tool_call>"
DS = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜>"
DS_T = "<｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}<｜tool▁call▁end｜>"
DS_FENCED = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
             "{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
HARMONY = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}'


@pytest.fixture(scope="module")
def vocab_llama() -> Any:
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(converted("qwen3_moe", "default")), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def accepts(llm: Any, gbnf: str, text: str) -> bool:
    """llama.cpp's grammar sampler allows text token by token, and then the end of generation."""
    import llama_cpp
    vocab = llm._model.vocab
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    assert sampler, "llama.cpp refused the grammar:\n" + gbnf

    def allowed(token: int) -> bool:
        data = (llama_cpp.llama_token_data * 1)()
        data[0].id, data[0].logit, data[0].p = token, 0.0, 0.0
        arr = llama_cpp.llama_token_data_array(data, 1, -1, False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
        return not math.isinf(data[0].logit)
    try:
        for token in llm.tokenize(text.encode(), add_bos=False, special=False):
            if not allowed(token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return allowed(llm.token_eos())
    finally:
        llama_cpp.llama_sampler_free(sampler)


FUNCS = functions_of(TOOLS)
WEATHER_ONLY = [f for f in FUNCS if f.name == "get_weather"]

# (family, template features, reasoning state, parallel, functions, accepted, rejected)
GRAMMARS = [
    ("hermes", "", "none", True, FUNCS, [W_HERMES, T_HERMES, W_HERMES + "\n" + T_HERMES],
     ["Sure. " + W_HERMES, W_HERMES.replace("get_weather", "get_wether"), W_HERMES[:-3], "Hello"]),
    ("hermes", "", "none", False, FUNCS, [W_HERMES], [W_HERMES + "\n" + T_HERMES]),
    ("hermes", "<think>", "none", True, WEATHER_ONLY, [W_HERMES, "<think>\nI should call it.\n</think>\n\n" + W_HERMES],
     [T_HERMES, "<think>x</think>" + T_HERMES]),
    ("hermes", "<think>", "open", True, FUNCS, ["Reasoning with </b> tags.\n</think>\n\n" + W_HERMES],
     [W_HERMES]),
    ("hermes", "<think>", "closed", True, FUNCS, [W_HERMES], ["<think>\nx\n</think>\n\n" + W_HERMES]),
    ("qwen-xml", "<think>", "open", True, FUNCS, ["Fine.\n</think>\n\n" + W_XML, "x</think>" + T_XML + "\n" + W_XML],
     [W_XML, "x</think>" + W_XML.replace("<parameter=days>\n2", "<parameter=days>\ntwo")]),
    ("qwen-xml", "", "none", False, FUNCS, [W_XML, T_XML,
                                            W_XML.replace("<parameter=unit>\ncelsius\n</parameter>\n", "")],
     [W_XML.replace("<parameter=city>\nNew York\n\nCity\n</parameter>\n", ""),
      W_XML.replace("celsius", "kelvin")]),
    ("deepseek", "", "none", True, FUNCS, [DS + "<｜tool▁calls▁end｜>", DS + DS_T + "<｜tool▁calls▁end｜>"],
     [DS, DS_FENCED]),
    ("deepseek", "```json", "none", False, FUNCS, [DS_FENCED], [DS + "<｜tool▁calls▁end｜>"]),
    ("mistral", "", "none", True, FUNCS,
     ['[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]'],
     ['[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}']),
    ("mistral", "[ARGS]", "none", True, FUNCS,
     ['[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
      '[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}'],
     ['[TOOL_CALLS]get_weather[CALL_ID]a1[ARGS]{"city": "Paris"}', '[TOOL_CALLS]get_weather[ARGS]{}']),
    ("harmony", "", "none", False, FUNCS,
     [HARMONY, "<|channel|>analysis<|message|>Use the tool.<|end|><|start|>assistant" + HARMONY],
     ["<|channel|>final<|message|>Hi", HARMONY.replace("get_weather", "nope")]),
]


@pytest.mark.parametrize("case", GRAMMARS, ids=[f"{c[0]}-{c[1] or 'plain'}-{c[2]}-{'par' if c[3] else 'one'}"
                                                for c in GRAMMARS])
def test_call_grammar(vocab_llama: Any, case: tuple) -> None:
    family, src, state, parallel, funcs, good, bad = case
    fmt = make_format(family, src)
    gbnf = fmt.grammar(funcs, parallel, state)
    for text in good:
        assert accepts(vocab_llama, gbnf, text), text
    for text in bad:
        assert not accepts(vocab_llama, gbnf, text), text


def test_grammar_output_parses_back() -> None:
    """What the grammars accept, the parsers read as the calls (the accepted samples above)."""
    from chat_support import SCHEMAS
    from flashmoe_gguf.chat.types import ParseOptions
    for family, src, state, _, _, good, _ in GRAMMARS:
        fmt = make_format(family, src)
        for text in good:
            parsed = fmt.parse(text, True, ParseOptions(SCHEMAS, state))  # type: ignore[arg-type]
            assert parsed.tool_calls and parsed.content == "", (family, text, parsed)


@pytest.mark.parametrize("stop,good,bad", [
    ("</think>", ["", "a", "x<", "a</b>c", "<</thin", "</think"], ["</think>", "a</think>b"]),
    ("\n</parameter>", ["a\n", "a\n\n", "a\n<", "\n\n</param"], ["a\n</parameter>", "\n\n</parameter>x"]),
    ("aab", ["a", "aa", "aaa", "aba", "baa"], ["aab", "aaab", "xaab"]),
])
def test_until(vocab_llama: Any, stop: str, good: list[str], bad: list[str]) -> None:
    g = Grammar()
    gbnf = g.text(f"{g.until(stop)} {lit(stop)}")
    for text in good:
        assert accepts(vocab_llama, gbnf, text + stop), text
    for text in bad:
        assert not accepts(vocab_llama, gbnf, text + stop), text


def test_plain_family_has_no_call_grammar() -> None:
    with pytest.raises(ValueError, match="no tool-call format"):
        make_format("plain", "").grammar(FUNCS, True, "none")


def test_json_strings_exclude_control_characters(vocab_llama: Any) -> None:
    """A grammar-constrained argument is JSON: llama-cpp-python's schema converter lets a string hold raw control
    characters (a random model wrote \\x11 and \\x15 into a `required` call, which then did not parse); ours
    does not, and the parser reads what models do write (a raw tab) and writes the arguments out as JSON."""
    import json

    from flashmoe_gguf.chat.scan import dumps, parse_object
    g = Grammar()
    gbnf = g.text(g.json({"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}, "t"))
    assert accepts(vocab_llama, gbnf, '{"tz": "UTC+1"}')
    assert accepts(vocab_llama, gbnf, '{"tz": "a\\tb\\u0011"}')           # escaped: fine
    assert not accepts(vocab_llama, gbnf, '{"tz": "a\x11b"}')
    assert not accepts(vocab_llama, gbnf, '{"tz": "a\tb"}')
    parsed = parse_object('{"tz": "a\tb"}')
    assert parsed == {"tz": "a\tb"} and json.loads(dumps(parsed)) == parsed
