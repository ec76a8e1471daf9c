"""How flashmoe_gguf.Llama loads a model through llama_cpp.Llama unchanged, and only its own model.

llama_cpp.Llama.__init__ loads the file with llama_cpp.llama_cpp.llama_model_load_from_file. Once per process
that name gets a dispatcher: on a thread that is inside `loading(model)`, it calls model.load (which reads the
file without its experts, see StreamedModel.load); on any other thread, llama.cpp's own function. So a stock
llama_cpp.Llama created on another thread while a flashmoe model loads gets its own file, and flashmoe models
load on several threads at once. The C side keeps the model being loaded per thread too (fm_model_begin_load).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Protocol


class _Loads(Protocol):
    def load(self, params: Any) -> Any: ...


class _Dispatch:
    """The function installed under llama_cpp.llama_cpp.llama_model_load_from_file."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.pending = threading.local()

    def __call__(self, path_model: bytes, params: Any) -> Any:
        target = getattr(self.pending, "model", None)
        if target is None:
            return self.original(path_model, params)
        self.pending.model = None          # one load per scope: a second one on this thread is llama.cpp's own
        return target.load(params)


_install_lock = threading.Lock()


def _dispatcher() -> _Dispatch:
    import llama_cpp.llama_cpp as lc
    with _install_lock:
        current = lc.llama_model_load_from_file
        if not isinstance(current, _Dispatch):
            current = _Dispatch(current)
            lc.llama_model_load_from_file = current
        return current


@contextlib.contextmanager
def loading(model: _Loads) -> Iterator[None]:
    """Within this block, the next llama_model_load_from_file on this thread loads `model`."""
    d = _dispatcher()
    if getattr(d.pending, "model", None) is not None:
        raise RuntimeError("a flashmoe model is already being loaded on this thread")
    d.pending.model = model
    try:
        yield
    finally:
        d.pending.model = None
