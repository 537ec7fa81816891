// ops.c: the plain-C reference of every op in ops.h, and the dispatchers model code calls.
//
// The CPU versions are the specification: straightforward loops in f32 (the `<op>_f32` functions),
// OpenMP pragmas on the outer loops, and nothing clever except the GEMM they share (gemm.c). The
// `<op>_forward_cpu` entry points add the 16-bit storage types on top, by widening and rounding
// around the f32 code (section "16-bit storage on the CPU"). Reductions over many
// values (norm statistics) accumulate in double so the reference is as close to exact as cheap
// code allows; every loop visits its elements in a fixed order, so results never depend on the
// number of threads. The contracts (shapes, = or +=, aliasing) are in ops.h, not repeated here.
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "rng.h"

// ----------------------------------------------------------------------------
// Backends and memory

static Backend g_backend = BACKEND_CPU;

int cuda_built(void) {
#ifdef USE_CUDA
    return 1;
#else
    return 0;
#endif
}

int cuda_device_count(void) {
#ifdef USE_CUDA
    return cuda_device_count_impl();
#else
    return 0;
#endif
}

void backend_select(Backend b) {
    if (b == BACKEND_CUDA) {
        if (!cuda_built()) fatal("the CUDA backend was asked for, but this binary was built without it (make CUDA=1)");
        if (cuda_device_count() == 0) fatal("the CUDA backend was asked for, but no CUDA device is visible");
#ifdef USE_CUDA
        cuda_init();
#endif
    }
    g_backend = b;
}

Backend backend_current(void) { return g_backend; }
const char* backend_name(Backend b) { return b == BACKEND_CUDA ? "cuda" : "cpu"; }

void* aligned_host_try_malloc(size_t bytes) {
    if (bytes > SIZE_MAX - ARENA_ALIGN) return NULL; // the rounding would wrap to a small size
    size_t rounded = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    return aligned_alloc(ARENA_ALIGN, rounded ? rounded : ARENA_ALIGN);
}

void* aligned_host_malloc(size_t bytes) {
    void* p = aligned_host_try_malloc(bytes);
    if (!p) fatal("out of memory allocating %zu bytes (%.1f MiB) on the host", bytes, bytes / 1048576.0);
    return p;
}

void aligned_host_free(void* p) { free(p); }

void* device_try_malloc(size_t bytes) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) return cuda_try_malloc(bytes);
#endif
    return aligned_host_try_malloc(bytes);
}

void* device_malloc(size_t bytes) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) return cuda_malloc(bytes);
#endif
    return aligned_host_malloc(bytes);
}

void device_free(void* p) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) { cuda_free(p); return; }
#endif
    aligned_host_free(p);
}

void device_memset_zero(void* p, size_t bytes) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) { cuda_memset_zero(p, bytes); return; }
#endif
    memset(p, 0, bytes);
}

void copy_to_device(void* dst, const void* src_host, size_t bytes) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) { cuda_copy_to_device(dst, src_host, bytes); return; }
#endif
    memmove(dst, src_host, bytes);
}

void copy_to_host(void* dst_host, const void* src, size_t bytes) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) { cuda_copy_to_host(dst_host, src, bytes); return; }
#endif
    memmove(dst_host, src, bytes);
}

void copy_device_to_device(void* dst, const void* src, size_t bytes) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) { cuda_copy_device_to_device(dst, src, bytes); return; }
#endif
    memcpy(dst, src, bytes);
}

void device_synchronize(void) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) cuda_synchronize();
#endif
}

size_t device_memory_held(void) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) return cuda_memory_held();
#endif
    return 0;
}

size_t device_memory_peak(void) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) return cuda_memory_peak();
#endif
    return 0;
}

void device_memory_peak_reset(void) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) cuda_memory_peak_reset();
#endif
}

size_t device_memory_in_use_on_device(void) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) return cuda_memory_in_use_on_device();
#endif
    return 0;
}

// ----------------------------------------------------------------------------
// Matrix products

static void matmul_f32(float* out, const float* a, const float* b, int batch, int M, int N, int K, int trans_a,
                        int trans_b, float alpha, float beta) {
    long lda = trans_a ? M : K; // row length of a as stored
    long ldb = trans_b ? K : N;
    for (int i = 0; i < batch; i++) {
        sgemm_cpu(trans_a, trans_b, M, N, K, alpha, a + (size_t)i * M * K, lda, b + (size_t)i * K * N, ldb, beta,
                  out + (size_t)i * M * N, N);
    }
}

static void linear_f32(float* out, const float* inp, const float* weight, const float* bias, int N, int C_in,
                        int C_out) {
    // out (N, C_out) = inp (N, C_in) @ weight^T; weight is (C_out, C_in), so B = weight transposed
    sgemm_cpu(0, 1, N, C_out, C_in, 1.0f, inp, C_in, weight, C_in, 0.0f, out, C_out);
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            float* out_n = out + (size_t)n * C_out;
            for (int o = 0; o < C_out; o++) out_n[o] += bias[o];
        }
    }
}

// ----------------------------------------------------------------------------
// Convolution and spatial ops

static int conv_out_size(int in, int K, int stride, int pad) { return (in + 2 * pad - K) / stride + 1; }

static int conv_is_pointwise(int K, int stride, int pad) { return K == 1 && stride == 1 && pad == 0; }

size_t conv2d_scratch_elems(int C_in, int H, int W, int K, int stride, int pad) {
    if (conv_is_pointwise(K, stride, pad)) return 0; // the input already is the GEMM's B matrix
    size_t pixels = (size_t)conv_out_size(H, K, stride, pad) * conv_out_size(W, K, stride, pad);
    if (pixels > CONV_CHUNK) pixels = CONV_CHUNK;
    return (size_t)C_in * K * K * pixels;
}

// im2col for output pixels [p0, p0 + cols): col (C_in*K*K, cols), row r = (c*K + ky)*K + kx holds
// the input value each output pixel sees through kernel tap (ky, kx) of channel c (0 in padding).
// Walks output rows and columns rather than dividing the pixel index: this is the conv's
// memory-bound half, and a division per element would dominate it.
static void im2col_cpu(float* col, const float* inp_n, int C_in, int H, int W, int K, int stride, int pad, int W_out,
                       int p0, int cols) {
    int rows = C_in * K * K;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        int c = r / (K * K), ky = (r / K) % K, kx = r % K;
        const float* inp_c = inp_n + (size_t)c * H * W;
        float* col_r = col + (size_t)r * cols;
        int oy = p0 / W_out, ox = p0 % W_out;
        for (int i = 0; i < cols;) {
            int run = W_out - ox < cols - i ? W_out - ox : cols - i; // the rest of this output row
            int y = oy * stride - pad + ky;
            if (y < 0 || y >= H) {
                for (int j = 0; j < run; j++) col_r[i + j] = 0.0f;
            } else {
                const float* row = inp_c + (size_t)y * W;
                for (int j = 0; j < run; j++) {
                    int x = (ox + j) * stride - pad + kx;
                    col_r[i + j] = (x >= 0 && x < W) ? row[x] : 0.0f;
                }
            }
            i += run;
            ox = 0;
            oy++;
        }
    }
}

static void conv2d_f32(float* out, const float* inp, const float* weight, const float* bias, float* scratch, int N,
                        int C_in, int H, int W, int C_out, int K, int stride, int pad) {
    int H_out = conv_out_size(H, K, stride, pad), W_out = conv_out_size(W, K, stride, pad);
    int P = H_out * W_out; // output pixels per image
    int CKK = C_in * K * K;
    if (!scratch && !conv_is_pointwise(K, stride, pad))
        fatal("conv2d_forward: a %dx%d convolution needs conv2d_scratch_elems() of scratch, got NULL", K, K);
    for (int n = 0; n < N; n++) {
        const float* inp_n = inp + (size_t)n * C_in * H * W;
        float* out_n = out + (size_t)n * C_out * P;
        if (conv_is_pointwise(K, stride, pad)) {
            // out_n (C_out, P) = weight (C_out, C_in) @ inp_n (C_in, P)
            sgemm_cpu(0, 0, C_out, P, C_in, 1.0f, weight, C_in, inp_n, P, 0.0f, out_n, P);
        } else {
            for (int p0 = 0; p0 < P; p0 += CONV_CHUNK) {
                int cols = P - p0 < CONV_CHUNK ? P - p0 : CONV_CHUNK;
                im2col_cpu(scratch, inp_n, C_in, H, W, K, stride, pad, W_out, p0, cols);
                // out_n[:, p0:p0+cols] (C_out, cols; row stride P) = weight (C_out, CKK) @ col (CKK, cols)
                sgemm_cpu(0, 0, C_out, cols, CKK, 1.0f, weight, CKK, scratch, cols, 0.0f, out_n + p0, P);
            }
        }
        if (bias) {
#pragma omp parallel for schedule(static)
            for (int o = 0; o < C_out; o++) {
                float* out_o = out_n + (size_t)o * P;
                for (int p = 0; p < P; p++) out_o[p] += bias[o];
            }
        }
    }
}

static void pad2d_f32(float* out, const float* inp, int N, int C, int H, int W, int top, int bottom, int left,
                       int right) {
    int H_out = H + top + bottom, W_out = W + left + right;
#pragma omp parallel for schedule(static)
    for (long nc = 0; nc < (long)N * C; nc++) {
        const float* inp_nc = inp + nc * H * W;
        float* out_nc = out + nc * H_out * W_out;
        for (int y = 0; y < H_out; y++) {
            for (int x = 0; x < W_out; x++) {
                int sy = y - top, sx = x - left;
                out_nc[(size_t)y * W_out + x] = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? inp_nc[(size_t)sy * W + sx] : 0.0f;
            }
        }
    }
}

// torch's legacy "nearest" source index (UpSampleKernel: nearest_idx).
static int nearest_source_index(int dst, int in, int out) {
    if (out == 2 * in) return dst >> 1;
    float scale = (float)in / (float)out;
    int src = (int)floorf((float)dst * scale);
    return src < in - 1 ? src : in - 1;
}

static void upsample_nearest_f32(float* out, const float* inp, int N, int C, int H, int W, int H_out, int W_out) {
#pragma omp parallel for schedule(static)
    for (long nc = 0; nc < (long)N * C; nc++) {
        const float* inp_nc = inp + nc * H * W;
        float* out_nc = out + nc * H_out * W_out;
        for (int y = 0; y < H_out; y++) {
            const float* src_row = inp_nc + (size_t)nearest_source_index(y, H, H_out) * W;
            for (int x = 0; x < W_out; x++) out_nc[(size_t)y * W_out + x] = src_row[nearest_source_index(x, W, W_out)];
        }
    }
}

