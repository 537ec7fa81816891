// tests/test_vae.c: the SDXL VAE (vae.c) against diffusers' AutoencoderKL.
//
// The model is the tiny SDXL VAE of tests/golden/tiny_sdxl/vae (SDXL's structure: 4 levels,
// 2 layers per block, mid-block attention; widths 16/32/32/32, 8 groups, fp16 weights). The
// references in tests/golden/vae_ref.safetensors and the SGM-named copy of the weights in
// tests/golden/vae_sgm.safetensors come from scripts/make_golden_vae.py, which checked that copy
// with diffusers' own single-file loader.
//
// Tolerances (atol + rtol * |want|), each stated at its check:
//   TOL_NET   the whole network in fp32 against torch's fp32: ~40 convolutions, two GroupNorms per
//             resnet and a softmax, each summing in another order than torch (im2col GEMM blocks vs
//             oneDNN, double vs float norm statistics). Outputs are of order 1; measured max errors
//             are 3e-6..6e-6, 10-37% of this tolerance. It is kept that tight on purpose: a GroupNorm
//             eps of 1e-5 instead of SDXL's 1e-6 moves the outputs by 3e-5..9e-5 and fails at
//             110-500% of it; a wrong pad side, block order or key fails by orders of magnitude.
//   TOL_CUDA  the same network on the GPU against our CPU: cuBLAS sums in yet another order and
//             nvcc contracts to FMA; TF32 is off, so fp32-level agreement is expected.
//   exact     the same weights through two loaders must give bit-identical parameters and outputs.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common.h"
#include "../ops.h"
#include "../vae.h"
#include "check.h"

typedef struct {
    float atol, rtol;
} Tol;
static const Tol TOL_NET = {1e-5f, 1e-4f};
static const Tol TOL_CUDA = {1e-5f, 1e-4f};

#define WORK_DIR "build/test_vae"

// ----------------------------------------------------------------------------
// Helpers

static int load_tiny_as(Vae* vae, DType dtype) {
    char err[ERR_MAX];
    int rc = vae_load(vae, golden_path("tiny_sdxl/vae"), dtype, err);
    if (!check_true(rc == 0, "load the tiny VAE folder (%s)%s%s", dtype_name(dtype), rc ? ": " : "", rc ? err : "")) return 0;
    return 1;
}

static int load_tiny(Vae* vae) { return load_tiny_as(vae, DT_F32); }

static int load_tiny_sgm(Vae* vae) {
    char err[ERR_MAX], cfg_path[4096];
    VaeConfig cfg;
    snprintf(cfg_path, sizeof(cfg_path), "%s/config.json", golden_path("tiny_sdxl/vae"));
    if (!check_true(vae_config_read(&cfg, cfg_path, err) == 0, "read the tiny VAE config")) return 0;
    int rc = vae_load_with_config(vae, &cfg, golden_path("vae_sgm.safetensors"), DT_F32, err);
    return check_true(rc == 0, "load the SGM-named file with the tiny config%s%s", rc ? ": " : "", rc ? err : "");
}

// Decodes golden latent `tag` in an arena of exactly vae_decode_arena_bytes; returns the host image.
static float* decode(const Vae* vae, const SafeTensors* g, const char* tag, int64_t* shape_out, size_t* n_out,
                     int report) {
    char name[64];
    int64_t zs[4], is[4];
    snprintf(name, sizeof(name), "decode.%s.z", tag);
    float* z_host = golden_f32(g, name, NULL);
    golden_shape(g, name, zs);
    snprintf(name, sizeof(name), "decode.%s.image", tag);
    golden_shape(g, name, is);
    int N = (int)zs[0], h = (int)zs[2], w = (int)zs[3];
    size_t n_img = (size_t)is[0] * is[1] * is[2] * is[3];
    size_t bytes = vae_decode_arena_bytes(&vae->config, N, h, w, vae->weights.dtype);
    Arena acts;
    arena_init(&acts, "vae decode activations", bytes, backend_current() == BACKEND_CUDA);
    float* z = to_backend(z_host, (size_t)N * vae->config.latent_channels * h * w);
    float* img = backend_alloc(n_img);
    vae_decode(vae, img, z, N, h, w, &acts);
    if (report) {
        // the walk must count exactly what the forward takes: less would have been a fatal overflow
        check_true(acts.high_water == bytes, "decode %s: high-water %zu bytes == vae_decode_arena_bytes %zu", tag,
                   acts.high_water, bytes);
        arena_report(&acts);
    }
    arena_free(&acts);
    free(z_host);
    memcpy(shape_out, is, sizeof(is));
    *n_out = n_img;
    return from_backend(img, n_img);
}

