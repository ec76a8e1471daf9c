/* fm_kernels_avx512.c - AVX-512 (F + BW + VL) kernels (block layouts: see fm_kernels.c).
 *
 * The integer work runs on 512-bit vectors: maddubs (unsigned weight x signed activation, pairs into int16,
 * no saturation possible), madd with the sub-block scale into int32; K-quants and IQ4_XS 64 values per
 * vector, the 32-value block types two blocks per vector. Signed weights (Q8_0, Q4_0, IQ4_XS, MXFP4) go in as
 * ggml's _mm256_sign_epi8 forms them (|x| times y with x's sign, wrapping at -128); Q3_K's exact products as
 * maddubs(y + 128, x) less 128 x. Each weight block is decoded once for up to 4 activation rows. The 16 int32
 * lanes are arranged so that they fold into ggml's 8 lanes, and the float operations are exactly those of the
 * scalar kernels (fm_kernels.c), i.e. ggml's, on 128- to 512-bit vectors: results are bitwise those of
 * ggml's CPU backend.
 *
 * The instruction set is enabled per function (target pragma); fm_kernel_get only hands these out when the
 * CPU (and OS) support AVX-512 F/BW/VL. For testing on CPUs without AVX-512, defining FM_AVX512_SIMDE
 * builds this file on SIMDe's portable emulation of the same intrinsics (slow; test use only).
 */
#include "fm_kernels.h"

#include <math.h>
#include <string.h>

#if defined(FM_AVX512_SIMDE)

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define FM_AVX512_CODE 1
#define FM_UNROLL

#elif (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>
#define FM_AVX512_CODE 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl"))), apply_to = function)
#define FM_UNROLL _Pragma("unroll")
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl")
#define FM_UNROLL _Pragma("GCC unroll 8")
#endif

#else
#define FM_AVX512_CODE 0
#endif

#if FM_AVX512_CODE

#define FM_INLINE static inline __attribute__((always_inline))
#define FM_R 4 /* activation rows per decoded weight block */

/* fp16 -> float through the table fm_kernels_init fills (one load; ggml-cpu converts the same way) */
FM_INLINE float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return fm_fp16_table[h];
}

FM_INLINE float f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

FM_INLINE __m512i ld512(const uint8_t *p) { return _mm512_loadu_si512((const void *)p); }
FM_INLINE __m256i ld256(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }
FM_INLINE __m128i ld128(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)(const void *)p); }

/* a, b as the low and high halves of one 512-bit vector */
FM_INLINE __m512i join256(__m256i a, __m256i b) { return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1); }

/* 8 floats added as ggml's hsum_float_8 adds them */
FM_INLINE float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* a shuffle_epi8 control that fills 128-bit lane L with int16 copies of bytes (b[L], b[L]+1) when pair,
   or of byte b[L] zero-extended */
FM_INLINE __m512i pick16x4(int b0, int b1, int b2, int b3, int pair) {
    const int b[4] = {b0, b1, b2, b3};
    long long e[4];
    for (int l = 0; l < 4; ++l) {
        const uint64_t hi = pair ? (uint64_t)(b[l] + 1) : 0x80u;
        const uint64_t rep = ((hi << 8) | (uint64_t)b[l]) * 0x0001000100010001ull;
        memcpy(&e[l], &rep, sizeof rep);
    }
    return _mm512_set_epi64(e[3], e[3], e[2], e[2], e[1], e[1], e[0], e[0]);
}

/* 16 int32 lanes -> ggml's 8: lane l + lane l+8 (the two halves hold the same lanes of two vectors) */
FM_INLINE __m256i fold8(__m512i v) {
    return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

/* 4 int32 sums, one per vector: all lanes of a, b, c, d added up (integers: exact in any order) */
FM_INLINE __m128i hsum4x8(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}
FM_INLINE __m128i hsum4x4(__m128i a, __m128i b, __m128i c, __m128i d) {
    return _mm_hadd_epi32(_mm_hadd_epi32(a, b), _mm_hadd_epi32(c, d));
}

/* 4 floats added as ggml adds its Q4_K min accumulator: (a0 + a2) + (a1 + a3) */
FM_INLINE float hsum4(__m128 v) {
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_movehdup_ps(v));
    return _mm_cvtss_f32(v);
}

/* the activation scales (floats at y0 + r * as) of rows r < nr, 0 in the other lanes; built in registers (an
   array written float by float and loaded as a vector would stall on store forwarding) */
FM_INLINE __m128 yd4(const uint8_t *y0, size_t as, const int nr) {
    return _mm_setr_ps(f32(y0), nr > 1 ? f32(y0 + as) : 0.0f, nr > 2 ? f32(y0 + 2 * as) : 0.0f,
                       nr > 3 ? f32(y0 + 3 * as) : 0.0f);
}

/* ggml's tiled epilogue for up to 4 activation rows at once (lanes r < nr): per block and row,
   res = d * s1, res -= dmin * s2 (fused), acc += res * y.d (fused); with dmin = 0 and s2 = 0 (the types
   without mins) res is exactly d * s1 */
FM_INLINE __m128 tiled_step4(__m128 acc, __m128i s1, __m128i s2, float d, float dmin, const uint8_t *y0, size_t as,
                             const int nr) {
    const __m128 res = _mm_fnmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(s2), _mm_mul_ps(_mm_set1_ps(d), _mm_cvtepi32_ps(s1)));
    return _mm_fmadd_ps(res, yd4(y0, as, nr), acc);
}

FM_INLINE void store4(__m128 v, const int nr, float *s, size_t ss) {
    float o[4];
    _mm_storeu_ps(o, v);
    FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = o[r];
}

/* ---------------------------------------------------------------------------------------------------- */
/* Q4_K x Q8_K: one 512-bit vector = 64 values = 32 low nibbles (sub-block 2c) + 32 high (sub-block 2c+1) */

/* one block's integer sums for nr activation rows: sumi[r] (ggml's 8 lanes of scale x products) and
   prod[r] (4 lanes of min x pairs of 16-value activation sums) */
