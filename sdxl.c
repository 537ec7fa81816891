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

// An int or a per-level list of ints (diffusers accepts both for several fields).
static int read_int_or_list(const JsonValue* root, const char* key, int levels, int* out, int required, const char* path,
                            char* err) {
    const JsonValue* v = json_get(root, key);
    if (!v || v->type == JSON_NULL) return required ? set_error(err, "%s: missing \"%s\"", path, key) : 1;
    if (v->type == JSON_NUMBER && v->is_integer) {
        for (int i = 0; i < levels; i++) out[i] = (int)v->integer;
        return 0;
    }
    if (v->type != JSON_ARRAY || (int)v->length != levels)
        return set_error(err, "%s: \"%s\" must be an integer or a list of %d integers", path, key, levels);
    for (int i = 0; i < levels; i++) {
        if (v->items[i].type != JSON_NUMBER || !v->items[i].is_integer)
            return set_error(err, "%s: \"%s\" must hold integers", path, key);
        out[i] = (int)v->items[i].integer;
    }
    return 0;
}

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
    int64_t v;
    const JsonValue* blocks = json_get(r, "block_out_channels");
    const JsonValue* down = json_get(r, "down_block_types");
    const JsonValue* up = json_get(r, "up_block_types");
    if (!blocks || blocks->type != JSON_ARRAY || blocks->length < 2 || blocks->length > UNET_MAX_LEVELS) {
        rc = set_error(err, "%s: \"block_out_channels\" must list 2 to %d widths", path, UNET_MAX_LEVELS);
        goto done;
    }
    c->levels = (int)blocks->length;
    for (int i = 0; i < c->levels; i++) c->block_out[i] = (int)blocks->items[i].integer;
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
    struct { const char* key; int* dst; } ints[] = {
        {"in_channels", &c->in_channels}, {"out_channels", &c->out_channels}, {"layers_per_block", &c->layers_per_block},
        {"cross_attention_dim", &c->cross_attention_dim}, {"norm_num_groups", &c->groups},
        {"addition_time_embed_dim", &c->addition_time_embed_dim},
        {"projection_class_embeddings_input_dim", &c->projection_class_embeddings_input_dim},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        if (!json_get_int(r, ints[i].key, &v) || v <= 0 || v > (1 << 20)) {
            rc = set_error(err, "%s: missing or bad \"%s\"", path, ints[i].key);
            goto done;
        }
        *ints[i].dst = (int)v;
    }
    if ((rc = read_int_or_list(r, "transformer_layers_per_block", c->levels, c->transformer_depth, 0, path, err)) < 0) goto done;
    if (rc == 1) for (int i = 0; i < c->levels; i++) c->transformer_depth[i] = 1;
    // the head count: num_attention_heads when given, else attention_head_dim (diffusers #2011)
    if ((rc = read_int_or_list(r, "num_attention_heads", c->levels, c->heads, 0, path, err)) < 0) goto done;
    if (rc == 1 && (rc = read_int_or_list(r, "attention_head_dim", c->levels, c->heads, 1, path, err)) != 0) goto done;
    if ((rc = read_int_or_list(r, "reverse_transformer_layers_per_block", c->levels, c->up_transformer_depth, 0, path, err)) < 0)
        goto done;
    if (rc == 1)
        for (int i = 0; i < c->levels; i++) c->up_transformer_depth[i] = c->transformer_depth[c->levels - 1 - i];
    rc = 0;
    double d;
    c->norm_eps = json_get_number(r, "norm_eps", &d) ? (float)d : 1e-5f;
    c->freq_shift = json_get_number(r, "freq_shift", &d) ? (float)d : 0.0f;
    c->flip_sin_to_cos = 1;
    json_get_bool(r, "flip_sin_to_cos", &c->flip_sin_to_cos);
    int linear_projection = 0;
    json_get_bool(r, "use_linear_projection", &linear_projection);
    if (!linear_projection) {
        rc = set_error(err, "%s: SDXL uses \"use_linear_projection\": true (1x1-conv projections are not supported)", path);
        goto done;
    }
    if (json_get_int(r, "time_embedding_dim", &v) && v != 4 * c->block_out[0]) {
        rc = set_error(err, "%s: \"time_embedding_dim\" must be null (4 x block_out_channels[0])", path);
        goto done;
    }
    c->time_embed_dim = 4 * c->block_out[0];
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
            rc = set_error(err, "%s: level %d width %d does not split into %d groups / %d heads", path, i, c->block_out[i],
                           c->groups, c->heads[i]);
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

