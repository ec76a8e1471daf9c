/* The Python-facing API (fm_api.h): models, stats, and the expert-skipping FILE* the loader reads from. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fm_build_info.h"
#include "fm_ggml.h"
#include "fm_kernels.h"
#include "fm_model.h"
#include "fm_readahead.h"


int fm_init(const char *lib_dir, char *err, size_t err_len) {
    if (fm_ggml_load(lib_dir, err, err_len) != 0) return -1;
    fm_g.ggml_cpu_init();
    return fm_backend_register(err, err_len);
}

const char *fm_built_ggml_version(void) {
    return FM_GGML_VERSION;
}

int fm_backend_api_version(void) {
    return GGML_BACKEND_API_VERSION;
}

int fm_cpu_isa(void) {
    return fm_kernel_best_isa();
}

int fm_has_kernel(int ggml_type, long long n) {
    const int m = fm_kernel_n_multiple(ggml_type);
    if (m <= 0 || n <= 0 || n % m != 0) return 0;
    for (int isa = fm_kernel_best_isa(); isa >= FM_ISA_SCALAR; --isa) {
        const fm_kernel *k = fm_kernel_get(ggml_type, isa);
        /* the instruction set of the kernel served: AVX-512 hands some types their AVX2 kernel */
        if (k && !(isa > FM_ISA_SCALAR && k == fm_kernel_get(ggml_type, isa - 1))) return isa;
    }
    return 0;
}

int fm_ggml_has_x86_arith(void) {
#if defined(__x86_64__) || defined(__i386__)
    return fm_g.ggml_cpu_has_avx2() && fm_g.ggml_cpu_has_fma();
#else
    return 0;
#endif
}

fm_model *fm_model_new(const char **paths, int n_files, uint64_t budget, int io_threads, int mode, int direct, int isa,
                       int tiled, char *err, size_t err_len) {
    if (isa != FM_ISA_GGML && (isa < FM_ISA_SCALAR || isa > fm_kernel_best_isa())) {
        snprintf(err, err_len, "kernel instruction set %d is not available on this CPU (best: %d)", isa,
                 fm_kernel_best_isa());
        return NULL;
    }
    if (isa != FM_ISA_GGML && !fm_ggml_has_x86_arith()) {
        snprintf(err, err_len, "our kernels reproduce ggml's x86 AVX2 arithmetic, but this llama-cpp-python's "
                 "ggml-cpu was built without AVX2/FMA: use ggml's own code (kernels=False)");
        return NULL;
    }
    if (tiled < FM_TILED_OFF || tiled > FM_TILED_FORCE) {
        snprintf(err, err_len, "bad tiled mode %d", tiled);
        return NULL;
    }
    fm_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    m->store = fm_store_open(paths, n_files, budget, io_threads, mode, direct, err, err_len);
    if (!m->store) {
        free(m);
        return NULL;
    }
    m->mm.isa = isa;
    m->mm.tiled = tiled;
    /* measurement only: work items per thread of a node's region (FM_ITEMS_PER_THREAD unless 1..64 is given) */
    const char *items = getenv("FLASHMOE_ITEMS_PER_THREAD");
    const long per = items ? strtol(items, NULL, 10) : 0;
    m->mm.items = per >= 1 && per <= 64 ? (int) per : FM_ITEMS_PER_THREAD;
    return m;
}

int fm_model_add_tensor(fm_model *m, const char *name, int file, uint64_t offset, uint64_t stride, int n_expert,
                        int type, int64_t ne0, int64_t ne1, char *err, size_t err_len) {
    if (type < 0 || type >= GGML_TYPE_COUNT) {
        snprintf(err, err_len, "%s: unknown ggml type %d", name, type);
        return -1;
    }
    size_t row = fm_g.ggml_row_size((enum ggml_type) type, ne0);
    if (row == 0 || (uint64_t) row * (uint64_t) ne1 != stride) {
        snprintf(err, err_len, "%s: %lld x %lld %s is not %llu bytes per expert", name, (long long) ne1,
                 (long long) ne0, fm_g.ggml_type_name((enum ggml_type) type), (unsigned long long) stride);
        return -1;
    }
    return fm_store_add_tensor(m->store, name, file, offset, stride, n_expert, type, ne0, ne1, err, err_len) < 0 ? -1 : 0;
}

