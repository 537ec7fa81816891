// tests/test_cli.c: the `sdxl` command itself, run as a user runs it (the binary `make test`
// builds beside the runner): every bad argument gives one line on stderr and a non-zero exit,
// `generate` writes a PNG with its parameters, a prompts file reuses one loaded model, `eval` on
// generated frames writes the three reports with every field filled or skipped with a reason, and
// the `generate --help` and `eval --help` blocks in README.md are the binary's own output.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common.h"
#include "../json.h"
#include "../png.h"
#include "check.h"

// Runs a shell command; returns its exit status and its stderr (and stdout when both) in out.
static int run(const char* cmd, char* out, size_t cap) {
    char full[16384];
    snprintf(full, sizeof(full), "%s 2>&1", cmd);
    FILE* p = popen(full, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

// The last non-empty line of out (trailing newlines are cut off in place): where the one-line
// error stands, after whatever option summary came before it.
static const char* last_line(char* out) {
    char* end = out + strlen(out);
    while (end > out && end[-1] == '\n') *--end = 0;
    char* line = strrchr(out, '\n');
    return line ? line + 1 : out;
}

static int have_binary(void) {
    struct stat sb;
    if (stat(sdxl_bin(), &sb) == 0) return 1;
    check_true(0, "%s exists (make builds it beside tests/run_tests)", sdxl_bin());
    return 0;
}

// Replaces every stand-alone letter `mark` in s (at the start or after a space, and followed by
// a space, a '/' or the end) with path: the test tables write M for the tiny model, D for the
// golden frames, E for a test's own folder.
static void expand_mark(char* s, size_t cap, char mark, const char* path) {
    for (char* at = s; (at = strchr(at, mark));) {
        int alone = (at == s || at[-1] == ' ') && (at[1] == ' ' || at[1] == '/' || at[1] == 0);
        if (!alone) {
            at++;
            continue;
        }
        char rest[4096];
        snprintf(rest, sizeof(rest), "%s", at + 1);
        snprintf(at, cap - (size_t)(at - s), "%s%s", path, rest);
        at += strlen(path);
    }
}

static void test_cli_bad_arguments_one_line(void) {
    if (!have_binary()) return;
    mkdir("build", 0755); // the cases' --out folder exists, so each fails on its own argument only
    mkdir("build/test_cli", 0755);
    char model[4096], data[4096]; // golden_path's buffer is static: keep copies
    snprintf(model, sizeof(model), "%s", golden_path("tiny_sdxl"));
    snprintf(data, sizeof(data), "%s", golden_path("data"));
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
        {"generate --model M --prompt x --seed 18446744073709551616", "expects an integer from -9223372036854775808 to 18446744073709551615"},
        {"generate --model M --prompt x --seed -9223372036854775809", "got '-9223372036854775809'"},
        {"generate --model M --prompt x --seed abc", "--seed expects an integer"},
        {"generate --model M --prompt x --seed -", "--seed expects an integer"},
        {"demo --seed 1e9", "--seed expects an integer"},
        {"generate --model M", "exactly one of --prompt"},
        {"generate --model no/such/folder --prompt x", "no/such/folder"},
        {"generate --model M --prompt x --lora no/such.safetensors", "no/such.safetensors"},
        {"generate --model M --prompts no/such/prompts.txt", "no/such/prompts.txt"},
        {"generate --model M --prompt x --backend tpu", "--backend"},
        {"train --data D --out build/test_cli/never.safetensors", "--model, --data and --out are required"},
        {"train --model M --data no/such/data --out build/test_cli/never.safetensors", "no/such/data"},
        {"train --model M --data D --out build/test_cli/never.safetensors --data-mode squash", "--data-mode"},
        {"train --model M --data D --out build/test_cli/never.safetensors --targets everything", "--targets"},
        {"train --model M --data D --out build/test_cli/never.safetensors --lr-scheduler warmup_stable", "--lr-scheduler"},
        {"train --model M --data D --out build/test_cli/never.safetensors --mixed-precision fp8", "--mixed-precision"},
        {"train --model M --data D --out build/test_cli/never.safetensors --rank 0", "rank 0"},
        {"train --model M --data D --out build/test_cli/never.safetensors --seed 0x10", "--seed expects an integer"},
        {"train --model M --data D --out build/test_cli/never.safetensors --resume latest", "no checkpoint to resume"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        // "M" stands for the tiny model, so each case fails on its own argument only; --out goes
        // right after "generate", so a case can end with an option that lacks its value
        char args[4096], cmd[8192], out[4096];
        snprintf(args, sizeof(args), "%s", cases[c].args);
        expand_mark(args, sizeof(args), 'M', model);
        expand_mark(args, sizeof(args), 'D', data);
        if (strncmp(args, "generate", 8) == 0)
            snprintf(cmd, sizeof(cmd), "%s generate --out build/test_cli/never.png%s", sdxl_bin(), args + 8);
        else
            snprintf(cmd, sizeof(cmd), "%s %s", sdxl_bin(), args);
        int status = run(cmd, out, sizeof(out));
        const char* line = last_line(out);
        check_true(status != 0 && strncmp(line, "error: ", 7) == 0 && strstr(line, cases[c].needle),
                   "sdxl %.40s -> exit %d: %.90s", cases[c].args, status, line);
    }
    struct stat sb;
    check_true(stat("build/test_cli/never.png", &sb) != 0 && stat("build/test_cli/never.safetensors", &sb) != 0,
               "no output file from a failed run");
}

// Mistakes in paths and options are found before anything loads: the whole output is the one
// error line (no option dump, no "loading"), it names the user's path (never a temporary file),
// and whatever stood at an output path that is not a regular file is left as it was.
static void test_cli_fails_before_loading(void) {
    if (!have_binary()) return;
    const char* dir = "build/test_cli/early";
    system("rm -rf build/test_cli/early && mkdir -p build/test_cli/early/folder build/test_cli/early/nometa");
    char model[4096], data[4096];
    snprintf(model, sizeof(model), "%s", golden_path("tiny_sdxl"));
    snprintf(data, sizeof(data), "%s", golden_path("data"));
    char err[ERR_MAX];
    write_file_atomic("build/test_cli/early/target.txt", "keep me", 7, err);
    write_file_atomic("build/test_cli/early/prompts.txt", "a\nb\n", 4, err);
    write_file_atomic("build/test_cli/early/file.txt", "x", 1, err);
    check_true(mkfifo("build/test_cli/early/fifo", 0644) == 0 && symlink("target.txt", "build/test_cli/early/link.png") == 0,
               "make a FIFO and a symbolic link");
    // a prompts file whose second prompt is over PROMPT_MAX_BYTES
    StrBuf big = {0};
    strbuf_cat(&big, "a short prompt\n");
    for (int i = 0; i < (1 << 20) / 4 + 1; i++) strbuf_cat(&big, "cat ");
    strbuf_cat(&big, "\n");
    write_file_atomic("build/test_cli/early/huge_prompts.txt", big.s, big.len, err);
    free(big.s);
    // a dataset whose metadata.jsonl climbs out of its folder
    mkdir("build/test_cli/early/escape", 0755);
    const char* escape = "{\"file_name\": \"../../../../../../../../etc/passwd\", \"text\": \"x\"}\n";
    write_file_atomic("build/test_cli/early/escape/metadata.jsonl", escape, strlen(escape), err);
    struct { const char* args; const char* needle; } cases[] = {
        {"generate --model M --prompt x --out /no/such/dir/x.png", "/no/such/dir/x.png: folder '/no/such/dir' does not exist"},
        {"generate --model M --prompt x --out E/fifo", "E/fifo: is not a regular file"},
        {"generate --model M --prompt x --out E/link.png", "E/link.png: is a symbolic link"},
        {"generate --model M --prompt x --out E/folder", "E/folder: is a folder"},
        {"generate --model M --prompt x --lora E/no_such_lora.safetensors", "no_such_lora.safetensors"},
        {"generate --model M --prompts E/no_such_prompts.txt", "no_such_prompts.txt"},
        {"generate --model M --prompts E/prompts.txt --out E/file.txt", "E/file.txt: exists and is not a folder"},
        {"generate --model M --prompt x --config E/no_config", "E/no_config: not a folder"},
        {"generate --model M --prompts E/huge_prompts.txt --out E/shots", "E/huge_prompts.txt: prompt 2: 1048580 bytes, more than 1048576"},
        {"generate --model E/no_model --prompt x", "E/no_model: no such file or folder"},
        {"train --model M --data D --out E/x.safetensors --rank 0", "rank 0"},
        {"train --model M --data E/nometa --out E/x.safetensors", "no metadata.jsonl"},
        {"train --model M --data E/escape --out E/x.safetensors", "leaves the dataset folder"},
        {"train --model M --data D --out /no/such/dir/x.safetensors", "folder '/no/such/dir' does not exist"},
        {"train --model M --data D --out E/fifo", "E/fifo: is not a regular file"},
        {"train --model M --data D --out E/x.safetensors --log E/link.png", "E/link.png: is a symbolic link"},
        {"train --model M --data D --out E/x.safetensors --validation-data E/none", "E/none: not a folder"},
        {"train --model M --data D --out E/x.safetensors --resume latest", "no checkpoint to resume"},
        {"verify unet --unet M --ref E/no_ref.safetensors", "E/no_ref.safetensors"},
        {"eval --images D --out E/file.txt", "E/file.txt: exists and is not a folder"},
        {"eval --images D --out E/out --clip E/no_clip", "E/no_clip"},
        {"eval --images E/no_images", "E/no_images"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        char args[4096], cmd[8192], out[8192], needle[1024];
        snprintf(args, sizeof(args), "%s", cases[c].args);
        snprintf(needle, sizeof(needle), "%s", cases[c].needle);
        expand_mark(args, sizeof(args), 'M', model);
        expand_mark(args, sizeof(args), 'D', data);
        expand_mark(args, sizeof(args), 'E', dir);
        expand_mark(needle, sizeof(needle), 'E', dir);
        snprintf(cmd, sizeof(cmd), "%s %s", sdxl_bin(), args);
        double t0 = now_seconds();
        int status = run(cmd, out, sizeof(out));
        double dt = now_seconds() - t0;
        size_t len = strlen(out);
        int one_line = len > 0 && strchr(out, '\n') == out + len - 1;
        check_true(status != 0 && one_line && strncmp(out, "error: ", 7) == 0 && strstr(out, needle) && !strstr(out, ".tmp"),
                   "sdxl %.60s -> exit %d in %.2f s: %.150s", cases[c].args, status, dt, out);
    }
    // a run that fails on its data makes no cache folder either (the default lies in the user's home)
    char cmd[8192], out[4096];
    snprintf(cmd, sizeof(cmd), "XDG_CACHE_HOME=%s/cache_home %s train --model %s --data %s/nometa --out %s/x.safetensors", dir,
             sdxl_bin(), model, dir, dir);
    int status = run(cmd, out, sizeof(out));
    struct stat sb;
    check_true(status != 0 && stat("build/test_cli/early/cache_home", &sb) != 0, "a failed run leaves the cache folder unmade");
    check_true(lstat("build/test_cli/early/fifo", &sb) == 0 && S_ISFIFO(sb.st_mode), "the FIFO is still a FIFO");
    check_true(lstat("build/test_cli/early/link.png", &sb) == 0 && S_ISLNK(sb.st_mode), "the link is still a link");
    uint8_t* text;
    size_t size;
    check_true(read_file("build/test_cli/early/target.txt", &text, &size, err) == 0 && size == 7 && memcmp(text, "keep me", 7) == 0,
               "the link's target is untouched");
    free(text);
    check_true(stat("build/test_cli/early/x.safetensors", &sb) != 0 && stat("build/test_cli/early/out", &sb) != 0,
               "no output from a failed run");
}

// `sdxl train` with the job's settings (lr 1e-5, fp16 with loss scaling, 1024 px buckets, batch 1,
// gradient accumulation 4) for 2 steps on the tiny model: progress lines, the LoRA (kohya keys
// and metadata), the CSV log, the loss curve; then `sdxl generate --lora` loads what it wrote.
static void test_cli_train_end_to_end(void) {
    if (!have_binary()) return;
    system("rm -rf build/test_cli/train && mkdir -p build/test_cli/train");
    char cmd[8192], out[65536], err[ERR_MAX], model[4096];
    snprintf(model, sizeof(model), "%s", golden_path("tiny_sdxl")); // golden_path's buffer is static
    snprintf(cmd, sizeof(cmd),
             "%s train --model %s --data %s --out build/test_cli/train/storyboard.safetensors --steps 2 "
             "--mixed-precision fp16 --cache-dir build/test_cli/train/cache --verbose", sdxl_bin(),
             model, golden_path("data"));
    int status = run(cmd, out, sizeof(out));
    if (!check_true(status == 0, "train exits 0 (%s)", status ? last_line(out) : "ok")) return;
    check_true(strstr(out, "lr                   = 1e-05") && strstr(out, "grad-accum           = 4") &&
                   strstr(out, "resolution           = 1024") && strstr(out, "batch-size           = 1"),
               "the job's settings are the defaults (lr 1e-5, GA 4, 1024, batch 1)");
    check_true(strstr(out, "step 2/2  loss ") && strstr(out, "lr 1.00e-05  scale 65536") && strstr(out, "s/step  ETA"),
               "progress lines: loss, lr, loss scale, s/step, ETA");
    check_true(strstr(out, "micro-batches up to 128x128 latents") != NULL, "buckets of about 1024^2 pixels (the square frame: 128x128 latents)");
    SafeTensors st;
    if (check_true(safetensors_open(&st, "build/test_cli/train/storyboard.safetensors", err) == 0, "read the LoRA: %s", err)) {
        const SafeTensor* a = safetensors_find(&st, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha");
        const SafeTensor* d = safetensors_find(&st, "lora_unet_output_blocks_5_1_transformer_blocks_1_attn2_to_out_0.lora_down.weight");
        const char* dim = safetensors_metadata(&st, "ss_network_dim");
        check_true(st.count == 176 * 3 && a && a->rank == 0 && d && d->shape[0] == 4 && dim && strcmp(dim, "4") == 0,
                   "kohya keys (SGM names, lora_down/lora_up/alpha), rank 4, ss_network_dim 4");
        safetensors_close(&st);
    }
    char** lines;
    int count;
    if (check_true(read_lines("build/test_cli/train/storyboard.safetensors.csv", &lines, &count, err) == 0, "CSV: %s", err)) {
        check_true(count == 3 && strncmp(lines[0], "step,epoch,loss,lr,loss_scale", 29) == 0 && strncmp(lines[2], "2,", 2) == 0,
                   "CSV: a header and one row per step");
        free_lines(lines, count);
    }
    Image curve;
    if (check_true(png_read(&curve, "build/test_cli/train/storyboard.safetensors.loss.png", err) == 0, "loss curve: %s", err)) {
        check_true(curve.width == 900 && curve.height == 450, "loss curve 900x450");
        image_free(&curve);
    }
    snprintf(cmd, sizeof(cmd),
             "%s generate --model %s --lora build/test_cli/train/storyboard.safetensors --prompt x --steps 1 "
             "--width 64 --height 64 --out build/test_cli/train/frame.png", sdxl_bin(),
             golden_path("tiny_sdxl"));
    status = run(cmd, out, sizeof(out));
    check_true(status == 0 && strstr(out, "merged LoRA build/test_cli/train/storyboard.safetensors at scale 0.4: kohya, 176 modules"),
               "generate --lora merges it at 0.4 (%s)", status ? last_line(out) : "ok");
}

static void test_cli_generate_writes_png(void) {
    if (!have_binary()) return;
    mkdir("build", 0755);
    mkdir("build/test_cli", 0755);
    remove("build/test_cli/frame.png");
    char cmd[4096], out[16384];
    snprintf(cmd, sizeof(cmd),
             "%s generate --model %s --prompt 'a man opens a door' --steps 2 --width 100 --height 60 "
             "--out build/test_cli/frame.png", sdxl_bin(), golden_path("tiny_sdxl"));
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
    check_true(stat("build/test_cli/frame.png", &sb) == 0 && temp_files_beside("build/test_cli/frame.png") == 0,
               "no temporary file left");
}

// Seeds over torch's whole range: 2^64 - 1 is accepted, logged and written in the PNG's
// parameters as A1111 writes it ("Seed: N"); -1 is the same seed, as torch.manual_seed(-1) is.
static void test_cli_generate_full_seed_range(void) {
    if (!have_binary()) return;
    mkdir("build", 0755);
    mkdir("build/test_cli", 0755);
    const char* seeds[2] = {"18446744073709551615", "-1"};
    const char* paths[2] = {"build/test_cli/seed_max.png", "build/test_cli/seed_minus1.png"};
    Image img[2] = {{0}, {0}};
    char cmd[10240], out[16384], err[ERR_MAX];
    for (int k = 0; k < 2; k++) {
        remove(paths[k]);
        snprintf(cmd, sizeof(cmd), "%s generate --model %s --prompt 'a door' --steps 1 --width 64 --height 64 --seed %s --out %s --verbose",
                 sdxl_bin(), golden_path("tiny_sdxl"), seeds[k], paths[k]);
        int status = run(cmd, out, sizeof(out));
        if (!check_true(status == 0, "generate --seed %s exits 0 (%s)", seeds[k], status ? last_line(out) : "ok")) return;
        check_true(strstr(out, "seed                 = 18446744073709551615") != NULL, "--seed %s is logged as 18446744073709551615",
                   seeds[k]);
        if (!check_true(png_read(&img[k], paths[k], err) == 0, "read %s: %s", paths[k], err)) return;
        const char* params = image_get_text(&img[k], "parameters");
        check_true(params && strstr(params, ", Seed: 18446744073709551615, "), "--seed %s: the parameters say Seed: 18446744073709551615",
                   seeds[k]);
    }
    check_true(img[0].width == img[1].width && memcmp(img[0].data, img[1].data, 64 * 64 * 3) == 0,
               "--seed -1 and --seed 18446744073709551615 draw the same image");
    image_free(&img[0]);
    image_free(&img[1]);
    // train takes the same range: the run gets past --seed and stops at the next bad option
    char model[4096]; // golden_path's buffer is static: keep a copy
    snprintf(model, sizeof(model), "%s", golden_path("tiny_sdxl"));
    snprintf(cmd, sizeof(cmd), "%s train --model %s --data %s --out build/test_cli/never.safetensors --seed 9223372036854775808 --rank 0 --verbose",
             sdxl_bin(), model, golden_path("data"));
    int status = run(cmd, out, sizeof(out));
    check_true(status != 0 && strstr(last_line(out), "rank 0") && strstr(out, "seed                 = 9223372036854775808"),
               "train --seed 2^63 is accepted and logged (%s)", last_line(out));
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
             "%s generate --model %s --prompts build/test_cli/prompts.txt --no-style --negative '' --steps 1 "
             "--sampler dpmpp_2m_karras --width 64 --height 64 --out build/test_cli/shots", sdxl_bin(), golden_path("tiny_sdxl"));
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

// The fields of one report.json record that an evaluator fills; each is "done" or says why not.
static const char* const eval_fields[] = {"clip", "detection", "caption", "similarity", "interrogator", "judge"};

// Reads build/test_cli/<dir>/report.json; returns its "images" array (NULL on failure, checked).
static const JsonValue* read_report(JsonDoc* doc, const char* dir, int expect_images) {
    char path[512], err[ERR_MAX];
    snprintf(path, sizeof(path), "%s/report.json", dir);
    uint8_t* text;
    size_t size;
    if (read_file(path, &text, &size, err) != 0) {
        check_true(0, "read %s", err);
        return NULL;
    }
    int rc = json_parse(doc, (const char*)text, size, err);
    free(text);
    if (!check_true(rc == 0, "%s is valid JSON: %s", path, rc ? err : "ok")) return NULL;
    const JsonValue* images = json_get(&doc->root, "images");
    if (!check_true(images && images->type == JSON_ARRAY && (int)images->length == expect_images,
                    "%s holds %d images", path, expect_images))
        return NULL;
    return images;
}

// `sdxl eval` with every evaluator (the tiny goldens, a stand-in judge) on frames `generate` made.
static void test_cli_eval_writes_reports(void) {
    if (!have_binary()) return;
    mkdir("build", 0755);
    mkdir("build/test_cli", 0755);
    char err[ERR_MAX], cmd[8192], out[32768];
    int status;
    const char* prompts = "a man walks a dog past a car\ntwo cats on a bench\n";
    write_file_atomic("build/test_cli/eval_prompts.txt", prompts, strlen(prompts), err);
    remove("build/test_cli/eval_frames/001.png");
    remove("build/test_cli/eval_frames/002.png");
    snprintf(cmd, sizeof(cmd),
             "%s generate --model %s --prompts build/test_cli/eval_prompts.txt --steps 1 --width 96 --height 54 "
             "--out build/test_cli/eval_frames", sdxl_bin(), golden_path("tiny_sdxl"));
    status = run(cmd, out, sizeof(out));
    if (!check_true(status == 0, "generate two 96x54 frames (%.200s)", status ? out : "ok")) return;
    // the stand-in judge: reads the prompt on stdin, answers with the image path it was given
    const char* judge = "read prompt\necho \"{\\\"score\\\": 7, \\\"reason\\\": \\\"saw $SDXL_JUDGE_IMAGE\\\"}\"\n";
    write_file_atomic("build/test_cli/judge.sh", judge, strlen(judge), err);

    // golden_path returns one static buffer: copy each path before asking for the next
    const char* names[5] = {"clip_vision/tiny_clip", "clip_vision/labels", "yolo/tiny.safetensors", "blip/tiny_blip", "blip/tiny_minilm"};
    char paths[5][512];
    for (int k = 0; k < 5; k++) snprintf(paths[k], sizeof(paths[k]), "%s", golden_path(names[k]));
    snprintf(cmd, sizeof(cmd),
             "%s eval --images build/test_cli/eval_frames --out build/test_cli/eval_full --width 96 --height 54 "
             "--clip %s --interrogator-lists %s --cache build/test_cli/label_cache --yolo %s --blip %s --minilm %s "
             "--judge-cmd 'sh build/test_cli/judge.sh'", sdxl_bin(),
             paths[0], paths[1], paths[2], paths[3], paths[4]);
    status = run(cmd, out, sizeof(out));
    if (!check_true(status == 0, "eval with every evaluator exits 0 (%.300s)", status ? out : "ok")) return;
    check_true(strstr(out, "image 2/2") && strstr(out, "ETA") && strstr(out, "CLIP score (torchmetrics, 0-100)") &&
                   strstr(out, "wrote build/test_cli/eval_full/report.json"),
               "progress with ETA, the summary table, the files written");
    JsonDoc doc;
    const JsonValue* images = read_report(&doc, "build/test_cli/eval_full", 2);
    if (images) {
        for (int i = 0; i < 2; i++) {
            const JsonValue* r = &images->items[i];
            int done = 0;
            for (size_t f = 0; f < sizeof(eval_fields) / sizeof(eval_fields[0]); f++) {
                const char* st = json_get_string(json_get(r, eval_fields[f]), "status");
                done += st && strcmp(st, "done") == 0;
            }
            check_true(done == 6, "image %d: all six evaluator fields done (%d)", i + 1, done);
            const char* prompt = json_get_string(r, "prompt");
            check_true(prompt && strstr(prompt, i == 0 ? "a man walks a dog past a car, black and white in the style of storyboard"
                                                       : "two cats on a bench, black and white"),
                       "image %d: the prompt read from the PNG, emphasis removed: %.60s", i + 1, prompt ? prompt : "(none)");
            double score, minilm, cosine;
            int size_ok = 0;
            const JsonValue* style = json_get(r, "style");
            check_true(json_get_number(json_get(r, "clip"), "score", &score) && score >= 0 && score <= 100 &&
                           json_get_number(json_get(r, "clip"), "cosine", &cosine) && fabs(cosine) <= 1 &&
                           json_get_number(json_get(r, "similarity"), "minilm_cosine", &minilm) && fabs(minilm) <= 1.0001 &&
                           json_get_bool(style, "size_ok", &size_ok) && size_ok,
                       "image %d: CLIP score in [0, 100], cosines in [-1, 1], size 96x54 ok", i + 1);
            const char* caption = json_get_string(json_get(r, "caption"), "text");
            const char* reason = json_get_string(json_get(r, "judge"), "reason");
            check_true(caption && caption[0] && reason && strstr(reason, i == 0 ? "eval_frames/001.png" : "eval_frames/002.png") &&
                           json_get_number(json_get(r, "judge"), "score", &score) && score == 7,
                       "image %d: a caption, and the judge's score 7 with the image path it was given", i + 1);
        }
        // the prompts name COCO objects: man -> person, dog, car; cats -> cat, bench
        const char* want[2][3] = {{"person", "dog", "car"}, {"cat", "bench", NULL}};
        int ok = 1, boxes_inside = 1;
        for (int i = 0; i < 2; i++) {
            const JsonValue* det = json_get(&images->items[i], "detection");
            const JsonValue* objects = json_get(det, "objects");
            const JsonValue* boxes = json_get(det, "boxes");
            size_t n = i == 0 ? 3 : 2;
            if (!objects || objects->type != JSON_ARRAY || objects->length != n || !boxes || boxes->type != JSON_ARRAY) {
                ok = 0;
                continue;
            }
            for (size_t k = 0; k < n; k++) {
                const char* label = json_get_string(&objects->items[k], "class");
                ok &= label && strcmp(label, want[i][k]) == 0;
            }
            for (size_t k = 0; k < boxes->length; k++) {
                const JsonValue* xyxy = json_get(&boxes->items[k], "xyxy");
                if (!xyxy || xyxy->type != JSON_ARRAY || xyxy->length != 4) { boxes_inside = 0; continue; }
                double x0 = xyxy->items[0].number, y0 = xyxy->items[1].number, x1 = xyxy->items[2].number, y1 = xyxy->items[3].number;
                boxes_inside &= 0 <= x0 && x0 <= x1 && x1 <= 96 && 0 <= y0 && y0 <= y1 && y1 <= 54;
            }
        }
        check_true(ok, "object presence: person, dog, car for frame 1; cat, bench for frame 2");
        check_true(boxes_inside, "every detection box lies inside its 96x54 frame");
        json_free(&doc);
    }
    uint8_t* text;
    size_t size;
    if (check_true(read_file("build/test_cli/eval_full/report.csv", &text, &size, err) == 0, "read report.csv")) {
        int lines = 0;
        for (size_t k = 0; k < size; k++) lines += text[k] == '\n';
        check_true(lines == 3 && strncmp((char*)text, "file,prompt,width,height", 24) == 0, "report.csv: a header and two rows (%d lines)", lines);
        free(text);
    }
    if (check_true(read_file("build/test_cli/eval_full/report.html", &text, &size, err) == 0, "read report.html")) {
        int thumbs = 0;
        for (const char* s = (char*)text; (s = strstr(s, "src=\"data:image/png;base64,")); s++) thumbs++;
        check_true(thumbs == 2 && strstr((char*)text, "</html>"), "report.html: two embedded thumbnails (%d), complete", thumbs);
        free(text);
    }

    // No evaluator weights: every model field says it was skipped and why; the style checks still run.
    snprintf(cmd, sizeof(cmd), "%s eval --images build/test_cli/eval_frames --prompts build/test_cli/eval_prompts.txt "
                               "--out build/test_cli/eval_none", sdxl_bin());
    status = run(cmd, out, sizeof(out));
    if (!check_true(status == 0, "eval with no evaluators exits 0 (%.300s)", status ? out : "ok")) return;
    images = read_report(&doc, "build/test_cli/eval_none", 2);
    if (images) {
        int skipped = 0, noted = 0;
        for (size_t f = 0; f < sizeof(eval_fields) / sizeof(eval_fields[0]); f++) {
            const JsonValue* field = json_get(&images->items[1], eval_fields[f]);
            const char* st = json_get_string(field, "status");
            const char* note = json_get_string(field, "note");
            skipped += st && strcmp(st, "skipped") == 0;
            noted += note && note[0];
        }
        int size_ok = 1;
        const char* prompt = json_get_string(&images->items[1], "prompt");
        check_true(skipped == 6 && noted == 6, "all six fields skipped with a note (%d, %d)", skipped, noted);
        check_true(prompt && strcmp(prompt, "two cats on a bench") == 0 &&
                       json_get_bool(json_get(&images->items[1], "style"), "size_ok", &size_ok) && !size_ok,
                   "--prompts overrides the PNG text; 96x54 is not the default 1365x768");
        json_free(&doc);
    }

    // Bad input: one line naming the problem, non-zero exit, no report.
    const char* short_prompts = "only one line\n";
    write_file_atomic("build/test_cli/one_prompt.txt", short_prompts, strlen(short_prompts), err);
    struct { const char* args; const char* needle; } cases[] = {
        {"--out build/test_cli/eval_bad", "--images is required"},
        {"--images build/test_cli/eval_frames --interrogate slow", "--interrogate"},
        {"--images build/test_cli/eval_frames --prompts build/test_cli/one_prompt.txt", "one_prompt.txt"},
        {"--images no/such/frames", "no/such/frames"},
        {"--images build/test_cli/eval_frames --clip no/such/clip", "no/such/clip"},
        {"--images build/test_cli/eval_frames --interrogator-lists x", "--clip"},
        {"--images build/test_cli/eval_frames --beams 0", "--beams"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        snprintf(cmd, sizeof(cmd), "%s eval --out build/test_cli/eval_bad %s", sdxl_bin(), cases[c].args);
        status = run(cmd, out, sizeof(out));
        const char* line = last_line(out);
        check_true(status != 0 && strncmp(line, "error: ", 7) == 0 && strstr(line, cases[c].needle),
                   "sdxl eval %.50s -> exit %d: %.100s", cases[c].args, status, line);
    }
    struct stat sb;
    check_true(stat("build/test_cli/eval_bad/report.json", &sb) != 0, "no report from a failed run");
}

// `sdxl eval` on a folder where a "PNG" is not one: the console warns (the file and why, and the
// count), the summary is the real frame's alone, and the exit is 0; when no image can be read at
// all the run fails with one line. The frame is written by our PNG writer, the fake is text.
static void test_cli_eval_unreadable_images(void) {
    if (!have_binary()) return;
    system("rm -rf build/test_cli/eval_mixed build/test_cli/eval_mixed_report build/test_cli/eval_allbad");
    mkdir("build", 0755);
    mkdir("build/test_cli", 0755);
    mkdir("build/test_cli/eval_mixed", 0755);
    mkdir("build/test_cli/eval_allbad", 0755);
    char err[ERR_MAX] = "", out[16384];
    Image frame = {0};
    frame.width = 32;
    frame.height = 18;
    frame.channels = 3;
    frame.depth = 8;
    frame.data = xmalloc(32 * 18 * 3);
    for (size_t i = 0; i < 32 * 18 * 3; i++) ((uint8_t*)frame.data)[i] = (uint8_t)(i % 3 == 0 ? 200 : 40); // reddish: colourful
    int ok = png_write("build/test_cli/eval_mixed/001.png", &frame, err) == 0;
    image_free(&frame);
    const char* fake = "hello, I am not a PNG\n";
    ok = ok && write_file_atomic("build/test_cli/eval_mixed/fake.png", fake, strlen(fake), err) == 0;
    ok = ok && write_file_atomic("build/test_cli/eval_allbad/fake.png", fake, strlen(fake), err) == 0;
    if (!check_true(ok, "write the test folders: %s", err)) return;
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "%s eval --images build/test_cli/eval_mixed --out build/test_cli/eval_mixed_report --width 32 --height 18",
             sdxl_bin());
    int status = run(cmd, out, sizeof(out));
    check_true(status == 0, "some images unreadable: exit 0 (%s)", status ? last_line(out) : "ok");
    check_true(strstr(out, "warning: build/test_cli/eval_mixed/fake.png: not a PNG file") != NULL, "a warning names fake.png and why");
    check_true(strstr(out, "1 of 2 images could not be read") != NULL, "the warning counts the unreadable images");
    check_true(strstr(out, "exact size                                   100.0%        1") != NULL,
               "exact size: 100%% of the one readable image, not 50%% of two");
    JsonDoc doc;
    const JsonValue* images = read_report(&doc, "build/test_cli/eval_mixed_report", 2);
    if (images) {
        double n = -1;
        int has = json_get_number(json_get(json_get(&doc.root, "summary"), "colourfulness"), "images", &n);
        check_true(has && n == 1, "the colourfulness mean is over 1 image (%g)", n);
        json_free(&doc);
    }
    snprintf(cmd, sizeof(cmd), "%s eval --images build/test_cli/eval_allbad --out build/test_cli/eval_allbad/report", sdxl_bin());
    status = run(cmd, out, sizeof(out));
    const char* line = last_line(out);
    check_true(status != 0 && strncmp(line, "error: build/test_cli/eval_allbad: none of the 1 image could be read", 68) == 0,
               "no image readable: exit %d, %s", status, line);
}

// README.md holds the `sdxl generate --help` and `sdxl eval --help` outputs between marker lines;
// they must be current.
// `sdxl --help` lists every command (bench train included) and every command's --help exits 0.
static void test_cli_help_lists_every_command(void) {
    if (!have_binary()) return;
    char cmd[4096], out[16384];
    snprintf(cmd, sizeof(cmd), "%s --help", sdxl_bin());
    int status = run(cmd, out, sizeof(out));
    const char* listed[] = {"generate", "train", "eval", "demo", "info", "bench matmul", "bench unet", "bench generate", "bench train",
                            "verify unet"};
    int all = status == 0;
    for (size_t i = 0; i < sizeof(listed) / sizeof(listed[0]); i++) {
        char want[64];
        snprintf(want, sizeof(want), "  %s ", listed[i]);
        if (!strstr(out, want)) all = check_true(0, "sdxl --help lists '%s'", listed[i]);
    }
    check_true(all, "sdxl --help exits 0 and lists every command");
    const char* commands[] = {"generate", "train", "eval", "demo", "bench", "bench matmul", "bench unet", "bench generate",
                              "bench train", "verify"};
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        snprintf(cmd, sizeof(cmd), "%s %s --help", sdxl_bin(), commands[i]);
        status = run(cmd, out, sizeof(out));
        check_true(status == 0 && strstr(out, "usage: sdxl"), "sdxl %s --help exits 0 with its usage (exit %d)", commands[i], status);
    }
}

static void test_cli_readme_help_is_current(void) {
    if (!have_binary()) return;
    uint8_t* readme;
    size_t size;
    char err[ERR_MAX], out[16384];
    if (!check_true(read_file("README.md", &readme, &size, err) == 0, "read README.md: %s", err)) return;
    const char* commands[3] = {"generate", "train", "eval"};
    for (int c = 0; c < 3; c++) {
        char begin_mark[64], end_mark[64], cmd[64];
        snprintf(begin_mark, sizeof(begin_mark), "<!-- %s-help-begin -->\n```\n", commands[c]);
        snprintf(end_mark, sizeof(end_mark), "```\n<!-- %s-help-end -->", commands[c]);
        const char* begin = strstr((char*)readme, begin_mark);
        const char* end = begin ? strstr(begin, end_mark) : NULL;
        if (!check_true(begin && end, "README.md has the %s --help block", commands[c])) continue;
        begin += strlen(begin_mark);
        snprintf(cmd, sizeof(cmd), "%s %s --help", sdxl_bin(), commands[c]);
        int status = run(cmd, out, sizeof(out));
        size_t n = (size_t)(end - begin);
        check_true(status == 0 && strlen(out) == n && memcmp(out, begin, n) == 0,
                   "README's block equals `sdxl %s --help` (update README.md if not)", commands[c]);
    }
    free(readme);
}

const TestCase tests_cli[] = {
    {"cli_bad_arguments_one_line", test_cli_bad_arguments_one_line},
    {"cli_fails_before_loading", test_cli_fails_before_loading},
    {"cli_generate_writes_png", test_cli_generate_writes_png},
    {"cli_prompts_file_reuses_model", test_cli_prompts_file_reuses_model},
    {"cli_train_end_to_end", test_cli_train_end_to_end},
    {"cli_generate_full_seed_range", test_cli_generate_full_seed_range},
    {"cli_eval_writes_reports", test_cli_eval_writes_reports},
    {"cli_eval_unreadable_images", test_cli_eval_unreadable_images},
    {"cli_help_lists_every_command", test_cli_help_lists_every_command},
    {"cli_readme_help_is_current", test_cli_readme_help_is_current},
    {NULL, NULL},
};
