// tests/test_pipeline.c: `sdxl generate` end to end on the tiny SDXL against diffusers'
// StableDiffusionXLPipeline (tests/golden/tiny_sdxl_ref.safetensors: 3 Euler steps, CFG 12, 72x48,
// seed 42), and the A1111 conditioning (emphasis, a 2-chunk prompt) against transformers
// (tests/golden/a1111_ref.safetensors, scripts/make_golden_a1111.py).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common.h"
#include "../ops.h"
#include "../pipeline.h"
#include "check.h"

static int load_tiny(SdxlModel* m) {
    char err[ERR_MAX] = "";
    return check_true(sdxl_model_load(m, golden_path("tiny_sdxl"), NULL, NULL, NULL, NULL, err) == 0, "load tiny_sdxl %s", err);
}

// The settings diffusers' golden run used: its prompts, 72x48, 3 Euler steps, CFG 12, seed 42.
static GenerateParams golden_params(const SafeTensors* ref) {
    GenerateParams p = {0};
    p.prompt = safetensors_metadata(ref, "prompt");
    p.negative = safetensors_metadata(ref, "negative_prompt");
    p.width = 72;
    p.height = 48;
    p.steps = 3;
    p.cfg = 12.0f;
    p.seed = 42;
    p.sampler = SAMPLER_EULER;
    p.quiet = 1;
    return p;
}

