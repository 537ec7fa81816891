// tests/test_eval.c: the style checks on images whose figures are known in closed form, the LLM
// judge protocol with local stand-in commands, and the three report files (report.json must parse,
// report.csv must quote, report.html must carry the thumbnails and the boxes).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common.h"
#include "../eval.h"
#include "../json.h"
#include "check.h"

// An 8-bit RGB image of w x h filled by colour(x, y).
static Image make_image(int w, int h, void (*colour)(int x, int y, uint8_t* rgb)) {
    Image img = {0};
    img.width = w;
    img.height = h;
    img.channels = 3;
    img.depth = 8;
    uint8_t* px = xmalloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) colour(x, y, px + ((size_t)y * w + x) * 3);
    img.data = px;
    return img;
}

static void gray_gradient(int x, int y, uint8_t* p) { p[0] = p[1] = p[2] = (uint8_t)((x * 7 + y * 3) & 255); }
static void red_and_black(int x, int y, uint8_t* p) { p[0] = (x + y) % 2 ? 255 : 0; p[1] = p[2] = 0; }
static void sepia(int x, int y, uint8_t* p) { p[0] = 200; p[1] = 180; p[2] = 150; }
static void gray_with_red_dot(int x, int y, uint8_t* p) {
    p[0] = p[1] = p[2] = 128;
    if (x < 3 && y < 3) { p[0] = 255; p[1] = p[2] = 0; } // 9 of 1365*768 pixels: a stray tint
}

static void test_eval_style_checks(void) {
    StyleReport s;
    Image img = make_image(1365, 768, gray_gradient);
    style_check(&img, 1365, 768, &s);
    check_true(s.colourfulness == 0.0 && s.mean_saturation == 0.0 && s.black_and_white && s.size_ok && s.aspect_ok,
               "gray 1365x768: colourfulness %g, saturation %g, B&W, exact size, 16:9", s.colourfulness, s.mean_saturation);
    image_free(&img);
    // half pure red, half black: rg and yb each take two values, so M has a closed form:
    // std(rg) = mean(rg) = 127.5, std(yb) = mean(yb) = 63.75, M = 1.3 * sqrt(127.5^2 + 63.75^2)
    img = make_image(64, 36, red_and_black);
    style_check(&img, 1365, 768, &s);
    double want = 1.3 * sqrt(127.5 * 127.5 + 63.75 * 63.75);
    check_true(fabs(s.colourfulness - want) < 1e-9 && !s.black_and_white && fabs(s.mean_saturation - 0.5) < 1e-12,
               "red/black: colourfulness %.6f (closed form %.6f), saturation %.3f, colour", s.colourfulness, want,
               s.mean_saturation);
    check_true(!s.size_ok && s.aspect_ok, "64x36 is 16:9 but not the expected size");
    image_free(&img);
    // a uniform sepia tint: no spread (sigma 0) but a mean offset: M = 0.3 * sqrt(20^2 + 40^2)
    img = make_image(160, 90, sepia);
    style_check(&img, 160, 90, &s);
    want = 0.3 * sqrt(20.0 * 20.0 + 40.0 * 40.0);
    check_true(fabs(s.colourfulness - want) < 1e-9 && !s.black_and_white,
               "sepia: colourfulness %.4f = 0.3 mu (%.4f); saturation %.2f: not black and white", s.colourfulness, want,
               s.mean_saturation);
    image_free(&img);
    img = make_image(1365, 768, gray_with_red_dot);
    style_check(&img, 1365, 768, &s);
    check_true(s.black_and_white && s.colour_pixels > 0.0, "9 red pixels in a gray frame still pass (%.5f%% coloured)",
               100.0 * s.colour_pixels);
    image_free(&img);
    img = make_image(1024, 1024, gray_gradient);
    style_check(&img, 1365, 768, &s);
    check_true(!s.size_ok && !s.aspect_ok, "1024x1024: wrong size, not 16:9");
    image_free(&img);
}

