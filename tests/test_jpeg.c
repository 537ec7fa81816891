// tests/test_jpeg.c: jpeg.c against Pillow's decoding of files written by Pillow and by
// scripts/make_golden_jpeg.py, files both must refuse, and bad input (mutated in memory here)
// that must be rejected with a one-line error and no crash.
//
// Goldens: tests/golden/jpeg/manifest.txt lists each NAME.jpg with the decoded size; NAME.png
// holds the pixels Pillow (libjpeg-turbo) decodes from it, which we must return byte for byte.
// Lines `NAME refuse WORDS` are files jpeg_decode must refuse with an error containing WORDS.
// Regenerate with scripts/make_golden_jpeg.py.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../jpeg.h"
#include "../png.h"
#include "check.h"

// ----------------------------------------------------------------------------
// helpers

// 1 when err is a non-empty single line that starts with name and contains want.
static int jpeg_error_ok(const char* err, const char* name, const char* want) {
    return err[0] && !strchr(err, '\n') && strncmp(err, name, strlen(name)) == 0 && strstr(err, want) != NULL;
}

// Decodes golden NAME.jpg and compares it with NAME.png (Pillow's pixels) and the manifest's size.
static void jpeg_check_golden(const char* name, int w, int h, int c) {
    char file[256], err[ERR_MAX];
    snprintf(file, sizeof(file), "jpeg/%s.jpg", name);
    Image img;
    int rc = jpeg_read(&img, golden_path(file), err);
    if (!check_true(rc == 0, "%s decodes", name)) {
        printf("    %s\n", err);
        return;
    }
    int shape_ok = img.width == w && img.height == h && img.channels == c && img.depth == 8 && img.text_count == 0;
    check_true(shape_ok, "%s is %dx%d c%d (got %dx%d c%d d%d)", name, w, h, c, img.width, img.height, img.channels,
               img.depth);
    snprintf(file, sizeof(file), "jpeg/%s.png", name);
    Image want;
    if (check_true(png_read(&want, golden_path(file), err) == 0, "%s.png (Pillow's pixels) reads", name)) {
        int same_layout = want.width == w && want.height == h && want.channels == c && want.depth == 8;
        if (check_true(same_layout, "%s.png is %dx%d c%d", name, w, h, c) && shape_ok)
            check_bytes_equal(name, img.data, want.data, (size_t)w * h * c);
        image_free(&want);
    }
    image_free(&img);
}

// Checks every manifest entry whose name starts with prefix and returns how many there were:
// decodable entries through jpeg_check_golden, `refuse` entries must fail with their words.
static int jpeg_check_manifest(const char* prefix) {
    char** lines;
    int n_lines;
    char err[ERR_MAX];
    if (!check_true(read_lines(golden_path("jpeg/manifest.txt"), &lines, &n_lines, err) == 0,
                    "read tests/golden/jpeg/manifest.txt (regenerate with scripts/make_golden_jpeg.py)"))
        return 0;
    int count = 0;
    for (int l = 0; l < n_lines; l++) {
        const char* line = lines[l];
        char name[128], kind[16];
        int w, h, c;
        if (strncmp(line, prefix, strlen(prefix)) != 0) continue;
        if (sscanf(line, "%127s %d %d %d", name, &w, &h, &c) == 4) {
            jpeg_check_golden(name, w, h, c);
            count++;
        } else if (sscanf(line, "%127s %15s", name, kind) == 2 && strcmp(kind, "refuse") == 0) {
            // the words run from after "refuse " to the comment ("    # Pillow: ...")
            const char* words = strstr(line, " refuse ") + 8;
            char want[256];
            size_t n = strcspn(words, "#");
            while (n > 0 && words[n - 1] == ' ') n--;
            snprintf(want, sizeof(want), "%.*s", (int)n, words);
            char file[256];
            snprintf(file, sizeof(file), "jpeg/%s.jpg", name);
            const char* path = golden_path(file);
            Image img;
            err[0] = 0;
            int rc = jpeg_read(&img, path, err);
            int ok = rc == -1 && jpeg_error_ok(err, path, want) && img.data == NULL;
            check_true(ok, "%-28s refused: %s", name, err[0] ? err : "(no error)");
            if (rc == 0) image_free(&img);
            count++;
        } else {
            check_true(0, "manifest line '%s' parses", shown(line));
        }
    }
    free_lines(lines, n_lines);
    return count;
}

