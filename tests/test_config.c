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

#include "../common.h"
#include "../sdxl.h"
#include "check.h"

// The golden file `name` (under tests/golden) copied into g_src, since golden_path reuses its buffer.
static char g_src[4096];
static const char* golden(const char* name) {
    snprintf(g_src, sizeof(g_src), "%s", golden_path(name));
    return g_src;
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

const TestCase tests_config[] = {
    {"config_unet_limits", test_config_unet_limits},
    {"config_unet_load_stops_at_config", test_config_unet_load_stops_at_config},
    {NULL, NULL},
};