static void test_eval_judge_protocol(void) {
    JudgeResult j = {0};
    char err[ERR_MAX] = "";
    check_true(judge_parse("thinking...\n{\"score\": 7, \"reason\": \"a door, no man\"}\n", &j, err) == 0 && j.score == 7 &&
                   strcmp(j.reason, "a door, no man") == 0,
               "JSON line among other output: %g '%s'", j.score, j.reason);
    check_true(judge_parse("Score: 8.5\nclean lines, matches\n", &j, err) == 0 && j.score == 8.5 &&
                   strcmp(j.reason, "clean lines, matches") == 0,
               "'score: n' then a reason line: %g '%s'", j.score, j.reason);
    int rc = judge_parse("I like it\n", &j, err);
    check_true(rc == -1 && strstr(err, "no score"), "no score -> %s", err);
    rc = judge_parse("{\"score\": 11}", &j, err);
    check_true(rc == -1 && strstr(err, "outside 1..10"), "11 -> %s", err);

    // stand-in judge commands: the prompt arrives in the environment and on stdin
    rc = judge_run("echo \"{\\\"score\\\": 9, \\\"reason\\\": \\\"$SDXL_JUDGE_PROMPT at $SDXL_JUDGE_IMAGE\\\"}\"", "a door",
                   "frames/001.png", &j, err);
    check_true(rc == 0 && j.score == 9 && strcmp(j.reason, "a door at frames/001.png") == 0, "env protocol: %g '%s' %s",
               j.score, j.reason, rc ? err : "");
    rc = judge_run("read p; echo \"score: 6\"; echo \"stdin said: $p\"", "a man walks", "x.png", &j, err);
    check_true(rc == 0 && j.score == 6 && strcmp(j.reason, "stdin said: a man walks") == 0, "stdin protocol: %g '%s'", j.score,
               j.reason);
    rc = judge_run("echo 'score: 5'; exit 3", "p", "x.png", &j, err);
    check_true(rc == -1 && strstr(err, "status 3"), "a failing command -> %s", err);
    rc = judge_run("true", "p", "x.png", &j, err);
    check_true(rc == -1 && strstr(err, "no score"), "a silent command -> %s", err);
    rc = judge_run("echo 'first' >&2; echo 'endpoint refused: bad key' >&2; exit 2", "p", "x.png", &j, err);
    check_true(rc == -1 && strstr(err, "status 2: endpoint refused: bad key"), "its last stderr line is in the error -> %s", err);
}

static void test_eval_reports(void) {
    mkdir("build", 0755);
    mkdir("build/test_eval", 0755);
    EvalRecord r[2];
    eval_record_init(&r[0], "frames/001.png", "a man opens a door, \"at night\"");
    eval_record_init(&r[1], "frames/002.png", "two dogs");
    Image thumbs[2];
    for (int i = 0; i < 2; i++) {
        thumbs[i] = make_image(64, 36, gray_gradient);
        style_check(&thumbs[i], 64, 36, &r[i].style);
    }
    // record 0: every evaluator ran; record 1: every one skipped or failed
    r[0].clip.status = EVAL_DONE;
    r[0].clip_score = 31.25;
    r[0].clip_cosine = 0.3125;
    r[0].detection.status = EVAL_DONE;
    r[0].n_boxes = 1;
    r[0].boxes = xcalloc(1, sizeof(EvalBox));
    r[0].boxes[0] = (EvalBox){"person", 0.91f, 10, 5, 30, 34};
    r[0].n_objects = 2;
    r[0].objects = xcalloc(2, sizeof(EvalObject));
    r[0].objects[0] = (EvalObject){"man", "person", 1, 0.91f};
    r[0].objects[1] = (EvalObject){"door", "", 0, 0.0f};
    r[0].caption.status = EVAL_DONE;
    r[0].caption_text = xstrdup("a drawing of a man at a door");
    r[0].similarity.status = EVAL_DONE;
    r[0].minilm_cosine = 0.8;
    r[0].clip_text_cosine = 0.9;
    r[0].has_clip_text_cosine = 1;
    r[0].interrogator.status = EVAL_DONE;
    r[0].interrogation = xstrdup("a storyboard sketch, by an artist");
    r[0].judge.status = EVAL_DONE;
    r[0].judge_score = 7;
    r[0].judge_reason = xstrdup("fine <b>lines</b>");
    eval_field_skip(&r[1].clip, "no --clip model given");
    eval_field_skip(&r[1].detection, "no --yolo model given");
    eval_field_fail(&r[1].caption, "frames/002.png: truncated file");
    eval_field_skip(&r[1].similarity, "no caption");
    eval_field_skip(&r[1].interrogator, "no --interrogator-lists given");
    eval_field_skip(&r[1].judge, "no --judge-cmd given");
    char err[ERR_MAX] = "";
    if (!check_true(eval_write_reports("build/test_eval", r, 2, thumbs, "test settings", err) == 0, "write reports: %s", err))
        return;
    uint8_t* text;
    size_t size;
    // report.json: valid JSON, every field present with a status
    JsonDoc doc;
    read_file("build/test_eval/report.json", &text, &size, err);
    int parsed = json_parse(&doc, (char*)text, size, err) == 0;
    check_true(parsed, "report.json parses with our JSON parser: %s", parsed ? "" : err);
    if (parsed) {
        const JsonValue* images = json_get(&doc.root, "images");
        const JsonValue* s = json_get(json_get(&doc.root, "summary"), "clip_score");
        double mean = 0;
        check_true(images && images->length == 2 && s && json_get_number(s, "mean", &mean) && mean == 31.25,
                   "two images, summary clip_score mean %g over the one image that ran", mean);
        const char* status = images ? json_get_string(json_get(&images->items[1], "caption"), "status") : NULL;
        const char* note = images ? json_get_string(json_get(&images->items[1], "caption"), "note") : NULL;
        check_true(status && strcmp(status, "failed") == 0 && note && strstr(note, "truncated"), "a failed field says why: %s",
                   note ? note : "?");
        const char* prompt = images ? json_get_string(&images->items[0], "prompt") : NULL;
        check_true(prompt && strcmp(prompt, "a man opens a door, \"at night\"") == 0, "quotes survive in JSON");
        json_free(&doc);
    }
    free(text);
    // report.csv: header + 2 rows, quoted fields, skipped cells say so
    read_file("build/test_eval/report.csv", &text, &size, err);
    int rows = 0;
    for (size_t i = 0; i < size; i++) rows += text[i] == '\n';
    check_true(rows == 3 && strstr((char*)text, "\"a man opens a door, \"\"at night\"\"\"") &&
                   strstr((char*)text, ",skipped,skipped,") && strstr((char*)text, "no --clip model given"),
               "report.csv: %d lines, RFC 4180 quoting, skipped cells and the reasons", rows);
    free(text);
    // report.html: thumbnails as data URIs, the detection box, escaped text
    read_file("build/test_eval/report.html", &text, &size, err);
    check_true(strstr((char*)text, "src=\"data:image/png;base64,iVBORw0KGgo") && strstr((char*)text, "<rect x=\"10.0\"") &&
                   strstr((char*)text, "fine &lt;b&gt;lines&lt;/b&gt;") && strstr((char*)text, "no --judge-cmd given"),
               "report.html: embedded PNG thumbnails, boxes, escaped text, skip notes");
    free(text);
    for (int i = 0; i < 2; i++) {
        eval_record_free(&r[i]);
        image_free(&thumbs[i]);
    }
    int rc = eval_write_reports("build/test_eval/no/such/dir", r, 0, NULL, "", err);
    check_true(rc == -1 && strstr(err, "no/such/dir"), "an unwritable folder: %s", err);
}

