// tests/test_train.c: the LoRA trainer (train.c) and its data pipeline (data.c).
//
// Data: the imagefolder reader (metadata.jsonl, the caption column, one-line errors with line
// numbers, skipping with a warning when asked), kohya's bucket choice for SDXL sizes, and the
// preprocessed pixels of both modes against tests/golden/data (scripts/make_golden_data.py:
// torchvision's Resize(LANCZOS) + CenterCrop + ToTensor + Normalize for the diffusers-compatible
// mode, kohya's buckets with a PIL cover-resize and centre trim for the other).
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common.h"
#include "../data.h"
#include "../image.h"
#include "../ops.h"
#include "../train.h"
#include "check.h"

#define WORK_DIR "build/test_train"

static void write_text(const char* path, const char* text) {
    char err[ERR_MAX];
    if (write_file_atomic(path, text, strlen(text), err) != 0) check_true(0, "write %s: %s", path, err);
}

// One check for a call that returns 0 or -1 with err (the call runs before err is read).
static int ran_ok(int rc, const char* err, const char* label) { return check_true(rc == 0, "%s: %s", label, rc ? err : "ok"); }

static void test_data_imagefolder(void) {
    Dataset d;
    char err[ERR_MAX] = "";
    if (!ran_ok(dataset_open(&d, golden_path("data"), &(DatasetOptions){"text", 0, 0}, err), err, "open tests/golden/data"))
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
    int rc = dataset_open(&d, WORK_DIR "/ds", &(DatasetOptions){"prompt", 0, 0}, err);
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
        rc = dataset_open(&d, WORK_DIR "/ds", &(DatasetOptions){"prompt", 0, 0}, err);
        check_true(rc == -1 && strstr(err, bad[i].needle) && strstr(err, "metadata.jsonl") && !strchr(err, '\n'),
                   "bad metadata -> one line: %s", rc ? err : "(accepted)");
    }
    // skip_bad: the bad lines are left out with a warning, the good ones kept
    write_text(WORK_DIR "/ds/train/metadata.jsonl",
               "{\"file_name\": \"a.png\", \"prompt\": \"ok\"}\n{oops}\n{\"file_name\": \"gone.png\", \"prompt\": \"x\"}\n");
    rc = dataset_open(&d, WORK_DIR "/ds", &(DatasetOptions){"prompt", 1, 0}, err);
    check_true(rc == 0 && d.count == 1 && d.skipped == 2, "skip_bad keeps 1 line and skips 2 (%s)", rc ? err : "ok");
    if (rc == 0) dataset_free(&d);
    rc = dataset_open(&d, WORK_DIR "/no_such_folder", &(DatasetOptions){"text", 0, 0}, err);
    check_true(rc == -1 && strstr(err, "no_such_folder: no metadata.jsonl"), "a folder without metadata.jsonl: %s", err);
}

