/* Expert store: positional reads on an I/O thread pool into a budgeted cache (see fm_store.h). */
#define _GNU_SOURCE
#include "fm_store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FM_DIRECT_ALIGN 4096u
#define FM_FREE_BUFS 32 /* free slots that keep their buffer */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

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

/* Reads one expert into buf (cap bytes); *data_off receives where its bytes start within buf. Runs without the
 * lock, so it does not touch the slot (only the buffer the slot lent it). */
static int read_expert(fm_store *s, const fm_tensor *t, char *buf, size_t cap, int expert, size_t *data_off,
                       char *err, size_t err_len) {
    uint64_t off = t->offset + (uint64_t) expert * t->stride;
    size_t len = (size_t) t->stride;
    int fd = s->fd;
    char *dst = buf;
    uint64_t start = off;
    size_t total = len;
    if (s->direct) {
        fd = s->fd_direct;
        start = off & ~(uint64_t) (FM_DIRECT_ALIGN - 1);
        total = (size_t) (((off + len - start) + FM_DIRECT_ALIGN - 1) & ~(uint64_t) (FM_DIRECT_ALIGN - 1));
    }
    if (total > cap) {
        snprintf(err, err_len, "internal error: slot too small");
        return -1;
    }
    size_t done = 0;
    while (done < total) {
        ssize_t n = pread(fd, dst + done, total - done, (off_t) (start + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            snprintf(err, err_len, "read error in %s (expert %d of %s): %s", s->path, expert, t->name, strerror(errno));
            return -1;
        }
        if (n == 0) {
            if (s->direct && start + done >= off + len) break; /* O_DIRECT tail past EOF */
            snprintf(err, err_len, "%s is shorter than its tensor table says (expert %d of %s at byte %llu): "
                     "file truncated or replaced", s->path, expert, t->name, (unsigned long long) (start + done));
            return -1;
        }
        done += (size_t) n;
    }
    *data_off = (size_t) (off - start);
    return 0;
}

static size_t key_of(const fm_store *s, const fm_slot *sl) {
    return (size_t) sl->tensor * (size_t) s->max_expert + (size_t) sl->expert;
}

/* caller holds mu: the slot's expert leaves the cache and the slot (with its buffer) goes to the free list */
static void free_slot_locked(fm_store *s, int idx) {
    fm_slot *sl = &s->slots[idx];
    s->slot_of[key_of(s, sl)] = -1;
    if (sl->cpos >= 0) {
        int last = s->cached[--s->n_cached];
        s->cached[sl->cpos] = last;
        s->slots[last].cpos = sl->cpos;
        sl->cpos = -1;
    }
    s->used -= s->tensors[sl->tensor].stride;
    sl->state = FM_SLOT_FREE;
    sl->transient = 0;
    /* keep a few buffers for the next reads; beyond that, memory outside the budget goes back */
    if (sl->buf && s->n_free_bufs >= FM_FREE_BUFS) {
        free(sl->buf);
        sl->buf = NULL;
        sl->cap = 0;
    }
    if (sl->buf) s->n_free_bufs++;
    sl->next_free = s->free_head;
    s->free_head = idx;
}

/* caller holds mu: the entry the policy would evict next (unpinned, read or failed), or -1 */
static int pick_victim_locked(const fm_store *s) {
    int victim = -1;
    unsigned best_f = 0;
    uint64_t best_t = 0;
    for (int j = 0; j < s->n_cached; j++) {
        int i = s->cached[j];
        const fm_slot *sl = &s->slots[i];
        if (sl->pins != 0 || (sl->state != FM_SLOT_READY && sl->state != FM_SLOT_ERROR)) continue;
        unsigned f = s->mode == FM_CACHE_LFU && sl->state == FM_SLOT_READY ? s->freq[key_of(s, sl)] : 0;
        if (victim < 0 || f < best_f || (f == best_f && sl->last_use < best_t)) {
            victim = i;
            best_f = f;
            best_t = sl->last_use;
        }
    }
    return victim;
}

/* caller holds mu: drops one pin; a transient slot (not admitted, or any slot in OS mode) is freed with its last
   pin, or by io_main when its read completes */
static void unpin_locked(fm_store *s, int idx) {
    fm_slot *sl = &s->slots[idx];
    if (sl->pins > 0) sl->pins--;
    if (sl->transient && sl->pins == 0 && sl->state != FM_SLOT_LOADING) free_slot_locked(s, idx);
}

/* caller holds mu: counts one use of key (LFU), halving every count once per age_period uses */
static void count_use_locked(fm_store *s, size_t key) {
    if (s->freq[key] < 255) s->freq[key]++;
    if (++s->accesses >= s->age_period) {
        size_t n = (size_t) s->n_tensors * (size_t) s->max_expert;
        for (size_t i = 0; i < n; i++) s->freq[i] >>= 1;
        s->accesses = 0;
    }
}

static void *io_main(void *arg) {
    fm_store *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stop && s->q_len == 0) pthread_cond_wait(&s->cv_job, &s->mu);
        if (s->stop) break;
        int idx = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % s->q_cap;
        s->q_len--;
        fm_slot *sl = &s->slots[idx];
        const fm_tensor *t = &s->tensors[sl->tensor];
        int expert = sl->expert;
        char *buf = sl->buf;
        size_t cap = sl->cap;
        s->stats.reads++;
        int fault = s->fault_after_reads > 0 && s->stats.reads >= (uint64_t) s->fault_after_reads;
        pthread_mutex_unlock(&s->mu);
        /* the buffer is owned by this read while the slot is LOADING; the slot array itself may be
         * touched only under the lock */
        char err[512] = "";
        size_t data_off = 0;
        double t0 = now_s();
        int rc = fault ? -1 : read_expert(s, t, buf, cap, expert, &data_off, err, sizeof err);
        if (fault) snprintf(err, sizeof err, "read error in %s (expert %d of %s): %s (injected)", s->path, expert,
                            t->name, strerror(EIO));
        double dt = now_s() - t0;
        pthread_mutex_lock(&s->mu);
        sl = &s->slots[idx];
        s->stats.io_seconds += dt;
        if (rc == 0) {
            sl->data = buf + data_off;
            sl->state = FM_SLOT_READY;
            s->stats.expert_bytes_read += t->stride;
            if (sl->transient && sl->pins == 0) free_slot_locked(s, idx);
        } else {
            sl->state = FM_SLOT_ERROR;
            set_error_locked(s, err);
        }
        pthread_cond_broadcast(&s->cv_done);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int fm_store_open(fm_store *s, const char *path, uint64_t budget, int io_threads, int mode, int direct,
                  char *err, size_t err_len) {
    memset(s, 0, sizeof *s);
    s->fd = s->fd_direct = -1;
    if (snprintf(s->path, sizeof s->path, "%s", path) >= (int) sizeof s->path) {
        snprintf(err, err_len, "path too long");
        return -1;
    }
    if (io_threads < 1 || io_threads > 256 || (mode != FM_CACHE_LRU && mode != FM_CACHE_OS && mode != FM_CACHE_LFU)) {
        snprintf(err, err_len, "bad store options (io_threads %d, mode %d)", io_threads, mode);
        return -1;
    }
    s->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0 || fstat(s->fd, &s->st0) != 0) {
        snprintf(err, err_len, "cannot open %s: %s", path, strerror(errno));
        if (s->fd >= 0) close(s->fd);
        return -1;
    }
    /* experts are read at random: stop readahead from pulling their neighbours into the page cache */
    posix_fadvise(s->fd, 0, 0, POSIX_FADV_RANDOM);
    if (direct) {
        s->fd_direct = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
        if (s->fd_direct < 0) {
            snprintf(err, err_len, "cannot open %s with O_DIRECT: %s", path, strerror(errno));
            close(s->fd);
            return -1;
        }
    }
    s->budget = budget;
    s->mode = mode;
    s->direct = direct;
    s->free_head = -1;
    s->q_cap = 4096;
    s->queue = calloc((size_t) s->q_cap, sizeof *s->queue);
    s->io = calloc((size_t) io_threads, sizeof *s->io);
    if (!s->queue || !s->io || pthread_mutex_init(&s->mu, NULL) || pthread_cond_init(&s->cv_done, NULL) ||
        pthread_cond_init(&s->cv_job, NULL)) {
        snprintf(err, err_len, "out of memory");
        free(s->queue);
        free(s->io);
        close(s->fd);
        if (s->fd_direct >= 0) close(s->fd_direct);
        return -1;
    }
    for (int i = 0; i < io_threads; i++) {
        if (pthread_create(&s->io[i], NULL, io_main, s) != 0) {
            snprintf(err, err_len, "cannot start I/O threads");
            s->n_io = i;
            fm_store_close(s);
            return -1;
        }
        s->n_io = i + 1;
    }
    return 0;
}

