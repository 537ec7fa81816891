// clip.c: the CLIP text transformer (transformers CLIPTextModel / CLIPTextModelWithProjection),
// and, for the evaluators, the CLIP vision tower, CLIPModel folders, CLIP preprocessing, the
// CLIP score and the CLIP interrogator (from "Vision tower" on; each section names its sources).
//
// Mirrors transformers/models/clip/modeling_clip.py:
//   x = token_embedding[ids] + position_embedding[0..L)
//   each CLIPEncoderLayer (pre-LN):  x = x + out_proj(causal_attention(q, k, v of layer_norm1(x)))
//                                    x = x + fc2(act(fc1(layer_norm2(x))))
//   last_hidden_state = final_layer_norm(x);  pooled = last_hidden_state[b, eos_b]
//   text_embeds = text_projection(pooled)          (CLIPTextModelWithProjection only)
// hidden_states[k] is the input of layer k (hidden_states[0] the embeddings), so SDXL's
// hidden_states[-2] is the input of the last layer, before any final norm.
//
// Key names: transformers folders hold "text_model.embeddings...." (transformers >= 5.6 saves
// CLIPTextModel without the "text_model." prefix; both are accepted) and "text_projection.weight".
// The SGM single file holds CLIP-L in the same names under "conditioner.embedders.0.transformer.",
// and OpenCLIP bigG in open_clip's names under "conditioner.embedders.1.model.", where q, k and v
// are one fused in_proj (split by rows here) and text_projection is stored transposed (x @ P).
// Internal names are the transformers ones without the "text_model." prefix.
#include "clip.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "ops.h"

// ----------------------------------------------------------------------------
// Config

// The CLIPTextConfig fields of the JSON object r (a text_encoder config.json, or the
// "text_config" of a CLIPModel's). With hf_defaults, missing fields take transformers'
// CLIPTextConfig defaults (configuration_clip.py: vocab 49408, hidden 512, intermediate 2048, 12
// layers, 8 heads, 77 positions, eos_token_id 49407), as from_pretrained does; without, the sizes
// must be present and a missing eos_token_id means the legacy 2.
static int clip_text_config_parse(ClipTextConfig* c, const JsonValue* r, const char* path, int hf_defaults, char* err) {
    memset(c, 0, sizeof(*c));
    struct { const char* key; int* dst; int hi, dflt; } ints[] = {
        {"vocab_size", &c->vocab_size, CLIP_MAX_VOCAB, 49408}, {"hidden_size", &c->hidden, CLIP_MAX_HIDDEN, 512},
        {"intermediate_size", &c->intermediate, CLIP_MAX_INTERMEDIATE, 2048},
        {"num_hidden_layers", &c->layers, CLIP_MAX_LAYERS, 12}, {"num_attention_heads", &c->heads, CLIP_MAX_HIDDEN, 8},
        {"max_position_embeddings", &c->max_positions, CLIP_MAX_POSITIONS, 77},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        int rc = hf_defaults ? json_config_int_or(r, ints[i].key, 1, ints[i].hi, ints[i].dflt, ints[i].dst, path, err)
                             : json_config_int(r, ints[i].key, 1, ints[i].hi, ints[i].dst, path, err);
        if (rc < 0) return -1;
    }
    double eps;
    if (json_config_number_or(r, "layer_norm_eps", NORM_EPS_MIN, NORM_EPS_MAX, 1e-5, &eps, path, err) < 0) return -1;
    c->eps = (float)eps;
    const char* act = json_get_string(r, "hidden_act");
    if (!act || strcmp(act, "quick_gelu") == 0) c->act = CLIP_ACT_QUICK_GELU; // CLIPTextConfig's default
    else if (strcmp(act, "gelu") == 0) c->act = CLIP_ACT_GELU;
    else return set_error(err, "%s: hidden_act \"%s\" is not quick_gelu or gelu", path, act);
    if (json_config_int_or(r, "eos_token_id", 0, c->vocab_size - 1, hf_defaults ? 49407 : 2, &c->eos_token_id, path, err) < 0)
        return -1;
    if (c->eos_token_id >= c->vocab_size) // the default, against a small vocabulary
        return set_error(err, "%s: \"eos_token_id\" defaults to %d, outside the vocabulary of %d", path, c->eos_token_id,
                         c->vocab_size);
    if (c->hidden % c->heads != 0 || c->hidden / c->heads > ATTENTION_MAX_HS)
        return set_error(err, "%s: \"hidden_size\" %d does not split into %d heads (\"num_attention_heads\") of at most %d",
                         path, c->hidden, c->heads, ATTENTION_MAX_HS);
    return 0;
}

int clip_text_config_read(ClipTextConfig* c, const char* path, char* err) {
    JsonDoc doc;
    if (json_read_file(&doc, path, err) != 0) return -1;
    const JsonValue* r = &doc.root;
    int rc = clip_text_config_parse(c, r, path, 0, err);
    // The projection exists in CLIPTextModelWithProjection, whatever projection_dim says.
    const JsonValue* arch = json_get(r, "architectures");
    int with_projection = 0;
    if (arch && arch->type == JSON_ARRAY)
        for (size_t i = 0; i < arch->length; i++)
            if (arch->items[i].type == JSON_STRING && strcmp(arch->items[i].string, "CLIPTextModelWithProjection") == 0)
                with_projection = 1;
    if (rc == 0 && with_projection) rc = json_config_int(r, "projection_dim", 1, CLIP_MAX_HIDDEN, &c->projection_dim, path, err);
    json_free(&doc);
    return rc;
}

void clip_text_config_sdxl(ClipTextConfig* c, int which) {
    memset(c, 0, sizeof(*c));
    c->vocab_size = 49408;
    c->max_positions = 77;
    c->eps = 1e-5f;
    c->eos_token_id = 2; // the legacy value in both SDXL configs: pooled row = argmax(ids)
    if (which == 1) {
        c->hidden = 768;
        c->intermediate = 3072;
        c->layers = 12;
        c->heads = 12;
        c->act = CLIP_ACT_QUICK_GELU;
    } else {
        c->hidden = 1280;
        c->intermediate = 5120;
        c->layers = 32;
        c->heads = 20;
        c->act = CLIP_ACT_GELU;
        c->projection_dim = 1280;
    }
}

// ----------------------------------------------------------------------------
// Parameters

// One CLIPEncoderLayer's parameters under `prefix` ("encoder.layers.3"), width D, MLP width I.
static void clip_layer_build(ClipLayer* L, Weights* w, const char* p, int D, int I, float eps) {
    char name[NAME_MAX_LEN];
    L->ln1 = layer_norm_build(w, name_fmt(name, "%s.layer_norm1", p), D, eps);
    L->q = linear_build(w, name_fmt(name, "%s.self_attn.q_proj", p), D, D, 1);
    L->k = linear_build(w, name_fmt(name, "%s.self_attn.k_proj", p), D, D, 1);
    L->v = linear_build(w, name_fmt(name, "%s.self_attn.v_proj", p), D, D, 1);
    L->out = linear_build(w, name_fmt(name, "%s.self_attn.out_proj", p), D, D, 1);
    L->ln2 = layer_norm_build(w, name_fmt(name, "%s.layer_norm2", p), D, eps);
    L->fc1 = linear_build(w, name_fmt(name, "%s.mlp.fc1", p), D, I, 1);
    L->fc2 = linear_build(w, name_fmt(name, "%s.mlp.fc2", p), I, D, 1);
}

static void clip_text_build(ClipText* m, Weights* w) {
    const ClipTextConfig* c = &m->cfg;
    m->token_embedding = tensor_build(w, "embeddings.token_embedding.weight", 2, (int64_t[]){c->vocab_size, c->hidden});
    m->position_embedding =
        tensor_build(w, "embeddings.position_embedding.weight", 2, (int64_t[]){c->max_positions, c->hidden});
    for (int l = 0; l < c->layers; l++) {
        char p[NAME_MAX_LEN];
        snprintf(p, sizeof(p), "encoder.layers.%d", l);
        clip_layer_build(&m->layers[l], w, p, c->hidden, c->intermediate, c->eps);
    }
    m->final_ln = layer_norm_build(w, "final_layer_norm", c->hidden, c->eps);
    if (c->projection_dim) m->projection = linear_build(w, "text_projection", c->hidden, c->projection_dim, 0);
}

