/* fm_quant.h - a fast Q4_K quantizer whose bytes equal ggml's reference quantizer (no importance matrix).
 * See fm_quant.c for the algorithm and why the result is bit-identical. Plain C types only, no preprocessor
 * lines: build_ffi.py appends this file to the cffi cdef (include <stdint.h> before it). */

/* instruction sets, for fm_quantize_q4_K's `isa` argument */
enum { FM_QUANT_ISA_AUTO = -1, FM_QUANT_ISA_SCALAR = 0, FM_QUANT_ISA_AVX2 = 1 };

/* Quantizes nrows rows of n_per_row floats (n_per_row a multiple of 256) into Q4_K blocks (144 bytes per 256
 * values), rows back to back, exactly as ggml_quantize_chunk(GGML_TYPE_Q4_K, ..., imatrix = NULL) does.
 * Returns 0 on success; 1 if the input holds a NaN or an infinity (dst is then partly written: quantize that
 * input with ggml instead); -1 for bad arguments or an instruction set this CPU lacks. Thread-safe. */
int fm_quantize_q4_K(const float *src, void *dst, int64_t nrows, int64_t n_per_row, int isa);

/* The instruction set FM_QUANT_ISA_AUTO picks on this CPU. */
int fm_quant_best_isa(void);
