// libFuzzer target for the JPEG decoder: any bytes must decode (into an image whose buffer holds
// every sample) or be rejected with a message, never a crash.
#include <stdint.h>
#include <string.h>

#include "../../common.h"
#include "../../jpeg.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Image img;
    char err[ERR_MAX];
    if (jpeg_decode(&img, data, size, "fuzz.jpg", err) == 0) {
        size_t bytes = (size_t)img.width * img.height * img.channels;
        volatile uint8_t sink = 0;
        if (bytes) sink ^= ((uint8_t*)img.data)[bytes - 1]; // ASan checks the last sample is inside
        (void)sink;
        image_free(&img);
    } else if (err[0] == 0) {
        __builtin_trap();
    }
    return 0;
}
