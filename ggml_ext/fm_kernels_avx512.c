/* fm_kernels_avx512.c - AVX-512 (F + BW + VL) kernels (block layouts: see fm_kernels.c).
 *
 * The integer work runs on 512-bit vectors: maddubs (unsigned weight x signed activation, pairs into int16,
 * no saturation possible), madd with the sub-block scale into int32; K-quants and IQ4_XS 64 values per
 * vector (the 32-value block types Q4_0, Q4_1, Q8_0 use the AVX2 kernels). Signed weights (IQ4_XS, MXFP4) go in as
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
   or of byte b[L] zero-extended. A plain constant expression (a loop here was not folded by GCC, which then
   rebuilt the control through the stack for every block) */
#define FM_PICK16(b, pair) \
    ((long long)(((((uint64_t)((pair) ? (b) + 1 : 0x80)) << 8) | (uint64_t)(b)) * 0x0001000100010001ull))
#define pick16x4(b0, b1, b2, b3, pair)                                                                     \
    _mm512_set_epi64(FM_PICK16(b3, pair), FM_PICK16(b3, pair), FM_PICK16(b2, pair), FM_PICK16(b2, pair),   \
                     FM_PICK16(b1, pair), FM_PICK16(b1, pair), FM_PICK16(b0, pair), FM_PICK16(b0, pair))

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
#pragma clang attribute push(__attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")
#endif
#endif

/* ==================================================================================================== */
/* AVX-512 VNNI: whole tiled products (fm_kernel.mm_tiled) for the types of ggml's tiled path.
 *
 * Layout: 16 weight rows at a time, one zmm lane (4 bytes) per row. A weight block of 16 rows is decoded once
 * into 64 vectors w[kg] (lane r: the 4 unsigned codes of values 4kg..4kg+3 of row r), and the 4 activation bytes
 * of the same values, signed, come straight from each Q8_K row as a broadcast operand of _mm512_dpbusd_epi32:
 * one instruction adds 4 products for 16 rows, and each decoded vector serves every activation row routed to the
 * expert. The activation rows need no repacking, and an accumulator holds 16 consecutive outputs of one
 * activation row (dst is row-major in the weight rows). The decode works on the packed bytes: 16 rows' 64-byte
 * (16-byte) pieces are transposed into dword columns (cols16, cols4), and each type's bit fields are then
 * extracted from the columns with plain vector operations, since every code sits at a fixed bit position of
 * its byte.
 *
 * The integer sums of a block are exact (int32 wraps, but every result and partial sum fits), so any
 * decomposition gives ggml's s1 and s2; per type:
 *   Q4_K, Q5_K  codes 0..15 / 0..31; s1 = sum over the 8 sub-blocks of scale x (dpbusd sum), s2 (mins x pairs of
 *               16-value activation sums, Q8_K's bsums) with _mm512_dpwssd_epi32;
 *   Q6_K        codes 0..63 (ggml's 6-bit code, value + 32): s1 = sum of scale x dpbusd sum over 16 sub-blocks of
 *               16, minus 32 x scale x bsum (dpwssd with -32 x scale pairs);
 *   IQ4_XS      codes = table value + 128 (1..241): s1 = sum of scale x dpbusd sum over 8 sub-blocks, minus
 *               128 x scale x (16-value sum pairs);
 *   Q2_K        the scale is folded into the code (2-bit value x 4-bit scale <= 45, a per-row pshufb table):
 *               s1 is the dpbusd sum itself; s2 as Q4_K's;
 *   Q3_K        the code is 128 - value x scale (value -4..3, scale -32..31: 0..252, two per-row pshufb tables
 *               chosen by the hmask bit), so s1 = 128 x (sum of the block's activations) - dpbusd sum.
 * Q8_K's bsums are the sums of its 16-value groups (ggml's from_float writes them so; ggml's tiled path relies
 * on them too). The float epilogue is tiled_step's, per block in block order, for 16 rows at once; the running
 * sums live in dst itself (written after every block, the first block adding to 0.0f as ggml's zeroed buffer).
 */

#if defined(FM_AVX512_SIMDE)
#define FM_UNROLL_ALL
#elif defined(__clang__)
#define FM_UNROLL_ALL _Pragma("unroll")
#else
#define FM_UNROLL_ALL _Pragma("GCC unroll 16")
#endif

/* ternary-logic truth table of (a & b) | c */
#define FM_AB_OR_C 0xEA

enum { FM_VK_Q2K, FM_VK_Q3K, FM_VK_Q4K, FM_VK_Q5K, FM_VK_Q6K, FM_VK_IQ4XS };

#ifndef FM_VJ
#define FM_VJ 6 /* activation rows per register tile */
#endif
#ifndef FM_VG
#define FM_VG 2 /* groups of 16 weight rows per register tile */
#endif
#ifndef FM_VPF
#define FM_VPF 2 /* weight blocks prefetched ahead */
#endif

