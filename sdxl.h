// sdxl.h: the SDXL UNet (diffusers UNet2DConditionModel as SDXL configures it).
//
// The architecture is read from unet/config.json, so the real model and the tiny test model of
// the same structure run through the same code: conv_in; a time embedding plus the "text_time"
// added conditioning (pooled text + six size/crop ids, each through a sinusoidal embedding);
// down blocks of ResNet blocks, optional Transformer2D blocks (self-attention, cross-attention to
// the text, GEGLU feed-forward) and a stride-2 downsampler; a mid block; up blocks that
// concatenate the skip connections; GroupNorm, SiLU, conv_out. Only what SDXL uses is supported
// (DownBlock2D / CrossAttnDownBlock2D, linear projections, no class embedding): anything else in a
// config is a one-line error rather than a silently different network.
#pragma once
#include <stdint.h>

#include "layers.h"
#include "safetensors.h"
#include "weights.h"

#define UNET_MAX_LEVELS 4

// Limits on unet/config.json, checked as it is read (json.h's config readers), each against what
// SDXL base 1.0 uses, with headroom for wider or deeper UNets of the same architecture. They keep
// every weight tensor under 2^31 elements (the widest, an up block's 3x3 conv on a 2C-channel
// input, has 18 C^2 = 3.0e8 at C = 4096) and every activation of a 4096 x 4096 image (a 512 x 512
// latent) under 2^31 elements per batch item (4096 x 512 x 512 = 2^30), so no size computation
// of the UNet can overflow.
#define UNET_MAX_CHANNELS 4096        // block_out_channels: SDXL 320, 640, 1280 (3.2x)
#define UNET_MAX_IO_CHANNELS 64       // in_channels, out_channels: SDXL 4 (inpainting UNets 9)
#define UNET_MAX_LAYERS_PER_BLOCK 16  // layers_per_block: SDXL 2
#define UNET_MAX_DEPTH 64             // transformer_layers_per_block (and reverse_...): SDXL 1, 2, 10
#define UNET_MAX_CONTEXT 8192         // cross_attention_dim: SDXL 2048 (768 + 1280)
#define UNET_MAX_GROUPS 1024          // norm_num_groups: SDXL 32
#define UNET_MAX_TIME_ID_DIM 4096     // addition_time_embed_dim: SDXL 256
#define UNET_MAX_ADD_IN 32768         // projection_class_embeddings_input_dim: SDXL 2816 = 1280 + 6 x 256
// The head count (attention_head_dim / num_attention_heads: SDXL 5, 10, 20) is checked against
// the width: it must divide it, into heads of at most ATTENTION_MAX_HS channels (SDXL: 64).

// The sizes unet_activation_bytes and unet_train_activation_bytes count for: batch N, latent
// h x w (SDXL at 1024 px: 2 x 128 x 128), Lctx text tokens (77 per prompt chunk). Far past what
// the commands allow (4096 px images), and small enough that with the config limits above no
// byte count comes near 2^63; outside them the functions stop with a one-line error.
#define UNET_MAX_BATCH 4096
#define UNET_MAX_LATENT 8192
#define UNET_MAX_TEXT_TOKENS (1 << 20)

typedef struct {
    int in_channels, out_channels;
    int levels;                                 // len(block_out_channels)
    int block_out[UNET_MAX_LEVELS];             // block_out_channels: 320, 640, 1280
    int has_attention[UNET_MAX_LEVELS];         // CrossAttnDownBlock2D at this level
    int transformer_depth[UNET_MAX_LEVELS];     // transformer_layers_per_block: 1, 2, 10
    int heads[UNET_MAX_LEVELS];                 // attention_head_dim (diffusers' name for the head count)
    int up_transformer_depth[UNET_MAX_LEVELS];  // reverse_transformer_layers_per_block (defaults to the reverse of the above)
    int layers_per_block;                       // 2
    int cross_attention_dim;                    // 2048
    int groups;                                 // norm_num_groups: 32
    float norm_eps;                             // 1e-5 (the transformers' GroupNorm uses 1e-6)
    int flip_sin_to_cos;                        // 1
    float freq_shift;                           // 0
    int addition_time_embed_dim;                // 256
    int projection_class_embeddings_input_dim;  // 2816 = pooled text 1280 + 6 * 256
    int time_embed_dim;                         // 4 * block_out[0] = 1280
} UnetConfig;

typedef struct {
    GroupNorm norm1;      // norm1                (SGM in_layers.0)
    Conv2d conv1;         // conv1                (in_layers.2)
    Linear time_emb_proj; // time_emb_proj        (emb_layers.1)
    GroupNorm norm2;      // norm2                (out_layers.0)
    Conv2d conv2;         // conv2                (out_layers.3)
    Conv2d shortcut;      // conv_shortcut 1x1    (skip_connection), when in != out
    int has_shortcut, in, out;
} UnetResBlock;

