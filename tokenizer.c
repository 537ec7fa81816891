// tokenizer.c: SDXL prompt text -> token ids (and A1111 per-token weights).
//
// 1. CLIP BPE, as diffusers gets it from transformers 5.24 (`CLIPTokenizer` is a `tokenizers`
//    backend built in transformers/models/clip/tokenization_clip.py; the slow Python tokenizer with
//    its ftfy/BasicTokenizer cleaning is gone). For each prompt:
//      a. added tokens are split out of the raw text (AddedVocabulary: leftmost-longest match),
//         those flagged "normalized" out of the normalized text (step b) instead;
//      b. normalizer: NFC, every run of \s to one space, lowercase (Rust char::to_lowercase, per
//         character: no final-sigma rule);
//      c. pre-tokenizer Split, keeping the matches of
//           <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//         then ByteLevel, which re-splits each piece with GPT-2's regex: that only ever cuts the
//         two special-token spellings, into "<|", letters, "|>";
//      d. each piece's UTF-8 bytes through GPT-2 bytes_to_unicode, "</w>" on the last symbol, BPE
//         merges by rank with tokenizers' heap (models/bpe/word.rs merge_all), symbols to ids.
//    The Unicode facts are in unicode.c (tables in unicode_tables.h), generated and checked against `tokenizers` by
//    scripts/make_unicode_tables.py: classes and lowercase are Unicode 16.0 (Oniguruma, Rust std),
//    NFC covers Unicode 9.0 only, as the unicode-normalization-alignments crate inside tokenizers
//    does (a mark added later has class 0 and is never reordered or composed).
//    Which tokens are "added", and their "normalized" flags, follow what transformers 5.24 does
//    with a folder's tokenizer.json / tokenizer_config.json / special_tokens_map.json (found by
//    experiment; see load_added_tokens). For SDXL's tokenizer_2 this makes a literal "!" in a
//    prompt id 0, the pad token, exactly as in diffusers (diffusers issue #4153).
// 2. AUTOMATIC1111 emphasis, modules/prompt_parser.py parse_prompt_attention as of commit 28bd8e14
//    (v1.6 on): the same token regex, whose weight alternative `:\s*([+-]?[.\d]+)\s*\)` allows
//    whitespace around the number ("(masterpiece: 1.2)"), bracket stacks, multiplication order and
//    merging of equal weights, so the weights are the same doubles.
// 3. A1111 chunking, modules/sd_hijack_clip.py FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line
//    (75-token chunks, comma backtrack 20, BREAK) and process_tokens (`if self.id_end != self.id_pad`,
//    ids after the first EOS set to the pad id: 0 for OpenCLIP bigG, sd_hijack_open_clip's id_pad;
//    never for CLIP-L, whose pad is EOS).
// Every step is linear in the prompt's length (BPE n log n in a word's length); the limits that
// bound the rest, PROMPT_MAX_*, are in tokenizer.h.
//
// Differences on purpose: A1111 tokenizes for OpenCLIP bigG with open_clip's own tokenizer, where
// "!" is ordinary text (id 256); we use tokenizer_2 as diffusers does ("!" is id 0), which keeps a
// short prompt identical to diffusers, but lets "wow!!!" be 1 token for CLIP-L and 3 for bigG, so
// the caller pads the shorter list of chunks (prompt_chunks_pad). A1111's CLIP-L tokenizer
// (transformers 4, slow) ran ftfy; transformers 5 does not, nor do we. An "<|endoftext|>" typed in
// a prompt is the EOS id in both of our tokenizers (an added token, as in diffusers), so the bigG
// chunk is padded after it; open_clip's tokenizer knows only "<end_of_text>" and reads it as text.
// Bytes that are not UTF-8 read as U+FFFD (a Python string cannot hold them).
//
// A weight written with non-ASCII decimal digits, "(a:١.٥)", is 1.5 for A1111 (Python's \d and
// float() take every decimal digit) and text here.
//
// Not here: textual-inversion embeddings, prompt editing [a:b:when] and alternation [a|b] (A1111
// resolves those before parse_prompt_attention), ftfy text fixing (transformers 5 has none).
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "json.h"
#include "unicode.h"

// ----------------------------------------------------------------------------
// small growable arrays

typedef struct {
    int32_t* v;
    int n, cap;
} I32Vec;

static void i32_push(I32Vec* a, int32_t x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 64;
        a->v = xrealloc(a->v, (size_t)a->cap * sizeof(int32_t));
    }
    a->v[a->n++] = x;
}

// The CLIPTokenizer normalizer: NFC, then each run of \s to one space, then lowercase.
static void normalize_text(const uint32_t* in, int n, CodePoints* out) {
    CodePoints a = {0};
    unicode_nfc(in, n, &a);
    for (int i = 0; i < a.n; i++) {
        if (unicode_is_space(a.v[i])) {
            while (i + 1 < a.n && unicode_is_space(a.v[i + 1])) i++;
            codepoints_push(out, ' ');
        } else {
            unicode_lowercase_push(out, a.v[i]);
        }
    }
    free(a.v);
}

// ----------------------------------------------------------------------------
// hash tables: vocabulary (string -> id) and merges ((id, id) -> rank, id)

static uint32_t hash_string(const char* s) {
    uint32_t h = 2166136261u; // FNV-1a
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static uint32_t hash_u64(uint64_t x) {
    x ^= x >> 33; // the splitmix64 finaliser
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (uint32_t)x;
}

static uint32_t pow2_at_least(uint32_t n) {
    uint32_t c = 16;
    while (c < n) c *= 2;
    return c;
}

int32_t tokenizer_token_id(const Tokenizer* tok, const char* token) {
    if (!tok->vocab_slots) return -1;
    uint32_t mask = tok->vocab_cap - 1;
    for (uint32_t h = hash_string(token) & mask;; h = (h + 1) & mask) {
        int32_t id = tok->vocab_slots[h];
        if (id < 0) return -1;
        if (strcmp(tok->id_to_token[id], token) == 0) return id;
    }
}

const char* tokenizer_token_text(const Tokenizer* tok, int32_t id) {
    if (id < 0 || id >= tok->n_vocab) return NULL;
    return tok->id_to_token[id];
}

static void merge_insert(Tokenizer* tok, int32_t left, int32_t right, int32_t rank, int32_t result) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    uint32_t mask = tok->merge_cap - 1;
    for (uint32_t h = hash_u64(key) & mask;; h = (h + 1) & mask) {
        if (tok->merge_keys[h] == UINT64_MAX || tok->merge_keys[h] == key) {
            // a repeated pair keeps its last rank, as tokenizers' HashMap collect does
            tok->merge_keys[h] = key;
            tok->merge_rank[h] = rank;
            tok->merge_result[h] = result;
            return;
        }
    }
}

