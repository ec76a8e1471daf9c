/* LFU, the default cache policy: every expert (cached or not) has a use count, halved for all experts every 8
 * uses per expert on average so that it follows drifting routing. The expert with the lowest count is evicted
 * first (least recently used among equals), and a missed expert whose count is below the victim's is not
 * admitted: it is read, used and dropped.
 *
 * Why counts: decode visits the layers in a fixed cycle, so once a token's experts exceed the budget, LRU
 * evicts each expert just before its next use (0 % hits), while counts keep the often-routed experts resident
 * (routing is skewed: a tenth of the experts take most uses). tests/test_cache_policy.py replays traces. */
#include <stdint.h>
#include <stdlib.h>

#include "fm_policy.h"

typedef struct {
    uint8_t *count;         /* per key, saturating */
    size_t n;
    uint64_t uses, period;  /* all counts halve every `period` uses */
} lfu;

static void *lfu_create(size_t n_keys) {
    lfu *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->count = calloc(n_keys ? n_keys : 1, 1);
    if (!p->count) {
        free(p);
        return NULL;
    }
    p->n = n_keys;
    p->period = 8 * (uint64_t) n_keys;
    return p;
}

static void lfu_destroy(void *state) {
    lfu *p = state;
    if (p) free(p->count);
    free(p);
}

static void lfu_on_use(void *state, size_t key) {
    lfu *p = state;
    if (p->count[key] < 255) p->count[key]++;
    if (++p->uses >= p->period) {
        for (size_t i = 0; i < p->n; i++) p->count[i] >>= 1;
        p->uses = 0;
    }
}

static unsigned lfu_rank(const void *state, size_t key) {
    return ((const lfu *) state)->count[key];
}

static int lfu_admit(const void *state, size_t key, int prefetch, size_t victim_key) {
    const lfu *p = state;
    if (victim_key == (size_t) -1) return 1;
    /* a prefetch compares the count its coming use will give */
    return (unsigned) p->count[key] + (prefetch ? 1u : 0u) >= p->count[victim_key];
}

const fm_policy_ops fm_policy_lfu = {"lfu", 1, lfu_create, lfu_destroy, lfu_on_use, lfu_rank, lfu_admit, NULL};
