// ops.h: the contract of every operation the networks are built from.
//
// Each op is stated once here: shapes in PyTorch order, memory layout, whether the output is
// overwritten (=) or accumulated into (+=), and which pointers may alias. Every op has
//   - `<op>_cpu`  in ops.c: plain C, the specification, what `make test` checks against PyTorch;
//   - `<op>_cuda` in kernels.cu: the same signature and the same contract, for NVIDIA GPUs;
//   - `<op>`      in ops.c: the dispatcher that model code calls. It runs the op on the current
//                 backend (backend_select), so one model file serves both.
// All pointers an op receives live in the current backend's memory (host memory for the CPU
// backend, device memory for CUDA); use device_malloc/copy_to_device to get them there.
//
// Dimension letters used throughout: N batch, C channels, H W height and width, HW = H*W,
// L tokens, NH attention heads, HS head size, D width of a token vector, G groups.
// Ops that a trainer needs to differentiate save what their backward will need (for example the
// mean and rstd of the norms) so backward functions can be added beside them.
//
// Precision. Every op that works on activations takes `dt`, the storage type of all its tensor
// arguments, activations and parameters alike: DT_F32, DT_F16 or DT_BF16 (the fast GPU path keeps
// the UNet in f16). Pointers are `void*` for that reason. Whatever dt is, the arithmetic is f32:
// values are widened as they are read and each output is rounded to dt once, as it is written.
// The CPU version of a 16-bit op is exactly that and nothing else: it widens its inputs to f32
// copies, runs the f32 reference, and rounds the result (ops.c, "16-bit storage on the CPU"), so
// the f32 code is the one specification and a 16-bit CPU result is bit for bit the rounded f32
// result (tests/test_ops.c checks this for every op). A CUDA kernel keeps 16-bit data in 16 bits
// and accumulates in f32; where it rounds an intermediate to dt as well (a GEMM's product before
// a residual joins it), the op's comment says so, and the CUDA-against-CPU tests allow a few
// units in the last place of dt. Saved statistics (mean, rstd), timesteps, scalars and the
// sampler's latents (axpby, randn) are always f32.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

// ----------------------------------------------------------------------------
// Backends and their memory

typedef enum { BACKEND_CPU = 0, BACKEND_CUDA = 1 } Backend;

int cuda_built(void);         // 1 when compiled with `make CUDA=1`
int cuda_device_count(void);  // CUDA devices the runtime can see (0 without a CUDA build)
void backend_select(Backend b); // fatal one-line error when CUDA is asked for but not usable
Backend backend_current(void);
const char* backend_name(Backend b);

// Memory on the current backend: device memory for CUDA, 256-byte-aligned host memory for CPU.
// device_malloc is fatal (one line with the size) when the memory is not there; device_try_malloc
// returns NULL instead, for callers that name what they were allocating (arena_init).
void* device_malloc(size_t bytes);
void* device_try_malloc(size_t bytes);
void device_free(void* p);
void device_memset_zero(void* p, size_t bytes);
void copy_to_device(void* dst, const void* src_host, size_t bytes);
void copy_to_host(void* dst_host, const void* src, size_t bytes);
void copy_device_to_device(void* dst, const void* src, size_t bytes); // regions must not overlap
void device_synchronize(void);

// Device memory, for benchmarks (CUDA backend; all 0 on the CPU): what this program holds through
// device_malloc and the CUDA ops' own scratch, now and at most since the last reset; and what the
// device reports in use (cudaMemGetInfo), which adds the CUDA context and cuBLAS's workspace.
size_t device_memory_held(void);
size_t device_memory_peak(void);
void device_memory_peak_reset(void);
size_t device_memory_in_use_on_device(void);

// Aligned host memory (for the CPU backend's allocations and the GEMM's packing buffers); the
// _try_ form returns NULL instead of exiting.
void* aligned_host_malloc(size_t bytes);
void* aligned_host_try_malloc(size_t bytes);
void aligned_host_free(void* p);

// ----------------------------------------------------------------------------
// Matrix products

// matmul_forward: batched row-major matrix product, as torch.baddbmm(out, op(a), op(b), beta=beta,
// alpha=alpha) with op(x) = x or x.transpose(-1,-2).
//   a   (batch, M, K), or (batch, K, M) when trans_a
//   b   (batch, K, N), or (batch, N, K) when trans_b
//   out (batch, M, N) = alpha * op(a) @ op(b) + beta * out. With beta == 0, out is not read
//   (it may hold anything, even NaN): the op is `=`; with beta == 1 it is `+=`.
//   out must not alias a or b.
//   16-bit on CUDA: one rounding of alpha*op(a)@op(b) + beta*out (cuBLAS, f32 compute).
void matmul_forward(void* out, const void* a, const void* b, int batch, int M, int N, int K, int trans_a, int trans_b,
                    float alpha, float beta, DType dt);
