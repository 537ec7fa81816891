// sample.c: the diffusers schedulers SDXL uses, as samplers over a model callback (see sample.h).
//
// It mirrors, in diffusers 0.42.1:
//   schedulers/scheduling_euler_discrete.py            EulerDiscreteScheduler
//   schedulers/scheduling_euler_ancestral_discrete.py  EulerAncestralDiscreteScheduler
//   schedulers/scheduling_ddim.py                      DDIMScheduler
//   schedulers/scheduling_dpmsolver_multistep.py       DPMSolverMultistepScheduler
//   pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py  the denoising loop and CFG
// and is tested against them by tests/test_sample.c (goldens from scripts/make_golden_sample.py).
//
// Precision follows diffusers value by value:
//   - the training tables are torch f32 tensors: betas from torch.linspace (emulated below),
//     alphas_cumprod from torch.cumprod (which accumulates in double), sigmas = ((1-ac)/ac)**0.5;
//   - set_timesteps works in numpy float64 (linspace, arange, interp, the Karras formula) and
//     stores float32, so we compute in double and round once where it does;
//   - step() works on 0-dim f32 tensors for its scalars (sigma**2, sqrt, log, exp), so we use
//     float arithmetic in the same order, and the ops.h dispatchers for the latent.
// One rule differs by device in torch itself: `latent / scalar` is a true division on the CPU,
// but CUDA multiplies by the f32 reciprocal of a CPU scalar (ATen/native/cuda/
// BinaryDivTrueKernel.cu: "compute a * reciprocal(b)"). The schedulers keep their sigmas on the
// CPU, so diffusers on a GPU computes `x * (1/sigma)`. We do the same with scale_forward (ops.h
// has no divide): the latent arithmetic of SDXL on CUDA, and within an ulp per division of
// diffusers on the CPU.
// The other difference is in torch's CPU math functions, which the schedulers apply to their
// 0-dim f32 scalars (and to the sigma table): torch.sqrt (and ** 0.5) is MKL's vsSqrt, 1 ulp off
// the correctly rounded root for about a fifth of inputs, and torch.log/torch.exp are 1-ulp
// accurate (MKL/SLEEF). Their exact bits cannot be reproduced outside MKL, so we use correctly
// rounded sqrtf, log and exp: sigmas and coefficients then agree with diffusers to an ulp, and
// exactly with diffusers run with correctly rounded math (which tests/test_sample.c checks).
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"
#include "ops.h"
#include "safetensors.h" // json_read_file

// ----------------------------------------------------------------------------
// Configuration

void scheduler_config_sdxl(SchedulerConfig* c) {
    c->num_train_timesteps = 1000;
    c->beta_start = 0.00085;
    c->beta_end = 0.012;
    c->beta_schedule = BETA_SCALED_LINEAR;
    c->prediction_type = PREDICT_EPSILON;
    c->timestep_spacing = SPACING_LEADING;
    c->steps_offset = 1;
    c->set_alpha_to_one = 0;
    c->clip_sample = 0;
}

// The defaults of the diffusers scheduler classes, for keys a config file leaves out. Where the
// classes disagree (DDIM's timestep_spacing, set_alpha_to_one, clip_sample) the field says
// "absent" and schedule_init resolves it for the sampler.
static void scheduler_config_diffusers_defaults(SchedulerConfig* c) {
    c->num_train_timesteps = 1000;
    c->beta_start = 0.0001;
    c->beta_end = 0.02;
    c->beta_schedule = BETA_LINEAR;
    c->prediction_type = PREDICT_EPSILON;
    c->timestep_spacing = SPACING_DEFAULT;
    c->steps_offset = 0;
    c->set_alpha_to_one = -1;
    c->clip_sample = -1;
}

// A string-valued key: 1 and *out set when present, 0 when absent, -1 (err set) when not a string.
static int config_string(const JsonValue* root, const char* key, const char** out, const char* name, char* err) {
    const JsonValue* v = json_get(root, key);
    if (!v) return 0;
    if (v->type != JSON_STRING) return set_error(err, "%s: \"%s\" must be a string, not %s", name, key, json_type_name(v->type));
    *out = v->string;
    return 1;
}

static int config_bool(const JsonValue* root, const char* key, int* out, const char* name, char* err) {
    const JsonValue* v = json_get(root, key);
    if (!v) return 0;
    if (!json_get_bool(root, key, out)) return set_error(err, "%s: \"%s\" must be true or false, not %s", name, key, json_type_name(v->type));
    return 1;
}