int fm_model_set_partner(fm_model *m, const char *a, const char *b) {
    return fm_store_set_partner(m->store, fm_store_find(m->store, a), fm_store_find(m->store, b));
}

void fm_model_set_expert_block(fm_model *m, int on) {
    m->expert_block = on != 0;
}

int fm_model_begin_load(fm_model *m, char *err, size_t err_len) {
    if (fm_backend_begin_load(m) != 0) {
        snprintf(err, err_len, "this thread is already loading a flashmoe model");
        return -1;
    }
    return 0;
}

int fm_model_end_load(fm_model *m, char *err, size_t err_len) {
    fm_backend_end_load();
    /* first, a file rewritten while llama.cpp read it: what it loaded may mix two files, and whatever else went
       wrong follows from that (the store keeps the error) */
    if (fm_store_check_file(m->store) != 0) {
        fm_store_error(m->store, err, err_len);
        return -1;
    }
    const char *unbound = fm_store_unbound(m->store);
    if (unbound) {
        snprintf(err, err_len, "expert tensor %s was not placed on the flashmoe device "
                 "(llama.cpp chose another buffer type for it)", unbound);
        return -1;
    }
    return 0;
}

int fm_model_verify_file(fm_model *m, int file, uint64_t dev, uint64_t ino, uint64_t size, int64_t mtime_ns,
                         char *err, size_t err_len) {
    if (fm_store_verify_file(m->store, file, dev, ino, size, mtime_ns) == 0) return 0;
    fm_store_error(m->store, err, err_len);
    return -1;
}

void fm_model_free(fm_model *m) {
    if (!m) return;
    fm_store_close(m->store);
    fm_routing_free(m->mm.routing);
    free(m);
}

int fm_model_set_routing(fm_model *m, const int32_t *ids, int n_tok, int n_layer, int k_used, char *err,
                         size_t err_len) {
    fm_routing *r = NULL;
    if (ids) {
        r = fm_routing_new(ids, n_tok, n_layer, k_used, fm_store_n_tensors(m->store), err, err_len);
        if (!r) return -1;
    }
    fm_routing_free(m->mm.routing);
    m->mm.routing = r;
    return 0;
}

int fm_model_route_tensor(fm_model *m, const char *tensor, int layer, char *err, size_t err_len) {
    const int t = fm_store_find(m->store, tensor);
    if (!m->mm.routing || t < 0) {
        snprintf(err, err_len, "%s: %s", tensor, m->mm.routing ? "no such expert tensor" : "no routing trace set");
        return -1;
    }
    return fm_routing_set_layer(m->mm.routing, t, layer, fm_store_tensor(m->store, t)->n_expert, err, err_len);
}

void fm_model_set_budget(fm_model *m, uint64_t budget) {
    fm_store_set_budget(m->store, budget);
}

void fm_model_get_stats(fm_model *m, fm_stats *out) {
    fm_store_get_stats(m->store, out);
}

int fm_model_timeline(fm_model *m, double *out, int max) {
    uint64_t n = m->timeline_n < FM_TIMELINE ? m->timeline_n : FM_TIMELINE;
    if (max < 0) max = 0;
    if (n > (uint64_t) max) n = (uint64_t) max;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t k = (m->timeline_n - n + i) % FM_TIMELINE;
        out[2 * i] = m->timeline[2 * k];
        out[2 * i + 1] = m->timeline[2 * k + 1];
    }
    m->timeline_n = 0;
    return (int) n;
}

int fm_model_error(fm_model *m, char *buf, size_t len) {
    return fm_store_error(m->store, buf, len);
}

void fm_model_inject_read_error(fm_model *m, int nth_read) {
    fm_store_inject_read_error(m->store, nth_read);
}

