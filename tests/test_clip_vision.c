// tests/test_clip_vision.c: the CLIP vision tower, CLIP preprocessing, CLIP score and the CLIP
// interrogator against transformers 5.24, torchmetrics 1.9 and clip-interrogator 0.6.0
// (tests/golden/clip_vision/, made by scripts/make_golden_clip_vision.py), on the runner's backend.
//
// Tolerances: preprocessing is exact (PIL's bytes, then the same f32 operations as transformers'
// PIL backend), except against open_clip's torchvision transform, whose ToTensor divides by 255 in
// f32 where transformers multiplies by 1/255 in f64 (one f32 ulp before normalising, ~4 after).
// The towers are tiny f32 networks compared with PyTorch f32 from the same fp16-stored weights:
// summation-order noise only, as in tests/test_sdxl.c. Label scores use f16-rounded label
// embeddings on both sides, so they agree to that noise too, and the rankings must be identical
// (the golden script checks that no two scores are closer than 1e-5).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../clip.h"
#include "../common.h"
#include "../image.h"
#include "../ops.h"
#include "check.h"

void image_test_synthetic(Image* img, int w, int h); // tests/test_image.c

static const char* REF = "clip_vision/clip_ref.safetensors";

static char g_path[4096];
static const char* golden_dir(const char* sub) {
    snprintf(g_path, sizeof(g_path), "%s", golden_path(sub));
    return g_path;
}

// A golden uint8 (H, W, 3) tensor as an Image view (valid while st is open).
static Image golden_rgb(const SafeTensors* st, const char* name) {
    const SafeTensor* t = safetensors_find(st, name);
    Image img = {0};
    if (!t || t->dtype != DT_U8 || t->rank != 3) {
        check_true(0, "golden uint8 image '%s'", name);
        return img;
    }
    img.height = (int)t->shape[0];
    img.width = (int)t->shape[1];
    img.channels = (int)t->shape[2];
    img.depth = 8;
    img.data = (void*)t->data;
    return img;
}

// Setup steps print only when they fail.
static int setup(int ok, const char* what, const char* err) {
    if (!ok) check_true(0, "%s: %s", what, err);
    return ok;
}

static int load_tiny(ClipModel* m) {
    char err[ERR_MAX] = "";
    return setup(clip_model_load(m, golden_dir("clip_vision/tiny_clip"), NULL, err) == 0, "load tiny CLIPModel", err);
}

// The labels at top[0..n) of the concatenated tables, one per line, against the golden metadata.
static void check_ranking(const SafeTensors* st, const char* key, const ClipLabelTable* const* tables, int n_tables,
                          const int* top, int n, const char* label) {
    const char* want = safetensors_metadata(st, key);
    char got[4096] = "";
    for (int i = 0; i < n; i++) {
        if (i) strncat(got, "\n", sizeof(got) - strlen(got) - 1);
        strncat(got, clip_label_at(tables, n_tables, top[i]), sizeof(got) - strlen(got) - 1);
    }
    check_true(want && strcmp(got, want) == 0, "%s", label);
}

// The three test images: synthetic 1365x768 (downscaled), img1 67x32 (cropped only), img2 23x37 (upscaled).
static void test_images(const SafeTensors* st, Image* synth, Image* img1, Image* img2) {
    image_test_synthetic(synth, 1365, 768);
    *img1 = golden_rgb(st, "img1");
    *img2 = golden_rgb(st, "img2");
}

// ----------------------------------------------------------------------------
// Preprocessing

