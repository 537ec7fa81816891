// tests/test_backward.c: every backward pass of ops.h against torch autograd, 16-bit storage
// against the f32 reference, CUDA against the CPU, and a chain of ops against finite differences.
//
//   backward_<op>          the runner's backend (CPU by default, `--backend cuda` for the GPU)
//                          against tests/golden/backward.safetensors, made by
//                          scripts/make_golden_backward.py with float64 autograd on f32 inputs, so
//                          the goldens are exact answers rounded once and the tolerances measure
//                          our f32 arithmetic. The case hyperparameters must match the script.
//                          Each op with `accumulate` or += outputs is also run into known nonzero
//                          buffers (the result must be start + gradient), its `=` outputs start as
//                          NaN (which they must never read), and one output alone (the others
//                          NULL) must be bit-identical to the same output of the full call.
//   backward_16bit_cpu     every backward with F16 and BF16 storage on the CPU: bit for bit the
//                          f32 backward on the rounded inputs (and rounded starting values of the
//                          += outputs), rounded (the contract of ops.h)
//   backward_cuda_*        CUDA against CPU on larger random inputs, f32 and 16-bit; skipped, and
//                          said so, without a CUDA build and device
//   backward_deterministic_across_threads   the CPU backward with 1 thread and with several: same bits
//   backward_finite_difference   loss = sum(r * attention(conv(silu(group_norm(x))))): our f32
//                          forward and backward against central differences of a float64 forward
//
// Tolerances. Gradients are sums over many terms of both signs, so an element can be far smaller
// than the terms it came from, and a relative tolerance per element means nothing there. Each
// check uses atol = rel * max|want| (the tensor's scale) and rtol = rel, stated at the check:
//   REL_ELEM  1e-6   elementwise derivatives: expf/erff are within 1-2 ulp (2^-24 = 6e-8 each)
//   REL_SUM   1e-6   nearest-upsample sums of <= 4 values: one rounding per addition
//   REL_GEMM  1e-5   products and reductions over K <= ~600 terms in f32: the error of a sum is at
//                    most K * 2^-24 times the sum of |terms| (with FMA and blocking, typically
//                    sqrt(K) * 2^-24), i.e. 1e-6..4e-5 of the scale for these sizes
//   REL_NORM  1e-5   norm backward: the same sums, then g - mean(g) - xhat * mean(g xhat), which
//                    cancels to values below the scale of g
//   CUDA f32 against CPU: other summation orders (cuBLAS, block reductions, f32 instead of double
//   accumulators) and FMA contraction: 3e-5 of the scale (sums over up to a few thousand terms).
//   CUDA 16-bit against CPU: the CPU result is the f32 answer rounded once; CUDA's f32 answer
//   differs as above and can round to a neighbouring 16-bit value (1 ulp), and where ops.h says a
//   kernel rounds an intermediate to dt (attention's P and dS) that intermediate's ulp carries
//   into the sums: ulps of dt relative to the scale, stated at each check.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../ops.h"
#include "check.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static const float REL_ELEM = 1e-6f;
static const float REL_SUM = 1e-6f;
static const float REL_GEMM = 1e-5f;
static const float REL_NORM = 1e-5f;
static const float REL_CUDA = 3e-5f;

// ----------------------------------------------------------------------------
// Helpers (the backend and 16-bit ones are in tests/check.c)

static float max_abs(const float* x, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    return m;
}

// got against want with atol = rel_atol * max|want| (the tensor's scale) and rtol = rtol.
static int expect_grad(const char* label, const float* got, const float* want, size_t n, float rel_atol, float rtol) {
    return check_close(label, got, want, n, rel_atol * max_abs(want, n), rtol);
}

// ----------------------------------------------------------------------------
// Runners: one per op, host f32 in, host f32 out, on backend `be` with storage type `dt` (the
// inputs rounded to dt on the way, the gradients widened back).
//
// A backward call has up to three gradient outputs (dinp, dweight, dbias; dq, dk, dv). For each,
// the runner is told whether it is wanted (else NULL is passed) and what the buffer holds before
// the call: for an input gradient, starting values mean accumulate = 1, and without them the
// buffer is NaN, which an `=` output must never read; a parameter gradient (always +=) starts
// from its values or from zeros.
enum { MAX_GRADS = 3 };
typedef struct {
    int want[MAX_GRADS];
    const float* start[MAX_GRADS];
} GradSpec;
static const GradSpec ALL_GRADS = {{1, 1, 1}, {NULL, NULL, NULL}};

typedef struct {
    float* g[MAX_GRADS]; // host results, NULL where not wanted
} Grads;

static void grads_free(Grads* r) {
    for (int i = 0; i < MAX_GRADS; i++) free(r->g[i]);
}

static void* grad_buffer(const GradSpec* s, int i, size_t n, DType dt, int param) {
    if (!s->want[i]) return NULL;
    if (s->start[i]) return to_backend_dt(s->start[i], n, dt);
    float* fill = xmalloc(sizeof(float) * (n ? n : 1));
    for (size_t j = 0; j < n; j++) fill[j] = param ? 0.0f : NAN;
    void* dev = to_backend_dt(fill, n, dt);
    free(fill);
    return dev;
}

static float* grad_fetch(const void* dev, size_t n, DType dt) { return dev ? fetch_dt(dev, n, dt) : NULL; }

static Grads run_linear_bwd(Backend be, DType dt, const float* dout, const float* inp, const float* w, int N, int C_in,
                            int C_out, const GradSpec* s) {
    use_backend(be);
    size_t n_inp = (size_t)N * C_in, n_w = (size_t)C_out * C_in;
    void *di = grad_buffer(s, 0, n_inp, dt, 0), *dw = grad_buffer(s, 1, n_w, dt, 1), *db = grad_buffer(s, 2, C_out, dt, 1);
    linear_backward(di, dw, db, to_backend_dt(dout, (size_t)N * C_out, dt), to_backend_dt(inp, n_inp, dt),
                    to_backend_dt(w, n_w, dt), N, C_in, C_out, s->start[0] != NULL, dt);
    Grads r = {{grad_fetch(di, n_inp, dt), grad_fetch(dw, n_w, dt), grad_fetch(db, C_out, dt)}};
    restore_backend();
    return r;
}

static int conv_out(int in, int K, int stride, int pad) { return (in + 2 * pad - K) / stride + 1; }

static Grads run_conv_bwd(Backend be, DType dt, const float* dout, const float* inp, const float* w, int N, int C_in, int H,
                          int W, int C_out, int K, int stride, int pad, const GradSpec* s) {
    use_backend(be);
    size_t n_inp = (size_t)N * C_in * H * W, n_w = (size_t)C_out * C_in * K * K;
    size_t n_out = (size_t)N * C_out * conv_out(H, K, stride, pad) * conv_out(W, K, stride, pad);
    size_t scratch_n = conv2d_scratch_elems(C_in, H, W, K, stride, pad);
    void *di = grad_buffer(s, 0, n_inp, dt, 0), *dw = grad_buffer(s, 1, n_w, dt, 1), *db = grad_buffer(s, 2, C_out, dt, 1);
    conv2d_backward(di, dw, db, to_backend_dt(dout, n_out, dt), to_backend_dt(inp, n_inp, dt), to_backend_dt(w, n_w, dt),
                    scratch_n ? backend_alloc_dt(scratch_n, dt) : NULL, N, C_in, H, W, C_out, K, stride, pad,
                    s->start[0] != NULL, dt);
    Grads r = {{grad_fetch(di, n_inp, dt), grad_fetch(dw, n_w, dt), grad_fetch(db, C_out, dt)}};
    restore_backend();
    return r;
}

// The statistics the backward needs, as the forward saves them: group norm's f32 forward on the
// CPU, on the inputs as dt holds them. Every backend and dt of a comparison gets the same ones,
// so a comparison measures the backward alone.
static void group_norm_stats(float* mean, float* rstd, const float* inp, int N, int C, int HW, int G, DType dt) {
    size_t n = (size_t)N * C * HW;
    float *x = rounded(inp, n, dt), *y = xmalloc(sizeof(float) * n);
    group_norm_forward_cpu(y, mean, rstd, x, NULL, NULL, N, C, HW, G, 1e-5f, 0, DT_F32);
    free(x);
    free(y);
}

static void layer_norm_stats(float* mean, float* rstd, const float* inp, int N, int C, DType dt) {
    size_t n = (size_t)N * C;
    float *x = rounded(inp, n, dt), *y = xmalloc(sizeof(float) * n);
    layer_norm_forward_cpu(y, mean, rstd, x, NULL, NULL, N, C, 1e-5f, DT_F32);
    free(x);
    free(y);
}

