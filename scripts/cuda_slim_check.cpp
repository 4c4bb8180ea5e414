// slim2gguf: exactness check of the CUDA SLIM kernels against the Numba reference decoder and ggml-cpu.
//
// Reads case files written by scripts/cuda_slim_cases.py (SLIM rows + their Numba fp32 decode) and, through the
// public ggml backend API (so the real dispatch in ggml-cuda is what gets tested):
//   1. GET_ROWS -> f32 on CUDA and on the CPU: must equal the Numba decode bit for bit
//   2. MUL_MAT with an identity src1 (batch ne00 > 8: dequantize to f16 + cuBLAS): must equal fp16(Numba) bit for bit
//   3. MUL_MAT with random activations, batches 1..8 (mat-vec kernel) and 16, 512 (cuBLAS): CUDA and CPU vs an fp64
//      dot of the Numba rows (NMSE), and CUDA vs CPU
//   4. with the case's NAME.up beside it: a SwiGLU pair, silu(W_gate x) * (W_up x), batch 1 (ggml-cuda runs it as the
//      fused gate/up kernel, each matrix with its own group table) and 2 (unfused): vs fp64, CUDA vs CPU
// Prints one line per case and check; exit 1 if any check fails.
//
// build: g++ -O2 -std=c++17 cuda_slim_check.cpp -I<llama.cpp>/ggml/include -L<bin> -lggml -lggml-base -lggml-cpu -lggml-cuda
// With -DSLIM_CHECK_NO_CUDA (and without -lggml-cuda) only the CPU backend runs: the harness itself, and ggml-cpu
// against Numba, on a machine without a GPU (tests/test_cuda_slim.py).

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#ifndef SLIM_CHECK_NO_CUDA
#include "ggml-cuda.h"
#endif

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>
#include <initializer_list>

struct slim_case {
    int type;
    int64_t ne00;
    int64_t nrows;
    std::vector<uint8_t> data;  // nrows * row_size
    std::vector<float> ref;     // nrows * ne00, Numba decode
};

static bool read_case(const char * path, slim_case & c) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        return false;
    }
    char magic[8];
    int64_t hdr[4];
    bool ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, "SLIMCASE", 8) == 0 && fread(hdr, sizeof(int64_t), 4, f) == 4;
    if (ok) {
        c.type = (int) hdr[0];
        c.ne00 = hdr[1];
        c.nrows = hdr[2];
        c.data.resize(hdr[3]);
        c.ref.resize(c.ne00*c.nrows);
        ok = fread(c.data.data(), 1, c.data.size(), f) == c.data.size() &&
             fread(c.ref.data(), sizeof(float), c.ref.size(), f) == c.ref.size();
    }
    fclose(f);
    return ok;
}

// run one op: src0 (SLIM, given bytes) and src1 (f32 or i32) -> dst f32 on a backend. OP_SWIGLU: src0 is the gate
// and `up` the up projection, dst = silu(src0 src1) * (up src1)
enum op_kind { OP_GET_ROWS, OP_MUL_MAT, OP_SWIGLU };

static std::vector<float> run_op(ggml_backend_t backend, op_kind kind, const slim_case & c,
                                 const void * src1_data, int64_t ne10, int64_t ne11, const slim_case * up = nullptr) {
    ggml_init_params ip = { 8*ggml_tensor_overhead() + ggml_graph_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(ip);
    ggml_tensor * a = ggml_new_tensor_2d(ctx, (ggml_type) c.type, c.ne00, c.nrows);
    ggml_tensor * u = up ? ggml_new_tensor_2d(ctx, (ggml_type) up->type, up->ne00, up->nrows) : nullptr;
    ggml_tensor * b = kind == OP_GET_ROWS ? ggml_new_tensor_1d(ctx, GGML_TYPE_I32, ne10)
                                          : ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne10, ne11);
    ggml_tensor * out = kind == OP_GET_ROWS ? ggml_get_rows(ctx, a, b)
                      : kind == OP_MUL_MAT  ? ggml_mul_mat(ctx, a, b)
                      : ggml_swiglu_split(ctx, ggml_mul_mat(ctx, a, b), ggml_mul_mat(ctx, u, b));
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
    ggml_backend_tensor_set(a, c.data.data(), 0, ggml_nbytes(a));
    if (u) {
        ggml_backend_tensor_set(u, up->data.data(), 0, ggml_nbytes(u));
    }
    ggml_backend_tensor_set(b, src1_data, 0, ggml_nbytes(b));
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    if (!ggml_backend_supports_op(backend, out)) {
        fprintf(stderr, "backend %s does not support %s\n", ggml_backend_name(backend), ggml_op_desc(out));
        ggml_backend_buffer_free(buf);
        ggml_free(ctx);
        return {};
    }
    ggml_backend_graph_compute(backend, gf);
    std::vector<float> res(ggml_nelements(out));
    ggml_backend_tensor_get(out, res.data(), 0, ggml_nbytes(out));
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    return res;
}

