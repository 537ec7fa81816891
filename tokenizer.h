// tokenizer.h: text to token ids for SDXL's two text encoders.
//
//   - the CLIP BPE tokenizer exactly as diffusers gets it from transformers 5 (`CLIPTokenizer`, a
//     `tokenizers` backend): loaded from a model folder's tokenizer/ or tokenizer_2/;
//   - AUTOMATIC1111 prompt emphasis: "(word)", "[word]", "(word:1.3)", escapes, BREAK;
//   - A1111's long-prompt chunking: 75 prompt tokens per 77-token chunk, with per-token weights.
//
// The text encoders (clip.c) encode each chunk and apply its multipliers; nothing here touches
// weights. See tokenizer.c for the sources each part mirrors.
#pragma once
#include <stdint.h>

#define CLIP_CONTEXT 77      // tokens per text-encoder call: BOS + 75 prompt tokens + EOS (+ padding)
#define CLIP_CHUNK_TOKENS 75 // prompt tokens per chunk (CLIP_CONTEXT minus BOS and EOS)
#define TOKENIZER_MAX_ADDED 32
#define TOKENIZER_MAX_ID ((1 << 24) - 1) // largest token id a vocabulary or added token may have (CLIP: 49407)

// A token that is split out of the prompt before BPE, as the `tokenizers` AddedVocabulary does:
// the special tokens, and for SDXL's tokenizer_2 its pad token "!" (so a literal "!" in a prompt
// becomes id 0 there, as in diffusers).
typedef struct {
    char* content;   // UTF-8
    uint32_t* cps;   // (n_cps) the same as code points, for matching
    int n_cps;
    int32_t id;
    int normalized;  // 1: matched in the NFC + lowercased text; 0: matched in the raw prompt
} AddedToken;

typedef struct {
    // vocabulary: id -> token text, and an open-addressing hash table text -> id
    int32_t n_vocab;          // largest id + 1
    char** id_to_token;       // (n_vocab) NUL-terminated UTF-8, NULL for unused ids
    int32_t* vocab_slots;     // (vocab_cap) ids, -1 = empty
    uint32_t vocab_cap;       // power of two
    // merges: open-addressing hash table (left id, right id) -> rank and merged id
    uint64_t* merge_keys;     // (merge_cap) (left << 32 | right), UINT64_MAX = empty
    int32_t* merge_rank;      // (merge_cap) line number of the merge, 0 first
    int32_t* merge_result;    // (merge_cap) id of left+right
    uint32_t merge_cap;
    int32_t n_merges;
    // GPT-2 byte-to-unicode: the id of each byte's symbol, alone and as the end of a word ("</w>")
    int32_t byte_id[256], byte_eow_id[256];
    AddedToken added[TOKENIZER_MAX_ADDED];
    int n_added;
    int32_t bos_id, eos_id, pad_id, unk_id; // looked up in the vocabulary, never hard-coded
    int32_t comma_id;                        // ",</w>" for A1111's comma backtrack; -1 when absent
    char* pool;                              // storage of the vocabulary strings
} Tokenizer;

// Loads `folder` (a diffusers tokenizer/ or tokenizer_2/): vocab.json + merges.txt, or the
// "model" of tokenizer.json when those two are absent; tokenizer_config.json and
// special_tokens_map.json (optional) name the bos/eos/unk/pad tokens. Returns 0, or -1 with a
// one-line message naming the file in err (ERR_MAX bytes).
int tokenizer_load(Tokenizer* tok, const char* folder, char* err);
void tokenizer_free(Tokenizer* tok);

// BPE ids of `text` (UTF-8; an invalid byte sequence reads as U+FFFD) without BOS/EOS, i.e.
// transformers' tokenizer(text, add_special_tokens=False).input_ids. Writes at most max_ids ids and
// returns how many the full text has (like snprintf), so a count needs ids = NULL, max_ids = 0.
int tokenizer_encode(const Tokenizer* tok, const char* text, int32_t* ids, int max_ids);

// What diffusers' SDXL pipeline feeds each text encoder: tokenizer(text, padding="max_length",
// max_length=77, truncation=True): [BOS] + the first 75 ids + [EOS] + pad ids up to 77.
// Returns the untruncated number of text tokens.
int tokenizer_encode_padded(const Tokenizer* tok, const char* text, int32_t ids[CLIP_CONTEXT]);

