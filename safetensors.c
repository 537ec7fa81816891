// safetensors.c: safetensors reader/writer and diffusers folders. See safetensors.h.
#define _POSIX_C_SOURCE 200809L
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

// ----------------------------------------------------------------------------
// Reading

// Maps a whole file read-only. Falls back to reading it when mmap is not possible.
static int map_file(const char* path, uint8_t** base, size_t* size, int* mapped, char* err) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return set_error(err, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return set_error(err, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return set_error(err, "%s: not a regular file", path);
    }
    *size = (size_t)sb.st_size;
    *mapped = 0;
    if (*size > 0) {
        void* p = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            close(fd);
            *base = p;
            *mapped = 1;
            return 0;
        }
    }
    close(fd);
    return read_file(path, base, size, err);
}

static void file_release(SafeTensorsFile* f) {
    if (f->base) {
        if (f->mapped) munmap(f->base, f->size);
        else free(f->base);
    }
    json_free(&f->header);
    free(f->path);
    memset(f, 0, sizeof(*f));
}

static int compare_tensor_names(const void* a, const void* b) {
    return strcmp(((const SafeTensor*)a)->name, ((const SafeTensor*)b)->name);
}

static const SafeTensor* g_sort_tensors; // for sorting an index by offset
static int compare_offsets(const void* a, const void* b) {
    const SafeTensor* x = &g_sort_tensors[*(const int*)a];
    const SafeTensor* y = &g_sort_tensors[*(const int*)b];
    if (x->data != y->data) return x->data < y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

// Reads a JSON array of non-negative integers into out (at most max values).
static int read_int_array(const JsonValue* v, int64_t* out, int max, int* count) {
    if (!v || v->type != JSON_ARRAY || (int)v->length > max) return -1;
    for (size_t i = 0; i < v->length; i++) {
        const JsonValue* x = &v->items[i];
        if (x->type != JSON_NUMBER || !x->is_integer || x->integer < 0) return -1;
        out[i] = x->integer;
    }
    *count = (int)v->length;
    return 0;
}

// Parses and validates the header of file index `fi` of st, appending its tensors to st->tensors.
static int parse_file(SafeTensors* st, int fi, char* err) {
    SafeTensorsFile* f = &st->files[fi];
    const char* path = f->path;
    // A safetensors file starts with the header's length (8 bytes, little-endian), then the
    // header, a JSON object. Any other file (text, a PNG, a pickle .ckpt) fails one of the first
    // checks, and is called what it is: not a safetensors file.
    if (f->size < 8) return set_error(err, "%s: not a safetensors file (%zu bytes, too small for a header)", path, f->size);
    uint64_t header_len = load_le64(f->base);
    if (header_len > f->size - 8 || header_len < 2 || f->base[8] != '{')
        return set_error(err, "%s: not a safetensors file (it does not start with a header length and a JSON object)", path);
    if (header_len > SAFETENSORS_MAX_HEADER)
        return set_error(err, "%s: header length %llu is above the 100 MB limit", path, (unsigned long long)header_len);
    char jerr[ERR_MAX];
    if (json_parse(&f->header, (const char*)f->base + 8, header_len, jerr) != 0)
        return set_error(err, "%s: invalid JSON header: %s", path, jerr);
    const JsonValue* root = &f->header.root;
    if (root->type != JSON_OBJECT) return set_error(err, "%s: header is not a JSON object", path);

    const uint8_t* data = f->base + 8 + header_len;
    size_t data_size = f->size - 8 - header_len;
    int first_new = st->count;
    st->tensors = xrealloc(st->tensors, sizeof(SafeTensor) * (st->count + root->length + 1));
    for (size_t m = 0; m < root->length; m++) {
        const char* name = root->keys[m];
        const JsonValue* info = &root->items[m];
        if (strcmp(name, "__metadata__") == 0) {
            if (info->type != JSON_OBJECT) return set_error(err, "%s: __metadata__ is not an object", path);
            for (size_t k = 0; k < info->length; k++)
                if (info->items[k].type != JSON_STRING)
                    return set_error(err, "%s: __metadata__ value '%s' is not a string", path, info->keys[k]);
            if (fi == 0) {
                st->meta_keys = info->keys;
                st->meta_count = (int)info->length;
                st->meta_values = xmalloc(sizeof(char*) * (info->length + 1));
                for (size_t k = 0; k < info->length; k++) st->meta_values[k] = info->items[k].string;
            }
            continue;
        }
        if (info->type != JSON_OBJECT) return set_error(err, "%s: entry '%s' is not an object", path, name);
        const char* dtype_str = json_get_string(info, "dtype");
        if (!dtype_str) return set_error(err, "%s: tensor '%s' has no dtype", path, name);
        int dtype = dtype_from_name(dtype_str);
        if (dtype < 0) return set_error(err, "%s: tensor '%s' has unsupported dtype '%s'", path, name, dtype_str);
        SafeTensor* t = &st->tensors[st->count];
        memset(t, 0, sizeof(*t));
        t->name = name;
        t->dtype = (DType)dtype;
        t->file = fi;
        if (read_int_array(json_get(info, "shape"), t->shape, SAFETENSORS_MAX_RANK, &t->rank) != 0)
            return set_error(err, "%s: tensor '%s' has a bad shape (an array of at most %d non-negative integers)", path,
                             name, SAFETENSORS_MAX_RANK);
        int64_t offsets[2];
        int n_offsets;
        if (read_int_array(json_get(info, "data_offsets"), offsets, 2, &n_offsets) != 0 || n_offsets != 2)
            return set_error(err, "%s: tensor '%s' has bad data_offsets (two non-negative integers)", path, name);
        if (offsets[0] > offsets[1])
            return set_error(err, "%s: tensor '%s' has data_offsets [%lld, %lld] with begin after end", path, name,
                             (long long)offsets[0], (long long)offsets[1]);
        if ((uint64_t)offsets[1] > data_size)
            return set_error(err, "%s: tensor '%s' data_offsets end %lld is past the data section (%zu bytes)", path,
                             name, (long long)offsets[1], data_size);
        // numel * dtype size, refusing overflow
        uint64_t bytes = dtype_size(t->dtype);
        for (int d = 0; d < t->rank; d++) {
            uint64_t dim = (uint64_t)t->shape[d];
            if (dim != 0 && bytes > UINT64_MAX / dim)
                return set_error(err, "%s: tensor '%s' shape overflows", path, name);
            bytes *= dim;
        }
        if (bytes != (uint64_t)(offsets[1] - offsets[0])) {
            char sb[256];
            return set_error(err, "%s: tensor '%s' is %lld bytes in the file, but %s %s needs %llu", path, name,
                             (long long)(offsets[1] - offsets[0]), dtype_str,
                             shape_string(sb, sizeof(sb), t->rank, t->shape), (unsigned long long)bytes);
        }
        t->data = data + offsets[0];
        t->nbytes = (size_t)bytes;
        st->count++;
    }
    // The tensors of this file must tile its data section: sorted by offset, each starts where the
    // previous one ended, and the last ends at the end of the file.
    int n = st->count - first_new;
    int* order = xmalloc(sizeof(int) * (n + 1));
    for (int i = 0; i < n; i++) order[i] = first_new + i;
    g_sort_tensors = st->tensors;
    qsort(order, n, sizeof(int), compare_offsets);
    const uint8_t* expect = data;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const SafeTensor* t = &st->tensors[order[i]];
        if (t->data < expect)
            rc = set_error(err, "%s: tensor '%s' overlaps the tensor before it in the data section", path, t->name);
        else if (t->data > expect)
            rc = set_error(err, "%s: %zu unused bytes in the data section before tensor '%s'", path,
                           (size_t)(t->data - expect), t->name);
        expect = t->data + t->nbytes;
    }
    if (rc == 0 && expect != data + data_size)
        rc = set_error(err, "%s: %zu unused bytes at the end of the data section", path, (size_t)(data + data_size - expect));
    free(order);
    return rc;
}

