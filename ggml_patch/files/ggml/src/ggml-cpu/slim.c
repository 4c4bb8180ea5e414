// slim2gguf: CPU kernels of the SliM-LLM mixed-precision group types (GGML_TYPE_SLIM*).
// Row layout: docs/format.md in slim2gguf; ggml-slim.h. One scalar reference (_generic) and one AVX2 path.

#define GGML_COMMON_IMPL_C
#include "ggml-common.h"

#include "ggml-impl.h"
#include "ggml-cpu.h"
#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "ggml-slim.h"
#include "slim.h"

#include <assert.h>
#include <math.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------------------
// from_float

void quantize_row_slim2_g64 (const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) { quantize_row_slim2_g64_ref (x, y, k); }
void quantize_row_slim2_g128(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) { quantize_row_slim2_g128_ref(x, y, k); }
void quantize_row_slim3_g64 (const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) { quantize_row_slim3_g64_ref (x, y, k); }
void quantize_row_slim3_g128(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) { quantize_row_slim3_g128_ref(x, y, k); }

// ---------------------------------------------------------------------------------------------------------
// vec_dot, scalar reference
//
//   sum_i (d*q_i + m) * a_i  with a_i = d8_k * qa_i over the Q8_1 blocks k of the group
//   = sum_k [ d * d8_k * sum_i q_i*qa_i  +  m * s_k ],   s_k = fp16(d8_k * sum_i qa_i)

static inline void slim_vec_dot_q8_1_generic(int n, float * GGML_RESTRICT s, const void * GGML_RESTRICT vx,
                                             const void * GGML_RESTRICT vy, const int b, const int g) {
    assert(n % g == 0);
    const int G  = n / g;
    const int pb = g / 8;
    const int nq = g / QK8_1;
    const block_slim_header * GGML_RESTRICT h = (const block_slim_header *) vx;
    const uint8_t * GGML_RESTRICT codes = (const uint8_t *) vx + sizeof(block_slim_header) * G;
    const uint8_t * end = (const uint8_t *) vx + (sizeof(block_slim_header) + (size_t) g*b/8) * G;
    const block_q8_1 * GGML_RESTRICT y = (const block_q8_1 *) vy;

    float sumf = 0.0f;
    for (int j = 0; j < G; ++j) {
        const uint16_t dh   = h[j].d;
        const int      bits = ggml_slim_bits(dh);
        if (codes + (size_t) bits*pb > end) { // corrupt tags: never read past the row
            *s = NAN;
            return;
        }
        const float d = GGML_CPU_FP16_TO_FP32(dh & GGML_SLIM_SCALE_MASK);
        const float m = GGML_CPU_FP16_TO_FP32(h[j].m);
        for (int kb = 0; kb < nq; ++kb) {
            const block_q8_1 * GGML_RESTRICT yb = &y[j*nq + kb];
            int sumi = 0;
            for (int i = 0; i < QK8_1; ++i) {
                const int e = kb*QK8_1 + i;
                int q = 0;
                for (int p = 0; p < bits; ++p) {
                    q |= ((codes[p*pb + (e >> 3)] >> (e & 7)) & 1) << p;
                }
                sumi += q * yb->qs[i];
            }
            sumf += d*GGML_CPU_FP16_TO_FP32(yb->d)*(float) sumi + m*GGML_CPU_FP16_TO_FP32(yb->s);
        }
        codes += (size_t) bits*pb;
    }
    *s = sumf;
}

// ---------------------------------------------------------------------------------------------------------
// vec_dot, AVX2

#if defined(__AVX2__)
#include <immintrin.h>

// 32 code bits of one plane -> 32 bytes, (1 << p) where the bit is set, 0 elsewhere
static inline __m256i slim_plane32_avx2(const uint8_t * GGML_RESTRICT src, const int p) {
    uint32_t w;
    memcpy(&w, src, sizeof(w));
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i sel  = _mm256_set1_epi64x(0x8040201008040201LL);
    const __m256i v    = _mm256_shuffle_epi8(_mm256_set1_epi32((int) w), shuf);
    const __m256i set  = _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
    return _mm256_and_si256(set, _mm256_set1_epi8((char) (1 << p)));
}

static inline __m256 slim_madd_ps(__m256 a, __m256 b, __m256 c) {
#if defined(__FMA__)
    return _mm256_fmadd_ps(a, b, c);
#else
    return _mm256_add_ps(_mm256_mul_ps(a, b), c);
#endif
}

