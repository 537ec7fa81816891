// tests/test_png.c: png.c against files written by Pillow and by scripts/make_golden_png.py,
// round trips through our own writer, our encoder's bytes against committed copies, and bad
// input (mutated in memory here) that must be rejected with a one-line error and no crash.
//
// Goldens: tests/golden/png/manifest.txt lists each NAME.png with the decoded size; NAME.raw holds
// the samples we must return (16-bit little-endian). Regenerate with scripts/make_golden_png.py.
// ours_*.png are this file's own encoder output (png_ours_golden), checked in Pillow by
// scripts/check_png_pil.py.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "../common.h"
#include "../png.h"
#include "check.h"

#define PNG_OUT_DIR "build/png_out"

// ----------------------------------------------------------------------------
// helpers

// 1 when err is a non-empty single line that starts with name and contains want.
static int png_error_ok(const char* err, const char* name, const char* want) {
    return err[0] && !strchr(err, '\n') && strncmp(err, name, strlen(name)) == 0 && strstr(err, want) != NULL;
}

static void png_make_out_dir(void) {
    mkdir("build", 0755); // EEXIST is fine; a real failure shows up when writing
    mkdir(PNG_OUT_DIR, 0755);
}

// Decodes a golden NAME.png and compares it with NAME.raw and the manifest's size.
static void png_check_golden(const char* name, int w, int h, int c, int depth) {
    char file[256], err[ERR_MAX];
    snprintf(file, sizeof(file), "png/%s.png", name);
    Image img;
    int rc = png_read(&img, golden_path(file), err);
    if (!check_true(rc == 0, "%s decodes", name)) {
        printf("    %s\n", err);
        return;
    }
    int shape_ok = img.width == w && img.height == h && img.channels == c && img.depth == depth;
    check_true(shape_ok, "%s is %dx%d c%d d%d (got %dx%d c%d d%d)", name, w, h, c, depth, img.width, img.height,
               img.channels, img.depth);
    snprintf(file, sizeof(file), "png/%s.raw", name);
    uint8_t* raw;
    size_t raw_size, n = (size_t)w * h * c * (depth / 8);
    int rc_raw = read_file(golden_path(file), &raw, &raw_size, err);
    if (!check_true(rc_raw == 0 && raw_size == n, "%s.raw has %zu bytes", name, n)) {
        free(raw); // NULL when read_file failed
        image_free(&img);
        return;
    }
    if (depth == 16) { // the .raw is little-endian, our samples are in host order
        uint16_t* want = xmalloc(n);
        for (size_t i = 0; i < n / 2; i++) want[i] = (uint16_t)(raw[2 * i] | (raw[2 * i + 1] << 8));
        if (shape_ok) check_bytes_equal(name, img.data, want, n);
        free(want);
    } else if (shape_ok) {
        check_bytes_equal(name, img.data, raw, n);
    }
    free(raw);
    image_free(&img);
}

// Runs png_check_golden on every manifest entry whose name starts with prefix.
static void png_check_manifest(const char* prefix) {
    char** lines;
    int n_lines;
    char err[ERR_MAX];
    if (!check_true(read_lines(golden_path("png/manifest.txt"), &lines, &n_lines, err) == 0,
                    "read tests/golden/png/manifest.txt (regenerate with scripts/make_golden_png.py)"))
        return;
    int count = 0;
    for (int l = 0; l < n_lines; l++) {
        char name[128];
        int w, h, c, d;
        if (sscanf(lines[l], "%127s %d %d %d %d", name, &w, &h, &c, &d) == 5 && strncmp(name, prefix, strlen(prefix)) == 0) {
            png_check_golden(name, w, h, c, d);
            count++;
        }
    }
    check_true(count >= 10, "manifest lists %d %s* images", count, prefix);
    free_lines(lines, n_lines);
}

