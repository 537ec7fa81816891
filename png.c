// png.c: PNG decoding and encoding on zlib.
//
// Follows the W3C Portable Network Graphics (PNG) Specification (Third Edition),
// https://www.w3.org/TR/png/ ; section numbers below refer to it.
//
// Reading covers all of it that affects pixels: every colour type (0 gray, 2 RGB, 3 palette,
// 4 gray+alpha, 6 RGBA) at every bit depth the spec allows for it (table 11.1), PLTE and tRNS,
// the five filters (9.2), Adam7 interlacing (8.2), and the text chunks tEXt, zTXt and iTXt
// (11.3.3). Other ancillary chunks (gAMA, iCCP, pHYs, eXIf, ...) are skipped: we hand back the
// stored samples, without colour management. The output is normalised as libpng's
// png_set_expand does: palette -> RGB (RGBA with tRNS), a tRNS colour key -> an extra alpha
// channel (0 where the pixel equals the key, else the maximum), 1/2/4-bit samples -> 8-bit with
// v * 255 / (2^depth - 1). 16-bit samples stay 16-bit, in host byte order.
//
// We are strict where libpng is lenient, because a one-line error is easier to act on than a
// half-decoded image: a bad CRC in any chunk, a truncated file, a missing IHDR/IDAT/IEND, an
// unknown critical chunk, image data that inflates to more or fewer bytes than the header
// implies, a bad filter byte and a palette index beyond the palette are all errors. Sizes are
// checked before every allocation and every read (IMAGE_MAX_PIXELS in png.h), and the whole file
// is parsed from memory, so no input can make us read out of bounds.
//
// Writing produces 8- or 16-bit gray, gray+alpha, RGB or RGBA, never interlaced, with the filter
// of each row chosen as libpng does by default: the one whose output has the smallest sum of
// absolute values, reading each byte as signed (spec 12.8 suggests this heuristic). zlib level 6
// then gives bytes that depend only on the image (and on the zlib build). Text goes into tEXt
// when it is plain ASCII and into uncompressed iTXt (UTF-8) otherwise, all before the IDAT.
#include "png.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common.h"

static const uint8_t PNG_SIGNATURE[8] = {137, 80, 78, 71, 13, 10, 26, 10};

// Adam7 (8.2): the first column and row of each of the seven passes and their steps.
static const int ADAM7_X0[7] = {0, 4, 0, 2, 0, 1, 0};
static const int ADAM7_Y0[7] = {0, 0, 4, 0, 2, 0, 1};
static const int ADAM7_DX[7] = {8, 8, 4, 4, 2, 2, 1};
static const int ADAM7_DY[7] = {8, 8, 8, 4, 4, 2, 2};

#define PNG_IDAT_MAX (1u << 20) // the writer splits image data into IDAT chunks of at most 1 MiB

// ----------------------------------------------------------------------------
// Image helpers

void image_free(Image* img) {
    free(img->data);
    for (int i = 0; i < img->text_count; i++) {
        free(img->text_keys[i]);
        free(img->text_values[i]);
    }
    free(img->text_keys);
    free(img->text_values);
    memset(img, 0, sizeof(*img));
}

int image_add_text(Image* img, const char* key, const char* value) {
    size_t n = (size_t)img->text_count + 1;
    img->text_keys = xrealloc(img->text_keys, n * sizeof(char*));
    img->text_values = xrealloc(img->text_values, n * sizeof(char*));
    img->text_keys[n - 1] = xstrdup(key);
    img->text_values[n - 1] = xstrdup(value);
    img->text_count++;
    return 0;
}

const char* image_get_text(const Image* img, const char* key) {
    for (int i = 0; i < img->text_count; i++)
        if (strcmp(img->text_keys[i], key) == 0) return img->text_values[i];
    return NULL;
}

// ----------------------------------------------------------------------------
// zlib

