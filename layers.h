// layers.h: the parameterised building blocks every network here shares, as plain structs.
//
// Each block has a `_build` function that declares its parameters (weights.h: called once per
// build pass, it returns the struct with NULL pointers in pass 1 and real ones in pass 2) under a
// name prefix, and a forward function that runs it through the op dispatchers (ops.h), so it
// works on either backend. Names are those of the PyTorch modules: `linear_build(w, "...to_q",
// ...)` declares "...to_q.weight" (and ".bias"). A block keeps the storage type of its weights
// (Weights.dtype) and passes it to its ops, so its inputs and outputs are of that type too.
#pragma once
#include "tensor.h"
#include "weights.h"

// A trainable low-rank adapter on a Linear or a Conv2d (the trainer's LoRA, peft's lora.Linear
// and lora.Conv2d):
//   Linear:  y = W x + b + scale * B (A x)
//   Conv2d:  y = conv(x; W) + b + scale * conv1x1(conv(x; A); B), A a convolution of the base's
//            kernel, stride and padding with `rank` output channels (kohya's LoCon, peft's Conv2d)
// A and B are the copies the forward and backward compute with (the layer's dtype, on the
// backend); the trainer keeps f32 master copies and refreshes these after each update. The
// backward (linear_backprop, conv2d_backprop) adds the f32 gradients of A and B into grad_A and
// grad_B. `work` is scratch for the forward's A x, at least rows x rank elements of the layer's
// dtype (rows: a Linear's input rows, a Conv2d's N x output pixels) for every forward it runs
// (linear() has no arena); one buffer can serve every adapter.
typedef struct {
    void* A;        // (rank, in), or (rank, in, k, k) on a Conv2d
    void* B;        // (out, rank)
    int rank;
    float scale;    // alpha / rank (peft's scaling)
    float* grad_A;  // (rank, in), f32, on the backend
    float* grad_B;  // (out, rank)
    void* work;     // (work_rows, rank)
    size_t work_rows;
} LoraAdapter;

typedef struct {
    void* weight; // (out, in)
    void* bias;   // (out) or NULL
    int in, out;
    DType dtype;
    const LoraAdapter* lora; // NULL, or the trainer's adapter, which linear() and linear_backprop() add in
} Linear;

typedef struct {
    void* weight; // (out, in, k, k)
    void* bias;   // (out) or NULL
    int in, out, k, stride, pad;
    DType dtype;
    const LoraAdapter* lora; // NULL, or the trainer's adapter (as Linear.lora)
} Conv2d;

typedef struct {
    void* weight; // (C)
    void* bias;   // (C)
    int C, groups;
    float eps;
    DType dtype;
} GroupNorm;

typedef struct {
    void* weight; // (C)
    void* bias;   // (C)
    int C;
    float eps;
    DType dtype;
} LayerNorm;

// The epsilon of a GroupNorm or LayerNorm read from a config must be in [NORM_EPS_MIN,
// NORM_EPS_MAX]: the configs we read use 1e-12 (BERT) to 1e-5 (CLIP, the UNet); 0 would let a
// constant input divide by zero, and an epsilon near 1 is a mistake.
#define NORM_EPS_MIN 1e-15
#define NORM_EPS_MAX 0.1

// Declares prefix.weight (and prefix.bias when has_bias).
Linear linear_build(Weights* w, const char* prefix, int in, int out, int has_bias);
Conv2d conv2d_build(Weights* w, const char* prefix, int in, int out, int k, int stride, int pad, int has_bias);
GroupNorm group_norm_build(Weights* w, const char* prefix, int C, int groups, float eps);
LayerNorm layer_norm_build(Weights* w, const char* prefix, int C, float eps);
// A bare tensor parameter (embedding tables, positional embeddings): declares prefix as is.
void* tensor_build(Weights* w, const char* name, int rank, const int64_t* shape);

// Forward passes. inp/out are on the backend, of the block's dtype; N rows (linear, layer_norm)
// or images (conv, norm). The `_accumulate` forms add the result to out (a residual connection).
void linear(const Linear* l, void* out, const void* inp, int N);
void linear_accumulate(const Linear* l, void* out, const void* inp, int N);
// The conv's im2col scratch comes from `scratch` and is released before returning.
void conv2d(const Conv2d* c, void* out, const void* inp, int N, int H, int W, Arena* scratch);
void conv2d_accumulate(const Conv2d* c, void* out, const void* inp, int N, int H, int W, Arena* scratch);
int conv2d_out_size(const Conv2d* c, int in);
void group_norm(const GroupNorm* g, void* out, const void* inp, int N, int HW);
void group_norm_silu(const GroupNorm* g, void* out, const void* inp, int N, int HW); // silu(group_norm(x))
void layer_norm(const LayerNorm* l, void* out, const void* inp, int N);
// The same norms, also saving the per-group (per-row) mean and rstd for their backward, f32 on
// the backend; mean and rstd may be NULL (then these are exactly group_norm / layer_norm).
void group_norm_saving(const GroupNorm* g, void* out, float* mean, float* rstd, const void* inp, int N, int HW, int silu);
void layer_norm_saving(const LayerNorm* l, void* out, float* mean, float* rstd, const void* inp, int N);

// Backpropagation through frozen layers, for the LoRA trainer. Each takes dout, the gradient of
// the loss with respect to the layer's output, and writes dinp, that of its input (=, or += with
// accumulate; dinp may be NULL when nobody needs it). The layer's own weights get no gradient
// (they are frozen), except a Linear's LoRA adapter, whose f32 grad_A and grad_B are added to:
//   t = x A^T   u = dout B   grad_B += scale dout^T t   grad_A += scale u^T x   dinp += scale u A
// (t is recomputed rather than saved: it is rows x rank, one small product.) With 16-bit storage
// the products are rounded to the layer's dtype, then widened and added to the f32 gradients, as
// autocast does with fp32 LoRA weights. Temporaries come from scratch and are released.
// A Conv2d's adapter: t = conv(x; A), u = s conv1x1^T(dout; B), grad_B += s sum_n dout_n t_n^T,
// grad_A += conv's weight gradient of (u, x), dinp += conv's input gradient of u through A.
//   inp: the forward's input (linear, conv2d: read only for the adapter, may be NULL without
//   one; the norms: always)
//   mean, rstd: what the *_saving forward saved
void linear_backprop(const Linear* l, void* dinp, const void* dout, const void* inp, int N, int accumulate, Arena* scratch);
void conv2d_backprop(const Conv2d* c, void* dinp, const void* dout, const void* inp, int N, int H, int W, int accumulate,
                     Arena* scratch);
void group_norm_backprop(const GroupNorm* g, void* dinp, const void* dout, const void* inp, const float* mean,
                         const float* rstd, int N, int HW, int silu, int accumulate);
void layer_norm_backprop(const LayerNorm* l, void* dinp, const void* dout, const void* inp, const float* mean,
                         const float* rstd, int N, int accumulate);

#define NAME_MAX_LEN 200
// Formats a parameter name into a caller's buffer of NAME_MAX_LEN bytes: name_fmt(buf, "%s.resnets.%d", prefix, j).
const char* name_fmt(char* buf, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
