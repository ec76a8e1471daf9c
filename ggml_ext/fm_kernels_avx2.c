/* fm_kernels_avx2.c - AVX2 + FMA kernels (block layouts: see fm_kernels.c).
 *
 * The instruction set is enabled per function (target pragma), so this file builds with the default flags
 * and the package runs on any x86-64; fm_kernel_get only hands these out when the CPU (and OS) support AVX2
 * and FMA.
 *
 * Integer products: _mm256_maddubs_epi16 multiplies unsigned 8-bit weights (nibbles, 2-bit values, or |x|)
 * by signed 8-bit activations and adds pairs into int16 (no saturation is possible: a pair lies in
 * [-2*128*128, 2*128*127] for Q8_0 with the sign moved onto the activation, 2*15*128 for 4-bit, 2*3*128 for
 * 2-bit); _mm256_madd_epi16 then applies the sub-block scale (or 1) and adds pairs into int32. The int32
 * lanes are ggml's lanes and every integer sum is exact; the float operations are ggml's, in ggml's order
 * (the scalar kernels in fm_kernels.c spell them out).
 *
 * With several activation rows, each weight block (or 64-value chunk of it) is decoded once and used for a
 * group of up to FM_R activation rows.
 */
#include "fm_kernels.h"

#include <math.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#define FM_UNROLL _Pragma("unroll")
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FM_UNROLL _Pragma("GCC unroll 8")
#endif

#define FM_INLINE static inline __attribute__((always_inline))
#define FM_R 4 /* activation rows per decoded weight block */

/* fp16 -> float through the table fm_kernels_init fills (one load; ggml-cpu converts the same way) */
FM_INLINE float t2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return fm_fp16_table[h];
}

FM_INLINE float f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

FM_INLINE __m256i ld256(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }
FM_INLINE __m128i ld128(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)(const void *)p); }

FM_INLINE float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* 4 floats added as ggml adds its Q4_K min accumulator: (a0 + a2) + (a1 + a3) */
FM_INLINE float hsum4(__m128 v) {
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_movehdup_ps(v));
    return _mm_cvtss_f32(v);
}

/* 32 nibbles of a Q4_0/Q4_1 block as bytes: low nibbles (values 0..15), then high nibbles (values 16..31) */
FM_INLINE __m256i nibbles32(const uint8_t *qs) {
    const __m128i q = ld128(qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
}

/* shuffle_epi8 controls that broadcast int16 j of a 128-bit lane (bytes 2j, 2j+1) to the whole lane */
#define FM_PICK(j) {2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, \
                    2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, \
                    2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, 2 * j, 2 * j + 1, \
                    2 * j, 2 * j + 1}
static const uint8_t k_pick16[8][32] __attribute__((aligned(32))) = {FM_PICK(0), FM_PICK(1), FM_PICK(2), FM_PICK(3),
                                                                      FM_PICK(4), FM_PICK(5), FM_PICK(6), FM_PICK(7)};

/* shuffle_epi8 controls that zero-extend byte 2p of a 128-bit lane to every int16 of the low lane, and
   byte 2p+1 to every int16 of the high lane (Q2_K: the scales of sub-blocks 2p and 2p+1) */
#define FM_Z8(b) b, 0x80, b, 0x80, b, 0x80, b, 0x80, b, 0x80, b, 0x80, b, 0x80, b, 0x80
#define FM_PICK2(p) {FM_Z8(2 * p), FM_Z8(2 * p + 1)}
static const uint8_t k_pick2[8][32] __attribute__((aligned(32))) = {FM_PICK2(0), FM_PICK2(1), FM_PICK2(2), FM_PICK2(3),
                                                                     FM_PICK2(4), FM_PICK2(5), FM_PICK2(6), FM_PICK2(7)};