// Inflates one whole zlib stream into a fresh buffer of at most max_out bytes. The buffer grows
// as output arrives rather than being sized from the header up front, so a tiny file that claims
// a huge image costs memory only in proportion to what it really inflates to. `what` names the
// data in errors ("IDAT data", "zTXt chunk 'Comment'").
static int png_inflate(const uint8_t* in, size_t in_size, size_t max_out, uint8_t** out, size_t* out_size,
                       const char* name, const char* what, char* err) {
    *out = NULL;
    *out_size = 0;
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    if (inflateInit(&zs) != Z_OK) return set_error(err, "%s: zlib inflateInit failed", name);
    // one byte beyond max_out, so that "too much data" shows up as a full buffer
    size_t cap = max_out + 1 < 65536 ? max_out + 1 : 65536, used = 0, in_pos = 0;
    uint8_t* buf = malloc(cap);
    int rc = Z_OK;
    while (buf) {
        // avail_in and avail_out are 32-bit, so feed and drain in pieces of at most 1 GiB
        size_t in_left = in_size - in_pos, out_left = cap - used;
        zs.next_in = (Bytef*)(in + in_pos);
        zs.avail_in = (uInt)(in_left < (1u << 30) ? in_left : (1u << 30));
        zs.next_out = buf + used;
        zs.avail_out = (uInt)(out_left < (1u << 30) ? out_left : (1u << 30));
        uInt avail_in0 = zs.avail_in, avail_out0 = zs.avail_out;
        rc = inflate(&zs, Z_NO_FLUSH);
        in_pos += avail_in0 - zs.avail_in;
        used += avail_out0 - zs.avail_out;
        if (rc == Z_STREAM_END || (rc != Z_OK && rc != Z_BUF_ERROR)) break;
        if (used > max_out) break;
        if (used == cap) { // full but not beyond max_out: grow
            cap = cap > max_out / 2 ? max_out + 1 : 2 * cap;
            uint8_t* grown = realloc(buf, cap);
            if (!grown) free(buf);
            buf = grown;
        } else if (in_pos == in_size && zs.avail_in == 0 && rc == Z_BUF_ERROR) {
            break; // input exhausted before the end of the stream
        }
    }
    const char* zmsg = zs.msg ? zs.msg : "unknown error";
    char msg[128];
    snprintf(msg, sizeof(msg), "%s", zmsg); // zs.msg points into the stream state
    inflateEnd(&zs);
    if (!buf) return set_error(err, "%s: out of memory inflating %s", name, what);
    if (used > max_out) {
        free(buf);
        return set_error(err, "%s: %s inflates to more than %zu bytes", name, what, max_out);
    }
    if (rc == Z_STREAM_END) {
        *out = buf;
        *out_size = used;
        return 0;
    }
    free(buf);
    if (rc == Z_OK || rc == Z_BUF_ERROR) return set_error(err, "%s: %s: zlib stream is truncated", name, what);
    return set_error(err, "%s: %s: zlib error: %s", name, what, msg);
}

// ----------------------------------------------------------------------------
// Reading

typedef struct {
    const char* name;       // for errors
    uint32_t width, height;
    int depth;              // bits per sample in the file: 1, 2, 4, 8, 16
    int color_type;         // 0, 2, 3, 4, 6
    int interlace;          // 0 none, 1 Adam7
    int samples;            // samples per pixel in the file (a palette index counts as one)
    uint8_t palette[256][3];
    uint8_t palette_alpha[256]; // from tRNS; 255 for entries it does not cover
    int palette_size;       // 0 when there is no PLTE
    int has_trns;
    uint16_t trns_key[3];   // colour key for types 0 (one gray value) and 2 (RGB), raw sample values
} PngHeader;

// Bytes in one filtered row of a pass w pixels wide, not counting the filter byte (7.2).
static size_t png_row_bytes(const PngHeader* h, size_t w) {
    return (w * (size_t)h->samples * (size_t)h->depth + 7) / 8;
}

// IHDR (11.2.2): 13 bytes, checked against table 11.1 and our size limit.
static int png_read_ihdr(PngHeader* h, const uint8_t* d, uint32_t len, const char* name, char* err) {
    if (len != 13) return set_error(err, "%s: IHDR chunk has length %u, expected 13", name, len);
    h->width = load_be32(d);
    h->height = load_be32(d + 4);
    h->depth = d[8];
    h->color_type = d[9];
    h->interlace = d[12];
    if (h->width == 0 || h->height == 0)
        return set_error(err, "%s: bad IHDR: image is %u x %u pixels, width and height must be at least 1", name,
                         h->width, h->height);
    if (h->width > PNG_MAX_DIM || h->height > PNG_MAX_DIM)
        return set_error(err, "%s: bad IHDR: %u x %u pixels is beyond the PNG limit of 2^31-1 per dimension", name,
                         h->width, h->height);
    if ((uint64_t)h->width * h->height > IMAGE_MAX_PIXELS)
        return set_error(err, "%s: image too large: %u x %u pixels (the limit is %u pixels, PIL's)", name, h->width, h->height,
                         IMAGE_MAX_PIXELS);
    int d_ok = 0;
    switch (h->color_type) {
    case 0: d_ok = h->depth == 1 || h->depth == 2 || h->depth == 4 || h->depth == 8 || h->depth == 16; h->samples = 1; break;
    case 3: d_ok = h->depth == 1 || h->depth == 2 || h->depth == 4 || h->depth == 8; h->samples = 1; break;
    case 2: d_ok = h->depth == 8 || h->depth == 16; h->samples = 3; break;
    case 4: d_ok = h->depth == 8 || h->depth == 16; h->samples = 2; break;
    case 6: d_ok = h->depth == 8 || h->depth == 16; h->samples = 4; break;
    default: return set_error(err, "%s: bad IHDR: unknown colour type %d", name, h->color_type);
    }
    if (!d_ok) return set_error(err, "%s: bad IHDR: bit depth %d is not allowed for colour type %d", name, h->depth, h->color_type);
    if (d[10] != 0) return set_error(err, "%s: bad IHDR: unknown compression method %d", name, d[10]);
    if (d[11] != 0) return set_error(err, "%s: bad IHDR: unknown filter method %d", name, d[11]);
    if (h->interlace > 1) return set_error(err, "%s: bad IHDR: unknown interlace method %d", name, h->interlace);
    return 0;
}

