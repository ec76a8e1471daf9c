/* MUL_MAT_ID over streamed experts (see fm_matmul.c). */
#ifndef FM_MATMUL_H
#define FM_MATMUL_H

#include "fm_ggml.h"
#include "fm_pool.h"
#include "fm_store.h"

/* Computes dst (a GGML_OP_MUL_MAT_ID node whose src0 is store tensor `tensor`). use_kernels selects our
 * AVX2/AVX-512 kernels where one exists for the type; otherwise ggml's own CPU vec_dot is used.
 * Returns 0, or -1 with the store's error set. */
int fm_mul_mat_id(fm_store *s, fm_pool *pool, int n_threads, int tensor, int use_kernels, struct ggml_tensor *dst);

#endif
