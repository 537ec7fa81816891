// sdxl.c: the SDXL UNet. See sdxl.h.
//
// Mirrors diffusers (src/diffusers/models/unets/unet_2d_condition.py, unet_2d_blocks.py,
// resnet.py, transformers/transformer_2d.py, attention.py, embeddings.py, upsampling.py,
// downsampling.py) as configured by SDXL base 1.0's unet/config.json, which equals SGM's
// openaimodel.UNetModel with the sd_xl_base.yaml settings. Names are diffusers'; unet_sgm_name
// gives the SGM spelling (diffusers loaders/single_file_utils.py convert_ldm_unet_checkpoint,
// read backwards), which is also what kohya's LoRA names are made from.
//
// Shapes: N batch (2 with classifier-free guidance), C channels, h x w latent size at the current
// level, HW = h*w, L_ctx text tokens (77 per prompt chunk), TE the time-embedding width (1280).
#include "sdxl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ops.h"

// ----------------------------------------------------------------------------
// Config

// Fails unless `key` is absent, null, or equal to the expected string/bool/number.
static int require_string(const JsonValue* root, const char* key, const char* want, const char* path, char* err) {
    const JsonValue* v = json_get(root, key);
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_STRING || strcmp(v->string, want) != 0)
        return set_error(err, "%s: \"%s\" must be \"%s\" for SDXL (other UNets are not supported)", path, key, want);
    return 0;
}

static int require_false(const JsonValue* root, const char* key, const char* path, char* err) {
    const JsonValue* v = json_get(root, key);
    if (!v || v->type == JSON_NULL || v->type == JSON_FALSE) return 0;
    return set_error(err, "%s: \"%s\" must be false or null for SDXL (other UNets are not supported)", path, key);
}