/* one block of 16 weight rows, decoded */
typedef struct {
    __m512i w[64];  /* lane r: the codes of values 4kg..4kg+3 of row r */
    __m512i sc[16]; /* the int32 scale of each sub-block (Q4_K, Q5_K, IQ4_XS: 8; Q6_K: 16) */
    __m512i pr[8];  /* int16 pairs (one per 16-value group 2p, 2p+1) for dpwssd with the activation sums */
    __m512 d, dm;   /* d and dmin of the rows */
} fm_vgrp;

FM_INLINE uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* the dword at p in every lane (the broadcast operand of dpbusd / dpwssd) */
FM_INLINE __m512i bc32(const uint8_t *p) { return _mm512_set1_epi32((int)ld32(p)); }

/* the floats of lanes in m from/to p, the others untouched (and not read: they may lie past the buffer). SIMDe's
   emulation of the masked loads and stores reads and writes all 16 lanes, so that build goes lane by lane. */
#if defined(FM_AVX512_SIMDE)
FM_INLINE __m512 load_m(__mmask16 m, const float *p) {
    float v[16] = {0};
    for (int i = 0; i < 16; ++i)
        if (m >> i & 1) v[i] = p[i];
    return _mm512_loadu_ps(v);
}
FM_INLINE void store_m(float *p, __mmask16 m, __m512 x) {
    float v[16];
    _mm512_storeu_ps(v, x);
    for (int i = 0; i < 16; ++i)
        if (m >> i & 1) p[i] = v[i];
}
#else
FM_INLINE __m512 load_m(__mmask16 m, const float *p) { return _mm512_maskz_loadu_ps(m, p); }
FM_INLINE void store_m(float *p, __mmask16 m, __m512 x) { _mm512_mask_storeu_ps(p, m, x); }
#endif

/* acc + dpbusd(w, the dword at p in every lane) */
FM_INLINE __m512i dpbusd_bc(__m512i acc, __m512i w, const uint8_t *p) { return _mm512_dpbusd_epi32(acc, w, bc32(p)); }

/* a 4x4 transpose of dwords within each 128-bit lane */
FM_INLINE void tr4(__m512i *a, __m512i *b, __m512i *c, __m512i *d) {
    const __m512i t0 = _mm512_unpacklo_epi32(*a, *b), t1 = _mm512_unpackhi_epi32(*a, *b);
    const __m512i t2 = _mm512_unpacklo_epi32(*c, *d), t3 = _mm512_unpackhi_epi32(*c, *d);
    *a = _mm512_unpacklo_epi64(t0, t2);
    *b = _mm512_unpackhi_epi64(t0, t2);
    *c = _mm512_unpacklo_epi64(t1, t3);
    *d = _mm512_unpackhi_epi64(t1, t3);
}

/* q[m] lane r = dword m of the 64 bytes at rp[r] + off, m < 16 */
FM_INLINE void cols16(const uint8_t *const *rp, size_t off, __m512i *q) {
    __m512i v[16];
    FM_UNROLL_ALL for (int r = 0; r < 16; ++r) v[r] = ld512(rp[r] + off);
    /* v[4G + m] lane L: dword 4L + m of rows 4G..4G+3 */
    FM_UNROLL_ALL for (int g = 0; g < 4; ++g) tr4(&v[4 * g], &v[4 * g + 1], &v[4 * g + 2], &v[4 * g + 3]);
    /* then 128-bit lane L of v[4G + m] is lane G of q[4L + m]: a 4x4 transpose of lanes */
    FM_UNROLL_ALL for (int m = 0; m < 4; ++m) {
        const __m512i x0 = _mm512_shuffle_i32x4(v[m], v[4 + m], 0x44), x1 = _mm512_shuffle_i32x4(v[m], v[4 + m], 0xEE);
        const __m512i x2 = _mm512_shuffle_i32x4(v[8 + m], v[12 + m], 0x44), x3 = _mm512_shuffle_i32x4(v[8 + m], v[12 + m], 0xEE);
        q[m] = _mm512_shuffle_i32x4(x0, x2, 0x88);
        q[4 + m] = _mm512_shuffle_i32x4(x0, x2, 0xDD);
        q[8 + m] = _mm512_shuffle_i32x4(x1, x3, 0x88);
        q[12 + m] = _mm512_shuffle_i32x4(x1, x3, 0xDD);
    }
}

/* q[m] lane r = dword m of the 16 bytes at rp[r] + off, m < 4 */
FM_INLINE void cols4(const uint8_t *const *rp, size_t off, __m512i *q) {
    FM_UNROLL_ALL for (int k = 0; k < 4; ++k) /* lane L of q[k]: row k + 4L */
        q[k] = _mm512_inserti32x4(_mm512_inserti32x4(_mm512_inserti32x4(zext128(ld128(rp[k] + off)), ld128(rp[k + 4] + off), 1),
                                                     ld128(rp[k + 8] + off), 2),
                                  ld128(rp[k + 12] + off), 3);
    tr4(&q[0], &q[1], &q[2], &q[3]);
}

