// tests/test_train.c: the LoRA trainer (train.c) and its data pipeline (data.c).
//
// Data: the imagefolder reader (metadata.jsonl, the caption column, one-line errors with line
// numbers, skipping with a warning when asked), kohya's bucket choice for SDXL sizes, and the
// preprocessed pixels of both modes against tests/golden/data (scripts/make_golden_data.py:
// torchvision's Resize(LANCZOS) + CenterCrop + ToTensor + Normalize for the diffusers-compatible
// mode, kohya's buckets with a PIL cover-resize and centre trim for the other).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common.h"
#include "../data.h"
#include "check.h"

#define WORK_DIR "build/test_train"

static void write_text(const char* path, const char* text) {
    char err[ERR_MAX];
    if (write_file_atomic(path, text, strlen(text), err) != 0) check_true(0, "write %s: %s", path, err);
}

static void test_data_imagefolder(void) {
    Dataset d;
    char err[ERR_MAX] = "";
    if (!check_true(dataset_open(&d, golden_path("data"), "text", 0, err) == 0, "open tests/golden/data: %s", err[0] ? err : "ok"))
        return;
    check_true(d.count == 3 && strstr(d.items[0].file, "wide.png") && strcmp(d.items[1].caption, "caption 1: a tall frame") == 0,
               "3 items, files and captions in metadata order");
    dataset_free(&d);
    // another caption column, a train/ split folder, and every kind of bad line
    mkdir("build", 0755);
    mkdir(WORK_DIR, 0755);
    mkdir(WORK_DIR "/ds", 0755);
    mkdir(WORK_DIR "/ds/train", 0755);
    char src[4200], dst[4200];
    uint8_t* png;
    size_t size;
    snprintf(src, sizeof(src), "%s/square.png", golden_path("data"));
    if (!check_true(read_file(src, &png, &size, err) == 0, "read square.png")) return;
    snprintf(dst, sizeof(dst), WORK_DIR "/ds/train/a.png");
    write_file_atomic(dst, png, size, err);
    free(png);
    write_text(WORK_DIR "/ds/train/metadata.jsonl",
               "{\"file_name\": \"a.png\", \"prompt\": \"first\"}\n\n{\"file_name\": \"a.png\", \"prompt\": \"second\"}\r\n");
    int rc = dataset_open(&d, WORK_DIR "/ds", "prompt", 0, err);
    check_true(rc == 0 && d.count == 2 && strcmp(d.items[1].caption, "second") == 0,
               "train/metadata.jsonl, --caption-column prompt, a blank line and CRLF: %s", rc ? err : "ok");
    if (rc == 0) dataset_free(&d);
    struct { const char* line; const char* needle; } bad[] = {
        {"{\"file_name\": \"a.png\", \"prompt\": \"ok\"}\n{\"file_name\": \"a.png\"\n", "line 2: not JSON"},
        {"[1, 2]\n", "line 1: not a JSON object"},
        {"{\"prompt\": \"no file\"}\n", "line 1: no \"file_name\""},
        {"{\"file_name\": \"a.png\", \"text\": \"wrong column\"}\n", "line 1: no \"prompt\" string"},
        {"{\"file_name\": \"missing.png\", \"prompt\": \"x\"}\n", "missing.png' not found"},
        {"", "no usable lines"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_text(WORK_DIR "/ds/train/metadata.jsonl", bad[i].line);
        rc = dataset_open(&d, WORK_DIR "/ds", "prompt", 0, err);
        check_true(rc == -1 && strstr(err, bad[i].needle) && strstr(err, "metadata.jsonl") && !strchr(err, '\n'),
                   "bad metadata -> one line: %s", rc ? err : "(accepted)");
    }
    // skip_bad: the bad lines are left out with a warning, the good ones kept
    write_text(WORK_DIR "/ds/train/metadata.jsonl",
               "{\"file_name\": \"a.png\", \"prompt\": \"ok\"}\n{oops}\n{\"file_name\": \"gone.png\", \"prompt\": \"x\"}\n");
    rc = dataset_open(&d, WORK_DIR "/ds", "prompt", 1, err);
    check_true(rc == 0 && d.count == 1 && d.skipped == 2, "skip_bad keeps 1 line and skips 2 (%s)", rc ? err : "ok");
    if (rc == 0) dataset_free(&d);
    rc = dataset_open(&d, WORK_DIR "/no_such_folder", "text", 0, err);
    check_true(rc == -1 && strstr(err, "no_such_folder: no metadata.jsonl"), "a folder without metadata.jsonl: %s", err);
}

static void test_data_buckets(void) {
    SafeTensors g;
    if (!golden_open(&g, "data/data_ref.safetensors")) return;
    int maxes[2] = {2048, 1024};
    for (int m = 0; m < 2; m++) {
        char name[64];
        snprintf(name, sizeof(name), "buckets_max%d", maxes[m]);
        const SafeTensor* t = safetensors_find(&g, name);
        if (!check_true(t && t->dtype == DT_I32 && t->rank == 2, "golden %s", name)) continue;
        const int32_t* rows = (const int32_t*)t->data;
        DataConfig c = data_config_default();
        c.bucket_max = maxes[m];
        int wrong = 0;
        for (int64_t r = 0; r < t->shape[0]; r++) {
            int bw, bh;
            data_bucket_for(&c, rows[4 * r], rows[4 * r + 1], &bw, &bh);
            if (bw != rows[4 * r + 2] || bh != rows[4 * r + 3]) {
                if (wrong++ < 3) printf("    %dx%d -> %dx%d, kohya %dx%d\n", rows[4 * r], rows[4 * r + 1], bw, bh, rows[4 * r + 2], rows[4 * r + 3]);
            }
        }
        check_true(wrong == 0, "kohya's bucket for %lld image sizes at 1024, max side %d (%d differ)", (long long)t->shape[0],
                   maxes[m], wrong);
    }
    DataConfig c = data_config_default();
    int bw, bh;
    data_bucket_for(&c, 1365, 768, &bw, &bh);
    check_true(bw == 1344 && bh == 768, "a 1365x768 storyboard frame trains at 1344x768 (got %dx%d)", bw, bh);
    safetensors_close(&g);
}

static void test_data_examples(void) {
    SafeTensors g;
    Dataset d;
    char err[ERR_MAX] = "";
    if (!golden_open(&g, "data/data_ref.safetensors")) return;
    if (!check_true(dataset_open(&d, golden_path("data"), "text", 0, err) == 0, "open: %s", err)) return;
    const char* names[3] = {"wide.png", "tall.png", "square.png"};
    int sizes[3][2] = {{91, 51}, {40, 62}, {48, 48}};
    for (int i = 0; i < 3; i++) {
        TorchGenerator rng;
        torch_manual_seed(&rng, 0);
        DataConfig c = data_config_default();
        c.mode = DATA_CROP;
        c.resolution = 32;
        Example ex;
        char key[64];
        if (!check_true(dataset_example(&d, i, &c, &rng, &ex, err) == 0, "example %s: %s", names[i], err)) continue;
        snprintf(key, sizeof(key), "%s.crop", names[i]);
        float* want = golden_f32(&g, key, NULL);
        // torchvision and we both resize with Pillow's LANCZOS and divide by 255 in f32: exact
        if (want) check_close(key, ex.pixels, want, 3 * 32 * 32, 0.0f, 0.0f);
        free(want);
        int W = sizes[i][0], H = sizes[i][1];
        int rw = W <= H ? 32 : (int)(32.0 * W / H), rh = W <= H ? (int)(32.0 * H / W) : 32;
        float ids[6] = {(float)H, (float)W, (float)(int)rint((rh - 32) / 2.0), (float)(int)rint((rw - 32) / 2.0), 32, 32};
        check_true(memcmp(ex.time_ids, ids, sizeof(ids)) == 0, "%s time ids [%g %g %g %g %g %g] (original, centre crop, target)",
                   names[i], ex.time_ids[0], ex.time_ids[1], ex.time_ids[2], ex.time_ids[3], ex.time_ids[4], ex.time_ids[5]);
        example_free(&ex);
        // buckets at a small scale (resolution 32, steps of 8, sides 16..64)
        c.mode = DATA_BUCKETS;
        c.bucket_step = 8;
        c.bucket_min = 16;
        c.bucket_max = 64;
        if (!check_true(dataset_example(&d, i, &c, &rng, &ex, err) == 0, "bucket example %s: %s", names[i], err)) continue;
        snprintf(key, sizeof(key), "%s.bucket_size", names[i]);
        const SafeTensor* bs = safetensors_find(&g, key);
        int ok = bs && ((const int32_t*)bs->data)[0] == ex.width && ((const int32_t*)bs->data)[1] == ex.height;
        check_true(ok, "%s bucket %dx%d", names[i], ex.width, ex.height);
        snprintf(key, sizeof(key), "%s.bucket", names[i]);
        want = golden_f32(&g, key, NULL);
        if (want && ok) check_close(key, ex.pixels, want, 3 * (size_t)ex.width * ex.height, 0.0f, 0.0f);
        free(want);
        example_free(&ex);
    }
    // random crop and flip: drawn from the generator, so the same seed gives the same example
    DataConfig c = data_config_default();
    c.mode = DATA_CROP;
    c.resolution = 32;
    c.center_crop = 0;
    c.random_flip = 1;
    int flips = 0, lefts[2] = {-1, -1};
    for (int run = 0; run < 2; run++) {
        TorchGenerator rng;
        torch_manual_seed(&rng, 7);
        for (int k = 0; k < 8; k++) {
            Example ex;
            if (dataset_example(&d, 0, &c, &rng, &ex, err) != 0) break;
            flips += ex.flipped;
            if (k == 0) lefts[run] = ex.crop_left;
            check_true(ex.crop_left >= 0 && ex.crop_left <= (int)(32.0 * 91 / 51) - 32 && ex.crop_top == 0 &&
                           ex.time_ids[3] == (float)ex.crop_left,
                       "random crop left %d in [0, %d], in the time ids", ex.crop_left, (int)(32.0 * 91 / 51) - 32);
            example_free(&ex);
        }
    }
    check_true(lefts[0] == lefts[1] && flips > 0 && flips < 16, "random crops and flips repeat with the seed (%d flips in 16)", flips);
    dataset_free(&d);
    safetensors_close(&g);
}

const TestCase tests_train[] = {
    {"train_data_imagefolder", test_data_imagefolder},
    {"train_data_buckets", test_data_buckets},
    {"train_data_examples", test_data_examples},
    {NULL, NULL},
};
