// libFuzzer target for the config readers: any bytes, read as each model's config file (the UNet's,
// the VAE's, a CLIP text or vision config, a BERT config, a scheduler config), must be accepted or
// rejected with one line naming the file, never a crash. An accepted config then goes through
// what a loader does before it touches weights: the UNet's first build pass (every parameter's
// shape, checked in weights_param), the VAE's, and the activation byte counters at the largest
// image the commands allow, under ASan and UBSan (a signed overflow in a size is a finding), and
// each count must stay far from 2^63 (the config limits are what keeps it there).
//   make fuzz            (all targets, FUZZ_SECONDS each)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../blip.h"
#include "../../clip.h"
#include "../../common.h"
#include "../../sample.h"
#include "../../sdxl.h"
#include "../../vae.h"

static char g_path[64]; // the config file each input is written to

static void remove_config_file(void) { unlink(g_path); }

int LLVMFuzzerInitialize(int* argc, char*** argv) {
    snprintf(g_path, sizeof(g_path), "/tmp/sdxl_fuzz_config_%d.json", (int)getpid());
    atexit(remove_config_file);
    return 0;
}

// A rejection must say why, on one line that names the file.
static void check_rejection(const char* err) {
    if (err[0] == 0 || strchr(err, '\n') || !strstr(err, g_path)) __builtin_trap();
}

static void check_count(size_t bytes) {
    if (bytes == 0 || bytes > ((size_t)1 << 62)) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    FILE* f = fopen(g_path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    char err[ERR_MAX];

    UnetConfig u;
    err[0] = 0;
    if (unet_config_read(&u, g_path, err) == 0) {
        // 2 x 512 x 512 latents: a 4096 px image with guidance; a 300-token prompt in 4 chunks
        check_count(unet_activation_bytes(&u, 2, 512, 512, 4 * 77, DT_F16));
        check_count(unet_activation_bytes(&u, 1, 1, 1, 77, DT_F32));
        if (!(unet_flops(&u, 1, 16, 16, 77) > 0)) __builtin_trap(); // the first build pass
    } else {
        check_rejection(err);
    }

    VaeConfig v;
    err[0] = 0;
    if (vae_config_read(&v, g_path, err) == 0) {
        int latent = 4096 >> (v.levels - 1); // what a 4096 px image encodes to
        check_count(vae_encode_arena_bytes(&v, 1, 4096, 4096, DT_F32));
        check_count(vae_decode_arena_bytes(&v, 1, latent, latent, DT_BF16));
    } else {
        check_rejection(err);
    }

    ClipTextConfig ct;
    err[0] = 0;
    if (clip_text_config_read(&ct, g_path, err) == 0) check_count(clip_text_scratch_floats(&ct, 8, ct.max_positions));
    else check_rejection(err);

    ClipVisionConfig cv;
    err[0] = 0;
    if (clip_vision_config_read(&cv, g_path, err) == 0) check_count(clip_vision_scratch_floats(&cv, 8));
    else check_rejection(err);

    BertConfig b;
    err[0] = 0;
    if (bert_config_read(&b, g_path, err) != 0) check_rejection(err);

    SchedulerConfig sc;
    err[0] = 0;
    if (scheduler_config_read(&sc, g_path, err) == 0) {
        for (int k = 0; k < SAMPLER_COUNT; k++) {
            Schedule s;
            err[0] = 0;
            if (schedule_init(&s, (SamplerKind)k, 30, &sc, err) != 0 && err[0] == 0) __builtin_trap();
        }
    } else {
        check_rejection(err);
    }
    return 0;
}
