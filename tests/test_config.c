// tests/test_config.c: the numbers of every config file a model reads, against the limits beside
// each config struct (sdxl.h, vae.h, clip.h, blip.h, sample.h, lora.h, yolo.h). Each test copies
// a golden config into a temporary folder with one value changed, and checks that the reader
// refuses it as the file is read, in one line naming the file and the key: a width of 1000000000,
// a negative one, 4294967312 (which an int cast truncates to 16), a value past int64, 0, "16",
// 1e9 and 16.0 (integers are integer literals), a huge depth-list entry, a list of the wrong
// length. The unchanged golden configs must still load.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../blip.h"
#include "../clip.h"
#include "../common.h"
#include "../lora.h"
#include "../pipeline.h"
#include "../sample.h"
#include "../sdxl.h"
#include "../tokenizer.h"
#include "../vae.h"
#include "../yolo.h"
#include "check.h"

// The golden file `name` (under tests/golden) copied into g_src, since golden_path reuses its buffer.
static char g_src[4096];
static const char* golden(const char* name) {
    snprintf(g_src, sizeof(g_src), "%s", golden_path(name));
    return g_src;
}

// Copies the golden file `name` into dir unchanged.
static int copy_golden(const char* name, const char* dir, const char* as) {
    char dst[4400], err[ERR_MAX];
    uint8_t* data;
    size_t size;
    snprintf(dst, sizeof(dst), "%s/%s", dir, as);
    if (!check_true(read_file(golden(name), &data, &size, err) == 0, "read %s", name)) return 0;
    int ok = check_true(write_file_atomic(dst, data, size, err) == 0, "copy %s to %s", name, dst);
    free(data);
    return ok;
}

// ----------------------------------------------------------------------------
// UNet (unet/config.json)

static int read_unet(const char* path, char* err) {
    UnetConfig c;
    return unet_config_read(&c, path, err);
}

static void test_config_unet_limits(void) {
    char dir[512], dst[600], err[ERR_MAX] = "";
    if (!test_temp_dir(dir, sizeof(dir), "unet_config")) return;
    snprintf(dst, sizeof(dst), "%s/config.json", dir);
    const char* src = golden("tiny_sdxl/unet/config.json");
    check_true(read_unet(src, err) == 0, "the tiny UNet's config reads (%s)", err);
    // per-level widths, depths and head counts: every entry, and the list itself
    expect_ints_refused(read_unet, src, dst, "block_out_channels", "[%s, 32, 64]", 0);
    expect_ints_refused(read_unet, src, dst, "block_out_channels", "[16, 32, %s]", 0);
    expect_ints_refused(read_unet, src, dst, "transformer_layers_per_block", "[1, 2, %s]", 0);
    expect_ints_refused(read_unet, src, dst, "transformer_layers_per_block", "%s", 0);
    expect_ints_refused(read_unet, src, dst, "attention_head_dim", "[1, %s, 4]", 0);
    expect_ints_refused(read_unet, src, dst, "num_attention_heads", "%s", 0);
    expect_ints_refused(read_unet, src, dst, "reverse_transformer_layers_per_block", "[%s, 2, 1]", 0);
    expect_value_refused(read_unet, src, dst, "block_out_channels", "[16, 32, 64, 64, 64]");
    expect_value_refused(read_unet, src, dst, "block_out_channels", "[16]");
    expect_value_refused(read_unet, src, dst, "block_out_channels", "16");
    expect_value_refused(read_unet, src, dst, "block_out_channels", NULL);
    expect_value_refused(read_unet, src, dst, "transformer_layers_per_block", "[1, 2]");
    expect_value_refused(read_unet, src, dst, "transformer_layers_per_block", "[1, 2, 2, 2]");
    expect_value_refused(read_unet, src, dst, "attention_head_dim", "[1, 2]");
    // the single integers
    const char* ints[] = {"in_channels", "out_channels", "layers_per_block", "cross_attention_dim", "norm_num_groups",
                          "addition_time_embed_dim", "projection_class_embeddings_input_dim", "time_embedding_dim"};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) expect_ints_refused(read_unet, src, dst, ints[i], "%s", 0);
    expect_value_refused(read_unet, src, dst, "layers_per_block", NULL);
    // the real numbers
    expect_value_refused(read_unet, src, dst, "norm_eps", "\"1e-5\"");
    expect_value_refused(read_unet, src, dst, "norm_eps", "0");
    expect_value_refused(read_unet, src, dst, "norm_eps", "-1e-5");
    expect_value_refused(read_unet, src, dst, "norm_eps", "1e999");
    expect_value_refused(read_unet, src, dst, "freq_shift", "64");
    // heads wider than attention supports: 4096 in four heads of 1024 is refused
    expect_value_refused(read_unet, golden("tiny_sdxl/unet/config.json"), dst, "block_out_channels", "[16, 32, 4096]");
    // an odd timestep-embedding width
    expect_value_refused(read_unet, golden("tiny_sdxl/unet/config.json"), dst, "addition_time_embed_dim", "7");
    // the message itself, for one case
    src = golden("tiny_sdxl/unet/config.json");
    if (json_file_edit(src, dst, "block_out_channels", "[4294967312, 32, 64]")) {
        read_unet(dst, err);
        char want[1024];
        snprintf(want, sizeof(want), "%s: \"block_out_channels\"[0] must be an integer in [1, %d], got 4294967312", dst,
                 UNET_MAX_CHANNELS);
        check_true(strcmp(err, want) == 0, "message: %s", err);
    }
    if (json_file_edit(src, dst, "layers_per_block", "2.0")) {
        read_unet(dst, err);
        check_true(strstr(err, "got 2.0 (an integer is written without a fraction or exponent)") != NULL,
                   "a fraction is named as such: %s", err);
    }
    test_temp_dir_remove(dir);
}

