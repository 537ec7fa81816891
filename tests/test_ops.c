// tests/test_ops.c: every op of ops.h against PyTorch, and the CUDA kernels against the CPU.
//
// Two kinds of test share one runner per op (`run_<op>(backend, ...)`, which copies host inputs
// to the backend, calls the dispatcher, and copies the result back):
//   ops_<op>        the op on the runner's backend (CPU by default, `--backend cuda` for the GPU)
//                   against tests/golden/ops.safetensors, made by scripts/make_golden_ops.py from
//                   torch on random inputs. The case hyperparameters below must match the script.
//   ops_16bit_cpu   every op with F16 and BF16 storage on the CPU: bit for bit the f32 reference
//                   on the rounded inputs, rounded (the contract of ops.h for 16-bit storage)
//   ops_cuda_<op>   CUDA against CPU on fresh random inputs of larger sizes, f32; skipped, and
//                   said so, without a CUDA build and device.
//   ops_cuda_16bit  CUDA against CPU with F16 and BF16 storage (the fast path: tensor-core GEMMs,
//                   the FlashAttention kernel, the fused group norm + SiLU).
//
// Tolerances (atol + rtol * |want|), each stated at its check with the reason:
//   TOL_EXACT     layout ops move values: they must be bit-identical;
//   TOL_ELEM      elementwise math: expf/erff/tanhf differ from torch's vectorised versions by
//                 an ulp or two;
//   TOL_REDUCE    norms and softmax: our double-accumulated statistics vs torch's f32 ones;
//   TOL_GEMM      products over K <= 300 terms: different summation orders, errors ~ sqrt(K) ulp;
//   TOL_CUDA_*    the GPU: other summation orders again (cuBLAS, block reductions) and the device's
//                 expf/erff; TF32 stays off, so f32 accuracy is expected.
//   tol_16bit()   CUDA against CPU in 16 bits: the f32 results differ as above, and that can move
//                 a rounding to the next 16-bit value, so one or two units in the last place of
//                 dt (2^-11 relative for f16, 2^-8 for bf16) are allowed; more where ops.h says
//                 the kernel rounds an intermediate.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../ops.h"
#include "check.h"

typedef struct {
    float atol, rtol;
} Tol;
static const Tol TOL_EXACT = {0.0f, 0.0f};
static const Tol TOL_ELEM = {1e-6f, 1e-5f};
static const Tol TOL_REDUCE = {1e-5f, 1e-4f};
static const Tol TOL_GEMM = {1e-5f, 1e-4f};
static const Tol TOL_CUDA_ELEM = {1e-6f, 1e-5f};
static const Tol TOL_CUDA_GEMM = {1e-4f, 1e-4f};

// ----------------------------------------------------------------------------
// Helpers

// Copies n backend floats to host memory the caller owns.
static void fetch(float* host, const float* dev, size_t n) { copy_to_host(host, dev, sizeof(float) * n); }

// The golden file, opened once per test.
static SafeTensors g_golden;
static int open_ops_golden(void) { return golden_open(&g_golden, "ops.safetensors"); }
static float* golden(const char* name) { return golden_f32(&g_golden, name, NULL); }
static size_t golden_numel(const char* name) {
    const SafeTensor* t = safetensors_find(&g_golden, name);
    return t ? safetensor_numel(t) : 0;
}
static int64_t golden_dim(const char* name, int d) {
    const SafeTensor* t = safetensors_find(&g_golden, name);
    return t && d < t->rank ? t->shape[d] : 0;
}

// Compares out with the golden `<name>.out` (or any golden tensor) and frees out.
static void expect_golden(const char* label, float* out, const char* golden_name, Tol tol) {
    size_t n = golden_numel(golden_name);
    float* want = golden(golden_name);
    if (want) check_close(label, out, want, n, tol.atol, tol.rtol);
    free(want);
    free(out);
}

// ----------------------------------------------------------------------------
// Runners: one per op, host f32 in, host f32 out, on backend `be` with storage type `dt`. For a
// 16-bit dt the inputs are rounded to dt on the host before they go to the backend, and the
// result is widened back to f32, so every runner compares like with like.

static float* run_matmul(Backend be, DType dt, const float* a, const float* b, const float* out0, int batch, int M,
                         int N, int K, int ta, int tb, float alpha, float beta) {
    use_backend(be);
    size_t n_out = (size_t)batch * M * N;
    void* d_out = out0 ? to_backend_dt(out0, n_out, dt) : backend_alloc_dt(n_out, dt);
    matmul_forward(d_out, to_backend_dt(a, (size_t)batch * M * K, dt), to_backend_dt(b, (size_t)batch * K * N, dt), batch,
                   M, N, K, ta, tb, alpha, beta, dt);
    float* out = fetch_dt(d_out, n_out, dt);
    restore_backend();
    return out;
}

// linear; with out0 the result is accumulated into a copy of out0 (accumulate = 1)
static float* run_linear(Backend be, DType dt, const float* inp, const float* w, const float* bias, const float* out0,
                         int N, int C_in, int C_out) {
    use_backend(be);
    size_t n_out = (size_t)N * C_out;
    void* d_out = out0 ? to_backend_dt(out0, n_out, dt) : backend_alloc_dt(n_out, dt);
    linear_forward(d_out, to_backend_dt(inp, (size_t)N * C_in, dt), to_backend_dt(w, (size_t)C_out * C_in, dt),
                   to_backend_dt(bias, C_out, dt), N, C_in, C_out, out0 != NULL, dt);
    float* out = fetch_dt(d_out, n_out, dt);
    restore_backend();
    return out;
}

static float* run_conv2d(Backend be, DType dt, const float* inp, const float* w, const float* bias, const float* out0,
                         int N, int C_in, int H, int W, int C_out, int K, int stride, int pad, size_t* out_count) {
    use_backend(be);
    int H_out = (H + 2 * pad - K) / stride + 1, W_out = (W + 2 * pad - K) / stride + 1;
    size_t n_out = (size_t)N * C_out * H_out * W_out;
    size_t scratch_n = conv2d_scratch_elems(C_in, H, W, K, stride, pad);
    void* d_out = out0 ? to_backend_dt(out0, n_out, dt) : backend_alloc_dt(n_out, dt);
    conv2d_forward(d_out, to_backend_dt(inp, (size_t)N * C_in * H * W, dt), to_backend_dt(w, (size_t)C_out * C_in * K * K, dt),
                   to_backend_dt(bias, C_out, dt), scratch_n ? backend_alloc_dt(scratch_n, dt) : NULL, N, C_in, H, W, C_out,
                   K, stride, pad, out0 != NULL, dt);
    float* out = fetch_dt(d_out, n_out, dt);
    restore_backend();
    *out_count = n_out;
    return out;
}

static float* run_pad2d(Backend be, DType dt, const float* inp, int N, int C, int H, int W, int top, int bottom,
                        int left, int right) {
    use_backend(be);
    size_t n_out = (size_t)N * C * (H + top + bottom) * (W + left + right);
    void* d_out = backend_alloc_dt(n_out, dt);
    pad2d_forward(d_out, to_backend_dt(inp, (size_t)N * C * H * W, dt), N, C, H, W, top, bottom, left, right, dt);
    float* out = fetch_dt(d_out, n_out, dt);
    restore_backend();
    return out;
}

static float* run_upsample(Backend be, DType dt, const float* inp, int N, int C, int H, int W, int H_out, int W_out) {
    use_backend(be);
    size_t n_out = (size_t)N * C * H_out * W_out;
    void* d_out = backend_alloc_dt(n_out, dt);
    upsample_nearest_forward(d_out, to_backend_dt(inp, (size_t)N * C * H * W, dt), N, C, H, W, H_out, W_out, dt);
    float* out = fetch_dt(d_out, n_out, dt);
    restore_backend();
    return out;
}

static float* run_maxpool(Backend be, DType dt, const float* inp, int N, int C, int H, int W, int K, int stride,
                          int pad, size_t* out_count) {
    use_backend(be);
    size_t n_out = (size_t)N * C * ((H + 2 * pad - K) / stride + 1) * ((W + 2 * pad - K) / stride + 1);
    void* d_out = backend_alloc_dt(n_out, dt);
    maxpool2d_forward(d_out, to_backend_dt(inp, (size_t)N * C * H * W, dt), N, C, H, W, K, stride, pad, dt);
    float* out = fetch_dt(d_out, n_out, dt);
    restore_backend();
    *out_count = n_out;
    return out;
}

