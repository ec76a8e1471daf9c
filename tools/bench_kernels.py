"""Benchmark the expert-matmul kernels (ggml_ext/fm_kernels*.c) against ggml's own CPU kernels, one thread.

The workload is one routed-expert matrix product of a Qwen3-30B-A3B-shaped layer: 128 experts of 768 rows x
2048 columns, 8 experts per token. For each instruction set and weight type it times, in C (no Python in the
loop):

  ours        fm_kernel_matmul: each expert's rows against the tokens routed to it (the kernel's dot, or
              its dot_tiled for an expert with 8 or more tokens, as ggml; one call per weight row with up to
              8 tokens, tiled for the caches)
  ggml        ggml-cpu's vec_dot (the kernel its MUL_MAT_ID calls), one call per (weight row, token)

and, with --mul-mat-id, ggml's complete MUL_MAT_ID op (ggml_mul_mat_id graph on the CPU backend, one
thread, activations already in F32: it includes ggml quantizing them, which ours leave out).

Batches: 1 token (decode), and B tokens (prompt processing) either routed at random (each token picks 8
distinct experts: ~B*8/128 tokens per expert) or all to the same 8 experts (n_act = B, the best case for
reuse). Weights are `hot` (the same 8 experts every step: they stay in the 32 MiB L3) or `cold` (8 random
experts of 128 per step, 113 MB of Q4_K: mostly from DRAM). GB/s = quantized weight bytes of the experts
visited / time.

  python tools/bench_kernels.py                     # Q4_K, batch 1 and 32, hot and cold
  python tools/bench_kernels.py --types all --mul-mat-id
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from test_kernels import (ISA_NAMES, TYPE_NAMES, VEC_DOT_TYPE, GgmlCpu,  # noqa: E402
                          build_kernels, row_bytes)

BENCH_C = r"""
#include <string.h>
#include <time.h>
typedef void (*ggml_vec_dot_t)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by,
                               int nrc);

static double fm_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* one expert matmul step per (step): for each expert e of the step, tokens tok[off[e] .. off[e+1]) of it.
   out[token * rows + row]. Returns seconds. */
double bench_ours(const fm_kernel *k, int type, int n, int rows, const uint8_t *W, size_t expert_bytes, size_t rb,
                  const int *experts, const int *off, const int *tok, int n_steps, int per_step,
                  const uint8_t *act, size_t act_stride, uint8_t *gather, float *out, float *tmp) {
    double t0 = fm_now();
    for (int st = 0; st < n_steps; ++st) {
        for (int e = st * per_step; e < (st + 1) * per_step; ++e) {
            const int nt = off[e + 1] - off[e];
            if (nt == 0) continue;
            const uint8_t *we = W + (size_t)experts[e] * expert_bytes;
            const uint8_t *a = act + (size_t)tok[off[e]] * act_stride;
            if (nt > 1) { /* tokens of this expert side by side (the backend gathers them the same way) */
                for (int t = 0; t < nt; ++t) memcpy(gather + (size_t)t * act_stride, act + (size_t)tok[off[e] + t] * act_stride, act_stride);
                a = gather;
            }
            fm_kernel_matmul(k, type, nt >= 8 && k->dot_tiled, n, we, rb, rows, a, act_stride, nt, tmp, rows);
            for (int t = 0; t < nt; ++t) out[(size_t)tok[off[e] + t] * rows] += tmp[(size_t)t * rows];
        }
    }
    return fm_now() - t0;
}

double bench_ggml(void *vec_dot_ptr, int n, int rows, const uint8_t *W, size_t expert_bytes, size_t rb,
                  const int *experts, const int *off, const int *tok, int n_steps, int per_step,
                  const uint8_t *act, size_t act_stride, float *out, float *tmp) {
    ggml_vec_dot_t vec_dot = (ggml_vec_dot_t)vec_dot_ptr;
    double t0 = fm_now();
    for (int st = 0; st < n_steps; ++st) {
        for (int e = st * per_step; e < (st + 1) * per_step; ++e) {
            const int nt = off[e + 1] - off[e];
            const uint8_t *we = W + (size_t)experts[e] * expert_bytes;
            for (int r = 0; r < rows; ++r)
                for (int t = 0; t < nt; ++t)
                    vec_dot(n, tmp + (size_t)t * rows + r, 0, we + (size_t)r * rb, 0,
                            act + (size_t)tok[off[e] + t] * act_stride, 0, 1);
            for (int t = 0; t < nt; ++t) out[(size_t)tok[off[e] + t] * rows] += tmp[(size_t)t * rows];
        }
    }
    return fm_now() - t0;
}
"""

BENCH_CDEF = """
double bench_ours(const fm_kernel *k, int type, int n, int rows, const uint8_t *W, size_t expert_bytes, size_t rb,
                  const int *experts, const int *off, const int *tok, int n_steps, int per_step,
                  const uint8_t *act, size_t act_stride, uint8_t *gather, float *out, float *tmp);
