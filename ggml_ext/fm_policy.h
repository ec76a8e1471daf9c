/* Cache policies: which cached expert the store evicts first, and whether a missed expert is cached at all.
 *
 * The store keys every (tensor, expert) pair as tensor * max_experts + expert, tells the policy each use, and
 * asks it two things: the rank of a key (evict the lowest rank first; among equal ranks the least recently
 * used) and, when the cache is full, whether a missed expert should displace the eviction victim (if not, it is
 * read into a transient buffer, used and dropped). A policy is one file implementing these operations on a
 * private state (which may count tokens: on_acquire); fm_policy_get maps the cache modes of fm_types.h to them. */
#ifndef FM_POLICY_H
#define FM_POLICY_H

#include <stddef.h>

typedef struct {
    const char *name;
    int keeps;                                   /* 0: nothing is cached; every expert is read for each use */
    void *(*create)(size_t n_keys);              /* private state, NULL on failure (create NULL: no state) */
    void (*destroy)(void *state);                /* NULL if create is */
    void (*on_use)(void *state, size_t key);     /* an acquire uses the expert (hit or miss) */
    unsigned (*rank)(const void *state, size_t key);
    /* cache key, displacing victim_key (a cached expert ready to evict; (size_t)-1 if none is)? prefetch: the
       use has not been counted yet */
    int (*admit)(const void *state, size_t key, int prefetch, size_t victim_key);
    /* a MUL_MAT_ID acquires experts of `tensor` (its uses follow); NULL if the policy does not count tokens */
    void (*on_acquire)(void *state, int tensor);
} fm_policy_ops;

/* the policy of an fm_cache_mode, or NULL */
const fm_policy_ops *fm_policy_get(int mode);

extern const fm_policy_ops fm_policy_lfu, fm_policy_lru, fm_policy_os, fm_policy_lrfu, fm_policy_hazard;

#endif
