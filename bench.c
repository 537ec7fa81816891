// bench.c: `sdxl bench <what>`. Speed is measured here and in scripts/, never in timed tests.
//
//   sdxl bench matmul   C = A @ B through matmul_forward on the chosen backend, for square
//                       sizes and the GEMM shapes that dominate an SDXL UNet step at 1024x1024
//                       with CFG (batch 2): (tokens x in) @ (in x out). Reports the best of
//                       --repeat runs after one warm-up, in ms and GFLOP/s (2*M*N*K flops).
//
// scripts/bench_cpu_gemm.sh runs this beside numpy's OpenBLAS sgemm on the same shapes and
// writes the table in docs/PERF.md.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "ops.h"
#include "sdxl.h"

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    int M, N, K;
    const char* what;
} GemmShape;

static const GemmShape bench_shapes[] = {
    {512, 512, 512, "square"},
    {1024, 1024, 1024, "square"},
    {2048, 2048, 2048, "square"},
    {4096, 4096, 4096, "square"},
    {8192, 640, 640, "UNet level 1 attention projection (2x4096 tokens, 640)"},
    {8192, 5120, 640, "UNet level 1 GEGLU in (640 -> 2x2560)"},
    {2048, 1280, 1280, "UNet level 2 attention projection (2x1024 tokens, 1280)"},
    {2048, 10240, 1280, "UNet level 2 GEGLU in (1280 -> 2x5120)"},
};

static int bench_matmul(int argc, char** argv) {
    const char* backend = "cpu";
    int repeat = 3;
    int csv = 0;
    int max_size = 10240;
    Option options[] = {
        {"--backend", OPT_STRING, &backend, "cpu or cuda"},
        {"--repeat", OPT_INT, &repeat, "timed runs per shape; the best is reported"},
        {"--max-size", OPT_INT, &max_size, "skip shapes with any dimension above this (for quick runs)"},
        {"--csv", OPT_FLAG, &csv, "print M,N,K,ms,gflops lines instead of a table"},
    };
    int n_options = sizeof(options) / sizeof(options[0]);
    if (options_parse(options, n_options, argc, argv, 3, "sdxl bench matmul [options]")) return 0;
    if (repeat < 1) fatal("--repeat must be at least 1 (got %d)", repeat);
    backend_select_by_name(backend);

    if (!csv) {
#ifdef _OPENMP
        printf("sdxl bench matmul: backend %s, %d OpenMP threads\n", backend_name(backend_current()), omp_get_max_threads());
#else
        printf("sdxl bench matmul: backend %s, OpenMP off\n", backend_name(backend_current()));
#endif
        printf("%-20s %10s %10s  %s\n", "M x N x K", "ms", "GFLOP/s", "what");
    }
    for (size_t s = 0; s < sizeof(bench_shapes) / sizeof(bench_shapes[0]); s++) {
        const GemmShape* sh = &bench_shapes[s];
        if (sh->M > max_size || sh->N > max_size || sh->K > max_size) continue;
        size_t na = (size_t)sh->M * sh->K, nb = (size_t)sh->K * sh->N, nc = (size_t)sh->M * sh->N;
        float* host = xmalloc(sizeof(float) * (na > nb ? na : nb));
        float* a = device_malloc(sizeof(float) * na);
        float* b = device_malloc(sizeof(float) * nb);
        float* c = device_malloc(sizeof(float) * nc);
        for (size_t i = 0; i < na; i++) host[i] = (float)(i % 7) * 0.01f;
        copy_to_device(a, host, sizeof(float) * na);
        for (size_t i = 0; i < nb; i++) host[i] = (float)(i % 5) * 0.01f;
        copy_to_device(b, host, sizeof(float) * nb);
        matmul_forward(c, a, b, 1, sh->M, sh->N, sh->K, 0, 0, 1.0f, 0.0f, DT_F32); // warm-up
        device_synchronize();
        double best = 1e30;
        for (int r = 0; r < repeat; r++) {
            double t0 = now_seconds();
            matmul_forward(c, a, b, 1, sh->M, sh->N, sh->K, 0, 0, 1.0f, 0.0f, DT_F32);
            device_synchronize();
            double dt = now_seconds() - t0;
            if (dt < best) best = dt;
        }
        double gflops = 2.0 * sh->M * sh->N * sh->K / best / 1e9;
        if (csv) printf("%d,%d,%d,%.3f,%.1f\n", sh->M, sh->N, sh->K, best * 1e3, gflops);
        else {
            char dims[32];
            snprintf(dims, sizeof(dims), "%dx%dx%d", sh->M, sh->N, sh->K);
            printf("%-20s %10.2f %10.1f  %s\n", dims, best * 1e3, gflops, sh->what);
        }
        device_free(a);
        device_free(b);
        device_free(c);
        free(host);
    }
    return 0;
}

