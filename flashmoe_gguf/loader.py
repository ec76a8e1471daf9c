"""How flashmoe_gguf.Llama loads a model through llama_cpp.Llama unchanged, and only its own model.

llama_cpp.Llama.__init__ loads the file with llama_cpp.llama_cpp.llama_model_load_from_file. Once per process
that name gets a dispatcher: on a thread that is inside `loading(model)`, it calls model.load (which reads the
file without its experts, see StreamedModel.load); on any other thread, llama.cpp's own function. So a stock
llama_cpp.Llama created on another thread while a flashmoe model loads gets its own file, and flashmoe models
load on several threads at once. The C side keeps the model being loaded per thread too (fm_model_begin_load).

The same scope measures the context that llama_cpp.Llama creates next on that thread (llama_init_from_model: KV
cache, compute and output buffers) by the C heap's growth during the call (heap.py), and hands the figure to the
model (`context_created`): ram_budget="auto" leaves those bytes out of the expert cache.

llama-cpp-python silences llama.cpp during a load with verbose=False by pointing file descriptors 1 and 2 (and
sys.stdout/stderr) at /dev/null and back (`_utils.suppress_stdout_stderr`). That is process-wide state: two loads on
two threads restore each other's saved descriptors, and the process's stdout and stderr stay at /dev/null for good
(seen with four threads loading stock and flashmoe models). So the same install swaps in `_SharedSuppress`: the
first thread to enter redirects, the last to leave restores.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Protocol

from .heap import allocated_during


class _Loads(Protocol):
    def load(self, params: Any) -> Any: ...

    def context_created(self, heap_bytes: int | None) -> None: ...


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


class _ContextDispatch:
    """The function installed under llama_cpp.llama_cpp.llama_init_from_model."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.pending = threading.local()

    def __call__(self, model: Any, params: Any) -> Any:
        target = getattr(self.pending, "model", None)
        if target is None:
            return self.original(model, params)
        self.pending.model = None          # the first context of the scope is the Llama's own
        if getattr(self.pending, "outputs_max", 0):
            params.n_outputs_max = self.pending.outputs_max
        ctx, grew = allocated_during(lambda: self.original(model, params))
        if ctx is not None:
            target.context_created(grew)
        return ctx


class _SharedSuppress:
    """llama_cpp._utils.suppress_stdout_stderr counted across threads: while any thread is inside, stdout and
    stderr go to /dev/null; the last one out puts back what the first one in saved."""

    _lock = threading.Lock()
    _depth = 0
    _saved: Any = None

    def __init__(self, disable: bool = True) -> None:
        self.disable = disable

    def __enter__(self) -> "_SharedSuppress":
        if self.disable:
            return self
        cls = _SharedSuppress
        with cls._lock:
            if cls._depth == 0:
                from llama_cpp import _utils
                inner = _utils.suppress_stdout_stderr(disable=False)
                inner.__enter__()
                cls._saved = inner
            cls._depth += 1
        return self

    def __exit__(self, *_: object) -> None:
        if self.disable:
            return
        cls = _SharedSuppress
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0:
                inner, cls._saved = cls._saved, None
                inner.__exit__(None, None, None)


_install_lock = threading.Lock()


def _dispatcher() -> _Dispatch:
    import llama_cpp.llama_cpp as lc
    with _install_lock:
        current = lc.llama_model_load_from_file
        if not isinstance(current, _Dispatch):
            current = _Dispatch(current)
            lc.llama_model_load_from_file = current
            _share_suppress()
        return current


def _context_dispatcher() -> _ContextDispatch:
    import llama_cpp.llama_cpp as lc
    with _install_lock:
        current = lc.llama_init_from_model
        if not isinstance(current, _ContextDispatch):
            current = _ContextDispatch(current)
            lc.llama_init_from_model = current
        return current


def _share_suppress() -> None:
    """_SharedSuppress where llama-cpp-python's modules look the name up (each imported it by name)"""
    import importlib
    for name in ("llama_cpp.llama", "llama_cpp._internals", "llama_cpp.llama_chat_format"):
        mod = importlib.import_module(name)
        if getattr(mod, "suppress_stdout_stderr", None) is not None:
            mod.suppress_stdout_stderr = _SharedSuppress  # type: ignore[attr-defined]


def install() -> None:
    """The dispatcher and the shared silencing, now (at import of flashmoe_gguf.runtime: before any load, so that no
    load on another thread is inside llama-cpp-python's own silencing while it is swapped)."""
    _dispatcher()
    _context_dispatcher()


@contextlib.contextmanager
def loading(model: _Loads, outputs_max: int = 0) -> Iterator[None]:
    """Within this block, the next llama_model_load_from_file on this thread loads `model`, and the next
    llama_init_from_model reports its size to `model.context_created`. outputs_max > 0: that context's
    n_outputs_max (llama.cpp's default is n_batch, and it reserves the logits of that many rows in the compute
    buffer: n_batch x n_vocab x 4 bytes, 1.2 GB for 2048 rows of Qwen3's 151,936 tokens, which a RAM budget then
    has to leave free; llama-cpp-python asks for one row per batch unless logits_all, embedding or a draft model)."""
    d, c = _dispatcher(), _context_dispatcher()
    if getattr(d.pending, "model", None) is not None:
        raise RuntimeError("a flashmoe model is already being loaded on this thread")
    d.pending.model = model
    c.pending.model = model
    c.pending.outputs_max = outputs_max
    try:
        yield
    finally:
        d.pending.model = None
        c.pending.model = None
        c.pending.outputs_max = 0