// one group of g weights with `bits` planes (bits and g are constants after inlining)
static inline __attribute__((always_inline)) __m256 slim_group_avx2(
        const uint8_t * GGML_RESTRICT codes, const block_q8_1 * GGML_RESTRICT y, const float d, const float m,
        __m256 acc, float * GGML_RESTRICT summ, const int bits, const int g) {
    const int pb = g / 8;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int c = 0; c < g / 32; ++c) {
        __m256i q = slim_plane32_avx2(codes + 4*c, 0);
        for (int p = 1; p < bits; ++p) {
            q = _mm256_or_si256(q, slim_plane32_avx2(codes + p*pb + 4*c, p));
        }
        const __m256i a   = _mm256_loadu_si256((const __m256i *) y[c].qs);
        const __m256i p16 = _mm256_maddubs_epi16(q, a);           // q in [0, 15]: no saturation
        const __m256i p32 = _mm256_madd_epi16(p16, ones);
        acc = slim_madd_ps(_mm256_set1_ps(d*GGML_CPU_FP16_TO_FP32(y[c].d)), _mm256_cvtepi32_ps(p32), acc);
        *summ += m*GGML_CPU_FP16_TO_FP32(y[c].s);
    }
    return acc;
}

static inline float slim_hsum_avx2(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline __attribute__((always_inline)) void slim_vec_dot_q8_1_avx2(
        int n, float * GGML_RESTRICT s, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy,
        const int b, const int g) {
    assert(n % g == 0);
    const int G  = n / g;
    const int pb = g / 8;
    const int nq = g / QK8_1;
    const block_slim_header * GGML_RESTRICT h = (const block_slim_header *) vx;
    const uint8_t * GGML_RESTRICT codes = (const uint8_t *) vx + sizeof(block_slim_header) * G;
    const uint8_t * end = (const uint8_t *) vx + (sizeof(block_slim_header) + (size_t) g*b/8) * G;
    const block_q8_1 * GGML_RESTRICT y = (const block_q8_1 *) vy;

    __m256 acc  = _mm256_setzero_ps();
    float  summ = 0.0f;
    for (int j = 0; j < G; ++j) {
        const uint16_t dh   = h[j].d;
        const int      bits = ggml_slim_bits(dh);
        if (codes + (size_t) bits*pb > end) {
            *s = NAN;
            return;
        }
        const float d = GGML_CPU_FP16_TO_FP32(dh & GGML_SLIM_SCALE_MASK);
        const float m = GGML_CPU_FP16_TO_FP32(h[j].m);
        const block_q8_1 * GGML_RESTRICT yg = y + j*nq;
        switch (bits) {
            case 1:  acc = slim_group_avx2(codes, yg, d, m, acc, &summ, 1, g); break;
            case 2:  acc = slim_group_avx2(codes, yg, d, m, acc, &summ, 2, g); break;
            case 3:  acc = slim_group_avx2(codes, yg, d, m, acc, &summ, 3, g); break;
            default: acc = slim_group_avx2(codes, yg, d, m, acc, &summ, 4, g); break;
        }
        codes += (size_t) bits*pb;
    }
    *s = slim_hsum_avx2(acc) + summ;
}

// the codes of chunk c (32 weights) of a group with `bits` planes, as bytes
static inline __attribute__((always_inline)) __m256i slim_unpack32_avx2(
        const uint8_t * GGML_RESTRICT codes, const int pb, const int c, const int bits) {
    __m256i q = slim_plane32_avx2(codes + 4*c, 0);
    if (bits > 1) q = _mm256_or_si256(q, slim_plane32_avx2(codes + 1*pb + 4*c, 1));
    if (bits > 2) q = _mm256_or_si256(q, slim_plane32_avx2(codes + 2*pb + 4*c, 2));
    if (bits > 3) q = _mm256_or_si256(q, slim_plane32_avx2(codes + 3*pb + 4*c, 3));
    return q;
}

static inline __m256 slim_dot32_avx2(__m256i q, __m256i a, float scale, __m256 acc) {
    const __m256i p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), _mm256_set1_epi16(1));
    return slim_madd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(p32), acc);
}

