/* An LD_PRELOAD shim that makes I/O on chosen files fail or come back short, for tests/test_io_faults.py.
 *
 * It wraps read, pread, pread64, preadv, preadv64, preadv2, preadv64v2 (the "read" calls; CPython's os.preadv is
 * preadv64v2) and write, pwrite, pwrite64 (the "write" calls) as a program calls them through the C library's
 * dynamic symbols (CPython's os and io modules, our extension's preads, the ggml loader's reads through our FILE*);
 * calls the C library makes internally (stdio's own reads) are not seen. The configuration comes from the
 * environment, read once:
 *
 *   FAULTSHIM_PATH    a substring of the file's path (/proc/self/fd/N); no fault without it
 *   FAULTSHIM_CALLS   "read", "pread" (the positional ones only) or "write": which calls are faulted (default read)
 *   FAULTSHIM_FAULT   EIO, ENOSPC or EINTR (the call fails with that errno), "short" (a read returns half of what
 *                     it would have, at least one byte; with O_DIRECT whole 4 KiB blocks), "eof" (a read returns 0)
 *   FAULTSHIM_FIRST   the first matching call that is faulted, counted from 1 (default 1)
 *   FAULTSHIM_TIMES   how many matching calls from there are faulted (default 0: all)
 *   FAULTSHIM_RANGE   "START-END": only calls whose bytes overlap [START, END) of the file count (the file offset of
 *                     read/write is taken from lseek)
 *   FAULTSHIM_LIMIT   for writes: the bytes the matching files may take in all, as on a disk with that much
 *                     space: the write that crosses it is short, the next ones fail with ENOSPC (FAULTSHIM_FAULT is
 *                     not needed)
 *   FAULTSHIM_ARMED   0: nothing is faulted until the program calls faultshim_arm(1) (ctypes.CDLL(None))
 *
 * faultshim_faults() says how many calls were faulted. C11; thread-safe (the configuration is published once through
 * an atomic, the counters are atomics). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { F_NONE, F_ERRNO, F_SHORT, F_EOF };

static struct {
    int ready, is_write, positional, kind, err;
    const char *path;
    long long first, times, limit;
    unsigned long long lo, hi;
} cfg;
static atomic_int cfg_state;         /* 0: unread, 1: being read, 2: ready */
static atomic_int armed = 1;
static atomic_llong matched, faulted, written;

static long long env_ll(const char *name, long long dflt) {
    const char *v = getenv(name);
    return v && *v ? strtoll(v, NULL, 0) : dflt;
}

static void configure(void) {
    int expect = 0;
    if (atomic_load(&cfg_state) == 2) return;
    if (!atomic_compare_exchange_strong(&cfg_state, &expect, 1)) {
        while (atomic_load(&cfg_state) != 2) {
        }
        return;
    }
    cfg.path = getenv("FAULTSHIM_PATH");
    const char *calls = getenv("FAULTSHIM_CALLS");
    cfg.is_write = calls && strcmp(calls, "write") == 0;
    cfg.positional = calls && strcmp(calls, "pread") == 0;
    const char *fault = getenv("FAULTSHIM_FAULT");
    cfg.kind = F_NONE;
    if (fault) {
        if (strcmp(fault, "EIO") == 0) cfg.kind = F_ERRNO, cfg.err = EIO;
        else if (strcmp(fault, "ENOSPC") == 0) cfg.kind = F_ERRNO, cfg.err = ENOSPC;
        else if (strcmp(fault, "EINTR") == 0) cfg.kind = F_ERRNO, cfg.err = EINTR;
        else if (strcmp(fault, "short") == 0) cfg.kind = F_SHORT;
        else if (strcmp(fault, "eof") == 0) cfg.kind = F_EOF;
    }
    cfg.first = env_ll("FAULTSHIM_FIRST", 1);
    cfg.times = env_ll("FAULTSHIM_TIMES", 0);
    cfg.limit = env_ll("FAULTSHIM_LIMIT", -1);
    cfg.lo = 0;
    cfg.hi = UINT64_MAX;
    const char *range = getenv("FAULTSHIM_RANGE");
    if (range && *range) {
        char *end;
        cfg.lo = strtoull(range, &end, 0);
        if (*end == '-') cfg.hi = strtoull(end + 1, NULL, 0);
    }
    const char *arm = getenv("FAULTSHIM_ARMED");
    atomic_store(&armed, !(arm && strcmp(arm, "0") == 0));
    cfg.ready = cfg.path && *cfg.path;
    atomic_store(&cfg_state, 2);
}