// The first build pass (names and shapes, no parameter memory), then the allocation and the
// second (weights.h).
static void clip_text_declare(ClipText* m, const ClipTextConfig* cfg, const char* what, DType dtype) {
    memset(m, 0, sizeof(*m));
    m->cfg = *cfg;
    m->layers = xcalloc((size_t)cfg->layers, sizeof(ClipLayer));
    weights_init(&m->w, what, dtype);
    clip_text_build(m, &m->w);
}

static void clip_text_allocate_declared(ClipText* m) {
    weights_allocate(&m->w);
    clip_text_build(m, &m->w);
    weights_finish(&m->w);
}

static void clip_text_create(ClipText* m, const ClipTextConfig* cfg, const char* what, DType dtype) {
    clip_text_declare(m, cfg, what, dtype);
    clip_text_allocate_declared(m);
}

// transformers layout: everything under `outer` + `inner` ("text_model." / "vision_model." or
// ""), but the projection (`beside`: "text_projection" / "visual_projection"), which sits beside
// the tower.
typedef struct {
    const char* outer;
    const char* inner;
    const char* beside;
} HfKeys;

static int hf_key(const char* name, ParamSource* src, void* ctx) {
    const HfKeys* k = ctx;
    memset(src, 0, sizeof(*src));
    int beside = strncmp(name, k->beside, strlen(k->beside)) == 0;
    snprintf(src->key, sizeof(src->key), "%s%s%s", k->outer, beside ? "" : k->inner, name);
    return 0;
}

// open_clip layout (SGM's conditioner.embedders.1.model.*), for a model of `hidden` width.
typedef struct {
    const char* prefix;
    int hidden;
} OpenClipKeys;

static int open_clip_key(const char* name, ParamSource* src, void* ctx) {
    const OpenClipKeys* k = ctx;
    memset(src, 0, sizeof(*src));
    int layer;
    char rest[WEIGHTS_NAME_MAX];
    const char* mapped = NULL;
    if (strcmp(name, "embeddings.token_embedding.weight") == 0) mapped = "token_embedding.weight";
    else if (strcmp(name, "embeddings.position_embedding.weight") == 0) mapped = "positional_embedding";
    else if (strcmp(name, "final_layer_norm.weight") == 0) mapped = "ln_final.weight";
    else if (strcmp(name, "final_layer_norm.bias") == 0) mapped = "ln_final.bias";
    else if (strcmp(name, "text_projection.weight") == 0) {
        mapped = "text_projection"; // stored (hidden, proj) and used as x @ P: our weight is P^T
        src->transpose = 1;
    }
    if (mapped) {
        snprintf(src->key, sizeof(src->key), "%s%s", k->prefix, mapped);
        return 0;
    }
    if (sscanf(name, "encoder.layers.%d.%199s", &layer, rest) != 2) return -1;
    static const struct { const char* hf; const char* oc; } subs[] = {
        {"layer_norm1.weight", "ln_1.weight"}, {"layer_norm1.bias", "ln_1.bias"},
        {"layer_norm2.weight", "ln_2.weight"}, {"layer_norm2.bias", "ln_2.bias"},
        {"mlp.fc1.weight", "mlp.c_fc.weight"}, {"mlp.fc1.bias", "mlp.c_fc.bias"},
        {"mlp.fc2.weight", "mlp.c_proj.weight"}, {"mlp.fc2.bias", "mlp.c_proj.bias"},
        {"self_attn.out_proj.weight", "attn.out_proj.weight"}, {"self_attn.out_proj.bias", "attn.out_proj.bias"},
    };
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        if (strcmp(rest, subs[i].hf) == 0) {
            snprintf(src->key, sizeof(src->key), "%stransformer.resblocks.%d.%s", k->prefix, layer, subs[i].oc);
            return 0;
        }
    }
    // q, k, v are rows [0, D), [D, 2D), [2D, 3D) of the fused in_proj
    static const char* qkv[3] = {"q_proj", "k_proj", "v_proj"};
    for (int j = 0; j < 3; j++) {
        char w_name[64], b_name[64];
        snprintf(w_name, sizeof(w_name), "self_attn.%s.weight", qkv[j]);
        snprintf(b_name, sizeof(b_name), "self_attn.%s.bias", qkv[j]);
        int is_w = strcmp(rest, w_name) == 0, is_b = strcmp(rest, b_name) == 0;
        if (is_w || is_b) {
            snprintf(src->key, sizeof(src->key), "%stransformer.resblocks.%d.attn.%s", k->prefix, layer,
                     is_w ? "in_proj_weight" : "in_proj_bias");
            src->row_begin = (int64_t)j * k->hidden;
            src->row_end = (int64_t)(j + 1) * k->hidden;
            return 0;
        }
    }
    return -1;
}

int clip_text_load_from(ClipText* m, const ClipTextConfig* cfg, const SafeTensors* st, const char* prefix, int open_clip,
                        DType dtype, char* err) {
    clip_text_declare(m, cfg, cfg->projection_dim ? "text_encoder_2" : "text_encoder", dtype);
    OpenClipKeys oc_keys = {prefix, cfg->hidden};
    char probe[512];
    snprintf(probe, sizeof(probe), "%stext_model.embeddings.token_embedding.weight", prefix);
    HfKeys hf_keys = {prefix, safetensors_find(st, probe) ? "text_model." : "", "text_projection"};
    KeyMap map = open_clip ? open_clip_key : hf_key;
    void* keys = open_clip ? (void*)&oc_keys : (void*)&hf_keys;
    // every tensor checked against the file before the parameter memory is allocated
    int rc = weights_check_mapped(&m->w, st, map, keys, err);
    if (rc == 0) {
        clip_text_allocate_declared(m);
        rc = weights_load_mapped(&m->w, st, map, keys, err);
    }
    if (rc != 0) clip_text_free(m);
    return rc;
}

int clip_text_load(ClipText* m, const char* folder, const char* variant, DType dtype, char* err) {
    char path[4096];
    ClipTextConfig cfg;
    snprintf(path, sizeof(path), "%s/config.json", folder);
    if (clip_text_config_read(&cfg, path, err) != 0) return -1;
    SafeTensors st;
    if (safetensors_open_dir(&st, folder, "model", variant, err) != 0) return -1;
    int rc = clip_text_load_from(m, &cfg, &st, "", 0, dtype, err);
    safetensors_close(&st);
    return rc;
}

void clip_text_allocate(ClipText* m, const ClipTextConfig* cfg, DType dtype) {
    clip_text_create(m, cfg, cfg->projection_dim ? "text_encoder_2" : "text_encoder", dtype);
}

void clip_text_init_random(ClipText* m, const ClipTextConfig* cfg, uint64_t seed) {
    clip_text_allocate(m, cfg, DT_F32);
    weights_fill_random(&m->w, seed);
}

void clip_text_free(ClipText* m) {
    weights_free(&m->w);
    free(m->layers);
    memset(m, 0, sizeof(*m));
}

// ----------------------------------------------------------------------------
// Forward

size_t clip_text_scratch_floats(const ClipTextConfig* c, int B, int L) {
    size_t T = (size_t)B * L;
    // x, h, q, k, v, attention out: 6 x (T, hidden); the MLP's (T, intermediate); the pooled rows;
    // plus the ids (int32, one float each) and alignment slack
    return 6 * T * c->hidden + T * c->intermediate + (size_t)B * c->hidden + T + 16 * ARENA_ALIGN;
}

