/* fm_quant.c - Q4_K quantization, bit-identical to ggml's reference quantizer, several times faster.
 *
 * What ggml computes (quantize_q4_K with no importance matrix), for each super-block of 256 values split into
 * 8 sub-blocks of 32:
 *   - per sub-block, weights w_i = sqrt(sum x_i^2 / 32) + |x_i|, then a weighted fit of x ~ scale * l + min
 *     with l in 0..15: start from the range [min(0, min x), max x]; then 21 candidate inverse scales
 *     (15 - 1 + 0.1 k) / (max - min), k = 0..20, each giving levels l, a least-squares scale and min (min
 *     clipped to <= 0) and a weighted squared error; the best candidate wins (the min used for the next
 *     candidates' levels is the best one so far);
 *   - the 8 scales and 8 mins are quantized to 6 bits against the largest of each, whose /63 become the fp16
 *     super-block factors d and dmin;
 *   - every value is re-quantized to 0..15 with the 6-bit-rounded scale and min (a sub-block whose rounded
 *     scale is 0 keeps the levels of its fit); levels pack two per byte.
 *
 * Bit identity. llama-cpp-python's libggml-base is built with -O3 and no -march (x86-64 baseline: SSE2
 * scalar single precision, no FMA, no fast-math), so every float operation of the reference is one IEEE
 * single-precision operation, rounded to nearest, in source order. This file performs the same operations in
 * the same order on the same operands: sums run sequentially from the first element, no product is fused into
 * an addition (fp-contract off below, and the AVX2 code is compiled without FMA), divisions stay divisions,
 * rounding to an integer uses the same add-1.5*2^23-and-take-the-mantissa trick. The AVX2 path puts the 8
 * sub-blocks of a super-block in the 8 lanes of a vector (the super-block is transposed on load), so each
 * lane executes the scalar sequence exactly; data-dependent branches become per-lane selects whose chosen
 * values equal the branch's. _mm256_min_ps(a, b) is (a < b ? a : b) and _mm256_max_ps(a, b) is
 * (a > b ? a : b), the reference's comparisons, including for signed zeros. Lanes the reference would not
 * compute (a flat sub-block, a candidate with det <= 0) may produce inf or NaN; they are discarded, and FP
 * exceptions are masked (only sticky flags are set). Inputs holding NaN or infinity are refused (the caller
 * uses ggml for them): only there could the propagated NaN depend on operand order. Finite inputs can still
 * make NaN (|x| > 1e19 overflows x^2, a range beyond fp16 gives d = inf): every such NaN is the processor's
 * default NaN, so which operand propagates does not matter and the rounding trick gives the same level.
 * The fp32 -> fp16 conversion rounds to nearest even and maps NaN to 0x7e00 as ggml's software conversion
 * does (compared with ggml_fp32_to_fp16 over all 2^32 floats when this was written).
 *
 * Throughput (one Zen 3 core): ggml's reference 12 M values/s, the AVX2 path about 95 M/s, the scalar path
 * the same as ggml's (it exists for CPUs without AVX2).
 *
 * Only the layout of block_q4_K is shared with ggml (it is the file format): d, dmin (fp16), 12 bytes of
 * packed 6-bit scales and mins, 128 bytes of 4-bit levels.
 */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fm_quant.h"

#define QK 256           /* values per super-block */
#define SUB 32           /* values per sub-block */
#define NSUB (QK / SUB)  /* sub-blocks per super-block */
#define BLOCK_BYTES 144  /* 2 + 2 + 12 + 128 */
#define NMAX 15
#define NSTEP 20

/* ---------------------------------------------------------------------------------------------------------
 * scalar helpers shared by both paths */

