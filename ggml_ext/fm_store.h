/* The expert store: where each routed-expert tensor lives in the GGUF, and a cache of expert bytes bounded by a
 * RAM budget, filled by reads on an I/O thread pool.
 *
 * An expert is one contiguous byte range (offset + e * stride, stride bytes). Callers acquire the experts a
 * MUL_MAT_ID node selected (all at once, so the reads run in parallel), consume them as they become ready, and
 * release them. Slots being read or in use are pinned; the rest are evicted in the order the cache policy
 * (fm_policy.h) gives, and the policy decides whether a missed expert is cached at all. The pieces: fm_io
 * (file, reads, change detection), fm_slots (slot memory), fm_policy_* (what to keep); this file ties them
 * together under one lock. The handle is opaque: callers use the functions below. */
#ifndef FM_STORE_H
#define FM_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "fm_types.h"

typedef struct fm_store fm_store;

/* one routed-expert tensor as registered; fixed after registration, and at a fixed address while the store
   lives (ggml tensors point at it) */
typedef struct fm_tensor_info {
    char name[96];
    int file;          /* which of the model's files holds it (split models) */
    uint64_t offset;   /* offset of expert 0 in that file */
    uint64_t stride;   /* bytes per expert */
    int n_expert;
    int type;          /* enum ggml_type */
    int64_t ne0, ne1;  /* values per row, rows per expert */
    int index;         /* in the store's table */
    int partner;       /* tensor read together with this one (down for gate_up), or -1 */
} fm_tensor_info;

/* paths: the model's files (one, or the shards of a split model); mode: an fm_cache_mode; direct: O_DIRECT reads.
   NULL with a message on failure. */
fm_store *fm_store_open(const char *const *paths, int n_files, uint64_t budget, int io_threads, int mode, int direct,
                        char *err, size_t err_len);
void fm_store_close(fm_store *s);

/* Registers a tensor before the first use (bounds are checked against its file); its index, or -1. */
int fm_store_add_tensor(fm_store *s, const char *name, int file, uint64_t offset, uint64_t stride, int n_expert,
                        int type, int64_t ne0, int64_t ne1, char *err, size_t err_len);
int fm_store_find(const fm_store *s, const char *name);
int fm_store_n_tensors(const fm_store *s);
const fm_tensor_info *fm_store_tensor(const fm_store *s, int idx);
/* b's experts are read ahead when a's same experts are acquired; -1 if they do not match */
int fm_store_set_partner(fm_store *s, int a, int b);
/* the loader placed the tensor on the flashmoe device; the first tensor that was not, or NULL */
void fm_store_bind(fm_store *s, int idx);
const char *fm_store_unbound(const fm_store *s);

/* Checks that the file is still the one that was opened; sets the error and returns -1 if not. */
int fm_store_check_file(fm_store *s);
/* Checks that file `file` as opened is the one the caller indexed (device, inode, size, mtime in ns, taken when
   it read the header): a file replaced or rewritten between that read and this open. The error is set if not. */
int fm_store_verify_file(fm_store *s, int file, uint64_t dev, uint64_t ino, uint64_t size, int64_t mtime_ns);
/* How many of n experts of a tensor to hold at once (the budget's worth, at least 1: a node whose experts do
   not fit is computed in waves). */
int fm_store_wave(const fm_store *s, int tensor, int n);
/* A new budget (bytes of cached experts), e.g. once llama.cpp's context buffers are known; a smaller one evicts
   unpinned entries down to it. */
void fm_store_set_budget(fm_store *s, uint64_t budget);
/* Pin the given experts of a tensor, queueing reads for those not cached. out_slots receives slot indices. */
int fm_store_acquire(fm_store *s, int tensor, const int *experts, int n, int *out_slots);
/* Queue reads for experts of a tensor that its next acquire will need (the partner of the tensor being
 * computed). They stay pinned until that acquire (or the next prefetch of the tensor), so an expert the cache
 * does not admit is still read ahead, into a transient slot. */
void fm_store_prefetch(fm_store *s, int tensor, const int *experts, int n);
/* Wait until one of slots[i] with done[i] == 0 is ready; returns i, or -1 on a read error. */
int fm_store_wait_any(fm_store *s, const int *slots, const char *done, int n);
/* Without waiting: marks every slot i of slots[0..n) not done[i] whose data is ready as done and appends i to
   order (in slot order); returns how many. -1 if the store failed. */
int fm_store_take_ready(fm_store *s, const int *slots, char *done, int n, int *order);
void fm_store_release(fm_store *s, const int *slots, int n);
/* the bytes of a ready, pinned slot */
const void *fm_store_data(const fm_store *s, int slot);
/* bytes of a tensor read now from the file (weights read back, rare); 0 or -1 with the error set */
int fm_store_read_weights(fm_store *s, int tensor, uint64_t offset, void *dst, size_t len);

/* one MUL_MAT_ID's time, and the part of it spent waiting for reads */
void fm_store_add_compute(fm_store *s, double seconds, double io_wait_seconds, double serial_seconds,
                          double region_thread_seconds, double busy_thread_seconds);
void fm_store_get_stats(fm_store *s, fm_stats *out);
/* The first error sticks: the store stays failed (no products from missing experts). */
void fm_store_set_error(fm_store *s, const char *msg);
/* non-zero if failed; the message into buf */
int fm_store_error(fm_store *s, char *buf, size_t len);
/* Test hook: the Nth expert read from now on fails with EIO (0 turns it off). */
void fm_store_inject_read_error(fm_store *s, int nth_read);

#endif
