/* The expert store (see fm_store.h): the tensor table, the (tensor, expert) -> slot index, the budget, pins and
 * eviction, under one lock; reads go to fm_io, memory to fm_slots, keep-or-drop decisions to the policy. */
#define _GNU_SOURCE
#include "fm_store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fm_io.h"
#include "fm_policy.h"
#include "fm_slots.h"

typedef struct {
    fm_tensor_info info;
    int bound;         /* placed in a flashmoe buffer by the loader */
    int *held;         /* slots pinned by the last prefetch of this tensor, until its next acquire */
    int n_held;
} fm_tensor;

struct fm_store {
    fm_io *io;
    const fm_policy_ops *policy;
    void *policy_state;
    fm_tensor **tensors;     /* each at a fixed address */
    int n_tensors, cap_tensors, max_expert;
    fm_slots slots;
    int *slot_of;            /* [key] -> slot index or -1; key = tensor * max_expert + expert */
    int *cached;             /* slots kept after use (the eviction candidates), dense */
    int n_cached;
    uint64_t budget, used, clock;
    pthread_mutex_t mu;
    pthread_cond_t cv_done;  /* a read finished, or the store failed */
    int failed;
    char error[512];
    fm_stats stats;
};

enum { GET_USE = 1, GET_HOLD = 2 }; /* an acquire (counts a use), a prefetch (pins, counts nothing) */

/* ---- errors -------------------------------------------------------------------------------------------- */

/* caller holds mu */
static void set_error_locked(fm_store *s, const char *msg) {
    if (!s->failed) {
        s->failed = 1;
        snprintf(s->error, sizeof s->error, "%s", msg);
    }
    pthread_cond_broadcast(&s->cv_done);
}

void fm_store_set_error(fm_store *s, const char *msg) {
    pthread_mutex_lock(&s->mu);
    set_error_locked(s, msg);
    pthread_mutex_unlock(&s->mu);
}

int fm_store_error(fm_store *s, char *buf, size_t len) {
    pthread_mutex_lock(&s->mu);
    const int failed = s->failed;
    snprintf(buf, len, "%s", failed ? s->error : "");
    pthread_mutex_unlock(&s->mu);
    return failed;
}

/* ---- slots in the cache -------------------------------------------------------------------------------- */

static size_t key_of(const fm_store *s, int tensor, int expert) {
    return (size_t) tensor * (size_t) s->max_expert + (size_t) expert;
}

static size_t slot_key(const fm_store *s, const fm_slot *sl) {
    return key_of(s, sl->tensor, sl->expert);
}

/* caller holds mu: how many bytes of free buffers the budget leaves room for (kept for the next reads) */
static size_t keep_limit_locked(const fm_store *s) {
    return s->budget > s->used ? (size_t) (s->budget - s->used) : 0;
}

/* caller holds mu: the slot's expert leaves the cache and the slot (with its buffer) goes back */
static void free_slot_locked(fm_store *s, int idx) {
    fm_slot *sl = &s->slots.v[idx];
    s->slot_of[slot_key(s, sl)] = -1;
    if (sl->cpos >= 0) {
        int last = s->cached[--s->n_cached];
        s->cached[sl->cpos] = last;
        s->slots.v[last].cpos = sl->cpos;
        sl->cpos = -1;
    }
    s->used -= s->tensors[sl->tensor]->info.stride;
    fm_slots_give_back(&s->slots, idx, keep_limit_locked(s));
}

/* caller holds mu: the entry to evict next (unpinned, read or failed): lowest policy rank, then least recently
   used; -1 if none */
static int pick_victim_locked(const fm_store *s) {
    int victim = -1;
    unsigned best_rank = 0;
    uint64_t best_t = 0;
    for (int j = 0; j < s->n_cached; j++) {
        const int i = s->cached[j];
        const fm_slot *sl = &s->slots.v[i];
        if (sl->pins != 0 || (sl->state != FM_SLOT_READY && sl->state != FM_SLOT_ERROR)) continue;
        const unsigned rank = sl->state == FM_SLOT_READY ? s->policy->rank(s->policy_state, slot_key(s, sl)) : 0;
        if (victim < 0 || rank < best_rank || (rank == best_rank && sl->last_use < best_t)) {
            victim = i;
            best_rank = rank;
            best_t = sl->last_use;
        }
    }
    return victim;
}

/* caller holds mu. Frees entries in the policy's order until `need` more bytes fit the budget. */
static void evict_locked(fm_store *s, uint64_t need) {
    while (s->used + need > s->budget) {
        const int victim = pick_victim_locked(s);
        if (victim < 0) return; /* everything is pinned: the working set overflows the budget for now */
        free_slot_locked(s, victim);
    }
}

