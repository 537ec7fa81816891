// kernels.cu: the CUDA backend, the GPU twin of every op in ops.h.
//
// Every `<op>_cuda` function here mirrors `<op>_cpu` in ops.c and keeps the contract written in
// ops.h: the same signature, shapes, layout, `=` or `+=`, aliasing rules and NULL handling. The
// CPU version is the specification; where the two differ in rounding (nvcc contracts a*b+c to an
// FMA by default, f32 instead of double accumulators in the norm statistics, a different summation
// order in the block reductions and in cuBLAS) the CUDA-against-CPU tests allow for it. The one op
// that must agree bit for bit, axpby, spells its roundings out with __fmul_rn/__fadd_rn.
//
// All pointers an op receives are device pointers. Everything runs on the default stream and one
// cuBLAS handle (created by cuda_init), so ops execute in call order and results are the same on
// every run. The kernels are the simple, correct versions (one kernel per op: grid-stride loops
// for elementwise work, one thread block per row for reductions, one warp per query for
// attention); making them fast is later work.
//
// Layout as llm.c's .cuh files: the error-check macros and shared helpers, then one section per
// op group of ops.h in its order, each with `// ---- CUDA kernels` then `// ---- launchers`. The
// backend internals (device count, init, memory) stand where ops.h's "Backends and their memory"
// section does, first. Only the `_cuda` functions and backend internals have C linkage.
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <curand_kernel.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "common.h"
#include "ops.h"
#include "rng.h"
}

// ----------------------------------------------------------------------------
// Error checking: one line, `error: <file>:<line>: <call>: <what went wrong>`, then exit(1).

static void cuda_check(cudaError_t err, const char* call, const char* file, int line) {
    if (err == cudaSuccess) return;
    fprintf(stderr, "error: %s:%d: %s: %s\n", file, line, call, cudaGetErrorString(err));
    exit(1);
}

static void cublas_check(cublasStatus_t status, const char* call, const char* file, int line) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    fprintf(stderr, "error: %s:%d: %s: %s\n", file, line, call, cublasGetStatusString(status));
    exit(1);
}

#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)

// After every launch: report a bad launch configuration at once. With `make CUDA=1 DEBUG=1`
// (SYNC_LAUNCHES) also wait for the kernel, so a fault inside it is reported at its own launch
// rather than at some later call.
static void check_launch(const char* file, int line) {
    cuda_check(cudaGetLastError(), "kernel launch", file, line);
#ifdef SYNC_LAUNCHES
    cuda_check(cudaDeviceSynchronize(), "kernel execution", file, line);
#endif
}
#define CHECK_LAUNCH() check_launch(__FILE__, __LINE__)

// ----------------------------------------------------------------------------
// Launch configuration shared by the launchers

constexpr int ELEMENTWISE_BLOCK = 256;       // threads per block for grid-stride kernels
constexpr size_t ELEMENTWISE_MAX_GRID = 65536; // more blocks than an H100 holds at once; threads loop past it
constexpr int WARP_SIZE = 32;
constexpr unsigned int FULL_MASK = 0xffffffffu;

// Blocks for a grid-stride loop over n elements (n > 0).
static unsigned int elementwise_grid(size_t n) {
    size_t blocks = (n + ELEMENTWISE_BLOCK - 1) / ELEMENTWISE_BLOCK;
    return (unsigned int)(blocks < ELEMENTWISE_MAX_GRID ? blocks : ELEMENTWISE_MAX_GRID);
}

// The first index of this thread and the stride of a grid-stride loop, in size_t because tensors
// can hold more than 2^31 elements.
__device__ static size_t grid_start(void) { return (size_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ static size_t grid_stride(void) { return (size_t)gridDim.x * blockDim.x; }

// Warp and block reductions. Every thread of the block gets the result. The order of the
// additions is fixed by the block size, so results are the same on every run.
__device__ static float warp_sum(float x) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(FULL_MASK, x, offset);
    return x;
}

__device__ static float warp_max(float x) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, offset));
    return x;
}

// blockDim.x must be a multiple of 32 (at most 1024). Safe to call several times in one kernel.
__device__ static float block_sum(float x) {
    __shared__ float warp_partial[WARP_SIZE];
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    x = warp_sum(x);
    __syncthreads(); // a previous call may still be reading warp_partial
    if (lane == 0) warp_partial[warp] = x;
    __syncthreads();
    // every warp reduces the same partials, so every thread ends with the same total
    return warp_sum(lane < warps ? warp_partial[lane] : 0.0f);
}

// fmaxf ignores NaN, as the CPU's `x > max ? x : max` does; a NaN in a row still makes its
// softmax NaN through exp(NaN - max).
__device__ static float block_max(float x) {
    __shared__ float warp_partial[WARP_SIZE];
    int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) warp_partial[warp] = x;
    __syncthreads();
    return warp_max(lane < warps ? warp_partial[lane] : -INFINITY);
}

extern "C" {

// ----------------------------------------------------------------------------
// Backend internals: device count, init, memory

static cublasHandle_t g_cublas = NULL; // the one cuBLAS handle, on the default stream

int cuda_device_count_impl(void) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) { // no driver, no device, or a driver too old for this runtime
        cudaGetLastError();   // clear it, so the next CUDA_CHECK(cudaGetLastError()) does not see it
        return 0;
    }
    return count;
}

void cuda_init(void) {
    if (g_cublas) return; // backend_select may be called more than once
    CUBLAS_CHECK(cublasCreate(&g_cublas));
    // fp32 GEMMs with fp32 inputs and fp32 accumulation, no TF32. CUBLAS_DEFAULT_MATH already means
    // that for cublasSgemm*; we set it explicitly so the choice is visible and survives a change of
    // library default. Not CUBLAS_PEDANTIC_MATH: it exists for numerical studies, may pick slower
    // kernels, and buys nothing here since the tests already allow for FMA and summation order.
    CUBLAS_CHECK(cublasSetMathMode(g_cublas, CUBLAS_DEFAULT_MATH));
}

