"""The extension's handle on one GGUF (StreamedModel): its routed-expert table, cache, I/O threads and the code
that computes expert products; and the loader entry that reads the model without reading its experts.

flashmoe_gguf.Llama (runtime.py) makes one per model; tools use it directly to replay routing traces (`access`).
"""

from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

from . import extension
from . import budget as budget_rule
from .budget import Available, auto_budget
from .experts import ExpertTableError, ExpertTensor, expert_tensors
from .hugepages import HugePageReport, LoadPages
from .ggml_devices import has_gpu
from .gguf_index import GGUFIndexError, GGUFModel, read_model
from .isa import IsaError, resolve_isa, tiled_mode
from .load_checks import check_llama_invariants
from .load_plan import load_plan
from .llama_log import errors_during, reason
from .offload import check_overrides, flashmoe_overrides
from .runtime_errors import FlashMoeError
from .units import parse_size

LOAD_MODE_NONE = 0   # llama.cpp's load mode that reads tensors through the FILE* (no mmap)
CACHE_POLICIES = ("lfu", "lru", "os", "lrfu", "hazard")


def cache_mode(name: str) -> int:
    """The C enum fm_cache_mode value of a cache policy name (ggml_ext/fm_types.h)."""
    if name not in CACHE_POLICIES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_POLICIES)}, not {name!r}")
    return int(getattr(extension.constants(), f"FM_CACHE_{name.upper()}"))


def read_moe_model(path: str | Path) -> tuple[GGUFModel, list[ExpertTensor]]:
    """The model (every shard of a split one) and its routed experts; a bad or incomplete file as FlashMoeError"""
    try:
        model = read_model(path)
        experts = expert_tensors(model)
    except (GGUFIndexError, ExpertTableError) as exc:
        raise FlashMoeError(str(exc)) from exc
    check_expert_counts(model, experts)
    check_llama_invariants(model)
    return model, experts


def check_expert_counts(model: GGUFModel, experts: list[ExpertTensor]) -> None:
    """The expert counts in the metadata against the expert tensors, before llama.cpp sees them: it asserts on
    them and aborts the process (GGML_ASSERT) where we can say what is wrong"""
    arch = model.scalars.get("general.architecture")
    if not isinstance(arch, str) or not experts:
        return
    n = model.scalars.get(f"{arch}.expert_count")
    used = model.scalars.get(f"{arch}.expert_used_count")
    have = experts[0].n_expert
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise FlashMoeError(f"{model.path}: {arch}.expert_count is {n!r}: an MoE model needs at least one expert")
    if n != have:
        raise FlashMoeError(f"{model.path}: {arch}.expert_count says {n} experts, the expert tensors hold {have}")
    if not isinstance(used, int) or isinstance(used, bool) or not 0 < used <= n:
        raise FlashMoeError(f"{model.path}: {arch}.expert_used_count is {used!r}: it must be between 1 and the "
                            f"{n} experts")


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


