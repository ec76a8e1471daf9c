/* fm_kernels.c - kernel dispatch and the portable scalar reference kernels.
 *
 * Block layouts (ggml-common.h; all little-endian, fp16 = IEEE half, no padding):
 *   Q4_0  18 B / 32 values : d fp16 | qs[16]        value l = (qs[l] & 15) - 8, value l+16 = (qs[l] >> 4) - 8
 *   Q4_1  20 B / 32 values : d, m fp16 | qs[16]     value = d * nibble + m (nibbles as Q4_0)
 *   Q8_0  34 B / 32 values : d fp16 | qs[32] int8
 *   Q8_1  36 B / 32 values : d, s fp16 (s = d * sum(qs)) | qs[32] int8
 *   Q2_K  84 B / 256 values: scales[16] (low nibble scale, high nibble min, per 16 values) | qs[64] | d, dmin fp16
 *                            value 128c + 32k + l = (qs[32c + l] >> 2k) & 3, c < 2, k < 4, l < 32
 *   Q4_K 144 B / 256 values: d, dmin fp16 | scales[12] (8 6-bit scales and 8 6-bit mins, per 32 values) | qs[128]
 *                            value 64c + l = qs[32c + l] & 15, value 64c + 32 + l = qs[32c + l] >> 4
 *   Q8_K 292 B / 256 values: d float | qs[256] int8 | bsums[16] int16 (sum of each 16 qs)
 * This file has no instruction-set specific code and is compiled with the default flags.
 */
#include "fm_kernels.h"

#include <stdatomic.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FM_X86 1
#include <cpuid.h>
#else
#define FM_X86 0
#endif

/* ------------------------------------------------------------------------------------------------------ */
/* helpers                                                                                                 */

