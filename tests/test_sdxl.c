// tests/test_sdxl.c: the text encoders and the UNet of the tiny SDXL (tests/golden/tiny_sdxl, made
// by scripts/make_golden_sdxl.py with diffusers/transformers) against the references in
// tests/golden/tiny_sdxl_ref.safetensors, on the runner's backend.
//
// Tolerances: whole networks in f32. The references ran in PyTorch f32 from the same fp16-stored
// weights, so what differs is summation order (our GEMM, attention and norm statistics vs
// oneDNN/MKL): errors of a few 1e-6 relative per layer, compounding over depth.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../clip.h"
#include "../common.h"
#include "../ops.h"
#include "../sdxl.h"
#include "check.h"

static char g_tiny[4096];
static const char* tiny(const char* sub) {
    snprintf(g_tiny, sizeof(g_tiny), "%s/%s", golden_path("tiny_sdxl"), sub);
    return g_tiny;
}

// Runs one encoder on the golden ids (2 prompts x 77) and compares its outputs.
static void check_text_encoder(const char* folder, const char* ids_name, const char* penult_name, const char* pooled_name) {
    SafeTensors ref;
    if (!golden_open(&ref, "tiny_sdxl_ref.safetensors")) return;
    ClipText m;
    char err[ERR_MAX] = "";
    if (!check_true(clip_text_load(&m, tiny(folder), NULL, err) == 0, "load %s: %s", folder, err)) {
        safetensors_close(&ref);
        return;
    }
    const SafeTensor* ids_t = safetensors_find(&ref, ids_name);
    int32_t ids[2 * 77];
    memcpy(ids, ids_t->data, sizeof(ids));
    int D = m.cfg.hidden;
    Arena scratch;
    arena_init(&scratch, "clip scratch", sizeof(float) * clip_text_scratch_floats(&m.cfg, 2, 77), backend_current() == BACKEND_CUDA);
    float* penult = backend_alloc((size_t)2 * 77 * D);
    float* pooled = pooled_name ? backend_alloc((size_t)2 * m.cfg.projection_dim) : NULL;
    clip_text_forward(&m, ids, 2, 77, penult, pooled, &scratch);
    float* got = from_backend(penult, (size_t)2 * 77 * D);
    float* want = golden_f32(&ref, penult_name, NULL);
    char label[128];
    snprintf(label, sizeof(label), "%s hidden_states[-2] (2, 77, %d)", folder, D);
    // 3 layers of width 32/64: f32 summation-order noise only
    if (want) check_close(label, got, want, (size_t)2 * 77 * D, 1e-5f, 1e-4f);
    free(got);
    free(want);
    if (pooled_name) {
        got = from_backend(pooled, (size_t)2 * m.cfg.projection_dim);
        want = golden_f32(&ref, pooled_name, NULL);
        snprintf(label, sizeof(label), "%s text_embeds (pooled, projected)", folder);
        if (want) check_close(label, got, want, (size_t)2 * m.cfg.projection_dim, 1e-5f, 1e-4f);
        free(got);
        free(want);
    }
    arena_report(&scratch);
    arena_free(&scratch);
    clip_text_free(&m);
    safetensors_close(&ref);
}

static void test_sdxl_text_encoder_1(void) { check_text_encoder("text_encoder", "te1.ids", "te1.penultimate", NULL); }
static void test_sdxl_text_encoder_2(void) {
    check_text_encoder("text_encoder_2", "te2.ids", "te2.penultimate", "te2.text_embeds");
}

// One UNet evaluation at the latent size of golden case `name` (e.g. "unet_6x9").
static void check_unet(const char* name) {
    SafeTensors ref;
    if (!golden_open(&ref, "tiny_sdxl_ref.safetensors")) return;
    Unet u;
    char err[ERR_MAX] = "", key[128];
    if (!check_true(unet_load(&u, tiny("unet"), NULL, err) == 0, "load unet: %s", err)) {
        safetensors_close(&ref);
        return;
    }
    int64_t shape[4];
    snprintf(key, sizeof(key), "%s.sample", name);
    golden_shape(&ref, key, shape);
    int N = (int)shape[0], h = (int)shape[2], w = (int)shape[3];
    size_t n = (size_t)N * 4 * h * w;
#define G(field) (snprintf(key, sizeof(key), "%s.%s", name, field), golden_f32(&ref, key, NULL))
    float *sample = G("sample"), *t = G("t"), *ctx = G("ctx"), *text = G("text_embeds"), *ids = G("time_ids"), *want = G("out");
#undef G
    if (!sample || !t || !ctx || !text || !ids || !want) return;
    int Lctx = 77;
    Arena act;
    size_t need = unet_activation_floats(&u.cfg, N, h, w, Lctx);
    arena_init(&act, "unet activations", sizeof(float) * need, backend_current() == BACKEND_CUDA);
    float* d_out = backend_alloc(n);
    double t0 = now_seconds();
    unet_forward(&u, d_out, to_backend(sample, n), t, to_backend(ctx, (size_t)N * Lctx * u.cfg.cross_attention_dim), Lctx,
                 to_backend(text, (size_t)N * 32), ids, N, h, w, &act);
    device_synchronize();
    printf("  unet forward %dx%d, batch %d: %.3f s\n", h, w, N, now_seconds() - t0);
    float* got = from_backend(d_out, n);
    char label[96];
    snprintf(label, sizeof(label), "UNet eps, latent %dx%d, batch %d", h, w, N);
    // ~40 layers deep with attention, GEGLU and group norms; the outputs are of order 1
    check_close(label, got, want, n, 2e-5f, 1e-4f);
    arena_report(&act);
    check_true(act.high_water <= act.capacity, "activation arena of unet_activation_floats() was enough");
    arena_free(&act);
    free(got); free(sample); free(t); free(ctx); free(text); free(ids); free(want);
    unet_free(&u);
    safetensors_close(&ref);
}

static void test_sdxl_unet_odd_latent(void) { check_unet("unet_6x9"); }
static void test_sdxl_unet_square_latent(void) { check_unet("unet_8x8"); }

const TestCase tests_sdxl[] = {
    {"sdxl_text_encoder_1", test_sdxl_text_encoder_1},
    {"sdxl_text_encoder_2", test_sdxl_text_encoder_2},
    {"sdxl_unet_odd_latent", test_sdxl_unet_odd_latent},
    {"sdxl_unet_square_latent", test_sdxl_unet_square_latent},
    {NULL, NULL},
};