// The handle for the GEMM ops; initialises lazily so a test can call an `_cuda` op directly.
static cublasHandle_t cublas_handle(void) {
    cuda_init();
    return g_cublas;
}

void* cuda_malloc(size_t bytes) {
    void* p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes); // 256-byte aligned, as ARENA_ALIGN asks
    // CUDA_CHECK's line, plus the size, which is what an out-of-memory report needs
    if (err != cudaSuccess)
        fatal("%s:%d: cudaMalloc(%zu bytes): %s", __FILE__, __LINE__, bytes, cudaGetErrorString(err));
    return p;
}

void cuda_free(void* p) { CUDA_CHECK(cudaFree(p)); } // cudaFree(NULL) does nothing

void cuda_memset_zero(void* p, size_t bytes) { CUDA_CHECK(cudaMemset(p, 0, bytes)); }

// cudaMemcpy on the default stream: the host buffer may be reused as soon as either returns, and
// copy_to_host waits for every kernel launched before it, so no extra synchronisation is needed.
void cuda_copy_to_device(void* dst, const void* src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void cuda_copy_to_host(void* dst, const void* src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void cuda_copy_device_to_device(void* dst, const void* src, size_t bytes) {
    CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

void cuda_synchronize(void) { CUDA_CHECK(cudaDeviceSynchronize()); }

} // extern "C"

// ----------------------------------------------------------------------------
// Matrix products: cuBLAS SGEMM, then the bias
// ---- CUDA kernels

// out[i] += bias[(i / inner) % C] over n values: the bias of linear (inner 1: out is (N, C)) and of
// conv2d (inner = H_out*W_out: out is (N, C, H_out*W_out)). A separate pass after the GEMM, as on
// the CPU, so the GEMM result is rounded before the bias is added in both backends.
__global__ static void add_bias_kernel(float* out, const float* bias, size_t n, int C, size_t inner) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] += bias[(i / inner) % (size_t)C];
}

// ---- launchers

extern "C" {

void matmul_forward_cuda(float* out, const float* a, const float* b, int batch, int M, int N, int K, int trans_a,
                         int trans_b, float alpha, float beta) {
    if (batch <= 0 || M <= 0 || N <= 0) return;
    // cuBLAS is column-major. A row-major (R, C) matrix with row stride C is, byte for byte, the
    // column-major (C, R) matrix with leading dimension C: its transpose. So cuBLAS sees out as
    // out^T (N, M), ld N, and we ask it for
    //     out^T = alpha * op(b)^T @ op(a)^T + beta * out^T
    // i.e. the operands swap places and cuBLAS's "A" is our b, its "B" our a:
    //   - b stored (K, N) row-major is column-major b^T (N, K), ld N: already op(b)^T, so OP_N;
    //     b stored (N, K) (trans_b) is column-major (K, N), ld K, and op(b)^T = stored, so OP_T.
    //   - a stored (M, K) row-major is column-major a^T (K, M), ld K: already op(a)^T, so OP_N;
    //     a stored (K, M) (trans_a) is column-major (M, K), ld M, and op(a)^T = stored, so OP_T.
    // The leading dimensions are the stored row lengths, as in matmul_forward_cpu. cuBLAS rejects
    // a leading dimension of 0, which K == 0 would give; with K == 0 it just computes beta * out.
    // With beta == 0 cuBLAS does not read out ("C does not have to be a valid input"), so NaN in
    // out is overwritten, as the contract requires.
    int lda = trans_a ? M : K, ldb = trans_b ? K : N;
    lda = lda > 0 ? lda : 1;
    ldb = ldb > 0 ? ldb : 1;
    cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasSgemmStridedBatched(cublas_handle(), op_b, op_a, N, M, K, &alpha, b, ldb, (long long)K * N,
                                           a, lda, (long long)M * K, &beta, out, N, (long long)M * N, batch));
}

void linear_forward_cuda(float* out, const float* inp, const float* weight, const float* bias, int N, int C_in,
                         int C_out) {
    if (N <= 0 || C_out <= 0) return;
    // out (N, C_out) = inp (N, C_in) @ weight^T, all row-major. Column-major, cuBLAS sees
    //   out as out^T (C_out, N), ld C_out;  inp as inp^T (C_in, N), ld C_in;
    //   weight (C_out, C_in) as weight^T (C_in, C_out), ld C_in.
    // out^T = (inp @ weight^T)^T = weight @ inp^T = op_T(weight^T) @ inp^T, so cuBLAS's A is
    // weight with OP_T, its B is inp with OP_N, and m = C_out, n = N, k = C_in.
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgemm(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, C_out, N, C_in, &one, weight, C_in, inp, C_in,
                             &zero, out, C_out));
    if (bias) {
        size_t n = (size_t)N * C_out;
        add_bias_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, bias, n, C_out, 1);
        CHECK_LAUNCH();
    }
}

} // extern "C"

// ----------------------------------------------------------------------------
// Convolution and spatial ops (NCHW)
// ---- CUDA kernels

// im2col for output pixels [p0, p0 + cols) of one image, exactly as im2col_cpu: col is
// (C_in*K*K, cols) row-major, row r = (c*K + ky)*K + kx holds what each output pixel sees through
// tap (ky, kx) of channel c, 0 in the padding. Consecutive threads take consecutive pixels, so the
// writes are coalesced.
__global__ static void im2col_kernel(float* col, const float* inp_n, int C_in, int H, int W, int K, int stride,
                                     int pad, int W_out, int p0, int cols) {
    size_t total = (size_t)C_in * K * K * cols;
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        int r = (int)(idx / cols), i = (int)(idx % cols);
        int c = r / (K * K), ky = (r / K) % K, kx = r % K;
        int p = p0 + i;
        int y = (p / W_out) * stride - pad + ky;
        int x = (p % W_out) * stride - pad + kx;
        col[idx] = (y >= 0 && y < H && x >= 0 && x < W) ? inp_n[((size_t)c * H + y) * W + x] : 0.0f;
    }
}

