// train.c: the LoRA trainer. See train.h for the recipe and ../shared/notes/lora_training.md for
// the sources (diffusers' train_text_to_image_lora_sdxl.py with accelerate's fp16 mixed
// precision; peft's LoRA layers; kohya's sd-scripts for the file format and the buckets).
//
// The file reads in the order a run happens:
//   1. the trainable adapters (attach, initialise, upload, save),
//   2. the objective and the update (one micro-batch's loss and gradients; one optimizer step),
//   3. the run: data preparation and caching, the loop, checkpoints and resume, samples,
//      validation, the CSV log and the loss curve, and the LoRA file at the end.
#include "train.h"

#include <dirent.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "json.h"
#include "ops.h"
#include "plot.h"
#include "safetensors.h"

// ----------------------------------------------------------------------------
// 1. Trainable adapters

int lora_train_config_check(const LoraTrainConfig* c, char* err) {
    if (c->rank < 1 || c->rank > 1024) return set_error(err, "LoRA rank %d: must be 1 to 1024", c->rank);
    if (!(c->alpha > 0) || !isfinite(c->alpha)) return set_error(err, "LoRA alpha %g: must be positive", c->alpha);
    if (c->conv_rank < 0 || c->conv_rank > 1024) return set_error(err, "LoRA conv rank %d: must be 0 to 1024", c->conv_rank);
    if (c->conv_rank > 0 && (!(c->conv_alpha > 0) || !isfinite(c->conv_alpha)))
        return set_error(err, "LoRA conv alpha %g: must be positive", c->conv_alpha);
    return 0;
}

int lora_trainable_attach(LoraTrainable* t, Unet* u, const LoraTrainConfig* c, TorchGenerator* rng, size_t work_rows,
                          char* err) {
    memset(t, 0, sizeof(*t));
    if (lora_train_config_check(c, err) != 0) return -1;
    t->cfg = *c;
    t->dtype = u->w.dtype;
    t->count = unet_lora_targets(u, c->targets, c->conv_rank > 0, NULL, 0);
    if (t->count == 0) return set_error(err, "the UNet has no layers to adapt (no attention levels)");
    UnetLoraTarget* targets = xcalloc((size_t)t->count, sizeof(UnetLoraTarget));
    unet_lora_targets(u, c->targets, c->conv_rank > 0, targets, t->count);
    t->slots = xcalloc((size_t)t->count, sizeof(LoraSlot));
    t->adapters = xcalloc((size_t)t->count, sizeof(LoraAdapter));
    size_t most_per_row = 0;
    for (int i = 0; i < t->count; i++) {
        LoraSlot* s = &t->slots[i];
        s->target = targets[i];
        const void* weight;
        if (s->target.linear) {
            s->in = s->target.linear->in, s->out = s->target.linear->out, s->k = 1;
            weight = s->target.linear->weight;
        } else {
            s->in = s->target.conv->in, s->out = s->target.conv->out, s->k = s->target.conv->k;
            weight = s->target.conv->weight;
        }
        int wide_conv = s->target.conv && s->k > 1; // kohya: conv_dim for k x k convs, network_dim for the rest
        s->rank = wide_conv ? c->conv_rank : c->rank;
        s->alpha = wide_conv ? c->conv_alpha : c->alpha;
        for (int p = 0; p < u->w.count && !s->name; p++)
            if (u->w.params[p].data == weight) s->name = xstrdup(u->w.params[p].name);
        if (!s->name) fatal("LoRA: a target layer has no parameter name"); // a bug in unet_lora_targets
        s->offset_A = t->total;
        t->total += (size_t)s->rank * s->in * s->k * s->k;
        s->offset_B = t->total;
        t->total += (size_t)s->out * s->rank;
        most_per_row = (size_t)s->rank > most_per_row ? (size_t)s->rank : most_per_row;
    }
    free(targets);
    // peft's init_lora_weights="gaussian": lora_A and lora_B are made as nn.Linear / nn.Conv2d
    // first (each draws its kaiming_uniform_ init: one 32-bit word per element), then
    // A ~ N(0, 1/r) and B = 0; in unet_lora_targets' order, which is peft's
    t->params = xcalloc(t->total, sizeof(float));
    for (int i = 0; i < t->count; i++) {
        const LoraSlot* s = &t->slots[i];
        size_t n_A = s->offset_B - s->offset_A, n_B = (size_t)s->out * s->rank;
        for (size_t k = 0; k < n_A + n_B; k++) torch_random32(rng);
        float* A = t->params + s->offset_A;
        torch_randn(rng, A, n_A);
        for (size_t k = 0; k < n_A; k++) A[k] *= 1.0f / (float)s->rank;
    }
    // the backend copies and the adapters
    size_t es = dtype_size(t->dtype);
    t->grads = device_malloc(sizeof(float) * t->total);
    t->compute = device_malloc(es * t->total);
    t->work = device_malloc(es * work_rows * most_per_row);
    char* base = t->compute;
    for (int i = 0; i < t->count; i++) {
        const LoraSlot* s = &t->slots[i];
        LoraAdapter* a = &t->adapters[i];
        a->A = base + s->offset_A * es;
        a->B = base + s->offset_B * es;
        a->rank = s->rank;
        a->scale = s->alpha / (float)s->rank;
        a->grad_A = t->grads + s->offset_A;
        a->grad_B = t->grads + s->offset_B;
        a->work = t->work;
        a->work_rows = work_rows;
        if (s->target.linear) s->target.linear->lora = a;
        else s->target.conv->lora = a;
    }
    lora_trainable_upload(t);
    lora_trainable_zero_grad(t);
    return 0;
}

void lora_trainable_upload(LoraTrainable* t) {
    size_t bytes = dtype_size(t->dtype) * t->total;
    void* host = xmalloc(bytes);
    convert_from_f32(host, t->dtype, t->params, t->total); // f16 compute copies: one rounding, as autocast's cast
    copy_to_device(t->compute, host, bytes);
    free(host);
}

void lora_trainable_zero_grad(LoraTrainable* t) { device_memset_zero(t->grads, sizeof(float) * t->total); }

void lora_trainable_detach(LoraTrainable* t) {
    for (int i = 0; i < t->count; i++) {
        LoraSlot* s = &t->slots[i];
        if (s->target.linear) s->target.linear->lora = NULL;
        else s->target.conv->lora = NULL;
        free(s->name);
    }
    device_free(t->grads);
    device_free(t->compute);
    device_free(t->work);
    free(t->params);
    free(t->slots);
    free(t->adapters);
    memset(t, 0, sizeof(*t));
}

int lora_trainable_save(const LoraTrainable* t, const Unet* u, const char* path, LoraFormat format, DType dtype,
                        const char* const* meta_keys, const char* const* meta_values, int meta_count, char* err) {
    LoraWriteModule* m = xcalloc((size_t)t->count, sizeof(LoraWriteModule));
    for (int i = 0; i < t->count; i++) {
        const LoraSlot* s = &t->slots[i];
        m[i] = (LoraWriteModule){s->name, s->rank, s->in, s->out, s->k, s->target.conv != NULL, s->alpha,
                                 t->params + s->offset_A, t->params + s->offset_B};
    }
    int rc = lora_write(path, format, &u->cfg, m, t->count, dtype, meta_keys, meta_values, meta_count, err);
    free(m);
    return rc;
}

// ----------------------------------------------------------------------------
// 2. The objective and the update

void noise_schedule_init(NoiseSchedule* s, const SchedulerConfig* c) {
    float betas[SCHEDULE_MAX_TRAIN_STEPS], sigmas[SCHEDULE_MAX_TRAIN_STEPS];
    s->steps = c->num_train_timesteps < 1000 ? c->num_train_timesteps : 1000;
    schedule_tables(c, betas, s->alphas_cumprod, sigmas);
}

TrainObjective train_objective_default(void) {
    TrainObjective o = {0};
    o.prediction = PREDICT_EPSILON;
    o.grad_accum = 4;
    o.max_grad_norm = 1.0;
    o.adamw = adamw_defaults();
    o.adamw.lr = 1e-5;
    o.schedule = LR_CONSTANT;
    o.warmup_steps = 0;
    o.total_steps = 15000;
    o.loss_scaling = 1;
    return o;
}

int trainer_init(Trainer* tr, Unet* u, const LoraTrainConfig* lora, TorchGenerator* init_rng, const TrainObjective* obj,
                 int checkpointing, int N, int h, int w, int Lctx, size_t work_rows, char* err) {
    memset(tr, 0, sizeof(*tr));
    if (obj->grad_accum < 1) return set_error(err, "gradient accumulation %d: must be at least 1", obj->grad_accum);
    if (adamw_config_check(&obj->adamw, err) != 0) return -1;
    if (lr_schedule_check(obj->schedule, obj->adamw.lr, obj->warmup_steps, obj->total_steps, err) != 0) return -1;
    if (lora_trainable_attach(&tr->lora, u, lora, init_rng, work_rows, err) != 0) return -1;
    tr->unet = u;
    tr->obj = *obj;
    tr->checkpointing = checkpointing;
    tr->scaler = grad_scaler_default();
    tr->exp_avg = xcalloc(tr->lora.total, sizeof(float));
    tr->exp_avg_sq = xcalloc(tr->lora.total, sizeof(float));
    tr->grad_host = xcalloc(tr->lora.total, sizeof(float));
    // the micro-batch's inputs and prediction (f32) on top of the UNet's own needs
    size_t io = sizeof(float) * (size_t)N * (3 * 4 * (size_t)h * w + (size_t)Lctx * u->cfg.cross_attention_dim +
                                             u->cfg.projection_class_embeddings_input_dim) + 8 * ARENA_ALIGN;
    arena_init(&tr->act, "unet training activations", io + unet_train_activation_bytes(u, N, h, w, Lctx, checkpointing),
               backend_current() == BACKEND_CUDA);
    return 0;
}

void trainer_free(Trainer* tr) {
    if (tr->lora.count) lora_trainable_detach(&tr->lora);
    free(tr->exp_avg);
    free(tr->exp_avg_sq);
    free(tr->grad_host);
    arena_free(&tr->act);
    memset(tr, 0, sizeof(*tr));
}