FM_INLINE void q4k_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256i *sumi, __m128i *prod) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    uint32_t u[3];
    memcpy(&u[0], x + 4, 4);
    memcpy(&u[1], x + 8, 4);
    memcpy(&u[2], x + 12, 4);
    const uint32_t sc_lo = u[0] & 0x3f3f3f3fu;
    const uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);
    const uint32_t mn_lo = u[1] & 0x3f3f3f3fu;
    const uint32_t mn_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);
    /* scales as int16 in every 128-bit lane; mins as 8 int16 */
    const __m512i scb = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc_hi, (int)sc_lo)));
    const __m128i mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)mn_hi, (int)mn_lo));
    __m512i acc[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm512_setzero_si512();
    FM_UNROLL for (int c = 0; c < 4; ++c) {
        const __m256i q = ld256(x + 16 + 32 * c);
        const __m512i v = _mm512_and_si512(join256(q, _mm256_srli_epi16(q, 4)), m4);
        /* int16 index of sub-block 2c in the low 256 bits, 2c+1 in the high: bytes 4c and 4c+2 */
        const __m512i scv = _mm512_shuffle_epi8(scb, pick16x4(4 * c, 4 * c, 4 * c + 2, 4 * c + 2, 1));
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const uint8_t *y = y0 + (size_t)r * as + 4 + 64 * c;
            acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(_mm512_maddubs_epi16(v, ld512(y)), scv));
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) {
        sumi[r] = fold8(acc[r]);
        const __m256i bs = ld256(y0 + (size_t)r * as + 260);
        prod[r] = _mm_madd_epi16(mins, _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1)));
    }
}

FM_INLINE void q4k_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m256 acc[FM_R];
    __m128 accm[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) {
        acc[r] = _mm256_setzero_ps();
        accm[r] = _mm_setzero_ps();
    }
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 144, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R];
        __m128i prod[FM_R];
        q4k_block(x, y0, as, nr, sumi, prod);
        const float dx = h2f(x), mx = h2f(x + 2);
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const float yd = f32(y0 + (size_t)r * as), d = yd * dx, dmin = -yd * mx;
            accm[r] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod[r]), accm[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = hsum8(acc[r]) + hsum4(accm[r]);
}

FM_INLINE void q4k_rows_tiled(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m128 acc = _mm_setzero_ps();
    const __m256i z8 = _mm256_setzero_si256();
    const __m128i z4 = _mm_setzero_si128();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 144, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R] = {z8, z8, z8, z8};
        __m128i prod[FM_R] = {z4, z4, z4, z4};
        q4k_block(x, y0, as, nr, sumi, prod);
        acc = tiled_step4(acc, hsum4x8(sumi[0], sumi[1], sumi[2], sumi[3]), hsum4x4(prod[0], prod[1], prod[2], prod[3]),
                          h2f(x), h2f(x + 2), y0, as, nr);
    }
    store4(acc, nr, s, ss);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Q2_K x Q8_K: 32 bytes hold 128 values at shifts 0, 2, 4, 6; one 512-bit vector = two shifts = 64 values
   = 4 sub-blocks of 16, one per 128-bit lane. The low 256 bits hold ggml's lanes of shift 4h, the high 256
   bits those of shift 4h+2, so the two halves fold into ggml's 8 lanes. */

FM_INLINE void q2k_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256i *sumi, __m256i *prod) {
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i sc = ld128(x);
    const __m512i scb = _mm512_broadcast_i32x4(_mm_and_si128(sc, m4));
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), m4));
    __m512i acc[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm512_setzero_si512();
    FM_UNROLL for (int c = 0; c < 2; ++c) {
        const __m256i q = ld256(x + 16 + 32 * c);
        FM_UNROLL for (int h = 0; h < 2; ++h) { /* shifts 4h and 4h+2: values 128c + 64h .. +63 */
            const __m256i qa = h ? _mm256_srli_epi16(q, 4) : q;
            const __m512i v = _mm512_and_si512(join256(qa, _mm256_srli_epi16(qa, 2)), m3);
            const int sb = 8 * c + 4 * h;
            const __m512i scv = _mm512_shuffle_epi8(scb, pick16x4(sb, sb + 1, sb + 2, sb + 3, 0));
            FM_UNROLL for (int r = 0; r < nr; ++r) {
                const uint8_t *y = y0 + (size_t)r * as + 4 + 128 * c + 64 * h;
                acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(_mm512_maddubs_epi16(v, ld512(y)), scv));
            }
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) {
        sumi[r] = fold8(acc[r]);
        prod[r] = _mm256_madd_epi16(mins, ld256(y0 + (size_t)r * as + 260));
    }
}

FM_INLINE void q2k_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m256 acc[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm256_setzero_ps();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 84, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R], prod[FM_R];
        q2k_block(x, y0, as, nr, sumi, prod);
        const float dx = h2f(x + 80), mx = h2f(x + 82);
        FM_UNROLL for (int r = 0; r < nr; ++r) { /* the mins first, as ggml */
            const float yd = f32(y0 + (size_t)r * as), d = yd * dx, dmin = -yd * mx;
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(prod[r]), acc[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = hsum8(acc[r]);
}

FM_INLINE void q2k_rows_tiled(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m128 acc = _mm_setzero_ps();
    const __m256i z = _mm256_setzero_si256();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 84, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R] = {z, z, z, z}, prod[FM_R] = {z, z, z, z};
        q2k_block(x, y0, as, nr, sumi, prod);
        acc = tiled_step4(acc, hsum4x8(sumi[0], sumi[1], sumi[2], sumi[3]), hsum4x8(prod[0], prod[1], prod[2], prod[3]),
                          h2f(x + 80), h2f(x + 82), y0, as, nr);
    }
    store4(acc, nr, s, ss);
}

/* ---------------------------------------------------------------------------------------------------- */
/* 32-value blocks: Q4_0 x Q8_0, Q8_0 x Q8_0, Q4_1 x Q8_1. The integer dots of two blocks come from one
   512-bit vector (low 8 lanes: block i, high 8: block i+1); the float accumulation stays ggml's: one 256-bit
   accumulator, block i then block i+1, each acc += (weight d * activation d) * lanes (fused); Q4_1's m * s
   fused into a separate float sum. An odd last block goes through 256-bit code. */

