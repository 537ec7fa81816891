// tests/test_json.c: the JSON parser on valid documents (values checked one by one), on every
// kind of malformed input (each rejected with a one-line message), and metadata.jsonl lines.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../common.h"
#include "../json.h"
#include "check.h"

static int parse(JsonDoc* doc, const char* text, char* err) { return json_parse(doc, text, strlen(text), err); }

static void test_json_parses_values(void) {
    JsonDoc doc;
    char err[ERR_MAX];
    const char* text =
        " {\"int\": -42, \"big\": 18446744073, \"offset\": 9007199254740993, \"float\": 1.5e-3,"
        " \"t\": true, \"f\": false, \"n\": null, \"s\": \"a\\\"b\\\\c\\n\\u00e9\\ud83d\\ude00\","
        " \"arr\": [1, [2, []], {}], \"nested\": {\"k\": \"v\"}, \"empty\": \"\"} \n";
    if (!check_true(parse(&doc, text, err) == 0, "valid document parses (%s)", err)) return;
    const JsonValue* root = &doc.root;
    int64_t i;
    double d;
    int b;
    check_true(root->type == JSON_OBJECT && root->length == 11, "object with 11 members");
    check_true(json_get_int(root, "int", &i) && i == -42, "negative integer");
    check_true(json_get_int(root, "big", &i) && i == 18446744073ll, "integer above 2^32");
    // 2^53 + 1 is not representable in a double; safetensors offsets need the exact integer
    check_true(json_get_int(root, "offset", &i) && i == 9007199254740993ll, "integer above 2^53 kept exactly");
    check_true(json_get_number(root, "float", &d) && d == 1.5e-3, "float with exponent");
    check_true(!json_get_int(root, "float", &i), "a float is not an integer");
    check_true(json_get_bool(root, "t", &b) && b == 1 && json_get_bool(root, "f", &b) && b == 0, "true and false");
    check_true(json_get(root, "n") && json_get(root, "n")->type == JSON_NULL, "null");
    const char* s = json_get_string(root, "s");
    check_true(s && strcmp(s, "a\"b\\c\n\xc3\xa9\xf0\x9f\x98\x80") == 0, "escapes, \\u00e9 and a surrogate pair to UTF-8");
    const JsonValue* arr = json_get(root, "arr");
    check_true(arr && arr->type == JSON_ARRAY && arr->length == 3 && arr->items[1].type == JSON_ARRAY &&
                   arr->items[1].items[1].length == 0 && arr->items[2].type == JSON_OBJECT,
               "nested arrays and an empty object");
    check_true(strcmp(json_get_string(json_get(root, "nested"), "k"), "v") == 0, "nested object member");
    check_true(json_get_string(root, "empty") && json_get_string(root, "empty")[0] == 0, "empty string");
    check_true(json_get(root, "absent") == NULL && json_get_string(root, "int") == NULL, "absent key and wrong type give NULL");
    json_free(&doc);
}

static void test_json_rejects_malformed(void) {
    struct { const char* text, *needle; } bad[] = {
        {"", "unexpected end"},
        {"{", "expected string key"},
        {"{\"a\" 1}", "expected ':'"},
        {"{\"a\": 1,}", "expected string key"},
        {"[1, 2", "expected ',' or ']'"},
        {"[1 2]", "expected ',' or ']'"},
        {"{\"a\": 1} x", "after the JSON value"},
        {"\"unterminated", "unterminated string"},
        {"\"bad \\q escape\"", "bad escape"},
        {"\"\\u12G4\"", "bad hex digit"},
        {"\"\\ud800 lonely\"", "unpaired surrogate"},
        {"\"tab\there\"", "control character"},
        {"01", "after the JSON value"},
        {"-", "truncated number"},
        {"1.", "digit expected after '.'"},
        {"1e+", "digit expected in exponent"},
        {"tru", "unexpected character"},
        {"nul", "unexpected character"},
        {"'single'", "unexpected character"},
    };
    for (size_t c = 0; c < sizeof(bad) / sizeof(bad[0]); c++) {
        JsonDoc doc;
        char err[ERR_MAX] = "";
        int rc = parse(&doc, bad[c].text, err);
        check_true(rc == -1 && strstr(err, bad[c].needle) && strstr(err, "byte "), "reject %-22s -> %s", bad[c].text, err);
    }
    // nesting deeper than JSON_MAX_DEPTH is refused instead of overflowing the stack
    char deep[400];
    memset(deep, '[', 200);
    memset(deep + 200, ']', 199);
    deep[399] = 0;
    JsonDoc doc;
    char err[ERR_MAX] = "";
    check_true(parse(&doc, deep, err) == -1 && strstr(err, "nesting"), "200 nested arrays -> %s", err);
    // a NUL byte inside the buffer is not the end of input
    const char with_nul[] = "{\"a\": 1}\0 junk";
    check_true(json_parse(&doc, with_nul, sizeof(with_nul) - 1, err) == -1, "data after an embedded NUL is rejected");
}

// metadata.jsonl: one JSON object per line, as Hugging Face imagefolder datasets store captions.
static void test_json_metadata_jsonl_lines(void) {
    const char* lines[] = {
        "{\"file_name\": \"frame_0001.png\", \"text\": \"a man walks into a bar, storyboard\"}",
        "{\"file_name\": \"sub/frame_0002.jpg\", \"text\": \"close-up, \\\"surprised\\\" face\", \"extra\": 3}",
    };
    for (int i = 0; i < 2; i++) {
        JsonDoc doc;
        char err[ERR_MAX];
        if (!check_true(parse(&doc, lines[i], err) == 0, "line %d parses", i + 1)) continue;
        const char* file = json_get_string(&doc.root, "file_name");
        const char* text = json_get_string(&doc.root, "text");
        check_true(file && text && strstr(file, "frame_000") && strlen(text) > 10, "line %d: file_name %s, text %s", i + 1,
                   file ? file : "?", text ? text : "?");
        json_free(&doc);
    }
}

static void test_json_escape_round_trip(void) {
    const char* s = "quote \" backslash \\ newline \n tab \t bell \x07 é";
    char buf[256];
    size_t n = json_escape(buf, sizeof(buf), s);
    JsonDoc doc;
    char err[ERR_MAX];
    check_true(n == strlen(buf), "escape length %zu", n);
    if (check_true(json_parse(&doc, buf, n, err) == 0, "escaped literal parses: %s", buf)) {
        check_true(doc.root.type == JSON_STRING && strcmp(doc.root.string, s) == 0, "round trip gives the original");
        json_free(&doc);
    }
    char tiny[8];
    size_t need = json_escape(tiny, sizeof(tiny), "abcdefghij");
    check_true(need == 12 && strlen(tiny) == 7, "a short buffer is truncated and NUL-terminated, the full length returned");
}

const TestCase tests_json[] = {
    {"json_parses_values", test_json_parses_values},
    {"json_rejects_malformed", test_json_rejects_malformed},
    {"json_metadata_jsonl_lines", test_json_metadata_jsonl_lines},
    {"json_escape_round_trip", test_json_escape_round_trip},
    {NULL, NULL},
};
