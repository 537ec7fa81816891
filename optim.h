// optim.h: the LoRA trainer's optimizer arithmetic, computed as PyTorch computes it on the CPU in
// float32:
//
//   adamw_step          torch.optim.AdamW (single-tensor path: foreach=False, fused=False)
//   GradScaler          torch.amp.GradScaler: loss scaling, unscale + inf/NaN check, scale update
//   clip_grad_norm      torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2)
//   lr_schedule_lr      diffusers.optimization.get_scheduler(name, ...) driving torch's LambdaLR
//
// in torch 2.15 and diffusers 0.42.1. Everything runs on host memory: the trainer keeps all LoRA
// tensors in one contiguous float buffer (and their grads and the two Adam moments in three more
// of the same length), and copies the gradient vector to the host for the optimizer step.
//
// One training step as accelerate runs it with mixed_precision="fp16" (Accelerator.backward,
// Accelerator.clip_grad_norm_, AcceleratedOptimizer.step, AcceleratedScheduler.step):
//
//   loss_scaled = grad_scaler_scale(&scaler, loss)               backward of loss_scaled -> grad
//   found_inf   = grad_scaler_unscale(&scaler, grad, n)          grad /= scale, any inf/NaN?
//   norm        = clip_grad_norm(grad, sizes, count, 1.0)        (clips even when found_inf)
//   if (!found_inf) {                                            GradScaler.step skips the update
//       cfg.lr = lr_schedule_lr(kind, base_lr, updates, warmup, total);
//       adamw_step(param, grad, m, v, n, ++updates, &cfg);       AdamW's step count: updates made
//   }                                                            (the schedule advances only
//   grad_scaler_update(&scaler, found_inf);                       after an update, as accelerate)
//
// Exactness (tests/test_optim.c, goldens from scripts/make_golden_optim.py): every value is
// bit-exact with torch except two, which are bit-exact with torch run with those two made exact:
//   - torch.sqrt on the CPU is MKL's vsSqrt (VML_HA), 1 ulp off the correctly rounded root for
//     about a fifth of f32 inputs, and not reproducible outside MKL (it may even differ between
//     CPUs). adamw_step uses sqrtf (correctly rounded). Adam's moments never go through the sqrt
//     and stay bit-exact; the parameters agree with torch to about an ulp of the update.
//   - torch's f32 vector_norm accumulates in float in an order of its own. clip_grad_norm sums
//     squares in double (sequentially) and rounds each norm to f32, as torch stores it: the norm
//     is within a few ulp of torch's, and usually equal.
#pragma once
#include <stddef.h>
#include <stdint.h>

// ----------------------------------------------------------------------------
// AdamW

typedef struct {
    double lr;           // learning rate of this update (>= 0); the schedule's lr_schedule_lr()
    double beta1, beta2; // moment decay rates, each in [0, 1): (0.9, 0.999)
    double eps;          // added to the root of the second moment (>= 0): 1e-8
    double weight_decay; // decoupled decay, param *= 1 - lr * weight_decay (>= 0): 1e-2
} AdamWConfig;

// torch.optim.AdamW's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2
// (amsgrad and maximize off, which is all we implement).
AdamWConfig adamw_defaults(void);

// The checks of torch.optim.Adam.__init__ (0 <= lr, 0 <= eps, 0 <= beta < 1, 0 <= weight_decay).
// Returns 0, or -1 with a one-line err (ERR_MAX bytes; may be NULL).
int adamw_config_check(const AdamWConfig* c, char* err);

// One AdamW update of n parameters, in place (torch/optim/adam.py _single_tensor_adam with
// decoupled_weight_decay=True), with the same f32 roundings and FMAs as ATen's CPU kernels:
//   param      *= 1 - lr * weight_decay                       (skipped when weight_decay == 0)
//   exp_avg     = exp_avg.lerp(grad, 1 - beta1)
//   exp_avg_sq  = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
//   param      += -(lr / (1 - beta1^step)) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps)
// step is the update's count, 1 for the first (torch's state["step"] after its increment); it must
// be >= 1. exp_avg and exp_avg_sq start as zeros and are carried between calls. The four arrays
// hold n floats each and must not overlap. A config adamw_config_check rejects is a caller bug.
void adamw_step(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, size_t n, int64_t step,
                const AdamWConfig* c);

// ----------------------------------------------------------------------------
// Dynamic loss scaling: torch.amp.GradScaler

typedef struct {
    float scale;             // the loss scale (GradScaler._scale, a float32 tensor): init_scale 2^16
    int32_t growth_tracker;  // updates without inf/NaN since the scale last changed (an int32 tensor)
    double growth_factor;    // scale *= growth_factor after growth_interval clean updates (> 1): 2.0
    double backoff_factor;   // scale *= backoff_factor on inf/NaN (< 1): 0.5
    int64_t growth_interval; // 2000
} GradScaler;

// torch.amp.GradScaler() defaults: scale 65536, tracker 0, factors 2.0 and 0.5, interval 2000.
GradScaler grad_scaler_default(void);