static void maxpool2d_f32(float* out, const float* inp, int N, int C, int H, int W, int K, int stride, int pad) {
    int H_out = conv_out_size(H, K, stride, pad), W_out = conv_out_size(W, K, stride, pad);
#pragma omp parallel for schedule(static)
    for (long nc = 0; nc < (long)N * C; nc++) {
        const float* inp_nc = inp + nc * H * W;
        float* out_nc = out + nc * H_out * W_out;
        for (int y = 0; y < H_out; y++) {
            for (int x = 0; x < W_out; x++) {
                float best = -INFINITY;
                for (int ky = 0; ky < K; ky++) {
                    int sy = y * stride - pad + ky;
                    if (sy < 0 || sy >= H) continue;
                    for (int kx = 0; kx < K; kx++) {
                        int sx = x * stride - pad + kx;
                        if (sx < 0 || sx >= W) continue;
                        float v = inp_nc[(size_t)sy * W + sx];
                        if (v > best || isnan(v)) best = v; // torch propagates NaN
                    }
                }
                out_nc[(size_t)y * W_out + x] = best;
            }
        }
    }
}

// ----------------------------------------------------------------------------
// Normalisation and softmax

// Two-pass mean and biased variance of n values, accumulated in double.
static void mean_rstd(const float* x, size_t n, float eps, float* mean_out, float* rstd_out) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += x[i];
    double mean = sum / (double)n;
    double sq = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = x[i] - mean;
        sq += d * d;
    }
    *mean_out = (float)mean;
    *rstd_out = 1.0f / sqrtf((float)(sq / (double)n) + eps);
}

static void group_norm_f32(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                            const float* bias, int N, int C, int HW, int G, float eps) {
    int CG = C / G; // channels per group; a group is CG*HW contiguous values
#pragma omp parallel for schedule(static)
    for (int ng = 0; ng < N * G; ng++) {
        const float* x = inp + (size_t)ng * CG * HW;
        float* y = out + (size_t)ng * CG * HW;
        float m, r;
        mean_rstd(x, (size_t)CG * HW, eps, &m, &r);
        if (mean) mean[ng] = m;
        if (rstd) rstd[ng] = r;
        for (int cg = 0; cg < CG; cg++) {
            int c = (ng % G) * CG + cg;
            float w = weight ? weight[c] : 1.0f, b = bias ? bias[c] : 0.0f;
            for (int p = 0; p < HW; p++) {
                size_t i = (size_t)cg * HW + p;
                y[i] = (x[i] - m) * r * w + b;
            }
        }
    }
}

static void layer_norm_f32(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                            const float* bias, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        float* y = out + (size_t)n * C;
        float m, r;
        mean_rstd(x, (size_t)C, eps, &m, &r);
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = r;
        for (int c = 0; c < C; c++) y[c] = (x[c] - m) * r * (weight ? weight[c] : 1.0f) + (bias ? bias[c] : 0.0f);
    }
}

// exp(x) for the arguments of a softmax, x <= 0, in branch-free arithmetic the compiler vectorises
// (libm's expf is a call per element, and the softmax over long rows is where the CPU spends its
// time in attention). x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so n ln2 is exact), then a
// degree-7 Taylor polynomial for e^r (truncation error below 1e-8 relative) and 2^n from the
// exponent bits: within 2 ulp of the exact value, and the same bits on every machine. Arguments
// below -87 are taken as -87 (e^-87 is 1.6e-38: next to the row maximum's 1 it is nothing).
static inline float exp_nonpositive(float x) {
    x = x > -87.0f ? x : -87.0f;
    // n = round(x / ln2): adding and subtracting 1.5 * 2^23 rounds to the nearest integer (ties
    // to even) in plain arithmetic, which vectorises even where rintf would be a library call
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f; // ln2, high part: 16 significant bits, so n * it is exact
    r = r - n * 1.42860682030941723212e-6f; // ln2, low part
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.66666667e-1f + r * (4.16666667e-2f + r * (8.33333333e-3f +
                                                     r * (1.38888889e-3f + r * 1.98412698e-4f))))));
    // 2^n from its exponent bits (n >= -126, so a normal number); a union, because GCC does not
    // vectorise the loop around a memcpy of the bits
    union { uint32_t u; float f; } scale = {.u = (uint32_t)((int32_t)n + 127) << 23};
    return p * scale.f;
}

// max and sum of a row with eight fixed lanes: the loops vectorise without reassociating
// anything the compiler would have to prove safe, and the result is the same on every machine.
static inline float row_max8(const float* x, int n) {
    float lane[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) lane[l] = x[i + l] > lane[l] ? x[i + l] : lane[l];
    for (; i < n; i++) lane[0] = x[i] > lane[0] ? x[i] : lane[0];
    float m = lane[0];
    for (int l = 1; l < 8; l++) m = lane[l] > m ? lane[l] : m;
    return m;
}

static inline double row_sum8(const float* x, int n) {
    double lane[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) lane[l] += x[i + l];
    for (; i < n; i++) lane[0] += x[i];
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

static void softmax_f32(float* out, const float* inp, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        float* y = out + (size_t)n * C;
        float maxval = row_max8(x, C);
        for (int c = 0; c < C; c++) y[c] = exp_nonpositive(x[c] - maxval);
        double sum = row_sum8(y, C);
        float inv = (float)(1.0 / sum);
        for (int c = 0; c < C; c++) y[c] *= inv;
    }
}

// ----------------------------------------------------------------------------
// Attention

#define ATTENTION_QUERY_BLOCK 64 // queries per task: the score block is 64 x Lk floats

// The scores of queries i0 .. i0+bq-1 (rows of bq x keys) into probabilities, in place: an exact
// softmax per row over the keys the query sees (all of them, or j <= i when causal), zeros for
// the keys it does not see. Shared by attention_f32 and attention_backward_f32, so the backward
// recomputes exactly the probabilities the forward used.
// Compiled once per x86 level (as the GEMM's microkernel, gemm.c): the exponentials of the score
// rows are a sixth of a training step on the CPU, and AVX-512 does them 4x as wide as SSE2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void attention_probs(float* scores, int bq, int keys, int i0, int causal) {
    for (int r = 0; r < bq; r++) {
        float* s = scores + (size_t)r * keys;
        int visible = causal ? i0 + r + 1 : keys; // query i sees keys j <= i
        float maxval = row_max8(s, visible);
        for (int j = 0; j < visible; j++) s[j] = exp_nonpositive(s[j] - maxval);
        double sum = row_sum8(s, visible);
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < visible; j++) s[j] *= inv;
        for (int j = visible; j < keys; j++) s[j] = 0.0f;
    }
}

// For each (n, head, block of up to 64 queries), with the CPU GEMM:
//   S = Q_blk K^T * scale          (Bq, Lk)  scores of the block against every key
//   P = softmax(S) per row         exact: row maximum subtracted, sum in double
//   O_blk = P V / rowsum           (Bq, HS)
// The score block is the only temporary (Bq x Lk floats per thread), so memory stays linear in L.
// Heads are strided views of the (N, L, NH*HS) layout: leading dimension NH*HS, no copies.
static void attention_f32(float* out, const float* q, const float* k, const float* v, int N, int NH, int Lq, int Lk,
                           int HS, int causal) {
    if (HS > ATTENTION_MAX_HS) fatal("attention_forward: head size %d is above the limit %d", HS, ATTENTION_MAX_HS);
    if (causal && Lq != Lk) fatal("attention_forward: a causal mask needs Lq == Lk (got %d, %d)", Lq, Lk);
    const int D = NH * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    const int blocks = (Lq + ATTENTION_QUERY_BLOCK - 1) / ATTENTION_QUERY_BLOCK;
    const long tasks = (long)N * NH * blocks;
#pragma omp parallel
    {
        float* scores = aligned_host_malloc(sizeof(float) * ATTENTION_QUERY_BLOCK * (size_t)Lk);
#pragma omp for schedule(dynamic)
        for (long task = 0; task < tasks; task++) {
            int n = (int)(task / ((long)NH * blocks)), h = (int)(task / blocks % NH), blk = (int)(task % blocks);
            int i0 = blk * ATTENTION_QUERY_BLOCK;
            int bq = Lq - i0 < ATTENTION_QUERY_BLOCK ? Lq - i0 : ATTENTION_QUERY_BLOCK;
            int keys = causal ? i0 + bq : Lk; // a causal block needs keys up to its last query
            const float* q_blk = q + ((size_t)n * Lq + i0) * D + (size_t)h * HS;
            const float* k_h = k + (size_t)n * Lk * D + (size_t)h * HS;
            const float* v_h = v + (size_t)n * Lk * D + (size_t)h * HS;
            float* o_blk = out + ((size_t)n * Lq + i0) * D + (size_t)h * HS;
            // S (bq, keys) = scale * Q_blk (bq, HS) @ K^T (HS, keys)
            sgemm_cpu(0, 1, bq, keys, HS, scale, q_blk, D, k_h, D, 0.0f, scores, keys);
            attention_probs(scores, bq, keys, i0, causal);
            // O_blk (bq, HS) = P (bq, keys) @ V (keys, HS)
            sgemm_cpu(0, 0, bq, HS, keys, 1.0f, scores, keys, v_h, D, 0.0f, o_blk, D);
        }
        aligned_host_free(scores);
    }
}

// ----------------------------------------------------------------------------
// Activations

static void silu_f32(float* out, const float* inp, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = inp[i] / (1.0f + expf(-inp[i]));
}

static void gelu_f32(float* out, const float* inp, size_t n) {
    const float inv_sqrt2 = 0.70710678118654752440f;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = 0.5f * inp[i] * (1.0f + erff(inp[i] * inv_sqrt2));
}

static void gelu_tanh_f32(float* out, const float* inp, size_t n) {
    const float sqrt_2_over_pi = 0.79788456080286535588f;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * (x + 0.044715f * x * x * x)));
    }
}

static void quick_gelu_f32(float* out, const float* inp, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = inp[i] / (1.0f + expf(-1.702f * inp[i]));
}

static void sigmoid_f32(float* out, const float* inp, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = 1.0f / (1.0f + expf(-inp[i]));
}