// 2 rows x 2 columns (prompt processing): every unpacked weight chunk serves two activation columns
static inline __attribute__((always_inline)) void slim_vec_dot_q8_1_avx2_2x2(
        int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx,
        const void * GGML_RESTRICT vy, size_t by, const int b, const int g) {
    assert(n % g == 0);
    const int G  = n / g;
    const int pb = g / 8;
    const int nq = g / QK8_1;
    const size_t row_size = (sizeof(block_slim_header) + (size_t) g*b/8) * G;
    const uint8_t * x0 = (const uint8_t *) vx;
    const uint8_t * x1 = (const uint8_t *) vx + bx;
    const block_slim_header * h0 = (const block_slim_header *) x0;
    const block_slim_header * h1 = (const block_slim_header *) x1;
    const uint8_t * c0 = x0 + sizeof(block_slim_header) * G;
    const uint8_t * c1 = x1 + sizeof(block_slim_header) * G;
    const block_q8_1 * y0 = (const block_q8_1 *) vy;
    const block_q8_1 * y1 = (const block_q8_1 *) ((const uint8_t *) vy + by);

    __m256 a00 = _mm256_setzero_ps(), a10 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
    float  m00 = 0.0f, m10 = 0.0f, m01 = 0.0f, m11 = 0.0f;
    for (int j = 0; j < G; ++j) {
        const int bits0 = ggml_slim_bits(h0[j].d);
        const int bits1 = ggml_slim_bits(h1[j].d);
        if (c0 + (size_t) bits0*pb > x0 + row_size || c1 + (size_t) bits1*pb > x1 + row_size) {
            s[0] = s[1] = s[bs] = s[bs + 1] = NAN;
            return;
        }
        const float d0 = GGML_CPU_FP16_TO_FP32(h0[j].d & GGML_SLIM_SCALE_MASK), mm0 = GGML_CPU_FP16_TO_FP32(h0[j].m);
        const float d1 = GGML_CPU_FP16_TO_FP32(h1[j].d & GGML_SLIM_SCALE_MASK), mm1 = GGML_CPU_FP16_TO_FP32(h1[j].m);
        for (int c = 0; c < nq; ++c) {
            const __m256i q0 = slim_unpack32_avx2(c0, pb, c, bits0);
            const __m256i q1 = slim_unpack32_avx2(c1, pb, c, bits1);
            const block_q8_1 * yb0 = &y0[j*nq + c];
            const block_q8_1 * yb1 = &y1[j*nq + c];
            const __m256i av0 = _mm256_loadu_si256((const __m256i *) yb0->qs);
            const __m256i av1 = _mm256_loadu_si256((const __m256i *) yb1->qs);
            const float dy0 = GGML_CPU_FP16_TO_FP32(yb0->d), sy0 = GGML_CPU_FP16_TO_FP32(yb0->s);
            const float dy1 = GGML_CPU_FP16_TO_FP32(yb1->d), sy1 = GGML_CPU_FP16_TO_FP32(yb1->s);
            a00 = slim_dot32_avx2(q0, av0, d0*dy0, a00);
            a10 = slim_dot32_avx2(q1, av0, d1*dy0, a10);
            a01 = slim_dot32_avx2(q0, av1, d0*dy1, a01);
            a11 = slim_dot32_avx2(q1, av1, d1*dy1, a11);
            m00 += mm0*sy0; m10 += mm1*sy0; m01 += mm0*sy1; m11 += mm1*sy1;
        }
        c0 += (size_t) bits0*pb;
        c1 += (size_t) bits1*pb;
    }
    s[0]      = slim_hsum_avx2(a00) + m00;
    s[1]      = slim_hsum_avx2(a10) + m10;
    s[bs]     = slim_hsum_avx2(a01) + m01;
    s[bs + 1] = slim_hsum_avx2(a11) + m11;
}
#endif // __AVX2__

// nrc == 2 (ggml-cpu mul_mat with type_traits_cpu.nrows = 2): rows vx, vx + bx times columns vy, vy + by,
// s[r + c*bs] = dot(row r, column c)
#define SLIM_DEFINE_VEC_DOT(B, G)                                                                            \
void ggml_vec_dot_slim##B##_g##G##_q8_1_generic(int n, float * GGML_RESTRICT s, size_t bs,                 \
        const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {      \
    assert(nrc == 1 || nrc == 2);                                                                           \
    for (int c = 0; c < nrc; ++c) {                                                                         \
        for (int r = 0; r < nrc; ++r) {                                                                     \
            slim_vec_dot_q8_1_generic(n, s + r + c*bs, (const char *) vx + r*bx,                            \
                                      (const char *) vy + c*by, B, G);                                      \
        }                                                                                                   \
    }                                                                                                       \
}                                                                                                           \
void ggml_vec_dot_slim##B##_g##G##_q8_1(int n, float * GGML_RESTRICT s, size_t bs,                         \
        const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {      \
    SLIM_VEC_DOT_FAST(B, G);                                                                                \
}