// unet_load on a folder whose config describes a huge model stops at the config, before opening
// the weights (the folder has none).
static void test_config_unet_load_stops_at_config(void) {
    char dir[512], dst[600], err[ERR_MAX] = "";
    if (!test_temp_dir(dir, sizeof(dir), "unet_folder")) return;
    snprintf(dst, sizeof(dst), "%s/config.json", dir);
    if (json_file_edit(golden("tiny_sdxl/unet/config.json"), dst, "transformer_layers_per_block", "[1, 2, 1000000000]")) {
        Unet u;
        int rc = unet_load(&u, dir, NULL, DT_F32, err);
        expect_config_error(rc, err, dst, "transformer_layers_per_block", "unet_load with a 1e9-deep level");
    }
    test_temp_dir_remove(dir);
}

// ----------------------------------------------------------------------------
// VAE (vae/config.json)

static int read_vae(const char* path, char* err) {
    VaeConfig c;
    return vae_config_read(&c, path, err);
}

static void test_config_vae_limits(void) {
    char dir[512], dst[600], err[ERR_MAX] = "";
    if (!test_temp_dir(dir, sizeof(dir), "vae_config")) return;
    snprintf(dst, sizeof(dst), "%s/config.json", dir);
    const char* src = golden("tiny_sdxl/vae/config.json");
    check_true(read_vae(src, err) == 0, "the tiny VAE's config reads (%s)", err);
    expect_ints_refused(read_vae, src, dst, "block_out_channels", "[%s, 32, 32, 32]", 0);
    expect_ints_refused(read_vae, src, dst, "block_out_channels", "[16, 32, 32, %s]", 0);
    expect_value_refused(read_vae, src, dst, "block_out_channels", "[]");
    expect_value_refused(read_vae, src, dst, "block_out_channels", "[16, 16, 16, 16, 16, 16, 16, 16, 16]");
    expect_value_refused(read_vae, src, dst, "block_out_channels", "16");
    const char* ints[] = {"in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) expect_ints_refused(read_vae, src, dst, ints[i], "%s", 0);
    expect_value_refused(read_vae, src, dst, "layers_per_block", "8"); // the decoder's 9 resnets per level are past VAE_MAX_LAYERS
    expect_value_refused(read_vae, src, dst, "scaling_factor", "\"0.13025\"");
    expect_value_refused(read_vae, src, dst, "scaling_factor", "0");
    expect_value_refused(read_vae, src, dst, "scaling_factor", "-0.13025");
    expect_value_refused(read_vae, src, dst, "scaling_factor", NULL);
    expect_value_refused(read_vae, src, dst, "norm_num_groups", "3"); // 16 does not split into 3 groups
    test_temp_dir_remove(dir);
}

// ----------------------------------------------------------------------------
// CLIP: text encoders, the vision tower, a CLIPModel folder

static int read_clip_text(const char* path, char* err) {
    ClipTextConfig c;
    return clip_text_config_read(&c, path, err);
}

static int read_clip_vision(const char* path, char* err) {
    ClipVisionConfig c;
    return clip_vision_config_read(&c, path, err);
}

static const char* const CLIP_TEXT_INTS[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                             "num_attention_heads", "max_position_embeddings"};

static void test_config_clip_text_limits(void) {
    char dir[512], dst[600], err[ERR_MAX] = "";
    if (!test_temp_dir(dir, sizeof(dir), "clip_text_config")) return;
    snprintf(dst, sizeof(dst), "%s/config.json", dir);
    const char* src = golden("tiny_sdxl/text_encoder_2/config.json");
    check_true(read_clip_text(src, err) == 0, "the tiny text_encoder_2 config reads (%s)", err);
    for (size_t i = 0; i < sizeof(CLIP_TEXT_INTS) / sizeof(CLIP_TEXT_INTS[0]); i++)
        expect_ints_refused(read_clip_text, src, dst, CLIP_TEXT_INTS[i], "%s", 0);
    expect_ints_refused(read_clip_text, src, dst, "projection_dim", "%s", 0);
    expect_ints_refused(read_clip_text, src, dst, "eos_token_id", "%s", 1);
    expect_value_refused(read_clip_text, src, dst, "eos_token_id", "1014"); // the vocabulary has 1014 ids: 0..1013
    expect_value_refused(read_clip_text, src, dst, "hidden_size", NULL);
    expect_value_refused(read_clip_text, src, dst, "num_attention_heads", "5"); // 64 does not split into 5 heads
    expect_value_refused(read_clip_text, src, dst, "layer_norm_eps", "\"1e-5\"");
    expect_value_refused(read_clip_text, src, dst, "layer_norm_eps", "0");
    src = golden("tiny_sdxl/text_encoder/config.json");
    check_true(read_clip_text(src, err) == 0, "the tiny text_encoder config reads (%s)", err);
    expect_ints_refused(read_clip_text, src, dst, "num_hidden_layers", "%s", 0);
    test_temp_dir_remove(dir);
}

static void test_config_clip_vision_limits(void) {
    char dir[512], dst[600], err[ERR_MAX] = "";
    if (!test_temp_dir(dir, sizeof(dir), "clip_vision_config")) return;
    snprintf(dst, sizeof(dst), "%s/config.json", dir);
    const char* src = golden("clip_vision/vision224/config.json");
    check_true(read_clip_vision(src, err) == 0, "the tiny vision tower's config reads (%s)", err);
    const char* ints[] = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                          "patch_size", "num_channels", "projection_dim"};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) expect_ints_refused(read_clip_vision, src, dst, ints[i], "%s", 0);
    expect_value_refused(read_clip_vision, src, dst, "num_channels", "4"); // the preprocessing makes RGB
    expect_value_refused(read_clip_vision, src, dst, "patch_size", "1");  // 224 x 224 tokens
    expect_value_refused(read_clip_vision, src, dst, "patch_size", "448"); // larger than the image
    test_temp_dir_remove(dir);
}

