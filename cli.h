// cli.h: table-driven long options for the `sdxl` subcommands.
//
// Each subcommand declares its options once, as a table of {name, type, target, help}. The same
// table parses argv, prints --help (with the default read from the target) and logs the resolved
// values, so the three cannot drift apart. Every bad argument is a one-line error.
#pragma once

#include "pipeline.h" // SdxlPrecision
#include "tensor.h"   // DType

// OPT_SEED is a torch seed: any 64-bit value, read as torch.Generator.manual_seed reads it
// (torch_seed_parse in rng.h: 0 .. 2^64 - 1, and -2^63 .. -1 as 2^64 + n), into a uint64_t.
typedef enum { OPT_INT, OPT_FLOAT, OPT_DOUBLE, OPT_STRING, OPT_FLAG, OPT_SEED } OptionType;

typedef struct {
    const char* name;  // "--steps"
    OptionType type;
    void* target;      // int*, float*, double*, const char**, int* (flag: set to 1), or uint64_t* (seed)
    const char* help;  // what it does and the allowed values; the default is appended
} Option;

// Parses argv[first..argc) against the table. Fatal one-line errors for unknown options, missing
// or malformed values. Returns 1 when --help was given (after printing the help), else 0.
int options_parse(const Option* options, int count, int argc, char** argv, int first, const char* usage);
void options_print_help(const Option* options, int count, const char* usage);
// Prints "name = value" for every option, for logs.
void options_print_values(const Option* options, int count);

// "cpu" or "cuda" -> backend_select(); a one-line error for anything else.
void backend_select_by_name(const char* name);
// A --precision value: "fp32", "fp16" or "bf16" -> the storage type; `option` names the flag in the
// one-line error for anything else.
int precision_by_name(const char* name, const char* option);
// The name precision_by_name takes for a storage type: "fp32", "fp16" or "bf16".
const char* precision_name(DType t);
// --precision (the UNet; the text encoders follow it: f32, or f16 for a 16-bit UNet) and
// --vae-precision. "auto" is the fast path on a GPU (UNet and text encoders f16 on the tensor
// cores, VAE bf16, which has f32's range: SDXL's VAE overflows in f16) and the reference on the
// CPU (f32, what the tests compare with diffusers).
SdxlPrecision model_precision(const char* unet, const char* vae);