static Grads run_gn_bwd(Backend be, DType dt, const float* dout, const float* inp, const float* w, const float* b, int N,
                        int C, int HW, int G, int silu, const GradSpec* s) {
    float* mean = xmalloc(sizeof(float) * N * G);
    float* rstd = xmalloc(sizeof(float) * N * G);
    group_norm_stats(mean, rstd, inp, N, C, HW, G, dt);
    use_backend(be);
    size_t n = (size_t)N * C * HW;
    void *di = grad_buffer(s, 0, n, dt, 0), *dw = grad_buffer(s, 1, C, dt, 1), *db = grad_buffer(s, 2, C, dt, 1);
    group_norm_backward(di, dw, db, to_backend_dt(dout, n, dt), to_backend_dt(inp, n, dt), to_backend(mean, (size_t)N * G),
                        to_backend(rstd, (size_t)N * G), to_backend_dt(w, C, dt), to_backend_dt(b, C, dt), N, C, HW, G, silu,
                        s->start[0] != NULL, dt);
    Grads r = {{grad_fetch(di, n, dt), grad_fetch(dw, C, dt), grad_fetch(db, C, dt)}};
    restore_backend();
    free(mean);
    free(rstd);
    return r;
}

static Grads run_ln_bwd(Backend be, DType dt, const float* dout, const float* inp, const float* w, int N, int C,
                        const GradSpec* s) {
    float* mean = xmalloc(sizeof(float) * N);
    float* rstd = xmalloc(sizeof(float) * N);
    layer_norm_stats(mean, rstd, inp, N, C, dt);
    use_backend(be);
    size_t n = (size_t)N * C;
    void *di = grad_buffer(s, 0, n, dt, 0), *dw = grad_buffer(s, 1, C, dt, 1), *db = grad_buffer(s, 2, C, dt, 1);
    layer_norm_backward(di, dw, db, to_backend_dt(dout, n, dt), to_backend_dt(inp, n, dt), to_backend(mean, N),
                        to_backend(rstd, N), to_backend_dt(w, C, dt), N, C, s->start[0] != NULL, dt);
    Grads r = {{grad_fetch(di, n, dt), grad_fetch(dw, C, dt), grad_fetch(db, C, dt)}};
    restore_backend();
    free(mean);
    free(rstd);
    return r;
}

// The forward's output the backward needs, as dt stores it: attention_forward on the CPU in f32,
// on the inputs as dt holds them, rounded to dt. The same for every backend of a comparison.
static float* attention_out(const float* q, const float* k, const float* v, int N, int NH, int Lq, int Lk, int HS,
                            int causal, DType dt) {
    size_t nq = (size_t)N * Lq * NH * HS, nk = (size_t)N * Lk * NH * HS;
    float *q32 = rounded(q, nq, dt), *k32 = rounded(k, nk, dt), *v32 = rounded(v, nk, dt);
    float* o = xmalloc(sizeof(float) * nq);
    attention_forward_cpu(o, q32, k32, v32, N, NH, Lq, Lk, HS, causal, DT_F32);
    float* o_dt = rounded(o, nq, dt);
    free(q32);
    free(k32);
    free(v32);
    free(o);
    return o_dt;
}

// out_dt: the storage the forward's output was rounded to (dt itself, except in the 16-bit test,
// whose f32 reference must see the same rounded output as the 16-bit run)
static Grads run_attn_bwd(Backend be, DType dt, DType out_dt, const float* dout, const float* q, const float* k,
                          const float* v, int N, int NH, int Lq, int Lk, int HS, int causal, const GradSpec* s) {
    float* o = attention_out(q, k, v, N, NH, Lq, Lk, HS, causal, out_dt);
    use_backend(be);
    size_t nq = (size_t)N * Lq * NH * HS, nk = (size_t)N * Lk * NH * HS;
    void *dq = grad_buffer(s, 0, nq, dt, 0), *dk = grad_buffer(s, 1, nk, dt, 0), *dv = grad_buffer(s, 2, nk, dt, 0);
    attention_backward(dq, dk, dv, to_backend_dt(dout, nq, dt), to_backend_dt(q, nq, dt), to_backend_dt(k, nk, dt),
                       to_backend_dt(v, nk, dt), to_backend_dt(o, nq, dt), N, NH, Lq, Lk, HS, causal, dt);
    Grads r = {{grad_fetch(dq, nq, dt), grad_fetch(dk, nk, dt), grad_fetch(dv, nk, dt)}};
    restore_backend();
    free(o);
    return r;
}

typedef enum { UNARY_SILU, UNARY_GELU } UnaryOp;
static const char* unary_names[] = {"silu", "gelu"};

// in_place: dinp is the dout buffer (the contract allows it)
static float* run_unary_bwd(Backend be, DType dt, UnaryOp op, const float* dout, const float* inp, size_t n, int in_place) {
    use_backend(be);
    void* d_dout = to_backend_dt(dout, n, dt);
    void* d_dinp = in_place ? d_dout : backend_alloc_dt(n, dt);
    if (op == UNARY_SILU) silu_backward(d_dinp, d_dout, to_backend_dt(inp, n, dt), n, dt);
    else gelu_backward(d_dinp, d_dout, to_backend_dt(inp, n, dt), n, dt);
    float* r = fetch_dt(d_dinp, n, dt);
    restore_backend();
    return r;
}

static float* run_geglu_bwd(Backend be, DType dt, const float* dout, const float* inp, int N, int C) {
    use_backend(be);
    void* d = backend_alloc_dt((size_t)N * 2 * C, dt);
    geglu_backward(d, to_backend_dt(dout, (size_t)N * C, dt), to_backend_dt(inp, (size_t)N * 2 * C, dt), N, C, dt);
    float* r = fetch_dt(d, (size_t)N * 2 * C, dt);
    restore_backend();
    return r;
}

static float* run_upsample_bwd(Backend be, DType dt, const float* dout, int N, int C, int H, int W, int H_out, int W_out) {
    use_backend(be);
    size_t n = (size_t)N * C * H * W;
    void* d = grad_buffer(&ALL_GRADS, 0, n, dt, 0); // NaN: the output is `=`
    upsample_nearest_backward(d, to_backend_dt(dout, (size_t)N * C * H_out * W_out, dt), N, C, H, W, H_out, W_out, dt);
    float* r = fetch_dt(d, n, dt);
    restore_backend();
    return r;
}

// ----------------------------------------------------------------------------
// Golden tests (the runner's backend against torch autograd)

static SafeTensors g_golden;
static int open_backward_golden(void) { return golden_open(&g_golden, "backward.safetensors"); }

// `<case>.<role>` from the golden file (NULL when absent; `required` makes that a failed check).
static float* golden(const char* name, const char* role, int required) {
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", name, role);
    if (!required && !safetensors_find(&g_golden, full)) return NULL;
    return golden_f32(&g_golden, full, NULL);
}

static int64_t golden_dim(const char* name, const char* role, int d) {
    char full[128];
    int64_t shape[8];
    snprintf(full, sizeof(full), "%s.%s", name, role);
    int rank = golden_shape(&g_golden, full, shape);
    return d < rank ? shape[d] : 0;
}

// want + start, elementwise, for the += checks (NULL start: want itself)
static float* plus(const float* want, const float* start, size_t n) {
    float* y = xmalloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) y[i] = want[i] + (start ? start[i] : 0.0f);
    return y;
}