void matmul_forward_cpu(void* out, const void* a, const void* b, int batch, int M, int N, int K, int trans_a,
                        int trans_b, float alpha, float beta, DType dt);
void matmul_forward_cuda(void* out, const void* a, const void* b, int batch, int M, int N, int K, int trans_a,
                         int trans_b, float alpha, float beta, DType dt);

// linear_forward: torch.nn.functional.linear, optionally added to what out holds.
//   inp (N, C_in)   weight (C_out, C_in) as PyTorch stores it   bias (C_out) or NULL
//   out (N, C_out) = inp @ weight^T + bias            (=)  when accumulate is 0
//   out (N, C_out) = out + (inp @ weight^T + bias)    (+=) when accumulate is 1: a residual
//   connection (`x = x + proj(h)`) without a separate add. The CPU rounds the product + bias
//   before adding it to out, as the separate add would. out must not alias inp.
//   16-bit on CUDA: the bias (and with accumulate, out + bias) is formed first, rounded to dt,
//   and the GEMM adds its product to that with one more rounding (cuBLAS's beta = 1).
void linear_forward(void* out, const void* inp, const void* weight, const void* bias, int N, int C_in, int C_out,
                    int accumulate, DType dt);
void linear_forward_cpu(void* out, const void* inp, const void* weight, const void* bias, int N, int C_in, int C_out,
                        int accumulate, DType dt);
void linear_forward_cuda(void* out, const void* inp, const void* weight, const void* bias, int N, int C_in, int C_out,
                         int accumulate, DType dt);

// The CPU GEMM under matmul/linear/conv (gemm.c), BLAS-style row-major with leading dimensions:
//   c (M x N, ldc) = alpha * op(a) @ op(b) + beta * c; beta == 0 means c is not read.
// sgemm_naive_cpu is the one-dot-product-per-element specification it is tested against.
void sgemm_cpu(int trans_a, int trans_b, int M, int N, int K, float alpha, const float* a, long lda, const float* b,
               long ldb, float beta, float* c, long ldc);
void sgemm_naive_cpu(int trans_a, int trans_b, int M, int N, int K, float alpha, const float* a, long lda,
                     const float* b, long ldb, float beta, float* c, long ldc);

// ----------------------------------------------------------------------------
// Convolution and spatial ops (NCHW)

// conv2d_forward: torch.nn.functional.conv2d with groups=1, dilation=1, a square kernel and the
// same zero padding on all four sides, optionally added to what out holds.
//   inp    (N, C_in, H, W)        weight (C_out, C_in, K, K)        bias (C_out) or NULL
//   out    (N, C_out, H_out, W_out) with H_out = (H + 2*pad - K) / stride + 1 (same for W):
//          = conv(inp) + bias, or with accumulate out + (conv(inp) + bias), as linear_forward.
//   scratch: conv2d_scratch_elems(...) elements of dt on the backend (NULL when that is 0).
//   Both backends use it as an im2col buffer for at most CONV_CHUNK output pixels at a time.
//   out must not alias inp or scratch. 16-bit on CUDA: rounds as linear_forward does.
#define CONV_CHUNK 4096 // output pixels per im2col chunk: bounds scratch at C_in*K*K*4096 elements
size_t conv2d_scratch_elems(int C_in, int H, int W, int K, int stride, int pad);
void conv2d_forward(void* out, const void* inp, const void* weight, const void* bias, void* scratch, int N, int C_in,
                    int H, int W, int C_out, int K, int stride, int pad, int accumulate, DType dt);
void conv2d_forward_cpu(void* out, const void* inp, const void* weight, const void* bias, void* scratch, int N,
                        int C_in, int H, int W, int C_out, int K, int stride, int pad, int accumulate, DType dt);
void conv2d_forward_cuda(void* out, const void* inp, const void* weight, const void* bias, void* scratch, int N,
                         int C_in, int H, int W, int C_out, int K, int stride, int pad, int accumulate, DType dt);

// pad2d_forward: torch.nn.functional.pad(inp, (left, right, top, bottom)) with zeros.
//   inp (N, C, H, W)   out (N, C, H + top + bottom, W + left + right)   (=). No aliasing.
void pad2d_forward(void* out, const void* inp, int N, int C, int H, int W, int top, int bottom, int left, int right,
                   DType dt);
void pad2d_forward_cpu(void* out, const void* inp, int N, int C, int H, int W, int top, int bottom, int left, int right,
                       DType dt);
