"""Benchmark the expert-matmul kernels (ggml_ext/fm_kernels*.c) against ggml's own CPU kernels, one thread.

The workload is one routed-expert matrix product of a Qwen3-30B-A3B-shaped layer: 128 experts of 768 rows x
2048 columns, 8 experts per token. For each weight type (q4_K, q2_K, q3_K, q5_K, q6_K, iq4_xs, q4_0, q4_1,
q8_0, mxfp4) it times, in C (no Python in the loop):

  ours        fm_kernel_matmul: each expert's rows against the tokens routed to it (the kernel's dot, or
              its dot_tiled for an expert with 8 or more tokens, as ggml; one call per weight row with up to
              8 tokens, tiled for the caches), one column per instruction set
  ggml        ggml-cpu's vec_dot (the kernel its MUL_MAT_ID calls below 8 rows), one call per (weight row, token)

and, with --mul-mat-id, ggml's complete MUL_MAT_ID op (ggml_mul_mat_id graph on the CPU backend, one
thread) on the same weight bytes, the same activations (in F32: it includes ggml quantizing them, which
ours leave out) and the same routing, step by step; a summary then lists ours (the instruction set the
runtime picks) against vec_dot and MUL_MAT_ID for every type and case. A type ggml_ext has no kernel for
yet is timed for ggml only, and said so.

Batches: 1 token (decode), and B tokens (prompt processing) either routed at random (each token picks 8
distinct experts: ~B*8/128 tokens per expert) or all to the same 8 experts (n_act = B, the best case for
reuse, and ggml's tiled path for the K-quants and IQ4_XS). Weights are `hot` (the same 8 experts every
step: they stay in the 32 MiB L3) or `cold` (8 random experts of 128 per step, 113 MB of Q4_K: mostly from
DRAM). GB/s = quantized weight bytes of the experts visited / time.

  python tools/bench_kernels.py                     # Q4_K, batch 1 and 32, hot and cold
  python tools/bench_kernels.py --types all --mul-mat-id
  python tools/bench_kernels.py --types q6_K,mxfp4 --mul-mat-id --no-scalar --seconds 0.05 --repeats 3
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

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: E402
from test_kernels import (EXT, ISA_NAMES, KERNEL_CDEF, SOURCES, TILED_TYPES, TYPE_NAMES, GgmlCpu,  # noqa: E402
                          build_module, row_bytes)

BENCH_C = r"""
#include <string.h>
#include <time.h>
#include "fm_ggml_mmid.h"
typedef void (*ggml_vec_dot_t)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by,
                               int nrc);

