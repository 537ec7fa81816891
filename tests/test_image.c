// tests/test_image.c: image.c against Pillow 13 and transformers, byte for byte
// (tests/golden/image/image_ref.safetensors, made by scripts/make_golden_image.py).
//
// Every comparison here is exact: Pillow's resampling is integer arithmetic after the
// coefficients, and we compute the coefficients with the same double-precision expressions, so
// there is no tolerance to state. A single differing byte fails.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../image.h"
#include "check.h"

static const char* GOLDEN = "image/image_ref.safetensors";

// The golden uint8 image `name` as an Image view (no copy; valid while st is open), or 0.
static int golden_image(const SafeTensors* st, const char* name, Image* img) {
    const SafeTensor* t = safetensors_find(st, name);
    memset(img, 0, sizeof(*img));
    if (!t || t->dtype != DT_U8 || t->rank != 3) return check_true(0, "golden uint8 (H, W, C) tensor '%s'", name);
    img->height = (int)t->shape[0];
    img->width = (int)t->shape[1];
    img->channels = (int)t->shape[2];
    img->depth = 8;
    img->data = (void*)t->data;
    return 1;
}

// The test image scripts/make_golden_image.py synthetic() computes: checkerboard, ramps, hash noise.
static uint8_t synthetic_pixel(uint32_t x, uint32_t y, uint32_t c, uint32_t w, uint32_t h) {
    uint32_t hsh = x * 374761393u + y * 668265263u + c * 2246822519u;
    hsh = (hsh ^ (hsh >> 13)) * 1274126177u;
    hsh ^= hsh >> 16;
    uint32_t v = ((x / 96 + y / 64) & 1) * 100 + x * 60 / w + y * 30 / h + c * 15 + (hsh & 63);
    return v > 255 ? 255 : (uint8_t)v;
}

// Exported for tests/test_clip_vision.c (the same image through CLIP's preprocessing).
void image_test_synthetic(Image* img, int w, int h) {
    memset(img, 0, sizeof(*img));
    img->width = w;
    img->height = h;
    img->channels = 3;
    img->depth = 8;
    uint8_t* p = xmalloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) p[((size_t)y * w + x) * 3 + c] = synthetic_pixel(x, y, c, w, h);
    img->data = p;
}

static int filter_from_name(const char* s) {
    static const char* names[] = {"nearest", "box", "bilinear", "bicubic", "lanczos"};
    for (int i = 0; i < 5; i++)
        if (strcmp(s, names[i]) == 0) return i; // ResampleFilter's order
    return -1;
}

// Resizes src to golden tensor `name` (its size and filter spelled in the name after `prefix`).
static void check_resize(const SafeTensors* st, const Image* src, const char* name, const char* filter_name, int w, int h) {
    Image want, got;
    char err[ERR_MAX] = "", label[128];
    int f = filter_from_name(filter_name);
    if (!golden_image(st, name, &want)) return;
    if (f < 0) {
        check_true(0, "%s: filter '%s' unknown", name, filter_name);
        return;
    }
    snprintf(label, sizeof(label), "%s", name);
    if (image_resize_pil(src, w, h, (ResampleFilter)f, &got, err) != 0) {
        check_true(0, "%s: %s", name, err);
        return;
    }
    if (got.width == want.width && got.height == want.height && got.channels == want.channels)
        check_bytes_equal(label, got.data, want.data, (size_t)w * h * got.channels);
    else
        check_true(0, "%s: got %d x %d x %d", name, got.width, got.height, got.channels);
    image_free(&got);
}

static void test_image_resize_pil(void) {
    SafeTensors st;
    if (!golden_open(&st, GOLDEN)) return;
    int cases = 0;
    for (int i = 0; i < st.count; i++) {
        char kind[32], filter[32], src_name[64];
        int w, h;
        if (sscanf(st.tensors[i].name, "resize.%31[^.].%31[^.].%dx%d", kind, filter, &w, &h) != 4) continue;
        snprintf(src_name, sizeof(src_name), "src.%s", kind);
        Image src;
        if (!golden_image(&st, src_name, &src)) continue;
        check_resize(&st, &src, st.tensors[i].name, filter, w, h);
        cases++;
    }
    check_true(cases >= 60, "%d golden resizes run (every filter x up/down/one-axis/1x1, 1-4 channels)", cases);
    safetensors_close(&st);
}

