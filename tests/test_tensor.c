// tests/test_tensor.c: dtype tables, scalar f16/bf16 conversions on hand-picked cases (the
// exhaustive comparison with torch is ops_cast), arenas, atomic output, and the one-line fatal
// error with exit status 1 (checked in a child process).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common.h"
#include "../tensor.h"
#include "check.h"

static void test_tensor_dtype_names_and_sizes(void) {
    for (int t = 0; t < DT_COUNT; t++)
        check_true(dtype_from_name(dtype_name((DType)t)) == t, "dtype %s round trip (%zu bytes)", dtype_name((DType)t),
                   dtype_size((DType)t));
    check_true(dtype_from_name("F8_E5M2") == -1 && dtype_from_name("f32") == -1, "unknown names are -1");
}

static void test_tensor_half_conversions(void) {
    // (f32 value, f16 bits, whether the f16 holds the value exactly): exact values, ties to even
    // both ways, overflow, subnormals, underflow
    struct { float x; uint16_t h; int exact; } f16[] = {
        {1.0f, 0x3c00, 1}, {-2.0f, 0xc000, 1}, {65504.0f, 0x7bff, 1}, {65519.99f, 0x7bff, 0}, {65520.0f, 0x7c00, 0},
        {1.0f + 1.0f / 2048, 0x3c00, 0},      // halfway between 1 and 1+2^-10: ties to even (down)
        {1.0f + 3.0f / 2048, 0x3c02, 0},      // halfway above an odd mantissa: ties to even (up)
        {5.9604645e-08f, 0x0001, 1},          // smallest subnormal
        {2.9802322e-08f, 0x0000, 0},          // exactly half of it: ties to even, zero
        {2.9802326e-08f, 0x0001, 0},          // just above half: rounds up
        {6.1035156e-05f, 0x0400, 1},          // smallest normal
        {-0.0f, 0x8000, 1},
    };
    for (size_t i = 0; i < sizeof(f16) / sizeof(f16[0]); i++) {
        uint16_t h = f32_to_f16(f16[i].x);
        check_true(h == f16[i].h, "f32 %.9g -> f16 0x%04x (want 0x%04x)", f16[i].x, h, f16[i].h);
        if (f16[i].exact) check_true(f16_to_f32(h) == f16[i].x, "f16 0x%04x -> f32 %.9g exact", h, f16_to_f32(h));
    }
    struct { float x; uint16_t b; } bf16[] = {
        {1.0f, 0x3f80}, {-3.0f, 0xc040}, {1.00390625f, 0x3f80}, {1.01171875f, 0x3f82}, {3.4e38f, 0x7f80},
    };
    for (size_t i = 0; i < sizeof(bf16) / sizeof(bf16[0]); i++)
        check_true(f32_to_bf16(bf16[i].x) == bf16[i].b, "f32 %.9g -> bf16 0x%04x (want 0x%04x)", bf16[i].x,
                   f32_to_bf16(bf16[i].x), bf16[i].b);
}

static void test_tensor_arena(void) {
    Arena a;
    arena_init(&a, "test arena", 4096, 0);
    float* x = arena_floats(&a, 3, "x");
    float* y = arena_floats(&a, 100, "y");
    check_true((uintptr_t)x % ARENA_ALIGN == 0 && (uintptr_t)y % ARENA_ALIGN == 0, "allocations are %d-byte aligned",
               ARENA_ALIGN);
    check_true(y >= x + 3 && a.used == 256 + 512, "bump allocation (used %zu)", a.used);
    size_t mark = arena_mark(&a);
    arena_floats(&a, 500, "scratch");
    check_true(a.high_water == 256 + 512 + 2048, "high-water mark %zu", a.high_water);
    arena_release(&a, mark);
    check_true(a.used == mark && a.high_water == 256 + 512 + 2048, "release keeps the high-water mark");
    arena_report(&a);
    arena_reset(&a);
    check_true(a.used == 0, "reset");
    arena_free(&a);
}

// Runs fn in a child process and captures its stderr and exit status: fatal errors must be one
// line starting "error: " and exit with status 1, without a crash.
static int run_child(void (*fn)(void), char* stderr_text, size_t cap) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        fn();
        _exit(0);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while ((r = read(fds[0], stderr_text + n, cap - 1 - n)) > 0) n += (size_t)r;
    stderr_text[n] = 0;
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void overflow_an_arena(void) {
    Arena a;
    arena_init(&a, "small arena", 1024, 0);
    arena_floats(&a, 1000, "too many floats");
}