// The three checks every op with gradient outputs gets:
//   1. a fresh call (input gradients NaN, parameter gradients zero) against the goldens;
//   2. a call into nonzero starting buffers, accumulate = 1: start + golden;
//   3. gradient `alone` by itself (the others NULL): bit-identical to the fresh call's.
// `run` wraps the op's runner for a GradSpec. names[i] is the golden role of output i (NULL when
// the case has no such output), sizes[i] its element count, rel[i] its tolerance.
typedef Grads (*RunSpec)(const void* ctx, const GradSpec* s);
static void check_grads(const char* label, RunSpec run, const void* ctx, const char* name, const char* const names[MAX_GRADS],
                        const size_t sizes[MAX_GRADS], const float rel[MAX_GRADS], int has_accumulate, int alone) {
    float* want[MAX_GRADS] = {NULL, NULL, NULL};
    GradSpec fresh = {{0, 0, 0}, {NULL, NULL, NULL}};
    for (int i = 0; i < MAX_GRADS; i++) {
        if (!names[i]) continue;
        want[i] = golden(name, names[i], 1);
        if (!want[i]) {
            for (int j = 0; j <= i; j++) free(want[j]);
            return;
        }
        fresh.want[i] = 1;
    }
    char full[160];
    Grads got = run(ctx, &fresh);
    for (int i = 0; i < MAX_GRADS; i++) {
        if (!want[i]) continue;
        snprintf(full, sizeof(full), "%s %s", label, names[i]);
        expect_grad(full, got.g[i], want[i], sizes[i], rel[i], rel[i]);
    }
    if (has_accumulate) {
        // starting values of the size of the gradients: the sum must be start + gradient
        GradSpec acc = fresh;
        float* start[MAX_GRADS] = {NULL, NULL, NULL};
        for (int i = 0; i < MAX_GRADS; i++)
            if (want[i]) acc.start[i] = start[i] = random_array(sizes[i], 900 + i, -1, 1);
        Grads sum = run(ctx, &acc);
        for (int i = 0; i < MAX_GRADS; i++) {
            if (!want[i]) continue;
            float* expected = plus(want[i], start[i], sizes[i]);
            snprintf(full, sizeof(full), "%s %s += (from nonzero)", label, names[i]);
            // the golden's tolerance on the scale of the sum (the start is O(1))
            float scale = max_abs(expected, sizes[i]) > max_abs(want[i], sizes[i]) ? max_abs(expected, sizes[i])
                                                                                   : max_abs(want[i], sizes[i]);
            check_close(full, sum.g[i], expected, sizes[i], rel[i] * scale, rel[i]);
            free(expected);
            free(start[i]);
        }
        grads_free(&sum);
    }
    if (alone >= 0 && want[alone]) {
        GradSpec one = {{0, 0, 0}, {NULL, NULL, NULL}};
        one.want[alone] = 1;
        Grads single = run(ctx, &one);
        snprintf(full, sizeof(full), "%s %s alone (others NULL)", label, names[alone]);
        check_bytes_equal(full, single.g[alone], got.g[alone], sizeof(float) * sizes[alone]);
        grads_free(&single);
    }
    grads_free(&got);
    for (int i = 0; i < MAX_GRADS; i++) free(want[i]);
}

typedef struct {
    const float *dout, *inp, *w, *b;
    int N, C_in, H, W, C_out, K, stride, pad, G, silu;
} OpCase;

static Grads linear_spec(const void* ctx, const GradSpec* s) {
    const OpCase* c = ctx;
    return run_linear_bwd(backend_current(), DT_F32, c->dout, c->inp, c->w, c->N, c->C_in, c->C_out, s);
}

static void test_backward_linear(void) {
    if (!open_backward_golden()) return;
    const char* cases[] = {"linear", "linear_nobias"};
    for (int t = 0; t < 2; t++) {
        OpCase c = {.N = 6, .C_in = 33, .C_out = 17}; // must match make_golden_backward.py
        float *dout = golden(cases[t], "dout", 1), *x = golden(cases[t], "inp", 1), *w = golden(cases[t], "weight", 1);
        if (!dout || !x || !w) return;
        c.dout = dout, c.inp = x, c.w = w;
        const char* names[MAX_GRADS] = {"dinp", "dweight", t == 0 ? "dbias" : NULL};
        size_t sizes[MAX_GRADS] = {6 * 33, 17 * 33, 17};
        // dinp sums 17 products, dweight 6, dbias 6 values
        float rel[MAX_GRADS] = {REL_GEMM, REL_GEMM, REL_GEMM};
        char label[64];
        snprintf(label, sizeof(label), "linear 6x33 -> 17%s", t == 0 ? "" : " (no bias)");
        check_grads(label, linear_spec, &c, cases[t], names, sizes, rel, 1, 0);
        free(dout); free(x); free(w);
    }
    safetensors_close(&g_golden);
}

static Grads conv_spec(const void* ctx, const GradSpec* s) {
    const OpCase* c = ctx;
    return run_conv_bwd(backend_current(), DT_F32, c->dout, c->inp, c->w, c->N, c->C_in, c->H, c->W, c->C_out, c->K,
                        c->stride, c->pad, s);
}

static void test_backward_conv2d(void) {
    if (!open_backward_golden()) return;
    // (name, K, stride, pad): must match conv_cases in scripts/make_golden_backward.py
    struct { const char* name; int K, stride, pad; } cases[] = {
        {"conv_k3s1p1", 3, 1, 1}, {"conv_k3s2p1", 3, 2, 1}, {"conv_k1", 1, 1, 0},
        {"conv_k3s1p1_odd", 3, 1, 1}, {"conv_k3s2p0", 3, 2, 0}, {"conv_chunks", 3, 1, 1},
    };
    for (size_t t = 0; t < sizeof(cases) / sizeof(cases[0]); t++) {
        const char* name = cases[t].name;
        OpCase c = {.N = (int)golden_dim(name, "inp", 0), .C_in = (int)golden_dim(name, "inp", 1),
                    .H = (int)golden_dim(name, "inp", 2), .W = (int)golden_dim(name, "inp", 3),
                    .C_out = (int)golden_dim(name, "weight", 0), .K = cases[t].K, .stride = cases[t].stride, .pad = cases[t].pad};
        float *dout = golden(name, "dout", 1), *x = golden(name, "inp", 1), *w = golden(name, "weight", 1);
        if (!dout || !x || !w) return;
        c.dout = dout, c.inp = x, c.w = w;
        char bias_name[64];
        snprintf(bias_name, sizeof(bias_name), "%s.dbias", name);
        int has_bias = safetensors_find(&g_golden, bias_name) != NULL;
        const char* names[MAX_GRADS] = {"dinp", "dweight", has_bias ? "dbias" : NULL};
        size_t sizes[MAX_GRADS] = {(size_t)c.N * c.C_in * c.H * c.W, (size_t)c.C_out * c.C_in * c.K * c.K, (size_t)c.C_out};
        // dinp sums C_out*K*K <= 54 products; dweight and dbias sum over N * 4900 pixels at most
        // (conv_chunks): K * 2^-24 * sum|terms| is then ~3e-4 of the sum of |terms| as a bound,
        // but pairwise-like blocking in the GEMM and double sums for dbias keep the error near
        // sqrt(K) * 2^-24 ~ 4e-6 of the scale
        float rel[MAX_GRADS] = {REL_GEMM, REL_GEMM, REL_GEMM};
        char label[96];
        snprintf(label, sizeof(label), "conv2d %s (%dx%dx%dx%d -> %d)", name, c.N, c.C_in, c.H, c.W, c.C_out);
        check_grads(label, conv_spec, &c, name, names, sizes, rel, 1, 0);
        free(dout); free(x); free(w);
    }
    safetensors_close(&g_golden);
}

static Grads gn_spec(const void* ctx, const GradSpec* s) {
    const OpCase* c = ctx;
    return run_gn_bwd(backend_current(), DT_F32, c->dout, c->inp, c->w, c->b, c->N, c->C_in, c->H * c->W, c->G, c->silu, s);
}

static Grads ln_spec(const void* ctx, const GradSpec* s) {
    const OpCase* c = ctx;
    return run_ln_bwd(backend_current(), DT_F32, c->dout, c->inp, c->w, c->N, c->C_in, s);
}

static void test_backward_norms(void) {
    if (!open_backward_golden()) return;
    // group norm: N 2, C 8, HW 15, G 4, eps 1e-5 (make_golden_backward.py)
    struct { const char* name; int affine, silu; } cases[] = {
        {"gn", 1, 0}, {"gn_noaffine", 0, 0}, {"gn_silu", 1, 1}, {"gn_noaffine_silu", 0, 1},
    };
    for (int t = 0; t < 4; t++) {
        const char* name = cases[t].name;
        OpCase c = {.N = 2, .C_in = 8, .H = 3, .W = 5, .G = 4, .silu = cases[t].silu};
        float *dout = golden(name, "dout", 1), *x = golden(name, "inp", 1);
        float* w = cases[t].affine ? golden(name, "weight", 1) : NULL;
        float* b = cases[t].affine ? golden(name, "bias", 1) : NULL;
        if (!dout || !x || (cases[t].affine && (!w || !b))) return;
        c.dout = dout, c.inp = x, c.w = w, c.b = b;
        const char* names[MAX_GRADS] = {"dinp", cases[t].affine ? "dweight" : NULL, cases[t].affine ? "dbias" : NULL};
        size_t sizes[MAX_GRADS] = {2 * 8 * 15, 8, 8};
        float rel[MAX_GRADS] = {REL_NORM, REL_NORM, REL_NORM};
        char label[96];
        snprintf(label, sizeof(label), "group_norm%s%s", cases[t].affine ? "" : " no affine", cases[t].silu ? " + silu" : "");
        check_grads(label, gn_spec, &c, name, names, sizes, rel, 1, 0);
        free(dout); free(x); free(w); free(b);
    }
    // layer norm: N 7, C 33, eps 1e-5
    for (int t = 0; t < 2; t++) {
        const char* name = t == 0 ? "ln" : "ln_noaffine";
        OpCase c = {.N = 7, .C_in = 33};
        float *dout = golden(name, "dout", 1), *x = golden(name, "inp", 1);
        float* w = t == 0 ? golden(name, "weight", 1) : NULL;
        if (!dout || !x || (t == 0 && !w)) return;
        c.dout = dout, c.inp = x, c.w = w;
        const char* names[MAX_GRADS] = {"dinp", t == 0 ? "dweight" : NULL, t == 0 ? "dbias" : NULL};
        size_t sizes[MAX_GRADS] = {7 * 33, 33, 33};
        float rel[MAX_GRADS] = {REL_NORM, REL_NORM, REL_NORM};
        check_grads(t == 0 ? "layer_norm" : "layer_norm no affine", ln_spec, &c, name, names, sizes, rel, 1, 0);
        free(dout); free(x); free(w);
    }
    safetensors_close(&g_golden);
}

