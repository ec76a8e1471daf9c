/* The store's I/O (see fm_io.h). */
#define _GNU_SOURCE
#include "fm_io.h"
#include "fm_clock.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FM_DIRECT_ALIGN 4096u

typedef struct {
    int job, file;
    uint64_t offset;
    size_t len, cap;
    char *buf;
} io_req;

typedef struct {
    char path[4096];
    int fd, fd_direct;
    struct stat st0;
} io_file;

struct fm_io {
    io_file *files;
    int n_files, direct;
    fm_io_done_fn done;
    void *owner;
    pthread_mutex_t mu;
    pthread_cond_t cv;  /* a read was queued, or stop */
    io_req *queue;      /* ring */
    int head, len, cap;
    pthread_t *threads;
    int n_threads, stop;
    uint64_t started;   /* reads taken from the queue */
    uint64_t fault_at;  /* test hook: this read fails (0: none) */
};

/* one request, on an I/O thread without the lock */
static void do_read(fm_io *io, const io_req *q, fm_io_result *r) {
    const io_file *file = &io->files[q->file];
    const int direct = file->fd_direct >= 0;
    const uint64_t start = direct ? q->offset & ~(uint64_t) (FM_DIRECT_ALIGN - 1) : q->offset;
    const size_t span = (size_t) (q->offset + q->len - start);
    const size_t total = direct ? (span + FM_DIRECT_ALIGN - 1) / FM_DIRECT_ALIGN * FM_DIRECT_ALIGN : q->len;
    const int fd = direct ? file->fd_direct : file->fd;
    if (total > q->cap) {
        snprintf(r->detail, sizeof r->detail, "internal error: read buffer too small");
        return;
    }
    size_t done = 0;
    while (done < total) {
        ssize_t n = pread(fd, q->buf + done, total - done, (off_t) (start + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            snprintf(r->detail, sizeof r->detail, "%s", strerror(errno));
            return;
        }
        if (n == 0) {
            if (direct && start + done >= q->offset + q->len) break; /* O_DIRECT tail past EOF */
            r->short_read = 1;
            r->at = start + done;
            return;
        }
        done += (size_t) n;
    }
    r->ok = 1;
    r->data = q->buf + (q->offset - start);
}

static void *io_main(void *arg) {
    fm_io *io = arg;
    pthread_mutex_lock(&io->mu);
    for (;;) {
        while (!io->stop && io->len == 0) pthread_cond_wait(&io->cv, &io->mu);
        if (io->stop) break;
        io_req q = io->queue[io->head];
        io->head = (io->head + 1) % io->cap;
        io->len--;
        io->started++;
        const int fault = io->fault_at && io->started >= io->fault_at;
        pthread_mutex_unlock(&io->mu);
        fm_io_result r;
        memset(&r, 0, sizeof r);
        const double t0 = fm_now_s();
        if (fault) snprintf(r.detail, sizeof r.detail, "%s (injected)", strerror(EIO));
        else do_read(io, &q, &r);
        r.seconds = fm_now_s() - t0;
        io->done(io->owner, q.job, &r);
        pthread_mutex_lock(&io->mu);
    }
    pthread_mutex_unlock(&io->mu);
    return NULL;
}

static int open_file(io_file *f, const char *path, int direct, char *err, size_t err_len) {
    f->fd = f->fd_direct = -1;
    if (snprintf(f->path, sizeof f->path, "%s", path) >= (int) sizeof f->path) {
        snprintf(err, err_len, "path too long");
        return -1;
    }
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0 || fstat(f->fd, &f->st0) != 0) {
        snprintf(err, err_len, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    /* experts are read at random: stop readahead from pulling their neighbours into the page cache */
    posix_fadvise(f->fd, 0, 0, POSIX_FADV_RANDOM);
    if (!direct) return 0;
    /* the same file as fd (the path may name another by now), through /proc where it is mounted */
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", f->fd);
    f->fd_direct = open(self, O_RDONLY | O_CLOEXEC | O_DIRECT);
    if (f->fd_direct < 0 && errno == ENOENT) f->fd_direct = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
    if (f->fd_direct < 0) {
        snprintf(err, err_len, "cannot open %s with O_DIRECT: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(f->fd_direct, &st) != 0 || st.st_dev != f->st0.st_dev || st.st_ino != f->st0.st_ino) {
        snprintf(err, err_len, "%s: the model file was replaced on disk while it was opened", path);
        return -1;
    }
    return 0;
}

fm_io *fm_io_open(const char *const *paths, int n_files, int n_threads, int direct, fm_io_done_fn done, void *owner,
                  char *err, size_t err_len) {
    if (n_threads < 1 || n_threads > 256 || n_files < 1 || n_files > 1024) {
        snprintf(err, err_len, "bad I/O options (%d files, %d threads)", n_files, n_threads);
        return NULL;
    }
    fm_io *io = calloc(1, sizeof *io);
    if (!io || !(io->files = calloc((size_t) n_files, sizeof *io->files))) {
        snprintf(err, err_len, "out of memory");
        free(io);
        return NULL;
    }
    io->done = done;
    io->owner = owner;
    io->direct = direct;
    for (int i = 0; i < n_files; i++) {
        io->n_files = i + 1;
        if (open_file(&io->files[i], paths[i], direct, err, err_len) != 0) {
            fm_io_close(io);
            return NULL;
        }
    }
    io->cap = 4096;
    io->queue = calloc((size_t) io->cap, sizeof *io->queue);
    io->threads = calloc((size_t) n_threads, sizeof *io->threads);
    if (!io->queue || !io->threads || pthread_mutex_init(&io->mu, NULL) || pthread_cond_init(&io->cv, NULL)) {
        snprintf(err, err_len, "out of memory");
        fm_io_close(io);
        return NULL;
    }
    for (int i = 0; i < n_threads; i++) {
        if (pthread_create(&io->threads[i], NULL, io_main, io) != 0) {
            snprintf(err, err_len, "cannot start I/O threads");
            fm_io_close(io);
            return NULL;
        }
        io->n_threads = i + 1;
    }
    return io;
}

void fm_io_close(fm_io *io) {
    if (!io) return;
    if (io->n_threads) {
        pthread_mutex_lock(&io->mu);
        io->stop = 1;
        pthread_cond_broadcast(&io->cv);
        pthread_mutex_unlock(&io->mu);
        for (int i = 0; i < io->n_threads; i++) pthread_join(io->threads[i], NULL);
        pthread_mutex_destroy(&io->mu);
        pthread_cond_destroy(&io->cv);
    }
    for (int i = 0; i < io->n_files; i++) {
        if (io->files[i].fd >= 0) close(io->files[i].fd);
        if (io->files[i].fd_direct >= 0) close(io->files[i].fd_direct);
    }
    free(io->files);
    free(io->queue);
    free(io->threads);
    free(io);
}

int fm_io_n_files(const fm_io *io) {
    return io->n_files;
}

const char *fm_io_path(const fm_io *io, int file) {
    return io->files[file].path;
}

uint64_t fm_io_file_size(const fm_io *io, int file) {
    return (uint64_t) io->files[file].st0.st_size;
}

size_t fm_io_buffer_size(const fm_io *io, size_t len) {
    /* O_DIRECT reads whole aligned blocks: up to one more on each side */
    return io->direct ? len + 2 * FM_DIRECT_ALIGN : len;
}

size_t fm_io_buffer_align(const fm_io *io) {
    (void) io;
    return FM_DIRECT_ALIGN; /* page-aligned either way: expert buffers are large */
}

int fm_io_submit(fm_io *io, int job, int file, uint64_t offset, size_t len, void *buf, size_t cap) {
    pthread_mutex_lock(&io->mu);
    if (io->len == io->cap) {
        int cap2 = 2 * io->cap;
        io_req *nq = malloc((size_t) cap2 * sizeof *nq);
        if (!nq) {
            pthread_mutex_unlock(&io->mu);
            return -1;
        }
        for (int i = 0; i < io->len; i++) nq[i] = io->queue[(io->head + i) % io->cap];
        free(io->queue);
        io->queue = nq;
        io->head = 0;
        io->cap = cap2;
    }
    io->queue[(io->head + io->len) % io->cap] = (io_req){job, file, offset, len, cap, buf};
    io->len++;
    pthread_cond_signal(&io->cv);
    pthread_mutex_unlock(&io->mu);
    return 0;
}

int fm_io_read_now(fm_io *io, int file, uint64_t offset, void *dst, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(io->files[file].fd, (char *) dst + done, len - done, (off_t) (offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        done += (size_t) n;
    }
    return 0;
}

static const char *file_changed(const io_file *f) {
    struct stat a, b;
    if (fstat(f->fd, &a) != 0) return "cannot stat the open model file";
    if (a.st_size != f->st0.st_size) return "the model file changed size on disk (truncated or rewritten)";
    if (stat(f->path, &b) != 0) return "the model file was removed";
    if (b.st_ino != f->st0.st_ino || b.st_dev != f->st0.st_dev) return "the model file was replaced on disk";
    if (b.st_mtim.tv_sec != f->st0.st_mtim.tv_sec || b.st_mtim.tv_nsec != f->st0.st_mtim.tv_nsec)
        return "the model file was modified on disk";
    return NULL;
}

int fm_io_check_file(fm_io *io, char *why, size_t why_len) {
    for (int i = 0; i < io->n_files; i++) {
        const char *w = file_changed(&io->files[i]);
        if (w) {
            snprintf(why, why_len, "%s: %s", io->files[i].path, w);
            return -1;
        }
    }
    return 0;
}

int fm_io_verify_file(const fm_io *io, int file, uint64_t dev, uint64_t ino, uint64_t size, int64_t mtime_ns,
                      char *why, size_t why_len) {
    if (file < 0 || file >= io->n_files) {
        snprintf(why, why_len, "no file %d", file);
        return -1;
    }
    const io_file *f = &io->files[file];
    const int64_t mtime = (int64_t) f->st0.st_mtim.tv_sec * 1000000000 + (int64_t) f->st0.st_mtim.tv_nsec;
    const char *w = NULL;
    if ((uint64_t) f->st0.st_dev != dev || (uint64_t) f->st0.st_ino != ino)
        w = "the model file was replaced on disk after its header was read";
    else if ((uint64_t) f->st0.st_size != size)
        w = "the model file changed size on disk after its header was read (truncated or rewritten)";
    else if (mtime != mtime_ns)
        w = "the model file was modified on disk after its header was read";
    if (!w) return 0;
    snprintf(why, why_len, "%s: %s", f->path, w);
    return -1;
}

void fm_io_inject_fault(fm_io *io, int nth_read) {
    pthread_mutex_lock(&io->mu);
    io->fault_at = nth_read > 0 ? io->started + (uint64_t) nth_read : 0;
    pthread_mutex_unlock(&io->mu);
}
