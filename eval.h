// eval.h: judging generated storyboard thumbnails, and the report people read.
//
// The models (CLIP in clip.c, YOLOv8 in yolo.c, BLIP and MiniLM in blip.c) produce the numbers;
// this file adds the checks no model is needed for, the LLM-judge hook, and the report:
//   - style: colourfulness (Hasler & Suesstrunk 2003) and HSV saturation with a black-and-white
//     verdict, and the exact-size / 16:9 check;
//   - judge: a user command that rates prompt-image agreement from 1 to 10 (protocol below);
//   - report: one EvalRecord per image, written as report.json, report.csv and report.html (a
//     contact sheet with each thumbnail, its prompt, caption, scores, detection boxes and
//     verdicts), plus a summary table of means. An evaluator whose weights were not given is
//     recorded as skipped with the reason; nothing is left blank. An image that cannot be read
//     (not a PNG, truncated, an undecodable variant) is recorded as failed with the reason, warned
//     about, counted, and left out of every mean: its zeros are no measurement.
#pragma once
#include <stddef.h>
#include <stdio.h>

#include "png.h"

// ----------------------------------------------------------------------------
// Style checks

// The black-and-white verdict: an image is black and white when its colourfulness is below
// BW_MAX_COLOURFULNESS (Hasler & Suesstrunk's "not colourful" anchor is 0, "slightly colourful"
// 15; a gray image gives exactly 0) and fewer than BW_MAX_COLOUR_PIXELS of its pixels have an
// HSV saturation above BW_SATURATION (a few tinted strokes are allowed, a coloured object is not).
#define BW_MAX_COLOURFULNESS 8.0
#define BW_SATURATION 0.15
#define BW_MAX_COLOUR_PIXELS 0.01

typedef struct {
    int width, height;
    int size_ok;             // exactly the expected width x height
    int aspect_ok;           // width / height within 1% of 16:9
    double colourfulness;    // M = sigma_rgyb + 0.3 mu_rgyb on 8-bit sRGB (0 for gray images)
    double mean_saturation;  // mean HSV S = (max - min) / max, in [0, 1]
    double colour_pixels;    // share of pixels with S > BW_SATURATION
    int black_and_white;     // the verdict above
} StyleReport;

// rgb: 8-bit RGB. want_w/want_h: the expected size (1365 x 768 for the storyboard job).
void style_check(const Image* rgb, int want_w, int want_h, StyleReport* out);

// ----------------------------------------------------------------------------
// LLM judge hook
//
// Protocol (README "LLM judge"): `--judge-cmd CMD` runs `/bin/sh -c CMD` once per image with
//   SDXL_JUDGE_IMAGE   the image's path
//   SDXL_JUDGE_PROMPT  the prompt it was generated from (plain text, emphasis removed)
// in its environment, and the prompt also on its standard input. It must exit 0 and print its
// verdict on standard output, either as a JSON object {"score": 7, "reason": "..."} on one line,
// or as a line "score: 7" (optionally followed by a reason line). The score is a number from 1 to
// 10; anything else is recorded as a judge failure for that image, not a fatal error.
// scripts/judge_openai.sh is such a command for an OpenAI-compatible endpoint.

typedef struct {
    double score;      // 1..10
    char reason[512];  // "" when the judge gave none
} JudgeResult;

// Returns 0 with out filled, or -1 with a one-line message (the command failed, printed no score...).
int judge_run(const char* cmd, const char* prompt, const char* image_path, JudgeResult* out, char* err);
// Parses a judge's output as the protocol says (exposed for tests).
int judge_parse(const char* output, JudgeResult* out, char* err);

// ----------------------------------------------------------------------------
// Records and the report

typedef enum { EVAL_SKIPPED = 0, EVAL_DONE, EVAL_FAILED } EvalStatus;

typedef struct {
    EvalStatus status;
    char note[512]; // why it was skipped, or the error
} EvalField;

typedef struct {
    char label[32];
    float confidence;
    float x0, y0, x1, y1; // pixels of the image
} EvalBox;

typedef struct {
    char word[48];   // as the prompt says it ("men")
    char label[32];  // the COCO class ("person")
    int found;
    float best_confidence;
} EvalObject;

