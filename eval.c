// eval.c: style checks, the LLM-judge hook, and the evaluation report. See eval.h.
//
// Colourfulness: D. Hasler and S. Suesstrunk, "Measuring colourfulness in natural images",
// Proc. SPIE 5007 (2003), metric M(3): rg = R - G, yb = (R + G)/2 - B on 8-bit sRGB,
// M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2), population statistics.
// Saturation: HSV S = (max - min) / max (0 for black), as colorsys / OpenCV (scaled to [0, 1]).
#define _POSIX_C_SOURCE 200809L
#include "eval.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blip.h"
#include "clip.h"
#include "common.h"
#include "image.h"
#include "json.h"
#include "ops.h"
#include "tokenizer.h"
#include "yolo.h"

// ----------------------------------------------------------------------------
// Style checks

void style_check(const Image* rgb, int want_w, int want_h, StyleReport* out) {
    memset(out, 0, sizeof(*out));
    out->width = rgb->width;
    out->height = rgb->height;
    out->size_ok = rgb->width == want_w && rgb->height == want_h;
    double aspect = (double)rgb->width / rgb->height;
    out->aspect_ok = fabs(aspect / (16.0 / 9.0) - 1.0) <= 0.01;
    size_t n = (size_t)rgb->width * rgb->height;
    const uint8_t* px = rgb->data;
    double sum_rg = 0, sum_yb = 0, sq_rg = 0, sq_yb = 0, sum_s = 0;
    size_t coloured = 0;
    for (size_t i = 0; i < n; i++) {
        double R = px[3 * i], G = px[3 * i + 1], B = px[3 * i + 2];
        double rg = R - G, yb = 0.5 * (R + G) - B;
        sum_rg += rg;
        sum_yb += yb;
        sq_rg += rg * rg;
        sq_yb += yb * yb;
        double mx = R > G ? (R > B ? R : B) : (G > B ? G : B);
        double mn = R < G ? (R < B ? R : B) : (G < B ? G : B);
        double s = mx > 0 ? (mx - mn) / mx : 0.0;
        sum_s += s;
        coloured += s > BW_SATURATION;
    }
    double mean_rg = sum_rg / n, mean_yb = sum_yb / n;
    double var_rg = sq_rg / n - mean_rg * mean_rg, var_yb = sq_yb / n - mean_yb * mean_yb;
    // one-pass variance can dip a hair below zero for constant images
    var_rg = var_rg > 0 ? var_rg : 0;
    var_yb = var_yb > 0 ? var_yb : 0;
    out->colourfulness = sqrt(var_rg + var_yb) + 0.3 * sqrt(mean_rg * mean_rg + mean_yb * mean_yb);
    out->mean_saturation = sum_s / n;
    out->colour_pixels = (double)coloured / n;
    out->black_and_white = out->colourfulness < BW_MAX_COLOURFULNESS && out->colour_pixels < BW_MAX_COLOUR_PIXELS;
}

// ----------------------------------------------------------------------------
// LLM judge

static const char* skip_space(const char* s) {
    while (*s == ' ' || *s == '\t' || *s == '\r') s++;
    return s;
}

int judge_parse(const char* output, JudgeResult* out, char* err) {
    memset(out, 0, sizeof(*out));
    const char* line = output;
    while (*line) {
        const char* end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        const char* s = skip_space(line);
        if (*s == '{') { // {"score": 7, "reason": "..."}
            JsonDoc doc;
            char jerr[ERR_MAX];
            if (json_parse(&doc, s, len - (size_t)(s - line), jerr) == 0) {
                double score;
                int has = json_get_number(&doc.root, "score", &score);
                const char* reason = json_get_string(&doc.root, "reason");
                if (reason) snprintf(out->reason, sizeof(out->reason), "%s", reason);
                json_free(&doc);
                if (has) {
                    out->score = score;
                    goto check;
                }
            }
        } else if (strncasecmp(s, "score", 5) == 0) { // score: 7
            const char* v = skip_space(s + 5);
            if (*v == ':' || *v == '=') {
                char* num_end;
                out->score = strtod(v + 1, &num_end);
                if (num_end != v + 1) {
                    if (end) { // the next non-empty line, if any, is the reason
                        const char* r = end + 1;
                        while (*r == '\n' || *r == '\r') r++;
                        const char* r_end = strchr(r, '\n');
                        size_t r_len = r_end ? (size_t)(r_end - r) : strlen(r);
                        if (r_len >= sizeof(out->reason)) r_len = sizeof(out->reason) - 1;
                        memcpy(out->reason, r, r_len);
                        out->reason[r_len] = 0;
                    }
                    goto check;
                }
            }
        }
        if (!end) break;
        line = end + 1;
    }
    return set_error(err, "judge printed no score (expected {\"score\": n, ...} or \"score: n\")");
check:
    if (!(out->score >= 1.0 && out->score <= 10.0)) return set_error(err, "judge score %g is outside 1..10", out->score);
    return 0;
}

int judge_run(const char* cmd, const char* prompt, const char* image_path, JudgeResult* out, char* err) {
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) return set_error(err, "judge: pipe: %s", strerror(errno));
    // its stderr goes to a temporary file, so a failure can be reported with the command's own words
    FILE* errors = tmpfile();
    if (!errors) return set_error(err, "judge: tmpfile: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        fclose(errors);
        return set_error(err, "judge: fork: %s", strerror(errno));
    }
    if (pid == 0) {
        dup2(to_child[0], 0);
        dup2(from_child[1], 1);
        dup2(fileno(errors), 2);
        close(to_child[1]);
        close(from_child[0]);
        setenv("SDXL_JUDGE_IMAGE", image_path, 1);
        setenv("SDXL_JUDGE_PROMPT", prompt, 1);
        execl("/bin/sh", "sh", "-c", cmd, (char*)NULL);
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    // the prompt on stdin; a command that does not read it must not stall us
    void (*old)(int) = signal(SIGPIPE, SIG_IGN);
    ssize_t wrote = write(to_child[1], prompt, strlen(prompt));
    (void)wrote;
    close(to_child[1]);
    signal(SIGPIPE, old);
    size_t cap = 4096, n = 0;
    char* text = xmalloc(cap);
    ssize_t r;
    while ((r = read(from_child[0], text + n, cap - 1 - n)) > 0) {
        n += (size_t)r;
        if (n + 1 == cap) text = xrealloc(text, cap *= 2);
    }
    text[n] = 0;
    close(from_child[0]);
    int status;
    waitpid(pid, &status, 0);
    // the last non-empty line the command wrote to stderr
    char line[256] = "", last[256] = "";
    rewind(errors);
    while (fgets(line, sizeof(line), errors)) {
        line[strcspn(line, "\r\n")] = 0;
        if (line[0]) snprintf(last, sizeof(last), "%s", line);
    }
    fclose(errors);
    int rc;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        rc = set_error(err, "judge command exited with status %d%s%s", WIFEXITED(status) ? WEXITSTATUS(status) : 128,
                       last[0] ? ": " : "", last);
    else
        rc = judge_parse(text, out, err);
    free(text);
    return rc;
}

// ----------------------------------------------------------------------------
// Records

void eval_record_init(EvalRecord* r, const char* path, const char* prompt) {
    memset(r, 0, sizeof(*r));
    snprintf(r->path, sizeof(r->path), "%s", path);
    const char* slash = strrchr(path, '/');
    snprintf(r->name, sizeof(r->name), "%.255s", slash ? slash + 1 : path);
    r->prompt = xstrdup(prompt ? prompt : "");
    r->image.status = EVAL_DONE;
}