static void geglu_f32(float* out, const float* inp, int N, int C) {
    const float inv_sqrt2 = 0.70710678118654752440f;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* value = inp + (size_t)n * 2 * C;
        const float* gate = value + C;
        float* out_n = out + (size_t)n * C;
        for (int c = 0; c < C; c++) out_n[c] = value[c] * (0.5f * gate[c] * (1.0f + erff(gate[c] * inv_sqrt2)));
    }
}

// ----------------------------------------------------------------------------
// Elementwise arithmetic

static void add_f32(float* out, const float* a, const float* b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void mul_f32(float* out, const float* a, const float* b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] * b[i];
}

static void scale_f32(float* out, const float* inp, float s, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = s * inp[i];
}

void axpby_forward_cpu(float* out, float alpha, const float* x, float beta, const float* y, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = alpha * x[i] + beta * y[i];
}

static void add_channel_vector_f32(float* out, const float* inp, const float* vec, int N, int C, int HW) {
#pragma omp parallel for schedule(static)
    for (long nc = 0; nc < (long)N * C; nc++) {
        const float* inp_nc = inp + nc * HW;
        float* out_nc = out + nc * HW;
        for (int p = 0; p < HW; p++) out_nc[p] = inp_nc[p] + vec[nc];
    }
}

// ----------------------------------------------------------------------------
// Layout ops

static void concat_f32(float* out, const float* a, const float* b, int outer, int inner_a, int inner_b) {
#pragma omp parallel for schedule(static)
    for (int o = 0; o < outer; o++) {
        float* out_o = out + (size_t)o * (inner_a + inner_b);
        memcpy(out_o, a + (size_t)o * inner_a, sizeof(float) * inner_a);
        memcpy(out_o + inner_a, b + (size_t)o * inner_b, sizeof(float) * inner_b);
    }
}

static void split_f32(float* out_a, float* out_b, const float* inp, int outer, int inner_a, int inner_b) {
#pragma omp parallel for schedule(static)
    for (int o = 0; o < outer; o++) {
        const float* inp_o = inp + (size_t)o * (inner_a + inner_b);
        memcpy(out_a + (size_t)o * inner_a, inp_o, sizeof(float) * inner_a);
        memcpy(out_b + (size_t)o * inner_b, inp_o + inner_a, sizeof(float) * inner_b);
    }
}

static void transpose_f32(float* out, const float* inp, int B, int R, int C) {
    const int T = 32; // tile edge, so both the reads and the writes stay in cache lines
    for (int b = 0; b < B; b++) {
        const float* inp_b = inp + (size_t)b * R * C;
        float* out_b = out + (size_t)b * R * C;
#pragma omp parallel for collapse(2) schedule(static)
        for (int r0 = 0; r0 < R; r0 += T) {
            for (int c0 = 0; c0 < C; c0 += T) {
                for (int r = r0; r < r0 + T && r < R; r++)
                    for (int c = c0; c < c0 + T && c < C; c++) out_b[(size_t)c * R + r] = inp_b[(size_t)r * C + c];
            }
        }
    }
}

static void embedding_f32(float* out, const int32_t* ids, const float* table, int N, int V, int D) {
    for (int i = 0; i < N; i++) {
        if (ids[i] < 0 || ids[i] >= V) fatal("embedding_forward: id %d at position %d is outside [0, %d)", ids[i], i, V);
        memcpy(out + (size_t)i * D, table + (size_t)ids[i] * D, sizeof(float) * D);
    }
}

// ----------------------------------------------------------------------------
// Embeddings of scalars

static void timestep_embedding_f32(float* out, const float* t, int N, int dim, int flip_sin_to_cos, float freq_shift,
                                    float max_period) {
    int half = dim / 2;
    // diffusers: exponent = -math.log(max_period) * arange(half, f32) / (half - shift), all in f32
    const float neg_log_period = (float)(-log((double)max_period));
    for (int n = 0; n < N; n++) {
        float* out_n = out + (size_t)n * dim;
        for (int i = 0; i < half; i++) {
            float exponent = neg_log_period * (float)i / ((float)half - freq_shift);
            float arg = t[n] * expf(exponent);
            float s = sinf(arg), c = cosf(arg);
            out_n[i] = flip_sin_to_cos ? c : s;
            out_n[half + i] = flip_sin_to_cos ? s : c;
        }
    }
}

// ----------------------------------------------------------------------------
// Random numbers on the device

void randn_philox_forward_cpu(float* out, size_t n, uint64_t seed, uint64_t offset, size_t threads) {
    if (threads == 0 || threads % 256 != 0)
        fatal("randn_philox_forward: threads must be a positive multiple of 256 (got %zu)", threads);
    philox_randn(seed, offset, threads, out, n);
}

// ----------------------------------------------------------------------------
// Storage conversion

static int is_float_storage(DType t) { return t == DT_F32 || t == DT_F16 || t == DT_BF16; }

void cast_forward_cpu(void* out, DType out_type, const void* inp, DType inp_type, size_t n) {
    if (!is_float_storage(out_type) || !is_float_storage(inp_type))
        fatal("cast_forward: %s -> %s is not a conversion between F32, F16 and BF16", dtype_name(inp_type),
              dtype_name(out_type));
    if (out_type == inp_type) {
        memmove(out, inp, n * dtype_size(inp_type));
    } else if (inp_type == DT_F32) {
        convert_from_f32(out, out_type, inp, n);
    } else if (out_type == DT_F32) {
        convert_to_f32(out, inp, inp_type, n);
    } else { // f16 <-> bf16 goes through f32, which holds both exactly
        for (size_t i = 0; i < n; i++) {
            float x;
            convert_to_f32(&x, (const uint16_t*)inp + i, inp_type, 1);
            convert_from_f32((uint16_t*)out + i, out_type, &x, 1);
        }
    }
}

// ----------------------------------------------------------------------------
// 16-bit storage on the CPU
//
// An op whose dt is F16 or BF16 widens each input to an f32 copy, runs the f32 reference above on
// the copies, and rounds the result into the caller's buffer (convert_from_f32: round to nearest
// even, as torch). That is the whole contract of ops.h for 16-bit storage, with no second
// implementation to keep in step; the copies cost memory and time, but the CPU's 16-bit path only
// exists to be the specification the CUDA kernels are tested against.

static void require_float_storage(DType dt, const char* op) {
    if (dt != DT_F32 && dt != DT_F16 && dt != DT_BF16)
        fatal("%s: storage type %s is not F32, F16 or BF16", op, dtype_name(dt));
}

// A fresh f32 copy of n values of x (NULL for NULL).
static float* widen(const void* x, size_t n, DType dt) {
    if (!x) return NULL;
    float* y = xmalloc(sizeof(float) * (n ? n : 1));
    convert_to_f32(y, x, dt, n);
    return y;
}

static float* f32_buffer(size_t n) { return xmalloc(sizeof(float) * (n ? n : 1)); }

// Rounds n f32 values into out (of dt), then frees them.
static void narrow_free(void* out, float* x, size_t n, DType dt) {
    convert_from_f32(out, dt, x, n);
    free(x);
}

// out += y over n f32 values (the `accumulate` of linear and conv2d), then frees y.
static void add_into_free(float* out, float* y, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] += y[i];
    free(y);
}

void matmul_forward_cpu(void* out, const void* a, const void* b, int batch, int M, int N, int K, int trans_a,
                        int trans_b, float alpha, float beta, DType dt) {
    require_float_storage(dt, "matmul_forward");
    if (dt == DT_F32) {
        matmul_f32(out, a, b, batch, M, N, K, trans_a, trans_b, alpha, beta);
        return;
    }
    size_t n_out = (size_t)batch * M * N;
    float *a32 = widen(a, (size_t)batch * M * K, dt), *b32 = widen(b, (size_t)batch * K * N, dt);
    float* o32 = beta != 0.0f ? widen(out, n_out, dt) : f32_buffer(n_out);
    matmul_f32(o32, a32, b32, batch, M, N, K, trans_a, trans_b, alpha, beta);
    narrow_free(out, o32, n_out, dt);
    free(a32);
    free(b32);
}

void linear_forward_cpu(void* out, const void* inp, const void* weight, const void* bias, int N, int C_in, int C_out,
                        int accumulate, DType dt) {
    require_float_storage(dt, "linear_forward");
    size_t n_out = (size_t)N * C_out;
    if (dt == DT_F32) {
        if (!accumulate) {
            linear_f32(out, inp, weight, bias, N, C_in, C_out);
            return;
        }
        float* y = f32_buffer(n_out);
        linear_f32(y, inp, weight, bias, N, C_in, C_out);
        add_into_free(out, y, n_out);
        return;
    }
    float *x = widen(inp, (size_t)N * C_in, dt), *w = widen(weight, (size_t)C_out * C_in, dt), *b = widen(bias, C_out, dt);
    float* y = f32_buffer(n_out);
    linear_f32(y, x, w, b, N, C_in, C_out);
    if (accumulate) {
        float* o = widen(out, n_out, dt);
        add_into_free(o, y, n_out);
        y = o;
    }
    narrow_free(out, y, n_out, dt);
    free(x);
    free(w);
    free(b);
}

void conv2d_forward_cpu(void* out, const void* inp, const void* weight, const void* bias, void* scratch, int N,
                        int C_in, int H, int W, int C_out, int K, int stride, int pad, int accumulate, DType dt) {
    require_float_storage(dt, "conv2d_forward");
    size_t n_out = (size_t)N * C_out * conv_out_size(H, K, stride, pad) * conv_out_size(W, K, stride, pad);
    if (dt == DT_F32 && !accumulate) {
        conv2d_f32(out, inp, weight, bias, scratch, N, C_in, H, W, C_out, K, stride, pad);
        return;
    }
    if (dt == DT_F32) {
        float* y = f32_buffer(n_out);
        conv2d_f32(y, inp, weight, bias, scratch, N, C_in, H, W, C_out, K, stride, pad);
        add_into_free(out, y, n_out);
        return;
    }
    // the caller's scratch holds 16-bit elements: the f32 reference gets its own
    size_t scratch_n = conv2d_scratch_elems(C_in, H, W, K, stride, pad);
    float* col = scratch_n ? f32_buffer(scratch_n) : NULL;
    float* x = widen(inp, (size_t)N * C_in * H * W, dt);
    float *w = widen(weight, (size_t)C_out * C_in * K * K, dt), *b = widen(bias, C_out, dt);
    float* y = f32_buffer(n_out);
    conv2d_f32(y, x, w, b, col, N, C_in, H, W, C_out, K, stride, pad);
    if (accumulate) {
        float* o = widen(out, n_out, dt);
        add_into_free(o, y, n_out);
        y = o;
    }
    narrow_free(out, y, n_out, dt);
    free(col);
    free(x);
    free(w);
    free(b);
}

