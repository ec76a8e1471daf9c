"""llama.cpp's log (and ggml's: llama_log_set sets both) through one callback of ours, process-wide.

llama-cpp-python installs a callback at import that prints llama.cpp's errors (and with verbose=True everything) on
stderr. Ours sits in front of it and does two things:
- passes each line on to llama-cpp-python's callback, unless `quiet()` was called: the command line calls it (not
  with --verbose), so that a failure is our one `flashmoe CMD: error: ...` line and not llama.cpp's lines first;
- keeps the error lines logged on a thread while `errors_during()` runs there, so that a load llama.cpp refuses can
  say why (llama.cpp logs the reason and returns NULL; llama-cpp-python then says only "Failed to load model");
- keeps everything logged on a thread while `text_during()` runs there (tests and tools read a load's facts).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

# enum ggml_log_level of the pinned ggml (ggml.h): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5.
# (llama-cpp-python's own callback still maps them as an older ggml numbered them, 3 = error: with verbose=False it
# prints warnings.)
GGML_LOG_LEVEL_ERROR = 4
GGML_LOG_LEVEL_CONT = 5      # continues the previous line


class _Router:
    def __init__(self) -> None:
        import ctypes

        import llama_cpp
        from llama_cpp import _logger
        self.forward = _logger.llama_log_callback          # llama-cpp-python's (prints by its logger's level)
        self.passthrough = True
        self.local = threading.local()
        self.callback = llama_cpp.llama_log_callback(self._log)   # kept: llama.cpp holds the pointer
        llama_cpp.llama_log_set(self.callback, ctypes.c_void_p(0))

    def _log(self, level: int, text: bytes, user_data: Any) -> None:
        sink: list[str] | None = getattr(self.local, "sink", None)
        if sink is not None:
            if level == GGML_LOG_LEVEL_ERROR:
                sink.append(text.decode("utf-8", errors="replace"))
            elif level == GGML_LOG_LEVEL_CONT and getattr(self.local, "last", None) == GGML_LOG_LEVEL_ERROR and sink:
                sink[-1] += text.decode("utf-8", errors="replace")
            if level != GGML_LOG_LEVEL_CONT:
                self.local.last = level
        everything: list[str] | None = getattr(self.local, "everything", None)
        if everything is not None:
            everything.append(text.decode("utf-8", errors="replace"))
        if self.passthrough:
            self.forward(level, text, user_data)


_lock = threading.Lock()
_router: list[_Router] = []      # the one router, once installed


def install() -> _Router:
    """Our callback in front of llama-cpp-python's (once per process; imports llama_cpp)."""
    with _lock:
        if not _router:
            _router.append(_Router())
        return _router[0]


def quiet() -> None:
    """From now on llama.cpp's log lines are not printed (they are still seen by `errors_during`)."""
    install().passthrough = False


@contextlib.contextmanager
def errors_during() -> Iterator[list[str]]:
    """The error lines llama.cpp logs on this thread inside the block (each stripped, in order)."""
    router = install()
    outer = getattr(router.local, "sink", None)
    sink: list[str] = []
    router.local.sink, router.local.last = sink, None
    try:
        yield sink
    finally:
        router.local.sink = outer
        sink[:] = [s.strip() for s in sink if s.strip()]


@contextlib.contextmanager
def text_during() -> Iterator[list[str]]:
    """Everything llama.cpp (and ggml) log on this thread inside the block, every level, as logged (pieces, each
    usually a line with its newline): what its verbose log shows, e.g. a load's buffer sizes and graph splits.
    llama.cpp logs at every level whatever `verbose` is; verbose only decides whether they are printed."""
    router = install()
    outer = getattr(router.local, "everything", None)
    pieces: list[str] = []
    router.local.everything = pieces
    try:
        yield pieces
    finally:
        router.local.everything = outer


def reason(lines: list[str]) -> str | None:
    """llama.cpp's own reason among its error lines: the 'error loading model: ...' one, else the first."""
    for line in lines:
        _, sep, why = line.partition("error loading model: ")
        if sep:
            return why.strip()
    return lines[0] if lines else None