static int config_beta(const JsonValue* root, const char* key, double* out, const char* name, char* err) {
    const JsonValue* v = json_get(root, key);
    if (!v) return 0;
    double d;
    if (!json_get_number(root, key, &d)) return set_error(err, "%s: \"%s\" must be a number", name, key);
    if (!(d >= 0.0 && d < 1.0)) return set_error(err, "%s: \"%s\" is %g, outside [0, 1)", name, key, d);
    *out = d;
    return 1;
}

// Keys whose non-default values change the schedule in ways sample.c does not implement: a true
// boolean, or a string other than the expected one, is rejected by name.
static int config_reject_unsupported(const JsonValue* root, const char* name, char* err) {
    static const char* true_flags[] = {"rescale_betas_zero_snr", "thresholding", "use_exponential_sigmas",
                                       "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas", "use_dynamic_shifting"};
    for (size_t i = 0; i < sizeof(true_flags) / sizeof(true_flags[0]); i++) {
        const JsonValue* v = json_get(root, true_flags[i]);
        if (v && v->type == JSON_TRUE) return set_error(err, "%s: \"%s\": true is not supported", name, true_flags[i]);
    }
    static const struct { const char* key; const char* only; } strings[] = {
        {"interpolation_type", "linear"}, {"final_sigmas_type", "zero"}, {"timestep_type", "discrete"},
    };
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        const char* s = NULL;
        if (config_string(root, strings[i].key, &s, name, err) < 0) return -1;
        if (s && strcmp(s, strings[i].only) != 0)
            return set_error(err, "%s: \"%s\" \"%s\" is not supported (only \"%s\")", name, strings[i].key, s, strings[i].only);
    }
    const JsonValue* tb = json_get(root, "trained_betas");
    if (tb && tb->type != JSON_NULL) return set_error(err, "%s: \"trained_betas\" is not supported (only null)", name);
    return 0;
}

static int config_from_json(SchedulerConfig* c, const JsonValue* root, const char* name, char* err) {
    if (root->type != JSON_OBJECT) return set_error(err, "%s: expected a JSON object, not %s", name, json_type_name(root->type));
    scheduler_config_diffusers_defaults(c);
    if (config_reject_unsupported(root, name, err) < 0) return -1;
    if (json_config_int_or(root, "num_train_timesteps", 2, SCHEDULE_MAX_TRAIN_STEPS, c->num_train_timesteps,
                           &c->num_train_timesteps, name, err) < 0)
        return -1;
    if (config_beta(root, "beta_start", &c->beta_start, name, err) < 0) return -1;
    if (config_beta(root, "beta_end", &c->beta_end, name, err) < 0) return -1;
    if (json_config_int_or(root, "steps_offset", 0, c->num_train_timesteps - 1, c->steps_offset, &c->steps_offset, name, err) < 0)
        return -1;
    if (config_bool(root, "set_alpha_to_one", &c->set_alpha_to_one, name, err) < 0) return -1;
    if (config_bool(root, "clip_sample", &c->clip_sample, name, err) < 0) return -1;

    const char* s = NULL;
    int rc = config_string(root, "beta_schedule", &s, name, err);
    if (rc < 0) return -1;
    if (rc == 1) {
        if (strcmp(s, "scaled_linear") == 0) c->beta_schedule = BETA_SCALED_LINEAR;
        else if (strcmp(s, "linear") == 0) c->beta_schedule = BETA_LINEAR;
        else return set_error(err, "%s: \"beta_schedule\" \"%s\" is not supported (scaled_linear or linear)", name, s);
    }
    if ((rc = config_string(root, "prediction_type", &s, name, err)) < 0) return -1;
    if (rc == 1) {
        if (strcmp(s, "epsilon") == 0) c->prediction_type = PREDICT_EPSILON;
        else if (strcmp(s, "v_prediction") == 0) c->prediction_type = PREDICT_V;
        else return set_error(err, "%s: \"prediction_type\" \"%s\" is not supported (epsilon or v_prediction)", name, s);
    }
    if ((rc = config_string(root, "timestep_spacing", &s, name, err)) < 0) return -1;
    if (rc == 1) {
        if (strcmp(s, "leading") == 0) c->timestep_spacing = SPACING_LEADING;
        else if (strcmp(s, "trailing") == 0) c->timestep_spacing = SPACING_TRAILING;
        else if (strcmp(s, "linspace") == 0) c->timestep_spacing = SPACING_LINSPACE;
        else return set_error(err, "%s: \"timestep_spacing\" \"%s\" is not supported (leading, trailing or linspace)", name, s);
    }
    return 0;
}

