"""Which model is loaded: llama_cpp.server's LlamaProxy (aliases, the default model, switching between the models
of a config file) whose loader builds flashmoe's model, and which knows when a model failed.

A model whose expert store failed (a read error, its file changed or truncated) cannot continue: `discard`
closes it and records why; the next request loads it again (`__call__`), and /health says so meanwhile. A model
that cannot be loaded raises ModelUnavailable, and the reason stays in `failure` until a load succeeds.

Worker threads load and close models while /health and /metrics read them from the event loop: one lock
guards the current model's replacement and the reads of its statistics.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Optional, cast

from llama_cpp.server.model import LlamaProxy
from llama_cpp.server.settings import ModelSettings

from .loader import load_model
from .model import ServedLlama
from .settings import FlashMoeModelSettings


class ModelUnavailable(Exception):
    """The model asked for could not be loaded."""


@dataclass
class ModelStatus:
    """What /health and /metrics show of the models. `stats` is None when the model is not loaded, or was
    being replaced and the reader would not wait."""
    alias: str
    path: str
    loaded: bool
    failure: Optional[str]
    loads: int
    failures: int
    stats: Optional[dict[str, Any]] = None
    tokens_evaluated: int = 0
    swapping: bool = False          # a load or close was in progress and the reader did not wait for it
    aliases: list[str] = field(default_factory=list)


class ModelProxy(LlamaProxy):
    def __init__(self, models: list[FlashMoeModelSettings]) -> None:
        self._swap = threading.Lock()
        self.failure: Optional[str] = None
        self.loads = 0
        self.failures = 0
        # loads the default model; its errors reach the caller as they are
        super().__init__(cast(list[ModelSettings], models))

    def load_llama_from_model_settings(self, settings: FlashMoeModelSettings) -> ServedLlama:  # type: ignore[override]
        llama = load_model(settings)
        self.loads += 1
        return llama

    def __call__(self, model: Optional[str] = None) -> ServedLlama:
        """The model for this alias (unknown aliases: the default model, as llama_cpp.server does), loading it if
        it is not the one loaded. Runs in a worker thread: a load takes as long as reading the resident weights."""
        with self._swap:
            try:
                llama = super().__call__(model)
            except Exception as exc:
                self.failure = f"model {self.alias_for(model)!r} could not be loaded: {exc}"
                raise ModelUnavailable(self.failure) from exc
        self.failure = None
        return llama   # type: ignore[return-value]

    def discard(self, reason: str) -> None:
        """Close the current model after a failure it cannot continue from; the next request reloads it."""
        with self._swap:
            self.failures += 1
            self.failure = reason
            if self._current_model is not None:
                self._current_model.close()
            self._current_model = None

    def free(self) -> None:
        with self._swap:
            if self._current_model is not None:
                self._current_model.close()
            self._current_model = None

    def alias_for(self, model: Optional[str]) -> str:
        """The alias a request for `model` gets: itself if it is one, else the default model's."""
        return str(model if model in self._model_settings_dict else self._default_model_alias)

    def status(self, wait_s: float = 0.25) -> ModelStatus:
        """The current model's state and statistics, waiting at most wait_s for a load or close in progress."""
        alias = self._current_model_alias or self._default_model_alias
        settings = self._model_settings_dict[alias]
        st = ModelStatus(alias=str(alias), path=settings.model, loaded=False, failure=self.failure, loads=self.loads,
                         failures=self.failures, aliases=list(self._model_settings_dict))
        if not self._swap.acquire(timeout=wait_s):
            st.swapping = True
            return st
        try:
            llama = self._current_model
            if isinstance(llama, ServedLlama):
                st.loaded = True
                st.stats = llama.flashmoe_stats()
                st.tokens_evaluated = llama.tokens_evaluated
        finally:
            self._swap.release()
        return st
