// tests/test_lora.c: LoRA files (lora.c) in the kohya, diffusers and PEFT formats, merged into the
// tiny SDXL and compared with what diffusers/peft made of the same files
// (scripts/make_golden_lora.py -> tests/golden/lora/), plus key naming and bad input.
//
// Tolerances. Merged weights: W + s * (up @ down) in f32 on both sides; the products have rank 2..8
// terms, so only their summation order (and torch's possible FMA) differs: a few ulp of W. Network
// outputs after the merge: the same tolerances as tests/test_sdxl.c gives the unmerged networks
// (f32 summation-order noise compounding over depth), since the merged weights agree to a few ulp.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../clip.h"
#include "../common.h"
#include "../json.h"
#include "../lora.h"
#include "../ops.h"
#include "../sdxl.h"
#include "check.h"

#define SCALE 0.4f      // the strength the goldens were fused at
#define TMP "build/test_lora"

static const char* model_short_name(int m) { return m == LORA_UNET ? "unet" : m == LORA_TE1 ? "te1" : "te2"; }

static char g_buf[4096];
static const char* golden(const char* sub) {
    snprintf(g_buf, sizeof(g_buf), "%s", golden_path(sub));
    return g_buf;
}

typedef struct {
    Unet unet;
    ClipText te1, te2;
} Tiny;

// Fresh tiny models (tests/golden/tiny_sdxl) on the runner's backend.
static int tiny_load(Tiny* t) {
    char err[ERR_MAX] = "", dir[4096], path[4200];
    snprintf(dir, sizeof(dir), "%s", golden_path("tiny_sdxl"));
    snprintf(path, sizeof(path), "%s/unet", dir);
    if (!check_true(unet_load(&t->unet, path, NULL, DT_F32, err) == 0, "load tiny unet: %s", err)) return 0;
    snprintf(path, sizeof(path), "%s/text_encoder", dir);
    if (!check_true(clip_text_load(&t->te1, path, NULL, DT_F32, err) == 0, "load tiny text_encoder: %s", err)) {
        unet_free(&t->unet);
        return 0;
    }
    snprintf(path, sizeof(path), "%s/text_encoder_2", dir);
    if (!check_true(clip_text_load(&t->te2, path, NULL, DT_F32, err) == 0, "load tiny text_encoder_2: %s", err)) {
        unet_free(&t->unet);
        clip_text_free(&t->te1);
        return 0;
    }
    return 1;
}

static void tiny_free(Tiny* t) {
    unet_free(&t->unet);
    clip_text_free(&t->te1);
    clip_text_free(&t->te2);
}

// Floats in all of a model's parameters (w->total also counts the alignment gaps between them).
static size_t param_floats(const Weights* w) {
    size_t n = 0;
    for (int i = 0; i < w->count; i++) n += w->params[i].numel;
    return n;
}

// Every parameter of a model, copied to the host one after the other (for bit comparisons).
static float* snapshot(const Weights* w) {
    float* out = xmalloc(param_floats(w) * sizeof(float) + 1);
    size_t at = 0;
    for (int i = 0; i < w->count; i++) {
        copy_to_host(out + at, w->params[i].data, w->params[i].numel * sizeof(float));
        at += w->params[i].numel;
    }
    return out;
}

// lora_load as a check: the label names the path, and the error only when there is one.
static int load_ok(Lora* l, const char* path, char* err) {
    err[0] = '\0';
    int rc = lora_load(l, path, err);
    check_true(rc == 0, "lora_load %s%s%s", path, rc ? ": " : "", rc ? err : "");
    return rc == 0;
}

// The text encoder on row 0 of the golden ids; compares hidden_states[-2] (and the pooled projection).
static void check_te(const ClipText* m, const SafeTensors* tiny_ref, const SafeTensors* ref, const char* ids_name,
                     const char* want_penult, const char* want_pooled) {
    const SafeTensor* ids_t = safetensors_find(tiny_ref, ids_name);
    if (!check_true(ids_t != NULL, "golden %s present", ids_name)) return;
    int32_t ids[77];
    memcpy(ids, ids_t->data, sizeof(ids));
    int D = m->cfg.hidden;
    Arena scratch;
    arena_init(&scratch, "clip scratch", sizeof(float) * clip_text_scratch_floats(&m->cfg, 1, 77), backend_current() == BACKEND_CUDA);
    float* penult = backend_alloc((size_t)77 * D);
    float* pooled = want_pooled ? backend_alloc((size_t)m->cfg.projection_dim) : NULL;
    clip_text_forward(m, ids, 1, 77, penult, pooled, &scratch);
    float* got = from_backend(penult, (size_t)77 * D);
    float* want = golden_f32(ref, want_penult, NULL);
    char label[128];
    snprintf(label, sizeof(label), "%s", want_penult);
    if (want) check_close(label, got, want, (size_t)77 * D, 1e-5f, 1e-4f); // as test_sdxl.c
    free(got);
    free(want);
    if (want_pooled) {
        got = from_backend(pooled, (size_t)m->cfg.projection_dim);
        want = golden_f32(ref, want_pooled, NULL);
        if (want) check_close(want_pooled, got, want, (size_t)m->cfg.projection_dim, 1e-5f, 1e-4f);
        free(got);
        free(want);
    }
    arena_free(&scratch);
}

