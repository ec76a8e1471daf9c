"""What only the loaded model can judge in a request, checked before llama-cpp-python runs it: each would
otherwise be a crash or a 500 (ValueError here: a 400).

- a grammar llama.cpp cannot parse: llama-cpp-python adds the grammar sampler without checking it
  (_internals.LlamaSampler.add_grammar), so it becomes a NULL sampler and a segmentation fault at the first token;
- logit_bias token ids outside the vocabulary: an IndexError inside a sampler callback, which ctypes prints
  and ignores (the bias silently not applied);
- an empty prompt for a model that adds no BOS token: nothing to evaluate, an AssertionError in sampling.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional


def check_grammar(llama: Any, grammar: Any) -> None:
    """Make the call llama-cpp-python makes with this LlamaGrammar, check its result, free it."""
    import llama_cpp
    sampler = llama_cpp.llama_sampler_init_grammar(llama._model.vocab, grammar._grammar.encode("utf-8"),
                                                   grammar._root.encode("utf-8"))
    if not sampler:
        raise ValueError("grammar: llama.cpp could not parse it (GBNF); its parser's message is in the server log")
    llama_cpp.llama_sampler_free(sampler)


def check_logit_bias(llama: Any, bias: Optional[Mapping[str, float]], bias_type: Optional[str]) -> None:
    if not bias or bias_type == "tokens":        # "tokens": keys are text, tokenized by llama_cpp.server
        return
    n_vocab = llama.n_vocab()
    for key in bias:
        try:
            token = int(key)
        except ValueError:
            raise ValueError(f"logit_bias: {key!r} is not a token id") from None
        if not 0 <= token < n_vocab:
            raise ValueError(f"logit_bias: token id {token} is not in this model's vocabulary (0..{n_vocab - 1})")


def check_prompt(llama: Any, prompt: str) -> None:
    if prompt == "" and not llama.tokenize(b"", add_bos=True):
        raise ValueError("prompt is empty and this model starts no text with a BOS token: give a text to continue")