int unet_config_read(UnetConfig* c, const char* path, char* err) {
    JsonDoc doc;
    if (json_read_file(&doc, path, err) != 0) return -1;
    const JsonValue* r = &doc.root;
    memset(c, 0, sizeof(*c));
    int rc = 0;
    const JsonValue* down = json_get(r, "down_block_types");
    const JsonValue* up = json_get(r, "up_block_types");
    if ((rc = json_config_int_list(r, "block_out_channels", 1, UNET_MAX_CHANNELS, 2, UNET_MAX_LEVELS, c->block_out, &c->levels,
                                   path, err)) != 0)
        goto done;
    if (!down || down->type != JSON_ARRAY || (int)down->length != c->levels || !up || up->type != JSON_ARRAY ||
        (int)up->length != c->levels) {
        rc = set_error(err, "%s: \"down_block_types\" and \"up_block_types\" must list %d blocks", path, c->levels);
        goto done;
    }
    for (int i = 0; i < c->levels; i++) {
        const char* d = down->items[i].type == JSON_STRING ? down->items[i].string : "";
        const char* u = up->items[c->levels - 1 - i].type == JSON_STRING ? up->items[c->levels - 1 - i].string : "";
        if (strcmp(d, "CrossAttnDownBlock2D") == 0) c->has_attention[i] = 1;
        else if (strcmp(d, "DownBlock2D") != 0) {
            rc = set_error(err, "%s: down block type \"%s\" is not supported", path, d);
            goto done;
        }
        const char* want_up = c->has_attention[i] ? "CrossAttnUpBlock2D" : "UpBlock2D";
        if (strcmp(u, want_up) != 0) {
            rc = set_error(err, "%s: up block %d is \"%s\", SDXL's layout needs \"%s\"", path, c->levels - 1 - i, u, want_up);
            goto done;
        }
    }
    struct { const char* key; int* dst; int hi; } ints[] = {
        {"in_channels", &c->in_channels, UNET_MAX_IO_CHANNELS}, {"out_channels", &c->out_channels, UNET_MAX_IO_CHANNELS},
        {"layers_per_block", &c->layers_per_block, UNET_MAX_LAYERS_PER_BLOCK},
        {"cross_attention_dim", &c->cross_attention_dim, UNET_MAX_CONTEXT}, {"norm_num_groups", &c->groups, UNET_MAX_GROUPS},
        {"addition_time_embed_dim", &c->addition_time_embed_dim, UNET_MAX_TIME_ID_DIM},
        {"projection_class_embeddings_input_dim", &c->projection_class_embeddings_input_dim, UNET_MAX_ADD_IN},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        if ((rc = json_config_int(r, ints[i].key, 1, ints[i].hi, ints[i].dst, path, err)) != 0) goto done;
    if ((rc = json_config_int_levels(r, "transformer_layers_per_block", 1, UNET_MAX_DEPTH, c->levels, c->transformer_depth,
                                     path, err)) < 0)
        goto done;
    if (rc == 1) for (int i = 0; i < c->levels; i++) c->transformer_depth[i] = 1;
    // the head count: num_attention_heads when given, else attention_head_dim (diffusers #2011)
    if ((rc = json_config_int_levels(r, "num_attention_heads", 1, UNET_MAX_CHANNELS, c->levels, c->heads, path, err)) < 0)
        goto done;
    if (rc == 1 &&
        (rc = json_config_int_levels(r, "attention_head_dim", 1, UNET_MAX_CHANNELS, c->levels, c->heads, path, err)) != 0) {
        if (rc == 1) rc = set_error(err, "%s: missing \"attention_head_dim\" (the head count of each level)", path);
        goto done;
    }
    if ((rc = json_config_int_levels(r, "reverse_transformer_layers_per_block", 1, UNET_MAX_DEPTH, c->levels,
                                     c->up_transformer_depth, path, err)) < 0)
        goto done;
    if (rc == 1)
        for (int i = 0; i < c->levels; i++) c->up_transformer_depth[i] = c->transformer_depth[c->levels - 1 - i];
    double eps, shift;
    // diffusers' defaults: norm_eps 1e-5, freq_shift 0 (its downscale_freq_shift, 0 or 1 in practice)
    if ((rc = json_config_number_or(r, "norm_eps", NORM_EPS_MIN, NORM_EPS_MAX, 1e-5, &eps, path, err)) < 0 ||
        (rc = json_config_number_or(r, "freq_shift", 0.0, 1.0, 0.0, &shift, path, err)) < 0)
        goto done;
    rc = 0;
    c->norm_eps = (float)eps;
    c->freq_shift = (float)shift;
    c->flip_sin_to_cos = 1;
    json_get_bool(r, "flip_sin_to_cos", &c->flip_sin_to_cos);
    int linear_projection = 0;
    json_get_bool(r, "use_linear_projection", &linear_projection);
    if (!linear_projection) {
        rc = set_error(err, "%s: SDXL uses \"use_linear_projection\": true (1x1-conv projections are not supported)", path);
        goto done;
    }
    int time_embed_dim;
    if ((rc = json_config_int_or(r, "time_embedding_dim", 1, 4 * UNET_MAX_CHANNELS, 4 * c->block_out[0], &time_embed_dim, path,
                                 err)) < 0)
        goto done;
    rc = 0;
    if (time_embed_dim != 4 * c->block_out[0]) {
        rc = set_error(err, "%s: \"time_embedding_dim\" must be null (4 x block_out_channels[0])", path);
        goto done;
    }
    c->time_embed_dim = time_embed_dim;
    // the sinusoidal embeddings (of the timestep, block_out_channels[0] wide, and of each size/crop
    // id) are half sines, half cosines
    if (c->block_out[0] % 2 != 0 || c->addition_time_embed_dim % 2 != 0) {
        rc = set_error(err, "%s: \"block_out_channels\"[0] %d and \"addition_time_embed_dim\" %d must be even (sinusoidal "
                       "embeddings)", path, c->block_out[0], c->addition_time_embed_dim);
        goto done;
    }
    if ((rc = require_string(r, "addition_embed_type", "text_time", path, err)) ||
        (rc = require_string(r, "mid_block_type", "UNetMidBlock2DCrossAttn", path, err)) ||
        (rc = require_string(r, "act_fn", "silu", path, err)) ||
        (rc = require_string(r, "time_embedding_type", "positional", path, err)) ||
        (rc = require_string(r, "resnet_time_scale_shift", "default", path, err)) ||
        (rc = require_false(r, "class_embed_type", path, err)) || (rc = require_false(r, "center_input_sample", path, err)) ||
        (rc = require_false(r, "only_cross_attention", path, err)) || (rc = require_false(r, "dual_cross_attention", path, err)) ||
        (rc = require_false(r, "encoder_hid_dim_type", path, err)) || (rc = require_false(r, "time_cond_proj_dim", path, err)))
        goto done;
    if (!json_get(r, "addition_embed_type") || json_get(r, "addition_embed_type")->type != JSON_STRING) {
        rc = set_error(err, "%s: \"addition_embed_type\" must be \"text_time\" for SDXL", path);
        goto done;
    }
    for (int i = 0; i < c->levels; i++) {
        if (c->block_out[i] % c->groups != 0 || (c->has_attention[i] && c->block_out[i] % c->heads[i] != 0)) {
            rc = set_error(err, "%s: \"block_out_channels\"[%d] %d does not split into %d groups (\"norm_num_groups\") and %d "
                           "heads (\"attention_head_dim\")", path, i, c->block_out[i], c->groups, c->heads[i]);
            goto done;
        }
        if (c->has_attention[i] && c->block_out[i] / c->heads[i] > ATTENTION_MAX_HS) {
            rc = set_error(err, "%s: \"block_out_channels\"[%d] %d in %d heads (\"attention_head_dim\") makes heads of %d "
                           "channels, above the %d attention supports", path, i, c->block_out[i], c->heads[i],
                           c->block_out[i] / c->heads[i], ATTENTION_MAX_HS);
            goto done;
        }
    }
    if (c->projection_class_embeddings_input_dim <= 6 * c->addition_time_embed_dim) {
        rc = set_error(err, "%s: projection_class_embeddings_input_dim %d leaves no room for the pooled text beside 6 x %d",
                       path, c->projection_class_embeddings_input_dim, c->addition_time_embed_dim);
        goto done;
    }
done:
    json_free(&doc);
    return rc;
}

void unet_config_sdxl(UnetConfig* c) {
    memset(c, 0, sizeof(*c));
    *c = (UnetConfig){
        .in_channels = 4, .out_channels = 4, .levels = 3,
        .block_out = {320, 640, 1280}, .has_attention = {0, 1, 1}, .transformer_depth = {1, 2, 10},
        .heads = {5, 10, 20}, .up_transformer_depth = {10, 2, 1}, .layers_per_block = 2,
        .cross_attention_dim = 2048, .groups = 32, .norm_eps = 1e-5f, .flip_sin_to_cos = 1, .freq_shift = 0.0f,
        .addition_time_embed_dim = 256, .projection_class_embeddings_input_dim = 2816, .time_embed_dim = 1280,
    };
}

// ----------------------------------------------------------------------------
// Parameters (names generated in the same loops that build the structure)

static UnetResBlock resblock_build(Weights* w, const UnetConfig* c, const char* prefix, int in, int out) {
    char name[NAME_MAX_LEN];
    UnetResBlock rb = {0};
    rb.in = in;
    rb.out = out;
    rb.norm1 = group_norm_build(w, name_fmt(name, "%s.norm1", prefix), in, c->groups, c->norm_eps);
    rb.conv1 = conv2d_build(w, name_fmt(name, "%s.conv1", prefix), in, out, 3, 1, 1, 1);
    rb.time_emb_proj = linear_build(w, name_fmt(name, "%s.time_emb_proj", prefix), c->time_embed_dim, out, 1);
    rb.norm2 = group_norm_build(w, name_fmt(name, "%s.norm2", prefix), out, c->groups, c->norm_eps);
    rb.conv2 = conv2d_build(w, name_fmt(name, "%s.conv2", prefix), out, out, 3, 1, 1, 1);
    rb.has_shortcut = in != out;
    if (rb.has_shortcut) rb.shortcut = conv2d_build(w, name_fmt(name, "%s.conv_shortcut", prefix), in, out, 1, 1, 0, 1);
    return rb;
}

static void spatial_transformer_build(UnetSpatialTransformer* st, Weights* w, const UnetConfig* c, const char* prefix,
                                      int C, int heads, int depth) {
    char name[NAME_MAX_LEN], p[NAME_MAX_LEN];
    st->C = C;
    st->heads = heads;
    st->depth = depth;
    st->norm = group_norm_build(w, name_fmt(name, "%s.norm", prefix), C, c->groups, 1e-6f);
    st->proj_in = linear_build(w, name_fmt(name, "%s.proj_in", prefix), C, C, 1);
    for (int d = 0; d < depth; d++) {
        UnetTransformerBlock* b = &st->blocks[d];
        name_fmt(p, "%s.transformer_blocks.%d", prefix, d);
        b->norm1 = layer_norm_build(w, name_fmt(name, "%s.norm1", p), C, 1e-5f);
        b->q1 = linear_build(w, name_fmt(name, "%s.attn1.to_q", p), C, C, 0);
        b->k1 = linear_build(w, name_fmt(name, "%s.attn1.to_k", p), C, C, 0);
        b->v1 = linear_build(w, name_fmt(name, "%s.attn1.to_v", p), C, C, 0);
        b->out1 = linear_build(w, name_fmt(name, "%s.attn1.to_out.0", p), C, C, 1);
        b->norm2 = layer_norm_build(w, name_fmt(name, "%s.norm2", p), C, 1e-5f);
        b->q2 = linear_build(w, name_fmt(name, "%s.attn2.to_q", p), C, C, 0);
        b->k2 = linear_build(w, name_fmt(name, "%s.attn2.to_k", p), c->cross_attention_dim, C, 0);
        b->v2 = linear_build(w, name_fmt(name, "%s.attn2.to_v", p), c->cross_attention_dim, C, 0);
        b->out2 = linear_build(w, name_fmt(name, "%s.attn2.to_out.0", p), C, C, 1);
        b->norm3 = layer_norm_build(w, name_fmt(name, "%s.norm3", p), C, 1e-5f);
        b->ff_in = linear_build(w, name_fmt(name, "%s.ff.net.0.proj", p), C, 8 * C, 1); // GEGLU: value and gate, 4C each
        b->ff_out = linear_build(w, name_fmt(name, "%s.ff.net.2", p), 4 * C, C, 1);
    }
    st->proj_out = linear_build(w, name_fmt(name, "%s.proj_out", prefix), C, C, 1);
}

// The block arrays are allocated once, before the first pass (their sizes come from the config).
static void unet_allocate_blocks(Unet* u) {
    const UnetConfig* c = &u->cfg;
    int L = c->layers_per_block;
    for (int i = 0; i < c->levels; i++) {
        u->down[i].resnets = xcalloc((size_t)L, sizeof(UnetResBlock));
        if (c->has_attention[i]) {
            u->down[i].attentions = xcalloc((size_t)L, sizeof(UnetSpatialTransformer));
            for (int j = 0; j < L; j++)
                u->down[i].attentions[j].blocks = xcalloc((size_t)c->transformer_depth[i], sizeof(UnetTransformerBlock));
        }
        int r = c->levels - 1 - i; // up block i mirrors level r
        u->up[i].resnets = xcalloc((size_t)L + 1, sizeof(UnetResBlock));
        if (c->has_attention[r]) {
            u->up[i].attentions = xcalloc((size_t)L + 1, sizeof(UnetSpatialTransformer));
            for (int j = 0; j <= L; j++)
                u->up[i].attentions[j].blocks = xcalloc((size_t)c->up_transformer_depth[i], sizeof(UnetTransformerBlock));
        }
    }
    u->mid_attn.blocks = xcalloc((size_t)c->transformer_depth[c->levels - 1], sizeof(UnetTransformerBlock));
}

static void unet_build(Unet* u, Weights* w) {
    const UnetConfig* c = &u->cfg;
    char name[NAME_MAX_LEN];
    int L = c->layers_per_block, last = c->levels - 1;
    u->conv_in = conv2d_build(w, "conv_in", c->in_channels, c->block_out[0], 3, 1, 1, 1);
    u->time_linear_1 = linear_build(w, "time_embedding.linear_1", c->block_out[0], c->time_embed_dim, 1);
    u->time_linear_2 = linear_build(w, "time_embedding.linear_2", c->time_embed_dim, c->time_embed_dim, 1);
    u->add_linear_1 = linear_build(w, "add_embedding.linear_1", c->projection_class_embeddings_input_dim, c->time_embed_dim, 1);
    u->add_linear_2 = linear_build(w, "add_embedding.linear_2", c->time_embed_dim, c->time_embed_dim, 1);

    // down blocks (unet_2d_blocks.py DownBlock2D / CrossAttnDownBlock2D)
    int output = c->block_out[0];
    for (int i = 0; i < c->levels; i++) {
        int input = output;
        output = c->block_out[i];
        UnetBlock* b = &u->down[i];
        for (int j = 0; j < L; j++) {
            b->resnets[j] = resblock_build(w, c, name_fmt(name, "down_blocks.%d.resnets.%d", i, j), j == 0 ? input : output, output);
            if (c->has_attention[i])
                spatial_transformer_build(&b->attentions[j], w, c, name_fmt(name, "down_blocks.%d.attentions.%d", i, j), output,
                                          c->heads[i], c->transformer_depth[i]);
        }
        b->has_sampler = i != last;
        if (b->has_sampler)
            b->sampler = conv2d_build(w, name_fmt(name, "down_blocks.%d.downsamplers.0.conv", i), output, output, 3, 2, 1, 1);
    }
    // mid block (UNetMidBlock2DCrossAttn)
    int C = c->block_out[last];
    u->mid_res0 = resblock_build(w, c, "mid_block.resnets.0", C, C);
    spatial_transformer_build(&u->mid_attn, w, c, "mid_block.attentions.0", C, c->heads[last], c->transformer_depth[last]);
    u->mid_res1 = resblock_build(w, c, "mid_block.resnets.1", C, C);
    // up blocks, in reversed level order; resnet j's input is the previous output plus a skip
    output = c->block_out[last];
    for (int i = 0; i < c->levels; i++) {
        int r = last - i; // the level this up block mirrors
        int prev_output = output;
        output = c->block_out[r];
        int input = c->block_out[r > 0 ? r - 1 : 0];
        UnetBlock* b = &u->up[i];
        for (int j = 0; j <= L; j++) {
            int skip = j == L ? input : output;
            int res_in = j == 0 ? prev_output : output;
            b->resnets[j] = resblock_build(w, c, name_fmt(name, "up_blocks.%d.resnets.%d", i, j), res_in + skip, output);
            if (c->has_attention[r])
                spatial_transformer_build(&b->attentions[j], w, c, name_fmt(name, "up_blocks.%d.attentions.%d", i, j), output,
                                          c->heads[r], c->up_transformer_depth[i]);
        }
        b->has_sampler = i != last;
        if (b->has_sampler)
            b->sampler = conv2d_build(w, name_fmt(name, "up_blocks.%d.upsamplers.0.conv", i), output, output, 3, 1, 1, 1);
    }
    u->norm_out = group_norm_build(w, "conv_norm_out", c->block_out[0], c->groups, c->norm_eps);
    u->conv_out = conv2d_build(w, "conv_out", c->block_out[0], c->out_channels, 3, 1, 1, 1);
}

// The blocks and the first build pass: every layer's shape, no parameter memory yet.
static void unet_declare(Unet* u, const UnetConfig* cfg, DType dtype) {
    memset(u, 0, sizeof(*u));
    u->cfg = *cfg;
    unet_allocate_blocks(u);
    weights_init(&u->w, "unet", dtype);
    unet_build(u, &u->w);
}

// The parameter memory and the second build pass, after unet_declare.
static void unet_allocate_declared(Unet* u) {
    weights_allocate(&u->w);
    unet_build(u, &u->w);
    weights_finish(&u->w);
}

void unet_allocate(Unet* u, const UnetConfig* cfg, DType dtype) {
    unet_declare(u, cfg, dtype);
    unet_allocate_declared(u);
}

// Declares the UNet of cfg, checks every parameter against the file (map: the file's names),
// and only then allocates and loads: a config bigger than its file stops at the first missing or
// mis-shaped tensor, before any parameter memory.
static int unet_load_mapped(Unet* u, const UnetConfig* cfg, const SafeTensors* st, KeyMap map, void* ctx, DType dtype,
                            char* err) {
    unet_declare(u, cfg, dtype);
    if (weights_check_mapped(&u->w, st, map, ctx, err) != 0) {
        unet_free(u);
        return -1;
    }
    unet_allocate_declared(u);
    int rc = weights_load_mapped(&u->w, st, map, ctx, err);
    if (rc != 0) unet_free(u);
    return rc;
}

static int diffusers_key(const char* name, ParamSource* src, void* ctx) {
    memset(src, 0, sizeof(*src));
    snprintf(src->key, sizeof(src->key), "%s", name);
    return 0;
}

int unet_load(Unet* u, const char* folder, const char* variant, DType dtype, char* err) {
    char path[4096];
    UnetConfig cfg;
    snprintf(path, sizeof(path), "%s/config.json", folder);
    if (unet_config_read(&cfg, path, err) != 0) return -1;
    SafeTensors st;
    if (safetensors_open_dir(&st, folder, "diffusion_pytorch_model", variant, err) != 0) return -1;
    int rc = unet_load_mapped(u, &cfg, &st, diffusers_key, NULL, dtype, err);
    safetensors_close(&st);
    return rc;
}

// ----------------------------------------------------------------------------
// SGM names (diffusers single_file_utils.py convert_ldm_unet_checkpoint, read backwards)

int unet_sgm_name(const UnetConfig* c, const char* name, char* out, size_t cap) {
    static const struct { const char* diffusers; const char* sgm; } fixed[] = {
        {"time_embedding.linear_1.", "time_embed.0."}, {"time_embedding.linear_2.", "time_embed.2."},
        {"add_embedding.linear_1.", "label_emb.0.0."}, {"add_embedding.linear_2.", "label_emb.0.2."},
        {"conv_in.", "input_blocks.0.0."}, {"conv_norm_out.", "out.0."}, {"conv_out.", "out.2."},
    };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        size_t n = strlen(fixed[i].diffusers);
        if (strncmp(name, fixed[i].diffusers, n) == 0) {
            snprintf(out, cap, "%s%s", fixed[i].sgm, name + n);
            return 0;
        }
    }
    // ResNet sub-names differ; transformer sub-names are the same in both
    static const struct { const char* diffusers; const char* sgm; } resnet_parts[] = {
        {"norm1.", "in_layers.0."}, {"conv1.", "in_layers.2."}, {"time_emb_proj.", "emb_layers.1."},
        {"norm2.", "out_layers.0."}, {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."},
    };
    int L = c->layers_per_block, b, j, consumed = 0;
    char kind[16], block_prefix[64];
    const char* rest = NULL;
    int is_resnet = 0;
    if (sscanf(name, "down_blocks.%d.%15[a-z].%d.%n", &b, kind, &j, &consumed) == 3 && consumed) {
        rest = name + consumed;
        if (strcmp(kind, "resnets") == 0) {
            snprintf(block_prefix, sizeof(block_prefix), "input_blocks.%d.0.", 1 + b * (L + 1) + j);
            is_resnet = 1;
        } else if (strcmp(kind, "attentions") == 0) {
            snprintf(block_prefix, sizeof(block_prefix), "input_blocks.%d.1.", 1 + b * (L + 1) + j);
        } else if (strcmp(kind, "downsamplers") == 0 && j == 0 && strncmp(rest, "conv.", 5) == 0) {
            snprintf(out, cap, "input_blocks.%d.0.op.%s", (b + 1) * (L + 1), rest + 5);
            return 0;
        } else return -1;
    } else if (sscanf(name, "up_blocks.%d.%15[a-z].%d.%n", &b, kind, &j, &consumed) == 3 && consumed) {
        rest = name + consumed;
        if (strcmp(kind, "resnets") == 0) {
            snprintf(block_prefix, sizeof(block_prefix), "output_blocks.%d.0.", b * (L + 1) + j);
            is_resnet = 1;
        } else if (strcmp(kind, "attentions") == 0) {
            snprintf(block_prefix, sizeof(block_prefix), "output_blocks.%d.1.", b * (L + 1) + j);
        } else if (strcmp(kind, "upsamplers") == 0 && j == 0 && strncmp(rest, "conv.", 5) == 0) {
            // output_blocks.i.2.conv after an attention, .1.conv without one
            int has_attention = b < c->levels && c->has_attention[c->levels - 1 - b];
            snprintf(out, cap, "output_blocks.%d.%d.conv.%s", b * (L + 1) + L, has_attention ? 2 : 1, rest + 5);
            return 0;
        } else return -1;
    } else if (sscanf(name, "mid_block.%15[a-z].%d.%n", kind, &j, &consumed) == 2 && consumed) {
        rest = name + consumed;
        if (strcmp(kind, "resnets") == 0 && (j == 0 || j == 1)) {
            snprintf(block_prefix, sizeof(block_prefix), "middle_block.%d.", 2 * j);
            is_resnet = 1;
        } else if (strcmp(kind, "attentions") == 0 && j == 0) {
            snprintf(block_prefix, sizeof(block_prefix), "middle_block.1.");
        } else return -1;
    } else {
        return -1;
    }
    if (is_resnet) {
        for (size_t i = 0; i < sizeof(resnet_parts) / sizeof(resnet_parts[0]); i++) {
            size_t n = strlen(resnet_parts[i].diffusers);
            if (strncmp(rest, resnet_parts[i].diffusers, n) == 0) {
                snprintf(out, cap, "%s%s%s", block_prefix, resnet_parts[i].sgm, rest + n);
                return 0;
            }
        }
        return -1;
    }
    snprintf(out, cap, "%s%s", block_prefix, rest);
    return 0;
}

static int sgm_key(const char* name, ParamSource* src, void* ctx) {
    const UnetConfig* c = ctx;
    char sgm[WEIGHTS_NAME_MAX + 32];
    memset(src, 0, sizeof(*src));
    if (unet_sgm_name(c, name, sgm, sizeof(sgm)) != 0) return -1;
    snprintf(src->key, sizeof(src->key), "model.diffusion_model.%s", sgm);
    return 0;
}

int unet_load_sgm(Unet* u, const UnetConfig* cfg, const SafeTensors* st, DType dtype, char* err) {
    UnetConfig names = *cfg; // sgm_key's context: u->cfg is cleared by unet_free on failure
    return unet_load_mapped(u, cfg, st, sgm_key, &names, dtype, err);
}

void unet_init_random(Unet* u, const UnetConfig* cfg, DType dtype, uint64_t seed) {
    unet_allocate(u, cfg, dtype);
    weights_fill_random(&u->w, seed);
}

static void spatial_transformer_free(UnetSpatialTransformer* st) { free(st->blocks); }

void unet_free(Unet* u) {
    const UnetConfig* c = &u->cfg;
    for (int i = 0; i < c->levels; i++) {
        if (u->down[i].attentions)
            for (int j = 0; j < c->layers_per_block; j++) spatial_transformer_free(&u->down[i].attentions[j]);
        if (u->up[i].attentions)
            for (int j = 0; j <= c->layers_per_block; j++) spatial_transformer_free(&u->up[i].attentions[j]);
        free(u->down[i].resnets);
        free(u->down[i].attentions);
        free(u->up[i].resnets);
        free(u->up[i].attentions);
    }
    spatial_transformer_free(&u->mid_attn);
    weights_free(&u->w);
    memset(u, 0, sizeof(*u));
}

// ----------------------------------------------------------------------------
// Forward
//
// Every activation is of the UNet's storage type dt (its weights' type): f32 on the CPU path,
// f16 on the fast GPU path. Buffers are `void*` for that reason; sizes are in elements.

// ResnetBlock2D (resnet.py):  out = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(emb)))))
//   x (N, in, h, w)   emb_act = silu(emb) (N, TE)   out (N, out, h, w), must not alias x
// With a tape (training) it also keeps what resblock_backward needs: both norms' statistics and
// norm2's input b (at inference norm2 runs in place on it); the convolutions' inputs only when
// they have LoRA adapters, since frozen weights need no input to pass a gradient back.
static void resblock_forward(const UnetResBlock* rb, void* out, const void* x, const void* emb_act, int N, int h, int w,
                             Arena* scratch, ResblockTape* tape) {
    DType dt = rb->conv1.dtype;
    size_t HW = (size_t)h * w, mark = arena_mark(scratch);
    void* a = tape && tape->a ? tape->a : arena_elems(scratch, (size_t)N * rb->in * HW, dt, "resnet norm1");
    void* b = tape ? tape->b : arena_elems(scratch, (size_t)N * rb->out * HW, dt, "resnet conv1");
    void* c = tape && tape->c ? tape->c : tape ? arena_elems(scratch, (size_t)N * rb->out * HW, dt, "resnet norm2") : b;
    void* e = arena_elems(scratch, (size_t)N * rb->out, dt, "resnet time embedding");
    group_norm_saving(&rb->norm1, a, tape ? tape->mean1 : NULL, tape ? tape->rstd1 : NULL, x, N, (int)HW, 1);
    conv2d(&rb->conv1, b, a, N, h, w, scratch);                    // (N, out, h, w)
    linear(&rb->time_emb_proj, e, emb_act, N);                     // (N, out)
    add_channel_vector_forward(b, b, e, N, rb->out, (int)HW, dt);  // + emb[:, :, None, None]
    // dropout is the identity at inference and, at diffusers' default of 0, in training too
    group_norm_saving(&rb->norm2, c, tape ? tape->mean2 : NULL, tape ? tape->rstd2 : NULL, b, N, (int)HW, 1);
    if (rb->has_shortcut) {
        conv2d(&rb->shortcut, out, x, N, h, w, scratch);           // 1x1: in -> out
        conv2d_accumulate(&rb->conv2, out, c, N, h, w, scratch);   // out = shortcut(x) + conv2(c)
    } else {
        conv2d(&rb->conv2, out, c, N, h, w, scratch);
        add_forward(out, out, x, (size_t)N * rb->out * HW, dt);
    }
    arena_release(scratch, mark);
}

// BasicTransformerBlock (attention.py) on x (N, HW, C) in place:
//   x += attn1(norm1(x));  x += attn2(norm2(x), context);  x += ff(norm3(x))
// Each `x +=` is the output projection accumulating into x (linear_accumulate): no extra pass.
// At inference the three norms share one buffer, and so do the two attentions' q and outputs;
// with a tape each step writes its own buffer there, and the stream is copied before each `+=`.
static void transformer_block_forward(const UnetTransformerBlock* b, void* x, const void* context, int Lctx, int N, int HW,
                                      int C, int heads, Arena* scratch, TransformerBlockTape* tape) {
    DType dt = b->q1.dtype;
    size_t T = (size_t)N * HW, mark = arena_mark(scratch);
    int HS = C / heads;
    TransformerBlockTape s = {0}; // the buffers this pass writes
    if (tape) {
        s = *tape;
    } else {
        s.n1 = s.n2 = s.n3 = arena_elems(scratch, T * C, dt, "transformer norm");
        s.q1 = s.q2 = arena_elems(scratch, T * C, dt, "transformer q");
        s.k1 = arena_elems(scratch, T * C, dt, "transformer k");
        s.v1 = arena_elems(scratch, T * C, dt, "transformer v");
        s.a1 = s.a2 = arena_elems(scratch, T * C, dt, "transformer attention");
        s.kc = arena_elems(scratch, (size_t)N * Lctx * C, dt, "transformer context k");
        s.vc = arena_elems(scratch, (size_t)N * Lctx * C, dt, "transformer context v");
        s.f = arena_elems(scratch, T * 8 * C, dt, "transformer ff");
        s.g = arena_elems(scratch, T * 4 * C, dt, "transformer geglu");
    }
    size_t bytes = T * C * dtype_size(dt);
    // self-attention                                                 (N, HW, C)
    if (s.x0) copy_device_to_device(s.x0, x, bytes);
    layer_norm_saving(&b->norm1, s.n1, s.mean1, s.rstd1, x, (int)T);
    linear(&b->q1, s.q1, s.n1, (int)T);
    linear(&b->k1, s.k1, s.n1, (int)T);
    linear(&b->v1, s.v1, s.n1, (int)T);
    attention_forward(s.a1, s.q1, s.k1, s.v1, N, heads, HW, HW, HS, 0, dt);
    linear_accumulate(&b->out1, x, s.a1, (int)T);
    // cross-attention to the text: keys and values from context        (N, Lctx, cross_dim) -> (N, Lctx, C)
    if (s.x1) copy_device_to_device(s.x1, x, bytes);
    layer_norm_saving(&b->norm2, s.n2, s.mean2, s.rstd2, x, (int)T);
    linear(&b->q2, s.q2, s.n2, (int)T);
    linear(&b->k2, s.kc, context, N * Lctx);
    linear(&b->v2, s.vc, context, N * Lctx);
    attention_forward(s.a2, s.q2, s.kc, s.vc, N, heads, HW, Lctx, HS, 0, dt);
    linear_accumulate(&b->out2, x, s.a2, (int)T);
    // GEGLU feed-forward                                              (N, HW, 8C) -> (N, HW, 4C) -> (N, HW, C)
    if (s.x2) copy_device_to_device(s.x2, x, bytes);
    layer_norm_saving(&b->norm3, s.n3, s.mean3, s.rstd3, x, (int)T);
    linear(&b->ff_in, s.f, s.n3, (int)T);
    geglu_forward(s.g, s.f, (int)T, 4 * C, dt);
    linear_accumulate(&b->ff_out, x, s.g, (int)T);
    arena_release(scratch, mark);
}

// Transformer2DModel (transformer_2d.py, continuous input, linear projections):
//   out = proj_out(blocks(proj_in(norm(x) as tokens))) as NCHW + x
//   x (N, C, h, w)   out (N, C, h, w), must not alias x
// With a tape: the group norm's statistics, proj_in's input (tokens), proj_out's input (the
// stream after the last block) and every block's tape.
static void spatial_transformer_forward(const UnetSpatialTransformer* st, void* out, const void* x, const void* context,
                                        int Lctx, int N, int h, int w, Arena* scratch, SpatialTransformerTape* tape) {
    DType dt = st->proj_in.dtype;
    int C = st->C, HW = h * w;
    size_t T = (size_t)N * HW, mark = arena_mark(scratch);
    void* normed = arena_elems(scratch, T * C, dt, "transformer group norm");
    void* tokens = tape ? tape->tokens : arena_elems(scratch, T * C, dt, "transformer tokens");
    void* y = tape ? tape->stream : arena_elems(scratch, T * C, dt, "transformer stream");
    void* projected = tape ? arena_elems(scratch, T * C, dt, "transformer proj_out") : tokens;
    group_norm_saving(&st->norm, normed, tape ? tape->mean : NULL, tape ? tape->rstd : NULL, x, N, HW, 0);
    transpose_forward(tokens, normed, N, C, HW, dt);                // (N, C, HW) -> (N, HW, C)
    linear(&st->proj_in, y, tokens, (int)T);
    for (int d = 0; d < st->depth; d++)
        transformer_block_forward(&st->blocks[d], y, context, Lctx, N, HW, C, st->heads, scratch,
                                  tape ? &tape->blocks[d] : NULL);
    linear(&st->proj_out, projected, y, (int)T);
    transpose_forward(out, projected, N, HW, C, dt);                // (N, HW, C) -> (N, C, HW)
    add_forward(out, out, x, T * C, dt);
    arena_release(scratch, mark);
}

// The latent size after a stride-2, pad-1, 3x3 conv: ceil(n / 2).
static int down_size(int n) { return (n + 2 - 3) / 2 + 1; }

// Latent size at every level: level 0 is h x w, each next one the downsampler's output.
static void level_sizes(const UnetConfig* c, int h, int w, int* hs, int* ws) {
    hs[0] = h;
    ws[0] = w;
    for (int i = 1; i < c->levels; i++) {
        hs[i] = down_size(hs[i - 1]);
        ws[i] = down_size(ws[i - 1]);
    }
}

// The largest tensor the up path's two ping-pong buffers hold: each level's block outputs, and
// the upsampler's output (the level's channels at the next level's size).
static size_t up_buffer_elems(const UnetConfig* c, int N, const int* hs, const int* ws) {
    size_t most = 0;
    for (int r = 0; r < c->levels; r++) {
        size_t at_level = (size_t)N * c->block_out[r] * hs[r] * ws[r];
        size_t upsampled = r > 0 ? (size_t)N * c->block_out[r] * hs[r - 1] * ws[r - 1] : 0;
        most = at_level > most ? at_level : most;
        most = upsampled > most ? upsampled : most;
    }
    return most;
}

// The skip connections, pushed on the way down and popped on the way up.
#define UNET_MAX_SKIPS (1 + UNET_MAX_LEVELS * 8)
typedef struct {
    void* data[UNET_MAX_SKIPS];
    int C[UNET_MAX_SKIPS], h[UNET_MAX_SKIPS], w[UNET_MAX_SKIPS];
    int count;
} SkipStack;

static void skip_push(SkipStack* s, void* data, int C, int h, int w) {
    if (s->count == UNET_MAX_SKIPS) fatal("unet: more than %d skip connections", UNET_MAX_SKIPS);
    s->data[s->count] = data;
    s->C[s->count] = C;
    s->h[s->count] = h;
    s->w[s->count] = w;
    s->count++;
}

// An f32 input in the UNet's precision: the same buffer for f32, else a converted copy in act.
static const void* input_as(const float* x, size_t n, DType dt, Arena* act, const char* what) {
    if (dt == DT_F32) return x;
    void* y = arena_elems(act, n, dt, what);
    cast_forward(y, dt, x, DT_F32, n);
    return y;
}

// The conditioning every resnet reads: silu(emb), with emb the time embedding plus the added
// "text_time" embedding (pooled text and the six size/crop ids), (N, TE) of dt, left in act.
static void* unet_embedding_forward(const Unet* u, const float* t, const float* text_embeds, const float* time_ids, int N,
                                    Arena* act) {
    const UnetConfig* c = &u->cfg;
    DType dt = u->w.dtype;
    int TE = c->time_embed_dim, A = c->addition_time_embed_dim;
    int pooled_dim = c->projection_class_embeddings_input_dim - 6 * A;
    const void* pooled = input_as(text_embeds, (size_t)N * pooled_dim, dt, act, "unet pooled text");
    // time embedding: emb = linear_2(silu(linear_1(sinusoid(t))))                 (N, TE)
    float* t_dev = arena_floats(act, (size_t)N, "unet timesteps");
    copy_to_device(t_dev, t, sizeof(float) * N);
    void* t_sin = arena_elems(act, (size_t)N * c->block_out[0], dt, "unet time projection");
    void* tmp = arena_elems(act, (size_t)N * TE, dt, "unet embedding hidden");
    void* emb = arena_elems(act, (size_t)N * TE, dt, "unet embedding");
    timestep_embedding_forward(t_sin, t_dev, N, c->block_out[0], c->flip_sin_to_cos, c->freq_shift, 10000.0f, dt);
    linear(&u->time_linear_1, tmp, t_sin, N);
    silu_forward(tmp, tmp, (size_t)N * TE, dt);
    linear(&u->time_linear_2, emb, tmp, N);
    // added conditioning ("text_time"): [pooled text, sinusoid of each of the six size/crop ids]
    float* ids_dev = arena_floats(act, (size_t)N * 6, "unet time ids");
    copy_to_device(ids_dev, time_ids, sizeof(float) * N * 6);
    void* ids_sin = arena_elems(act, (size_t)N * 6 * A, dt, "unet time id embedding");
    void* add_in = arena_elems(act, (size_t)N * c->projection_class_embeddings_input_dim, dt, "unet added conditioning");
    timestep_embedding_forward(ids_sin, ids_dev, N * 6, A, c->flip_sin_to_cos, c->freq_shift, 10000.0f, dt); // (N, 6A)
    concat_forward(add_in, pooled, ids_sin, N, pooled_dim, 6 * A, dt);                                     // (N, 2816)
    linear(&u->add_linear_1, tmp, add_in, N);
    silu_forward(tmp, tmp, (size_t)N * TE, dt);
    linear_accumulate(&u->add_linear_2, emb, tmp, N);                // emb = emb + aug
    void* emb_act = arena_elems(act, (size_t)N * TE, dt, "unet silu(embedding)"); // every resnet starts with silu(emb)
    silu_forward(emb_act, emb, (size_t)N * TE, dt);
    return emb_act;
}

void unet_forward(const Unet* u, float* out, const float* sample, const float* t, const float* context, int Lctx,
                  const float* text_embeds, const float* time_ids, int N, int h, int w, Arena* act) {
    const UnetConfig* c = &u->cfg;
    DType dt = u->w.dtype;
    int L = c->layers_per_block, last = c->levels - 1;
    size_t mark0 = arena_mark(act);
    const void* x_in = input_as(sample, (size_t)N * c->in_channels * h * w, dt, act, "unet sample");
    const void* ctx = input_as(context, (size_t)N * Lctx * c->cross_attention_dim, dt, act, "unet context");
    const void* emb_act = unet_embedding_forward(u, t, text_embeds, time_ids, N, act);

    // down path: every block output is kept as a skip connection
    SkipStack skips = {0};
    void* hcur = arena_elems(act, (size_t)N * c->block_out[0] * h * w, dt, "unet conv_in");
    conv2d(&u->conv_in, hcur, x_in, N, h, w, act);                 // (N, C0, h, w)
    skip_push(&skips, hcur, c->block_out[0], h, w);
    int H = h, W = w;
    for (int i = 0; i < c->levels; i++) {
        const UnetBlock* b = &u->down[i];
        int C = c->block_out[i];
        for (int j = 0; j < L; j++) {
            void* next = arena_elems(act, (size_t)N * C * H * W, dt, "unet down block output");
            if (c->has_attention[i]) {
                size_t mark = arena_mark(act);
                void* r = arena_elems(act, (size_t)N * C * H * W, dt, "unet resnet output");
                resblock_forward(&b->resnets[j], r, hcur, emb_act, N, H, W, act, NULL);
                spatial_transformer_forward(&b->attentions[j], next, r, ctx, Lctx, N, H, W, act, NULL);
                arena_release(act, mark);
            } else {
                resblock_forward(&b->resnets[j], next, hcur, emb_act, N, H, W, act, NULL);
            }
            hcur = next;
            skip_push(&skips, hcur, C, H, W);
        }
        if (b->has_sampler) {
            int H2 = down_size(H), W2 = down_size(W);
            void* next = arena_elems(act, (size_t)N * C * H2 * W2, dt, "unet downsample");
            conv2d(&b->sampler, next, hcur, N, H, W, act);         // (N, C, ceil(H/2), ceil(W/2))
            hcur = next;
            H = H2;
            W = W2;
            skip_push(&skips, hcur, C, H, W);
        }
    }

    // mid block: resnet, transformer, resnet; then the up path ping-pongs between two buffers
    int hs[UNET_MAX_LEVELS], ws[UNET_MAX_LEVELS];
    level_sizes(c, h, w, hs, ws);
    size_t max_up = up_buffer_elems(c, N, hs, ws);
    void* ping = arena_elems(act, max_up, dt, "unet up-path buffer A");
    void* pong = arena_elems(act, max_up, dt, "unet up-path buffer B");
    int Cm = c->block_out[last];
    {
        size_t mark = arena_mark(act);
        void* r = arena_elems(act, (size_t)N * Cm * H * W, dt, "unet mid resnet");
        resblock_forward(&u->mid_res0, r, hcur, emb_act, N, H, W, act, NULL);
        spatial_transformer_forward(&u->mid_attn, ping, r, ctx, Lctx, N, H, W, act, NULL);
        resblock_forward(&u->mid_res1, pong, ping, emb_act, N, H, W, act, NULL);
        arena_release(act, mark);
    }
    hcur = pong;
    int Ccur = Cm;

    for (int i = 0; i < c->levels; i++) {
        const UnetBlock* b = &u->up[i];
        int r = last - i, C = c->block_out[r];
        for (int j = 0; j <= L; j++) {
            skips.count--;
            const void* skip = skips.data[skips.count];
            int Cs = skips.C[skips.count];
            if (skips.h[skips.count] != H || skips.w[skips.count] != W)
                fatal("unet: skip %d is %dx%d, the up path is at %dx%d", skips.count, skips.h[skips.count],
                      skips.w[skips.count], H, W);
            size_t mark = arena_mark(act);
            void* cat = arena_elems(act, (size_t)N * (Ccur + Cs) * H * W, dt, "unet skip concat");
            concat_forward(cat, hcur, skip, N, Ccur * H * W, Cs * H * W, dt); // torch.cat([h, skip], dim=1)
            void* next = hcur == ping ? pong : ping;
            if (c->has_attention[r]) {
                void* rout = arena_elems(act, (size_t)N * C * H * W, dt, "unet up resnet output");
                resblock_forward(&b->resnets[j], rout, cat, emb_act, N, H, W, act, NULL);
                spatial_transformer_forward(&b->attentions[j], next, rout, ctx, Lctx, N, H, W, act, NULL);
            } else {
                resblock_forward(&b->resnets[j], next, cat, emb_act, N, H, W, act, NULL);
            }
            arena_release(act, mark);
            hcur = next;
            Ccur = C;
        }
        if (b->has_sampler) {
            // nearest upsampling to the size of the next skip (diffusers' upsample_size: exact 2x when
            // the latent size divides evenly, otherwise the size the down path had there)
            int H2 = skips.h[skips.count - 1], W2 = skips.w[skips.count - 1];
            size_t mark = arena_mark(act);
            void* up = arena_elems(act, (size_t)N * C * H2 * W2, dt, "unet upsample");
            upsample_nearest_forward(up, hcur, N, C, H, W, H2, W2, dt);
            void* next = hcur == ping ? pong : ping;
            conv2d(&b->sampler, next, up, N, H2, W2, act);
            arena_release(act, mark);
            hcur = next;
            H = H2;
            W = W2;
        }
    }
    // out: conv_out(silu(conv_norm_out(h))), back to f32 when the UNet is 16-bit
    {
        size_t mark = arena_mark(act);
        size_t n_out = (size_t)N * c->out_channels * H * W;
        void* n = arena_elems(act, (size_t)N * Ccur * H * W, dt, "unet norm out");
        void* o = dt == DT_F32 ? (void*)out : arena_elems(act, n_out, dt, "unet noise");
        group_norm_silu(&u->norm_out, n, hcur, N, H * W);
        conv2d(&u->conv_out, o, n, N, H, W, act);                  // (N, 4, h, w)
        if (o != out) cast_forward(out, DT_F32, o, dt, n_out);
        arena_release(act, mark);
    }
    arena_release(act, mark0);
}

// Bytes unet_forward allocates at its peak, counted by the same walk, generously rounded: the
// converted inputs, the embeddings, every skip connection, the two up-path buffers, and the most
// any one block holds at once (its input concatenation, a resnet output, a resnet's or a
// transformer's temporaries and an im2col chunk). tests/ run the forward in an arena of exactly
// this size.
// The sizes the byte counters below can count for (sdxl.h); anything else is a caller's bug.
static void check_counted_sizes(const char* who, int N, int h, int w, int Lctx) {
    if (N < 1 || N > UNET_MAX_BATCH || h < 1 || h > UNET_MAX_LATENT || w < 1 || w > UNET_MAX_LATENT || Lctx < 0 ||
        Lctx > UNET_MAX_TEXT_TOKENS)
        fatal("%s: batch %d, latent %d x %d, %d text tokens are outside what it counts (batch 1..%d, latent sides 1..%d, "
              "0..%d tokens)", who, N, h, w, Lctx, UNET_MAX_BATCH, UNET_MAX_LATENT, UNET_MAX_TEXT_TOKENS);
}

size_t unet_activation_bytes(const UnetConfig* c, int N, int h, int w, int Lctx, DType dtype) {
    check_counted_sizes("unet_activation_bytes", N, h, w, Lctx);
    size_t es = dtype_size(dtype), align = ARENA_ALIGN / es, total = 0;
    int L = c->layers_per_block, last = c->levels - 1;
    int hs[UNET_MAX_LEVELS], ws[UNET_MAX_LEVELS];
    level_sizes(c, h, w, hs, ws);
    size_t TE = (size_t)c->time_embed_dim;
    // 16-bit copies of the inputs (and the output before its conversion)
    if (dtype != DT_F32)
        total += (size_t)N * (2 * (size_t)c->in_channels * h * w + (size_t)Lctx * c->cross_attention_dim +
                              c->projection_class_embeddings_input_dim) + 4 * align;
    // embeddings: t, sinusoid, 4 x (N, TE), time ids and their sinusoids, the added input (the f32
    // t and ids counted as two elements each, enough for either size)
    total += (size_t)N * (2 + c->block_out[0] + 4 * TE + 12 + 6 * c->addition_time_embed_dim +
                          c->projection_class_embeddings_input_dim) + 16 * align;
    // skips: conv_in, every down block output, every downsampler output
    total += (size_t)N * c->block_out[0] * h * w + align;
    for (int i = 0; i < c->levels; i++) {
        total += (size_t)L * ((size_t)N * c->block_out[i] * hs[i] * ws[i] + align);
        if (i != last) total += (size_t)N * c->block_out[i] * hs[i + 1] * ws[i + 1] + align;
    }
    total += 2 * (up_buffer_elems(c, N, hs, ws) + align);
    // the busiest block
    size_t peak = 0;
    for (int i = 0; i < c->levels; i++) {
        size_t HW = (size_t)hs[i] * ws[i], T = (size_t)N * HW;
        size_t C = (size_t)c->block_out[i];
        size_t C_wide = 0; // the widest input any resnet at this level sees (up path: h plus a skip)
        for (int k = 0; k < c->levels; k++) C_wide = (size_t)c->block_out[k] > C_wide ? (size_t)c->block_out[k] : C_wide;
        C_wide *= 2;
        size_t chunk = HW < CONV_CHUNK ? HW : CONV_CHUNK;
        size_t resnet = T * C_wide + 2 * T * C + (size_t)N * C + C_wide * 9 * chunk;
        size_t transformer = c->has_attention[i] ? 3 * T * C + 5 * T * C + 2 * (size_t)N * Lctx * C + 12 * T * C : 0;
        size_t upsample = T * C_wide / 2 + (size_t)c->block_out[i] * 9 * chunk; // the upsampled input and its conv
        size_t block = T * C_wide /* concat */ + T * C /* resnet output */ + (resnet > transformer ? resnet : transformer);
        block = block > upsample ? block : upsample;
        peak = block > peak ? block : peak;
    }
    return (total + peak + 64 * align) * es;
}

// ----------------------------------------------------------------------------
// FLOPs of one evaluation (for the benchmark's TFLOP/s): the matrix products, convolutions and
// attention products unet_forward runs, 2 per multiply-add, walked level by level as the forward
// goes; elementwise work (norms, activations: ~0.3% of the total) is left out, as is customary.

static double linear_flops(const Linear* l, double rows) { return 2.0 * rows * l->in * l->out; }
static double conv_flops(const Conv2d* c, int N, int H_out, int W_out) {
    return 2.0 * N * H_out * W_out * (double)c->out * c->in * c->k * c->k;
}

static double resblock_flops(const UnetResBlock* rb, int N, int h, int w) {
    double f = conv_flops(&rb->conv1, N, h, w) + conv_flops(&rb->conv2, N, h, w) + linear_flops(&rb->time_emb_proj, N);
    if (rb->has_shortcut) f += conv_flops(&rb->shortcut, N, h, w);
    return f;
}

static double transformer_flops(const UnetSpatialTransformer* st, int N, int h, int w, int Lctx) {
    double T = (double)N * h * w, C = st->C;
    double f = linear_flops(&st->proj_in, T) + linear_flops(&st->proj_out, T);
    for (int d = 0; d < st->depth; d++) {
        const UnetTransformerBlock* b = &st->blocks[d];
        f += linear_flops(&b->q1, T) + linear_flops(&b->k1, T) + linear_flops(&b->v1, T) + linear_flops(&b->out1, T);
        f += 4.0 * N * (double)h * w * h * w * C;                  // self-attention: Q K^T and P V
        f += linear_flops(&b->q2, T) + linear_flops(&b->out2, T);
        f += linear_flops(&b->k2, (double)N * Lctx) + linear_flops(&b->v2, (double)N * Lctx);
        f += 4.0 * N * (double)h * w * Lctx * C;                   // cross-attention
        f += linear_flops(&b->ff_in, T) + linear_flops(&b->ff_out, T);
    }
    return f;
}

static double unet_walk_flops(const Unet* u, int N, int h, int w, int Lctx) {
    const UnetConfig* c = &u->cfg;
    int L = c->layers_per_block, last = c->levels - 1;
    double f = linear_flops(&u->time_linear_1, N) + linear_flops(&u->time_linear_2, N) +
               linear_flops(&u->add_linear_1, N) + linear_flops(&u->add_linear_2, N);
    f += conv_flops(&u->conv_in, N, h, w);
    int hs[UNET_MAX_LEVELS], ws[UNET_MAX_LEVELS];
    level_sizes(c, h, w, hs, ws);
    for (int i = 0; i < c->levels; i++) {
        const UnetBlock* b = &u->down[i];
        for (int j = 0; j < L; j++) {
            f += resblock_flops(&b->resnets[j], N, hs[i], ws[i]);
            if (c->has_attention[i]) f += transformer_flops(&b->attentions[j], N, hs[i], ws[i], Lctx);
        }
        if (b->has_sampler) f += conv_flops(&b->sampler, N, hs[i + 1], ws[i + 1]);
    }
    f += resblock_flops(&u->mid_res0, N, hs[last], ws[last]) + resblock_flops(&u->mid_res1, N, hs[last], ws[last]);
    f += transformer_flops(&u->mid_attn, N, hs[last], ws[last], Lctx);
    for (int i = 0; i < c->levels; i++) {
        const UnetBlock* b = &u->up[i];
        int r = last - i;
        for (int j = 0; j <= L; j++) {
            f += resblock_flops(&b->resnets[j], N, hs[r], ws[r]);
            if (c->has_attention[r]) f += transformer_flops(&b->attentions[j], N, hs[r], ws[r], Lctx);
        }
        if (b->has_sampler) f += conv_flops(&b->sampler, N, hs[r - 1], ws[r - 1]);
    }
    f += conv_flops(&u->conv_out, N, h, w);
    return f;
}

double unet_flops(const UnetConfig* cfg, int N, int h, int w, int Lctx) {
    Unet u; // the layer shapes only: the first build pass declares parameters without allocating them
    unet_declare(&u, cfg, DT_F32);
    double f = unet_walk_flops(&u, N, h, w, Lctx);
    unet_free(&u);
    return f;
}

// ----------------------------------------------------------------------------
// Training: the forward that keeps what the backward needs, and the backward (see sdxl.h)
//
// The walk is unet_forward's, in "layers": a resnet and, at attention levels, the transformer
// after it. Every layer's input and output stay in act (the down path's outputs are the skip
// connections anyway); a layer's tape (its internals) stays too, unless checkpointing, when it
// is made again in the backward. The backward walks the same layers in reverse. Gradients are
// of the UNet's dtype; the adapters' gradients are f32 (layers.h).

static int linear_has_adapter(const Linear* l) { return l->lora != NULL; }

static int transformer_has_adapter(const UnetSpatialTransformer* st) {
    if (!st) return 0;
    int any = linear_has_adapter(&st->proj_in) || linear_has_adapter(&st->proj_out);
    for (int d = 0; d < st->depth; d++) {
        const UnetTransformerBlock* b = &st->blocks[d];
        const Linear* all[] = {&b->q1, &b->k1, &b->v1, &b->out1, &b->q2, &b->k2, &b->v2, &b->out2, &b->ff_in, &b->ff_out};
        for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) any |= linear_has_adapter(all[i]);
    }
    return any;
}

