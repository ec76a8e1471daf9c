"""`flashmoe_gguf.Llama`: llama_cpp.Llama whose routed experts stay on disk and are streamed on demand.

How: the ggml extension (ggml_ext/, imported as flashmoe_gguf._fmext) registers an ACCEL device in the ggml
that llama-cpp-python loaded. While a model loads through this class, that device claims the routed-expert
tensors; the model is read through a FILE* that never reads their bytes; at run time the device computes the
expert MUL_MAT_ID nodes from expert bytes it reads with pread into a cache bounded by `ram_budget`.
Everything else (attention, norms, router, shared experts, KV cache, sampling) is stock llama.cpp.
"""

from __future__ import annotations

import ctypes
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .gguf_index import GGUFIndexError, read_index
from .budget import auto_budget
from .isa import IsaError, resolve_isa, tiled_mode
from .units import parse_size

_EXPERT = re.compile(r"^blk\.(\d+)\.ffn_(gate_up|gate|up|down)_exps\.weight$")
_LOAD_LOCK = threading.Lock()
_INIT_LOCK = threading.Lock()
_ext: Any = None
LOAD_MODE_NONE = 0
# cache policies (ggml_ext/fm_store.h): our cache with use counts (default), plain LRU, or the OS page cache
CACHE_MODES = {"lfu": 2, "lru": 0, "os": 1}


from .runtime_errors import FlashMoeError  # noqa: E402  (re-exported)


@dataclass(frozen=True)
class ExpertTensor:
    name: str
    layer: int
    kind: str
    offset: int      # absolute file offset of expert 0
    stride: int      # bytes per expert
    n_expert: int
    gtype: int
    ne0: int
    ne1: int


def expert_tensors(path: str | Path) -> list[ExpertTensor]:
    """The routed-expert tensors of any GGUF (ours or not), from its tensor table."""
    try:
        index = read_index(path)
    except GGUFIndexError as exc:
        raise FlashMoeError(str(exc)) from exc
    out = []
    for t in index.tensors:
        m = _EXPERT.match(t.name)
        if not m:
            continue
        if len(t.shape) != 3 or t.shape[2] <= 0 or t.nbytes % t.shape[2]:
            raise FlashMoeError(f"{path}: {t.name} has shape {list(t.shape)}, not [cols, rows, experts]")
        out.append(ExpertTensor(t.name, int(m.group(1)), m.group(2), t.offset, t.nbytes // t.shape[2],
                                t.shape[2], t.gtype, t.shape[0], t.shape[1]))
    return out


def direct_io_works(path: str | Path) -> bool:
    """Whether this file can be read with O_DIRECT (not every file system allows it, e.g. older tmpfs)."""
    import mmap
    import os
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | flag)
    except OSError:
        return False
    try:
        buf = mmap.mmap(-1, 4096)        # page-aligned, as O_DIRECT needs
        try:
            return os.preadv(fd, [buf], 0) >= 0
        finally:
            buf.close()
    except OSError:
        return False
    finally:
        os.close(fd)


def _load_ext() -> Any:
    """Import the extension and bind it to the ggml that llama_cpp loaded (once per process)."""
    global _ext
    with _INIT_LOCK:
        if _ext is not None:
            return _ext
        import llama_cpp  # noqa: F401  (loads libllama and its ggml first)
        from importlib.metadata import version

        from .ggml_lib import llama_cpp_lib_dir
        try:
            from . import _fmext
        except ImportError as exc:
            raise FlashMoeError(f"the flashmoe ggml extension is not built ({exc}); reinstall flashmoe-gguf") from exc
        installed = version("llama-cpp-python")
        if installed != "0.3.36":
            raise FlashMoeError(f"flashmoe-gguf was built for llama-cpp-python 0.3.36, found {installed}")
        err = _fmext.ffi.new("char[1024]")
        if _fmext.lib.fm_init(str(llama_cpp_lib_dir()).encode(), err, 1024) != 0:
            raise FlashMoeError(_fmext.ffi.string(err).decode(errors="replace"))
        _ext = _fmext
        return _ext


