// gemm.c: the CPU matrix multiply that linear, matmul and conv2d are built on.
//
//   C (M x N) = alpha * op(A) (M x K) @ op(B) (K x N) + beta * C        (row-major, BLAS-like)
//
// This is the one place where the CPU path is written for speed, because almost all of a
// diffusion model's arithmetic lands here. It follows the Goto/BLIS scheme:
//
//   for each panel of NC columns of C                      (jc)
//     for each slab of KC values of the shared dimension   (pc)
//       pack B[pc:pc+KC, jc:jc+NC] into NR-wide column slivers, contiguous in k     (all threads)
//       for each task = (MC rows of C) x (a group of slivers)                        (one thread each)
//         pack A[ic:ic+MC, pc:pc+KC] into MR-tall row slivers, contiguous in k
//         for each MR x NR tile: the micro-kernel keeps the tile in registers and runs over KC
//
// Packing makes the micro-kernel's loads unit-stride whatever the transposes, and the blocks are
// sized for the caches (a B sliver of KC*NR floats stays in L1, an A block of MC*KC in L2).
// The micro-kernel is plain C: GCC vectorises its NR-wide inner loop into AVX-512 or AVX2 FMAs,
// and `target_clones` compiles it once per x86 level so one binary uses the best the CPU has.
//
// Determinism: every element of C is accumulated in the same order (k ascending, one fmaf per
// step, restarted at each KC slab and then added to C), independent of the thread count, the
// tile an element falls in and the instruction set. So results are bit-identical across runs,
// machines and OMP_NUM_THREADS. We call fmaf() explicitly (the build has -ffp-contract=off):
// it is one instruction on every x86 CPU since 2013 and on all ARM64; on older x86 it is a
// (slow but exact) library call.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define GEMM_MR 8    // rows of a register tile
#define GEMM_NR 32   // columns of a register tile: two AVX-512 vectors, four AVX2 vectors
#define GEMM_KC 256  // depth of a packed slab
#define GEMM_MC 128  // rows of C per task (multiple of MR)
#define GEMM_NC 4096 // columns of C per packed B panel (multiple of NR)
#define GEMM_TASK_SLIVERS 8 // B slivers per task, so small-M products still split across threads

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define GEMM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__SANITIZE_ADDRESS__) && defined(__GNUC__)
// The sanitizer build (make debug) leaves the micro-kernel alone, and only it: with a shadow check
// on every access to its register tile the tile never reaches registers, and the model tests run
// 100 times slower. It reads only the packed panels its caller sized and writes the mr x nr corner
// the caller bounds; the packing and edge code around it stay instrumented, and test_gemm checks
// it against the plain triple loop in every build.
#define GEMM_CLONES __attribute__((no_sanitize("address", "undefined")))
#else
#define GEMM_CLONES
#endif

// Register tile: acc = sum_p a[p][0..MR) (x) b[p][0..NR), then C = first ? alpha*acc + beta*C
// : C + alpha*acc, for the mr x nr corner of the tile that lies inside C.
GEMM_CLONES
static void gemm_microkernel(int kc, const float* restrict a, const float* restrict b, float* restrict c, long ldc,
                             int mr, int nr, float alpha, float beta, int first) {
    float acc[GEMM_MR][GEMM_NR];
    for (int i = 0; i < GEMM_MR; i++)
        for (int j = 0; j < GEMM_NR; j++) acc[i][j] = 0.0f;
    for (int p = 0; p < kc; p++) {
        const float* a_p = a + (long)p * GEMM_MR;
        const float* b_p = b + (long)p * GEMM_NR;
        for (int i = 0; i < GEMM_MR; i++) {
            float a_pi = a_p[i];
            for (int j = 0; j < GEMM_NR; j++) acc[i][j] = fmaf(a_pi, b_p[j], acc[i][j]);
        }
    }
    for (int i = 0; i < mr; i++) {
        float* c_i = c + i * ldc;
        if (!first) {
            for (int j = 0; j < nr; j++) c_i[j] += alpha * acc[i][j];
        } else if (beta == 0.0f) { // C is not read: it may hold garbage or NaN
            for (int j = 0; j < nr; j++) c_i[j] = alpha * acc[i][j];
        } else {
            for (int j = 0; j < nr; j++) c_i[j] = alpha * acc[i][j] + beta * c_i[j];
        }
    }
}

// Packs the mc x kc block of op(A) starting at (i0, p0) into MR-tall slivers, zero-padded.
static void pack_a(float* restrict dst, const float* a, long lda, int trans_a, int i0, int p0, int mc, int kc) {
    for (int ir = 0; ir < mc; ir += GEMM_MR) {
        int mr = mc - ir < GEMM_MR ? mc - ir : GEMM_MR;
        for (int p = 0; p < kc; p++) {
            for (int i = 0; i < mr; i++) {
                long row = i0 + ir + i, col = p0 + p;
                dst[p * GEMM_MR + i] = trans_a ? a[col * lda + row] : a[row * lda + col];
            }
            for (int i = mr; i < GEMM_MR; i++) dst[p * GEMM_MR + i] = 0.0f;
        }
        dst += (long)GEMM_MR * kc;
    }
}