// The UNet on the golden unet_6x9 inputs.
static void check_unet_out(const Unet* u, const SafeTensors* tiny_ref, const SafeTensors* ref, const char* want_name) {
    int N = 2, h = 6, w = 9, Lctx = 77;
    size_t n = (size_t)N * 4 * h * w;
    float* sample = golden_f32(tiny_ref, "unet_6x9.sample", NULL);
    float* t = golden_f32(tiny_ref, "unet_6x9.t", NULL);
    float* ctx = golden_f32(tiny_ref, "unet_6x9.ctx", NULL);
    float* text = golden_f32(tiny_ref, "unet_6x9.text_embeds", NULL);
    float* ids = golden_f32(tiny_ref, "unet_6x9.time_ids", NULL);
    float* want = golden_f32(ref, want_name, NULL);
    if (sample && t && ctx && text && ids && want) {
        Arena act;
        arena_init(&act, "unet activations", unet_activation_bytes(&u->cfg, N, h, w, Lctx, u->w.dtype),
                   backend_current() == BACKEND_CUDA);
        float* d_out = backend_alloc(n);
        // the pooled text is what the added conditioning holds besides the six size/crop ids
        size_t pooled = (size_t)(u->cfg.projection_class_embeddings_input_dim - 6 * u->cfg.addition_time_embed_dim);
        unet_forward(u, d_out, to_backend(sample, n), t, to_backend(ctx, (size_t)N * Lctx * u->cfg.cross_attention_dim), Lctx,
                     to_backend(text, (size_t)N * pooled), ids, N, h, w, &act);
        float* got = from_backend(d_out, n);
        check_close(want_name, got, want, n, 2e-5f, 1e-4f); // as test_sdxl.c
        free(got);
        arena_free(&act);
    }
    free(sample); free(t); free(ctx); free(text); free(ids); free(want);
}

// The fused weights of variant `v` saved in ref.safetensors ("a.unet.<param>", "a.te1.<param>", ...).
static void check_merged_weights(const Tiny* t, const SafeTensors* ref, const char* v) {
    size_t vl = strlen(v);
    int compared = 0;
    for (int i = 0; i < ref->count; i++) {
        const char* name = ref->tensors[i].name;
        if (strncmp(name, v, vl) != 0 || name[vl] != '.' || strcmp(name + strlen(name) - 7, ".weight") != 0) continue;
        const char* rest = name + vl + 1;
        const Weights* w = strncmp(rest, "unet.", 5) == 0 ? &t->unet.w : strncmp(rest, "te1.", 4) == 0 ? &t->te1.w : &t->te2.w;
        const Param* p = weights_find(w, strchr(rest, '.') + 1);
        if (!check_true(p != NULL, "%s names a parameter", name)) continue;
        float* got = from_backend(p->data, p->numel);
        size_t n = 0;
        float* want = golden_f32(ref, name, &n);
        if (want && check_true(n == p->numel, "%s has %zu values", name, p->numel))
            check_close(name, got, want, n, 1e-6f, 1e-6f); // a few ulp: rank-4 products, summed in another order
        free(got);
        free(want);
        compared++;
    }
    check_true(compared >= 5, "variant %s: %d merged weights compared", v, compared);
}

// Loads `file` (a golden under tests/golden/lora), merges it at SCALE into fresh tiny models and
// compares weights and outputs with diffusers/peft.
static void check_variant(const char* v, const char* file, int has_te2) {
    SafeTensors ref, tiny_ref;
    if (!golden_open(&ref, "lora/ref.safetensors")) return;
    if (!golden_open(&tiny_ref, "tiny_sdxl_ref.safetensors")) return;
    Tiny t;
    char err[ERR_MAX] = "", sub[256], desc[512], path[4096];
    if (!tiny_load(&t)) return;
    snprintf(sub, sizeof(sub), "lora/%s", file);
    snprintf(path, sizeof(path), "%s", golden(sub));
    Lora l;
    if (load_ok(&l, path, err)) {
        lora_describe(&l, desc, sizeof(desc));
        printf("  %s: %s%s%s\n", file, desc, l.note[0] ? "; note: " : "", l.note);
        double t0 = now_seconds();
        int rc = lora_merge(&l, SCALE, &t.unet, &t.te1, has_te2 ? &t.te2 : NULL, err);
        check_true(rc == 0, "lora_merge at %.1f: %s (%.3f s)", SCALE, rc ? err : "ok", now_seconds() - t0);
        if (rc == 0) {
            char name[64];
            check_merged_weights(&t, &ref, v);
            snprintf(name, sizeof(name), "%s.unet_out", v);
            check_unet_out(&t.unet, &tiny_ref, &ref, name);
            char p1[64], p2[64], p3[64];
            snprintf(p1, sizeof(p1), "%s.te1.penultimate", v);
            check_te(&t.te1, &tiny_ref, &ref, "te1.ids", p1, NULL);
            if (has_te2) {
                snprintf(p2, sizeof(p2), "%s.te2.penultimate", v);
                snprintf(p3, sizeof(p3), "%s.te2.text_embeds", v);
                check_te(&t.te2, &tiny_ref, &ref, "te2.ids", p2, p3);
            }
        }
        lora_free(&l);
    }
    tiny_free(&t);
    safetensors_close(&tiny_ref);
    safetensors_close(&ref);
}