int scheduler_config_parse(SchedulerConfig* c, const char* json, size_t len, const char* name, char* err) {
    JsonDoc doc;
    char jerr[ERR_MAX];
    if (json_parse(&doc, json, len, jerr) != 0) return set_error(err, "%s: invalid JSON: %s", name, jerr);
    int rc = config_from_json(c, &doc.root, name, err);
    json_free(&doc);
    return rc;
}

int scheduler_config_read(SchedulerConfig* c, const char* path, char* err) {
    JsonDoc doc;
    if (json_read_file(&doc, path, err) != 0) return -1;
    int rc = config_from_json(c, &doc.root, path, err);
    json_free(&doc);
    return rc;
}

// ----------------------------------------------------------------------------
// Tables

void schedule_tables(const SchedulerConfig* c, float* betas, float* alphas_cumprod, float* sigma_table) {
    int T = c->num_train_timesteps;
    // "scaled_linear": torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    // "linear":        torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    // (Python's ** is C pow; the endpoints are rounded to f32 before torch computes anything.)
    float start = (float)(c->beta_schedule == BETA_SCALED_LINEAR ? pow(c->beta_start, 0.5) : c->beta_start);
    float end = (float)(c->beta_schedule == BETA_SCALED_LINEAR ? pow(c->beta_end, 0.5) : c->beta_end);
    // torch's CPU linspace kernel (ATen/native/cpu/RangeFactoriesKernel.cpp) in f32: step =
    // (end - start) / (T - 1); the first half counts up from start, the second down from end:
    // `start + step * i` and `end - step * (T - i - 1)`. Its AVX2/AVX512 builds (what x86 wheels
    // run) contract each into one FMA, so we call fmaf; the result is bit-exact with torch there.
    // torch's DEFAULT (no-AVX2) build rounds the product separately and differs by an ulp in
    // about a tenth of the values.
    float step = (end - start) / (float)(T - 1);
    for (int i = 0; i < T; i++) {
        float b = i < T / 2 ? fmaf(step, (float)i, start) : fmaf(-step, (float)(T - i - 1), end);
        betas[i] = c->beta_schedule == BETA_SCALED_LINEAR ? b * b : b;
    }
    // alphas = 1.0 - betas; alphas_cumprod = torch.cumprod(alphas, dim=0): torch's CPU cumprod
    // accumulates in double and rounds each output to f32 (a float accumulator is not bit-exact).
    double acc = 1.0;
    for (int i = 0; i < T; i++) {
        acc *= (double)(1.0f - betas[i]);
        alphas_cumprod[i] = (float)acc;
    }
    // sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, elementwise in f32 (torch's MKL
    // sqrt is 1 ulp above or below sqrtf for 190 of SDXL's 1000 values)
    for (int i = 0; i < T; i++) sigma_table[i] = sqrtf((1.0f - alphas_cumprod[i]) / alphas_cumprod[i]);
}

// ----------------------------------------------------------------------------
// Timesteps and sigmas (set_timesteps)

const char* sampler_name(SamplerKind k) {
    switch (k) {
    case SAMPLER_EULER: return "euler";
    case SAMPLER_EULER_ANCESTRAL: return "euler_a";
    case SAMPLER_DDIM: return "ddim";
    case SAMPLER_DPMPP_2M_KARRAS: return "dpmpp_2m_karras";
    default: return "unknown";
    }
}

int sampler_from_name(const char* name, SamplerKind* k) {
    for (int i = 0; i < SAMPLER_COUNT; i++)
        if (strcmp(name, sampler_name((SamplerKind)i)) == 0) {
            *k = (SamplerKind)i;
            return 0;
        }
    return -1;
}

// numpy.linspace(0, stop, n) in float64: i * (stop / (n - 1)), the last value exactly stop, and
// [0] for n == 1.
static double np_linspace_at(double stop, int n, int i) {
    if (n == 1) return 0.0;
    if (i == n - 1) return stop;
    return (double)i * (stop / (double)(n - 1));
}