/* 4 int32 sums, one per vector: the lanes of a, b, c, d added up (integers: exact in any order) */
FM_INLINE __m128i hsum4x8(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}
FM_INLINE __m128i hsum4x4(__m128i a, __m128i b, __m128i c, __m128i d) {
    return _mm_hadd_epi32(_mm_hadd_epi32(a, b), _mm_hadd_epi32(c, d));
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
/* Q4_K x Q8_K                                                                                           */

/* one block's integer sums for nr activation rows: sumi[r] (8 lanes of scale x products, as ggml's vec_dot
   has them) and prod[r] (4 lanes of min x activation sums) */
FM_INLINE void q4k_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256i *sumi, __m128i *prod) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    uint32_t u0, u1, u2;
    memcpy(&u0, x + 4, 4);
    memcpy(&u1, x + 8, 4);
    memcpy(&u2, x + 12, 4);
    /* 6-bit scales sc[0..7] and mins mn[0..7], one byte each */
    const uint32_t sc_lo = u0 & 0x3f3f3f3fu;
    const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
    const uint32_t mn_lo = u1 & 0x3f3f3f3fu;
    const uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
    /* scales as int16 in both lanes; mins as 8 int16 */
    const __m256i scb = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc_hi, (int)sc_lo)));
    const __m128i mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)mn_hi, (int)mn_lo));
    FM_UNROLL for (int r = 0; r < nr; ++r) sumi[r] = _mm256_setzero_si256();
    FM_UNROLL for (int c = 0; c < 4; ++c) { /* 64 values: 32 low nibbles, 32 high nibbles */
        const __m256i q = ld256(x + 16 + 32 * c);
        const __m256i lo = _mm256_and_si256(q, m4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        const __m256i scl = _mm256_shuffle_epi8(scb, ld256(k_pick16[2 * c]));
        const __m256i sch = _mm256_shuffle_epi8(scb, ld256(k_pick16[2 * c + 1]));
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const uint8_t *y = y0 + (size_t)r * as + 4 + 64 * c;
            const __m256i pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, ld256(y)), scl);
            const __m256i ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ld256(y + 32)), sch);
            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(pl, ph));
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) { /* pairs of 16-value sums, then min x pair */
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
        const float dx = t2f(x), mx = t2f(x + 2);
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
                          t2f(x), t2f(x + 2), y0, as, nr);
    }
    store4(acc, nr, s, ss);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Q2_K x Q8_K                                                                                           */

/* one block's integer sums for nr activation rows: sumi[r] (8 lanes of scale x products) and prod[r]
   (8 lanes of min x 16-value activation sums) */
FM_INLINE void q2k_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256i *sumi, __m256i *prod) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i sc = ld128(x);
    const __m256i scb = _mm256_broadcastsi128_si256(_mm_and_si128(sc, m4));
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), m4));
    FM_UNROLL for (int r = 0; r < nr; ++r) {
        sumi[r] = _mm256_setzero_si256();
        prod[r] = _mm256_madd_epi16(mins, ld256(y0 + (size_t)r * as + 260));
    }
    FM_UNROLL for (int c = 0; c < 2; ++c) { /* 128 values from 32 bytes, 2 bits at shifts 0, 2, 4, 6 */
        const __m256i q = ld256(x + 16 + 32 * c);
        FM_UNROLL for (int k = 0; k < 4; ++k) {
            const __m256i qk = _mm256_and_si256(k == 0 ? q : k == 1 ? _mm256_srli_epi16(q, 2)
                                                          : k == 2 ? _mm256_srli_epi16(q, 4)
                                                                   : _mm256_srli_epi16(q, 6), m3);
            /* sub-blocks 8c+2k (first 16 values) and 8c+2k+1 (next 16) */
            const __m256i scv = _mm256_shuffle_epi8(scb, ld256(k_pick2[4 * c + k]));
            FM_UNROLL for (int r = 0; r < nr; ++r) {
                const uint8_t *y = y0 + (size_t)r * as + 4 + 128 * c + 32 * k;
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(qk, ld256(y)), scv));
            }
        }
    }
}

FM_INLINE void q2k_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m256 acc[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm256_setzero_ps();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 84, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R], prod[FM_R];
        q2k_block(x, y0, as, nr, sumi, prod);
        const float dx = t2f(x + 80), mx = t2f(x + 82);
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
                          t2f(x + 80), t2f(x + 82), y0, as, nr);
    }
    store4(acc, nr, s, ss);
}

