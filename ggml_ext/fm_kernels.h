/* fm_kernels.h - dot-product kernels for routed-expert matrix products (GGML_OP_MUL_MAT_ID).
 *
 * A kernel computes, for one quantized weight row w of n values and n_act activation rows that were
 * quantized to the weight type's vec_dot_type by ggml's own from_float (Q8_K for K-quants and IQ4_XS, Q8_0
 * for Q4_0, Q8_0 and MXFP4, Q8_1 for Q4_1):
 *
 *     s[j * s_stride] = dot(w, act + j * act_stride)      for j < n_act
 *
 * bit for bit as ggml's CPU backend computes it: the per-block integer sums are exact everywhere, and the
 * float operations (which products are fused, in which order the partial sums are added) are exactly those of
 * ggml's x86 code, because with activations quantized again at every layer a last-bit difference can flip a
 * rounding and grow into a visible change of the logits. ggml has two procedures for these types and a kernel
 * has one function for each:
 *   dot        ggml's vec_dot (ggml-cpu/arch/x86/quants.c), used for an expert that receives fewer than 8
 *              activation rows;
 *   dot_tiled  ggml's tiled K-quant path (ggml-cpu/tiled/), which ggml's MUL_MAT_ID takes instead for an
 *              expert that receives 8 or more rows of a batch; NULL for types ggml has no tiled path for.
 * The scalar kernels (fm_kernels.c) spell the arithmetic out; AVX2 and AVX-512 kernels reproduce it.
 * This holds where ggml-cpu was built with its x86 AVX2 + FMA code (ggml_cpu_has_avx2/fma): elsewhere ggml
 * computes differently and the caller must use ggml itself (fm_matmul.c does).
 *
 * n must be a multiple of fm_kernel_n_multiple(type): the weight type's block size (256 for K-quants and
 * IQ4_XS, 32 otherwise), except 64 for MXFP4 (ggml adds an odd last MXFP4 block with a multiply and an add that
 * the compiler fuses or not depending on the CPU it tunes for; rows with an odd number of blocks are left to
 * ggml); act_stride is in bytes, s_stride in floats. With n_act > 1 each weight block is decoded once and used for several activation
 * rows (prompt processing).
 *
 * Kernels are pure functions of their inputs: no allocation, no mutable state (they read a conversion
 * table that fm_kernel_get fills once), safe from any thread.
 * Buffers need no particular alignment.
 */
#ifndef FM_KERNELS_H
#define FM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "fm_types.h" /* enum fm_isa */

