// tensor.c: dtype names and sizes, exact f16/bf16 conversions, arenas. See tensor.h.
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "ops.h"

static const struct {
    const char* name;
    size_t size;
} dtype_table[DT_COUNT] = {
    [DT_F32] = {"F32", 4}, [DT_F16] = {"F16", 2},  [DT_BF16] = {"BF16", 2}, [DT_F64] = {"F64", 8},
    [DT_I8] = {"I8", 1},   [DT_U8] = {"U8", 1},    [DT_I16] = {"I16", 2},   [DT_U16] = {"U16", 2},
    [DT_I32] = {"I32", 4}, [DT_U32] = {"U32", 4},  [DT_I64] = {"I64", 8},   [DT_U64] = {"U64", 8},
    [DT_BOOL] = {"BOOL", 1},
};

size_t dtype_size(DType t) { return dtype_table[t].size; }
const char* dtype_name(DType t) { return dtype_table[t].name; }

int dtype_from_name(const char* name) {
    for (int t = 0; t < DT_COUNT; t++)
        if (strcmp(name, dtype_table[t].name) == 0) return t;
    return -1;
}

uint32_t f32_to_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

float f32_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

// f32 -> f16, round to nearest, ties to even, done on the bit pattern so it does not depend on
// the compiler or the FPU. f16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
uint16_t f32_to_f16(float x) {
    uint32_t u = f32_to_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t exp = (u >> 23) & 0xffu;
    uint32_t man = u & 0x7fffffu;
    if (exp == 0xffu) return sign | (man ? 0x7e00u : 0x7c00u); // inf, or NaN as torch's canonical quiet NaN
    int e = (int)exp - 127 + 15;                                                               // rebias
    if (e >= 31) return sign | 0x7c00u;                                                        // overflow to infinity
    if (e <= 0) {
        // Subnormal f16 (or zero). The value is man_with_hidden * 2^(exp-150); in units of the
        // f16 subnormal step 2^-24 that is man_with_hidden >> (126 - exp).
        if (e < -10) return sign; // below half the smallest subnormal: rounds to zero
        uint32_t m = man | 0x800000u;
        int shift = 14 - e; // 126 - exp
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (half & 1u))) half++;
        return sign | (uint16_t)half; // a carry into the exponent field is the correct result
    }
    uint32_t h = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; // may carry into the exponent, even to inf
    return sign | (uint16_t)h;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1fu) return f32_from_bits(sign | 0x7f800000u | (man ? 0x400000u : 0u) | (man << 13)); // NaN comes out quiet, as F16C does
    if (exp == 0) {
        if (man == 0) return f32_from_bits(sign);
        // subnormal: man * 2^-24, exact in f32
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return f32_from_bits(sign | ((exp - 15 + 127) << 23) | (man << 13));
}