// The 1365x768 storyboard size down to CLIP's 398x224 (and others), the path every evaluation takes.
static void test_image_resize_storyboard(void) {
    SafeTensors st;
    if (!golden_open(&st, GOLDEN)) return;
    Image synth;
    image_test_synthetic(&synth, 1365, 768);
    int cases = 0;
    for (int i = 0; i < st.count; i++) {
        char filter[32];
        int w, h;
        if (sscanf(st.tensors[i].name, "synth.%31[^.].%dx%d", filter, &w, &h) != 3) continue;
        double t0 = now_seconds();
        check_resize(&st, &synth, st.tensors[i].name, filter, w, h);
        printf("    (%.1f ms)\n", 1e3 * (now_seconds() - t0));
        cases++;
    }
    check_true(cases == 3, "3 resizes of the synthetic 1365x768 image");
    image_free(&synth);
    safetensors_close(&st);
}

// PIL convert("RGB") and transformers convert_to_rgb, for 8-bit and 16-bit sources.
static void test_image_to_rgb(void) {
    SafeTensors st;
    if (!golden_open(&st, GOLDEN)) return;
    static const char* kinds[] = {"gray", "la", "rgb", "rgba"};
    for (int bits16 = 0; bits16 < 2; bits16++) {
        for (int k = 0; k < 4; k++) {
            char name[64], err[ERR_MAX] = "";
            Image src, got, want;
            uint16_t* s16 = NULL;
            if (!bits16) {
                snprintf(name, sizeof(name), "src.%s", kinds[k]);
                if (!golden_image(&st, name, &src)) continue;
            } else { // 16-bit samples as png.c hands them back (host-order uint16)
                snprintf(name, sizeof(name), "src16.%s", kinds[k]);
                int64_t shape[3];
                size_t n;
                float* v = golden_f32(&st, name, &n);
                if (!v || golden_shape(&st, name, shape) != 3) continue;
                s16 = xmalloc(sizeof(uint16_t) * n);
                for (size_t i = 0; i < n; i++) s16[i] = (uint16_t)v[i];
                free(v);
                src = (Image){.width = (int)shape[1], .height = (int)shape[0], .channels = (int)shape[2], .depth = 16, .data = s16};
            }
            for (int over_white = 0; over_white < 2; over_white++) {
                char want_name[64];
                snprintf(want_name, sizeof(want_name), "convert.%s%s.%s", kinds[k], bits16 ? "16" : "",
                         over_white ? "over_white" : "rgb");
                if (!golden_image(&st, want_name, &want)) continue;
                int rc = over_white ? image_to_rgb8_over_white(&src, &got, err) : image_to_rgb8(&src, &got, err);
                if (rc != 0 || got.channels != 3 || got.depth != 8) {
                    check_true(0, "%s: %s", want_name, err);
                    continue;
                }
                check_bytes_equal(want_name, got.data, want.data, (size_t)got.width * got.height * 3);
                image_free(&got);
            }
            free(s16);
        }
    }
    safetensors_close(&st);
}

static void test_image_crop(void) {
    SafeTensors st;
    if (!golden_open(&st, GOLDEN)) return;
    Image rgb, got;
    char err[ERR_MAX] = "";
    if (!golden_image(&st, "src.rgb", &rgb)) return;
    // numpy's rgb[5:5+11, 3:3+20] written out by hand
    if (check_true(image_crop(&rgb, 3, 5, 20, 11, &got, err) == 0, "crop 20x11 at (3, 5) %s", err)) {
        uint8_t* want = xmalloc(20 * 11 * 3);
        for (int y = 0; y < 11; y++) memcpy(want + y * 20 * 3, (uint8_t*)rgb.data + ((5 + y) * rgb.width + 3) * 3, 20 * 3);
        check_bytes_equal("crop rows 5..15, columns 3..22", got.data, want, 20 * 11 * 3);
        free(want);
        image_free(&got);
    }
    if (check_true(image_crop(&rgb, 0, 0, rgb.width, rgb.height, &got, err) == 0, "crop of the whole image %s", err)) {
        check_bytes_equal("whole-image crop is a copy", got.data, rgb.data, (size_t)rgb.width * rgb.height * 3);
        image_free(&got);
    }
    uint16_t px16[2 * 3 * 2] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    Image g16 = {.width = 3, .height = 2, .channels = 2, .depth = 16, .data = px16};
    if (check_true(image_crop(&g16, 1, 1, 2, 1, &got, err) == 0 && got.depth == 16, "16-bit crop %s", err)) {
        uint16_t want16[4] = {9, 10, 11, 12};
        check_bytes_equal("16-bit crop keeps the samples", got.data, want16, sizeof(want16));
        image_free(&got);
    }
    safetensors_close(&st);
}

