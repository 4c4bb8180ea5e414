// slim2gguf: SliM-LLM mixed-precision group types, reference (scalar) functions in ggml-base.
// Byte layout: docs/format.md in slim2gguf; summary in ggml-slim.h and ggml-common.h (block_slim_header).

#define GGML_COMMON_IMPL_C
#include "ggml-common.h"

#include "ggml-slim.h"
#include "ggml-impl.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
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
// validation: reads only the header plane of each row (4 bytes per group), never the codes
//
// A header is one little-endian 32-bit word w = dh | mh << 16. The tag bits are w & 0x8001 (bit 15 and bit 0
// of dh); the scale's exponent is w & 0x7C00, the offset's w & 0x7C000000 (all ones: inf or nan).

#define SLIM_TAG_BITS  0x00008001u
#define SLIM_D_EXP     0x00007C00u
#define SLIM_M_EXP     0x7C000000u

static inline uint32_t slim_load_word(const uint8_t * p) {
    uint32_t w;
    memcpy(&w, p, sizeof(w));
    return w; // ggml is little-endian only
}

static void slim_set_err(char * err, size_t err_size, const char * fmt, ...) GGML_ATTRIBUTE_FORMAT(3, 4);
static void slim_set_err(char * err, size_t err_size, const char * fmt, ...) {
    if (err == NULL || err_size == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
}

// the fault of header word w (of row r, group j): an illegal width, a width other than row 0's, inf/nan
static void slim_header_fault(enum ggml_type type, uint32_t w, uint32_t w0, int64_t r, int64_t j,
                              char * err, size_t err_size) {
    const int b    = ggml_slim_avg_bits(type);
    const int bits = ggml_slim_bits((uint16_t) w);
    if (bits < b - 1 || bits > b + 1) {
        slim_set_err(err, err_size, "row %" PRId64 " group %" PRId64 ": bit-width %d outside %d..%d",
                     r, j, bits, b - 1, b + 1);
    } else if (r > 0 && ((w ^ w0) & SLIM_TAG_BITS) != 0) {
        slim_set_err(err, err_size, "row %" PRId64 " group %" PRId64 ": bit-width %d differs from row 0's %d",
                     r, j, bits, ggml_slim_bits((uint16_t) w0));
    } else {
        slim_set_err(err, err_size, "row %" PRId64 " group %" PRId64 ": %s is inf or nan", r, j,
                     (w & SLIM_D_EXP) == SLIM_D_EXP ? "scale d" : "offset m");
    }
}

// rows [0, nrows): row r's header plane (G words) starts at planes + r*stride. n_ok (if not NULL) gets the
// number of headers that passed before the first fault (all of them when the rows are valid).
static bool slim_check_planes(enum ggml_type type, const uint8_t * planes, size_t stride, int64_t nrows, int64_t G,
                              int64_t * n_ok, char * err, size_t err_size) {
    const int b = ggml_slim_avg_bits(type);
    if (n_ok) {
        *n_ok = 0;
    }
    if (nrows == 0) {
        return true;
    }
    // row 0: every tag legal, widths summing to G*b, d and m finite
    int64_t sum = 0;
    for (int64_t j = 0; j < G; ++j) {
        const uint32_t w    = slim_load_word(planes + 4*j);
        const int      bits = ggml_slim_bits((uint16_t) w);
        if (bits < b - 1 || bits > b + 1 || (w & SLIM_D_EXP) == SLIM_D_EXP || (w & SLIM_M_EXP) == SLIM_M_EXP) {
            slim_header_fault(type, w, w, 0, j, err, err_size);
            if (n_ok) {
                *n_ok = j;
            }
            return false;
        }
        sum += bits;
    }
    if (sum != G*b) {
        slim_set_err(err, err_size, "row 0: bit-widths sum to %" PRId64 ", not %" PRId64 " (%" PRId64 " groups x %d bits)",
                     sum, G*b, G, b);
        if (n_ok) {
            *n_ok = 0;
        }
        return false;
    }
    // every row: the same tags as row 0 (so legal, with the exact sum), d and m finite. One branch-free pass
    // per row; the fault is located only when the row has one.
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t * h = planes + (size_t) r*stride;
        uint32_t bad = 0;
        for (int64_t j = 0; j < G; ++j) {
            const uint32_t w  = slim_load_word(h + 4*j);
            const uint32_t w0 = slim_load_word(planes + 4*j);
            bad |= ((w ^ w0) & SLIM_TAG_BITS) | (uint32_t) ((w & SLIM_D_EXP) == SLIM_D_EXP)
                 | (uint32_t) ((w & SLIM_M_EXP) == SLIM_M_EXP);
        }
        if (bad) {
            for (int64_t j = 0; j < G; ++j) {
                const uint32_t w  = slim_load_word(h + 4*j);
                const uint32_t w0 = slim_load_word(planes + 4*j);
                if (((w ^ w0) & SLIM_TAG_BITS) || (w & SLIM_D_EXP) == SLIM_D_EXP || (w & SLIM_M_EXP) == SLIM_M_EXP) {
                    slim_header_fault(type, w, w0, r, j, err, err_size);
                    if (n_ok) {
                        *n_ok = r*G + j;
                    }
                    return false;
                }
            }
        }
    }
    if (n_ok) {
        *n_ok = nrows*G;
    }
    return true;
}

