// slim2gguf: SliM-LLM mixed-precision group types, reference (scalar) functions in ggml-base.
// Byte layout: docs/format.md in slim2gguf; summary in ggml-slim.h and ggml-common.h (block_slim_header).

#define GGML_COMMON_IMPL_C
#include "ggml-common.h"

#include "ggml-slim.h"
#include "ggml-impl.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

int ggml_slim_avg_bits(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_SLIM2_G64:
        case GGML_TYPE_SLIM2_G128: return 2;
        case GGML_TYPE_SLIM3_G64:
        case GGML_TYPE_SLIM3_G128: return 3;
        default:                   return 0;
    }
}

int ggml_slim_group_size(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_SLIM2_G64:
        case GGML_TYPE_SLIM3_G64:  return QK_SLIM_G64;
        case GGML_TYPE_SLIM2_G128:
        case GGML_TYPE_SLIM3_G128: return QK_SLIM_G128;
        default:                   return 0;
    }
}

bool ggml_is_slim_type(enum ggml_type type) {
    return ggml_slim_avg_bits(type) != 0;
}

static inline bool slim_fp16_is_finite(uint16_t h) {
    return (h & 0x7C00) != 0x7C00;
}

// ---------------------------------------------------------------------------------------------------------
// quantize (reference; real files come from `slim2gguf convert`)

// the fixed bit allocation of quantize_row_*_ref: j%4==0 -> b+1, j%4==1 -> b-1, else b; when G%4 == 1 the
// last group (j%4 == 0, no b-1 partner) gets b, so every row averages exactly b bits
static int slim_ref_bits(int64_t j, int64_t G, int b) {
    if (j % 4 == 0) {
        return (j == G - 1) ? b : b + 1;
    }
    if (j % 4 == 1) {
        return b - 1;
    }
    return b;
}

// The scale rule every SLIM writer follows (docs/format.md, "Scale rounding"; slim2gguf's
// quant/quantizer.py: round_scale_fp16 is the same rule): d is clamped to [0, 60000] and rounded to the nearest
// fp16 whose lowest mantissa bit is the tag's low bit; when plain fp16 rounding lands on the other parity, the
// two neighbours h-1 and h+1 both have the right one and the nearer wins (a tie: the smaller). Returns fp16 bits.
static uint16_t slim_round_scale(float d, int tag) {
    d = d < 0.0f ? 0.0f : (d > 60000.0f ? 60000.0f : d); // comparisons, not fminf/fmaxf: a NaN stays NaN
    const uint16_t h = GGML_FP32_TO_FP16(d);
    if ((h & 1) == (tag & 1)) {
        return h;
    }
    const uint16_t lo = h > 0 ? h - 1 : 0;         // h == 0 has parity 0: only "wrong" for tag 1, lo unusable
    const uint16_t hi = h < 0x7BFF ? h + 1 : 0x7BFF; // 0x7BFF: the largest finite fp16
    const bool lo_ok  = (lo & 1) == (tag & 1);
    const bool pick_lo = lo_ok && fabsf(d - GGML_FP16_TO_FP32(lo)) <= fabsf(GGML_FP16_TO_FP32(hi) - d);
    return pick_lo ? lo : hi;
}