// Appends a target (up to cap), counting all.
static void add_target(UnetLoraTarget* targets, int cap, int* count, Linear* linear, Conv2d* conv) {
    if (targets && *count < cap) targets[*count] = (UnetLoraTarget){linear, conv};
    (*count)++;
}

// The adaptable Linears of one Transformer2DModel, in module order: proj_in, each block's attn1
// (to_q, to_k, to_v, to_out.0), attn2, ff (net.0.proj, net.2), proj_out.
static void transformer_targets(UnetSpatialTransformer* st, UnetLoraTargets set, UnetLoraTarget* t, int cap, int* count) {
    int wide = set == UNET_LORA_TRANSFORMER;
    if (wide) add_target(t, cap, count, &st->proj_in, NULL);
    for (int d = 0; d < st->depth; d++) {
        UnetTransformerBlock* b = &st->blocks[d];
        Linear* layers[] = {&b->q1, &b->k1, &b->v1, &b->out1, &b->q2, &b->k2, &b->v2, &b->out2, &b->ff_in, &b->ff_out};
        for (int i = 0; i < (wide ? 10 : 8); i++) add_target(t, cap, count, layers[i], NULL);
    }
    if (wide) add_target(t, cap, count, &st->proj_out, NULL);
}

// ResnetBlock2D's layers in module order: conv1, time_emb_proj, conv2, conv_shortcut.
static void resnet_targets(UnetResBlock* rb, UnetLoraTarget* t, int cap, int* count) {
    add_target(t, cap, count, NULL, &rb->conv1);
    add_target(t, cap, count, &rb->time_emb_proj, NULL);
    add_target(t, cap, count, NULL, &rb->conv2);
    if (rb->has_shortcut) add_target(t, cap, count, NULL, &rb->shortcut);
}