// splitmix64, for test data
static uint64_t png_test_rand(uint64_t* s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// A growable byte string for building PNG files by hand.
typedef struct {
    uint8_t* data;
    size_t size;
} Bytes;

static void bytes_put(Bytes* b, const void* p, size_t n) {
    b->data = xrealloc(b->data, b->size + n);
    if (n) memcpy(b->data + b->size, p, n);
    b->size += n;
}

static void bytes_chunk(Bytes* b, const char* type, const void* data, size_t n) {
    uint8_t be[4];
    store_be32(be, (uint32_t)n);
    bytes_put(b, be, 4);
    size_t from = b->size;
    bytes_put(b, type, 4);
    bytes_put(b, data, n);
    store_be32(be, (uint32_t)crc32(0, b->data + from, (uInt)(n + 4)));
    bytes_put(b, be, 4);
}

// Parts of a hand-made PNG. Filtered scanlines (filter byte + row) go in `scan`; they are
// compressed here unless `idat` gives the IDAT payload directly.
typedef struct {
    uint32_t w, h;
    uint8_t depth, color_type, compression, filter, interlace;
    int ihdr_len;             // 13 normally
    const uint8_t* plte;
    int plte_len;
    const uint8_t* scan;
    size_t scan_len;
    const uint8_t* idat;      // raw IDAT payload instead of compressing scan
    size_t idat_len;
    int no_idat, no_iend, idat_first, split_idat; // leave out chunks, or misplace them
    const char* extra_type;   // one more chunk before IDAT
    const uint8_t* extra;
    size_t extra_len;
} PngParts;

static Bytes png_build(const PngParts* p) {
    Bytes b = {0};
    static const uint8_t sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
    bytes_put(&b, sig, 8);
    uint8_t ihdr[13];
    store_be32(ihdr, p->w);
    store_be32(ihdr + 4, p->h);
    ihdr[8] = p->depth;
    ihdr[9] = p->color_type;
    ihdr[10] = p->compression;
    ihdr[11] = p->filter;
    ihdr[12] = p->interlace;
    uLongf zlen = p->idat ? p->idat_len : compressBound(p->scan_len);
    uint8_t* z = xmalloc(zlen);
    if (p->idat) memcpy(z, p->idat, zlen);
    else compress2(z, &zlen, p->scan, p->scan_len, 6);
    if (p->idat_first && !p->no_idat) bytes_chunk(&b, "IDAT", z, zlen);
    bytes_chunk(&b, "IHDR", ihdr, p->ihdr_len ? (size_t)p->ihdr_len : 13);
    if (p->plte) bytes_chunk(&b, "PLTE", p->plte, p->plte_len);
    if (p->extra_type) bytes_chunk(&b, p->extra_type, p->extra, p->extra_len);
    if (!p->idat_first && !p->no_idat) {
        if (p->split_idat) { // IDAT, another chunk, IDAT
            bytes_chunk(&b, "IDAT", z, zlen / 2);
            bytes_chunk(&b, "teXt", "x", 1);
            bytes_chunk(&b, "IDAT", z + zlen / 2, zlen - zlen / 2);
        } else {
            bytes_chunk(&b, "IDAT", z, zlen);
        }
    }
    if (!p->no_iend) bytes_chunk(&b, "IEND", NULL, 0);
    free(z);
    return b;
}

// A valid 4x3 8-bit RGB image with filter bytes cycling through all five filters.
static uint8_t g_scan_rgb[3 * (1 + 12)];
static PngParts png_parts_rgb(void) {
    for (int y = 0; y < 3; y++) {
        g_scan_rgb[y * 13] = (uint8_t)(y + 2); // filters 2, 3, 4
        for (int i = 0; i < 12; i++) g_scan_rgb[y * 13 + 1 + i] = (uint8_t)(i * 20 + y * 3);
    }
    PngParts p = {0};
    p.w = 4;
    p.h = 3;
    p.depth = 8;
    p.color_type = 2;
    p.scan = g_scan_rgb;
    p.scan_len = sizeof(g_scan_rgb);
    return p;
}

// Decodes bytes that must be rejected; checks -1, the message and that img is left empty.
static void png_expect_error(const char* what, const Bytes* b, const char* want) {
    Image img;
    char err[ERR_MAX] = "";
    int rc = png_decode(&img, b->data, b->size, "bad.png", err);
    int ok = rc == -1 && png_error_ok(err, "bad.png", want) && img.data == NULL && img.text_count == 0;
    check_true(ok, "%-28s -> %s", what, err[0] ? err : "(no error)");
    if (rc == 0) image_free(&img);
}

// Rewrites the CRC of every complete chunk, so mutated data gets past the CRC check.
static void png_fix_crcs(uint8_t* d, size_t size) {
    size_t pos = 8;
    while (pos + 12 <= size) {
        uint32_t len = load_be32(d + pos);
        if (len > size - pos - 12) break;
        store_be32(d + pos + 8 + len, (uint32_t)crc32(0, d + pos + 4, len + 4));
        pos += 12 + (size_t)len;
    }
}

// ----------------------------------------------------------------------------
// tests

// Files written by Pillow: every colour type, 1/2/4/8-bit palettes, 16-bit gray, tRNS.
static void test_png_golden_pil(void) { png_check_manifest("pil_"); }

// Files from make_golden_png.py's own writer: 2/4-bit gray, 16-bit colour, Adam7 at edge sizes,
// each filter forced, IDAT in many pieces, unknown ancillary chunks.
static void test_png_golden_crafted(void) { png_check_manifest("craft_"); }

// tEXt (ASCII and Latin-1), zTXt and iTXt (plain and compressed) as Pillow writes them.
static void test_png_golden_text(void) {
    Image img;
    char err[ERR_MAX];
    if (!check_true(png_read(&img, golden_path("png/pil_text_3x2.png"), err) == 0, "pil_text_3x2.png decodes")) return;
    char zipped[160] = "", long_u[201] = "";
    for (int i = 0; i < 20; i++) strcat(zipped, "zipped ");
    for (int i = 0; i < 100; i++) strcat(long_u, "\xc3\xbc"); // u-umlaut in UTF-8
    const char* keys[5] = {"parameters", "Title", "Comment", "Emoji", "Long"};
    const char* values[5] = {"a photo of a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 42",
                             "caf\xc3\xa9", // Latin-1 0xE9 in the file, UTF-8 here
                             zipped, "smile \xf0\x9f\x98\x80 \xc3\xbc", long_u};
    if (check_true(img.text_count == 5, "5 text entries (got %d)", img.text_count)) {
        for (int i = 0; i < 5; i++) {
            check_true(strcmp(img.text_keys[i], keys[i]) == 0, "entry %d is '%s'", i, keys[i]);
            check_true(strcmp(img.text_values[i], values[i]) == 0, "'%s' value matches", keys[i]);
        }
    }
    check_true(image_get_text(&img, "Nope") == NULL, "image_get_text of an absent key is NULL");
    image_free(&img);
}

// Our writer -> our reader, exact, for 1-4 channels at 8 and 16 bits, with UTF-8 text.
static void test_png_roundtrip(void) {
    static const int sizes[][2] = {{1, 1}, {7, 5}, {33, 17}, {64, 3}};
    uint64_t seed = 1;
    for (int depth = 8; depth <= 16; depth += 8) {
        for (int c = 1; c <= 4; c++) {
            for (int s = 0; s < 4; s++) {
                Image img = {0};
                img.width = sizes[s][0];
                img.height = sizes[s][1];
                img.channels = c;
                img.depth = depth;
                size_t n = (size_t)img.width * img.height * c * (depth / 8);
                uint8_t* px = xmalloc(n);
                // half smooth (the filters matter), half noise (every byte value occurs)
                for (size_t i = 0; i < n; i++) px[i] = i < n / 2 ? (uint8_t)(i * 3 + i / 7) : (uint8_t)png_test_rand(&seed);
                img.data = px;
                image_add_text(&img, "parameters", "a cat\nSteps: 20, Seed: 42");
                image_add_text(&img, "Comment", "gr\xc3\xbcn \xf0\x9f\x98\x80"); // "grün 😀": iTXt
                uint8_t* buf;
                size_t size;
                char err[ERR_MAX], label[64];
                snprintf(label, sizeof(label), "%dx%d c%d d%d", img.width, img.height, c, depth);
                if (!check_true(png_encode(&img, &buf, &size, err) == 0, "%s encodes", label)) {
                    printf("    %s\n", err);
                    image_free(&img);
                    continue;
                }
                Image back;
                if (check_true(png_decode(&back, buf, size, label, err) == 0, "%s decodes", label)) {
                    int same = back.width == img.width && back.height == img.height && back.channels == c &&
                               back.depth == depth && back.text_count == 2;
                    if (check_true(same, "%s: size, layout and text count", label)) {
                        check_bytes_equal(label, back.data, img.data, n);
                        check_true(strcmp(image_get_text(&back, "parameters"), img.text_values[0]) == 0 &&
                                       strcmp(image_get_text(&back, "Comment"), img.text_values[1]) == 0,
                                   "%s: text preserved", label);
                    }
                    image_free(&back);
                }
                // ASCII goes into tEXt, UTF-8 into iTXt
                check_true(memmem(buf, size, "tEXtparameters", 14) && memmem(buf, size, "iTXtComment", 11),
                           "%s: tEXt for ASCII, iTXt for UTF-8", label);
                free(buf);
                image_free(&img);
            }
        }
    }
}

// Our encoder's bytes for fixed pattern images must equal the committed copies (which
// scripts/check_png_pil.py checks in Pillow). A change here means the encoder changed, or
// zlib's deflate did: then look at the images, rerun check_png_pil.py, and commit new copies.
// The pattern on a 37x23 image: sample (x, y, c) = (x*7 + y*13 + c*51) & 255 at 8 bits, and
// (x*1031 + y*2053 + c*4099 + x*y*17) & 65535 at 16 bits (ours_rgba16).
// zlib release whose deflate wrote tests/golden/png/ours_*.png (Debian 12's zlib1g).
#define OURS_ZLIB_VERSION "1.2.13"

static void test_png_ours_golden(void) {
    // keep in step with scripts/check_png_pil.py
    static const struct {
        const char* name;
        int channels, depth;
        const char* params;
    } files[5] = {
        {"ours_gray", 1, 8,
         "a photo of an astronaut riding a horse\nNegative prompt: blurry\nSteps: 25, Sampler: Euler, CFG scale: 7.0, Seed: 42, Size: 37x23"},
        {"ours_gray_alpha", 2, 8, "gray+alpha test\nSteps: 1, Seed: 1"},
        {"ours_rgb", 3, 8,
         "a red fox in the snow\nSteps: 30, Sampler: DDIM, CFG scale: 5.5, Seed: 1234, Size: 37x23, Model: sd_xl_base_1.0"},
        {"ours_rgba", 4, 8, "ein Fuchs im Schnee, gr\xc3\xbcn \xf0\x9f\xa6\x8a\nSteps: 30, Seed: 7"}, // "grün 🦊": iTXt
        {"ours_rgba16", 4, 16, "16-bit RGBA test"},
    };
    png_make_out_dir();
    printf("  zlib %s\n", zlibVersion());
    for (int k = 0; k < 5; k++) {
        const int W = 37, H = 23, C = files[k].channels;
        Image img = {0};
        img.width = W;
        img.height = H;
        img.channels = C;
        img.depth = files[k].depth;
        size_t n = (size_t)W * H * C;
        uint8_t* px8 = xmalloc(n * (img.depth / 8));
        uint16_t* px16 = (uint16_t*)px8;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < C; c++) {
                    size_t i = ((size_t)y * W + x) * C + c;
                    if (img.depth == 8) px8[i] = (uint8_t)((x * 7 + y * 13 + c * 51) & 255);
                    else px16[i] = (uint16_t)((x * 1031 + y * 2053 + c * 4099 + x * y * 17) & 65535);
                }
        img.data = px8;
        image_add_text(&img, "parameters", files[k].params);
        char path[256], file[64], err[ERR_MAX];
        snprintf(path, sizeof(path), "%s/%s.png", PNG_OUT_DIR, files[k].name);
        snprintf(file, sizeof(file), "png/%s.png", files[k].name);
        if (check_true(png_write(path, &img, err) == 0, "write %s", path)) {
            uint8_t *got, *want;
            size_t got_size, want_size;
            if (read_file(path, &got, &got_size, err) == 0) {
                if (check_true(read_file(golden_path(file), &want, &want_size, err) == 0,
                               "golden %s present (see scripts/check_png_pil.py to make it)", file)) {
                    // The bytes depend on zlib's deflate too: compare them only with the zlib that
                    // wrote the goldens. The committed file's pixels and text are compared always.
                    if (strcmp(zlibVersion(), OURS_ZLIB_VERSION) == 0) {
                        check_true(got_size == want_size, "%s: %zu bytes, golden %zu", files[k].name, got_size, want_size);
                        check_bytes_equal(files[k].name, got, want, got_size < want_size ? got_size : want_size);
                    } else {
                        printf("    zlib %s is not %s: byte comparison of %s left out\n", zlibVersion(),
                               OURS_ZLIB_VERSION, files[k].name);
                    }
                    Image committed;
                    if (check_true(png_decode(&committed, want, want_size, file, err) == 0, "decode committed %s", file)) {
                        check_bytes_equal("committed file's pattern", committed.data, img.data, n * (img.depth / 8));
                        const char* v = image_get_text(&committed, "parameters");
                        check_true(v && strcmp(v, files[k].params) == 0, "committed file's parameters chunk");
                        image_free(&committed);
                    }
                    free(want);
                }
                free(got);
            }
            Image back;
            if (check_true(png_read(&back, path, err) == 0, "read back %s", path)) {
                check_bytes_equal("decoded pattern", back.data, img.data, n * (img.depth / 8));
                const char* v = image_get_text(&back, "parameters");
                check_true(v && strcmp(v, files[k].params) == 0, "parameters chunk read back");
                image_free(&back);
            }
        } else {
            printf("    %s\n", err);
        }
        image_free(&img);
    }
}

