// pipeline.c: SDXL text-to-image end to end. See pipeline.h.
//
// Mirrors diffusers' pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py (encode_prompt,
// prepare_latents, _get_add_time_ids, the denoising loop with classifier-free guidance, the VAE
// decode and image_processor.postprocess), with one deliberate difference: prompts are read as
// AUTOMATIC1111 reads them (modules/sd_hijack_clip.py): emphasis weights such as (((word))), and
// prompts longer than 75 tokens split into 77-token chunks that are encoded separately and
// concatenated, the negative prompt padded with empty chunks to the same count. A plain prompt of
// at most 75 tokens gives exactly diffusers' token ids and conditioning.
#include "pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "ops.h"

const char* const STORYBOARD_NEGATIVE =
    "(((colors))), (((color))), (((colorful))), (((colourful))), mature content, double body, double face, "
    "double features, incorrect posture, two heads, two faces, extra limbs, missing limbs, bad anatomy, "
    "bad proportions, deformed, disfigured, mutated hands, extra fingers, fused fingers, poorly drawn face, "
    "poorly drawn hands, blurry, noisy, messy lines, photorealistic, photograph, 3d render, watermark, "
    "signature, text, lowres, jpeg artifacts";

// ----------------------------------------------------------------------------
// Loading

static void base_name(char* out, size_t cap, const char* path) {
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path);
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/') tmp[--n] = 0; // "model/" -> "model"
    const char* slash = strrchr(tmp, '/');
    snprintf(out, cap, "%s", slash ? slash + 1 : tmp);
    char* dot = strrchr(out, '.');
    if (dot && strcmp(dot, ".safetensors") == 0) *dot = 0;
}

// The weights variant of a component folder: the caller's, else the plain files when present, else fp16.
static const char* pick_variant(const char* dir, const char* stem, const char* asked) {
    if (asked) return asked;
    char single[4400], index[4400];
    snprintf(single, sizeof(single), "%s/%s.safetensors", dir, stem);
    snprintf(index, sizeof(index), "%s/%s.safetensors.index.json", dir, stem);
    return path_is_file(single) || path_is_file(index) ? NULL : "fp16";
}

static int load_diffusers_folder(SdxlModel* m, const char* root, const char* variant, const SdxlPrecision* p, char* err) {
    char path[4200];
    snprintf(path, sizeof(path), "%s/model_index.json", root);
    JsonDoc index;
    if (!path_is_file(path)) return set_error(err, "%s: not an SDXL diffusers folder (no model_index.json)", root);
    if (json_read_file(&index, path, err) != 0) return -1;
    const char* cls = json_get_string(&index.root, "_class_name");
    if (!cls || strcmp(cls, "StableDiffusionXLPipeline") != 0) {
        set_error(err, "%s: _class_name is \"%s\", expected StableDiffusionXLPipeline", path, cls ? cls : "(none)");
        json_free(&index);
        return -1;
    }
    m->force_zeros_for_empty_prompt = 1; // diffusers' default for SDXL
    json_get_bool(&index.root, "force_zeros_for_empty_prompt", &m->force_zeros_for_empty_prompt);
    json_free(&index);

    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/tokenizer", root);
    if (tokenizer_load(&m->tok1, dir, err) != 0) return -1;
    snprintf(dir, sizeof(dir), "%s/tokenizer_2", root);
    if (tokenizer_load(&m->tok2, dir, err) != 0) return -1;
    snprintf(dir, sizeof(dir), "%s/text_encoder", root);
    if (clip_text_load(&m->te1, dir, pick_variant(dir, "model", variant), p->text, err) != 0) return -1;
    snprintf(dir, sizeof(dir), "%s/text_encoder_2", root);
    if (clip_text_load(&m->te2, dir, pick_variant(dir, "model", variant), p->text, err) != 0) return -1;
    snprintf(dir, sizeof(dir), "%s/unet", root);
    if (unet_load(&m->unet, dir, pick_variant(dir, "diffusion_pytorch_model", variant), p->unet, err) != 0) return -1;
    snprintf(dir, sizeof(dir), "%s/vae", root);
    if (vae_load(&m->vae, dir, p->vae, err) != 0) return -1;
    snprintf(path, sizeof(path), "%s/scheduler/scheduler_config.json", root);
    if (path_is_file(path)) return scheduler_config_read(&m->sched, path, err);
    scheduler_config_sdxl(&m->sched);
    return 0;
}