// The six evaluators' fields of a record, in report order, under the names the reports use.
#define EVALUATORS 6
static const char* const EVALUATOR_NAMES[EVALUATORS] = {"clip", "detection", "caption", "similarity", "interrogator", "judge"};
static EvalField* evaluator_field(EvalRecord* r, int k) {
    EvalField* fields[EVALUATORS] = {&r->clip, &r->detection, &r->caption, &r->similarity, &r->interrogator, &r->judge};
    return fields[k];
}
static const EvalField* evaluator_field_of(const EvalRecord* r, int k) { return evaluator_field((EvalRecord*)r, k); }

void eval_record_unreadable(EvalRecord* r, const char* why) {
    eval_field_fail(&r->image, "%s", why);
    memset(&r->style, 0, sizeof(r->style));
    for (int k = 0; k < EVALUATORS; k++) eval_field_skip(evaluator_field(r, k), "not run: the image could not be read");
}

void eval_record_free(EvalRecord* r) {
    free(r->prompt);
    free(r->boxes);
    free(r->objects);
    free(r->caption_text);
    free(r->interrogation);
    free(r->judge_reason);
    memset(r, 0, sizeof(*r));
}

static void field_set(EvalField* f, EvalStatus status, const char* fmt, va_list ap) {
    f->status = status;
    vsnprintf(f->note, sizeof(f->note), fmt, ap);
}

void eval_field_skip(EvalField* f, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    field_set(f, EVAL_SKIPPED, fmt, ap);
    va_end(ap);
}

void eval_field_fail(EvalField* f, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    field_set(f, EVAL_FAILED, fmt, ap);
    va_end(ap);
}

// ----------------------------------------------------------------------------
// StrBuf helpers for the report files (StrBuf is in common.h)

static void text_json_string(StrBuf* t, const char* s) {
    size_t need = json_escape(NULL, 0, s ? s : "");
    char* tmp = xmalloc(need + 1);
    json_escape(tmp, need + 1, s ? s : "");
    strbuf_printf(t, "%s", tmp);
    free(tmp);
}

static void text_html(StrBuf* t, const char* s) { // HTML-escaped text
    for (; s && *s; s++) {
        switch (*s) {
        case '<': strbuf_printf(t, "&lt;"); break;
        case '>': strbuf_printf(t, "&gt;"); break;
        case '&': strbuf_printf(t, "&amp;"); break;
        case '"': strbuf_printf(t, "&quot;"); break;
        default: strbuf_printf(t, "%c", *s);
        }
    }
}

static void text_csv(StrBuf* t, const char* s) { // RFC 4180: quote always, double the quotes
    strbuf_printf(t, "\"");
    for (; s && *s; s++) strbuf_printf(t, *s == '"' ? "\"\"" : "%c", *s);
    strbuf_printf(t, "\"");
}

static const char* status_name(EvalStatus s) { return s == EVAL_DONE ? "done" : s == EVAL_FAILED ? "failed" : "skipped"; }

// ----------------------------------------------------------------------------
// Summary

typedef struct {
    double sum;
    int n;
} Mean;

static void mean_add(Mean* m, double v) {
    m->sum += v;
    m->n++;
}

typedef struct {
    Mean clip_score, clip_cosine, objects_found, minilm, clip_text, judge, colourfulness, saturation, bw, size_ok;
    int images, unreadable; // every record; those whose image could not be read (in no mean)
} Summary;

// Every mean is over the images it was measured on: an unreadable image is in none (its style
// fields are zeros, not measurements), and an evaluator counts an image only when it ran there.
static Summary summarize(const EvalRecord* r, int n) {
    Summary s;
    memset(&s, 0, sizeof(s));
    s.images = n;
    for (int i = 0; i < n; i++) {
        if (r[i].image.status != EVAL_DONE) {
            s.unreadable++;
            continue;
        }
        if (r[i].clip.status == EVAL_DONE) {
            mean_add(&s.clip_score, r[i].clip_score);
            mean_add(&s.clip_cosine, r[i].clip_cosine);
        }
        if (r[i].detection.status == EVAL_DONE && r[i].n_objects > 0) {
            int found = 0;
            for (int k = 0; k < r[i].n_objects; k++) found += r[i].objects[k].found;
            mean_add(&s.objects_found, (double)found / r[i].n_objects);
        }
        if (r[i].similarity.status == EVAL_DONE) {
            if (!isnan(r[i].minilm_cosine)) mean_add(&s.minilm, r[i].minilm_cosine);
            if (r[i].has_clip_text_cosine) mean_add(&s.clip_text, r[i].clip_text_cosine);
        }
        if (r[i].judge.status == EVAL_DONE) mean_add(&s.judge, r[i].judge_score);
        mean_add(&s.colourfulness, r[i].style.colourfulness);
        mean_add(&s.saturation, r[i].style.mean_saturation);
        mean_add(&s.bw, r[i].style.black_and_white);
        mean_add(&s.size_ok, r[i].style.size_ok);
    }
    return s;
}

static const struct {
    const char* key;
    const char* title;
    size_t offset;
    const char* unit;
} summary_rows[] = {
    {"clip_score", "CLIP score (torchmetrics, 0-100)", offsetof(Summary, clip_score), ""},
    {"clip_cosine", "CLIP image-prompt cosine", offsetof(Summary, clip_cosine), ""},
    {"objects_found", "named objects found by YOLOv8", offsetof(Summary, objects_found), "%"},
    {"caption_minilm_cosine", "prompt-caption cosine (MiniLM)", offsetof(Summary, minilm), ""},
    {"caption_clip_text_cosine", "prompt-caption cosine (CLIP text)", offsetof(Summary, clip_text), ""},
    {"judge_score", "LLM judge score (1-10)", offsetof(Summary, judge), ""},
    {"colourfulness", "colourfulness (Hasler-Suesstrunk)", offsetof(Summary, colourfulness), ""},
    {"mean_saturation", "mean HSV saturation", offsetof(Summary, saturation), ""},
    {"black_and_white", "black-and-white verdicts", offsetof(Summary, bw), "%"},
    {"size_ok", "exact size", offsetof(Summary, size_ok), "%"},
};
#define SUMMARY_ROWS ((int)(sizeof(summary_rows) / sizeof(summary_rows[0])))

static const Mean* summary_mean(const Summary* s, int row) { return (const Mean*)((const char*)s + summary_rows[row].offset); }

// "3 images", or "3 of 5 images read (2 could not be read: in no mean)"
static void summary_count(const Summary* s, char* buf, size_t cap) {
    if (s->unreadable == 0) snprintf(buf, cap, "%d image%s", s->images, s->images == 1 ? "" : "s");
    else
        snprintf(buf, cap, "%d of %d images read (%d could not be read: in no mean)", s->images - s->unreadable, s->images,
                 s->unreadable);
}

void eval_print_summary(const EvalRecord* records, int n) {
    Summary s = summarize(records, n);
    char count[160];
    summary_count(&s, count, sizeof(count));
    printf("\nsummary over %s\n%-40s %10s %8s\n", count, "", "mean", "images");
    for (int row = 0; row < SUMMARY_ROWS; row++) {
        const Mean* m = summary_mean(&s, row);
        if (m->n == 0) {
            printf("%-40s %10s %8d\n", summary_rows[row].title, "n/a", 0); // skipped, or nothing to measure
        } else if (summary_rows[row].unit[0] == '%') {
            printf("%-40s %9.1f%% %8d\n", summary_rows[row].title, 100.0 * m->sum / m->n, m->n);
        } else {
            printf("%-40s %10.4f %8d\n", summary_rows[row].title, m->sum / m->n, m->n);
        }
    }
}