void pad2d_forward_cuda(void* out, const void* inp, int N, int C, int H, int W, int top, int bottom, int left, int right,
                        DType dt);

// upsample_nearest_forward: torch.nn.functional.interpolate(inp, size=(H_out, W_out),
// mode="nearest"), including its legacy index rule: src = dst >> 1 when out == 2*in, otherwise
// src = min(floor(dst * (float)in / (float)out), in - 1) computed in f32. The UNet needs the
// general sizes for latents that are not multiples of 4 (e.g. 85 -> 170 after 43 -> 85).
//   inp (N, C, H, W)   out (N, C, H_out, W_out)   (=). No aliasing.
void upsample_nearest_forward(void* out, const void* inp, int N, int C, int H, int W, int H_out, int W_out, DType dt);
void upsample_nearest_forward_cpu(void* out, const void* inp, int N, int C, int H, int W, int H_out, int W_out,
                                  DType dt);
void upsample_nearest_forward_cuda(void* out, const void* inp, int N, int C, int H, int W, int H_out, int W_out,
                                   DType dt);

// maxpool2d_forward: torch.nn.functional.max_pool2d(inp, K, stride, pad) (padding counts as -inf,
// floor mode). YOLOv8's SPPF uses K=5, stride 1, pad 2.
//   inp (N, C, H, W)   out (N, C, H_out, W_out), H_out = (H + 2*pad - K) / stride + 1   (=)
void maxpool2d_forward(void* out, const void* inp, int N, int C, int H, int W, int K, int stride, int pad, DType dt);
void maxpool2d_forward_cpu(void* out, const void* inp, int N, int C, int H, int W, int K, int stride, int pad, DType dt);
void maxpool2d_forward_cuda(void* out, const void* inp, int N, int C, int H, int W, int K, int stride, int pad,
                            DType dt);

// ----------------------------------------------------------------------------
// Normalisation and softmax. Both backends use the two-pass formula: mean = sum(x)/n, then
// var = sum((x-mean)^2)/n (biased, as PyTorch), rstd = 1/sqrtf(var + eps). The CPU reference
// accumulates the sums in double (the most exact cheap answer); CUDA uses f32 block reductions.

// group_norm_forward: torch.nn.functional.group_norm(inp, G, weight, bias, eps), followed by SiLU
// when silu is 1 (every ResNet block normalises then applies SiLU: one pass instead of two; the
// CPU applies silu_forward's formula to the f32 normalised value, with no rounding between).
//   inp (N, C, HW), C divisible by G        weight, bias (C) or NULL (no affine)
//   out (N, C, HW) (=, may alias inp)       mean, rstd (N, G) f32, saved for backward, or NULL
void group_norm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                        int N, int C, int HW, int G, float eps, int silu, DType dt);
void group_norm_forward_cpu(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                            int N, int C, int HW, int G, float eps, int silu, DType dt);
void group_norm_forward_cuda(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                             int N, int C, int HW, int G, float eps, int silu, DType dt);

// layer_norm_forward: torch.nn.functional.layer_norm over the last dimension.
//   inp (N, C)   weight, bias (C) or NULL   out (N, C) (=, may alias inp)   mean, rstd (N) f32 or NULL
void layer_norm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                        int N, int C, float eps, DType dt);
void layer_norm_forward_cpu(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                            int N, int C, float eps, DType dt);
void layer_norm_forward_cuda(void* out, float* mean, float* rstd, const void* inp, const void* weight, const void* bias,
                             int N, int C, float eps, DType dt);

// softmax_forward: torch.softmax(inp, dim=-1), the row maximum subtracted first.
//   inp (N, C)   out (N, C) (=, may alias inp)
void softmax_forward(void* out, const void* inp, int N, int C, DType dt);
void softmax_forward_cpu(void* out, const void* inp, int N, int C, DType dt);
void softmax_forward_cuda(void* out, const void* inp, int N, int C, DType dt);

// ----------------------------------------------------------------------------
// Attention

