// lora.h: LoRA files for SDXL (kohya, diffusers and PEFT formats), merged into loaded models.
//
// A LoRA adapts a weight W (out, in) of a Linear, or (out, in, kh, kw) of a Conv2d, by a low-rank
// product: W += scale * factor * up @ down, with down (rank, in[, kh, kw]) and up (out, rank[, 1, 1])
// and factor = alpha / rank (alpha / sqrt(rank) for PEFT's use_rslora). `scale` is the strength
// the user asks for (A1111's <lora:name:0.4>, diffusers' fuse_lora(lora_scale=0.4)).
//
//   Lora lora;
//   if (lora_load(&lora, "style.safetensors", err) != 0) fatal("%s", err);
//   if (lora_merge(&lora, 0.4f, &unet, &te1, &te2, err) != 0) fatal("%s", err);
//   lora_free(&lora);
//
// lora_load reads and checks the file on its own (format, key spelling, pairs of tensors, ranks,
// alphas); which parameter each module adapts is resolved by lora_merge, against the loaded
// models' parameter tables. Every problem is a one-line error naming the file and the key.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "clip.h"
#include "common.h"
#include "sdxl.h"

typedef enum { LORA_UNET = 0, LORA_TE1 = 1, LORA_TE2 = 2 } LoraModel; // CLIP-L, OpenCLIP bigG
#define LORA_MODELS 3

// Limits on a LoRA's numbers, from its tensors' shapes and from its adapter config (PEFT's
// adapter_config.json "r", "lora_alpha", "rank_pattern", "alpha_pattern", or diffusers'
// lora_adapter_metadata): SDXL LoRAs use ranks 4 to 256 and alphas up to the rank; no SDXL layer
// is wider than 10240 (the GEGLU projection), so no useful rank is either.
#define LORA_MAX_RANK 10240
#define LORA_MAX_ALPHA 1e6 // |alpha|: the factor alpha / rank multiplies the weights

typedef enum {
    LORA_KOHYA,     // lora_unet_* / lora_te1_* / lora_te2_*  .lora_down.weight .lora_up.weight .alpha
    LORA_DIFFUSERS, // unet.* / text_encoder.* / text_encoder_2.*  (lora_A/lora_B, lora.down/up, lora_linear_layer.down/up)
    LORA_PEFT,      // base_model.model.*  .lora_A.weight .lora_B.weight, alphas in adapter_config.json
} LoraFormat;

typedef struct {
    char* name;          // the module's key in the file without its suffix, e.g. "lora_unet_input_blocks_4_1_proj_in"
    LoraModel model;
    int file;            // index into Lora.files, for messages
    int rank;
    float alpha;         // the file's alpha (rank when it gives none)
    double factor;       // what multiplies up @ down at scale 1: alpha / rank, or alpha / sqrt(rank) (rslora)
    int down_dims, up_dims;
    int64_t down_shape[4], up_shape[4]; // (rank, in[, kh, kw]) and (out, rank[, 1, 1])
    float* down;         // host f32
    float* up;           // host f32
} LoraModule;

typedef struct {
    char path[4096];     // what lora_load was given (a file or a folder)
    LoraFormat format;
    LoraModule* modules;
    int count;
    char** files;        // the .safetensors files read: one, or one per component of a PEFT folder
    int file_count;
    char network_dim[32], network_alpha[32]; // kohya's ss_network_dim / ss_network_alpha metadata, or ""
    char note[ERR_MAX];  // a line the caller should print (e.g. why alpha = rank was assumed), or ""
} Lora;

// Reads a LoRA: a .safetensors file of any of the three formats, or a folder holding
// pytorch_lora_weights.safetensors (diffusers' save_lora_weights), adapter_model.safetensors (one
// PEFT adapter), or unet/, text_encoder/, text_encoder_2/ PEFT adapters. Returns 0, or -1 with err.
int lora_load(Lora* l, const char* path, char* err);

// Adds scale * factor * up @ down to every adapted weight, on the current backend (the GEMM is
// matmul_forward with beta = 1). te1/te2 may be NULL when the LoRA has no modules for them; a
// module for a model that is not given, a name that matches no parameter, a parameter adapted twice
// or a shape that does not fit is an error, reported before any weight is touched. scale 0 checks
// everything and leaves the weights bit-identical.
int lora_merge(const Lora* l, float scale, Unet* unet, ClipText* te1, ClipText* te2, char* err);

void lora_free(Lora* l);

// One line: "kohya, 32 modules (unet 27, te1 5), rank 2..4, alpha 1..2, ss_network_dim 4, ss_network_alpha 2".
void lora_describe(const Lora* l, char* buf, size_t cap);

// The spellings a model parameter's LoRA module has in a format. For the UNet's
// "down_blocks.1.attentions.0.proj_in.weight" in kohya: "lora_unet_input_blocks_4_1_proj_in"
// (sd-scripts, SGM names) and "lora_unet_down_blocks_1_attentions_0_proj_in" (diffusers'
// convert_state_dict_to_kohya). Returns how many were written (0: the parameter takes no LoRA).
#define LORA_NAME_MAX 256
#define LORA_MAX_SPELLINGS 2
int lora_param_names(LoraFormat f, LoraModel m, const UnetConfig* ucfg, const char* param,
                     char names[LORA_MAX_SPELLINGS][LORA_NAME_MAX]);

// Writing (the trainer's output). Each module adapts the UNet Linear or Conv2d whose weight is
// `param` ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"), with down
// (rank, in[, k, k]) and up (out, rank[, 1, 1]) in host f32, stored as `dtype` (F32, F16 or BF16).
//   LORA_KOHYA:     what sd-scripts writes for SDXL: "lora_unet_" + the SGM module path with '_',
//                   .lora_down.weight, .lora_up.weight and .alpha (a 0-d F32, kohya's float buffer),
//                   so A1111, ComfyUI, diffusers and kohya's tools all load it. meta: the caller's
//                   ss_* / modelspec.* pairs.
//   LORA_DIFFUSERS: what train_text_to_image_lora_sdxl.py saves (save_lora_weights): "unet." +
//                   module path + .lora.down.weight / .lora.up.weight, __metadata__ {"format": "pt"},
//                   no alphas: a module whose alpha is not its rank has alpha / rank folded into up,
//                   so every loader (which takes alpha = rank here) applies the same product.
// The file appears atomically. Returns 0, or -1 with a one-line err.
typedef struct {
    const char* param;
    int rank, in, out, k; // down (rank, in[, k, k]), up (out, rank[, 1, 1]); k = 1 for a Linear
    int conv;             // a Conv2d: the 4-D shapes (kohya writes 1x1 convs 4-D too)
    float alpha;
    const float* down;
    const float* up;
} LoraWriteModule;
int lora_write(const char* path, LoraFormat format, const UnetConfig* ucfg, const LoraWriteModule* modules, int count,
               DType dtype, const char* const* meta_keys, const char* const* meta_values, int meta_count, char* err);