#if defined(__AVX2__)
#define SLIM_VEC_DOT_FAST(B, G)                                                                              \
    assert(nrc == 1 || nrc == 2);                                                                           \
    if (nrc == 2) {                                                                                         \
        slim_vec_dot_q8_1_avx2_2x2(n, s, bs, vx, bx, vy, by, B, G);                                         \
    } else {                                                                                                \
        slim_vec_dot_q8_1_avx2(n, s, vx, vy, B, G);                                                         \
    }
#else
#define SLIM_VEC_DOT_FAST(B, G) ggml_vec_dot_slim##B##_g##G##_q8_1_generic(n, s, bs, vx, bx, vy, by, nrc)
#endif

SLIM_DEFINE_VEC_DOT(2, 64)
SLIM_DEFINE_VEC_DOT(2, 128)
SLIM_DEFINE_VEC_DOT(3, 64)
SLIM_DEFINE_VEC_DOT(3, 128)

// ---------------------------------------------------------------------------------------------------------
// Tiles of 8 rows: the layout of ggml-cpu's SLIM extra buffer (slim-repack.cpp), for prompt processing and decode
//
// Every row of a SLIM tensor carries the same tags, so 8 rows interleave group by group and each group of a tile
// has one width. Tile t holds rows 8t..8t+7 in 8*row_size bytes, group after group:
//
//   dh[8], mh[8]                         the 8 rows' headers of group j, bytes as in the file (tags included)
//   for each 32-weight chunk c, each plane p < bits_j: uint32 w[8]         lane r = row r's plane word
//
// A plane word (bit i = weight 32c+i in the file) is stored bit-permuted: bit 8k+s holds weight 4s+k. Then
// (w >> s) & 0x01010101 puts weights 4s..4s+3 of all 8 rows in 8 32-bit lanes, one shift and one AND per plane
// where the row-major vec_dot needs a broadcast, a shuffle, a compare and two logic ops per 32 weights of ONE
// row; the activations stay plain Q8_1 (4 consecutive bytes broadcast to the 8 lanes). The tile is only a
// permutation of the file's bytes (ggml_slim_unrepack_8 gives them back): the same d, m and q, the same size.

// bit 8k+s of the result = bit 4s+k of w (k < 4, s < 8)
static inline uint32_t slim_perm_plane_word(uint32_t w) {
    uint32_t out = 0;
    for (int k = 0; k < 4; ++k) {
        uint32_t x = (w >> k) & 0x11111111u;        // bits 4s+k at 4s
        x = (x | (x >> 3))  & 0x03030303u;
        x = (x | (x >> 6))  & 0x000F000Fu;
        x = (x | (x >> 12)) & 0x000000FFu;         // bit s = bit 4s+k of w
        out |= x << (8*k);
    }
    return out;
}

static inline uint32_t slim_unperm_plane_word(uint32_t w) {
    uint32_t out = 0;
    for (int k = 0; k < 4; ++k) {
        uint32_t x = (w >> (8*k)) & 0xFFu;
        x = (x | (x << 12)) & 0x000F000Fu;
        x = (x | (x << 6))  & 0x03030303u;
        x = (x | (x << 3))  & 0x11111111u;         // bit s at 4s
        out |= x << k;
    }
    return out;
}

// one group of 8 rows: file rows (src + r*row_size, header j, codes at coff) <-> tile bytes at t
static void slim_tile_group(uint8_t * GGML_RESTRICT t, uint8_t * GGML_RESTRICT rows, size_t row_size, int j,
                            size_t coff, int bits, int g, bool to_tile) {
    const int nq = g / 32;
    const int pb = g / 8;
    for (int r = 0; r < 8; ++r) {
        uint8_t * hdr = rows + r*row_size + 4*(size_t) j;
        if (to_tile) {
            memcpy(t + 2*r, hdr, 2);
            memcpy(t + 16 + 2*r, hdr + 2, 2);
        } else {
            memcpy(hdr, t + 2*r, 2);
            memcpy(hdr + 2, t + 16 + 2*r, 2);
        }
    }
    t += 32;
    for (int c = 0; c < nq; ++c) {
        for (int p = 0; p < bits; ++p) {
            for (int r = 0; r < 8; ++r) {
                uint8_t * src = rows + r*row_size + coff + (size_t) p*pb + 4*c;
                uint32_t w;
                if (to_tile) {
                    memcpy(&w, src, 4);
                    w = slim_perm_plane_word(w);
                    memcpy(t + 4*r, &w, 4);
                } else {
                    memcpy(&w, t + 4*r, 4);
                    w = slim_unperm_plane_word(w);
                    memcpy(src, &w, 4);
                }
            }
            t += 32;
        }
    }
}

