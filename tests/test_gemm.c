// tests/test_gemm.c: the tiled, packed, threaded CPU GEMM (gemm.c) against its one-dot-product-
// per-element specification (sgemm_naive_cpu) on shapes around every blocking edge, and its
// determinism: the same bits whatever the thread count.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../ops.h"
#include "check.h"

#ifdef _OPENMP
#include <omp.h>
#endif

// C = alpha op(A) op(B) + beta C with leading dimensions wider than the matrices, so the ld
// arguments are exercised; compares the whole C (padding columns must be untouched).
static void compare_with_naive(int ta, int tb, int M, int N, int K, float alpha, float beta, uint32_t seed) {
    long lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
    size_t a_rows = ta ? K : M, b_rows = tb ? N : K;
    float* a = xmalloc(sizeof(float) * a_rows * lda);
    float* b = xmalloc(sizeof(float) * b_rows * ldb);
    float* c_fast = xmalloc(sizeof(float) * M * ldc);
    float* c_naive = xmalloc(sizeof(float) * M * ldc);
    fill_uniform(a, a_rows * lda, seed, -1, 1);
    fill_uniform(b, b_rows * ldb, seed + 1, -1, 1);
    fill_uniform(c_fast, (size_t)M * ldc, seed + 2, -1, 1);
    if (beta == 0.0f) // beta 0 must not read C: fill the fast side's C with NaN
        for (size_t i = 0; i < (size_t)M * ldc; i += 7) c_fast[i] = NAN;
    memcpy(c_naive, c_fast, sizeof(float) * M * ldc);
    if (beta == 0.0f) // the naive reference may not read C either; give it zeros in the same places
        for (size_t i = 0; i < (size_t)M * ldc; i += 7) c_naive[i] = 0.0f;
    sgemm_cpu(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c_fast, ldc);
    sgemm_naive_cpu(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c_naive, ldc);
    // the padding columns (N..ldc) are not part of C: restore NaN-free copies for the comparison
    for (int i = 0; i < M; i++)
        for (long j = N; j < ldc; j++) c_naive[i * ldc + j] = c_fast[i * ldc + j] = (float)j;
    char label[96];
    snprintf(label, sizeof(label), "sgemm t%d%d M%d N%d K%d alpha %.1f beta %.2f", ta, tb, M, N, K, alpha, beta);
    // FMA plus KC-slab accumulation vs a plain running sum: both are within K ulps of the exact
    // product; with |terms| <= 1 that bounds the difference by about K * 2^-24 * sqrt-ish growth
    check_close(label, c_fast, c_naive, (size_t)M * ldc, 2e-6f * sqrtf((float)K + 1), 1e-5f);
    free(a); free(b); free(c_fast); free(c_naive);
}

static void test_gemm_matches_naive_on_edges(void) {
    // sizes straddling MR=8, NR=32, KC=256, MC=128 and the 8-sliver task groups
    int sizes[][3] = {{1, 1, 1}, {7, 31, 5}, {8, 32, 256}, {9, 33, 257}, {129, 70, 300}, {3, 300, 17}, {130, 257, 513}};
    uint32_t seed = 1;
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) compare_with_naive(ta, tb, sizes[s][0], sizes[s][1], sizes[s][2], 1.0f, 0.0f, seed++);
    compare_with_naive(0, 1, 40, 50, 60, 0.5f, 1.0f, 100);   // accumulate (+=)
    compare_with_naive(1, 0, 40, 50, 300, -2.0f, 0.25f, 101); // alpha, beta across two KC slabs
    compare_with_naive(0, 0, 2, 3, 0, 1.0f, 0.5f, 102);     // K = 0: C = beta C
}

static void test_gemm_deterministic_across_threads(void) {
#ifdef _OPENMP
    int M = 300, N = 200, K = 700;
    float *a = xmalloc(sizeof(float) * M * K), *b = xmalloc(sizeof(float) * K * N);
    float *c1 = xmalloc(sizeof(float) * M * N), *c2 = xmalloc(sizeof(float) * M * N);
    fill_uniform(a, (size_t)M * K, 5, -1, 1);
    fill_uniform(b, (size_t)K * N, 6, -1, 1);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    sgemm_cpu(0, 0, M, N, K, 1.0f, a, K, b, N, 0.0f, c1, N);
    omp_set_num_threads(saved > 1 ? saved : 2);
    sgemm_cpu(0, 0, M, N, K, 1.0f, a, K, b, N, 0.0f, c2, N);
    omp_set_num_threads(saved);
    check_bytes_equal("1 thread vs several: identical bits", c1, c2, sizeof(float) * M * N);
    free(a); free(b); free(c1); free(c2);
#else
    test_skip("built without OpenMP (OMP=0): one thread only");
#endif
}

const TestCase tests_gemm[] = {
    {"gemm_matches_naive_on_edges", test_gemm_matches_naive_on_edges},
    {"gemm_deterministic_across_threads", test_gemm_deterministic_across_threads},
    {NULL, NULL},
};