double bench_ggml(void *vec_dot_ptr, int n, int rows, const uint8_t *W, size_t expert_bytes, size_t rb,
                  const int *experts, const int *off, const int *tok, int n_steps, int per_step,
                  const uint8_t *act, size_t act_stride, float *out, float *tmp);
"""

N_EXPERT, N_USED, ROWS, COLS = 128, 8, 768, 2048


def schedule(rng, n_steps: int, batch: int, routing: str, hot: bool):
    """Per step the experts visited and each one's tokens, flattened: (experts, off, tok, experts per step).
    Expert e's tokens are tok[off[e]:off[e + 1]]."""
    hot_set = rng.choice(N_EXPERT, N_USED, replace=False)
    steps = []
    for _ in range(n_steps):
        if routing == "random":  # every token picks its own 8 experts
            step: dict[int, list[int]] = {}
            for t in range(batch):
                for e in rng.choice(N_EXPERT, N_USED, replace=False):
                    step.setdefault(int(e), []).append(t)
        else:
            sel = hot_set if hot else rng.choice(N_EXPERT, N_USED, replace=False)
            step = {int(e): list(range(batch)) for e in sel}
        steps.append(sorted(step.items()))
    width = max(len(st) for st in steps)
    experts, off, tok = [], [0], []
    for st in steps:  # pad every step to the same number of experts (empty ones are skipped)
        for e, ts in st + [(st[0][0], [])] * (width - len(st)):
            experts.append(e)
            tok.extend(ts)
            off.append(len(tok))
    return np.array(experts, np.int32), np.array(off, np.int32), np.array(tok, np.int32), width


