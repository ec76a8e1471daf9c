/* MUL_MAT_ID over streamed experts (see fm_matmul.c). */
#ifndef FM_MATMUL_H
#define FM_MATMUL_H

#include "fm_ggml.h"
#include "fm_pool.h"
#include "fm_routing.h"
#include "fm_store.h"
#include "fm_types.h"

/* work items per thread in a node's parallel region: an expert's rows are split when there are fewer experts */
#define FM_ITEMS_PER_THREAD 2

typedef struct {
    int isa;   /* our kernels' instruction set (FM_ISA_SCALAR, _AVX2, _AVX512), or FM_ISA_GGML */
    int tiled; /* enum fm_tiled: ggml's tiled K-quant path */
    fm_routing *routing; /* benchmarks only: a routing trace replayed in place of the router's choice, or NULL */
    int items; /* work items per thread in a node's region (measurement knob FLASHMOE_ITEMS_PER_THREAD; default 2) */
} fm_mm_opts;

/* Computes dst (a GGML_OP_MUL_MAT_ID node whose src0 is store tensor `tensor`), bitwise as ggml's CPU backend.
 * Returns 0, or -1 with the store's error set. */
int fm_mul_mat_id(fm_store *s, fm_pool *pool, int n_threads, int tensor, const fm_mm_opts *opts,
                  struct ggml_tensor *dst);

#endif