// A file_name must name a file inside the dataset folder: no absolute path, no ".." above the
// folder, no symbolic link out of it (unless follow_links); each is a one-line error naming the
// line, or a skipped line with skip_bad. Captions: a byte limit, and invalid UTF-8 replaced.
static void test_data_file_name_inside_folder(void) {
    char err[ERR_MAX] = "";
    Dataset d;
    mkdir("build", 0755);
    mkdir(WORK_DIR, 0755);
    const char* top = WORK_DIR "/inside";
    mkdir(top, 0755);
    mkdir(WORK_DIR "/inside/ds", 0755);
    mkdir(WORK_DIR "/inside/ds/sub", 0755);
    mkdir(WORK_DIR "/inside/outside", 0755);
    uint8_t* png;
    size_t size;
    char src[4200];
    snprintf(src, sizeof(src), "%s/square.png", golden_path("data"));
    if (!check_true(read_file(src, &png, &size, err) == 0, "read square.png")) return;
    write_file_atomic(WORK_DIR "/inside/ds/a.png", png, size, err);
    write_file_atomic(WORK_DIR "/inside/outside/secret.png", png, size, err);
    free(png);
    unlink(WORK_DIR "/inside/ds/link.png");
    unlink(WORK_DIR "/inside/ds/linkdir");
    unlink(WORK_DIR "/inside/ds/inlink.png");
    check_true(symlink("../outside/secret.png", WORK_DIR "/inside/ds/link.png") == 0 &&
                   symlink("../outside", WORK_DIR "/inside/ds/linkdir") == 0 &&
                   symlink("a.png", WORK_DIR "/inside/ds/inlink.png") == 0,
               "make the symbolic links");
    const char* meta = WORK_DIR "/inside/ds/metadata.jsonl";
    struct { const char* file_name; const char* needle; } bad[] = {
        {"../outside/secret.png", "leaves the dataset folder"},
        {"../../../../../../../../etc/passwd", "leaves the dataset folder"},
        {"sub/../../outside/secret.png", "leaves the dataset folder"},
        {"/etc/passwd", "is absolute"},
        {"link.png", "through a symbolic link"},
        {"linkdir/secret.png", "through a symbolic link"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char line[512];
        // a blank line first: the line number counts it
        snprintf(line, sizeof(line), "{\"file_name\": \"a.png\", \"text\": \"ok\"}\n\n{\"file_name\": \"%s\", \"text\": \"x\"}\n",
                 bad[i].file_name);
        write_text(meta, line);
        int rc = dataset_open(&d, WORK_DIR "/inside/ds", &(DatasetOptions){"text", 0, 0}, err);
        check_true(rc == -1 && strstr(err, "line 3:") && strstr(err, bad[i].needle) && !strchr(err, '\n'),
                   "file_name '%s' -> %s", bad[i].file_name, rc ? err : "(accepted)");
        if (rc == 0) dataset_free(&d);
        rc = dataset_open(&d, WORK_DIR "/inside/ds", &(DatasetOptions){"text", 1, 0}, err);
        check_true(rc == 0 && d.count == 1 && d.skipped == 1, "skip_bad leaves '%s' out", bad[i].file_name);
        if (rc == 0) dataset_free(&d);
    }
    // names that stay inside are fine, links inside the folder too; follow_links lets a link out
    write_text(meta, "{\"file_name\": \"sub/../a.png\", \"text\": \"1\"}\n{\"file_name\": \"./inlink.png\", \"text\": \"2\"}\n"
                     "{\"file_name\": \"link.png\", \"text\": \"3\"}\n{\"file_name\": \"linkdir/secret.png\", \"text\": \"4\"}\n");
    int rc = dataset_open(&d, WORK_DIR "/inside/ds", &(DatasetOptions){"text", 0, 1}, err);
    check_true(rc == 0 && d.count == 4, "inside names, and links out with follow_links: %s", rc ? err : "ok");
    if (rc == 0) dataset_free(&d);
    // captions: the byte limit, and ill-formed UTF-8 read as Python's errors="replace" does
    char* big = xmalloc(DATA_CAPTION_MAX_BYTES + 100);
    int n = snprintf(big, 64, "{\"file_name\": \"a.png\", \"text\": \"");
    memset(big + n, 'x', DATA_CAPTION_MAX_BYTES + 1);
    snprintf(big + n + DATA_CAPTION_MAX_BYTES + 1, 8, "\"}\n");
    write_text(meta, big);
    free(big);
    rc = dataset_open(&d, WORK_DIR "/inside/ds", &(DatasetOptions){"text", 0, 0}, err);
    check_true(rc == -1 && strstr(err, "line 1:") && strstr(err, "above the limit of 65536"), "a caption over the limit: %s",
               rc ? err : "(accepted)");
    if (rc == 0) dataset_free(&d);
    // bytes: a stray continuation byte, a truncated 3-byte sequence, an encoded surrogate
    write_text(meta, "{\"file_name\": \"a.png\", \"text\": \"a\x80" "b\xe2\x82 c\xed\xa0\x80" "d\"}\n");
    rc = dataset_open(&d, WORK_DIR "/inside/ds", &(DatasetOptions){"text", 0, 0}, err);
    // b'a\x80b\xe2\x82 c\xed\xa0\x80d'.decode('utf-8', 'replace') == 'a\ufffdb\ufffd c\ufffd\ufffd\ufffdd'
    const char* want = "a\xef\xbf\xbd" "b\xef\xbf\xbd c\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "d";
    check_true(rc == 0 && d.count == 1 && strcmp(d.items[0].caption, want) == 0, "invalid UTF-8 replaced: %s",
               rc ? err : d.items[0].caption);
    if (rc == 0) dataset_free(&d);
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
    if (!check_true(dataset_open(&d, golden_path("data"), &(DatasetOptions){"text", 0, 0}, err) == 0, "open: %s", err)) return;
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

// JPEG frames in a dataset: image_load_rgb decodes them (progressive, subsampled, grayscale) to
// the RGB Pillow's Image.open(...).convert("RGB") gives (the goldens' .png twins are Pillow's decode).
static void test_data_jpeg(void) {
    const char* names[] = {"pil_prog_420_45x53", "pil_q50_422_77x61", "pil_gray_prog_41x39"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char jpg[4200], png[4200], err[ERR_MAX] = "";
        snprintf(jpg, sizeof(jpg), "%s/%s.jpg", golden_path("jpeg"), names[i]);
        snprintf(png, sizeof(png), "%s/%s.png", golden_path("jpeg"), names[i]);
        Image got, ref, ref_rgb;
        if (!ran_ok(image_load_rgb(&got, jpg, err), err, names[i])) continue;
        if (!ran_ok(png_read(&ref, png, err), err, "Pillow's decode") || !ran_ok(image_to_rgb8(&ref, &ref_rgb, err), err, "as RGB"))
            continue;
        check_true(got.width == ref_rgb.width && got.height == ref_rgb.height && got.channels == 3,
                   "%s: %dx%d RGB", names[i], got.width, got.height);
        if (got.width == ref_rgb.width && got.height == ref_rgb.height)
            check_bytes_equal(names[i], got.data, ref_rgb.data, (size_t)3 * got.width * got.height);
        image_free(&got), image_free(&ref), image_free(&ref_rgb);
    }
}

// ----------------------------------------------------------------------------
// The trainer's arithmetic against diffusers + peft (scripts/make_golden_train.py)

static int load_tiny_unet(Unet* u, DType dt) {
    char err[ERR_MAX] = "";
    return check_true(unet_load(u, golden_path("tiny_sdxl/unet"), NULL, dt, err) == 0, "load the tiny UNet: %s", err);
}

static int64_t* golden_i64(const SafeTensors* st, const char* name, size_t* count) {
    const SafeTensor* t = safetensors_find(st, name);
    if (!check_true(t && t->dtype == DT_I64, "golden %s is I64", name)) return NULL;
    *count = safetensor_numel(t);
    int64_t* v = xmalloc(sizeof(int64_t) * *count);
    memcpy(v, t->data, sizeof(int64_t) * *count);
    return v;
}

// The module name of adapter i ("down_blocks.1....to_q"): its weight's name without ".weight".
static const char* module_name(const LoraTrainable* t, int i, char* buf) {
    snprintf(buf, NAME_MAX_LEN, "%.*s", (int)strlen(t->slots[i].name) - 7, t->slots[i].name);
    return buf;
}

// Sets every adapter's master A and B from golden tensors "<prefix_a>.<module>", "<prefix_b>.<module>".
static int set_params_from(LoraTrainable* t, const SafeTensors* g, const char* prefix_a, const char* prefix_b) {
    char module[NAME_MAX_LEN], key[NAME_MAX_LEN + 8];
    for (int i = 0; i < t->count; i++) {
        module_name(t, i, module);
        size_t nA, nB;
        snprintf(key, sizeof(key), "%s.%s", prefix_a, module);
        float* A = golden_f32(g, key, &nA);
        snprintf(key, sizeof(key), "%s.%s", prefix_b, module);
        float* B = golden_f32(g, key, &nB);
        if (!A || !B || nA != t->slots[i].offset_B - t->slots[i].offset_A) return 0;
        memcpy(t->params + t->slots[i].offset_A, A, sizeof(float) * nA);
        memcpy(t->params + t->slots[i].offset_B, B, sizeof(float) * nB);
        free(A);
        free(B);
    }
    lora_trainable_upload(t);
    return 1;
}

// Compares every adapter's f32 master (or gradient, when grads) with golden "<prefix>.<module>"
// tensors, all as one vector in the adapters' layout.
static int compare_with(const LoraTrainable* t, const float* got, const SafeTensors* g, const char* prefix_a,
                        const char* prefix_b, const char* label, float atol_scale, float rtol) {
    float* want = xcalloc(t->total, sizeof(float));
    char module[NAME_MAX_LEN], key[NAME_MAX_LEN + 8];
    for (int i = 0; i < t->count; i++) {
        module_name(t, i, module);
        size_t n;
        snprintf(key, sizeof(key), "%s.%s", prefix_a, module);
        float* a = golden_f32(g, key, &n);
        if (a) memcpy(want + t->slots[i].offset_A, a, sizeof(float) * n);
        free(a);
        if (!prefix_b) continue; // A only (B's stay 0 in both)
        snprintf(key, sizeof(key), "%s.%s", prefix_b, module);
        float* b = golden_f32(g, key, &n);
        if (b) memcpy(want + t->slots[i].offset_B, b, sizeof(float) * n);
        free(b);
    }
    float most = 0;
    for (size_t i = 0; i < t->total; i++) most = fabsf(want[i]) > most ? fabsf(want[i]) : most;
    int ok = check_close(label, got, want, t->total, atol_scale * most, rtol);
    if (!ok && getenv("DEBUG_ADAPTERS"))
        for (int i = 0; i < t->count; i++) {
            size_t end = t->slots[i].offset_B + (size_t)t->slots[i].out * t->slots[i].rank;
            double e = 0, m = 0;
            for (size_t k = t->slots[i].offset_A; k < end; k++) {
                e = fmax(e, fabs(got[k] - want[k]));
                m = fmax(m, fabs(want[k]));
            }
            if (e > 2e-5 * m) printf("    adapter %d %s: max err %.3g of max %.3g\n", i, t->slots[i].name, e, m);
        }
    free(want);
    return ok;
}

static TrainObjective golden_objective(void) {
    TrainObjective o = train_objective_default();
    o.grad_accum = 1;
    o.loss_scaling = 0;
    return o;
}

static void test_lora_init_matches_peft(void) {
    Unet u;
    if (!load_tiny_unet(&u, DT_F32)) return;
    SafeTensors g;
    if (!golden_open(&g, "train/init.safetensors")) return;
    TorchGenerator rng;
    torch_manual_seed(&rng, 1234);
    LoraTrainable t;
    LoraTrainConfig c = {4, 4.0f, UNET_LORA_ATTENTION, 0, 0.0f};
    char err[ERR_MAX] = "";
    if (check_true(lora_trainable_attach(&t, &u, &c, &rng, 1024, err) == 0, "attach: %s", err)) {
        check_true(t.count == 176, "176 adapted layers in the tiny UNet (8 per transformer block), got %d", t.count);
        // A as peft draws it (exactly), B = 0
        float* got_a = xcalloc(t.total, sizeof(float));
        float* want = xcalloc(t.total, sizeof(float));
        char module[NAME_MAX_LEN], key[NAME_MAX_LEN + 8];
        for (int i = 0; i < t.count; i++) {
            size_t n;
            memcpy(got_a + t.slots[i].offset_A, t.params + t.slots[i].offset_A, sizeof(float) * (t.slots[i].offset_B - t.slots[i].offset_A));
            snprintf(key, sizeof(key), "A.%s", module_name(&t, i, module));
            float* a = golden_f32(&g, key, &n);
            if (a) memcpy(want + t.slots[i].offset_A, a, sizeof(float) * n);
            free(a);
        }
        check_bytes_equal("A ~ N(0, 1/r) drawn as peft draws it (torch.manual_seed(1234))", got_a, want, sizeof(float) * t.total);
        int b_zero = 1;
        for (int i = 0; i < t.count; i++)
            for (size_t k = t.slots[i].offset_B; k < t.slots[i].offset_B + (size_t)t.slots[i].out * t.slots[i].rank; k++) b_zero &= t.params[k] == 0.0f;
        check_true(b_zero, "every B starts at 0");
        free(got_a);
        free(want);
        lora_trainable_detach(&t);
    }
    safetensors_close(&g);
    unet_free(&u);
}

// A golden's UNet inputs for micro-batches: latents, noise, timesteps, text states, pooled text,
// time ids (the gradient and trajectory goldens share these names).
typedef struct {
    float *latents, *noise, *context, *pooled, *time_ids;
    int64_t* t;
} GoldenInputs;

static int golden_inputs_read(const SafeTensors* g, GoldenInputs* in) {
    size_t n;
    in->latents = golden_f32(g, "latents", &n);
    in->noise = golden_f32(g, "noise", &n);
    in->context = golden_f32(g, "context", &n);
    in->pooled = golden_f32(g, "pooled", &n);
    in->time_ids = golden_f32(g, "time_ids", &n);
    in->t = golden_i64(g, "timesteps", &n);
    return in->latents && in->noise && in->context && in->pooled && in->time_ids && in->t;
}

static void golden_inputs_free(GoldenInputs* in) {
    free(in->latents), free(in->noise), free(in->context), free(in->pooled), free(in->time_ids), free(in->t);
}

// One micro-batch's loss and LoRA gradients against peft autograd; the same with gradient
// checkpointing (bit-identical: the same ops on the same inputs), and with the UNet in f16.
static void check_grads(const char* golden, LoraTrainConfig lc, PredictionType pred, float snr_gamma) {
    SafeTensors g;
    if (!golden_open(&g, golden)) return;
    GoldenInputs in;
    size_t n;
    float* loss_want = golden_f32(&g, "loss", &n);
    if (!golden_inputs_read(&g, &in) || !loss_want) return;
    MicroBatch b = {in.latents, in.noise, in.t, in.context, in.pooled, in.time_ids, 2, 10, 14, 77};
    TrainObjective obj = golden_objective();
    obj.prediction = pred;
    obj.snr_gamma = snr_gamma;
    float* grads_f32 = NULL;
    DType dts[2] = {DT_F32, DT_F16};
    for (int variant = 0; variant < 3; variant++) {
        DType dt = dts[variant == 2];
        int checkpointing = variant == 1;
        Unet u;
        if (!load_tiny_unet(&u, dt)) break;
        Trainer tr;
        TorchGenerator rng;
        torch_manual_seed(&rng, 0);
        char err[ERR_MAX] = "", label[160];
        if (!check_true(trainer_init(&tr, &u, &lc, &rng, &obj, checkpointing, 2, 10, 14, 77, 2 * 10 * 14 + 2 * 77, err) == 0,
                        "trainer: %s", err)) {
            unet_free(&u);
            break;
        }
        NoiseSchedule ns;
        SchedulerConfig sc;
        scheduler_config_sdxl(&sc);
        noise_schedule_init(&ns, &sc);
        tr.noise = ns;
        if (variant == 0) { // the golden's A are peft's init after torch.manual_seed(seed): ours must be those
            TorchGenerator seeded;
            torch_manual_seed(&seeded, (uint64_t)atoll(safetensors_metadata(&g, "seed") ? safetensors_metadata(&g, "seed") : "0"));
            lora_trainable_detach(&tr.lora);
            if (ran_ok(lora_trainable_attach(&tr.lora, &u, &lc, &seeded, 2 * 10 * 14 + 2 * 77, err), err, "attach with the golden's seed")) {
                float* got_a = xcalloc(tr.lora.total, sizeof(float));
                for (int i = 0; i < tr.lora.count; i++)
                    memcpy(got_a + tr.lora.slots[i].offset_A, tr.lora.params + tr.lora.slots[i].offset_A,
                           sizeof(float) * (tr.lora.slots[i].offset_B - tr.lora.slots[i].offset_A));
                snprintf(label, sizeof(label), "%s: A exactly as peft initialises it, %d adapters", golden, tr.lora.count);
                compare_with(&tr.lora, got_a, &g, "A", NULL, label, 0.0f, 0.0f);
                free(got_a);
            }
        }
        if (set_params_from(&tr.lora, &g, "A", "B")) {
            float loss = trainer_micro_step(&tr, &b);
            float* grads = xmalloc(sizeof(float) * tr.lora.total);
            copy_to_host(grads, tr.lora.grads, sizeof(float) * tr.lora.total);
            const char* what = variant == 0 ? "f32" : variant == 1 ? "f32, checkpointing" : "f16 UNet";
            snprintf(label, sizeof(label), "%s: loss (%s)", golden, what);
            check_close(label, &loss, loss_want, 1, 0, variant == 2 ? 2e-3f : 2e-6f);
            snprintf(label, sizeof(label), "%s: LoRA gradients (%s)", golden, what);
            if (variant == 0) {
                // the reference is float64 autograd; f32 cannot promise more than torch's own f32
                // run reaches (torch_f32_error, relative to the largest gradient): allow 3 times that
                const char* e = safetensors_metadata(&g, "torch_f32_error");
                float scale = fmaxf(1e-5f, 3.0f * (e ? (float)atof(e) : 0.0f));
                printf("  torch's f32 gradients are %s of the largest away from float64; allowing %.2g\n", e ? e : "?", scale);
                compare_with(&tr.lora, grads, &g, "gA", "gB", label, scale, 1e-4f);
                grads_f32 = grads;
                grads = NULL;
            } else if (variant == 1) {
                check_bytes_equal(label, grads, grads_f32, sizeof(float) * tr.lora.total);
            } else {
                // f16 rounds every activation to 11 bits: elementwise agreement is not the
                // question, direction and size are. The vector's relative L2 error against the
                // float64 reference, within 8192 (the f16/f32 rounding ratio) times torch's f32 one,
                // at least 1%.
                double num = 0, den = 0, dot = 0, gg = 0;
                for (size_t k = 0; k < tr.lora.total; k++) {
                    num += ((double)grads[k] - grads_f32[k]) * ((double)grads[k] - grads_f32[k]);
                    den += (double)grads_f32[k] * grads_f32[k];
                    dot += (double)grads[k] * grads_f32[k];
                    gg += (double)grads[k] * grads[k];
                }
                const char* e = safetensors_metadata(&g, "torch_f32_error");
                double allowed = fmax(0.01, 8192.0 * (e ? atof(e) : 0.0));
                double rel = sqrt(num / den), cosine = dot / sqrt(gg * den);
                check_true(rel <= allowed && cosine > 1 - allowed, "%s: relative L2 error %.3g (<= %.3g), cosine %.6f", label,
                           rel, allowed, cosine);
            }
            free(grads);
            arena_report(&tr.act);
        }
        trainer_free(&tr);
        unet_free(&u);
    }
    free(grads_f32);
    golden_inputs_free(&in);
    free(loss_want);
    safetensors_close(&g);
}

static void test_lora_grads_attention(void) {
    check_grads("train/grads_attention.safetensors", (LoraTrainConfig){4, 4.0f, UNET_LORA_ATTENTION, 0, 0.0f}, PREDICT_EPSILON, 0.0f);
}

static void test_lora_grads_transformer(void) {
    check_grads("train/grads_transformer.safetensors", (LoraTrainConfig){4, 8.0f, UNET_LORA_TRANSFORMER, 0, 0.0f}, PREDICT_V, 5.0f);
}

// kohya's conv_dim set: every resnet conv (3x3 at rank 8, alpha 4; the 1x1 shortcut at rank 4),
// every time_emb_proj and sampler conv, on top of the transformer set
static void test_lora_grads_convs(void) {
    check_grads("train/grads_convs.safetensors", (LoraTrainConfig){4, 4.0f, UNET_LORA_TRANSFORMER, 8, 4.0f}, PREDICT_EPSILON, 0.0f);
}

// Ten updates of the recipe (AdamW, two micro-batches per update, clipping at 1, a cosine schedule
// with two warmup steps) fed the golden's latents, noise and timesteps: every loss and the final
// weights against the same run in PyTorch.
static void test_trajectory(void) {
    SafeTensors g;
    if (!golden_open(&g, "train/trajectory.safetensors")) return;
    GoldenInputs in;
    size_t n;
    float* losses_want = golden_f32(&g, "losses", &n);
    Unet u;
    if (!golden_inputs_read(&g, &in) || !losses_want || !load_tiny_unet(&u, DT_F32)) return;
    TrainObjective obj = golden_objective();
    obj.grad_accum = 2;
    obj.adamw.lr = 1e-3;
    obj.schedule = LR_COSINE;
    obj.warmup_steps = 2;
    obj.total_steps = 10;
    LoraTrainConfig lc = {4, 4.0f, UNET_LORA_ATTENTION, 0, 0.0f};
    Trainer tr;
    TorchGenerator rng;
    torch_manual_seed(&rng, 0);
    char err[ERR_MAX] = "";
    if (check_true(trainer_init(&tr, &u, &lc, &rng, &obj, 0, 1, 10, 14, 77, 10 * 14 + 77, err) == 0, "trainer: %s", err) &&
        set_params_from(&tr.lora, &g, "A0", "B0")) {
        SchedulerConfig sc;
        scheduler_config_sdxl(&sc);
        noise_schedule_init(&tr.noise, &sc);
        float losses[20];
        size_t per = 4 * 10 * 14;
        for (int k = 0; k < 20; k++) {
            int c = k % 2;
            MicroBatch b = {in.latents + k * per, in.noise + k * per, in.t + k, in.context + (size_t)c * 77 * 96,
                            in.pooled + c * 32, in.time_ids + c * 6, 1, 10, 14, 77};
            losses[k] = trainer_micro_step(&tr, &b);
            if (k % 2 == 1) {
                UpdateInfo info;
                trainer_update(&tr, &info);
            }
        }
        check_close("20 micro-batch losses over 10 updates", losses, losses_want, 20, 0, 1e-5f);
        compare_with(&tr.lora, tr.lora.params, &g, "A", "B", "LoRA weights after 10 updates", 1e-5f, 1e-4f);
    }
    trainer_free(&tr);
    unet_free(&u);
    golden_inputs_free(&in);
    free(losses_want);
    safetensors_close(&g);
}

// ----------------------------------------------------------------------------
// Whole runs (train_run) on the tiny model: resume, cache, the LoRA file

#define RUN_DIR WORK_DIR "/runs"

// A dataset of the three golden frames (16:9, tall, square) under RUN_DIR/ds.
static int make_run_dataset(void) {
    char err[ERR_MAX] = "";
    if (!check_true(make_dirs(RUN_DIR "/ds", err) == 0, "make %s: %s", RUN_DIR "/ds", err)) return 0;
    const char* files[3] = {"wide.png", "tall.png", "square.png"};
    for (int i = 0; i < 3; i++) {
        char src[4200], dst[4200];
        uint8_t* data;
        size_t size;
        snprintf(src, sizeof(src), "%s/%s", golden_path("data"), files[i]);
        snprintf(dst, sizeof(dst), RUN_DIR "/ds/%s", files[i]);
        if (read_file(src, &data, &size, err) != 0 || write_file_atomic(dst, data, size, err) != 0)
            return check_true(0, "copy %s: %s", files[i], err);
        free(data);
    }
    write_text(RUN_DIR "/ds/metadata.jsonl",
               "{\"file_name\": \"wide.png\", \"text\": \"a man with an umbrella at night\"}\n"
               "{\"file_name\": \"tall.png\", \"text\": \"a tall doorway\"}\n"
               "{\"file_name\": \"square.png\", \"text\": \"a car, seen from above\"}\n");
    return 1;
}

// Small and fast, but every part of the recipe on: fp16 with loss scaling, buckets, flips,
// gradient accumulation, a cosine schedule with warmup, checkpoints.
static TrainConfig tiny_run(const char* out) {
    TrainConfig c = train_config_default();
    c.model = golden_path("tiny_sdxl");
    c.data = RUN_DIR "/ds";
    c.out = out;
    c.data_cfg.resolution = 128;
    c.data_cfg.bucket_min = 64;
    c.data_cfg.bucket_step = 32;
    c.data_cfg.random_flip = 1;
    c.obj.grad_accum = 2;
    c.obj.adamw.lr = 1e-3;
    c.obj.schedule = LR_COSINE;
    c.obj.warmup_steps = 2;
    c.max_steps = 5;
    c.checkpoint_every = 2;
    c.mixed_precision = "fp16";
    c.cache_dir = RUN_DIR "/cache";
    c.quiet = 1;
    return c;
}

// The CSV without its seconds column (the only thing two identical runs may differ in).
static char* csv_without_seconds(const char* path) {
    char** lines;
    int count;
    char err[ERR_MAX];
    if (read_lines(path, &lines, &count, err) != 0) return xstrdup("");
    StrBuf b = {0};
    for (int i = 0; i < count; i++) {
        // step,epoch,loss,lr,loss_scale,grad_norm,skipped,seconds,val_loss: drop field 8
        char* f = lines[i];
        int field = 0;
        for (char* p = f; *p; p++) {
            if (field != 7) strbuf_append(&b, p, 1);
            if (*p == ',') field++;
        }
        strbuf_cat(&b, "\n");
        free(lines[i]);
    }
    free(lines);
    return b.s ? b.s : xstrdup("");
}

// The resumed run's CSV log equals the uninterrupted one's, row for row (loss, lr, loss scale,
// grad norm, skips, validation), but for the seconds; both have a header and `steps` rows.
static void expect_same_log(const char* uninterrupted, const char* resumed, int steps) {
    char* a = csv_without_seconds(uninterrupted);
    char* b = csv_without_seconds(resumed);
    int rows = 0;
    for (char* p = a; *p; p++) rows += *p == '\n';
    check_true(rows == steps + 1 && strcmp(a, b) == 0, "resumed CSV equals the uninterrupted one (%d rows)", steps);
    if (strcmp(a, b) != 0) printf("uninterrupted:\n%s\nresumed:\n%s\n", a, b);
    free(a);
    free(b);
}

static int files_equal(const char* a, const char* b) {
    uint8_t *x, *y;
    size_t nx, ny;
    char err[ERR_MAX];
    if (read_file(a, &x, &nx, err) != 0) return 0;
    if (read_file(b, &y, &ny, err) != 0) return free(x), 0;
    int same = nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

static int count_files(const char* dir) {
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "ls -1 '%s' 2>/dev/null | wc -l", dir);
    FILE* p = popen(cmd, "r");
    int n = 0;
    if (p && fscanf(p, "%d", &n) != 1) n = 0;
    if (p) pclose(p);
    return n;
}

// A run stopped after 3 of 5 steps (its last checkpoint at step 2, a half-written one planted
// beside it) and resumed gives exactly the uninterrupted run: every CSV row and the LoRA's bytes.
static void test_resume_bit_exact(void) {
    if (!make_run_dataset()) return;
    system("rm -rf " RUN_DIR "/a* " RUN_DIR "/b* " RUN_DIR "/cache");
    char err[ERR_MAX] = "";
    TrainConfig a = tiny_run(RUN_DIR "/a.safetensors");
    if (!ran_ok(train_run(&a, err), err, "uninterrupted 5-step run")) return;
    TrainConfig b = tiny_run(RUN_DIR "/b.safetensors");
    b.stop_after = 3;
    if (!ran_ok(train_run(&b, err), err, "the same run stopped after 3 steps")) return;
    struct stat sb;
    check_true(stat(RUN_DIR "/b.safetensors", &sb) != 0 && stat(RUN_DIR "/b.safetensors.checkpoints/checkpoint-000002", &sb) == 0 &&
                   stat(RUN_DIR "/b.safetensors.checkpoints/checkpoint-000003", &sb) != 0,
               "stopped run: checkpoint 2 written, no step-3 checkpoint, no LoRA file");
    make_dirs(RUN_DIR "/b.safetensors.checkpoints/checkpoint-000004.partial", err); // a save that was cut short
    write_text(RUN_DIR "/b.safetensors.checkpoints/checkpoint-000004.partial/state.safetensors", "half");
    b.stop_after = 0;
    b.resume = "latest";
    if (!ran_ok(train_run(&b, err), err, "resume latest")) return;
    expect_same_log(RUN_DIR "/a.safetensors.csv", RUN_DIR "/b.safetensors.csv", 5);
    check_true(files_equal(RUN_DIR "/a.safetensors", RUN_DIR "/b.safetensors"), "resumed LoRA file is byte-identical");
    check_true(files_equal(RUN_DIR "/a.safetensors.checkpoints/checkpoint-000004/state.safetensors",
                           RUN_DIR "/b.safetensors.checkpoints/checkpoint-000004/state.safetensors"),
               "the step-4 checkpoints (AdamW moments, scaler, generators, data order) are byte-identical");
    // a checkpoint made with other settings is refused, naming the setting
    TrainConfig c = tiny_run(RUN_DIR "/b.safetensors");
    c.obj.adamw.lr = 2e-3;
    c.resume = "latest";
    int rc = train_run(&c, err);
    check_true(rc == -1 && strstr(err, "other settings") && strstr(err, "lr 0.001") && strstr(err, "lr 0.002") && !strchr(err, '\n'),
               "resume with another lr -> %s", rc ? err : "(accepted)");
}

// A checkpoint's state damaged in each way that would index past the data, the batch buffers or
// the generator's state, or feed the loss scaler nonsense, is refused with one line naming the
// file and what is wrong, before any step runs.
static void test_resume_refuses_damaged_state(void) {
    if (!make_run_dataset()) return;
    system("rm -rf " RUN_DIR "/e*");
    char err[ERR_MAX] = "";
    TrainConfig c = tiny_run(RUN_DIR "/e.safetensors");
    c.stop_after = 2;
    if (!ran_ok(train_run(&c, err), err, "a run stopped at its step-2 checkpoint")) return;
    const char* dir = RUN_DIR "/e.safetensors.checkpoints/checkpoint-000002";
    const char* state = RUN_DIR "/e.safetensors.checkpoints/checkpoint-000002/state.safetensors";
    const char* saved = RUN_DIR "/e_state.safetensors";
    uint8_t* data;
    size_t size;
    if (!ran_ok(read_file(state, &data, &size, err), err, "read the checkpoint")) return;
    write_file_atomic(saved, data, size, err);
    free(data);
    int64_t order_i8_data[1] = {0}, misc_bad[3] = {1, 5000, 0};
    int32_t sizes_big[1] = {1000};
    struct {
        const char* what;
        const char* meta_key;
        const char* meta_value;
        SafeTensorOut tensor;
        const char* needle;
    } cases[] = {
        {"batch_pos past the batches", "batch_pos", "99999", {NULL}, "\"batch_pos\""},
        {"a negative step", "step", "-5", {NULL}, "\"step\""},
        {"a step written as 1e9", "step", "1e9", {NULL}, "\"step\""},
        {"updates past the steps", "updates", "4294967312", {NULL}, "\"updates\""},
        {"a NaN loss scale", "scaler.scale", "nan", {NULL}, "\"scaler.scale\""},
        {"a batch of 1000", NULL, NULL, {"epoch.batch_sizes", DT_I32, 1, {1}, sizes_big}, "batch 0 has 1000 items"},
        {"the order as I8", NULL, NULL, {"epoch.order", DT_I8, 1, {1}, order_i8_data}, "epoch.order (I64)"},
        {"the generator past its state", NULL, NULL, {"rng.order.misc", DT_I64, 1, {3}, misc_bad}, "rng.order generator state"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (!safetensors_copy_edited(saved, state, cases[i].meta_key, cases[i].meta_value,
                                     cases[i].tensor.name ? &cases[i].tensor : NULL))
            continue;
        TrainConfig r = tiny_run(RUN_DIR "/e.safetensors");
        r.resume = dir;
        int rc = train_run(&r, err);
        printf("    %s -> %s\n", cases[i].what, rc ? err : "(resumed)");
        check_true(rc == -1 && strstr(err, state) && strstr(err, cases[i].needle) && !strchr(err, '\n'), "%s is refused",
                   cases[i].what);
    }
}

// `sdxl train` killed with SIGKILL at whatever point it has reached once its third checkpoint
// exists (mid-step, or mid-way through writing the next checkpoint, its log or its LoRA), then
// `--resume latest`, ends exactly as the uninterrupted run: every CSV row but the seconds, and the
// LoRA's bytes. The kill is real: the test checks that the process died of it before finishing.
#define KILL_RUN_ARGS                                                                                                  \
    "--data " RUN_DIR "/ds --resolution 128 --bucket-min 64 --bucket-step 32 --random-flip --grad-accum 2 --lr 1e-3 " \
    "--lr-scheduler cosine --lr-warmup-steps 2 --steps 10 --checkpoint-every 1 --checkpoints-keep 2 "                \
    "--mixed-precision fp16 --cache-dir " RUN_DIR "/cache --quiet"

// the runner's backend, passed on to the command (under --backend cuda the runs train on the GPU)
static const char* backend_arg(void) { return backend_current() == BACKEND_CUDA ? "--backend cuda" : ""; }

// The shell command of that run, writing `out` and its output to <out>.log ("exec " in front
// makes the shell become the trainer, so a signal reaches the trainer itself).
static void train_cli_command(char* cmd, size_t cap, const char* prefix, const char* out, const char* extra) {
    snprintf(cmd, cap, "%s%s train --model %s --out %s %s %s %s > %s.log 2>&1", prefix, sdxl_bin(), golden_path("tiny_sdxl"), out,
             KILL_RUN_ARGS, backend_arg(), extra, out);
}

static int run_train_cli(const char* out, const char* extra) {
    char cmd[16384];
    train_cli_command(cmd, sizeof(cmd), "", out, extra);
    int status = system(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void test_resume_after_sigkill(void) {
    struct stat sb;
    if (!check_true(stat(sdxl_bin(), &sb) == 0, "%s exists (make builds it beside tests/run_tests)", sdxl_bin())) return;
    if (!make_run_dataset()) return;
    system("rm -rf " RUN_DIR "/k*");
    if (!check_true(run_train_cli(RUN_DIR "/k_whole.safetensors", "") == 0, "uninterrupted 10-step run (see %s.log)",
                    RUN_DIR "/k_whole.safetensors"))
        return;
    char cmd[16384];
    train_cli_command(cmd, sizeof(cmd), "exec ", RUN_DIR "/k_killed.safetensors", "");
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char*)NULL);
        _exit(127);
    }
    if (!check_true(pid > 0, "fork")) return;
    const char* third = RUN_DIR "/k_killed.safetensors.checkpoints/checkpoint-000003";
    int status = 0, exited = 0;
    for (int waited_ms = 0; waited_ms < 300000 && !exited; waited_ms++) {
        if (stat(third, &sb) == 0) break;
        if (waitpid(pid, &status, WNOHANG) == pid) exited = 1;
        usleep(1000);
    }
    if (!exited) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    if (!check_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && stat(RUN_DIR "/k_killed.safetensors", &sb) != 0,
                    "the run was killed before it finished (no LoRA written)"))
        return;
    if (!check_true(run_train_cli(RUN_DIR "/k_killed.safetensors", "--resume latest") == 0, "resume latest (see %s.log)",
                    RUN_DIR "/k_killed.safetensors"))
        return;
    expect_same_log(RUN_DIR "/k_whole.safetensors.csv", RUN_DIR "/k_killed.safetensors.csv", 10);
    check_true(files_equal(RUN_DIR "/k_whole.safetensors", RUN_DIR "/k_killed.safetensors"),
               "the LoRA after the kill and resume is byte-identical");
    check_true(count_files(RUN_DIR "/k_killed.safetensors.checkpoints") == 2, "--checkpoints-keep 2: two checkpoints left");
}

// The trainer learns: 40 updates at a large learning rate on the three frames, with the same
// frames as the validation set (fixed noise and timesteps every time), lower the validation loss
// well below its value after the first update. (Every gradient is checked against peft above;
// this checks that the pieces together descend. Seen: 1.348 -> 0.981; a random tiny UNet's
// outputs start too large, so much of the descent is learning their scale.)
static void test_training_lowers_loss(void) {
    if (!make_run_dataset()) return;
    system("rm -rf " RUN_DIR "/v.*");
    char err[ERR_MAX] = "";
    TrainConfig c = tiny_run(RUN_DIR "/v.safetensors");
    c.mixed_precision = "no";
    c.obj.adamw.lr = 1e-2;
    c.obj.schedule = LR_CONSTANT;
    c.obj.warmup_steps = 0;
    c.max_steps = 40;
    c.checkpoint_every = 0;
    c.validation_data = RUN_DIR "/ds";
    c.validation_every = 1;
    if (!ran_ok(train_run(&c, err), err, "40-step run")) return;
    char** lines;
    int count;
    if (!check_true(read_lines(RUN_DIR "/v.safetensors.csv", &lines, &count, err) == 0, "CSV: %s", err)) return;
    float first = NAN, last = NAN;
    for (int i = 1; i < count; i++) {
        const char* v = strrchr(lines[i], ',');
        if (i == 1) first = strtof(v + 1, NULL);
        if (i == count - 1) last = strtof(v + 1, NULL);
    }
    free_lines(lines, count);
    check_true(count == 41 && isfinite(first) && isfinite(last) && last < 0.8f * first,
               "validation loss after 40 updates %.4f < 0.8 x after 1 update %.4f", last, first);
}

// The second run reads every latent and text embedding from the cache (no new entries) and trains
// to the same bytes as a run that caches nothing; another resolution makes new latent entries.
// Rewrites every latent entry of a cache folder wrongly but readably: by turns a (4, 1, 1) posterior
// and time_ids whose target size is 1e30. Returns how many it rewrote.
static int damage_latent_cache(const char* dir) {
    DIR* d = opendir(dir);
    if (!d) return 0;
    struct dirent* e;
    int n = 0;
    float tiny[4] = {0, 0, 0, 0}, ids[6] = {64, 64, 0, 0, 1e30f, 1e30f};
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "latents-", 8) != 0) continue;
        char path[4400], tmp[4400];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        snprintf(tmp, sizeof(tmp), "%s/damaged.tmp", dir);
        SafeTensorOut mean = {"mean", DT_F32, 3, {4, 1, 1}, tiny}, time_ids = {"time_ids", DT_F32, 1, {6}, ids};
        SafeTensorOut logvar = {"logvar", DT_F32, 3, {4, 1, 1}, tiny};
        int ok = n % 2 == 0 ? safetensors_copy_edited(path, tmp, NULL, NULL, &mean) &&
                                  safetensors_copy_edited(tmp, tmp, NULL, NULL, &logvar)
                            : safetensors_copy_edited(path, tmp, NULL, NULL, &time_ids);
        if (ok && rename(tmp, path) == 0) n++;
    }
    closedir(d);
    return n;
}