// The noisy latents and the target of a micro-batch (diffusers' DDPMScheduler.add_noise and the
// training script's target), host f32:
//   x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps      target = eps, or v = sqrt(abar) eps - sqrt(1 - abar) x0
static void noisy_latents(const NoiseSchedule* s, PredictionType pred, const MicroBatch* b, float* x_t, float* target) {
    size_t per = (size_t)4 * b->h * b->w;
    for (int n = 0; n < b->N; n++) {
        float abar = s->alphas_cumprod[b->timesteps[n]];
        float sa = sqrtf(abar), sb = sqrtf(1.0f - abar); // torch's ** 0.5 on a float tensor is its sqrt
        for (size_t i = 0; i < per; i++) {
            size_t k = n * per + i;
            x_t[k] = sa * b->latents[k] + sb * b->noise[k];
            target[k] = pred == PREDICT_EPSILON ? b->noise[k] : sa * b->noise[k] - sb * b->latents[k];
        }
    }
}

// min-SNR weighting (diffusers' compute_snr and its use in the script): SNR = abar / (1 - abar),
// w = min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v. 1 when gamma is 0 (off).
static float snr_weight(const TrainObjective* o, float abar) {
    if (o->snr_gamma <= 0) return 1.0f;
    float snr = abar / (1.0f - abar);
    float clipped = snr < o->snr_gamma ? snr : o->snr_gamma;
    return o->prediction == PREDICT_EPSILON ? clipped / snr : clipped / (snr + 1.0f);
}

// The loss (mean squared error in f32, each sample's mean weighted, then the batch mean) and, when
// grad is not NULL, its gradient with respect to pred times `upstream` (the loss scale / GA).
static float mse_loss(const TrainObjective* o, const NoiseSchedule* s, const MicroBatch* b, const float* pred,
                      const float* target, float* grad, float upstream) {
    size_t per = (size_t)4 * b->h * b->w;
    double total = 0;
    for (int n = 0; n < b->N; n++) {
        float w = snr_weight(o, s->alphas_cumprod[b->timesteps[n]]);
        double sum = 0;
        for (size_t i = 0; i < per; i++) {
            double d = (double)pred[n * per + i] - target[n * per + i];
            sum += d * d;
        }
        total += (sum / per) * w;
        if (grad) {
            // d loss / d pred = 2 (pred - target) / (per * N) * w, as MseLossBackward: (d * (2 / n)) * upstream
            float norm = (float)(2.0 / ((double)per * b->N)) * w;
            for (size_t i = 0; i < per; i++)
                grad[n * per + i] = ((pred[n * per + i] - target[n * per + i]) * norm) * upstream;
        }
    }
    return (float)(total / b->N);
}

// Forward (and backward when `train`) of one micro-batch; returns its loss.
static float micro_batch(Trainer* tr, const MicroBatch* b, int train) {
    size_t n = (size_t)b->N * 4 * b->h * b->w;
    float* x_t = xmalloc(sizeof(float) * n);
    float* target = xmalloc(sizeof(float) * n);
    float* pred = xmalloc(sizeof(float) * n);
    float* t_float = xmalloc(sizeof(float) * b->N);
    for (int i = 0; i < b->N; i++) t_float[i] = (float)b->timesteps[i];
    noisy_latents(&tr->noise, tr->obj.prediction, b, x_t, target);
    Arena* act = &tr->act;
    size_t mark = arena_mark(act);
    // the UNet's inputs on the backend, f32 (it converts them to its dtype)
    float* d_x = arena_floats(act, n, "train x_t");
    float* d_ctx = arena_floats(act, (size_t)b->N * b->Lctx * tr->unet->cfg.cross_attention_dim, "train context");
    int pooled_dim = tr->unet->cfg.projection_class_embeddings_input_dim - 6 * tr->unet->cfg.addition_time_embed_dim;
    float* d_pooled = arena_floats(act, (size_t)b->N * pooled_dim, "train pooled");
    float* d_pred = arena_floats(act, n, "train prediction");
    copy_to_device(d_x, x_t, sizeof(float) * n);
    copy_to_device(d_ctx, b->context, sizeof(float) * b->N * b->Lctx * tr->unet->cfg.cross_attention_dim);
    copy_to_device(d_pooled, b->pooled, sizeof(float) * b->N * pooled_dim);
    float loss;
    if (train) {
        UnetTape tape;
        unet_forward_train(tr->unet, &tape, d_pred, d_x, t_float, d_ctx, b->Lctx, d_pooled, b->time_ids, b->N, b->h, b->w,
                           tr->checkpointing, act);
        copy_to_host(pred, d_pred, sizeof(float) * n);
        // accelerate: loss / GA, then scaler.scale(loss): the backward starts from scale / GA
        float scale = tr->obj.loss_scaling ? tr->scaler.scale : 1.0f;
        float upstream = scale * (1.0f / (float)tr->obj.grad_accum);
        float* grad = xmalloc(sizeof(float) * n);
        loss = mse_loss(&tr->obj, &tr->noise, b, pred, target, grad, upstream);
        float* d_grad = arena_floats(act, n, "train dloss/dpred");
        copy_to_device(d_grad, grad, sizeof(float) * n);
        unet_backward(tr->unet, &tape, d_grad, act);
        free(grad);
    } else {
        unet_forward(tr->unet, d_pred, d_x, t_float, d_ctx, b->Lctx, d_pooled, b->time_ids, b->N, b->h, b->w, act);
        copy_to_host(pred, d_pred, sizeof(float) * n);
        loss = mse_loss(&tr->obj, &tr->noise, b, pred, target, NULL, 1.0f);
    }
    arena_release(act, mark);
    free(x_t);
    free(target);
    free(pred);
    free(t_float);
    return loss;
}

float trainer_micro_step(Trainer* tr, const MicroBatch* b) {
    float loss = micro_batch(tr, b, 1);
    tr->loss_sum += loss;
    tr->micro++;
    return loss;
}

float trainer_eval_loss(Trainer* tr, const MicroBatch* b) { return micro_batch(tr, b, 0); }

// The per-tensor sizes clip_grad_norm takes (every A and B is a tensor of its own, as in torch).
static size_t* tensor_sizes(const LoraTrainable* t) {
    size_t* sizes = xmalloc(sizeof(size_t) * 2 * t->count);
    for (int i = 0; i < t->count; i++) {
        sizes[2 * i] = t->slots[i].offset_B - t->slots[i].offset_A;
        sizes[2 * i + 1] = (size_t)t->slots[i].out * t->slots[i].rank;
    }
    return sizes;
}

void trainer_update(Trainer* tr, UpdateInfo* info) {
    LoraTrainable* t = &tr->lora;
    memset(info, 0, sizeof(*info));
    info->loss = tr->micro ? (float)(tr->loss_sum / tr->micro) : 0.0f;
    info->loss_scale = tr->obj.loss_scaling ? tr->scaler.scale : 1.0f;
    copy_to_host(tr->grad_host, t->grads, sizeof(float) * t->total);
    // accelerate's sync step: unscale_ (finds inf/NaN), clip_grad_norm_, then GradScaler.step
    int found_inf = 0;
    if (tr->obj.loss_scaling) found_inf = grad_scaler_unscale(&tr->scaler, tr->grad_host, t->total);
    if (tr->obj.max_grad_norm > 0) {
        size_t* sizes = tensor_sizes(t);
        info->grad_norm = clip_grad_norm(tr->grad_host, sizes, 2 * t->count, tr->obj.max_grad_norm);
        free(sizes);
    } else {
        double sum = 0;
        for (size_t i = 0; i < t->total; i++) sum += (double)tr->grad_host[i] * tr->grad_host[i];
        info->grad_norm = (float)sqrt(sum);
    }
    if (!tr->obj.loss_scaling && !isfinite(info->grad_norm)) found_inf = 1; // nothing would catch it otherwise
    if (!found_inf) {
        AdamWConfig cfg = tr->obj.adamw;
        cfg.lr = lr_schedule_lr(tr->obj.schedule, tr->obj.adamw.lr, tr->updates, tr->obj.warmup_steps, tr->obj.total_steps);
        tr->updates++;
        adamw_step(t->params, tr->grad_host, tr->exp_avg, tr->exp_avg_sq, t->total, tr->updates, &cfg);
        lora_trainable_upload(t);
        info->lr = cfg.lr;
    }
    info->skipped = found_inf;
    if (tr->obj.loss_scaling) grad_scaler_update(&tr->scaler, found_inf);
    lora_trainable_zero_grad(t);
    tr->steps++;
    tr->micro = 0;
    tr->loss_sum = 0;
}

// ----------------------------------------------------------------------------
// 3. The run
//
// Two generators drive everything random, as a DataLoader and the training loop would:
//   order  the shuffle of every epoch (torch.randperm)
//   noise  per micro-batch, in this order: for each example its flip (and crop, when random) and
//          the posterior's sample noise; then the batch's noise, its noise offset, its timesteps
// Both are saved in checkpoints, with the epoch's order and the position in it, so a resumed run
// draws exactly what the uninterrupted one would have.

#define CAPTION_TOKENS 77 // one chunk: diffusers' training script truncates captions there

typedef struct {
    int width, height;       // the training size (the bucket, or resolution^2)
    int h, w;                // its latent size
    float time_ids[2][6];    // without and with the flip
    float* mean[2];          // (4, h, w) host f32 per flip; NULL when the crop is random (encoded each step)
    float* logvar[2];
    int caption;             // index into PreparedSet.captions
    int usable;              // 0: skipped (unreadable, with --skip-bad)
} PreparedItem;

typedef struct {
    char* text;
    float* context;          // (77, 2048)
    float* pooled;           // (1280)
} Caption;

typedef struct {
    Dataset data;
    DataConfig cfg;
    PreparedItem* items;
    Caption* captions;
    int caption_count;
    int deterministic;       // the preprocessing makes no random choice but the flip: latents are cached
} PreparedSet;

// Everything train_run holds.
typedef struct {
    const TrainConfig* cfg;
    SdxlModel model;
    DType dtype;             // the UNet's and text encoders' storage type
    Trainer tr;
    PreparedSet train, val;
    TorchGenerator order_rng, noise_rng;
    int64_t* order;          // this epoch's batches: item indices, batch after batch
    int* batch_sizes;
    int batch_count, batch_pos, epoch;
    char cache_dir[4096], checkpoint_dir[4096], csv_path[4096], png_path[4096], samples_dir[4096];
    char resume_dir[4400]; // the checkpoint --resume names ("latest" resolved), or ""
    char settings[8192];     // what a checkpoint must have been made with to be resumed
    char vae_key[65], text_key[65]; // fingerprints of the encoders a cache entry was made with
    Arena vae_arena;
    // the log
    float *log_loss, *log_val;
    int64_t* log_step;
    int log_count, log_cap;
    FILE* csv;
} Run;