void fm_store_close(fm_store *s) {
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cv_job);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_io; i++) pthread_join(s->io[i], NULL);
    for (int i = 0; i < s->n_slots; i++) free(s->slots[i].buf);
    free(s->slots);
    free(s->slot_of);
    free(s->freq);
    free(s->cached);
    for (int i = 0; i < s->n_tensors; i++) free(s->tensors[i].held);
    free(s->tensors);
    free(s->queue);
    free(s->io);
    if (s->fd >= 0) close(s->fd);
    if (s->fd_direct >= 0) close(s->fd_direct);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv_done);
    pthread_cond_destroy(&s->cv_job);
    memset(s, 0, sizeof *s);
    s->fd = s->fd_direct = -1;
}

int fm_store_find(const fm_store *s, const char *name) {
    for (int i = 0; i < s->n_tensors; i++) {
        if (strcmp(s->tensors[i].name, name) == 0) return i;
    }
    return -1;
}

int fm_store_add_tensor(fm_store *s, const char *name, uint64_t offset, uint64_t stride, int n_expert, int type,
                        int64_t ne0, int64_t ne1, char *err, size_t err_len) {
    if (strlen(name) >= sizeof s->tensors[0].name || n_expert <= 0 || n_expert > 65536 || stride == 0 ||
        ne0 <= 0 || ne1 <= 0) {
        snprintf(err, err_len, "bad expert tensor %s", name);
        return -1;
    }
    /* bounds from the file are never trusted: the whole tensor must lie inside the file */
    uint64_t size = (uint64_t) s->st0.st_size;
    if (offset > size || stride > (size - offset) / (uint64_t) n_expert) {
        snprintf(err, err_len, "%s: tensor %s (offset %llu, %d x %llu bytes) extends past the end of the file "
                 "(%llu bytes): truncated or corrupt", s->path, name, (unsigned long long) offset, n_expert,
                 (unsigned long long) stride, (unsigned long long) size);
        return -1;
    }
    if (fm_store_find(s, name) >= 0) {
        snprintf(err, err_len, "expert tensor %s registered twice", name);
        return -1;
    }
    pthread_mutex_lock(&s->mu);
    if (s->n_slots > 0) {
        pthread_mutex_unlock(&s->mu);
        snprintf(err, err_len, "tensors must be registered before use");
        return -1;
    }
    if (s->n_tensors == s->cap_tensors) {
        int cap = s->cap_tensors ? 2 * s->cap_tensors : 64;
        fm_tensor *nt = realloc(s->tensors, (size_t) cap * sizeof *nt);
        if (!nt) {
            pthread_mutex_unlock(&s->mu);
            snprintf(err, err_len, "out of memory");
            return -1;
        }
        s->tensors = nt;
        s->cap_tensors = cap;
    }
    fm_tensor *t = &s->tensors[s->n_tensors];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->offset = offset;
    t->stride = stride;
    t->n_expert = n_expert;
    t->type = type;
    t->ne0 = ne0;
    t->ne1 = ne1;
    t->partner = -1;
    if (n_expert > s->max_expert) {
        /* slot_of is rebuilt lazily at first acquire */
        s->max_expert = n_expert;
    }
    int idx = s->n_tensors++;
    pthread_mutex_unlock(&s->mu);
    return idx;
}