// One thread per output element of pad2d.
__global__ static void pad2d_forward_kernel(float* out, const float* inp, size_t total, int H, int W, int H_out,
                                            int W_out, int top, int left) {
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        int x = (int)(idx % W_out);
        int y = (int)((idx / W_out) % H_out);
        size_t nc = idx / ((size_t)W_out * H_out);
        int sy = y - top, sx = x - left;
        out[idx] = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? inp[(nc * H + sy) * W + sx] : 0.0f;
    }
}

// torch's legacy "nearest" source index, as nearest_source_index in ops.c; the division and the
// product are single f32 operations, correctly rounded on the GPU as on the CPU.
__device__ static int nearest_source_index(int dst, int in, int out) {
    if (out == 2 * in) return dst >> 1;
    float scale = (float)in / (float)out;
    int src = (int)floorf((float)dst * scale);
    return src < in - 1 ? src : in - 1;
}

__global__ static void upsample_nearest_forward_kernel(float* out, const float* inp, size_t total, int H, int W,
                                                       int H_out, int W_out) {
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        int x = (int)(idx % W_out);
        int y = (int)((idx / W_out) % H_out);
        size_t nc = idx / ((size_t)W_out * H_out);
        int sy = nearest_source_index(y, H, H_out), sx = nearest_source_index(x, W, W_out);
        out[idx] = inp[(nc * H + sy) * W + sx];
    }
}

// One thread per output element; the padding counts as -inf (skipped), and a NaN in the window
// wins, as torch (and maxpool2d_forward_cpu) propagate NaN.
__global__ static void maxpool2d_forward_kernel(float* out, const float* inp, size_t total, int H, int W, int H_out,
                                                int W_out, int K, int stride, int pad) {
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        int x = (int)(idx % W_out);
        int y = (int)((idx / W_out) % H_out);
        const float* inp_nc = inp + idx / ((size_t)W_out * H_out) * H * W;
        float best = -INFINITY;
        for (int ky = 0; ky < K; ky++) {
            int sy = y * stride - pad + ky;
            if (sy < 0 || sy >= H) continue;
            for (int kx = 0; kx < K; kx++) {
                int sx = x * stride - pad + kx;
                if (sx < 0 || sx >= W) continue;
                float v = inp_nc[(size_t)sy * W + sx];
                if (v > best || isnan(v)) best = v;
            }
        }
        out[idx] = best;
    }
}

// ---- launchers

static int conv_out_size(int in, int K, int stride, int pad) { return (in + 2 * pad - K) / stride + 1; }

extern "C" {

void conv2d_forward_cuda(float* out, const float* inp, const float* weight, const float* bias, float* scratch, int N,
                         int C_in, int H, int W, int C_out, int K, int stride, int pad) {
    int H_out = conv_out_size(H, K, stride, pad), W_out = conv_out_size(W, K, stride, pad);
    if (N <= 0 || C_out <= 0 || H_out <= 0 || W_out <= 0) return;
    int P = H_out * W_out; // output pixels per image
    int CKK = C_in * K * K;
    int pointwise = K == 1 && stride == 1 && pad == 0; // as conv_is_pointwise in ops.c
    if (!pointwise && !scratch)
        fatal("conv2d_forward: scratch is NULL, but a %dx%d conv needs conv2d_scratch_floats() floats", K, K);
    const float one = 1.0f, zero = 0.0f;
    for (int n = 0; n < N; n++) {
        const float* inp_n = inp + (size_t)n * C_in * H * W;
        float* out_n = out + (size_t)n * C_out * P;
        if (pointwise) {
            // out_n (C_out, P) = weight (C_out, C_in) @ inp_n (C_in, P), row-major. Column-major,
            // cuBLAS sees out_n^T (P, C_out) ld P, inp_n^T (P, C_in) ld P, weight^T (C_in, C_out)
            // ld C_in, and out_n^T = inp_n^T @ weight^T: A = inp_n, B = weight, both OP_N,
            // m = P, n = C_out, k = C_in.
            CUBLAS_CHECK(cublasSgemm(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, P, C_out, C_in, &one, inp_n, P, weight,
                                     C_in, &zero, out_n, P));
        } else {
            // Chunks of at most CONV_CHUNK output pixels, as the CPU does, so scratch holds
            // conv2d_scratch_floats(...) = CKK * min(P, CONV_CHUNK) floats in both backends.
            for (int p0 = 0; p0 < P; p0 += CONV_CHUNK) {
                int cols = P - p0 < CONV_CHUNK ? P - p0 : CONV_CHUNK;
                size_t col_n = (size_t)CKK * cols;
                im2col_kernel<<<elementwise_grid(col_n), ELEMENTWISE_BLOCK>>>(scratch, inp_n, C_in, H, W, K, stride,
                                                                             pad, W_out, p0, cols);
                CHECK_LAUNCH();
                // out_n[:, p0:p0+cols] (C_out, cols; row stride P) = weight (C_out, CKK) @ col
                // (CKK, cols), row-major. Column-major, cuBLAS sees that slice of out as a
                // (cols, C_out) matrix at out_n + p0 with ld P, col as col^T (cols, CKK) ld cols,
                // weight as weight^T (CKK, C_out) ld CKK. out^T = col^T @ weight^T: A = scratch,
                // B = weight, both OP_N, m = cols, n = C_out, k = CKK.
                CUBLAS_CHECK(cublasSgemm(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, cols, C_out, CKK, &one, scratch,
                                         cols, weight, CKK, &zero, out_n + p0, P));
            }
        }
    }
    if (bias) {
        size_t n = (size_t)N * C_out * P;
        add_bias_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, bias, n, C_out, (size_t)P);
        CHECK_LAUNCH();
    }
}