// Group norm (then SiLU when silu is set); also returns the saved mean and rstd (N*G each) when asked.
static float* run_group_norm(Backend be, DType dt, const float* inp, const float* w, const float* bias, int N, int C,
                             int HW, int G, float eps, int silu, float* mean_out, float* rstd_out) {
    use_backend(be);
    size_t n = (size_t)N * C * HW;
    void* d_out = backend_alloc_dt(n, dt);
    float* d_mean = backend_alloc((size_t)N * G);
    float* d_rstd = backend_alloc((size_t)N * G);
    group_norm_forward(d_out, d_mean, d_rstd, to_backend_dt(inp, n, dt), to_backend_dt(w, C, dt), to_backend_dt(bias, C, dt),
                       N, C, HW, G, eps, silu, dt);
    float* out = fetch_dt(d_out, n, dt);
    if (mean_out) fetch(mean_out, d_mean, (size_t)N * G);
    if (rstd_out) fetch(rstd_out, d_rstd, (size_t)N * G);
    restore_backend();
    return out;
}

static float* run_layer_norm(Backend be, DType dt, const float* inp, const float* w, const float* bias, int N, int C,
                             float eps, float* mean_out, float* rstd_out) {
    use_backend(be);
    size_t n = (size_t)N * C;
    void* d_out = backend_alloc_dt(n, dt);
    float* d_mean = backend_alloc(N);
    float* d_rstd = backend_alloc(N);
    layer_norm_forward(d_out, d_mean, d_rstd, to_backend_dt(inp, n, dt), to_backend_dt(w, C, dt), to_backend_dt(bias, C, dt),
                       N, C, eps, dt);
    float* out = fetch_dt(d_out, n, dt);
    if (mean_out) fetch(mean_out, d_mean, N);
    if (rstd_out) fetch(rstd_out, d_rstd, N);
    restore_backend();
    return out;
}

static float* run_softmax(Backend be, DType dt, const float* inp, int N, int C) {
    use_backend(be);
    size_t n = (size_t)N * C;
    void* d = to_backend_dt(inp, n, dt);
    softmax_forward(d, d, N, C, dt); // in place, which the contract allows
    float* out = fetch_dt(d, n, dt);
    restore_backend();
    return out;
}

static float* run_attention(Backend be, DType dt, const float* q, const float* k, const float* v, int N, int NH, int Lq,
                            int Lk, int HS, int causal) {
    use_backend(be);
    size_t nq = (size_t)N * Lq * NH * HS, nk = (size_t)N * Lk * NH * HS;
    void* d_out = backend_alloc_dt(nq, dt);
    attention_forward(d_out, to_backend_dt(q, nq, dt), to_backend_dt(k, nk, dt), to_backend_dt(v, nk, dt), N, NH, Lq, Lk,
                      HS, causal, dt);
    float* out = fetch_dt(d_out, nq, dt);
    restore_backend();
    return out;
}

typedef enum { ACT_SILU, ACT_GELU, ACT_GELU_TANH, ACT_QUICK_GELU, ACT_SIGMOID } Activation;
static const char* activation_names[] = {"silu", "gelu", "gelu_tanh", "quick_gelu", "sigmoid"};

static float* run_activation(Backend be, DType dt, Activation act, const float* inp, size_t n) {
    use_backend(be);
    void* d = to_backend_dt(inp, n, dt);
    switch (act) { // in place, which the contract allows
    case ACT_SILU: silu_forward(d, d, n, dt); break;
    case ACT_GELU: gelu_forward(d, d, n, dt); break;
    case ACT_GELU_TANH: gelu_tanh_forward(d, d, n, dt); break;
    case ACT_QUICK_GELU: quick_gelu_forward(d, d, n, dt); break;
    case ACT_SIGMOID: sigmoid_forward(d, d, n, dt); break;
    }
    float* out = fetch_dt(d, n, dt);
    restore_backend();
    return out;
}

static float* run_geglu(Backend be, DType dt, const float* inp, int N, int C) {
    use_backend(be);
    void* d_out = backend_alloc_dt((size_t)N * C, dt);
    geglu_forward(d_out, to_backend_dt(inp, (size_t)N * 2 * C, dt), N, C, dt);
    float* out = fetch_dt(d_out, (size_t)N * C, dt);
    restore_backend();
    return out;
}

typedef enum { ELEM_ADD, ELEM_MUL, ELEM_SCALE, ELEM_AXPBY } Elementwise;
static const char* elementwise_names[] = {"add", "mul", "scale", "axpby"};

// axpby is f32 only (the sampler's latents): with a 16-bit dt its inputs are still rounded to dt
// first, so its result is comparable, but the op itself runs in f32.
static float* run_elementwise(Backend be, DType dt, Elementwise op, const float* a, const float* b, size_t n) {
    use_backend(be);
    if (op == ELEM_AXPBY) {
        float* a32 = fetch_dt(to_backend_dt(a, n, dt), n, dt);
        float* b32 = fetch_dt(to_backend_dt(b, n, dt), n, dt);
        float* d_out = backend_alloc(n);
        axpby_forward(d_out, 1.5f, to_backend(a32, n), -0.75f, to_backend(b32, n), n);
        float* out = fetch_dt(d_out, n, DT_F32);
        free(a32);
        free(b32);
        restore_backend();
        return out;
    }
    void* d_a = to_backend_dt(a, n, dt);
    void* d_b = to_backend_dt(b, n, dt);
    void* d_out = backend_alloc_dt(n, dt);
    switch (op) {
    case ELEM_ADD: add_forward(d_out, d_a, d_b, n, dt); break;
    case ELEM_MUL: mul_forward(d_out, d_a, d_b, n, dt); break;
    case ELEM_SCALE: scale_forward(d_out, d_a, 0.37f, n, dt); break;
    case ELEM_AXPBY: break;
    }
    float* out = fetch_dt(d_out, n, dt);
    restore_backend();
    return out;
}

static float* run_add_channel_vector(Backend be, DType dt, const float* inp, const float* vec, int N, int C, int HW) {
    use_backend(be);
    size_t n = (size_t)N * C * HW;
    void* d_out = backend_alloc_dt(n, dt);
    add_channel_vector_forward(d_out, to_backend_dt(inp, n, dt), to_backend_dt(vec, (size_t)N * C, dt), N, C, HW, dt);
    float* out = fetch_dt(d_out, n, dt);
    restore_backend();
    return out;
}

// concat then split back: returns the concatenation; split's halves are checked against a and b.
static float* run_concat_split(Backend be, DType dt, const float* a, const float* b, int outer, int inner_a, int inner_b,
                               float* a_back, float* b_back) {
    use_backend(be);
    size_t n = (size_t)outer * (inner_a + inner_b);
    void* d_out = backend_alloc_dt(n, dt);
    concat_forward(d_out, to_backend_dt(a, (size_t)outer * inner_a, dt), to_backend_dt(b, (size_t)outer * inner_b, dt),
                   outer, inner_a, inner_b, dt);
    void* d_a = backend_alloc_dt((size_t)outer * inner_a, dt);
    void* d_b = backend_alloc_dt((size_t)outer * inner_b, dt);
    split_forward(d_a, d_b, d_out, outer, inner_a, inner_b, dt);
    float* out = fetch_dt(d_out, n, dt);
    float* a32 = fetch_dt(d_a, (size_t)outer * inner_a, dt);
    float* b32 = fetch_dt(d_b, (size_t)outer * inner_b, dt);
    memcpy(a_back, a32, sizeof(float) * outer * inner_a);
    memcpy(b_back, b32, sizeof(float) * outer * inner_b);
    free(a32);
    free(b32);
    restore_backend();
    return out;
}

static float* run_transpose(Backend be, DType dt, const float* inp, int B, int R, int C) {
    use_backend(be);
    size_t n = (size_t)B * R * C;
    void* d_out = backend_alloc_dt(n, dt);
    transpose_forward(d_out, to_backend_dt(inp, n, dt), B, R, C, dt);
    float* out = fetch_dt(d_out, n, dt);
    restore_backend();
    return out;
}

static float* run_embedding(Backend be, DType dt, const int32_t* ids, const float* table, int N, int V, int D) {
    use_backend(be);
    int32_t* d_ids = (int32_t*)backend_alloc(N); // int32 and f32 have the same size
    copy_to_device(d_ids, ids, sizeof(int32_t) * N);
    void* d_out = backend_alloc_dt((size_t)N * D, dt);
    embedding_forward(d_out, d_ids, to_backend_dt(table, (size_t)V * D, dt), N, V, D, dt);
    float* out = fetch_dt(d_out, (size_t)N * D, dt);
    restore_backend();
    return out;
}

static float* run_timestep(Backend be, DType dt, const float* t, int N, int dim, int flip, float shift) {
    use_backend(be);
    void* d_out = backend_alloc_dt((size_t)N * dim, dt);
    timestep_embedding_forward(d_out, to_backend(t, N), N, dim, flip, shift, 10000.0f, dt);
    float* out = fetch_dt(d_out, (size_t)N * dim, dt);
    restore_backend();
    return out;
}