/* caller holds mu: drops one pin; a transient slot is freed with its last pin, or when its read completes */
static void unpin_locked(fm_store *s, int idx) {
    fm_slot *sl = &s->slots.v[idx];
    if (sl->pins > 0) sl->pins--;
    if (sl->transient && sl->pins == 0 && sl->state != FM_SLOT_LOADING) free_slot_locked(s, idx);
}

/* caller holds mu: unpins what the last prefetch of a tensor pinned */
static void drop_held_locked(fm_store *s, int tensor) {
    fm_tensor *t = s->tensors[tensor];
    for (int i = 0; i < t->n_held; i++) unpin_locked(s, t->held[i]);
    t->n_held = 0;
}

/* ---- reads ----------------------------------------------------------------------------------------------- */

/* fm_io's completion callback, on an I/O thread */
static void read_done(void *owner, int idx, const fm_io_result *r) {
    fm_store *s = owner;
    pthread_mutex_lock(&s->mu);
    fm_slot *sl = &s->slots.v[idx];
    const fm_tensor_info *t = &s->tensors[sl->tensor]->info;
    s->stats.reads++;
    s->stats.io_seconds += r->seconds;
    if (r->ok) {
        sl->data = r->data;
        sl->state = FM_SLOT_READY;
        s->stats.expert_bytes_read += t->stride;
        if (sl->transient && sl->pins == 0) free_slot_locked(s, idx);
    } else {
        char msg[512];
        if (r->short_read)
            snprintf(msg, sizeof msg, "%s is shorter than its tensor table says (expert %d of %s at byte %llu): "
                     "file truncated or replaced", fm_io_path(s->io, t->file), sl->expert, t->name,
                     (unsigned long long) r->at);
        else
            snprintf(msg, sizeof msg, "read error in %s (expert %d of %s): %s", fm_io_path(s->io, t->file), sl->expert,
                     t->name, r->detail);
        sl->state = FM_SLOT_ERROR;
        set_error_locked(s, msg);
    }
    pthread_cond_broadcast(&s->cv_done);
    pthread_mutex_unlock(&s->mu);
}

/* ---- acquiring one expert -------------------------------------------------------------------------------- */

/* caller holds mu: the key -> slot index and the list of cached slots, made at the first acquire (every key owns
   at most one slot and freed slots are reused, so this many slots is enough for good) */
static int init_tables_locked(fm_store *s) {
    const size_t n = (size_t) s->n_tensors * (size_t) s->max_expert;
    s->slot_of = malloc(n * sizeof *s->slot_of);
    s->cached = malloc(n * sizeof *s->cached);
    if (s->policy->create) s->policy_state = s->policy->create(n);
    if (!s->slot_of || !s->cached || (s->policy->create && !s->policy_state) ||
        fm_slots_init(&s->slots, (int) n, fm_io_buffer_align(s->io)) != 0) {
        free(s->slot_of);
        free(s->cached);
        s->slot_of = s->cached = NULL;
        return -1;
    }
    for (size_t i = 0; i < n; i++) s->slot_of[i] = -1;
    return 0;
}

/* caller holds mu: whether a missed expert of `stride` bytes is cached (making room for it) or transient */
static int admit_locked(fm_store *s, size_t key, uint64_t stride, int kind) {
    if (!s->policy->keeps) return 0;
    if (s->used + stride <= s->budget) return 1;
    /* one scan for both decisions: the victim is what admission compares with and what goes first */
    const int v = pick_victim_locked(s);
    if (v < 0) return 1; /* all pinned: over budget only for the node in progress */
    const fm_slot *vs = &s->slots.v[v];
    const size_t vkey = vs->state == FM_SLOT_READY ? slot_key(s, vs) : (size_t) -1;
    if (!s->policy->admit(s->policy_state, key, kind == GET_HOLD, vkey)) return 0;
    free_slot_locked(s, v);
    evict_locked(s, stride);
    return 1;
}

