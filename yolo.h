// yolo.h: the YOLOv8 object detector (ultralytics) and the "is the object the prompt names in the
// picture" check built on it.
//
//   Yolo y;  YoloDetection dets[300];  char err[ERR_MAX];
//   yolo_load(&y, "yolov8n.safetensors", err);            // made by scripts/convert_yolo.py from yolov8n.pt
//   int n = yolo_detect(&y, &rgb, dets, 300, NULL, err);  // YOLO("yolov8n.pt").predict(image), defaults
//   YoloObject objs[YOLO_MAX_OBJECTS];
//   int k = yolo_prompt_objects("two men and a dog on a sofa", objs, YOLO_MAX_OBJECTS);   // person, dog, couch
//   yolo_object_presence(objs, k, dets, n, (const char* const*)y.names, y.cfg.nc);        // found? best conf
//
// yolo_detect is ultralytics' predict for one image with a PyTorch model: LetterBox to 640 (the minimum
// rectangle: pad to a multiple of 32 only), cv2.resize INTER_LINEAR, grey 114 bars, /255; the network;
// confidence 0.25, per-class NMS at IoU 0.7, at most 300 boxes; boxes scaled back to the image.
// Weights live on the backend that was current at yolo_load (ops.h), and yolo_detect runs there.
// Errors follow common.h: 0 (or a count) on success, -1 with a one-line message in err.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "layers.h"
#include "ops.h"
#include "png.h"
#include "safetensors.h"
#include "tensor.h"
#include "weights.h"

#define YOLO_LAYERS 23       // rows of yolov8.yaml: backbone 0-9, head 10-21, Detect 22
#define YOLO_LEVELS 3        // Detect inputs P3, P4, P5 (strides 8, 16, 32)
#define YOLO_MAX_REPEATS 32  // Bottlenecks per C2f (yolov8l/x: 6)
#define YOLO_MAX_NC 4096     // classes we accept from a checkpoint (COCO: 80)
#define YOLO_MAX_CHANNELS 4096 // a Conv, C2f or SPPF layer's output channels (yolov8x's widest: 640)
#define YOLO_MAX_REG_MAX 256 // DFL bins per box side (every YOLOv8: 16)
#define YOLO_MAX_MULTIPLE 16.0 // depth_multiple, width_multiple (yolov8x: 1.0, 1.25)
#define YOLO_NAME_MAX 64     // bytes of a class name, NUL included
#define YOLO_COCO_CLASSES 80

// The resolved architecture: yolov8.yaml's layer list at one scale. Filled from the scale's numbers
// (yolo_config_from_scale, parse_model's rules) or read off a checkpoint's tensor shapes.
typedef struct {
    char scale[16];       // "n", "s", "m", "l", "x", a custom letter, or "" when inferred from shapes
    double depth, width;  // depth_multiple, width_multiple (0 when inferred from shapes)
    int max_channels;     // (0 when inferred)
    int nc;               // classes (80 for COCO)
    int reg_max;          // DFL bins per box side (16)
    int out[YOLO_LAYERS]; // output channels of each layer (Concat: the sum; Detect: 0)
    int n[YOLO_LAYERS];   // Bottlenecks of each C2f layer, 0 elsewhere
    int box_hidden;       // Detect c2 = max(16, out[15] / 4, 4 * reg_max): width of the cv2 (box) branch
    int cls_hidden;       // Detect c3 = max(out[15], min(nc, 100)): width of the cv3 (class) branch
} YoloConfig;

// parse_model's scaling of yolov8.yaml: repeats max(round(n * depth), 1), channels
// make_divisible(min(c, max_channels) * width, 8). Returns 0, or -1 with err.
int yolo_config_from_scale(YoloConfig* cfg, const char* scale, double depth, double width, int max_channels, int nc,
                           int reg_max, char* err);
// The same numbers read off the tensor shapes of a checkpoint (for files without our metadata).
int yolo_config_from_tensors(YoloConfig* cfg, const SafeTensors* st, char* err);

// ----------------------------------------------------------------------------
// Blocks (field comments give the ultralytics module path under model.<i>)

// nn/modules/conv.py Conv: Conv2d(bias=False) + BatchNorm2d(eps 1e-3) + SiLU. yolo_load folds the
// BatchNorm into the conv (W' = W * gamma / sqrt(var + eps), b' = beta - gamma * mean / sqrt(var + eps)),
// as ultralytics' own fuse() does before predicting, so `conv` has a bias and the forward is silu(conv(x)).
typedef struct {
    Conv2d conv; // .conv (+ the folded .bn)
} YoloConv;