// Sorts the tensor table by name and rejects duplicates (within or across files).
static int finish_open(SafeTensors* st, char* err) {
    qsort(st->tensors, st->count, sizeof(SafeTensor), compare_tensor_names);
    for (int i = 1; i < st->count; i++)
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0)
            return set_error(err, "%s: tensor '%s' appears twice", st->path, st->tensors[i].name);
    return 0;
}

static int add_file(SafeTensors* st, const char* path, uint8_t* base, size_t size, int mapped) {
    st->files = xrealloc(st->files, sizeof(SafeTensorsFile) * (st->file_count + 1));
    SafeTensorsFile* f = &st->files[st->file_count];
    memset(f, 0, sizeof(*f));
    f->path = xstrdup(path);
    f->base = base;
    f->size = size;
    f->mapped = mapped;
    return st->file_count++;
}

static void init(SafeTensors* st, const char* path) {
    memset(st, 0, sizeof(*st));
    snprintf(st->path, sizeof(st->path), "%s", path);
}

int safetensors_open_buffer(SafeTensors* st, const char* name, uint8_t* buf, size_t size, char* err) {
    init(st, name);
    int fi = add_file(st, name, buf, size, 0);
    if (parse_file(st, fi, err) != 0 || finish_open(st, err) != 0) {
        safetensors_close(st);
        return -1;
    }
    return 0;
}