// sdxl bench unet: seconds per UNet evaluation for the full-size SDXL architecture with random
// weights (no download): conv_in to conv_out at --size x --size pixels (latent size / 8), batch
// --batch (2 is one classifier-free-guidance step), 77 text tokens. scripts/bench_torch.py runs
// diffusers on PyTorch the same way for docs/PERF.md.
static int bench_unet(int argc, char** argv) {
    const char* backend = "cpu";
    int size = 512, batch = 1, repeat = 2;
    Option options[] = {
        {"--backend", OPT_STRING, &backend, "cpu or cuda"},
        {"--size", OPT_INT, &size, "image side in pixels (latent side = size / 8)"},
        {"--batch", OPT_INT, &batch, "latents per evaluation (2 = one CFG step)"},
        {"--repeat", OPT_INT, &repeat, "timed evaluations after one warm-up; the best is reported"},
    };
    if (options_parse(options, sizeof(options) / sizeof(options[0]), argc, argv, 3, "sdxl bench unet [options]")) return 0;
    if (size < 64 || size % 8 != 0 || size > 4096) fatal("--size must be a multiple of 8 in [64, 4096] (got %d)", size);
    if (batch < 1 || batch > 16) fatal("--batch must be in [1, 16] (got %d)", batch);
    if (repeat < 1) fatal("--repeat must be at least 1 (got %d)", repeat);
    backend_select_by_name(backend);
    UnetConfig cfg;
    unet_config_sdxl(&cfg);
    Unet u;
    double t0 = now_seconds();
    unet_init_random(&u, &cfg, DT_F32, 42);
    size_t params = 0;
    for (int i = 0; i < u.w.count; i++) params += u.w.params[i].numel;
    printf("sdxl bench unet: SDXL base UNet, %zu parameters (%.1f GiB f32), random weights in %.1f s, backend %s\n",
           params, params * 4.0 / (1 << 30), now_seconds() - t0, backend_name(backend_current()));
    int h = size / 8, w = size / 8, L = 77;
    size_t n = (size_t)batch * 4 * h * w, n_ctx = (size_t)batch * L * cfg.cross_attention_dim;
    float* host = xmalloc(sizeof(float) * (n_ctx > n ? n_ctx : n));
    float *sample = device_malloc(sizeof(float) * n), *out = device_malloc(sizeof(float) * n);
    float *ctx = device_malloc(sizeof(float) * n_ctx), *text = device_malloc(sizeof(float) * batch * 1280);
    for (size_t i = 0; i < n_ctx; i++) host[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    copy_to_device(sample, host, sizeof(float) * n);
    copy_to_device(ctx, host, sizeof(float) * n_ctx);
    copy_to_device(text, host, sizeof(float) * batch * 1280);
    float t[16], ids[16 * 6];
    for (int b = 0; b < batch; b++) {
        t[b] = 500.0f;
        float id[6] = {(float)size, (float)size, 0, 0, (float)size, (float)size};
        memcpy(ids + 6 * b, id, sizeof(id));
    }
    Arena act;
    arena_init(&act, "unet activations", unet_activation_bytes(&cfg, batch, h, w, L, u.w.dtype),
               backend_current() == BACKEND_CUDA);
    unet_forward(&u, out, sample, t, ctx, L, text, ids, batch, h, w, &act); // warm-up
    device_synchronize();
    double best = 1e30;
    for (int r = 0; r < repeat; r++) {
        double t1 = now_seconds();
        unet_forward(&u, out, sample, t, ctx, L, text, ids, batch, h, w, &act);
        device_synchronize();
        double dt = now_seconds() - t1;
        best = dt < best ? dt : best;
    }
    printf("unet %dx%d px (latent %dx%d), batch %d: %.3f s per evaluation (best of %d)\n", size, size, h, w, batch, best,
           repeat);
    arena_report(&act);
    arena_free(&act);
    device_free(sample);
    device_free(out);
    device_free(ctx);
    device_free(text);
    free(host);
    unet_free(&u);
    return 0;
}

int bench_main(int argc, char** argv) {
    if (argc < 3 || strcmp(argv[2], "--help") == 0) {
        printf("usage: sdxl bench <what> [options]\n\n  matmul   GEMM throughput on the CPU or CUDA backend\n"
               "  unet     seconds per full-size SDXL UNet evaluation, random weights\n");
        return argc < 3 ? 1 : 0;
    }
    if (strcmp(argv[2], "matmul") == 0) return bench_matmul(argc, argv);
    if (strcmp(argv[2], "unet") == 0) return bench_unet(argc, argv);
    fatal("unknown benchmark '%s' (available: matmul, unet)", argv[2]);
}