FM_INLINE __m256i nibbles32(const uint8_t *qs) {
    const __m128i q = ld128(qs);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
}

/* 16 int32: sums of 4 products of unsigned bytes ux and signed bytes y */
FM_INLINE __m512i dot_u8s8(__m512i ux, __m512i y) {
    return _mm512_madd_epi16(_mm512_maddubs_epi16(ux, y), _mm512_set1_epi16(1));
}
FM_INLINE __m256i dot_u8s8_256(__m256i ux, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ux, y), _mm256_set1_epi16(1));
}

/* blocks i, i+1 (x: block i of the weights; y0: block i of activation row 0) into acc[r]; `kind` is
   0 for Q4_0, 1 for Q8_0, 2 for Q4_1 (unsigned nibbles with a min) */
FM_INLINE void pair_step(const int kind, const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256 *acc,
                         float *summs) {
    const size_t xs = kind == 0 ? 18 : kind == 1 ? 34 : 20, ys = kind == 2 ? 36 : 34, yq = kind == 2 ? 4 : 2;
    __m512i ux;
    __mmask64 neg = 0;
    if (kind == 0) {
        const __m512i bx = _mm512_sub_epi8(join256(nibbles32(x + 2), nibbles32(x + xs + 2)), _mm512_set1_epi8(8));
        ux = _mm512_abs_epi8(bx);
        neg = _mm512_movepi8_mask(bx);
    } else if (kind == 1) {
        const __m512i bx = join256(ld256(x + 2), ld256(x + xs + 2));
        ux = _mm512_abs_epi8(bx);
        neg = _mm512_movepi8_mask(bx);
    } else {
        ux = join256(nibbles32(x + 4), nibbles32(x + xs + 4));
    }
    const float dx0 = h2f(x), dx1 = h2f(x + xs);
    FM_UNROLL for (int r = 0; r < nr; ++r) {
        const uint8_t *y = y0 + (size_t)r * as;
        __m512i yv = join256(ld256(y + yq), ld256(y + ys + yq));
        /* the sign of x onto y (wrapping, as _mm256_sign_epi8); where x is 0, |x| is 0 and y does not matter */
        if (kind != 2) yv = _mm512_mask_sub_epi8(yv, neg, _mm512_setzero_si512(), yv);
        const __m512i p = dot_u8s8(ux, yv);
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx0 * h2f(y)), _mm256_cvtepi32_ps(_mm512_castsi512_si256(p)), acc[r]);
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx1 * h2f(y + ys)), _mm256_cvtepi32_ps(_mm512_extracti64x4_epi64(p, 1)),
                                 acc[r]);
        if (kind == 2) {
            summs[r] = fmaf(h2f(x + 2), h2f(y + 2), summs[r]);
            summs[r] = fmaf(h2f(x + xs + 2), h2f(y + ys + 2), summs[r]);
        }
    }
}

/* one block (the odd last one) with 256-bit vectors */
FM_INLINE void single_step(const int kind, const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256 *acc,
                           float *summs) {
    const size_t yq = kind == 2 ? 4 : 2;
    __m256i ux, bx = _mm256_setzero_si256();
    if (kind == 0) {
        bx = _mm256_sub_epi8(nibbles32(x + 2), _mm256_set1_epi8(8));
        ux = _mm256_sign_epi8(bx, bx);
    } else if (kind == 1) {
        bx = ld256(x + 2);
        ux = _mm256_sign_epi8(bx, bx);
    } else {
        ux = nibbles32(x + 4);
    }
    const float dx = h2f(x);
    FM_UNROLL for (int r = 0; r < nr; ++r) {
        const uint8_t *y = y0 + (size_t)r * as;
        __m256i yv = ld256(y + yq);
        if (kind != 2) yv = _mm256_sign_epi8(yv, bx);
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * h2f(y)), _mm256_cvtepi32_ps(dot_u8s8_256(ux, yv)), acc[r]);
        if (kind == 2) summs[r] = fmaf(h2f(x + 2), h2f(y + 2), summs[r]);
    }
}

#define FM_ROWS32(name, kind, xsize, ysize)                                                                \
    FM_INLINE void name(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) { \
        __m256 acc[FM_R];                                                                                   \
        float summs[FM_R];                                                                                  \
        FM_UNROLL for (int r = 0; r < nr; ++r) {                                                            \
            acc[r] = _mm256_setzero_ps();                                                                   \
            summs[r] = 0.0f;                                                                                \
        }                                                                                                   \
        const int nb = n / 32;                                                                              \
        int i = 0;                                                                                          \
        for (; i + 1 < nb; i += 2) pair_step(kind, w + (size_t)i * xsize, a + (size_t)i * ysize, as, nr, acc, summs); \
        if (i < nb) single_step(kind, w + (size_t)i * xsize, a + (size_t)i * ysize, as, nr, acc, summs);    \
        FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = kind == 2 ? hsum8(acc[r]) + summs[r] : hsum8(acc[r]); \
    }

FM_ROWS32(q4_0_rows, 0, 18, 34)
FM_ROWS32(q8_0_rows, 1, 34, 34)
FM_ROWS32(q4_1_rows, 2, 20, 36)

/* ---------------------------------------------------------------------------------------------------- */
/* helpers of the K-quant and IQ4_XS kernels below */

/* 64-bit element of four copies of int16 e */
#define FM_REP16(e) ((long long)((uint64_t)(e) * 0x0001000100010001ull))

/* a permutexvar_epi16 index that fills 128-bit lane L with copies of int16 element e[L] */
FM_INLINE __m512i idx16x4(int e0, int e1, int e2, int e3) {
    return _mm512_set_epi64(FM_REP16(e3), FM_REP16(e3), FM_REP16(e2), FM_REP16(e2), FM_REP16(e1), FM_REP16(e1),
                            FM_REP16(e0), FM_REP16(e0));
}

/* srlv_epi16 counts: 0 in the low 256 bits, k in the high 256 bits */
FM_INLINE __m512i shift_hi(int k) { return _mm512_set_epi64(FM_REP16(k), FM_REP16(k), FM_REP16(k), FM_REP16(k), 0, 0, 0, 0); }