// PLTE (11.2.3): 1 to 256 RGB entries, and no more than the bit depth can index.
static int png_read_plte(PngHeader* h, const uint8_t* d, uint32_t len, const char* name, char* err) {
    if (h->color_type == 0 || h->color_type == 4)
        return set_error(err, "%s: PLTE chunk is not allowed in a gray image (colour type %d)", name, h->color_type);
    if (h->palette_size) return set_error(err, "%s: more than one PLTE chunk", name);
    if (len == 0 || len % 3 != 0 || len / 3 > 256)
        return set_error(err, "%s: PLTE chunk has length %u, expected 3 to 768 and a multiple of 3", name, len);
    int n = (int)(len / 3);
    if (h->color_type == 3 && n > (1 << h->depth))
        return set_error(err, "%s: PLTE has %d entries, more than a %d-bit index can address", name, n, h->depth);
    for (int i = 0; i < n; i++) {
        memcpy(h->palette[i], d + 3 * i, 3);
        h->palette_alpha[i] = 255;
    }
    h->palette_size = n;
    return 0;
}

// tRNS (11.3.1.1): palette alphas, or one colour key for gray and RGB images.
static int png_read_trns(PngHeader* h, const uint8_t* d, uint32_t len, const char* name, char* err) {
    if (h->has_trns) return set_error(err, "%s: more than one tRNS chunk", name);
    if (h->color_type == 3) {
        if (!h->palette_size) return set_error(err, "%s: tRNS chunk before PLTE", name);
        if (len > (uint32_t)h->palette_size)
            return set_error(err, "%s: tRNS has %u entries but the palette has %d", name, len, h->palette_size);
        memcpy(h->palette_alpha, d, len);
    } else if (h->color_type == 0 || h->color_type == 2) {
        uint32_t want = h->color_type == 0 ? 2 : 6;
        if (len != want) return set_error(err, "%s: tRNS chunk has length %u, expected %u", name, len, want);
        for (uint32_t i = 0; i < want / 2; i++) h->trns_key[i] = (uint16_t)((d[2 * i] << 8) | d[2 * i + 1]);
    } else {
        // an alpha channel already exists; libpng ignores such a tRNS with a warning, and so do we
        return 0;
    }
    h->has_trns = 1;
    return 0;
}

// Latin-1 -> UTF-8 (tEXt and zTXt text, and every keyword): bytes >= 0x80 become two bytes.
static char* png_latin1_to_utf8(const uint8_t* s, size_t n) {
    char* out = xmalloc(2 * n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x80) {
            out[o++] = (char)s[i];
        } else {
            out[o++] = (char)(0xC0 | (s[i] >> 6));
            out[o++] = (char)(0x80 | (s[i] & 0x3F));
        }
    }
    out[o] = 0;
    return out;
}