// A CLIPModel folder: the config is read before the tokenizer and the weights (the folder has neither).
static int load_clip_model(const char* path, char* err) {
    char folder[4096];
    snprintf(folder, sizeof(folder), "%s", path);
    *strrchr(folder, '/') = 0;
    ClipModel m;
    int rc = clip_model_load(&m, folder, NULL, err);
    if (rc == 0) clip_model_free(&m);
    return rc;
}

static void test_config_clip_model_limits(void) {
    char dir[512], dst[600];
    if (!test_temp_dir(dir, sizeof(dir), "clip_model_config")) return;
    snprintf(dst, sizeof(dst), "%s/config.json", dir);
    const char* src = golden("clip_vision/tiny_clip/config.json");
    for (size_t i = 0; i < sizeof(CLIP_TEXT_INTS) / sizeof(CLIP_TEXT_INTS[0]); i++) {
        char key[128];
        snprintf(key, sizeof(key), "text_config.%s", CLIP_TEXT_INTS[i]);
        expect_ints_refused(load_clip_model, src, dst, key, "%s", 0);
    }
    expect_ints_refused(load_clip_model, src, dst, "vision_config.image_size", "%s", 0);
    expect_ints_refused(load_clip_model, src, dst, "vision_config.num_hidden_layers", "%s", 0);
    expect_ints_refused(load_clip_model, src, dst, "projection_dim", "%s", 0);
    test_temp_dir_remove(dir);
}

