/* One streamed model: its expert store and run options. Shared by the backend and the Python API. */
#ifndef FM_MODEL_H
#define FM_MODEL_H

#include "fm_matmul.h"
#include "fm_store.h"

#define FM_TIMELINE 512

typedef struct fm_model {
    fm_store *store;
    fm_mm_opts mm;        /* how expert products are computed */
    int n_bound;          /* expert tensors placed in flashmoe buffers by the loader */
    uint64_t dropped;     /* expert bytes the loader handed over and we did not keep */
    int expert_block;     /* the backend also computes the element-wise ops between the expert products
                             (fm_backend.c, expert_block_model), as stock's CPU does in a GPU-hybrid model */
    /* diagnostic: monotonic entry/exit seconds of the backend's last FM_TIMELINE graph computes (a ring) */
    double timeline[2 * FM_TIMELINE];
    uint64_t timeline_n;
} fm_model;

/* The load scope: llama.cpp loads m's weights on this thread until fm_backend_end_load (buffers allocated
   meanwhile belong to it, and only its expert-table tensors are placed on our device). -1 if this thread is
   already loading a model. */
int fm_backend_begin_load(fm_model *m);
void fm_backend_end_load(void);
/* Registers the flashmoe device in ggml's backend registry (idempotent). 0 on success. */
int fm_backend_register(char *err, size_t err_len);

#endif