// Makes `token` the pad token and an added token (split out of prompts, matched in the raw text),
// as "pad_token": "!" in tokenizer_2/tokenizer_config.json does: for building SDXL's tokenizer_2
// from a tokenizer/ folder. Returns 0, or -1 with err filled when token is not in the vocabulary.
int tokenizer_set_pad_token(Tokenizer* tok, const char* token, char* err);

int32_t tokenizer_token_id(const Tokenizer* tok, const char* token); // -1 when not in the vocabulary
const char* tokenizer_token_text(const Tokenizer* tok, int32_t id);  // NULL when out of range/unused

// ----------------------------------------------------------------------------
// Prompt limits (policy: A1111 has none of them; ours make every prompt end in bounded time)
//
// All prompt work here is linear in the prompt's length, or n log n (BPE of a word), except the
// emphasis weights: each piece of text is multiplied once per bracket open around it, so the
// parse costs (pieces) x (brackets open), which PROMPT_MAX_NESTING bounds. After the tokenizer,
// each text encoder runs once per 77-token chunk of each prompt (the positive and negative
// chunks of one encoder in one call: 2 x 32 = 64 sequences, under clip_text_forward's 256), and
// every UNet step attends over a context of 77 tokens per chunk, so PROMPT_MAX_CHUNKS bounds the
// rest. Above a limit the call fails with a one-line error naming it.
#define PROMPT_MAX_BYTES (1 << 20) // 1 MiB of UTF-8, about 100 times the text 32 chunks hold
#define PROMPT_MAX_CHUNKS 32       // 32 x 75 = 2,400 prompt tokens, some 7,000 to 10,000 characters of English
#define PROMPT_MAX_NESTING 100     // brackets open at once; 1.1^100 = 13,780, far past any useful weight

// ----------------------------------------------------------------------------
// A1111 prompt emphasis (modules/prompt_parser.py parse_prompt_attention)

#define PROMPT_BREAK_WEIGHT (-1.0) // a segment {"BREAK", -1} marks a forced chunk break

typedef struct {
    char* text;    // UTF-8, brackets and escapes resolved
    double weight; // product of the enclosing multipliers, computed in A1111's order (Python floats)
} PromptSegment;

typedef struct {
    PromptSegment* segments;
    int n;
} PromptAttention;

// Splits a prompt into runs of equal weight, e.g. "a (b:1.5) [c]" -> {"a ",1} {"b",1.5} {" ",1}
// {"c",1/1.1}; "(b: 1.5 )" is weighted too, as in current A1111. Fails (-1, err filled) on a weight
// that Python's float() rejects, such as "(x:1.2.3)", where A1111 raises ValueError, and above
// PROMPT_MAX_BYTES or PROMPT_MAX_NESTING.
int prompt_parse_attention(const char* prompt, PromptAttention* out, char* err);
void prompt_attention_free(PromptAttention* pa);

// ----------------------------------------------------------------------------
// A1111 chunking (modules/sd_hijack_clip.py tokenize_line, process_tokens)

typedef struct {
    int32_t ids[CLIP_CONTEXT];         // [BOS] + up to 75 tokens + EOS padding + [EOS]; when the pad id
                                       // is not EOS (tokenizer_2: 0), every id after the first EOS is
                                       // the pad id, even after an "<|endoftext|>" typed in the prompt
    float multipliers[CLIP_CONTEXT];   // emphasis weight per token; 1.0 on BOS, EOS and padding
} PromptChunk;

typedef struct {
    PromptChunk* chunks;
    int n_chunks;
    int token_count; // A1111's prompt length in tokens (the "N/75" counter)
} PromptChunks;

// Parses emphasis, tokenizes each segment without specials, and packs the tokens into chunks of
// 75 with the comma backtrack (a chunk that fills up moves the tokens after a comma among its
// last 20 into the next chunk) and BREAK forcing a new chunk. Every prompt, even "", gives at
// least one chunk. Returns 0, or -1 with err filled (see prompt_parse_attention, and more than
// PROMPT_MAX_CHUNKS chunks).
int prompt_chunks_build(const Tokenizer* tok, const char* prompt, PromptChunks* out, char* err);
// Appends empty-prompt chunks ([BOS] [EOS] pad...) until pc has n_chunks, so a negative prompt
// lines up with its positive one (and the two encoders with each other). No-op when it has more.
// (n_chunks is the caller's: the largest count prompt_chunks_build gave, so at most the limit.)
void prompt_chunks_pad(const Tokenizer* tok, PromptChunks* pc, int n_chunks);
void prompt_chunks_free(PromptChunks* pc);