// attention_forward: multi-head scaled dot-product attention, as
// torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal) after splitting
// heads, with the default scale 1/sqrt(HS). The layout is the one the projections produce, so no
// permute is needed: head h of token l is the HS values at [l, h*HS : (h+1)*HS].
//   q   (N, Lq, NH*HS)   k, v (N, Lk, NH*HS)   out (N, Lq, NH*HS)   (=)
//   causal: query i sees keys j <= i (needs Lq == Lk); the text encoders use it.
//   HS <= ATTENTION_MAX_HS. out must not alias q, k or v.
// Neither backend stores the L x L score matrix: the CPU reference scores blocks of 64 queries
// against all keys with its GEMM and takes an exact softmax per row; CUDA streams keys in blocks
// with the "online" softmax (a running maximum and sum). 16-bit on CUDA with HS = 64 (every
// attention of the SDXL UNet) runs on the tensor cores: the probabilities are rounded to dt
// before they multiply v, as FlashAttention does. Heads of 128 and more (the VAE's one head of
// 512) go through cuBLAS on CUDA in blocks of queries, as the CPU reference does (scores in f32,
// probabilities rounded to dt).
#define ATTENTION_MAX_HS 512   // the VAE's single-head mid-block attention has HS = 512
#define ATTENTION_KEY_BLOCK 64 // keys scored per online-softmax update (CUDA)
void attention_forward(void* out, const void* q, const void* k, const void* v, int N, int NH, int Lq, int Lk, int HS,
                       int causal, DType dt);
void attention_forward_cpu(void* out, const void* q, const void* k, const void* v, int N, int NH, int Lq, int Lk,
                           int HS, int causal, DType dt);
void attention_forward_cuda(void* out, const void* q, const void* k, const void* v, int N, int NH, int Lq, int Lk,
                            int HS, int causal, DType dt);

// ----------------------------------------------------------------------------
// Activations, elementwise over n values; out may alias inp.

// silu: x * sigmoid(x)  (torch.nn.functional.silu)
void silu_forward(void* out, const void* inp, size_t n, DType dt);
void silu_forward_cpu(void* out, const void* inp, size_t n, DType dt);
void silu_forward_cuda(void* out, const void* inp, size_t n, DType dt);
// gelu: 0.5 x (1 + erf(x / sqrt 2))  (torch gelu, approximate="none"; UNet GEGLU, OpenCLIP, BERT)
void gelu_forward(void* out, const void* inp, size_t n, DType dt);
void gelu_forward_cpu(void* out, const void* inp, size_t n, DType dt);
void gelu_forward_cuda(void* out, const void* inp, size_t n, DType dt);
// gelu_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (torch gelu, approximate="tanh")
void gelu_tanh_forward(void* out, const void* inp, size_t n, DType dt);
void gelu_tanh_forward_cpu(void* out, const void* inp, size_t n, DType dt);
void gelu_tanh_forward_cuda(void* out, const void* inp, size_t n, DType dt);
// quick_gelu: x * sigmoid(1.702 x)  (OpenAI CLIP ViT-L/14, text and vision)
void quick_gelu_forward(void* out, const void* inp, size_t n, DType dt);
void quick_gelu_forward_cpu(void* out, const void* inp, size_t n, DType dt);
void quick_gelu_forward_cuda(void* out, const void* inp, size_t n, DType dt);
// sigmoid: 1 / (1 + exp(-x))  (YOLOv8 class scores)
void sigmoid_forward(void* out, const void* inp, size_t n, DType dt);
void sigmoid_forward_cpu(void* out, const void* inp, size_t n, DType dt);
void sigmoid_forward_cuda(void* out, const void* inp, size_t n, DType dt);

// geglu_forward: diffusers GEGLU after its projection: `h, gate = inp.chunk(2, -1); h * gelu(gate)`.
//   inp (N, 2C): value in [:, :C], gate in [:, C:]   out (N, C) (=). No aliasing.
void geglu_forward(void* out, const void* inp, int N, int C, DType dt);
void geglu_forward_cpu(void* out, const void* inp, int N, int C, DType dt);
void geglu_forward_cuda(void* out, const void* inp, int N, int C, DType dt);

// ----------------------------------------------------------------------------
// Elementwise arithmetic over n values; out may alias any input.
// axpby is the sampler's update of f32 latents, so it has no dt.

// add: out = a + b
void add_forward(void* out, const void* a, const void* b, size_t n, DType dt);
void add_forward_cpu(void* out, const void* a, const void* b, size_t n, DType dt);
void add_forward_cuda(void* out, const void* a, const void* b, size_t n, DType dt);
// mul: out = a * b
void mul_forward(void* out, const void* a, const void* b, size_t n, DType dt);
void mul_forward_cpu(void* out, const void* a, const void* b, size_t n, DType dt);
void mul_forward_cuda(void* out, const void* a, const void* b, size_t n, DType dt);
// scale: out = s * inp
void scale_forward(void* out, const void* inp, float s, size_t n, DType dt);
void scale_forward_cpu(void* out, const void* inp, float s, size_t n, DType dt);
void scale_forward_cuda(void* out, const void* inp, float s, size_t n, DType dt);
// axpby: out = alpha * x + beta * y, each product rounded, then the sum (no FMA in either
// backend), so sampler updates such as x + dt * d agree bit for bit across backends.
void axpby_forward(float* out, float alpha, const float* x, float beta, const float* y, size_t n);
void axpby_forward_cpu(float* out, float alpha, const float* x, float beta, const float* y, size_t n);
void axpby_forward_cuda(float* out, float alpha, const float* x, float beta, const float* y, size_t n);

