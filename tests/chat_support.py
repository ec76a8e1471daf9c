"""Shared by the chat tests: the model vendors' chat templates (read from the pinned llama-cpp-python sdist,
which ships them under vendor/llama.cpp/models/templates/), tools, and reassembling a stream of chunks."""

from __future__ import annotations

import os
import tarfile
import tempfile
from typing import Any, Iterable

from conftest import cache_root
from flashmoe_gguf.sdist import LLAMA_CPP_PYTHON_VERSION, download_sdist

TEMPLATE_DIR = "vendor/llama.cpp/models/templates"
TEMPLATES = {
    "qwen3": "Qwen-Qwen3-0.6B.jinja",
    "qwen2.5": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "qwq": "Qwen-QwQ-32B.jinja",
    "qwen3.5": "Qwen3.5-4B.jinja",
    "qwen3-coder": "Qwen3-Coder.jinja",
    "deepseek-v3.1": "deepseek-ai-DeepSeek-V3.1.jinja",
    "deepseek-r1-distill": "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
    "mistral-nemo": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "mistral-small-3.2": "Mistral-Small-3.2-24B-Instruct-2506.jinja",
    "devstral": "unsloth-mistral-Devstral-Small-2507.jinja",
    "gpt-oss": "openai-gpt-oss-120b.jinja",
}


def template(name: str) -> str:
    """The chat template source of TEMPLATES[name] (all of them extracted from the sdist in one pass, once)."""
    root = cache_root() / "sdist" / TEMPLATE_DIR
    wanted = {f: root / f for f in TEMPLATES.values()}
    if not all(p.exists() for p in wanted.values()):
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/{TEMPLATE_DIR}/"
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(download_sdist(cache_root() / "sdist-archive")) as tar:
            for member in tar:
                name_in = member.name[len(prefix):] if member.name.startswith(prefix) else None
                if name_in in wanted and member.isfile():
                    src = tar.extractfile(member)
                    assert src is not None
                    with tempfile.NamedTemporaryFile(dir=root, delete=False) as tmp:
                        tmp.write(src.read())
                    os.replace(tmp.name, wanted[name_in])
    return wanted[TEMPLATES[name]].read_text()


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "days": {"type": "integer"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time", "parameters": {
        "type": "object", "properties": {"timezone": {"type": "string"}}, "required": []}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def assemble(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The message and finish_reason a client builds from a stream of chat.completion.chunk objects."""
    msg: dict[str, Any] = {"role": None, "content": "", "reasoning_content": "", "tool_calls": {}}
    finish = None
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        (choice,) = c["choices"]
        delta = choice["delta"]
        if choice["finish_reason"] is not None:
            assert finish is None and delta == {}
            finish = choice["finish_reason"]
        else:
            assert finish is None, "a chunk after the one with finish_reason"
        msg["role"] = delta.get("role", msg["role"])
        msg["content"] += delta.get("content") or ""
        msg["reasoning_content"] += delta.get("reasoning_content") or ""
        for tc in delta.get("tool_calls") or []:
            slot = msg["tool_calls"].setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
            if "id" in tc:
                assert slot["id"] is None
                slot["id"] = tc["id"]
                assert tc["type"] == "function"
            fn = tc.get("function") or {}
            slot["name"] += fn.get("name") or ""
            slot["arguments"] += fn.get("arguments") or ""
    calls = [msg["tool_calls"][i] for i in sorted(msg["tool_calls"])]
    assert [*range(len(calls))] == sorted(msg["tool_calls"])
    return {"role": msg["role"], "content": msg["content"], "reasoning_content": msg["reasoning_content"],
            "tool_calls": calls, "finish_reason": finish}


def flat(message: dict[str, Any], finish_reason: str) -> dict[str, Any]:
    """A non-streamed message in assemble()'s shape."""
    return {"role": message["role"], "content": message.get("content") or "",
            "reasoning_content": message.get("reasoning_content", ""),
            "tool_calls": [{"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                           for c in message.get("tool_calls") or []], "finish_reason": finish_reason}


def without_ids(m: dict[str, Any]) -> dict[str, Any]:
    return {**m, "tool_calls": [{**c, "id": None} for c in m["tool_calls"]]}


