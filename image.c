// image.c: resizing, colour conversion, cropping and normalisation, each bit-exact with the
// library the reference pipelines call.
//
// Resizing is Pillow's (python-pillow/Pillow, src/libImaging/Resample.c and Geometry.c, read at
// the 13.0 development head; the byte-for-byte goldens come from Pillow 13.0.0):
//   - BOX, BILINEAR, BICUBIC (a = -0.5), LANCZOS (a = 3) are separable convolutions. For each
//     output pixel xx of a pass, in double precision:
//         scale   = in / out;  filterscale = max(scale, 1)     (antialiasing when shrinking)
//         support = filter support * filterscale
//         center  = (xx + 0.5) * scale
//         xmin    = max(0, (int)(center - support + 0.5)),  xmax = min(in, (int)(center + support + 0.5))
//         w[x]    = filter((x + xmin - center + 0.5) * (1 / filterscale)), then w /= sum(w)
//     The 8-bit path turns each weight into a fixed-point integer with 22 fraction bits
//     ((int)(w * 2^22 +- 0.5), truncating toward zero), starts each sum at 2^21 (rounding) and
//     clips (sum >> 22) to [0, 255].
//   - Two passes into an 8-bit temporary, horizontal first (holding only the rows the vertical pass
//     reads) unless the height shrinks much more than the width (see resample_separable); a pass
//     whose size does not change is skipped.
//   - NEAREST is not a convolution: Pillow maps it to an affine transform (ImagingScaleAffine)
//     whose source coordinate starts at 0.5 * in/out and is *accumulated* (xo += in/out) in
//     double, then truncated. We accumulate the same way so rounding drifts identically.
//   - PIL's Image.resize converts "LA" / "RGBA" to premultiplied "La" / "RGBa" before any filter
//     but NEAREST and back afterwards (Convert.c: MULDIV255 on the way in, CLIP8(255*c/a) out).
// Pillow's HAMMING, MKS2013/MKS2021 filters, box= and reducing_gap= are not implemented.
//
// Colour conversion follows PIL's convert("RGB") and transformers' convert_to_rgb (which uses
// PIL's alpha_composite, src/libImaging/AlphaComposite.c) as described in image.h.
#include "image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define RESAMPLE_PRECISION_BITS 22 // Pillow's PRECISION_BITS = 32 - 8 - 2 (8-bit result, 2 overflow bits)

// ----------------------------------------------------------------------------
// Filters (Resample.c), each with its support radius at scale 1

typedef struct {
    double (*fn)(double x);
    double support;
} Filter;

static double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

static double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

// Keys' cubic convolution with a = -0.5 (Pillow's choice; OpenCV and torch's non-antialiased path use -0.75)
static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double lanczos_filter(double x) { return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0; }

static const Filter FILTER_BOX = {box_filter, 0.5};
static const Filter FILTER_BILINEAR = {bilinear_filter, 1.0};
static const Filter FILTER_BICUBIC = {bicubic_filter, 2.0};
static const Filter FILTER_LANCZOS = {lanczos_filter, 3.0};

// ----------------------------------------------------------------------------
// Coefficients of one pass (Resample.c precompute_coeffs + normalize_coeffs_8bpc)

typedef struct {
    int ksize;      // coefficients per output pixel (the most any of them uses)
    int* first;     // (out) first input index each output pixel reads
    int* count;     // (out) how many input indices it reads
    int32_t* k;     // (out, ksize) fixed-point weights, 22 fraction bits
} Coeffs;

static void coeffs_compute(Coeffs* c, int in_size, int out_size, const Filter* f) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = f->support * filterscale;
    c->ksize = (int)ceil(support) * 2 + 1;
    c->first = xmalloc(sizeof(int) * (size_t)out_size);
    c->count = xmalloc(sizeof(int) * (size_t)out_size);
    c->k = xcalloc((size_t)out_size * c->ksize, sizeof(int32_t));
    double* w = xmalloc(sizeof(double) * (size_t)c->ksize);
    // Pillow multiplies by the reciprocal (not divides by filterscale): it changes the last bit
    // of some weights, and so, rarely, an output byte.
    double inv_filterscale = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) {
            w[x] = f->fn((x + xmin - center + 0.5) * inv_filterscale);
            ww += w[x];
        }
        int32_t* k = c->k + (size_t)xx * c->ksize;
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            // to fixed point, rounding half away from zero and truncating as Pillow's (int) cast
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << RESAMPLE_PRECISION_BITS))
                         : (int32_t)(0.5 + v * (1 << RESAMPLE_PRECISION_BITS));
        }
        c->first[xx] = xmin;
        c->count[xx] = xmax;
    }
    free(w);
}