/* srlv_epi16 counts: 4 in 128-bit lanes 1 and 3, 0 in lanes 0 and 2 */
FM_INLINE __m512i shift4_odd(void) { return _mm512_set_epi64(FM_REP16(4), FM_REP16(4), 0, 0, FM_REP16(4), FM_REP16(4), 0, 0); }

/* 32 bytes at p in both 256-bit halves, those of the high half shifted right by k bits (in 16-bit words:
   mask the bytes afterwards) */
FM_INLINE __m512i dup_shift(const uint8_t *p, int k) { return _mm512_srlv_epi16(_mm512_broadcast_i64x4(ld256(p)), shift_hi(k)); }

/* v in the low bits, zeros above (the casts leave the upper bits undefined, which SIMDe's emulation reads) */
FM_INLINE __m512i zext256(__m256i v) { return _mm512_inserti64x4(_mm512_setzero_si512(), v, 0); }
FM_INLINE __m512i zext128(__m128i v) { return _mm512_inserti32x4(_mm512_setzero_si512(), v, 0); }

/* bytes where (a & b) == 0 */
#if defined(FM_AVX512_SIMDE)
FM_INLINE __mmask64 testn8(__m512i a, __m512i b) { return _mm512_cmpeq_epi8_mask(_mm512_and_si512(a, b), _mm512_setzero_si512()); }
#else
FM_INLINE __mmask64 testn8(__m512i a, __m512i b) { return _mm512_testn_epi8_mask(a, b); }
#endif

/* ternary-logic truth tables: (a & c) | b; c ? a : b (bitwise) */
#define FM_AC_OR_B 0xEC
#define FM_C_A_B 0xE4

/* ---------------------------------------------------------------------------------------------------- */
/* Q6_K x Q8_K: the 6-bit codes (0..63, without the -32) times the activations, as Q4_K; one 512-bit vector =
   two 32-value vectors of ggml (k = 0, 1 of a half, or k = 2, 3), 4 sub-blocks of 16, one per 128-bit lane.
   ggml subtracts 32 * (scale x 16-value activation sums) from its 8 lanes at the end of the block. */

FM_INLINE void q6k_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256i *sumi) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m33 = _mm512_set1_epi8(0x33);
    const __m256i sc16 = _mm256_cvtepi8_epi16(ld128(x + 192));
    const __m512i sc = zext256(sc16);
    __m512i acc[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm512_setzero_si512();
    FM_UNROLL for (int h = 0; h < 2; ++h) { /* values 128h .. 128h + 127 */
        const __m512i ql = ld512(x + 64 * h);
        /* qh, and qh >> 2 in the high 256 bits, bits 0-1 and 4-5 kept: the high bits of k = 0 and 2 (low
           half), k = 1 and 3 (high half) */
        const __m512i qhm = _mm512_and_si512(dup_shift(x + 128 + 32 * h, 2), m33);
        const __m512i v01 = _mm512_ternarylogic_epi32(ql, _mm512_slli_epi16(qhm, 4), m4, FM_C_A_B);
        const __m512i v23 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql, 4), qhm, m4, FM_C_A_B);
        const __m512i sc01 = _mm512_permutexvar_epi16(idx16x4(8 * h, 8 * h + 1, 8 * h + 2, 8 * h + 3), sc);
        const __m512i sc23 = _mm512_permutexvar_epi16(idx16x4(8 * h + 4, 8 * h + 5, 8 * h + 6, 8 * h + 7), sc);
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const uint8_t *y = y0 + (size_t)r * as + 4 + 128 * h;
            acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(_mm512_maddubs_epi16(v01, ld512(y)), sc01));
            acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(_mm512_maddubs_epi16(v23, ld512(y + 64)), sc23));
        }
    }
    /* lane l -= 32 * (bsums[2l] * sc[2l] + bsums[2l+1] * sc[2l+1]): the scales times 32 fit int16 */
    const __m256i sc32 = _mm256_slli_epi16(sc16, 5);
    FM_UNROLL for (int r = 0; r < nr; ++r)
        sumi[r] = _mm256_sub_epi32(fold8(acc[r]), _mm256_madd_epi16(ld256(y0 + (size_t)r * as + 260), sc32));
}

FM_INLINE void q6k_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m256 acc[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm256_setzero_ps();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 210, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R];
        q6k_block(x, y0, as, nr, sumi);
        const float dx = h2f(x + 208);
        FM_UNROLL for (int r = 0; r < nr; ++r)
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(f32(y0 + (size_t)r * as) * dx), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = hsum8(acc[r]);
}

FM_INLINE void q6k_rows_tiled(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m128 acc = _mm_setzero_ps();
    const __m256i z = _mm256_setzero_si256();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 210, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R] = {z, z, z, z};
        q6k_block(x, y0, as, nr, sumi);
        acc = tiled_step4(acc, hsum4x8(sumi[0], sumi[1], sumi[2], sumi[3]), _mm_setzero_si128(), h2f(x + 208), 0.0f,
                          y0, as, nr);
    }
    store4(acc, nr, s, ss);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Q3_K x Q8_K: values v = (2 low bits) - 4 * (1 - high bit) in -4..3 and exact products v * y (ggml forms
   them with two maddubs): maddubs(y + 128 as unsigned, v) = v * y + 128 * v, the 128 * v part (weights only)
   taken off again, per row in int16 for one or two rows, else once per block from the int32 lanes. One
   512-bit vector = two of ggml's 32-value vectors (k = 2m, 2m+1 of a 128-value half c): 4 sub-blocks of 16,
   one per 128-bit lane. */

/* the 16 6-bit scales minus 32, as int16: scale j = (low nibble of scales[j] for j < 8, high nibble of
   scales[j-8] for j >= 8) | ((scales[8 + j % 4] >> 2 (j / 4)) & 3) << 4 */