int safetensors_open(SafeTensors* st, const char* path, char* err) {
    init(st, path);
    uint8_t* base;
    size_t size;
    int mapped;
    if (map_file(path, &base, &size, &mapped, err) != 0) return -1;
    int fi = add_file(st, path, base, size, mapped);
    if (parse_file(st, fi, err) != 0 || finish_open(st, err) != 0) {
        safetensors_close(st);
        return -1;
    }
    return 0;
}

int json_read_file(JsonDoc* doc, const char* path, char* err) {
    uint8_t* text;
    size_t size;
    if (read_file(path, &text, &size, err) != 0) return -1;
    char jerr[ERR_MAX];
    int rc = json_parse(doc, (const char*)text, size, jerr);
    free(text);
    if (rc != 0) return set_error(err, "%s: invalid JSON: %s", path, jerr);
    return 0;
}

int safetensors_open_index(SafeTensors* st, const char* index_path, char* err) {
    init(st, index_path);
    JsonDoc index;
    if (json_read_file(&index, index_path, err) != 0) return -1;
    const JsonValue* map = json_get(&index.root, "weight_map");
    if (!map || map->type != JSON_OBJECT) {
        json_free(&index);
        return set_error(err, "%s: no \"weight_map\" object", index_path);
    }
    // the shards live beside the index
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", index_path);
    char* slash = strrchr(dir, '/');
    if (slash) slash[1] = 0;
    else dir[0] = 0;
    int rc = 0;
    for (size_t i = 0; i < map->length && rc == 0; i++) {
        const JsonValue* shard = &map->items[i];
        if (shard->type != JSON_STRING) {
            rc = set_error(err, "%s: weight_map entry '%s' is not a file name", index_path, map->keys[i]);
            break;
        }
        if (strchr(shard->string, '/')) {
            rc = set_error(err, "%s: weight_map file '%s' is not in the index's folder", index_path, shard->string);
            break;
        }
        char shard_path[4096 + 256];
        snprintf(shard_path, sizeof(shard_path), "%s%s", dir, shard->string);
        int known = 0;
        for (int f = 0; f < st->file_count; f++) known |= strcmp(st->files[f].path, shard_path) == 0;
        if (known) continue;
        uint8_t* base;
        size_t size;
        int mapped;
        if (map_file(shard_path, &base, &size, &mapped, err) != 0) { rc = -1; break; }
        int fi = add_file(st, shard_path, base, size, mapped);
        rc = parse_file(st, fi, err);
    }
    if (rc == 0) rc = finish_open(st, err);
    // every weight_map entry must be found in the shard it names
    for (size_t i = 0; i < map->length && rc == 0; i++) {
        const SafeTensor* t = safetensors_find(st, map->keys[i]);
        const char* want = map->items[i].string;
        const char* have = t ? strrchr(st->files[t->file].path, '/') : NULL;
        have = have ? have + 1 : (t ? st->files[t->file].path : NULL);
        if (!t) rc = set_error(err, "%s: tensor '%s' is not in %s", index_path, map->keys[i], want);
        else if (strcmp(have, want) != 0)
            rc = set_error(err, "%s: tensor '%s' is in %s, the index says %s", index_path, map->keys[i], have, want);
    }
    json_free(&index);
    if (rc != 0) safetensors_close(st);
    return rc;
}

