// demo.c: a tiny SDXL with random weights, written by C alone as a diffusers folder, so
// `make demo` runs the whole pipeline on a fresh machine with no download.
//
// The model has SDXL's full structure (two CLIP text encoders, the three-level UNet with
// DownBlock2D and two cross-attention levels, the text_time added conditioning, the four-level
// VAE) at small widths, and a byte-level CLIP tokenizer (the 256 GPT-2 byte symbols, each with
// and without "</w>", no merges, so every character is a token). Everything is written in the
// formats diffusers and transformers use (config.json files, safetensors weights, vocab.json and
// merges.txt), then loaded back through sdxl_model_load exactly like a real model. Its images are
// noise: the weights are random.
#include "demo.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "clip.h"
#include "common.h"
#include "json.h"
#include "png.h"
#include "sdxl.h"
#include "vae.h"

static int write_text(const char* dir, const char* file, const char* text, char* err) {
    char path[4400];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    return write_file_atomic(path, text, strlen(text), err);
}

// GPT-2's byte -> printable character table (as CLIP's BPE uses it), as UTF-8 strings.
static void byte_symbols(char sym[256][8]) {
    int cs[256], n = 0, used[256] = {0};
    for (int b = '!'; b <= '~'; b++) used[b] = 1;
    for (int b = 0xA1; b <= 0xAC; b++) used[b] = 1;
    for (int b = 0xAE; b <= 0xFF; b++) used[b] = 1;
    for (int b = 0; b < 256; b++) cs[b] = used[b] ? b : 256 + n++;
    for (int b = 0; b < 256; b++) {
        int c = cs[b];
        if (c < 0x80) snprintf(sym[b], 8, "%c", c);
        else snprintf(sym[b], 8, "%c%c", 0xC0 | (c >> 6), 0x80 | (c & 0x3F));
    }
}

// vocab.json: ids 0..255 the byte symbols in GPT-2 order, 256..511 the same with "</w>", then
// <|startoftext|> and <|endoftext|> (the layout of CLIP's vocabulary with no merges).
int demo_tokenizer_write(const char* dir, const char* pad_token, char* err) {
    if (make_dir(dir, err) != 0) return -1;
    char sym[256][8];
    byte_symbols(sym);
    // the order of ids is that of bytes_to_unicode: printable bytes first, then the others
    int order[256], k = 0;
    for (int b = 0; b < 256; b++)
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) order[k++] = b;
    for (int b = 0; b < 256; b++)
        if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) order[k++] = b;
    size_t cap = 64 * 1024, n = 0;
    char* vocab = xmalloc(cap);
    n += (size_t)snprintf(vocab + n, cap - n, "{");
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 256; i++) {
            char token[16], quoted[64];
            snprintf(token, sizeof(token), "%s%s", sym[order[i]], pass ? "</w>" : "");
            json_escape(quoted, sizeof(quoted), token);
            n += (size_t)snprintf(vocab + n, cap - n, "%s%s: %d", pass || i ? ", " : "", quoted, pass * 256 + i);
        }
    n += (size_t)snprintf(vocab + n, cap - n, ", \"<|startoftext|>\": 512, \"<|endoftext|>\": 513}");
    int rc = write_text(dir, "vocab.json", vocab, err);
    free(vocab);
    if (rc == 0) rc = write_text(dir, "merges.txt", "#version: 0.2\n", err);
    char config[512];
    snprintf(config, sizeof(config),
             "{\"tokenizer_class\": \"CLIPTokenizer\", \"bos_token\": \"<|startoftext|>\", \"eos_token\": \"<|endoftext|>\", "
             "\"unk_token\": \"<|endoftext|>\", \"pad_token\": \"%s\", \"model_max_length\": 77, \"do_lower_case\": true}",
             pad_token);
    if (rc == 0) rc = write_text(dir, "tokenizer_config.json", config, err);
    return rc;
}