FM_INLINE __m256i q3k_scales16(const uint8_t *x) {
    const __m256i t = _mm256_cvtepu8_epi16(ld128(x + 94)); /* scales[k] is element 2 + k */
    const __m256i lo = _mm256_srlv_epi16(_mm256_permutexvar_epi16(_mm256_setr_epi16(2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5, 6, 7, 8, 9), t),
                                         _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4));
    const __m256i hi = _mm256_srlv_epi16(_mm256_permutexvar_epi16(_mm256_setr_epi16(10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13, 10, 11, 12, 13), t),
                                         _mm256_setr_epi16(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6));
    const __m256i sc = _mm256_ternarylogic_epi32(lo, _mm256_and_si256(_mm256_slli_epi16(hi, 4), _mm256_set1_epi16(0x30)),
                                                 _mm256_set1_epi16(0x0F), FM_AC_OR_B);
    return _mm256_sub_epi16(sc, _mm256_set1_epi16(32));
}

FM_INLINE void q3k_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256i *sumi) {
    const __m512i m3 = _mm512_set1_epi8(3), four = _mm512_set1_epi8(4), m80 = _mm512_set1_epi8((char)0x80);
    const int row_corr = nr <= 2;
    const __m512i sc = zext256(q3k_scales16(x));
    /* hmask, and hmask >> 1 in the high 256 bits: bit 4c + 2m of both halves is that of k = 2m (low) and
       k = 2m + 1 (high) */
    const __m512i hmm = dup_shift(x, 1);
    __m512i acc[FM_R], corr = _mm512_setzero_si512();
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm512_setzero_si512();
    FM_UNROLL for (int c = 0; c < 2; ++c) {
        const __m512i qq = dup_shift(x + 32 + 32 * c, 2); /* low bits of k = 2m at shift 4m, k = 2m + 1 above */
        FM_UNROLL for (int m = 0; m < 2; ++m) {
            const __m512i lo = _mm512_and_si512(m ? _mm512_srli_epi16(qq, 4) : qq, m3);
            const __m512i v = _mm512_mask_sub_epi8(lo, testn8(hmm, _mm512_set1_epi8((char)(1 << (4 * c + 2 * m)))), lo, four);
            const int e = 8 * c + 4 * m;
            const __m512i scv = _mm512_permutexvar_epi16(idx16x4(e, e + 1, e + 2, e + 3), sc);
            const __m512i c16 = _mm512_maddubs_epi16(m80, v); /* 128 * (pairs of v) */
            if (!row_corr) corr = _mm512_add_epi32(corr, _mm512_madd_epi16(c16, scv));
            FM_UNROLL for (int r = 0; r < nr; ++r) {
                const __m512i yv = _mm512_xor_si512(ld512(y0 + (size_t)r * as + 4 + 128 * c + 64 * m), m80);
                __m512i p = _mm512_maddubs_epi16(yv, v);
                if (row_corr) p = _mm512_sub_epi16(p, c16);
                acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(p, scv));
            }
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) sumi[r] = fold8(row_corr ? acc[r] : _mm512_sub_epi32(acc[r], corr));
}

FM_INLINE void q3k_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m256 acc[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm256_setzero_ps();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 110, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R];
        q3k_block(x, y0, as, nr, sumi);
        const float dx = h2f(x + 108);
        FM_UNROLL for (int r = 0; r < nr; ++r)
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(f32(y0 + (size_t)r * as) * dx), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = hsum8(acc[r]);
}

FM_INLINE void q3k_rows_tiled(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m128 acc = _mm_setzero_ps();
    const __m256i z = _mm256_setzero_si256();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 110, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R] = {z, z, z, z};
        q3k_block(x, y0, as, nr, sumi);
        acc = tiled_step4(acc, hsum4x8(sumi[0], sumi[1], sumi[2], sumi[3]), _mm_setzero_si128(), h2f(x + 108), 0.0f,
                          y0, as, nr);
    }
    store4(acc, nr, s, ss);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Q5_K x Q8_K: Q4_K's nibbles plus 16 x the high bit (values 0..31), scales and mins as Q4_K's; the mins'
   sum is one integer per block and row, fused into one float sum per row. */

/* the 8 6-bit scales (elements 0..7) and 8 6-bit mins (8..15) of the Q4_K/Q5_K block at x as int16, from its
   12 bytes q at x + 4: scale j < 4 = q[j] & 63, j >= 4: (q[j+4] & 15) | (q[j-4] >> 6) << 4; min j < 4 =
   q[j+4] & 63, j >= 4: (q[j+4] >> 4) | (q[j] >> 6) << 4 */
FM_INLINE __m256i q5k_scales16(const uint8_t *x) {
    const __m256i t = _mm256_cvtepu8_epi16(ld128(x)); /* q[k] is element 4 + k */
    const __m256i a = _mm256_srlv_epi16(_mm256_permutexvar_epi16(_mm256_setr_epi16(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15), t),
                                        _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4));
    /* (q >> 6) << 4 = (q >> 2) & 0x30 */
    const __m256i b = _mm256_and_si256(_mm256_srli_epi16(_mm256_permutexvar_epi16(_mm256_setr_epi16(0, 0, 0, 0, 4, 5, 6, 7, 0, 0, 0, 0, 8, 9, 10, 11), t), 2),
                                       _mm256_setr_epi16(0, 0, 0, 0, 0x30, 0x30, 0x30, 0x30, 0, 0, 0, 0, 0x30, 0x30, 0x30, 0x30));
    return _mm256_ternarylogic_epi32(a, b, _mm256_setr_epi16(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15), FM_AC_OR_B);
}

/* the 4 sums m[r] = sum_j mins[j] * (bsums[2j] + bsums[2j+1]) of activation rows r < nr (0 in the other
   lanes), the pair sums wrapped to int16 as ggml's _mm_hadd_epi16 forms them (`wrap`, vec_dot) or exact
   (ggml's tiled path); mins: the 8 mins as int16 */