int eval_print_warnings(FILE* out, const EvalRecord* records, int n) {
    int unreadable = 0;
    for (int i = 0; i < n; i++)
        if (records[i].image.status != EVAL_DONE) {
            fprintf(out, "warning: %s\n", records[i].image.note);
            unreadable++;
        }
    // an evaluator that failed on a readable image: that image is out of its mean only
    for (int k = 0; k < EVALUATORS; k++) {
        int failed = 0, first = -1;
        for (int i = 0; i < n; i++)
            if (records[i].image.status == EVAL_DONE && evaluator_field_of(&records[i], k)->status == EVAL_FAILED) {
                if (first < 0) first = i;
                failed++;
            }
        if (failed)
            fprintf(out, "warning: %s failed on %d of %d images, left out of its means (first, %s: %s)\n", EVALUATOR_NAMES[k],
                    failed, n - unreadable, records[first].name, evaluator_field_of(&records[first], k)->note);
    }
    if (unreadable)
        fprintf(out, "warning: %d of %d images could not be read; they are in no mean, and the reports list them as failed\n",
                unreadable, n);
    return unreadable;
}

// ----------------------------------------------------------------------------
// report.json

static void json_field(StrBuf* t, const char* name, const EvalField* f) {
    strbuf_printf(t, "\"%s\": {\"status\": \"%s\", \"note\": ", name, status_name(f->status));
    text_json_string(t, f->note);
}

static void write_json(StrBuf* t, const EvalRecord* records, int n, const char* settings) {
    Summary s = summarize(records, n);
    strbuf_printf(t, "{\n  \"tool\": \"sdxl.c eval\",\n  \"settings\": ");
    text_json_string(t, settings);
    strbuf_printf(t, ",\n  \"images_total\": %d,\n  \"images_unreadable\": %d,\n  \"unreadable\": [", s.images, s.unreadable);
    for (int i = 0, k = 0; i < n; i++) {
        if (records[i].image.status == EVAL_DONE) continue;
        strbuf_printf(t, "%s\n    {\"file\": ", k++ ? "," : "");
        text_json_string(t, records[i].path);
        strbuf_printf(t, ", \"reason\": ");
        text_json_string(t, records[i].image.note);
        strbuf_printf(t, "}");
    }
    strbuf_printf(t, "%s],\n  \"summary\": {", s.unreadable ? "\n  " : "");
    for (int row = 0; row < SUMMARY_ROWS; row++) {
        const Mean* m = summary_mean(&s, row);
        strbuf_printf(t, "%s\n    \"%s\": ", row ? "," : "", summary_rows[row].key);
        if (m->n) strbuf_printf(t, "{\"mean\": %.6g, \"images\": %d}", m->sum / m->n, m->n);
        else strbuf_printf(t, "{\"mean\": null, \"images\": 0, \"note\": \"no image has this value: evaluator skipped, or nothing to measure\"}");
    }
    strbuf_printf(t, "\n  },\n  \"images\": [");
    for (int i = 0; i < n; i++) {
        const EvalRecord* r = &records[i];
        const StyleReport* st = &r->style;
        strbuf_printf(t, "%s\n    {\"file\": ", i ? "," : "");
        text_json_string(t, r->path);
        strbuf_printf(t, ", \"prompt\": ");
        text_json_string(t, r->prompt);
        strbuf_printf(t, ",\n     ");
        json_field(t, "image", &r->image);
        strbuf_printf(t, "},");
        if (r->image.status != EVAL_DONE) {
            strbuf_printf(t, "\n     \"style\": null,"); // nothing was measured
        } else {
            strbuf_printf(t, "\n     \"style\": {\"width\": %d, \"height\": %d, \"size_ok\": %s, \"aspect_16_9\": %s, "
                        "\"colourfulness\": %.4f, \"mean_saturation\": %.4f, \"colour_pixels\": %.4f, \"black_and_white\": %s},",
                     st->width, st->height, st->size_ok ? "true" : "false", st->aspect_ok ? "true" : "false",
                     st->colourfulness, st->mean_saturation, st->colour_pixels, st->black_and_white ? "true" : "false");
        }
        strbuf_printf(t, "\n     ");
        json_field(t, "clip", &r->clip);
        if (r->clip.status == EVAL_DONE) strbuf_printf(t, ", \"score\": %.4f, \"cosine\": %.6f", r->clip_score, r->clip_cosine);
        strbuf_printf(t, "},\n     ");
        json_field(t, "detection", &r->detection);
        if (r->detection.status == EVAL_DONE) {
            strbuf_printf(t, ", \"objects\": [");
            for (int k = 0; k < r->n_objects; k++) {
                const EvalObject* o = &r->objects[k];
                strbuf_printf(t, "%s{\"word\": ", k ? ", " : "");
                text_json_string(t, o->word);
                strbuf_printf(t, ", \"class\": ");
                text_json_string(t, o->label);
                strbuf_printf(t, ", \"found\": %s, \"best_confidence\": %.4f}", o->found ? "true" : "false", o->best_confidence);
            }
            strbuf_printf(t, "], \"boxes\": [");
            for (int k = 0; k < r->n_boxes; k++) {
                const EvalBox* b = &r->boxes[k];
                strbuf_printf(t, "%s{\"class\": ", k ? ", " : "");
                text_json_string(t, b->label);
                strbuf_printf(t, ", \"confidence\": %.4f, \"xyxy\": [%.1f, %.1f, %.1f, %.1f]}", b->confidence, b->x0, b->y0, b->x1, b->y1);
            }
            strbuf_printf(t, "]");
        }
        strbuf_printf(t, "},\n     ");
        json_field(t, "caption", &r->caption);
        if (r->caption.status == EVAL_DONE) {
            strbuf_printf(t, ", \"text\": ");
            text_json_string(t, r->caption_text);
        }
        strbuf_printf(t, "},\n     ");
        json_field(t, "similarity", &r->similarity);
        if (r->similarity.status == EVAL_DONE) {
            if (!isnan(r->minilm_cosine)) strbuf_printf(t, ", \"minilm_cosine\": %.6f", r->minilm_cosine);
            if (r->has_clip_text_cosine) strbuf_printf(t, ", \"clip_text_cosine\": %.6f", r->clip_text_cosine);
        }
        strbuf_printf(t, "},\n     ");
        json_field(t, "interrogator", &r->interrogator);
        if (r->interrogator.status == EVAL_DONE) {
            strbuf_printf(t, ", \"prompt\": ");
            text_json_string(t, r->interrogation);
        }
        strbuf_printf(t, "},\n     ");
        json_field(t, "judge", &r->judge);
        if (r->judge.status == EVAL_DONE) {
            strbuf_printf(t, ", \"score\": %.2f, \"reason\": ", r->judge_score);
            text_json_string(t, r->judge_reason);
        }
        strbuf_printf(t, "}}");
    }
    strbuf_printf(t, "\n  ]\n}\n");
}

// ----------------------------------------------------------------------------
// report.csv: one row per image; a skipped or failed evaluator's columns say so, and so do the
// style columns of an image that could not be read

static void csv_number(StrBuf* t, const EvalField* f, double v, const char* fmt) {
    if (f->status == EVAL_DONE) strbuf_printf(t, fmt, v);
    else strbuf_printf(t, "%s", status_name(f->status));
}