#ifndef FM_BENCH_CLOCK
#define FM_BENCH_CLOCK CLOCK_MONOTONIC
#endif
static double fm_now(void) {
    struct timespec t;
    clock_gettime(FM_BENCH_CLOCK, &t);
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

/* the runtime's path for a type without a kernel of ours (fm_matmul.c, expert_rows): the activations quantized
   once to the vec_dot_type (act), each expert's rows gathered side by side, then ggml's own MUL_MAT_ID on that one
   expert (fm_ggml_expert_product, compiled into this module). Returns seconds, or -1 on an error. */
double bench_ggml_path(int type, int act_type, int n, int rows, const uint8_t *W, size_t expert_bytes, size_t rb,
                       const int *experts, const int *off, const int *tok, int n_steps, int per_step,
                       const uint8_t *act, size_t act_stride, uint8_t *gather, float *out, float *tmp) {
    fm_ggml_scratch sc;
    memset(&sc, 0, sizeof sc);
    char err[256];
    double t0 = fm_now();
    for (int st = 0; st < n_steps; ++st) {
        for (int e = st * per_step; e < (st + 1) * per_step; ++e) {
            const int nt = off[e + 1] - off[e];
            if (nt == 0) continue;
            for (int t = 0; t < nt; ++t)
                memcpy(gather + (size_t)t * act_stride, act + (size_t)tok[off[e] + t] * act_stride, act_stride);
            if (fm_ggml_expert_product(&sc, type, n, W + (size_t)experts[e] * expert_bytes, rb, rows, act_type, gather,
                                       act_stride, nt, tmp, err, sizeof err) != 0) {
                fm_ggml_scratch_free(&sc);
                return -1.0;
            }
            for (int t = 0; t < nt; ++t) out[(size_t)tok[off[e] + t] * rows] += tmp[(size_t)t * rows];
        }
    }
    double dt = fm_now() - t0;
    fm_ggml_scratch_free(&sc);
    return dt;
}
"""

BENCH_CDEF = """
const fm_kernel *fm_kernel_get_avx512(int ggml_type, int vnni);
double bench_ours(const fm_kernel *k, int type, int n, int rows, const uint8_t *W, size_t expert_bytes, size_t rb,
                  const int *experts, const int *off, const int *tok, int n_steps, int per_step,
                  const uint8_t *act, size_t act_stride, uint8_t *gather, float *out, float *tmp);
double bench_ggml(void *vec_dot_ptr, int n, int rows, const uint8_t *W, size_t expert_bytes, size_t rb,
                  const int *experts, const int *off, const int *tok, int n_steps, int per_step,
                  const uint8_t *act, size_t act_stride, float *out, float *tmp);
double bench_ggml_path(int type, int act_type, int n, int rows, const uint8_t *W, size_t expert_bytes, size_t rb,
                       const int *experts, const int *off, const int *tok, int n_steps, int per_step,
                       const uint8_t *act, size_t act_stride, uint8_t *gather, float *out, float *tmp);
int fm_ggml_load(const char *lib_dir, char *err, size_t err_len);
"""

N_EXPERT, N_USED, ROWS, COLS = 128, 8, 768, 2048

# types ggml_ext has no kernel for: the runtime computes them through ggml's own MUL_MAT_ID, one streamed expert
# at a time (fm_ggml_mmid.c); timed here as "ours ggml" against ggml's whole MUL_MAT_ID
GGML_PATH_TYPES = {t.value: t.name.lower() for t in GGMLQuantizationType
                   if t.name in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL",
                                 "Q5_0", "Q5_1")}
ALL_TYPES = {**TYPE_NAMES, **GGML_PATH_TYPES}


def type_row_bytes(gtype: int, n: int) -> int:
    blck, size = GGML_QUANT_SIZES[GGMLQuantizationType(gtype)]
    return n // blck * size


def quantize_any(ggml: GgmlCpu, gtype: int, rows: np.ndarray) -> np.ndarray:
    """ggml's quantizer; types that need an importance matrix (IQ1/IQ2) get a uniform one (speed does not
    depend on it)"""
    qt = GGMLQuantizationType(gtype)
    base = ggml.base
    if not base.requires_imatrix(qt):
        return ggml.quantize_weights(gtype, rows)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    out = np.zeros((rows.shape[0], type_row_bytes(gtype, rows.shape[1])), np.uint8)
    imatrix = np.ones(rows.shape[1], np.float32)
    got = base.lib.ggml_quantize_chunk(gtype, base.ffi.from_buffer("float[]", rows), base.ffi.from_buffer("char[]", out),
                                       0, rows.shape[0], rows.shape[1], base.ffi.from_buffer("float[]", imatrix))
    assert got == out.nbytes, (got, out.nbytes)
    return out


def build_bench(build_dir: Path, clock: str = "wall"):
    """the kernels, the bench loops and the runtime's ggml path (fm_ggml.c, fm_ggml_mmid.c, bound to the ggml
    llama_cpp loaded, as the extension binds it) in one module"""
    import llama_cpp  # noqa: F401  (loads libggml*.so.0, which fm_ggml_load resolves from)
    from flashmoe_gguf.ggml_lib import llama_cpp_lib_dir
    sys.path.insert(0, str(REPO / "ggml_ext"))
    import build_ffi
    src = build_ffi.llama_cpp_source()
    gen = build_dir / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    (gen / "fm_build_info.h").write_text(
        f'#define FM_GGML_VERSION "{build_ffi.ggml_version(src)}"\n'
        f'#define FM_LLAMA_CPP_PYTHON_VERSION "{build_ffi.LLAMA_CPP_PYTHON_VERSION}"\n')
    sources = [EXT / n for n in (*SOURCES, "fm_ggml.c", "fm_ggml_mmid.c")]
    source = ("#define FM_BENCH_CLOCK CLOCK_THREAD_CPUTIME_ID\n" if clock == "cpu" else "") + BENCH_C
    mod = build_module("_fmkb", sources, KERNEL_CDEF + BENCH_CDEF, build_dir, extra_source=source,
                       include_dirs=(str(gen), str(src / "ggml" / "include"), str(src / "ggml" / "src")))
    err = mod.ffi.new("char[512]")
    if mod.lib.fm_ggml_load(str(llama_cpp_lib_dir()).encode(), err, 512) != 0:
        raise SystemExit(f"bench_kernels: {mod.ffi.string(err).decode()}")
    return mod


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


def parse_types(spec: str) -> list[int]:
    """--types: a comma list of type names (any case) or "all" """
    if spec.strip().lower() == "all":
        return list(ALL_TYPES)
    names = {v.lower(): k for k, v in ALL_TYPES.items()}
    out = []
    for t in spec.split(","):
        if t.strip().lower() not in names:
            raise SystemExit(f"bench_kernels: unknown type {t.strip()!r} (known: {', '.join(ALL_TYPES.values())}, all)")
        out.append(names[t.strip().lower()])
    return out


def step_ids(experts: np.ndarray, off: np.ndarray, tok: np.ndarray, per_step: int, batch: int) -> np.ndarray:
    """the schedule as MUL_MAT_ID's ids: [n_steps, batch, N_USED] int32, token t's experts of each step"""
    n_steps = len(experts) // per_step
    ids = np.zeros((n_steps, batch, N_USED), np.int32)
    for st in range(n_steps):
        used = [[] for _ in range(batch)]
        for e in range(st * per_step, (st + 1) * per_step):
            for t in tok[off[e]:off[e + 1]]:
                used[t].append(int(experts[e]))
        for t in range(batch):
            assert len(used[t]) == N_USED, (st, t, used[t])
            ids[st, t] = used[t]
    return ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="q4_K", help=f"comma list of {','.join(ALL_TYPES.values())}, or all")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--seconds", type=float, default=0.2, help="target time per measurement")
    ap.add_argument("--repeats", type=int, default=7, help="measurements per case and kernel (the best counts)")
    ap.add_argument("--no-scalar", action="store_true", help="leave out the (slow) scalar kernels")
    ap.add_argument("--mul-mat-id", action="store_true", help="also time ggml's MUL_MAT_ID op on the same tensors")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: time each measurement in this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), which leaves "
                         "out the time the thread waits for a core on a busy machine; memory contention stays")
    ap.add_argument("--build-dir", default=str(Path(tempfile.gettempdir()) / "fm_kernels_bench"))
    args = ap.parse_args()

    types = parse_types(args.types)
    batches = [int(b) for b in args.batches.split(",")]

    mod = build_bench(Path(args.build_dir), args.clock)
    ffi, lib = mod.ffi, mod.lib
    ggml = GgmlCpu()
    best_isa = ISA_NAMES[lib.fm_kernel_best_isa()]
    print(f"load average {os.getloadavg()[0]:.2f}; best ISA {best_isa}; one thread; {args.clock} clock")
    rng = np.random.default_rng(0)
    summary = []

    for gtype in types:
        name = ALL_TYPES[gtype]
        n = COLS
        rb = type_row_bytes(gtype, n)
        expert_bytes = ROWS * rb
        one = quantize_any(ggml, gtype, (rng.standard_normal((ROWS, n)) * 0.02).astype(np.float32))
        W = np.tile(one.reshape(-1), N_EXPERT)  # 128 distinct copies in memory
        vdt = ggml.traits(gtype).vec_dot_type
        ab = row_bytes(vdt, n)
        max_batch = max(batches)
        act_f32 = rng.standard_normal((max_batch, n)).astype(np.float32)
        act = ggml.quantize_activations(gtype, act_f32)
        gather = np.zeros(act.size + 64, np.uint8)
        vec_dot = int(ggml.ffi.cast("uintptr_t", ggml.traits(gtype).vec_dot))
        out = np.zeros(max_batch * ROWS, np.float32)
        tmp = np.zeros(max_batch * ROWS, np.float32)
        kernels = [lib.fm_kernel_get(gtype, i) for i in (1, 2, 3)]
        if lib.fm_kernel_best_isa() >= 3 and lib.fm_kernel_has_vnni():  # the AVX-512 kernels without VNNI too
            kernels.insert(2, lib.fm_kernel_get_avx512(gtype, 0))
        # labelled by the name's last part: its instruction set (avx512vnni: AVX-512 with VNNI)
        kernels = [(ffi.string(k.name).decode().rsplit("_", 1)[-1], k) for k in kernels if k != ffi.NULL]
        kernels = [(nm, k) for i, (nm, k) in enumerate(kernels)
                   if nm not in [m for m, _ in kernels[:i]] and not (args.no_scalar and nm == "scalar")]
        best = lib.fm_kernel_get(gtype, 0)  # the kernel the runtime picks: its name ends in its instruction set
        best_label = ffi.string(best.name).decode().rsplit("_", 1)[-1] if best != ffi.NULL else None
        mmid = MulMatIdBench(ggml, gtype, W, ROWS, n, act_f32, args.clock) if args.mul_mat_id else None
        print(f"\n{name}: expert {expert_bytes} B, rows {ROWS} x {n}, {N_EXPERT} experts, {N_USED} used; "
              + ("ggml's tiled path (and our dot_tiled) from 8 tokens per expert" if gtype in TILED_TYPES else
                 "no tiled path (vec_dot at any batch)")
              + ("" if best_label is None or any(nm == best_label for nm, _ in kernels) else
                 f"; best ISA {best_label} left out"))
        gpath = best == ffi.NULL
        if gpath:
            print(f"  ours: no kernel for {name} in ggml_ext: the runtime's path, ggml's MUL_MAT_ID one expert at a "
                  "time (fm_ggml_expert_product), as 'ours ggml'")
        cols = (["ggml vec_dot"] + [f"ours {nm}" for nm, _ in kernels] + (["ours ggml"] if gpath else [])
                + (["ggml MMID"] if mmid else []))
        print(f"{'batch':>5} {'routing':>7} {'weights':>7} {'tok/expert':>10} " +
              " ".join(f"{c:>12}" for c in cols) + "   (GB/s)")
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
            if gpath:
                def ggml_path(k: int) -> float:
                    dt = lib.bench_ggml_path(gtype, vdt, *common, k, *tail, fg, fo, ft)
                    if dt < 0:
                        raise SystemExit(f"bench_kernels: ggml's MUL_MAT_ID failed for {name}")
                    return dt
                fns.append(ggml_path)
            if mmid is not None:
                fns.append(mmid.stepper(batch, step_ids(experts, off, tok, per_step, batch)))
            res = timed(fns, max_steps, args.seconds, args.repeats)
            gbs = [step_bytes / t / 1e9 for t in res]
            ours = [g for (nm, _), g in zip(kernels, gbs[1:]) if nm == best_label]
            if gpath:
                ours = [gbs[1]]
            note = ""
            if ours:
                note = f"   ours {best_label or 'ggml'}/vec_dot {ours[0] / gbs[0]:.2f}x"
                if mmid is not None:
                    note += f", /MMID {ours[0] / gbs[-1]:.2f}x"
            print(f"{batch:>5} {routing:>7} {'hot' if hot else 'cold':>7} {pairs_per_expert:>10.1f} " +
                  " ".join(f"{g:>12.2f}" for g in gbs) + note)
            summary.append((name, best_label or "ggml", batch, routing, "hot" if hot else "cold",
                            ours[0] if ours else None, gbs[0], gbs[-1] if mmid is not None else None))
        if mmid is not None:
            mmid.close()

    if args.mul_mat_id:
        print("\nsummary, GB/s, one thread (ours = the kernel the runtime picks for the type, of instruction set "
              "isa; MMID includes ggml quantizing the activations, ours and vec_dot start from quantized ones)")
        print(f"{'type':>7} {'isa':>7} {'batch':>5} {'routing':>7} {'weights':>7} {'ours':>8} {'vec_dot':>8} "
              f"{'MMID':>8} {'ours/vec_dot':>12} {'ours/MMID':>9}")
        for name, isa, batch, routing, w, ours, vdg, mm in summary:
            print(f"{name:>7} {isa:>7} {batch:>5} {routing:>7} {w:>7} " +
                  (f"{ours:>8.2f}" if ours else f"{'none':>8}") + f" {vdg:>8.2f} {mm:>8.2f} " +
                  (f"{ours / vdg:>11.2f}x {ours / mm:>8.2f}x" if ours else f"{'-':>12} {'-':>9}"))
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


class MulMatIdBench:
    """ggml_mul_mat_id on the CPU backend, 1 thread, on the same tensors as the kernels: as [n, rows, N_EXPERT]
    holding the very weight bytes W, b [n, 1, batch] F32 (the activations before quantization: the op quantizes
    them itself, as in llama.cpp), ids [N_USED, batch] I32 set per step from the same schedule."""

    def __init__(self, ggml: GgmlCpu, gtype: int, W: np.ndarray, rows: int, n: int, act_f32: np.ndarray,
                 clock: str = "wall") -> None:
        import time
        self.now = time.thread_time if clock == "cpu" else time.perf_counter
        from cffi import FFI
        from flashmoe_gguf.ggml_lib import llama_cpp_lib_dir
        self.ffi = ffi = FFI()
        ffi.cdef(GGML_GRAPH_CDEF)
        self.base = ffi.dlopen(str(ggml.base.path))
        lib_dir = llama_cpp_lib_dir()
        self.cpu = ffi.dlopen(str(next(p for p in (lib_dir / "libggml-cpu.so.0", lib_dir / "libggml-cpu.so")
                                       if p.exists())))
        self.gtype, self.rows, self.n, self.act_f32 = gtype, rows, n, act_f32
        self.wctx = self.base.ggml_init({"mem_size": W.nbytes + (1 << 20), "mem_buffer": ffi.NULL, "no_alloc": False})
        self.a = self.base.ggml_new_tensor_3d(self.wctx, gtype, n, rows, W.nbytes // (rows * type_row_bytes(gtype, n)))
        assert self.base.ggml_nbytes(self.a) == W.nbytes
        np.frombuffer(ffi.buffer(self.base.ggml_get_data(self.a), W.nbytes), np.uint8)[:] = W
        self.ctxs, self.keep = [], []

    def stepper(self, batch: int, ids_steps: np.ndarray):
        """fn(n_steps) -> seconds spent in ggml_graph_compute for the first n_steps steps of ids_steps"""
        ffi, base = self.ffi, self.base
        ctx = base.ggml_init({"mem_size": batch * self.n * 4 + batch * N_USED * 4 + batch * N_USED * self.rows * 4
                              + (16 << 20), "mem_buffer": ffi.NULL, "no_alloc": False})
        self.ctxs.append(ctx)
        b = base.ggml_new_tensor_3d(ctx, 0, self.n, 1, batch)            # F32, one row per token
        ids = base.ggml_new_tensor_2d(ctx, 26, N_USED, batch)             # I32
        y = base.ggml_mul_mat_id(ctx, self.a, b, ids)
        graph = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(graph, y)
        np.frombuffer(ffi.buffer(base.ggml_get_data(b), base.ggml_nbytes(b)), np.float32)[:] = \
            self.act_f32[:batch].reshape(-1)
        idv = np.frombuffer(ffi.buffer(base.ggml_get_data(ids), base.ggml_nbytes(ids)), np.int32)
        plan = ffi.new("struct ggml_cplan *", self.cpu.ggml_graph_plan(graph, 1, ffi.NULL))
        work = np.zeros(plan.work_size + 64, np.uint8)
        plan.work_data = ffi.cast("uint8_t *", ffi.from_buffer(work))
        self.keep.append(work)  # alive while the plan points at it
        flat = ids_steps.reshape(len(ids_steps), -1)
        compute, now = self.cpu.ggml_graph_compute, self.now

        def run(n_steps: int) -> float:
            total = 0.0
            for st in range(n_steps):
                idv[:] = flat[st % len(flat)]
                t0 = now()
                rc = compute(graph, plan)
                total += now() - t0
                assert rc == 0, rc
            return total
        return run

    def close(self) -> None:
        for ctx in self.ctxs:
            self.base.ggml_free(ctx)
        self.ctxs, self.keep = [], []
        self.base.ggml_free(self.wctx)


if __name__ == "__main__":
    sys.exit(main())
