// main.c: the `sdxl` command line.
//
//   sdxl generate             prompt(s) to storyboard thumbnails with an SDXL model and a LoRA
//   sdxl train                fine-tune SDXL with LoRA on an imagefolder dataset (train.h)
//   sdxl eval                 judge a folder of thumbnails and write report.json/csv/html
//   sdxl demo                 the whole pipeline on a tiny random-weight SDXL (no download)
//   sdxl info                 what this binary was built with and what it can see
//   sdxl bench matmul|unet|generate|train  GEMM throughput; full-size UNet evaluations; a whole
//                             thumbnail; LoRA training steps
//   sdxl verify unet          our UNet against a reference evaluation from another implementation
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "common.h"
#include "demo.h"
#include "eval.h"
#include "lora.h"
#include "ops.h"
#include "pipeline.h"
#include "png.h"
#include "rng.h"
#include "sdxl.h"
#include "tokenizer.h"
#include "train.h"

#ifdef _OPENMP
#include <omp.h>
#endif

int bench_main(int argc, char** argv); // bench.c

// ----------------------------------------------------------------------------
// sdxl info

static int info_main(void) {
    printf("sdxl.c\n");
#ifdef _OPENMP
    printf("  OpenMP threads: %d\n", omp_get_max_threads());
#else
    printf("  OpenMP: off\n");
#endif
    printf("  CUDA backend built: %s\n", cuda_built() ? "yes" : "no (make CUDA=1)");
    if (cuda_built()) printf("  CUDA devices visible: %d\n", cuda_device_count());
    return 0;
}

// ----------------------------------------------------------------------------
// sdxl generate: prompt(s) to storyboard thumbnails

// Reads a prompts file (read_lines: one prompt per line, '#' comments); an empty one is an error.
static int read_prompts(const char* path, char*** lines) {
    int count;
    char err[ERR_MAX];
    if (read_lines(path, lines, &count, err) != 0) fatal("%s", err);
    if (count == 0) fatal("%s: no prompts (one per line; '#' starts a comment)", path);
    return count;
}

// Everything `generate` and `demo` share: the model is loaded, the LoRA merged; run every prompt.
typedef struct {
    const char* prompt;
    const char* prompts_file;
    const char* negative;     // NULL: the storyboard negative prompt (or "" with --no-style)
    const char* lora;
    float lora_scale;
    const char* sampler;
    int steps;
    float cfg;
    uint64_t seed;          // torch.Generator("cpu").manual_seed(seed); the full 64-bit range
    int width, height;
    const char* out;
    int no_style;
    int verbose;
} GenerateOptions;

// The prompts of a run, read before anything slow: --prompt, or every line of --prompts.
typedef struct {
    char** prompts;
    int count;
} PromptList;

static PromptList prompt_list(const GenerateOptions* o) {
    PromptList l;
    if (o->prompts_file) {
        l.count = read_prompts(o->prompts_file, &l.prompts);
    } else {
        l.prompts = xmalloc(sizeof(char*));
        l.prompts[0] = xstrdup(o->prompt);
        l.count = 1;
    }
    // the byte limit needs no tokenizer: checked before the model loads (the chunk limit after)
    for (int i = 0; i < l.count; i++) {
        size_t n = strlen(l.prompts[i]);
        if (n <= PROMPT_MAX_BYTES) continue;
        if (o->prompts_file) fatal("%s: prompt %d: %zu bytes, more than %d (PROMPT_MAX_BYTES)", o->prompts_file, i + 1, n, PROMPT_MAX_BYTES);
        fatal("--prompt: %zu bytes, more than %d (PROMPT_MAX_BYTES)", n, PROMPT_MAX_BYTES);
    }
    return l;
}

// Where prompt i goes: --out itself, or <out>/001.png, 002.png, ... with --prompts.
static void output_path(const GenerateOptions* o, int i, char* path, size_t cap) {
    if (o->prompts_file) snprintf(path, cap, "%s/%03d.png", o->out, i + 1);
    else snprintf(path, cap, "%s", o->out);
}

// The outputs checked before the model loads: a single PNG's folder must exist; the --prompts
// folder may be absent (its parent must exist), and no file it would replace may be anything but
// a regular file.
static void check_outputs(const GenerateOptions* o, int n_prompts) {
    char err[ERR_MAX];
    if (!o->prompts_file) {
        if (output_file_check(o->out, err) != 0) fatal("%s (--out)", err);
        return;
    }
    if (output_folder_check(o->out, err) != 0) fatal("%s (--out)", err);
    if (!path_is_dir(o->out)) return;
    for (int i = 0; i < n_prompts; i++) {
        char path[4200];
        output_path(o, i, path, sizeof(path));
        if (output_file_check(path, err) != 0) fatal("%s", err);
    }
}