/* the fp16 numbers in the low and high halves of the dwords of v, as floats (exact) */
static const uint16_t fm_even_odd16[32] = {0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
                                           1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
FM_INLINE void halves(__m512i v, __m512 *lo, __m512 *hi) {
    const __m512i p = _mm512_permutexvar_epi16(ld512((const uint8_t *)fm_even_odd16), v);
    *lo = _mm512_cvtph_ps(_mm512_castsi512_si256(p));
    *hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(p, 1));
}

/* the fp16 number at rp[r] + off of each row, as floats */
FM_INLINE __m512 fp16col(const uint8_t *const *rp, size_t off) {
    uint16_t h[16];
    FM_UNROLL_ALL for (int r = 0; r < 16; ++r) memcpy(&h[r], rp[r] + off, 2);
    return _mm512_cvtph_ps(ld256((const uint8_t *)h));
}

/* the dword at rp[r] + off of each row */
FM_INLINE __m512i col32(const uint8_t *const *rp, size_t off) {
    uint32_t v[16];
    FM_UNROLL_ALL for (int r = 0; r < 16; ++r) v[r] = ld32(rp[r] + off);
    return ld512((const uint8_t *)v);
}

FM_INLINE __m512i set32(uint32_t v) { return _mm512_set1_epi32((int)v); }

/* a pshufb index part: 4 * (dword index within the 128-bit lane) in each byte, selecting that row's 4 entries */
FM_INLINE __m512i rowpos(void) { return _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0x04040404, 0x08080808, 0x0C0C0C0C)); }

/* the bit of each byte at position k (0..7), moved to position 4 (other bits: garbage, mask with 0x10); the
   same with 2-bit fields: bits k, k+1 to 4, 5 */
FM_INLINE __m512i to_bit4(__m512i x, const int k) { return k <= 4 ? _mm512_slli_epi16(x, 4 - k) : _mm512_srli_epi16(x, k - 4); }

/* Q4_K and Q5_K: scales, mins, d, dmin from the first 16 bytes */
FM_INLINE void vdec_q45k_scales(const uint8_t *const *rp, fm_vgrp *t) {
    __m512i u[4];
    cols4(rp, 0, u);
    const __m512i m3f = set32(0x3f3f3f3f), m0f = set32(0x0f0f0f0f), m30 = set32(0x30303030), mff = set32(0xff);
    /* bytes: scales 0..3, 4..7, mins 0..3, 4..7 (q4k_scales_mins) */
    const __m512i sc_lo = _mm512_and_si512(u[1], m3f);
    const __m512i sc_hi = _mm512_ternarylogic_epi32(_mm512_srli_epi32(u[1], 2), m30, _mm512_and_si512(u[3], m0f), FM_AB_OR_C);
    const __m512i mn_lo = _mm512_and_si512(u[2], m3f);
    const __m512i mn_hi = _mm512_ternarylogic_epi32(_mm512_srli_epi32(u[2], 2), m30,
                                                    _mm512_and_si512(_mm512_srli_epi32(u[3], 4), m0f), FM_AB_OR_C);
    FM_UNROLL_ALL for (int s = 0; s < 4; ++s) {
        t->sc[s] = _mm512_and_si512(_mm512_srli_epi32(sc_lo, 8 * s), mff);
        t->sc[4 + s] = _mm512_and_si512(_mm512_srli_epi32(sc_hi, 8 * s), mff);
        const __m512i a = _mm512_and_si512(_mm512_srli_epi32(mn_lo, 8 * s), mff);
        const __m512i b = _mm512_and_si512(_mm512_srli_epi32(mn_hi, 8 * s), mff);
        t->pr[s] = _mm512_or_si512(a, _mm512_slli_epi32(a, 16)); /* (min, min) x (bsum 2s, bsum 2s+1) */
        t->pr[4 + s] = _mm512_or_si512(b, _mm512_slli_epi32(b, 16));
    }
    halves(u[0], &t->d, &t->dm);
}

FM_INLINE void vdec_q4k(const uint8_t *const *rp, fm_vgrp *t) {
    vdec_q45k_scales(rp, t);
    const __m512i m0f = set32(0x0f0f0f0f);
    FM_UNROLL_ALL for (int h = 0; h < 2; ++h) {
        __m512i q[16];
        cols16(rp, 16 + 64 * (size_t)h, q);
        FM_UNROLL_ALL for (int m = 0; m < 16; ++m) { /* qs dword 16h + m = 8c + i: values 64c + 4i (low), +32 (high) */
            const int c = (16 * h + m) / 8, i = m % 8;
            t->w[16 * c + i] = _mm512_and_si512(q[m], m0f);
            t->w[16 * c + 8 + i] = _mm512_and_si512(_mm512_srli_epi16(q[m], 4), m0f);
        }
    }
}