void pad2d_forward_cpu(void* out, const void* inp, int N, int C, int H, int W, int top, int bottom, int left, int right,
                       DType dt) {
    require_float_storage(dt, "pad2d_forward");
    if (dt == DT_F32) {
        pad2d_f32(out, inp, N, C, H, W, top, bottom, left, right);
        return;
    }
    size_t n_out = (size_t)N * C * (H + top + bottom) * (W + left + right);
    float *x = widen(inp, (size_t)N * C * H * W, dt), *y = f32_buffer(n_out);
    pad2d_f32(y, x, N, C, H, W, top, bottom, left, right);
    narrow_free(out, y, n_out, dt);
    free(x);
}

void upsample_nearest_forward_cpu(void* out, const void* inp, int N, int C, int H, int W, int H_out, int W_out,
                                  DType dt) {
    require_float_storage(dt, "upsample_nearest_forward");
    if (dt == DT_F32) {
        upsample_nearest_f32(out, inp, N, C, H, W, H_out, W_out);
        return;
    }
    size_t n_out = (size_t)N * C * H_out * W_out;
    float *x = widen(inp, (size_t)N * C * H * W, dt), *y = f32_buffer(n_out);
    upsample_nearest_f32(y, x, N, C, H, W, H_out, W_out);
    narrow_free(out, y, n_out, dt);
    free(x);
}

void maxpool2d_forward_cpu(void* out, const void* inp, int N, int C, int H, int W, int K, int stride, int pad,
                           DType dt) {
    require_float_storage(dt, "maxpool2d_forward");
    if (dt == DT_F32) {
        maxpool2d_f32(out, inp, N, C, H, W, K, stride, pad);
        return;
    }
    size_t n_out = (size_t)N * C * conv_out_size(H, K, stride, pad) * conv_out_size(W, K, stride, pad);
    float *x = widen(inp, (size_t)N * C * H * W, dt), *y = f32_buffer(n_out);
    maxpool2d_f32(y, x, N, C, H, W, K, stride, pad);
    narrow_free(out, y, n_out, dt);
    free(x);
}

void group_norm_forward_cpu(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                            int N, int C, int HW, int G, float eps, int silu, DType dt) {
    require_float_storage(dt, "group_norm_forward");
    size_t n = (size_t)N * C * HW;
    if (dt == DT_F32) {
        group_norm_f32(out, mean, rstd, inp, weight, bias, N, C, HW, G, eps);
        if (silu) silu_f32(out, out, n);
        return;
    }
    float *x = widen(inp, n, dt), *w = widen(weight, C, dt), *b = widen(bias, C, dt);
    group_norm_f32(x, mean, rstd, x, w, b, N, C, HW, G, eps); // in place, which group_norm_f32 allows
    if (silu) silu_f32(x, x, n);
    narrow_free(out, x, n, dt);
    free(w);
    free(b);
}

void layer_norm_forward_cpu(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                            int N, int C, float eps, DType dt) {
    require_float_storage(dt, "layer_norm_forward");
    if (dt == DT_F32) {
        layer_norm_f32(out, mean, rstd, inp, weight, bias, N, C, eps);
        return;
    }
    size_t n = (size_t)N * C;
    float *x = widen(inp, n, dt), *w = widen(weight, C, dt), *b = widen(bias, C, dt);
    layer_norm_f32(x, mean, rstd, x, w, b, N, C, eps);
    narrow_free(out, x, n, dt);
    free(w);
    free(b);
}

void softmax_forward_cpu(void* out, const void* inp, int N, int C, DType dt) {
    require_float_storage(dt, "softmax_forward");
    if (dt == DT_F32) {
        softmax_f32(out, inp, N, C);
        return;
    }
    size_t n = (size_t)N * C;
    float* x = widen(inp, n, dt);
    softmax_f32(x, x, N, C);
    narrow_free(out, x, n, dt);
}

void attention_forward_cpu(void* out, const void* q, const void* k, const void* v, int N, int NH, int Lq, int Lk,
                           int HS, int causal, DType dt) {
    require_float_storage(dt, "attention_forward");
    if (dt == DT_F32) {
        attention_f32(out, q, k, v, N, NH, Lq, Lk, HS, causal);
        return;
    }
    size_t nq = (size_t)N * Lq * NH * HS, nk = (size_t)N * Lk * NH * HS;
    float *q32 = widen(q, nq, dt), *k32 = widen(k, nk, dt), *v32 = widen(v, nk, dt), *o32 = f32_buffer(nq);
    attention_f32(o32, q32, k32, v32, N, NH, Lq, Lk, HS, causal);
    narrow_free(out, o32, nq, dt);
    free(q32);
    free(k32);
    free(v32);
}

// The unary activations share one shape: widen, apply in place, round.
typedef void (*UnaryF32)(float* out, const float* inp, size_t n);
static void unary_cpu(UnaryF32 f, void* out, const void* inp, size_t n, DType dt, const char* op) {
    require_float_storage(dt, op);
    if (dt == DT_F32) {
        f(out, inp, n);
        return;
    }
    float* x = widen(inp, n, dt);
    f(x, x, n);
    narrow_free(out, x, n, dt);
}

void silu_forward_cpu(void* out, const void* inp, size_t n, DType dt) { unary_cpu(silu_f32, out, inp, n, dt, "silu_forward"); }
void gelu_forward_cpu(void* out, const void* inp, size_t n, DType dt) { unary_cpu(gelu_f32, out, inp, n, dt, "gelu_forward"); }
void gelu_tanh_forward_cpu(void* out, const void* inp, size_t n, DType dt) {
    unary_cpu(gelu_tanh_f32, out, inp, n, dt, "gelu_tanh_forward");
}
void quick_gelu_forward_cpu(void* out, const void* inp, size_t n, DType dt) {
    unary_cpu(quick_gelu_f32, out, inp, n, dt, "quick_gelu_forward");
}
void sigmoid_forward_cpu(void* out, const void* inp, size_t n, DType dt) {
    unary_cpu(sigmoid_f32, out, inp, n, dt, "sigmoid_forward");
}

void geglu_forward_cpu(void* out, const void* inp, int N, int C, DType dt) {
    require_float_storage(dt, "geglu_forward");
    if (dt == DT_F32) {
        geglu_f32(out, inp, N, C);
        return;
    }
    float *x = widen(inp, (size_t)N * 2 * C, dt), *y = f32_buffer((size_t)N * C);
    geglu_f32(y, x, N, C);
    narrow_free(out, y, (size_t)N * C, dt);
    free(x);
}

// add and mul: two inputs of n values.
typedef void (*BinaryF32)(float* out, const float* a, const float* b, size_t n);
static void binary_cpu(BinaryF32 f, void* out, const void* a, const void* b, size_t n, DType dt, const char* op) {
    require_float_storage(dt, op);
    if (dt == DT_F32) {
        f(out, a, b, n);
        return;
    }
    float *a32 = widen(a, n, dt), *b32 = widen(b, n, dt);
    f(a32, a32, b32, n);
    narrow_free(out, a32, n, dt);
    free(b32);
}

void add_forward_cpu(void* out, const void* a, const void* b, size_t n, DType dt) { binary_cpu(add_f32, out, a, b, n, dt, "add_forward"); }
void mul_forward_cpu(void* out, const void* a, const void* b, size_t n, DType dt) { binary_cpu(mul_f32, out, a, b, n, dt, "mul_forward"); }

void scale_forward_cpu(void* out, const void* inp, float s, size_t n, DType dt) {
    require_float_storage(dt, "scale_forward");
    if (dt == DT_F32) {
        scale_f32(out, inp, s, n);
        return;
    }
    float* x = widen(inp, n, dt);
    scale_f32(x, x, s, n);
    narrow_free(out, x, n, dt);
}

void add_channel_vector_forward_cpu(void* out, const void* inp, const void* vec, int N, int C, int HW, DType dt) {
    require_float_storage(dt, "add_channel_vector_forward");
    if (dt == DT_F32) {
        add_channel_vector_f32(out, inp, vec, N, C, HW);
        return;
    }
    size_t n = (size_t)N * C * HW;
    float *x = widen(inp, n, dt), *v = widen(vec, (size_t)N * C, dt);
    add_channel_vector_f32(x, x, v, N, C, HW);
    narrow_free(out, x, n, dt);
    free(v);
}

void concat_forward_cpu(void* out, const void* a, const void* b, int outer, int inner_a, int inner_b, DType dt) {
    require_float_storage(dt, "concat_forward");
    if (dt == DT_F32) {
        concat_f32(out, a, b, outer, inner_a, inner_b);
        return;
    }
    size_t n = (size_t)outer * (inner_a + inner_b);
    float *a32 = widen(a, (size_t)outer * inner_a, dt), *b32 = widen(b, (size_t)outer * inner_b, dt), *y = f32_buffer(n);
    concat_f32(y, a32, b32, outer, inner_a, inner_b);
    narrow_free(out, y, n, dt);
    free(a32);
    free(b32);
}

void split_forward_cpu(void* out_a, void* out_b, const void* inp, int outer, int inner_a, int inner_b, DType dt) {
    require_float_storage(dt, "split_forward");
    if (dt == DT_F32) {
        split_f32(out_a, out_b, inp, outer, inner_a, inner_b);
        return;
    }
    size_t na = (size_t)outer * inner_a, nb = (size_t)outer * inner_b;
    float *x = widen(inp, na + nb, dt), *a32 = f32_buffer(na), *b32 = f32_buffer(nb);
    split_f32(a32, b32, x, outer, inner_a, inner_b);
    narrow_free(out_a, a32, na, dt);
    narrow_free(out_b, b32, nb, dt);
    free(x);
}

void transpose_forward_cpu(void* out, const void* inp, int B, int R, int C, DType dt) {
    require_float_storage(dt, "transpose_forward");
    if (dt == DT_F32) {
        transpose_f32(out, inp, B, R, C);
        return;
    }
    size_t n = (size_t)B * R * C;
    float *x = widen(inp, n, dt), *y = f32_buffer(n);
    transpose_f32(y, x, B, R, C);
    narrow_free(out, y, n, dt);
    free(x);
}

