// plot.c: a line chart in an RGB image. See plot.h.
#include "plot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// ----------------------------------------------------------------------------
// A 5x7 pixel font with descenders: each glyph is PLOT_GLYPH_ROWS rows of 5 bits, the leftmost
// pixel in bit 4. Rows 0-6 stand on the baseline (capitals and digits fill all seven, lowercase
// letters the lower five); rows 7-8 are below it, where only g and p reach. Without them a 'g'
// has to squeeze its tail above the baseline and reads as a '9'.

typedef struct {
    char c;
    uint8_t rows[PLOT_GLYPH_ROWS];
} Glyph;

static const Glyph font[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}}, {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
    {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}}, {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}},
    {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}}, {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
    {'a', {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F}}, {'c', {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E}},
    {'d', {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F}}, {'e', {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E}},
    {'g', {0x00, 0x00, 0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E}}, {'h', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'i', {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E}}, {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'m', {0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11}}, {'n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'o', {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E}}, {'p', {0x00, 0x00, 0x1E, 0x11, 0x11, 0x11, 0x1E, 0x10, 0x10}},
    {'r', {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}}, {'s', {0x00, 0x00, 0x0F, 0x10, 0x0E, 0x01, 0x1E}},
    {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}}, {'u', {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D}},
    {'v', {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04}}, {'w', {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A}},
    {'x', {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11}}, {'A', {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}}, {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}},
};

const uint8_t* plot_glyph(char c) {
    for (size_t i = 0; i < sizeof(font) / sizeof(font[0]); i++)
        if (font[i].c == c) return font[i].rows;
    return NULL; // a space, or a character the font lacks
}

// The first character of s that the font cannot draw (a space is drawn as a gap), or 0.
static char undrawable(const char* s) {
    for (; s && *s; s++)
        if (*s != ' ' && !plot_glyph(*s)) return *s;
    return 0;
}

// ----------------------------------------------------------------------------
// Pixels

static void put(Image* img, int x, int y, const uint8_t rgb[3]) {
    if (x < 0 || y < 0 || x >= img->width || y >= img->height) return;
    memcpy((uint8_t*)img->data + 3 * ((size_t)y * img->width + x), rgb, 3);
}

static void fill_rect(Image* img, int x0, int y0, int w, int h, const uint8_t rgb[3]) {
    for (int y = y0; y < y0 + h; y++)
        for (int x = x0; x < x0 + w; x++) put(img, x, y, rgb);
}

// A 2-pixel-wide line (Bresenham, each point doubled downwards).
static void line(Image* img, int x0, int y0, int x1, int y1, const uint8_t rgb[3]) {
    int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, e = dx + dy;
    for (;;) {
        put(img, x0, y0, rgb);
        put(img, x0, y0 + 1, rgb);
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * e;
        if (e2 >= dy) e += dy, x0 += sx;
        if (e2 <= dx) e += dx, y0 += sy;
    }
}

// Text with its top-left corner at (x, y), each font pixel a scale x scale square; returns the width.
static int text(Image* img, int x, int y, const char* s, const uint8_t rgb[3], int scale) {
    int x0 = x;
    for (; *s; s++, x += 6 * scale) {
        const uint8_t* rows = plot_glyph(*s);
        for (int r = 0; rows && r < PLOT_GLYPH_ROWS; r++)
            for (int c = 0; c < 5; c++)
                if (rows[r] & (0x10 >> c)) fill_rect(img, x + c * scale, y + r * scale, scale, scale, rgb);
    }
    return x - x0;
}

static int text_width(const char* s, int scale) { return (int)strlen(s) * 6 * scale; }

// ----------------------------------------------------------------------------
// The chart