// add_channel_vector: out[n, c, :] = inp[n, c, :] + vec[n, c]; the ResNet block's
// `h + time_emb_proj(emb)[:, :, None, None]`.
//   inp, out (N, C, HW) (out may alias inp)   vec (N, C)
void add_channel_vector_forward(void* out, const void* inp, const void* vec, int N, int C, int HW, DType dt);
void add_channel_vector_forward_cpu(void* out, const void* inp, const void* vec, int N, int C, int HW, DType dt);
void add_channel_vector_forward_cuda(void* out, const void* inp, const void* vec, int N, int C, int HW, DType dt);

// ----------------------------------------------------------------------------
// Layout ops. None of them allows aliasing.

// concat_forward: torch.cat([a, b], dim) for any dim: view a as (outer, inner_a), b as
// (outer, inner_b); out (outer, inner_a + inner_b) holds row o of a followed by row o of b.
// Channel concat of (N, Ca, H, W) and (N, Cb, H, W): outer = N, inner = Ca*H*W, Cb*H*W.
// Last-dim concat of (L, 768) and (L, 1280): outer = L, inner = 768, 1280.
void concat_forward(void* out, const void* a, const void* b, int outer, int inner_a, int inner_b, DType dt);
void concat_forward_cpu(void* out, const void* a, const void* b, int outer, int inner_a, int inner_b, DType dt);
void concat_forward_cuda(void* out, const void* a, const void* b, int outer, int inner_a, int inner_b, DType dt);

// split_forward: the inverse of concat_forward (torch.split / chunk): inp (outer, inner_a + inner_b)
// into out_a (outer, inner_a) and out_b (outer, inner_b).
void split_forward(void* out_a, void* out_b, const void* inp, int outer, int inner_a, int inner_b, DType dt);
void split_forward_cpu(void* out_a, void* out_b, const void* inp, int outer, int inner_a, int inner_b, DType dt);
void split_forward_cuda(void* out_a, void* out_b, const void* inp, int outer, int inner_a, int inner_b, DType dt);

// transpose_forward: out[b, c, r] = inp[b, r, c], i.e. inp.transpose(-1, -2).contiguous().
//   inp (B, R, C)   out (B, C, R). NCHW -> (N, HW, C) tokens: B = N, R = C, C = HW.
void transpose_forward(void* out, const void* inp, int B, int R, int C, DType dt);
void transpose_forward_cpu(void* out, const void* inp, int B, int R, int C, DType dt);
void transpose_forward_cuda(void* out, const void* inp, int B, int R, int C, DType dt);

// embedding_forward: torch.nn.functional.embedding: out[i, :] = table[ids[i], :].
//   ids (N) int32 on the backend, each in [0, V)   table (V, D)   out (N, D)   (=)
//   An id out of range is a caller bug: the CPU backend stops with an error, CUDA writes zeros.
void embedding_forward(void* out, const int32_t* ids, const void* table, int N, int V, int D, DType dt);
void embedding_forward_cpu(void* out, const int32_t* ids, const void* table, int N, int V, int D, DType dt);
void embedding_forward_cuda(void* out, const int32_t* ids, const void* table, int N, int V, int D, DType dt);

// ----------------------------------------------------------------------------
// Embeddings of scalars

// timestep_embedding_forward: diffusers get_timestep_embedding(t, dim, flip_sin_to_cos,
// downscale_freq_shift, scale=1, max_period=10000):
//   freq[i] = exp(-ln(max_period) * i / (dim/2 - freq_shift)), i < dim/2 (computed in f32)
//   arg = t * freq;  out = [sin(arg), cos(arg)], or [cos(arg), sin(arg)] when flip_sin_to_cos.
//   t (N) f32 on the backend   out (N, dim) of dt (=); dim must be even.
// SDXL: dim 320, flip 1, shift 0 for the timestep; dim 256 for each of the six size/crop ids.
void timestep_embedding_forward(void* out, const float* t, int N, int dim, int flip_sin_to_cos, float freq_shift,
                                float max_period, DType dt);
void timestep_embedding_forward_cpu(void* out, const float* t, int N, int dim, int flip_sin_to_cos, float freq_shift,
                                    float max_period, DType dt);
