// slim2gguf: CUDA kernels of the SliM-LLM mixed-precision group types (GGML_TYPE_SLIM*). See slim.cuh.
//
// A row of G groups: [G headers: fp16 dh, fp16 m][codes of group 0][codes of group 1]...
//   bits_j = tag + 1, tag = (dh >> 15) << 1 | (dh & 1);  d = fp16(dh & 0x7FFF);  w = d*q + m (fp32)
//   group j's codes: bits_j bit-planes of g bits (g/8 bytes), lowest plane first; weight i is bit i of each plane.
// Every row of a tensor carries the same tags, so a block turns the tags of one row into a table of group code
// offsets once (slim_build_table, the only place that reads tags) and reuses it for every row it processes.
// GET_ROWS, which picks arbitrary rows, builds the table from each row's own headers.

#include "slim.cuh"
#include "unary.cuh"

#include "ggml-backend-impl.h"

#include <map>
#include <mutex>
#include <tuple>

template <ggml_type type> struct slim_traits;
template <> struct slim_traits<GGML_TYPE_SLIM2_G64>  { static constexpr int g =  64; static constexpr int b = 2; };
template <> struct slim_traits<GGML_TYPE_SLIM2_G128> { static constexpr int g = 128; static constexpr int b = 2; };
template <> struct slim_traits<GGML_TYPE_SLIM3_G64>  { static constexpr int g =  64; static constexpr int b = 3; };
template <> struct slim_traits<GGML_TYPE_SLIM3_G128> { static constexpr int g = 128; static constexpr int b = 3; };

// bytes of one nominal group (ggml's type_size): header + g*b bits
template <ggml_type type> static constexpr int slim_type_size = 4 + slim_traits<type>::g*slim_traits<type>::b/8;

// ---------------------------------------------------------------------------------------------------------------
// tags -> group table

struct slim_group {
    uint32_t off; // byte offset of the group's codes from the row start
    uint32_t jb;  // group index << 3 | bit-width
};

static __device__ __forceinline__ float slim_half(const uint32_t h) {
    return __half2float(__ushort_as_half((unsigned short) h));
}

// One warp reads the G headers of `row` and writes each group's bit-width and code offset (a prefix sum of the
// widths) into tab[0..G). sorted == false: tab[j] is group j. sorted == true: the groups ordered by width (b-1, then
// b, then b+1; group order within a width), so that the lanes of a warp walking the list meet groups of one width
// and take one code path, and a work item finds its group at tab[slot] with no further lookup.
// Returns (on every lane) whether the widths are legal ({b-1, b, b+1}) and fill the row exactly; if not, the
// table must not be used (callers write NaN, as the CPU vec_dot does for corrupt tags).
template <int g, int b>
static __device__ bool slim_build_table(const char * row, const int G, const bool sorted, slim_group * tab) {
    const int lane = threadIdx.x % WARP_SIZE;
    constexpr int plane_bytes = g/8;
    constexpr unsigned full = 0xFFFFFFFFu;
    const unsigned lanes_below = (1u << lane) - 1;
    auto width = [&](const int j) {
        const uint32_t dh = *(const uint16_t *) (row + 4*j);
        return (int) ((dh >> 15) << 1 | (dh & 1)) + 1;
    };

    // sorted: where each width's run starts (a first pass counts the narrower widths)
    int c0 = 0, c1 = 0, c2 = 0;
    if (sorted) {
        int n0 = 0, n1 = 0;
        for (int j0 = 0; j0 < G; j0 += WARP_SIZE) {
            const int bits = j0 + lane < G ? width(j0 + lane) : 0;
            n0 += __popc(__ballot_sync(full, bits == b - 1));
            n1 += __popc(__ballot_sync(full, bits == b));
        }
        c1 = n0;
        c2 = n0 + n1;
    }

    bool ok = true;
    int planes = 0;                    // bit-planes of the groups before this chunk
    for (int j0 = 0; j0 < G; j0 += WARP_SIZE) {
        const int  j     = j0 + lane;
        const bool valid = j < G;
        const int bits = valid ? width(j) : 0;
        ok = ok && (!valid || (bits >= b - 1 && bits <= b + 1));

        int incl = bits; // inclusive prefix sum of the widths over the chunk
#pragma unroll
        for (int o = 1; o < WARP_SIZE; o <<= 1) {
            const int t = __shfl_up_sync(full, incl, o);
            if (lane >= o) {
                incl += t;
            }
        }
        const uint32_t off = 4*G + (planes + incl - bits)*plane_bytes;
        planes += __shfl_sync(full, incl, WARP_SIZE - 1);

        int pos = j;
        if (sorted) {
            const unsigned m0 = __ballot_sync(full, valid && bits == b - 1);
            const unsigned m1 = __ballot_sync(full, valid && bits == b);
            const unsigned m2 = __ballot_sync(full, valid) & ~m0 & ~m1;
            pos = bits == b - 1 ? c0 + __popc(m0 & lanes_below) :
                  bits == b     ? c1 + __popc(m1 & lanes_below) :
                                  c2 + __popc(m2 & lanes_below);
            c0 += __popc(m0);
            c1 += __popc(m1);
            c2 += __popc(m2);
        }
        if (valid) { // an illegal width sorts with b+1 (third run): still a slot in [0, G), and the table is refused
            tab[pos] = { off, (uint32_t) j << 3 | (uint32_t) bits };
        }
    }
    return __all_sync(full, ok && planes == G*b);
}

// ---------------------------------------------------------------------------------------------------------------
// loads

