/* One expert's product through ggml's own MUL_MAT_ID (see fm_ggml_mmid.h). */
#include "fm_ggml_mmid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fm_ggml.h"

/* the graph holds the node and its three sources (its hash set must have room for all four) */
#define FM_GRAPH_SIZE 8

static int grow(void **p, size_t *cap, size_t need) {
    if (*cap >= need) return 0;
    void *q = realloc(*p, need);
    if (!q) return -1;
    *p = q;
    *cap = need;
    return 0;
}

int fm_ggml_expert_product(fm_ggml_scratch *sc, int type, int64_t ne00, const void *w, size_t w_row, int64_t n_rows,
                           int act_type, const void *act, size_t act_row, int n_act, float *out, char *err,
                           size_t err_len) {
    if (n_rows <= 0 || n_act <= 0) return 0;
    const size_t ctx_size = 5 * fm_g.ggml_tensor_overhead() + fm_g.ggml_graph_overhead_custom(FM_GRAPH_SIZE, false) + 1024;
    size_t ids_bytes = sc->ids_cap;
    if (grow(&sc->ctx_mem, &sc->ctx_size, ctx_size) != 0 ||
        grow((void **) &sc->ids, &ids_bytes, (size_t) n_act * sizeof(int32_t)) != 0) {
        snprintf(err, err_len, "out of memory in MUL_MAT_ID");
        return -1;
    }
    if (ids_bytes > sc->ids_cap) memset(sc->ids, 0, ids_bytes);
    sc->ids_cap = ids_bytes;
    struct ggml_init_params ip = {sc->ctx_size, sc->ctx_mem, true};
    struct ggml_context *ctx = fm_g.ggml_init(ip);
    if (!ctx) {
        snprintf(err, err_len, "ggml_init failed in MUL_MAT_ID");
        return -1;
    }
    struct ggml_tensor *as = fm_g.ggml_new_tensor_3d(ctx, (enum ggml_type) type, ne00, n_rows, 1);
    struct ggml_tensor *b = fm_g.ggml_new_tensor_3d(ctx, (enum ggml_type) act_type, ne00, 1, n_act);
    struct ggml_tensor *ids = fm_g.ggml_new_tensor_2d(ctx, GGML_TYPE_I32, 1, n_act);
    as->data = (void *) (uintptr_t) w;
    b->data = (void *) (uintptr_t) act;
    ids->data = sc->ids;
    int rc = -1;
    if (as->nb[1] != w_row) {
        snprintf(err, err_len, "MUL_MAT_ID: %s rows of %lld values are %zu bytes, not %zu",
                 fm_g.ggml_type_name((enum ggml_type) type), (long long) ne00, (size_t) as->nb[1], w_row);
        goto out;
    }
    if (b->nb[1] != act_row) {
        snprintf(err, err_len, "MUL_MAT_ID: %s activation rows of %lld values are %zu bytes, not %zu",
                 fm_g.ggml_type_name((enum ggml_type) act_type), (long long) ne00, (size_t) b->nb[1], act_row);
        goto out;
    }
    struct ggml_tensor *dst = fm_g.ggml_mul_mat_id(ctx, as, b, ids);
    dst->data = out;
    struct ggml_cgraph *graph = fm_g.ggml_new_graph_custom(ctx, FM_GRAPH_SIZE, false);
    fm_g.ggml_build_forward_expand(graph, dst);
    struct ggml_cplan plan = fm_g.ggml_graph_plan(graph, 1, NULL);
    if (plan.work_size && grow(&sc->work, &sc->work_cap, plan.work_size) != 0) {
        snprintf(err, err_len, "out of memory in MUL_MAT_ID (%zu bytes of ggml work buffer)", plan.work_size);
        goto out;
    }
    plan.work_data = sc->work;
    enum ggml_status st = fm_g.ggml_graph_compute(graph, &plan);
    if (st != GGML_STATUS_SUCCESS) {
        snprintf(err, err_len, "ggml's MUL_MAT_ID failed (status %d)", (int) st);
        goto out;
    }
    rc = 0;
out:
    fm_g.ggml_free(ctx);
    return rc;
}

void fm_ggml_scratch_free(fm_ggml_scratch *sc) {
    free(sc->ctx_mem);
    free(sc->work);
    free(sc->ids);
    memset(sc, 0, sizeof *sc);
}