int fm_store_check_file(fm_store *s) {
    struct stat a, b;
    const char *why = NULL;
    if (fstat(s->fd, &a) != 0) why = "cannot stat the open model file";
    else if (a.st_size != s->st0.st_size) why = "the model file changed size on disk (truncated or rewritten)";
    else if (stat(s->path, &b) != 0) why = "the model file was removed";
    else if (b.st_ino != s->st0.st_ino || b.st_dev != s->st0.st_dev) why = "the model file was replaced on disk";
    else if (b.st_mtim.tv_sec != s->st0.st_mtim.tv_sec || b.st_mtim.tv_nsec != s->st0.st_mtim.tv_nsec)
        why = "the model file was modified on disk";
    if (why) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s: %s", s->path, why);
        fm_store_set_error(s, msg);
        return -1;
    }
    return 0;
}

/* caller holds mu. Frees unpinned entries in the policy's order until `need` more bytes fit. */
static void evict_locked(fm_store *s, uint64_t need) {
    while (s->used + need > s->budget) {
        int victim = pick_victim_locked(s);
        if (victim < 0) return; /* everything is pinned: the working set overflows the budget for now */
        free_slot_locked(s, victim);
    }
}

/* caller holds mu: unpins what the last prefetch of a tensor pinned; transient slots no longer pinned are freed
   (or, still being read, when their read completes) */
