/* LRFU: recency and frequency in one score per expert, in token time (Lee et al., "LRFU: a spectrum of policies
 * that subsumes the least recently used and least frequently used policies", IEEE Trans. Computers 50(12), 2001).
 *
 * Every expert (cached or not) has a score: the sum over its past uses of 2^(-(age in tokens) / HALF_LIFE). An
 * expert used in the last token or two scores about 1 or more (recency), one used in most of the last tens of
 * tokens scores up to HALF_LIFE / ln 2 (frequency); a half-life of a few tokens follows routing that drifts with
 * the topic. The lowest score is evicted first (least recently used among equals), and a missed expert whose
 * score, this use included, is not above the victim's is read, used and dropped, so that a token whose experts exceed
 * the budget does not flush the hot ones (plain LRU falls to 0 % hits there).
 *
 * What a general cache does not know and this uses: decode visits the layers in a fixed cycle, so time is counted
 * in tokens (a token ends when the first tensor ever acquired is acquired again: every token visits it), not in
 * uses, which come in bursts of K per layer; each (layer, tensor) keeps its own experts' scores, so a layer with
 * skewed routing holds more of the budget than a near-uniform one; reuse is mostly within a few tokens (median
 * distance about 2 tokens on real traces, ../shared/notes/prior-art.md), which the recency term serves.
 *
 * Scores are kept as g = log2(score) + t / HALF_LIFE at the last use t, which does not change as time passes;
 * the score now is 2^(g - now / HALF_LIFE), and ranks compare g (scaled, relative to now). */
#include <math.h>
#include <stdlib.h>

#include "fm_policy.h"

#define HALF_LIFE 8.0          /* tokens */
#define NEVER (-1e300)         /* g of an expert never used */
#define RANK_SCALE 1024.0      /* rank units per doubling of the score */
#define RANK_FLOOR 96.0        /* log2 scores below -RANK_FLOOR rank 0 (older than 96 half-lives) */

typedef struct {
    double *g;        /* per key */
    size_t n;
    int first_tensor; /* the tensor whose acquire starts a token; -1 until the first acquire */
    double now;       /* tokens since the first */
} lrfu;

static void *lrfu_create(size_t n_keys) {
    lrfu *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->g = malloc((n_keys ? n_keys : 1) * sizeof *p->g);
    if (!p->g) {
        free(p);
        return NULL;
    }
    for (size_t i = 0; i < n_keys; i++) p->g[i] = NEVER;
    p->n = n_keys;
    p->first_tensor = -1;
    return p;
}

static void lrfu_destroy(void *state) {
    lrfu *p = state;
    if (p) free(p->g);
    free(p);
}

static void lrfu_on_acquire(void *state, int tensor) {
    lrfu *p = state;
    if (p->first_tensor < 0) p->first_tensor = tensor;
    else if (tensor == p->first_tensor) p->now += 1.0;
}

/* log2 of the key's score now, with `extra` uses added now */
static double log_score(const lrfu *p, size_t key, double extra) {
    const double x = p->g[key] - p->now / HALF_LIFE;
    if (extra == 0.0) return x;
    return log2(exp2(x) + extra); /* exp2 of a NEVER score is 0 */
}

static void lrfu_on_use(void *state, size_t key) {
    lrfu *p = state;
    p->g[key] = log_score(p, key, 1.0) + p->now / HALF_LIFE;
}

static unsigned rank_of(double log2_score) {
    const double r = (log2_score + RANK_FLOOR) * RANK_SCALE;
    if (!(r > 0.0)) return 0;
    return r >= 4294967295.0 ? 4294967295u : (unsigned) r;
}

static unsigned lrfu_rank(const void *state, size_t key) {
    return rank_of(log_score(state, key, 0.0));
}

static int lrfu_admit(const void *state, size_t key, int prefetch, size_t victim_key) {
    const lrfu *p = state;
    if (victim_key == (size_t) -1) return 1;
    /* a prefetch compares the score its coming use will give; a tie keeps the cached one (two experts with the
       same history, used in turn, would otherwise displace each other at every use) */
    return rank_of(log_score(p, key, prefetch ? 1.0 : 0.0)) > rank_of(log_score(p, victim_key, 0.0));
}

const fm_policy_ops fm_policy_lrfu = {"lrfu", 1, lrfu_create, lrfu_destroy, lrfu_on_use, lrfu_rank, lrfu_admit,
                                      lrfu_on_acquire};
