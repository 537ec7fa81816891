// yolo.c: the YOLOv8 detector of ultralytics, from the image to the detections, and the check of
// which objects a prompt names that the detector finds.
//
// It mirrors ultralytics 8.4.190 (site-packages/ultralytics/):
//   cfg/models/v8/yolov8.yaml      the layer list (YAML below) and the n/s/m/l/x scales
//   nn/tasks.py parse_model        scaling: repeats max(round(n * depth), 1), channels
//                                  make_divisible(min(c, max_channels) * width, 8); legacy SPPF (cv1 activated)
//   nn/tasks.py BaseModel.fuse     BatchNorm folded into each Conv before predicting (utils/torch_utils.py
//                                  fuse_conv_and_bn -> torch.nn.utils.fusion.fuse_conv_bn_weights)
//   nn/modules/conv.py Conv        Conv2d(bias=False, pad k/2) + BatchNorm2d + SiLU; BN eps 1e-3
//                                  (utils/torch_utils.py initialize_weights)
//   nn/modules/block.py            C2f, Bottleneck, SPPF, DFL
//   nn/modules/head.py Detect      legacy (YOLOv8) head: cv2 box branch, cv3 class branch, DFL, dist2bbox
//                                  (xywh) times the stride, sigmoid scores; utils/tal.py make_anchors, dist2bbox
//   engine/predictor.py            pre_transform (LetterBox, auto = rect for a .pt model and one image),
//                                  preprocess (BGR -> RGB, HWC -> CHW, / 255), conf default 0.25
//   data/augment.py LetterBox      get_params (scale, rounding, padding split) and apply_image
//                                  (cv2.resize INTER_LINEAR, cv2.copyMakeBorder value 114)
//   utils/nms.py                   non_max_suppression with torchvision.ops.nms (ultralytics uses it when
//                                  torchvision is imported, which the predictor does)
//   utils/ops.py                   xywh2xyxy, scale_boxes, clip_boxes
//   cfg/datasets/coco.yaml         the 80 class names
// and OpenCV 5.0 imgproc/src/resize.cpp for cv2.resize INTER_LINEAR on 8-bit images.
//
// Not here: batches (one image per call), fp16 inference (ultralytics' half=False default), test-time
// augmentation, other YOLO versions (convert_yolo.py refuses them), segmentation/pose heads.
//
// Layout: one image, so a (C, H, W) tensor's channel ranges are contiguous blocks. C2f's chunk(2) and
// the concatenations inside C2f and SPPF therefore need no copies: each piece is written into its
// slice of the concatenated tensor directly. The neck's Concat layers, whose inputs are separate
// tensors, use concat_forward. Everything on tensors goes through ops.h, so the network runs on the
// CPU and CUDA backends; the decode after the head (anchors, dist2bbox) and NMS run on the host.
//
// Letters: C channels, H W the spatial size of the current tensor, HW = H*W, A anchors (output columns),
// nc classes, R = reg_max (DFL bins per box side).
#include "yolo.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"
#include "ops.h"

#define YOLO_BN_EPS 1e-3f     // utils/torch_utils.py initialize_weights: every BatchNorm2d gets eps 1e-3
#define YOLO_STRIDE 32        // the model's largest stride: LetterBox's auto padding and the input multiple
#define YOLO_PAD_VALUE 114    // LetterBox padding_value
#define YOLO_MAX_WH 7680      // nms.py max_wh: class offset that keeps per-class NMS apart
#define YOLO_MAX_NMS 30000    // nms.py max_nms: candidates kept for NMS
#define YOLO_SPPF_K 5         // SPPF max-pool kernel (yolov8.yaml [1024, 5]), stride 1, padding k/2

// ----------------------------------------------------------------------------
// yolov8.yaml: one row per layer; every layer reads the previous one, Concat also `cat_with`.

typedef enum { LAYER_CONV, LAYER_C2F, LAYER_SPPF, LAYER_UPSAMPLE, LAYER_CONCAT, LAYER_DETECT } LayerKind;
typedef struct {
    LayerKind kind;
    int repeats;  // the yaml's `number` column (C2f Bottlenecks before depth scaling)
    int channels; // the yaml's channel argument before width scaling (Conv, C2f, SPPF)
    int shortcut; // C2f's second argument (backbone True, head False)
    int cat_with; // Concat's other input
} YamlRow;

static const YamlRow YAML[YOLO_LAYERS] = {
    {LAYER_CONV, 1, 64, 0, 0},     // 0-P1/2   Conv [64, 3, 2]
    {LAYER_CONV, 1, 128, 0, 0},    // 1-P2/4   Conv [128, 3, 2]
    {LAYER_C2F, 3, 128, 1, 0},     // 2        C2f [128, True]
    {LAYER_CONV, 1, 256, 0, 0},    // 3-P3/8   Conv [256, 3, 2]
    {LAYER_C2F, 6, 256, 1, 0},     // 4        C2f [256, True]
    {LAYER_CONV, 1, 512, 0, 0},    // 5-P4/16  Conv [512, 3, 2]
    {LAYER_C2F, 6, 512, 1, 0},     // 6        C2f [512, True]
    {LAYER_CONV, 1, 1024, 0, 0},   // 7-P5/32  Conv [1024, 3, 2]
    {LAYER_C2F, 3, 1024, 1, 0},    // 8        C2f [1024, True]
    {LAYER_SPPF, 1, 1024, 0, 0},   // 9        SPPF [1024, 5]
    {LAYER_UPSAMPLE, 1, 0, 0, 0},  // 10       nn.Upsample [None, 2, "nearest"]
    {LAYER_CONCAT, 1, 0, 0, 6},    // 11       Concat [-1, 6]: cat backbone P4
    {LAYER_C2F, 3, 512, 0, 0},     // 12       C2f [512]
    {LAYER_UPSAMPLE, 1, 0, 0, 0},  // 13
    {LAYER_CONCAT, 1, 0, 0, 4},    // 14       Concat [-1, 4]: cat backbone P3
    {LAYER_C2F, 3, 256, 0, 0},     // 15       C2f [256]   (P3/8-small)
    {LAYER_CONV, 1, 256, 0, 0},    // 16       Conv [256, 3, 2]
    {LAYER_CONCAT, 1, 0, 0, 12},   // 17       Concat [-1, 12]: cat head P4
    {LAYER_C2F, 3, 512, 0, 0},     // 18       C2f [512]   (P4/16-medium)
    {LAYER_CONV, 1, 512, 0, 0},    // 19       Conv [512, 3, 2]
    {LAYER_CONCAT, 1, 0, 0, 9},    // 20       Concat [-1, 9]: cat head P5
    {LAYER_C2F, 3, 1024, 0, 0},    // 21       C2f [1024]  (P5/32-large)
    {LAYER_DETECT, 1, 0, 0, 0},    // 22       Detect [nc] on layers 15, 18, 21
};
static const int DETECT_FROM[YOLO_LEVELS] = {15, 18, 21};
static const float LEVEL_STRIDE[YOLO_LEVELS] = {8.0f, 16.0f, 32.0f}; // Detect.stride as the model computes it
static const char* const COCO[YOLO_COCO_CLASSES]; // the class names, at the end of the file

// ----------------------------------------------------------------------------
// Config

// Detect's branch widths and the checks both config paths share.
static int config_finish(YoloConfig* cfg, const char* where, char* err) {
    if (cfg->nc < 1 || cfg->nc > YOLO_MAX_NC) return set_error(err, "%s: nc %d is outside 1..%d", where, cfg->nc, YOLO_MAX_NC);
    // reg_max 1 makes ultralytics' DFL an Identity (no distribution); YOLOv8 checkpoints all use 16
    if (cfg->reg_max < 2 || cfg->reg_max > YOLO_MAX_REG_MAX)
        return set_error(err, "%s: reg_max %d is not supported (YOLOv8 uses 16)", where, cfg->reg_max);
    for (int i = 0; i < YOLO_LAYERS; i++) {
        const YamlRow* r = &YAML[i];
        if (r->kind == LAYER_UPSAMPLE) cfg->out[i] = cfg->out[i - 1];
        if (r->kind == LAYER_CONCAT) cfg->out[i] = cfg->out[i - 1] + cfg->out[r->cat_with];
        if (r->kind == LAYER_DETECT) cfg->out[i] = 0;
        int widest = r->kind == LAYER_CONCAT ? 2 * YOLO_MAX_CHANNELS : YOLO_MAX_CHANNELS;
        if (r->kind != LAYER_DETECT && (cfg->out[i] < 2 || cfg->out[i] % 2 != 0 || cfg->out[i] > widest))
            return set_error(err, "%s: layer %d would have %d channels", where, i, cfg->out[i]);
        if (r->kind == LAYER_C2F && (cfg->n[i] < 1 || cfg->n[i] > YOLO_MAX_REPEATS))
            return set_error(err, "%s: layer %d would have %d Bottlenecks (1..%d supported)", where, i, cfg->n[i], YOLO_MAX_REPEATS);
    }
    // head.py Detect.__init__: c2, c3 = max((16, ch[0] // 4, self.reg_max * 4)), max(ch[0], min(self.nc, 100))
    int ch0 = cfg->out[DETECT_FROM[0]];
    int c2 = ch0 / 4 > 16 ? ch0 / 4 : 16;
    cfg->box_hidden = 4 * cfg->reg_max > c2 ? 4 * cfg->reg_max : c2;
    int c3 = cfg->nc < 100 ? cfg->nc : 100;
    cfg->cls_hidden = ch0 > c3 ? ch0 : c3;
    return 0;
}

