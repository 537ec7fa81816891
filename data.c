// data.c: training data for the LoRA trainer. See data.h.
//
// Mirrors, as read in the installed versions: datasets' imagefolder (metadata.jsonl with
// file_name), diffusers examples/text_to_image/train_text_to_image_lora_sdxl.py preprocess_train
// (torchvision Resize -> flip -> RandomCrop / centre crop -> ToTensor -> Normalize([0.5], [0.5])),
// torchvision's resize size rule (_compute_resized_output_size: the shorter side becomes `size`,
// the longer int(size * long / short)), kohya-ss sd-scripts library/model_util.py
// make_bucket_resolutions and library/train_util.py BucketManager.select_bucket.
#include "data.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "image.h"
#include "jpeg.h"
#include "json.h"
#include "unicode.h"

// ----------------------------------------------------------------------------
// The imagefolder

// Leaves out a bad line (skip_bad) with a warning, or fails with the same message.
static int bad_line(Dataset* d, int skip_bad, char* err, const char* fmt, ...) __attribute__((format(printf, 4, 5)));
static int bad_line(Dataset* d, int skip_bad, char* err, const char* fmt, ...) {
    char msg[ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!skip_bad) return set_error(err, "%s", msg);
    fprintf(stderr, "warning: %s (skipped)\n", msg);
    d->skipped++;
    return 0;
}

// The image a file_name names, or why it may not be read. The name is relative to the metadata's
// folder and must stay inside it: not absolute, no ".." that climbs above the folder (a ".."
// that comes back down, "a/../b.png", is fine), and, unless follow_links, no symbolic link on
// the way that leads outside it (the resolved path must lie under the folder's resolved path).
// datasets itself joins the name with no check; a trainer that reads "../../etc/passwd" because
// a downloaded metadata.jsonl says so is a hole, not a feature.
static int resolve_file_name(const char* folder, const char* real_folder, const char* name, int follow_links, char* path,
                             size_t cap, char* why, size_t why_cap) {
    if (name[0] == '/') return snprintf(why, why_cap, "file_name '%s' is absolute; it must be relative to %s", name, folder), -1;
    int depth = 0;
    for (const char* p = name; *p;) {
        const char* end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.' && --depth < 0)
            return snprintf(why, why_cap, "file_name '%s' leaves the dataset folder %s ('..')", name, folder), -1;
        if (n > 0 && !(n == 1 && p[0] == '.') && !(n == 2 && p[0] == '.' && p[1] == '.')) depth++;
        p += n + (end != NULL);
    }
    if ((size_t)snprintf(path, cap, "%s/%s", folder, name) >= cap)
        return snprintf(why, why_cap, "file_name '%.64s...' is too long", name), -1;
    if (!path_is_file(path)) return snprintf(why, why_cap, "image '%.400s' not found", path), -1;
    if (!follow_links) {
        char* real = realpath(path, NULL);
        size_t n = strlen(real_folder);
        int inside = real && strncmp(real, real_folder, n) == 0 && (real[n] == '/' || (n == 1 && real_folder[0] == '/'));
        if (!inside) {
            snprintf(why, why_cap, "file_name '%s' leads outside the dataset folder %s through a symbolic link (to %s; "
                     "--follow-links allows it)", name, folder, real ? real : "?");
            free(real);
            return -1;
        }
        free(real);
    }
    return 0;
}

// A caption as the text encoders will get it: at most DATA_CAPTION_MAX_BYTES, and valid UTF-8,
// ill-formed bytes replaced by U+FFFD as Python's bytes.decode("utf-8", errors="replace") does
// (and as our tokenizer would read them anyway), so the cache key, the log and the encoders all
// see the same text. *replaced says whether anything was.
static char* caption_text(const JsonValue* v, int* replaced) {
    CodePoints cps = {0};
    utf8_decode(v->string, v->length, &cps);
    StrBuf b = {0};
    for (int i = 0; i < cps.n; i++) {
        char bytes[4];
        strbuf_append(&b, bytes, (size_t)utf8_encode(cps.v[i], bytes));
    }
    free(cps.v);
    if (!b.s) strbuf_cat(&b, "");
    *replaced = b.len != v->length || memcmp(b.s, v->string, b.len) != 0;
    return b.s;
}