// Casts n values of in_type to out_type on the backend; returns the raw output bytes.
static void* run_cast(Backend be, const void* inp, DType in_type, DType out_type, size_t n) {
    use_backend(be);
    float* d_in = backend_alloc((n * dtype_size(in_type) + 3) / 4);
    float* d_out = backend_alloc((n * dtype_size(out_type) + 3) / 4);
    copy_to_device(d_in, inp, n * dtype_size(in_type));
    cast_forward(d_out, out_type, d_in, in_type, n);
    void* out = xmalloc(n * dtype_size(out_type));
    copy_to_host(out, d_out, n * dtype_size(out_type));
    restore_backend();
    return out;
}

// ----------------------------------------------------------------------------
// Golden tests (the runner's backend against torch)

static void test_ops_matmul(void) {
    if (!open_ops_golden()) return;
    Backend be = backend_current();
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            char name[64], label[64];
            snprintf(name, sizeof(name), "matmul_t%d%d", ta, tb);
            // case: batch 2, M 5, N 7, K 9, alpha 0.5, beta 0.25 (torch.baddbmm)
            char a_name[80], b_name[80], o_name[80], out_name[80];
            snprintf(a_name, sizeof(a_name), "%s.a", name);
            snprintf(b_name, sizeof(b_name), "%s.b", name);
            snprintf(o_name, sizeof(o_name), "%s.out0", name);
            snprintf(out_name, sizeof(out_name), "%s.out", name);
            float *a = golden(a_name), *b = golden(b_name), *o = golden(o_name);
            if (!a || !b || !o) return;
            snprintf(label, sizeof(label), "matmul trans_a=%d trans_b=%d", ta, tb);
            expect_golden(label, run_matmul(be, DT_F32, a, b, o, 2, 5, 7, 9, ta, tb, 0.5f, 0.25f), out_name, TOL_GEMM);
            free(a); free(b); free(o);
        }
    }
    float *a = golden("matmul_big.a"), *b = golden("matmul_big.b");
    if (!a || !b) return;
    // 70x300 @ 300x45: crosses the KC slab and the MR/NR tile edges; beta 0 must ignore out's garbage
    expect_golden("matmul 70x300x45 (KC and tile edges)", run_matmul(be, DT_F32, a, b, NULL, 1, 70, 45, 300, 0, 0, 1.0f, 0.0f),
                  "matmul_big.out", TOL_GEMM);
    free(a); free(b);
    safetensors_close(&g_golden);
}

static void test_ops_linear(void) {
    if (!open_ops_golden()) return;
    float *x = golden("linear.inp"), *w = golden("linear.weight"), *bias = golden("linear.bias");
    if (!x || !w || !bias) return;
    expect_golden("linear 6x33 -> 17, bias", run_linear(backend_current(), DT_F32, x, w, bias, NULL, 6, 33, 17), "linear.out", TOL_GEMM);
    expect_golden("linear 6x33 -> 17, no bias", run_linear(backend_current(), DT_F32, x, w, NULL, NULL, 6, 33, 17), "linear_nobias.out",
                  TOL_GEMM);
    free(x); free(w); free(bias);
    safetensors_close(&g_golden);
}

static void test_ops_conv2d(void) {
    if (!open_ops_golden()) return;
    // (name, K, stride, pad): must match conv_cases in scripts/make_golden_ops.py
    struct { const char* name; int K, stride, pad; } cases[] = {
        {"conv_k3s1p1", 3, 1, 1}, {"conv_k3s2p1", 3, 2, 1}, {"conv_k1s1p0", 1, 1, 0}, {"conv_k3s2p0", 3, 2, 0},
        {"conv_k4s4p0", 4, 4, 0}, {"conv_k5s1p2", 5, 1, 2}, {"conv_chunks", 3, 1, 1},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        char in_name[64], w_name[64], b_name[64], out_name[64], label[96];
        snprintf(in_name, sizeof(in_name), "%s.inp", cases[c].name);
        snprintf(w_name, sizeof(w_name), "%s.weight", cases[c].name);
        snprintf(b_name, sizeof(b_name), "%s.bias", cases[c].name);
        snprintf(out_name, sizeof(out_name), "%s.out", cases[c].name);
        int N = (int)golden_dim(in_name, 0), C_in = (int)golden_dim(in_name, 1), H = (int)golden_dim(in_name, 2),
            W = (int)golden_dim(in_name, 3), C_out = (int)golden_dim(w_name, 0);
        float *x = golden(in_name), *w = golden(w_name);
        float* bias = safetensors_find(&g_golden, b_name) ? golden(b_name) : NULL;
        if (!x || !w) return;
        size_t n_out;
        float* out = run_conv2d(backend_current(), DT_F32, x, w, bias, NULL, N, C_in, H, W, C_out, cases[c].K, cases[c].stride,
                                cases[c].pad, &n_out);
        check_true(n_out == golden_numel(out_name), "%s output size %zu", cases[c].name, n_out);
        snprintf(label, sizeof(label), "conv2d %s (%dx%dx%dx%d -> %d)", cases[c].name, N, C_in, H, W, C_out);
        expect_golden(label, out, out_name, TOL_GEMM);
        free(x); free(w); free(bias);
    }
    safetensors_close(&g_golden);
}

static void test_ops_spatial(void) {
    if (!open_ops_golden()) return;
    Backend be = backend_current();
    float* x = golden("pad2d.inp"); // (2, 3, 4, 5)
    if (!x) return;
    expect_golden("pad2d (0,1,0,1)", run_pad2d(be, DT_F32, x, 2, 3, 4, 5, 0, 1, 0, 1), "pad2d.out", TOL_EXACT);
    expect_golden("pad2d (left 2, right 1, top 3, bottom 0)", run_pad2d(be, DT_F32, x, 2, 3, 4, 5, 3, 0, 2, 1), "pad2d_uneven.out",
                  TOL_EXACT);
    free(x);
    x = golden("upsample.inp"); // (1, 2, 5, 7)
    if (!x) return;
    expect_golden("upsample nearest 2x", run_upsample(be, DT_F32, x, 1, 2, 5, 7, 10, 14), "upsample_2x.out", TOL_EXACT);
    expect_golden("upsample nearest to 9x13", run_upsample(be, DT_F32, x, 1, 2, 5, 7, 9, 13), "upsample_size.out", TOL_EXACT);
    free(x);
    x = golden("upsample_43.inp"); // (1, 1, 43, 24) -> (85, 48): the 1360x768 UNet path
    if (!x) return;
    expect_golden("upsample nearest 43x24 -> 85x48", run_upsample(be, DT_F32, x, 1, 1, 43, 24, 85, 48), "upsample_43.out",
                  TOL_EXACT);
    free(x);
    x = golden("maxpool.inp"); // (2, 3, 9, 8)
    if (!x) return;
    struct { const char* name; int K, stride, pad; } pools[] = {
        {"maxpool_k5s1p2", 5, 1, 2}, {"maxpool_k3s2p1", 3, 2, 1}, {"maxpool_k2s2p0", 2, 2, 0}};
    for (int c = 0; c < 3; c++) {
        char out_name[64];
        snprintf(out_name, sizeof(out_name), "%s.out", pools[c].name);
        size_t n_out;
        float* out = run_maxpool(be, DT_F32, x, 2, 3, 9, 8, pools[c].K, pools[c].stride, pools[c].pad, &n_out);
        check_true(n_out == golden_numel(out_name), "%s output size %zu", pools[c].name, n_out);
        expect_golden(pools[c].name, out, out_name, TOL_EXACT);
    }
    free(x);
    safetensors_close(&g_golden);
}