// One down or up block: its attentions, its resnets, its sampler (diffusers registers them so).
static void block_targets(UnetBlock* b, int layers, int attention, UnetLoraTargets set, int convs, UnetLoraTarget* t, int cap,
                          int* count) {
    if (attention)
        for (int j = 0; j < layers; j++) transformer_targets(&b->attentions[j], set, t, cap, count);
    if (convs) {
        for (int j = 0; j < layers; j++) resnet_targets(&b->resnets[j], t, cap, count);
        if (b->has_sampler) add_target(t, cap, count, NULL, &b->sampler);
    }
}

int unet_lora_targets(Unet* u, UnetLoraTargets set, int convs, UnetLoraTarget* targets, int cap) {
    const UnetConfig* c = &u->cfg;
    int L = c->layers_per_block, last = c->levels - 1, count = 0;
    for (int i = 0; i < c->levels; i++) block_targets(&u->down[i], L, c->has_attention[i], set, convs, targets, cap, &count);
    for (int i = 0; i < c->levels; i++) block_targets(&u->up[i], L + 1, c->has_attention[last - i], set, convs, targets, cap, &count);
    transformer_targets(&u->mid_attn, set, targets, cap, &count);
    if (convs) {
        resnet_targets(&u->mid_res0, targets, cap, &count);
        resnet_targets(&u->mid_res1, targets, cap, &count);
    }
    return count;
}