static void write_csv(StrBuf* t, const EvalRecord* records, int n) {
    strbuf_printf(t, "file,prompt,width,height,size_ok,aspect_16_9,colourfulness,mean_saturation,colour_pixels,black_and_white,"
                "clip_score,clip_cosine,objects_found,objects_missing,detections,caption,minilm_cosine,clip_text_cosine,"
                "interrogation,judge_score,judge_reason,notes\r\n");
    for (int i = 0; i < n; i++) {
        const EvalRecord* r = &records[i];
        const StyleReport* st = &r->style;
        text_csv(t, r->path);
        strbuf_printf(t, ",");
        text_csv(t, r->prompt);
        // an unreadable image: its style cells say "failed" (no zeros that read as measurements),
        // and the notes column says why
        if (r->image.status != EVAL_DONE)
            strbuf_printf(t, ",failed,failed,failed,failed,failed,failed,failed,failed,");
        else
            strbuf_printf(t, ",%d,%d,%s,%s,%.4f,%.4f,%.4f,%s,", st->width, st->height, st->size_ok ? "yes" : "no",
                     st->aspect_ok ? "yes" : "no", st->colourfulness, st->mean_saturation, st->colour_pixels,
                     st->black_and_white ? "yes" : "no");
        csv_number(t, &r->clip, r->clip_score, "%.4f");
        strbuf_printf(t, ",");
        csv_number(t, &r->clip, r->clip_cosine, "%.6f");
        strbuf_printf(t, ",");
        if (r->detection.status == EVAL_DONE) {
            StrBuf found = {0}, missing = {0}, boxes = {0};
            strbuf_printf(&found, "%s", "");
            strbuf_printf(&missing, "%s", "");
            strbuf_printf(&boxes, "%s", "");
            for (int k = 0; k < r->n_objects; k++) {
                StrBuf* dst = r->objects[k].found ? &found : &missing;
                strbuf_printf(dst, "%s%s", dst->len ? "; " : "", r->objects[k].word);
                if (r->objects[k].found) strbuf_printf(dst, " (%s %.2f)", r->objects[k].label, r->objects[k].best_confidence);
            }
            for (int k = 0; k < r->n_boxes; k++)
                strbuf_printf(&boxes, "%s%s %.2f", boxes.len ? "; " : "", r->boxes[k].label, r->boxes[k].confidence);
            text_csv(t, found.s);
            strbuf_printf(t, ",");
            text_csv(t, missing.s);
            strbuf_printf(t, ",");
            text_csv(t, boxes.s);
            free(found.s);
            free(missing.s);
            free(boxes.s);
        } else {
            strbuf_printf(t, "%s,%s,%s", status_name(r->detection.status), status_name(r->detection.status),
                     status_name(r->detection.status));
        }
        strbuf_printf(t, ",");
        if (r->caption.status == EVAL_DONE) text_csv(t, r->caption_text);
        else strbuf_printf(t, "%s", status_name(r->caption.status));
        strbuf_printf(t, ",");
        if (r->similarity.status == EVAL_DONE && isnan(r->minilm_cosine)) strbuf_printf(t, "skipped");
        else csv_number(t, &r->similarity, r->minilm_cosine, "%.6f");
        strbuf_printf(t, ",");
        if (r->similarity.status == EVAL_DONE && r->has_clip_text_cosine) strbuf_printf(t, "%.6f", r->clip_text_cosine);
        else strbuf_printf(t, "skipped");
        strbuf_printf(t, ",");
        if (r->interrogator.status == EVAL_DONE) text_csv(t, r->interrogation);
        else strbuf_printf(t, "%s", status_name(r->interrogator.status));
        strbuf_printf(t, ",");
        csv_number(t, &r->judge, r->judge_score, "%.2f");
        strbuf_printf(t, ",");
        if (r->judge.status == EVAL_DONE) text_csv(t, r->judge_reason);
        else strbuf_printf(t, "%s", status_name(r->judge.status));
        // the notes column: why each skipped or failed evaluator did not run
        StrBuf notes = {0};
        strbuf_printf(&notes, "%s", "");
        if (r->image.status != EVAL_DONE) strbuf_printf(&notes, "image: %s", r->image.note); // no evaluator ran: that is all
        for (int k = 0; k < EVALUATORS && r->image.status == EVAL_DONE; k++) {
            const EvalField* f = evaluator_field_of(r, k);
            if (f->status != EVAL_DONE && f->note[0]) strbuf_printf(&notes, "%s%s: %s", notes.len ? "; " : "", EVALUATOR_NAMES[k], f->note);
        }
        strbuf_printf(t, ",");
        text_csv(t, notes.s);
        free(notes.s);
        strbuf_printf(t, "\r\n");
    }
}

// ----------------------------------------------------------------------------
// report.html: a contact sheet

static void base64(StrBuf* t, const uint8_t* data, size_t n) {
    static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (i + 1 < n ? (uint32_t)data[i + 1] << 8 : 0) | (i + 2 < n ? data[i + 2] : 0);
        strbuf_printf(t, "%c%c%c%c", table[v >> 18 & 63], table[v >> 12 & 63], i + 1 < n ? table[v >> 6 & 63] : '=',
                 i + 2 < n ? table[v & 63] : '=');
    }
}

static void html_field_note(StrBuf* t, const char* what, const EvalField* f) {
    strbuf_printf(t, "<div class=\"row muted\"><b>%s</b> %s: ", what, status_name(f->status));
    text_html(t, f->note);
    strbuf_printf(t, "</div>\n");
}

static const char* HTML_STYLE =
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;background:#f4f4f2;color:#222}"
    "h1{font-size:22px;margin:0 0 4px}p.sub{color:#666;margin:0 0 16px}"
    "table.summary{border-collapse:collapse;margin:0 0 20px;background:#fff}"
    "table.summary td,table.summary th{border:1px solid #ddd;padding:4px 10px;font-size:13px;text-align:left}"
    "table.summary td.num{text-align:right;font-variant-numeric:tabular-nums}"
    ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:16px}"
    ".card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;font-size:13px}"
    ".thumb{position:relative;line-height:0}.thumb img{width:100%;border:1px solid #ccc}"
    ".thumb svg{position:absolute;left:0;top:0;width:100%;height:100%}"
    ".name{font-weight:600;margin:8px 0 2px}.prompt{color:#333;margin:0 0 6px}"
    ".row{margin:2px 0}.muted{color:#888}"
    ".badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;margin-right:4px;color:#fff}"
    ".ok{background:#2e7d32}.bad{background:#c62828}.skip{background:#999}"
    ".found{color:#2e7d32}.missing{color:#c62828}.card.failed{border:2px solid #c62828}";

