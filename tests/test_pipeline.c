// tests/test_pipeline.c: `sdxl generate` end to end on the tiny SDXL against diffusers'
// StableDiffusionXLPipeline (tests/golden/tiny_sdxl_ref.safetensors: 3 Euler steps, CFG 12, 72x48,
// seed 42), and the A1111 conditioning (emphasis, a 2-chunk prompt) against transformers
// (tests/golden/a1111_ref.safetensors, scripts/make_golden_a1111.py).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../ops.h"
#include "../pipeline.h"
#include "check.h"

static int load_tiny(SdxlModel* m) {
    char err[ERR_MAX] = "";
    return check_true(sdxl_model_load(m, golden_path("tiny_sdxl"), NULL, NULL, err) == 0, "load tiny_sdxl %s", err);
}

static void test_pipeline_matches_diffusers(void) {
    SafeTensors ref;
    if (!golden_open(&ref, "tiny_sdxl_ref.safetensors")) return;
    SdxlModel m;
    if (!load_tiny(&m)) return;
    GenerateParams p = {0};
    p.prompt = safetensors_metadata(&ref, "prompt");
    p.negative = safetensors_metadata(&ref, "negative_prompt");
    p.width = 72;
    p.height = 48;
    p.steps = 3;
    p.cfg = 12.0f;
    p.seed = 42;
    p.sampler = SAMPLER_EULER;
    p.quiet = 1;
    Image img;
    GenerateTrace tr;
    char err[ERR_MAX] = "";
    if (!check_true(p.prompt && p.negative && sdxl_generate(&m, &p, &img, &tr, err) == 0, "generate: %s", err)) return;
    // conditioning: [negative, positive] (1, 77, 96) each, in f32 through two 3-layer encoders
    float* want = golden_f32(&ref, "pipe.negative_prompt_embeds", NULL);
    if (want) check_close("negative prompt_embeds (77 x 96)", tr.context, want, 77 * 96, 1e-5f, 1e-4f);
    free(want);
    want = golden_f32(&ref, "pipe.prompt_embeds", NULL);
    if (want) check_close("prompt_embeds (77 x 96)", tr.context + 77 * 96, want, 77 * 96, 1e-5f, 1e-4f);
    free(want);
    want = golden_f32(&ref, "pipe.pooled", NULL);
    if (want) check_close("pooled_prompt_embeds", tr.pooled + 32, want, 32, 1e-5f, 1e-4f);
    free(want);
    // three UNet evaluations at CFG 12 amplify the UNet's 1e-6 differences about twelvefold per
    // step; the latents end around |x| ~ 10
    size_t n_lat;
    want = golden_f32(&ref, "pipe.latents_final", &n_lat);
    if (want) check_close("latents after 3 Euler steps", tr.latents_final, want, n_lat, 1e-3f, 1e-4f);
    free(want);
    size_t n_img;
    want = golden_f32(&ref, "pipe.image", &n_img);
    if (want) check_close("decoded image in [0, 1] (48 x 72 x 3)", tr.image, want, n_img, 1e-4f, 1e-4f);
    // the 8-bit image is round(v * 255) of the same values: at most 1 level apart anywhere
    int worst = 0;
    for (size_t i = 0; want && i < n_img; i++) {
        int diff = abs((int)((uint8_t*)img.data)[i] - (int)rintf(want[i] * 255.0f));
        worst = diff > worst ? diff : worst;
    }
    check_true(want && worst <= 1, "8-bit pixels within 1 level of diffusers' (worst %d)", worst);
    free(want);
    const char* params = image_get_text(&img, "parameters");
    check_true(params && strstr(params, "Steps: 3, Sampler: Euler, CFG scale: 12, Seed: 42, Size: 72x48, Model: tiny_sdxl"),
               "A1111 parameters: %s", params ? strchr(params, '\n') + 1 : "(none)");
    image_free(&img);
    generate_trace_free(&tr);
    sdxl_model_free(&m);
    safetensors_close(&ref);
}

static void test_pipeline_a1111_conditioning(void) {
    SafeTensors ref;
    if (!golden_open(&ref, "a1111_ref.safetensors")) return;
    SdxlModel m;
    if (!load_tiny(&m)) return;
    float *context, *pooled;
    int L;
    char err[ERR_MAX] = "";
    const char* prompt = safetensors_metadata(&ref, "prompt");
    if (!check_true(prompt && sdxl_encode_prompts(&m, prompt, "", &context, &pooled, &L, err) == 0, "encode: %s", err)) return;
    check_true(L == 154, "a 120-token prompt takes two 77-token chunks (L = %d)", L);
    size_t n;
    float* want = golden_f32(&ref, "a1111.context", &n);
    if (want && L == 154) check_close("emphasis + 2 chunks: context (154 x 96)", context + n, want, n, 1e-5f, 1e-4f);
    free(want);
    want = golden_f32(&ref, "a1111.pooled", NULL);
    if (want) check_close("pooled from the first chunk", pooled + 32, want, 32, 1e-5f, 1e-4f);
    free(want);
    // the empty negative prompt: zeros (force_zeros_for_empty_prompt), padded to the same 2 chunks
    double sum = 0;
    for (size_t i = 0; i < (size_t)L * 96; i++) sum += fabs(context[i]);
    check_true(sum == 0.0, "empty negative prompt encodes as zeros over all %d tokens", L);
    free(context);
    free(pooled);
    sdxl_model_free(&m);
    safetensors_close(&ref);
}

static void test_pipeline_bad_input(void) {
    SdxlModel m;
    char err[ERR_MAX] = "";
    int rc = sdxl_model_load(&m, "tests/golden/no_such_model", NULL, NULL, err);
    check_true(rc == -1 && strstr(err, "no_such_model"), "missing model: %s", err);
    rc = sdxl_model_load(&m, golden_path("st"), NULL, NULL, err);
    check_true(rc == -1 && strstr(err, "model_index.json"), "a folder that is not a model: %s", err);
    rc = sdxl_model_load(&m, golden_path("vae_sgm.safetensors"), NULL, NULL, err);
    check_true(rc == -1 && strstr(err, "--tokenizer"), "single file without a tokenizer: %s", err);
    if (!load_tiny(&m)) return;
    GenerateParams p = {.prompt = "x", .negative = "", .width = 64, .height = 64, .steps = 0, .cfg = 5, .seed = 1, .quiet = 1};
    Image img;
    rc = sdxl_generate(&m, &p, &img, NULL, err);
    check_true(rc == -1 && strstr(err, "steps"), "0 steps: %s", err);
    p.steps = 1;
    p.width = 5000;
    rc = sdxl_generate(&m, &p, &img, NULL, err);
    check_true(rc == -1 && strstr(err, "5000"), "too wide: %s", err);
    sdxl_model_free(&m);
}

const TestCase tests_pipeline[] = {
    {"pipeline_matches_diffusers", test_pipeline_matches_diffusers},
    {"pipeline_a1111_conditioning", test_pipeline_a1111_conditioning},
    {"pipeline_bad_input", test_pipeline_bad_input},
    {NULL, NULL},
};
