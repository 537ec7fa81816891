// tests/test_cli.c: the `sdxl` command itself, run as a user runs it (the binary `make test`
// builds beside the runner): every bad argument gives one line on stderr and a non-zero exit,
// `generate` writes a PNG with its parameters, a prompts file reuses one loaded model, and the
// `generate --help` block in README.md is the binary's own output.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "../common.h"
#include "../png.h"
#include "check.h"

// Runs a shell command; returns its exit status and its stderr (and stdout when both) in out.
static int run(const char* cmd, char* out, size_t cap) {
    char full[8192];
    snprintf(full, sizeof(full), "%s 2>&1", cmd);
    FILE* p = popen(full, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static int have_binary(void) {
    struct stat sb;
    if (stat("./sdxl", &sb) == 0) return 1;
    check_true(0, "./sdxl exists (make builds it beside tests/run_tests)");
    return 0;
}

static void test_cli_bad_arguments_one_line(void) {
    if (!have_binary()) return;
    const char* model = golden_path("tiny_sdxl");
    struct { const char* args; const char* needle; } cases[] = {
        {"frobnicate", "unknown command"},
        {"generate --prompt x", "--model is required"},
        {"generate --model M --prompt x --steps 0", "--steps"},
        {"generate --model M --prompt x --steps ten", "expects an integer"},
        {"generate --model M --prompt x --cfg -1", "--cfg"},
        {"generate --model M --prompt x --width 5000", "--width"},
        {"generate --model M --prompt x --sampler heun", "--sampler"},
        {"generate --model M --prompt x --lora-scale 99", "--lora-scale"},
        {"generate --model M --prompt x --bogus 1", "unknown option"},
        {"generate --model M --prompt x --seed", "needs a value"},
        {"generate --model M", "exactly one of --prompt"},
        {"generate --model no/such/folder --prompt x", "no/such/folder"},
        {"generate --model M --prompt x --lora no/such.safetensors", "no/such.safetensors"},
        {"generate --model M --prompts no/such/prompts.txt", "no/such/prompts.txt"},
        {"generate --model M --prompt x --backend tpu", "--backend"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        // "M" stands for the tiny model, so each case fails on its own argument only; --out goes
        // right after "generate", so a case can end with an option that lacks its value
        char args[1024], cmd[4096], out[4096];
        snprintf(args, sizeof(args), "%s", cases[c].args);
        char* at = strstr(args, " M");
        if (at && (at[2] == ' ' || at[2] == 0)) {
            char rest[1024];
            snprintf(rest, sizeof(rest), "%s", at + 2);
            snprintf(at, sizeof(args) - (size_t)(at - args), " %s%s", model, rest);
        }
        if (strncmp(args, "generate", 8) == 0)
            snprintf(cmd, sizeof(cmd), "./sdxl generate --out build/test_cli/never.png%s", args + 8);
        else
            snprintf(cmd, sizeof(cmd), "./sdxl %s", args);
        int status = run(cmd, out, sizeof(out));
        // the output before the error may hold the option summary; the error is the last line
        char* last = out + strlen(out);
        while (last > out && last[-1] == '\n') *--last = 0;
        char* line = strrchr(out, '\n');
        line = line ? line + 1 : out;
        check_true(status != 0 && strncmp(line, "error: ", 7) == 0 && strstr(line, cases[c].needle),
                   "sdxl %.40s -> exit %d: %.90s", cases[c].args, status, line);
    }
    struct stat sb;
    check_true(stat("build/test_cli/never.png", &sb) != 0, "no output file from a failed run");
}

static void test_cli_generate_writes_png(void) {
    if (!have_binary()) return;
    mkdir("build", 0755);
    mkdir("build/test_cli", 0755);
    remove("build/test_cli/frame.png");
    char cmd[4096], out[16384];
    snprintf(cmd, sizeof(cmd),
             "./sdxl generate --model %s --prompt 'a man opens a door' --steps 2 --width 100 --height 60 "
             "--out build/test_cli/frame.png", golden_path("tiny_sdxl"));
    int status = run(cmd, out, sizeof(out));
    if (!check_true(status == 0, "generate exits 0 (%s)", status ? out : "ok")) return;
    check_true(strstr(out, "step 2/2") && strstr(out, "s/it") && strstr(out, "ETA"), "progress lines with s/it and ETA");
    Image img;
    char err[ERR_MAX];
    if (!check_true(png_read(&img, "build/test_cli/frame.png", err) == 0, "read the PNG: %s", err)) return;
    check_true(img.width == 100 && img.height == 60 && img.channels == 3, "exact 100x60 RGB (generated at 104x64, cropped)");
    const char* params = image_get_text(&img, "parameters");
    check_true(params && strstr(params, "a man opens a door, (((black and white))) in the style of storyboard") &&
                   strstr(params, "Negative prompt: (((colors)))") && strstr(params, "Steps: 2, Sampler: Euler, CFG scale: 12, Seed: 42, Size: 100x60"),
               "parameters: storyboard template, default negative, defaults");
    image_free(&img);
    struct stat sb;
    check_true(stat("build/test_cli/frame.png.tmp", &sb) != 0, "no temporary file left");
}

static void test_cli_prompts_file_reuses_model(void) {
    if (!have_binary()) return;
    mkdir("build", 0755);
    mkdir("build/test_cli", 0755);
    const char* prompts = "# storyboard\nshot one: a door\n\nshot two: a window\n";
    char err[ERR_MAX];
    write_file_atomic("build/test_cli/prompts.txt", prompts, strlen(prompts), err);
    remove("build/test_cli/shots/001.png");
    remove("build/test_cli/shots/002.png");
    char cmd[4096], out[16384];
    snprintf(cmd, sizeof(cmd),
             "./sdxl generate --model %s --prompts build/test_cli/prompts.txt --no-style --negative '' --steps 1 "
             "--sampler dpmpp_2m_karras --width 64 --height 64 --out build/test_cli/shots", golden_path("tiny_sdxl"));
    int status = run(cmd, out, sizeof(out));
    if (!check_true(status == 0, "generate --prompts exits 0 (%s)", status ? out : "ok")) return;
    int loads = 0;
    for (const char* s = out; (s = strstr(s, "loaded ")); s++) loads++;
    check_true(loads == 1, "the model is loaded once for both prompts (%d loads)", loads);
    Image a, b;
    int ok_a = png_read(&a, "build/test_cli/shots/001.png", err) == 0;
    int ok_b = ok_a && png_read(&b, "build/test_cli/shots/002.png", err) == 0;
    if (check_true(ok_a && ok_b, "two PNGs, 001 and 002: %s", ok_b ? "ok" : err)) {
        const char* pa = image_get_text(&a, "parameters");
        check_true(pa && strncmp(pa, "shot one: a door\nSteps: 1, Sampler: DPM++ 2M, Schedule type: Karras", 64) == 0,
                   "no template with --no-style, no negative line for '': %.60s", pa ? pa : "(none)");
        check_true(memcmp(a.data, b.data, 64 * 64 * 3) != 0, "different prompts, different images");
        image_free(&a);
        image_free(&b);
    }
}

// README.md holds the `sdxl generate --help` output between two marker lines; it must be current.
static void test_cli_readme_help_is_current(void) {
    if (!have_binary()) return;
    uint8_t* readme;
    size_t size;
    char err[ERR_MAX], out[16384];
    if (!check_true(read_file("README.md", &readme, &size, err) == 0, "read README.md: %s", err)) return;
    const char* begin = strstr((char*)readme, "<!-- generate-help-begin -->\n```\n");
    const char* end = begin ? strstr(begin, "```\n<!-- generate-help-end -->") : NULL;
    if (check_true(begin && end, "README.md has the generate --help block")) {
        begin += strlen("<!-- generate-help-begin -->\n```\n");
        int status = run("./sdxl generate --help", out, sizeof(out));
        size_t n = (size_t)(end - begin);
        check_true(status == 0 && strlen(out) == n && memcmp(out, begin, n) == 0,
                   "README's block equals `sdxl generate --help` (update README.md if not)");
    }
    free(readme);
}

const TestCase tests_cli[] = {
    {"cli_bad_arguments_one_line", test_cli_bad_arguments_one_line},
    {"cli_generate_writes_png", test_cli_generate_writes_png},
    {"cli_prompts_file_reuses_model", test_cli_prompts_file_reuses_model},
    {"cli_readme_help_is_current", test_cli_readme_help_is_current},
    {NULL, NULL},
};