// ----------------------------------------------------------------------------
// BERT (MiniLM), BLIP, sentence-transformers' config

static int read_bert(const char* path, char* err) {
    BertConfig c;
    return bert_config_read(&c, path, err);
}

static int load_blip_folder(const char* path, char* err) {
    char folder[4096];
    snprintf(folder, sizeof(folder), "%s", path);
    *strrchr(folder, '/') = 0;
    Blip m;
    int rc = blip_load(&m, folder, err);
    if (rc == 0) blip_free(&m);
    return rc;
}

static int load_minilm_folder(const char* path, char* err) {
    char folder[4096];
    snprintf(folder, sizeof(folder), "%s", path);
    *strrchr(folder, '/') = 0;
    MiniLM m;
    int rc = minilm_load(&m, folder, err);
    if (rc == 0) minilm_free(&m);
    return rc;
}

static const char* const BERT_INTS[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                        "num_attention_heads", "max_position_embeddings"};

static void test_config_bert_blip_limits(void) {
    char dir[512], dst[600], err[ERR_MAX] = "";
    if (!test_temp_dir(dir, sizeof(dir), "bert_config")) return;
    snprintf(dst, sizeof(dst), "%s/config.json", dir);
    const char* src = golden("blip/tiny_minilm/config.json");
    check_true(read_bert(src, err) == 0, "the tiny MiniLM's config reads (%s)", err);
    for (size_t i = 0; i < sizeof(BERT_INTS) / sizeof(BERT_INTS[0]); i++)
        expect_ints_refused(read_bert, src, dst, BERT_INTS[i], "%s", 0);
    expect_ints_refused(read_bert, src, dst, "type_vocab_size", "%s", 0);
    expect_value_refused(read_bert, src, dst, "layer_norm_eps", "-1");
    // BLIP's config.json: both sub-configs and the token ids
    src = golden("blip/tiny_blip/config.json");
    for (size_t i = 0; i < sizeof(BERT_INTS) / sizeof(BERT_INTS[0]); i++) {
        char key[128];
        snprintf(key, sizeof(key), "text_config.%s", BERT_INTS[i]);
        expect_ints_refused(load_blip_folder, src, dst, key, "%s", 0);
    }
    expect_ints_refused(load_blip_folder, src, dst, "text_config.bos_token_id", "%s", 1);
    expect_ints_refused(load_blip_folder, src, dst, "text_config.sep_token_id", "%s", 1);
    expect_value_refused(load_blip_folder, src, dst, "text_config.bos_token_id", "30524"); // vocab_size 30524: ids 0..30523
    const char* vision[] = {"vision_config.hidden_size", "vision_config.intermediate_size", "vision_config.num_hidden_layers",
                            "vision_config.num_attention_heads", "vision_config.image_size", "vision_config.patch_size"};
    for (size_t i = 0; i < sizeof(vision) / sizeof(vision[0]); i++)
        expect_ints_refused(load_blip_folder, src, dst, vision[i], "%s", 0);
    // sentence_bert_config.json beside MiniLM's config
    char st_dst[600];
    snprintf(st_dst, sizeof(st_dst), "%s/sentence_bert_config.json", dir);
    if (copy_golden("blip/tiny_minilm/config.json", dir, "config.json")) {
        expect_ints_refused(load_minilm_folder, golden("blip/tiny_minilm/sentence_bert_config.json"), st_dst, "max_seq_length",
                            "%s", 0);
        expect_value_refused(load_minilm_folder, golden("blip/tiny_minilm/sentence_bert_config.json"), st_dst, "max_seq_length",
                             "1");
    }
    test_temp_dir_remove(dir);
}