def timed(fns, max_steps: int, seconds: float, repeats: int) -> list[float]:
    """best seconds per step of each fn(n_steps) -> seconds; the functions take turns, so that load from
    other processes spreads over all of them, and the best of `repeats` turns counts"""
    steps = []
    for fn in fns:
        t1 = fn(1)  # warm-up and estimate
        steps.append(int(min(max_steps, max(2, seconds / max(t1, 1e-9)))))
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], fn(steps[i]) / steps[i])
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="q4_K", help="comma list of q4_K,q2_K,q4_0,q4_1,q8_0, or all")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--seconds", type=float, default=0.2, help="target time per measurement")
    ap.add_argument("--repeats", type=int, default=7, help="measurements per case and kernel (the best counts)")
    ap.add_argument("--no-scalar", action="store_true", help="leave out the (slow) scalar kernels")
    ap.add_argument("--mul-mat-id", action="store_true", help="also time ggml's MUL_MAT_ID op")
    ap.add_argument("--build-dir", default=str(Path(tempfile.gettempdir()) / "fm_kernels_bench"))
    args = ap.parse_args()

    names = {v: k for k, v in TYPE_NAMES.items()}
    types = list(TYPE_NAMES) if args.types == "all" else [names[t] for t in args.types.split(",")]
    batches = [int(b) for b in args.batches.split(",")]

    mod = build_kernels(Path(args.build_dir), extra_source=BENCH_C, extra_cdef=BENCH_CDEF)
    ffi, lib = mod.ffi, mod.lib
    ggml = GgmlCpu()
    print(f"load average {os.getloadavg()[0]:.2f}; best ISA {ISA_NAMES[lib.fm_kernel_best_isa()]}")
    rng = np.random.default_rng(0)

    for gtype in types:
        n = COLS
        rb = row_bytes(gtype, n)
        expert_bytes = ROWS * rb
        one = ggml.quantize_weights(gtype, (rng.standard_normal((ROWS, n)) * 0.02).astype(np.float32))
        W = np.tile(one.reshape(-1), N_EXPERT)  # 128 distinct copies in memory
        vdt = VEC_DOT_TYPE[gtype]
        ab = row_bytes(vdt, n)
        max_batch = max(batches)
        act = ggml.quantize_activations(gtype, rng.standard_normal((max_batch, n)).astype(np.float32))
        gather = np.zeros(act.size + 64, np.uint8)
        vec_dot = int(ggml.ffi.cast("uintptr_t", ggml.traits(gtype).vec_dot))
        out = np.zeros(max_batch * ROWS, np.float32)
        tmp = np.zeros(max_batch * ROWS, np.float32)
        kernels = [(ISA_NAMES[i], lib.fm_kernel_get(gtype, i)) for i in (1, 2, 3)]
        kernels = [(name, k) for name, k in kernels if k != ffi.NULL and not (args.no_scalar and name == "scalar")]
        print(f"\n{TYPE_NAMES[gtype]}: expert {expert_bytes} B, rows {ROWS} x {n}, {N_EXPERT} experts, {N_USED} used")
        print(f"{'batch':>5} {'routing':>7} {'weights':>7} {'tok/expert':>10} " +
              " ".join(f"{k:>12}" for k in ["ggml vec_dot"] + [f"ours {nm}" for nm, _ in kernels]) + "   (GB/s)")
        cases = [(b, r, h) for b in batches
                 for r, h in ([("-", True), ("-", False)] if b == 1 else
                              [("shared", True), ("shared", False), ("random", False)])]
        for batch, routing, hot in cases:
            max_steps = 400 if routing == "random" else 4000
            experts, off, tok, per_step = schedule(np.random.default_rng(1), max_steps, batch, routing, hot)
            step_bytes = np.mean([sum(1 for e in range(s * per_step, (s + 1) * per_step) if off[e + 1] > off[e])
                                  for s in range(max_steps)]) * expert_bytes
            pairs_per_expert = off[-1] / (step_bytes / expert_bytes * max_steps)
            p = lambda a: ffi.from_buffer(a)  # noqa: E731
            common = (n, ROWS, ffi.cast("uint8_t *", p(W)), expert_bytes, rb, ffi.cast("int *", p(experts)),
                      ffi.cast("int *", p(off)), ffi.cast("int *", p(tok)))
            tail = (per_step, ffi.cast("uint8_t *", p(act)), ab)
            fo, ft, fg = ffi.cast("float *", p(out)), ffi.cast("float *", p(tmp)), ffi.cast("uint8_t *", p(gather))
            vd = ffi.cast("void *", vec_dot)
            fns = [lambda k: lib.bench_ggml(vd, *common, k, *tail, fo, ft)]
            fns += [lambda k, kern=kern: lib.bench_ours(kern, gtype, *common, k, *tail, fg, fo, ft)
                    for _, kern in kernels]
            res = timed(fns, max_steps, args.seconds, args.repeats)
            gbs = [step_bytes / t / 1e9 for t in res]
            print(f"{batch:>5} {routing:>7} {'hot' if hot else 'cold':>7} {pairs_per_expert:>10.1f} " +
                  " ".join(f"{g:>12.2f}" for g in gbs) + f"   best ours/ggml {max(gbs[1:]) / gbs[0]:.2f}x")
        if args.mul_mat_id:
            bench_mul_mat_id(ggml, gtype, batches, args)
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    return 0


# ------------------------------------------------------------------------------------------------------
# ggml's own MUL_MAT_ID (optional)

GGML_GRAPH_CDEF = """
struct ggml_init_params { size_t mem_size; void *mem_buffer; bool no_alloc; };
struct ggml_context *ggml_init(struct ggml_init_params params);
void ggml_free(struct ggml_context *ctx);
struct ggml_tensor *ggml_new_tensor_2d(struct ggml_context *ctx, int type, int64_t ne0, int64_t ne1);
struct ggml_tensor *ggml_new_tensor_3d(struct ggml_context *ctx, int type, int64_t ne0, int64_t ne1, int64_t ne2);
struct ggml_tensor *ggml_mul_mat_id(struct ggml_context *ctx, struct ggml_tensor *as, struct ggml_tensor *b,
                                    struct ggml_tensor *ids);
struct ggml_cgraph *ggml_new_graph(struct ggml_context *ctx);
void ggml_build_forward_expand(struct ggml_cgraph *cgraph, struct ggml_tensor *tensor);
void *ggml_get_data(const struct ggml_tensor *tensor);
size_t ggml_nbytes(const struct ggml_tensor *tensor);
struct ggml_cplan {
    size_t work_size; uint8_t *work_data; int n_threads; void *threadpool;
    void *abort_callback; void *abort_callback_data; bool use_ref;
};
struct ggml_cplan ggml_graph_plan(const struct ggml_cgraph *cgraph, int n_threads, void *threadpool);
int ggml_graph_compute(struct ggml_cgraph *cgraph, struct ggml_cplan *cplan);
"""