static void write_html(StrBuf* t, const EvalRecord* records, int n, const Image* thumbs, const char* settings) {
    Summary s = summarize(records, n);
    strbuf_printf(t, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<title>sdxl.c evaluation report</title><style>%s</style></head><body>\n", HTML_STYLE);
    char count[160];
    summary_count(&s, count, sizeof(count));
    strbuf_printf(t, "<h1>Storyboard thumbnails: evaluation report</h1>\n<p class=\"sub\">%s &middot; ", count);
    text_html(t, settings);
    strbuf_printf(t, "</p>\n<table class=\"summary\"><tr><th>measure</th><th>mean</th><th>images</th></tr>\n");
    for (int row = 0; row < SUMMARY_ROWS; row++) {
        const Mean* m = summary_mean(&s, row);
        strbuf_printf(t, "<tr><td>%s</td>", summary_rows[row].title);
        if (!m->n) strbuf_printf(t, "<td class=\"num muted\">n/a</td><td class=\"num\">0</td></tr>\n");
        else if (summary_rows[row].unit[0] == '%') strbuf_printf(t, "<td class=\"num\">%.1f%%</td><td class=\"num\">%d</td></tr>\n", 100.0 * m->sum / m->n, m->n);
        else strbuf_printf(t, "<td class=\"num\">%.4f</td><td class=\"num\">%d</td></tr>\n", m->sum / m->n, m->n);
    }
    strbuf_printf(t, "</table>\n<div class=\"grid\">\n");
    for (int i = 0; i < n; i++) {
        const EvalRecord* r = &records[i];
        const StyleReport* st = &r->style;
        strbuf_printf(t, "<div class=\"card%s\">\n<div class=\"thumb\">", r->image.status == EVAL_DONE ? "" : " failed");
        uint8_t* png = NULL;
        size_t png_size = 0;
        char err[ERR_MAX];
        if (thumbs && thumbs[i].data && png_encode(&thumbs[i], &png, &png_size, err) == 0) {
            strbuf_printf(t, "<img alt=\"");
            text_html(t, r->name);
            strbuf_printf(t, "\" src=\"data:image/png;base64,");
            base64(t, png, png_size);
            strbuf_printf(t, "\">");
            free(png);
            // detections in the image's own pixels; the viewBox scales them onto the thumbnail
            if (r->detection.status == EVAL_DONE && r->n_boxes > 0) {
                strbuf_printf(t, "<svg viewBox=\"0 0 %d %d\" preserveAspectRatio=\"none\">", st->width, st->height);
                double font = st->height / 26.0, line = font * 1.15;
                double* label_top = xmalloc(sizeof(double) * 4 * (size_t)r->n_boxes); // x0, y0, x1, y1 of placed labels
                for (int k = 0; k < r->n_boxes; k++) {
                    const EvalBox* b = &r->boxes[k];
                    // each label starts at its box's top-left corner and moves down a line while it
                    // would cover a label already drawn (overlapping boxes share corners)
                    double lx0 = b->x0 + 4, lx1 = lx0 + font * 0.6 * (strlen(b->label) + 5), ly0 = b->y0 + 2;
                    for (int moved = 1; moved && ly0 + line < st->height;) {
                        moved = 0;
                        for (int q = 0; q < k; q++) {
                            const double* o = &label_top[4 * q];
                            if (lx0 < o[2] && o[0] < lx1 && ly0 < o[3] && o[1] < ly0 + line) {
                                ly0 = o[3];
                                moved = 1;
                            }
                        }
                    }
                    label_top[4 * k + 0] = lx0;
                    label_top[4 * k + 1] = ly0;
                    label_top[4 * k + 2] = lx1;
                    label_top[4 * k + 3] = ly0 + line;
                    // a white halo under the letters keeps them readable on any picture
                    strbuf_printf(t, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#ff1744\" "
                                "stroke-width=\"%.1f\"/><text x=\"%.1f\" y=\"%.1f\" fill=\"#ff1744\" stroke=\"#fff\" "
                                "stroke-width=\"%.1f\" paint-order=\"stroke\" font-size=\"%.1f\" font-family=\"sans-serif\">%s %.2f</text>",
                             b->x0, b->y0, b->x1 - b->x0, b->y1 - b->y0, st->width / 300.0, lx0, ly0 + font * 0.9,
                             font / 5.0, font, b->label, b->confidence);
                }
                free(label_top);
                strbuf_printf(t, "</svg>");
            }
        }
        strbuf_printf(t, "</div>\n<div class=\"name\">");
        text_html(t, r->name);
        if (r->image.status != EVAL_DONE) { // a failed card: the reason, nothing measured
            strbuf_printf(t, "</div>\n<div class=\"prompt\">");
            text_html(t, r->prompt);
            strbuf_printf(t, "</div>\n<div class=\"row\"><span class=\"badge bad\">failed</span>could not be read: ");
            text_html(t, r->image.note);
            strbuf_printf(t, "</div>\n<div class=\"row muted\">in no mean of the summary</div>\n</div>\n");
            continue;
        }
        strbuf_printf(t, " &middot; %dx%d</div>\n<div class=\"prompt\">", st->width, st->height);
        text_html(t, r->prompt);
        strbuf_printf(t, "</div>\n<div class=\"row\"><span class=\"badge %s\">%s</span><span class=\"badge %s\">%s</span>"
                    "<span class=\"badge %s\">16:9 %s</span></div>\n",
                 st->black_and_white ? "ok" : "bad", st->black_and_white ? "black &amp; white" : "colour",
                 st->size_ok ? "ok" : "bad", st->size_ok ? "exact size" : "wrong size", st->aspect_ok ? "ok" : "bad",
                 st->aspect_ok ? "yes" : "no");
        strbuf_printf(t, "<div class=\"row\">colourfulness %.2f &middot; mean saturation %.3f &middot; coloured pixels %.2f%%</div>\n",
                 st->colourfulness, st->mean_saturation, 100.0 * st->colour_pixels);
        if (r->clip.status == EVAL_DONE)
            strbuf_printf(t, "<div class=\"row\"><b>CLIP score</b> %.2f (cosine %.4f)</div>\n", r->clip_score, r->clip_cosine);
        else html_field_note(t, "CLIP score", &r->clip);
        if (r->detection.status == EVAL_DONE) {
            strbuf_printf(t, "<div class=\"row\"><b>objects</b> ");
            if (r->n_objects == 0) strbuf_printf(t, "<span class=\"muted\">the prompt names no COCO object</span>");
            for (int k = 0; k < r->n_objects; k++) {
                const EvalObject* o = &r->objects[k];
                strbuf_printf(t, "%s<span class=\"%s\">", k ? ", " : "", o->found ? "found" : "missing");
                text_html(t, o->word);
                if (o->found) strbuf_printf(t, " &#10003; %.2f</span>", o->best_confidence);
                else strbuf_printf(t, " &#10007;</span>");
            }
            strbuf_printf(t, " &middot; %d detections</div>\n", r->n_boxes);
        } else html_field_note(t, "objects", &r->detection);
        if (r->caption.status == EVAL_DONE) {
            strbuf_printf(t, "<div class=\"row\"><b>caption</b> &ldquo;");
            text_html(t, r->caption_text);
            strbuf_printf(t, "&rdquo;</div>\n");
        } else html_field_note(t, "caption", &r->caption);
        if (r->similarity.status == EVAL_DONE) {
            strbuf_printf(t, "<div class=\"row\"><b>prompt&ndash;caption</b> ");
            if (isnan(r->minilm_cosine)) strbuf_printf(t, "MiniLM <span class=\"muted\">skipped</span>");
            else strbuf_printf(t, "MiniLM %.4f", r->minilm_cosine);
            if (r->has_clip_text_cosine) strbuf_printf(t, " &middot; CLIP text %.4f", r->clip_text_cosine);
            strbuf_printf(t, "</div>\n");
        } else html_field_note(t, "prompt&ndash;caption", &r->similarity);
        if (r->interrogator.status == EVAL_DONE) {
            strbuf_printf(t, "<div class=\"row\"><b>interrogator</b> ");
            text_html(t, r->interrogation);
            if (r->interrogator.note[0]) {
                strbuf_printf(t, " <span class=\"muted\">(");
                text_html(t, r->interrogator.note);
                strbuf_printf(t, ")</span>");
            }
            strbuf_printf(t, "</div>\n");
        } else html_field_note(t, "interrogator", &r->interrogator);
        if (r->judge.status == EVAL_DONE) {
            strbuf_printf(t, "<div class=\"row\"><b>judge</b> %.1f / 10 ", r->judge_score);
            text_html(t, r->judge_reason);
            strbuf_printf(t, "</div>\n");
        } else html_field_note(t, "judge", &r->judge);
        strbuf_printf(t, "</div>\n");
    }
    strbuf_printf(t, "</div>\n</body></html>\n");
}

int eval_write_reports(const char* dir, const EvalRecord* records, int n, const Image* thumbs, const char* settings,
                       char* err) {
    struct {
        const char* file;
        int kind;
    } files[] = {{"report.json", 0}, {"report.csv", 1}, {"report.html", 2}};
    for (int f = 0; f < 3; f++) {
        StrBuf t = {0};
        if (files[f].kind == 0) write_json(&t, records, n, settings);
        else if (files[f].kind == 1) write_csv(&t, records, n);
        else write_html(&t, records, n, thumbs, settings);
        char path[4200];
        snprintf(path, sizeof(path), "%s/%s", dir, files[f].file);
        int rc = write_file_atomic(path, t.s, t.len, err);
        free(t.s);
        if (rc != 0) return -1;
    }
    return 0;
}

// ----------------------------------------------------------------------------
// The whole evaluation

// text without its <lora:...> tags, in one left-to-right pass (as A1111's re.sub of its extra
// networks: a tag that a removal brings together is not removed again). Rescanning from the
// start after each removal would be quadratic in the number of tags.
static void append_without_lora_tags(StrBuf* out, const char* text) {
    size_t n = strlen(text), copied = 0; // text[0..copied) is done
    for (size_t i = 0; i + 6 <= n; i++) {
        if (memcmp(text + i, "<lora:", 6) != 0) continue;
        size_t end = i + 6;
        while (end < n && text[end] != '>') end++;
        if (end == n) break; // no complete tag left
        strbuf_append(out, text + copied, i - copied);
        copied = end + 1;
        i = end; // the loop's i++ moves past the '>'
    }
    strbuf_append(out, text + copied, n - copied);
}

char* eval_plain_prompt(const char* prompt) {
    // A1111's parser resolves brackets, weights and escapes; the text of its segments is what the
    // prompt says. <lora:name:w> tags are A1111 syntax too, not words of the prompt.
    PromptAttention pa;
    char err[ERR_MAX];
    StrBuf text = {0}, plain = {0};
    strbuf_cat(&text, "");
    strbuf_cat(&plain, "");
    if (prompt_parse_attention(prompt, &pa, err) != 0) { // an unparseable weight, a limit: keep the text
        strbuf_cat(&text, prompt);
    } else {
        for (int i = 0; i < pa.n; i++) {
            int is_break = strcmp(pa.segments[i].text, "BREAK") == 0 && pa.segments[i].weight == PROMPT_BREAK_WEIGHT;
            strbuf_cat(&text, is_break ? " " : pa.segments[i].text); // BREAK took the spaces around it
        }
        prompt_attention_free(&pa);
    }
    append_without_lora_tags(&plain, text.s);
    free(text.s);
    // collapse the spaces and commas removal can leave
    char *out = plain.s, *w = out;
    for (char* r = out; *r; r++) {
        if (*r == ' ' && (w == out || w[-1] == ' ')) continue;
        *w++ = *r;
    }
    while (w > out && (w[-1] == ' ' || w[-1] == ',')) w--;
    *w = 0;
    return out;
}

// The prompt a PNG of `sdxl generate` (or AUTOMATIC1111) carries: its `parameters` text up to
// the "Negative prompt:" or settings line.
static char* prompt_from_png(const Image* img) {
    const char* p = image_get_text(img, "parameters");
    if (!p) return NULL;
    const char* end = strstr(p, "\nNegative prompt:");
    const char* steps = strstr(p, "\nSteps:");
    if (!end || (steps && steps < end)) end = steps;
    size_t n = end ? (size_t)(end - p) : strlen(p);
    char* s = xmalloc(n + 1);
    memcpy(s, p, n);
    s[n] = 0;
    return s;
}

static int has_png_suffix(const char* name) {
    size_t n = strlen(name);
    return n > 4 && strcasecmp(name + n - 4, ".png") == 0;
}

static int compare_names(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

// The PNG files of dir, sorted by name.
static int list_pngs(const char* dir, char*** out, int* count, char* err) {
    DIR* d = opendir(dir);
    if (!d) return set_error(err, "%s: %s", dir, strerror(errno));
    int cap = 16, n = 0;
    char** names = xmalloc(sizeof(char*) * cap);
    struct dirent* e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !has_png_suffix(e->d_name)) continue;
        if (n == cap) names = xrealloc(names, sizeof(char*) * (cap *= 2));
        names[n++] = xstrdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(char*), compare_names);
    *out = names;
    *count = n;
    if (n == 0) {
        free(names);
        return set_error(err, "%s: no .png images", dir);
    }
    return 0;
}