// The configs of a single-file checkpoint: SDXL base's, or those of a diffusers folder describing
// the same architecture (diffusers' from_single_file(config=...) does the same).
static int single_file_configs(const char* config_dir, UnetConfig* uc, ClipTextConfig* c1, ClipTextConfig* c2,
                               VaeConfig* vc, SchedulerConfig* sc, char* err) {
    if (!config_dir) {
        unet_config_sdxl(uc);
        clip_text_config_sdxl(c1, 1);
        clip_text_config_sdxl(c2, 2);
        vae_config_sdxl(vc);
        scheduler_config_sdxl(sc);
        return 0;
    }
    char path[4400];
    snprintf(path, sizeof(path), "%s/unet/config.json", config_dir);
    if (unet_config_read(uc, path, err) != 0) return -1;
    snprintf(path, sizeof(path), "%s/text_encoder/config.json", config_dir);
    if (clip_text_config_read(c1, path, err) != 0) return -1;
    snprintf(path, sizeof(path), "%s/text_encoder_2/config.json", config_dir);
    if (clip_text_config_read(c2, path, err) != 0) return -1;
    snprintf(path, sizeof(path), "%s/vae/config.json", config_dir);
    if (vae_config_read(vc, path, err) != 0) return -1;
    snprintf(path, sizeof(path), "%s/scheduler/scheduler_config.json", config_dir);
    if (path_is_file(path)) return scheduler_config_read(sc, path, err);
    scheduler_config_sdxl(sc);
    return 0;
}

static int load_single_file(SdxlModel* m, const char* file, const char* config_dir, const char* tokenizer_dir,
                            const SdxlPrecision* p, char* err) {
    // the file first: a file that is not a checkpoint at all is told so before anything else
    SafeTensors st;
    if (safetensors_open(&st, file, err) != 0) return -1;
    int rc = -1;
    if (!safetensors_find(&st, "model.diffusion_model.input_blocks.0.0.weight") ||
        !safetensors_find(&st, "conditioner.embedders.1.model.positional_embedding")) {
        set_error(err, "%s: not an SDXL checkpoint in SGM layout (no model.diffusion_model.* or conditioner.embedders.1.model.*)", file);
        goto done;
    }
    char tok1_dir[4400], tok2_dir[4400];
    if (tokenizer_dir) { // one folder for both: the second pads with "!" (id 0), as SDXL's tokenizer_2
        snprintf(tok1_dir, sizeof(tok1_dir), "%s", tokenizer_dir);
        snprintf(tok2_dir, sizeof(tok2_dir), "%s", tokenizer_dir);
    } else if (config_dir) {
        snprintf(tok1_dir, sizeof(tok1_dir), "%s/tokenizer", config_dir);
        snprintf(tok2_dir, sizeof(tok2_dir), "%s/tokenizer_2", config_dir);
    } else {
        set_error(err, "%s is a single-file checkpoint, which holds no tokenizer: give --tokenizer DIR "
                       "(a folder with vocab.json and merges.txt, e.g. an SDXL diffusers folder's tokenizer/) "
                       "or --config DIR (an SDXL diffusers folder)", file);
        goto done;
    }
    UnetConfig uc;
    ClipTextConfig c1, c2;
    VaeConfig vc;
    if (single_file_configs(config_dir, &uc, &c1, &c2, &vc, &m->sched, err) != 0) goto done;
    if (tokenizer_load(&m->tok1, tok1_dir, err) != 0) goto done;
    if (tokenizer_load(&m->tok2, tok2_dir, err) != 0) goto done;
    if (tokenizer_dir && tokenizer_set_pad_token(&m->tok2, "!", err) != 0) goto done; // split out, as diffusers does
    if (clip_text_load_from(&m->te1, &c1, &st, "conditioner.embedders.0.transformer.", 0, p->text, err) != 0) goto done;
    if (clip_text_load_from(&m->te2, &c2, &st, "conditioner.embedders.1.model.", 1, p->text, err) != 0) goto done;
    if (unet_load_sgm(&m->unet, &uc, &st, p->unet, err) != 0) goto done;
    if (vae_load_with_config(&m->vae, &vc, file, p->vae, err) != 0) goto done;
    m->force_zeros_for_empty_prompt = 1;
    rc = 0;
done:
    safetensors_close(&st);
    return rc;
}