/* round to nearest (ties to even) through the float adder, as ggml does; the same bits for any input */
static inline int round_magic(float f) {
    float v = f + 12582912.f;  /* 1.5 * 2^23 */
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

static inline int clamp_level(int l) { return l < 0 ? 0 : (l > NMAX ? NMAX : l); }

/* float -> IEEE half, round to nearest even; NaN -> sign | 0x7e00 (ggml's choice) */
static uint16_t f32_to_f16(float f) {
    uint32_t w;
    memcpy(&w, &f, sizeof w);
    uint16_t sign = (uint16_t)((w >> 16) & 0x8000u);
    uint32_t a = w & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* >= 65520 rounds to infinity */
    if (a >= 0x38800000u) {                                     /* a normal half */
        uint32_t m = a - (112u << 23);                          /* re-bias the exponent: 127 - 15 */
        uint32_t h = m >> 13, rest = m & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    /* a subnormal half (or zero): the value in units of 2^-24 is below 1024, scaling by 2^24 is exact */
    float v;
    memcpy(&v, &a, sizeof v);
    return (uint16_t)(sign | (uint16_t)round_magic(v * 16777216.f));
}

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, bits;
    if (e == 0) {
        float v = (float)m * 0x1p-24f;  /* exact */
        memcpy(&bits, &v, sizeof bits);
        bits |= sign;
    } else if (e == 31) {
        bits = sign | 0x7f800000u | (m << 13);
    } else {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* the 21 candidate numerators (-1 + 0.1 k) + 15, each rounded as the reference rounds it */
static float step_numerator(int k) {
    const float rmin = -1.f, rdelta = 0.1f;
    return (rmin + rdelta * (float)k) + (float)NMAX;
}

/* Quantizes the 8 sub-block scales and mins to 6 bits, writes d, dmin and the packed scales; returns the
 * 6-bit values in ls and lm and the fp16 factors as floats. */
static void pack_scales(const float *scales, const float *mins, uint8_t *blk, uint8_t *ls, uint8_t *lm,
                        float *d, float *dmin) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < NSUB; ++j) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    uint8_t *sc = blk + 4;
    for (int j = 0; j < NSUB; ++j) {
        uint8_t a = (uint8_t)round_magic(inv_scale * scales[j]);  /* modulo 256, as the reference */
        uint8_t b = (uint8_t)round_magic(inv_min * mins[j]);
        ls[j] = a < 63 ? a : 63;
        lm[j] = b < 63 ? b : 63;
    }
    /* 6-bit packing: j < 4 in the low 6 bits of bytes j (scale) and j + 4 (min); j >= 4 split into a low
     * nibble in byte j + 4 and the top 2 bits in the high bits of bytes j - 4 (scale) and j (min) */
    for (int j = 0; j < 4; ++j) {
        sc[j] = (uint8_t)(ls[j] | ((ls[j + 4] >> 4) << 6));
        sc[j + 4] = (uint8_t)(lm[j] | ((lm[j + 4] >> 4) << 6));
        sc[j + 8] = (uint8_t)((ls[j + 4] & 0xf) | ((lm[j + 4] & 0xf) << 4));
    }
    uint16_t hd = f32_to_f16(max_scale / 63.f), hm = f32_to_f16(max_min / 63.f);
    blk[0] = (uint8_t)(hd & 0xff);
    blk[1] = (uint8_t)(hd >> 8);
    blk[2] = (uint8_t)(hm & 0xff);
    blk[3] = (uint8_t)(hm >> 8);
    *d = f16_to_f32(hd);
    *dmin = f16_to_f32(hm);
}

static void pack_levels(const uint8_t *L, uint8_t *qs) {
    for (int p = 0; p < QK / 64; ++p)
        for (int l = 0; l < SUB; ++l) qs[SUB * p + l] = (uint8_t)(L[64 * p + l] | (L[64 * p + SUB + l] << 4));
}

static int all_finite(const float *x, int n) {
    uint32_t bad = 0;
    for (int i = 0; i < n; ++i) {
        uint32_t w;
        memcpy(&w, &x[i], sizeof w);
        bad |= (uint32_t)((w & 0x7f800000u) == 0x7f800000u);
    }
    return !bad;
}

/* ---------------------------------------------------------------------------------------------------------
 * scalar path */

/* the weighted fit of one sub-block; returns the scale, writes -min and the levels */
static float fit_sub_block(const float *x, const float *w, uint8_t *L, float *neg_min) {
    float mn = x[0], mx = x[0];
    float sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < SUB; ++i) {
        if (x[i] < mn) mn = x[i];
        if (x[i] > mx) mx = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (mn > 0) mn = 0;
    if (mx == mn) {
        memset(L, 0, SUB);
        *neg_min = -mn;
        return 0.f;
    }
    float iscale = (float)NMAX / (mx - mn);
    float scale = 1.f / iscale;
    float best = 0;
    for (int i = 0; i < SUB; ++i) {
        int l = clamp_level(round_magic(iscale * (x[i] - mn)));
        L[i] = (uint8_t)l;
        float e = scale * (float)l + mn - x[i];
        e = e * e;
        best += w[i] * e;
    }
    uint8_t cand[SUB];
    for (int k = 0; k <= NSTEP; ++k) {
        iscale = step_numerator(k) / (mx - mn);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < SUB; ++i) {
            int l = clamp_level(round_magic(iscale * (x[i] - mn)));
            cand[i] = (uint8_t)l;
            float wl = w[i] * (float)l;
            sum_l += wl;
            sum_l2 += wl * (float)l;
            sum_xl += wl * x[i];
        }
        float det = sum_w * sum_l2 - sum_l * sum_l;
        if (!(det > 0)) continue;
        float s = (sum_w * sum_xl - sum_x * sum_l) / det;
        float m = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (m > 0) {
            m = 0;
            s = sum_xl / sum_l2;
        }
        float err = 0;
        for (int i = 0; i < SUB; ++i) {
            float e = s * (float)cand[i] + m - x[i];
            e = e * e;
            err += w[i] * e;
        }
        if (err < best) {
            memcpy(L, cand, SUB);
            best = err;
            scale = s;
            mn = m;
        }
    }
    *neg_min = -mn;
    return scale;
}