// The "trailing" spacing: numpy.arange(T, 0, -T/n).round(). numpy's arange makes
// ceil(-T / (-T/n)) values: buffer[0] = T, buffer[1] = T + step, then T + i * (buffer[1] - T).
// For some n (61, 103, 121, ...) the length rounds up to n + 1, and diffusers then runs n + 1
// steps, the last at timestep -1; we refuse those step counts rather than copy that.
static int trailing_timesteps(double* out, int T, int n, char* err) {
    double step = -((double)T / (double)n);
    double len = ceil((0.0 - (double)T) / step);
    if (len != (double)n)
        return set_error(err, "timestep_spacing \"trailing\" with %d steps: diffusers makes %.0f timesteps "
                              "(numpy.arange rounding); choose another step count", n, len);
    double second = (double)T + step, delta = second - (double)T;
    for (int i = 0; i < n; i++) {
        double v = i == 0 ? (double)T : i == 1 ? second : (double)T + (double)i * delta;
        out[i] = rint(v); // numpy's round is half-to-even, as rint in the default rounding mode
    }
    return 0;
}

// numpy.interp(x, arange(T), table) for one x, in double (numpy's arr_interp).
static double np_interp_table(double x, const float* table, int T) {
    if (x <= 0.0) return table[0];
    if (x >= (double)(T - 1)) return table[T - 1];
    int j = (int)floor(x);
    if ((double)j == x) return table[j];
    double slope = ((double)table[j + 1] - (double)table[j]) / 1.0; // dx[j+1] - dx[j] = 1
    return slope * (x - (double)j) + (double)table[j];
}

// _sigma_to_t(sigma, log_sigmas): the fractional timestep whose table sigma is `sigma`,
// interpolating linearly in log sigma. log_sigmas is np.log of the f32 table (f32 values); the
// rest is float64.
static double sigma_to_t(double sigma, const float* log_sigmas, int T) {
    double log_sigma = log(fmax(sigma, 1e-10));
    // low_idx = np.cumsum(dists >= 0).argmax(): the last index with log_sigmas[i] <= log_sigma
    // (0 when there is none), clipped to T - 2
    int low = 0;
    for (int i = 0; i < T; i++)
        if (log_sigma - (double)log_sigmas[i] >= 0.0) low = i;
    if (low > T - 2) low = T - 2;
    int high = low + 1;
    double lo = log_sigmas[low], hi = log_sigmas[high];
    double w = (lo - log_sigma) / (lo - hi);
    w = w < 0.0 ? 0.0 : w > 1.0 ? 1.0 : w;
    return (1.0 - w) * (double)low + w * (double)high;
}

// Euler and Euler ancestral: timesteps by spacing, sigmas interpolated in the table.
static int schedule_euler(Schedule* s, int steps, const SchedulerConfig* c, TimestepSpacing spacing, char* err) {
    int T = c->num_train_timesteps;
    double t[SCHEDULE_MAX_TRAIN_STEPS];
    if (spacing == SPACING_LINSPACE) {
        // np.linspace(0, T - 1, steps, dtype=np.float32)[::-1]
        for (int i = 0; i < steps; i++) t[i] = (float)np_linspace_at(T - 1, steps, steps - 1 - i);
    } else if (spacing == SPACING_LEADING) {
        // (np.arange(0, steps) * (T // steps)).round()[::-1].astype(np.float32) + steps_offset
        int ratio = T / steps;
        for (int i = 0; i < steps; i++) t[i] = (double)((steps - 1 - i) * ratio + c->steps_offset);
    } else {
        // np.arange(T, 0, -T / steps).round().astype(np.float32) - 1
        if (trailing_timesteps(t, T, steps, err) != 0) return -1;
        for (int i = 0; i < steps; i++) t[i] = (float)t[i] - 1.0f;
    }
    float max_sigma = 0.0f;
    for (int i = 0; i < steps; i++) {
        s->timesteps[i] = (float)t[i];
        // np.interp(timesteps, np.arange(0, T), sigmas), then .astype(np.float32)
        s->sigmas[i] = (float)np_interp_table(s->timesteps[i], s->sigma_table, T);
        if (s->sigmas[i] > max_sigma) max_sigma = s->sigmas[i];
    }
    s->sigmas[steps] = 0.0f; // final_sigmas_type "zero"
    // init_noise_sigma: max(sigmas) for "linspace"/"trailing", (max**2 + 1) ** 0.5 for "leading"
    s->init_noise_sigma = spacing == SPACING_LEADING ? sqrtf(max_sigma * max_sigma + 1.0f) : max_sigma;
    return 0;
}