int fm_model_access(fm_model *m, const char *tensor, const int *experts, int n, char *err, size_t err_len) {
    fm_store *s = m->store;
    int t = fm_store_find(s, tensor);
    if (t < 0 || n <= 0 || n > fm_store_tensor(s, t)->n_expert) {
        snprintf(err, err_len, "fm_model_access: unknown tensor %s or bad count %d", tensor, n);
        return -1;
    }
    int *slots = malloc((size_t) n * sizeof *slots);
    char *done = calloc((size_t) n, 1);
    int rc = -1;
    if (!slots || !done) {
        snprintf(err, err_len, "out of memory");
        goto out;
    }
    if (fm_store_acquire(s, t, experts, n, slots) != 0) {
        fm_model_error(m, err, err_len);
        goto out;
    }
    rc = 0;
    for (int left = n; left > 0; left--) {
        int i = fm_store_wait_any(s, slots, done, n);
        if (i < 0) {
            fm_model_error(m, err, err_len);
            rc = -1;
            break;
        }
        done[i] = 1;
    }
    fm_store_release(s, slots, n);
out:
    free(slots);
    free(done);
    return rc;
}

uint64_t fm_model_dropped_bytes(fm_model *m) {
    return m->dropped;
}

/* ---- the FILE* the loader reads: a stream of segments (flashmoe_gguf/load_plan.py) ------------------------- */

typedef struct {
    uint64_t start, len, src_off;
    uint64_t order;   /* when llama.cpp is expected to read it (load_plan.read_order): a rank, not a position */
    int kind, src;
    int run;          /* FM_SEG_FILE: its run (seg_run), else -1 */
} segment;

/* consecutive FILE segments of one read order that are one range of one file (a layer's non-expert tensors and
   their padding): the loader's chunks are a grid over the run, so one chunk serves several tensors in whatever
   order llama.cpp asks */
typedef struct {
    int src;
    uint64_t lo, hi;  /* [lo, hi) of file src */
    uint64_t order;   /* its segments' read order */
    int id;           /* its place in the stream (runs are sorted by read order, then by this) */
} seg_run;

typedef struct {
    int *fds;
    int n_fds;
    const char *blob; /* owned copy */
    size_t blob_len;
    segment *segs;    /* sorted, contiguous from 0 */
    int n;
    seg_run *runs;    /* in the order llama.cpp is expected to read them */
    int n_runs;
    uint64_t pos, size;
    uint64_t *bytes_read; /* caller's counter */
    char **paths;         /* owned copies, for read_err */
    char *read_err;       /* caller's buffer: the first read error, "" while none */
    size_t read_err_len;
    int *dfds;            /* the same files opened with O_DIRECT (through /proc/self/fd), or -1 where refused */
    char *iobuf;          /* the FILE's buffer (setvbuf) */
    fm_readahead *ra;     /* the chunks' reader (fm_readahead.h), made on first use */
    int ra_failed;        /* ... could not be made: everything is read with seg_pread */
    int no_hints;         /* measurements only (FLASHMOE_READAHEAD=0): chunks read when asked, none ahead */
    const char *chunk;    /* the last chunk read (a buffer of ra) */
    int chunk_src;        /* its file, or -1 while it holds nothing */
    uint64_t chunk_off;   /* its file offset */
    uint64_t chunk_len;   /* bytes in it */
} seg_file;

/* How the non-expert bytes are read. glibc's cookie FILE reads through its buffer (a read never passes through
   whole) and drops that buffer at every seek, so llama.cpp's tensor-by-tensor reads arrive here as buffer-sized
   pieces, and the same bytes again after each seek. Read alone, that is one small synchronous read at a time:
   with glibc's default 8 KiB buffer a cold 0.84 GB of weights took 102,000 preads at ~150 MB/s on a disk that
   streams 1.2 GB/s. So the file is read here in large aligned chunks, with O_DIRECT where the file system allows
   it (no second copy of the resident weights in the page cache, which a memory limit would count), each chunk
   kept until a read falls outside it; a chunk never extends past the file range of the segment it serves, so
   no expert byte is read (up to the 4 KiB alignment at its edges). Chunks are a grid over each run of segments
   (seg_run); while llama.cpp copies from one, fm_readahead's thread reads the rest of the run and the next run's
   first chunks, and keeps a few chunks taken (llama.cpp reads a layer's tensors in its own order, not the file's).
   "Next" is in the order llama.cpp reads the runs (load_plan.read_order: the model's own tensors, then layer by
   layer), not the file's, where the output head may come last: read ahead in file order, the chunks after the
   embeddings (layer 0's) were read, dropped while llama.cpp read the head, and read again (5 % of a 48-layer
   model's non-expert bytes). Reading starts when the FILE is opened, while llama.cpp parses the header. */
