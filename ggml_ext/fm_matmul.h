/* MUL_MAT_ID over streamed experts (see fm_matmul.c). */
#ifndef FM_MATMUL_H
#define FM_MATMUL_H

#include "fm_ggml.h"
#include "fm_pool.h"
#include "fm_store.h"

/* ggml's tiled K-quant MUL_MAT_ID path, as ggml-cpu decides it from its environment (read once per process):
   off (GGML_CPU_TILED_MM=0), on for experts with 8 or more rows (default), forced (GGML_CPU_TILED_MM_FORCE=1) */
enum { FM_TILED_OFF = 0, FM_TILED_ON = 1, FM_TILED_FORCE = 2 };

typedef struct {
    int isa;   /* our kernels' instruction set (FM_ISA_SCALAR/_AVX2/_AVX512), or 0: ggml's own MUL_MAT_ID */
    int tiled; /* FM_TILED_* */
} fm_mm_opts;

/* Computes dst (a GGML_OP_MUL_MAT_ID node whose src0 is store tensor `tensor`), bitwise as ggml's CPU backend.
 * Returns 0, or -1 with the store's error set. */
int fm_mul_mat_id(fm_store *s, fm_pool *pool, int n_threads, int tensor, const fm_mm_opts *opts,
                  struct ggml_tensor *dst);

#endif