typedef struct {
    const float *dout, *q, *k, *v;
    int N, NH, Lq, Lk, HS, causal;
} AttnCase;

static Grads attn_spec(const void* ctx, const GradSpec* s) {
    const AttnCase* c = ctx;
    return run_attn_bwd(backend_current(), DT_F32, DT_F32, c->dout, c->q, c->k, c->v, c->N, c->NH, c->Lq, c->Lk, c->HS, c->causal, s);
}

static void test_backward_attention(void) {
    if (!open_backward_golden()) return;
    // (name, N, NH, Lq, Lk, HS, causal): must match attn_cases in make_golden_backward.py
    struct { const char* name; int N, NH, Lq, Lk, HS, causal; } cases[] = {
        {"attn_cross", 2, 2, 5, 7, 8, 0},    {"attn_hs64", 1, 2, 9, 77, 64, 0}, {"attn_causal", 1, 2, 70, 70, 8, 1},
        {"attn_lk130", 1, 1, 66, 130, 16, 0}, {"attn_hs512", 1, 1, 10, 12, 512, 0},
    };
    for (size_t t = 0; t < sizeof(cases) / sizeof(cases[0]); t++) {
        const char* name = cases[t].name;
        AttnCase c = {.N = cases[t].N, .NH = cases[t].NH, .Lq = cases[t].Lq, .Lk = cases[t].Lk, .HS = cases[t].HS,
                      .causal = cases[t].causal};
        float *dout = golden(name, "dout", 1), *q = golden(name, "q", 1), *k = golden(name, "k", 1), *v = golden(name, "v", 1);
        if (!dout || !q || !k || !v) return;
        c.dout = dout, c.q = q, c.k = k, c.v = v;
        const char* names[MAX_GRADS] = {"dq", "dk", "dv"};
        size_t nq = (size_t)c.N * c.Lq * c.NH * c.HS, nk = (size_t)c.N * c.Lk * c.NH * c.HS;
        size_t sizes[MAX_GRADS] = {nq, nk, nk};
        // products over HS <= 512 and over the keys and queries (<= 130), a softmax between:
        // GEMM-like sums; dS = P * (dP - D) cancels (its rows sum to zero), so a little below the
        // scale of dP, which the scale-relative atol covers
        float rel[MAX_GRADS] = {REL_GEMM, REL_GEMM, REL_GEMM};
        char label[128];
        snprintf(label, sizeof(label), "attention %s (NH %d Lq %d Lk %d HS %d%s)", name, c.NH, c.Lq, c.Lk, c.HS,
                 c.causal ? " causal" : "");
        // no accumulate: dq, dk and dv are `=`, and they start as NaN in check_grads' fresh call
        check_grads(label, attn_spec, &c, name, names, sizes, rel, 0, 1);
        free(dout); free(q); free(k); free(v);
    }
    safetensors_close(&g_golden);
}

static void test_backward_activations(void) {
    if (!open_backward_golden()) return;
    Backend be = backend_current();
    for (int op = UNARY_SILU; op <= UNARY_GELU; op++) {
        size_t n;
        char in_name[64], dout_name[64], want_name[64], label[96];
        snprintf(in_name, sizeof(in_name), "%s.inp", unary_names[op]);
        snprintf(dout_name, sizeof(dout_name), "%s.dout", unary_names[op]);
        snprintf(want_name, sizeof(want_name), "%s.dinp", unary_names[op]);
        float *x = golden_f32(&g_golden, in_name, &n), *dout = golden_f32(&g_golden, dout_name, NULL);
        float* want = golden_f32(&g_golden, want_name, NULL);
        if (!x || !dout || !want) return;
        float* got = run_unary_bwd(be, DT_F32, (UnaryOp)op, dout, x, n, 0);
        snprintf(label, sizeof(label), "%s_backward on [-30, 30]", unary_names[op]);
        expect_grad(label, got, want, n, REL_ELEM, 1e-5f);
        float* got_alias = run_unary_bwd(be, DT_F32, (UnaryOp)op, dout, x, n, 1);
        snprintf(label, sizeof(label), "%s_backward in place (dinp = dout)", unary_names[op]);
        check_bytes_equal(label, got_alias, got, sizeof(float) * n);
        free(x); free(dout); free(want); free(got); free(got_alias);
    }
    float *x = golden("geglu", "inp", 1), *dout = golden("geglu", "dout", 1), *want = golden("geglu", "dinp", 1);
    if (!x || !dout || !want) return;
    float* got = run_geglu_bwd(be, DT_F32, dout, x, 5, 12);
    expect_grad("geglu_backward 5x(2*12)", got, want, 5 * 24, REL_ELEM, 1e-5f);
    free(x); free(dout); free(want); free(got);
    safetensors_close(&g_golden);
}

static void test_backward_upsample(void) {
    if (!open_backward_golden()) return;
    struct { const char* name; int C, H, W, H_out, W_out; } cases[] = {
        {"upsample_2x", 2, 5, 7, 10, 14}, {"upsample_43", 1, 43, 24, 85, 48}};
    for (int t = 0; t < 2; t++) {
        float *dout = golden(cases[t].name, "dout", 1), *want = golden(cases[t].name, "dinp", 1);
        if (!dout || !want) return;
        size_t n = (size_t)cases[t].C * cases[t].H * cases[t].W;
        float* got = run_upsample_bwd(backend_current(), DT_F32, dout, 1, cases[t].C, cases[t].H, cases[t].W, cases[t].H_out,
                                      cases[t].W_out);
        char label[96];
        snprintf(label, sizeof(label), "upsample_nearest_backward %dx%d -> %dx%d", cases[t].H, cases[t].W, cases[t].H_out,
                 cases[t].W_out);
        // each input cell sums 4 (2x) or at most 4 (43 -> 85, 24 -> 48) gradients
        expect_grad(label, got, want, n, REL_SUM, REL_SUM);
        free(dout); free(want); free(got);
    }
    safetensors_close(&g_golden);
}

// ----------------------------------------------------------------------------
// 16-bit storage on the CPU: bit for bit the rounded f32 result

static void expect_rounded_grads(const char* label, Grads got, Grads want, const size_t sizes[MAX_GRADS], DType dt) {
    static const char* role[MAX_GRADS] = {"(1st output)", "(2nd output)", "(3rd output)"};
    for (int i = 0; i < MAX_GRADS; i++) {
        char full[128];
        snprintf(full, sizeof(full), "%s %s", label, role[i]);
        if (got.g[i] && want.g[i]) expect_rounded(full, got.g[i], want.g[i], sizes[i], dt);
        else check_true(!got.g[i] && !want.g[i], "%s %s: both present or both absent", label, role[i]);
    }
}