FM_INLINE void vdec_q5k(const uint8_t *const *rp, fm_vgrp *t) {
    vdec_q45k_scales(rp, t);
    const __m512i m0f = set32(0x0f0f0f0f), m10 = set32(0x10101010);
    __m512i qh[8]; /* qh dword i: the high bits of values 64c + 4i.. (bit 2c) and 64c + 32 + 4i.. (bit 2c+1) */
    cols4(rp, 16, qh);
    cols4(rp, 32, qh + 4);
    FM_UNROLL_ALL for (int h = 0; h < 2; ++h) {
        __m512i q[16];
        cols16(rp, 48 + 64 * (size_t)h, q);
        FM_UNROLL_ALL for (int m = 0; m < 16; ++m) {
            const int c = (16 * h + m) / 8, i = m % 8;
            t->w[16 * c + i] = _mm512_ternarylogic_epi32(to_bit4(qh[i], 2 * c), m10, _mm512_and_si512(q[m], m0f), FM_AB_OR_C);
            t->w[16 * c + 8 + i] = _mm512_ternarylogic_epi32(to_bit4(qh[i], 2 * c + 1), m10,
                                                            _mm512_and_si512(_mm512_srli_epi16(q[m], 4), m0f), FM_AB_OR_C);
        }
    }
}

FM_INLINE void vdec_q6k(const uint8_t *const *rp, fm_vgrp *t) {
    const __m512i m0f = set32(0x0f0f0f0f), m30 = set32(0x30303030);
    __m512i qh[16], s[4];
    cols16(rp, 128, qh); /* qh dword 8h + i: bits 2k, 2k+1 are the high bits of values 128h + 32k + 4i.. */
    FM_UNROLL_ALL for (int h = 0; h < 2; ++h) {
        __m512i ql[16];
        cols16(rp, 64 * (size_t)h, ql); /* ql dword 8kk + i of half h: values 128h + 32kk + 4i (low), +64 (high) */
        FM_UNROLL_ALL for (int k = 0; k < 4; ++k)
            FM_UNROLL_ALL for (int i = 0; i < 8; ++i) {
                const __m512i src = ql[8 * (k & 1) + i];
                const __m512i nib = _mm512_and_si512(k < 2 ? src : _mm512_srli_epi16(src, 4), m0f);
                t->w[32 * h + 8 * k + i] = _mm512_ternarylogic_epi32(to_bit4(qh[8 * h + i], 2 * k), m30, nib, FM_AB_OR_C);
            }
    }
    cols4(rp, 192, s); /* the 16 int8 scales, 4 per dword */
    const __m512i m32 = _mm512_set1_epi16(-32);
    FM_UNROLL_ALL for (int j = 0; j < 16; ++j) t->sc[j] = _mm512_srai_epi32(_mm512_slli_epi32(s[j / 4], 24 - 8 * (j % 4)), 24);
    FM_UNROLL_ALL for (int q = 0; q < 4; ++q) {
        const __m512i e = _mm512_srai_epi16(_mm512_slli_epi16(s[q], 8), 8), o = _mm512_srai_epi16(s[q], 8);
        /* (scale 4q, 4q+1) and (4q+2, 4q+3) as int16 pairs, times -32 */
        t->pr[2 * q] = _mm512_mullo_epi16(_mm512_mask_blend_epi16(0xAAAAAAAAu, e, _mm512_slli_epi32(o, 16)), m32);
        t->pr[2 * q + 1] = _mm512_mullo_epi16(_mm512_mask_blend_epi16(0xAAAAAAAAu, _mm512_srli_epi32(e, 16), o), m32);
    }
    t->d = fp16col(rp, 208);
    t->dm = _mm512_setzero_ps();
}

FM_INLINE void vdec_q3k(const uint8_t *const *rp, fm_vgrp *t) {
    __m512i hm[8], qs[16], dd[4], tab0[16], tab1[16];
    cols4(rp, 0, hm);  /* hmask dword i: bit 4c + k is the high bit of values 128c + 32k + 4i.. */
    cols4(rp, 16, hm + 4);
    cols16(rp, 32, qs); /* qs dword 8c + i: bits 2k, 2k+1 are the low bits of values 128c + 32k + 4i.. */
    cols4(rp, 94, dd);  /* bytes 94..109: 2 bytes of qs, the 12 scale bytes, d */
    __m512i sb[3];      /* the scale bytes 0..3, 4..7, 8..11 */
    FM_UNROLL_ALL for (int k = 0; k < 3; ++k) sb[k] = _mm512_or_si512(_mm512_srli_epi32(dd[k], 16), _mm512_slli_epi32(dd[k + 1], 16));
    __m512 junk;
    halves(dd[3], &junk, &t->d);
    t->dm = _mm512_setzero_ps();
    const __m512i m0f = set32(15), m3 = set32(3);
    FM_UNROLL_ALL for (int j = 0; j < 16; ++j) {
        const __m512i lo = _mm512_and_si512(_mm512_srli_epi32(sb[(j % 8) / 4], 8 * (j % 4) + 4 * (j / 8)), m0f);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi32(sb[2], 8 * (j % 4) + 2 * (j / 4)), m3);
        const __m512i sc = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), set32(32));
        /* the row's 4 codes 128 - v x scale for v = 0..3 (high bit set) and v = -4..-1 (clear) */
        tab1[j] = _mm512_sub_epi32(set32(0x80808080u), _mm512_mullo_epi32(sc, set32(0x03020100)));
        tab0[j] = _mm512_add_epi32(tab1[j], _mm512_mullo_epi32(sc, set32(0x04040404)));
    }
    const __m512i pos = rowpos(), m3b = set32(0x03030303);
    FM_UNROLL_ALL for (int c = 0; c < 2; ++c)
        FM_UNROLL_ALL for (int k = 0; k < 4; ++k)
            FM_UNROLL_ALL for (int i = 0; i < 8; ++i) {
                const int j = 8 * c + 2 * k + i / 4; /* the sub-block of values 128c + 32k + 4i.. */
                const __m512i idx = _mm512_ternarylogic_epi32(_mm512_srli_epi16(qs[8 * c + i], 2 * k), m3b, pos, FM_AB_OR_C);
                const __mmask64 hb = _mm512_test_epi8_mask(hm[i], _mm512_set1_epi8((char)(1 << (4 * c + k))));
                t->w[32 * c + 8 * k + i] = _mm512_mask_shuffle_epi8(_mm512_shuffle_epi8(tab0[j], idx), hb, tab1[j], idx);
            }
}