static void open_a_missing_file(void) { xfopen("no/such/file.bin", "rb"); }

// Arenas too large to exist: one that rounding up to ARENA_ALIGN would wrap to a few bytes, and
// one of 2^62 bytes that the allocator refuses.
static void init_a_wrapping_arena(void) {
    Arena a;
    arena_init(&a, "wrapping arena", SIZE_MAX - 16, 0);
    arena_floats(&a, 1000, "a few floats"); // reached only if the request became a tiny buffer
}

static void init_a_huge_arena(void) {
    Arena a;
    arena_init(&a, "huge arena", (size_t)1 << 62, 0);
}

static void count_floats_past_size_t(void) {
    Arena a;
    arena_init(&a, "small arena", 1024, 0);
    arena_floats(&a, SIZE_MAX / 2, "too many floats"); // count * 4 wraps to a small number of bytes
}

static void test_tensor_fatal_errors_are_one_line(void) {
    char text[1024];
    int status = run_child(overflow_an_arena, text, sizeof(text));
    check_true(status == 1, "arena overflow exits with status 1 (got %d)", status);
    check_true(strncmp(text, "error: arena 'small arena' is full: too many floats", 51) == 0 && strchr(text, '\n') == text + strlen(text) - 1,
               "one line naming the arena and the request: %.*s", (int)strcspn(text, "\n"), text);
    status = run_child(init_a_wrapping_arena, text, sizeof(text));
    check_true(status == 1 && strstr(text, "error: out of memory: arena 'wrapping arena' needs") == text &&
                   strchr(text, '\n') == text + strlen(text) - 1,
               "an arena of SIZE_MAX - 16 bytes: %.*s", (int)strcspn(text, "\n"), text);
    status = run_child(init_a_huge_arena, text, sizeof(text));
    // under ASan (make debug) the sanitizer adds a "==pid==WARNING: ... failed to allocate" line first
    const char* ours = strstr(text, "error: out of memory: arena 'huge arena' needs 4611686018427387904 bytes");
    check_true(status == 1 && ours && (ours == text || strncmp(text, "==", 2) == 0) &&
                   strchr(ours, '\n') == text + strlen(text) - 1,
               "an arena of 2^62 bytes: %.*s", ours ? (int)strcspn(ours, "\n") : 0, ours ? ours : "");
    status = run_child(count_floats_past_size_t, text, sizeof(text));
    check_true(status == 1 && strstr(text, "error: arena 'small arena' is full: too many floats") == text,
               "SIZE_MAX / 2 floats: %.*s", (int)strcspn(text, "\n"), text);
    status = run_child(open_a_missing_file, text, sizeof(text));
    check_true(status == 1 && strstr(text, "error: no/such/file.bin: No such file") == text, "missing file: %.*s",
               (int)strcspn(text, "\n"), text);
}

static void test_tensor_atomic_output(void) {
    mkdir("build", 0755);
    char err[ERR_MAX];
    const char* path = "build/test_atomic.txt";
    remove(path);
    OutFile o;
    check_true(out_open(&o, path, err) == 0, "open temporary for %s", path);
    out_write(&o, "half", 4, err);
    struct stat sb;
    check_true(stat(path, &sb) != 0 && temp_files_beside(path) == 1, "nothing under the real name while writing, one temporary file");
    out_abort(&o);
    check_true(stat(path, &sb) != 0 && temp_files_beside(path) == 0, "abort leaves no file at all");
    check_true(write_file_atomic(path, "whole", 5, err) == 0 && stat(path, &sb) == 0 && sb.st_size == 5,
               "commit renames into place");
    check_true(write_file_atomic("build/missing_dir/x.txt", "x", 1, err) == -1 && strstr(err, "missing_dir"),
               "unwritable path: %s", err);
}

const TestCase tests_tensor[] = {
    {"tensor_dtype_names_and_sizes", test_tensor_dtype_names_and_sizes},
    {"tensor_half_conversions", test_tensor_half_conversions},
    {"tensor_arena", test_tensor_arena},
    {"tensor_fatal_errors_are_one_line", test_tensor_fatal_errors_are_one_line},
    {"tensor_atomic_output", test_tensor_atomic_output},
    {NULL, NULL},
};
