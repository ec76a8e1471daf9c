/* The extension's C API as Python sees it (through cffi). Plain C types only: this file (with fm_types.h, whose
 * enums and fm_stats it uses) is also the cdef. Every function that can fail returns non-zero (or NULL) and
 * writes a message into err. */
#ifndef FM_API_H
#define FM_API_H

#include <stddef.h>
#include <stdint.h>

#include "fm_types.h"

typedef struct fm_model fm_model;


/* Resolve ggml from llama-cpp-python's lib_dir (already loaded), check its version, register the device. */
int fm_init(const char *lib_dir, char *err, size_t err_len);
const char *fm_built_ggml_version(void);
int fm_backend_api_version(void);

/* The best instruction set our kernels can use on this CPU (FM_ISA_SCALAR, _AVX2 or _AVX512). */
int fm_cpu_isa(void);
/* The best instruction set (FM_ISA_*) this CPU has a kernel of ours on for expert rows of n values of this
   ggml type, or 0 if none (then ggml's own MUL_MAT_ID computes them). */
int fm_has_kernel(int ggml_type, long long n);
/* Non-zero if the loaded ggml-cpu computes quantized dot products with its x86 AVX2 + FMA code, the
   arithmetic our kernels reproduce bit for bit (fm_kernels.h); elsewhere only ggml's own code is exact. */
int fm_ggml_has_x86_arith(void);

/* mode: an fm_cache_mode (budget: bytes of our cache). direct: read with O_DIRECT. isa: FM_ISA_SCALAR, _AVX2 or
   _AVX512 (our kernels) or FM_ISA_GGML (ggml's own MUL_MAT_ID). tiled: an fm_tiled (ggml's tiled K-quant path). */
fm_model *fm_model_new(const char **paths, int n_files, uint64_t budget, int io_threads, int mode, int direct, int isa,
                       int tiled, char *err, size_t err_len);
/* file: index into the model's paths (split models) */
int fm_model_add_tensor(fm_model *m, const char *name, int file, uint64_t offset, uint64_t stride, int n_expert,
                        int type, int64_t ne0, int64_t ne1, char *err, size_t err_len);
/* b is read together with a: when a's experts are requested, b's same experts are prefetched. */
int fm_model_set_partner(fm_model *m, const char *a, const char *b);
/* The load scope, on the thread that calls llama_model_load_from_file_ptr for m: between these two calls only m's
   registered expert tensors are placed on the flashmoe device (loads on other threads are untouched). */
int fm_model_begin_load(fm_model *m, char *err, size_t err_len);
/* Ends the load; checks every registered expert tensor was placed on the flashmoe device. */
int fm_model_end_load(fm_model *m, char *err, size_t err_len);
/* file (an index into the paths) as the model opened it is the one the caller read the header of: the same device
   and inode, size and modification time (ns) as it saw then; else -1 with why, and the model stays failed */
int fm_model_verify_file(fm_model *m, int file, uint64_t dev, uint64_t ino, uint64_t size, int64_t mtime_ns,
                         char *err, size_t err_len);
void fm_model_free(fm_model *m);
/* Resize the expert cache (bytes): ram_budget="auto" sizes it once llama.cpp's context (KV cache, compute and
   output buffers) exists. Not while the model computes. */
void fm_model_set_budget(fm_model *m, uint64_t budget);
/* on: the model is loaded with layers on a GPU (set before the load); the backend then also takes the routed-expert
   block's element-wise ops (activation, expert biases) so that the block crosses devices once, as stock's does */
void fm_model_set_expert_block(fm_model *m, int on);
void fm_model_get_stats(fm_model *m, fm_stats *out);
/* Diagnostic: the backend's graph computes since the last call, oldest first, as entry/exit pairs of monotonic
   seconds (at most max pairs into out[2*max]); returns the number of pairs and forgets them. */
int fm_model_timeline(fm_model *m, double *out, int max);
/* Non-zero if the model failed (read error, file changed...); the message goes into buf. */
int fm_model_error(fm_model *m, char *buf, size_t len);
/* Test hook: make the Nth expert read from now on fail with EIO (0 turns it off). */
void fm_model_inject_read_error(fm_model *m, int nth_read);
uint64_t fm_model_dropped_bytes(fm_model *m);
/* Test and replay hook: what a MUL_MAT_ID does with the store (acquire the experts of a tensor, wait for all,
 * release), without computing. For checking cache policies against an access trace. */
int fm_model_access(fm_model *m, const char *tensor, const int *experts, int n, char *err, size_t err_len);
/* Benchmarks only: replay ids[t][l][k] (n_tok x n_layer x k_used, -1 = the router's choice) in place of the
   router's choice in the streamed MUL_MAT_IDs of the tensors given to fm_model_route_tensor (ggml_ext/fm_routing.h);
   ids NULL turns it off. Not while the model computes. 0, or -1 with a message. */
int fm_model_set_routing(fm_model *m, const int32_t *ids, int n_tok, int n_layer, int k_used, char *err,
                         size_t err_len);
/* The tensor takes the trace's layer `layer` (after fm_model_set_routing). 0, or -1 with a message. */
int fm_model_route_tensor(fm_model *m, const char *tensor, int layer, char *err, size_t err_len);

/* A FILE* reading a stream of segments (flashmoe_gguf/load_plan.py): segs holds n_segs rows of 6 numbers
   (stream start, length, kind (enum fm_segment_kind), file index into paths, offset in the file or the blob,
   read order: a rank, lower for what llama.cpp is expected to read first; only what is read ahead follows it),
   contiguous from 0. FM_SEG_SKIP ranges are never read (the loader's copy of those bytes, routed experts, is
   discarded anyway). bytes_read counts what it read from the files; the first read that fails (an I/O error, or
   the file ending early) is described in read_err (read_err_len bytes, "" while none; NULL: not wanted), which
   must outlive the FILE*. Close it with fm_close_file. */
void *fm_open_segments(const char **paths, int n_paths, const char *blob, size_t blob_len, const uint64_t *segs,
                       int n_segs, uint64_t *bytes_read, char *read_err, size_t read_err_len, char *err,
                       size_t err_len);
int fm_close_file(void *file);

#endif