int yolo_config_from_scale(YoloConfig* cfg, const char* scale, double depth, double width, int max_channels, int nc,
                           int reg_max, char* err) {
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->scale, sizeof(cfg->scale), "%s", scale ? scale : "");
    if (!(depth > 0 && depth <= YOLO_MAX_MULTIPLE) || !(width > 0 && width <= YOLO_MAX_MULTIPLE) || max_channels < 8)
        return set_error(err, "yolo scale '%s': depth %g, width %g, max_channels %d are not usable", cfg->scale, depth, width,
                         max_channels);
    cfg->depth = depth;
    cfg->width = width;
    cfg->max_channels = max_channels;
    cfg->nc = nc;
    cfg->reg_max = reg_max;
    for (int i = 0; i < YOLO_LAYERS; i++) {
        const YamlRow* r = &YAML[i];
        if (r->kind == LAYER_CONV || r->kind == LAYER_C2F || r->kind == LAYER_SPPF) {
            // parse_model: c2 = make_divisible(min(c2, max_channels) * width, 8), make_divisible(x, 8) = ceil(x / 8) * 8
            double c = (r->channels < max_channels ? r->channels : max_channels) * width;
            cfg->out[i] = (int)ceil(c / 8.0) * 8;
        }
        if (r->kind == LAYER_C2F) {
            // n = max(round(n * depth), 1) if n > 1 else n; Python's round() halves to even, as rint does
            int n = r->repeats > 1 ? (int)rint(r->repeats * depth) : r->repeats;
            cfg->n[i] = n > 1 ? n : 1;
        }
    }
    char where[64];
    snprintf(where, sizeof(where), "yolo scale '%s'", cfg->scale);
    return config_finish(cfg, where, err);
}

// Dimension d of tensor `name`, or -1 when the file lacks it.
static int64_t tensor_dim(const SafeTensors* st, const char* name, int d) {
    const SafeTensor* t = safetensors_find(st, name);
    return t && d < t->rank ? t->shape[d] : -1;
}

int yolo_config_from_tensors(YoloConfig* cfg, const SafeTensors* st, char* err) {
    memset(cfg, 0, sizeof(*cfg));
    char name[NAME_MAX_LEN];
    for (int i = 0; i < YOLO_LAYERS; i++) {
        const YamlRow* r = &YAML[i];
        if (r->kind == LAYER_CONV) name_fmt(name, "model.%d.conv.weight", i);
        else if (r->kind == LAYER_C2F || r->kind == LAYER_SPPF) name_fmt(name, "model.%d.cv2.conv.weight", i);
        else continue;
        int64_t c = tensor_dim(st, name, 0);
        if (c < 1) return set_error(err, "%s: missing tensor '%s' (the architecture is read from the shapes)", st->path, name);
        cfg->out[i] = c > YOLO_MAX_CHANNELS ? YOLO_MAX_CHANNELS + 2 : (int)c; // config_finish names what is too wide
        if (r->kind == LAYER_C2F) {
            int n = 0;
            while (n <= YOLO_MAX_REPEATS && tensor_dim(st, name_fmt(name, "model.%d.m.%d.cv1.conv.weight", i, n), 0) > 0) n++;
            cfg->n[i] = n;
        }
    }
    int64_t nc = tensor_dim(st, "model.22.cv3.0.2.weight", 0), bins = tensor_dim(st, "model.22.dfl.conv.weight", 1);
    if (nc < 1) return set_error(err, "%s: missing tensor 'model.22.cv3.0.2.weight' (the architecture is read from the shapes)", st->path);
    if (bins < 1) return set_error(err, "%s: missing tensor 'model.22.dfl.conv.weight' (the architecture is read from the shapes)", st->path);
    cfg->nc = nc > YOLO_MAX_NC ? YOLO_MAX_NC + 1 : (int)nc; // config_finish refuses these
    cfg->reg_max = bins > YOLO_MAX_REG_MAX ? YOLO_MAX_REG_MAX + 1 : (int)bins;
    return config_finish(cfg, st->path, err);
}

// ----------------------------------------------------------------------------
// Parameters. The table holds the fused model: `<conv>.conv.weight` and `<conv>.conv.bias` for each
// Conv (the bias is the folded BatchNorm), the head's plain 1x1 convs, and the DFL weights.

static YoloConv conv_build(Weights* w, const char* prefix, int in, int out, int k, int stride) {
    char name[NAME_MAX_LEN];
    YoloConv c;
    c.conv = conv2d_build(w, name_fmt(name, "%s.conv", prefix), in, out, k, stride, k / 2, 1); // autopad: k // 2
    return c;
}

static YoloC2f c2f_build(Weights* w, int layer, int in, int out, int n, int shortcut) {
    char p[NAME_MAX_LEN], q[NAME_MAX_LEN];
    YoloC2f b;
    memset(&b, 0, sizeof(b));
    b.n = n;
    b.c = out / 2; // C2f: self.c = int(c2 * e), e = 0.5
    b.shortcut = shortcut;
    // state_dict order: cv1, cv2, then m.0.cv1, m.0.cv2, ...
    b.cv1 = conv_build(w, name_fmt(p, "model.%d.cv1", layer), in, 2 * b.c, 1, 1);
    b.cv2 = conv_build(w, name_fmt(p, "model.%d.cv2", layer), (2 + n) * b.c, out, 1, 1);
    for (int j = 0; j < n; j++) {
        b.m[j].cv1 = conv_build(w, name_fmt(q, "model.%d.m.%d.cv1", layer, j), b.c, b.c, 3, 1);
        b.m[j].cv2 = conv_build(w, name_fmt(q, "model.%d.m.%d.cv2", layer, j), b.c, b.c, 3, 1);
    }
    return b;
}

static void yolo_build(Yolo* y, Weights* w) {
    const YoloConfig* cfg = &y->cfg;
    char p[NAME_MAX_LEN];
    int in = 3; // RGB
    for (int i = 0; i < YOLO_LAYERS - 1; i++) {
        const YamlRow* r = &YAML[i];
        if (r->kind == LAYER_CONV) y->conv[i] = conv_build(w, name_fmt(p, "model.%d", i), in, cfg->out[i], 3, 2);
        if (r->kind == LAYER_C2F) y->c2f[i] = c2f_build(w, i, in, cfg->out[i], cfg->n[i], r->shortcut);
        if (r->kind == LAYER_SPPF) {
            y->sppf.hidden = in / 2; // SPPF: c_ = c1 // 2
            y->sppf.cv1 = conv_build(w, "model.9.cv1", in, y->sppf.hidden, 1, 1);
            y->sppf.cv2 = conv_build(w, "model.9.cv2", 4 * y->sppf.hidden, cfg->out[i], 1, 1);
        }
        in = cfg->out[i];
    }
    // Detect: cv2 (all levels), cv3 (all levels), dfl, in state_dict order
    YoloDetect* d = &y->detect;
    int R = cfg->reg_max;
    for (int l = 0; l < YOLO_LEVELS; l++) {
        int ch = cfg->out[DETECT_FROM[l]];
        d->box[l][0] = conv_build(w, name_fmt(p, "model.22.cv2.%d.0", l), ch, cfg->box_hidden, 3, 1);
        d->box[l][1] = conv_build(w, name_fmt(p, "model.22.cv2.%d.1", l), cfg->box_hidden, cfg->box_hidden, 3, 1);
        d->box_out[l] = conv2d_build(w, name_fmt(p, "model.22.cv2.%d.2", l), cfg->box_hidden, 4 * R, 1, 1, 0, 1);
    }
    for (int l = 0; l < YOLO_LEVELS; l++) {
        int ch = cfg->out[DETECT_FROM[l]];
        d->cls[l][0] = conv_build(w, name_fmt(p, "model.22.cv3.%d.0", l), ch, cfg->cls_hidden, 3, 1);
        d->cls[l][1] = conv_build(w, name_fmt(p, "model.22.cv3.%d.1", l), cfg->cls_hidden, cfg->cls_hidden, 3, 1);
        d->cls_out[l] = conv2d_build(w, name_fmt(p, "model.22.cv3.%d.2", l), cfg->cls_hidden, cfg->nc, 1, 1, 0, 1);
    }
    d->dfl = tensor_build(w, "model.22.dfl.conv.weight", 4, (int64_t[]){1, R, 1, 1});
}