// nbytes from p (aligned to `align` bytes) into 32-bit words
template <int nbytes, int align>
static __device__ __forceinline__ void slim_load(const char * p, uint32_t * w) {
    if constexpr (align >= 16 && nbytes % 16 == 0) {
#pragma unroll
        for (int i = 0; i < nbytes/16; ++i) {
            const uint4 v = ((const uint4 *) p)[i];
            w[4*i + 0] = v.x; w[4*i + 1] = v.y; w[4*i + 2] = v.z; w[4*i + 3] = v.w;
        }
    } else if constexpr (align >= 8) {
#pragma unroll
        for (int i = 0; i < nbytes/8; ++i) {
            const uint2 v = ((const uint2 *) p)[i];
            w[2*i + 0] = v.x; w[2*i + 1] = v.y;
        }
    } else {
#pragma unroll
        for (int i = 0; i < nbytes/4; ++i) {
            w[i] = ((const uint32_t *) p)[i];
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// decoding 32 weights (one 32-bit word of each of the B planes) to floats: dequantize, GET_ROWS

template <int B>
static __device__ __forceinline__ void slim_decode32(const uint32_t * w, const float d, const float m, float * v) {
#pragma unroll
    for (int i = 0; i < 32; ++i) {
        int q = 0;
#pragma unroll
        for (int p = 0; p < B; ++p) {
            q |= ((w[p] >> i) & 1) << p;
        }
        v[i] = __fmaf_rn(d, (float) q, m); // d*q is exact (11-bit d, q < 16): one rounding, as on the CPU
    }
}

template <typename dst_t>
static __device__ __forceinline__ void slim_store32(dst_t * y, const float * v) {
    if constexpr (std::is_same_v<dst_t, float>) {
#pragma unroll
        for (int i = 0; i < 32; i += 4) {
            *(float4 *) (y + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
        }
    } else {
#pragma unroll
        for (int i = 0; i < 32; i += 8) {
            dst_t t[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                t[k] = ggml_cuda_cast<dst_t>(v[i + k]);
            }
            *(uint4 *) (y + i) = *(const uint4 *) t;
        }
    }
}

// word c of group e of a row -> 32 outputs
template <ggml_type type, typename dst_t>
static __device__ __forceinline__ void slim_dequantize_word(const char * row, const slim_group e, const int c, dst_t * y) {
    constexpr int g = slim_traits<type>::g;
    constexpr int b = slim_traits<type>::b;
    const int j    = e.jb >> 3;
    const int bits = e.jb & 7;
    const uint32_t h = *(const uint32_t *) (row + 4*j);
    const float d = slim_half(h & 0x7FFF);
    const float m = slim_half(h >> 16);
    uint32_t w[b + 1];
#pragma unroll
    for (int p = 0; p < b + 1; ++p) {
        w[p] = p < bits ? *(const uint32_t *) (row + e.off + p*(g/8) + 4*c) : 0;
    }
    float v[32];
    switch (bits - b) {
        case -1: slim_decode32<b - 1>(w, d, m, v); break;
        case  0: slim_decode32<b    >(w, d, m, v); break;
        default: slim_decode32<b + 1>(w, d, m, v); break;
    }
    slim_store32(y, v);
}

template <typename dst_t>
static __device__ __forceinline__ void slim_store32_nan(dst_t * y) {
    float v[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) {
        v[i] = NAN;
    }
    slim_store32(y, v);
}

// ---------------------------------------------------------------------------------------------------------------
// dequantize (the cuBLAS path): SLIM_DQ_ROWS rows per block share one table

#define SLIM_DQ_ROWS    8
#define SLIM_DQ_THREADS 256

template <ggml_type type, typename dst_t>
static __global__ void __launch_bounds__(SLIM_DQ_THREADS) slim_dequantize(
        const char * x, dst_t * y, const int64_t ne00, const int64_t ne01, const int64_t ne02,
        const int64_t nb01, const int64_t nb02, const int64_t nb03) {
    constexpr int g = slim_traits<type>::g;
    constexpr int W = g/32;
    extern __shared__ slim_group s_tab[];
    __shared__ int s_ok;

    const int     G   = ne00/g;
    const int64_t i01 = (int64_t) blockIdx.x*SLIM_DQ_ROWS;
    const int64_t i02 = blockIdx.y;
    const int64_t i03 = blockIdx.z;
    const char * xm = x + i02*nb02 + i03*nb03;

    if (threadIdx.x < WARP_SIZE) {
        const bool ok = slim_build_table<g, slim_traits<type>::b>(xm + i01*nb01, G, false, s_tab);
        if (threadIdx.x == 0) {
            s_ok = ok;
        }
    }
    __syncthreads();

    const int nr = (int) min((int64_t) SLIM_DQ_ROWS, ne01 - i01);
    const int items_per_row = G*W;
    dst_t * ym = y + ((i03*ne02 + i02)*ne01 + i01)*ne00;
    for (int it = threadIdx.x; it < nr*items_per_row; it += blockDim.x) {
        const int r  = it / items_per_row;
        const int jc = it - r*items_per_row;
        const int j  = jc / W;
        const int c  = jc - j*W;
        dst_t * yw = ym + r*ne00 + j*g + 32*c;
        if (s_ok) {
            slim_dequantize_word<type>(xm + (i01 + r)*nb01, s_tab[j], c, yw);
        } else {
            slim_store32_nan(yw);
        }
    }
}

template <ggml_type type, typename dst_t>
static void slim_dequantize_cuda(const void * vx, dst_t * y, const int64_t ne00, const int64_t ne01,
        const int64_t ne02, const int64_t ne03, const int64_t s01, const int64_t s02, const int64_t s03,
        cudaStream_t stream) {
    constexpr int64_t ts = slim_type_size<type>;
    const int G = ne00/slim_traits<type>::g;
    const size_t shmem = G*sizeof(slim_group);
    GGML_ASSERT(shmem <= 48*1024); // ggml_cuda_slim_supports_op() keeps wider rows on the CPU
    GGML_ASSERT(ne02 <= 65535 && ne03 <= 65535);
    const dim3 grid((ne01 + SLIM_DQ_ROWS - 1)/SLIM_DQ_ROWS, ne02, ne03);
    slim_dequantize<type, dst_t><<<grid, SLIM_DQ_THREADS, shmem, stream>>>(
        (const char *) vx, y, ne00, ne01, ne02, s01*ts, s02*ts, s03*ts);
    CUDA_CHECK(cudaGetLastError());
}

template <typename dst_t>
to_t_nc_cuda_t<dst_t> ggml_cuda_slim_get_to_nc(ggml_type type) {
    switch (type) {
        case GGML_TYPE_SLIM2_G64:  return slim_dequantize_cuda<GGML_TYPE_SLIM2_G64,  dst_t>;
        case GGML_TYPE_SLIM2_G128: return slim_dequantize_cuda<GGML_TYPE_SLIM2_G128, dst_t>;
        case GGML_TYPE_SLIM3_G64:  return slim_dequantize_cuda<GGML_TYPE_SLIM3_G64,  dst_t>;
        case GGML_TYPE_SLIM3_G128: return slim_dequantize_cuda<GGML_TYPE_SLIM3_G128, dst_t>;
        default:                   return nullptr;
    }
}

template to_t_nc_cuda_t<float>       ggml_cuda_slim_get_to_nc<float>(ggml_type);
template to_t_nc_cuda_t<half>        ggml_cuda_slim_get_to_nc<half>(ggml_type);
template to_t_nc_cuda_t<nv_bfloat16> ggml_cuda_slim_get_to_nc<nv_bfloat16>(ggml_type);

// ---------------------------------------------------------------------------------------------------------------
// GET_ROWS: one block per gathered row, table from that row's own headers

#define SLIM_GET_ROWS_THREADS 128

template <ggml_type type, typename dst_t>
static __global__ void __launch_bounds__(SLIM_GET_ROWS_THREADS) slim_get_rows(
        const char * src0, const int32_t * src1, dst_t * dst,
        const int64_t ne00, const int64_t ne11, const int64_t ne12,
        const int64_t s1, const int64_t s2, const int64_t s3,
        const int64_t nb01, const int64_t nb02, const int64_t nb03,
        const int64_t s10, const int64_t s11, const int64_t s12) {
    constexpr int g = slim_traits<type>::g;
    constexpr int W = g/32;
    extern __shared__ slim_group s_tab[];
    __shared__ int s_ok;

    const int G = ne00/g;
    const int64_t i10 = blockIdx.x;
    for (int64_t z = blockIdx.y; z < ne11*ne12; z += gridDim.y) {
        const int64_t i11 = z / ne12;
        const int64_t i12 = z - i11*ne12;
        const int64_t i01 = src1[i10*s10 + i11*s11 + i12*s12];
        const char * row = src0 + i01*nb01 + i11*nb02 + i12*nb03;
        dst_t * y = dst + i10*s1 + i11*s2 + i12*s3;

        __syncthreads(); // the previous row's table is no longer read
        if (threadIdx.x < WARP_SIZE) {
            const bool ok = slim_build_table<g, slim_traits<type>::b>(row, G, false, s_tab);
            if (threadIdx.x == 0) {
                s_ok = ok;
            }
        }
        __syncthreads();

        for (int jc = threadIdx.x; jc < G*W; jc += blockDim.x) {
            const int j = jc / W;
            const int c = jc - j*W;
            if (s_ok) {
                slim_dequantize_word<type>(row, s_tab[j], c, y + j*g + 32*c);
            } else {
                slim_store32_nan(y + j*g + 32*c);
            }
        }
    }
}

template <ggml_type type, typename dst_t>
static void slim_get_rows_cuda(
        const void * src0_d, const int32_t * src1_d, dst_t * dst_d,
        int64_t ne00, size_t nb01, size_t nb02, size_t nb03,
        int64_t ne10, int64_t ne11, int64_t ne12, size_t nb10, size_t nb11, size_t nb12,
        size_t nb1, size_t nb2, size_t nb3, cudaStream_t stream) {
    const int G = ne00/slim_traits<type>::g;
    const size_t shmem = G*sizeof(slim_group);
    GGML_ASSERT(shmem <= 48*1024); // ggml_cuda_slim_supports_op() keeps wider rows on the CPU
    GGML_ASSERT(nb1 % 16 == 0 && nb2 % 16 == 0 && nb3 % 16 == 0 && (uintptr_t) dst_d % 16 == 0);
    const dim3 grid(ne10, MIN(ne11*ne12, (int64_t) UINT16_MAX), 1);
    slim_get_rows<type, dst_t><<<grid, SLIM_GET_ROWS_THREADS, shmem, stream>>>(
        (const char *) src0_d, src1_d, dst_d, ne00, ne11, ne12,
        nb1/sizeof(dst_t), nb2/sizeof(dst_t), nb3/sizeof(dst_t), nb01, nb02, nb03,
        nb10/sizeof(int32_t), nb11/sizeof(int32_t), nb12/sizeof(int32_t));
    CUDA_CHECK(cudaGetLastError());
}

template <typename dst_t>
static void slim_get_rows_switch_type(
        const void * src0_d, ggml_type src0_type, const int32_t * src1_d, dst_t * dst_d,
        int64_t ne00, size_t nb01, size_t nb02, size_t nb03,
        int64_t ne10, int64_t ne11, int64_t ne12, size_t nb10, size_t nb11, size_t nb12,
        size_t nb1, size_t nb2, size_t nb3, cudaStream_t stream) {
#define SLIM_GET_ROWS_CASE(T) \
        case T: slim_get_rows_cuda<T>(src0_d, src1_d, dst_d, ne00, nb01, nb02, nb03, ne10, ne11, ne12, \
                                      nb10, nb11, nb12, nb1, nb2, nb3, stream); break;
    switch (src0_type) {
        SLIM_GET_ROWS_CASE(GGML_TYPE_SLIM2_G64)
        SLIM_GET_ROWS_CASE(GGML_TYPE_SLIM2_G128)
        SLIM_GET_ROWS_CASE(GGML_TYPE_SLIM3_G64)
        SLIM_GET_ROWS_CASE(GGML_TYPE_SLIM3_G128)
        default: GGML_ABORT("%s: not a SLIM type: %s", __func__, ggml_type_name(src0_type));
    }
#undef SLIM_GET_ROWS_CASE
}

void ggml_cuda_get_rows_slim(
        const void * src0_d, ggml_type src0_type, const int32_t * src1_d, void * dst_d, ggml_type dst_type,
        int64_t ne00, size_t nb01, size_t nb02, size_t nb03,
        int64_t ne10, int64_t ne11, int64_t ne12, size_t nb10, size_t nb11, size_t nb12,
        size_t nb1, size_t nb2, size_t nb3,
        cudaStream_t stream) {
    switch (dst_type) {
        case GGML_TYPE_F32:
            slim_get_rows_switch_type(src0_d, src0_type, src1_d, (float *) dst_d,
                ne00, nb01, nb02, nb03, ne10, ne11, ne12, nb10, nb11, nb12, nb1, nb2, nb3, stream);
            break;
        case GGML_TYPE_F16:
            slim_get_rows_switch_type(src0_d, src0_type, src1_d, (half *) dst_d,
                ne00, nb01, nb02, nb03, ne10, ne11, ne12, nb10, nb11, nb12, nb1, nb2, nb3, stream);
            break;
        case GGML_TYPE_BF16:
            slim_get_rows_switch_type(src0_d, src0_type, src1_d, (nv_bfloat16 *) dst_d,
                ne00, nb01, nb02, nb03, ne10, ne11, ne12, nb10, nb11, nb12, nb1, nb2, nb3, stream);
            break;
        default:
            GGML_ABORT("%s: unsupported dst type: %s", __func__, ggml_type_name(dst_type));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// mat-vec (decode batches): activations quantized to int8 per 32 values, bit-planes expanded to bytes for dp4a
//
// For one 32-bit word of each plane (32 weights), s = 0..3:
//   lo_s = OR_p ((w_p >> s) << p) & (0x01010101 << p)   byte k = q of weight s + 8k
//   hi_s = OR_p ((w_p >> s) << p) & (0x10101010 << p)   byte k = q << 4 of weight s + 4 + 8k   (same shifted word)
// so the activations of each 32-block are stored permuted to match: word s holds x[s + 8k], word 4 + s holds
// x[s + 4 + 8k] (k = 0..3), and sum_i q_i*x_i = sum_s dp4a(lo_s, xw_s) + (sum_s dp4a(hi_s, xw_{4+s}) >> 4).

#define SLIM_MMV_NWARPS 8

// shared-memory row stride: the row rounded up to 16 bytes, made an odd multiple of 16 (distinct banks per row)
static __host__ __device__ __forceinline__ int slim_smem_row_stride(const int row_bytes) {
    const int s = (row_bytes + 15) & ~15;
    return (s/16) % 2 ? s : s + 16;
}

// position of value e (0..31) of a 32-block in the permuted activation layout
static __device__ __forceinline__ int slim_act_pos(const int e) {
    const int s8 = e & 7;
    return (s8 >> 2)*16 + (s8 & 3)*4 + (e >> 3);
}

// x [ne10, ne11, ne12, ne13] f32 (nb10 = 4) -> per column (channel-major): ne10 int8 (permuted) + ne10/32 (d, sum x)
static __global__ void slim_quantize_act(
        const float * x_ptr, int8_t * yq, float2 * yds, const int ne10, const int ne11, const int ne12,
        const int64_t s11, const int64_t s12, const int64_t s13) {
    ggml_cuda_pdl_lc();
    const int i0 = blockIdx.x*blockDim.x + threadIdx.x;
    if (i0 >= ne10) {
        return; // ne10 % 32 == 0: whole warps leave
    }
    const int i11 = blockIdx.y;
    const int ch  = blockIdx.z;
    const int i12 = ch % ne12;
    const int i13 = ch / ne12;

    ggml_cuda_pdl_sync();
    const float xi = x_ptr[i13*s13 + i12*s12 + i11*s11 + i0];
    const float amax = warp_reduce_max(fabsf(xi));
    const float sum  = warp_reduce_sum(xi);
    const float d = amax / 127.0f;
    const int   q = amax == 0.0f ? 0 : __float2int_rn(xi / d);

    const int     lane = i0 % WARP_SIZE;
    const int64_t col  = (int64_t) ch*ne11 + i11;
    yq[col*ne10 + (i0 - lane) + slim_act_pos(lane)] = (int8_t) q;
    if (lane == 0) {
        yds[col*(ne10/32) + i0/32] = make_float2(d, sum);
    }
}

// unsigned bytes (codes) x signed bytes (activations)
static __device__ __forceinline__ int slim_dp4a(const uint32_t a, const int b, const int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// bits of a where m is set, of b elsewhere: one LOP3
static __device__ __forceinline__ uint32_t slim_bitsel(const uint32_t a, const uint32_t b, const uint32_t m) {
    uint32_t r; // lop3 truth table 0xCA = (m & a) | (~m & b); written out, nvcc splits it into two LOP3 around ~m
    asm("lop3.b32 %0, %1, %2, %3, 0xCA;" : "=r"(r) : "r"(m), "r"(a), "r"(b));
    return r;
}

// 32 weights of a B-bit group (word c of each plane) -> 8 words of code bytes in the permuted order:
// q[s] byte k = q of weight s + 8k, q[4 + s] byte k = (q of weight s + 4 + 8k) << 4.
// The planes are merged with bit-selects BEFORE masking, so one mask pulls several planes at once: the mat-vec is
// issue-bound and this is its largest instruction count (2 bits: 14 instructions per 32 weights, 22 plane by plane;
// 3 bits: 25, was 33; 4 bits: 32, was 44).
template <int B>
static __device__ __forceinline__ void slim_expand(const uint32_t * w, uint32_t * q) {
    if constexpr (B == 1) {
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            const uint32_t t = w[0] >> s;
            q[s]     = t & 0x01010101u;
            q[4 + s] = t & 0x10101010u;
        }
    } else if constexpr (B == 2) {
        // bit pairs: z_even's bits (2i, 2i + 1) = q of weight 2i, z_odd's = q of weight 2i + 1
        const uint32_t z_even = slim_bitsel(w[0],      w[1] << 1, 0x55555555u);
        const uint32_t z_odd  = slim_bitsel(w[0] >> 1, w[1],      0x55555555u);
        const uint32_t z[4] = { z_even, z_odd, z_even >> 2, z_odd >> 2 }; // weight s (mod 8) at bits 0-1, 4-5
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            q[s]     = z[s] & 0x03030303u;
            q[4 + s] = z[s] & 0x30303030u;
        }
    } else {
        // nibbles: bits 0..B-1 of nibble n = q of weight 4n + s (bit 3 is garbage when B == 3, masked off below)
        constexpr uint32_t lo_mask = 0x01010101u*((1u << B) - 1);
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            uint32_t z = w[0] >> s;
#pragma unroll
            for (int p = 1; p < B; ++p) {
                const uint32_t t = s >= p ? w[p] >> (s - p) : w[p] << (p - s);
                z = slim_bitsel(z, t, 0x11111111u*((1u << p) - 1)); // bits below p from z, bit p (and up) from t
            }
            q[s]     = z & lo_mask;
            q[4 + s] = z & (lo_mask << 4);
        }
    }
}

// one group (its table entry) of one row, ncols activation columns
template <int g, int B, int ncols, int align>
static __device__ __forceinline__ void slim_mmv_group(
        const char * row, const int j, const uint32_t off,
        const int8_t * yq, const float2 * yds, const int ne00, float (&acc)[ncols]) {
    constexpr int W  = g/32; // words per plane
    constexpr int PB = g/8;  // bytes per plane

    uint32_t w[B][W];
    const uint32_t h = *(const uint32_t *) (row + 4*j);
    const float d = slim_half(h & 0x7FFF);
    const float m = slim_half(h >> 16);
#pragma unroll
    for (int p = 0; p < B; ++p) {
        slim_load<PB, align>(row + off + p*PB, w[p]);
    }

    float sd[ncols] = {0.0f}; // sum over the 32-blocks of d_x * sum q*xq
    float sx[ncols] = {0.0f}; // sum of the activations over the group
#pragma unroll
    for (int c = 0; c < W; ++c) {
        uint32_t wc[B];
#pragma unroll
        for (int p = 0; p < B; ++p) {
            wc[p] = w[p][c];
        }
        uint32_t q[8];
        slim_expand<B>(wc, q);
#pragma unroll
        for (int col = 0; col < ncols; ++col) {
            const int4 * yv = (const int4 *) (yq + (int64_t) col*ne00 + j*g + 32*c);
            const int4   ya = yv[0];
            const int4   yb = yv[1];
            const float2 ds = yds[(int64_t) col*(ne00/32) + j*W + c];
            int lo = slim_dp4a(q[0], ya.x, 0);
            lo     = slim_dp4a(q[1], ya.y, lo);
            lo     = slim_dp4a(q[2], ya.z, lo);
            lo     = slim_dp4a(q[3], ya.w, lo);
            int hi = slim_dp4a(q[4], yb.x, 0);
            hi     = slim_dp4a(q[5], yb.y, hi);
            hi     = slim_dp4a(q[6], yb.z, hi);
            hi     = slim_dp4a(q[7], yb.w, hi);
            sd[col] += ds.x * (float) (lo + (hi >> 4));
            sx[col] += ds.y;
        }
    }
#pragma unroll
    for (int col = 0; col < ncols; ++col) {
        acc[col] += d*sd[col] + m*sx[col];
    }
}

// one table entry's group of one row, by the code path of its width (b-1, b or b+1)
template <int g, int b, int ncols, int align>
static __device__ __forceinline__ void slim_mmv_entry(
        const char * row, const slim_group e, const int8_t * yq, const float2 * yds, const int ne00,
        float (&acc)[ncols]) {
    const int j = e.jb >> 3;
    switch ((int) (e.jb & 7) - b) {
        case -1: slim_mmv_group<g, b - 1, ncols, align>(row, j, e.off, yq, yds, ne00, acc); break;
        case  0: slim_mmv_group<g, b    , ncols, align>(row, j, e.off, yq, yds, ne00, acc); break;
        default: slim_mmv_group<g, b + 1, ncols, align>(row, j, e.off, yq, yds, ne00, acc); break;
    }
}

static __device__ __forceinline__ void slim_cp_async(const uint32_t dst, const char * src, const int nbytes) {
    if (nbytes == 16) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(src));
    } else if (nbytes == 8) {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" :: "r"(dst), "l"(src));
    } else {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" :: "r"(dst), "l"(src));
    }
}

// wait until at most nstages - 1 commit groups are pending: the oldest tile has landed (for this thread)
static __device__ __forceinline__ void slim_cp_async_wait(const int nstages) {
    if (nstages <= 1) {
        asm volatile("cp.async.wait_group 0;" ::: "memory");
    } else if (nstages == 2) {
        asm volatile("cp.async.wait_group 1;" ::: "memory");
    } else if (nstages == 3) {
        asm volatile("cp.async.wait_group 2;" ::: "memory");
    } else {
        asm volatile("cp.async.wait_group 3;" ::: "memory");
    }
}

// Hopper's bulk copy (TMA without a tensor map): one instruction moves a whole row to shared memory and signals an
// mbarrier with the bytes it wrote; consumers wait on the barrier's phase. Used for rows whose base, stride and
// length are multiples of 16 bytes (align == 16), sm_90 and up, built by CUDA 12+ (PTX ISA 8.0; CUDA 11.8 targets
// sm_90 but cannot assemble these instructions).
#define SLIM_MMV_MAX_STAGES 4
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && __CUDACC_VER_MAJOR__ >= 12
#define SLIM_HAS_BULK 1
#else
#define SLIM_HAS_BULK 0
#endif

static __device__ __forceinline__ void slim_mbar_init(const uint32_t bar) {
#if SLIM_HAS_BULK
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(bar) : "memory");
#endif
}

// the one arrival of a phase, announcing the bytes the phase's copies will deliver
static __device__ __forceinline__ void slim_mbar_expect_tx(const uint32_t bar, const uint32_t bytes) {
#if SLIM_HAS_BULK
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
#endif
}

static __device__ __forceinline__ void slim_bulk_copy(const uint32_t dst, const char * src, const uint32_t bytes,
        const uint32_t bar) {
#if SLIM_HAS_BULK
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
#endif
}

// generic-proxy accesses of this thread (and, through a block barrier before it, of the block) ordered before later
// async-proxy ones: a stage the block has read is refilled by a bulk copy only after this (PTX ISA, async proxy:
// accessing one location across proxies needs a cross-proxy fence)
static __device__ __forceinline__ void slim_fence_proxy_async() {
#if SLIM_HAS_BULK
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

static __device__ __forceinline__ void slim_mbar_wait(const uint32_t bar, const uint32_t parity) {
#if SLIM_HAS_BULK
    uint32_t done;
    do {
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
#endif
}

// how a mat-vec launch copies its tiles (flags; none: the cp.async path, 16/8/4-byte chunks with division-free
// indexing, one block barrier per tile with 2+ stages). A first kernel's cp.async loop with a runtime division per
// chunk and two barriers per tile measured 3..4 % slower in tg128 and was removed
// (docs/bench/2026-12-04-h200-expand-bulk.md).
enum slim_mmv_variant : int {
    SLIM_MMV_BULK        = 1, // one bulk copy per row (align == 16, sm_90+; else cp.async), mbarrier waits
    // with BULK: the group table is built from the headers of the matrix's row 0 read from global memory, while the
    // first tile's bulk copies are in flight, instead of from the landed tile (experiment: GGML_CUDA_SLIM_TABLE_EARLY=1,
    // not yet measured)
    SLIM_MMV_EARLY_TABLE = 2,
};

// Persistent blocks of SLIM_MMV_NWARPS warps; a tile is RB consecutive rows (RB divides 32). Tiles b, b + gridDim.x, ...
// stream through a ring of `nstages` shared-memory buffers with cp.async (codes read once, coalesced, no registers
// held while in flight), so the copies of later tiles overlap the arithmetic on the current one.
// The whole block shares a tile's work items t = slot*RB + r over (width-sorted group slot, row): a warp step covers
// 32/RB consecutive slots of RB rows, so its lanes share one bit-width except where the width lists meet, and lane l
// always works on row l % RB. Rows sit in shared memory at a stride of an odd multiple of 16 bytes, so the RB lanes
// reading one group from RB rows hit distinct banks.
// NM = 2 fuses a SwiGLU FFN's gate and up projections (ncols = 1): matrix 0 is the gate, matrix 1 the up
// projection, dst = silu(gate x) * (up x). A tile then holds the same RB rows of both matrices, each matrix has its
// own table (SBA gives every tensor its own tags), and the activations are quantized once for both.
// FLAT (NM = 2 only): the pair's work items as ONE list over both matrices, t = m*G*RB + slot*RB + r, instead of a
// loop per matrix: with G*RB < 256 items per matrix the per-matrix loop leaves threads idle (Qwen2.5-1.5B, G = 12:
// 96 of 256 threads work, on two items each), and 4-row pair tiles keep every thread busy (experiment,
// GGML_CUDA_SLIM_BALANCE; a template parameter, so that the default kernels are compiled exactly as before, SASS
// compared). FLAT kernels ask for 5 resident blocks (48 registers, as the SLIM2 pair kernel has by itself: a few
// bytes of spill outside the group loop): unbounded, the flat loop took 61 registers, 4 blocks per SM, and the
// balance it exists for was lost. 0 = no minimum (the default kernels' attribute as before).
// Shared memory: [NM x G table entries][nstages tiles of NM x RB rows][2 x NM x NWARPS x RB x ncols partial sums].
template <ggml_type type, int ncols, int RB, int align, int NM, bool FLAT = false>
static __global__ void __launch_bounds__(SLIM_MMV_NWARPS*WARP_SIZE, FLAT ? 5 : 0) slim_mul_mat_vec(
        const char * x0_ptr, const char * x1_ptr, const int8_t * yq_ptr, const float2 * yds_ptr, float * dst_ptr,
        const int ne00, const int nrows, const int64_t stride_row,
        const int ne12, const int r2, const int r3, const int64_t nb02, const int64_t nb03,
        const int64_t stride_col_dst, const int64_t stride_ch2_dst, const int64_t stride_ch3_dst,
        const int nstages, const float * resid_ptr, const int64_t stride_col_resid, const int variant) {
    constexpr int g  = slim_traits<type>::g;
    constexpr int b  = slim_traits<type>::b;
    constexpr int NW = SLIM_MMV_NWARPS;
    static_assert(WARP_SIZE % RB == 0, "RB must divide the warp size");
    static_assert(NM == 1 || (NM == 2 && ncols == 1), "gate/up fusion is for single columns");
    static_assert(!FLAT || NM == 2, "one item list over two matrices");
    extern __shared__ __align__(16) char s_mem[];
    __shared__ int s_ok[NM];
    __shared__ __align__(8) uint64_t s_bar[SLIM_MMV_MAX_STAGES]; // SLIM_MMV_BULK: one mbarrier per stage

    const int G         = ne00/g;
    const int row_bytes = G*slim_type_size<type>;
    const int rstride   = slim_smem_row_stride(row_bytes);
    const int mat_cap   = RB*rstride;   // one matrix's rows of a tile
    const int tile_cap  = NM*mat_cap;
    const int warp = threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    const int ch   = blockIdx.y;
    const int i12  = ch % ne12;
    const int i13  = ch / ne12;
    const int64_t x_off = (i12/r2)*nb02 + (i13/r3)*nb03;
    const char * xs[NM];
    xs[0] = x0_ptr + x_off;
    if constexpr (NM == 2) {
        xs[1] = x1_ptr + x_off;
    }
    const int ntiles = (nrows + RB - 1)/RB;

    slim_group * tab = (slim_group *) s_mem; // matrix m's table at tab + G*m
    char * bufs = s_mem + ((NM*G*sizeof(slim_group) + 15) & ~15);
    float * red = (float *) (bufs + nstages*tile_cap); // [2][NM][NW][RB][ncols]
    const uint32_t bufs_s = (uint32_t) __cvta_generic_to_shared(bufs);
#if SLIM_HAS_BULK
    const bool bulk = align == 16 && (variant & SLIM_MMV_BULK);
#else
    const bool bulk = false;
#endif
    const bool early_table = bulk && (variant & SLIM_MMV_EARLY_TABLE);
    const uint32_t bar_s = (uint32_t) __cvta_generic_to_shared(s_bar);
    if (bulk) {
        if (threadIdx.x == 0) {
            for (int s = 0; s < nstages; ++s) {
                slim_mbar_init(bar_s + 8*s);
            }
#if SLIM_HAS_BULK
            asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
        }
        __syncthreads();
    }

    // tile -> stage buffer, one commit group per tile (an empty group past the last tile keeps the count uniform)
    const int chunks_per_row = row_bytes/align;
    // this thread's first (row, chunk) and the stride of blockDim.x chunks as (rows, chunks), divided once here
    // instead of once per 16-byte copy (a division by a runtime value is ~20 instructions; a copy loop with one per
    // chunk spent about a fifth of the kernel's instructions on a gate/up tile)
    const int c_row0  = threadIdx.x / chunks_per_row;
    const int c_col0  = threadIdx.x - c_row0*chunks_per_row;
    const int c_drow  = blockDim.x / chunks_per_row;
    const int c_dcol  = blockDim.x - c_drow*chunks_per_row;
    auto issue = [&](const int tile, const int stage) {
        if (bulk) { // warp 0: lane 0 announces the tile's bytes, then one lane per row copies it
            if (warp == 0 && tile < ntiles) {
                const int r0 = tile*RB;
                const int nr = min(RB, nrows - r0);
                const uint32_t bar = bar_s + 8*stage;
                slim_fence_proxy_async(); // the block's reads of this stage (its last tile, or the table) came first
                if (lane == 0) {
                    slim_mbar_expect_tx(bar, (uint32_t) (NM*nr*row_bytes));
                }
                __syncwarp();
                if (lane < NM*nr) {
                    const int m  = lane / nr;
                    const int rr = lane - m*nr;
                    slim_bulk_copy(bufs_s + stage*tile_cap + m*mat_cap + rr*rstride,
                                   xs[m] + (int64_t) (r0 + rr)*stride_row, row_bytes, bar);
                }
            }
            return;
        }
        if (tile < ntiles) {
            const int r0 = tile*RB;
            const int nr = min(RB, nrows - r0);
#pragma unroll
            for (int m = 0; m < NM; ++m) {
                const uint32_t dst = bufs_s + stage*tile_cap + m*mat_cap;
                const char * src = xs[m] + (int64_t) r0*stride_row;
                for (int r = c_row0, cc = c_col0; r < nr; ) {
                    const int o = cc*align;
                    slim_cp_async(dst + r*rstride + o, src + (int64_t) r*stride_row + o, align);
                    r  += c_drow;
                    cc += c_dcol;
                    if (cc >= chunks_per_row) {
                        cc -= chunks_per_row;
                        ++r;
                    }
                }
            }
        }
        asm volatile("cp.async.commit_group;");
    };
    // cp.async with two or more stages: ONE block barrier per tile. The barrier after the partial sums also waits for
    // the next tile (this thread's copies first, then everyone's), so the loop's top needs none. Bulk: the loop's top
    // waits on the stage's mbarrier instead, whatever the number of stages.
    const bool one_barrier = !bulk && nstages >= 2;
    auto wait_tile = [&](const int k) { // bulk: tile k (the (k / nstages)-th use of its stage) has landed
        slim_mbar_wait(bar_s + 8*(k % nstages), (uint32_t) (k / nstages) & 1);
    };

    // weights only until ggml_cuda_pdl_sync: this part overlaps the previous kernel
    for (int s = 0; s < nstages; ++s) {
        issue(blockIdx.x + s*gridDim.x, s);
    }
    if (bulk) {
        if (warp < NM && !early_table) {
            wait_tile(0);
        }
    } else {
        slim_cp_async_wait(nstages);
        __syncthreads();
    }
    if (warp < NM) { // warp m: matrix m's table from its first row (every row of a tensor carries the same tags)
        const char * hrow = early_table ? (warp == 0 ? xs[0] : xs[NM - 1]) : bufs + warp*mat_cap;
        const bool ok = slim_build_table<g, b>(hrow, G, true, tab + G*warp);
        if (lane == 0) {
            s_ok[warp] = ok;
        }
    }
    __syncthreads();
    ggml_cuda_pdl_sync();

    bool ok = true;
#pragma unroll
    for (int m = 0; m < NM; ++m) {
        ok = ok && s_ok[m];
    }
    const int8_t * yq  = yq_ptr  + (int64_t) ch*ncols*ne00;
    const float2 * yds = yds_ptr + (int64_t) ch*ncols*(ne00/32);
    float * dst = dst_ptr + i12*stride_ch2_dst + i13*stride_ch3_dst;
    const int r = lane % RB; // this lane's row in every tile

    for (int k = 0, tile = blockIdx.x; tile < ntiles; ++k, tile += gridDim.x) {
        const int stage = k % nstages;
        if (bulk) {
            wait_tile(k);
        } else if (k > 0 && !one_barrier) {
            slim_cp_async_wait(nstages);
            __syncthreads();
        }
        const int r0 = tile*RB;
        const int nr = min(RB, nrows - r0);
        float acc[NM][ncols] = {{0.0f}};
        if (FLAT && ok) { // matrix m = t / (G*RB); one accumulator per matrix (ncols == 1)
            const char * xr0 = bufs + stage*tile_cap + (r < nr ? r : 0)*rstride; // rows past the end: row 0
            for (int t = warp*WARP_SIZE + lane; t < NM*G*RB; t += NW*WARP_SIZE) {
                const int m  = t >= G*RB;
                const int tt = t - m*G*RB;
                const char * xr = xr0 + m*mat_cap;
                float part[ncols] = {0.0f}; // acc[m] with a runtime m would live in local memory
                slim_mmv_entry<g, b, ncols, align>(xr, tab[G*m + (unsigned) tt / RB], yq, yds, ne00, part);
                acc[0][0]      += m ? 0.0f : part[0];
                acc[NM - 1][0] += m ? part[0] : 0.0f;
            }
        } else {
#pragma unroll
            for (int m = 0; m < NM; ++m) {
                // rows past the end: row 0, not written
                const char * xr = bufs + stage*tile_cap + m*mat_cap + (r < nr ? r : 0)*rstride;
                const slim_group * tm = tab + G*m;
                if (ok) {
                    for (int t = warp*WARP_SIZE + lane; t < G*RB; t += NW*WARP_SIZE) {
                        // t >= 0: an unsigned divide is one shift
                        slim_mmv_entry<g, b, ncols, align>(xr, tm[(unsigned) t / RB], yq, yds, ne00, acc[m]);
                    }
                } else {
#pragma unroll
                    for (int col = 0; col < ncols; ++col) {
                        acc[m][col] = NAN;
                    }
                }
            }
        }
        // lanes of one row -> lane r; warps -> shared memory; fixed summation order (deterministic)
        float * red_k = red + (k % 2)*NM*NW*RB*ncols;
#pragma unroll
        for (int m = 0; m < NM; ++m) {
#pragma unroll
            for (int col = 0; col < ncols; ++col) {
                float v = acc[m][col];
#pragma unroll
                for (int o = WARP_SIZE/2; o >= RB; o >>= 1) {
                    v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
                }
                if (lane < RB) {
                    red_k[((m*NW + warp)*RB + lane)*ncols + col] = v;
                }
            }
        }
        if (one_barrier) {
            slim_cp_async_wait(nstages - 1); // pending: tiles k+1 .. k+nstages-1; the oldest, k+1, has landed
        }
        __syncthreads(); // partial sums are in, and the stage is free again (one_barrier: tile k+1 is in for all)
        issue(tile + nstages*gridDim.x, stage);
        if (threadIdx.x < RB*ncols) {
            const int rr  = threadIdx.x / ncols;
            const int col = threadIdx.x - rr*ncols;
            float v[NM];
#pragma unroll
            for (int m = 0; m < NM; ++m) {
                v[m] = 0.0f;
#pragma unroll
                for (int w = 0; w < NW; ++w) {
                    v[m] += red_k[((m*NW + w)*RB + rr)*ncols + col];
                }
            }
            if (rr < nr) {
                // SwiGLU as ggml-cuda's own GLU kernel computes it; a fused residual ADD as its f32 add does
                float out = NM == 2 ? ggml_cuda_op_silu_single(v[0])*v[NM - 1] : v[0];
                if (resid_ptr) {
                    out += resid_ptr[col*stride_col_resid + r0 + rr];
                }
                dst[col*stride_col_dst + r0 + rr] = out;
            }
        }
    }
    ggml_cuda_pdl_lc();
}

struct slim_mmv_args {
    const char * x; const char * x_up; const int8_t * yq; const float2 * yds; float * dst;
    int ne00; int nrows; int64_t stride_row;
    int ne12; int r2; int r3; int64_t nb02; int64_t nb03;
    int64_t stride_col_dst; int64_t stride_ch2_dst; int64_t stride_ch3_dst;
    int nch; int nstages;
    const float * resid; int64_t stride_col_resid; // dst = W x + resid (a fused residual ADD; one channel)
    int variant; // slim_mmv_variant
};

// dynamic shared memory of one mat-vec block: [NM x G table][nstages tiles of NM x RB rows][partial sums]
static size_t slim_mmv_shmem(const int G, const int row_bytes, const int ncols, const int RB, const int NM,
        const int nstages) {
    const size_t table = ((size_t) NM*G*sizeof(slim_group) + 15) & ~(size_t) 15;
    const size_t tiles = (size_t) nstages*NM*RB*slim_smem_row_stride(row_bytes);
    return table + tiles + 2*(size_t) NM*SLIM_MMV_NWARPS*RB*ncols*sizeof(float);
}

// the most dynamic shared memory a SLIM kernel may ask for on this device (the opt-in limit less the kernels'
// few static bytes; the dequantize/GET_ROWS kernels keep to the 48 KiB that needs no opt-in)
static size_t slim_smem_limit() {
    return ggml_cuda_info().devices[ggml_cuda_get_device()].smpbo - 256;
}

// Raise a kernel's dynamic shared-memory limit to the device's opt-in maximum, once per (kernel, device).
// The limit is a property of the kernel, not of one launch: raising it to each launch's own size (as this file
// once did) LOWERED it whenever a smaller matrix followed a larger one through the same kernel instance, and the
// larger matrix's next launch then failed with "invalid argument" (issue 17: e.g. a model's ffn_down ran first at
// batch 1 in the prompt's last layer, attn_q lowered the limit at the first decoded token). The limit reserves
// nothing: occupancy follows each launch's own size.
static void slim_raise_smem_limit(const void * kernel) {
    static std::mutex mutex;
    static std::map<std::pair<const void *, int>, bool> raised;
    const int id = ggml_cuda_get_device();
    std::lock_guard<std::mutex> lock(mutex);
    if (!raised[{kernel, id}]) {
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) slim_smem_limit()));
        raised[{kernel, id}] = true;
    }
}