// eval_plain_prompt: the words of an A1111 prompt. BREAK is a space between words (its regex eats
// the spaces around it), a weight of -1 is text like any other, and 1,000,000 bytes of <lora:>
// tags take one pass (the rescan-from-the-start removal was quadratic in the tag count).
static void test_eval_plain_prompt(void) {
    struct { const char* prompt, *plain; } cases[] = {
        {"a (red:1.2) car, [blurry]", "a red car, blurry"},
        {"a cat BREAK a dog", "a cat a dog"},
        {"(ugly:-1) face", "ugly face"},
        {"<lora:style:0.8> a <lora:x> house,  <lora:y:1>", "a house"},
        {"\\(literal\\) <lora:open", "(literal) <lora:open"},
        {"(x:1.2.3) <lora:a>b", "(x:1.2.3) b"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        char* got = eval_plain_prompt(cases[c].prompt);
        check_true(strcmp(got, cases[c].plain) == 0, "%-40s -> '%s'", cases[c].prompt, got);
        free(got);
    }
    StrBuf big = {0};
    for (int i = 0; i < 100000; i++) strbuf_cat(&big, "<lora:a>w ");
    double t0 = now_seconds();
    char* got = eval_plain_prompt(big.s);
    size_t n = strlen(got);
    int words = n == 100000 * 2 - 1;
    for (size_t i = 0; words && i < n; i++) words = got[i] == (i % 2 ? ' ' : 'w');
    check_true(words, "1,000,000 bytes, 100,000 tags -> 'w w w ...' (%zu bytes, %.3f s)", n, now_seconds() - t0);
    free(got);
    free(big.s);
}

const TestCase tests_eval[] = {
    {"eval_plain_prompt", test_eval_plain_prompt},
    {"eval_style_checks", test_eval_style_checks},
    {"eval_judge_protocol", test_eval_judge_protocol},
    {"eval_reports", test_eval_reports},
    {NULL, NULL},
};
