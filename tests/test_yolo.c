// tests/test_yolo.c: yolo.c against ultralytics 8.4.190 and OpenCV 5.0 (tests/golden/yolo/, made by
// scripts/make_golden_yolo.py): the architecture tables of the released scales, cv2.resize, LetterBox,
// the tiny random-weight detector (head output and detections), prompt objects, loader errors, and
// CUDA against CPU.
//
// Tolerances, each beside its check:
//   exact     pixels (cv2.resize, LetterBox), class ids, anchors, detection counts, tensor names/shapes:
//             integer arithmetic or decisions with a clear margin (the golden script checks that moving
//             conf or iou a little changes no detection).
//   head      the raw head output in f32: the network sums in another order than PyTorch (our GEMM vs
//             oneDNN), ~1e-6 relative per layer over 30 layers of order-1 activations; the box rows are
//             pixels (up to ~1000), made of DFL expectations times the stride.
//   boxes     detections after scale_boxes, in pixels of the 1365x768 image.
//   TOL_CUDA  the same network on the GPU against our CPU: cuBLAS sums in yet another order and nvcc
//             contracts to FMA; TF32 is off, so f32-level agreement is expected.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common.h"
#include "../json.h"
#include "../ops.h"
#include "../png.h"
#include "../yolo.h"
#include "check.h"

#define WORK_DIR "build/test_yolo"
#define TINY "yolo/tiny.safetensors"
#define REF "yolo/ref.safetensors"

typedef struct {
    float atol, rtol;
} Tol;
// Box rows are pixels: (anchor -+ sum_k k p_k) * stride, so an f32 wobble of ~1e-5 in a box logit moves a
// side by up to reg_max * 1e-5 bins, i.e. ~5e-3 pixels at stride 32; seen: 1.8e-3 (cx near 0, where
// the two sides cancel). Scores are sigmoids in [0, 1]; seen: 8.8e-6.
static const Tol TOL_HEAD_BOX = {1e-2f, 1e-5f};
static const Tol TOL_SCORE = {1e-5f, 1e-4f};
// Detections after scale_boxes: the same box error times 1365/640; seen: 2.9e-3 pixels.
static const Tol TOL_BOXES = {2e-2f, 1e-5f};
static const Tol TOL_CUDA = {1e-4f, 1e-4f}; // scores; boxes get TOL_HEAD_BOX

// ----------------------------------------------------------------------------
// Helpers

// An integer golden tensor (I32) into a fresh array; NULL (and a failed check) when missing.
static int32_t* golden_i32(const SafeTensors* st, const char* name, size_t* count) {
    const SafeTensor* t = safetensors_find(st, name);
    if (!check_true(t && t->dtype == DT_I32, "golden has I32 tensor %s", name)) return NULL;
    size_t n = safetensor_numel(t);
    int32_t* v = xmalloc(sizeof(int32_t) * (n ? n : 1));
    memcpy(v, t->data, sizeof(int32_t) * n);
    if (count) *count = n;
    return v;
}

// A U8 golden image (H, W, C) as an Image.
static int golden_image_u8(const SafeTensors* st, const char* name, Image* img) {
    const SafeTensor* t = safetensors_find(st, name);
    memset(img, 0, sizeof(*img));
    if (!check_true(t && t->dtype == DT_U8 && t->rank == 3, "golden has U8 image %s", name)) return 0;
    img->height = (int)t->shape[0];
    img->width = (int)t->shape[1];
    img->channels = (int)t->shape[2];
    img->depth = 8;
    img->data = xmalloc(t->nbytes);
    memcpy(img->data, t->data, t->nbytes);
    return 1;
}

static int load_tiny(Yolo* y) {
    char err[ERR_MAX] = "";
    int rc = yolo_load(y, golden_path(TINY), err);
    return check_true(rc == 0, "load %s%s%s", TINY, rc ? ": " : "", rc ? err : "");
}

static int read_input(Image* img) {
    char err[ERR_MAX] = "";
    int rc = png_read(img, golden_path("yolo/input.png"), err);
    return check_true(rc == 0 && img->channels == 3 && img->depth == 8, "read yolo/input.png as 8-bit RGB%s%s", rc ? ": " : "",
                      rc ? err : "");
}