FM_INLINE __m128i mins_dot4(__m128i mins, const uint8_t *y0, size_t as, const int nr, const int wrap) {
    if (nr <= 2) { /* row by row */
        __m128i p[2];
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const __m256i bs = ld256(y0 + (size_t)r * as + 260);
            const __m128i lo = _mm256_castsi256_si128(bs), hi = _mm256_extracti128_si256(bs, 1);
            p[r] = wrap ? _mm_madd_epi16(mins, _mm_hadd_epi16(lo, hi))
                        : _mm_add_epi32(_mm_madd_epi16(_mm_unpacklo_epi16(mins, mins), lo),
                                        _mm_madd_epi16(_mm_unpackhi_epi16(mins, mins), hi));
        }
        const __m128i p1 = nr > 1 ? p[1] : _mm_setzero_si128();
        return _mm_hadd_epi32(_mm_hadd_epi32(p[0], p1), _mm_setzero_si128());
    }
    const __m512i z = _mm512_setzero_si512();
    /* mins as [mn0, 0, mn1, 0, ..] (wrap: the pair sum is in the low int16 of each int32) or [mn0, mn0, mn1,
       mn1, ..], in both 256-bit halves */
    const __m256i m2 = wrap ? _mm256_cvtepu16_epi32(mins)
                            : _mm256_set_m128i(_mm_unpackhi_epi16(mins, mins), _mm_unpacklo_epi16(mins, mins));
    const __m512i mm = _mm512_broadcast_i64x4(m2);
    const uint8_t *b = y0 + 260;
    __m512i p01 = nr > 1 ? join256(ld256(b), ld256(b + as)) : zext256(ld256(b));
    __m512i p23 = nr > 3 ? join256(ld256(b + 2 * as), ld256(b + 3 * as)) : nr > 2 ? zext256(ld256(b + 2 * as)) : z;
    if (wrap) {
        p01 = _mm512_add_epi16(p01, _mm512_srli_epi32(p01, 16));
        p23 = _mm512_add_epi16(p23, _mm512_srli_epi32(p23, 16));
    }
    p01 = _mm512_madd_epi16(p01, mm); /* row 0 in the low 256 bits, row 1 in the high */
    p23 = _mm512_madd_epi16(p23, mm);
    /* per 128-bit lane: [sum of p01's 4, same, sum of p23's 4, same], then lanes 0 + 1 and 2 + 3 */
    __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(p01, p23), _mm512_unpackhi_epi64(p01, p23));
    t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_CDAB));
    t = _mm512_add_epi32(t, _mm512_shuffle_i64x2(t, t, _MM_SHUFFLE(2, 3, 0, 1)));
    /* rows 0, 1, 2, 3 are int32 elements 0, 8, 2, 10 */
    return _mm512_castsi512_si128(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 8, 2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), t));
}

FM_INLINE void q5k_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, const int wrap, __m256i *sumi,
                         __m128i *m) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), b16 = _mm512_set1_epi8(16);
    const __m256i scm = q5k_scales16(x);
    const __m512i sc = zext256(scm);
    const __m128i mins = _mm256_extracti128_si256(scm, 1);
    /* qh, and qh >> 1 in the high 256 bits: bit 2c of both halves is the high bit of values 64c + l (low)
       and 64c + 32 + l (high) */
    const __m512i qhh = dup_shift(x + 16, 1);
    __m512i acc[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm512_setzero_si512();
    FM_UNROLL for (int c = 0; c < 4; ++c) {
        const __m512i lo = _mm512_and_si512(dup_shift(x + 48 + 32 * c, 4), m4);
        const __m512i v = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(qhh, _mm512_set1_epi8((char)(1 << (2 * c)))), lo, b16);
        const __m512i scv = _mm512_permutexvar_epi16(idx16x4(2 * c, 2 * c, 2 * c + 1, 2 * c + 1), sc);
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const uint8_t *y = y0 + (size_t)r * as + 4 + 64 * c;
            acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(_mm512_maddubs_epi16(v, ld512(y)), scv));
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) sumi[r] = fold8(acc[r]);
    *m = mins_dot4(mins, y0, as, nr, wrap);
}

FM_INLINE void q5k_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m256 acc[FM_R];
    __m128 summs = _mm_setzero_ps();
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm256_setzero_ps();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 176, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R];
        __m128i m;
        q5k_block(x, y0, as, nr, 1, sumi, &m);
        const float dx = h2f(x), mx = h2f(x + 2);
        /* summs += (-y.d * dmin) * (sum of the block's mins x activation sums), fused, per row */
        const __m128 dmin = _mm_mul_ps(_mm_xor_ps(yd4(y0, as, nr), _mm_set1_ps(-0.0f)), _mm_set1_ps(mx));
        summs = _mm_fmadd_ps(dmin, _mm_cvtepi32_ps(m), summs);
        FM_UNROLL for (int r = 0; r < nr; ++r)
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(f32(y0 + (size_t)r * as) * dx), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
    }
    float m[4];
    _mm_storeu_ps(m, summs);
    FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = hsum8(acc[r]) + m[r];
}

FM_INLINE void q5k_rows_tiled(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m128 acc = _mm_setzero_ps();
    const __m256i z = _mm256_setzero_si256();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 176, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R] = {z, z, z, z};
        __m128i m;
        q5k_block(x, y0, as, nr, 0, sumi, &m);
        acc = tiled_step4(acc, hsum4x8(sumi[0], sumi[1], sumi[2], sumi[3]), m, h2f(x), h2f(x + 2), y0, as, nr);
    }
    store4(acc, nr, s, ss);
}

/* ---------------------------------------------------------------------------------------------------- */
/* IQ4_XS x Q8_K: signed table values, products as ggml forms them (|x| times y with x's sign, wrapping at
   -128: the table's absolute values, y negated under a mask). One 512-bit vector = 32 bytes of qs = two
   sub-blocks of 32: [low nibbles, high nibbles] of each, which is ggml's order of values. The tiled path
   needs the exact products: they differ only where y = -128 and x < 0, which ggml's Q8_K never produces;
   a block that has such an activation byte is corrected by a scalar loop. */

/* ((scales_l nibble s) | (2 bits s of scales_h) << 4) - 32 for the 8 sub-blocks, as int16 */
FM_INLINE __m128i iq4xs_scales(const uint8_t *x) {
    uint16_t sh;
    uint32_t sl;
    memcpy(&sh, x + 2, sizeof sh);
    memcpy(&sl, x + 4, sizeof sl);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i s = _mm_cvtsi32_si128((int)sl);
    const __m128i nib = _mm_unpacklo_epi8(_mm_and_si128(s, m4), _mm_and_si128(_mm_srli_epi16(s, 4), m4));
    const __m128i hi = _mm_and_si128(_mm_srlv_epi16(_mm_set1_epi16((short)sh), _mm_setr_epi16(0, 2, 4, 6, 8, 10, 12, 14)),
                                     _mm_set1_epi16(3));
    return _mm_sub_epi16(_mm_or_si128(_mm_cvtepu8_epi16(nib), _mm_slli_epi16(hi, 4)), _mm_set1_epi16(32));
}