static int merge_find(const Tokenizer* tok, int32_t left, int32_t right, int32_t* rank, int32_t* result) {
    if (left < 0 || right < 0) return 0;
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    uint32_t mask = tok->merge_cap - 1;
    for (uint32_t h = hash_u64(key) & mask;; h = (h + 1) & mask) {
        if (tok->merge_keys[h] == UINT64_MAX) return 0;
        if (tok->merge_keys[h] == key) {
            *rank = tok->merge_rank[h];
            *result = tok->merge_result[h];
            return 1;
        }
    }
}

// ----------------------------------------------------------------------------
// loading

static int file_exists(const char* path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int load_json(const char* path, JsonDoc* doc, char* err) {
    uint8_t* data;
    size_t size;
    if (read_file(path, &data, &size, err) != 0) return -1;
    char jerr[ERR_MAX];
    int rc = json_parse(doc, (const char*)data, size, jerr);
    free(data);
    if (rc != 0) return set_error(err, "%s: %s", path, jerr);
    return 0;
}

// Fills the vocabulary from a JSON object token -> id (vocab.json, or tokenizer.json's model.vocab).
static int load_vocab(Tokenizer* tok, const JsonValue* obj, const char* path, char* err) {
    if (!obj || obj->type != JSON_OBJECT) return set_error(err, "%s: expected a JSON object of token -> id", path);
    if (obj->length == 0) return set_error(err, "%s: the vocabulary is empty", path);
    int32_t max_id = -1;
    size_t pool_bytes = 0;
    for (size_t i = 0; i < obj->length; i++) {
        const JsonValue* v = &obj->items[i];
        // TOKENIZER_MAX_ID is far above any CLIP vocabulary and keeps a corrupt id from sizing a huge table
        if (v->type != JSON_NUMBER || !v->is_integer || v->integer < 0 || v->integer > TOKENIZER_MAX_ID) {
            char token[64], label[100];
            int64_t unused;
            json_escape(token, sizeof(token), obj->keys[i]);
            snprintf(label, sizeof(label), "the id of token %s", token);
            return json_config_int_value(v, label, 0, TOKENIZER_MAX_ID, &unused, path, err);
        }
        if (v->integer > max_id) max_id = (int32_t)v->integer;
        pool_bytes += strlen(obj->keys[i]) + 1;
    }
    tok->n_vocab = max_id + 1;
    tok->id_to_token = xcalloc((size_t)tok->n_vocab, sizeof(char*));
    tok->pool = xmalloc(pool_bytes);
    tok->vocab_cap = pow2_at_least((uint32_t)obj->length * 2);
    tok->vocab_slots = xmalloc(tok->vocab_cap * sizeof(int32_t));
    for (uint32_t h = 0; h < tok->vocab_cap; h++) tok->vocab_slots[h] = -1;
    char* p = tok->pool;
    for (size_t i = 0; i < obj->length; i++) {
        int32_t id = (int32_t)obj->items[i].integer;
        if (tok->id_to_token[id]) return set_error(err, "%s: id %d is used twice ('%s' and '%s')", path, id, tok->id_to_token[id], obj->keys[i]);
        size_t len = strlen(obj->keys[i]);
        memcpy(p, obj->keys[i], len + 1);
        tok->id_to_token[id] = p;
        p += len + 1;
        uint32_t mask = tok->vocab_cap - 1;
        uint32_t h = hash_string(tok->id_to_token[id]) & mask;
        while (tok->vocab_slots[h] >= 0) h = (h + 1) & mask; // JSON object keys are unique in practice;
        tok->vocab_slots[h] = id;                            // a duplicate key finds its first entry
    }
    return 0;
}

// Adds merge number `rank` "left right". The merged token must be in the vocabulary, as tokenizers
// requires (Error::MergeTokenOutOfVocabulary). On failure msg says which token is missing.
static int add_merge(Tokenizer* tok, const char* left, const char* right, int32_t rank, char* msg) {
    int32_t a = tokenizer_token_id(tok, left), b = tokenizer_token_id(tok, right);
    if (a < 0) return set_error(msg, "merge token '%s' is not in the vocabulary", left);
    if (b < 0) return set_error(msg, "merge token '%s' is not in the vocabulary", right);
    size_t la = strlen(left), lb = strlen(right);
    char stack_buf[256];
    char* joined = la + lb + 1 <= sizeof(stack_buf) ? stack_buf : xmalloc(la + lb + 1);
    memcpy(joined, left, la);
    memcpy(joined + la, right, lb + 1);
    int32_t m = tokenizer_token_id(tok, joined);
    if (m < 0) set_error(msg, "merged token '%s' is not in the vocabulary", joined);
    if (joined != stack_buf) free(joined);
    if (m < 0) return -1;
    merge_insert(tok, a, b, rank, m);
    return 0;
}

static void alloc_merges(Tokenizer* tok, size_t count) {
    tok->merge_cap = pow2_at_least((uint32_t)count * 2 + 1);
    tok->merge_keys = xmalloc(tok->merge_cap * sizeof(uint64_t));
    tok->merge_rank = xmalloc(tok->merge_cap * sizeof(int32_t));
    tok->merge_result = xmalloc(tok->merge_cap * sizeof(int32_t));
    for (uint32_t h = 0; h < tok->merge_cap; h++) tok->merge_keys[h] = UINT64_MAX;
}

// merges.txt as tokenizers' BPE::read_file reads it: lines starting with "#version" are skipped,
// every other line is exactly two tokens separated by one space (CRLF endings allowed).
static int load_merges_txt(Tokenizer* tok, const char* path, char* err) {
    uint8_t* data;
    size_t size;
    if (read_file(path, &data, &size, err) != 0) return -1;
    size_t lines = 1;
    for (size_t i = 0; i < size; i++) lines += data[i] == '\n';
    alloc_merges(tok, lines);
    char* s = (char*)data;
    int line_no = 0, rc = 0;
    size_t pos = 0;
    while (pos < size) {
        char* line = s + pos;
        char* nl = memchr(line, '\n', size - pos);
        size_t len = nl ? (size_t)(nl - line) : size - pos;
        pos += len + (nl ? 1 : 0);
        line_no++;
        if (len > 0 && line[len - 1] == '\r') len--;
        line[len] = 0;
        if (strncmp(line, "#version", 8) == 0) continue;
        char* space = strchr(line, ' ');
        if (!space || space == line || space[1] == 0 || strchr(space + 1, ' ')) {
            rc = set_error(err, "%s:%d: expected two tokens separated by one space", path, line_no);
            break;
        }
        *space = 0;
        char msg[ERR_MAX];
        if (add_merge(tok, line, space + 1, tok->n_merges, msg) != 0) {
            rc = set_error(err, "%s:%d: %s", path, line_no, msg);
            break;
        }
        tok->n_merges++;
    }
    free(data);
    return rc;
}

// tokenizer.json's model.merges: "left right" strings (older files) or ["left", "right"] pairs.
static int load_merges_json(Tokenizer* tok, const JsonValue* merges, const char* path, char* err) {
    if (!merges || merges->type != JSON_ARRAY) return set_error(err, "%s: model.merges is not an array", path);
    alloc_merges(tok, merges->length);
    for (size_t i = 0; i < merges->length; i++) {
        const JsonValue* m = &merges->items[i];
        char msg[ERR_MAX];
        int rc;
        if (m->type == JSON_STRING) {
            char* copy = xstrdup(m->string);
            char* space = strchr(copy, ' ');
            if (!space || strchr(space + 1, ' ')) rc = set_error(msg, "expected \"left right\"");
            else {
                *space = 0;
                rc = add_merge(tok, copy, space + 1, tok->n_merges, msg);
            }
            free(copy);
        } else if (m->type == JSON_ARRAY && m->length == 2 && m->items[0].type == JSON_STRING &&
                   m->items[1].type == JSON_STRING) {
            rc = add_merge(tok, m->items[0].string, m->items[1].string, tok->n_merges, msg);
        } else {
            rc = set_error(msg, "expected a string or a pair of strings");
        }
        if (rc != 0) return set_error(err, "%s: model.merges[%zu]: %s", path, i, msg);
        tok->n_merges++;
    }
    return 0;
}

// One special-token setting: a plain string, or an AddedToken object {"content", "normalized", ...}.
typedef struct {
    char content[256];
    int normalized;
} SpecialSpec;

static int read_special(const JsonValue* v, SpecialSpec* spec, const char* path, const char* key, char* err) {
    const char* content = NULL;
    int normalized = 0; // a plain string is an AddedToken with normalized=False in transformers 5
    if (v->type == JSON_STRING) content = v->string;
    else if (v->type == JSON_OBJECT) {
        content = json_get_string(v, "content");
        json_get_bool(v, "normalized", &normalized);
    } else if (v->type == JSON_NULL) {
        return 0; // "pad_token": null leaves the default
    }
    if (!content) return set_error(err, "%s: %s is neither a string nor an object with \"content\"", path, key);
    if (strlen(content) >= sizeof(spec->content)) return set_error(err, "%s: %s is too long", path, key);
    strcpy(spec->content, content);
    spec->normalized = normalized;
    return 0;
}

static int find_added(const AddedToken* list, int n, const char* content) {
    for (int i = 0; i < n; i++)
        if (strcmp(list[i].content, content) == 0) return i;
    return -1;
}

static int push_added(Tokenizer* tok, const char* content, int32_t id, int normalized, const char* path, char* err) {
    int i = find_added(tok->added, tok->n_added, content);
    if (i >= 0) { // the later setting wins, as when transformers adds the same token twice
        tok->added[i].id = id;
        tok->added[i].normalized = normalized;
        return 0;
    }
    if (content[0] == 0) return set_error(err, "%s: an added token is empty", path);
    if (tok->n_added == TOKENIZER_MAX_ADDED) return set_error(err, "%s: more than %d added tokens", path, TOKENIZER_MAX_ADDED);
    AddedToken* t = &tok->added[tok->n_added++];
    t->content = xstrdup(content);
    CodePoints cps = {0};
    utf8_decode(content, strlen(content), &cps);
    t->cps = cps.v;
    t->n_cps = cps.n;
    t->id = id;
    t->normalized = normalized;
    return 0;
}

// The id transformers gives an added token: the vocabulary's when the text is there, else the one
// the file states (a token appended after the vocabulary), else an error.
static int added_id(const Tokenizer* tok, const char* content, int64_t stated, const char* path, char* err, int32_t* id) {
    *id = tokenizer_token_id(tok, content);
    if (*id >= 0) return 0;
    if (stated >= 0) { // checked against [0, TOKENIZER_MAX_ID] where it was read
        *id = (int32_t)stated;
        return 0;
    }
    return set_error(err, "%s: token '%s' is not in the vocabulary", path, content);
}

// Which tokens are split out before BPE, and how they are matched. transformers 5.24 (found by
// loading folder variants, see scripts/make_golden_tokenizer.py):
//   - the base list is tokenizer_config.json's "added_tokens_decoder" if present, otherwise the
//     "added_tokens" of tokenizer.json if that file exists, otherwise empty;
//   - bos/eos/unk/pad come from tokenizer_config.json, each overridden by special_tokens_map.json
//     only when the config has no "added_tokens_decoder" (the legacy path); defaults
//     <|startoftext|> and <|endoftext|>;
//   - each of them, in the order bos, eos, unk, pad, is added with the base list's "normalized"
//     flag when its text is in the base list and with its own flag otherwise (a plain string is
//     not normalized); a later one overrides an earlier one with the same text.
// SDXL's tokenizer_2 has pad "!", so "!" is split out of prompts there and becomes id 0.
static int load_added_tokens(Tokenizer* tok, const char* folder, char* err) {
    char path[4096], tj_path[4096], stm_path[4096];
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", folder);
    snprintf(tj_path, sizeof(tj_path), "%s/tokenizer.json", folder);
    snprintf(stm_path, sizeof(stm_path), "%s/special_tokens_map.json", folder);
    static const char* keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    SpecialSpec spec[4] = {{"<|startoftext|>", 0}, {"<|endoftext|>", 0}, {"<|endoftext|>", 0}, {"<|endoftext|>", 0}};
    AddedToken base[TOKENIZER_MAX_ADDED];
    int n_base = 0, rc = 0, has_decoder = 0;

    JsonDoc config = {0};
    int have_config = file_exists(path);
    if (have_config && load_json(path, &config, err) != 0) return -1;
    const JsonValue* decoder = have_config ? json_get(&config.root, "added_tokens_decoder") : NULL;
    if (decoder && decoder->type == JSON_OBJECT) {
        has_decoder = 1;
        for (size_t i = 0; i < decoder->length && rc == 0; i++) {
            const JsonValue* t = &decoder->items[i];
            const char* content = json_get_string(t, "content");
            int64_t stated; // the key is the id, as text
            if (json_config_int_text(decoder->keys[i], "an \"added_tokens_decoder\" key", 0, TOKENIZER_MAX_ID, &stated, path,
                                     err) != 0) {
                rc = -1;
                break;
            }
            if (!content || n_base == TOKENIZER_MAX_ADDED) {
                rc = set_error(err, "%s: bad added_tokens_decoder entry '%s'", path, decoder->keys[i]);
                break;
            }
            int normalized = 0;
            json_get_bool(t, "normalized", &normalized);
            base[n_base] = (AddedToken){.content = (char*)content, .normalized = normalized};
            rc = added_id(tok, content, stated, path, err, &base[n_base].id);
            n_base++;
        }
    }
    for (int k = 0; k < 4 && rc == 0 && have_config; k++) {
        const JsonValue* v = json_get(&config.root, keys[k]);
        if (v) rc = read_special(v, &spec[k], path, keys[k], err);
    }

    JsonDoc tj = {0}, stm = {0};
    int have_tj = 0, have_stm = 0;
    if (rc == 0 && !has_decoder && file_exists(tj_path)) {
        have_tj = 1;
        if (load_json(tj_path, &tj, err) != 0) rc = -1;
        const JsonValue* list = rc == 0 ? json_get(&tj.root, "added_tokens") : NULL;
        for (size_t i = 0; list && list->type == JSON_ARRAY && i < list->length && rc == 0; i++) {
            const JsonValue* t = &list->items[i];
            const char* content = json_get_string(t, "content");
            int64_t stated = -1; // optional: the vocabulary's id wins when the text is there
            const JsonValue* idv = json_get(t, "id");
            if (idv && json_config_int_value(idv, "an \"added_tokens\" \"id\"", 0, TOKENIZER_MAX_ID, &stated, tj_path, err) != 0) {
                rc = -1;
                break;
            }
            if (!content || n_base == TOKENIZER_MAX_ADDED) {
                rc = set_error(err, "%s: bad added_tokens[%zu]", tj_path, i);
                break;
            }
            int normalized = 0;
            json_get_bool(t, "normalized", &normalized);
            base[n_base] = (AddedToken){.content = (char*)content, .normalized = normalized};
            rc = added_id(tok, content, stated, tj_path, err, &base[n_base].id);
            n_base++;
        }
    }
    if (rc == 0 && !has_decoder && file_exists(stm_path)) {
        have_stm = 1;
        if (load_json(stm_path, &stm, err) != 0) rc = -1;
        for (int k = 0; k < 4 && rc == 0; k++) {
            const JsonValue* v = json_get(&stm.root, keys[k]);
            if (v) rc = read_special(v, &spec[k], stm_path, keys[k], err);
        }
    }

    for (int i = 0; i < n_base && rc == 0; i++)
        rc = push_added(tok, base[i].content, base[i].id, base[i].normalized, path, err);
    int32_t ids[4] = {-1, -1, -1, -1};
    for (int k = 0; k < 4 && rc == 0; k++) {
        int b = find_added(base, n_base, spec[k].content);
        const char* where = have_config ? path : folder;
        if (b >= 0) ids[k] = base[b].id;
        else rc = added_id(tok, spec[k].content, -1, where, err, &ids[k]);
        if (rc == 0) rc = push_added(tok, spec[k].content, ids[k], b >= 0 ? base[b].normalized : spec[k].normalized, where, err);
    }
    tok->bos_id = ids[0];
    tok->eos_id = ids[1];
    tok->unk_id = ids[2];
    tok->pad_id = ids[3];
    if (have_config) json_free(&config);
    if (have_tj) json_free(&tj);
    if (have_stm) json_free(&stm);
    return rc;
}

// GPT-2's bytes_to_unicode: the printable bytes ! .. ~, ¡ .. ¬, ® .. ÿ stand for themselves, the
// other 68 bytes for U+0100, U+0101, ... in increasing byte order.
static uint32_t byte_to_unicode(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    uint32_t n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) n++;
    return 256 + n;
}

