// vae.c: the SDXL VAE: its config, its parameters under diffusers and SGM names, and the encoder
// and decoder forward passes, on whichever backend is current (everything goes through ops.h).
//
// It mirrors diffusers 0.42.1, models/:
//   autoencoders/autoencoder_kl.py   AutoencoderKL: quant_conv / post_quant_conv, encode, decode
//   autoencoders/vae.py              Encoder, Decoder, DiagonalGaussianDistribution
//   unets/unet_2d_blocks.py          DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D
//   resnet.py                        ResnetBlock2D (temb None: no time embedding)
//   attention_processor.py           Attention + AttnProcessor2_0 (the mid block's self-attention)
//   downsampling.py, upsampling.py   Downsample2D (padding 0: pad (0,1,0,1), conv stride 2), Upsample2D
// and, for single-file checkpoints, loaders/single_file_utils.py convert_ldm_vae_checkpoint (the
// SGM/LDM key names: down.i.block.j, up.(levels-1-i).block.j, mid.block_1/attn_1/block_2,
// nin_shortcut, norm_out, attention q/k/v/proj_out stored as [C, C, 1, 1] convs).
// Not here: tiling and slicing (diffusers' enable_tiling/enable_slicing), fp16 compute (SDXL's VAE
// overflows in fp16; diffusers force-upcasts it to fp32, which is what we compute in anyway).
//
// Memory. Activations come from the caller's arena. Each pass keeps one "stream" tensor, allocated
// first and sized for the largest activation of the pass, and every block works on it in place,
// taking its temporaries above it with mark/release. So the peak is the stream plus the largest
// block's temporaries: at most three full-size tensors (a resnet's input, its first conv's input
// and output; or an upsampler's input in the stream, its 2x copy and the conv output back in the
// stream), never the L x L attention matrix (attention_forward streams over keys). The
// *_arena_bytes functions walk the same shapes and return the exact high-water mark.
//
// Letters: N batch, C channels, H W spatial size at the current level, L = H*W attention tokens.
#include "vae.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "json.h"
#include "ops.h"
#include "safetensors.h"

#define VAE_NORM_EPS 1e-6f  // every GroupNorm of Encoder/Decoder (resnet_eps=1e-6, conv_norm_out eps=1e-6)
#define VAE_LOGVAR_MIN -30.0f // DiagonalGaussianDistribution: torch.clamp(logvar, -30.0, 20.0)
#define VAE_LOGVAR_MAX 20.0f

// ----------------------------------------------------------------------------
// Config

void vae_config_sdxl(VaeConfig* cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->in_channels = 3;
    cfg->out_channels = 3;
    cfg->latent_channels = 4;
    cfg->levels = 4;
    const int ch[4] = {128, 256, 512, 512};
    memcpy(cfg->block_out_channels, ch, sizeof(ch));
    cfg->layers_per_block = 2;
    cfg->norm_num_groups = 32;
    cfg->scaling_factor = 0.13025f; // sgm's sd_xl_base.yaml scale_factor; SD 1.x used 0.18215
}

// An optional key must be absent, null, or (for booleans) the value SDXL uses.
static int config_null(const JsonValue* root, const char* key, const char* path, char* err) {
    const JsonValue* v = json_get(root, key);
    if (v && v->type != JSON_NULL) return set_error(err, "%s: '%s' must be null for the SDXL VAE", path, key);
    return 0;
}
static int config_true(const JsonValue* root, const char* key, const char* path, char* err) {
    const JsonValue* v = json_get(root, key);
    if (v && v->type != JSON_TRUE) return set_error(err, "%s: '%s' must be true for the SDXL VAE", path, key);
    return 0;
}

static int config_block_types(const JsonValue* root, const char* key, const char* want, int levels, const char* path,
                              char* err) {
    const JsonValue* a = json_get(root, key);
    if (!a || a->type != JSON_ARRAY || (int)a->length != levels)
        return set_error(err, "%s: '%s' must list %d block types, one per block_out_channels entry", path, key, levels);
    for (int i = 0; i < levels; i++)
        if (a->items[i].type != JSON_STRING || strcmp(a->items[i].string, want) != 0)
            return set_error(err, "%s: %s[%d] is not %s, the only block the SDXL VAE uses", path, key, i, want);
    return 0;
}

// What the limits of single values cannot say: the widths split into the groups, and the
// mid-block attention (one head as wide as the last level) fits attention_forward. A config made
// in code rather than read (vae_load_with_config's) is held to the same limits here.
static int config_check(const VaeConfig* c, const char* path, char* err) {
    int ok = c->levels >= 1 && c->levels <= VAE_MAX_LEVELS && c->layers_per_block >= 1 && c->layers_per_block < VAE_MAX_LAYERS &&
             c->norm_num_groups >= 1 && c->norm_num_groups <= VAE_MAX_GROUPS && c->latent_channels >= 1 &&
             c->latent_channels <= VAE_MAX_LATENT_CHANNELS && c->in_channels >= 1 && c->in_channels <= VAE_MAX_IO_CHANNELS &&
             c->out_channels >= 1 && c->out_channels <= VAE_MAX_IO_CHANNELS;
    for (int i = 0; ok && i < c->levels; i++) ok = c->block_out_channels[i] >= 1 && c->block_out_channels[i] <= VAE_MAX_CHANNELS;
    if (!ok) return set_error(err, "%s: the VAE config is outside vae.h's limits", path);
    for (int i = 0; i < c->levels; i++)
        if (c->block_out_channels[i] % c->norm_num_groups != 0)
            return set_error(err, "%s: \"block_out_channels\"[%d] %d is not divisible by \"norm_num_groups\" %d", path, i,
                             c->block_out_channels[i], c->norm_num_groups);
    if (c->block_out_channels[c->levels - 1] > ATTENTION_MAX_HS)
        return set_error(err, "%s: \"block_out_channels\"[%d] %d would make the mid-block attention one head of more than %d "
                         "channels", path, c->levels - 1, c->block_out_channels[c->levels - 1], ATTENTION_MAX_HS);
    return 0;
}