static void drop_held_locked(fm_store *s, int tensor) {
    fm_tensor *t = &s->tensors[tensor];
    for (int i = 0; i < t->n_held; i++) unpin_locked(s, t->held[i]);
    t->n_held = 0;
}

enum { GET_USE = 1, GET_HOLD = 2 }; /* an acquire (counts a use), a prefetch (pins, counts nothing) */

/* a free buffer is reused only when it fits without waste (an expert of another tensor may be twice the size:
   its pages would stay resident beyond what the budget counts) */
static int fits(size_t cap, size_t need) {
    return cap >= need && cap <= need + need / 8;
}

/* caller holds mu. Returns a slot index holding (or about to hold) the expert, or -1 on allocation failure. */
static int get_slot_locked(fm_store *s, int tensor, int expert, int kind) {
    const int use = kind == GET_USE; /* both kinds pin the slot */
    if (!s->slot_of) {
        /* every (tensor, expert) key owns at most one slot and freed slots are reused, so this many slots is
         * enough for good: the table never moves while I/O threads hold pointers into it */
        size_t n = (size_t) s->n_tensors * (size_t) s->max_expert;
        s->slot_of = malloc(n * sizeof *s->slot_of);
        s->slots = calloc(n, sizeof *s->slots);
        s->freq = calloc(n, 1);
        s->cached = malloc(n * sizeof *s->cached);
        if (!s->slot_of || !s->slots || !s->freq || !s->cached) {
            free(s->slot_of);
            free(s->slots);
            free(s->freq);
            free(s->cached);
            s->slot_of = NULL;
            s->slots = NULL;
            s->freq = NULL;
            s->cached = NULL;
            return -1;
        }
        s->age_period = 8 * (uint64_t) n;
        for (size_t i = 0; i < n; i++) s->slot_of[i] = -1;
        s->cap_slots = (int) n;
    }
    size_t key = (size_t) tensor * (size_t) s->max_expert + (size_t) expert;
    int idx = s->slot_of[key];
    const fm_tensor *t = &s->tensors[tensor];
    s->clock++;
    if (use) {
        count_use_locked(s, key);
        s->stats.expert_bytes_used += t->stride;
    }
    if (idx >= 0) {
        fm_slot *sl = &s->slots[idx];
        sl->pins++;
        sl->last_use = s->clock;
        if (use) s->stats.cache_hits++;
        return idx;
    }
    /* a miss: make room, or (LFU) do not admit an expert used less than what it would displace (a prefetch
       compares the count its coming use will give) */
    int transient = s->mode == FM_CACHE_OS;
    if (!transient && s->used + t->stride > s->budget) {
        /* one scan for both decisions: the victim is what admission compares with and what goes first */
        int v = pick_victim_locked(s);
        unsigned f = s->freq[key] + (use ? 0u : 1u);
        if (s->mode == FM_CACHE_LFU && v >= 0 && s->slots[v].state == FM_SLOT_READY &&
            f < s->freq[key_of(s, &s->slots[v])]) {
            transient = 1;
        } else if (v >= 0) {
            free_slot_locked(s, v);
            /* LRU/LFU: nothing evictable (all pinned) means the cache is over budget only for the node in
               progress */
            evict_locked(s, t->stride);
        }
    }
    size_t need = (size_t) t->stride + (s->direct ? 2 * FM_DIRECT_ALIGN : 0);
    /* a free slot whose buffer fits; else any free slot, with a new buffer */
    int prev = -1, fit = -1, fit_prev = -1;
    for (int i = s->free_head, n = 0; i >= 0 && n < 2 * FM_FREE_BUFS; prev = i, i = s->slots[i].next_free, n++) {
        if (fits(s->slots[i].cap, need)) {
            fit = i;
            fit_prev = prev;
            break;
        }
    }
    if (fit < 0 && s->free_head >= 0) fit = s->free_head;
    if (fit >= 0) {
        idx = fit;
        if (fit_prev >= 0) s->slots[fit_prev].next_free = s->slots[idx].next_free;
        else s->free_head = s->slots[idx].next_free;
        if (s->slots[idx].buf) s->n_free_bufs--;
        if (!fits(s->slots[idx].cap, need)) {
            free(s->slots[idx].buf);
            s->slots[idx].buf = NULL;
            s->slots[idx].cap = 0;
        }
    } else {
        if (s->n_slots == s->cap_slots) return -1; /* cannot happen: one slot per key at most */
        idx = s->n_slots++;
        memset(&s->slots[idx], 0, sizeof s->slots[idx]);
    }
    fm_slot *sl = &s->slots[idx];
    if (!sl->buf) {
        void *p = NULL;
        if (posix_memalign(&p, FM_DIRECT_ALIGN, need) != 0) {
            sl->state = FM_SLOT_FREE;
            sl->next_free = s->free_head;
            s->free_head = idx;
            return -1;
        }
        sl->buf = p;
        sl->cap = need;
    }
    sl->tensor = tensor;
    sl->expert = expert;
    sl->transient = transient;
    sl->cpos = -1;
    if (!transient) {
        sl->cpos = s->n_cached;
        s->cached[s->n_cached++] = idx;
    }
    sl->state = FM_SLOT_LOADING;
    sl->pins = 1;
    sl->last_use = s->clock;
    sl->data = NULL;
    s->slot_of[key] = idx;
    s->used += t->stride;
    if (s->used > s->stats.cache_peak_bytes) s->stats.cache_peak_bytes = s->used;
    if (use) s->stats.cache_misses++;
    else s->stats.prefetches++;
    if (transient && s->mode == FM_CACHE_LFU) s->stats.not_admitted++;
    if (s->q_len == s->q_cap) {
        int cap = 2 * s->q_cap;
        int *nq = malloc((size_t) cap * sizeof *nq);
        if (!nq) return -1;
        for (int i = 0; i < s->q_len; i++) nq[i] = s->queue[(s->q_head + i) % s->q_cap];
        free(s->queue);
        s->queue = nq;
        s->q_head = 0;
        s->q_cap = cap;
    }
    s->queue[(s->q_head + s->q_len) % s->q_cap] = idx;
    s->q_len++;
    pthread_cond_signal(&s->cv_job);
    return idx;
}