static int run_prompts(SdxlModel* model, const GenerateOptions* o, const PromptList* prompts) {
    GenerateParams p = {0};
    if (sampler_from_name(o->sampler, &p.sampler) != 0)
        fatal("--sampler: expected one of euler, euler_a, ddim, dpmpp_2m_karras, got '%s'", o->sampler);
    p.width = o->width;
    p.height = o->height;
    p.steps = o->steps;
    p.cfg = o->cfg;
    p.seed = o->seed;
    p.lora_scale = o->lora_scale;
    char lora_name[256] = "";
    if (o->lora) {
        const char* slash = strrchr(o->lora, '/');
        snprintf(lora_name, sizeof(lora_name), "%s", slash ? slash + 1 : o->lora);
        char* dot = strrchr(lora_name, '.');
        if (dot) *dot = 0;
        p.lora_name = lora_name;
    }
    char err[ERR_MAX];
    if (o->prompts_file && make_dir(o->out, err) != 0) fatal("%s", err);
    const char* negative = o->negative ? o->negative : o->no_style ? "" : STORYBOARD_NEGATIVE;
    for (int i = 0; i < prompts->count; i++) {
        char* full = o->no_style ? xstrdup(prompts->prompts[i]) : storyboard_prompt(prompts->prompts[i]);
        p.prompt = full;
        p.negative = negative;
        char path[4200];
        output_path(o, i, path, sizeof(path));
        // a long prompt is shown by its start and its length, not all of it
        if (strlen(full) <= 300) printf("[%d/%d] %s\n", i + 1, prompts->count, full);
        else printf("[%d/%d] %.240s... (%zu bytes)\n", i + 1, prompts->count, full, strlen(full));
        Image img;
        double t0 = now_seconds();
        if (sdxl_generate(model, &p, &img, NULL, err) != 0) {
            if (o->prompts_file) fatal("%s: prompt %d: %s", o->prompts_file, i + 1, err);
            fatal("%s", err);
        }
        if (png_write(path, &img, err) != 0) fatal("%s", err);
        printf("  wrote %s (%dx%d) in %.1f s\n", path, img.width, img.height, now_seconds() - t0);
        image_free(&img);
        free(full);
    }
    return 0;
}

static void validate_generate_options(const GenerateOptions* o) {
    if (o->steps < 1 || o->steps > 1000) fatal("--steps must be in 1..1000 (got %d)", o->steps);
    if (!(o->cfg >= 0.0f && o->cfg <= 100.0f)) fatal("--cfg must be in 0..100 (got %g)", o->cfg);
    if (o->width < 8 || o->width > 4096 || o->height < 8 || o->height > 4096)
        fatal("--width and --height must be in 8..4096 (got %dx%d)", o->width, o->height);
    if (!(o->lora_scale >= -10.0f && o->lora_scale <= 10.0f)) fatal("--lora-scale must be in -10..10 (got %g)", o->lora_scale);
    SamplerKind k;
    if (sampler_from_name(o->sampler, &k) != 0)
        fatal("--sampler: expected one of euler, euler_a, ddim, dpmpp_2m_karras, got '%s'", o->sampler);
}

// The LoRA is read and checked (format, keys, ranks) before the model loads, and merged after.
static void load_model(SdxlModel* model, const char* path, const char* variant, const char* config, const char* tokenizer,
                       const SdxlPrecision* precision, const char* lora, float lora_scale) {
    char err[ERR_MAX];
    Lora l;
    if (lora && lora_load(&l, lora, err) != 0) fatal("%s", err);
    double t0 = now_seconds();
    if (sdxl_model_load(model, path, variant, config, tokenizer, precision, err) != 0) fatal("%s", err);
    printf("loaded %s in %.1f s (UNet %s, VAE %s, text encoders %s)\n", path, now_seconds() - t0,
           precision_name(precision->unet), precision_name(precision->vae), precision_name(precision->text));
    if (lora) {
        if (lora_merge(&l, lora_scale, &model->unet, &model->te1, &model->te2, err) != 0) fatal("%s", err);
        char desc[512];
        lora_describe(&l, desc, sizeof(desc));
        printf("merged LoRA %s at scale %g: %s\n", lora, lora_scale, desc);
        if (l.note[0]) printf("note: %s\n", l.note);
        lora_free(&l);
    }
}

// The job's defaults: one initialiser, each commented (README "What a run does").
static GenerateOptions generate_defaults(void) {
    GenerateOptions o = {0};
    o.lora_scale = 0.4f;        // the fine-tuned storyboard LoRA at 0.4
    o.sampler = "euler";        // diffusers' EulerDiscreteScheduler, SDXL's default
    o.steps = 25;
    o.cfg = 12.0f;              // strong guidance keeps the drawings black and white
    o.seed = 42;
    o.width = 1365;             // 16:9 storyboard thumbnail; generated at 1368x768, centre-cropped
    o.height = 768;
    o.out = "storyboard.png";
    return o;
}

