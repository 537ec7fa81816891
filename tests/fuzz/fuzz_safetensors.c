// libFuzzer target for the safetensors reader: any bytes must be accepted (and every tensor's data
// then lies inside the buffer) or rejected with a message, never a crash.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../common.h"
#include "../../safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    uint8_t* buf = malloc(size ? size : 1); // safetensors_open_buffer takes ownership
    memcpy(buf, data, size);
    SafeTensors st;
    char err[ERR_MAX];
    if (safetensors_open_buffer(&st, "fuzz.safetensors", buf, size, err) == 0) {
        volatile uint8_t sink = 0;
        for (int i = 0; i < st.count; i++) {
            const SafeTensor* t = &st.tensors[i];
            if (t->nbytes) sink ^= t->data[0] ^ t->data[t->nbytes - 1]; // ASan checks the bounds
        }
        (void)sink;
        safetensors_close(&st);
    } else if (err[0] == 0) {
        __builtin_trap();
    }
    return 0;
}