int ggml_slim_repack_8(enum ggml_type type, int64_t ne0, int64_t nrows, const void * GGML_RESTRICT src,
                       void * GGML_RESTRICT dst) {
    const int    b        = ggml_slim_avg_bits(type);
    const int    g        = ggml_slim_group_size(type);
    const size_t row_size = ggml_row_size(type, ne0);
    if (b == 0 || ne0 <= 0 || ne0 % g != 0 || nrows % 8 != 0) {
        return -1;
    }
    char err[128];
    if (!ggml_slim_check_rows(type, src, row_size*nrows, ne0, err, sizeof(err))) {
        return -1; // kernels walk a tile by row 0's tags: only rows with one legal tag set are tiled
    }
    const int G = (int) (ne0 / g);
    for (int64_t t = 0; t < nrows/8; ++t) {
        uint8_t * rows = (uint8_t *) (uintptr_t) src + t*8*row_size; // read only (to_tile)
        uint8_t * out  = (uint8_t *) dst + t*8*row_size;
        size_t coff = 4*(size_t) G;
        for (int j = 0; j < G; ++j) {
            uint16_t dh;
            memcpy(&dh, rows + 4*(size_t) j, 2);
            const int bits = ggml_slim_bits(dh);
            slim_tile_group(out, rows, row_size, j, coff, bits, g, true);
            out  += 8*(4 + (size_t) bits*g/8);
            coff += (size_t) bits*g/8;
        }
    }
    return 0;
}

void ggml_slim_unrepack_8(enum ggml_type type, int64_t ne0, int64_t nrows, const void * GGML_RESTRICT src,
                          void * GGML_RESTRICT dst) {
    const int    g        = ggml_slim_group_size(type);
    const size_t row_size = ggml_row_size(type, ne0);
    const int    G        = (int) (ne0 / g);
    for (int64_t t = 0; t < nrows/8; ++t) {
        uint8_t * in   = (uint8_t *) (uintptr_t) src + t*8*row_size;
        uint8_t * rows = (uint8_t *) dst + t*8*row_size;
        size_t coff = 4*(size_t) G;
        for (int j = 0; j < G; ++j) {
            uint16_t dh;
            memcpy(&dh, in, 2);
            const int bits = ggml_slim_bits(dh);
            slim_tile_group(in, rows, row_size, j, coff, bits, g, false);
            in   += 8*(4 + (size_t) bits*g/8);
            coff += (size_t) bits*g/8;
        }
    }
}

// gemm over tiles, scalar reference. vx: nc/8 tiles (nc rows of src0), vy: nr Q8_1 rows of n activations,
// s[col*bs + row]. Per (row, column) the same sums in the same order as slim_vec_dot_q8_1_generic, so both give
// the same floats.
static void slim_gemm_8_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx,
                                const void * GGML_RESTRICT vy, int nr, int nc, const int b, const int g) {
    assert(n % g == 0 && nc % 8 == 0);
    const int    G        = n / g;
    const int    nq       = g / QK8_1;
    const size_t row_size = (sizeof(block_slim_header) + (size_t) g*b/8) * G;
    const block_q8_1 * GGML_RESTRICT y = (const block_q8_1 *) vy;
    for (int t = 0; t < nc/8; ++t) {
        for (int col = 0; col < nr; ++col) {
            const block_q8_1 * GGML_RESTRICT yc = y + (size_t) col*(n/QK8_1);
            float sumf[8] = {0};
            const uint8_t * p = (const uint8_t *) vx + (size_t) t*8*row_size;
            for (int j = 0; j < G; ++j) {
                const ggml_half * dh = (const ggml_half *) p;
                const ggml_half * mh = dh + 8;
                const int bits = ggml_slim_bits(dh[0]);
                const uint8_t * codes = p + 32;
                for (int r = 0; r < 8; ++r) {
                    const float d = GGML_CPU_FP16_TO_FP32(dh[r] & GGML_SLIM_SCALE_MASK);
                    const float m = GGML_CPU_FP16_TO_FP32(mh[r]);
                    for (int c = 0; c < nq; ++c) {
                        const block_q8_1 * yb = &yc[j*nq + c];
                        int sumi = 0;
                        for (int i = 0; i < QK8_1; ++i) {
                            const int pos = 8*(i & 3) + (i >> 2); // weight 4s+k sits at bit 8k+s
                            int q = 0;
                            for (int pl = 0; pl < bits; ++pl) {
                                uint32_t w;
                                memcpy(&w, codes + (size_t) (c*bits + pl)*32 + 4*r, 4);
                                q |= ((w >> pos) & 1) << pl;
                            }
                            sumi += q * yb->qs[i];
                        }
                        sumf[r] += d*GGML_CPU_FP16_TO_FP32(yb->d)*(float) sumi + m*GGML_CPU_FP16_TO_FP32(yb->s);
                    }
                }
                p += 8*(4 + (size_t) bits*g/8);
            }
            for (int r = 0; r < 8; ++r) {
                s[(size_t) col*bs + 8*t + r] = sumf[r];
            }
        }
    }
}