void pad2d_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int top, int bottom, int left,
                        int right) {
    int H_out = H + top + bottom, W_out = W + left + right;
    if (N <= 0 || C <= 0 || H_out <= 0 || W_out <= 0) return;
    size_t total = (size_t)N * C * H_out * W_out;
    pad2d_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(out, inp, total, H, W, H_out, W_out, top,
                                                                         left);
    CHECK_LAUNCH();
}

void upsample_nearest_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int H_out, int W_out) {
    if (N <= 0 || C <= 0 || H_out <= 0 || W_out <= 0) return;
    size_t total = (size_t)N * C * H_out * W_out;
    upsample_nearest_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(out, inp, total, H, W, H_out,
                                                                                    W_out);
    CHECK_LAUNCH();
}

void maxpool2d_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int K, int stride, int pad) {
    int H_out = conv_out_size(H, K, stride, pad), W_out = conv_out_size(W, K, stride, pad);
    if (N <= 0 || C <= 0 || H_out <= 0 || W_out <= 0) return;
    size_t total = (size_t)N * C * H_out * W_out;
    maxpool2d_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(out, inp, total, H, W, H_out, W_out, K,
                                                                             stride, pad);
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Normalisation and softmax
// ---- CUDA kernels

constexpr int GROUP_NORM_BLOCK = 1024; // a group is large (CG*HW, up to millions) and there are few (N*G)
constexpr int ROW_BLOCK = 256;         // layer norm and softmax rows: hundreds to thousands of values

// One block per (n, g). A group is CG*HW contiguous values. Two passes over it for the statistics,
// mean = sum(x)/n then var = sum((x - mean)^2)/n, in f32 (the CPU accumulates in double), then
// one pass that normalises. out may alias inp: each element is written by the thread that read it,
// after both reductions (which synchronise the block) are complete.
__global__ static void group_norm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                                 const float* weight, const float* bias, int C, int HW, int G,
                                                 float eps) {
    int ng = blockIdx.x;
    int CG = C / G;
    size_t n = (size_t)CG * HW;
    const float* x = inp + (size_t)ng * n;
    float* y = out + (size_t)ng * n;

    float sum = 0.0f;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) sum += x[i];
    float m = block_sum(sum) / (float)n;
    float sq = 0.0f;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        float d = x[i] - m;
        sq += d * d;
    }
    float r = 1.0f / sqrtf(block_sum(sq) / (float)n + eps);
    if (threadIdx.x == 0) {
        if (mean) mean[ng] = m;
        if (rstd) rstd[ng] = r;
    }
    int c0 = (ng % G) * CG; // first channel of this group
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        int c = c0 + (int)(i / HW);
        float w = weight ? weight[c] : 1.0f, b = bias ? bias[c] : 0.0f;
        y[i] = (x[i] - m) * r * w + b;
    }
}

// One block per row; the same two-pass statistics as group norm over the C values of the row.
__global__ static void layer_norm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                                 const float* weight, const float* bias, int C, float eps) {
    int row = blockIdx.x;
    const float* x = inp + (size_t)row * C;
    float* y = out + (size_t)row * C;

    float sum = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += x[c];
    float m = block_sum(sum) / (float)C;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float d = x[c] - m;
        sq += d * d;
    }
    float r = 1.0f / sqrtf(block_sum(sq) / (float)C + eps);
    if (threadIdx.x == 0) {
        if (mean) mean[row] = m;
        if (rstd) rstd[row] = r;
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        y[c] = (x[c] - m) * r * (weight ? weight[c] : 1.0f) + (bias ? bias[c] : 0.0f);
}

// One block per row: the row maximum, then exp(x - max) written to out and summed, then out
// scaled by 1/sum. out may alias inp: every thread reads and writes only its own indices, and
// the first write comes after the maximum (a block-wide reduction) is known.
__global__ static void softmax_forward_kernel(float* out, const float* inp, int C) {
    int row = blockIdx.x;
    const float* x = inp + (size_t)row * C;
    float* y = out + (size_t)row * C;

    float maxval = -INFINITY;
    for (int c = threadIdx.x; c < C; c += blockDim.x) maxval = fmaxf(maxval, x[c]);
    maxval = block_max(maxval);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float e = expf(x[c] - maxval);
        y[c] = e;
        sum += e;
    }
    float inv = 1.0f / block_sum(sum);
    for (int c = threadIdx.x; c < C; c += blockDim.x) y[c] *= inv;
}

// ---- launchers

