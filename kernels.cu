// kernels.cu: the CUDA backend, the GPU twin of every op in ops.h.
//
// Every `<op>_cuda` function here mirrors `<op>_cpu` in ops.c and keeps the contract written in
// ops.h: the same signature, shapes, layout, `=` or `+=`, aliasing rules and NULL handling. The
// CPU version is the specification; where the two differ in rounding (nvcc contracts a*b+c to an
// FMA by default, f32 instead of double accumulators in the norm statistics, a different summation
// order in the block reductions and in cuBLAS, 16-bit intermediates where ops.h names them) the
// CUDA-against-CPU tests allow for it. The one op that must agree bit for bit, axpby, spells its
// roundings out with __fmul_rn/__fadd_rn.
//
// Storage types. Each kernel is a template over T, the storage type of its tensors: float,
// __half or __nv_bfloat16 (ops.h's DT_F32, DT_F16, DT_BF16). It reads with to_f32, computes in
// f32, and writes with from_f32<T> (round to nearest even). The launchers turn the run-time dt
// into T with `with_storage_type`. GEMMs go to cuBLAS with f32 compute for every T: tensor cores
// for the 16-bit types, plain f32 (no TF32) for float.
//
// All pointers an op receives are device pointers. Everything runs on the default stream and one
// cuBLAS handle (created by cuda_init), so ops execute in call order and results are the same on
// every run.
//
// Layout as llm.c's .cuh files: the error-check macros and shared helpers, then one section per
// op group of ops.h in its order, each with `// ---- CUDA kernels` then `// ---- launchers`. The
// backend internals (device count, init, memory) stand where ops.h's "Backends and their memory"
// section does, first. Only the `_cuda` functions and backend internals have C linkage.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
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
// Storage types

__device__ __forceinline__ static float to_f32(float x) { return x; }
__device__ __forceinline__ static float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ static float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ static T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Calls f(T()) with T the storage type of dt, so a launcher is written once for all three:
//   with_storage_type(dt, "silu_forward", [&](auto zero) { using T = decltype(zero); ... });
template <typename F> static void with_storage_type(DType dt, const char* op, F f) {
    switch (dt) {
    case DT_F32: f(float()); break;
    case DT_F16: f(__half()); break;
    case DT_BF16: f(__nv_bfloat16()); break;
    default: fatal("%s: storage type %s is not F32, F16 or BF16", op, dtype_name(dt));
    }
}

// The cuBLAS name of a storage type.
static cudaDataType_t cublas_type(DType dt, const char* op) {
    switch (dt) {
    case DT_F32: return CUDA_R_32F;
    case DT_F16: return CUDA_R_16F;
    case DT_BF16: return CUDA_R_16BF;
    default: fatal("%s: storage type %s is not F32, F16 or BF16", op, dtype_name(dt));
    }
}

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
    // f32 GEMMs with f32 inputs and f32 accumulation, no TF32; 16-bit GEMMs on the tensor cores
    // with f32 accumulation (CUBLAS_COMPUTE_32F in every call). CUBLAS_DEFAULT_MATH already means
    // that; we set it explicitly so the choice is visible and survives a change of library
    // default. Not CUBLAS_PEDANTIC_MATH: it exists for numerical studies, may pick slower kernels,
    // and buys nothing here since the tests already allow for FMA and summation order.
    CUBLAS_CHECK(cublasSetMathMode(g_cublas, CUBLAS_DEFAULT_MATH));
}

// The handle for the GEMM ops; initialises lazily so a test can call an `_cuda` op directly.
static cublasHandle_t cublas_handle(void) {
    cuda_init();
    return g_cublas;
}

// What this program holds on the device, for the benchmarks' peak memory: every cuda_malloc is
// recorded with its size until its cuda_free. Allocations are few (weights, arenas, scratch), so
// a small table searched linearly is enough.
typedef struct {
    void* p;
    size_t bytes;
} DeviceAllocation;
static DeviceAllocation* g_allocations = NULL;
static int g_allocation_count = 0, g_allocation_cap = 0;
static size_t g_held = 0, g_peak = 0;

static cudaError_t g_last_malloc_error = cudaSuccess; // why cuda_try_malloc last returned NULL

void* cuda_try_malloc(size_t bytes) {
    void* p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes); // 256-byte aligned, as ARENA_ALIGN asks
    if (err != cudaSuccess) {
        g_last_malloc_error = err;
        cudaGetLastError(); // an out-of-memory error is not sticky: clear it, the caller reports it
        return NULL;
    }
    if (g_allocation_count == g_allocation_cap) {
        g_allocation_cap = g_allocation_cap ? 2 * g_allocation_cap : 64;
        g_allocations = (DeviceAllocation*)xrealloc(g_allocations, sizeof(DeviceAllocation) * g_allocation_cap);
    }
    g_allocations[g_allocation_count++] = DeviceAllocation{p, bytes};
    g_held += bytes;
    g_peak = g_held > g_peak ? g_held : g_peak;
    return p;
}

void* cuda_malloc(size_t bytes) {
    void* p = cuda_try_malloc(bytes);
    // CUDA_CHECK's line, plus the size, which is what an out-of-memory report needs
    if (!p) fatal("%s:%d: cudaMalloc(%zu bytes): %s", __FILE__, __LINE__, bytes, cudaGetErrorString(g_last_malloc_error));
    return p;
}

void cuda_free(void* p) {
    if (!p) return; // as cudaFree(NULL)
    for (int i = 0; i < g_allocation_count; i++)
        if (g_allocations[i].p == p) {
            g_held -= g_allocations[i].bytes;
            g_allocations[i] = g_allocations[--g_allocation_count];
            break;
        }
    CUDA_CHECK(cudaFree(p));
}

size_t cuda_memory_held(void) { return g_held; }
size_t cuda_memory_peak(void) { return g_peak; }
void cuda_memory_peak_reset(void) { g_peak = g_held; }

size_t cuda_memory_in_use_on_device(void) {
    size_t free_bytes = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
    return total - free_bytes;
}

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
// Matrix products: cuBLAS with f32 compute; the bias and a residual come in through beta = 1
// ---- CUDA kernels

// out[i] = bias[(i / inner) % C] (add 0) or out[i] += that (add 1), over n values: the bias of
// linear (inner 1: out is (N, C)) and of conv2d (inner = H_out*W_out: out is (N, C, P)), written
// before the GEMM, which then adds its product with beta = 1. So the bias costs no rounding of
// its own when out starts empty (cuBLAS rounds alpha*AB + beta*C once), and with a residual the
// sum out + bias is rounded once before the product joins it.
template <typename T>
__global__ static void fill_bias_kernel(T* out, const T* bias, size_t n, int C, size_t inner, int add) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) {
        float b = to_f32(bias[(i / inner) % (size_t)C]);
        out[i] = from_f32<T>(add ? to_f32(out[i]) + b : b);
    }
}

// ---- launchers

// Writes bias into (or adds it to) out, as fill_bias_kernel above.
static void fill_bias(void* out, const void* bias, size_t n, int C, size_t inner, int add, DType dt) {
    if (n == 0) return;
    with_storage_type(dt, "bias", [&](auto zero) {
        using T = decltype(zero);
        fill_bias_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>((T*)out, (const T*)bias, n, C, inner, add);
    });
    CHECK_LAUNCH();
}