// variant a: diffusers' SDXL LoRA script defaults (q/k/v/out everywhere, rank 4 = alpha)
static void test_lora_a_diffusers(void) { check_variant("a", "a_diffusers.safetensors", 1); }
static void test_lora_a_peft(void) { check_variant("a", "a_peft", 1); }
static void test_lora_a_kohya_converter(void) { check_variant("a", "a_kohya.safetensors", 1); }
// variant b: alpha != rank, rank_pattern, alpha_pattern, use_rslora
static void test_lora_b_diffusers_metadata(void) { check_variant("b", "b_diffusers.safetensors", 1); }
static void test_lora_b_peft_config(void) { check_variant("b", "b_peft", 1); }
static void test_lora_b_kohya_sd_scripts(void) { check_variant("b", "b_kohya.safetensors", 1); }
// variant c: kohya LoCon (3x3 and 1x1 convs, ff, proj_in, time_emb_proj), text encoder 1 only
static void test_lora_c_kohya_locon(void) { check_variant("c", "c_kohya_locon.safetensors", 0); }

// A PEFT adapter folder given directly (one component) and the same file with no adapter_config.json
// beside it: alpha = rank, said in the note (variant a has alpha = rank, so the result is the same).
static void test_lora_peft_single_and_no_config(void) {
    SafeTensors ref, tiny_ref;
    if (!golden_open(&ref, "lora/ref.safetensors")) return;
    if (!golden_open(&tiny_ref, "tiny_sdxl_ref.safetensors")) return;
    char err[ERR_MAX] = "", src[4096];
    mkdir("build", 0755);
    mkdir(TMP, 0755);
    mkdir(TMP "/noconfig", 0755);
    mkdir(TMP "/noconfig/unet", 0755);
    snprintf(src, sizeof(src), "%s", golden("lora/a_peft/unet/adapter_model.safetensors"));
    uint8_t* data;
    size_t size;
    if (!check_true(read_file(src, &data, &size, err) == 0, "read %s", err)) return;
    check_true(write_file_atomic(TMP "/noconfig/unet/adapter_model.safetensors", data, size, err) == 0, "copy: %s", err);
    free(data);
    const char* paths[2] = {golden("lora/a_peft/unet"), TMP "/noconfig/unet/adapter_model.safetensors"};
    char first[4096];
    snprintf(first, sizeof(first), "%s", paths[0]);
    paths[0] = first;
    for (int k = 0; k < 2; k++) {
        Tiny t;
        if (!tiny_load(&t)) return;
        Lora l;
        if (load_ok(&l, paths[k], err)) {
            printf("  note: %s\n", l.note[0] ? l.note : "(none)");
            check_true((k == 1) == (strstr(l.note, "alpha = rank") != NULL), "a note about alpha exactly when the config is missing");
            check_true(lora_merge(&l, SCALE, &t.unet, NULL, NULL, err) == 0, "UNet-only adapter merges with no text encoders: %s", err);
            check_unet_out(&t.unet, &tiny_ref, &ref, "a.unet_out");
            lora_free(&l);
        }
        tiny_free(&t);
    }
    safetensors_close(&tiny_ref);
    safetensors_close(&ref);
}

// Merging at strength 0 still resolves and checks every module, and changes no bit.
static void test_lora_scale_zero_is_identity(void) {
    Tiny t;
    if (!tiny_load(&t)) return;
    const char* files[] = {"lora/a_kohya.safetensors", "lora/b_diffusers.safetensors", "lora/c_kohya_locon.safetensors"};
    float* before[3] = {snapshot(&t.unet.w), snapshot(&t.te1.w), snapshot(&t.te2.w)};
    const Weights* ws[3] = {&t.unet.w, &t.te1.w, &t.te2.w};
    char err[ERR_MAX] = "";
    for (int f = 0; f < 3; f++) {
        Lora l;
        if (!load_ok(&l, golden(files[f]), err)) continue;
        check_true(lora_merge(&l, 0.0f, &t.unet, &t.te1, &t.te2, err) == 0, "lora_merge %s at 0: %s", files[f], err);
        lora_free(&l);
    }
    const char* labels[3] = {"unet weights after three merges at 0", "te1 weights after merges at 0", "te2 weights after merges at 0"};
    for (int m = 0; m < 3; m++) {
        float* after = snapshot(ws[m]);
        check_bytes_equal(labels[m], after, before[m], param_floats(ws[m]) * sizeof(float));
        free(after);
        free(before[m]);
    }
    tiny_free(&t);
}