// ---- cache keys

// Adds every .safetensors file of model/sub (or the model file itself) to the hash by name, size
// and modification time: the identity of the weights an entry was computed with (hashing gigabytes
// of weights at every start would cost more than the cache saves).
static void hash_model_files(Sha256* s, const char* model, const char* sub) {
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%s", model, sub);
    const char* paths[1] = {model};
    if (!path_is_dir(model)) {
        struct stat sb;
        if (stat(paths[0], &sb) == 0) {
            char line[4200];
            int n = snprintf(line, sizeof(line), "%s %lld %lld\n", model, (long long)sb.st_size, (long long)sb.st_mtime);
            sha256_update(s, line, (size_t)n);
        }
        return;
    }
    static const char* const stems[] = {"model", "diffusion_pytorch_model", "model.fp16", "diffusion_pytorch_model.fp16"};
    for (size_t i = 0; i < sizeof(stems) / sizeof(stems[0]); i++) {
        char path[4200];
        snprintf(path, sizeof(path), "%s/%s.safetensors", dir, stems[i]);
        struct stat sb;
        if (stat(path, &sb) != 0) continue;
        char line[4400];
        int n = snprintf(line, sizeof(line), "%s %lld %lld\n", path, (long long)sb.st_size, (long long)sb.st_mtime);
        sha256_update(s, line, (size_t)n);
    }
}

static void encoder_keys(Run* r) {
    uint8_t digest[32];
    Sha256 s;
    sha256_init(&s);
    sha256_update(&s, "vae f32\n", 8);
    hash_model_files(&s, r->cfg->model, "vae");
    sha256_final(&s, digest);
    sha256_hex(digest, r->vae_key);
    sha256_init(&s);
    const char* dt = dtype_name(r->dtype);
    sha256_update(&s, dt, strlen(dt));
    hash_model_files(&s, r->cfg->model, "text_encoder");
    hash_model_files(&s, r->cfg->model, "text_encoder_2");
    hash_model_files(&s, r->cfg->model, "tokenizer");
    sha256_final(&s, digest);
    sha256_hex(digest, r->text_key);
}

// <cache>/<kind>-<sha256 of (what, the encoder's key, the settings, the content)>.safetensors
static void cache_path(char* out, size_t cap, const Run* r, const char* kind, const char* encoder_key, const char* settings,
                       const void* content, size_t size) {
    uint8_t digest[32];
    char hex[65];
    Sha256 s;
    sha256_init(&s);
    sha256_update(&s, kind, strlen(kind) + 1);
    sha256_update(&s, encoder_key, 64);
    sha256_update(&s, settings, strlen(settings) + 1);
    sha256_update(&s, content, size);
    sha256_final(&s, digest);
    sha256_hex(digest, hex);
    snprintf(out, cap, "%s/%s-%s.safetensors", r->cache_dir, kind, hex);
}

// Reads the named f32 tensors of a cache file into fresh arrays; 0 when it holds them all.
static int cache_read(const char* path, int count, const char* const* names, const int* ranks, const int64_t (*shapes)[4],
                      float** out) {
    if (!path_is_file(path)) return -1;
    SafeTensors st;
    char err[ERR_MAX];
    if (safetensors_open(&st, path, err) != 0) return -1;
    int ok = 1;
    for (int i = 0; i < count; i++) out[i] = NULL;
    for (int i = 0; i < count && ok; i++) {
        size_t n = 1;
        for (int d = 0; d < ranks[i]; d++) n *= (size_t)shapes[i][d];
        out[i] = xmalloc(sizeof(float) * n);
        ok = safetensors_read_f32(&st, names[i], ranks[i], shapes[i], out[i], err) == 0;
    }
    safetensors_close(&st);
    if (!ok)
        for (int i = 0; i < count; i++) free(out[i]), out[i] = NULL;
    return ok ? 0 : -1;
}

// Writes a cache entry; a failure is a warning (the run goes on without that entry cached).
static void cache_write(const char* path, int count, const char* const* names, const int* ranks, const int64_t (*shapes)[4],
                        float* const* data) {
    SafeTensorOut* t = xcalloc((size_t)count, sizeof(SafeTensorOut));
    for (int i = 0; i < count; i++) {
        t[i] = (SafeTensorOut){names[i], DT_F32, ranks[i], {0}, data[i]};
        for (int d = 0; d < ranks[i]; d++) t[i].shape[d] = shapes[i][d];
    }
    char err[ERR_MAX];
    const char* key[] = {"written_by"};
    const char* value[] = {"sdxl.c train (cache)"};
    if (safetensors_write(path, t, count, key, value, 1, err) != 0) fprintf(stderr, "warning: cache not written: %s\n", err);
    free(t);
}

// ---- preparation: captions and latents

static int caption_index(Run* r, PreparedSet* p, const char* text) {
    for (int i = 0; i < p->caption_count; i++)
        if (strcmp(p->captions[i].text, text) == 0) return i;
    int C = r->model.te1.cfg.hidden + r->model.te2.cfg.hidden, P = r->model.te2.cfg.projection_dim;
    p->captions = xrealloc(p->captions, sizeof(Caption) * (p->caption_count + 1));
    Caption* c = &p->captions[p->caption_count];
    c->text = xstrdup(text);
    char path[4400];
    cache_path(path, sizeof(path), r, "text", r->text_key, "77 tokens, penultimate + pooled", text, strlen(text));
    const char* names[2] = {"context", "pooled"};
    int ranks[2] = {2, 1};
    int64_t shapes[2][4] = {{CAPTION_TOKENS, C}, {P}};
    float* got[2];
    if (r->cfg->no_cache || cache_read(path, 2, names, ranks, shapes, got) != 0) {
        got[0] = xmalloc(sizeof(float) * CAPTION_TOKENS * C);
        got[1] = xmalloc(sizeof(float) * P);
        sdxl_encode_caption(&r->model, text, got[0], got[1]);
        if (!r->cfg->no_cache) cache_write(path, 2, names, ranks, shapes, got);
    }
    c->context = got[0];
    c->pooled = got[1];
    return p->caption_count++;
}

// A cached latent's size is what its time_ids' target size (rows 4 and 5: height, width, whole
// pixels) encodes to; anything else is a damaged or foreign file, and the entry is made again.
static int cached_size_ok(const Run* r, const float* time_ids, int h, int w) {
    for (int k = 4; k < 6; k++)
        if (!(time_ids[k] >= 1 && time_ids[k] <= VAE_MAX_SIDE) || time_ids[k] != floorf(time_ids[k])) return 0;
    const VaeConfig* vc = &r->model.vae.config;
    return vae_latent_size(vc, (int)time_ids[4]) == h && vae_latent_size(vc, (int)time_ids[5]) == w;
}

// The VAE's posterior (mean, logvar) of an example's pixels, host f32 (4, h, w) each.
static void vae_posterior(Run* r, const Example* ex, float* mean, float* logvar) {
    const Vae* vae = &r->model.vae;
    int h = vae_latent_size(&vae->config, ex->height), w = vae_latent_size(&vae->config, ex->width);
    size_t need = vae_encode_arena_bytes(&vae->config, 1, ex->height, ex->width, vae->weights.dtype) +
                  sizeof(float) * (3 * (size_t)ex->width * ex->height + 8 * (size_t)h * w) + 4 * ARENA_ALIGN;
    if (r->vae_arena.capacity < need) {
        if (r->vae_arena.capacity) arena_free(&r->vae_arena);
        arena_init(&r->vae_arena, "vae encode", need, backend_current() == BACKEND_CUDA);
    }
    Arena* a = &r->vae_arena;
    size_t mark = arena_mark(a);
    float* d_px = arena_floats(a, 3 * (size_t)ex->width * ex->height, "train pixels");
    float* d_mean = arena_floats(a, 4 * (size_t)h * w, "train latent mean");
    float* d_logvar = arena_floats(a, 4 * (size_t)h * w, "train latent logvar");
    copy_to_device(d_px, ex->pixels, sizeof(float) * 3 * ex->width * ex->height);
    vae_encode(vae, d_mean, d_logvar, NULL, NULL, d_px, 1, ex->height, ex->width, a);
    copy_to_host(mean, d_mean, sizeof(float) * 4 * h * w);
    copy_to_host(logvar, d_logvar, sizeof(float) * 4 * h * w);
    arena_release(a, mark);
}

static void data_settings(char* out, size_t cap, const DataConfig* c, int flip) {
    snprintf(out, cap, "mode %d resolution %d center %d step %d buckets %d..%d flipped %d", c->mode, c->resolution,
             c->center_crop, c->bucket_step, c->bucket_min, c->bucket_max, flip);
}