static void test_ops_norms_softmax(void) {
    if (!open_ops_golden()) return;
    Backend be = backend_current();
    float *x = golden("group_norm.inp"), *w = golden("group_norm.weight"), *bias = golden("group_norm.bias");
    float *x_off = golden("group_norm_offset.inp");
    if (!x || !w || !bias || !x_off) return;
    float mean[8], rstd[8];
    // N 2, C 8, HW 15, G 4
    expect_golden("group_norm eps 1e-5", run_group_norm(be, DT_F32, x, w, bias, 2, 8, 15, 4, 1e-5f, 0, mean, rstd), "group_norm.out",
                  TOL_REDUCE);
    float* want_mean = golden("group_norm.mean");
    float* want_rstd = golden("group_norm.rstd");
    if (want_mean) check_close("group_norm saved mean", mean, want_mean, 8, TOL_REDUCE.atol, TOL_REDUCE.rtol);
    if (want_rstd) check_close("group_norm saved rstd", rstd, want_rstd, 8, TOL_REDUCE.atol, TOL_REDUCE.rtol);
    free(want_mean); free(want_rstd);
    expect_golden("group_norm no affine, eps 1e-6", run_group_norm(be, DT_F32, x, NULL, NULL, 2, 8, 15, 4, 1e-6f, 0, NULL, NULL),
                  "group_norm_noaffine.out", TOL_REDUCE);
    // torch computes these statistics in f32 too, so offset inputs carry its rounding: 1e-4 abs
    expect_golden("group_norm inputs offset by 100", run_group_norm(be, DT_F32, x_off, w, bias, 2, 8, 15, 4, 1e-5f, 0, NULL, NULL),
                  "group_norm_offset.out", (Tol){1e-4f, 1e-4f});
    free(x); free(w); free(bias); free(x_off);

    x = golden("layer_norm.inp"); w = golden("layer_norm.weight"); bias = golden("layer_norm.bias");
    if (!x || !w || !bias) return;
    float lmean[7], lrstd[7];
    expect_golden("layer_norm eps 1e-5", run_layer_norm(be, DT_F32, x, w, bias, 7, 33, 1e-5f, lmean, lrstd), "layer_norm.out",
                  TOL_REDUCE);
    want_mean = golden("layer_norm.mean");
    want_rstd = golden("layer_norm.rstd");
    if (want_mean) check_close("layer_norm saved mean", lmean, want_mean, 7, TOL_REDUCE.atol, TOL_REDUCE.rtol);
    if (want_rstd) check_close("layer_norm saved rstd", lrstd, want_rstd, 7, TOL_REDUCE.atol, TOL_REDUCE.rtol);
    free(want_mean); free(want_rstd);
    expect_golden("layer_norm eps 1e-12 (BERT)", run_layer_norm(be, DT_F32, x, w, bias, 7, 33, 1e-12f, NULL, NULL),
                  "layer_norm_bert.out", TOL_REDUCE);
    free(x); free(w); free(bias);

    x = golden("softmax.inp");
    if (!x) return;
    expect_golden("softmax 5x17", run_softmax(be, DT_F32, x, 5, 17), "softmax.out", TOL_REDUCE);
    free(x);
    x = golden("softmax_large.inp");
    if (!x) return;
    expect_golden("softmax of logits up to ~150", run_softmax(be, DT_F32, x, 5, 17), "softmax_large.out", TOL_REDUCE);
    free(x);
    safetensors_close(&g_golden);
}

static void test_ops_attention(void) {
    if (!open_ops_golden()) return;
    // (name, N, NH, Lq, Lk, HS, causal): must match scripts/make_golden_ops.py
    struct { const char* name; int N, NH, Lq, Lk, HS, causal; } cases[] = {
        {"attn_small", 2, 3, 5, 7, 8, 0},     {"attn_causal", 1, 2, 6, 6, 8, 1},
        {"attn_cross77", 1, 2, 9, 77, 64, 0}, {"attn_blocks", 1, 1, 4, 130, 16, 0},
        {"attn_causal_long", 1, 1, 70, 70, 4, 1}, {"attn_hs512", 1, 1, 10, 10, 512, 0},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        char qn[64], kn[64], vn[64], on[64], label[128];
        snprintf(qn, sizeof(qn), "%s.q", cases[c].name);
        snprintf(kn, sizeof(kn), "%s.k", cases[c].name);
        snprintf(vn, sizeof(vn), "%s.v", cases[c].name);
        snprintf(on, sizeof(on), "%s.out", cases[c].name);
        float *q = golden(qn), *k = golden(kn), *v = golden(vn);
        if (!q || !k || !v) return;
        snprintf(label, sizeof(label), "attention %s (NH %d, Lq %d, Lk %d, HS %d%s)", cases[c].name, cases[c].NH,
                 cases[c].Lq, cases[c].Lk, cases[c].HS, cases[c].causal ? ", causal" : "");
        // dot products over HS and a softmax-weighted sum over Lk: GEMM-like accuracy
        expect_golden(label, run_attention(backend_current(), DT_F32, q, k, v, cases[c].N, cases[c].NH, cases[c].Lq, cases[c].Lk,
                                           cases[c].HS, cases[c].causal),
                      on, TOL_GEMM);
        free(q); free(k); free(v);
    }
    safetensors_close(&g_golden);
}

static void test_ops_activations(void) {
    if (!open_ops_golden()) return;
    size_t n;
    float* x = golden_f32(&g_golden, "act.inp", &n);
    if (!x) return;
    for (int act = ACT_SILU; act <= ACT_SIGMOID; act++) {
        char out_name[64], label[64];
        snprintf(out_name, sizeof(out_name), "%s.out", activation_names[act]);
        snprintf(label, sizeof(label), "%s on [-100, 100]", activation_names[act]);
        expect_golden(label, run_activation(backend_current(), DT_F32, (Activation)act, x, n), out_name, TOL_ELEM);
    }
    free(x);
    x = golden("geglu.inp"); // (5, 24)
    if (!x) return;
    expect_golden("geglu 5x(2*12)", run_geglu(backend_current(), DT_F32, x, 5, 12), "geglu.out", TOL_ELEM);
    free(x);
    safetensors_close(&g_golden);
}

static void test_ops_elementwise(void) {
    if (!open_ops_golden()) return;
    size_t n;
    float *a = golden_f32(&g_golden, "elem.a", &n), *b = golden("elem.b");
    if (!a || !b) return;
    for (int op = ELEM_ADD; op <= ELEM_AXPBY; op++) {
        char out_name[64];
        snprintf(out_name, sizeof(out_name), "%s.out", elementwise_names[op]);
        // one rounding per product and sum, as torch: exact agreement expected
        expect_golden(elementwise_names[op], run_elementwise(backend_current(), DT_F32, (Elementwise)op, a, b, n), out_name,
                      TOL_EXACT);
    }
    free(a); free(b);
    float *x = golden("add_channel_vector.inp"), *vec = golden("add_channel_vector.vec");
    if (!x || !vec) return;
    expect_golden("add_channel_vector (2,3,4,5) + (2,3)", run_add_channel_vector(backend_current(), DT_F32, x, vec, 2, 3, 20),
                  "add_channel_vector.out", TOL_EXACT);
    free(x); free(vec);
    safetensors_close(&g_golden);
}

static void test_ops_layout(void) {
    if (!open_ops_golden()) return;
    Backend be = backend_current();
    float *a = golden("concat.a"), *b = golden("concat.b"); // (2,3,4,5) and (2,6,4,5) along dim 1
    if (!a || !b) return;
    float a_back[120], b_back[240];
    expect_golden("concat along channels", run_concat_split(be, DT_F32, a, b, 2, 60, 120, a_back, b_back), "concat.out", TOL_EXACT);
    check_bytes_equal("split recovers the first input", a_back, a, sizeof(a_back));
    check_bytes_equal("split recovers the second input", b_back, b, sizeof(b_back));
    free(a); free(b);
    float* x = golden("transpose.inp"); // (2, 3, 20) -> (2, 20, 3)
    if (!x) return;
    expect_golden("transpose NCHW -> (N, HW, C)", run_transpose(be, DT_F32, x, 2, 3, 20), "transpose.out", TOL_EXACT);
    free(x);
    const SafeTensor* ids_t = safetensors_find(&g_golden, "embedding.ids");
    float* table = golden("embedding.table"); // (11, 6)
    if (!check_true(ids_t && ids_t->dtype == DT_I32, "golden embedding.ids is int32") || !table) return;
    int32_t ids[5];
    memcpy(ids, ids_t->data, sizeof(ids));
    expect_golden("embedding lookup", run_embedding(be, DT_F32, ids, table, 5, 11, 6), "embedding.out", TOL_EXACT);
    free(table);
    safetensors_close(&g_golden);
}

static void test_ops_timestep_embedding(void) {
    if (!open_ops_golden()) return;
    float* t = golden("timestep.t"); // 6 timesteps up to 1024
    if (!t) return;
    // sin/cos of arguments up to ~1000: an ulp of exp(exponent) moves the argument by ~6e-5, so
    // the absolute tolerance is that of the argument, not of the result
    Tol tol = {2e-4f, 0.0f};
    expect_golden("timestep embedding 320 (SDXL time_proj)", run_timestep(backend_current(), DT_F32, t, 6, 320, 1, 0.0f),
                  "timestep_320.out", tol);
    expect_golden("timestep embedding 256 (SDXL add_time_proj)", run_timestep(backend_current(), DT_F32, t, 6, 256, 1, 0.0f),
                  "timestep_256.out", tol);
    expect_golden("timestep embedding 64, sin first, shift 1", run_timestep(backend_current(), DT_F32, t, 6, 64, 0, 1.0f),
                  "timestep_noflip.out", tol);
    free(t);
    safetensors_close(&g_golden);
}