// min/max round-to-nearest of one row, the arithmetic of slim2gguf's quant/rtn.py step by step (fp32, d and m
// rounded to fp16 before use, q = round-half-even((x - m) / d), a divide and not a multiply by 1/d), so that for
// the same bit allocation both write the same bytes (tests/test_ggml_slim.py checks it)
static void slim_quantize_row_ref(const float * GGML_RESTRICT x, uint8_t * GGML_RESTRICT y, int64_t k, int b, int g) {
    assert(k % g == 0);
    const int64_t G  = k / g;
    const int     pb = g / 8; // bytes per bit-plane
    block_slim_header * h = (block_slim_header *) y;
    uint8_t * codes = y + sizeof(block_slim_header) * G;

    for (int64_t j = 0; j < G; ++j) {
        const float * xg   = x + j*g;
        const int     bits = slim_ref_bits(j, G, b);
        const int     tag  = bits - 1;
        const int     nl   = (1 << bits) - 1;

        float mn = xg[0], mx = xg[0];
        for (int i = 1; i < g; ++i) {
            mn = fminf(mn, xg[i]);
            mx = fmaxf(mx, xg[i]);
        }
        const uint16_t dh = slim_round_scale((mx - mn) / (float) nl, tag);
        const uint16_t mh = GGML_FP32_TO_FP16(mn);
        const float d = GGML_FP16_TO_FP32(dh);
        const float m = GGML_FP16_TO_FP32(mh);

        h[j].d = (ggml_half) (dh | ((tag >> 1) << 15));
        h[j].m = mh;

        memset(codes, 0, (size_t) bits * pb);
        for (int i = 0; i < g; ++i) {
            float qf = d > 0.0f ? nearbyintf((xg[i] - m) / d) : 0.0f; // a flat group (d == 0) codes all 0
            qf = qf < 0.0f ? 0.0f : (qf > (float) nl ? (float) nl : qf);
            const int q = (int) qf;
            for (int p = 0; p < bits; ++p) {
                codes[p*pb + (i >> 3)] |= (uint8_t) (((q >> p) & 1) << (i & 7));
            }
        }
        codes += (size_t) bits * pb;
    }
}

size_t quantize_slim(enum ggml_type type, const float * GGML_RESTRICT src, void * GGML_RESTRICT dst,
                     int64_t nrows, int64_t n_per_row, const float * imatrix) {
    GGML_UNUSED(imatrix);
    const int b = ggml_slim_avg_bits(type);
    const int g = ggml_slim_group_size(type);
    GGML_ASSERT(b != 0 && n_per_row % g == 0);
    const size_t row_size = ggml_row_size(type, n_per_row);
    for (int64_t r = 0; r < nrows; ++r) {
        slim_quantize_row_ref(src + r*n_per_row, (uint8_t *) dst + r*row_size, n_per_row, b, g);
    }
    return nrows * row_size;
}

// ---------------------------------------------------------------------------------------------------------
// dequantize (to_float): exactly one row

static void slim_dequantize_row(const void * GGML_RESTRICT vx, float * GGML_RESTRICT y, int64_t k, int b, int g) {
    assert(k % g == 0);
    const int64_t G  = k / g;
    const int     pb = g / 8;
    const block_slim_header * h = (const block_slim_header *) vx;
    const uint8_t * codes = (const uint8_t *) vx + sizeof(block_slim_header) * G;
    const uint8_t * end   = (const uint8_t *) vx + (sizeof(block_slim_header) + (size_t) g*b/8) * G;

    for (int64_t j = 0; j < G; ++j) {
        const uint16_t dh   = h[j].d;
        const int      bits = ggml_slim_bits(dh);
        if (codes + (size_t) bits*pb > end) { // corrupt tags: never read past the row
            for (int64_t i = j*g; i < k; ++i) {
                y[i] = NAN;
            }
            return;
        }
        const float d = GGML_FP16_TO_FP32(dh & GGML_SLIM_SCALE_MASK);
        const float m = GGML_FP16_TO_FP32(h[j].m);
        float * yg = y + j*g;
        for (int i = 0; i < g; ++i) {
            int q = 0;
            for (int p = 0; p < bits; ++p) {
                q |= ((codes[p*pb + (i >> 3)] >> (i & 7)) & 1) << p;
            }
            yg[i] = d*(float) q + m; // d*q is exact (11-bit d, q < 16): fused or not, one rounding
        }
        codes += (size_t) bits*pb;
    }
}

#define SLIM_DEFINE_ROW_FUNCS(B, G)                                                                          \
void quantize_row_slim##B##_g##G##_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k) {  \
    slim_quantize_row_ref(x, (uint8_t *) y, k, B, G);                                                       \
}                                                                                                           \
void dequantize_row_slim##B##_g##G(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k) {      \
    slim_dequantize_row(x, y, k, B, G);                                                                     \
}