int dataset_parse(Dataset* d, const char* text, size_t size, const char* meta, const char* folder, const DatasetOptions* o,
                  char* err) {
    memset(d, 0, sizeof(*d));
    char* real_folder = realpath(folder, NULL);
    if (!real_folder) return set_error(err, "%s: %s", folder, strerror(errno));
    int cap = 64, line_no = 0, rc = 0, invalid_utf8 = 0;
    d->items = xmalloc(sizeof(DataItem) * cap);
    // every line counts for the line numbers, empty ones included (JSON Lines allows them)
    for (const char* line = text; line < text + size && rc == 0;) {
        const char* nl = memchr(line, '\n', (size_t)(text + size - line));
        const char* next = nl ? nl + 1 : text + size;
        size_t len = (size_t)((nl ? nl : text + size) - line);
        line_no++;
        while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t')) len--;
        const char* this_line = line;
        line = next;
        if (len == 0) continue;
        JsonDoc doc;
        char jerr[ERR_MAX];
        if (json_parse(&doc, this_line, len, jerr) != 0) {
            rc = bad_line(d, o->skip_bad, err, "%s line %d: not JSON (%s)", meta, line_no, jerr);
            continue;
        }
        const JsonValue* file = json_get(&doc.root, "file_name");
        const JsonValue* caption = json_get(&doc.root, o->caption_column);
        char path[4096], why[ERR_MAX];
        if (doc.root.type != JSON_OBJECT) {
            rc = bad_line(d, o->skip_bad, err, "%s line %d: not a JSON object", meta, line_no);
        } else if (!file || file->type != JSON_STRING || !file->string[0]) {
            rc = bad_line(d, o->skip_bad, err, "%s line %d: no \"file_name\" string", meta, line_no);
        } else if (strlen(file->string) != file->length) {
            rc = bad_line(d, o->skip_bad, err, "%s line %d: \"file_name\" holds a NUL character", meta, line_no);
        } else if (!caption || caption->type != JSON_STRING) {
            rc = bad_line(d, o->skip_bad, err, "%s line %d: no \"%s\" string (the caption column; --caption-column names another)",
                          meta, line_no, o->caption_column);
        } else if (caption->length > DATA_CAPTION_MAX_BYTES) {
            rc = bad_line(d, o->skip_bad, err, "%s line %d: the caption is %zu bytes, above the limit of %d", meta, line_no,
                          caption->length, DATA_CAPTION_MAX_BYTES);
        } else if (resolve_file_name(folder, real_folder, file->string, o->follow_links, path, sizeof(path), why, sizeof(why))) {
            rc = bad_line(d, o->skip_bad, err, "%s line %d: %s", meta, line_no, why);
        } else {
            int replaced;
            char* text_ok = caption_text(caption, &replaced);
            if (replaced && ++invalid_utf8 <= 5)
                fprintf(stderr, "warning: %s line %d: the caption is not valid UTF-8; bad bytes read as U+FFFD\n", meta, line_no);
            if (d->count == cap) d->items = xrealloc(d->items, sizeof(DataItem) * (cap *= 2));
            d->items[d->count].file = xstrdup(path);
            d->items[d->count].caption = text_ok;
            d->count++;
        }
        json_free(&doc);
    }
    free(real_folder);
    if (invalid_utf8 > 5) fprintf(stderr, "warning: %s: %d captions in all were not valid UTF-8\n", meta, invalid_utf8);
    if (rc == 0 && d->count == 0) rc = set_error(err, "%s: no usable lines (an imagefolder needs at least one image)", meta);
    if (rc != 0) dataset_free(d);
    return rc;
}