extern "C" {

void group_norm_forward_cuda(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                             const float* bias, int N, int C, int HW, int G, float eps) {
    if (N <= 0 || G <= 0) return;
    group_norm_forward_kernel<<<N * G, GROUP_NORM_BLOCK>>>(out, mean, rstd, inp, weight, bias, C, HW, G, eps);
    CHECK_LAUNCH();
}

void layer_norm_forward_cuda(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                             const float* bias, int N, int C, float eps) {
    if (N <= 0) return;
    layer_norm_forward_kernel<<<N, ROW_BLOCK>>>(out, mean, rstd, inp, weight, bias, C, eps);
    CHECK_LAUNCH();
}

void softmax_forward_cuda(float* out, const float* inp, int N, int C) {
    if (N <= 0) return;
    softmax_forward_kernel<<<N, ROW_BLOCK>>>(out, inp, C);
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Attention
// ---- CUDA kernels

constexpr int ATTENTION_WARPS = 4;      // queries per thread block, one per warp
constexpr int ATTENTION_PER_LANE = ATTENTION_MAX_HS / WARP_SIZE; // head values each lane holds
// each lane keeps the scores of two keys of a block (score_lo, score_hi below)
static_assert(ATTENTION_KEY_BLOCK == 2 * WARP_SIZE, "attention_forward_kernel assumes 64-key blocks");

// One warp per (n, head, query). Lane l holds elements d = l, l + 32, l + 64, ... of the query
// and of the output accumulator in registers (at most ATTENTION_MAX_HS/32 = 16 each), so the
// reads of q, k and v are coalesced. Keys are visited in blocks of ATTENTION_KEY_BLOCK as in
// attention_forward_cpu: score the block (each dot product is a warp reduction; lane j % 32 keeps
// the score of key j of the block), take its maximum, rescale the accumulator and the running sum
// by exp(old_max - new_max), then add p_j * v_j for each key. The L x L scores are never stored.
__global__ static void attention_forward_kernel(float* out, const float* q, const float* k, const float* v, int NH,
                                                int Lq, int Lk, int HS, int causal, float scale,
                                                size_t n_queries) {
    size_t query = (size_t)blockIdx.x * ATTENTION_WARPS + threadIdx.x / WARP_SIZE;
    if (query >= n_queries) return; // the whole warp leaves together, so the shuffles below stay full
    int lane = threadIdx.x % WARP_SIZE;
    int i = (int)(query % Lq);
    int h = (int)((query / Lq) % NH);
    size_t n = query / ((size_t)Lq * NH);
    size_t D = (size_t)NH * HS;
    const float* q_i = q + ((size_t)n * Lq + i) * D + (size_t)h * HS;
    const float* k_h = k + (size_t)n * Lk * D + (size_t)h * HS; // key j of this head: k_h + j * D
    const float* v_h = v + (size_t)n * Lk * D + (size_t)h * HS;

    float q_reg[ATTENTION_PER_LANE], acc[ATTENTION_PER_LANE]; // acc = sum_j p_j v_j, p relative to running_max
#pragma unroll
    for (int t = 0; t < ATTENTION_PER_LANE; t++) {
        int d = lane + t * WARP_SIZE;
        q_reg[t] = d < HS ? q_i[d] : 0.0f;
        acc[t] = 0.0f;
    }
    float running_max = -INFINITY, running_sum = 0.0f; // the same in every lane
    int keys = causal ? i + 1 : Lk;
    for (int j0 = 0; j0 < keys; j0 += ATTENTION_KEY_BLOCK) {
        int jn = keys - j0 < ATTENTION_KEY_BLOCK ? keys - j0 : ATTENTION_KEY_BLOCK;
        // scores of keys j0 + lane (score_lo) and j0 + 32 + lane (score_hi); -inf past the end
        float score_lo = -INFINITY, score_hi = -INFINITY;
        for (int j = 0; j < jn; j++) {
            const float* k_j = k_h + (size_t)(j0 + j) * D;
            float partial = 0.0f;
#pragma unroll
            for (int t = 0; t < ATTENTION_PER_LANE; t++) {
                int d = lane + t * WARP_SIZE;
                if (d < HS) partial += q_reg[t] * k_j[d];
            }
            float s = warp_sum(partial) * scale;
            if (lane == j % WARP_SIZE) {
                if (j < WARP_SIZE) score_lo = s;
                else score_hi = s;
            }
        }
        // rescale what was accumulated under the old maximum
        float block_max_score = warp_max(fmaxf(score_lo, score_hi));
        float new_max = fmaxf(running_max, block_max_score);
        float correction = expf(running_max - new_max); // 0 on the first block
        running_sum *= correction;
#pragma unroll
        for (int t = 0; t < ATTENTION_PER_LANE; t++) acc[t] *= correction;
        // each lane exponentiates its own two scores, then they are broadcast key by key
        float p_lo = expf(score_lo - new_max), p_hi = expf(score_hi - new_max);
        for (int j = 0; j < jn; j++) {
            float p = __shfl_sync(FULL_MASK, j < WARP_SIZE ? p_lo : p_hi, j % WARP_SIZE);
            running_sum += p; // the same additions in the same order in every lane
            const float* v_j = v_h + (size_t)(j0 + j) * D;
#pragma unroll
            for (int t = 0; t < ATTENTION_PER_LANE; t++) {
                int d = lane + t * WARP_SIZE;
                if (d < HS) acc[t] += p * v_j[d];
            }
        }
        running_max = new_max;
    }
    float* out_i = out + ((size_t)n * Lq + i) * D + (size_t)h * HS;
    float inv = 1.0f / running_sum;
#pragma unroll
    for (int t = 0; t < ATTENTION_PER_LANE; t++) {
        int d = lane + t * WARP_SIZE;
        if (d < HS) out_i[d] = acc[t] * inv;
    }
}

// ---- launchers

extern "C" {

void attention_forward_cuda(float* out, const float* q, const float* k, const float* v, int N, int NH, int Lq,
                            int Lk, int HS, int causal) {
    if (HS > ATTENTION_MAX_HS) fatal("attention_forward: head size %d is above the limit %d", HS, ATTENTION_MAX_HS);
    if (causal && Lq != Lk) fatal("attention_forward: a causal mask needs Lq == Lk (got %d, %d)", Lq, Lk);
    size_t n_queries = (size_t)N * NH * Lq;
    if (n_queries == 0 || HS <= 0) return;
    const float scale = 1.0f / sqrtf((float)HS);
    size_t blocks = (n_queries + ATTENTION_WARPS - 1) / ATTENTION_WARPS;
    attention_forward_kernel<<<(unsigned int)blocks, ATTENTION_WARPS * WARP_SIZE>>>(out, q, k, v, NH, Lq, Lk, HS,
                                                                                    causal, scale, n_queries);
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Activations, elementwise; out may alias inp (each thread reads its element, then writes it).
// The formulas are those of ops.c. expf, erff and tanhf are CUDA's accurate versions (not the
// __expf intrinsics), and `/` is IEEE division, since the build does not use fast-math.
// ---- CUDA kernels

__global__ static void silu_forward_kernel(float* out, const float* inp, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] = inp[i] / (1.0f + expf(-inp[i]));
}

__global__ static void gelu_forward_kernel(float* out, const float* inp, size_t n) {
    const float inv_sqrt2 = 0.70710678118654752440f;
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] = 0.5f * inp[i] * (1.0f + erff(inp[i] * inv_sqrt2));
}

__global__ static void gelu_tanh_forward_kernel(float* out, const float* inp, size_t n) {
    const float sqrt_2_over_pi = 0.79788456080286535588f;
    for (size_t i = grid_start(); i < n; i += grid_stride()) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(sqrt_2_over_pi * (x + 0.044715f * x * x * x)));
    }
}