int faultshim_arm(int on) {
    configure();
    return atomic_exchange(&armed, on);
}

long long faultshim_faults(void) {
    return atomic_load(&faulted);
}

/* whether fd is one of the files named by FAULTSHIM_PATH and [off, off + len) overlaps the range */
static int matches(int fd, long long off, size_t len) {
    configure();
    if (!cfg.ready || fd < 0) return 0;
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    const int saved = errno;
    const ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) {
        errno = saved;
        return 0;
    }
    target[n] = '\0';
    if (!strstr(target, cfg.path)) {
        errno = saved;
        return 0;
    }
    if (off < 0) off = (long long) lseek(fd, 0, SEEK_CUR);
    errno = saved;
    if (off >= 0 && ((unsigned long long) off >= cfg.hi || (unsigned long long) off + len <= cfg.lo)) return 0;
    return 1;
}

/* 1 if this matching call is to be faulted */
static int take(void) {
    if (!atomic_load(&armed)) return 0;
    const long long k = atomic_fetch_add(&matched, 1) + 1;
    if (k < cfg.first || (cfg.times > 0 && k >= cfg.first + cfg.times)) return 0;
    return 1;
}

/* the C library's functions, resolved when the shim is loaded (before any thread exists) */
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_pread)(int, void *, size_t, off_t);
static ssize_t (*real_pread64)(int, void *, size_t, off_t);
static ssize_t (*real_preadv)(int, const struct iovec *, int, off_t);
static ssize_t (*real_preadv64)(int, const struct iovec *, int, off_t);
static ssize_t (*real_preadv2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_preadv64v2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);

#define RESOLVE(name) (real_##name = (__typeof__(real_##name)) dlsym(RTLD_NEXT, #name))

__attribute__((constructor)) static void resolve(void) {
    RESOLVE(read), RESOLVE(pread), RESOLVE(pread64), RESOLVE(preadv), RESOLVE(preadv64), RESOLVE(preadv2);
    RESOLVE(preadv64v2);
    RESOLVE(write), RESOLVE(pwrite), RESOLVE(pwrite64);
}

