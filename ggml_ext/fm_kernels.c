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
 *   Q3_K 110 B / 256 values: hmask[32] | qs[64] | scales[12] (16 6-bit scales, stored +32) | d fp16
 *                            value 128c + 32k + l = ((qs[32c + l] >> 2k) & 3) - (bit 4c+k of hmask[l] ? 0 : 4)
 *   Q5_K 176 B / 256 values: d, dmin fp16 | scales[12] (as Q4_K) | qh[32] | qs[128]
 *                            value 64c + l = (qs[32c + l] & 15) + 16 * (bit 2c of qh[l]),
 *                            value 64c + 32 + l = (qs[32c + l] >> 4) + 16 * (bit 2c+1 of qh[l])
 *   Q6_K 210 B / 256 values: ql[128] | qh[64] | scales[16] int8 (per 16 values) | d fp16
 *                            value 128h + 32k + l = (4 bits: ql[64h + 32(k&1) + l], low nibble for k < 2, high
 *                            for k >= 2) | ((qh[32h + l] >> 2k) & 3) << 4, minus 32
 *   IQ4_XS 136 B / 256 values: d fp16 | scales_h u16 | scales_l[4] | qs[128]; sub-block s of 32 values has
 *                            scale ((scales_l[s/2] >> 4(s%2)) & 15 | ((scales_h >> 2s) & 3) << 4) - 32, value
 *                            32s + l = IQ4NL[qs[16s + l] & 15], 32s + 16 + l = IQ4NL[qs[16s + l] >> 4], l < 16
 *   MXFP4 17 B / 32 values : e (E8M0: scale 2^(e-128) with the doubled values) | qs[16]; values as IQ4_XS's
 *                            through the table FP4 (e2m1 values, doubled)
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

/* the non-linear 4-bit value tables (ggml-common.h's kvalues_iq4nl and kvalues_fp4) */
const int8_t fm_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
const int8_t fm_fp4_values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* an E8M0 exponent byte as the float 2^(e-128) (half the MX scale: the FP4 table holds doubled values), bit
   for bit as ggml computes it (no NaN for 255) */
