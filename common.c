// common.c: one-line errors, checked C library calls, whole-file reads, atomic output, a clock.
// See common.h for the conventions.
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void fatal(const char* fmt, ...) {
    fflush(stdout);
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

int set_error(char* err, const char* fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, ERR_MAX, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void* xmalloc(size_t bytes) {
    void* p = malloc(bytes ? bytes : 1);
    if (!p) fatal("out of memory allocating %zu bytes", bytes);
    return p;
}

void* xcalloc(size_t count, size_t size) {
    void* p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fatal("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void* xrealloc(void* p, size_t bytes) {
    void* q = realloc(p, bytes ? bytes : 1);
    if (!q) fatal("out of memory reallocating %zu bytes", bytes);
    return q;
}

void strbuf_append(StrBuf* b, const char* s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    if (n) memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

void strbuf_cat(StrBuf* b, const char* s) { strbuf_append(b, s, strlen(s)); }

void strbuf_printf(StrBuf* b, const char* fmt, ...) {
    for (;;) { // format into the free space; when it does not fit, grow and format again
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) fatal("strbuf_printf: cannot format \"%s\"", fmt);
        if (b->s && (size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        b->cap = (b->cap + (size_t)n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
}

char* xstrdup(const char* s) {
    size_t n = strlen(s) + 1;
    char* d = xmalloc(n);
    memcpy(d, s, n);
    return d;
}

FILE* xfopen(const char* path, const char* mode) {
    FILE* f = fopen(path, mode);
    if (!f) fatal("%s: %s", path, strerror(errno));
    return f;
}

void xfread(void* dst, size_t size, size_t count, FILE* f, const char* path) {
    size_t got = fread(dst, size, count, f);
    if (got != count) {
        if (feof(f)) fatal("%s: unexpected end of file (wanted %zu items, got %zu)", path, count, got);
        fatal("%s: read error: %s", path, strerror(errno));
    }
}

void xfwrite(const void* src, size_t size, size_t count, FILE* f, const char* path) {
    if (fwrite(src, size, count, f) != count) fatal("%s: write error: %s", path, strerror(errno));
}

void xfclose(FILE* f, const char* path) {
    if (fclose(f) != 0) fatal("%s: close failed: %s", path, strerror(errno));
}

int read_file(const char* path, uint8_t** data, size_t* size, char* err) {
    *data = NULL;
    *size = 0;
    FILE* f = fopen(path, "rb");
    if (!f) return set_error(err, "%s: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return set_error(err, "%s: cannot seek: %s", path, strerror(errno));
    }
    long len = ftell(f);
    if (len < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return set_error(err, "%s: cannot determine file size", path);
    }
    uint8_t* buf = malloc((size_t)len + 1);
    if (!buf) {
        fclose(f);
        return set_error(err, "%s: out of memory reading %ld bytes", path, len);
    }
    size_t got = fread(buf, 1, (size_t)len, f);
    fclose(f);
    if (got != (size_t)len) {
        free(buf);
        return set_error(err, "%s: read %zu of %ld bytes", path, got, len);
    }
    buf[len] = 0;
    *data = buf;
    *size = (size_t)len;
    return 0;
}

int read_lines(const char* path, char*** out, int* count, char* err) {
    uint8_t* text;
    size_t size;
    if (read_file(path, &text, &size, err) != 0) return -1;
    int cap = 16, n = 0;
    char** lines = xmalloc(sizeof(char*) * cap);
    char* save = NULL;
    for (char* line = strtok_r((char*)text, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save)) {
        while (*line == ' ' || *line == '\t') line++;
        if (!*line || *line == '#') continue;
        if (n == cap) lines = xrealloc(lines, sizeof(char*) * (cap *= 2));
        lines[n++] = xstrdup(line);
    }
    free(text);
    *out = lines;
    *count = n;
    return 0;
}

int out_open(OutFile* o, const char* path, char* err) {
    memset(o, 0, sizeof(*o));
    if (strlen(path) >= sizeof(o->path)) return set_error(err, "%s: path too long", path);
    strcpy(o->path, path);
    snprintf(o->tmp_path, sizeof(o->tmp_path), "%s.tmp", path);
    o->f = fopen(o->tmp_path, "wb");
    if (!o->f) return set_error(err, "%s: %s", o->tmp_path, strerror(errno));
    return 0;
}

int out_write(OutFile* o, const void* data, size_t bytes, char* err) {
    if (bytes && fwrite(data, 1, bytes, o->f) != bytes) {
        int e = errno;
        out_abort(o);
        return set_error(err, "%s: write error: %s", o->path, strerror(e));
    }
    return 0;
}

int out_commit(OutFile* o, char* err) {
    if (fflush(o->f) != 0) {
        int e = errno;
        out_abort(o);
        return set_error(err, "%s: write error: %s", o->path, strerror(e));
    }
    int rc = fclose(o->f);
    o->f = NULL;
    if (rc != 0) {
        int e = errno;
        remove(o->tmp_path);
        return set_error(err, "%s: close failed: %s", o->path, strerror(e));
    }
    if (rename(o->tmp_path, o->path) != 0) {
        int e = errno;
        remove(o->tmp_path);
        return set_error(err, "%s: cannot rename temporary file: %s", o->path, strerror(e));
    }
    return 0;
}

void out_abort(OutFile* o) {
    if (o->f) fclose(o->f);
    o->f = NULL;
    remove(o->tmp_path);
}

int write_file_atomic(const char* path, const void* data, size_t bytes, char* err) {
    OutFile o;
    if (out_open(&o, path, err) != 0) return -1;
    if (out_write(&o, data, bytes, err) != 0) return -1;
    return out_commit(&o, err);
}

double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

uint32_t load_be32(const uint8_t* p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

void store_be32(uint8_t* p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

uint64_t load_le64(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

void store_le64(uint8_t* p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