// Tick spacing of about `want` intervals over range: 1, 2 or 5 times a power of ten.
static double nice_step(double range, int want) {
    double raw = range / want, p = pow(10.0, floor(log10(raw)));
    double m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

int plot_lines(Image* img, int width, int height, const char* title, const char* x_label, const PlotSeries* series,
               int count, char* err) {
    if (width < 200 || height < 150) return set_error(err, "plot: %dx%d is too small", width, height);
    // a label the font cannot spell would be drawn with holes in it; say so instead
    const char* texts[2] = {title, x_label};
    for (int k = 0; k < 2 + count; k++) {
        const char* t = k < 2 ? texts[k] : series[k - 2].label;
        char c = undrawable(t);
        if (c) return set_error(err, "plot: the font has no glyph for '%c' (in \"%s\")", c, t);
    }
    memset(img, 0, sizeof(*img));
    img->width = width;
    img->height = height;
    img->channels = 3;
    img->depth = 8;
    img->data = xmalloc((size_t)3 * width * height);
    memset(img->data, 255, (size_t)3 * width * height);
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (int s = 0; s < count; s++)
        for (int i = 0; i < series[s].n; i++) {
            if (!isfinite(series[s].y[i]) || !isfinite(series[s].x[i])) continue;
            xmin = fmin(xmin, series[s].x[i]), xmax = fmax(xmax, series[s].x[i]);
            ymin = fmin(ymin, series[s].y[i]), ymax = fmax(ymax, series[s].y[i]);
        }
    if (!isfinite(xmin)) xmin = 0, xmax = 1, ymin = 0, ymax = 1; // nothing yet: empty axes
    if (xmax == xmin) xmax = xmin + 1;
    if (ymax == ymin) ymax = ymin + fabs(ymin) * 0.1 + 1e-3;
    double pad = (ymax - ymin) * 0.05;
    ymin -= pad, ymax += pad;
    const uint8_t black[3] = {0, 0, 0}, grid[3] = {225, 225, 225}, gray[3] = {90, 90, 90};
    int left = 80, right = width - 20, top = 40, bottom = height - 45;
    double ystep = nice_step(ymax - ymin, 5), xstep = nice_step(xmax - xmin, 6);
    char label[64];
    for (double v = ceil(ymin / ystep) * ystep; v <= ymax; v += ystep) {
        int y = bottom - (int)lround((v - ymin) / (ymax - ymin) * (bottom - top));
        for (int x = left; x <= right; x++) put(img, x, y, grid);
        snprintf(label, sizeof(label), "%.4g", fabs(v) < ystep * 1e-6 ? 0.0 : v);
        text(img, left - 8 - text_width(label, 1), y - 3, label, gray, 1);
    }
    for (double v = ceil(xmin / xstep) * xstep; v <= xmax; v += xstep) {
        int x = left + (int)lround((v - xmin) / (xmax - xmin) * (right - left));
        for (int y = top; y <= bottom; y++) put(img, x, y, grid);
        snprintf(label, sizeof(label), "%.6g", v);
        text(img, x - text_width(label, 1) / 2, bottom + 8, label, gray, 1);
    }
    line(img, left, top, left, bottom, black);
    line(img, left, bottom, right, bottom, black);
    text(img, (width - text_width(title, 2)) / 2, 10, title, black, 2);
    text(img, (left + right - text_width(x_label, 1)) / 2, bottom + 24, x_label, gray, 1);
    int legend_y = top + 8;
    for (int s = 0; s < count; s++) {
        const PlotSeries* p = &series[s];
        int px = -1, py = -1, drawn = 0;
        for (int i = 0; i < p->n; i++) {
            if (!isfinite(p->y[i]) || !isfinite(p->x[i])) continue;
            drawn++;
            int x = left + (int)lround((p->x[i] - xmin) / (xmax - xmin) * (right - left));
            int y = bottom - (int)lround((p->y[i] - ymin) / (ymax - ymin) * (bottom - top));
            if (p->dots) fill_rect(img, x - 2, y - 2, 5, 5, p->rgb);
            else if (px >= 0) line(img, px, py, x, y, p->rgb);
            else put(img, x, y, p->rgb);
            px = x, py = y;
        }
        if (p->label && drawn > 0) { // a series with no point to draw (no validation set) has no entry
            int w = text_width(p->label, 1);
            fill_rect(img, right - w - 22, legend_y, 12, 7, p->rgb);
            text(img, right - w - 6, legend_y, p->label, black, 1);
            legend_y += 14;
        }
    }
    return 0;
}