// The largest id a tokenizer can emit: its vocabulary's and its added tokens'.
static int32_t tokenizer_max_id(const Tokenizer* t) {
    int32_t most = t->n_vocab - 1;
    for (int i = 0; i < t->n_added; i++) most = t->added[i].id > most ? t->added[i].id : most;
    return most;
}

int sdxl_model_check(const SdxlModel* m, const char* path, char* err) {
    const UnetConfig* u = &m->unet.cfg;
    const VaeConfig* v = &m->vae.config;
    if (u->in_channels != SDXL_LATENT_CHANNELS || u->out_channels != SDXL_LATENT_CHANNELS ||
        v->latent_channels != SDXL_LATENT_CHANNELS)
        return set_error(err, "%s: the UNet takes %d and gives %d channels and the VAE's latents have %d; the SDXL pipeline "
                         "denoises %d-channel latents (inpainting UNets are not supported)", path, u->in_channels,
                         u->out_channels, v->latent_channels, SDXL_LATENT_CHANNELS);
    if (v->in_channels != 3 || v->out_channels != 3)
        return set_error(err, "%s: the VAE takes %d and gives %d channels; images are RGB (3)", path, v->in_channels,
                         v->out_channels);
    const ClipTextConfig *c1 = &m->te1.cfg, *c2 = &m->te2.cfg;
    if (c2->projection_dim == 0)
        return set_error(err, "%s: text_encoder_2 has no text_projection; SDXL's pooled text comes from it", path);
    if (c1->hidden + c2->hidden != u->cross_attention_dim ||
        c2->projection_dim + 6 * u->addition_time_embed_dim != u->projection_class_embeddings_input_dim)
        return set_error(err, "%s: the text encoders give %d + %d values per token and a pooled %d, the UNet expects %d "
                         "(cross_attention_dim) and %d + 6 x %d (projection_class_embeddings_input_dim)", path, c1->hidden,
                         c2->hidden, c2->projection_dim, u->cross_attention_dim,
                         u->projection_class_embeddings_input_dim - 6 * u->addition_time_embed_dim, u->addition_time_embed_dim);
    const struct { const Tokenizer* tok; const ClipTextConfig* cfg; const char* name; } pairs[2] = {
        {&m->tok1, c1, "tokenizer"}, {&m->tok2, c2, "tokenizer_2"}};
    for (int k = 0; k < 2; k++) {
        int32_t most = tokenizer_max_id(pairs[k].tok);
        if (most >= pairs[k].cfg->vocab_size)
            return set_error(err, "%s: %s has ids up to %d, its text encoder's vocab_size is %d", path, pairs[k].name, most,
                             pairs[k].cfg->vocab_size);
    }
    return 0;
}