int tokenizer_load(Tokenizer* tok, const char* folder, char* err) {
    memset(tok, 0, sizeof(*tok));
    char vocab_path[4096], merges_path[4096], tj_path[4096];
    snprintf(vocab_path, sizeof(vocab_path), "%s/vocab.json", folder);
    snprintf(merges_path, sizeof(merges_path), "%s/merges.txt", folder);
    snprintf(tj_path, sizeof(tj_path), "%s/tokenizer.json", folder);
    int rc;
    if (file_exists(vocab_path) || file_exists(merges_path) || !file_exists(tj_path)) {
        // vocab.json + merges.txt, the files of a diffusers SDXL folder; a missing one is named
        JsonDoc doc;
        rc = load_json(vocab_path, &doc, err);
        if (rc == 0) {
            rc = load_vocab(tok, &doc.root, vocab_path, err);
            json_free(&doc);
        }
        if (rc == 0) rc = load_merges_txt(tok, merges_path, err);
    } else {
        // transformers 5 saves only tokenizer.json: {"model": {"type": "BPE", "vocab", "merges"}}
        JsonDoc doc;
        rc = load_json(tj_path, &doc, err);
        if (rc == 0) {
            const JsonValue* model = json_get(&doc.root, "model");
            const char* type = json_get_string(model, "type");
            if (!model || (type && strcmp(type, "BPE") != 0))
                rc = set_error(err, "%s: expected a BPE \"model\"", tj_path);
            char where[4200];
            snprintf(where, sizeof(where), "%s: model.vocab", tj_path);
            if (rc == 0) rc = load_vocab(tok, json_get(model, "vocab"), where, err);
            if (rc == 0) rc = load_merges_json(tok, json_get(model, "merges"), tj_path, err);
            json_free(&doc);
        }
    }
    if (rc == 0) rc = load_added_tokens(tok, folder, err);
    if (rc == 0) {
        for (int b = 0; b < 256; b++) {
            char sym[16];
            int n = utf8_encode(byte_to_unicode(b), sym);
            sym[n] = 0;
            tok->byte_id[b] = tokenizer_token_id(tok, sym);
            strcpy(sym + n, "</w>");
            tok->byte_eow_id[b] = tokenizer_token_id(tok, sym);
        }
        tok->comma_id = tokenizer_token_id(tok, ",</w>");
    }
    if (rc != 0) tokenizer_free(tok);
    return rc;
}