// A copy of s fit for a one-line message: control characters become '?', at most 79 bytes.
static void png_printable(char* dst, const char* s) {
    size_t i = 0;
    for (; s[i] && i < 79; i++) dst[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    dst[i] = 0;
}

// Finds the NUL that ends a field starting at d[pos]; returns its index, or -1 when absent.
static long png_find_nul(const uint8_t* d, uint32_t len, uint32_t pos) {
    for (uint32_t i = pos; i < len; i++)
        if (d[i] == 0) return (long)i;
    return -1;
}

// tEXt, zTXt and iTXt (11.3.3): keyword (1-79 bytes, Latin-1), NUL, then per type:
//   tEXt: Latin-1 text
//   zTXt: compression method 0, zlib-compressed Latin-1 text
//   iTXt: compression flag, method, language tag NUL, translated keyword NUL, UTF-8 text
//         (compressed when the flag is 1)
static int png_read_text(Image* img, const char* type, const uint8_t* d, uint32_t len, const char* name, char* err) {
    long key_end = png_find_nul(d, len, 0);
    if (key_end < 1 || key_end > 79)
        return set_error(err, "%s: %s chunk has no keyword of 1 to 79 bytes ended by NUL", name, type);
    char* key = png_latin1_to_utf8(d, (size_t)key_end);
    char what[128], shown[80];
    png_printable(shown, key);
    snprintf(what, sizeof(what), "%s chunk '%s'", type, shown);
    uint32_t p = (uint32_t)key_end + 1;
    char* value = NULL;
    int rc = 0;
    if (strcmp(type, "tEXt") == 0) {
        value = png_latin1_to_utf8(d + p, len - p);
    } else if (strcmp(type, "zTXt") == 0) {
        uint8_t* text = NULL;
        size_t n = 0;
        if (p >= len || d[p] != 0) rc = set_error(err, "%s: %s has an unknown compression method", name, what);
        else rc = png_inflate(d + p + 1, len - p - 1, PNG_MAX_TEXT, &text, &n, name, what, err);
        if (rc == 0) value = png_latin1_to_utf8(text, n);
        free(text);
    } else { // iTXt
        long lang_end = p + 2 <= len ? png_find_nul(d, len, p + 2) : -1;
        long tkey_end = lang_end >= 0 ? png_find_nul(d, len, (uint32_t)lang_end + 1) : -1;
        if (tkey_end < 0) {
            rc = set_error(err, "%s: %s is truncated", name, what);
        } else {
            int compressed = d[p], method = d[p + 1];
            const uint8_t* text = d + tkey_end + 1;
            size_t n = len - (uint32_t)tkey_end - 1;
            if (compressed > 1 || (compressed && method != 0)) {
                rc = set_error(err, "%s: %s has an unknown compression flag %d / method %d", name, what, compressed, method);
            } else if (compressed) {
                uint8_t* inflated = NULL;
                rc = png_inflate(text, n, PNG_MAX_TEXT, &inflated, &n, name, what, err);
                if (rc == 0) {
                    value = xmalloc(n + 1);
                    memcpy(value, inflated, n);
                    value[n] = 0;
                }
                free(inflated);
            } else {
                value = xmalloc(n + 1);
                memcpy(value, text, n);
                value[n] = 0;
            }
        }
    }
    if (rc == 0) image_add_text(img, key, value);
    free(key);
    free(value);
    return rc;
}

// Paeth predictor (9.4): whichever of left, up, upper-left is closest to left + up - upper-left.
static int png_paeth(int a, int b, int c) {
    int p = a + b - c;
    int pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    if (pa <= pb && pa <= pc) return a;
    if (pb <= pc) return b;
    return c;
}

// Undoes one row's filter in place (9.2). prev is the previous row of the same pass, already
// unfiltered (zeros for a pass's first row); bpp is bytes per complete pixel, at least 1.
static void png_unfilter_row(uint8_t* row, const uint8_t* prev, size_t n, size_t bpp, int filter) {
    for (size_t i = 0; i < n; i++) {
        int a = i >= bpp ? row[i - bpp] : 0, b = prev[i], c = i >= bpp ? prev[i - bpp] : 0;
        int pred = 0;
        switch (filter) {
        case 1: pred = a; break;
        case 2: pred = b; break;
        case 3: pred = (a + b) / 2; break;
        case 4: pred = png_paeth(a, b, c); break;
        default: break;
        }
        row[i] = (uint8_t)(row[i] + pred);
    }
}

// Sample i of an unfiltered row. Below 8 bits, samples are packed from the high bits of
// each byte down (7.2); 16-bit samples are big-endian.
static unsigned png_sample(const uint8_t* row, size_t i, int depth) {
    if (depth == 16) return ((unsigned)row[2 * i] << 8) | row[2 * i + 1];
    if (depth == 8) return row[i];
    size_t bit = i * (size_t)depth;
    unsigned shift = 8 - (unsigned)depth - (unsigned)(bit & 7);
    return (row[bit >> 3] >> shift) & ((1u << depth) - 1);
}

// Inflates the IDAT data, unfilters each pass and writes the pixels, normalised, into img.
static int png_decode_pixels(Image* img, const PngHeader* h, const uint8_t* idat, size_t idat_size, char* err) {
    const char* name = h->name;
    int passes = h->interlace ? 7 : 1;
    size_t pass_w[7], pass_h[7], expected = 0, max_row = 0;
    for (int p = 0; p < passes; p++) {
        int x0 = h->interlace ? ADAM7_X0[p] : 0, y0 = h->interlace ? ADAM7_Y0[p] : 0;
        int dx = h->interlace ? ADAM7_DX[p] : 1, dy = h->interlace ? ADAM7_DY[p] : 1;
        pass_w[p] = h->width > (uint32_t)x0 ? (h->width - x0 + dx - 1) / dx : 0;
        pass_h[p] = h->height > (uint32_t)y0 ? (h->height - y0 + dy - 1) / dy : 0;
        // an empty pass has no rows at all, not even filter bytes (8.2)
        if (pass_w[p] == 0 || pass_h[p] == 0) continue;
        size_t rb = png_row_bytes(h, pass_w[p]);
        expected += pass_h[p] * (1 + rb);
        if (rb > max_row) max_row = rb;
    }
    uint8_t* raw = NULL;
    size_t raw_size = 0;
    if (png_inflate(idat, idat_size, expected, &raw, &raw_size, name, "IDAT data", err) != 0) return -1;
    if (raw_size != expected) {
        free(raw);
        return set_error(err, "%s: IDAT data inflates to %zu bytes, expected %zu for a %u x %u image", name, raw_size,
                         expected, h->width, h->height);
    }

    // output layout after normalisation
    int key = h->has_trns && (h->color_type == 0 || h->color_type == 2);
    int out_ch = h->color_type == 3 ? (h->has_trns ? 4 : 3) : h->samples + key;
    int out_bytes = h->depth == 16 ? 2 : 1;
    size_t npix = (size_t)h->width * h->height;
    uint8_t* out8 = malloc(npix * out_ch * out_bytes);
    uint8_t* zeros = calloc(max_row + 1, 1);
    if (!out8 || !zeros) {
        set_error(err, "%s: out of memory for a %u x %u image", name, h->width, h->height);
        goto fail;
    }
    uint16_t* out16 = (uint16_t*)out8;
    size_t bpp = ((size_t)h->samples * h->depth + 7) / 8; // bytes per pixel for the filters, at least 1
    unsigned maxval = h->depth == 16 ? 65535 : 255;
    unsigned scale = h->depth < 8 ? 255 / ((1u << h->depth) - 1) : 1; // exact: 255, 85, 17
    uint8_t* row = raw;
    for (int p = 0; p < passes; p++) {
        if (pass_w[p] == 0 || pass_h[p] == 0) continue;
        int x0 = h->interlace ? ADAM7_X0[p] : 0, y0 = h->interlace ? ADAM7_Y0[p] : 0;
        int dx = h->interlace ? ADAM7_DX[p] : 1, dy = h->interlace ? ADAM7_DY[p] : 1;
        size_t rb = png_row_bytes(h, pass_w[p]);
        const uint8_t* prev = zeros;
        for (size_t j = 0; j < pass_h[p]; j++) {
            int filter = row[0];
            size_t y = y0 + j * dy;
            if (filter > 4) {
                set_error(err, "%s: bad filter type %d in row %zu (pass %d)", name, filter, y, p + 1);
                goto fail;
            }
            uint8_t* cur = row + 1;
            png_unfilter_row(cur, prev, rb, bpp, filter);
            for (size_t i = 0; i < pass_w[p]; i++) {
                size_t x = x0 + i * dx, o = (y * h->width + x) * out_ch;
                unsigned s[4];
                for (int c = 0; c < h->samples; c++) s[c] = png_sample(cur, i * h->samples + c, h->depth);
                if (h->color_type == 3) {
                    if ((int)s[0] >= h->palette_size) {
                        set_error(err, "%s: palette index %u out of range at pixel (%zu, %zu): the palette has %d entries",
                                  name, s[0], x, y, h->palette_size);
                        goto fail;
                    }
                    for (int c = 0; c < 3; c++) out8[o + c] = h->palette[s[0]][c];
                    if (h->has_trns) out8[o + 3] = h->palette_alpha[s[0]];
                    continue;
                }
                int transparent = key;
                for (int c = 0; c < h->samples && key; c++) transparent &= s[c] == h->trns_key[c];
                for (int c = 0; c < h->samples; c++) {
                    if (out_bytes == 2) out16[o + c] = (uint16_t)s[c];
                    else out8[o + c] = (uint8_t)(s[c] * scale);
                }
                if (key && out_bytes == 2) out16[o + h->samples] = (uint16_t)(transparent ? 0 : maxval);
                else if (key) out8[o + h->samples] = (uint8_t)(transparent ? 0 : maxval);
            }
            prev = cur;
            row += 1 + rb;
        }
    }
    free(raw);
    free(zeros);
    img->width = (int)h->width;
    img->height = (int)h->height;
    img->channels = out_ch;
    img->depth = 8 * out_bytes;
    img->data = out8;
    return 0;
fail:
    free(raw);
    free(out8);
    free(zeros);
    return -1;
}

// Walks the chunks (5.3: length, type, data, CRC over type and data), checks each one, collects
// the header, palette, text and the IDAT stream, then decodes the pixels after IEND.
int png_decode(Image* img, const uint8_t* buf, size_t size, const char* name, char* err) {
    memset(img, 0, sizeof(*img));
    if (!name) name = "<memory>";
    PngHeader h;
    memset(&h, 0, sizeof(h));
    h.name = name;
    uint8_t* idat = NULL;
    size_t idat_size = 0;
    int seen_ihdr = 0, seen_idat = 0, idat_ended = 0, seen_iend = 0, rc = -1;
    if (size < 8 || memcmp(buf, PNG_SIGNATURE, 8) != 0) {
        set_error(err, "%s: not a PNG file (bad signature)", name);
        goto done;
    }
    size_t pos = 8;
    while (!seen_iend) {
        if (pos == size) {
            set_error(err, "%s: truncated file: no IEND chunk", name);
            goto done;
        }
        if (size - pos < 12) {
            set_error(err, "%s: truncated file: %zu bytes at offset %zu, too few for a chunk", name, size - pos, pos);
            goto done;
        }
        uint32_t len = load_be32(buf + pos);
        char type[5];
        memcpy(type, buf + pos + 4, 4);
        type[4] = 0;
        for (int i = 0; i < 4; i++) {
            char c = type[i];
            if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) {
                set_error(err, "%s: bad chunk type at offset %zu (corrupt or truncated file)", name, pos);
                goto done;
            }
        }
        if (len > 0x7fffffffu) {
            set_error(err, "%s: chunk %s at offset %zu has length %u, above the PNG limit of 2^31-1", name, type, pos, len);
            goto done;
        }
        if (len > size - pos - 12) {
            set_error(err, "%s: truncated file: chunk %s at offset %zu needs %u bytes, %zu are left", name, type, pos,
                      len + 12, size - pos);
            goto done;
        }
        const uint8_t* data = buf + pos + 8;
        uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf + pos + 4, len + 4);
        if (crc != load_be32(data + len)) {
            set_error(err, "%s: bad CRC in chunk %s at offset %zu", name, type, pos);
            goto done;
        }
        pos += 12 + (size_t)len;

        int is_idat = strcmp(type, "IDAT") == 0;
        if (!seen_ihdr && strcmp(type, "IHDR") != 0) {
            set_error(err, "%s: missing IHDR: the first chunk is %s", name, type);
            goto done;
        }
        if (seen_idat && !is_idat) idat_ended = 1;
        if (strcmp(type, "IHDR") == 0) {
            if (seen_ihdr) {
                set_error(err, "%s: more than one IHDR chunk", name);
                goto done;
            }
            if (png_read_ihdr(&h, data, len, name, err) != 0) goto done;
            seen_ihdr = 1;
        } else if (strcmp(type, "PLTE") == 0 || strcmp(type, "tRNS") == 0) {
            if (seen_idat) {
                set_error(err, "%s: %s chunk after IDAT", name, type);
                goto done;
            }
            if (type[0] == 'P' ? png_read_plte(&h, data, len, name, err) : png_read_trns(&h, data, len, name, err)) goto done;
        } else if (is_idat) {
            if (idat_ended) {
                set_error(err, "%s: IDAT chunks are not consecutive", name);
                goto done;
            }
            if (h.color_type == 3 && !h.palette_size) {
                set_error(err, "%s: missing PLTE chunk in a palette image", name);
                goto done;
            }
            // total IDAT bytes never exceed the file size, so this cannot overflow
            idat = xrealloc(idat, idat_size + len);
            memcpy(idat + idat_size, data, len);
            idat_size += len;
            seen_idat = 1;
        } else if (strcmp(type, "IEND") == 0) {
            seen_iend = 1;
        } else if (strcmp(type, "tEXt") == 0 || strcmp(type, "zTXt") == 0 || strcmp(type, "iTXt") == 0) {
            if (png_read_text(img, type, data, len, name, err) != 0) goto done;
        } else if (!(type[0] & 0x20)) {
            // bit 5 of the first byte clear (upper case) marks a chunk needed to show the image (5.4)
            set_error(err, "%s: unknown critical chunk %s", name, type);
            goto done;
        }
        // any other ancillary chunk is safe to skip
    }
    if (!seen_idat) {
        set_error(err, "%s: missing IDAT: the file has no image data", name);
        goto done;
    }
    rc = png_decode_pixels(img, &h, idat, idat_size, err);
