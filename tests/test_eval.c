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
#include "../png.h"
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

// Reads a whole text file written by a test (NUL-terminated); NULL on failure, checked.
static char* slurp(const char* path) {
    uint8_t* text;
    size_t size;
    char err[ERR_MAX];
    if (!check_true(read_file(path, &text, &size, err) == 0, "read %s: %s", path, err)) return NULL;
    char* s = xmalloc(size + 1);
    memcpy(s, text, size);
    s[size] = 0;
    free(text);
    return s;
}

// A folder with one real frame (written by our PNG writer) and a "fake.png" of text bytes: the
// fake is recorded as failed with why, warned about, counted, and in no mean, so every summary
// figure is the real frame's alone (its colourfulness has a closed form, see the style test).
static void test_eval_unreadable_image_left_out(void) {
    const char* dir = "build/test_eval/mixed";
    mkdir("build", 0755);
    mkdir("build/test_eval", 0755);
    mkdir(dir, 0755);
    char err[ERR_MAX] = "";
    Image frame = make_image(64, 36, red_and_black);
    int wrote = png_write("build/test_eval/mixed/001.png", &frame, err) == 0;
    image_free(&frame);
    const char* fake = "this is not a PNG, only text with a .png name\n";
    wrote = wrote && write_file_atomic("build/test_eval/mixed/fake.png", fake, strlen(fake), err) == 0;
    if (!check_true(wrote, "write the test folder: %s", err)) return;
    EvalOptions o = {0};
    o.images_dir = dir;
    o.out_dir = "build/test_eval/mixed_report";
    o.interrogate = "fast";
    o.width = 64; // the real frame's size: exact size must be 100%, not 50%
    o.height = 36;
    o.beams = 1;
    o.quiet = 1;
    int rc = eval_run(&o, err);
    if (!check_true(rc == 0, "eval over one good and one unreadable image succeeds: %s", rc ? err : "ok")) return;
    const double want = 1.3 * sqrt(127.5 * 127.5 + 63.75 * 63.75); // red/black closed form
    char* text = slurp("build/test_eval/mixed_report/report.json");
    JsonDoc doc;
    if (text && check_true(json_parse(&doc, text, strlen(text), err) == 0, "report.json parses: %s", err)) {
        const JsonValue* summary = json_get(&doc.root, "summary");
        double m = -1, images = -1, total = -1, unreadable = -1;
        const JsonValue* c = json_get(summary, "colourfulness");
        check_true(c && json_get_number(c, "mean", &m) && json_get_number(c, "images", &images) && fabs(m - want) < 1e-3 && images == 1,
                   "colourfulness mean %.4f over %g image = the good frame's %.4f alone", m, images, want);
        const char* keys[3] = {"size_ok", "mean_saturation", "black_and_white"};
        const double wants[3] = {1.0, 0.5, 0.0};
        for (int k = 0; k < 3; k++) {
            const JsonValue* row = json_get(summary, keys[k]);
            check_true(row && json_get_number(row, "mean", &m) && json_get_number(row, "images", &images) && fabs(m - wants[k]) < 1e-6 &&
                           images == 1,
                       "%s mean %g over %g image (the good frame: %g)", keys[k], m, images, wants[k]);
        }
        check_true(json_get_number(&doc.root, "images_total", &total) && json_get_number(&doc.root, "images_unreadable", &unreadable) &&
                       total == 2 && unreadable == 1,
                   "images_total %g, images_unreadable %g", total, unreadable);
        const JsonValue* list = json_get(&doc.root, "unreadable");
        const char* reason = list && list->length == 1 ? json_get_string(&list->items[0], "reason") : NULL;
        check_true(reason && strstr(reason, "mixed/fake.png") && strstr(reason, "not a PNG"), "the unreadable list names the file and why: %s",
                   reason ? reason : "(none)");
        const JsonValue* images_arr = json_get(&doc.root, "images");
        const JsonValue* bad = images_arr && images_arr->length == 2 ? &images_arr->items[1] : NULL;
        const char* status = bad ? json_get_string(json_get(bad, "image"), "status") : NULL;
        const JsonValue* style = bad ? json_get(bad, "style") : NULL;
        check_true(status && strcmp(status, "failed") == 0 && style && style->type == JSON_NULL,
                   "fake.png's record: image failed, style null (no zeros posing as measurements)");
        json_free(&doc);
    }
    free(text);
    text = slurp("build/test_eval/mixed_report/report.csv");
    check_true(text && strstr(text, "mixed/fake.png\",\"\",failed,failed,failed,") && strstr(text, "image: build/test_eval/mixed/fake.png: not a PNG"),
               "report.csv: the fake's row says failed, and why");
    free(text);
    text = slurp("build/test_eval/mixed_report/report.html");
    check_true(text && strstr(text, "1 of 2 images read (1 could not be read: in no mean)") && strstr(text, "<div class=\"card failed\">") &&
                   strstr(text, "could not be read: build/test_eval/mixed/fake.png: not a PNG"),
               "report.html: the count in the heading, the fake's card marked failed with why");
    free(text);
}

