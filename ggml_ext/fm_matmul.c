/* GGML_OP_MUL_MAT_ID for routed experts whose bytes come from the expert store.
 *
 * ggml semantics: as = src0 [ne00 cols, ne01 rows, n_expert], b = src1 [ne00, ne11, n_tokens] (ne11 is 1 when
 * the activation is shared by all slots), ids = src2 [n_used, n_tokens] int32, dst [ne01, n_used, n_tokens]:
 *     dst[:, k, t] = as[ids[k, t]] . b[:, k % ne11, t]
 * Every product is bitwise what stock llama.cpp's CPU backend computes (extra buffer types off). Two ways:
 *   - our kernels (fm_kernels.h): the activation rows are quantized once to the weight type's vec_dot_type
 *     with ggml's own from_float, then each expert's rows go through the kernel function that reproduces the
 *     procedure ggml would choose for that expert: vec_dot, or the tiled K-quant path when the expert has 8 or
 *     more activation rows (GGML_CPU_TILED_MM / GGML_CPU_TILED_MM_FORCE change that choice in ggml, and here);
 *   - ggml's own MUL_MAT_ID code, one expert at a time (fm_ggml_mmid.h): for types without a kernel, when
 *     ggml-cpu's arithmetic is not the one our kernels reproduce, and when asked (kernels=False). The rows are
 *     quantized once here too (ggml's from_float, as its MUL_MAT_ID does), not once per expert.
 * All selected experts are requested from the store at once; each is multiplied as soon as its bytes arrive,
 * so computing overlaps the remaining reads. */
#include "fm_matmul.h"
#include "fm_clock.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>

#include "fm_ggml.h"
#include "fm_ggml_mmid.h"
#include "fm_kernels.h"

/* ggml-cpu/tiled/tiled.cpp: an expert's MUL_MAT_ID goes through the tiled path from this many rows on */
#define FM_TILED_MIN_ROWS 8
/* activation rows quantized on the calling thread, without a parallel region */
#define FM_QUANTIZE_INLINE_ROWS 16

/* A thread's results for one expert wait in th->out until they are scattered into dst. expert_rows computes the
   weight rows in blocks so that out holds at most FM_OUT_CAP bytes: block_rows() x the node's largest pair count
   floats, the block a multiple of FM_BLOCK_UNIT rows and at least that (only an expert of more than
   FM_OUT_CAP / (4 x FM_BLOCK_UNIT) = 4096 pairs goes over the cap). Without blocks out was ne01 x pairs floats a
   thread: 4.9 MB for 2048 rows x 600 pairs. Every (weight row, activation row) product is the same whatever rows
   are computed with it: our kernels and ggml take any row count and any first row (the wave already splits an
   expert's rows between threads at arbitrary rows), so blocks change no bit. */
#define FM_OUT_CAP ((size_t) 256 << 10)
#define FM_BLOCK_UNIT 16

/* per compute thread */
typedef struct {
    char *gathered;              /* an expert's activation rows, contiguous (quantized, or float for ggml) */
    float *out;                  /* [n_pairs][rows of a block] results: block_rows x the node's largest pair count */
    fm_ggml_scratch ggml;
    double busy;                 /* seconds in expert_rows */
    char err[256];
} mm_thread;

typedef struct {
    /* shared, read-only during a task */
    fm_store *s;
    const struct ggml_tensor *b;
    struct ggml_tensor *dst;
    int64_t ne00, ne01, ne11;
    int64_t block_rows;          /* weight rows per kernel call in expert_rows (see FM_OUT_CAP) */
    size_t act_row;              /* bytes of one quantized activation row (when quantized) */
    size_t w_row;                /* bytes of one weight row */
    char *act;                   /* quantized rows, index i11 + i12 * ne11 (when quantized) */
    ggml_from_float_t from_float;
    int act_type;                /* the type of the rows the products take: vec_dot_type, or F32 (not quantized) */
    int quantized;               /* act holds the rows in act_type */
    const fm_kernel *kernel;     /* NULL: ggml's own MUL_MAT_ID */
    int tiled_mode;              /* FM_TILED_* */
    int type;
    int n_used;
    const int *pairs;            /* (k, t) pairs packed as k + t * n_used, grouped by expert */
    const int *start;            /* expert e's pairs are pairs[start[e] .. start[e + 1]) */
    mm_thread *th;
    /* the current wave: experts uniq[0..nw), their slots; work item i is chunk i % cpe of the
       (i / cpe)-th expert to arrive */
    const int *uniq;
    const int *slots;
    char *done;                  /* arrived and handed out */
    int *order;                  /* wave indices in order of arrival */
    int nw, cpe, n_items;
    int items_per_thread; /* opts->items (fm_model_new sets it: FM_ITEMS_PER_THREAD unless measuring) */
    atomic_int next_item;        /* the next work item to claim */
    atomic_int n_arrived;        /* order[0..n_arrived) are set (written under mu) */
    atomic_int failed;
    pthread_mutex_t mu;          /* registers arrivals (arrive) */
    double io_wait;              /* under mu */
    double region_seconds;       /* in the parallel regions (the rest of the node is the calling thread's alone) */
} mm_ctx;