// stages of the cp.async ring that fit next to the table (at most `wanted`), 0 if not even one does
static int slim_mmv_stages(const int G, const int row_bytes, const int ncols, const int RB, const int NM, int wanted) {
    const size_t budget = std::min<size_t>(200*1024, slim_smem_limit());
    while (wanted > 1 && slim_mmv_shmem(G, row_bytes, ncols, RB, NM, wanted) > budget) {
        --wanted;
    }
    return slim_mmv_shmem(G, row_bytes, ncols, RB, NM, wanted) <= slim_smem_limit() ? wanted : 0;
}

// A launch's shape: stages of the ring, dynamic shared memory, and the persistent grid (min(tiles, resident blocks)).
struct slim_mmv_plan {
    int nstages; size_t shmem; int blocks; int ntiles;
};

template <ggml_type type, int ncols, int RB, int align, int NM, bool FLAT>
static slim_mmv_plan slim_mmv_make_plan(const slim_mmv_args & a) {
    const int G         = a.ne00/slim_traits<type>::g;
    const int row_bytes = G*slim_type_size<type>;
    slim_mmv_plan p;
    p.ntiles  = (a.nrows + RB - 1)/RB;
    p.nstages = slim_mmv_stages(G, row_bytes, ncols, RB, NM, a.nstages);
    GGML_ASSERT(p.nstages > 0); // ggml_cuda_slim_use_mmv() refused such rows
    p.shmem = slim_mmv_shmem(G, row_bytes, ncols, RB, NM, p.nstages);

    const int id  = ggml_cuda_get_device();
    const int nsm = ggml_cuda_info().devices[id].nsm;
    auto kernel = slim_mul_mat_vec<type, ncols, RB, align, NM, FLAT>;
    slim_raise_smem_limit((const void *) kernel);

    // resident blocks per SM of this kernel instance at this shared-memory size, asked once per (size, device)
    static std::mutex mutex;
    static std::map<std::pair<size_t, int>, int> blocks_per_sm;
    int bps = 0;
    {
        std::lock_guard<std::mutex> lock(mutex);
        auto it = blocks_per_sm.find({p.shmem, id});
        if (it == blocks_per_sm.end()) {
            CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bps, kernel, SLIM_MMV_NWARPS*WARP_SIZE, p.shmem));
            GGML_ASSERT(bps > 0);
            it = blocks_per_sm.emplace(std::make_pair(p.shmem, id), bps).first;
        }
        bps = it->second;
    }
    p.blocks = std::min(p.ntiles, bps*nsm);
    return p;
}