// The loaded evaluators; a NULL path leaves one out.
typedef struct {
    ClipModel clip;
    int has_clip;
    Yolo yolo;
    int has_yolo;
    Blip blip;
    int has_blip;
    MiniLM minilm;
    int has_minilm;
    ClipLabelTable tables[5]; // mediums, artists, movements, trendings, flavors
    int has_tables;
    ClipInterrogator ci;
} Evaluators;

static int load_interrogator_lists(Evaluators* ev, const EvalOptions* o, char* err) {
    static const char* files[5] = {"mediums.txt", "artists.txt", "movements.txt", NULL, "flavors.txt"};
    static const char* names[5] = {"mediums", "artists", "movements", "trendings", "flavors"};
    static const char* const artist_templates[2] = {"by {}", "inspired by {}"};
    static const char* const trending_templates[4] = {"{}", "trending on {}", "featured on {}", "{} contest winner"};
    char cache[4200];
    snprintf(cache, sizeof(cache), "%s", o->cache_dir ? o->cache_dir : "");
    if (!o->cache_dir) {
        snprintf(cache, sizeof(cache), "%s/cache", o->lists_dir);
        mkdir(cache, 0755); // an existing folder is fine; the cache writer reports anything else
    }
    for (int k = 0; k < 5; k++) {
        char** labels;
        int count;
        if (files[k]) {
            char path[4400];
            snprintf(path, sizeof(path), "%s/%s", o->lists_dir, files[k]);
            int rc = k == 1 ? clip_labels_read(path, artist_templates, 2, &labels, &count, err)
                            : clip_labels_read(path, NULL, 0, &labels, &count, err);
            if (rc != 0) return -1;
        } else { // trendings: 0.6.0 builds them from its list of sites
            count = 18 * 4;
            labels = xmalloc(sizeof(char*) * count);
            for (int t = 0; t < 4; t++)
                for (int s = 0; s < 18; s++) {
                    char buf[256];
                    const char* tpl = trending_templates[t];
                    const char* at = strstr(tpl, "{}");
                    snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(at - tpl), tpl, CLIP_INTERROGATOR_SITES[s], at + 2);
                    labels[t * 18 + s] = xstrdup(buf);
                }
        }
        int rc = clip_label_table_build(&ev->tables[k], &ev->clip, names[k], (const char* const*)labels, count, cache, err);
        clip_labels_free(labels, count);
        if (rc != 0) return -1;
    }
    ev->ci.mediums = &ev->tables[0];
    ev->ci.artists = &ev->tables[1];
    ev->ci.movements = &ev->tables[2];
    ev->ci.trendings = &ev->tables[3];
    ev->ci.flavors = &ev->tables[4];
    ev->ci.chunk_size = 2048;
    ev->has_tables = 1;
    return 0;
}

static void evaluators_free(Evaluators* ev) {
    if (ev->has_tables)
        for (int k = 0; k < 5; k++) clip_label_table_free(&ev->tables[k]);
    if (ev->has_clip) clip_model_free(&ev->clip);
    if (ev->has_yolo) yolo_free(&ev->yolo);
    if (ev->has_blip) blip_free(&ev->blip);
    if (ev->has_minilm) minilm_free(&ev->minilm);
}