static void test_pipeline_matches_diffusers(void) {
    SafeTensors ref;
    if (!golden_open(&ref, "tiny_sdxl_ref.safetensors")) return;
    SdxlModel m;
    if (!load_tiny(&m)) return;
    GenerateParams p = golden_params(&ref);
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

// The GPU's fast precision (UNet and text encoders f16, VAE bf16) through the whole pipeline, on its CPU
// specification: the same 3-step CFG-12 image as diffusers' f32 one, within what 16-bit storage
// costs (the per-network tests compare each network with diffusers' own fp16/bf16 runs).
static void test_pipeline_fast_precision(void) {
    SafeTensors ref;
    if (!golden_open(&ref, "tiny_sdxl_ref.safetensors")) return;
    SdxlModel m;
    char err[ERR_MAX] = "";
    SdxlPrecision fast = {DT_F16, DT_BF16, DT_F16};
    if (!check_true(sdxl_model_load(&m, golden_path("tiny_sdxl"), NULL, NULL, NULL, &fast, err) == 0,
                    "load tiny_sdxl with UNet and text encoders f16, VAE bf16: %s", err[0] ? err : "ok"))
        return;
    GenerateParams p = golden_params(&ref);
    Image img;
    GenerateTrace tr;
    if (!check_true(p.prompt && p.negative && sdxl_generate(&m, &p, &img, &tr, err) == 0, "generate: %s", err)) return;
    size_t n_img;
    float* want = golden_f32(&ref, "pipe.image", &n_img);
    double sum = 0;
    int worst = 0;
    for (size_t i = 0; want && i < n_img; i++) {
        int diff = abs((int)((uint8_t*)img.data)[i] - (int)rintf(want[i] * 255.0f));
        worst = diff > worst ? diff : worst;
        sum += diff;
    }
    double mean = want ? sum / (double)n_img : 0;
    printf("  8-bit pixels against diffusers' f32 image: mean difference %.3f levels, worst %d\n", mean, worst);
    // measured: mean 0.53, worst 5 levels of 255 after CFG 12 amplified three steps of f16 rounding
    check_true(want && mean < 2.0 && worst <= 16, "fast precision stays within a few levels (mean %.2f, worst %d)", mean, worst);
    free(want);
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

// A single-file SGM checkpoint of the tiny model, assembled from parts whose SGM names the
// reference libraries confirmed: the UNet under unet_sgm_name (checked against diffusers'
// converter for every tensor by sdxl_unet_sgm_names), the text encoders of
// sgm/tiny_sdxl_te.safetensors and the VAE of vae_sgm.safetensors. Loaded with --config (the tiny
// folder's configs and tokenizers), it must generate exactly what the folder generates.
static void test_pipeline_single_file(void) {
    char err[ERR_MAX] = "", path[4400];
    SafeTensors unet, te, vae;
    snprintf(path, sizeof(path), "%s/unet", golden_path("tiny_sdxl"));
    if (!check_true(safetensors_open_dir(&unet, path, "diffusion_pytorch_model", NULL, err) == 0, "open unet: %s", err)) return;
    if (!golden_open(&te, "sgm/tiny_sdxl_te.safetensors") || !golden_open(&vae, "vae_sgm.safetensors")) return;
    UnetConfig uc;
    snprintf(path, sizeof(path), "%s/unet/config.json", golden_path("tiny_sdxl"));
    if (!check_true(unet_config_read(&uc, path, err) == 0, "unet config: %s", err)) return;
    int total = unet.count + te.count + vae.count, n = 0;
    SafeTensorOut* out = xcalloc((size_t)total, sizeof(SafeTensorOut));
    char(*names)[256] = xcalloc((size_t)total, 256);
    const SafeTensors* parts[3] = {&unet, &te, &vae};
    for (int p = 0; p < 3; p++) {
        for (int i = 0; i < parts[p]->count; i++) {
            const SafeTensor* t = &parts[p]->tensors[i];
            if (p == 0) {
                char sgm[200];
                if (unet_sgm_name(&uc, t->name, sgm, sizeof(sgm)) != 0) continue;
                snprintf(names[n], 256, "model.diffusion_model.%s", sgm);
            } else {
                if (p == 2 && strncmp(t->name, "first_stage_model.", 18) != 0) continue; // its stray UNet tensor
                snprintf(names[n], 256, "%s", t->name);
            }
            out[n].name = names[n];
            out[n].dtype = t->dtype;
            out[n].rank = t->rank;
            memcpy(out[n].shape, t->shape, sizeof(int64_t) * t->rank);
            out[n].data = t->data;
            n++;
        }
    }
    mkdir("build", 0755);
    mkdir("build/test_pipeline", 0755);
    const char* file = "build/test_pipeline/tiny_sdxl_sgm.safetensors";
    int written = safetensors_write(file, out, n, NULL, NULL, 0, err) == 0;
    free(out);
    free(names);
    safetensors_close(&unet);
    safetensors_close(&te);
    safetensors_close(&vae);
    if (!check_true(written, "wrote %s (%d tensors): %s", file, n, err)) return;

    SdxlModel single, folder;
    int ok = check_true(sdxl_model_load(&single, file, NULL, golden_path("tiny_sdxl"), NULL, NULL, err) == 0,
                        "load the single file with --config: %s", err);
    if (!ok || !load_tiny(&folder)) return;
    GenerateParams p = {.prompt = "a (door:1.2) opens", .negative = "blurry", .width = 40, .height = 32, .steps = 2,
                        .cfg = 7.0f, .seed = 7, .sampler = SAMPLER_EULER_ANCESTRAL, .quiet = 1};
    Image a, b;
    int ga = sdxl_generate(&single, &p, &a, NULL, err) == 0;
    int gb = ga && sdxl_generate(&folder, &p, &b, NULL, err) == 0;
    if (check_true(ga && gb, "generate from both: %s", err)) {
        check_bytes_equal("single file and folder give the same image", a.data, b.data, (size_t)40 * 32 * 3);
        image_free(&a);
        image_free(&b);
    }
    sdxl_model_free(&single);
    sdxl_model_free(&folder);
    // without --config, the file is read as SDXL base, whose shapes this tiny file does not have
    int rc = sdxl_model_load(&single, file, NULL, NULL, golden_path("tiny_sdxl/tokenizer"), NULL, err);
    check_true(rc == -1 && strstr(err, "shape"), "as SDXL base it is refused: %.100s", err);
}

static void test_pipeline_bad_input(void) {
    SdxlModel m;
    char err[ERR_MAX] = "";
    int rc = sdxl_model_load(&m, "tests/golden/no_such_model", NULL, NULL, NULL, NULL, err);
    check_true(rc == -1 && strstr(err, "no_such_model"), "missing model: %s", err);
    rc = sdxl_model_load(&m, golden_path("st"), NULL, NULL, NULL, NULL, err);
    check_true(rc == -1 && strstr(err, "model_index.json"), "a folder that is not a model: %s", err);
    rc = sdxl_model_load(&m, golden_path("vae_sgm.safetensors"), NULL, NULL, NULL, NULL, err);
    check_true(rc == -1 && strstr(err, "not an SDXL checkpoint in SGM layout"), "a VAE-only single file: %s", err);
    // an SGM-shaped file (the two keys the loader looks for) without --tokenizer or --config
    mkdir("build", 0755);
    float one = 1;
    SafeTensorOut keys[2] = {{"model.diffusion_model.input_blocks.0.0.weight", DT_F32, 1, {1}, &one},
                             {"conditioner.embedders.1.model.positional_embedding", DT_F32, 1, {1}, &one}};
    const char* sgm = "build/pipeline_sgm_shaped.safetensors";
    check_true(safetensors_write(sgm, keys, 2, NULL, NULL, 0, err) == 0, "write %s: %s", sgm, err);
    rc = sdxl_model_load(&m, sgm, NULL, NULL, NULL, NULL, err);
    check_true(rc == -1 && strstr(err, "--tokenizer"), "single file without a tokenizer: %s", err);
    // a file that is not safetensors at all is called that, with or without --config
    rc = sdxl_model_load(&m, "README.md", NULL, NULL, NULL, NULL, err);
    check_true(rc == -1 && strstr(err, "README.md: not a safetensors file"), "README.md as a model: %s", err);
    rc = sdxl_model_load(&m, "README.md", NULL, golden_path("tiny_sdxl"), NULL, NULL, err);
    check_true(rc == -1 && strstr(err, "README.md: not a safetensors file"), "README.md with --config: %s", err);
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

// Prompt limits through the pipeline: PROMPT_MAX_CHUNKS chunks encode (both encoders, both
// prompts in one batch), one token more fails with one line that names the prompt and the limit,
// in bounded time however long the prompt (the 100,000-character prompt of issue 10).
static void test_pipeline_prompt_limits(void) {
    SdxlModel m;
    if (!load_tiny(&m)) return;
    StrBuf at_limit = {0}, long_prompt = {0};
    for (int i = 0; i < PROMPT_MAX_CHUNKS * CLIP_CHUNK_TOKENS; i++) strbuf_cat(&at_limit, "a "); // one token each, in any CLIP vocabulary
    while (long_prompt.len < 100000) strbuf_cat(&long_prompt, "a photo of a cat, ");
    float *context = NULL, *pooled = NULL;
    int L = 0;
    char err[ERR_MAX] = "";
    double t0 = now_seconds();
    int rc = sdxl_encode_prompts(&m, at_limit.s, "blurry", &context, &pooled, &L, err);
    check_true(rc == 0 && L == PROMPT_MAX_CHUNKS * CLIP_CONTEXT, "%d chunks: context of %d tokens (%.2f s) %s", PROMPT_MAX_CHUNKS, L,
               now_seconds() - t0, rc ? err : "");
    if (rc == 0) {
        free(context);
        free(pooled);
    }
    strbuf_cat(&at_limit, "b");
    rc = sdxl_encode_prompts(&m, at_limit.s, "", &context, &pooled, &L, err);
    check_true(rc == -1 && strncmp(err, "prompt: ", 8) == 0 && strstr(err, "PROMPT_MAX_CHUNKS"), "one token more: %s", err);
    rc = sdxl_encode_prompts(&m, "a cat", long_prompt.s, &context, &pooled, &L, err);
    check_true(rc == -1 && strncmp(err, "negative prompt: ", 17) == 0 && strstr(err, "PROMPT_MAX_CHUNKS"), "a long negative: %s", err);
    GenerateParams p = {.prompt = long_prompt.s, .negative = "", .width = 64, .height = 64, .steps = 1, .cfg = 5, .seed = 1, .quiet = 1};
    Image img;
    t0 = now_seconds();
    rc = sdxl_generate(&m, &p, &img, NULL, err);
    check_true(rc == -1 && strstr(err, "PROMPT_MAX_CHUNKS") && !strchr(err, '\n'), "generate, 100,000 characters: %s (%.3f s)", err,
               now_seconds() - t0);
    free(at_limit.s);
    free(long_prompt.s);
    sdxl_model_free(&m);
}

const TestCase tests_pipeline[] = {
    {"pipeline_prompt_limits", test_pipeline_prompt_limits},
    {"pipeline_fast_precision", test_pipeline_fast_precision},
    {"pipeline_matches_diffusers", test_pipeline_matches_diffusers},
    {"pipeline_a1111_conditioning", test_pipeline_a1111_conditioning},
    {"pipeline_single_file", test_pipeline_single_file},
    {"pipeline_bad_input", test_pipeline_bad_input},
    {NULL, NULL},
};
