// clip.h: the CLIP text transformer, both of SDXL's text encoders; and, for the evaluators, the
// CLIP vision tower, CLIPModel folders, CLIP preprocessing, the CLIP score and the CLIP
// interrogator (second half of this file).
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

#include "image.h"
#include "layers.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "weights.h"

typedef enum { CLIP_ACT_QUICK_GELU, CLIP_ACT_GELU } ClipActivation;

// Limits on the CLIP configs (text_encoder/, text_encoder_2/, a CLIPModel's text_config and
// vision_config), checked as they are read. SDXL's encoders: CLIP ViT-L/14 (vocab 49408, hidden
// 768, MLP 3072, 12 layers, 12 heads) and OpenCLIP bigG/14 (1280, 5120, 32, 20, projection 1280);
// the CLIP score's ViT-L/14 vision tower: 1024, 4096, 24, 16, 224 px in 14 px patches. The
// limits keep every tensor under 2^31 elements (the token table: 2^18 x 4096 = 2^30).
#define CLIP_MAX_VOCAB 262144        // vocab_size: 49408 (5.3x)
#define CLIP_MAX_HIDDEN 4096         // hidden_size, projection_dim: 1280 (3.2x)
#define CLIP_MAX_INTERMEDIATE 16384  // intermediate_size: 5120 (3.2x)
#define CLIP_MAX_LAYERS 128          // num_hidden_layers: 32 (4x)
#define CLIP_MAX_POSITIONS 1024      // max_position_embeddings: 77 (Long-CLIP 248)
#define CLIP_MAX_IMAGE 1024          // image_size: 224 (336 for ViT-L/14@336)
#define CLIP_MAX_VISION_TOKENS 4097  // 1 + (image_size / patch_size)^2: 257 (577 at 336 px): a 64 x 64 grid
// num_attention_heads must divide hidden_size into heads of at most ATTENTION_MAX_HS (SDXL: 64);
// eos_token_id must be an id of the vocabulary; num_channels must be 3 (the preprocessing is RGB).

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
int clip_text_load(ClipText* m, const char* folder, const char* variant, DType dtype, char* err);
// Builds it from a config and loads the tensors from an open SafeTensors set: the HF names after
// `prefix` (the SGM file's CLIP-L: "conditioner.embedders.0.transformer."), or, with open_clip
// set, OpenCLIP's names after `prefix` (the SGM file's bigG: "conditioner.embedders.1.model.").
// dtype is how the weights are stored and the encoder runs (F32, or F16 on the fast GPU path);
// its outputs are f32 either way.
int clip_text_load_from(ClipText* m, const ClipTextConfig* cfg, const SafeTensors* st, const char* prefix, int open_clip,
                        DType dtype, char* err);
// The encoder of a config with its parameters allocated but not filled (weights.h has the fillers),
// and the same with random weights (weights_fill_random, f32; the demo).
void clip_text_allocate(ClipText* m, const ClipTextConfig* cfg, DType dtype);
void clip_text_init_random(ClipText* m, const ClipTextConfig* cfg, uint64_t seed);
void clip_text_free(ClipText* m);

// Runs B sequences of L <= max_positions token ids (host memory) through the encoder.
//   penultimate (B, L, hidden), backend, or NULL: hidden_states[-2], the input of the last layer (=)
//   pooled      (B, projection_dim), backend, or NULL: text_projection(final_ln(last)[eos])  (=)
// Temporaries come from scratch (released before returning).
void clip_text_forward(const ClipText* m, const int32_t* ids, int B, int L, float* penultimate, float* pooled,
                       Arena* scratch);
// Scratch floats clip_text_forward needs for B x L tokens.
size_t clip_text_scratch_floats(const ClipTextConfig* c, int B, int L);

