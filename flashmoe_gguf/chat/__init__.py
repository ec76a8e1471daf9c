"""Chat completions with tool calls in each model family's own format (llama.cpp's `llama-server --jinja`
behaviour, as a llama-cpp-python chat handler).

    from flashmoe_gguf.chat import install_chat_handler
    install_chat_handler(llm)            # llm: flashmoe_gguf.Llama or llama_cpp.Llama
    llm.create_chat_completion(messages, tools=tools, tool_choice="auto")

Modules: template (the GGUF's Jinja template, rendered as transformers does), history (OpenAI messages as the
template wants them), formats/ (one module per family: output parser, call grammar), scan (parser building
blocks), grammar (GBNF), request (a request without the model), generation (the token loop), response
(OpenAI objects and stream deltas), handler (the handler and chat_handler_for).
"""

from __future__ import annotations

from .formats import FAMILIES, detect_family, make_format
from .handler import ChatHandler, chat_handler_for, install_chat_handler
from .template import ChatTemplate, TemplateError
from .types import Parsed, ParseOptions, ToolCall

__all__ = ["FAMILIES", "ChatHandler", "ChatTemplate", "ParseOptions", "Parsed", "TemplateError", "ToolCall",
           "chat_handler_for", "detect_family", "install_chat_handler", "make_format"]
