/* The store's slot memory (see fm_slots.h). */
#include "fm_slots.h"

#include <stdlib.h>
#include <string.h>

#define FM_FREE_BUFS 32 /* free slots that keep their buffer */

int fm_slots_init(fm_slots *t, int cap, size_t align) {
    memset(t, 0, sizeof *t);
    t->v = calloc((size_t) (cap > 0 ? cap : 1), sizeof *t->v);
    if (!t->v) return -1;
    t->cap = cap;
    t->free_head = -1;
    t->align = align;
    return 0;
}

void fm_slots_destroy(fm_slots *t) {
    for (int i = 0; i < t->n; i++) free(t->v[i].buf);
    free(t->v);
    memset(t, 0, sizeof *t);
}

/* a free buffer is reused only when it fits without waste (an expert of another tensor may be twice the size:
   its pages would stay resident beyond what the budget counts) */
static int fits(size_t cap, size_t need) {
    return cap >= need && cap <= need + need / 8;
}

/* a free slot whose buffer fits, else the first free slot (its buffer dropped), else a new slot; -1 if none */
static int pick_free(fm_slots *t, size_t need) {
    int prev = -1, fit = -1, fit_prev = -1;
    for (int i = t->free_head, n = 0; i >= 0 && n < 2 * FM_FREE_BUFS; prev = i, i = t->v[i].next_free, n++) {
        if (fits(t->v[i].cap, need)) {
            fit = i;
            fit_prev = prev;
            break;
        }
    }
    if (fit < 0 && t->free_head >= 0) fit = t->free_head;
    if (fit < 0) {
        if (t->n == t->cap) return -1; /* cannot happen: one slot per key at most */
        memset(&t->v[t->n], 0, sizeof t->v[t->n]);
        return t->n++;
    }
    if (fit_prev >= 0) t->v[fit_prev].next_free = t->v[fit].next_free;
    else t->free_head = t->v[fit].next_free;
    fm_slot *sl = &t->v[fit];
    if (sl->buf) t->n_free_bufs--;
    if (!fits(sl->cap, need)) {
        free(sl->buf);
        sl->buf = NULL;
        sl->cap = 0;
    }
    return fit;
}

int fm_slots_take(fm_slots *t, size_t need) {
    int idx = pick_free(t, need);
    if (idx < 0) return -1;
    fm_slot *sl = &t->v[idx];
    if (!sl->buf) {
        void *p = NULL;
        if (posix_memalign(&p, t->align, need) != 0) {
            sl->state = FM_SLOT_FREE;
            sl->next_free = t->free_head;
            t->free_head = idx;
            return -1;
        }
        sl->buf = p;
        sl->cap = need;
    }
    sl->state = FM_SLOT_LOADING;
    sl->pins = 1;
    sl->data = NULL;
    sl->transient = 0;
    sl->cpos = -1;
    return idx;
}

void fm_slots_give_back(fm_slots *t, int idx) {
    fm_slot *sl = &t->v[idx];
    sl->state = FM_SLOT_FREE;
    sl->transient = 0;
    if (sl->buf && t->n_free_bufs >= FM_FREE_BUFS) {
        free(sl->buf);
        sl->buf = NULL;
        sl->cap = 0;
    }
    if (sl->buf) t->n_free_bufs++;
    sl->next_free = t->free_head;
    t->free_head = idx;
}