static float fp16_to_fp32(const uint8_t *p) {
    const uint32_t h = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
    const uint32_t sign = (h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: shift the leading one into the implicit position */
        uint32_t e = 113;
        while (!(man & 0x400u)) {
            man <<= 1;
            --e;
        }
        bits = sign | (e << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static float load_f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

static int load_i16(const uint8_t *p) {
    int16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* the 8 6-bit scales and 8 6-bit mins of a Q4_K block */
static void q4k_scales_mins(const uint8_t *q, int sc[8], int mn[8]) {
    for (int j = 0; j < 4; ++j) {
        sc[j] = q[j] & 63;
        mn[j] = q[j + 4] & 63;
        sc[j + 4] = (q[j + 8] & 15) | ((q[j] >> 6) << 4);
        mn[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* scalar kernels: one (weight row, activation row) pair at a time; integer sums per block, float sum     */

static float dot1_q4_0(int n, const uint8_t *x, const uint8_t *y) {
    float sum = 0.0f;
    for (int i = 0; i < n / 32; ++i, x += 18, y += 34) {
        const int8_t *yq = (const int8_t *)(y + 2);
        int isum = 0;
        for (int l = 0; l < 16; ++l) {
            isum += ((x[2 + l] & 15) - 8) * yq[l];
            isum += ((x[2 + l] >> 4) - 8) * yq[l + 16];
        }
        sum += fp16_to_fp32(x) * fp16_to_fp32(y) * (float)isum;
    }
    return sum;
}

static float dot1_q4_1(int n, const uint8_t *x, const uint8_t *y) {
    float sum = 0.0f, summs = 0.0f;
    for (int i = 0; i < n / 32; ++i, x += 20, y += 36) {
        const int8_t *yq = (const int8_t *)(y + 4);
        int isum = 0;
        for (int l = 0; l < 16; ++l) {
            isum += (x[4 + l] & 15) * yq[l];
            isum += (x[4 + l] >> 4) * yq[l + 16];
        }
        sum += fp16_to_fp32(x) * fp16_to_fp32(y) * (float)isum;
        summs += fp16_to_fp32(x + 2) * fp16_to_fp32(y + 2);
    }
    return sum + summs;
}

static float dot1_q8_0(int n, const uint8_t *x, const uint8_t *y) {
    float sum = 0.0f;
    for (int i = 0; i < n / 32; ++i, x += 34, y += 34) {
        const int8_t *xq = (const int8_t *)(x + 2);
        const int8_t *yq = (const int8_t *)(y + 2);
        int isum = 0;
        for (int l = 0; l < 32; ++l) isum += xq[l] * yq[l];
        sum += fp16_to_fp32(x) * fp16_to_fp32(y) * (float)isum;
    }
    return sum;
}

static float dot1_q2_K(int n, const uint8_t *x, const uint8_t *y) {
    float sum = 0.0f;
    for (int i = 0; i < n / 256; ++i, x += 84, y += 292) {
        const uint8_t *sc = x;
        const uint8_t *qs = x + 16;
        const int8_t *yq = (const int8_t *)(y + 4);
        int isum = 0, msum = 0;
        for (int c = 0; c < 2; ++c) {
            for (int k = 0; k < 4; ++k) {
                for (int h = 0; h < 2; ++h) { /* 16-value sub-block 8c + 2k + h */
                    const int sb = 8 * c + 2 * k + h;
                    int s16 = 0;
                    for (int l = 16 * h; l < 16 * h + 16; ++l) s16 += ((qs[32 * c + l] >> (2 * k)) & 3) * yq[128 * c + 32 * k + l];
                    isum += (sc[sb] & 15) * s16;
                }
            }
        }
        for (int sb = 0; sb < 16; ++sb) msum += (sc[sb] >> 4) * load_i16(y + 260 + 2 * sb);
        const float yd = load_f32(y);
        sum += yd * fp16_to_fp32(x + 80) * (float)isum - yd * fp16_to_fp32(x + 82) * (float)msum;
    }
    return sum;
}

static float dot1_q4_K(int n, const uint8_t *x, const uint8_t *y) {
    float sum = 0.0f;
    for (int i = 0; i < n / 256; ++i, x += 144, y += 292) {
        int sc[8], mn[8];
        q4k_scales_mins(x + 4, sc, mn);
        const uint8_t *qs = x + 16;
        const int8_t *yq = (const int8_t *)(y + 4);
        int isum = 0, msum = 0;
        for (int c = 0; c < 4; ++c) {
            int lo = 0, hi = 0;
            for (int l = 0; l < 32; ++l) {
                lo += (qs[32 * c + l] & 15) * yq[64 * c + l];
                hi += (qs[32 * c + l] >> 4) * yq[64 * c + 32 + l];
            }
            isum += sc[2 * c] * lo + sc[2 * c + 1] * hi;
        }
        for (int j = 0; j < 8; ++j) msum += mn[j] * (load_i16(y + 260 + 4 * j) + load_i16(y + 262 + 4 * j));
        const float yd = load_f32(y);
        sum += yd * fp16_to_fp32(x) * (float)isum - yd * fp16_to_fp32(x + 2) * (float)msum;
    }
    return sum;
}

#define FM_SCALAR_KERNEL(name, dot1)                                                                       \
    static void name(int n, const void *w, const void *act, size_t act_stride, int n_act, float *s,          \
                     size_t s_stride) {                                                                      \
        const uint8_t *y = (const uint8_t *)act;                                                             \
        for (int j = 0; j < n_act; ++j, y += act_stride) s[(size_t)j * s_stride] = dot1(n, (const uint8_t *)w, y); \
    }

FM_SCALAR_KERNEL(dot_q4_0_scalar, dot1_q4_0)
FM_SCALAR_KERNEL(dot_q4_1_scalar, dot1_q4_1)
FM_SCALAR_KERNEL(dot_q8_0_scalar, dot1_q8_0)
FM_SCALAR_KERNEL(dot_q2_K_scalar, dot1_q2_K)
FM_SCALAR_KERNEL(dot_q4_K_scalar, dot1_q4_K)

static const fm_kernel k_scalar_q4_0 = {"q4_0_scalar", dot_q4_0_scalar};
static const fm_kernel k_scalar_q4_1 = {"q4_1_scalar", dot_q4_1_scalar};
static const fm_kernel k_scalar_q8_0 = {"q8_0_scalar", dot_q8_0_scalar};
static const fm_kernel k_scalar_q2_K = {"q2_K_scalar", dot_q2_K_scalar};
static const fm_kernel k_scalar_q4_K = {"q4_K_scalar", dot_q4_K_scalar};

static const fm_kernel *scalar_kernel(int type) {
    switch (type) {
    case FM_TYPE_Q4_0: return &k_scalar_q4_0;
    case FM_TYPE_Q4_1: return &k_scalar_q4_1;
    case FM_TYPE_Q8_0: return &k_scalar_q8_0;
    case FM_TYPE_Q2_K: return &k_scalar_q2_K;
    case FM_TYPE_Q4_K: return &k_scalar_q4_K;
    default: return NULL;
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* type facts                                                                                              */

int fm_kernel_vec_dot_type(int type) {
    switch (type) {
    case FM_TYPE_Q4_0:
    case FM_TYPE_Q8_0: return FM_TYPE_Q8_0;
    case FM_TYPE_Q4_1: return FM_TYPE_Q8_1;
    case FM_TYPE_Q2_K:
    case FM_TYPE_Q4_K: return FM_TYPE_Q8_K;
    default: return -1;
    }
}

int fm_kernel_block_size(int type) {
    switch (type) {
    case FM_TYPE_Q4_0:
    case FM_TYPE_Q4_1:
    case FM_TYPE_Q8_0:
    case FM_TYPE_Q8_1: return 32;
    case FM_TYPE_Q2_K:
    case FM_TYPE_Q4_K:
    case FM_TYPE_Q8_K: return 256;
    default: return 0;
    }
}

size_t fm_kernel_type_size(int type) {
    switch (type) {
    case FM_TYPE_Q4_0: return 18;
    case FM_TYPE_Q4_1: return 20;
    case FM_TYPE_Q8_0: return 34;
    case FM_TYPE_Q8_1: return 36;
    case FM_TYPE_Q2_K: return 84;
    case FM_TYPE_Q4_K: return 144;
    case FM_TYPE_Q8_K: return 292;
    default: return 0;
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* a matrix product from a kernel, tiled for the caches                                                   */

#define FM_ACT_TILE_BYTES (16u << 10) /* activation rows kept in L1 while a tile of weight rows passes */
#define FM_ROW_TILE_BYTES (64u << 10) /* weight rows kept in L2 while the activation chunks pass */

void fm_kernel_matmul(const fm_kernel *k, int type, int n, const void *w, size_t w_stride, int n_rows,
                      const void *act, size_t act_stride, int n_act, float *dst, size_t dst_stride) {
    const int vdt = fm_kernel_vec_dot_type(type);
    if (n_rows <= 0 || n_act <= 0 || vdt < 0) return;
    const size_t rb = (size_t)(n / fm_kernel_block_size(type)) * fm_kernel_type_size(type);
    const size_t ab = (size_t)(n / fm_kernel_block_size(vdt)) * fm_kernel_type_size(vdt);
    int chunk = ab ? (int)(FM_ACT_TILE_BYTES / ab) : 4;
    chunk = chunk >= 8 ? 8 : 4; /* whole groups of 4 (the kernels' unit of reuse) */
    int rows = rb ? (int)(FM_ROW_TILE_BYTES / rb) : 64;
    if (rows < 1) rows = 1;
    const uint8_t *wp = (const uint8_t *)w, *ap = (const uint8_t *)act;
    for (int r0 = 0; r0 < n_rows; r0 += rows) {
        const int r1 = r0 + rows < n_rows ? r0 + rows : n_rows;
        for (int j0 = 0; j0 < n_act; j0 += chunk) {
            const int nj = n_act - j0 < chunk ? n_act - j0 : chunk;
            for (int r = r0; r < r1; ++r)
                k->dot(n, wp + (size_t)r * w_stride, ap + (size_t)j0 * act_stride, act_stride, nj,
                       dst + (size_t)j0 * dst_stride + (size_t)r, dst_stride);
        }
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* fp16 -> fp32 for every half, as ggml-cpu keeps on x86: one load per conversion is much cheaper than
   F16C's insert + convert when a 32-value block needs two to four of them. Written once, then read-only. */

float fm_fp16_table[1 << 16];

void fm_kernels_init(void) {
    static atomic_int state = 0; /* 0: not filled, 1: being filled, 2: ready */
    if (atomic_load_explicit(&state, memory_order_acquire) == 2) return;
    int expected = 0;
    if (atomic_compare_exchange_strong_explicit(&state, &expected, 1, memory_order_acq_rel, memory_order_acquire)) {
        for (uint32_t h = 0; h < (1u << 16); ++h) {
            const uint8_t b[2] = {(uint8_t)(h & 0xff), (uint8_t)(h >> 8)};
            fm_fp16_table[h] = fp16_to_fp32(b);
        }
        atomic_store_explicit(&state, 2, memory_order_release);
    } else {
        while (atomic_load_explicit(&state, memory_order_acquire) != 2) {
        } /* another thread is filling it (~0.1 ms) */
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* dispatch                                                                                                */

#if FM_X86
/* OS support for the AVX (ymm) and AVX-512 (opmask, zmm) register state, from XCR0 */
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int detect_isa(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return FM_ISA_SCALAR;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !fma) return FM_ISA_SCALAR;
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return FM_ISA_SCALAR; /* xmm + ymm state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return FM_ISA_SCALAR;
    const int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    if (!avx2) return FM_ISA_SCALAR;
    if (avx512f && avx512bw && avx512vl && (xcr0 & 0xe6) == 0xe6) return FM_ISA_AVX512;
    return FM_ISA_AVX2;
}
#endif

int fm_kernel_best_isa(void) {
#if FM_X86
    /* computed once; a race only makes two threads compute the same value */
    static atomic_int cached = 0;
    int isa = atomic_load_explicit(&cached, memory_order_relaxed);
    if (isa == 0) {
        isa = detect_isa();
        atomic_store_explicit(&cached, isa, memory_order_relaxed);
    }
    return isa;
#else
    return FM_ISA_SCALAR;
#endif
}

const fm_kernel *fm_kernel_get(int type, int isa) {
    fm_kernels_init();
    const int best = fm_kernel_best_isa();
    if (isa == FM_ISA_BEST) { /* the best instruction set that has a kernel for the type */
        const fm_kernel *k = NULL;
        if (best >= FM_ISA_AVX512) k = fm_kernel_get_avx512(type);
        if (!k && best >= FM_ISA_AVX2) k = fm_kernel_get_avx2(type);
        return k ? k : scalar_kernel(type);
    }
    if (isa < FM_ISA_SCALAR || isa > best) return NULL;
    switch (isa) {
    case FM_ISA_AVX512: return fm_kernel_get_avx512(type);
    case FM_ISA_AVX2: return fm_kernel_get_avx2(type);
    default: return scalar_kernel(type);
    }
}