static int resnet_has_adapter(const UnetResBlock* rb) {
    return rb->conv1.lora || rb->conv2.lora || rb->shortcut.lora || rb->time_emb_proj.lora;
}

static void resblock_tape_alloc(ResblockTape* t, const UnetResBlock* rb, int N, size_t HW, Arena* a) {
    DType dt = rb->conv1.dtype;
    size_t groups = (size_t)N * rb->norm1.groups;
    t->mean1 = arena_floats(a, groups, "tape resnet mean1");
    t->rstd1 = arena_floats(a, groups, "tape resnet rstd1");
    t->mean2 = arena_floats(a, groups, "tape resnet mean2");
    t->rstd2 = arena_floats(a, groups, "tape resnet rstd2");
    t->b = arena_elems(a, (size_t)N * rb->out * HW, dt, "tape resnet conv1");
    t->a = rb->conv1.lora ? arena_elems(a, (size_t)N * rb->in * HW, dt, "tape resnet conv1 input") : NULL;
    t->c = rb->conv2.lora ? arena_elems(a, (size_t)N * rb->out * HW, dt, "tape resnet conv2 input") : NULL;
}

// The buffers of a transformer's tape; st_tape->blocks is a host array the caller owns.
static void spatial_transformer_tape_alloc(SpatialTransformerTape* t, const UnetSpatialTransformer* st, int N, size_t HW,
                                           int Lctx, Arena* a) {
    DType dt = st->proj_in.dtype;
    size_t C = (size_t)st->C, T = (size_t)N * HW, ctx_rows = (size_t)N * Lctx;
    t->mean = arena_floats(a, (size_t)N * st->norm.groups, "tape transformer mean");
    t->rstd = arena_floats(a, (size_t)N * st->norm.groups, "tape transformer rstd");
    t->tokens = arena_elems(a, T * C, dt, "tape transformer tokens");
    t->stream = arena_elems(a, T * C, dt, "tape transformer stream");
    for (int d = 0; d < st->depth; d++) {
        TransformerBlockTape* b = &t->blocks[d];
        void** stream_sized[] = {&b->x0, &b->x1, &b->x2, &b->n1, &b->q1, &b->k1, &b->v1, &b->a1,
                                 &b->n2, &b->q2, &b->a2, &b->n3};
        for (size_t i = 0; i < sizeof(stream_sized) / sizeof(stream_sized[0]); i++)
            *stream_sized[i] = arena_elems(a, T * C, dt, "tape transformer block");
        b->kc = arena_elems(a, ctx_rows * C, dt, "tape transformer context k");
        b->vc = arena_elems(a, ctx_rows * C, dt, "tape transformer context v");
        b->f = arena_elems(a, T * 8 * C, dt, "tape transformer ff");
        b->g = arena_elems(a, T * 4 * C, dt, "tape transformer geglu");
        float** stats[] = {&b->mean1, &b->rstd1, &b->mean2, &b->rstd2, &b->mean3, &b->rstd3};
        for (size_t i = 0; i < 6; i++) *stats[i] = arena_floats(a, T, "tape layer norm statistics");
    }
}

