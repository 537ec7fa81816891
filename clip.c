// clip.c: the CLIP text transformer (transformers CLIPTextModel / CLIPTextModelWithProjection).
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ops.h"

// ----------------------------------------------------------------------------
// Config

int clip_text_config_read(ClipTextConfig* c, const char* path, char* err) {
    JsonDoc doc;
    if (json_read_file(&doc, path, err) != 0) return -1;
    const JsonValue* r = &doc.root;
    int64_t v;
    memset(c, 0, sizeof(*c));
    struct { const char* key; int* dst; } ints[] = {
        {"vocab_size", &c->vocab_size}, {"hidden_size", &c->hidden}, {"intermediate_size", &c->intermediate},
        {"num_hidden_layers", &c->layers}, {"num_attention_heads", &c->heads},
        {"max_position_embeddings", &c->max_positions},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]) && rc == 0; i++) {
        if (!json_get_int(r, ints[i].key, &v) || v <= 0 || v > (1 << 24))
            rc = set_error(err, "%s: missing or bad \"%s\"", path, ints[i].key);
        else *ints[i].dst = (int)v;
    }
    double eps = 1e-5;
    json_get_number(r, "layer_norm_eps", &eps);
    c->eps = (float)eps;
    const char* act = json_get_string(r, "hidden_act");
    if (rc == 0) {
        if (!act || strcmp(act, "quick_gelu") == 0) c->act = CLIP_ACT_QUICK_GELU; // CLIPTextConfig's default
        else if (strcmp(act, "gelu") == 0) c->act = CLIP_ACT_GELU;
        else rc = set_error(err, "%s: hidden_act \"%s\" is not quick_gelu or gelu", path, act);
    }
    // The projection exists in CLIPTextModelWithProjection, whatever projection_dim says.
    const JsonValue* arch = json_get(r, "architectures");
    int with_projection = 0;
    if (arch && arch->type == JSON_ARRAY)
        for (size_t i = 0; i < arch->length; i++)
            if (arch->items[i].type == JSON_STRING && strcmp(arch->items[i].string, "CLIPTextModelWithProjection") == 0)
                with_projection = 1;
    if (rc == 0 && with_projection) {
        if (!json_get_int(r, "projection_dim", &v) || v <= 0) rc = set_error(err, "%s: missing \"projection_dim\"", path);
        else c->projection_dim = (int)v;
    }
    c->eos_token_id = json_get_int(r, "eos_token_id", &v) ? (int)v : 2;
    if (rc == 0 && c->hidden % c->heads != 0)
        rc = set_error(err, "%s: hidden_size %d is not a multiple of num_attention_heads %d", path, c->hidden, c->heads);
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

static void clip_text_build(ClipText* m, Weights* w) {
    const ClipTextConfig* c = &m->cfg;
    char name[NAME_MAX_LEN];
    m->token_embedding = tensor_build(w, "embeddings.token_embedding.weight", 2, (int64_t[]){c->vocab_size, c->hidden});
    m->position_embedding =
        tensor_build(w, "embeddings.position_embedding.weight", 2, (int64_t[]){c->max_positions, c->hidden});
    for (int l = 0; l < c->layers; l++) {
        ClipLayer* L = &m->layers[l];
        char p[NAME_MAX_LEN];
        snprintf(p, sizeof(p), "encoder.layers.%d", l);
        L->ln1 = layer_norm_build(w, name_fmt(name, "%s.layer_norm1", p), c->hidden, c->eps);
        L->q = linear_build(w, name_fmt(name, "%s.self_attn.q_proj", p), c->hidden, c->hidden, 1);
        L->k = linear_build(w, name_fmt(name, "%s.self_attn.k_proj", p), c->hidden, c->hidden, 1);
        L->v = linear_build(w, name_fmt(name, "%s.self_attn.v_proj", p), c->hidden, c->hidden, 1);
        L->out = linear_build(w, name_fmt(name, "%s.self_attn.out_proj", p), c->hidden, c->hidden, 1);
        L->ln2 = layer_norm_build(w, name_fmt(name, "%s.layer_norm2", p), c->hidden, c->eps);
        L->fc1 = linear_build(w, name_fmt(name, "%s.mlp.fc1", p), c->hidden, c->intermediate, 1);
        L->fc2 = linear_build(w, name_fmt(name, "%s.mlp.fc2", p), c->intermediate, c->hidden, 1);
    }
    m->final_ln = layer_norm_build(w, "final_layer_norm", c->hidden, c->eps);
    if (c->projection_dim) m->projection = linear_build(w, "text_projection", c->hidden, c->projection_dim, 0);
}

// Both build passes and the one allocation (weights.h).
static void clip_text_create(ClipText* m, const ClipTextConfig* cfg, const char* what) {
    memset(m, 0, sizeof(*m));
    m->cfg = *cfg;
    m->layers = xcalloc((size_t)cfg->layers, sizeof(ClipLayer));
    weights_init(&m->w, what);
    clip_text_build(m, &m->w);
    weights_allocate(&m->w);
    clip_text_build(m, &m->w);
    weights_finish(&m->w);
}