// ============================================================================
// CLIP vision tower, CLIP score and CLIP interrogator (evaluators)
//
// transformers CLIPVisionModel / CLIPVisionModelWithProjection / the vision half of CLIPModel
// (models/clip/modeling_clip.py, 5.24), i.e. OpenAI CLIP's VisionTransformer:
//   patches = patch_embedding(pixels)            Conv2d(3, D, P, stride P, no bias): (B, D, S/P, S/P)
//   x = [class_embedding, patches^T] + position_embedding               (B, 1 + (S/P)^2, D)
//   x = pre_layrnorm(x)                         (transformers' spelling of ln_pre)
//   each CLIPEncoderLayer: the text tower's pre-LN layer, without the causal mask
//   pooled = post_layernorm(x[:, 0])            the class token only
//   image_embeds = visual_projection(pooled)    Linear(D, projection_dim, no bias)
// openai/clip-vit-large-patch14: D 1024, 24 layers, 16 heads, MLP 4096, quick_gelu, S 224, P 14,
// 257 positions, projection 768.

typedef struct {
    int hidden, intermediate, layers, heads;
    int image_size, patch_size, channels;
    float eps;
    ClipActivation act;
    int projection_dim; // 0: no visual_projection (CLIPVisionModel)
} ClipVisionConfig;

typedef struct {
    ClipVisionConfig cfg;
    Conv2d patch_embedding;    // embeddings.patch_embedding (hidden, channels, P, P), no bias
    float* class_embedding;    // (hidden)                    embeddings.class_embedding
    float* position_embedding; // (1 + (S/P)^2, hidden)       embeddings.position_embedding.weight
    LayerNorm pre_ln;          // pre_layrnorm
    ClipLayer* layers;         // (cfg.layers)                encoder.layers.N
    LayerNorm post_ln;         // post_layernorm
    Linear projection;         // visual_projection (projection_dim, hidden), no bias; beside vision_model
    Weights w;
} ClipVision;

// Reads a CLIPVisionConfig config.json (a CLIPVisionModel[WithProjection] folder), or the
// "vision_config" of a CLIPConfig (then projection_dim is the CLIPConfig's). Missing fields take
// transformers' CLIPVisionConfig defaults, as from_pretrained does.
int clip_vision_config_read(ClipVisionConfig* c, const char* path, char* err);
// Loads a CLIPVisionModel[WithProjection] folder (config.json + model[.variant].safetensors; keys
// with or without the "vision_model." prefix; visual_projection.weight beside it).
int clip_vision_load(ClipVision* m, const char* folder, const char* variant, char* err);
// The same from an open SafeTensors set, keys after `prefix`.
int clip_vision_load_from(ClipVision* m, const ClipVisionConfig* cfg, const SafeTensors* st, const char* prefix,
                          char* err);
void clip_vision_free(ClipVision* m);

// Runs B preprocessed images through the tower.
//   pixels (B, channels, image_size, image_size), backend (clip_preprocess's output)
//   pooled (B, hidden), backend, or NULL: post_layernorm of the class token              (=)
//   embeds (B, projection_dim), backend, or NULL: visual_projection(pooled)              (=)
// Temporaries come from scratch (released before returning).
void clip_vision_forward(const ClipVision* m, const float* pixels, int B, float* pooled, float* embeds, Arena* scratch);
size_t clip_vision_scratch_floats(const ClipVisionConfig* c, int B);

// ----------------------------------------------------------------------------
// Preprocessing: transformers CLIPImageProcessor with openai/clip-vit-large-patch14's
// preprocessor_config (resize shortest edge to `size` with PIL BICUBIC, the other side
// int(size * long / short); centre crop size x size; rescale 1/255; normalise with OPENAI_CLIP_MEAN
// and OPENAI_CLIP_STD), computed as the PIL backend does (CLIPImageProcessorPil): resized to 8
// bits by PIL, then normalised in f32. The crop's left/top offset is (W - size) // 2 in
// transformers; open_clip (and so clip-interrogator) uses torchvision's CenterCrop,
// int(round((W - size) / 2)) with Python's round half to even: one pixel apart when W - size is
// odd and (W - size) / 2 rounds up.
extern const float CLIP_IMAGE_MEAN[3], CLIP_IMAGE_STD[3];
typedef enum { CLIP_CROP_FLOOR, CLIP_CROP_ROUND_HALF_EVEN } ClipCropRounding;
// rgb: 8-bit RGB (image_to_rgb8 / image_to_rgb8_over_white first). out: (3, size, size) floats, host.
int clip_preprocess(const Image* rgb, int size, ClipCropRounding crop, float* out, char* err);