#define EVAL_MAX_DETECTIONS 300 // ultralytics' max_det
#define EVAL_MAX_OBJECTS 64
#define THUMB_WIDTH 480

static void evaluate_one(const Evaluators* ev, const EvalOptions* o, const Image* rgb, EvalRecord* r) {
    char err[ERR_MAX];
    style_check(rgb, o->width, o->height, &r->style);
    // CLIP: cosine of image and prompt embeddings, and torchmetrics' score of the one pair
    float image_embed[2048], prompt_embed[2048];
    int clip_dim = ev->has_clip ? ev->clip.vision.cfg.projection_dim : 0;
    int have_image_embed = 0, have_prompt_embed = 0;
    if (!ev->has_clip) {
        eval_field_skip(&r->clip, "no --clip model given");
    } else if (clip_dim > 2048) {
        eval_field_fail(&r->clip, "projection_dim %d is larger than this build handles", clip_dim);
    } else {
        const Image* imgs[1] = {rgb};
        const char* texts[1] = {r->prompt};
        int n_tokens = 0;
        if (clip_encode_images(&ev->clip, imgs, 1, CLIP_CROP_FLOOR, image_embed, err) != 0 ||
            clip_encode_texts(&ev->clip, texts, 1, CLIP_PROMPT_TRUNCATE, prompt_embed, &n_tokens, err) != 0) {
            eval_field_fail(&r->clip, "%s", err);
        } else {
            have_image_embed = have_prompt_embed = 1;
            r->clip_cosine = clip_cosine(image_embed, prompt_embed, clip_dim);
            float cos = (float)r->clip_cosine;
            r->clip_score = clip_score_from_cosines(&cos, 1);
            r->clip.status = EVAL_DONE;
            if (n_tokens > 75) snprintf(r->clip.note, sizeof(r->clip.note), "prompt of %d tokens cut to CLIP's 75", n_tokens);
        }
    }
    // YOLOv8: what the prompt names, found or not
    if (!ev->has_yolo) {
        eval_field_skip(&r->detection, "no --yolo model given");
    } else {
        YoloDetection* dets = xmalloc(sizeof(YoloDetection) * EVAL_MAX_DETECTIONS);
        int n = yolo_detect(&ev->yolo, rgb, dets, EVAL_MAX_DETECTIONS, NULL, err);
        if (n < 0) {
            eval_field_fail(&r->detection, "%s", err);
        } else {
            r->boxes = xcalloc((size_t)n + 1, sizeof(EvalBox));
            r->n_boxes = n;
            for (int k = 0; k < n; k++) {
                EvalBox* b = &r->boxes[k];
                snprintf(b->label, sizeof(b->label), "%s", ev->yolo.names ? ev->yolo.names[dets[k].cls] : yolo_coco_name(dets[k].cls));
                b->confidence = dets[k].conf;
                b->x0 = dets[k].x1;
                b->y0 = dets[k].y1;
                b->x1 = dets[k].x2;
                b->y1 = dets[k].y2;
            }
            YoloObject objs[EVAL_MAX_OBJECTS];
            int n_objs = yolo_prompt_objects(r->prompt, objs, EVAL_MAX_OBJECTS);
            yolo_object_presence(objs, n_objs, dets, n, (const char* const*)ev->yolo.names, ev->yolo.cfg.nc);
            r->objects = xcalloc((size_t)n_objs + 1, sizeof(EvalObject));
            r->n_objects = n_objs;
            for (int k = 0; k < n_objs; k++) {
                snprintf(r->objects[k].word, sizeof(r->objects[k].word), "%s", objs[k].word);
                snprintf(r->objects[k].label, sizeof(r->objects[k].label), "%s", yolo_coco_name(objs[k].cls));
                r->objects[k].found = objs[k].found;
                r->objects[k].best_confidence = objs[k].best_conf;
            }
            r->detection.status = EVAL_DONE;
            if (n_objs == 0) snprintf(r->detection.note, sizeof(r->detection.note), "the prompt names no COCO object");
        }
        free(dets);
    }
    // BLIP caption, and how close it is to the prompt
    if (!ev->has_blip) {
        eval_field_skip(&r->caption, "no --blip model given");
    } else {
        char caption[1024];
        BlipGenerateParams gp = blip_default_params();
        gp.num_beams = o->beams;
        if (blip_caption(&ev->blip, rgb, NULL, &gp, caption, sizeof(caption), err) != 0) eval_field_fail(&r->caption, "%s", err);
        else {
            r->caption_text = xstrdup(caption);
            r->caption.status = EVAL_DONE;
        }
    }
    if (r->caption.status != EVAL_DONE) {
        eval_field_skip(&r->similarity, "no caption (%s)", r->caption.status == EVAL_FAILED ? "BLIP failed" : "no --blip model given");
    } else if (!ev->has_minilm && !ev->has_clip) {
        eval_field_skip(&r->similarity, "no --minilm or --clip model given");
    } else {
        if (ev->has_minilm) r->minilm_cosine = minilm_similarity(&ev->minilm, r->prompt, r->caption_text);
        else snprintf(r->similarity.note, sizeof(r->similarity.note), "MiniLM skipped: no --minilm model given");
        if (have_prompt_embed) {
            float caption_embed[2048];
            const char* texts[1] = {r->caption_text};
            if (clip_encode_texts(&ev->clip, texts, 1, CLIP_PROMPT_TRUNCATE, caption_embed, NULL, err) == 0) {
                r->clip_text_cosine = clip_cosine(prompt_embed, caption_embed, clip_dim);
                r->has_clip_text_cosine = 1;
            } else { // out of the CLIP-text mean, and the note says why
                size_t len = strlen(r->similarity.note);
                snprintf(r->similarity.note + len, sizeof(r->similarity.note) - len, "%sCLIP text cosine failed: %s",
                         len ? "; " : "", err);
            }
        }
        if (!ev->has_minilm) r->minilm_cosine = NAN;
        r->similarity.status = EVAL_DONE;
    }
    // CLIP interrogator, with the caption when there is one
    if (!ev->has_tables) {
        eval_field_skip(&r->interrogator, ev->has_clip ? "no --interrogator-lists given" : "needs --clip and --interrogator-lists");
    } else if (!have_image_embed) {
        eval_field_skip(&r->interrogator, "no image embedding (CLIP failed)");
    } else {
        float features[2048];
        memcpy(features, image_embed, sizeof(float) * clip_dim);
        clip_normalize(features, 1, clip_dim);
        char* prompt = NULL;
        const char* caption = r->caption_text ? r->caption_text : "";
        int rc = strcmp(o->interrogate, "classic") == 0
                     ? clip_interrogate_classic(&ev->clip, &ev->ci, features, caption, 3, &prompt, err)
                     : clip_interrogate_fast(&ev->clip, &ev->ci, features, caption, 32, &prompt, err);
        if (rc != 0) eval_field_fail(&r->interrogator, "%s", err);
        else {
            // clip-interrogator always has a caption; without --blip ours starts with the labels
            if (!caption[0] && strncmp(prompt, ", ", 2) == 0) memmove(prompt, prompt + 2, strlen(prompt + 2) + 1);
            if (!caption[0])
                snprintf(r->interrogator.note, sizeof(r->interrogator.note), "labels only: no BLIP caption to start from");
            else if (strcmp(prompt, caption) == 0)
                snprintf(r->interrogator.note, sizeof(r->interrogator.note), "the caption fills CLIP's 77 tokens: no label fits");
            r->interrogation = prompt;
            r->interrogator.status = EVAL_DONE;
        }
    }
    // the LLM judge
    if (!o->judge_cmd) {
        eval_field_skip(&r->judge, "no --judge-cmd given");
    } else {
        JudgeResult j;
        if (judge_run(o->judge_cmd, r->prompt, r->path, &j, err) != 0) eval_field_fail(&r->judge, "%s", err);
        else {
            r->judge_score = j.score;
            r->judge_reason = xstrdup(j.reason);
            r->judge.status = EVAL_DONE;
        }
    }
}