static void test_clip_preprocess(void) {
    SafeTensors st;
    if (!golden_open(&st, REF)) return;
    char err[ERR_MAX] = "";
    // the per-byte map of CLIPImageProcessorPil's rescale + normalize
    uint8_t ramp[256 * 3];
    for (int v = 0; v < 256; v++) ramp[3 * v] = ramp[3 * v + 1] = ramp[3 * v + 2] = (uint8_t)v;
    Image ramp_img = {.width = 256, .height = 1, .channels = 3, .depth = 8, .data = ramp};
    float lut_got[3 * 256];
    image_to_chw_normalized(&ramp_img, CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, lut_got);
    float* lut = golden_f32(&st, "pre.lut", NULL);
    if (lut) check_close("normalised value of every byte (3 x 256)", lut_got, lut, 3 * 256, 0.0f, 0.0f); // exact

    // openai/clip-vit-large-patch14's geometry on a 1365x768 storyboard frame: 398x224, crop at x = 87
    Image synth, img1, img2;
    test_images(&st, &synth, &img1, &img2);
    float* px = xmalloc(sizeof(float) * 3 * 224 * 224);
    Image crop = golden_rgb(&st, "pre224.crop");
    if (lut && crop.data &&
        setup(clip_preprocess(&synth, 224, CLIP_CROP_FLOOR, px, err) == 0, "preprocess 1365x768 at 224", err)) {
        float* want = xmalloc(sizeof(float) * 3 * 224 * 224);
        const uint8_t* c8 = crop.data;
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 224 * 224; i++) want[c * 224 * 224 + i] = lut[c * 256 + c8[i * 3 + c]];
        check_close("1365x768 -> (3, 224, 224) pixel_values", px, want, 3 * 224 * 224, 0.0f, 0.0f); // exact
        free(want);
    }
    free(px);

    // the tiny model's size (32): downscale, crop only, upscale, against CLIPImageProcessorPil
    float* pv = golden_f32(&st, "pixel_values", NULL);
    const Image* imgs[3] = {&synth, &img1, &img2};
    float got[3 * 3 * 32 * 32];
    int ok = 1;
    for (int i = 0; i < 3; i++) ok &= clip_preprocess(imgs[i], 32, CLIP_CROP_FLOOR, got + i * 3 * 32 * 32, err) == 0;
    if (pv && check_true(ok, "preprocess the three test images at 32 %s", err))
        check_close("pixel_values (3, 3, 32, 32), crop (W - 32) // 2", got, pv, 3 * 3 * 32 * 32, 0.0f, 0.0f); // exact
    free(pv);
    // open_clip / clip-interrogator crop img1 one column to the right: int(round(17.5)) = 18
    float* oc = golden_f32(&st, "pixel_values_openclip", NULL);
    if (oc && setup(clip_preprocess(&img1, 32, CLIP_CROP_ROUND_HALF_EVEN, got, err) == 0, "preprocess img1", err))
        check_close("open_clip transform of 67x32 (round half even)", got, oc, 3 * 32 * 32, 2e-6f, 0.0f);
    free(oc);
    free(lut);

    Image gray = {.width = 4, .height = 4, .channels = 1, .depth = 8, .data = ramp};
    int rc = clip_preprocess(&gray, 32, CLIP_CROP_FLOOR, got, err);
    printf("    gray input -> %s\n", err);
    check_true(rc == -1, "a gray image is refused (convert to RGB first)");
    image_free(&synth);
    safetensors_close(&st);
}

// ----------------------------------------------------------------------------
// Towers