static int schedule_ddim(Schedule* s, int steps, const SchedulerConfig* c, TimestepSpacing spacing, char* err) {
    int T = c->num_train_timesteps;
    if (c->clip_sample != 0)
        return set_error(err, "ddim: clip_sample %s is not supported (set \"clip_sample\": false)",
                         c->clip_sample < 0 ? "(DDIMScheduler's default when the key is absent)" : "true");
    double t[SCHEDULE_MAX_TRAIN_STEPS];
    if (spacing == SPACING_LINSPACE) {
        // np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)
        for (int i = 0; i < steps; i++) t[i] = rint(np_linspace_at(T - 1, steps, steps - 1 - i));
    } else if (spacing == SPACING_LEADING) {
        int ratio = T / steps;
        for (int i = 0; i < steps; i++) t[i] = (double)((steps - 1 - i) * ratio + c->steps_offset);
    } else {
        if (trailing_timesteps(t, T, steps, err) != 0) return -1;
        for (int i = 0; i < steps; i++) t[i] -= 1.0;
    }
    for (int i = 0; i < steps; i++) {
        // step() indexes alphas_cumprod[timestep]; diffusers raises IndexError past the table
        // (e.g. "leading" with steps_offset 1 and 1000 steps reaches t = 1000)
        if (t[i] < 0.0 || t[i] > (double)(T - 1))
            return set_error(err, "ddim: %d steps give timestep %.0f, outside 0..%d (diffusers fails here too)", steps,
                             t[i], T - 1);
        s->timesteps[i] = (float)t[i];
        s->sigmas[i] = s->sigma_table[(int)t[i]];
    }
    s->sigmas[steps] = 0.0f;
    s->init_noise_sigma = 1.0f;
    s->ddim_step_ratio = T / steps; // prev_timestep = timestep - T // num_inference_steps
    // set_alpha_to_one: torch.tensor(1.0), else alphas_cumprod[0]; DDIMScheduler's default is True
    s->final_alpha_cumprod = c->set_alpha_to_one != 0 ? 1.0f : s->alphas_cumprod[0];
    return 0;
}

// DPM-Solver++ with use_karras_sigmas: the Karras et al. (2022) schedule, eq. (5), rho = 7,
// between the table's smallest and largest sigma; timesteps are the rounded _sigma_to_t of each.
static void schedule_karras(Schedule* s, int steps, const SchedulerConfig* c) {
    int T = c->num_train_timesteps;
    float log_sigmas[SCHEDULE_MAX_TRAIN_STEPS];
    // np.log of the float32 table (numpy's SIMD logf, not always correctly rounded; it only decides
    // the rounding of the timesteps below, which the goldens check at up to 1000 steps)
    for (int i = 0; i < T; i++) log_sigmas[i] = logf(s->sigma_table[i]);
    const double rho = 7.0; // "7.0 is the value used in the paper"
    double sigma_min = s->sigma_table[0], sigma_max = s->sigma_table[T - 1];
    double min_inv_rho = pow(sigma_min, 1.0 / rho), max_inv_rho = pow(sigma_max, 1.0 / rho);
    for (int i = 0; i < steps; i++) {
        // sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho, ramp = np.linspace(0, 1, steps)
        double ramp = np_linspace_at(1.0, steps, i);
        double sigma = pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho);
        // timesteps = np.array([_sigma_to_t(sigma, log_sigmas) ...]).round(), from the float64 sigma
        s->timesteps[i] = (float)rint(sigma_to_t(sigma, log_sigmas, T));
        s->sigmas[i] = (float)sigma;
    }
    s->sigmas[steps] = 0.0f; // final_sigmas_type "zero"
    s->init_noise_sigma = 1.0f;
}

int schedule_init(Schedule* s, SamplerKind kind, int steps, const SchedulerConfig* c, char* err) {
    memset(s, 0, sizeof(*s));
    if ((int)kind < 0 || kind >= SAMPLER_COUNT) return set_error(err, "unknown sampler kind %d", (int)kind);
    int T = c->num_train_timesteps;
    if (T < 2 || T > SCHEDULE_MAX_TRAIN_STEPS)
        return set_error(err, "num_train_timesteps %d is outside 2..%d", T, SCHEDULE_MAX_TRAIN_STEPS);
    if (steps < 1 || steps > T) return set_error(err, "%s: steps must be 1..%d, got %d", sampler_name(kind), T, steps);
    s->kind = kind;
    s->steps = steps;
    s->prediction_type = c->prediction_type;
    s->num_train_timesteps = T;
    schedule_tables(c, s->betas, s->alphas_cumprod, s->sigma_table);
    // An absent timestep_spacing takes the class default: "leading" for DDIMScheduler,
    // "linspace" for the Euler and DPM-Solver classes.
    TimestepSpacing spacing = c->timestep_spacing;
    if (spacing == SPACING_DEFAULT) spacing = kind == SAMPLER_DDIM ? SPACING_LEADING : SPACING_LINSPACE;
    switch (kind) {
    case SAMPLER_EULER:
    case SAMPLER_EULER_ANCESTRAL: return schedule_euler(s, steps, c, spacing, err);
    case SAMPLER_DDIM: return schedule_ddim(s, steps, c, spacing, err);
    case SAMPLER_DPMPP_2M_KARRAS: schedule_karras(s, steps, c); return 0; // Karras ignores the spacing
    default: return set_error(err, "unknown sampler kind %d", (int)kind);
    }
}