__global__ static void quick_gelu_forward_kernel(float* out, const float* inp, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] = inp[i] / (1.0f + expf(-1.702f * inp[i]));
}

__global__ static void sigmoid_forward_kernel(float* out, const float* inp, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] = 1.0f / (1.0f + expf(-inp[i]));
}

// inp (N, 2C): the value is the first half of each row, the gate (through erf GELU) the second.
__global__ static void geglu_forward_kernel(float* out, const float* inp, int C, size_t total) {
    const float inv_sqrt2 = 0.70710678118654752440f;
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        size_t row = idx / C, c = idx % C;
        float value = inp[row * 2 * C + c];
        float gate = inp[row * 2 * C + C + c];
        out[idx] = value * (0.5f * gate * (1.0f + erff(gate * inv_sqrt2)));
    }
}

// ---- launchers

extern "C" {

void silu_forward_cuda(float* out, const float* inp, size_t n) {
    if (n == 0) return;
    silu_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, inp, n);
    CHECK_LAUNCH();
}

void gelu_forward_cuda(float* out, const float* inp, size_t n) {
    if (n == 0) return;
    gelu_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, inp, n);
    CHECK_LAUNCH();
}

void gelu_tanh_forward_cuda(float* out, const float* inp, size_t n) {
    if (n == 0) return;
    gelu_tanh_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, inp, n);
    CHECK_LAUNCH();
}

void quick_gelu_forward_cuda(float* out, const float* inp, size_t n) {
    if (n == 0) return;
    quick_gelu_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, inp, n);
    CHECK_LAUNCH();
}

void sigmoid_forward_cuda(float* out, const float* inp, size_t n) {
    if (n == 0) return;
    sigmoid_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, inp, n);
    CHECK_LAUNCH();
}

void geglu_forward_cuda(float* out, const float* inp, int N, int C) {
    size_t total = (size_t)(N > 0 ? N : 0) * (size_t)(C > 0 ? C : 0);
    if (total == 0) return;
    geglu_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(out, inp, C, total);
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Elementwise arithmetic; out may alias any input (each thread reads its elements, then writes).
// ---- CUDA kernels

__global__ static void add_forward_kernel(float* out, const float* a, const float* b, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] = a[i] + b[i];
}

__global__ static void mul_forward_kernel(float* out, const float* a, const float* b, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] = a[i] * b[i];
}

__global__ static void scale_forward_kernel(float* out, const float* inp, float s, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] = s * inp[i];
}

// Each product rounded, then the sum: __fmul_rn/__fadd_rn are never contracted into an FMA, so this
// is bit-identical to axpby_forward_cpu (built with -ffp-contract=off) whatever --fmad says.
__global__ static void axpby_forward_kernel(float* out, float alpha, const float* x, float beta, const float* y,
                                            size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride())
        out[i] = __fadd_rn(__fmul_rn(alpha, x[i]), __fmul_rn(beta, y[i]));
}

__global__ static void add_channel_vector_forward_kernel(float* out, const float* inp, const float* vec, int HW,
                                                         size_t total) {
    for (size_t i = grid_start(); i < total; i += grid_stride()) out[i] = inp[i] + vec[i / HW];
}

// ---- launchers

extern "C" {

void add_forward_cuda(float* out, const float* a, const float* b, size_t n) {
    if (n == 0) return;
    add_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, a, b, n);
    CHECK_LAUNCH();
}

void mul_forward_cuda(float* out, const float* a, const float* b, size_t n) {
    if (n == 0) return;
    mul_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, a, b, n);
    CHECK_LAUNCH();
}

void scale_forward_cuda(float* out, const float* inp, float s, size_t n) {
    if (n == 0) return;
    scale_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, inp, s, n);
    CHECK_LAUNCH();
}

void axpby_forward_cuda(float* out, float alpha, const float* x, float beta, const float* y, size_t n) {
    if (n == 0) return;
    axpby_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, alpha, x, beta, y, n);
    CHECK_LAUNCH();
}

void add_channel_vector_forward_cuda(float* out, const float* inp, const float* vec, int N, int C, int HW) {
    if (N <= 0 || C <= 0 || HW <= 0) return;
    size_t total = (size_t)N * C * HW;
    add_channel_vector_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(out, inp, vec, HW, total);
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Layout ops. None of them allows aliasing.
// ---- CUDA kernels

// One thread per output element: row o of out is row o of a followed by row o of b.
__global__ static void concat_forward_kernel(float* out, const float* a, const float* b, size_t inner_a,
                                             size_t inner_b, size_t total) {
    size_t inner = inner_a + inner_b;
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        size_t o = idx / inner, j = idx % inner;
        out[idx] = j < inner_a ? a[o * inner_a + j] : b[o * inner_b + (j - inner_a)];
    }
}

// One thread per input element, the inverse of concat.
__global__ static void split_forward_kernel(float* out_a, float* out_b, const float* inp, size_t inner_a,
                                            size_t inner_b, size_t total) {
    size_t inner = inner_a + inner_b;
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        size_t o = idx / inner, j = idx % inner;
        if (j < inner_a) out_a[o * inner_a + j] = inp[idx];
        else out_b[o * inner_b + (j - inner_a)] = inp[idx];
    }
}

constexpr int TRANSPOSE_TILE = 32; // tile edge: one warp reads a tile row, one warp writes a tile column
constexpr int TRANSPOSE_ROWS = 8;  // threads per block = 32 x 8, each moving 4 elements of a tile

