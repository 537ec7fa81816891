// vae.h: the SDXL VAE (diffusers AutoencoderKL with DownEncoderBlock2D / UpDecoderBlock2D blocks).
//
//   VaeConfig cfg;  Vae vae;  Arena acts;
//   vae_load(&vae, "sdxl/vae", DT_F32, err);              // a diffusers folder, or an SGM single file
//   arena_init(&acts, "vae activations", vae_decode_arena_bytes(&vae.config, 1, 128, 128, DT_F32), on_device);
//   scale_forward(z, latents, 1.0f / vae.config.scaling_factor, n);   // the caller un-scales (see below)
//   vae_decode(&vae, image, z, 1, 128, 128, &acts);       // (1, 4, 128, 128) -> (1, 3, 1024, 1024)
//
// Scaling: vae_decode and vae_encode are AutoencoderKL.decode / .encode, which do NOT apply
// scaling_factor: the SDXL pipeline divides the UNet's latents by it before decoding
// (`latents / vae.config.scaling_factor`), and a trainer multiplies the encoder's latent by it
// (`latent_dist.sample() * scaling_factor`). SDXL has no shift_factor (config null), so that is all.
// All image and latent pointers live on the current backend (ops.h) and are f32, whatever the VAE's
// precision; activations come from the caller's arena, which must be on the same backend and hold
// vae_*_arena_bytes(...) bytes.
#pragma once
#include <stddef.h>

#include "layers.h"
#include "tensor.h"
#include "weights.h"

#define VAE_MAX_LEVELS 8 // entries of block_out_channels (SDXL: 4)
#define VAE_MAX_LAYERS 8 // resnets per level: layers_per_block (encoder), layers_per_block + 1 (decoder)

// Limits on vae/config.json, checked as it is read, against SDXL's values with headroom. The VAE
// works at full image resolution, so its widths are kept low enough that a level's activation of
// a 4096 x 4096 image stays far from 2^63 bytes and its widest conv (3x3, C x C) under 2^31
// elements.
#define VAE_MAX_CHANNELS 2048       // block_out_channels: SDXL 128, 256, 512, 512 (4x)
#define VAE_MAX_IO_CHANNELS 16      // in_channels, out_channels: SDXL 3 (RGB)
#define VAE_MAX_LATENT_CHANNELS 64  // latent_channels: SDXL 4 (SD3 and Flux VAEs 16)
#define VAE_MAX_GROUPS 1024         // norm_num_groups: SDXL 32
// layers_per_block: SDXL 2, at most VAE_MAX_LAYERS - 1 (the decoder has one more per level)
#define VAE_MIN_SCALE 1e-6          // scaling_factor: SDXL 0.13025 (SD 1.x 0.18215, SD3 1.5305)
#define VAE_MAX_SCALE 1e3
// The sizes vae_decode_arena_bytes and vae_encode_arena_bytes count for: batch N, images of at
// most VAE_MAX_SIDE px a side (latents that decode to at most that). Far past what the commands allow
// (4096 px), and small enough that no byte count comes near 2^63 under the limits above.
#define VAE_MAX_BATCH 64
#define VAE_MAX_SIDE 65536

// The VAE's config.json, restricted to what SDXL uses (anything else is a one-line error).
typedef struct {
    int in_channels, out_channels;        // image channels: 3, 3
    int latent_channels;                  // 4
    int levels;                           // len(block_out_channels): 4
    int block_out_channels[VAE_MAX_LEVELS]; // [128, 256, 512, 512]
    int layers_per_block;                 // 2
    int norm_num_groups;                  // 32
    float scaling_factor;                 // 0.13025 (SDXL); applied by the caller, see above
} VaeConfig;

// Reads a diffusers component config.json. Returns 0, or -1 with a one-line error naming the file.
int vae_config_read(VaeConfig* cfg, const char* path, char* err);
// SDXL's numbers, for single-file checkpoints, which carry no config.
void vae_config_sdxl(VaeConfig* cfg);

// ----------------------------------------------------------------------------
// Blocks (field comments give the diffusers module name, then the SGM/LDM one)

// diffusers ResnetBlock2D without time embedding (temb_channels None) == LDM ResnetBlock
typedef struct {
    GroupNorm norm1;  // norm1                        (C_in groups, eps 1e-6)
    Conv2d conv1;     // conv1                        3x3, C_in -> C_out
    GroupNorm norm2;  // norm2
    Conv2d conv2;     // conv2                        3x3, C_out -> C_out
    Conv2d shortcut;  // conv_shortcut / nin_shortcut 1x1, only when C_in != C_out
    int has_shortcut;
} VaeResnet;

// diffusers Attention as UNetMidBlock2D builds it: 1 head of C, group_norm, biases, residual
// connection, rescale_output_factor 1 == LDM AttnBlock
typedef struct {
    GroupNorm group_norm; // group_norm  / norm
    Linear to_q, to_k, to_v; // to_q/k/v / q, k, v (LDM: [C, C, 1, 1] convs)
    Linear to_out;        // to_out.0    / proj_out
    int C;
} VaeAttention;

// UNetMidBlock2D: resnet, attention, resnet == LDM mid.block_1, mid.attn_1, mid.block_2
typedef struct {
    VaeResnet resnet0, resnet1;
    VaeAttention attn;
} VaeMidBlock;

// DownEncoderBlock2D (resnets, then Downsample2D) or UpDecoderBlock2D (resnets, then Upsample2D)
typedef struct {
    VaeResnet resnets[VAE_MAX_LAYERS];
    int num_resnets;
    Conv2d sampler; // downsamplers.0.conv (3x3 stride 2, pad 0) or upsamplers.0.conv (3x3, pad 1)
    int has_sampler; // all levels but the last (encoder) / the last (decoder)
} VaeLevel;