// nn/modules/block.py Bottleneck(c, c, shortcut, k=(3, 3), e=1.0): x + cv2(cv1(x)) when shortcut
typedef struct {
    YoloConv cv1, cv2; // .m.<j>.cv1, .m.<j>.cv2 (3x3, c -> c)
} YoloBottleneck;

// block.py C2f(c1, c2, n, shortcut): cv1 (1x1, c1 -> 2c), chunk into halves y0 y1, y_{j+2} = m[j](y_{j+1}),
// cv2 (1x1, (2 + n)c -> c2) on cat(y0 .. y_{n+1}); c = c2 / 2
typedef struct {
    YoloConv cv1, cv2;
    YoloBottleneck m[YOLO_MAX_REPEATS];
    int n, c, shortcut;
} YoloC2f;

// block.py SPPF(c1, c2, k=5): cv1 (1x1, c1 -> c1/2), three max-pools (k 5, stride 1, pad 2) in a chain,
// cv2 (1x1, 4 * c1/2 -> c2) on the concatenation of cv1's output and the three pools
typedef struct {
    YoloConv cv1, cv2;
    int hidden;
} YoloSPPF;

// nn/modules/head.py Detect (legacy, YOLOv8): per level i, cv2[i] = Conv 3x3, Conv 3x3, Conv2d 1x1 -> 4 *
// reg_max box logits; cv3[i] = Conv 3x3, Conv 3x3, Conv2d 1x1 -> nc class logits; dfl = the fixed 1x1 conv
// whose weights are 0 .. reg_max-1 (the expectation over each side's softmax)
typedef struct {
    YoloConv box[YOLO_LEVELS][2]; // cv2.<i>.0, cv2.<i>.1
    Conv2d box_out[YOLO_LEVELS];  // cv2.<i>.2 (with bias)
    YoloConv cls[YOLO_LEVELS][2]; // cv3.<i>.0, cv3.<i>.1
    Conv2d cls_out[YOLO_LEVELS];  // cv3.<i>.2 (with bias)
    float* dfl;                   // dfl.conv.weight (1, reg_max, 1, 1)
} YoloDetect;

typedef struct {
    YoloConfig cfg;
    Weights weights;            // one allocation on the backend current at yolo_load
    Backend backend;
    YoloConv conv[YOLO_LAYERS]; // the plain Conv layers 0, 1, 3, 5, 7, 16, 19 (other entries unused)
    YoloC2f c2f[YOLO_LAYERS];   // the C2f layers 2, 4, 6, 8, 12, 15, 18, 21 (other entries unused)
    YoloSPPF sppf;              // layer 9
    YoloDetect detect;          // layer 22
    char** names;               // nc class names (metadata "names"; COCO's when absent and nc == 80)
    int file_tensors;           // tensors in the checkpoint
    int unused_tensors;         // of them, not read by the loader (0 for a convert_yolo.py file)
} Yolo;

// Reads a safetensors file written by scripts/convert_yolo.py (the unfused state_dict, names
// model.0.conv.weight, model.0.bn.running_var, ...). The architecture comes from its metadata (scale
// numbers, nc, reg_max, names) or, without metadata, from the tensor shapes. Strict: a missing tensor
// or a wrong shape is a one-line error naming the tensor and the file.
int yolo_load(Yolo* y, const char* path, char* err);
void yolo_free(Yolo* y);

// Every tensor name and shape a checkpoint of this architecture holds (what convert_yolo.py writes),
// in state_dict order, without allocating any weights: fn is called once per tensor.
void yolo_checkpoint_keys(const YoloConfig* cfg, void (*fn)(void* ctx, const char* name, int rank, const int64_t* shape),
                          void* ctx);

// ----------------------------------------------------------------------------
// Pre-processing (data/augment.py LetterBox + engine/predictor.py preprocess)

typedef struct {
    int src_w, src_h;             // the image
    int new_w, new_h;             // its resized size (LetterBox new_unpad)
    int top, bottom, left, right; // grey bars
    int out_w, out_h;             // the network input: new + bars (multiples of 32 with auto_rect)
} YoloLetterbox;

