"""`flashmoe serve`'s settings: llama-cpp-python's server settings with flashmoe's fields added.

FlashMoeModelSettings is llama_cpp.server's ModelSettings plus the expert store's arguments, so they work on the
command line and per model in llama-cpp-python's multi-model config file (`{"host": ..., "models": [{...}]}`).
The prompt cache keeps its stock name `cache` (a bool); the expert cache policy is `expert_cache`.

Unlike the stock classes, these read no environment variables: what is served is what the command line or the
config file says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Literal, Optional, Union

from llama_cpp.server.settings import ModelSettings, ServerSettings
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from ..isa import CHOICES as ISA_CHOICES
from ..streamed import CACHE_POLICIES
from ..units import parse_size


class ServeError(ValueError):
    """A setting or config file `flashmoe serve` cannot use; the message is one line."""


class _InitOnly(BaseSettings):
    """Settings from the constructor (our CLI or the config file) only: no environment variables, no .env file."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class FlashMoeModelSettings(_InitOnly, ModelSettings):
    """One model: llama-cpp-python's settings for it, and how its routed experts are streamed."""

    ram_budget: Union[int, str] = Field(
        default="auto", description="RAM for cached experts: bytes or a size such as 8G; auto: what the machine "
                                    "has available beyond the resident weights")
    expert_cache: Literal["lfu", "lru", "os", "lrfu", "hazard"] = Field(
        default="lfu", description="expert cache policy: lfu (least often used evicted), lru, os (the page cache), lrfu "
                              "(recency + frequency in token time) or hazard (reuse probability learned online)")
    direct_io: Union[bool, Literal["auto"]] = Field(
        default="auto", description="read experts with O_DIRECT (auto: with our own cache, where the file system "
                                    "allows it)")
    io_threads: int = Field(default=8, ge=1, description="expert read threads")
    isa: Optional[Literal["auto", "avx512", "avx2", "scalar", "ggml"]] = Field(
        default=None, description="code computing the expert products (default: FLASHMOE_ISA, else auto)")
    kernels: bool = Field(default=True, description="false: ggml's own code for the expert products (isa=ggml)")
    tensor_overrides: Optional[List[str]] = Field(
        default=None, description="llama.cpp's tensor buffer-type overrides, REGEX=BUFT each (e.g. attn=CPU); with "
                                  "n_gpu_layers the routed experts stay streamed on the CPU whatever these say")
    resident_repack: bool = Field(
        default=False, description="llama.cpp's extra buffer types (CPU_REPACK, AMX) for the resident weights, as "
                                   "stock loads them: faster where they apply; the logits then equal stock's with "
                                   "them on and the routed experts overridden to the CPU (-ot exps=CPU)")
    pooling_type: Optional[int] = Field(
        default=None, description="llama.cpp pooling type for /v1/embeddings (default: the model's, else mean)")
    # stock defaults changed: no llama.cpp log on stderr; logits kept for the last token only (logits for every
    # prompt token cost n_ctx x n_vocab floats: 2.4 GiB for a 152k vocabulary at 4k context)
    verbose: bool = Field(default=False, description="llama.cpp's log on stderr")
    logits_all: bool = Field(default=False, description="keep logits for every token (completion logprobs)")

    @field_validator("ram_budget")
    @classmethod
    def _size(cls, value: Union[int, str]) -> Union[int, str]:
        if value != "auto":
            parse_size(value)      # ValueError: "not a size: ..."
        return value

    @model_validator(mode="after")
    def _alias(self) -> "FlashMoeModelSettings":
        if not self.model_alias:   # the file's name, not its whole path, is what clients list and send
            self.model_alias = Path(self.model).stem
        return self


assert set(ISA_CHOICES) == {"auto", "avx512", "avx2", "scalar", "ggml"}, "isa choices changed: update the field"
assert set(CACHE_POLICIES) == {"lfu", "lru", "os", "lrfu", "hazard"}, "cache policies changed: update expert_cache"


class FlashMoeServerSettings(_InitOnly, ServerSettings):
    """The HTTP side: llama-cpp-python's server settings, the bounded queue, loopback by default."""

    host: str = Field(default="127.0.0.1", description="listen address")
    port: int = Field(default=8080, ge=0, le=65535, description="listen port (0: any free port)")
    queue: int = Field(default=8, ge=0, description="requests that may wait for the model while it serves one; "
                                                    "one more gets 503 with Retry-After")
    interrupt_requests: bool = Field(default=False, description="not supported: requests queue instead")

    @field_validator("interrupt_requests")
    @classmethod
    def _no_interrupt(cls, value: bool) -> bool:
        if value:
            raise ValueError("flashmoe serve never interrupts a request for a newer one: requests wait in a "
                             "bounded queue (queue)")
        return value


class FlashMoeConfigFile(FlashMoeServerSettings):
    """llama-cpp-python's config file format with flashmoe's model settings."""

    models: List[FlashMoeModelSettings] = Field(min_length=1, description="the models; the first is the default")

    @model_validator(mode="after")
    def _unique_aliases(self) -> "FlashMoeConfigFile":
        aliases = [m.model_alias for m in self.models]
        dupes = sorted({a for a in aliases if aliases.count(a) > 1 and a is not None})
        if dupes:
            raise ValueError(f"several models have the alias {', '.join(dupes)} (set model_alias)")
        return self


def one_line(exc: ValidationError) -> str:
    """A pydantic validation error as one line: `field: problem; field: problem`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def model_settings(**values: Any) -> FlashMoeModelSettings:
    try:
        return FlashMoeModelSettings(**values)
    except ValidationError as exc:
        raise ServeError(one_line(exc)) from None


def server_settings(**values: Any) -> FlashMoeServerSettings:
    try:
        return FlashMoeServerSettings(**values)
    except ValidationError as exc:
        raise ServeError(one_line(exc)) from None


def read_config(path: Path) -> FlashMoeConfigFile:
    """A config file (JSON, or YAML by its extension) as llama-cpp-python's server reads it, with our fields."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ServeError(f"{path}: {exc.strerror or exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ServeError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write JSON") from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ServeError:
        raise
    except Exception as exc:   # json.JSONDecodeError, yaml.YAMLError
        raise ServeError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: "
                         f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ServeError(f"{path}: the config must be an object with a 'models' list")
    try:
        return FlashMoeConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ServeError(f"{path}: {one_line(exc)}") from None