done:
    free(idat);
    if (rc != 0) image_free(img);
    return rc;
}

int png_read(Image* img, const char* path, char* err) {
    memset(img, 0, sizeof(*img));
    uint8_t* buf;
    size_t size;
    if (read_file(path, &buf, &size, err) != 0) return -1;
    int rc = png_decode(img, buf, size, path, err);
    free(buf);
    return rc;
}

// ----------------------------------------------------------------------------
// Writing

typedef struct {
    uint8_t* data;
    size_t size, cap;
} PngBuf;

static void png_buf_put(PngBuf* b, const void* p, size_t n) {
    if (b->size + n > b->cap) {
        b->cap = b->size + n > 2 * b->cap ? b->size + n : 2 * b->cap;
        b->data = xrealloc(b->data, b->cap);
    }
    if (n) memcpy(b->data + b->size, p, n);
    b->size += n;
}

// One chunk: length, type, data, CRC-32 of type and data (5.3).
static void png_buf_chunk(PngBuf* b, const char* type, const void* data, size_t n) {
    uint8_t be[4];
    store_be32(be, (uint32_t)n);
    png_buf_put(b, be, 4);
    size_t crc_from = b->size;
    png_buf_put(b, type, 4);
    png_buf_put(b, data, n);
    store_be32(be, (uint32_t)crc32(crc32(0L, Z_NULL, 0), b->data + crc_from, (uInt)(n + 4)));
    png_buf_put(b, be, 4);
}

