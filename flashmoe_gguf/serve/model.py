"""The served model: flashmoe_gguf.Llama that a request can stop between two tokens, and that counts the tokens
it evaluates.

llama-cpp-python generates by calling `eval` once per token (and once per prompt); every chat handler and
completion path goes through it. A request installs a stop check for its turn on the model (`stop_when`); the
next `eval` after the check turns true raises GenerationStopped instead of computing, so a generation whose
client went away, or that the server is shutting down, ends within the token in progress. Nothing else of
llama.cpp's state changes: the KV cache keeps what was evaluated and the next request reuses its prefix.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from ..runtime import Llama
from .checks import check_grammar


class GenerationStopped(Exception):
    """eval refused: the request's stop check said so (client gone, or the server is stopping)."""


class ServedLlama(Llama):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stop: Optional[Callable[[], bool]] = None
        self.tokens_evaluated = 0      # prompt tokens not reused from the KV cache, and generated tokens
        self.evals = 0                 # eval calls: one per generated token, one per prompt
        super().__init__(*args, **kwargs)

    def stop_when(self, check: Optional[Callable[[], bool]]) -> None:
        """Install (or with None, remove) the stop check that eval consults before each evaluation."""
        self._stop = check

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
        """llama_cpp.Llama.generate, refusing a grammar llama.cpp cannot parse (ValueError) before it is used.
        Every completion and chat path, JSON schemas and tool choices included, samples through here."""
        grammar = kwargs.get("grammar")
        if grammar is not None:
            check_grammar(self, grammar)
        return super().generate(tokens, *args, **kwargs)

    def eval(self, tokens: Sequence[int]) -> None:
        check = self._stop
        if check is not None and check():
            raise GenerationStopped("generation stopped")
        super().eval(tokens)
        self.tokens_evaluated += len(tokens)
        self.evals += 1