void unet_allocate(Unet* u, const UnetConfig* cfg, DType dtype) {
    unet_declare(u, cfg, dtype);
    weights_allocate(&u->w);
    unet_build(u, &u->w);
    weights_finish(&u->w);
}

int unet_load(Unet* u, const char* folder, const char* variant, DType dtype, char* err) {
    char path[4096];
    UnetConfig cfg;
    snprintf(path, sizeof(path), "%s/config.json", folder);
    if (unet_config_read(&cfg, path, err) != 0) return -1;
    SafeTensors st;
    if (safetensors_open_dir(&st, folder, "diffusion_pytorch_model", variant, err) != 0) return -1;
    unet_allocate(u, &cfg, dtype);
    int rc = weights_load(&u->w, &st, "", err);
    safetensors_close(&st);
    if (rc != 0) unet_free(u);
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
    unet_allocate(u, cfg, dtype);
    int rc = weights_load_mapped(&u->w, st, sgm_key, &u->cfg, err);
    if (rc != 0) unet_free(u);
    return rc;
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
static void resblock_forward(const UnetResBlock* rb, void* out, const void* x, const void* emb_act, int N, int h, int w,
                             Arena* scratch) {
    DType dt = rb->conv1.dtype;
    size_t HW = (size_t)h * w, mark = arena_mark(scratch);
    void* a = arena_elems(scratch, (size_t)N * rb->in * HW, dt, "resnet norm1");
    void* b = arena_elems(scratch, (size_t)N * rb->out * HW, dt, "resnet conv1");
    void* e = arena_elems(scratch, (size_t)N * rb->out, dt, "resnet time embedding");
    group_norm_silu(&rb->norm1, a, x, N, (int)HW);
    conv2d(&rb->conv1, b, a, N, h, w, scratch);                    // (N, out, h, w)
    linear(&rb->time_emb_proj, e, emb_act, N);                     // (N, out)
    add_channel_vector_forward(b, b, e, N, rb->out, (int)HW, dt);  // + emb[:, :, None, None]
    group_norm_silu(&rb->norm2, b, b, N, (int)HW);                 // dropout is the identity at inference
    if (rb->has_shortcut) {
        conv2d(&rb->shortcut, out, x, N, h, w, scratch);           // 1x1: in -> out
        conv2d_accumulate(&rb->conv2, out, b, N, h, w, scratch);   // out = shortcut(x) + conv2(b)
    } else {
        conv2d(&rb->conv2, out, b, N, h, w, scratch);
        add_forward(out, out, x, (size_t)N * rb->out * HW, dt);
    }
    arena_release(scratch, mark);
}

// BasicTransformerBlock (attention.py) on x (N, HW, C) in place:
//   x += attn1(norm1(x));  x += attn2(norm2(x), context);  x += ff(norm3(x))
// Each `x +=` is the output projection accumulating into x (linear_accumulate): no extra pass.
static void transformer_block_forward(const UnetTransformerBlock* b, void* x, const void* context, int Lctx, int N, int HW,
                                      int C, int heads, Arena* scratch) {
    DType dt = b->q1.dtype;
    size_t T = (size_t)N * HW, mark = arena_mark(scratch);
    int HS = C / heads;
    void* n = arena_elems(scratch, T * C, dt, "transformer norm");
    void* q = arena_elems(scratch, T * C, dt, "transformer q");
    void* k = arena_elems(scratch, T * C, dt, "transformer k");
    void* v = arena_elems(scratch, T * C, dt, "transformer v");
    void* a = arena_elems(scratch, T * C, dt, "transformer attention");
    // self-attention                                                 (N, HW, C)
    layer_norm(&b->norm1, n, x, (int)T);
    linear(&b->q1, q, n, (int)T);
    linear(&b->k1, k, n, (int)T);
    linear(&b->v1, v, n, (int)T);
    attention_forward(a, q, k, v, N, heads, HW, HW, HS, 0, dt);
    linear_accumulate(&b->out1, x, a, (int)T);
    // cross-attention to the text: keys and values from context        (N, Lctx, cross_dim) -> (N, Lctx, C)
    void* kc = arena_elems(scratch, (size_t)N * Lctx * C, dt, "transformer context k");
    void* vc = arena_elems(scratch, (size_t)N * Lctx * C, dt, "transformer context v");
    layer_norm(&b->norm2, n, x, (int)T);
    linear(&b->q2, q, n, (int)T);
    linear(&b->k2, kc, context, N * Lctx);
    linear(&b->v2, vc, context, N * Lctx);
    attention_forward(a, q, kc, vc, N, heads, HW, Lctx, HS, 0, dt);
    linear_accumulate(&b->out2, x, a, (int)T);
    // GEGLU feed-forward                                              (N, HW, 8C) -> (N, HW, 4C) -> (N, HW, C)
    void* f = arena_elems(scratch, T * 8 * C, dt, "transformer ff");
    void* g = arena_elems(scratch, T * 4 * C, dt, "transformer geglu");
    layer_norm(&b->norm3, n, x, (int)T);
    linear(&b->ff_in, f, n, (int)T);
    geglu_forward(g, f, (int)T, 4 * C, dt);
    linear_accumulate(&b->ff_out, x, g, (int)T);
    arena_release(scratch, mark);
}

// Transformer2DModel (transformer_2d.py, continuous input, linear projections):
//   out = proj_out(blocks(proj_in(norm(x) as tokens))) as NCHW + x
//   x (N, C, h, w)   out (N, C, h, w), must not alias x
static void spatial_transformer_forward(const UnetSpatialTransformer* st, void* out, const void* x, const void* context,
                                        int Lctx, int N, int h, int w, Arena* scratch) {
    DType dt = st->proj_in.dtype;
    int C = st->C, HW = h * w;
    size_t T = (size_t)N * HW, mark = arena_mark(scratch);
    void* normed = arena_elems(scratch, T * C, dt, "transformer group norm");
    void* tokens = arena_elems(scratch, T * C, dt, "transformer tokens");
    void* y = arena_elems(scratch, T * C, dt, "transformer stream");
    group_norm(&st->norm, normed, x, N, HW);
    transpose_forward(tokens, normed, N, C, HW, dt);                // (N, C, HW) -> (N, HW, C)
    linear(&st->proj_in, y, tokens, (int)T);
    for (int d = 0; d < st->depth; d++)
        transformer_block_forward(&st->blocks[d], y, context, Lctx, N, HW, C, st->heads, scratch);
    linear(&st->proj_out, tokens, y, (int)T);
    transpose_forward(out, tokens, N, HW, C, dt);                   // (N, HW, C) -> (N, C, HW)
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

void unet_forward(const Unet* u, float* out, const float* sample, const float* t, const float* context, int Lctx,
                  const float* text_embeds, const float* time_ids, int N, int h, int w, Arena* act) {
    const UnetConfig* c = &u->cfg;
    DType dt = u->w.dtype;
    int L = c->layers_per_block, last = c->levels - 1, TE = c->time_embed_dim, A = c->addition_time_embed_dim;
    int pooled_dim = c->projection_class_embeddings_input_dim - 6 * A;
    size_t mark0 = arena_mark(act);
    const void* x_in = input_as(sample, (size_t)N * c->in_channels * h * w, dt, act, "unet sample");
    const void* ctx = input_as(context, (size_t)N * Lctx * c->cross_attention_dim, dt, act, "unet context");
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
                resblock_forward(&b->resnets[j], r, hcur, emb_act, N, H, W, act);
                spatial_transformer_forward(&b->attentions[j], next, r, ctx, Lctx, N, H, W, act);
                arena_release(act, mark);
            } else {
                resblock_forward(&b->resnets[j], next, hcur, emb_act, N, H, W, act);
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
        resblock_forward(&u->mid_res0, r, hcur, emb_act, N, H, W, act);
        spatial_transformer_forward(&u->mid_attn, ping, r, ctx, Lctx, N, H, W, act);
        resblock_forward(&u->mid_res1, pong, ping, emb_act, N, H, W, act);
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
                resblock_forward(&b->resnets[j], rout, cat, emb_act, N, H, W, act);
                spatial_transformer_forward(&b->attentions[j], next, rout, ctx, Lctx, N, H, W, act);
            } else {
                resblock_forward(&b->resnets[j], next, cat, emb_act, N, H, W, act);
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
size_t unet_activation_bytes(const UnetConfig* c, int N, int h, int w, int Lctx, DType dtype) {
    size_t es = dtype_size(dtype), align = ARENA_ALIGN / es, total = 0;
    int L = c->layers_per_block, last = c->levels - 1;
    int hs[UNET_MAX_LEVELS], ws[UNET_MAX_LEVELS];
    level_sizes(c, h, w, hs, ws);
    size_t TE = (size_t)c->time_embed_dim;
    // 16-bit copies of the inputs (and the output before its conversion)
    if (dtype != DT_F32)
        total += (size_t)N * (2 * c->in_channels * h * w + (size_t)Lctx * c->cross_attention_dim +
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