/* ---------------------------------------------------------------------------------------------------- */
/* 32-value blocks: Q4_0 x Q8_0 (kind 0), Q8_0 x Q8_0 (kind 1), Q4_1 x Q8_1 (kind 2). Per block and row:
   one integer dot (8 lanes), acc += (weight d * activation d) * lanes (fused), and for Q4_1 m * s fused
   into a separate float sum, as ggml's vec_dot. The fp16 scales go through fm_fp16_table: with F16C's
   insert + convert, the two to four conversions per 32 values cost as much as the integer dot product. */

#define XSIZE(kind) ((size_t)((kind) == 0 ? 18 : (kind) == 1 ? 34 : 20))
#define YSIZE(kind) ((size_t)((kind) == 2 ? 36 : 34))

/* sum of the 32 products of unsigned bytes ux and signed bytes y, as 8 int32 */
FM_INLINE __m256i dot_u8s8(__m256i ux, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ux, y), _mm256_set1_epi16(1));
}

/* weight block x as unsigned bytes *ux and (signed kinds) the signs *sx to put onto the activations */
FM_INLINE void decode32(const int kind, const uint8_t *x, __m256i *ux, __m256i *sx) {
    if (kind == 0) {
        *sx = _mm256_sub_epi8(nibbles32(x + 2), _mm256_set1_epi8(8)); /* -8..7 */
        *ux = _mm256_sign_epi8(*sx, *sx);
    } else if (kind == 1) {
        *sx = ld256(x + 2);
        *ux = _mm256_sign_epi8(*sx, *sx);
    } else {
        *ux = nibbles32(x + 4);
        *sx = *ux;
    }
}

/* the integer dot product of a decoded weight block with activation block y, as 8 int32 */
FM_INLINE __m256i idot32(const int kind, __m256i ux, __m256i sx, const uint8_t *y) {
    if (kind == 2) return dot_u8s8(ux, ld256(y + 4));
    return dot_u8s8(ux, _mm256_sign_epi8(ld256(y + 2), sx));
}

FM_INLINE void rows32(const int kind, int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s,
                      size_t ss) {
    const size_t xs = XSIZE(kind), ys = YSIZE(kind);
    __m256 acc[FM_R];
    float summs[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) {
        acc[r] = _mm256_setzero_ps();
        summs[r] = 0.0f;
    }
    for (int i = 0; i < n / 32; ++i) {
        const uint8_t *x = w + (size_t)i * xs, *y0 = a + (size_t)i * ys;
        __m256i ux, sx;
        decode32(kind, x, &ux, &sx);
        const float dx = t2f(x);
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const uint8_t *y = y0 + (size_t)r * as;
            const __m256i p = idot32(kind, ux, sx, y);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * t2f(y)), _mm256_cvtepi32_ps(p), acc[r]);
            if (kind == 2) summs[r] = fmaf(t2f(x + 2), t2f(y + 2), summs[r]); /* Q4_1: m * s_y */
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = kind == 2 ? hsum8(acc[r]) + summs[r] : hsum8(acc[r]);
}

FM_INLINE void q4_0_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    rows32(0, n, w, a, as, nr, s, ss);
}
FM_INLINE void q8_0_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    rows32(1, n, w, a, as, nr, s, ss);
}
FM_INLINE void q4_1_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    rows32(2, n, w, a, as, nr, s, ss);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Q6_K, Q3_K x Q8_K: 16 scales per block (one per 16 values). A 32-value vector k of half h uses scales
   8h + 2k (bytes 0..15) and 8h + 2k + 1 (bytes 16..31): the int16 scales of half h in both 128-bit lanes,
   picked by k_pick_pair[k] (low lane: int16 2k, high lane: int16 2k + 1). */

#define FM_W16(j) 2 * (j), 2 * (j) + 1
#define FM_W16x8(j) FM_W16(j), FM_W16(j), FM_W16(j), FM_W16(j), FM_W16(j), FM_W16(j), FM_W16(j), FM_W16(j)
#define FM_PICKP(k) {FM_W16x8(2 * (k)), FM_W16x8(2 * (k) + 1)}
static const uint8_t k_pick_pair[4][32] __attribute__((aligned(32))) = {FM_PICKP(0), FM_PICKP(1), FM_PICKP(2),
                                                                         FM_PICKP(3)};

