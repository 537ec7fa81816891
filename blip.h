// blip.h: BLIP image captioning and MiniLM sentence similarity (evaluators), and the BERT pieces
// they share.
//
//   BertTokenizer  transformers 5 BertTokenizer (a `tokenizers` BertNormalizer + BertPreTokenizer +
//                  WordPiece + WordPiece decoder) from a vocab.txt: bert-base-uncased semantics
//   Bert           the BERT layer stack: BLIP's text decoder (causal self-attention and
//                  cross-attention to the image) and MiniLM's encoder (bidirectional)
//   Blip           transformers BlipForConditionalGeneration: ViT vision encoder + BERT text decoder
//                  with an LM head; generate() as greedy or beam search
//   MiniLM         sentence-transformers all-MiniLM-L6-v2: BERT, mean pooling, L2 normalisation
// blip.c's header comment lists the Python sources each part mirrors.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "layers.h"
#include "png.h"
#include "tensor.h"
#include "weights.h"

// ----------------------------------------------------------------------------
// BERT WordPiece tokenizer

#define BERT_MAX_SPECIAL 16            // special tokens split out of raw text (and skipped by decode)
#define BERT_MAX_CHARS_PER_WORD 100    // WordPiece's max_input_chars_per_word: longer words are [UNK]

typedef struct {
    int32_t n_vocab;      // ids [0, n_vocab): the lines of vocab.txt, then added special tokens
    char** id_to_token;   // (n_vocab) NUL-terminated UTF-8
    int32_t* slots;       // open-addressing hash table text -> id, -1 empty
    uint32_t cap;         // slots, a power of two
    char** added;         // tokens appended after vocab.txt (owned)
    int n_added;
    int32_t special[BERT_MAX_SPECIAL]; // ids of the special tokens, matched in the raw text first
    int n_special;
    int32_t pad_id, unk_id, cls_id, sep_id, mask_id;
    int lowercase;        // do_lower_case
    int strip_accents;    // strip_accents; null (the default) follows do_lower_case
    int chinese_chars;    // tokenize_chinese_chars: CJK ideographs become words of their own
    int clean_up_spaces;  // clean_up_tokenization_spaces in decode (transformers 5 default: false)
    char* pool;           // storage of vocab.txt's strings
} BertTokenizer;

// Loads folder/vocab.txt (one token per line, id = line number) and, when present,
// folder/tokenizer_config.json (do_lower_case, tokenize_chinese_chars, strip_accents,
// clean_up_tokenization_spaces). [PAD] [UNK] [CLS] [SEP] [MASK] must be in the vocabulary.
// Returns 0, or -1 with a one-line message naming the file in err.
int bert_tokenizer_load(BertTokenizer* tok, const char* folder, char* err);
// Makes `token` a special token, appending it to the vocabulary when it is not there (as
// add_special_tokens does): BLIP's [DEC] and [ENC]. *id (may be NULL) receives its id.
void bert_tokenizer_add_special(BertTokenizer* tok, const char* token, int32_t* id);
void bert_tokenizer_free(BertTokenizer* tok);
int32_t bert_token_id(const BertTokenizer* tok, const char* token); // -1 when not in the vocabulary

// The BertNormalizer's output for text (clean, CJK spacing, NFD + strip accents, lowercase), as
// NUL-terminated UTF-8 in out (cap bytes). Returns the full length, like snprintf.
size_t bert_normalize(const BertTokenizer* tok, const char* text, char* out, size_t cap);
// WordPiece ids of text without [CLS]/[SEP] (tokenizer(text, add_special_tokens=False)). Writes at
// most max_ids and returns how many the full text has.
int bert_tokenize(const BertTokenizer* tok, const char* text, int32_t* ids, int max_ids);
// tokenizer(text, truncation=True, max_length=max_len).input_ids: [CLS] + the first max_len - 2
// ids + [SEP]. ids holds max_len (>= 2). Returns the length written.
int bert_encode(const BertTokenizer* tok, const char* text, int max_len, int32_t* ids);
// tokenizer.decode(ids, skip_special_tokens): the WordPiece decoder ("##" pieces joined, a space
// before every other token, its per-token clean-up of " ." " ," ...), then, with
// clean_up_spaces, transformers' clean_up_tokenization. Ids outside the vocabulary are dropped.
// Writes NUL-terminated UTF-8 to out (cap bytes) and returns the full length, like snprintf.
size_t bert_decode(const BertTokenizer* tok, const int32_t* ids, int n, int skip_special, char* out, size_t cap);