static void test_ops_cast(void) {
    SafeTensors st;
    if (!golden_open(&st, "convert.safetensors")) return;
    struct { const char* in, *out; } cases[] = {
        {"f32.inp", "f32_to_f16.out"}, {"f32.inp", "f32_to_bf16.out"},
        {"f16_all.inp", "f16_all_to_f32.out"}, {"bf16_some.inp", "bf16_some_to_f32.out"},
    };
    for (int c = 0; c < 4; c++) {
        const SafeTensor* in = safetensors_find(&st, cases[c].in);
        const SafeTensor* want = safetensors_find(&st, cases[c].out);
        if (!check_true(in && want, "golden %s and %s present", cases[c].in, cases[c].out)) continue;
        size_t n = safetensor_numel(in);
        void* got = run_cast(backend_current(), in->data, in->dtype, want->dtype, n);
        char label[96];
        snprintf(label, sizeof(label), "cast %s -> %s (%zu values)", dtype_name(in->dtype), dtype_name(want->dtype), n);
        // round-to-nearest-even conversions are exact operations: bit-identical to torch,
        // NaN payloads included (torch canonicalises them; so do we)
        check_bytes_equal(label, got, want->data, n * dtype_size(want->dtype));
        free(got);
    }
    safetensors_close(&st);
}

// ----------------------------------------------------------------------------
// CUDA against CPU on fresh random inputs

static void compare_backends(const char* label, float* cpu, float* cuda, size_t n, Tol tol) {
    check_close(label, cuda, cpu, n, tol.atol, tol.rtol);
    free(cpu);
    free(cuda);
}

static void test_ops_cuda_matmul_linear(void) {
    if (!test_require_cuda()) return;
    int B = 3, M = 130, N = 250, K = 300;
    float *a = random_array((size_t)B * M * K, 1, -1, 1), *b = random_array((size_t)B * K * N, 2, -1, 1);
    float* o = random_array((size_t)B * M * N, 3, -1, 1);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            char label[64];
            snprintf(label, sizeof(label), "cuda matmul t%d%d 3x130x250x300", ta, tb);
            compare_backends(label, run_matmul(BACKEND_CPU, DT_F32, a, b, o, B, M, N, K, ta, tb, 0.5f, 0.25f),
                             run_matmul(BACKEND_CUDA, DT_F32, a, b, o, B, M, N, K, ta, tb, 0.5f, 0.25f), (size_t)B * M * N,
                             TOL_CUDA_GEMM);
        }
    float* bias = random_array(N, 4, -1, 1);
    compare_backends("cuda linear 390x300 -> 250", run_linear(BACKEND_CPU, DT_F32, a, b, bias, NULL, B * M, K, N),
                     run_linear(BACKEND_CUDA, DT_F32, a, b, bias, NULL, B * M, K, N), (size_t)B * M * N, TOL_CUDA_GEMM);
    free(a); free(b); free(o); free(bias);
}

static void test_ops_cuda_conv2d(void) {
    if (!test_require_cuda()) return;
    struct { int N, C_in, H, W, C_out, K, stride, pad; } cases[] = {
        {2, 32, 33, 40, 48, 3, 1, 1}, {1, 16, 96, 80, 8, 3, 1, 1}, // 7680 pixels: two chunks
        {1, 32, 31, 30, 64, 3, 2, 1}, {2, 64, 16, 16, 32, 1, 1, 0}, {1, 3, 56, 56, 64, 14, 14, 0},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        int N = cases[c].N, C_in = cases[c].C_in, H = cases[c].H, W = cases[c].W, C_out = cases[c].C_out, K = cases[c].K;
        float* x = random_array((size_t)N * C_in * H * W, 10 + c, -1, 1);
        float* w = random_array((size_t)C_out * C_in * K * K, 20 + c, -0.2f, 0.2f);
        float* bias = random_array(C_out, 30 + c, -1, 1);
        size_t n1, n2;
        char label[96];
        snprintf(label, sizeof(label), "cuda conv2d %dx%dx%dx%d -> %d k%d s%d p%d", N, C_in, H, W, C_out, K,
                 cases[c].stride, cases[c].pad);
        float* cpu = run_conv2d(BACKEND_CPU, DT_F32, x, w, bias, NULL, N, C_in, H, W, C_out, K, cases[c].stride, cases[c].pad, &n1);
        float* gpu = run_conv2d(BACKEND_CUDA, DT_F32, x, w, bias, NULL, N, C_in, H, W, C_out, K, cases[c].stride, cases[c].pad, &n2);
        compare_backends(label, cpu, gpu, n1, TOL_CUDA_GEMM);
        free(x); free(w); free(bias);
    }
}

static void test_ops_cuda_spatial(void) {
    if (!test_require_cuda()) return;
    float* x = random_array(2 * 8 * 43 * 24, 40, -3, 3);
    compare_backends("cuda pad2d", run_pad2d(BACKEND_CPU, DT_F32, x, 2, 8, 43, 24, 0, 1, 0, 1),
                     run_pad2d(BACKEND_CUDA, DT_F32, x, 2, 8, 43, 24, 0, 1, 0, 1), 2 * 8 * 44 * 25, TOL_EXACT);
    compare_backends("cuda upsample 43x24 -> 85x48", run_upsample(BACKEND_CPU, DT_F32, x, 2, 8, 43, 24, 85, 48),
                     run_upsample(BACKEND_CUDA, DT_F32, x, 2, 8, 43, 24, 85, 48), 2 * 8 * 85 * 48, TOL_EXACT);
    compare_backends("cuda upsample 2x", run_upsample(BACKEND_CPU, DT_F32, x, 2, 8, 43, 24, 86, 48),
                     run_upsample(BACKEND_CUDA, DT_F32, x, 2, 8, 43, 24, 86, 48), 2 * 8 * 86 * 48, TOL_EXACT);
    size_t n1, n2;
    float* cpu = run_maxpool(BACKEND_CPU, DT_F32, x, 2, 8, 43, 24, 5, 1, 2, &n1);
    float* gpu = run_maxpool(BACKEND_CUDA, DT_F32, x, 2, 8, 43, 24, 5, 1, 2, &n2);
    compare_backends("cuda maxpool k5 s1 p2", cpu, gpu, n1, TOL_EXACT);
    free(x);
}

static void test_ops_cuda_norms_softmax(void) {
    if (!test_require_cuda()) return;
    int N = 2, C = 64, HW = 1000, G = 32;
    float* x = random_array((size_t)N * C * HW, 50, -2, 6);
    float *w = random_array(C, 51, 0.5f, 1.5f), *bias = random_array(C, 52, -1, 1);
    float m1[64], r1[64], m2[64], r2[64];
    compare_backends("cuda group_norm 2x64x1000 G32", run_group_norm(BACKEND_CPU, DT_F32, x, w, bias, N, C, HW, G, 1e-5f, 0, m1, r1),
                     run_group_norm(BACKEND_CUDA, DT_F32, x, w, bias, N, C, HW, G, 1e-5f, 0, m2, r2), (size_t)N * C * HW,
                     TOL_REDUCE);
    check_close("cuda group_norm saved mean", m2, m1, (size_t)N * G, TOL_REDUCE.atol, TOL_REDUCE.rtol);
    check_close("cuda group_norm saved rstd", r2, r1, (size_t)N * G, TOL_REDUCE.atol, TOL_REDUCE.rtol);
    compare_backends("cuda layer_norm 128x1000", run_layer_norm(BACKEND_CPU, DT_F32, x, w, bias, 128, 1000, 1e-5f, NULL, NULL),
                     run_layer_norm(BACKEND_CUDA, DT_F32, x, w, bias, 128, 1000, 1e-5f, NULL, NULL), 128000, TOL_REDUCE);
    compare_backends("cuda softmax 64x2000", run_softmax(BACKEND_CPU, DT_F32, x, 64, 2000), run_softmax(BACKEND_CUDA, DT_F32, x, 64, 2000),
                     128000, TOL_REDUCE);
    free(x); free(w); free(bias);
}

