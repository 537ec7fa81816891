// pipeline.h: SDXL text-to-image from end to end, as diffusers' StableDiffusionXLPipeline does it,
// with AUTOMATIC1111's prompt emphasis and long prompts, and the storyboard job's defaults.
//
//   prompt -> two tokenizers -> two text encoders (penultimate states, 768 + 1280 = 2048 wide;
//   the pooled bigG projection) -> seed-42 latent noise (torch.randn on the CPU generator) ->
//   the sampler, calling the UNet twice per step (negative and positive prompt: classifier-free
//   guidance) -> latents / scaling_factor -> VAE decoder -> [0, 1] pixels -> centre crop to the
//   asked size -> an 8-bit RGB image with A1111's `parameters` text.
#pragma once
#include <stdint.h>

#include "clip.h"
#include "png.h"
#include "sample.h"
#include "sdxl.h"
#include "tokenizer.h"
#include "vae.h"

// The storyboard job's defaults (README): the template appended to every prompt, and the negative
// prompt, unless --no-style.
#define STORYBOARD_STYLE "(((black and white))) in the style of storyboard and cartoonish"
extern const char* const STORYBOARD_NEGATIVE;

typedef struct {
    Tokenizer tok1, tok2;  // tokenizer/ (pads with <|endoftext|>), tokenizer_2/ (pads with "!" = 0)
    ClipText te1, te2;     // CLIP ViT-L/14, OpenCLIP ViT-bigG/14
    Unet unet;
    Vae vae;
    SchedulerConfig sched;
    int force_zeros_for_empty_prompt; // model_index.json; an empty negative prompt encodes as zeros
    char name[256];                   // the folder's or file's base name, for the PNG parameters
} SdxlModel;

// Loads a diffusers SDXL folder (model_index.json, unet/, vae/, text_encoder(_2)/, tokenizer(_2)/,
// scheduler/; weights with or without the .fp16 variant: `variant` NULL picks the plain files when
// present, else fp16) or an SGM single-file checkpoint (`*.safetensors`: model.diffusion_model.*,
// conditioner.embedders.{0,1}.*, first_stage_model.*). A single file holds no configs and no
// tokenizer: its architecture is SDXL base's unless `config_dir` names a diffusers folder whose
// config.json files describe it (its weights are not read), and its tokenizers come from
// `tokenizer_dir` (a folder with vocab.json and merges.txt) or else config_dir's tokenizer(_2)/.
// precision says how each network is stored and run (NULL: all f32, the reference).
typedef struct {
    DType unet; // F32, or F16 for the fast GPU path (BF16 works too)
    DType vae;  // F32, or BF16 for the fast GPU path (SDXL's VAE overflows in F16)
    DType text; // the two text encoders: F32, or F16 for the fast GPU path (as diffusers loads them)
} SdxlPrecision;
int sdxl_model_load(SdxlModel* m, const char* path, const char* variant, const char* config_dir, const char* tokenizer_dir,
                    const SdxlPrecision* precision, char* err);
void sdxl_model_free(SdxlModel* m);
// That the loaded components fit together as the pipeline uses them (sdxl_model_load calls it):
// the UNet and the VAE on SDXL_LATENT_CHANNELS-channel latents, an RGB VAE, the text encoders'
// widths the UNet's, a pooled projection, and no tokenizer id past its encoder's vocabulary. Each
// config is valid on its own; this is what no single config can say. path names the model in err.
#define SDXL_LATENT_CHANNELS 4 // the latents the pipeline and the trainer make: (N, 4, h, w)
int sdxl_model_check(const SdxlModel* m, const char* path, char* err);

typedef struct {
    const char* prompt;
    const char* negative;   // "" encodes as zeros when the model says force_zeros_for_empty_prompt
    int width, height;      // output size in pixels; generation runs at the next multiples of 8, then crops
    int steps;
    float cfg;              // guidance scale; <= 1 runs the positive prompt alone, as diffusers does
    uint64_t seed;          // torch.Generator("cpu").manual_seed(seed) for the initial latents
    SamplerKind sampler;
    int quiet;              // no progress lines
    const char* lora_name;  // for the PNG parameters only (the LoRA is merged at load): NULL when none
    float lora_scale;
    struct GenerateTimings* timings; // when not NULL, filled with where the time went (benchmarks)
} GenerateParams;

// Seconds of one sdxl_generate, the backend synchronised at each boundary: prompts to
// conditioning (tokenizers, both text encoders), the denoising loop (all UNet evaluations and
// sampler updates), the VAE decode, and everything from start to the finished 8-bit image.
typedef struct GenerateTimings {
    double text, denoise, decode, total;
} GenerateTimings;

// Filled when the caller wants to look inside (tests compare each stage with diffusers); host memory,
// malloc'd, freed by generate_trace_free.
typedef struct {
    float* context;       // (2, L, 2048): [negative, positive] text conditioning
    float* pooled;        // (2, pooled): [negative, positive]
    int context_tokens;   // L = 77 * chunks
    float* latents_final; // (1, 4, h, w) after the last step, before 1/scaling_factor
    float* image;         // (gen_h, gen_w, 3) in [0, 1], before the crop and the 8-bit rounding
    int gen_width, gen_height;
} GenerateTrace;

// Encodes [negative, positive] into context (2, n*77, 2048) and pooled (2, 1280), fresh host arrays:
// n is the largest chunk count of the four (two prompts x two tokenizers); shorter ones are padded
// with empty chunks. An empty negative prompt encodes as zeros when force_zeros_for_empty_prompt.
// Returns 0, or -1 with err "prompt: ..." / "negative prompt: ..." on a prompt the tokenizer
// rejects (a bad emphasis weight, or above a PROMPT_MAX_* limit of tokenizer.h).
int sdxl_encode_prompts(SdxlModel* m, const char* positive, const char* negative, float** context, float** pooled,
                        int* tokens, char* err);

// A caption as diffusers' training script encodes it (train_text_to_image_lora_sdxl.py
// encode_prompt): each tokenizer's 77 padded ids, truncated, with no emphasis syntax; both
// encoders' penultimate states side by side into context (77, 768 + 1280), host memory of the
// caller; the bigG pooled projection into pooled (1280).
void sdxl_encode_caption(SdxlModel* m, const char* caption, float* context, float* pooled);

// Runs the pipeline on the current backend. out receives an 8-bit RGB image of width x height
// carrying the `parameters` text; trace may be NULL. Returns 0, or -1 with a one-line error.
int sdxl_generate(SdxlModel* m, const GenerateParams* p, Image* out, GenerateTrace* trace, char* err);
void generate_trace_free(GenerateTrace* t);

// The prompt with the storyboard template appended: "<prompt>, (((black and white))) in the style ...".
// Returns a malloc'd string.
char* storyboard_prompt(const char* prompt);
// AUTOMATIC1111's `parameters` text for a finished image (a malloc'd string).
char* a1111_parameters(const SdxlModel* m, const GenerateParams* p);
