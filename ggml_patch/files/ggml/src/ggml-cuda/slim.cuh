#pragma once

// slim2gguf: CUDA kernels of the SliM-LLM mixed-precision group types (GGML_TYPE_SLIM*).
// Row layout (docs/format.md of slim2gguf): [G headers of 4 bytes: fp16 d with the tag, fp16 m][codes of group 0]...;
// group j has bits_j bit-planes of g/8 bytes; w = d*q + m. A row decodes only once ne00 is known, so the
// contiguous converters (given an element count alone) return nullptr for these types and the cuBLAS path
// uses the _nc converters, which carry ne00.
//
//   ggml_cuda_mul_mat_vec_slim   MUL_MAT for src1 batches of 1..SLIM_MMV_MAX_COLS columns (decode)
//   ggml_cuda_mul_mat_vec_slim_glu  ffn_gate + ffn_up + SwiGLU in one mat-vec launch (batch 1)
//   ggml_cuda_slim_try_fuse      RMSNorm + the mat-vec(s) reading it, one activation quantization (decode)
//   ggml_cuda_slim_get_to_nc     dequantize to f32/f16/bf16 (larger batches: dequantize + cuBLAS)
//   ggml_cuda_get_rows_slim      GET_ROWS
// MUL_MAT_ID (MoE) is not implemented: supports_op says no.

#include "common.cuh"
#include "convert.cuh"

#define SLIM_MMV_MAX_COLS 8

static constexpr __host__ __device__ bool ggml_cuda_type_is_slim(const ggml_type type) {
    return type == GGML_TYPE_SLIM2_G64 || type == GGML_TYPE_SLIM2_G128 ||
           type == GGML_TYPE_SLIM3_G64 || type == GGML_TYPE_SLIM3_G128;
}

// supports_op for MUL_MAT and GET_ROWS of a SLIM src0: false for shapes no kernel here can hold (very wide rows),
// which ggml then runs on the CPU backend instead of aborting
bool ggml_cuda_slim_supports_op(const ggml_tensor * op);

// MUL_MAT: true when the mat-vec kernel takes it (else dequantize + cuBLAS)
bool ggml_cuda_slim_use_mmv(const ggml_tensor * src0, const ggml_tensor * src1, const ggml_tensor * dst);

void ggml_cuda_mul_mat_vec_slim(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst);

// gate/up fusion of a SwiGLU FFN at batch 1: gate and up are the two MUL_MAT nodes, glu the SWIGLU node that reads
// them; one activation quantization and one launch instead of two of each plus the GLU kernel
bool ggml_cuda_slim_should_fuse_glu(const ggml_tensor * gate, const ggml_tensor * up, const ggml_tensor * glu);
void ggml_cuda_mul_mat_vec_slim_glu(ggml_backend_cuda_context & ctx, const ggml_tensor * gate, const ggml_tensor * up,
        ggml_tensor * glu);

// RMSNorm -> MUL -> SLIM mat-vec (or the fused gate/up pair) starting at node i of cgraph: runs them (the norm kernel
// writes the mat-vec's int8 activations) and returns the number of nodes done, or 0 (the caller goes on as usual)
int ggml_cuda_slim_try_fuse(ggml_backend_cuda_context & ctx, const ggml_cgraph * cgraph, int i);

// dequantize with strides (s01..s03 in blocks of the type, as ggml_cuda_mul_mat_cublas passes them); nullptr if not SLIM
template <typename dst_t>
to_t_nc_cuda_t<dst_t> ggml_cuda_slim_get_to_nc(ggml_type type);

void ggml_cuda_get_rows_slim(
        const void * src0_d, ggml_type src0_type, const int32_t * src1_d, void * dst_d, ggml_type dst_type,
        int64_t ne00, size_t nb01, size_t nb02, size_t nb03,
        int64_t ne10, int64_t ne11, int64_t ne12, size_t nb10, size_t nb11, size_t nb12,
        size_t nb1, size_t nb2, size_t nb3,
        cudaStream_t stream);