static int generate_main(int argc, char** argv) {
    GenerateOptions o = generate_defaults();
    const char* model = NULL;
    const char* variant = NULL;
    const char* tokenizer = NULL;
    const char* config = NULL;
    const char* backend = "cpu";
    const char* precision = "auto";
    const char* vae_precision = "auto";
    Option options[] = {
        {"--model", OPT_STRING, &model, "an SDXL diffusers folder, or an SGM single-file .safetensors (required)"},
        {"--prompt", OPT_STRING, &o.prompt, "what to draw; the storyboard template is appended"},
        {"--prompts", OPT_STRING, &o.prompts_file, "a file with one prompt per line; --out is then a folder"},
        {"--negative", OPT_STRING, &o.negative, "negative prompt (default: the storyboard one; \"\" encodes as zeros)"},
        {"--no-style", OPT_FLAG, &o.no_style, "no storyboard template appended, no default negative prompt"},
        {"--lora", OPT_STRING, &o.lora, "a LoRA (kohya, diffusers or PEFT file or folder) to merge"},
        {"--lora-scale", OPT_FLOAT, &o.lora_scale, "LoRA strength"},
        {"--sampler", OPT_STRING, &o.sampler, "one of euler, euler_a, ddim, dpmpp_2m_karras"},
        {"--steps", OPT_INT, &o.steps, "denoising steps"},
        {"--cfg", OPT_FLOAT, &o.cfg, "classifier-free guidance scale"},
        {"--seed", OPT_SEED, &o.seed, "seed of the torch-identical CPU generator: any integer torch.manual_seed takes, -2^63 .. 2^64-1"},
        {"--width", OPT_INT, &o.width, "output width in pixels; generated at the next multiple of 8, centre-cropped"},
        {"--height", OPT_INT, &o.height, "output height in pixels"},
        {"--out", OPT_STRING, &o.out, "PNG to write (a folder with --prompts)"},
        {"--variant", OPT_STRING, &variant, "weights variant, e.g. fp16 (default: plain files when present, else fp16)"},
        {"--config", OPT_STRING, &config, "single files: a diffusers folder with their configs and tokenizers"},
        {"--tokenizer", OPT_STRING, &tokenizer, "single files: a tokenizer folder (vocab.json, merges.txt)"},
        {"--backend", OPT_STRING, &backend, "cpu or cuda"},
        {"--precision", OPT_STRING, &precision, "UNet and text-encoder precision: fp32, fp16, bf16, or auto (fp16 on cuda, fp32 on the CPU)"},
        {"--vae-precision", OPT_STRING, &vae_precision, "VAE precision: fp32, bf16, or auto (bf16 on cuda, fp32 on the CPU)"},
        {"--verbose", OPT_FLAG, &o.verbose, "print every option's value before the run"},
    };
    int n_options = sizeof(options) / sizeof(options[0]);
    const char* usage = "sdxl generate --model PATH --prompt TEXT [options]";
    if (options_parse(options, n_options, argc, argv, 2, usage)) return 0;
    if (!model) fatal("--model is required (an SDXL diffusers folder or .safetensors file); see sdxl generate --help");
    if (!o.prompt == !o.prompts_file) fatal("give exactly one of --prompt TEXT or --prompts FILE");
    if (o.prompts_file && strcmp(o.out, "storyboard.png") == 0) o.out = "storyboard_out";
    validate_generate_options(&o);
    backend_select_by_name(backend);
    SdxlPrecision prec = model_precision(precision, vae_precision);
    // every input and output checked before the model loads
    struct stat sb;
    if (stat(model, &sb) != 0) fatal("%s: no such file or folder (--model)", model);
    if (config && !path_is_dir(config)) fatal("%s: not a folder (--config)", config);
    if (tokenizer && !path_is_dir(tokenizer)) fatal("%s: not a folder (--tokenizer)", tokenizer);
    PromptList prompts = prompt_list(&o);
    check_outputs(&o, prompts.count);
    if (o.verbose) options_print_values(options, n_options);
    SdxlModel m;
    load_model(&m, model, variant, config, tokenizer, &prec, o.lora, o.lora_scale);
    run_prompts(&m, &o, &prompts);
    free_lines(prompts.prompts, prompts.count);
    sdxl_model_free(&m);
    return 0;
}

// ----------------------------------------------------------------------------
// sdxl demo: the whole pipeline with no weights to download. A tiny SDXL with random weights (same
// structure, small widths) is written as a diffusers folder by demo.c, loaded back like any model,
// and run with the storyboard defaults, with a LoRA trained first on a few drawn black-and-white
// frames. The picture is noise, because the weights are random.