static void coeffs_free(Coeffs* c) {
    free(c->first);
    free(c->count);
    free(c->k);
}

// Pillow's clip8: sums below 0 give 0, above 255.x give 255. (Its lookup table covers the range
// a normalised filter can reach; the sum is kept in 64 bits here so no input can overflow it.)
static uint8_t clip8(int64_t sum) {
    if (sum < 0) return 0;
    int64_t v = sum >> RESAMPLE_PRECISION_BITS;
    return v > 255 ? 255 : (uint8_t)v;
}

// Horizontal pass over rows [y0, y0 + rows) of src (width in_w, C channels) into out (rows, out_w).
static void resample_horizontal(uint8_t* out, const uint8_t* src, int in_w, int y0, int rows, int out_w, int C,
                                const Coeffs* co) {
    for (int y = 0; y < rows; y++) {
        const uint8_t* line = src + (size_t)(y0 + y) * in_w * C;
        uint8_t* line_out = out + (size_t)y * out_w * C;
        for (int xx = 0; xx < out_w; xx++) {
            const int32_t* k = co->k + (size_t)xx * co->ksize;
            const uint8_t* p = line + (size_t)co->first[xx] * C;
            for (int c = 0; c < C; c++) {
                int64_t sum = 1 << (RESAMPLE_PRECISION_BITS - 1);
                for (int x = 0; x < co->count[xx]; x++) sum += (int64_t)p[x * C + c] * k[x];
                line_out[xx * C + c] = clip8(sum);
            }
        }
    }
}

// Vertical pass: out row yy reads rows first[yy] - row_offset ... of src (width w).
static void resample_vertical(uint8_t* out, const uint8_t* src, int w, int out_h, int C, int row_offset,
                              const Coeffs* co) {
    size_t stride = (size_t)w * C;
    for (int yy = 0; yy < out_h; yy++) {
        const int32_t* k = co->k + (size_t)yy * co->ksize;
        const uint8_t* col = src + (size_t)(co->first[yy] - row_offset) * stride;
        uint8_t* line_out = out + (size_t)yy * stride;
        for (size_t i = 0; i < stride; i++) {
            int64_t sum = 1 << (RESAMPLE_PRECISION_BITS - 1);
            for (int y = 0; y < co->count[yy]; y++) sum += (int64_t)col[(size_t)y * stride + i] * k[y];
            line_out[i] = clip8(sum);
        }
    }
}

// Resample.c ImagingResampleInner on interleaved 8-bit samples. Pillow 13 runs the vertical pass
// first when the height shrinks by more than twice as many pixels as the width does (Pillow PR
// #9549, released in 13.0.0 after the development head we read; the rule below was pinned down
// against Pillow 13.0.0 on thousands of random sizes, see scripts/make_golden_image.py). The
// order matters because the intermediate image is rounded to 8 bits.
static void resample_separable(const uint8_t* src, int in_w, int in_h, int C, uint8_t* out, int out_w, int out_h,
                               const Filter* f) {
    int need_h = out_w != in_w, need_v = out_h != in_h;
    int vertical_first = out_h < in_h && (in_h - out_h) > 2 * (in_w - out_w);
    Coeffs vert, horiz;
    if (need_v) coeffs_compute(&vert, in_h, out_h, f);
    if (need_h) coeffs_compute(&horiz, in_w, out_w, f);
    if (need_h && need_v && vertical_first) {
        uint8_t* tmp = xmalloc((size_t)in_w * out_h * C);
        resample_vertical(tmp, src, in_w, out_h, C, 0, &vert);
        resample_horizontal(out, tmp, in_w, 0, out_h, out_w, C, &horiz);
        free(tmp);
    } else if (need_h && need_v) {
        // the source rows the vertical pass reads: the horizontal pass only makes those
        int y_first = vert.first[0], y_last = vert.first[out_h - 1] + vert.count[out_h - 1];
        uint8_t* tmp = xmalloc((size_t)(y_last - y_first) * out_w * C);
        resample_horizontal(tmp, src, in_w, y_first, y_last - y_first, out_w, C, &horiz);
        resample_vertical(out, tmp, out_w, out_h, C, y_first, &vert);
        free(tmp);
    } else if (need_h) {
        resample_horizontal(out, src, in_w, 0, in_h, out_w, C, &horiz);
    } else if (need_v) {
        resample_vertical(out, src, in_w, out_h, C, 0, &vert);
    } else {
        memcpy(out, src, (size_t)in_w * in_h * C);
    }
    if (need_v) coeffs_free(&vert);
    if (need_h) coeffs_free(&horiz);
}

