/* fm_kernels_avx512.c - AVX-512 (F + BW + VL) kernels (block layouts: see fm_kernels.c).
 *
 * The integer work runs on 512-bit vectors: maddubs (unsigned weight x signed activation, pairs into int16,
 * no saturation possible), madd with the sub-block scale into int32; K-quants 64 values per vector, the
 * 32-value block types two blocks per vector. The 16 int32 lanes are arranged so that they fold into ggml's 8
 * lanes, and the float operations are exactly those of the scalar kernels (fm_kernels.c), i.e. ggml's, on
 * 256- and 128-bit vectors: results are bitwise those of ggml's CPU backend.
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

/* ggml's tiled epilogue for up to 4 activation rows at once (lanes r < nr): per block and row,
   res = d * s1, res -= dmin * s2 (fused), acc += res * y.d (fused) */
FM_INLINE __m128 tiled_step4(__m128 acc, __m128i s1, __m128i s2, float d, float dmin, const uint8_t *y0, size_t as,
                             const int nr) {
    float yd[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    FM_UNROLL for (int r = 0; r < nr; ++r) yd[r] = f32(y0 + (size_t)r * as);
    const __m128 res = _mm_fnmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(s2), _mm_mul_ps(_mm_set1_ps(d), _mm_cvtepi32_ps(s1)));
    return _mm_fmadd_ps(res, _mm_loadu_ps(yd), acc);
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
    memcpy(u, x + 4, sizeof u);
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

const fm_kernel *fm_kernel_get_avx512(int type) {
    switch (type) {
    case FM_TYPE_Q4_0: return &k_q4_0;
    case FM_TYPE_Q4_1: return &k_q4_1;
    case FM_TYPE_Q8_0: return &k_q8_0;
    case FM_TYPE_Q2_K: return &k_q2_K;
    case FM_TYPE_Q4_K: return &k_q4_K;
    default: return NULL;
    }
}

#else /* not x86 with GCC or Clang */

const fm_kernel *fm_kernel_get_avx512(int type) {
    (void)type;
    return NULL;
}

#endif
