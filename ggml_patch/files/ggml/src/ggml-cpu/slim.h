#pragma once

// slim2gguf: CPU functions of the SliM-LLM mixed-precision group types (GGML_TYPE_SLIM*), see ggml-slim.h.
// Every function takes EXACTLY ONE ROW (n == ne0): a row's group bit-widths sit in its own headers.

#define GGML_COMMON_DECL_C
#include "ggml-common.h"

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

// from_float (type_traits_cpu): the reference quantizer of ggml-slim.c
void quantize_row_slim2_g64 (const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_slim2_g128(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_slim3_g64 (const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);
void quantize_row_slim3_g128(const float * GGML_RESTRICT x, void * GGML_RESTRICT y, int64_t k);

// vec_dot against Q8_1 activations (a group of 64/128 is 2/4 Q8_1 blocks; Q8_1's s = d*sum(q) gives the m term)
// dispatching to the AVX2 path where compiled with AVX2, else the _generic scalar reference
GGML_API void ggml_vec_dot_slim2_g64_q8_1 (int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_slim2_g128_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_slim3_g64_q8_1 (int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_slim3_g128_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

GGML_API void ggml_vec_dot_slim2_g64_q8_1_generic (int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_slim2_g128_q8_1_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_slim3_g64_q8_1_generic (int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);
GGML_API void ggml_vec_dot_slim3_g128_q8_1_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc);

// Tiles of 8 rows (the SLIM extra buffer's layout, slim.c explains it): a bijection of the file's bytes.
// repack: nrows % 8 == 0 and rows that ggml_slim_check_rows accepts, else -1 and dst untouched.
GGML_API int  ggml_slim_repack_8  (enum ggml_type type, int64_t ne0, int64_t nrows, const void * GGML_RESTRICT src, void * GGML_RESTRICT dst);
GGML_API void ggml_slim_unrepack_8(enum ggml_type type, int64_t ne0, int64_t nrows, const void * GGML_RESTRICT src, void * GGML_RESTRICT dst);

// gemm over tiles: nc rows of src0 (nc % 8 == 0, tiles at vx) times nr Q8_1 activation columns of n (at vy,
// consecutive), s[col*bs + row]. Decode is nr == 1. AVX2 path where compiled, else the _generic reference.
typedef void (*ggml_slim_gemm_t)(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc);
GGML_API ggml_slim_gemm_t ggml_slim_gemm_8(enum ggml_type type);

GGML_API void ggml_gemm_slim2_g64_8_q8_1 (int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc);
GGML_API void ggml_gemm_slim2_g128_8_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc);
GGML_API void ggml_gemm_slim3_g64_8_q8_1 (int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc);
GGML_API void ggml_gemm_slim3_g128_8_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc);

GGML_API void ggml_gemm_slim2_g64_8_q8_1_generic (int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc);
GGML_API void ggml_gemm_slim2_g128_8_q8_1_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc);
GGML_API void ggml_gemm_slim3_g64_8_q8_1_generic (int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc);
GGML_API void ggml_gemm_slim3_g128_8_q8_1_generic(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, const void * GGML_RESTRICT vy, int nr, int nc);

// GGML_OP_CPY/DUP SLIM -> F32, row by row (ops.cpp's block-wise dup_from_q cannot decode SLIM)
void ggml_compute_forward_dup_from_slim(const struct ggml_compute_params * params, struct ggml_tensor * dst);

#ifdef __cplusplus
}
#endif
