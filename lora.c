// lora.c: reading SDXL LoRA files in the three formats found in the wild, and merging them.
//
// Formats, with what each library writes and reads (pinned: diffusers 0.42.1, peft 0.21.2):
//   kohya      kohya-ss/sd-scripts networks/lora.py LoRANetwork.save_weights: one key per module
//              "lora_unet_" + SGM module path with '.' -> '_' (sd-scripts trains SDXL on its own
//              SGM-named UNet, library/sdxl_original_unet.py), "lora_te1_" / "lora_te2_" +
//              transformers path ("text_model_encoder_layers_0_self_attn_q_proj"); tensors
//              .lora_down.weight (rank, in[, kh, kw]), .lora_up.weight (out, rank[, 1, 1]), .alpha
//              (0-d). diffusers' utils/state_dict_utils.py convert_state_dict_to_kohya writes the same
//              suffixes with diffusers block names ("lora_unet_down_blocks_1_attentions_0_...") and an
//              int64 alpha. Both are read back by diffusers' loaders/lora_conversion_utils.py
//              (_maybe_map_sgm_blocks_to_diffusers, _convert_non_diffusers_lora_to_diffusers).
//   diffusers  StableDiffusionXLPipeline.save_lora_weights (loaders/lora_pipeline.py): "unet." /
//              "text_encoder." / "text_encoder_2." + module path. train_text_to_image_lora_sdxl.py
//              passes convert_state_dict_to_diffusers(get_peft_model_state_dict(model)), giving
//              .lora.down/.lora.up.weight (UNet attention) and .lora_linear_layer.down/up.weight (text
//              encoders); other callers pass peft's .lora_A/.lora_B.weight as they are. Text-encoder
//              paths come with or without "text_model." (transformers 5 flattened CLIPTextModel;
//              diffusers strips the prefix to match). No alpha tensors: alpha = rank, unless the
//              __metadata__ entry "lora_adapter_metadata" holds the LoraConfigs as JSON with keys
//              "unet.lora_alpha", "unet.r", "unet.rank_pattern", ... (loaders/lora_base.py
//              write_lora_layers).
//   PEFT       PeftModel.save_pretrained: adapter_model.safetensors with "base_model.model." + module
//              path + .lora_A/.lora_B.weight, beside adapter_config.json (r, lora_alpha, rank_pattern,
//              alpha_pattern, use_rslora; auto_mapping.base_model_class says which model it adapts).
//              A folder with unet/, text_encoder/, text_encoder_2/ adapters is peft's
//              examples/lora_dreambooth layout.
// The merge is peft's (tuners/lora/layer.py get_delta_weight, as diffusers' fuse_lora runs it):
// W += (B @ A) * scaling with scaling = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), times
// the strength; convolutions sum the same products over the rank (conv2d(A^T, B) in peft).
//
// What this file does not do, on purpose: guess. Module names are never parsed back from
// underscores (sd.cpp's convert_sep_to_dot); each model parameter's names in the file's format are
// generated (lora_param_names: unet_sgm_name for kohya's SGM spelling) and looked up in a sorted
// table. A key with a suffix the format does not have, a LyCORIS/DoRA tensor, a module the loaded
// models do not have, or a shape that does not fit is a one-line error naming the key and the file.
// PEFT rank_pattern/alpha_pattern keys are matched the way peft's get_pattern_key matches plain
// module names (the name, or a suffix after a '.'; '^' anchors at the start); keys that need a
// regular expression engine are refused rather than half-understood.
#include "lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "json.h"
#include "ops.h"
#include "safetensors.h"

static const char* model_label[LORA_MODELS] = {"UNet", "text encoder 1 (CLIP-L)", "text encoder 2 (OpenCLIP bigG)"};
static const char* model_short[LORA_MODELS] = {"unet", "te1", "te2"};
static const char* component_name[LORA_MODELS] = {"unet", "text_encoder", "text_encoder_2"}; // diffusers folders
static const char* format_label[] = {"kohya", "diffusers", "peft"};

// ----------------------------------------------------------------------------
// Names a parameter's LoRA module has in each format

// dst = prefix + src with every '.' turned into '_' (kohya's spelling of a module path).
static void underscored(char* dst, size_t cap, const char* prefix, const char* src) {
    int n = snprintf(dst, cap, "%s%s", prefix, src);
    for (int i = (int)strlen(prefix); i < n && i < (int)cap; i++)
        if (dst[i] == '.') dst[i] = '_';
}