static void test_clip_vision_tower(void) {
    SafeTensors st;
    if (!golden_open(&st, REF)) return;
    ClipModel m;
    if (!load_tiny(&m)) return;
    const ClipVisionConfig* c = &m.vision.cfg;
    check_true(c->hidden == 48 && c->layers == 2 && c->heads == 3 && c->image_size == 32 && c->patch_size == 8 &&
                   c->projection_dim == 24 && m.text.cfg.projection_dim == 24 && m.text.cfg.eos_token_id == 2,
               "config: vision 48 wide, 2 layers, 32 px / 8 px patches, projection 24");
    check_true(m.logit_scale > 99.9f && m.logit_scale < 100.1f, "logit_scale.exp() = %.3f", m.logit_scale);
    // the vision half of a CLIPConfig read on its own: the CLIPConfig's projection_dim
    ClipVisionConfig vc;
    char err[ERR_MAX] = "", path[4200];
    snprintf(path, sizeof(path), "%s/config.json", golden_dir("clip_vision/tiny_clip"));
    check_true(clip_vision_config_read(&vc, path, err) == 0 && vc.hidden == 48 && vc.projection_dim == 24,
               "clip_vision_config_read of a CLIPConfig %s", err);
    // not a CLIPModel: SDXL's text_encoder folder has a CLIPTextConfig only
    ClipModel bad;
    int rc = clip_model_load(&bad, golden_dir("tiny_sdxl/text_encoder"), NULL, err);
    printf("    CLIPTextModel folder -> %s\n", err);
    check_true(rc == -1, "a CLIPTextModel folder is refused as a CLIPModel");
    rc = clip_model_load(&bad, golden_dir("clip_vision/no_such_folder"), NULL, err);
    printf("    missing folder -> %s\n", err);
    check_true(rc == -1, "a missing folder is refused");
    size_t n;
    float* pv = golden_f32(&st, "pixel_values", &n);
    float* want_pooled = golden_f32(&st, "image_pooled", NULL);
    float* want_embeds = golden_f32(&st, "image_embeds", NULL);
    if (pv && want_pooled && want_embeds) {
        Arena scratch;
        arena_init(&scratch, "clip vision scratch", sizeof(float) * clip_vision_scratch_floats(c, 3),
                   backend_current() == BACKEND_CUDA);
        float* d_pooled = backend_alloc(3 * 48);
        float* d_embeds = backend_alloc(3 * 24);
        clip_vision_forward(&m.vision, to_backend(pv, n), 3, d_pooled, d_embeds, &scratch);
        float* pooled = from_backend(d_pooled, 3 * 48);
        float* embeds = from_backend(d_embeds, 3 * 24);
        // 2 layers of width 48, 17 tokens: f32 summation-order noise
        check_close("post_layernorm(CLS) (3, 48)", pooled, want_pooled, 3 * 48, 1e-5f, 1e-4f);
        check_close("image_embeds (3, 24)", embeds, want_embeds, 3 * 24, 1e-5f, 1e-4f);
        arena_report(&scratch);
        arena_free(&scratch);
        free(pooled);
        free(embeds);
    }
    // the same through the public path: preprocessing + tower
    Image synth, img1, img2;
    test_images(&st, &synth, &img1, &img2);
    const Image* imgs[3] = {&synth, &img1, &img2};
    float got[3 * 24];
    if (want_embeds && setup(clip_encode_images(&m, imgs, 3, CLIP_CROP_FLOOR, got, err) == 0, "encode images", err))
        check_close("clip_encode_images (3, 24)", got, want_embeds, 3 * 24, 1e-5f, 1e-4f);
    image_free(&synth);
    free(pv);
    free(want_pooled);
    free(want_embeds);
    clip_model_free(&m);
    safetensors_close(&st);
}

// ViT-L/14's geometry (224 px, 14 px patches, 257 positions) from a CLIPVisionModelWithProjection folder.
static void test_clip_vision_224(void) {
    SafeTensors st;
    if (!golden_open(&st, REF)) return;
    ClipVision v;
    char err[ERR_MAX] = "";
    if (!setup(clip_vision_load(&v, golden_dir("clip_vision/vision224"), NULL, err) == 0, "load vision224", err))
        return;
    check_true(v.cfg.image_size == 224 && v.cfg.patch_size == 14 && v.cfg.projection_dim == 8,
               "CLIPVisionConfig: 224 px, 14 px patches, projection 8");
    Image synth;
    image_test_synthetic(&synth, 1365, 768);
    float* px = xmalloc(sizeof(float) * 3 * 224 * 224);
    float* want = golden_f32(&st, "pre224.image_embeds", NULL);
    if (want && setup(clip_preprocess(&synth, 224, CLIP_CROP_FLOOR, px, err) == 0, "preprocess", err)) {
        Arena scratch;
        arena_init(&scratch, "clip vision scratch", sizeof(float) * clip_vision_scratch_floats(&v.cfg, 1),
                   backend_current() == BACKEND_CUDA);
        float* d = backend_alloc(8);
        clip_vision_forward(&v, to_backend(px, 3 * 224 * 224), 1, NULL, d, &scratch);
        float* got = from_backend(d, 8);
        // a 3*14*14 = 588-term patch dot product and 257-token attention: still f32 noise
        check_close("image_embeds of the 224x224 crop (1, 8)", got, want, 8, 1e-5f, 1e-4f);
        free(got);
        arena_free(&scratch);
    }
    free(want);
    free(px);
    image_free(&synth);
    clip_vision_free(&v);
    safetensors_close(&st);
}

