#pragma once

// slim2gguf: reference functions of the SliM-LLM mixed-precision group types (GGML_TYPE_SLIM*).
// Row layout (docs/format.md in slim2gguf, block_slim_header in ggml-common.h):
//   [G headers: fp16 d (with tag), fp16 m][codes of group 0]...[codes of group G-1],   G = ne0/g,
// group j's codes are bits_j bit-planes of g/8 bytes, bits_j = tag + 1, w = fp32(d)*q + fp32(m).
// Decoding needs ne0, so every type function here takes EXACTLY ONE ROW: k == ne0.

#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GGML_SLIM_SCALE_MASK 0x7FFF

// bit-width of a group from its header's d word
static inline int ggml_slim_bits(uint16_t dh) {
    return (int) ((((dh >> 15) & 1) << 1) | (dh & 1)) + 1;
}

// average bits b and group size g of a SLIM type (0 for other types)
GGML_API int ggml_slim_avg_bits(enum ggml_type type);
GGML_API int ggml_slim_group_size(enum ggml_type type);

// from_float_ref: min/max round-to-nearest with a FIXED, row-independent bit allocation (groups j%4==0 get
// b+1 bits, j%4==1 get b-1, the rest b; an unpaired last b+1 group gets b). This exists so that ggml itself
// (ggml_quantize_chunk, test-backend-ops, llama-quantize's plumbing) can produce valid SLIM rows; real
// SliM-LLM files (salience-driven bit allocation, SQC, GPTQ) are written by `slim2gguf convert`.
GGML_API void quantize_row_slim2_g64_ref (const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_slim2_g128_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_slim3_g64_ref (const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
GGML_API void quantize_row_slim3_g128_ref(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

// to_float of one row. A row whose tags point past its end (corrupt data) decodes to NaN from there on.
GGML_API void dequantize_row_slim2_g64 (const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_slim2_g128(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_slim3_g64 (const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);
GGML_API void dequantize_row_slim3_g128(const void * GGML_RESTRICT x, float * GGML_RESTRICT y, int64_t k);

// ggml_quantize_chunk's entry: nrows rows of n_per_row, row by row (imatrix unused)
GGML_API size_t quantize_slim(enum ggml_type type, const float * GGML_RESTRICT src, void * GGML_RESTRICT dst,
                              int64_t nrows, int64_t n_per_row, const float * imatrix);

// ggml_validate_row_data's case: nbytes only, no ne0; accepts the span if some row length (a G dividing
// nbytes/type_size) makes every header of every row valid. The exact checks with ne0 are in ggml.h.
GGML_API bool ggml_slim_validate_span(enum ggml_type type, const void * data, size_t nbytes);

#ifdef __cplusplus
}
#endif