// Geometry.c ImagingScaleAffine with a = (in_w / out_w, 0, 0, 0, in_h / out_h, 0): nearest
// neighbour, coordinates accumulated in double from half a step; pixels that land outside the
// source stay 0 (Pillow's `fill`). Integer truncation here matches Pillow's COORD() because the
// coordinates are never negative.
static void resample_nearest(const uint8_t* src, int in_w, int in_h, int C, uint8_t* out, int out_w, int out_h) {
    double ax = (double)in_w / out_w, ay = (double)in_h / out_h;
    int* xin = xmalloc(sizeof(int) * (size_t)out_w);
    double xo = ax * 0.5;
    for (int x = 0; x < out_w; x++) {
        xin[x] = (int)xo;
        xo += ax;
    }
    double yo = ay * 0.5;
    for (int y = 0; y < out_h; y++) {
        int yi = (int)yo;
        yo += ay;
        uint8_t* line_out = out + (size_t)y * out_w * C;
        memset(line_out, 0, (size_t)out_w * C);
        if (yi < 0 || yi >= in_h) continue;
        const uint8_t* line = src + (size_t)yi * in_w * C;
        for (int x = 0; x < out_w; x++)
            if (xin[x] >= 0 && xin[x] < in_w) memcpy(line_out + (size_t)x * C, line + (size_t)xin[x] * C, (size_t)C);
    }
    free(xin);
}

// ----------------------------------------------------------------------------
// Premultiplied alpha (Convert.c rgbA2rgba / rgba2rgbA, lA2la / la2lA)