// Prepares one item: its caption, and, when the preprocessing is deterministic, the latents of
// each flip (from the cache, or encoded and cached). Returns 0, or -1 with err.
static int prepare_item(Run* r, PreparedSet* p, int i, char* err) {
    PreparedItem* it = &p->items[i];
    const DataItem* d = &p->data.items[i];
    it->caption = caption_index(r, p, d->caption);
    int flips = p->cfg.random_flip ? 2 : 1;
    if (!p->deterministic) { // random square crops: the size is fixed, the latents come each step
        it->width = it->height = p->cfg.resolution;
        it->h = vae_latent_size(&r->model.vae.config, it->height);
        it->w = vae_latent_size(&r->model.vae.config, it->width);
        it->usable = 1;
        Image img;
        if (image_load_rgb(&img, d->file, err) != 0) return -1; // readable now, not halfway through the run
        image_free(&img);
        return 0;
    }
    uint8_t* bytes;
    size_t size;
    if (read_file(d->file, &bytes, &size, err) != 0) return -1;
    for (int flip = 0; flip < flips; flip++) {
        char settings[256], path[4400];
        data_settings(settings, sizeof(settings), &p->cfg, flip);
        cache_path(path, sizeof(path), r, "latents", r->vae_key, settings, bytes, size);
        // the size comes from the cache file too: read its header first
        SafeTensors st;
        char cache_err[ERR_MAX];
        int cached = 0;
        if (!r->cfg->no_cache && path_is_file(path) && safetensors_open(&st, path, cache_err) == 0) {
            const SafeTensor* m = safetensors_find(&st, "mean");
            // the size comes from the file: a latent the UNet's byte counters take, of 4 channels
            if (m && m->rank == 3 && m->shape[0] == SDXL_LATENT_CHANNELS && m->shape[1] >= 1 &&
                m->shape[1] <= UNET_MAX_LATENT && m->shape[2] >= 1 && m->shape[2] <= UNET_MAX_LATENT) {
                int lh = (int)m->shape[1], lw = (int)m->shape[2];
                int64_t shape3[4] = {SDXL_LATENT_CHANNELS, lh, lw}, shape6[4] = {6};
                float* mean = xmalloc(sizeof(float) * SDXL_LATENT_CHANNELS * lh * lw);
                float* logvar = xmalloc(sizeof(float) * SDXL_LATENT_CHANNELS * lh * lw);
                float* ids = it->time_ids[flip];
                if (safetensors_read_f32(&st, "mean", 3, shape3, mean, cache_err) == 0 &&
                    safetensors_read_f32(&st, "logvar", 3, shape3, logvar, cache_err) == 0 &&
                    safetensors_read_f32(&st, "time_ids", 1, shape6, ids, cache_err) == 0 &&
                    cached_size_ok(r, ids, lh, lw) && (flip == 0 || (lh == it->h && lw == it->w && (int)ids[4] == it->height &&
                                                                     (int)ids[5] == it->width))) {
                    it->mean[flip] = mean;
                    it->logvar[flip] = logvar;
                    it->h = lh;
                    it->w = lw;
                    it->height = (int)ids[4];
                    it->width = (int)ids[5];
                    cached = 1;
                } else {
                    free(mean);
                    free(logvar);
                }
            }
            safetensors_close(&st);
        }
        if (cached) continue;
        Example ex;
        if (dataset_example_flipped(&p->data, i, &p->cfg, flip, NULL, &ex, err) != 0) {
            free(bytes);
            return -1;
        }
        it->width = ex.width;
        it->height = ex.height;
        it->h = vae_latent_size(&r->model.vae.config, ex.height);
        it->w = vae_latent_size(&r->model.vae.config, ex.width);
        memcpy(it->time_ids[flip], ex.time_ids, sizeof(ex.time_ids));
        it->mean[flip] = xmalloc(sizeof(float) * 4 * it->h * it->w);
        it->logvar[flip] = xmalloc(sizeof(float) * 4 * it->h * it->w);
        vae_posterior(r, &ex, it->mean[flip], it->logvar[flip]);
        example_free(&ex);
        if (!r->cfg->no_cache) {
            const char* names[3] = {"mean", "logvar", "time_ids"};
            int ranks[3] = {3, 3, 1};
            int64_t shapes[3][4] = {{4, it->h, it->w}, {4, it->h, it->w}, {6}};
            float* data[3] = {it->mean[flip], it->logvar[flip], it->time_ids[flip]};
            cache_write(path, 3, names, ranks, shapes, data);
        }
    }
    free(bytes);
    it->usable = 1;
    return 0;
}

// Encodes the captions and latents of a set whose dataset is open (p->data).
static int prepare_set(Run* r, PreparedSet* p, const char* root, const DataConfig* cfg, const char* what, char* err) {
    p->cfg = *cfg;
    if (p->data.count == 0) return set_error(err, "%s: no images in metadata.jsonl", root);
    p->deterministic = cfg->mode == DATA_BUCKETS || cfg->center_crop;
    p->items = xcalloc((size_t)p->data.count, sizeof(PreparedItem));
    int usable = 0;
    double t0 = now_seconds();
    for (int i = 0; i < p->data.count; i++) {
        char item_err[ERR_MAX];
        if (prepare_item(r, p, i, item_err) != 0) {
            if (!r->cfg->skip_bad) return set_error(err, "%s", item_err);
            fprintf(stderr, "warning: skipping %s\n", item_err);
            continue;
        }
        usable++;
        if (!r->cfg->quiet && (i + 1 == p->data.count || now_seconds() - t0 > 5)) {
            printf("%s: prepared %d/%d (captions encoded, latents %s)\n", what, i + 1, p->data.count,
                   p->deterministic ? "encoded or read from the cache" : "encoded each step: random crops");
            t0 = now_seconds();
        }
    }
    if (usable == 0) return set_error(err, "%s: no usable images", root);
    return 0;
}

static void prepared_free(PreparedSet* p) {
    for (int i = 0; p->items && i < p->data.count; i++)
        for (int f = 0; f < 2; f++) free(p->items[i].mean[f]), free(p->items[i].logvar[f]);
    for (int i = 0; i < p->caption_count; i++) free(p->captions[i].text), free(p->captions[i].context), free(p->captions[i].pooled);
    free(p->items);
    free(p->captions);
    if (p->data.items) dataset_free(&p->data);
    memset(p, 0, sizeof(*p));
}

// ---- batches

// The next epoch's batches: a torch.randperm of the items; with batches of more than one, items
// of the same training size are grouped (kohya's buckets), in the order they come up, and each
// size's last batch may be short.
static void new_epoch(Run* r) {
    const PreparedSet* p = &r->train;
    int n = p->data.count, B = r->cfg->batch_size;
    int64_t* perm = xmalloc(sizeof(int64_t) * n);
    torch_randperm(&r->order_rng, perm, n);
    free(r->order);
    free(r->batch_sizes);
    r->order = xmalloc(sizeof(int64_t) * n);
    r->batch_sizes = xmalloc(sizeof(int) * n);
    r->batch_count = 0;
    int placed = 0;
    char* used = xcalloc((size_t)n, 1);
    for (int a = 0; a < n; a++) {
        int i = (int)perm[a];
        if (used[a] || !p->items[i].usable) continue;
        int size = 0;
        for (int b = a; b < n && size < B; b++) { // this item and the next ones of its size
            int j = (int)perm[b];
            if (used[b] || !p->items[j].usable || p->items[j].width != p->items[i].width || p->items[j].height != p->items[i].height)
                continue;
            used[b] = 1;
            r->order[placed++] = j;
            size++;
        }
        r->batch_sizes[r->batch_count++] = size;
    }
    free(used);
    free(perm);
    r->batch_pos = 0;
    r->epoch++;
}

// latent_dist.sample() * scaling_factor: (mean + exp(0.5 logvar) * eps) * scaling, eps ~ N(0, 1)
static void sample_latents(float* out, const float* mean, const float* logvar, const float* eps, size_t n, float scaling) {
    for (size_t e = 0; e < n; e++) out[e] = (mean[e] + expf(0.5f * logvar[e]) * eps[e]) * scaling;
}

// Fills a micro-batch from the next batch (host arrays the caller frees with micro_batch_free).
static int next_micro_batch(Run* r, MicroBatch* b, char* err) {
    if (r->batch_pos >= r->batch_count) new_epoch(r);
    int start = 0;
    for (int k = 0; k < r->batch_pos; k++) start += r->batch_sizes[k];
    int N = r->batch_sizes[r->batch_pos++];
    const PreparedSet* p = &r->train;
    const PreparedItem* first = &p->items[r->order[start]];
    int h = first->h, w = first->w, C = r->model.te1.cfg.hidden + r->model.te2.cfg.hidden, P = r->model.te2.cfg.projection_dim;
    size_t per = (size_t)4 * h * w;
    float* latents = xmalloc(sizeof(float) * N * per);
    float* context = xmalloc(sizeof(float) * N * CAPTION_TOKENS * C);
    float* pooled = xmalloc(sizeof(float) * N * P);
    float* time_ids = xmalloc(sizeof(float) * N * 6);
    float* eps = xmalloc(sizeof(float) * per);
    float* mean = xmalloc(sizeof(float) * per);
    float* logvar = xmalloc(sizeof(float) * per);
    float scaling = r->model.vae.config.scaling_factor;
    for (int k = 0; k < N; k++) {
        int i = (int)r->order[start + k];
        const PreparedItem* it = &p->items[i];
        const float *m = mean, *lv = logvar; // the posterior: cached, or encoded now
        if (p->deterministic) {
            int flip = data_draw_flip(&p->cfg, &r->noise_rng);
            m = it->mean[flip];
            lv = it->logvar[flip];
            memcpy(time_ids + 6 * k, it->time_ids[flip], sizeof(float) * 6);
        } else {
            Example ex;
            if (dataset_example(&p->data, i, &p->cfg, &r->noise_rng, &ex, err) != 0) return -1;
            vae_posterior(r, &ex, mean, logvar);
            memcpy(time_ids + 6 * k, ex.time_ids, sizeof(float) * 6);
            example_free(&ex);
        }
        torch_randn(&r->noise_rng, eps, per);
        sample_latents(latents + k * per, m, lv, eps, per, scaling);
        memcpy(context + (size_t)k * CAPTION_TOKENS * C, p->captions[it->caption].context, sizeof(float) * CAPTION_TOKENS * C);
        memcpy(pooled + (size_t)k * P, p->captions[it->caption].pooled, sizeof(float) * P);
    }
    free(eps);
    free(mean);
    free(logvar);
    // noise = randn_like(latents) [+ offset * randn(N, 4, 1, 1)]; timesteps = randint(0, 1000, (N,))
    float* noise = xmalloc(sizeof(float) * N * per);
    torch_randn(&r->noise_rng, noise, N * per);
    if (r->cfg->obj.noise_offset > 0) {
        float offset[4 * TRAIN_MAX_BATCH];
        torch_randn(&r->noise_rng, offset, (size_t)4 * N);
        for (int k = 0; k < N; k++)
            for (int c = 0; c < 4; c++)
                for (size_t e = 0; e < (size_t)h * w; e++)
                    noise[k * per + c * (size_t)h * w + e] += r->cfg->obj.noise_offset * offset[4 * k + c];
    }
    int64_t* t = xmalloc(sizeof(int64_t) * N);
    torch_randint(&r->noise_rng, t, N, 0, r->tr.noise.steps);
    *b = (MicroBatch){latents, noise, t, context, pooled, time_ids, N, h, w, CAPTION_TOKENS};
    return 0;
}

static void micro_batch_free(MicroBatch* b) {
    free((void*)b->latents);
    free((void*)b->noise);
    free((void*)b->timesteps);
    free((void*)b->context);
    free((void*)b->pooled);
    free((void*)b->time_ids);
}

// ---- validation: the held-out set's loss with the same noise and timesteps every time