int lora_param_names(LoraFormat f, LoraModel m, const UnetConfig* ucfg, const char* param,
                     char names[LORA_MAX_SPELLINGS][LORA_NAME_MAX]) {
    // a LoRA adapts a Linear (out, in) or Conv2d (out, in, kh, kw) weight: "<module>.weight"
    size_t n = strlen(param);
    if (n <= 7 || strcmp(param + n - 7, ".weight") != 0) return 0;
    // the CLIP embedding tables are rank 2 but lookups, not products (peft's Embedding LoRA has
    // other tensors, lora_embedding_A/B, which no format here carries)
    if (m != LORA_UNET && strncmp(param, "embeddings.", 11) == 0) return 0;
    char module[WEIGHTS_NAME_MAX]; // + the longest prefix, "base_model.model.text_model.", fits LORA_NAME_MAX
    snprintf(module, sizeof(module), "%.*s", (int)(n - 7), param);
    // text_projection sits beside text_model in CLIPTextModelWithProjection, never inside it
    int nests = m != LORA_UNET && strcmp(module, "text_projection") != 0;
    switch (f) {
    case LORA_KOHYA:
        if (m == LORA_UNET) {
            char sgm[WEIGHTS_NAME_MAX];
            if (unet_sgm_name(ucfg, param, sgm, sizeof(sgm)) != 0) return 0;
            sgm[strlen(sgm) - 7] = '\0'; // the SGM name keeps ".weight"
            underscored(names[0], LORA_NAME_MAX, "lora_unet_", sgm);    // sd-scripts
            underscored(names[1], LORA_NAME_MAX, "lora_unet_", module); // convert_state_dict_to_kohya
            return 2;
        } else {
            const char* p = m == LORA_TE1 ? "lora_te1_" : "lora_te2_";
            char with[LORA_NAME_MAX];
            snprintf(with, sizeof(with), "%stext_model_", p);
            underscored(names[0], LORA_NAME_MAX, nests ? with : p, module); // sd-scripts (transformers 4 names)
            if (!nests) return 1;
            underscored(names[1], LORA_NAME_MAX, p, module); // convert_state_dict_to_kohya on a flattened CLIPTextModel
            return 2;
        }
    case LORA_DIFFUSERS:
    case LORA_PEFT: {
        const char* p = f == LORA_PEFT ? "base_model.model." : m == LORA_UNET ? "unet." : m == LORA_TE1 ? "text_encoder." : "text_encoder_2.";
        snprintf(names[0], LORA_NAME_MAX, "%s%s", p, module);
        if (!nests) return 1;
        snprintf(names[1], LORA_NAME_MAX, "%stext_model.%s", p, module);
        return 2;
    }
    }
    return 0;
}

// ----------------------------------------------------------------------------
// Keys: which format, which model, which tensor of a module

typedef enum { PART_DOWN, PART_UP, PART_ALPHA } Part;

static const struct { const char* prefix; LoraFormat format; int model; } key_prefixes[] = {
    {"lora_unet_", LORA_KOHYA, LORA_UNET},          {"lora_te1_", LORA_KOHYA, LORA_TE1},
    {"lora_te2_", LORA_KOHYA, LORA_TE2},            {"unet.", LORA_DIFFUSERS, LORA_UNET},
    {"text_encoder.", LORA_DIFFUSERS, LORA_TE1},    {"text_encoder_2.", LORA_DIFFUSERS, LORA_TE2},
    {"base_model.model.", LORA_PEFT, -1}, // the model comes from adapter_config.json or the folder
};

// The suffixes each format writes (kohya K, diffusers D, PEFT P), and what they hold.
#define K (1u << LORA_KOHYA)
#define D (1u << LORA_DIFFUSERS)
#define P (1u << LORA_PEFT)
static const struct { const char* suffix; Part part; unsigned formats; } key_suffixes[] = {
    {".lora_down.weight", PART_DOWN, K},  {".lora_up.weight", PART_UP, K}, {".alpha", PART_ALPHA, K},
    {".lora_A.weight", PART_DOWN, D | P}, {".lora_B.weight", PART_UP, D | P},
    {".lora.down.weight", PART_DOWN, D},  {".lora.up.weight", PART_UP, D},
    {".lora_linear_layer.down.weight", PART_DOWN, D}, {".lora_linear_layer.up.weight", PART_UP, D},
};
#undef K
#undef D
#undef P

static int key_prefix(const char* key) {
    for (int i = 0; i < (int)(sizeof(key_prefixes) / sizeof(key_prefixes[0])); i++)
        if (strncmp(key, key_prefixes[i].prefix, strlen(key_prefixes[i].prefix)) == 0) return i;
    return -1;
}

static int ends_with(const char* s, const char* suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n > k && strcmp(s + n - k, suffix) == 0;
}

// ----------------------------------------------------------------------------
// Adapter configs: PEFT's adapter_config.json, or diffusers' lora_adapter_metadata (the same
// LoraConfig fields with "unet." / "text_encoder." / "text_encoder_2." in front)

typedef struct {
    int present;
    int64_t r;
    double lora_alpha;
    int rslora;
    const JsonValue* rank_pattern; // objects {module pattern: number}, or NULL
    const JsonValue* alpha_pattern;
    char where[4200];              // for messages
} AdapterConfig;

static const JsonValue* config_field(const JsonValue* root, const char* prefix, const char* field) {
    char key[128];
    snprintf(key, sizeof(key), "%s%s", prefix, field);
    return json_get(root, key);
}

// A pattern key peft would match as a plain module name: [A-Za-z0-9_.]+, maybe with a leading '^'.
static int plain_pattern(const char* s) {
    if (*s == '^') s++;
    if (!*s) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

// rank_pattern / alpha_pattern: an object of {module name: rank (an integer) or alpha (a number)}.
static int check_pattern(const JsonValue* v, const char* field, int is_rank, const AdapterConfig* c, char* err) {
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_OBJECT) return set_error(err, "%s: \"%s\" must be an object", c->where, field);
    for (size_t i = 0; i < v->length; i++) {
        char label[300];
        int64_t r;
        double a;
        snprintf(label, sizeof(label), "\"%s\"[\"%s\"]", field, v->keys[i]);
        if (is_rank && json_config_int_value(&v->items[i], label, 1, LORA_MAX_RANK, &r, c->where, err) != 0) return -1;
        if (!is_rank && json_config_number_value(&v->items[i], label, -LORA_MAX_ALPHA, LORA_MAX_ALPHA, &a, c->where, err) != 0)
            return -1;
        if (!plain_pattern(v->keys[i]))
            return set_error(err, "%s: %s key \"%s\" is a regular expression; only module names (maybe with a leading ^) are supported",
                             c->where, field, v->keys[i]);
    }
    return 0;
}