static void test_ops_cuda_attention(void) {
    if (!test_require_cuda()) return;
    struct { int N, NH, Lq, Lk, HS, causal; } cases[] = {
        {2, 4, 256, 256, 64, 0}, {2, 4, 200, 77, 64, 0}, {1, 2, 77, 77, 64, 1}, {1, 1, 64, 64, 512, 0},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        size_t nq = (size_t)cases[c].N * cases[c].Lq * cases[c].NH * cases[c].HS;
        size_t nk = (size_t)cases[c].N * cases[c].Lk * cases[c].NH * cases[c].HS;
        float *q = random_array(nq, 60 + c, -1, 1), *k = random_array(nk, 70 + c, -1, 1), *v = random_array(nk, 80 + c, -1, 1);
        char label[96];
        snprintf(label, sizeof(label), "cuda attention NH %d Lq %d Lk %d HS %d%s", cases[c].NH, cases[c].Lq, cases[c].Lk,
                 cases[c].HS, cases[c].causal ? " causal" : "");
        compare_backends(label,
                         run_attention(BACKEND_CPU, DT_F32, q, k, v, cases[c].N, cases[c].NH, cases[c].Lq, cases[c].Lk, cases[c].HS, cases[c].causal),
                         run_attention(BACKEND_CUDA, DT_F32, q, k, v, cases[c].N, cases[c].NH, cases[c].Lq, cases[c].Lk, cases[c].HS, cases[c].causal),
                         nq, TOL_CUDA_GEMM);
        free(q); free(k); free(v);
    }
}

static void test_ops_cuda_elementwise(void) {
    if (!test_require_cuda()) return;
    size_t n = 100003;
    float *a = random_array(n, 90, -12, 12), *b = random_array(n, 91, -3, 3);
    for (int act = ACT_SILU; act <= ACT_SIGMOID; act++) {
        char label[64];
        snprintf(label, sizeof(label), "cuda %s", activation_names[act]);
        compare_backends(label, run_activation(BACKEND_CPU, DT_F32, (Activation)act, a, n),
                         run_activation(BACKEND_CUDA, DT_F32, (Activation)act, a, n), n, TOL_CUDA_ELEM);
    }
    compare_backends("cuda geglu", run_geglu(BACKEND_CPU, DT_F32, a, 1000, 50), run_geglu(BACKEND_CUDA, DT_F32, a, 1000, 50), 50000,
                     TOL_CUDA_ELEM);
    for (int op = ELEM_ADD; op <= ELEM_AXPBY; op++) {
        char label[64];
        snprintf(label, sizeof(label), "cuda %s", elementwise_names[op]);
        // single roundings with no FMA on either side (axpby uses __fmul_rn/__fadd_rn): exact
        compare_backends(label, run_elementwise(BACKEND_CPU, DT_F32, (Elementwise)op, a, b, n),
                         run_elementwise(BACKEND_CUDA, DT_F32, (Elementwise)op, a, b, n), n, TOL_EXACT);
    }
    compare_backends("cuda add_channel_vector", run_add_channel_vector(BACKEND_CPU, DT_F32, a, b, 4, 25, 1000),
                     run_add_channel_vector(BACKEND_CUDA, DT_F32, a, b, 4, 25, 1000), 100000, TOL_EXACT);
    free(a); free(b);
}

static void test_ops_cuda_layout_embed_cast(void) {
    if (!test_require_cuda()) return;
    float *a = random_array(2 * 320 * 64, 100, -1, 1), *b = random_array(2 * 640 * 64, 101, -1, 1);
    float *a1 = xmalloc(sizeof(float) * 2 * 320 * 64), *b1 = xmalloc(sizeof(float) * 2 * 640 * 64);
    float *a2 = xmalloc(sizeof(float) * 2 * 320 * 64), *b2 = xmalloc(sizeof(float) * 2 * 640 * 64);
    compare_backends("cuda concat", run_concat_split(BACKEND_CPU, DT_F32, a, b, 2, 320 * 64, 640 * 64, a1, b1),
                     run_concat_split(BACKEND_CUDA, DT_F32, a, b, 2, 320 * 64, 640 * 64, a2, b2), 2 * 960 * 64, TOL_EXACT);
    check_bytes_equal("cuda split", a2, a, sizeof(float) * 2 * 320 * 64);
    free(a1); free(b1); free(a2); free(b2);
    compare_backends("cuda transpose 2x320x64", run_transpose(BACKEND_CPU, DT_F32, a, 2, 320, 64),
                     run_transpose(BACKEND_CUDA, DT_F32, a, 2, 320, 64), 2 * 320 * 64, TOL_EXACT);
    int32_t ids[77];
    for (int i = 0; i < 77; i++) ids[i] = (i * 37) % 500;
    compare_backends("cuda embedding", run_embedding(BACKEND_CPU, DT_F32, ids, b, 77, 500, 64),
                     run_embedding(BACKEND_CUDA, DT_F32, ids, b, 77, 500, 64), 77 * 64, TOL_EXACT);
    float t[8] = {0, 1, 10, 100, 500, 999, 250.5f, 3};
    compare_backends("cuda timestep embedding 320", run_timestep(BACKEND_CPU, DT_F32, t, 8, 320, 1, 0.0f),
                     run_timestep(BACKEND_CUDA, DT_F32, t, 8, 320, 1, 0.0f), 8 * 320, (Tol){2e-4f, 0.0f});
    size_t n = 2 * 640 * 64;
    for (int target = 0; target < 2; target++) {
        DType dt = target ? DT_BF16 : DT_F16;
        void* h_cpu = run_cast(BACKEND_CPU, b, DT_F32, dt, n);
        void* h_gpu = run_cast(BACKEND_CUDA, b, DT_F32, dt, n);
        check_bytes_equal(target ? "cuda cast f32 -> bf16" : "cuda cast f32 -> f16", h_gpu, h_cpu, n * 2);
        void* back_cpu = run_cast(BACKEND_CPU, h_cpu, dt, DT_F32, n);
        void* back_gpu = run_cast(BACKEND_CUDA, h_cpu, dt, DT_F32, n);
        check_bytes_equal(target ? "cuda cast bf16 -> f32" : "cuda cast f16 -> f32", back_gpu, back_cpu, n * 4);
        free(h_cpu); free(h_gpu); free(back_cpu); free(back_gpu);
    }
    free(a); free(b);
}


// ----------------------------------------------------------------------------
// 16-bit storage