int tokenizer_set_pad_token(Tokenizer* tok, const char* token, char* err) {
    int32_t id = tokenizer_token_id(tok, token);
    if (id < 0) return set_error(err, "pad token '%s' is not in the vocabulary", token);
    if (push_added(tok, token, id, 0, "pad token", err) != 0) return -1;
    tok->pad_id = id;
    return 0;
}

void tokenizer_free(Tokenizer* tok) {
    free(tok->id_to_token);
    free(tok->vocab_slots);
    free(tok->merge_keys);
    free(tok->merge_rank);
    free(tok->merge_result);
    free(tok->pool);
    for (int i = 0; i < tok->n_added; i++) {
        free(tok->added[i].content);
        free(tok->added[i].cps);
    }
    memset(tok, 0, sizeof(*tok));
}

// ----------------------------------------------------------------------------
// encoding

// BPE of one word, as tokenizers' models/bpe/word.rs Word::merge_all does it: the symbols form a
// linked list, and a min-heap holds candidate merges ordered by (rank, position). The lowest is
// popped; it is skipped when its left symbol is gone, has no right neighbour, or the pair there
// no longer merges into the entry's result (an expired entry); otherwise the two symbols merge
// and the new pairs with both neighbours are pushed. Every pop either merges (at most n - 1
// times) or drops one of the at most 3n entries ever pushed, so a word of n symbols costs
// O(n log n), however long. (GPT-2's loop, which this file used before, merges the best pair
// everywhere and rescans the word after each merge: O(n^2) for a word of many distinct pairs.)