static int demo_main(int argc, char** argv) {
    GenerateOptions o = generate_defaults();
    o.prompt = "a man with an umbrella steps out of a car at night";
    o.steps = 10; // the job's 25 would take ~30 s on 2 cores; the demo is here to show every stage run
    o.out = "demo_out/frames/storyboard_demo.png";
    const char* folder = "demo_out/tiny_sdxl";
    int train_steps = 8;
    const char* backend = "cpu";
    const char* precision = "auto";
    const char* vae_precision = "auto";
    Option options[] = {
        {"--prompt", OPT_STRING, &o.prompt, "what to draw"},
        {"--steps", OPT_INT, &o.steps, "denoising steps"},
        {"--sampler", OPT_STRING, &o.sampler, "one of euler, euler_a, ddim, dpmpp_2m_karras"},
        {"--seed", OPT_SEED, &o.seed, "seed of the torch-identical CPU generator: any integer torch.manual_seed takes, -2^63 .. 2^64-1"},
        {"--width", OPT_INT, &o.width, "output width in pixels"},
        {"--height", OPT_INT, &o.height, "output height in pixels"},
        {"--model-dir", OPT_STRING, &folder, "where the tiny model is written (its dataset and LoRA go beside it)"},
        {"--train-steps", OPT_INT, &train_steps, "steps of the demo LoRA's training"},
        {"--out", OPT_STRING, &o.out, "PNG to write"},
        {"--backend", OPT_STRING, &backend, "cpu or cuda"},
        {"--precision", OPT_STRING, &precision, "UNet and text-encoder precision: fp32, fp16, bf16, or auto (fp16 on cuda, fp32 on the CPU)"},
        {"--vae-precision", OPT_STRING, &vae_precision, "VAE precision: fp32, bf16, or auto (bf16 on cuda, fp32 on the CPU)"},
    };
    if (options_parse(options, sizeof(options) / sizeof(options[0]), argc, argv, 2, "sdxl demo [options]")) return 0;
    validate_generate_options(&o);
    backend_select_by_name(backend);
    SdxlPrecision prec = model_precision(precision, vae_precision);
    // the demo makes the folders it writes into (demo_out/ and demo_out/frames/ by default)
    char err[ERR_MAX];
    if (make_parent_dirs(folder, err) != 0 || make_parent_dirs(o.out, err) != 0) fatal("%s", err);
    check_outputs(&o, 1);
    double t0 = now_seconds();
    if (demo_model_write(folder, 1, err) != 0) fatal("%s", err);
    printf("wrote a tiny random-weight SDXL to %s in %.1f s (its images are noise: the weights are random)\n", folder,
           now_seconds() - t0);
    // a LoRA trained on a few drawn black-and-white frames (a short run at 256 px: every stage of
    // the trainer, in seconds), then generation with it at the job's 0.4
    char data[4200], lora[4200];
    snprintf(data, sizeof(data), "%s_data", folder);
    snprintf(lora, sizeof(lora), "%s_storyboard_lora.safetensors", folder);
    if (demo_dataset_write(data, 4, 7, err) != 0) fatal("%s", err);
    TrainConfig tc = train_config_default();
    tc.model = folder;
    tc.data = data;
    tc.out = lora;
    tc.data_cfg.resolution = 256;
    tc.data_cfg.bucket_min = 128;
    tc.obj.adamw.lr = 1e-3;
    tc.max_steps = train_steps;
    tc.checkpoint_every = 0;
    tc.no_cache = 1;
    // train in the precision the demo generates in, so both backends train the same LoRA
    tc.mixed_precision = prec.unet == DT_F16 ? "fp16" : prec.unet == DT_BF16 ? "bf16" : "no";
    printf("training a demo LoRA on %s (4 drawn frames, %d steps at 256 px)\n", data, tc.max_steps);
    t0 = now_seconds();
    if (train_run(&tc, err) != 0) fatal("%s", err);
    printf("trained in %.1f s\n", now_seconds() - t0);
    o.lora = lora;
    SdxlModel m;
    load_model(&m, folder, NULL, NULL, NULL, &prec, o.lora, o.lora_scale);
    PromptList prompts = prompt_list(&o);
    run_prompts(&m, &o, &prompts);
    free_lines(prompts.prompts, prompts.count);
    sdxl_model_free(&m);
    return 0;
}

// ----------------------------------------------------------------------------
// sdxl train: LoRA fine-tuning (train.h). The defaults are the storyboard job's: diffusers'
// train_text_to_image_lora_sdxl.py with lr 1e-5, fp16, batch 1, gradient accumulation 4, 15,000
// steps, at 1024 px, in kohya's aspect-ratio buckets so 16:9 frames keep their whole picture.

