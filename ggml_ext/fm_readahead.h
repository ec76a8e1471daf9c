/* Chunks of the model files read ahead while the loader copies others (fm_api.c's load stream).
 *
 * The loader reads the resident (non-expert) weights in large chunks and copies each into llama.cpp's buffers.
 * Read one after the other, the disk waited while a chunk was copied (and its destination pages faulted in), and
 * the copy waited while the next chunk was read: a cold load of 1.68 GB spent 1.5 s reading and 1.5 s copying. Here
 * a thread reads the chunks the loader is expected to ask for next (hint) into buffers of their own, so the two
 * overlap; llama.cpp asks for a layer's tensors in its own order, not the file's, so the buffers are a small
 * cache: a chunk stays until its buffer is needed for another (least recently taken or hinted first). Each chunk
 * has a buffer of its own size, so a model of small tensors keeps many.
 *
 * take() never gives other bytes than a read of that range now would: a chunk being read is waited for, one not
 * read ahead is read on the caller's thread, a hint that was never taken is dropped (its bytes still count as read).
 * Every read of the thread is finished before free returns. One caller thread. */
#ifndef FM_READAHEAD_H
#define FM_READAHEAD_H

#include <stddef.h>
#include <stdint.h>

typedef struct fm_readahead fm_readahead;

/* what a read of [off, off + n) gave: got bytes (less at the end of the file), or err (errno, 0 with got == 0: the
   file ended at off); direct_refused: O_DIRECT was refused (EINVAL) and the bytes were read through the buffered
   descriptor */
typedef struct {
    size_t got;
    int err;
    int direct_refused;
} fm_read_result;

/* up to n_bufs chunks of at most chunk bytes, in buffers of their own size aligned to align (O_DIRECT), budget bytes
   of them at most (>= chunk); NULL when out of memory or the thread cannot start. bytes_read (may be NULL) counts
   every byte read from the files, taken or not; updated on the caller's thread. */
fm_readahead *fm_readahead_new(int n_bufs, size_t chunk, size_t budget, size_t align, uint64_t *bytes_read);
void fm_readahead_free(fm_readahead *r);

/* the bytes [off, off + n) of the file open as fd (dfd: the same file with O_DIRECT, or -1), n <= chunk: read
   ahead, or read now. Returns the buffer (valid until the next take), with *res set; NULL when nothing could be
   read (res->err, ENOMEM for a buffer, or 0: the file ended at off). */
const char *fm_readahead_take(fm_readahead *r, int fd, int dfd, uint64_t off, size_t n, fm_read_result *res);

/* asks the thread to read [off, off + n) of fd/dfd, a range the caller expects to take soon (after the ranges
   hinted before it). 1: cached, being read or queued; 0: no buffer is free for it (the caller stops hinting). */
int fm_readahead_hint(fm_readahead *r, int fd, int dfd, uint64_t off, size_t n);

#endif
