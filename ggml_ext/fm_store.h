/* The expert store: where each routed-expert tensor lives in the GGUF, a cache of expert bytes bounded by a
 * RAM budget, and a pool of I/O threads that read experts with positional reads.
 *
 * An expert is one contiguous byte range (offset + e * stride, stride bytes). Callers acquire the experts a
 * MUL_MAT_ID node selected (all at once, so the reads run in parallel), consume them as they become ready, and
 * release them. Slots being read or in use are pinned; the rest are evicted by the cache policy:
 *
 * LFU (default): every expert (cached or not) has a use count, halved every 8 uses per expert on average so
 *   that it follows drifting routing. The victim is the unpinned entry with the lowest count (least recently
 *   used among equals), and an expert whose count is below the victim's is not admitted: it is read into a
 *   transient buffer and dropped after use. Decode visits the layers in a loop; when the budget holds less
 *   than a token's experts, LRU evicts every expert just before its next use (0 % hits), while counts keep
 *   the often-routed experts resident (routing is skewed: a tenth of the experts take most uses).
 * LRU: least recently used first, always admitted (kept for comparison).
 * OS: nothing kept after use; the page cache is the cache. */
#ifndef FM_STORE_H
#define FM_STORE_H

#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>

#include "fm_types.h"


enum { FM_SLOT_FREE = 0, FM_SLOT_LOADING, FM_SLOT_READY, FM_SLOT_ERROR };

typedef struct fm_tensor {
    char name[96];
    uint64_t offset;   /* absolute file offset of expert 0 */
    uint64_t stride;   /* bytes per expert */
    int n_expert;
    int type;          /* enum ggml_type */
    int64_t ne0, ne1;  /* values per row, rows per expert */
    int partner;       /* tensor read together with this one (down for gate_up), or -1 */
    int bound;         /* placed in a flashmoe buffer by the loader */
    int *held;         /* slots pinned by the last prefetch of this tensor, until its next acquire */
    int n_held;
} fm_tensor;

typedef struct fm_slot {
    int tensor, expert;
    int state;
    int pins;
    uint64_t last_use;
    void *buf;         /* allocation (aligned for O_DIRECT) */
    void *data;        /* start of the expert's bytes within buf */
    size_t cap;
    int next_free;
    int transient;     /* not admitted to the cache: freed when its last pin goes */
    int cpos;          /* index in fm_store.cached, or -1 */
} fm_slot;


typedef struct fm_store {
    char path[4096];
    int fd, fd_direct;
    struct stat st0;
    int mode, direct;
    fm_tensor *tensors;
    int n_tensors, cap_tensors;
    int *slot_of;            /* [tensor * max_expert + expert] -> slot index or -1 */
    uint8_t *freq;           /* [same key] use count (LFU) */
    int *cached;             /* slots kept after use (the eviction candidates), dense */
    int n_cached;
    uint64_t accesses, age_period;
    int max_expert;
    fm_slot *slots;
    int n_slots, cap_slots, free_head, n_free_bufs;
    uint64_t budget, used, clock;
    pthread_mutex_t mu;
    pthread_cond_t cv_done;  /* a read finished */
    pthread_cond_t cv_job;   /* a read was queued */
    int *queue;              /* ring of slot indices to read */
    int q_head, q_len, q_cap;
    pthread_t *io;
    int n_io, stop;
    int failed;
    char error[512];
    fm_stats stats;
    int fault_after_reads;   /* test hook: fail the Nth read with EIO (0 = off) */
} fm_store;

int fm_store_open(fm_store *s, const char *path, uint64_t budget, int io_threads, int mode, int direct,
                  char *err, size_t err_len);
void fm_store_close(fm_store *s);
/* Register a tensor before the first use; returns its index or -1. */
int fm_store_add_tensor(fm_store *s, const char *name, uint64_t offset, uint64_t stride, int n_expert, int type,
                        int64_t ne0, int64_t ne1, char *err, size_t err_len);
int fm_store_find(const fm_store *s, const char *name);
/* Checks that the file is still the one that was opened; sets the error and returns -1 if not. */
int fm_store_check_file(fm_store *s);
/* Pin the given experts of a tensor, queueing reads for those not cached. out_slots receives slot indices. */
int fm_store_acquire(fm_store *s, int tensor, const int *experts, int n, int *out_slots);
/* Queue reads for experts of a tensor that its next acquire will need (the partner of the tensor being
 * computed). They stay pinned until that acquire (or the next prefetch of the tensor), so an expert the cache
 * does not admit is still read ahead, into a transient slot. */
void fm_store_prefetch(fm_store *s, int tensor, const int *experts, int n);
/* Wait until one of slots[i] with done[i] == 0 is ready; returns i, or -1 on a read error. */
int fm_store_wait_any(fm_store *s, const int *slots, const char *done, int n);
void fm_store_release(fm_store *s, const int *slots, int n);
const void *fm_store_data(const fm_store *s, int slot);
void fm_store_get_stats(fm_store *s, fm_stats *out);
void fm_store_set_error(fm_store *s, const char *msg);

#endif