// Letterbox + /255 + the network on the current backend: the head output (4 + nc, A), host memory.
static float* run_head(const Yolo* y, const Image* rgb, int* H_out, int* W_out) {
    char err[ERR_MAX] = "";
    Image boxed;
    YoloLetterbox lb;
    if (!check_true(yolo_letterbox(rgb, 640, 1, &boxed, &lb, err) == 0, "letterbox: %s", err)) return NULL;
    int H = lb.out_h, W = lb.out_w, A = yolo_anchor_count(H, W);
    size_t HW = (size_t)H * W;
    float* chw = xmalloc(sizeof(float) * 3 * HW);
    yolo_input_from_letterbox(&boxed, chw);
    image_free(&boxed);
    Arena act;
    size_t need = yolo_arena_bytes(y, H, W);
    arena_init(&act, "yolo activations", need, backend_current() == BACKEND_CUDA);
    float* inp = to_backend(chw, 3 * HW);
    float* pred = xmalloc(sizeof(float) * (size_t)(4 + y->cfg.nc) * A);
    double t0 = now_seconds();
    yolo_forward(y, inp, H, W, pred, &act);
    device_synchronize();
    printf("  yolo forward %dx%d (%s): %.3f s\n", W, H, backend_name(backend_current()), now_seconds() - t0);
    check_true(act.high_water == need, "yolo_arena_bytes is the exact peak (%zu of %zu bytes)", act.high_water, need);
    arena_free(&act);
    free(chw);
    *H_out = H;
    *W_out = W;
    return pred;
}

// ----------------------------------------------------------------------------
// Architecture tables

typedef struct {
    const JsonValue* want; // [[name, [shape]], ...]
    size_t i;
    int wrong;
    double params; // parameters as ultralytics counts them: everything but BatchNorm running statistics
} KeyWalk;

static void key_visit(void* ctx, const char* name, int rank, const int64_t* shape) {
    KeyWalk* k = ctx;
    size_t numel = 1;
    for (int d = 0; d < rank; d++) numel *= (size_t)shape[d];
    if (!strstr(name, "running_")) k->params += (double)numel;
    int ok = k->i < k->want->length;
    if (ok) {
        const JsonValue* e = &k->want->items[k->i];
        const JsonValue* s = &e->items[1];
        ok = e->items[0].type == JSON_STRING && strcmp(e->items[0].string, name) == 0 && (int)s->length == rank;
        for (int d = 0; ok && d < rank; d++) ok = s->items[d].integer == shape[d];
        if (!ok && k->wrong < 3) printf("    [%zu] %s: ultralytics has %s\n", k->i, name, e->items[0].string);
    }
    k->wrong += !ok;
    k->i++;
}

// yolo_checkpoint_keys for the yaml's five scales = DetectionModel("yolov8<s>.yaml").state_dict(); and the
// parameter totals printed in yolov8.yaml's comments.
static void test_yolo_scales_vs_ultralytics(void) {
    JsonDoc doc;
    char err[ERR_MAX] = "";
    if (!check_true(json_read_file(&doc, golden_path("yolo/keys.json"), err) == 0, "read yolo/keys.json %s", err)) return;
    const struct {
        const char* scale;
        double depth, width;
        int max_channels;
        double params; // yolov8.yaml: "YOLOv8n summary: 129 layers, 3157200 parameters, ..."
    } scales[] = {{"n", 0.33, 0.25, 1024, 3157200}, {"s", 0.33, 0.50, 1024, 11166560}, {"m", 0.67, 0.75, 768, 25902640},
                  {"l", 1.00, 1.00, 512, 43691520}, {"x", 1.00, 1.25, 512, 68229648}};
    for (int s = 0; s < 5; s++) {
        YoloConfig cfg;
        int rc = yolo_config_from_scale(&cfg, scales[s].scale, scales[s].depth, scales[s].width, scales[s].max_channels, 80, 16, err);
        if (!check_true(rc == 0, "config yolov8%s: %s", scales[s].scale, err)) continue;
        KeyWalk k = {json_get(&doc.root, scales[s].scale), 0, 0, 0};
        if (!check_true(k.want && k.want->type == JSON_ARRAY, "keys.json has scale %s", scales[s].scale)) continue;
        yolo_checkpoint_keys(&cfg, key_visit, &k);
        check_true(k.wrong == 0 && k.i == k.want->length, "yolov8%s: %zu tensors, names and shapes = ultralytics' %zu (%d differ)",
                   scales[s].scale, k.i, k.want->length, k.wrong);
        check_true(k.params == scales[s].params, "yolov8%s: %.0f parameters (yolov8.yaml: %.0f)", scales[s].scale, k.params,
                   scales[s].params);
    }
    json_free(&doc);
}

