// train.h: the LoRA trainer (`sdxl train`): fine-tunes SDXL's UNet with LoRA on an imagefolder
// dataset, as diffusers' examples/text_to_image/train_text_to_image_lora_sdxl.py does, run under
// `accelerate launch --mixed_precision fp16` (../shared/notes/lora_training.md §1 and §8).
//
// The recipe, each part of which is an option below:
//   - LoRA on to_q, to_k, to_v, to_out.0 of every attention (or kohya's wider set), rank 4,
//     alpha = rank, A ~ N(0, 1/rank), B = 0; base weights frozen (fp16), LoRA masters and AdamW's
//     moments f32;
//   - DDPM's scaled-linear schedule (1000 steps), t uniform in [0, 1000), x_t = sqrt(abar) x0 +
//     sqrt(1 - abar) eps, the UNet predicts eps, loss = MSE in f32 (noise offset and min-SNR
//     weighting as options), the six size/crop ids of data.h;
//   - fp16 forward and backward with GradScaler's dynamic loss scale; every `grad_accum`
//     micro-batches one update: unscale, clip the norm to 1, AdamW (skipped on inf/NaN), then the
//     scale's update and the learning-rate schedule (optim.h). A "step" is one such update.
//   - VAE latents (fp32 VAE) and text embeddings cached on disk, keyed by content and settings;
//     checkpoints of the whole state every N steps, resumed bit-exactly; samples, validation loss,
//     a CSV log and a loss-curve PNG while it runs; a kohya-format LoRA at the end.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "layers.h"
#include "lora.h"
#include "optim.h"
#include "pipeline.h"
#include "rng.h"
#include "sdxl.h"

// ----------------------------------------------------------------------------
// Trainable LoRA adapters on the UNet

typedef struct {
    int rank;
    float alpha;              // scale = alpha / rank (diffusers: alpha = rank, scale 1)
    UnetLoraTargets targets;  // which Linears (sdxl.h)
    int conv_rank;            // 0: no convolutions; else kohya's conv_dim: the resnets' 3x3 convs and the
    float conv_alpha;         // samplers get this rank and alpha (their 1x1 shortcuts and time projections
                              // get rank and alpha, as kohya does)
} LoraTrainConfig;

// One adapted layer.
typedef struct {
    UnetLoraTarget target;    // the UNet's Linear or Conv2d, whose .lora points at the adapter
    char* name;               // its weight's name: "down_blocks.1....attn1.to_q.weight"
    int rank, in, out, k;     // A is (rank, in, k, k) (k = 1 for a Linear), B (out, rank)
    float alpha;
    size_t offset_A, offset_B; // into params / grads / compute
} LoraSlot;

// The adapters, with every tensor laid out back to back in one f32 vector: for slot i, A_i at
// offset_A, then B_i at offset_B. params (host) are the master weights the optimizer updates;
// grads (backend, f32) receive the backward's sums; compute (backend, the UNet's dtype) is what
// the forward and backward read, refreshed from params by lora_trainable_upload.
typedef struct {
    LoraTrainConfig cfg;
    int count;
    LoraSlot* slots;
    LoraAdapter* adapters;
    size_t total;             // floats in params / grads
    float* params;            // host
    float* grads;             // backend
    void* compute;            // backend, dtype
    void* work;               // backend, the adapters' shared forward scratch
    DType dtype;
} LoraTrainable;

// Attaches adapters to the UNet's target layers (A ~ N(0, 1/rank) drawn from rng in the order
// unet_lora_targets lists them, which is peft's, as its init_lora_weights="gaussian" does, B = 0),
// sized for forwards of up to work_rows rows (a conv's rows: its N x output pixels). Returns 0,
// or -1 with err.
// The config's numbers (rank, alphas) in range; 0, or -1 with err filled. attach checks it too.
int lora_train_config_check(const LoraTrainConfig* c, char* err);
int lora_trainable_attach(LoraTrainable* t, Unet* u, const LoraTrainConfig* c, TorchGenerator* rng, size_t work_rows,
                          char* err);
void lora_trainable_upload(LoraTrainable* t);    // params -> compute (after every update)
void lora_trainable_zero_grad(LoraTrainable* t); // grads = 0
void lora_trainable_detach(LoraTrainable* t);    // removes the adapters from the UNet, frees all
// Writes the adapters (the master weights) as a LoRA file: kohya's format (alpha, ss_* metadata
// from meta) or diffusers'; stored as dtype.
int lora_trainable_save(const LoraTrainable* t, const Unet* u, const char* path, LoraFormat format, DType dtype,
                        const char* const* meta_keys, const char* const* meta_values, int meta_count, char* err);

// ----------------------------------------------------------------------------
// The objective and the update, on tensors the caller supplies (tests drive these directly)

typedef struct {
    PredictionType prediction;
    float noise_offset;  // 0: off; else eps += offset * N(0, 1) per sample and channel
    float snr_gamma;     // 0: off; else min-SNR weighting (diffusers' --snr_gamma)
    int grad_accum;      // micro-batches per update
    double max_grad_norm; // 0: no clipping
    AdamWConfig adamw;    // lr is the schedule's base rate
    LrSchedule schedule;
    int64_t warmup_steps, total_steps; // in updates
    int loss_scaling;     // GradScaler on (fp16); off for f32 and bf16, as accelerate does
} TrainObjective;

