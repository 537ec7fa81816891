// tests/check.h: the test harness shared by every tests/test_*.c file.
//
// A test is a `void test_xxx(void)` function listed in tests/run_tests.c. Inside it, each check
// prints one line and, when it fails, marks the running test failed; a test can also declare
// itself skipped (with a reason) when what it needs is absent, e.g. a CUDA device. The runner
// prints a line per test and ends with `N passed, N failed`; its exit status is non-zero when
// anything failed. Tests never need Python: goldens are committed under tests/golden/.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "../ops.h" // Backend, DType
#include "../safetensors.h"

// Compares n floats: element i passes when |got - want| <= atol + rtol * |want| (NaN must meet
// NaN, infinities must match exactly). Prints the label, the largest absolute and relative
// errors, the worst element with both values, and how much of the tolerance the worst element
// used, then `ok` or `FAIL` (and the first few mismatches on failure). Returns 1 when it passes.
int check_close(const char* label, const float* got, const float* want, size_t n, float atol, float rtol);

// Bit-for-bit comparison of n bytes (RNG streams, decoded images, round trips).
int check_bytes_equal(const char* label, const void* got, const void* want, size_t n);

// A named condition: prints `label ... ok` or `label ... FAIL`.
int check_true(int condition, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// Marks the running test skipped with a reason printed as `skipped (<reason>)`. A skipped test
// counts neither as passed nor failed, and is listed in the summary.
void test_skip(const char* reason);
// 1 when CUDA comparisons can run here; otherwise marks the test skipped and returns 0.
int test_require_cuda(void);

// Path of a committed golden file: tests/golden/<name> (SDXL_GOLDEN_DIR overrides the folder).
const char* golden_path(const char* name);
// The sdxl binary the CLI tests run: $SDXL_BIN, else ./sdxl (make debug runs them on ./sdxl_debug,
// the sanitized build).
const char* sdxl_bin(void);
// The temporary files out_open leaves beside path ("<name>.tmp.XXXXXX" in its folder): how many
// there are now. A finished or aborted write leaves 0.
int temp_files_beside(const char* path);

// A string as a short printable label for check lines: \n, \t and other control characters
// escaped, cut after 48 bytes (never inside a UTF-8 character) with "...". One static buffer:
// use it once per call.
const char* shown(const char* s);
// Opens a golden safetensors file; a missing or bad file fails the test with the hint to
// regenerate it, and returns 0.
int golden_open(SafeTensors* st, const char* name);
// Reads tensor `name` of a golden file as f32 into a fresh malloc'd array (and its element count).
// NULL (and a failed check) when it is missing.
float* golden_f32(const SafeTensors* st, const char* name, size_t* count);
// Shape of a golden tensor (its rank, dims into shape[0..rank)), or -1 when missing.
int golden_shape(const SafeTensors* st, const char* name, int64_t* shape);

// Fresh pseudo-random test data (not the torch RNG): uniform in [lo, hi), deterministic per seed.
void fill_uniform(float* x, size_t n, uint32_t seed, float lo, float hi);

// Runs on the current backend: copy host data to backend memory and back.
float* to_backend(const float* host, size_t n); // device_malloc + copy_to_device
float* from_backend(const float* dev, size_t n); // fresh host array
void backend_free_all(void);                      // frees every to_backend/backend_alloc buffer
float* backend_alloc(size_t n);                   // uninitialised backend buffer, freed by backend_free_all

// Op tests run on a chosen backend and go back to the runner's one after (freeing their buffers).
void use_backend(Backend b);
void restore_backend(void);
// A fresh host array of n values uniform in [lo, hi) (fill_uniform).
float* random_array(size_t n, uint32_t seed, float lo, float hi);
// Storage of dtype dt on the current backend: host f32 values in, host f32 values out.
void* backend_alloc_dt(size_t n, DType dt);                    // freed by backend_free_all
void* to_backend_dt(const float* host, size_t n, DType dt);    // rounded to dt; NULL for NULL
float* fetch_dt(const void* dev, size_t n, DType dt);          // widened into a fresh host array
// n host values rounded to dt and back (the values a dt tensor can hold); a copy for F32.
float* rounded(const float* x, size_t n, DType dt);
// got (an op run with dt) must equal want_f32 (the f32 op on the rounded inputs) rounded to dt,
// bit for bit (the 16-bit contract of ops.h); frees got and want_f32.
void expect_rounded(const char* label, float* got, float* want_f32, size_t n, DType dt);

// ---- config-file tests
// A fresh empty folder under $TMPDIR (or /tmp) named sdxl_<tag>_XXXXXX, into out; 0 on failure
// (the test is failed). test_temp_dir_remove deletes it with everything in it.
int test_temp_dir(char* out, size_t cap, const char* tag);
void test_temp_dir_remove(const char* dir); // with the folders in it
// Copies the folder src (files and sub-folders) to dst, creating it. Returns 1, or 0 (test failed).
int copy_tree(const char* src, const char* dst);
// Copies the JSON file src to dst with one member changed: `key` (a top-level member, or
// "outer.key" for a member of the object "outer") set to the JSON text `value`, added when
// absent, removed when value is NULL. The rest of the file is copied byte for byte. Returns 1, or
// 0 (test failed) when src is unreadable or has no such object.
int json_file_edit(const char* src, const char* dst, const char* key, const char* value);
// A config reader's result: it must have failed (rc != 0) with one line that names `path` and
// `key` (as it appears in the message, quoted). Prints the message. Returns 1 when so.
int expect_config_error(int rc, const char* err, const char* path, const char* key, const char* what);

// Copies the safetensors file src to dst with, where given, the __metadata__ value meta_key set
// to meta_value (added when absent) and the tensor named replace->name replaced by *replace (its
// dtype, shape and data). Returns 1, or 0 (test failed).
int safetensors_copy_edited(const char* src, const char* dst, const char* meta_key, const char* meta_value,
                            const SafeTensorOut* replace);

// A config reader under test: reads the file at path; 0, or -1 with err filled.
typedef int (*ConfigReader)(const char* path, char* err);
// Writes src to dst with `key` set, in turn, to each value an integer key must refuse, put in
// `pattern` ("%s" for the key itself, "[1, 2, %s]" for a list entry): 1000000000, -16,
// 4294967312 (16 past 2^32), 99999999999999999999 (past int64), "16" (a string), 1e9 and 16.0
// (not integer literals), true, and also 0 unless zero_ok. Each must make read fail with one line
// naming dst and the key.
void expect_ints_refused(ConfigReader read, const char* src, const char* dst, const char* key, const char* pattern,
                         int zero_ok);
// The same with one value; returns 1 when refused as described.
int expect_value_refused(ConfigReader read, const char* src, const char* dst, const char* key, const char* value);

// Each tests/test_<area>.c exports one NULL-terminated table of its tests, listed in run_tests.c.
typedef struct {
    const char* name;
    void (*fn)(void);
} TestCase;