#ifdef __cplusplus
extern "C" {
#endif

/* ggml type ids (enum ggml_type values) we handle */
enum {
    FM_TYPE_Q4_0 = 2,
    FM_TYPE_Q4_1 = 3,
    FM_TYPE_Q8_0 = 8,
    FM_TYPE_Q2_K = 10,
    FM_TYPE_Q3_K = 11,
    FM_TYPE_Q4_K = 12,
    FM_TYPE_Q5_K = 13,
    FM_TYPE_Q6_K = 14,
    FM_TYPE_IQ4_XS = 23,
    FM_TYPE_MXFP4 = 39
};
/* the activation (vec_dot) types, for reference */
enum { FM_TYPE_Q8_1 = 9, FM_TYPE_Q8_K = 15 };


/* s[j*s_stride] = dot(weight row w (n values of the weight type), activation row j at act + j*act_stride bytes
   (vec_dot_type)), j < n_act */
typedef void (*fm_dot_fn)(int n, const void *w, const void *act, size_t act_stride, int n_act, float *s,
                          size_t s_stride);
/* dst[j * dst_stride + r] = dot_tiled(weight row r at w + r * w_stride, activation row j at act + j * act_stride)
   for r < n_rows, j < n_act: a whole tiled matrix product at once (see fm_kernel_matmul) */
typedef void (*fm_mm_fn)(int n, const void *w, size_t w_stride, int n_rows, const void *act, size_t act_stride,
                         int n_act, float *dst, size_t dst_stride);
typedef struct {
    const char *name;
    fm_dot_fn dot;       /* ggml's vec_dot arithmetic */
    fm_dot_fn dot_tiled; /* ggml's tiled K-quant arithmetic, or NULL where ggml has no tiled path for the type */
    fm_mm_fn mm_tiled;   /* optional (NULL: none): the whole matrix product in dot_tiled's arithmetic, bitwise
                            dot_tiled's result for every (weight row, activation row) pair, for any n_rows, n_act
                            >= 1; faster where it reuses decoded weights across activation rows better than
                            dot_tiled's groups (the AVX-512 VNNI kernels) */
} fm_kernel;

/* the kernel for the weight type on instruction set isa (FM_ISA_BEST: the best this CPU has; NULL if the CPU
   lacks it, or for FM_ISA_GGML), or NULL if there is none for the type. AVX-512 serves the types it has no
   spelling of (Q4_0, Q4_1, Q8_0) with their AVX2 kernels. */
const fm_kernel *fm_kernel_get(int ggml_type, int isa);

/* dst[j * dst_stride + r] = dot(weight row r at w + r * w_stride, activation row j at act + j * act_stride)
   for r < n_rows, j < n_act: a whole matrix product (one expert's rows against the tokens routed to it)
   through kernel k of weight type `type` (k->dot_tiled if `tiled`, else k->dot), tiled so that the
   activation rows stay in L1 and the weight rows in L2 (with many activation rows, streaming all of them
   past every weight row is L2-bound). Results are bitwise those of the kernel function called per pair. */
void fm_kernel_matmul(const fm_kernel *k, int type, int tiled, int n, const void *w, size_t w_stride, int n_rows,
                      const void *act, size_t act_stride, int n_act, float *dst, size_t dst_stride);

/* whether ggml's MUL_MAT_ID has its tiled path for this weight type (ggml-cpu/tiled/tiled.cpp: the K-quants
   Q2_K..Q6_K and the IQ types); a kernel for such a type must have dot_tiled */
int fm_kernel_ggml_tiled(int ggml_type);

/* the instruction set fm_kernel_get(type, 0) picks on this CPU (FM_ISA_SCALAR, _AVX2 or _AVX512) */
int fm_kernel_best_isa(void);

/* whether this CPU's AVX-512 kernels are the VNNI ones (AVX512_VNNI present; always in the SIMDe test build) */
int fm_kernel_has_vnni(void);

/* ggml's vec_dot_type for a weight type we handle (FM_TYPE_Q8_0, _Q8_1 or _Q8_K), or -1 */
int fm_kernel_vec_dot_type(int ggml_type);

/* n must be a multiple of this for a kernel of the type (see above), or 0 for an unknown type */
int fm_kernel_n_multiple(int ggml_type);

/* values per block (32 or 256) and bytes per block of a weight or activation type we know, or 0 */
int fm_kernel_block_size(int ggml_type);
size_t fm_kernel_type_size(int ggml_type);

/* Fills the fp16 conversion table the kernels use; fm_kernel_get calls it, so a kernel obtained from
   fm_kernel_get can be called from any thread. Thread-safe and idempotent. */
void fm_kernels_init(void);

/* ---- internal: per-instruction-set tables (fm_kernels_avx2.c, fm_kernels_avx512.c). Each returns NULL
   for a type it does not handle, and when the file was compiled for a non-x86 target. They do not check
   the CPU: call them only through fm_kernel_get. */
const fm_kernel *fm_kernel_get_avx2(int ggml_type);
/* vnni: the CPU has AVX512_VNNI too; then the tiled types get their VNNI kernels (name ..._avx512vnni, with
   mm_tiled), else the plain AVX-512 ones */
const fm_kernel *fm_kernel_get_avx512(int ggml_type, int vnni);
/* fp16 bits -> float, filled by fm_kernels_init */
extern float fm_fp16_table[1 << 16];
/* the non-linear 4-bit value tables of IQ4_NL/IQ4_XS and of MXFP4 (doubled e2m1 values) */
extern const int8_t fm_iq4nl_values[16];
extern const int8_t fm_fp4_values[16];
/* E8M0 exponent byte -> 2^(e-128), as ggml computes it */
float fm_e8m0_half(uint8_t e);

#ifdef __cplusplus
}
#endif

#endif /* FM_KERNELS_H */