static void quantize_task(void *arg, int ith, int nth) {
    mm_ctx *c = arg;
    const struct ggml_tensor *b = c->b;
    int64_t n = c->ne11 * b->ne[2];
    for (int64_t r = ith; r < n; r += nth) {
        int64_t i11 = r % c->ne11, i12 = r / c->ne11;
        const float *src = (const float *) ((const char *) b->data + i11 * b->nb[1] + i12 * b->nb[2]);
        c->from_float(src, c->act + (size_t) r * c->act_row, c->ne00);
    }
}

static const float *act_f32(const mm_ctx *c, int k, int t) {
    return (const float *) ((const char *) c->b->data + (size_t) (k % c->ne11) * c->b->nb[1] + (size_t) t * c->b->nb[2]);
}

/* rows r0..r1 of expert e (bytes w) for all of its (k, t) pairs, block_rows rows at a time; 0, or -1 with th->err
   set */
static int expert_rows(mm_ctx *c, mm_thread *th, int e, const char *w, int64_t r0, int64_t r1) {
    const int *pairs = c->pairs + c->start[e];
    const int n_pairs = c->start[e + 1] - c->start[e];
    if (c->quantized) {
        for (int p = 0; p < n_pairs; p++) {
            int k = pairs[p] % c->n_used, t = pairs[p] / c->n_used;
            memcpy(th->gathered + (size_t) p * c->act_row,
                   c->act + (size_t) ((k % c->ne11) + t * c->ne11) * c->act_row, c->act_row);
        }
    } else {
        for (int p = 0; p < n_pairs; p++) {
            int k = pairs[p] % c->n_used, t = pairs[p] / c->n_used;
            memcpy(th->gathered + (size_t) p * c->ne00 * sizeof(float), act_f32(c, k, t), (size_t) c->ne00 * sizeof(float));
        }
    }
    /* the procedure ggml's MUL_MAT_ID picks for an expert with n_pairs rows (all of them, whatever the block) */
    const int tiled = c->kernel && c->kernel->dot_tiled &&
                      (c->tiled_mode == FM_TILED_FORCE || (c->tiled_mode == FM_TILED_ON && n_pairs >= FM_TILED_MIN_ROWS));
    for (int64_t b0 = r0; b0 < r1; b0 += c->block_rows) {
        const int n_rows = (int) (r1 - b0 < c->block_rows ? r1 - b0 : c->block_rows);
        const char *wr = w + (size_t) b0 * c->w_row;
        if (c->kernel) {
            fm_kernel_matmul(c->kernel, c->type, tiled, (int) c->ne00, wr, c->w_row, n_rows, th->gathered,
                             c->act_row, n_pairs, th->out, (size_t) n_rows);
        } else {
            const size_t row = c->quantized ? c->act_row : (size_t) c->ne00 * sizeof(float);
            if (fm_ggml_expert_product(&th->ggml, c->type, c->ne00, wr, c->w_row, n_rows, c->act_type, th->gathered,
                                       row, n_pairs, th->out, th->err, sizeof th->err) != 0)
                return -1;
        }
        /* out is [n_pairs][n_rows]: rows b0 .. b0 + n_rows of each pair's dst column */
        for (int p = 0; p < n_pairs; p++) {
            int k = pairs[p] % c->n_used, t = pairs[p] / c->n_used;
            char *d = (char *) c->dst->data + (size_t) k * c->dst->nb[1] + (size_t) t * c->dst->nb[2];
            memcpy((float *) d + b0, th->out + (size_t) p * (size_t) n_rows, (size_t) n_rows * sizeof(float));
        }
    }
    return 0;
}