static const char* TEXTS[4] = {"a man opens a door", "two people talking in a kitchen, black and white sketch", "",
                               NULL /* the long prompt, built below */};

// The golden's fourth prompt: the same sentence four times, far beyond 75 tokens.
static void long_prompt(char* buf, size_t cap) {
    const char* s = "a storyboard panel of a detective walking through heavy rain at night";
    snprintf(buf, cap, "%s, %s, %s, %s", s, s, s, s);
}

static void test_clip_text_projection(void) {
    SafeTensors st;
    if (!golden_open(&st, REF)) return;
    ClipModel m;
    if (!load_tiny(&m)) return;
    char longp[512], err[ERR_MAX] = "";
    long_prompt(longp, sizeof(longp));
    const char* texts[4] = {TEXTS[0], TEXTS[1], TEXTS[2], longp};
    float* want_n = golden_f32(&st, "n_tokens", NULL);
    static const char* policies[2] = {"truncate", "torchmetrics"};
    float got[2][4 * 24];
    for (int p = 0; p < 2; p++) {
        int n_tokens[4];
        char name[64];
        snprintf(name, sizeof(name), "text_embeds_%s", policies[p]);
        float* want = golden_f32(&st, name, NULL);
        if (!setup(clip_encode_texts(&m, texts, 4, (ClipLongPrompt)p, got[p], n_tokens, err) == 0, "encode", err)) continue;
        char label[96];
        snprintf(label, sizeof(label), "text_embeds, long prompts: %s (4, 24)", policies[p]);
        // 2 layers of width 32 over 77 tokens: f32 noise
        if (want) check_close(label, got[p], want, 4 * 24, 1e-5f, 1e-4f);
        if (want_n && p == 0)
            check_true(n_tokens[0] == (int)want_n[0] && n_tokens[1] == (int)want_n[1] && n_tokens[2] == 0 &&
                           n_tokens[3] == (int)want_n[3] && n_tokens[3] > CLIP_CHUNK_TOKENS,
                       "token counts %d %d %d %d; the long prompt is reported as truncated", n_tokens[0], n_tokens[1],
                       n_tokens[2], n_tokens[3]);
        free(want);
    }
    // the policies agree below 76 tokens and differ above
    check_true(memcmp(got[0], got[1], 3 * 24 * sizeof(float)) == 0 && memcmp(got[0] + 3 * 24, got[1] + 3 * 24, 24 * 4) != 0,
               "the two long-prompt policies differ only on the long prompt");
    free(want_n);
    clip_model_free(&m);
    safetensors_close(&st);
}

// ----------------------------------------------------------------------------
// CLIP score

static void test_clip_score(void) {
    SafeTensors st;
    if (!golden_open(&st, REF)) return;
    ClipModel m;
    if (!load_tiny(&m)) return;
    Image synth, img1, img2;
    test_images(&st, &synth, &img1, &img2);
    const Image* imgs[4] = {&synth, &img1, &img2, &synth};
    char longp[512], err[ERR_MAX] = "";
    long_prompt(longp, sizeof(longp));
    const char* texts[4] = {TEXTS[0], TEXTS[1], TEXTS[2], longp};
    float cos[4], score;
    int n_tokens[4];
    float* want_cos = golden_f32(&st, "cosine_truncate", NULL);
    if (want_cos && setup(clip_score(&m, imgs, texts, 4, CLIP_PROMPT_TRUNCATE, cos, n_tokens, &score, err) == 0,
                          "clip_score (truncate)", err)) {
        check_close("cosine per pair, truncated prompts", cos, want_cos, 4, 1e-5f, 0.0f); // of embeddings checked at 1e-4
        printf("    score %.4f\n", score);
    }
    float* want_tm = golden_f32(&st, "cosine_torchmetrics", NULL);
    float* want_score = golden_f32(&st, "clip_score_torchmetrics", NULL);
    float* want_single = golden_f32(&st, "clip_score_single", NULL);
    if (want_tm && want_score && want_single &&
        setup(clip_score(&m, imgs, texts, 4, CLIP_PROMPT_TORCHMETRICS, cos, NULL, &score, err) == 0,
              "clip_score (torchmetrics)", err)) {
        check_close("cosine per pair, torchmetrics' slice", cos, want_tm, 4, 1e-5f, 0.0f);
        // torchmetrics clamps the mean: here it is negative, so 0 (the mean of clamped pairs would be ~9.3)
        check_close("torchmetrics clip_score over 4 pairs", &score, want_score, 1, 1e-3f, 0.0f);
        float single[4];
        for (int i = 0; i < 4; i++) single[i] = clip_score_from_cosines(&cos[i], 1);
        // 100 x cosine: 1e-5 on the cosine is 1e-3 here
        check_close("torchmetrics clip_score of each pair alone", single, want_single, 4, 1e-3f, 0.0f);
    }
    float c_same = clip_cosine((float[]){1, 2, 3}, (float[]){2, 4, 6}, 3), c_zero = clip_cosine((float[]){0, 0}, (float[]){1, 1}, 2);
    check_true(c_same > 0.9999999f && c_zero == 0.0f, "cosine of parallel vectors 1, with a zero vector 0");
    image_free(&synth);
    free(want_cos);
    free(want_tm);
    free(want_score);
    free(want_single);
    clip_model_free(&m);
    safetensors_close(&st);
}