class StreamedModel:
    """The extension's handle on one GGUF: its expert table, cache and I/O threads."""

    def __init__(self, path: str | Path, ram_budget: int | str, io_threads: int = 8, cache: str = "lfu",
                 direct_io: bool | str = "auto", kernels: bool = True, isa: str | None = None) -> None:
        ext = _load_ext()
        self.ext, self.ffi, self.lib = ext, ext.ffi, ext.lib
        self.path = str(Path(path).resolve())
        self.experts = expert_tensors(self.path)
        if not self.experts:
            raise FlashMoeError(f"{path}: no routed-expert tensors (blk.N.ffn_*_exps.weight): not an MoE GGUF")
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, not {cache!r}")
        expert_total = sum(e.stride * e.n_expert for e in self.experts)
        if ram_budget == "auto":
            ram_budget = auto_budget(Path(self.path).stat().st_size - expert_total, expert_total)
        ram_budget = parse_size(ram_budget)
        self.ram_budget = ram_budget
        if direct_io == "auto":
            # our own cache: O_DIRECT keeps the page cache from holding a second copy (under a memory limit the
            # kernel then reclaims it on every read: 1.3 vs 2.2 tok/s measured); the os mode needs the page cache
            direct_io = cache != "os" and direct_io_works(self.path)
        elif not isinstance(direct_io, bool):
            raise ValueError(f"direct_io must be True, False or 'auto', not {direct_io!r}")
        self.direct_io = direct_io
        try:
            choice = resolve_isa(isa, kernels, int(self.lib.fm_cpu_isa()), bool(self.lib.fm_ggml_has_x86_arith()))
        except IsaError as exc:
            raise FlashMoeError(str(exc)) from exc
        if choice.note:
            warnings.warn(f"flashmoe: {choice.note}", RuntimeWarning, stacklevel=3)
        self.kernel_isa = choice.name
        err = self.ffi.new("char[1024]")
        handle = self.lib.fm_model_new(self.path.encode(), ram_budget, io_threads, CACHE_MODES[cache],
                                       int(direct_io), choice.code, tiled_mode(), err, 1024)
        if handle == self.ffi.NULL:
            raise FlashMoeError(self.ffi.string(err).decode(errors="replace"))
        self.handle = handle
        for e in self.experts:
            if self.lib.fm_model_add_tensor(handle, e.name.encode(), e.offset, e.stride, e.n_expert, e.gtype, e.ne0,
                                            e.ne1, err, 1024) != 0:
                self.close()
                raise FlashMoeError(self.ffi.string(err).decode(errors="replace"))
        by_layer: dict[int, dict[str, str]] = {}
        for e in self.experts:
            by_layer.setdefault(e.layer, {})[e.kind] = e.name
        for kinds in by_layer.values():
            chain = [kinds[k] for k in ("gate_up", "gate", "up", "down") if k in kinds]
            for a, b in zip(chain, chain[1:]):
                self.lib.fm_model_set_partner(handle, a.encode(), b.encode())
        self.load_bytes_read = 0

    def ranges(self) -> list[tuple[int, int]]:
        return [(e.offset, e.offset + e.stride * e.n_expert) for e in self.experts]

    def load(self, params: Any) -> Any:
        """llama_model_load_from_file's replacement: reads everything but the experts."""
        import llama_cpp
        flat = [x for r in self.ranges() for x in r]
        ranges = self.ffi.new("uint64_t[]", flat or [0])
        counter = self.ffi.new("uint64_t *")
        err = self.ffi.new("char[1024]")
        fp = self.lib.fm_open_file_skipping(self.path.encode(), ranges, len(flat) // 2, counter, err, 1024)
        if fp == self.ffi.NULL:
            raise FlashMoeError(self.ffi.string(err).decode(errors="replace"))
        params.load_mode = LOAD_MODE_NONE
        self.lib.fm_model_begin_load(self.handle)
        try:
            model = llama_cpp.llama_cpp.llama_model_load_from_file_ptr(
                ctypes.c_void_p(int(self.ffi.cast("uintptr_t", fp))), params)
        finally:
            rc = self.lib.fm_model_end_load(self.handle, err, 1024)
            self.lib.fm_close_file(fp)
            self.load_bytes_read = int(counter[0])
        if model is not None and rc != 0:
            llama_cpp.llama_cpp.llama_model_free(model)
            raise FlashMoeError(self.ffi.string(err).decode(errors="replace"))
        return model

    def error(self) -> str | None:
        buf = self.ffi.new("char[1024]")
        return self.ffi.string(buf).decode(errors="replace") if self.lib.fm_model_error(self.handle, buf, 1024) else None

    def stats(self) -> dict[str, float]:
        s = self.ffi.new("fm_stats *")
        self.lib.fm_model_get_stats(self.handle, s)
        hits, misses = int(s.cache_hits), int(s.cache_misses)
        return {
            "expert_bytes_read": int(s.expert_bytes_read), "reads": int(s.reads), "cache_hits": hits,
            "cache_misses": misses, "cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "prefetches": int(s.prefetches), "not_admitted": int(s.not_admitted),
            "expert_bytes_used": int(s.expert_bytes_used),
            "cache_bytes": int(s.cache_bytes), "cache_peak_bytes": int(s.cache_peak_bytes),
            "mul_mat_id_calls": int(s.mul_mat_id_calls), "io_seconds": float(s.io_seconds),
            "io_wait_seconds": float(s.io_wait_seconds),
            "expert_compute_seconds": max(0.0, float(s.compute_seconds) - float(s.io_wait_seconds)),
            "load_bytes_read": self.load_bytes_read, "ram_budget": self.ram_budget, "direct_io": self.direct_io,
            "kernel_isa": self.kernel_isa,
        }

    def access(self, tensor: str, experts: Sequence[int]) -> None:
        """Replay hook: acquire, read and release experts of one tensor as a MUL_MAT_ID would, without computing."""
        err = self.ffi.new("char[1024]")
        arr = self.ffi.new("int[]", list(experts))
        if self.lib.fm_model_access(self.handle, tensor.encode(), arr, len(experts), err, 1024) != 0:
            raise FlashMoeError(self.ffi.string(err).decode(errors="replace"))

    def inject_read_error(self, nth_read: int) -> None:
        """Test hook: the nth expert read from now on fails with EIO."""
        self.lib.fm_model_inject_read_error(self.handle, nth_read)

    def close(self) -> None:
        if getattr(self, "handle", None) is not None:
            self.lib.fm_model_free(self.handle)
            self.handle = None


class _PatchedLoader:
    """Routes llama_cpp's model loading through StreamedModel.load for the duration of one Llama.__init__."""

    def __init__(self, model: StreamedModel) -> None:
        self.model = model

    def __enter__(self) -> None:
        import llama_cpp
        _LOAD_LOCK.acquire()
        self.mod = llama_cpp.llama_cpp
        self.orig = self.mod.llama_model_load_from_file
        target = self.model

        def load(path_model: bytes, params: Any) -> Any:
            return target.load(params)
        self.mod.llama_model_load_from_file = load

    def __exit__(self, *exc: object) -> None:
        self.mod.llama_model_load_from_file = self.orig
        _LOAD_LOCK.release()


def _llama_base() -> type:
    import llama_cpp
    return llama_cpp.Llama


class Llama(_llama_base()):  # type: ignore[misc]
    """Drop-in llama_cpp.Llama for MoE GGUFs larger than RAM.

    Extra arguments: ram_budget (bytes or "8G": RAM for cached experts; "auto" (default): what this machine or
    cgroup has available beyond the resident weights and a headroom, see flashmoe_gguf/budget.py), cache ("lfu": our cache, evicting the
    least often used experts (default); "lru": our cache, least recently used first; "os": no cache of our own,
    the page cache does it; see ggml_ext/fm_store.h), io_threads, direct_io (O_DIRECT reads; "auto" (default):
    with our own cache, when the file system allows it), isa (which code computes the expert products: "auto"
    (default, or the FLASHMOE_ISA environment variable), "avx512", "avx2", "scalar" (our kernels on that
    instruction set) or "ggml" (ggml's own code); all give stock llama.cpp's results bit for bit, see
    flashmoe_gguf/isa.py), kernels (False: the same as isa="ggml"). flashmoe_stats()["kernel_isa"] says which
    is used. Every llama_cpp.Llama argument works as usual.
    """

    def __init__(self, model_path: str, *args: Any, ram_budget: str | int = "auto", cache: str = "lfu",
                 io_threads: int = 8, direct_io: bool | str = "auto", kernels: bool = True, isa: str | None = None,
                 **kwargs: Any) -> None:
        self._fm: StreamedModel | None = None
        self._fm = StreamedModel(model_path, ram_budget, io_threads, cache, direct_io, kernels, isa)
        try:
            with _PatchedLoader(self._fm):
                super().__init__(model_path, *args, **kwargs)
        except Exception:
            self._fm.close()
            self._fm = None
            raise

    def eval(self, tokens: Sequence[int]) -> None:
        try:
            super().eval(tokens)
        except RuntimeError as exc:
            msg = self._fm.error() if self._fm else None
            if msg:
                raise FlashMoeError(msg) from exc
            raise
        if self._fm and (msg := self._fm.error()):
            raise FlashMoeError(msg)

    def flashmoe_stats(self) -> dict[str, float]:
        if self._fm is None:
            raise FlashMoeError("model is closed")
        return self._fm.stats()

    def close(self) -> None:
        super().close()
        if self._fm is not None:
            self._fm.close()
            self._fm = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def iter_expert_names(path: str | Path) -> Iterator[str]:
    return (e.name for e in expert_tensors(path))