// ----------------------------------------------------------------------------
// Scheduler, LoRA adapter config, tokenizer ids, YOLO metadata

static int read_scheduler(const char* path, char* err) {
    SchedulerConfig c;
    return scheduler_config_read(&c, path, err);
}

static void test_config_scheduler_limits(void) {
    char dir[512], dst[600];
    if (!test_temp_dir(dir, sizeof(dir), "scheduler_config")) return;
    snprintf(dst, sizeof(dst), "%s/scheduler_config.json", dir);
    const char* src = golden("tiny_sdxl/scheduler/scheduler_config.json");
    expect_ints_refused(read_scheduler, src, dst, "num_train_timesteps", "%s", 0);
    expect_ints_refused(read_scheduler, src, dst, "steps_offset", "%s", 1);
    expect_value_refused(read_scheduler, src, dst, "steps_offset", "1000"); // of 1000 timesteps, 0..999
    test_temp_dir_remove(dir);
}

// A PEFT adapter: adapter_model.safetensors beside the edited adapter_config.json.
static int load_peft(const char* path, char* err) {
    char file[4096];
    snprintf(file, sizeof(file), "%s", path);
    snprintf(strrchr(file, '/'), 32, "/adapter_model.safetensors");
    Lora l;
    int rc = lora_load(&l, file, err);
    if (rc == 0) lora_free(&l);
    return rc;
}

static void test_config_lora_adapter_limits(void) {
    char dir[512], dst[600], err[ERR_MAX] = "";
    if (!test_temp_dir(dir, sizeof(dir), "unet")) return;
    snprintf(dst, sizeof(dst), "%s/adapter_config.json", dir);
    if (copy_golden("lora/a_peft/unet/adapter_model.safetensors", dir, "adapter_model.safetensors")) {
        const char* src = golden("lora/a_peft/unet/adapter_config.json");
        check_true(json_file_edit(src, dst, "unused", NULL) && load_peft(dst, err) == 0, "the golden adapter loads (%s)", err);
        expect_ints_refused(load_peft, src, dst, "r", "%s", 0);
        expect_value_refused(load_peft, src, dst, "lora_alpha", "\"4\"");
        expect_value_refused(load_peft, src, dst, "lora_alpha", "1e300");
        expect_value_refused(load_peft, src, dst, "lora_alpha", NULL);
        expect_value_refused(load_peft, src, dst, "rank_pattern", "{\"to_q\": 4294967300}");
        expect_value_refused(load_peft, src, dst, "rank_pattern", "{\"to_q\": 4.5}");
        expect_value_refused(load_peft, src, dst, "alpha_pattern", "{\"to_q\": \"8\"}");
    }
    test_temp_dir_remove(dir);
}

static int load_tokenizer_folder(const char* path, char* err) {
    char folder[4096];
    snprintf(folder, sizeof(folder), "%s", path);
    *strrchr(folder, '/') = 0;
    Tokenizer t;
    int rc = tokenizer_load(&t, folder, err);
    if (rc == 0) tokenizer_free(&t);
    return rc;
}

