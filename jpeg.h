// jpeg.h: decoding JPEG files (the implementation and its choices are in jpeg.c).
//
// The decoder gives the same samples as Pillow's Image.open(f).convert("RGB") (and, for
// grayscale files, the "L" image Pillow opens them as), byte for byte: Pillow decodes with
// libjpeg-turbo's defaults (accurate integer IDCT, fancy upsampling, its fixed-point YCbCr->RGB),
// and jpeg.c does the same arithmetic. Checked against Pillow 13 with libjpeg-turbo 3.2.0 by
// tests/test_jpeg.c (goldens from scripts/make_golden_jpeg.py).
//
// Read: Huffman-coded baseline, extended sequential (SOF1) and progressive (SOF2) JPEG at 8-bit
// precision; 1 component (gray) or 3 components (YCbCr; RGB when an Adobe APP14 marker says
// transform 0, or the component ids are 'R','G','B' and there is no JFIF marker, as libjpeg
// decides); any sampling factors libjpeg accepts (integral ratios, at most 10 blocks per MCU);
// restart intervals; 8- and 16-bit quantization tables; sequential files split into several
// scans; motion-JPEG frames without Huffman tables (the standard tables are used, as libjpeg does).
// Refused with a one-line error naming the file: arithmetic coding, lossless and hierarchical
// JPEG, 12-bit samples, 2 or 4 components (CMYK, YCCK), a height given by a DNL marker,
// truncated data and a missing EOI (Pillow refuses these too), corrupt scan data (where libjpeg
// fills in gray and Pillow hands back the damaged image), and the rare progressive file that
// stops before its low-frequency coefficients are complete (libjpeg would guess them by block
// smoothing; see jpeg.c).
//
// Orientation: the EXIF orientation tag is ignored, as Pillow's Image.open ignores it; the
// samples come back in stored order. ICC profiles are ignored too (no colour management).
//
// Errors follow common.h: 0 on success, or -1 with a one-line message in err (ERR_MAX bytes)
// that names the file and the problem, and img left zeroed.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "png.h" // Image, image_free

// Largest image we decode: IMAGE_MAX_PIXELS, as for PNG (png.h), and at most 65500 on a side,
// the limit libjpeg-turbo enforces (JPEG_MAX_DIMENSION). Checked before anything is allocated.
#define JPEG_MAX_DIM 65500

// 1 when data starts with the JPEG SOI marker (FF D8), so a loader can dispatch on content.
int jpeg_is_jpeg(const uint8_t* data, size_t size);

// Decodes a JPEG from memory into img (overwritten; free it with image_free): 8-bit samples,
// channels 1 (a grayscale file) or 3 (RGB), data (height, width, channels) row-major,
// text_count 0. name is used in error messages.
int jpeg_decode(Image* img, const uint8_t* data, size_t size, const char* name, char* err);
// The same, reading the file at path.
int jpeg_read(Image* img, const char* path, char* err);