void embedding_forward_cpu(void* out, const int32_t* ids, const void* table, int N, int V, int D, DType dt) {
    require_float_storage(dt, "embedding_forward");
    if (dt == DT_F32) {
        embedding_f32(out, ids, table, N, V, D);
        return;
    }
    // a gather moves values without arithmetic: copy the 16-bit rows as they are (widening the
    // whole table, 49408 x 1280 for a text encoder, to read 77 rows of it would be absurd)
    size_t row = (size_t)D * dtype_size(dt);
    for (int i = 0; i < N; i++) {
        if (ids[i] < 0 || ids[i] >= V) fatal("embedding_forward: id %d at position %d is outside [0, %d)", ids[i], i, V);
        memcpy((char*)out + (size_t)i * row, (const char*)table + (size_t)ids[i] * row, row);
    }
}

void timestep_embedding_forward_cpu(void* out, const float* t, int N, int dim, int flip_sin_to_cos, float freq_shift,
                                    float max_period, DType dt) {
    require_float_storage(dt, "timestep_embedding_forward");
    if (dt == DT_F32) {
        timestep_embedding_f32(out, t, N, dim, flip_sin_to_cos, freq_shift, max_period);
        return;
    }
    float* y = f32_buffer((size_t)N * dim);
    timestep_embedding_f32(y, t, N, dim, flip_sin_to_cos, freq_shift, max_period);
    narrow_free(out, y, (size_t)N * dim, dt);
}

// ----------------------------------------------------------------------------
// Backward passes (the contract is in ops.h, section "Backward passes")
//
// The f32 references first (`<op>_backward_f32`, with the whole contract: accumulate, += into
// parameter gradients, NULL outputs), then the `_cpu` entry points, which add 16-bit storage
// around them exactly as the forward ops do. Parameter gradients are sums over the batch and the
// pixels or tokens; each of those sums is computed by one thread in a fixed order (or from
// per-(n, c) partial sums that are then added in order of n), so no result depends on the number
// of threads. Long sums are accumulated in double, as the forward's statistics are.

// out[c] += sum over the rows of x (rows, cols), in double, rows in order. Threads take blocks
// of 64 columns, so each walks contiguous row segments and every column has one owner.
#define COLUMN_BLOCK 64
static void add_column_sums(float* out, const float* x, int rows, int cols) {
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < cols; c0 += COLUMN_BLOCK) {
        int c1 = c0 + COLUMN_BLOCK < cols ? c0 + COLUMN_BLOCK : cols;
        double acc[COLUMN_BLOCK] = {0};
        for (int r = 0; r < rows; r++) {
            const float* x_r = x + (size_t)r * cols;
            for (int c = c0; c < c1; c++) acc[c - c0] += x_r[c];
        }
        for (int c = c0; c < c1; c++) out[c] += (float)acc[c - c0];
    }
}

static void linear_backward_f32(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                const float* weight, int N, int C_in, int C_out, int accumulate) {
    // dinp (N, C_in) = dout (N, C_out) @ weight (C_out, C_in); beta 1 adds it to what dinp holds
    if (dinp) sgemm_cpu(0, 0, N, C_in, C_out, 1.0f, dout, C_out, weight, C_in, accumulate ? 1.0f : 0.0f, dinp, C_in);
    // dweight (C_out, C_in) += dout^T @ inp: dout stored (N, C_out) is op(a) with trans_a, lda C_out
    if (dweight) sgemm_cpu(1, 0, C_out, C_in, N, 1.0f, dout, C_out, inp, C_in, 1.0f, dweight, C_in);
    if (dbias) add_column_sums(dbias, dout, N, C_out);
}

// col2im for output pixels [p0, p0 + cols): the transpose of im2col_cpu. Every value of dcol
// (C_in*K*K, cols) is added to the input pixel im2col read it from; taps that fell in the
// padding are dropped. Threads split the channels, so an input pixel has one owner, and its
// additions come in a fixed order (tap by tap, then output pixel by output pixel).
static void col2im_add_cpu(float* dinp_n, const float* dcol, int C_in, int H, int W, int K, int stride, int pad,
                           int W_out, int p0, int cols) {
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C_in; c++) {
        float* dinp_c = dinp_n + (size_t)c * H * W;
        for (int ky = 0; ky < K; ky++) {
            for (int kx = 0; kx < K; kx++) {
                const float* col_r = dcol + ((size_t)(c * K + ky) * K + kx) * cols;
                int oy = p0 / W_out, ox = p0 % W_out;
                for (int i = 0; i < cols; i++) {
                    int y = oy * stride - pad + ky, x = ox * stride - pad + kx;
                    if (y >= 0 && y < H && x >= 0 && x < W) dinp_c[(size_t)y * W + x] += col_r[i];
                    if (++ox == W_out) {
                        ox = 0;
                        oy++;
                    }
                }
            }
        }
    }
}

static void conv2d_backward_f32(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                const float* weight, float* scratch, int N, int C_in, int H, int W, int C_out, int K,
                                int stride, int pad, int accumulate) {
    int H_out = conv_out_size(H, K, stride, pad), W_out = conv_out_size(W, K, stride, pad);
    int P = H_out * W_out; // output pixels per image
    int CKK = C_in * K * K;
    int pointwise = conv_is_pointwise(K, stride, pad);
    if (!scratch && !pointwise && (dinp || dweight))
        fatal("conv2d_backward: a %dx%d convolution needs conv2d_scratch_elems() of scratch, got NULL", K, K);
    // col2im adds into dinp chunk by chunk, so without accumulate it starts from zero
    if (dinp && !accumulate && !pointwise) memset(dinp, 0, sizeof(float) * (size_t)N * C_in * H * W);
    for (int n = 0; n < N; n++) {
        const float* inp_n = inp ? inp + (size_t)n * C_in * H * W : NULL;
        const float* dout_n = dout + (size_t)n * C_out * P;
        float* dinp_n = dinp ? dinp + (size_t)n * C_in * H * W : NULL;
        if (pointwise) {
            // dinp_n (C_in, P) = weight^T (C_in, C_out) @ dout_n (C_out, P); weight stored (C_out, C_in)
            if (dinp)
                sgemm_cpu(1, 0, C_in, P, C_out, 1.0f, weight, C_in, dout_n, P, accumulate ? 1.0f : 0.0f, dinp_n, P);
            // dweight (C_out, C_in) += dout_n (C_out, P) @ inp_n^T (P, C_in); inp_n stored (C_in, P)
            if (dweight) sgemm_cpu(0, 1, C_out, C_in, P, 1.0f, dout_n, P, inp_n, P, 1.0f, dweight, C_in);
            continue;
        }
        for (int p0 = 0; p0 < P; p0 += CONV_CHUNK) {
            int cols = P - p0 < CONV_CHUNK ? P - p0 : CONV_CHUNK;
            if (dweight) {
                // dweight (C_out, CKK) += dout_n[:, p0:p0+cols] (C_out, cols; row stride P) @ col^T,
                // col = im2col of this chunk (CKK, cols), the matrix the forward multiplied
                im2col_cpu(scratch, inp_n, C_in, H, W, K, stride, pad, W_out, p0, cols);
                sgemm_cpu(0, 1, C_out, CKK, cols, 1.0f, dout_n + p0, P, scratch, cols, 1.0f, dweight, CKK);
            }
            if (dinp) {
                // dcol (CKK, cols) = weight^T (CKK, C_out) @ dout chunk (C_out, cols), then back to pixels
                sgemm_cpu(1, 0, CKK, cols, C_out, 1.0f, weight, CKK, dout_n + p0, P, 0.0f, scratch, cols);
                col2im_add_cpu(dinp_n, scratch, C_in, H, W, K, stride, pad, W_out, p0, cols);
            }
        }
    }
    if (dbias) {
#pragma omp parallel for schedule(static)
        for (int o = 0; o < C_out; o++) {
            double sum = 0.0;
            for (int n = 0; n < N; n++) {
                const float* dout_no = dout + ((size_t)n * C_out + o) * P;
                for (int p = 0; p < P; p++) sum += dout_no[p];
            }
            dbias[o] += (float)sum;
        }
    }
}

// The gradient reaching the norm's affine output y = xhat * w + b: dout itself, or with the
// fused SiLU dout * silu'(y), y recomputed exactly as group_norm_f32 computed it.
static inline float norm_silu_grad(float dout, float xhat, float w, float b, int silu) {
    if (!silu) return dout;
    float y = xhat * w + b;
    float s = 1.0f / (1.0f + expf(-y));
    return dout * s * (1.0f + y * (1.0f - s));
}

static void group_norm_backward_f32(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                    const float* mean, const float* rstd, const float* weight, const float* bias,
                                    int N, int C, int HW, int G, int silu, int accumulate) {
    int CG = C / G; // channels per group; a group is CG*HW contiguous values
    size_t M = (size_t)CG * HW;
    // per (n, c), the sums of dy and dy * xhat over HW that the parameter gradients add up
    double* sum_dy = dweight || dbias ? xmalloc(sizeof(double) * (size_t)N * C) : NULL;
    double* sum_dy_xhat = dweight || dbias ? xmalloc(sizeof(double) * (size_t)N * C) : NULL;
#pragma omp parallel for schedule(static)
    for (int ng = 0; ng < N * G; ng++) {
        int n = ng / G, g = ng % G;
        const float* x = inp + (size_t)ng * M;
        const float* dy = dout + (size_t)ng * M;
        float m = mean[ng], r = rstd[ng];
        // over the group, with gx = dy * w the gradient reaching xhat: sum(gx) and sum(gx * xhat)
        double sum_g = 0.0, sum_g_xhat = 0.0;
        for (int cg = 0; cg < CG; cg++) {
            int c = g * CG + cg;
            float w = weight ? weight[c] : 1.0f, b = bias ? bias[c] : 0.0f;
            double s1 = 0.0, s2 = 0.0;
            for (int p = 0; p < HW; p++) {
                size_t i = (size_t)cg * HW + p;
                float xhat = (x[i] - m) * r;
                float d = norm_silu_grad(dy[i], xhat, w, b, silu);
                s1 += d;
                s2 += (double)d * xhat;
            }
            if (sum_dy) {
                sum_dy[(size_t)n * C + c] = s1;
                sum_dy_xhat[(size_t)n * C + c] = s2;
            }
            sum_g += w * s1;
            sum_g_xhat += w * s2;
        }
        if (!dinp) continue;
        float mean_g = (float)(sum_g / (double)M), mean_g_xhat = (float)(sum_g_xhat / (double)M);
        float* dx = dinp + (size_t)ng * M;
        for (int cg = 0; cg < CG; cg++) {
            int c = g * CG + cg;
            float w = weight ? weight[c] : 1.0f, b = bias ? bias[c] : 0.0f;
            for (int p = 0; p < HW; p++) {
                size_t i = (size_t)cg * HW + p;
                float xhat = (x[i] - m) * r;
                float gx = norm_silu_grad(dy[i], xhat, w, b, silu) * w;
                float d = r * (gx - mean_g - xhat * mean_g_xhat);
                dx[i] = accumulate ? dx[i] + d : d;
            }
        }
    }
    if (sum_dy) {
        // each channel adds its per-image sums in order of n
        for (int c = 0; c < C; c++) {
            double s1 = 0.0, s2 = 0.0;
            for (int n = 0; n < N; n++) {
                s1 += sum_dy[(size_t)n * C + c];
                s2 += sum_dy_xhat[(size_t)n * C + c];
            }
            if (dbias) dbias[c] += (float)s1;
            if (dweight) dweight[c] += (float)s2;
        }
    }
    free(sum_dy);
    free(sum_dy_xhat);
}