#if defined(__AVX2__) && defined(__F16C__)

#if defined(__AVX512VL__)
#define SLIM_NC 8   // activation columns per tile call for SLIM2 (slim_gemm_8_avx2); per-call arrays hold 8
#else
#define SLIM_NC 4
#endif

// u8 x s8 products summed by 4 into int32 lanes (VNNI where the build has it)
static inline __m256i slim_dpbusd(__m256i acc, __m256i u, __m256i v) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, v);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, v);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, v), _mm256_set1_epi16(1)));
#endif
}

// plane p of step s: weights 4s..4s+3 of the 8 rows, value bit p of each byte (s, p constants after inlining)
static inline __attribute__((always_inline)) __m256i slim_tile_plane(__m256i w, const int s, const int p) {
    const __m256i mask = _mm256_set1_epi32(0x01010101 << p);
    if (s >= p) {
        return _mm256_and_si256(_mm256_srli_epi32(w, s - p), mask);
    }
    return _mm256_and_si256(_mm256_slli_epi32(w, p - s), mask);
}

// one 8-row tile against NC activation columns (bits, g, NC constants after inlining): one group at a time,
// int32 sums per 32-weight chunk, scaled by d*d8 into fp32; the m term from Q8_1's s once per group
static inline __attribute__((always_inline)) const uint8_t * slim_tile_group_avx2(
        const uint8_t * GGML_RESTRICT p, const block_q8_1 * const * yc, const int j, __m256 * acc,
        const int bits, const int g, const int NC) {
    const int nq = g / QK8_1;
    const __m128i m7 = _mm_set1_epi16(GGML_SLIM_SCALE_MASK);
    const __m256 dv = _mm256_cvtph_ps(_mm_and_si128(_mm_loadu_si128((const __m128i *) p), m7));
    const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (p + 16)));
    p += 32;
    float ssum[8];
    for (int k = 0; k < NC; ++k) {
        ssum[k] = 0.0f;
    }
    for (int c = 0; c < nq; ++c) {
        __m256i w[4];
        for (int pl = 0; pl < bits; ++pl) {
            w[pl] = _mm256_loadu_si256((const __m256i *) (p + 32*pl));
        }
        p += 32*bits;
        __m256i iacc[8];
        const int8_t * qs[8];
        for (int k = 0; k < NC; ++k) {
            iacc[k] = _mm256_setzero_si256();
            qs[k]   = yc[k][j*nq + c].qs;
        }
        for (int st = 0; st < 8; ++st) {
            __m256i q = slim_tile_plane(w[0], st, 0);
            if (bits > 1) q = _mm256_or_si256(q, slim_tile_plane(w[1], st, 1));
            if (bits > 2) q = _mm256_or_si256(q, slim_tile_plane(w[2], st, 2));
            if (bits > 3) q = _mm256_or_si256(q, slim_tile_plane(w[3], st, 3));
            for (int k = 0; k < NC; ++k) {
                int32_t a;
                memcpy(&a, qs[k] + 4*st, 4);
                iacc[k] = slim_dpbusd(iacc[k], q, _mm256_set1_epi32(a));
            }
        }
        for (int k = 0; k < NC; ++k) {
            const block_q8_1 * yb = &yc[k][j*nq + c];
            const __m256 scale = _mm256_mul_ps(dv, _mm256_set1_ps(GGML_CPU_FP16_TO_FP32(yb->d)));
            acc[k] = slim_madd_ps(_mm256_cvtepi32_ps(iacc[k]), scale, acc[k]);
            ssum[k] += GGML_CPU_FP16_TO_FP32(yb->s);
        }
    }
    for (int k = 0; k < NC; ++k) {
        acc[k] = slim_madd_ps(mv, _mm256_set1_ps(ssum[k]), acc[k]);
    }
    return p;
}