static int64_t count_diff_bits(const float * x, const float * y, int64_t n) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        bad += memcmp(&x[i], &y[i], sizeof(float)) != 0;
    }
    return bad;
}

// W x in fp64 from the Numba rows: [nc][nrows]
static std::vector<double> dot_ref(const slim_case & c, const std::vector<float> & x, int64_t nc) {
    std::vector<double> ref(c.nrows*nc);
    for (int64_t j = 0; j < nc; ++j) {
        for (int64_t i = 0; i < c.nrows; ++i) {
            double s = 0;
            for (int64_t k = 0; k < c.ne00; ++k) {
                s += (double) c.ref[i*c.ne00 + k] * x[j*c.ne00 + k];
            }
            ref[j*c.nrows + i] = s;
        }
    }
    return ref;
}

static double nmse(const std::vector<float> & x, const std::vector<double> & ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double d = (double) x[i] - ref[i];
        num += d*d;
        den += ref[i]*ref[i];
    }
    return num/den;
}

static double nmse_f(const std::vector<float> & x, const std::vector<float> & y) {
    std::vector<double> yd(y.begin(), y.end());
    return nmse(x, yd);
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s case.bin...\n", argv[0]);
        return 2;
    }
#ifdef SLIM_CHECK_NO_CUDA
    ggml_backend_t cuda = nullptr; // CPU only: every "CUDA" check below is left out
#else
    ggml_backend_t cuda = ggml_backend_cuda_init(0);
    if (!cuda) {
        fprintf(stderr, "no CUDA backend\n");
        return 2;
    }