// ----------------------------------------------------------------------------
// BERT layers (post-LN; transformers BertLayer / BlipTextLayer)

// Limits on the BERT configs (MiniLM's config.json, BLIP's text_config), checked as they are read.
// all-MiniLM-L6-v2: vocab 30522, hidden 384, MLP 1536, 6 layers, 12 heads, 512 positions, 2
// token types; BLIP base's text decoder: 30524, 768, 3072, 12, 12, 512. The limits keep every
// tensor under 2^31 elements (the word table: 2^18 x 4096 = 2^30).
#define BERT_MAX_VOCAB 262144        // vocab_size: 30524 (8.6x)
#define BERT_MAX_HIDDEN 4096         // hidden_size: 768 (BERT-large 1024)
#define BERT_MAX_INTERMEDIATE 16384  // intermediate_size: 3072 (BERT-large 4096)
#define BERT_MAX_LAYERS 128          // num_hidden_layers: 12 (BERT-large 24)
#define BERT_MAX_POSITIONS 8192      // max_position_embeddings: 512
#define BERT_MAX_TOKEN_TYPES 16      // type_vocab_size: 2
// num_attention_heads must divide hidden_size into heads of at most ATTENTION_MAX_HS; token ids
// (bos_token_id, sep_token_id) must be ids of the vocabulary; sentence_bert_config.json's
// max_seq_length (256) must leave room for [CLS] and [SEP] (>= 2).

typedef struct {
    int vocab_size, hidden, intermediate, layers, heads, max_positions;
    int type_vocab_size; // token_type_embeddings rows (MiniLM 2); 0: none (BLIP's text decoder)
    int encoder_hidden;  // cross-attention key/value input width (BLIP: the vision width); 0: none
    float eps;           // layer_norm_eps (1e-12)
} BertConfig;

typedef struct {
    Linear q, k, v;      // attention.self.{query,key,value}
    Linear attn_out;     // attention.output.dense
    LayerNorm attn_ln;   // attention.output.LayerNorm
    Linear cq, ck, cv;   // crossattention.self.{query,key,value}: k, v read encoder_hidden-wide rows
    Linear cross_out;    // crossattention.output.dense
    LayerNorm cross_ln;  // crossattention.output.LayerNorm
    Linear inter;        // intermediate.dense (hidden -> intermediate), then GELU
    Linear out;          // output.dense (intermediate -> hidden)
    LayerNorm out_ln;    // output.LayerNorm
} BertLayer;

typedef struct {
    BertConfig cfg;
    float* word_embeddings;       // (vocab, hidden)       embeddings.word_embeddings.weight
    float* position_embeddings;   // (positions, hidden)   embeddings.position_embeddings.weight
    float* token_type_embeddings; // (types, hidden)       embeddings.token_type_embeddings.weight, or NULL
    LayerNorm emb_ln;             // embeddings.LayerNorm
    BertLayer* layers;            // (cfg.layers)          encoder.layer.N
} Bert;

// Reads the BERT fields of a transformers config.json object (BertConfig / BlipTextConfig).
int bert_config_read(BertConfig* c, const char* path, char* err);

// ----------------------------------------------------------------------------
// BLIP (transformers BlipForConditionalGeneration)