template <ggml_type type, int ncols, int RB, int align, int NM, bool FLAT>
static void slim_mmv_launch(const slim_mmv_args & a, cudaStream_t stream) {
    const slim_mmv_plan p = slim_mmv_make_plan<type, ncols, RB, align, NM, FLAT>(a);
    auto kernel = slim_mul_mat_vec<type, ncols, RB, align, NM, FLAT>;
    const dim3 grid(p.blocks, a.nch, 1);
    const ggml_cuda_kernel_launch_params params(grid, dim3(SLIM_MMV_NWARPS*WARP_SIZE, 1, 1), p.shmem, stream);
    ggml_cuda_kernel_launch(kernel, params,
        a.x, a.x_up, a.yq, a.yds, a.dst, a.ne00, a.nrows, a.stride_row, a.ne12, a.r2, a.r3, a.nb02, a.nb03,
        a.stride_col_dst, a.stride_ch2_dst, a.stride_ch3_dst, p.nstages, a.resid, a.stride_col_resid, a.variant);
}

// f(std::integral_constant<int, align>) for the widest copy width the rows allow (16 bytes for g128 only)
template <int g, typename F>
static void slim_with_align(const int align, F && f) {
    if constexpr (g == 128) {
        if (align >= 16) {
            f(std::integral_constant<int, 16>());
            return;
        }
    }
    if (align >= 8) {
        f(std::integral_constant<int, 8>());
    } else {
        f(std::integral_constant<int, 4>());
    }
}