// A 16-bit UNet (the GPU's fp16 path) merges in f32 and rounds once, as diffusers' fuse_lora does:
// every weight ends within one f16 unit of the f32 model's merged weight.
static void test_lora_merge_into_fp16_unet(void) {
    char err[ERR_MAX] = "", path[4200];
    snprintf(path, sizeof(path), "%s/unet", golden_path("tiny_sdxl"));
    Tiny t; // the f32 UNet and the text encoders the file also adapts
    if (!tiny_load(&t)) return;
    Unet u16;
    if (!check_true(unet_load(&u16, path, NULL, DT_F16, err) == 0, "load tiny unet f16: %s", err)) {
        tiny_free(&t);
        return;
    }
    Unet* u32 = &t.unet;
    Lora l;
    if (load_ok(&l, golden("lora/c_kohya_locon.safetensors"), err)) { // linears and convs
        check_true(lora_merge(&l, SCALE, u32, &t.te1, NULL, err) == 0, "merge into the f32 UNet: %s", err[0] ? err : "ok");
        // te1 is merged a second time here; only the UNets are compared below
        check_true(lora_merge(&l, SCALE, &u16, &t.te1, NULL, err) == 0, "merge into the f16 UNet: %s", err[0] ? err : "ok");
        lora_free(&l);
    }
    size_t n = param_floats(&u32->w), at = 0;
    float* w32 = snapshot(&u32->w);
    float* w16 = xmalloc(sizeof(float) * n + 1);
    for (int i = 0; i < u16.w.count; i++) {
        const Param* q = &u16.w.params[i];
        uint16_t* bits = xmalloc(sizeof(uint16_t) * q->numel + 2);
        copy_to_host(bits, q->data, sizeof(uint16_t) * q->numel);
        convert_to_f32(w16 + at, bits, DT_F16, q->numel);
        free(bits);
        at += q->numel;
    }
    // the f32 file's weight rounded to f16 at load, then the merge's one rounding: at most one unit
    // of 2^-10 relative, and values below f16's normal range keep their absolute 2^-24 steps
    check_close("f16 UNet merged weights vs f32 merged weights", w16, w32, n, 6e-8f, 1.0f / 1024.0f);
    free(w32);
    free(w16);
    tiny_free(&t);
    unet_free(&u16);
}

// ----------------------------------------------------------------------------
// Key names

// A safetensors file under construction: tensors with owned f32 data.
typedef struct {
    SafeTensorOut t[4096];
    int n;
} FileOut;

static void out_add(FileOut* f, const char* name, int rank, const int64_t* shape, const float* values) {
    if (f->n == (int)(sizeof(f->t) / sizeof(f->t[0]))) fatal("test_lora: more than %d tensors in one test file", f->n);
    SafeTensorOut* o = &f->t[f->n++];
    memset(o, 0, sizeof(*o));
    o->name = xstrdup(name);
    o->dtype = DT_F32;
    o->rank = rank;
    size_t numel = 1;
    for (int i = 0; i < rank; i++) {
        o->shape[i] = shape[i];
        numel *= (size_t)shape[i];
    }
    float* d = xmalloc(numel * sizeof(float) + 1);
    memcpy(d, values, numel * sizeof(float));
    o->data = d;
}

// A rank-1 module whose product is the constant c: down = ones (1, in[, kh, kw]), up = c (out, 1).
static void out_add_module(FileOut* f, const char* module, const char* down_sfx, const char* up_sfx, const Param* p, float c,
                           int with_alpha) {
    char key[LORA_NAME_MAX + 64];
    int64_t dshape[4] = {1, p->shape[1], p->rank == 4 ? p->shape[2] : 1, p->rank == 4 ? p->shape[3] : 1};
    int64_t ushape[2] = {p->shape[0], 1};
    size_t dn = (size_t)(p->numel / (size_t)p->shape[0]);
    float* ones = xmalloc((dn > (size_t)p->shape[0] ? dn : (size_t)p->shape[0]) * sizeof(float));
    for (size_t i = 0; i < dn; i++) ones[i] = 1.0f;
    snprintf(key, sizeof(key), "%s%s", module, down_sfx);
    out_add(f, key, p->rank, dshape, ones);
    for (int64_t i = 0; i < p->shape[0]; i++) ones[i] = c;
    snprintf(key, sizeof(key), "%s%s", module, up_sfx);
    out_add(f, key, 2, ushape, ones);
    if (with_alpha) {
        float one = 1.0f;
        snprintf(key, sizeof(key), "%s.alpha", module);
        out_add(f, key, 0, NULL, &one);
    }
    free(ones);
}

