// tests/test_rng.c: rng.c against PyTorch's CPU generator (tests/golden/rng.safetensors, made by
// scripts/make_golden_rng.py), bit for bit, and Philox4x32-10 against Random123's known answers.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../ops.h"
#include "../rng.h"
#include "check.h"

static uint64_t seed_of(const char* name) { // "randn.<seed>.<shape>" -> seed
    const char* dot = strchr(name, '.');
    return strtoull(dot + 1, NULL, 10);
}

// Every randn.<seed>.<shape> entry: a fresh generator, one call, the whole tensor compared bitwise.
static void test_rng_randn_matches_torch(void) {
    SafeTensors st;
    if (!golden_open(&st, "rng.safetensors")) return;
    int cases = 0;
    for (int i = 0; i < st.count; i++) {
        const SafeTensor* t = &st.tensors[i];
        if (strncmp(t->name, "randn.", 6) != 0) continue;
        size_t n = safetensor_numel(t);
        float* got = xmalloc(sizeof(float) * n);
        TorchGenerator g;
        torch_manual_seed(&g, seed_of(t->name));
        torch_randn(&g, got, n);
        check_bytes_equal(t->name, got, t->data, n * sizeof(float));
        free(got);
        cases++;
    }
    check_true(cases >= 8, "golden holds the randn cases (%d)", cases);
    safetensors_close(&st);
}

static void test_rng_uniform_int_perm_match_torch(void) {
    SafeTensors st;
    if (!golden_open(&st, "rng.safetensors")) return;
    TorchGenerator g;
    const SafeTensor* t;

    if ((t = safetensors_find(&st, "rand.42.1000"))) {
        float got[1000];
        torch_manual_seed(&g, 42);
        torch_rand(&g, got, 1000);
        check_bytes_equal("torch.rand(1000)", got, t->data, sizeof(got));
    } else check_true(0, "golden rand.42.1000 present");

    struct { const char* name; int64_t low, high; size_t n; } ints[] = {
        {"randint.42.0_1000.64", 0, 1000, 64},
        {"randint.42.-5_5.20", -5, 5, 20},
        {"randint.42.0_2p40.8", 0, 1ll << 40, 8}, // range above 2^32 takes 64-bit draws
    };
    for (size_t c = 0; c < sizeof(ints) / sizeof(ints[0]); c++) {
        t = safetensors_find(&st, ints[c].name);
        if (!check_true(t != NULL && t->dtype == DT_I64, "golden %s present (int64)", ints[c].name)) continue;
        int64_t got[64];
        torch_manual_seed(&g, 42);
        torch_randint(&g, got, ints[c].n, ints[c].low, ints[c].high);
        check_bytes_equal(ints[c].name, got, t->data, ints[c].n * sizeof(int64_t));
    }

    int64_t perm_sizes[] = {10, 5000};
    for (int c = 0; c < 2; c++) {
        char name[64];
        snprintf(name, sizeof(name), "randperm.42.%lld", (long long)perm_sizes[c]);
        t = safetensors_find(&st, name);
        if (!check_true(t != NULL, "golden %s present", name)) continue;
        int64_t* got = xmalloc(sizeof(int64_t) * perm_sizes[c]);
        torch_manual_seed(&g, 42);
        torch_randperm(&g, got, perm_sizes[c]);
        check_bytes_equal(name, got, t->data, perm_sizes[c] * sizeof(int64_t));
        free(got);
    }
    safetensors_close(&st);
}

// Successive calls on one generator, as the script made them: the state must advance as torch's.
static void test_rng_sequence_matches_torch(void) {
    SafeTensors st;
    if (!golden_open(&st, "rng.safetensors")) return;
    TorchGenerator g;
    torch_manual_seed(&g, 42);
    float f[700];
    int64_t ints[16];
    const SafeTensor* t;
#define EXPECT(name, ptr, bytes) \
    if ((t = safetensors_find(&st, name))) check_bytes_equal(name, ptr, t->data, bytes); else check_true(0, "golden %s present", name)
    torch_randn(&g, f, 5);              EXPECT("seq.0.randn.5", f, 5 * 4);
    torch_randn(&g, f, 3);              EXPECT("seq.1.randn.3", f, 3 * 4);
    torch_randn(&g, f, 40);             EXPECT("seq.2.randn.40", f, 40 * 4);
    torch_rand(&g, f, 7);               EXPECT("seq.3.rand.7", f, 7 * 4);
    torch_randint(&g, ints, 4, 0, 1000); EXPECT("seq.4.randint.0_1000.4", ints, 4 * 8);
    torch_randperm(&g, ints, 12);       EXPECT("seq.5.randperm.12", ints, 12 * 8);
    torch_randn(&g, f, 1);              EXPECT("seq.6.randn.1", f, 1 * 4);
    torch_randn(&g, f, 700);            EXPECT("seq.7.randn.700", f, 700 * 4);
#undef EXPECT
    safetensors_close(&st);
}