void timestep_embedding_forward_cuda(void* out, const float* t, int N, int dim, int flip_sin_to_cos, float freq_shift,
                                     float max_period, DType dt);

// ----------------------------------------------------------------------------
// Random numbers on the device

// randn_philox_forward: torch.randn(n, device="cuda", generator=g) in float32, for a CUDA
// generator seeded `seed` whose Philox offset is `offset` (0 when fresh), launched the way torch
// launches it on a grid of `threads` threads, a multiple of 256 (randn_philox_threads below).
// Thread idx runs
// curand_init(seed, idx, offset) and fills elements idx + threads*(4m + r) with component r of
// its m-th curand_normal4. Afterwards torch's offset has advanced by philox_offset_step(n, threads).
//   out (n)   (=)
// CUDA calls curand itself: bit-exact with torch on the same GPU. The CPU reference computes the
// same Philox4x32-10 stream and Box-Muller with libm's logf/sinf/cosf, where the GPU uses
// __sincosf: the two agree to a few units in the last place, not bit for bit.
void randn_philox_forward(float* out, size_t n, uint64_t seed, uint64_t offset, size_t threads);
void randn_philox_forward_cpu(float* out, size_t n, uint64_t seed, uint64_t offset, size_t threads);
void randn_philox_forward_cuda(float* out, size_t n, uint64_t seed, uint64_t offset, size_t threads);
// The grid torch launches for n values on the current backend's device; on the CPU backend, that
// of an H100 SXM (132 SMs of 2048 threads), the card sdxl.c targets.
size_t randn_philox_threads(size_t n);

// ----------------------------------------------------------------------------
// Storage conversion

// cast_forward: converts n values between f32, f16 and bf16 storage with round-to-nearest-even,
// exactly as tensor.h's scalar conversions (and torch's .half() / .bfloat16() / .float());
// kernels.cu ports those bit manipulations, so a change to one must be made to both. Any other
// dtype is a fatal error.
// out and inp must not alias unless out_type == inp_type.
void cast_forward(void* out, DType out_type, const void* inp, DType inp_type, size_t n);
void cast_forward_cpu(void* out, DType out_type, const void* inp, DType inp_type, size_t n);
void cast_forward_cuda(void* out, DType out_type, const void* inp, DType inp_type, size_t n);

// ----------------------------------------------------------------------------
// Backward passes
//
// What the LoRA trainer needs to backpropagate through the UNet: the base weights are frozen,
// but the loss gradient still flows through every activation, so each op the UNet is made of
// has a backward. The contract, once for all of them:
//   - `<op>_backward` takes dout, the gradient of the loss with respect to the op's output, and
//     the forward's inputs (plus what the forward saved: the norms' mean and rstd, attention's
//     output), and produces the gradients of the inputs and of the parameters.
//   - Input gradients (dinp, dq, dk, dv) are overwritten (=), unless the op takes `accumulate`
//     and it is 1: then they are added to what the buffer holds (+=), so a residual branch can
//     add its gradient to the one the skip path already left there.
//   - Parameter gradients (dweight, dbias) are always accumulated (+=): zero them once, then
//     every micro-batch adds its share.
//   - Any output pointer may be NULL when that gradient is not wanted (a frozen weight's
//     dweight, the first layer's dinp); the work only it needs is skipped.
//   - dt is the storage type of every tensor argument, gradients included; the saved mean and
//     rstd are f32, as the forward wrote them. The arithmetic is f32 (the CPU's long sums in
//     double, as the forward's statistics). Unless an op says otherwise, outputs must not alias
//     inputs or each other.
//   - 16-bit storage on the CPU: as the forward ops, widen every input to f32, run the f32
//     reference, round each output once; a += output is widened first, the f32 reference adds
//     into it, and the sum is rounded once. So a 16-bit CPU result is bit for bit the rounded f32
//     result on the same (rounded) inputs, and tests/test_backward.c checks that for every op.
//   - CUDA keeps 16-bit tensors in 16 bits and accumulates in f32; where it rounds an
//     intermediate to dt (named at each op), the CUDA-against-CPU tests allow for it. Every
//     CUDA backward is deterministic: fixed-order reductions, no atomics.
// The other ops need no backward of their own: add's is the identity (the same gradient to both
// inputs), scale's is scale, transpose's is transpose, concat's is split and split's is concat,
// add_channel_vector's is dout for inp and, for vec, dout summed over HW (no op here does that
// sum yet: only a trainer that differentiates the time embedding's projection needs it).

