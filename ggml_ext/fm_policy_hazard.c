/* hazard: keep the experts most likely to be used at their layer's next visit, with the probabilities learned
 * online from the routing itself.
 *
 * Decode visits the layers in a fixed cycle: every token acquires each expert tensor once (a prompt batch once
 * per micro-batch). So an expert's history is counted in visits of its own tensor, and what matters for keeping
 * it is whether the tensor's next visit selects it. Each expert (cached or not) has a state: its age n (visits
 * of its tensor since its last use, counted at the next visit) and its use count c at its last use (decayed by
 * half every HALF_LIFE visits: the frequency of that expert in that layer, i.e. the layer's own popularity). The
 * policy learns, over all tensors, the hazard h(n, c) = P(the visit selects the expert | its state), from every
 * visit: each visit of a tensor counts one exposure for every expert of that tensor seen before and one event
 * for each expert it selects; the estimate is made non-increasing in age by isotonic regression (a rarely seen old
 * cell does not outrank a younger one, and a noisy young cell does not cap the older ones: see refresh). Ranks are
 * h of the state at the next visit (evict the lowest; for the tensor being acquired, an expert this visit has not
 * used yet is ranked by h at this visit, since it may be among the experts still to come), and a missed expert is
 * cached only if its h after this use is above the victim's (otherwise read, used and dropped: a token whose
 * experts exceed the budget does not flush the hot ones). Among equal h, the expert whose
 * tensor comes back last goes first (the store's own tie order, least recently used, would evict the experts of the
 * tensors about to be acquired). Recency (h falls with n: most reuse is within a few tokens) and frequency (h grows
 * with c), and their trade-off per trace and per budget, come from the table, not from fixed weights; skewed
 * layers hold more of the budget because their experts have larger c.
 *
 * The visit pass costs O(experts seen in the tensor) per acquire, the rest O(1) per call. Ages and counts are
 * bucketed (AGE_EDGES, COUNT_EDGES); every cell counts the prior (1 event in 4 exposures), an unseen cell only it. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "fm_policy.h"

#define HALF_LIFE 32.0          /* visits of the expert's tensor */
#define PRIOR_EVENTS 1.0
#define PRIOR_EXPOSURES 4.0
#define H_SCALE 1048576.0      /* a rank is floor(h x 2^20) x 2^11 + the tie-break below 2^11 */
#define TIE_BITS 11
#define TIE_MAX 2047u

static const int64_t AGE_EDGES[] = {1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 64}; /* bucket i: n >= edge i */
static const double COUNT_EDGES[] = {1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 11.0, 16.0};
#define N_AGE ((int) (sizeof AGE_EDGES / sizeof AGE_EDGES[0]))
#define N_COUNT ((int) (sizeof COUNT_EDGES / sizeof COUNT_EDGES[0]))
#define AGE_TABLE 64           /* the last age edge: older ages are all in the last bucket */

typedef struct {
    size_t n;              /* keys */
    int32_t *tensor;       /* [key] the tensor that used it, -1 if never used */
    int64_t *last;         /* [key] visit number of its tensor at its last use */
    double *count;         /* [key] decayed use count just after its last use */
    uint8_t *bucket;       /* [key] count_bucket(count[key]) */
    int32_t *next;         /* [key] the next key of the same tensor (list of keys seen), -1 at the end */
    int32_t *head;         /* [tensor] first key seen of the tensor, -1 if none; tensors < n */
    int64_t *visits;       /* [tensor] acquires so far */
    int64_t *seen_at;      /* [tensor] the acquire number (over all tensors) of its last acquire, 0 before */
    int64_t acquires;      /* over all tensors */
    int64_t cycle;         /* tensors acquired so far: the acquires in one token */
    int cur;               /* the tensor of the acquire in progress, -1 before the first */
    double events[N_AGE][N_COUNT], exposures[N_AGE][N_COUNT];
    double h[N_AGE][N_COUNT]; /* the estimate, made non-increasing in age (see refresh) */
    uint8_t age_of[AGE_TABLE]; /* age_bucket of n < AGE_TABLE, so that a rank is a few loads */
} hazard;