/* int16 copies of the 8 int8 scales sc8[8h .. 8h+7] in both 128-bit lanes */
FM_INLINE __m256i scales16_half(__m128i sc8, const int h) {
    return _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(h ? _mm_srli_si128(sc8, 8) : sc8));
}

/* Q6_K: lanes of the 6-bit codes (0..63) times scales, minus 32 * (bsums[2l] * sc[2l] + bsums[2l+1] * sc[2l+1])
   in lane l, as ggml's vec_dot */
FM_INLINE void q6k_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256i *sumi) {
    const __m256i m15 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    const __m128i sc8 = ld128(x + 192);
    const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
    FM_UNROLL for (int r = 0; r < nr; ++r)
        sumi[r] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                   _mm256_slli_epi32(_mm256_madd_epi16(ld256(y0 + (size_t)r * as + 260), sc16), 5));
    FM_UNROLL for (int h = 0; h < 2; ++h) {
        const __m256i q1 = ld256(x + 64 * h), q2 = ld256(x + 64 * h + 32), qh = ld256(x + 128 + 32 * h);
        const __m256i scb = scales16_half(sc8, h);
        __m256i v[4];
        v[0] = _mm256_or_si256(_mm256_and_si256(q1, m15), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4));
        v[1] = _mm256_or_si256(_mm256_and_si256(q2, m15),
                               _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(12)), 2));
        v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q1, 4), m15), _mm256_and_si256(qh, _mm256_set1_epi8(48)));
        v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q2, 4), m15),
                               _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8((char)0xC0)), 2));
        FM_UNROLL for (int k = 0; k < 4; ++k) {
            const __m256i scv = _mm256_shuffle_epi8(scb, ld256(k_pick_pair[k]));
            FM_UNROLL for (int r = 0; r < nr; ++r) {
                const uint8_t *y = y0 + (size_t)r * as + 4 + 128 * h + 32 * k;
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(v[k], ld256(y)), scv));
            }
        }
    }
}

/* Q3_K: values (2 low bits) - 4 * (high bit clear), formed per byte pair as two unsigned products subtracted
   (int16, exact), times the scales (6-bit, minus 32) */
FM_INLINE __m128i q3k_scales8(const uint8_t *x) {
    uint32_t a0, a1, a2;
    memcpy(&a0, x + 96, 4);
    memcpy(&a1, x + 100, 4);
    memcpy(&a2, x + 104, 4);
    const uint32_t k2 = 0x0f0f0f0fu, k1 = 0x03030303u;
    const __m128i s = _mm_set_epi32((int)(((a1 >> 4) & k2) | (((a2 >> 6) & k1) << 4)),
                                    (int)(((a0 >> 4) & k2) | (((a2 >> 4) & k1) << 4)),
                                    (int)((a1 & k2) | (((a2 >> 2) & k1) << 4)), (int)((a0 & k2) | ((a2 & k1) << 4)));
    return _mm_sub_epi8(s, _mm_set1_epi8(32));
}

FM_INLINE void q3k_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256i *sumi) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i sc8 = q3k_scales8(x);
    const __m256i hm = ld256(x);
    FM_UNROLL for (int r = 0; r < nr; ++r) sumi[r] = _mm256_setzero_si256();
    FM_UNROLL for (int h = 0; h < 2; ++h) {
        const __m256i q = ld256(x + 32 + 32 * h);
        const __m256i scb = scales16_half(sc8, h);
        FM_UNROLL for (int k = 0; k < 4; ++k) {
            const int bit = 4 * h + k;
            const __m256i lo = _mm256_and_si256(k == 0 ? q : _mm256_srli_epi16(q, 2 * k), m3);
            const __m256i h4 = _mm256_slli_epi16(
                _mm256_srli_epi16(_mm256_andnot_si256(hm, _mm256_set1_epi8((char)(1 << bit))), bit), 2);
            const __m256i scv = _mm256_shuffle_epi8(scb, ld256(k_pick_pair[k]));
            FM_UNROLL for (int r = 0; r < nr; ++r) {
                const __m256i y = ld256(y0 + (size_t)r * as + 4 + 128 * h + 32 * k);
                const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(lo, y), _mm256_maddubs_epi16(h4, y));
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, scv));
            }
        }
    }
}