// Limits on BLIP's vision_config (BLIP base: hidden 768, MLP 3072, 12 layers, 12 heads, 384 px
// images in 16 px patches, 577 tokens; BLIP large: 1024, 4096, 24, 16): the width limits are
// BERT's, and the image at most BLIP_MAX_IMAGE px in at most BLIP_MAX_VISION_TOKENS tokens.
#define BLIP_MAX_IMAGE 2048          // image_size: 384
#define BLIP_MAX_VISION_TOKENS 4097  // 1 + (image_size / patch_size)^2: 577 (a 64 x 64 grid)

typedef struct {
    int hidden, intermediate, layers, heads, image_size, patch_size;
    float eps; // layer_norm_eps (1e-5)
} BlipVisionConfig;

typedef struct {
    LayerNorm ln1;      // layer_norm1
    Linear qkv;         // self_attn.qkv (3 D, D): rows [0, D) q, [D, 2D) k, [2D, 3D) v
    Linear proj;        // self_attn.projection
    LayerNorm ln2;      // layer_norm2
    Linear fc1, fc2;    // mlp.fc1, mlp.fc2 (GELU between)
} BlipVisionLayer;

typedef struct {
    Conv2d patch;              // vision_model.embeddings.patch_embedding (D, 3, P, P), with bias
    float* class_embedding;    // (1, 1, D)        vision_model.embeddings.class_embedding
    float* position_embedding; // (1, 1 + (S/P)^2, D) vision_model.embeddings.position_embedding
    BlipVisionLayer* layers;   // vision_model.encoder.layers.N
    LayerNorm post_ln;         // vision_model.post_layernorm
} BlipVision;

typedef struct {
    BlipVisionConfig vision_cfg;
    BertConfig text_cfg;       // text_config; encoder_hidden = vision hidden
    int bos_id;                // text_config.bos_token_id: [DEC], the first token of every caption
    int sep_id;                // text_config.sep_token_id: [SEP], generation's end of sequence
    BlipVision vision;
    Bert bert;                 // text_decoder.bert.*
    Linear head_dense;         // text_decoder.cls.predictions.transform.dense, then GELU
    LayerNorm head_ln;         // text_decoder.cls.predictions.transform.LayerNorm
    float* decoder_weight;     // (vocab, hidden): the word embeddings (tied), or cls.predictions.decoder.weight
    float* decoder_bias;       // (vocab)          text_decoder.cls.predictions.bias
    BertTokenizer tok;         // vocab.txt + [DEC] + [ENC]
    Weights w;
} Blip;

// Loads a transformers BlipForConditionalGeneration folder (Salesforce/blip-image-captioning-base
// or -large): config.json, model.safetensors (or its index), vocab.txt, tokenizer_config.json.
int blip_load(Blip* m, const char* folder, char* err);
void blip_free(Blip* m);

// Image tokens: 1 + (image_size / patch_size)^2 (577 for the 384 / 16 checkpoints).
int blip_image_tokens(const Blip* m);
// Scratch bytes for every function below with up to num_beams beams of max_length tokens.
size_t blip_scratch_bytes(const Blip* m, int num_beams, int max_length);

// BlipImageProcessor (the PIL backend): transformers' convert_to_rgb (alpha over white), a squash
// to image_size x image_size with PIL BICUBIC, /255, OPENAI_CLIP_MEAN / _STD.
// out: (3, image_size, image_size) floats, host.
int blip_preprocess(const Blip* m, const Image* img, float* out, char* err);

// The vision encoder's last_hidden_state (post_layernorm applied to every token).
//   pixels (N, 3, S, S) backend   image_embeds (N, blip_image_tokens, vision hidden) backend   (=)
void blip_vision_forward(const Blip* m, const float* pixels, int N, float* image_embeds, Arena* scratch);
// hidden_states[n] (0: the embeddings, n: after layer n; no post_layernorm), to localise a mismatch.
void blip_vision_hidden_state(const Blip* m, const float* pixels, int N, int n, float* out, Arena* scratch);