int vae_config_read(VaeConfig* cfg, const char* path, char* err) {
    memset(cfg, 0, sizeof(*cfg));
    JsonDoc doc;
    if (json_read_file(&doc, path, err) != 0) return -1;
    const JsonValue* root = &doc.root;
    int rc = -1;
    const char* act = json_get_string(root, "act_fn");
    double scale = 0;
    if (root->type != JSON_OBJECT) {
        set_error(err, "%s: not a JSON object", path);
    } else if (!act || strcmp(act, "silu") != 0) {
        set_error(err, "%s: act_fn is '%s', the SDXL VAE uses 'silu'", path, act ? act : "(missing)");
    } else {
        rc = json_config_int_list(root, "block_out_channels", 1, VAE_MAX_CHANNELS, 1, VAE_MAX_LEVELS, cfg->block_out_channels,
                                  &cfg->levels, path, err);
        if (rc == 0) rc = json_config_number(root, "scaling_factor", VAE_MIN_SCALE, VAE_MAX_SCALE, &scale, path, err);
        cfg->scaling_factor = (float)scale;
        if (rc == 0) rc = json_config_int(root, "in_channels", 1, VAE_MAX_IO_CHANNELS, &cfg->in_channels, path, err);
        if (rc == 0) rc = json_config_int(root, "out_channels", 1, VAE_MAX_IO_CHANNELS, &cfg->out_channels, path, err);
        if (rc == 0) rc = json_config_int(root, "latent_channels", 1, VAE_MAX_LATENT_CHANNELS, &cfg->latent_channels, path, err);
        if (rc == 0) rc = json_config_int(root, "layers_per_block", 1, VAE_MAX_LAYERS - 1, &cfg->layers_per_block, path, err);
        if (rc == 0) rc = json_config_int(root, "norm_num_groups", 1, VAE_MAX_GROUPS, &cfg->norm_num_groups, path, err);
        if (rc == 0) rc = config_block_types(root, "down_block_types", "DownEncoderBlock2D", cfg->levels, path, err);
        if (rc == 0) rc = config_block_types(root, "up_block_types", "UpDecoderBlock2D", cfg->levels, path, err);
        // SDXL has no latent shift or normalisation (SD3/Flux VAEs do); refuse rather than ignore them
        if (rc == 0) rc = config_null(root, "shift_factor", path, err);
        if (rc == 0) rc = config_null(root, "latents_mean", path, err);
        if (rc == 0) rc = config_null(root, "latents_std", path, err);
        if (rc == 0) rc = config_true(root, "use_quant_conv", path, err);
        if (rc == 0) rc = config_true(root, "use_post_quant_conv", path, err);
        if (rc == 0) rc = config_true(root, "mid_block_add_attention", path, err);
        if (rc == 0) rc = config_check(cfg, path, err);
    }
    json_free(&doc);
    return rc;
}

int vae_latent_size(const VaeConfig* cfg, int H) {
    for (int i = 0; i < cfg->levels - 1; i++) H = (H + 1 - 3) / 2 + 1; // pad (0, 1), 3x3 stride 2, no padding
    return H;
}

// ----------------------------------------------------------------------------
// Parameters. Each leaf module is declared under its diffusers name, and where an SGM file keeps
// it is recorded on the same line; the first build pass fills vae->modules.

static void module_name(Vae* v, const Weights* w, const char* name, const char* sgm, const char* old) {
    if (w->pass != 1) return;
    if (v->module_count == v->module_capacity) {
        v->module_capacity = v->module_capacity ? 2 * v->module_capacity : 128;
        v->modules = xrealloc(v->modules, sizeof(VaeModuleName) * v->module_capacity);
    }
    VaeModuleName* m = &v->modules[v->module_count++];
    snprintf(m->name, sizeof(m->name), "%s", name);
    snprintf(m->sgm, sizeof(m->sgm), "%s", sgm);
    snprintf(m->old, sizeof(m->old), "%s", old ? old : "");
}

static Conv2d vae_conv(Vae* v, Weights* w, const char* name, const char* sgm, int in, int out, int k, int stride,
                       int pad) {
    module_name(v, w, name, sgm, NULL);
    return conv2d_build(w, name, in, out, k, stride, pad, 1);
}

static GroupNorm vae_norm(Vae* v, Weights* w, const char* name, const char* sgm, int C) {
    module_name(v, w, name, sgm, NULL);
    return group_norm_build(w, name, C, v->config.norm_num_groups, VAE_NORM_EPS);
}

static Linear vae_linear(Vae* v, Weights* w, const char* name, const char* sgm, const char* old, int C) {
    module_name(v, w, name, sgm, old);
    return linear_build(w, name, C, C, 1);
}

// ResnetBlock2D(in_channels=C_in, out_channels=C_out, temb_channels=None) / LDM ResnetBlock
static VaeResnet resnet_build(Vae* v, Weights* w, const char* name, const char* sgm, int C_in, int C_out) {
    char a[NAME_MAX_LEN], b[NAME_MAX_LEN];
    VaeResnet r = {0};
    r.norm1 = vae_norm(v, w, name_fmt(a, "%s.norm1", name), name_fmt(b, "%s.norm1", sgm), C_in);
    r.conv1 = vae_conv(v, w, name_fmt(a, "%s.conv1", name), name_fmt(b, "%s.conv1", sgm), C_in, C_out, 3, 1, 1);
    r.norm2 = vae_norm(v, w, name_fmt(a, "%s.norm2", name), name_fmt(b, "%s.norm2", sgm), C_out);
    r.conv2 = vae_conv(v, w, name_fmt(a, "%s.conv2", name), name_fmt(b, "%s.conv2", sgm), C_out, C_out, 3, 1, 1);
    r.has_shortcut = C_in != C_out; // use_in_shortcut = in_channels != out_channels
    if (r.has_shortcut)
        r.shortcut = vae_conv(v, w, name_fmt(a, "%s.conv_shortcut", name), name_fmt(b, "%s.nin_shortcut", sgm), C_in,
                              C_out, 1, 1, 0);
    return r;
}