static void test_ops_16bit_cpu(void) {
    DType types[2] = {DT_F16, DT_BF16};
    for (int ti = 0; ti < 2; ti++) {
        DType dt = types[ti];
        Backend be = BACKEND_CPU;
        // inputs drawn in f32, rounded once: the values both runs see
        size_t big = 4 * 9 * 33 * 20;
        float* x0 = random_array(big, 200, -2, 2);
        float* y0 = random_array(big, 201, -2, 2);
        float* w0 = random_array(big, 202, -0.3f, 0.3f);
        float* b0 = random_array(64, 203, -1, 1);
        float *x = rounded(x0, big, dt), *y = rounded(y0, big, dt), *w = rounded(w0, big, dt), *b = rounded(b0, 64, dt);
        free(x0); free(y0); free(w0); free(b0);

        expect_rounded("matmul t01 beta 0.5", run_matmul(be, dt, x, w, y, 2, 9, 11, 13, 0, 1, 0.75f, 0.5f),
                       run_matmul(be, DT_F32, x, w, y, 2, 9, 11, 13, 0, 1, 0.75f, 0.5f), 2 * 9 * 11, dt);
        expect_rounded("linear + bias", run_linear(be, dt, x, w, b, NULL, 20, 33, 17),
                       run_linear(be, DT_F32, x, w, b, NULL, 20, 33, 17), 20 * 17, dt);
        expect_rounded("linear accumulate", run_linear(be, dt, x, w, b, y, 20, 33, 17),
                       run_linear(be, DT_F32, x, w, b, y, 20, 33, 17), 20 * 17, dt);
        size_t n1, n2;
        float* got = run_conv2d(be, dt, x, w, b, NULL, 2, 9, 11, 12, 8, 3, 1, 1, &n1);
        expect_rounded("conv2d 3x3", got, run_conv2d(be, DT_F32, x, w, b, NULL, 2, 9, 11, 12, 8, 3, 1, 1, &n2), n1, dt);
        got = run_conv2d(be, dt, x, w, b, y, 2, 9, 11, 12, 8, 3, 2, 1, &n1);
        expect_rounded("conv2d 3x3 stride 2 accumulate", got, run_conv2d(be, DT_F32, x, w, b, y, 2, 9, 11, 12, 8, 3, 2, 1, &n2),
                       n1, dt);
        got = run_conv2d(be, dt, x, w, NULL, y, 2, 9, 11, 12, 8, 1, 1, 0, &n1);
        expect_rounded("conv2d 1x1 accumulate", got, run_conv2d(be, DT_F32, x, w, NULL, y, 2, 9, 11, 12, 8, 1, 1, 0, &n2), n1, dt);
        expect_rounded("pad2d", run_pad2d(be, dt, x, 2, 3, 7, 5, 1, 0, 2, 1), run_pad2d(be, DT_F32, x, 2, 3, 7, 5, 1, 0, 2, 1),
                       2 * 3 * 8 * 8, dt);
        expect_rounded("upsample 7x5 -> 13x10", run_upsample(be, dt, x, 2, 3, 7, 5, 13, 10),
                       run_upsample(be, DT_F32, x, 2, 3, 7, 5, 13, 10), 2 * 3 * 13 * 10, dt);
        got = run_maxpool(be, dt, x, 2, 3, 9, 8, 5, 1, 2, &n1);
        expect_rounded("maxpool", got, run_maxpool(be, DT_F32, x, 2, 3, 9, 8, 5, 1, 2, &n2), n1, dt);
        float m16[8], r16[8], m32[8], r32[8];
        for (int silu = 0; silu < 2; silu++) {
            got = run_group_norm(be, dt, x, b, b + 8, 2, 8, 15, 4, 1e-5f, silu, m16, r16);
            expect_rounded(silu ? "group_norm + silu" : "group_norm", got,
                           run_group_norm(be, DT_F32, x, b, b + 8, 2, 8, 15, 4, 1e-5f, silu, m32, r32), 2 * 8 * 15, dt);
            check_bytes_equal("group_norm saved mean and rstd stay f32", m16, m32, sizeof(m16));
        }
        expect_rounded("layer_norm", run_layer_norm(be, dt, x, b, b + 33, 7, 30, 1e-5f, NULL, NULL),
                       run_layer_norm(be, DT_F32, x, b, b + 33, 7, 30, 1e-5f, NULL, NULL), 7 * 30, dt);
        expect_rounded("softmax", run_softmax(be, dt, x, 9, 37), run_softmax(be, DT_F32, x, 9, 37), 9 * 37, dt);
        expect_rounded("attention HS 64", run_attention(be, dt, x, y, w, 2, 2, 9, 21, 64, 0),
                       run_attention(be, DT_F32, x, y, w, 2, 2, 9, 21, 64, 0), 2 * 9 * 2 * 64, dt);
        expect_rounded("attention causal", run_attention(be, dt, x, y, w, 1, 3, 12, 12, 16, 1),
                       run_attention(be, DT_F32, x, y, w, 1, 3, 12, 12, 16, 1), 12 * 3 * 16, dt);
        for (int act = ACT_SILU; act <= ACT_SIGMOID; act++)
            expect_rounded(activation_names[act], run_activation(be, dt, (Activation)act, x, 1000),
                           run_activation(be, DT_F32, (Activation)act, x, 1000), 1000, dt);
        expect_rounded("geglu", run_geglu(be, dt, x, 30, 20), run_geglu(be, DT_F32, x, 30, 20), 600, dt);
        for (int op = ELEM_ADD; op <= ELEM_SCALE; op++)
            expect_rounded(elementwise_names[op], run_elementwise(be, dt, (Elementwise)op, x, y, 1000),
                           run_elementwise(be, DT_F32, (Elementwise)op, x, y, 1000), 1000, dt);
        expect_rounded("add_channel_vector", run_add_channel_vector(be, dt, x, y, 2, 5, 30),
                       run_add_channel_vector(be, DT_F32, x, y, 2, 5, 30), 300, dt);
        float a1[60], b1[90], a2[60], b2[90];
        expect_rounded("concat", run_concat_split(be, dt, x, y, 3, 20, 30, a1, b1),
                       run_concat_split(be, DT_F32, x, y, 3, 20, 30, a2, b2), 150, dt);
        check_bytes_equal("split", a1, a2, sizeof(a1));
        expect_rounded("transpose", run_transpose(be, dt, x, 2, 33, 40), run_transpose(be, DT_F32, x, 2, 33, 40), 2640, dt);
        int32_t ids[6] = {3, 0, 9, 9, 1, 4};
        expect_rounded("embedding", run_embedding(be, dt, ids, x, 6, 10, 12), run_embedding(be, DT_F32, ids, x, 6, 10, 12),
                       72, dt);
        float t[3] = {0, 250.5f, 999};
        expect_rounded("timestep embedding", run_timestep(be, dt, t, 3, 64, 1, 0.0f),
                       run_timestep(be, DT_F32, t, 3, 64, 1, 0.0f), 192, dt);
        free(x); free(y); free(w); free(b);
    }
}

// One or two units in the last place of dt, relative, and an absolute floor for values near 0.
static Tol tol_16bit(DType dt, float ulps) {
    float ulp = dt == DT_F16 ? 1.0f / 2048.0f : 1.0f / 256.0f;
    return (Tol){ulps * ulp, ulps * ulp};
}