#define REAL(name) \
    if (!real_##name) resolve()

/* a read of len bytes about to be made: 0 to make it as asked, else -1 with errno, 0 for EOF (returned through
   *ret), or 1 with a shorter *len */
static int read_fault(int fd, long long off, size_t *len, ssize_t *ret) {
    configure();
    if (cfg.is_write || (cfg.positional && off < 0) || cfg.kind == F_NONE || *len == 0 || !matches(fd, off, *len) ||
        !take())
        return 0;
    atomic_fetch_add(&faulted, 1);
    switch (cfg.kind) {
    case F_ERRNO: errno = cfg.err; *ret = -1; return -1;
    case F_EOF: *ret = 0; return -1;
    default: {
        struct stat st;       /* half of what the call would have read */
        size_t n = *len;
        if (off < 0) off = (long long) lseek(fd, 0, SEEK_CUR);
        if (off >= 0 && fstat(fd, &st) == 0 && st.st_size > off && (unsigned long long) (st.st_size - off) < n)
            n = (size_t) (st.st_size - off);
        n /= 2;
        const int fl = fcntl(fd, F_GETFL);
        if (fl >= 0 && (fl & O_DIRECT)) n &= ~(size_t) 4095;
        if (n == 0) n = (fl >= 0 && (fl & O_DIRECT)) ? *len : 1;
        *len = n;
        return 1;
    }
    }
}

/* a write of len bytes about to be made: like read_fault; FAULTSHIM_LIMIT shortens the write that reaches it */
static int write_fault(int fd, long long off, size_t *len, ssize_t *ret) {
    configure();
    if (!cfg.is_write || *len == 0 || !matches(fd, off, *len)) return 0;
    if (cfg.limit >= 0 && atomic_load(&armed)) {
        const long long before = atomic_fetch_add(&written, (long long) *len);
        if (before + (long long) *len <= cfg.limit) return 0;
        atomic_fetch_add(&faulted, 1);
        if (before < cfg.limit) {
            atomic_fetch_sub(&written, before + (long long) *len - cfg.limit);
            *len = (size_t) (cfg.limit - before);
            return 1;
        }
        atomic_fetch_sub(&written, (long long) *len);
        errno = ENOSPC;
        *ret = -1;
        return -1;
    }
    if (cfg.kind != F_ERRNO || !take()) return 0;
    atomic_fetch_add(&faulted, 1);
    errno = cfg.err;
    *ret = -1;
    return -1;
}

ssize_t read(int fd, void *buf, size_t len) {
    REAL(read);
    ssize_t r;
    if (read_fault(fd, -1, &len, &r) < 0) return r;
    return real_read(fd, buf, len);
}

ssize_t pread(int fd, void *buf, size_t len, off_t off) {
    REAL(pread);
    ssize_t r;
    if (read_fault(fd, (long long) off, &len, &r) < 0) return r;
    return real_pread(fd, buf, len, off);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off) {
    REAL(pread64);
    ssize_t r;
    if (read_fault(fd, (long long) off, &len, &r) < 0) return r;
    return real_pread64(fd, buf, len, off);
}

static size_t iov_len(const struct iovec *iov, int n) {
    size_t s = 0;
    for (int i = 0; i < n; i++) s += iov[i].iov_len;
    return s;
}

/* a preadv as asked (the v2 function with its flags, else the other), or faulted: a short one reads into the first
   iovec only, shortened (CPython passes one buffer) */
static ssize_t preadv_common(ssize_t (*real)(int, const struct iovec *, int, off_t),
                             ssize_t (*real2)(int, const struct iovec *, int, off_t, int), int flags, int fd,
                             const struct iovec *iov, int n, off_t off) {
    size_t len = iov_len(iov, n), want = len;
    ssize_t r;
    const int f = n > 0 ? read_fault(fd, (long long) off, &len, &r) : 0;
    if (f < 0) return r;
    struct iovec one;
    if (f > 0 && len < want) {
        one = (struct iovec){iov[0].iov_base, len < iov[0].iov_len ? len : iov[0].iov_len};
        iov = &one;
        n = 1;
    }
    return real2 ? real2(fd, iov, n, off, flags) : real(fd, iov, n, off);
}

ssize_t preadv(int fd, const struct iovec *iov, int n, off_t off) {
    REAL(preadv);
    return preadv_common(real_preadv, NULL, 0, fd, iov, n, off);
}

ssize_t preadv64(int fd, const struct iovec *iov, int n, off_t off) {
    REAL(preadv64);
    return preadv_common(real_preadv64, NULL, 0, fd, iov, n, off);
}

ssize_t preadv2(int fd, const struct iovec *iov, int n, off_t off, int flags) {
    REAL(preadv2);
    return preadv_common(NULL, real_preadv2, flags, fd, iov, n, off);
}

ssize_t preadv64v2(int fd, const struct iovec *iov, int n, off_t off, int flags) {
    REAL(preadv64v2);
    return preadv_common(NULL, real_preadv64v2, flags, fd, iov, n, off);
}

ssize_t write(int fd, const void *buf, size_t len) {
    REAL(write);
    ssize_t r;
    if (write_fault(fd, -1, &len, &r) < 0) return r;
    return real_write(fd, buf, len);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) {
    REAL(pwrite);
    ssize_t r;
    if (write_fault(fd, (long long) off, &len, &r) < 0) return r;
    return real_pwrite(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) {
    REAL(pwrite64);
    ssize_t r;
    if (write_fault(fd, (long long) off, &len, &r) < 0) return r;
    return real_pwrite64(fd, buf, len, off);
}