// ----------------------------------------------------------------------------
// Interrogator

typedef struct {
    ClipLabelTable mediums, artists, movements, trendings, flavors;
} Tables;

static const char* LIST_NAMES[5] = {"mediums", "artists", "movements", "sites", "flavors"};

// Builds the five tables from tests/golden/clip_vision/labels as clip-interrogator 0.6.0 does.
static int build_tables(const ClipModel* m, Tables* t, const char* cache_dir) {
    static const char* artist_tmpl[2] = {"by {}", "inspired by {}"};
    static const char* trend_tmpl[4] = {"{}", "trending on {}", "featured on {}", "{} contest winner"};
    ClipLabelTable* out[5] = {&t->mediums, &t->artists, &t->movements, &t->trendings, &t->flavors};
    const char* const* tmpl[5] = {NULL, artist_tmpl, NULL, trend_tmpl, NULL};
    int n_tmpl[5] = {0, 2, 0, 4, 0};
    const char* names[5] = {"mediums", "artists", "movements", "trendings", "flavors"};
    for (int i = 0; i < 5; i++) {
        char path[4200], err[ERR_MAX] = "";
        char** labels;
        int count;
        snprintf(path, sizeof(path), "%s/%s.txt", golden_dir("clip_vision/labels"), LIST_NAMES[i]);
        if (!setup(clip_labels_read(path, tmpl[i], n_tmpl[i], &labels, &count, err) == 0, path, err)) return 0;
        int rc = clip_label_table_build(out[i], m, names[i], (const char* const*)labels, count, cache_dir, err);
        clip_labels_free(labels, count);
        if (!setup(rc == 0, names[i], err)) return 0;
    }
    return 1;
}

static void free_tables(Tables* t) {
    clip_label_table_free(&t->mediums);
    clip_label_table_free(&t->artists);
    clip_label_table_free(&t->movements);
    clip_label_table_free(&t->trendings);
    clip_label_table_free(&t->flavors);
}