static void test_config_tokenizer_ids(void) {
    char dir[512], dst[600];
    if (!test_temp_dir(dir, sizeof(dir), "tokenizer")) return;
    snprintf(dst, sizeof(dst), "%s/tokenizer_config.json", dir);
    if (copy_golden("tiny_sdxl/tokenizer/vocab.json", dir, "vocab.json") &&
        copy_golden("tiny_sdxl/tokenizer/merges.txt", dir, "merges.txt")) {
        const char* src = golden("tiny_sdxl/tokenizer/tokenizer_config.json");
        // added_tokens_decoder's keys are the ids, as text
        const char* ids[] = {"1000000000", "-16", "4294967312", "99999999999999999999", "1e9", "16.0", "true", "sixteen", ""};
        for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
            char value[128];
            snprintf(value, sizeof(value), "{\"%s\": {\"content\": \"<new>\"}}", ids[i]);
            expect_value_refused(load_tokenizer_folder, src, dst, "added_tokens_decoder", value);
        }
    }
    test_temp_dir_remove(dir);
}

static void test_config_yolo_metadata(void) {
    char dir[512], path[600], err[ERR_MAX] = "";
    if (!test_temp_dir(dir, sizeof(dir), "yolo")) return;
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    const char* bad[] = {"1000000000", "-16", "4294967312", "99999999999999999999", "\"16\"", "1e9", "16.0", "0", "sixteen"};
    const char* keys[] = {"nc", "reg_max", "max_channels"};
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            if (!safetensors_copy_edited(golden("yolo/tiny.safetensors"), path, keys[k], bad[i], NULL)) continue;
            Yolo y;
            int rc = yolo_load(&y, path, err);
            if (rc == 0) yolo_free(&y);
            char what[128];
            snprintf(what, sizeof(what), "metadata %s: %s", keys[k], bad[i]);
            expect_config_error(rc, err, path, keys[k], what);
        }
    test_temp_dir_remove(dir);
}

// ----------------------------------------------------------------------------
// A config within the limits describing a model far bigger than its file: a one-line shape error
// from the check every loader makes before allocating (weights_check), not an out-of-memory.

static void test_config_model_bigger_than_its_file(void) {
    char dir[512], dst[600], err[ERR_MAX] = "";
    if (!test_temp_dir(dir, sizeof(dir), "big_model")) return;
    snprintf(dst, sizeof(dst), "%s/config.json", dir);
    // a UNet with a 4096-wide, 64-deep last level: about 1e11 parameters (400 GB in f32)
    if (copy_golden("tiny_sdxl/unet/diffusion_pytorch_model.safetensors", dir, "diffusion_pytorch_model.safetensors") &&
        json_file_edit(golden("tiny_sdxl/unet/config.json"), dst, "block_out_channels", "[16, 32, 4096]")) {
        char tmp[600];
        snprintf(tmp, sizeof(tmp), "%s/step.json", dir);
        int ok = json_file_edit(dst, tmp, "attention_head_dim", "[1, 2, 8]") &&
                 json_file_edit(tmp, dst, "transformer_layers_per_block", "[1, 2, 64]");
        remove(tmp);
        Unet u;
        int rc = ok ? unet_load(&u, dir, NULL, DT_F32, err) : 0;
        printf("    400 GB UNet -> %s\n", rc ? err : "(loaded)");
        check_true(rc != 0 && strstr(err, "has shape") && strstr(err, "expected [4096, 32, 3, 3]") && !strchr(err, '\n'),
                   "refused with the first tensor the file does not hold");
    }
    test_temp_dir_remove(dir);
    // a text encoder of 128 layers 4096 wide over a 262144-token vocabulary: 2.6e10 parameters
    if (!test_temp_dir(dir, sizeof(dir), "big_text_encoder")) return;
    snprintf(dst, sizeof(dst), "%s/config.json", dir);
    if (copy_golden("tiny_sdxl/text_encoder/model.safetensors", dir, "model.safetensors")) {
        const char* edits[][2] = {{"vocab_size", "262144"}, {"hidden_size", "4096"}, {"intermediate_size", "16384"},
                                  {"num_hidden_layers", "128"}, {"num_attention_heads", "32"}};
        int ok = copy_golden("tiny_sdxl/text_encoder/config.json", dir, "config.json");
        char tmp[600];
        snprintf(tmp, sizeof(tmp), "%s/step.json", dir);
        for (size_t i = 0; ok && i < sizeof(edits) / sizeof(edits[0]); i++)
            ok = json_file_edit(dst, tmp, edits[i][0], edits[i][1]) && rename(tmp, dst) == 0;
        ClipText m;
        int rc = ok ? clip_text_load(&m, dir, NULL, DT_F32, err) : 0;
        printf("    100 GB text encoder -> %s\n", rc ? err : "(loaded)");
        check_true(rc != 0 && strstr(err, "has shape") && strstr(err, "expected [262144, 4096]") && !strchr(err, '\n'),
                   "refused with the first tensor the file does not hold");
    }
    test_temp_dir_remove(dir);
}