// ----------------------------------------------------------------------------
// Pre-processing

static void test_yolo_resize_vs_opencv(void) {
    SafeTensors g;
    if (!golden_open(&g, REF)) return;
    char name[64], err[ERR_MAX] = "";
    for (int i = 0;; i++) {
        snprintf(name, sizeof(name), "resize.%d.src", i);
        if (!safetensors_find(&g, name)) {
            check_true(i >= 10, "%d resize cases", i);
            break;
        }
        Image src, want, got;
        if (!golden_image_u8(&g, name, &src)) break;
        snprintf(name, sizeof(name), "resize.%d.dst", i);
        if (!golden_image_u8(&g, name, &want)) {
            image_free(&src);
            break;
        }
        int rc = yolo_resize_linear(&src, want.width, want.height, &got, err);
        char label[128];
        snprintf(label, sizeof(label), "cv2.resize %dx%dx%d -> %dx%d INTER_LINEAR", src.width, src.height, src.channels, want.width,
                 want.height);
        // exact: OpenCV's fixed-point arithmetic, reproduced operation by operation
        if (check_true(rc == 0, "%s: %s", label, rc ? err : "resized"))
            check_bytes_equal(label, got.data, want.data, (size_t)want.width * want.height * want.channels);
        image_free(&src);
        image_free(&want);
        image_free(&got);
    }
    Image bad = {0}, out;
    bad.width = 4, bad.height = 4, bad.channels = 3, bad.depth = 16;
    check_true(yolo_resize_linear(&bad, 2, 2, &out, err) == -1 && strstr(err, "16-bit"), "16-bit input refused: %s", err);
    safetensors_close(&g);
}

static void test_yolo_letterbox_params(void) {
    SafeTensors g;
    if (!golden_open(&g, REF)) return;
    size_t n = 0;
    int32_t* rows = golden_i32(&g, "letterbox.params", &n);
    int wrong = 0, count = (int)(n / 9);
    for (int i = 0; rows && i < count; i++) {
        const int32_t* r = rows + 9 * i; // w, h, auto, new_w, new_h, top, bottom, left, right
        YoloLetterbox lb;
        yolo_letterbox_params(r[0], r[1], 640, 32, r[2], &lb);
        int ok = lb.new_w == r[3] && lb.new_h == r[4] && lb.top == r[5] && lb.bottom == r[6] && lb.left == r[7] && lb.right == r[8];
        if (!ok && wrong++ < 3)
            printf("    %dx%d auto %d: got %dx%d t%d b%d l%d r%d, LetterBox %dx%d t%d b%d l%d r%d\n", r[0], r[1], r[2], lb.new_w,
                   lb.new_h, lb.top, lb.bottom, lb.left, lb.right, r[3], r[4], r[5], r[6], r[7], r[8]);
    }
    // exact: integer results of the same double arithmetic and Python rounding
    check_true(rows && wrong == 0, "LetterBox.get_params for %d (size, auto) cases (%d differ)", count, wrong);
    YoloLetterbox lb;
    yolo_letterbox_params(1365, 768, 640, 32, 1, &lb);
    check_true(lb.out_w == 640 && lb.out_h == 384 && lb.top == 12 && lb.bottom == 12, "1365x768 -> 640x360 + 12 rows above and below = 640x384");
    yolo_letterbox_params(1365, 768, 640, 32, 0, &lb);
    check_true(lb.out_w == 640 && lb.out_h == 640 && lb.top == 140 && lb.bottom == 140, "square (auto=False): 640x640, 140-row bars");
    free(rows);
    safetensors_close(&g);
}