// Parameter i is the weight of a Conv whose BatchNorm is folded: it is named "<prefix>.conv.weight" and the
// next parameter is "<prefix>.conv.bias" (the DFL's "model.22.dfl.conv.weight" has no such partner).
// Fills prefix (NAME_MAX_LEN bytes).
static int is_folded_conv(const Weights* w, int i, char* prefix) {
    const char* name = w->params[i].name;
    size_t len = strlen(name), suffix = strlen(".conv.weight");
    if (len <= suffix || strcmp(name + len - suffix, ".conv.weight") != 0 || i + 1 >= w->count) return 0;
    snprintf(prefix, NAME_MAX_LEN, "%.*s", (int)(len - suffix), name);
    char bias[NAME_MAX_LEN + 16];
    snprintf(bias, sizeof(bias), "%s.conv.bias", prefix);
    return strcmp(w->params[i + 1].name, bias) == 0;
}

static const char* const BN_PARTS[4] = {"weight", "bias", "running_mean", "running_var"};

// Every tensor load_params will read, checked for presence, shape and dtype while the table is
// still only declared (pass 1), so a model the file does not hold is refused before its memory
// is allocated.
static int check_params(const Weights* w, const SafeTensors* st, char* err) {
    char prefix[NAME_MAX_LEN], name[NAME_MAX_LEN + 32];
    for (int i = 0; i < w->count; i++) {
        const Param* p = &w->params[i];
        if (safetensors_check_f32(st, p->name, p->rank, p->shape, err) != 0) return -1;
        if (!is_folded_conv(w, i, prefix)) continue;
        for (int k = 0; k < 4; k++) { // BatchNorm's (C) vectors
            snprintf(name, sizeof(name), "%s.bn.%s", prefix, BN_PARTS[k]);
            if (safetensors_check_f32(st, name, 1, p->shape, err) != 0) return -1;
        }
        i++; // the folded bias is not in the file
    }
    return 0;
}

// Reads every parameter, folding each Conv's BatchNorm as torch.nn.utils.fusion.fuse_conv_bn_weights
// does (in f32, the same operation order):
//   rsqrt = 1 / sqrt(var + eps);  W' = W * (gamma * rsqrt);  b' = (0 - mean) * rsqrt * gamma + beta
static int load_params(Yolo* y, const SafeTensors* st, char* err) {
    Weights* w = &y->weights;
    size_t max_n = 1;
    for (int i = 0; i < w->count; i++) max_n = w->params[i].numel > max_n ? w->params[i].numel : max_n;
    float* host = xmalloc(sizeof(float) * max_n);
    float* bn[4] = {NULL, NULL, NULL, NULL};
    float* bias = NULL;
    size_t bn_cap = 0;
    int used = 0, rc = 0;
    char prefix[NAME_MAX_LEN], name[NAME_MAX_LEN + 32];
    for (int i = 0; i < w->count && rc == 0; i++) {
        Param* p = &w->params[i];
        if (!is_folded_conv(w, i, prefix)) {
            rc = safetensors_read_f32(st, p->name, p->rank, p->shape, host, err);
            if (rc == 0) copy_to_device(p->data, host, sizeof(float) * p->numel);
            used++;
            continue;
        }
        size_t C = (size_t)p->shape[0], per = p->numel / C;
        if (C > bn_cap) {
            for (int k = 0; k < 4; k++) bn[k] = xrealloc(bn[k], sizeof(float) * C);
            bias = xrealloc(bias, sizeof(float) * C);
            bn_cap = C;
        }
        rc = safetensors_read_f32(st, p->name, p->rank, p->shape, host, err);
        for (int k = 0; k < 4 && rc == 0; k++) {
            snprintf(name, sizeof(name), "%s.bn.%s", prefix, BN_PARTS[k]);
            rc = safetensors_read_f32(st, name, 1, (int64_t[]){(int64_t)C}, bn[k], err);
        }
        if (rc != 0) break;
        const float *gamma = bn[0], *beta = bn[1], *mean = bn[2], *var = bn[3];
        for (size_t c = 0; c < C; c++) {
            float rsqrt = 1.0f / sqrtf(var[c] + YOLO_BN_EPS);
            float s = gamma[c] * rsqrt;
            for (size_t j = 0; j < per; j++) host[c * per + j] *= s;
            bias[c] = (0.0f - mean[c]) * rsqrt * gamma[c] + beta[c];
        }
        copy_to_device(p->data, host, sizeof(float) * p->numel);
        copy_to_device(w->params[i + 1].data, bias, sizeof(float) * C);
        used += 5; // conv.weight and the four BatchNorm tensors
        i++;       // the bias parameter is done
    }
    free(host);
    free(bias);
    for (int k = 0; k < 4; k++) free(bn[k]);
    y->file_tensors = st->count;
    y->unused_tensors = st->count - used;
    return rc;
}

void yolo_checkpoint_keys(const YoloConfig* cfg, void (*fn)(void* ctx, const char* name, int rank, const int64_t* shape),
                          void* ctx) {
    // pass 1 of the build only: names and shapes, no allocation
    Yolo* y = xcalloc(1, sizeof(Yolo));
    y->cfg = *cfg;
    weights_init(&y->weights, "yolo", DT_F32);
    yolo_build(y, &y->weights);
    const Weights* w = &y->weights;
    char prefix[NAME_MAX_LEN], name[NAME_MAX_LEN + 32];
    for (int i = 0; i < w->count; i++) {
        const Param* p = &w->params[i];
        fn(ctx, p->name, p->rank, p->shape);
        if (is_folded_conv(w, i, prefix)) {
            for (int k = 0; k < 4; k++) {
                snprintf(name, sizeof(name), "%s.bn.%s", prefix, BN_PARTS[k]);
                fn(ctx, name, 1, p->shape);
            }
            i++;
        }
    }
    weights_free(&y->weights);
    free(y);
}

// ----------------------------------------------------------------------------
// Loading

// A metadata value as a real number: 0 when absent, -1 when present but not a number.
static int meta_number(const SafeTensors* st, const char* key, double* out) {
    const char* s = safetensors_metadata(st, key);
    if (!s) return 0;
    char* end;
    *out = strtod(s, &end);
    return end != s && *end == '\0' ? 1 : -1;
}

// The metadata written by scripts/convert_yolo.py: the scale's multiples (real numbers) and its
// integers (read by json.h's rules: an integer literal in range, so "80.5" or "1e9" classes are
// refused rather than cast).
static int read_config(YoloConfig* cfg, const SafeTensors* st, char* err) {
    const char* arch = safetensors_metadata(st, "architecture");
    if (arch && strcmp(arch, "yolov8-detect") != 0)
        return set_error(err, "%s: architecture '%s', expected 'yolov8-detect' (scripts/convert_yolo.py)", st->path, arch);
    double depth, width;
    int has = meta_number(st, "depth_multiple", &depth);
    if (has == 0) return yolo_config_from_tensors(cfg, st, err); // no metadata: read the shapes
    if (has < 0 || meta_number(st, "width_multiple", &width) != 1)
        return set_error(err, "%s: metadata needs numeric depth_multiple and width_multiple", st->path);
    int64_t maxc, nc, reg_max;
    if (json_config_int_text(safetensors_metadata(st, "max_channels"), "metadata \"max_channels\"", 8, 1 << 20, &maxc, st->path,
                             err) != 0 ||
        json_config_int_text(safetensors_metadata(st, "nc"), "metadata \"nc\"", 1, YOLO_MAX_NC, &nc, st->path, err) != 0 ||
        json_config_int_text(safetensors_metadata(st, "reg_max"), "metadata \"reg_max\"", 2, YOLO_MAX_REG_MAX, &reg_max,
                             st->path, err) != 0)
        return -1;
    double eps;
    if (meta_number(st, "bn_eps", &eps) == 1 && fabs(eps - YOLO_BN_EPS) > 1e-9)
        return set_error(err, "%s: bn_eps %g, yolo.c folds BatchNorm with ultralytics' 1e-3", st->path, eps);
    const char* scale = safetensors_metadata(st, "scale");
    int rc = yolo_config_from_scale(cfg, scale, depth, width, (int)maxc, (int)nc, (int)reg_max, err);
    if (rc != 0) {
        char inner[ERR_MAX];
        snprintf(inner, sizeof(inner), "%s", err);
        return set_error(err, "%s: %s", st->path, inner);
    }
    return 0;
}