static void test_backward_16bit_cpu(void) {
    DType types[2] = {DT_F16, DT_BF16};
    for (int ti = 0; ti < 2; ti++) {
        DType dt = types[ti];
        Backend be = BACKEND_CPU;
        // inputs drawn in f32, rounded once: the values both runs see, starting values included
        size_t big = 2 * 9 * 33 * 20;
        float* raw[6];
        for (int i = 0; i < 6; i++) raw[i] = random_array(big, 500 + i, -2, 2);
        float* x = rounded(raw[0], big, dt);
        float* g = rounded(raw[1], big, dt);
        float* s0 = rounded(raw[2], big, dt); // starting values of += outputs
        float* s1 = rounded(raw[3], big, dt);
        float* s2 = rounded(raw[4], big, dt);
        float* w = rounded(raw[5], big, dt);
        for (int i = 0; i < 6; i++) free(raw[i]);
        for (size_t i = 0; i < big; i++) w[i] *= 0.25f; // exact: a power of two
        GradSpec acc = {{1, 1, 1}, {s0, s1, s2}};

        size_t sz[MAX_GRADS] = {20 * 33, 17 * 33, 17};
        expect_rounded_grads("linear_backward accumulate", run_linear_bwd(be, dt, g, x, w, 20, 33, 17, &acc),
                             run_linear_bwd(be, DT_F32, g, x, w, 20, 33, 17, &acc), sz, dt);
        expect_rounded_grads("linear_backward", run_linear_bwd(be, dt, g, x, w, 20, 33, 17, &ALL_GRADS),
                             run_linear_bwd(be, DT_F32, g, x, w, 20, 33, 17, &ALL_GRADS), sz, dt);
        struct { int N, C_in, H, W, C_out, K, stride, pad; } convs[] = {
            {2, 5, 9, 11, 6, 3, 1, 1}, {1, 4, 9, 10, 6, 3, 2, 1}, {2, 6, 5, 7, 4, 1, 1, 0}};
        for (int c = 0; c < 3; c++) {
            size_t csz[MAX_GRADS] = {(size_t)convs[c].N * convs[c].C_in * convs[c].H * convs[c].W,
                                     (size_t)convs[c].C_out * convs[c].C_in * convs[c].K * convs[c].K, (size_t)convs[c].C_out};
            char label[64];
            snprintf(label, sizeof(label), "conv2d_backward k%d s%d accumulate", convs[c].K, convs[c].stride);
            expect_rounded_grads(label,
                                 run_conv_bwd(be, dt, g, x, w, convs[c].N, convs[c].C_in, convs[c].H, convs[c].W, convs[c].C_out,
                                              convs[c].K, convs[c].stride, convs[c].pad, &acc),
                                 run_conv_bwd(be, DT_F32, g, x, w, convs[c].N, convs[c].C_in, convs[c].H, convs[c].W,
                                              convs[c].C_out, convs[c].K, convs[c].stride, convs[c].pad, &acc),
                                 csz, dt);
        }
        size_t gsz[MAX_GRADS] = {2 * 8 * 15, 8, 8};
        for (int silu = 0; silu < 2; silu++) {
            expect_rounded_grads(silu ? "group_norm_backward + silu accumulate" : "group_norm_backward accumulate",
                                 run_gn_bwd(be, dt, g, x, w, s2, 2, 8, 15, 4, silu, &acc),
                                 run_gn_bwd(be, DT_F32, g, x, w, s2, 2, 8, 15, 4, silu, &acc), gsz, dt);
        }
        expect_rounded_grads("group_norm_backward no affine", run_gn_bwd(be, dt, g, x, NULL, NULL, 2, 8, 15, 4, 1, &ALL_GRADS),
                             run_gn_bwd(be, DT_F32, g, x, NULL, NULL, 2, 8, 15, 4, 1, &ALL_GRADS), gsz, dt);
        size_t lsz[MAX_GRADS] = {7 * 30, 30, 30};
        expect_rounded_grads("layer_norm_backward accumulate", run_ln_bwd(be, dt, g, x, w, 7, 30, &acc),
                             run_ln_bwd(be, DT_F32, g, x, w, 7, 30, &acc), lsz, dt);
        struct { int N, NH, Lq, Lk, HS, causal; } attn[] = {{2, 2, 9, 21, 64, 0}, {1, 3, 70, 70, 16, 1}};
        for (int c = 0; c < 2; c++) {
            size_t nq = (size_t)attn[c].N * attn[c].Lq * attn[c].NH * attn[c].HS;
            size_t nk = (size_t)attn[c].N * attn[c].Lk * attn[c].NH * attn[c].HS;
            size_t asz[MAX_GRADS] = {nq, nk, nk};
            expect_rounded_grads(attn[c].causal ? "attention_backward causal" : "attention_backward HS 64",
                                 run_attn_bwd(be, dt, dt, g, x, w, s0, attn[c].N, attn[c].NH, attn[c].Lq, attn[c].Lk, attn[c].HS,
                                              attn[c].causal, &ALL_GRADS),
                                 run_attn_bwd(be, DT_F32, dt, g, x, w, s0, attn[c].N, attn[c].NH, attn[c].Lq, attn[c].Lk, attn[c].HS,
                                              attn[c].causal, &ALL_GRADS),
                                 asz, dt);
        }
        for (int op = UNARY_SILU; op <= UNARY_GELU; op++) {
            char label[64];
            snprintf(label, sizeof(label), "%s_backward", unary_names[op]);
            expect_rounded(label, run_unary_bwd(be, dt, (UnaryOp)op, g, x, 1000, 1), run_unary_bwd(be, DT_F32, (UnaryOp)op, g, x, 1000, 0),
                           1000, dt);
        }
        expect_rounded("geglu_backward", run_geglu_bwd(be, dt, g, x, 30, 20), run_geglu_bwd(be, DT_F32, g, x, 30, 20), 1200, dt);
        expect_rounded("upsample_nearest_backward 7x5 <- 13x10", run_upsample_bwd(be, dt, g, 2, 3, 7, 5, 13, 10),
                       run_upsample_bwd(be, DT_F32, g, 2, 3, 7, 5, 13, 10), 2 * 3 * 7 * 5, dt);
        free(x); free(g); free(s0); free(s1); free(s2); free(w);
    }
}

// ----------------------------------------------------------------------------
// CUDA against CPU on fresh random inputs

static void compare_grads(const char* label, Grads cpu, Grads gpu, const size_t sizes[MAX_GRADS], const float rel[MAX_GRADS],
                          const float rtol[MAX_GRADS]) {
    static const char* role[MAX_GRADS] = {"(1st output)", "(2nd output)", "(3rd output)"};
    for (int i = 0; i < MAX_GRADS; i++) {
        if (!cpu.g[i]) continue;
        char full[160];
        snprintf(full, sizeof(full), "%s %s", label, role[i]);
        expect_grad(full, gpu.g[i], cpu.g[i], sizes[i], rel[i], rtol[i]);
    }
    grads_free(&cpu);
    grads_free(&gpu);
}

// One unit in the last place of dt, relative: 2^-11 for f16's 11-bit significand, 2^-8 for bf16.
// The spacing of dt's values is 1 to 2 such units of |v| (more at the bottom of a binade); with
// atol = rel * max|want| >= rel * |v| and rtol = rel, rel = 1 unit admits one full spacing at every
// element, which is what two nearly equal f32 results can round apart.
static float ulp_of(DType dt) { return dt == DT_F16 ? 1.0f / 2048.0f : dt == DT_BF16 ? 1.0f / 256.0f : 0.0f; }

// The tolerance of a comparison in dt: f32's REL_CUDA, plus `ulps` units in the last place of dt.
static float rel_for(DType dt, float ulps) { return REL_CUDA + ulps * ulp_of(dt); }

