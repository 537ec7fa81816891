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

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "ops.h"
#include "safetensors.h"

// ----------------------------------------------------------------------------
// 1. Trainable adapters

// The order peft creates (and so initialises) the adapters in: model.named_modules(), which for
// diffusers' UNet2DConditionModel lists down_blocks, then up_blocks, then mid_block (up_blocks is
// registered, empty, before mid_block is built). Returns the rank of a name in that order.
static int module_order(const char* name) {
    if (strncmp(name, "down_blocks.", 12) == 0) return 0;
    if (strncmp(name, "up_blocks.", 10) == 0) return 1;
    return 2;
}

int lora_trainable_attach(LoraTrainable* t, Unet* u, const LoraTrainConfig* c, TorchGenerator* rng, size_t work_rows,
                          char* err) {
    memset(t, 0, sizeof(*t));
    if (c->rank < 1 || c->rank > 1024) return set_error(err, "LoRA rank %d: must be 1 to 1024", c->rank);
    if (!(c->alpha > 0) || !isfinite(c->alpha)) return set_error(err, "LoRA alpha %g: must be positive", c->alpha);
    t->cfg = *c;
    t->dtype = u->w.dtype;
    t->count = unet_lora_linears(u, c->targets, NULL, 0);
    if (t->count == 0) return set_error(err, "the UNet has no layers to adapt (no attention levels)");
    t->layers = xcalloc((size_t)t->count, sizeof(Linear*));
    unet_lora_linears(u, c->targets, t->layers, t->count);
    t->names = xcalloc((size_t)t->count, sizeof(char*));
    t->adapters = xcalloc((size_t)t->count, sizeof(LoraAdapter));
    t->offset_A = xcalloc((size_t)t->count, sizeof(size_t));
    t->offset_B = xcalloc((size_t)t->count, sizeof(size_t));
    int r = c->rank;
    for (int i = 0; i < t->count; i++) {
        const Linear* l = t->layers[i];
        for (int p = 0; p < u->w.count && !t->names[i]; p++)
            if (u->w.params[p].data == l->weight) t->names[i] = xstrdup(u->w.params[p].name);
        if (!t->names[i]) fatal("LoRA: a target layer has no parameter name"); // a bug in unet_lora_linears
        t->offset_A[i] = t->total;
        t->total += (size_t)r * l->in;
        t->offset_B[i] = t->total;
        t->total += (size_t)l->out * r;
    }
    // peft's init_lora_weights="gaussian": nn.Linear(in, r) and nn.Linear(r, out) are created first
    // (each draws its kaiming_uniform_ init: one 32-bit word per element), then A ~ N(0, 1/r), B = 0
    t->params = xcalloc(t->total, sizeof(float));
    for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < t->count; i++) {
            if (module_order(t->names[i]) != pass) continue;
            const Linear* l = t->layers[i];
            for (size_t k = 0; k < (size_t)r * l->in + (size_t)l->out * r; k++) torch_random32(rng);
            float* A = t->params + t->offset_A[i];
            torch_randn(rng, A, (size_t)r * l->in);
            for (size_t k = 0; k < (size_t)r * l->in; k++) A[k] *= 1.0f / (float)r;
        }
    // the backend copies and the adapters
    t->grads = device_malloc(sizeof(float) * t->total);
    t->compute = t->dtype == DT_F32 ? (void*)device_malloc(sizeof(float) * t->total)
                                    : device_malloc(dtype_size(t->dtype) * t->total);
    t->work = device_malloc(dtype_size(t->dtype) * work_rows * (size_t)r);
    char* base = t->compute;
    for (int i = 0; i < t->count; i++) {
        LoraAdapter* a = &t->adapters[i];
        a->A = base + t->offset_A[i] * dtype_size(t->dtype);
        a->B = base + t->offset_B[i] * dtype_size(t->dtype);
        a->rank = r;
        a->scale = c->alpha / (float)r;
        a->grad_A = t->grads + t->offset_A[i];
        a->grad_B = t->grads + t->offset_B[i];
        a->work = t->work;
        a->work_rows = work_rows;
        t->layers[i]->lora = a;
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
        t->layers[i]->lora = NULL;
        free(t->names[i]);
    }
    device_free(t->grads);
    device_free(t->compute);
    device_free(t->work);
    free(t->params);
    free(t->layers);
    free(t->names);
    free(t->adapters);
    free(t->offset_A);
    free(t->offset_B);
    memset(t, 0, sizeof(*t));
}

int lora_trainable_save(const LoraTrainable* t, const Unet* u, const char* path, LoraFormat format, DType dtype,
                        const char* const* meta_keys, const char* const* meta_values, int meta_count, char* err) {
    LoraWriteModule* m = xcalloc((size_t)t->count, sizeof(LoraWriteModule));
    for (int i = 0; i < t->count; i++)
        m[i] = (LoraWriteModule){t->names[i], t->cfg.rank, t->layers[i]->in, t->layers[i]->out, t->cfg.alpha,
                                 t->params + t->offset_A[i], t->params + t->offset_B[i]};
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
        sizes[2 * i] = t->offset_B[i] - t->offset_A[i];
        sizes[2 * i + 1] = (i + 1 < t->count ? t->offset_A[i + 1] : t->total) - t->offset_B[i];
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
