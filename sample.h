// sample.h: the diffusers schedulers SDXL uses, as samplers over a model callback.
//
//   euler            EulerDiscreteScheduler            (SDXL base's own scheduler)
//   euler_a          EulerAncestralDiscreteScheduler
//   ddim             DDIMScheduler, eta 0
//   dpmpp_2m_karras  DPMSolverMultistepScheduler(use_karras_sigmas=True, algorithm_type="dpmsolver++",
//                    solver_order=2), with its defaults lower_order_final=True, final_sigmas_type="zero"
//
// each built with `<Scheduler>.from_config(scheduler_config)` as in diffusers 0.42.1: the same
// timesteps given to the UNet, the same sigmas, init_noise_sigma and scale_model_input, and the
// same update formulas in f32. Use:
//
//   SchedulerConfig cfg;  scheduler_config_read(&cfg, "<model>/scheduler/scheduler_config.json", err)
//                         (or scheduler_config_sdxl(&cfg) for a checkpoint without one)
//   Schedule s;           schedule_init(&s, SAMPLER_EULER, 30, &cfg, err)
//   x = randn(generator) * s.init_noise_sigma           (the caller's: torch_randn + scale_forward)
//   sample(&s, x, n, model, ctx, &generator, &scratch)  (x holds the denoised latents afterwards)
//
// The model callback is the UNet with classifier-free guidance inside it (cfg_combine), so the
// samplers never see the conditioning. All vector math runs through ops.h on the current backend,
// so on CUDA the latents never leave the device; scalars are computed on the host.
#pragma once
#include <stddef.h>

#include "rng.h"
#include "tensor.h"

// ----------------------------------------------------------------------------
// scheduler/scheduler_config.json

typedef enum { BETA_SCALED_LINEAR, BETA_LINEAR } BetaSchedule;
typedef enum { PREDICT_EPSILON, PREDICT_V } PredictionType;
typedef enum {
    SPACING_DEFAULT,  // key absent: each scheduler class's own default (DDIM "leading", the others "linspace")
    SPACING_LEADING,
    SPACING_TRAILING,
    SPACING_LINSPACE,
} TimestepSpacing;

#define SCHEDULE_MAX_TRAIN_STEPS 1000 // num_train_timesteps we accept (every SD/SDXL model uses 1000)

typedef struct {
    int num_train_timesteps;        // T
    double beta_start, beta_end;
    BetaSchedule beta_schedule;
    PredictionType prediction_type;
    TimestepSpacing timestep_spacing;
    int steps_offset;               // added to the "leading" timesteps
    int set_alpha_to_one;           // DDIM's alpha after the last step: 1, or alphas_cumprod[0] (0); -1 absent
    int clip_sample;                // DDIM clamps x0 to [-1, 1] when 1 (not supported); -1 absent
} SchedulerConfig;

// SDXL base 1.0's scheduler_config.json: T 1000, scaled_linear 0.00085..0.012, epsilon, leading,
// steps_offset 1, set_alpha_to_one false, clip_sample false (the diffusers single-file default too).
void scheduler_config_sdxl(SchedulerConfig* c);
// Reads a diffusers scheduler_config.json. A key that is absent takes the diffusers class default
// (beta_schedule "linear" 0.0001..0.02, epsilon, steps_offset 0, ...), not SDXL's. Keys that would
// change the schedule in ways we do not implement (trained_betas, rescale_betas_zero_snr,
// interpolation_type "log_linear", final_sigmas_type "sigma_min", thresholding, exponential or beta
// sigmas, ...) are rejected. Keys that choose a sampler variant (_class_name, use_karras_sigmas,
// algorithm_type, solver_order) are ignored: SamplerKind chooses. Returns 0, or -1 with a one-line
// err naming the file and key.
int scheduler_config_read(SchedulerConfig* c, const char* path, char* err);
// The same from JSON text in memory (name is used in error messages).
int scheduler_config_parse(SchedulerConfig* c, const char* json, size_t len, const char* name, char* err);

// ----------------------------------------------------------------------------
// Schedules

typedef enum { SAMPLER_EULER, SAMPLER_EULER_ANCESTRAL, SAMPLER_DDIM, SAMPLER_DPMPP_2M_KARRAS, SAMPLER_COUNT } SamplerKind;
const char* sampler_name(SamplerKind k);                 // "euler", "euler_a", "ddim", "dpmpp_2m_karras"
int sampler_from_name(const char* name, SamplerKind* k); // 0, or -1 for a name we do not know