static int adapter_config_get(AdapterConfig* c, const JsonValue* root, const char* prefix, const char* where, char* err) {
    memset(c, 0, sizeof(*c));
    snprintf(c->where, sizeof(c->where), "%s", where);
    const JsonValue* r = config_field(root, prefix, "r");
    const JsonValue* alpha = config_field(root, prefix, "lora_alpha");
    if (!r && !alpha) return 0;
    const JsonValue* type = config_field(root, prefix, "peft_type");
    if (type && type->type == JSON_STRING && strcmp(type->string, "LORA") != 0)
        return set_error(err, "%s: peft_type \"%s\" is not a LoRA", where, type->string);
    const JsonValue* dora = config_field(root, prefix, "use_dora");
    if (dora && dora->type == JSON_TRUE) return set_error(err, "%s: use_dora is set: DoRA adapters are not supported", where);
    char key[128];
    snprintf(key, sizeof(key), "%sr", prefix);
    int rank;
    if (json_config_int(root, key, 1, LORA_MAX_RANK, &rank, where, err) != 0) return -1;
    snprintf(key, sizeof(key), "%slora_alpha", prefix);
    if (json_config_number(root, key, -LORA_MAX_ALPHA, LORA_MAX_ALPHA, &c->lora_alpha, where, err) != 0) return -1;
    c->present = 1;
    c->r = rank;
    const JsonValue* rs = config_field(root, prefix, "use_rslora");
    c->rslora = rs && rs->type == JSON_TRUE;
    c->rank_pattern = config_field(root, prefix, "rank_pattern");
    c->alpha_pattern = config_field(root, prefix, "alpha_pattern");
    if (check_pattern(c->rank_pattern, "rank_pattern", 1, c, err) || check_pattern(c->alpha_pattern, "alpha_pattern", 0, c, err))
        return -1;
    return 0;
}

// peft utils/other.py get_pattern_key: re.match(rf"(.*\.)?({key})$", name) for each key in order.
// For a plain key that is: the name itself, or the name ends in "." + key; "^key": the name itself.
static const JsonValue* pattern_value(const JsonValue* patterns, const char* name) {
    if (!patterns || patterns->type != JSON_OBJECT) return NULL;
    size_t n = strlen(name);
    for (size_t i = 0; i < patterns->length; i++) {
        const char* k = patterns->keys[i];
        if (k[0] == '^') {
            if (strcmp(k + 1, name) == 0) return &patterns->items[i];
            continue;
        }
        size_t m = strlen(k);
        if (strcmp(k, name) == 0 || (n > m && name[n - m - 1] == '.' && strcmp(name + n - m, k) == 0)) return &patterns->items[i];
    }
    return NULL;
}

// ----------------------------------------------------------------------------
// Reading one .safetensors file

typedef struct {
    char* module; // key without suffix
    Part part;
    const SafeTensor* t;
} KeyEntry;

static int cmp_entry(const void* a, const void* b) {
    const KeyEntry *x = a, *y = b;
    int c = strcmp(x->module, y->module);
    return c ? c : (int)x->part - (int)y->part;
}

static const char* shape_of(char* buf, size_t cap, const SafeTensor* t) { return shape_string(buf, cap, t->rank, t->shape); }

static int is_float_dtype(DType d) { return d == DT_F32 || d == DT_F16 || d == DT_BF16 || d == DT_F64; }

static float* tensor_f32(const SafeTensor* t) {
    size_t n = safetensor_numel(t);
    float* out = xmalloc((n ? n : 1) * sizeof(float));
    convert_to_f32(out, t->data, t->dtype, n);
    return out;
}

