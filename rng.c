// rng.c: PyTorch-identical random numbers. See rng.h.
//
// Sources (facts, ported in our own words): pytorch aten/src/ATen/core/MT19937RNGEngine.h (the
// engine), ATen/core/DistributionsHelper.h and ATen/core/TransformationHelper.h (uniform, normal,
// integer transforms), aten/src/ATen/native/cpu/DistributionTemplates.h and avx_mathfun.h (randn's
// vectorised Box-Muller), aten/src/ATen/native/TensorFactories.cpp (randperm), Random123 and
// curand_kernel.h / curand_normal.h (Philox4x32-10, curand_normal4).
//
// torch.randn on the CPU takes one of two paths (DistributionTemplates.h, normal_kernel):
//   - fewer than 16 elements: one `normal_distribution<double>` draw per element (two 53-bit
//     uniforms, Box-Muller in double, the second value cached in the generator);
//   - 16 or more: fill every element with a 24-bit float uniform, then transform blocks of 16 in
//     place, pairing element j with j + 8 (normal_fill_16). A tail that does not fill a block is
//     redrawn: 16 fresh uniforms overwrite the last 16 outputs and are transformed as one block.
// x86-64 builds of torch run the AVX2 transform (also on AVX-512 machines), whose log and sincos
// are Cephes polynomials compiled by GCC with fused multiply-adds. We evaluate those polynomials
// in scalar code with the same constants and the same fmaf() placement (the build has
// -ffp-contract=off, so no other FMA sneaks in), which gives torch's bits exactly.
#include "rng.h"

#include <math.h>
#include <string.h>

#include "common.h"
#include "tensor.h"

// ----------------------------------------------------------------------------
// MT19937

#define MT19937_M 397
#define MT19937_MATRIX_A 0x9908b0dfu

void torch_manual_seed(TorchGenerator* g, uint64_t seed) {
    memset(g, 0, sizeof(*g));
    g->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (int j = 1; j < MT19937_N; j++)
        g->state[j] = 1812433253u * (g->state[j - 1] ^ (g->state[j - 1] >> 30)) + (uint32_t)j;
    g->left = 1; // the first draw twists
    g->next = 0;
}

int torch_seed_parse(const char* text, uint64_t* seed) {
    const char* s = text;
    int negative = *s == '-';
    if (negative) s++;
    if (*s == 0) return -1;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        uint64_t digit = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - digit) / 10) return -1; // past 2^64 - 1
        v = v * 10 + digit;
    }
    if (negative) {
        if (v > (1ull << 63)) return -1; // below -2^63: torch's int64 fallback overflows too
        v = 0 - v;                       // two's complement: 2^64 - |n|
    }
    *seed = v;
    return 0;
}

static uint32_t mt_twist(uint32_t u, uint32_t v) {
    uint32_t mixed = (u & 0x80000000u) | (v & 0x7fffffffu);
    return (mixed >> 1) ^ ((v & 1u) ? MT19937_MATRIX_A : 0u);
}

static void mt_next_state(TorchGenerator* g) {
    uint32_t* s = g->state;
    g->left = MT19937_N;
    g->next = 0;
    for (int j = 0; j < MT19937_N - MT19937_M; j++) s[j] = s[j + MT19937_M] ^ mt_twist(s[j], s[j + 1]);
    for (int j = MT19937_N - MT19937_M; j < MT19937_N - 1; j++)
        s[j] = s[j + MT19937_M - MT19937_N] ^ mt_twist(s[j], s[j + 1]);
    s[MT19937_N - 1] = s[MT19937_M - 1] ^ mt_twist(s[MT19937_N - 1], s[0]);
}