// linear_backward: the backward of linear_forward.
//   dout (N, C_out)   inp (N, C_in)   weight (C_out, C_in)
//   dinp    (N, C_in)      = dout @ weight        (=, or += with accumulate)
//   dweight (C_out, C_in) += dout^T @ inp
//   dbias   (C_out)       += sum over the N rows of dout
//   16-bit on CUDA: each output is one cuBLAS product (or one reduction) added to what it holds
//   with one rounding, as the contract asks.
void linear_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const void* weight,
                     int N, int C_in, int C_out, int accumulate, DType dt);
void linear_backward_cpu(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const void* weight,
                         int N, int C_in, int C_out, int accumulate, DType dt);
void linear_backward_cuda(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                          const void* weight, int N, int C_in, int C_out, int accumulate, DType dt);

// conv2d_backward: the backward of conv2d_forward (square K, the same zero padding on all
// sides, groups 1).
//   dout (N, C_out, H_out, W_out)   inp (N, C_in, H, W)   weight (C_out, C_in, K, K)
//   dinp    (N, C_in, H, W)       (=, or += with accumulate)
//   dweight (C_out, C_in, K, K)  += the correlation of dout with inp
//   dbias   (C_out)              += sum of dout over N, H_out, W_out
//   scratch: conv2d_scratch_elems(C_in, H, W, K, stride, pad) elements of dt (NULL for a 1x1
//   stride-1 conv), the forward's im2col buffer. Per chunk of at most CONV_CHUNK output pixels,
//   dweight += dout_chunk @ col^T with col = im2col(inp), and dcol = weight^T @ dout_chunk is
//   scattered back onto the input pixels it came from (col2im).
//   CUDA keeps dcol, and for 16-bit storage the image's dinp and the dweight sums, in f32 device
//   workspace (ops' own, grown on demand: C_in*K*K*min(P, CONV_CHUNK) + C_in*H*W + C_out*C_in*K*K
//   floats at most), so each output is rounded to dt once.
void conv2d_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const void* weight,
                     void* scratch, int N, int C_in, int H, int W, int C_out, int K, int stride, int pad, int accumulate,
                     DType dt);
void conv2d_backward_cpu(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const void* weight,
                         void* scratch, int N, int C_in, int H, int W, int C_out, int K, int stride, int pad,
                         int accumulate, DType dt);
void conv2d_backward_cuda(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                          const void* weight, void* scratch, int N, int C_in, int H, int W, int C_out, int K, int stride,
                          int pad, int accumulate, DType dt);

// group_norm_backward: the backward of group_norm_forward(out, mean, rstd, inp, weight, bias, N,
// C, HW, G, eps, silu, dt). With silu the forward's output was silu(y), y = gn(x)*w + b, so the
// backward recomputes y from inp, mean, rstd, weight and bias and multiplies dout by silu'(y)
// first; bias is read only then (NULL otherwise is fine). Then, per group of M = C/G*HW values,
// with xhat = (x - mean) * rstd and g = dy * w:
//   dinp = rstd * (g - mean(g) - xhat * mean(g * xhat))       (=, or += with accumulate)
//   dweight[c] += sum over n, hw of dy * xhat     dbias[c] += sum over n, hw of dy
//   mean, rstd (N, G) f32: what the forward saved. weight, bias (C) or NULL (no affine: w = 1,
//   b = 0); dweight, dbias (C) are computed whenever they are not NULL.
void group_norm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const float* mean,
                         const float* rstd, const void* weight, const void* bias, int N, int C, int HW, int G, int silu,
                         int accumulate, DType dt);
void group_norm_backward_cpu(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                             const float* mean, const float* rstd, const void* weight, const void* bias, int N, int C,
                             int HW, int G, int silu, int accumulate, DType dt);
void group_norm_backward_cuda(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                              const float* mean, const float* rstd, const void* weight, const void* bias, int N, int C,
                              int HW, int G, int silu, int accumulate, DType dt);

// layer_norm_backward: the backward of layer_norm_forward, the same formulas as group norm with
// one group per row of C values (the bias is not needed).
//   dout, inp (N, C)   mean, rstd (N) f32 as the forward saved them   weight (C) or NULL
//   dinp (N, C) (=, or += with accumulate)   dweight, dbias (C) +=
void layer_norm_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp, const float* mean,
                         const float* rstd, const void* weight, int N, int C, int accumulate, DType dt);
void layer_norm_backward_cpu(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                             const float* mean, const float* rstd, const void* weight, int N, int C, int accumulate,
                             DType dt);
void layer_norm_backward_cuda(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                              const float* mean, const float* rstd, const void* weight, int N, int C, int accumulate,
                              DType dt);