template <ggml_type type, int ncols, int RB, int NM = 1, bool FLAT = false>
static void slim_mmv_switch_align(const slim_mmv_args & a, const int align, cudaStream_t stream) {
    slim_with_align<slim_traits<type>::g>(align, [&](auto A) {
        slim_mmv_launch<type, ncols, RB, decltype(A)::value, NM, FLAT>(a, stream);
    });
}

// A block's share of a launch in rounds of its threads over work items (one group of one row of one matrix): the
// most tiles any block of the persistent grid gets, times the rounds one tile takes (NM*G*RB items over
// NWARPS*32 threads; FLAT makes the pair's two matrices one list). Blocks run at once, so the launch
// takes about as long as its busiest block. LLaMA-7B on an H200: the fused gate/up pair (11008 rows, G = 32) has
// 1376 8-row tiles for ~660 resident blocks, so some blocks take 3 tiles x 2 rounds = 6 while most take 4;
// 4-row tiles make it 5 x 1. A one-tile-per-block o-proj (G = 32) gains nothing from 4-row tiles: 128 items
// leave half of a block's threads idle, 2 x 1 rounds against 1 x 1.
// A tile size whose rows do not fit in shared memory with one stage counts as endless.
template <ggml_type type, int ncols, int RB, int NM, bool FLAT>
static int64_t slim_mmv_rounds(const slim_mmv_args & a, const int align) {
    const int G = a.ne00/slim_traits<type>::g;
    if (slim_mmv_stages(G, G*slim_type_size<type>, ncols, RB, NM, 1) == 0) {
        return INT64_MAX;
    }
    int64_t rounds = 0;
    slim_with_align<slim_traits<type>::g>(align, [&](auto A) {
        const slim_mmv_plan p = slim_mmv_make_plan<type, ncols, RB, decltype(A)::value, NM, FLAT>(a);
        constexpr int threads = SLIM_MMV_NWARPS*WARP_SIZE;
        const int64_t items = (int64_t) NM*G*RB;
        rounds = (int64_t) ((p.ntiles + p.blocks - 1)/p.blocks) * ((items + threads - 1)/threads);
    });
    return rounds;
}