static int fileout_write(FileOut* f, const char* path, const char* const* mk, const char* const* mv, int mn, char* err) {
    int rc = safetensors_write(path, f->t, f->n, mk, mv, mn, err);
    for (int i = 0; i < f->n; i++) {
        free((void*)f->t[i].name);
        free((void*)f->t[i].data);
    }
    f->n = 0;
    return rc;
}

// kohya's sd-scripts names of the UNet against the SGM keys diffusers' converter confirmed
// (tests/golden/sgm/unet_keys.json): "lora_unet_" + SGM module path with '.' -> '_', for every
// linear and conv weight; the second spelling is the diffusers path with '.' -> '_'.
static void test_lora_kohya_names_match_diffusers_sgm_keys(void) {
    JsonDoc doc;
    char err[ERR_MAX] = "", path[4200];
    if (!check_true(json_read_file(&doc, golden_path("sgm/unet_keys.json"), err) == 0, "read unet_keys.json: %s", err)) return;
    UnetConfig cfg;
    snprintf(path, sizeof(path), "%s/unet/config.json", golden_path("tiny_sdxl"));
    if (!check_true(unet_config_read(&cfg, path, err) == 0, "unet config: %s", err)) return;
    Unet u;
    unet_init_random(&u, &cfg, DT_F32, 1);
    int wrong = 0, linears = 0, convs = 0;
    for (int i = 0; i < u.w.count; i++) {
        const Param* p = &u.w.params[i];
        if (p->rank != 2 && p->rank != 4) continue; // norms and biases
        const char* sgm = NULL;
        for (size_t j = 0; j < doc.root.length && !sgm; j++)
            if (strcmp(doc.root.items[j].string, p->name) == 0) sgm = doc.root.keys[j];
        char names[LORA_MAX_SPELLINGS][LORA_NAME_MAX], want[LORA_NAME_MAX], want2[LORA_NAME_MAX];
        int k = lora_param_names(LORA_KOHYA, LORA_UNET, &cfg, p->name, names);
        snprintf(want, sizeof(want), "lora_unet_%.*s", sgm ? (int)strlen(sgm) - 7 : 0, sgm ? sgm : "");
        snprintf(want2, sizeof(want2), "lora_unet_%.*s", (int)strlen(p->name) - 7, p->name);
        for (char* c = want + 10; *c; c++) if (*c == '.') *c = '_';
        for (char* c = want2 + 10; *c; c++) if (*c == '.') *c = '_';
        if (!sgm || k != 2 || strcmp(names[0], want) != 0 || strcmp(names[1], want2) != 0) {
            if (wrong++ < 5) printf("    %s: got %s / %s, want %s / %s\n", p->name, k ? names[0] : "-", k > 1 ? names[1] : "-", want, want2);
        }
        if (p->rank == 2) linears++;
        else convs++;
    }
    check_true(wrong == 0 && linears > 0 && convs > 0,
               "%d linear and %d conv UNet weights: kohya names = lora_unet_ + diffusers' SGM key (%d wrong)", linears, convs, wrong);
    char names[LORA_MAX_SPELLINGS][LORA_NAME_MAX];
    check_true(lora_param_names(LORA_KOHYA, LORA_UNET, &cfg, "conv_norm_out.bias", names) == 0 &&
                   lora_param_names(LORA_KOHYA, LORA_TE1, NULL, "embeddings.token_embedding.weight", names) == 0,
               "biases and embedding tables take no LoRA");
    check_true(lora_param_names(LORA_KOHYA, LORA_TE1, NULL, "encoder.layers.11.mlp.fc2.weight", names) == 2 &&
                   strcmp(names[0], "lora_te1_text_model_encoder_layers_11_mlp_fc2") == 0 &&
                   strcmp(names[1], "lora_te1_encoder_layers_11_mlp_fc2") == 0,
               "text encoder 1: %s (sd-scripts) / %s (diffusers' converter)", names[0], names[1]);
    unet_free(&u);
    json_free(&doc);
}