// ----------------------------------------------------------------------------
// Components that are each valid but do not fit together as the pipeline uses them

// The tiny model copied to dir/model with a 9-channel UNet input (an inpainting UNet): its config
// and a conv_in of that shape, so the UNet loads on its own.
static int write_inpainting_model(const char* model) {
    char path[4400];
    if (!copy_tree(golden("tiny_sdxl"), model)) return 0;
    snprintf(path, sizeof(path), "%s/unet/config.json", model);
    char src[4400];
    snprintf(src, sizeof(src), "%s/unet/config.json", golden("tiny_sdxl"));
    if (!json_file_edit(src, path, "in_channels", "9")) return 0;
    snprintf(path, sizeof(path), "%s/unet/diffusion_pytorch_model.safetensors", model);
    float* conv_in = xcalloc(16 * 9 * 3 * 3, sizeof(float));
    SafeTensorOut replace = {"conv_in.weight", DT_F32, 4, {16, 9, 3, 3}, conv_in};
    int ok = safetensors_copy_edited(golden("tiny_sdxl/unet/diffusion_pytorch_model.safetensors"), path, NULL, NULL, &replace);
    free(conv_in);
    return ok;
}

static void test_config_components_must_fit(void) {
    char dir[512], model[600], err[ERR_MAX] = "";
    if (!test_temp_dir(dir, sizeof(dir), "components")) return;
    snprintf(model, sizeof(model), "%s/model", dir);
    if (write_inpainting_model(model)) {
        SdxlModel m;
        int rc = sdxl_model_load(&m, model, NULL, NULL, NULL, NULL, err);
        printf("    a 9-channel UNet -> %s\n", rc ? err : "(loaded)");
        if (rc == 0) sdxl_model_free(&m);
        check_true(rc != 0 && strstr(err, model) && strstr(err, "9") && !strchr(err, '\n'),
                   "an inpainting UNet is refused at load, not read past its 4-channel latents");
    }
    test_temp_dir_remove(dir);

    // each remaining rule of sdxl_model_check on the tiny model's configs and tokenizers
    SdxlModel m;
    memset(&m, 0, sizeof(m));
    char path[4400];
    int ok = 1;
    snprintf(path, sizeof(path), "%s", golden("tiny_sdxl/unet/config.json"));
    ok = ok && unet_config_read(&m.unet.cfg, path, err) == 0;
    snprintf(path, sizeof(path), "%s", golden("tiny_sdxl/vae/config.json"));
    ok = ok && vae_config_read(&m.vae.config, path, err) == 0;
    snprintf(path, sizeof(path), "%s", golden("tiny_sdxl/text_encoder/config.json"));
    ok = ok && clip_text_config_read(&m.te1.cfg, path, err) == 0;
    snprintf(path, sizeof(path), "%s", golden("tiny_sdxl/text_encoder_2/config.json"));
    ok = ok && clip_text_config_read(&m.te2.cfg, path, err) == 0;
    snprintf(path, sizeof(path), "%s", golden("tiny_sdxl/tokenizer"));
    ok = ok && tokenizer_load(&m.tok1, path, err) == 0;
    snprintf(path, sizeof(path), "%s", golden("tiny_sdxl/tokenizer_2"));
    ok = ok && tokenizer_load(&m.tok2, path, err) == 0;
    if (!check_true(ok, "the tiny model's configs and tokenizers (%s)", err)) return;
    check_true(sdxl_model_check(&m, "tiny", err) == 0, "the tiny model's components fit (%s)", err);
    struct { const char* what; int* field; int value; } cases[] = {
        {"VAE latents of 8 channels", &m.vae.config.latent_channels, 8},
        {"a 1-channel VAE output", &m.vae.config.out_channels, 1},
        {"a 9-channel UNet output", &m.unet.cfg.out_channels, 9},
        {"no pooled projection", &m.te2.cfg.projection_dim, 0},
        {"a wider first text encoder", &m.te1.cfg.hidden, m.te1.cfg.hidden + 8},
        {"a text vocabulary smaller than the tokenizer's", &m.te1.cfg.vocab_size, 100},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int saved = *cases[i].field;
        *cases[i].field = cases[i].value;
        int rc = sdxl_model_check(&m, "tiny", err);
        printf("    %s -> %s\n", cases[i].what, rc ? err : "(accepted)");
        check_true(rc != 0 && strncmp(err, "tiny: ", 6) == 0 && !strchr(err, '\n'), "%s is refused", cases[i].what);
        *cases[i].field = saved;
    }
    tokenizer_free(&m.tok1);
    tokenizer_free(&m.tok2);
}

