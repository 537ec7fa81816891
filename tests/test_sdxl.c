// tests/test_sdxl.c: the text encoders and the UNet of the tiny SDXL (tests/golden/tiny_sdxl, made
// by scripts/make_golden_sdxl.py with diffusers/transformers) against the references in
// tests/golden/tiny_sdxl_ref.safetensors, on the runner's backend.
//
// Tolerances: whole networks in f32. The references ran in PyTorch f32 from the same fp16-stored
// weights, so what differs is summation order (our GEMM, attention and norm statistics vs
// oneDNN/MKL): errors of a few 1e-6 relative per layer, compounding over depth.
#include <math.h>
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

// Runs one encoder, stored and run in dtype, on the golden ids (2 prompts x 77) and compares its
// outputs with transformers' f32 ones within atol + rtol * |want|.
static void check_text_encoder_as(const char* folder, const char* ids_name, const char* penult_name, const char* pooled_name,
                                  DType dtype, float atol, float rtol) {
    SafeTensors ref;
    if (!golden_open(&ref, "tiny_sdxl_ref.safetensors")) return;
    ClipText m;
    char err[ERR_MAX] = "";
    if (!check_true(clip_text_load(&m, tiny(folder), NULL, dtype, err) == 0, "load %s (%s): %s", folder, dtype_name(dtype), err)) {
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
    snprintf(label, sizeof(label), "%s %s hidden_states[-2] (2, 77, %d)", folder, dtype_name(dtype), D);
    if (want) check_close(label, got, want, (size_t)2 * 77 * D, atol, rtol);
    free(got);
    free(want);
    if (pooled_name) {
        got = from_backend(pooled, (size_t)2 * m.cfg.projection_dim);
        want = golden_f32(&ref, pooled_name, NULL);
        snprintf(label, sizeof(label), "%s %s text_embeds (pooled, projected)", folder, dtype_name(dtype));
        if (want) check_close(label, got, want, (size_t)2 * m.cfg.projection_dim, atol, rtol);
        free(got);
        free(want);
    }
    arena_report(&scratch);
    arena_free(&scratch);
    clip_text_free(&m);
    safetensors_close(&ref);
}

// The same encoder read from the SGM single-file layout (tests/golden/sgm/tiny_sdxl_te.safetensors,
// whose renaming diffusers' own converters validated): CLIP-L in transformers names under
// conditioner.embedders.0.transformer., bigG in open_clip names (fused in_proj, P transposed).
static void check_text_encoder_sgm(const char* folder, int open_clip, const char* ids_name, const char* penult_name,
                                   const char* pooled_name) {
    SafeTensors ref, st;
    char err[ERR_MAX] = "", path[4200];
    if (!golden_open(&ref, "tiny_sdxl_ref.safetensors")) return;
    if (!golden_open(&st, "sgm/tiny_sdxl_te.safetensors")) return;
    ClipTextConfig cfg;
    snprintf(path, sizeof(path), "%s/config.json", tiny(folder));
    if (!check_true(clip_text_config_read(&cfg, path, err) == 0, "config %s", err)) return;
    ClipText m;
    const char* prefix = open_clip ? "conditioner.embedders.1.model." : "conditioner.embedders.0.transformer.";
    if (!check_true(clip_text_load_from(&m, &cfg, &st, prefix, open_clip, DT_F32, err) == 0, "load %s from the SGM layout: %s",
                    folder, err))
        return;
    const SafeTensor* ids_t = safetensors_find(&ref, ids_name);
    int32_t ids[2 * 77];
    memcpy(ids, ids_t->data, sizeof(ids));
    Arena scratch;
    arena_init(&scratch, "clip scratch", sizeof(float) * clip_text_scratch_floats(&cfg, 2, 77), backend_current() == BACKEND_CUDA);
    float* penult = backend_alloc((size_t)2 * 77 * cfg.hidden);
    float* pooled = pooled_name ? backend_alloc((size_t)2 * cfg.projection_dim) : NULL;
    clip_text_forward(&m, ids, 2, 77, penult, pooled, &scratch);
    float* got = from_backend(penult, (size_t)2 * 77 * cfg.hidden);
    float* want = golden_f32(&ref, penult_name, NULL);
    char label[128];
    snprintf(label, sizeof(label), "%s from SGM layout: hidden_states[-2]", folder);
    if (want) check_close(label, got, want, (size_t)2 * 77 * cfg.hidden, 1e-5f, 1e-4f);
    free(got);
    free(want);
    if (pooled_name) {
        got = from_backend(pooled, (size_t)2 * cfg.projection_dim);
        want = golden_f32(&ref, pooled_name, NULL);
        if (want) check_close("bigG from SGM layout: text_embeds (P transposed)", got, want, (size_t)2 * cfg.projection_dim,
                              1e-5f, 1e-4f);
        free(got);
        free(want);
    }
    arena_free(&scratch);
    clip_text_free(&m);
    safetensors_close(&st);
    safetensors_close(&ref);
}

static void test_sdxl_text_encoders_sgm_layout(void) {
    check_text_encoder_sgm("text_encoder", 0, "te1.ids", "te1.penultimate", NULL);
    check_text_encoder_sgm("text_encoder_2", 1, "te2.ids", "te2.penultimate", "te2.text_embeds");
}

// unet_sgm_name against every {SGM key: diffusers name} pair of the tiny UNet, as diffusers'
// convert_ldm_unet_checkpoint confirmed them (tests/golden/sgm/unet_keys.json).
static void test_sdxl_unet_sgm_names(void) {
    JsonDoc doc;
    char err[ERR_MAX] = "";
    if (!check_true(json_read_file(&doc, golden_path("sgm/unet_keys.json"), err) == 0, "read unet_keys.json: %s", err)) return;
    UnetConfig cfg;
    char path[4200];
    snprintf(path, sizeof(path), "%s/config.json", tiny("unet"));
    if (!check_true(unet_config_read(&cfg, path, err) == 0, "unet config: %s", err)) return;
    int wrong = 0;
    for (size_t i = 0; i < doc.root.length; i++) {
        char got[256];
        const char* diffusers = doc.root.items[i].string;
        if (unet_sgm_name(&cfg, diffusers, got, sizeof(got)) != 0 || strcmp(got, doc.root.keys[i]) != 0) {
            if (wrong++ < 5) printf("    %s -> %s, diffusers says %s\n", diffusers, got, doc.root.keys[i]);
        }
    }
    check_true(doc.root.length > 700 && wrong == 0, "%zu UNet names map to diffusers' SGM keys (%d wrong)", doc.root.length, wrong);
    // and our parameter table declares exactly those tensors
    Unet u;
    unet_init_random(&u, &cfg, DT_F32, 1);
    int unknown = 0;
    for (int i = 0; i < u.w.count; i++) {
        int found = 0;
        for (size_t j = 0; j < doc.root.length && !found; j++) found = strcmp(doc.root.items[j].string, u.w.params[i].name) == 0;
        unknown += !found;
    }
    check_true(u.w.count == (int)doc.root.length && unknown == 0, "our UNet declares the same %d tensors (%d unknown)",
               u.w.count, unknown);
    char sgm[256];
    check_true(unet_sgm_name(&cfg, "not_a_block.weight", sgm, sizeof(sgm)) == -1, "an unknown name is refused");
    unet_free(&u);
    json_free(&doc);
}

// f32: 3 layers of width 32/64, summation-order noise only
static void check_text_encoder(const char* folder, const char* ids_name, const char* penult_name, const char* pooled_name) {
    check_text_encoder_as(folder, ids_name, penult_name, pooled_name, DT_F32, 1e-5f, 1e-4f);
}
static void test_sdxl_text_encoder_1(void) { check_text_encoder("text_encoder", "te1.ids", "te1.penultimate", NULL); }
static void test_sdxl_text_encoder_2(void) {
    check_text_encoder("text_encoder_2", "te2.ids", "te2.penultimate", "te2.text_embeds");
}
// f16, the GPU's fast path (diffusers loads SDXL's text encoders in fp16 too). Measured: within
// 4.1e-3 and 4.4e-3 of transformers' f32 outputs, what transformers itself gives in fp16 on the
// same ids (4.2e-3 and 4.4e-3); outputs are of order 1.
static void test_sdxl_text_encoders_fp16(void) {
    check_text_encoder_as("text_encoder", "te1.ids", "te1.penultimate", NULL, DT_F16, 5e-3f, 5e-3f);
    check_text_encoder_as("text_encoder_2", "te2.ids", "te2.penultimate", "te2.text_embeds", DT_F16, 5e-3f, 5e-3f);
}

// One UNet evaluation at the latent size of golden case `name` (e.g. "unet_6x9"), the UNet stored
// and run in dtype, compared with diffusers' f32 output within atol + rtol * |want|.
static void check_unet(const char* name, DType dtype, float atol, float rtol) {
    SafeTensors ref;
    if (!golden_open(&ref, "tiny_sdxl_ref.safetensors")) return;
    Unet u;
    char err[ERR_MAX] = "", key[128];
    if (!check_true(unet_load(&u, tiny("unet"), NULL, dtype, err) == 0, "load unet (%s): %s", dtype_name(dtype), err)) {
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
    size_t need = unet_activation_bytes(&u.cfg, N, h, w, Lctx, u.w.dtype);
    arena_init(&act, "unet activations", need, backend_current() == BACKEND_CUDA);
    float* d_out = backend_alloc(n);
    double t0 = now_seconds();
    unet_forward(&u, d_out, to_backend(sample, n), t, to_backend(ctx, (size_t)N * Lctx * u.cfg.cross_attention_dim), Lctx,
                 to_backend(text, (size_t)N * 32), ids, N, h, w, &act);
    device_synchronize();
    printf("  unet forward %dx%d, batch %d: %.3f s\n", h, w, N, now_seconds() - t0);
    float* got = from_backend(d_out, n);
    char label[96];
    snprintf(label, sizeof(label), "UNet %s eps, latent %dx%d, batch %d", dtype_name(dtype), h, w, N);
    check_close(label, got, want, n, atol, rtol);
    arena_report(&act);
    check_true(act.high_water <= act.capacity, "activation arena of unet_activation_bytes() was enough");
    arena_free(&act);
    free(got); free(sample); free(t); free(ctx); free(text); free(ids); free(want);
    unet_free(&u);
    safetensors_close(&ref);
}

// f32: ~40 layers deep with attention, GEGLU and group norms; the outputs are of order 1
static void test_sdxl_unet_odd_latent(void) { check_unet("unet_6x9", DT_F32, 2e-5f, 1e-4f); }
static void test_sdxl_unet_square_latent(void) { check_unet("unet_8x8", DT_F32, 2e-5f, 1e-4f); }
// 16-bit storage (the fast GPU path, here on its CPU specification): every activation rounded to
// 11 (f16) or 8 (bf16) significant bits, about 100 roundings deep. Measured against diffusers'
// f32 output: f16 within 6.6e-3 (diffusers itself run in fp16 on the same inputs: 5.4e-3), bf16
// within 5.8e-2 (diffusers in bf16 on the CPU: 0.26). The tolerances leave room for another
// summation order (the GPU) and still catch a real mistake, which moves outputs of order 1 by
// order 1.
static void test_sdxl_unet_fp16(void) { check_unet("unet_6x9", DT_F16, 1e-2f, 1e-2f); }
static void test_sdxl_unet_bf16(void) { check_unet("unet_6x9", DT_BF16, 6e-2f, 6e-2f); }

// The benchmark's FLOP count against ../shared/notes/tools/sdxl_flops.py, an independent counter
// validated there against torchprofile and diffusers' CI figures: SDXL base, batch 1.
static void test_sdxl_unet_flops(void) {
    UnetConfig cfg;
    unet_config_sdxl(&cfg);
    struct { int h, w; double want; } cases[] = {{128, 128, 6.761e12}, {96, 168, 6.645e12}, {96, 171, 6.816e12}, {64, 64, 1.589e12}};
    for (int i = 0; i < 4; i++) {
        double f = unet_flops(&cfg, 1, cases[i].h, cases[i].w, 77);
        // the tool prints 4 significant digits: agreement within half a unit of the last
        check_true(fabs(f - cases[i].want) <= 0.0006e12, "UNet at latent %dx%d: %.4f TFLOP (sdxl_flops.py: %.3f)", cases[i].h,
                   cases[i].w, f / 1e12, cases[i].want / 1e12);
    }
    check_true(fabs(unet_flops(&cfg, 2, 128, 128, 77) - 2 * unet_flops(&cfg, 1, 128, 128, 77)) < 1e6,
               "a CFG step (batch 2) is twice one evaluation");
}

const TestCase tests_sdxl[] = {
    {"sdxl_text_encoder_1", test_sdxl_text_encoder_1},
    {"sdxl_text_encoder_2", test_sdxl_text_encoder_2},
    {"sdxl_text_encoders_fp16", test_sdxl_text_encoders_fp16},
    {"sdxl_text_encoders_sgm_layout", test_sdxl_text_encoders_sgm_layout},
    {"sdxl_unet_sgm_names", test_sdxl_unet_sgm_names},
    {"sdxl_unet_odd_latent", test_sdxl_unet_odd_latent},
    {"sdxl_unet_square_latent", test_sdxl_unet_square_latent},
    {"sdxl_unet_fp16", test_sdxl_unet_fp16},
    {"sdxl_unet_bf16", test_sdxl_unet_bf16},
    {"sdxl_unet_flops", test_sdxl_unet_flops},
    {NULL, NULL},
};