// The classic shared-memory transpose: a block loads a 32 x 32 tile of inp with coalesced reads
// along C, then writes it transposed with coalesced writes along R. The +1 column keeps the
// column reads of the tile free of shared-memory bank conflicts. Tiles are numbered over
// (B, R/32, C/32) and visited in a block-stride loop, so no grid dimension limit applies.
__global__ static void transpose_forward_kernel(float* out, const float* inp, int R, int C, size_t n_tiles) {
    __shared__ float tile[TRANSPOSE_TILE][TRANSPOSE_TILE + 1];
    size_t tiles_c = (C + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE, tiles_r = (R + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE;
    for (size_t t = blockIdx.x; t < n_tiles; t += gridDim.x) {
        int c0 = (int)(t % tiles_c) * TRANSPOSE_TILE;
        int r0 = (int)((t / tiles_c) % tiles_r) * TRANSPOSE_TILE;
        size_t b = t / (tiles_c * tiles_r);
        const float* inp_b = inp + b * R * C;
        float* out_b = out + b * R * C;
        int c = c0 + threadIdx.x;
        for (int k = threadIdx.y; k < TRANSPOSE_TILE; k += TRANSPOSE_ROWS) {
            int r = r0 + k;
            if (r < R && c < C) tile[k][threadIdx.x] = inp_b[(size_t)r * C + c];
        }
        __syncthreads();
        int r = r0 + threadIdx.x;
        for (int k = threadIdx.y; k < TRANSPOSE_TILE; k += TRANSPOSE_ROWS) {
            int cc = c0 + k;
            if (r < R && cc < C) out_b[(size_t)cc * R + r] = tile[threadIdx.x][k];
        }
        __syncthreads(); // the next tile overwrites this one
    }
}

// One thread per output element. An id outside [0, V) is a caller bug: the row becomes zeros
// (a kernel cannot stop the program with a message the way the CPU version does).
__global__ static void embedding_forward_kernel(float* out, const int32_t* ids, const float* table, int V, int D,
                                                size_t total) {
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        size_t i = idx / D, d = idx % D;
        int32_t id = ids[i];
        out[idx] = (id >= 0 && id < V) ? table[(size_t)id * D + d] : 0.0f;
    }
}

// ---- launchers

extern "C" {

void concat_forward_cuda(float* out, const float* a, const float* b, int outer, int inner_a, int inner_b) {
    size_t total = (size_t)outer * ((size_t)inner_a + inner_b);
    if (outer <= 0 || total == 0) return;
    concat_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(out, a, b, inner_a, inner_b, total);
    CHECK_LAUNCH();
}

void split_forward_cuda(float* out_a, float* out_b, const float* inp, int outer, int inner_a, int inner_b) {
    size_t total = (size_t)outer * ((size_t)inner_a + inner_b);
    if (outer <= 0 || total == 0) return;
    split_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(out_a, out_b, inp, inner_a, inner_b, total);
    CHECK_LAUNCH();
}

void transpose_forward_cuda(float* out, const float* inp, int B, int R, int C) {
    if (B <= 0 || R <= 0 || C <= 0) return;
    size_t tiles_c = (C + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE, tiles_r = (R + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE;
    size_t n_tiles = (size_t)B * tiles_r * tiles_c;
    unsigned int grid = (unsigned int)(n_tiles < ELEMENTWISE_MAX_GRID ? n_tiles : ELEMENTWISE_MAX_GRID);
    transpose_forward_kernel<<<grid, dim3(TRANSPOSE_TILE, TRANSPOSE_ROWS)>>>(out, inp, R, C, n_tiles);
    CHECK_LAUNCH();
}

void embedding_forward_cuda(float* out, const int32_t* ids, const float* table, int N, int V, int D) {
    if (N <= 0 || D <= 0) return;
    size_t total = (size_t)N * D;
    embedding_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(out, ids, table, V, D, total);
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Embeddings of scalars
// ---- CUDA kernels

// One thread per (n, i < dim/2), writing out[n, i] and out[n, half_dim + i]. The exponent is the f32
// expression of timestep_embedding_forward_cpu, operation for operation: (neg_log_period * i)
// then the division (a product followed by a quotient cannot be contracted into an FMA).
__global__ static void timestep_embedding_forward_kernel(float* out, const float* t, int dim, int flip_sin_to_cos,
                                                         float freq_shift, float neg_log_period, size_t total) {
    int half_dim = dim / 2;
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        size_t n = idx / half_dim;
        int i = (int)(idx % half_dim);
        float exponent = neg_log_period * (float)i / ((float)half_dim - freq_shift);
        float arg = t[n] * expf(exponent);
        float s = sinf(arg), c = cosf(arg);
        float* out_n = out + n * dim;
        out_n[i] = flip_sin_to_cos ? c : s;
        out_n[half_dim + i] = flip_sin_to_cos ? s : c;
    }
}

// ---- launchers

extern "C" {

void timestep_embedding_forward_cuda(float* out, const float* t, int N, int dim, int flip_sin_to_cos,
                                     float freq_shift, float max_period) {
    int half_dim = dim / 2;
    if (N <= 0 || half_dim <= 0) return;
    // -ln(max_period) rounded to f32 on the host, exactly as the CPU version computes it
    const float neg_log_period = (float)(-log((double)max_period));
    size_t total = (size_t)N * half_dim;
    timestep_embedding_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(
        out, t, dim, flip_sin_to_cos, freq_shift, neg_log_period, total);
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Random numbers on the device
// ---- CUDA kernels

// torch's distribution_elementwise_grid_stride_kernel specialised to randn (unroll 4): thread idx
// owns curand's Philox subsequence idx; each curand_normal4 call gives the elements
// idx + threads*(4m + r), r = 0..3, of pass m. transformation::normal is rand * 1 + 0: exact.
__global__ static void randn_philox_kernel(float* out, size_t n, unsigned long long seed,
                                           unsigned long long offset) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t threads = (size_t)gridDim.x * blockDim.x;
    curandStatePhilox4_32_10_t state;
    curand_init(seed, idx, offset, &state);
    size_t rounded = ((n - 1) / (threads * 4) + 1) * threads * 4;
    for (size_t base = idx; base < rounded; base += threads * 4) {
        float4 r = curand_normal4(&state);
        const float values[4] = {r.x, r.y, r.z, r.w};
        for (int k = 0; k < 4; k++) {
            size_t i = base + threads * k;
            if (i < n) out[i] = values[k];
        }
    }
}

// ---- launchers

extern "C" {

void randn_philox_forward_cuda(float* out, size_t n, uint64_t seed, uint64_t offset, size_t threads) {
    if (n == 0) return;
    if (threads == 0 || threads % 256 != 0)
        fatal("randn_philox_forward: threads must be a positive multiple of 256 (got %zu)", threads);
    randn_philox_kernel<<<(unsigned int)(threads / 256), 256>>>(out, n, seed, offset);
    CHECK_LAUNCH();
}

size_t cuda_torch_randn_threads(size_t n) {
    int device, sms, max_threads;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&max_threads, cudaDevAttrMaxThreadsPerMultiProcessor, device));
    return philox_torch_threads(n, sms, max_threads);
}

} // extern "C"

// ----------------------------------------------------------------------------
// Storage conversion
// ---- CUDA kernels

// Ports of tensor.c's f32_to_f16, f16_to_f32, f32_to_bf16 and bf16_to_f32, on the bit pattern,
// so the GPU's results are bit-identical to the CPU's, NaN included (f16: sign | 0x7e00; f16 to
// f32: quiet, payload kept; bf16: 0xffff, as torch), overflow to infinity, subnormals kept, ties
// to even. The cuda_fp16.h/cuda_bf16.h intrinsics round numbers the same way, but their NaN
// outputs differ from these (and are not documented), so they are not used. Keep these four in
// step with tensor.c: tests/ compare the backends bit for bit.
__device__ static uint16_t f32_to_f16_bits(float x) {
    uint32_t u = __float_as_uint(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t exp = (u >> 23) & 0xffu;
    uint32_t man = u & 0x7fffffu;
    if (exp == 0xffu) return (uint16_t)(sign | (man ? 0x7e00u : 0x7c00u)); // inf, or torch's canonical quiet NaN
    int e = (int)exp - 127 + 15;                                                                 // rebias
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);                                              // overflow to infinity
    if (e <= 0) {
        // subnormal f16 (or zero): man_with_hidden * 2^(exp-150) in units of 2^-24
        if (e < -10) return sign; // below half the smallest subnormal: rounds to zero
        uint32_t m = man | 0x800000u;
        int shift = 14 - e; // 126 - exp, in [14, 24]
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (half & 1u))) half++;
        return (uint16_t)(sign | half); // a carry into the exponent field is the correct result
    }
    uint32_t h = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; // may carry into the exponent, even to inf
    return (uint16_t)(sign | h);
}

__device__ static float f16_bits_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (man ? 0x400000u : 0u) | (man << 13)); // NaN: quiet
    if (exp == 0) {
        if (man == 0) return __uint_as_float(sign);
        float v = (float)man * 5.9604644775390625e-08f; // subnormal: man * 2^-24, exact in f32
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((exp - 15 + 127) << 23) | (man << 13));
}

