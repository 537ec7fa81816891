// json.h: a small strict JSON parser (RFC 8259) for safetensors headers, diffusers config.json,
// sharded-checkpoint index files, tokenizer vocabularies and metadata.jsonl lines.
//
// json_parse builds a tree of JsonValue nodes owned by a JsonDoc; json_free releases all of it.
// Strings are decoded (escapes, \uXXXX with surrogate pairs, to UTF-8) and NUL-terminated.
// Numbers keep a double and, when the literal is an integer that fits, an exact int64 (safetensors
// offsets exceed 2^53 in large files). Errors are one line with the byte offset:
//   "byte 57: expected ',' or '}' in object".
// Limits that protect against hostile input: nesting depth JSON_MAX_DEPTH.
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
