// json.c: recursive-descent JSON parser. See json.h for the contract.
#include "json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// Every node, key and string of a document lives in chunks freed together by json_free.
struct JsonChunk {
    struct JsonChunk* next;
    size_t used, capacity;
    _Alignas(16) char data[];
};

static void* doc_alloc(JsonDoc* doc, size_t bytes) {
    bytes = (bytes + 15) & ~(size_t)15;
    JsonChunk* c = doc->chunks;
    if (!c || c->capacity - c->used < bytes) {
        size_t cap = bytes > 65536 ? bytes : 65536;
        c = xmalloc(sizeof(JsonChunk) + cap);
        c->used = 0;
        c->capacity = cap;
        c->next = doc->chunks;
        doc->chunks = c;
    }
    void* p = c->data + c->used;
    c->used += bytes;
    return p;
}

typedef struct {
    const char* text;
    size_t pos, len;
    JsonDoc* doc;
    char* err;
} Parser;

static int fail(Parser* p, const char* what) { return set_error(p->err, "byte %zu: %s", p->pos, what); }

static void skip_whitespace(Parser* p) {
    while (p->pos < p->len) {
        char c = p->text[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int parse_value(Parser* p, JsonValue* out, int depth);

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int parse_hex4(Parser* p, uint32_t* out) {
    if (p->len - p->pos < 4) return fail(p, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(p->text[p->pos + i]);
        if (d < 0) return fail(p, "bad hex digit in \\u escape");
        v = v * 16 + (uint32_t)d;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static size_t utf8_encode(char* dst, uint32_t cp) {
    if (cp < 0x80) { dst[0] = (char)cp; return 1; }
    if (cp < 0x800) { dst[0] = (char)(0xc0 | (cp >> 6)); dst[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        dst[0] = (char)(0xe0 | (cp >> 12)); dst[1] = (char)(0x80 | ((cp >> 6) & 0x3f)); dst[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    dst[0] = (char)(0xf0 | (cp >> 18)); dst[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); dst[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

// Parses a string literal at p->pos (which is at the opening quote). The decoded form is never
// longer than the literal, so one allocation of the literal's length suffices.
static int parse_string(Parser* p, const char** out, size_t* out_len) {
    p->pos++; // opening quote
    size_t end = p->pos;
    while (end < p->len && p->text[end] != '"') end += (p->text[end] == '\\') ? 2 : 1;
    if (end >= p->len) return fail(p, "unterminated string");
    char* dst = doc_alloc(p->doc, end - p->pos + 1);
    size_t n = 0;
    while (p->text[p->pos] != '"') {
        unsigned char c = (unsigned char)p->text[p->pos];
        if (c < 0x20) return fail(p, "control character in string");
        if (c != '\\') {
            dst[n++] = (char)c;
            p->pos++;
            continue;
        }
        p->pos++;
        char e = p->text[p->pos++];
        switch (e) {
        case '"': dst[n++] = '"'; break;
        case '\\': dst[n++] = '\\'; break;
        case '/': dst[n++] = '/'; break;
        case 'b': dst[n++] = '\b'; break;
        case 'f': dst[n++] = '\f'; break;
        case 'n': dst[n++] = '\n'; break;
        case 'r': dst[n++] = '\r'; break;
        case 't': dst[n++] = '\t'; break;
        case 'u': {
            uint32_t cp;
            if (parse_hex4(p, &cp) != 0) return -1;
            if (cp >= 0xd800 && cp < 0xdc00) { // high surrogate: a low one must follow
                uint32_t lo;
                if (p->len - p->pos < 2 || p->text[p->pos] != '\\' || p->text[p->pos + 1] != 'u')
                    return fail(p, "unpaired surrogate in \\u escape");
                p->pos += 2;
                if (parse_hex4(p, &lo) != 0) return -1;
                if (lo < 0xdc00 || lo >= 0xe000) return fail(p, "unpaired surrogate in \\u escape");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                return fail(p, "unpaired surrogate in \\u escape");
            }
            n += utf8_encode(dst + n, cp); // at most 4 bytes for the 6 (or 12) of the escape
            break;
        }
        default: p->pos--; return fail(p, "bad escape in string");
        }
    }
    p->pos++; // closing quote
    dst[n] = 0;
    *out = dst;
    *out_len = n;
    return 0;
}

static int parse_number(Parser* p, JsonValue* out) {
    size_t start = p->pos;
    int is_integer = 1;
    if (p->text[p->pos] == '-') p->pos++;
    if (p->pos >= p->len) return fail(p, "truncated number");
    if (p->text[p->pos] == '0') {
        p->pos++;
    } else if (p->text[p->pos] >= '1' && p->text[p->pos] <= '9') {
        while (p->pos < p->len && p->text[p->pos] >= '0' && p->text[p->pos] <= '9') p->pos++;
    } else {
        return fail(p, "bad number");
    }
    if (p->pos < p->len && p->text[p->pos] == '.') {
        is_integer = 0;
        p->pos++;
        if (p->pos >= p->len || p->text[p->pos] < '0' || p->text[p->pos] > '9') return fail(p, "digit expected after '.'");
        while (p->pos < p->len && p->text[p->pos] >= '0' && p->text[p->pos] <= '9') p->pos++;
    }
    if (p->pos < p->len && (p->text[p->pos] == 'e' || p->text[p->pos] == 'E')) {
        is_integer = 0;
        p->pos++;
        if (p->pos < p->len && (p->text[p->pos] == '+' || p->text[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || p->text[p->pos] < '0' || p->text[p->pos] > '9') return fail(p, "digit expected in exponent");
        while (p->pos < p->len && p->text[p->pos] >= '0' && p->text[p->pos] <= '9') p->pos++;
    }
    char buf[64];
    size_t n = p->pos - start;
    char* literal = doc_alloc(p->doc, n + 1);
    memcpy(literal, p->text + start, n);
    literal[n] = 0;
    out->literal = literal;
    if (n >= sizeof(buf)) { // long literals: only the double is kept
        out->number = strtod(literal, NULL);
        is_integer = 0;
    } else {
        memcpy(buf, p->text + start, n);
        buf[n] = 0;
        out->number = strtod(buf, NULL);
        if (is_integer) {
            errno = 0;
            long long v = strtoll(buf, NULL, 10);
            if (errno == ERANGE) is_integer = 0;
            else out->integer = v;
        }
    }
    out->type = JSON_NUMBER;
    out->is_integer = is_integer;
    return 0;
}

static int match_literal(Parser* p, const char* word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->text + p->pos, word, n) != 0) return 0;
    p->pos += n;
    return 1;
}

// Arrays and objects collect their members in a growing heap buffer, then copy them into the
// document once the count is known.
static int parse_container(Parser* p, JsonValue* out, int depth, int is_object) {
    char close = is_object ? '}' : ']';
    p->pos++;
    size_t count = 0, cap = 8;
    JsonValue* items = xmalloc(sizeof(JsonValue) * cap);
    const char** keys = is_object ? xmalloc(sizeof(char*) * cap) : NULL;
    int rc = 0;
    skip_whitespace(p);
    if (p->pos < p->len && p->text[p->pos] == close) {
        p->pos++;
    } else {
        for (;;) {
            if (count == cap) {
                cap *= 2;
                items = xrealloc(items, sizeof(JsonValue) * cap);
                if (is_object) keys = xrealloc(keys, sizeof(char*) * cap);
            }
            skip_whitespace(p);
            if (is_object) {
                size_t key_len;
                if (p->pos >= p->len || p->text[p->pos] != '"') { rc = fail(p, "expected string key in object"); break; }
                if ((rc = parse_string(p, &keys[count], &key_len)) != 0) break;
                skip_whitespace(p);
                if (p->pos >= p->len || p->text[p->pos] != ':') { rc = fail(p, "expected ':' after object key"); break; }
                p->pos++;
            }
            if ((rc = parse_value(p, &items[count], depth + 1)) != 0) break;
            count++;
            skip_whitespace(p);
            if (p->pos < p->len && p->text[p->pos] == ',') { p->pos++; continue; }
            if (p->pos < p->len && p->text[p->pos] == close) { p->pos++; break; }
            rc = fail(p, is_object ? "expected ',' or '}' in object" : "expected ',' or ']' in array");
            break;
        }
    }
    if (rc == 0) {
        out->type = is_object ? JSON_OBJECT : JSON_ARRAY;
        out->length = count;
        out->items = doc_alloc(p->doc, sizeof(JsonValue) * (count ? count : 1));
        memcpy(out->items, items, sizeof(JsonValue) * count);
        if (is_object) {
            out->keys = doc_alloc(p->doc, sizeof(char*) * (count ? count : 1));
            memcpy(out->keys, keys, sizeof(char*) * count);
        }
    }
    free(items);
    free(keys);
    return rc;
}

static int parse_value(Parser* p, JsonValue* out, int depth) {
    memset(out, 0, sizeof(*out));
    if (depth > JSON_MAX_DEPTH) return fail(p, "nesting deeper than 64 levels");
    skip_whitespace(p);
    if (p->pos >= p->len) return fail(p, "unexpected end of input");
    char c = p->text[p->pos];
    if (c == '{') return parse_container(p, out, depth, 1);
    if (c == '[') return parse_container(p, out, depth, 0);
    if (c == '"') {
        out->type = JSON_STRING;
        return parse_string(p, &out->string, &out->length);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, out);
    if (match_literal(p, "true")) { out->type = JSON_TRUE; return 0; }
    if (match_literal(p, "false")) { out->type = JSON_FALSE; return 0; }
    if (match_literal(p, "null")) { out->type = JSON_NULL; return 0; }
    return fail(p, "unexpected character");
}

int json_parse(JsonDoc* doc, const char* text, size_t len, char* err) {
    memset(doc, 0, sizeof(*doc));
    Parser p = {text, 0, len, doc, err};
    if (parse_value(&p, &doc->root, 0) != 0) {
        json_free(doc);
        return -1;
    }
    skip_whitespace(&p);
    if (p.pos != len) {
        fail(&p, "unexpected data after the JSON value");
        json_free(doc);
        return -1;
    }
    return 0;
}

void json_free(JsonDoc* doc) {
    JsonChunk* c = doc->chunks;
    while (c) {
        JsonChunk* next = c->next;
        free(c);
        c = next;
    }
    memset(doc, 0, sizeof(*doc));
}

const JsonValue* json_get(const JsonValue* obj, const char* key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    for (size_t i = 0; i < obj->length; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

int json_get_int(const JsonValue* obj, const char* key, int64_t* out) {
    const JsonValue* v = json_get(obj, key);
    if (!v || v->type != JSON_NUMBER || !v->is_integer) return 0;
    *out = v->integer;
    return 1;
}

int json_get_number(const JsonValue* obj, const char* key, double* out) {
    const JsonValue* v = json_get(obj, key);
    if (!v || v->type != JSON_NUMBER) return 0;
    *out = v->number;
    return 1;
}

int json_get_bool(const JsonValue* obj, const char* key, int* out) {
    const JsonValue* v = json_get(obj, key);
    if (!v || (v->type != JSON_TRUE && v->type != JSON_FALSE)) return 0;
    *out = v->type == JSON_TRUE;
    return 1;
}

const char* json_get_string(const JsonValue* obj, const char* key) {
    const JsonValue* v = json_get(obj, key);
    return v && v->type == JSON_STRING ? v->string : NULL;
}

const char* json_type_name(JsonType t) {
    static const char* names[] = {"null", "false", "true", "number", "string", "array", "object"};
    return names[t];
}

size_t json_escape(char* buf, size_t cap, const char* s) {
    size_t n = 0;
#define PUT(ch) do { if (n + 1 < cap) buf[n] = (ch); n++; } while (0)
    PUT('"');
    for (const unsigned char* c = (const unsigned char*)s; *c; c++) {
        if (*c == '"' || *c == '\\') { PUT('\\'); PUT((char)*c); }
        else if (*c == '\n') { PUT('\\'); PUT('n'); }
        else if (*c == '\r') { PUT('\\'); PUT('r'); }
        else if (*c == '\t') { PUT('\\'); PUT('t'); }
        else if (*c < 0x20) {
            char hex[8];
            snprintf(hex, sizeof(hex), "\\u%04x", *c);
            for (int i = 0; hex[i]; i++) PUT(hex[i]);
        } else PUT((char)*c);
    }
    PUT('"');
#undef PUT
    if (cap) buf[n < cap ? n : cap - 1] = 0;
    return n;
}

// ----------------------------------------------------------------------------
// Config values

// How v is written, for "got ...": the literal of a number, a string in quotes, or its kind;
// cut to about 40 bytes so a pasted megabyte stays one short line.
static const char* value_text(const JsonValue* v, char* buf, size_t cap) {
    char tmp[48];
    switch (v->type) {
    case JSON_NUMBER: snprintf(tmp, sizeof(tmp), "%s", v->literal); break;
    case JSON_STRING: json_escape(tmp, sizeof(tmp), v->string); break;
    case JSON_ARRAY: snprintf(tmp, sizeof(tmp), "a list of %zu", v->length); break;
    case JSON_OBJECT: snprintf(tmp, sizeof(tmp), "an object"); break;
    default: snprintf(tmp, sizeof(tmp), "%s", json_type_name(v->type)); break;
    }
    size_t n = strlen(tmp);
    snprintf(buf, cap, "%s%s", tmp, n == sizeof(tmp) - 1 ? "..." : "");
    return buf;
}

int json_config_int_value(const JsonValue* v, const char* label, int64_t lo, int64_t hi, int64_t* out, const char* path,
                          char* err) {
    if (!v || v->type == JSON_NULL)
        return set_error(err, "%s: missing %s (an integer in [%lld, %lld])", path, label, (long long)lo, (long long)hi);
    if (v->type == JSON_NUMBER && v->is_integer && v->integer >= lo && v->integer <= hi) {
        *out = v->integer;
        return 0;
    }
    char got[64];
    // a number that is not an integer literal: say why, since "got 16.0" alone looks like a pass
    int not_literal = v->type == JSON_NUMBER && !v->is_integer && strpbrk(v->literal, ".eE");
    return set_error(err, "%s: %s must be an integer in [%lld, %lld], got %s%s", path, label, (long long)lo, (long long)hi,
                     value_text(v, got, sizeof(got)),
                     not_literal ? " (an integer is written without a fraction or exponent)" : "");
}

static const char* quoted(char* buf, size_t cap, const char* key) {
    snprintf(buf, cap, "\"%s\"", key);
    return buf;
}

int json_config_int(const JsonValue* obj, const char* key, int lo, int hi, int* out, const char* path, char* err) {
    char label[160];
    int64_t v;
    if (json_config_int_value(json_get(obj, key), quoted(label, sizeof(label), key), lo, hi, &v, path, err) != 0) return -1;
    *out = (int)v;
    return 0;
}

int json_config_int_or(const JsonValue* obj, const char* key, int lo, int hi, int dflt, int* out, const char* path, char* err) {
    const JsonValue* v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) {
        *out = dflt;
        return 1;
    }
    return json_config_int(obj, key, lo, hi, out, path, err);
}

// Checks the items of the list v (already known to hold count items) into out.
static int int_items(const JsonValue* v, const char* key, int lo, int hi, int* out, const char* path, char* err) {
    for (size_t i = 0; i < v->length; i++) {
        char label[180];
        int64_t x;
        snprintf(label, sizeof(label), "\"%s\"[%zu]", key, i);
        if (json_config_int_value(&v->items[i], label, lo, hi, &x, path, err) != 0) return -1;
        out[i] = (int)x;
    }
    return 0;
}

int json_config_int_list(const JsonValue* obj, const char* key, int lo, int hi, int min_len, int max_len, int* out, int* len,
                         const char* path, char* err) {
    const JsonValue* v = json_get(obj, key);
    char got[64];
    if (!v || v->type == JSON_NULL)
        return set_error(err, "%s: missing \"%s\" (a list of %d to %d integers in [%d, %d])", path, key, min_len, max_len, lo, hi);
    if (v->type != JSON_ARRAY || v->length < (size_t)min_len || v->length > (size_t)max_len)
        return set_error(err, "%s: \"%s\" must be a list of %d to %d integers in [%d, %d], got %s", path, key, min_len, max_len,
                         lo, hi, value_text(v, got, sizeof(got)));
    if (int_items(v, key, lo, hi, out, path, err) != 0) return -1;
    *len = (int)v->length;
    return 0;
}

int json_config_int_levels(const JsonValue* obj, const char* key, int lo, int hi, int levels, int* out, const char* path,
                           char* err) {
    const JsonValue* v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) return 1;
    if (v->type == JSON_ARRAY) {
        char got[64];
        if (v->length != (size_t)levels)
            return set_error(err, "%s: \"%s\" must be an integer or a list of %d (one per level), got %s", path, key, levels,
                             value_text(v, got, sizeof(got)));
        return int_items(v, key, lo, hi, out, path, err);
    }
    int x;
    if (json_config_int(obj, key, lo, hi, &x, path, err) != 0) return -1;
    for (int i = 0; i < levels; i++) out[i] = x;
    return 0;
}

int json_config_number_value(const JsonValue* v, const char* label, double lo, double hi, double* out, const char* path,
                             char* err) {
    if (!v || v->type == JSON_NULL) return set_error(err, "%s: missing %s (a number in [%g, %g])", path, label, lo, hi);
    if (v->type == JSON_NUMBER && v->number >= lo && v->number <= hi) { // NaN fails both; 1e999 is inf and fails
        *out = v->number;
        return 0;
    }
    char got[64];
    return set_error(err, "%s: %s must be a number in [%g, %g], got %s", path, label, lo, hi, value_text(v, got, sizeof(got)));
}

int json_config_number(const JsonValue* obj, const char* key, double lo, double hi, double* out, const char* path, char* err) {
    char label[160];
    return json_config_number_value(json_get(obj, key), quoted(label, sizeof(label), key), lo, hi, out, path, err);
}

int json_config_number_or(const JsonValue* obj, const char* key, double lo, double hi, double dflt, double* out,
                          const char* path, char* err) {
    const JsonValue* v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) {
        *out = dflt;
        return 1;
    }
    return json_config_number(obj, key, lo, hi, out, path, err);
}

int json_config_int_text(const char* text, const char* label, int64_t lo, int64_t hi, int64_t* out, const char* path,
                         char* err) {
    if (!text) return json_config_int_value(NULL, label, lo, hi, out, path, err);
    JsonDoc doc;
    char jerr[ERR_MAX];
    if (json_parse(&doc, text, strlen(text), jerr) != 0) { // not even a number: show the text itself
        JsonValue as_text = {.type = JSON_STRING, .string = text, .length = strlen(text)};
        char got[64];
        return set_error(err, "%s: %s must be an integer in [%lld, %lld], got %s", path, label, (long long)lo, (long long)hi,
                         value_text(&as_text, got, sizeof(got)));
    }
    int rc = json_config_int_value(&doc.root, label, lo, hi, out, path, err);
    json_free(&doc);
    return rc;
}