typedef struct {
    LayerNorm norm1, norm2, norm3;
    Linear q1, k1, v1, out1; // attn1: self-attention, q/k/v without bias
    Linear q2, k2, v2, out2; // attn2: cross-attention, k/v from the text (cross_attention_dim wide)
    Linear ff_in, ff_out;    // ff.net.0.proj (C -> 8C, GEGLU), ff.net.2 (4C -> C)
} UnetTransformerBlock;

typedef struct {
    GroupNorm norm;       // GroupNorm(groups, C, eps 1e-6)
    Linear proj_in, proj_out;
    UnetTransformerBlock* blocks;
    int depth, C, heads;
} UnetSpatialTransformer;

typedef struct {
    UnetResBlock* resnets;            // layers_per_block (down) or layers_per_block + 1 (up)
    UnetSpatialTransformer* attentions; // the same count when the level has attention, else NULL
    Conv2d sampler;                   // downsamplers.0.conv (stride 2) or upsamplers.0.conv
    int has_sampler;
} UnetBlock;

typedef struct {
    UnetConfig cfg;
    Conv2d conv_in;
    Linear time_linear_1, time_linear_2; // time_embedding.linear_{1,2}
    Linear add_linear_1, add_linear_2;   // add_embedding.linear_{1,2}
    UnetBlock down[UNET_MAX_LEVELS];
    UnetResBlock mid_res0, mid_res1;
    UnetSpatialTransformer mid_attn;
    UnetBlock up[UNET_MAX_LEVELS];
    GroupNorm norm_out; // conv_norm_out
    Conv2d conv_out;
    Weights w; // w.dtype is the UNet's precision: its weights and every activation inside it
} Unet;

int unet_config_read(UnetConfig* c, const char* path, char* err);
void unet_config_sdxl(UnetConfig* c); // SDXL base 1.0, for single-file checkpoints and benchmarks

// A diffusers folder `unet/` (config.json + diffusion_pytorch_model[.variant].safetensors, sharded
// or not), its weights stored as dtype (F32, F16 or BF16, whatever the file holds).
int unet_load(Unet* u, const char* folder, const char* variant, DType dtype, char* err);
// The UNet of an SGM single-file checkpoint (model.diffusion_model.*), with the given config.
int unet_load_sgm(Unet* u, const UnetConfig* cfg, const SafeTensors* st, DType dtype, char* err);
// The UNet of a config with its parameter memory allocated but not filled (weights.h has the
// fillers), and the same filled with weights_fill_random.
void unet_allocate(Unet* u, const UnetConfig* cfg, DType dtype);
void unet_init_random(Unet* u, const UnetConfig* cfg, DType dtype, uint64_t seed);
void unet_free(Unet* u);

// The SGM (and kohya LoRA) name of a diffusers UNet parameter name, e.g.
// "down_blocks.1.attentions.0.proj_in.weight" -> "input_blocks.4.1.proj_in.weight" (no
// "model.diffusion_model." prefix). Returns 0, or -1 for a name outside the architecture.
int unet_sgm_name(const UnetConfig* c, const char* diffusers_name, char* out, size_t cap);

// One evaluation for N latents of h x w:
//   sample (N, 4, h, w)   t (N) timesteps   context (N, Lctx, cross_attention_dim)
//   text_embeds (N, pooled)   time_ids (N, 6)   out (N, 4, h, w) = the predicted noise
// All on the backend but t and time_ids, which are host arrays; all f32 whatever the UNet's
// precision (a 16-bit UNet converts its inputs on the way in and the noise on the way out). act
// holds the activations and is released before returning; size it with unet_activation_bytes.
void unet_forward(const Unet* u, float* out, const float* sample, const float* t, const float* context, int Lctx,
                  const float* text_embeds, const float* time_ids, int N, int h, int w, Arena* act);
size_t unet_activation_bytes(const UnetConfig* c, int N, int h, int w, int Lctx, DType dtype);
// Floating-point operations of one unet_forward (2 per multiply-add in its matrix products,
// convolutions and attention products), for the benchmark's TFLOP/s. SDXL base: 6.761e12 at
// 1024 x 1024, batch 1 (../shared/notes/performance.md).
double unet_flops(const UnetConfig* c, int N, int h, int w, int Lctx);

// ----------------------------------------------------------------------------
// Training (the LoRA trainer, train.c)
//
// The base weights are frozen; the gradient flows through every activation to the LoRA adapters
// attached to the UNet's Linear layers (Linear.lora). unet_forward_train runs the forward of
// unet_forward and keeps, in a UnetTape, what unet_backward needs: each block's input and what
// its backward reads (the norms' statistics, the attention inputs and outputs, the GEGLU input).
// With checkpointing it keeps only each block's input and output, and the backward re-runs a
// block's forward before its backward (diffusers' enable_gradient_checkpointing, per block).
// Blocks before the first one holding an adapter get no tape and no backward.

