// safetensors.h: reading and writing the safetensors format, and diffusers model folders.
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
// N bytes of JSON, then the data section. The JSON maps each tensor name to
//   {"dtype": "F16", "shape": [320, 4, 3, 3], "data_offsets": [begin, end]}
// with offsets relative to the data section, plus an optional "__metadata__" object of
// string -> string. We check everything the reference implementation checks: the header fits in
// the file, it is valid JSON, every dtype is known, end - begin equals numel * dtype size, the
// offsets lie inside the data section and the tensors tile it with no overlap and no gap, names
// are unique. Each failure is one line naming the file.
//
// A SafeTensors value is a set of tensors that may come from several files: one .safetensors
// file, or every shard named by a diffusers `*.safetensors.index.json`. Files are memory-mapped
// read-only, so opening a 5 GB UNet costs no copy; `data` pointers stay valid until close.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "json.h"
#include "tensor.h"

#define SAFETENSORS_MAX_RANK 8
#define SAFETENSORS_MAX_HEADER (100u << 20) // the reference implementation's limit: 100 MB

typedef struct {
    const char* name;
    DType dtype;
    int rank;
    int64_t shape[SAFETENSORS_MAX_RANK];
    const uint8_t* data; // inside the mapped file; may be unaligned
    size_t nbytes;
    int file;            // index into SafeTensors.files
} SafeTensor;

typedef struct {
    char* path;
    uint8_t* base; // the mapping (or heap copy) of the whole file
    size_t size;
    int mapped;    // 1: munmap on close; 0: free
    JsonDoc header;
} SafeTensorsFile;

typedef struct {
    char path[4096];        // what was opened (a file or an index), for messages
    SafeTensorsFile* files;
    int file_count;
    SafeTensor* tensors;    // sorted by name
    int count;
    const char** meta_keys; // __metadata__ of the first file, in file order
    const char** meta_values;
    int meta_count;
} SafeTensors;

// Opens one .safetensors file. Returns 0, or -1 with err filled.
int safetensors_open(SafeTensors* st, const char* path, char* err);
// Parses a file already in memory; takes ownership of buf (malloc'd). For tests and fuzzers.
int safetensors_open_buffer(SafeTensors* st, const char* name, uint8_t* buf, size_t size, char* err);
// Opens every shard listed in a diffusers/transformers `*.safetensors.index.json` and checks that
// each tensor of the index's weight_map is in the shard it names.
int safetensors_open_index(SafeTensors* st, const char* index_path, char* err);
// Opens the weights of one component folder of a diffusers model, e.g. dir = ".../unet",
// stem = "diffusion_pytorch_model" (or "model" for text encoders), variant = "fp16" or NULL:
// tries <stem>[.variant].safetensors, then <stem>[.variant].safetensors.index.json.
int safetensors_open_dir(SafeTensors* st, const char* dir, const char* stem, const char* variant, char* err);
void safetensors_close(SafeTensors* st);

// Lookup by exact name (binary search); NULL when absent.
const SafeTensor* safetensors_find(const SafeTensors* st, const char* name);
// A __metadata__ value, or NULL.
const char* safetensors_metadata(const SafeTensors* st, const char* key);
size_t safetensor_numel(const SafeTensor* t);
// "[320, 4, 3, 3]" into buf.
const char* shape_string(char* buf, size_t cap, int rank, const int64_t* shape);

// Strict lookup for model loading: the tensor must exist and have exactly this shape, and a float
// dtype (F32/F16/BF16). Converts it to f32 into dst (host memory, numel floats). Errors:
//   "unet.safetensors: missing tensor 'conv_in.weight'"
//   "unet.safetensors: tensor 'conv_in.weight' has shape [320, 4, 3, 3], expected [320, 4, 3]"
// safetensors_check_f32 makes the same checks without reading (a loader checks a whole model's
// tensors before it allocates their memory).
int safetensors_check_f32(const SafeTensors* st, const char* name, int rank, const int64_t* shape, char* err);
int safetensors_read_f32(const SafeTensors* st, const char* name, int rank, const int64_t* shape, float* dst,
                         char* err);

// Writing. Tensors are written in the order given; the header is padded with spaces to a
// multiple of 8 bytes (so data starts aligned, as the reference writer does). The file appears
// atomically (a temporary file beside path, then renamed; out_open's rules). meta holds
// meta_count key/value pairs.
typedef struct {
    const char* name;
    DType dtype;
    int rank;
    int64_t shape[SAFETENSORS_MAX_RANK];
    const void* data; // numel * dtype_size bytes, host memory
} SafeTensorOut;

int safetensors_write(const char* path, const SafeTensorOut* tensors, int count, const char* const* meta_keys,
                      const char* const* meta_values, int meta_count, char* err);

// Reads a JSON file (config.json, model_index.json, *.index.json) into doc. err names the file.
int json_read_file(JsonDoc* doc, const char* path, char* err);