static void test_yolo_letterbox_vs_ultralytics(void) {
    Image rgb, want, got;
    char err[ERR_MAX] = "";
    if (!read_input(&rgb)) return;
    if (!check_true(png_read(&want, golden_path("yolo/letterbox.png"), err) == 0, "read yolo/letterbox.png %s", err)) {
        image_free(&rgb);
        return;
    }
    YoloLetterbox lb;
    int rc = yolo_letterbox(&rgb, 640, 1, &got, &lb, err);
    if (check_true(rc == 0 && got.width == want.width && got.height == want.height, "letterbox %dx%d -> %dx%d (ultralytics %dx%d)",
                   rgb.width, rgb.height, got.width, got.height, want.width, want.height)) {
        size_t n = (size_t)got.width * got.height * 3;
        int max_diff = 0;
        for (size_t i = 0; i < n; i++) {
            int d = abs((int)((uint8_t*)got.data)[i] - (int)((uint8_t*)want.data)[i]);
            max_diff = d > max_diff ? d : max_diff;
        }
        printf("  letterbox max |diff| %d levels\n", max_diff);
        // exact: predictor.pre_transform's bytes (cv2.resize + copyMakeBorder)
        check_bytes_equal("LetterBox(640, auto=True) of the 1365x768 input", got.data, want.data, n);
    }
    image_free(&got);
    Image gray = rgb;
    gray.channels = 1;
    check_true(yolo_letterbox(&gray, 640, 1, &got, &lb, err) == -1 && strstr(err, "RGB"), "a 1-channel image is refused: %s", err);
    image_free(&rgb);
    image_free(&want);
}

// ----------------------------------------------------------------------------
// The tiny detector

static void test_yolo_load_tiny(void) {
    Yolo y;
    if (!load_tiny(&y)) return;
    SafeTensors st;
    char err[ERR_MAX] = "";
    YoloConfig from_shapes;
    if (golden_open(&st, TINY)) {
        int rc = yolo_config_from_tensors(&from_shapes, &st, err);
        int same = rc == 0 && from_shapes.nc == y.cfg.nc && from_shapes.reg_max == y.cfg.reg_max &&
                   memcmp(from_shapes.out, y.cfg.out, sizeof(y.cfg.out)) == 0 && memcmp(from_shapes.n, y.cfg.n, sizeof(y.cfg.n)) == 0 &&
                   from_shapes.box_hidden == y.cfg.box_hidden && from_shapes.cls_hidden == y.cfg.cls_hidden;
        check_true(same, "architecture from the scale metadata == read off the tensor shapes %s", err);
        safetensors_close(&st);
    }
    printf("  scale '%s' (depth %g, width %g, max_channels %d): channels", y.cfg.scale, y.cfg.depth, y.cfg.width, y.cfg.max_channels);
    for (int i = 0; i < YOLO_LAYERS - 1; i++) printf(" %d", y.cfg.out[i]);
    printf("; Detect hidden %d/%d, nc %d\n", y.cfg.box_hidden, y.cfg.cls_hidden, y.cfg.nc);
    check_true(y.cfg.out[7] == 32 && y.cfg.out[6] == 32, "max_channels 512 caps layer 7 at 512 * 0.0625 = 32");
    check_true(y.cfg.n[4] == 2 && y.cfg.n[2] == 1, "depth 0.33: C2f repeats round(6 * 0.33) = 2, 3 * 0.33 -> 1");
    check_true(y.unused_tensors == 0, "every one of the file's %d tensors is read (%d unused)", y.file_tensors, y.unused_tensors);
    int names_ok = y.cfg.nc == YOLO_COCO_CLASSES;
    for (int i = 0; names_ok && i < y.cfg.nc; i++) names_ok = strcmp(y.names[i], yolo_coco_name(i)) == 0;
    check_true(names_ok, "the 80 names in the metadata (ultralytics' coco.yaml) = yolo.c's COCO table");
    yolo_free(&y);
}