// Runs a layer's forward, its tape's buffers taken from `a` (and written), its output into out.
static void layer_forward_taped(const UnetTape* tape, UnetLayerTape* l, void* out, Arena* a) {
    size_t HW = (size_t)l->h * l->w;
    resblock_tape_alloc(&l->res, l->resnet, tape->N, HW, a);
    if (l->has_attention) spatial_transformer_tape_alloc(&l->attn, l->transformer, tape->N, HW, tape->Lctx, a);
    resblock_forward(l->resnet, l->has_attention ? l->res_out : out, l->input, tape->emb_act, tape->N, l->h, l->w, a,
                     &l->res);
    if (l->has_attention)
        spatial_transformer_forward(l->transformer, out, l->res_out, tape->context, tape->Lctx, tape->N, l->h, l->w, a,
                                    &l->attn);
}

// Records layer `index` and runs its forward on `input` (kept in act); returns its output.
static void* layer_forward_train(UnetTape* tape, const UnetResBlock* rb, const UnetSpatialTransformer* st, void* input,
                                 int h, int w, Arena* act) {
    UnetLayerTape* l = &tape->layers[tape->layer_count];
    DType dt = tape->dtype;
    int N = tape->N;
    size_t HW = (size_t)h * w;
    l->taped = tape->layer_count >= tape->first_taped;
    l->resnet = rb;
    l->transformer = st;
    l->has_attention = st != NULL;
    l->input = input;
    l->in = rb->in;
    l->out_channels = rb->out;
    l->h = h;
    l->w = w;
    l->out = arena_elems(act, (size_t)N * rb->out * HW, dt, "train layer output");
    if (st) {
        l->res_out = arena_elems(act, (size_t)N * rb->out * HW, dt, "train resnet output");
        l->attn.blocks = xcalloc((size_t)st->depth, sizeof(TransformerBlockTape));
    }
    tape->layer_count++;
    if (!l->taped) {                     // before the first adapter: the inference forward
        size_t mark = arena_mark(act);
        resblock_forward(rb, st ? l->res_out : l->out, input, tape->emb_act, N, h, w, act, NULL);
        if (st) spatial_transformer_forward(st, l->out, l->res_out, tape->context, tape->Lctx, N, h, w, act, NULL);
        arena_release(act, mark);
    } else if (tape->checkpointing) {    // the tape is made, used by nothing, and dropped
        size_t mark = arena_mark(act);
        layer_forward_taped(tape, l, l->out, act);
        arena_release(act, mark);
    } else {
        layer_forward_taped(tape, l, l->out, act);
    }
    return l->out;
}

static int unet_layer_count(const UnetConfig* c) { return c->levels * c->layers_per_block + 2 + c->levels * (c->layers_per_block + 1); }

// The index, in forward order, of the first layer holding an adapter (the layer count: none). A
// down sampler with an adapter counts as the last layer of its level, whose backward comes just
// after the sampler's.
static int unet_first_adapter_layer(const Unet* u) {
    const UnetConfig* c = &u->cfg;
    int L = c->layers_per_block, last = c->levels - 1, index = 0;
    for (int i = 0; i < c->levels; i++) {
        for (int j = 0; j < L; j++, index++)
            if (resnet_has_adapter(&u->down[i].resnets[j]) ||
                (c->has_attention[i] && transformer_has_adapter(&u->down[i].attentions[j])))
                return index;
        if (u->down[i].has_sampler && u->down[i].sampler.lora) return index - 1;
    }
    if (resnet_has_adapter(&u->mid_res0) || transformer_has_adapter(&u->mid_attn)) return index;
    if (resnet_has_adapter(&u->mid_res1)) return index + 1;
    index += 2;
    for (int i = 0; i < c->levels; i++) {
        for (int j = 0; j <= L; j++, index++)
            if (resnet_has_adapter(&u->up[i].resnets[j]) ||
                (c->has_attention[last - i] && transformer_has_adapter(&u->up[i].attentions[j])))
                return index;
        if (u->up[i].has_sampler && u->up[i].sampler.lora) return index; // the backward must reach it
    }
    return index;
}

void unet_forward_train(const Unet* u, UnetTape* tape, float* out, const float* sample, const float* t,
                        const float* context, int Lctx, const float* text_embeds, const float* time_ids, int N, int h,
                        int w, int checkpointing, Arena* act) {
    const UnetConfig* c = &u->cfg;
    DType dt = u->w.dtype;
    int L = c->layers_per_block, last = c->levels - 1;
    memset(tape, 0, sizeof(*tape));
    tape->N = N;
    tape->h = h;
    tape->w = w;
    tape->Lctx = Lctx;
    tape->checkpointing = checkpointing;
    tape->dtype = dt;
    tape->layers = xcalloc((size_t)unet_layer_count(c), sizeof(UnetLayerTape));
    tape->first_taped = unet_first_adapter_layer(u);
    const void* x_in = input_as(sample, (size_t)N * c->in_channels * h * w, dt, act, "unet sample");
    tape->context = input_as(context, (size_t)N * Lctx * c->cross_attention_dim, dt, act, "unet context");
    tape->emb_act = unet_embedding_forward(u, t, text_embeds, time_ids, N, act);

    // down path
    void* hcur = arena_elems(act, (size_t)N * c->block_out[0] * h * w, dt, "unet conv_in");
    conv2d(&u->conv_in, hcur, x_in, N, h, w, act);
    int hs[UNET_MAX_LEVELS], ws[UNET_MAX_LEVELS];
    level_sizes(c, h, w, hs, ws);
    SkipStack skips = {0};
    skip_push(&skips, hcur, c->block_out[0], h, w);
    for (int i = 0; i < c->levels; i++) {
        const UnetBlock* b = &u->down[i];
        for (int j = 0; j < L; j++) {
            hcur = layer_forward_train(tape, &b->resnets[j], c->has_attention[i] ? &b->attentions[j] : NULL, hcur, hs[i],
                                       ws[i], act);
            skip_push(&skips, hcur, c->block_out[i], hs[i], ws[i]);
        }
        if (b->has_sampler) {
            void* next = arena_elems(act, (size_t)N * c->block_out[i] * hs[i + 1] * ws[i + 1], dt, "unet downsample");
            conv2d(&b->sampler, next, hcur, N, hs[i], ws[i], act);
            hcur = next;
            skip_push(&skips, hcur, c->block_out[i], hs[i + 1], ws[i + 1]);
        }
    }
    // mid block: two layers (resnet + transformer, resnet)
    hcur = layer_forward_train(tape, &u->mid_res0, &u->mid_attn, hcur, hs[last], ws[last], act);
    hcur = layer_forward_train(tape, &u->mid_res1, NULL, hcur, hs[last], ws[last], act);
    // up path: each layer's input is the concatenation [h, skip]
    int Ccur = c->block_out[last];
    for (int i = 0; i < c->levels; i++) {
        const UnetBlock* b = &u->up[i];
        int r = last - i, H = hs[r], W = ws[r];
        for (int j = 0; j <= L; j++) {
            skips.count--;
            int Cs = skips.C[skips.count];
            void* cat = arena_elems(act, (size_t)N * (Ccur + Cs) * H * W, dt, "unet skip concat");
            concat_forward(cat, hcur, skips.data[skips.count], N, Ccur * H * W, Cs * H * W, dt);
            hcur = layer_forward_train(tape, &b->resnets[j], c->has_attention[r] ? &b->attentions[j] : NULL, cat, H, W, act);
            Ccur = c->block_out[r];
        }
        if (b->has_sampler) {
            int H2 = hs[r - 1], W2 = ws[r - 1];
            void* next = arena_elems(act, (size_t)N * Ccur * H2 * W2, dt, "unet upsampler output");
            size_t mark = arena_mark(act);
            void* up = arena_elems(act, (size_t)N * Ccur * H2 * W2, dt, "unet upsample");
            upsample_nearest_forward(up, hcur, N, Ccur, H, W, H2, W2, dt);
            conv2d(&b->sampler, next, up, N, H2, W2, act);
            arena_release(act, mark);
            hcur = next;
        }
    }
    // out: conv_out(silu(conv_norm_out(h)))
    size_t n_out = (size_t)N * c->out_channels * h * w;
    tape->out_input = hcur;
    tape->out_mean = arena_floats(act, (size_t)N * u->norm_out.groups, "unet norm out mean");
    tape->out_rstd = arena_floats(act, (size_t)N * u->norm_out.groups, "unet norm out rstd");
    size_t mark = arena_mark(act);
    void* n = arena_elems(act, (size_t)N * Ccur * h * w, dt, "unet norm out");
    void* o = dt == DT_F32 ? (void*)out : arena_elems(act, n_out, dt, "unet noise");
    group_norm_saving(&u->norm_out, n, tape->out_mean, tape->out_rstd, hcur, N, h * w, 1);
    conv2d(&u->conv_out, o, n, N, h, w, act);
    if (o != out) cast_forward(out, DT_F32, o, dt, n_out);
    arena_release(act, mark);
}

