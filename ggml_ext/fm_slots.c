/* The store's slot memory (see fm_slots.h). */
#include "fm_slots.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int fm_slots_init(fm_slots *t, int cap, size_t align) {
    memset(t, 0, sizeof *t);
    t->v = calloc((size_t) (cap > 0 ? cap : 1), sizeof *t->v);
    if (!t->v) return -1;
    t->cap = cap;
    t->free_head = -1;
    t->align = align;
    const long page = sysconf(_SC_PAGESIZE);
    t->may_map = page > 0 && align <= (size_t) page;
    return 0;
}

/* a buffer of need bytes; *mapped says how it was made. A mapping of its own where the alignment allows; the
   heap when not, or when the process may not map more (vm.max_map_count: a large cache of small experts) */
static void *buf_alloc(const fm_slots *t, size_t need, int *mapped) {
    if (t->may_map) {
        void *p = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            *mapped = 1;
            return p;
        }
    }
    *mapped = 0;
    void *p = NULL;
    return posix_memalign(&p, t->align, need) == 0 ? p : NULL;
}

static void buf_free(void *buf, size_t cap, int mapped) {
    if (!buf) return;
    if (mapped) {
        /* cannot fail for a whole mapping made by buf_alloc; nothing to do if it did */
        if (munmap(buf, cap) != 0) return;
    } else {
        free(buf);
    }
}

/* a free slot's kept buffer goes back */
static void drop_buf(fm_slots *t, fm_slot *sl) {
    buf_free(sl->buf, sl->cap, sl->mapped);
    t->free_bytes -= sl->cap;
    t->n_free_bufs--;
    sl->buf = NULL;
    sl->cap = 0;
}

void fm_slots_destroy(fm_slots *t) {
    for (int i = 0; i < t->n; i++) buf_free(t->v[i].buf, t->v[i].cap, t->v[i].mapped);
    free(t->v);
    memset(t, 0, sizeof *t);
}

/* a free buffer is reused only when it fits without waste (an expert of another tensor may be twice the size:
   its pages would stay resident beyond what the budget counts) */
static int fits(size_t cap, size_t need) {
    return cap >= need && cap <= need + need / 8;
}

/* a free slot whose buffer fits, else a free slot without a buffer (the kept buffers stay for the reads they
   fit), else the first free slot (its buffer dropped), else a new slot; -1 if none */
static int pick_free(fm_slots *t, size_t need) {
    int prev = -1, fit = -1, fit_prev = -1, bare = -1, bare_prev = -1;
    for (int i = t->free_head, n = 0; i >= 0 && n < 2 * FM_FREE_BUFS; prev = i, i = t->v[i].next_free, n++) {
        if (fits(t->v[i].cap, need)) {
            fit = i;
            fit_prev = prev;
            break;
        }
        if (!t->v[i].buf && bare < 0) {
            bare = i;
            bare_prev = prev;
        }
    }
    if (fit < 0 && bare >= 0) {
        fit = bare;
        fit_prev = bare_prev;
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
    if (sl->buf && !fits(sl->cap, need)) drop_buf(t, sl);
    if (sl->buf) {      /* reused: no longer a kept buffer */
        t->n_free_bufs--;
        t->free_bytes -= sl->cap;
    }
    return fit;
}

int fm_slots_take(fm_slots *t, size_t need) {
    int idx = pick_free(t, need);
    if (idx < 0) return -1;
    fm_slot *sl = &t->v[idx];
    if (!sl->buf) {
        int mapped = 0;
        void *p = buf_alloc(t, need, &mapped);
        if (!p) {
            sl->state = FM_SLOT_FREE;
            sl->next_free = t->free_head;
            t->free_head = idx;
            return -1;
        }
        sl->buf = p;
        sl->cap = need;
        sl->mapped = mapped;
    }
    sl->state = FM_SLOT_LOADING;
    sl->pins = 1;
    sl->data = NULL;
    sl->transient = 0;
    sl->cpos = -1;
    return idx;
}

void fm_slots_give_back(fm_slots *t, int idx, size_t keep_limit) {
    fm_slot *sl = &t->v[idx];
    sl->state = FM_SLOT_FREE;
    sl->transient = 0;
    if (sl->buf) {      /* kept, unless there are enough kept buffers and the budget has no room for it */
        const int room = t->n_free_bufs < FM_FREE_BUFS || t->free_bytes + sl->cap <= keep_limit;
        t->n_free_bufs++;
        t->free_bytes += sl->cap;
        if (!room) drop_buf(t, sl);
    }
    sl->next_free = t->free_head;
    t->free_head = idx;
}

void fm_slots_trim(fm_slots *t, size_t keep_limit) {
    for (int i = t->free_head; i >= 0 && t->free_bytes > keep_limit; i = t->v[i].next_free)
        if (t->v[i].buf) drop_buf(t, &t->v[i]);
}