static void layer_norm_backward_f32(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                    const float* mean, const float* rstd, const float* weight, int N, int C,
                                    int accumulate) {
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const float* x = inp + (size_t)n * C;
            const float* dy = dout + (size_t)n * C;
            float* dx = dinp + (size_t)n * C;
            float m = mean[n], r = rstd[n];
            double sum_g = 0.0, sum_g_xhat = 0.0; // gx = dy * w, the gradient reaching xhat
            for (int c = 0; c < C; c++) {
                float xhat = (x[c] - m) * r;
                float gx = dy[c] * (weight ? weight[c] : 1.0f);
                sum_g += gx;
                sum_g_xhat += (double)gx * xhat;
            }
            float mean_g = (float)(sum_g / C), mean_g_xhat = (float)(sum_g_xhat / C);
            for (int c = 0; c < C; c++) {
                float xhat = (x[c] - m) * r;
                float gx = dy[c] * (weight ? weight[c] : 1.0f);
                float d = r * (gx - mean_g - xhat * mean_g_xhat);
                dx[c] = accumulate ? dx[c] + d : d;
            }
        }
    }
    if (!dweight && !dbias) return;
    // dweight[c] += sum_n dy * xhat, dbias[c] += sum_n dy: columns in blocks, one owner each
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += COLUMN_BLOCK) {
        int c1 = c0 + COLUMN_BLOCK < C ? c0 + COLUMN_BLOCK : C;
        double acc_w[COLUMN_BLOCK] = {0}, acc_b[COLUMN_BLOCK] = {0};
        for (int n = 0; n < N; n++) {
            const float* x = inp + (size_t)n * C;
            const float* dy = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) {
                float xhat = (x[c] - mean[n]) * rstd[n];
                acc_w[c - c0] += (double)dy[c] * xhat;
                acc_b[c - c0] += dy[c];
            }
        }
        for (int c = c0; c < c1; c++) {
            if (dweight) dweight[c] += (float)acc_w[c - c0];
            if (dbias) dbias[c] += (float)acc_b[c - c0];
        }
    }
}

// One task per (n, head), its query blocks in order, so dK and dV of the head are summed over
// the blocks by one thread in a fixed order. Per block of up to 64 queries:
//   S = scale * Q_blk K^T,  P = softmax(S)             (attention_probs: the forward's P exactly)
//   dV += P^T dO_blk
//   dP = dO_blk V^T,  dS = P * (dP - D),  D_i = dO_i . O_i
//   dQ_blk = scale * dS K,  dK += scale * dS^T Q_blk
// P and dP are the only temporaries, bq x Lk floats each per thread.
static void attention_backward_f32(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                   const float* k, const float* v, const float* out, int N, int NH, int Lq, int Lk,
                                   int HS, int causal) {
    if (HS > ATTENTION_MAX_HS) fatal("attention_backward: head size %d is above the limit %d", HS, ATTENTION_MAX_HS);
    if (causal && Lq != Lk) fatal("attention_backward: a causal mask needs Lq == Lk (got %d, %d)", Lq, Lk);
    const int D = NH * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    const int blocks = (Lq + ATTENTION_QUERY_BLOCK - 1) / ATTENTION_QUERY_BLOCK;
    const long tasks = (long)N * NH;
#pragma omp parallel
    {
        float* probs = aligned_host_malloc(sizeof(float) * ATTENTION_QUERY_BLOCK * (size_t)Lk);
        float* dprobs = aligned_host_malloc(sizeof(float) * ATTENTION_QUERY_BLOCK * (size_t)Lk);
#pragma omp for schedule(dynamic)
        for (long task = 0; task < tasks; task++) {
            int n = (int)(task / NH), h = (int)(task % NH);
            const float* k_h = k + (size_t)n * Lk * D + (size_t)h * HS;
            const float* v_h = v + (size_t)n * Lk * D + (size_t)h * HS;
            float* dk_h = dk ? dk + (size_t)n * Lk * D + (size_t)h * HS : NULL;
            float* dv_h = dv ? dv + (size_t)n * Lk * D + (size_t)h * HS : NULL;
            // dK and dV collect every query block's share, from zero
            for (int j = 0; j < Lk; j++) {
                if (dk_h) memset(dk_h + (size_t)j * D, 0, sizeof(float) * HS);
                if (dv_h) memset(dv_h + (size_t)j * D, 0, sizeof(float) * HS);
            }
            for (int blk = 0; blk < blocks; blk++) {
                int i0 = blk * ATTENTION_QUERY_BLOCK;
                int bq = Lq - i0 < ATTENTION_QUERY_BLOCK ? Lq - i0 : ATTENTION_QUERY_BLOCK;
                int keys = causal ? i0 + bq : Lk; // the keys any query of the block sees
                size_t row0 = ((size_t)n * Lq + i0) * D + (size_t)h * HS;
                const float *q_blk = q + row0, *o_blk = out + row0, *do_blk = dout + row0;
                // P (bq, keys) = softmax(scale * Q_blk (bq, HS) @ K^T (HS, keys)), as the forward
                sgemm_cpu(0, 1, bq, keys, HS, scale, q_blk, D, k_h, D, 0.0f, probs, keys);
                attention_probs(probs, bq, keys, i0, causal);
                // dV (keys, HS) += P^T (keys, bq) @ dO_blk (bq, HS); P stored (bq, keys)
                if (dv_h) sgemm_cpu(1, 0, keys, HS, bq, 1.0f, probs, keys, do_blk, D, 1.0f, dv_h, D);
                if (!dq && !dk) continue;
                // dP (bq, keys) = dO_blk (bq, HS) @ V^T (HS, keys)
                sgemm_cpu(0, 1, bq, keys, HS, 1.0f, do_blk, D, v_h, D, 0.0f, dprobs, keys);
                // dS = P * (dP - D_i), in place of dP: the softmax's backward, row by row. Masked
                // keys have P = 0, so their dS is 0 too.
                for (int r = 0; r < bq; r++) {
                    double d_i = 0.0;
                    for (int d = 0; d < HS; d++) d_i += (double)do_blk[(size_t)r * D + d] * o_blk[(size_t)r * D + d];
                    float d_f = (float)d_i;
                    const float* p_r = probs + (size_t)r * keys;
                    float* ds_r = dprobs + (size_t)r * keys;
                    for (int j = 0; j < keys; j++) ds_r[j] = p_r[j] * (ds_r[j] - d_f);
                }
                // dQ_blk (bq, HS) = scale * dS (bq, keys) @ K (keys, HS)
                if (dq) sgemm_cpu(0, 0, bq, HS, keys, scale, dprobs, keys, k_h, D, 0.0f, dq + row0, D);
                // dK (keys, HS) += scale * dS^T (keys, bq) @ Q_blk (bq, HS)
                if (dk_h) sgemm_cpu(1, 0, keys, HS, bq, scale, dprobs, keys, q_blk, D, 1.0f, dk_h, D);
            }
        }
        aligned_host_free(probs);
        aligned_host_free(dprobs);
    }
}

static void silu_backward_f32(float* dinp, const float* dout, const float* inp, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float s = 1.0f / (1.0f + expf(-x));
        dinp[i] = dout[i] * s * (1.0f + x * (1.0f - s)); // torch's silu_backward, term for term
    }
}

// gelu'(x) = Phi(x) + x phi(x), as torch's GeluBackward for approximate="none"
static inline float gelu_grad(float x) {
    const float inv_sqrt2 = 0.70710678118654752440f, inv_sqrt_2pi = 0.39894228040143267794f;
    float cdf = 0.5f * (1.0f + erff(x * inv_sqrt2));
    float pdf = inv_sqrt_2pi * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

static void gelu_backward_f32(float* dinp, const float* dout, const float* inp, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dinp[i] = dout[i] * gelu_grad(inp[i]);
}

static void geglu_backward_f32(float* dinp, const float* dout, const float* inp, int N, int C) {
    const float inv_sqrt2 = 0.70710678118654752440f;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* value = inp + (size_t)n * 2 * C;
        const float* gate = value + C;
        const float* dy = dout + (size_t)n * C;
        float* dvalue = dinp + (size_t)n * 2 * C;
        float* dgate = dvalue + C;
        for (int c = 0; c < C; c++) {
            float gelu = 0.5f * gate[c] * (1.0f + erff(gate[c] * inv_sqrt2)); // geglu_f32's gelu(gate)
            dvalue[c] = dy[c] * gelu;
            dgate[c] = dy[c] * value[c] * gelu_grad(gate[c]);
        }
    }
}

// Scatter: each output cell's gradient goes to the input cell it copied, visited in row-major
// order of the output, so every input cell sums its gradients in that order (CUDA's gather
// visits them in the same order and agrees bit for bit).
static void upsample_nearest_backward_f32(float* dinp, const float* dout, int N, int C, int H, int W, int H_out,
                                          int W_out) {
#pragma omp parallel for schedule(static)
    for (long nc = 0; nc < (long)N * C; nc++) {
        float* dinp_nc = dinp + nc * H * W;
        const float* dout_nc = dout + nc * H_out * W_out;
        memset(dinp_nc, 0, sizeof(float) * (size_t)H * W);
        for (int y = 0; y < H_out; y++) {
            float* dst_row = dinp_nc + (size_t)nearest_source_index(y, H, H_out) * W;
            for (int x = 0; x < W_out; x++) dst_row[nearest_source_index(x, W, W_out)] += dout_nc[(size_t)y * W_out + x];
        }
    }
}