// LetterBox(imgsz, auto=auto_rect, stride).get_params: scale r = min(imgsz/h, imgsz/w), new size
// round(w r) x round(h r) (at least 1), padding imgsz - new (modulo stride when auto_rect), split
// round(d/2 - 0.1) before and round(d/2 + 0.1) after. The predictor uses auto_rect = 1 for a
// PyTorch model and one image.
void yolo_letterbox_params(int src_w, int src_h, int imgsz, int stride, int auto_rect, YoloLetterbox* lb);
// The letterboxed 8-bit image (same channel order as rgb): cv2.resize INTER_LINEAR, then value-114 bars.
int yolo_letterbox(const Image* rgb, int imgsz, int auto_rect, Image* out, YoloLetterbox* lb, char* err);
// The network input from a letterboxed RGB image: HWC uint8 -> CHW f32 / 255 (ultralytics'
// preprocess; our image is RGB already, so there is no BGR flip). chw holds 3 * h * w floats.
void yolo_input_from_letterbox(const Image* boxed, float* chw);
// cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR) for 8-bit images of 1 to 4 channels,
// byte for byte (OpenCV 5.0's fixed-point path; see yolo.c). For the letterbox and its tests.
int yolo_resize_linear(const Image* src, int w, int h, Image* dst, char* err);

// ----------------------------------------------------------------------------
// The network

// Activation bytes yolo_forward needs for an H x W input (H, W multiples of 32).
size_t yolo_arena_bytes(const Yolo* y, int H, int W);
// Anchors (= output columns) for an H x W input: (H/8)(W/8) + (H/16)(W/16) + (H/32)(W/32).
int yolo_anchor_count(int H, int W);
// The detector before NMS, as ultralytics' Detect returns it in inference: out (4 + nc, A) in host
// memory, rows 0-3 the box (cx, cy, w, h) in input pixels, rows 4.. the sigmoid class scores; anchors
// ordered P3, P4, P5, each level row-major. inp (3, H, W) RGB in [0, 1] on the backend; activations
// come from `a` (yolo_arena_bytes, on the same backend).
void yolo_forward(const Yolo* y, const float* inp, int H, int W, float* out, Arena* a);

// ----------------------------------------------------------------------------
// Post-processing and the whole detector

typedef struct {
    float x1, y1, x2, y2; // box corners, pixels of the original image (of the network input after yolo_nms)
    float conf;           // class score
    int cls;              // class index into the model's names
    int anchor;           // output column it came from
} YoloDetection;

typedef struct {
    int imgsz;      // 640 (cfg/default.yaml imgsz)
    int auto_rect;  // 1: minimum-rectangle letterbox, as predict does for a .pt model; 0: square imgsz
    double conf;    // 0.25 (engine/predictor.py: "default conf=0.25")
    double iou;     // 0.7  (cfg/default.yaml iou)
    int max_det;    // 300  (cfg/default.yaml max_det)
    int agnostic;   // 0: per-class NMS (cfg/default.yaml agnostic_nms False)
} YoloOptions;
void yolo_options_default(YoloOptions* opt);

// utils/nms.py non_max_suppression for one image (multi_label False, no class filter, max_nms 30000,
// max_wh 7680) with torchvision.ops.nms: detections in the network input's pixels, best first.
// Returns the count (at most max_out and opt->max_det).
int yolo_nms(const float* pred, int nc, int A, const YoloOptions* opt, YoloDetection* out, int max_out);
// utils/ops.py scale_boxes + clip_boxes: from the letterboxed input back to the original image.
void yolo_scale_boxes(YoloDetection* d, int n, const YoloLetterbox* lb);

// Everything: letterbox, network, NMS, scale back. rgb: 8-bit, 3 channels. opt NULL: the defaults.
// Returns the number of detections written to out (at most max), or -1 with err.
int yolo_detect(const Yolo* y, const Image* rgb, YoloDetection* out, int max, const YoloOptions* opt, char* err);

// ----------------------------------------------------------------------------
// COCO classes and prompts

// The 80 names of ultralytics/cfg/datasets/coco.yaml (index = class id), or NULL out of range.
const char* yolo_coco_name(int cls);

#define YOLO_MAX_OBJECTS 32
typedef struct {
    int cls;            // COCO class id
    char word[48];      // the words of the prompt that named it, as first written (lower case): "sofa"
    int found;          // a detection of that class exists
    float best_conf;    // the highest confidence among those detections (0 when none)
} YoloObject;

// The COCO objects a prompt names, each class once, in order of first mention. Matching is on
// whole words, case-insensitive, longest phrase first ("hot dog" before "dog", "teddy bear" before
// "bear"), through the fixed table in yolo.c (singulars, plurals, a few synonyms); nothing else is
// guessed. Returns the count (at most max).
int yolo_prompt_objects(const char* prompt, YoloObject* out, int max);
// Fills found/best_conf of each object from detections whose class name (names[det.cls], a model
// with nc names) equals the object's COCO name.
void yolo_object_presence(YoloObject* objs, int n_objs, const YoloDetection* dets, int n_dets, const char* const* names,
                          int nc);