static void check_detections(const char* what, const YoloDetection* d, int n, const SafeTensors* g) {
    size_t nd, nc, na;
    float* xyxy = golden_f32(g, "det.xyxy", &nd);
    float* conf = golden_f32(g, "det.conf", NULL);
    int32_t* cls = golden_i32(g, "det.cls", &nc);
    int32_t* anchor = golden_i32(g, "det.anchor", &na);
    if (!xyxy || !conf || !cls || !anchor) goto done;
    check_true(n == (int)nc, "%s: %d detections (ultralytics %zu)", what, n, nc);
    if (n != (int)nc) goto done;
    int same = 1;
    float* got_xyxy = xmalloc(sizeof(float) * 4 * (n ? n : 1));
    float* got_conf = xmalloc(sizeof(float) * (n ? n : 1));
    for (int i = 0; i < n; i++) {
        same &= d[i].cls == cls[i] && d[i].anchor == anchor[i];
        got_xyxy[4 * i] = d[i].x1, got_xyxy[4 * i + 1] = d[i].y1, got_xyxy[4 * i + 2] = d[i].x2, got_xyxy[4 * i + 3] = d[i].y2;
        got_conf[i] = d[i].conf;
    }
    // exact: the same boxes in the same order (score order, NMS survivors)
    check_true(same, "%s: classes and source anchors in ultralytics' order", what);
    char label[96];
    snprintf(label, sizeof(label), "%s: boxes xyxy (original pixels)", what);
    check_close(label, got_xyxy, xyxy, 4 * (size_t)n, TOL_BOXES.atol, TOL_BOXES.rtol);
    snprintf(label, sizeof(label), "%s: confidences", what);
    check_close(label, got_conf, conf, (size_t)n, TOL_SCORE.atol, TOL_SCORE.rtol);
    free(got_xyxy);
    free(got_conf);
done:
    free(xyxy);
    free(conf);
    free(cls);
    free(anchor);
}

// letterbox -> network -> NMS -> scale_boxes, step by step against the predictor's intermediates
static void test_yolo_tiny_vs_ultralytics(void) {
    SafeTensors g;
    if (!golden_open(&g, REF)) return;
    Yolo y;
    Image rgb;
    if (!load_tiny(&y) || !read_input(&rgb)) {
        safetensors_close(&g);
        return;
    }
    int H, W;
    float* pred = run_head(&y, &rgb, &H, &W);
    int A = yolo_anchor_count(H, W), no = 4 + y.cfg.nc;
    size_t n_idx;
    int32_t* idx = golden_i32(&g, "pred.idx", &n_idx);
    float* rows = golden_f32(&g, "pred.rows", NULL);
    if (pred && idx && rows) {
        check_true(H == 384 && W == 640 && A == 5040, "input 640x384, %d anchors (ultralytics: 5040)", A);
        // pred.rows is (4 + nc, k): the columns idx of ultralytics' (1, 4 + nc, A) output
        float* got = xmalloc(sizeof(float) * no * n_idx);
        for (int r = 0; r < no; r++)
            for (size_t k = 0; k < n_idx; k++) got[r * n_idx + k] = pred[(size_t)r * A + idx[k]];
        check_close("head boxes xywh (pixels), every 8th anchor + kept", got, rows, 4 * n_idx, TOL_HEAD_BOX.atol,
                    TOL_HEAD_BOX.rtol);
        check_close("head class scores (sigmoid)", got + 4 * n_idx, rows + 4 * n_idx, (size_t)y.cfg.nc * n_idx, TOL_SCORE.atol,
                    TOL_SCORE.rtol);
        free(got);
        YoloOptions opt;
        yolo_options_default(&opt);
        YoloDetection dets[300];
        int n = yolo_nms(pred, y.cfg.nc, A, &opt, dets, 300);
        YoloLetterbox lb;
        yolo_letterbox_params(rgb.width, rgb.height, 640, 32, 1, &lb);
        yolo_scale_boxes(dets, n, &lb);
        check_detections("nms + scale_boxes", dets, n, &g);
        float* max_score = golden_f32(&g, "pred.max_score", NULL);
        opt.conf = max_score ? max_score[0] + 1e-3 : 1.0; // above ultralytics' best score (ours is within 1e-5 of it)
        check_true(yolo_nms(pred, y.cfg.nc, A, &opt, dets, 300) == 0, "conf above the best score (%.4f): no detection", opt.conf);
        opt.conf = 0.25;
        opt.max_det = 5;
        check_true(yolo_nms(pred, y.cfg.nc, A, &opt, dets, 300) == 5, "max_det 5 keeps the best 5");
        free(max_score);
    }
    free(pred);
    free(idx);
    free(rows);
    image_free(&rgb);
    yolo_free(&y);
    safetensors_close(&g);
}

