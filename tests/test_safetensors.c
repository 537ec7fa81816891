// tests/test_safetensors.c: the safetensors reader against files from the reference writer
// (tests/golden/st/, scripts/make_golden_safetensors.py), our writer's round trip, diffusers
// folders (sharded index, .fp16 variant, config.json), and every kind of malformed file.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common.h"
#include "../safetensors.h"
#include "check.h"

static void test_safetensors_reads_every_dtype(void) {
    SafeTensors st;
    if (!golden_open(&st, "st/dtypes_np.safetensors")) return;
    // every tensor holds v[i] = i - 3 (unsigned: i; bool: i % 2), shape (2, 3)
    const char* names[] = {"t_f32", "t_f16", "t_f64", "t_i8", "t_u8", "t_i16", "t_u16", "t_i32", "t_u32", "t_i64", "t_u64", "t_bool"};
    const char* dtypes[] = {"F32", "F16", "F64", "I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL"};
    for (int i = 0; i < 12; i++) {
        const SafeTensor* t = safetensors_find(&st, names[i]);
        if (!check_true(t != NULL, "%s present", names[i])) continue;
        check_true(strcmp(dtype_name(t->dtype), dtypes[i]) == 0 && t->rank == 2 && t->shape[0] == 2 && t->shape[1] == 3,
                   "%s is %s [2, 3] (got %s rank %d)", names[i], dtypes[i], dtype_name(t->dtype), t->rank);
        float got[6], want[6];
        convert_to_f32(got, t->data, t->dtype, 6);
        for (int j = 0; j < 6; j++) {
            int is_unsigned = dtypes[i][0] == 'U';
            want[j] = strcmp(dtypes[i], "BOOL") == 0 ? (float)(j % 2) : (float)(is_unsigned ? j : j - 3);
        }
        char label[64];
        snprintf(label, sizeof(label), "%s values", names[i]);
        check_close(label, got, want, 6, 0.0f, 0.0f);
    }
    const SafeTensor* scalar = safetensors_find(&st, "t_scalar");
    check_true(scalar && scalar->rank == 0 && safetensor_numel(scalar) == 1, "rank-0 tensor has one element");
    const SafeTensor* empty = safetensors_find(&st, "t_empty");
    check_true(empty && empty->nbytes == 0 && safetensor_numel(empty) == 0, "zero-element tensor");
    const char* note = safetensors_metadata(&st, "note");
    check_true(note && strcmp(note, "numpy writer") == 0, "__metadata__ note = \"%s\"", note ? note : "(none)");
    check_true(safetensors_metadata(&st, "script") != NULL, "__metadata__ names the script");
    check_true(safetensors_find(&st, "__metadata__") == NULL, "__metadata__ is not a tensor");
    safetensors_close(&st);

    if (!golden_open(&st, "st/dtypes_bf16.safetensors")) return;
    float got[6], want[6] = {-3, -2, -1, 0, 1, 2};
    int64_t shape[2] = {2, 3};
    char err[ERR_MAX];
    check_true(safetensors_read_f32(&st, "t_bf16", 2, shape, got, err) == 0, "read BF16 as f32");
    check_close("t_bf16 values", got, want, 6, 0.0f, 0.0f);
    safetensors_close(&st);
}

static void test_safetensors_strict_lookup_errors(void) {
    SafeTensors st;
    if (!golden_open(&st, "st/dtypes_np.safetensors")) return;
    float buf[16];
    char err[ERR_MAX];
    int64_t good[2] = {2, 3}, bad[2] = {3, 2};
    check_true(safetensors_read_f32(&st, "t_f32", 2, good, buf, err) == 0, "matching shape reads");
    int rc = safetensors_read_f32(&st, "t_missing", 2, good, buf, err);
    check_true(rc == -1 && strstr(err, "missing tensor 't_missing'") && strstr(err, "dtypes_np.safetensors"),
               "missing tensor: %s", err);
    rc = safetensors_read_f32(&st, "t_f32", 2, bad, buf, err);
    check_true(rc == -1 && strstr(err, "has shape [2, 3], expected [3, 2]"), "wrong shape: %s", err);
    rc = safetensors_read_f32(&st, "t_i32", 2, good, buf, err);
    check_true(rc == -1 && strstr(err, "dtype I32"), "integer tensor where weights are expected: %s", err);
    safetensors_close(&st);
}