static void path_dir(char* out, size_t cap, const char* path) {
    const char* slash = strrchr(path, '/');
    if (!slash) snprintf(out, cap, ".");
    else snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

static const char* path_base(const char* path) {
    const char* slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

// Appends a sentence to l->note ("; " between sentences; a PEFT folder may add one per component).
static void add_note(Lora* l, const char* text) {
    size_t used = strlen(l->note);
    snprintf(l->note + used, sizeof(l->note) - used, "%s%s", used ? "; " : "", text);
}

// Which model a PEFT adapter adapts: adapter_config.json's auto_mapping.base_model_class (peft
// records the class it wrapped), else the name of the folder the file is in.
static int peft_model(const JsonValue* config, const char* file, char* err) {
    const JsonValue* am = config ? json_get(config, "auto_mapping") : NULL;
    const char* cls = am ? json_get_string(am, "base_model_class") : NULL;
    if (cls) {
        if (strcmp(cls, "UNet2DConditionModel") == 0) return LORA_UNET;
        if (strcmp(cls, "CLIPTextModel") == 0) return LORA_TE1;
        if (strcmp(cls, "CLIPTextModelWithProjection") == 0) return LORA_TE2;
        return set_error(err, "%s: the PEFT adapter is for a %s, not an SDXL UNet or text encoder", file, cls);
    }
    char dir[4096];
    path_dir(dir, sizeof(dir), file);
    for (int m = 0; m < LORA_MODELS; m++)
        if (strcmp(path_base(dir), component_name[m]) == 0) return m;
    return set_error(err, "%s: cannot tell which model the PEFT adapter is for (adapter_config.json names no "
                          "auto_mapping.base_model_class, and the folder is not unet, text_encoder or text_encoder_2)", file);
}

// One module from its tensors (part[PART_DOWN], [PART_UP], [PART_ALPHA] or NULL): checks the
// shapes, works out alpha and the factor, and copies the weights to f32.
static int make_module(LoraModule* mod, const char* path, const char* name, const SafeTensor* const part[3], LoraModel model,
                       const AdapterConfig* config, char* err) {
    const SafeTensor *down = part[PART_DOWN], *up = part[PART_UP], *alpha = part[PART_ALPHA];
    char s1[96], s2[96];
    memset(mod, 0, sizeof(*mod));
    if (!down || !up)
        return set_error(err, "%s: LoRA module '%s' has no %s weight (only '%s')", path, name, !down ? "down" : "up",
                         (down ? down : up ? up : alpha)->name);
    if (!is_float_dtype(down->dtype) || !is_float_dtype(up->dtype))
        return set_error(err, "%s: LoRA module '%s': weights of dtype %s, expected a float type", path, name,
                         dtype_name(is_float_dtype(down->dtype) ? up->dtype : down->dtype));
    // down (rank, in[, kh, kw]), up (out, rank[, 1, 1])
    int ok = (down->rank == 2 || down->rank == 4) && (up->rank == 2 || up->rank == 4) && down->shape[0] > 0 &&
             down->shape[0] == up->shape[1] && (up->rank == 2 || (up->shape[2] == 1 && up->shape[3] == 1));
    if (ok && down->shape[0] > LORA_MAX_RANK)
        return set_error(err, "%s: LoRA module '%s' has rank %lld, above %d", path, name, (long long)down->shape[0],
                         LORA_MAX_RANK);
    if (!ok)
        return set_error(err, "%s: LoRA module '%s': down %s and up %s are not (rank, in[, kh, kw]) and (out, rank[, 1, 1])",
                         path, name, shape_of(s1, sizeof(s1), down), shape_of(s2, sizeof(s2), up));
    int rank = (int)down->shape[0];
    // alpha: the .alpha tensor (kohya), the adapter config (PEFT, diffusers metadata), else rank
    double a = rank;
    int rslora = 0;
    if (alpha) {
        if (safetensor_numel(alpha) != 1 || alpha->dtype == DT_BOOL)
            return set_error(err, "%s: '%s' must hold one number, not %s %s", path, alpha->name, dtype_name(alpha->dtype),
                             shape_of(s1, sizeof(s1), alpha));
        float v;
        convert_to_f32(&v, alpha->data, alpha->dtype, 1);
        a = v;
    } else if (config->present) {
        // patterns match the module's path in its model: the key without the file's prefix
        const char* path_in_model = name + strlen(key_prefixes[key_prefix(name)].prefix);
        const JsonValue* rv = pattern_value(config->rank_pattern, path_in_model);
        const JsonValue* av = pattern_value(config->alpha_pattern, path_in_model);
        double r_cfg = rv ? rv->number : (double)config->r;
        if (r_cfg != rank) // peft would build an r_cfg layer and fail to load these tensors into it
            return set_error(err, "%s: LoRA module '%s' has rank %d, but %s says r = %g for it", path, name, rank, config->where,
                             r_cfg);
        a = av ? av->number : config->lora_alpha;
        rslora = config->rslora;
    }
    if (!(fabs(a) <= LORA_MAX_ALPHA)) // NaN fails too
        return set_error(err, "%s: LoRA module '%s' has alpha %g, outside [-%g, %g]", path, name, a, LORA_MAX_ALPHA,
                         LORA_MAX_ALPHA);
    mod->model = model;
    mod->rank = rank;
    mod->alpha = (float)a;
    // peft's scaling, computed in double as Python does; rounded to f32 only at the merge
    mod->factor = rslora ? a / sqrt((double)rank) : a / rank;
    mod->name = xstrdup(name);
    mod->down_dims = down->rank;
    mod->up_dims = up->rank;
    memcpy(mod->down_shape, down->shape, sizeof(int64_t) * (size_t)down->rank);
    memcpy(mod->up_shape, up->shape, sizeof(int64_t) * (size_t)up->rank);
    mod->down = tensor_f32(down);
    mod->up = tensor_f32(up);
    return 0;
}

static int read_lora_file(Lora* l, const char* path, char* err) {
    SafeTensors st;
    if (safetensors_open(&st, path, err) != 0) return -1;
    int rc = -1, file_index = l->file_count;
    KeyEntry* entries = NULL;
    int n_entries = 0;
    JsonDoc config_doc;
    int have_config_doc = 0;
    AdapterConfig config[LORA_MODELS];
    memset(config, 0, sizeof(config));
    int peft_target = -1;
    char buf[4400];

    if (st.count == 0) {
        set_error(err, "%s: no tensors, not a LoRA", path);
        goto done;
    }
    // the format: every key must have the first key's kind of prefix
    int p0 = key_prefix(st.tensors[0].name);
    if (p0 < 0) {
        set_error(err, "%s: unknown key '%s' (not a kohya, diffusers or PEFT LoRA key)", path, st.tensors[0].name);
        goto done;
    }
    LoraFormat format = key_prefixes[p0].format;
    if (l->file_count > 0 && format != l->format) {
        set_error(err, "%s: a %s LoRA beside a %s one", path, format_label[format], format_label[l->format]);
        goto done;
    }
    l->format = format;
    l->files = xrealloc(l->files, (size_t)(l->file_count + 1) * sizeof(char*));
    l->files[l->file_count++] = xstrdup(path);

    // the alphas: PEFT's adapter_config.json beside the file, or diffusers' metadata
    if (format == LORA_PEFT) {
        char dir[4096], cfg_path[4200];
        path_dir(dir, sizeof(dir), path);
        snprintf(cfg_path, sizeof(cfg_path), "%s/adapter_config.json", dir);
        if (path_is_file(cfg_path)) {
            if (json_read_file(&config_doc, cfg_path, err) != 0) goto done;
            have_config_doc = 1;
        } else {
            snprintf(buf, sizeof(buf), "%s: no adapter_config.json beside it, so alpha = rank (scale 1 per unit strength)", path);
            add_note(l, buf);
        }
        peft_target = peft_model(have_config_doc ? &config_doc.root : NULL, path, err);
        if (peft_target < 0) goto done;
        if (have_config_doc && adapter_config_get(&config[peft_target], &config_doc.root, "", cfg_path, err) != 0) goto done;
    } else if (format == LORA_DIFFUSERS) {
        const char* meta = safetensors_metadata(&st, "lora_adapter_metadata");
        if (meta) {
            snprintf(buf, sizeof(buf), "%s (lora_adapter_metadata)", path);
            char jerr[ERR_MAX];
            if (json_parse(&config_doc, meta, strlen(meta), jerr) != 0) {
                set_error(err, "%s: %s", buf, jerr);
                goto done;
            }
            have_config_doc = 1;
            for (int m = 0; m < LORA_MODELS; m++) {
                char prefix[32];
                snprintf(prefix, sizeof(prefix), "%s.", component_name[m]);
                if (adapter_config_get(&config[m], &config_doc.root, prefix, buf, err) != 0) goto done;
            }
        }
    } else {
        const char* dim = safetensors_metadata(&st, "ss_network_dim");
        const char* alpha = safetensors_metadata(&st, "ss_network_alpha");
        if (dim) snprintf(l->network_dim, sizeof(l->network_dim), "%s", dim);
        if (alpha) snprintf(l->network_alpha, sizeof(l->network_alpha), "%s", alpha);
    }

    // split every key into module + part
    entries = xcalloc((size_t)st.count, sizeof(KeyEntry));
    for (int i = 0; i < st.count; i++) {
        const SafeTensor* t = &st.tensors[i];
        int p = key_prefix(t->name);
        if (p < 0 || key_prefixes[p].format != format) {
            set_error(err, "%s: unknown key '%s' (the file's first key '%s' is %s)", path, t->name, st.tensors[0].name,
                      format_label[format]);
            goto done;
        }
        int s = -1;
        for (int j = 0; j < (int)(sizeof(key_suffixes) / sizeof(key_suffixes[0])) && s < 0; j++)
            if ((key_suffixes[j].formats & (1u << format)) && ends_with(t->name, key_suffixes[j].suffix)) s = j;
        if (s < 0) {
            if (strstr(t->name, "dora_scale") || strstr(t->name, "lora_magnitude_vector"))
                set_error(err, "%s: key '%s' belongs to a DoRA adapter, which is not supported", path, t->name);
            else
                set_error(err, "%s: unknown key '%s' (not a %s LoRA down, up or alpha tensor)", path, t->name, format_label[format]);
            goto done;
        }
        size_t len = strlen(t->name) - strlen(key_suffixes[s].suffix);
        if (len <= strlen(key_prefixes[p].prefix)) {
            set_error(err, "%s: unknown key '%s' (no module name)", path, t->name);
            goto done;
        }
        entries[n_entries].module = xmalloc(len + 1);
        memcpy(entries[n_entries].module, t->name, len);
        entries[n_entries].module[len] = '\0';
        entries[n_entries].part = key_suffixes[s].part;
        entries[n_entries].t = t;
        n_entries++;
    }
    qsort(entries, (size_t)n_entries, sizeof(KeyEntry), cmp_entry);

    // one module per run of equal names
    for (int i = 0; i < n_entries;) {
        int j = i;
        const SafeTensor* part[3] = {NULL, NULL, NULL};
        for (; j < n_entries && strcmp(entries[j].module, entries[i].module) == 0; j++) {
            if (part[entries[j].part]) {
                set_error(err, "%s: LoRA module '%s' has two %s tensors ('%s' and '%s')", path, entries[i].module,
                          entries[j].part == PART_DOWN ? "down" : entries[j].part == PART_UP ? "up" : "alpha",
                          part[entries[j].part]->name, entries[j].t->name);
                goto done;
            }
            part[entries[j].part] = entries[j].t;
        }
        LoraModel model = format == LORA_PEFT ? (LoraModel)peft_target : (LoraModel)key_prefixes[key_prefix(entries[i].module)].model;
        LoraModule mod;
        if (make_module(&mod, path, entries[i].module, part, model, &config[model], err) != 0) goto done;
        mod.file = file_index;
        l->modules = xrealloc(l->modules, (size_t)(l->count + 1) * sizeof(LoraModule));
        l->modules[l->count++] = mod;
        i = j;
    }
    rc = 0;
done:
    for (int i = 0; i < n_entries; i++) free(entries[i].module);
    free(entries);
    if (have_config_doc) json_free(&config_doc);
    safetensors_close(&st);
    return rc;
}

// ----------------------------------------------------------------------------
// lora_load: a file, or a folder of one of the known layouts

int lora_load(Lora* l, const char* path, char* err) {
    memset(l, 0, sizeof(*l));
    snprintf(l->path, sizeof(l->path), "%s", path);
    int rc = 0;
    char file[4200];
    if (!path_is_dir(path)) {
        rc = read_lora_file(l, path, err);
    } else {
        snprintf(file, sizeof(file), "%s/pytorch_lora_weights.safetensors", path); // diffusers' save_lora_weights
        int found = 0;
        if (path_is_file(file)) {
            found = 1;
            rc = read_lora_file(l, file, err);
        }
        snprintf(file, sizeof(file), "%s/adapter_model.safetensors", path); // one PEFT adapter
        if (rc == 0 && !found && path_is_file(file)) {
            found = 1;
            rc = read_lora_file(l, file, err);
        }
        for (int m = 0; m < LORA_MODELS && rc == 0 && !found; m++) { // PEFT adapters per component
            snprintf(file, sizeof(file), "%s/%s/adapter_model.safetensors", path, component_name[m]);
            if (path_is_file(file)) rc = read_lora_file(l, file, err);
        }
        if (rc == 0 && !found && l->file_count == 0)
            rc = set_error(err, "%s: no LoRA in this folder (no pytorch_lora_weights.safetensors, adapter_model.safetensors, "
                                "or unet/, text_encoder/, text_encoder_2/ adapters)", path);
    }
    if (rc == 0 && l->count == 0) rc = set_error(err, "%s: the LoRA has no modules", path);
    if (rc != 0) lora_free(l);
    return rc;
}

void lora_free(Lora* l) {
    for (int i = 0; i < l->count; i++) {
        free(l->modules[i].name);
        free(l->modules[i].down);
        free(l->modules[i].up);
    }
    free(l->modules);
    for (int i = 0; i < l->file_count; i++) free(l->files[i]);
    free(l->files);
    memset(l, 0, sizeof(*l));
}

void lora_describe(const Lora* l, char* buf, size_t cap) {
    int per_model[LORA_MODELS] = {0}, rmin = 0, rmax = 0;
    float amin = 0, amax = 0;
    for (int i = 0; i < l->count; i++) {
        const LoraModule* m = &l->modules[i];
        per_model[m->model]++;
        if (i == 0 || m->rank < rmin) rmin = m->rank;
        if (i == 0 || m->rank > rmax) rmax = m->rank;
        if (i == 0 || m->alpha < amin) amin = m->alpha;
        if (i == 0 || m->alpha > amax) amax = m->alpha;
    }
    int n = snprintf(buf, cap, "%s, %d modules (", format_label[l->format], l->count);
    const char* sep = "";
    for (int m = 0; m < LORA_MODELS; m++) {
        if (!per_model[m] || n < 0 || (size_t)n >= cap) continue;
        n += snprintf(buf + n, cap - (size_t)n, "%s%s %d", sep, model_short[m], per_model[m]);
        sep = ", ";
    }
    if (n < 0 || (size_t)n >= cap) return;
    if (rmin == rmax) n += snprintf(buf + n, cap - (size_t)n, "), rank %d", rmin);
    else n += snprintf(buf + n, cap - (size_t)n, "), rank %d..%d", rmin, rmax);
    if (n < 0 || (size_t)n >= cap) return;
    if (amin == amax) n += snprintf(buf + n, cap - (size_t)n, ", alpha %g", amin);
    else n += snprintf(buf + n, cap - (size_t)n, ", alpha %g..%g", amin, amax);
    if (n >= 0 && (size_t)n < cap && l->network_dim[0])
        n += snprintf(buf + n, cap - (size_t)n, ", ss_network_dim %s", l->network_dim);
    if (n >= 0 && (size_t)n < cap && l->network_alpha[0])
        snprintf(buf + n, cap - (size_t)n, ", ss_network_alpha %s", l->network_alpha);
}

// ----------------------------------------------------------------------------
// Merging

typedef struct {
    char name[LORA_NAME_MAX];
    int param; // index into the model's Weights
} NameEntry;

static int cmp_name(const void* a, const void* b) { return strcmp(((const NameEntry*)a)->name, ((const NameEntry*)b)->name); }

// Every spelling of every parameter of one model in the LoRA's format, sorted, built once per merge.
static int name_table(NameEntry** out, int* count, LoraFormat f, LoraModel m, const Weights* w, const UnetConfig* ucfg,
                      char* err) {
    NameEntry* t = xcalloc((size_t)w->count * LORA_MAX_SPELLINGS + 1, sizeof(NameEntry));
    int n = 0;
    for (int i = 0; i < w->count; i++) {
        const Param* p = &w->params[i];
        if (p->rank != 2 && p->rank != 4) continue;
        char names[LORA_MAX_SPELLINGS][LORA_NAME_MAX];
        int k = lora_param_names(f, m, ucfg, p->name, names);
        for (int j = 0; j < k; j++) {
            memcpy(t[n].name, names[j], LORA_NAME_MAX);
            t[n++].param = i;
        }
    }
    qsort(t, (size_t)n, sizeof(NameEntry), cmp_name);
    // two parameters with one spelling would make the lookup a guess; the tests check that every
    // architecture here has none, and this keeps it so
    for (int i = 1; i < n; i++)
        if (strcmp(t[i].name, t[i - 1].name) == 0 && t[i].param != t[i - 1].param) {
            set_error(err, "%s LoRA names: '%s' would stand for both '%s' and '%s'", model_label[m], t[i].name,
                      w->params[t[i].param].name, w->params[t[i - 1].param].name);
            free(t);
            return -1;
        }
    *out = t;
    *count = n;
    return 0;
}

static int64_t dim_or_1(const int64_t* shape, int dims, int i) { return i < dims ? shape[i] : 1; }

int lora_merge(const Lora* l, float scale, Unet* unet, ClipText* te1, ClipText* te2, char* err) {
    const Weights* weights[LORA_MODELS] = {unet ? &unet->w : NULL, te1 ? &te1->w : NULL, te2 ? &te2->w : NULL};
    const UnetConfig* ucfg = unet ? &unet->cfg : NULL;
    NameEntry* table[LORA_MODELS] = {NULL, NULL, NULL};
    int table_n[LORA_MODELS] = {0, 0, 0};
    int* used[LORA_MODELS] = {NULL, NULL, NULL}; // per parameter: 1 + the module adapting it, or 0
    const Param** target = xcalloc((size_t)l->count + 1, sizeof(const Param*));
    DType* target_dtype = xcalloc((size_t)l->count + 1, sizeof(DType)); // the storage of its model
    int rc = -1;
    char s1[96], s2[96], s3[96];

    // 1. every module names a parameter of a model we were given, once, with shapes that fit
    for (int i = 0; i < l->count; i++) {
        const LoraModule* mod = &l->modules[i];
        const char* file = l->files[mod->file];
        int m = mod->model;
        if (!weights[m]) {
            set_error(err, "%s: LoRA module '%s' is for the %s, and no %s was given", file, mod->name, model_label[m], model_label[m]);
            goto done;
        }
        if (!table[m]) {
            if (name_table(&table[m], &table_n[m], l->format, m, weights[m], ucfg, err) != 0) goto done;
            used[m] = xcalloc((size_t)weights[m]->count + 1, sizeof(int));
        }
        NameEntry key;
        snprintf(key.name, sizeof(key.name), "%s", mod->name);
        const NameEntry* hit = bsearch(&key, table[m], (size_t)table_n[m], sizeof(NameEntry), cmp_name);
        if (!hit) {
            set_error(err, "%s: LoRA module '%s' matches no weight of the %s", file, mod->name, model_label[m]);
            goto done;
        }
        const Param* p = &weights[m]->params[hit->param];
        if (used[m][hit->param]) {
            set_error(err, "%s: LoRA modules '%s' and '%s' both adapt %s parameter '%s'", file, l->modules[used[m][hit->param] - 1].name,
                      mod->name, model_short[m], p->name);
            goto done;
        }
        used[m][hit->param] = i + 1;
        // W (out, in[, kh, kw]); down (rank, in[, kh, kw]); up (out, rank[, 1, 1]). Missing trailing
        // dims count as 1, so a 1x1 conv may carry a linear-shaped LoRA and the other way round.
        int fits = mod->down_shape[1] == p->shape[1] && mod->up_shape[0] == p->shape[0];
        for (int d = 2; d < 4; d++) fits = fits && dim_or_1(mod->down_shape, mod->down_dims, d) == dim_or_1(p->shape, p->rank, d);
        if (!fits) {
            set_error(err, "%s: LoRA module '%s' does not fit %s parameter '%s' %s: down %s, up %s", file, mod->name, model_short[m],
                      p->name, shape_string(s1, sizeof(s1), p->rank, p->shape),
                      shape_string(s2, sizeof(s2), mod->down_dims, mod->down_shape),
                      shape_string(s3, sizeof(s3), mod->up_dims, mod->up_shape));
            goto done;
        }
        target[i] = p;
        target_dtype[i] = weights[m]->dtype;
    }
    rc = 0;
    // scale 0 adds nothing: skipping the arithmetic keeps the weights bit-identical (W + 0 * x
    // would turn -0.0 into +0.0 and NaN/inf products into NaN)
    if (scale == 0.0f) goto done;

    // 2. W += s * up @ down on the backend: up (out, rank) @ down (rank, in*kh*kw) is (out, in*kh*kw),
    // which is W's row-major layout for linears and convs alike (peft's conv2d(A^T, B) is the same sum).
    // 16-bit weights are widened to f32 for the sum and rounded once, as diffusers' fuse_lora does
    // (w.float() + delta, then .to(dtype)).
    size_t most = 0;
    for (int i = 0; i < l->count; i++) {
        const LoraModule* mod = &l->modules[i];
        size_t k = (size_t)(target[i]->numel / (size_t)target[i]->shape[0]);
        size_t need = (size_t)mod->rank * k + (size_t)mod->up_shape[0] * (size_t)mod->rank;
        if (target_dtype[i] != DT_F32) need += target[i]->numel;
        if (need > most) most = need;
    }
    float* scratch = device_malloc(most * sizeof(float));
    for (int i = 0; i < l->count; i++) {
        const LoraModule* mod = &l->modules[i];
        const Param* p = target[i];
        int out = (int)p->shape[0], r = mod->rank;
        int k = (int)(p->numel / (size_t)out);
        float* d_down = scratch;
        float* d_up = scratch + (size_t)r * (size_t)k;
        float* w32 = target_dtype[i] == DT_F32 ? p->data : d_up + (size_t)out * (size_t)r;
        copy_to_device(d_down, mod->down, (size_t)r * (size_t)k * sizeof(float));
        copy_to_device(d_up, mod->up, (size_t)out * (size_t)r * sizeof(float));
        if (w32 != p->data) cast_forward(w32, DT_F32, p->data, target_dtype[i], p->numel);
        // the multiplier as peft applies it: scaling (double) times the strength, rounded to f32
        float s = (float)(mod->factor * (double)scale);
        matmul_forward(w32, d_up, d_down, 1, out, k, r, 0, 0, s, 1.0f, DT_F32);
        if (w32 != p->data) cast_forward(p->data, target_dtype[i], w32, DT_F32, p->numel);
    }
    device_synchronize();
    device_free(scratch);
done:
    for (int m = 0; m < LORA_MODELS; m++) {
        free(table[m]);
        free(used[m]);
    }
    free(target);
    free(target_dtype);
    return rc;
}

// ----------------------------------------------------------------------------
// Writing

int lora_write(const char* path, LoraFormat format, const UnetConfig* ucfg, const LoraWriteModule* modules, int count,
               DType dtype, const char* const* meta_keys, const char* const* meta_values, int meta_count, char* err) {
    if (format != LORA_KOHYA && format != LORA_DIFFUSERS) return set_error(err, "%s: LoRA files are written as kohya or diffusers", path);
    if (dtype != DT_F32 && dtype != DT_F16 && dtype != DT_BF16) return set_error(err, "%s: LoRA tensors are F32, F16 or BF16", path);
    int per_module = format == LORA_KOHYA ? 3 : 2;
    SafeTensorOut* out = xcalloc((size_t)count * per_module, sizeof(SafeTensorOut));
    char (*names)[LORA_NAME_MAX + 32] = xcalloc((size_t)count * per_module, sizeof(*names));
    void** stored = xcalloc((size_t)count * 2, sizeof(void*));
    float* alphas = xcalloc((size_t)count, sizeof(float));
    int n = 0, rc = 0;
    for (int i = 0; i < count && rc == 0; i++) {
        const LoraWriteModule* m = &modules[i];
        char spellings[LORA_MAX_SPELLINGS][LORA_NAME_MAX];
        if (lora_param_names(format, LORA_UNET, ucfg, m->param, spellings) == 0) {
            rc = set_error(err, "%s: '%s' is not a UNet parameter a LoRA can adapt", path, m->param);
            break;
        }
        const char* suffix_down = format == LORA_KOHYA ? ".lora_down.weight" : ".lora.down.weight";
        const char* suffix_up = format == LORA_KOHYA ? ".lora_up.weight" : ".lora.up.weight";
        size_t n_down = (size_t)m->rank * m->in * m->k * m->k, n_up = (size_t)m->out * m->rank;
        stored[2 * i] = xmalloc(n_down * dtype_size(dtype));
        stored[2 * i + 1] = xmalloc(n_up * dtype_size(dtype));
        convert_from_f32(stored[2 * i], dtype, m->down, n_down);
        if (format == LORA_DIFFUSERS && m->alpha != (float)m->rank) {
            // no alphas in this format: fold alpha / rank into up, which every loader then applies at 1
            float* folded = xmalloc(sizeof(float) * n_up);
            for (size_t k = 0; k < n_up; k++) folded[k] = m->up[k] * (m->alpha / (float)m->rank);
            convert_from_f32(stored[2 * i + 1], dtype, folded, n_up);
            free(folded);
        } else {
            convert_from_f32(stored[2 * i + 1], dtype, m->up, n_up);
        }
        snprintf(names[n], sizeof(names[n]), "%s%s", spellings[0], suffix_down);
        out[n] = m->conv ? (SafeTensorOut){names[n], dtype, 4, {m->rank, m->in, m->k, m->k}, stored[2 * i]}
                         : (SafeTensorOut){names[n], dtype, 2, {m->rank, m->in}, stored[2 * i]};
        n++;
        snprintf(names[n], sizeof(names[n]), "%s%s", spellings[0], suffix_up);
        out[n] = m->conv ? (SafeTensorOut){names[n], dtype, 4, {m->out, m->rank, 1, 1}, stored[2 * i + 1]}
                         : (SafeTensorOut){names[n], dtype, 2, {m->out, m->rank}, stored[2 * i + 1]};
        n++;
        if (format == LORA_KOHYA) {
            alphas[i] = m->alpha;
            snprintf(names[n], sizeof(names[n]), "%s.alpha", spellings[0]);
            out[n] = (SafeTensorOut){names[n], DT_F32, 0, {0}, &alphas[i]};
            n++;
        }
    }
    if (rc == 0) {
        const char* pt_key[] = {"format"};
        const char* pt_value[] = {"pt"};
        if (format == LORA_DIFFUSERS) rc = safetensors_write(path, out, n, pt_key, pt_value, 1, err);
        else rc = safetensors_write(path, out, n, meta_keys, meta_values, meta_count, err);
    }
    for (int i = 0; i < 2 * count; i++) free(stored[i]);
    free(stored);
    free(alphas);
    free(names);
    free(out);
    return rc;
}