float fm_e8m0_half(uint8_t e) {
    const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* the 16 6-bit scales of a Q3_K block, minus 32 */
static void q3k_scales(const uint8_t *q, int sc[16]) {
    for (int j = 0; j < 16; ++j) {
        const int lo = j < 8 ? q[j] & 15 : q[j - 8] >> 4;
        const int hi = (q[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        sc[j] = (lo | (hi << 4)) - 32;
    }
}

/* ggml's 8 int32 lanes of a 256-value block: lane l sums, over the 8 vectors of 32 values v, the products of
   bytes 4l..4l+3 of v times the scale of their 16 values (sc16[2v] for l < 4, sc16[2v+1] for l >= 4);
   `sign_trick`: each product as _mm256_sign_epi8 forms it (|x| times y with x's sign, wrapping at -128) */
static void lanes256(const int val[256], const int8_t *yq, const int sc16[16], int sign_trick, int lane[8]) {
    for (int l = 0; l < 8; ++l) lane[l] = 0;
    for (int v = 0; v < 8; ++v)
        for (int l = 0; l < 8; ++l) {
            int sum = 0;
            for (int b = 32 * v + 4 * l; b < 32 * v + 4 * l + 4; ++b)
                sum += sign_trick ? (val[b] < 0 ? -val[b] : val[b]) * sign8(yq[b], val[b]) : val[b] * yq[b];
            lane[l] += sc16[2 * v + (l >= 4)] * sum;
        }
}

/* the exact integer dot of a block: sum over the values of scale * value * activation */
static int exact256(const int val[256], const int8_t *yq, const int sc16[16]) {
    int total = 0;
    for (int g = 0; g < 16; ++g) {
        int sum = 0;
        for (int b = 16 * g; b < 16 * g + 16; ++b) sum += val[b] * yq[b];
        total += sc16[g] * sum;
    }
    return total;
}

/* block decoders: the 256 values (as ggml's vec_dot forms them) and the scale of each 16 values */
static void decode_q3_K(const uint8_t *x, int val[256], int sc16[16]) {
    const uint8_t *hm = x, *qs = x + 32;
    for (int c = 0; c < 2; ++c)
        for (int k = 0; k < 4; ++k)
            for (int l = 0; l < 32; ++l)
                val[128 * c + 32 * k + l] = ((qs[32 * c + l] >> (2 * k)) & 3) - ((hm[l] >> (4 * c + k)) & 1 ? 0 : 4);
    q3k_scales(x + 96, sc16);
}

static void decode_q5_K(const uint8_t *x, int val[256], int sc16[16], int mn[8]) {
    const uint8_t *qh = x + 16, *qs = x + 48;
    int sc[8];
    q4k_scales_mins(x + 4, sc, mn);
    for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) {
            val[64 * c + l] = (qs[32 * c + l] & 15) + 16 * ((qh[l] >> (2 * c)) & 1);
            val[64 * c + 32 + l] = (qs[32 * c + l] >> 4) + 16 * ((qh[l] >> (2 * c + 1)) & 1);
        }
    for (int j = 0; j < 16; ++j) sc16[j] = sc[j / 2];
}

/* Q6_K's values without the -32 (ggml's vec_dot subtracts 32 * scale * activation sums separately) */
static void decode_q6_K(const uint8_t *x, int val[256], int sc16[16]) {
    const uint8_t *ql = x, *qh = x + 128;
    for (int h = 0; h < 2; ++h)
        for (int k = 0; k < 4; ++k)
            for (int l = 0; l < 32; ++l) {
                const uint8_t b = ql[64 * h + 32 * (k & 1) + l];
                val[128 * h + 32 * k + l] = (k < 2 ? b & 15 : b >> 4) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
            }
    for (int j = 0; j < 16; ++j) sc16[j] = (int8_t)x[192 + j];
}

static void decode_iq4_xs(const uint8_t *x, int val[256], int sc16[16]) {
    const int sh = load_i16(x + 2) & 0xffff;
    const uint8_t *sl = x + 4, *qs = x + 8;
    for (int sb = 0; sb < 8; ++sb) {
        const int ls = ((sl[sb / 2] >> (4 * (sb % 2))) & 15) | (((sh >> (2 * sb)) & 3) << 4);
        sc16[2 * sb] = sc16[2 * sb + 1] = ls - 32;
        for (int l = 0; l < 16; ++l) {
            val[32 * sb + l] = fm_iq4nl_values[qs[16 * sb + l] & 15];
            val[32 * sb + 16 + l] = fm_iq4nl_values[qs[16 * sb + l] >> 4];
        }
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

/* Q3_K, Q6_K, IQ4_XS x Q8_K: acc[l] += (y.d * x.d) * lane[l] (fused), then hsum8. Q6_K's lanes are those of
   its 6-bit codes minus 32 * (scale * 16-value activation sum) for the two 16-value groups 2l, 2l+1. */
static float dot1_q3_K(int n, const uint8_t *x, const uint8_t *y) {
    float acc[8] = {0};
    for (int i = 0; i < n / 256; ++i, x += 110, y += 292) {
        int val[256], sc16[16], lane[8];
        decode_q3_K(x, val, sc16);
        lanes256(val, (const int8_t *)(y + 4), sc16, 0, lane);
        const float d = load_f32(y) * h2f(x + 108);
        for (int l = 0; l < 8; ++l) acc[l] = fmaf(d, (float)lane[l], acc[l]);
    }
    return hsum8(acc);
}

static float dot1_q6_K(int n, const uint8_t *x, const uint8_t *y) {
    float acc[8] = {0};
    for (int i = 0; i < n / 256; ++i, x += 210, y += 292) {
        int val[256], sc16[16], lane[8];
        decode_q6_K(x, val, sc16);
        lanes256(val, (const int8_t *)(y + 4), sc16, 0, lane);
        for (int l = 0; l < 8; ++l)
            lane[l] -= 32 * (load_i16(y + 260 + 4 * l) * sc16[2 * l] + load_i16(y + 262 + 4 * l) * sc16[2 * l + 1]);
        const float d = load_f32(y) * h2f(x + 208);
        for (int l = 0; l < 8; ++l) acc[l] = fmaf(d, (float)lane[l], acc[l]);
    }
    return hsum8(acc);
}

static float dot1_iq4_xs(int n, const uint8_t *x, const uint8_t *y) {
    float acc[8] = {0};
    for (int i = 0; i < n / 256; ++i, x += 136, y += 292) {
        int val[256], sc16[16], lane[8];
        decode_iq4_xs(x, val, sc16);
        lanes256(val, (const int8_t *)(y + 4), sc16, 1, lane);
        const float d = h2f(x) * load_f32(y);
        for (int l = 0; l < 8; ++l) acc[l] = fmaf(d, (float)lane[l], acc[l]);
    }
    return hsum8(acc);
}

/* Q5_K x Q8_K: as Q4_K, but the mins' sum is one integer per block, fused into one float sum */
static float dot1_q5_K(int n, const uint8_t *x, const uint8_t *y) {
    float acc[8] = {0}, summs = 0.0f;
    for (int i = 0; i < n / 256; ++i, x += 176, y += 292) {
        int val[256], sc16[16], mn[8], lane[8];
        decode_q5_K(x, val, sc16, mn);
        const float yd = load_f32(y), d = yd * h2f(x), dmin = -yd * h2f(x + 2);
        int m = 0;
        for (int j = 0; j < 8; ++j) m += mn[j] * (int16_t)(load_i16(y + 260 + 4 * j) + load_i16(y + 262 + 4 * j));
        summs = fmaf(dmin, (float)m, summs);
        lanes256(val, (const int8_t *)(y + 4), sc16, 0, lane);
        for (int l = 0; l < 8; ++l) acc[l] = fmaf(d, (float)lane[l], acc[l]);
    }
    return hsum8(acc) + summs;
}

/* MXFP4 x Q8_0: blocks in pairs, even blocks into one 8-lane float accumulator and odd ones into another
   (acc += (y.d * 2^(e-128)) * lanes, fused), the two added lane by lane and then as hsum8. n must be a multiple
   of 64 (fm_kernel_n_multiple): ggml adds an odd last block with `sumf += d * isum`, which GCC compiles fused or
   not depending on the CPU it tunes for, so no kernel can promise ggml's bits there; the runtime leaves such
   rows to ggml. */
static void lanes32_fp4(const uint8_t *x, const int8_t *yq, int lane[8]) {
    for (int l = 0; l < 8; ++l) {
        int sum = 0;
        for (int b = 4 * l; b < 4 * l + 4; ++b) {
            const int v = fm_fp4_values[b < 16 ? x[1 + b] & 15 : x[1 + b - 16] >> 4];
            sum += (v < 0 ? -v : v) * sign8(yq[b], v);
        }
        lane[l] = sum;
    }
}

static float dot1_mxfp4(int n, const uint8_t *x, const uint8_t *y) {
    float acc[2][8] = {{0}};
    for (int i = 0; i + 1 < n / 32; i += 2)
        for (int h = 0; h < 2; ++h) {
            const uint8_t *xb = x + (size_t)(i + h) * 17, *yb = y + (size_t)(i + h) * 34;
            int lane[8];
            lanes32_fp4(xb, (const int8_t *)(yb + 2), lane);
            const float d = h2f(yb) * fm_e8m0_half(xb[0]);
            for (int l = 0; l < 8; ++l) acc[h][l] = fmaf(d, (float)lane[l], acc[h][l]);
        }
    float sum8[8];
    for (int l = 0; l < 8; ++l) sum8[l] = acc[0][l] + acc[1][l];
    return hsum8(sum8);
}

/* tiled: s1 = the block's exact integer dot (scales included), s2 = Q5_K's mins times activation sums */
static float dot1_q3_K_tiled(int n, const uint8_t *x, const uint8_t *y) {
    float acc = 0.0f;
    for (int i = 0; i < n / 256; ++i, x += 110, y += 292) {
        int val[256], sc16[16];
        decode_q3_K(x, val, sc16);
        acc = tiled_step(acc, y, h2f(x + 108), 0.0f, exact256(val, (const int8_t *)(y + 4), sc16), 0);
    }
    return acc;
}

static float dot1_q5_K_tiled(int n, const uint8_t *x, const uint8_t *y) {
    float acc = 0.0f;
    for (int i = 0; i < n / 256; ++i, x += 176, y += 292) {
        int val[256], sc16[16], mn[8], s2 = 0;
        decode_q5_K(x, val, sc16, mn);
        for (int j = 0; j < 8; ++j) s2 += mn[j] * (load_i16(y + 260 + 4 * j) + load_i16(y + 262 + 4 * j));
        acc = tiled_step(acc, y, h2f(x), h2f(x + 2), exact256(val, (const int8_t *)(y + 4), sc16), s2);
    }
    return acc;
}

static float dot1_q6_K_tiled(int n, const uint8_t *x, const uint8_t *y) {
    float acc = 0.0f;
    for (int i = 0; i < n / 256; ++i, x += 210, y += 292) {
        int val[256], sc16[16];
        decode_q6_K(x, val, sc16);
        for (int b = 0; b < 256; ++b) val[b] -= 32;
        acc = tiled_step(acc, y, h2f(x + 208), 0.0f, exact256(val, (const int8_t *)(y + 4), sc16), 0);
    }
    return acc;
}

static float dot1_iq4_xs_tiled(int n, const uint8_t *x, const uint8_t *y) {
    float acc = 0.0f;
    for (int i = 0; i < n / 256; ++i, x += 136, y += 292) {
        int val[256], sc16[16];
        decode_iq4_xs(x, val, sc16);
        acc = tiled_step(acc, y, h2f(x), 0.0f, exact256(val, (const int8_t *)(y + 4), sc16), 0);
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
FM_SCALAR_KERNEL(dot_q3_K_scalar, dot1_q3_K)
FM_SCALAR_KERNEL(dot_q3_K_tiled_scalar, dot1_q3_K_tiled)
FM_SCALAR_KERNEL(dot_q5_K_scalar, dot1_q5_K)
FM_SCALAR_KERNEL(dot_q5_K_tiled_scalar, dot1_q5_K_tiled)
FM_SCALAR_KERNEL(dot_q6_K_scalar, dot1_q6_K)
FM_SCALAR_KERNEL(dot_q6_K_tiled_scalar, dot1_q6_K_tiled)
FM_SCALAR_KERNEL(dot_iq4_xs_scalar, dot1_iq4_xs)
FM_SCALAR_KERNEL(dot_iq4_xs_tiled_scalar, dot1_iq4_xs_tiled)
FM_SCALAR_KERNEL(dot_mxfp4_scalar, dot1_mxfp4)

static const fm_kernel k_scalar_q4_0 = {"q4_0_scalar", dot_q4_0_scalar, NULL, NULL};
static const fm_kernel k_scalar_q4_1 = {"q4_1_scalar", dot_q4_1_scalar, NULL, NULL};
static const fm_kernel k_scalar_q8_0 = {"q8_0_scalar", dot_q8_0_scalar, NULL, NULL};
static const fm_kernel k_scalar_q2_K = {"q2_K_scalar", dot_q2_K_scalar, dot_q2_K_tiled_scalar, NULL};
static const fm_kernel k_scalar_q4_K = {"q4_K_scalar", dot_q4_K_scalar, dot_q4_K_tiled_scalar, NULL};
static const fm_kernel k_scalar_q3_K = {"q3_K_scalar", dot_q3_K_scalar, dot_q3_K_tiled_scalar, NULL};
static const fm_kernel k_scalar_q5_K = {"q5_K_scalar", dot_q5_K_scalar, dot_q5_K_tiled_scalar, NULL};
static const fm_kernel k_scalar_q6_K = {"q6_K_scalar", dot_q6_K_scalar, dot_q6_K_tiled_scalar, NULL};
static const fm_kernel k_scalar_iq4_xs = {"iq4_xs_scalar", dot_iq4_xs_scalar, dot_iq4_xs_tiled_scalar, NULL};
static const fm_kernel k_scalar_mxfp4 = {"mxfp4_scalar", dot_mxfp4_scalar, NULL, NULL};

static const fm_kernel *scalar_kernel(int type) {
    switch (type) {
    case FM_TYPE_Q4_0: return &k_scalar_q4_0;
    case FM_TYPE_Q4_1: return &k_scalar_q4_1;
    case FM_TYPE_Q8_0: return &k_scalar_q8_0;
    case FM_TYPE_Q2_K: return &k_scalar_q2_K;
    case FM_TYPE_Q4_K: return &k_scalar_q4_K;
    case FM_TYPE_Q3_K: return &k_scalar_q3_K;
    case FM_TYPE_Q5_K: return &k_scalar_q5_K;
    case FM_TYPE_Q6_K: return &k_scalar_q6_K;
    case FM_TYPE_IQ4_XS: return &k_scalar_iq4_xs;
    case FM_TYPE_MXFP4: return &k_scalar_mxfp4;
    default: return NULL;
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* type facts                                                                                              */

int fm_kernel_vec_dot_type(int type) {
    switch (type) {
    case FM_TYPE_Q4_0:
    case FM_TYPE_Q8_0:
    case FM_TYPE_MXFP4: return FM_TYPE_Q8_0;
    case FM_TYPE_Q4_1: return FM_TYPE_Q8_1;
    case FM_TYPE_Q2_K:
    case FM_TYPE_Q3_K:
    case FM_TYPE_Q4_K:
    case FM_TYPE_Q5_K:
    case FM_TYPE_Q6_K:
    case FM_TYPE_IQ4_XS: return FM_TYPE_Q8_K;
    default: return -1;
    }
}

int fm_kernel_ggml_tiled(int type) {
    switch (type) {
    case 10: /* Q2_K */
    case 11: /* Q3_K */
    case 12: /* Q4_K */
    case 13: /* Q5_K */
    case 14: /* Q6_K */
    case 16: /* IQ2_XXS */
    case 17: /* IQ2_XS */
    case 18: /* IQ3_XXS */
    case 19: /* IQ1_S */
    case 21: /* IQ3_S */
    case 22: /* IQ2_S */
    case 23: /* IQ4_XS */
    case 29: /* IQ1_M */ return 1;
    default: return 0;
    }
}

int fm_kernel_n_multiple(int type) {
    return type == FM_TYPE_MXFP4 ? 64 : fm_kernel_block_size(type);
}

int fm_kernel_block_size(int type) {
    switch (type) {
    case FM_TYPE_Q4_0:
    case FM_TYPE_Q4_1:
    case FM_TYPE_Q8_0:
    case FM_TYPE_Q8_1:
    case FM_TYPE_MXFP4: return 32;
    case FM_TYPE_Q2_K:
    case FM_TYPE_Q3_K:
    case FM_TYPE_Q4_K:
    case FM_TYPE_Q5_K:
    case FM_TYPE_Q6_K:
    case FM_TYPE_IQ4_XS:
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
    case FM_TYPE_Q3_K: return 110;
    case FM_TYPE_Q5_K: return 176;
    case FM_TYPE_Q6_K: return 210;
    case FM_TYPE_IQ4_XS: return 136;
    case FM_TYPE_MXFP4: return 17;
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
    if (tiled && k->mm_tiled) { /* the kernel's own matrix-level code (it does its own cache blocking) */
        k->mm_tiled(n, w, w_stride, n_rows, act, act_stride, n_act, dst, dst_stride);
        return;
    }
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

#define FM_VNNI_BIT 0x100 /* in detect_isa's result: AVX512_VNNI too */

#if FM_X86
/* OS support for the AVX (ymm) and AVX-512 (opmask, zmm) register state, from XCR0 */
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* the instruction set (FM_ISA_*), and in bit 8 whether AVX512_VNNI is there too (CPUID 7.0 ECX bit 11; it uses
   the AVX-512 register state, which the FM_ISA_AVX512 check covers) */
static int detect_isa(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return FM_ISA_SCALAR;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !fma) return FM_ISA_SCALAR;
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return FM_ISA_SCALAR; /* xmm + ymm state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return FM_ISA_SCALAR;
    const int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    const int vnni = (c >> 11) & 1;
    if (!avx2) return FM_ISA_SCALAR;
#if defined(FM_AVX512_SIMDE)
    /* a test build whose AVX-512 kernels, VNNI ones included, run on SIMDe's emulation (with AVX2 + FMA
       underneath) */
    (void)avx512f, (void)avx512bw, (void)avx512vl, (void)vnni;
    return FM_ISA_AVX512 | FM_VNNI_BIT;
#else
    if (avx512f && avx512bw && avx512vl && (xcr0 & 0xe6) == 0xe6) return FM_ISA_AVX512 | (vnni ? FM_VNNI_BIT : 0);
    return FM_ISA_AVX2;
#endif
}
#endif

/* detect_isa's result, computed once (a race only makes two threads compute the same value) */
static int cpu_features(void) {
#if FM_X86
    static atomic_int cached = 0;
    int f = atomic_load_explicit(&cached, memory_order_relaxed);
    if (f == 0) {
        f = detect_isa();
        atomic_store_explicit(&cached, f, memory_order_relaxed);
    }
    return f;
#else
    return FM_ISA_SCALAR;
#endif
}

int fm_kernel_has_vnni(void) { return (cpu_features() & FM_VNNI_BIT) != 0; }

int fm_kernel_best_isa(void) { return cpu_features() & ~FM_VNNI_BIT; }

const fm_kernel *fm_kernel_get(int type, int isa) {
    fm_kernels_init();
    const int best = fm_kernel_best_isa();
    if (isa == FM_ISA_BEST) { /* the best instruction set that has a kernel for the type */
        const fm_kernel *k = NULL;
        if (best >= FM_ISA_AVX512) k = fm_kernel_get_avx512(type, fm_kernel_has_vnni());
        if (!k && best >= FM_ISA_AVX2) k = fm_kernel_get_avx2(type);
        return k ? k : scalar_kernel(type);
    }
    if (isa < FM_ISA_SCALAR || isa > best) return NULL;
    switch (isa) {
    case FM_ISA_AVX512: { /* a type without an AVX-512 spelling (Q4_0, Q4_1, Q8_0) runs its AVX2 kernel */
        const fm_kernel *k = fm_kernel_get_avx512(type, fm_kernel_has_vnni());
        return k ? k : fm_kernel_get_avx2(type);
    }
    case FM_ISA_AVX2: return fm_kernel_get_avx2(type);
    default: return scalar_kernel(type);
    }
}