// rows per tile at batch 1 under GGML_CUDA_SLIM_BALANCE: 4 where it takes fewer rounds than 8 (ties keep 8: fewer
// tiles, barriers and reductions)
template <ggml_type type>
static int slim_mmv_pick_rows(const slim_mmv_args & a, const int align) {
    if (a.x_up) {
        return slim_mmv_rounds<type, 1, 4, 2, true>(a, align) < slim_mmv_rounds<type, 1, 8, 2, true>(a, align) ? 4 : 8;
    }
    return slim_mmv_rounds<type, 1, 4, 1, false>(a, align) < slim_mmv_rounds<type, 1, 8, 1, false>(a, align) ? 4 : 8;
}

template <ggml_type type>
static void slim_mmv_switch_ncols(const slim_mmv_args & a, const int ncols, int rows_per_tile, const int align,
        const int balance, cudaStream_t stream) {
    if (balance && ncols == 1 && a.nch == 1) { // GGML_CUDA_SLIM_BALANCE: 1 = by slim_mmv_pick_rows, 4 = always 4
        rows_per_tile = balance == 4 ? 4 : slim_mmv_pick_rows<type>(a, align);
    }
    if (a.x_up) { // gate/up fusion: one column, 8-row tiles of each matrix (BALANCE: one item list, 4 or 8 rows)
        GGML_ASSERT(ncols == 1);
        if (!balance) {
            slim_mmv_switch_align<type, 1, 8, 2>(a, align, stream);
        } else if (rows_per_tile == 4) {
            slim_mmv_switch_align<type, 1, 4, 2, true>(a, align, stream);
        } else {
            slim_mmv_switch_align<type, 1, 8, 2, true>(a, align, stream);
        }
        return;
    }
    switch (ncols) {
        case 1:
            switch (rows_per_tile) {
                case  4: slim_mmv_switch_align<type, 1,  4>(a, align, stream); break;
                case 16: slim_mmv_switch_align<type, 1, 16>(a, align, stream); break;
                case 32: slim_mmv_switch_align<type, 1, 32>(a, align, stream); break;
                default: slim_mmv_switch_align<type, 1,  8>(a, align, stream); break;
            }
            break;
        case 2: slim_mmv_switch_align<type, 2, 8>(a, align, stream); break;
        case 3: slim_mmv_switch_align<type, 3, 8>(a, align, stream); break;
        case 4: slim_mmv_switch_align<type, 4, 8>(a, align, stream); break;
        case 5: slim_mmv_switch_align<type, 5, 8>(a, align, stream); break;
        case 6: slim_mmv_switch_align<type, 6, 8>(a, align, stream); break;
        case 7: slim_mmv_switch_align<type, 7, 8>(a, align, stream); break;
        case 8: slim_mmv_switch_align<type, 8, 8>(a, align, stream); break;
        default: GGML_ABORT("%s: %d columns", __func__, ncols);
    }
}

// tuning knobs, read once: GGML_CUDA_SLIM_ROWS (rows per tile at batch 1: 4, 8, 16 or 32; default 8),
// GGML_CUDA_SLIM_STAGES (shared-memory tiles in flight per block, 1..4; default 2 for SLIM2, 1 for SLIM3: measured on
// an H200, 7B shape, alternating processes: SLIM3 tg128 +1.5..2.4 % with one stage, SLIM2 -1..2 %),
// GGML_CUDA_SLIM_FUSE (0: no gate/up fusion; default 1), and the mat-vec's copy path (slim_mmv_variant):
// GGML_CUDA_SLIM_BULK (default 1: rows arrive by Hopper bulk copies with mbarrier waits where rows are 16-byte
// aligned, the lean cp.async path elsewhere; 0: the lean path everywhere). H200, 7B shape, alternating processes:
// bulk and lean within noise of each other in tg128; ncu: the fused gate/up kernel 9 % shorter with bulk
// (docs/bench/2026-12-04-h200-expand-bulk.md). Experiments, off by default and not yet measured:
// GGML_CUDA_SLIM_TABLE_EARLY=1 (SLIM_MMV_EARLY_TABLE); GGML_CUDA_SLIM_BALANCE=1 (batch 1: the pair's work items as
// one list, slim_mul_mat_vec's FLAT, and 4- or 8-row tiles by slim_mmv_pick_rows) or =4 (the same with 4-row tiles
// always: test coverage; any other nonzero value picks, and at batch 1 it overrides GGML_CUDA_SLIM_ROWS). An earlier
// experiment, 4-row tiles for every one-tile-per-block matrix (GGML_CUDA_SLIM_ROWS_SMALL=4, never run), was dropped:
// by slim_mmv_rounds it doubles the o-proj's rounds.
static int slim_env_int(const char * name, const int def) {
    const char * v = getenv(name);
    return v ? atoi(v) : def;
}

// rows per tile RB (4, 8, 16 or 32): 8 keeps several tiles per block in flight on LLaMA-sized matrices;
// the fused gate/up pair uses 8 (GGML_CUDA_SLIM_BALANCE may choose 4 at launch: slim_mmv_switch_ncols)
static int slim_mmv_rows_per_tile(const int64_t ncols, const int NM) {
    static const int env_rows = slim_env_int("GGML_CUDA_SLIM_ROWS", 8);
    return ncols == 1 && NM == 1 && (env_rows == 4 || env_rows == 16 || env_rows == 32) ? env_rows : 8;
}

// whether a launch over these operands fits in shared memory with at least one stage
static bool slim_mmv_fits(const ggml_tensor * src0, const int64_t ncols, const int NM) {
    const int G  = (int) (src0->ne[0]/ggml_blck_size(src0->type));
    const int RB = slim_mmv_rows_per_tile(ncols, NM);
    return slim_mmv_stages(G, (int) ggml_row_size(src0->type, src0->ne[0]), (int) ncols, RB, NM, 1) > 0;
}

bool ggml_cuda_slim_use_mmv(const ggml_tensor * src0, const ggml_tensor * src1, const ggml_tensor * dst) {
    return ggml_cuda_type_is_slim(src0->type) && src1->type == GGML_TYPE_F32 && dst->type == GGML_TYPE_F32 &&
           src1->ne[1] <= SLIM_MMV_MAX_COLS && src1->nb[0] == sizeof(float) && dst->nb[0] == sizeof(float) &&
           src0->ne[1] <= INT_MAX && src0->ne[0] <= INT_MAX && src1->ne[2]*src1->ne[3] <= 65535 &&
           slim_mmv_fits(src0, src1->ne[1], 1);
}

bool ggml_cuda_slim_supports_op(const ggml_tensor * op) {
    const ggml_tensor * src0 = op->src[0];
    // the dequantize (cuBLAS path) and GET_ROWS kernels hold one group table in the 48 KiB of shared memory that
    // needs no opt-in, and use 16-byte stores; wider rows or other layouts are left to the CPU backend
    const bool table_fits = (size_t) (src0->ne[0]/ggml_blck_size(src0->type))*sizeof(slim_group) <= 48*1024;
    switch (op->op) {
        case GGML_OP_MUL_MAT:
            return op->src[1]->type == GGML_TYPE_F32 && table_fits &&
                   src0->ne[2] <= 65535 && src0->ne[3] <= 65535;
        case GGML_OP_GET_ROWS:
            return table_fits && op->nb[1] % 16 == 0 && op->nb[2] % 16 == 0 && op->nb[3] % 16 == 0 &&
                   (op->type == GGML_TYPE_F32 || op->type == GGML_TYPE_F16 || op->type == GGML_TYPE_BF16);
        default:
            return false;
    }
}

bool ggml_cuda_slim_should_fuse_glu(const ggml_tensor * gate, const ggml_tensor * up, const ggml_tensor * glu) {
    static const bool enabled = slim_env_int("GGML_CUDA_SLIM_FUSE", 1) != 0;
    const ggml_tensor * w_gate = gate->src[0];
    const ggml_tensor * w_up   = up->src[0];
    return enabled && gate->op == GGML_OP_MUL_MAT && up->op == GGML_OP_MUL_MAT &&
           ggml_cuda_type_is_slim(w_up->type) && w_gate->type == w_up->type &&
           ggml_are_same_shape(w_gate, w_up) && ggml_are_same_stride(w_gate, w_up) && gate->src[1] == up->src[1] &&
           glu->op == GGML_OP_GLU && ggml_get_glu_op(glu) == GGML_GLU_OP_SWIGLU && !ggml_get_op_params_i32(glu, 1) &&
           glu->src[0] == gate && glu->src[1] == up && ggml_are_same_shape(glu, up) &&
           ggml_cuda_slim_use_mmv(w_up, up->src[1], glu) && up->src[1]->ne[1] == 1 &&
           slim_mmv_fits(w_up, 1, 2);
}

