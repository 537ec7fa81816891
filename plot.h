// plot.h: a line chart drawn into an RGB image, for the trainer's loss curve (no plotting library:
// axes, grid, tick labels in a built-in 5x7 pixel font, and up to a few series).
#pragma once
#include <stdint.h>

#include "png.h"

typedef struct {
    const double* x;
    const double* y;     // NaN: no point there
    int n;
    uint8_t rgb[3];
    int dots;            // 1: a dot per point (sparse series, e.g. validation); 0: a line through them
    const char* label;   // for the legend, or NULL (the font has digits, a few letters and punctuation)
} PlotSeries;

// Draws the series on a white width x height canvas with a title; the axes span every finite
// point. The legend lists the labelled series that have at least one finite point (an empty one,
// e.g. validation losses without a validation set, is left out). img is overwritten (8-bit RGB).
// Returns 0, or -1 with err (also when the title, x label or a series label has a character the
// font lacks: a space is a gap, anything else would be drawn as a hole).
int plot_lines(Image* img, int width, int height, const char* title, const char* x_label, const PlotSeries* series,
               int count, char* err);

// The built-in font: the PLOT_GLYPH_ROWS rows (5 bits each, leftmost pixel in bit 4) of c, or
// NULL when the font has no glyph for it. Rows 0-6 stand on the baseline, rows 7-8 hang below.
#define PLOT_GLYPH_ROWS 9
const uint8_t* plot_glyph(char c);
