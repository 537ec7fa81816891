// optim.c: the trainer's optimizer arithmetic (see optim.h).
//
// It mirrors, in torch 2.15 (CPU, float32) and diffusers 0.42.1:
//   torch/optim/adam.py                      _single_tensor_adam (AdamW = Adam with
//                                            decoupled_weight_decay=True)
//   aten/src/ATen/native/cpu/LerpKernel.cpp  lerp_scalar_kernel (exp_avg.lerp_)
//   aten/src/ATen/native/cpu/PointwiseOpsKernel.cpp  addcmul / addcdiv
//   torch/amp/grad_scaler.py                 GradScaler.scale, unscale_, update
//   aten/src/ATen/native/cpu/AmpGradScalerKernels.cpp  _amp_foreach_non_finite_check_and_unscale_,
//                                            _amp_update_scale_
//   torch/nn/utils/clip_grad.py              clip_grad_norm_ (_get_total_norm, _clip_grads_with_norm_)
//   torch/optim/lr_scheduler.py              LambdaLR.get_lr
//   diffusers/optimization.py                get_scheduler and the get_*_schedule* lambdas
//
// How torch rounds, which is what the code below copies:
//   - Python floats are doubles: the optimizer's scalars (bias corrections, step size, 1 - lr*wd)
//     are computed in double, and `beta ** step` and `x ** 0.5` are libm's pow, as CPython calls it.
//   - A Python float handed to an f32 tensor op (tensor * 0.999, lerp_(g, 0.1), addcmul_(value=))
//     is rounded to f32 first, and the op runs in f32.
//   - ATen's CPU kernels are compiled with FMA contraction on (GCC's default for C++, with -mfma in
//     the AVX2/AVX512 builds): lerp's vector path calls vec::fmadd explicitly, and the scalar
//     paths, `self + w * (end - self)` and `self + v * t1 * t2`, come out of the compiler fused
//     too. We build with -ffp-contract=off, so those fusions are explicit fmaf() calls here;
//     everything else is a separate f32 multiply, divide or add, as there.
#include "optim.h"

#include <math.h>
#include <string.h>

#include "common.h"

// ----------------------------------------------------------------------------
// AdamW

AdamWConfig adamw_defaults(void) {
    AdamWConfig c = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2};
    return c;
}

// torch/optim/adam.py Adam.__init__: the same conditions (written so that NaN fails them too).
int adamw_config_check(const AdamWConfig* c, char* err) {
    char local[ERR_MAX];
    if (!err) err = local;
    if (!(c->lr >= 0.0)) return set_error(err, "adamw: invalid learning rate %g (must be >= 0)", c->lr);
    if (!(c->eps >= 0.0)) return set_error(err, "adamw: invalid epsilon %g (must be >= 0)", c->eps);
    if (!(c->beta1 >= 0.0 && c->beta1 < 1.0))
        return set_error(err, "adamw: invalid beta1 %g (must be in [0, 1))", c->beta1);
    if (!(c->beta2 >= 0.0 && c->beta2 < 1.0))
        return set_error(err, "adamw: invalid beta2 %g (must be in [0, 1))", c->beta2);
    if (!(c->weight_decay >= 0.0))
        return set_error(err, "adamw: invalid weight_decay %g (must be >= 0)", c->weight_decay);
    return 0;
}