/* caller holds mu: a slot for a missed expert, its read queued; -1 when out of memory */
static int miss_locked(fm_store *s, int tensor, int expert, size_t key, int kind) {
    const fm_tensor_info *t = &s->tensors[tensor]->info;
    const int cache = admit_locked(s, key, t->stride, kind);
    const int idx = fm_slots_take(&s->slots, fm_io_buffer_size(s->io, (size_t) t->stride));
    if (idx < 0) return -1;
    fm_slot *sl = &s->slots.v[idx];
    sl->tensor = tensor;
    sl->expert = expert;
    sl->transient = !cache;
    sl->last_use = s->clock;
    if (cache) {
        sl->cpos = s->n_cached;
        s->cached[s->n_cached++] = idx;
    }
    s->slot_of[key] = idx;
    s->used += t->stride;
    if (s->used > s->stats.cache_peak_bytes) s->stats.cache_peak_bytes = s->used;
    if (kind == GET_USE) s->stats.cache_misses++;
    else s->stats.prefetches++;
    if (!cache && s->policy->keeps) s->stats.not_admitted++;
    uint64_t off = t->offset + (uint64_t) expert * t->stride;
    if (fm_io_submit(s->io, idx, t->file, off, (size_t) t->stride, sl->buf, sl->cap) != 0) {
        sl->pins = 0;
        free_slot_locked(s, idx);
        return -1;
    }
    return idx;
}

/* caller holds mu: a pinned slot holding (or about to hold) the expert; -1 when out of memory */
static int get_slot_locked(fm_store *s, int tensor, int expert, int kind) {
    if (!s->slot_of && init_tables_locked(s) != 0) return -1;
    const size_t key = key_of(s, tensor, expert);
    s->clock++;
    if (kind == GET_USE) {
        s->policy->on_use(s->policy_state, key);
        s->stats.expert_bytes_used += s->tensors[tensor]->info.stride;
    }
    const int idx = s->slot_of[key];
    if (idx < 0) return miss_locked(s, tensor, expert, key, kind);
    fm_slot *sl = &s->slots.v[idx];
    sl->pins++;
    sl->last_use = s->clock;
    if (kind == GET_USE) s->stats.cache_hits++;
    return idx;
}

/* ---- what MUL_MAT_ID calls ------------------------------------------------------------------------------- */

int fm_store_acquire(fm_store *s, int tensor, const int *experts, int n, int *out_slots) {
    pthread_mutex_lock(&s->mu);
    if (s->failed) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    if (!s->slot_of && init_tables_locked(s) != 0) {
        set_error_locked(s, "out of memory for the expert cache's tables");
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    if (s->policy->on_acquire) s->policy->on_acquire(s->policy_state, tensor);
    for (int i = 0; i < n; i++) {
        const int bad = experts[i] < 0 || experts[i] >= s->tensors[tensor]->info.n_expert;
        const int idx = bad ? -1 : get_slot_locked(s, tensor, experts[i], GET_USE);
        if (idx < 0) {
            set_error_locked(s, bad ? "router selected an expert index out of range"
                                    : "out of memory for expert buffers");
            for (int j = 0; j < i; j++) unpin_locked(s, out_slots[j]);
            pthread_mutex_unlock(&s->mu);
            return -1;
        }
        out_slots[i] = idx;
    }
    drop_held_locked(s, tensor); /* the acquire holds them now; prefetched experts not used are let go */
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void fm_store_prefetch(fm_store *s, int tensor, const int *experts, int n) {
    pthread_mutex_lock(&s->mu);
    fm_tensor *t = s->tensors[tensor];
    if (!t->held) t->held = malloc(2 * (size_t) t->info.n_expert * sizeof *t->held);
    if (!t->held) {
        pthread_mutex_unlock(&s->mu);
        return; /* no read-ahead; the acquire reads them */
    }
    /* pin the new set before letting the old one go, so an expert in both is not freed and read again */
    const int n_old = t->n_held;
    for (int i = 0; i < n && !s->failed && t->n_held < 2 * t->info.n_expert; i++) {
        if (experts[i] < 0 || experts[i] >= t->info.n_expert) continue;
        const int idx = get_slot_locked(s, tensor, experts[i], GET_HOLD);
        if (idx < 0) break; /* out of memory for buffers: the acquire will try again and report it */
        t->held[t->n_held++] = idx;
    }
    const int n_new = t->n_held - n_old;
    t->n_held = n_old;
    drop_held_locked(s, tensor);
    memmove(t->held, t->held + n_old, (size_t) n_new * sizeof *t->held);
    t->n_held = n_new;
    evict_locked(s, 0);
    pthread_mutex_unlock(&s->mu);
}

int fm_store_wait_any(fm_store *s, const int *slots, const char *done, int n) {
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->failed) {
            pthread_mutex_unlock(&s->mu);
            return -1;
        }
        for (int i = 0; i < n; i++) {
            if (!done[i] && s->slots.v[slots[i]].state == FM_SLOT_READY) {
                pthread_mutex_unlock(&s->mu);
                return i;
            }
        }
        pthread_cond_wait(&s->cv_done, &s->mu);
    }
}