// Attention(C, heads=1, dim_head=C, norm_num_groups=groups, bias=True, residual_connection=True,
// _from_deprecated_attn_block=True) / LDM AttnBlock. The deprecated names are those
// ModelMixin._fix_state_dict_keys_on_load (modeling_utils.py) renames; group_norm kept its name.
static VaeAttention attention_build(Vae* v, Weights* w, const char* name, const char* sgm, int C) {
    char a[NAME_MAX_LEN], b[NAME_MAX_LEN], o[NAME_MAX_LEN];
    VaeAttention at = {0};
    at.C = C;
    at.group_norm = vae_norm(v, w, name_fmt(a, "%s.group_norm", name), name_fmt(b, "%s.norm", sgm), C);
    at.to_q = vae_linear(v, w, name_fmt(a, "%s.to_q", name), name_fmt(b, "%s.q", sgm), name_fmt(o, "%s.query", name),
                         C);
    at.to_k = vae_linear(v, w, name_fmt(a, "%s.to_k", name), name_fmt(b, "%s.k", sgm), name_fmt(o, "%s.key", name),
                         C);
    at.to_v = vae_linear(v, w, name_fmt(a, "%s.to_v", name), name_fmt(b, "%s.v", sgm), name_fmt(o, "%s.value", name),
                         C);
    at.to_out = vae_linear(v, w, name_fmt(a, "%s.to_out.0", name), name_fmt(b, "%s.proj_out", sgm),
                           name_fmt(o, "%s.proj_attn", name), C);
    return at;
}

// UNetMidBlock2D(num_layers=1, add_attention=True) / LDM mid
static VaeMidBlock mid_build(Vae* v, Weights* w, const char* name, const char* sgm, int C) {
    char a[NAME_MAX_LEN], b[NAME_MAX_LEN];
    VaeMidBlock m;
    m.resnet0 = resnet_build(v, w, name_fmt(a, "%s.resnets.0", name), name_fmt(b, "%s.block_1", sgm), C, C);
    m.attn = attention_build(v, w, name_fmt(a, "%s.attentions.0", name), name_fmt(b, "%s.attn_1", sgm), C);
    m.resnet1 = resnet_build(v, w, name_fmt(a, "%s.resnets.1", name), name_fmt(b, "%s.block_2", sgm), C, C);
    return m;
}

// AutoencoderKL.__init__ with Encoder/Decoder.__init__ (vae.py), in their module order.
static void vae_build(Vae* v, Weights* w) {
    const VaeConfig* c = &v->config;
    const int L = c->levels, *ch = c->block_out_channels, Lc = c->latent_channels;
    char a[NAME_MAX_LEN], b[NAME_MAX_LEN];

    VaeEncoder* e = &v->encoder;
    e->conv_in = vae_conv(v, w, "encoder.conv_in", "encoder.conv_in", c->in_channels, ch[0], 3, 1, 1);
    int C = ch[0];
    for (int i = 0; i < L; i++) {
        VaeLevel* lv = &e->down[i];
        int C_in = C;
        C = ch[i];
        lv->num_resnets = c->layers_per_block;
        for (int j = 0; j < lv->num_resnets; j++)
            lv->resnets[j] = resnet_build(v, w, name_fmt(a, "encoder.down_blocks.%d.resnets.%d", i, j),
                                          name_fmt(b, "encoder.down.%d.block.%d", i, j), j == 0 ? C_in : C, C);
        lv->has_sampler = i < L - 1;
        if (lv->has_sampler) // Downsample2D(padding=0): the (0,1,0,1) pad is done in the forward
            lv->sampler = vae_conv(v, w, name_fmt(a, "encoder.down_blocks.%d.downsamplers.0.conv", i),
                                   name_fmt(b, "encoder.down.%d.downsample.conv", i), C, C, 3, 2, 0);
    }
    e->mid = mid_build(v, w, "encoder.mid_block", "encoder.mid", C);
    e->norm_out = vae_norm(v, w, "encoder.conv_norm_out", "encoder.norm_out", C);
    e->conv_out = vae_conv(v, w, "encoder.conv_out", "encoder.conv_out", C, 2 * Lc, 3, 1, 1); // double_z: mean, logvar

    v->quant_conv = vae_conv(v, w, "quant_conv", "quant_conv", 2 * Lc, 2 * Lc, 1, 1, 0);
    v->post_quant_conv = vae_conv(v, w, "post_quant_conv", "post_quant_conv", Lc, Lc, 1, 1, 0);

    VaeDecoder* d = &v->decoder;
    C = ch[L - 1];
    d->conv_in = vae_conv(v, w, "decoder.conv_in", "decoder.conv_in", Lc, C, 3, 1, 1);
    d->mid = mid_build(v, w, "decoder.mid_block", "decoder.mid", C);
    for (int i = 0; i < L; i++) {
        // up_blocks.i runs at the resolution of LDM's up.(L-1-i): LDM numbers levels by resolution,
        // diffusers by execution order (convert_ldm_vae_checkpoint: block_id = num_up_blocks - 1 - i)
        VaeLevel* lv = &d->up[i];
        int C_in = C, ldm = L - 1 - i;
        C = ch[L - 1 - i];
        lv->num_resnets = c->layers_per_block + 1;
        for (int j = 0; j < lv->num_resnets; j++)
            lv->resnets[j] = resnet_build(v, w, name_fmt(a, "decoder.up_blocks.%d.resnets.%d", i, j),
                                          name_fmt(b, "decoder.up.%d.block.%d", ldm, j), j == 0 ? C_in : C, C);
        lv->has_sampler = i < L - 1;
        if (lv->has_sampler)
            lv->sampler = vae_conv(v, w, name_fmt(a, "decoder.up_blocks.%d.upsamplers.0.conv", i),
                                   name_fmt(b, "decoder.up.%d.upsample.conv", ldm), C, C, 3, 1, 1);
    }
    d->norm_out = vae_norm(v, w, "decoder.conv_norm_out", "decoder.norm_out", C);
    d->conv_out = vae_conv(v, w, "decoder.conv_out", "decoder.conv_out", C, c->out_channels, 3, 1, 1);
}