int sdxl_model_load(SdxlModel* m, const char* path, const char* variant, const char* config_dir, const char* tokenizer_dir,
                    const SdxlPrecision* precision, char* err) {
    const SdxlPrecision reference = {DT_F32, DT_F32, DT_F32};
    const SdxlPrecision* p = precision ? precision : &reference;
    memset(m, 0, sizeof(*m));
    base_name(m->name, sizeof(m->name), path);
    int rc;
    if (path_is_dir(path)) rc = load_diffusers_folder(m, path, variant, p, err);
    else if (path_is_file(path)) rc = load_single_file(m, path, config_dir, tokenizer_dir, p, err);
    else rc = set_error(err, "%s: no such file or folder", path);
    if (rc == 0) rc = sdxl_model_check(m, path, err);
    if (rc != 0) sdxl_model_free(m);
    return rc;
}

void sdxl_model_free(SdxlModel* m) {
    if (m->tok1.id_to_token) tokenizer_free(&m->tok1);
    if (m->tok2.id_to_token) tokenizer_free(&m->tok2);
    if (m->te1.layers) clip_text_free(&m->te1);
    if (m->te2.layers) clip_text_free(&m->te2);
    if (m->unet.w.params) unet_free(&m->unet);
    if (m->vae.weights.params) vae_free(&m->vae);
    memset(m, 0, sizeof(*m));
}

// ----------------------------------------------------------------------------
// Text conditioning

// AUTOMATIC1111's "Original" emphasis (sd_emphasis.py EmphasisOriginal) on one chunk's encoder
// output z (77, C): scale each token by its multiplier, then rescale the whole chunk so its mean
// is what it was, so emphasis shifts attention between tokens without changing the overall level.
static void apply_emphasis(float* z, const float* multipliers, int tokens, int C) {
    int all_one = 1;
    for (int i = 0; i < tokens; i++) all_one &= multipliers[i] == 1.0f;
    if (all_one) return; // z * 1 and a mean ratio of exactly 1 would change nothing
    double before = 0, after = 0;
    for (size_t i = 0; i < (size_t)tokens * C; i++) before += z[i];
    for (int t = 0; t < tokens; t++)
        for (int c = 0; c < C; c++) z[(size_t)t * C + c] *= multipliers[t];
    for (size_t i = 0; i < (size_t)tokens * C; i++) after += z[i];
    float ratio = (float)((before / ((double)tokens * C)) / (after / ((double)tokens * C)));
    for (size_t i = 0; i < (size_t)tokens * C; i++) z[i] *= ratio;
}

// B sequences of 77 ids through a text encoder on the current backend: hidden (B, 77, hidden)
// penultimate states and, when pooled is not NULL, the pooled projections (B, projection_dim),
// into host arrays.
static void encode_ids(const ClipText* te, const int32_t* ids, int B, float* hidden, float* pooled) {
    int C = te->cfg.hidden, P = te->cfg.projection_dim;
    Arena scratch;
    arena_init(&scratch, "text encoder scratch", sizeof(float) * clip_text_scratch_floats(&te->cfg, B, CLIP_CONTEXT),
               backend_current() == BACKEND_CUDA);
    float* d_hidden = device_malloc(sizeof(float) * B * CLIP_CONTEXT * C);
    float* d_pooled = pooled ? device_malloc(sizeof(float) * B * P) : NULL;
    clip_text_forward(te, ids, B, CLIP_CONTEXT, d_hidden, d_pooled, &scratch);
    copy_to_host(hidden, d_hidden, sizeof(float) * B * CLIP_CONTEXT * C);
    if (pooled) {
        copy_to_host(pooled, d_pooled, sizeof(float) * B * P);
        device_free(d_pooled);
    }
    device_free(d_hidden);
    arena_free(&scratch);
}