// The reference values the notes quote (seed 42), stated here so a reader sees what "bit-exact"
// means without opening the golden file; they are also inside rng.safetensors.
static void test_rng_seed42_first_values(void) {
    TorchGenerator g;
    float big[64], small[8];
    torch_manual_seed(&g, 42); // 64 values: the vectorised float path
    torch_randn(&g, big, 64);
    const float want[4] = {1.9269153f, 1.4872841f, 0.9007172f, -2.105521f};
    check_close("randn seed 42, first 4 of a large draw", big, want, 4, 0.0f, 1e-7f);
    torch_manual_seed(&g, 42); // 8 values: the per-element double path
    torch_randn(&g, small, 8);
    const float want_small[4] = {0.33669037f, 0.1288094f, 0.23446237f, 0.23033303f};
    check_close("randn(8) seed 42 (double path)", small, want_small, 4, 0.0f, 1e-7f);
}

// Seeds over manual_seed's whole range (tests/golden/rng_seeds.safetensors): each entry is named
// seed.<decimal text>.<call>, and the text goes through torch_seed_parse, the parser the CLI uses,
// so this checks both the text -> 64-bit rule (against torch's initial_seed()) and the draws.
static void test_rng_large_and_negative_seeds_match_torch(void) {
    SafeTensors st;
    if (!golden_open(&st, "rng_seeds.safetensors")) return;
    int seeds = 0, draws = 0;
    for (int i = 0; i < st.count; i++) {
        const SafeTensor* t = &st.tensors[i];
        char text[64], call[32];
        const char* dot = strrchr(t->name, '.');
        if (strncmp(t->name, "seed.", 5) != 0 || !dot) continue;
        // the call is the part after the seed: "initial_seed", "randn.8", "randn.40", "rand.8"
        const char* after_seed = strchr(t->name + 5, '.');
        snprintf(text, sizeof(text), "%.*s", (int)(after_seed - (t->name + 5)), t->name + 5);
        snprintf(call, sizeof(call), "%s", after_seed + 1);
        uint64_t seed;
        if (torch_seed_parse(text, &seed) != 0) {
            check_true(0, "torch_seed_parse accepts '%s' (torch does)", text);
            continue;
        }
        if (strcmp(call, "initial_seed") == 0) {
            uint64_t want;
            memcpy(&want, t->data, sizeof(want));
            check_true(t->dtype == DT_U64 && seed == want, "'%s' -> %llu, torch's initial_seed() %llu", text,
                       (unsigned long long)seed, (unsigned long long)want);
            seeds++;
            continue;
        }
        size_t n = safetensor_numel(t);
        float got[64];
        if (n > 64) {
            check_true(0, "%s: at most 64 values (has %zu)", t->name, n);
            continue;
        }
        TorchGenerator g;
        torch_manual_seed(&g, seed);
        if (strncmp(call, "randn.", 6) == 0) torch_randn(&g, got, n);
        else torch_rand(&g, got, n);
        check_bytes_equal(t->name, got, t->data, n * sizeof(float));
        draws++;
    }
    check_true(seeds >= 12 && draws >= 36, "golden holds the seed cases (%d seeds, %d draws)", seeds, draws);
    safetensors_close(&st);
}

// What torch refuses (manual_seed raises "Overflow when unpacking"), and text that is no integer.
static void test_rng_seed_parse_rejects(void) {
    const char* bad[] = {"18446744073709551616", "99999999999999999999", "-9223372036854775809", "-18446744073709551615",
                         "abc", "-", "", "+5", " 5", "5 ", "0x10", "1e3", "4.0", "--1", "12a"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t seed = 7;
        check_true(torch_seed_parse(bad[i], &seed) == -1 && seed == 7, "'%s' is refused, seed left alone", bad[i]);
    }
    uint64_t a, b;
    check_true(torch_seed_parse("-0", &a) == 0 && a == 0, "-0 is 0");
    check_true(torch_seed_parse("007", &a) == 0 && a == 7, "leading zeros are decimal, not octal");
    check_true(torch_seed_parse("-1", &a) == 0 && torch_seed_parse("18446744073709551615", &b) == 0 && a == b,
               "-1 and 2^64 - 1 are the same seed");
}

