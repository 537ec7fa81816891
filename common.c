// common.c: one-line errors, checked C library calls, whole-file reads, atomic output, a clock.
// See common.h for the conventions.
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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
    // only regular files: a FIFO would block, a device never ends, a folder reads as garbage
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        int e = errno;
        fclose(f);
        return set_error(err, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        fclose(f);
        return set_error(err, "%s: %s, not a regular file", path, S_ISDIR(sb.st_mode) ? "a folder" : "a device, FIFO or socket");
    }
    if ((uint64_t)sb.st_size > FILE_READ_MAX_BYTES) {
        fclose(f);
        return set_error(err, "%s: %.2f GiB is above the %d GiB limit for a file read whole", path,
                         (double)sb.st_size / (1 << 30), (int)(FILE_READ_MAX_BYTES >> 30));
    }
    size_t len = (size_t)sb.st_size;
    uint8_t* buf = malloc(len + 1);
    if (!buf) {
        fclose(f);
        return set_error(err, "%s: out of memory reading %zu bytes", path, len);
    }
    size_t got = fread(buf, 1, len, f);
    fclose(f);
    if (got != len) {
        free(buf);
        return set_error(err, "%s: read %zu of %zu bytes (the file changed while it was read?)", path, got, len);
    }
    buf[len] = 0;
    *data = buf;
    *size = len;
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

void free_lines(char** lines, int count) {
    for (int i = 0; lines && i < count; i++) free(lines[i]);
    free(lines);
}

// The folder part of path ("." when there is none), into dir.
static void parent_folder(const char* path, char* dir, size_t cap) {
    snprintf(dir, cap, "%s", path);
    char* slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, cap, ".");
    else if (slash == dir) dir[1] = 0; // "/x" -> "/"
    else *slash = 0;
}

int output_file_check(const char* path, char* err) {
    if (!path[0]) return set_error(err, "an output path is empty");
    if (strlen(path) >= sizeof(((OutFile*)0)->path)) return set_error(err, "%s: path too long", path);
    if (path[strlen(path) - 1] == '/') return set_error(err, "%s: names a folder, not a file", path);
    struct stat sb;
    if (lstat(path, &sb) == 0) {
        // rename() would replace a link, a device node or a FIFO with a regular file (as root,
        // /dev/full itself): only a regular file, or nothing, may stand where an output goes
        if (S_ISLNK(sb.st_mode)) return set_error(err, "%s: is a symbolic link; refusing to replace it", path);
        if (S_ISDIR(sb.st_mode)) return set_error(err, "%s: is a folder; name a file", path);
        if (!S_ISREG(sb.st_mode)) return set_error(err, "%s: is not a regular file (a device, FIFO or socket); refusing to replace it", path);
    } else if (errno != ENOENT) {
        return set_error(err, "%s: %s", path, strerror(errno));
    }
    char dir[4096];
    parent_folder(path, dir, sizeof(dir));
    if (!path_is_dir(dir)) return set_error(err, "%s: folder '%s' does not exist", path, dir);
    if (access(dir, W_OK) != 0) return set_error(err, "%s: folder '%s' is not writable: %s", path, dir, strerror(errno));
    return 0;
}

int output_folder_check(const char* path, char* err) {
    if (!path[0]) return set_error(err, "an output folder is empty");
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) return set_error(err, "%s: exists and is not a folder", path);
        if (access(path, W_OK) != 0) return set_error(err, "%s: folder is not writable: %s", path, strerror(errno));
        return 0;
    }
    if (errno != ENOENT) return set_error(err, "%s: %s", path, strerror(errno));
    char dir[4096], trimmed[4096];
    snprintf(trimmed, sizeof(trimmed), "%s", path);
    for (size_t n = strlen(trimmed); n > 1 && trimmed[n - 1] == '/'; n--) trimmed[n - 1] = 0;
    parent_folder(trimmed, dir, sizeof(dir));
    if (!path_is_dir(dir)) return set_error(err, "%s: cannot be created: folder '%s' does not exist", path, dir);
    if (access(dir, W_OK) != 0) return set_error(err, "%s: cannot be created: folder '%s' is not writable", path, dir);
    return 0;
}

int out_open(OutFile* o, const char* path, char* err) {
    memset(o, 0, sizeof(*o));
    if (output_file_check(path, err) != 0) return -1;
    strcpy(o->path, path);
    // a fresh name beside the target (mkstemp: O_EXCL, so no link planted at a predictable
    // "<path>.tmp" is followed, and two writers never share one), renamed onto path at the end
    snprintf(o->tmp_path, sizeof(o->tmp_path), "%s.tmp.XXXXXX", path);
    int fd = mkstemp(o->tmp_path);
    if (fd < 0) return set_error(err, "%s: cannot create the file: %s", path, strerror(errno));
    mode_t mask = umask(0); // mkstemp makes 0600; give the file the mode fopen would have
    umask(mask);
    if (fchmod(fd, 0666 & ~mask) != 0 || !(o->f = fdopen(fd, "wb"))) {
        int e = errno;
        close(fd);
        remove(o->tmp_path);
        return set_error(err, "%s: cannot create the file: %s", path, strerror(e));
    }
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

// ----------------------------------------------------------------------------
// SHA-256 (FIPS 180-4 §6.2)

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr32(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(Sha256* s, const uint8_t* p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) w[i] = load_be32(p + 4 * i);
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr32(w[i - 15], 7) ^ rotr32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr32(w[i - 2], 17) ^ rotr32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (rotr32(e, 6) ^ rotr32(e, 11) ^ rotr32(e, 25)) + ((e & f) ^ (~e & g)) + sha256_k[i] + w[i];
        uint32_t t2 = (rotr32(a, 2) ^ rotr32(a, 13) ^ rotr32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d, s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

void sha256_init(Sha256* s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof(h0));
    s->used = 0;
    s->length = 0;
}

void sha256_update(Sha256* s, const void* data, size_t n) {
    const uint8_t* p = data;
    s->length += n;
    while (n > 0) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->block + s->used, p, take);
        s->used += take;
        p += take;
        n -= take;
        if (s->used == 64) {
            sha256_block(s, s->block);
            s->used = 0;
        }
    }
}

void sha256_final(Sha256* s, uint8_t digest[32]) {
    uint64_t bits = s->length * 8;
    uint8_t pad = 0x80, zero = 0, len[8];
    sha256_update(s, &pad, 1);
    while (s->used != 56) sha256_update(s, &zero, 1);
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i)); // big-endian bit count
    sha256_update(s, len, 8);
    for (int i = 0; i < 8; i++) store_be32(digest + 4 * i, s->h[i]);
}

void sha256_hex(const uint8_t digest[32], char hex[65]) {
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
}

// ----------------------------------------------------------------------------
// Paths

int path_is_dir(const char* path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int path_is_file(const char* path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

int make_dir(const char* path, char* err) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST) return set_error(err, "%s: %s", path, strerror(errno));
    if (!path_is_dir(path)) return set_error(err, "%s: exists and is not a folder", path);
    return 0;
}

int make_dirs(const char* path, char* err) {
    char partial[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(partial)) return set_error(err, "%s: bad folder name", path);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0') continue;
        memcpy(partial, path, i);
        partial[i] = '\0';
        if (make_dir(partial, err) != 0) return -1;
    }
    return 0;
}

int make_parent_dirs(const char* path, char* err) {
    char dir[4096];
    parent_folder(path, dir, sizeof(dir));
    return strcmp(dir, ".") == 0 || strcmp(dir, "/") == 0 ? 0 : make_dirs(dir, err);
}