// One pre-LN CLIPEncoderLayer on x (T = B*L tokens of width D), in place, in the storage type of
// its weights. The text tower runs it with the causal mask, the vision tower without; everything
// else is shared.
static void clip_encoder_layer(const ClipLayer* L, void* x, int B, int Ltok, int D, int heads, int intermediate,
                               ClipActivation act, int causal, Arena* scratch) {
    DType dt = L->q.dtype;
    size_t T = (size_t)B * Ltok, mark = arena_mark(scratch);
    void* h = arena_elems(scratch, T * D, dt, "clip h");
    void* q = arena_elems(scratch, T * D, dt, "clip q");
    void* k = arena_elems(scratch, T * D, dt, "clip k");
    void* v = arena_elems(scratch, T * D, dt, "clip v");
    void* a = arena_elems(scratch, T * D, dt, "clip attention");
    // x = x + out_proj(attention(layer_norm1(x)))                   (B, L, D)
    layer_norm(&L->ln1, h, x, (int)T);
    linear(&L->q, q, h, (int)T);
    linear(&L->k, k, h, (int)T);
    linear(&L->v, v, h, (int)T);
    attention_forward(a, q, k, v, B, heads, Ltok, Ltok, D / heads, causal, dt);
    linear(&L->out, h, a, (int)T);
    add_forward(x, x, h, T * D, dt);
    // x = x + fc2(act(fc1(layer_norm2(x))))
    void* f = arena_elems(scratch, T * intermediate, dt, "clip mlp");
    layer_norm(&L->ln2, h, x, (int)T);
    linear(&L->fc1, f, h, (int)T);                                 // (B, L, intermediate)
    if (act == CLIP_ACT_QUICK_GELU) quick_gelu_forward(f, f, T * intermediate, dt);
    else gelu_forward(f, f, T * intermediate, dt);
    linear(&L->fc2, h, f, (int)T);                                 // (B, L, D)
    add_forward(x, x, h, T * D, dt);
    arena_release(scratch, mark);
}

