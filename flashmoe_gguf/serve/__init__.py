"""`flashmoe serve`: an OpenAI-compatible HTTP server, llama-cpp-python's (llama_cpp.server: its settings,
config file, request types, model proxy, SSE streaming), serving flashmoe_gguf.Llama.

Layout: settings.py (the settings and config file, with flashmoe's fields), command.py (command line ->
settings), loader.py (settings -> model, chat handler), model.py (the served model: stoppable between tokens,
counted), proxy.py (which model is loaded, and its failures), gate.py (the bounded queue), service.py (a
request's turn on the model), streaming.py (SSE that holds the turn), schema.py (strict request bodies),
checks.py (what only the model can judge in a request), errors.py (OpenAI-style errors), metrics.py
(Prometheus text), app.py (the FastAPI routes), server.py (uvicorn, signals).
"""

from __future__ import annotations

from .settings import FlashMoeConfigFile, FlashMoeModelSettings, FlashMoeServerSettings, ServeError

__all__ = ["FlashMoeConfigFile", "FlashMoeModelSettings", "FlashMoeServerSettings", "ServeError"]