// Malformed files, each rejected with a one-line error naming the problem.
static void test_png_bad_input(void) {
    PngParts good = png_parts_rgb();
    Bytes b = png_build(&good);
    Image img;
    char err[ERR_MAX];
    if (check_true(png_decode(&img, b.data, b.size, "good.png", err) == 0, "the unmutated file decodes")) {
        int ok = img.width == 4 && img.height == 3 && img.channels == 3;
        check_true(ok, "4x3 RGB");
        image_free(&img);
    }

    Bytes m = {0};
    // signature and CRCs
    bytes_put(&m, b.data, b.size);
    m.data[0] = 'X';
    png_expect_error("bad signature", &m, "signature");
    m.data[0] = 137;
    m.data[8 + 8 + 2] ^= 1; // a byte of IHDR's data
    png_expect_error("bad CRC in IHDR", &m, "bad CRC in chunk IHDR");
    m.data[8 + 8 + 2] ^= 1;
    m.data[8 + 25 + 9] ^= 0x40; // a byte of IDAT's data
    png_expect_error("bad CRC in IDAT", &m, "bad CRC in chunk IDAT");
    m.data[8 + 25 + 9] ^= 0x40;
    m.data[m.size - 1] ^= 1; // IEND's CRC
    png_expect_error("bad CRC in IEND", &m, "bad CRC in chunk IEND");
    m.data[m.size - 1] ^= 1;
    store_be32(m.data + 33, 0x80000000u); // IDAT length
    png_expect_error("chunk length above 2^31-1", &m, "length 2147483648");
    free(m.data);

    // IHDR
    struct {
        const char* what;
        uint32_t w, h;
        int depth, color_type, compression, filter, interlace, ihdr_len;
        const char* want;
    } ihdr_cases[] = {
        {"RGB at 4 bits", 4, 3, 4, 2, 0, 0, 0, 13, "bit depth 4 is not allowed for colour type 2"},
        {"palette at 16 bits", 4, 3, 16, 3, 0, 0, 0, 13, "bit depth 16 is not allowed for colour type 3"},
        {"gray at 3 bits", 4, 3, 3, 0, 0, 0, 0, 13, "bit depth 3 is not allowed for colour type 0"},
        {"colour type 1", 4, 3, 8, 1, 0, 0, 0, 13, "unknown colour type 1"},
        {"width 0", 0, 3, 8, 2, 0, 0, 0, 13, "width and height must be at least 1"},
        {"height 0", 4, 0, 8, 2, 0, 0, 0, 13, "width and height must be at least 1"},
        {"65536 x 65536", 65536, 65536, 8, 2, 0, 0, 0, 13, "image too large"},
        {"16384 x 16384 (above PIL's limit)", 16384, 16384, 8, 2, 0, 0, 0, 13, "image too large"},
        {"17000 x 10527 (PIL's limit + 2030)", 17000, 10527, 8, 2, 0, 0, 0, 13, "the limit is 178956970 pixels"},
        {"width 2^31", 0x80000000u, 1, 8, 2, 0, 0, 0, 13, "2^31-1"},
        {"compression method 1", 4, 3, 8, 2, 1, 0, 0, 13, "compression method 1"},
        {"filter method 1", 4, 3, 8, 2, 0, 1, 0, 13, "filter method 1"},
        {"interlace method 2", 4, 3, 8, 2, 0, 0, 2, 13, "interlace method 2"},
        {"IHDR of 12 bytes", 4, 3, 8, 2, 0, 0, 0, 12, "IHDR chunk has length 12"},
    };
    for (size_t i = 0; i < sizeof(ihdr_cases) / sizeof(ihdr_cases[0]); i++) {
        PngParts p = good;
        p.w = ihdr_cases[i].w;
        p.h = ihdr_cases[i].h;
        p.depth = (uint8_t)ihdr_cases[i].depth;
        p.color_type = (uint8_t)ihdr_cases[i].color_type;
        p.compression = (uint8_t)ihdr_cases[i].compression;
        p.filter = (uint8_t)ihdr_cases[i].filter;
        p.interlace = (uint8_t)ihdr_cases[i].interlace;
        p.ihdr_len = ihdr_cases[i].ihdr_len;
        Bytes bad = png_build(&p);
        png_expect_error(ihdr_cases[i].what, &bad, ihdr_cases[i].want);
        free(bad.data);
    }

    // chunk structure
    PngParts p = good;
    p.no_idat = 1;
    Bytes bad = png_build(&p);
    png_expect_error("missing IDAT", &bad, "missing IDAT");
    free(bad.data);
    p = good;
    p.no_iend = 1;
    bad = png_build(&p);
    png_expect_error("missing IEND", &bad, "no IEND");
    free(bad.data);
    p = good;
    p.idat_first = 1;
    bad = png_build(&p);
    png_expect_error("IDAT before IHDR", &bad, "missing IHDR");
    free(bad.data);
    p = good;
    p.split_idat = 1;
    bad = png_build(&p);
    png_expect_error("IDAT, teXt, IDAT", &bad, "not consecutive");
    free(bad.data);
    p = good;
    p.extra_type = "ABCD";
    p.extra = (const uint8_t*)"x";
    p.extra_len = 1;
    bad = png_build(&p);
    png_expect_error("unknown critical chunk", &bad, "unknown critical chunk ABCD");
    free(bad.data);
    p.extra_type = "abCD"; // ancillary: skipped
    bad = png_build(&p);
    if (check_true(png_decode(&img, bad.data, bad.size, "ok.png", err) == 0, "unknown ancillary chunk is skipped")) image_free(&img);
    free(bad.data);
    p = good;
    p.extra_type = "tRNS";
    p.extra = (const uint8_t*)"\0\1\0\2";
    p.extra_len = 4;
    bad = png_build(&p);
    png_expect_error("tRNS of 4 bytes on RGB", &bad, "tRNS chunk has length 4, expected 6");
    free(bad.data);
    p.extra_type = "zTXt";
    p.extra = (const uint8_t*)"Comment\0\0garbage";
    p.extra_len = 16;
    bad = png_build(&p);
    png_expect_error("zTXt with bad zlib data", &bad, "zlib");
    free(bad.data);
    p.extra_type = "tEXt";
    p.extra = (const uint8_t*)"no keyword end";
    p.extra_len = 14;
    bad = png_build(&p);
    png_expect_error("tEXt without NUL", &bad, "keyword");
    free(bad.data);

    // image data
    p = good;
    p.scan_len = 2 * 13; // one row short
    bad = png_build(&p);
    png_expect_error("IDAT one row short", &bad, "IDAT data inflates to 26 bytes, expected 39");
    free(bad.data);
    uint8_t longer[4 * 13];
    memcpy(longer, g_scan_rgb, sizeof(g_scan_rgb));
    memset(longer + sizeof(g_scan_rgb), 0, 13);
    p = good;
    p.scan = longer;
    p.scan_len = sizeof(longer);
    bad = png_build(&p);
    png_expect_error("IDAT one row too many", &bad, "inflates to more than 39 bytes");
    free(bad.data);
    p = good;
    p.idat = (const uint8_t*)"\x78\x9c\xff\xff\xff\xff\xff\xff";
    p.idat_len = 8;
    bad = png_build(&p);
    png_expect_error("IDAT with a bad deflate block", &bad, "zlib error");
    free(bad.data);
    p.idat = (const uint8_t*)"\x12\x34\x56";
    p.idat_len = 3;
    bad = png_build(&p);
    png_expect_error("IDAT with a bad zlib header", &bad, "zlib error");
    free(bad.data);
    uLongf zlen = compressBound(sizeof(g_scan_rgb));
    uint8_t* z = xmalloc(zlen);
    compress2(z, &zlen, g_scan_rgb, sizeof(g_scan_rgb), 6);
    p.idat = z;
    p.idat_len = zlen - 6; // the stream stops before its end
    bad = png_build(&p);
    png_expect_error("IDAT zlib stream cut short", &bad, "zlib stream is truncated");
    free(bad.data);
    free(z);
    uint8_t bad_filter[sizeof(g_scan_rgb)];
    memcpy(bad_filter, g_scan_rgb, sizeof(bad_filter));
    bad_filter[13] = 5; // row 1
    p = good;
    p.scan = bad_filter;
    bad = png_build(&p);
    png_expect_error("filter type 5", &bad, "bad filter type 5 in row 1");
    free(bad.data);

    // palettes: 2 entries, 8-bit indices
    static const uint8_t plte[6] = {255, 0, 0, 0, 0, 255};
    uint8_t idx[2 * 3] = {0, 0, 1, 0, 1, 0};
    PngParts pal = {0};
    pal.w = 2;
    pal.h = 2;
    pal.depth = 8;
    pal.color_type = 3;
    pal.plte = plte;
    pal.plte_len = 6;
    pal.scan = idx;
    pal.scan_len = sizeof(idx);
    bad = png_build(&pal);
    if (check_true(png_decode(&img, bad.data, bad.size, "pal.png", err) == 0, "2-entry palette image decodes")) {
        static const uint8_t want[12] = {255, 0, 0, 0, 0, 255, 0, 0, 255, 255, 0, 0};
        check_bytes_equal("palette lookup", img.data, want, 12);
        image_free(&img);
    }
    free(bad.data);
    idx[4] = 5;
    bad = png_build(&pal);
    png_expect_error("palette index 5 of 2", &bad, "palette index 5 out of range at pixel (0, 1)");
    free(bad.data);
    pal.plte = NULL;
    bad = png_build(&pal);
    png_expect_error("palette image without PLTE", &bad, "missing PLTE");
    free(bad.data);
    p = good;
    p.color_type = 0;
    p.plte = plte;
    p.plte_len = 6;
    bad = png_build(&p);
    png_expect_error("PLTE in a gray image", &bad, "PLTE chunk is not allowed");
    free(bad.data);
    p = good;
    p.plte = plte;
    p.plte_len = 5;
    bad = png_build(&p);
    png_expect_error("PLTE of 5 bytes", &bad, "PLTE chunk has length 5");
    free(bad.data);

    // a missing file names the path
    check_true(png_read(&img, "build/png_out/does_not_exist.png", err) == -1 &&
                   png_error_ok(err, "build/png_out/does_not_exist.png", "No such file"),
               "missing file -> %s", err);
    free(b.data);
}