static int file_exists(const char* path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

int safetensors_open_dir(SafeTensors* st, const char* dir, const char* stem, const char* variant, char* err) {
    char single[4096], index[4096];
    const char* dot = variant ? "." : "";
    const char* var = variant ? variant : "";
    snprintf(single, sizeof(single), "%s/%s%s%s.safetensors", dir, stem, dot, var);
    snprintf(index, sizeof(index), "%s/%s%s%s.safetensors.index.json", dir, stem, dot, var);
    if (file_exists(single)) return safetensors_open(st, single, err);
    if (file_exists(index)) return safetensors_open_index(st, index, err);
    return set_error(err, "%s: neither %s%s%s.safetensors nor its .index.json is there", dir, stem, dot, var);
}

void safetensors_close(SafeTensors* st) {
    for (int i = 0; i < st->file_count; i++) file_release(&st->files[i]);
    free(st->files);
    free(st->tensors);
    free(st->meta_values);
    memset(st, 0, sizeof(*st));
}

const SafeTensor* safetensors_find(const SafeTensors* st, const char* name) {
    int lo = 0, hi = st->count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(st->tensors[mid].name, name);
        if (c == 0) return &st->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

const char* safetensors_metadata(const SafeTensors* st, const char* key) {
    for (int i = 0; i < st->meta_count; i++)
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_values[i];
    return NULL;
}

size_t safetensor_numel(const SafeTensor* t) {
    size_t n = 1;
    for (int i = 0; i < t->rank; i++) n *= (size_t)t->shape[i];
    return n;
}

const char* shape_string(char* buf, size_t cap, int rank, const int64_t* shape) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < rank && n < cap; i++) n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

int safetensors_check_f32(const SafeTensors* st, const char* name, int rank, const int64_t* shape, char* err) {
    const SafeTensor* t = safetensors_find(st, name);
    if (!t) return set_error(err, "%s: missing tensor '%s'", st->path, name);
    const char* file = st->files[t->file].path;
    int same = t->rank == rank;
    for (int i = 0; same && i < rank; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char have[256], want[256];
        return set_error(err, "%s: tensor '%s' has shape %s, expected %s", file, name,
                         shape_string(have, sizeof(have), t->rank, t->shape), shape_string(want, sizeof(want), rank, shape));
    }
    if (t->dtype != DT_F32 && t->dtype != DT_F16 && t->dtype != DT_BF16)
        return set_error(err, "%s: tensor '%s' has dtype %s, expected F32, F16 or BF16", file, name, dtype_name(t->dtype));
    return 0;
}

int safetensors_read_f32(const SafeTensors* st, const char* name, int rank, const int64_t* shape, float* dst,
                         char* err) {
    if (safetensors_check_f32(st, name, rank, shape, err) != 0) return -1;
    const SafeTensor* t = safetensors_find(st, name);
    convert_to_f32(dst, t->data, t->dtype, safetensor_numel(t));
    return 0;
}

// ----------------------------------------------------------------------------
// Writing

static void strbuf_append_json_string(StrBuf* b, const char* s) {
    size_t need = json_escape(NULL, 0, s);
    char* tmp = xmalloc(need + 1);
    json_escape(tmp, need + 1, s);
    strbuf_append(b, tmp, need);
    free(tmp);
}

int safetensors_write(const char* path, const SafeTensorOut* tensors, int count, const char* const* meta_keys,
                      const char* const* meta_values, int meta_count, char* err) {
    StrBuf h = {0};
    strbuf_append(&h, "{", 1);
    int first = 1;
    if (meta_count > 0) {
        strbuf_append(&h, "\"__metadata__\":{", 16);
        for (int i = 0; i < meta_count; i++) {
            if (i) strbuf_append(&h, ",", 1);
            strbuf_append_json_string(&h, meta_keys[i]);
            strbuf_append(&h, ":", 1);
            strbuf_append_json_string(&h, meta_values[i]);
        }
        strbuf_append(&h, "}", 1);
        first = 0;
    }
    uint64_t offset = 0;
    for (int i = 0; i < count; i++) {
        const SafeTensorOut* t = &tensors[i];
        uint64_t bytes = dtype_size(t->dtype);
        for (int d = 0; d < t->rank; d++) bytes *= (uint64_t)t->shape[d];
        char buf[512];
        if (!first) strbuf_append(&h, ",", 1);
        first = 0;
        strbuf_append_json_string(&h, t->name);
        int n = snprintf(buf, sizeof(buf), ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(t->dtype));
        strbuf_append(&h, buf, (size_t)n);
        for (int d = 0; d < t->rank; d++) {
            n = snprintf(buf, sizeof(buf), "%s%lld", d ? "," : "", (long long)t->shape[d]);
            strbuf_append(&h, buf, (size_t)n);
        }
        n = snprintf(buf, sizeof(buf), "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                     (unsigned long long)(offset + bytes));
        strbuf_append(&h, buf, (size_t)n);
        offset += bytes;
    }
    strbuf_append(&h, "}", 1);
    while (h.len % 8) strbuf_append(&h, " ", 1); // data section starts 8-byte aligned

    OutFile o;
    uint8_t len_bytes[8];
    store_le64(len_bytes, h.len);
    int rc = out_open(&o, path, err);
    if (rc == 0) rc = out_write(&o, len_bytes, 8, err);
    if (rc == 0) rc = out_write(&o, h.s, h.len, err);
    for (int i = 0; i < count && rc == 0; i++) {
        size_t bytes = dtype_size(tensors[i].dtype);
        for (int d = 0; d < tensors[i].rank; d++) bytes *= (size_t)tensors[i].shape[d];
        rc = out_write(&o, tensors[i].data, bytes, err);
    }
    if (rc == 0) rc = out_commit(&o, err);
    free(h.s);
    return rc;
}