int eval_run(const EvalOptions* o, char* err) {
    char** files = NULL;
    int n = 0;
    if (list_pngs(o->images_dir, &files, &n, err) != 0) return -1;
    char** prompts = NULL;
    int n_prompts = 0, rc = 0;
    if (o->prompts_file) {
        rc = read_lines(o->prompts_file, &prompts, &n_prompts, err);
        if (rc == 0 && n_prompts != n)
            rc = set_error(err, "%s: %d prompts for %d images in %s (one prompt per line, in the images' name order)",
                           o->prompts_file, n_prompts, n, o->images_dir);
    }
    // every path checked before any evaluator loads: the report folder and its three files, and
    // each evaluator's weights
    if (rc == 0 && o->lists_dir && !o->clip) rc = set_error(err, "--interrogator-lists needs --clip (the labels are ranked with CLIP)");
    if (rc == 0) rc = output_folder_check(o->out_dir, err);
    const char* reports[3] = {"report.json", "report.csv", "report.html"};
    for (int i = 0; i < 3 && rc == 0 && path_is_dir(o->out_dir); i++) {
        char path[4400];
        snprintf(path, sizeof(path), "%s/%s", o->out_dir, reports[i]);
        rc = output_file_check(path, err);
    }
    const struct { const char* path; const char* option; } inputs[] = {
        {o->clip, "--clip"}, {o->yolo, "--yolo"}, {o->blip, "--blip"}, {o->minilm, "--minilm"}, {o->lists_dir, "--interrogator-lists"},
    };
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]) && rc == 0; i++) {
        struct stat sb;
        if (inputs[i].path && stat(inputs[i].path, &sb) != 0)
            rc = set_error(err, "%s: %s (%s)", inputs[i].path, strerror(errno), inputs[i].option);
    }
    if (rc != 0) {
        free_lines(files, n);
        free_lines(prompts, n_prompts);
        return -1;
    }
    Evaluators ev;
    memset(&ev, 0, sizeof(ev));
    double t0 = now_seconds();
    if (o->clip && (rc = clip_model_load(&ev.clip, o->clip, NULL, err)) == 0) ev.has_clip = 1;
    if (rc == 0 && o->yolo && (rc = yolo_load(&ev.yolo, o->yolo, err)) == 0) ev.has_yolo = 1;
    if (rc == 0 && o->blip && (rc = blip_load(&ev.blip, o->blip, err)) == 0) ev.has_blip = 1;
    if (rc == 0 && o->minilm && (rc = minilm_load(&ev.minilm, o->minilm, err)) == 0) ev.has_minilm = 1;
    if (rc == 0 && o->lists_dir) rc = load_interrogator_lists(&ev, o, err);
    if (rc != 0) {
        evaluators_free(&ev);
        return -1;
    }
    if (!o->quiet)
        printf("evaluators loaded in %.1f s: clip %s, yolo %s, blip %s, minilm %s, interrogator %s, judge %s\n", now_seconds() - t0,
               ev.has_clip ? "yes" : "skipped", ev.has_yolo ? "yes" : "skipped", ev.has_blip ? "yes" : "skipped",
               ev.has_minilm ? "yes" : "skipped", ev.has_tables ? o->interrogate : "skipped", o->judge_cmd ? "yes" : "skipped");

    EvalRecord* records = xcalloc((size_t)n, sizeof(EvalRecord));
    Image* thumbs = xcalloc((size_t)n, sizeof(Image));
    t0 = now_seconds();
    for (int i = 0; i < n; i++) {
        char path[4400];
        snprintf(path, sizeof(path), "%s/%s", o->images_dir, files[i]);
        Image png, rgb;
        char ierr[ERR_MAX];
        memset(&png, 0, sizeof(png));
        if (png_read(&png, path, ierr) != 0 || image_to_rgb8_over_white(&png, &rgb, ierr) != 0) {
            // recorded with why, warned about after the loop, and left out of every mean
            char* plain = eval_plain_prompt(prompts ? prompts[i] : "");
            eval_record_init(&records[i], path, plain);
            free(plain);
            char why[sizeof(path) + ERR_MAX + 2];
            if (strncmp(ierr, path, strlen(path)) == 0) snprintf(why, sizeof(why), "%s", ierr); // png_read names the file
            else snprintf(why, sizeof(why), "%s: %s", path, ierr);
            eval_record_unreadable(&records[i], why);
            if (png.data) image_free(&png);
        } else {
            char* raw = prompts ? xstrdup(prompts[i]) : prompt_from_png(&png);
            char* plain = eval_plain_prompt(raw ? raw : "");
            eval_record_init(&records[i], path, plain);
            if (!raw) eval_field_skip(&records[i].judge, "no prompt (no --prompts file and no parameters text in the PNG)");
            evaluate_one(&ev, o, &rgb, &records[i]);
            int tw = rgb.width < THUMB_WIDTH ? rgb.width : THUMB_WIDTH;
            int th = (int)((double)rgb.height * tw / rgb.width + 0.5);
            if (image_resize_pil(&rgb, tw, th > 0 ? th : 1, RESAMPLE_BICUBIC, &thumbs[i], ierr) != 0)
                memset(&thumbs[i], 0, sizeof(Image));
            free(raw);
            free(plain);
            image_free(&png);
            image_free(&rgb);
        }
        if (!o->quiet) {
            double per = (now_seconds() - t0) / (i + 1);
            fprintf(stderr, "\rimage %d/%d  %.2f s/image  ETA %.0f s   ", i + 1, n, per, per * (n - i - 1));
            if (i + 1 == n) fputc('\n', stderr);
        }
    }
    char settings[1024];
    snprintf(settings, sizeof(settings), "images %s; expected size %dx%d; clip %s; yolo %s; blip %s (beams %d); minilm %s; "
             "interrogator %s; judge %s", o->images_dir, o->width, o->height, o->clip ? o->clip : "none", o->yolo ? o->yolo : "none",
             o->blip ? o->blip : "none", o->beams, o->minilm ? o->minilm : "none", o->lists_dir ? o->interrogate : "none",
             o->judge_cmd ? o->judge_cmd : "none");
    rc = make_dir(o->out_dir, err);
    if (rc == 0) rc = eval_write_reports(o->out_dir, records, n, thumbs, settings, err);
    if (rc == 0 && !o->quiet) {
        eval_print_summary(records, n);
        printf("\nwrote %s/report.json, report.csv, report.html\n", o->out_dir);
    }
    fflush(stdout); // the warnings come after the summary, also when both streams go to one place
    int unreadable = eval_print_warnings(stderr, records, n);
    // some images unreadable: a warning, exit 0, the rest is reported; none readable: nothing was
    // evaluated, so the run fails (the reports are still written, with each file's reason)
    if (rc == 0 && unreadable == n)
        rc = set_error(err, "%s: none of the %d image%s could be read (the reasons are in %s/report.json)", o->images_dir, n,
                       n == 1 ? "" : "s", o->out_dir);
    for (int i = 0; i < n; i++) {
        eval_record_free(&records[i]);
        if (thumbs[i].data) image_free(&thumbs[i]);
        free(files[i]);
        if (prompts) free(prompts[i]);
    }
    free(records);
    free(thumbs);
    free(files);
    free(prompts);
    evaluators_free(&ev);
    return rc;
}