// the public entry point, and the prompt check on its detections
static void test_yolo_detect_and_presence(void) {
    SafeTensors g;
    if (!golden_open(&g, REF)) return;
    Yolo y;
    Image rgb;
    if (!load_tiny(&y) || !read_input(&rgb)) {
        safetensors_close(&g);
        return;
    }
    YoloDetection dets[300];
    char err[ERR_MAX] = "";
    double t0 = now_seconds();
    int n = yolo_detect(&y, &rgb, dets, 300, NULL, err);
    printf("  yolo_detect on 1365x768: %d detections, %.3f s\n", n, now_seconds() - t0);
    if (check_true(n >= 0, "yolo_detect %s", err)) check_detections("yolo_detect", dets, n, &g);
    // the tiny model finds person, car, bench, dog, couch and tv (the golden script raised those classes)
    YoloObject objs[YOLO_MAX_OBJECTS];
    int k = yolo_prompt_objects("Two men and a dog on a sofa near a TV, no cat", objs, YOLO_MAX_OBJECTS);
    yolo_object_presence(objs, k, dets, n, (const char* const*)y.names, y.cfg.nc);
    float best[4] = {0, 0, 0, 0};
    const int want_cls[4] = {0, 16, 57, 62};
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 4; j++)
            if (dets[i].cls == want_cls[j] && dets[i].conf > best[j]) best[j] = dets[i].conf;
    int ok = k == 5;
    for (int j = 0; ok && j < 4; j++) ok = objs[j].cls == want_cls[j] && objs[j].found && objs[j].best_conf == best[j];
    ok = ok && objs[4].cls == 15 && !objs[4].found && objs[4].best_conf == 0.0f;
    for (int j = 0; j < k; j++)
        printf("    %-6s -> %-7s %s %.3f\n", objs[j].word, yolo_coco_name(objs[j].cls), objs[j].found ? "found  " : "missing", objs[j].best_conf);
    check_true(ok, "men/dog/sofa/TV found with their best confidence, cat missing");
    image_free(&rgb);
    yolo_free(&y);
    safetensors_close(&g);
}

// ----------------------------------------------------------------------------
// Prompts

static void test_yolo_prompt_objects(void) {
    const struct {
        const char* prompt;
        const char* want; // "class:word class:word ..." in order
    } cases[] = {
        {"two men and a dog on a sofa near a tv", "person:men dog:dog couch:sofa tv:tv"},
        {"A WOMAN with her Child, a man, people", "person:woman"},
        {"hot dog stand next to a dog", "hot dog:hot dog dog:dog"},
        {"teddy bear and a bear", "teddy bear:teddy bear bear:bear"},
        {"knives, forks and wine glasses on the dining table", "knife:knives fork:forks wine glass:wine glasses dining table:dining table"},
        {"a motorbike, two planes, an aeroplane, a cellphone and a mobile phone", "motorcycle:motorbike airplane:planes cell phone:cellphone"},
        {"traffic lights by a fire hydrant and a stop sign; parking meters", "traffic light:traffic lights fire hydrant:fire hydrant stop sign:stop sign parking meter:parking meters"},
        {"benches, buses, sandwiches, toothbrushes, hair dryer", "bench:benches bus:buses sandwich:sandwiches toothbrush:toothbrushes hair drier:hair dryer"},
        {"kids playing with a sports ball and a tennis racket; a baseball bat", "person:kids sports ball:sports ball tennis racket:tennis racket baseball bat:baseball bat"},
        {"potted plants, a settee, a television and a couch", "potted plant:potted plants couch:settee tv:television"},
        {"an orange sky over a remote village, a mouse", ""},          // colour, adjective, animal: not COCO's
        {"a dog's bowl; the dogs' bowls", "dog:dog bowl:bowl"},        // possessives split off
        {"catalog of doghouses", ""},                                   // whole words only
        {"guy, lady and boy on a bike with oranges", "person:guy bicycle:bike orange:oranges"},
    };
    int bad = 0;
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        YoloObject objs[YOLO_MAX_OBJECTS];
        int n = yolo_prompt_objects(cases[c].prompt, objs, YOLO_MAX_OBJECTS);
        char got[512] = "";
        for (int i = 0; i < n; i++) {
            size_t len = strlen(got);
            snprintf(got + len, sizeof(got) - len, "%s%s:%s", i ? " " : "", yolo_coco_name(objs[i].cls), objs[i].word);
        }
        if (strcmp(got, cases[c].want) != 0) {
            bad++;
            printf("    \"%s\": got \"%s\", want \"%s\"\n", cases[c].prompt, got, cases[c].want);
        }
    }
    check_true(bad == 0, "objects named by %zu prompts (%d wrong)", sizeof(cases) / sizeof(cases[0]), bad);
    YoloObject two[2];
    check_true(yolo_prompt_objects("a cat, a dog and a car", two, 2) == 2 && two[1].cls == 16, "at most max objects");
    // presence from detections, by class name
    YoloDetection dets[3] = {{0, 0, 1, 1, 0.5f, 16, 0}, {0, 0, 1, 1, 0.8f, 16, 1}, {0, 0, 1, 1, 0.9f, 2, 2}};
    const char* names[80];
    for (int i = 0; i < 80; i++) names[i] = yolo_coco_name(i);
    YoloObject objs[YOLO_MAX_OBJECTS];
    int n = yolo_prompt_objects("dogs and a cat", objs, YOLO_MAX_OBJECTS);
    yolo_object_presence(objs, n, dets, 3, names, 80);
    check_true(n == 2 && objs[0].found && objs[0].best_conf == 0.8f && !objs[1].found && objs[1].best_conf == 0.0f,
               "dogs found at 0.8 (best of two), cat missing");
}

