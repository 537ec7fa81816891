// jpeg.h: a JPEG decoder (baseline and progressive, any chroma subsampling) on our own code,
// matching Pillow's decoding (libjpeg-turbo) sample for sample. (Being written: see issue 6;
// until then every JPEG is refused with a one-line error.)
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "png.h"

int jpeg_is_jpeg(const uint8_t* data, size_t size); // starts with the SOI marker
int jpeg_decode(Image* img, const uint8_t* data, size_t size, const char* name, char* err);
int jpeg_read(Image* img, const char* path, char* err);