static void test_backward_cuda_linear_conv(void) {
    if (!test_require_cuda()) return;
    DType types[3] = {DT_F32, DT_F16, DT_BF16};
    for (int ti = 0; ti < 3; ti++) {
        DType dt = types[ti];
        char label[128];
        int N = 390, C_in = 300, C_out = 250;
        float *x = random_array((size_t)N * C_in, 1000, -1, 1), *w = random_array((size_t)C_out * C_in, 1001, -0.2f, 0.2f);
        float* g = random_array((size_t)N * C_out, 1002, -1, 1);
        float *s0 = random_array((size_t)N * C_in, 1003, -1, 1), *s1 = random_array((size_t)C_out * C_in, 1004, -1, 1);
        float* s2 = random_array(C_out, 1005, -1, 1);
        GradSpec acc = {{1, 1, 1}, {s0, s1, s2}};
        size_t sz[MAX_GRADS] = {(size_t)N * C_in, (size_t)C_out * C_in, (size_t)C_out};
        // 16 bits: every output is one f32 sum added to its start and rounded once in both
        // backends, so 1 ulp (a different rounding of nearly equal f32 values)
        float rel[MAX_GRADS] = {rel_for(dt, 1), rel_for(dt, 1), rel_for(dt, 1)};
        snprintf(label, sizeof(label), "cuda %s linear_backward 390x300 -> 250 accumulate", dtype_name(dt));
        compare_grads(label, run_linear_bwd(BACKEND_CPU, dt, g, x, w, N, C_in, C_out, &acc),
                      run_linear_bwd(BACKEND_CUDA, dt, g, x, w, N, C_in, C_out, &acc), sz, rel, rel);
        snprintf(label, sizeof(label), "cuda %s linear_backward", dtype_name(dt));
        compare_grads(label, run_linear_bwd(BACKEND_CPU, dt, g, x, w, N, C_in, C_out, &ALL_GRADS),
                      run_linear_bwd(BACKEND_CUDA, dt, g, x, w, N, C_in, C_out, &ALL_GRADS), sz, rel, rel);
        free(x); free(w); free(g); free(s0); free(s1); free(s2);

        struct { int N, C_in, H, W, C_out, K, stride, pad, acc; } convs[] = {
            {2, 32, 33, 40, 48, 3, 1, 1, 0}, {1, 16, 96, 80, 8, 3, 1, 1, 1}, // 7680 pixels: two chunks
            {1, 32, 31, 30, 64, 3, 2, 1, 1}, {2, 64, 16, 16, 32, 1, 1, 0, 1},
        };
        for (size_t c = 0; c < sizeof(convs) / sizeof(convs[0]); c++) {
            int Nc = convs[c].N, Ci = convs[c].C_in, H = convs[c].H, W = convs[c].W, Co = convs[c].C_out, K = convs[c].K;
            int P = conv_out(H, K, convs[c].stride, convs[c].pad) * conv_out(W, K, convs[c].stride, convs[c].pad);
            size_t csz[MAX_GRADS] = {(size_t)Nc * Ci * H * W, (size_t)Co * Ci * K * K, (size_t)Co};
            float* cx = random_array(csz[0], 1010 + c, -1, 1);
            float* cw = random_array(csz[1], 1020 + c, -0.2f, 0.2f);
            float* cg = random_array((size_t)Nc * Co * P, 1030 + c, -1, 1);
            float* c0 = random_array(csz[0], 1040 + c, -1, 1);
            float* c1 = random_array(csz[1], 1050 + c, -1, 1);
            float* c2 = random_array(csz[2], 1060 + c, -1, 1);
            GradSpec spec = {{1, 1, 1}, {convs[c].acc ? c0 : NULL, c1, c2}};
            // f32: dweight sums N*P <= 7680 products; 16 bits: CUDA keeps dcol, the image's dinp
            // and dweight in f32 and rounds each output once, as the CPU: 1 ulp
            float crel[MAX_GRADS] = {rel_for(dt, 1), rel_for(dt, 1), rel_for(dt, 1)};
            snprintf(label, sizeof(label), "cuda %s conv2d_backward %dx%dx%dx%d -> %d k%d s%d%s", dtype_name(dt), Nc, Ci, H, W, Co,
                     K, convs[c].stride, convs[c].acc ? " accumulate" : "");
            compare_grads(label, run_conv_bwd(BACKEND_CPU, dt, cg, cx, cw, Nc, Ci, H, W, Co, K, convs[c].stride, convs[c].pad, &spec),
                          run_conv_bwd(BACKEND_CUDA, dt, cg, cx, cw, Nc, Ci, H, W, Co, K, convs[c].stride, convs[c].pad, &spec),
                          csz, crel, crel);
            free(cx); free(cw); free(cg); free(c0); free(c1); free(c2);
        }
    }
}

static void test_backward_cuda_norms(void) {
    if (!test_require_cuda()) return;
    DType types[3] = {DT_F32, DT_F16, DT_BF16};
    for (int ti = 0; ti < 3; ti++) {
        DType dt = types[ti];
        char label[128];
        int N = 2, C = 64, HW = 1000, G = 32;
        size_t n = (size_t)N * C * HW;
        float *x = random_array(n, 1100, -2, 6), *g = random_array(n, 1101, -1, 1), *s0 = random_array(n, 1102, -1, 1);
        float *w = random_array(C, 1103, 0.5f, 1.5f), *b = random_array(C, 1104, -1, 1);
        float *s1 = random_array(C, 1105, -1, 1), *s2 = random_array(C, 1106, -1, 1);
        GradSpec acc = {{1, 1, 1}, {s0, s1, s2}};
        size_t gsz[MAX_GRADS] = {n, (size_t)C, (size_t)C};
        // f32 block sums of 1000 (per channel) and 2 x 2000 values against double: REL_CUDA;
        // 16 bits: rounded once in both, 1 ulp; dweight and dbias sum 2000 values: add the f32
        // difference on top of it
        float rel[MAX_GRADS] = {rel_for(dt, 1), rel_for(dt, 1), rel_for(dt, 1)};
        for (int silu = 0; silu < 2; silu++) {
            snprintf(label, sizeof(label), "cuda %s group_norm_backward%s 2x64x1000 G32 accumulate", dtype_name(dt),
                     silu ? " + silu" : "");
            compare_grads(label, run_gn_bwd(BACKEND_CPU, dt, g, x, w, b, N, C, HW, G, silu, &acc),
                          run_gn_bwd(BACKEND_CUDA, dt, g, x, w, b, N, C, HW, G, silu, &acc), gsz, rel, rel);
        }
        snprintf(label, sizeof(label), "cuda %s group_norm_backward no affine + silu", dtype_name(dt));
        compare_grads(label, run_gn_bwd(BACKEND_CPU, dt, g, x, NULL, NULL, N, C, HW, G, 1, &ALL_GRADS),
                      run_gn_bwd(BACKEND_CUDA, dt, g, x, NULL, NULL, N, C, HW, G, 1, &ALL_GRADS), gsz, rel, rel);
        int rows = 512, cols = 250; // 128000 values of x as 512 tokens of 250
        size_t lsz[MAX_GRADS] = {(size_t)rows * cols, (size_t)cols, (size_t)cols};
        float *lw = random_array(cols, 1107, 0.5f, 1.5f), *l1 = random_array(cols, 1108, -1, 1), *l2 = random_array(cols, 1109, -1, 1);
        GradSpec lacc = {{1, 1, 1}, {s0, l1, l2}};
        snprintf(label, sizeof(label), "cuda %s layer_norm_backward 512x250 accumulate", dtype_name(dt));
        compare_grads(label, run_ln_bwd(BACKEND_CPU, dt, g, x, lw, rows, cols, &lacc),
                      run_ln_bwd(BACKEND_CUDA, dt, g, x, lw, rows, cols, &lacc), lsz, rel, rel);
        free(x); free(g); free(s0); free(w); free(b); free(s1); free(s2); free(lw); free(l1); free(l2);
    }
}

static void test_backward_cuda_attention(void) {
    if (!test_require_cuda()) return;
    DType types[3] = {DT_F32, DT_F16, DT_BF16};
    struct { int N, NH, Lq, Lk, HS, causal; } cases[] = {
        {2, 4, 256, 256, 64, 0}, {2, 4, 200, 77, 64, 0}, {1, 2, 77, 77, 64, 1}, {1, 3, 70, 129, 40, 0}, {1, 1, 64, 64, 512, 0},
        // the CUDA launcher takes at most 2^25 scores (all heads) per query block: SDXL's 10-head
        // level at 1024 px runs in six blocks of 683 queries, the causal case in two of 2500
        // (f16 only, the trainer's storage: these are the slow ones on the CPU)
        {1, 10, 4096, 4096, 64, 0}, {1, 2, 5000, 5000, 64, 1},
    };
    for (int ti = 0; ti < 3; ti++) {
        DType dt = types[ti];
        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
            if (cases[c].Lq > 1000 && dt != DT_F16) continue;
            size_t nq = (size_t)cases[c].N * cases[c].Lq * cases[c].NH * cases[c].HS;
            size_t nk = (size_t)cases[c].N * cases[c].Lk * cases[c].NH * cases[c].HS;
            float *q = random_array(nq, 1200 + c, -1, 1), *k = random_array(nk, 1210 + c, -1, 1);
            float *v = random_array(nk, 1220 + c, -1, 1), *g = random_array(nq, 1230 + c, -1, 1);
            size_t sz[MAX_GRADS] = {nq, nk, nk};
            // 16 bits: P (for dV) and dS (for dQ, dK) are rounded to dt before their products, so
            // every term of those sums carries up to half an ulp, and the result rounds once more:
            // 4 ulps of the scale, absolute (elements that cancel to nearly 0 have no relative
            // accuracy in either backend)
            float rel[MAX_GRADS] = {rel_for(dt, 4), rel_for(dt, 4), rel_for(dt, 4)};
            float rtol[MAX_GRADS] = {REL_CUDA, REL_CUDA, REL_CUDA};
            if (dt != DT_F32) rtol[0] = rtol[1] = rtol[2] = 0.0f;
            char label[128];
            snprintf(label, sizeof(label), "cuda %s attention_backward NH %d Lq %d Lk %d HS %d%s", dtype_name(dt), cases[c].NH,
                     cases[c].Lq, cases[c].Lk, cases[c].HS, cases[c].causal ? " causal" : "");
            compare_grads(label,
                          run_attn_bwd(BACKEND_CPU, dt, dt, g, q, k, v, cases[c].N, cases[c].NH, cases[c].Lq, cases[c].Lk,
                                       cases[c].HS, cases[c].causal, &ALL_GRADS),
                          run_attn_bwd(BACKEND_CUDA, dt, dt, g, q, k, v, cases[c].N, cases[c].NH, cases[c].Lq, cases[c].Lk,
                                       cases[c].HS, cases[c].causal, &ALL_GRADS),
                          sz, rel, rtol);
            free(q); free(k); free(v); free(g);
        }
    }
}