// ----------------------------------------------------------------------------
// Bad input

// Copies the tiny checkpoint to path, leaving out tensor `drop` (or none) and, when no_meta, the metadata.
static int write_copy(const char* path, const char* drop, int no_meta) {
    SafeTensors st;
    if (!golden_open(&st, TINY)) return 0;
    SafeTensorOut* out = xcalloc(st.count, sizeof(SafeTensorOut));
    int n = 0;
    for (int i = 0; i < st.count; i++) {
        const SafeTensor* t = &st.tensors[i];
        if (drop && strcmp(t->name, drop) == 0) continue;
        out[n].name = t->name;
        out[n].dtype = t->dtype;
        out[n].rank = t->rank;
        memcpy(out[n].shape, t->shape, sizeof(int64_t) * t->rank);
        out[n].data = t->data;
        n++;
    }
    char err[ERR_MAX] = "";
    int rc = safetensors_write(path, out, n, st.meta_keys, st.meta_values, no_meta ? 0 : st.meta_count, err);
    free(out);
    safetensors_close(&st);
    return check_true(rc == 0, "write %s %s", path, err);
}

static void test_yolo_load_errors(void) {
    mkdir("build", 0755);
    mkdir(WORK_DIR, 0755);
    Yolo y;
    char err[ERR_MAX] = "";
    const char* missing = WORK_DIR "/missing_bn.safetensors";
    if (write_copy(missing, "model.4.m.1.cv2.bn.running_var", 0)) {
        int rc = yolo_load(&y, missing, err);
        printf("    %s\n", err);
        check_true(rc == -1 && strstr(err, missing) && strstr(err, "missing tensor 'model.4.m.1.cv2.bn.running_var'") &&
                       !strchr(err, '\n'),
                   "a missing BatchNorm tensor: one line naming the tensor and the file");
    }
    const char* head = WORK_DIR "/missing_head.safetensors";
    if (write_copy(head, "model.22.cv3.1.2.bias", 0)) {
        int rc = yolo_load(&y, head, err);
        check_true(rc == -1 && strstr(err, head) && strstr(err, "missing tensor 'model.22.cv3.1.2.bias'"), "a missing head tensor: %s", err);
    }
    // without metadata the architecture is read from the shapes, and the model is the same
    const char* bare = WORK_DIR "/no_metadata.safetensors";
    if (write_copy(bare, NULL, 1)) {
        int rc = yolo_load(&y, bare, err);
        if (check_true(rc == 0, "load without metadata %s", rc ? err : "")) {
            check_true(y.cfg.nc == 80 && y.cfg.out[21] == 32 && y.unused_tensors == 0 && strcmp(y.names[62], "tv") == 0,
                       "shapes give the same architecture; 80 classes get COCO's names");
            yolo_free(&y);
        }
    }
    const char* no_dfl = WORK_DIR "/no_dfl_no_metadata.safetensors";
    if (write_copy(no_dfl, "model.22.dfl.conv.weight", 1)) {
        int rc = yolo_load(&y, no_dfl, err);
        check_true(rc == -1 && strstr(err, "model.22.dfl.conv.weight"), "shapes incomplete: %s", err);
    }
    int rc = yolo_load(&y, WORK_DIR "/does_not_exist.safetensors", err);
    check_true(rc == -1 && strstr(err, "does_not_exist"), "a missing file: %s", err);
    // scales and heads yolo.c cannot build
    YoloConfig cfg;
    check_true(yolo_config_from_scale(&cfg, "bad", 0.33, 0.0, 1024, 80, 16, err) == -1, "width 0 refused: %s", err);
    check_true(yolo_config_from_scale(&cfg, "n", 0.33, 0.25, 1024, 80, 1, err) == -1 && strstr(err, "reg_max"), "reg_max 1 refused: %s", err);
}