static int age_bucket_of(int64_t n) {
    int b = 0;
    while (b + 1 < N_AGE && n >= AGE_EDGES[b + 1]) b++;
    return b;
}

/* h[.][k]: the non-increasing fit in age of the estimates (events + prior) / (exposures + prior) of count bucket k,
   each weighted by its exposures + prior: pool adjacent violators, the isotonic regression, which for these
   binomial counts (the prior counted as data in every cell) is the most likely non-increasing hazard. Adjacent cells that break the order are pooled into
   one estimate (the sum of their events over the sum of their exposures), so a young cell seen in few independent
   draws (a batch leaves many experts in one state at once: their outcomes at the next visits are one token's
   draws, counted many times) is outweighed by its neighbours instead of capping every older age, as a running
   minimum did. */
static void refresh(hazard *p, int k) {
    double ev[N_AGE], ex[N_AGE];
    int len[N_AGE], nb = 0;
    for (int a = 0; a < N_AGE; a++) {
        ev[nb] = p->events[a][k] + PRIOR_EVENTS;
        ex[nb] = p->exposures[a][k] + PRIOR_EXPOSURES;
        len[nb++] = 1;
        while (nb > 1 && ev[nb - 2] / ex[nb - 2] < ev[nb - 1] / ex[nb - 1]) {
            ev[nb - 2] += ev[nb - 1];
            ex[nb - 2] += ex[nb - 1];
            len[nb - 2] += len[nb - 1];
            nb--;
        }
    }
    for (int b = 0, a = 0; b < nb; b++) {
        const double e = ev[b] / ex[b], h = e < 1.0 ? e : 1.0;
        for (int i = 0; i < len[b]; i++) p->h[a++][k] = h;
    }
}

static void hazard_destroy(void *state) {
    hazard *p = state;
    if (!p) return;
    free(p->tensor);
    free(p->last);
    free(p->count);
    free(p->bucket);
    free(p->next);
    free(p->head);
    free(p->visits);
    free(p->seen_at);
    free(p);
}

static void *hazard_create(size_t n_keys) {
    if (n_keys == 0 || n_keys > INT32_MAX) return NULL;
    hazard *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n_keys;
    p->tensor = malloc(n_keys * sizeof *p->tensor);
    p->last = calloc(n_keys, sizeof *p->last);
    p->count = calloc(n_keys, sizeof *p->count);
    p->bucket = calloc(n_keys, sizeof *p->bucket);
    p->next = malloc(n_keys * sizeof *p->next);
    p->head = malloc(n_keys * sizeof *p->head);
    p->visits = calloc(n_keys, sizeof *p->visits);
    p->seen_at = calloc(n_keys, sizeof *p->seen_at);
    if (!p->seen_at || !p->tensor || !p->last || !p->count || !p->bucket || !p->next || !p->head || !p->visits) {
        hazard_destroy(p);
        return NULL;
    }
    for (size_t i = 0; i < n_keys; i++) p->tensor[i] = p->next[i] = p->head[i] = -1;
    p->cur = -1;
    for (int k = 0; k < N_COUNT; k++) refresh(p, k);
    for (int n = 0; n < AGE_TABLE; n++) p->age_of[n] = (uint8_t) age_bucket_of(n);
    return p;
}

static int age_bucket(const hazard *p, int64_t n) {
    return n < 0 ? 0 : n < AGE_TABLE ? p->age_of[n] : N_AGE - 1;
}

static int count_bucket(double c) {
    int b = 0;
    while (b + 1 < N_COUNT && c >= COUNT_EDGES[b + 1]) b++;
    return b;
}

/* P(a visit selects an expert of age n and count bucket k), from what was seen so far */
static double hazard_of(const hazard *p, int64_t n, int k) {
    return p->h[age_bucket(p, n)][k];
}

