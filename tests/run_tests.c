// tests/run_tests.c: runs every test (or those whose name contains one of the arguments).
//
//   tests/run_tests                      all tests on the CPU backend
//   tests/run_tests png json             only tests whose names contain "png" or "json"
//   tests/run_tests --backend cuda       golden op tests run on the CUDA backend
//   tests/run_tests --list               names only
//
// Prints a line per check, a PASS/FAIL/SKIP line per test, and ends with `N passed, N failed`.
// The exit status is 1 when any test failed.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common.h"
#include "../ops.h"
#include "check.h"
#include "harness.h"

extern const TestCase tests_json[], tests_safetensors[], tests_tensor[], tests_rng[], tests_gemm[], tests_ops[],
    tests_png[], tests_tokenizer[], tests_sample[], tests_vae[], tests_sdxl[], tests_lora[], tests_pipeline[], tests_cli[], tests_image[],
    tests_clip_vision[], tests_yolo[], tests_blip[], tests_eval[], tests_optim[], tests_jpeg[], tests_backward[], tests_train[], tests_plot[],
    tests_config[];

static const TestCase* const all_tables[] = {tests_json, tests_safetensors, tests_tensor,    tests_rng,
                                            tests_gemm, tests_ops,         tests_png,       tests_tokenizer,
                                            tests_sample, tests_vae,       tests_sdxl,      tests_lora,
                                            tests_pipeline, tests_cli,     tests_image,     tests_clip_vision,
                                            tests_yolo,   tests_blip,    tests_eval,      tests_optim,
                                            tests_jpeg,   tests_backward, tests_train,    tests_plot,
                                            tests_config};

// Under ASan (make debug), a request the allocator cannot meet returns NULL, as malloc does, rather
// than aborting: the tests check that our code reports it (tensor_fatal_errors_are_one_line).
const char* __asan_default_options(void);
const char* __asan_default_options(void) { return "allocator_may_return_null=1"; }

static int selected(const char* name, int argc, char** argv, int first_filter) {
    if (first_filter >= argc) return 1;
    for (int i = first_filter; i < argc; i++)
        if (strstr(name, argv[i])) return 1;
    return 0;
}

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int first_filter = 1, list_only = 0;
    Backend backend = BACKEND_CPU;
    while (first_filter < argc && strncmp(argv[first_filter], "--", 2) == 0) {
        if (strcmp(argv[first_filter], "--backend") == 0 && first_filter + 1 < argc) {
            const char* b = argv[first_filter + 1];
            if (strcmp(b, "cpu") == 0) backend = BACKEND_CPU;
            else if (strcmp(b, "cuda") == 0) backend = BACKEND_CUDA;
            else fatal("--backend: expected cpu or cuda, got '%s'", b);
            first_filter += 2;
        } else if (strcmp(argv[first_filter], "--list") == 0) {
            list_only = 1;
            first_filter++;
        } else {
            fatal("unknown option '%s' (use --backend cpu|cuda, --list, or name filters)", argv[first_filter]);
        }
    }
    // Nothing a test runs may write under the user's home: the trainer's default cache
    // (~/.cache/sdxl.c, or $XDG_CACHE_HOME/sdxl.c) goes to build/ instead, for this process and
    // every sdxl command the CLI tests start.
    mkdir("build", 0755);
    char cache_home[4200], cwd[4096];
    if (!getcwd(cwd, sizeof(cwd))) fatal("tests/run_tests: cannot read the current folder");
    snprintf(cache_home, sizeof(cache_home), "%s/build/test_cache_home", cwd);
    setenv("XDG_CACHE_HOME", cache_home, 1);
    if (backend == BACKEND_CUDA) backend_select(BACKEND_CUDA);
    printf("backend: %s\n", backend_name(backend_current()));

    int passed = 0, failed = 0, skipped = 0;
    char failed_names[4096] = "", skipped_names[4096] = "";
    double t_all = now_seconds();
    for (size_t t = 0; t < sizeof(all_tables) / sizeof(all_tables[0]); t++) {
        for (const TestCase* tc = all_tables[t]; tc->name; tc++) {
            if (!selected(tc->name, argc, argv, first_filter)) continue;
            if (list_only) {
                printf("%s\n", tc->name);
                continue;
            }
            memset(&g_test, 0, sizeof(g_test));
            printf("== %s\n", tc->name);
            double t0 = now_seconds();
            tc->fn();
            backend_free_all();
            double dt = now_seconds() - t0;
            if (g_test.failed) {
                failed++;
                printf("FAIL %s (%.2f s)\n", tc->name, dt);
                strncat(failed_names, " ", sizeof(failed_names) - strlen(failed_names) - 1);
                strncat(failed_names, tc->name, sizeof(failed_names) - strlen(failed_names) - 1);
            } else if (g_test.skipped) {
                skipped++;
                printf("SKIP %s: skipped (%s)\n", tc->name, g_test.skip_reason);
                strncat(skipped_names, " ", sizeof(skipped_names) - strlen(skipped_names) - 1);
                strncat(skipped_names, tc->name, sizeof(skipped_names) - strlen(skipped_names) - 1);
            } else if (g_test.checks == 0) {
                // a test that asserts nothing is a defect, not a pass
                failed++;
                printf("FAIL %s: ran no checks\n", tc->name);
                strncat(failed_names, " ", sizeof(failed_names) - strlen(failed_names) - 1);
                strncat(failed_names, tc->name, sizeof(failed_names) - strlen(failed_names) - 1);
            } else {
                passed++;
                printf("PASS %s (%d checks, %.2f s)\n", tc->name, g_test.checks, dt);
            }
        }
    }
    if (list_only) return 0;
    printf("\n%.1f s on the %s backend\n", now_seconds() - t_all, backend_name(backend_current()));
    if (skipped) printf("%d skipped:%s\n", skipped, skipped_names);
    if (failed) printf("failed:%s\n", failed_names);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