static float validation_loss(Run* r) {
    const PreparedSet* p = &r->val;
    TorchGenerator g;
    torch_manual_seed(&g, r->cfg->seed + 1000003); // the same draws at every evaluation
    double total = 0;
    int count = 0;
    for (int i = 0; i < p->data.count; i++) {
        const PreparedItem* it = &p->items[i];
        if (!it->usable) continue;
        size_t per = (size_t)4 * it->h * it->w;
        float* latents = xmalloc(sizeof(float) * per);
        float* noise = xmalloc(sizeof(float) * per);
        torch_randn(&g, noise, per);
        sample_latents(latents, it->mean[0], it->logvar[0], noise, per, r->model.vae.config.scaling_factor);
        torch_randn(&g, noise, per);
        int64_t t;
        torch_randint(&g, &t, 1, 0, r->tr.noise.steps);
        const Caption* c = &p->captions[it->caption];
        MicroBatch b = {latents, noise, &t, c->context, c->pooled, it->time_ids[0], 1, it->h, it->w, CAPTION_TOKENS};
        total += trainer_eval_loss(&r->tr, &b);
        count++;
        free(latents);
        free(noise);
    }
    return count ? (float)(total / count) : NAN;
}

// ---- samples: the current LoRA (scale 1: the adapters are live in the UNet) at the training size

static int training_size(const Run* r, int* width, int* height) {
    // the most common size among the training items
    int best = 0;
    for (int i = 0; i < r->train.data.count; i++) {
        const PreparedItem* a = &r->train.items[i];
        if (!a->usable) continue;
        int n = 0;
        for (int j = 0; j < r->train.data.count; j++)
            n += r->train.items[j].usable && r->train.items[j].width == a->width && r->train.items[j].height == a->height;
        if (n > best) best = n, *width = a->width, *height = a->height;
    }
    return best > 0;
}

static int write_samples(Run* r, int64_t step, char* err) {
    const TrainConfig* c = r->cfg;
    int width = c->data_cfg.resolution, height = c->data_cfg.resolution;
    training_size(r, &width, &height);
    if (make_dirs(r->samples_dir, err) != 0) return -1;
    for (int i = 0; i < c->sample_prompt_count; i++) {
        GenerateParams gp = {0};
        gp.prompt = c->sample_prompts[i];
        gp.negative = "";
        gp.width = width;
        gp.height = height;
        gp.steps = c->sample_steps;
        gp.cfg = c->sample_cfg;
        gp.seed = 42 + (uint64_t)i; // fixed per prompt, so samples of successive steps compare
        gp.sampler = SAMPLER_EULER;
        gp.quiet = 1;
        gp.lora_name = "training";
        gp.lora_scale = 1.0f;
        Image img;
        if (sdxl_generate(&r->model, &gp, &img, NULL, err) != 0) return -1;
        char path[4400];
        snprintf(path, sizeof(path), "%s/step-%06lld-%d.png", r->samples_dir, (long long)step, i);
        int rc = png_write(path, &img, err);
        image_free(&img);
        if (rc != 0) return -1;
    }
    return 0;
}

// ---- the log: one CSV row per step, and the curve

static void log_append(Run* r, int64_t step, float loss, float val) {
    if (r->log_count == r->log_cap) {
        r->log_cap = r->log_cap ? 2 * r->log_cap : 1024;
        r->log_step = xrealloc(r->log_step, sizeof(int64_t) * r->log_cap);
        r->log_loss = xrealloc(r->log_loss, sizeof(float) * r->log_cap);
        r->log_val = xrealloc(r->log_val, sizeof(float) * r->log_cap);
    }
    r->log_step[r->log_count] = step;
    r->log_loss[r->log_count] = loss;
    r->log_val[r->log_count] = val;
    r->log_count++;
}

#define CSV_HEADER "step,epoch,loss,lr,loss_scale,grad_norm,skipped,seconds,val_loss\n"

// Opens the CSV log; on resume keeps the rows up to `upto` steps (later ones were made by the run
// being resumed after its last checkpoint) and reloads them for the curve.
static int log_open(Run* r, int64_t upto, char* err) {
    char** lines = NULL;
    int count = 0;
    StrBuf kept = {0};
    strbuf_cat(&kept, CSV_HEADER);
    if (upto > 0 && path_is_file(r->csv_path) && read_lines(r->csv_path, &lines, &count, err) == 0) {
        for (int i = 1; i < count; i++) {
            long long step;
            int epoch;
            float loss, val = NAN;
            if (sscanf(lines[i], "%lld,%d,%f", &step, &epoch, &loss) != 3 || step > upto) continue;
            const char* last = strrchr(lines[i], ',');
            if (last && last[1]) val = strtof(last + 1, NULL);
            log_append(r, step, loss, val);
            strbuf_printf(&kept, "%s\n", lines[i]);
        }
        free_lines(lines, count);
    }
    int rc = write_file_atomic(r->csv_path, kept.s, kept.len, err);
    free(kept.s);
    if (rc != 0) return -1;
    r->csv = fopen(r->csv_path, "a");
    if (!r->csv) return set_error(err, "%s: %s", r->csv_path, strerror(errno));
    return 0;
}

static int draw_loss_curve(const Run* r, char* err) {
    int n = r->log_count;
    double* x = xmalloc(sizeof(double) * (n ? n : 1));
    double* raw = xmalloc(sizeof(double) * (n ? n : 1));
    double* smooth = xmalloc(sizeof(double) * (n ? n : 1));
    double* val = xmalloc(sizeof(double) * (n ? n : 1));
    double ema = NAN;
    for (int i = 0; i < n; i++) {
        x[i] = (double)r->log_step[i];
        raw[i] = r->log_loss[i];
        ema = isfinite(ema) ? 0.9 * ema + 0.1 * raw[i] : raw[i]; // tensorboard-style smoothing
        smooth[i] = ema;
        val[i] = r->log_val[i];
    }
    PlotSeries s[3] = {
        {x, raw, n, {190, 190, 190}, 0, "loss"},
        {x, smooth, n, {30, 60, 200}, 0, "loss (ema 0.9)"},
        {x, val, n, {220, 40, 40}, 1, "validation"},
    };
    Image img;
    int rc = plot_lines(&img, 900, 450, "training loss", "step", s, 3, err);
    if (rc == 0) rc = png_write(r->png_path, &img, err);
    if (rc == 0) image_free(&img);
    free(x), free(raw), free(smooth), free(val);
    return rc;
}

// ---- checkpoints

static void generator_pack(const TorchGenerator* g, int64_t misc[3]) {
    misc[0] = g->left;
    misc[1] = g->next;
    misc[2] = g->has_next_normal;
}

static void generator_unpack(TorchGenerator* g, const int64_t misc[3]) {
    g->left = (int)misc[0];
    g->next = (int)misc[1];
    g->has_next_normal = (int)misc[2];
}

// The kohya file's metadata (sd-scripts' ss_* keys that tools read, and the SAI model spec).
typedef struct {
    char values[24][256];
    const char* keys[24];
    const char* value_ptrs[24];
    int count;
} Metadata;

static void meta_add(Metadata* m, const char* key, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static void meta_add(Metadata* m, const char* key, const char* fmt, ...) {
    if (m->count == (int)(sizeof(m->keys) / sizeof(m->keys[0]))) fatal("train: too many metadata entries");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->values[m->count], sizeof(m->values[0]), fmt, ap);
    va_end(ap);
    m->keys[m->count] = key;
    m->value_ptrs[m->count] = m->values[m->count];
    m->count++;
}

static void kohya_metadata(const Run* r, Metadata* m, int64_t step) {
    const TrainConfig* c = r->cfg;
    memset(m, 0, sizeof(*m));
    meta_add(m, "ss_network_module", "networks.lora");
    meta_add(m, "ss_network_dim", "%d", c->lora.rank);
    meta_add(m, "ss_network_alpha", "%g", c->lora.alpha);
    meta_add(m, "ss_base_model_version", "sdxl_base_v1-0");
    if (c->lora.conv_rank > 0) // sd-scripts' network_args for LoCon-style convolutions
        meta_add(m, "ss_network_args", "{\"conv_dim\": \"%d\", \"conv_alpha\": \"%g\"}", c->lora.conv_rank, c->lora.conv_alpha);
    meta_add(m, "ss_resolution", "(%d, %d)", c->data_cfg.resolution, c->data_cfg.resolution);
    meta_add(m, "ss_steps", "%lld", (long long)step);
    meta_add(m, "ss_learning_rate", "%g", c->obj.adamw.lr);
    meta_add(m, "ss_gradient_accumulation_steps", "%d", c->obj.grad_accum);
    meta_add(m, "ss_mixed_precision", "%s", r->dtype == DT_F16 ? "fp16" : r->dtype == DT_BF16 ? "bf16" : "no");
    meta_add(m, "ss_num_train_images", "%d", r->train.data.count);
    meta_add(m, "ss_training_comment", "sdxl.c train, %s targets", c->lora.targets == UNET_LORA_ATTENTION ? "attention" : "transformer");
    meta_add(m, "modelspec.sai_model_spec", "1.0.0");
    meta_add(m, "modelspec.architecture", "stable-diffusion-xl-v1-base/lora");
    meta_add(m, "modelspec.implementation", "https://github.com/Stability-AI/generative-models");
    meta_add(m, "modelspec.resolution", "%dx%d", c->data_cfg.resolution, c->data_cfg.resolution);
}

static int save_lora_outputs(const Run* r, const char* kohya_path, const char* diffusers_path, int64_t step, char* err) {
    Metadata m;
    kohya_metadata(r, &m, step);
    if (lora_trainable_save(&r->tr.lora, &r->model.unet, kohya_path, LORA_KOHYA, r->cfg->save_dtype, m.keys, m.value_ptrs,
                            m.count, err) != 0)
        return -1;
    if (diffusers_path &&
        lora_trainable_save(&r->tr.lora, &r->model.unet, diffusers_path, LORA_DIFFUSERS, r->cfg->save_dtype, NULL, NULL, 0, err) != 0)
        return -1;
    return 0;
}