// image_to_chw_normalized rounds as transformers' PIL backend: f32(f64(v) * (1/255)), then f32 (r - m) / s.
static void test_image_normalize(void) {
    uint8_t px[2 * 2 * 3] = {0, 128, 255, 1, 2, 3, 254, 100, 7, 37, 200, 99};
    Image img = {.width = 2, .height = 2, .channels = 3, .depth = 8, .data = px};
    const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}, std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    float got[12], want[12];
    image_to_chw_normalized(&img, mean, std, got);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 4; i++) {
            float r = (float)((double)px[i * 3 + c] * (1.0 / 255.0));
            want[c * 4 + i] = (r - mean[c]) / std[c];
        }
    // exact: the same f32 operations in the same order (the LUT against transformers itself is
    // checked in tests/test_clip_vision.c)
    check_close("(3, H, W) planes, rescale then normalise", got, want, 12, 0.0f, 0.0f);
}

// One refused call: rc must be -1 and err one non-empty line. Clears err for the next call.
static void check_refused(const char* what, int rc, char* err) {
    printf("    %-34s -> %s\n", what, err);
    check_true(rc == -1 && err[0] && !strchr(err, '\n'), "%s is refused with a one-line error", what);
    err[0] = 0;
}

static void test_image_bad_inputs(void) {
    uint8_t px[4 * 4 * 3] = {0};
    Image ok = {.width = 4, .height = 4, .channels = 3, .depth = 8, .data = px};
    Image out, empty = ok, five = ok, deep = ok, nodata = ok, odd = ok;
    empty.width = 0;
    five.channels = 5;
    deep.depth = 16;
    nodata.data = NULL;
    odd.depth = 12;
    char err[ERR_MAX] = "";
    check_refused("resize of a 0 x 4 image", image_resize_pil(&empty, 2, 2, RESAMPLE_BICUBIC, &out, err), err);
    check_refused("resize to 0 x 5", image_resize_pil(&ok, 0, 5, RESAMPLE_BICUBIC, &out, err), err);
    check_refused("resize with filter 9", image_resize_pil(&ok, 2, 2, (ResampleFilter)9, &out, err), err);
    check_refused("resize of 5 channels", image_resize_pil(&five, 2, 2, RESAMPLE_BILINEAR, &out, err), err);
    check_refused("resize of a 16-bit image", image_resize_pil(&deep, 2, 2, RESAMPLE_BILINEAR, &out, err), err);
    check_refused("convert of an image without pixels", image_to_rgb8(&nodata, &out, err), err);
    check_refused("convert of 12-bit samples", image_to_rgb8_over_white(&odd, &out, err), err);
    check_refused("crop 3x3 at (2, 2) of 4x4", image_crop(&ok, 2, 2, 3, 3, &out, err), err);
    check_refused("crop at (-1, 0)", image_crop(&ok, -1, 0, 2, 2, &out, err), err);
    check_refused("crop 0 x 2", image_crop(&ok, 0, 0, 0, 2, &out, err), err);
    check_refused("crop 2147483647 wide at x=2", image_crop(&ok, 2, 0, 2147483647, 1, &out, err), err);
}

const TestCase tests_image[] = {
    {"image_resize_pil", test_image_resize_pil},
    {"image_resize_storyboard", test_image_resize_storyboard},
    {"image_to_rgb", test_image_to_rgb},
    {"image_crop", test_image_crop},
    {"image_normalize", test_image_normalize},
    {"image_bad_inputs", test_image_bad_inputs},
    {NULL, NULL},
};
