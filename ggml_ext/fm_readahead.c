/* Chunks of the model files read ahead while the loader copies others (see fm_readahead.h). */
#include "fm_readahead.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

enum {
    RA_FREE,     /* holds nothing */
    RA_PENDING,  /* queued for the thread */
    RA_BUSY,     /* being read (by the thread, or by take on the caller's thread) */
    RA_DONE      /* read: res says how it went */
};

typedef struct {
    int state;
    int fd, dfd;
    uint64_t off;
    size_t n;
    fm_read_result res;
    char *mem;
    size_t cap;         /* bytes at mem (kept when the slot is reused for a chunk that fits) */
    int counted;        /* its bytes are in *bytes_read */
    int taken;          /* taken since it was read */
    uint64_t touched;   /* when it was last taken or hinted (LRU) */
    uint64_t queued;    /* when it was queued (the thread reads in that order) */
} ra_buf;

struct fm_readahead {
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* the thread: work queued or stop; the caller: a read finished */
    pthread_t thread;
    ra_buf *b;
    int n_bufs;         /* slots */
    size_t chunk;       /* the largest chunk */
    size_t align;
    size_t budget;      /* bytes the slots' buffers may hold together */
    size_t held_bytes;  /* ... and hold */
    int held;                /* the buffer of the last take, -1: none */
    int stop;
    uint64_t clock;
    uint64_t *bytes_read;    /* the caller's counter: only ever updated on the caller's thread */
};

/* [off, off + n) into buf: O_DIRECT first where dfd >= 0 (off, n and buf aligned), a short O_DIRECT read (the end
   of the file, a signal) continued through fd, whose reads need no alignment */
static void read_range(int fd, int dfd, char *buf, uint64_t off, size_t n, fm_read_result *res) {
    size_t total = 0;
    int direct = dfd >= 0;
    res->err = 0;
    res->direct_refused = 0;
    while (total < n) {
        const ssize_t got = pread(direct ? dfd : fd, buf + total, n - total, (off_t) (off + total));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && errno == EINVAL && direct) { /* O_DIRECT refused here */
            direct = 0;
            res->direct_refused = 1;
            continue;
        }
        if (got < 0) {
            res->err = errno;
            break;
        }
        if (got == 0) break; /* the end of the file */
        total += (size_t) got;
        direct = 0;
    }
    res->got = total;
}

/* under mu, b RA_BUSY (nobody else touches it): its range read with mu released; then RA_DONE */
static void read_slot(fm_readahead *r, ra_buf *b) {
    pthread_mutex_unlock(&r->mu);
    fm_read_result res;
    read_range(b->fd, b->dfd, b->mem, b->off, b->n, &res);
    pthread_mutex_lock(&r->mu);
    b->res = res;
    b->state = RA_DONE;
}

static void *reader_main(void *arg) {
    fm_readahead *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        int next = -1;
        while (!r->stop) {
            for (int i = 0; i < r->n_bufs; i++)
                if (r->b[i].state == RA_PENDING && (next < 0 || r->b[i].queued < r->b[next].queued)) next = i;
            if (next >= 0) break;
            pthread_cond_wait(&r->cv, &r->mu);
        }
        if (r->stop) break;
        r->b[next].state = RA_BUSY;
        read_slot(r, &r->b[next]);
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

fm_readahead *fm_readahead_new(int n_bufs, size_t chunk, size_t budget, size_t align, uint64_t *bytes_read) {
    if (n_bufs < 1 || chunk == 0 || budget < chunk) return NULL;
    fm_readahead *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->b = calloc((size_t) n_bufs, sizeof *r->b);
    r->n_bufs = n_bufs;
    r->chunk = chunk;
    r->budget = budget;
    r->align = align;
    r->held = -1;
    r->bytes_read = bytes_read;
    int ok = r->b != NULL, have_mu = 0, have_cv = 0;
    if (ok) ok = have_mu = pthread_mutex_init(&r->mu, NULL) == 0;
    if (ok) ok = have_cv = pthread_cond_init(&r->cv, NULL) == 0;
    if (ok) {
        /* signals go to the other threads: the reader has nothing to do with them */
        sigset_t all, old;
        sigfillset(&all);
        const int masked = pthread_sigmask(SIG_SETMASK, &all, &old) == 0;
        ok = pthread_create(&r->thread, NULL, reader_main, r) == 0;
        if (masked) pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (ok) return r;
    if (have_cv) pthread_cond_destroy(&r->cv);
    if (have_mu) pthread_mutex_destroy(&r->mu);
    free(r->b);
    free(r);
    return NULL;
}

/* under mu, on the caller's thread: a finished read's bytes into the caller's counter, once */
static void account(fm_readahead *r, ra_buf *b) {
    if (b->state == RA_DONE && !b->counted) {
        if (r->bytes_read) *r->bytes_read += b->res.got;
        b->counted = 1;
    }
}

void fm_readahead_free(fm_readahead *r) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    for (int i = 0; i < r->n_bufs; i++) {
        account(r, &r->b[i]);
        free(r->b[i].mem);
    }
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r->b);
    free(r);
}