// torch/optim/adam.py _single_tensor_adam, the branch for capturable=False, differentiable=False,
// amsgrad=False, maximize=False, decoupled_weight_decay=True, float betas and lr.
void adamw_step(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, size_t n, int64_t step,
                const AdamWConfig* c) {
    char err[ERR_MAX];
    if (adamw_config_check(c, err) != 0) fatal("%s", err);
    if (step < 1) fatal("adamw_step: step %lld, must be >= 1 (the count after this update)", (long long)step);

    // The scalars, in Python float (double) arithmetic, in adam.py's order:
    //   bias_correction1 = 1 - beta1**step;  bias_correction2 = 1 - beta2**step
    //   step_size = lr / bias_correction1;   bias_correction2_sqrt = bias_correction2**0.5
    // step is state["step"].item(), a float: `beta ** step` is pow(beta, (double)step).
    double bias_correction1 = 1.0 - pow(c->beta1, (double)step);
    double bias_correction2 = 1.0 - pow(c->beta2, (double)step);
    double step_size = c->lr / bias_correction1;
    double bias_correction2_sqrt = pow(bias_correction2, 0.5); // Python's ** 0.5 is pow, not sqrt

    // ... and as the f32 kernels receive them (each Python float rounded to f32 once).
    float decay = (float)(1.0 - c->lr * c->weight_decay); // param.mul_(1 - lr * weight_decay)
    float w1 = (float)(1.0 - c->beta1);                   // exp_avg.lerp_(grad, 1 - beta1)
    float beta2 = (float)c->beta2;                        // exp_avg_sq.mul_(beta2)
    float w2 = (float)(1.0 - c->beta2);                   // .addcmul_(grad, grad, value=1 - beta2)
    float bc2_sqrt = (float)bias_correction2_sqrt;        // exp_avg_sq.sqrt() / bias_correction2_sqrt
    float eps = (float)c->eps;                            // .add_(eps)
    float neg_step_size = (float)(-step_size);            // param.addcdiv_(exp_avg, denom, value=-step_size)
    // ATen lerp picks its formula by the weight (Lerp.h is_lerp_weight_small: |w| < 0.5), both
    // fused: w < 0.5: start + w * (end - start);  else: end + (w - 1) * (end - start).
    int lerp_from_start = fabsf(w1) < 0.5f;
    float w1_minus_1 = w1 - 1.0f;
    int decays = c->weight_decay != 0.0; // adam.py: `if weight_decay != 0`

#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float p = param[i], g = grad[i];
        if (decays) p = p * decay;
        // exp_avg.lerp_(grad, w1): LerpKernel.cpp lerp_vec, vec::fmadd(coeff, end - start, base)
        float m = exp_avg[i];
        float diff = g - m;
        m = lerp_from_start ? fmaf(w1, diff, m) : fmaf(w1_minus_1, diff, g);
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=w2): self + (value * t1) * t2, fused
        float v = exp_avg_sq[i] * beta2;
        v = fmaf(w2 * g, g, v);
        // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps): a true f32 division on
        // the CPU. sqrtf is correctly rounded; torch's (MKL vsSqrt) is 1 ulp off at times.
        float denom = sqrtf(v) / bc2_sqrt + eps;
        // param.addcdiv_(exp_avg, denom, value=-step_size): self + (value * t1) / t2
        p = p + (neg_step_size * m) / denom;
        param[i] = p;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
    }
}

// ----------------------------------------------------------------------------
// GradScaler

GradScaler grad_scaler_default(void) {
    // torch/amp/grad_scaler.py GradScaler.__init__ defaults; the scale tensor is created as
    // torch.full((), init_scale, dtype=float32), so init_scale is rounded to f32 (2^16 is exact).
    GradScaler s = {.scale = 65536.0f, .growth_tracker = 0, .growth_factor = 2.0, .backoff_factor = 0.5,
                    .growth_interval = 2000};
    return s;
}

int grad_scaler_check(const GradScaler* s, char* err) {
    char local[ERR_MAX];
    if (!err) err = local;
    // GradScaler.__init__ raises these two
    if (!(s->growth_factor > 1.0))
        return set_error(err, "grad scaler: growth factor %g must be > 1.0", s->growth_factor);
    if (!(s->backoff_factor < 1.0))
        return set_error(err, "grad scaler: backoff factor %g must be < 1.0", s->backoff_factor);
    // torch accepts these but then scales by 0, inf or a negative number, or never grows
    if (!(s->backoff_factor > 0.0))
        return set_error(err, "grad scaler: backoff factor %g must be > 0", s->backoff_factor);
    if (!(s->scale > 0.0f) || isinf(s->scale))
        return set_error(err, "grad scaler: scale %g must be finite and > 0", (double)s->scale);
    if (s->growth_interval < 1)
        return set_error(err, "grad scaler: growth interval %lld must be >= 1", (long long)s->growth_interval);
    if (s->growth_tracker < 0)
        return set_error(err, "grad scaler: growth tracker %d must be >= 0", (int)s->growth_tracker);
    return 0;
}

// GradScaler.scale: `outputs * self._scale`, two f32 tensors.
float grad_scaler_scale(const GradScaler* s, float loss) { return loss * s->scale; }

// GradScaler.unscale_: inv_scale = self._scale.double().reciprocal().float()
float grad_scaler_inv_scale(const GradScaler* s) { return (float)(1.0 / (double)s->scale); }

// AmpGradScalerKernels.cpp _amp_foreach_non_finite_check_and_unscale_cpu_kernel (float path):
// the inf/NaN test is on the incoming value; the product is skipped only when inv_scale == 1.
int grad_scaler_unscale(const GradScaler* s, float* grad, size_t n) {
    float inv_scale = grad_scaler_inv_scale(s);
    int found_inf = 0;
#pragma omp parallel for schedule(static) reduction(| : found_inf) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        if (!isfinite(g)) found_inf = 1;
        grad[i] = inv_scale == 1.0f ? g : g * inv_scale;
    }
    return found_inf;
}