static void test_backward_cuda_elementwise(void) {
    if (!test_require_cuda()) return;
    DType types[3] = {DT_F32, DT_F16, DT_BF16};
    for (int ti = 0; ti < 3; ti++) {
        DType dt = types[ti];
        char label[128];
        size_t n = 100003;
        float *x = random_array(n, 1300, -12, 12), *g = random_array(n, 1301, -1, 1);
        // expf/erff on the device are within 2 ulp of f32, as the CPU's: elementwise accuracy;
        // in 16 bits a different f32 value can round to the neighbouring dt value: 1 ulp
        float rel = dt == DT_F32 ? REL_ELEM : ulp_of(dt);
        for (int op = UNARY_SILU; op <= UNARY_GELU; op++) {
            snprintf(label, sizeof(label), "cuda %s %s_backward", dtype_name(dt), unary_names[op]);
            float *cpu = run_unary_bwd(BACKEND_CPU, dt, (UnaryOp)op, g, x, n, 0), *gpu = run_unary_bwd(BACKEND_CUDA, dt, (UnaryOp)op, g, x, n, 1);
            expect_grad(label, gpu, cpu, n, rel, dt == DT_F32 ? 1e-5f : rel);
            free(cpu); free(gpu);
        }
        snprintf(label, sizeof(label), "cuda %s geglu_backward 1000x50", dtype_name(dt));
        float *cpu = run_geglu_bwd(BACKEND_CPU, dt, g, x, 1000, 50), *gpu = run_geglu_bwd(BACKEND_CUDA, dt, g, x, 1000, 50);
        expect_grad(label, gpu, cpu, 100000, rel, dt == DT_F32 ? 1e-5f : rel);
        free(cpu); free(gpu);
        // the same additions in the same order in both backends: identical
        for (int two = 0; two < 2; two++) {
            int H_out = two ? 86 : 85;
            snprintf(label, sizeof(label), "cuda %s upsample_nearest_backward 43x24 <- %dx48", dtype_name(dt), H_out);
            cpu = run_upsample_bwd(BACKEND_CPU, dt, g, 2, 8, 43, 24, H_out, 48);
            gpu = run_upsample_bwd(BACKEND_CUDA, dt, g, 2, 8, 43, 24, H_out, 48);
            check_bytes_equal(label, gpu, cpu, sizeof(float) * 2 * 8 * 43 * 24);
            free(cpu); free(gpu);
        }
        free(x); free(g);
    }
}

// ----------------------------------------------------------------------------
// Finite differences: one chain of ops, end to end
//
//   h1 = silu(group_norm(x; gw, gb))           x (1, 4, 5, 4), G 2
//   h2 = conv3x3(h1; cw, cb), stride 1, pad 1   (1, 6, 5, 4)
//   t  = h2 as tokens (1, 20, 6)                transpose
//   o  = attention(t, t, t), 2 heads of 3       self-attention: dt = dq + dk + dv
//   loss = sum(o * r)
// Our f32 forward and backward give d loss / d{x, gw, gb, cw, cb}; the reference is the central
// difference (L(p + h) - L(p - h)) / 2h of a float64 forward written out below, with h = 1e-4:
// truncation error h^2 * L''' ~ 1e-8, rounding 1e-16 / h ~ 1e-12, so the reference is exact to
// about 1e-8 and the comparison measures our f32 gradients. Those come from a chain of five ops,
// each with GEMM-like f32 sums (<= 54 terms): REL_GEMM of the scale per op, 5 * REL_GEMM overall.

enum { FD_C = 4, FD_H = 5, FD_W = 4, FD_G = 2, FD_CO = 6, FD_NH = 2, FD_K = 3 };
#define FD_HW (FD_H * FD_W)
#define FD_HS (FD_CO / FD_NH)

typedef struct {
    double x[FD_C * FD_HW], gw[FD_C], gb[FD_C], cw[FD_CO * FD_C * FD_K * FD_K], cb[FD_CO];
} FdParams;

static double fd_loss(const FdParams* p, const double* r) {
    double h1[FD_C * FD_HW], t[FD_HW * FD_CO], o[FD_HW * FD_CO];
    int CG = FD_C / FD_G;
    for (int g = 0; g < FD_G; g++) {
        const double* x = p->x + g * CG * FD_HW;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < CG * FD_HW; i++) mean += x[i];
        mean /= CG * FD_HW;
        for (int i = 0; i < CG * FD_HW; i++) var += (x[i] - mean) * (x[i] - mean);
        var /= CG * FD_HW;
        double rstd = 1.0 / sqrt(var + 1e-5);
        for (int i = 0; i < CG * FD_HW; i++) {
            int c = g * CG + i / FD_HW;
            double y = (x[i] - mean) * rstd * p->gw[c] + p->gb[c];
            h1[g * CG * FD_HW + i] = y / (1.0 + exp(-y));
        }
    }
    // conv, written straight into the token layout t[pixel, channel]
    for (int o_c = 0; o_c < FD_CO; o_c++)
        for (int y = 0; y < FD_H; y++)
            for (int x = 0; x < FD_W; x++) {
                double s = p->cb[o_c];
                for (int c = 0; c < FD_C; c++)
                    for (int ky = 0; ky < FD_K; ky++)
                        for (int kx = 0; kx < FD_K; kx++) {
                            int sy = y - 1 + ky, sx = x - 1 + kx;
                            if (sy < 0 || sy >= FD_H || sx < 0 || sx >= FD_W) continue;
                            s += p->cw[((o_c * FD_C + c) * FD_K + ky) * FD_K + kx] * h1[c * FD_HW + sy * FD_W + sx];
                        }
                t[(y * FD_W + x) * FD_CO + o_c] = s;
            }
    double scale = 1.0 / sqrt((double)FD_HS);
    for (int h = 0; h < FD_NH; h++)
        for (int i = 0; i < FD_HW; i++) {
            double s[FD_HW], mx = -INFINITY, sum = 0.0;
            for (int j = 0; j < FD_HW; j++) {
                double d = 0.0;
                for (int e = 0; e < FD_HS; e++) d += t[i * FD_CO + h * FD_HS + e] * t[j * FD_CO + h * FD_HS + e];
                s[j] = d * scale;
                mx = s[j] > mx ? s[j] : mx;
            }
            for (int j = 0; j < FD_HW; j++) sum += (s[j] = exp(s[j] - mx));
            for (int e = 0; e < FD_HS; e++) {
                double acc = 0.0;
                for (int j = 0; j < FD_HW; j++) acc += s[j] / sum * t[j * FD_CO + h * FD_HS + e];
                o[i * FD_CO + h * FD_HS + e] = acc;
            }
        }
    double loss = 0.0;
    for (int i = 0; i < FD_HW * FD_CO; i++) loss += o[i] * r[i];
    return loss;
}

// The central difference of the loss for every entry of one parameter array of p.
static void fd_gradient(float* grad, FdParams* p, double* param, int n, const double* r) {
    const double h = 1e-4;
    for (int i = 0; i < n; i++) {
        double keep = param[i];
        param[i] = keep + h;
        double up = fd_loss(p, r);
        param[i] = keep - h;
        double down = fd_loss(p, r);
        param[i] = keep;
        grad[i] = (float)((up - down) / (2.0 * h));
    }
}