// Every prefix of a valid file is rejected as truncated (or as no PNG, inside the signature).
static void test_png_truncated(void) {
    uint8_t* full;
    size_t size;
    char err[ERR_MAX];
    const char* file = golden_path("png/pil_text_3x2.png");
    if (!check_true(read_file(file, &full, &size, err) == 0, "read %s", file)) return;
    int rejected = 0;
    for (size_t n = 0; n < size; n++) {
        // a copy of exactly n bytes, so ASan sees any read past the end
        uint8_t* cut = xmalloc(n);
        memcpy(cut, full, n);
        Image img;
        int rc = png_decode(&img, cut, n, "cut.png", err);
        int ok = rc == -1 && png_error_ok(err, "cut.png", n < 8 ? "signature" : "truncated");
        rejected += ok;
        if (!ok) check_true(0, "prefix of %zu bytes -> %s", n, rc ? err : "decoded");
        if (rc == 0) image_free(&img);
        // a few named cut points, to show the messages
        if (n == 4 || n == 20 || n == 40 || n == size - 12 || n == size - 1) check_true(ok, "cut at %zu -> %s", n, err);
        free(cut);
    }
    check_true(rejected == (int)size, "%d of %zu prefixes rejected as truncated", rejected, size);
    free(full);
}

// Random mutations of valid files, with the CRCs fixed up so they reach the decoder proper.
// Nothing is expected of the result except that it is a clean success or a one-line error;
// under `make debug` ASan and UBSan check that no input reads out of bounds.
static void test_png_fuzz(void) {
    static const char* files[] = {"png/craft_gray2_i_33x17.png", "png/pil_pal4_trns_7x5.png", "png/pil_text_3x2.png",
                                  "png/craft_rgba16_i_9x9.png", "png/craft_rgb8_split_7x5.png"};
    uint64_t seed = 12345;
    int runs = 0, decoded = 0, clean_errors = 0;
    for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
        uint8_t* orig;
        size_t size;
        char err[ERR_MAX];
        if (!check_true(read_file(golden_path(files[f]), &orig, &size, err) == 0, "read %s", files[f])) continue;
        for (int it = 0; it < 400; it++) {
            uint8_t* d = xmalloc(size);
            memcpy(d, orig, size);
            int flips = 1 + (int)(png_test_rand(&seed) % 4);
            for (int k = 0; k < flips; k++) {
                size_t at = 8 + png_test_rand(&seed) % (size - 8);
                d[at] = (it & 1) ? (uint8_t)png_test_rand(&seed) : (uint8_t)(d[at] ^ (1u << (png_test_rand(&seed) % 8)));
            }
            if (it % 4 != 3) png_fix_crcs(d, size); // one in four keeps its bad CRC
            Image img;
            err[0] = 0;
            int rc = png_decode(&img, d, size, "fuzz.png", err);
            runs++;
            if (rc == 0) {
                decoded++;
                image_free(&img);
            } else if (err[0] && !strchr(err, '\n') && strncmp(err, "fuzz.png: ", 10) == 0) {
                clean_errors++;
            } else {
                printf("    unclean error: '%s'\n", err);
            }
            free(d);
        }
        free(orig);
    }
    printf("  %d mutated files: %d decoded, %d rejected\n", runs, decoded, clean_errors);
    check_true(decoded + clean_errors == runs, "every mutated file decoded or gave a one-line error");
    check_true(clean_errors > 0 && decoded > 0, "mutations both passed and failed (the fuzzing reached the decoder)");
}