// dst = src0 x, or with src0_up: dst = silu(src0 x) * (src0_up x) (src0 the gate).
// yq_pre / yds_pre: src1 already in the activation layout (a fused producer wrote it: ggml_cuda_slim_try_fuse);
// nullptr: src1 is quantized here. resid: dst = src0 x + resid (a fused residual ADD; same shape as dst)
static void slim_mul_mat_vec_cuda(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src0_up,
        const ggml_tensor * src1, ggml_tensor * dst, const int8_t * yq_pre = nullptr, const float2 * yds_pre = nullptr,
        const ggml_tensor * resid = nullptr) {
    GGML_TENSOR_BINARY_OP_LOCALS;
    GGML_ASSERT(ggml_cuda_slim_use_mmv(src0, src1, dst));
    GGML_ASSERT(ne12 % ne02 == 0 && ne13 % ne03 == 0);
    GGML_ASSERT(ne10 % 32 == 0);

    static const int env_stages = slim_env_int("GGML_CUDA_SLIM_STAGES", 0); // 0: the type's default
    static const int env_bulk   = slim_env_int("GGML_CUDA_SLIM_BULK", 1);
    static const int env_early  = slim_env_int("GGML_CUDA_SLIM_TABLE_EARLY", 0);
    static const int env_balance = slim_env_int("GGML_CUDA_SLIM_BALANCE", 0);

    cudaStream_t stream = ctx.stream();
    const int64_t nch = ne12*ne13;
    GGML_ASSERT(nch <= 65535);

    // activations -> int8 (permuted) + per-32 (d, sum), once for both matrices of a fused pair
    ggml_cuda_pool_alloc<int8_t> yq (ctx.pool());
    ggml_cuda_pool_alloc<float2> yds(ctx.pool());
    if (yq_pre) {
        GGML_ASSERT(nch == 1 && yds_pre);
    } else {
        yq.alloc(nch*ne11*ne10);
        yds.alloc(nch*ne11*(ne10/32));
        const int threads = 256;
        const dim3 grid((ne10 + threads - 1)/threads, ne11, nch);
        const ggml_cuda_kernel_launch_params params(grid, dim3(threads, 1, 1), 0, stream);
        ggml_cuda_kernel_launch(slim_quantize_act, params, (const float *) src1->data, yq.get(), yds.get(),
            (int) ne10, (int) ne11, (int) ne12, (int64_t) (nb11/sizeof(float)), (int64_t) (nb12/sizeof(float)),
            (int64_t) (nb13/sizeof(float)));
    }

    const int    G         = ne00/ggml_blck_size(src0->type);
    const size_t row_bytes = ggml_row_size(src0->type, ne00);
    const int rows_per_tile = slim_mmv_rows_per_tile(ne11, src0_up ? 2 : 1);
    const bool slim3 = src0->type == GGML_TYPE_SLIM3_G64 || src0->type == GGML_TYPE_SLIM3_G128;
    const int def_stages = slim3 ? 1 : 2;
    const int nstages = std::max(1, std::min(SLIM_MMV_MAX_STAGES, env_stages > 0 ? env_stages : def_stages));

    auto aligned = [&](const size_t n) {
        const bool bases = (uintptr_t) src0->data % n == 0 && (!src0_up || (uintptr_t) src0_up->data % n == 0);
        return bases && nb01 % n == 0 && nb02 % n == 0 && nb03 % n == 0 && row_bytes % n == 0 &&
               (4*(size_t) G) % n == 0;
    };
    const int align = aligned(16) ? 16 : aligned(8) ? 8 : 4;

    slim_mmv_args a;
    a.x = (const char *) src0->data; a.x_up = src0_up ? (const char *) src0_up->data : nullptr;
    a.yq = yq_pre ? yq_pre : yq.get(); a.yds = yds_pre ? yds_pre : yds.get(); a.dst = (float *) dst->data;
    a.ne00 = ne00; a.nrows = ne01; a.stride_row = nb01;
    a.ne12 = ne12; a.r2 = ne12/ne02; a.r3 = ne13/ne03; a.nb02 = nb02; a.nb03 = nb03;
    a.stride_col_dst = nb1/sizeof(float); a.stride_ch2_dst = nb2/sizeof(float); a.stride_ch3_dst = nb3/sizeof(float);
    a.nch = nch; a.nstages = nstages;
    GGML_ASSERT(!resid || (nch == 1 && !src0_up && ggml_are_same_shape(resid, dst) && resid->nb[0] == sizeof(float)));
    a.resid = resid ? (const float *) resid->data : nullptr;
    a.stride_col_resid = resid ? resid->nb[1]/sizeof(float) : 0;
    a.variant = env_bulk ? SLIM_MMV_BULK | (env_early ? SLIM_MMV_EARLY_TABLE : 0) : 0;

    switch (src0->type) {
        case GGML_TYPE_SLIM2_G64:  slim_mmv_switch_ncols<GGML_TYPE_SLIM2_G64> (a, ne11, rows_per_tile, align, env_balance, stream); break;
        case GGML_TYPE_SLIM2_G128: slim_mmv_switch_ncols<GGML_TYPE_SLIM2_G128>(a, ne11, rows_per_tile, align, env_balance, stream); break;
        case GGML_TYPE_SLIM3_G64:  slim_mmv_switch_ncols<GGML_TYPE_SLIM3_G64> (a, ne11, rows_per_tile, align, env_balance, stream); break;
        case GGML_TYPE_SLIM3_G128: slim_mmv_switch_ncols<GGML_TYPE_SLIM3_G128>(a, ne11, rows_per_tile, align, env_balance, stream); break;
        default: GGML_ABORT("%s: not a SLIM type", __func__);
    }
}

void ggml_cuda_mul_mat_vec_slim(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst) {
    slim_mul_mat_vec_cuda(ctx, src0, nullptr, src1, dst);
}

void ggml_cuda_mul_mat_vec_slim_glu(ggml_backend_cuda_context & ctx, const ggml_tensor * gate, const ggml_tensor * up,
        ggml_tensor * glu) {
    GGML_ASSERT(ggml_cuda_slim_should_fuse_glu(gate, up, glu));
    slim_mul_mat_vec_cuda(ctx, gate->src[0], up->src[0], up->src[1], glu);
}

// ---------------------------------------------------------------------------------------------------------------
// RMSNorm fused with the mat-vec(s) that read it (decode): the norm kernel writes the activations already in the
// mat-vec's int8 layout, a launch and an activation quantization fewer per norm:
//   RMS_NORM, MUL, MUL_MAT                       (a fused attn_qkv, or the first of separate q/k/v)
//   RMS_NORM, MUL, MUL_MAT, MUL_MAT, GLU         (ffn_gate + ffn_up + SwiGLU, the fused pair)
// The MUL's f32 output is written only when a node outside the fusion reads it.
// (A third fusion, the gate/up kernel quantizing its SwiGLU output for ffn_down, measured no faster on an H200 and
// was removed: docs/bench/2026-12-04-h200-fusions.md.)

#define SLIM_NORM_THREADS 256

// y = x * rsqrt(mean(x^2) + eps) * w per row (as ggml-cuda's rms_norm_f32 fused with MUL computes it), then y in the
// mat-vec's activation layout (slim_quantize_act's): int8 in the permuted order + per-32 (d, sum). y_ptr may be null.
// Grid (ceil(ncols/32 / warps), rows): every block reduces the whole row (the same code and order in every block, so
// one scale per row) and quantizes one 32-block per warp: as parallel as slim_quantize_act. (One block per row, as
// the stock norm kernel, left the quantization of a 4096-wide row to one multiprocessor: decode 15 % slower.)
static __global__ void __launch_bounds__(SLIM_NORM_THREADS) slim_rms_norm_quantize(
        const float * x_ptr, const int64_t stride_x, const float * w, const float eps, const int ncols,
        float * y_ptr, const int64_t stride_y, int8_t * yq, float2 * yds) {
    constexpr int NW = SLIM_NORM_THREADS/WARP_SIZE;
    __shared__ float s_sum[NW];
    ggml_cuda_pdl_lc();
    const int row  = blockIdx.y;
    const int warp = threadIdx.x / WARP_SIZE;
    const int lane = threadIdx.x % WARP_SIZE;
    const float * x = x_ptr + row*stride_x;

    ggml_cuda_pdl_sync();
    float ss = 0.0f;
#pragma unroll 4
    for (int col = threadIdx.x; col < ncols; col += SLIM_NORM_THREADS) {
        const float xi = x[col];
        ss += xi * xi;
    }
    ss = warp_reduce_sum(ss);
    if (lane == 0) {
        s_sum[warp] = ss;
    }
    __syncthreads();
    ss = warp_reduce_sum(lane < NW ? s_sum[lane] : 0.0f);
    const float scale = rsqrtf(ss / ncols + eps);

    const int c = blockIdx.x*NW + warp; // this warp's 32-block
    if (c >= ncols/WARP_SIZE) {
        return;
    }
    const int   col = c*WARP_SIZE + lane;
    const float yi  = scale * x[col] * w[col];
    if (y_ptr) {
        y_ptr[row*stride_y + col] = yi;
    }
    const float amax = warp_reduce_max(fabsf(yi));
    const float sum  = warp_reduce_sum(yi);
    const float d    = amax / 127.0f;
    yq[(int64_t) row*ncols + c*WARP_SIZE + slim_act_pos(lane)] = (int8_t) (amax == 0.0f ? 0 : __float2int_rn(yi / d));
    if (lane == 0) {
        yds[(int64_t) row*(ncols/WARP_SIZE) + c] = make_float2(d, sum);
    }
}

