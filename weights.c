// weights.c: two-pass parameter tables, strict loading, random init, saving. See weights.h.
#include "weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ops.h"

void weights_init(Weights* w, const char* what, DType dtype) {
    if (dtype != DT_F32 && dtype != DT_F16 && dtype != DT_BF16)
        fatal("%s: parameters can be stored as F32, F16 or BF16, not %s", what, dtype_name(dtype));
    memset(w, 0, sizeof(*w));
    w->what = what;
    w->dtype = dtype;
    w->pass = 1;
}

void weights_free(Weights* w) {
    arena_free(&w->arena);
    free(w->params);
    memset(w, 0, sizeof(*w));
}

// Elements of a parameter of this shape, or 0 when a dimension is below 1 or the tensor would
// hold more than WEIGHTS_MAX_ELEMS (the model's config readers keep real shapes far below).
static size_t shape_numel(int rank, const int64_t* shape) {
    uint64_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 1 || (uint64_t)shape[i] > WEIGHTS_MAX_ELEMS / n) return 0;
        n *= (uint64_t)shape[i];
    }
    return (size_t)n;
}

void* weights_param(Weights* w, const char* name, int rank, const int64_t* shape) {
    if (rank < 1 || rank > WEIGHTS_MAX_RANK) fatal("%s: parameter '%s' has rank %d", w->what, name, rank);
    if (w->pass == 1) {
        size_t numel = shape_numel(rank, shape);
        char dims[128];
        if (numel == 0)
            fatal("%s: parameter '%s' has shape %s (every dimension must be 1 or more, the tensor at most 2^%d elements)",
                  w->what, name, shape_string(dims, sizeof(dims), rank, shape), WEIGHTS_MAX_ELEMS_LOG2);
        if (strlen(name) >= WEIGHTS_NAME_MAX) fatal("%s: parameter name too long: %s", w->what, name);
        if (w->count == w->capacity) {
            w->capacity = w->capacity ? 2 * w->capacity : 256;
            w->params = xrealloc(w->params, sizeof(Param) * w->capacity);
        }
        Param* p = &w->params[w->count++];
        memset(p, 0, sizeof(*p));
        snprintf(p->name, sizeof(p->name), "%s", name);
        p->rank = rank;
        memcpy(p->shape, shape, sizeof(int64_t) * rank);
        p->numel = numel;
        // each tensor starts on an ARENA_ALIGN boundary, like arena_alloc would place it
        size_t align = ARENA_ALIGN / dtype_size(w->dtype);
        size_t padded = (numel + align - 1) / align * align;
        if (padded > WEIGHTS_MAX_ELEMS - w->total)
            fatal("%s: the parameters pass 2^%d elements at '%s'", w->what, WEIGHTS_MAX_ELEMS_LOG2, name);
        p->offset = w->total;
        w->total += padded;
        return NULL;
    }
    // pass 2: the same calls in the same order
    if (w->cursor >= w->count || strcmp(w->params[w->cursor].name, name) != 0)
        fatal("%s: the second build pass asked for '%s', the first declared '%s' here", w->what, name,
              w->cursor < w->count ? w->params[w->cursor].name : "(nothing)");
    return w->params[w->cursor++].data;
}

void weights_allocate(Weights* w) {
    if (w->pass != 1) fatal("%s: weights_allocate called twice", w->what);
    size_t es = dtype_size(w->dtype); // total <= 2^WEIGHTS_MAX_ELEMS_LOG2, so es * total cannot overflow
    arena_init(&w->arena, w->what, es * (w->total ? w->total : 1), backend_current() == BACKEND_CUDA);
    arena_alloc(&w->arena, es * w->total, "parameters");
    for (int i = 0; i < w->count; i++) w->params[i].data = w->arena.base + es * w->params[i].offset;
    w->pass = 2;
    w->cursor = 0;
}

void weights_finish(Weights* w) {
    if (w->pass != 2 || w->cursor != w->count)
        fatal("%s: the second build pass declared %d of %d parameters", w->what, w->cursor, w->count);
}

