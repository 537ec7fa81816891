// tensor.h: storage dtypes, exact conversions between them, and arenas.
//
// There is no tensor object in sdxl.c: model code passes plain pointers and dimensions, as llm.c
// does. What this file provides is the vocabulary around those pointers:
//   - DType: the element types a safetensors file can hold, with their sizes and names;
//   - conversions f32 <-> f16 and f32 <-> bf16 with round-to-nearest-even, bit-exact with
//     torch's `.half()` / `.bfloat16()` (NaN stays NaN, overflow goes to infinity, subnormals kept);
//   - Arena: one allocation carved up by a bump allocator. Weights take one arena per model;
//     activations take an arena that remembers its high-water mark so `sdxl bench` can report peak
//     memory. An arena lives on the host or on the current backend's device.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum {
    DT_F32, DT_F16, DT_BF16, DT_F64,
    DT_I8, DT_U8, DT_I16, DT_U16, DT_I32, DT_U32, DT_I64, DT_U64, DT_BOOL,
    DT_COUNT
} DType;

size_t dtype_size(DType t);            // bytes per element
const char* dtype_name(DType t);       // the safetensors spelling: "F32", "BF16", "I64", ...
int dtype_from_name(const char* name); // the DType, or -1 for a name we do not know

// The bit pattern of an f32 and back (memcpy, so no aliasing rule is broken).
uint32_t f32_to_bits(float x);
float f32_from_bits(uint32_t u);

// Scalar conversions. f16/bf16 values travel as their raw uint16_t bit patterns.
uint16_t f32_to_f16(float x);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float x);
float bf16_to_f32(uint16_t b);

// Converts n elements of any float or integer dtype to f32 (host memory), e.g. a safetensors
// tensor into a model's f32 weights. Integers convert exactly when |v| < 2^24.
void convert_to_f32(float* out, const void* inp, DType t, size_t n);
// Converts n f32 values to f32/f16/bf16 storage (host memory).
void convert_from_f32(void* out, DType t, const float* inp, size_t n);

// ----------------------------------------------------------------------------
// Arena: a bump allocator over one allocation.

#define ARENA_ALIGN 256 // bytes; enough for AVX-512 loads and CUDA's coalescing/vector loads

typedef struct {
    const char* name;  // for error messages: "unet weights", "vae activations"
    char* base;        // the one allocation (host, or device when on_device)
    size_t capacity;   // bytes
    size_t used;       // bytes handed out so far
    size_t high_water; // most bytes ever in use at once
    int on_device;     // 1: base is device memory of the CUDA backend
} Arena;

// Allocates `capacity` bytes on the host (on_device 0) or the device (1). Fatal if it cannot.
void arena_init(Arena* a, const char* name, size_t capacity, int on_device);
void arena_free(Arena* a);
// Hands out `bytes` (rounded up to ARENA_ALIGN). Running out is a fatal one-line error naming the
// arena and `what`, with the sizes, because it means a size computation in the model is wrong.
void* arena_alloc(Arena* a, size_t bytes, const char* what);
float* arena_floats(Arena* a, size_t count, const char* what);
// count elements of a storage type (F32, F16, BF16): the activations of a model in its precision.
void* arena_elems(Arena* a, size_t count, DType dt, const char* what);
// A mark/release pair gives scoped scratch: everything allocated after the mark is released.
size_t arena_mark(const Arena* a);
void arena_release(Arena* a, size_t mark);
void arena_reset(Arena* a);
// One line for logs and benchmarks: "arena 'unet activations': peak 812.4 MiB of 1024.0 MiB (host)".
void arena_report(const Arena* a);
