// data.c: training data for the LoRA trainer. See data.h.
//
// Mirrors, as read in the installed versions: datasets' imagefolder (metadata.jsonl with
// file_name), diffusers examples/text_to_image/train_text_to_image_lora_sdxl.py preprocess_train
// (torchvision Resize -> flip -> RandomCrop / centre crop -> ToTensor -> Normalize([0.5], [0.5])),
// torchvision's resize size rule (_compute_resized_output_size: the shorter side becomes `size`,
// the longer int(size * long / short)), kohya-ss sd-scripts library/model_util.py
// make_bucket_resolutions and library/train_util.py BucketManager.select_bucket.
#include "data.h"

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

// ----------------------------------------------------------------------------
// The imagefolder

static int is_file(const char* path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

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

int dataset_open(Dataset* d, const char* root, const char* caption_column, int skip_bad, char* err) {
    memset(d, 0, sizeof(*d));
    snprintf(d->root, sizeof(d->root), "%s", root);
    // metadata.jsonl at the root, or in the train split's folder
    char meta[4400], folder[4200];
    snprintf(folder, sizeof(folder), "%s", root);
    snprintf(meta, sizeof(meta), "%s/metadata.jsonl", folder);
    if (!is_file(meta)) {
        snprintf(folder, sizeof(folder), "%s/train", root);
        snprintf(meta, sizeof(meta), "%s/metadata.jsonl", folder);
        if (!is_file(meta))
            return set_error(err, "%s: no metadata.jsonl (an imagefolder needs one line {\"file_name\": ..., \"%s\": ...} per "
                                  "image, at the top or in train/)", root, caption_column);
    }
    uint8_t* text;
    size_t size;
    if (read_file(meta, &text, &size, err) != 0) return -1;
    int cap = 64, line_no = 0, rc = 0;
    d->items = xmalloc(sizeof(DataItem) * cap);
    char* save = NULL;
    // lines one by one; strtok_r would merge empty lines, which is fine (JSON Lines allows them)
    for (char* line = strtok_r((char*)text, "\n", &save); line && rc == 0; line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        size_t len = strlen(line);
        while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t')) line[--len] = 0;
        if (len == 0) continue;
        JsonDoc doc;
        char jerr[ERR_MAX];
        if (json_parse(&doc, line, len, jerr) != 0) {
            rc = bad_line(d, skip_bad, err, "%s line %d: not JSON (%s)", meta, line_no, jerr);
            continue;
        }
        const char* file = json_get_string(&doc.root, "file_name");
        const char* caption = json_get_string(&doc.root, caption_column);
        char path[8400];
        if (doc.root.type != JSON_OBJECT) {
            rc = bad_line(d, skip_bad, err, "%s line %d: not a JSON object", meta, line_no);
        } else if (!file || !file[0]) {
            rc = bad_line(d, skip_bad, err, "%s line %d: no \"file_name\" string", meta, line_no);
        } else if (!caption) {
            rc = bad_line(d, skip_bad, err, "%s line %d: no \"%s\" string (the caption column; --caption-column names another)",
                          meta, line_no, caption_column);
        } else if (snprintf(path, sizeof(path), "%s/%s", folder, file), !is_file(path)) {
            rc = bad_line(d, skip_bad, err, "%s line %d: image '%s' not found", meta, line_no, path);
        } else {
            if (d->count == cap) d->items = xrealloc(d->items, sizeof(DataItem) * (cap *= 2));
            d->items[d->count].file = xstrdup(path);
            d->items[d->count].caption = xstrdup(caption);
            d->count++;
        }
        json_free(&doc);
    }
    free(text);
    if (rc == 0 && d->count == 0) rc = set_error(err, "%s: no usable lines (an imagefolder needs at least one image)", meta);
    if (rc != 0) dataset_free(d);
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