static int block_scalar(const float *x, uint8_t *blk) {
    if (!all_finite(x, QK)) return 1;
    uint8_t L[QK], ls[NSUB], lm[NSUB];
    float scales[NSUB], mins[NSUB], w[SUB];
    for (int j = 0; j < NSUB; ++j) {
        const float *xs = x + SUB * j;
        float sum_x2 = 0;
        for (int i = 0; i < SUB; ++i) sum_x2 += xs[i] * xs[i];
        const float av = sqrtf(sum_x2 / SUB);
        for (int i = 0; i < SUB; ++i) w[i] = av + fabsf(xs[i]);
        scales[j] = fit_sub_block(xs, w, L + SUB * j, &mins[j]);
    }
    float d, dmin;
    pack_scales(scales, mins, blk, ls, lm, &d, &dmin);
    for (int j = 0; j < NSUB; ++j) {
        const float dj = d * (float)ls[j];
        if (dj == 0) continue;  /* keeps the fit's levels */
        const float mj = dmin * (float)lm[j];
        for (int i = 0; i < SUB; ++i) L[SUB * j + i] = (uint8_t)clamp_level(round_magic((x[SUB * j + i] + mj) / dj));
    }
    pack_levels(L, blk + 16);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * AVX2 path: lane j of every vector belongs to sub-block j */

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FM_QUANT_HAVE_AVX2 1
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")  /* deliberately no FMA */
#endif

#define VI static inline __attribute__((always_inline))

/* r[c] <- column c of the 8x8 matrix whose rows are r[0..7] */
VI void transpose8(__m256 *r) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* round_magic then clamp to 0..15, per lane */
VI __m256i levels8(__m256 t) {
    __m256i i = _mm256_castps_si256(_mm256_add_ps(t, _mm256_set1_ps(12582912.f)));
    i = _mm256_sub_epi32(_mm256_and_si256(i, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
    return _mm256_max_epi32(_mm256_min_epi32(i, _mm256_set1_epi32(NMAX)), _mm256_setzero_si256());
}

VI __m256 sel(__m256 a, __m256 b, __m256 mask) { return _mm256_blendv_ps(a, b, mask); } /* mask ? b : a */

/* The fit of all 8 sub-blocks of NB super-blocks at once (fit_sub_block, lane by lane; the super-blocks are
 * independent and interleaved only to hide latency: each step's sums are chains of dependent additions).
 * X[i][u]: value i of every sub-block of super-block u, W the weights. Writes the best levels (as floats) to
 * Lb, the scales and -mins. */
#define NB 2
static void fit8(const __m256 (*X)[NB], const __m256 (*W)[NB], __m256 (*Lb)[NB], __m256 *scale_out,
                 __m256 *neg_min_out) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 mn[NB], mx[NB], sum_w[NB], sum_x[NB], flat[NB], mn_flat[NB], iscale[NB], scale[NB], best[NB];
    for (int u = 0; u < NB; ++u) {
        mn[u] = X[0][u];
        mx[u] = X[0][u];
        sum_w[u] = W[0][u];
        sum_x[u] = _mm256_mul_ps(W[0][u], X[0][u]);
    }
    for (int i = 1; i < SUB; ++i)
        for (int u = 0; u < NB; ++u) {
            mn[u] = _mm256_min_ps(X[i][u], mn[u]);  /* X < mn ? X : mn */
            mx[u] = _mm256_max_ps(X[i][u], mx[u]);  /* X > mx ? X : mx */
            sum_w[u] = _mm256_add_ps(sum_w[u], W[i][u]);
            sum_x[u] = _mm256_add_ps(sum_x[u], _mm256_mul_ps(W[i][u], X[i][u]));
        }
    for (int u = 0; u < NB; ++u) {
        mn[u] = _mm256_min_ps(zero, mn[u]);      /* mn > 0 ? 0 : mn */
        flat[u] = _mm256_cmp_ps(mx[u], mn[u], _CMP_EQ_OQ);
        mn_flat[u] = mn[u];
        iscale[u] = _mm256_div_ps(_mm256_set1_ps((float)NMAX), _mm256_sub_ps(mx[u], mn[u]));
        scale[u] = _mm256_div_ps(_mm256_set1_ps(1.f), iscale[u]);
        best[u] = zero;
    }
    for (int i = 0; i < SUB; ++i)
        for (int u = 0; u < NB; ++u) {
            __m256 l = _mm256_cvtepi32_ps(levels8(_mm256_mul_ps(iscale[u], _mm256_sub_ps(X[i][u], mn[u]))));
            Lb[i][u] = l;
            __m256 e = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale[u], l), mn[u]), X[i][u]);
            best[u] = _mm256_add_ps(best[u], _mm256_mul_ps(W[i][u], _mm256_mul_ps(e, e)));
        }
    __m256 cand[SUB][NB];
    for (int k = 0; k <= NSTEP; ++k) {
        const __m256 num = _mm256_set1_ps(step_numerator(k));
        __m256 sum_l[NB], sum_l2[NB], sum_xl[NB], s[NB], m[NB], err[NB], ok[NB], better[NB];
        for (int u = 0; u < NB; ++u) {
            iscale[u] = _mm256_div_ps(num, _mm256_sub_ps(mx[u], mn[u]));
            sum_l[u] = sum_l2[u] = sum_xl[u] = zero;
        }
        for (int i = 0; i < SUB; ++i)
            for (int u = 0; u < NB; ++u) {
                __m256 l = _mm256_cvtepi32_ps(levels8(_mm256_mul_ps(iscale[u], _mm256_sub_ps(X[i][u], mn[u]))));
                cand[i][u] = l;
                __m256 wl = _mm256_mul_ps(W[i][u], l);
                sum_l[u] = _mm256_add_ps(sum_l[u], wl);
                sum_l2[u] = _mm256_add_ps(sum_l2[u], _mm256_mul_ps(wl, l));
                sum_xl[u] = _mm256_add_ps(sum_xl[u], _mm256_mul_ps(wl, X[i][u]));
            }
        int any = 0;
        for (int u = 0; u < NB; ++u) {
            __m256 det = _mm256_sub_ps(_mm256_mul_ps(sum_w[u], sum_l2[u]), _mm256_mul_ps(sum_l[u], sum_l[u]));
            ok[u] = _mm256_cmp_ps(det, zero, _CMP_GT_OQ);
            any |= _mm256_movemask_ps(ok[u]);
            s[u] = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w[u], sum_xl[u]), _mm256_mul_ps(sum_x[u], sum_l[u])), det);
            m[u] = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2[u], sum_x[u]), _mm256_mul_ps(sum_l[u], sum_xl[u])), det);
            __m256 pos = _mm256_cmp_ps(m[u], zero, _CMP_GT_OQ);
            m[u] = sel(m[u], zero, pos);
            s[u] = sel(s[u], _mm256_div_ps(sum_xl[u], sum_l2[u]), pos);
            err[u] = zero;
        }
        if (!any) continue;
        for (int i = 0; i < SUB; ++i)
            for (int u = 0; u < NB; ++u) {
                __m256 e = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(s[u], cand[i][u]), m[u]), X[i][u]);
                err[u] = _mm256_add_ps(err[u], _mm256_mul_ps(W[i][u], _mm256_mul_ps(e, e)));
            }
        for (int u = 0; u < NB; ++u) {
            better[u] = _mm256_and_ps(ok[u], _mm256_cmp_ps(err[u], best[u], _CMP_LT_OQ));
            if (_mm256_movemask_ps(better[u]) == 0) continue;
            for (int i = 0; i < SUB; ++i) Lb[i][u] = sel(Lb[i][u], cand[i][u], better[u]);
            best[u] = sel(best[u], err[u], better[u]);
            scale[u] = sel(scale[u], s[u], better[u]);
            mn[u] = sel(mn[u], m[u], better[u]);
        }
    }
    /* a flat sub-block (max == min) returned early in the reference: levels 0, scale 0, -min */
    for (int u = 0; u < NB; ++u) {
        for (int i = 0; i < SUB; ++i) Lb[i][u] = _mm256_andnot_ps(flat[u], Lb[i][u]);
        scale_out[u] = sel(scale[u], zero, flat[u]);
        neg_min_out[u] = _mm256_xor_ps(sel(mn[u], mn_flat[u], flat[u]), _mm256_set1_ps(-0.f));
    }
}

