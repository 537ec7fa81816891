// layers.c: Linear, Conv2d, GroupNorm and LayerNorm: parameter declaration, forward passes, and
// backpropagation through them with frozen weights (the LoRA trainer).
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

// out += scale * (inp A^T) B^T, the adapter's branch, after the frozen product.
static void lora_forward(const Linear* l, void* out, const void* inp, int N) {
    const LoraAdapter* a = l->lora;
    if ((size_t)N > a->work_rows) fatal("LoRA forward: %d rows, the adapter's work buffer holds %zu", N, a->work_rows);
    matmul_forward(a->work, inp, a->A, 1, N, a->rank, l->in, 0, 1, 1.0f, 0.0f, l->dtype);       // t = x A^T (N, r)
    matmul_forward(out, a->work, a->B, 1, N, l->out, a->rank, 0, 1, a->scale, 1.0f, l->dtype); // out += s t B^T
}

void linear(const Linear* l, void* out, const void* inp, int N) {
    linear_forward(out, inp, l->weight, l->bias, N, l->in, l->out, 0, l->dtype);
    if (l->lora) lora_forward(l, out, inp, N);
}

void linear_accumulate(const Linear* l, void* out, const void* inp, int N) {
    linear_forward(out, inp, l->weight, l->bias, N, l->in, l->out, 1, l->dtype);
    if (l->lora) lora_forward(l, out, inp, N);
}

int conv2d_out_size(const Conv2d* c, int in) { return (in + 2 * c->pad - c->k) / c->stride + 1; }

// out[n] (out, P) += scale * B (out, rank) @ t[n] (rank, P): the 1x1 up-projection of a conv
// adapter, one product per image (B is shared, so the images cannot be one batched product).
static void conv_lora_up(const Conv2d* c, void* out, const void* t, int N, int P, float alpha, float beta) {
    const LoraAdapter* a = c->lora;
    size_t es = dtype_size(c->dtype);
    for (int n = 0; n < N; n++)
        matmul_forward((char*)out + (size_t)n * c->out * P * es, a->B, (const char*)t + (size_t)n * a->rank * P * es, 1,
                       c->out, P, a->rank, 0, 0, alpha, beta, c->dtype);
}