// Called after every step with the new latents x (n floats on the backend), step = 1..steps; the
// pipeline's progress line or preview. Gets the model's ctx.
typedef void (*SampleStepFn)(void* ctx, int step, int steps, const float* x, size_t n);

typedef struct {
    SamplerKind kind;
    int steps;                    // model calls (1..1000)
    PredictionType prediction_type;
    float timesteps[SCHEDULE_MAX_TRAIN_STEPS];  // t given to the model at each step
    float sigmas[SCHEDULE_MAX_TRAIN_STEPS + 1]; // noise level at each step, sigmas[steps] = 0. DDIM
                                                // works in alphas_cumprod; its sigmas are the
                                                // equivalent table values, for information
    float init_noise_sigma;       // initial latents = randn * init_noise_sigma
    // The training-noise tables (length num_train_timesteps), as the schedulers compute them in f32.
    int num_train_timesteps;
    float betas[SCHEDULE_MAX_TRAIN_STEPS];
    float alphas_cumprod[SCHEDULE_MAX_TRAIN_STEPS];
    float sigma_table[SCHEDULE_MAX_TRAIN_STEPS];   // sqrt((1 - ac) / ac), increasing with t
    // DDIM: prev_timestep = t - ddim_step_ratio; alphas_cumprod there, or final_alpha_cumprod below 0
    int ddim_step_ratio;
    float final_alpha_cumprod;
    SampleStepFn on_step;         // optional (NULL after schedule_init); set it before sampling
} Schedule;

// What diffusers' set_timesteps(steps) gives for this sampler and config. Returns 0, or -1 with a
// one-line err (steps outside 1..num_train_timesteps, a combination diffusers gets wrong, ...).
int schedule_init(Schedule* s, SamplerKind kind, int steps, const SchedulerConfig* c, char* err);

// The shared tables alone (betas, alphas_cumprod, sigma_table for c->num_train_timesteps values).
void schedule_tables(const SchedulerConfig* c, float* betas, float* alphas_cumprod, float* sigma_table);

// ----------------------------------------------------------------------------
// Samplers

// The model: out (n floats, backend) = UNet(model_input (n floats, backend), t) at step `step`
// (0-based), with classifier-free guidance applied inside. out is the prediction the config's
// prediction_type names (epsilon or v). model_input is scratch the callback may read only.
typedef void (*ModelFn)(void* ctx, const float* model_input, float t, int step, float* out);

// Bytes of scratch the samplers take from the arena for n latent values (sizes `scratch`).
size_t sample_scratch_bytes(size_t n);

// Each runs all s->steps steps on x (n floats on the current backend; the caller made the initial
// noise x = randn * s->init_noise_sigma), taking scratch from `scratch` (an arena on the backend,
// released again on return). They are fatal only on caller bugs (a schedule of another kind).
void sample_euler(const Schedule* s, float* x, size_t n, ModelFn model, void* ctx, Arena* scratch);
// noise: the torch CPU generator the initial latents came from; diffusers draws one randn of the
// latent shape per step from it (on the CPU, then moved to the device), after the initial latents.
void sample_euler_ancestral(const Schedule* s, float* x, size_t n, ModelFn model, void* ctx, TorchGenerator* noise,
                            Arena* scratch);
void sample_ddim(const Schedule* s, float* x, size_t n, ModelFn model, void* ctx, Arena* scratch);
void sample_dpmpp_2m_karras(const Schedule* s, float* x, size_t n, ModelFn model, void* ctx, Arena* scratch);
// Dispatches on s->kind; noise may be NULL except for euler_a.
void sample(const Schedule* s, float* x, size_t n, ModelFn model, void* ctx, TorchGenerator* noise, Arena* scratch);

// Classifier-free guidance as StableDiffusionXLPipeline writes it:
//   out = eps_uncond + scale * (eps_cond - eps_uncond)
// with the same f32 roundings (the difference, then the product, then the sum). n floats on the
// backend; out may be eps_cond or a separate buffer, not eps_uncond.
void cfg_combine(float* out, const float* eps_uncond, const float* eps_cond, float scale, size_t n);