static bool slim_check_ne0(enum ggml_type type, int64_t ne0, char * err, size_t err_size) {
    const int g = ggml_slim_group_size(type);
    if (g == 0) {
        slim_set_err(err, err_size, "type %d is not a SLIM type", (int) type);
        return false;
    }
    if (ne0 <= 0 || ne0 % g != 0) {
        slim_set_err(err, err_size, "row length ne0 = %" PRId64 " is not a positive multiple of the group size %d",
                     ne0, g);
        return false;
    }
    return true;
}

bool ggml_slim_check_rows(enum ggml_type type, const void * data, size_t nbytes, int64_t ne0,
                          char * err, size_t err_size) {
    if (!slim_check_ne0(type, ne0, err, err_size)) {
        return false;
    }
    const size_t row_size = ggml_row_size(type, ne0);
    if (nbytes == 0 || nbytes % row_size != 0) {
        slim_set_err(err, err_size, "%zu bytes is not a positive whole number of %zu-byte rows", nbytes, row_size);
        return false;
    }
    return slim_check_planes(type, (const uint8_t *) data, row_size, (int64_t) (nbytes / row_size),
                             ne0 / ggml_slim_group_size(type), NULL, err, err_size);
}

bool ggml_slim_check_header_planes(enum ggml_type type, const void * planes, size_t stride, int64_t nrows,
                                   int64_t ne0, char * err, size_t err_size) {
    if (!slim_check_ne0(type, ne0, err, err_size)) {
        return false;
    }
    if (nrows <= 0) {
        slim_set_err(err, err_size, "no rows");
        return false;
    }
    return slim_check_planes(type, (const uint8_t *) planes, stride, nrows, ne0 / ggml_slim_group_size(type),
                             NULL, err, err_size);
}

size_t ggml_slim_header_plane_size(enum ggml_type type, int64_t ne0) {
    const int g = ggml_slim_group_size(type);
    return g > 0 && ne0 > 0 ? (size_t) (ne0 / g) * sizeof(block_slim_header) : 0;
}

void ggml_slim_gather_header_planes(enum ggml_type type, int64_t ne0, const void * chunk, size_t chunk_offs,
                                    size_t chunk_size, void * planes) {
    const size_t row_size = ggml_row_size(type, ne0);
    const size_t hp       = ggml_slim_header_plane_size(type, ne0);
    if (row_size == 0 || hp == 0 || chunk_size == 0) {
        return;
    }
    const size_t end = chunk_offs + chunk_size;
    for (size_t r = chunk_offs / row_size; r*row_size < end; ++r) {
        const size_t lo = r*row_size > chunk_offs ? r*row_size : chunk_offs; // header plane [r*row_size, +hp)
        const size_t hi = r*row_size + hp < end ? r*row_size + hp : end;     // intersected with the chunk
        if (lo < hi) {
            memcpy((uint8_t *) planes + r*hp + (lo - r*row_size), (const uint8_t *) chunk + (lo - chunk_offs), hi - lo);
        }
    }
}

bool ggml_slim_validate_span(enum ggml_type type, const void * data, size_t nbytes) {
    // Only the byte count is known here, not ne0: the span is accepted if SOME row length makes every header
    // of every row valid (ggml_slim_check_rows). The true ne0 always does for valid rows; a wrong one reads
    // codes as headers and fails within a row or two. Candidates: every G dividing nbytes/type_size.
    // With ne0 known (llama's loader), ggml_slim_check_rows is exact and cheaper.
    const size_t ts = ggml_type_size(type);
    const int    g  = ggml_slim_group_size(type);
    if (nbytes % ts != 0) {
        fprintf(stderr, "%s: invalid size %zu for type %s\n", __func__, nbytes, ggml_type_name(type));
        return false;
    }
    if (nbytes == 0) {
        return true;
    }
    const int64_t N = (int64_t) (nbytes / ts); // groups in the span
    int64_t best_ok = -1, best_G = 0;
    char    best_err[256] = "";
    for (int64_t a = 1; a*a <= N; ++a) {
        if (N % a != 0) {
            continue;
        }
        const int64_t cand[2] = { a, N / a };
        for (int c = 0; c < (a*a == N ? 1 : 2); ++c) {
            const int64_t G = cand[c];
            char err[256];
            int64_t n_ok = 0;
            if (slim_check_planes(type, (const uint8_t *) data, (size_t) G*ts, N / G, G, &n_ok, err, sizeof(err))) {
                return true;
            }
            if (n_ok > best_ok) {
                best_ok = n_ok;
                best_G  = G;
                snprintf(best_err, sizeof(best_err), "%s", err);
            }
        }
    }
    fprintf(stderr, "%s: %s: no row length makes these %zu bytes valid rows; with ne0 = %" PRId64 ": %s\n",
            __func__, ggml_type_name(type), nbytes, best_G*g, best_err);
    return false;
}

bool ggml_validate_slim_rows(enum ggml_type type, const void * data, size_t nbytes, int64_t ne0) {
    if (!ggml_is_slim_type(type)) {
        return ggml_validate_row_data(type, data, nbytes);
    }
    char err[256];
    if (!ggml_slim_check_rows(type, data, nbytes, ne0, err, sizeof(err))) {
        fprintf(stderr, "%s: %s: %s\n", __func__, ggml_type_name(type), err);
        return false;
    }
    return true;
}