// splitmix64, for test data
static uint64_t jpeg_test_rand(uint64_t* s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Offset of the first marker FF `code` in a JPEG, walking the marker segments from SOI up to the
// first SOS, then scanning the bytes after it; -1 when there is none.
static long jpeg_find_marker(const uint8_t* d, size_t size, int code) {
    size_t pos = 2;
    while (pos + 4 <= size && d[pos] == 0xFF) {
        if (d[pos + 1] == code) return (long)pos;
        if (d[pos + 1] == 0xDA) break;
        pos += 2 + (size_t)((d[pos + 2] << 8) | d[pos + 3]);
    }
    for (; pos + 1 < size; pos++)
        if (d[pos] == 0xFF && d[pos + 1] == code) return (long)pos;
    return -1;
}

// Decodes bytes that must be rejected; checks -1, a one-line message naming the file and
// containing want, and that img is left empty.
static void jpeg_expect_error(const char* what, const uint8_t* data, size_t size, const char* want) {
    Image img;
    char err[ERR_MAX] = "";
    int rc = jpeg_decode(&img, data, size, "bad.jpg", err);
    int ok = rc == -1 && jpeg_error_ok(err, "bad.jpg", want) && img.data == NULL && img.width == 0;
    check_true(ok, "%-34s -> %s", what, err[0] ? err : "(no error)");
    if (rc == 0) image_free(&img);
}

// A copy of a golden file to mutate.
static uint8_t* jpeg_golden_bytes(const char* name, size_t* size) {
    char file[256], err[ERR_MAX];
    snprintf(file, sizeof(file), "jpeg/%s.jpg", name);
    uint8_t* d;
    if (!check_true(read_file(golden_path(file), &d, size, err) == 0, "read %s", file)) {
        printf("    %s\n", err);
        return NULL;
    }
    return d;
}

// ----------------------------------------------------------------------------
// tests

// Files written by Pillow (libjpeg-turbo): qualities, subsamplings, progressive, restarts, RGB,
// 16-bit tables, tiny sizes.
static void test_jpeg_golden_pil(void) {
    check_true(jpeg_check_manifest("pil_") >= 20, "manifest lists the pil_* files");
}

// Files from make_golden_jpeg.py's encoder: other sampling factors, scan structures, markers,
// colour-space signals, IDCT overshoot.
static void test_jpeg_golden_crafted(void) {
    check_true(jpeg_check_manifest("craft_") >= 20, "manifest lists the craft_* files");
}

// Files we must refuse: Pillow refuses them too (sampling ratios, MCU size, 2 components), or
// Pillow decodes what we do not support (CMYK, a progressive file libjpeg would smooth).
static void test_jpeg_golden_refused(void) {
    check_true(jpeg_check_manifest("bad_") >= 5, "manifest lists the bad_* files");
}

// jpeg_is_jpeg, jpeg_read's errors, and the Image fields.
static void test_jpeg_api(void) {
    static const uint8_t soi[3] = {0xFF, 0xD8, 0xFF}, png_sig[4] = {137, 80, 78, 71};
    check_true(jpeg_is_jpeg(soi, 3) && jpeg_is_jpeg(soi, 2), "FF D8 is a JPEG");
    check_true(!jpeg_is_jpeg(soi, 1) && !jpeg_is_jpeg(soi, 0) && !jpeg_is_jpeg(png_sig, 4), "short data and PNG are not");
    Image img;
    char err[ERR_MAX] = "";
    int rc = jpeg_read(&img, "no/such/file.jpg", err);
    check_true(rc == -1 && jpeg_error_ok(err, "no/such/file.jpg", "No such file") && img.data == NULL,
               "missing file -> %s", err);
    // jpeg_read and jpeg_decode agree
    size_t size;
    uint8_t* d = jpeg_golden_bytes("pil_q90_420_77x61", &size);
    if (!d) return;
    Image a, b;
    if (check_true(jpeg_decode(&a, d, size, "mem.jpg", err) == 0, "decode from memory")) {
        if (check_true(jpeg_read(&b, golden_path("jpeg/pil_q90_420_77x61.jpg"), err) == 0, "read from file")) {
            check_true(a.width == 77 && a.height == 61 && a.channels == 3 && a.depth == 8 && a.text_count == 0,
                       "77x61, 3 channels, 8-bit, no text");
            check_bytes_equal("jpeg_read == jpeg_decode", a.data, b.data, (size_t)77 * 61 * 3);
            image_free(&b);
        }
        image_free(&a);
    }
    free(d);
}

// Malformed files, each rejected with a one-line error naming the problem.
static void test_jpeg_bad_input(void) {
    size_t size;
    uint8_t* good = jpeg_golden_bytes("pil_q90_420_77x61", &size);
    if (!good) return;
    uint8_t* m = xmalloc(size + 64);
    Image img;
    char err[ERR_MAX];
    check_true(jpeg_decode(&img, good, size, "good.jpg", err) == 0, "the unmutated file decodes");
    image_free(&img);

    jpeg_expect_error("empty", good, 0, "no SOI");
    jpeg_expect_error("one byte", good, 1, "no SOI");
    static const uint8_t png_sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
    jpeg_expect_error("a PNG signature", png_sig, 8, "no SOI");
    jpeg_expect_error("SOI only", good, 2, "truncated");

    long sof = jpeg_find_marker(good, size, 0xC0), dht = jpeg_find_marker(good, size, 0xC4);
    long dqt = jpeg_find_marker(good, size, 0xDB), sos = jpeg_find_marker(good, size, 0xDA);
    if (!check_true(sof > 0 && dht > 0 && dqt > 0 && sos > 0, "found SOF0, DHT, DQT and SOS")) goto done;

    // truncations
    jpeg_expect_error("cut inside a quantization table", good, (size_t)dqt + 30, "truncated");
    jpeg_expect_error("cut inside a Huffman table", good, (size_t)dht + 12, "truncated");
    jpeg_expect_error("cut inside SOF", good, (size_t)sof + 9, "truncated");
    jpeg_expect_error("cut at the start of the scan", good, (size_t)sos + 16, "truncated");
    jpeg_expect_error("cut in the middle of the scan", good, (size_t)sos + (size - sos) / 2, "truncated");
    jpeg_expect_error("cut 3 bytes before the end", good, size - 3, "truncated");
    jpeg_expect_error("EOI missing", good, size - 2, "no EOI");

    // unsupported processes and formats, by editing the frame header
    struct {
        const char* what;
        long at;
        uint8_t value;
        const char* want;
    } edits[] = {
        {"SOF9 (arithmetic coding)", sof + 1, 0xC9, "arithmetic-coded JPEG is not supported"},
        {"SOF10 (progressive arithmetic)", sof + 1, 0xCA, "arithmetic-coded JPEG is not supported"},
        {"SOF3 (lossless)", sof + 1, 0xC3, "lossless JPEG is not supported"},
        {"SOF5 (hierarchical)", sof + 1, 0xC5, "hierarchical"},
        {"12-bit precision", sof + 4, 12, "12-bit JPEG is not supported"},
        {"16-bit precision", sof + 4, 16, "16-bit JPEG is not supported"},
        {"height 0 (DNL)", sof + 5, 0, "DNL"},
        {"width 0", sof + 8, 0, "empty JPEG image"},
        {"sampling factors 5x1", sof + 11, 0x51, "bad sampling factors"},
        {"sampling factors 0x2", sof + 11, 0x02, "bad sampling factors"},
        {"quantization table 3", sof + 12, 3, "quantization table 3 is not defined"},
        {"quantization table 4", sof + 12, 4, "quantization table 4"},
        {"SOS names component 9", sos + 5, 9, "component id 9"},
        {"SOS uses DC table 2", sos + 6, 0x20, "DC Huffman table 2, which is not defined"},
        {"SOS uses table slot 5", sos + 6, 0x05, "slot 5"},
        {"an unknown marker (FF 02)", sof + 1, 0x02, "unknown JPEG marker 0xFF02"},
        {"a second SOI", sof + 1, 0xD8, "second SOI"},
    };
    for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
        memcpy(m, good, size);
        if (edits[i].at == sof + 5) m[sof + 6] = 0; // height is 2 bytes
        if (edits[i].at == sof + 8) m[sof + 7] = 0; // so is width
        m[edits[i].at] = edits[i].value;
        jpeg_expect_error(edits[i].what, m, size, edits[i].want);
    }
    // 16384 x 16384: within JPEG's 65500 a side, above PIL's pixel limit (png.h IMAGE_MAX_PIXELS)
    memcpy(m, good, size);
    m[sof + 5] = 0x40, m[sof + 6] = 0x00, m[sof + 7] = 0x40, m[sof + 8] = 0x00;
    jpeg_expect_error("16384 x 16384", m, size, "image too large");
    // a Huffman table whose counts overflow: two codes of length 1 plus more (same total count)
    memcpy(m, good, size);
    long counts = dht + 5; // FF C4, length (2), class/slot (1), then counts[1..16]
    int moved = 0;
    for (int l = 2; l <= 16 && m[counts] + moved < 3; l++) {
        int take = m[counts + l - 1] < 3 - m[counts] - moved ? m[counts + l - 1] : 3 - m[counts] - moved;
        m[counts + l - 1] = (uint8_t)(m[counts + l - 1] - take);
        moved += take;
    }
    m[counts] = (uint8_t)(m[counts] + moved);
    jpeg_expect_error("Huffman table with 3 codes of 1 bit", m, size, "bad DC Huffman table 0");
    // a DHT whose counts promise more symbols than its length holds
    memcpy(m, good, size);
    m[counts + 15] = 200;
    jpeg_expect_error("DHT counts beyond its length", m, size, "bad Huffman table (DHT marker)");
    // DQT for table 5
    memcpy(m, good, size);
    m[dqt + 4] = 5;
    jpeg_expect_error("DQT for table 5", m, size, "bad DQT marker");

    // scan data
    memcpy(m, good, size);
    long mid = sos + (size - sos) / 2;
    m[mid] = 0xFF;
    m[mid + 1] = 0xD9;
    jpeg_expect_error("EOI in the middle of the scan", m, size, "ends early (marker 0xFFD9");
    memcpy(m, good, size);
    m[sos + 14] = 0xFF; // the first bytes of entropy-coded data
    m[sos + 15] = 0xD0;
    jpeg_expect_error("RST0 in a file without restarts", m, size, "ends early (marker 0xFFD0");
    // a second scan after a complete sequential image: libjpeg wants EOI
    size_t extra = (size_t)(size - 2 - sos);
    uint8_t* twice = xmalloc(size - 2 + extra + 2);
    memcpy(twice, good, size - 2);
    memcpy(twice + size - 2, good + sos, extra);
    memcpy(twice + size - 2 + extra, "\xFF\xD9", 2);
    jpeg_expect_error("two complete sequential scans", twice, size + extra, "EOI expected");
    free(twice);

    // random garbage after SOI, and after valid tables
    uint64_t seed = 99;
    int clean = 1;
    for (int it = 0; it < 50 && clean; it++) {
        size_t n = 64 + (size_t)(jpeg_test_rand(&seed) % 2000);
        uint8_t* g = xmalloc(n);
        g[0] = 0xFF;
        g[1] = 0xD8;
        for (size_t i = 2; i < n; i++) g[i] = (uint8_t)jpeg_test_rand(&seed);
        if (it % 2) memcpy(g, good, n < (size_t)sos ? n : (size_t)sos); // the file's tables, then garbage
        Image tmp;
        err[0] = 0;
        int rc = jpeg_decode(&tmp, g, n, "garbage.jpg", err);
        if (rc == 0) image_free(&tmp);
        clean = rc == -1 && jpeg_error_ok(err, "garbage.jpg", "");
        if (!clean) printf("    garbage file %d: rc %d, '%s'\n", it, rc, err);
        free(g);
    }
    check_true(clean, "50 files of garbage after SOI or after the tables each give a one-line error");

    // restart markers out of sequence
    free(good);
    good = jpeg_golden_bytes("pil_restart_420_61x45", &size);
    if (!good) goto done;
    m = xrealloc(m, size);
    memcpy(m, good, size);
    long rst0 = jpeg_find_marker(m, size, 0xD0);
    if (check_true(rst0 > 0, "found RST0 in the restart golden")) {
        m[rst0 + 1] = 0xD3;
        jpeg_expect_error("RST3 where RST0 belongs", m, size, "where RST0 was expected");
        m[rst0 + 1] = 0xD9;
        jpeg_expect_error("EOI where RST0 belongs", m, size, "where RST0 was expected");
    }
done:
    free(m);
    free(good);
}

