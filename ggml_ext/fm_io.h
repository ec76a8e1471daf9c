/* The store's I/O: the model's files (one, or the shards of a split model; each with a buffered and an O_DIRECT
 * descriptor), a queue of expert reads served by a pool of threads with positional reads, and detection of a
 * file changed underneath.
 *
 * A read is (job, offset, len, buffer); when it ends, the done callback runs on the I/O thread that did it,
 * with no lock of ours held, and says where the requested bytes start in the buffer (O_DIRECT reads whole
 * aligned blocks around them) or why the read failed. Nothing outside this piece touches a descriptor. */
#ifndef FM_IO_H
#define FM_IO_H

#include <stddef.h>
#include <stdint.h>

typedef struct fm_io fm_io;

typedef struct {
    int ok;
    const char *data;   /* ok: the first requested byte within the buffer */
    int short_read;     /* !ok: the file ended at byte `at` (truncated or replaced) */
    uint64_t at;
    char detail[160];   /* !ok and !short_read: what the read said (strerror, "(injected)") */
    double seconds;
} fm_io_result;

typedef void (*fm_io_done_fn)(void *owner, int job, const fm_io_result *r);

/* Opens the n_files paths (and with O_DIRECT if direct) and starts n_threads readers. NULL with a message on
   failure. */
fm_io *fm_io_open(const char *const *paths, int n_files, int n_threads, int direct, fm_io_done_fn done, void *owner,
                  char *err, size_t err_len);
/* Stops and joins the readers (a read in progress finishes and reports; queued ones are dropped), closes. */
void fm_io_close(fm_io *io);

int fm_io_n_files(const fm_io *io);
const char *fm_io_path(const fm_io *io, int file);
uint64_t fm_io_file_size(const fm_io *io, int file); /* as opened */
/* The buffer a read of len bytes needs: its size and alignment (O_DIRECT: whole aligned blocks around them). */
size_t fm_io_buffer_size(const fm_io *io, size_t len);
size_t fm_io_buffer_align(const fm_io *io);

/* Queues a read of [offset, offset + len) of a file into buf (cap bytes, fm_io_buffer_size(len) at least,
   aligned to fm_io_buffer_align). 0, or -1 when out of memory. */
int fm_io_submit(fm_io *io, int job, int file, uint64_t offset, size_t len, void *buf, size_t cap);
/* Reads [offset, offset + len) of a file now, on the calling thread, through the buffered descriptor. 0 or -1. */
int fm_io_read_now(fm_io *io, int file, uint64_t offset, void *dst, size_t len);
/* 0 if every file is still the one opened (size, inode, mtime); else -1 and why (naming the file). */
int fm_io_check_file(fm_io *io, char *why, size_t why_len);
/* 0 if the file opened as `file` is the one described (device, inode, size, modification time in ns: what the
   caller saw when it read the file's header, before this open); else -1 and why (naming the file). */
int fm_io_verify_file(const fm_io *io, int file, uint64_t dev, uint64_t ino, uint64_t size, int64_t mtime_ns,
                      char *why, size_t why_len);
/* Test hook: the nth read started from now on fails with EIO (0: off). */
void fm_io_inject_fault(fm_io *io, int nth_read);

#endif