/* NB super-blocks (x: NB * 256 values, blk: NB blocks). Returns 1 if a value is not finite. */
static int blocks_avx2(const float *x, uint8_t *blk) {
    __m256 X[SUB][NB], W[SUB][NB], Lb[SUB][NB];
    __m256i bad = _mm256_setzero_si256();
    const __m256i expo = _mm256_set1_epi32(0x7f800000);
    for (int u = 0; u < NB; ++u)
        for (int b = 0; b < SUB / 8; ++b) {
            __m256 r[8];
            for (int j = 0; j < NSUB; ++j) {
                r[j] = _mm256_loadu_ps(x + QK * u + SUB * j + 8 * b);
                bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(r[j]), expo), expo));
            }
            transpose8(r);
            for (int c = 0; c < 8; ++c) X[8 * b + c][u] = r[c];
        }
    if (!_mm256_testz_si256(bad, bad)) return 1;

    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int u = 0; u < NB; ++u) {
        __m256 sum_x2 = _mm256_setzero_ps();
        for (int i = 0; i < SUB; ++i) sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(X[i][u], X[i][u]));
        const __m256 av = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps((float)SUB)));
        for (int i = 0; i < SUB; ++i) W[i][u] = _mm256_add_ps(av, _mm256_and_ps(X[i][u], absmask));
    }

    __m256 scale[NB], neg_min[NB];
    fit8((const __m256 (*)[NB])X, (const __m256 (*)[NB])W, Lb, scale, neg_min);
    for (int u = 0; u < NB; ++u) {
        const float *xu = x + QK * u;
        uint8_t *bu = blk + BLOCK_BYTES * u;
        float scales[NSUB], mins[NSUB], d, dmin;
        uint8_t ls[NSUB], lm[NSUB];
        _mm256_storeu_ps(scales, scale[u]);
        _mm256_storeu_ps(mins, neg_min[u]);
        pack_scales(scales, mins, bu, ls, lm, &d, &dmin);

        /* final levels, natural order: lv[j][q] holds values 8q..8q+7 of sub-block j */
        __m256i lv[NSUB][SUB / 8];
        for (int j = 0; j < NSUB; ++j) {
            const float dj = d * (float)ls[j];
            if (dj == 0) {  /* keeps the fit's levels: lane j of Lb */
                float col[SUB][8];
                int32_t l[SUB];
                for (int i = 0; i < SUB; ++i) _mm256_storeu_ps(col[i], Lb[i][u]);
                for (int i = 0; i < SUB; ++i) l[i] = (int32_t)col[i][j];
                for (int q = 0; q < SUB / 8; ++q) lv[j][q] = _mm256_loadu_si256((const __m256i *)(const void *)(l + 8 * q));
                continue;
            }
            const __m256 vd = _mm256_set1_ps(dj), vm = _mm256_set1_ps(dmin * (float)lm[j]);
            for (int q = 0; q < SUB / 8; ++q)
                lv[j][q] = levels8(_mm256_div_ps(_mm256_add_ps(_mm256_loadu_ps(xu + SUB * j + 8 * q), vm), vd));
        }
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (int p = 0; p < QK / 64; ++p) {
            __m256i c[4];
            for (int q = 0; q < 4; ++q) c[q] = _mm256_or_si256(lv[2 * p][q], _mm256_slli_epi32(lv[2 * p + 1][q], 4));
            __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(c[0], c[1]), _mm256_packus_epi32(c[2], c[3]));
            _mm256_storeu_si256((__m256i *)(void *)(bu + 16 + SUB * p), _mm256_permutevar8x32_epi32(bytes, order));
        }
    }
    return 0;
}

