"""The chat formats, and which one a GGUF's chat template (or its architecture) uses.

Detection reads the template source, as llama.cpp's common/chat.cpp does; the architecture only decides for
a template that names no tool-call format.
"""

from __future__ import annotations

from .base import THINK_TAGS, ChatFormat
from .deepseek import DeepSeekFormat
from .harmony import HarmonyFormat
from .hermes import HermesFormat
from .mistral import MistralFormat
from .plain import PlainFormat
from .qwen_xml import QwenXmlFormat

FAMILIES = ("harmony", "qwen-xml", "hermes", "deepseek", "mistral", "plain")

# architecture (general.architecture) -> family, for templates that do not show one
_ARCH_FAMILY = {"gpt-oss": "harmony", "qwen35moe": "qwen-xml", "qwen35": "qwen-xml", "qwen3next": "qwen-xml",
                "qwen3moe": "hermes", "qwen3": "hermes", "qwen2moe": "hermes", "qwen2": "hermes",
                "deepseek2": "deepseek", "deepseek": "deepseek"}


# templates with <tool_call> in another layout (GLM / Ling / Laguna key-value tags, MiniMax, Apriel lists)
_NOT_HERMES = ("<arg_key>", "]<]minimax[>[", "<tool_calls>")


def detect_family(template: str | None, architecture: str | None = None) -> str:
    """The family name of a chat template (one of FAMILIES)."""
    src = template or ""
    if "<|channel|>" in src:
        return "harmony"
    if "<tool_call>" in src and "<function=" in src and "<parameter=" in src:
        return "qwen-xml"
    if "<tool_call>" in src and not any(other in src for other in _NOT_HERMES):
        return "hermes"
    if "tool▁calls▁begin" in src or "tool▁call▁begin" in src:
        return "deepseek"
    if "[TOOL_CALLS]" in src:
        return "mistral"
    return _ARCH_FAMILY.get(architecture or "", "plain")


def make_format(family: str, template: str | None) -> ChatFormat:
    """The format object of a family, configured from the template (its reasoning tags, which call form the
    template writes, which the grammar then writes too)."""
    src = template or ""
    think = THINK_TAGS if ("<think>" in src or "</think>" in src) else None
    if family == "harmony":
        return HarmonyFormat()
    if family == "qwen-xml":
        return QwenXmlFormat(think)
    if family == "hermes":
        return HermesFormat(think)
    if family == "deepseek":
        return DeepSeekFormat(think, fenced="```json" in src)
    if family == "mistral":
        return MistralFormat(None, args_form="[ARGS]" in src)
    if family == "plain":
        return PlainFormat(think)
    raise ValueError(f"unknown chat format family {family!r} (one of {', '.join(FAMILIES)})")


__all__ = ["FAMILIES", "ChatFormat", "detect_family", "make_format"]