typedef struct {
    int32_t rank, pos, result;
} BpeMerge;

typedef struct {
    BpeMerge* v;
    int n, cap;
} BpeHeap;

static int merge_before(BpeMerge a, BpeMerge b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; }

static void heap_push(BpeHeap* h, BpeMerge m) {
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 64;
        h->v = xrealloc(h->v, (size_t)h->cap * sizeof(BpeMerge));
    }
    int i = h->n++;
    while (i > 0 && merge_before(m, h->v[(i - 1) / 2])) { // sift up
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = m;
}

static BpeMerge heap_pop(BpeHeap* h) {
    BpeMerge top = h->v[0], last = h->v[--h->n];
    int i = 0;
    for (;;) { // sift the last entry down from the root
        int c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && merge_before(h->v[c + 1], h->v[c])) c++;
        if (!merge_before(h->v[c], last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0) h->v[i] = last;
    return top;
}

// Pushes the merge of symbols left and right (positions in sym), if the pair is a merge.
static void push_pair(const Tokenizer* tok, BpeHeap* h, const int32_t* sym, int left, int right) {
    int32_t rank, result;
    if (merge_find(tok, sym[left], sym[right], &rank, &result)) heap_push(h, (BpeMerge){rank, left, result});
}

// BPE of one pre-token (its code points), appending ids. Symbols start as one per UTF-8 byte
// (bytes_to_unicode), the last one with "</w>".
static void bpe_word(const Tokenizer* tok, const uint32_t* cps, int n, I32Vec* out) {
    char* bytes = xmalloc((size_t)n * 4 + 1);
    int nb = 0;
    for (int i = 0; i < n; i++) nb += utf8_encode(cps[i], bytes + nb);
    int32_t* sym = xmalloc((size_t)nb * sizeof(int32_t)); // symbol id at each position, -2 once merged away
    int* prev = xmalloc((size_t)nb * sizeof(int));        // linked list of the live symbols; -1 at the ends
    int* next = xmalloc((size_t)nb * sizeof(int));
    for (int i = 0; i < nb; i++) {
        uint8_t b = (uint8_t)bytes[i];
        sym[i] = i == nb - 1 ? tok->byte_eow_id[b] : tok->byte_id[b];
        prev[i] = i - 1;
        next[i] = i + 1 < nb ? i + 1 : -1;
    }
    BpeHeap heap = {0};
    for (int i = 0; i + 1 < nb; i++) push_pair(tok, &heap, sym, i, i + 1);
    while (heap.n > 0) {
        BpeMerge m = heap_pop(&heap);
        int left = m.pos, right = next[left];
        int32_t rank, result;
        if (sym[left] == -2 || right < 0) continue;
        if (!merge_find(tok, sym[left], sym[right], &rank, &result) || result != m.result) continue; // expired
        sym[left] = m.result;
        sym[right] = -2;
        next[left] = next[right];
        if (next[right] >= 0) prev[next[right]] = left;
        if (prev[left] >= 0) push_pair(tok, &heap, sym, prev[left], left);
        if (next[left] >= 0) push_pair(tok, &heap, sym, left, next[left]);
    }
    // a symbol missing from the vocabulary (-1; not possible with a CLIP vocabulary) is unk
    for (int i = 0; i >= 0 && nb > 0; i = next[i]) i32_push(out, sym[i] >= 0 ? sym[i] : tok->unk_id);
    free(heap.v);
    free(bytes);
    free(sym);
    free(prev);
    free(next);
}

static int starts_with_ascii(const uint32_t* cps, int n, int i, const char* lit) {
    for (int k = 0; lit[k]; k++)
        if (i + k >= n || cps[i + k] != (uint8_t)lit[k]) return 0;
    return 1;
}

// The Split pre-tokenizer over normalized text, then BPE on each piece.
static void pretokenize_and_bpe(const Tokenizer* tok, const uint32_t* cps, int n, I32Vec* out) {
    int i = 0;
    while (i < n) {
        uint32_t c = cps[i];
        int end = i + 1;
        int special = starts_with_ascii(cps, n, i, "<|startoftext|>") ? 15 : starts_with_ascii(cps, n, i, "<|endoftext|>") ? 13 : 0;
        if (special) {
            // The Split regex keeps "<|endoftext|>" whole, but the ByteLevel pre-tokenizer after it
            // re-splits every piece with GPT-2's regex, which cuts this one (and only this kind)
            // into "<|", the letters, and "|>".
            bpe_word(tok, cps + i, 2, out);
            bpe_word(tok, cps + i + 2, special - 4, out);
            bpe_word(tok, cps + i + special - 2, 2, out);
            i += special;
            continue;
        }
        if (c == '\'' && i + 1 < n && (cps[i + 1] == 's' || cps[i + 1] == 't' || cps[i + 1] == 'm' || cps[i + 1] == 'd'))
            end = i + 2;
        else if (c == '\'' && (starts_with_ascii(cps, n, i, "'re") || starts_with_ascii(cps, n, i, "'ve") ||
                               starts_with_ascii(cps, n, i, "'ll")))
            end = i + 3;
        else if (unicode_is_letter(c)) {
            while (end < n && unicode_is_letter(cps[end])) end++;
        } else if (unicode_is_number(c)) {
            // [\p{N}]: one character per piece, so "123" is three tokens
        } else if (unicode_is_space(c)) {
            i++; // whitespace only separates
            continue;
        } else {
            while (end < n && !unicode_is_space(cps[end]) && !unicode_is_letter(cps[end]) && !unicode_is_number(cps[end])) end++;
        }
        bpe_word(tok, cps + i, end - i, out);
        i = end;
    }
}

// Index of the leftmost-longest added token of the given kind in cps[from..n) (its position in
// *at), or -1 when there is none.
static int find_added_token(const Tokenizer* tok, const uint32_t* cps, int n, int from, int normalized, int* at) {
    for (int i = from; i < n; i++) {
        int best = -1;
        for (int t = 0; t < tok->n_added; t++) {
            const AddedToken* a = &tok->added[t];
            if (a->normalized != normalized || a->cps[0] != cps[i] || i + a->n_cps > n) continue;
            if (best >= 0 && a->n_cps <= tok->added[best].n_cps) continue;
            if (memcmp(cps + i, a->cps, (size_t)a->n_cps * sizeof(uint32_t)) == 0) best = t;
        }
        if (best >= 0) {
            *at = i;
            return best;
        }
    }
    return -1;
}

static void encode_normalized(const Tokenizer* tok, const uint32_t* cps, int n, I32Vec* out) {
    int pos = 0, at;
    for (;;) {
        int t = find_added_token(tok, cps, n, pos, 1, &at);
        int stop = t >= 0 ? at : n;
        pretokenize_and_bpe(tok, cps + pos, stop - pos, out);
        if (t < 0) break;
        i32_push(out, tok->added[t].id);
        pos = at + tok->added[t].n_cps;
    }
}

static void encode_all(const Tokenizer* tok, const char* text, I32Vec* out) {
    CodePoints cps = {0};
    utf8_decode(text, strlen(text), &cps);
    int pos = 0, at;
    for (;;) {
        int t = find_added_token(tok, cps.v, cps.n, pos, 0, &at);
        int stop = t >= 0 ? at : cps.n;
        if (stop > pos) {
            CodePoints norm = {0};
            normalize_text(cps.v + pos, stop - pos, &norm);
            encode_normalized(tok, norm.v, norm.n, out);
            free(norm.v);
        }
        if (t < 0) break;
        i32_push(out, tok->added[t].id);
        pos = at + tok->added[t].n_cps;
    }
    free(cps.v);
}

int tokenizer_encode(const Tokenizer* tok, const char* text, int32_t* ids, int max_ids) {
    I32Vec v = {0};
    encode_all(tok, text, &v);
    for (int i = 0; i < v.n && i < max_ids; i++) ids[i] = v.v[i];
    int n = v.n;
    free(v.v);
    return n;
}

int tokenizer_encode_padded(const Tokenizer* tok, const char* text, int32_t ids[CLIP_CONTEXT]) {
    I32Vec v = {0};
    encode_all(tok, text, &v);
    // truncation=True keeps room for the two specials the post-processor adds
    int keep = v.n < CLIP_CHUNK_TOKENS ? v.n : CLIP_CHUNK_TOKENS;
    ids[0] = tok->bos_id;
    for (int i = 0; i < keep; i++) ids[1 + i] = v.v[i];
    ids[1 + keep] = tok->eos_id;
    for (int i = 2 + keep; i < CLIP_CONTEXT; i++) ids[i] = tok->pad_id;
    int n = v.n;
    free(v.v);
    return n;
}

// ----------------------------------------------------------------------------
// A1111 emphasis: parse_prompt_attention
//
// The parser appends pieces of text (res in A1111) in prompt order; a closing bracket multiplies
// every piece appended since its opening one. Here the pieces' texts are stored one after the
// other in a single buffer, so merging a run of equal weights at the end only joins neighbouring
// ranges, and the whole parse is linear in the prompt's length but for the multiplications,
// (pieces) x (brackets open), which PROMPT_MAX_NESTING bounds. (Merging as A1111 does, one
// list.pop and one string concatenation per merge, is quadratic in the number of pieces.)

typedef struct {
    size_t start, len; // the text, a range of Pieces.text
    double weight;     // product of the multipliers applied so far, in A1111's order
} Piece;

typedef struct {
    Piece* v;
    int n, cap;
    StrBuf text; // every piece's text, in order
} Pieces;

static void piece_push(Pieces* res, const char* text, size_t len, double weight) {
    if (res->n == res->cap) {
        res->cap = res->cap ? 2 * res->cap : 16;
        res->v = xrealloc(res->v, (size_t)res->cap * sizeof(Piece));
    }
    res->v[res->n++] = (Piece){res->text.len, len, weight};
    strbuf_append(&res->text, text, len);
}

typedef struct {
    int* v;
    int n, cap;
} IntStack;

static void stack_push(IntStack* s, int x) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 16;
        s->v = xrealloc(s->v, (size_t)s->cap * sizeof(int));
    }
    s->v[s->n++] = x;
}