// The 16-bit entry points: a gradient output is a fresh f32 buffer when it is overwritten, the
// widened existing values when it is added to (+=), NULL when not wanted; it is rounded into the
// caller's buffer once, after the f32 reference.
static float* widen_grad(const void* g, size_t n, DType dt, int add) {
    if (!g) return NULL;
    return add ? widen(g, n, dt) : f32_buffer(n);
}

static void narrow_grad(void* out, float* g, size_t n, DType dt) {
    if (g) narrow_free(out, g, n, dt);
}

void linear_backward_cpu(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const void* weight,
                         int N, int C_in, int C_out, int accumulate, DType dt) {
    require_float_storage(dt, "linear_backward");
    if (dt == DT_F32) {
        linear_backward_f32(dinp, dweight, dbias, dout, inp, weight, N, C_in, C_out, accumulate);
        return;
    }
    size_t n_inp = (size_t)N * C_in, n_w = (size_t)C_out * C_in;
    float *g = widen(dout, (size_t)N * C_out, dt), *x = widen(inp, n_inp, dt), *w = widen(weight, n_w, dt);
    float *gi = widen_grad(dinp, n_inp, dt, accumulate), *gw = widen_grad(dweight, n_w, dt, 1);
    float* gb = widen_grad(dbias, C_out, dt, 1);
    linear_backward_f32(gi, gw, gb, g, x, w, N, C_in, C_out, accumulate);
    narrow_grad(dinp, gi, n_inp, dt);
    narrow_grad(dweight, gw, n_w, dt);
    narrow_grad(dbias, gb, C_out, dt);
    free(g);
    free(x);
    free(w);
}

void conv2d_backward_cpu(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const void* weight,
                         void* scratch, int N, int C_in, int H, int W, int C_out, int K, int stride, int pad,
                         int accumulate, DType dt) {
    require_float_storage(dt, "conv2d_backward");
    if (dt == DT_F32) {
        conv2d_backward_f32(dinp, dweight, dbias, dout, inp, weight, scratch, N, C_in, H, W, C_out, K, stride, pad,
                            accumulate);
        return;
    }
    size_t n_inp = (size_t)N * C_in * H * W, n_w = (size_t)C_out * C_in * K * K;
    size_t n_out = (size_t)N * C_out * conv_out_size(H, K, stride, pad) * conv_out_size(W, K, stride, pad);
    // the caller's scratch holds 16-bit elements: the f32 reference gets its own
    size_t scratch_n = conv2d_scratch_elems(C_in, H, W, K, stride, pad);
    float* col = scratch_n ? f32_buffer(scratch_n) : NULL;
    float *g = widen(dout, n_out, dt), *x = widen(inp, n_inp, dt), *w = widen(weight, n_w, dt);
    float *gi = widen_grad(dinp, n_inp, dt, accumulate), *gw = widen_grad(dweight, n_w, dt, 1);
    float* gb = widen_grad(dbias, C_out, dt, 1);
    conv2d_backward_f32(gi, gw, gb, g, x, w, col, N, C_in, H, W, C_out, K, stride, pad, accumulate);
    narrow_grad(dinp, gi, n_inp, dt);
    narrow_grad(dweight, gw, n_w, dt);
    narrow_grad(dbias, gb, C_out, dt);
    free(col);
    free(g);
    free(x);
    free(w);
}

void group_norm_backward_cpu(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                             const float* mean, const float* rstd, const void* weight, const void* bias, int N, int C,
                             int HW, int G, int silu, int accumulate, DType dt) {
    require_float_storage(dt, "group_norm_backward");
    if (dt == DT_F32) {
        group_norm_backward_f32(dinp, dweight, dbias, dout, inp, mean, rstd, weight, bias, N, C, HW, G, silu, accumulate);
        return;
    }
    size_t n = (size_t)N * C * HW;
    float *g = widen(dout, n, dt), *x = widen(inp, n, dt), *w = widen(weight, C, dt), *b = widen(bias, C, dt);
    float *gi = widen_grad(dinp, n, dt, accumulate), *gw = widen_grad(dweight, C, dt, 1), *gb = widen_grad(dbias, C, dt, 1);
    group_norm_backward_f32(gi, gw, gb, g, x, mean, rstd, w, b, N, C, HW, G, silu, accumulate);
    narrow_grad(dinp, gi, n, dt);
    narrow_grad(dweight, gw, C, dt);
    narrow_grad(dbias, gb, C, dt);
    free(g);
    free(x);
    free(w);
    free(b);
}

void layer_norm_backward_cpu(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                             const float* mean, const float* rstd, const void* weight, int N, int C, int accumulate,
                             DType dt) {
    require_float_storage(dt, "layer_norm_backward");
    if (dt == DT_F32) {
        layer_norm_backward_f32(dinp, dweight, dbias, dout, inp, mean, rstd, weight, N, C, accumulate);
        return;
    }
    size_t n = (size_t)N * C;
    float *g = widen(dout, n, dt), *x = widen(inp, n, dt), *w = widen(weight, C, dt);
    float *gi = widen_grad(dinp, n, dt, accumulate), *gw = widen_grad(dweight, C, dt, 1), *gb = widen_grad(dbias, C, dt, 1);
    layer_norm_backward_f32(gi, gw, gb, g, x, mean, rstd, w, N, C, accumulate);
    narrow_grad(dinp, gi, n, dt);
    narrow_grad(dweight, gw, C, dt);
    narrow_grad(dbias, gb, C, dt);
    free(g);
    free(x);
    free(w);
}

void attention_backward_cpu(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                            const void* v, const void* out, int N, int NH, int Lq, int Lk, int HS, int causal, DType dt) {
    require_float_storage(dt, "attention_backward");
    if (dt == DT_F32) {
        attention_backward_f32(dq, dk, dv, dout, q, k, v, out, N, NH, Lq, Lk, HS, causal);
        return;
    }
    size_t nq = (size_t)N * Lq * NH * HS, nk = (size_t)N * Lk * NH * HS;
    float *g = widen(dout, nq, dt), *q32 = widen(q, nq, dt), *k32 = widen(k, nk, dt), *v32 = widen(v, nk, dt);
    float* o32 = widen(out, nq, dt);
    float *gq = widen_grad(dq, nq, dt, 0), *gk = widen_grad(dk, nk, dt, 0), *gv = widen_grad(dv, nk, dt, 0);
    attention_backward_f32(gq, gk, gv, g, q32, k32, v32, o32, N, NH, Lq, Lk, HS, causal);
    narrow_grad(dq, gq, nq, dt);
    narrow_grad(dk, gk, nk, dt);
    narrow_grad(dv, gv, nk, dt);
    free(g);
    free(q32);
    free(k32);
    free(v32);
    free(o32);
}

// silu and gelu: dinp = dout * f'(inp), elementwise (dinp may alias either input)
typedef void (*UnaryBackwardF32)(float* dinp, const float* dout, const float* inp, size_t n);
static void unary_backward_cpu(UnaryBackwardF32 f, void* dinp, const void* dout, const void* inp, size_t n, DType dt,
                               const char* op) {
    require_float_storage(dt, op);
    if (dt == DT_F32) {
        f(dinp, dout, inp, n);
        return;
    }
    float *g = widen(dout, n, dt), *x = widen(inp, n, dt);
    f(g, g, x, n);
    narrow_free(dinp, g, n, dt);
    free(x);
}

void silu_backward_cpu(void* dinp, const void* dout, const void* inp, size_t n, DType dt) {
    unary_backward_cpu(silu_backward_f32, dinp, dout, inp, n, dt, "silu_backward");
}
void gelu_backward_cpu(void* dinp, const void* dout, const void* inp, size_t n, DType dt) {
    unary_backward_cpu(gelu_backward_f32, dinp, dout, inp, n, dt, "gelu_backward");
}

void geglu_backward_cpu(void* dinp, const void* dout, const void* inp, int N, int C, DType dt) {
    require_float_storage(dt, "geglu_backward");
    if (dt == DT_F32) {
        geglu_backward_f32(dinp, dout, inp, N, C);
        return;
    }
    size_t n = (size_t)N * C;
    float *g = widen(dout, n, dt), *x = widen(inp, 2 * n, dt), *gi = f32_buffer(2 * n);
    geglu_backward_f32(gi, g, x, N, C);
    narrow_free(dinp, gi, 2 * n, dt);
    free(g);
    free(x);
}

void upsample_nearest_backward_cpu(void* dinp, const void* dout, int N, int C, int H, int W, int H_out, int W_out,
                                   DType dt) {
    require_float_storage(dt, "upsample_nearest_backward");
    if (dt == DT_F32) {
        upsample_nearest_backward_f32(dinp, dout, N, C, H, W, H_out, W_out);
        return;
    }
    size_t n_inp = (size_t)N * C * H * W;
    float *g = widen(dout, (size_t)N * C * H_out * W_out, dt), *gi = f32_buffer(n_inp);
    upsample_nearest_backward_f32(gi, g, N, C, H, W, H_out, W_out);
    narrow_free(dinp, gi, n_inp, dt);
    free(g);
}

// ----------------------------------------------------------------------------
// Dispatchers: the one place that chooses a backend for each op.

void matmul_forward(void* out, const void* a, const void* b, int batch, int M, int N, int K, int trans_a, int trans_b, float alpha, float beta, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        matmul_forward_cuda(out, a, b, batch, M, N, K, trans_a, trans_b, alpha, beta, dt);
        return;
    }
#endif
    matmul_forward_cpu(out, a, b, batch, M, N, K, trans_a, trans_b, alpha, beta, dt);
}

void linear_forward(void* out, const void* inp, const void* weight, const void* bias, int N, int C_in, int C_out, int accumulate, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        linear_forward_cuda(out, inp, weight, bias, N, C_in, C_out, accumulate, dt);
        return;
    }
#endif
    linear_forward_cpu(out, inp, weight, bias, N, C_in, C_out, accumulate, dt);
}

void conv2d_forward(void* out, const void* inp, const void* weight, const void* bias, void* scratch, int N, int C_in, int H, int W, int C_out, int K, int stride, int pad, int accumulate, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        conv2d_forward_cuda(out, inp, weight, bias, scratch, N, C_in, H, W, C_out, K, stride, pad, accumulate, dt);
        return;
    }
#endif
    conv2d_forward_cpu(out, inp, weight, bias, scratch, N, C_in, H, W, C_out, K, stride, pad, accumulate, dt);
}