// The CUDA generator's Philox key is the whole 64-bit seed (curand_init: key = low word, high
// word), unlike the CPU generator's MT19937: 2^32 + 42 and 42 give different CUDA noise.
// curand_normal's first value for counter 0 and this key: the sin branch of Box-Muller on the first
// two words of Philox4x32-10 (the formula rng.c and kernels.cu implement).
static float philox_first_normal(uint32_t key_lo, uint32_t key_hi) {
    uint32_t ctr[4] = {0, 0, 0, 0}, key[2] = {key_lo, key_hi}, r[4];
    philox4x32_10(ctr, key, r);
    float u = fmaf((float)r[0], 2.3283064e-10f, 2.3283064e-10f / 2.0f);
    float v = fmaf((float)r[1], 2.3283064e-10f * 6.2831855f, 2.3283064e-10f * 6.2831855f / 2.0f);
    return sinf(v) * sqrtf(-2.0f * logf(u));
}

static void test_rng_philox_key_takes_all_64_bits(void) {
    uint64_t seed = (1ull << 32) + 42;
    float x[8], y[8];
    philox_randn(seed, 0, 256, x, 8);
    philox_randn(42, 0, 256, y, 8);
    float want0 = philox_first_normal(42, 1);
    check_close("philox_randn(2^32 + 42) element 0 uses key {42, 1}", x, &want0, 1, 0.0f, 0.0f);
    check_true(x[0] != y[0], "2^32 + 42 and 42 differ on the CUDA generator (%g vs %g)", x[0], y[0]);
}

// Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter[4], key[2] -> output[4].
static void test_rng_philox_known_answers(void) {
    static const uint32_t kat[3][10] = {
        {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
         0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
         0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
         0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        philox4x32_10(kat[i], kat[i] + 4, out);
        char label[64];
        snprintf(label, sizeof(label), "philox4x32-10 known answer %d", i);
        check_bytes_equal(label, out, kat[i] + 6, sizeof(out));
    }
}

// philox_randn cannot be compared with a GPU here; check the layout rule and the distribution.
static void test_rng_philox_randn_layout_and_moments(void) {
    size_t n = 65664, threads = 1056 * 256; // one pass of an H100-sized grid
    float* x = xmalloc(sizeof(float) * n);
    philox_randn(42, 0, threads, x, n);
    double sum = 0, sq = 0;
    for (size_t i = 0; i < n; i++) { sum += x[i]; sq += (double)x[i] * x[i]; }
    double mean = sum / n, var = sq / n - mean * mean;
    check_true(fabs(mean) < 0.02 && fabs(var - 1.0) < 0.03, "philox_randn moments (mean %.4f, var %.4f)", mean, var);
    // a smaller grid wraps: element idx + threads*r is component r of thread idx's first draw
    float* y = xmalloc(sizeof(float) * n);
    philox_randn(42, 0, n / 4, y, n);
    float first_of_each[4] = {y[0], y[n / 4], y[n / 2], y[3 * n / 4]};
    float want0 = philox_first_normal(42, 0);
    check_close("philox_randn element 0 = sin branch of thread 0", first_of_each, &want0, 1, 0.0f, 0.0f);
    check_true(x[0] == y[0], "element 0 does not depend on the grid size");
    free(x);
    free(y);
}

// torch's CUDA launch rule (calc_execution_policy): blocks of 256, at most SMs * 2048 / 256.
static void test_rng_philox_torch_launch_rule(void) {
    // H100 SXM: 132 SMs of 2048 threads -> at most 1056 blocks
    check_true(philox_torch_threads(65664, 132, 2048) == 257 * 256, "1368x768 latent: 257 blocks, one value per thread");
    check_true(philox_torch_threads(10000000, 132, 2048) == 1056 * 256, "10M values: the grid is capped at 1056 blocks");
    check_true(philox_offset_step(65664, 257 * 256) == 4, "one curand_normal4 per thread moves the offset by 4");
    check_true(philox_offset_step(10000000, 1056 * 256) == 40, "10M values on 270336 threads: 10 calls, offset 40");
    // the op on the CPU backend is philox_randn; the same stream with a non-multiple of 256 is refused
    float a[300], b[300];
    randn_philox_forward_cpu(a, 300, 42, 8, 512);
    philox_randn(42, 8, 512, b, 300);
    check_bytes_equal("randn_philox_forward_cpu is philox_randn", a, b, sizeof(a));
}

// CUDA's curand against the CPU emulation of its stream.
static void test_rng_cuda_philox_vs_cpu(void) {
    if (!test_require_cuda()) return;
    size_t n = 2 * 4 * 128 * 128 + 5;
    Backend saved = backend_current();
    backend_select(BACKEND_CUDA);
    size_t threads = randn_philox_threads(n);
    float* d = device_malloc(sizeof(float) * n);
    randn_philox_forward(d, n, 42, 0, threads);
    float* gpu = xmalloc(sizeof(float) * n);
    copy_to_host(gpu, d, sizeof(float) * n);
    device_free(d);
    backend_select(saved);
    float* cpu = xmalloc(sizeof(float) * n);
    randn_philox_forward_cpu(cpu, n, 42, 0, threads);
    printf("  torch's grid on this device: %zu threads\n", threads);
    // the Philox words are identical; Box-Muller differs only by __sincosf/logf vs libm (a few
    // ulp of 2*pi in the angle, times a radius up to ~6)
    check_close("curand_normal4 vs CPU emulation", gpu, cpu, n, 3e-5f, 1e-5f);
    free(gpu);
    free(cpu);
}

// Bit-exact against torch's own CUDA randn, when scripts/gpu_check.sh made the golden on this GPU
// (SDXL_TORCH_CUDA_RANDN=path): torch.Generator("cuda") depends on the device, so it is not committed.
static void test_rng_cuda_philox_vs_torch(void) {
    if (!test_require_cuda()) return;
    const char* path = getenv("SDXL_TORCH_CUDA_RANDN");
    if (!path) {
        test_skip("no torch CUDA golden; scripts/gpu_check.sh makes one");
        return;
    }
    SafeTensors st;
    char err[ERR_MAX];
    if (!check_true(safetensors_open(&st, path, err) == 0, "open %s", path)) return;
    Backend saved = backend_current();
    backend_select(BACKEND_CUDA);
    for (int i = 0; i < st.count; i++) {
        const SafeTensor* t = &st.tensors[i];
        unsigned long long seed, offset;
        if (sscanf(t->name, "randn_cuda.%llu.%llu.", &seed, &offset) != 2) continue;
        size_t n = safetensor_numel(t);
        float* d = device_malloc(sizeof(float) * n);
        randn_philox_forward(d, n, seed, offset, randn_philox_threads(n));
        float* got = xmalloc(sizeof(float) * n);
        copy_to_host(got, d, sizeof(float) * n);
        device_free(d);
        check_bytes_equal(t->name, got, t->data, sizeof(float) * n);
        free(got);
    }
    backend_select(saved);
    safetensors_close(&st);
}

const TestCase tests_rng[] = {
    {"rng_randn_matches_torch", test_rng_randn_matches_torch},
    {"rng_uniform_int_perm_match_torch", test_rng_uniform_int_perm_match_torch},
    {"rng_sequence_matches_torch", test_rng_sequence_matches_torch},
    {"rng_seed42_first_values", test_rng_seed42_first_values},
    {"rng_large_and_negative_seeds_match_torch", test_rng_large_and_negative_seeds_match_torch},
    {"rng_seed_parse_rejects", test_rng_seed_parse_rejects},
    {"rng_philox_key_takes_all_64_bits", test_rng_philox_key_takes_all_64_bits},
    {"rng_philox_known_answers", test_rng_philox_known_answers},
    {"rng_philox_randn_layout_and_moments", test_rng_philox_randn_layout_and_moments},
    {"rng_philox_torch_launch_rule", test_rng_philox_torch_launch_rule},
    {"rng_cuda_philox_vs_cpu", test_rng_cuda_philox_vs_cpu},
    {"rng_cuda_philox_vs_torch", test_rng_cuda_philox_vs_torch},
    {NULL, NULL},
};
