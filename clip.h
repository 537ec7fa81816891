// clip.h: the CLIP text transformer, both of SDXL's text encoders.
//
//   text_encoder    transformers CLIPTextModel: OpenAI CLIP ViT-L/14 (768 wide, 12 layers, quick_gelu)
//   text_encoder_2  transformers CLIPTextModelWithProjection: OpenCLIP ViT-bigG/14 (1280 wide,
//                   32 layers, gelu, a bias-free text_projection)
// One struct and one forward serve both; the config (read from the component's config.json)
// says which activation and whether there is a projection. SDXL uses the penultimate layer's
// hidden states (hidden_states[-2], no final layer norm) of each encoder, and the pooled
// projection of the second (final_layer_norm, the row of the first end-of-text token, then
// text_projection).
#pragma once
#include <stdint.h>

#include "layers.h"
#include "safetensors.h"
#include "weights.h"

typedef enum { CLIP_ACT_QUICK_GELU, CLIP_ACT_GELU } ClipActivation;

typedef struct {
    int vocab_size, hidden, intermediate, layers, heads, max_positions;
    float eps;
    ClipActivation act;
    int projection_dim; // 0: no text_projection (CLIPTextModel)
    int eos_token_id;   // 2 in legacy configs: then the pooled row is argmax(ids), as transformers does
} ClipTextConfig;

typedef struct {
    LayerNorm ln1;         // layer_norm1
    Linear q, k, v, out;   // self_attn.{q,k,v,out}_proj, all with biases
    LayerNorm ln2;         // layer_norm2
    Linear fc1, fc2;       // mlp.fc1, mlp.fc2
} ClipLayer;

typedef struct {
    ClipTextConfig cfg;
    float* token_embedding;    // (vocab, hidden)      embeddings.token_embedding.weight
    float* position_embedding; // (positions, hidden)  embeddings.position_embedding.weight
    ClipLayer* layers;         // (cfg.layers)
    LayerNorm final_ln;        // final_layer_norm
    Linear projection;         // text_projection (projection_dim, hidden), no bias
    Weights w;
} ClipText;

// SDXL base's encoders, for single-file checkpoints that carry no config: which 1 = CLIP ViT-L/14
// (text_encoder), 2 = OpenCLIP ViT-bigG/14 (text_encoder_2).
void clip_text_config_sdxl(ClipTextConfig* c, int which);
// Reads a transformers CLIP text config.json (CLIPTextConfig fields).
int clip_text_config_read(ClipTextConfig* c, const char* path, char* err);

// Builds the parameter table and loads it from a transformers folder (`text_encoder/`:
// config.json + model[.variant].safetensors; keys with or without the "text_model." prefix).
int clip_text_load(ClipText* m, const char* folder, const char* variant, char* err);
// Builds it from a config and loads the tensors from an open SafeTensors set: the HF names after
// `prefix` (the SGM file's CLIP-L: "conditioner.embedders.0.transformer."), or, with open_clip
// set, OpenCLIP's names after `prefix` (the SGM file's bigG: "conditioner.embedders.1.model.").
int clip_text_load_from(ClipText* m, const ClipTextConfig* cfg, const SafeTensors* st, const char* prefix, int open_clip,
                        char* err);
// Builds it with random weights (the demo and benchmarks).
void clip_text_init_random(ClipText* m, const ClipTextConfig* cfg, uint64_t seed);
void clip_text_free(ClipText* m);

// Runs B sequences of L <= max_positions token ids (host memory) through the encoder.
//   penultimate (B, L, hidden), backend: hidden_states[-2], the input of the last layer   (=)
//   pooled      (B, projection_dim), backend, or NULL: text_projection(final_ln(last)[eos])  (=)
// Temporaries come from scratch (released before returning).
void clip_text_forward(const ClipText* m, const int32_t* ids, int B, int L, float* penultimate, float* pooled,
                       Arena* scratch);
// Scratch floats clip_text_forward needs for B x L tokens.
size_t clip_text_scratch_floats(const ClipTextConfig* c, int B, int L);