/* one super-block: through a padded copy (the padding's block is discarded) */
static int block_avx2(const float *x, uint8_t *blk) {
    float tmp[QK * NB];
    uint8_t out[BLOCK_BYTES * NB];
    memcpy(tmp, x, sizeof(float) * QK);
    for (int i = QK; i < QK * NB; ++i) tmp[i] = 0.f;
    int r = blocks_avx2(tmp, out);
    memcpy(blk, out, BLOCK_BYTES);
    return r;
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif /* x86 */

/* ---------------------------------------------------------------------------------------------------------
 * entry points */

int fm_quant_best_isa(void) {
#ifdef FM_QUANT_HAVE_AVX2
    /* libgcc / compiler-rt fill the CPU model in a constructor; "avx2" includes the OS's YMM support */
    if (__builtin_cpu_supports("avx2")) return FM_QUANT_ISA_AVX2;
#endif
    return FM_QUANT_ISA_SCALAR;
}

int fm_quantize_q4_K(const float *src, void *dst, int64_t nrows, int64_t n_per_row, int isa) {
    if (!src || !dst || nrows < 0 || n_per_row <= 0 || n_per_row % QK) return -1;
    if (isa == FM_QUANT_ISA_AUTO) isa = fm_quant_best_isa();
    int (*block)(const float *, uint8_t *) = NULL;
    if (isa == FM_QUANT_ISA_SCALAR) block = block_scalar;
#ifdef FM_QUANT_HAVE_AVX2
    else if (isa == FM_QUANT_ISA_AVX2 && fm_quant_best_isa() == FM_QUANT_ISA_AVX2) block = block_avx2;
#endif
    if (!block) return -1;
    const int64_t nblocks = nrows * (n_per_row / QK);
    uint8_t *out = (uint8_t *)dst;
    int64_t b = 0;
#ifdef FM_QUANT_HAVE_AVX2
    if (block == block_avx2)
        for (; b + NB <= nblocks; b += NB)
            if (blocks_avx2(src + b * QK, out + b * BLOCK_BYTES)) return 1;
#endif
    for (; b < nblocks; ++b)
        if (block(src + b * QK, out + b * BLOCK_BYTES)) return 1;
    return 0;
}
