// jpeg.c: see jpeg.h (the decoder is being written; these refuse every file).
#include "jpeg.h"

#include "common.h"

int jpeg_is_jpeg(const uint8_t* data, size_t size) { return size >= 2 && data[0] == 0xFF && data[1] == 0xD8; }

int jpeg_decode(Image* img, const uint8_t* data, size_t size, const char* name, char* err) {
    (void)img;
    (void)data;
    (void)size;
    return set_error(err, "%s: JPEG decoding is not available yet", name);
}

int jpeg_read(Image* img, const char* path, char* err) {
    (void)img;
    return set_error(err, "%s: JPEG decoding is not available yet", path);
}