static const char* TEXT_ENCODER_CONFIG =
    "{\"architectures\": [\"%s\"], \"model_type\": \"clip_text_model\", \"vocab_size\": 514, \"hidden_size\": %d, "
    "\"intermediate_size\": %d, \"num_hidden_layers\": 3, \"num_attention_heads\": %d, \"max_position_embeddings\": 77, "
    "\"hidden_act\": \"%s\", \"layer_norm_eps\": 1e-05, \"projection_dim\": 32, \"bos_token_id\": 512, "
    "\"eos_token_id\": 513, \"pad_token_id\": %d}";

static const char* UNET_CONFIG =
    "{\"_class_name\": \"UNet2DConditionModel\", \"act_fn\": \"silu\", \"addition_embed_type\": \"text_time\", "
    "\"addition_time_embed_dim\": 8, \"attention_head_dim\": [1, 2, 4], \"block_out_channels\": [16, 32, 64], "
    "\"center_input_sample\": false, \"class_embed_type\": null, \"cross_attention_dim\": 96, "
    "\"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"], "
    "\"flip_sin_to_cos\": true, \"freq_shift\": 0, \"in_channels\": 4, \"layers_per_block\": 2, "
    "\"mid_block_type\": \"UNetMidBlock2DCrossAttn\", \"norm_eps\": 1e-05, \"norm_num_groups\": 8, \"out_channels\": 4, "
    "\"projection_class_embeddings_input_dim\": 80, \"sample_size\": 16, \"transformer_layers_per_block\": [1, 2, 2], "
    "\"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"UpBlock2D\"], \"use_linear_projection\": true}";

static const char* VAE_CONFIG =
    "{\"_class_name\": \"AutoencoderKL\", \"act_fn\": \"silu\", \"block_out_channels\": [16, 32, 32, 32], "
    "\"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"], "
    "\"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\", \"UpDecoderBlock2D\"], "
    "\"in_channels\": 3, \"out_channels\": 3, \"latent_channels\": 4, \"layers_per_block\": 2, \"norm_num_groups\": 8, "
    "\"sample_size\": 64, \"scaling_factor\": 0.13025, \"force_upcast\": true}";

static const char* SCHEDULER_CONFIG =
    "{\"_class_name\": \"EulerDiscreteScheduler\", \"beta_start\": 0.00085, \"beta_end\": 0.012, "
    "\"beta_schedule\": \"scaled_linear\", \"num_train_timesteps\": 1000, \"prediction_type\": \"epsilon\", "
    "\"interpolation_type\": \"linear\", \"use_karras_sigmas\": false, \"steps_offset\": 1, "
    "\"timestep_spacing\": \"leading\", \"set_alpha_to_one\": false, \"clip_sample\": false}";

static const char* MODEL_INDEX =
    "{\"_class_name\": \"StableDiffusionXLPipeline\", \"force_zeros_for_empty_prompt\": true, "
    "\"scheduler\": [\"diffusers\", \"EulerDiscreteScheduler\"], \"text_encoder\": [\"transformers\", \"CLIPTextModel\"], "
    "\"text_encoder_2\": [\"transformers\", \"CLIPTextModelWithProjection\"], \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"], "
    "\"tokenizer_2\": [\"transformers\", \"CLIPTokenizer\"], \"unet\": [\"diffusers\", \"UNet2DConditionModel\"], "
    "\"vae\": [\"diffusers\", \"AutoencoderKL\"]}";