/* acc += (y.d * x.d) * lanes (fused) per block, then hsum8 */
#define FM_ROWS_D(name, block, bsize, doff)                                                                \
    FM_INLINE void name(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) { \
        __m256 acc[FM_R];                                                                                   \
        FM_UNROLL for (int r = 0; r < nr; ++r) acc[r] = _mm256_setzero_ps();                                \
        for (int i = 0; i < n / 256; ++i) {                                                                 \
            const uint8_t *x = w + (size_t)i * (bsize), *y0 = a + (size_t)i * 292;                          \
            __m256i sumi[FM_R];                                                                             \
            block(x, y0, as, nr, sumi);                                                                     \
            const float dx = t2f(x + (doff));                                                               \
            FM_UNROLL for (int r = 0; r < nr; ++r)                                                          \
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(f32(y0 + (size_t)r * as) * dx), _mm256_cvtepi32_ps(sumi[r]), acc[r]); \
        }                                                                                                   \
        FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = hsum8(acc[r]);                           \
    }

/* tiled: s1 = all lanes added (the block's exact integer dot), no mins */
#define FM_ROWS_TILED_D(name, block, bsize, doff)                                                          \
    FM_INLINE void name(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) { \
        __m128 acc = _mm_setzero_ps();                                                                      \
        const __m256i z = _mm256_setzero_si256();                                                           \
        for (int i = 0; i < n / 256; ++i) {                                                                 \
            const uint8_t *x = w + (size_t)i * (bsize), *y0 = a + (size_t)i * 292;                          \
            __m256i sumi[FM_R] = {z, z, z, z};                                                              \
            block(x, y0, as, nr, sumi);                                                                     \
            acc = tiled_step4(acc, hsum4x8(sumi[0], sumi[1], sumi[2], sumi[3]), _mm_setzero_si128(),        \
                              t2f(x + (doff)), 0.0f, y0, as, nr);                                           \
        }                                                                                                   \
        store4(acc, nr, s, ss);                                                                             \
    }

/* ---------------------------------------------------------------------------------------------------- */
/* IQ4_XS x Q8_K: values through the IQ4_NL table (signed: |x| times y with x's sign, as ggml's mul_add_epi8),
   one scale (6-bit, minus 32) per 32 values */

FM_INLINE __m256i lut32(__m128i lut, const uint8_t *qs) {
    const __m128i q = ld128(qs), m4 = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(q, 4), m4)),
                            _mm_shuffle_epi8(lut, _mm_and_si128(q, m4)));
}

FM_INLINE void iq4xs_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256i *sumi) {
    const __m128i lut = ld128((const uint8_t *)fm_iq4nl_values);
    uint16_t sh;
    memcpy(&sh, x + 2, 2);
    FM_UNROLL for (int r = 0; r < nr; ++r) sumi[r] = _mm256_setzero_si256();
    FM_UNROLL for (int sb = 0; sb < 8; ++sb) {
        const int ls = ((x[4 + sb / 2] >> (4 * (sb % 2))) & 15) | (((sh >> (2 * sb)) & 3) << 4);
        const __m256i v = lut32(lut, x + 8 + 16 * sb);
        const __m256i av = _mm256_sign_epi8(v, v), scv = _mm256_set1_epi16((short)(ls - 32));
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const __m256i y = _mm256_sign_epi8(ld256(y0 + (size_t)r * as + 4 + 32 * sb), v);
            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(av, y), scv));
        }
    }
}

FM_ROWS_D(q6k_rows, q6k_block, 210, 208)
FM_ROWS_TILED_D(q6k_rows_tiled, q6k_block, 210, 208)
FM_ROWS_D(q3k_rows, q3k_block, 110, 108)
FM_ROWS_TILED_D(q3k_rows_tiled, q3k_block, 110, 108)
FM_ROWS_D(iq4xs_rows, iq4xs_block, 136, 0)
FM_ROWS_TILED_D(iq4xs_rows_tiled, iq4xs_block, 136, 0)