typedef struct {
    float *mean, *logvar, *sample; // host
    size_t n;
} Encoded;

static Encoded encode(const Vae* vae, const SafeTensors* g, int report) {
    Encoded r = {0};
    int64_t xs[4], ms[4];
    float* x_host = golden_f32(g, "encode.image", NULL);
    float* noise_host = golden_f32(g, "encode.noise", &r.n);
    golden_shape(g, "encode.image", xs);
    golden_shape(g, "encode.mean", ms);
    int N = (int)xs[0], H = (int)xs[2], W = (int)xs[3];
    check_true(vae_latent_size(&vae->config, H) == ms[2] && vae_latent_size(&vae->config, W) == ms[3],
               "vae_latent_size: %dx%d -> %dx%d", H, W, vae_latent_size(&vae->config, H),
               vae_latent_size(&vae->config, W));
    size_t bytes = vae_encode_arena_bytes(&vae->config, N, H, W, vae->weights.dtype);
    Arena acts;
    arena_init(&acts, "vae encode activations", bytes, backend_current() == BACKEND_CUDA);
    float* x = to_backend(x_host, (size_t)N * xs[1] * H * W);
    float* noise = to_backend(noise_host, r.n);
    float *mean = backend_alloc(r.n), *logvar = backend_alloc(r.n), *sample = backend_alloc(r.n);
    vae_encode(vae, mean, logvar, sample, noise, x, N, H, W, &acts);
    if (report) {
        check_true(acts.high_water == bytes, "encode: high-water %zu bytes == vae_encode_arena_bytes %zu",
                   acts.high_water, bytes);
        arena_report(&acts);
    }
    arena_free(&acts);
    r.mean = from_backend(mean, r.n);
    r.logvar = from_backend(logvar, r.n);
    r.sample = from_backend(sample, r.n);
    free(x_host);
    free(noise_host);
    return r;
}

static void encoded_free(Encoded* e) {
    free(e->mean);
    free(e->logvar);
    free(e->sample);
}

static void expect_golden(const SafeTensors* g, const char* label, const float* got, const char* name, Tol tol) {
    size_t n;
    float* want = golden_f32(g, name, &n);
    if (want) check_close(label, got, want, n, tol.atol, tol.rtol);
    free(want);
}

// Number of parameters whose values differ between two loaded VAEs (same build, same order).
static int params_differing(const Vae* a, const Vae* b) {
    if (a->weights.count != b->weights.count) return -1;
    int differing = 0;
    for (int i = 0; i < a->weights.count; i++) {
        const Param* p = &a->weights.params[i];
        float* x = from_backend(p->data, p->numel);
        float* y = from_backend(b->weights.params[i].data, p->numel);
        if (memcmp(x, y, sizeof(float) * p->numel) != 0) differing++;
        free(x);
        free(y);
    }
    return differing;
}

static int one_line(const char* s) { return strchr(s, '\n') == NULL; }

// ----------------------------------------------------------------------------
// Broken and renamed copies of the tiny VAE, written under build/ at test time

typedef struct {
    const char* drop;        // tensor to leave out
    const char* reshape;     // tensor whose shape to change (same bytes)
    int rename_deprecated;   // to_q/to_k/to_v/to_out.0 -> query/key/value/proj_attn
} Edit;