static int find(const fm_readahead *r, int fd, int dfd, uint64_t off, size_t n) {
    for (int i = 0; i < r->n_bufs; i++) {
        const ra_buf *b = &r->b[i];
        if (b->state != RA_FREE && b->fd == fd && b->dfd == dfd && b->off == off && b->n == n) return i;
    }
    return -1;
}

/* under mu: the slot given up the soonest, other than `but`: a free one (with a buffer, if want_buffer), else the
   chunk taken longest ago, else (only if stale_too) the chunk read ahead longest ago and never taken; never one
   queued, being read or held. A hint never drops a chunk read ahead for an earlier hint: llama.cpp reads the
   output head between the embedding and layer 0, and layer 0's chunks, read ahead after the embedding, would
   otherwise be dropped by the output head's before llama.cpp asks for them. -1: none */
static int oldest(const fm_readahead *r, int but, int want_buffer, int stale_too) {
    int best = -1, stale = -1;
    for (int i = 0; i < r->n_bufs; i++) {
        const ra_buf *b = &r->b[i];
        if (i == but || (want_buffer && b->cap == 0)) continue;
        if (b->state == RA_FREE) return i;
        if (b->state != RA_DONE || i == r->held) continue;
        if (b->taken && (best < 0 || b->touched < r->b[best].touched)) best = i;
        if (!b->taken && (stale < 0 || b->touched < r->b[stale].touched)) stale = i;
    }
    return best >= 0 ? best : stale_too ? stale : -1;
}

/* under mu: slot i given up (its chunk's bytes counted) */
static void empty(fm_readahead *r, int i) {
    account(r, &r->b[i]);
    r->b[i].state = RA_FREE;
}

/* under mu: a slot with a buffer of n bytes (n <= budget) within the budget, empty; the buffers of other slots,
   oldest first, are given up until it fits. -1: not now (the other buffers are queued, being read or held),
   -2: out of memory */
static int slot_for(fm_readahead *r, size_t n, int stale_too) {
    const int i = oldest(r, -1, 0, stale_too);
    if (i < 0) return -1;
    ra_buf *b = &r->b[i];
    empty(r, i);
    while (b->cap < n && r->held_bytes - b->cap + n > r->budget) {
        const int j = oldest(r, i, 1, stale_too);
        if (j < 0) return -1;
        empty(r, j);
        free(r->b[j].mem);
        r->held_bytes -= r->b[j].cap;
        r->b[j].mem = NULL;
        r->b[j].cap = 0;
    }
    if (b->cap < n) {
        void *mem = NULL;
        if (posix_memalign(&mem, r->align, n) != 0) return -2;
        free(b->mem);
        r->held_bytes = r->held_bytes - b->cap + n;
        b->mem = mem;
        b->cap = n;
    }
    return i;
}

const char *fm_readahead_take(fm_readahead *r, int fd, int dfd, uint64_t off, size_t n, fm_read_result *res) {
    if (n == 0 || n > r->chunk) {
        *res = (fm_read_result){0, EINVAL, 0};
        return NULL;
    }
    pthread_mutex_lock(&r->mu);
    r->held = -1; /* the caller gives up the last chunk */
    int i = find(r, fd, dfd, off, n);
    if (i >= 0) {
        while (r->b[i].state == RA_PENDING || r->b[i].state == RA_BUSY) pthread_cond_wait(&r->cv, &r->mu);
    } else {
        while ((i = slot_for(r, n, 1)) == -1) pthread_cond_wait(&r->cv, &r->mu); /* everything is being read */
        if (i < 0) {
            pthread_mutex_unlock(&r->mu);
            *res = (fm_read_result){0, ENOMEM, 0};
            return NULL;
        }
        ra_buf *b = &r->b[i];
        *b = (ra_buf){.state = RA_BUSY, .fd = fd, .dfd = dfd, .off = off, .n = n, .mem = b->mem, .cap = b->cap};
        read_slot(r, b);
    }
    ra_buf *b = &r->b[i];
    account(r, b);
    *res = b->res;
    const char *p = NULL;
    if (res->err || res->got == 0) {
        b->state = RA_FREE; /* asked again, it is read again */
    } else {
        b->touched = ++r->clock;
        b->taken = 1;
        r->held = i;
        p = b->mem;
    }
    pthread_mutex_unlock(&r->mu);
    return p;
}

int fm_readahead_hint(fm_readahead *r, int fd, int dfd, uint64_t off, size_t n) {
    if (n == 0 || n > r->chunk) return 0;
    pthread_mutex_lock(&r->mu);
    int ok = 1;
    const int have = find(r, fd, dfd, off, n);
    if (have >= 0) {
        r->b[have].touched = ++r->clock;
    } else {
        const int i = slot_for(r, n, 0);
        if (i < 0) {
            ok = 0;
        } else {
            ra_buf *b = &r->b[i];
            r->clock++;
            *b = (ra_buf){.state = RA_PENDING, .fd = fd, .dfd = dfd, .off = off, .n = n, .mem = b->mem,
                          .cap = b->cap, .queued = r->clock, .touched = r->clock};
            pthread_cond_broadcast(&r->cv);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return ok;
}
