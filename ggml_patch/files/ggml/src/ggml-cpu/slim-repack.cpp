// slim2gguf: ggml-cpu's extra buffer type for the SLIM types ("CPU_SLIM"), modelled on repack.cpp's CPU_REPACK.
//
// A 2-D SLIM weight whose only use is MUL_MAT (llama's loader asks supports_op) is stored in tiles of 8 rows
// (ggml_slim_repack_8, slim.c) when it is set, and MUL_MAT runs ggml_slim_gemm_8 over them: activations quantized
// to plain Q8_1 once, each 8-row tile against 4 columns at a time (1..3 for the rest, 1 in decode). Tiles are a
// permutation of the file's bytes (get_tensor gives them back), so the numbers are those of the vec_dot path up
// to fp32 summation order. Weights with a row count not a multiple of 8 stay in the plain CPU buffer (vec_dot).

#include "ggml-backend-impl.h"
#include "ggml-cpu-impl.h"
#include "ggml-cpu.h"
#include "ggml-impl.h"
#include "traits.h"
#include "ggml-slim.h"
#include "slim.h"
#include "slim-repack.h"

#include <cstring>

namespace ggml::cpu::slim {

static bool is_tileable(const struct ggml_tensor * t) {
    return ggml_is_slim_type(t->type) && ggml_n_dims(t) == 2 && t->ne[1] % 8 == 0 &&
           t->nb[1] == ggml_row_size(t->type, t->ne[0]); // contiguous rows: tile t is bytes [8t, 8t+8) rows
}

class tensor_traits : public ggml::cpu::tensor_traits {
    bool work_size(int /* n_threads */, const struct ggml_tensor * op, size_t & size) override {
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        size = ggml_row_size(GGML_TYPE_Q8_1, op->src[1]->ne[0]) * ggml_nrows(op->src[1]);
        return true;
    }

    bool compute_forward(struct ggml_compute_params * params, struct ggml_tensor * op) override {
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        forward_mul_mat(params, op);
        return true;
    }

    static void forward_mul_mat(struct ggml_compute_params * params, struct ggml_tensor * dst) {
        const struct ggml_tensor * src0 = dst->src[0];
        const struct ggml_tensor * src1 = dst->src[1];

        GGML_TENSOR_BINARY_OP_LOCALS

        const int ith = params->ith;
        const int nth = params->nth;

        GGML_ASSERT(src1->type == GGML_TYPE_F32 && nb10 == sizeof(float));
        GGML_ASSERT(ne0 == ne01 && ne1 == ne11 && ne2 == ne12 && ne3 == ne13);
        GGML_ASSERT(nb0 == sizeof(float));
        GGML_ASSERT(ne02 == 1 && ne03 == 1 && ne01 % 8 == 0);

        // activations: plain Q8_1 rows, column (i11, i12, i13) at flat index i11 + ne11*(i12 + ne12*i13)
        const ggml_from_float_t from_float = ggml_get_type_traits_cpu(GGML_TYPE_Q8_1)->from_float;
        const size_t  col_size = ggml_row_size(GGML_TYPE_Q8_1, ne10);
        const int64_t ncols    = ne11*ne12*ne13;
        char * wdata = (char *) params->wdata;
        GGML_ASSERT(params->wsize >= col_size*ncols);
        for (int64_t ic = ith; ic < ncols; ic += nth) {
            const int64_t i13 = ic/(ne11*ne12), i12 = (ic/ne11) % ne12, i11 = ic % ne11;
            from_float((const float *) ((const char *) src1->data + i11*nb11 + i12*nb12 + i13*nb13),
                       wdata + ic*col_size, ne10);
        }

        // tiles of src0 rows in chunks handed out dynamically; each chunk takes every column of one plane
        const int64_t ntiles  = ne01/8;
        const int64_t nplanes = ne12*ne13;
        int64_t tiles_per_chunk = (ntiles + 4*nth - 1)/(4*nth); // ~4 chunks per thread
        if (tiles_per_chunk < 1) {
            tiles_per_chunk = 1;
        }
        const int64_t nchunk0 = (ntiles + tiles_per_chunk - 1)/tiles_per_chunk;
        const int64_t nchunk  = nchunk0*nplanes;

        if (ith == 0) {
            ggml_threadpool_chunk_set(params->threadpool, nth);
        }
        ggml_barrier(params->threadpool);

        const ggml_slim_gemm_t gemm = ggml_slim_gemm_8(src0->type);
        const size_t tile_size = 8*nb01;
        for (int64_t chunk = ith; chunk < nchunk; chunk = ggml_threadpool_chunk_add(params->threadpool, 1)) {
            const int64_t plane = chunk / nchunk0;
            const int64_t t0    = (chunk % nchunk0)*tiles_per_chunk;
            const int64_t t1    = MIN(t0 + tiles_per_chunk, ntiles);
            const int64_t i12 = plane % ne12, i13 = plane / ne12;
            // 64 columns at a time keep their Q8_1 rows in L2 while the chunk's tiles stream past them
            for (int64_t c0 = 0; c0 < ne11; c0 += 64) {
                const int64_t nr = MIN(64, ne11 - c0);
                gemm((int) ne00, (float *) ((char *) dst->data + c0*nb1 + i12*nb2 + i13*nb3) + 8*t0, nb1/sizeof(float),
                     (const char *) src0->data + t0*tile_size, wdata + (plane*ne11 + c0)*col_size,
                     (int) nr, (int) (8*(t1 - t0)));
            }
        }
    }
};

static tensor_traits traits;

class extra_buffer_type : ggml::cpu::extra_buffer_type {
    bool supports_op(ggml_backend_dev_t, const struct ggml_tensor * op) override {
        return op->op == GGML_OP_MUL_MAT && op->src[0]->buffer &&
               op->src[0]->buffer->buft == ggml_backend_cpu_slim_buffer_type() && is_tileable(op->src[0]) &&
               op->src[1]->type == GGML_TYPE_F32 && op->src[1]->nb[0] == sizeof(float) &&
               (!op->src[1]->buffer || ggml_backend_buft_is_host(op->src[1]->buffer->buft));
    }