static void conv2d_run(const Conv2d* c, void* out, const void* inp, int N, int H, int W, Arena* scratch, int accumulate) {
    size_t mark = arena_mark(scratch);
    size_t n = conv2d_scratch_elems(c->in, H, W, c->k, c->stride, c->pad);
    void* buf = n ? arena_elems(scratch, n, c->dtype, "conv2d im2col") : NULL;
    conv2d_forward(out, inp, c->weight, c->bias, buf, N, c->in, H, W, c->out, c->k, c->stride, c->pad, accumulate, c->dtype);
    const LoraAdapter* a = c->lora;
    if (a) { // out += s * B conv(x; A)
        int P = conv2d_out_size(c, H) * conv2d_out_size(c, W);
        if ((size_t)N * P > a->work_rows) fatal("LoRA conv forward: %d x %d pixels, the work buffer holds %zu", N, P, a->work_rows);
        conv2d_forward(a->work, inp, a->A, NULL, buf, N, c->in, H, W, a->rank, c->k, c->stride, c->pad, 0, c->dtype);
        conv_lora_up(c, out, a->work, N, P, a->scale, 1.0f);
    }
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

void group_norm_saving(const GroupNorm* g, void* out, float* mean, float* rstd, const void* inp, int N, int HW, int silu) {
    group_norm_forward(out, mean, rstd, inp, g->weight, g->bias, N, g->C, HW, g->groups, g->eps, silu, g->dtype);
}

void layer_norm_saving(const LayerNorm* l, void* out, float* mean, float* rstd, const void* inp, int N) {
    layer_norm_forward(out, mean, rstd, inp, l->weight, l->bias, N, l->C, l->eps, l->dtype);
}

// ----------------------------------------------------------------------------
// Backpropagation (frozen weights; the LoRA adapter's gradients)

// grad (f32) += product, where the product was computed in dt: widened first when dt is 16-bit.
static void add_to_f32_gradient(float* grad, const void* product, size_t n, DType dt, Arena* scratch) {
    size_t mark = arena_mark(scratch);
    float* wide = arena_floats(scratch, n, "LoRA gradient (f32)");
    cast_forward(wide, DT_F32, product, dt, n);
    axpby_forward(grad, 1.0f, grad, 1.0f, wide, n);
    arena_release(scratch, mark);
}

// grad (f32, rows x cols) += scale * op(a) @ op(b), as one product of inner size K.
static void lora_gradient(float* grad, const void* a, const void* b, int rows, int cols, int K, int trans_a, int trans_b,
                          float scale, DType dt, Arena* scratch) {
    if (dt == DT_F32) {
        matmul_forward(grad, a, b, 1, rows, cols, K, trans_a, trans_b, scale, 1.0f, DT_F32);
        return;
    }
    size_t mark = arena_mark(scratch);
    void* product = arena_elems(scratch, (size_t)rows * cols, dt, "LoRA gradient");
    matmul_forward(product, a, b, 1, rows, cols, K, trans_a, trans_b, scale, 0.0f, dt);
    add_to_f32_gradient(grad, product, (size_t)rows * cols, dt, scratch);
    arena_release(scratch, mark);
}

void linear_backprop(const Linear* l, void* dinp, const void* dout, const void* inp, int N, int accumulate, Arena* scratch) {
    DType dt = l->dtype;
    if (dinp) linear_backward(dinp, NULL, NULL, dout, inp, l->weight, N, l->in, l->out, accumulate, dt);
    const LoraAdapter* a = l->lora;
    if (!a) return;
    int r = a->rank;
    size_t mark = arena_mark(scratch);
    void* t = arena_elems(scratch, (size_t)N * r, dt, "LoRA x A^T");
    void* u = arena_elems(scratch, (size_t)N * r, dt, "LoRA dout B");
    matmul_forward(t, inp, a->A, 1, N, r, l->in, 0, 1, 1.0f, 0.0f, dt);    // t = x A^T        (N, r)
    matmul_forward(u, dout, a->B, 1, N, r, l->out, 0, 0, 1.0f, 0.0f, dt);  // u = dout B       (N, r)
    lora_gradient(a->grad_B, dout, t, l->out, r, N, 1, 0, a->scale, dt, scratch); // += s dout^T t (out, r)
    lora_gradient(a->grad_A, u, inp, r, l->in, N, 1, 0, a->scale, dt, scratch);   // += s u^T x    (r, in)
    if (dinp) matmul_forward(dinp, u, a->A, 1, N, l->in, r, 0, 0, a->scale, 1.0f, dt); // dinp += s u A
    arena_release(scratch, mark);
}

void conv2d_backprop(const Conv2d* c, void* dinp, const void* dout, const void* inp, int N, int H, int W, int accumulate,
                     Arena* scratch) {
    DType dt = c->dtype;
    size_t mark = arena_mark(scratch);
    size_t n = conv2d_scratch_elems(c->in, H, W, c->k, c->stride, c->pad);
    void* buf = n ? arena_elems(scratch, n, dt, "conv2d backward col2im") : NULL;
    if (dinp)
        conv2d_backward(dinp, NULL, NULL, dout, NULL, c->weight, buf, N, c->in, H, W, c->out, c->k, c->stride, c->pad,
                        accumulate, dt);
    const LoraAdapter* a = c->lora;
    if (a) {
        if (!inp) fatal("conv2d_backprop: a conv with a LoRA adapter needs its forward input");
        int r = a->rank, P = conv2d_out_size(c, H) * conv2d_out_size(c, W);
        size_t es = dtype_size(dt), per_t = (size_t)r * P, n_A = (size_t)r * c->in * c->k * c->k;
        void* t = arena_elems(scratch, (size_t)N * per_t, dt, "LoRA conv t");
        void* u = arena_elems(scratch, (size_t)N * per_t, dt, "LoRA conv u");
        conv2d_forward(t, inp, a->A, NULL, buf, N, c->in, H, W, r, c->k, c->stride, c->pad, 0, dt); // t = conv(x; A)
        for (int i = 0; i < N; i++) {
            const char* dout_i = (const char*)dout + (size_t)i * c->out * P * es;
            // u_i (r, P) = s B^T (r, out) @ dout_i (out, P)
            matmul_forward((char*)u + i * per_t * es, a->B, dout_i, 1, r, P, c->out, 1, 0, a->scale, 0.0f, dt);
            // grad_B (out, r) += s dout_i (out, P) @ t_i^T (P, r)
            lora_gradient(a->grad_B, dout_i, (const char*)t + i * per_t * es, c->out, r, P, 0, 1, a->scale, dt, scratch);
        }
        // grad_A += the weight gradient of conv(x; A) for dout = u (already scaled by s)
        void* dA = dt == DT_F32 ? (void*)a->grad_A : arena_elems(scratch, n_A, dt, "LoRA conv dA");
        if (dt != DT_F32) device_memset_zero(dA, n_A * es);
        conv2d_backward(NULL, dA, NULL, u, inp, a->A, buf, N, c->in, H, W, r, c->k, c->stride, c->pad, 0, dt);
        if (dt != DT_F32) add_to_f32_gradient(a->grad_A, dA, n_A, dt, scratch);
        // dinp += the input gradient through A
        if (dinp) conv2d_backward(dinp, NULL, NULL, u, NULL, a->A, buf, N, c->in, H, W, r, c->k, c->stride, c->pad, 1, dt);
    }
    arena_release(scratch, mark);
}

void group_norm_backprop(const GroupNorm* g, void* dinp, const void* dout, const void* inp, const float* mean,
                         const float* rstd, int N, int HW, int silu, int accumulate) {
    group_norm_backward(dinp, NULL, NULL, dout, inp, mean, rstd, g->weight, g->bias, N, g->C, HW, g->groups, silu,
                        accumulate, g->dtype);
}

void layer_norm_backprop(const LayerNorm* l, void* dinp, const void* dout, const void* inp, const float* mean,
                         const float* rstd, int N, int accumulate) {
    layer_norm_backward(dinp, NULL, NULL, dout, inp, mean, rstd, l->weight, N, l->C, accumulate, l->dtype);
}