// RMS_NORM -> MUL by a weight vector, on rows of f32 that the mat-vec's activation layout can take
static bool slim_norm_mul_fusable(const ggml_tensor * norm, const ggml_tensor * mul) {
    if (norm->op != GGML_OP_RMS_NORM || !mul || mul->op != GGML_OP_MUL) {
        return false;
    }
    const ggml_tensor * w = mul->src[0] == norm ? mul->src[1] : mul->src[1] == norm ? mul->src[0] : nullptr;
    const ggml_tensor * x = norm->src[0];
    return w && x->type == GGML_TYPE_F32 && norm->type == GGML_TYPE_F32 && mul->type == GGML_TYPE_F32 &&
           w->type == GGML_TYPE_F32 && ggml_is_contiguous(w) && w->ne[0] == x->ne[0] && ggml_nrows(w) == 1 &&
           ggml_are_same_shape(mul, norm) && x->ne[2] == 1 && x->ne[3] == 1 && x->ne[1] <= SLIM_MMV_MAX_COLS &&
           x->ne[0] % 32 == 0 && x->nb[0] == sizeof(float) && mul->nb[0] == sizeof(float) && x->ne[0] <= INT_MAX;
}

// a mat-vec over a SLIM weight that reads `act` (one channel)
static bool slim_mmv_reads(const ggml_tensor * mm, const ggml_tensor * act) {
    return mm && mm->op == GGML_OP_MUL_MAT && mm->src[1] == act && ggml_cuda_type_is_slim(mm->src[0]->type) &&
           act->ne[2] == 1 && act->ne[3] == 1 && ggml_cuda_slim_use_mmv(mm->src[0], act, mm);
}

static bool slim_ranges_overlap(const ggml_tensor * a, const ggml_tensor * b) {
    const int64_t a0 = (int64_t) a->data, a1 = a0 + ggml_backend_buft_get_alloc_size(a->buffer->buft, a);
    const int64_t b0 = (int64_t) b->data, b1 = b0 + ggml_backend_buft_get_alloc_size(b->buffer->buft, b);
    return a0 < b1 && b0 < a1;
}

// nodes [i, i + count) can run as one: intermediates not in `outputs` have no reader outside, and no output's
// memory overlaps a tensor the fusion reads from outside (the kernels write outputs before the last read)
static bool slim_can_fuse(const ggml_cgraph * cgraph, const int i, const int count, const ggml_op * ops,
        const int * outputs, const int n_outputs) {
    if (!ggml_can_fuse_subgraph(cgraph, i, count, ops, outputs, n_outputs)) {
        return false;
    }
    for (int o = 0; o < n_outputs; ++o) {
        const ggml_tensor * out = cgraph->nodes[outputs[o]];
        for (int j = i; j < i + count; ++j) {
            for (int s = 0; s < GGML_MAX_SRC; ++s) {
                const ggml_tensor * src = cgraph->nodes[j]->src[s];
                if (!src || src->op == GGML_OP_NONE || !src->buffer) {
                    continue; // weights and graph inputs are not written by the graph
                }
                bool internal = false;
                for (int k = i; k < j; ++k) {
                    internal = internal || cgraph->nodes[k] == src;
                }
                if (!internal && slim_ranges_overlap(out, src)) {
                    return false;
                }
            }
        }
    }
    return true;
}

// whether node idx is read by nodes outside [i, i + count) (or is a graph output)
static bool slim_read_outside(const ggml_cgraph * cgraph, const int idx, const int i, const int count) {
    const ggml_tensor * t = cgraph->nodes[idx];
    int inside = 0;
    for (int j = i; j < i + count; ++j) {
        for (int s = 0; s < GGML_MAX_SRC; ++s) {
            inside += cgraph->nodes[j]->src[s] == t;
        }
    }
    return ggml_node_get_use_count(cgraph, idx) > inside || (t->flags & GGML_TENSOR_FLAG_OUTPUT);
}

// MUL_MAT (SLIM mat-vec) + ADD of a residual of the same shape (attn_output + the layer input, ffn_down + the FFN
// input): the mat-vec's epilogue adds it, one ADD launch fewer. The ADD may be in place on the residual (each
// element is read and written by the same thread), not on anything else the mat-vec reads.
static int slim_try_fuse_add(ggml_backend_cuda_context & ctx, const ggml_cgraph * cgraph, const int i) {
    ggml_tensor * mm  = cgraph->nodes[i];
    ggml_tensor * add = i + 1 < cgraph->n_nodes ? cgraph->nodes[i + 1] : nullptr;
    if (!add || add->op != GGML_OP_ADD || !slim_mmv_reads(mm, mm->src[1]) || mm->src[0]->ne[2]*mm->src[0]->ne[3] != 1) {
        return 0;
    }
    const ggml_tensor * r = add->src[0] == mm ? add->src[1] : add->src[1] == mm ? add->src[0] : nullptr;
    if (!r || r == mm || r->type != GGML_TYPE_F32 || add->type != GGML_TYPE_F32 || !ggml_are_same_shape(r, mm) ||
        !ggml_are_same_shape(add, mm) || r->nb[0] != sizeof(float) || add->nb[0] != sizeof(float) ||
        !ggml_are_same_stride(add, mm)) {
        return 0;
    }
    const ggml_op ops[2] = { GGML_OP_MUL_MAT, GGML_OP_ADD };
    const int outputs[1] = { i + 1 };
    if (!ggml_can_fuse_subgraph(cgraph, i, 2, ops, outputs, 1)) {
        return 0;
    }
    const bool in_place = add->data == r->data && ggml_are_same_stride(add, r);
    if (!add->buffer || !r->buffer || !mm->src[1]->buffer) {
        return 0; // the overlap checks need each tensor's buffer type
    }
    if (slim_ranges_overlap(add, mm->src[1]) || (!in_place && slim_ranges_overlap(add, r))) {
        return 0;
    }
    slim_mul_mat_vec_cuda(ctx, mm->src[0], nullptr, mm->src[1], add, nullptr, nullptr, r);
    return 2;
}

int ggml_cuda_slim_try_fuse(ggml_backend_cuda_context & ctx, const ggml_cgraph * cgraph, const int i) {
    // the residual ADD into the mat-vec's epilogue; GGML_CUDA_SLIM_FUSE_ADD=0 turns it off (A/B)
    static const bool fuse_add = slim_env_int("GGML_CUDA_SLIM_FUSE_ADD", 1) != 0;
    if (fuse_add && cgraph->nodes[i]->op == GGML_OP_MUL_MAT) {
        return slim_try_fuse_add(ctx, cgraph, i);
    }
    // GGML_CUDA_SLIM_FUSE_NORM=0 turns this off (A/B); GGML_CUDA_SLIM_FUSE=0 the gate/up pair (then the norm fuses
    // with the gate's mat-vec alone)
    static const bool fuse_norm = slim_env_int("GGML_CUDA_SLIM_FUSE_NORM", 1) != 0;
    static const bool fuse_glu  = slim_env_int("GGML_CUDA_SLIM_FUSE", 1) != 0;
    const int n = cgraph->n_nodes;
    if (!fuse_norm || i + 2 >= n || !slim_norm_mul_fusable(cgraph->nodes[i], cgraph->nodes[i + 1])) {
        return 0;
    }
    ggml_tensor * norm = cgraph->nodes[i];
    ggml_tensor * mul  = cgraph->nodes[i + 1];
    ggml_tensor * a    = cgraph->nodes[i + 2];
    ggml_tensor * b    = i + 3 < n ? cgraph->nodes[i + 3] : nullptr;
    ggml_tensor * glu  = i + 4 < n ? cgraph->nodes[i + 4] : nullptr;

    // the consumer: the gate/up pair + GLU, else one mat-vec
    const bool pair = fuse_glu && glu && glu->op == GGML_OP_GLU && a->op == GGML_OP_MUL_MAT && b->op == GGML_OP_MUL_MAT &&
        ((glu->src[0] == a && glu->src[1] == b) || (glu->src[0] == b && glu->src[1] == a)) &&
        ggml_cuda_slim_should_fuse_glu(glu->src[0], glu->src[1], glu) && glu->src[1]->src[1] == mul;
    if (!pair && !slim_mmv_reads(a, mul)) {
        return 0;
    }
    const ggml_op ops_mm[3]   = { GGML_OP_RMS_NORM, GGML_OP_MUL, GGML_OP_MUL_MAT };
    const ggml_op ops_pair[5] = { GGML_OP_RMS_NORM, GGML_OP_MUL, GGML_OP_MUL_MAT, GGML_OP_MUL_MAT, GGML_OP_GLU };
    const int count = pair ? 5 : 3;
    const bool mul_out = slim_read_outside(cgraph, i + 1, i, count);
    const int outputs[2] = { i + count - 1, i + 1 };
    if (!slim_can_fuse(cgraph, i, count, pair ? ops_pair : ops_mm, outputs, mul_out ? 2 : 1)) {
        return 0;
    }

    const ggml_tensor * x = norm->src[0];
    const ggml_tensor * w = mul->src[0] == norm ? mul->src[1] : mul->src[0];
    const int64_t ncols = x->ne[0];
    const int64_t nrows = x->ne[1];
    float eps;
    memcpy(&eps, norm->op_params, sizeof(float));
    cudaStream_t stream = ctx.stream();
    ggml_cuda_pool_alloc<int8_t> yq (ctx.pool(), nrows*ncols);
    ggml_cuda_pool_alloc<float2> yds(ctx.pool(), nrows*(ncols/32));
    constexpr int nw = SLIM_NORM_THREADS/WARP_SIZE;
    const dim3 grid((ncols/32 + nw - 1)/nw, nrows, 1);
    const ggml_cuda_kernel_launch_params params(grid, dim3(SLIM_NORM_THREADS, 1, 1), 0, stream);
    ggml_cuda_kernel_launch(slim_rms_norm_quantize, params, (const float *) x->data, (int64_t) (x->nb[1]/sizeof(float)),
        (const float *) w->data, eps, (int) ncols, mul_out ? (float *) mul->data : (float *) nullptr,
        (int64_t) (mul->nb[1]/sizeof(float)), yq.get(), yds.get());

    if (pair) {
        const ggml_tensor * gate = glu->src[0];
        const ggml_tensor * up   = glu->src[1];
        slim_mul_mat_vec_cuda(ctx, gate->src[0], up->src[0], mul, glu, yq.get(), yds.get());
    } else {
        slim_mul_mat_vec_cuda(ctx, a->src[0], nullptr, mul, a, yq.get(), yds.get());
    }
    return count;
}
