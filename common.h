// common.h: the small things every file needs.
//
//   - one-line fatal errors (`fatal`) and the checked wrappers `xmalloc`, `xfopen`, `xfread`,
//     `xfwrite`, `xfclose` that call it, in the style of llm.c's fopenCheck family but with one
//     line per error that names the user's file;
//   - recoverable errors for parsers: functions that read user input return 0 on success and -1 on
//     failure, and write a one-line message into a caller's `char err[ERR_MAX]` (`set_error`), so
//     tests can check that bad input is rejected without the process exiting;
//   - whole-file reading and atomic output (write a temporary file beside the path, check every
//     call, then rename), so a crash never leaves a half-written file under the real name, and
//     nothing but a regular file is ever replaced;
//   - a monotonic clock for progress lines and benchmarks.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define ERR_MAX 512 // bytes in an error-message buffer

// Prints "error: <message>" on one line to stderr and exits with status 1.
void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

// Fills err (ERR_MAX bytes) with a formatted message and returns -1, so parsers can write
// `return set_error(err, "%s: bad CRC in chunk %s", path, type);`.
int set_error(char* err, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// Checked C library calls; on failure they call fatal() naming the file.
void* xmalloc(size_t bytes);
void* xcalloc(size_t count, size_t size);
void* xrealloc(void* p, size_t bytes);
char* xstrdup(const char* s);

// A growable NUL-terminated string: zero-initialise, append, free(b.s) when done. s stays NULL
// until the first append.
typedef struct {
    char* s;
    size_t len, cap;
} StrBuf;
void strbuf_append(StrBuf* b, const char* s, size_t n); // n bytes of s (may hold NULs)
void strbuf_cat(StrBuf* b, const char* s);              // a NUL-terminated s
void strbuf_printf(StrBuf* b, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
FILE* xfopen(const char* path, const char* mode);
void xfread(void* dst, size_t size, size_t count, FILE* f, const char* path);
void xfwrite(const void* src, size_t size, size_t count, FILE* f, const char* path);
void xfclose(FILE* f, const char* path);

// Reads a whole file into a fresh buffer (NUL-terminated, so text can be parsed in place). Only a
// regular file of at most FILE_READ_MAX_BYTES is read (a FIFO or a device is refused, not waited
// on). Returns 0, or -1 with err filled ("path: No such file or directory").
#define FILE_READ_MAX_BYTES ((size_t)1 << 30) // 1 GiB: configs, vocabularies, metadata.jsonl, images
int read_file(const char* path, uint8_t** data, size_t* size, char* err);

// Reads a list file: one entry per line (\n, \r\n or \r), leading blanks trimmed, empty lines and
// lines starting with '#' skipped (prompts files, for generate and eval). *lines and each entry
// are malloc'd; *count may be 0. Returns 0, or -1 with err filled.
int read_lines(const char* path, char*** lines, int* count, char* err);
void free_lines(char** lines, int count); // frees what read_lines returned (NULL is fine)

// Atomic output. out_open() checks path (output_file_check), then opens a fresh temporary file
// beside it ("<path>.tmp.XXXXXX"); out_commit() flushes, closes and renames it onto path, checking
// each step; out_abort() closes and removes the temporary file. Errors name path, never the
// temporary name.
typedef struct {
    FILE* f;
    char path[4096];     // final name
    char tmp_path[4112]; // path + ".tmp.XXXXXX"
} OutFile;
// The checks an output path must pass, for callers to run before the slow work: path is absent
// or a regular file (never a link, folder, device or FIFO, which the rename would replace), and
// its folder exists and is writable. Returns 0, or -1 with err naming path.
int output_file_check(const char* path, char* err);
// The same for an output folder: it is a folder, or it is absent and its parent folder exists
// (one mkdir will create it). Returns 0, or -1 with err naming path.
int output_folder_check(const char* path, char* err);
int out_open(OutFile* o, const char* path, char* err);
int out_write(OutFile* o, const void* data, size_t bytes, char* err);
int out_commit(OutFile* o, char* err);
void out_abort(OutFile* o);

// Writes bytes to path atomically (out_open + out_write + out_commit).
int write_file_atomic(const char* path, const void* data, size_t bytes, char* err);

// Seconds on a monotonic clock.
double now_seconds(void);

// Little-endian loads and stores for file formats (safetensors headers, PNG is big-endian).
uint32_t load_be32(const uint8_t* p);
void store_be32(uint8_t* p, uint32_t v);
uint64_t load_le64(const uint8_t* p);
void store_le64(uint8_t* p, uint64_t v);

// SHA-256 (FIPS 180-4), incrementally: the trainer's cache keys (a file's content and settings).
typedef struct {
    uint32_t h[8];
    uint8_t block[64];
    size_t used;     // bytes in block
    uint64_t length; // bytes hashed so far
} Sha256;
void sha256_init(Sha256* s);
void sha256_update(Sha256* s, const void* data, size_t n);
void sha256_final(Sha256* s, uint8_t digest[32]);
// The 64 lowercase hex digits of a digest, into hex[65].
void sha256_hex(const uint8_t digest[32], char hex[65]);

// Paths.
int path_is_dir(const char* path);
int path_is_file(const char* path);               // a regular file (or a link to one)
int make_dir(const char* path, char* err);        // mkdir 0755; an existing folder is fine
int make_dirs(const char* path, char* err);       // mkdir -p
int make_parent_dirs(const char* path, char* err); // mkdir -p of the folder path is in (nothing for a bare name)