// The text decoder on one sequence ids[0..L) (host) attending to one image's embeddings.
//   hidden (L, text hidden) backend or NULL: the last hidden state (=)
//   logits (L, vocab) backend or NULL: the LM head's scores (=)
void blip_decoder_forward(const Blip* m, const float* image_embeds, const int32_t* ids, int L, float* hidden,
                          float* logits, Arena* scratch);
// hidden_states[n] of the decoder (0: the embeddings after their LayerNorm), (L, hidden) backend.
void blip_decoder_hidden_state(const Blip* m, const float* image_embeds, const int32_t* ids, int L, int n, float* out,
                               Arena* scratch);

// generate() settings. transformers' names and meanings; lengths count every token, [DEC] and
// the prompt included.
typedef struct {
    int num_beams;            // 1: greedy; at most 16
    int max_length;           // the sequence stops growing at this many tokens
    int min_length;           // [SEP] is not allowed while the sequence is shorter
    float length_penalty;     // beam scores are sum(log p) / generated_length^length_penalty
    float repetition_penalty; // 1: off; else the CTRL penalty on every token already in the sequence
    int early_stopping;       // 0: transformers' default heuristic; 1: stop once num_beams are finished
} BlipGenerateParams;
// The BLIP paper's captioning setting: generate(num_beams=3, max_length=20, min_length=5).
BlipGenerateParams blip_default_params(void);

// BlipForConditionalGeneration.generate(pixel_values, input_ids=prompt): image embeddings, then
// greedy or beam search from [DEC] + prompt. pixels: (3, S, S) host. prompt: n_prompt ids after
// [DEC] (bert_tokenize of the prompt text), or NULL. Writes the ids ([DEC], the prompt, the
// continuation, and the final [SEP] unless max_length ended it) to out_ids (max_length ids) and
// returns their count, or -1 with err filled for bad parameters.
int blip_generate(const Blip* m, const float* pixels, const int32_t* prompt, int n_prompt, const BlipGenerateParams* p,
                  int32_t* out_ids, char* err);

// Image -> caption text: blip_preprocess, blip_generate, then decode(skip_special_tokens=True).
// prompt: "a picture of" style conditional captioning, or NULL/"" for none. As transformers, the
// text includes the prompt. Returns 0, or -1 with err filled.
int blip_caption(const Blip* m, const Image* img, const char* prompt, const BlipGenerateParams* p, char* caption,
                 size_t cap, char* err);

// ----------------------------------------------------------------------------
// MiniLM sentence embeddings (sentence-transformers all-MiniLM-L6-v2)

typedef struct {
    BertConfig cfg;
    Bert bert;           // embeddings.*, encoder.layer.N.* (the pooler is not used)
    BertTokenizer tok;
    int max_seq_length;  // sentence_bert_config.json (256), else max_position_embeddings
    Weights w;
} MiniLM;

// Loads a sentence-transformers folder (config.json, model.safetensors, vocab.txt,
// tokenizer_config.json, sentence_bert_config.json; a 1_Pooling/config.json must ask for mean
// pooling). Returns 0, or -1 with err filled.
int minilm_load(MiniLM* m, const char* folder, char* err);
void minilm_free(MiniLM* m);
// SentenceTransformer.encode(text): [CLS] text [SEP] truncated to max_seq_length, the encoder,
// mean over the tokens, L2-normalised. out: (hidden) floats, host.
void minilm_embed(const MiniLM* m, const char* text, float* out);
// The same for token ids already made ([CLS] ... [SEP], at most max_position_embeddings).
// hidden (L, hidden) host or NULL receives the last hidden state.
void minilm_embed_ids(const MiniLM* m, const int32_t* ids, int L, float* out, float* hidden);
// Cosine similarity of the two texts' embeddings (sentence_transformers.util.cos_sim).
float minilm_similarity(const MiniLM* m, const char* a, const char* b);
