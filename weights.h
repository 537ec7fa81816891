// weights.h: a model's parameters, in one allocation, filled strictly from safetensors.
//
// A model declares its parameters by walking its own config: one `weights_param` call per tensor,
// with the tensor's internal name (the diffusers / transformers key, e.g.
// "down_blocks.1.attentions.0.proj_in.weight") and shape. The walk runs twice, llm.c's
// fill_in_parameter_sizes + malloc_and_point_parameters in one function:
//
//   weights_init(&w, "unet", DT_F16);
//   unet_build(&unet, &w);   // pass 1: records names and shapes, hands out NULL
//   weights_check(&w, &st, "", err); // every tensor in the file, with its shape, before any memory
//   weights_allocate(&w);    // one arena on the current backend, sized from pass 1
//   unet_build(&unet, &w);   // pass 2: the same calls, now handing out pointers into the arena
//   weights_finish(&w);      // checks pass 2 asked for exactly what pass 1 did
//
// Then weights_load fills every parameter from a SafeTensors set: a missing tensor, a wrong shape
// or a non-float dtype is a one-line error naming the tensor and the file. The file's key for a
// parameter comes from a KeyMap callback, which is how one model reads both diffusers folders
// (key = name) and single-file SGM checkpoints (key = the SGM spelling, maybe a slice or a
// transpose of a stored tensor). weights_fill_random gives the random weights of `make demo` and
// `sdxl bench`, and weights_save writes a model back out (the demo's model folder).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"
#include "tensor.h"

#define WEIGHTS_MAX_RANK 4
#define WEIGHTS_NAME_MAX 200
// The most elements one model's parameters may total (and so any one of them): 2^40, 400 times
// SDXL's 2.6e9, and small enough that bytes = elements x 8 can never overflow a size_t. The config
// readers' limits keep real models far below; weights_param refuses a shape past it (or with a
// dimension below 1) as a programming error.
#define WEIGHTS_MAX_ELEMS_LOG2 40
#define WEIGHTS_MAX_ELEMS ((size_t)1 << WEIGHTS_MAX_ELEMS_LOG2)

typedef struct {
    char name[WEIGHTS_NAME_MAX]; // internal name
    int rank;
    int64_t shape[WEIGHTS_MAX_RANK];
    size_t numel;
    size_t offset; // in elements of the storage type, from the start of the arena
    void* data;    // on the backend the arena lives on (NULL in pass 1), of Weights.dtype
} Param;

typedef struct {
    const char* what; // "unet", "vae", "text_encoder_2": for messages
    Param* params;
    int count, capacity;
    int pass;     // 1: sizing, 2: handing out pointers
    int cursor;   // next parameter pass 2 expects
    size_t total; // elements
    DType dtype;  // storage type of every parameter: F32 (weights_init's choice), F16 or BF16
    Arena arena;  // the one allocation
} Weights;

// Starts an empty parameter table; `dtype` is how the parameters are stored (and so the dt the
// model passes its ops): F32, F16 or BF16. Files of any of the three load into any of them.
void weights_init(Weights* w, const char* what, DType dtype);
void weights_free(Weights* w);
// Declares (pass 1) or returns (pass 2) the parameter `name` of the given shape.
void* weights_param(Weights* w, const char* name, int rank, const int64_t* shape);
void weights_allocate(Weights* w);
void weights_finish(Weights* w);
const Param* weights_find(const Weights* w, const char* name);

// Where a parameter's values are in a file: tensor `key`, optionally transposed (2-D), or only
// rows [row_begin, row_end) of it (a fused q/k/v projection split three ways). A stored shape
// that differs from the parameter's only by trailing 1s (a 1x1 conv kept as a linear) is accepted.
typedef struct {
    char key[WEIGHTS_NAME_MAX + 64];
    int transpose;
    int64_t row_begin, row_end; // both 0: all rows
} ParamSource;
// Fills src for the parameter `name`; returns 0, or -1 when the file cannot hold it.
typedef int (*KeyMap)(const char* name, ParamSource* src, void* ctx);

// key = prefix + name (prefix may be ""), the diffusers layout.
int weights_load(Weights* w, const SafeTensors* st, const char* prefix, char* err);
// key from map(name): other layouts.
int weights_load_mapped(Weights* w, const SafeTensors* st, KeyMap map, void* ctx, char* err);
// The checks weights_load makes (every parameter present, of a float dtype and its shape), without
// reading anything. Loaders call it after the first build pass and before weights_allocate, so a
// config describing a model bigger than its file is a one-line shape error, not an allocation of
// the size the config asks for.
int weights_check(const Weights* w, const SafeTensors* st, const char* prefix, char* err);
int weights_check_mapped(const Weights* w, const SafeTensors* st, KeyMap map, void* ctx, char* err);

// Deterministic random values for weight-free runs: biases 0, norm scales 1, other tensors
// uniform in +-1/sqrt(fan_in) (fan_in = numel / shape[0]), as PyTorch's default init bounds.
void weights_fill_random(Weights* w, uint64_t seed);
// The same bounds for benchmarks of full-size models, made on the backend: Gaussian values of the
// uniform's variance (std = bound / sqrt(3)) from the Philox generator of randn_philox_forward,
// so an H100 fills SDXL's 2.6 billion UNet weights in a fraction of a second instead of the
// host's tens. Not the same values as weights_fill_random, nor across backends bit for bit.
void weights_fill_random_gaussian(Weights* w, uint64_t seed);
// Writes every parameter as `prefix + name` to a safetensors file (dtype F32, F16 or BF16).
int weights_save(const Weights* w, const char* path, const char* prefix, DType dtype, char* err);