// Writes <dir>/<file> from `src` with the edit applied; also <dir>/config.json when with_config.
static int write_edited(const SafeTensors* src, const char* dir, const char* file, const Edit* e, int with_config) {
    char err[ERR_MAX], path[4096 + 256];
    mkdir("build", 0755);
    mkdir(WORK_DIR, 0755);
    mkdir(dir, 0755);
    SafeTensorOut* out = xcalloc((size_t)src->count, sizeof(SafeTensorOut));
    char(*names)[256] = xcalloc((size_t)src->count, 256);
    int n = 0;
    for (int i = 0; i < src->count; i++) {
        const SafeTensor* t = &src->tensors[i];
        if (e->drop && strcmp(t->name, e->drop) == 0) continue;
        SafeTensorOut* o = &out[n];
        snprintf(names[n], 256, "%s", t->name);
        if (e->rename_deprecated) {
            static const char* const from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
            static const char* const to[] = {".query.", ".key.", ".value.", ".proj_attn."};
            for (int k = 0; k < 4; k++) {
                char* at = strstr(names[n], from[k]);
                if (at && strstr(names[n], "mid_block.attentions.0")) {
                    char rest[256];
                    snprintf(rest, sizeof(rest), "%s", at + strlen(from[k]));
                    snprintf(at, 256 - (size_t)(at - names[n]), "%s%s", to[k], rest);
                }
            }
        }
        o->name = names[n];
        o->dtype = t->dtype;
        o->rank = t->rank;
        memcpy(o->shape, t->shape, sizeof(int64_t) * t->rank);
        if (e->reshape && strcmp(t->name, e->reshape) == 0) { // [C, C_in, 3, 3] -> [C, C_in, 9, 1]
            o->shape[2] = t->shape[2] * t->shape[3];
            o->shape[3] = 1;
        }
        o->data = t->data;
        n++;
    }
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    int rc = safetensors_write(path, out, n, NULL, NULL, 0, err);
    if (rc == 0 && with_config) {
        uint8_t* text;
        size_t size;
        char from[4096];
        snprintf(from, sizeof(from), "%s/config.json", golden_path("tiny_sdxl/vae"));
        snprintf(path, sizeof(path), "%s/config.json", dir);
        rc = read_file(from, &text, &size, err);
        if (rc == 0) {
            rc = write_file_atomic(path, text, size, err);
            free(text);
        }
    }
    free(out);
    free(names);
    return check_true(rc == 0, "write %s/%s%s%s", dir, file, rc ? ": " : "", rc ? err : "");
}

// ----------------------------------------------------------------------------
// Tests