static void test_safetensors_write_round_trip(void) {
    mkdir("build", 0755);
    const char* path = "build/test_roundtrip.safetensors";
    float a[6] = {1.5f, -2, 3, 4, 5, 6e-8f};
    uint16_t h[3] = {0x3c00, 0xc000, 0x7c00}; // 1, -2, inf in f16
    int64_t ids[2] = {-1, 1ll << 40};
    SafeTensorOut out[3] = {
        {"layer.weight", DT_F32, 2, {2, 3}, a},
        {"layer.half", DT_F16, 1, {3}, h},
        {"ids \"quoted\" \\ name", DT_I64, 1, {2}, ids}, // escapes in names survive
    };
    const char* keys[2] = {"ss_network_dim", "prompt"};
    const char* values[2] = {"4", "a \"storyboard\" frame\nline two, ünïcödé"};
    char err[ERR_MAX];
    if (!check_true(safetensors_write(path, out, 3, keys, values, 2, err) == 0, "write %s", path)) return;
    struct stat sb;
    check_true(stat(path, &sb) == 0 && temp_files_beside(path) == 0, "no temporary file left behind");
    SafeTensors st;
    if (!check_true(safetensors_open(&st, path, err) == 0, "reopen: %s", err)) return;
    uint8_t* raw;
    size_t size;
    read_file(path, &raw, &size, err);
    check_true((load_le64(raw) + 8) % 8 == 0, "data section starts 8-byte aligned");
    free(raw);
    for (int i = 0; i < 3; i++) {
        const SafeTensor* t = safetensors_find(&st, out[i].name);
        if (!check_true(t && t->dtype == out[i].dtype && t->rank == out[i].rank, "'%s' back with dtype and rank", out[i].name))
            continue;
        check_bytes_equal(out[i].name, t->data, out[i].data, t->nbytes);
    }
    for (int i = 0; i < 2; i++) {
        const char* v = safetensors_metadata(&st, keys[i]);
        check_true(v && strcmp(v, values[i]) == 0, "metadata '%s' round trip", keys[i]);
    }
    safetensors_close(&st);
    int rc = safetensors_write("build/no/such/dir/x.safetensors", out, 1, NULL, NULL, 0, err);
    check_true(rc == -1 && strstr(err, "build/no/such/dir/x.safetensors"), "unwritable path fails cleanly: %s", err);
}

static void test_safetensors_diffusers_folders(void) {
    char err[ERR_MAX];
    SafeTensors st, expected;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", golden_path("st/sharded"));
    if (!check_true(safetensors_open_dir(&st, dir, "diffusion_pytorch_model", NULL, err) == 0, "open sharded folder: %s", err))
        return;
    check_true(st.file_count == 2 && st.count == 5, "two shards, five tensors (%d, %d)", st.file_count, st.count);
    if (golden_open(&expected, "st/sharded_expected.safetensors")) {
        for (int i = 0; i < expected.count; i++) {
            const SafeTensor* want = &expected.tensors[i];
            const SafeTensor* got = safetensors_find(&st, want->name);
            if (check_true(got != NULL, "sharded tensor '%s' found", want->name))
                check_bytes_equal(want->name, got->data, want->data, want->nbytes);
        }
        safetensors_close(&expected);
    }
    safetensors_close(&st);

    JsonDoc config;
    char config_path[4200];
    snprintf(config_path, sizeof(config_path), "%s/config.json", dir);
    if (check_true(json_read_file(&config, config_path, err) == 0, "read config.json: %s", err)) {
        int64_t in_channels = 0;
        double eps = 0;
        int linear = 0;
        const JsonValue* blocks = json_get(&config.root, "block_out_channels");
        check_true(json_get_int(&config.root, "in_channels", &in_channels) && in_channels == 4, "config in_channels 4");
        check_true(json_get_number(&config.root, "norm_eps", &eps) && eps == 1e-5, "config norm_eps 1e-5");
        check_true(json_get_bool(&config.root, "use_linear_projection", &linear) && linear, "config use_linear_projection");
        check_true(blocks && blocks->type == JSON_ARRAY && blocks->length == 3 && blocks->items[2].integer == 1280,
                   "config block_out_channels [320, 640, 1280]");
        json_free(&config);
    }

    snprintf(dir, sizeof(dir), "%s", golden_path("st/variant"));
    check_true(safetensors_open_dir(&st, dir, "model", "fp16", err) == 0 && safetensors_find(&st, "w"),
               "open the .fp16 variant: %s", st.count ? "ok" : err);
    safetensors_close(&st);
    int rc = safetensors_open_dir(&st, dir, "model", NULL, err);
    check_true(rc == -1 && strstr(err, "model.safetensors"), "missing non-variant weights: %s", err);
}

// ----------------------------------------------------------------------------
// Malformed files: each built in memory from a header string and a data size.

static uint8_t* make_file(const char* header, size_t data_bytes, size_t* size) {
    size_t h = strlen(header);
    *size = 8 + h + data_bytes;
    uint8_t* buf = xcalloc(1, *size);
    store_le64(buf, h);
    memcpy(buf + 8, header, h);
    return buf;
}

// Expects the file to be rejected with a message naming it and containing `needle`.
static void expect_rejected(const char* what, uint8_t* buf, size_t size, const char* needle) {
    SafeTensors st;
    char err[ERR_MAX] = "";
    int rc = safetensors_open_buffer(&st, "bad.safetensors", buf, size, err);
    int ok = rc == -1 && strstr(err, "bad.safetensors") && strstr(err, needle) && !strchr(err, '\n');
    check_true(ok, "%s -> %s", what, err[0] ? err : "(accepted!)");
    if (rc == 0) safetensors_close(&st);
}

