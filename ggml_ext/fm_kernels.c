/* fm_kernels.c - kernel dispatch and the portable scalar kernels, which are the specification of the
 * arithmetic every instruction set must reproduce bit for bit (see fm_kernels.h).
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
 *
 * ggml's x86 vec_dot (ggml-cpu/arch/x86/quants.c, AVX2 path, also what AVX-512 builds run for these types)
 * works on 32-byte vectors: a vector of weight bytes times a vector of activation bytes gives 8 int32
 * "lanes", lane l being the sum of the 4 products of bytes 4l..4l+3 (maddubs + madd, or VNNI's dpbusd: the same
 * integers). Each block adds scale x lane into 8 float accumulators with one fused multiply-add per lane; the
 * 8 accumulators are then added in a fixed tree (hsum8). The scalar code below does exactly that, lane by
 * lane, with fmaf. ggml's tiled path (ggml-cpu/tiled/) sums a block's integers completely and then performs
 * three float operations per block (see the _tiled functions).
 *
 * This file has no instruction-set specific code and is compiled with the default flags; the build turns
 * floating-point contraction off, so every fused multiply-add here is an explicit fmaf.
 */
#include "fm_kernels.h"

#include <math.h>
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

static float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return fm_fp16_table[h];
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

/* _mm256_sign_epi8(y, x) for one byte: y negated (wrapping: -(-128) is -128) where x < 0, zero where x == 0 */
static int sign8(int y, int x) {
    if (x == 0) return 0;
    if (x > 0) return y;
    return y == -128 ? -128 : -y;
}