// Round trip for every linear and conv of the UNet and both text encoders, in every spelling:
// a generated kohya / diffusers / PEFT file with one rank-1 module per weight whose product is a
// constant unique to that weight must land on exactly that weight: W + c, bit for bit.
static void round_trip(Tiny* t, LoraFormat f, int spelling, const char* label) {
    char err[ERR_MAX] = "", path[256];
    const Weights* ws[3] = {&t->unet.w, &t->te1.w, &t->te2.w};
    float* before[3];
    static FileOut fo;
    float c = 0;
    int modules = 0;
    const char* down = f == LORA_KOHYA ? ".lora_down.weight" : ".lora_A.weight";
    const char* up = f == LORA_KOHYA ? ".lora_up.weight" : ".lora_B.weight";
    for (int m = 0; m < 3; m++) {
        before[m] = snapshot(ws[m]);
        if (f == LORA_PEFT && m != LORA_UNET) continue; // one model per PEFT file: the UNet here
        for (int i = 0; i < ws[m]->count; i++) {
            const Param* p = &ws[m]->params[i];
            char names[LORA_MAX_SPELLINGS][LORA_NAME_MAX];
            int k = lora_param_names(f, m, &t->unet.cfg, p->name, names);
            if (k == 0 || p->rank < 2) continue;
            c += 1.0f / 64.0f; // exact in binary, so W + c is one rounding on either side
            out_add_module(&fo, names[spelling < k ? spelling : 0], down, up, p, c, f == LORA_KOHYA);
            modules++;
        }
    }
    // a PEFT adapter in a folder named for its model, with no adapter_config.json: alpha = rank = 1
    mkdir("build", 0755);
    mkdir(TMP, 0755);
    mkdir(TMP "/round_trip", 0755);
    mkdir(TMP "/round_trip/unet", 0755);
    snprintf(path, sizeof(path), TMP "/round_trip/%s", f == LORA_PEFT ? "unet/adapter_model.safetensors" : "all.safetensors");
    if (!check_true(fileout_write(&fo, path, NULL, NULL, 0, err) == 0, "write %s: %s", path, err)) return;
    Lora l;
    if (load_ok(&l, path, err)) {
        int rc = lora_merge(&l, 1.0f, &t->unet, &t->te1, &t->te2, err);
        check_true(rc == 0 && l.count == modules, "%s: %d modules written, %d read, merged: %s", label, modules, l.count,
                   rc ? err : "ok");
        lora_free(&l);
    }
    // expected: every adapted weight + its constant, everything else unchanged
    c = 0;
    int wrong = 0;
    for (int m = 0; m < 3; m++) {
        float* after = snapshot(ws[m]);
        size_t at = 0;
        for (int i = 0; i < ws[m]->count; i++) {
            const Param* p = &ws[m]->params[i];
            char names[LORA_MAX_SPELLINGS][LORA_NAME_MAX];
            int adapted = !(f == LORA_PEFT && m != LORA_UNET) && p->rank >= 2 && lora_param_names(f, m, &t->unet.cfg, p->name, names);
            if (adapted) c += 1.0f / 64.0f;
            for (size_t j = 0; j < p->numel; j++) {
                float want = adapted ? before[m][at + j] + c : before[m][at + j];
                if (memcmp(&after[at + j], &want, sizeof(float)) != 0) {
                    if (wrong++ < 3) printf("    %s %s[%zu]: %.9g, want %.9g\n", model_short_name(m), p->name, j, after[at + j], want);
                    break;
                }
            }
            at += p->numel;
        }
        // leave the models as they were for the next round
        at = 0;
        for (int i = 0; i < ws[m]->count; i++) {
            copy_to_device(ws[m]->params[i].data, before[m] + at, ws[m]->params[i].numel * sizeof(float));
            at += ws[m]->params[i].numel;
        }
        free(after);
        free(before[m]);
    }
    check_true(wrong == 0, "%s: each weight got exactly its own module's product (%d wrong)", label, wrong);
}

static void test_lora_name_round_trip(void) {
    Tiny t;
    if (!tiny_load(&t)) return;
    round_trip(&t, LORA_KOHYA, 0, "kohya sd-scripts names (SGM, text_model_)");
    round_trip(&t, LORA_KOHYA, 1, "kohya names of diffusers' converter");
    round_trip(&t, LORA_DIFFUSERS, 0, "diffusers names");
    round_trip(&t, LORA_DIFFUSERS, 1, "diffusers names, text_model. prefix");
    round_trip(&t, LORA_PEFT, 0, "PEFT names (UNet adapter)");
    tiny_free(&t);
}

// ----------------------------------------------------------------------------
// Bad input: one line naming the file and the key

// Expects rc != 0 and an err of one line containing every needle.
static void expect_error(int rc, const char* err, const char* what, const char* needle1, const char* needle2) {
    int ok = rc != 0 && !strchr(err, '\n') && strstr(err, needle1) && (!needle2 || strstr(err, needle2));
    check_true(ok, "%s -> \"%s\"", what, err);
}

static const Param* unet_param(const Tiny* t, const char* name) { return weights_find(&t->unet.w, name); }