#define FM_CHUNK (8u << 20)        /* bytes per read from the file */
#define FM_CHUNK_SLOTS 64          /* chunks fm_readahead may hold ... */
#define FM_CHUNK_BUDGET (48u << 20) /* ... in so many bytes */
#define FM_READ_AHEAD 4            /* chunks asked for ahead of the one being copied */
#define FM_DIRECT_ALIGN 4096u      /* offset, length and buffer alignment O_DIRECT needs */
#define FM_IOBUF (8u << 10)        /* the FILE's buffer: the pieces sf_read is asked for, and what it re-reads
                                      around a seek (glibc reads a buffer's worth past what was asked) */

static void note_read_error(seg_file *f, int src, uint64_t at, ssize_t n, int e) {
    if (f->read_err && f->read_err_len && !f->read_err[0]) {
        if (n == 0)
            snprintf(f->read_err, f->read_err_len,
                     "%s: the file ended at byte %llu while loading (truncated or rewritten on disk?)", f->paths[src],
                     (unsigned long long) at);
        else
            snprintf(f->read_err, f->read_err_len, "%s: read error while loading (at byte %llu): %s", f->paths[src],
                     (unsigned long long) at, strerror(e));
    }
    errno = n == 0 ? EIO : e; /* n == 0: the file is shorter than when it was indexed */
}

/* [off, off + len) of file src into dst; on failure, -1 with the first failure described in f->read_err (llama.cpp
   only sees a failed fread, and its message does not reach the user) */
static int seg_pread(seg_file *f, int src, char *dst, uint64_t len, uint64_t off) {
    uint64_t done = 0;
    while (done < len) {
        ssize_t n = pread(f->fds[src], dst + done, (size_t) (len - done), (off_t) (off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            note_read_error(f, src, off + done, n, errno);
            return -1;
        }
        done += (uint64_t) n;
    }
    return 0;
}

/* Reads [a, a + n) of file src (a, n aligned) into a chunk, until n bytes or the end of the file (fm_readahead
   reads O_DIRECT where allowed). 0, or -1 with the error noted (nothing read at all: the file ends at a). */
static int fill_chunk(seg_file *f, int src, uint64_t a, size_t n) {
    f->chunk_src = -1;
    fm_read_result res;
    const char *p = fm_readahead_take(f->ra, f->fds[src], f->dfds[src], a, n, &res);
    if (res.direct_refused && f->dfds[src] >= 0) { /* O_DIRECT refused here: buffered from now on */
        close(f->dfds[src]);
        f->dfds[src] = -1;
    }
    if (!p) {
        note_read_error(f, src, a + res.got, res.err ? -1 : 0, res.err);
        return -1;
    }
    f->chunk = p;
    f->chunk_src = src;
    f->chunk_off = a;
    f->chunk_len = res.got;
    return 0;
}

/* the run's first byte and its end, 4 KiB-aligned outwards: the chunk grid starts at the first */
static uint64_t run_base(const seg_run *r) {
    return r->lo & ~(uint64_t) (FM_DIRECT_ALIGN - 1);
}

static uint64_t run_end(const seg_run *r) {
    return (r->hi + FM_DIRECT_ALIGN - 1) & ~(uint64_t) (FM_DIRECT_ALIGN - 1);
}

static uint64_t run_n_chunks(const seg_run *r) {
    return (run_end(r) - run_base(r) + FM_CHUNK - 1) / FM_CHUNK;
}

/* chunk i < run_n_chunks(r) of run r: [*a, *a + returned length) of its file */
static size_t run_chunk(const seg_run *r, uint64_t i, uint64_t *a) {
    *a = run_base(r) + i * FM_CHUNK;
    const uint64_t end = run_end(r);
    return end - *a < FM_CHUNK ? (size_t) (end - *a) : FM_CHUNK;
}

/* the chunks the loader will most likely ask for after chunk `at` of run `run`: the rest of that run (and its chunks
   before `at`, if the reader can hold the run), then the following runs (in read order) from their start;
   FM_READ_AHEAD of them are asked of the reader */
static void read_ahead(seg_file *f, int run, uint64_t at) {
    int asked = 0;
    for (int r = run; r < f->n_runs && asked < FM_READ_AHEAD; r++) {
        const seg_run *q = &f->runs[r];
        const uint64_t n_chunks = run_n_chunks(q);
        /* a run the reader holds whole is read around: llama.cpp may ask for its chunks in any order */
        const int around = r == run && n_chunks <= FM_READ_AHEAD;
        for (uint64_t k = 0; k < n_chunks && asked < FM_READ_AHEAD; k++) {
            uint64_t i = r == run ? at + 1 + k : k;
            if (around) i %= n_chunks;
            if (i >= n_chunks || (r == run && i == at)) continue;
            uint64_t a;
            const size_t n = run_chunk(q, i, &a);
            if (!fm_readahead_hint(f->ra, f->fds[q->src], f->dfds[q->src], a, n)) return;
            asked++;
        }
    }
}

/* the chunks' reader, made on first use; NULL where it cannot be (everything is then read with seg_pread) */
static fm_readahead *reader(seg_file *f) {
    if (!f->ra && !f->ra_failed && !(f->ra = fm_readahead_new(FM_CHUNK_SLOTS, FM_CHUNK, FM_CHUNK_BUDGET,
                                                               FM_DIRECT_ALIGN, f->bytes_read)))
        f->ra_failed = 1;
    return f->ra;
}

/* [off, off + len) of segment s's file into dst, from the chunk, reading chunks within the segment's range */
static int seg_read_file(seg_file *f, const segment *s, char *dst, uint64_t len, uint64_t off) {
    const int src = s->src;
    const seg_run *run = &f->runs[s->run];
    if (!reader(f)) {
        if (seg_pread(f, src, dst, len, off) != 0) return -1;
        if (f->bytes_read) *f->bytes_read += len;
        return 0;
    }
    while (len > 0) {
        if (f->chunk_src != src || off < f->chunk_off || off >= f->chunk_off + f->chunk_len) {
            const uint64_t i = (off - run_base(run)) / FM_CHUNK;   /* off is within the run: i < its chunks */
            uint64_t a = 0;
            const size_t n = run_chunk(run, i, &a);
            if (fill_chunk(f, src, a, n) != 0) return -1;
            if (off >= f->chunk_off + f->chunk_len) { /* the file ends before off */
                note_read_error(f, src, f->chunk_off + f->chunk_len, 0, 0);
                return -1;
            }
            if (!f->no_hints) read_ahead(f, s->run, i);
        }
        const uint64_t in = off - f->chunk_off, take = f->chunk_len - in < len ? f->chunk_len - in : len;
        memcpy(dst, f->chunk + in, (size_t) take);
        dst += take;
        off += take;
        len -= take;
    }
    return 0;
}

/* the bytes [p, p + len) of segment s into dst; SKIP leaves dst as it is (expert bytes: never read) */
static int seg_copy(seg_file *f, const segment *s, char *dst, uint64_t p, uint64_t len, int first) {
    const uint64_t in = p - s->start;
    switch (s->kind) {
    case FM_SEG_BLOB: memcpy(dst, f->blob + s->src_off + in, (size_t) len); return 0;
    case FM_SEG_ZERO: memset(dst, 0, (size_t) len); return 0;
    case FM_SEG_SKIP: return 0;
    default:
        /* a later segment of one call is the tail of glibc's buffer, which llama.cpp may never read: exactly it,
           keeping the chunk of the segment being read */
        if (!first) {
            if (seg_pread(f, s->src, dst, len, s->src_off + in) != 0) return -1;
            if (f->bytes_read) *f->bytes_read += len;
            return 0;
        }
        return seg_read_file(f, s, dst, len, s->src_off + in);
    }
}

static ssize_t sf_read(void *cookie, char *buf, size_t size) {
    seg_file *f = cookie;
    if (f->pos >= f->size) return 0;
    const uint64_t end = f->pos + size < f->size ? f->pos + size : f->size;
    int lo = 0, hi = f->n - 1; /* the segment holding pos */
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (f->segs[mid].start <= f->pos) lo = mid;
        else hi = mid - 1;
    }
    for (uint64_t p = f->pos; p < end; lo++) {
        const segment *s = &f->segs[lo];
        const uint64_t stop = s->start + s->len < end ? s->start + s->len : end;
        if (seg_copy(f, s, buf + (p - f->pos), p, stop - p, p == f->pos) != 0) return -1;
        p = stop;
    }
    const size_t got = (size_t) (end - f->pos);
    f->pos = end;
    return (ssize_t) got;
}

static int sf_seek(void *cookie, off64_t *offset, int whence) {
    seg_file *f = cookie;
    int64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? (int64_t) f->pos : (int64_t) f->size;
    int64_t np = base + *offset;
    if (np < 0) {
        errno = EINVAL;
        return -1;
    }
    f->pos = (uint64_t) np;
    *offset = np;
    return 0;
}

static int sf_close(void *cookie) {
    seg_file *f = cookie;
    int rc = 0;
    fm_readahead_free(f->ra); /* first: its thread may be reading from the files */
    for (int i = 0; i < f->n_fds; i++) {
        if (f->fds && f->fds[i] >= 0 && close(f->fds[i]) != 0) rc = -1;
        if (f->dfds && f->dfds[i] >= 0) close(f->dfds[i]);
        if (f->paths) free(f->paths[i]);
    }
    free(f->fds);
    free(f->dfds);
    free(f->iobuf); /* fclose calls sf_close last: glibc does not touch a caller's buffer after that */
    free(f->paths);
    free((void *) f->blob);
    free(f->segs);
    free(f->runs);
    free(f);
    return rc;
}

/* the segments are contiguous from 0, each within its source */
static int check_segments(seg_file *f, const struct stat *st, char *err, size_t err_len) {
    uint64_t pos = 0;
    for (int i = 0; i < f->n; i++) {
        const segment *s = &f->segs[i];
        const int file = s->kind == FM_SEG_FILE || s->kind == FM_SEG_SKIP;
        const int bad = s->start != pos || s->kind < FM_SEG_BLOB || s->kind > FM_SEG_SKIP ||
                        (file && (s->src < 0 || s->src >= f->n_fds ||
                                  s->src_off + s->len > (uint64_t) st[s->src].st_size || s->src_off + s->len < s->len)) ||
                        (s->kind == FM_SEG_BLOB && (s->src_off > f->blob_len || s->len > f->blob_len - s->src_off));
        if (bad && file && s->src >= 0 && s->src < f->n_fds && s->src_off + s->len > (uint64_t) st[s->src].st_size) {
            snprintf(err, err_len, "%s: the file is shorter than when it was indexed (truncated or rewritten on disk?)",
                     f->paths[s->src]);
            return -1;
        }
        if (bad) {
            snprintf(err, err_len, "bad load segment %d (the model files changed since they were indexed?)", i);
            return -1;
        }
        pos += s->len;
    }
    f->size = pos;
    return 0;
}

static int run_cmp(const void *a, const void *b) {
    const seg_run *x = a, *y = b;
    if (x->order != y->order) return x->order < y->order ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* the runs of FILE segments (check_segments first: each within its file), in read order */
static int make_runs(seg_file *f) {
    f->runs = malloc((size_t) f->n * sizeof *f->runs);
    int *moved = malloc((size_t) f->n * sizeof *moved);
    if (!f->runs || !moved) {
        free(moved);
        return -1;
    }
    f->n_runs = 0;
    for (int i = 0; i < f->n; i++) {
        segment *s = &f->segs[i];
        s->run = -1;
        if (s->kind != FM_SEG_FILE) continue;
        seg_run *last = f->n_runs ? &f->runs[f->n_runs - 1] : NULL;
        if (!(last && i > 0 && f->segs[i - 1].kind == FM_SEG_FILE && last->src == s->src && last->hi == s->src_off &&
              last->order == s->order)) {
            f->runs[f->n_runs] = (seg_run){s->src, s->src_off, s->src_off, s->order, f->n_runs};
            f->n_runs++;
        }
        f->runs[f->n_runs - 1].hi = s->src_off + s->len;
        s->run = f->n_runs - 1;
    }
    qsort(f->runs, (size_t) f->n_runs, sizeof *f->runs, run_cmp);
    for (int r = 0; r < f->n_runs; r++) moved[f->runs[r].id] = r;
    for (int i = 0; i < f->n; i++)
        if (f->segs[i].run >= 0) f->segs[i].run = moved[f->segs[i].run];
    free(moved);
    return 0;
}

void *fm_open_segments(const char **paths, int n_paths, const char *blob, size_t blob_len, const uint64_t *segs,
                       int n_segs, uint64_t *bytes_read, char *read_err, size_t read_err_len, char *err,
                       size_t err_len) {
    seg_file *f = calloc(1, sizeof *f);
    struct stat *st = calloc((size_t) (n_paths > 0 ? n_paths : 1), sizeof *st);
    if (!f || !st || n_paths < 1 || n_segs < 1) {
        snprintf(err, err_len, n_paths < 1 || n_segs < 1 ? "nothing to load" : "out of memory");
        free(f);
        free(st);
        return NULL;
    }
    f->fds = malloc((size_t) n_paths * sizeof *f->fds);
    f->dfds = malloc((size_t) n_paths * sizeof *f->dfds);
    f->paths = calloc((size_t) n_paths, sizeof *f->paths);
    f->segs = malloc((size_t) n_segs * sizeof *f->segs);
    f->blob = malloc(blob_len ? blob_len : 1);
    for (int i = 0; i < n_paths; i++) {
        if (f->fds) f->fds[i] = -1;
        if (f->dfds) f->dfds[i] = -1;
    }
    f->n_fds = n_paths;
    if (!f->fds || !f->dfds || !f->paths || !f->segs || !f->blob) {
        snprintf(err, err_len, "out of memory");
        goto fail;
    }
    f->read_err = read_err;
    f->read_err_len = read_err_len;
    if (read_err && read_err_len) read_err[0] = '\0';
    for (int i = 0; i < n_paths; i++) {
        if (!(f->paths[i] = strdup(paths[i]))) {
            snprintf(err, err_len, "out of memory");
            goto fail;
        }
        f->fds[i] = open(paths[i], O_RDONLY | O_CLOEXEC);
        if (f->fds[i] < 0 || fstat(f->fds[i], &st[i]) != 0) {
            snprintf(err, err_len, "cannot open %s: %s", paths[i], strerror(errno));
            goto fail;
        }
        /* no readahead: it would pull the expert ranges next to what we read into the page cache */
        posix_fadvise(f->fds[i], 0, 0, POSIX_FADV_RANDOM);
        /* the same open file again for O_DIRECT (the same inode, whatever happens to the path meanwhile); where
           the file system refuses O_DIRECT, everything is read through fds[i] */
        char self[64];
        snprintf(self, sizeof self, "/proc/self/fd/%d", f->fds[i]);
        f->dfds[i] = open(self, O_RDONLY | O_CLOEXEC | O_DIRECT);
    }
    f->chunk_src = -1;
    memcpy((void *) f->blob, blob, blob_len);
    f->blob_len = blob_len;
    f->n = n_segs;
    for (int i = 0; i < n_segs; i++) {
        const uint64_t *q = segs + 6 * (size_t) i;
        f->segs[i] = (segment){q[0], q[1], q[4], q[5], (int) q[2], (int) q[3], -1};
    }
    f->bytes_read = bytes_read;
    const char *ra = getenv("FLASHMOE_READAHEAD");
    f->no_hints = ra && strcmp(ra, "0") == 0;
    if (check_segments(f, st, err, err_len) != 0) goto fail;
    if (make_runs(f) != 0) {
        snprintf(err, err_len, "out of memory");
        goto fail;
    }
    free(st);
    /* the first chunks are read while llama.cpp parses the header and the vocabulary (chunk "before the first" of
       the first run in read order: at + 1 wraps to 0) */
    if (!f->no_hints && f->n_runs > 0 && reader(f)) read_ahead(f, 0, UINT64_MAX);
    cookie_io_functions_t io = {.read = sf_read, .write = NULL, .seek = sf_seek, .close = sf_close};
    FILE *fp = fopencookie(f, "rb", io);
    if (!fp) {
        snprintf(err, err_len, "fopencookie failed: %s", strerror(errno));
        sf_close(f);
        return NULL;
    }
    /* GGUF parsing makes many tiny reads (of the header, in memory: load_plan.py); a buffer keeps each from being a
       call here. Tensor bytes come through it in FM_IOBUF pieces, served from the chunk (seg_read_file). */
    f->iobuf = malloc(FM_IOBUF);
    if (f->iobuf) setvbuf(fp, f->iobuf, _IOFBF, FM_IOBUF);
    return fp;
fail:
    free(st);
    sf_close(f);
    return NULL;
}

int fm_close_file(void *file) {
    return fclose((FILE *) file);
}