/* the 8 float accumulators added as ggml's hsum_float_8 adds them */
static float hsum8(const float a[8]) {
    const float r0 = a[4] + a[0], r1 = a[5] + a[1], r2 = a[6] + a[2], r3 = a[7] + a[3];
    return (r0 + r2) + (r1 + r3);
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
/* vec_dot arithmetic: one (weight row, activation row) pair                                              */

/* 32-value blocks. kind 0: Q4_0 x Q8_0, 1: Q8_0 x Q8_0 (signed weights: |x| times y with x's sign),
   2: Q4_1 x Q8_1 (unsigned nibbles, plus m * s per block into a separate float sum) */
static float dot1_32(int kind, int n, const uint8_t *x, const uint8_t *y) {
    const size_t xs = kind == 0 ? 18 : kind == 1 ? 34 : 20, ys = kind == 2 ? 36 : 34, yo = kind == 2 ? 4 : 2;
    float acc[8] = {0}, summs = 0.0f;
    for (int i = 0; i < n / 32; ++i, x += xs, y += ys) {
        int xv[32];
        for (int l = 0; l < 16; ++l) {
            if (kind == 1) {
                xv[l] = (int8_t)x[2 + l];
                xv[l + 16] = (int8_t)x[18 + l];
            } else {
                const uint8_t b = x[(kind == 2 ? 4 : 2) + l];
                xv[l] = (b & 15) - (kind == 0 ? 8 : 0);
                xv[l + 16] = (b >> 4) - (kind == 0 ? 8 : 0);
            }
        }
        const int8_t *yq = (const int8_t *)(y + yo);
        const float d = h2f(x) * h2f(y);
        if (kind == 2) summs = fmaf(h2f(x + 2), h2f(y + 2), summs);
        for (int l = 0; l < 8; ++l) {
            int lane = 0;
            for (int b = 4 * l; b < 4 * l + 4; ++b)
                lane += kind == 2 ? xv[b] * yq[b] : (xv[b] < 0 ? -xv[b] : xv[b]) * sign8(yq[b], xv[b]);
            acc[l] = fmaf(d, (float)lane, acc[l]);
        }
    }
    return kind == 2 ? hsum8(acc) + summs : hsum8(acc);
}

static float dot1_q2_K(int n, const uint8_t *x, const uint8_t *y) {
    float acc[8] = {0};
    for (int i = 0; i < n / 256; ++i, x += 84, y += 292) {
        const uint8_t *sc = x, *qs = x + 16;
        const int8_t *yq = (const int8_t *)(y + 4);
        const float yd = load_f32(y), d = yd * h2f(x + 80), dmin = -yd * h2f(x + 82);
        for (int l = 0; l < 8; ++l) {
            const int prod = (sc[2 * l] >> 4) * load_i16(y + 260 + 4 * l) + (sc[2 * l + 1] >> 4) * load_i16(y + 262 + 4 * l);
            acc[l] = fmaf(dmin, (float)prod, acc[l]);
        }
        int sumi[8] = {0};
        for (int c = 0; c < 2; ++c)
            for (int k = 0; k < 4; ++k)
                for (int l = 0; l < 8; ++l) { /* bytes 4l..4l+3 of the 32 values 128c + 32k + ..: sub-block 8c+2k (+1) */
                    int s = 0;
                    for (int b = 4 * l; b < 4 * l + 4; ++b) s += ((qs[32 * c + b] >> (2 * k)) & 3) * yq[128 * c + 32 * k + b];
                    sumi[l] += (sc[8 * c + 2 * k + (l >= 4)] & 15) * s;
                }
        for (int l = 0; l < 8; ++l) acc[l] = fmaf(d, (float)sumi[l], acc[l]);
    }
    return hsum8(acc);
}

static float dot1_q4_K(int n, const uint8_t *x, const uint8_t *y) {
    float acc[8] = {0}, accm[4] = {0};
    for (int i = 0; i < n / 256; ++i, x += 144, y += 292) {
        int sc[8], mn[8];
        q4k_scales_mins(x + 4, sc, mn);
        const uint8_t *qs = x + 16;
        const int8_t *yq = (const int8_t *)(y + 4);
        const float yd = load_f32(y), d = yd * h2f(x), dmin = -yd * h2f(x + 2);
        int q8s[8]; /* pairs of 16-value sums (int16, as _mm_hadd_epi16 adds them) */
        for (int j = 0; j < 8; ++j) q8s[j] = (int16_t)(load_i16(y + 260 + 4 * j) + load_i16(y + 262 + 4 * j));
        for (int l = 0; l < 4; ++l) accm[l] = fmaf(dmin, (float)(mn[2 * l] * q8s[2 * l] + mn[2 * l + 1] * q8s[2 * l + 1]), accm[l]);
        int sumi[8] = {0};
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 8; ++l) {
                int lo = 0, hi = 0;
                for (int b = 4 * l; b < 4 * l + 4; ++b) {
                    lo += (qs[32 * c + b] & 15) * yq[64 * c + b];
                    hi += (qs[32 * c + b] >> 4) * yq[64 * c + 32 + b];
                }
                sumi[l] += sc[2 * c] * lo + sc[2 * c + 1] * hi;
            }
        for (int l = 0; l < 8; ++l) acc[l] = fmaf(d, (float)sumi[l], acc[l]);
    }
    return hsum8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
}

/* ------------------------------------------------------------------------------------------------------ */
/* tiled arithmetic (K-quants): per block the integer sums s1 = sum(scale * products) and s2 = sum(min *
   activation sums), then res = d * s1, res -= dmin * s2 (fused), acc += res * y.d (fused)                */

static float tiled_step(float acc, const uint8_t *y, float d, float dmin, int s1, int s2) {
    const float res = fmaf(-dmin, (float)s2, d * (float)s1);
    return fmaf(res, load_f32(y), acc);
}

static float dot1_q2_K_tiled(int n, const uint8_t *x, const uint8_t *y) {
    float acc = 0.0f;
    for (int i = 0; i < n / 256; ++i, x += 84, y += 292) {
        const uint8_t *sc = x, *qs = x + 16;
        const int8_t *yq = (const int8_t *)(y + 4);
        int s1 = 0, s2 = 0;
        for (int sb = 0; sb < 16; ++sb) { /* values 16sb..: byte 32c + 16h + l at shift 2k, sb = 8c + 2k + h */
            const int c = sb / 8, k = (sb % 8) / 2, h = sb % 2;
            int raw = 0;
            for (int l = 0; l < 16; ++l) raw += ((qs[32 * c + 16 * h + l] >> (2 * k)) & 3) * yq[16 * sb + l];
            s1 += (sc[sb] & 15) * raw;
            s2 += (sc[sb] >> 4) * load_i16(y + 260 + 2 * sb);
        }
        acc = tiled_step(acc, y, h2f(x + 80), h2f(x + 82), s1, s2);
    }
    return acc;
}