int dataset_open(Dataset* d, const char* root, const DatasetOptions* o, char* err) {
    memset(d, 0, sizeof(*d));
    // metadata.jsonl at the root, or in the train split's folder
    char meta[4400], folder[4200];
    if (strlen(root) >= 4000) return set_error(err, "%.64s...: path too long", root);
    snprintf(folder, sizeof(folder), "%s", root);
    snprintf(meta, sizeof(meta), "%s/metadata.jsonl", folder);
    if (!path_is_file(meta)) {
        snprintf(folder, sizeof(folder), "%s/train", root);
        snprintf(meta, sizeof(meta), "%s/metadata.jsonl", folder);
        if (!path_is_file(meta))
            return set_error(err, "%s: no metadata.jsonl (an imagefolder needs one line {\"file_name\": ..., \"%s\": ...} per "
                                  "image, at the top or in train/)", root, o->caption_column);
    }
    uint8_t* text;
    size_t size;
    if (read_file(meta, &text, &size, err) != 0) return -1;
    int rc = dataset_parse(d, (const char*)text, size, meta, folder, o, err);
    free(text);
    if (rc == 0) snprintf(d->root, sizeof(d->root), "%s", root);
    return rc;
}

void dataset_free(Dataset* d) {
    for (int i = 0; i < d->count; i++) {
        free(d->items[i].file);
        free(d->items[i].caption);
    }
    free(d->items);
    memset(d, 0, sizeof(*d));
}

int image_load_rgb(Image* img, const char* path, char* err) {
    uint8_t* bytes;
    size_t size;
    if (read_file(path, &bytes, &size, err) != 0) return -1;
    Image decoded;
    int rc;
    if (jpeg_is_jpeg(bytes, size)) rc = jpeg_decode(&decoded, bytes, size, path, err);
    else if (size >= 8 && memcmp(bytes, "\x89PNG\r\n\x1a\n", 8) == 0) rc = png_decode(&decoded, bytes, size, path, err);
    else rc = set_error(err, "%s: not a PNG or JPEG file", path);
    free(bytes);
    if (rc != 0) return -1;
    rc = image_to_rgb8(&decoded, img, err);
    image_free(&decoded);
    return rc;
}

// ----------------------------------------------------------------------------
// Buckets (kohya: make_bucket_resolutions, BucketManager.select_bucket without no_upscale)

DataConfig data_config_default(void) {
    DataConfig c = {0};
    c.mode = DATA_BUCKETS;
    c.resolution = 1024;
    c.center_crop = 1;
    c.random_flip = 0;
    c.bucket_step = 64;
    c.bucket_min = 256;
    c.bucket_max = 2048;
    return c;
}

void data_bucket_for(const DataConfig* c, int w, int h, int* bucket_w, int* bucket_h) {
    // the bucket list: the square of about the same area, then every width from min to max in
    // steps, with the tallest height (a multiple of the step) that keeps the area, both ways round
    long area = (long)c->resolution * c->resolution;
    int s = c->bucket_step;
    double aspect = (double)w / h;
    int best_w = (int)(sqrt((double)area) / s) * s, best_h = best_w; // the square first
    double best_err = fabs((double)best_w / best_h - aspect);
    for (int bw = c->bucket_min; bw <= c->bucket_max; bw += s) {
        long hh = (area / bw) / s * s;
        int bh = (int)(hh < c->bucket_max ? hh : c->bucket_max);
        if (bh < c->bucket_min) continue;
        int cand[2][2] = {{bw, bh}, {bh, bw}};
        for (int k = 0; k < 2; k++) {
            double e = fabs((double)cand[k][0] / cand[k][1] - aspect);
            // kohya sorts the set of (w, h) and takes numpy's argmin (the first minimum): among
            // equal errors, the smaller width, then the smaller height
            if (e < best_err || (e == best_err && (cand[k][0] < best_w || (cand[k][0] == best_w && cand[k][1] < best_h)))) {
                best_err = e;
                best_w = cand[k][0];
                best_h = cand[k][1];
            }
        }
    }
    *bucket_w = best_w;
    *bucket_h = best_h;
}

// ----------------------------------------------------------------------------
// One example

static void flip_horizontal(Image* img) {
    uint8_t* p = img->data;
    int C = img->channels;
    for (int y = 0; y < img->height; y++) {
        uint8_t* row = p + (size_t)y * img->width * C;
        for (int x = 0; x < img->width / 2; x++)
            for (int c = 0; c < C; c++) {
                uint8_t t = row[x * C + c];
                row[x * C + c] = row[(img->width - 1 - x) * C + c];
                row[(img->width - 1 - x) * C + c] = t;
            }
    }
}

