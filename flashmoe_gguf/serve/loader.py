"""Building the served model from its settings: the llama arguments llama_cpp.server's LlamaProxy passes
(llama_cpp/server/model.py), given to flashmoe_gguf.Llama with the expert store's arguments, then the chat
handler."""

from __future__ import annotations

import json
from typing import Any, Callable, Optional, Union

from .model import ServedLlama
from .settings import FlashMoeModelSettings, ServeError

# settings passed to the Llama constructor under their own name, as llama_cpp.server passes them
PASSED = ("n_gpu_layers", "split_mode", "main_gpu", "tensor_split", "vocab_only", "use_mmap", "use_mlock",
          "rpc_servers", "seed", "n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch", "rope_scaling_type",
          "rope_freq_base", "rope_freq_scale", "yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast",
          "yarn_beta_slow", "yarn_orig_ctx", "mul_mat_q", "logits_all", "embedding", "offload_kqv", "flash_attn",
          "last_n_tokens_size", "lora_base", "lora_path", "numa", "chat_format", "type_k", "type_v", "verbose")
# flashmoe_gguf.Llama's own arguments (expert_cache is its `cache`)
FLASHMOE = ("ram_budget", "io_threads", "direct_io", "kernels", "isa", "expert_cache", "tensor_overrides",
            "resident_repack")
# settings read here with a conversion, or used around the constructor
CONVERTED = ("model", "model_alias", "kv_overrides", "pooling_type", "draft_model", "draft_model_num_pred_tokens",
             "hf_tokenizer_config_path", "hf_pretrained_model_name_or_path", "chat_template_kwargs", "cache",
             "cache_type", "cache_size")
# settings refused with a reason
REFUSED = {
    "hf_model_repo_id": "download the GGUF with `flashmoe pull OWNER/REPO:QUANT` and serve the file",
    "clip_model_path": "multimodal chat formats are not served by flashmoe serve",
}

Override = Union[bool, int, float, str]
_OVERRIDE_TYPES: dict[str, Callable[[str], Override]] = {
    "bool": lambda v: v.lower() in ("true", "1"), "int": int, "float": float, "str": str}


def kv_overrides(entries: Optional[list[str]]) -> Optional[dict[str, Override]]:
    """llama_cpp.server's `KEY=TYPE:VALUE` overrides (TYPE bool, int, float or str) as the Llama argument."""
    if not entries:
        return None
    out: dict[str, Override] = {}
    for entry in entries:
        key, sep, typed = entry.partition("=")
        kind, sep2, value = typed.partition(":")
        if not (key and sep and sep2):
            raise ServeError(f"kv_overrides: {entry!r} is not KEY=TYPE:VALUE")
        try:
            out[key] = _OVERRIDE_TYPES[kind](value)
        except KeyError:
            raise ServeError(f"kv_overrides: {entry!r}: TYPE must be bool, int, float or str") from None
        except ValueError:
            raise ServeError(f"kv_overrides: {entry!r}: {value!r} is not a {kind}") from None
    return out


def _pooling(settings: FlashMoeModelSettings) -> Optional[int]:
    """The pooling for embeddings: the setting, else the model's own, else mean (a generative MoE declares none,
    and one vector per token is not what /v1/embeddings answers)."""
    import llama_cpp
    if not settings.embedding:
        return None
    if settings.pooling_type is not None:
        return settings.pooling_type
    from ..gguf_index import read_model
    scalars = read_model(settings.model).scalars
    arch = scalars.get("general.architecture")
    return None if f"{arch}.pooling_type" in scalars else int(llama_cpp.LLAMA_POOLING_TYPE_MEAN)


def _hf_chat_handler(settings: FlashMoeModelSettings) -> Any:
    """The chat handler llama_cpp.server builds for the hf-* chat formats (None for the others)."""
    from llama_cpp import llama_chat_format
    if settings.chat_format == "hf-autotokenizer":
        if settings.hf_pretrained_model_name_or_path is None:
            raise ServeError("chat_format hf-autotokenizer needs hf_pretrained_model_name_or_path")
        return llama_chat_format.hf_autotokenizer_to_chat_completion_handler(
            settings.hf_pretrained_model_name_or_path)
    if settings.chat_format == "hf-tokenizer-config":
        if settings.hf_tokenizer_config_path is None:
            raise ServeError("chat_format hf-tokenizer-config needs hf_tokenizer_config_path")
        with open(settings.hf_tokenizer_config_path) as f:
            return llama_chat_format.hf_tokenizer_config_to_chat_completion_handler(json.load(f))
    return None