static void test_clip_interrogator(void) {
    SafeTensors st;
    if (!golden_open(&st, REF)) return;
    ClipModel m;
    if (!load_tiny(&m)) return;
    Tables t;
    if (!build_tables(&m, &t, NULL)) return;
    check_true(t.mediums.count == 6 && t.artists.count == 10 && t.movements.count == 5 && t.trendings.count == 12 &&
                   t.flavors.count == 40,
               "label counts 6, 10 (by / inspired by), 5, 12 (4 per site), 40");
    check_true(strcmp(t.flavors.labels[1], "dramatic lighting") == 0 && strcmp(t.flavors.labels[4], "") == 0 &&
                   strcmp(t.artists.labels[8], "inspired by Hergé") == 0 &&
                   strcmp(t.trendings.labels[11], "pixiv contest winner") == 0,
               "load_list: stripped, empty line kept, CRLF, templates");
    // image features: the normalised image embedding of the synthetic frame (Interrogator.image_to_features)
    float* emb = golden_f32(&st, "image_embeds", NULL);
    if (!emb) return;
    float feats[24];
    memcpy(feats, emb, sizeof(feats));
    clip_normalize(feats, 1, 24);
    const ClipLabelTable* tabs[5] = {&t.mediums, &t.artists, &t.movements, &t.trendings, &t.flavors};
    static const char* names[5] = {"mediums", "artists", "movements", "trendings", "flavors"};
    for (int i = 0; i < 5; i++) {
        char name[64];
        snprintf(name, sizeof(name), "ci.sims.%s", names[i]);
        size_t n;
        float* want = golden_f32(&st, name, &n);
        if (!want) continue;
        float* got = xmalloc(sizeof(float) * n);
        for (size_t j = 0; j < n; j++) got[j] = clip_cosine(feats, tabs[i]->embeds + j * 24, 24);
        // both sides score f16-rounded label embeddings; what differs is f32 noise in the towers
        // that can move a label embedding by one f16 ulp (~5e-4 relative)
        check_close(name, got, want, n, 2e-4f, 0.0f);
        free(got);
        free(want);
    }
    const char* meta_top[4] = {"ci_top_medium", "ci_top_artist", "ci_top_trending", "ci_top_movement"};
    const ClipLabelTable* top_tabs[4] = {&t.mediums, &t.artists, &t.trendings, &t.movements};
    for (int i = 0; i < 4; i++) {
        int top;
        clip_label_rank(&top_tabs[i], 1, feats, 1, 16, &top);
        const char* want = safetensors_metadata(&st, meta_top[i]);
        check_true(want && strcmp(top_tabs[i]->labels[top], want) == 0, "best %s: \"%s\"", top_tabs[i]->name,
                   top_tabs[i]->labels[top]);
    }
    // 40 flavors in chunks of 16: 3 chunks keep 5 each, then the top 8 of those 15
    int top8[8], top32[32];
    const ClipLabelTable* fl = &t.flavors;
    int n8 = clip_label_rank(&fl, 1, feats, 8, 16, top8);
    check_ranking(&st, "ci_rank_flavors8", &fl, 1, top8, n8, "LabelTable.rank(flavors, 8) with chunk_size 16");
    const ClipLabelTable* merged[5] = {&t.artists, &t.flavors, &t.mediums, &t.movements, &t.trendings};
    int n32 = clip_label_rank(merged, 5, feats, 32, 16, top32);
    check_ranking(&st, "ci_rank_fast32", merged, 5, top32, n32, "_merge_tables(...).rank(32): 73 labels, 5 chunks of 16");
    ClipInterrogator ci = {&t.mediums, &t.artists, &t.movements, &t.trendings, &t.flavors, 16};
    const char* caption = safetensors_metadata(&st, "ci_caption");
    char *classic = NULL, *fast = NULL, err[ERR_MAX] = "";
    if (caption && clip_interrogate_classic(&m, &ci, feats, caption, 3, &classic, err) == 0) {
        const char* want = safetensors_metadata(&st, "ci_classic");
        printf("    classic: %s\n", classic);
        check_true(want && strcmp(classic, want) == 0, "interrogate_classic prompt is 0.6.0's");
    }
    if (caption && clip_interrogate_fast(&m, &ci, feats, caption, 32, &fast, err) == 0) {
        const char* want = safetensors_metadata(&st, "ci_fast");
        printf("    fast:    %s\n", fast);
        check_true(want && strcmp(fast, want) == 0, "interrogate_fast prompt is 0.6.0's (cut by _truncate_to_fit)");
    }
    free(classic);
    free(fast);
    free(emb);
    free_tables(&t);
    clip_model_free(&m);
    safetensors_close(&st);
}

