"""Request bodies: llama_cpp.server's request types, strict.

An unknown field is refused (400 "Unrecognized request argument supplied", as OpenAI's API answers), so a typo
such as `temprature` is not silently ignored. A few fields of OpenAI's API that clients send are accepted:
`max_completion_tokens` (OpenAI's newer name for max_tokens) is used; `stream_options`, `store`, `metadata`,
`service_tier` and `reasoning_effort` are accepted and have no effect. Chat also takes `parallel_tool_calls` and
llama.cpp server's `chat_template_kwargs` (e.g. `{"enable_thinking": false}`), given to the chat handler. `n` and
`best_of` above 1 are refused (llama_cpp.server ignores them).
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

import llama_cpp
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest, CreateEmbeddingRequest
from pydantic import ConfigDict, Field, field_validator

# read by llama_cpp.server's prepare_request_resources (logit_bias_type, min_tokens) or of no use to llama
_NOT_FOR_LLAMA = {"n", "best_of", "logit_bias_type", "user", "min_tokens"}
_ACCEPTED_IGNORED = {"stream_options", "store", "metadata", "service_tier", "reasoning_effort"}
_FOR_THE_HANDLER = {"parallel_tool_calls", "chat_template_kwargs", "max_completion_tokens"}


def _one(name: str, value: Optional[int]) -> Optional[int]:
    if value is not None and value != 1:
        raise ValueError(f"{name} > 1 is not supported: ask again for another completion")
    return value


class ChatRequest(CreateChatCompletionRequest):
    model_config = ConfigDict(extra="forbid")

    messages: List[llama_cpp.ChatCompletionRequestMessage] = Field(
        min_length=1, description="the conversation so far")
    max_completion_tokens: Optional[int] = Field(default=None, description="OpenAI's newer name for max_tokens")
    stream_options: Optional[Dict[str, Any]] = Field(default=None, description="accepted; no usage chunk is sent")
    parallel_tool_calls: Optional[bool] = Field(default=None, description="whether a reply may call several tools")
    chat_template_kwargs: Optional[Dict[str, Any]] = Field(
        default=None, description="extra variables for the chat template (llama.cpp server's field), e.g. "
                                  "enable_thinking")
    store: Optional[bool] = Field(default=None, description="accepted; nothing is stored")
    metadata: Optional[Dict[str, str]] = Field(default=None, description="accepted; no effect")
    service_tier: Optional[str] = Field(default=None, description="accepted; no effect")
    reasoning_effort: Optional[str] = Field(default=None, description="accepted; no effect (see chat_template_kwargs)")

    @field_validator("n")
    @classmethod
    def _n(cls, value: Optional[int]) -> Optional[int]:
        return _one("n", value)

    def llama_kwargs(self) -> dict[str, Any]:
        """The arguments of Llama.create_chat_completion, as llama_cpp.server passes them."""
        kw = self.model_dump(exclude=_NOT_FOR_LLAMA | _ACCEPTED_IGNORED | _FOR_THE_HANDLER)
        if kw.get("max_tokens") is None and self.max_completion_tokens is not None:
            kw["max_tokens"] = self.max_completion_tokens
        return kw


class CompletionRequest(CreateCompletionRequest):
    model_config = ConfigDict(extra="forbid")

    stream_options: Optional[Dict[str, Any]] = Field(default=None, description="accepted; no usage chunk is sent")
    store: Optional[bool] = Field(default=None, description="accepted; nothing is stored")
    metadata: Optional[Dict[str, str]] = Field(default=None, description="accepted; no effect")

    @field_validator("n", "best_of")
    @classmethod
    def _n(cls, value: Optional[int], info: Any) -> Optional[int]:
        return _one(info.field_name, value)

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, value: Union[str, List[str]]) -> Union[str, List[str]]:
        if isinstance(value, list):
            if len(value) > 1:
                raise ValueError("several prompts in one request are not supported: send one request per prompt")
            return value[0] if value else ""
        return value

    def prompt_text(self) -> str:
        """The prompt (one string: a one-element list was unwrapped when the request was read)."""
        return self.prompt if isinstance(self.prompt, str) else "".join(self.prompt)

    def llama_kwargs(self) -> dict[str, Any]:
        """The arguments of Llama.create_completion, as llama_cpp.server passes them."""
        return self.model_dump(exclude=_NOT_FOR_LLAMA | _ACCEPTED_IGNORED)


class EmbeddingRequest(CreateEmbeddingRequest):
    model_config = ConfigDict(extra="forbid")

    encoding_format: Optional[Literal["float", "base64"]] = Field(
        default=None, description="float (default) or base64: little-endian float32 (the openai client asks for it)")
