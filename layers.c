// layers.c: Linear, Conv2d, GroupNorm and LayerNorm: parameter declaration and forward passes.
#include "layers.h"

#include <stdarg.h>
#include <stdio.h>

#include "common.h"
#include "ops.h"

const char* name_fmt(char* buf, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, NAME_MAX_LEN, fmt, ap);
    va_end(ap);
    if (n >= NAME_MAX_LEN) fatal("parameter name too long: %s", buf);
    return buf;
}

Linear linear_build(Weights* w, const char* prefix, int in, int out, int has_bias) {
    char name[NAME_MAX_LEN];
    Linear l = {0};
    l.dtype = w->dtype;
    l.in = in;
    l.out = out;
    l.weight = weights_param(w, name_fmt(name, "%s.weight", prefix), 2, (int64_t[]){out, in});
    if (has_bias) l.bias = weights_param(w, name_fmt(name, "%s.bias", prefix), 1, (int64_t[]){out});
    return l;
}

Conv2d conv2d_build(Weights* w, const char* prefix, int in, int out, int k, int stride, int pad, int has_bias) {
    char name[NAME_MAX_LEN];
    Conv2d c = {0};
    c.dtype = w->dtype;
    c.in = in;
    c.out = out;
    c.k = k;
    c.stride = stride;
    c.pad = pad;
    c.weight = weights_param(w, name_fmt(name, "%s.weight", prefix), 4, (int64_t[]){out, in, k, k});
    if (has_bias) c.bias = weights_param(w, name_fmt(name, "%s.bias", prefix), 1, (int64_t[]){out});
    return c;
}

GroupNorm group_norm_build(Weights* w, const char* prefix, int C, int groups, float eps) {
    char name[NAME_MAX_LEN];
    GroupNorm g = {0};
    g.dtype = w->dtype;
    g.C = C;
    g.groups = groups;
    g.eps = eps;
    if (C % groups != 0) fatal("%s: %d channels do not split into %d groups", prefix, C, groups);
    g.weight = weights_param(w, name_fmt(name, "%s.weight", prefix), 1, (int64_t[]){C});
    g.bias = weights_param(w, name_fmt(name, "%s.bias", prefix), 1, (int64_t[]){C});
    return g;
}

LayerNorm layer_norm_build(Weights* w, const char* prefix, int C, float eps) {
    char name[NAME_MAX_LEN];
    LayerNorm l = {0};
    l.dtype = w->dtype;
    l.C = C;
    l.eps = eps;
    l.weight = weights_param(w, name_fmt(name, "%s.weight", prefix), 1, (int64_t[]){C});
    l.bias = weights_param(w, name_fmt(name, "%s.bias", prefix), 1, (int64_t[]){C});
    return l;
}

void* tensor_build(Weights* w, const char* name, int rank, const int64_t* shape) {
    return weights_param(w, name, rank, shape);
}

void linear(const Linear* l, void* out, const void* inp, int N) {
    linear_forward(out, inp, l->weight, l->bias, N, l->in, l->out, 0, l->dtype);
}

void linear_accumulate(const Linear* l, void* out, const void* inp, int N) {
    linear_forward(out, inp, l->weight, l->bias, N, l->in, l->out, 1, l->dtype);
}

int conv2d_out_size(const Conv2d* c, int in) { return (in + 2 * c->pad - c->k) / c->stride + 1; }

static void conv2d_run(const Conv2d* c, void* out, const void* inp, int N, int H, int W, Arena* scratch, int accumulate) {
    size_t mark = arena_mark(scratch);
    size_t n = conv2d_scratch_elems(c->in, H, W, c->k, c->stride, c->pad);
    void* buf = n ? arena_elems(scratch, n, c->dtype, "conv2d im2col") : NULL;
    conv2d_forward(out, inp, c->weight, c->bias, buf, N, c->in, H, W, c->out, c->k, c->stride, c->pad, accumulate, c->dtype);
    arena_release(scratch, mark);
}

void conv2d(const Conv2d* c, void* out, const void* inp, int N, int H, int W, Arena* scratch) {
    conv2d_run(c, out, inp, N, H, W, scratch, 0);
}

void conv2d_accumulate(const Conv2d* c, void* out, const void* inp, int N, int H, int W, Arena* scratch) {
    conv2d_run(c, out, inp, N, H, W, scratch, 1);
}

void group_norm(const GroupNorm* g, void* out, const void* inp, int N, int HW) {
    group_norm_forward(out, NULL, NULL, inp, g->weight, g->bias, N, g->C, HW, g->groups, g->eps, 0, g->dtype);
}

void group_norm_silu(const GroupNorm* g, void* out, const void* inp, int N, int HW) {
    group_norm_forward(out, NULL, NULL, inp, g->weight, g->bias, N, g->C, HW, g->groups, g->eps, 1, g->dtype);
}

void layer_norm(const LayerNorm* l, void* out, const void* inp, int N) {
    layer_norm_forward(out, NULL, NULL, inp, l->weight, l->bias, N, l->C, l->eps, l->dtype);
}