__device__ static uint16_t f32_to_bf16_bits(float x) {
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return 0xffffu; // NaN, as torch 2.x's .bfloat16()
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest, ties to even
    return (uint16_t)(u >> 16);
}

__device__ static float bf16_bits_to_f32(uint16_t b) { return __uint_as_float((uint32_t)b << 16); }

// Any of f32/f16/bf16 to any other, through f32 (which holds f16 and bf16 exactly), as the CPU's
// f16 <-> bf16 path does. The dtype branches are the same for every thread.
__global__ static void cast_forward_kernel(void* out, DType out_type, const void* inp, DType inp_type, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) {
        float x;
        if (inp_type == DT_F32) x = ((const float*)inp)[i];
        else if (inp_type == DT_F16) x = f16_bits_to_f32(((const uint16_t*)inp)[i]);
        else x = bf16_bits_to_f32(((const uint16_t*)inp)[i]);
        if (out_type == DT_F32) ((float*)out)[i] = x;
        else if (out_type == DT_F16) ((uint16_t*)out)[i] = f32_to_f16_bits(x);
        else ((uint16_t*)out)[i] = f32_to_bf16_bits(x);
    }
}

// ---- launchers

static int is_float_storage(DType t) { return t == DT_F32 || t == DT_F16 || t == DT_BF16; }

extern "C" {

void cast_forward_cuda(void* out, DType out_type, const void* inp, DType inp_type, size_t n) {
    if (!is_float_storage(inp_type) || !is_float_storage(out_type))
        fatal("cast_forward: %s -> %s is not a conversion between F32, F16 and BF16", dtype_name(inp_type),
              dtype_name(out_type));
    if (out_type == inp_type) {
        // a copy, with memmove's meaning as on the CPU: cudaMemcpy does not allow overlap, so a
        // partly overlapping pair goes through a temporary buffer
        size_t bytes = n * dtype_size(inp_type);
        if (bytes == 0 || out == inp) return;
        const char *o = (const char*)out, *s = (const char*)inp;
        if (o < s + bytes && s < o + bytes) {
            void* tmp = cuda_malloc(bytes);
            CUDA_CHECK(cudaMemcpy(tmp, inp, bytes, cudaMemcpyDeviceToDevice));
            CUDA_CHECK(cudaMemcpy(out, tmp, bytes, cudaMemcpyDeviceToDevice));
            cuda_free(tmp);
        } else {
            CUDA_CHECK(cudaMemcpy(out, inp, bytes, cudaMemcpyDeviceToDevice));
        }
        return;
    }
    if (n == 0) return;
    cast_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, out_type, inp, inp_type, n);
    CHECK_LAUNCH();
}

} // extern "C"