// ----------------------------------------------------------------------------
// A whole CLIPModel folder (openai/clip-vit-large-patch14 as on the hub): config.json (CLIPConfig),
// model[.variant].safetensors ("text_model.*", "text_projection.weight", "vision_model.*",
// "visual_projection.weight", "logit_scale") and the tokenizer files (vocab.json + merges.txt or
// tokenizer.json). Unlike SDXL's text_encoder, the text tower here has its text_projection.
typedef struct {
    ClipText text;             // text_model.* + text_projection (cfg.projection_dim = CLIPConfig.projection_dim)
    ClipVision vision;         // vision_model.* + visual_projection
    Tokenizer tok;
    float logit_scale;         // exp(logit_scale) (100 for trained OpenAI models); CLIP score does not use it
    uint64_t text_fingerprint; // hash of the text tower's stored tensors and the vocabulary: keys the label cache
} ClipModel;

int clip_model_load(ClipModel* m, const char* folder, const char* variant, char* err);
void clip_model_free(ClipModel* m);

// Image embeddings (get_image_features): n 8-bit RGB images, preprocessed with `crop`, through the
// vision tower. embeds: (n, projection_dim), host, not normalised.
int clip_encode_images(const ClipModel* m, const Image* const* rgb, int n, ClipCropRounding crop, float* embeds,
                       char* err);

// Prompts longer than the 77-token window (BOS + 75 + EOS):
//   CLIP_PROMPT_TRUNCATE      the default: keep BOS, the first 75 tokens and EOS, as
//                             CLIPTokenizer(truncation=True, max_length=77) and open_clip's
//                             tokenize do. The text is pooled at its EOS as usual.
//   CLIP_PROMPT_TORCHMETRICS  what torchmetrics' clip_score does (tokenize without truncation, then
//                             slice input_ids[:, :77]): BOS and the first 76 tokens, no EOS. The
//                             pooled row is then argmax(ids) (legacy eos_token_id 2, as ViT-L/14)
//                             i.e. the text token with the largest id, or position 0 for configs
//                             with a real eos_token_id: what transformers does with such input.
// Both give the same ids for prompts of at most 75 tokens. Callers learn which prompts were cut
// from n_tokens (the untruncated count; > 75 means truncated).
typedef enum { CLIP_PROMPT_TRUNCATE, CLIP_PROMPT_TORCHMETRICS } ClipLongPrompt;

// Text embeddings (get_text_features): n prompts -> embeds (n, projection_dim), host, not
// normalised. n_tokens (n) or NULL: each prompt's BPE token count before truncation.
int clip_encode_texts(const ClipModel* m, const char* const* texts, int n, ClipLongPrompt policy, float* embeds,
                      int* n_tokens, char* err);

// cos(a, b) = a.b / (|a| |b|), sums in double. 0 when either vector is zero.
float clip_cosine(const float* a, const float* b, int dim);
// torchmetrics' CLIP score of n pairs from their cosines: max(100 * mean(cos), 0). The clamp is
// applied to the mean, not to each pair (functional clip_score: score.mean(0), then
// torch.max(score, 0); the CLIPScore module does the same with its running sum).
float clip_score_from_cosines(const float* cosines, int n);
// CLIP score of n (image, prompt) pairs: cosines (n) out, score out, n_tokens (n) or NULL.
// Images are 8-bit RGB (for PNGs with alpha, image_to_rgb8_over_white is what transformers does)
// and are preprocessed as clip_preprocess(CLIP_CROP_FLOOR) describes, i.e. by Pillow, like
// CLIPImageProcessorPil; the torchvision CLIPImageProcessor that transformers 5 loads by default
// (and so torchmetrics 1.9 with transformers 5) resizes with torch instead and differs by one
// byte step in ~0.3% of pixel values. Embeddings are f32 (sums in double in our reductions).
int clip_score(const ClipModel* m, const Image* const* rgb, const char* const* texts, int n, ClipLongPrompt policy,
               float* cosines, int* n_tokens, float* score, char* err);

