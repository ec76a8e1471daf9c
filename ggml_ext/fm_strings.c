/* GGUF string arrays (see fm_strings.h). */
#include "fm_strings.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define EMPTY_NAME 32 /* "[EMPTY_" + up to 20 digits + "]" + NUL */

/* the file's little-endian u64 at p, whatever the host's order */
static uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

int64_t fm_skip_strings(const uint8_t *buf, uint64_t len, uint64_t count, uint64_t max_len, uint64_t *end) {
    uint64_t pos = 0, n = 0;
    for (; n < count; n++) {
        if (len - pos < 8) break;
        const uint64_t s = le64(buf + pos);
        if (s > max_len) {
            *end = pos;
            return -1;
        }
        if (len - pos - 8 < s) break;
        pos += 8 + s;
    }
    *end = pos;
    return (int64_t) n;
}

typedef struct {
    const uint8_t *text;
    uint64_t len;
    uint64_t hash;
    int64_t index; /* -1: empty entry of the table */
} entry;

/* the scan's tables are mappings of their own: a 16 MB malloc'ed table, once freed, would raise glibc's dynamic
   mmap threshold (and with it its trim threshold) for the rest of the process, so that llama.cpp's later
   allocations of up to that size stay in the heap and their memory in RSS after they are freed */
static void *table_alloc(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void table_free(void *p, size_t n) {
    if (p) munmap(p, n); /* a whole mapping made above: cannot fail */
}

/* splitmix64's finalizer: every bit of x reaches the low bits that pick a table position */
static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* FNV-1a from a per-scan seed, mixed: a file cannot be made of tokens that all land in one run of the table (with a
   fixed hash, tokens crafted to share the low bits would make the scan quadratic: a hang at load) */
static uint64_t text_hash(const uint8_t *p, uint64_t n, uint64_t seed) {
    uint64_t h = 1469598103934665603ULL ^ seed;
    for (uint64_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return mix64(h);
}

/* not secret, only unknown to whoever wrote the file: the table's address (ASLR) and the clock */
static uint64_t scan_seed(const void *table) {
    struct timespec ts = {0, 0};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return mix64((uint64_t) (uintptr_t) table ^ ((uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec));
}

int fm_duplicate_string(const uint8_t *buf, uint64_t len, uint64_t count, int64_t *first, int64_t *second) {
    *first = *second = -1;
    if (count > SIZE_MAX / (4 * sizeof(entry)) || count > (uint64_t) INT64_MAX) return -1;
    /* the texts as llama.cpp sees them: up to the first NUL; empty ones get their generated name */
    uint64_t n_empty = 0;
    for (uint64_t i = 0, pos = 0; i < count; i++) {
        if (len - pos < 8) return -1;
        const uint64_t s = le64(buf + pos);
        if (len - pos - 8 < s) return -1;
        if (s == 0 || buf[pos + 8] == 0) n_empty++;
        pos += 8 + s;
    }
    uint64_t cap = 16;
    while (cap < 2 * count) cap <<= 1;
    const size_t table_bytes = cap * sizeof(entry), names_bytes = n_empty * EMPTY_NAME;
    entry *table = table_alloc(table_bytes);
    char *names = n_empty ? table_alloc(names_bytes) : NULL;
    if (!table || (n_empty && !names)) {
        table_free(table, table_bytes);
        table_free(names, names_bytes);
        return -1;
    }
    for (uint64_t i = 0; i < cap; i++) table[i].index = -1;
    const uint64_t seed = scan_seed(table);
    int found = 0;
    uint64_t pos = 0, k = 0;
    for (uint64_t i = 0; i < count && !found; i++) {
        const uint64_t s = le64(buf + pos);
        const uint8_t *p = buf + pos + 8;
        const uint8_t *nul = s ? memchr(p, 0, s) : NULL;
        uint64_t tl = nul ? (uint64_t) (nul - p) : s;
        pos += 8 + s;
        if (tl == 0) {
            char *name = names + EMPTY_NAME * k++;
            tl = (uint64_t) snprintf(name, EMPTY_NAME, "[EMPTY_%llu]", (unsigned long long) i);
            p = (const uint8_t *) name;
        }
        const uint64_t h = text_hash(p, tl, seed);
        for (uint64_t j = h & (cap - 1);; j = (j + 1) & (cap - 1)) {
            entry *e = &table[j];
            if (e->index < 0) {
                *e = (entry){p, tl, h, (int64_t) i};
                break;
            }
            if (e->hash == h && e->len == tl && memcmp(e->text, p, tl) == 0) {
                *first = e->index;
                *second = (int64_t) i;
                found = 1;
                break;
            }
        }
    }
    table_free(table, table_bytes);
    table_free(names, names_bytes);
    return found;
}