static void test_cache_reuse(void) {
    if (!make_run_dataset()) return;
    system("rm -rf " RUN_DIR "/cache " RUN_DIR "/c*");
    char err[ERR_MAX] = "";
    TrainConfig c = tiny_run(RUN_DIR "/c1.safetensors");
    c.max_steps = 2;
    c.checkpoint_every = 0;
    if (!ran_ok(train_run(&c, err), err, "first run")) return;
    int entries = count_files(RUN_DIR "/cache");
    check_true(entries == 3 + 6, "cache: 3 captions and 3 images x 2 flips = 9 entries (%d)", entries);
    c.out = RUN_DIR "/c2.safetensors";
    if (!ran_ok(train_run(&c, err), err, "second run")) return;
    check_true(count_files(RUN_DIR "/cache") == entries, "second run added no cache entries");
    check_true(files_equal(RUN_DIR "/c1.safetensors", RUN_DIR "/c2.safetensors"), "same LoRA from the cache");
    c.out = RUN_DIR "/c3.safetensors";
    c.no_cache = 1;
    if (!ran_ok(train_run(&c, err), err, "uncached run")) return;
    check_true(files_equal(RUN_DIR "/c1.safetensors", RUN_DIR "/c3.safetensors"), "same LoRA with --no-cache");
    c.no_cache = 0;
    // damaged latent entries (a size its time_ids do not encode to, a target size past any image)
    // are encoded again, not trusted: the same LoRA as from the good cache
    if (damage_latent_cache(RUN_DIR "/cache") == 6) {
        c.out = RUN_DIR "/c5.safetensors";
        if (!ran_ok(train_run(&c, err), err, "run on a damaged cache")) return;
        check_true(files_equal(RUN_DIR "/c1.safetensors", RUN_DIR "/c5.safetensors"), "same LoRA from a damaged cache");
    }
    c.data_cfg.resolution = 96;
    c.out = RUN_DIR "/c4.safetensors";
    if (!ran_ok(train_run(&c, err), err, "another resolution")) return;
    check_true(count_files(RUN_DIR "/cache") == entries + 6, "another resolution: 6 new latent entries, the captions reused");
}

