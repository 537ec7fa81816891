// json.h: a small strict JSON parser (RFC 8259) for safetensors headers, diffusers config.json,
// sharded-checkpoint index files, tokenizer vocabularies and metadata.jsonl lines.
//
// json_parse builds a tree of JsonValue nodes owned by a JsonDoc; json_free releases all of it.
// Strings are decoded (escapes, \uXXXX with surrogate pairs, to UTF-8) and NUL-terminated.
// Numbers keep a double and, when the literal is an integer that fits, an exact int64 (safetensors
// offsets exceed 2^53 in large files). Errors are one line with the byte offset:
//   "byte 57: expected ',' or '}' in object".
// Limits that protect against hostile input: nesting depth JSON_MAX_DEPTH.
//
// The second half reads the numbers of config files (config.json, scheduler_config.json,
// adapter_config.json, metadata): each one range-checked where it is read, see "Config values".
#pragma once
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64

typedef enum { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue {
    JsonType type;
    double number;           // JSON_NUMBER
    int64_t integer;         // JSON_NUMBER when is_integer
    int is_integer;          // the literal had no fraction/exponent and fits in int64
    const char* literal;     // JSON_NUMBER: the number as written ("1e9", "16.0"), for messages
    const char* string;      // JSON_STRING: decoded UTF-8, NUL-terminated (may contain NULs from \u0000)
    size_t length;           // JSON_STRING: bytes; JSON_ARRAY: items; JSON_OBJECT: members
    struct JsonValue* items; // JSON_ARRAY items, JSON_OBJECT member values (in file order)
    const char** keys;       // JSON_OBJECT member names (in file order)
} JsonValue;

typedef struct JsonChunk JsonChunk;
typedef struct {
    JsonValue root;
    JsonChunk* chunks; // every allocation of the document
} JsonDoc;

// Parses text[0..len) (which need not be NUL-terminated). Whitespace may surround the value;
// anything else after it is an error. Returns 0, or -1 with err (ERR_MAX bytes) filled.
int json_parse(JsonDoc* doc, const char* text, size_t len, char* err);
void json_free(JsonDoc* doc);

// Member `key` of an object, or NULL when obj is not an object or has no such member.
const JsonValue* json_get(const JsonValue* obj, const char* key);
// Typed member access: 1 when present with the right type, 0 otherwise (out untouched).
int json_get_int(const JsonValue* obj, const char* key, int64_t* out);
int json_get_number(const JsonValue* obj, const char* key, double* out);
int json_get_bool(const JsonValue* obj, const char* key, int* out);
const char* json_get_string(const JsonValue* obj, const char* key); // NULL when absent or not a string
const char* json_type_name(JsonType t);

// Appends s to buf (capacity cap, always NUL-terminated) as a JSON string literal with quotes and
// escapes. Returns the length the full literal needs, like snprintf.
size_t json_escape(char* buf, size_t cap, const char* s);

// ----------------------------------------------------------------------------
// Config values
//
// Every number a model takes from a config file goes through these readers, which check it
// against the caller's limits where it is read, so a bad value is one line naming the file and the
// key, never a huge allocation, an overflowed size or a misleading shape error later:
//   unet/config.json: "block_out_channels"[0] must be an integer in [1, 4096], got 1000000000
//   unet/config.json: "layers_per_block" must be an integer in [1, 16], got 1e9 (an integer is
//   written without a fraction or exponent)
// An integer must be an integer literal: 16, not 16.0, 1.6e1 or "16". diffusers and transformers
// write Python ints with json.dumps, which never adds a fraction or an exponent, so anything else
// comes from a hand edit or another tool, and rounding it for them is how 1e9 becomes an
// allocation. Negative values, values past int64 and values past the limits are refused alike.
// Absent and null are the same thing (diffusers writes null for "the default").
//
// Each reader returns 0 (read), -1 (err filled: "path: ..."), and the _or variants 1 when the key
// is absent or null (then *out = dflt). `obj` may be NULL (read as an empty object); `path` is
// whatever names the file in messages.

// The core check of one value v (NULL: missing), named `label` in messages (e.g. "\"r\"" or
// "\"heads\"[2]").
int json_config_int_value(const JsonValue* v, const char* label, int64_t lo, int64_t hi, int64_t* out, const char* path,
                          char* err);
// The member `key` of obj, required / optional.
int json_config_int(const JsonValue* obj, const char* key, int lo, int hi, int* out, const char* path, char* err);
int json_config_int_or(const JsonValue* obj, const char* key, int lo, int hi, int dflt, int* out, const char* path, char* err);
// A required list of min_len..max_len integers, each in [lo, hi]: out[0..*len).
int json_config_int_list(const JsonValue* obj, const char* key, int lo, int hi, int min_len, int max_len, int* out, int* len,
                         const char* path, char* err);
// diffusers' "one integer, or one per level" (transformer_layers_per_block, attention_head_dim):
// out[0..levels) from an integer or a list of exactly `levels`. Returns 1 (out untouched) when
// absent or null.
int json_config_int_levels(const JsonValue* obj, const char* key, int lo, int hi, int levels, int* out, const char* path,
                           char* err);
// A real number (any JSON number literal) in [lo, hi]: epsilons, scales, betas, alphas.
int json_config_number_value(const JsonValue* v, const char* label, double lo, double hi, double* out, const char* path,
                             char* err);
int json_config_number(const JsonValue* obj, const char* key, double lo, double hi, double* out, const char* path, char* err);
int json_config_number_or(const JsonValue* obj, const char* key, double lo, double hi, double dflt, double* out,
                          const char* path, char* err);
// An integer written as text (a safetensors __metadata__ value such as "80", an object key), by
// the same rules; NULL text is missing. `label` as for json_config_int_value.
int json_config_int_text(const char* text, const char* label, int64_t lo, int64_t hi, int64_t* out, const char* path,
                         char* err);