static int train_main(int argc, char** argv) {
    TrainConfig c = train_config_default();
    const char* backend = "cpu";
    const char* data_mode = "buckets";
    const char* targets = "attention";
    const char* prediction = "epsilon";
    const char* scheduler = "constant";
    const char* save_precision = "fp32";
    const char* sample_prompt = NULL;
    const char* sample_prompts_file = NULL;
    int random_crop = 0, warmup = 0, verbose = 0;
    float alpha = 0.0f, conv_alpha = 0.0f;
    Option options[] = {
        {"--model", OPT_STRING, &c.model, "the SDXL base model: a diffusers folder, or a single .safetensors (required)"},
        {"--config", OPT_STRING, &c.config_dir, "single files: a diffusers folder with their configs and tokenizers"},
        {"--data", OPT_STRING, &c.data, "a Hugging Face imagefolder: images + metadata.jsonl (required)"},
        {"--caption-column", OPT_STRING, &c.caption_column, "the metadata.jsonl key holding the caption"},
        {"--skip-bad", OPT_FLAG, &c.skip_bad, "skip unreadable images and bad lines with a warning instead of stopping"},
        {"--follow-links", OPT_FLAG, &c.follow_links, "let metadata.jsonl's file_name reach images outside --data through symbolic links"},
        {"--out", OPT_STRING, &c.out, "the LoRA to write, kohya format (required)"},
        {"--out-diffusers", OPT_STRING, &c.out_diffusers, "also write this diffusers-format LoRA (pytorch_lora_weights.safetensors)"},
        {"--save-precision", OPT_STRING, &save_precision, "LoRA file tensors: fp32, fp16 or bf16"},
        {"--resolution", OPT_INT, &c.data_cfg.resolution, "training resolution (buckets hold about this squared in pixels)"},
        {"--data-mode", OPT_STRING, &data_mode, "buckets (kohya's aspect-ratio buckets) or crop (diffusers: square crops)"},
        {"--random-crop", OPT_FLAG, &random_crop, "random crops (crop mode) / random trims (buckets) instead of centred"},
        {"--random-flip", OPT_FLAG, &c.data_cfg.random_flip, "flip horizontally with probability 0.5"},
        {"--bucket-step", OPT_INT, &c.data_cfg.bucket_step, "bucket sides are multiples of this"},
        {"--bucket-min", OPT_INT, &c.data_cfg.bucket_min, "smallest bucket side"},
        {"--bucket-max", OPT_INT, &c.data_cfg.bucket_max, "largest bucket side"},
        {"--rank", OPT_INT, &c.lora.rank, "LoRA rank"},
        {"--alpha", OPT_FLOAT, &alpha, "LoRA alpha; scale = alpha / rank (0: alpha = rank, diffusers' choice)"},
        {"--targets", OPT_STRING, &targets, "attention (to_q/k/v/out.0, diffusers) or transformer (every transformer linear, kohya)"},
        {"--conv-rank", OPT_INT, &c.lora.conv_rank, "also the resnets' convs, time projections and samplers, 3x3 convs at this rank (kohya's conv_dim; 0: off)"},
        {"--conv-alpha", OPT_FLOAT, &conv_alpha, "alpha of the 3x3 convs (0: alpha = conv rank)"},
        {"--prediction", OPT_STRING, &prediction, "epsilon (SDXL base) or v_prediction"},
        {"--noise-offset", OPT_FLOAT, &c.obj.noise_offset, "noise offset (0: off)"},
        {"--snr-gamma", OPT_FLOAT, &c.obj.snr_gamma, "min-SNR weighting gamma (0: off; 5 is the usual choice)"},
        {"--lr", OPT_DOUBLE, &c.obj.adamw.lr, "learning rate"},
        {"--lr-scheduler", OPT_STRING, &scheduler, "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial"},
        {"--lr-warmup-steps", OPT_INT, &warmup, "warmup steps"},
        {"--adam-beta1", OPT_DOUBLE, &c.obj.adamw.beta1, "AdamW beta1"},
        {"--adam-beta2", OPT_DOUBLE, &c.obj.adamw.beta2, "AdamW beta2"},
        {"--adam-eps", OPT_DOUBLE, &c.obj.adamw.eps, "AdamW epsilon"},
        {"--weight-decay", OPT_DOUBLE, &c.obj.adamw.weight_decay, "AdamW decoupled weight decay"},
        {"--max-grad-norm", OPT_DOUBLE, &c.obj.max_grad_norm, "clip the gradient norm to this (0: no clipping)"},
        {"--batch-size", OPT_INT, &c.batch_size, "images per micro-batch"},
        {"--grad-accum", OPT_INT, &c.obj.grad_accum, "micro-batches per optimizer step"},
        {"--steps", OPT_INT, &c.max_steps, "optimizer steps"},
        {"--seed", OPT_SEED, &c.seed, "seed of the LoRA init, the data order and the noise (-2^63 .. 2^64-1, as torch)"},
        {"--mixed-precision", OPT_STRING, &c.mixed_precision, "fp16 (with loss scaling), bf16 or no (default: fp16 on cuda, no on the CPU)"},
        {"--gradient-checkpointing", OPT_FLAG, &c.checkpointing, "keep only block inputs; recompute each block in the backward"},
        {"--cache-dir", OPT_STRING, &c.cache_dir, "latent and text-embedding cache (default: ~/.cache/sdxl.c/train)"},
        {"--no-cache", OPT_FLAG, &c.no_cache, "encode everything again, read and write no cache"},
        {"--checkpoint-dir", OPT_STRING, &c.checkpoint_dir, "where checkpoints go (default: <out>.checkpoints)"},
        {"--checkpoint-every", OPT_INT, &c.checkpoint_every, "save the whole state every N steps (0: never)"},
        {"--checkpoints-keep", OPT_INT, &c.checkpoints_keep, "keep only the newest N checkpoints (0: all)"},
        {"--resume", OPT_STRING, &c.resume, "continue from a checkpoint folder, or \"latest\""},
        {"--stop-after", OPT_INT, &c.stop_after, "stop after N steps of this run without saving, as if killed (for testing resume)"},
        {"--sample-prompt", OPT_STRING, &sample_prompt, "a prompt to draw while training (fixed seed 42)"},
        {"--sample-prompts", OPT_STRING, &sample_prompts_file, "a file of prompts to draw while training (seeds 42, 43, ...)"},
        {"--sample-every", OPT_INT, &c.sample_every, "draw the samples every N steps (0: never) into <out>.samples/"},
        {"--sample-steps", OPT_INT, &c.sample_steps, "sampler steps for the samples (Euler)"},
        {"--sample-cfg", OPT_FLOAT, &c.sample_cfg, "guidance scale for the samples"},
        {"--validation-data", OPT_STRING, &c.validation_data, "a held-out imagefolder for a validation loss"},
        {"--validation-every", OPT_INT, &c.validation_every, "validation loss every N steps"},
        {"--log", OPT_STRING, &c.log_csv, "the CSV log (default: <out>.csv)"},
        {"--loss-png", OPT_STRING, &c.loss_png, "the loss curve (default: <out>.loss.png)"},
        {"--quiet", OPT_FLAG, &c.quiet, "no progress lines"},
        {"--verbose", OPT_FLAG, &verbose, "print every option's value before the run"},
        {"--backend", OPT_STRING, &backend, "cpu or cuda"},
    };
    int n_options = sizeof(options) / sizeof(options[0]);
    if (options_parse(options, n_options, argc, argv, 2, "sdxl train --model PATH --data DIR --out LORA.safetensors [options]"))
        return 0;
    if (!c.model || !c.data || !c.out) fatal("--model, --data and --out are required; see sdxl train --help");
    char err[ERR_MAX];
    if (strcmp(data_mode, "buckets") == 0) c.data_cfg.mode = DATA_BUCKETS;
    else if (strcmp(data_mode, "crop") == 0) c.data_cfg.mode = DATA_CROP;
    else fatal("--data-mode: expected buckets or crop, got '%s'", data_mode);
    c.data_cfg.center_crop = !random_crop;
    if (strcmp(targets, "attention") == 0) c.lora.targets = UNET_LORA_ATTENTION;
    else if (strcmp(targets, "transformer") == 0) c.lora.targets = UNET_LORA_TRANSFORMER;
    else fatal("--targets: expected attention or transformer, got '%s'", targets);
    if (strcmp(prediction, "epsilon") == 0) c.obj.prediction = PREDICT_EPSILON;
    else if (strcmp(prediction, "v_prediction") == 0) c.obj.prediction = PREDICT_V;
    else fatal("--prediction: expected epsilon or v_prediction, got '%s'", prediction);
    if (lr_schedule_from_name(scheduler, &c.obj.schedule, err) != 0) fatal("--lr-scheduler: %s", err);
    if (warmup < 0) fatal("--lr-warmup-steps must be >= 0 (got %d)", warmup);
    c.obj.warmup_steps = warmup;
    c.lora.alpha = alpha > 0 ? alpha : (float)c.lora.rank;
    if (alpha < 0) fatal("--alpha must be positive, or 0 for alpha = rank (got %g)", alpha);
    c.lora.conv_alpha = conv_alpha > 0 ? conv_alpha : (float)c.lora.conv_rank;
    if (conv_alpha < 0) fatal("--conv-alpha must be positive, or 0 for alpha = conv rank (got %g)", conv_alpha);
    c.save_dtype = (DType)precision_by_name(save_precision, "--save-precision");
    char** prompts = NULL;
    if (sample_prompts_file) {
        c.sample_prompt_count = read_prompts(sample_prompts_file, &prompts);
        if (c.sample_prompt_count > TRAIN_MAX_SAMPLE_PROMPTS) fatal("%s: at most %d sample prompts", sample_prompts_file, TRAIN_MAX_SAMPLE_PROMPTS);
        for (int i = 0; i < c.sample_prompt_count; i++) c.sample_prompts[i] = prompts[i];
    } else if (sample_prompt) {
        c.sample_prompts[c.sample_prompt_count++] = sample_prompt;
    }
    backend_select_by_name(backend);
    if (verbose) options_print_values(options, n_options);
    if (train_run(&c, err) != 0) fatal("%s", err);
    free_lines(prompts, c.sample_prompt_count);
    return 0;
}

