"""ggml's own GGML_OP_MUL_MAT_ID, run on one-node graphs by llama-cpp-python's libggml-cpu (cffi ABI mode).

This is the reference the expert kernels are held to: it is the very code stock llama.cpp runs for routed
experts (with extra buffer types off), including the choices it makes per expert, such as ggml's "tiled"
K-quant path for experts that receive 8 or more activation rows of a batch (ggml-cpu/tiled/), whose float
arithmetic differs from vec_dot's. Nothing here comes from flashmoe.
"""

from __future__ import annotations

import numpy as np
from cffi import FFI

GGML_TYPE_F32, GGML_TYPE_I32 = 0, 26

_CDEF = """
struct ggml_init_params { size_t mem_size; void * mem_buffer; bool no_alloc; };
struct ggml_context;
struct ggml_tensor;
struct ggml_cgraph;
struct ggml_context * ggml_init(struct ggml_init_params params);
void ggml_free(struct ggml_context * ctx);
struct ggml_tensor * ggml_new_tensor_3d(struct ggml_context * ctx, int type, int64_t ne0, int64_t ne1, int64_t ne2);
struct ggml_tensor * ggml_new_tensor_2d(struct ggml_context * ctx, int type, int64_t ne0, int64_t ne1);
void * ggml_get_data(const struct ggml_tensor * tensor);
size_t ggml_nbytes(const struct ggml_tensor * tensor);
struct ggml_tensor * ggml_mul_mat_id(struct ggml_context * ctx, struct ggml_tensor * as, struct ggml_tensor * b,
                                     struct ggml_tensor * ids);
struct ggml_cgraph * ggml_new_graph(struct ggml_context * ctx);
void ggml_build_forward_expand(struct ggml_cgraph * cgraph, struct ggml_tensor * tensor);
"""
_CPU_CDEF = """
int ggml_graph_compute_with_ctx(struct ggml_context * ctx, struct ggml_cgraph * cgraph, int n_threads);
void ggml_cpu_init(void);
"""


class GgmlMulMatId:
    def __init__(self) -> None:
        from flashmoe_gguf.ggml_lib import llama_cpp_lib_dir
        lib_dir = llama_cpp_lib_dir()
        self.ffi = FFI()
        self.ffi.cdef(_CDEF)
        self.ffi.cdef(_CPU_CDEF)
        # by soname, the copies libllama uses (see flashmoe_gguf/ggml_lib.py)
        self.base = self.ffi.dlopen(str(lib_dir / "libggml-base.so.0"))
        self.cpu = self.ffi.dlopen(str(lib_dir / "libggml-cpu.so.0"))
        self.cpu.ggml_cpu_init()

    def _fill(self, t, arr: np.ndarray) -> None:
        n = int(self.base.ggml_nbytes(t))
        data = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
        assert data.size == n, (data.size, n)
        self.ffi.memmove(self.base.ggml_get_data(t), self.ffi.from_buffer(data), n)

    def __call__(self, gtype: int, n: int, weights: np.ndarray, acts: np.ndarray, ids: np.ndarray,
                 n_threads: int = 2) -> np.ndarray:
        """dst[t, k, :] = expert ids[t, k] (weights[e]: quantized rows, uint8 [rows, row bytes]) times
        acts[t, k % acts.shape[1], :] (float32 [n_tok, 1 or n_used, n]); returns float32 [n_tok, n_used, rows]."""
        n_exp, rows = weights.shape[0], weights.shape[1]
        n_tok, ne11 = acts.shape[0], acts.shape[1]
        n_used = ids.shape[1]
        size = weights.nbytes + acts.nbytes + ids.nbytes + 4 * rows * n_used * n_tok + (64 << 20)  # graph, work buffer (tiled: 512 KiB a thread)
        ctx = self.base.ggml_init({"mem_size": size, "mem_buffer": self.ffi.NULL, "no_alloc": False})
        try:
            w = self.base.ggml_new_tensor_3d(ctx, gtype, n, rows, n_exp)
            b = self.base.ggml_new_tensor_3d(ctx, GGML_TYPE_F32, n, ne11, n_tok)
            i = self.base.ggml_new_tensor_2d(ctx, GGML_TYPE_I32, n_used, n_tok)
            self._fill(w, weights)
            self._fill(b, acts.astype(np.float32))
            self._fill(i, ids.astype(np.int32))
            out = self.base.ggml_mul_mat_id(ctx, w, b, i)
            graph = self.base.ggml_new_graph(ctx)
            self.base.ggml_build_forward_expand(graph, out)
            assert self.cpu.ggml_graph_compute_with_ctx(ctx, graph, n_threads) == 0
            res = np.frombuffer(self.ffi.buffer(self.base.ggml_get_data(out), 4 * rows * n_used * n_tok),
                                dtype=np.float32).reshape(n_tok, n_used, rows).copy()
        finally:
            self.base.ggml_free(ctx)
        return res
