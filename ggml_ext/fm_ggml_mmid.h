/* One expert's product through ggml's own GGML_OP_MUL_MAT_ID code (ggml-cpu), on the calling thread.
 *
 * This is stock llama.cpp's computation by construction, for every weight type ggml has, including the
 * choices ggml makes per expert (its tiled K-quant path for an expert with 8 or more rows of a batch): the
 * expert is handed to ggml as a one-expert MUL_MAT_ID node whose ids route all of its activation rows to it,
 * and the row count it sees is the one stock sees. Used for types without a kernel of ours, where ggml-cpu
 * was built with arithmetic our kernels do not reproduce, and when the model is asked for ggml's code
 * (kernels=False). */
#ifndef FM_GGML_MMID_H
#define FM_GGML_MMID_H

#include <stddef.h>
#include <stdint.h>

/* per-thread scratch, grown as needed; zero-initialise, free with fm_ggml_scratch_free */
typedef struct {
    void *ctx_mem;       /* the ggml context's metadata (tensors, graph) */
    size_t ctx_size;
    void *work;          /* ggml_graph_plan's work buffer */
    size_t work_cap;
    int32_t *ids;        /* n zeros: every row goes to expert 0 of the one-expert tensor */
    size_t ids_cap;
} fm_ggml_scratch;

/* out[p * n_rows + r] = weight row r (of type `type`, ne00 values, row r at w + r * w_row) . activation row p
   for p < n_act, r < n_rows. act: n_act rows of ne00 values of type act_type, act_row bytes each, contiguous:
   F32, or the weight type's vec_dot_type already quantized with ggml's from_float (ggml's MUL_MAT_ID then uses
   them as they are, as it uses the rows it quantizes itself: the same bytes give the same products). Returns 0,
   or -1 (out of memory, a row size that is not ggml's, or ggml's compute failed) with a message in err. */
int fm_ggml_expert_product(fm_ggml_scratch *sc, int type, int64_t ne00, const void *w, size_t w_row, int64_t n_rows,
                           int act_type, const void *act, size_t act_row, int n_act, float *out, char *err,
                           size_t err_len);

void fm_ggml_scratch_free(fm_ggml_scratch *sc);

#endif