/* until the ei-th expert of the wave has arrived: arrivals are registered in order under mu, so only one thread
 * waits on the store at a time; 0, or -1 when the store failed */
static int arrive(mm_ctx *c, int ei) {
    pthread_mutex_lock(&c->mu);
    int n = atomic_load_explicit(&c->n_arrived, memory_order_relaxed);
    while (ei >= n) {
        double tw = fm_now_s();
        int i = fm_store_wait_any(c->s, c->slots, c->done, c->nw);
        c->io_wait += fm_now_s() - tw;
        if (i < 0) {
            atomic_store(&c->failed, 1);
            pthread_mutex_unlock(&c->mu);
            return -1;
        }
        c->done[i] = 1;
        c->order[n++] = i;
        atomic_store_explicit(&c->n_arrived, n, memory_order_release);   /* order[n - 1] is visible with it */
    }
    pthread_mutex_unlock(&c->mu);
    return 0;
}

/* Threads claim work items in order (one atomic counter); a thread whose item belongs to an expert that has not
 * arrived yet waits for it (arrive). Experts already in the cache were registered before the region
 * (run_waves), so a warm node's threads take no lock at all. One parallel region per wave, no barrier per
 * expert. */
static void wave_task(void *arg, int ith, int nth) {
    mm_ctx *c = arg;
    (void) nth;
    for (;;) {
        if (atomic_load_explicit(&c->failed, memory_order_relaxed)) return;
        const int item = atomic_fetch_add_explicit(&c->next_item, 1, memory_order_relaxed);
        if (item >= c->n_items) return;
        const int ei = item / c->cpe;
        if (ei >= atomic_load_explicit(&c->n_arrived, memory_order_acquire) && arrive(c, ei) != 0) return;
        const int wi = c->order[ei];
        const int chunk = item % c->cpe;
        const int64_t r0 = c->ne01 * chunk / c->cpe, r1 = c->ne01 * (chunk + 1) / c->cpe;
        if (r1 <= r0) continue;
        mm_thread *th = &c->th[ith];
        const double t0 = fm_now_s();
        const int rc = expert_rows(c, th, c->uniq[wi], fm_store_data(c->s, c->slots[wi]), r0, r1);
        th->busy += fm_now_s() - t0;
        if (rc != 0) {
            fm_store_set_error(c->s, th->err);
            atomic_store(&c->failed, 1);
            return;
        }
    }
}

/* the node's operands are what ggml's MUL_MAT_ID gives for tensor t; else the store's error is set */
static int check_operands(fm_store *s, const fm_tensor_info *t, const struct ggml_tensor *dst) {
    const struct ggml_tensor *as = dst->src[0], *b = dst->src[1], *ids = dst->src[2];
    char msg[512];
    if (!b || !ids || b->type != GGML_TYPE_F32 || dst->type != GGML_TYPE_F32 || ids->type != GGML_TYPE_I32 ||
        (int) as->type != t->type || as->ne[0] != t->ne0 || as->ne[1] != t->ne1 || as->ne[2] != t->n_expert ||
        b->ne[0] != as->ne[0] || b->nb[0] != sizeof(float) || dst->nb[0] != sizeof(float) ||
        dst->ne[0] != as->ne[1] || dst->ne[1] != ids->ne[0] || dst->ne[2] != ids->ne[1] || b->ne[2] != ids->ne[1] ||
        (b->ne[1] != 1 && b->ne[1] != ids->ne[0])) {
        snprintf(msg, sizeof msg, "unexpected MUL_MAT_ID operands for %s", t->name);
        fm_store_set_error(s, msg);
        return -1;
    }
    const size_t w_row = fm_g.ggml_row_size((enum ggml_type) t->type, t->ne0);
    if (w_row * (size_t) t->ne1 != t->stride) {
        snprintf(msg, sizeof msg, "%s: %s experts are not supported (row size %zu x %lld vs stride %llu)", t->name,
                 fm_g.ggml_type_name((enum ggml_type) t->type), w_row, (long long) t->ne1,
                 (unsigned long long) t->stride);
        fm_store_set_error(s, msg);
        return -1;
    }
    return 0;
}