// The layers a LoRA trainer adapts, in the order peft creates its adapters (model.named_modules():
// down_blocks, up_blocks, then mid_block; in each block its attentions, resnets, then sampler).
//   UNET_LORA_ATTENTION:   to_q, to_k, to_v and to_out.0 of both attentions of every transformer
//                          block, as diffusers' train_text_to_image_lora_sdxl.py (560 in SDXL)
//   UNET_LORA_TRANSFORMER: every Linear inside the Transformer2DModels, as kohya's sd-scripts
//                          (those, proj_in, proj_out, ff.net.0.proj and ff.net.2: 722)
//   convs: also every ResnetBlock2D's conv1, conv2, conv_shortcut and time_emb_proj and every
//          down/upsampler conv (kohya's conv_dim, "LoCon"): 3x3 convs get the conv rank, the 1x1
//          shortcut and the time projection the linear rank, as kohya does
// Fills at most cap entries (targets may be NULL) and returns how many there are.
typedef enum { UNET_LORA_ATTENTION, UNET_LORA_TRANSFORMER } UnetLoraTargets;
typedef struct {
    Linear* linear;  // one of these two is set
    Conv2d* conv;
} UnetLoraTarget;
int unet_lora_targets(Unet* u, UnetLoraTargets set, int convs, UnetLoraTarget* targets, int cap);

typedef struct {
    float *mean1, *rstd1, *mean2, *rstd2; // the two group norms' statistics (N, G)
    void* b;                              // conv1(...) + time embedding: norm2's input (N, out, h, w)
    void *a, *c;                          // conv1's and conv2's inputs, kept only when they have adapters
} ResblockTape;

typedef struct {
    void *x0, *x1, *x2;                   // the stream before each of the three residual steps (N, HW, C)
    void *n1, *q1, *k1, *v1, *a1;         // self-attention: norm1's output, q, k, v, attention output
    void *n2, *q2, *kc, *vc, *a2;         // cross-attention (kc, vc: (N, Lctx, C))
    void *n3, *f, *g;                     // feed-forward: norm3's output, ff_in's (8C), GEGLU's (4C)
    float *mean1, *rstd1, *mean2, *rstd2, *mean3, *rstd3; // the layer norms' statistics (N * HW)
} TransformerBlockTape;

typedef struct {
    float *mean, *rstd;                   // the group norm's statistics
    void *tokens, *stream;                // proj_in's input, proj_out's input (N, HW, C)
    TransformerBlockTape* blocks;         // one per transformer block
} SpatialTransformerTape;

// One resnet with the transformer that follows it at attention levels: a "layer" of a block.
typedef struct {
    int taped;                  // has a backward (at or after the first adapter)
    void* input;                // the resnet's input (up blocks: the concatenation with the skip)
    ResblockTape res;
    void* res_out;              // the resnet's output: the transformer's input, or the layer's output
    SpatialTransformerTape attn;
    void* out;                  // the layer's output
    int in, out_channels, h, w, has_attention;
    const UnetResBlock* resnet;
    const UnetSpatialTransformer* transformer;
} UnetLayerTape;

typedef struct {
    int N, h, w, Lctx, checkpointing;
    DType dtype;
    const void* context;        // (N, Lctx, cross_attention_dim) of dtype
    const void* emb_act;        // silu(time embedding) (N, TE)
    UnetLayerTape* layers;      // every layer in forward order: down blocks, mid, up blocks
    int layer_count;
    int first_taped;            // the first layer with an adapter
    void* out_input;            // conv_norm_out's input (N, C0, h, w)
    float *out_mean, *out_rstd;
} UnetTape;

// unet_forward for training: the same arguments and result (out: the predicted noise, f32),
// with what unet_backward needs left in tape and act. Call unet_backward before releasing act.
void unet_forward_train(const Unet* u, UnetTape* tape, float* out, const float* sample, const float* t,
                        const float* context, int Lctx, const float* text_embeds, const float* time_ids, int N, int h,
                        int w, int checkpointing, Arena* act);
// dout: the gradient of the loss with respect to out (N, 4, h, w), f32 on the backend. Adds the
// adapters' gradients into their grad_A, grad_B; frees the tape's host arrays.
void unet_backward(const Unet* u, UnetTape* tape, const float* dout, Arena* act);
// The arena bytes one unet_forward_train + unet_backward uses at most, rounded up generously.
size_t unet_train_activation_bytes(const Unet* u, int N, int h, int w, int Lctx, int checkpointing);