uint32_t torch_random32(TorchGenerator* g) {
    if (--g->left == 0) mt_next_state(g);
    uint32_t y = g->state[g->next++];
    // tempering
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t torch_random64(TorchGenerator* g) {
    uint64_t hi = torch_random32(g);
    uint64_t lo = torch_random32(g);
    return (hi << 32) | lo;
}

// uniform_real_distribution<float>: the low 24 bits scaled to [0, 1).
static float uniform_float(TorchGenerator* g) { return (float)(torch_random32(g) & 0xffffffu) * (1.0f / 16777216.0f); }

// uniform_real_distribution<double>: the low 53 bits of a 64-bit draw scaled to [0, 1).
static double uniform_double(TorchGenerator* g) {
    return (double)(torch_random64(g) & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

// normal_distribution<double>(0, 1), with the generator's cache of the second Box-Muller value.
static double normal_double(TorchGenerator* g) {
    if (g->has_next_normal) {
        g->has_next_normal = 0;
        return g->next_normal;
    }
    double u1 = uniform_double(g);
    double u2 = uniform_double(g);
    double r = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    g->next_normal = r * sin(theta);
    g->has_next_normal = 1;
    return r * cos(theta);
}

// ----------------------------------------------------------------------------
// The AVX2 Box-Muller transform of torch.randn (avx_mathfun.h log256_ps / sincos256_ps), scalar.

// Natural log (Cephes logf): split x = m * 2^e with m in [sqrt(1/2), sqrt(2)), then a degree-8
// polynomial in m - 1. The fmaf() calls are where GCC fused the intrinsics in torch's build.
static float avx2_log(float x) {
    const float min_normal = f32_from_bits(0x00800000u);
    if (x < min_normal) x = min_normal;
    int32_t exponent = (int32_t)(f32_to_bits(x) >> 23) - 0x7f;
    x = f32_from_bits((f32_to_bits(x) & ~0x7f800000u) | f32_to_bits(0.5f)); // mantissa in [0.5, 1)
    float e = (float)exponent + 1.0f;
    int below_sqrt_half = x < 0.707106781186547524f;
    float tmp = below_sqrt_half ? x : 0.0f;
    x = x - 1.0f;
    e = e - (below_sqrt_half ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = 7.0376836292e-2f;
    y = fmaf(y, x, -1.1514610310e-1f);
    y = fmaf(y, x, 1.1676998740e-1f);
    y = fmaf(y, x, -1.2420140846e-1f);
    y = fmaf(y, x, 1.4249322787e-1f);
    y = fmaf(y, x, -1.6668057665e-1f);
    y = fmaf(y, x, 2.0000714765e-1f);
    y = fmaf(y, x, -2.4999993993e-1f);
    y = fmaf(y, x, 3.3333331174e-1f);
    y = y * x;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = fmaf(-z, 0.5f, y);
    return fmaf(e, 0.693359375f, x + y);
}

// sin and cos together (Cephes sinf/cosf): reduce by multiples of pi/4 in three parts (DP1..3),
// evaluate the sine or cosine polynomial by octant, and fix the signs.
static void avx2_sincos(float xin, float* sin_out, float* cos_out) {
    uint32_t sign_sin = f32_to_bits(xin) & 0x80000000u;
    float x = f32_from_bits(f32_to_bits(xin) & 0x7fffffffu);
    int32_t j = (int32_t)(x * 1.27323954473516f); // 4/pi, truncated as cvttps does
    j = (j + 1) & ~1;
    float y = (float)j;
    uint32_t swap_sign_sin = (uint32_t)(j & 4) << 29;
    int use_sin_poly = (j & 2) == 0;
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    sign_sin ^= swap_sign_sin;
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float yc = fmaf(fmaf(2.443315711809948e-5f, z, -1.388731625493765e-3f), z, 4.166664568298827e-2f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = fmaf(fmaf(-1.9515295891e-4f, z, 8.3321608736e-3f), z, -1.6666654611e-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);
    float s = use_sin_poly ? ys : yc;
    float c = use_sin_poly ? yc : ys;
    *sin_out = f32_from_bits(f32_to_bits(s) ^ sign_sin);
    *cos_out = f32_from_bits(f32_to_bits(c) ^ sign_cos);
}

// normal_fill_16_AVX2: 16 uniforms in place -> 16 normals; element j pairs with j + 8.
static void normal_fill_16(float* d) {
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * avx2_log(u1));
        float theta = two_pi * u2;
        float s, c;
        avx2_sincos(theta, &s, &c);
        d[j] = radius * c;
        d[j + 8] = radius * s;
    }
}

void torch_randn(TorchGenerator* g, float* out, size_t n) {
    if (n < 16) {
        for (size_t i = 0; i < n; i++) out[i] = (float)normal_double(g);
        return;
    }
    for (size_t i = 0; i < n; i++) out[i] = uniform_float(g);
    for (size_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
    if (n % 16 != 0) { // redraw the last 16 (overwriting some finished values) and transform them
        float* tail = out + n - 16;
        for (int i = 0; i < 16; i++) tail[i] = uniform_float(g);
        normal_fill_16(tail);
    }
}

void torch_rand(TorchGenerator* g, float* out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = uniform_float(g);
}

void torch_randint(TorchGenerator* g, int64_t* out, size_t n, int64_t low, int64_t high) {
    // random_from_to: a 32-bit draw when the range fits in 32 bits, else a 64-bit one; then modulo
    uint64_t range = (uint64_t)(high - low);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = range >= (1ull << 32) ? torch_random64(g) : torch_random32(g);
        out[i] = low + (int64_t)(r % range);
    }
}

void torch_randperm(TorchGenerator* g, int64_t* out, int64_t n) {
    // randperm_cpu: Fisher-Yates from the front; element i swaps with i + (random % (n - i)).
    for (int64_t i = 0; i < n; i++) out[i] = i;
    for (int64_t i = 0; i < n - 1; i++) {
        int64_t z = (int64_t)(torch_random32(g) % (uint64_t)(n - i));
        int64_t tmp = out[i];
        out[i] = out[z + i];
        out[z + i] = tmp;
    }
}

// ----------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011)

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u // key schedule: the golden ratio
#define PHILOX_W1 0xBB67AE85u // and sqrt(3) - 1

void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

void philox_randn(uint64_t seed, uint64_t offset, size_t threads, float* out, size_t n) {
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const float inv_2pow32 = 2.3283064e-10f;                 // CURAND_2POW32_INV
    const float inv_2pow32_2pi = 2.3283064e-10f * 6.2831855f; // CURAND_2POW32_INV_2PI
    for (size_t idx = 0; idx < threads; idx++) {
        // curand_init(seed, subsequence = idx, offset): counter = (offset/4, 0) + call, (idx, 0)
        for (uint64_t call = 0;; call++) {
            size_t base = idx + call * 4 * threads;
            if (base >= n) break;
            uint64_t block = offset / 4 + call;
            uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)idx, (uint32_t)((uint64_t)idx >> 32)};
            uint32_t x[4];
            philox4x32_10(ctr, key, x);
            // curand_normal4: Box-Muller on (x0, x1) and (x2, x3); nvcc fuses u and v into FMAs
            float normals[4];
            for (int pair = 0; pair < 2; pair++) {
                float u = fmaf((float)x[2 * pair], inv_2pow32, inv_2pow32 / 2.0f);
                float v = fmaf((float)x[2 * pair + 1], inv_2pow32_2pi, inv_2pow32_2pi / 2.0f);
                float s = sqrtf(-2.0f * logf(u));
                normals[2 * pair] = sinf(v) * s;
                normals[2 * pair + 1] = cosf(v) * s;
            }
            for (int r = 0; r < 4; r++) {
                size_t i = base + (size_t)r * threads;
                if (i < n) out[i] = normals[r];
            }
        }
    }
}

size_t philox_torch_threads(size_t n, int sm_count, int max_threads_per_sm) {
    const size_t block = 256;
    size_t blocks = (n + block - 1) / block;
    size_t max_blocks = (size_t)sm_count * (size_t)(max_threads_per_sm / (int)block);
    return (blocks < max_blocks ? blocks : max_blocks) * block;
}

uint64_t philox_offset_step(size_t n, size_t threads) { return ((n - 1) / (threads * 4) + 1) * 4; }