// ----------------------------------------------------------------------------
// Loading

typedef struct {
    const Vae* vae;
    const SafeTensors* st;
    const char* prefix; // "first_stage_model.", "vae." or ""
    int sgm;            // 1: SGM/LDM names, 0: diffusers names
} VaeKeyCtx;

// The KeyMap: parameter "<module>.<weight|bias>" -> the file's key, from the module table.
static int vae_key_map(const char* name, ParamSource* src, void* ctx_) {
    const VaeKeyCtx* ctx = ctx_;
    memset(src, 0, sizeof(*src));
    const char* dot = strrchr(name, '.');
    if (!dot) return -1;
    size_t len = (size_t)(dot - name);
    const VaeModuleName* m = NULL;
    for (int i = 0; i < ctx->vae->module_count && !m; i++)
        if (strlen(ctx->vae->modules[i].name) == len && strncmp(ctx->vae->modules[i].name, name, len) == 0)
            m = &ctx->vae->modules[i];
    if (!m) return -1;
    const char* leaf = dot + 1; // "weight" or "bias"
    if (ctx->sgm) {
        snprintf(src->key, sizeof(src->key), "%s%s.%s", ctx->prefix, m->sgm, leaf);
        return 0;
    }
    snprintf(src->key, sizeof(src->key), "%s%s", ctx->prefix, name);
    if (m->old[0] && !safetensors_find(ctx->st, src->key)) {
        char old[sizeof(src->key)];
        snprintf(old, sizeof(old), "%s%s.%s", ctx->prefix, m->old, leaf);
        if (safetensors_find(ctx->st, old)) memcpy(src->key, old, sizeof(old)); // else: report the current name
    }
    return 0;
}

static int is_file(const char* path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

// A diffusers folder's weights: the fp32 file (or its index) when it is there, else the fp16 variant.
static int open_folder_weights(SafeTensors* st, const char* dir, char* err) {
    const char* stem = "diffusion_pytorch_model";
    char single[4096 + 64], index[4096 + 64];
    snprintf(single, sizeof(single), "%s/%s.safetensors", dir, stem);
    snprintf(index, sizeof(index), "%s/%s.safetensors.index.json", dir, stem);
    if (is_file(single) || is_file(index)) return safetensors_open_dir(st, dir, stem, NULL, err);
    snprintf(single, sizeof(single), "%s/%s.fp16.safetensors", dir, stem);
    snprintf(index, sizeof(index), "%s/%s.fp16.safetensors.index.json", dir, stem);
    if (is_file(single) || is_file(index)) return safetensors_open_dir(st, dir, stem, "fp16", err);
    return set_error(err, "%s: no %s[.fp16].safetensors (or its .index.json) in this folder", dir, stem);
}

// Which layout a single file holds, found by one key each layout must have. The SGM prefixes are
// diffusers' LDM_VAE_KEYS (a whole checkpoint), then none (a VAE-only file such as sdxl_vae.safetensors).
static int detect_single_file(const SafeTensors* st, VaeKeyCtx* ctx, char* err) {
    static const char* const sgm_prefixes[] = {"first_stage_model.", "vae.", ""};
    char key[256];
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "%sdecoder.mid.block_1.norm1.weight", sgm_prefixes[i]);
        if (safetensors_find(st, key)) {
            ctx->prefix = sgm_prefixes[i];
            ctx->sgm = 1;
            return 0;
        }
    }
    if (safetensors_find(st, "decoder.mid_block.resnets.0.norm1.weight")) {
        ctx->prefix = "";
        ctx->sgm = 0;
        return 0;
    }
    return set_error(err, "%s: no VAE in this file (no 'decoder.mid.block_1.norm1.weight' under first_stage_model., "
                          "vae. or no prefix, nor diffusers' 'decoder.mid_block.resnets.0.norm1.weight')", st->path);
}

int vae_load_with_config(Vae* vae, const VaeConfig* cfg, const char* path, DType dtype, char* err) {
    memset(vae, 0, sizeof(*vae));
    struct stat sb;
    if (stat(path, &sb) != 0) return set_error(err, "%s: %s", path, strerror(errno));
    if (config_check(cfg, path, err) != 0) return -1;
    SafeTensors st;
    VaeKeyCtx ctx = {vae, &st, "", 0};
    if (S_ISDIR(sb.st_mode)) {
        if (open_folder_weights(&st, path, err) != 0) return -1;
    } else {
        if (safetensors_open(&st, path, err) != 0) return -1;
        if (detect_single_file(&st, &ctx, err) != 0) {
            safetensors_close(&st);
            return -1;
        }
    }
    vae->config = *cfg;
    weights_init(&vae->weights, "vae", dtype);
    vae_build(vae, &vae->weights);  // pass 1: names, shapes, the module table
    // every tensor checked against the file before the parameter memory is allocated
    int rc = weights_check_mapped(&vae->weights, &st, vae_key_map, &ctx, err);
    if (rc == 0) {
        weights_allocate(&vae->weights);
        vae_build(vae, &vae->weights);  // pass 2: pointers
        weights_finish(&vae->weights);
        rc = weights_load_mapped(&vae->weights, &st, vae_key_map, &ctx, err);
    }
    safetensors_close(&st);
    if (rc != 0) vae_free(vae);
    return rc;
}