// attention_backward: the backward of attention_forward (the same (N, L, NH*HS) head layout,
// scale 1/sqrt(HS), causal needing Lq == Lk).
//   dout, q, out (N, Lq, NH*HS)   k, v (N, Lk, NH*HS)   out: the forward's output
//   dq (N, Lq, NH*HS), dk, dv (N, Lk, NH*HS): all three =.
// Per head, with S = scale * Q K^T, P = softmax(S) (masked when causal) and D_i = dO_i . O_i:
//   dV = P^T dO    dP = dO V^T    dS = P * (dP - D)    dQ = scale * dS K    dK = scale * dS^T Q
// Both backends recompute P for a block of queries at a time, never the whole Lq x Lk matrix,
// and add that block's share to dK and dV. CUDA runs the products through cuBLAS with f32
// scores (as the forward's large-head path); with 16-bit storage P and dS are rounded to dt
// before they enter the products that need them (P^T dO, dS K, dS^T Q), and dK, dV are summed
// over the query blocks in f32 and rounded once.
void attention_backward(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k, const void* v,
                        const void* out, int N, int NH, int Lq, int Lk, int HS, int causal, DType dt);
void attention_backward_cpu(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                            const void* v, const void* out, int N, int NH, int Lq, int Lk, int HS, int causal, DType dt);
void attention_backward_cuda(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                             const void* v, const void* out, int N, int NH, int Lq, int Lk, int HS, int causal,
                             DType dt);

// Activations, elementwise over n values: dinp = dout * f'(inp) (=); dinp may alias dout or inp.
//   silu'(x) = s (1 + x (1 - s)) with s = sigmoid(x)
//   gelu'(x) = Phi(x) + x phi(x), the exact (erf) GELU: Phi(x) = (1 + erf(x/sqrt 2)) / 2,
//   phi(x) = exp(-x^2/2) / sqrt(2 pi)
void silu_backward(void* dinp, const void* dout, const void* inp, size_t n, DType dt);
void silu_backward_cpu(void* dinp, const void* dout, const void* inp, size_t n, DType dt);
void silu_backward_cuda(void* dinp, const void* dout, const void* inp, size_t n, DType dt);
void gelu_backward(void* dinp, const void* dout, const void* inp, size_t n, DType dt);
void gelu_backward_cpu(void* dinp, const void* dout, const void* inp, size_t n, DType dt);
void gelu_backward_cuda(void* dinp, const void* dout, const void* inp, size_t n, DType dt);

// geglu_backward: the backward of geglu_forward.
//   dout (N, C)   inp (N, 2C): value in [:, :C], gate in [:, C:]
//   dinp (N, 2C) (=): d value = dout * gelu(gate), d gate = dout * value * gelu'(gate). No aliasing.
void geglu_backward(void* dinp, const void* dout, const void* inp, int N, int C, DType dt);
void geglu_backward_cpu(void* dinp, const void* dout, const void* inp, int N, int C, DType dt);
void geglu_backward_cuda(void* dinp, const void* dout, const void* inp, int N, int C, DType dt);

// upsample_nearest_backward: the backward of upsample_nearest_forward (the same index rule).
//   dout (N, C, H_out, W_out)   dinp (N, C, H, W) (=): each input cell gets the sum of dout over
//   the output cells that copied it (none, when H_out < H skips it: 0), added in row-major order
//   of the output cells, in both backends (so they agree bit for bit in f32). No aliasing.
void upsample_nearest_backward(void* dinp, const void* dout, int N, int C, int H, int W, int H_out, int W_out,
                               DType dt);
void upsample_nearest_backward_cpu(void* dinp, const void* dout, int N, int C, int H, int W, int H_out, int W_out,
                                   DType dt);
void upsample_nearest_backward_cuda(void* dinp, const void* dout, int N, int C, int H, int W, int H_out, int W_out,
                                    DType dt);

// ----------------------------------------------------------------------------
// CUDA backend internals the dispatchers call (kernels.cu); CPU builds get stubs.
int cuda_device_count_impl(void);
void cuda_init(void);
void* cuda_malloc(size_t bytes);
void* cuda_try_malloc(size_t bytes); // NULL when cudaMalloc fails
void cuda_free(void* p);
void cuda_memset_zero(void* p, size_t bytes);
void cuda_copy_to_device(void* dst, const void* src, size_t bytes);
void cuda_copy_to_host(void* dst, const void* src, size_t bytes);
void cuda_copy_device_to_device(void* dst, const void* src, size_t bytes);
void cuda_synchronize(void);
size_t cuda_memory_held(void);
size_t cuda_memory_peak(void);
void cuda_memory_peak_reset(void);
size_t cuda_memory_in_use_on_device(void);
size_t cuda_torch_randn_threads(size_t n); // torch's randn grid for n values on the current device