// ----------------------------------------------------------------------------
// CLIP interrogator (pharmapsychotic/clip-interrogator 0.6.0, clip_interrogator.py), without its
// caption model: the caption (from our BLIP, or any string) is an input. Image features are the
// L2-normalised image embeddings; a label's score is its cosine with them.
//
// Label tables hold the L2-normalised text embedding of each label, rounded to f16 as 0.6.0 keeps
// them (LabelTable stores `.half()` embeddings even on the CPU), and are cached on disk:
// <cache_dir>/clip_<model fingerprint>_<name>.safetensors holds "embeds" (count, projection_dim)
// F16 and, in its metadata, the fingerprint of the text tower and a hash of the label list; a file
// whose fingerprint, hash or shape does not match is recomputed and replaced (atomically).
typedef struct {
    char* name;     // the table's name: "mediums", "artists", "flavors", ...
    int count;
    char** labels;  // (count) UTF-8
    float* embeds;  // (count, dim) host, normalised, f16-rounded
    int dim;
    int from_cache; // 1 when the embeddings were read from the cache file
} ClipLabelTable;

// Reads a label list as 0.6.0's load_list does: one label per line (\n, \r\n or \r), surrounding
// whitespace stripped, empty lines kept as "" labels. With templates, each line becomes one label
// per template, template-major, "{}" replaced by the line: {"by {}", "inspired by {}"} makes
// 0.6.0's artist labels from artists.txt, {"{}", "trending on {}", "featured on {}",
// "{} contest winner"} its trending labels from a list of sites. *labels is malloc'd
// (clip_labels_free). A list may make at most CLIP_MAX_LABELS labels.
#define CLIP_MAX_LABELS (1 << 20) // clip-interrogator's largest list, flavors.txt, has 100970 lines
int clip_labels_read(const char* path, const char* const* templates, int n_templates, char*** labels, int* count,
                     char* err);
void clip_labels_free(char** labels, int count);
// The 18 sites 0.6.0 builds its trending table from.
extern const char* const CLIP_INTERROGATOR_SITES[18];

// Encodes (or reads from the cache; cache_dir NULL: no cache) the embeddings of `labels` (copied).
// name must be [A-Za-z0-9_-]+ (it names the cache file).
int clip_label_table_build(ClipLabelTable* t, const ClipModel* m, const char* name, const char* const* labels,
                           int count, const char* cache_dir, char* err);
void clip_label_table_free(ClipLabelTable* t);

// LabelTable.rank over the concatenation of n_tables tables (one table, or _merge_tables' merge):
// the top min(top_count, total) labels by score, best first, as indices into the concatenation.
// More labels than chunk_size (0.6.0's Config.chunk_size, 2048 by default) are ranked its way:
// chunks of chunk_size each keep their best int(chunk_size / n_chunks), and the final top comes
// from those. Ties go to the earlier label. Returns how many indices it wrote to top.
int clip_label_rank(const ClipLabelTable* const* tables, int n_tables, const float* image_features, int top_count,
                    int chunk_size, int* top);
// Label `index` of the concatenation of tables.
const char* clip_label_at(const ClipLabelTable* const* tables, int n_tables, int index);

typedef struct {
    const ClipLabelTable *mediums, *artists, *movements, *trendings, *flavors;
    int chunk_size; // 2048 as 0.6.0's Config
} ClipInterrogator;

// interrogate_classic: "{caption}, {medium} {artist}, {trending}, {movement}, {flavors}" (artist
// labels carry their "by"; medium left out when the caption starts with it), max_flavors top
// flavors joined with ", " (0.6.0's default 3), then _truncate_to_fit. *prompt is malloc'd.
int clip_interrogate_classic(const ClipModel* m, const ClipInterrogator* ci, const float* image_features,
                             const char* caption, int max_flavors, char** prompt, char* err);
// interrogate_fast: the top max_flavors (default 32) of artists + flavors + mediums + movements +
// trendings merged in that order, appended to the caption with ", ", then _truncate_to_fit.
int clip_interrogate_fast(const ClipModel* m, const ClipInterrogator* ci, const float* image_features,
                          const char* caption, int max_flavors, char** prompt, char* err);
// _truncate_to_fit: split at ", ", keep appending ", " + part while (text so far + part) still
// tokenizes to fewer than 75 BPE tokens (its quirk: the test omits the ", "). malloc'd result.
char* clip_truncate_to_fit(const Tokenizer* tok, const char* text, int max_tokens);
// L2-normalises n vectors of dim floats in place (host), as x / x.norm(dim=-1) (norm summed in double).
void clip_normalize(float* x, int n, int dim);