int fm_store_take_ready(fm_store *s, const int *slots, char *done, int n, int *order) {
    pthread_mutex_lock(&s->mu);
    int k = s->failed ? -1 : 0;
    for (int i = 0; k >= 0 && i < n; i++) {
        if (!done[i] && s->slots.v[slots[i]].state == FM_SLOT_READY) {
            done[i] = 1;
            order[k++] = i;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return k;
}

void fm_store_release(fm_store *s, const int *slots, int n) {
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < n; i++) unpin_locked(s, slots[i]);
    evict_locked(s, 0);
    pthread_mutex_unlock(&s->mu);
}

const void *fm_store_data(const fm_store *s, int slot) {
    return s->slots.v[slot].data;
}

void fm_store_set_budget(fm_store *s, uint64_t budget) {
    pthread_mutex_lock(&s->mu);
    s->budget = budget;
    evict_locked(s, 0);
    fm_slots_trim(&s->slots, keep_limit_locked(s));
    pthread_mutex_unlock(&s->mu);
}

int fm_store_wave(const fm_store *s, int tensor, int n) {
    const uint64_t stride = s->tensors[tensor]->info.stride;
    if (!s->policy->keeps || s->budget == 0) return n;
    const uint64_t fit = s->budget / (stride ? stride : 1);
    return fit < 1 ? 1 : (uint64_t) n > fit ? (int) fit : n;
}

int fm_store_check_file(fm_store *s) {
    char why[512];
    if (fm_io_check_file(s->io, why, sizeof why) == 0) return 0;
    fm_store_set_error(s, why);
    return -1;
}

int fm_store_verify_file(fm_store *s, int file, uint64_t dev, uint64_t ino, uint64_t size, int64_t mtime_ns) {
    char why[512];
    if (fm_io_verify_file(s->io, file, dev, ino, size, mtime_ns, why, sizeof why) == 0) return 0;
    fm_store_set_error(s, why);
    return -1;
}

int fm_store_read_weights(fm_store *s, int tensor, uint64_t offset, void *dst, size_t len) {
    const fm_tensor_info *t = &s->tensors[tensor]->info;
    if (offset > t->stride * (uint64_t) t->n_expert || len > t->stride * (uint64_t) t->n_expert - offset ||
        fm_io_read_now(s->io, t->file, t->offset + offset, dst, len) != 0) {
        memset(dst, 0, len);
        fm_store_set_error(s, "read error while reading expert weights back");
        return -1;
    }
    return 0;
}

/* ---- stats and test hooks ---------------------------------------------------------------------------- */

void fm_store_add_compute(fm_store *s, double seconds, double io_wait_seconds, double serial_seconds,
                          double region_thread_seconds, double busy_thread_seconds) {
    pthread_mutex_lock(&s->mu);
    s->stats.region_thread_seconds += region_thread_seconds;
    s->stats.busy_thread_seconds += busy_thread_seconds;
    s->stats.mul_mat_id_calls++;
    s->stats.compute_seconds += seconds;
    s->stats.serial_seconds += serial_seconds;
    s->stats.io_wait_seconds += io_wait_seconds;
    pthread_mutex_unlock(&s->mu);
}

void fm_store_get_stats(fm_store *s, fm_stats *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    out->cache_bytes = s->used;
    out->kept_buffer_bytes = s->slots.free_bytes;
    out->buffers_made = s->slots.made;
    pthread_mutex_unlock(&s->mu);
}

void fm_store_inject_read_error(fm_store *s, int nth_read) {
    fm_io_inject_fault(s->io, nth_read);
}

/* ---- the tensor table ------------------------------------------------------------------------------------ */

fm_store *fm_store_open(const char *const *paths, int n_files, uint64_t budget, int io_threads, int mode, int direct,
                        char *err, size_t err_len) {
    const fm_policy_ops *policy = fm_policy_get(mode);
    if (!policy) {
        snprintf(err, err_len, "bad cache mode %d", mode);
        return NULL;
    }
    fm_store *s = calloc(1, sizeof *s);
    if (!s || pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    pthread_cond_init(&s->cv_done, NULL);
    s->policy = policy;
    s->budget = budget;
    s->io = fm_io_open(paths, n_files, io_threads, direct, read_done, s, err, err_len);
    if (!s->io) {
        fm_store_close(s);
        return NULL;
    }
    return s;
}

void fm_store_close(fm_store *s) {
    if (!s) return;
    fm_io_close(s->io); /* joins the readers first: a read in flight reports to read_done */
    fm_slots_destroy(&s->slots);
    if (s->policy->destroy && s->policy_state) s->policy->destroy(s->policy_state);
    free(s->slot_of);
    free(s->cached);
    for (int i = 0; i < s->n_tensors; i++) {
        free(s->tensors[i]->held);
        free(s->tensors[i]);
    }
    free(s->tensors);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv_done);
    free(s);
}

int fm_store_find(const fm_store *s, const char *name) {
    for (int i = 0; i < s->n_tensors; i++) {
        if (strcmp(s->tensors[i]->info.name, name) == 0) return i;
    }
    return -1;
}

int fm_store_n_tensors(const fm_store *s) {
    return s->n_tensors;
}

const fm_tensor_info *fm_store_tensor(const fm_store *s, int idx) {
    return idx >= 0 && idx < s->n_tensors ? &s->tensors[idx]->info : NULL;
}

static int check_new_tensor(const fm_store *s, const char *name, int file, uint64_t offset, uint64_t stride,
                            int n_expert, int64_t ne0, int64_t ne1, char *err, size_t err_len) {
    if (strlen(name) >= sizeof s->tensors[0]->info.name || n_expert <= 0 || n_expert > 65536 || stride == 0 ||
        ne0 <= 0 || ne1 <= 0 || file < 0 || file >= fm_io_n_files(s->io)) {
        snprintf(err, err_len, "bad expert tensor %s", name);
        return -1;
    }
    /* bounds from the file are never trusted: the whole tensor must lie inside its file */
    const uint64_t size = fm_io_file_size(s->io, file);
    if (offset > size || stride > (size - offset) / (uint64_t) n_expert) {
        snprintf(err, err_len, "%s: tensor %s (offset %llu, %d x %llu bytes) extends past the end of the file "
                 "(%llu bytes): truncated or corrupt", fm_io_path(s->io, file), name, (unsigned long long) offset,
                 n_expert, (unsigned long long) stride, (unsigned long long) size);
        return -1;
    }
    if (fm_store_find(s, name) >= 0) {
        snprintf(err, err_len, "expert tensor %s registered twice", name);
        return -1;
    }
    if (s->slot_of) {
        snprintf(err, err_len, "tensors must be registered before use");
        return -1;
    }
    return 0;
}

int fm_store_add_tensor(fm_store *s, const char *name, int file, uint64_t offset, uint64_t stride, int n_expert,
                        int type, int64_t ne0, int64_t ne1, char *err, size_t err_len) {
    pthread_mutex_lock(&s->mu);
    int idx = -1;
    if (check_new_tensor(s, name, file, offset, stride, n_expert, ne0, ne1, err, err_len) != 0) goto out;
    if (s->n_tensors == s->cap_tensors) {
        const int cap = s->cap_tensors ? 2 * s->cap_tensors : 64;
        fm_tensor **nt = realloc(s->tensors, (size_t) cap * sizeof *nt);
        if (!nt) goto oom;
        s->tensors = nt;
        s->cap_tensors = cap;
    }
    fm_tensor *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    snprintf(t->info.name, sizeof t->info.name, "%s", name);
    t->info.file = file;
    t->info.offset = offset;
    t->info.stride = stride;
    t->info.n_expert = n_expert;
    t->info.type = type;
    t->info.ne0 = ne0;
    t->info.ne1 = ne1;
    t->info.partner = -1;
    t->info.index = idx = s->n_tensors;
    s->tensors[s->n_tensors++] = t;
    if (n_expert > s->max_expert) s->max_expert = n_expert;
    goto out;
oom:
    snprintf(err, err_len, "out of memory");
out:
    pthread_mutex_unlock(&s->mu);
    return idx;
}

int fm_store_set_partner(fm_store *s, int a, int b) {
    if (a < 0 || b < 0 || a >= s->n_tensors || b >= s->n_tensors ||
        s->tensors[a]->info.n_expert != s->tensors[b]->info.n_expert)
        return -1;
    s->tensors[a]->info.partner = b;
    return 0;
}

void fm_store_bind(fm_store *s, int idx) {
    s->tensors[idx]->bound = 1;
}

const char *fm_store_unbound(const fm_store *s) {
    for (int i = 0; i < s->n_tensors; i++) {
        if (!s->tensors[i]->bound) return s->tensors[i]->info.name;
    }
    return NULL;
}