int vae_load(Vae* vae, const char* path, DType dtype, char* err) {
    memset(vae, 0, sizeof(*vae));
    VaeConfig cfg;
    struct stat sb;
    if (stat(path, &sb) != 0) return set_error(err, "%s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        char config[4096 + 16];
        snprintf(config, sizeof(config), "%s/config.json", path);
        if (vae_config_read(&cfg, config, err) != 0) return -1;
    } else {
        vae_config_sdxl(&cfg); // a single file carries no config; diffusers also falls back to SDXL's
    }
    return vae_load_with_config(vae, &cfg, path, dtype, err);
}

void vae_allocate(Vae* vae, const VaeConfig* cfg, DType dtype) {
    memset(vae, 0, sizeof(*vae));
    vae->config = *cfg;
    weights_init(&vae->weights, "vae", dtype);
    vae_build(vae, &vae->weights);
    weights_allocate(&vae->weights);
    vae_build(vae, &vae->weights);
    weights_finish(&vae->weights);
}

void vae_init_random(Vae* vae, const VaeConfig* cfg, DType dtype, uint64_t seed) {
    vae_allocate(vae, cfg, dtype);
    weights_fill_random(&vae->weights, seed);
}

void vae_free(Vae* vae) {
    weights_free(&vae->weights);
    free(vae->modules);
    memset(vae, 0, sizeof(*vae));
}

// ----------------------------------------------------------------------------
// Blocks, each working in place on the stream tensor x, with the bytes its temporaries take
// beside it (the same allocations in the same order, for the *_arena_bytes walks). Activations
// are of the VAE's storage type (its weights' type, dt): f32 on the reference path, bf16 on the
// fast GPU path (f16 would overflow in the decoder, as diffusers' force_upcast says).