static float dot1_q4_K_tiled(int n, const uint8_t *x, const uint8_t *y) {
    float acc = 0.0f;
    for (int i = 0; i < n / 256; ++i, x += 144, y += 292) {
        int sc[8], mn[8];
        q4k_scales_mins(x + 4, sc, mn);
        const uint8_t *qs = x + 16;
        const int8_t *yq = (const int8_t *)(y + 4);
        int s1 = 0, s2 = 0;
        for (int c = 0; c < 4; ++c) {
            int lo = 0, hi = 0;
            for (int l = 0; l < 32; ++l) {
                lo += (qs[32 * c + l] & 15) * yq[64 * c + l];
                hi += (qs[32 * c + l] >> 4) * yq[64 * c + 32 + l];
            }
            s1 += sc[2 * c] * lo + sc[2 * c + 1] * hi;
        }
        for (int j = 0; j < 8; ++j) s2 += mn[j] * (load_i16(y + 260 + 4 * j) + load_i16(y + 262 + 4 * j));
        acc = tiled_step(acc, y, h2f(x), h2f(x + 2), s1, s2);
    }
    return acc;
}

/* ------------------------------------------------------------------------------------------------------ */
/* kernels from the one-pair functions                                                                    */

static float dot1_q4_0(int n, const uint8_t *x, const uint8_t *y) { return dot1_32(0, n, x, y); }
static float dot1_q8_0(int n, const uint8_t *x, const uint8_t *y) { return dot1_32(1, n, x, y); }
static float dot1_q4_1(int n, const uint8_t *x, const uint8_t *y) { return dot1_32(2, n, x, y); }

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
FM_SCALAR_KERNEL(dot_q2_K_tiled_scalar, dot1_q2_K_tiled)
FM_SCALAR_KERNEL(dot_q4_K_tiled_scalar, dot1_q4_K_tiled)

static const fm_kernel k_scalar_q4_0 = {"q4_0_scalar", dot_q4_0_scalar, NULL};
static const fm_kernel k_scalar_q4_1 = {"q4_1_scalar", dot_q4_1_scalar, NULL};
static const fm_kernel k_scalar_q8_0 = {"q8_0_scalar", dot_q8_0_scalar, NULL};
static const fm_kernel k_scalar_q2_K = {"q2_K_scalar", dot_q2_K_scalar, dot_q2_K_tiled_scalar};
static const fm_kernel k_scalar_q4_K = {"q4_K_scalar", dot_q4_K_scalar, dot_q4_K_tiled_scalar};

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

void fm_kernel_matmul(const fm_kernel *k, int type, int tiled, int n, const void *w, size_t w_stride, int n_rows,
                      const void *act, size_t act_stride, int n_act, float *dst, size_t dst_stride) {
    const int vdt = fm_kernel_vec_dot_type(type);
    const fm_dot_fn dot = tiled ? k->dot_tiled : k->dot;
    if (n_rows <= 0 || n_act <= 0 || vdt < 0 || !dot) return;
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
                dot(n, wp + (size_t)r * w_stride, ap + (size_t)j0 * act_stride, act_stride, nj,
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
#if defined(FM_AVX512_SIMDE)
    /* a test build whose AVX-512 kernels run on SIMDe's emulation (with AVX2 + FMA underneath) */
    (void)avx512f, (void)avx512bw, (void)avx512vl;
    return FM_ISA_AVX512;
#else
    if (avx512f && avx512bw && avx512vl && (xcr0 & 0xe6) == 0xe6) return FM_ISA_AVX512;
    return FM_ISA_AVX2;
#endif
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
