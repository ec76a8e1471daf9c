/* A benchmark-only routing override: expert ids from a routing trace replayed in place of the router's choice in
   the streamed MUL_MAT_IDs (see fm_routing.c). Random-weight models route near uniformly; a real model's routing
   has reuse and skew that a cache can use, and this is how `flashmoe bench --routing` gives it to them. */
#ifndef FM_ROUTING_H
#define FM_ROUTING_H

#include <stddef.h>
#include <stdint.h>

typedef struct fm_routing fm_routing;

/* ids[t][l][k] (t < n_tok, l < n_layer, k < k_used): expert ids, -1 = the router's own choice for that slot; copied.
   n_tensors: the store's tensor count (fm_routing_set_layer's range). NULL with a message on bad input. */
fm_routing *fm_routing_new(const int32_t *ids, int n_tok, int n_layer, int k_used, int n_tensors, char *err,
                           size_t err_len);
void fm_routing_free(fm_routing *r);
/* Store tensor `tensor` (with n_expert experts) takes the trace's layer `layer`; -1 with a message if out of range
   or if the layer's ids do not fit n_expert. Tensors never set keep the router's choice. */
int fm_routing_set_layer(fm_routing *r, int tensor, int layer, int n_expert, char *err, size_t err_len);
/* Whether the tensor replays the trace, and with how many experts per token (its K) */
int fm_routing_active(const fm_routing *r, int tensor);
int fm_routing_k(const fm_routing *r);
/* The expert for token tk of the current call (0-based within the call) and slot k, or -1 (the router's) */
int fm_routing_expert(const fm_routing *r, int tensor, int tk, int k);
/* A call of the tensor consumed n_tok tokens: its next call starts at the following trace row (wrapping). */
void fm_routing_advance(fm_routing *r, int tensor, int n_tok);

#endif