FM_INLINE void vdec_q2k(const uint8_t *const *rp, fm_vgrp *t) {
    __m512i qs[16], s[4], tab[16];
    cols16(rp, 16, qs); /* qs dword 8c + i: bits 2k, 2k+1 are values 128c + 32k + 4i.. */
    cols4(rp, 0, s);    /* the 16 scale bytes: scale (low nibble) and min (high) of each 16 values */
    halves(col32(rp, 80), &t->d, &t->dm);
    const __m512i m0f = set32(15);
    FM_UNROLL_ALL for (int j = 0; j < 16; ++j) /* the row's 4 codes v x scale, v = 0..3 */
        tab[j] = _mm512_mullo_epi32(_mm512_and_si512(_mm512_srli_epi32(s[j / 4], 8 * (j % 4)), m0f), set32(0x03020100));
    FM_UNROLL_ALL for (int p = 0; p < 8; ++p) { /* (min 2p, min 2p+1) */
        const __m512i v = _mm512_srli_epi32(s[p / 2], 16 * (p % 2));
        t->pr[p] = _mm512_ternarylogic_epi32(_mm512_slli_epi32(v, 4), set32(0x000f0000), _mm512_and_si512(_mm512_srli_epi32(v, 4), m0f),
                                             FM_AB_OR_C);
    }
    const __m512i pos = rowpos(), m3b = set32(0x03030303);
    FM_UNROLL_ALL for (int c = 0; c < 2; ++c)
        FM_UNROLL_ALL for (int k = 0; k < 4; ++k)
            FM_UNROLL_ALL for (int i = 0; i < 8; ++i) {
                const __m512i idx = _mm512_ternarylogic_epi32(_mm512_srli_epi16(qs[8 * c + i], 2 * k), m3b, pos, FM_AB_OR_C);
                t->w[32 * c + 8 * k + i] = _mm512_shuffle_epi8(tab[8 * c + 2 * k + i / 4], idx);
            }
}

FM_INLINE void vdec_iq4xs(const uint8_t *const *rp, fm_vgrp *t) {
    __m512i u[4];
    cols4(rp, 0, u); /* d | scales_h << 16, scales_l */
    __m512 sh;
    halves(u[0], &t->d, &sh);
    t->dm = _mm512_setzero_ps();
    const __m512i m0f = set32(0x0f0f0f0f);
    FM_UNROLL_ALL for (int s = 0; s < 8; ++s) {
        const __m512i lo = _mm512_and_si512(_mm512_srli_epi32(u[1], 8 * (s / 2) + 4 * (s % 2)), set32(15));
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi32(u[0], 16 + 2 * s), set32(3));
        const __m512i sc = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), set32(32));
        t->sc[s] = sc;
        const __m512i b = _mm512_and_si512(_mm512_mullo_epi32(sc, set32((uint32_t)-128)), set32(0xffff));
        t->pr[s] = _mm512_or_si512(b, _mm512_slli_epi32(b, 16)); /* (-128 scale, -128 scale) */
    }
    /* the table values + 128, unsigned */
    const __m512i tab = _mm512_broadcast_i32x4(_mm_xor_si128(ld128((const uint8_t *)fm_iq4nl_values), _mm_set1_epi8((char)0x80)));
    FM_UNROLL_ALL for (int h = 0; h < 2; ++h) {
        __m512i q[16];
        cols16(rp, 8 + 64 * (size_t)h, q);
        FM_UNROLL_ALL for (int m = 0; m < 16; ++m) { /* qs dword 4s + i: values 32s + 4i (low), 32s + 16 + 4i (high) */
            const int s = (16 * h + m) / 4, i = m % 4;
            t->w[8 * s + i] = _mm512_shuffle_epi8(tab, _mm512_and_si512(q[m], m0f));
            t->w[8 * s + 4 + i] = _mm512_shuffle_epi8(tab, _mm512_and_si512(_mm512_srli_epi16(q[m], 4), m0f));
        }
    }
}