// Malformed headers: (what, header JSON, bytes of data after it, text the error must contain).
static const struct {
    const char *what, *header;
    size_t data_bytes;
    const char* needle;
} malformed[] = {
    {"truncated data section", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "past the data section"},
    {"offsets out of range", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8, "past the data section"},
    {"overlapping tensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps"},
    {"a gap before the first tensor", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "unused bytes"},
    {"bytes after the last tensor", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "unused bytes"},
    {"unknown dtype", "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "unsupported dtype 'F8_E4M3'"},
    {"size that does not match shape x dtype", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "needs 12"},
    {"invalid JSON (unclosed object)", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "invalid JSON"},
    {"junk after the JSON", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8, "invalid JSON"},
    {"header is an array", "[1, 2]", 0, "not a safetensors file"},
    {"negative dimension", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "bad shape"},
    {"begin after end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "begin after end"},
    {"no data_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "bad data_offsets"},
    {"no dtype", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "no dtype"},
    {"duplicate tensor name", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                              "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, "appears twice"},
    {"non-string metadata", "{\"__metadata__\":{\"k\":1},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
     "not a string"},
    {"shape whose size overflows",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, "overflows"},
    {"rank above 8", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "bad shape"},
};

static void test_safetensors_rejects_malformed(void) {
    size_t size;
    uint8_t* buf;
    // a valid file first, so each case below is known to differ from an accepted file only in its flaw
    SafeTensors st;
    char err[ERR_MAX];
    buf = make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, &size);
    check_true(safetensors_open_buffer(&st, "good.safetensors", buf, size, err) == 0, "the unmutated file is accepted");
    safetensors_close(&st);

    for (size_t c = 0; c < sizeof(malformed) / sizeof(malformed[0]); c++) {
        buf = make_file(malformed[c].header, malformed[c].data_bytes, &size);
        expect_rejected(malformed[c].what, buf, size, malformed[c].needle);
    }
    // broken length prefixes
    buf = xcalloc(1, 5);
    expect_rejected("5-byte file", buf, 5, "too small");
    buf = make_file("{}", 0, &size);
    store_le64(buf, 1000);
    expect_rejected("header length past the end", buf, size, "not a safetensors file");
    buf = make_file("{}", 0, &size);
    store_le64(buf, 1ull << 40);
    expect_rejected("header length of a terabyte", buf, size, "not a safetensors file");
    // a text file (README.md, say): its first 8 bytes read as a length of about 7e18
    const char* text = "# sdxl.c\n\nA from-scratch C implementation of SDXL.\n";
    buf = xmalloc(strlen(text));
    memcpy(buf, text, strlen(text));
    expect_rejected("a text file", buf, strlen(text), "not a safetensors file");

    // files on disk: missing, and a directory
    int rc = safetensors_open(&st, "tests/golden/st/no_such_file.safetensors", err);
    check_true(rc == -1 && strstr(err, "no_such_file.safetensors"), "missing file: %s", err);
    rc = safetensors_open(&st, "tests/golden", err);
    check_true(rc == -1 && strstr(err, "not a regular file"), "a directory: %s", err);
}

static void test_safetensors_index_errors(void) {
    mkdir("build", 0755);
    mkdir("build/test_index", 0755);
    // an index that names a tensor its shard does not hold
    float w[2] = {1, 2};
    SafeTensorOut t = {"w", DT_F32, 1, {2}, w};
    char err[ERR_MAX];
    safetensors_write("build/test_index/shard-1.safetensors", &t, 1, NULL, NULL, 0, err);
    const char* index = "{\"weight_map\": {\"w\": \"shard-1.safetensors\", \"v\": \"shard-1.safetensors\"}}";
    write_file_atomic("build/test_index/m.safetensors.index.json", index, strlen(index), err);
    SafeTensors st;
    int rc = safetensors_open_index(&st, "build/test_index/m.safetensors.index.json", err);
    check_true(rc == -1 && strstr(err, "'v'") && strstr(err, "shard-1"), "index names a tensor its shard lacks: %s", err);
    index = "{\"weight_map\": {\"w\": \"../../etc/shard.safetensors\"}}";
    write_file_atomic("build/test_index/m.safetensors.index.json", index, strlen(index), err);
    rc = safetensors_open_index(&st, "build/test_index/m.safetensors.index.json", err);
    check_true(rc == -1 && strstr(err, "not in the index's folder"), "index points outside its folder: %s", err);
    index = "{\"metadata\": {}}";
    write_file_atomic("build/test_index/m.safetensors.index.json", index, strlen(index), err);
    rc = safetensors_open_index(&st, "build/test_index/m.safetensors.index.json", err);
    check_true(rc == -1 && strstr(err, "weight_map"), "index without weight_map: %s", err);
}

const TestCase tests_safetensors[] = {
    {"safetensors_reads_every_dtype", test_safetensors_reads_every_dtype},
    {"safetensors_strict_lookup_errors", test_safetensors_strict_lookup_errors},
    {"safetensors_write_round_trip", test_safetensors_write_round_trip},
    {"safetensors_diffusers_folders", test_safetensors_diffusers_folders},
    {"safetensors_rejects_malformed", test_safetensors_rejects_malformed},
    {"safetensors_index_errors", test_safetensors_index_errors},
    {NULL, NULL},
};