// The label cache: written once, read back bit for bit, and replaced when the list changes.
static void test_clip_label_cache(void) {
    ClipModel m;
    if (!load_tiny(&m)) return;
    char dir[256], err[ERR_MAX] = "";
    snprintf(dir, sizeof(dir), "%s/sdxl_clip_cache_%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    Tables a, b;
    if (!build_tables(&m, &a, dir)) return;
    check_true(!a.flavors.from_cache && !a.mediums.from_cache, "first build encodes (no cache yet)");
    char path[512];
    snprintf(path, sizeof(path), "%s/clip_%016llx_flavors.safetensors", dir, (unsigned long long)m.text_fingerprint);
    struct stat sb;
    int found = stat(path, &sb) == 0;
    check_true(found, "cache file written: clip_<model>_flavors.safetensors (%lld bytes)", found ? (long long)sb.st_size : 0);
    if (build_tables(&m, &b, dir)) {
        check_true(b.flavors.from_cache && b.artists.from_cache && b.trendings.from_cache, "second build reads the cache");
        check_bytes_equal("cached flavor embeddings", b.flavors.embeds, a.flavors.embeds, sizeof(float) * 40 * 24);
        free_tables(&b);
    }
    // a changed list under the same name: recomputed and the file replaced
    const char* fewer[3] = {"high contrast", "ink wash", "rain"};
    ClipLabelTable t3, again;
    if (setup(clip_label_table_build(&t3, &m, "flavors", fewer, 3, dir, err) == 0, "3-label flavors", err)) {
        check_true(!t3.from_cache, "a different list under the same name is re-encoded");
        check_bytes_equal("its embeddings are those of the same labels", t3.embeds + 24, a.flavors.embeds + 2 * 24,
                          sizeof(float) * 24);
        if (clip_label_table_build(&again, &m, "flavors", fewer, 3, dir, err) == 0) {
            check_true(again.from_cache, "and then cached under the new hash");
            clip_label_table_free(&again);
        }
        clip_label_table_free(&t3);
    }
    int rc = clip_label_table_build(&t3, &m, "../x", fewer, 3, dir, err);
    printf("    bad name -> %s\n", err);
    check_true(rc == -1, "a table name with '/' is refused");
    free_tables(&a);
    // clean up our own files
    static const char* names[5] = {"mediums", "artists", "movements", "trendings", "flavors"};
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof(path), "%s/clip_%016llx_%s.safetensors", dir, (unsigned long long)m.text_fingerprint, names[i]);
        remove(path);
    }
    rmdir(dir);
    clip_model_free(&m);
}

// ----------------------------------------------------------------------------
// CUDA against CPU

static void test_clip_vision_cuda_vs_cpu(void) {
    if (!test_require_cuda()) return;
    SafeTensors st;
    if (!golden_open(&st, REF)) return;
    Backend saved = backend_current();
    Image synth, img1, img2;
    test_images(&st, &synth, &img1, &img2);
    const Image* imgs[3] = {&synth, &img1, &img2};
    char longp[512], err[ERR_MAX] = "";
    long_prompt(longp, sizeof(longp));
    const char* texts[4] = {TEXTS[0], TEXTS[1], TEXTS[2], longp};
    float img[2][3 * 24], txt[2][4 * 24];
    for (int b = 0; b < 2; b++) {
        backend_select(b == 0 ? BACKEND_CPU : BACKEND_CUDA);
        ClipModel m;
        if (!load_tiny(&m)) break;
        setup(clip_encode_images(&m, imgs, 3, CLIP_CROP_FLOOR, img[b], err) == 0, backend_name(b), err);
        setup(clip_encode_texts(&m, texts, 4, CLIP_PROMPT_TRUNCATE, txt[b], NULL, err) == 0, backend_name(b), err);
        clip_model_free(&m);
    }
    backend_select(saved);
    // fp32 on both (no TF32); nvcc's FMA contraction and block reductions change the last bits
    check_close("image_embeds, CUDA vs CPU", img[1], img[0], 3 * 24, 1e-5f, 1e-4f);
    check_close("text_embeds, CUDA vs CPU", txt[1], txt[0], 4 * 24, 1e-5f, 1e-4f);
    image_free(&synth);
    safetensors_close(&st);
}

const TestCase tests_clip_vision[] = {
    {"clip_vision_preprocess", test_clip_preprocess},
    {"clip_vision_tower", test_clip_vision_tower},
    {"clip_vision_224_geometry", test_clip_vision_224},
    {"clip_vision_text_projection", test_clip_text_projection},
    {"clip_vision_score", test_clip_score},
    {"clip_vision_interrogator", test_clip_interrogator},
    {"clip_vision_label_cache", test_clip_label_cache},
    {"clip_vision_cuda_vs_cpu", test_clip_vision_cuda_vs_cpu},
    {NULL, NULL},
};