/* the shapes, and who computes: our kernel when there is one for the type on opts->isa (and ggml's vec_dot_type
   is the one it expects), else ggml's own MUL_MAT_ID */
static void setup(mm_ctx *c, const fm_tensor_info *t, const fm_mm_opts *opts, struct ggml_tensor *dst) {
    const struct ggml_tensor *b = dst->src[1], *ids = dst->src[2];
    c->b = b;
    c->dst = dst;
    c->ne00 = t->ne0;
    c->ne01 = t->ne1;
    c->ne11 = b->ne[1];
    c->n_used = (int) ids->ne[0];
    c->w_row = fm_g.ggml_row_size((enum ggml_type) t->type, c->ne00);
    c->type = t->type;
    c->tiled_mode = opts->tiled;
    c->items_per_thread = opts->items;
    const enum ggml_type vdt = fm_g.ggml_get_type_traits_cpu((enum ggml_type) t->type)->vec_dot_type;
    c->kernel = opts->isa != FM_ISA_GGML ? fm_kernel_get(t->type, opts->isa) : NULL;
    if (c->kernel && (int) vdt != fm_kernel_vec_dot_type(t->type)) c->kernel = NULL;
    /* ggml switches to its tiled arithmetic for such types: a kernel without it cannot give ggml's bits */
    if (c->kernel && fm_kernel_ggml_tiled(t->type) && !c->kernel->dot_tiled) c->kernel = NULL;
    if (c->kernel && c->ne00 % fm_kernel_n_multiple(t->type) != 0) c->kernel = NULL;
    /* the rows in vec_dot_type, quantized once with ggml's from_float (ggml's MUL_MAT_ID would quantize them into
       the same bytes); F32 rows as they are where ggml multiplies in F32 or has no from_float */
    c->from_float = fm_g.ggml_get_type_traits_cpu(vdt)->from_float;
    c->quantized = vdt != GGML_TYPE_F32 && c->from_float != NULL;
    if (c->kernel && !c->quantized) c->kernel = NULL;
    c->act_type = c->quantized ? (int) vdt : GGML_TYPE_F32;
    c->act_row = c->quantized ? fm_g.ggml_row_size(vdt, c->ne00) : (size_t) c->ne00 * sizeof(float);
}

/* the (k, t) pairs grouped by expert, keeping first-seen order of experts: uniq[0..n_uniq) the experts, pairs of
   expert e in pairs[start[e] .. start[e + 1]). Returns n_uniq, or -1 (router chose an expert out of range). */
static int group_by_expert(fm_store *s, const fm_tensor_info *t, const struct ggml_tensor *ids, fm_routing *routing,
                           int *count, int *start, int *pairs, int *uniq) {
    const int n_used = (int) ids->ne[0], n_tok = (int) ids->ne[1], n_exp = t->n_expert;
    const int replay = fm_routing_active(routing, t->index);
    if (replay && fm_routing_k(routing) != n_used) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s: the routing trace has %d experts per token, the model uses %d", t->name,
                 fm_routing_k(routing), n_used);
        fm_store_set_error(s, msg);
        return -1;
    }
    int n_uniq = 0;
    for (int pass = 0; pass < 2; pass++) { /* count, then place */
        for (int tk = 0; tk < n_tok; tk++) {
            for (int k = 0; k < n_used; k++) {
                const int r = replay ? fm_routing_expert(routing, t->index, tk, k) : -1;
                const int e = r >= 0 ? r : *(const int32_t *) ((const char *) ids->data + (size_t) k * ids->nb[0] +
                                                               (size_t) tk * ids->nb[1]);
                if (e < 0 || e >= n_exp) {
                    char msg[256];
                    snprintf(msg, sizeof msg, "%s: router chose expert %d of %d", t->name, e, n_exp);
                    fm_store_set_error(s, msg);
                    return -1;
                }
                if (pass == 0 && count[e]++ == 0) uniq[n_uniq++] = e;
                if (pass == 1) pairs[start[e] + count[e]++] = k + tk * n_used;
            }
        }
        if (pass == 0) {
            for (int e = 0; e < n_exp; e++) start[e + 1] = start[e] + count[e];
            memset(count, 0, (size_t) n_exp * sizeof *count);
        }
    }
    if (replay) fm_routing_advance(routing, t->index, n_tok);
    return n_uniq;
}

