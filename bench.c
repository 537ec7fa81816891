// bench.c: `sdxl bench <what>`. Speed is measured here and in scripts/, never in timed tests.
//
//   sdxl bench matmul    C = A @ B through matmul_forward on the chosen backend and --precision,
//                        for square sizes and the GEMM shapes that dominate an SDXL UNet step
//                        at 1024x1024 with CFG (batch 2): (tokens x in) @ (in x out). Reports
//                        the best of --repeat runs after one warm-up, in ms and GFLOP/s.
//   sdxl bench unet      seconds per full-size SDXL UNet evaluation (random weights made on the
//                        backend, nothing downloaded) at 1024x1024 and 1368x768, batch 2 (one
//                        CFG step): it/s, achieved TFLOP/s (unet_flops) and peak device memory.
//   sdxl bench generate  one whole storyboard thumbnail (1365x768, 25 Euler steps, CFG 12) on a
//                        random full-size SDXL: text encoders, denoising, VAE, as `generate`.
//   sdxl bench train     seconds per LoRA training micro-step (forward, loss, backward) and per
//                        optimizer step on a random full-size SDXL UNet at 1024x1024, batch 1,
//                        with and without gradient checkpointing, and the peak memory.
//
// scripts/bench_cpu_gemm.sh runs the matmul bench beside numpy's OpenBLAS sgemm, and
// scripts/gpu_check.sh runs all three beside diffusers on the same GPU.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "common.h"
#include "demo.h"
#include "ops.h"
#include "pipeline.h"
#include "sdxl.h"
#include "train.h"

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
    const char* precision = "fp32";
    int repeat = 3;
    int csv = 0;
    int max_size = 10240;
    Option options[] = {
        {"--backend", OPT_STRING, &backend, "cpu or cuda"},
        {"--precision", OPT_STRING, &precision, "storage of A, B and C: fp32, fp16 or bf16 (f32 accumulation)"},
        {"--repeat", OPT_INT, &repeat, "timed runs per shape; the best is reported"},
        {"--max-size", OPT_INT, &max_size, "skip shapes with any dimension above this (for quick runs)"},
        {"--csv", OPT_FLAG, &csv, "print M,N,K,ms,gflops lines instead of a table"},
    };
    int n_options = sizeof(options) / sizeof(options[0]);
    if (options_parse(options, n_options, argc, argv, 3, "sdxl bench matmul [options]")) return 0;
    if (repeat < 1) fatal("--repeat must be at least 1 (got %d)", repeat);
    backend_select_by_name(backend);
    DType dt = (DType)precision_by_name(precision, "--precision");

    if (!csv) {
#ifdef _OPENMP
        printf("sdxl bench matmul: backend %s, %s, %d OpenMP threads\n", backend_name(backend_current()), precision,
               omp_get_max_threads());
#else
        printf("sdxl bench matmul: backend %s, %s, OpenMP off\n", backend_name(backend_current()), precision);
#endif
        printf("%-20s %10s %10s  %s\n", "M x N x K", "ms", "GFLOP/s", "what");
    }
    for (size_t s = 0; s < sizeof(bench_shapes) / sizeof(bench_shapes[0]); s++) {
        const GemmShape* sh = &bench_shapes[s];
        if (sh->M > max_size || sh->N > max_size || sh->K > max_size) continue;
        size_t na = (size_t)sh->M * sh->K, nb = (size_t)sh->K * sh->N, nc = (size_t)sh->M * sh->N;
        // random values, never zeros (METHOD.md: a product of zeros can run faster than real data)
        size_t es = dtype_size(dt);
        float* host = xmalloc(sizeof(float) * (na > nb ? na : nb));
        void* stored = xmalloc(es * (na > nb ? na : nb));
        void* a = device_malloc(es * na);
        void* b = device_malloc(es * nb);
        void* c = device_malloc(es * nc);
        uint64_t state = 12345;
        for (size_t i = 0; i < na; i++) host[i] = (float)((state = state * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
        convert_from_f32(stored, dt, host, na);
        copy_to_device(a, stored, es * na);
        for (size_t i = 0; i < nb; i++) host[i] = (float)((state = state * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
        convert_from_f32(stored, dt, host, nb);
        copy_to_device(b, stored, es * nb);
        free(stored);
        matmul_forward(c, a, b, 1, sh->M, sh->N, sh->K, 0, 0, 1.0f, 0.0f, dt); // warm-up
        device_synchronize();
        double best = 1e30;
        for (int r = 0; r < repeat; r++) {
            double t0 = now_seconds();
            matmul_forward(c, a, b, 1, sh->M, sh->N, sh->K, 0, 0, 1.0f, 0.0f, dt);
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

// ----------------------------------------------------------------------------
// Full-size models with random weights, made on the backend

static double mib(size_t bytes) { return bytes / 1048576.0; }

// The whole SDXL base architecture with Gaussian random weights (weights_fill_random_gaussian),
// and the demo's byte-level tokenizers (written under build/bench_tokenizer*): what `generate`
// runs, minus the download.
static void random_sdxl(SdxlModel* m, const SdxlPrecision* p) {
    char err[ERR_MAX];
    memset(m, 0, sizeof(*m));
    snprintf(m->name, sizeof(m->name), "random SDXL");
    mkdir("build", 0755); // an existing folder is fine; the tokenizer writer reports anything else
    if (demo_tokenizer_write("build/bench_tokenizer", "<|endoftext|>", err) != 0 || tokenizer_load(&m->tok1, "build/bench_tokenizer", err) != 0)
        fatal("%s", err);
    if (demo_tokenizer_write("build/bench_tokenizer_2", "!", err) != 0 || tokenizer_load(&m->tok2, "build/bench_tokenizer_2", err) != 0)
        fatal("%s", err);
    ClipTextConfig c1, c2;
    clip_text_config_sdxl(&c1, 1);
    clip_text_config_sdxl(&c2, 2);
    clip_text_allocate(&m->te1, &c1, p->text);
    clip_text_allocate(&m->te2, &c2, p->text);
    UnetConfig uc;
    unet_config_sdxl(&uc);
    unet_allocate(&m->unet, &uc, p->unet);
    VaeConfig vc;
    vae_config_sdxl(&vc);
    vae_allocate(&m->vae, &vc, p->vae);
    weights_fill_random_gaussian(&m->te1.w, 1);
    weights_fill_random_gaussian(&m->te2.w, 2);
    weights_fill_random_gaussian(&m->unet.w, 3);
    weights_fill_random_gaussian(&m->vae.weights, 4);
    scheduler_config_sdxl(&m->sched);
    m->force_zeros_for_empty_prompt = 1;
}

static int compare_doubles(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}

// sdxl bench unet: seconds per UNet evaluation for the full-size SDXL architecture with random
// weights, conv_in to conv_out, batch --batch (2 is one classifier-free-guidance step), 77 text
// tokens; by default at 1024x1024 and 1368x768 (the storyboard size, 1365 rounded up to 8), or
// at --width x --height (or --size square). One warm-up, then --repeat timed evaluations: the
// median and the best, the steps per second that makes (batch 2: denoising steps with CFG), the
// achieved TFLOP/s (unet_flops / time) and the peak device memory. scripts/bench_torch.py runs
// diffusers the same way.
static int bench_unet(int argc, char** argv) {
    const char* backend = "cpu";
    const char* precision = "auto";
    int size = 0, width = 0, height = 0, batch = 2, repeat = 5;
    Option options[] = {
        {"--backend", OPT_STRING, &backend, "cpu or cuda"},
        {"--precision", OPT_STRING, &precision, "UNet precision: fp32, fp16, bf16, or auto (fp16 on cuda, fp32 on the CPU)"},
        {"--width", OPT_INT, &width, "image width in pixels (a multiple of 8; 0: 1024x1024 then 1368x768)"},
        {"--height", OPT_INT, &height, "image height in pixels"},
        {"--size", OPT_INT, &size, "a square image side in pixels (the same as --width S --height S)"},
        {"--batch", OPT_INT, &batch, "latents per evaluation (2 = one CFG step)"},
        {"--repeat", OPT_INT, &repeat, "timed evaluations after one warm-up"},
    };
    if (options_parse(options, sizeof(options) / sizeof(options[0]), argc, argv, 3, "sdxl bench unet [options]")) return 0;
    if (size) width = height = size;
    int sizes[2][2] = {{1024, 1024}, {1368, 768}}, n_sizes = 2;
    if (width || height) {
        if (width < 64 || height < 64 || width % 8 || height % 8 || width > 4096 || height > 4096)
            fatal("--width and --height must be multiples of 8 in [64, 4096] (got %dx%d)", width, height);
        sizes[0][0] = width;
        sizes[0][1] = height;
        n_sizes = 1;
    }
    if (batch < 1 || batch > 16) fatal("--batch must be in [1, 16] (got %d)", batch);
    if (repeat < 1 || repeat > 1000) fatal("--repeat must be in [1, 1000] (got %d)", repeat);
    backend_select_by_name(backend);
    SdxlPrecision prec = model_precision(precision, "auto");
    UnetConfig cfg;
    unet_config_sdxl(&cfg);
    Unet u;
    double t0 = now_seconds();
    unet_allocate(&u, &cfg, prec.unet);
    weights_fill_random_gaussian(&u.w, 42);
    size_t params = 0;
    for (int i = 0; i < u.w.count; i++) params += u.w.params[i].numel;
    printf("sdxl bench unet: SDXL base UNet, %zu parameters (%.2f GiB %s), random weights in %.1f s, backend %s\n", params,
           params * (double)dtype_size(prec.unet) / (1 << 30), precision_name(prec.unet), now_seconds() - t0,
           backend_name(backend_current()));
    for (int sz = 0; sz < n_sizes; sz++) {
        int W = sizes[sz][0], H = sizes[sz][1], h = H / 8, w = W / 8, L = 77;
        size_t n = (size_t)batch * 4 * h * w, n_ctx = (size_t)batch * L * cfg.cross_attention_dim;
        size_t n_text = (size_t)batch * (cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim);
        float* host = xmalloc(sizeof(float) * (n_ctx > n ? n_ctx : n));
        float *sample = device_malloc(sizeof(float) * n), *out = device_malloc(sizeof(float) * n);
        float *ctx = device_malloc(sizeof(float) * n_ctx), *text = device_malloc(sizeof(float) * n_text);
        for (size_t i = 0; i < n_ctx; i++) host[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
        copy_to_device(sample, host, sizeof(float) * n);
        copy_to_device(ctx, host, sizeof(float) * n_ctx);
        copy_to_device(text, host, sizeof(float) * n_text);
        float t[16], ids[16 * 6];
        for (int b = 0; b < batch; b++) {
            t[b] = 500.0f;
            float id[6] = {(float)H, (float)W, 0, 0, (float)H, (float)W};
            memcpy(ids + 6 * b, id, sizeof(id));
        }
        Arena act;
        arena_init(&act, "unet activations", unet_activation_bytes(&cfg, batch, h, w, L, u.w.dtype),
                   backend_current() == BACKEND_CUDA);
        device_memory_peak_reset();
        unet_forward(&u, out, sample, t, ctx, L, text, ids, batch, h, w, &act); // warm-up
        device_synchronize();
        double* times = xmalloc(sizeof(double) * repeat);
        for (int r = 0; r < repeat; r++) {
            double t1 = now_seconds();
            unet_forward(&u, out, sample, t, ctx, L, text, ids, batch, h, w, &act);
            device_synchronize();
            times[r] = now_seconds() - t1;
        }
        qsort(times, repeat, sizeof(double), compare_doubles);
        double median = times[repeat / 2], best = times[0];
        double flops = unet_flops(&cfg, batch, h, w, L);
        // the old one-line form first (scripts read "<s> s per evaluation")
        printf("unet %dx%d px (latent %dx%d), batch %d, %s: %.4f s per evaluation (median of %d; best %.4f)\n", W, H, w, h,
               batch, precision_name(prec.unet), median, repeat, best);
        printf("  %.2f evaluations/s%s, %.1f TFLOP/s (%.3f TFLOP each)", 1.0 / median,
               batch == 2 ? " = denoising steps/s with CFG" : "", flops / median / 1e12, flops / 1e12);
        if (backend_current() == BACKEND_CUDA)
            printf(", peak device memory %.0f MiB held by sdxl.c (weights %.0f, activations %.0f), %.0f MiB in use on the device",
                   mib(device_memory_peak()), mib(u.w.arena.capacity), mib(act.high_water), mib(device_memory_in_use_on_device()));
        printf("\n");
        arena_free(&act);
        device_free(sample);
        device_free(out);
        device_free(ctx);
        device_free(text);
        free(host);
        free(times);
    }
    unet_free(&u);
    return 0;
}

#define BENCH_PROMPT "a detective opens a door, black and white storyboard"
#define BENCH_NEGATIVE "colors, color, colorful, double body, double face"

// sdxl bench generate: `generate`'s whole path on a random full-size SDXL: the storyboard prompt
// and negative prompt through both text encoders, --steps Euler steps with CFG at the storyboard
// size, the VAE decode, the 8-bit image. One warm-up generation (2 steps), then the timed one.
static int bench_generate(int argc, char** argv) {
    const char* backend = "cpu";
    const char* precision = "auto";
    const char* vae_precision = "auto";
    int width = 1365, height = 768, steps = 25;
    Option options[] = {
        {"--backend", OPT_STRING, &backend, "cpu or cuda"},
        {"--precision", OPT_STRING, &precision, "UNet precision: fp32, fp16, bf16, or auto (fp16 on cuda, fp32 on the CPU)"},
        {"--vae-precision", OPT_STRING, &vae_precision, "VAE precision: fp32, bf16, or auto (bf16 on cuda, fp32 on the CPU)"},
        {"--width", OPT_INT, &width, "output width in pixels"},
        {"--height", OPT_INT, &height, "output height in pixels"},
        {"--steps", OPT_INT, &steps, "Euler steps"},
    };
    if (options_parse(options, sizeof(options) / sizeof(options[0]), argc, argv, 3, "sdxl bench generate [options]")) return 0;
    if (width < 64 || height < 64 || width > 4096 || height > 4096) fatal("--width and --height must be in 64..4096");
    if (steps < 1 || steps > 1000) fatal("--steps must be in 1..1000 (got %d)", steps);
    backend_select_by_name(backend);
    SdxlPrecision prec = model_precision(precision, vae_precision);
    double t0 = now_seconds();
    SdxlModel m;
    random_sdxl(&m, &prec);
    device_synchronize();
    printf("sdxl bench generate: random full-size SDXL (UNet %s, VAE %s, text encoders %s) built in %.1f s on %s\n",
           precision_name(prec.unet), precision_name(prec.vae), precision_name(prec.text), now_seconds() - t0,
           backend_name(backend_current()));
    GenerateParams p = {0};
    // The demo's byte-level tokenizer makes a token of every character, so these stay within one
    // 77-token chunk each, as the storyboard prompt does with SDXL's BPE (about 25 tokens). The
    // job's long negative prompt is two chunks with the real tokenizer: a little more text
    // encoding and cross-attention over 154 tokens instead of 77 (scripts/bench_torch.py uses
    // the same two prompts; diffusers would cut a longer one at 77 tokens).
    p.prompt = BENCH_PROMPT;
    p.negative = BENCH_NEGATIVE;
    p.width = width;
    p.height = height;
    p.cfg = 12.0f;
    p.seed = 42;
    p.sampler = SAMPLER_EULER;
    p.quiet = 1;
    Image img;
    char err[ERR_MAX];
    GenerateTimings warm, timed;
    p.steps = 2;
    p.timings = &warm;
    if (sdxl_generate(&m, &p, &img, NULL, err) != 0) fatal("%s", err);
    image_free(&img);
    device_memory_peak_reset();
    p.steps = steps;
    p.timings = &timed;
    if (sdxl_generate(&m, &p, &img, NULL, err) != 0) fatal("%s", err);
    image_free(&img);
    printf("thumbnail %dx%d, %d Euler steps, CFG 12: %.3f s end to end\n", width, height, steps, timed.total);
    printf("  text encoders %.3f s, denoising %.3f s (%.2f steps/s), VAE decode %.3f s, the rest %.3f s\n", timed.text,
           timed.denoise, steps / timed.denoise, timed.decode, timed.total - timed.text - timed.denoise - timed.decode);
    if (backend_current() == BACKEND_CUDA)
        printf("  peak device memory %.0f MiB held by sdxl.c, %.0f MiB in use on the device\n", mib(device_memory_peak()),
               mib(device_memory_in_use_on_device()));
    sdxl_model_free(&m);
    return 0;
}

// sdxl bench train: the trainer's micro-step (forward with the adapters, the loss, the backward to
// the adapters' gradients) and optimizer step (--accum micro-steps, then unscale, clip, AdamW) on
// the SDXL base UNet with random weights (or the architecture of --unet-config, e.g. the tiny test
// model, for comparing the CPU path with PyTorch), diffusers' LoRA (rank 4 on q/k/v/out) at
// 1024x1024, batch 1, 77 text tokens; with gradient checkpointing off and on. One warm-up
// micro-step, then --repeat timed ones (median), then one timed optimizer step. Reports the time
// 15,000 steps of 4 micro-batches would take and the peak memory. scripts/bench_torch.py train runs
// diffusers + peft the same way.
static int bench_train(int argc, char** argv) {
    const char* backend = "cpu";
    const char* precision = "auto";
    const char* checkpointing = "both";
    const char* unet_config = NULL;
    const char* targets = "attention";
    int size = 1024, width = 0, height = 0, batch = 1, repeat = 3, accum = 4, rank = 4, plan = 0;
    Option options[] = {
        {"--backend", OPT_STRING, &backend, "cpu or cuda"},
        {"--precision", OPT_STRING, &precision, "UNet precision: fp32, fp16, bf16, or auto (fp16 on cuda, fp32 on the CPU)"},
        {"--size", OPT_INT, &size, "square training images of this side in pixels"},
        {"--width", OPT_INT, &width, "image width in pixels (with --height, instead of --size)"},
        {"--height", OPT_INT, &height, "image height in pixels"},
        {"--batch", OPT_INT, &batch, "images per micro-batch"},
        {"--accum", OPT_INT, &accum, "micro-batches per optimizer step"},
        {"--rank", OPT_INT, &rank, "LoRA rank"},
        {"--targets", OPT_STRING, &targets, "attention or transformer"},
        {"--checkpointing", OPT_STRING, &checkpointing, "off, on, or both (one after the other)"},
        {"--unet-config", OPT_STRING, &unet_config, "a unet/config.json instead of SDXL base's (random weights)"},
        {"--repeat", OPT_INT, &repeat, "timed micro-steps after one warm-up"},
        {"--plan", OPT_FLAG, &plan, "only print the memory plan (weights, LoRA, activation arenas); run nothing"},
    };
    if (options_parse(options, sizeof(options) / sizeof(options[0]), argc, argv, 3, "sdxl bench train [options]")) return 0;
    if (!width) width = size;
    if (!height) height = size;
    if (width < 64 || height < 64 || width % 8 || height % 8 || width > 4096 || height > 4096)
        fatal("--width and --height must be multiples of 8 in [64, 4096] (got %dx%d)", width, height);
    if (batch < 1 || batch > 16 || accum < 1 || repeat < 1 || rank < 1) fatal("--batch, --accum, --repeat and --rank must be positive");
    int modes[2] = {0, 1}, n_modes = 2;
    if (strcmp(checkpointing, "off") == 0) n_modes = 1;
    else if (strcmp(checkpointing, "on") == 0) modes[0] = 1, n_modes = 1;
    else if (strcmp(checkpointing, "both") != 0) fatal("--checkpointing: expected off, on or both, got '%s'", checkpointing);
    UnetLoraTargets target_set = UNET_LORA_ATTENTION;
    if (strcmp(targets, "transformer") == 0) target_set = UNET_LORA_TRANSFORMER;
    else if (strcmp(targets, "attention") != 0) fatal("--targets: expected attention or transformer, got '%s'", targets);
    backend_select_by_name(backend);
    SdxlPrecision prec = model_precision(precision, "auto");
    char err[ERR_MAX];
    UnetConfig cfg;
    if (unet_config) {
        if (unet_config_read(&cfg, unet_config, err) != 0) fatal("%s", err);
    } else {
        unet_config_sdxl(&cfg);
    }
    Unet u;
    double t0 = now_seconds();
    unet_allocate(&u, &cfg, prec.unet);
    if (!plan) weights_fill_random_gaussian(&u.w, 42); // the plan needs the shapes only
    size_t params = 0;
    for (int i = 0; i < u.w.count; i++) params += u.w.params[i].numel;
    int h = height / 8, w = width / 8, L = 77, pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim;
    printf("sdxl bench train: %s UNet, %zu parameters (%s), random weights in %.1f s, backend %s; %dx%d px (latent %dx%d), "
           "batch %d, %d micro-batches per step\n",
           unet_config ? unet_config : "SDXL base", params, precision_name(prec.unet), now_seconds() - t0,
           backend_name(backend_current()), width, height, w, h, batch, accum);
    // one micro-batch of random inputs, used for every step
    size_t n = (size_t)batch * 4 * h * w;
    float* latents = xmalloc(sizeof(float) * n);
    float* noise = xmalloc(sizeof(float) * n);
    float* context = xmalloc(sizeof(float) * batch * L * cfg.cross_attention_dim);
    float* text = xmalloc(sizeof(float) * batch * pooled);
    float* ids = xmalloc(sizeof(float) * batch * 6);
    int64_t* t = xmalloc(sizeof(int64_t) * batch);
    TorchGenerator g;
    torch_manual_seed(&g, 1);
    torch_randn(&g, latents, n);
    torch_randn(&g, noise, n);
    torch_randn(&g, context, (size_t)batch * L * cfg.cross_attention_dim);
    torch_randn(&g, text, (size_t)batch * pooled);
    for (int b = 0; b < batch; b++) {
        float id[6] = {(float)height, (float)width, 0, 0, (float)height, (float)width};
        memcpy(ids + 6 * b, id, sizeof(id));
        t[b] = 500;
    }
    MicroBatch mb = {latents, noise, t, context, text, ids, batch, h, w, L};
    SchedulerConfig sc;
    scheduler_config_sdxl(&sc);
    double flops = unet_flops(&cfg, batch, h, w, L);
    for (int m = 0; m < n_modes; m++) {
        int ckpt = modes[m];
        TrainObjective obj = train_objective_default();
        obj.grad_accum = accum;
        obj.loss_scaling = prec.unet == DT_F16;
        LoraTrainConfig lc = {rank, (float)rank, target_set, 0, 0.0f};
        Trainer tr;
        TorchGenerator init;
        torch_manual_seed(&init, 0);
        device_memory_peak_reset();
        size_t work_rows = (size_t)batch * h * w + (size_t)batch * L;
        if (trainer_init(&tr, &u, &lc, &init, &obj, ckpt, batch, h, w, L, work_rows, err) != 0) fatal("%s", err);
        if (plan) {
            printf("checkpointing %-3s: UNet weights %.0f MiB, LoRA %d layers %zu parameters (f32 masters, grads and two "
                   "AdamW moments: %.0f MiB), activation arena %.0f MiB\n",
                   ckpt ? "on" : "off", mib(u.w.arena.capacity), tr.lora.count, tr.lora.total,
                   mib(4 * sizeof(float) * tr.lora.total), mib(tr.act.capacity));
            trainer_free(&tr);
            continue;
        }
        noise_schedule_init(&tr.noise, &sc);
        trainer_micro_step(&tr, &mb); // warm-up
        device_synchronize();
        double* times = xmalloc(sizeof(double) * repeat);
        for (int r = 0; r < repeat; r++) {
            double t1 = now_seconds();
            trainer_micro_step(&tr, &mb);
            device_synchronize();
            times[r] = now_seconds() - t1;
        }
        qsort(times, repeat, sizeof(double), compare_doubles);
        UpdateInfo info;
        trainer_update(&tr, &info); // (finishes the accumulation the timed steps started)
        double t2 = now_seconds();
        for (int k = 0; k < accum; k++) trainer_micro_step(&tr, &mb);
        trainer_update(&tr, &info);
        device_synchronize();
        double step = now_seconds() - t2, median = times[repeat / 2];
        char eta[32];
        double total = step * 15000;
        snprintf(eta, sizeof(eta), "%.1f h", total / 3600);
        printf("checkpointing %-3s: %.4f s per micro-step (median of %d; best %.4f), %.3f s per optimizer step of %d: "
               "15,000 steps in %s; ~%.1f TFLOP/s (forward + input backward%s = %.0fx the forward's %.2f TFLOP)\n",
               ckpt ? "on" : "off", median, repeat, times[0], step, accum, eta, flops * (2 + ckpt) / median / 1e12,
               ckpt ? " + recompute" : "", 2.0 + ckpt, flops / 1e12);
        printf("  LoRA: %d layers, %zu parameters; activations arena %.0f MiB (high water %.0f MiB)", tr.lora.count,
               tr.lora.total, mib(tr.act.capacity), mib(tr.act.high_water));
        if (backend_current() == BACKEND_CUDA)
            printf("; peak device memory %.0f MiB held by sdxl.c (UNet weights %.0f), %.0f MiB in use on the device",
                   mib(device_memory_peak()), mib(u.w.arena.capacity), mib(device_memory_in_use_on_device()));
        printf("\n");
        free(times);
        trainer_free(&tr);
    }
    free(latents), free(noise), free(context), free(text), free(ids), free(t);
    unet_free(&u);
    return 0;
}

int bench_main(int argc, char** argv) {
    if (argc < 3 || strcmp(argv[2], "--help") == 0) {
        printf("usage: sdxl bench <what> [options]\n\n  matmul     GEMM throughput on the CPU or CUDA backend\n"
               "  unet       seconds per full-size SDXL UNet evaluation, random weights\n"
               "  generate   one whole storyboard thumbnail on a random full-size SDXL\n"
               "  train      seconds per LoRA training step (full-size UNet, 1024^2), with and without checkpointing\n");
        return argc < 3 ? 1 : 0;
    }
    if (strcmp(argv[2], "matmul") == 0) return bench_matmul(argc, argv);
    if (strcmp(argv[2], "unet") == 0) return bench_unet(argc, argv);
    if (strcmp(argv[2], "generate") == 0) return bench_generate(argc, argv);
    if (strcmp(argv[2], "train") == 0) return bench_train(argc, argv);
    fatal("unknown benchmark '%s' (available: matmul, unet, generate, train)", argv[2]);
}