FM_INLINE void vdec(const int kind, const uint8_t *const *rp, fm_vgrp *t) {
    switch (kind) {
    case FM_VK_Q2K: vdec_q2k(rp, t); break;
    case FM_VK_Q3K: vdec_q3k(rp, t); break;
    case FM_VK_Q4K: vdec_q4k(rp, t); break;
    case FM_VK_Q5K: vdec_q5k(rp, t); break;
    case FM_VK_Q6K: vdec_q6k(rp, t); break;
    default: vdec_iq4xs(rp, t); break;
    }
}

/* G groups of 16 decoded rows (t[g]) against J activation rows (block y[j]): the block's s1, s2 and the epilogue
   into o[j] + 16 g (the first block adds to 0; mask: the valid rows of the last group) */
FM_INLINE void vnni_tile(const int kind, const int G, const int J, const fm_vgrp *t, const uint8_t *const *y,
                         float *const *o, const int first, const __mmask16 mask) {
    const int nsb = kind == FM_VK_Q6K ? 16 : kind == FM_VK_Q2K || kind == FM_VK_Q3K ? 0 : 8;
    const int mins = kind == FM_VK_Q2K || kind == FM_VK_Q4K || kind == FM_VK_Q5K;
    __m512i s1[2 * FM_VJ], s2[2 * FM_VJ];
    FM_UNROLL_ALL for (int q = 0; q < G * J; ++q) s1[q] = _mm512_setzero_si512();
    if (nsb == 0) {
        FM_UNROLL for (int kg = 0; kg < 64; ++kg)
            FM_UNROLL_ALL for (int g = 0; g < G; ++g) {
                const __m512i wv = t[g].w[kg];
                FM_UNROLL_ALL for (int j = 0; j < J; ++j) s1[g * J + j] = dpbusd_bc(s1[g * J + j], wv, y[j] + 4 + 4 * kg);
            }
    } else {
        const int per = 64 / nsb; /* dword columns per sub-block */
        for (int s = 0; s < nsb; ++s) {
            __m512i raw[2 * FM_VJ];
            FM_UNROLL_ALL for (int q = 0; q < G * J; ++q) raw[q] = _mm512_setzero_si512();
            FM_UNROLL_ALL for (int i = 0; i < per; ++i)
                FM_UNROLL_ALL for (int g = 0; g < G; ++g) {
                    const __m512i wv = t[g].w[per * s + i];
                    FM_UNROLL_ALL for (int j = 0; j < J; ++j)
                        raw[g * J + j] = dpbusd_bc(raw[g * J + j], wv, y[j] + 4 + 4 * (per * s + i));
                }
            FM_UNROLL_ALL for (int g = 0; g < G; ++g)
                FM_UNROLL_ALL for (int j = 0; j < J; ++j) {
                    s1[g * J + j] = _mm512_add_epi32(s1[g * J + j], _mm512_mullo_epi32(raw[g * J + j], t[g].sc[s]));
                }
        }
    }
    if (kind == FM_VK_Q6K || kind == FM_VK_IQ4XS) /* the code bias, scale x bias x activation sums */
        FM_UNROLL_ALL for (int p = 0; p < 8; ++p)
            FM_UNROLL_ALL for (int g = 0; g < G; ++g)
                FM_UNROLL_ALL for (int j = 0; j < J; ++j) s1[g * J + j] = _mm512_dpwssd_epi32(s1[g * J + j], t[g].pr[p], bc32(y[j] + 260 + 4 * p));
    if (mins) {
        FM_UNROLL_ALL for (int q = 0; q < G * J; ++q) s2[q] = _mm512_setzero_si512();
        FM_UNROLL_ALL for (int p = 0; p < 8; ++p)
            FM_UNROLL_ALL for (int g = 0; g < G; ++g)
                FM_UNROLL_ALL for (int j = 0; j < J; ++j) s2[g * J + j] = _mm512_dpwssd_epi32(s2[g * J + j], t[g].pr[p], bc32(y[j] + 260 + 4 * p));
    }
    if (kind == FM_VK_Q3K) /* s1 = 128 x (sum of the activations) - the dpbusd sum */
        FM_UNROLL_ALL for (int j = 0; j < J; ++j) {
            const __m256i b = _mm256_madd_epi16(ld256(y[j] + 260), _mm256_set1_epi16(1));
            __m128i x = _mm_add_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
            x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4E));
            x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0xB1));
            const __m512i y128 = _mm512_slli_epi32(_mm512_broadcastd_epi32(x), 7);
            FM_UNROLL_ALL for (int g = 0; g < G; ++g) s1[g * J + j] = _mm512_sub_epi32(y128, s1[g * J + j]);
        }
    /* res = d * s1, res -= dmin * s2 (fused), acc += res * y.d (fused) */
    FM_UNROLL_ALL for (int j = 0; j < J; ++j) {
        const __m512 yd = _mm512_set1_ps(f32(y[j]));
        FM_UNROLL_ALL for (int g = 0; g < G; ++g) {
            __m512 res = _mm512_mul_ps(t[g].d, _mm512_cvtepi32_ps(s1[g * J + j]));
            if (mins) res = _mm512_fnmadd_ps(t[g].dm, _mm512_cvtepi32_ps(s2[g * J + j]), res);
            float *p = o[j] + 16 * g;
            const __mmask16 m = g == G - 1 ? mask : (__mmask16)0xFFFF;
            if (m == 0xFFFF) {
                const __m512 acc = first ? _mm512_setzero_ps() : _mm512_loadu_ps(p);
                _mm512_storeu_ps(p, _mm512_fmadd_ps(res, yd, acc));
            } else {
                const __m512 acc = first ? _mm512_setzero_ps() : load_m(m, p);
                store_m(p, m, _mm512_fmadd_ps(res, yd, acc));
            }
        }
    }
}