typedef struct {
    Conv2d conv_in;                 // 3x3, in_channels -> block_out_channels[0]
    VaeLevel down[VAE_MAX_LEVELS];  // down_blocks.i / down.i
    VaeMidBlock mid;
    GroupNorm norm_out;             // conv_norm_out / norm_out
    Conv2d conv_out;                // 3x3, block_out_channels[-1] -> 2 * latent_channels
} VaeEncoder;

typedef struct {
    Conv2d conv_in;                 // 3x3, latent_channels -> block_out_channels[-1]
    VaeMidBlock mid;
    VaeLevel up[VAE_MAX_LEVELS];    // up_blocks.i / up.(levels-1-i), in reversed channel order
    GroupNorm norm_out;
    Conv2d conv_out;                // 3x3, block_out_channels[0] -> out_channels
} VaeDecoder;

// Where one module's parameters are in each checkpoint layout; the build records one per module,
// so the SGM key map is generated by the same loops that declare the parameters.
typedef struct {
    char name[NAME_MAX_LEN]; // diffusers: "decoder.up_blocks.1.resnets.0.conv_shortcut"
    char sgm[NAME_MAX_LEN];  // SGM/LDM:   "decoder.up.2.block.0.nin_shortcut"
    char old[NAME_MAX_LEN];  // diffusers' deprecated attention name ("...attentions.0.query"), or ""
} VaeModuleName;

typedef struct {
    VaeConfig config;
    Weights weights;        // one allocation on the backend that was current at load
    VaeEncoder encoder;
    VaeDecoder decoder;
    Conv2d quant_conv;      // 1x1, 2*latent -> 2*latent (after the encoder)
    Conv2d post_quant_conv; // 1x1, latent -> latent (before the decoder)
    VaeModuleName* modules;
    int module_count, module_capacity;
} Vae;

// Loads a VAE on the current backend from
//   - a diffusers component folder (config.json + diffusion_pytorch_model[.fp16].safetensors or
//     its sharded .index.json; the fp32 file is preferred), names exactly diffusers' (the
//     deprecated attention names query/key/value/proj_attn are accepted too), or
//   - a single .safetensors file in the SGM/LDM layout: a whole SDXL checkpoint (VAE under
//     "first_stage_model."), or a VAE-only file (no prefix, or "vae."), with SDXL's config. A file
//     that holds diffusers names is read as diffusers.
// Strict: a missing tensor or a wrong shape is a one-line error naming the tensor and the file.
// Returns 0, or -1 with err filled (the Vae is then empty; vae_free is still safe).
// dtype is the VAE's precision, weights and activations: F32 (diffusers' choice for SDXL, whose
// VAE overflows in f16: force_upcast) or BF16 (f32's range, the fast GPU path). F16 is allowed,
// for experiments only.
int vae_load(Vae* vae, const char* folder_or_file, DType dtype, char* err);
// The same with an explicit config (a single file of a non-SDXL-sized VAE, as the tests' tiny one).
int vae_load_with_config(Vae* vae, const VaeConfig* cfg, const char* folder_or_file, DType dtype, char* err);
void vae_free(Vae* vae);
// The VAE of a config with its parameter memory allocated but not filled, and the same with
// random weights (weights_fill_random), for the weight-free demo.
void vae_allocate(Vae* vae, const VaeConfig* cfg, DType dtype);
void vae_init_random(Vae* vae, const VaeConfig* cfg, DType dtype, uint64_t seed);

// Letters: N batch, h w latent size, H W image size (H = h * 2^(levels-1): 8x for SDXL).
//
// vae_decode: AutoencoderKL.decode(z).sample = decoder(post_quant_conv(z)), NOT divided by
// scaling_factor (the caller does it, as the pipeline does).
//   z (N, latent_channels, h, w)   image (N, out_channels, H, W), about [-1, 1] (=)
void vae_decode(const Vae* vae, float* image, const float* z, int N, int h, int w, Arena* acts);
// vae_encode: AutoencoderKL.encode(image).latent_dist, the diagonal Gaussian:
//   image (N, in_channels, H, W) in [-1, 1]
//   mean, logvar (N, latent_channels, H/2^(levels-1), W/2^(levels-1)) (=); logvar is clamped to
//   [-30, 20] as DiagonalGaussianDistribution does. mean or logvar may be NULL when not wanted.
//   sample: when not NULL, mean + exp(0.5 * logvar) * noise (posterior.sample() with that noise);
//   noise has the shape of mean. A trainer multiplies mean or sample by scaling_factor.
void vae_encode(const Vae* vae, float* mean, float* logvar, float* sample, const float* noise, const float* image,
                int N, int H, int W, Arena* acts);

// Latent size of an image side: H after levels-1 downsamples (each (H - 2) / 2 + 1 = floor(H / 2)).
int vae_latent_size(const VaeConfig* cfg, int H);
// The arena bytes vae_decode / vae_encode use (their exact high-water mark), so a caller can
// allocate once. SDXL at 1024x1024 in f32: vae_decode_arena_bytes(&cfg, 1, 128, 128, DT_F32) =
// 2084 MiB (two 256 x 1024 x 1024 tensors around the last upsampler, plus one im2col chunk);
// vae_encode_arena_bytes(&cfg, 1, 1024, 1024, DT_F32) = 1554 MiB; half that in bf16. Per image:
// N images take N times the tensors (the im2col chunk is shared).
size_t vae_decode_arena_bytes(const VaeConfig* cfg, int N, int h, int w, DType dtype);
size_t vae_encode_arena_bytes(const VaeConfig* cfg, int N, int H, int W, DType dtype);