// Removes a checkpoint folder: its files (no subfolders are ever made there), then the folder.
// Only a real folder is emptied: a symbolic link (or anything else) standing at a checkpoint's
// name is refused, since following it would delete files wherever it points. 0 when the folder
// is gone (or never was), -1 with err filled when something else stands there.
static int remove_checkpoint_dir(const char* path, char* err) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return 0;
    if (!S_ISDIR(sb.st_mode)) return set_error(err, "%s: is not a folder; refusing to replace or remove it", path);
    DIR* d = opendir(path);
    if (!d) return set_error(err, "%s: %s", path, strerror(errno));
    struct dirent* e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char file[8400];
        snprintf(file, sizeof(file), "%s/%s", path, e->d_name);
        unlink(file); // a link inside is removed itself, never its target
    }
    closedir(d);
    rmdir(path);
    return 0;
}

static int cmp_str(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

// The finished checkpoint-NNNNNN folders in dir, oldest first (malloc'd names).
static int checkpoint_list(const char* dir, char*** names) {
    *names = NULL;
    int count = 0;
    DIR* d = opendir(dir);
    if (!d) return 0;
    struct dirent* e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "checkpoint-", 11) != 0 || n != 17 || strspn(e->d_name + 11, "0123456789") != 6) continue;
        *names = xrealloc(*names, sizeof(char*) * (count + 1));
        (*names)[count++] = xstrdup(e->d_name);
    }
    closedir(d);
    if (count) qsort(*names, (size_t)count, sizeof(char*), cmp_str);
    return count;
}

// <checkpoint_dir>/checkpoint-<step>/{state.safetensors, lora.safetensors}, written into a
// ".partial" folder and renamed, so a checkpoint is either whole or absent.
static int save_checkpoint(Run* r, char* err) {
    const Trainer* tr = &r->tr;
    char dir[4400], partial[4500], path[4600];
    snprintf(dir, sizeof(dir), "%s/checkpoint-%06lld", r->checkpoint_dir, (long long)tr->steps);
    snprintf(partial, sizeof(partial), "%s.partial", dir);
    if (remove_checkpoint_dir(partial, err) != 0) return -1;
    if (make_dirs(partial, err) != 0) return -1;
    int64_t order_misc[3], noise_misc[3];
    generator_pack(&r->order_rng, order_misc);
    generator_pack(&r->noise_rng, noise_misc);
    int placed = 0;
    for (int k = 0; k < r->batch_count; k++) placed += r->batch_sizes[k];
    int64_t total = (int64_t)tr->lora.total;
    SafeTensorOut t[] = {
        {"lora.params", DT_F32, 1, {total}, tr->lora.params},
        {"adamw.exp_avg", DT_F32, 1, {total}, tr->exp_avg},
        {"adamw.exp_avg_sq", DT_F32, 1, {total}, tr->exp_avg_sq},
        {"rng.order.state", DT_U32, 1, {MT19937_N}, r->order_rng.state},
        {"rng.order.misc", DT_I64, 1, {3}, order_misc},
        {"rng.order.next_normal", DT_F64, 1, {1}, &r->order_rng.next_normal},
        {"rng.noise.state", DT_U32, 1, {MT19937_N}, r->noise_rng.state},
        {"rng.noise.misc", DT_I64, 1, {3}, noise_misc},
        {"rng.noise.next_normal", DT_F64, 1, {1}, &r->noise_rng.next_normal},
        {"epoch.order", DT_I64, 1, {placed}, r->order},
        {"epoch.batch_sizes", DT_I32, 1, {r->batch_count}, r->batch_sizes},
    };
    Metadata m;
    memset(&m, 0, sizeof(m));
    meta_add(&m, "step", "%lld", (long long)tr->steps);
    meta_add(&m, "updates", "%lld", (long long)tr->updates);
    meta_add(&m, "epoch", "%d", r->epoch);
    meta_add(&m, "batch_pos", "%d", r->batch_pos);
    meta_add(&m, "scaler.scale", "%a", tr->scaler.scale);
    meta_add(&m, "scaler.growth_tracker", "%d", tr->scaler.growth_tracker);
    const char* keys[17];
    const char* values[17];
    memcpy(keys, m.keys, sizeof(char*) * m.count);
    memcpy(values, m.value_ptrs, sizeof(char*) * m.count);
    keys[m.count] = "settings";
    values[m.count] = r->settings;
    snprintf(path, sizeof(path), "%s/state.safetensors", partial);
    int placed_any = placed > 0 && r->batch_count > 0;
    int n = (int)(sizeof(t) / sizeof(t[0])) - (placed_any ? 0 : 2);
    if (safetensors_write(path, t, n, keys, values, m.count + 1, err) != 0) return -1;
    snprintf(path, sizeof(path), "%s/lora.safetensors", partial);
    if (save_lora_outputs(r, path, NULL, tr->steps, err) != 0) return -1;
    if (remove_checkpoint_dir(dir, err) != 0) return -1; // the same step saved before (a resumed run)
    if (rename(partial, dir) != 0) return set_error(err, "%s: %s", dir, strerror(errno));
    // keep the newest checkpoints_keep (the names sort by step: fixed-width numbers)
    if (r->cfg->checkpoints_keep > 0) {
        char** names;
        int count = checkpoint_list(r->checkpoint_dir, &names);
        for (int i = 0; i < count; i++) {
            if (i < count - r->cfg->checkpoints_keep) {
                char old[4400];
                snprintf(old, sizeof(old), "%s/%s", r->checkpoint_dir, names[i]);
                char ignored[ERR_MAX]; // pruning skips what is not a folder of ours
                remove_checkpoint_dir(old, ignored);
            }
            free(names[i]);
        }
        free(names);
    }
    return 0;
}

// The newest checkpoint-N folder in dir, or "" when there is none.
static void latest_checkpoint(const char* dir, char* out, size_t cap) {
    out[0] = '\0';
    char** names;
    int count = checkpoint_list(dir, &names);
    if (count > 0) snprintf(out, cap, "%s/%s", dir, names[count - 1]);
    for (int i = 0; i < count; i++) free(names[i]);
    free(names);
}

static const char* metadata_or(const SafeTensors* st, const char* key, const char* fallback) {
    const char* v = safetensors_metadata(st, key);
    return v ? v : fallback;
}

// The epoch being worked through (epoch.order, epoch.batch_sizes), checked as next_micro_batch
// will use it: item indices of usable items, batches of 1..batch_size items that together take
// the whole order, each batch's items of one training size (they share the latent buffers).
// Neither tensor present: a new epoch starts.
static int load_epoch(Run* r, const SafeTensors* st, const char* path, char* err) {
    const SafeTensor* order = safetensors_find(st, "epoch.order");
    const SafeTensor* sizes = safetensors_find(st, "epoch.batch_sizes");
    if (!order && !sizes) return 0;
    if (!order || !sizes || order->dtype != DT_I64 || order->rank != 1 || sizes->dtype != DT_I32 || sizes->rank != 1)
        return set_error(err, "%s: epoch.order (I64) and epoch.batch_sizes (I32) must both be there, as 1-D tensors", path);
    const PreparedSet* p = &r->train;
    size_t n = safetensor_numel(order), nb = safetensor_numel(sizes);
    if (nb > n || n > (size_t)p->data.count)
        return set_error(err, "%s: an epoch of %zu items in %zu batches, for %d items", path, n, nb, p->data.count);
    r->order = xmalloc(sizeof(int64_t) * (n ? n : 1));
    r->batch_sizes = xmalloc(sizeof(int) * (nb ? nb : 1));
    memcpy(r->order, order->data, sizeof(int64_t) * n);
    memcpy(r->batch_sizes, sizes->data, sizeof(int32_t) * nb);
    r->batch_count = (int)nb;
    for (size_t i = 0; i < n; i++)
        if (r->order[i] < 0 || r->order[i] >= p->data.count || !p->items[r->order[i]].usable)
            return set_error(err, "%s: the data order names item %lld of %d (or one that was skipped)", path,
                             (long long)r->order[i], p->data.count);
    size_t start = 0;
    for (size_t k = 0; k < nb; k++) {
        int B = r->batch_sizes[k];
        if (B < 1 || B > r->cfg->batch_size || (size_t)B > n - start)
            return set_error(err, "%s: batch %zu has %d items (batch size %d, %zu items left)", path, k, B, r->cfg->batch_size,
                             n - start);
        const PreparedItem* first = &p->items[r->order[start]];
        for (int j = 1; j < B; j++) {
            const PreparedItem* it = &p->items[r->order[start + j]];
            if (it->width != first->width || it->height != first->height)
                return set_error(err, "%s: batch %zu mixes %dx%d and %dx%d items", path, k, first->width, first->height,
                                 it->width, it->height);
        }
        start += (size_t)B;
    }
    if (start != n) return set_error(err, "%s: the batches take %zu of the epoch's %zu items", path, start, n);
    return 0;
}