class StreamedModel:
    """The extension's handle on one GGUF: its expert table, cache and I/O threads."""

    def __init__(self, path: str | Path, ram_budget: int | str, io_threads: int = 8, cache: str = "lfu",
                 direct_io: bool | str = "auto", kernels: bool = True, isa: str | None = None,
                 ram_headroom: int | str | None = None,
                 tensor_overrides: Sequence[tuple[str, str]] | None = None, resident_repack: bool = False) -> None:
        if not isinstance(resident_repack, bool):
            raise TypeError(f"resident_repack must be True or False, not {resident_repack!r}")
        self.resident_repack = resident_repack      # llama.cpp's extra buffer types for the resident weights
        self.tensor_overrides = check_overrides(tensor_overrides)   # offload.py: (regex, buffer type) pairs
        self.gpu_hybrid = False
        self.all_layers_on_gpu = False
        ext = extension.load()
        self.ext, self.ffi, self.lib = ext, ext.ffi, ext.lib
        self.path = str(Path(path).resolve())
        self.model, self.experts = read_moe_model(self.path)
        if not self.experts:
            raise FlashMoeError(f"{path}: no routed-expert tensors (blk.N.ffn_*_exps.weight): not an MoE GGUF")
        mode = cache_mode(cache)
        expert_total = sum(e.stride * e.n_expert for e in self.experts)
        self.expert_bytes = expert_total
        self.context_bytes: int | None = None      # llama.cpp's context, once created (context_created)
        self.huge_pages: HugePageReport | None = None     # set after the load (runtime.py, hugepages.py)
        # ram_budget="auto": memory available before the load; the cache is sized once the context exists
        self.auto: tuple[Available, int | None] | None = None
        if ram_budget == "auto":
            self.auto = (budget_rule.available_memory(), None if ram_headroom is None else parse_size(ram_headroom))
            ram_budget = auto_budget(self.model.size - expert_total, expert_total, *self.auto_args(0))
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
        handle = self._open_store(ram_budget, io_threads, mode, int(direct_io), choice.code, err)
        if handle == self.ffi.NULL:
            raise FlashMoeError(self.ffi.string(err).decode(errors="replace"))
        self.handle = handle
        # the files the store opened are the ones indexed above (not replaced or rewritten in between)
        for i, f in enumerate(self.model.files):
            ident = f.identity
            if ident is not None and self.lib.fm_model_verify_file(handle, i, ident.dev, ident.ino, ident.size,
                                                                   ident.mtime_ns, err, 1024) != 0:
                self.close()
                raise FlashMoeError(self.ffi.string(err).decode(errors="replace"))
        for e in self.experts:
            if self.lib.fm_model_add_tensor(handle, e.name.encode(), e.shard, e.offset, e.stride, e.n_expert, e.gtype,
                                            e.ne0, e.ne1, err, 1024) != 0:
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

    def _open_store(self, ram_budget: int, io_threads: int, mode: int, direct: int, isa: int, err: Any) -> Any:
        """the C model and its store, opening the model's files (a seam: tests change a file just before)"""
        paths = [self.ffi.new("char[]", str(p).encode()) for p in self.model.paths]
        return self.lib.fm_model_new(self.ffi.new("char *[]", paths), len(paths), ram_budget, io_threads, mode, direct,
                                     isa, tiled_mode(), err, 1024)

    def load(self, params: Any) -> Any:
        """llama_model_load_from_file's replacement: reads everything but the experts (a split model as one GGUF
        stream, see load_plan.py). Runs on the calling thread inside the extension's load scope for this model
        (fm_model_begin_load .. end_load)."""
        import llama_cpp
        try:
            plan = load_plan(self.model, {e.name for e in self.experts})
        except GGUFIndexError as exc:
            raise FlashMoeError(str(exc)) from exc
        # layers on a GPU: the routed experts are overridden to the CPU list, where our device comes first
        # (offload.py); llama.cpp reads the array during the load, the model keeps it
        self.gpu_hybrid = int(params.n_gpu_layers) != 0 and has_gpu()
        arch = self.model.scalars.get("general.architecture")
        n_layer = self.model.scalars.get(f"{arch}.block_count")
        # every layer (and the output head) on the GPU, no user override that could bring weights back
        self.all_layers_on_gpu = (self.gpu_hybrid and not self.tensor_overrides and isinstance(n_layer, int)
                                  and int(params.n_gpu_layers) > n_layer)
        self._overrides = flashmoe_overrides(self.tensor_overrides, [e.name for e in self.experts], self.gpu_hybrid)
        # ours or none (NULL, llama-cpp-python's own value): never an array a stock.tensor_overrides block around
        # this load put into the default params
        params.tensor_buft_overrides = self._overrides.address if self._overrides is not None else None
        # the expert block (the ops between the expert products) on our backend: with GPU layers, so that the block
        # crosses devices once each way as in stock; FLASHMOE_EXPERT_BLOCK=0/1 (measurements only) forces it
        block = os.environ.get("FLASHMOE_EXPERT_BLOCK", "")
        self.lib.fm_model_set_expert_block(self.handle, int(block == "1" or (block != "0" and self.gpu_hybrid)))
        counter = self.ffi.new("uint64_t *")
        err = self.ffi.new("char[1024]")
        read_err = self.ffi.new("char[1024]")     # why a read of the FILE* failed: llama.cpp only says it failed
        paths = [self.ffi.new("char[]", str(p).encode()) for p in self.model.paths]
        segs = self.ffi.new("uint64_t[]", [x for seg in plan.segments for x in seg])
        fp = self.lib.fm_open_segments(self.ffi.new("char *[]", paths), len(paths), plan.blob, len(plan.blob), segs,
                                       len(plan.segments), counter, read_err, 1024, err, 1024)
        if fp == self.ffi.NULL:
            raise FlashMoeError(self.ffi.string(err).decode(errors="replace"))
        params.load_mode = LOAD_MODE_NONE
        # llama.cpp's extra buffer types (CPU_REPACK, AMX) for the resident weights: off by default, and the whole
        # model is stock's `--no-repack` configuration, bit for bit. resident_repack=True turns them on: the
        # resident weights then go where stock puts them (repacked kernels add in another order), and the routed
        # experts still come to our device, first in the CPU list, ahead of the extra types; the model is then
        # stock with extra buffer types on and `-ot exps=CPU`, bit for bit where CPU_REPACK does not take the
        # expert type (with that override stock repacks a type it takes: Q4_0, Q4_K, IQ4_NL, MXFP4 on x86)
        params.use_extra_bufts = self.resident_repack
        if self.lib.fm_model_begin_load(self.handle, err, 1024) != 0:
            self.lib.fm_close_file(fp)
            raise FlashMoeError(self.ffi.string(err).decode(errors="replace"))
        # 2 MiB pages for the resident weights: advised between llama.cpp's buffer allocation and its first read
        # into them, i.e. at its first progress call (hugepages.py); a caller's progress callback still runs
        pages = LoadPages()
        # the caller's callback by its address: the field's object is a view of params, which ours then overwrites
        address = ctypes.cast(params.progress_callback, ctypes.c_void_p).value
        theirs = llama_cpp.llama_progress_callback(address) if address else None

        def progress(done: float, user_data: Any) -> bool:
            try:
                pages.advise()
            except Exception as exc:  # noqa: BLE001 - only a speed-up: never abort the load for it
                warnings.warn(f"flashmoe: huge pages for the resident weights: {exc}", RuntimeWarning, stacklevel=1)
            return bool(theirs(done, user_data)) if theirs else True
        ours = llama_cpp.llama_progress_callback(progress)
        params.progress_callback = ours
        try:
            with errors_during() as llama_errors:      # why llama.cpp refused the file, if it does
                model = llama_cpp.llama_cpp.llama_model_load_from_file_ptr(
                    ctypes.c_void_p(int(self.ffi.cast("uintptr_t", fp))), params)
        finally:
            params.progress_callback = theirs if theirs else llama_cpp.llama_progress_callback()
            self.huge_pages = pages.report()
            rc = self.lib.fm_model_end_load(self.handle, err, 1024)
            self.lib.fm_close_file(fp)
            self.load_bytes_read = int(counter[0])
        # a failed read first (llama.cpp then failed, and the file may also have changed: the read says where)
        if model is None and read_err[0] != b"\0":
            raise FlashMoeError(self.ffi.string(read_err).decode(errors="replace"))
        if model is None:       # the file changed during the load (the store says so), else llama.cpp's reason
            raise FlashMoeError(self.error() or f"{self.path}: llama.cpp cannot load this model: "
                                f"{reason(llama_errors) or 'it gave no reason'}")
        if rc != 0:             # an expert tensor not placed on our device, or a file changed during the load
            if model is not None:
                llama_cpp.llama_cpp.llama_model_free(model)
            raise FlashMoeError(self.ffi.string(err).decode(errors="replace"))
        return model

    def auto_args(self, context_bytes: int) -> tuple[Available, int, int | None]:
        assert self.auto is not None
        return self.auto[0], context_bytes, self.auto[1]

    def context_created(self, heap_bytes: int | None) -> None:
        """The loader's report: llama.cpp's context took heap_bytes (None: not measurable here)."""
        self.context_bytes = heap_bytes

    def size_auto_budget(self) -> None:
        """ram_budget="auto", once the context exists: the cache gets what is left beside it (budget.py)."""
        if self.auto is None:
            return
        if self.context_bytes is None:
            warnings.warn("flashmoe: ram_budget='auto' could not measure llama.cpp's context buffers (no glibc "
                          "malloc counters here): the expert cache is sized without them, which may exceed a "
                          "memory limit; pass ram_budget explicitly", RuntimeWarning, stacklevel=3)
        args = self.auto_args(self.context_bytes or 0)
        left = budget_rule.room(self.host_resident_bytes(), *args)
        if left < min(budget_rule.FLOOR, self.expert_bytes):
            warnings.warn(f"flashmoe: ram_budget='auto': {args[0].bytes / 1e6:.0f} MB available leave "
                          f"{max(left, 0) / 1e6:.0f} MB for the expert cache beside the resident weights "
                          f"({self.host_resident_bytes() / 1e6:.0f} MB), llama.cpp's context "
                          f"({(self.context_bytes or 0) / 1e6:.0f} MB) and the headroom; the cache gets the "
                          f"{budget_rule.FLOOR >> 20} MiB floor, which may exceed the memory limit (a smaller "
                          "n_ctx or n_ubatch, or flash_attn=True, shrinks the context)", RuntimeWarning, stacklevel=3)
        self.set_budget(auto_budget(self.host_resident_bytes(), self.expert_bytes, *args))

    def host_resident_bytes(self) -> int:
        """The non-expert weights in host memory once loaded: all of them; with every layer on a GPU only the
        tensors outside the layers (llama.cpp keeps the token embedding on the CPU; the output head and norm, on the
        GPU, are counted anyway). The layers' weights reach the GPU through llama.cpp's small staging buffers."""
        if not getattr(self, "all_layers_on_gpu", False):
            return self.model.size - self.expert_bytes
        return sum(t.nbytes for t in self.model.tensors if not t.name.startswith("blk."))

    def set_budget(self, budget: int) -> None:
        """Resize the expert cache (bytes; a smaller one evicts down to it). Not while the model computes."""
        self.lib.fm_model_set_budget(self.handle, budget)
        self.ram_budget = budget

    def error(self) -> str | None:
        buf = self.ffi.new("char[1024]")
        return self.ffi.string(buf).decode(errors="replace") if self.lib.fm_model_error(self.handle, buf, 1024) else None

    def timeline(self) -> list[tuple[float, float]]:
        """Diagnostic: (entry, exit) monotonic seconds of our backend's graph computes since the last call."""
        out = self.ffi.new("double[]", 2 * 512)
        n = self.lib.fm_model_timeline(self.handle, out, 512)
        return [(out[2 * i], out[2 * i + 1]) for i in range(n)]

    def stats(self) -> dict[str, Any]:
        s = self.ffi.new("fm_stats *")
        self.lib.fm_model_get_stats(self.handle, s)
        hits, misses = int(s.cache_hits), int(s.cache_misses)
        return {
            "expert_bytes_read": int(s.expert_bytes_read), "reads": int(s.reads), "cache_hits": hits,
            "cache_misses": misses, "cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "prefetches": int(s.prefetches), "not_admitted": int(s.not_admitted),
            "expert_bytes_used": int(s.expert_bytes_used),
            "cache_bytes": int(s.cache_bytes), "cache_peak_bytes": int(s.cache_peak_bytes),
            "kept_buffer_bytes": int(s.kept_buffer_bytes), "expert_buffers_made": int(s.buffers_made),
            "mul_mat_id_calls": int(s.mul_mat_id_calls), "io_seconds": float(s.io_seconds),
            "io_wait_seconds": float(s.io_wait_seconds),
            "expert_compute_seconds": max(0.0, float(s.compute_seconds) - float(s.io_wait_seconds)),
            # of the expert products' time, on the calling thread alone (routing, cache bookkeeping, setup)
            "expert_serial_seconds": float(s.serial_seconds),
            # the parallel regions' wall time x threads, and of it the time in the products themselves
            "expert_region_thread_seconds": float(s.region_thread_seconds),
            "expert_busy_thread_seconds": float(s.busy_thread_seconds),
            "load_bytes_read": self.load_bytes_read, "ram_budget": self.ram_budget, "direct_io": self.direct_io,
            "context_bytes": self.context_bytes,
            "kernel_isa": self.kernel_isa,
            # resident weights in 2 MiB pages (the kernel's account after the load) and advised: hugepages.py
            "huge_page_bytes": self.huge_pages.huge_bytes if self.huge_pages else 0,
            "huge_page_advised_bytes": self.huge_pages.advised_bytes if self.huge_pages else 0,
        }

    def set_routing(self, experts: Any | None) -> None:
        """Benchmarks only: replay a routing trace in place of the router's choice in the streamed expert products.

        experts: integer array [tokens, layers, k] (a `bench.routing.Trace`'s `experts`; -1 = the router's choice
        for that slot), k equal to the model's experts per token; the model's MoE layer L takes the trace's
        layer L, every call of a tensor the next rows of the trace (wrapping). None turns it off. The router's
        weights for its own choice still scale the products, so the outputs are meaningless: use it only on
        random-weight models, to give the expert cache real routing's reuse and skew. Not while the model
        computes."""
        import numpy as np
        err = self.ffi.new("char[1024]")
        if experts is None:
            self.lib.fm_model_set_routing(self.handle, self.ffi.NULL, 0, 0, 0, err, 1024)
            return
        ids = np.ascontiguousarray(experts, dtype=np.int32)
        if ids.ndim != 3:
            raise ValueError(f"routing trace must be [tokens, layers, k], not {ids.shape}")
        layers = sorted({e.layer for e in self.experts})
        if layers[-1] >= ids.shape[1]:
            raise FlashMoeError(f"routing trace has {ids.shape[1]} layers, the model's MoE layers go up to "
                                f"{layers[-1]}")
        if self.lib.fm_model_set_routing(self.handle, self.ffi.from_buffer("int32_t[]", ids), ids.shape[0],
                                         ids.shape[1], ids.shape[2], err, 1024) != 0:
            raise FlashMoeError(self.ffi.string(err).decode(errors="replace"))
        for e in self.experts:
            if self.lib.fm_model_route_tensor(self.handle, e.name.encode(), e.layer, err, 1024) != 0:
                msg = self.ffi.string(err).decode(errors="replace")
                self.lib.fm_model_set_routing(self.handle, self.ffi.NULL, 0, 0, 0, err, 1024)
                raise FlashMoeError(msg)

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
