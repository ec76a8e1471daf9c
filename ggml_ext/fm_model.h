/* One streamed model: its expert store and run options. Shared by the backend and the Python API. */
#ifndef FM_MODEL_H
#define FM_MODEL_H

#include "fm_matmul.h"
#include "fm_store.h"

typedef struct fm_model {
    fm_store store;
    fm_mm_opts mm;        /* how expert products are computed */
    int n_bound;          /* expert tensors placed in flashmoe buffers by the loader */
    int n_unknown;        /* expert-named tensors the store does not know */
    uint64_t dropped;     /* expert bytes the loader handed over and we did not keep */
} fm_model;

/* The model whose weights are being loaded right now (buffers allocated meanwhile belong to it). */
void fm_backend_set_loading(fm_model *m);
/* Registers the flashmoe device in ggml's backend registry (idempotent). 0 on success. */
int fm_backend_register(char *err, size_t err_len);

#endif