// Restores the whole state from a checkpoint folder. The settings it was made with must equal
// this run's (the first differing line is named).
static int load_checkpoint(Run* r, const char* dir, char* err) {
    char path[4500];
    snprintf(path, sizeof(path), "%s/state.safetensors", dir);
    SafeTensors st;
    if (safetensors_open(&st, path, err) != 0) return -1;
    int rc = -1;
    const char* saved = metadata_or(&st, "settings", "");
    if (strcmp(saved, r->settings) != 0) {
        // name the first line that differs
        const char *a = saved, *b = r->settings;
        while (*a && *a == *b) a++, b++;
        while (a > saved && a[-1] != '\n') a--;
        while (b > r->settings && b[-1] != '\n') b--;
        int la = (int)strcspn(a, "\n"), lb = (int)strcspn(b, "\n");
        set_error(err, "%s: made with other settings (checkpoint: \"%.*s\", now: \"%.*s\"); resume with the same ones", path, la,
                  a, lb, b);
        goto done;
    }
    Trainer* tr = &r->tr;
    int64_t total = (int64_t)tr->lora.total;
    int64_t shape_total[1] = {total}, shape_mt[1] = {MT19937_N}, shape3[1] = {3};
    if (safetensors_read_f32(&st, "lora.params", 1, shape_total, tr->lora.params, err) != 0 ||
        safetensors_read_f32(&st, "adamw.exp_avg", 1, shape_total, tr->exp_avg, err) != 0 ||
        safetensors_read_f32(&st, "adamw.exp_avg_sq", 1, shape_total, tr->exp_avg_sq, err) != 0)
        goto done;
    struct { const char* prefix; TorchGenerator* g; } gens[2] = {{"rng.order", &r->order_rng}, {"rng.noise", &r->noise_rng}};
    for (int k = 0; k < 2; k++) {
        char name[64];
        snprintf(name, sizeof(name), "%s.state", gens[k].prefix);
        const SafeTensor* s = safetensors_find(&st, name);
        snprintf(name, sizeof(name), "%s.misc", gens[k].prefix);
        const SafeTensor* misc = safetensors_find(&st, name);
        snprintf(name, sizeof(name), "%s.next_normal", gens[k].prefix);
        const SafeTensor* nn = safetensors_find(&st, name);
        if (!s || s->dtype != DT_U32 || safetensor_numel(s) != (size_t)shape_mt[0] || !misc || misc->dtype != DT_I64 ||
            safetensor_numel(misc) != (size_t)shape3[0] || !nn || nn->dtype != DT_F64 || safetensor_numel(nn) != 1) {
            set_error(err, "%s: bad or missing %s generator state", path, gens[k].prefix);
            goto done;
        }
        int64_t m[3];
        double next_normal;
        memcpy(m, misc->data, sizeof(m));
        memcpy(&next_normal, nn->data, sizeof(double));
        // torch's MT19937 position: left counts down to the next twist (1..N), next indexes the next
        // word; each draw moves both, so left + next <= N + 1 and state[next] is inside the state
        // whenever it is read (left >= 2); a cached normal or none
        if (m[0] < 1 || m[0] > MT19937_N || m[1] < 0 || m[1] > MT19937_N + 1 - m[0] || (m[2] != 0 && m[2] != 1) ||
            !isfinite(next_normal)) {
            set_error(err, "%s: %s generator state is out of range (left %lld, next %lld, has_next_normal %lld)", path,
                      gens[k].prefix, (long long)m[0], (long long)m[1], (long long)m[2]);
            goto done;
        }
        memcpy(gens[k].g->state, s->data, sizeof(uint32_t) * MT19937_N);
        generator_unpack(gens[k].g, m);
        gens[k].g->next_normal = next_normal;
    }
    free(r->order);
    free(r->batch_sizes);
    r->order = NULL, r->batch_sizes = NULL, r->batch_count = 0;
    if (load_epoch(r, &st, path, err) != 0) goto done;
    // the counters, by json.h's integer rules (what save_checkpoint writes with %lld / %d)
    int64_t step, updates, epoch, batch_pos, growth;
    if (json_config_int_text(metadata_or(&st, "step", "0"), "metadata \"step\"", 0, INT64_MAX, &step, path, err) != 0 ||
        json_config_int_text(metadata_or(&st, "updates", "0"), "metadata \"updates\"", 0, step, &updates, path, err) != 0 ||
        json_config_int_text(metadata_or(&st, "epoch", "0"), "metadata \"epoch\"", 0, INT32_MAX, &epoch, path, err) != 0 ||
        json_config_int_text(metadata_or(&st, "batch_pos", "0"), "metadata \"batch_pos\"", 0, r->batch_count, &batch_pos, path,
                             err) != 0 ||
        json_config_int_text(metadata_or(&st, "scaler.growth_tracker", "0"), "metadata \"scaler.growth_tracker\"", 0, INT32_MAX,
                             &growth, path, err) != 0)
        goto done;
    // the loss scale is written with %a (exact); a GradScaler's scale is a positive finite number
    const char* scale_text = metadata_or(&st, "scaler.scale", "0x1p+16");
    char* end;
    double scale = strtod(scale_text, &end);
    if (end == scale_text || *end || !(scale > 0 && scale <= FLT_MAX)) {
        set_error(err, "%s: metadata \"scaler.scale\" must be a positive finite number, got \"%.40s\"", path, scale_text);
        goto done;
    }
    tr->steps = step;
    tr->updates = updates;
    r->epoch = (int)epoch;
    r->batch_pos = (int)batch_pos;
    tr->scaler.scale = (float)scale;
    tr->scaler.growth_tracker = (int)growth;
    lora_trainable_upload(&tr->lora);
    rc = 0;
done:
    safetensors_close(&st);
    return rc;
}

// ---- the run

TrainConfig train_config_default(void) {
    TrainConfig c = {0};
    c.caption_column = "text";
    c.save_dtype = DT_F32;
    c.data_cfg = data_config_default();
    c.lora = (LoraTrainConfig){4, 4.0f, UNET_LORA_ATTENTION, 0, 0.0f};
    c.obj = train_objective_default();
    c.batch_size = 1;
    c.max_steps = 15000;
    c.seed = 42;
    c.checkpoint_every = 500;
    c.sample_steps = 25;
    c.sample_cfg = 12.0f;
    c.validation_every = 100;
    return c;
}

// What a checkpoint must have been made with to be resumed: everything that changes the numbers
// (not the checkpointing of activations, the logging or where files go).
static void settings_string(Run* r) {
    const TrainConfig* c = r->cfg;
    const DataConfig* d = &c->data_cfg;
    const TrainObjective* o = &c->obj;
    snprintf(r->settings, sizeof(r->settings),
             "model=%s\ndata=%s\ncaption_column=%s\ndata_mode=%s resolution=%d center_crop=%d random_flip=%d "
             "buckets=%d..%d step %d\nlora=rank %d alpha %g %s, conv rank %d alpha %g\nprecision=%s\nprediction=%s noise_offset=%g snr_gamma=%g\n"
             "batch_size=%d grad_accum=%d\nadamw=lr %g betas %g %g eps %g weight_decay %g max_grad_norm %g\n"
             "schedule=%s warmup %lld%s\nseed=%llu\n",
             c->model, c->data, c->caption_column, d->mode == DATA_CROP ? "crop" : "buckets", d->resolution, d->center_crop,
             d->random_flip, d->bucket_min, d->bucket_max, d->bucket_step, c->lora.rank, c->lora.alpha,
             c->lora.targets == UNET_LORA_ATTENTION ? "attention" : "transformer", c->lora.conv_rank, c->lora.conv_alpha,
             dtype_name(r->dtype),
             o->prediction == PREDICT_EPSILON ? "epsilon" : "v_prediction", o->noise_offset, o->snr_gamma, c->batch_size,
             o->grad_accum, o->adamw.lr, o->adamw.beta1, o->adamw.beta2, o->adamw.eps, o->adamw.weight_decay, o->max_grad_norm,
             lr_schedule_name(o->schedule), (long long)o->warmup_steps,
             o->schedule == LR_CONSTANT || o->schedule == LR_CONSTANT_WITH_WARMUP ? "" : " (the total steps matter)",
             (unsigned long long)c->seed);
    if (o->schedule != LR_CONSTANT && o->schedule != LR_CONSTANT_WITH_WARMUP) {
        size_t n = strlen(r->settings);
        snprintf(r->settings + n, sizeof(r->settings) - n, "max_steps=%d\n", c->max_steps);
    }
}

static void format_duration(char* out, size_t cap, double seconds) {
    if (!isfinite(seconds) || seconds < 0) snprintf(out, cap, "?");
    else if (seconds < 60) snprintf(out, cap, "%.0fs", seconds);
    else if (seconds < 3600) snprintf(out, cap, "%dm%02ds", (int)seconds / 60, (int)seconds % 60);
    else snprintf(out, cap, "%dh%02dm", (int)seconds / 3600, ((int)seconds % 3600) / 60);
}

// Everything that can be checked before anything is loaded: numbers, the LoRA's shape, and every
// path the run reads or writes, so a typo fails in a second, not after the model has loaded and
// every image has been encoded.
static int check_config(const TrainConfig* c, char* err) {
    if (!c->model || !c->data || !c->out) return set_error(err, "train: --model, --data and --out are required");
    if (c->batch_size < 1 || c->batch_size > TRAIN_MAX_BATCH)
        return set_error(err, "train: --batch-size %d: must be 1 to %d", c->batch_size, TRAIN_MAX_BATCH);
    if (c->max_steps < 1) return set_error(err, "train: --steps %d: must be at least 1", c->max_steps);
    if (c->obj.grad_accum < 1) return set_error(err, "train: --grad-accum %d: must be at least 1", c->obj.grad_accum);
    if (c->data_cfg.resolution < 64 || c->data_cfg.resolution % 8 != 0 || c->data_cfg.resolution > 4096)
        return set_error(err, "train: --resolution %d: must be a multiple of 8 in 64..4096", c->data_cfg.resolution);
    if (!(c->obj.noise_offset >= 0) || !(c->obj.snr_gamma >= 0))
        return set_error(err, "train: --noise-offset and --snr-gamma must be >= 0");
    if (c->checkpoint_every < 0 || c->sample_every < 0 || c->validation_every < 0)
        return set_error(err, "train: the --*-every intervals must be >= 0");
    if (c->sample_every > 0 && c->sample_prompt_count == 0) return set_error(err, "train: --sample-every needs --sample-prompt");
    if (lora_train_config_check(&c->lora, err) != 0) return -1;
    struct stat sb;
    if (stat(c->model, &sb) != 0) return set_error(err, "%s: %s (--model)", c->model, strerror(errno));
    if (c->config_dir && !path_is_dir(c->config_dir)) return set_error(err, "%s: not a folder (--config)", c->config_dir);
    if (!path_is_dir(c->data)) return set_error(err, "%s: not a folder (--data)", c->data);
    if (c->validation_data && !path_is_dir(c->validation_data))
        return set_error(err, "%s: not a folder (--validation-data)", c->validation_data);
    if (c->resume && strcmp(c->resume, "latest") != 0 && !path_is_dir(c->resume))
        return set_error(err, "%s: not a checkpoint folder (--resume)", c->resume);
    return 0;
}

