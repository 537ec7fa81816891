// image.h: pixel operations shared by the evaluators and the trainer, each matched to the library
// the reference pipeline uses (PIL for CLIP, BLIP and the trainer's resizes).
//
// Images are the Image of png.h: interleaved 8-bit samples, row-major, 1 to 4 channels.
#pragma once
#include "png.h"

typedef enum { RESAMPLE_NEAREST, RESAMPLE_BOX, RESAMPLE_BILINEAR, RESAMPLE_BICUBIC, RESAMPLE_LANCZOS } ResampleFilter;

// PIL's Image.resize((width, height), filter) on an 8-bit image: the same bytes as Pillow
// (its separable resampling with antialiasing when shrinking, fixed-point coefficients).
// Returns 0, or -1 with a one-line error.
int image_resize_pil(const Image* src, int width, int height, ResampleFilter filter, Image* dst, char* err);

// PIL's convert("RGB") of a decoded PNG: gray -> RGB, alpha dropped (as PIL, no compositing),
// 16-bit samples to 8 bits as PIL does. dst is a new image.
int image_to_rgb8(const Image* src, Image* dst, char* err);

// The w x h region at (x, y), which must lie inside src. dst is a new image.
int image_crop(const Image* src, int x, int y, int w, int h, Image* dst, char* err);

// 8-bit RGB (H, W, 3) to float (3, H, W): (v / 255 - mean[c]) / std[c], the "rescale + normalize"
// of transformers' image processors. out holds 3*H*W floats (host memory).
void image_to_chw_normalized(const Image* rgb, const float mean[3], const float std[3], float* out);
