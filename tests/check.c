// tests/check.c: comparison helpers, golden-file access and per-test bookkeeping. See check.h.
#include "check.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common.h"
#include "../ops.h"
#include "harness.h"

TestState g_test;

int check_close(const char* label, const float* got, const float* want, size_t n, float atol, float rtol) {
    double max_abs = 0.0, max_rel = 0.0, worst_share = 0.0;
    size_t worst = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        float g = got[i], w = want[i];
        int ok;
        double diff, share;
        if (isnan(w) || isnan(g)) {
            ok = isnan(w) && isnan(g);
            diff = ok ? 0.0 : INFINITY;
            share = ok ? 0.0 : INFINITY;
        } else if (isinf(w) || isinf(g)) {
            ok = g == w;
            diff = ok ? 0.0 : INFINITY;
            share = ok ? 0.0 : INFINITY;
        } else {
            diff = fabs((double)g - (double)w);
            double tol = (double)atol + (double)rtol * fabs((double)w);
            share = tol > 0.0 ? diff / tol : (diff > 0.0 ? INFINITY : 0.0);
            ok = diff <= tol;
            double rel = w != 0.0f ? diff / fabs((double)w) : (diff > 0.0 ? INFINITY : 0.0);
            if (rel > max_rel) max_rel = rel;
        }
        if (diff > max_abs) max_abs = diff;
        if (share > worst_share || i == 0) {
            worst_share = share;
            worst = i;
        }
        if (!ok) {
            if (bad < 5) printf("    mismatch [%zu] got %.9g want %.9g\n", i, g, w);
            bad++;
        }
    }
    int pass = bad == 0 && n > 0;
    printf("  %-44s max_abs %.2e  max_rel %.2e  worst[%zu] %.7g vs %.7g  (%.0f%% of tol)  %s\n", label, max_abs, max_rel,
           worst, n ? got[worst] : 0.0f, n ? want[worst] : 0.0f, 100.0 * worst_share, pass ? "ok" : "FAIL");
    if (bad) printf("    %zu of %zu elements outside atol %.1e + rtol %.1e\n", bad, n, atol, rtol);
    if (n == 0) printf("    nothing was compared\n");
    if (!pass) g_test.failed = 1;
    g_test.checks++;
    return pass;
}

int check_bytes_equal(const char* label, const void* got, const void* want, size_t n) {
    const uint8_t* g = got;
    const uint8_t* w = want;
    size_t first = n, bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (g[i] != w[i]) {
            if (first == n) first = i;
            bad++;
        }
    }
    int pass = bad == 0 && n > 0;
    if (pass) printf("  %-44s %zu bytes identical  ok\n", label, n);
    else if (n == 0) printf("  %-44s nothing was compared  FAIL\n", label);
    else printf("  %-44s %zu of %zu bytes differ, first at %zu (%u vs %u)  FAIL\n", label, bad, n, first, g[first], w[first]);
    if (!pass) g_test.failed = 1;
    g_test.checks++;
    return pass;
}

