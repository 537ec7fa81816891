// demo.h: the weight-free demo model (see demo.c).
#pragma once
#include <stdint.h>

// Writes a tiny random-weight SDXL as a diffusers folder at `root` (created if needed).
// Returns 0, or -1 with a one-line error.
int demo_model_write(const char* root, uint64_t seed, char* err);
