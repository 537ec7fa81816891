// image.h: pixel operations shared by the evaluators and the trainer, each matched to the library
// the reference pipeline uses (PIL for CLIP, BLIP and the trainer's resizes).
//
// Images are the Image of png.h: interleaved 8-bit samples, row-major, 1 to 4 channels.
// Every function that makes an image writes a fresh one into dst (free it with image_free) and
// copies no text entries. Errors follow common.h: 0, or -1 with a one-line message in err.
#pragma once
#include "png.h"

typedef enum { RESAMPLE_NEAREST, RESAMPLE_BOX, RESAMPLE_BILINEAR, RESAMPLE_BICUBIC, RESAMPLE_LANCZOS } ResampleFilter;

// PIL's Image.resize((width, height), filter) on an 8-bit image: the same bytes as Pillow
// (its separable resampling with antialiasing when shrinking, fixed-point coefficients).
// Two channels are PIL's "LA" and four "RGBA": for every filter but NEAREST they are resized with
// premultiplied alpha, as Pillow does. 16-bit images are refused (convert them first).
// Returns 0, or -1 with a one-line error.
int image_resize_pil(const Image* src, int width, int height, ResampleFilter filter, Image* dst, char* err);

// PIL's convert("RGB") of a decoded PNG: gray -> RGB, alpha dropped (as PIL, no compositing),
// 16-bit samples to 8 bits as PIL does. dst is a new image.
//   8-bit:  gray replicated; gray+alpha and RGBA lose their alpha.
//   16-bit: PIL opens 16-bit gray as mode "I;16", whose RGB conversion clips: min(v, 255);
//           gray+alpha, RGB and RGBA open as 8-bit modes holding the high byte: v >> 8.
//           (A 16-bit gray PNG with a tRNS colour key reaches us as gray+alpha, so it gets v >> 8
//           where PIL, which keeps it as "I;16" plus a transparency value, would clip.)
int image_to_rgb8(const Image* src, Image* dst, char* err);

// transformers' convert_to_rgb (image_transforms.py, 5.x; what CLIPImageProcessor and
// BlipImageProcessor do with do_convert_rgb): images with alpha are composited onto opaque white
// with PIL's Image.alpha_composite (its integer arithmetic), then converted to RGB; images
// without alpha are image_to_rgb8. (open_clip and clip-interrogator use plain convert("RGB").)
int image_to_rgb8_over_white(const Image* src, Image* dst, char* err);

// The w x h region at (x, y), which must lie inside src. dst is a new image (8- or 16-bit).
int image_crop(const Image* src, int x, int y, int w, int h, Image* dst, char* err);

// 8-bit RGB (H, W, 3) to float (3, H, W): (v / 255 - mean[c]) / std[c], the "rescale + normalize"
// of transformers' image processors. out holds 3*H*W floats (host memory).
// Rounded exactly as the PIL backend (CLIPImageProcessorPil): r = f32(f64(v) * (1/255)), then
// (r - mean) / std in f32. Calling it with anything but 8-bit RGB is a fatal error (a caller bug).
void image_to_chw_normalized(const Image* rgb, const float mean[3], const float std[3], float* out);