/* weight rows per block for an expert of max_pairs pairs: block x max_pairs floats within FM_OUT_CAP, a multiple
   of FM_BLOCK_UNIT and at least that, at most ne01 (the rows a call can ask for) */
static int64_t block_rows(size_t max_pairs, int64_t ne01) {
    size_t r = max_pairs ? FM_OUT_CAP / (max_pairs * sizeof(float)) : FM_OUT_CAP;
    r -= r % FM_BLOCK_UNIT;
    if (r < FM_BLOCK_UNIT) r = FM_BLOCK_UNIT;
    if (ne01 < 1) return 1;
    return (uint64_t) ne01 < r ? ne01 : (int64_t) r;
}

/* per-thread scratch for the largest expert of the node (its activation rows, a block of its results), and the
   block size; 0 or -1 */
static int alloc_threads(mm_ctx *c, int nth, const int *uniq, int n_uniq) {
    size_t max_pairs = 0;
    for (int i = 0; i < n_uniq; i++) {
        const size_t n = (size_t) (c->start[uniq[i] + 1] - c->start[uniq[i]]);
        if (n > max_pairs) max_pairs = n;
    }
    c->block_rows = block_rows(max_pairs, c->ne01);
    const size_t row = c->act_row;
    for (int i = 0; i < nth; i++) {
        c->th[i].gathered = malloc(max_pairs * row + 64);
        c->th[i].out = malloc((size_t) c->block_rows * max_pairs * sizeof(float));
        if (!c->th[i].gathered || !c->th[i].out) return -1;
    }
    return 0;
}

/* whether n experts of the tensor and the same n of each partner tensor fit the store's budget at once (in the
   store's unit: as many of the tensor's experts as their bytes make) */
static int chain_fits(fm_store *s, int tensor, int n) {
    const uint64_t stride = fm_store_tensor(s, tensor)->stride;
    uint64_t bytes = stride;
    for (int p = fm_store_tensor(s, tensor)->partner, hops = 0; p >= 0 && hops < 4;
         p = fm_store_tensor(s, p)->partner, hops++)
        bytes += fm_store_tensor(s, p)->stride;
    if (stride == 0) return 1;
    const uint64_t need = ((uint64_t) n * bytes + stride - 1) / stride;
    if (need > (uint64_t) INT_MAX) return 0;
    return fm_store_wave(s, tensor, (int) need) == (int) need;
}

/* experts uniq[0..n_uniq) in waves the budget holds: acquire (and read ahead the partner tensors' same experts),
   multiply each as it arrives, release. 0, or -1 with the store's error set. */
static int run_waves(mm_ctx *c, fm_pool *pool, int nth, int tensor, int *uniq, int n_uniq, int *slots, char *done,
                     int *order, double *io_wait) {
    fm_store *s = c->s;
    const int wave = fm_store_wave(s, tensor, n_uniq);
    for (int w0 = 0; w0 < n_uniq; w0 += wave) {
        const int nw = n_uniq - w0 < wave ? n_uniq - w0 : wave;
        if (fm_store_acquire(s, tensor, uniq + w0, nw, slots + w0) != 0) return -1;
        /* the same experts of the partner tensors (up, down) are needed next: read them now too. Only when the
           node's experts and their partners' fit the budget together: the prefetch pins them all at once (a
           node that fit alone, with two partners, pinned three times the budget: 213 MB for a 64 MB budget in a
           prompt) */
        if (nw == n_uniq && chain_fits(s, tensor, nw)) {
            for (int p = fm_store_tensor(s, tensor)->partner, hops = 0; p >= 0 && hops < 4;
                 p = fm_store_tensor(s, p)->partner, hops++)
                fm_store_prefetch(s, p, uniq + w0, nw);
        }
        c->uniq = uniq + w0;
        c->slots = slots + w0;
        c->done = done + w0;
        c->order = order;
        c->nw = nw;
        /* split an expert's rows between threads only when there are too few experts to go round */
        const int want = c->items_per_thread * nth;
        c->cpe = nw >= want ? 1 : (want + nw - 1) / nw;
        c->n_items = nw * c->cpe;
        c->io_wait = 0;
        /* what is cached already arrived: registered here, so the region's threads need no lock for it */
        const int ready = fm_store_take_ready(s, c->slots, c->done, nw, c->order);
        if (ready < 0) {
            fm_store_release(s, slots + w0, nw);
            return -1;
        }
        atomic_store(&c->next_item, 0);
        atomic_store(&c->n_arrived, ready);
        atomic_store(&c->failed, 0);
        const double t0 = fm_now_s();
        fm_pool_run(pool, nth, wave_task, c);
        c->region_seconds += fm_now_s() - t0;
        fm_store_release(s, slots + w0, nw);
        *io_wait += c->io_wait;
        if (atomic_load(&c->failed)) return -1;
    }
    return 0;
}