static void test_vae_config(void) {
    char err[ERR_MAX], path[4096];
    VaeConfig c;
    snprintf(path, sizeof(path), "%s/config.json", golden_path("tiny_sdxl/vae"));
    int rc = vae_config_read(&c, path, err);
    check_true(rc == 0 && c.levels == 4 && c.block_out_channels[0] == 16 && c.block_out_channels[3] == 32 &&
                   c.layers_per_block == 2 && c.norm_num_groups == 8 && c.latent_channels == 4 &&
                   c.in_channels == 3 && c.out_channels == 3 && c.scaling_factor == 0.13025f,
               "tiny config: 4 levels 16..32, 2 layers, 8 groups, 4 latent channels, scaling 0.13025");
    vae_config_sdxl(&c);
    check_true(c.block_out_channels[0] == 128 && c.block_out_channels[3] == 512 && vae_latent_size(&c, 1024) == 128,
               "SDXL config: [128, 256, 512, 512], 1024 px -> 128 latent");

    // what SDXL does not use is refused with one line naming the file: the tiny config's keys, one
    // value replaced per case
    static const char* const keys[][2] = {
        {"block_out_channels", "[16, 32, 32, 32]"},
        {"in_channels", "3"},
        {"out_channels", "3"},
        {"latent_channels", "4"},
        {"layers_per_block", "2"},
        {"norm_num_groups", "8"},
        {"scaling_factor", "0.13025"},
        {"shift_factor", "null"},
        {"act_fn", "\"silu\""},
        {"use_quant_conv", "true"},
        {"down_block_types",
         "[\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"]"},
        {"up_block_types", "[\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]"},
    };
    static const char* const bad[][3] = {
        // key, value, what the error must mention
        {"act_fn", "\"gelu\"", "act_fn"},
        {"down_block_types",
         "[\"DownEncoderBlock2D\", \"AttnDownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"]",
         "down_block_types[1]"},
        {"shift_factor", "0.1159", "shift_factor"},
        {"use_quant_conv", "false", "use_quant_conv"},
        {"norm_num_groups", "5", "norm_num_groups"},
        {"layers_per_block", "2.5", "layers_per_block"},
    };
    mkdir("build", 0755);
    mkdir(WORK_DIR, 0755);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char json[2048] = "{";
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            const char* value = strcmp(keys[k][0], bad[i][0]) == 0 ? bad[i][1] : keys[k][1];
            size_t len = strlen(json);
            snprintf(json + len, sizeof(json) - len, "%s\"%s\": %s", k ? ", " : "", keys[k][0], value);
        }
        strncat(json, "}", sizeof(json) - strlen(json) - 1);
        snprintf(path, sizeof(path), WORK_DIR "/bad_config_%zu.json", i);
        write_file_atomic(path, json, strlen(json), err);
        rc = vae_config_read(&c, path, err);
        check_true(rc == -1 && strstr(err, path) && strstr(err, bad[i][2]) && one_line(err), "%s = %s refused: %s",
                   bad[i][0], bad[i][1], err);
    }
}

static void test_vae_decode(void) {
    SafeTensors g;
    Vae vae;
    if (!golden_open(&g, "vae_ref.safetensors") || !load_tiny(&vae)) return;
    int64_t shape[4];
    size_t n;
    // (1, 4, 6, 9): odd sizes, not multiples of 4
    float* img = decode(&vae, &g, "a", shape, &n, 1);
    expect_golden(&g, "decode (1,4,6,9) -> (1,3,48,72)", img, "decode.a.image", TOL_NET); // TOL_NET: see top
    free(img);
    // (2, 4, 4, 4): a batch of two
    img = decode(&vae, &g, "b", shape, &n, 1);
    expect_golden(&g, "decode (2,4,4,4) -> (2,3,32,32)", img, "decode.b.image", TOL_NET);
    free(img);
    vae_free(&vae);
    safetensors_close(&g);
}

// The GPU's fast path runs the VAE in bf16 (SDXL's VAE overflows in f16): on its CPU specification,
// the decoder and encoder against diffusers' f32, and the arena walks still exact for 2-byte
// activations. Measured on outputs up to 3.5 (random weights): decode within 6.9e-2, encode mean
// within 3.4e-2; diffusers itself in bf16 on the same inputs: 6.3e-2 and 4.4e-2. The tolerance
// allows that and another summation order (the GPU), and a real mistake moves outputs by order 1.
static void test_vae_bf16(void) {
    SafeTensors g;
    Vae vae;
    if (!golden_open(&g, "vae_ref.safetensors") || !load_tiny_as(&vae, DT_BF16)) return;
    int64_t shape[4];
    size_t n;
    Tol bf16 = {0.12f, 0.0f};
    float* img = decode(&vae, &g, "a", shape, &n, 1);
    expect_golden(&g, "bf16 decode (1,4,6,9) -> (1,3,48,72)", img, "decode.a.image", bf16);
    free(img);
    Encoded e = encode(&vae, &g, 1);
    expect_golden(&g, "bf16 encode -> mean", e.mean, "encode.mean", bf16);
    expect_golden(&g, "bf16 encode -> sample", e.sample, "encode.sample", bf16);
    encoded_free(&e);
    vae_free(&vae);
    safetensors_close(&g);
}