def _tensor_overrides(entries: Optional[list[str]]) -> Optional[list[tuple[str, str]]]:
    """REGEX=BUFT entries (offload.py's `-ot` syntax) as flashmoe_gguf.Llama's tensor_overrides"""
    if not entries:
        return None
    from ..offload import TensorOverrideError, parse_overrides
    try:
        return [pair for e in entries for pair in parse_overrides(e)]
    except TensorOverrideError as exc:
        raise ServeError(f"tensor_overrides: {exc}") from None


def llama_arguments(settings: FlashMoeModelSettings) -> dict[str, Any]:
    """The keyword arguments of ServedLlama for these settings."""
    for name, why in REFUSED.items():
        if getattr(settings, name) is not None:
            raise ServeError(f"{name}: {why}")
    kw: dict[str, Any] = {name: getattr(settings, name) for name in PASSED}
    kw.update(model_path=settings.model, kv_overrides=kv_overrides(settings.kv_overrides),
              ram_budget=settings.ram_budget, io_threads=settings.io_threads, direct_io=settings.direct_io,
              kernels=settings.kernels, isa=settings.isa, cache=settings.expert_cache,
              tensor_overrides=_tensor_overrides(settings.tensor_overrides),
              resident_repack=settings.resident_repack,
              chat_handler=_hf_chat_handler(settings))
    pooling = _pooling(settings)
    if pooling is not None:
        kw["pooling_type"] = pooling
    if settings.hf_pretrained_model_name_or_path is not None:
        from llama_cpp.llama_tokenizer import LlamaHFTokenizer
        kw["tokenizer"] = LlamaHFTokenizer.from_pretrained(settings.hf_pretrained_model_name_or_path)
    if settings.draft_model is not None:
        if settings.draft_model != "prompt-lookup-decoding":
            raise ServeError(f"draft_model: {settings.draft_model!r} is not known (prompt-lookup-decoding is)")
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
        kw["draft_model"] = LlamaPromptLookupDecoding(num_pred_tokens=settings.draft_model_num_pred_tokens)
    return kw


def chat_handler(llama: ServedLlama) -> Any:
    """The handler Llama.create_chat_completion calls: the one set, else llama-cpp-python's for its chat format."""
    from llama_cpp import llama_chat_format
    return (llama.chat_handler or getattr(llama, "_chat_handlers", {}).get(llama.chat_format)
            or llama_chat_format.get_chat_completion_handler(llama.chat_format))


def install_chat_handler(llama: ServedLlama, settings: FlashMoeModelSettings) -> None:
    """flashmoe's chat handler (flashmoe_gguf.chat: the GGUF's template, tool calls in the family's format) with
    the settings' chat_template_kwargs, unless the settings chose a chat format: then llama-cpp-python's handler
    for it, with chat_template_kwargs applied as llama_cpp.server applies them."""
    if settings.chat_format is None:
        from ..chat import chat_handler_for
        llama.chat_handler = chat_handler_for(llama, template_kwargs=settings.chat_template_kwargs)
        return
    if settings.chat_template_kwargs:
        base = chat_handler(llama)
        extra = dict(settings.chat_template_kwargs)

        def with_template_kwargs(*args: Any, **kwargs: Any) -> Any:
            return base(*args, **{**extra, **kwargs})

        llama.chat_handler = with_template_kwargs


def load_model(settings: FlashMoeModelSettings) -> ServedLlama:
    """The model these settings describe, ready to serve: loaded, chat handler installed, prompt cache set."""
    from llama_cpp.llama_cache import LlamaDiskCache, LlamaRAMCache
    llama = ServedLlama(**llama_arguments(settings))
    try:
        install_chat_handler(llama, settings)
        if settings.cache:
            cache_cls = LlamaDiskCache if settings.cache_type == "disk" else LlamaRAMCache
            llama.set_cache(cache_cls(capacity_bytes=settings.cache_size))
    except BaseException:
        llama.close()
        raise
    return llama