/* ---------------------------------------------------------------------------------------------------- */
/* Q5_K x Q8_K: Q4_K's nibbles plus a fifth bit from qh; the mins' integer sum per block fused into one float
   sum (summs += dmin * sum), added after hsum8 */

FM_INLINE void q5k_block(const uint8_t *x, const uint8_t *y0, size_t as, const int nr, __m256i *sumi, __m128i *prod) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    uint32_t u0, u1, u2;
    memcpy(&u0, x + 4, 4);
    memcpy(&u1, x + 8, 4);
    memcpy(&u2, x + 12, 4);
    const uint32_t sc_lo = u0 & 0x3f3f3f3fu;
    const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
    const uint32_t mn_lo = u1 & 0x3f3f3f3fu;
    const uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
    const __m256i scb = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc_hi, (int)sc_lo)));
    const __m128i mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)mn_hi, (int)mn_lo));
    const __m256i qh = ld256(x + 16);
    FM_UNROLL for (int r = 0; r < nr; ++r) sumi[r] = _mm256_setzero_si256();
    FM_UNROLL for (int c = 0; c < 4; ++c) {
        const __m256i q = ld256(x + 48 + 32 * c);
        const __m256i hl = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4);
        const __m256i hh = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4);
        const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), hl);
        const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), hh);
        const __m256i scl = _mm256_shuffle_epi8(scb, ld256(k_pick16[2 * c]));
        const __m256i sch = _mm256_shuffle_epi8(scb, ld256(k_pick16[2 * c + 1]));
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const uint8_t *y = y0 + (size_t)r * as + 4 + 64 * c;
            const __m256i pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, ld256(y)), scl);
            const __m256i ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, ld256(y + 32)), sch);
            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(pl, ph));
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) {
        const __m256i bs = ld256(y0 + (size_t)r * as + 260);
        prod[r] = _mm_madd_epi16(mins, _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1)));
    }
}

FM_INLINE int hsum_i32x4(__m128i v) {
    v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(v);
}