int demo_model_write(const char* root, uint64_t seed, char* err) {
    char dir[4200], path[4400], text[2048];
    if (make_dir(root, err) != 0) return -1;
    if (write_text(root, "model_index.json", MODEL_INDEX, err) != 0) return -1;
    snprintf(dir, sizeof(dir), "%s/scheduler", root);
    if (make_dir(dir, err) != 0 || write_text(dir, "scheduler_config.json", SCHEDULER_CONFIG, err) != 0) return -1;
    snprintf(dir, sizeof(dir), "%s/tokenizer", root);
    if (demo_tokenizer_write(dir, "<|endoftext|>", err) != 0) return -1;
    snprintf(dir, sizeof(dir), "%s/tokenizer_2", root);
    if (demo_tokenizer_write(dir, "!", err) != 0) return -1;

    // text encoders: CLIP-L's shape (quick_gelu) and bigG's (gelu, projection), 3 layers each
    for (int k = 1; k <= 2; k++) {
        snprintf(dir, sizeof(dir), "%s/text_encoder%s", root, k == 1 ? "" : "_2");
        if (make_dir(dir, err) != 0) return -1;
        snprintf(text, sizeof(text), TEXT_ENCODER_CONFIG, k == 1 ? "CLIPTextModel" : "CLIPTextModelWithProjection",
                 k == 1 ? 32 : 64, k == 1 ? 64 : 128, k == 1 ? 2 : 4, k == 1 ? "quick_gelu" : "gelu", k == 1 ? 513 : 0);
        if (write_text(dir, "config.json", text, err) != 0) return -1;
        snprintf(path, sizeof(path), "%s/config.json", dir);
        ClipTextConfig cfg;
        if (clip_text_config_read(&cfg, path, err) != 0) return -1;
        ClipText te;
        clip_text_init_random(&te, &cfg, seed + (uint64_t)k);
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        // the key layout transformers >= 5.6 saves: no "text_model." prefix (clip.c reads both)
        int rc = weights_save(&te.w, path, "", DT_F32, err);
        clip_text_free(&te);
        if (rc != 0) return -1;
    }
    snprintf(dir, sizeof(dir), "%s/unet", root);
    if (make_dir(dir, err) != 0 || write_text(dir, "config.json", UNET_CONFIG, err) != 0) return -1;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    UnetConfig ucfg;
    if (unet_config_read(&ucfg, path, err) != 0) return -1;
    Unet unet;
    unet_init_random(&unet, &ucfg, DT_F32, seed + 3);
    snprintf(path, sizeof(path), "%s/diffusion_pytorch_model.safetensors", dir);
    int rc = weights_save(&unet.w, path, "", DT_F32, err);
    unet_free(&unet);
    if (rc != 0) return -1;
    snprintf(dir, sizeof(dir), "%s/vae", root);
    if (make_dir(dir, err) != 0 || write_text(dir, "config.json", VAE_CONFIG, err) != 0) return -1;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    VaeConfig vcfg;
    if (vae_config_read(&vcfg, path, err) != 0) return -1;
    Vae vae;
    vae_init_random(&vae, &vcfg, DT_F32, seed + 4);
    snprintf(path, sizeof(path), "%s/diffusion_pytorch_model.safetensors", dir);
    rc = weights_save(&vae.weights, path, "", DT_F32, err);
    vae_free(&vae);
    return rc;
}

// ----------------------------------------------------------------------------
// A storyboard-like dataset: black ink on white, 16:9

typedef struct {
    uint8_t* px;
    int w, h;
} Canvas;

static void ink(Canvas* c, int x, int y, uint8_t v) {
    if (x >= 0 && y >= 0 && x < c->w && y < c->h) memset(c->px + 3 * ((size_t)y * c->w + x), v, 3);
}

static void thick_line(Canvas* c, int x0, int y0, int x1, int y1, int width) {
    int steps = abs(x1 - x0) > abs(y1 - y0) ? abs(x1 - x0) : abs(y1 - y0);
    for (int s = 0; s <= steps; s++) {
        int x = x0 + (steps ? (x1 - x0) * s / steps : 0), y = y0 + (steps ? (y1 - y0) * s / steps : 0);
        for (int dy = -width / 2; dy <= width / 2; dy++)
            for (int dx = -width / 2; dx <= width / 2; dx++) ink(c, x + dx, y + dy, 0);
    }
}