// The written LoRA, loaded and merged at scale 1 (lora.c, as `sdxl generate --lora` does), gives the
// UNet output the live adapters gave in training; it moves generation with its strength, and the
// diffusers-format file merges to the same weights.
static void test_lora_file_roundtrip(void) {
    if (!make_run_dataset()) return;
    system("rm -rf " RUN_DIR "/d.* " RUN_DIR "/d_*");
    char err[ERR_MAX] = "";
    TrainConfig c = tiny_run(RUN_DIR "/d.safetensors");
    c.mixed_precision = "no";
    c.obj.adamw.lr = 1e-2; // large steps: B far from 0
    c.max_steps = 4;
    c.checkpoint_every = 0;
    c.out_diffusers = RUN_DIR "/d_diffusers.safetensors";
    c.lora.targets = UNET_LORA_TRANSFORMER;
    c.lora.alpha = 2.0f; // scale 1/2: the file's alpha must carry it
    c.lora.conv_rank = 8; // and kohya's convolutions, at another rank and scale (2/8)
    c.lora.conv_alpha = 2.0f;
    if (!ran_ok(train_run(&c, err), err, "train")) return;
    Lora kohya;
    if (!check_true(lora_load(&kohya, RUN_DIR "/d.safetensors", err) == 0, "load the kohya file: %s", err)) return;
    int convs = 0, scale_ok = 1;
    for (int m = 0; m < kohya.count; m++) {
        int is_conv = kohya.modules[m].down_dims == 4;
        convs += is_conv;
        int wide = is_conv && kohya.modules[m].down_shape[2] == 3;
        scale_ok &= fabs(kohya.modules[m].factor - (wide ? 0.25 : 0.5)) < 1e-9 && kohya.modules[m].rank == (wide ? 8 : 4);
    }
    check_true(kohya.format == LORA_KOHYA && kohya.count == 308 && convs == 49 && strcmp(kohya.network_dim, "4") == 0 &&
                   strcmp(kohya.network_alpha, "2") == 0 && scale_ok,
               "kohya format, 308 modules (49 convs: 34 resnet 3x3, 11 shortcuts, 4 samplers; 17 time projections), ss_network_dim 4, ss_network_alpha 2, alpha/rank 0.5 and 2/8 for 3x3 convs "
               "(%d modules, %d convs)", kohya.count, convs);
    // live adapters (the training forward) against the merged file, on one input
    Unet live, merged;
    if (!load_tiny_unet(&live, DT_F32) || !load_tiny_unet(&merged, DT_F32)) return;
    LoraTrainable t;
    TorchGenerator rng;
    torch_manual_seed(&rng, 0);
    // the adapters' values from the diffusers file, which has no alphas: alpha / rank is folded into
    // its up weights, so the live adapters run at scale 1 (alpha = rank)
    LoraTrainConfig lc = {4, 4.0f, UNET_LORA_TRANSFORMER, 8, 8.0f};
    if (!check_true(lora_trainable_attach(&t, &live, &lc, &rng, 2 * 12 * 20 + 2 * 77, err) == 0, "attach: %s", err)) return;
    Lora d1;
    if (check_true(lora_load(&d1, RUN_DIR "/d_diffusers.safetensors", err) == 0, "load the diffusers file: %s", err)) {
        check_true(d1.format == LORA_DIFFUSERS && d1.count == 308, "diffusers format, 308 modules");
        int found = 0;
        for (int i = 0; i < t.count; i++) {
            char module[NAME_MAX_LEN], key[NAME_MAX_LEN + 8];
            snprintf(key, sizeof(key), "unet.%s", module_name(&t, i, module));
            for (int m = 0; m < d1.count; m++)
                if (strcmp(d1.modules[m].name, key) == 0) {
                    memcpy(t.params + t.slots[i].offset_A, d1.modules[m].down, sizeof(float) * (t.slots[i].offset_B - t.slots[i].offset_A));
                    memcpy(t.params + t.slots[i].offset_B, d1.modules[m].up, sizeof(float) * t.slots[i].out * t.slots[i].rank);
                    found++;
                }
        }
        check_true(found == t.count, "every adapter in the diffusers file (%d of %d)", found, t.count);
        lora_trainable_upload(&t);
        lora_free(&d1);
    }
    if (check_true(lora_merge(&kohya, 1.0f, &merged, NULL, NULL, err) == 0, "merge the kohya file at 1: %s", err)) {
        int N = 1, h = 12, w = 20, L = 77;
        size_t n = (size_t)N * 4 * h * w;
        float *x = xmalloc(sizeof(float) * n), *ctx = xmalloc(sizeof(float) * L * 96), *pooled = xmalloc(sizeof(float) * 32);
        fill_uniform(x, n, 1, -1, 1);
        fill_uniform(ctx, (size_t)L * 96, 2, -1, 1);
        fill_uniform(pooled, 32, 3, -1, 1);
        float t_step = 500, ids[6] = {96, 160, 0, 0, 96, 160};
        float *out_live = xmalloc(sizeof(float) * n), *out_merged = xmalloc(sizeof(float) * n);
        Arena act; // on the device under --backend cuda, with the inputs and outputs
        arena_init(&act, "roundtrip", unet_activation_bytes(&live.cfg, N, h, w, L, live.w.dtype),
                   backend_current() == BACKEND_CUDA);
        float *d_x = to_backend(x, n), *d_ctx = to_backend(ctx, (size_t)L * 96), *d_pooled = to_backend(pooled, 32);
        float* d_out = backend_alloc(n);
        unet_forward(&live, d_out, d_x, &t_step, d_ctx, L, d_pooled, ids, N, h, w, &act);
        float* got = from_backend(d_out, n);
        memcpy(out_live, got, sizeof(float) * n);
        free(got);
        unet_forward(&merged, d_out, d_x, &t_step, d_ctx, L, d_pooled, ids, N, h, w, &act);
        got = from_backend(d_out, n);
        memcpy(out_merged, got, sizeof(float) * n);
        free(got);
        arena_free(&act);
        float most = 0;
        for (size_t i = 0; i < n; i++) most = fmaxf(most, fabsf(out_live[i]));
        check_close("UNet with the merged kohya file vs the live adapters", out_merged, out_live, n, 1e-5f * most, 1e-4f);
        free(x), free(ctx), free(pooled), free(out_live), free(out_merged);
    }
    lora_trainable_detach(&t);
    unet_free(&live);
    unet_free(&merged);
    // generation: strength 0 changes nothing, 0.4 something, 1 more
    SdxlModel m;
    float dist[3] = {0};
    uint8_t* base = NULL;
    size_t npx = 0;
    float scales[3] = {0.0f, 0.4f, 1.0f};
    for (int s = -1; s < 3; s++) {
        if (!check_true(sdxl_model_load(&m, golden_path("tiny_sdxl"), NULL, NULL, NULL, NULL, err) == 0, "model: %s", err)) break;
        if (s >= 0 && lora_merge(&kohya, scales[s], &m.unet, NULL, NULL, err) != 0) check_true(0, "merge: %s", err);
        GenerateParams gp = {0};
        gp.prompt = "a man with an umbrella at night";
        gp.negative = "";
        gp.width = 160, gp.height = 96, gp.steps = 4, gp.cfg = 5, gp.seed = 42, gp.sampler = SAMPLER_EULER, gp.quiet = 1;
        Image img;
        if (check_true(sdxl_generate(&m, &gp, &img, NULL, err) == 0, "generate: %s", err)) {
            npx = (size_t)img.width * img.height * 3;
            if (s < 0) {
                base = xmalloc(npx);
                memcpy(base, img.data, npx);
            } else {
                double sum = 0;
                for (size_t i = 0; i < npx; i++) sum += fabs((double)((uint8_t*)img.data)[i] - base[i]);
                dist[s] = (float)(sum / npx);
            }
            image_free(&img);
        }
        sdxl_model_free(&m);
    }
    check_true(dist[0] == 0 && dist[1] > 0.5f && dist[2] > dist[1], "image change with strength 0, 0.4, 1: %.3g, %.3g, %.3g (mean |d| of 8-bit)",
               dist[0], dist[1], dist[2]);
    free(base);
    lora_free(&kohya);
}

const TestCase tests_train[] = {
    {"train_data_imagefolder", test_data_imagefolder},
    {"train_data_file_name_inside_folder", test_data_file_name_inside_folder},
    {"train_data_buckets", test_data_buckets},
    {"train_data_examples", test_data_examples},
    {"train_data_jpeg", test_data_jpeg},
    {"train_lora_init_matches_peft", test_lora_init_matches_peft},
    {"train_lora_grads_attention", test_lora_grads_attention},
    {"train_lora_grads_transformer", test_lora_grads_transformer},
    {"train_lora_grads_convs", test_lora_grads_convs},
    {"train_trajectory", test_trajectory},
    {"train_resume_bit_exact", test_resume_bit_exact},
    {"train_resume_refuses_damaged_state", test_resume_refuses_damaged_state},
    {"train_resume_after_sigkill", test_resume_after_sigkill},
    {"train_training_lowers_loss", test_training_lowers_loss},
    {"train_cache_reuse", test_cache_reuse},
    {"train_lora_file_roundtrip", test_lora_file_roundtrip},
    {NULL, NULL},
};