// AmpGradScalerKernels.cpp _amp_update_scale_cpu_kernel: `float * double` is a double product,
// stored back to f32 (the growth only when that f32 is finite).
void grad_scaler_update(GradScaler* s, int found_inf) {
    if (found_inf) {
        s->scale = (float)((double)s->scale * s->backoff_factor);
        s->growth_tracker = 0;
        return;
    }
    int32_t successful = s->growth_tracker + 1;
    if (successful == s->growth_interval) {
        float new_scale = (float)((double)s->scale * s->growth_factor);
        if (isfinite(new_scale)) s->scale = new_scale; // "Do not grow the scale past fp32 bounds to inf."
        s->growth_tracker = 0;
    } else {
        s->growth_tracker = successful;
    }
}

// ----------------------------------------------------------------------------
// clip_grad_norm

// ||x||_2 of n floats: a sequential double sum of squares (each square exact in double), its
// sqrt, rounded once to f32. torch.linalg.vector_norm returns an f32 tensor too, but sums in f32.
static float norm2_f32(const float* x, size_t n) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += (double)x[i] * (double)x[i];
    return (float)sqrt(sum);
}

// torch/nn/utils/clip_grad.py clip_grad_norm_ = _get_total_norm + _clip_grads_with_norm_:
//   norms = _foreach_norm(grads, 2)                     (one f32 norm per tensor)
//   total_norm = vector_norm(stack(norms), 2)
//   clip_coef = max_norm / (total_norm + 1e-6)          (Tensor.__rdiv__: reciprocal() * max_norm)
//   clip_coef_clamped = clamp(clip_coef, max=1.0)
//   _foreach_mul_(grads, clip_coef_clamped)
float clip_grad_norm(float* grad, const size_t* sizes, int count, double max_norm) {
    if (count < 1) fatal("clip_grad_norm: %d tensors (need at least one)", count);
    if (!(max_norm > 0.0)) fatal("clip_grad_norm: max_norm %g must be > 0", max_norm);
    double sum = 0.0;
    size_t offset = 0;
    for (int t = 0; t < count; t++) {
        float norm_t = norm2_f32(grad + offset, sizes[t]);
        sum += (double)norm_t * (double)norm_t;
        offset += sizes[t];
    }
    float total = (float)sqrt(sum);
    float coef = (1.0f / (total + (float)1e-6)) * (float)max_norm;
    if (coef > 1.0f) coef = 1.0f; // torch.clamp(max=1.0); NaN stays NaN
    size_t n = offset;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) grad[i] = grad[i] * coef;
    return total;
}

// ----------------------------------------------------------------------------
// Learning-rate schedules

static const char* LR_SCHEDULE_NAMES[LR_SCHEDULE_COUNT] = {
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
};

// diffusers get_polynomial_decay_schedule_with_warmup's default lr_end, and get_scheduler's
// defaults for power (polynomial) and num_cycles (cosine_with_restarts; plain cosine keeps its
// own default 0.5 because get_scheduler does not pass num_cycles to it).
#define LR_POLYNOMIAL_END 1e-7
#define LR_POLYNOMIAL_POWER 1.0
#define LR_COSINE_CYCLES 0.5
#define LR_RESTART_CYCLES 1

const char* lr_schedule_name(LrSchedule s) {
    return (int)s >= 0 && s < LR_SCHEDULE_COUNT ? LR_SCHEDULE_NAMES[s] : "unknown";
}

int lr_schedule_from_name(const char* name, LrSchedule* s, char* err) {
    char local[ERR_MAX];
    if (!err) err = local;
    for (int i = 0; i < LR_SCHEDULE_COUNT; i++)
        if (strcmp(name, LR_SCHEDULE_NAMES[i]) == 0) {
            *s = (LrSchedule)i;
            return 0;
        }
    return set_error(err,
                     "unknown lr schedule '%s' (expected one of: constant, constant_with_warmup, linear, cosine, "
                     "cosine_with_restarts, polynomial)",
                     name);
}