static void test_vae_encode(void) {
    SafeTensors g;
    Vae vae;
    if (!golden_open(&g, "vae_ref.safetensors") || !load_tiny(&vae)) return;
    Encoded e = encode(&vae, &g, 1);
    // TOL_NET for all three: the encoder is the decoder's size, and exp(0.5 logvar) * noise adds only
    // an elementwise ulp or two (expf vs torch.exp)
    expect_golden(&g, "encode (1,3,48,72) -> mean (1,4,6,9)", e.mean, "encode.mean", TOL_NET);
    expect_golden(&g, "encode -> logvar (clamped to [-30, 20])", e.logvar, "encode.logvar", TOL_NET);
    expect_golden(&g, "encode -> sample = mean + std * noise", e.sample, "encode.sample", TOL_NET);
    encoded_free(&e);
    vae_free(&vae);
    safetensors_close(&g);
}

static void test_vae_sgm_single_file(void) {
    SafeTensors g;
    Vae folder, sgm;
    if (!golden_open(&g, "vae_ref.safetensors") || !load_tiny(&folder)) return;
    if (!load_tiny_sgm(&sgm)) {
        vae_free(&folder);
        return;
    }
    check_true(params_differing(&folder, &sgm) == 0, "all %d parameters equal to the diffusers folder's",
               folder.weights.count);
    int64_t shape[4];
    size_t n;
    float* a = decode(&folder, &g, "a", shape, &n, 0);
    float* b = decode(&sgm, &g, "a", shape, &n, 0);
    check_bytes_equal("decode from the SGM file == from the folder", b, a, sizeof(float) * n); // exact: same weights
    expect_golden(&g, "decode from the SGM file vs diffusers", b, "decode.a.image", TOL_NET);
    free(a);
    free(b);
    Encoded e1 = encode(&folder, &g, 0), e2 = encode(&sgm, &g, 0);
    check_bytes_equal("encode mean from the SGM file == from the folder", e2.mean, e1.mean, sizeof(float) * e1.n);
    encoded_free(&e1);
    encoded_free(&e2);
    vae_free(&sgm);
    vae_free(&folder);
    safetensors_close(&g);
}

static void test_vae_deprecated_attention_names(void) {
    SafeTensors src;
    char err[ERR_MAX], path[4096];
    snprintf(path, sizeof(path), "%s/diffusion_pytorch_model.safetensors", golden_path("tiny_sdxl/vae"));
    if (!check_true(safetensors_open(&src, path, err) == 0, "open the tiny VAE weights")) return;
    Edit e = {.rename_deprecated = 1};
    const char* dir = WORK_DIR "/deprecated";
    int ok = write_edited(&src, dir, "diffusion_pytorch_model.fp16.safetensors", &e, 1); // the variant name
    safetensors_close(&src);
    if (!ok) return;
    Vae folder, old;
    if (!load_tiny(&folder)) return;
    int rc = vae_load(&old, dir, DT_F32, err);
    if (check_true(rc == 0, "load a folder with query/key/value/proj_attn (fp16 variant file)%s%s", rc ? ": " : "",
                   rc ? err : ""))
        check_true(params_differing(&folder, &old) == 0, "the deprecated names give the same parameters");
    vae_free(&old);
    vae_free(&folder);
}