// ----------------------------------------------------------------------------
// sdxl eval: judge a folder of thumbnails (eval.h)

static int eval_main(int argc, char** argv) {
    EvalOptions o = {0};
    o.out_dir = "eval_report";
    o.interrogate = "fast";  // clip-interrogator's quick mode
    o.width = 1365;          // the storyboard thumbnail size
    o.height = 768;
    o.beams = 3;             // the BLIP paper's captioning: 3 beams, 5 to 20 tokens
    const char* backend = "cpu";
    int verbose = 0;
    Option options[] = {
        {"--images", OPT_STRING, &o.images_dir, "the folder of PNGs to judge (required)"},
        {"--prompts", OPT_STRING, &o.prompts_file, "one prompt per line in the images' name order (default: each PNG's parameters text)"},
        {"--out", OPT_STRING, &o.out_dir, "folder for report.json, report.csv and report.html"},
        {"--clip", OPT_STRING, &o.clip, "CLIP score: a transformers CLIPModel folder (openai/clip-vit-large-patch14)"},
        {"--yolo", OPT_STRING, &o.yolo, "object presence: a YOLOv8 safetensors (scripts/convert_yolo.py)"},
        {"--blip", OPT_STRING, &o.blip, "captions: a BlipForConditionalGeneration folder (Salesforce/blip-image-captioning-*)"},
        {"--minilm", OPT_STRING, &o.minilm, "prompt-caption similarity: an all-MiniLM-L6-v2 folder"},
        {"--interrogator-lists", OPT_STRING, &o.lists_dir, "clip-interrogator lists: mediums/artists/movements/flavors.txt"},
        {"--interrogate", OPT_STRING, &o.interrogate, "interrogator mode: fast or classic"},
        {"--cache", OPT_STRING, &o.cache_dir, "label-embedding cache folder (default: <lists>/cache)"},
        {"--judge-cmd", OPT_STRING, &o.judge_cmd, "LLM judge command (protocol in README), e.g. scripts/judge_openai.sh"},
        {"--width", OPT_INT, &o.width, "expected image width"},
        {"--height", OPT_INT, &o.height, "expected image height"},
        {"--beams", OPT_INT, &o.beams, "BLIP beam search width (1 = greedy)"},
        {"--backend", OPT_STRING, &backend, "cpu or cuda"},
        {"--verbose", OPT_FLAG, &verbose, "print every option's value before the run"},
    };
    int n_options = sizeof(options) / sizeof(options[0]);
    if (options_parse(options, n_options, argc, argv, 2, "sdxl eval --images DIR [options]")) return 0;
    if (!o.images_dir) fatal("--images is required (a folder of PNGs); see sdxl eval --help");
    if (strcmp(o.interrogate, "fast") != 0 && strcmp(o.interrogate, "classic") != 0)
        fatal("--interrogate: expected fast or classic, got '%s'", o.interrogate);
    if (o.beams < 1 || o.beams > 16) fatal("--beams must be in 1..16 (got %d)", o.beams);
    if (o.width < 1 || o.height < 1) fatal("--width and --height must be positive (got %dx%d)", o.width, o.height);
    backend_select_by_name(backend);
    if (verbose) options_print_values(options, n_options);
    char err[ERR_MAX];
    if (eval_run(&o, err) != 0) fatal("%s", err);
    return 0;
}