static void circle(Canvas* c, int cx, int cy, int r, int width, int filled) {
    for (int y = cy - r - width; y <= cy + r + width; y++)
        for (int x = cx - r - width; x <= cx + r + width; x++) {
            double d = sqrt((double)(x - cx) * (x - cx) + (double)(y - cy) * (y - cy));
            if (filled ? d <= r : fabs(d - r) <= width / 2.0) ink(c, x, y, 0);
        }
}

// A number in [0, n) from a 64-bit linear congruential generator (Knuth's MMIX constants).
static int next_int(uint64_t* state, int n) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (int)((*state >> 33) % (uint64_t)n);
}

int demo_dataset_write(const char* root, int count, uint64_t seed, char* err) {
    static const char* const captions[] = {
        "a man with an umbrella walks past a car at night",
        "two people talk at a table by a window",
        "a woman looks out over the city from a rooftop",
        "a detective opens a door to a dark room",
        "a car drives along an empty road towards the hills",
        "a crowd waits on a train platform",
    };
    if (make_dirs(root, err) != 0) return -1;
    StrBuf meta = {0};
    uint64_t state = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    for (int i = 0; i < count; i++) {
        Canvas c = {xmalloc((size_t)3 * 1365 * 768), 1365, 768};
        memset(c.px, 255, (size_t)3 * c.w * c.h);
        // a random sketch: a panel border, a horizon, a figure or two, a car-like box
        thick_line(&c, 8, 8, c.w - 9, 8, 6), thick_line(&c, c.w - 9, 8, c.w - 9, c.h - 9, 6);
        thick_line(&c, c.w - 9, c.h - 9, 8, c.h - 9, 6), thick_line(&c, 8, c.h - 9, 8, 8, 6);
        int horizon = 300 + next_int(&state, 250);
        thick_line(&c, 8, horizon, c.w - 9, horizon + next_int(&state, 60) - 30, 3);
        for (int f = 0; f < 1 + next_int(&state, 3); f++) {
            int x = 150 + next_int(&state, c.w - 300), y = horizon + next_int(&state, 120), s = 60 + next_int(&state, 80);
            circle(&c, x, y - 3 * s, s / 2, 4, next_int(&state, 2));                   // head
            thick_line(&c, x, y - 5 * s / 2, x, y - s, 5);                  // body
            thick_line(&c, x, y - s, x - s / 2, y, 5), thick_line(&c, x, y - s, x + s / 2, y, 5); // legs
            thick_line(&c, x, y - 2 * s, x - s, y - 3 * s / 2, 4), thick_line(&c, x, y - 2 * s, x + s, y - 2 * s, 4);
        }
        if (next_int(&state, 2)) {
            int x = 100 + next_int(&state, c.w - 500), y = horizon + 40 + next_int(&state, 100);
            for (int k = 0; k < 4; k++) thick_line(&c, x + k * 90, y, x + k * 90 + 90, y, 4);
            thick_line(&c, x, y, x, y - 90, 4), thick_line(&c, x + 360, y, x + 360, y - 90, 4);
            thick_line(&c, x, y - 90, x + 360, y - 90, 4);
            circle(&c, x + 70, y + 20, 30, 6, 0), circle(&c, x + 290, y + 20, 30, 6, 0);
        }
        Image img = {0};
        img.width = c.w, img.height = c.h, img.channels = 3, img.depth = 8, img.data = c.px;
        char name[32], path[4400];
        snprintf(name, sizeof(name), "frame_%03d.png", i + 1);
        snprintf(path, sizeof(path), "%s/%s", root, name);
        int rc = png_write(path, &img, err);
        free(c.px);
        if (rc != 0) {
            free(meta.s);
            return -1;
        }
        strbuf_printf(&meta, "{\"file_name\": \"%s\", \"text\": \"%s, black and white storyboard sketch\"}\n", name,
                      captions[i % (int)(sizeof(captions) / sizeof(captions[0]))]);
    }
    int rc = write_text(root, "metadata.jsonl", meta.s, err);
    free(meta.s);
    return rc;
}
