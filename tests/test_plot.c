// tests/test_plot.c: the loss-curve chart (plot.c): its built-in font (every glyph distinct, the
// letters with descenders below the baseline so 'g' is no '9', every character the trainer's
// labels use drawable) and its legend (only the series that have a point to draw).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../plot.h"
#include "check.h"

static int has_ink_below_baseline(const uint8_t* rows) { return rows[7] != 0 || rows[8] != 0; }

static void test_plot_font_glyphs(void) {
    // every glyph the font has differs from every other one
    int glyphs = 0, same = 0;
    char first = 0, second = 0;
    for (int a = 33; a < 127; a++) {
        const uint8_t* ga = plot_glyph((char)a);
        if (!ga) continue;
        glyphs++;
        int ink = 0;
        for (int r = 0; r < PLOT_GLYPH_ROWS; r++) ink |= ga[r];
        check_true(ink != 0, "'%c' has ink", a);
        for (int b = a + 1; b < 127; b++) {
            const uint8_t* gb = plot_glyph((char)b);
            if (gb && memcmp(ga, gb, PLOT_GLYPH_ROWS) == 0 && !same++) first = (char)a, second = (char)b;
        }
    }
    check_true(glyphs >= 36 && same == 0, "%d glyphs, all distinct (%d pairs equal%s%c%s%c)", glyphs, same, same ? ": '" : "",
               same ? first : ' ', same ? "' and '" : "", same ? second : ' ');
    // descenders: g and p hang below the baseline, nothing else does; g is not a 9 (which stands on it)
    const uint8_t* g = plot_glyph('g');
    const uint8_t* nine = plot_glyph('9');
    if (check_true(g && nine, "the font has 'g' and '9'")) {
        check_true(memcmp(g, nine, PLOT_GLYPH_ROWS) != 0 && has_ink_below_baseline(g) && !has_ink_below_baseline(nine),
                   "'g' has its tail below the baseline, '9' does not");
        check_true(g[0] == 0 && g[1] == 0, "'g' starts at the x-height (row 2), as the other lowercase letters, not at the top as '9'");
    }
    for (int c = 33; c < 127; c++) {
        const uint8_t* rows = plot_glyph((char)c);
        if (!rows) continue;
        int descends = c == 'g' || c == 'j' || c == 'p' || c == 'q' || c == 'y';
        if (has_ink_below_baseline(rows) != descends)
            check_true(0, "'%c' %s below the baseline", c, descends ? "must reach" : "must not reach");
    }
    // what the trainer draws: its title, axis label, legend labels and number formats
    const char* used[] = {"training loss", "step", "loss", "loss (ema 0.9)", "validation", "0123456789", "-1.5e+04", "2.5e-05"};
    for (size_t k = 0; k < sizeof(used) / sizeof(used[0]); k++) {
        int ok = 1;
        for (const char* s = used[k]; *s; s++) ok &= *s == ' ' || plot_glyph(*s) != NULL;
        check_true(ok, "\"%s\" is drawable", used[k]);
    }
}

// Pixels of exactly this colour in img.
static size_t count_colour(const Image* img, const uint8_t rgb[3]) {
    size_t n = 0;
    const uint8_t* p = img->data;
    for (size_t i = 0; i < (size_t)img->width * img->height; i++) n += memcmp(p + 3 * i, rgb, 3) == 0;
    return n;
}

static void test_plot_legend_only_drawn_series(void) {
    double x[4] = {1, 2, 3, 4}, loss[4] = {1.0, 0.8, 0.7, 0.65}, none[4] = {NAN, NAN, NAN, NAN}, one[4] = {NAN, 0.75, NAN, NAN};
    const uint8_t val_rgb[3] = {220, 40, 40};
    PlotSeries s[2] = {
        {x, loss, 4, {30, 60, 200}, 0, "loss"},
        {x, none, 4, {220, 40, 40}, 1, "validation"}, // no validation set: every value NaN
    };
    Image img;
    char err[ERR_MAX] = "";
    if (!check_true(plot_lines(&img, 400, 200, "training loss", "step", s, 2, err) == 0, "plot: %s", err)) return;
    size_t without = count_colour(&img, val_rgb);
    image_free(&img);
    check_true(without == 0, "no validation points: no legend swatch in its colour (%zu pixels)", without);
    s[1].y = one; // one validation loss: its dot and its legend entry
    if (!check_true(plot_lines(&img, 400, 200, "training loss", "step", s, 2, err) == 0, "plot: %s", err)) return;
    size_t with = count_colour(&img, val_rgb);
    image_free(&img);
    check_true(with == 5 * 5 + 12 * 7, "one validation point: its 5x5 dot and the 12x7 legend swatch (%zu pixels)", with);
    // a label the font cannot spell is refused, not drawn with holes
    s[1].label = "Validation";
    int rc = plot_lines(&img, 400, 200, "training loss", "step", s, 2, err);
    check_true(rc == -1 && strstr(err, "no glyph for 'V'"), "an undrawable label -> %s", rc ? err : "accepted");
    if (rc == 0) image_free(&img);
}

const TestCase tests_plot[] = {
    {"plot_font_glyphs", test_plot_font_glyphs},
    {"plot_legend_only_drawn_series", test_plot_legend_only_drawn_series},
    {NULL, NULL},
};