// The sum over the HW pixels of each of the N x C planes of x: x (N*C, HW) @ ones (HW), one GEMV.
static void sum_over_pixels(void* out, const void* x, int rows, int HW, DType dt, Arena* scratch) {
    size_t mark = arena_mark(scratch);
    float* ones_host = xmalloc(sizeof(float) * HW);
    for (int i = 0; i < HW; i++) ones_host[i] = 1.0f;
    void* host = xmalloc(dtype_size(dt) * HW);
    convert_from_f32(host, dt, ones_host, HW);
    void* ones = arena_elems(scratch, (size_t)HW, dt, "ones");
    copy_to_device(ones, host, dtype_size(dt) * HW);
    matmul_forward(out, x, ones, 1, rows, 1, HW, 0, 0, 1.0f, 0.0f, dt);
    free(host);
    free(ones_host);
    arena_release(scratch, mark);
}

// The backward of resblock_forward: dx (=) from dout, the block's input x and its tape.
//   c = silu(norm2(b)), b = conv1(a) + e, a = silu(norm1(x)), e = time_emb_proj(emb_act),
//   out = shortcut(x) + conv2(c)
// The time embedding's branch is followed only as far as an adapter on time_emb_proj (the
// embedding itself is frozen): de = db summed over the pixels.
static void resblock_backward(const UnetResBlock* rb, void* dx, const void* dout, const void* x, const void* emb_act,
                              const ResblockTape* t, int N, int h, int w, Arena* scratch) {
    DType dt = rb->conv1.dtype;
    size_t HW = (size_t)h * w, mark = arena_mark(scratch);
    void* dc = arena_elems(scratch, (size_t)N * rb->out * HW, dt, "resnet backward dc");
    void* db = arena_elems(scratch, (size_t)N * rb->out * HW, dt, "resnet backward db");
    void* da = arena_elems(scratch, (size_t)N * rb->in * HW, dt, "resnet backward da");
    conv2d_backprop(&rb->conv2, dc, dout, t->c, N, h, w, 0, scratch);
    group_norm_backprop(&rb->norm2, db, dc, t->b, t->mean2, t->rstd2, N, (int)HW, 1, 0);
    if (rb->time_emb_proj.lora) {
        void* de = arena_elems(scratch, (size_t)N * rb->out, dt, "resnet backward de");
        sum_over_pixels(de, db, N * rb->out, (int)HW, dt, scratch);
        linear_backprop(&rb->time_emb_proj, NULL, de, emb_act, N, 0, scratch);
    }
    conv2d_backprop(&rb->conv1, da, db, t->a, N, h, w, 0, scratch);
    group_norm_backprop(&rb->norm1, dx, da, x, t->mean1, t->rstd1, N, (int)HW, 1, 0);
    if (rb->has_shortcut) conv2d_backprop(&rb->shortcut, dx, dout, x, N, h, w, 1, scratch);
    else add_forward(dx, dx, dout, (size_t)N * rb->out * HW, dt);
    arena_release(scratch, mark);
}

// The backward of transformer_block_forward, in place: dx holds the gradient of the block's
// output on entry and that of its input on return (the residual stream carries dx through each
// `x +=` unchanged, and each branch adds its share).
static void transformer_block_backward(const UnetTransformerBlock* b, void* dx, const void* context,
                                       const TransformerBlockTape* t, int Lctx, int N, int HW, int C, int heads,
                                       Arena* scratch) {
    DType dt = b->q1.dtype;
    size_t T = (size_t)N * HW, ctx_rows = (size_t)N * Lctx, mark = arena_mark(scratch);
    int HS = C / heads;
    void* dn = arena_elems(scratch, T * C, dt, "transformer backward dnorm");
    void* da = arena_elems(scratch, T * C, dt, "transformer backward dattention");
    void* dq = arena_elems(scratch, T * C, dt, "transformer backward dq");
    void* dk = arena_elems(scratch, T * C, dt, "transformer backward dk");
    void* dv = arena_elems(scratch, T * C, dt, "transformer backward dv");
    // feed-forward: x3 = x2 + ff_out(geglu(ff_in(norm3(x2))))
    {
        size_t mark_ff = arena_mark(scratch);
        void* dg = arena_elems(scratch, T * 4 * C, dt, "transformer backward dgeglu");
        void* df = arena_elems(scratch, T * 8 * C, dt, "transformer backward dff");
        linear_backprop(&b->ff_out, dg, dx, t->g, (int)T, 0, scratch);
        geglu_backward(df, dg, t->f, (int)T, 4 * C, dt);
        linear_backprop(&b->ff_in, dn, df, t->n3, (int)T, 0, scratch);
        arena_release(scratch, mark_ff);
    }
    layer_norm_backprop(&b->norm3, dx, dn, t->x2, t->mean3, t->rstd3, (int)T, 1);
    // cross-attention: x2 = x1 + out2(attention(q2(norm2(x1)), k2(context), v2(context)))
    {
        size_t mark_ctx = arena_mark(scratch);
        void* dkc = arena_elems(scratch, ctx_rows * C, dt, "transformer backward dk context");
        void* dvc = arena_elems(scratch, ctx_rows * C, dt, "transformer backward dv context");
        linear_backprop(&b->out2, da, dx, t->a2, (int)T, 0, scratch);
        attention_backward(dq, dkc, dvc, da, t->q2, t->kc, t->vc, t->a2, N, heads, HW, Lctx, HS, 0, dt);
        linear_backprop(&b->q2, dn, dq, t->n2, (int)T, 0, scratch);
        linear_backprop(&b->k2, NULL, dkc, context, (int)ctx_rows, 0, scratch); // the text is frozen: adapters only
        linear_backprop(&b->v2, NULL, dvc, context, (int)ctx_rows, 0, scratch);
        arena_release(scratch, mark_ctx);
    }
    layer_norm_backprop(&b->norm2, dx, dn, t->x1, t->mean2, t->rstd2, (int)T, 1);
    // self-attention: x1 = x0 + out1(attention(q1(n1), k1(n1), v1(n1))), n1 = norm1(x0)
    linear_backprop(&b->out1, da, dx, t->a1, (int)T, 0, scratch);
    attention_backward(dq, dk, dv, da, t->q1, t->k1, t->v1, t->a1, N, heads, HW, HW, HS, 0, dt);
    linear_backprop(&b->q1, dn, dq, t->n1, (int)T, 0, scratch);
    linear_backprop(&b->k1, dn, dk, t->n1, (int)T, 1, scratch);
    linear_backprop(&b->v1, dn, dv, t->n1, (int)T, 1, scratch);
    layer_norm_backprop(&b->norm1, dx, dn, t->x0, t->mean1, t->rstd1, (int)T, 1);
    arena_release(scratch, mark);
}

// The backward of spatial_transformer_forward: dx (=) from dout and the input x.
static void spatial_transformer_backward(const UnetSpatialTransformer* st, void* dx, const void* dout, const void* x,
                                         const SpatialTransformerTape* t, const void* context, int Lctx, int N, int h,
                                         int w, Arena* scratch) {
    DType dt = st->proj_in.dtype;
    int C = st->C, HW = h * w;
    size_t T = (size_t)N * HW, mark = arena_mark(scratch);
    void* dtokens = arena_elems(scratch, T * C, dt, "transformer backward dtokens");
    void* dstream = arena_elems(scratch, T * C, dt, "transformer backward dstream");
    transpose_forward(dtokens, dout, N, C, HW, dt);                      // out = tokens^T + x
    linear_backprop(&st->proj_out, dstream, dtokens, t->stream, (int)T, 0, scratch);
    for (int d = st->depth - 1; d >= 0; d--)
        transformer_block_backward(&st->blocks[d], dstream, context, &t->blocks[d], Lctx, N, HW, C, st->heads, scratch);
    linear_backprop(&st->proj_in, dtokens, dstream, t->tokens, (int)T, 0, scratch);
    transpose_forward(dstream, dtokens, N, HW, C, dt);                   // back to (N, C, HW)
    copy_device_to_device(dx, dout, T * C * dtype_size(dt));             // the residual
    group_norm_backprop(&st->norm, dx, dstream, x, t->mean, t->rstd, N, HW, 0, 1);
    arena_release(scratch, mark);
}

// A layer's backward: dinput (=) from dout. With checkpointing, its tape is made again first by
// re-running its forward (the same ops on the same inputs: the same values).
static void layer_backward(const UnetTape* tape, UnetLayerTape* l, void* dinput, const void* dout, Arena* act) {
    DType dt = tape->dtype;
    int N = tape->N;
    size_t HW = (size_t)l->h * l->w, mark = arena_mark(act);
    if (tape->checkpointing) {
        void* discarded = arena_elems(act, (size_t)N * l->out_channels * HW, dt, "recomputed layer output");
        layer_forward_taped(tape, l, discarded, act);
    }
    const void* dres = dout;
    if (l->has_attention) {
        void* d = arena_elems(act, (size_t)N * l->out_channels * HW, dt, "layer backward dresnet");
        spatial_transformer_backward(l->transformer, d, dout, l->res_out, &l->attn, tape->context, tape->Lctx, N, l->h,
                                     l->w, act);
        dres = d;
    }
    resblock_backward(l->resnet, dinput, dres, l->input, tape->emb_act, &l->res, N, l->h, l->w, act);
    arena_release(act, mark);
}

