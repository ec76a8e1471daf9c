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

int fm_ggml_has_x86_arith(void) {
#if defined(__x86_64__) || defined(__i386__)
    return fm_g.ggml_cpu_has_avx2() && fm_g.ggml_cpu_has_fma();
#else
    return 0;
#endif
}

fm_model *fm_model_new(const char *path, uint64_t budget, int io_threads, int mode, int direct, int isa, int tiled,
                       char *err, size_t err_len) {
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
    m->store = fm_store_open(path, budget, io_threads, mode, direct, err, err_len);
    if (!m->store) {
        free(m);
        return NULL;
    }
    m->mm.isa = isa;
    m->mm.tiled = tiled;
    return m;
}

int fm_model_add_tensor(fm_model *m, const char *name, uint64_t offset, uint64_t stride, int n_expert, int type,
                        int64_t ne0, int64_t ne1, char *err, size_t err_len) {
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
    return fm_store_add_tensor(m->store, name, offset, stride, n_expert, type, ne0, ne1, err, err_len) < 0 ? -1 : 0;
}

int fm_model_set_partner(fm_model *m, const char *a, const char *b) {
    return fm_store_set_partner(m->store, fm_store_find(m->store, a), fm_store_find(m->store, b));
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
    const char *unbound = fm_store_unbound(m->store);
    if (unbound) {
        snprintf(err, err_len, "expert tensor %s was not placed on the flashmoe device "
                 "(llama.cpp chose another buffer type for it)", unbound);
        return -1;
    }
    return 0;
}

void fm_model_free(fm_model *m) {
    if (!m) return;
    fm_store_close(m->store);
    free(m);
}

void fm_model_get_stats(fm_model *m, fm_stats *out) {
    fm_store_get_stats(m->store, out);
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

/* ---- the expert-skipping FILE* ------------------------------------------------------------------------ */

typedef struct {
    int fd;
    uint64_t pos, size;
    uint64_t *ranges; /* sorted [begin, end) pairs */
    int n;
    uint64_t *bytes_read; /* caller's counter */
} skip_file;

static ssize_t sf_read(void *cookie, char *buf, size_t size) {
    skip_file *f = cookie;
    if (f->pos >= f->size) return 0;
    uint64_t end = f->pos + size < f->size ? f->pos + size : f->size;
    uint64_t p = f->pos;
    int r = 0;
    while (r < f->n && f->ranges[2 * r + 1] <= p) r++;
    while (p < end) {
        uint64_t stop = end;
        int skipping = r < f->n && f->ranges[2 * r] <= p;
        if (skipping) {
            if (f->ranges[2 * r + 1] < stop) stop = f->ranges[2 * r + 1];
            /* expert bytes: not read (the buffer is left as it is); the loader discards them in set_tensor */
            p = stop;
            r++;
            continue;
        }
        if (r < f->n && f->ranges[2 * r] < stop) stop = f->ranges[2 * r];
        while (p < stop) {
            ssize_t n = pread(f->fd, buf + (p - f->pos), (size_t) (stop - p), (off_t) p);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                if (n == 0) errno = EIO;
                return -1;
            }
            p += (uint64_t) n;
            if (f->bytes_read) *f->bytes_read += (uint64_t) n;
        }
    }
    size_t got = (size_t) (end - f->pos);
    f->pos = end;
    return (ssize_t) got;
}

static int sf_seek(void *cookie, off64_t *offset, int whence) {
    skip_file *f = cookie;
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
    skip_file *f = cookie;
    int rc = close(f->fd);
    free(f->ranges);
    free(f);
    return rc;
}

static int cmp_range(const void *a, const void *b) {
    uint64_t x = ((const uint64_t *) a)[0], y = ((const uint64_t *) b)[0];
    return x < y ? -1 : x > y;
}

void *fm_open_file_skipping(const char *path, const uint64_t *ranges, int n_ranges, uint64_t *bytes_read,
                            char *err, size_t err_len) {
    skip_file *f = calloc(1, sizeof *f);
    if (!f || n_ranges < 0) {
        free(f);
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (f->fd < 0 || fstat(f->fd, &st) != 0) {
        snprintf(err, err_len, "cannot open %s: %s", path, strerror(errno));
        if (f->fd >= 0) close(f->fd);
        free(f);
        return NULL;
    }
    f->size = (uint64_t) st.st_size;
    f->bytes_read = bytes_read;
    /* no readahead: it would pull the expert ranges next to what we read into the page cache */
    posix_fadvise(f->fd, 0, 0, POSIX_FADV_RANDOM);
    f->n = n_ranges;
    f->ranges = malloc((size_t) (n_ranges ? n_ranges : 1) * 2 * sizeof(uint64_t));
    if (!f->ranges) {
        close(f->fd);
        free(f);
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    if (n_ranges) memcpy(f->ranges, ranges, (size_t) n_ranges * 2 * sizeof(uint64_t));
    qsort(f->ranges, (size_t) n_ranges, 2 * sizeof(uint64_t), cmp_range);
    for (int i = 0; i < n_ranges; i++) {
        if (f->ranges[2 * i] > f->ranges[2 * i + 1] || (i && f->ranges[2 * i] < f->ranges[2 * i - 1])) {
            snprintf(err, err_len, "overlapping or inverted expert ranges");
            sf_close(f);
            return NULL;
        }
    }
    cookie_io_functions_t io = {.read = sf_read, .write = NULL, .seek = sf_seek, .close = sf_close};
    FILE *fp = fopencookie(f, "rb", io);
    if (!fp) {
        snprintf(err, err_len, "fopencookie failed: %s", strerror(errno));
        sf_close(f);
        return NULL;
    }
    /* GGUF parsing makes many tiny reads: a buffer keeps them from becoming syscalls */
    setvbuf(fp, NULL, _IOFBF, 1 << 20);
    return fp;
}

int fm_close_file(void *file) {
    return fclose((FILE *) file);
}