int lr_schedule_check(LrSchedule s, double base_lr, int64_t warmup_steps, int64_t total_steps, char* err) {
    char local[ERR_MAX];
    if (!err) err = local;
    if ((int)s < 0 || s >= LR_SCHEDULE_COUNT) return set_error(err, "lr schedule: unknown kind %d", (int)s);
    const char* name = LR_SCHEDULE_NAMES[s];
    if (!(base_lr >= 0.0)) return set_error(err, "lr schedule %s: learning rate %g must be >= 0", name, base_lr);
    if (s == LR_CONSTANT) return 0;
    if (warmup_steps < 0)
        return set_error(err, "lr schedule %s: warmup steps %lld must be >= 0", name, (long long)warmup_steps);
    if (s == LR_CONSTANT_WITH_WARMUP) return 0;
    if (total_steps < 1)
        return set_error(err, "lr schedule %s: total steps %lld must be >= 1", name, (long long)total_steps);
    if (s == LR_POLYNOMIAL) {
        if (total_steps <= warmup_steps)
            return set_error(err, "lr schedule polynomial: total steps %lld must exceed the warmup steps %lld",
                             (long long)total_steps, (long long)warmup_steps);
        if (!(base_lr > LR_POLYNOMIAL_END)) // diffusers: "lr_end (1e-07) must be smaller than initial lr"
            return set_error(err, "lr schedule polynomial: learning rate %g must exceed lr_end %g", base_lr,
                             LR_POLYNOMIAL_END);
    }
    return 0;
}

static int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
// Python's max(a, b) returns a unless b > a (which only matters for NaN and -0.0, neither of
// which reaches it here).
static double py_max(double a, double b) { return b > a ? b : a; }

// diffusers/optimization.py, each schedule's lr_lambda(current_step); k is current_step.
// lr_init is polynomial's optimizer.defaults["lr"].
static double lr_lambda(LrSchedule s, int64_t k, int64_t warmup, int64_t total, double lr_init) {
    switch (s) {
    case LR_CONSTANT: // get_constant_schedule: lambda _: 1
        return 1.0;
    case LR_CONSTANT_WITH_WARMUP: // get_constant_schedule_with_warmup
        if (k < warmup) return (double)k / py_max(1.0, (double)warmup);
        return 1.0;
    case LR_LINEAR: { // get_linear_schedule_with_warmup, f_min 0.0, f_max 1.0
        const double f_min = 0.0, f_max = 1.0;
        if (k < warmup) return f_max * (double)k / (double)max_i64(1, warmup);
        double progress = (double)(total - k) / (double)max_i64(1, total - warmup);
        return f_min + (f_max - f_min) * py_max(0.0, progress);
    }
    case LR_COSINE: { // get_cosine_schedule_with_warmup, num_cycles 0.5
        if (k < warmup) return (double)k / (double)max_i64(1, warmup);
        double progress = (double)(k - warmup) / (double)max_i64(1, total - warmup);
        return py_max(0.0, 0.5 * (1.0 + cos(M_PI * LR_COSINE_CYCLES * 2.0 * progress)));
    }
    case LR_COSINE_WITH_RESTARTS: { // get_cosine_with_hard_restarts_schedule_with_warmup
        if (k < warmup) return (double)k / (double)max_i64(1, warmup);
        double progress = (double)(k - warmup) / (double)max_i64(1, total - warmup);
        if (progress >= 1.0) return 0.0;
        // Python's `x % 1.0` for x >= 0 is fmod(x, 1.0)
        return py_max(0.0, 0.5 * (1.0 + cos(M_PI * fmod((double)LR_RESTART_CYCLES * progress, 1.0))));
    }
    case LR_POLYNOMIAL: { // get_polynomial_decay_schedule_with_warmup
        if (k < warmup) return (double)k / (double)max_i64(1, warmup);
        if (k > total) return LR_POLYNOMIAL_END / lr_init;
        double lr_range = lr_init - LR_POLYNOMIAL_END;
        int64_t decay_steps = total - warmup;
        double pct_remaining = 1.0 - (double)(k - warmup) / (double)decay_steps; // int / int: true division
        double decay = lr_range * pow(pct_remaining, LR_POLYNOMIAL_POWER) + LR_POLYNOMIAL_END;
        return decay / lr_init;
    }
    default:
        fatal("lr schedule: unknown kind %d", (int)s);
    }
}

double lr_multiplier(LrSchedule s, int64_t step, int64_t warmup_steps, int64_t total_steps) {
    if (s == LR_POLYNOMIAL) fatal("lr_multiplier: polynomial's lambda depends on the base lr; use lr_schedule_lr");
    return lr_lambda(s, step, warmup_steps, total_steps, 1.0);
}

// torch/optim/lr_scheduler.py LambdaLR.get_lr: base_lr * lmbda(self.last_epoch)
double lr_schedule_lr(LrSchedule s, double base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps) {
    return base_lr * lr_lambda(s, step, warmup_steps, total_steps, base_lr);
}