// ----------------------------------------------------------------------------
// CUDA

static void test_yolo_cuda_matches_cpu(void) {
    if (!test_require_cuda()) return;
    Backend saved = backend_current();
    Image rgb;
    if (!read_input(&rgb)) return;
    Yolo cpu, gpu;
    backend_select(BACKEND_CPU);
    if (!load_tiny(&cpu)) {
        image_free(&rgb);
        return;
    }
    int H, W;
    float* want = run_head(&cpu, &rgb, &H, &W);
    backend_free_all();
    backend_select(BACKEND_CUDA);
    if (want && load_tiny(&gpu)) {
        int H2, W2;
        float* got = run_head(&gpu, &rgb, &H2, &W2);
        size_t n = (size_t)(4 + cpu.cfg.nc) * yolo_anchor_count(H, W);
        int A = yolo_anchor_count(H, W);
        if (got) {
            check_close("cuda vs cpu head boxes (4, 5040)", got, want, 4 * (size_t)A, TOL_HEAD_BOX.atol, TOL_HEAD_BOX.rtol);
            check_close("cuda vs cpu head scores (nc, 5040)", got + 4 * (size_t)A, want + 4 * (size_t)A, n - 4 * (size_t)A,
                        TOL_CUDA.atol, TOL_CUDA.rtol);
        }
        YoloDetection dc[300], dg[300];
        char err[ERR_MAX] = "";
        int ng = yolo_detect(&gpu, &rgb, dg, 300, NULL, err);
        backend_free_all();
        backend_select(BACKEND_CPU);
        int nc = yolo_detect(&cpu, &rgb, dc, 300, NULL, err);
        int same = ng == nc;
        float worst = 0; // pixels; TOL_BOXES
        for (int i = 0; same && i < nc; i++) {
            same = dc[i].cls == dg[i].cls && dc[i].anchor == dg[i].anchor;
            float e[4] = {dc[i].x1 - dg[i].x1, dc[i].y1 - dg[i].y1, dc[i].x2 - dg[i].x2, dc[i].y2 - dg[i].y2};
            for (int k = 0; k < 4; k++) worst = fabsf(e[k]) > worst ? fabsf(e[k]) : worst;
        }
        check_true(same && worst <= TOL_BOXES.atol, "cuda vs cpu yolo_detect: %d and %d detections, same classes and anchors, boxes within %.1e px",
                   ng, nc, worst);
        free(got);
        backend_select(BACKEND_CUDA);
        yolo_free(&gpu);
    }
    backend_free_all();
    backend_select(BACKEND_CPU);
    yolo_free(&cpu);
    backend_select(saved);
    free(want);
    image_free(&rgb);
}

const TestCase tests_yolo[] = {
    {"yolo_scales_vs_ultralytics", test_yolo_scales_vs_ultralytics},
    {"yolo_resize_vs_opencv", test_yolo_resize_vs_opencv},
    {"yolo_letterbox_params", test_yolo_letterbox_params},
    {"yolo_letterbox_vs_ultralytics", test_yolo_letterbox_vs_ultralytics},
    {"yolo_load_tiny", test_yolo_load_tiny},
    {"yolo_tiny_vs_ultralytics", test_yolo_tiny_vs_ultralytics},
    {"yolo_detect_and_presence", test_yolo_detect_and_presence},
    {"yolo_prompt_objects", test_yolo_prompt_objects},
    {"yolo_load_errors", test_yolo_load_errors},
    {"yolo_cuda_matches_cpu", test_yolo_cuda_matches_cpu},
    {NULL, NULL},
};