static void multiply_range(Pieces* res, int start, double m) {
    for (int p = start; p < res->n; p++) res->v[p].weight *= m;
}

// The code point at byte i of a valid UTF-8 string, and its length in bytes.
static uint32_t cp_at(const char* s, size_t i, int* len) {
    const uint8_t* p = (const uint8_t*)s + i;
    if (p[0] < 0x80) { *len = 1; return p[0]; }
    if (p[0] < 0xE0) { *len = 2; return ((uint32_t)(p[0] & 0x1F) << 6) | (p[1] & 0x3F); }
    if (p[0] < 0xF0) { *len = 3; return ((uint32_t)(p[0] & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F); }
    *len = 4;
    return ((uint32_t)(p[0] & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) | ((uint32_t)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

// The code point that ends before byte i (i > 0) of a valid UTF-8 string.
static uint32_t cp_before(const char* s, size_t i) {
    size_t j = i - 1;
    while (j > 0 && ((uint8_t)s[j] & 0xC0) == 0x80) j--;
    int len;
    return cp_at(s, j, &len);
}

// The end of a run of Python \s starting at byte i of text[0..len).
static size_t skip_python_space(const char* text, size_t len, size_t i) {
    int cl;
    while (i < len && unicode_is_space_python(cp_at(text, i, &cl))) i += (size_t)cl;
    return i;
}

// A "BREAK" at byte i of text[0..len) with \b on both sides (Python re: the neighbours are not
// word characters, or the text ends): the end of the whitespace after it, or 0 when there is none.
static size_t break_word_at(const char* text, size_t len, size_t i) {
    int cl;
    if (i + 5 > len || memcmp(text + i, "BREAK", 5) != 0) return 0;
    if (i > 0 && unicode_is_word_python(cp_before(text, i))) return 0;
    if (i + 5 < len && unicode_is_word_python(cp_at(text, i + 5, &cl))) return 0;
    return skip_python_space(text, len, i + 5);
}

// The else branch of parse_prompt_attention: re.split(re_break, text), a ("BREAK", -1) between
// the parts. The leftmost match of `\s*\bBREAK\b\s*` starts at the whitespace run before a
// "BREAK" with word boundaries (or at the "BREAK"), never before the end of the previous match,
// and takes the whitespace after it; one pass finds them all.
static void push_text(Pieces* res, const char* text, size_t len) {
    size_t part = 0;  // start of the current part: 0 or the end of the last match
    size_t space = 0; // start of the whitespace run that ends at i (i itself when there is none)
    size_t i = 0;
    while (i < len) {
        int cl;
        if (unicode_is_space_python(cp_at(text, i, &cl))) {
            i += (size_t)cl;
            continue;
        }
        size_t end = break_word_at(text, len, i);
        if (end) {
            piece_push(res, text + part, space - part, 1.0);
            piece_push(res, "BREAK", 5, PROMPT_BREAK_WEIGHT);
            part = space = i = end;
        } else {
            i += (size_t)cl;
            space = i;
        }
    }
    piece_push(res, text + part, len - part, 1.0);
}

// A match of `:\s*([+-]?[.\d]+)\s*\)` (current A1111) at the ':' at byte p of s[0..len): returns
// the byte after its ')', or 0, with the number (sign included) in s[*num .. *num_end). The four
// parts use disjoint characters, so the greedy scan is the regex's only match. Python's \d also
// takes non-ASCII decimal digits (and float() reads them); this scan takes 0-9 only.
static size_t weight_match_at(const char* s, size_t len, size_t p, size_t* num, size_t* num_end) {
    size_t q = skip_python_space(s, len, p + 1);
    *num = q;
    if (q < len && (s[q] == '+' || s[q] == '-')) q++;
    size_t digits = q;
    while (q < len && (s[q] == '.' || (s[q] >= '0' && s[q] <= '9'))) q++;
    if (q == digits) return 0;
    *num_end = q;
    q = skip_python_space(s, len, q);
    return q < len && s[q] == ')' ? q + 1 : 0;
}

// Python's float() on A1111's `[+-]?[.\d]+`: one '.' at most and at least one digit.
static int parse_weight(const char* s, size_t len, double* out) {
    size_t i = s[0] == '+' || s[0] == '-' ? 1 : 0;
    int digits = 0, dots = 0;
    for (size_t k = i; k < len; k++) {
        if (s[k] == '.') dots++;
        else digits++;
    }
    if (digits == 0 || dots > 1) return -1;
    char* buf = xmalloc(len + 1); // a weight can be as long as the prompt
    memcpy(buf, s, len);
    buf[len] = 0;
    *out = strtod(buf, NULL); // correctly rounded, as Python's float(); huge values are inf in both
    free(buf);
    return 0;
}

// A bracket opens: its position in res goes on its stack, unless PROMPT_MAX_NESTING are open.
static int open_bracket(IntStack* stack, const IntStack* other, int at, char* err) {
    if (stack->n + other->n == PROMPT_MAX_NESTING)
        return set_error(err, "prompt: more than %d emphasis brackets open at once (PROMPT_MAX_NESTING; write \\( for a literal one)",
                         PROMPT_MAX_NESTING);
    stack_push(stack, at);
    return 0;
}

// The prompt as valid UTF-8 (a Python string cannot hold anything else), so that the Unicode
// classes of \s and \b can look at whole characters.
static char* valid_utf8(const char* prompt, size_t* len) {
    CodePoints cps = {0};
    utf8_decode(prompt, strlen(prompt), &cps);
    char* s = xmalloc((size_t)cps.n * 4 + 1);
    *len = 0;
    for (int i = 0; i < cps.n; i++) *len += (size_t)utf8_encode(cps.v[i], s + *len);
    s[*len] = 0;
    free(cps.v);
    return s;
}

// The pieces, runs of equal weights merged (A1111's last loop), as PromptSegments.
static void merge_equal_weights(const Pieces* res, PromptAttention* out) {
    out->segments = xmalloc((size_t)res->n * sizeof(PromptSegment));
    out->n = 0;
    for (int i = 0; i < res->n;) {
        int j = i + 1; // pieces i..j-1 have the weight of piece i (never true for NaN, as in Python)
        while (j < res->n && res->v[j].weight == res->v[i].weight) j++;
        size_t start = res->v[i].start, len = res->v[j - 1].start + res->v[j - 1].len - start;
        char* text = xmalloc(len + 1);
        memcpy(text, res->text.s + start, len);
        text[len] = 0;
        out->segments[out->n++] = (PromptSegment){text, res->v[i].weight};
        i = j;
    }
}

int prompt_parse_attention(const char* prompt, PromptAttention* out, char* err) {
    out->segments = NULL;
    out->n = 0;
    size_t prompt_bytes = strlen(prompt);
    if (prompt_bytes > PROMPT_MAX_BYTES)
        return set_error(err, "prompt: %zu bytes, more than %d (PROMPT_MAX_BYTES)", prompt_bytes, PROMPT_MAX_BYTES);
    size_t len;
    char* s = valid_utf8(prompt, &len);

    const double round_mult = 1.1, square_mult = 1 / 1.1; // A1111's constants, as Python floats
    Pieces res = {0};
    IntStack round = {0}, square = {0};
    int rc = 0;
    size_t p = 0;
    // One token per iteration, in the order of A1111's re_attention alternatives:
    //   \( \) \[ \] \\  |  \  |  (  |  [  |  :weight)  |  )  |  ]  |  text run  |  :
    while (p < len && rc == 0) {
        char c = s[p];
        size_t num, num_end, end;
        if (c == '\\') {
            char next = s[p + 1];
            if (next == '(' || next == ')' || next == '[' || next == ']' || next == '\\') {
                piece_push(&res, s + p + 1, 1, 1.0);
                p += 2;
            } else {
                piece_push(&res, "", 0, 1.0); // a lone backslash: text[1:] of "\" is ""
                p += 1;
            }
        } else if (c == '(') {
            rc = open_bracket(&round, &square, res.n, err);
            p++;
        } else if (c == '[') {
            rc = open_bracket(&square, &round, res.n, err);
            p++;
        } else if (c == ':' && (end = weight_match_at(s, len, p, &num, &num_end))) {
            if (round.n > 0) {
                double w;
                if (parse_weight(s + num, num_end - num, &w) != 0)
                    rc = set_error(err, "prompt: bad emphasis weight '%.*s' (A1111 fails on it too)", (int)(num_end - num < 60 ? num_end - num : 60), s + num);
                else
                    multiply_range(&res, round.v[--round.n], w);
            } else {
                push_text(&res, s + p, end - p); // ":1.5)" with no "(" open is text
            }
            p = end;
        } else if (c == ':') {
            push_text(&res, ":", 1);
            p++;
        } else if (c == ')' && round.n > 0) {
            multiply_range(&res, round.v[--round.n], round_mult);
            p++;
        } else if (c == ']' && square.n > 0) {
            multiply_range(&res, square.v[--square.n], square_mult);
            p++;
        } else if (c == ')' || c == ']') {
            push_text(&res, s + p, 1); // unmatched closer: plain text
            p++;
        } else {
            size_t q = p;
            while (q < len && !strchr("\\()[]:", s[q])) q++;
            push_text(&res, s + p, q - p);
            p = q;
        }
    }
    if (rc == 0) {
        // brackets still open at the end apply to everything after them
        for (int i = 0; i < round.n; i++) multiply_range(&res, round.v[i], round_mult);
        for (int i = 0; i < square.n; i++) multiply_range(&res, square.v[i], square_mult);
        if (res.n == 0) piece_push(&res, "", 0, 1.0);
        merge_equal_weights(&res, out);
    }
    free(res.v);
    free(res.text.s);
    free(round.v);
    free(square.v);
    free(s);
    return rc;
}

void prompt_attention_free(PromptAttention* pa) {
    for (int i = 0; i < pa->n; i++) free(pa->segments[i].text);
    free(pa->segments);
    pa->segments = NULL;
    pa->n = 0;
}

// ----------------------------------------------------------------------------
// A1111 chunking: tokenize_line + process_tokens

#define COMMA_PADDING_BACKTRACK 20 // A1111 option comma_padding_backtrack, default 20

typedef struct {
    int32_t ids[CLIP_CHUNK_TOKENS];
    double weights[CLIP_CHUNK_TOKENS];
    int n;
} ChunkBuilder;

static void chunks_push(PromptChunks* pc, const PromptChunk* c) {
    pc->chunks = xrealloc(pc->chunks, (size_t)(pc->n_chunks + 1) * sizeof(PromptChunk));
    pc->chunks[pc->n_chunks++] = *c;
}

// next_chunk: pad the tokens with EOS to 75 and wrap them in BOS/EOS; then process_tokens: when
// the pad id is not EOS (tokenizer_2: 0), every id after the first EOS becomes the pad id, the
// first EOS being an "<|endoftext|>" typed in the prompt if there is one. A tokenizer whose pad is
// EOS (CLIP-L) keeps every id, words after a typed "<|endoftext|>" included: A1111 replaces only
// `if self.id_end != self.id_pad`.
static void chunk_from_tokens(const Tokenizer* tok, const ChunkBuilder* b, PromptChunk* c) {
    c->ids[0] = tok->bos_id;
    c->multipliers[0] = 1.0f;
    for (int i = 0; i < CLIP_CHUNK_TOKENS; i++) {
        c->ids[1 + i] = i < b->n ? b->ids[i] : tok->eos_id;
        c->multipliers[1 + i] = i < b->n ? (float)b->weights[i] : 1.0f;
    }
    c->ids[CLIP_CONTEXT - 1] = tok->eos_id;
    c->multipliers[CLIP_CONTEXT - 1] = 1.0f;
    if (tok->pad_id != tok->eos_id) {
        int first_eos = 0;
        while (c->ids[first_eos] != tok->eos_id) first_eos++;
        for (int i = first_eos + 1; i < CLIP_CONTEXT; i++) c->ids[i] = tok->pad_id;
    }
}

// next_chunk's bookkeeping: the tokens of b become the next chunk, unless the prompt already has
// PROMPT_MAX_CHUNKS; A1111's token count grows by 75 for every chunk but the last.
static int finish_chunk(const Tokenizer* tok, PromptChunks* pc, ChunkBuilder* b, int is_last, char* err) {
    if (pc->n_chunks == PROMPT_MAX_CHUNKS)
        return set_error(err, "prompt: more than %d chunks of %d tokens (PROMPT_MAX_CHUNKS)", PROMPT_MAX_CHUNKS, CLIP_CHUNK_TOKENS);
    PromptChunk c;
    chunk_from_tokens(tok, b, &c);
    chunks_push(pc, &c);
    pc->token_count += is_last ? b->n : CLIP_CHUNK_TOKENS;
    b->n = 0;
    return 0;
}

// Appends the ids of one emphasis segment to the chunks (tokenize_line's inner loop).
static int add_tokens(const Tokenizer* tok, const int32_t* ids, int n, double weight, PromptChunks* pc, ChunkBuilder* b,
                      int* last_comma, char* err) {
    for (int i = 0; i < n; i++) {
        if (ids[i] == tok->comma_id) {
            *last_comma = b->n;
        } else if (b->n == CLIP_CHUNK_TOKENS && *last_comma != -1 && b->n - *last_comma <= COMMA_PADDING_BACKTRACK) {
            // the chunk is full: move what follows its last comma to the next chunk
            ChunkBuilder moved = {.n = 0};
            for (int k = *last_comma + 1; k < b->n; k++) {
                moved.ids[moved.n] = b->ids[k];
                moved.weights[moved.n++] = b->weights[k];
            }
            b->n = *last_comma + 1;
            if (finish_chunk(tok, pc, b, 0, err) != 0) return -1;
            *b = moved;
            *last_comma = -1;
        }
        if (b->n == CLIP_CHUNK_TOKENS) {
            if (finish_chunk(tok, pc, b, 0, err) != 0) return -1;
            *last_comma = -1;
        }
        b->ids[b->n] = ids[i];
        b->weights[b->n++] = weight;
    }
    return 0;
}

int prompt_chunks_build(const Tokenizer* tok, const char* prompt, PromptChunks* out, char* err) {
    memset(out, 0, sizeof(*out));
    PromptAttention pa;
    if (prompt_parse_attention(prompt, &pa, err) != 0) return -1;
    ChunkBuilder b = {.n = 0};
    int last_comma = -1; // index in b of the last comma, -1 when none since the chunk began
    int rc = 0;
    for (int s = 0; s < pa.n && rc == 0; s++) {
        const PromptSegment* seg = &pa.segments[s];
        if (strcmp(seg->text, "BREAK") == 0 && seg->weight == PROMPT_BREAK_WEIGHT) {
            rc = finish_chunk(tok, out, &b, 0, err);
            last_comma = -1;
            continue;
        }
        I32Vec ids = {0};
        encode_all(tok, seg->text, &ids);
        rc = add_tokens(tok, ids.v, ids.n, seg->weight, out, &b, &last_comma, err);
        free(ids.v);
    }
    if (rc == 0 && (b.n > 0 || out->n_chunks == 0)) rc = finish_chunk(tok, out, &b, 1, err);
    prompt_attention_free(&pa);
    if (rc != 0) prompt_chunks_free(out);
    return rc;
}

void prompt_chunks_pad(const Tokenizer* tok, PromptChunks* pc, int n_chunks) {
    ChunkBuilder empty = {.n = 0};
    PromptChunk c;
    chunk_from_tokens(tok, &empty, &c); // A1111's empty_chunk(): [BOS] + [EOS] * 76, then padding
    while (pc->n_chunks < n_chunks) chunks_push(pc, &c);
}

void prompt_chunks_free(PromptChunks* pc) {
    free(pc->chunks);
    memset(pc, 0, sizeof(*pc));
}