// Cost of a filtered row as libpng measures it: the sum of |byte| with each byte read as signed,
// so small differences of either sign count as small.
static uint64_t png_filter_cost(const uint8_t* f, size_t n) {
    uint64_t cost = 0;
    for (size_t i = 0; i < n; i++) cost += f[i] < 128 ? f[i] : 256 - f[i];
    return cost;
}

// Applies filter (0-4) to row given the previous row (zeros for the first), into out (9.2).
static void png_filter_row(uint8_t* out, const uint8_t* row, const uint8_t* prev, size_t n, size_t bpp, int filter) {
    for (size_t i = 0; i < n; i++) {
        int a = i >= bpp ? row[i - bpp] : 0, b = prev[i], c = i >= bpp ? prev[i - bpp] : 0;
        int pred = filter == 1 ? a : filter == 2 ? b : filter == 3 ? (a + b) / 2 : filter == 4 ? png_paeth(a, b, c) : 0;
        out[i] = (uint8_t)(row[i] - pred);
    }
}

// Text chunk for one entry: tEXt when key and value are ASCII, else uncompressed iTXt with an
// empty language tag and translated keyword (11.3.3.4), which holds UTF-8 as-is.
static int png_put_text(PngBuf* b, const char* key, const char* value, const char* name, char* err) {
    size_t klen = strlen(key), vlen = strlen(value);
    char shown[80];
    png_printable(shown, key);
    if (klen < 1 || klen > 79) return set_error(err, "%s: text key '%s' must be 1 to 79 characters long", name, shown);
    for (size_t i = 0; i < klen; i++) // the spec allows Latin-1 keywords; we keep to ASCII so they read the same everywhere
        if (key[i] < 0x20 || key[i] > 0x7e) return set_error(err, "%s: text key '%s' must be printable ASCII", name, shown);
    if (vlen > 0x7fffffffu - 100) return set_error(err, "%s: text value for '%s' is too long for a PNG chunk", name, shown);
    int ascii = 1;
    for (size_t i = 0; i < vlen; i++) ascii &= (uint8_t)value[i] < 0x80;
    PngBuf c = {0};
    png_buf_put(&c, key, klen + 1); // with its NUL
    if (!ascii) png_buf_put(&c, "\0\0\0\0", 4); // compression flag, method, empty language, empty translated key
    png_buf_put(&c, value, vlen);
    png_buf_chunk(b, ascii ? "tEXt" : "iTXt", c.data, c.size);
    free(c.data);
    return 0;
}