static void test_vae_load_errors(void) {
    SafeTensors src, sgm_src;
    char err[ERR_MAX], path[4096];
    snprintf(path, sizeof(path), "%s/diffusion_pytorch_model.safetensors", golden_path("tiny_sdxl/vae"));
    if (!check_true(safetensors_open(&src, path, err) == 0, "open the tiny VAE weights")) return;
    Vae vae;

    // a diffusers folder missing one tensor
    const char* missing = "decoder.up_blocks.1.resnets.2.conv1.bias";
    Edit drop = {.drop = missing};
    if (write_edited(&src, WORK_DIR "/missing", "diffusion_pytorch_model.safetensors", &drop, 1)) {
        int rc = vae_load(&vae, WORK_DIR "/missing", DT_F32, err);
        check_true(rc == -1 && strstr(err, missing) &&
                       strstr(err, WORK_DIR "/missing/diffusion_pytorch_model.safetensors") && one_line(err),
                   "missing tensor: %s", err);
    }
    // ... and one with a wrong shape
    const char* reshaped = "encoder.down_blocks.2.resnets.0.conv2.weight";
    Edit reshape = {.reshape = reshaped};
    if (write_edited(&src, WORK_DIR "/shape", "diffusion_pytorch_model.safetensors", &reshape, 1)) {
        int rc = vae_load(&vae, WORK_DIR "/shape", DT_F32, err);
        check_true(rc == -1 && strstr(err, reshaped) &&
                       strstr(err, WORK_DIR "/shape/diffusion_pytorch_model.safetensors") &&
                       strstr(err, "[32, 32, 9, 1]") && one_line(err),
                   "wrong shape: %s", err);
    }
    safetensors_close(&src);

    // the SGM file missing one tensor: the error names the SGM key
    if (check_true(safetensors_open(&sgm_src, golden_path("vae_sgm.safetensors"), err) == 0, "open the SGM file")) {
        const char* sgm_missing = "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight";
        Edit d2 = {.drop = sgm_missing};
        if (write_edited(&sgm_src, WORK_DIR, "sgm_missing.safetensors", &d2, 0)) {
            VaeConfig cfg;
            snprintf(path, sizeof(path), "%s/config.json", golden_path("tiny_sdxl/vae"));
            vae_config_read(&cfg, path, err);
            int rc = vae_load_with_config(&vae, &cfg, WORK_DIR "/sgm_missing.safetensors", DT_F32, err);
            if (rc == 0) vae_free(&vae);
            check_true(rc == -1 && strstr(err, sgm_missing) && strstr(err, WORK_DIR "/sgm_missing.safetensors") &&
                           one_line(err),
                       "SGM file, missing tensor: %s", err);
            // the tiny file read with SDXL's config (what vae_load assumes for a single file): shapes differ
            rc = vae_load(&vae, golden_path("vae_sgm.safetensors"), DT_F32, err);
            check_true(rc == -1 && strstr(err, "first_stage_model.") && strstr(err, "expected") && one_line(err),
                       "SGM file with the SDXL config: %s", err);
        }
        safetensors_close(&sgm_src);
    }
    // no such path; a folder without weights; a file with no VAE in it
    int rc = vae_load(&vae, WORK_DIR "/no_such_folder", DT_F32, err);
    check_true(rc == -1 && strstr(err, "no_such_folder") && one_line(err), "no such path: %s", err);
    mkdir(WORK_DIR "/empty", 0755);
    write_file_atomic(WORK_DIR "/empty/config.json", "{}", 2, err);
    rc = vae_load(&vae, WORK_DIR "/empty", DT_F32, err);
    check_true(rc == -1 && strstr(err, WORK_DIR "/empty/config.json") && one_line(err), "empty config: %s", err);
    rc = vae_load(&vae, golden_path("vae_ref.safetensors"), DT_F32, err);
    check_true(rc == -1 && strstr(err, "vae_ref.safetensors") && strstr(err, "no VAE") && one_line(err),
               "a file without a VAE: %s", err);
    vae_free(&vae); // safe on a failed load
}