// Random truncations, bit flips and byte changes of golden files: each must decode or give a
// one-line error naming the file, and never crash (run under `make debug` for ASan and UBSan).
static void test_jpeg_fuzz(void) {
    static const char* files[] = {"pil_q90_420_77x61", "pil_prog_420_45x53", "pil_restart_prog_420_61x45",
                                  "pil_gray_prog_41x39", "craft_samp_411_restart_53x43", "craft_noninterleaved_420_47x31",
                                  "pil_q16bit_420_49x35", "craft_samp_440_prog_53x43"};
    uint64_t seed = 4242;
    int runs = 0, decoded = 0, clean_errors = 0;
    for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
        size_t size;
        uint8_t* orig = jpeg_golden_bytes(files[f], &size);
        if (!orig) continue;
        for (int it = 0; it < 1000; it++) {
            uint8_t* d = xmalloc(size);
            memcpy(d, orig, size);
            size_t n = size;
            int kind = it % 4;
            if (kind == 0) { // truncation anywhere
                n = 2 + (size_t)(jpeg_test_rand(&seed) % (size - 2));
            } else if (kind == 3) { // a marker (FF and a random code) anywhere, in the scans mostly
                size_t at = 2 + jpeg_test_rand(&seed) % (size - 3);
                d[at] = 0xFF;
                d[at + 1] = (uint8_t)jpeg_test_rand(&seed);
            } else { // bit flips (kind 1) or random bytes (kind 2), 1 to 4 of them
                int flips = 1 + (int)(jpeg_test_rand(&seed) % 4);
                for (int k = 0; k < flips; k++) {
                    size_t at = 2 + jpeg_test_rand(&seed) % (size - 2);
                    d[at] = kind == 1 ? (uint8_t)(d[at] ^ (1u << (jpeg_test_rand(&seed) % 8))) : (uint8_t)jpeg_test_rand(&seed);
                }
            }
            Image img;
            char err[ERR_MAX] = "";
            int rc = jpeg_decode(&img, d, n, "fuzz.jpg", err);
            runs++;
            if (rc == 0) {
                if (img.data && img.width > 0 && img.height > 0 && (img.channels == 1 || img.channels == 3)) decoded++;
                else printf("    decoded to a bad image (%dx%d c%d)\n", img.width, img.height, img.channels);
                image_free(&img);
            } else if (err[0] && !strchr(err, '\n') && strncmp(err, "fuzz.jpg: ", 10) == 0 && img.data == NULL) {
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

const TestCase tests_jpeg[] = {
    {"jpeg_golden_pil", test_jpeg_golden_pil},
    {"jpeg_golden_crafted", test_jpeg_golden_crafted},
    {"jpeg_golden_refused", test_jpeg_golden_refused},
    {"jpeg_api", test_jpeg_api},
    {"jpeg_bad_input", test_jpeg_bad_input},
    {"jpeg_fuzz", test_jpeg_fuzz},
    {NULL, NULL},
};