typedef struct {
    char path[4400];
    char name[256];  // file name, for display
    char* prompt;    // plain text
    EvalField image;         // reading the file: done, or failed with why (then nothing below was measured)
    StyleReport style;
    EvalField clip;          // CLIP score
    double clip_score, clip_cosine;
    EvalField detection;     // YOLOv8
    EvalBox* boxes;
    int n_boxes;
    EvalObject* objects;
    int n_objects;
    EvalField caption;       // BLIP
    char* caption_text;
    EvalField similarity;    // prompt <-> caption
    double minilm_cosine;    // all-MiniLM-L6-v2
    double clip_text_cosine; // CLIP text embeddings (when CLIP is loaded)
    int has_clip_text_cosine;
    EvalField interrogator;
    char* interrogation;
    EvalField judge;
    double judge_score;
    char* judge_reason;
} EvalRecord;

// A record of a read image (image.status EVAL_DONE); the evaluators fill the rest.
void eval_record_init(EvalRecord* r, const char* path, const char* prompt);
// Marks r's image as unreadable for the reason `why` (which names the file): image.status becomes
// EVAL_FAILED, every evaluator is skipped, and the summaries leave the record out.
void eval_record_unreadable(EvalRecord* r, const char* why);
void eval_record_free(EvalRecord* r);
void eval_field_skip(EvalField* f, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void eval_field_fail(EvalField* f, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// Writes report.json, report.csv and report.html into dir (each atomically). thumbs[i] is an 8-bit
// RGB thumbnail of record i for the contact sheet (boxes are drawn over it, scaled from the
// record's image size). Returns 0, or -1 with a one-line error.
int eval_write_reports(const char* dir, const EvalRecord* records, int n, const Image* thumbs, const char* settings,
                       char* err);
// The summary table of means over the images each evaluator ran on, for the terminal. Images
// that could not be read are in no mean; the header says how many there were.
void eval_print_summary(const EvalRecord* records, int n);
// Warnings (on stderr in `sdxl eval`): one line per image that could not be read (the file and why), one line per
// evaluator that failed on some read images (how many, and the first reason), and the count of
// unreadable images. Returns the number of unreadable images.
int eval_print_warnings(FILE* out, const EvalRecord* records, int n);

// ----------------------------------------------------------------------------
// The whole evaluation (`sdxl eval`)

typedef struct {
    const char* images_dir;   // the PNGs to judge (sorted by name)
    const char* prompts_file; // one prompt per line, in the images' order; NULL: each PNG's `parameters` text
    const char* out_dir;      // report.json, report.csv, report.html
    const char* clip;         // a transformers CLIPModel folder (openai/clip-vit-large-patch14), or NULL
    const char* yolo;         // a YOLOv8 safetensors file (scripts/convert_yolo.py), or NULL
    const char* blip;         // a transformers BlipForConditionalGeneration folder, or NULL
    const char* minilm;       // a sentence-transformers all-MiniLM-L6-v2 folder, or NULL
    const char* lists_dir;    // clip-interrogator label lists (mediums/artists/movements/flavors.txt), or NULL
    const char* cache_dir;    // where label embeddings are cached (default: <lists_dir>/cache)
    const char* interrogate;  // "fast" or "classic"
    const char* judge_cmd;    // the LLM judge command, or NULL
    int width, height;        // the size every image should have (1365 x 768)
    int beams;                // BLIP beam count (3, the BLIP paper's; 1 is greedy)
    int quiet;
} EvalOptions;

// Runs every evaluator the options give weights for over every image, writes the reports and
// prints the summary. Returns 0, or -1 with a one-line error (bad folder, unreadable model...).
// An image that cannot be read is recorded as failed and warned about, not fatal, unless no image
// at all could be read: then the reports are still written (they say why for each file) and the
// run returns -1, since there is nothing to summarise.
int eval_run(const EvalOptions* o, char* err);
// The plain text of an A1111 prompt: emphasis brackets and weights removed, BREAK a space,
// <lora:...> tags removed, runs of spaces one space. Linear in the prompt's length. malloc'd.
char* eval_plain_prompt(const char* prompt);