// ----------------------------------------------------------------------------
// sdxl verify unet: our UNet against a reference evaluation written by another implementation
// (scripts/check_full_size.py writes one from diffusers for the full-size architecture).

static float* read_ref(const SafeTensors* st, const char* name, size_t* n) {
    const SafeTensor* t = safetensors_find(st, name);
    if (!t) fatal("%s: missing tensor '%s'", st->path, name);
    *n = safetensor_numel(t);
    float* x = xmalloc(sizeof(float) * *n);
    convert_to_f32(x, t->data, t->dtype, *n);
    return x;
}

static int verify_main(int argc, char** argv) {
    const char* unet_dir = NULL;
    const char* ref_path = NULL;
    const char* backend = "cpu";
    const char* precision = "fp32";
    float rtol = 1e-3f, lora_scale = 1.0f;
    const char* lora = NULL;
    Option options[] = {
        {"--unet", OPT_STRING, &unet_dir, "a diffusers unet/ folder"},
        {"--lora", OPT_STRING, &lora, "a LoRA to merge into the UNet first (its UNet modules)"},
        {"--lora-scale", OPT_FLOAT, &lora_scale, "the LoRA's strength"},
        {"--precision", OPT_STRING, &precision, "UNet weights and activations: fp32, fp16 or bf16"},
        {"--ref", OPT_STRING, &ref_path, "safetensors with sample, t, ctx, text_embeds, time_ids and the expected out"},
        {"--backend", OPT_STRING, &backend, "cpu or cuda"},
        {"--rtol", OPT_FLOAT, &rtol, "pass when max |ours - ref| <= rtol * max |ref|"},
    };
    if (argc >= 3 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
        options_print_help(options, sizeof(options) / sizeof(options[0]), "sdxl verify unet --unet DIR --ref FILE [options]");
        return 0;
    }
    if (argc < 3 || strcmp(argv[2], "unet") != 0) fatal("usage: sdxl verify unet --unet DIR --ref FILE [--lora FILE]");
    if (options_parse(options, sizeof(options) / sizeof(options[0]), argc, argv, 3, "sdxl verify unet [options]")) return 0;
    if (!unet_dir || !ref_path) fatal("sdxl verify unet needs --unet and --ref");
    backend_select_by_name(backend);
    char err[ERR_MAX];
    // the reference and the LoRA are read before the (slow) UNet
    SafeTensors ref;
    if (safetensors_open(&ref, ref_path, err) != 0) fatal("%s", err);
    Lora l;
    if (lora && lora_load(&l, lora, err) != 0) fatal("%s", err);
    if (lora)
        for (int i = 0; i < l.count; i++)
            if (l.modules[i].model != LORA_UNET) fatal("%s: has text-encoder modules; verify unet takes UNet-only LoRAs", lora);
    double t0 = now_seconds();
    Unet u;
    if (unet_load(&u, unet_dir, NULL, (DType)precision_by_name(precision, "--precision"), err) != 0) fatal("%s", err);
    size_t params = 0;
    for (int i = 0; i < u.w.count; i++) params += u.w.params[i].numel;
    printf("loaded %s: %d tensors, %zu parameters, in %.1f s\n", unet_dir, u.w.count, params, now_seconds() - t0);
    if (lora) {
        if (lora_merge(&l, lora_scale, &u, NULL, NULL, err) != 0) fatal("%s", err);
        char desc[512];
        lora_describe(&l, desc, sizeof(desc));
        printf("merged %s at %g: %s\n", lora, lora_scale, desc);
        lora_free(&l);
    }
    const SafeTensor* s = safetensors_find(&ref, "sample");
    if (!s || s->rank != 4) fatal("%s: missing 4-D tensor 'sample'", ref_path);
    int N = (int)s->shape[0], h = (int)s->shape[2], w = (int)s->shape[3];
    size_t n, n_t, n_ctx, n_text, n_ids, n_want;
    float *sample = read_ref(&ref, "sample", &n), *t = read_ref(&ref, "t", &n_t), *ctx = read_ref(&ref, "ctx", &n_ctx);
    float *text = read_ref(&ref, "text_embeds", &n_text), *ids = read_ref(&ref, "time_ids", &n_ids);
    float* want = read_ref(&ref, "out", &n_want);
    int Lctx = (int)(n_ctx / ((size_t)N * u.cfg.cross_attention_dim));
    float *d_sample = device_malloc(sizeof(float) * n), *d_ctx = device_malloc(sizeof(float) * n_ctx);
    float *d_text = device_malloc(sizeof(float) * n_text), *d_out = device_malloc(sizeof(float) * n);
    copy_to_device(d_sample, sample, sizeof(float) * n);
    copy_to_device(d_ctx, ctx, sizeof(float) * n_ctx);
    copy_to_device(d_text, text, sizeof(float) * n_text);
    Arena act;
    arena_init(&act, "unet activations", unet_activation_bytes(&u.cfg, N, h, w, Lctx, u.w.dtype),
               backend_current() == BACKEND_CUDA);
    t0 = now_seconds();
    unet_forward(&u, d_out, d_sample, t, d_ctx, Lctx, d_text, ids, N, h, w, &act);
    device_synchronize();
    double dt = now_seconds() - t0;
    float* got = xmalloc(sizeof(float) * n);
    copy_to_host(got, d_out, sizeof(float) * n);
    double max_abs = 0, max_ref = 0, sum_abs = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        max_abs = d > max_abs ? d : max_abs;
        sum_abs += d;
        max_ref = fabs(want[i]) > max_ref ? fabs(want[i]) : max_ref;
    }
    int pass = max_abs <= rtol * max_ref && n == n_want;
    printf("unet forward, latent %dx%d, batch %d, %d text tokens: %.2f s on %s\n", h, w, N, Lctx, dt,
           backend_name(backend_current()));
    printf("max |ours - ref| %.3e, mean %.3e, max |ref| %.4f: relative to max |ref| %.2e (tolerance %.0e): %s\n", max_abs,
           sum_abs / n, max_ref, max_abs / max_ref, rtol, pass ? "PASS" : "FAIL");
    arena_report(&act);
    return pass ? 0 : 1;
}