// The interrogator's label lists: a count past CLIP_MAX_LABELS (lines, or lines x templates) is
// refused before it can overflow the int count or take the memory of a label each.
static void test_config_label_list_limit(void) {
    char dir[512], path[600], err[ERR_MAX] = "";
    if (!test_temp_dir(dir, sizeof(dir), "labels")) return;
    snprintf(path, sizeof(path), "%s/flavors.txt", dir);
    size_t n = (size_t)CLIP_MAX_LABELS + 1;
    char* text = xmalloc(2 * n);
    for (size_t i = 0; i < n; i++) text[2 * i] = 'a', text[2 * i + 1] = '\n';
    char** labels;
    int count;
    if (check_true(write_file_atomic(path, text, 2 * n, err) == 0, "write %s", path)) {
        int rc = clip_labels_read(path, NULL, 0, &labels, &count, err);
        if (rc == 0) clip_labels_free(labels, count);
        check_true(rc != 0 && strstr(err, path) && strstr(err, "more than"), "%zu labels -> %s", n, rc ? err : "(read)");
    }
    const char* templates[3] = {"{}", "by {}", "in the style of {}"};
    size_t third = (size_t)CLIP_MAX_LABELS / 3 + 1; // 3 x third > CLIP_MAX_LABELS
    if (check_true(write_file_atomic(path, text, 2 * third, err) == 0, "write %s", path)) {
        int rc = clip_labels_read(path, templates, 3, &labels, &count, err);
        if (rc == 0) clip_labels_free(labels, count);
        check_true(rc != 0 && strstr(err, path) && strstr(err, "more than"), "%zu lines in 3 templates -> %s", third,
                   rc ? err : "(read)");
        rc = clip_labels_read(path, templates, 1, &labels, &count, err);
        check_true(rc == 0 && count == (int)third, "the same lines in one template are read (%d labels)", count);
        if (rc == 0) clip_labels_free(labels, count);
    }
    free(text);
    test_temp_dir_remove(dir);
}

const TestCase tests_config[] = {
    {"config_unet_limits", test_config_unet_limits},
    {"config_unet_load_stops_at_config", test_config_unet_load_stops_at_config},
    {"config_vae_limits", test_config_vae_limits},
    {"config_clip_text_limits", test_config_clip_text_limits},
    {"config_clip_vision_limits", test_config_clip_vision_limits},
    {"config_clip_model_limits", test_config_clip_model_limits},
    {"config_bert_blip_limits", test_config_bert_blip_limits},
    {"config_scheduler_limits", test_config_scheduler_limits},
    {"config_lora_adapter_limits", test_config_lora_adapter_limits},
    {"config_tokenizer_ids", test_config_tokenizer_ids},
    {"config_yolo_metadata", test_config_yolo_metadata},
    {"config_model_bigger_than_its_file", test_config_model_bigger_than_its_file},
    {"config_components_must_fit", test_config_components_must_fit},
    {"config_label_list_limit", test_config_label_list_limit},
    {NULL, NULL},
};