void unet_backward(const Unet* u, UnetTape* tape, const float* dout, Arena* act) {
    const UnetConfig* c = &u->cfg;
    DType dt = tape->dtype;
    int N = tape->N, h = tape->h, w = tape->w, L = c->layers_per_block, last = c->levels - 1;
    int hs[UNET_MAX_LEVELS], ws[UNET_MAX_LEVELS];
    level_sizes(c, h, w, hs, ws);
    size_t mark0 = arena_mark(act);
    // two gradient buffers, each as large as any layer's input or output (the up path's concat)
    size_t most = (size_t)N * c->block_out[0] * h * w;
    for (int i = 0; i < tape->layer_count; i++) {
        const UnetLayerTape* l = &tape->layers[i];
        size_t n = (size_t)N * (l->in > l->out_channels ? l->in : l->out_channels) * l->h * l->w;
        most = n > most ? n : most;
    }
    void* grad = arena_elems(act, most, dt, "unet backward gradient A");
    void* grad_next = arena_elems(act, most, dt, "unet backward gradient B");
    // the skip connections' gradients, made by the up path, read by the down path
    void* dskip[UNET_MAX_SKIPS] = {0};
    int skip_C[UNET_MAX_SKIPS], skip_h[UNET_MAX_SKIPS], skip_w[UNET_MAX_SKIPS], skips = 0;
    skip_C[skips] = c->block_out[0], skip_h[skips] = h, skip_w[skips++] = w;
    for (int i = 0; i < c->levels; i++) {
        for (int j = 0; j < L; j++) skip_C[skips] = c->block_out[i], skip_h[skips] = hs[i], skip_w[skips++] = ws[i];
        if (i != last) skip_C[skips] = c->block_out[i], skip_h[skips] = hs[i + 1], skip_w[skips++] = ws[i + 1];
    }
    for (int k = 0; k < skips; k++)
        dskip[k] = arena_elems(act, (size_t)N * skip_C[k] * skip_h[k] * skip_w[k], dt, "unet backward skip gradient");

    // out: conv_out(silu(conv_norm_out(h)))
    int C0 = c->block_out[0];
    {
        size_t mark = arena_mark(act), n_out = (size_t)N * c->out_channels * h * w;
        void* dout_dt = (void*)dout;
        if (dt != DT_F32) {
            dout_dt = arena_elems(act, n_out, dt, "unet backward dnoise");
            cast_forward(dout_dt, dt, dout, DT_F32, n_out);
        }
        void* dn = arena_elems(act, (size_t)N * C0 * h * w, dt, "unet backward dnorm out");
        conv2d_backprop(&u->conv_out, dn, dout_dt, NULL, N, h, w, 0, act);
        group_norm_backprop(&u->norm_out, grad, dn, tape->out_input, tape->out_mean, tape->out_rstd, N, h * w, 1, 0);
        arena_release(act, mark);
    }
    // up path, backwards: the upsampler, then each layer, splitting its input's gradient between
    // h and the skip it concatenated
    int index = tape->layer_count;
    for (int i = last; i >= 0; i--) {
        const UnetBlock* b = &u->up[i];
        int r = last - i, C = c->block_out[r], H = hs[r], W = ws[r];
        if (b->has_sampler) {
            int H2 = hs[r - 1], W2 = ws[r - 1];
            size_t mark = arena_mark(act);
            void* dup = arena_elems(act, (size_t)N * C * H2 * W2, dt, "unet backward dupsample");
            void* up = NULL; // the conv's input, for an adapter on it: the upsampled last layer output
            if (b->sampler.lora) {
                up = arena_elems(act, (size_t)N * C * H2 * W2, dt, "unet backward upsampled");
                upsample_nearest_forward(up, tape->layers[index - 1].out, N, C, H, W, H2, W2, dt);
            }
            conv2d_backprop(&b->sampler, dup, grad, up, N, H2, W2, 0, act);
            upsample_nearest_backward(grad, dup, N, C, H, W, H2, W2, dt);
            arena_release(act, mark);
        }
        for (int j = L; j >= 0; j--) {
            UnetLayerTape* l = &tape->layers[--index];
            if (!l->taped) goto done;                                 // no adapter below here
            layer_backward(tape, l, grad_next, grad, act);           // d[h, skip] (N, Ccur + Cs, H, W)
            int skip = skips - 1 - (i * (L + 1) + j);                 // popped in reverse push order
            int Cs = skip_C[skip], Ccur = l->in - Cs;
            split_forward(grad, dskip[skip], grad_next, N, Ccur * H * W, Cs * H * W, dt);
        }
    }
    // mid block
    for (int k = 0; k < 2; k++) {
        UnetLayerTape* l = &tape->layers[--index];
        if (!l->taped) goto done;
        layer_backward(tape, l, grad_next, grad, act);
        void* swap = grad;
        grad = grad_next;
        grad_next = swap;
    }
    // down path, backwards, down to the first layer with an adapter: each output's gradient is
    // what the path above sent plus its skip's
    int skip = skips - 1;
    for (int i = last; i >= 0 && index > tape->first_taped; i--) { // (layers[index - 1] is taped)
        const UnetBlock* b = &u->down[i];
        int C = c->block_out[i];
        if (b->has_sampler) {
            add_forward(grad, grad, dskip[skip], (size_t)N * C * hs[i + 1] * ws[i + 1], dt);
            skip--;
            conv2d_backprop(&b->sampler, grad_next, grad, tape->layers[index - 1].out, N, hs[i], ws[i], 0, act);
            void* swap = grad;
            grad = grad_next;
            grad_next = swap;
        }
        for (int j = L - 1; j >= 0 && index > tape->first_taped; j--) {
            UnetLayerTape* l = &tape->layers[--index];
            add_forward(grad, grad, dskip[skip], (size_t)N * C * hs[i] * ws[i], dt);
            skip--;
            layer_backward(tape, l, grad_next, grad, act);
            void* swap = grad;
            grad = grad_next;
            grad_next = swap;
        }
    }
done:
    for (int i = 0; i < tape->layer_count; i++) free(tape->layers[i].attn.blocks);
    free(tape->layers);
    tape->layers = NULL;
    arena_release(act, mark0);
}

// The bytes of one layer: what stays in act (output, resnet output, up-path input and, without
// checkpointing and past the first adapter, the tape) and the most it allocates on top while
// running (its forward's temporaries, or in the backward the re-made tape, the gradients and the
// backward's temporaries). Each allocation is counted with its alignment padding.
typedef struct { size_t kept, transient; } LayerBytes;

static LayerBytes layer_bytes(const UnetResBlock* rb, const UnetSpatialTransformer* st, int up, int taped, int checkpointing,
                              int N, int h, int w, int Lctx, DType dt) {
    size_t es = dtype_size(dt), pad = ARENA_ALIGN, HW = (size_t)h * w, T = (size_t)N * HW, ctx_rows = (size_t)N * Lctx;
    size_t in = (size_t)N * rb->in * HW * es + pad, out = (size_t)N * rb->out * HW * es + pad;
    size_t conv = conv2d_scratch_elems(rb->in > rb->out ? rb->in : rb->out, h, w, 3, 1, 1) * es + pad;
    size_t groups = (size_t)N * rb->norm1.groups * 4 + pad;
    size_t tape = 4 * groups + out, fwd = in + 3 * out + (size_t)N * rb->out * es + pad + conv;
    size_t bwd = 2 * out + in + conv + 2 * out; // dc, db, da; the layer's dresnet and the recomputed output
    if (rb->conv1.lora) tape += in;             // conv inputs kept for their adapters
    if (rb->conv2.lora) tape += out;
    if (resnet_has_adapter(rb)) { // an adapter's t, u and weight gradient (rank <= 64), the ones for de
        int widest = rb->in > rb->out ? rb->in : rb->out;
        bwd += 2 * ((size_t)N * 64 * HW * es + pad) + (size_t)64 * widest * 9 * 4 + HW * es + 4 * pad + (size_t)N * rb->out * es;
    }
    LayerBytes b = {out + (up ? in : 0), 0};
    if (st) {
        size_t C = (size_t)st->C, tc = T * C * es + pad, ctx = ctx_rows * C * es + pad, stats = T * 4 + pad;
        size_t block = 12 * tc + 2 * ctx + (8 * T * C + 4 * T * C) * es + 2 * pad + 6 * stats;
        size_t lora = 4 * (T * 64 * es + pad) + 4 * (C * 8 * 64 * 4 + pad); // rank <= 64: t, u, products
        b.kept += out;                                                        // the resnet's output
        tape += 2 * groups + 2 * tc + (size_t)st->depth * block;
        fwd += 4 * tc + 5 * tc + 2 * ctx + 12 * T * C * es + 2 * pad + lora;
        bwd += 2 * tc + 5 * tc + 2 * ctx + 12 * T * C * es + 2 * pad + lora;
    }
    if (taped && !checkpointing) b.kept += tape;
    size_t with_tape = taped && checkpointing ? tape : 0;
    b.transient = with_tape + (fwd > bwd ? fwd : bwd);
    return b;
}

// The running totals of unet_train_activation_bytes' walk over the layers.
typedef struct {
    size_t kept, transient, widest; // widest: the most elements any layer's input or output holds
    int index, first, checkpointing, N, Lctx;
    DType dt;
} TrainBytes;

static void count_layer(TrainBytes* t, const UnetResBlock* rb, const UnetSpatialTransformer* st, int up, int h, int w) {
    LayerBytes b = layer_bytes(rb, st, up, t->index >= t->first, t->checkpointing, t->N, h, w, t->Lctx, t->dt);
    t->kept += b.kept;
    t->transient = b.transient > t->transient ? b.transient : t->transient;
    size_t wide = (size_t)t->N * (rb->in > rb->out ? rb->in : rb->out) * h * w;
    t->widest = wide > t->widest ? wide : t->widest;
    t->index++;
}

size_t unet_train_activation_bytes(const Unet* u, int N, int h, int w, int Lctx, int checkpointing) {
    check_counted_sizes("unet_train_activation_bytes", N, h, w, Lctx);
    const UnetConfig* c = &u->cfg;
    DType dt = u->w.dtype;
    size_t es = dtype_size(dt), pad = ARENA_ALIGN;
    int L = c->layers_per_block, last = c->levels - 1, first = unet_first_adapter_layer(u);
    int hs[UNET_MAX_LEVELS], ws[UNET_MAX_LEVELS];
    level_sizes(c, h, w, hs, ws);
    size_t HW0 = (size_t)h * w, TE = (size_t)c->time_embed_dim;
    // inputs in dt, the embeddings, conv_in, the output block's statistics and temporaries
    size_t kept = (size_t)N * (c->in_channels * HW0 + (size_t)Lctx * c->cross_attention_dim +
                               c->projection_class_embeddings_input_dim) * es + 3 * pad;
    kept += (size_t)N * (2 + c->block_out[0] + 4 * TE + 12 + 6 * c->addition_time_embed_dim +
                         c->projection_class_embeddings_input_dim) * 4 + 16 * pad;
    kept += (size_t)N * c->block_out[0] * HW0 * es + pad + 2 * ((size_t)N * c->groups * 4 + pad);
    size_t transient = (size_t)N * c->block_out[0] * HW0 * es + 2 * (size_t)N * c->out_channels * HW0 * 4 +
                       conv2d_scratch_elems(c->block_out[0], h, w, 3, 1, 1) * es + 4 * pad;
    size_t skips = (size_t)N * c->block_out[0] * HW0 * es + pad, most = (size_t)N * c->block_out[0] * HW0;
    TrainBytes t = {.kept = kept, .transient = transient, .widest = most, .first = first, .checkpointing = checkpointing,
                    .N = N, .Lctx = Lctx, .dt = dt};
    for (int i = 0; i < c->levels; i++) {
        for (int j = 0; j < L; j++) {
            count_layer(&t, &u->down[i].resnets[j], c->has_attention[i] ? &u->down[i].attentions[j] : NULL, 0, hs[i], ws[i]);
            skips += (size_t)N * c->block_out[i] * hs[i] * ws[i] * es + pad;
        }
        if (i != last) {
            size_t n = (size_t)N * c->block_out[i] * hs[i + 1] * ws[i + 1] * es + pad;
            t.kept += n;
            skips += n;
        }
    }
    count_layer(&t, &u->mid_res0, &u->mid_attn, 0, hs[last], ws[last]);
    count_layer(&t, &u->mid_res1, NULL, 0, hs[last], ws[last]);
    for (int i = 0; i < c->levels; i++) {
        int r = last - i;
        for (int j = 0; j <= L; j++)
            count_layer(&t, &u->up[i].resnets[j], c->has_attention[r] ? &u->up[i].attentions[j] : NULL, 1, hs[r], ws[r]);
        if (i != last) { // the upsampler's output, and while it runs, the upsampled input and the conv's im2col
            size_t n = (size_t)N * c->block_out[r] * hs[r - 1] * ws[r - 1] * es + pad;
            t.kept += n;
            size_t up = 2 * n + conv2d_scratch_elems(c->block_out[r], hs[r - 1], ws[r - 1], 3, 1, 1) * es + pad;
            t.transient = up > t.transient ? up : t.transient;
        }
    }
    // the backward's two gradient buffers and the skips' gradients stay while the layers run
    size_t backward = 2 * (t.widest * es + pad) + skips;
    return t.kept + backward + t.transient + 64 * pad;
}
