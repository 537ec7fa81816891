// demo.h: the weight-free demo model (see demo.c).
#pragma once
#include <stdint.h>

// Writes a tiny random-weight SDXL as a diffusers folder at `root` (created if needed).
// Returns 0, or -1 with a one-line error.
int demo_model_write(const char* root, uint64_t seed, char* err);
// Writes the demo's byte-level CLIP tokenizer (vocab.json, merges.txt with no merges, the
// configs) to `dir`; pad_token "<|endoftext|>" as tokenizer/, "!" as tokenizer_2/. Benchmarks of
// random full-size models use it: every id it makes exists in SDXL's 49408-token vocabulary.
int demo_tokenizer_write(const char* dir, const char* pad_token, char* err);
// Writes a small imagefolder dataset to `root`: `count` black-and-white 16:9 storyboard-like
// frames (1365x768 PNGs of panels, figures and horizon lines drawn from a seeded generator) and
// a metadata.jsonl with a caption per frame. `make demo` trains the demo LoRA on it.
int demo_dataset_write(const char* root, int count, uint64_t seed, char* err);