// bf16 is the top half of an f32; rounding adds 0x7fff plus the lowest kept bit (ties to even).
uint16_t f32_to_bf16(float x) {
    uint32_t u = f32_to_bits(x);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return 0xffffu; // NaN: what torch 2.x's .bfloat16() gives
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float bf16_to_f32(uint16_t b) { return f32_from_bits((uint32_t)b << 16); }

// Converts n <= CONVERT_BLOCK elements from an aligned buffer.
static void convert_block_to_f32(float* out, const void* inp, DType t, size_t n) {
    switch (t) {
    case DT_F32: memcpy(out, inp, n * 4); break;
    case DT_F16: for (size_t i = 0; i < n; i++) out[i] = f16_to_f32(((const uint16_t*)inp)[i]); break;
    case DT_BF16: for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(((const uint16_t*)inp)[i]); break;
    case DT_F64: for (size_t i = 0; i < n; i++) out[i] = (float)((const double*)inp)[i]; break;
    case DT_I8: for (size_t i = 0; i < n; i++) out[i] = (float)((const int8_t*)inp)[i]; break;
    case DT_U8: case DT_BOOL: for (size_t i = 0; i < n; i++) out[i] = (float)((const uint8_t*)inp)[i]; break;
    case DT_I16: for (size_t i = 0; i < n; i++) out[i] = (float)((const int16_t*)inp)[i]; break;
    case DT_U16: for (size_t i = 0; i < n; i++) out[i] = (float)((const uint16_t*)inp)[i]; break;
    case DT_I32: for (size_t i = 0; i < n; i++) out[i] = (float)((const int32_t*)inp)[i]; break;
    case DT_U32: for (size_t i = 0; i < n; i++) out[i] = (float)((const uint32_t*)inp)[i]; break;
    case DT_I64: for (size_t i = 0; i < n; i++) out[i] = (float)((const int64_t*)inp)[i]; break;
    case DT_U64: for (size_t i = 0; i < n; i++) out[i] = (float)((const uint64_t*)inp)[i]; break;
    default: fatal("convert_to_f32: bad dtype %d", (int)t);
    }
}

#define CONVERT_BLOCK 1024 // elements per aligned staging copy

void convert_to_f32(float* out, const void* inp, DType t, size_t n) {
    // Tensor data in a safetensors file need not be aligned for its type, so blocks are copied to
    // an aligned buffer before they are read as T (reading them in place would be undefined).
    uint64_t staging[CONVERT_BLOCK];
    size_t size = dtype_size(t);
    for (size_t i0 = 0; i0 < n; i0 += CONVERT_BLOCK) {
        size_t m = n - i0 < CONVERT_BLOCK ? n - i0 : CONVERT_BLOCK;
        memcpy(staging, (const char*)inp + i0 * size, m * size);
        convert_block_to_f32(out + i0, staging, t, m);
    }
}

void convert_from_f32(void* out, DType t, const float* inp, size_t n) {
    switch (t) {
    case DT_F32: memmove(out, inp, n * 4); break;
    case DT_F16: for (size_t i = 0; i < n; i++) ((uint16_t*)out)[i] = f32_to_f16(inp[i]); break;
    case DT_BF16: for (size_t i = 0; i < n; i++) ((uint16_t*)out)[i] = f32_to_bf16(inp[i]); break;
    default: fatal("convert_from_f32: %s is not a float storage dtype", dtype_name(t));
    }
}

// ----------------------------------------------------------------------------
// Arena

// n rounded up to ARENA_ALIGN; SIZE_MAX when that would wrap (no allocation can be that large,
// so the caller's check fails instead of a tiny buffer being handed out for a huge request).
static size_t align_up(size_t n) {
    return n > SIZE_MAX - ARENA_ALIGN ? SIZE_MAX : (n + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
}

void arena_init(Arena* a, const char* name, size_t capacity, int on_device) {
    memset(a, 0, sizeof(*a));
    a->name = name;
    a->capacity = align_up(capacity);
    a->on_device = on_device;
    if (a->capacity != SIZE_MAX) a->base = on_device ? device_try_malloc(a->capacity) : aligned_host_try_malloc(a->capacity);
    if (!a->base)
        fatal("out of memory: arena '%s' needs %zu bytes (%.1f GiB) of %s memory", name, capacity, capacity / 1073741824.0,
              on_device ? "device" : "host");
}

void arena_free(Arena* a) {
    if (a->base) {
        if (a->on_device) device_free(a->base);
        else aligned_host_free(a->base);
    }
    a->base = NULL;
    a->capacity = a->used = 0;
}

void* arena_alloc(Arena* a, size_t bytes, const char* what) {
    size_t need = align_up(bytes); // SIZE_MAX for a wrapped size: always more than is left
    if (need > a->capacity - a->used)
        fatal("arena '%s' is full: %s needs %zu bytes, %zu of %zu in use", a->name, what, need, a->used, a->capacity);
    void* p = a->base + a->used;
    a->used += need;
    if (a->used > a->high_water) a->high_water = a->used;
    return p;
}

// count elements as bytes, or SIZE_MAX when that overflows (arena_alloc then reports it full)
static size_t elems_bytes(size_t count, size_t size) { return count > SIZE_MAX / size ? SIZE_MAX : count * size; }

float* arena_floats(Arena* a, size_t count, const char* what) { return arena_alloc(a, elems_bytes(count, sizeof(float)), what); }
size_t arena_mark(const Arena* a) { return a->used; }
void arena_release(Arena* a, size_t mark) { a->used = mark; }
void arena_reset(Arena* a) { a->used = 0; }

void arena_report(const Arena* a) {
    printf("arena '%s': peak %.1f MiB of %.1f MiB (%s)\n", a->name, a->high_water / 1048576.0, a->capacity / 1048576.0,
           a->on_device ? "device" : "host");
}

void* arena_elems(Arena* a, size_t count, DType dt, const char* what) {
    return arena_alloc(a, elems_bytes(count, dtype_size(dt)), what);
}