// png_write goes through a temporary file beside path and a rename: a failed write leaves nothing behind.
static void test_png_write_atomic(void) {
    png_make_out_dir();
    uint8_t px[6] = {1, 2, 3, 4, 5, 6};
    Image img = {0};
    img.width = 2;
    img.height = 1;
    img.channels = 3;
    img.depth = 8;
    img.data = px;
    char err[ERR_MAX] = "";
    const char* bad = PNG_OUT_DIR "/no_such_dir/x.png";
    int rc = png_write(bad, &img, err);
    check_true(rc == -1 && png_error_ok(err, bad, "does not exist"), "write into a missing folder -> %s", err);
    check_true(access(bad, F_OK) != 0 && access(PNG_OUT_DIR "/no_such_dir", F_OK) != 0, "no file and no folder made");

    const char* good = PNG_OUT_DIR "/atomic.png";
    remove(good);
    check_true(png_write(good, &img, err) == 0, "write %s", good);
    px[0] = 99; // overwrite the existing file with different pixels
    check_true(png_write(good, &img, err) == 0, "overwrite %s", good);
    check_true(temp_files_beside(good) == 0, "no temporary file left after success");
    Image back;
    if (check_true(png_read(&back, good, err) == 0, "read back %s", good)) {
        check_bytes_equal("second write's pixels", back.data, px, 6);
        image_free(&back);
    }
    remove(good);
}