/* the product of one expert's rows and activation rows, dst[j * ds + r] (see fm_kernel_matmul) */
FM_INLINE void vnni_mm(const int kind, int n, const void *w, size_t ws, int n_rows, const void *act, size_t as,
                       int n_act, float *dst, size_t ds) {
    const size_t bs = kind == FM_VK_Q2K ? 84 : kind == FM_VK_Q3K ? 110 : kind == FM_VK_Q4K ? 144 : kind == FM_VK_Q5K ? 176
                      : kind == FM_VK_Q6K ? 210 : 136;
    const int nb = n / 256;
    if (n_rows <= 0 || n_act <= 0 || nb <= 0) return;
    const uint8_t *wp = (const uint8_t *)w, *ap = (const uint8_t *)act;
    /* activation rows per pass over the weight rows: those stay in L2 (each weight block is decoded once per pass) */
    int jc = (int)((384u << 10) / ((size_t)nb * 292));
    if (jc < 4 * FM_VJ) jc = 4 * FM_VJ;
    fm_vgrp t[2];
    for (int j0 = 0; j0 < n_act; j0 += jc) {
        const int j1 = n_act - j0 < jc ? n_act : j0 + jc;
        for (int r0 = 0; r0 < n_rows; r0 += 16 * FM_VG) {
            const int nr = n_rows - r0 < 16 * FM_VG ? n_rows - r0 : 16 * FM_VG, G = nr > 16 ? 2 : 1;
            const int last = nr - 16 * (G - 1); /* valid rows of the last group */
            const __mmask16 mask = (__mmask16)(last == 16 ? 0xFFFF : (1u << last) - 1);
            const uint8_t *rp[32]; /* rows past the end repeat the last one (their results are not stored) */
            for (int r = 0; r < 16 * G; ++r) rp[r] = wp + (size_t)(r0 + (r < nr ? r : nr - 1)) * ws;
            for (int b = 0; b < nb; ++b) {
                const uint8_t *bp[32];
                for (int r = 0; r < 16 * G; ++r) bp[r] = rp[r] + (size_t)b * bs;
                if (b + FM_VPF < nb) /* the rows' block FM_VPF ahead: 32 strided streams outrun the prefetchers */
                    for (int r = 0; r < 16 * G; ++r)
                        for (size_t o = 0; o < bs; o += 64) _mm_prefetch((const char *)bp[r] + FM_VPF * bs + o, _MM_HINT_T0);
                for (int g = 0; g < G; ++g) vdec(kind, bp + 16 * g, &t[g]);
                for (int j = j0; j < j1;) {
                    const int left = j1 - j;
                    /* tiles of FM_VJ rows; the last two share what is left when it is less than two tiles */
                    const int jj = left <= FM_VJ ? left : left < 2 * FM_VJ ? (left + 1) / 2 : FM_VJ;
                    const uint8_t *y[FM_VJ];
                    float *o[FM_VJ];
                    for (int q = 0; q < jj; ++q) {
                        y[q] = ap + (size_t)(j + q) * as + (size_t)b * 292;
                        o[q] = dst + (size_t)(j + q) * ds + r0;
                    }
#define FM_VCASE(g_, j_) \
    case 16 * (g_) + (j_): vnni_tile(kind, g_, j_, t, y, o, b == 0, mask); break;
#define FM_VCASES(g_) FM_VCASE(g_, 1) FM_VCASE(g_, 2) FM_VCASE(g_, 3) FM_VCASE(g_, 4) FM_VCASES5(g_)
#if FM_VJ >= 8
#define FM_VCASES5(g_) FM_VCASE(g_, 5) FM_VCASE(g_, 6) FM_VCASE(g_, 7) FM_VCASE(g_, 8) FM_VCASES9(g_)
#elif FM_VJ >= 6
#define FM_VCASES5(g_) FM_VCASE(g_, 5) FM_VCASE(g_, 6)
#else
#define FM_VCASES5(g_)
#endif
#if FM_VJ >= 12
#define FM_VCASES9(g_) FM_VCASE(g_, 9) FM_VCASE(g_, 10) FM_VCASE(g_, 11) FM_VCASE(g_, 12)
#else
#define FM_VCASES9(g_)
#endif
                    switch (16 * G + jj) {
                        FM_VCASES(1)
#if FM_VG == 2
                        FM_VCASES(2)
#endif
                    default: break;
                    }
#undef FM_VCASE
                    j += jj;
                }
            }
        }
    }
}