static void test_lora_bad_input(void) {
    Tiny t;
    if (!tiny_load(&t)) return;
    char err[ERR_MAX] = "";
    static FileOut fo;
    Lora l;
    mkdir("build", 0755);
    mkdir(TMP, 0755);
    const Param* q = unet_param(&t, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight");
    const Param* k2 = unet_param(&t, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight");
    const char* good = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q";
    float* before = snapshot(&t.unet.w);

    // missing file, garbled file
    int rc = lora_load(&l, TMP "/no_such_lora.safetensors", err);
    expect_error(rc, err, "missing file", "no_such_lora.safetensors", NULL);
    uint8_t junk[64];
    for (int i = 0; i < 64; i++) junk[i] = (uint8_t)(i * 37 + 11);
    write_file_atomic(TMP "/garbled.safetensors", junk, sizeof(junk), err);
    rc = lora_load(&l, TMP "/garbled.safetensors", err);
    expect_error(rc, err, "garbled file", "garbled.safetensors", NULL);
    // a model checkpoint is not a LoRA
    char unet_file[4200];
    snprintf(unet_file, sizeof(unet_file), "%s/unet/diffusion_pytorch_model.safetensors", golden_path("tiny_sdxl"));
    rc = lora_load(&l, unet_file, err);
    expect_error(rc, err, "a UNet checkpoint", "unknown key 'add_embedding.linear_1.bias'", "diffusion_pytorch_model.safetensors");

    // an unknown key among good ones (a LyCORIS tensor)
    out_add_module(&fo, good, ".lora_down.weight", ".lora_up.weight", q, 1.0f, 1);
    float v[4] = {0};
    out_add(&fo, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_mid.weight", 2, (int64_t[]){2, 2}, v);
    fileout_write(&fo, TMP "/unknown_key.safetensors", NULL, NULL, 0, err);
    rc = lora_load(&l, TMP "/unknown_key.safetensors", err);
    expect_error(rc, err, "unknown key", "unknown key 'lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_mid.weight'",
                 "unknown_key.safetensors");
    // a key of another format in a kohya file
    out_add_module(&fo, good, ".lora_down.weight", ".lora_up.weight", q, 1.0f, 1);
    out_add(&fo, "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight", 2, (int64_t[]){1, 2}, v);
    fileout_write(&fo, TMP "/mixed.safetensors", NULL, NULL, 0, err);
    rc = lora_load(&l, TMP "/mixed.safetensors", err);
    expect_error(rc, err, "mixed formats", "unknown key 'unet.down_blocks", "mixed.safetensors");
    // an alpha tensor in a diffusers file (diffusers refuses it: no "lora" in the key)
    out_add_module(&fo, "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", ".lora_A.weight", ".lora_B.weight", q, 1.0f, 1);
    fileout_write(&fo, TMP "/diffusers_alpha.safetensors", NULL, NULL, 0, err);
    rc = lora_load(&l, TMP "/diffusers_alpha.safetensors", err);
    expect_error(rc, err, "alpha in a diffusers file", "unknown key 'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.alpha'",
                 NULL);
    // DoRA
    out_add_module(&fo, good, ".lora_down.weight", ".lora_up.weight", q, 1.0f, 1);
    out_add(&fo, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.dora_scale", 2, (int64_t[]){1, 2}, v);
    fileout_write(&fo, TMP "/dora.safetensors", NULL, NULL, 0, err);
    rc = lora_load(&l, TMP "/dora.safetensors", err);
    expect_error(rc, err, "DoRA", "DoRA", "dora_scale");
    // a down weight without its up weight
    out_add(&fo, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.lora_down.weight", 2, (int64_t[]){1, 2}, v);
    fileout_write(&fo, TMP "/no_up.safetensors", NULL, NULL, 0, err);
    rc = lora_load(&l, TMP "/no_up.safetensors", err);
    expect_error(rc, err, "down without up", "'lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k' has no up weight", NULL);

    // a shape that does not fit, after a module that does: error, and no weight touched
    out_add_module(&fo, good, ".lora_down.weight", ".lora_up.weight", q, 1.0f, 1);
    out_add_module(&fo, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", ".lora_down.weight", ".lora_up.weight", q, 1.0f, 1);
    fileout_write(&fo, TMP "/shape.safetensors", NULL, NULL, 0, err);
    if (load_ok(&l, TMP "/shape.safetensors", err)) {
        rc = lora_merge(&l, 1.0f, &t.unet, &t.te1, &t.te2, err);
        char k2shape[64];
        snprintf(k2shape, sizeof(k2shape), "[%lld, %lld]: down [1, %lld]", (long long)k2->shape[0], (long long)k2->shape[1],
                 (long long)q->shape[1]);
        expect_error(rc, err, "shape mismatch", "'lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k'", k2shape);
        lora_free(&l);
        float* after = snapshot(&t.unet.w);
        check_bytes_equal("UNet weights after the failed merge", after, before, param_floats(&t.unet.w) * sizeof(float));
        free(after);
    }
    // a module the UNet does not have
    out_add_module(&fo, "lora_unet_input_blocks_4_1_transformer_blocks_7_attn1_to_q", ".lora_down.weight", ".lora_up.weight", q, 1.0f, 1);
    fileout_write(&fo, TMP "/no_such_module.safetensors", NULL, NULL, 0, err);
    if (load_ok(&l, TMP "/no_such_module.safetensors", err)) {
        rc = lora_merge(&l, 1.0f, &t.unet, &t.te1, &t.te2, err);
        expect_error(rc, err, "module the UNet lacks", "'lora_unet_input_blocks_4_1_transformer_blocks_7_attn1_to_q' matches no weight",
                     "no_such_module.safetensors");
        lora_free(&l);
    }
    // the same parameter twice (sd-scripts and converter spellings)
    out_add_module(&fo, good, ".lora_down.weight", ".lora_up.weight", q, 1.0f, 1);
    out_add_module(&fo, "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", ".lora_down.weight", ".lora_up.weight",
                   q, 1.0f, 1);
    fileout_write(&fo, TMP "/twice.safetensors", NULL, NULL, 0, err);
    if (load_ok(&l, TMP "/twice.safetensors", err)) {
        rc = lora_merge(&l, 1.0f, &t.unet, NULL, NULL, err);
        expect_error(rc, err, "one weight adapted twice", "both adapt", "attn1.to_q.weight");
        lora_free(&l);
    }
    // text-encoder modules with no text encoder given
    if (load_ok(&l, golden("lora/a_kohya.safetensors"), err)) {
        rc = lora_merge(&l, SCALE, &t.unet, NULL, &t.te2, err);
        expect_error(rc, err, "text-encoder LoRA, no text encoder 1", "lora_te1_", "no text encoder 1 (CLIP-L) was given");
        rc = lora_merge(&l, SCALE, &t.unet, &t.te1, NULL, err);
        expect_error(rc, err, "text-encoder LoRA, no text encoder 2", "lora_te2_", "no text encoder 2 (OpenCLIP bigG) was given");
        lora_free(&l);
    }
    // a PEFT adapter whose config disagrees with its tensors, and one with a regex pattern
    mkdir(TMP "/bad", 0755);
    mkdir(TMP "/bad/unet", 0755);
    out_add_module(&fo, "base_model.model.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", ".lora_A.weight",
                   ".lora_B.weight", q, 1.0f, 0);
    fileout_write(&fo, TMP "/bad/unet/adapter_model.safetensors", NULL, NULL, 0, err);
    const char* cfg = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"auto_mapping\": {\"base_model_class\": \"UNet2DConditionModel\"}}";
    write_file_atomic(TMP "/bad/unet/adapter_config.json", cfg, strlen(cfg), err);
    rc = lora_load(&l, TMP "/bad/unet", err);
    expect_error(rc, err, "PEFT rank != config r", "has rank 1, but", "adapter_config.json says r = 4");
    cfg = "{\"r\": 1, \"lora_alpha\": 8, \"rank_pattern\": {\".*attn1.*\": 2}}";
    write_file_atomic(TMP "/bad/unet/adapter_config.json", cfg, strlen(cfg), err);
    rc = lora_load(&l, TMP "/bad/unet", err);
    expect_error(rc, err, "regex rank_pattern", "rank_pattern key \".*attn1.*\" is a regular expression", "adapter_config.json");
    cfg = "{\"r\": 1, \"lora_alpha\": 3, \"rank_pattern\": {\"attn1.to_q\": 1}, \"alpha_pattern\": {\"^down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q\": 0.5}}";
    write_file_atomic(TMP "/bad/unet/adapter_config.json", cfg, strlen(cfg), err);
    if (load_ok(&l, TMP "/bad/unet", err)) {
        check_true(l.count == 1 && l.modules[0].model == LORA_UNET && l.modules[0].alpha == 0.5f && l.modules[0].factor == 0.5,
                   "alpha_pattern '^...' gives alpha 0.5 (factor %g)", l.count ? l.modules[0].factor : 0.0);
        lora_free(&l);
    }
    free(before);
    tiny_free(&t);
}

const TestCase tests_lora[] = {
    {"lora_a_diffusers", test_lora_a_diffusers},
    {"lora_a_peft", test_lora_a_peft},
    {"lora_a_kohya_converter", test_lora_a_kohya_converter},
    {"lora_b_diffusers_metadata", test_lora_b_diffusers_metadata},
    {"lora_b_peft_config", test_lora_b_peft_config},
    {"lora_b_kohya_sd_scripts", test_lora_b_kohya_sd_scripts},
    {"lora_c_kohya_locon", test_lora_c_kohya_locon},
    {"lora_peft_single_and_no_config", test_lora_peft_single_and_no_config},
    {"lora_scale_zero_is_identity", test_lora_scale_zero_is_identity},
    {"lora_merge_into_fp16_unet", test_lora_merge_into_fp16_unet},
    {"lora_kohya_names_match_diffusers_sgm_keys", test_lora_kohya_names_match_diffusers_sgm_keys},
    {"lora_name_round_trip", test_lora_name_round_trip},
    {"lora_bad_input", test_lora_bad_input},
    {NULL, NULL},
};