FM_INLINE void q5k_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m256 acc[FM_R];
    float summs[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) {
        acc[r] = _mm256_setzero_ps();
        summs[r] = 0.0f;
    }
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 176, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R];
        __m128i prod[FM_R];
        q5k_block(x, y0, as, nr, sumi, prod);
        const float dx = t2f(x), mx = t2f(x + 2);
        FM_UNROLL for (int r = 0; r < nr; ++r) {
            const float yd = f32(y0 + (size_t)r * as), d = yd * dx, dmin = -yd * mx;
            summs[r] = fmaf(dmin, (float)hsum_i32x4(prod[r]), summs[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = hsum8(acc[r]) + summs[r];
}

FM_INLINE void q5k_rows_tiled(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    __m128 acc = _mm_setzero_ps();
    const __m256i z8 = _mm256_setzero_si256();
    const __m128i z4 = _mm_setzero_si128();
    for (int i = 0; i < n / 256; ++i) {
        const uint8_t *x = w + (size_t)i * 176, *y0 = a + (size_t)i * 292;
        __m256i sumi[FM_R] = {z8, z8, z8, z8};
        __m128i prod[FM_R] = {z4, z4, z4, z4};
        q5k_block(x, y0, as, nr, sumi, prod);
        acc = tiled_step4(acc, hsum4x8(sumi[0], sumi[1], sumi[2], sumi[3]), hsum4x4(prod[0], prod[1], prod[2], prod[3]),
                          t2f(x), t2f(x + 2), y0, as, nr);
    }
    store4(acc, nr, s, ss);
}

/* ---------------------------------------------------------------------------------------------------- */
/* MXFP4 x Q8_0: even blocks into one float accumulator and odd blocks into another (acc += (y.d * 2^(e-128))
   * lanes, fused), added lane by lane, hsum8; n a multiple of 64 (see fm_kernels.c) */

FM_INLINE float e8m0_half(uint8_t e) {
    const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

FM_INLINE void mxfp4_rows(int n, const uint8_t *w, const uint8_t *a, size_t as, const int nr, float *s, size_t ss) {
    const __m128i lut = ld128((const uint8_t *)fm_fp4_values);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[2][FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) acc[0][r] = acc[1][r] = _mm256_setzero_ps();
    for (int i = 0; i + 1 < n / 32; i += 2) {
        FM_UNROLL for (int h = 0; h < 2; ++h) {
            const uint8_t *x = w + (size_t)(i + h) * 17, *y0 = a + (size_t)(i + h) * 34;
            const __m256i v = lut32(lut, x + 1), av = _mm256_sign_epi8(v, v);
            const float ex = e8m0_half(x[0]);
            FM_UNROLL for (int r = 0; r < nr; ++r) {
                const uint8_t *y = y0 + (size_t)r * as;
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(ld256(y + 2), v)), ones);
                acc[h][r] = _mm256_fmadd_ps(_mm256_set1_ps(t2f(y) * ex), _mm256_cvtepi32_ps(p), acc[h][r]);
            }
        }
    }
    float sumf[FM_R];
    FM_UNROLL for (int r = 0; r < nr; ++r) sumf[r] = hsum8(_mm256_add_ps(acc[0][r], acc[1][r]));
    FM_UNROLL for (int r = 0; r < nr; ++r) s[(size_t)r * ss] = sumf[r];
}

/* ---------------------------------------------------------------------------------------------------- */

/* a kernel: groups of FM_R activation rows, then the remainder, each with a constant row count */
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

FM_GROUPED(dot_q4_K_avx2, q4k_rows)
FM_GROUPED(dot_q4_K_tiled_avx2, q4k_rows_tiled)
FM_GROUPED(dot_q2_K_avx2, q2k_rows)
FM_GROUPED(dot_q2_K_tiled_avx2, q2k_rows_tiled)
FM_GROUPED(dot_q4_0_avx2, q4_0_rows)
FM_GROUPED(dot_q8_0_avx2, q8_0_rows)
FM_GROUPED(dot_q4_1_avx2, q4_1_rows)
FM_GROUPED(dot_q3_K_avx2, q3k_rows)
FM_GROUPED(dot_q3_K_tiled_avx2, q3k_rows_tiled)
FM_GROUPED(dot_q5_K_avx2, q5k_rows)
FM_GROUPED(dot_q5_K_tiled_avx2, q5k_rows_tiled)
FM_GROUPED(dot_q6_K_avx2, q6k_rows)
FM_GROUPED(dot_q6_K_tiled_avx2, q6k_rows_tiled)
FM_GROUPED(dot_iq4_xs_avx2, iq4xs_rows)
FM_GROUPED(dot_iq4_xs_tiled_avx2, iq4xs_rows_tiled)
FM_GROUPED(dot_mxfp4_avx2, mxfp4_rows)

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

static const fm_kernel k_q4_0 = {"q4_0_avx2", dot_q4_0_avx2, NULL, NULL};
static const fm_kernel k_q4_1 = {"q4_1_avx2", dot_q4_1_avx2, NULL, NULL};
static const fm_kernel k_q8_0 = {"q8_0_avx2", dot_q8_0_avx2, NULL, NULL};
static const fm_kernel k_q2_K = {"q2_K_avx2", dot_q2_K_avx2, dot_q2_K_tiled_avx2, NULL};
static const fm_kernel k_q4_K = {"q4_K_avx2", dot_q4_K_avx2, dot_q4_K_tiled_avx2, NULL};
static const fm_kernel k_q3_K = {"q3_K_avx2", dot_q3_K_avx2, dot_q3_K_tiled_avx2, NULL};
static const fm_kernel k_q5_K = {"q5_K_avx2", dot_q5_K_avx2, dot_q5_K_tiled_avx2, NULL};
static const fm_kernel k_q6_K = {"q6_K_avx2", dot_q6_K_avx2, dot_q6_K_tiled_avx2, NULL};
static const fm_kernel k_iq4_xs = {"iq4_xs_avx2", dot_iq4_xs_avx2, dot_iq4_xs_tiled_avx2, NULL};
static const fm_kernel k_mxfp4 = {"mxfp4_avx2", dot_mxfp4_avx2, NULL, NULL};

const fm_kernel *fm_kernel_get_avx2(int type) {
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

const fm_kernel *fm_kernel_get_avx2(int type) {
    (void)type;
    return NULL;
}

#endif