const Param* weights_find(const Weights* w, const char* name) {
    for (int i = 0; i < w->count; i++)
        if (strcmp(w->params[i].name, name) == 0) return &w->params[i];
    return NULL;
}

// ----------------------------------------------------------------------------
// Loading

typedef struct {
    const char* prefix;
} PrefixCtx;

static int prefix_map(const char* name, ParamSource* src, void* ctx) {
    const PrefixCtx* p = ctx;
    memset(src, 0, sizeof(*src));
    snprintf(src->key, sizeof(src->key), "%s%s", p->prefix, name);
    return 0;
}

int weights_load(Weights* w, const SafeTensors* st, const char* prefix, char* err) {
    PrefixCtx ctx = {prefix};
    return weights_load_mapped(w, st, prefix_map, &ctx, err);
}

// The stored tensor's shape after the source's slicing/transposing, for the shape check.
static void source_shape(const SafeTensor* t, const ParamSource* src, int* rank, int64_t* shape) {
    *rank = t->rank;
    memcpy(shape, t->shape, sizeof(int64_t) * t->rank);
    if (src->row_end > src->row_begin) shape[0] = src->row_end - src->row_begin;
    if (src->transpose && *rank == 2) {
        int64_t tmp = shape[0];
        shape[0] = shape[1];
        shape[1] = tmp;
    }
}