// An offset in [0, range]: the centre (Python's int(round(range / 2.0)): halves to even), or
// torch.randint(0, range + 1) as torchvision's RandomCrop.get_params draws it.
static int crop_offset(int range, int center, TorchGenerator* rng) {
    if (range <= 0) return 0;
    if (center) return (int)rint(range / 2.0);
    int64_t v;
    torch_randint(rng, &v, 1, 0, (int64_t)range + 1);
    return (int)v;
}

int data_draw_flip(const DataConfig* c, TorchGenerator* rng) {
    float u = 1.0f;
    if (c->random_flip) torch_rand(rng, &u, 1);
    return c->random_flip && u < 0.5f;
}

int dataset_example(const Dataset* d, int index, const DataConfig* c, TorchGenerator* rng, Example* ex, char* err) {
    int flipped = data_draw_flip(c, rng); // no draw comes before it, so drawing it first changes nothing
    return dataset_example_flipped(d, index, c, flipped, rng, ex, err);
}

int dataset_example_flipped(const Dataset* d, int index, const DataConfig* c, int flipped, TorchGenerator* rng,
                            Example* ex, char* err) {
    memset(ex, 0, sizeof(*ex));
    if (index < 0 || index >= d->count) return set_error(err, "dataset: item %d of %d", index, d->count);
    Image img;
    if (image_load_rgb(&img, d->items[index].file, err) != 0) return -1;
    int W0 = img.width, H0 = img.height;
    int target_w, target_h, rw, rh;
    if (c->mode == DATA_CROP) {
        // torchvision Resize(resolution): the shorter side to resolution, the longer truncated
        target_w = target_h = c->resolution;
        if (W0 <= H0) {
            rw = c->resolution;
            rh = (int)((double)c->resolution * H0 / W0);
        } else {
            rh = c->resolution;
            rw = (int)((double)c->resolution * W0 / H0);
        }
    } else {
        data_bucket_for(c, W0, H0, &target_w, &target_h);
        // scale to cover the bucket: match the height when the image is wider than the bucket
        double aspect = (double)W0 / H0, bucket_aspect = (double)target_w / target_h;
        double scale = aspect > bucket_aspect ? (double)target_h / H0 : (double)target_w / W0;
        rw = (int)(W0 * scale + 0.5);
        rh = (int)(H0 * scale + 0.5);
        rw = rw < target_w ? target_w : rw; // rounding can fall a pixel short of covering
        rh = rh < target_h ? target_h : rh;
    }
    Image resized;
    int rc = image_resize_pil(&img, rw, rh, RESAMPLE_LANCZOS, &resized, err);
    image_free(&img);
    if (rc != 0) return -1;
    // diffusers flips after the resize and before the crop; the crop offsets refer to the flipped image
    ex->flipped = flipped;
    if (ex->flipped) flip_horizontal(&resized);
    ex->crop_top = crop_offset(rh - target_h, c->center_crop, rng);
    ex->crop_left = crop_offset(rw - target_w, c->center_crop, rng);
    Image cropped;
    rc = image_crop(&resized, ex->crop_left, ex->crop_top, target_w, target_h, &cropped, err);
    image_free(&resized);
    if (rc != 0) return -1;
    // ToTensor (v / 255) then Normalize(mean 0.5, std 0.5): (v / 255 - 0.5) / 0.5
    const float mean[3] = {0.5f, 0.5f, 0.5f}, std[3] = {0.5f, 0.5f, 0.5f};
    ex->pixels = xmalloc(sizeof(float) * 3 * (size_t)target_w * target_h);
    image_to_chw_normalized(&cropped, mean, std, ex->pixels);
    image_free(&cropped);
    ex->width = target_w;
    ex->height = target_h;
    float ids[6] = {(float)H0, (float)W0, (float)ex->crop_top, (float)ex->crop_left, (float)target_h, (float)target_w};
    memcpy(ex->time_ids, ids, sizeof(ids));
    return 0;
}

void example_free(Example* ex) {
    free(ex->pixels);
    memset(ex, 0, sizeof(*ex));
}