#define FM_VNNI_MM(fname, kind)                                                                              \
    static void fname(int n, const void *w, size_t ws, int n_rows, const void *act, size_t as, int n_act,    \
                      float *dst, size_t ds) {                                                               \
        vnni_mm(kind, n, w, ws, n_rows, act, as, n_act, dst, ds);                                            \
    }

FM_VNNI_MM(mm_q2_K_vnni, FM_VK_Q2K)
FM_VNNI_MM(mm_q3_K_vnni, FM_VK_Q3K)
FM_VNNI_MM(mm_q4_K_vnni, FM_VK_Q4K)
FM_VNNI_MM(mm_q5_K_vnni, FM_VK_Q5K)
FM_VNNI_MM(mm_q6_K_vnni, FM_VK_Q6K)
FM_VNNI_MM(mm_iq4_xs_vnni, FM_VK_IQ4XS)

#if !defined(FM_AVX512_SIMDE)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

static const fm_kernel k_q2_K = {"q2_K_avx512", dot_q2_K_avx512, dot_q2_K_tiled_avx512, NULL};
static const fm_kernel k_q4_K = {"q4_K_avx512", dot_q4_K_avx512, dot_q4_K_tiled_avx512, NULL};
static const fm_kernel k_q3_K = {"q3_K_avx512", dot_q3_K_avx512, dot_q3_K_tiled_avx512, NULL};
static const fm_kernel k_q5_K = {"q5_K_avx512", dot_q5_K_avx512, dot_q5_K_tiled_avx512, NULL};
static const fm_kernel k_q6_K = {"q6_K_avx512", dot_q6_K_avx512, dot_q6_K_tiled_avx512, NULL};
static const fm_kernel k_iq4_xs = {"iq4_xs_avx512", dot_iq4_xs_avx512, dot_iq4_xs_tiled_avx512, NULL};
static const fm_kernel k_mxfp4 = {"mxfp4_avx512", dot_mxfp4_avx512, NULL, NULL};
/* with VNNI: the same dot and dot_tiled, and the whole tiled product in mm_tiled */
static const fm_kernel k_q2_K_vnni = {"q2_K_avx512vnni", dot_q2_K_avx512, dot_q2_K_tiled_avx512, mm_q2_K_vnni};
static const fm_kernel k_q4_K_vnni = {"q4_K_avx512vnni", dot_q4_K_avx512, dot_q4_K_tiled_avx512, mm_q4_K_vnni};
static const fm_kernel k_q3_K_vnni = {"q3_K_avx512vnni", dot_q3_K_avx512, dot_q3_K_tiled_avx512, mm_q3_K_vnni};
static const fm_kernel k_q5_K_vnni = {"q5_K_avx512vnni", dot_q5_K_avx512, dot_q5_K_tiled_avx512, mm_q5_K_vnni};
static const fm_kernel k_q6_K_vnni = {"q6_K_avx512vnni", dot_q6_K_avx512, dot_q6_K_tiled_avx512, mm_q6_K_vnni};
static const fm_kernel k_iq4_xs_vnni = {"iq4_xs_avx512vnni", dot_iq4_xs_avx512, dot_iq4_xs_tiled_avx512, mm_iq4_xs_vnni};

/* The 32-value block types (Q4_0, Q4_1, Q8_0) have no AVX-512 spelling: two blocks per 512-bit vector were
   slower than the AVX2 kernels on an Intel Xeon (AMX generation; batch 1: 6.4 against 9.9 GB/s for Q4_0, 0.66x
   ggml's MUL_MAT_ID) and no faster on AMD Zen 5, so fm_kernel_get serves them with the AVX2 kernels. */
const fm_kernel *fm_kernel_get_avx512(int type, int vnni) {
    switch (type) {
    case FM_TYPE_Q2_K: return vnni ? &k_q2_K_vnni : &k_q2_K;
    case FM_TYPE_Q4_K: return vnni ? &k_q4_K_vnni : &k_q4_K;
    case FM_TYPE_Q3_K: return vnni ? &k_q3_K_vnni : &k_q3_K;
    case FM_TYPE_Q5_K: return vnni ? &k_q5_K_vnni : &k_q5_K;
    case FM_TYPE_Q6_K: return vnni ? &k_q6_K_vnni : &k_q6_K;
    case FM_TYPE_IQ4_XS: return vnni ? &k_iq4_xs_vnni : &k_iq4_xs;
    case FM_TYPE_MXFP4: return &k_mxfp4;
    default: return NULL;
    }
}

#else /* not x86 with GCC or Clang */

const fm_kernel *fm_kernel_get_avx512(int type, int vnni) {
    (void)type, (void)vnni;
    return NULL;
}

#endif
