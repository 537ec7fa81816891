// jpeg.c: a JPEG decoder that gives the same samples as Pillow (which decodes with libjpeg-turbo).
//
// Follows ITU-T T.81 (JPEG, 1992), https://www.w3.org/Graphics/JPEG/itu-t81.pdf ; section and
// figure numbers below refer to it. What it reads and what it refuses is listed in jpeg.h.
//
// Pillow's Image.open(f).convert("RGB") runs libjpeg-turbo with its default decompression
// parameters, so "the same samples as Pillow" means the same arithmetic as these parts of
// libjpeg-turbo 3.2.0 (https://github.com/libjpeg-turbo/libjpeg-turbo, src/), each ported from
// the facts (constants, rounding, edge handling) rather than the code:
//   - jidctint.c jpeg_idct_islow: the accurate integer IDCT (JDCT_ISLOW, the default), 13-bit
//     constants, 2 extra bits between the passes;
//   - jdsample.c: "fancy" upsampling (do_fancy_upsampling, the default), chosen per component
//     from the ratio of its sampling factors to the largest ones: h2v1 and h2v2 triangular
//     filters (box replication instead when the component is at most 2 samples wide), h1v2
//     (libjpeg-turbo's addition, for 4:4:0), and plain replication for other integral ratios
//     (4:1:1, 3x1, ...). Merged upsampling (jdmerge.c) is never used: libjpeg only picks it when
//     fancy upsampling is off. Samples outside the component are its edge samples repeated
//     (jdmainct.c's context rows), which is why odd sizes come out exact;
//   - jdcolor.c ycc_rgb_convert: YCbCr -> RGB with 16-bit fixed-point tables, range-limited;
//   - jdapimin.c default_decompress_parms: whether 3 components are YCbCr or RGB;
//   - jdmarker.c / jdhuff.c / jdphuff.c: which markers and tables are accepted, the standard
//     Huffman tables for sequential files that have none, quantization tables latched at a
//     component's first scan, the checks on progressive scan parameters.
// libjpeg-turbo's SIMD versions of the IDCT, upsampling and colour conversion (what Pillow's
// wheels run on x86-64 and ARM) give the same bytes as its C code on valid data. Where they differ,
// on IDCT outputs far outside 0..255 that only corrupt or hand-made coefficients produce, we
// follow the SIMD code and saturate (the C code wraps around beyond +-512); the golden
// craft_overshoot_444_40x24 shows Pillow saturating.
//
// Block smoothing (jdcoefct.c decompress_smooth_data): for progressive files libjpeg guesses
// low-frequency coefficients of each block from its neighbours' DC values, but only those still
// incomplete after the last scan; in a complete file every coefficient is known and nothing
// changes, so the IDCT sees exactly the decoded coefficients (the progressive goldens check this
// against Pillow). A file whose scans stop short in a way that smoothing would change is refused
// (jpeg_would_smooth) rather than decoded differently from Pillow.
//
// Corrupt and truncated data. libjpeg fills a scan that runs out of data (a marker, or the end of
// the file, where the next MCU should be) with zeros and only warns; Pillow refuses a file that
// ends early ("image file is truncated") but hands back the gray-filled image when a marker
// interrupts a scan. We refuse both: a half-gray image in a training set is worse than an error
// naming the file. The same goes for undecodable Huffman codes, coefficients past the end of a
// block and restart markers out of sequence, where libjpeg substitutes zeros and resynchronises.
// The file must reach EOI after its last scan (Pillow refuses a file that stops right after the
// scan data as truncated, too). Like libjpeg, we skip stray bytes between markers and ignore
// anything after EOI.
//
// Layout: every scan's coefficients go into one array per component (what a progressive file
// needs anyway, and it lets sequential files split into several scans work the same way); after
// EOI each component goes through the IDCT into a plane of samples, and the output rows are made
// from the planes by upsampling and colour conversion, a row at a time. Coefficients take 2 bytes
// and plane samples 1 per component sample, and each component's coefficients are freed after its
// IDCT, so the peak is about 4.5 bytes per pixel at 4:2:0 and 7 at 4:4:4, output included.
#include "jpeg.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// Position in an 8x8 block (row-major, "natural" order) of the k-th coefficient in the order
// the file stores them (the zigzag of figure A.6).
static const uint8_t JPEG_ZIGZAG[64] = {
    0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,  12, 19, 26, 33, 40, 48,
    41, 34, 27, 20, 13, 6,  7,  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23,
    30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
};