void sdxl_encode_caption(SdxlModel* m, const char* caption, float* context, float* pooled) {
    const Tokenizer* toks[2] = {&m->tok1, &m->tok2};
    const ClipText* encoders[2] = {&m->te1, &m->te2};
    int C[2] = {m->te1.cfg.hidden, m->te2.cfg.hidden}, Ctot = C[0] + C[1];
    for (int k = 0; k < 2; k++) {
        int32_t ids[CLIP_CONTEXT];
        tokenizer_encode_padded(toks[k], caption, ids);
        float* hidden = xmalloc(sizeof(float) * CLIP_CONTEXT * C[k]);
        encode_ids(encoders[k], ids, 1, hidden, k == 1 ? pooled : NULL);
        for (int t = 0; t < CLIP_CONTEXT; t++) // channels [0, C1) CLIP-L, [C1, C1 + C2) bigG
            memcpy(context + (size_t)t * Ctot + (k ? C[0] : 0), hidden + (size_t)t * C[k], sizeof(float) * C[k]);
        free(hidden);
    }
}

int sdxl_encode_prompts(SdxlModel* m, const char* positive, const char* negative, float** context_out,
                        float** pooled_out, int* tokens_out, char* err) {
    int zero_negative = m->force_zeros_for_empty_prompt && negative[0] == 0;
    PromptChunks chunks[2][2]; // [prompt: 0 negative, 1 positive][tokenizer]
    memset(chunks, 0, sizeof(chunks));
    const char* texts[2] = {negative, positive};
    const Tokenizer* toks[2] = {&m->tok1, &m->tok2};
    int n = 1, rc = 0;
    for (int p = 0; p < 2 && rc == 0; p++)
        for (int k = 0; k < 2 && rc == 0; k++) {
            char e[ERR_MAX];
            rc = prompt_chunks_build(toks[k], texts[p], &chunks[p][k], e); // "prompt: ..."
            if (rc != 0) set_error(err, "%s%s", p == 0 ? "negative " : "", e);
            if (rc == 0 && chunks[p][k].n_chunks > n) n = chunks[p][k].n_chunks;
        }
    if (rc != 0) {
        for (int p = 0; p < 2; p++)
            for (int k = 0; k < 2; k++) prompt_chunks_free(&chunks[p][k]);
        return -1;
    }
    for (int p = 0; p < 2; p++)
        for (int k = 0; k < 2; k++) prompt_chunks_pad(toks[k], &chunks[p][k], n);

    const ClipText* encoders[2] = {&m->te1, &m->te2};
    int C[2] = {m->te1.cfg.hidden, m->te2.cfg.hidden}, Ctot = C[0] + C[1], P = m->te2.cfg.projection_dim;
    int L = n * CLIP_CONTEXT;
    float* context = xcalloc((size_t)2 * L * Ctot, sizeof(float));
    float* pooled = xcalloc((size_t)2 * P, sizeof(float));
    int B = 2 * n; // every chunk of both prompts in one encoder call
    int32_t* ids = xmalloc(sizeof(int32_t) * B * CLIP_CONTEXT);
    for (int k = 0; k < 2; k++) {
        const ClipText* te = encoders[k];
        for (int p = 0; p < 2; p++)
            for (int c = 0; c < n; c++)
                memcpy(ids + (size_t)(p * n + c) * CLIP_CONTEXT, chunks[p][k].chunks[c].ids, sizeof(int32_t) * CLIP_CONTEXT);
        float* hidden = xmalloc(sizeof(float) * B * CLIP_CONTEXT * C[k]);
        float* all_pooled = k == 1 ? xmalloc(sizeof(float) * B * P) : NULL;
        encode_ids(te, ids, B, hidden, all_pooled);
        if (k == 1) { // A1111 and SGM pool the first chunk only
            for (int p = 0; p < 2; p++) memcpy(pooled + (size_t)p * P, all_pooled + (size_t)(p * n) * P, sizeof(float) * P);
            free(all_pooled);
        }
        for (int p = 0; p < 2; p++) {
            for (int c = 0; c < n; c++) {
                float* z = hidden + (size_t)(p * n + c) * CLIP_CONTEXT * C[k];
                apply_emphasis(z, chunks[p][k].chunks[c].multipliers, CLIP_CONTEXT, C[k]);
                // token t of chunk c goes to row c*77 + t, channels [0, C1) for CLIP-L, [C1, C1+C2) for bigG
                for (int t = 0; t < CLIP_CONTEXT; t++)
                    memcpy(context + ((size_t)p * L + (size_t)c * CLIP_CONTEXT + t) * Ctot + (k ? C[0] : 0),
                           z + (size_t)t * C[k], sizeof(float) * C[k]);
            }
        }
        free(hidden);
    }
    if (zero_negative) { // diffusers: negative_prompt None -> zeros; A1111: "" -> zeros
        memset(context, 0, sizeof(float) * L * Ctot);
        memset(pooled, 0, sizeof(float) * P);
    }
    free(ids);
    for (int p = 0; p < 2; p++)
        for (int k = 0; k < 2; k++) prompt_chunks_free(&chunks[p][k]);
    *context_out = context;
    *pooled_out = pooled;
    *tokens_out = L;
    return 0;
}

