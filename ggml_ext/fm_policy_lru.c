/* LRU: the least recently used cached expert is evicted first, and every missed expert is cached (kept for
 * comparison with LFU: see fm_policy_lfu.c for why it loses on decode). All ranks are equal, so the store's
 * recency order decides. */
#include <stddef.h>

#include "fm_policy.h"

static void lru_on_use(void *state, size_t key) {
    (void) state;
    (void) key;
}

static unsigned lru_rank(const void *state, size_t key) {
    (void) state;
    (void) key;
    return 0;
}

static int lru_admit(const void *state, size_t key, int prefetch, size_t victim_key) {
    (void) state;
    (void) key;
    (void) prefetch;
    (void) victim_key;
    return 1;
}

/* no state: create and destroy are NULL */
const fm_policy_ops fm_policy_lru = {"lru", 1, NULL, NULL, lru_on_use, lru_rank, lru_admit, NULL};

/* OS: no cache of our own; every use reads the expert again and the OS page cache decides what stays in RAM. */
const fm_policy_ops fm_policy_os = {"os", 0, NULL, NULL, lru_on_use, lru_rank, lru_admit, NULL};