// ----------------------------------------------------------------------------
// Samplers

size_t sample_scratch_bytes(size_t n) {
    size_t one = (n * sizeof(float) + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    return 4 * one; // DPM-Solver++ 2M holds the most: model output, two x0 predictions, a temporary
}

static void require_kind(const Schedule* s, SamplerKind kind, const char* fn) {
    if (s->kind != kind) fatal("%s: the schedule was made for %s", fn, sampler_name(s->kind));
}

static void step_done(const Schedule* s, void* ctx, int i, const float* x, size_t n) {
    if (s->on_step) s->on_step(ctx, i + 1, s->steps, x, n);
}

// The Euler schedulers' x0 prediction at noise level sigma, into x0 (may alias nothing).
static void euler_predict_x0(float* x0, const Schedule* s, const float* x, const float* model_output, float sigma,
                             size_t n) {
    if (s->prediction_type == PREDICT_EPSILON) {
        // pred_original_sample = sample - sigma_hat * model_output
        axpby_forward(x0, 1.0f, x, -sigma, model_output, n);
    } else {
        // pred_original_sample = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        float c_out = -sigma / sqrtf(sigma * sigma + 1.0f);
        float c_skip = 1.0f / (sigma * sigma + 1.0f); // CUDA's reciprocal for `sample / scalar`
        axpby_forward(x0, c_out, model_output, c_skip, x, n);
    }
}

void sample_euler(const Schedule* s, float* x, size_t n, ModelFn model, void* ctx, Arena* scratch) {
    require_kind(s, SAMPLER_EULER, "sample_euler");
    size_t mark = arena_mark(scratch);
    float* model_in = arena_floats(scratch, n, "euler model input");
    float* out = arena_floats(scratch, n, "euler model output");
    float* d = arena_floats(scratch, n, "euler derivative");
    for (int i = 0; i < s->steps; i++) {
        float sigma = s->sigmas[i];
        // scale_model_input: sample = sample / ((sigma**2 + 1) ** 0.5)
        scale_forward(model_in, x, 1.0f / sqrtf(sigma * sigma + 1.0f), n, DT_F32);
        model(ctx, model_in, s->timesteps[i], i, out);
        // s_churn = 0, so gamma = 0 and sigma_hat = sigma * (gamma + 1) = sigma
        euler_predict_x0(d, s, x, out, sigma, n);
        // derivative = (sample - pred_original_sample) / sigma_hat
        axpby_forward(d, 1.0f, x, -1.0f, d, n);
        scale_forward(d, d, 1.0f / sigma, n, DT_F32);
        // dt = self.sigmas[self.step_index + 1] - sigma_hat;  prev_sample = sample + derivative * dt
        float dt = s->sigmas[i + 1] - sigma;
        axpby_forward(x, 1.0f, x, dt, d, n);
        step_done(s, ctx, i, x, n);
    }
    arena_release(scratch, mark);
}

void sample_euler_ancestral(const Schedule* s, float* x, size_t n, ModelFn model, void* ctx, TorchGenerator* noise,
                            Arena* scratch) {
    require_kind(s, SAMPLER_EULER_ANCESTRAL, "sample_euler_ancestral");
    if (!noise) fatal("sample_euler_ancestral: needs the generator the initial latents came from");
    size_t mark = arena_mark(scratch);
    float* model_in = arena_floats(scratch, n, "euler_a model input");
    float* out = arena_floats(scratch, n, "euler_a model output");
    float* d = arena_floats(scratch, n, "euler_a derivative and noise");
    float* noise_host = xmalloc(n * sizeof(float));
    for (int i = 0; i < s->steps; i++) {
        float sigma = s->sigmas[i];
        // scale_model_input: sample / ((sigma**2 + 1) ** 0.5)
        scale_forward(model_in, x, 1.0f / sqrtf(sigma * sigma + 1.0f), n, DT_F32);
        model(ctx, model_in, s->timesteps[i], i, out);
        euler_predict_x0(d, s, x, out, sigma, n);
        float sigma_from = sigma, sigma_to = s->sigmas[i + 1];
        // sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        float sigma_up = sqrtf(sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) /
                               (sigma_from * sigma_from));
        // sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        float sigma_down = sqrtf(sigma_to * sigma_to - sigma_up * sigma_up);
        // derivative = (sample - pred_original_sample) / sigma
        axpby_forward(d, 1.0f, x, -1.0f, d, n);
        scale_forward(d, d, 1.0f / sigma, n, DT_F32);
        // dt = sigma_down - sigma;  prev_sample = sample + derivative * dt
        axpby_forward(x, 1.0f, x, sigma_down - sigma, d, n);
        // noise = randn_tensor(model_output.shape, generator=generator): a CPU generator draws on
        // the CPU and the tensor moves to the device;  prev_sample = prev_sample + noise * sigma_up
        torch_randn(noise, noise_host, n);
        copy_to_device(d, noise_host, n * sizeof(float));
        axpby_forward(x, 1.0f, x, sigma_up, d, n);
        step_done(s, ctx, i, x, n);
    }
    free(noise_host);
    arena_release(scratch, mark);
}