// Packs one NR-wide sliver of op(B): rows p0..p0+kc, columns j0..j0+nr, zero-padded to NR.
static void pack_b_sliver(float* restrict dst, const float* b, long ldb, int trans_b, int p0, int j0, int kc, int nr) {
    for (int p = 0; p < kc; p++) {
        long row = p0 + p;
        if (!trans_b) {
            memcpy(dst + p * GEMM_NR, b + row * ldb + j0, sizeof(float) * nr);
        } else {
            for (int j = 0; j < nr; j++) dst[p * GEMM_NR + j] = b[(long)(j0 + j) * ldb + row];
        }
        for (int j = nr; j < GEMM_NR; j++) dst[p * GEMM_NR + j] = 0.0f;
    }
}

void sgemm_cpu(int trans_a, int trans_b, int M, int N, int K, float alpha, const float* a, long lda, const float* b,
               long ldb, float beta, float* c, long ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { // C = beta * C
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) c[(long)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(long)i * ldc + j];
        return;
    }
    int nc_max = N < GEMM_NC ? (N + GEMM_NR - 1) / GEMM_NR * GEMM_NR : GEMM_NC;
    int kc_max = K < GEMM_KC ? K : GEMM_KC;
    float* b_pack = aligned_host_malloc(sizeof(float) * (size_t)nc_max * kc_max);
    // threads only pay for themselves above about 4 MFLOP (2 M N K)
#pragma omp parallel if (2.0 * M * N * K > 4e6)
    {
        float* a_pack = aligned_host_malloc(sizeof(float) * (size_t)GEMM_MC * kc_max);
        for (int jc = 0; jc < N; jc += GEMM_NC) {
            int nc = N - jc < GEMM_NC ? N - jc : GEMM_NC;
            int slivers = (nc + GEMM_NR - 1) / GEMM_NR;
            for (int pc = 0; pc < K; pc += GEMM_KC) {
                int kc = K - pc < GEMM_KC ? K - pc : GEMM_KC;
#pragma omp for schedule(static)
                for (int s = 0; s < slivers; s++) {
                    int nr = nc - s * GEMM_NR < GEMM_NR ? nc - s * GEMM_NR : GEMM_NR;
                    pack_b_sliver(b_pack + (size_t)s * GEMM_NR * kc, b, ldb, trans_b, pc, jc + s * GEMM_NR, kc, nr);
                }
                int row_blocks = (M + GEMM_MC - 1) / GEMM_MC;
                int sliver_groups = (slivers + GEMM_TASK_SLIVERS - 1) / GEMM_TASK_SLIVERS;
#pragma omp for schedule(dynamic)
                for (int task = 0; task < row_blocks * sliver_groups; task++) {
                    int ic = (task / sliver_groups) * GEMM_MC;
                    int s0 = (task % sliver_groups) * GEMM_TASK_SLIVERS;
                    int s1 = s0 + GEMM_TASK_SLIVERS < slivers ? s0 + GEMM_TASK_SLIVERS : slivers;
                    int mc = M - ic < GEMM_MC ? M - ic : GEMM_MC;
                    pack_a(a_pack, a, lda, trans_a, ic, pc, mc, kc);
                    for (int s = s0; s < s1; s++) {
                        int j = jc + s * GEMM_NR;
                        int nr = N - j < GEMM_NR ? N - j : GEMM_NR;
                        for (int ir = 0; ir < mc; ir += GEMM_MR) {
                            int mr = mc - ir < GEMM_MR ? mc - ir : GEMM_MR;
                            gemm_microkernel(kc, a_pack + (size_t)ir * kc, b_pack + (size_t)s * GEMM_NR * kc,
                                             c + (long)(ic + ir) * ldc + j, ldc, mr, nr, alpha, beta, pc == 0);
                        }
                    }
                }
            }
        }
        aligned_host_free(a_pack);
    }
    aligned_host_free(b_pack);
}

// The specification sgemm_cpu must agree with: one dot product per element, k ascending.
void sgemm_naive_cpu(int trans_a, int trans_b, int M, int N, int K, float alpha, const float* a, long lda,
                     const float* b, long ldb, float beta, float* c, long ldc) {
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            float sum = 0.0f;
            for (int p = 0; p < K; p++) {
                float a_ip = trans_a ? a[(long)p * lda + i] : a[(long)i * lda + p];
                float b_pj = trans_b ? b[(long)j * ldb + p] : b[(long)p * ldb + j];
                sum += a_ip * b_pj;
            }
            float* c_ij = c + (long)i * ldc + j;
            *c_ij = beta == 0.0f ? alpha * sum : alpha * sum + beta * *c_ij;
        }
    }
}