// Nothing readable: the reports still say why for each file, and the run fails.
static void test_eval_all_unreadable_fails(void) {
    mkdir("build", 0755);
    mkdir("build/test_eval", 0755);
    mkdir("build/test_eval/allbad", 0755);
    char err[ERR_MAX] = "";
    const char* fake = "GIF89a";
    write_file_atomic("build/test_eval/allbad/a.png", fake, strlen(fake), err);
    write_file_atomic("build/test_eval/allbad/b.png", "", 0, err);
    remove("build/test_eval/allbad_report/report.json");
    EvalOptions o = {0};
    o.images_dir = "build/test_eval/allbad";
    o.out_dir = "build/test_eval/allbad_report";
    o.interrogate = "fast";
    o.width = 64;
    o.height = 36;
    o.beams = 1;
    o.quiet = 1;
    int rc = eval_run(&o, err);
    check_true(rc == -1 && strstr(err, "none of the 2 images could be read"), "every image unreadable -> an error: %s", err);
    char* text = slurp("build/test_eval/allbad_report/report.json");
    check_true(text && strstr(text, "\"images_unreadable\": 2") && strstr(text, "allbad/b.png"), "the report is written, both listed");
    free(text);
}

// The console warnings: a line per unreadable image, a line per evaluator that failed on readable
// ones (out of that evaluator's mean only), and the count.
static void test_eval_warnings(void) {
    EvalRecord r[3];
    eval_record_init(&r[0], "frames/001.png", "a door");
    eval_record_init(&r[1], "frames/002.png", "a car");
    eval_record_init(&r[2], "frames/003.png", "");
    r[0].judge.status = EVAL_DONE;
    r[0].judge_score = 7;
    r[0].judge_reason = xstrdup("ok");
    eval_field_fail(&r[1].judge, "judge command exited with status 2: rate limited");
    eval_record_unreadable(&r[2], "frames/003.png: truncated file");
    FILE* f = tmpfile();
    if (!check_true(f != NULL, "tmpfile")) return;
    int unreadable = eval_print_warnings(f, r, 3);
    char text[2048] = "";
    rewind(f);
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = 0;
    fclose(f);
    check_true(unreadable == 1 && strstr(text, "warning: frames/003.png: truncated file\n") &&
                   strstr(text, "warning: judge failed on 1 of 2 images, left out of its means (first, 002.png: judge command exited with status 2: rate limited)\n") &&
                   strstr(text, "warning: 1 of 3 images could not be read; they are in no mean"),
               "warnings:\n%s", text);
    for (int i = 0; i < 3; i++) eval_record_free(&r[i]);
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
    {"eval_unreadable_image_left_out", test_eval_unreadable_image_left_out},
    {"eval_all_unreadable_fails", test_eval_all_unreadable_fails},
    {"eval_warnings", test_eval_warnings},
    {NULL, NULL},
};