int fm_mul_mat_id(fm_store *s, fm_pool *pool, int n_threads, int tensor, const fm_mm_opts *opts,
                  struct ggml_tensor *dst) {
    const fm_tensor_info *t = fm_store_tensor(s, tensor);
    if (check_operands(s, t, dst) != 0 || fm_store_check_file(s) != 0) return -1;
    const double t_start = fm_now_s();
    double io_wait = 0;
    mm_ctx c;
    memset(&c, 0, sizeof c);
    atomic_init(&c.next_item, 0);
    atomic_init(&c.n_arrived, 0);
    atomic_init(&c.failed, 0);
    c.s = s;
    setup(&c, t, opts, dst);
    pthread_mutex_init(&c.mu, NULL);
    const int n_exp = t->n_expert, n_pairs = c.n_used * (int) dst->src[2]->ne[1];
    int nth = n_threads < fm_pool_threads(pool) ? n_threads : fm_pool_threads(pool);
    if (nth < 1) nth = 1;
    int *count = calloc((size_t) n_exp, sizeof *count);
    int *start = calloc((size_t) n_exp + 1, sizeof *start);
    int *pairs = malloc((size_t) n_pairs * sizeof *pairs);
    int *uniq = malloc((size_t) n_exp * sizeof *uniq);
    int *slots = malloc((size_t) n_exp * sizeof *slots);
    char *done = calloc((size_t) n_exp, 1);
    int *order = malloc((size_t) n_exp * sizeof *order);
    c.th = calloc((size_t) nth, sizeof *c.th);
    if (c.quantized) c.act = malloc((size_t) (c.ne11 * c.b->ne[2]) * c.act_row + 64);
    c.pairs = pairs;
    c.start = start;
    int rc = -1, n_uniq;
    if (!count || !start || !pairs || !uniq || !slots || !done || !order || !c.th || (c.quantized && !c.act)) {
        fm_store_set_error(s, "out of memory in MUL_MAT_ID");
    } else if ((n_uniq = group_by_expert(s, t, dst->src[2], opts->routing, count, start, pairs, uniq)) >= 0) {
        /* the activations are quantized once, for all experts; a decode step's few rows on this thread (a parallel
           region per node costs more than quantizing them: one row for gate and up, K rows for down) */
        if (c.quantized)
            fm_pool_run(pool, c.ne11 * c.b->ne[2] <= FM_QUANTIZE_INLINE_ROWS ? 1 : nth, quantize_task, &c);
        if (alloc_threads(&c, nth, uniq, n_uniq) != 0) fm_store_set_error(s, "out of memory in MUL_MAT_ID");
        else rc = run_waves(&c, pool, nth, tensor, uniq, n_uniq, slots, done, order, &io_wait);
    }
    const double seconds = fm_now_s() - t_start;
    double busy = 0;
    for (int i = 0; c.th && i < nth; i++) busy += c.th[i].busy;
    fm_store_add_compute(s, seconds, io_wait, seconds > c.region_seconds ? seconds - c.region_seconds : 0.0,
                         c.region_seconds * nth, busy);
    free(count);
    free(start);
    free(pairs);
    free(uniq);
    free(slots);
    free(done);
    free(order);
    for (int i = 0; c.th && i < nth; i++) {
        free(c.th[i].gathered);
        free(c.th[i].out);
        fm_ggml_scratch_free(&c.th[i].ggml);
    }
    free(c.th);
    pthread_mutex_destroy(&c.mu);
    free(c.act);
    return rc;
}