// Pillow's MULDIV255: a * b / 255 rounded, with shifts
static uint8_t muldiv255(unsigned a, unsigned b) {
    unsigned t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

static void premultiply(uint8_t* px, size_t n, int C) {
    for (size_t i = 0; i < n; i++, px += C) {
        unsigned alpha = px[C - 1];
        for (int c = 0; c < C - 1; c++) px[c] = muldiv255(px[c], alpha);
    }
}

static void unpremultiply(uint8_t* px, size_t n, int C) {
    for (size_t i = 0; i < n; i++, px += C) {
        unsigned alpha = px[C - 1];
        if (alpha == 0 || alpha == 255) continue;
        for (int c = 0; c < C - 1; c++) {
            unsigned v = 255u * px[c] / alpha;
            px[c] = v > 255 ? 255 : (uint8_t)v;
        }
    }
}

// ----------------------------------------------------------------------------
// Public functions

static int image_check(const Image* src, const char* what, char* err) {
    if (!src || src->width < 1 || src->height < 1)
        return set_error(err, "%s: empty image (%d x %d)", what, src ? src->width : 0, src ? src->height : 0);
    if (!src->data) return set_error(err, "%s: the image has no pixel data", what);
    if (src->channels < 1 || src->channels > 4)
        return set_error(err, "%s: %d channels (1 to 4 are supported)", what, src->channels);
    if (src->depth != 8 && src->depth != 16) return set_error(err, "%s: %d-bit samples (8 or 16 are supported)", what, src->depth);
    return 0;
}

static void image_new(Image* dst, int w, int h, int channels, int depth) {
    memset(dst, 0, sizeof(*dst));
    dst->width = w;
    dst->height = h;
    dst->channels = channels;
    dst->depth = depth;
    dst->data = xmalloc((size_t)w * h * channels * (depth / 8));
}

int image_resize_pil(const Image* src, int width, int height, ResampleFilter filter, Image* dst, char* err) {
    if (image_check(src, "resize", err) != 0) return -1;
    if (src->depth != 8) return set_error(err, "resize: %d-bit images are not supported (convert to 8 bits first)", src->depth);
    if (width < 1 || height < 1 || (uint64_t)width * (uint64_t)height > IMAGE_MAX_PIXELS)
        return set_error(err, "resize: bad target size %d x %d (1 to %u pixels)", width, height, IMAGE_MAX_PIXELS);
    const Filter* f = NULL;
    switch (filter) {
    case RESAMPLE_NEAREST: break;
    case RESAMPLE_BOX: f = &FILTER_BOX; break;
    case RESAMPLE_BILINEAR: f = &FILTER_BILINEAR; break;
    case RESAMPLE_BICUBIC: f = &FILTER_BICUBIC; break;
    case RESAMPLE_LANCZOS: f = &FILTER_LANCZOS; break;
    default: return set_error(err, "resize: unknown filter %d", (int)filter);
    }
    int C = src->channels;
    size_t n_in = (size_t)src->width * src->height;
    image_new(dst, width, height, C, 8);
    if (width == src->width && height == src->height) { // PIL returns a copy
        memcpy(dst->data, src->data, n_in * C);
        return 0;
    }
    if (!f) {
        resample_nearest(src->data, src->width, src->height, C, dst->data, width, height);
        return 0;
    }
    int has_alpha = C == 2 || C == 4;
    const uint8_t* in = src->data;
    uint8_t* pre = NULL;
    if (has_alpha) { // "LA" -> "La", "RGBA" -> "RGBa"
        pre = xmalloc(n_in * C);
        memcpy(pre, src->data, n_in * C);
        premultiply(pre, n_in, C);
        in = pre;
    }
    resample_separable(in, src->width, src->height, C, dst->data, width, height, f);
    if (has_alpha) unpremultiply(dst->data, (size_t)width * height, C);
    free(pre);
    return 0;
}

int image_to_rgb8(const Image* src, Image* dst, char* err) {
    if (image_check(src, "convert to RGB", err) != 0) return -1;
    size_t n = (size_t)src->width * src->height;
    int C = src->channels;
    image_new(dst, src->width, src->height, 3, 8);
    uint8_t* out = dst->data;
    for (size_t i = 0; i < n; i++) {
        for (int c = 0; c < 3; c++) {
            int from = C < 3 ? 0 : c; // gray (and gray+alpha) replicate their first sample
            if (src->depth == 8) {
                out[i * 3 + c] = ((const uint8_t*)src->data)[i * C + from];
            } else {
                uint16_t v = ((const uint16_t*)src->data)[i * C + from];
                out[i * 3 + c] = C == 1 ? (v > 255 ? 255 : (uint8_t)v) : (uint8_t)(v >> 8);
            }
        }
    }
    return 0;
}

int image_to_rgb8_over_white(const Image* src, Image* dst, char* err) {
    if (image_to_rgb8(src, dst, err) != 0) return -1;
    int C = src->channels;
    if (C != 2 && C != 4) return 0;
    size_t n = (size_t)src->width * src->height;
    uint8_t* out = dst->data;
    for (size_t i = 0; i < n; i++) {
        unsigned a = src->depth == 8 ? ((const uint8_t*)src->data)[i * C + C - 1]
                                     : (unsigned)(((const uint16_t*)src->data)[i * C + C - 1] >> 8);
        // AlphaComposite.c with an opaque white destination: blend = 255 * (255 - a) and
        // outa255 = 255 * 255, so coef1 = a * 128 (7 fraction bits) and coef2 = (255 - a) * 128.
        unsigned coef1 = a * 255u * 255u * 128u / (255u * 255u), coef2 = 255u * 128u - coef1;
        for (int c = 0; c < 3; c++) {
            if (a == 0) {
                out[i * 3 + c] = 255;
                continue;
            }
            unsigned t = out[i * 3 + c] * coef1 + 255u * coef2 + (0x80u << 7);
            out[i * 3 + c] = (uint8_t)((((t >> 8) + t) >> 8) >> 7);
        }
    }
    return 0;
}

int image_crop(const Image* src, int x, int y, int w, int h, Image* dst, char* err) {
    if (image_check(src, "crop", err) != 0) return -1;
    if (w < 1 || h < 1 || x < 0 || y < 0 || x > src->width - w || y > src->height - h)
        return set_error(err, "crop: region %d x %d at (%d, %d) is not inside the %d x %d image", w, h, x, y, src->width,
                         src->height);
    size_t px = (size_t)src->channels * (src->depth / 8);
    image_new(dst, w, h, src->channels, src->depth);
    for (int r = 0; r < h; r++)
        memcpy((uint8_t*)dst->data + (size_t)r * w * px, (const uint8_t*)src->data + ((size_t)(y + r) * src->width + x) * px,
               (size_t)w * px);
    return 0;
}

void image_to_chw_normalized(const Image* rgb, const float mean[3], const float std[3], float* out) {
    if (!rgb || !rgb->data || rgb->channels != 3 || rgb->depth != 8)
        fatal("image_to_chw_normalized: needs an 8-bit RGB image (got %d channels, %d-bit)", rgb ? rgb->channels : 0,
              rgb ? rgb->depth : 0);
    size_t HW = (size_t)rgb->width * rgb->height;
    const uint8_t* in = rgb->data;
    for (int c = 0; c < 3; c++) {
        // transformers rescale(): f64 multiply by the double 1/255, cast to f32; normalize(): f32
        float lut[256];
        for (int v = 0; v < 256; v++) lut[v] = ((float)((double)v * (1.0 / 255.0)) - mean[c]) / std[c];
        for (size_t i = 0; i < HW; i++) out[c * HW + i] = lut[in[i * 3 + c]];
    }
}