// The writer refuses images it cannot write, with a message.
static void test_png_encode_rejects(void) {
    uint8_t px[16] = {0};
    struct {
        const char* what;
        int w, h, c, depth;
        const char* key;
        const char* want;
    } cases[] = {
        {"5 channels", 2, 2, 5, 8, NULL, "bad channel count 5"},
        {"depth 4", 2, 2, 1, 4, NULL, "bad depth 4"},
        {"width 0", 0, 2, 1, 8, NULL, "bad image size 0 x 2"},
        {"empty text key", 2, 2, 1, 8, "", "1 to 79"},
        {"80-character key", 2, 2, 1, 8, "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk", "1 to 79"},
        {"non-ASCII key", 2, 2, 1, 8, "gr\xc3\xbcn", "printable ASCII"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Image img = {0};
        img.width = cases[i].w;
        img.height = cases[i].h;
        img.channels = cases[i].c;
        img.depth = cases[i].depth;
        img.data = px;
        if (cases[i].key) image_add_text(&img, cases[i].key, "v");
        uint8_t* buf = NULL;
        size_t size = 0;
        char err[ERR_MAX] = "";
        int rc = png_encode(&img, &buf, &size, err);
        check_true(rc == -1 && buf == NULL && png_error_ok(err, "png_encode", cases[i].want), "%-18s -> %s", cases[i].what, err);
        free(buf);
        img.data = NULL; // px is on the stack
        image_free(&img);
    }
}

const TestCase tests_png[] = {
    {"png_golden_pil", test_png_golden_pil},
    {"png_golden_crafted", test_png_golden_crafted},
    {"png_golden_text", test_png_golden_text},
    {"png_roundtrip", test_png_roundtrip},
    {"png_ours_golden", test_png_ours_golden},
    {"png_bad_input", test_png_bad_input},
    {"png_truncated", test_png_truncated},
    {"png_fuzz", test_png_fuzz},
    {"png_write_atomic", test_png_write_atomic},
    {"png_encode_rejects", test_png_encode_rejects},
    {NULL, NULL},
};