static inline __attribute__((always_inline)) void slim_tile_avx2(
        int n, float * GGML_RESTRICT s, size_t bs, const uint8_t * GGML_RESTRICT tile,
        const block_q8_1 * GGML_RESTRICT y, const int b, const int g, const int NC) {
    const int G = n / g;
    const block_q8_1 * yc[8];
    __m256 acc[8];
    for (int k = 0; k < NC; ++k) {
        yc[k]  = y + (size_t) k*(n/QK8_1);
        acc[k] = _mm256_setzero_ps();
    }
    const uint8_t * p = tile;
    for (int j = 0; j < G; ++j) {
        switch (ggml_slim_bits(*(const uint16_t *) p)) {
            case 1:  p = slim_tile_group_avx2(p, yc, j, acc, 1, g, NC); break;
            case 2:  p = slim_tile_group_avx2(p, yc, j, acc, 2, g, NC); break;
            case 3:  p = slim_tile_group_avx2(p, yc, j, acc, 3, g, NC); break;
            default: p = slim_tile_group_avx2(p, yc, j, acc, 4, g, NC); break;
        }
    }
    GGML_UNUSED(b);
    for (int k = 0; k < NC; ++k) {
        _mm256_storeu_ps(s + (size_t) k*bs, acc[k]);
    }
}

// NC activation columns at a time (every expanded chunk of 8 rows serves them all), then the rest. NC = 8 for
// SLIM2 where AVX512VL gives 32 vector registers (8 int32 + 8 fp32 accumulators fit): 10 % faster than 4 on
// this project's EPYC; SLIM3's wider groups (up to 4 planes held at once) run 7 % slower with 8, so 4.
static inline __attribute__((always_inline)) void slim_gemm_8_avx2_nc(
        int n, float * GGML_RESTRICT s, size_t bs, const uint8_t * GGML_RESTRICT tile, const uint8_t * GGML_RESTRICT vy,
        size_t col_size, int nr, const int b, const int g, const int NC) {
    int col = 0;
    for (; col + NC <= nr; col += NC) {
        slim_tile_avx2(n, s + (size_t) col*bs, bs, tile, (const block_q8_1 *) (vy + col*col_size), b, g, NC);
    }
    const block_q8_1 * yr = (const block_q8_1 *) (vy + col*col_size);
    float * sr = s + (size_t) col*bs;
    switch (nr - col) {
        case 7: if (NC > 7) slim_tile_avx2(n, sr, bs, tile, yr, b, g, 7); break;
        case 6: if (NC > 6) slim_tile_avx2(n, sr, bs, tile, yr, b, g, 6); break;
        case 5: if (NC > 5) slim_tile_avx2(n, sr, bs, tile, yr, b, g, 5); break;
        case 4: if (NC > 4) slim_tile_avx2(n, sr, bs, tile, yr, b, g, 4); break;
        case 3: slim_tile_avx2(n, sr, bs, tile, yr, b, g, 3); break;
        case 2: slim_tile_avx2(n, sr, bs, tile, yr, b, g, 2); break;
        case 1: slim_tile_avx2(n, sr, bs, tile, yr, b, g, 1); break;
        default: break;
    }
}

static inline __attribute__((always_inline)) void slim_gemm_8_avx2(
        int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy,
        int nr, int nc, const int b, const int g) {
    assert(n % g == 0 && nc % 8 == 0);
    const size_t row_size = (sizeof(block_slim_header) + (size_t) g*b/8) * (n / g);
    const size_t col_size = sizeof(block_q8_1) * (n / QK8_1);
    for (int t = 0; t < nc/8; ++t) {
        const uint8_t * tile = (const uint8_t *) vx + (size_t) t*8*row_size;
        if (SLIM_NC > 4 && b == 2) {
            slim_gemm_8_avx2_nc(n, s + 8*t, bs, tile, (const uint8_t *) vy, col_size, nr, b, g, SLIM_NC);
        } else {
            slim_gemm_8_avx2_nc(n, s + 8*t, bs, tile, (const uint8_t *) vy, col_size, nr, b, g, 4);
        }
    }
}
#endif // __AVX2__ && __F16C__

