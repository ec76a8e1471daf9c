"""The chat completion handler (llama-cpp-python's LlamaChatCompletionHandler) and the function that makes
the right one for a model."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

from .formats import ChatFormat, detect_family, make_format
from .generation import Generation, Sampling
from .history import TemplateTraits, probe_traits
from .request import Prepared, legacy_to_tools, prepare
from .response import CallIds, DeltaStream, Meta, chunk, completion, finish_reason, random_alnum
from .template import CHATML, ChatTemplate
from .types import Parsed


class ChatHandler:
    """Chat completions in a model family's own format: the prompt from the GGUF's chat template, tool calls
    and reasoning parsed from the output, `tool_choice` "required" / a named function enforced by a grammar.

    Install as `llama.chat_handler`; `llama.create_chat_completion(...)` then calls it. Called directly it
    also takes `parallel_tool_calls` (default True) and `chat_template_kwargs` (e.g. {"enable_thinking":
    False}; over the handler's own `template_kwargs`); any other keyword is a template variable too, as in
    llama-cpp-python's Jinja handlers. Not supported: logprobs (ignored), n > 1.
    """

    def __init__(self, template: ChatTemplate, fmt: ChatFormat, tool_template: ChatTemplate | None = None,
                 template_kwargs: Mapping[str, Any] | None = None,
                 random_text: Callable[[], str] = random_alnum) -> None:
        self.template = template
        self.tool_template = tool_template
        self.format = fmt
        self.template_kwargs = dict(template_kwargs or {})
        self.random_text = random_text
        self._traits: dict[int, TemplateTraits] = {}

    @property
    def family(self) -> str:
        return self.format.name

    def _template_for(self, tools: Sequence[Any]) -> tuple[ChatTemplate, TemplateTraits]:
        t = self.tool_template if tools and self.tool_template is not None else self.template
        if id(t) not in self._traits:
            self._traits[id(t)] = probe_traits(t)
        return t, self._traits[id(t)]

    def prepare(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None,
                tool_choice: Any = None, functions: Sequence[Mapping[str, Any]] | None = None,
                function_call: Any = None, parallel_tool_calls: bool = True,
                response_format: Mapping[str, Any] | None = None,
                chat_template_kwargs: Mapping[str, Any] | None = None, user_grammar: bool = False,
                stop: str | Sequence[str] | None = None) -> Prepared:
        """The request without the model: prompt, grammar, stops and parse options."""
        all_tools, choice = legacy_to_tools(functions, function_call, tools, tool_choice)
        template, traits = self._template_for(all_tools)
        user_stops = [stop] if isinstance(stop, str) else list(stop or [])
        return prepare(template, traits, self.format, messages, all_tools, choice, parallel_tool_calls,
                       response_format, {**self.template_kwargs, **dict(chat_template_kwargs or {})},
                       user_grammar, user_stops)

    def parse(self, text: str, prepared: Prepared, final: bool = True) -> Parsed:
        parsed = self.format.parse(text, final, prepared.options)
        return parsed if prepared.parallel else parsed.first_call_only()

    def __call__(self, *, llama: Any, messages: Sequence[Mapping[str, Any]],
                 functions: Sequence[Mapping[str, Any]] | None = None, function_call: Any = None,
                 tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
                 temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                 typical_p: float = 1.0, stream: bool = False, stop: str | Sequence[str] | None = None,
                 seed: int | None = None, response_format: Mapping[str, Any] | None = None,
                 max_tokens: int | None = None, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 repeat_penalty: float = 1.0, tfs_z: float = 1.0, mirostat_mode: int = 0, mirostat_tau: float = 5.0,
                 mirostat_eta: float = 0.1, model: str | None = None, logits_processor: Any = None,
                 grammar: Any = None, logit_bias: Mapping[Any, float] | None = None, logprobs: bool | None = None,
                 top_logprobs: int | None = None, parallel_tool_calls: bool = True,
                 chat_template_kwargs: Mapping[str, Any] | None = None, **template_vars: Any) -> Any:
        # other keywords are template variables, as llama-cpp-python's Jinja handlers treat them
        prepared = self.prepare(messages, tools, tool_choice, functions, function_call, parallel_tool_calls,
                                response_format, {**template_vars, **dict(chat_template_kwargs or {})},
                                user_grammar=grammar is not None, stop=stop)
        if grammar is None and prepared.grammar is not None:
            grammar = compile_grammar(llama, prepared.grammar)
        sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, typical_p=typical_p,
                            repeat_penalty=repeat_penalty, presence_penalty=presence_penalty,
                            frequency_penalty=frequency_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, seed=seed,
                            logits_processor=logits_processor, grammar=grammar, logit_bias=logit_bias)
        tokens = prompt_tokens(llama, prepared.prompt)
        gen = Generation(llama, tokens, sampling, prepared.stops, max_tokens)
        meta = Meta.new(model or llama.model_path)
        ids = CallIds(self.format, self.random_text)
        if stream:
            return self._stream(gen, prepared, meta, ids)
        parsed = self.parse("".join(gen), prepared)
        return completion(meta, parsed, ids, finish_reason(parsed, gen.finish_reason), len(tokens),
                          gen.completion_tokens)

    def _stream(self, gen: Generation, prepared: Prepared, meta: Meta, ids: CallIds) -> Iterator[dict[str, Any]]:
        yield chunk(meta, {"role": "assistant"})
        deltas = DeltaStream(ids)
        text = ""
        for piece in gen:
            text += piece
            for d in deltas.deltas(self.parse(text, prepared, final=False)):
                yield chunk(meta, d)
        parsed = self.parse(text, prepared)
        for d in deltas.deltas(parsed):
            yield chunk(meta, d)
        yield chunk(meta, {}, finish_reason(parsed, gen.finish_reason))


def prompt_tokens(llama: Any, prompt: str) -> list[int]:
    """The rendered prompt as tokens (special tokens parsed); BOS first when the model wants one and the
    template did not write it."""
    tokens = list(llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))
    bos = llama.token_bos()
    if bos >= 0 and llama._model.add_bos_token() and (not tokens or tokens[0] != bos):
        tokens.insert(0, bos)
    return tokens


def compile_grammar(llama: Any, gbnf: str) -> Any:
    """A LlamaGrammar, checked with llama.cpp's own grammar parser first (a grammar it refuses would
    otherwise only fail inside the sampler)."""
    import llama_cpp
    from llama_cpp import LlamaGrammar
    sampler = llama_cpp.llama_sampler_init_grammar(llama._model.vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        raise ValueError("internal error: llama.cpp refused the tool-call grammar")
    llama_cpp.llama_sampler_free(sampler)
    return LlamaGrammar.from_string(gbnf, verbose=False)


def _token_text(llama: Any, token: int) -> str:
    return llama._model.token_get_text(token) if token >= 0 else ""


def chat_handler_for(llama: Any, *, template: str | None = None, family: str | None = None,
                     template_kwargs: Mapping[str, Any] | None = None) -> ChatHandler:
    """The chat handler for a loaded model: its GGUF's chat template (`tokenizer.chat_template`; the
    `tokenizer.chat_template.tool_use` variant for requests with tools, where the GGUF has one; ChatML when
    it has none) and the tool-call format that template uses (or `general.architecture`'s, for a template
    that shows none). `template` / `family` override what the GGUF says (family: one of
    flashmoe_gguf.chat.FAMILIES)."""
    meta: Mapping[str, str] = getattr(llama, "metadata", None) or {}
    source = template or meta.get("tokenizer.chat_template") or CHATML
    tool_source = None if template else meta.get("tokenizer.chat_template.tool_use")
    bos, eos = _token_text(llama, llama.token_bos()), _token_text(llama, llama.token_eos())
    fam = family or detect_family(tool_source or source, meta.get("general.architecture"))
    return ChatHandler(ChatTemplate(source, bos, eos), make_format(fam, tool_source or source),
                       ChatTemplate(tool_source, bos, eos) if tool_source else None, template_kwargs)


def install_chat_handler(llama: Any, **kwargs: Any) -> ChatHandler:
    """chat_handler_for(llama, **kwargs), set as llama.chat_handler."""
    handler = chat_handler_for(llama, **kwargs)
    llama.chat_handler = handler
    return handler