// The example Huffman tables of Annex K.3 (tables K.3 to K.6): code counts per length 1..16,
// then the symbols. libjpeg-turbo puts them in DC/AC slots 0 and 1 for sequential files that
// define no table there (jstdhuff.c; motion-JPEG frames leave them out).
static const uint8_t STD_DC_LUMA_COUNTS[16] = {0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0};
static const uint8_t STD_DC_CHROMA_COUNTS[16] = {0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0};
static const uint8_t STD_DC_SYMBOLS[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
static const uint8_t STD_AC_LUMA_COUNTS[16] = {0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d};
static const uint8_t STD_AC_LUMA_SYMBOLS[162] = {
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71,
    0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72,
    0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37,
    0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59,
    0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
    0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3,
    0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
};
static const uint8_t STD_AC_CHROMA_COUNTS[16] = {0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77};
static const uint8_t STD_AC_CHROMA_SYMBOLS[162] = {
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22,
    0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1,
    0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36,
    0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,
    0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
    0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a,
    0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
    0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
};

// Marker codes (table B.1), the byte after 0xFF.
enum {
    M_SOF0 = 0xC0, M_SOF1 = 0xC1, M_SOF2 = 0xC2, M_SOF3 = 0xC3, M_DHT = 0xC4, M_SOF5 = 0xC5,
    M_SOF6 = 0xC6, M_SOF7 = 0xC7, M_JPG = 0xC8, M_SOF9 = 0xC9, M_SOF10 = 0xCA, M_SOF11 = 0xCB,
    M_DAC = 0xCC, M_SOF13 = 0xCD, M_SOF14 = 0xCE, M_SOF15 = 0xCF, M_RST0 = 0xD0, M_RST7 = 0xD7,
    M_SOI = 0xD8, M_EOI = 0xD9, M_SOS = 0xDA, M_DQT = 0xDB, M_DNL = 0xDC, M_DRI = 0xDD,
    M_APP0 = 0xE0, M_APP14 = 0xEE, M_APP15 = 0xEF, M_COM = 0xFE, M_TEM = 0x01,
};

#define JPEG_LOOKUP_BITS 9        // Huffman codes up to this long are decoded by one table lookup
#define JPEG_MAX_BLOCKS_IN_MCU 10 // B.2.3: at most 10 blocks in an interleaved MCU (libjpeg checks it)

// How a component's samples become full-resolution ones (jdsample.c's per-component methods).
typedef enum {
    UP_FULL,       // same sampling as the largest: nothing to do
    UP_H2V1_FANCY, // twice as many columns: triangular filter 3/4, 1/4
    UP_H1V2_FANCY, // twice as many rows: triangular filter 3/4, 1/4
    UP_H2V2_FANCY, // both: 9/16, 3/16, 3/16, 1/16
    UP_REPLICATE,  // any other integral ratio (and 2x ratios of components at most 2 samples wide)
} JpegUpsample;

// A Huffman table (DHT, B.2.4.2) and what decoding needs from it (annex C, figure F.15).
typedef struct {
    int defined;             // a DHT (or the standard tables) filled this slot
    int valid;               // the counts form a prefix code (libjpeg refuses the table when used)
    int dc_ok;               // every symbol is at most 15, as a DC table's must be
    uint8_t counts[17];      // counts[l]: number of codes of length l, 1..16
    uint8_t symbols[256];    // in code order
    int32_t maxcode[18];     // largest code of length l, -1 when none; maxcode[17] ends every search
    int32_t valoffset[18];   // a code of length l is symbols[code + valoffset[l]]
    uint16_t lookup[1 << JPEG_LOOKUP_BITS]; // next 9 bits -> (length << 8) | symbol; 0: longer code
} JpegHuffman;

typedef struct {
    int id, h, v, tq;        // from SOF: identifier, sampling factors, quantization table slot
    int dc_table, ac_table;  // Huffman table slots of the current scan
    int width, height;       // samples: ceil(image width * h / hmax) x ceil(image height * v / vmax)
    int bw, bh;              // blocks holding samples: ceil(width / 8) x ceil(height / 8)
    int bstride, brows;      // blocks allocated: the MCU grid's, mcus_x * h by mcus_y * v
    int16_t* coef;           // (brows, bstride, 64) quantized coefficients, natural order
    uint16_t q[64];          // quantization table latched at the component's first scan (natural order)
    int q_latched;
    int dc_pred;             // DC predictor (F.2.2.1), reset at each scan and restart
    int coef_bits[10];       // progressive: bit position known so far of coefficients 0..9, -1 if none
    uint8_t* plane;          // (bh * 8, bw * 8) samples after the IDCT
    JpegUpsample up;
    int hexp, vexp;          // output pixels per sample across and down (hmax / h, vmax / v)
} JpegComponent;

typedef struct {
    const uint8_t* data;
    size_t size, pos;        // pos: next byte, for markers and for the bit reader
    const char* name;
    char* err;

    int sof;                 // the SOF marker seen, or 0
    int progressive;
    int width, height, ncomp;
    int hmax, vmax, mcus_x, mcus_y;
    JpegComponent comp[3];
    int jfif, adobe, adobe_transform; // APP0 JFIF and APP14 Adobe markers seen
    uint16_t qt[4][64];      // quantization tables by slot, natural order
    int qt_defined[4];
    JpegHuffman dc[4], ac[4];
    int restart_interval;    // MCUs per restart interval, 0: none (DRI)
    int scans;               // scans decoded so far
    int multi_scan;          // libjpeg's has_multiple_scans: progressive, or a first scan without every component

    // bit reader (F.2.2.5) for the current scan: bits are consumed from the top of `bits`
    uint64_t bits;
    int nbits;               // bits held
    int fake;                // zero bits at the bottom of `bits` that stand in for missing data
    int stop;                // 0 reading; STOP_MARKER: a marker ends the data; STOP_EOF: the file ends
    int eobrun;              // progressive AC: blocks left in the current end-of-band run (G.1.2.2)
} JpegDecoder;

enum { STOP_MARKER = 1, STOP_EOF = 2 };

// One scan's header (SOS, B.2.3).
typedef struct {
    int ncomp;
    JpegComponent* comp[4];
    int ss, se, ah, al;      // spectral selection and successive approximation
} JpegScan;

// ----------------------------------------------------------------------------
// Huffman tables

// Builds the decoding tables for counts/symbols (figures C.1, C.2 and F.15, with libjpeg's
// checks: a length may not be full (the all-ones code is reserved), and DC symbols are <= 15).
static void jpeg_huffman_build(JpegHuffman* t, const uint8_t counts[16], const uint8_t* symbols, int nsymbols) {
    memset(t, 0, sizeof(*t));
    t->defined = 1;
    t->counts[0] = 0;
    memcpy(t->counts + 1, counts, 16);
    memcpy(t->symbols, symbols, (size_t)nsymbols);
    t->valid = 1;
    t->dc_ok = 1;
    for (int i = 0; i < nsymbols; i++)
        if (symbols[i] > 15) t->dc_ok = 0;
    uint32_t code = 0;
    int p = 0;
    for (int l = 1; l <= 16; l++) {
        int n = t->counts[l];
        if (n) {
            t->valoffset[l] = p - (int32_t)code;
            for (int i = 0; i < n; i++, p++, code++) {
                if (l <= JPEG_LOOKUP_BITS) { // every 9-bit string that starts with this code
                    uint32_t first = code << (JPEG_LOOKUP_BITS - l), count = 1u << (JPEG_LOOKUP_BITS - l);
                    for (uint32_t j = 0; j < count && first + j < (1u << JPEG_LOOKUP_BITS); j++)
                        t->lookup[first + j] = (uint16_t)((l << 8) | symbols[p]);
                }
            }
            t->maxcode[l] = (int32_t)code - 1;
        } else {
            t->maxcode[l] = -1;
        }
        // code is one past the last code of length l; it must still fit in l bits
        if (n && code >= (1u << l)) t->valid = 0;
        code <<= 1;
    }
    t->maxcode[17] = INT32_MAX;
}

// The table a scan uses in slot `slot`, or NULL (with err filled) when it cannot be used.
static const JpegHuffman* jpeg_scan_table(JpegDecoder* d, int is_dc, int slot) {
    if (slot > 3) {
        set_error(d->err, "%s: scan %d uses Huffman table slot %d (at most 3)", d->name, d->scans + 1, slot);
        return NULL;
    }
    JpegHuffman* t = is_dc ? &d->dc[slot] : &d->ac[slot];
    if (!t->defined && !d->progressive && slot < 2) { // jstdhuff.c: sequential files get Annex K's
        if (is_dc) jpeg_huffman_build(t, slot ? STD_DC_CHROMA_COUNTS : STD_DC_LUMA_COUNTS, STD_DC_SYMBOLS, 12);
        else jpeg_huffman_build(t, slot ? STD_AC_CHROMA_COUNTS : STD_AC_LUMA_COUNTS,
                                slot ? STD_AC_CHROMA_SYMBOLS : STD_AC_LUMA_SYMBOLS, 162);
    }
    if (!t->defined) {
        set_error(d->err, "%s: scan %d uses %s Huffman table %d, which is not defined", d->name, d->scans + 1,
                  is_dc ? "DC" : "AC", slot);
        return NULL;
    }
    if (!t->valid || (is_dc && !t->dc_ok)) {
        set_error(d->err, "%s: bad %s Huffman table %d", d->name, is_dc ? "DC" : "AC", slot);
        return NULL;
    }
    return t;
}

// ----------------------------------------------------------------------------
// bit reader for entropy-coded data (F.2.2.5, F.1.2.3 byte stuffing)

// Tops up the bit buffer to at least 57 bits. A 0xFF data byte is stored as FF 00; FF followed by
// anything else (after optional FF fill bytes) is a marker, which ends the data: from there on,
// and past the end of the file, we add zero bits and count them in `fake`, so a decoder that
// consumed one can tell (nbits < fake) and stop with an error.
static void jpeg_fill(JpegDecoder* d) {
    while (d->nbits <= 56) {
        unsigned byte = 0;
        if (!d->stop && d->pos >= d->size) d->stop = STOP_EOF;
        if (!d->stop) {
            byte = d->data[d->pos];
            if (byte != 0xFF) {
                d->pos++;
            } else {
                size_t j = d->pos + 1;
                while (j < d->size && d->data[j] == 0xFF) j++;
                if (j >= d->size) {
                    d->stop = STOP_EOF;
                    byte = 0;
                } else if (d->data[j] == 0) {
                    d->pos = j + 1; // FF 00 is a data byte FF
                } else {
                    d->stop = STOP_MARKER; // pos stays on the marker for the marker reader
                    byte = 0;
                }
            }
        }
        if (d->stop) d->fake += 8;
        d->bits |= (uint64_t)byte << (56 - d->nbits);
        d->nbits += 8;
    }
}

// Next n bits (1 <= n <= 16) as an unsigned number.
static inline unsigned jpeg_bits(JpegDecoder* d, int n) {
    if (d->nbits < n) jpeg_fill(d);
    unsigned v = (unsigned)(d->bits >> (64 - n));
    d->bits <<= n;
    d->nbits -= n;
    return v;
}

static inline unsigned jpeg_bit(JpegDecoder* d) { return jpeg_bits(d, 1); }

// RECEIVE(s) then EXTEND (F.2.2.1, figure F.12): s bits as a signed value, s in 0..15.
static inline int jpeg_receive_extend(JpegDecoder* d, int s) {
    if (s == 0) return 0;
    int v = (int)jpeg_bits(d, s);
    return v < (1 << (s - 1)) ? v - (1 << s) + 1 : v;
}

// Decodes one Huffman code: its symbol, or -1 when the bits match no code.
static inline int jpeg_huffman_decode(JpegDecoder* d, const JpegHuffman* t) {
    if (d->nbits < 16) jpeg_fill(d);
    unsigned e = t->lookup[d->bits >> (64 - JPEG_LOOKUP_BITS)];
    if (e) {
        int len = (int)(e >> 8);
        d->bits <<= len;
        d->nbits -= len;
        return (int)(e & 255);
    }
    // figure F.16 for the codes longer than the lookup: a code of length l is at most maxcode[l]
    int32_t next16 = (int32_t)(d->bits >> 48);
    for (int l = JPEG_LOOKUP_BITS + 1; l <= 16; l++) {
        int32_t code = next16 >> (16 - l);
        if (code <= t->maxcode[l]) {
            d->bits <<= l;
            d->nbits -= l;
            return t->symbols[(code + t->valoffset[l]) & 255];
        }
    }
    return -1;
}

// Skips to the next marker as libjpeg's next_marker does: bytes that are not 0xFF, and FF 00
// pairs, are stray data (libjpeg warns and goes on), and FF fill bytes before a marker are
// allowed. Returns the marker code with pos just past it, or -1 at the end of the data.
static int jpeg_next_marker(JpegDecoder* d) {
    for (;;) {
        while (d->pos < d->size && d->data[d->pos] != 0xFF) d->pos++;
        while (d->pos < d->size && d->data[d->pos] == 0xFF) d->pos++;
        if (d->pos >= d->size) return -1;
        int c = d->data[d->pos++];
        if (c != 0) return c;
    }
}

// ----------------------------------------------------------------------------
// entropy decoding of one block (F.2.2 sequential, G.1.2 progressive)

// A check that failed while decoding scan data: names what went wrong, or says the data ran out
// when the decoder had read into the zeros that stand in for missing data.
static int jpeg_data_error(JpegDecoder* d, const char* what) {
    if (d->nbits < d->fake + 16 && d->stop == STOP_EOF)
        return set_error(d->err, "%s: truncated JPEG data (the file ends inside scan %d)", d->name, d->scans + 1);
    if (d->nbits < d->fake + 16 && d->stop == STOP_MARKER) {
        size_t m = d->pos;
        while (m < d->size && d->data[m] == 0xFF) m++; // the reader stopped on FF (fill bytes), then the code
        return set_error(d->err, "%s: corrupt JPEG data: scan %d ends early (marker 0xFF%02X inside it)", d->name,
                         d->scans + 1, m < d->size ? d->data[m] : 0xFF);
    }
    return set_error(d->err, "%s: corrupt JPEG data in scan %d: %s", d->name, d->scans + 1, what);
}

// Adds a decoded DC difference to the predictor. libjpeg-turbo refuses a predictor that leaves
// the int range (JERR_BAD_DCT_COEF); the coefficient keeps its low 16 bits, as a JCOEF does.
static inline int jpeg_dc_add(JpegDecoder* d, JpegComponent* c, int diff) {
    if ((diff > 0 && c->dc_pred > INT_MAX - diff) || (diff < 0 && c->dc_pred < INT_MIN - diff))
        return jpeg_data_error(d, "DC coefficient out of range");
    c->dc_pred += diff;
    return 0;
}

// Sequential (baseline or extended) block, F.2.2.1 and F.2.2.2: DC difference, then AC run/size
// pairs until EOB (symbol 0x00) or the 63rd coefficient; 0xF0 is a run of 16 zeros.
static int jpeg_block_sequential(JpegDecoder* d, JpegComponent* c, int16_t* blk, const JpegHuffman* dct,
                                 const JpegHuffman* act) {
    int s = jpeg_huffman_decode(d, dct);
    if (s < 0) return jpeg_data_error(d, "bad Huffman code");
    if (jpeg_dc_add(d, c, jpeg_receive_extend(d, s))) return -1;
    blk[0] = (int16_t)c->dc_pred;
    for (int k = 1; k < 64; k++) {
        int rs = jpeg_huffman_decode(d, act);
        if (rs < 0) return jpeg_data_error(d, "bad Huffman code");
        int r = rs >> 4;
        s = rs & 15;
        if (s) {
            k += r;
            if (k > 63) return jpeg_data_error(d, "AC coefficient past the end of a block");
            blk[JPEG_ZIGZAG[k]] = (int16_t)jpeg_receive_extend(d, s);
        } else {
            if (r != 15) break; // EOB
            k += 15;            // ZRL
        }
    }
    return 0;
}

// Progressive DC, first scan (G.1.2.1): the DC value shifted left by Al.
static int jpeg_block_dc_first(JpegDecoder* d, JpegComponent* c, int16_t* blk, const JpegHuffman* dct, int al) {
    int s = jpeg_huffman_decode(d, dct);
    if (s < 0) return jpeg_data_error(d, "bad Huffman code");
    if (jpeg_dc_add(d, c, jpeg_receive_extend(d, s))) return -1;
    blk[0] = (int16_t)(uint16_t)((uint32_t)c->dc_pred << al);
    return 0;
}

// Progressive DC refinement (G.1.2.1): one more bit of the DC value.
static void jpeg_block_dc_refine(JpegDecoder* d, int16_t* blk, int al) {
    if (jpeg_bit(d)) blk[0] = (int16_t)(blk[0] | (1 << al));
}

// Progressive AC, first scan of a band (G.1.2.2): like sequential AC coding within Ss..Se, with
// end-of-band runs (EOBn) that cover this and following blocks.
static int jpeg_block_ac_first(JpegDecoder* d, int16_t* blk, const JpegHuffman* act, int ss, int se, int al) {
    if (d->eobrun > 0) {
        d->eobrun--;
        return 0;
    }
    for (int k = ss; k <= se; k++) {
        int rs = jpeg_huffman_decode(d, act);
        if (rs < 0) return jpeg_data_error(d, "bad Huffman code");
        int r = rs >> 4, s = rs & 15;
        if (s) {
            k += r;
            if (k > se) return jpeg_data_error(d, "AC coefficient past the end of the band");
            blk[JPEG_ZIGZAG[k]] = (int16_t)(uint16_t)((uint32_t)jpeg_receive_extend(d, s) << al);
        } else if (r == 15) {
            k += 15; // ZRL
        } else {     // EOBn: 2^r + r more bits blocks end here, this one included
            d->eobrun = 1 << r;
            if (r) d->eobrun += (int)jpeg_bits(d, r);
            d->eobrun--;
            break;
        }
    }
    return 0;
}

// Progressive AC refinement (G.1.2.3): newly nonzero coefficients are +-2^Al; every coefficient
// already nonzero that is passed over (zero runs count only zero coefficients) gets a correction
// bit, which when set moves it 2^Al away from zero.
static int jpeg_block_ac_refine(JpegDecoder* d, int16_t* blk, const JpegHuffman* act, int ss, int se, int al) {
    int p1 = 1 << al, m1 = -(1 << al);
    int k = ss;
    if (d->eobrun == 0) {
        for (; k <= se; k++) {
            int rs = jpeg_huffman_decode(d, act);
            if (rs < 0) return jpeg_data_error(d, "bad Huffman code");
            int r = rs >> 4, s = rs & 15;
            int value = 0;
            if (s) { // s should be 1; libjpeg warns about other values and treats them as 1
                value = jpeg_bit(d) ? p1 : m1;
            } else if (r != 15) { // EOBn; the rest of this block is refined below
                d->eobrun = 1 << r;
                if (r) d->eobrun += (int)jpeg_bits(d, r);
                break;
            }
            // skip r zero coefficients (ZRL: 16), refining the nonzero ones on the way
            for (; k <= se; k++) {
                int16_t* coef = &blk[JPEG_ZIGZAG[k]];
                if (*coef != 0) {
                    if (jpeg_bit(d) && (*coef & p1) == 0) *coef = (int16_t)(*coef + (*coef >= 0 ? p1 : m1));
                } else {
                    if (r == 0) break;
                    r--;
                }
            }
            if (value) {
                if (k > se) return jpeg_data_error(d, "AC coefficient past the end of the band");
                blk[JPEG_ZIGZAG[k]] = (int16_t)value;
            }
        }
    }
    if (d->eobrun > 0) { // inside an end-of-band run: only correction bits, for the nonzero ones
        for (; k <= se; k++) {
            int16_t* coef = &blk[JPEG_ZIGZAG[k]];
            if (*coef != 0 && jpeg_bit(d) && (*coef & p1) == 0) *coef = (int16_t)(*coef + (*coef >= 0 ? p1 : m1));
        }
        d->eobrun--;
    }
    return 0;
}

// ----------------------------------------------------------------------------
// markers

// Big-endian 16-bit value at pos (the caller checked that 2 bytes are there).
static int jpeg_u16(const JpegDecoder* d, size_t pos) { return (d->data[pos] << 8) | d->data[pos + 1]; }

// Reads a marker segment's length field; *body and *len get its parameters. -1 when the segment
// runs past the end of the file.
static int jpeg_segment(JpegDecoder* d, int marker, const uint8_t** body, int* len) {
    if (d->size - d->pos < 2)
        return set_error(d->err, "%s: truncated JPEG data (the file ends in marker 0xFF%02X)", d->name, marker);
    int length = jpeg_u16(d, d->pos);
    // libjpeg takes a length below 2 as an empty segment (it subtracts 2 and skips nothing)
    int n = length >= 2 ? length - 2 : 0;
    if ((size_t)n > d->size - d->pos - 2)
        return set_error(d->err, "%s: truncated JPEG data (the file ends in marker 0xFF%02X)", d->name, marker);
    *body = d->data + d->pos + 2;
    *len = n;
    d->pos += 2 + (size_t)n;
    return 0;
}

// DQT (B.2.4.1): one or more tables of 64 values in zigzag order, 8- or 16-bit (Pq != 0).
static int jpeg_read_dqt(JpegDecoder* d, const uint8_t* p, int len) {
    while (len > 0) {
        int pq = p[0] >> 4, tq = p[0] & 15;
        if (tq > 3) return set_error(d->err, "%s: bad DQT marker (table %d; the slots are 0 to 3)", d->name, tq);
        int need = 1 + 64 * (pq ? 2 : 1);
        if (len < need) return set_error(d->err, "%s: bad DQT marker length", d->name);
        for (int k = 0; k < 64; k++)
            d->qt[tq][JPEG_ZIGZAG[k]] = (uint16_t)(pq ? (p[1 + 2 * k] << 8) | p[2 + 2 * k] : p[1 + k]);
        d->qt_defined[tq] = 1;
        p += need;
        len -= need;
    }
    return 0;
}

// DHT (B.2.4.2): one or more tables: class and slot, 16 counts, the symbols.
static int jpeg_read_dht(JpegDecoder* d, const uint8_t* p, int len) {
    while (len > 16) {
        int index = p[0], count = 0;
        for (int l = 0; l < 16; l++) count += p[1 + l];
        if (count > 256 || count > len - 17) return set_error(d->err, "%s: bad Huffman table (DHT marker)", d->name);
        int is_ac = (index & 0x10) != 0, slot = index & ~0x10;
        if (slot > 3) return set_error(d->err, "%s: bad DHT marker (table index 0x%02X)", d->name, index);
        jpeg_huffman_build(is_ac ? &d->ac[slot] : &d->dc[slot], p + 1, p + 17, count);
        p += 17 + count;
        len -= 17 + count;
    }
    if (len != 0) return set_error(d->err, "%s: bad DHT marker length", d->name);
    return 0;
}

// SOF0/1/2 (B.2.2): precision, size, components with their sampling factors. Sets up the
// geometry, checks what libjpeg checks, and allocates the coefficient arrays.
static int jpeg_read_sof(JpegDecoder* d, int marker, const uint8_t* p, int len) {
    if (d->sof) return set_error(d->err, "%s: more than one SOF marker", d->name);
    if (len < 6) return set_error(d->err, "%s: bad SOF marker length", d->name);
    d->sof = marker;
    d->progressive = marker == M_SOF2;
    int precision = p[0], n = p[5];
    d->height = (p[1] << 8) | p[2];
    d->width = (p[3] << 8) | p[4];
    if (precision != 8) return set_error(d->err, "%s: %d-bit JPEG is not supported (only 8-bit)", d->name, precision);
    if (d->height == 0) return set_error(d->err, "%s: JPEG height 0 (given later by a DNL marker) is not supported", d->name);
    if (d->width == 0 || n == 0) return set_error(d->err, "%s: empty JPEG image (%d x %d, %d components)", d->name, d->width, d->height, n);
    if (len != 6 + 3 * n) return set_error(d->err, "%s: bad SOF marker length", d->name);
    if (n == 4) return set_error(d->err, "%s: 4-component (CMYK or YCCK) JPEG is not supported", d->name);
    if (n != 1 && n != 3) return set_error(d->err, "%s: %d-component JPEG is not supported (only 1 or 3)", d->name, n);
    if (d->width > JPEG_MAX_DIM || d->height > JPEG_MAX_DIM || (uint64_t)d->width * d->height > IMAGE_MAX_PIXELS)
        return set_error(d->err, "%s: image too large (%d x %d; at most %d on a side and %u pixels)", d->name, d->width,
                         d->height, JPEG_MAX_DIM, IMAGE_MAX_PIXELS);
    d->ncomp = n;
    d->hmax = d->vmax = 1;
    for (int i = 0; i < n; i++) {
        JpegComponent* c = &d->comp[i];
        c->id = p[6 + 3 * i];
        c->h = p[7 + 3 * i] >> 4;
        c->v = p[7 + 3 * i] & 15;
        c->tq = p[8 + 3 * i];
        if (c->h < 1 || c->h > 4 || c->v < 1 || c->v > 4)
            return set_error(d->err, "%s: bad sampling factors %dx%d for component %d", d->name, c->h, c->v, i);
        if (c->tq > 3) return set_error(d->err, "%s: component %d uses quantization table %d (at most 3)", d->name, i, c->tq);
        d->hmax = c->h > d->hmax ? c->h : d->hmax;
        d->vmax = c->v > d->vmax ? c->v : d->vmax;
    }
    d->mcus_x = (d->width + 8 * d->hmax - 1) / (8 * d->hmax);
    d->mcus_y = (d->height + 8 * d->vmax - 1) / (8 * d->vmax);
    for (int i = 0; i < n; i++) {
        JpegComponent* c = &d->comp[i];
        // A.1.1: component size rounds up
        c->width = (int)(((int64_t)d->width * c->h + d->hmax - 1) / d->hmax);
        c->height = (int)(((int64_t)d->height * c->v + d->vmax - 1) / d->vmax);
        c->bw = (c->width + 7) / 8;
        c->bh = (c->height + 7) / 8;
        c->bstride = d->mcus_x * c->h;
        c->brows = d->mcus_y * c->v;
        for (int k = 0; k < 10; k++) c->coef_bits[k] = -1;
        // jdsample.c jinit_upsampler: the method for this ratio
        c->hexp = d->hmax / c->h;
        c->vexp = d->vmax / c->v;
        if (d->hmax % c->h || d->vmax % c->v)
            return set_error(d->err, "%s: sampling factors %dx%d of component %d against %dx%d are not supported "
                             "(not an integral ratio)", d->name, c->h, c->v, i, d->hmax, d->vmax);
        if (c->hexp == 1 && c->vexp == 1) c->up = UP_FULL;
        else if (c->hexp == 2 && c->vexp == 1) c->up = c->width > 2 ? UP_H2V1_FANCY : UP_REPLICATE;
        else if (c->hexp == 1 && c->vexp == 2) c->up = UP_H1V2_FANCY;
        else if (c->hexp == 2 && c->vexp == 2) c->up = c->width > 2 ? UP_H2V2_FANCY : UP_REPLICATE;
        else c->up = UP_REPLICATE;
        size_t blocks = (size_t)c->bstride * c->brows;
        c->coef = calloc(blocks, 64 * sizeof(int16_t));
        if (!c->coef) return set_error(d->err, "%s: out of memory for a %d x %d image", d->name, d->width, d->height);
    }
    return 0;
}

// APP0 (JFIF) and APP14 (Adobe): only whether they are there, and Adobe's transform flag, which
// decide between YCbCr and RGB (examine_app0, examine_app14 in jdmarker.c). Other segments that
// come here (other APPn, COM, DNL, DAC) carry nothing we use.
static void jpeg_read_app(JpegDecoder* d, int marker, const uint8_t* p, int len) {
    if (marker == M_APP0 && len >= 14 && memcmp(p, "JFIF\0", 5) == 0) d->jfif = 1;
    if (marker == M_APP14 && len >= 12 && memcmp(p, "Adobe", 5) == 0) {
        d->adobe = 1;
        d->adobe_transform = p[11];
    }
}

// SOS (B.2.3): the scan's components and tables, and its parameters, checked as libjpeg does.
static int jpeg_read_sos(JpegDecoder* d, const uint8_t* p, int len, JpegScan* s) {
    if (!d->sof) return set_error(d->err, "%s: SOS marker before any SOF marker", d->name);
    int n = len >= 1 ? p[0] : 0;
    if (n < 1 || n > 4 || len != 4 + 2 * n) return set_error(d->err, "%s: bad SOS marker", d->name);
    memset(s, 0, sizeof(*s));
    s->ncomp = n;
    for (int i = 0; i < n; i++) {
        int id = p[1 + 2 * i], tables = p[2 + 2 * i];
        JpegComponent* c = NULL;
        for (int j = 0; j < d->ncomp && !c; j++) { // the first component with this id not yet in the scan
            int taken = 0;
            for (int k = 0; k < i; k++) taken |= s->comp[k] == &d->comp[j];
            if (d->comp[j].id == id && !taken) c = &d->comp[j];
        }
        if (!c) return set_error(d->err, "%s: SOS marker names component id %d, which the frame does not have", d->name, id);
        c->dc_table = tables >> 4; // checked when used: a progressive scan needs only one of them
        c->ac_table = tables & 15;
        s->comp[i] = c;
    }
    s->ss = p[1 + 2 * n];
    s->se = p[2 + 2 * n];
    s->ah = p[3 + 2 * n] >> 4;
    s->al = p[3 + 2 * n] & 15;
    if (n > 1) {
        int blocks = 0;
        for (int i = 0; i < n; i++) blocks += s->comp[i]->h * s->comp[i]->v;
        if (blocks > JPEG_MAX_BLOCKS_IN_MCU)
            return set_error(d->err, "%s: %d blocks in an MCU (at most %d)", d->name, blocks, JPEG_MAX_BLOCKS_IN_MCU);
    }
    if (d->progressive) { // jdphuff.c start_pass_phuff_decoder
        int bad = s->ss == 0 ? s->se != 0 : (s->ss > s->se || s->se > 63 || n != 1);
        if (s->ah != 0 && s->al != s->ah - 1) bad = 1;
        if (s->al > 13) bad = 1;
        if (bad)
            return set_error(d->err, "%s: bad progressive scan parameters (Ss=%d Se=%d Ah=%d Al=%d)", d->name, s->ss,
                             s->se, s->ah, s->al);
    }
    // A sequential file's scans ignore Ss/Se/Ah/Al (libjpeg only warns when they are not 0/63/0/0).
    // jdinput.c: a sequential scan with every component is the whole image; libjpeg stops there
    // and wants EOI next. Otherwise it reads scans until EOI.
    if (d->scans == 0) d->multi_scan = d->progressive || n < d->ncomp;
    else if (!d->multi_scan) return set_error(d->err, "%s: another scan after the complete image (EOI expected)", d->name);
    for (int i = 0; i < n; i++) { // jdinput.c latch_quant_tables: a table is fixed at the component's first scan
        JpegComponent* c = s->comp[i];
        if (c->q_latched) continue;
        if (!d->qt_defined[c->tq])
            return set_error(d->err, "%s: quantization table %d is not defined", d->name, c->tq);
        memcpy(c->q, d->qt[c->tq], sizeof(c->q));
        c->q_latched = 1;
    }
    return 0;
}

// ----------------------------------------------------------------------------
// scans

// Reads the restart marker RSTn expected after a restart interval (F.1.2.3, E.2.4) and resets the
// decoder: the bit buffer, the DC predictors and any end-of-band run.
static int jpeg_restart(JpegDecoder* d, const JpegScan* s, int expected) {
    // Bits left in the buffer are the interval's padding; the reader never reads past a marker.
    d->bits = 0;
    d->nbits = d->fake = d->stop = 0;
    int marker = jpeg_next_marker(d);
    if (marker < 0) return set_error(d->err, "%s: truncated JPEG data (the file ends inside scan %d)", d->name, d->scans + 1);
    if (marker != M_RST0 + expected)
        return set_error(d->err, "%s: corrupt JPEG data in scan %d: marker 0xFF%02X where RST%d was expected", d->name,
                         d->scans + 1, marker, expected);
    for (int i = 0; i < s->ncomp; i++) s->comp[i]->dc_pred = 0;
    d->eobrun = 0;
    return 0;
}

// Decodes the entropy-coded data of one scan into the coefficient arrays, leaving pos at the
// marker that follows it.
static int jpeg_decode_scan(JpegDecoder* d, const JpegScan* s) {
    enum { SEQUENTIAL, DC_FIRST, DC_REFINE, AC_FIRST, AC_REFINE } mode;
    if (!d->progressive) mode = SEQUENTIAL;
    else if (s->ss == 0) mode = s->ah == 0 ? DC_FIRST : DC_REFINE;
    else mode = s->ah == 0 ? AC_FIRST : AC_REFINE;

    const JpegHuffman *dct[4] = {0}, *act[4] = {0};
    for (int i = 0; i < s->ncomp; i++) {
        JpegComponent* c = s->comp[i];
        if (mode == SEQUENTIAL || mode == DC_FIRST)
            if (!(dct[i] = jpeg_scan_table(d, 1, c->dc_table))) return -1;
        if (mode == SEQUENTIAL || mode == AC_FIRST || mode == AC_REFINE)
            if (!(act[i] = jpeg_scan_table(d, 0, c->ac_table))) return -1;
        c->dc_pred = 0;
        // progression status, for the block-smoothing decision (jdphuff.c keeps coef_bits)
        if (d->progressive)
            for (int k = s->ss; k <= s->se && k < 10; k++) c->coef_bits[k] = s->al;
    }
    d->bits = 0;
    d->nbits = d->fake = d->stop = d->eobrun = 0;

    // A.2: an interleaved scan goes through MCUs of h x v blocks of each component; a scan of one
    // component goes through its blocks one at a time, only those holding samples.
    int one = s->ncomp == 1;
    int mcus_x = one ? s->comp[0]->bw : d->mcus_x, mcus_y = one ? s->comp[0]->bh : d->mcus_y;
    int interval = d->restart_interval, left = interval, next_rst = 0;
    for (int my = 0; my < mcus_y; my++) {
        for (int mx = 0; mx < mcus_x; mx++) {
            if (interval && left == 0) {
                if (jpeg_restart(d, s, next_rst)) return -1;
                next_rst = (next_rst + 1) & 7;
                left = interval;
            }
            for (int i = 0; i < s->ncomp; i++) {
                JpegComponent* c = s->comp[i];
                int nbx = one ? 1 : c->h, nby = one ? 1 : c->v;
                for (int by = 0; by < nby; by++) {
                    for (int bx = 0; bx < nbx; bx++) {
                        int row = one ? my : my * c->v + by, col = one ? mx : mx * c->h + bx;
                        int16_t* blk = c->coef + ((size_t)row * c->bstride + col) * 64;
                        int rc = 0;
                        switch (mode) {
                        case SEQUENTIAL: rc = jpeg_block_sequential(d, c, blk, dct[i], act[i]); break;
                        case DC_FIRST: rc = jpeg_block_dc_first(d, c, blk, dct[i], s->al); break;
                        case DC_REFINE: jpeg_block_dc_refine(d, blk, s->al); break;
                        case AC_FIRST: rc = jpeg_block_ac_first(d, blk, act[i], s->ss, s->se, s->al); break;
                        case AC_REFINE: rc = jpeg_block_ac_refine(d, blk, act[i], s->ss, s->se, s->al); break;
                        }
                        if (rc) return -1;
                    }
                }
            }
            if (d->nbits < d->fake) return jpeg_data_error(d, "data ends early");
            left--;
        }
    }
    // pos is on the marker that stopped the reader, or before bytes not yet read (padding)
    return 0;
}

// ----------------------------------------------------------------------------
// IDCT (jidctint.c jpeg_idct_islow: the LL&M algorithm with 13-bit fixed-point constants)

#define IDCT_CONST_BITS 13
#define IDCT_PASS1_BITS 2
#define FIX_0_298631336 2446
#define FIX_0_390180644 3196
#define FIX_0_541196100 4433
#define FIX_0_765366865 6270
#define FIX_0_899976223 7373
#define FIX_1_175875602 9633
#define FIX_1_501321110 12299
#define FIX_1_847759065 15137
#define FIX_1_961570560 16069
#define FIX_2_053119869 16819
#define FIX_2_562915447 20995
#define FIX_3_072711026 25172

// x / 2^n rounded to nearest (libjpeg's DESCALE). Right shifts of negative values are arithmetic
// in GCC and Clang, as libjpeg assumes.
static inline int64_t idct_descale(int64_t x, int n) { return (x + ((int64_t)1 << (n - 1))) >> n; }

static inline int64_t idct_clamp16(int64_t x) { return x < -32768 ? -32768 : x > 32767 ? 32767 : x; }

static inline uint8_t idct_sample(int64_t x) { // + 128 and range-limit (the SIMD code saturates)
    x += 128;
    return (uint8_t)(x < 0 ? 0 : x > 255 ? 255 : x);
}

// The 1-D 8-point IDCT of libjpeg's jidctint.c (Loeffler, Ligtenberg and Moschytz), both passes:
// x holds the 8 inputs, y gets the 8 outputs scaled up by 2^IDCT_CONST_BITS (each pass descales
// its own way). Integer arithmetic, so the order of the sums does not matter.
static void idct_1d(const int64_t x[8], int64_t y[8]) {
    // even part: the rotator is sqrt(2) * c(-6)
    int64_t z2 = x[2], z3 = x[6];
    int64_t z1 = (z2 + z3) * FIX_0_541196100;
    int64_t tmp2 = z1 + z3 * -FIX_1_847759065;
    int64_t tmp3 = z1 + z2 * FIX_0_765366865;
    int64_t tmp0 = (x[0] + x[4]) * (1 << IDCT_CONST_BITS);
    int64_t tmp1 = (x[0] - x[4]) * (1 << IDCT_CONST_BITS);
    int64_t tmp10 = tmp0 + tmp3, tmp13 = tmp0 - tmp3, tmp11 = tmp1 + tmp2, tmp12 = tmp1 - tmp2;
    // odd part (figure 8 of the LL&M paper)
    tmp0 = x[7];
    tmp1 = x[5];
    tmp2 = x[3];
    tmp3 = x[1];
    z1 = tmp0 + tmp3;
    z2 = tmp1 + tmp2;
    z3 = tmp0 + tmp2;
    int64_t z4 = tmp1 + tmp3;
    int64_t z5 = (z3 + z4) * FIX_1_175875602;
    tmp0 *= FIX_0_298631336;
    tmp1 *= FIX_2_053119869;
    tmp2 *= FIX_3_072711026;
    tmp3 *= FIX_1_501321110;
    z1 *= -FIX_0_899976223;
    z2 *= -FIX_2_562915447;
    z3 = z3 * -FIX_1_961570560 + z5;
    z4 = z4 * -FIX_0_390180644 + z5;
    tmp0 += z1 + z3;
    tmp1 += z2 + z4;
    tmp2 += z2 + z3;
    tmp3 += z1 + z4;
    y[0] = tmp10 + tmp3, y[7] = tmp10 - tmp3;
    y[1] = tmp11 + tmp2, y[6] = tmp11 - tmp2;
    y[2] = tmp12 + tmp1, y[5] = tmp12 - tmp1;
    y[3] = tmp13 + tmp0, y[4] = tmp13 - tmp0;
}

// One 8x8 block: dequantize, columns then rows, into out (stride bytes per row). Arithmetic in
// 64 bits, as libjpeg's JLONG is on LP64, so no input overflows; the workspace between the passes
// saturates to 16 bits as the SIMD code's does (never reached by valid data).
static void jpeg_idct_islow(const int16_t* coef, const uint16_t* q, uint8_t* out, int stride) {
    int32_t ws[64];
    int64_t x[8], y[8];
    for (int col = 0; col < 8; col++) {
        const int16_t* in = coef + col;
        const uint16_t* qc = q + col;
        if (!in[8] && !in[16] && !in[24] && !in[32] && !in[40] && !in[48] && !in[56]) {
            // AC terms all zero: every output is the DC term (exactly what the full pass gives)
            int32_t dc = (int32_t)idct_clamp16((int64_t)in[0] * qc[0] * (1 << IDCT_PASS1_BITS));
            for (int r = 0; r < 8; r++) ws[r * 8 + col] = dc;
            continue;
        }
        for (int k = 0; k < 8; k++) x[k] = (int64_t)in[8 * k] * qc[8 * k];
        idct_1d(x, y);
        for (int r = 0; r < 8; r++)
            ws[r * 8 + col] = (int32_t)idct_clamp16(idct_descale(y[r], IDCT_CONST_BITS - IDCT_PASS1_BITS));
    }
    const int n = IDCT_CONST_BITS + IDCT_PASS1_BITS + 3; // also undoes the 8x scale of the two passes
    for (int row = 0; row < 8; row++) {
        const int32_t* w = ws + row * 8;
        uint8_t* o = out + (size_t)row * stride;
        if (!w[1] && !w[2] && !w[3] && !w[4] && !w[5] && !w[6] && !w[7]) {
            uint8_t v = idct_sample(idct_descale(w[0], IDCT_PASS1_BITS + 3));
            memset(o, v, 8);
            continue;
        }
        for (int k = 0; k < 8; k++) x[k] = w[k];
        idct_1d(x, y);
        for (int c = 0; c < 8; c++) o[c] = idct_sample(idct_descale(y[c], n));
    }
}

// ----------------------------------------------------------------------------
// upsampling (jdsample.c) and colour conversion (jdcolor.c)

// Output row y of component c at full resolution: c->hexp * c->width samples (at least the image
// width). Returns a row of the plane itself when there is nothing to do, else fills out.
static const uint8_t* jpeg_upsample_row(const JpegComponent* c, int y, uint8_t* out) {
    int stride = c->bw * 8, w = c->width;
    const uint8_t* near = c->plane + (size_t)(y / c->vexp) * stride;
    if (c->up == UP_FULL) return near;
    if (c->up == UP_REPLICATE) {
        for (int x = 0; x < w * c->hexp; x++) out[x] = near[x / c->hexp];
        return out;
    }
    if (c->up == UP_H2V1_FANCY) { // 3/4 of the nearer sample + 1/4 of the further; the ends copy
        out[0] = near[0];
        out[1] = (uint8_t)((near[0] * 3 + near[1] + 2) >> 2);
        for (int i = 1; i < w - 1; i++) {
            int v = near[i] * 3;
            out[2 * i] = (uint8_t)((v + near[i - 1] + 1) >> 2);
            out[2 * i + 1] = (uint8_t)((v + near[i + 1] + 2) >> 2);
        }
        out[2 * w - 2] = (uint8_t)((near[w - 1] * 3 + near[w - 2] + 1) >> 2);
        out[2 * w - 1] = near[w - 1];
        return out;
    }
    // h1v2 and h2v2: the other row is the one above for even output rows and the one below for
    // odd ones; above the first row and below the last, the edge row repeats (jdmainct.c).
    int r = y / 2, other = (y & 1) ? r + 1 : r - 1;
    if (other < 0) other = 0;
    if (other > c->height - 1) other = c->height - 1;
    const uint8_t* far = c->plane + (size_t)other * stride;
    if (c->up == UP_H1V2_FANCY) { // rounding bias 1 above, 2 below (libjpeg's ordered dither)
        int bias = (y & 1) ? 2 : 1;
        for (int x = 0; x < w; x++) out[x] = (uint8_t)((near[x] * 3 + far[x] + bias) >> 2);
        return out;
    }
    // UP_H2V2_FANCY: column sums of the vertical filter, then the horizontal one, /16, with
    // biases 8 and 7 alternating
    int last = near[0] * 3 + far[0], cur = last, next;
    out[0] = (uint8_t)((cur * 4 + 8) >> 4);
    for (int i = 0; i < w - 1; i++) {
        next = near[i + 1] * 3 + far[i + 1];
        if (i > 0) out[2 * i] = (uint8_t)((cur * 3 + last + 8) >> 4);
        out[2 * i + 1] = (uint8_t)((cur * 3 + next + 7) >> 4);
        last = cur;
        cur = next;
    }
    out[2 * w - 2] = (uint8_t)((cur * 3 + last + 8) >> 4);
    out[2 * w - 1] = (uint8_t)((cur * 4 + 7) >> 4);
    return out;
}

// jdcolor.c build_ycc_rgb_table: R = Y + 1.402 Cr', B = Y + 1.772 Cb', G = Y - 0.34414 Cb' -
// 0.71414 Cr' (Cb' = Cb - 128), in 16-bit fixed point with libjpeg's rounding.
typedef struct {
    int cr_r[256], cb_b[256];
    int64_t cr_g[256], cb_g[256];
} JpegColorTables;

#define YCC_SCALEBITS 16

// A coefficient in 16-bit fixed point, rounded as libjpeg's FIX() does.
static int64_t ycc_fix(double x) { return (int64_t)(x * (1 << YCC_SCALEBITS) + 0.5); }

static void jpeg_color_tables(JpegColorTables* t) {
    const int64_t half = (int64_t)1 << (YCC_SCALEBITS - 1);
    for (int i = 0; i < 256; i++) {
        int64_t x = i - 128;
        t->cr_r[i] = (int)((ycc_fix(1.40200) * x + half) >> YCC_SCALEBITS);
        t->cb_b[i] = (int)((ycc_fix(1.77200) * x + half) >> YCC_SCALEBITS);
        t->cr_g[i] = -ycc_fix(0.71414) * x;
        t->cb_g[i] = -ycc_fix(0.34414) * x + half; // the rounding half rides along
    }
}

static inline uint8_t jpeg_clamp255(int v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

// IDCT of every block that holds samples, then the output image, a row at a time.
static int jpeg_output(JpegDecoder* d, Image* img) {
    for (int i = 0; i < d->ncomp; i++) {
        JpegComponent* c = &d->comp[i];
        int stride = c->bw * 8;
        c->plane = malloc((size_t)stride * c->bh * 8);
        if (!c->plane) return set_error(d->err, "%s: out of memory for a %d x %d image", d->name, d->width, d->height);
        for (int by = 0; by < c->bh; by++)
            for (int bx = 0; bx < c->bw; bx++)
                jpeg_idct_islow(c->coef + ((size_t)by * c->bstride + bx) * 64, c->q,
                                c->plane + (size_t)by * 8 * stride + bx * 8, stride);
        free(c->coef);
        c->coef = NULL;
    }
    int W = d->width, H = d->height, C = d->ncomp;
    uint8_t* px = malloc((size_t)W * H * C);
    // room for one upsampled row per component: hexp * width <= image width + 3
    uint8_t* rows = malloc((size_t)3 * (W + 8));
    if (!px || !rows) {
        free(px);
        free(rows);
        return set_error(d->err, "%s: out of memory for a %d x %d image", d->name, W, H);
    }
    if (C == 1) {
        for (int y = 0; y < H; y++) memcpy(px + (size_t)y * W, d->comp[0].plane + (size_t)y * d->comp[0].bw * 8, W);
    } else {
        // jdapimin.c default_decompress_parms: JFIF means YCbCr; else Adobe's transform (0: RGB,
        // 1 and anything else: YCbCr); else component ids 'R','G','B' mean RGB; else YCbCr.
        int rgb = !d->jfif && (d->adobe ? d->adobe_transform == 0
                                        : d->comp[0].id == 'R' && d->comp[1].id == 'G' && d->comp[2].id == 'B');
        JpegColorTables t;
        jpeg_color_tables(&t);
        for (int y = 0; y < H; y++) {
            const uint8_t* r0 = jpeg_upsample_row(&d->comp[0], y, rows);
            const uint8_t* r1 = jpeg_upsample_row(&d->comp[1], y, rows + W + 8);
            const uint8_t* r2 = jpeg_upsample_row(&d->comp[2], y, rows + 2 * (W + 8));
            uint8_t* o = px + (size_t)y * W * 3;
            if (rgb) {
                for (int x = 0; x < W; x++) {
                    o[3 * x] = r0[x];
                    o[3 * x + 1] = r1[x];
                    o[3 * x + 2] = r2[x];
                }
            } else {
                for (int x = 0; x < W; x++) {
                    int yy = r0[x], cb = r1[x], cr = r2[x];
                    o[3 * x] = jpeg_clamp255(yy + t.cr_r[cr]);
                    o[3 * x + 1] = jpeg_clamp255(yy + (int)((t.cb_g[cb] + t.cr_g[cr]) >> YCC_SCALEBITS));
                    o[3 * x + 2] = jpeg_clamp255(yy + t.cb_b[cb]);
                }
            }
        }
    }
    free(rows);
    img->width = W;
    img->height = H;
    img->channels = C;
    img->depth = 8;
    img->data = px;
    return 0;
}

// Would libjpeg's block smoothing change this progressive file? smoothing_ok (jdcoefct.c) turns it
// on when every component has a quantization table with nonzero entries at the 10 lowest
// frequencies, every DC is at least partly known, and some coefficient among 1..9 of some
// component is not known to the last bit (never sent, or not refined down to bit 0). Then
// decompress_smooth_data predicts, from the neighbouring blocks' DC values, coefficients 1..5
// that are incomplete (and still zero), and, only when none of 1..9 was ever sent, coefficients
// 6..9 and the DC itself. So a component changes when one of 1..5 is incomplete or all of 1..9
// are missing; a file whose scans merely leave out higher frequencies decodes unchanged.
static int jpeg_would_smooth(const JpegDecoder* d) {
    static const int LOW[10] = {0, 1, 8, 16, 9, 2, 3, 10, 17, 24}; // Q00 Q01 Q10 Q20 Q11 Q02 Q03 Q12 Q21 Q30
    int useful = 0, changes = 0;
    for (int i = 0; i < d->ncomp; i++) {
        const JpegComponent* c = &d->comp[i];
        if (!c->q_latched) return 0;
        for (int k = 0; k < 10; k++)
            if (c->q[LOW[k]] == 0) return 0;
        if (c->coef_bits[0] < 0) return 0;
        int none_sent = 1;
        for (int k = 1; k < 10; k++) {
            useful |= c->coef_bits[k] != 0;
            none_sent &= c->coef_bits[k] == -1;
            if (k <= 5 && c->coef_bits[k] != 0) changes = 1;
        }
        changes |= none_sent;
    }
    return useful && changes;
}

// ----------------------------------------------------------------------------
// public API

int jpeg_is_jpeg(const uint8_t* data, size_t size) { return size >= 2 && data[0] == 0xFF && data[1] == M_SOI; }

static void jpeg_decoder_free(JpegDecoder* d) {
    for (int i = 0; i < 3; i++) {
        free(d->comp[i].coef);
        free(d->comp[i].plane);
    }
    free(d);
}

// The marker loop (B.2, B.3): tables and parameters until SOF, then scans until EOI.
static int jpeg_decode_markers(JpegDecoder* d) {
    if (!jpeg_is_jpeg(d->data, d->size)) return set_error(d->err, "%s: not a JPEG file (no SOI marker)", d->name);
    d->pos = 2;
    for (;;) {
        int marker = jpeg_next_marker(d);
        if (marker < 0) {
            if (d->scans == 0) return set_error(d->err, "%s: truncated JPEG data (the file ends before any scan)", d->name);
            return set_error(d->err, "%s: truncated JPEG data (no EOI marker after scan %d)", d->name, d->scans);
        }
        const uint8_t* body;
        int len;
        if (marker == M_EOI) {
            if (d->scans == 0) return set_error(d->err, "%s: JPEG file has no image (EOI before any scan)", d->name);
            if (d->progressive && jpeg_would_smooth(d))
                return set_error(d->err, "%s: progressive JPEG whose scans leave low-frequency coefficients "
                                 "incomplete is not supported (libjpeg would guess them by block smoothing)", d->name);
            return 0;
        } else if (marker == M_SOI) {
            return set_error(d->err, "%s: second SOI marker", d->name);
        } else if (marker == M_SOF0 || marker == M_SOF1 || marker == M_SOF2) {
            if (jpeg_segment(d, marker, &body, &len) || jpeg_read_sof(d, marker, body, len)) return -1;
        } else if (marker == M_SOF9 || marker == M_SOF10 || marker == M_SOF11 || marker == M_SOF13 ||
                   marker == M_SOF14 || marker == M_SOF15) {
            return set_error(d->err, "%s: arithmetic-coded JPEG is not supported", d->name);
        } else if (marker == M_SOF3) {
            return set_error(d->err, "%s: lossless JPEG is not supported", d->name);
        } else if (marker == M_SOF5 || marker == M_SOF6 || marker == M_SOF7) {
            return set_error(d->err, "%s: hierarchical (differential) JPEG is not supported", d->name);
        } else if (marker == M_JPG) {
            return set_error(d->err, "%s: unsupported JPEG process (JPG marker)", d->name);
        } else if (marker == M_DHT) {
            if (jpeg_segment(d, marker, &body, &len) || jpeg_read_dht(d, body, len)) return -1;
        } else if (marker == M_DQT) {
            if (jpeg_segment(d, marker, &body, &len) || jpeg_read_dqt(d, body, len)) return -1;
        } else if (marker == M_DRI) {
            if (jpeg_segment(d, marker, &body, &len)) return -1;
            if (len != 2) return set_error(d->err, "%s: bad DRI marker length", d->name);
            d->restart_interval = (body[0] << 8) | body[1];
        } else if (marker == M_SOS) {
            JpegScan scan;
            if (jpeg_segment(d, marker, &body, &len) || jpeg_read_sos(d, body, len, &scan)) return -1;
            if (jpeg_decode_scan(d, &scan)) return -1;
            d->scans++;
        } else if ((marker >= M_APP0 && marker <= M_APP15) || marker == M_COM || marker == M_DNL || marker == M_DAC) {
            // APPn and COM carry metadata; DNL is ignored as libjpeg does; DAC only matters to
            // arithmetic coding, which SOF9+ refuses
            if (jpeg_segment(d, marker, &body, &len)) return -1;
            jpeg_read_app(d, marker, body, len);
        } else if ((marker >= M_RST0 && marker <= M_RST7) || marker == M_TEM) {
            // parameterless; a restart marker outside a scan is ignored (as libjpeg does)
        } else {
            return set_error(d->err, "%s: unknown JPEG marker 0xFF%02X", d->name, marker);
        }
    }
}

int jpeg_decode(Image* img, const uint8_t* data, size_t size, const char* name, char* err) {
    memset(img, 0, sizeof(*img));
    JpegDecoder* d = calloc(1, sizeof(JpegDecoder));
    if (!d) return set_error(err, "%s: out of memory", name);
    d->data = data;
    d->size = size;
    d->name = name;
    d->err = err;
    int rc = jpeg_decode_markers(d);
    if (rc == 0) rc = jpeg_output(d, img);
    jpeg_decoder_free(d);
    return rc;
}

int jpeg_read(Image* img, const char* path, char* err) {
    memset(img, 0, sizeof(*img));
    uint8_t* data;
    size_t size;
    if (read_file(path, &data, &size, err)) return -1;
    int rc = jpeg_decode(img, data, size, path, err);
    free(data);
    return rc;
}