// png_encode, with name (the output path, or "png_encode") at the start of every error.
static int png_encode_named(const Image* img, uint8_t** buf, size_t* size, const char* name, char* err) {
    *buf = NULL;
    *size = 0;
    int w = img->width, hgt = img->height, ch = img->channels, depth = img->depth;
    if (w < 1 || hgt < 1 || (uint64_t)w * (uint64_t)hgt > IMAGE_MAX_PIXELS)
        return set_error(err, "%s: bad image size %d x %d (1 to %u pixels)", name, w, hgt, IMAGE_MAX_PIXELS);
    if (ch < 1 || ch > 4) return set_error(err, "%s: bad channel count %d (1 to 4)", name, ch);
    if (depth != 8 && depth != 16) return set_error(err, "%s: bad depth %d (8 or 16)", name, depth);
    if (!img->data) return set_error(err, "%s: image has no data", name);

    // filtered rows: each a filter byte then the big-endian samples
    size_t bpp = (size_t)ch * depth / 8, n = (size_t)w * bpp;
    size_t raw_size = (size_t)hgt * (n + 1);
    uint8_t* raw = malloc(raw_size);
    uint8_t* rows = calloc(3 * n, 1); // previous row, current row, candidate filter output
    if (!raw || !rows) {
        free(raw);
        free(rows);
        return set_error(err, "%s: out of memory for a %d x %d image", name, w, hgt);
    }
    uint8_t *prev = rows, *cur = rows + n, *cand = rows + 2 * n;
    for (int y = 0; y < hgt; y++) {
        if (depth == 8) {
            memcpy(cur, (const uint8_t*)img->data + (size_t)y * n, n);
        } else {
            const uint16_t* src = (const uint16_t*)img->data + (size_t)y * w * ch;
            for (size_t i = 0; i < (size_t)w * ch; i++) {
                cur[2 * i] = (uint8_t)(src[i] >> 8);
                cur[2 * i + 1] = (uint8_t)src[i];
            }
        }
        uint8_t* out = raw + (size_t)y * (n + 1);
        uint64_t best = UINT64_MAX;
        for (int f = 0; f < 5; f++) { // ties go to the lower filter number
            png_filter_row(cand, cur, prev, n, bpp, f);
            uint64_t cost = png_filter_cost(cand, n);
            if (cost < best) {
                best = cost;
                out[0] = (uint8_t)f;
                memcpy(out + 1, cand, n);
            }
        }
        uint8_t* t = prev; // the current row becomes the previous one
        prev = cur;
        cur = t;
    }
    free(rows);

    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    if (deflateInit(&zs, 6) != Z_OK) {
        free(raw);
        return set_error(err, "%s: zlib deflateInit failed", name);
    }
    size_t zcap = deflateBound(&zs, raw_size), zused = 0, in_pos = 0;
    uint8_t* z = malloc(zcap);
    int zrc = Z_OK;
    while (z && zrc == Z_OK) { // pieces of at most 1 GiB: avail_in and avail_out are 32-bit
        size_t in_left = raw_size - in_pos, out_left = zcap - zused;
        zs.next_in = raw + in_pos;
        zs.avail_in = (uInt)(in_left < (1u << 30) ? in_left : (1u << 30));
        zs.next_out = z + zused;
        zs.avail_out = (uInt)(out_left < (1u << 30) ? out_left : (1u << 30));
        uInt in0 = zs.avail_in, out0 = zs.avail_out;
        zrc = deflate(&zs, in_pos + in0 == raw_size ? Z_FINISH : Z_NO_FLUSH);
        in_pos += in0 - zs.avail_in;
        zused += out0 - zs.avail_out;
    }
    deflateEnd(&zs);
    free(raw);
    if (!z || zrc != Z_STREAM_END) {
        free(z);
        return set_error(err, "%s: zlib deflate failed (%d)", name, zrc);
    }

    PngBuf b = {0};
    png_buf_put(&b, PNG_SIGNATURE, 8);
    uint8_t ihdr[13];
    store_be32(ihdr, (uint32_t)w);
    store_be32(ihdr + 4, (uint32_t)hgt);
    static const uint8_t color_type[5] = {0, 0, 4, 2, 6}; // by channel count
    ihdr[8] = (uint8_t)depth;
    ihdr[9] = color_type[ch];
    ihdr[10] = ihdr[11] = ihdr[12] = 0; // deflate, adaptive filtering, no interlace
    png_buf_chunk(&b, "IHDR", ihdr, 13);
    for (int i = 0; i < img->text_count; i++) {
        if (png_put_text(&b, img->text_keys[i], img->text_values[i], name, err) != 0) {
            free(z);
            free(b.data);
            return -1;
        }
    }
    for (size_t off = 0; off < zused; off += PNG_IDAT_MAX)
        png_buf_chunk(&b, "IDAT", z + off, zused - off < PNG_IDAT_MAX ? zused - off : PNG_IDAT_MAX);
    png_buf_chunk(&b, "IEND", NULL, 0);
    free(z);
    *buf = b.data;
    *size = b.size;
    return 0;
}

int png_encode(const Image* img, uint8_t** buf, size_t* size, char* err) {
    return png_encode_named(img, buf, size, "png_encode", err);
}

int png_write(const char* path, const Image* img, char* err) {
    uint8_t* buf;
    size_t size;
    if (png_encode_named(img, &buf, &size, path, err) != 0) return -1;
    int rc = write_file_atomic(path, buf, size, err);
    free(buf);
    return rc;
}
