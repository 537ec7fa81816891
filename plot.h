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
    const char* label;   // for the legend (the font has digits, a few letters and punctuation)
} PlotSeries;

// Draws the series on a white width x height canvas with a title; the axes span every finite
// point. img is overwritten (8-bit RGB). Returns 0, or -1 with err.
int plot_lines(Image* img, int width, int height, const char* title, const char* x_label, const PlotSeries* series,
               int count, char* err);