static void hazard_on_acquire(void *state, int tensor) {
    hazard *p = state;
    if (tensor < 0 || (size_t) tensor >= p->n) {
        p->cur = -1;
        return;
    }
    p->cur = tensor;
    p->acquires++;
    if (p->seen_at[tensor] == 0) p->cycle++;
    p->seen_at[tensor] = p->acquires;
    const int64_t v = ++p->visits[tensor];
    for (int32_t k = p->head[tensor]; k >= 0; k = p->next[k])
        p->exposures[age_bucket(p, v - p->last[k])][p->bucket[k]] += 1.0;
    for (int k = 0; k < N_COUNT; k++) refresh(p, k);
}

static void hazard_on_use(void *state, size_t key) {
    hazard *p = state;
    if (p->cur < 0 || key >= p->n) return;
    const int64_t v = p->visits[p->cur];
    if (p->tensor[key] < 0) {
        p->tensor[key] = p->cur;
        p->next[key] = p->head[p->cur];
        p->head[p->cur] = (int32_t) key;
        p->count[key] = 1.0;
        p->bucket[key] = (uint8_t) count_bucket(1.0);
    } else if (p->last[key] < v) {
        const int64_t n = v - p->last[key];
        const int k = p->bucket[key];
        p->events[age_bucket(p, n)][k] += 1.0;
        refresh(p, k);
        p->count[key] = p->count[key] * exp2(-(double) n / HALF_LIFE) + 1.0;
        p->bucket[key] = (uint8_t) count_bucket(p->count[key]);
    } /* a second use in the same visit (never from the store: a MUL_MAT_ID's experts are distinct) */
    p->last[key] = v;
}

/* h first; among equal h, the expert whose tensor comes back last goes first (as Belady would choose between equal
   chances): the tie-break grows as the acquires until its tensor's next acquire, d (1..cycle), fall. Without it
   the store's least-recently-used order evicts the experts of the tensors about to be acquired */
static unsigned rank_of(double h, int64_t d, int64_t cycle) {
    const int64_t dd = d < 1 ? 1 : d > cycle ? cycle : d;
    const unsigned tie = TIE_MAX - (unsigned) (dd * (int64_t) TIE_MAX / (cycle > 0 ? cycle : 1));
    return ((unsigned) (h * H_SCALE) << TIE_BITS) | tie; /* 0 <= h <= 1: below 2^31 */
}

/* h at the key's tensor's next visit, or at this one for a key of the tensor being acquired that this visit has
   not used yet (the store asks while it goes through the acquire's experts: later ones may be among them); 0 for a
   key never used */
static double next_visit_hazard(const hazard *p, size_t key) {
    if (key >= p->n || p->tensor[key] < 0) return 0.0;
    const int32_t t = p->tensor[key];
    const int64_t v = p->visits[t], n = t == p->cur && p->last[key] < v ? v - p->last[key] : v + 1 - p->last[key];
    return hazard_of(p, n, p->bucket[key]);
}

static unsigned hazard_rank(const void *state, size_t key) {
    const hazard *p = state;
    if (key >= p->n || p->tensor[key] < 0) return 0;
    const int32_t t = p->tensor[key];
    return rank_of(next_visit_hazard(p, key), p->seen_at[t] + p->cycle - p->acquires, p->cycle);
}

static int hazard_admit(const void *state, size_t key, int prefetch, size_t victim_key) {
    const hazard *p = state;
    if (victim_key == (size_t) -1) return 1;
    double h;
    if (prefetch) {
        /* the state the coming use (at the tensor's next visit) will give: age 1 at the visit after, count + 1 */
        if (key >= p->n) return 0;
        double c = 1.0;
        if (p->tensor[key] >= 0) {
            const int64_t n = p->visits[p->tensor[key]] + 1 - p->last[key];
            c = p->count[key] * exp2(-(double) n / HALF_LIFE) + 1.0;
        }
        h = hazard_of(p, 1, count_bucket(c));
    } else {
        h = next_visit_hazard(p, key);
    }
    /* its tensor comes back last (d = cycle: tie-break 0), so a tie keeps the cached one */
    return rank_of(h, p->cycle, p->cycle) > hazard_rank(state, victim_key);
}

const fm_policy_ops fm_policy_hazard = {"hazard", 1, hazard_create, hazard_destroy, hazard_on_use, hazard_rank,
                                        hazard_admit, hazard_on_acquire};
