/* The store's slot memory: a table of slots, each holding (or about to hold) one expert's bytes in a buffer of
 * its own, and a free list whose buffers are reused when they fit. The table has one slot per (tensor, expert)
 * key at most and never moves once made, so I/O threads may hold pointers into a slot's buffer. Not
 * thread-safe: the store calls it under its lock.
 *
 * Buffers are anonymous mappings of their own (page-aligned, which O_DIRECT needs), so a buffer given back
 * returns its memory at once: malloc'ed ones of 1-3 MB, freed and made again as experts come and go, left holes
 * in the heap that no budget counted (35 MB more resident after a 512-token prompt of the 8-layer Qwen3 slice
 * under a 98 MB budget, 2026-12-07). Free slots keep their buffers for the next reads: up to FM_FREE_BUFS of
 * them (a decode node's experts and their partners'), more while the budget has room (the store passes what it
 * leaves). Keeping none beyond the budget made every uncached read a fresh mapping: 4x the system time of
 * decode in page faults. */
#ifndef FM_SLOTS_H
#define FM_SLOTS_H

#include <stddef.h>
#include <stdint.h>

#define FM_FREE_BUFS 32 /* free slots that keep their buffer whatever the budget leaves */

enum { FM_SLOT_FREE = 0, FM_SLOT_LOADING, FM_SLOT_READY, FM_SLOT_ERROR };

typedef struct fm_slot {
    int tensor, expert;
    int state;
    int pins;          /* acquires and prefetches holding it; never evicted while > 0 */
    uint64_t last_use;
    void *buf;         /* allocation (aligned for O_DIRECT) */
    size_t cap;
    int mapped;        /* buf is a mapping of its own (else from posix_memalign) */
    const void *data;  /* READY: the expert's bytes within buf */
    int transient;     /* not cached: freed when its last pin goes */
    int cpos;          /* index in the store's list of cached slots, or -1 */
    int next_free, prev_free; /* free lists (fm_slots.c) */
} fm_slot;

typedef struct {
    fm_slot *v;
    int n, cap;        /* slots made, and room for */
    int free_head, free_tail; /* free slots keeping a buffer, most recently given back first */
    int bare_head;            /* free slots without one */
    int n_free_bufs;
    uint64_t made;            /* buffers allocated so far */
    size_t free_bytes; /* bytes of the buffers kept by free slots */
    size_t align;
    int may_map;       /* buffers may be mappings of their own (align <= the page size) */
} fm_slots;

/* room for cap slots, buffers aligned to align; 0 or -1 (out of memory) */
int fm_slots_init(fm_slots *t, int cap, size_t align);
void fm_slots_destroy(fm_slots *t);
/* a slot with a buffer of at least need bytes (a free buffer is reused only if it fits without waste), reset
   to LOADING with one pin; -1 when out of memory */
int fm_slots_take(fm_slots *t, size_t need);
/* back to the free lists, keeping its buffer for the next reads; then the oldest kept buffers go back while more
   than FM_FREE_BUFS are kept and their bytes exceed keep_limit */
void fm_slots_give_back(fm_slots *t, int idx, size_t keep_limit);
/* frees kept buffers, the oldest first, until their bytes are at most keep_limit */
void fm_slots_trim(fm_slots *t, size_t keep_limit);

#endif