static void test_ops_cuda_16bit(void) {
    if (!test_require_cuda()) return;
    DType types[2] = {DT_F16, DT_BF16};
    for (int ti = 0; ti < 2; ti++) {
        DType dt = types[ti];
        char label[128];
        int B = 2, M = 130, N = 250, K = 300;
        float *a = random_array((size_t)B * M * K, 300, -1, 1), *b = random_array((size_t)B * K * N, 301, -1, 1);
        float* o = random_array((size_t)B * M * N, 302, -1, 1);
        float* bias = random_array(N, 303, -1, 1);
        // products over 300 terms reach ~20: the f32 sums differ in order, then one rounding each
        snprintf(label, sizeof(label), "cuda %s matmul t01 beta 0.25", dtype_name(dt));
        compare_backends(label, run_matmul(BACKEND_CPU, dt, a, b, o, B, M, N, K, 0, 1, 0.5f, 0.25f),
                         run_matmul(BACKEND_CUDA, dt, a, b, o, B, M, N, K, 0, 1, 0.5f, 0.25f), (size_t)B * M * N,
                         tol_16bit(dt, 2));
        snprintf(label, sizeof(label), "cuda %s linear + bias", dtype_name(dt));
        compare_backends(label, run_linear(BACKEND_CPU, dt, a, b, bias, NULL, B * M, K, N),
                         run_linear(BACKEND_CUDA, dt, a, b, bias, NULL, B * M, K, N), (size_t)B * M * N, tol_16bit(dt, 2));
        // CUDA rounds out + bias before the product joins it (ops.h): one more rounding
        snprintf(label, sizeof(label), "cuda %s linear accumulate", dtype_name(dt));
        compare_backends(label, run_linear(BACKEND_CPU, dt, a, b, bias, o, B * M, K, N),
                         run_linear(BACKEND_CUDA, dt, a, b, bias, o, B * M, K, N), (size_t)B * M * N, tol_16bit(dt, 4));
        struct { int N, C_in, H, W, C_out, K, stride, pad, acc; } convs[] = {
            {2, 32, 33, 40, 48, 3, 1, 1, 0}, {1, 16, 96, 80, 8, 3, 1, 1, 1}, {2, 64, 16, 16, 32, 1, 1, 0, 1},
            {1, 32, 31, 30, 64, 3, 2, 1, 0},
        };
        for (size_t c = 0; c < sizeof(convs) / sizeof(convs[0]); c++) {
            int Nc = convs[c].N, C_in = convs[c].C_in, H = convs[c].H, W = convs[c].W, C_out = convs[c].C_out, Kc = convs[c].K;
            int H_out = (H + 2 * convs[c].pad - Kc) / convs[c].stride + 1, W_out = (W + 2 * convs[c].pad - Kc) / convs[c].stride + 1;
            float* x = random_array((size_t)Nc * C_in * H * W, 310 + c, -1, 1);
            float* w = random_array((size_t)C_out * C_in * Kc * Kc, 320 + c, -0.2f, 0.2f);
            float* cb = random_array(C_out, 330 + c, -1, 1);
            float* out0 = convs[c].acc ? random_array((size_t)Nc * C_out * H_out * W_out, 340 + c, -1, 1) : NULL;
            size_t n1, n2;
            snprintf(label, sizeof(label), "cuda %s conv2d %dx%dx%dx%d -> %d k%d s%d%s", dtype_name(dt), Nc, C_in, H, W, C_out,
                     Kc, convs[c].stride, convs[c].acc ? " accumulate" : "");
            float* cpu = run_conv2d(BACKEND_CPU, dt, x, w, cb, out0, Nc, C_in, H, W, C_out, Kc, convs[c].stride, convs[c].pad, &n1);
            float* gpu = run_conv2d(BACKEND_CUDA, dt, x, w, cb, out0, Nc, C_in, H, W, C_out, Kc, convs[c].stride, convs[c].pad, &n2);
            compare_backends(label, cpu, gpu, n1, tol_16bit(dt, 4));
            free(x); free(w); free(cb); free(out0);
        }
        // attention: the FlashAttention kernel (HS 64) and the cuBLAS path (HS 512) round the
        // probabilities to dt before they meet v; outputs are averages of values in [-1, 1], so
        // the tolerance is absolute
        struct { int N, NH, Lq, Lk, HS; } attn[] = {
            {2, 10, 300, 300, 64}, {2, 20, 130, 77, 64}, {1, 2, 64, 64, 64}, {1, 3, 70, 129, 40},
            {1, 1, 200, 333, 512}, // the VAE's head: blocks of queries through cuBLAS
        };
        for (size_t c = 0; c < sizeof(attn) / sizeof(attn[0]); c++) {
            size_t nq = (size_t)attn[c].N * attn[c].Lq * attn[c].NH * attn[c].HS;
            size_t nk = (size_t)attn[c].N * attn[c].Lk * attn[c].NH * attn[c].HS;
            float *q = random_array(nq, 350 + c, -2, 2), *k = random_array(nk, 360 + c, -2, 2), *v = random_array(nk, 370 + c, -1, 1);
            snprintf(label, sizeof(label), "cuda %s attention NH %d Lq %d Lk %d HS %d", dtype_name(dt), attn[c].NH, attn[c].Lq,
                     attn[c].Lk, attn[c].HS);
            Tol t = tol_16bit(dt, 4);
            compare_backends(label,
                             run_attention(BACKEND_CPU, dt, q, k, v, attn[c].N, attn[c].NH, attn[c].Lq, attn[c].Lk, attn[c].HS, 0),
                             run_attention(BACKEND_CUDA, dt, q, k, v, attn[c].N, attn[c].NH, attn[c].Lq, attn[c].Lk, attn[c].HS, 0),
                             nq, (Tol){t.atol, 0.0f});
            free(q); free(k); free(v);
        }
        int Ng = 2, Cg = 320, HW = 64 * 64, G = 32; // SDXL's first level at 512 px: 10 chunks a group
        float* x = random_array((size_t)Ng * Cg * HW, 380, -3, 5);
        float *gw = random_array(Cg, 381, 0.5f, 1.5f), *gb = random_array(Cg, 382, -1, 1);
        const float* x2 = x + 1300000; // a second input: the last 1.32M values of x
        for (int silu = 0; silu < 2; silu++) {
            float m1[64], r1[64], m2[64], r2[64];
            snprintf(label, sizeof(label), "cuda %s group_norm%s 2x320x4096", dtype_name(dt), silu ? " + silu" : "");
            compare_backends(label, run_group_norm(BACKEND_CPU, dt, x, gw, gb, Ng, Cg, HW, G, 1e-5f, silu, m1, r1),
                             run_group_norm(BACKEND_CUDA, dt, x, gw, gb, Ng, Cg, HW, G, 1e-5f, silu, m2, r2),
                             (size_t)Ng * Cg * HW, tol_16bit(dt, 2));
            check_close("cuda group_norm saved mean (f32)", m2, m1, (size_t)Ng * G, TOL_REDUCE.atol, TOL_REDUCE.rtol);
        }
        snprintf(label, sizeof(label), "cuda %s layer_norm 512x1280", dtype_name(dt));
        compare_backends(label, run_layer_norm(BACKEND_CPU, dt, x, gw, gb, 512, 320, 1e-5f, NULL, NULL),
                         run_layer_norm(BACKEND_CUDA, dt, x, gw, gb, 512, 320, 1e-5f, NULL, NULL), 512 * 320, tol_16bit(dt, 2));
        snprintf(label, sizeof(label), "cuda %s softmax", dtype_name(dt));
        compare_backends(label, run_softmax(BACKEND_CPU, dt, x, 64, 2000), run_softmax(BACKEND_CUDA, dt, x, 64, 2000), 128000,
                         tol_16bit(dt, 2));
        for (int act = ACT_SILU; act <= ACT_SIGMOID; act++) {
            snprintf(label, sizeof(label), "cuda %s %s", dtype_name(dt), activation_names[act]);
            compare_backends(label, run_activation(BACKEND_CPU, dt, (Activation)act, x, 100003),
                             run_activation(BACKEND_CUDA, dt, (Activation)act, x, 100003), 100003, tol_16bit(dt, 1));
        }
        snprintf(label, sizeof(label), "cuda %s geglu", dtype_name(dt));
        compare_backends(label, run_geglu(BACKEND_CPU, dt, x, 1000, 50), run_geglu(BACKEND_CUDA, dt, x, 1000, 50), 50000,
                         tol_16bit(dt, 1));
        for (int op = ELEM_ADD; op <= ELEM_SCALE; op++) {
            snprintf(label, sizeof(label), "cuda %s %s", dtype_name(dt), elementwise_names[op]);
            // one f32 operation, then the same rounding: identical
            compare_backends(label, run_elementwise(BACKEND_CPU, dt, (Elementwise)op, x, x2, 100003),
                             run_elementwise(BACKEND_CUDA, dt, (Elementwise)op, x, x2, 100003), 100003, TOL_EXACT);
        }
        snprintf(label, sizeof(label), "cuda %s add_channel_vector", dtype_name(dt));
        compare_backends(label, run_add_channel_vector(BACKEND_CPU, dt, x, x2, 4, 25, 1000),
                         run_add_channel_vector(BACKEND_CUDA, dt, x, x2, 4, 25, 1000), 100000, TOL_EXACT);
        snprintf(label, sizeof(label), "cuda %s transpose 2x320x4096", dtype_name(dt));
        compare_backends(label, run_transpose(BACKEND_CPU, dt, x, 2, 320, 4096), run_transpose(BACKEND_CUDA, dt, x, 2, 320, 4096),
                         (size_t)2 * 320 * 4096, TOL_EXACT);
        float *c1a = xmalloc(sizeof(float) * 2 * 320 * 64), *c1b = xmalloc(sizeof(float) * 2 * 640 * 64);
        float *c2a = xmalloc(sizeof(float) * 2 * 320 * 64), *c2b = xmalloc(sizeof(float) * 2 * 640 * 64);
        snprintf(label, sizeof(label), "cuda %s concat", dtype_name(dt));
        compare_backends(label, run_concat_split(BACKEND_CPU, dt, x, x2, 2, 320 * 64, 640 * 64, c1a, c1b),
                         run_concat_split(BACKEND_CUDA, dt, x, x2, 2, 320 * 64, 640 * 64, c2a, c2b), 2 * 960 * 64, TOL_EXACT);
        check_bytes_equal("cuda split", c2b, c1b, sizeof(float) * 2 * 640 * 64);
        free(c1a); free(c1b); free(c2a); free(c2b);
        snprintf(label, sizeof(label), "cuda %s upsample 43x24 -> 85x48", dtype_name(dt));
        compare_backends(label, run_upsample(BACKEND_CPU, dt, x, 2, 8, 43, 24, 85, 48),
                         run_upsample(BACKEND_CUDA, dt, x, 2, 8, 43, 24, 85, 48), 2 * 8 * 85 * 48, TOL_EXACT);
        float t[4] = {0, 1, 500, 999};
        snprintf(label, sizeof(label), "cuda %s timestep embedding", dtype_name(dt));
        compare_backends(label, run_timestep(BACKEND_CPU, dt, t, 4, 320, 1, 0.0f), run_timestep(BACKEND_CUDA, dt, t, 4, 320, 1, 0.0f),
                         4 * 320, (Tol){2e-4f + tol_16bit(dt, 1).atol, 0.0f});
        free(a); free(b); free(o); free(bias); free(x); free(gw); free(gb);
    }
}

const TestCase tests_ops[] = {
    {"ops_matmul", test_ops_matmul},
    {"ops_linear", test_ops_linear},
    {"ops_conv2d", test_ops_conv2d},
    {"ops_spatial", test_ops_spatial},
    {"ops_norms_softmax", test_ops_norms_softmax},
    {"ops_attention", test_ops_attention},
    {"ops_activations", test_ops_activations},
    {"ops_elementwise", test_ops_elementwise},
    {"ops_layout", test_ops_layout},
    {"ops_timestep_embedding", test_ops_timestep_embedding},
    {"ops_cast", test_ops_cast},
    {"ops_16bit_cpu", test_ops_16bit_cpu},
    {"ops_cuda_matmul_linear", test_ops_cuda_matmul_linear},
    {"ops_cuda_conv2d", test_ops_cuda_conv2d},
    {"ops_cuda_spatial", test_ops_cuda_spatial},
    {"ops_cuda_norms_softmax", test_ops_cuda_norms_softmax},
    {"ops_cuda_attention", test_ops_cuda_attention},
    {"ops_cuda_elementwise", test_ops_cuda_elementwise},
    {"ops_cuda_layout_embed_cast", test_ops_cuda_layout_embed_cast},
    {"ops_cuda_16bit", test_ops_cuda_16bit},
    {NULL, NULL},
};