// DDPM's training schedule (scheduler/scheduler_config.json's betas): alphas_cumprod[1000].
typedef struct {
    int steps;
    float alphas_cumprod[1000];
} NoiseSchedule;

// One micro-batch, host memory: N latents (already scaled by the VAE's scaling_factor) of 4 x h x w,
// their noise, timesteps, text conditioning (N, Lctx, 2048), pooled (N, 1280), time ids (N, 6).
typedef struct {
    const float* latents;
    const float* noise;
    const int64_t* timesteps;
    const float* context;
    const float* pooled;
    const float* time_ids;
    int N, h, w, Lctx;
} MicroBatch;

// What the optimizer step did.
typedef struct {
    float loss;           // the mean loss of the update's micro-batches
    float grad_norm;      // before clipping (unscaled); inf/NaN when the update was skipped
    double lr;            // the rate used (0 when skipped)
    float loss_scale;     // the scale the micro-batches used
    int skipped;          // GradScaler found inf/NaN and skipped the update
} UpdateInfo;

typedef struct {
    Unet* unet;
    LoraTrainable lora;
    TrainObjective obj;
    NoiseSchedule noise;
    GradScaler scaler;
    float* exp_avg;       // AdamW's moments (host, lora.total floats)
    float* exp_avg_sq;
    int64_t updates;      // optimizer updates made (AdamW's step; the schedule's position)
    int64_t steps;        // steps taken, skipped ones included (diffusers' global_step)
    int micro;            // micro-batches accumulated toward the next step
    double loss_sum;      // of those micro-batches
    int checkpointing;    // gradient checkpointing in the UNet backward
    Arena act;            // the UNet's training activations (sized for the largest micro-batch)
    float* grad_host;     // host copy of the gradients for the optimizer
} Trainer;

void noise_schedule_init(NoiseSchedule* s, const SchedulerConfig* c);
TrainObjective train_objective_default(void); // diffusers' script with the settings

// Attaches the adapters (lora_trainable_attach, drawing their init from init_rng) and sets up the
// optimizer state and the activation arena for micro-batches of up to N latents of h x w with Lctx
// text tokens. work_rows: the most rows any adapted Linear sees in a forward (training, sampling).
// Returns 0, or -1 with err.
int trainer_init(Trainer* tr, Unet* u, const LoraTrainConfig* lora, TorchGenerator* init_rng, const TrainObjective* obj,
                 int checkpointing, int N, int h, int w, int Lctx, size_t work_rows, char* err);
void trainer_free(Trainer* tr);
// Forward, loss and backward of one micro-batch, adding its gradients (times loss scale /
// grad_accum) to the adapters'. Returns the micro-batch's loss (f32, unscaled, before the 1/GA).
float trainer_micro_step(Trainer* tr, const MicroBatch* b);
// The loss of a micro-batch with no backward (validation): the same forward and loss.
float trainer_eval_loss(Trainer* tr, const MicroBatch* b);
// After grad_accum micro-steps: unscale, check, clip, AdamW, scaler update, zero grads.
void trainer_update(Trainer* tr, UpdateInfo* info);

// ----------------------------------------------------------------------------
// The whole run (`sdxl train`)

#define TRAIN_MAX_SAMPLE_PROMPTS 8
#define TRAIN_MAX_BATCH 64 // images per micro-batch

typedef struct {
    const char* model;           // diffusers SDXL folder or single file (as sdxl generate)
    const char* config_dir;      // for a single file: where its configs/tokenizers are (may be NULL)
    const char* data;            // imagefolder
    const char* caption_column;  // "text"
    int skip_bad;                // warn and skip unreadable items instead of stopping
    int follow_links;            // let file_name reach images outside the folder through symbolic links
    const char* out;             // the LoRA file (kohya format)
    const char* out_diffusers;   // also this diffusers-format file (NULL: no)
    DType save_dtype;            // F32 (diffusers and kohya's default), F16 or BF16
    DataConfig data_cfg;
    LoraTrainConfig lora;
    TrainObjective obj;
    int batch_size;
    int max_steps;               // updates
    uint64_t seed;
    const char* mixed_precision; // "fp16", "bf16" or "no"; NULL: fp16 on CUDA, no on the CPU
    int checkpointing;           // gradient checkpointing
    const char* cache_dir;       // latents and text embeddings; NULL: ~/.cache/sdxl.c
    int no_cache;
    const char* checkpoint_dir;  // NULL: <out>.checkpoints
    int checkpoint_every;        // steps; 0: only at the end
    int checkpoints_keep;        // keep the newest N (0: all)
    const char* resume;          // a checkpoint folder, or "latest"
    int stop_after;              // stop after this many steps of this run, saving nothing, as if killed; 0: no (tests)
    const char* sample_prompts[TRAIN_MAX_SAMPLE_PROMPTS];
    int sample_prompt_count;
    int sample_every;            // steps; 0: no samples
    int sample_steps;            // sampler steps for samples (25)
    float sample_cfg;
    const char* validation_data; // a held-out imagefolder (or NULL)
    int validation_every;        // steps
    const char* log_csv;         // NULL: <out>.csv
    const char* loss_png;        // NULL: <out>.loss.png
    int quiet;
} TrainConfig;

TrainConfig train_config_default(void);
// Runs the whole training; returns 0, or -1 with a one-line err.
int train_run(const TrainConfig* c, char* err);