/* the exact block sum minus ggml's (sign trick) one: 256 * scale * |x| where x < 0 and y = -128 */
static int iq4xs_fix(const uint8_t *x, const uint8_t *y) {
    const int sh = x[2] | (x[3] << 8);
    int fix = 0;
    for (int sb = 0; sb < 8; ++sb) {
        const int ls = (((x[4 + sb / 2] >> (4 * (sb % 2))) & 15) | (((sh >> (2 * sb)) & 3) << 4)) - 32;
        for (int l = 0; l < 32; ++l) {
            const uint8_t q = x[8 + 16 * sb + (l & 15)];
            const int v = fm_iq4nl_values[l < 16 ? q & 15 : q >> 4];
            if (v < 0 && (int8_t)y[4 + 32 * sb + l] == -128) fix += 256 * ls * -v;
        }
    }
    return fix;
}

FM_INLINE void iq4xs_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, const int exact, __m256i *sumi,
                           int *fix) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), b8 = _mm512_set1_epi8(8);
    const __m512i tab = _mm512_broadcast_i32x4(_mm_abs_epi8(ld128((const uint8_t *)fm_iq4nl_values)));
    const __m512i sc = zext128(iq4xs_scales(x));
    __m512i acc[FM_R], ymin[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) {
        acc[r] = _mm512_setzero_si512();
        ymin[r] = _mm512_setzero_si512();
    }
    FM_UNROLL for (int c = 0; c < 4; ++c) {
        /* [A, A, B, B] of the 32 bytes A B, the second and fourth shifted: the nibbles in value order */
        const __m512i qb = _mm512_broadcast_i64x4(ld256(x + 8 + 32 * c));
        const __m512i idx = _mm512_and_si512(_mm512_srlv_epi16(_mm512_shuffle_i64x2(qb, qb, 0x50), shift4_odd()), m4);
        const __m512i ax = _mm512_shuffle_epi8(tab, idx);
        const __mmask64 neg = testn8(idx, b8); /* table entries 0..7 are negative */
        const __m512i scv = _mm512_permutexvar_epi16(idx16x4(2 * c, 2 * c, 2 * c + 1, 2 * c + 1), sc);
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const __m512i yv = ld512(y0 + (size_t)r * as + 4 + 64 * c);
            if (exact) ymin[r] = _mm512_min_epi8(ymin[r], yv);
            const __m512i sy = _mm512_mask_sub_epi8(yv, neg, _mm512_setzero_si512(), yv);
            acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(_mm512_maddubs_epi16(ax, sy), scv));
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) {
        sumi[r] = fold8(acc[r]);
        if (exact)
            fix[r] = _mm512_cmpeq_epi8_mask(ymin[r], _mm512_set1_epi8(-128)) ? iq4xs_fix(x, y0 + (size_t)r * as) : 0;
    }
}

FM_INLINE void iq4xs_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m256 acc[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm256_setzero_ps();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 136, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R];
        iq4xs_block(x, y0, as, nr, 0, sumi, NULL);
        const float dx = h2f(x);
        FM_UNROLL for (int r = 0; r < nr; ++r)
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * f32(y0 + (size_t)r * as)), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = hsum8(acc[r]);
}

FM_INLINE void iq4xs_rows_tiled(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m128 acc = _mm_setzero_ps();
    const __m256i z = _mm256_setzero_si256();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 136, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R] = {z, z, z, z};
        int fix[4] = {0, 0, 0, 0};
        iq4xs_block(x, y0, as, nr, 1, sumi, fix);
        const __m128i s1 = _mm_add_epi32(hsum4x8(sumi[0], sumi[1], sumi[2], sumi[3]),
                                         _mm_setr_epi32(fix[0], fix[1], fix[2], fix[3]));
        acc = tiled_step4(acc, s1, _mm_setzero_si128(), h2f(x), 0.0f, y0, as, nr);
    }
    store4(acc, nr, s, ss);
}

/* ---------------------------------------------------------------------------------------------------- */
/* MXFP4 x Q8_0: two 32-value blocks per 512-bit vector (low 256 bits: the even block, high: the odd one),
   products as ggml forms them (|x| times y with x's sign); the even blocks' 8 float lanes accumulate in the
   low half of one 512-bit accumulator and the odd ones' in the high half (ggml's accum1 and accum2, each
   lane fused as there), added lane by lane at the end. n is a multiple of 64 (fm_kernel_n_multiple): an odd
   last block is left out, as the scalar kernel leaves it out. */

/* 2^(e-128) as ggml computes it (fm_e8m0_half), as float bits: a constant table */
#define FM_E8(e) ((e) < 2 ? 0x00200000u << ((e) & 1) : (uint32_t)((e) - 1) << 23)
#define FM_E8_4(e) FM_E8(e), FM_E8((e) + 1), FM_E8((e) + 2), FM_E8((e) + 3)
#define FM_E8_16(e) FM_E8_4(e), FM_E8_4((e) + 4), FM_E8_4((e) + 8), FM_E8_4((e) + 12)
#define FM_E8_64(e) FM_E8_16(e), FM_E8_16((e) + 16), FM_E8_16((e) + 32), FM_E8_16((e) + 48)
static const uint32_t fm_e8m0_bits[256] = {FM_E8_64(0), FM_E8_64(64), FM_E8_64(128), FM_E8_64(192)};

FM_INLINE float e8m0_half(uint8_t e) {
    float f;
    memcpy(&f, &fm_e8m0_bits[e], sizeof f);
    return f;
}