static void test_vae_arena_sizes(void) {
    // the decode/encode tests check that these are the exact high-water marks on the tiny VAE; here,
    // what SDXL needs at its native size (weights not loaded: only the shapes are walked)
    VaeConfig c;
    vae_config_sdxl(&c);
    size_t dec = vae_decode_arena_bytes(&c, 1, 128, 128, DT_F32), enc = vae_encode_arena_bytes(&c, 1, 1024, 1024, DT_F32);
    size_t one = (size_t)128 * 1024 * 1024 * sizeof(float); // one 128-channel 1024x1024 tensor: 512 MiB
    printf("  SDXL 1024x1024: decode arena %.1f MiB, encode arena %.1f MiB (one 128 x 1024 x 1024 tensor = %.0f MiB)\n",
           dec / 1048576.0, enc / 1048576.0, one / 1048576.0);
    // decoder floor with these ops: the last upsampler's 2x copy (256 ch at 1024^2) and its conv
    // output, 2 x 1 GiB, plus one im2col chunk; nothing may hold more than that
    check_true(dec >= 4 * one && dec <= 4 * one + 64 * 1048576, "decode arena = 2 GiB + im2col (%.1f MiB)",
               dec / 1048576.0);
    // encoder: three 128-channel tensors at 1024^2 (a resnet's input, its two conv activations)
    check_true(enc >= 3 * one && enc <= 3 * one + 64 * 1048576, "encode arena = 1.5 GiB + im2col (%.1f MiB)",
               enc / 1048576.0);
}

static void test_vae_cuda_matches_cpu(void) {
    if (!test_require_cuda()) return;
    SafeTensors g;
    if (!golden_open(&g, "vae_ref.safetensors")) return;
    Backend saved = backend_current();
    Vae cpu, gpu;
    backend_select(BACKEND_CPU);
    if (!load_tiny(&cpu)) {
        safetensors_close(&g);
        return;
    }
    int64_t shape[4];
    size_t n;
    size_t n_a, n_b;
    float* ref_a = decode(&cpu, &g, "a", shape, &n_a, 0);
    float* ref_b = decode(&cpu, &g, "b", shape, &n_b, 0);
    Encoded ref_e = encode(&cpu, &g, 0);
    backend_free_all();
    backend_select(BACKEND_CUDA);
    if (load_tiny(&gpu)) {
        float* got_a = decode(&gpu, &g, "a", shape, &n, 1);
        check_close("cuda vs cpu decode (1,4,6,9)", got_a, ref_a, n_a, TOL_CUDA.atol, TOL_CUDA.rtol);
        float* got_b = decode(&gpu, &g, "b", shape, &n, 1);
        check_close("cuda vs cpu decode (2,4,4,4)", got_b, ref_b, n_b, TOL_CUDA.atol, TOL_CUDA.rtol);
        Encoded e = encode(&gpu, &g, 1);
        check_close("cuda vs cpu encode mean", e.mean, ref_e.mean, e.n, TOL_CUDA.atol, TOL_CUDA.rtol);
        check_close("cuda vs cpu encode logvar", e.logvar, ref_e.logvar, e.n, TOL_CUDA.atol, TOL_CUDA.rtol);
        check_close("cuda vs cpu encode sample", e.sample, ref_e.sample, e.n, TOL_CUDA.atol, TOL_CUDA.rtol);
        free(got_a);
        free(got_b);
        encoded_free(&e);
        vae_free(&gpu);
    }
    backend_free_all();
    backend_select(BACKEND_CPU);
    vae_free(&cpu);
    backend_select(saved);
    free(ref_a);
    free(ref_b);
    encoded_free(&ref_e);
    safetensors_close(&g);
}

const TestCase tests_vae[] = {
    {"vae_config", test_vae_config},
    {"vae_decode_vs_diffusers", test_vae_decode},
    {"vae_encode_vs_diffusers", test_vae_encode},
    {"vae_bf16", test_vae_bf16},
    {"vae_sgm_single_file", test_vae_sgm_single_file},
    {"vae_deprecated_attention_names", test_vae_deprecated_attention_names},
    {"vae_load_errors", test_vae_load_errors},
    {"vae_arena_sizes", test_vae_arena_sizes},
    {"vae_cuda_matches_cpu", test_vae_cuda_matches_cpu},
    {NULL, NULL},
};
