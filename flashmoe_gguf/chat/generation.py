"""The token loop of a chat completion: llama_cpp.Llama.generate, with the output written as text that keeps
special tokens (tool-call and channel markers are special tokens in several families, and
create_completion drops them), stop strings, the token limit, and llama-cpp-python's seed, logit bias and
prompt cache conventions."""

from __future__ import annotations

import codecs
import ctypes
import random
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one request (llama-cpp-python's names and defaults for chat)."""
    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    tfs_z: float = 1.0
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int | None = None
    logits_processor: Any = None
    grammar: Any = None
    logit_bias: Mapping[Any, float] | None = None


def token_text_bytes(llama: Any, token: int) -> bytes:
    """A token's bytes, special tokens written out."""
    import llama_cpp
    vocab = llama._model.vocab
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    return buf.raw[:max(n, 0)]


def _logits_processor(sampling: Sampling) -> Any:
    from llama_cpp import LogitsProcessorList
    processors = list(sampling.logits_processor or [])
    if sampling.logit_bias:
        bias = {int(k): float(v) for k, v in sampling.logit_bias.items()}

        def add_bias(input_ids: Any, scores: Any) -> Any:
            out = scores.copy()
            for token, value in bias.items():
                out[token] += value
            return out
        processors.append(add_bias)
    return LogitsProcessorList(processors) if processors else None


class Generation:
    """Iterating yields the completion's text in pieces; afterwards finish_reason ("stop" or "length") and
    completion_tokens say how it ended. A stop string ends the text before it; text that may be the start of
    a stop string is held back until decided."""

    def __init__(self, llama: Any, prompt_tokens: Sequence[int], sampling: Sampling, stops: Sequence[str],
                 max_tokens: int | None) -> None:
        n_ctx = llama.n_ctx()
        if len(prompt_tokens) >= n_ctx:
            raise ValueError(f"Requested tokens ({len(prompt_tokens)}) exceed context window of {n_ctx}")
        room = n_ctx - len(prompt_tokens)
        self.max_tokens = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
        self.llama = llama
        self.prompt_tokens = list(prompt_tokens)
        self.sampling = sampling
        self.stops = [s for s in stops if s]
        self.finish_reason: str | None = None
        self.completion_tokens = 0

    def _held(self, text: str) -> int:
        for k in range(min(max((len(s) for s in self.stops), default=1) - 1, len(text)), 0, -1):
            if any(s.startswith(text[-k:]) for s in self.stops):
                return k
        return 0

    def __iter__(self) -> Iterator[str]:
        import llama_cpp
        llama, s = self.llama, self.sampling
        self._load_cache()
        llama.set_seed(s.seed if s.seed is not None else random.Random(getattr(llama, "_seed", 0)).randint(0, 2**32))
        decoder: Any = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, sent = "", 0
        completion: list[int] = []
        longest_stop = max((len(x) for x in self.stops), default=0)
        self.finish_reason = "length"
        if self.max_tokens > 0:
            for token in llama.generate(self.prompt_tokens, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                                        typical_p=s.typical_p, temp=s.temperature, tfs_z=s.tfs_z,
                                        mirostat_mode=s.mirostat_mode, mirostat_tau=s.mirostat_tau,
                                        mirostat_eta=s.mirostat_eta, frequency_penalty=s.frequency_penalty,
                                        presence_penalty=s.presence_penalty, repeat_penalty=s.repeat_penalty,
                                        logits_processor=_logits_processor(s), grammar=s.grammar):
                if llama_cpp.llama_vocab_is_eog(llama._model.vocab, token):
                    self.finish_reason = "stop"
                    break
                completion.append(token)
                self.completion_tokens = len(completion)
                text += decoder.decode(token_text_bytes(llama, token))
                hits = [i for i in (text.find(x, max(0, sent - longest_stop)) for x in self.stops) if i >= 0]
                if hits:
                    text = text[:min(hits)]
                    self.finish_reason = "stop"
                    decoder = None
                    break
                end = len(text) - self._held(text)
                if end > sent:
                    yield text[sent:end]
                    sent = end
                if len(completion) >= self.max_tokens:
                    break
        if decoder is not None:
            text += decoder.decode(b"", final=True)
        if len(text) > sent:
            yield text[sent:]
        self._save_cache(completion)

    def _load_cache(self) -> None:
        llama = self.llama
        if not llama.cache:
            return
        try:
            item = llama.cache[self.prompt_tokens]
        except KeyError:
            return
        cached = llama.longest_token_prefix(item.input_ids.tolist(), self.prompt_tokens)
        if cached > llama.longest_token_prefix(llama._input_ids.tolist(), self.prompt_tokens):
            llama.load_state(item)

    def _save_cache(self, completion: list[int]) -> None:
        if self.llama.cache:
            self.llama.cache[self.prompt_tokens + completion] = self.llama.save_state()
