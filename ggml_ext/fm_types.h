/* Plain C types shared by the extension's modules and by Python, which reads this header through cffi (only
 * enums, structs of fixed-size fields and comments here: it is also a cdef). */
#ifndef FM_TYPES_H
#define FM_TYPES_H

#include <stdint.h>

/* cache policies (fm_policy.h) */
enum fm_cache_mode {
    FM_CACHE_LRU = 0, /* our own cache up to the budget, least recently used evicted first */
    FM_CACHE_OS = 1,  /* keep nothing: every use re-reads, the OS page cache does the caching */
    FM_CACHE_LFU = 2, /* our own cache up to the budget, use counts with aging and admission (default) */
    FM_CACHE_LRFU = 3, /* our own cache up to the budget, recency + frequency score in token time, admission */
    FM_CACHE_HAZARD = 4 /* our own cache up to the budget, reuse probability at the layer's next visit learned
                           online from the routing, admission */
};

/* who computes expert products: our kernels on an instruction set (fm_kernels.h), or ggml's own code */
enum fm_isa {
    FM_ISA_BEST = 0, /* fm_kernel_get: the best instruction set of this CPU */
    FM_ISA_SCALAR = 1,
    FM_ISA_AVX2 = 2,   /* AVX2 + FMA */
    FM_ISA_AVX512 = 3, /* AVX-512 F + BW + VL */
    FM_ISA_GGML = 4    /* ggml's own MUL_MAT_ID code (fm_ggml_mmid.h) */
};

/* ggml's tiled K-quant MUL_MAT_ID path, as ggml-cpu sets it from its environment (read once per process) */
enum fm_tiled {
    FM_TILED_OFF = 0,  /* GGML_CPU_TILED_MM=0 */
    FM_TILED_ON = 1,   /* for an expert with 8 or more rows of a batch (default) */
    FM_TILED_FORCE = 2 /* GGML_CPU_TILED_MM_FORCE=1: for every expert */
};

/* where a byte range of the stream the loader reads comes from (flashmoe_gguf/load_plan.py) */
enum fm_segment_kind {
    FM_SEG_BLOB = 0, /* the in-memory blob (a split model's merged header) */
    FM_SEG_FILE = 1, /* a model file */
    FM_SEG_ZERO = 2, /* zeros (padding) */
    FM_SEG_SKIP = 3  /* routed-expert bytes: never read */
};

typedef struct fm_stats {
    uint64_t expert_bytes_read;
    uint64_t reads;
    uint64_t cache_hits;        /* experts a MUL_MAT_ID needed that were cached or already being read */
    uint64_t cache_misses;      /* ... that had to be read */
    uint64_t prefetches;        /* reads queued ahead of use (the partner tensor of the same experts) */
    uint64_t not_admitted;      /* misses read into a transient buffer (LFU admission) */
    uint64_t cache_bytes;
    uint64_t cache_peak_bytes;
    uint64_t kept_buffer_bytes; /* buffers of free slots kept for the next reads (fm_slots.h) */
    uint64_t buffers_made;      /* expert buffers allocated (a read that reused a kept one made none) */
    uint64_t mul_mat_id_calls;
    uint64_t expert_bytes_used; /* bytes of the experts MUL_MAT_ID nodes used (hits and misses) */
    double io_seconds;          /* summed over I/O threads */
    double io_wait_seconds;     /* time the compute path waited for reads */
    double compute_seconds;     /* time in expert products */
    double serial_seconds;      /* ... of it on the calling thread alone, outside the parallel regions (routing,
                                   the cache's bookkeeping, quantizing a decode step's rows, the regions' setup) */
    double region_thread_seconds; /* the parallel regions' wall time x their threads */
    double busy_thread_seconds; /* ... of it in the products themselves (the rest: entering and leaving the
                                   regions, waiting for reads, claiming work, threads with nothing left to do) */
} fm_stats;

#endif
