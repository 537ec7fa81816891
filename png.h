// png.h: reading and writing PNG images on zlib (the implementation and its choices are in png.c).
//
// The reader accepts every PNG the spec allows and hands back samples in one of four layouts,
// the way libpng does after png_set_expand: palette images become RGB (RGBA when they carry
// tRNS), gray and RGB images with a tRNS colour key gain an alpha channel, and 1/2/4-bit samples
// are scaled to 8 bits. 16-bit images stay 16-bit. Text chunks (tEXt, zTXt, iTXt) come back as
// UTF-8 key/value pairs in file order; that is where AUTOMATIC1111 keeps its `parameters`.
//
// The writer writes 8- or 16-bit gray, gray+alpha, RGB and RGBA with the image's text entries,
// and its bytes depend only on the image (and on zlib's deflate at level 6).
//
// Errors follow common.h: 0 on success, or -1 with a one-line message in err (ERR_MAX bytes)
// that names the file and the problem.
#pragma once
#include <stddef.h>
#include <stdint.h>

// Largest image we read or write, PNG or JPEG: PIL's decompression-bomb limit, 2 x
// Image.MAX_IMAGE_PIXELS = 2 x 89,478,485 pixels (e.g. 17,000 x 10,527; a 16384 x 16384 image is
// refused), the size above which PIL.Image.open raises DecompressionBombError, so a file a diffusers
// or kohya user could open is one we open too. The formats allow far more (PNG: 2^31-1 a side);
// anything near that is a broken or hostile file, and refusing it before allocating keeps a
// 50-byte file from asking for exabytes.
#define IMAGE_MAX_PIXELS 178956970u
#define PNG_MAX_DIM 0x7fffffffu      // spec 11.2.2: width and height are at most 2^31-1
#define PNG_MAX_TEXT (64u << 20)     // bytes a compressed text chunk may inflate to

typedef struct {
    int width, height;
    int channels;      // 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
    int depth;         // bits per sample: 8 or 16
    void* data;        // (height, width, channels) row-major, interleaved; depth 16: uint16_t in host byte order
    int text_count;    // text chunks (tEXt, zTXt, iTXt) in file order
    char** text_keys;  // NUL-terminated, UTF-8
    char** text_values;
} Image;

// Reads a PNG file into img (which is overwritten; free it with image_free).
int png_read(Image* img, const char* path, char* err);
// The same, from memory; name is used in error messages (for tests and fuzzers).
int png_decode(Image* img, const uint8_t* buf, size_t size, const char* name, char* err);

// Writes img to path atomically (a temporary file beside it, then rename; out_open's rules): 8-
// or 16-bit, 1 to 4 channels, with every text entry (tEXt when key and value are ASCII, iTXt
// otherwise). Text keys must be 1-79 printable ASCII characters.
int png_write(const char* path, const Image* img, char* err);
// The same, to a fresh malloc'd buffer (*buf, *size).
int png_encode(const Image* img, uint8_t** buf, size_t* size, char* err);

// Frees the pixels and text of img and zeroes it. Safe on a zeroed Image.
void image_free(Image* img);
// Appends a text entry (copies key and value). Returns 0.
int image_add_text(Image* img, const char* key, const char* value);
// Value of the first text entry named key, or NULL.
const char* image_get_text(const Image* img, const char* key);
