/* GGUF string arrays (each string: its length as a little-endian u64, then its bytes) scanned in C. Needs no ggml.
 * A vocabulary is ~150,000 strings: the Python loops that skipped it in the header index and looked for duplicate
 * tokens in it took 0.5 s of every load (8-layer Qwen3-30B-A3B slice, 1.6 s in all with a warm page cache,
 * 2026-12-08); these take a few milliseconds. */
#ifndef FM_STRINGS_H
#define FM_STRINGS_H

#include <stdint.h>

/* Passes up to count strings from buf[0..len). Returns how many whole strings it passed, *end the offset after the
   last of them: fewer than count when the next one does not fit in len (the caller reads more and goes on from
   *end). -1 when a string is longer than max_len (*end: its offset). */
int64_t fm_skip_strings(const uint8_t *buf, uint64_t len, uint64_t count, uint64_t max_len, uint64_t *end);

/* The first two of count strings in buf[0..len) with the same text as llama.cpp's vocabulary sees a token (up to
   its first NUL byte; an empty one is named "[EMPTY_<index>]"): 1 with *first < *second, *second the smallest such
   index and *first the earlier string with that text; 0 if all differ; -1 if the strings do not fit in len, or out
   of memory. */
int fm_duplicate_string(const uint8_t *buf, uint64_t len, uint64_t count, int64_t *first, int64_t *second);

#endif