// cublasGemmEx with every matrix of dt and f32 compute, column-major as cuBLAS sees it:
//   C (m x n, ldc) = alpha * op(A) (m x k) @ op(B) (k x n) + beta * C.
static void gemm_ex(cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k, float alpha, const void* A,
                    int lda, const void* B, int ldb, float beta, void* C, int ldc, DType dt, const char* op) {
    cudaDataType_t t = cublas_type(dt, op);
    CUBLAS_CHECK(cublasGemmEx(cublas_handle(), op_a, op_b, m, n, k, &alpha, A, t, lda, B, t, ldb, &beta, C, t, ldc,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

extern "C" {

void matmul_forward_cuda(void* out, const void* a, const void* b, int batch, int M, int N, int K, int trans_a,
                         int trans_b, float alpha, float beta, DType dt) {
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
    cudaDataType_t t = cublas_type(dt, "matmul_forward");
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_handle(), op_b, op_a, N, M, K, &alpha, b, t, ldb, (long long)K * N,
                                            a, t, lda, (long long)M * K, &beta, out, t, N, (long long)M * N, batch,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void linear_forward_cuda(void* out, const void* inp, const void* weight, const void* bias, int N, int C_in, int C_out,
                         int accumulate, DType dt) {
    if (N <= 0 || C_out <= 0) return;
    // out (N, C_out) = inp (N, C_in) @ weight^T, all row-major. Column-major, cuBLAS sees
    //   out as out^T (C_out, N), ld C_out;  inp as inp^T (C_in, N), ld C_in;
    //   weight (C_out, C_in) as weight^T (C_in, C_out), ld C_in.
    // out^T = (inp @ weight^T)^T = weight @ inp^T = op_T(weight^T) @ inp^T, so cuBLAS's A is
    // weight with OP_T, its B is inp with OP_N, and m = C_out, n = N, k = C_in.
    // The bias (and the residual already in out) enter as C with beta = 1.
    if (bias) fill_bias(out, bias, (size_t)N * C_out, C_out, 1, accumulate, dt);
    float beta = bias || accumulate ? 1.0f : 0.0f;
    gemm_ex(CUBLAS_OP_T, CUBLAS_OP_N, C_out, N, C_in, 1.0f, weight, C_in, inp, C_in, beta, out, C_out, dt,
            "linear_forward");
}

} // extern "C"

// ----------------------------------------------------------------------------
// Convolution and spatial ops (NCHW)
// ---- CUDA kernels

// im2col for output pixels [p0, p0 + cols) of one image, exactly as im2col_cpu: col is
// (C_in*K*K, cols) row-major, row r = (c*K + ky)*K + kx holds what each output pixel sees through
// tap (ky, kx) of channel c, 0 in the padding. Consecutive threads take consecutive pixels, so the
// writes are coalesced.
template <typename T>
__global__ static void im2col_kernel(T* col, const T* inp_n, int C_in, int H, int W, int K, int stride, int pad,
                                     int W_out, int p0, int cols) {
    size_t total = (size_t)C_in * K * K * cols;
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        int r = (int)(idx / cols), i = (int)(idx % cols);
        int c = r / (K * K), ky = (r / K) % K, kx = r % K;
        int p = p0 + i;
        int y = (p / W_out) * stride - pad + ky;
        int x = (p % W_out) * stride - pad + kx;
        col[idx] = (y >= 0 && y < H && x >= 0 && x < W) ? inp_n[((size_t)c * H + y) * W + x] : from_f32<T>(0.0f);
    }
}

// One thread per output element of pad2d.
template <typename T>
__global__ static void pad2d_forward_kernel(T* out, const T* inp, size_t total, int H, int W, int H_out, int W_out,
                                            int top, int left) {
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        int x = (int)(idx % W_out);
        int y = (int)((idx / W_out) % H_out);
        size_t nc = idx / ((size_t)W_out * H_out);
        int sy = y - top, sx = x - left;
        out[idx] = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? inp[(nc * H + sy) * W + sx] : from_f32<T>(0.0f);
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

template <typename T>
__global__ static void upsample_nearest_forward_kernel(T* out, const T* inp, size_t total, int H, int W, int H_out,
                                                       int W_out) {
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
template <typename T>
__global__ static void maxpool2d_forward_kernel(T* out, const T* inp, size_t total, int H, int W, int H_out, int W_out,
                                                int K, int stride, int pad) {
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        int x = (int)(idx % W_out);
        int y = (int)((idx / W_out) % H_out);
        const T* inp_nc = inp + idx / ((size_t)W_out * H_out) * H * W;
        float best = -INFINITY;
        for (int ky = 0; ky < K; ky++) {
            int sy = y * stride - pad + ky;
            if (sy < 0 || sy >= H) continue;
            for (int kx = 0; kx < K; kx++) {
                int sx = x * stride - pad + kx;
                if (sx < 0 || sx >= W) continue;
                float v = to_f32(inp_nc[(size_t)sy * W + sx]);
                if (v > best || isnan(v)) best = v;
            }
        }
        out[idx] = from_f32<T>(best);
    }
}

// ---- launchers

static int conv_out_size(int in, int K, int stride, int pad) { return (in + 2 * pad - K) / stride + 1; }

extern "C" {

void conv2d_forward_cuda(void* out, const void* inp, const void* weight, const void* bias, void* scratch, int N,
                         int C_in, int H, int W, int C_out, int K, int stride, int pad, int accumulate, DType dt) {
    int H_out = conv_out_size(H, K, stride, pad), W_out = conv_out_size(W, K, stride, pad);
    if (N <= 0 || C_out <= 0 || H_out <= 0 || W_out <= 0) return;
    int P = H_out * W_out; // output pixels per image
    int CKK = C_in * K * K;
    int pointwise = K == 1 && stride == 1 && pad == 0; // as conv_is_pointwise in ops.c
    if (!pointwise && !scratch)
        fatal("conv2d_forward: scratch is NULL, but a %dx%d conv needs conv2d_scratch_elems() elements", K, K);
    // the bias (and a residual already in out) enter as cuBLAS's C with beta = 1, as in linear
    if (bias) fill_bias(out, bias, (size_t)N * C_out * P, C_out, (size_t)P, accumulate, dt);
    float beta = bias || accumulate ? 1.0f : 0.0f;
    if (pointwise) {
        // out_n (C_out, P) = weight (C_out, C_in) @ inp_n (C_in, P), row-major, for every image n.
        // Column-major, cuBLAS sees out_n^T (P, C_out) ld P, inp_n^T (P, C_in) ld P, weight^T
        // (C_in, C_out) ld C_in, and out_n^T = inp_n^T @ weight^T: A = inp_n, B = weight, both
        // OP_N, m = P, n = C_out, k = C_in; one strided batch over the images, the weight's
        // stride 0.
        const float one = 1.0f;
        cudaDataType_t t = cublas_type(dt, "conv2d_forward");
        CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, P, C_out, C_in, &one, inp, t,
                                                P, (long long)C_in * H * W, weight, t, C_in, 0, &beta, out, t, P,
                                                (long long)C_out * P, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return;
    }
    with_storage_type(dt, "conv2d_forward", [&](auto zero) {
        using T = decltype(zero);
        for (int n = 0; n < N; n++) {
            const T* inp_n = (const T*)inp + (size_t)n * C_in * H * W;
            T* out_n = (T*)out + (size_t)n * C_out * P;
            // Chunks of at most CONV_CHUNK output pixels, as the CPU does, so scratch holds
            // conv2d_scratch_elems(...) = CKK * min(P, CONV_CHUNK) elements in both backends.
            for (int p0 = 0; p0 < P; p0 += CONV_CHUNK) {
                int cols = P - p0 < CONV_CHUNK ? P - p0 : CONV_CHUNK;
                size_t col_n = (size_t)CKK * cols;
                im2col_kernel<<<elementwise_grid(col_n), ELEMENTWISE_BLOCK>>>((T*)scratch, inp_n, C_in, H, W, K, stride,
                                                                             pad, W_out, p0, cols);
                CHECK_LAUNCH();
                // out_n[:, p0:p0+cols] (C_out, cols; row stride P) = weight (C_out, CKK) @ col
                // (CKK, cols), row-major. Column-major, cuBLAS sees that slice of out as a
                // (cols, C_out) matrix at out_n + p0 with ld P, col as col^T (cols, CKK) ld cols,
                // weight as weight^T (CKK, C_out) ld CKK. out^T = col^T @ weight^T: A = scratch,
                // B = weight, both OP_N, m = cols, n = C_out, k = CKK.
                gemm_ex(CUBLAS_OP_N, CUBLAS_OP_N, cols, C_out, CKK, 1.0f, scratch, cols, weight, CKK, beta, out_n + p0, P,
                        dt, "conv2d_forward");
            }
        }
    });
}

void pad2d_forward_cuda(void* out, const void* inp, int N, int C, int H, int W, int top, int bottom, int left, int right,
                        DType dt) {
    int H_out = H + top + bottom, W_out = W + left + right;
    if (N <= 0 || C <= 0 || H_out <= 0 || W_out <= 0) return;
    size_t total = (size_t)N * C * H_out * W_out;
    with_storage_type(dt, "pad2d_forward", [&](auto zero) {
        using T = decltype(zero);
        pad2d_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>((T*)out, (const T*)inp, total, H, W, H_out,
                                                                             W_out, top, left);
    });
    CHECK_LAUNCH();
}

void upsample_nearest_forward_cuda(void* out, const void* inp, int N, int C, int H, int W, int H_out, int W_out,
                                   DType dt) {
    if (N <= 0 || C <= 0 || H_out <= 0 || W_out <= 0) return;
    size_t total = (size_t)N * C * H_out * W_out;
    with_storage_type(dt, "upsample_nearest_forward", [&](auto zero) {
        using T = decltype(zero);
        upsample_nearest_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>((T*)out, (const T*)inp, total, H,
                                                                                        W, H_out, W_out);
    });
    CHECK_LAUNCH();
}

void maxpool2d_forward_cuda(void* out, const void* inp, int N, int C, int H, int W, int K, int stride, int pad,
                            DType dt) {
    int H_out = conv_out_size(H, K, stride, pad), W_out = conv_out_size(W, K, stride, pad);
    if (N <= 0 || C <= 0 || H_out <= 0 || W_out <= 0) return;
    size_t total = (size_t)N * C * H_out * W_out;
    with_storage_type(dt, "maxpool2d_forward", [&](auto zero) {
        using T = decltype(zero);
        maxpool2d_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>((T*)out, (const T*)inp, total, H, W,
                                                                                 H_out, W_out, K, stride, pad);
    });
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Normalisation and softmax
// ---- CUDA kernels

constexpr int GROUP_NORM_BLOCK = 512;    // threads per statistics chunk
constexpr int GROUP_NORM_CHUNK = 16384;  // values per statistics chunk: a group of SDXL's first level
                                         // (10 channels x 128 x 128) spreads over 10 blocks
constexpr int ROW_BLOCK = 256;           // layer norm and softmax rows: hundreds to thousands of values

// A group of values split into chunks: count, mean and M2 = sum((x - mean)^2) of each (two passes
// over the chunk, so no cancellation), merged afterwards (Chan et al.). SDXL has only N*32 groups
// but each holds up to 160k values: one block per group would leave most of an H100 idle.
struct Moments {
    float count, mean, m2;
};

// Block b handles chunk b % chunks of group b / chunks. A group is CG*HW contiguous values.
template <typename T>
__global__ static void group_norm_moments_kernel(Moments* partial, const T* inp, size_t group_size, int chunks) {
    size_t group = blockIdx.x / chunks;
    size_t begin = (size_t)(blockIdx.x % chunks) * GROUP_NORM_CHUNK;
    size_t end = begin + GROUP_NORM_CHUNK < group_size ? begin + GROUP_NORM_CHUNK : group_size;
    const T* x = inp + group * group_size;
    float sum = 0.0f;
    for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) sum += to_f32(x[i]);
    float count = (float)(end - begin);
    float mean = block_sum(sum) / count;
    float sq = 0.0f;
    for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        float d = to_f32(x[i]) - mean;
        sq += d * d;
    }
    float m2 = block_sum(sq);
    if (threadIdx.x == 0) partial[blockIdx.x] = Moments{count, mean, m2};
}

// One thread per group merges its chunks in order (the same order every run), then keeps mean and
// rstd for the normalising pass, and for the caller when it asked for them.
__global__ static void group_norm_stats_kernel(float* stats, float* mean_out, float* rstd_out, const Moments* partial,
                                               int groups, int chunks, float eps) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= groups) return;
    Moments acc = partial[(size_t)g * chunks];
    for (int c = 1; c < chunks; c++) {
        Moments b = partial[(size_t)g * chunks + c];
        float count = acc.count + b.count;
        float delta = b.mean - acc.mean;
        acc.mean += delta * (b.count / count);
        acc.m2 += b.m2 + delta * delta * (acc.count * b.count / count);
        acc.count = count;
    }
    float rstd = 1.0f / sqrtf(acc.m2 / acc.count + eps);
    stats[2 * g] = acc.mean;
    stats[2 * g + 1] = rstd;
    if (mean_out) mean_out[g] = acc.mean;
    if (rstd_out) rstd_out[g] = rstd;
}

// The normalising pass over every value, with the affine and, when silu is set, SiLU on the f32
// result before the one rounding. out may alias inp: each element is read, then written, by one
// thread, and the statistics were complete before this kernel started.
template <typename T>
__global__ static void group_norm_apply_kernel(T* out, const T* inp, const float* stats, const T* weight, const T* bias,
                                               size_t total, int C, int HW, int G, int silu) {
    int CG = C / G;
    for (size_t i = grid_start(); i < total; i += grid_stride()) {
        size_t nc = i / HW; // (n, c)
        int c = (int)(nc % C);
        size_t ng = nc / C * G + c / CG;
        float y = (to_f32(inp[i]) - stats[2 * ng]) * stats[2 * ng + 1];
        y = y * (weight ? to_f32(weight[c]) : 1.0f) + (bias ? to_f32(bias[c]) : 0.0f);
        if (silu) y = y / (1.0f + expf(-y));
        out[i] = from_f32<T>(y);
    }
}

// One block per row; the same two-pass statistics as group norm over the C values of the row.
template <typename T>
__global__ static void layer_norm_forward_kernel(T* out, float* mean, float* rstd, const T* inp, const T* weight,
                                                 const T* bias, int C, float eps) {
    int row = blockIdx.x;
    const T* x = inp + (size_t)row * C;
    T* y = out + (size_t)row * C;

    float sum = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += to_f32(x[c]);
    float m = block_sum(sum) / (float)C;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float d = to_f32(x[c]) - m;
        sq += d * d;
    }
    float r = 1.0f / sqrtf(block_sum(sq) / (float)C + eps);
    if (threadIdx.x == 0) {
        if (mean) mean[row] = m;
        if (rstd) rstd[row] = r;
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        y[c] = from_f32<T>((to_f32(x[c]) - m) * r * (weight ? to_f32(weight[c]) : 1.0f) + (bias ? to_f32(bias[c]) : 0.0f));
}

// One block per row: the row maximum, then exp(x - max) summed, then each value scaled by 1/sum.
// out may alias inp: every thread reads and writes only its own indices, and it writes only after
// both reductions (which synchronise the block); 16-bit outputs are written once, at the end, so
// no rounded intermediate is read back.
template <typename T> __global__ static void softmax_forward_kernel(T* out, const T* inp, int C) {
    int row = blockIdx.x;
    const T* x = inp + (size_t)row * C;
    T* y = out + (size_t)row * C;

    float maxval = -INFINITY;
    for (int c = threadIdx.x; c < C; c += blockDim.x) maxval = fmaxf(maxval, to_f32(x[c]));
    maxval = block_max(maxval);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += expf(to_f32(x[c]) - maxval);
    float inv = 1.0f / block_sum(sum);
    for (int c = threadIdx.x; c < C; c += blockDim.x) y[c] = from_f32<T>(expf(to_f32(x[c]) - maxval) * inv);
}

// ---- launchers

// Device scratch for ops that need a little (the group-norm moments): grown on demand, never
// shrunk, kept for the life of the program like cuBLAS's own workspace.
static void* g_workspace = NULL;
static size_t g_workspace_bytes = 0;
static void* cuda_workspace(size_t bytes) {
    if (bytes > g_workspace_bytes) {
        cuda_free(g_workspace); // cudaFree waits for kernels still using the old one
        g_workspace = cuda_malloc(bytes);
        g_workspace_bytes = bytes;
    }
    return g_workspace;
}

extern "C" {

void group_norm_forward_cuda(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                             int N, int C, int HW, int G, float eps, int silu, DType dt) {
    if (N <= 0 || G <= 0 || C <= 0) return;
    int groups = N * G;
    size_t group_size = (size_t)(C / G) * HW;
    int chunks = (int)((group_size + GROUP_NORM_CHUNK - 1) / GROUP_NORM_CHUNK);
    chunks = chunks > 0 ? chunks : 1;
    // the moments of every chunk, then (mean, rstd) of every group
    size_t moments_bytes = sizeof(Moments) * (size_t)groups * chunks;
    moments_bytes = (moments_bytes + 255) / 256 * 256;
    char* ws = (char*)cuda_workspace(moments_bytes + sizeof(float) * 2 * (size_t)groups);
    Moments* partial = (Moments*)ws;
    float* stats = (float*)(ws + moments_bytes);
    size_t total = (size_t)N * C * HW;
    with_storage_type(dt, "group_norm_forward", [&](auto zero) {
        using T = decltype(zero);
        group_norm_moments_kernel<<<groups * chunks, GROUP_NORM_BLOCK>>>(partial, (const T*)inp, group_size, chunks);
        CHECK_LAUNCH();
        group_norm_stats_kernel<<<(groups + 127) / 128, 128>>>(stats, mean, rstd, partial, groups, chunks, eps);
        CHECK_LAUNCH();
        group_norm_apply_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(
            (T*)out, (const T*)inp, stats, (const T*)weight, (const T*)bias, total, C, HW, G, silu);
    });
    CHECK_LAUNCH();
}

void layer_norm_forward_cuda(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                             int N, int C, float eps, DType dt) {
    if (N <= 0) return;
    with_storage_type(dt, "layer_norm_forward", [&](auto zero) {
        using T = decltype(zero);
        layer_norm_forward_kernel<<<N, ROW_BLOCK>>>((T*)out, mean, rstd, (const T*)inp, (const T*)weight,
                                                    (const T*)bias, C, eps);
    });
    CHECK_LAUNCH();
}

void softmax_forward_cuda(void* out, const void* inp, int N, int C, DType dt) {
    if (N <= 0) return;
    with_storage_type(dt, "softmax_forward", [&](auto zero) {
        using T = decltype(zero);
        softmax_forward_kernel<<<N, ROW_BLOCK>>>((T*)out, (const T*)inp, C);
    });
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

// The general kernel, for any head size up to ATTENTION_MAX_HS, causal or not, and every storage
// type. One warp per (n, head, query). Lane l holds elements d = l, l + 32, l + 64, ... of the
// query and of the output accumulator in registers (at most ATTENTION_MAX_HS/32 = 16 each), so
// the reads of q, k and v are coalesced. Keys are visited in blocks of ATTENTION_KEY_BLOCK as in
// attention_forward_cpu: score the block (each dot product is a warp reduction; lane j % 32 keeps
// the score of key j of the block), take its maximum, rescale the accumulator and the running sum
// by exp(old_max - new_max), then add p_j * v_j for each key. The L x L scores are never stored.
template <typename T>
__global__ static void attention_forward_kernel(T* out, const T* q, const T* k, const T* v, int NH, int Lq, int Lk,
                                                int HS, int causal, float scale, size_t n_queries) {
    size_t query = (size_t)blockIdx.x * ATTENTION_WARPS + threadIdx.x / WARP_SIZE;
    if (query >= n_queries) return; // the whole warp leaves together, so the shuffles below stay full
    int lane = threadIdx.x % WARP_SIZE;
    int i = (int)(query % Lq);
    int h = (int)((query / Lq) % NH);
    size_t n = query / ((size_t)Lq * NH);
    size_t D = (size_t)NH * HS;
    const T* q_i = q + ((size_t)n * Lq + i) * D + (size_t)h * HS;
    const T* k_h = k + (size_t)n * Lk * D + (size_t)h * HS; // key j of this head: k_h + j * D
    const T* v_h = v + (size_t)n * Lk * D + (size_t)h * HS;

    float q_reg[ATTENTION_PER_LANE], acc[ATTENTION_PER_LANE]; // acc = sum_j p_j v_j, p relative to running_max
#pragma unroll
    for (int t = 0; t < ATTENTION_PER_LANE; t++) {
        int d = lane + t * WARP_SIZE;
        q_reg[t] = d < HS ? to_f32(q_i[d]) : 0.0f;
        acc[t] = 0.0f;
    }
    float running_max = -INFINITY, running_sum = 0.0f; // the same in every lane
    int keys = causal ? i + 1 : Lk;
    for (int j0 = 0; j0 < keys; j0 += ATTENTION_KEY_BLOCK) {
        int jn = keys - j0 < ATTENTION_KEY_BLOCK ? keys - j0 : ATTENTION_KEY_BLOCK;
        // scores of keys j0 + lane (score_lo) and j0 + 32 + lane (score_hi); -inf past the end
        float score_lo = -INFINITY, score_hi = -INFINITY;
        for (int j = 0; j < jn; j++) {
            const T* k_j = k_h + (size_t)(j0 + j) * D;
            float partial = 0.0f;
#pragma unroll
            for (int t = 0; t < ATTENTION_PER_LANE; t++) {
                int d = lane + t * WARP_SIZE;
                if (d < HS) partial += q_reg[t] * to_f32(k_j[d]);
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
            const T* v_j = v_h + (size_t)(j0 + j) * D;
#pragma unroll
            for (int t = 0; t < ATTENTION_PER_LANE; t++) {
                int d = lane + t * WARP_SIZE;
                if (d < HS) acc[t] += p * to_f32(v_j[d]);
            }
        }
        running_max = new_max;
    }
    T* out_i = out + ((size_t)n * Lq + i) * D + (size_t)h * HS;
    float inv = 1.0f / running_sum;
#pragma unroll
    for (int t = 0; t < ATTENTION_PER_LANE; t++) {
        int d = lane + t * WARP_SIZE;
        if (d < HS) out_i[d] = from_f32<T>(acc[t] * inv);
    }
}

// ---- The tensor-core kernel: FlashAttention-2 for 16-bit data and head size 64
//
// Every attention of the SDXL UNet has HS = 64 (10 or 20 heads of 64). A block takes 64 queries
// of one (n, head), four warps of 16 queries each, and streams the keys in blocks of 64 through
// shared memory. Per key block a warp computes its 16 x 64 scores S = Q K^T with mma.sync
// m16n8k16 (f16/bf16 in, f32 accumulate), updates the running row maximum and sum (the online
// softmax), turns the scores into probabilities P = exp(S - max) rounded to 16 bits, and adds
// P V (16 x 64) with the same instruction. The L x L scores only ever exist 16 x 64 at a time, in
// registers. Register layouts are those of the PTX ISA for m16n8k16 ("groupID" g = lane / 4,
// "threadID_in_group" t = lane % 4):
//   A (16 x 16, row-major):  a[0] = A[g][2t..2t+1]    a[1] = A[g+8][2t..2t+1]
//                            a[2] = A[g][2t+8..2t+9]  a[3] = A[g+8][2t+8..2t+9]
//   B (16 x 8, "col"):       b[0] = B[2t..2t+1][g]    b[1] = B[2t+8..2t+9][g]
//   C (16 x 8, f32):         c[0..1] = C[g][2t..2t+1] c[2..3] = C[g+8][2t..2t+1]
// (two 16-bit values per 32-bit register, the lower index in the low half). The score
// accumulator of keys 16s..16s+15 is, register for register, the A operand of the second product
// (FlashAttention-2's trick), so P never leaves registers either.
constexpr int FLASH_HS = 64;
constexpr int FLASH_BLOCK_Q = 64;           // queries per block, 16 per warp
constexpr int FLASH_BLOCK_K = 64;           // keys per step
constexpr int FLASH_THREADS = 128;          // 4 warps
constexpr int FLASH_STRIDE = FLASH_HS + 8;  // shared-memory row length in elements: 144 bytes, so
                                            // the 8 rows a quarter-warp touches fall in 8 different
                                            // groups of 4 banks

// Two f32 values rounded into one register of two 16-bit values, the first in the low half.
template <typename T> __device__ __forceinline__ static uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

// d += a @ b for one m16n8k16 tile, f32 accumulators.
template <typename T> __device__ __forceinline__ static void mma_16816(float* d, const uint32_t* a, const uint32_t* b);
template <> __device__ __forceinline__ void mma_16816<__half>(float* d, const uint32_t* a, const uint32_t* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mma_16816<__nv_bfloat16>(float* d, const uint32_t* a, const uint32_t* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Four 8 x 8 tiles of 16-bit values from shared memory, each delivered transposed: lanes 8m..8m+7
// give the addresses of the 8 rows of tile m (16 bytes each), and r[m] of lane l receives
// tile_m[2t..2t+1][g], which is a B operand's register when the tile's rows are its k index.
__device__ __forceinline__ static void ldmatrix_x4_trans(uint32_t* r, const void* row_address) {
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(row_address);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Copies rows [row0, row0 + 64) of a (L, D)-strided head slice (64 values a row) into a shared
// tile, 16 bytes per thread and step; rows past L become zeros.
template <typename T>
__device__ __forceinline__ static void flash_load_tile(T* tile, const T* base, size_t D, int row0, int L) {
    for (int c = threadIdx.x; c < 64 * (FLASH_HS / 8); c += FLASH_THREADS) {
        int r = c / (FLASH_HS / 8), piece = c % (FLASH_HS / 8);
        uint4 value = make_uint4(0, 0, 0, 0);
        if (row0 + r < L) value = *reinterpret_cast<const uint4*>(base + (size_t)(row0 + r) * D + piece * 8);
        *reinterpret_cast<uint4*>(tile + r * FLASH_STRIDE + piece * 8) = value;
    }
}

template <typename T>
__global__ static void __launch_bounds__(FLASH_THREADS)
    flash_attention_kernel(T* out, const T* q, const T* k, const T* v, int NH, int Lq, int Lk, float scale_log2) {
    __shared__ __align__(16) T q_tile[FLASH_BLOCK_Q * FLASH_STRIDE];
    __shared__ __align__(16) T k_tile[FLASH_BLOCK_K * FLASH_STRIDE];
    __shared__ __align__(16) T v_tile[FLASH_BLOCK_K * FLASH_STRIDE];
    int q0 = blockIdx.x * FLASH_BLOCK_Q;
    int h = blockIdx.y % NH, n = blockIdx.y / NH;
    size_t D = (size_t)NH * FLASH_HS;
    const T* q_head = q + (size_t)n * Lq * D + (size_t)h * FLASH_HS;
    const T* k_head = k + (size_t)n * Lk * D + (size_t)h * FLASH_HS;
    const T* v_head = v + (size_t)n * Lk * D + (size_t)h * FLASH_HS;
    int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    int g = lane / 4, t = lane % 4;

    // this warp's 16 queries as A operands, one per 16 dimensions of the head
    flash_load_tile(q_tile, q_head, D, q0, Lq);
    __syncthreads();
    uint32_t qa[FLASH_HS / 16][4];
    const T* qw = q_tile + warp * 16 * FLASH_STRIDE;
#pragma unroll
    for (int s = 0; s < FLASH_HS / 16; s++) {
        qa[s][0] = *reinterpret_cast<const uint32_t*>(qw + g * FLASH_STRIDE + 16 * s + 2 * t);
        qa[s][1] = *reinterpret_cast<const uint32_t*>(qw + (g + 8) * FLASH_STRIDE + 16 * s + 2 * t);
        qa[s][2] = *reinterpret_cast<const uint32_t*>(qw + g * FLASH_STRIDE + 16 * s + 8 + 2 * t);
        qa[s][3] = *reinterpret_cast<const uint32_t*>(qw + (g + 8) * FLASH_STRIDE + 16 * s + 8 + 2 * t);
    }

    float o[FLASH_HS / 8][4];                 // the output rows g and g+8, 8 dimensions per tile
    float row_max[2] = {-INFINITY, -INFINITY}; // of rows g, g+8, in units of log2 (scores * scale_log2)
    float row_sum[2] = {0.0f, 0.0f};           // this thread's part of the sums; the quad adds up at the end
#pragma unroll
    for (int j = 0; j < FLASH_HS / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

    for (int k0 = 0; k0 < Lk; k0 += FLASH_BLOCK_K) {
        __syncthreads(); // every warp is done with the previous key block
        flash_load_tile(k_tile, k_head, D, k0, Lk);
        flash_load_tile(v_tile, v_head, D, k0, Lk);
        __syncthreads();

        // S (16 x 64) = Q K^T: key tile j holds keys 8j..8j+7; B = K^T, so B[d][key] = K[key][d]
        // and its registers are pairs of neighbouring dimensions of one key row
        float s_acc[FLASH_BLOCK_K / 8][4];
#pragma unroll
        for (int j = 0; j < FLASH_BLOCK_K / 8; j++) {
            s_acc[j][0] = s_acc[j][1] = s_acc[j][2] = s_acc[j][3] = 0.0f;
            const T* key_row = k_tile + (8 * j + g) * FLASH_STRIDE;
#pragma unroll
            for (int s = 0; s < FLASH_HS / 16; s++) {
                uint32_t kb[2];
                kb[0] = *reinterpret_cast<const uint32_t*>(key_row + 16 * s + 2 * t);
                kb[1] = *reinterpret_cast<const uint32_t*>(key_row + 16 * s + 8 + 2 * t);
                mma_16816<T>(s_acc[j], qa[s], kb);
            }
        }

        // online softmax: scale to log2 units, mask keys past Lk, new row maxima over the quad
        float new_max[2] = {row_max[0], row_max[1]};
#pragma unroll
        for (int j = 0; j < FLASH_BLOCK_K / 8; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int key = k0 + 8 * j + 2 * t + (c & 1);
                float x = key < Lk ? s_acc[j][c] * scale_log2 : -INFINITY;
                s_acc[j][c] = x;
                new_max[c / 2] = fmaxf(new_max[c / 2], x);
            }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            new_max[r] = fmaxf(new_max[r], __shfl_xor_sync(FULL_MASK, new_max[r], 1));
            new_max[r] = fmaxf(new_max[r], __shfl_xor_sync(FULL_MASK, new_max[r], 2));
            // key 0 of the first block is always there, so new_max is finite from then on
            float correction = exp2f(row_max[r] - new_max[r]); // 0 on the first block
            row_sum[r] *= correction;
#pragma unroll
            for (int j = 0; j < FLASH_HS / 8; j++) {
                o[j][2 * r] *= correction;
                o[j][2 * r + 1] *= correction;
            }
            row_max[r] = new_max[r];
        }

        // P = exp2(S - max), rounded to 16 bits as the A operand of keys 16s..16s+15: the score
        // tiles 2s (keys 16s + 2t..) and 2s+1 (keys 16s + 8 + 2t..) are its registers as they are
        uint32_t pa[FLASH_BLOCK_K / 16][4];
#pragma unroll
        for (int s = 0; s < FLASH_BLOCK_K / 16; s++) {
            float p[2][4];
#pragma unroll
            for (int half = 0; half < 2; half++)
#pragma unroll
                for (int c = 0; c < 4; c++) p[half][c] = exp2f(s_acc[2 * s + half][c] - row_max[c / 2]);
            row_sum[0] += p[0][0] + p[0][1] + p[1][0] + p[1][1];
            row_sum[1] += p[0][2] + p[0][3] + p[1][2] + p[1][3];
            pa[s][0] = pack2<T>(p[0][0], p[0][1]); // row g,   keys 16s + 2t, +1
            pa[s][1] = pack2<T>(p[0][2], p[0][3]); // row g+8
            pa[s][2] = pack2<T>(p[1][0], p[1][1]); // row g,   keys 16s + 8 + 2t, +1
            pa[s][3] = pack2<T>(p[1][2], p[1][3]); // row g+8
        }

        // O (16 x 64) += P V: B = V with keys as its k index. V is stored (key, dimension), so
        // its B registers are pairs of keys of one dimension: ldmatrix with .trans delivers them.
        // Tiles of one call: keys 16s..+7 and 16s+8..+15, for dimensions 8j.. and 8j+8..
#pragma unroll
        for (int j = 0; j < FLASH_HS / 8; j += 2)
#pragma unroll
            for (int s = 0; s < FLASH_BLOCK_K / 16; s++) {
                int tile = lane / 8, row = lane % 8;
                const T* address = v_tile + (16 * s + 8 * (tile % 2) + row) * FLASH_STRIDE + 8 * (j + tile / 2);
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, address);
                mma_16816<T>(o[j], pa[s], vb);         // vb[0], vb[1]: dimensions 8j..8j+7
                mma_16816<T>(o[j + 1], pa[s], vb + 2); // vb[2], vb[3]: dimensions 8j+8..8j+15
            }
    }

    // the full row sums, then O / sum, rows g and g+8 of this warp's 16
#pragma unroll
    for (int r = 0; r < 2; r++) {
        row_sum[r] += __shfl_xor_sync(FULL_MASK, row_sum[r], 1);
        row_sum[r] += __shfl_xor_sync(FULL_MASK, row_sum[r], 2);
    }
    int rows[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (rows[r] >= Lq) continue;
        float inv = 1.0f / row_sum[r];
        T* out_row = out + ((size_t)n * Lq + rows[r]) * D + (size_t)h * FLASH_HS;
#pragma unroll
        for (int j = 0; j < FLASH_HS / 8; j++)
            *reinterpret_cast<uint32_t*>(out_row + 8 * j + 2 * t) = pack2<T>(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
    }
}

// ---- launchers

// Large heads (the VAE's single 512-wide head over h*w = 16k tokens): the general kernel would give
// each query a warp and 16k dot products of 512 values in plain f32 arithmetic, about 0.55 TFLOP
// at 1024 px on CUDA cores. As the CPU reference does, blocks of queries go through cuBLAS
// instead, so the products run on the tensor cores (16-bit) and the scores exist one block at a
// time:  S = scale * Q_blk K^T (f32),  P = softmax(S) by rows,  O_blk = P V (P rounded to dt).
constexpr int ATTENTION_GEMM_MIN_HS = 128;     // larger heads take this path
constexpr size_t ATTENTION_GEMM_SCORES = 1 << 24; // scores per block: 64 MiB of f32

static void attention_by_gemm(void* out, const void* q, const void* k, const void* v, int N, int NH, int Lq, int Lk,
                              int HS, float scale, DType dt) {
    size_t es = dtype_size(dt), D = (size_t)NH * HS;
    int block = (int)(ATTENTION_GEMM_SCORES / (size_t)Lk);
    block = block < 1 ? 1 : block > Lq ? Lq : block;
    size_t n_scores = (size_t)block * Lk;
    char* ws = (char*)cuda_workspace(n_scores * sizeof(float) + (dt == DT_F32 ? 0 : n_scores * es));
    float* scores = (float*)ws;
    void* probs = dt == DT_F32 ? (void*)scores : (void*)(ws + n_scores * sizeof(float));
    cudaDataType_t t = cublas_type(dt, "attention_forward");
    const float zero = 0.0f, one = 1.0f;
    for (int n = 0; n < N; n++)
        for (int h = 0; h < NH; h++)
            for (int i0 = 0; i0 < Lq; i0 += block) {
                int bq = Lq - i0 < block ? Lq - i0 : block;
                const char* q_blk = (const char*)q + (((size_t)n * Lq + i0) * D + (size_t)h * HS) * es;
                const char* k_h = (const char*)k + ((size_t)n * Lk * D + (size_t)h * HS) * es;
                const char* v_h = (const char*)v + ((size_t)n * Lk * D + (size_t)h * HS) * es;
                char* o_blk = (char*)out + (((size_t)n * Lq + i0) * D + (size_t)h * HS) * es;
                // S (bq, Lk) row-major = scale * Q_blk (bq, HS; ld D) @ K^T. Column-major cuBLAS
                // sees S^T (Lk x bq, ld Lk) = K Q_blk^T: K's rows (ld D) are column-major K^T, so
                // A = K with OP_T; Q_blk likewise is column-major Q_blk^T, B = Q_blk with OP_N.
                CUBLAS_CHECK(cublasGemmEx(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, Lk, bq, HS, &scale, k_h, t, (int)D,
                                          q_blk, t, (int)D, &zero, scores, CUDA_R_32F, Lk, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT));
                softmax_forward_cuda(scores, scores, bq, Lk, DT_F32);
                if (probs != scores) cast_forward_cuda(probs, dt, scores, DT_F32, n_scores);
                // O_blk (bq, HS; ld D) = P (bq, Lk) @ V (Lk, HS; ld D). Column-major: O_blk^T =
                // V^T P^T, where V's rows are column-major V^T (HS x Lk, ld D) and P's rows are
                // column-major P^T (Lk x bq, ld Lk): both OP_N, m = HS, n = bq, k = Lk.
                CUBLAS_CHECK(cublasGemmEx(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, HS, bq, Lk, &one, v_h, t, (int)D, probs,
                                          t, Lk, &zero, o_blk, t, (int)D, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            }
}

extern "C" {

void attention_forward_cuda(void* out, const void* q, const void* k, const void* v, int N, int NH, int Lq, int Lk,
                            int HS, int causal, DType dt) {
    if (HS > ATTENTION_MAX_HS) fatal("attention_forward: head size %d is above the limit %d", HS, ATTENTION_MAX_HS);
    if (causal && Lq != Lk) fatal("attention_forward: a causal mask needs Lq == Lk (got %d, %d)", Lq, Lk);
    size_t n_queries = (size_t)N * NH * Lq;
    if (n_queries == 0 || HS <= 0) return;
    const float scale = 1.0f / sqrtf((float)HS);
    if ((dt == DT_F16 || dt == DT_BF16) && HS == FLASH_HS && !causal && Lk > 0) {
        // 16-byte loads of head slices need 16-byte aligned rows: NH*64 elements of 2 bytes is a
        // multiple of 16, so aligned base pointers suffice (arena allocations are 256-aligned)
        if (((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)out) % 16 != 0)
            fatal("attention_forward: 16-bit q, k, v and out must be 16-byte aligned");
        dim3 grid((unsigned int)((Lq + FLASH_BLOCK_Q - 1) / FLASH_BLOCK_Q), (unsigned int)(N * NH));
        const float scale_log2 = scale * 1.4426950408889634f; // exp(x) = exp2(x * log2(e))
        if (dt == DT_F16)
            flash_attention_kernel<__half><<<grid, FLASH_THREADS>>>((__half*)out, (const __half*)q, (const __half*)k,
                                                                    (const __half*)v, NH, Lq, Lk, scale_log2);
        else
            flash_attention_kernel<__nv_bfloat16><<<grid, FLASH_THREADS>>>(
                (__nv_bfloat16*)out, (const __nv_bfloat16*)q, (const __nv_bfloat16*)k, (const __nv_bfloat16*)v, NH, Lq,
                Lk, scale_log2);
        CHECK_LAUNCH();
        return;
    }
    if (HS >= ATTENTION_GEMM_MIN_HS && !causal && Lk > 0) {
        attention_by_gemm(out, q, k, v, N, NH, Lq, Lk, HS, scale, dt);
        return;
    }
    size_t blocks = (n_queries + ATTENTION_WARPS - 1) / ATTENTION_WARPS;
    with_storage_type(dt, "attention_forward", [&](auto zero) {
        using T = decltype(zero);
        attention_forward_kernel<<<(unsigned int)blocks, ATTENTION_WARPS * WARP_SIZE>>>(
            (T*)out, (const T*)q, (const T*)k, (const T*)v, NH, Lq, Lk, HS, causal, scale, n_queries);
    });
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Activations, elementwise; out may alias inp (each thread reads its element, then writes it).
// The formulas are those of ops.c. expf, erff and tanhf are CUDA's accurate versions (not the
// __expf intrinsics), and `/` is IEEE division, since the build does not use fast-math.
// ---- CUDA kernels

// The activations as f32 functions, shared by their kernels.
enum Activation { ACT_SILU, ACT_GELU, ACT_GELU_TANH, ACT_QUICK_GELU, ACT_SIGMOID };

template <int ACT> __device__ __forceinline__ static float activation(float x) {
    if (ACT == ACT_SILU) return x / (1.0f + expf(-x));
    if (ACT == ACT_GELU) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
    if (ACT == ACT_GELU_TANH) return 0.5f * x * (1.0f + tanhf(0.79788456080286535588f * (x + 0.044715f * x * x * x)));
    if (ACT == ACT_QUICK_GELU) return x / (1.0f + expf(-1.702f * x));
    return 1.0f / (1.0f + expf(-x)); // ACT_SIGMOID
}

template <typename T, int ACT> __global__ static void activation_kernel(T* out, const T* inp, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] = from_f32<T>(activation<ACT>(to_f32(inp[i])));
}

// inp (N, 2C): the value is the first half of each row, the gate (through erf GELU) the second.
template <typename T> __global__ static void geglu_forward_kernel(T* out, const T* inp, int C, size_t total) {
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        size_t row = idx / C, c = idx % C;
        float value = to_f32(inp[row * 2 * C + c]);
        float gate = to_f32(inp[row * 2 * C + C + c]);
        out[idx] = from_f32<T>(value * activation<ACT_GELU>(gate));
    }
}

// ---- launchers

template <int ACT> static void activation_launch(void* out, const void* inp, size_t n, DType dt, const char* op) {
    if (n == 0) return;
    with_storage_type(dt, op, [&](auto zero) {
        using T = decltype(zero);
        activation_kernel<T, ACT><<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>((T*)out, (const T*)inp, n);
    });
    CHECK_LAUNCH();
}

extern "C" {

void silu_forward_cuda(void* out, const void* inp, size_t n, DType dt) {
    activation_launch<ACT_SILU>(out, inp, n, dt, "silu_forward");
}
void gelu_forward_cuda(void* out, const void* inp, size_t n, DType dt) {
    activation_launch<ACT_GELU>(out, inp, n, dt, "gelu_forward");
}
void gelu_tanh_forward_cuda(void* out, const void* inp, size_t n, DType dt) {
    activation_launch<ACT_GELU_TANH>(out, inp, n, dt, "gelu_tanh_forward");
}
void quick_gelu_forward_cuda(void* out, const void* inp, size_t n, DType dt) {
    activation_launch<ACT_QUICK_GELU>(out, inp, n, dt, "quick_gelu_forward");
}
void sigmoid_forward_cuda(void* out, const void* inp, size_t n, DType dt) {
    activation_launch<ACT_SIGMOID>(out, inp, n, dt, "sigmoid_forward");
}

void geglu_forward_cuda(void* out, const void* inp, int N, int C, DType dt) {
    size_t total = (size_t)(N > 0 ? N : 0) * (size_t)(C > 0 ? C : 0);
    if (total == 0) return;
    with_storage_type(dt, "geglu_forward", [&](auto zero) {
        using T = decltype(zero);
        geglu_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>((T*)out, (const T*)inp, C, total);
    });
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Elementwise arithmetic; out may alias any input (each thread reads its elements, then writes).
// ---- CUDA kernels

template <typename T> __global__ static void add_forward_kernel(T* out, const T* a, const T* b, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

template <typename T> __global__ static void mul_forward_kernel(T* out, const T* a, const T* b, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] = from_f32<T>(to_f32(a[i]) * to_f32(b[i]));
}

template <typename T> __global__ static void scale_forward_kernel(T* out, const T* inp, float s, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) out[i] = from_f32<T>(s * to_f32(inp[i]));
}

// Each product rounded, then the sum: __fmul_rn/__fadd_rn are never contracted into an FMA, so this
// is bit-identical to axpby_forward_cpu (built with -ffp-contract=off) whatever --fmad says.
__global__ static void axpby_forward_kernel(float* out, float alpha, const float* x, float beta, const float* y,
                                            size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride())
        out[i] = __fadd_rn(__fmul_rn(alpha, x[i]), __fmul_rn(beta, y[i]));
}

template <typename T>
__global__ static void add_channel_vector_forward_kernel(T* out, const T* inp, const T* vec, int HW, size_t total) {
    for (size_t i = grid_start(); i < total; i += grid_stride()) out[i] = from_f32<T>(to_f32(inp[i]) + to_f32(vec[i / HW]));
}

// ---- launchers

extern "C" {

void add_forward_cuda(void* out, const void* a, const void* b, size_t n, DType dt) {
    if (n == 0) return;
    with_storage_type(dt, "add_forward", [&](auto zero) {
        using T = decltype(zero);
        add_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>((T*)out, (const T*)a, (const T*)b, n);
    });
    CHECK_LAUNCH();
}

void mul_forward_cuda(void* out, const void* a, const void* b, size_t n, DType dt) {
    if (n == 0) return;
    with_storage_type(dt, "mul_forward", [&](auto zero) {
        using T = decltype(zero);
        mul_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>((T*)out, (const T*)a, (const T*)b, n);
    });
    CHECK_LAUNCH();
}

void scale_forward_cuda(void* out, const void* inp, float s, size_t n, DType dt) {
    if (n == 0) return;
    with_storage_type(dt, "scale_forward", [&](auto zero) {
        using T = decltype(zero);
        scale_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>((T*)out, (const T*)inp, s, n);
    });
    CHECK_LAUNCH();
}

void axpby_forward_cuda(float* out, float alpha, const float* x, float beta, const float* y, size_t n) {
    if (n == 0) return;
    axpby_forward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>(out, alpha, x, beta, y, n);
    CHECK_LAUNCH();
}

void add_channel_vector_forward_cuda(void* out, const void* inp, const void* vec, int N, int C, int HW, DType dt) {
    if (N <= 0 || C <= 0 || HW <= 0) return;
    size_t total = (size_t)N * C * HW;
    with_storage_type(dt, "add_channel_vector_forward", [&](auto zero) {
        using T = decltype(zero);
        add_channel_vector_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>((T*)out, (const T*)inp,
                                                                                          (const T*)vec, HW, total);
    });
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Layout ops. None of them allows aliasing. They move values without arithmetic, so a 16-bit
// tensor is moved as its bits.
// ---- CUDA kernels

// One thread per output element: row o of out is row o of a followed by row o of b.
template <typename T>
__global__ static void concat_forward_kernel(T* out, const T* a, const T* b, size_t inner_a, size_t inner_b,
                                             size_t total) {
    size_t inner = inner_a + inner_b;
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        size_t o = idx / inner, j = idx % inner;
        out[idx] = j < inner_a ? a[o * inner_a + j] : b[o * inner_b + (j - inner_a)];
    }
}

// One thread per input element, the inverse of concat.
template <typename T>
__global__ static void split_forward_kernel(T* out_a, T* out_b, const T* inp, size_t inner_a, size_t inner_b,
                                            size_t total) {
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
// column reads of the tile free of shared-memory bank conflicts (for 16-bit T two neighbouring
// columns share a bank word, which costs at most a two-way conflict). Tiles are numbered over
// (B, R/32, C/32) and visited in a block-stride loop, so no grid dimension limit applies.
template <typename T> __global__ static void transpose_forward_kernel(T* out, const T* inp, int R, int C, size_t n_tiles) {
    __shared__ T tile[TRANSPOSE_TILE][TRANSPOSE_TILE + 1];
    size_t tiles_c = (C + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE, tiles_r = (R + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE;
    for (size_t t = blockIdx.x; t < n_tiles; t += gridDim.x) {
        int c0 = (int)(t % tiles_c) * TRANSPOSE_TILE;
        int r0 = (int)((t / tiles_c) % tiles_r) * TRANSPOSE_TILE;
        size_t b = t / (tiles_c * tiles_r);
        const T* inp_b = inp + b * R * C;
        T* out_b = out + b * R * C;
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
template <typename T>
__global__ static void embedding_forward_kernel(T* out, const int32_t* ids, const T* table, int V, int D, size_t total) {
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        size_t i = idx / D, d = idx % D;
        int32_t id = ids[i];
        out[idx] = (id >= 0 && id < V) ? table[(size_t)id * D + d] : from_f32<T>(0.0f);
    }
}

// ---- launchers

extern "C" {

void concat_forward_cuda(void* out, const void* a, const void* b, int outer, int inner_a, int inner_b, DType dt) {
    size_t total = (size_t)outer * ((size_t)inner_a + inner_b);
    if (outer <= 0 || total == 0) return;
    with_storage_type(dt, "concat_forward", [&](auto zero) {
        using T = decltype(zero);
        concat_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>((T*)out, (const T*)a, (const T*)b,
                                                                              inner_a, inner_b, total);
    });
    CHECK_LAUNCH();
}

void split_forward_cuda(void* out_a, void* out_b, const void* inp, int outer, int inner_a, int inner_b, DType dt) {
    size_t total = (size_t)outer * ((size_t)inner_a + inner_b);
    if (outer <= 0 || total == 0) return;
    with_storage_type(dt, "split_forward", [&](auto zero) {
        using T = decltype(zero);
        split_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>((T*)out_a, (T*)out_b, (const T*)inp,
                                                                             inner_a, inner_b, total);
    });
    CHECK_LAUNCH();
}

void transpose_forward_cuda(void* out, const void* inp, int B, int R, int C, DType dt) {
    if (B <= 0 || R <= 0 || C <= 0) return;
    size_t tiles_c = (C + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE, tiles_r = (R + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE;
    size_t n_tiles = (size_t)B * tiles_r * tiles_c;
    unsigned int grid = (unsigned int)(n_tiles < ELEMENTWISE_MAX_GRID ? n_tiles : ELEMENTWISE_MAX_GRID);
    with_storage_type(dt, "transpose_forward", [&](auto zero) {
        using T = decltype(zero);
        transpose_forward_kernel<<<grid, dim3(TRANSPOSE_TILE, TRANSPOSE_ROWS)>>>((T*)out, (const T*)inp, R, C, n_tiles);
    });
    CHECK_LAUNCH();
}

void embedding_forward_cuda(void* out, const int32_t* ids, const void* table, int N, int V, int D, DType dt) {
    if (N <= 0 || D <= 0) return;
    size_t total = (size_t)N * D;
    with_storage_type(dt, "embedding_forward", [&](auto zero) {
        using T = decltype(zero);
        embedding_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>((T*)out, ids, (const T*)table, V, D,
                                                                                 total);
    });
    CHECK_LAUNCH();
}

} // extern "C"

// ----------------------------------------------------------------------------
// Embeddings of scalars
// ---- CUDA kernels

// One thread per (n, i < dim/2), writing out[n, i] and out[n, half_dim + i]. The exponent is the f32
// expression of timestep_embedding_forward_cpu, operation for operation: (neg_log_period * i)
// then the division (a product followed by a quotient cannot be contracted into an FMA).
template <typename T>
__global__ static void timestep_embedding_forward_kernel(T* out, const float* t, int dim, int flip_sin_to_cos,
                                                         float freq_shift, float neg_log_period, size_t total) {
    int half_dim = dim / 2;
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        size_t n = idx / half_dim;
        int i = (int)(idx % half_dim);
        float exponent = neg_log_period * (float)i / ((float)half_dim - freq_shift);
        float arg = t[n] * expf(exponent);
        float s = sinf(arg), c = cosf(arg);
        T* out_n = out + n * dim;
        out_n[i] = from_f32<T>(flip_sin_to_cos ? c : s);
        out_n[half_dim + i] = from_f32<T>(flip_sin_to_cos ? s : c);
    }
}

// ---- launchers

extern "C" {

void timestep_embedding_forward_cuda(void* out, const float* t, int N, int dim, int flip_sin_to_cos, float freq_shift,
                                     float max_period, DType dt) {
    int half_dim = dim / 2;
    if (N <= 0 || half_dim <= 0) return;
    // -ln(max_period) rounded to f32 on the host, exactly as the CPU version computes it
    const float neg_log_period = (float)(-log((double)max_period));
    size_t total = (size_t)N * half_dim;
    with_storage_type(dt, "timestep_embedding_forward", [&](auto zero) {
        using T = decltype(zero);
        timestep_embedding_forward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(
            (T*)out, t, dim, flip_sin_to_cos, freq_shift, neg_log_period, total);
    });
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

// ----------------------------------------------------------------------------
// Backward passes (ops.h, section "Backward passes")
//
// Correct first, fast later: every GEMM-shaped step goes to cuBLAS (f32 compute; f32 outputs
// where a sum runs over several calls, so 16-bit storage is rounded once per output as the
// contract asks), every reduction and elementwise step is one plain kernel. Deterministic: each
// reduction has a fixed shape (a block sum of fixed size, or one thread walking its values in
// order) and no float atomics are used, so a gradient has the same bits on every run.
// ---- CUDA kernels

constexpr int COLUMN_TILE = 32; // columns per block of a column sum: a warp reads 32 neighbours of a row
constexpr int COLUMN_ROWS = 8;  // thread (x, y) of the 32 x 8 block sums rows y, y + 8, y + 16, ...
constexpr int BACKWARD_BLOCK = 256; // threads per block of the per-channel and per-row sums

// The total over threadIdx.y of v (column threadIdx.x of a 32 x 8 block), added in order of y;
// valid in the threads with threadIdx.y == 0. Every thread of the block must call it. Safe to
// call more than once per kernel.
__device__ static float column_tile_total(float v) {
    __shared__ float partial[COLUMN_ROWS][COLUMN_TILE];
    __syncthreads(); // a previous call may still be reading partial
    partial[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    float total = 0.0f;
    if (threadIdx.y == 0)
        for (int r = 0; r < COLUMN_ROWS; r++) total += partial[r][threadIdx.x];
    return total;
}

// out[c] += sum over the rows of x (rows, cols): linear's dbias. Block b takes columns
// 32b .. 32b+31; the += is one rounding of out + the f32 total.
template <typename T> __global__ static void column_sums_add_kernel(T* out, const T* x, int rows, int cols) {
    int c = blockIdx.x * COLUMN_TILE + threadIdx.x;
    float sum = 0.0f;
    if (c < cols)
        for (int r = threadIdx.y; r < rows; r += COLUMN_ROWS) sum += to_f32(x[(size_t)r * cols + c]);
    float total = column_tile_total(sum);
    if (threadIdx.y == 0 && c < cols) out[c] = from_f32<T>(to_f32(out[c]) + total);
}

// out[o] += sum of x (N, C, P) over n and p: conv2d's dbias. One block per channel.
template <typename T> __global__ static void channel_sums_add_kernel(T* out, const T* x, int N, int C, int P) {
    int o = blockIdx.x;
    float sum = 0.0f;
    for (int n = 0; n < N; n++) {
        const T* x_no = x + ((size_t)n * C + o) * P;
        for (int p = threadIdx.x; p < P; p += blockDim.x) sum += to_f32(x_no[p]);
    }
    float total = block_sum(sum);
    if (threadIdx.x == 0) out[o] = from_f32<T>(to_f32(out[o]) + total);
}

// col2im for output pixels [p0, p0 + cols) of one image, as a gather: one thread per input value
// (c, y, x) adds up the entries of dcol (C_in*K*K, cols) that im2col took from it, tap by tap,
// and adds that to acc_n (f32). Each input value has one owner, so no atomics are needed.
__global__ static void col2im_add_kernel(float* acc_n, const float* dcol, int C_in, int H, int W, int K, int stride,
                                         int pad, int H_out, int W_out, int p0, int cols) {
    size_t total = (size_t)C_in * H * W;
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        int x = (int)(idx % W), y = (int)((idx / W) % H), c = (int)(idx / ((size_t)H * W));
        float sum = 0.0f;
        for (int ky = 0; ky < K; ky++) {
            int ty = y + pad - ky; // = oy * stride for the output row that read (y, x) through tap ky
            if (ty < 0 || ty % stride != 0 || ty / stride >= H_out) continue;
            for (int kx = 0; kx < K; kx++) {
                int tx = x + pad - kx;
                if (tx < 0 || tx % stride != 0 || tx / stride >= W_out) continue;
                int p = (ty / stride) * W_out + tx / stride;
                if (p < p0 || p >= p0 + cols) continue;
                sum += dcol[((size_t)(c * K + ky) * K + kx) * cols + (p - p0)];
            }
        }
        acc_n[idx] += sum;
    }
}

// The gradient reaching a norm's affine output y = xhat * w + b: dout, or with the fused SiLU
// dout * silu'(y), as norm_silu_grad in ops.c.
__device__ __forceinline__ static float norm_silu_grad(float dout, float xhat, float w, float b, int silu) {
    if (!silu) return dout;
    float y = xhat * w + b;
    float s = 1.0f / (1.0f + expf(-y));
    return dout * s * (1.0f + y * (1.0f - s));
}

// One block per (n, c): the sums over HW of dy and dy * xhat.
template <typename T>
__global__ static void group_norm_backward_sums_kernel(float* sum_dy, float* sum_dy_xhat, const T* dout, const T* inp,
                                                       const float* mean, const float* rstd, const T* weight,
                                                       const T* bias, int C, int HW, int G, int silu) {
    size_t nc = blockIdx.x;
    int c = (int)(nc % C);
    size_t ng = nc / C * G + c / (C / G);
    float m = mean[ng], r = rstd[ng];
    float w = weight ? to_f32(weight[c]) : 1.0f, b = bias ? to_f32(bias[c]) : 0.0f;
    const T* x = inp + nc * HW;
    const T* dy = dout + nc * HW;
    float s1 = 0.0f, s2 = 0.0f;
    for (int p = threadIdx.x; p < HW; p += blockDim.x) {
        float xhat = (to_f32(x[p]) - m) * r;
        float d = norm_silu_grad(to_f32(dy[p]), xhat, w, b, silu);
        s1 += d;
        s2 += d * xhat;
    }
    s1 = block_sum(s1);
    s2 = block_sum(s2);
    if (threadIdx.x == 0) {
        sum_dy[nc] = s1;
        sum_dy_xhat[nc] = s2;
    }
}

// One thread per channel: dbias[c] += sum_n sum_dy[n, c], dweight[c] += sum_n sum_dy_xhat[n, c],
// n in order. Also layer norm's reduction of its per-row-block partial sums.
template <typename T>
__global__ static void channel_partials_add_kernel(T* dweight, T* dbias, const float* sum_dy, const float* sum_dy_xhat,
                                                   int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s1 = 0.0f, s2 = 0.0f;
    for (int n = 0; n < N; n++) {
        s1 += sum_dy[(size_t)n * C + c];
        s2 += sum_dy_xhat[(size_t)n * C + c];
    }
    if (dbias) dbias[c] = from_f32<T>(to_f32(dbias[c]) + s1);
    if (dweight) dweight[c] = from_f32<T>(to_f32(dweight[c]) + s2);
}

// One thread per group (n, g): mean(gx) and mean(gx * xhat) over the group, gx = dy * w.
template <typename T>
__global__ static void group_norm_backward_coeffs_kernel(float* coef, const float* sum_dy, const float* sum_dy_xhat,
                                                         const T* weight, int N, int C, int HW, int G) {
    int ng = blockIdx.x * blockDim.x + threadIdx.x;
    if (ng >= N * G) return;
    int n = ng / G, g = ng % G, CG = C / G;
    float a = 0.0f, b = 0.0f;
    for (int cg = 0; cg < CG; cg++) {
        int c = g * CG + cg;
        float w = weight ? to_f32(weight[c]) : 1.0f;
        a += w * sum_dy[(size_t)n * C + c];
        b += w * sum_dy_xhat[(size_t)n * C + c];
    }
    float M = (float)CG * (float)HW;
    coef[2 * ng] = a / M;
    coef[2 * ng + 1] = b / M;
}

// dinp = rstd * (gx - mean(gx) - xhat * mean(gx * xhat)), elementwise, = or +=.
template <typename T>
__global__ static void group_norm_backward_apply_kernel(T* dinp, const T* dout, const T* inp, const float* mean,
                                                        const float* rstd, const float* coef, const T* weight,
                                                        const T* bias, size_t total, int C, int HW, int G, int silu,
                                                        int accumulate) {
    int CG = C / G;
    for (size_t i = grid_start(); i < total; i += grid_stride()) {
        size_t nc = i / HW;
        int c = (int)(nc % C);
        size_t ng = nc / C * G + c / CG;
        float r = rstd[ng];
        float w = weight ? to_f32(weight[c]) : 1.0f, b = bias ? to_f32(bias[c]) : 0.0f;
        float xhat = (to_f32(inp[i]) - mean[ng]) * r;
        float gx = norm_silu_grad(to_f32(dout[i]), xhat, w, b, silu) * w;
        float d = r * (gx - coef[2 * ng] - xhat * coef[2 * ng + 1]);
        dinp[i] = from_f32<T>(accumulate ? to_f32(dinp[i]) + d : d);
    }
}

// One block per row of C values: the two sums, then dinp, = or +=.
template <typename T>
__global__ static void layer_norm_backward_kernel(T* dinp, const T* dout, const T* inp, const float* mean,
                                                  const float* rstd, const T* weight, int C, int accumulate) {
    int row = blockIdx.x;
    const T* x = inp + (size_t)row * C;
    const T* dy = dout + (size_t)row * C;
    T* dx = dinp + (size_t)row * C;
    float m = mean[row], r = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float xhat = (to_f32(x[c]) - m) * r;
        float gx = to_f32(dy[c]) * (weight ? to_f32(weight[c]) : 1.0f);
        s1 += gx;
        s2 += gx * xhat;
    }
    float mean_g = block_sum(s1) / (float)C, mean_g_xhat = block_sum(s2) / (float)C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float xhat = (to_f32(x[c]) - m) * r;
        float gx = to_f32(dy[c]) * (weight ? to_f32(weight[c]) : 1.0f);
        float d = r * (gx - mean_g - xhat * mean_g_xhat);
        dx[c] = from_f32<T>(accumulate ? to_f32(dx[c]) + d : d);
    }
}

// Layer norm's parameter gradients, first stage: block (bx, by) of 32 x 8 threads sums dy and
// dy * xhat over rows by*LN_ROWS_PER_BLOCK .. +LN_ROWS_PER_BLOCK of columns 32bx .. 32bx+31, into
// partial[by, c]; channel_partials_add_kernel then adds the row blocks in order. Two stages
// instead of one block walking all N rows, so thousands of tokens spread over the GPU.
constexpr int LN_ROWS_PER_BLOCK = 256;
template <typename T>
__global__ static void layer_norm_params_partial_kernel(float* partial_dy, float* partial_dy_xhat, const T* dout,
                                                        const T* inp, const float* mean, const float* rstd, int N,
                                                        int C) {
    int c = blockIdx.x * COLUMN_TILE + threadIdx.x;
    int r0 = blockIdx.y * LN_ROWS_PER_BLOCK;
    int r1 = r0 + LN_ROWS_PER_BLOCK < N ? r0 + LN_ROWS_PER_BLOCK : N;
    float s1 = 0.0f, s2 = 0.0f;
    if (c < C)
        for (int r = r0 + threadIdx.y; r < r1; r += COLUMN_ROWS) {
            float d = to_f32(dout[(size_t)r * C + c]);
            float xhat = (to_f32(inp[(size_t)r * C + c]) - mean[r]) * rstd[r];
            s1 += d;
            s2 += d * xhat;
        }
    float t1 = column_tile_total(s1);
    float t2 = column_tile_total(s2);
    if (threadIdx.y == 0 && c < C) {
        partial_dy[(size_t)blockIdx.y * C + c] = t1;
        partial_dy_xhat[(size_t)blockIdx.y * C + c] = t2;
    }
}

// Attention backward, every head at once: one block per row of the scores of a query block of
// `block_rows` queries, heads one after another ([head][row][key], f32, already scaled). The
// softmax over the keys the row's query sees, in place, zeros past them (causal). As
// softmax_forward_kernel.
__global__ static void attention_probs_kernel(float* scores, int keys, int block_rows, int i0, int causal) {
    int row = blockIdx.x;
    float* s = scores + (size_t)row * keys;
    int query = i0 + row % block_rows;
    int visible = causal ? (query + 1 < keys ? query + 1 : keys) : keys;
    float maxval = -INFINITY;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) maxval = fmaxf(maxval, s[j]);
    maxval = block_max(maxval);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) sum += expf(s[j] - maxval);
    float inv = 1.0f / block_sum(sum);
    for (int j = threadIdx.x; j < keys; j += blockDim.x) s[j] = j < visible ? expf(s[j] - maxval) * inv : 0.0f;
}

// D = dO . O for every (head, row) of a query block: d[h * block_rows + r] is the dot product of
// row r's head-h slices (rows of stride ld, heads HS apart). One warp per (head, row).
template <typename T>
__global__ static void attention_row_dot_kernel(float* d, const T* dout_blk, const T* out_blk, int heads,
                                                int block_rows, int HS, size_t ld) {
    int row = blockIdx.x * (blockDim.x / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (row >= heads * block_rows) return; // the whole warp leaves together
    size_t at = (size_t)(row % block_rows) * ld + (size_t)(row / block_rows) * HS;
    int lane = threadIdx.x % WARP_SIZE;
    float sum = 0.0f;
    for (int e = lane; e < HS; e += WARP_SIZE) sum += to_f32(dout_blk[at + e]) * to_f32(out_blk[at + e]);
    sum = warp_sum(sum);
    if (lane == 0) d[row] = sum;
}

// dS = P * (dP - D_row), in place of dP (rows of `keys` values).
__global__ static void attention_dscores_kernel(float* dp, const float* p, const float* d, int keys, size_t total) {
    for (size_t i = grid_start(); i < total; i += grid_stride()) dp[i] = p[i] * (dp[i] - d[i / keys]);
}

// Every head's f32 gradient ([head][L][HS], contiguous) into its strided slice of (L, NH*HS)
// storage: element (h, j, e) goes to row j, column h*HS + e.
template <typename T>
__global__ static void store_heads_kernel(T* dst, const float* acc, int L, int HS, size_t ld, size_t total) {
    size_t per_head = (size_t)L * HS;
    for (size_t i = grid_start(); i < total; i += grid_stride()) {
        size_t h = i / per_head, j = i % per_head / HS, e = i % HS;
        dst[j * ld + h * HS + e] = from_f32<T>(acc[i]);
    }
}

// dinp = dout * silu'(x), term for term as silu_backward_f32
template <typename T> __global__ static void silu_backward_kernel(T* dinp, const T* dout, const T* inp, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) {
        float x = to_f32(inp[i]);
        float s = 1.0f / (1.0f + expf(-x));
        dinp[i] = from_f32<T>(to_f32(dout[i]) * s * (1.0f + x * (1.0f - s)));
    }
}

// gelu'(x) = Phi(x) + x phi(x), as gelu_grad in ops.c
__device__ __forceinline__ static float gelu_grad(float x) {
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752440f));
    float pdf = 0.39894228040143267794f * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

template <typename T> __global__ static void gelu_backward_kernel(T* dinp, const T* dout, const T* inp, size_t n) {
    for (size_t i = grid_start(); i < n; i += grid_stride()) dinp[i] = from_f32<T>(to_f32(dout[i]) * gelu_grad(to_f32(inp[i])));
}

// One thread per (row, c) of dout (N, C): the value's and the gate's gradients.
template <typename T> __global__ static void geglu_backward_kernel(T* dinp, const T* dout, const T* inp, int C, size_t total) {
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        size_t row = idx / C, c = idx % C;
        float value = to_f32(inp[row * 2 * C + c]), gate = to_f32(inp[row * 2 * C + C + c]);
        float dy = to_f32(dout[idx]);
        dinp[row * 2 * C + c] = from_f32<T>(dy * activation<ACT_GELU>(gate));
        dinp[row * 2 * C + C + c] = from_f32<T>(dy * value * gelu_grad(gate));
    }
}

// The destinations [lo, hi) that copy source s under the nearest index rule: the rule is
// nondecreasing in the destination, so they form one run. Starts near s * out / in and walks to
// the run's ends with the rule itself, so it agrees with the forward whatever its rounding does.
__device__ static void nearest_destination_range(int s, int in, int out, int* lo, int* hi) {
    int d = (int)((long long)s * out / in);
    d = d < out - 1 ? d : out - 1;
    while (d > 0 && nearest_source_index(d - 1, in, out) >= s) d--;
    while (d < out && nearest_source_index(d, in, out) < s) d++;
    *lo = d;
    while (d < out && nearest_source_index(d, in, out) == s) d++;
    *hi = d;
}

// One thread per input cell: the sum of dout over the output cells that copied it, in row-major
// order of the output, as the CPU's scatter adds them (so both agree bit for bit).
template <typename T>
__global__ static void upsample_nearest_backward_kernel(T* dinp, const T* dout, size_t total, int H, int W, int H_out,
                                                        int W_out) {
    for (size_t idx = grid_start(); idx < total; idx += grid_stride()) {
        int x = (int)(idx % W), y = (int)((idx / W) % H);
        size_t nc = idx / ((size_t)W * H);
        int y0, y1, x0, x1;
        nearest_destination_range(y, H, H_out, &y0, &y1);
        nearest_destination_range(x, W, W_out, &x0, &x1);
        const T* dout_nc = dout + nc * H_out * W_out;
        float sum = 0.0f;
        for (int oy = y0; oy < y1; oy++)
            for (int ox = x0; ox < x1; ox++) sum += to_f32(dout_nc[(size_t)oy * W_out + ox]);
        dinp[idx] = from_f32<T>(sum);
    }
}

// ---- launchers

// Carves consecutive 256-byte-aligned f32 regions out of one workspace request.
static size_t align_floats(size_t n) { return (n + 63) / 64 * 64; }

extern "C" {

void linear_backward_cuda(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                          const void* weight, int N, int C_in, int C_out, int accumulate, DType dt) {
    if (N <= 0 || C_in < 0 || C_out < 0) return;
    if (C_out == 0) { // nothing flows back: dinp = 0 (cuBLAS refuses k = 0 with ld = 0)
        if (dinp && !accumulate && C_in > 0) cuda_memset_zero(dinp, (size_t)N * C_in * dtype_size(dt));
        return;
    }
    if (dinp && C_in > 0) {
        // dinp (N, C_in) = dout (N, C_out) @ weight (C_out, C_in), all row-major. Column-major,
        // cuBLAS sees dinp as dinp^T (C_in, N) ld C_in, and dinp^T = weight^T @ dout^T: weight
        // stored (C_out, C_in) is column-major weight^T (C_in, C_out) ld C_in, so A = weight with
        // OP_N; dout stored (N, C_out) is column-major dout^T (C_out, N) ld C_out, so B = dout with
        // OP_N; m = C_in, n = N, k = C_out. accumulate: beta = 1 adds into what dinp holds.
        gemm_ex(CUBLAS_OP_N, CUBLAS_OP_N, C_in, N, C_out, 1.0f, weight, C_in, dout, C_out, accumulate ? 1.0f : 0.0f,
                dinp, C_in, dt, "linear_backward");
    }
    if (dweight && C_in > 0) {
        // dweight (C_out, C_in) += dout^T @ inp. Column-major: dweight^T (C_in, C_out) ld C_in
        // = inp^T @ dout, where inp stored (N, C_in) is column-major inp^T (C_in, N) ld C_in: A =
        // inp, OP_N; dout stored (N, C_out) is column-major dout^T (C_out, N) ld C_out, and B must
        // be dout (N, C_out): OP_T. m = C_in, n = C_out, k = N; beta = 1 for +=.
        gemm_ex(CUBLAS_OP_N, CUBLAS_OP_T, C_in, C_out, N, 1.0f, inp, C_in, dout, C_out, 1.0f, dweight, C_in, dt,
                "linear_backward");
    }
    if (dbias) {
        with_storage_type(dt, "linear_backward", [&](auto zero) {
            using T = decltype(zero);
            column_sums_add_kernel<<<(C_out + COLUMN_TILE - 1) / COLUMN_TILE, dim3(COLUMN_TILE, COLUMN_ROWS)>>>(
                (T*)dbias, (const T*)dout, N, C_out);
        });
        CHECK_LAUNCH();
    }
}

void conv2d_backward_cuda(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                          const void* weight, void* scratch, int N, int C_in, int H, int W, int C_out, int K, int stride,
                          int pad, int accumulate, DType dt) {
    int H_out = conv_out_size(H, K, stride, pad), W_out = conv_out_size(W, K, stride, pad);
    if (N <= 0 || C_in < 0 || C_out < 0) return;
    if (C_out == 0 || H_out <= 0 || W_out <= 0) { // no outputs: nothing flows back, dinp = 0
        if (dinp && !accumulate && C_in > 0 && H > 0 && W > 0)
            cuda_memset_zero(dinp, (size_t)N * C_in * H * W * dtype_size(dt));
        return;
    }
    int P = H_out * W_out; // output pixels per image
    int CKK = C_in * K * K;
    int pointwise = K == 1 && stride == 1 && pad == 0; // as conv_is_pointwise in ops.c
    int low = dt != DT_F32; // 16-bit storage: the sums over several GEMMs are kept in f32
    if (!pointwise && !scratch && (dinp || dweight))
        fatal("conv2d_backward: scratch is NULL, but a %dx%d conv needs conv2d_scratch_elems() elements", K, K);
    size_t es = dtype_size(dt);
    cudaDataType_t t = cublas_type(dt, "conv2d_backward");
    const float one = 1.0f, zero_f = 0.0f;

    if (dbias) {
        with_storage_type(dt, "conv2d_backward", [&](auto zero) {
            using T = decltype(zero);
            channel_sums_add_kernel<<<C_out, BACKWARD_BLOCK>>>((T*)dbias, (const T*)dout, N, C_out, P);
        });
        CHECK_LAUNCH();
    }
    if (!dinp && !dweight) return;
    if (C_in == 0) return; // no input channels: no input or weight gradient to write

    // f32 workspace: dweight's running sum (16-bit storage), dcol of a chunk and the image's dinp
    // (general convs; dcol lives in scratch for f32 storage, which holds f32 then)
    int chunk = P < CONV_CHUNK ? P : CONV_CHUNK;
    size_t n_dw = dweight && low ? align_floats((size_t)C_out * CKK) : 0;
    size_t n_dcol = dinp && !pointwise && low ? align_floats((size_t)CKK * chunk) : 0;
    size_t n_dinp = dinp && !pointwise && low ? align_floats((size_t)C_in * H * W) : 0;
    float* ws = (float*)cuda_workspace(sizeof(float) * (n_dw + n_dcol + n_dinp + 64));
    // dweight's sum: in place for f32, else in f32 starting from dweight's values
    float* dw_acc = low ? ws : (float*)dweight;
    float* dcol = low ? ws + n_dw : (float*)scratch;
    float* dinp_acc = ws + n_dw + n_dcol;
    cudaDataType_t acc_t = CUDA_R_32F;
    if (dweight && low) cast_forward_cuda(dw_acc, DT_F32, dweight, dt, (size_t)C_out * CKK);

    if (pointwise) {
        if (dinp) {
            // dinp_n (C_in, P) = weight^T @ dout_n (C_out, P), row-major, for every image n.
            // Column-major: dinp_n^T (P, C_in) ld P = dout_n^T @ weight, where dout_n stored
            // (C_out, P) is column-major dout_n^T (P, C_out) ld P: A = dout, OP_N; weight stored
            // (C_out, C_in) is column-major weight^T (C_in, C_out) ld C_in, and B must be weight:
            // OP_T. m = P, n = C_in, k = C_out; one strided batch over the images, the weight's
            // stride 0. One rounding per output (beta = 1 adds what dinp holds with accumulate).
            float beta = accumulate ? 1.0f : 0.0f;
            CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_T, P, C_in, C_out, &one, dout,
                                                    t, P, (long long)C_out * P, weight, t, C_in, 0, &beta, dinp, t, P,
                                                    (long long)C_in * P, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
        if (dweight) {
            for (int n = 0; n < N; n++) {
                const char* inp_n = (const char*)inp + (size_t)n * C_in * P * es;
                const char* dout_n = (const char*)dout + (size_t)n * C_out * P * es;
                // dweight (C_out, C_in) += dout_n (C_out, P) @ inp_n^T (P, C_in). Column-major:
                // dweight^T (C_in, C_out) ld C_in = inp_n @ dout_n^T; inp_n stored (C_in, P) is
                // column-major inp_n^T (P, C_in) ld P, so A = inp_n with OP_T; dout_n stored
                // (C_out, P) is column-major dout_n^T (P, C_out) ld P: B = dout_n, OP_N.
                // m = C_in, n = C_out, k = P; the sum over images stays in dw_acc (f32 when low).
                CUBLAS_CHECK(cublasGemmEx(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, C_in, C_out, P, &one, inp_n, t, P,
                                          dout_n, t, P, &one, dw_acc, low ? acc_t : t, C_in, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT));
            }
            if (low) cast_forward_cuda(dweight, dt, dw_acc, DT_F32, (size_t)C_out * CKK);
        }
        return;
    }

    // without accumulate, col2im adds into zeros
    if (dinp && !accumulate && !low) cuda_memset_zero(dinp, sizeof(float) * (size_t)N * C_in * H * W);
    with_storage_type(dt, "conv2d_backward", [&](auto zero) {
        using T = decltype(zero);
        for (int n = 0; n < N; n++) {
            const T* inp_n = (const T*)inp + (size_t)n * C_in * H * W;
            const T* dout_n = (const T*)dout + (size_t)n * C_out * P;
            T* dinp_n = dinp ? (T*)dinp + (size_t)n * C_in * H * W : NULL;
            // the image's dinp in f32: dinp itself for f32 storage, else the workspace copy
            float* acc_n = low ? dinp_acc : (float*)dinp_n;
            if (dinp && low) {
                if (accumulate) cast_forward_cuda(acc_n, DT_F32, dinp_n, dt, (size_t)C_in * H * W);
                else cuda_memset_zero(acc_n, sizeof(float) * (size_t)C_in * H * W);
            }
            for (int p0 = 0; p0 < P; p0 += CONV_CHUNK) {
                int cols = P - p0 < CONV_CHUNK ? P - p0 : CONV_CHUNK;
                if (dweight) {
                    size_t col_n = (size_t)CKK * cols;
                    im2col_kernel<<<elementwise_grid(col_n), ELEMENTWISE_BLOCK>>>((T*)scratch, inp_n, C_in, H, W, K,
                                                                                 stride, pad, W_out, p0, cols);
                    CHECK_LAUNCH();
                    // dweight (C_out, CKK) += dout chunk (C_out, cols; row stride P) @ col^T,
                    // col = im2col (CKK, cols). Column-major: dweight^T (CKK, C_out) ld CKK = col @
                    // dout_chunk^T; col stored (CKK, cols) is column-major col^T (cols, CKK) ld
                    // cols, so A = scratch with OP_T; the chunk of dout is column-major
                    // dout_chunk^T (cols, C_out) ld P: B = dout_n + p0, OP_N. m = CKK, n = C_out,
                    // k = cols, beta = 1.
                    CUBLAS_CHECK(cublasGemmEx(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, CKK, C_out, cols, &one, scratch,
                                              t, cols, dout_n + p0, t, P, &one, dw_acc, low ? acc_t : t, CKK,
                                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
                }
                if (dinp) {
                    // dcol (CKK, cols) = weight^T (CKK, C_out) @ dout chunk (C_out, cols), f32.
                    // Column-major: dcol^T (cols, CKK) ld cols = dout_chunk^T @ weight; the chunk
                    // is column-major dout_chunk^T (cols, C_out) ld P: A = dout_n + p0, OP_N;
                    // weight stored (C_out, CKK) is column-major weight^T (CKK, C_out) ld CKK, and
                    // B must be weight: OP_T. m = cols, n = CKK, k = C_out.
                    CUBLAS_CHECK(cublasGemmEx(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_T, cols, CKK, C_out, &one,
                                              dout_n + p0, t, P, weight, t, CKK, &zero_f, dcol, acc_t, cols,
                                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
                    size_t n_inp = (size_t)C_in * H * W;
                    col2im_add_kernel<<<elementwise_grid(n_inp), ELEMENTWISE_BLOCK>>>(acc_n, dcol, C_in, H, W, K, stride,
                                                                                     pad, H_out, W_out, p0, cols);
                    CHECK_LAUNCH();
                }
            }
            if (dinp && low) cast_forward_cuda(dinp_n, dt, acc_n, DT_F32, (size_t)C_in * H * W);
        }
    });
    if (dweight && low) cast_forward_cuda(dweight, dt, dw_acc, DT_F32, (size_t)C_out * CKK);
}

void group_norm_backward_cuda(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                              const float* mean, const float* rstd, const void* weight, const void* bias, int N, int C,
                              int HW, int G, int silu, int accumulate, DType dt) {
    if (N <= 0 || C <= 0 || G <= 0 || HW <= 0) return;
    if (!dinp && !dweight && !dbias) return;
    size_t n_nc = align_floats((size_t)N * C);
    float* ws = (float*)cuda_workspace(sizeof(float) * (2 * n_nc + align_floats(2 * (size_t)N * G)));
    float *sum_dy = ws, *sum_dy_xhat = ws + n_nc, *coef = ws + 2 * n_nc;
    size_t total = (size_t)N * C * HW;
    with_storage_type(dt, "group_norm_backward", [&](auto zero) {
        using T = decltype(zero);
        group_norm_backward_sums_kernel<<<N * C, BACKWARD_BLOCK>>>(sum_dy, sum_dy_xhat, (const T*)dout, (const T*)inp, mean,
                                                                   rstd, (const T*)weight, (const T*)bias, C, HW, G, silu);
        CHECK_LAUNCH();
        if (dweight || dbias) {
            channel_partials_add_kernel<<<(C + 127) / 128, 128>>>((T*)dweight, (T*)dbias, sum_dy, sum_dy_xhat, N, C);
            CHECK_LAUNCH();
        }
        if (dinp) {
            group_norm_backward_coeffs_kernel<<<(N * G + 127) / 128, 128>>>(coef, sum_dy, sum_dy_xhat, (const T*)weight, N,
                                                                            C, HW, G);
            CHECK_LAUNCH();
            group_norm_backward_apply_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>(
                (T*)dinp, (const T*)dout, (const T*)inp, mean, rstd, coef, (const T*)weight, (const T*)bias, total, C, HW,
                G, silu, accumulate);
            CHECK_LAUNCH();
        }
    });
}

void layer_norm_backward_cuda(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                              const float* mean, const float* rstd, const void* weight, int N, int C, int accumulate,
                              DType dt) {
    if (N <= 0 || C <= 0) return;
    with_storage_type(dt, "layer_norm_backward", [&](auto zero) {
        using T = decltype(zero);
        if (dinp) {
            layer_norm_backward_kernel<<<N, ROW_BLOCK>>>((T*)dinp, (const T*)dout, (const T*)inp, mean, rstd,
                                                         (const T*)weight, C, accumulate);
            CHECK_LAUNCH();
        }
        if (dweight || dbias) {
            int row_blocks = (N + LN_ROWS_PER_BLOCK - 1) / LN_ROWS_PER_BLOCK;
            size_t n_part = align_floats((size_t)row_blocks * C);
            float* ws = (float*)cuda_workspace(sizeof(float) * 2 * n_part);
            dim3 grid((unsigned int)((C + COLUMN_TILE - 1) / COLUMN_TILE), (unsigned int)row_blocks);
            layer_norm_params_partial_kernel<<<grid, dim3(COLUMN_TILE, COLUMN_ROWS)>>>(ws, ws + n_part, (const T*)dout,
                                                                                       (const T*)inp, mean, rstd, N, C);
            CHECK_LAUNCH();
            channel_partials_add_kernel<<<(C + 127) / 128, 128>>>((T*)dweight, (T*)dbias, ws, ws + n_part, row_blocks, C);
            CHECK_LAUNCH();
        }
    });
}

} // extern "C"

// The attention backward runs every head of a query block at once: each product is one
// strided-batched GEMM over the heads (a head's slice of a (L, NH*HS) row starts HS elements after
// the previous head's, so the batch stride is HS and the leading dimension NH*HS), and each row
// kernel covers all heads' rows. A head-by-head loop would make ~9 launches per head and query
// block: SDXL's 1024-px UNet has 140 attentions of 10 or 20 heads, tens of thousands of launches
// of small GEMMs per backward. Scores for all heads of a block, f32: 128 MiB, so at 1024 px the
// 20-head level (1024 tokens) takes all its queries in one block and the 10-head level (4096)
// six blocks of 683. The backward holds three such buffers: P, dP and a 16-bit copy.
constexpr size_t ATTENTION_BACKWARD_SCORES = 1 << 25;
constexpr int ATTENTION_ROW_DOT_WARPS = 4;

extern "C" {

void attention_backward_cuda(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                             const void* v, const void* out, int N, int NH, int Lq, int Lk, int HS, int causal,
                             DType dt) {
    if (HS > ATTENTION_MAX_HS) fatal("attention_backward: head size %d is above the limit %d", HS, ATTENTION_MAX_HS);
    if (causal && Lq != Lk) fatal("attention_backward: a causal mask needs Lq == Lk (got %d, %d)", Lq, Lk);
    if (N <= 0 || NH <= 0 || HS <= 0) return;
    size_t es = dtype_size(dt), D = (size_t)NH * HS;
    if (Lk <= 0) { // no keys: the output is 0 whatever the queries, dq = 0
        if (dq && Lq > 0) cuda_memset_zero(dq, (size_t)N * Lq * D * es);
        return;
    }
    if (Lq <= 0) { // no queries: nothing reaches the keys and values
        if (dk) cuda_memset_zero(dk, (size_t)N * Lk * D * es);
        if (dv) cuda_memset_zero(dv, (size_t)N * Lk * D * es);
        return;
    }
    const float scale = 1.0f / sqrtf((float)HS), one = 1.0f, zero_f = 0.0f;
    int low = dt != DT_F32;
    // the most queries a block may hold, then blocks of equal size (4096 queries in six blocks of
    // 683, not five of 819 and one of 1)
    int block = (int)(ATTENTION_BACKWARD_SCORES / ((size_t)NH * Lk));
    block = block < 1 ? 1 : block > Lq ? Lq : block;
    int n_blocks = (Lq + block - 1) / block;
    block = (Lq + n_blocks - 1) / n_blocks;
    size_t n_scores = align_floats((size_t)NH * block * Lk);
    // f32 workspace: P, dP (then dS), a 16-bit copy of P (then of dS), D, every head's dK and dV
    // sums ([head][Lk][HS] each) and the block's dQ ([head][bq][HS])
    size_t n_low = low ? align_floats((n_scores * es + 3) / 4) : 0;
    size_t n_acc = (size_t)NH * Lk * HS;
    size_t n_heads = align_floats(n_acc);
    size_t n_dq = align_floats((size_t)NH * block * HS);
    float* ws = (float*)cuda_workspace(sizeof(float) * (2 * n_scores + n_low + align_floats((size_t)NH * block) +
                                                        2 * n_heads + n_dq));
    float *probs = ws, *dprobs = ws + n_scores;
    void* probs_low = ws + 2 * n_scores;
    float* row_dot = ws + 2 * n_scores + n_low;
    float* dk_acc = row_dot + align_floats((size_t)NH * block);
    float* dv_acc = dk_acc + n_heads;
    float* dq_blk_acc = dv_acc + n_heads;
    cudaDataType_t t = cublas_type(dt, "attention_backward");
    const int ld = (int)D;
    // batch strides, in elements: heads in the inputs (HS apart within a row), in the scores (one
    // (bq, keys) block each; set per query block) and in the sums (Lk x HS each)
    const long long head_stride = HS, acc_stride = (long long)Lk * HS;
    for (int n = 0; n < N; n++) {
        const char* k_n = (const char*)k + (size_t)n * Lk * D * es;
        const char* v_n = (const char*)v + (size_t)n * Lk * D * es;
        if (dk) cuda_memset_zero(dk_acc, sizeof(float) * n_acc);
        if (dv) cuda_memset_zero(dv_acc, sizeof(float) * n_acc);
        for (int i0 = 0; i0 < Lq; i0 += block) {
            int bq = Lq - i0 < block ? Lq - i0 : block;
            int keys = causal ? i0 + bq : Lk; // the keys any query of the block sees
            long long scores_stride = (long long)bq * keys;
            size_t n_block = (size_t)NH * bq * keys;
            size_t row0 = ((size_t)n * Lq + i0) * D * es;
            const char *q_blk = (const char*)q + row0, *o_blk = (const char*)out + row0;
            const char* do_blk = (const char*)dout + row0;
            // For each head h: S_h (bq, keys) row-major = scale * Q_blk,h K_h^T, f32, as
            // attention_by_gemm. cuBLAS sees S_h^T (keys x bq, ld keys) = K_h Q_blk,h^T: K_h's
            // rows (ld D) are column-major K_h^T, so A = K_h with OP_T; Q_blk,h's rows likewise
            // are column-major Q_blk,h^T: B, OP_N. m = keys, n = bq, k = HS.
            CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, keys, bq, HS, &scale, k_n,
                                                    t, ld, head_stride, q_blk, t, ld, head_stride, &zero_f, probs,
                                                    CUDA_R_32F, keys, scores_stride, NH, CUBLAS_COMPUTE_32F,
                                                    CUBLAS_GEMM_DEFAULT));
            attention_probs_kernel<<<NH * bq, ROW_BLOCK>>>(probs, keys, bq, i0, causal);
            CHECK_LAUNCH();
            // the products take P in dt (cuBLAS needs A and B of one type): rounded for 16 bits
            const void* p_dt = probs;
            if (low) {
                cast_forward_cuda(probs_low, dt, probs, DT_F32, n_block);
                p_dt = probs_low;
            }
            if (dv) {
                // dV_h (keys, HS) += P_h^T (keys, bq) @ dO_blk,h (bq, HS), into dv_acc (f32, ld HS).
                // Column-major: dV_h^T (HS, keys) = dO_blk,h^T @ P_h; dO_blk,h's rows (ld D) are
                // column-major dO_blk,h^T (HS, bq): A, OP_N; P_h stored (bq, keys) is column-major
                // P_h^T (keys, bq) ld keys, and B must be P_h: OP_T. m = HS, n = keys, k = bq.
                CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_T, HS, keys, bq, &one,
                                                        do_blk, t, ld, head_stride, p_dt, t, keys, scores_stride, &one,
                                                        dv_acc, CUDA_R_32F, HS, acc_stride, NH, CUBLAS_COMPUTE_32F,
                                                        CUBLAS_GEMM_DEFAULT));
            }
            if (!dq && !dk) continue;
            // dP_h (bq, keys) = dO_blk,h @ V_h^T, f32: cuBLAS sees dP_h^T (keys, bq) = V_h
            // dO_blk,h^T; V_h's rows are column-major V_h^T (HS, keys) ld D, so A = V_h with OP_T;
            // dO_blk,h's rows are column-major dO_blk,h^T (HS, bq): B, OP_N. m = keys, n = bq, k = HS.
            CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, keys, bq, HS, &one, v_n,
                                                    t, ld, head_stride, do_blk, t, ld, head_stride, &zero_f, dprobs,
                                                    CUDA_R_32F, keys, scores_stride, NH, CUBLAS_COMPUTE_32F,
                                                    CUBLAS_GEMM_DEFAULT));
            // dS = P * (dP - D), D = dO . O per (head, query) (masked keys: P = 0, so dS = 0); the
            // scores' rows and D are both in [head][row] order, so dS's row i / keys reads D[i / keys]
            with_storage_type(dt, "attention_backward", [&](auto zero) {
                using T = decltype(zero);
                int per_block = ATTENTION_ROW_DOT_WARPS, rows = NH * bq;
                attention_row_dot_kernel<<<(rows + per_block - 1) / per_block, per_block * WARP_SIZE>>>(
                    row_dot, (const T*)do_blk, (const T*)o_blk, NH, bq, HS, D);
            });
            CHECK_LAUNCH();
            attention_dscores_kernel<<<elementwise_grid(n_block), ELEMENTWISE_BLOCK>>>(dprobs, probs, row_dot, keys,
                                                                                      n_block);
            CHECK_LAUNCH();
            const void* ds_dt = dprobs;
            if (low) { // P's copy is no longer needed: the dV product was queued before this
                cast_forward_cuda(probs_low, dt, dprobs, DT_F32, n_block);
                ds_dt = probs_low;
            }
            if (dq) {
                // dQ_blk,h (bq, HS) = scale * dS_h (bq, keys) @ K_h (keys, HS), into dq_blk_acc
                // (f32, [head][bq][HS]: each head's output contiguous, not interleaved with the
                // others' within rows, which cuBLAS does not promise to handle), then rounded once
                // into the heads' slices of dq's rows.
                // Column-major: dQ_blk,h^T (HS, bq) = K_h^T dS_h^T; K_h's rows are column-major
                // K_h^T (HS, keys) ld D: A, OP_N; dS_h stored (bq, keys) is column-major dS_h^T
                // (keys, bq) ld keys: B, OP_N. m = HS, n = bq, k = keys.
                CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, HS, bq, keys, &scale,
                                                        k_n, t, ld, head_stride, ds_dt, t, keys, scores_stride, &zero_f,
                                                        dq_blk_acc, CUDA_R_32F, HS, (long long)bq * HS, NH,
                                                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
                size_t n_dq_blk = (size_t)NH * bq * HS;
                with_storage_type(dt, "attention_backward", [&](auto zero) {
                    using T = decltype(zero);
                    store_heads_kernel<<<elementwise_grid(n_dq_blk), ELEMENTWISE_BLOCK>>>((T*)((char*)dq + row0),
                                                                                         dq_blk_acc, bq, HS, D, n_dq_blk);
                });
                CHECK_LAUNCH();
            }
            if (dk) {
                // dK_h (keys, HS) += scale * dS_h^T (keys, bq) @ Q_blk,h (bq, HS), into dk_acc (f32).
                // Column-major: dK_h^T (HS, keys) = Q_blk,h^T dS_h; Q_blk,h's rows are column-major
                // Q_blk,h^T (HS, bq) ld D: A, OP_N; dS_h must be B (bq, keys), stored column-major
                // as dS_h^T: OP_T, ld keys. m = HS, n = keys, k = bq.
                CUBLAS_CHECK(cublasGemmStridedBatchedEx(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_T, HS, keys, bq, &scale,
                                                        q_blk, t, ld, head_stride, ds_dt, t, keys, scores_stride, &one,
                                                        dk_acc, CUDA_R_32F, HS, acc_stride, NH, CUBLAS_COMPUTE_32F,
                                                        CUBLAS_GEMM_DEFAULT));
            }
        }
        // every head's sums, rounded once, into their strided slices of dk and dv
        with_storage_type(dt, "attention_backward", [&](auto zero) {
            using T = decltype(zero);
            size_t rows0 = (size_t)n * Lk * D;
            if (dk) store_heads_kernel<<<elementwise_grid(n_acc), ELEMENTWISE_BLOCK>>>((T*)dk + rows0, dk_acc, Lk, HS, D, n_acc);
            CHECK_LAUNCH();
            if (dv) store_heads_kernel<<<elementwise_grid(n_acc), ELEMENTWISE_BLOCK>>>((T*)dv + rows0, dv_acc, Lk, HS, D, n_acc);
            CHECK_LAUNCH();
        });
    }
}

void silu_backward_cuda(void* dinp, const void* dout, const void* inp, size_t n, DType dt) {
    if (n == 0) return;
    with_storage_type(dt, "silu_backward", [&](auto zero) {
        using T = decltype(zero);
        silu_backward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>((T*)dinp, (const T*)dout, (const T*)inp, n);
    });
    CHECK_LAUNCH();
}

void gelu_backward_cuda(void* dinp, const void* dout, const void* inp, size_t n, DType dt) {
    if (n == 0) return;
    with_storage_type(dt, "gelu_backward", [&](auto zero) {
        using T = decltype(zero);
        gelu_backward_kernel<<<elementwise_grid(n), ELEMENTWISE_BLOCK>>>((T*)dinp, (const T*)dout, (const T*)inp, n);
    });
    CHECK_LAUNCH();
}

void geglu_backward_cuda(void* dinp, const void* dout, const void* inp, int N, int C, DType dt) {
    size_t total = (size_t)(N > 0 ? N : 0) * (size_t)(C > 0 ? C : 0);
    if (total == 0) return;
    with_storage_type(dt, "geglu_backward", [&](auto zero) {
        using T = decltype(zero);
        geglu_backward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>((T*)dinp, (const T*)dout, (const T*)inp, C,
                                                                              total);
    });
    CHECK_LAUNCH();
}

void upsample_nearest_backward_cuda(void* dinp, const void* dout, int N, int C, int H, int W, int H_out, int W_out,
                                    DType dt) {
    if (N <= 0 || C <= 0 || H <= 0 || W <= 0) return;
    size_t total = (size_t)N * C * H * W;
    if (H_out <= 0 || W_out <= 0) { // nothing was copied: every gradient is 0
        cuda_memset_zero(dinp, total * dtype_size(dt));
        return;
    }
    with_storage_type(dt, "upsample_nearest_backward", [&](auto zero) {
        using T = decltype(zero);
        upsample_nearest_backward_kernel<<<elementwise_grid(total), ELEMENTWISE_BLOCK>>>((T*)dinp, (const T*)dout, total,
                                                                                         H, W, H_out, W_out);
    });
    CHECK_LAUNCH();
}

} // extern "C"