#endif
    ggml_backend_t cpu  = ggml_backend_cpu_init();
    if (!cpu) {
        fprintf(stderr, "no CPU backend\n");
        return 2;
    }
    const double max_nmse = 5e-4; // test-backend-ops' MUL_MAT bound
    // the pair multiplies two quantized mat-vecs (and silu bends the gate's error): the bound of test-backend-ops'
    // SLIM_NORM_CHAIN (two quantized mat-vecs in a row); ggml-cpu reached 2.8e-4 on these cases
    const double max_nmse_pair = 1e-3;

    int failures = 0;
    auto report = [&](const char * what, bool ok, const std::string & detail) {
        printf("  %-34s %s  %s\n", what, ok ? "ok  " : "FAIL", detail.c_str());
        failures += !ok;
    };
    char buf[256];

    // CUDA and CPU vs an fp64 reference (NMSE), and CUDA vs CPU; the CPU alone without CUDA
    auto compare = [&](const std::string & what, op_kind kind, const slim_case & c, const slim_case * up,
                       const std::vector<float> & x, int64_t nc, const std::vector<double> & ref) {
        const double bound = kind == OP_SWIGLU ? max_nmse_pair : max_nmse;
        std::vector<float> g = cuda ? run_op(cuda, kind, c, x.data(), c.ne00, nc, up) : std::vector<float>();
        std::vector<float> h = run_op(cpu, kind, c, x.data(), c.ne00, nc, up);
        const double e_cpu = h.empty() ? INFINITY : nmse(h, ref);
        if (!cuda) {
            snprintf(buf, sizeof(buf), "NMSE vs fp64: CPU %.2e (no CUDA)", e_cpu);
            report(what.c_str(), e_cpu <= bound, buf);
            return;
        }
        const double e_cuda = g.empty() ? INFINITY : nmse(g, ref);
        const double e_cc   = g.empty() || h.empty() ? INFINITY : nmse_f(g, h);
        bool finite = !g.empty();
        for (float v : g) {
            finite = finite && std::isfinite(v);
        }
        snprintf(buf, sizeof(buf), "NMSE vs fp64: CUDA %.2e  CPU %.2e  CUDA vs CPU %.2e%s", e_cuda, e_cpu, e_cc,
                 finite ? "" : "  (non-finite output)");
        report(what.c_str(), finite && e_cuda <= bound && e_cc <= bound, buf);
    };

    for (int ic = 1; ic < argc; ++ic) {
        slim_case c;
        if (!read_case(argv[ic], c)) {
            fprintf(stderr, "cannot read %s\n", argv[ic]);
            return 2;
        }
        printf("%s: %s ne00=%lld rows=%lld\n", argv[ic], ggml_type_name((ggml_type) c.type), (long long) c.ne00,
               (long long) c.nrows);
        const int64_t n = c.ne00*c.nrows;

        // 1. GET_ROWS (all rows, reversed order) vs Numba, bit for bit
        {
            std::vector<int32_t> idx(c.nrows);
            for (int64_t i = 0; i < c.nrows; ++i) {
                idx[i] = (int32_t) (c.nrows - 1 - i);
            }
            std::vector<float> want(n);
            for (int64_t i = 0; i < c.nrows; ++i) {
                memcpy(&want[i*c.ne00], &c.ref[idx[i]*c.ne00], c.ne00*sizeof(float));
            }
            for (ggml_backend_t be : { cuda, cpu }) {
                if (!be) {
                    continue;
                }
                std::vector<float> got = run_op(be, OP_GET_ROWS, c, idx.data(), c.nrows, 1);
                const int64_t bad = got.empty() ? n : count_diff_bits(got.data(), want.data(), n);
                snprintf(buf, sizeof(buf), "%lld of %lld values differ", (long long) bad, (long long) n);
                report(be == cuda ? "GET_ROWS CUDA == Numba (bits)" : "GET_ROWS CPU  == Numba (bits)", bad == 0, buf);
            }
        }

        // 2. dequantize to f16 (cuBLAS path): W x I == fp16(W) exactly
        if (cuda && c.ne00 <= 4096) {
            std::vector<float> eye(c.ne00*c.ne00, 0.0f);
            for (int64_t i = 0; i < c.ne00; ++i) {
                eye[i*c.ne00 + i] = 1.0f;
            }
            std::vector<float> got = run_op(cuda, OP_MUL_MAT, c, eye.data(), c.ne00, c.ne00);
            // dst[j][i] (ne0 = nrows) = W[i][j]
            int64_t bad = got.empty() ? n : 0;
            for (int64_t j = 0; j < c.ne00 && !got.empty(); ++j) {
                for (int64_t i = 0; i < c.nrows; ++i) {
                    const float want = ggml_fp16_to_fp32(ggml_fp32_to_fp16(c.ref[i*c.ne00 + j]));
                    bad += memcmp(&got[j*c.nrows + i], &want, sizeof(float)) != 0;
                }
            }
            snprintf(buf, sizeof(buf), "%lld of %lld values differ", (long long) bad, (long long) n);
            report("dequant f16 (W x I) == fp16(Numba)", bad == 0, buf);
        }

        // 3. MUL_MAT with random activations
        std::mt19937 rng(1234 + ic);
        std::normal_distribution<float> dist(0.0f, 1.0f);
        auto activations = [&](int64_t nc) {
            std::vector<float> x(c.ne00*nc);
            for (float & v : x) {
                v = dist(rng);
            }
            return x;
        };
        for (int64_t nc : { 1, 2, 3, 4, 5, 8, 16, 512 }) {
            const std::vector<float> x = activations(nc);
            const std::vector<double> ref = dot_ref(c, x, nc);
            std::string what = "MUL_MAT batch " + std::to_string(nc) + (nc <= 8 ? " (mat-vec)" : " (cuBLAS)");
            compare(what, OP_MUL_MAT, c, nullptr, x, nc, ref);
        }

        // 4. SwiGLU pair with the case's up matrix (NAME.up beside NAME.bin)
        std::string up_path = argv[ic];
        if (up_path.size() > 4 && up_path.compare(up_path.size() - 4, 4, ".bin") == 0) {
            up_path.replace(up_path.size() - 4, 4, ".up");
        }
        slim_case up;
        if (up_path != argv[ic] && read_case(up_path.c_str(), up)) {
            if (up.type != c.type || up.ne00 != c.ne00 || up.nrows != c.nrows) {
                fprintf(stderr, "%s: not the shape and type of its gate\n", up_path.c_str());
                return 2;
            }
            for (int64_t nc : { 1, 2 }) {
                const std::vector<float> x = activations(nc);
                std::vector<double> ref = dot_ref(c, x, nc);
                const std::vector<double> ru = dot_ref(up, x, nc);
                for (size_t i = 0; i < ref.size(); ++i) {
                    ref[i] = ref[i] / (1.0 + std::exp(-ref[i])) * ru[i]; // silu(gate) * up
                }
                std::string what = "SwiGLU pair batch " + std::to_string(nc) + (nc == 1 ? " (fused)" : " (apart)");
                compare(what, OP_SWIGLU, c, &up, x, nc, ref);
            }
        }
    }
    printf("%s: %d failed checks\n", failures ? "FAIL" : "PASS", failures);
    if (cuda) {
        ggml_backend_free(cuda);
    }
    ggml_backend_free(cpu);
    return failures ? 1 : 0;
}