int fm_store_acquire(fm_store *s, int tensor, const int *experts, int n, int *out_slots) {
    pthread_mutex_lock(&s->mu);
    if (s->failed) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (experts[i] < 0 || experts[i] >= s->tensors[tensor].n_expert) {
            set_error_locked(s, "router selected an expert index out of range");
            for (int j = 0; j < i; j++) s->slots[out_slots[j]].pins--;
            pthread_mutex_unlock(&s->mu);
            return -1;
        }
        int idx = get_slot_locked(s, tensor, experts[i], GET_USE);
        if (idx < 0) {
            set_error_locked(s, "out of memory for expert buffers");
            for (int j = 0; j < i; j++) s->slots[out_slots[j]].pins--;
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
    fm_tensor *t = &s->tensors[tensor];
    if (!t->held) t->held = malloc(2 * (size_t) t->n_expert * sizeof *t->held);
    if (!t->held) {
        pthread_mutex_unlock(&s->mu);
        return; /* no read-ahead; the acquire reads them */
    }
    /* pin the new set before letting the old one go, so an expert in both is not freed and read again */
    int n_old = t->n_held;
    for (int i = 0; i < n && !s->failed && t->n_held < 2 * t->n_expert; i++) {
        if (experts[i] < 0 || experts[i] >= t->n_expert) continue;
        int idx = get_slot_locked(s, tensor, experts[i], GET_HOLD);
        if (idx < 0) break; /* out of memory for buffers: the acquire will try again and report it */
        t->held[t->n_held++] = idx;
    }
    int n_new = t->n_held - n_old;
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
            if (!done[i] && s->slots[slots[i]].state == FM_SLOT_READY) {
                pthread_mutex_unlock(&s->mu);
                return i;
            }
        }
        pthread_cond_wait(&s->cv_done, &s->mu);
    }
}

void fm_store_release(fm_store *s, const int *slots, int n) {
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < n; i++) unpin_locked(s, slots[i]);
    evict_locked(s, 0);
    pthread_mutex_unlock(&s->mu);
}

const void *fm_store_data(const fm_store *s, int slot) {
    return s->slots[slot].data;
}

void fm_store_get_stats(fm_store *s, fm_stats *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    out->cache_bytes = s->used;
    pthread_mutex_unlock(&s->mu);
}
