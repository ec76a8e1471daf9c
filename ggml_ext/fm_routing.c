/* Routing override for benchmarks (fm_routing.h).

Each tensor replaying the trace keeps its own cursor into the trace's rows (tokens): a MUL_MAT_ID over n tokens
takes rows cursor .. cursor + n - 1 (wrapping at the end of the trace) of its layer, then advances. The gate, up
and down tensors of a layer see the same batches in the same order, so their cursors stay together and they use
the same experts for a token, as with a real router. Only the streamed products see the override: llama.cpp's
own ops (the weights of the selected experts) keep the router's choice, which is fine for random-weight models,
whose outputs mean nothing, and is why this is a benchmark switch and never a default. */
#include "fm_routing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fm_routing {
    int32_t *ids;       /* [n_tok][n_layer][k] */
    int n_tok, n_layer, k;
    int n_tensors;
    int *layer;         /* per store tensor: trace layer, or -1 */
    int64_t *cursor;    /* per store tensor: next trace row */
};

fm_routing *fm_routing_new(const int32_t *ids, int n_tok, int n_layer, int k_used, int n_tensors, char *err,
                           size_t err_len) {
    if (!ids || n_tok <= 0 || n_layer <= 0 || k_used <= 0 || n_tensors <= 0 ||
        (size_t) n_tok > SIZE_MAX / sizeof(int32_t) / (size_t) n_layer / (size_t) k_used) {
        snprintf(err, err_len, "routing trace: bad shape [%d, %d, %d] for %d tensors", n_tok, n_layer, k_used,
                 n_tensors);
        return NULL;
    }
    const size_t n = (size_t) n_tok * (size_t) n_layer * (size_t) k_used;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < -1) {
            snprintf(err, err_len, "routing trace: expert id %d at %zu (ids are >= 0, or -1 for the router's)",
                     (int) ids[i], i);
            return NULL;
        }
    }
    fm_routing *r = calloc(1, sizeof *r);
    if (r) {
        r->ids = malloc(n * sizeof *r->ids);
        r->layer = malloc((size_t) n_tensors * sizeof *r->layer);
        r->cursor = calloc((size_t) n_tensors, sizeof *r->cursor);
    }
    if (!r || !r->ids || !r->layer || !r->cursor) {
        fm_routing_free(r);
        snprintf(err, err_len, "out of memory for the routing trace");
        return NULL;
    }
    memcpy(r->ids, ids, n * sizeof *r->ids);
    for (int t = 0; t < n_tensors; t++) r->layer[t] = -1;
    r->n_tok = n_tok;
    r->n_layer = n_layer;
    r->k = k_used;
    r->n_tensors = n_tensors;
    return r;
}

void fm_routing_free(fm_routing *r) {
    if (!r) return;
    free(r->ids);
    free(r->layer);
    free(r->cursor);
    free(r);
}

int fm_routing_set_layer(fm_routing *r, int tensor, int layer, int n_expert, char *err, size_t err_len) {
    if (tensor < 0 || tensor >= r->n_tensors || layer < 0 || layer >= r->n_layer) {
        snprintf(err, err_len, "routing trace: layer %d (of %d) for tensor %d (of %d)", layer, r->n_layer, tensor,
                 r->n_tensors);
        return -1;
    }
    for (int t = 0; t < r->n_tok; t++) {
        for (int k = 0; k < r->k; k++) {
            const int32_t e = r->ids[((size_t) t * (size_t) r->n_layer + (size_t) layer) * (size_t) r->k + (size_t) k];
            if (e >= n_expert) {
                snprintf(err, err_len, "routing trace: expert %d in layer %d, but the tensor has %d experts",
                         (int) e, layer, n_expert);
                return -1;
            }
        }
    }
    r->layer[tensor] = layer;
    r->cursor[tensor] = 0;
    return 0;
}

int fm_routing_active(const fm_routing *r, int tensor) {
    return r && tensor >= 0 && tensor < r->n_tensors && r->layer[tensor] >= 0;
}

int fm_routing_k(const fm_routing *r) {
    return r->k;
}

int fm_routing_expert(const fm_routing *r, int tensor, int tk, int k) {
    const int64_t row = (r->cursor[tensor] + tk) % r->n_tok;
    return (int) r->ids[((size_t) row * (size_t) r->n_layer + (size_t) r->layer[tensor]) * (size_t) r->k + (size_t) k];
}

void fm_routing_advance(fm_routing *r, int tensor, int n_tok) {
    r->cursor[tensor] = (r->cursor[tensor] + n_tok) % r->n_tok;
}