// ----------------------------------------------------------------------------
// Denoising with classifier-free guidance

typedef struct {
    const Unet* unet;
    const float* context; // (N, L, 2048) on the backend: [negative, positive], or the positive alone
    const float* pooled;  // (N, pooled)
    float time_ids[2 * 6];
    int L, N, h, w;
    float cfg;
    float* x2;   // (N, 4, h, w): the model input, duplicated for the two prompts
    float* eps2; // (N, 4, h, w)
    Arena* act;
    // progress
    int quiet, steps;
    double t_start;
} Denoiser;

// ModelFn (sample.h): eps = eps_negative + cfg * (eps_positive - eps_negative), one UNet call at batch 2.
static void guided_eps(void* vctx, const float* model_input, float t, int step, float* out) {
    Denoiser* d = vctx;
    size_t n = (size_t)4 * d->h * d->w;
    float ts[2] = {t, t};
    for (int b = 0; b < d->N; b++) copy_device_to_device(d->x2 + b * n, model_input, sizeof(float) * n);
    unet_forward(d->unet, d->N == 2 ? d->eps2 : out, d->x2, ts, d->context, d->L, d->pooled, d->time_ids, d->N, d->h, d->w,
                 d->act);
    if (d->N == 2) cfg_combine(out, d->eps2, d->eps2 + n, d->cfg, n);
    if (!d->quiet) {
        device_synchronize();
        double elapsed = now_seconds() - d->t_start;
        double per_step = elapsed / (step + 1);
        fprintf(stderr, "\rstep %d/%d  %.2f s/it  ETA %.0f s   ", step + 1, d->steps, per_step,
                per_step * (d->steps - step - 1));
        if (step + 1 == d->steps) fputc('\n', stderr);
    }
}

// ----------------------------------------------------------------------------

char* storyboard_prompt(const char* prompt) {
    size_t n = strlen(prompt) + strlen(STORYBOARD_STYLE) + 3;
    char* s = xmalloc(n);
    if (prompt[0]) snprintf(s, n, "%s, %s", prompt, STORYBOARD_STYLE);
    else snprintf(s, n, "%s", STORYBOARD_STYLE);
    return s;
}

char* a1111_parameters(const SdxlModel* m, const GenerateParams* p) {
    static const char* sampler_a1111[] = {"Euler", "Euler a", "DDIM", "DPM++ 2M"};
    size_t cap = strlen(p->prompt) + strlen(p->negative) + 1024;
    char* s = xmalloc(cap);
    size_t n = (size_t)snprintf(s, cap, "%s", p->prompt);
    if (p->lora_name) n += (size_t)snprintf(s + n, cap - n, " <lora:%s:%g>", p->lora_name, p->lora_scale); // A1111's way
    if (p->negative[0]) n += (size_t)snprintf(s + n, cap - n, "\nNegative prompt: %s", p->negative);
    n += (size_t)snprintf(s + n, cap - n, "\nSteps: %d, Sampler: %s, %sCFG scale: %g, Seed: %llu, Size: %dx%d, Model: %s, Version: sdxl.c",
                          p->steps, sampler_a1111[p->sampler], p->sampler == SAMPLER_DPMPP_2M_KARRAS ? "Schedule type: Karras, " : "",
                          p->cfg, (unsigned long long)p->seed, p->width, p->height, m->name);
    return s;
}