void clip_text_forward(const ClipText* m, const int32_t* ids, int B, int L, float* penultimate, float* pooled,
                       Arena* scratch) {
    const ClipTextConfig* c = &m->cfg;
    if (L > c->max_positions) fatal("clip_text_forward: %d tokens, the encoder takes at most %d", L, c->max_positions);
    size_t T = (size_t)B * L, mark = arena_mark(scratch);
    for (size_t i = 0; i < T; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            fatal("clip_text_forward: token id %d outside the vocabulary of %d", ids[i], c->vocab_size);
    DType dt = m->w.dtype;
    size_t es = dtype_size(dt);
    int32_t* d_ids = arena_alloc(scratch, sizeof(int32_t) * T, "clip ids");
    copy_to_device(d_ids, ids, sizeof(int32_t) * T);
    char* x = arena_elems(scratch, T * c->hidden, dt, "clip x");
    // x = token_embedding[ids] + position_embedding[0..L)          (B, L, hidden)
    embedding_forward(x, d_ids, m->token_embedding, (int)T, c->vocab_size, c->hidden, dt);
    for (int b = 0; b < B; b++) add_forward(x + (size_t)b * L * c->hidden * es, x + (size_t)b * L * c->hidden * es,
                                            m->position_embedding, (size_t)L * c->hidden, dt);
    for (int l = 0; l < c->layers; l++) {
        if (l == c->layers - 1) { // hidden_states[-2]: what enters the last layer (f32 for the caller)
            if (penultimate) cast_forward(penultimate, DT_F32, x, dt, T * c->hidden);
            if (!pooled) break;
        }
        clip_encoder_layer(&m->layers[l], x, B, L, c->hidden, c->heads, c->intermediate, c->act, 1, scratch); // causal
    }
    if (pooled) {
        if (!c->projection_dim) fatal("clip_text_forward: this encoder has no text_projection for a pooled output");
        // final_layer_norm, then the row of each sequence's first end-of-text token
        layer_norm(&m->final_ln, x, x, (int)T);
        int32_t rows[256];
        if (B > 256) fatal("clip_text_forward: at most 256 sequences per call");
        for (int b = 0; b < B; b++) {
            const int32_t* ids_b = ids + (size_t)b * L;
            int at = 0;
            for (int i = 0; i < L; i++) {
                // legacy configs (eos_token_id 2) take argmax(ids): the first maximal id
                int hit = c->eos_token_id == 2 ? ids_b[i] > ids_b[at] : ids_b[i] == c->eos_token_id;
                if (hit) {
                    at = i;
                    if (c->eos_token_id != 2) break;
                }
            }
            rows[b] = b * L + at;
        }
        int32_t* d_rows = arena_alloc(scratch, sizeof(int32_t) * B, "clip eos rows");
        copy_to_device(d_rows, rows, sizeof(int32_t) * B);
        void* eos = arena_elems(scratch, (size_t)B * c->hidden, dt, "clip pooled rows");
        embedding_forward(eos, d_rows, x, B, (int)T, c->hidden, dt); // a row gather
        if (dt == DT_F32) {
            linear(&m->projection, pooled, eos, B);
        } else {
            void* p16 = arena_elems(scratch, (size_t)B * c->projection_dim, dt, "clip pooled");
            linear(&m->projection, p16, eos, B);
            cast_forward(pooled, DT_F32, p16, dt, (size_t)B * c->projection_dim);
        }
    }
    arena_release(scratch, mark);
}

// ============================================================================
// Vision tower (transformers CLIPVisionModel / CLIPVisionModelWithProjection, modeling_clip.py 5.24;
// openai/CLIP clip/model.py VisionTransformer)
//
// The encoder layers are the text tower's (clip_encoder_layer) without the causal mask. The patch
// embedding is the conv op (stride = kernel, so each output pixel is one patch's dot product),
// then a transpose to tokens. Key names are transformers': "vision_model.embeddings.*",
// "vision_model.pre_layrnorm.*" (its spelling), "vision_model.encoder.layers.N.*",
// "vision_model.post_layernorm.*", and "visual_projection.weight" beside vision_model.

// CLIPVisionConfig fields of r; missing ones take its defaults (configuration_clip.py, 5.24):
// hidden 768, intermediate 3072, 12 layers, 12 heads, 224 px, 32 px patches, 3 channels,
// projection 512, quick_gelu, eps 1e-5.
static int clip_vision_config_parse(ClipVisionConfig* c, const JsonValue* r, const char* path, char* err) {
    memset(c, 0, sizeof(*c));
    struct { const char* key; int* dst; int lo, hi, dflt; } ints[] = {
        {"hidden_size", &c->hidden, 1, CLIP_MAX_HIDDEN, 768},
        {"intermediate_size", &c->intermediate, 1, CLIP_MAX_INTERMEDIATE, 3072},
        {"num_hidden_layers", &c->layers, 1, CLIP_MAX_LAYERS, 12}, {"num_attention_heads", &c->heads, 1, CLIP_MAX_HIDDEN, 12},
        {"image_size", &c->image_size, 1, CLIP_MAX_IMAGE, 224}, {"patch_size", &c->patch_size, 1, CLIP_MAX_IMAGE, 32},
        {"num_channels", &c->channels, 3, 3, 3}, {"projection_dim", &c->projection_dim, 1, CLIP_MAX_HIDDEN, 512},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        if (json_config_int_or(r, ints[i].key, ints[i].lo, ints[i].hi, ints[i].dflt, ints[i].dst, path, err) < 0) return -1;
    double eps;
    if (json_config_number_or(r, "layer_norm_eps", NORM_EPS_MIN, NORM_EPS_MAX, 1e-5, &eps, path, err) < 0) return -1;
    c->eps = (float)eps;
    const char* act = json_get_string(r, "hidden_act");
    if (!act || strcmp(act, "quick_gelu") == 0) c->act = CLIP_ACT_QUICK_GELU;
    else if (strcmp(act, "gelu") == 0) c->act = CLIP_ACT_GELU;
    else return set_error(err, "%s: vision hidden_act \"%s\" is not quick_gelu or gelu", path, act);
    if (c->hidden % c->heads != 0 || c->hidden / c->heads > ATTENTION_MAX_HS)
        return set_error(err, "%s: vision \"hidden_size\" %d does not split into %d heads (\"num_attention_heads\") of at "
                         "most %d", path, c->hidden, c->heads, ATTENTION_MAX_HS);
    if (c->patch_size > c->image_size)
        return set_error(err, "%s: \"patch_size\" %d is larger than \"image_size\" %d", path, c->patch_size, c->image_size);
    int grid = c->image_size / c->patch_size;
    if (1 + grid * grid > CLIP_MAX_VISION_TOKENS)
        return set_error(err, "%s: \"image_size\" %d in \"patch_size\" %d patches makes %d tokens, above %d", path,
                         c->image_size, c->patch_size, 1 + grid * grid, CLIP_MAX_VISION_TOKENS);
    return 0;
}

int clip_vision_config_read(ClipVisionConfig* c, const char* path, char* err) {
    JsonDoc doc;
    if (json_read_file(&doc, path, err) != 0) return -1;
    const JsonValue* r = &doc.root;
    const JsonValue* vc = json_get(r, "vision_config");
    int rc;
    if (vc && vc->type == JSON_OBJECT) { // a CLIPConfig: the projection is the model's (its default 512)
        rc = clip_vision_config_parse(c, vc, path, err);
        if (rc == 0 && json_config_int_or(r, "projection_dim", 1, CLIP_MAX_HIDDEN, 512, &c->projection_dim, path, err) < 0)
            rc = -1;
    } else {
        rc = clip_vision_config_parse(c, r, path, err);
        // as for the text tower: the projection exists in CLIPVisionModelWithProjection only
        const JsonValue* arch = json_get(r, "architectures");
        int with_projection = 0;
        if (arch && arch->type == JSON_ARRAY)
            for (size_t i = 0; i < arch->length; i++)
                if (arch->items[i].type == JSON_STRING && strcmp(arch->items[i].string, "CLIPVisionModelWithProjection") == 0)
                    with_projection = 1;
        if (!with_projection) c->projection_dim = 0;
    }
    json_free(&doc);
    return rc;
}

static void clip_vision_build(ClipVision* m, Weights* w) {
    const ClipVisionConfig* c = &m->cfg;
    int grid = c->image_size / c->patch_size;
    m->patch_embedding =
        conv2d_build(w, "embeddings.patch_embedding", c->channels, c->hidden, c->patch_size, c->patch_size, 0, 0);
    m->class_embedding = tensor_build(w, "embeddings.class_embedding", 1, (int64_t[]){c->hidden});
    m->position_embedding =
        tensor_build(w, "embeddings.position_embedding.weight", 2, (int64_t[]){1 + grid * grid, c->hidden});
    m->pre_ln = layer_norm_build(w, "pre_layrnorm", c->hidden, c->eps);
    for (int l = 0; l < c->layers; l++) {
        char p[NAME_MAX_LEN];
        snprintf(p, sizeof(p), "encoder.layers.%d", l);
        clip_layer_build(&m->layers[l], w, p, c->hidden, c->intermediate, c->eps);
    }
    m->post_ln = layer_norm_build(w, "post_layernorm", c->hidden, c->eps);
    if (c->projection_dim) m->projection = linear_build(w, "visual_projection", c->hidden, c->projection_dim, 0);
}

int clip_vision_load_from(ClipVision* m, const ClipVisionConfig* cfg, const SafeTensors* st, const char* prefix,
                          char* err) {
    memset(m, 0, sizeof(*m));
    m->cfg = *cfg;
    m->layers = xcalloc((size_t)cfg->layers, sizeof(ClipLayer));
    weights_init(&m->w, "vision_model", DT_F32);
    clip_vision_build(m, &m->w);
    char probe[512];
    snprintf(probe, sizeof(probe), "%svision_model.embeddings.class_embedding", prefix);
    HfKeys keys = {prefix, safetensors_find(st, probe) ? "vision_model." : "", "visual_projection"};
    // every tensor checked against the file before the parameter memory is allocated
    int rc = weights_check_mapped(&m->w, st, hf_key, &keys, err);
    if (rc == 0) {
        weights_allocate(&m->w);
        clip_vision_build(m, &m->w);
        weights_finish(&m->w);
        rc = weights_load_mapped(&m->w, st, hf_key, &keys, err);
    }
    if (rc != 0) clip_vision_free(m);
    return rc;
}

int clip_vision_load(ClipVision* m, const char* folder, const char* variant, char* err) {
    char path[4096];
    ClipVisionConfig cfg;
    snprintf(path, sizeof(path), "%s/config.json", folder);
    if (clip_vision_config_read(&cfg, path, err) != 0) return -1;
    SafeTensors st;
    if (safetensors_open_dir(&st, folder, "model", variant, err) != 0) return -1;
    int rc = clip_vision_load_from(m, &cfg, &st, "", err);
    safetensors_close(&st);
    return rc;
}

void clip_vision_free(ClipVision* m) {
    weights_free(&m->w);
    free(m->layers);
    memset(m, 0, sizeof(*m));
}

size_t clip_vision_scratch_floats(const ClipVisionConfig* c, int B) {
    size_t grid = (size_t)(c->image_size / c->patch_size), G2 = grid * grid, T = (size_t)B * (1 + G2), D = c->hidden;
    // x; the conv output and its transpose; one encoder layer (5 x (T, D) + the MLP); the class
    // rows; the conv's im2col; alignment slack
    return T * D + 2 * B * G2 * D + 5 * T * D + T * c->intermediate + (size_t)B * D +
           conv2d_scratch_elems(c->channels, c->image_size, c->image_size, c->patch_size, c->patch_size, 0) +
           16 * ARENA_ALIGN;
}

void clip_vision_forward(const ClipVision* m, const float* pixels, int B, float* pooled, float* embeds, Arena* scratch) {
    const ClipVisionConfig* c = &m->cfg;
    if (embeds && !c->projection_dim) fatal("clip_vision_forward: this vision tower has no visual_projection");
    int S = c->image_size, D = c->hidden, grid = conv2d_out_size(&m->patch_embedding, S), G2 = grid * grid, L = 1 + G2;
    size_t mark = arena_mark(scratch);
    float* x = arena_floats(scratch, (size_t)B * L * D, "clip vision x");
    // patches: the conv, then (B, D, G2) -> (B, G2, D) tokens
    size_t mark_patches = arena_mark(scratch);
    float* patches = arena_floats(scratch, (size_t)B * D * G2, "clip vision patches");
    conv2d(&m->patch_embedding, patches, pixels, B, S, S, scratch);
    float* tokens = arena_floats(scratch, (size_t)B * G2 * D, "clip vision tokens");
    transpose_forward(tokens, patches, B, D, G2, DT_F32);
    // x = [class_embedding, tokens] + position_embedding                  (B, 1 + G2, D)
    for (int b = 0; b < B; b++) {
        float* x_b = x + (size_t)b * L * D;
        copy_device_to_device(x_b, m->class_embedding, sizeof(float) * D);
        copy_device_to_device(x_b + D, tokens + (size_t)b * G2 * D, sizeof(float) * G2 * D);
        add_forward(x_b, x_b, m->position_embedding, (size_t)L * D, DT_F32);
    }
    arena_release(scratch, mark_patches);
    layer_norm(&m->pre_ln, x, x, B * L);
    for (int l = 0; l < c->layers; l++)
        clip_encoder_layer(&m->layers[l], x, B, L, D, c->heads, c->intermediate, c->act, 0, scratch); // no mask
    // pooled = post_layernorm(x[:, 0])                                      (B, D)
    float* cls = arena_floats(scratch, (size_t)B * D, "clip vision class rows");
    for (int b = 0; b < B; b++) copy_device_to_device(cls + (size_t)b * D, x + (size_t)b * L * D, sizeof(float) * D);
    layer_norm(&m->post_ln, cls, cls, B);
    if (pooled) copy_device_to_device(pooled, cls, sizeof(float) * B * D);
    if (embeds) linear(&m->projection, embeds, cls, B); // (B, projection_dim)
    arena_release(scratch, mark);
}

// ============================================================================
// Preprocessing (transformers 5.24 image_processing_pil_clip.py CLIPImageProcessorPil on the
// PilBackend of image_processing_backends.py; image_transforms.py get_resize_output_image_size and
// center_crop; openai/clip-vit-large-patch14's preprocessor_config.json: size 224, crop 224,
// resample 3 = BICUBIC).
//
// transformers 5's default CLIPImageProcessor is the torchvision backend: it resizes a uint8
// tensor with torch's antialiased bicubic, whose fixed-point weights differ from Pillow's, so its
// pixel_values differ from these by one byte step (0.015 after normalising) in ~0.3% of values
// (measured on the 1365x768 test frame, scripts/make_golden_clip_vision.py). We follow Pillow:
// the PIL backend, transformers 4's CLIPImageProcessor, openai/CLIP and open_clip all resize with it.

// image_utils.py OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (openai/CLIP clip.py _transform), as f32
const float CLIP_IMAGE_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
const float CLIP_IMAGE_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

// Left (or top) offset of a centred crop of `size` out of `extent` (extent >= size).
static int crop_offset(int extent, int size, ClipCropRounding rounding) {
    int d = extent - size, k = d / 2;
    // torchvision: int(round(d / 2.0)); an odd d is k + 0.5, which Python rounds to the even neighbour
    if (rounding == CLIP_CROP_ROUND_HALF_EVEN && (d & 1) && (k & 1)) k++;
    return k;
}

int clip_preprocess(const Image* rgb, int size, ClipCropRounding crop, float* out, char* err) {
    if (!rgb || !rgb->data || rgb->channels != 3 || rgb->depth != 8)
        return set_error(err, "clip preprocessing: needs an 8-bit RGB image (got %d channels, %d-bit; use image_to_rgb8)",
                         rgb ? rgb->channels : 0, rgb ? rgb->depth : 0);
    if (size < 1) return set_error(err, "clip preprocessing: bad size %d", size);
    if (rgb->width < 1 || rgb->height < 1) return set_error(err, "clip preprocessing: empty image");
    // get_resize_output_image_size(default_to_square=False): the short side becomes `size`, the
    // long one int(size * long / short) (a correctly rounded double quotient, then truncated)
    int w = rgb->width, h = rgb->height, shorter = w <= h ? w : h, longer = w <= h ? h : w;
    double q = (double)((int64_t)size * longer) / shorter;
    if (q > (double)PNG_MAX_DIM) return set_error(err, "clip preprocessing: %d x %d image is too elongated", w, h);
    int new_long = (int)q, new_w = w <= h ? size : new_long, new_h = w <= h ? new_long : size;
    Image resized, cropped;
    if (image_resize_pil(rgb, new_w, new_h, RESAMPLE_BICUBIC, &resized, err) != 0) return -1;
    int rc = image_crop(&resized, crop_offset(new_w, size, crop), crop_offset(new_h, size, crop), size, size, &cropped, err);
    image_free(&resized);
    if (rc != 0) return -1;
    image_to_chw_normalized(&cropped, CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, out);
    image_free(&cropped);
    return 0;
}

// ============================================================================
// CLIPModel folders (transformers CLIPModel: text_model, vision_model, text_projection,
// visual_projection, logit_scale; configuration_clip.py CLIPConfig)

// A 64-bit hash of n bytes, 8 at a time (a cache key, not cryptography).
static uint64_t hash_bytes(uint64_t h, const void* data, size_t n) {
    const uint8_t* p = data;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 32;
    }
    for (; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

#define HASH_SEED 0xcbf29ce484222325ull // FNV-1a's offset basis

// The text tower's identity for the label cache: every stored text tensor (name, dtype, shape,
// bytes) and the vocabulary's size.
static uint64_t text_fingerprint(const SafeTensors* st, const Tokenizer* tok) {
    uint64_t h = HASH_SEED;
    for (int i = 0; i < st->count; i++) {
        const SafeTensor* t = &st->tensors[i];
        if (strncmp(t->name, "text_model.", 11) != 0 && strcmp(t->name, "text_projection.weight") != 0) continue;
        h = hash_bytes(h, t->name, strlen(t->name) + 1);
        h = hash_bytes(h, &t->dtype, sizeof(t->dtype));
        h = hash_bytes(h, t->shape, sizeof(int64_t) * t->rank);
        h = hash_bytes(h, t->data, t->nbytes);
    }
    int32_t sizes[2] = {tok->n_vocab, tok->n_merges};
    return hash_bytes(h, sizes, sizeof(sizes));
}

int clip_model_load(ClipModel* m, const char* folder, const char* variant, char* err) {
    memset(m, 0, sizeof(*m));
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.json", folder);
    JsonDoc doc;
    if (json_read_file(&doc, path, err) != 0) return -1;
    const JsonValue* tc = json_get(&doc.root, "text_config");
    const JsonValue* vc = json_get(&doc.root, "vision_config");
    ClipTextConfig tcfg;
    ClipVisionConfig vcfg;
    int rc = 0;
    if (!tc || tc->type != JSON_OBJECT || !vc || vc->type != JSON_OBJECT)
        rc = set_error(err, "%s: not a CLIPModel config (no \"text_config\" and \"vision_config\" objects)", path);
    if (rc == 0) rc = clip_text_config_parse(&tcfg, tc, path, 1, err);
    if (rc == 0) rc = clip_vision_config_parse(&vcfg, vc, path, err);
    int projection_dim = 512; // CLIPConfig's default
    if (rc == 0 && json_config_int_or(&doc.root, "projection_dim", 1, CLIP_MAX_HIDDEN, 512, &projection_dim, path, err) < 0)
        rc = -1;
    json_free(&doc);
    if (rc != 0) return -1;
    tcfg.projection_dim = vcfg.projection_dim = projection_dim;
    if (tcfg.max_positions != CLIP_CONTEXT)
        return set_error(err, "%s: max_position_embeddings %d (only 77-token text towers are supported)", path,
                         tcfg.max_positions);
    if (tokenizer_load(&m->tok, folder, err) != 0) return -1;
    if (m->tok.n_vocab > tcfg.vocab_size) {
        set_error(err, "%s: the tokenizer has %d ids, the text tower %d", folder, m->tok.n_vocab, tcfg.vocab_size);
        tokenizer_free(&m->tok);
        return -1;
    }
    SafeTensors st;
    if (safetensors_open_dir(&st, folder, "model", variant, err) != 0) {
        tokenizer_free(&m->tok);
        return -1;
    }
    rc = clip_text_load_from(&m->text, &tcfg, &st, "", 0, DT_F32, err);
    if (rc == 0) {
        rc = clip_vision_load_from(&m->vision, &vcfg, &st, "", err);
        if (rc != 0) clip_text_free(&m->text);
    }
    if (rc == 0) {
        const SafeTensor* ls = safetensors_find(&st, "logit_scale");
        if (ls && safetensor_numel(ls) == 1) {
            float s;
            convert_to_f32(&s, ls->data, ls->dtype, 1);
            m->logit_scale = expf(s);
        }
        m->text_fingerprint = text_fingerprint(&st, &m->tok);
    } else {
        tokenizer_free(&m->tok);
    }
    safetensors_close(&st);
    if (rc != 0) memset(m, 0, sizeof(*m));
    return rc;
}

void clip_model_free(ClipModel* m) {
    clip_text_free(&m->text);
    clip_vision_free(&m->vision);
    tokenizer_free(&m->tok);
    memset(m, 0, sizeof(*m));
}

// ============================================================================
// Embeddings and CLIP score (CLIPModel.get_image_features / get_text_features;
// torchmetrics 1.9 functional/multimodal/clip_score.py: _get_features, _clip_score_update, clip_score)
//
// Both embeddings are L2-normalised and the score of a pair is 100 * cosine; clip_score averages
// the pairs and clamps the mean at 0. Computed in f32 with sums in double, where torch sums in f32.

#define CLIP_IMAGE_BATCH 8 // images per vision forward
#define CLIP_TEXT_BATCH 32 // prompts per text forward

int clip_encode_images(const ClipModel* m, const Image* const* rgb, int n, ClipCropRounding crop, float* embeds,
                       char* err) {
    const ClipVisionConfig* c = &m->vision.cfg;
    if (c->channels != 3) return set_error(err, "clip: the vision tower takes %d channels, not RGB", c->channels);
    size_t per = (size_t)3 * c->image_size * c->image_size;
    int P = c->projection_dim;
    float* host = xmalloc(sizeof(float) * per * CLIP_IMAGE_BATCH);
    Arena scratch;
    arena_init(&scratch, "clip vision scratch",
               sizeof(float) * (clip_vision_scratch_floats(c, CLIP_IMAGE_BATCH) + per * CLIP_IMAGE_BATCH +
                                (size_t)P * CLIP_IMAGE_BATCH) + 4 * ARENA_ALIGN,
               backend_current() == BACKEND_CUDA);
    float* d_pixels = arena_floats(&scratch, per * CLIP_IMAGE_BATCH, "clip pixels");
    float* d_embeds = arena_floats(&scratch, (size_t)P * CLIP_IMAGE_BATCH, "clip image embeds");
    int rc = 0;
    for (int start = 0; start < n && rc == 0; start += CLIP_IMAGE_BATCH) {
        int nb = n - start < CLIP_IMAGE_BATCH ? n - start : CLIP_IMAGE_BATCH;
        for (int i = 0; i < nb && rc == 0; i++) {
            char e[ERR_MAX];
            if (clip_preprocess(rgb[start + i], c->image_size, crop, host + i * per, e) != 0)
                rc = set_error(err, "image %d: %s", start + i, e);
        }
        if (rc != 0) break;
        copy_to_device(d_pixels, host, sizeof(float) * per * nb);
        clip_vision_forward(&m->vision, d_pixels, nb, NULL, d_embeds, &scratch);
        copy_to_host(embeds + (size_t)start * P, d_embeds, sizeof(float) * P * nb);
    }
    arena_free(&scratch);
    free(host);
    return rc;
}

// The 77 ids of one prompt under `policy`; returns the untruncated token count.
static int clip_prompt_ids(const Tokenizer* tok, const char* text, ClipLongPrompt policy, int32_t ids[CLIP_CONTEXT]) {
    int n = tokenizer_encode_padded(tok, text, ids); // BOS, up to 75 tokens, EOS, padding
    if (policy == CLIP_PROMPT_TORCHMETRICS && n > CLIP_CHUNK_TOKENS) {
        // torchmetrics slices the untruncated [BOS, tokens..., EOS] to 77: BOS and 76 tokens
        ids[0] = tok->bos_id;
        tokenizer_encode(tok, text, ids + 1, CLIP_CONTEXT - 1);
    }
    return n;
}

// Text embeddings of B rows of L ids (host) into out (B, projection_dim), host.
static void clip_text_embeds_batch(const ClipModel* m, const int32_t* ids, int B, int L, float* out, Arena* scratch) {
    size_t mark = arena_mark(scratch);
    int P = m->text.cfg.projection_dim;
    float* d_out = arena_floats(scratch, (size_t)B * P, "clip text embeds");
    clip_text_forward(&m->text, ids, B, L, NULL, d_out, scratch);
    copy_to_host(out, d_out, sizeof(float) * B * P);
    arena_release(scratch, mark);
}

static void clip_text_arena(Arena* a, const ClipModel* m) {
    arena_init(a, "clip text scratch",
               sizeof(float) * (clip_text_scratch_floats(&m->text.cfg, CLIP_TEXT_BATCH, CLIP_CONTEXT) +
                                (size_t)CLIP_TEXT_BATCH * m->text.cfg.projection_dim) + 2 * ARENA_ALIGN,
               backend_current() == BACKEND_CUDA);
}

int clip_encode_texts(const ClipModel* m, const char* const* texts, int n, ClipLongPrompt policy, float* embeds,
                      int* n_tokens, char* err) {
    if (!m->text.cfg.projection_dim) return set_error(err, "clip: the text tower has no text_projection");
    int P = m->text.cfg.projection_dim;
    int32_t* ids = xmalloc(sizeof(int32_t) * CLIP_CONTEXT * CLIP_TEXT_BATCH);
    Arena scratch;
    clip_text_arena(&scratch, m);
    for (int start = 0; start < n; start += CLIP_TEXT_BATCH) {
        int nb = n - start < CLIP_TEXT_BATCH ? n - start : CLIP_TEXT_BATCH;
        for (int i = 0; i < nb; i++) {
            int count = clip_prompt_ids(&m->tok, texts[start + i], policy, ids + (size_t)i * CLIP_CONTEXT);
            if (n_tokens) n_tokens[start + i] = count;
        }
        clip_text_embeds_batch(m, ids, nb, CLIP_CONTEXT, embeds + (size_t)start * P, &scratch);
    }
    arena_free(&scratch);
    free(ids);
    return 0;
}

float clip_cosine(const float* a, const float* b, int dim) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < dim; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? (float)(ab / (sqrt(aa) * sqrt(bb))) : 0.0f;
}

float clip_score_from_cosines(const float* cosines, int n) {
    if (n <= 0) return 0.0f;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += 100.0 * cosines[i];
    double mean = sum / n;
    return mean > 0 ? (float)mean : 0.0f;
}

int clip_score(const ClipModel* m, const Image* const* rgb, const char* const* texts, int n, ClipLongPrompt policy,
               float* cosines, int* n_tokens, float* score, char* err) {
    int P = m->vision.cfg.projection_dim;
    if (P != m->text.cfg.projection_dim) return set_error(err, "clip: image and text projections differ in width");
    float* img = xmalloc(sizeof(float) * P * (n ? n : 1));
    float* txt = xmalloc(sizeof(float) * P * (n ? n : 1));
    int rc = clip_encode_images(m, rgb, n, CLIP_CROP_FLOOR, img, err);
    if (rc == 0) rc = clip_encode_texts(m, texts, n, policy, txt, n_tokens, err);
    if (rc == 0) {
        for (int i = 0; i < n; i++) cosines[i] = clip_cosine(img + (size_t)i * P, txt + (size_t)i * P, P);
        *score = clip_score_from_cosines(cosines, n);
    }
    free(img);
    free(txt);
    return rc;
}

void clip_normalize(float* x, int n, int dim) {
    for (int i = 0; i < n; i++) {
        float* v = x + (size_t)i * dim;
        double ss = 0;
        for (int j = 0; j < dim; j++) ss += (double)v[j] * v[j];
        float norm = (float)sqrt(ss);
        if (norm > 0)
            for (int j = 0; j < dim; j++) v[j] /= norm;
    }
}

// ============================================================================
// CLIP interrogator (pharmapsychotic/clip-interrogator 0.6.0, clip_interrogator/clip_interrogator.py:
// load_list, LabelTable (__init__, _rank, rank), _merge_tables, _truncate_to_fit,
// _prompt_at_max_len, Interrogator.interrogate_classic / interrogate_fast)
//
// What differs from 0.6.0, on purpose or by construction:
//   - no caption model inside: the caption is an argument (0.6.0 runs BLIP when it is empty);
//   - the CLIP is a transformers CLIPModel (0.6.0 loads open_clip 'ViT-L-14/openai', the same
//     weights) and text goes through the CLIP BPE of tokenizer.c (open_clip's SimpleTokenizer also
//     runs ftfy and html.unescape first, which changes nothing for plain labels);
//   - scores are f32 with double sums on every backend; 0.6.0 on CUDA runs fp16 autocast. Label
//     embeddings are f16-rounded on both sides, as 0.6.0's cache keeps them;
//   - ties are broken by position (torch.topk leaves them unspecified);
//   - our cache is keyed by a fingerprint of the weights and a hash of the list, in our own file
//     names (0.6.0 keys by model name + sha256 of the labels, and downloads precomputed tables);
//   - "best" and "negative" modes (chain) are not implemented.

// clip_interrogator.py Interrogator.load_clip_model: the sites of the trending table
const char* const CLIP_INTERROGATOR_SITES[18] = {
    "Artstation", "behance", "cg society", "cgsociety", "deviantart", "dribble", "flickr", "instagram", "pexels",
    "pinterest", "pixabay", "pixiv", "polycount", "reddit", "shutterstock", "tumblr", "unsplash", "zbrush central",
};

// Python's str.isspace for the code point at s (UTF-8), setting *len to its byte length.
static int py_space_at(const unsigned char* s, const unsigned char* end, int* len) {
    *len = 1;
    if (*s < 0x80) return (*s >= 9 && *s <= 13) || *s == ' ' || (*s >= 0x1c && *s <= 0x1f);
    uint32_t cp;
    if ((*s & 0xE0) == 0xC0 && end - s >= 2) cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F), *len = 2;
    else if ((*s & 0xF0) == 0xE0 && end - s >= 3)
        cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F), *len = 3;
    else return 0;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// str.strip() of [b, e): moves b forward and e back over whitespace.
static void py_strip(const unsigned char** b, const unsigned char** e) {
    int len;
    while (*b < *e && py_space_at(*b, *e, &len)) *b += len;
    while (*e > *b) {
        // step back to the start of the last code point
        const unsigned char* p = *e - 1;
        while (p > *b && (*p & 0xC0) == 0x80 && *e - p < 3) p--;
        if (!py_space_at(p, *e, &len) || p + len != *e) break;
        *e = p;
    }
}

// template with every "{}" replaced by s
static char* apply_template(const char* tmpl, const char* s) {
    size_t n = 1, ls = strlen(s);
    for (const char* p = tmpl; *p; p++) n += (p[0] == '{' && p[1] == '}') ? ls : 1;
    char* out = xmalloc(n);
    char* o = out;
    for (const char* p = tmpl; *p; p++) {
        if (p[0] == '{' && p[1] == '}') {
            memcpy(o, s, ls);
            o += ls;
            p++;
        } else {
            *o++ = *p;
        }
    }
    *o = 0;
    return out;
}

int clip_labels_read(const char* path, const char* const* templates, int n_templates, char*** labels, int* count,
                     char* err) {
    uint8_t* data;
    size_t size;
    *labels = NULL;
    *count = 0;
    if (read_file(path, &data, &size, err) != 0) return -1;
    // readlines() with universal newlines: a line ends at \n, \r\n or \r; text after the last
    // terminator is a line when non-empty
    int n_lines = 0, cap = 64;
    char** lines = xmalloc(sizeof(char*) * cap);
    const unsigned char *p = data, *end = data + size;
    while (p < end) {
        const unsigned char* e = p;
        while (e < end && *e != '\n' && *e != '\r') e++;
        const unsigned char* next = e;
        if (next < end) next += (*next == '\r' && next + 1 < end && next[1] == '\n') ? 2 : 1;
        const unsigned char *b = p, *t = e;
        py_strip(&b, &t);
        if (n_lines == CLIP_MAX_LABELS) { // before the count can overflow, or the labels take all memory
            clip_labels_free(lines, n_lines);
            free(data);
            return set_error(err, "%s: more than %d labels", path, CLIP_MAX_LABELS);
        }
        if (n_lines == cap) lines = xrealloc(lines, sizeof(char*) * (cap *= 2));
        lines[n_lines] = xmalloc((size_t)(t - b) + 1);
        memcpy(lines[n_lines], b, (size_t)(t - b));
        lines[n_lines++][t - b] = 0;
        p = next;
    }
    free(data);
    if (n_templates <= 0) {
        *labels = lines;
        *count = n_lines;
        return 0;
    }
    if ((int64_t)n_lines * n_templates > CLIP_MAX_LABELS) {
        clip_labels_free(lines, n_lines);
        return set_error(err, "%s: %d lines in %d templates make more than %d labels", path, n_lines, n_templates,
                         CLIP_MAX_LABELS);
    }
    char** out = xmalloc(sizeof(char*) * ((size_t)n_lines * n_templates + 1));
    for (int t = 0; t < n_templates; t++)
        for (int i = 0; i < n_lines; i++) out[(size_t)t * n_lines + i] = apply_template(templates[t], lines[i]);
    clip_labels_free(lines, n_lines);
    *labels = out;
    *count = n_lines * n_templates;
    return 0;
}

void clip_labels_free(char** labels, int count) {
    for (int i = 0; i < count; i++) free(labels[i]);
    free(labels);
}

void clip_label_table_free(ClipLabelTable* t) {
    free(t->name);
    clip_labels_free(t->labels, t->count);
    free(t->embeds);
    memset(t, 0, sizeof(*t));
}

// Reads the cache file when its model, label hash and shape match; 1 on success.
static int label_cache_read(ClipLabelTable* t, const char* path, const char* model_hex, const char* labels_hex) {
    SafeTensors st;
    char err[ERR_MAX];
    if (safetensors_open(&st, path, err) != 0) return 0;
    const char* model = safetensors_metadata(&st, "model");
    const char* labels = safetensors_metadata(&st, "labels");
    const SafeTensor* e = safetensors_find(&st, "embeds");
    int ok = model && labels && strcmp(model, model_hex) == 0 && strcmp(labels, labels_hex) == 0 && e &&
             e->dtype == DT_F16 && e->rank == 2 && e->shape[0] == t->count && e->shape[1] == t->dim;
    if (ok) convert_to_f32(t->embeds, e->data, DT_F16, (size_t)t->count * t->dim);
    safetensors_close(&st);
    return ok;
}

int clip_label_table_build(ClipLabelTable* t, const ClipModel* m, const char* name, const char* const* labels,
                           int count, const char* cache_dir, char* err) {
    memset(t, 0, sizeof(*t));
    if (!name[0] || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != strlen(name))
        return set_error(err, "label table name \"%s\": use letters, digits, '_' and '-'", name);
    if (!m->text.cfg.projection_dim) return set_error(err, "clip: the text tower has no text_projection");
    t->name = xstrdup(name);
    t->count = count;
    t->dim = m->text.cfg.projection_dim;
    t->labels = xmalloc(sizeof(char*) * (count ? count : 1));
    for (int i = 0; i < count; i++) t->labels[i] = xstrdup(labels[i]);
    t->embeds = xmalloc(sizeof(float) * t->dim * (count ? count : 1));
    // the cache key: the text tower, and the labels in order
    uint64_t h = hash_bytes(HASH_SEED, &count, sizeof(count));
    for (int i = 0; i < count; i++) h = hash_bytes(h, labels[i], strlen(labels[i]) + 1);
    char model_hex[17], labels_hex[17], path[4200];
    snprintf(model_hex, sizeof(model_hex), "%016llx", (unsigned long long)m->text_fingerprint);
    snprintf(labels_hex, sizeof(labels_hex), "%016llx", (unsigned long long)h);
    if (cache_dir) {
        snprintf(path, sizeof(path), "%s/clip_%s_%s.safetensors", cache_dir, model_hex, name);
        if (label_cache_read(t, path, model_hex, labels_hex)) {
            t->from_cache = 1;
            return 0;
        }
    }
    // Encode in batches; each batch runs only as many positions as its longest label needs: the
    // causal mask keeps the padding after EOS from changing the pooled EOS row.
    int32_t* ids = xmalloc(sizeof(int32_t) * CLIP_CONTEXT * CLIP_TEXT_BATCH);
    int32_t* packed = xmalloc(sizeof(int32_t) * CLIP_CONTEXT * CLIP_TEXT_BATCH);
    Arena scratch;
    clip_text_arena(&scratch, m);
    for (int start = 0; start < count; start += CLIP_TEXT_BATCH) {
        int nb = count - start < CLIP_TEXT_BATCH ? count - start : CLIP_TEXT_BATCH, L = 2;
        for (int i = 0; i < nb; i++) {
            int n = clip_prompt_ids(&m->tok, labels[start + i], CLIP_PROMPT_TRUNCATE, ids + (size_t)i * CLIP_CONTEXT);
            if (n > CLIP_CHUNK_TOKENS) n = CLIP_CHUNK_TOKENS;
            if (n + 2 > L) L = n + 2;
        }
        for (int i = 0; i < nb; i++) memcpy(packed + (size_t)i * L, ids + (size_t)i * CLIP_CONTEXT, sizeof(int32_t) * L);
        clip_text_embeds_batch(m, packed, nb, L, t->embeds + (size_t)start * t->dim, &scratch);
    }
    arena_free(&scratch);
    free(ids);
    free(packed);
    // normalised, then kept at f16 precision as 0.6.0's LabelTable keeps them
    clip_normalize(t->embeds, count, t->dim);
    size_t total = (size_t)count * t->dim;
    uint16_t* half = xmalloc(sizeof(uint16_t) * (total ? total : 1));
    convert_from_f32(half, DT_F16, t->embeds, total);
    convert_to_f32(t->embeds, half, DT_F16, total);
    int rc = 0;
    if (cache_dir) {
        if (mkdir(cache_dir, 0777) != 0 && errno != EEXIST)
            rc = set_error(err, "%s: cannot create the label cache folder: %s", cache_dir, strerror(errno));
        char count_str[32];
        snprintf(count_str, sizeof(count_str), "%d", count);
        const char* keys[] = {"format", "model", "labels", "count", "name"};
        const char* values[] = {"sdxl.c clip label embeddings 1", model_hex, labels_hex, count_str, name};
        SafeTensorOut out = {"embeds", DT_F16, 2, {count, t->dim}, half};
        if (rc == 0) rc = safetensors_write(path, &out, 1, keys, values, 5, err);
    }
    free(half);
    if (rc != 0) clip_label_table_free(t);
    return rc;
}

typedef struct {
    float score;
    int index;
} Scored;

// best first; ties: the earlier index first
static int scored_cmp(const void* a, const void* b) {
    const Scored *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? 1 : -1;
    return (x->index > y->index) - (x->index < y->index);
}

// Sorts items best first: the first k are torch.topk(k, sorted=True).
static void sort_best(Scored* items, int n) { qsort(items, (size_t)n, sizeof(Scored), scored_cmp); }

const char* clip_label_at(const ClipLabelTable* const* tables, int n_tables, int index) {
    for (int i = 0; i < n_tables; i++) {
        if (index < tables[i]->count) return tables[i]->labels[index];
        index -= tables[i]->count;
    }
    return NULL;
}

int clip_label_rank(const ClipLabelTable* const* tables, int n_tables, const float* image_features, int top_count,
                    int chunk_size, int* top) {
    int total = 0;
    for (int i = 0; i < n_tables; i++) total += tables[i]->count;
    if (top_count > total) top_count = total;
    if (top_count <= 0) return 0;
    // score = image_features . label embedding (both normalised: the cosine), summed in double
    float* sims = xmalloc(sizeof(float) * total);
    for (int i = 0, at = 0; i < n_tables; i++) {
        const ClipLabelTable* t = tables[i];
        for (int j = 0; j < t->count; j++, at++) {
            const float* e = t->embeds + (size_t)j * t->dim;
            double s = 0;
            for (int d = 0; d < t->dim; d++) s += (double)image_features[d] * e[d];
            sims[at] = (float)s;
        }
    }
    Scored* items = xmalloc(sizeof(Scored) * total);
    if (chunk_size <= 0 || total <= chunk_size) {
        for (int i = 0; i < total; i++) items[i] = (Scored){sims[i], i};
        sort_best(items, total);
        for (int i = 0; i < top_count; i++) top[i] = items[i].index;
    } else {
        // LabelTable.rank: each chunk keeps its best int(chunk_size / n_chunks); the top of those wins
        int n_chunks = (total + chunk_size - 1) / chunk_size, keep = chunk_size / n_chunks, n_cand = 0;
        Scored* cand = xmalloc(sizeof(Scored) * total);
        for (int c = 0; c < n_chunks; c++) {
            int start = c * chunk_size, stop = start + chunk_size < total ? start + chunk_size : total, n = stop - start;
            for (int i = 0; i < n; i++) items[i] = (Scored){sims[start + i], start + i};
            sort_best(items, n);
            for (int i = 0; i < keep && i < n; i++) cand[n_cand++] = items[i];
        }
        // the final topk runs over the candidate list: a tie goes to the earlier candidate
        for (int i = 0; i < n_cand; i++) items[i] = (Scored){cand[i].score, i};
        if (top_count > n_cand) top_count = n_cand;
        sort_best(items, n_cand);
        for (int i = 0; i < top_count; i++) top[i] = cand[items[i].index].index;
        free(cand);
    }
    free(items);
    free(sims);
    return top_count;
}


// Length of the part of s before the first ", " (or the end).
static size_t part_length(const char* s) {
    size_t i = 0;
    while (s[i] && !(s[i] == ',' && s[i + 1] == ' ')) i++;
    return i;
}

char* clip_truncate_to_fit(const Tokenizer* tok, const char* text, int max_tokens) {
    // parts = text.split(", "); new_text = parts[0]; then, per part, stop when
    // _prompt_at_max_len(new_text + part) (no separator in the test: 0.6.0's own quirk)
    StrBuf out = {0}, probe = {0};
    size_t len = part_length(text);
    strbuf_append(&out, text, len);
    for (const char* p = text + len; *p; p += len) {
        p += 2; // the ", "
        len = part_length(p);
        probe.len = 0;
        strbuf_append(&probe, out.s, out.len);
        strbuf_append(&probe, p, len);
        // at max length: BOS + tokens + EOS fill the context (open_clip's tokens[-1] != 0)
        if (tokenizer_encode(tok, probe.s, NULL, 0) >= max_tokens) break;
        strbuf_append(&out, ", ", 2);
        strbuf_append(&out, p, len);
    }
    free(probe.s);
    return out.s;
}

static const char* top_label(const ClipLabelTable* t, const float* features, int chunk_size) {
    int i;
    return clip_label_rank(&t, 1, features, 1, chunk_size, &i) == 1 ? t->labels[i] : NULL;
}

int clip_interrogate_classic(const ClipModel* m, const ClipInterrogator* ci, const float* image_features,
                             const char* caption, int max_flavors, char** prompt, char* err) {
    *prompt = NULL;
    const ClipLabelTable* need[5] = {ci->mediums, ci->artists, ci->trendings, ci->movements, ci->flavors};
    for (int i = 0; i < 5; i++)
        if (!need[i] || need[i]->count == 0)
            return set_error(err, "interrogator: the %s table is empty",
                             (const char*[]){"mediums", "artists", "trending", "movements", "flavors"}[i]);
    const char* medium = top_label(ci->mediums, image_features, ci->chunk_size);
    const char* artist = top_label(ci->artists, image_features, ci->chunk_size);
    const char* trending = top_label(ci->trendings, image_features, ci->chunk_size);
    const char* movement = top_label(ci->movements, image_features, ci->chunk_size);
    int* top = xmalloc(sizeof(int) * (max_flavors > 0 ? max_flavors : 1));
    int n = clip_label_rank(&ci->flavors, 1, image_features, max_flavors, ci->chunk_size, top);
    StrBuf s = {0};
    strbuf_cat(&s, caption);
    if (strncmp(caption, medium, strlen(medium)) != 0) { // caption.startswith(medium)
        strbuf_cat(&s, ", ");
        strbuf_cat(&s, medium);
    }
    strbuf_cat(&s, " ");
    strbuf_cat(&s, artist);
    const char* rest[2] = {trending, movement};
    for (int i = 0; i < 2; i++) {
        strbuf_cat(&s, ", ");
        strbuf_cat(&s, rest[i]);
    }
    strbuf_cat(&s, ", ");
    for (int i = 0; i < n; i++) {
        if (i) strbuf_cat(&s, ", ");
        strbuf_cat(&s, ci->flavors->labels[top[i]]);
    }
    free(top);
    *prompt = clip_truncate_to_fit(&m->tok, s.s, CLIP_CHUNK_TOKENS);
    free(s.s);
    return 0;
}

int clip_interrogate_fast(const ClipModel* m, const ClipInterrogator* ci, const float* image_features,
                          const char* caption, int max_flavors, char** prompt, char* err) {
    *prompt = NULL;
    // _merge_tables([artists, flavors, mediums, movements, trendings])
    const ClipLabelTable* merged[5] = {ci->artists, ci->flavors, ci->mediums, ci->movements, ci->trendings};
    for (int i = 0; i < 5; i++)
        if (!merged[i]) return set_error(err, "interrogator: a label table is missing");
    int* top = xmalloc(sizeof(int) * (max_flavors > 0 ? max_flavors : 1));
    int n = clip_label_rank(merged, 5, image_features, max_flavors, ci->chunk_size, top);
    StrBuf s = {0};
    strbuf_cat(&s, caption);
    strbuf_cat(&s, ", ");
    for (int i = 0; i < n; i++) {
        if (i) strbuf_cat(&s, ", ");
        strbuf_cat(&s, clip_label_at(merged, 5, top[i]));
    }
    free(top);
    *prompt = clip_truncate_to_fit(&m->tok, s.s, CLIP_CHUNK_TOKENS);
    free(s.s);
    return 0;
}