    ggml::cpu::tensor_traits * get_tensor_traits(const struct ggml_tensor * op) override {
        if (op->op == GGML_OP_MUL_MAT && op->src[0]->buffer &&
            op->src[0]->buffer->buft == ggml_backend_cpu_slim_buffer_type()) {
            return (ggml::cpu::tensor_traits *) op->src[0]->extra;
        }
        return nullptr;
    }
};

}  // namespace ggml::cpu::slim

static enum ggml_status ggml_backend_cpu_slim_buffer_init_tensor(ggml_backend_buffer_t buffer, struct ggml_tensor * tensor) {
    tensor->extra = ggml::cpu::slim::is_tileable(tensor) ? (void *) &ggml::cpu::slim::traits : nullptr;
    GGML_UNUSED(buffer);
    return GGML_STATUS_SUCCESS;
}

static void ggml_backend_cpu_slim_buffer_set_tensor(ggml_backend_buffer_t buffer, struct ggml_tensor * tensor,
                                                    const void * data, size_t offset, size_t size) {
    if (tensor->extra == nullptr) { // not tiled: plain bytes, the ordinary mul_mat reads them
        memcpy((char *) tensor->data + offset, data, size);
        return;
    }
    GGML_ASSERT(offset == 0);
    GGML_ASSERT(size == ggml_nbytes(tensor));
    if (ggml_slim_repack_8(tensor->type, tensor->ne[0], tensor->ne[1], data, tensor->data) != 0) {
        // rows ggml_slim_check_rows refuses (llama's loader refuses them before this) have no tile layout. Write
        // one that the gemm walks safely and that gives NaN: every group at the average width, d = m = NaN.
        GGML_LOG_ERROR("%s: tensor '%s' has invalid SLIM rows: its products are NaN\n", __func__, tensor->name);
        const int b = ggml_slim_avg_bits(tensor->type);
        const int g = ggml_slim_group_size(tensor->type);
        const uint16_t nan_h = 0x7E00 | (uint16_t) (((b - 1) >> 1) << 15) | (uint16_t) ((b - 1) & 1);
        uint8_t * p   = (uint8_t *) tensor->data;
        uint8_t * end = p + size;
        while (p < end) {
            for (int r = 0; r < 16; ++r) {
                memcpy(p + 2*r, &nan_h, 2);
            }
            memset(p + 32, 0, (size_t) 8*b*g/8);
            p += 32 + (size_t) 8*b*g/8;
        }
    }
    GGML_UNUSED(buffer);
}

static void ggml_backend_cpu_slim_buffer_get_tensor(ggml_backend_buffer_t buffer, const struct ggml_tensor * tensor,
                                                    void * data, size_t offset, size_t size) {
    if (tensor->extra == nullptr) {
        memcpy(data, (const char *) tensor->data + offset, size);
        return;
    }
    GGML_ASSERT(offset == 0);
    GGML_ASSERT(size == ggml_nbytes(tensor));
    ggml_slim_unrepack_8(tensor->type, tensor->ne[0], tensor->ne[1], tensor->data, data); // the file's bytes
    GGML_UNUSED(buffer);
}

static const char * ggml_backend_cpu_slim_buffer_type_get_name(ggml_backend_buffer_type_t buft) {
    return "CPU_SLIM";
    GGML_UNUSED(buft);
}

static ggml_backend_buffer_t ggml_backend_cpu_slim_buffer_type_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    ggml_backend_buffer_t buffer = ggml_backend_buft_alloc_buffer(ggml_backend_cpu_buffer_type(), size);
    if (buffer == nullptr) {
        return nullptr;
    }
    buffer->buft              = buft;
    buffer->iface.init_tensor = ggml_backend_cpu_slim_buffer_init_tensor;
    buffer->iface.set_tensor  = ggml_backend_cpu_slim_buffer_set_tensor;
    buffer->iface.get_tensor  = ggml_backend_cpu_slim_buffer_get_tensor;
    buffer->iface.cpy_tensor  = nullptr;
    return buffer;
}

static size_t ggml_backend_cpu_slim_buffer_type_get_alignment(ggml_backend_buffer_type_t buft) {
    return TENSOR_ALIGNMENT;
    GGML_UNUSED(buft);
}

ggml_backend_buffer_type_t ggml_backend_cpu_slim_buffer_type(void) {
    static struct ggml_backend_buffer_type buft = {
        /* .iface    = */ {
                           /* .get_name         = */ ggml_backend_cpu_slim_buffer_type_get_name,
                           /* .alloc_buffer     = */ ggml_backend_cpu_slim_buffer_type_alloc_buffer,
                           /* .get_alignment    = */ ggml_backend_cpu_slim_buffer_type_get_alignment,
                           /* .get_max_size     = */ nullptr,  // defaults to SIZE_MAX
                           /* .get_alloc_size   = */ nullptr,  // defaults to ggml_nbytes
                           /* .is_host          = */ nullptr,
                           },
        /* .device  = */ ggml_backend_reg_dev_get(ggml_backend_cpu_reg(), 0),
        /* .context = */ new ggml::cpu::slim::extra_buffer_type(),
    };
    return &buft;
}