// Equal shapes, allowing trailing 1s on either side ([512, 512, 1, 1] holds a [512, 512] linear).
static int shapes_match(int ra, const int64_t* a, int rb, const int64_t* b) {
    while (ra > 1 && a[ra - 1] == 1) ra--;
    while (rb > 1 && b[rb - 1] == 1) rb--;
    if (ra != rb) return 0;
    for (int i = 0; i < ra; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

// Where parameter p is in the file, checked: the tensor exists, has a float dtype, and (after the
// source's row slice or transpose) p's shape. Fills src and *t.
static int check_param(const Weights* w, const Param* p, const SafeTensors* st, KeyMap map, void* ctx, ParamSource* src,
                       const SafeTensor** t_out, char* err) {
    if (map(p->name, src, ctx) != 0)
        return set_error(err, "%s: no tensor in this format holds %s parameter '%s'", st->path, w->what, p->name);
    const SafeTensor* t = safetensors_find(st, src->key);
    if (!t) return set_error(err, "%s: missing tensor '%s'", st->path, src->key);
    const char* file = st->files[t->file].path;
    if (t->dtype != DT_F32 && t->dtype != DT_F16 && t->dtype != DT_BF16)
        return set_error(err, "%s: tensor '%s' has dtype %s, expected F32, F16 or BF16", file, src->key, dtype_name(t->dtype));
    int rank;
    int64_t shape[SAFETENSORS_MAX_RANK];
    source_shape(t, src, &rank, shape);
    int rows_ok = src->row_end <= src->row_begin || (t->rank >= 1 && src->row_end <= t->shape[0]);
    if (!rows_ok || !shapes_match(rank, shape, p->rank, p->shape)) {
        char have[256], want[256];
        return set_error(err, "%s: tensor '%s' has shape %s, expected %s%s", file, src->key,
                         shape_string(have, sizeof(have), t->rank, t->shape), shape_string(want, sizeof(want), p->rank, p->shape),
                         src->row_end > src->row_begin ? " (after taking its rows)" : "");
    }
    *t_out = t;
    return 0;
}

int weights_check_mapped(const Weights* w, const SafeTensors* st, KeyMap map, void* ctx, char* err) {
    for (int i = 0; i < w->count; i++) {
        ParamSource src;
        const SafeTensor* t;
        if (check_param(w, &w->params[i], st, map, ctx, &src, &t, err) != 0) return -1;
    }
    return 0;
}

int weights_check(const Weights* w, const SafeTensors* st, const char* prefix, char* err) {
    PrefixCtx ctx = {prefix};
    return weights_check_mapped(w, st, prefix_map, &ctx, err);
}

int weights_load_mapped(Weights* w, const SafeTensors* st, KeyMap map, void* ctx, char* err) {
    if (w->pass != 2) fatal("%s: weights_load before weights_allocate", w->what);
    size_t staging_n = 0;
    for (int i = 0; i < w->count; i++) staging_n = w->params[i].numel > staging_n ? w->params[i].numel : staging_n;
    float* staging = xmalloc(sizeof(float) * (staging_n ? staging_n : 1));
    // the parameter in its storage type (F32 needs no second buffer)
    void* stored = w->dtype == DT_F32 ? (void*)staging : xmalloc(dtype_size(w->dtype) * (staging_n ? staging_n : 1));
    float* whole = NULL; // a whole stored tensor, when the parameter is a slice or a transpose of it
    size_t whole_n = 0;
    int rc = 0;
    for (int i = 0; i < w->count && rc == 0; i++) {
        Param* p = &w->params[i];
        ParamSource src;
        const SafeTensor* t;
        if ((rc = check_param(w, p, st, map, ctx, &src, &t, err)) != 0) break;
        if (!src.transpose && src.row_end <= src.row_begin) {
            convert_to_f32(staging, t->data, t->dtype, p->numel);
        } else {
            size_t n = safetensor_numel(t);
            if (n > whole_n) {
                whole = xrealloc(whole, sizeof(float) * n);
                whole_n = n;
            }
            convert_to_f32(whole, t->data, t->dtype, n);
            size_t row_len = t->rank >= 2 ? n / (size_t)t->shape[0] : 1;
            const float* rows = whole + (size_t)src.row_begin * row_len;
            if (src.transpose) { // stored (R, C) -> parameter (C, R)
                int64_t R = t->shape[0], C = t->shape[1];
                for (int64_t r = 0; r < R; r++)
                    for (int64_t c = 0; c < C; c++) staging[c * R + r] = whole[r * C + c];
            } else {
                memcpy(staging, rows, sizeof(float) * p->numel);
            }
        }
        if (w->dtype != DT_F32) convert_from_f32(stored, w->dtype, staging, p->numel);
        copy_to_device(p->data, stored, dtype_size(w->dtype) * p->numel);
    }
    if (stored != staging) free(stored);
    free(staging);
    free(whole);
    return rc;
}

// ----------------------------------------------------------------------------
// Random init and saving

static int ends_with(const char* s, const char* suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

void weights_fill_random(Weights* w, uint64_t seed) {
    size_t max_n = 0;
    for (int i = 0; i < w->count; i++) max_n = w->params[i].numel > max_n ? w->params[i].numel : max_n;
    float* host = xmalloc(sizeof(float) * (max_n ? max_n : 1));
    void* stored = w->dtype == DT_F32 ? (void*)host : xmalloc(dtype_size(w->dtype) * (max_n ? max_n : 1));
    uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < w->count; i++) {
        Param* p = &w->params[i];
        // norm scales are named "...norm....weight" or "..._norm.weight" / "ln_..." and are 1-D
        int is_norm_scale = p->rank == 1 && ends_with(p->name, ".weight") &&
                            (strstr(p->name, "norm") != NULL || strstr(p->name, "layer_norm") != NULL);
        if (ends_with(p->name, ".bias")) {
            for (size_t j = 0; j < p->numel; j++) host[j] = 0.0f;
        } else if (is_norm_scale) {
            for (size_t j = 0; j < p->numel; j++) host[j] = 1.0f;
        } else {
            size_t fan_in = p->numel / (size_t)p->shape[0];
            float bound = 1.0f / sqrtf((float)(fan_in ? fan_in : 1));
            for (size_t j = 0; j < p->numel; j++) {
                state = state * 6364136223846793005ull + 1442695040888963407ull; // PCG's LCG step
                float u = (float)(state >> 40) * (1.0f / 16777216.0f);         // [0, 1)
                host[j] = (2.0f * u - 1.0f) * bound;
            }
        }
        if (w->dtype != DT_F32) convert_from_f32(stored, w->dtype, host, p->numel);
        copy_to_device(p->data, stored, dtype_size(w->dtype) * p->numel);
    }
    if (stored != host) free(stored);
    free(host);
}

void weights_fill_random_gaussian(Weights* w, uint64_t seed) {
    size_t max_n = 0;
    for (int i = 0; i < w->count; i++) max_n = w->params[i].numel > max_n ? w->params[i].numel : max_n;
    float* values = device_malloc(sizeof(float) * (max_n ? max_n : 1));
    float* ones = NULL; // norm scales, converted on the host (they are short)
    void* ones_stored = NULL;
    for (int i = 0; i < w->count; i++) {
        Param* p = &w->params[i];
        int is_norm_scale = p->rank == 1 && ends_with(p->name, ".weight") &&
                            (strstr(p->name, "norm") != NULL || strstr(p->name, "layer_norm") != NULL);
        if (ends_with(p->name, ".bias")) {
            device_memset_zero(p->data, dtype_size(w->dtype) * p->numel);
        } else if (is_norm_scale) {
            ones = xrealloc(ones, sizeof(float) * p->numel);
            ones_stored = xrealloc(ones_stored, dtype_size(w->dtype) * p->numel);
            for (size_t j = 0; j < p->numel; j++) ones[j] = 1.0f;
            convert_from_f32(ones_stored, w->dtype, ones, p->numel);
            copy_to_device(p->data, ones_stored, dtype_size(w->dtype) * p->numel);
        } else {
            size_t fan_in = p->numel / (size_t)p->shape[0];
            float std = 1.0f / sqrtf(3.0f * (float)(fan_in ? fan_in : 1)); // uniform(-b, b) has variance b^2 / 3
            // a fresh stream per tensor: seed, then the tensor's index as the Philox offset block
            randn_philox_forward(values, p->numel, seed, (uint64_t)i << 20, randn_philox_threads(p->numel));
            scale_forward(values, values, std, p->numel, DT_F32);
            cast_forward(p->data, w->dtype, values, DT_F32, p->numel);
        }
    }
    device_synchronize();
    device_free(values);
    free(ones);
    free(ones_stored);
}

int weights_save(const Weights* w, const char* path, const char* prefix, DType dtype, char* err) {
    SafeTensorOut* out = xcalloc((size_t)w->count + 1, sizeof(SafeTensorOut));
    char** names = xcalloc((size_t)w->count + 1, sizeof(char*));
    void** data = xcalloc((size_t)w->count + 1, sizeof(void*));
    for (int i = 0; i < w->count; i++) {
        const Param* p = &w->params[i];
        size_t len = strlen(prefix) + strlen(p->name) + 1;
        names[i] = xmalloc(len);
        snprintf(names[i], len, "%s%s", prefix, p->name);
        float* host = xmalloc(sizeof(float) * (p->numel ? p->numel : 1));
        if (w->dtype == DT_F32) {
            copy_to_host(host, p->data, sizeof(float) * p->numel);
        } else {
            uint16_t* bits = xmalloc(sizeof(uint16_t) * (p->numel ? p->numel : 1));
            copy_to_host(bits, p->data, sizeof(uint16_t) * p->numel);
            convert_to_f32(host, bits, w->dtype, p->numel);
            free(bits);
        }
        if (dtype == DT_F32) {
            data[i] = host;
        } else {
            data[i] = xmalloc(dtype_size(dtype) * p->numel);
            convert_from_f32(data[i], dtype, host, p->numel);
            free(host);
        }
        out[i].name = names[i];
        out[i].dtype = dtype;
        out[i].rank = p->rank;
        memcpy(out[i].shape, p->shape, sizeof(int64_t) * p->rank);
        out[i].data = data[i];
    }
    const char* keys[1] = {"format"};
    const char* values[1] = {"pt"}; // what transformers/diffusers expect in their files
    int rc = safetensors_write(path, out, w->count, keys, values, 1, err);
    for (int i = 0; i < w->count; i++) {
        free(names[i]);
        free(data[i]);
    }
    free(names);
    free(data);
    free(out);
    return rc;
}
