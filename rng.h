// rng.h: random numbers identical to PyTorch's, so a seed means the same image here and in
// diffusers.
//
// TorchGenerator reproduces `torch.Generator("cpu").manual_seed(seed)`: the MT19937 engine
// (ATen/core/MT19937RNGEngine.h) and the draws built on it, bit for bit, for float32 outputs:
//   torch_randn    torch.randn(n, generator=g)                    (both of torch's paths, see rng.c)
//   torch_rand     torch.rand(n, generator=g)
//   torch_randint  torch.randint(low, high, (n,), generator=g)
//   torch_randperm torch.randperm(n, generator=g)                   (the DataLoader's shuffle)
// Draws continue the generator's stream exactly as successive torch calls do.
//
// Philox4x32-10 is the counter-based generator behind `torch.Generator("cuda")` (through
// curand). philox4x32_10 is the bare block function (checked against Random123's known-answer
// vectors); philox_randn lays its output out the way torch's CUDA randn does. On the CPU the
// Box-Muller step uses libm's logf/sinf, which can differ from the GPU's __sincosf by a few ulp;
// the op randn_philox_forward (ops.h) runs curand itself on the CUDA backend.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define MT19937_N 624

typedef struct {
    uint32_t state[MT19937_N];
    int left, next;          // words left before the next twist; index of the next word
    int has_next_normal;     // torch caches the second Box-Muller value of its double path
    double next_normal;
} TorchGenerator;

void torch_manual_seed(TorchGenerator* g, uint64_t seed); // only the low 32 bits reach MT19937, as in torch

// A seed written in decimal, read as torch.Generator.manual_seed reads a Python int
// (torch/csrc/Generator.cpp, unpack_uint64): 0 .. 2^64 - 1 as is, and a negative n in -2^63 .. -1
// as the same 64 bits in two's complement, 2^64 + n (so -1 is 18446744073709551615, the seed
// torch then reports as initial_seed()). Anything else (out of range, a sign alone, '+', spaces,
// hex) returns -1. The CPU generator keeps only the low 32 bits (torch_manual_seed); the CUDA
// generator's Philox key takes all 64 (philox_randn).
int torch_seed_parse(const char* text, uint64_t* seed);
uint32_t torch_random32(TorchGenerator* g);
uint64_t torch_random64(TorchGenerator* g);                // first word in the high half

void torch_randn(TorchGenerator* g, float* out, size_t n);
void torch_rand(TorchGenerator* g, float* out, size_t n);
void torch_randint(TorchGenerator* g, int64_t* out, size_t n, int64_t low, int64_t high);
void torch_randperm(TorchGenerator* g, int64_t* out, int64_t n);

// Philox4x32-10: out = the 10-round Philox block of counter ctr under key.
void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

// torch.randn(n, device="cuda", generator=torch.Generator("cuda").manual_seed(seed)) when the
// generator's Philox offset is `offset` (0 for a fresh generator; torch adds 4 per call for
// tensors that fit one pass of the grid). `threads` is the CUDA grid's thread count torch picks:
// 256 * min(ceil(n / 256), SMs * maxThreadsPerSM / 256) (e.g. 132 SMs * 2048 / 256 = 1056 blocks
// on an H100). Element i = idx + threads * r comes from thread idx, component r of curand_normal4.
void philox_randn(uint64_t seed, uint64_t offset, size_t threads, float* out, size_t n);

// The thread count torch's CUDA randn launches for n values (calc_execution_policy in
// ATen/native/cuda/DistributionTemplates.h): blocks of 256, at most SMs * maxThreadsPerSM / 256
// blocks. An H100 SXM has 132 SMs of 2048 threads.
size_t philox_torch_threads(size_t n, int sm_count, int max_threads_per_sm);
// How far one such randn call moves the generator's Philox offset: 4 per curand_normal4 call each
// thread makes.
uint64_t philox_offset_step(size_t n, size_t threads);