// Class names: metadata "names" (a JSON list), else COCO's for an 80-class model, else "0", "1", ...
// as ultralytics names an unnamed model. One allocation: nc pointers, then the strings.
static int read_names(Yolo* y, const SafeTensors* st, char* err) {
    int nc = y->cfg.nc;
    y->names = xcalloc(1, sizeof(char*) * nc + (size_t)nc * YOLO_NAME_MAX);
    char* text = (char*)(y->names + nc);
    for (int i = 0; i < nc; i++) y->names[i] = text + (size_t)i * YOLO_NAME_MAX;
    const char* json = safetensors_metadata(st, "names");
    if (!json) {
        for (int i = 0; i < nc; i++) {
            if (nc == YOLO_COCO_CLASSES) snprintf(y->names[i], YOLO_NAME_MAX, "%s", COCO[i]);
            else snprintf(y->names[i], YOLO_NAME_MAX, "%d", i); // DetectionModel: {i: f"{i}" for i in range(nc)}
        }
        return 0;
    }
    JsonDoc doc;
    char jerr[ERR_MAX];
    if (json_parse(&doc, json, strlen(json), jerr) != 0) return set_error(err, "%s: metadata 'names': %s", st->path, jerr);
    int rc = 0;
    if (doc.root.type != JSON_ARRAY || (int)doc.root.length != nc) {
        rc = set_error(err, "%s: metadata 'names' must be a list of %d strings", st->path, nc);
    } else {
        for (int i = 0; i < nc && rc == 0; i++) {
            const JsonValue* v = &doc.root.items[i];
            if (v->type != JSON_STRING || v->length >= YOLO_NAME_MAX)
                rc = set_error(err, "%s: metadata 'names'[%d] is not a string of under %d bytes", st->path, i, YOLO_NAME_MAX);
            else snprintf(y->names[i], YOLO_NAME_MAX, "%s", v->string);
        }
    }
    json_free(&doc);
    return rc;
}

int yolo_load(Yolo* y, const char* path, char* err) {
    memset(y, 0, sizeof(*y));
    SafeTensors st;
    if (safetensors_open(&st, path, err) != 0) return -1;
    int rc = read_config(&y->cfg, &st, err);
    if (rc == 0) rc = read_names(y, &st, err);
    if (rc == 0) {
        y->backend = backend_current();
        weights_init(&y->weights, "yolo", DT_F32);
        yolo_build(y, &y->weights); // pass 1: names and shapes
        rc = check_params(&y->weights, &st, err);
    }
    if (rc == 0) {
        weights_allocate(&y->weights);
        yolo_build(y, &y->weights); // pass 2: pointers
        weights_finish(&y->weights);
        rc = load_params(y, &st, err);
    }
    safetensors_close(&st);
    if (rc != 0) yolo_free(y);
    return rc;
}

void yolo_free(Yolo* y) {
    weights_free(&y->weights);
    free(y->names);
    memset(y, 0, sizeof(*y));
}

