// data.h: training data for the LoRA trainer.
//
// The dataset is a Hugging Face `imagefolder`: a folder of images and a metadata.jsonl, one JSON
// object a line, {"file_name": "0001.png", "text": "a caption", ...}. datasets' loader turns
// file_name into the image column and keeps the other keys as columns; the caption column is
// "text" unless the user names another (--caption-column), as diffusers' training scripts do.
// metadata.jsonl may also sit in a split folder (train/), the layout datasets documents.
//
// Each step takes one example through one of two preprocessing modes:
//   - DATA_CROP, diffusers-compatible (train_text_to_image_lora_sdxl.py preprocess_train): the
//     shorter side resized to the resolution (Lanczos, torchvision's size rule), an optional
//     horizontal flip (p = 0.5), then a random (or centre) square crop of resolution x resolution.
//     A 16:9 storyboard frame loses 44% of its width, and is conditioned on a square target.
//   - DATA_BUCKETS, aspect-ratio buckets as kohya's sd-scripts makes them: the bucket (of about
//     resolution^2 pixels, sides multiples of bucket_step) whose aspect is nearest the image's,
//     the image scaled to cover it and the excess trimmed (centre or random). A 16:9 frame at
//     1024 trains at 1344x768 and keeps almost all of its picture.
// Both give SDXL's six size conditions as diffusers computes them: the file's size, the crop's
// true top-left offset in the resized image, and the training size (kohya writes a different
// "letterbox" offset for buckets; we keep diffusers' meaning in both modes).
//
// Images are PNG (png.c) or JPEG (jpeg.c), converted to RGB as PIL's convert("RGB") does.
// Every random choice (data order, crop, flip) comes from the caller's TorchGenerator, so a run
// is reproducible and a checkpoint can store the generator to resume it exactly.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "png.h"
#include "rng.h"

typedef struct {
    char* file;    // the image's path (root joined with file_name)
    char* caption; // the caption column's text
} DataItem;

typedef struct {
    char root[4096];
    DataItem* items;
    int count;
    int skipped; // lines left out with a warning (only with skip_bad)
} Dataset;

#define DATA_CAPTION_MAX_BYTES 65536 // a longer caption is an error (a data bug: CLIP reads 77 tokens)

typedef struct {
    const char* caption_column; // "text" (datasets' default), or the --caption-column
    int skip_bad;               // bad lines are left out with a warning instead of failing
    int follow_links;           // a file_name may reach outside the folder through a symbolic link
} DatasetOptions;

// Reads root/metadata.jsonl (or root/train/metadata.jsonl). Every line must be a JSON object with
// a string "file_name" naming an existing file inside the metadata's folder (relative, no ".."
// above the folder, no symbolic link out of it unless follow_links) and a string of at most
// DATA_CAPTION_MAX_BYTES in the caption column; anything else is a one-line error naming the file
// and line ("data/metadata.jsonl line 7: no \"text\" string"), or, with skip_bad, a warning on
// stderr and the line is left out. A caption that is not valid UTF-8 is kept with its bad bytes
// replaced by U+FFFD (Python's errors="replace"), with a warning. Returns 0, or -1 with err filled.
int dataset_open(Dataset* d, const char* root, const DatasetOptions* o, char* err);
// The same on metadata text already read (text[0..size)): `meta` names it in messages, file names
// are resolved against `folder`. For dataset_open and the fuzzer.
int dataset_parse(Dataset* d, const char* text, size_t size, const char* meta, const char* folder, const DatasetOptions* o,
                  char* err);
void dataset_free(Dataset* d);

// PNG or JPEG by content (not by name), as 8-bit RGB (PIL's convert("RGB")).
int image_load_rgb(Image* img, const char* path, char* err);

typedef enum { DATA_CROP, DATA_BUCKETS } DataMode;

typedef struct {
    DataMode mode;
    int resolution;   // 1024 for SDXL
    int center_crop;  // 1: centre crop (or trim), 0: random
    int random_flip;  // 1: flip horizontally with probability 0.5
    int bucket_step;  // bucket sides are multiples of this (64; SDXL needs multiples of 8 at least)
    int bucket_min, bucket_max; // bucket side limits (256, 2048)
} DataConfig;

DataConfig data_config_default(void); // DATA_BUCKETS at 1024, centre trim, no flip, step 64, 256..2048

// The bucket (width x height) kohya's make_bucket_resolutions and BucketManager would pick for an
// image of w x h: among the buckets of about resolution^2 pixels, the nearest aspect ratio.
void data_bucket_for(const DataConfig* c, int w, int h, int* bucket_w, int* bucket_h);

// One example ready for the VAE: pixels (3, height, width) in [-1, 1] (ToTensor, then
// Normalize(0.5, 0.5)), host memory, and the six size conditions.
typedef struct {
    float* pixels;
    int width, height;     // the training size
    float time_ids[6];     // original h, w; crop top, left; target h, w
    int flipped;
    int crop_top, crop_left;
} Example;

// Loads and preprocesses item `index` with the config, drawing the crop and the flip from rng
// (nothing is drawn in modes that make no random choice). Returns 0, or -1 with err filled.
int dataset_example(const Dataset* d, int index, const DataConfig* c, TorchGenerator* rng, Example* ex, char* err);
// The same in two parts: the flip decision (one torch.rand draw when random_flip, else 0), and
// the example with a given flip, drawing only the crop from rng (NULL is fine with center_crop).
// The trainer draws the flip alone when it reads the example's latents from its cache.
int data_draw_flip(const DataConfig* c, TorchGenerator* rng);
int dataset_example_flipped(const Dataset* d, int index, const DataConfig* c, int flipped, TorchGenerator* rng,
                            Example* ex, char* err);
void example_free(Example* ex);