void generate_trace_free(GenerateTrace* t) {
    free(t->context);
    free(t->pooled);
    free(t->latents_final);
    free(t->image);
    memset(t, 0, sizeof(*t));
}

int sdxl_generate(SdxlModel* m, const GenerateParams* p, Image* out, GenerateTrace* trace, char* err) {
    memset(out, 0, sizeof(*out));
    if (p->width < 8 || p->height < 8 || p->width > 4096 || p->height > 4096)
        return set_error(err, "image size %dx%d is outside 8..4096", p->width, p->height);
    if (p->steps < 1 || p->steps > 1000) return set_error(err, "steps must be in 1..1000 (got %d)", p->steps);
    // SDXL works on multiples of 8 (the VAE's factor): generate at the next ones and crop (1365 -> 1368)
    int gen_w = (p->width + 7) / 8 * 8, gen_h = (p->height + 7) / 8 * 8, h = gen_h / 8, w = gen_w / 8;
    Schedule sched;
    if (schedule_init(&sched, p->sampler, p->steps, &m->sched, err) != 0) return -1;
    double t_start = now_seconds();

    // text -> conditioning
    float *context, *pooled;
    int L;
    if (sdxl_encode_prompts(m, p->prompt, p->negative, &context, &pooled, &L, err) != 0) return -1;
    int Ctot = m->te1.cfg.hidden + m->te2.cfg.hidden, P = m->te2.cfg.projection_dim;
    if (Ctot != m->unet.cfg.cross_attention_dim || P + 6 * m->unet.cfg.addition_time_embed_dim !=
                                                        m->unet.cfg.projection_class_embeddings_input_dim) {
        free(context);
        free(pooled);
        return set_error(err, "%s: the text encoders give %d + %d values, the UNet expects %d and %d", m->name, Ctot, P,
                         m->unet.cfg.cross_attention_dim, m->unet.cfg.projection_class_embeddings_input_dim);
    }
    int N = p->cfg > 1.0f ? 2 : 1; // diffusers skips guidance (and the negative prompt) at scale <= 1
    size_t row = (size_t)L * Ctot;
    float* d_context = device_malloc(sizeof(float) * N * row);
    float* d_pooled = device_malloc(sizeof(float) * N * P);
    copy_to_device(d_context, N == 2 ? context : context + row, sizeof(float) * N * row);
    copy_to_device(d_pooled, N == 2 ? pooled : pooled + P, sizeof(float) * N * P);
    double t_text = now_seconds(); // the encoders' results were copied to the host: finished

    // initial latents: torch.randn((1, 4, h, w), generator=torch.Generator("cpu").manual_seed(seed)) * init_noise_sigma
    size_t n = (size_t)4 * h * w;
    TorchGenerator gen;
    torch_manual_seed(&gen, p->seed);
    float* noise = xmalloc(sizeof(float) * n);
    torch_randn(&gen, noise, n);
    float* x = device_malloc(sizeof(float) * n);
    copy_to_device(x, noise, sizeof(float) * n);
    scale_forward(x, x, sched.init_noise_sigma, n, DT_F32);
    free(noise);

    // the denoising loop
    Denoiser d = {0};
    d.unet = &m->unet;
    d.context = d_context;
    d.pooled = d_pooled;
    d.L = L;
    d.N = N;
    d.h = h;
    d.w = w;
    d.cfg = p->cfg;
    // add_time_ids: original size, crop top-left, target size, the same for both prompts
    float ids[6] = {(float)gen_h, (float)gen_w, 0.0f, 0.0f, (float)gen_h, (float)gen_w};
    memcpy(d.time_ids, ids, sizeof(ids));
    memcpy(d.time_ids + 6, ids, sizeof(ids));
    d.x2 = device_malloc(sizeof(float) * N * n);
    d.eps2 = device_malloc(sizeof(float) * N * n);
    Arena act, scratch;
    arena_init(&act, "unet activations", unet_activation_bytes(&m->unet.cfg, N, h, w, L, m->unet.w.dtype),
               backend_current() == BACKEND_CUDA);
    arena_init(&scratch, "sampler scratch", sample_scratch_bytes(n), backend_current() == BACKEND_CUDA);
    d.act = &act;
    d.quiet = p->quiet;
    d.steps = p->steps;
    d.t_start = now_seconds();
    sample(&sched, x, n, guided_eps, &d, &gen, &scratch);
    device_synchronize();
    double t_denoise = now_seconds();
    arena_free(&scratch);
    arena_free(&act);
    device_free(d.x2);
    device_free(d.eps2);
    device_free(d_context);
    device_free(d_pooled);

    if (trace) {
        memset(trace, 0, sizeof(*trace));
        trace->context = context;
        trace->pooled = pooled;
        trace->context_tokens = L;
        trace->latents_final = xmalloc(sizeof(float) * n);
        copy_to_host(trace->latents_final, x, sizeof(float) * n);
        trace->gen_width = gen_w;
        trace->gen_height = gen_h;
    } else {
        free(context);
        free(pooled);
    }

    // latents / scaling_factor -> VAE decoder -> (1, 3, gen_h, gen_w) in about [-1, 1]
    scale_forward(x, x, 1.0f / m->vae.config.scaling_factor, n, DT_F32);
    size_t npix = (size_t)3 * gen_h * gen_w;
    float* d_image = device_malloc(sizeof(float) * npix);
    Arena vae_act;
    arena_init(&vae_act, "vae activations", vae_decode_arena_bytes(&m->vae.config, 1, h, w, m->vae.weights.dtype), backend_current() == BACKEND_CUDA);
    double t_decode0 = now_seconds();
    vae_decode(&m->vae, d_image, x, 1, h, w, &vae_act);
    device_synchronize();
    double t_decode = now_seconds() - t_decode0;
    arena_free(&vae_act);
    float* image = xmalloc(sizeof(float) * npix);
    copy_to_host(image, d_image, sizeof(float) * npix);
    device_free(d_image);
    device_free(x);

    // image_processor.postprocess: (x / 2 + 0.5).clamp(0, 1), then round(x * 255) to 8 bits
    // (numpy rounds halves to even; rintf does too in the default rounding mode)
    if (trace) trace->image = xmalloc(sizeof(float) * npix);
    out->width = p->width;
    out->height = p->height;
    out->channels = 3;
    out->depth = 8;
    uint8_t* rgb = xmalloc((size_t)p->width * p->height * 3);
    int x0 = (gen_w - p->width) / 2, y0 = (gen_h - p->height) / 2; // centre crop
    for (int y = 0; y < gen_h; y++)
        for (int xx = 0; xx < gen_w; xx++)
            for (int c = 0; c < 3; c++) {
                float v = image[(size_t)c * gen_h * gen_w + (size_t)y * gen_w + xx] / 2.0f + 0.5f;
                v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
                if (trace) trace->image[((size_t)y * gen_w + xx) * 3 + c] = v;
                int cx = xx - x0, cy = y - y0;
                if (cx >= 0 && cx < p->width && cy >= 0 && cy < p->height)
                    rgb[((size_t)cy * p->width + cx) * 3 + c] = (uint8_t)rintf(v * 255.0f);
            }
    free(image);
    out->data = rgb;
    char* params = a1111_parameters(m, p);
    image_add_text(out, "parameters", params);
    free(params);
    if (p->timings) {
        p->timings->text = t_text - t_start;
        p->timings->denoise = t_denoise - t_text;
        p->timings->decode = t_decode;
        p->timings->total = now_seconds() - t_start;
    }
    return 0;
}