// transformers layout: everything under `outer` + `inner` ("text_model." or ""), but the
// projection, which sits beside text_model.
typedef struct {
    const char* outer;
    const char* inner;
} HfKeys;

static int hf_key(const char* name, ParamSource* src, void* ctx) {
    const HfKeys* k = ctx;
    memset(src, 0, sizeof(*src));
    int beside = strncmp(name, "text_projection", 15) == 0;
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
                        char* err) {
    clip_text_create(m, cfg, cfg->projection_dim ? "text_encoder_2" : "text_encoder");
    int rc;
    if (open_clip) {
        OpenClipKeys keys = {prefix, cfg->hidden};
        rc = weights_load_mapped(&m->w, st, open_clip_key, &keys, err);
    } else {
        char probe[512];
        snprintf(probe, sizeof(probe), "%stext_model.embeddings.token_embedding.weight", prefix);
        HfKeys keys = {prefix, safetensors_find(st, probe) ? "text_model." : ""};
        rc = weights_load_mapped(&m->w, st, hf_key, &keys, err);
    }
    if (rc != 0) clip_text_free(m);
    return rc;
}

int clip_text_load(ClipText* m, const char* folder, const char* variant, char* err) {
    char path[4096];
    ClipTextConfig cfg;
    snprintf(path, sizeof(path), "%s/config.json", folder);
    if (clip_text_config_read(&cfg, path, err) != 0) return -1;
    SafeTensors st;
    if (safetensors_open_dir(&st, folder, "model", variant, err) != 0) return -1;
    int rc = clip_text_load_from(m, &cfg, &st, "", 0, err);
    safetensors_close(&st);
    return rc;
}

void clip_text_init_random(ClipText* m, const ClipTextConfig* cfg, uint64_t seed) {
    clip_text_create(m, cfg, cfg->projection_dim ? "text_encoder_2" : "text_encoder");
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

// One pre-LN encoder layer on x (T = B*L tokens), in place.
static void clip_layer_forward(const ClipText* m, const ClipLayer* L, float* x, int B, int Ltok, Arena* scratch) {
    const ClipTextConfig* c = &m->cfg;
    size_t T = (size_t)B * Ltok, mark = arena_mark(scratch);
    float* h = arena_floats(scratch, T * c->hidden, "clip h");
    float* q = arena_floats(scratch, T * c->hidden, "clip q");
    float* k = arena_floats(scratch, T * c->hidden, "clip k");
    float* v = arena_floats(scratch, T * c->hidden, "clip v");
    float* a = arena_floats(scratch, T * c->hidden, "clip attention");
    // x = x + out_proj(attention(layer_norm1(x)))                   (B, L, hidden)
    layer_norm(&L->ln1, h, x, (int)T);
    linear(&L->q, q, h, (int)T);
    linear(&L->k, k, h, (int)T);
    linear(&L->v, v, h, (int)T);
    attention_forward(a, q, k, v, B, c->heads, Ltok, Ltok, c->hidden / c->heads, 1); // causal
    linear(&L->out, h, a, (int)T);
    add_forward(x, x, h, T * c->hidden);
    // x = x + fc2(act(fc1(layer_norm2(x))))
    float* f = arena_floats(scratch, T * c->intermediate, "clip mlp");
    layer_norm(&L->ln2, h, x, (int)T);
    linear(&L->fc1, f, h, (int)T);                                 // (B, L, intermediate)
    if (c->act == CLIP_ACT_QUICK_GELU) quick_gelu_forward(f, f, T * c->intermediate);
    else gelu_forward(f, f, T * c->intermediate);
    linear(&L->fc2, h, f, (int)T);                                 // (B, L, hidden)
    add_forward(x, x, h, T * c->hidden);
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
    int32_t* d_ids = arena_alloc(scratch, sizeof(int32_t) * T, "clip ids");
    copy_to_device(d_ids, ids, sizeof(int32_t) * T);
    float* x = arena_floats(scratch, T * c->hidden, "clip x");
    // x = token_embedding[ids] + position_embedding[0..L)          (B, L, hidden)
    embedding_forward(x, d_ids, m->token_embedding, (int)T, c->vocab_size, c->hidden);
    for (int b = 0; b < B; b++) add_forward(x + (size_t)b * L * c->hidden, x + (size_t)b * L * c->hidden,
                                            m->position_embedding, (size_t)L * c->hidden);
    for (int l = 0; l < c->layers; l++) {
        if (l == c->layers - 1) { // hidden_states[-2]: what enters the last layer
            copy_device_to_device(penultimate, x, sizeof(float) * T * c->hidden);
            if (!pooled) break;
        }
        clip_layer_forward(m, &m->layers[l], x, B, L, scratch);
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
        float* eos = arena_floats(scratch, (size_t)B * c->hidden, "clip pooled rows");
        embedding_forward(eos, d_rows, x, B, (int)T, c->hidden); // a row gather
        linear(&m->projection, pooled, eos, B);
    }
    arena_release(scratch, mark);
}