// The checks of GradScaler.__init__ (growth_factor > 1, backoff_factor < 1), plus what its
// arithmetic assumes (a finite scale > 0, backoff_factor > 0, growth_interval >= 1). Returns 0,
// or -1 with a one-line err (may be NULL).
int grad_scaler_check(const GradScaler* s, char* err);

// GradScaler.scale(loss): loss * scale in f32; the loss the trainer backpropagates.
float grad_scaler_scale(const GradScaler* s, float loss);

// GradScaler.unscale_'s inv_scale: self._scale.double().reciprocal().float().
float grad_scaler_inv_scale(const GradScaler* s);

// GradScaler.unscale_ (ATen _amp_foreach_non_finite_check_and_unscale_, CPU kernel): returns 1
// when any of the n gradients (as they come in, still scaled) is inf or NaN, else 0, and
// multiplies all of them by inv_scale in place (inf and NaN included; nothing when inv_scale is
// exactly 1). When it returns 1, GradScaler.step skips the optimizer update.
int grad_scaler_unscale(const GradScaler* s, float* grad, size_t n);

// GradScaler.update() (ATen _amp_update_scale_, CPU kernel). found_inf: what unscale returned.
//   found_inf: scale *= backoff_factor, tracker = 0
//   else:      tracker += 1; when it reaches growth_interval: tracker = 0 and
//              scale *= growth_factor, unless that product overflows f32 (the scale then stays)
// The products are computed in double and rounded to f32, as the kernel does.
void grad_scaler_update(GradScaler* s, int found_inf);

// ----------------------------------------------------------------------------
// Gradient clipping: torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2)

// grad holds `count` tensors back to back, of sizes[0..count) floats. Computes
//   total = ||(||g_0||, ..., ||g_{count-1}||)||_2                 (norm of the per-tensor norms)
//   coef  = min((1 / (total + 1e-6)) * max_norm, 1)              (f32, as torch: max_norm / t is
//                                                                  Tensor.__rdiv__ = reciprocal * max_norm)
//   grad *= coef                                                  (always, even when coef is 1)
// and returns total (f32, as torch's returned tensor). Each norm is a double sum of squares
// rounded to f32 (torch rounds them too; its own sums are f32, so the result is within a few ulp
// of torch's). An inf or NaN gradient gives total inf or NaN and, as in torch with
// error_if_nonfinite=False, grads of 0 and NaN. max_norm > 0; count >= 1.
float clip_grad_norm(float* grad, const size_t* sizes, int count, double max_norm);

// ----------------------------------------------------------------------------
// Learning-rate schedules: diffusers.optimization.get_scheduler with its defaults, as LambdaLR

typedef enum {
    LR_CONSTANT,             // 1
    LR_CONSTANT_WITH_WARMUP, // k / warmup during warmup, then 1
    LR_LINEAR,               // warmup, then (total - k) / (total - warmup), down to 0 at total
    LR_COSINE,               // warmup, then 0.5 * (1 + cos(pi * progress)): half a cosine to 0 at
                             // total (past total it rises again, as diffusers' does)
    LR_COSINE_WITH_RESTARTS, // warmup, then get_scheduler's num_cycles = 1: the same half cosine,
                             // 0 from total on
    LR_POLYNOMIAL,           // warmup, then linear (power 1) from base_lr to lr_end 1e-7 at total
    LR_SCHEDULE_COUNT,
} LrSchedule;

// diffusers' SchedulerType names: "constant", "constant_with_warmup", "linear", "cosine",
// "cosine_with_restarts", "polynomial".
const char* lr_schedule_name(LrSchedule s);
// Returns 0, or -1 with a one-line err (may be NULL) for a name we do not know (diffusers'
// "piecewise_constant", which needs step rules, is among them).
int lr_schedule_from_name(const char* name, LrSchedule* s, char* err);
// Checks the numbers a schedule uses: warmup_steps >= 0, total_steps >= 1 for the decaying ones
// (polynomial also needs total_steps > warmup_steps, where diffusers would divide by zero, and
// base_lr > 1e-7, which diffusers asserts). Returns 0, or -1 with a one-line err (may be NULL).
int lr_schedule_check(LrSchedule s, double base_lr, int64_t warmup_steps, int64_t total_steps, char* err);

// The schedule's lambda (the lr_lambda of diffusers' get_*_schedule_with_warmup) at scheduler
// step `step`: the lr of the step-th optimizer update (0 for the first) is base_lr * this. In
// double, with diffusers' operations in their order. Not for LR_POLYNOMIAL, whose lambda divides
// by the base lr: use lr_schedule_lr (calling this with it is a caller bug).
double lr_multiplier(LrSchedule s, int64_t step, int64_t warmup_steps, int64_t total_steps);

// The learning rate of update `step` (0 for the first), as LambdaLR.get_lr computes it:
// base_lr * lambda(step), with polynomial's lr_init = base_lr. With accelerate, `step` counts the
// updates actually made: a step skipped for inf/NaN gradients does not advance the schedule.
double lr_schedule_lr(LrSchedule s, double base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps);