int check_true(int condition, const char* fmt, ...) {
    char label[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(label, sizeof(label), fmt, ap);
    va_end(ap);
    printf("  %-44s %s\n", label, condition ? "ok" : "FAIL");
    if (!condition) g_test.failed = 1;
    g_test.checks++;
    return condition;
}

void test_skip(const char* reason) {
    g_test.skipped = 1;
    snprintf(g_test.skip_reason, sizeof(g_test.skip_reason), "%s", reason);
}

int test_require_cuda(void) {
    if (!cuda_built()) {
        test_skip("CUDA not built; make CUDA=1");
        return 0;
    }
    if (cuda_device_count() == 0) {
        test_skip("no CUDA device");
        return 0;
    }
    return 1;
}

int temp_files_beside(const char* path) {
    char dir[4096], prefix[4200];
    snprintf(dir, sizeof(dir), "%s", path);
    char* slash = strrchr(dir, '/');
    const char* name = slash ? slash + 1 : path;
    snprintf(prefix, sizeof(prefix), "%s.tmp", name);
    if (slash) *slash = 0;
    else snprintf(dir, sizeof(dir), ".");
    DIR* d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    for (struct dirent* e; (e = readdir(d));) n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

const char* sdxl_bin(void) {
    const char* b = getenv("SDXL_BIN");
    return b && b[0] ? b : "./sdxl";
}

const char* golden_path(const char* name) {
    static char path[4096];
    const char* dir = getenv("SDXL_GOLDEN_DIR");
    snprintf(path, sizeof(path), "%s/%s", dir ? dir : "tests/golden", name);
    return path;
}

const char* shown(const char* s) {
    static char buf[96];
    size_t j = 0;
    for (size_t i = 0; s[i] && j < 48; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') j += (size_t)snprintf(buf + j, sizeof(buf) - j, "\\n");
        else if (c == '\t') j += (size_t)snprintf(buf + j, sizeof(buf) - j, "\\t");
        else if (c < 0x20 || c == 0x7F) j += (size_t)snprintf(buf + j, sizeof(buf) - j, "\\x%02x", c);
        else buf[j++] = (char)c;
    }
    while (j > 0 && ((unsigned char)buf[j - 1] & 0xC0) == 0x80) j--; // do not cut a character in two
    if (j > 0 && (unsigned char)buf[j - 1] >= 0xC0) j--;
    buf[j] = 0;
    if (strlen(s) > j) strcat(buf, "...");
    return buf;
}

int golden_open(SafeTensors* st, const char* name) {
    char err[ERR_MAX];
    if (safetensors_open(st, golden_path(name), err) != 0) {
        check_true(0, "open golden %s (%s; regenerate with scripts/make_golden_*.py)", name, err);
        return 0;
    }
    return 1;
}

float* golden_f32(const SafeTensors* st, const char* name, size_t* count) {
    const SafeTensor* t = safetensors_find(st, name);
    if (!t) {
        check_true(0, "golden tensor '%s' present in %s", name, st->path);
        return NULL;
    }
    size_t n = safetensor_numel(t);
    float* x = xmalloc(sizeof(float) * (n ? n : 1));
    convert_to_f32(x, t->data, t->dtype, n);
    if (count) *count = n;
    return x;
}

int golden_shape(const SafeTensors* st, const char* name, int64_t* shape) {
    const SafeTensor* t = safetensors_find(st, name);
    if (!t) return -1;
    for (int i = 0; i < t->rank; i++) shape[i] = t->shape[i];
    return t->rank;
}

void fill_uniform(float* x, size_t n, uint32_t seed, float lo, float hi) {
    uint64_t s = 0x9E3779B97F4A7C15ull ^ seed;
    for (size_t i = 0; i < n; i++) {
        // splitmix64: small, good enough for test data
        s += 0x9E3779B97F4A7C15ull;
        uint64_t z = s;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        x[i] = lo + (hi - lo) * (float)((z >> 40) * (1.0 / 16777216.0));
    }
}

#define MAX_BACKEND_BUFFERS 256
static void* backend_buffers[MAX_BACKEND_BUFFERS];
static int backend_buffer_count;

float* backend_alloc(size_t n) {
    if (backend_buffer_count == MAX_BACKEND_BUFFERS) fatal("tests: more than %d backend buffers in one test", MAX_BACKEND_BUFFERS);
    float* p = device_malloc(sizeof(float) * (n ? n : 1));
    backend_buffers[backend_buffer_count++] = p;
    return p;
}

float* to_backend(const float* host, size_t n) {
    float* p = backend_alloc(n);
    copy_to_device(p, host, sizeof(float) * n);
    return p;
}

float* from_backend(const float* dev, size_t n) {
    float* host = xmalloc(sizeof(float) * (n ? n : 1));
    copy_to_host(host, dev, sizeof(float) * n);
    return host;
}

void backend_free_all(void) {
    for (int i = 0; i < backend_buffer_count; i++) device_free(backend_buffers[i]);
    backend_buffer_count = 0;
}

static Backend g_saved_backend;
void use_backend(Backend b) {
    g_saved_backend = backend_current();
    backend_select(b);
}
void restore_backend(void) {
    backend_free_all(); // buffers go back to the backend that made them
    backend_select(g_saved_backend);
}

float* random_array(size_t n, uint32_t seed, float lo, float hi) {
    float* x = xmalloc(sizeof(float) * (n ? n : 1));
    fill_uniform(x, n, seed, lo, hi);
    return x;
}

void* backend_alloc_dt(size_t n, DType dt) { return backend_alloc(dt == DT_F32 ? n : (n + 1) / 2); }

void* to_backend_dt(const float* host, size_t n, DType dt) {
    if (!host) return NULL;
    if (dt == DT_F32) return to_backend(host, n);
    uint16_t* bits = xmalloc(sizeof(uint16_t) * (n ? n : 1));
    convert_from_f32(bits, dt, host, n);
    void* dev = backend_alloc_dt(n, dt);
    copy_to_device(dev, bits, sizeof(uint16_t) * n);
    free(bits);
    return dev;
}

float* fetch_dt(const void* dev, size_t n, DType dt) {
    float* out = xmalloc(sizeof(float) * (n ? n : 1));
    if (dt == DT_F32) {
        copy_to_host(out, dev, sizeof(float) * n);
        return out;
    }
    uint16_t* bits = xmalloc(sizeof(uint16_t) * (n ? n : 1));
    copy_to_host(bits, dev, sizeof(uint16_t) * n);
    convert_to_f32(out, bits, dt, n);
    free(bits);
    return out;
}

float* rounded(const float* x, size_t n, DType dt) {
    float* y = xmalloc(sizeof(float) * (n ? n : 1));
    if (dt == DT_F32) {
        memcpy(y, x, sizeof(float) * n);
        return y;
    }
    uint16_t* bits = xmalloc(sizeof(uint16_t) * (n ? n : 1));
    convert_from_f32(bits, dt, x, n);
    convert_to_f32(y, bits, dt, n);
    free(bits);
    return y;
}

void expect_rounded(const char* label, float* got, float* want_f32, size_t n, DType dt) {
    float* want = rounded(want_f32, n, dt);
    char full[160];
    snprintf(full, sizeof(full), "%s %s", dtype_name(dt), label);
    check_bytes_equal(full, got, want, sizeof(float) * n);
    free(got);
    free(want_f32);
    free(want);
}

// ----------------------------------------------------------------------------
// Config-file tests

int test_temp_dir(char* out, size_t cap, const char* tag) {
    const char* tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(out, cap, "%s/sdxl_%s_XXXXXX", tmp, tag);
    return check_true(mkdtemp(out) != NULL, "temporary folder %s", out);
}

void test_temp_dir_remove(const char* dir) {
    DIR* d = opendir(dir);
    if (!d) return;
    struct dirent* e;
    char path[4400];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (path_is_dir(path)) test_temp_dir_remove(path);
        else unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

int copy_tree(const char* src, const char* dst) {
    DIR* d = opendir(src);
    char err[ERR_MAX];
    if (!check_true(d != NULL && make_dirs(dst, err) == 0, "copy %s to %s", src, dst)) {
        if (d) closedir(d);
        return 0;
    }
    struct dirent* e;
    int ok = 1;
    while (ok && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char from[4400], to[4400];
        snprintf(from, sizeof(from), "%s/%s", src, e->d_name);
        snprintf(to, sizeof(to), "%s/%s", dst, e->d_name);
        if (path_is_dir(from)) {
            ok = copy_tree(from, to);
            continue;
        }
        uint8_t* data;
        size_t size;
        ok = read_file(from, &data, &size, err) == 0;
        if (ok) {
            ok = write_file_atomic(to, data, size, err) == 0;
            free(data);
        }
        if (!ok) check_true(0, "copy %s: %s", from, err);
    }
    closedir(d);
    return ok;
}

// The end of the JSON value starting at s[i] (strings, nesting and escapes followed; the file is
// a valid config, so no other checking is needed).
static size_t skip_json_value(const char* s, size_t i) {
    int depth = 0, in_string = 0;
    for (; s[i]; i++) {
        char c = s[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') {
                in_string = 0;
                if (depth == 0) return i + 1;
            }
        } else if (c == '"') in_string = 1;
        else if (c == '[' || c == '{') depth++;
        else if (c == ']' || c == '}') {
            if (depth == 0) return i; // the end of the enclosing object
            if (--depth == 0) return i + 1;
        } else if (depth == 0 && (c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t')) return i;
    }
    return i;
}

static size_t skip_blank(const char* s, size_t i) {
    while (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t') i++;
    return i;
}

// Finds member `key` of the object whose '{' is at s[obj]: *name_at (its opening quote), *value_at
// and *value_end. Returns 0 when absent.
static int find_member(const char* s, size_t obj, const char* key, size_t* name_at, size_t* value_at, size_t* value_end) {
    size_t i = skip_blank(s, obj + 1), klen = strlen(key);
    while (s[i] == '"') {
        size_t name_end = skip_json_value(s, i);
        size_t v = skip_blank(s, skip_blank(s, name_end) + 1); // past the ':'
        size_t e = skip_json_value(s, v);
        if (name_end - i == klen + 2 && strncmp(s + i + 1, key, klen) == 0) {
            *name_at = i;
            *value_at = v;
            *value_end = e;
            return 1;
        }
        i = skip_blank(s, e);
        if (s[i] == ',') i = skip_blank(s, i + 1);
    }
    return 0;
}

int json_file_edit(const char* src, const char* dst, const char* key, const char* value) {
    uint8_t* data;
    size_t size;
    char err[ERR_MAX];
    if (!check_true(read_file(src, &data, &size, err) == 0, "read %s", src)) return 0;
    const char* s = (const char*)data;
    size_t obj = skip_blank(s, 0), name_at, v, e;
    const char* dot = strchr(key, '.');
    char outer[128];
    if (dot) { // the member object to edit inside
        snprintf(outer, sizeof(outer), "%.*s", (int)(dot - key), key);
        key = dot + 1;
        if (!find_member(s, obj, outer, &name_at, &v, &e) || s[v] != '{') {
            free(data);
            return check_true(0, "%s has an object \"%s\"", src, outer);
        }
        obj = v;
    }
    StrBuf out = {0};
    if (find_member(s, obj, key, &name_at, &v, &e)) {
        if (value) { // replace the value
            strbuf_append(&out, s, v);
            strbuf_cat(&out, value);
            strbuf_cat(&out, s + e);
        } else { // remove the member and its comma (after it, or before it when it is the last)
            size_t after = skip_blank(s, e);
            if (s[after] == ',') {
                strbuf_append(&out, s, name_at);
                strbuf_cat(&out, s + skip_blank(s, after + 1));
            } else {
                size_t before = name_at;
                while (before > obj + 1 && s[before - 1] != ',') before--;
                strbuf_append(&out, s, before > obj + 1 ? before - 1 : name_at);
                strbuf_cat(&out, s + after);
            }
        }
    } else if (value) { // add it first
        strbuf_append(&out, s, obj + 1);
        strbuf_printf(&out, "\"%s\": %s, ", key, value);
        strbuf_cat(&out, s + obj + 1);
    } else {
        strbuf_cat(&out, s);
    }
    free(data);
    int ok = check_true(write_file_atomic(dst, out.s, out.len, err) == 0, "write %s", dst);
    free(out.s);
    return ok;
}

int expect_config_error(int rc, const char* err, const char* path, const char* key, const char* what) {
    char quoted[160];
    snprintf(quoted, sizeof(quoted), "\"%s\"", key);
    printf("    %s -> %s\n", what, rc ? err : "(accepted)");
    return check_true(rc != 0 && strstr(err, path) && strstr(err, quoted) && !strchr(err, '\n'),
                      "%s: refused in one line naming the file and \"%s\"", what, key);
}

int expect_value_refused(ConfigReader read, const char* src, const char* dst, const char* key, const char* value) {
    if (!json_file_edit(src, dst, key, value)) return 0;
    char err[ERR_MAX] = "", what[600];
    const char* dot = strchr(key, '.');
    snprintf(what, sizeof(what), "%s: %s", key, value ? value : "(removed)");
    return expect_config_error(read(dst, err), err, dst, dot ? dot + 1 : key, what);
}

void expect_ints_refused(ConfigReader read, const char* src, const char* dst, const char* key, const char* pattern,
                         int zero_ok) {
    static const char* const bad[] = {"1000000000", "-16", "4294967312", "99999999999999999999", "\"16\"", "1e9", "16.0",
                                      "true", "0"};
    int n = (int)(sizeof(bad) / sizeof(bad[0])) - (zero_ok ? 1 : 0);
    for (int i = 0; i < n; i++) {
        char value[256];
        snprintf(value, sizeof(value), pattern, bad[i]);
        expect_value_refused(read, src, dst, key, value);
    }
}

int safetensors_copy_edited(const char* src, const char* dst, const char* meta_key, const char* meta_value,
                            const SafeTensorOut* replace) {
    SafeTensors st;
    char err[ERR_MAX];
    if (!check_true(safetensors_open(&st, src, err) == 0, "open %s: %s", src, err)) return 0;
    SafeTensorOut* out = xcalloc((size_t)st.count + 1, sizeof(SafeTensorOut));
    for (int i = 0; i < st.count; i++) {
        const SafeTensor* t = &st.tensors[i];
        out[i] = (SafeTensorOut){t->name, t->dtype, t->rank, {0}, t->data};
        memcpy(out[i].shape, t->shape, sizeof(int64_t) * (size_t)t->rank);
        if (replace && strcmp(t->name, replace->name) == 0) out[i] = *replace;
    }
    const char** keys = xcalloc((size_t)st.meta_count + 2, sizeof(char*));
    const char** values = xcalloc((size_t)st.meta_count + 2, sizeof(char*));
    int n = 0, found = 0;
    for (int i = 0; i < st.meta_count; i++, n++) {
        keys[n] = st.meta_keys[i];
        found |= meta_key && strcmp(keys[n], meta_key) == 0;
        values[n] = meta_key && strcmp(keys[n], meta_key) == 0 ? meta_value : st.meta_values[i];
    }
    if (meta_key && !found) keys[n] = meta_key, values[n++] = meta_value;
    int ok = check_true(safetensors_write(dst, out, st.count, keys, values, n, err) == 0, "write %s: %s", dst, err);
    free(keys);
    free(values);
    free(out);
    safetensors_close(&st);
    return ok;
}