// The run's output paths (defaults beside --out), then the checks each must pass.
static int run_paths(Run* r, char* err) {
    const TrainConfig* c = r->cfg;
    const char* home = getenv("XDG_CACHE_HOME");
    if (c->cache_dir) snprintf(r->cache_dir, sizeof(r->cache_dir), "%s", c->cache_dir);
    else if (home) snprintf(r->cache_dir, sizeof(r->cache_dir), "%s/sdxl.c/train", home);
    else snprintf(r->cache_dir, sizeof(r->cache_dir), "%s/.cache/sdxl.c/train", getenv("HOME") ? getenv("HOME") : ".");
    if (c->checkpoint_dir) snprintf(r->checkpoint_dir, sizeof(r->checkpoint_dir), "%s", c->checkpoint_dir);
    else snprintf(r->checkpoint_dir, sizeof(r->checkpoint_dir), "%s.checkpoints", c->out);
    if (c->log_csv) snprintf(r->csv_path, sizeof(r->csv_path), "%s", c->log_csv);
    else snprintf(r->csv_path, sizeof(r->csv_path), "%s.csv", c->out);
    if (c->loss_png) snprintf(r->png_path, sizeof(r->png_path), "%s", c->loss_png);
    else snprintf(r->png_path, sizeof(r->png_path), "%s.loss.png", c->out);
    snprintf(r->samples_dir, sizeof(r->samples_dir), "%s.samples", c->out);
    if (output_file_check(c->out, err) != 0 || (c->out_diffusers && output_file_check(c->out_diffusers, err) != 0) ||
        output_file_check(r->csv_path, err) != 0 || output_file_check(r->png_path, err) != 0)
        return -1;
    int resume_latest = c->resume && strcmp(c->resume, "latest") == 0;
    if ((c->checkpoint_every > 0 || resume_latest) && output_folder_check(r->checkpoint_dir, err) != 0) return -1;
    if (c->sample_every > 0 && output_folder_check(r->samples_dir, err) != 0) return -1;
    if (resume_latest) {
        latest_checkpoint(r->checkpoint_dir, r->resume_dir, sizeof(r->resume_dir));
        if (!r->resume_dir[0]) return set_error(err, "%s: no checkpoint to resume (--resume latest)", r->checkpoint_dir);
    } else if (c->resume) {
        snprintf(r->resume_dir, sizeof(r->resume_dir), "%s", c->resume);
    }
    return 0;
}

static void run_free(Run* r) {
    if (r->tr.unet) trainer_free(&r->tr);
    prepared_free(&r->train);
    prepared_free(&r->val);
    if (r->vae_arena.capacity) arena_free(&r->vae_arena);
    if (r->csv) fclose(r->csv);
    free(r->order);
    free(r->batch_sizes);
    free(r->log_step);
    free(r->log_loss);
    free(r->log_val);
    sdxl_model_free(&r->model);
}

int train_run(const TrainConfig* c, char* err) {
    if (check_config(c, err) != 0) return -1;
    Run* r = xcalloc(1, sizeof(Run));
    r->cfg = c;
    int rc = -1;
    // precision: accelerate's --mixed_precision; fp16 keeps GradScaler, bf16 and no do not scale
    const char* mp = c->mixed_precision ? c->mixed_precision : backend_current() == BACKEND_CUDA ? "fp16" : "no";
    if (strcmp(mp, "fp16") == 0) r->dtype = DT_F16;
    else if (strcmp(mp, "bf16") == 0) r->dtype = DT_BF16;
    else if (strcmp(mp, "no") == 0) r->dtype = DT_F32;
    else {
        set_error(err, "train: --mixed-precision %s: use fp16, bf16 or no", mp);
        goto done;
    }
    TrainObjective obj = c->obj;
    obj.loss_scaling = r->dtype == DT_F16;
    obj.total_steps = c->max_steps;
    // where things go, and the datasets' lines (cheap), before the model loads (slow)
    if (run_paths(r, err) != 0) goto done;
    DatasetOptions data_options = {c->caption_column, c->skip_bad, c->follow_links};
    if (dataset_open(&r->train.data, c->data, &data_options, err) != 0) goto done;
    if (c->validation_data && dataset_open(&r->val.data, c->validation_data, &data_options, err) != 0) goto done;
    // the cache is a cache: its folders are made, parents and all (the default is under ~/.cache)
    if (!c->no_cache && make_dirs(r->cache_dir, err) != 0) goto done;
    // the VAE in f32 (diffusers keeps SDXL's VAE in f32 for training), the rest in the training dtype
    SdxlPrecision precision = {r->dtype, DT_F32, r->dtype};
    if (!c->quiet) printf("loading %s (UNet and text encoders %s, VAE f32)\n", c->model, dtype_name(r->dtype));
    if (sdxl_model_load(&r->model, c->model, NULL, c->config_dir, NULL, &precision, err) != 0) goto done;
    settings_string(r);
    encoder_keys(r);

    // data: captions encoded, latents encoded or read from the cache
    if (prepare_set(r, &r->train, c->data, &c->data_cfg, "training data", err) != 0) goto done;
    if (c->validation_data) {
        DataConfig vc = c->data_cfg;
        vc.center_crop = 1; // fixed pixels: the same latents every evaluation
        vc.random_flip = 0;
        if (prepare_set(r, &r->val, c->validation_data, &vc, "validation data", err) != 0) goto done;
    }
    // with every latent prepared, the encoder's activations (1.5 GiB in f32 at 1024 px) are not
    // needed again: random crops alone encode during training
    if (r->train.deterministic && r->vae_arena.capacity) arena_free(&r->vae_arena);
    // the largest micro-batch, training or validation, decides the activation arena; the
    // adapters' scratch must also hold a sample's two CFG rows and its prompts' tokens
    int max_h = 0, max_w = 0, max_hw = 0;
    const PreparedSet* sets[2] = {&r->train, &r->val}; // val is empty without validation data
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < sets[s]->data.count; i++) {
            const PreparedItem* it = &sets[s]->items[i];
            if (!it->usable) continue;
            if (it->h * it->w > max_hw) max_hw = it->h * it->w, max_h = it->h, max_w = it->w;
        }
    size_t work_rows = (size_t)(c->batch_size > 2 ? c->batch_size : 2) * max_hw + 2 * 4 * CAPTION_TOKENS;
    TorchGenerator init_rng;
    torch_manual_seed(&init_rng, c->seed); // torch.manual_seed(seed) before unet.add_adapter, as the script
    if (trainer_init(&r->tr, &r->model.unet, &c->lora, &init_rng, &obj, c->checkpointing, c->batch_size, max_h, max_w,
                     CAPTION_TOKENS, work_rows, err) != 0)
        goto done;
    noise_schedule_init(&r->tr.noise, &r->model.sched);
    torch_manual_seed(&r->order_rng, c->seed);
    torch_manual_seed(&r->noise_rng, c->seed + 1);
    if (!c->quiet)
        printf("LoRA: %d layers (%s), rank %d, alpha %g: %zu parameters; %d images, %d captions; micro-batches up to "
               "%dx%d latents; activations %.1f MiB%s\n",
               r->tr.lora.count,
               c->lora.targets == UNET_LORA_ATTENTION ? (c->lora.conv_rank ? "attention q/k/v/out, resnets and samplers" : "attention q/k/v/out")
                                                      : (c->lora.conv_rank ? "every transformer linear, resnets and samplers" : "every transformer linear"),
               c->lora.rank, c->lora.alpha, r->tr.lora.total, r->train.data.count, r->train.caption_count, max_h, max_w,
               r->tr.act.capacity / 1048576.0, c->checkpointing ? " (gradient checkpointing)" : "");

    // resume
    if (r->resume_dir[0]) {
        if (load_checkpoint(r, r->resume_dir, err) != 0) goto done;
        if (!c->quiet) printf("resumed from %s at step %lld\n", r->resume_dir, (long long)r->tr.steps);
    }
    if (log_open(r, r->tr.steps, err) != 0) goto done;

    // the loop: one step = grad_accum micro-batches and one update
    double start = now_seconds(), step_seconds = NAN;
    int64_t first = r->tr.steps, stop_at = c->stop_after > 0 ? first + c->stop_after : c->max_steps;
    int tty = isatty(fileno(stdout));
    while (r->tr.steps < c->max_steps && r->tr.steps < stop_at) {
        double t0 = now_seconds();
        for (int k = 0; k < obj.grad_accum; k++) {
            MicroBatch b;
            if (next_micro_batch(r, &b, err) != 0) goto done;
            trainer_micro_step(&r->tr, &b);
            micro_batch_free(&b);
        }
        UpdateInfo info;
        trainer_update(&r->tr, &info);
        double dt = now_seconds() - t0;
        step_seconds = isfinite(step_seconds) ? 0.9 * step_seconds + 0.1 * dt : dt;
        int64_t step = r->tr.steps;
        float val = NAN;
        if (c->validation_data && c->validation_every > 0 && (step % c->validation_every == 0 || step == c->max_steps))
            val = validation_loss(r);
        fprintf(r->csv, "%lld,%d,%.7g,%.6g,%.0f,%.6g,%d,%.3f,", (long long)step, r->epoch, info.loss, info.lr, info.loss_scale,
                info.grad_norm, info.skipped, dt);
        if (isfinite(val)) fprintf(r->csv, "%.7g", val);
        fprintf(r->csv, "\n");
        fflush(r->csv);
        log_append(r, step, info.loss, val);
        if (!c->quiet) {
            char eta[32];
            format_duration(eta, sizeof(eta), step_seconds * (c->max_steps - step));
            printf("%sstep %lld/%d  loss %.4f  lr %.2e  scale %.0f  %.2f s/step  ETA %s%s", tty ? "\r" : "", (long long)step,
                   c->max_steps, info.loss, info.lr, info.loss_scale, step_seconds, eta,
                   info.skipped ? "  (skipped: inf/NaN gradients)" : "");
            if (isfinite(val)) printf("  val %.4f", val);
            printf(tty ? "\033[K" : "\n");
            fflush(stdout);
        }
        if (c->sample_every > 0 && step % c->sample_every == 0 && write_samples(r, step, err) != 0) goto done;
        if (c->checkpoint_every > 0 && step % c->checkpoint_every == 0 && step < c->max_steps) {
            if (save_checkpoint(r, err) != 0 || draw_loss_curve(r, err) != 0) goto done;
        }
    }
    if (!c->quiet && tty) printf("\n");
    if (r->tr.steps < c->max_steps) { // --stop-after: stop as a killed run would, with no final save
        if (!c->quiet) printf("stopped after %lld steps; resume with --resume latest\n", (long long)(r->tr.steps - first));
        rc = 0;
        goto done;
    }
    if (save_lora_outputs(r, c->out, c->out_diffusers, r->tr.steps, err) != 0 || draw_loss_curve(r, err) != 0) goto done;
    if (!c->quiet) {
        char took[32];
        format_duration(took, sizeof(took), now_seconds() - start);
        printf("wrote %s%s%s (%d steps in %s); log %s, curve %s\n", c->out, c->out_diffusers ? " and " : "",
               c->out_diffusers ? c->out_diffusers : "", c->max_steps, took, r->csv_path, r->png_path);
    }
    rc = 0;
done:
    run_free(r);
    free(r);
    return rc;
}