void pad2d_forward(void* out, const void* inp, int N, int C, int H, int W, int top, int bottom, int left, int right, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        pad2d_forward_cuda(out, inp, N, C, H, W, top, bottom, left, right, dt);
        return;
    }
#endif
    pad2d_forward_cpu(out, inp, N, C, H, W, top, bottom, left, right, dt);
}

void upsample_nearest_forward(void* out, const void* inp, int N, int C, int H, int W, int H_out, int W_out, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        upsample_nearest_forward_cuda(out, inp, N, C, H, W, H_out, W_out, dt);
        return;
    }
#endif
    upsample_nearest_forward_cpu(out, inp, N, C, H, W, H_out, W_out, dt);
}

void maxpool2d_forward(void* out, const void* inp, int N, int C, int H, int W, int K, int stride, int pad, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        maxpool2d_forward_cuda(out, inp, N, C, H, W, K, stride, pad, dt);
        return;
    }
#endif
    maxpool2d_forward_cpu(out, inp, N, C, H, W, K, stride, pad, dt);
}

void group_norm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias, int N, int C, int HW, int G, float eps, int silu, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        group_norm_forward_cuda(out, mean, rstd, inp, weight, bias, N, C, HW, G, eps, silu, dt);
        return;
    }
#endif
    group_norm_forward_cpu(out, mean, rstd, inp, weight, bias, N, C, HW, G, eps, silu, dt);
}

void layer_norm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias, int N, int C, float eps, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        layer_norm_forward_cuda(out, mean, rstd, inp, weight, bias, N, C, eps, dt);
        return;
    }
#endif
    layer_norm_forward_cpu(out, mean, rstd, inp, weight, bias, N, C, eps, dt);
}

void softmax_forward(void* out, const void* inp, int N, int C, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        softmax_forward_cuda(out, inp, N, C, dt);
        return;
    }
#endif
    softmax_forward_cpu(out, inp, N, C, dt);
}

void attention_forward(void* out, const void* q, const void* k, const void* v, int N, int NH, int Lq, int Lk, int HS, int causal, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        attention_forward_cuda(out, q, k, v, N, NH, Lq, Lk, HS, causal, dt);
        return;
    }
#endif
    attention_forward_cpu(out, q, k, v, N, NH, Lq, Lk, HS, causal, dt);
}

void silu_forward(void* out, const void* inp, size_t n, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        silu_forward_cuda(out, inp, n, dt);
        return;
    }
#endif
    silu_forward_cpu(out, inp, n, dt);
}

void gelu_forward(void* out, const void* inp, size_t n, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        gelu_forward_cuda(out, inp, n, dt);
        return;
    }
#endif
    gelu_forward_cpu(out, inp, n, dt);
}

void gelu_tanh_forward(void* out, const void* inp, size_t n, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        gelu_tanh_forward_cuda(out, inp, n, dt);
        return;
    }
#endif
    gelu_tanh_forward_cpu(out, inp, n, dt);
}

void quick_gelu_forward(void* out, const void* inp, size_t n, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        quick_gelu_forward_cuda(out, inp, n, dt);
        return;
    }
#endif
    quick_gelu_forward_cpu(out, inp, n, dt);
}

void sigmoid_forward(void* out, const void* inp, size_t n, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        sigmoid_forward_cuda(out, inp, n, dt);
        return;
    }
#endif
    sigmoid_forward_cpu(out, inp, n, dt);
}

void geglu_forward(void* out, const void* inp, int N, int C, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        geglu_forward_cuda(out, inp, N, C, dt);
        return;
    }
#endif
    geglu_forward_cpu(out, inp, N, C, dt);
}

void add_forward(void* out, const void* a, const void* b, size_t n, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        add_forward_cuda(out, a, b, n, dt);
        return;
    }
#endif
    add_forward_cpu(out, a, b, n, dt);
}

void mul_forward(void* out, const void* a, const void* b, size_t n, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        mul_forward_cuda(out, a, b, n, dt);
        return;
    }
#endif
    mul_forward_cpu(out, a, b, n, dt);
}

void scale_forward(void* out, const void* inp, float s, size_t n, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        scale_forward_cuda(out, inp, s, n, dt);
        return;
    }
#endif
    scale_forward_cpu(out, inp, s, n, dt);
}

void axpby_forward(float* out, float alpha, const float* x, float beta, const float* y, size_t n) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        axpby_forward_cuda(out, alpha, x, beta, y, n);
        return;
    }
#endif
    axpby_forward_cpu(out, alpha, x, beta, y, n);
}

void add_channel_vector_forward(void* out, const void* inp, const void* vec, int N, int C, int HW, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        add_channel_vector_forward_cuda(out, inp, vec, N, C, HW, dt);
        return;
    }
#endif
    add_channel_vector_forward_cpu(out, inp, vec, N, C, HW, dt);
}

void concat_forward(void* out, const void* a, const void* b, int outer, int inner_a, int inner_b, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        concat_forward_cuda(out, a, b, outer, inner_a, inner_b, dt);
        return;
    }
#endif
    concat_forward_cpu(out, a, b, outer, inner_a, inner_b, dt);
}

void split_forward(void* out_a, void* out_b, const void* inp, int outer, int inner_a, int inner_b, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        split_forward_cuda(out_a, out_b, inp, outer, inner_a, inner_b, dt);
        return;
    }
#endif
    split_forward_cpu(out_a, out_b, inp, outer, inner_a, inner_b, dt);
}

void transpose_forward(void* out, const void* inp, int B, int R, int C, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        transpose_forward_cuda(out, inp, B, R, C, dt);
        return;
    }
#endif
    transpose_forward_cpu(out, inp, B, R, C, dt);
}

void embedding_forward(void* out, const int32_t* ids, const void* table, int N, int V, int D, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        embedding_forward_cuda(out, ids, table, N, V, D, dt);
        return;
    }
#endif
    embedding_forward_cpu(out, ids, table, N, V, D, dt);
}

void timestep_embedding_forward(void* out, const float* t, int N, int dim, int flip_sin_to_cos, float freq_shift, float max_period, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        timestep_embedding_forward_cuda(out, t, N, dim, flip_sin_to_cos, freq_shift, max_period, dt);
        return;
    }
#endif
    timestep_embedding_forward_cpu(out, t, N, dim, flip_sin_to_cos, freq_shift, max_period, dt);
}

void randn_philox_forward(float* out, size_t n, uint64_t seed, uint64_t offset, size_t threads) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        randn_philox_forward_cuda(out, n, seed, offset, threads);
        return;
    }
#endif
    randn_philox_forward_cpu(out, n, seed, offset, threads);
}

void cast_forward(void* out, DType out_type, const void* inp, DType inp_type, size_t n) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        cast_forward_cuda(out, out_type, inp, inp_type, n);
        return;
    }
#endif
    cast_forward_cpu(out, out_type, inp, inp_type, n);
}

// The backward passes' dispatchers.

void linear_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const void* weight, int N, int C_in, int C_out, int accumulate, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        linear_backward_cuda(dinp, dweight, dbias, dout, inp, weight, N, C_in, C_out, accumulate, dt);
        return;
    }
#endif
    linear_backward_cpu(dinp, dweight, dbias, dout, inp, weight, N, C_in, C_out, accumulate, dt);
}

void conv2d_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const void* weight, void* scratch, int N, int C_in, int H, int W, int C_out, int K, int stride, int pad, int accumulate, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        conv2d_backward_cuda(dinp, dweight, dbias, dout, inp, weight, scratch, N, C_in, H, W, C_out, K, stride, pad, accumulate, dt);
        return;
    }
#endif
    conv2d_backward_cpu(dinp, dweight, dbias, dout, inp, weight, scratch, N, C_in, H, W, C_out, K, stride, pad, accumulate, dt);
}

void group_norm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const float* mean, const float* rstd, const void* weight, const void* bias, int N, int C, int HW, int G, int silu, int accumulate, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        group_norm_backward_cuda(dinp, dweight, dbias, dout, inp, mean, rstd, weight, bias, N, C, HW, G, silu, accumulate, dt);
        return;
    }
#endif
    group_norm_backward_cpu(dinp, dweight, dbias, dout, inp, mean, rstd, weight, bias, N, C, HW, G, silu, accumulate, dt);
}

void layer_norm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const float* mean, const float* rstd, const void* weight, int N, int C, int accumulate, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        layer_norm_backward_cuda(dinp, dweight, dbias, dout, inp, mean, rstd, weight, N, C, accumulate, dt);
        return;
    }
#endif
    layer_norm_backward_cpu(dinp, dweight, dbias, dout, inp, mean, rstd, weight, N, C, accumulate, dt);
}

void attention_backward(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k, const void* v, const void* out, int N, int NH, int Lq, int Lk, int HS, int causal, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        attention_backward_cuda(dq, dk, dv, dout, q, k, v, out, N, NH, Lq, Lk, HS, causal, dt);
        return;
    }
#endif
    attention_backward_cpu(dq, dk, dv, dout, q, k, v, out, N, NH, Lq, Lk, HS, causal, dt);
}

void silu_backward(void* dinp, const void* dout, const void* inp, size_t n, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        silu_backward_cuda(dinp, dout, inp, n, dt);
        return;
    }
#endif
    silu_backward_cpu(dinp, dout, inp, n, dt);
}

void gelu_backward(void* dinp, const void* dout, const void* inp, size_t n, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        gelu_backward_cuda(dinp, dout, inp, n, dt);
        return;
    }
#endif
    gelu_backward_cpu(dinp, dout, inp, n, dt);
}

void geglu_backward(void* dinp, const void* dout, const void* inp, int N, int C, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        geglu_backward_cuda(dinp, dout, inp, N, C, dt);
        return;
    }
#endif
    geglu_backward_cpu(dinp, dout, inp, N, C, dt);
}

void upsample_nearest_backward(void* dinp, const void* dout, int N, int C, int H, int W, int H_out, int W_out, DType dt) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) {
        upsample_nearest_backward_cuda(dinp, dout, N, C, H, W, H_out, W_out, dt);
        return;
    }
#endif
    upsample_nearest_backward_cpu(dinp, dout, N, C, H, W, H_out, W_out, dt);
}

// The grid torch uses for randn on this device (on the CPU backend: an H100's, see ops.h).
size_t randn_philox_threads(size_t n) {
#ifdef USE_CUDA
    if (g_backend == BACKEND_CUDA) return cuda_torch_randn_threads(n);
#endif
    return philox_torch_threads(n, 132, 2048);
}