// arena_alloc's rounding, so the walks below count exactly what the forward takes
static size_t elem_bytes(size_t n, DType dt) { return (n * dtype_size(dt) + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN; }
static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

// the im2col buffer layers.c's conv2d takes above whatever is allocated (none for 1x1 convs)
static size_t conv_scratch_bytes(const Conv2d* c, int H, int W) {
    size_t n = conv2d_scratch_elems(c->in, H, W, c->k, c->stride, c->pad);
    return n ? elem_bytes(n, c->dtype) : 0;
}

// ResnetBlock2D.forward with temb None (resnet.py), output_scale_factor 1:
//   out = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))
// x (N, C_in, H, W) becomes (N, C_out, H, W) in place; its buffer holds max(C_in, C_out) channels.
static void resnet_forward(const VaeResnet* r, void* x, int N, int H, int W, Arena* a) {
    const DType dt = r->conv1.dtype;
    const size_t HW = (size_t)H * W, n_in = (size_t)N * r->conv1.in * HW, n_out = (size_t)N * r->conv1.out * HW;
    size_t mark = arena_mark(a);
    if (!r->has_shortcut) {
        // x is the residual: keep it, and take the two conv activations beside it
        void* h = arena_elems(a, n_in, dt, "vae resnet h");
        void* h2 = arena_elems(a, n_out, dt, "vae resnet h2");
        group_norm_silu(&r->norm1, h, x, N, (int)HW);
        conv2d(&r->conv1, h2, h, N, H, W, a);
        group_norm_silu(&r->norm2, h2, h2, N, (int)HW);
        conv2d(&r->conv2, h, h2, N, H, W, a); // h's buffer again: C_in == C_out
        add_forward(x, x, h, n_out, dt);
    } else {
        // the 1x1 shortcut holds what the residual needs, so x is free to be normalised in place
        void* s = arena_elems(a, n_out, dt, "vae resnet shortcut");
        conv2d(&r->shortcut, s, x, N, H, W, a);   // (N, C_out, H, W)
        group_norm_silu(&r->norm1, x, x, N, (int)HW);
        void* h2 = arena_elems(a, n_out, dt, "vae resnet h2");
        conv2d(&r->conv1, h2, x, N, H, W, a);     // (N, C_out, H, W)
        group_norm_silu(&r->norm2, h2, h2, N, (int)HW);
        conv2d(&r->conv2, x, h2, N, H, W, a);     // x now (N, C_out, H, W)
        add_forward(x, x, s, n_out, dt);
    }
    arena_release(a, mark);
}

static size_t resnet_scratch_bytes(const VaeResnet* r, int N, int H, int W) {
    const DType dt = r->conv1.dtype;
    const size_t HW = (size_t)H * W;
    size_t out = elem_bytes((size_t)N * r->conv1.out * HW, dt);
    size_t convs = max_size(conv_scratch_bytes(&r->conv1, H, W), conv_scratch_bytes(&r->conv2, H, W));
    if (!r->has_shortcut) return elem_bytes((size_t)N * r->conv1.in * HW, dt) + out + convs;
    return out + max_size(conv_scratch_bytes(&r->shortcut, H, W), out + convs);
}

// Attention.forward with AttnProcessor2_0 (attention_processor.py) as UNetMidBlock2D configures it:
//   t = group_norm(x) as tokens (N, L, C);  q, k, v = to_q(t), to_k(t), to_v(t)
//   x = x + to_out.0(sdpa(q, k, v)) back in (N, C, H, W)   (one head of C, scale 1/sqrt(C), rescale 1)
static void attention_block_forward(const VaeAttention* at, void* x, int N, int H, int W, Arena* a) {
    const DType dt = at->to_q.dtype;
    const int C = at->C, L = H * W;
    const size_t n = (size_t)N * C * L;
    size_t mark = arena_mark(a);
    void* b0 = arena_elems(a, n, dt, "vae attention");
    void* b1 = arena_elems(a, n, dt, "vae attention");
    void* b2 = arena_elems(a, n, dt, "vae attention");
    void* b3 = arena_elems(a, n, dt, "vae attention");
    group_norm(&at->group_norm, b0, x, N, L);           // (N, C, L)
    transpose_forward(b1, b0, N, C, L, dt);             // tokens (N, L, C)
    linear(&at->to_q, b0, b1, N * L);                    // q (N, L, C)
    linear(&at->to_k, b2, b1, N * L);                    // k
    linear(&at->to_v, b3, b1, N * L);                    // v
    attention_forward(b1, b0, b2, b3, N, 1, L, L, C, 0, dt); // (N, L, C), heads = C // attention_head_dim = 1
    linear(&at->to_out, b0, b1, N * L);                  // (N, L, C)
    transpose_forward(b2, b0, N, L, C, dt);             // (N, C, L)
    add_forward(x, x, b2, n, dt);                       // residual_connection
    arena_release(a, mark);
}

static size_t attention_scratch_bytes(const VaeAttention* at, int N, int H, int W) {
    return 4 * elem_bytes((size_t)N * at->C * H * W, at->to_q.dtype);
}

// UNetMidBlock2D.forward: resnets[0], attentions[0], resnets[1]
static void mid_forward(const VaeMidBlock* m, void* x, int N, int H, int W, Arena* a) {
    resnet_forward(&m->resnet0, x, N, H, W, a);
    attention_block_forward(&m->attn, x, N, H, W, a);
    resnet_forward(&m->resnet1, x, N, H, W, a);
}

static size_t mid_scratch_bytes(const VaeMidBlock* m, int N, int H, int W) {
    size_t s = max_size(resnet_scratch_bytes(&m->resnet0, N, H, W), resnet_scratch_bytes(&m->resnet1, N, H, W));
    return max_size(s, attention_scratch_bytes(&m->attn, N, H, W));
}

// Downsample2D(use_conv=True, padding=0).forward (downsampling.py): F.pad(x, (0, 1, 0, 1)), then the
// 3x3 stride-2 conv without padding. x (N, C, H, W) becomes (N, C, floor(H/2), floor(W/2)).
static void downsample_forward(const Conv2d* conv, void* x, int N, int H, int W, Arena* a) {
    size_t mark = arena_mark(a);
    void* p = arena_elems(a, (size_t)N * conv->in * (H + 1) * (W + 1), conv->dtype, "vae downsample pad");
    pad2d_forward(p, x, N, conv->in, H, W, 0, 1, 0, 1, conv->dtype); // (N, C, H + 1, W + 1): one zero row below, column right
    conv2d(conv, x, p, N, H + 1, W + 1, a);              // (N, C, H / 2, W / 2)
    arena_release(a, mark);
}

static size_t downsample_scratch_bytes(const Conv2d* conv, int N, int H, int W) {
    return elem_bytes((size_t)N * conv->in * (H + 1) * (W + 1), conv->dtype) + conv_scratch_bytes(conv, H + 1, W + 1);
}

// Upsample2D(use_conv=True).forward (upsampling.py): F.interpolate(scale_factor=2, mode="nearest"),
// then the 3x3 conv. x (N, C, H, W) becomes (N, C, 2H, 2W).
static void upsample_forward(const Conv2d* conv, void* x, int N, int H, int W, Arena* a) {
    size_t mark = arena_mark(a);
    void* u = arena_elems(a, (size_t)N * conv->in * 4 * H * W, conv->dtype, "vae upsample");
    upsample_nearest_forward(u, x, N, conv->in, H, W, 2 * H, 2 * W, conv->dtype); // (N, C, 2H, 2W)
    conv2d(conv, x, u, N, 2 * H, 2 * W, a);                                  // (N, C, 2H, 2W)
    arena_release(a, mark);
}

static size_t upsample_scratch_bytes(const Conv2d* conv, int N, int H, int W) {
    return elem_bytes((size_t)N * conv->in * 4 * H * W, conv->dtype) + conv_scratch_bytes(conv, 2 * H, 2 * W);
}

// ----------------------------------------------------------------------------
// Shape walks: the bytes of each pass's first allocations (a 16-bit VAE's converted input, then
// the stream) and the largest set of temporaries above them, following exactly the allocations
// vae_decode / vae_encode make.

static void decoder_walk(const Vae* v, int N, int h, int w, size_t* base, size_t* scratch) {
    const VaeDecoder* d = &v->decoder;
    const DType dt = v->weights.dtype;
    int H = h, W = w;
    size_t z_in = dt == DT_F32 ? 0 : elem_bytes((size_t)N * v->config.latent_channels * h * w, dt);
    size_t zq = elem_bytes((size_t)N * v->config.latent_channels * H * W, dt);
    *scratch = zq + max_size(conv_scratch_bytes(&v->post_quant_conv, H, W), conv_scratch_bytes(&d->conv_in, H, W));
    size_t stream = (size_t)N * d->conv_in.out * H * W;
    *scratch = max_size(*scratch, mid_scratch_bytes(&d->mid, N, H, W));
    for (int i = 0; i < v->config.levels; i++) {
        const VaeLevel* lv = &d->up[i];
        for (int j = 0; j < lv->num_resnets; j++) {
            const VaeResnet* r = &lv->resnets[j];
            int C = r->conv1.in > r->conv1.out ? r->conv1.in : r->conv1.out;
            stream = max_size(stream, (size_t)N * C * H * W);
            *scratch = max_size(*scratch, resnet_scratch_bytes(r, N, H, W));
        }
        if (lv->has_sampler) {
            *scratch = max_size(*scratch, upsample_scratch_bytes(&lv->sampler, N, H, W));
            H *= 2;
            W *= 2;
            stream = max_size(stream, (size_t)N * lv->sampler.out * H * W);
        }
    }
    // conv_out, into a 16-bit image first when the VAE is 16-bit
    size_t image = dt == DT_F32 ? 0 : elem_bytes((size_t)N * d->conv_out.out * H * W, dt);
    *scratch = max_size(*scratch, image + conv_scratch_bytes(&d->conv_out, H, W));
    *base = z_in + elem_bytes(stream, dt);
}

static void encoder_walk(const Vae* v, int N, int H, int W, size_t* base, size_t* scratch) {
    const VaeEncoder* e = &v->encoder;
    const DType dt = v->weights.dtype;
    size_t x_in = dt == DT_F32 ? 0 : elem_bytes((size_t)N * e->conv_in.in * H * W, dt);
    *scratch = conv_scratch_bytes(&e->conv_in, H, W);
    size_t stream = (size_t)N * e->conv_in.out * H * W;
    for (int i = 0; i < v->config.levels; i++) {
        const VaeLevel* lv = &e->down[i];
        for (int j = 0; j < lv->num_resnets; j++) {
            const VaeResnet* r = &lv->resnets[j];
            int C = r->conv1.in > r->conv1.out ? r->conv1.in : r->conv1.out;
            stream = max_size(stream, (size_t)N * C * H * W);
            *scratch = max_size(*scratch, resnet_scratch_bytes(r, N, H, W));
        }
        if (lv->has_sampler) {
            *scratch = max_size(*scratch, downsample_scratch_bytes(&lv->sampler, N, H, W));
            H = conv2d_out_size(&lv->sampler, H + 1);
            W = conv2d_out_size(&lv->sampler, W + 1);
        }
    }
    *scratch = max_size(*scratch, mid_scratch_bytes(&e->mid, N, H, W));
    size_t n_mom = (size_t)N * e->conv_out.out * H * W;
    size_t moments = elem_bytes(n_mom, dt);
    size_t moments_f32 = dt == DT_F32 ? 0 : elem_bytes(n_mom, DT_F32); // for the host, when 16-bit
    *scratch = max_size(*scratch, moments + max_size(conv_scratch_bytes(&e->conv_out, H, W),
                                                     moments + max_size(conv_scratch_bytes(&v->quant_conv, H, W), moments_f32)));
    *base = x_in + elem_bytes(stream, dt);
}

// The block structs of a config without its weights (the first build pass only), for the walks.
static void vae_shapes(Vae* v, const VaeConfig* cfg, DType dtype) {
    memset(v, 0, sizeof(*v));
    v->config = *cfg;
    weights_init(&v->weights, "vae", dtype);
    vae_build(v, &v->weights);
}

// The sizes the byte counters can count for (vae.h); anything else is a caller's bug.
static void check_counted_sizes(const char* who, int N, int H, int W, int max_side) {
    if (N < 1 || N > VAE_MAX_BATCH || H < 1 || H > max_side || W < 1 || W > max_side)
        fatal("%s: batch %d of %d x %d is outside what it counts (batch 1..%d, sides 1..%d)", who, N, H, W, VAE_MAX_BATCH,
              max_side);
}

size_t vae_decode_arena_bytes(const VaeConfig* cfg, int N, int h, int w, DType dtype) {
    check_counted_sizes("vae_decode_arena_bytes", N, h, w, VAE_MAX_SIDE >> (cfg->levels - 1)); // the image it decodes to
    Vae v;
    vae_shapes(&v, cfg, dtype);
    size_t base, scratch;
    decoder_walk(&v, N, h, w, &base, &scratch);
    vae_free(&v);
    return base + scratch;
}

size_t vae_encode_arena_bytes(const VaeConfig* cfg, int N, int H, int W, DType dtype) {
    check_counted_sizes("vae_encode_arena_bytes", N, H, W, VAE_MAX_SIDE);
    Vae v;
    vae_shapes(&v, cfg, dtype);
    size_t base, scratch;
    encoder_walk(&v, N, H, W, &base, &scratch);
    vae_free(&v);
    return base + scratch;
}

// ----------------------------------------------------------------------------
// Decoder and encoder. Inputs and outputs are f32 whatever the VAE's precision: a 16-bit VAE
// converts them on the way in and out.

void vae_decode(const Vae* v, float* image, const float* z, int N, int h, int w, Arena* a) {
    const VaeDecoder* d = &v->decoder;
    const DType dt = v->weights.dtype;
    size_t mark = arena_mark(a);
    const void* z_in = z;
    if (dt != DT_F32) {
        size_t nz = (size_t)N * v->config.latent_channels * h * w;
        void* z16 = arena_elems(a, nz, dt, "vae latents");
        cast_forward(z16, dt, z, DT_F32, nz);
        z_in = z16;
    }
    size_t base, scratch;
    decoder_walk(v, N, h, w, &base, &scratch);
    size_t z_bytes = dt == DT_F32 ? 0 : elem_bytes((size_t)N * v->config.latent_channels * h * w, dt);
    void* x = arena_alloc(a, base - z_bytes, "vae decoder stream");
    int H = h, W = w;
    // AutoencoderKL._decode: post_quant_conv, then Decoder.forward (vae.py)
    size_t mark_z = arena_mark(a);
    void* zq = arena_elems(a, (size_t)N * v->config.latent_channels * H * W, dt, "vae post_quant_conv");
    conv2d(&v->post_quant_conv, zq, z_in, N, H, W, a); // (N, 4, h, w)
    conv2d(&d->conv_in, x, zq, N, H, W, a);            // (N, C_last, h, w)
    arena_release(a, mark_z);
    mid_forward(&d->mid, x, N, H, W, a);
    for (int i = 0; i < v->config.levels; i++) {
        const VaeLevel* lv = &d->up[i];
        for (int j = 0; j < lv->num_resnets; j++) resnet_forward(&lv->resnets[j], x, N, H, W, a); // (N, C_i, H, W)
        if (lv->has_sampler) {
            upsample_forward(&lv->sampler, x, N, H, W, a); // (N, C_i, 2H, 2W)
            H *= 2;
            W *= 2;
        }
    }
    group_norm_silu(&d->norm_out, x, x, N, H * W); // conv_norm_out, conv_act
    size_t n_img = (size_t)N * d->conv_out.out * H * W;
    void* img = dt == DT_F32 ? (void*)image : arena_elems(a, n_img, dt, "vae image");
    conv2d(&d->conv_out, img, x, N, H, W, a);      // (N, 3, H, W)
    if (img != image) cast_forward(image, DT_F32, img, dt, n_img);
    arena_release(a, mark);
}

void vae_encode(const Vae* v, float* mean, float* logvar, float* sample, const float* noise, const float* image,
                int N, int H, int W, Arena* a) {
    const VaeEncoder* e = &v->encoder;
    const DType dt = v->weights.dtype;
    if (sample && !noise) fatal("vae_encode: a sample needs its noise tensor");
    size_t mark = arena_mark(a);
    const void* x_in = image;
    size_t x_bytes = 0;
    if (dt != DT_F32) {
        size_t nx = (size_t)N * e->conv_in.in * H * W;
        void* x16 = arena_elems(a, nx, dt, "vae image");
        cast_forward(x16, dt, image, DT_F32, nx);
        x_in = x16;
        x_bytes = elem_bytes(nx, dt);
    }
    size_t base, scratch;
    encoder_walk(v, N, H, W, &base, &scratch);
    void* x = arena_alloc(a, base - x_bytes, "vae encoder stream");
    // Encoder.forward (vae.py)
    conv2d(&e->conv_in, x, x_in, N, H, W, a); // (N, C_0, H, W)
    for (int i = 0; i < v->config.levels; i++) {
        const VaeLevel* lv = &e->down[i];
        for (int j = 0; j < lv->num_resnets; j++) resnet_forward(&lv->resnets[j], x, N, H, W, a); // (N, C_i, H, W)
        if (lv->has_sampler) {
            downsample_forward(&lv->sampler, x, N, H, W, a);
            H = conv2d_out_size(&lv->sampler, H + 1); // (N, C_i, H/2, W/2)
            W = conv2d_out_size(&lv->sampler, W + 1);
        }
    }
    mid_forward(&e->mid, x, N, H, W, a);
    const size_t hw = (size_t)H * W;
    group_norm_silu(&e->norm_out, x, x, N, (int)hw); // conv_norm_out, conv_act
    const int Lc = v->config.latent_channels;
    const size_t n_mom = (size_t)N * 2 * Lc * hw, n_lat = (size_t)N * Lc * hw;
    void* m1 = arena_elems(a, n_mom, dt, "vae encoder conv_out");
    conv2d(&e->conv_out, m1, x, N, H, W, a);              // (N, 2*Lc, h, w)
    void* moments = arena_elems(a, n_mom, dt, "vae quant_conv");
    conv2d(&v->quant_conv, moments, m1, N, H, W, a);      // (N, 2*Lc, h, w): mean, logvar = chunk(2, dim=1)
    if (dt != DT_F32) {
        float* m32 = arena_floats(a, n_mom, "vae moments f32");
        cast_forward(m32, DT_F32, moments, dt, n_mom);
        moments = m32;
    }

    // DiagonalGaussianDistribution (vae.py). ops.h has no exp or clamp, and the latent is small
    // (4 x 128 x 128 for a 1024 px image), so this part runs on the host for both backends.
    float* host = xmalloc(sizeof(float) * (n_mom + 3 * n_lat));
    float *h_mean = host + n_mom, *h_logvar = h_mean + n_lat, *h_sample = h_logvar + n_lat;
    copy_to_host(host, moments, sizeof(float) * n_mom);
    if (sample) copy_to_host(h_sample, noise, sizeof(float) * n_lat);
    for (int b = 0; b < N; b++) {
        for (size_t i = 0; i < (size_t)Lc * hw; i++) {
            size_t o = (size_t)b * Lc * hw + i;
            float mu = host[(size_t)b * 2 * Lc * hw + i];
            float lv = host[(size_t)b * 2 * Lc * hw + (size_t)Lc * hw + i];
            lv = lv < VAE_LOGVAR_MIN ? VAE_LOGVAR_MIN : lv > VAE_LOGVAR_MAX ? VAE_LOGVAR_MAX : lv;
            h_mean[o] = mu;
            h_logvar[o] = lv;
            if (sample) h_sample[o] = mu + expf(0.5f * lv) * h_sample[o]; // mean + std * noise
        }
    }
    if (mean) copy_to_device(mean, h_mean, sizeof(float) * n_lat);
    if (logvar) copy_to_device(logvar, h_logvar, sizeof(float) * n_lat);
    if (sample) copy_to_device(sample, h_sample, sizeof(float) * n_lat);
    free(host);
    arena_release(a, mark);
}