FM_INLINE void mxfp4_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), b8 = _mm512_set1_epi8(8), ones = _mm512_set1_epi16(1);
    const __m512i tab = _mm512_broadcast_i32x4(_mm_abs_epi8(ld128((const uint8_t *)fm_fp4_values)));
    const __m512i shift = shift4_odd();
    __m512 acc[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm512_setzero_ps();
    for (int i = 0; i + 1 < n / 32; i += 2) {
        const uint8_t *x = w + (size_t)i * 17, *y0 = a + (size_t)i * 34;
        /* [qs0, qs0, qs1, qs1], the second and fourth copies shifted: the nibbles in value order */
        const __m512i qb = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(ld128(x + 1)), 0xFF00, ld128(x + 18));
        const __m512i idx = _mm512_and_si512(_mm512_srlv_epi16(qb, shift), m4);
        const __m512i ax = _mm512_shuffle_epi8(tab, idx);
        const __mmask64 neg = _mm512_test_epi8_mask(idx, b8); /* entries 8..15: negative (or -0) */
        const float e0 = e8m0_half(x[0]), e1 = e8m0_half(x[17]);
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const uint8_t *y = y0 + (size_t)r * as;
            const __m512i yv = join256(ld256(y + 2), ld256(y + 36));
            const __m512i sy = _mm512_mask_sub_epi8(yv, neg, _mm512_setzero_si512(), yv);
            const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(ax, sy), ones);
            const __m512 d = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(h2f(y) * e0), _mm512_set1_ps(h2f(y + 34) * e1));
            acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc[r]);
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r)
        s[(size_t)r * ss] = hsum8(_mm256_add_ps(_mm512_castps512_ps256(acc[r]),
                                                _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[r]), 1))));
}

/* ---------------------------------------------------------------------------------------------------- */

#define FM_GROUPED(fname, rows)                                                                            \
    static void fname(int n, const void *w, const void *act, size_t as, int n_act, float *s, size_t ss) { \
        const uint8_t *wp = (const uint8_t *)w, *ap = (const uint8_t *)act;                                \
        int j = 0;                                                                                          \
        for (; j + FM_R <= n_act; j += FM_R) rows(n, wp, ap + (size_t)j * as, as, FM_R, s + (size_t)j * ss, ss); \
        switch (n_act - j) {                                                                                \
        case 3: rows(n, wp, ap + (size_t)j * as, as, 3, s + (size_t)j * ss, ss); break;                     \
        case 2: rows(n, wp, ap + (size_t)j * as, as, 2, s + (size_t)j * ss, ss); break;                     \
        case 1: rows(n, wp, ap + (size_t)j * as, as, 1, s + (size_t)j * ss, ss); break;                     \
        default: break;                                                                                     \
        }                                                                                                   \
    }

FM_GROUPED(dot_q4_K_avx512, q4k_rows)
FM_GROUPED(dot_q4_K_tiled_avx512, q4k_rows_tiled)
FM_GROUPED(dot_q2_K_avx512, q2k_rows)
FM_GROUPED(dot_q2_K_tiled_avx512, q2k_rows_tiled)
FM_GROUPED(dot_q4_0_avx512, q4_0_rows)
FM_GROUPED(dot_q8_0_avx512, q8_0_rows)
FM_GROUPED(dot_q4_1_avx512, q4_1_rows)
FM_GROUPED(dot_q3_K_avx512, q3k_rows)
FM_GROUPED(dot_q3_K_tiled_avx512, q3k_rows_tiled)
FM_GROUPED(dot_q5_K_avx512, q5k_rows)
FM_GROUPED(dot_q5_K_tiled_avx512, q5k_rows_tiled)
FM_GROUPED(dot_q6_K_avx512, q6k_rows)
FM_GROUPED(dot_q6_K_tiled_avx512, q6k_rows_tiled)
FM_GROUPED(dot_iq4_xs_avx512, iq4xs_rows)
FM_GROUPED(dot_iq4_xs_tiled_avx512, iq4xs_rows_tiled)
FM_GROUPED(dot_mxfp4_avx512, mxfp4_rows)

#if !defined(FM_AVX512_SIMDE)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

static const fm_kernel k_q4_0 = {"q4_0_avx512", dot_q4_0_avx512, NULL};
static const fm_kernel k_q4_1 = {"q4_1_avx512", dot_q4_1_avx512, NULL};
static const fm_kernel k_q8_0 = {"q8_0_avx512", dot_q8_0_avx512, NULL};
static const fm_kernel k_q2_K = {"q2_K_avx512", dot_q2_K_avx512, dot_q2_K_tiled_avx512};
static const fm_kernel k_q4_K = {"q4_K_avx512", dot_q4_K_avx512, dot_q4_K_tiled_avx512};
static const fm_kernel k_q3_K = {"q3_K_avx512", dot_q3_K_avx512, dot_q3_K_tiled_avx512};
static const fm_kernel k_q5_K = {"q5_K_avx512", dot_q5_K_avx512, dot_q5_K_tiled_avx512};
static const fm_kernel k_q6_K = {"q6_K_avx512", dot_q6_K_avx512, dot_q6_K_tiled_avx512};
static const fm_kernel k_iq4_xs = {"iq4_xs_avx512", dot_iq4_xs_avx512, dot_iq4_xs_tiled_avx512};
static const fm_kernel k_mxfp4 = {"mxfp4_avx512", dot_mxfp4_avx512, NULL};

const fm_kernel *fm_kernel_get_avx512(int type) {
    switch (type) {
    case FM_TYPE_Q4_0: return &k_q4_0;
    case FM_TYPE_Q4_1: return &k_q4_1;
    case FM_TYPE_Q8_0: return &k_q8_0;
    case FM_TYPE_Q2_K: return &k_q2_K;
    case FM_TYPE_Q4_K: return &k_q4_K;
    case FM_TYPE_Q3_K: return &k_q3_K;
    case FM_TYPE_Q5_K: return &k_q5_K;
    case FM_TYPE_Q6_K: return &k_q6_K;
    case FM_TYPE_IQ4_XS: return &k_iq4_xs;
    case FM_TYPE_MXFP4: return &k_mxfp4;
    default: return NULL;
    }
}

#else /* not x86 with GCC or Clang */

const fm_kernel *fm_kernel_get_avx512(int type) {
    (void)type;
    return NULL;
}

#endif