// DDIM (Song et al. 2021), eta = 0: the deterministic update of eq. (12).
void sample_ddim(const Schedule* s, float* x, size_t n, ModelFn model, void* ctx, Arena* scratch) {
    require_kind(s, SAMPLER_DDIM, "sample_ddim");
    size_t mark = arena_mark(scratch);
    float* out = arena_floats(scratch, n, "ddim model output");
    float* x0 = arena_floats(scratch, n, "ddim x0");
    for (int i = 0; i < s->steps; i++) {
        int t = (int)s->timesteps[i];
        model(ctx, x, s->timesteps[i], i, out); // scale_model_input is the identity
        // prev_timestep = timestep - num_train_timesteps // num_inference_steps
        int prev_t = t - s->ddim_step_ratio;
        float alpha_prod_t = s->alphas_cumprod[t];
        float alpha_prod_t_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
        float beta_prod_t = 1.0f - alpha_prod_t;
        float* pred_epsilon = out;
        if (s->prediction_type == PREDICT_EPSILON) {
            // pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
            axpby_forward(x0, 1.0f, x, -sqrtf(beta_prod_t), out, n);
            scale_forward(x0, x0, 1.0f / sqrtf(alpha_prod_t), n, DT_F32);
        } else {
            // pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
            // pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
            axpby_forward(x0, sqrtf(alpha_prod_t), x, -sqrtf(beta_prod_t), out, n);
            axpby_forward(pred_epsilon, sqrtf(alpha_prod_t), out, sqrtf(beta_prod_t), x, n);
        }
        // variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)  (eq. 16)
        // std_dev_t = eta * variance ** (0.5), eta = 0
        float variance = ((1.0f - alpha_prod_t_prev) / beta_prod_t) * (1.0f - alpha_prod_t / alpha_prod_t_prev);
        float std_dev_t = 0.0f * sqrtf(variance);
        // pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * pred_epsilon
        // prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction
        float direction = sqrtf(1.0f - alpha_prod_t_prev - std_dev_t * std_dev_t);
        axpby_forward(x, sqrtf(alpha_prod_t_prev), x0, direction, pred_epsilon, n);
        step_done(s, ctx, i, x, n);
    }
    arena_release(scratch, mark);
}

// torch.log and torch.exp of an f32 value, correctly rounded (libm's double functions, rounded once;
// torch's own are MKL/SLEEF's 1-ulp-accurate versions, see the top of this file).
static float log_f32(float x) { return (float)log((double)x); }
static float exp_f32(float x) { return (float)exp((double)x); }

// _sigma_to_alpha_sigma_t: alpha_t = 1 / ((sigma**2 + 1) ** 0.5), sigma_t = sigma * alpha_t, and
// lambda_t = torch.log(alpha_t) - torch.log(sigma_t) (+inf at sigma 0).
typedef struct { float alpha, sigma, lambda; } DpmPoint;
static DpmPoint dpm_point(float sigma) {
    DpmPoint p;
    p.alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    p.sigma = sigma * p.alpha;
    p.lambda = log_f32(p.alpha) - log_f32(p.sigma);
    return p;
}

// DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) with the midpoint solver type, on the Karras
// sigmas: first order at the first step and at the last (lower_order_final with
// final_sigmas_type "zero"), second order in between.
void sample_dpmpp_2m_karras(const Schedule* s, float* x, size_t n, ModelFn model, void* ctx, Arena* scratch) {
    require_kind(s, SAMPLER_DPMPP_2M_KARRAS, "sample_dpmpp_2m_karras");
    size_t mark = arena_mark(scratch);
    float* out = arena_floats(scratch, n, "dpm++ model output");
    float* m0 = arena_floats(scratch, n, "dpm++ x0");          // model_outputs[-1]
    float* m1 = arena_floats(scratch, n, "dpm++ previous x0"); // model_outputs[-2]
    float* tmp = arena_floats(scratch, n, "dpm++ partial sum");
    for (int i = 0; i < s->steps; i++) {
        model(ctx, x, s->timesteps[i], i, out); // scale_model_input is the identity
        // convert_model_output (dpmsolver++): the x0 prediction
        DpmPoint s0 = dpm_point(s->sigmas[i]);
        if (s->prediction_type == PREDICT_EPSILON) {
            // x0_pred = (sample - sigma_t * model_output) / alpha_t
            axpby_forward(m0, 1.0f, x, -s0.sigma, out, n);
            scale_forward(m0, m0, 1.0f / s0.alpha, n, DT_F32);
        } else {
            // x0_pred = alpha_t * sample - sigma_t * model_output
            axpby_forward(m0, s0.alpha, x, -s0.sigma, out, n);
        }
        DpmPoint t = dpm_point(s->sigmas[i + 1]);
        float h = t.lambda - s0.lambda;                     // h = lambda_t - lambda_s0
        float coef_x = t.sigma / s0.sigma;                  // (sigma_t / sigma_s0)
        float coef_d = t.alpha * (exp_f32(-h) - 1.0f);      // (alpha_t * (torch.exp(-h) - 1.0))
        if (i == 0 || i == s->steps - 1) {
            // dpm_solver_first_order_update:
            // x_t = (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * model_output
            // (at sigma_t = 0: alpha_t = 1, lambda_t = inf, exp(-h) = 0, so x_t = x0_pred)
            axpby_forward(x, coef_x, x, -coef_d, m0, n);
        } else {
            // multistep_dpm_solver_second_order_update, midpoint:
            DpmPoint s1 = dpm_point(s->sigmas[i - 1]);
            float h_0 = s0.lambda - s1.lambda; // h_0 = lambda_s0 - lambda_s1
            float r0 = h_0 / h;                // r0 = h_0 / h
            // D0, D1 = m0, (1.0 / r0) * (m0 - m1)
            axpby_forward(out, 1.0f, m0, -1.0f, m1, n);
            scale_forward(out, out, 1.0f / r0, n, DT_F32);
            // x_t = (sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * D0
            //       - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1
            axpby_forward(tmp, coef_x, x, -coef_d, m0, n);
            axpby_forward(x, 1.0f, tmp, -(0.5f * coef_d), out, n);
        }
        // self.model_outputs shifts: this step's x0 becomes the previous one
        float* swap = m1;
        m1 = m0;
        m0 = swap;
        step_done(s, ctx, i, x, n);
    }
    arena_release(scratch, mark);
}

void sample(const Schedule* s, float* x, size_t n, ModelFn model, void* ctx, TorchGenerator* noise, Arena* scratch) {
    switch (s->kind) {
    case SAMPLER_EULER: sample_euler(s, x, n, model, ctx, scratch); break;
    case SAMPLER_EULER_ANCESTRAL: sample_euler_ancestral(s, x, n, model, ctx, noise, scratch); break;
    case SAMPLER_DDIM: sample_ddim(s, x, n, model, ctx, scratch); break;
    case SAMPLER_DPMPP_2M_KARRAS: sample_dpmpp_2m_karras(s, x, n, model, ctx, scratch); break;
    default: fatal("sample: unknown sampler kind %d", (int)s->kind);
    }
}

// ----------------------------------------------------------------------------
// Classifier-free guidance

void cfg_combine(float* out, const float* eps_uncond, const float* eps_cond, float scale, size_t n) {
    if (out == eps_uncond) fatal("cfg_combine: out must not be eps_uncond");
    // noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
    axpby_forward(out, 1.0f, eps_cond, -1.0f, eps_uncond, n);
    axpby_forward(out, 1.0f, eps_uncond, scale, out, n);
}