// ----------------------------------------------------------------------------

static void usage(void) {
    printf("usage: sdxl <command> [options]\n\n"
           "commands:\n"
           "  generate       prompt(s) to storyboard thumbnails (sdxl generate --help)\n"
           "  train          fine-tune SDXL with LoRA on an imagefolder dataset (sdxl train --help)\n"
           "  eval           judge a folder of thumbnails: CLIP score, YOLOv8, BLIP, style, report\n"
           "  demo           the whole pipeline on a tiny random-weight SDXL, no download\n"
           "  info           what this binary was built with and the devices it sees\n"
           "  bench matmul   GEMM throughput in GFLOP/s (--backend cpu|cuda)\n"
           "  bench unet     seconds per full-size SDXL UNet evaluation (random weights)\n"
           "  bench generate a whole 25-step thumbnail on a random full-size SDXL\n"
           "  bench train    seconds per LoRA training step on a random full-size SDXL UNet\n"
           "  verify unet    our UNet against a reference evaluation (scripts/check_full_size.sh)\n\n"
           "`sdxl <command> --help` lists a command's options.\n");
}

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage();
        return argc < 2 ? 1 : 0;
    }
    if (strcmp(argv[1], "generate") == 0) return generate_main(argc, argv);
    if (strcmp(argv[1], "train") == 0) return train_main(argc, argv);
    if (strcmp(argv[1], "eval") == 0) return eval_main(argc, argv);
    if (strcmp(argv[1], "info") == 0) return info_main();
    if (strcmp(argv[1], "demo") == 0) return demo_main(argc, argv);
    if (strcmp(argv[1], "bench") == 0) return bench_main(argc, argv);
    if (strcmp(argv[1], "verify") == 0) return verify_main(argc, argv);
    fatal("unknown command '%s' (try sdxl --help)", argv[1]);
}