#define SLIM_DEFINE_GEMM(B, G)                                                                                \
void ggml_gemm_slim##B##_g##G##_8_q8_1_generic(int n, float * GGML_RESTRICT s, size_t bs,                    \
        const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc) {                      \
    slim_gemm_8_generic(n, s, bs, vx, vy, nr, nc, B, G);                                                     \
}                                                                                                            \
void ggml_gemm_slim##B##_g##G##_8_q8_1(int n, float * GGML_RESTRICT s, size_t bs,                            \
        const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc) {                      \
    SLIM_GEMM_FAST(B, G);                                                                                    \
}

#if defined(__AVX2__) && defined(__F16C__)
#define SLIM_GEMM_FAST(B, G) slim_gemm_8_avx2(n, s, bs, vx, vy, nr, nc, B, G)
#else
#define SLIM_GEMM_FAST(B, G) slim_gemm_8_generic(n, s, bs, vx, vy, nr, nc, B, G)
#endif

SLIM_DEFINE_GEMM(2, 64)
SLIM_DEFINE_GEMM(2, 128)
SLIM_DEFINE_GEMM(3, 64)
SLIM_DEFINE_GEMM(3, 128)

ggml_slim_gemm_t ggml_slim_gemm_8(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_SLIM2_G64:  return ggml_gemm_slim2_g64_8_q8_1;
        case GGML_TYPE_SLIM2_G128: return ggml_gemm_slim2_g128_8_q8_1;
        case GGML_TYPE_SLIM3_G64:  return ggml_gemm_slim3_g64_8_q8_1;
        case GGML_TYPE_SLIM3_G128: return ggml_gemm_slim3_g128_8_q8_1;
        default:                   return NULL;
    }
}

// ---------------------------------------------------------------------------------------------------------
// CPY/DUP SLIM -> F32: whole source rows (ggml_compute_forward_dup_from_q works block by block)

void ggml_compute_forward_dup_from_slim(const struct ggml_compute_params * params, struct ggml_tensor * dst) {
    const struct ggml_tensor * src0 = dst->src[0];
    const enum ggml_type type = src0->type;
    ggml_to_float_t const to_float = ggml_get_type_traits(type)->to_float;

    const int64_t ne00 = src0->ne[0], ne01 = src0->ne[1], ne02 = src0->ne[2];
    const size_t  nb01 = src0->nb[1], nb02 = src0->nb[2], nb03 = src0->nb[3];
    const int64_t ne0 = dst->ne[0], ne1 = dst->ne[1], ne2 = dst->ne[2];
    const size_t  nb0 = dst->nb[0], nb1 = dst->nb[1], nb2 = dst->nb[2], nb3 = dst->nb[3];

    GGML_ASSERT(dst->type == GGML_TYPE_F32 && nb0 == sizeof(float));
    GGML_ASSERT(src0->nb[0] == ggml_type_size(type));
    // a source row lands on ne00 consecutive destination floats
    GGML_ASSERT(ne0 % ne00 == 0 || ggml_is_contiguous(dst));

    const int64_t nr  = ggml_nrows(src0);
    const int     ith = params->ith, nth = params->nth;
    const int64_t dr  = (nr + nth - 1)/nth;
    const int64_t ir0 = dr*ith;
    const int64_t ir1 = MIN(ir0 + dr, nr);

    for (int64_t ir = ir0; ir < ir1; ++ir) {
        const int64_t i03 = ir/(ne01*ne02);
        const int64_t i02 = (ir - i03*ne01*ne02)/ne01;
        const int64_t i01 = ir - i03*ne01*ne02 - i02*ne01;

        const int64_t i  = ir*ne00; // flat element index of the row's first weight
        const int64_t i3 = i/(ne0*ne1*ne2);
        const int64_t i2 = (i - i3*ne0*ne1*ne2)/(ne0*ne1);
        const int64_t i1 = (i - i3*ne0*ne1*ne2 - i2*ne0*ne1)/ne0;
        const int64_t i0 = i - i3*ne0*ne1*ne2 - i2*ne0*ne1 - i1*ne0;

        to_float((const char *) src0->data + i01*nb01 + i02*nb02 + i03*nb03,
                 (float *) ((char *) dst->data + i0*nb0 + i1*nb1 + i2*nb2 + i3*nb3), ne00);
    }
}