// ----------------------------------------------------------------------------
// cv2.resize(src, (dw, dh), interpolation=cv2.INTER_LINEAR) on 8-bit images, OpenCV 5.0
// (imgproc/src/resize.cpp: resizeGeneric_ with HResizeLinear<uchar, int, short, 2048> and
// VResizeLinear<uchar, int, short, FixedPtCast<int, uchar, 22>, VResizeLinearVec_32s8u>).
//
// Source position of output pixel d: f = (float)((d + 0.5) * scale - 0.5), scale = 1 / (dst / src) in
// double; s = floor(f), the weights 1 - (f - s) and f - s become 11-bit integers (INTER_RESIZE_COEF_BITS,
// cvRound: nearest, ties to even). Horizontally, columns that would read outside the image take the edge
// pixel times 2048; rows outside the image are clamped to the edge (their weights are kept).
// The horizontal pass is exact integer arithmetic. The vertical pass is OpenCV's SIMD one, whose
// arithmetic differs from its scalar formula (val*b0 + val*b1 + 2^21) >> 22:
//   (((h0 >> 4) * b0) >> 16) + (((h1 >> 4) * b1) >> 16), then (x + 2) >> 2, saturated to 0..255.
// OpenCV 5.0 applies it to every pixel of a row (verified against cv2 5.0.0 on 3000 random sizes); OpenCV
// 4.x used the scalar formula on the last (row length mod 8) values of each row, which differ by at most 1.
static void cv_resize_linear_u8(const uint8_t* src, int sw, int sh, int cn, uint8_t* dst, int dw, int dh) {
    double scale_x = 1.0 / ((double)dw / sw), scale_y = 1.0 / ((double)dh / sh);
    int* xofs = xmalloc(sizeof(int) * dw);
    int* xa = xmalloc(sizeof(int) * 2 * dw);
    uint8_t* edge = xmalloc(dw); // 1: the column takes one source pixel times 2048 (HResizeLinear's xmin/xmax)
    int xmin = 0, xmax = dw;
    for (int dx = 0; dx < dw; dx++) {
        float fx = (float)((dx + 0.5) * scale_x - 0.5);
        int sx = (int)floorf(fx);
        fx -= (float)sx;
        if (sx < 0) {
            xmin = dx + 1;
            fx = 0.0f;
            sx = 0;
        }
        if (sx + 1 >= sw) {
            if (dx < xmax) xmax = dx;
            if (sx >= sw - 1) {
                fx = 0.0f;
                sx = sw - 1;
            }
        }
        xofs[dx] = sx;
        xa[2 * dx] = (int)lrintf((1.0f - fx) * 2048.0f);
        xa[2 * dx + 1] = (int)lrintf(fx * 2048.0f);
    }
    for (int dx = 0; dx < dw; dx++) edge[dx] = dx < xmin || dx >= xmax;
    size_t row = (size_t)dw * cn;
    int* h0 = xmalloc(sizeof(int) * row);
    int* h1 = xmalloc(sizeof(int) * row);
    for (int dy = 0; dy < dh; dy++) {
        float fy = (float)((dy + 0.5) * scale_y - 0.5);
        int sy = (int)floorf(fy);
        fy -= (float)sy;
        int b0 = (int)lrintf((1.0f - fy) * 2048.0f), b1 = (int)lrintf(fy * 2048.0f);
        int r[2] = {sy < 0 ? 0 : sy >= sh ? sh - 1 : sy, sy + 1 < 0 ? 0 : sy + 1 >= sh ? sh - 1 : sy + 1};
        int* h[2] = {h0, h1};
        for (int k = 0; k < 2; k++) { // horizontal pass of the two source rows
            const uint8_t* s = src + (size_t)r[k] * sw * cn;
            for (int dx = 0; dx < dw; dx++) {
                const uint8_t* p = s + (size_t)xofs[dx] * cn;
                for (int c = 0; c < cn; c++) {
                    int v = edge[dx] ? p[c] * 2048 : p[c] * xa[2 * dx] + p[c + cn] * xa[2 * dx + 1];
                    h[k][(size_t)dx * cn + c] = v >> 4; // v_shr<4>, then v_pack to int16 (never saturates: v < 2^20)
                }
            }
        }
        uint8_t* d = dst + (size_t)dy * row;
        for (size_t x = 0; x < row; x++) {
            int v = ((h0[x] * b0) >> 16) + ((h1[x] * b1) >> 16); // v_mul_hi, v_add
            v = (v + 2) >> 2;                                      // v_rshr_pack_u<2>
            d[x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
    free(xofs);
    free(xa);
    free(edge);
    free(h0);
    free(h1);
}

static int image_new_u8(Image* img, int w, int h, int channels) {
    memset(img, 0, sizeof(*img));
    img->width = w;
    img->height = h;
    img->channels = channels;
    img->depth = 8;
    img->data = xmalloc((size_t)w * h * channels);
    return 0;
}

int yolo_resize_linear(const Image* src, int w, int h, Image* dst, char* err) {
    memset(dst, 0, sizeof(*dst));
    if (src->depth != 8 || src->channels < 1 || src->channels > 4 || src->width < 1 || src->height < 1)
        return set_error(err, "resize: expected an 8-bit image of 1 to 4 channels, got %d-bit, %d channels, %dx%d", src->depth,
                         src->channels, src->width, src->height);
    if (w < 1 || h < 1 || (size_t)w * h > IMAGE_MAX_PIXELS) return set_error(err, "resize: bad target size %dx%d", w, h);
    image_new_u8(dst, w, h, src->channels);
    cv_resize_linear_u8(src->data, src->width, src->height, src->channels, dst->data, w, h);
    return 0;
}

// ----------------------------------------------------------------------------
// LetterBox

void yolo_letterbox_params(int src_w, int src_h, int imgsz, int stride, int auto_rect, YoloLetterbox* lb) {
    memset(lb, 0, sizeof(*lb));
    lb->src_w = src_w;
    lb->src_h = src_h;
    // r = min(new_shape[0] / shape[0], new_shape[1] / shape[1]) in double; scaleup=True
    double r = fmin((double)imgsz / src_h, (double)imgsz / src_w);
    // new_unpad = max(round(w * r), 1), max(round(h * r), 1): Python's round, ties to even (rint)
    lb->new_w = (int)rint(src_w * r);
    lb->new_h = (int)rint(src_h * r);
    if (lb->new_w < 1) lb->new_w = 1;
    if (lb->new_h < 1) lb->new_h = 1;
    int dw = imgsz - lb->new_w, dh = imgsz - lb->new_h;
    if (auto_rect) { // minimum rectangle: pad only up to the next multiple of the stride
        dw %= stride;
        dh %= stride;
    }
    // dw /= 2; top, bottom = round(dh - 0.1), round(dh + 0.1): odd padding puts the extra row below
    double hw = dw / 2.0, hh = dh / 2.0;
    lb->top = (int)rint(hh - 0.1);
    lb->bottom = (int)rint(hh + 0.1);
    lb->left = (int)rint(hw - 0.1);
    lb->right = (int)rint(hw + 0.1);
    lb->out_w = lb->new_w + lb->left + lb->right;
    lb->out_h = lb->new_h + lb->top + lb->bottom;
}

int yolo_letterbox(const Image* rgb, int imgsz, int auto_rect, Image* out, YoloLetterbox* lb, char* err) {
    memset(out, 0, sizeof(*out));
    if (rgb->depth != 8 || rgb->channels != 3 || rgb->width < 1 || rgb->height < 1 || !rgb->data)
        return set_error(err, "yolo: expected an 8-bit RGB image, got %d-bit with %d channels, %dx%d", rgb->depth, rgb->channels,
                         rgb->width, rgb->height);
    if (imgsz < YOLO_STRIDE || imgsz % YOLO_STRIDE != 0 || imgsz > 8192)
        return set_error(err, "yolo: imgsz %d is not a multiple of %d in %d..8192", imgsz, YOLO_STRIDE, YOLO_STRIDE);
    yolo_letterbox_params(rgb->width, rgb->height, imgsz, YOLO_STRIDE, auto_rect, lb);
    Image resized;
    const Image* body = rgb;
    if (lb->new_w != rgb->width || lb->new_h != rgb->height) { // apply_image resizes only when the size changes
        if (yolo_resize_linear(rgb, lb->new_w, lb->new_h, &resized, err) != 0) return -1;
        body = &resized;
    }
    image_new_u8(out, lb->out_w, lb->out_h, 3);
    uint8_t* o = out->data;
    memset(o, YOLO_PAD_VALUE, (size_t)lb->out_w * lb->out_h * 3); // cv2.copyMakeBorder BORDER_CONSTANT (114, 114, 114)
    const uint8_t* b = body->data;
    for (int yy = 0; yy < lb->new_h; yy++)
        memcpy(o + ((size_t)(yy + lb->top) * lb->out_w + lb->left) * 3, b + (size_t)yy * lb->new_w * 3, (size_t)lb->new_w * 3);
    if (body == &resized) image_free(&resized);
    return 0;
}

// ----------------------------------------------------------------------------
// Forward. Every block takes its input and writes its output in tensors the caller owns, and takes
// its temporaries from the arena above a mark it releases on return. The matching *_bytes functions
// count the same allocations, so yolo_arena_bytes is the exact high-water mark.

static size_t floats_bytes(size_t n) { return (n * sizeof(float) + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN; }
static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

// the im2col scratch layers.c's conv2d takes for this conv at an H x W input
static size_t conv_scratch_bytes(const Conv2d* c, int H, int W) {
    size_t n = conv2d_scratch_elems(c->in, H, W, c->k, c->stride, c->pad);
    return n ? floats_bytes(n) : 0;
}

// Conv: silu(conv(x)) with the folded BatchNorm. inp (C_in, H, W) -> out (C_out, H_out, W_out)
static void conv_forward(const YoloConv* c, float* out, const float* inp, int H, int W, Arena* a) {
    conv2d(&c->conv, out, inp, 1, H, W, a);
    silu_forward(out, out, (size_t)c->conv.out * conv2d_out_size(&c->conv, H) * conv2d_out_size(&c->conv, W), DT_F32);
}

// C2f: inp (c1, H, W) -> out (c2, H, W). cat ((2 + n)c, H, W) holds y0 | y1 | m0(y1) | m1(..) | ...
static void c2f_forward(const YoloC2f* b, float* out, const float* inp, int H, int W, Arena* a) {
    size_t mark = arena_mark(a), HW = (size_t)H * W, cHW = (size_t)b->c * HW;
    float* cat = arena_floats(a, (size_t)(2 + b->n) * cHW, "yolo c2f concat");
    float* hidden = arena_floats(a, cHW, "yolo bottleneck hidden");
    // cv1(x).chunk(2, 1): its two halves are cat's first two c-channel blocks already
    conv_forward(&b->cv1, cat, inp, H, W, a);
    for (int j = 0; j < b->n; j++) {
        const float* x = cat + (size_t)(1 + j) * cHW; // y[-1]
        float* y = cat + (size_t)(2 + j) * cHW;       // the Bottleneck's output, appended
        conv_forward(&b->m[j].cv1, hidden, x, H, W, a);
        conv_forward(&b->m[j].cv2, y, hidden, H, W, a);
        if (b->shortcut) add_forward(y, x, y, cHW, DT_F32); // x + cv2(cv1(x)) (Bottleneck.add: shortcut and c1 == c2)
    }
    conv_forward(&b->cv2, out, cat, H, W, a);
    arena_release(a, mark);
}

static size_t c2f_bytes(const YoloC2f* b, int H, int W) {
    size_t HW = (size_t)H * W, s = 0;
    s = max_size(s, conv_scratch_bytes(&b->cv1.conv, H, W));
    s = max_size(s, conv_scratch_bytes(&b->cv2.conv, H, W));
    for (int j = 0; j < b->n; j++) {
        s = max_size(s, conv_scratch_bytes(&b->m[j].cv1.conv, H, W));
        s = max_size(s, conv_scratch_bytes(&b->m[j].cv2.conv, H, W));
    }
    return floats_bytes((size_t)(2 + b->n) * b->c * HW) + floats_bytes((size_t)b->c * HW) + s;
}

// SPPF: inp (c1, H, W) -> out (c2, H, W). cat (4 c_, H, W) = cv1(x) | m(.) | m(m(.)) | m(m(m(.)))
static void sppf_forward(const YoloSPPF* b, float* out, const float* inp, int H, int W, Arena* a) {
    size_t mark = arena_mark(a), blk = (size_t)b->hidden * H * W;
    float* cat = arena_floats(a, 4 * blk, "yolo sppf concat");
    conv_forward(&b->cv1, cat, inp, H, W, a);
    for (int k = 0; k < 3; k++) // nn.MaxPool2d(5, stride=1, padding=2), padding counts as -inf
        maxpool2d_forward(cat + (k + 1) * blk, cat + k * blk, 1, b->hidden, H, W, YOLO_SPPF_K, 1, YOLO_SPPF_K / 2, DT_F32);
    conv_forward(&b->cv2, out, cat, H, W, a);
    arena_release(a, mark);
}

static size_t sppf_bytes(const YoloSPPF* b, int H, int W) {
    return floats_bytes(4 * (size_t)b->hidden * H * W) +
           max_size(conv_scratch_bytes(&b->cv1.conv, H, W), conv_scratch_bytes(&b->cv2.conv, H, W));
}

// Detect, one level: x (ch, h, w) -> columns [col, col + h*w) of out (4 + nc, A), host memory.
static void detect_level(const Yolo* y, int l, const float* x, int h, int w, float* out, int A, int col, Arena* a) {
    const YoloDetect* d = &y->detect;
    int nc = y->cfg.nc, R = y->cfg.reg_max;
    size_t mark = arena_mark(a), hw = (size_t)h * w;
    size_t wide = (size_t)(y->cfg.box_hidden > y->cfg.cls_hidden ? y->cfg.box_hidden : y->cfg.cls_hidden);
    float* t1 = arena_floats(a, wide * hw, "yolo detect hidden");
    float* t2 = arena_floats(a, wide * hw, "yolo detect hidden");
    float* box = arena_floats(a, 4 * (size_t)R * hw, "yolo box logits");  // (4R, hw)
    float* bins = arena_floats(a, 4 * (size_t)R * hw, "yolo dfl bins");   // (4, hw, R)
    float* dist = arena_floats(a, 4 * hw, "yolo dfl distances");          // (4, hw)
    float* cls = arena_floats(a, (size_t)nc * hw, "yolo class scores");   // (nc, hw)
    // box branch, then DFL: x.view(4, R, hw).transpose -> softmax over each side's R bins -> sum_k k p_k
    conv_forward(&d->box[l][0], t1, x, h, w, a);
    conv_forward(&d->box[l][1], t2, t1, h, w, a);
    conv2d(&d->box_out[l], box, t2, 1, h, w, a);
    transpose_forward(bins, box, 4, R, (int)hw, DT_F32);            // (4, R, hw) -> (4, hw, R)
    softmax_forward(bins, bins, 4 * (int)hw, R, DT_F32);
    linear_forward(dist, bins, d->dfl, NULL, 4 * (int)hw, R, 1, 0, DT_F32); // the DFL conv: weights 0 .. R-1
    // class branch: sigmoid(logits)
    conv_forward(&d->cls[l][0], t1, x, h, w, a);
    conv_forward(&d->cls[l][1], t2, t1, h, w, a);
    conv2d(&d->cls_out[l], cls, t2, 1, h, w, a);
    sigmoid_forward(cls, cls, (size_t)nc * hw, DT_F32);
    for (int c = 0; c < nc; c++) copy_to_host(out + (size_t)(4 + c) * A + col, cls + (size_t)c * hw, sizeof(float) * hw);
    float* lt = xmalloc(sizeof(float) * 4 * hw);
    copy_to_host(lt, dist, sizeof(float) * 4 * hw);
    arena_release(a, mark);
    // make_anchors (cell centres, grid units), dist2bbox(xywh=True), times the stride; f32 as torch
    float stride = LEVEL_STRIDE[l];
    for (int i = 0; i < h; i++) {
        for (int j = 0; j < w; j++) {
            size_t k = (size_t)i * w + j;
            float ax = (float)j + 0.5f, ay = (float)i + 0.5f;
            float x1 = ax - lt[k], y1 = ay - lt[hw + k];         // anchor - lt
            float x2 = ax + lt[2 * hw + k], y2 = ay + lt[3 * hw + k]; // anchor + rb
            size_t o = (size_t)col + k;
            out[o] = (x1 + x2) / 2.0f * stride;
            out[(size_t)A + o] = (y1 + y2) / 2.0f * stride;
            out[2 * (size_t)A + o] = (x2 - x1) * stride;
            out[3 * (size_t)A + o] = (y2 - y1) * stride;
        }
    }
    free(lt);
}

static size_t detect_level_bytes(const Yolo* y, int l, int h, int w) {
    const YoloDetect* d = &y->detect;
    size_t hw = (size_t)h * w, R = (size_t)y->cfg.reg_max;
    size_t wide = (size_t)(y->cfg.box_hidden > y->cfg.cls_hidden ? y->cfg.box_hidden : y->cfg.cls_hidden);
    size_t s = 0;
    for (int k = 0; k < 2; k++) {
        s = max_size(s, conv_scratch_bytes(&d->box[l][k].conv, h, w));
        s = max_size(s, conv_scratch_bytes(&d->cls[l][k].conv, h, w));
    }
    s = max_size(s, conv_scratch_bytes(&d->box_out[l], h, w));
    s = max_size(s, conv_scratch_bytes(&d->cls_out[l], h, w));
    return 2 * floats_bytes(wide * hw) + 2 * floats_bytes(4 * R * hw) + floats_bytes(4 * hw) +
           floats_bytes((size_t)y->cfg.nc * hw) + s;
}

int yolo_anchor_count(int H, int W) { return (H / 8) * (W / 8) + (H / 16) * (W / 16) + (H / 32) * (W / 32); }

// Sizes of layer i's output for an H x W input: (out[i], H >> shift[i], W >> shift[i]).
static const int LAYER_SHIFT[YOLO_LAYERS] = {1, 2, 2, 3, 3, 4, 4, 5, 5, 5, 4, 4, 4, 3, 3, 3, 4, 4, 4, 5, 5, 5, 0};
// Outputs kept for a later Concat or the Detect head; the others live in two ping-pong buffers.
static const int SAVED[] = {4, 6, 9, 12, 15, 18, 21};
#define N_SAVED 7

static size_t layer_floats(const Yolo* y, int i, int H, int W) {
    return (size_t)y->cfg.out[i] * (H >> LAYER_SHIFT[i]) * (W >> LAYER_SHIFT[i]);
}
static int is_saved(int i) {
    for (int k = 0; k < N_SAVED; k++)
        if (SAVED[k] == i) return 1;
    return 0;
}
// the largest output that is not saved: the size of each ping-pong buffer
static size_t pingpong_floats(const Yolo* y, int H, int W) {
    size_t m = 0;
    for (int i = 0; i < YOLO_LAYERS - 1; i++)
        if (!is_saved(i)) m = max_size(m, layer_floats(y, i, H, W));
    return m;
}

size_t yolo_arena_bytes(const Yolo* y, int H, int W) {
    size_t total = 0, scratch = 0;
    for (int k = 0; k < N_SAVED; k++) total += floats_bytes(layer_floats(y, SAVED[k], H, W));
    total += 2 * floats_bytes(pingpong_floats(y, H, W));
    for (int i = 0; i < YOLO_LAYERS; i++) {
        int s = i == 0 ? 0 : LAYER_SHIFT[i - 1], h = H >> s, w = W >> s; // the layer's input: the previous output
        if (YAML[i].kind == LAYER_CONV) scratch = max_size(scratch, conv_scratch_bytes(&y->conv[i].conv, h, w));
        if (YAML[i].kind == LAYER_C2F) scratch = max_size(scratch, c2f_bytes(&y->c2f[i], h, w));
        if (YAML[i].kind == LAYER_SPPF) scratch = max_size(scratch, sppf_bytes(&y->sppf, h, w));
    }
    for (int l = 0; l < YOLO_LEVELS; l++) {
        int s = LAYER_SHIFT[DETECT_FROM[l]];
        scratch = max_size(scratch, detect_level_bytes(y, l, H >> s, W >> s));
    }
    return total + scratch;
}

void yolo_forward(const Yolo* y, const float* inp, int H, int W, float* out, Arena* a) {
    if (H % YOLO_STRIDE || W % YOLO_STRIDE || H < YOLO_STRIDE || W < YOLO_STRIDE)
        fatal("yolo_forward: input %dx%d is not a multiple of %d", W, H, YOLO_STRIDE);
    if (backend_current() != y->backend) fatal("yolo_forward: the weights live on %s, the current backend is %s",
                                               backend_name(y->backend), backend_name(backend_current()));
    size_t mark = arena_mark(a);
    float* x[YOLO_LAYERS] = {0}; // each layer's output
    for (int k = 0; k < N_SAVED; k++) x[SAVED[k]] = arena_floats(a, layer_floats(y, SAVED[k], H, W), "yolo saved output");
    size_t pp = pingpong_floats(y, H, W);
    float* buf[2] = {arena_floats(a, pp, "yolo ping"), arena_floats(a, pp, "yolo pong")};
    int next = 0;
    const float* prev = inp; // (3, H, W)
    int h = H, w = W;
    for (int i = 0; i < YOLO_LAYERS - 1; i++) {
        if (!x[i]) { // not saved: the ping-pong buffer that does not hold the input
            x[i] = buf[next];
            next ^= 1;
        }
        const YamlRow* r = &YAML[i];
        int oh = H >> LAYER_SHIFT[i], ow = W >> LAYER_SHIFT[i];
        switch (r->kind) {
        case LAYER_CONV: conv_forward(&y->conv[i], x[i], prev, h, w, a); break;
        case LAYER_C2F: c2f_forward(&y->c2f[i], x[i], prev, h, w, a); break;
        case LAYER_SPPF: sppf_forward(&y->sppf, x[i], prev, h, w, a); break;
        case LAYER_UPSAMPLE: upsample_nearest_forward(x[i], prev, 1, y->cfg.out[i], h, w, oh, ow, DT_F32); break;
        case LAYER_CONCAT: // torch.cat([x[-1], x[cat_with]], 1): for one image, a concatenation of two blocks
            concat_forward(x[i], prev, x[r->cat_with], 1, (int)layer_floats(y, i - 1, H, W), (int)layer_floats(y, r->cat_with, H, W), DT_F32);
            break;
        case LAYER_DETECT: break;
        }
        prev = x[i];
        h = oh;
        w = ow;
    }
    int A = yolo_anchor_count(H, W), col = 0;
    for (int l = 0; l < YOLO_LEVELS; l++) {
        int s = LAYER_SHIFT[DETECT_FROM[l]];
        detect_level(y, l, x[DETECT_FROM[l]], H >> s, W >> s, out, A, col, a);
        col += (H >> s) * (W >> s);
    }
    arena_release(a, mark);
}

// ----------------------------------------------------------------------------
// NMS and boxes

void yolo_options_default(YoloOptions* opt) {
    opt->imgsz = 640;
    opt->auto_rect = 1;
    opt->conf = 0.25;
    opt->iou = 0.7;
    opt->max_det = 300;
    opt->agnostic = 0;
}

typedef struct {
    float box[4];  // xyxy
    float score;
    int cls, anchor;
} Candidate;

// Descending score; equal scores keep their order (a stable sort, as torchvision's CPU nms sorts).
static int by_score_desc(const void* pa, const void* pb) {
    const Candidate *a = pa, *b = pb;
    if (a->score != b->score) return a->score < b->score ? 1 : -1;
    return a->anchor - b->anchor; // candidates are built in anchor order, so this is the stable order
}

int yolo_nms(const float* pred, int nc, int A, const YoloOptions* opt, YoloDetection* out, int max_out) {
    float conf = (float)opt->conf; // `score > conf_thres` on an f32 tensor compares in f32
    Candidate* cand = xmalloc(sizeof(Candidate) * (A ? A : 1));
    int n = 0;
    for (int i = 0; i < A; i++) {
        // best class only (multi_label False): conf, j = cls.max(1); the first maximum wins a tie
        int best = 0;
        float s = pred[(size_t)4 * A + i];
        for (int c = 1; c < nc; c++) {
            float v = pred[(size_t)(4 + c) * A + i];
            if (v > s) {
                s = v;
                best = c;
            }
        }
        if (!(s > conf)) continue;
        // xywh2xyxy: wh = x[..., 2:] / 2; x1y1 = xy - wh; x2y2 = xy + wh
        float cx = pred[i], cy = pred[(size_t)A + i], hw = pred[2 * (size_t)A + i] / 2, hh = pred[3 * (size_t)A + i] / 2;
        Candidate* k = &cand[n++];
        k->box[0] = cx - hw;
        k->box[1] = cy - hh;
        k->box[2] = cx + hw;
        k->box[3] = cy + hh;
        k->score = s;
        k->cls = best;
        k->anchor = i;
    }
    qsort(cand, n, sizeof(Candidate), by_score_desc); // torchvision.ops.nms sorts too; same order
    if (n > YOLO_MAX_NMS) n = YOLO_MAX_NMS;           // x[:, 4].argsort(descending=True)[:max_nms]
    // class offset: boxes = x[:, :4] + cls * max_wh (in f32: IoUs are computed on the offset boxes)
    float (*b)[4] = xmalloc(sizeof(float[4]) * (n ? n : 1));
    float* area = xmalloc(sizeof(float) * (n ? n : 1));
    unsigned char* gone = xcalloc(n ? n : 1, 1);
    for (int i = 0; i < n; i++) {
        float off = (float)cand[i].cls * (float)(opt->agnostic ? 0 : YOLO_MAX_WH);
        for (int k = 0; k < 4; k++) b[i][k] = cand[i].box[k] + off;
        area[i] = (b[i][2] - b[i][0]) * (b[i][3] - b[i][1]);
    }
    // torchvision nms_kernel (CPU): greedy in score order; suppress j when IoU(i, j) > iou_threshold,
    // the IoU in f32 and the comparison against the threshold as a double
    int kept = 0, limit = opt->max_det < max_out ? opt->max_det : max_out;
    for (int i = 0; i < n && kept < limit; i++) {
        if (gone[i]) continue;
        YoloDetection* d = &out[kept++];
        d->x1 = cand[i].box[0];
        d->y1 = cand[i].box[1];
        d->x2 = cand[i].box[2];
        d->y2 = cand[i].box[3];
        d->conf = cand[i].score;
        d->cls = cand[i].cls;
        d->anchor = cand[i].anchor;
        for (int j = i + 1; j < n; j++) {
            if (gone[j]) continue;
            float xx1 = fmaxf(b[i][0], b[j][0]), yy1 = fmaxf(b[i][1], b[j][1]);
            float xx2 = fminf(b[i][2], b[j][2]), yy2 = fminf(b[i][3], b[j][3]);
            float iw = fmaxf(0.0f, xx2 - xx1), ih = fmaxf(0.0f, yy2 - yy1);
            float inter = iw * ih;
            float ovr = inter / (area[i] + area[j] - inter);
            if ((double)ovr > opt->iou) gone[j] = 1;
        }
    }
    free(cand);
    free(b);
    free(area);
    free(gone);
    return kept;
}

void yolo_scale_boxes(YoloDetection* d, int n, const YoloLetterbox* lb) {
    // ops.scale_boxes(img1_shape, boxes, img0_shape): gain = min(h1 / h0, w1 / w0), then the rounded
    // LetterBox sizes give one gain per axis and the padding that was added before each side
    double h0 = lb->src_h, w0 = lb->src_w, h1 = lb->out_h, w1 = lb->out_w;
    double gain = fmin(h1 / h0, w1 / w0);
    double new_h = rint(h0 * gain), new_w = rint(w0 * gain);
    if (new_h < 1) new_h = 1;
    if (new_w < 1) new_w = 1;
    float gain_y = (float)(new_h / h0), gain_x = (float)(new_w / w0); // f32 tensor / Python float: f32 arithmetic
    float pad_x = (float)rint((w1 - new_w) / 2 - 0.1), pad_y = (float)rint((h1 - new_h) / 2 - 0.1);
    float W = (float)lb->src_w, H = (float)lb->src_h;
    for (int i = 0; i < n; i++) {
        float v[4] = {(d[i].x1 - pad_x) / gain_x, (d[i].y1 - pad_y) / gain_y, (d[i].x2 - pad_x) / gain_x, (d[i].y2 - pad_y) / gain_y};
        // clip_boxes: clamp x to [0, w], y to [0, h]
        d[i].x1 = fminf(fmaxf(v[0], 0.0f), W);
        d[i].y1 = fminf(fmaxf(v[1], 0.0f), H);
        d[i].x2 = fminf(fmaxf(v[2], 0.0f), W);
        d[i].y2 = fminf(fmaxf(v[3], 0.0f), H);
    }
}

void yolo_input_from_letterbox(const Image* boxed, float* chw) {
    size_t HW = (size_t)boxed->width * boxed->height;
    const uint8_t* px = boxed->data;
    for (size_t p = 0; p < HW; p++)
        for (int ch = 0; ch < 3; ch++) chw[ch * HW + p] = (float)px[p * 3 + ch] / 255.0f;
}

int yolo_detect(const Yolo* y, const Image* rgb, YoloDetection* out, int max, const YoloOptions* opt, char* err) {
    YoloOptions def;
    if (!opt) {
        yolo_options_default(&def);
        opt = &def;
    }
    if (!(opt->conf >= 0 && opt->conf <= 1) || !(opt->iou >= 0 && opt->iou <= 1) || opt->max_det < 0)
        return set_error(err, "yolo: conf %g and iou %g must lie in [0, 1], max_det %d must be >= 0", opt->conf, opt->iou, opt->max_det);
    if (backend_current() != y->backend)
        return set_error(err, "yolo: the weights live on %s, the current backend is %s", backend_name(y->backend),
                         backend_name(backend_current()));
    YoloLetterbox lb;
    Image boxed;
    if (yolo_letterbox(rgb, opt->imgsz, opt->auto_rect, &boxed, &lb, err) != 0) return -1;
    int H = lb.out_h, W = lb.out_w, A = yolo_anchor_count(H, W);
    if (H % YOLO_STRIDE || W % YOLO_STRIDE) { // only a square imgsz that is not a stride multiple gets here
        image_free(&boxed);
        return set_error(err, "yolo: letterboxed input %dx%d is not a multiple of %d", W, H, YOLO_STRIDE);
    }
    size_t HW = (size_t)H * W;
    float* chw = xmalloc(sizeof(float) * 3 * HW);
    yolo_input_from_letterbox(&boxed, chw);
    image_free(&boxed);
    Arena act;
    arena_init(&act, "yolo activations", floats_bytes(3 * HW) + yolo_arena_bytes(y, H, W), backend_current() == BACKEND_CUDA);
    float* inp = arena_floats(&act, 3 * HW, "yolo input");
    copy_to_device(inp, chw, sizeof(float) * 3 * HW);
    free(chw);
    float* pred = xmalloc(sizeof(float) * (size_t)(4 + y->cfg.nc) * A);
    yolo_forward(y, inp, H, W, pred, &act);
    arena_free(&act);
    int n = yolo_nms(pred, y->cfg.nc, A, opt, out, max);
    free(pred);
    yolo_scale_boxes(out, n, &lb);
    return n;
}

// ----------------------------------------------------------------------------
// COCO names and the words that name them

static const char* const COCO[YOLO_COCO_CLASSES] = {
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
};

const char* yolo_coco_name(int cls) { return cls >= 0 && cls < YOLO_COCO_CLASSES ? COCO[cls] : NULL; }

// Phrases (lower case, words separated by one space) and the COCO class each names: every class name,
// its plural, and the plain synonyms a prompt is likely to use. Deliberately left out, because in
// prompts they are more often something else: "orange" (a colour; "oranges" is kept), "mouse" (the
// animal; "computer mouse" is kept), "remote" (the adjective; "remote control" is kept), "plant" and
// "glass" (too broad for "potted plant" and "wine glass"), "ski" (skis are a pair). "table" is taken
// as COCO's dining table, the only table class.
typedef struct {
    const char* phrase;
    int cls;
} Phrase;

static const Phrase PHRASES[] = {
    {"person", 0}, {"persons", 0}, {"people", 0}, {"man", 0}, {"men", 0}, {"woman", 0}, {"women", 0},
    {"child", 0}, {"children", 0}, {"boy", 0}, {"boys", 0}, {"girl", 0}, {"girls", 0}, {"kid", 0}, {"kids", 0},
    {"guy", 0}, {"guys", 0}, {"lady", 0}, {"ladies", 0},
    {"bicycle", 1}, {"bicycles", 1}, {"bike", 1}, {"bikes", 1},
    {"car", 2}, {"cars", 2},
    {"motorcycle", 3}, {"motorcycles", 3}, {"motorbike", 3}, {"motorbikes", 3},
    {"airplane", 4}, {"airplanes", 4}, {"plane", 4}, {"planes", 4}, {"aeroplane", 4}, {"aeroplanes", 4},
    {"bus", 5}, {"buses", 5},
    {"train", 6}, {"trains", 6},
    {"truck", 7}, {"trucks", 7},
    {"boat", 8}, {"boats", 8},
    {"traffic light", 9}, {"traffic lights", 9},
    {"fire hydrant", 10}, {"fire hydrants", 10}, {"hydrant", 10}, {"hydrants", 10},
    {"stop sign", 11}, {"stop signs", 11},
    {"parking meter", 12}, {"parking meters", 12},
    {"bench", 13}, {"benches", 13},
    {"bird", 14}, {"birds", 14},
    {"cat", 15}, {"cats", 15},
    {"dog", 16}, {"dogs", 16},
    {"horse", 17}, {"horses", 17},
    {"sheep", 18},
    {"cow", 19}, {"cows", 19},
    {"elephant", 20}, {"elephants", 20},
    {"bear", 21}, {"bears", 21},
    {"zebra", 22}, {"zebras", 22},
    {"giraffe", 23}, {"giraffes", 23},
    {"backpack", 24}, {"backpacks", 24},
    {"umbrella", 25}, {"umbrellas", 25},
    {"handbag", 26}, {"handbags", 26},
    {"tie", 27}, {"ties", 27}, {"necktie", 27}, {"neckties", 27},
    {"suitcase", 28}, {"suitcases", 28},
    {"frisbee", 29}, {"frisbees", 29},
    {"skis", 30},
    {"snowboard", 31}, {"snowboards", 31},
    {"sports ball", 32}, {"sports balls", 32}, {"ball", 32}, {"balls", 32},
    {"kite", 33}, {"kites", 33},
    {"baseball bat", 34}, {"baseball bats", 34},
    {"baseball glove", 35}, {"baseball gloves", 35},
    {"skateboard", 36}, {"skateboards", 36},
    {"surfboard", 37}, {"surfboards", 37},
    {"tennis racket", 38}, {"tennis rackets", 38}, {"tennis racquet", 38}, {"tennis racquets", 38},
    {"bottle", 39}, {"bottles", 39},
    {"wine glass", 40}, {"wine glasses", 40},
    {"cup", 41}, {"cups", 41},
    {"fork", 42}, {"forks", 42},
    {"knife", 43}, {"knives", 43},
    {"spoon", 44}, {"spoons", 44},
    {"bowl", 45}, {"bowls", 45},
    {"banana", 46}, {"bananas", 46},
    {"apple", 47}, {"apples", 47},
    {"sandwich", 48}, {"sandwiches", 48},
    {"oranges", 49},
    {"broccoli", 50},
    {"carrot", 51}, {"carrots", 51},
    {"hot dog", 52}, {"hot dogs", 52},
    {"pizza", 53}, {"pizzas", 53},
    {"donut", 54}, {"donuts", 54}, {"doughnut", 54}, {"doughnuts", 54},
    {"cake", 55}, {"cakes", 55},
    {"chair", 56}, {"chairs", 56},
    {"couch", 57}, {"couches", 57}, {"sofa", 57}, {"sofas", 57}, {"settee", 57}, {"settees", 57},
    {"potted plant", 58}, {"potted plants", 58}, {"houseplant", 58}, {"houseplants", 58},
    {"bed", 59}, {"beds", 59},
    {"dining table", 60}, {"dining tables", 60}, {"table", 60}, {"tables", 60},
    {"toilet", 61}, {"toilets", 61},
    {"tv", 62}, {"tvs", 62}, {"television", 62}, {"televisions", 62},
    {"laptop", 63}, {"laptops", 63},
    {"computer mouse", 64},
    {"remote control", 65}, {"remote controls", 65},
    {"keyboard", 66}, {"keyboards", 66},
    {"cell phone", 67}, {"cell phones", 67}, {"cellphone", 67}, {"cellphones", 67}, {"mobile phone", 67},
    {"mobile phones", 67}, {"phone", 67}, {"phones", 67}, {"smartphone", 67}, {"smartphones", 67},
    {"microwave", 68}, {"microwaves", 68},
    {"oven", 69}, {"ovens", 69},
    {"toaster", 70}, {"toasters", 70},
    {"sink", 71}, {"sinks", 71},
    {"refrigerator", 72}, {"refrigerators", 72}, {"fridge", 72}, {"fridges", 72},
    {"book", 73}, {"books", 73},
    {"clock", 74}, {"clocks", 74},
    {"vase", 75}, {"vases", 75},
    {"scissors", 76},
    {"teddy bear", 77}, {"teddy bears", 77}, {"teddy", 77}, {"teddies", 77},
    {"hair drier", 78}, {"hair driers", 78}, {"hair dryer", 78}, {"hair dryers", 78}, {"hairdryer", 78},
    {"hairdryers", 78},
    {"toothbrush", 79}, {"toothbrushes", 79},
};
#define N_PHRASES ((int)(sizeof(PHRASES) / sizeof(PHRASES[0])))
#define PHRASE_MAX_WORDS 2 // the longest entry above has two words
#define WORD_MAX 32        // longer words name nothing in the table

int yolo_prompt_objects(const char* prompt, YoloObject* out, int max) {
    // words: maximal runs of ASCII letters, lower-cased; everything else separates them
    int cap = 16, n_words = 0;
    char(*words)[WORD_MAX] = xmalloc(sizeof(*words) * cap);
    for (const char* p = prompt; *p;) {
        if (!isalpha((unsigned char)*p) || (unsigned char)*p >= 0x80) {
            p++;
            continue;
        }
        if (n_words == cap) {
            cap *= 2;
            words = xrealloc(words, sizeof(*words) * cap);
        }
        int len = 0;
        for (; *p && (unsigned char)*p < 0x80 && isalpha((unsigned char)*p); p++)
            if (len < WORD_MAX - 1) words[n_words][len++] = (char)tolower((unsigned char)*p);
        words[n_words][len] = '\0';
        if (len == WORD_MAX - 1) words[n_words][0] = '\0'; // too long to be in the table
        n_words++;
    }
    int count = 0;
    char phrase[PHRASE_MAX_WORDS * WORD_MAX];
    for (int i = 0; i < n_words;) {
        int matched = 0;
        for (int k = PHRASE_MAX_WORDS; k >= 1 && !matched; k--) { // longest phrase first
            if (i + k > n_words) continue;
            phrase[0] = '\0';
            for (int j = 0; j < k; j++) {
                if (j) strcat(phrase, " ");
                strcat(phrase, words[i + j]);
            }
            for (int t = 0; t < N_PHRASES && !matched; t++) {
                if (strcmp(phrase, PHRASES[t].phrase) != 0) continue;
                matched = k;
                int seen = 0;
                for (int o = 0; o < count; o++) seen |= out[o].cls == PHRASES[t].cls;
                if (!seen && count < max) {
                    YoloObject* o = &out[count++];
                    memset(o, 0, sizeof(*o));
                    o->cls = PHRASES[t].cls;
                    // phrase is one of PHRASES, all shorter than word; cut to it in any case
                    snprintf(o->word, sizeof(o->word), "%.*s", (int)sizeof(o->word) - 1, phrase);
                }
            }
        }
        i += matched ? matched : 1;
    }
    free(words);
    return count;
}

void yolo_object_presence(YoloObject* objs, int n_objs, const YoloDetection* dets, int n_dets, const char* const* names,
                          int nc) {
    for (int o = 0; o < n_objs; o++) {
        objs[o].found = 0;
        objs[o].best_conf = 0.0f;
        const char* want = yolo_coco_name(objs[o].cls);
        for (int i = 0; i < n_dets; i++) {
            int c = dets[i].cls;
            if (c < 0 || c >= nc || !want || strcmp(names[c], want) != 0) continue;
            objs[o].found = 1;
            if (dets[i].conf > objs[o].best_conf) objs[o].best_conf = dets[i].conf;
        }
    }
}
