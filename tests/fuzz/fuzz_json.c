// libFuzzer target for the JSON parser: any bytes must give 0 or -1 with a message, never a crash.
//   make fuzz            (all targets, FUZZ_SECONDS each)
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../../common.h"
#include "../../json.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    JsonDoc doc;
    char err[ERR_MAX];
    if (json_parse(&doc, (const char*)data, size, err) == 0) json_free(&doc);
    else if (err[0] == 0) __builtin_trap(); // a rejection must say why
    return 0;
}