static void test_backward_finite_difference(void) {
    use_backend(BACKEND_CPU);
    const DType f32 = DT_F32;
    float x[FD_C * FD_HW], gw[FD_C], gb[FD_C], cw[FD_CO * FD_C * FD_K * FD_K], cb[FD_CO], r[FD_HW * FD_CO];
    fill_uniform(x, FD_C * FD_HW, 1400, -2, 2);
    fill_uniform(gw, FD_C, 1401, 0.5f, 1.5f);
    fill_uniform(gb, FD_C, 1402, -0.5f, 0.5f);
    fill_uniform(cw, FD_CO * FD_C * FD_K * FD_K, 1403, -0.5f, 0.5f);
    fill_uniform(cb, FD_CO, 1404, -0.5f, 0.5f);
    fill_uniform(r, FD_HW * FD_CO, 1405, -1, 1);

    // forward, saving what the backward reads
    float h1[FD_C * FD_HW], h2[FD_CO * FD_HW], t[FD_HW * FD_CO], o[FD_HW * FD_CO], mean[FD_G], rstd[FD_G];
    float* scratch = xmalloc(sizeof(float) * conv2d_scratch_elems(FD_C, FD_H, FD_W, FD_K, 1, 1));
    group_norm_forward(h1, mean, rstd, x, gw, gb, 1, FD_C, FD_HW, FD_G, 1e-5f, 1, f32);
    conv2d_forward(h2, h1, cw, cb, scratch, 1, FD_C, FD_H, FD_W, FD_CO, FD_K, 1, 1, 0, f32);
    transpose_forward(t, h2, 1, FD_CO, FD_HW, f32);
    attention_forward(o, t, t, t, 1, FD_NH, FD_HW, FD_HW, FD_HS, 0, f32);

    // backward: d loss / d o = r
    float dq[FD_HW * FD_CO], dk[FD_HW * FD_CO], dv[FD_HW * FD_CO], dt_[FD_HW * FD_CO], dh2[FD_CO * FD_HW], dh1[FD_C * FD_HW];
    float dx[FD_C * FD_HW], dgw[FD_C] = {0}, dgb[FD_C] = {0}, dcw[FD_CO * FD_C * FD_K * FD_K] = {0}, dcb[FD_CO] = {0};
    attention_backward(dq, dk, dv, r, t, t, t, o, 1, FD_NH, FD_HW, FD_HW, FD_HS, 0, f32);
    add_forward(dt_, dq, dk, FD_HW * FD_CO, f32); // t fed q, k and v: its gradient is the sum
    add_forward(dt_, dt_, dv, FD_HW * FD_CO, f32);
    transpose_forward(dh2, dt_, 1, FD_HW, FD_CO, f32); // transpose's backward is the transpose back
    conv2d_backward(dh1, dcw, dcb, dh2, h1, cw, scratch, 1, FD_C, FD_H, FD_W, FD_CO, FD_K, 1, 1, 0, f32);
    group_norm_backward(dx, dgw, dgb, dh1, x, mean, rstd, gw, gb, 1, FD_C, FD_HW, FD_G, 1, 0, f32);
    free(scratch);

    FdParams p;
    double rd[FD_HW * FD_CO];
    for (int i = 0; i < FD_C * FD_HW; i++) p.x[i] = x[i];
    for (int i = 0; i < FD_C; i++) p.gw[i] = gw[i], p.gb[i] = gb[i];
    for (int i = 0; i < FD_CO * FD_C * FD_K * FD_K; i++) p.cw[i] = cw[i];
    for (int i = 0; i < FD_CO; i++) p.cb[i] = cb[i];
    for (int i = 0; i < FD_HW * FD_CO; i++) rd[i] = r[i];
    float want_x[FD_C * FD_HW], want_gw[FD_C], want_gb[FD_C], want_cw[FD_CO * FD_C * FD_K * FD_K], want_cb[FD_CO];
    fd_gradient(want_x, &p, p.x, FD_C * FD_HW, rd);
    fd_gradient(want_gw, &p, p.gw, FD_C, rd);
    fd_gradient(want_gb, &p, p.gb, FD_C, rd);
    fd_gradient(want_cw, &p, p.cw, FD_CO * FD_C * FD_K * FD_K, rd);
    fd_gradient(want_cb, &p, p.cb, FD_CO, rd);
    const float rel = 5 * REL_GEMM;
    expect_grad("chain d loss / d x (group_norm input)", dx, want_x, FD_C * FD_HW, rel, rel);
    expect_grad("chain d loss / d group_norm weight", dgw, want_gw, FD_C, rel, rel);
    expect_grad("chain d loss / d group_norm bias", dgb, want_gb, FD_C, rel, rel);
    expect_grad("chain d loss / d conv weight", dcw, want_cw, FD_CO * FD_C * FD_K * FD_K, rel, rel);
    expect_grad("chain d loss / d conv bias", dcb, want_cb, FD_CO, rel, rel);
    restore_backend();
}

// ----------------------------------------------------------------------------
// Determinism: the CPU backward passes give the same bits with one thread and with several (every
// parameter-gradient sum has one owner and a fixed order; gemm.c is thread-count independent).

#ifdef _OPENMP
static void expect_same_grads(const char* label, Grads a, Grads b, const size_t sizes[MAX_GRADS]) {
    static const char* role[MAX_GRADS] = {"(1st output)", "(2nd output)", "(3rd output)"};
    for (int i = 0; i < MAX_GRADS; i++) {
        char full[128];
        snprintf(full, sizeof(full), "%s %s", label, role[i]);
        if (a.g[i]) check_bytes_equal(full, b.g[i], a.g[i], sizeof(float) * sizes[i]);
    }
    grads_free(&a);
    grads_free(&b);
}

#endif

static void test_backward_deterministic_across_threads(void) {
#ifdef _OPENMP
    size_t big = 2 * 64 * 1000;
    float *x = random_array(big, 1500, -2, 2), *g = random_array(big, 1501, -1, 1), *w = random_array(big, 1502, -0.2f, 0.2f);
    float *s0 = random_array(big, 1503, -1, 1), *s1 = random_array(big, 1504, -1, 1), *s2 = random_array(big, 1505, -1, 1);
    GradSpec acc = {{1, 1, 1}, {s0, s1, s2}};
    int saved = omp_get_max_threads(), many = saved > 1 ? saved : 2;
    Grads r[2];
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t == 0 ? 1 : many);
        r[t] = run_linear_bwd(BACKEND_CPU, DT_F32, g, x, w, 200, 300, 250, &acc);
    }
    expect_same_grads("linear_backward 200x300 -> 250", r[0], r[1], (size_t[MAX_GRADS]){200 * 300, 250 * 300, 250});
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t == 0 ? 1 : many);
        r[t] = run_conv_bwd(BACKEND_CPU, DT_F32, g, x, w, 2, 32, 33, 40, 48, 3, 1, 1, &acc);
    }
    expect_same_grads("conv2d_backward 2x32x33x40 -> 48", r[0], r[1], (size_t[MAX_GRADS]){2 * 32 * 33 * 40, 48 * 32 * 9, 48});
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t == 0 ? 1 : many);
        r[t] = run_gn_bwd(BACKEND_CPU, DT_F32, g, x, w, s2, 2, 64, 1000, 32, 1, &acc);
    }
    expect_same_grads("group_norm_backward + silu 2x64x1000", r[0], r[1], (size_t[MAX_GRADS]){big, 64, 64});
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t == 0 ? 1 : many);
        r[t] = run_ln_bwd(BACKEND_CPU, DT_F32, g, x, w, 512, 250, &acc);
    }
    expect_same_grads("layer_norm_backward 512x250", r[0], r[1], (size_t[MAX_GRADS]){512 * 250, 250, 250});
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t == 0 ? 1 : many);
        r[t] = run_attn_bwd(BACKEND_CPU, DT_F32, DT_F32, g, x, w, s0, 2, 4, 130, 77, 64, 0, &ALL_GRADS);
    }
    expect_same_grads("attention_backward NH 4 Lq 130 Lk 77 HS 64", r[0], r[1],
                      (size_t[MAX_GRADS]){2 * 130 * 256, 2 * 77 * 256, 2 * 77 * 256});
    omp_set_num_threads(saved);
    free(x); free(g); free(w); free(s0); free(s1); free(s2);
#else
    test_skip("built without OpenMP (OMP=0): one thread only");
#endif
}

const TestCase tests_backward[] = {
    {"backward_linear", test_backward_linear},
    {"backward_conv2d", test_backward_conv2d},
    {"backward_norms", test_backward_norms},
    {"backward_attention", test_backward_attention},
    {"backward_activations", test_backward_activations},
    {"backward_upsample", test_backward_upsample},
    {"backward_16bit_cpu", test_backward_16bit_cpu},
    {"backward_finite_difference", test_backward_finite_difference},
    {"backward_deterministic_across_threads", test_backward_deterministic_across_threads},
    {"backward_cuda_linear_conv", test_backward_cuda_linear_conv},
    {"backward_cuda_norms", test_backward_cuda_norms},
    {"backward_cuda_attention", test_backward_cuda_attention},
    {"backward_cuda_elementwise", test_backward_cuda_elementwise},
    {NULL, NULL},
};