SLIM_DEFINE_ROW_FUNCS(2, 64)
SLIM_DEFINE_ROW_FUNCS(2, 128)
SLIM_DEFINE_ROW_FUNCS(3, 64)
SLIM_DEFINE_ROW_FUNCS(3, 128)

// ---------------------------------------------------------------------------------------------------------
// validation

static bool slim_check_header(enum ggml_type type, const block_slim_header * h, size_t row, int64_t j) {
    const int b = ggml_slim_avg_bits(type);
    const uint16_t dh = h->d, mh = h->m;
    const int bits = ggml_slim_bits(dh);
    if (bits < b - 1 || bits > b + 1) {
        fprintf(stderr, "%s: %s row %zu group %" PRId64 ": bit-width %d outside %d..%d\n",
                __func__, ggml_type_name(type), row, j, bits, b - 1, b + 1);
        return false;
    }
    if (!slim_fp16_is_finite(dh & GGML_SLIM_SCALE_MASK) || !slim_fp16_is_finite(mh)) {
        fprintf(stderr, "%s: %s row %zu group %" PRId64 ": inf/nan scale or offset\n",
                __func__, ggml_type_name(type), row, j);
        return false;
    }
    return true;
}

bool ggml_slim_validate_span(enum ggml_type type, const void * data, size_t nbytes) {
    // Only the element count is known here, not ne0, so row boundaries (and with them the other headers)
    // cannot be located: check the size and the first header, which starts every span of whole rows.
    // Full checks: ggml_validate_slim_rows (llama's loader calls it with ne0 when --check-tensors is on).
    if (nbytes % ggml_type_size(type) != 0) {
        fprintf(stderr, "%s: invalid size %zu for type %s\n", __func__, nbytes, ggml_type_name(type));
        return false;
    }
    if (nbytes == 0) {
        return true;
    }
    return slim_check_header(type, (const block_slim_header *) data, 0, 0);
}

bool ggml_validate_slim_rows(enum ggml_type type, const void * data, size_t nbytes, int64_t ne0) {
    if (!ggml_is_slim_type(type)) {
        return ggml_validate_row_data(type, data, nbytes);
    }
    const int b = ggml_slim_avg_bits(type);
    const int g = ggml_slim_group_size(type);
    if (ne0 <= 0 || ne0 % g != 0) {
        fprintf(stderr, "%s: %s: ne0 = %" PRId64 " is not a multiple of %d\n", __func__, ggml_type_name(type), ne0, g);
        return false;
    }
    const int64_t G = ne0 / g;
    const size_t row_size = ggml_row_size(type, ne0);
    if (nbytes % row_size != 0) {
        fprintf(stderr, "%s: %s: %zu bytes is not a whole number of %zu-byte rows\n",
                __func__, ggml_type_name(type), nbytes, row_size);
        return false;
    }
    const size_t nrows = nbytes / row_size;
    const block_slim_header * h0 = (const block_slim_header *) data;
    for (size_t r = 0; r < nrows; ++r) {
        const block_slim_header * h = (const block_slim_header *) ((const char *) data + r*row_size);
        int64_t sum = 0;
        for (int64_t j = 0; j < G; ++j) {
            if (!slim_check_header(type, &h[j], r, j)) {
                return false;
            }
            const int bits = ggml_slim_bits(h[j].d);
            if (bits != ggml_slim_bits(h0[j].d)) {
                fprintf(stderr, "%s: %s row %zu group %" PRId64 ": bit-width %d differs from row 0's %d\n",
                        __func__, ggml_type_name(type), r, j, bits, ggml_slim_bits(h0[j].d));
                return false;
            }
            sum += bits;
        }
        if (sum != G*b) {
            fprintf(stderr, "%s: %s row %zu: bit-widths sum to %" PRId64 ", not %" PRId64 "\n",
                    __func__, ggml_type_name(type), r, sum, G*b);
            return false;
        }
    }
    return true;
}