def bench_mul_mat_id(ggml: GgmlCpu, gtype: int, batches: list[int], args) -> None:
    """ggml_mul_mat_id on the CPU, 1 thread: as [COLS, ROWS, N_EXPERT] (quantized), b [COLS, N_USED?, batch]
    F32, ids [N_USED, batch] I32. Times whole graph computations (hot: same 8 experts; cold: random)."""
    import time
    from cffi import FFI
    from flashmoe_gguf.ggml_lib import llama_cpp_lib_dir
    ffi = FFI()
    ffi.cdef(GGML_GRAPH_CDEF)
    base = ffi.dlopen(str(ggml.base.path))
    cpu = ffi.dlopen(str(next(p for p in (llama_cpp_lib_dir() / "libggml-cpu.so.0",
                                          llama_cpp_lib_dir() / "libggml-cpu.so") if p.exists())))
    rng = np.random.default_rng(2)
    one = ggml.quantize_weights(gtype, (rng.standard_normal((ROWS, COLS)) * 0.02).astype(np.float32))
    expert_bytes = one.size
    print(f"{'batch':>5} {'routing':>7} {'weights':>7}  ggml MUL_MAT_ID (GB/s, incl. quantizing activations)")
    for batch in batches:
        ctx = base.ggml_init({"mem_size": N_EXPERT * expert_bytes + batch * COLS * 4 + batch * ROWS * N_USED * 4
                              + (16 << 20), "mem_buffer": ffi.NULL, "no_alloc": False})
        try:
            a = base.ggml_new_tensor_3d(ctx, gtype, COLS, ROWS, N_EXPERT)
            b = base.ggml_new_tensor_3d(ctx, 0, COLS, 1, batch)           # F32, one row per token
            ids = base.ggml_new_tensor_2d(ctx, 26, N_USED, batch)          # I32
            y = base.ggml_mul_mat_id(ctx, a, b, ids)
            graph = base.ggml_new_graph(ctx)
            base.ggml_build_forward_expand(graph, y)
            wbuf = np.frombuffer(ffi.buffer(base.ggml_get_data(a), base.ggml_nbytes(a)), np.uint8)
            wbuf[:] = np.tile(one.reshape(-1), N_EXPERT)
            np.frombuffer(ffi.buffer(base.ggml_get_data(b), base.ggml_nbytes(b)), np.float32)[:] = \
                rng.standard_normal(batch * COLS).astype(np.float32)
            idv = np.frombuffer(ffi.buffer(base.ggml_get_data(ids), base.ggml_nbytes(ids)), np.int32)
            idv[:] = np.tile(np.arange(N_USED, dtype=np.int32), batch)
            plan = ffi.new("struct ggml_cplan *", cpu.ggml_graph_plan(graph, 1, ffi.NULL))
            work = np.zeros(plan.work_size + 64, np.uint8)
            plan.work_data = ffi.cast("uint8_t *", ffi.from_buffer(work))
            cases = [("-", True), ("-", False)] if batch == 1 else [("shared", True), ("random", False)]
            for routing, hot in cases:  # hot: the same 8 experts every step (shared by all tokens)
                hot_set = rng.choice(N_EXPERT, N_USED, replace=False)
                n_steps = max(4, int(args.seconds * 10e9 / (N_USED * expert_bytes)))
                best = 0.0
                for _ in range(args.repeats):
                    total, visited = 0.0, 0
                    for _ in range(n_steps):
                        if hot:
                            sel = np.stack([rng.permutation(hot_set) for _ in range(batch)])
                        else:
                            sel = np.stack([rng.choice(N_EXPERT, N_USED, replace=False) for _ in range(batch)])
                        idv[:] = sel.reshape(-1)
                        visited += len(np.unique(sel))
                        t0 = time.perf_counter()
                        cpu.ggml_graph_compute(graph, plan)
                        total += time.perf_counter() - t0
                    best = max(best, visited * expert_bytes / total / 1e9)
                print(f"{batch:>5} {routing:>7} {'hot' if hot else 'cold':>7}  {best:.2f}")
        finally:
            base.ggml_free(ctx)


if __name__ == "__main__":
    sys.exit(main())
