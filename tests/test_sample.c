// tests/test_sample.c: sample.c against the diffusers schedulers themselves
// (tests/golden/sample.safetensors, made by scripts/make_golden_sample.py), and the config reader.
//
// What must be bit-exact, and why it can be:
//   - betas and alphas_cumprod: torch's f32 linspace (one FMA per element) and cumprod (a double
//     accumulator) are emulated;
//   - every schedule's timesteps (integers, or numpy float64 rounded once to f32);
//   - sigma tables, schedule sigmas, init_noise_sigma, and the sampling trajectories of a fake
//     model (eps = a(t) * x_in + c, the same roundings in C and torch) through the real
//     scheduler.step loops, including euler_a's per-step noise from the torch CPU generator, all
//     as diffusers computes them under the golden script's ExactScalarMath: torch's CUDA rule for
//     dividing a latent by a CPU scalar (multiply by the f32 reciprocal, which sample.c does) and
//     correctly rounded sqrt/log/exp (torch's CPU ones are MKL's, 1 ulp off at times).
// Within a tolerance, stated at each check: the same values from diffusers as it runs on the CPU.
// The trajectories run on the current backend (`tests/run_tests --backend cuda sample` on a GPU:
// axpby and scale round identically there, so the expectations do not change).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../ops.h"
#include "../sample.h"
#include "check.h"

// A scheduler_config.json as written for SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0).
static const char* SDXL_SCHEDULER_JSON =
    "{\n"
    "  \"_class_name\": \"EulerDiscreteScheduler\",\n"
    "  \"_diffusers_version\": \"0.19.0.dev0\",\n"
    "  \"beta_end\": 0.012,\n"
    "  \"beta_schedule\": \"scaled_linear\",\n"
    "  \"beta_start\": 0.00085,\n"
    "  \"clip_sample\": false,\n"
    "  \"interpolation_type\": \"linear\",\n"
    "  \"num_train_timesteps\": 1000,\n"
    "  \"prediction_type\": \"epsilon\",\n"
    "  \"sample_max_value\": 1.0,\n"
    "  \"set_alpha_to_one\": false,\n"
    "  \"skip_prk_steps\": true,\n"
    "  \"steps_offset\": 1,\n"
    "  \"timestep_spacing\": \"leading\",\n"
    "  \"trained_betas\": null,\n"
    "  \"use_karras_sigmas\": false\n"
    "}\n";

static int config_equal(const SchedulerConfig* a, const SchedulerConfig* b) {
    return a->num_train_timesteps == b->num_train_timesteps && a->beta_start == b->beta_start &&
           a->beta_end == b->beta_end && a->beta_schedule == b->beta_schedule &&
           a->prediction_type == b->prediction_type && a->timestep_spacing == b->timestep_spacing &&
           a->steps_offset == b->steps_offset && a->set_alpha_to_one == b->set_alpha_to_one &&
           a->clip_sample == b->clip_sample;
}

static int one_line(const char* err) { return err[0] != 0 && strchr(err, '\n') == NULL; }

static int spacing_from_name(const char* name, TimestepSpacing* sp) {
    if (strcmp(name, "leading") == 0) *sp = SPACING_LEADING;
    else if (strcmp(name, "trailing") == 0) *sp = SPACING_TRAILING;
    else if (strcmp(name, "linspace") == 0) *sp = SPACING_LINSPACE;
    else return -1;
    return 0;
}

// ----------------------------------------------------------------------------
// Tables

static void test_sample_tables_match_diffusers(void) {
    SafeTensors st;
    if (!golden_open(&st, "sample.safetensors")) return;
    SchedulerConfig c;
    scheduler_config_sdxl(&c);
    static float betas[1000], ac[1000], sig[1000];
    schedule_tables(&c, betas, ac, sig);
    size_t n;
    float* want;
    // torch.linspace(f32) emulated with its per-element FMA: bit-exact with torch's AVX2/AVX512 build
    if ((want = golden_f32(&st, "table.betas", &n))) {
        check_true(n == 1000, "table.betas has 1000 values");
        check_bytes_equal("betas (scaled_linear) vs torch", betas, want, sizeof(betas));
        free(want);
    }
    // torch.cumprod accumulates in double: bit-exact
    if ((want = golden_f32(&st, "table.alphas_cumprod", &n))) {
        check_bytes_equal("alphas_cumprod vs torch", ac, want, sizeof(ac));
        free(want);
    }
    // ((1 - ac) / ac) ** 0.5 in f32 with a correctly rounded sqrt: bit-exact. torch's CPU sqrt
    // (MKL vsSqrt) is 1 ulp off in 190 of the 1000 values: within 1 ulp (2^-23 relative).
    if ((want = golden_f32(&st, "table.sigmas.exact", &n))) {
        check_bytes_equal("sigma table vs torch with exact sqrt", sig, want, sizeof(sig));
        free(want);
    }
    if ((want = golden_f32(&st, "table.sigmas", &n))) {
        check_close("sigma table vs torch (MKL sqrt), 1 ulp", sig, want, 1000, 0.0f, 1.2e-7f);
        free(want);
    }
    SchedulerConfig lin = c;
    lin.beta_schedule = BETA_LINEAR;
    lin.beta_start = 0.0001;
    lin.beta_end = 0.02;
    schedule_tables(&lin, betas, ac, sig);
    if ((want = golden_f32(&st, "table.linear.betas", &n))) {
        check_bytes_equal("betas (linear 0.0001..0.02) vs torch", betas, want, sizeof(betas));
        free(want);
    }
    safetensors_close(&st);
}

// ----------------------------------------------------------------------------
// Schedules: every sched.<sampler>.<spacing>.<steps>.* entry of the golden.

static void test_sample_schedules_match_diffusers(void) {
    SafeTensors st;
    if (!golden_open(&st, "sample.safetensors")) return;
    int cases = 0;
    for (int i = 0; i < st.count; i++) {
        const char* name = st.tensors[i].name;
        char sampler[32], spacing[32];
        int steps;
        if (sscanf(name, "sched.%31[^.].%31[^.].%d.timesteps", sampler, spacing, &steps) != 3) continue;
        char key[128];
        snprintf(key, sizeof(key), "sched.%s.%s.%d", sampler, spacing, steps);
        if (strcmp(name + strlen(key), ".timesteps") != 0) continue;
        SamplerKind kind;
        SchedulerConfig c;
        scheduler_config_sdxl(&c);
        if (!check_true(sampler_from_name(sampler, &kind) == 0 && spacing_from_name(spacing, &c.timestep_spacing) == 0,
                        "%s names a sampler and spacing", key))
            continue;
        static Schedule s;
        char err[ERR_MAX] = "";
        if (!check_true(schedule_init(&s, kind, steps, &c, err) == 0, "%s: schedule_init (%s)", key, err)) continue;
        char label[160];
        size_t n;
        float* want = golden_f32(&st, name, &n);
        check_true(want && n == (size_t)s.steps, "%s: %d timesteps, diffusers %zu", key, s.steps, n);
        snprintf(label, sizeof(label), "%s timesteps", key);
        if (want && n == (size_t)s.steps) check_bytes_equal(label, s.timesteps, want, n * sizeof(float));
        free(want);
        // sigmas and init_noise_sigma: numpy float64 math rounded once to f32 (np.interp, the Karras
        // formula) from the sigma table, and a sqrt for init_noise_sigma. Bit-exact with diffusers
        // under exact sqrt (.exact); with torch's MKL sqrt, table values are 1 ulp apart in places,
        // which the Karras formula carries (sigma_min and sigma_max come from the table) to at
        // most 2 ulp (2.4e-7 relative).
        static const char* variants[2] = {".exact", ""};
        for (int v = 0; v < 2; v++) {
            snprintf(label, sizeof(label), "%s%s.sigmas", key, variants[v]);
            if (safetensors_find(&st, label) && (want = golden_f32(&st, label, &n))) {
                if (check_true(n == (size_t)s.steps + 1, "%s: %d sigmas, diffusers %zu", label, s.steps + 1, n)) {
                    if (v == 0) check_bytes_equal(label, s.sigmas, want, n * sizeof(float));
                    else check_close(label, s.sigmas, want, n, 0.0f, 2.4e-7f);
                }
                free(want);
            }
            snprintf(label, sizeof(label), "%s%s.init_noise_sigma", key, variants[v]);
            if ((want = golden_f32(&st, label, &n))) {
                if (v == 0) check_bytes_equal(label, &s.init_noise_sigma, want, sizeof(float));
                else check_close(label, &s.init_noise_sigma, want, 1, 0.0f, 2.4e-7f);
                free(want);
            }
        }
        cases++;
    }
    check_true(cases >= 30, "golden holds the schedule cases (%d)", cases);
    safetensors_close(&st);

    // Numbers the notes quote (§4.3), SDXL config, Euler "leading".
    SchedulerConfig c;
    scheduler_config_sdxl(&c);
    static Schedule s;
    char err[ERR_MAX];
    schedule_init(&s, SAMPLER_EULER, 30, &c, err);
    float got[4] = {s.timesteps[0], s.sigmas[0], s.init_noise_sigma, s.sigmas[29]};
    const float quoted[4] = {958.0f, 11.47685f, 11.520333f, 0.04131448f};
    check_close("euler 30 steps: t0, sigma0, init sigma, last sigma", got, quoted, 4, 0.0f, 1e-6f); // 7 digits quoted
}

// ----------------------------------------------------------------------------
// Trajectories: the fake model through each sampler.

typedef struct {
    const Schedule* s;
    const float* c; // the fake model's constant term, on the backend
    size_t n;
    float* traj;    // host, (steps + 1) * n: the latents before the first step and after each
    int calls, out_of_order;
} FakeModel;

// eps = a(t) * x_in + c with a(t) = (0.5f * t) / 1000f, as scripts/make_golden_sample.py computes it.
static void fake_model(void* ctx, const float* x_in, float t, int step, float* out) {
    FakeModel* m = ctx;
    if (step != m->calls || t != m->s->timesteps[step]) m->out_of_order = 1;
    m->calls++;
    float a = 0.5f * t / 1000.0f;
    axpby_forward(out, a, x_in, 1.0f, m->c, m->n);
}

static void record_step(void* ctx, int step, int steps, const float* x, size_t n) {
    FakeModel* m = ctx;
    if (step >= 1 && step <= steps) copy_to_host(m->traj + (size_t)step * n, x, n * sizeof(float));
}

// Runs one golden case on the current backend; returns the trajectory (host) or NULL.
static float* run_case(SamplerKind kind, TimestepSpacing spacing, PredictionType pred, int steps, const float* c_host,
                       size_t n, TorchGenerator* gen_out, int* calls_ok) {
    SchedulerConfig cfg;
    scheduler_config_sdxl(&cfg);
    cfg.timestep_spacing = spacing;
    cfg.prediction_type = pred;
    static Schedule s;
    char err[ERR_MAX] = "";
    if (!check_true(schedule_init(&s, kind, steps, &cfg, err) == 0, "schedule_init %s %d (%s)", sampler_name(kind), steps, err))
        return NULL;
    s.on_step = record_step;
    FakeModel m = {&s, to_backend(c_host, n), n, xmalloc((size_t)(steps + 1) * n * sizeof(float)), 0, 0};
    // latents = randn(shape, generator seeded 42) * init_noise_sigma, as the pipeline's prepare_latents
    TorchGenerator g;
    torch_manual_seed(&g, 42);
    float* x_host = xmalloc(n * sizeof(float));
    torch_randn(&g, x_host, n);
    float* x = to_backend(x_host, n);
    scale_forward(x, x, s.init_noise_sigma, n, DT_F32);
    copy_to_host(m.traj, x, n * sizeof(float));
    Arena scratch;
    arena_init(&scratch, "sample scratch", sample_scratch_bytes(n), backend_current() == BACKEND_CUDA);
    sample(&s, x, n, fake_model, &m, &g, &scratch);
    arena_free(&scratch);
    *calls_ok = m.calls == steps && !m.out_of_order;
    if (gen_out) *gen_out = g;
    free(x_host);
    return m.traj;
}

static void test_sample_trajectories_match_diffusers(void) {
    SafeTensors st;
    if (!golden_open(&st, "sample.safetensors")) return;
    size_t n;
    float* c = golden_f32(&st, "fake_model.c", &n);
    if (!c) return;
    int cases = 0;
    for (int i = 0; i < st.count; i++) {
        const char* name = st.tensors[i].name;
        char sampler[32], spacing[32], pred[8];
        int steps, end = 0;
        if (sscanf(name, "traj.%31[^.].%31[^.].%7[^.].%d%n", sampler, spacing, pred, &steps, &end) != 4 || name[end])
            continue;
        SamplerKind kind;
        TimestepSpacing sp = SPACING_DEFAULT;
        if (!check_true(sampler_from_name(sampler, &kind) == 0 && spacing_from_name(spacing, &sp) == 0, "%s parses", name))
            continue;
        PredictionType pt = strcmp(pred, "v") == 0 ? PREDICT_V : PREDICT_EPSILON;
        TorchGenerator g;
        int calls_ok = 0;
        float* got = run_case(kind, sp, pt, steps, c, n, &g, &calls_ok);
        if (!got) continue;
        check_true(calls_ok, "%s: the model saw steps 0..%d in order with the schedule's timesteps", name, steps - 1);
        size_t count;
        float* want = golden_f32(&st, name, &count);
        if (want && check_true(count == (size_t)(steps + 1) * n, "%s: %d states of %zu values", name, steps + 1, n)) {
            // Bit-exact: the same f32 operations in the same order as diffusers with CUDA's
            // division rule (see the top of this file).
            char label[160];
            snprintf(label, sizeof(label), "%s (every step)", name);
            check_close(label, got, want, count, 0.0f, 0.0f);
        }
        free(want);
        char key[160];
        snprintf(key, sizeof(key), "%s.final_cpu", name);
        if ((want = golden_f32(&st, key, &count))) {
            // diffusers as it is, on the CPU: it divides where CUDA (and we) multiply by the
            // reciprocal, so each division may round 1 ulp apart, twice per step, carried on; and
            // MKL's sqrt/log/exp move the scalars by an ulp at times. Measured: at most 6.7e-6 on
            // values up to ~15 after 25 steps (16% of this tolerance).
            check_close(key, got + (size_t)steps * n, want, n, 2e-5f, 2e-6f);
            free(want);
        }
        snprintf(key, sizeof(key), "%s.next_randn", name);
        if (kind == SAMPLER_EULER_ANCESTRAL && (want = golden_f32(&st, key, &count))) {
            // euler_a drew exactly one randn of the latent shape per step from the generator
            float next[8];
            torch_randn(&g, next, 8);
            check_bytes_equal("generator state after euler_a (next randn(8))", next, want, sizeof(next));
            free(want);
        }
        free(got);
        cases++;
    }
    check_true(cases >= 14, "golden holds the trajectory cases (%d)", cases);
    free(c);
    safetensors_close(&st);
}

// ----------------------------------------------------------------------------
// Classifier-free guidance

static void test_sample_cfg_combine(void) {
    SafeTensors st;
    if (!golden_open(&st, "sample.safetensors")) return;
    size_t n, m;
    float* uncond = golden_f32(&st, "cfg.uncond", &n);
    float* cond = golden_f32(&st, "cfg.cond", &m);
    if (uncond && cond && check_true(n == m, "cfg inputs have one size")) {
        float* du = to_backend(uncond, n);
        float* dc = to_backend(cond, n);
        float* out = backend_alloc(n);
        const float scales[3] = {1.0f, 5.0f, 7.5f};
        for (int k = 0; k < 3; k++) {
            char key[64];
            snprintf(key, sizeof(key), "cfg.out.%.1f", scales[k]);
            float* want = golden_f32(&st, key, &m);
            if (!want) continue;
            // uncond + scale * (cond - uncond): the same three f32 roundings, so bit-exact
            cfg_combine(out, du, dc, scales[k], n);
            float* got = from_backend(out, n);
            check_close(key, got, want, n, 0.0f, 0.0f);
            // out may be eps_cond itself (the pipeline's cond half of the batch)
            float* dc2 = to_backend(cond, n);
            cfg_combine(dc2, du, dc2, scales[k], n);
            float* got2 = from_backend(dc2, n);
            snprintf(key, sizeof(key), "cfg.out.%.1f written over eps_cond", scales[k]);
            check_close(key, got2, want, n, 0.0f, 0.0f);
            free(got);
            free(got2);
            free(want);
        }
    }
    free(uncond);
    free(cond);
    safetensors_close(&st);
}

// ----------------------------------------------------------------------------
// Configuration

static void test_sample_config_reading(void) {
    SchedulerConfig want, got;
    char err[ERR_MAX] = "";
    scheduler_config_sdxl(&want);
    int rc = scheduler_config_parse(&got, SDXL_SCHEDULER_JSON, strlen(SDXL_SCHEDULER_JSON), "sdxl", err);
    check_true(rc == 0 && config_equal(&got, &want), "SDXL base scheduler_config.json reads as scheduler_config_sdxl (%s)", err);
    const char* path = "tests/golden/tiny_sdxl/scheduler/scheduler_config.json";
    rc = scheduler_config_read(&got, path, err);
    check_true(rc == 0 && config_equal(&got, &want), "%s (diffusers 0.42 keys) reads as SDXL's (%s)", path, err);

    // Absent keys take the diffusers class defaults, not SDXL's.
    rc = scheduler_config_parse(&got, "{}", 2, "empty", err);
    check_true(rc == 0 && got.num_train_timesteps == 1000 && got.beta_start == 0.0001 && got.beta_end == 0.02 &&
                   got.beta_schedule == BETA_LINEAR && got.prediction_type == PREDICT_EPSILON &&
                   got.timestep_spacing == SPACING_DEFAULT && got.steps_offset == 0,
               "{} gives the diffusers class defaults (linear 0.0001..0.02, epsilon, steps_offset 0)");
    static Schedule s;
    rc = schedule_init(&s, SAMPLER_EULER, 3, &got, err);
    check_true(rc == 0 && s.timesteps[0] == 999.0f && s.timesteps[1] == 499.5f && s.timesteps[2] == 0.0f,
               "absent timestep_spacing: Euler uses its class default \"linspace\" (999, 499.5, 0)");
    got.clip_sample = 0;
    rc = schedule_init(&s, SAMPLER_DDIM, 4, &got, err);
    check_true(rc == 0 && s.timesteps[0] == 750.0f && s.timesteps[3] == 0.0f && s.final_alpha_cumprod == 1.0f,
               "absent keys: DDIM uses \"leading\" (750..0) and set_alpha_to_one true");

    const char* v = "{\"prediction_type\": \"v_prediction\", \"beta_schedule\": \"scaled_linear\", "
                    "\"timestep_spacing\": \"trailing\", \"steps_offset\": 0, \"use_karras_sigmas\": true, "
                    "\"_class_name\": \"DPMSolverMultistepScheduler\", \"algorithm_type\": \"dpmsolver++\"}";
    rc = scheduler_config_parse(&got, v, strlen(v), "v", err);
    check_true(rc == 0 && got.prediction_type == PREDICT_V && got.timestep_spacing == SPACING_TRAILING &&
                   got.beta_schedule == BETA_SCALED_LINEAR,
               "v_prediction, trailing; sampler-choosing keys ignored (%s)", err);

    rc = scheduler_config_read(&got, "tests/golden/no_such_dir/scheduler_config.json", err);
    check_true(rc == -1 && one_line(err) && strstr(err, "no_such_dir"), "missing file: one-line error naming it: %s", err);
}

static void test_sample_config_rejects_unsupported(void) {
    static const struct { const char* json; const char* must_name; } bad[] = {
        {"{\"beta_schedule\": \"squaredcos_cap_v2\"}", "beta_schedule"},
        {"{\"beta_schedule\": 3}", "beta_schedule"},
        {"{\"prediction_type\": \"sample\"}", "prediction_type"},
        {"{\"timestep_spacing\": \"sideways\"}", "timestep_spacing"},
        {"{\"num_train_timesteps\": 0}", "num_train_timesteps"},
        {"{\"num_train_timesteps\": 4000}", "num_train_timesteps"},
        {"{\"num_train_timesteps\": 1000.5}", "num_train_timesteps"},
        {"{\"beta_start\": \"0.00085\"}", "beta_start"},
        {"{\"beta_end\": 1.5}", "beta_end"},
        {"{\"steps_offset\": -1}", "steps_offset"},
        {"{\"clip_sample\": 0}", "clip_sample"},
        {"{\"trained_betas\": [0.1, 0.2]}", "trained_betas"},
        {"{\"rescale_betas_zero_snr\": true}", "rescale_betas_zero_snr"},
        {"{\"interpolation_type\": \"log_linear\"}", "interpolation_type"},
        {"{\"final_sigmas_type\": \"sigma_min\"}", "final_sigmas_type"},
        {"{\"timestep_type\": \"continuous\"}", "timestep_type"},
        {"{\"use_exponential_sigmas\": true}", "use_exponential_sigmas"},
        {"{\"thresholding\": true}", "thresholding"},
        {"[1, 2]", "object"},
        {"{\"beta_start\": 0.00085,}", "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        SchedulerConfig c;
        char err[ERR_MAX] = "";
        int rc = scheduler_config_parse(&c, bad[i].json, strlen(bad[i].json), "cfg.json", err);
        check_true(rc == -1 && one_line(err) && strstr(err, bad[i].must_name) && strstr(err, "cfg.json"),
                   "rejected: %s", err);
    }
}

static void test_sample_bad_inputs_rejected(void) {
    SchedulerConfig c;
    scheduler_config_sdxl(&c);
    static Schedule s;
    char err[ERR_MAX];
    const int bad_steps[3] = {0, -3, 1001};
    for (int i = 0; i < 3; i++) {
        err[0] = 0;
        int rc = schedule_init(&s, SAMPLER_EULER, bad_steps[i], &c, err);
        check_true(rc == -1 && one_line(err) && strstr(err, "steps"), "steps %d rejected: %s", bad_steps[i], err);
    }
    for (int k = 0; k < SAMPLER_COUNT; k++) {
        int ok1 = schedule_init(&s, (SamplerKind)k, 1, &c, err) == 0 && s.steps == 1;
        int ok1000 = k == SAMPLER_DDIM || (schedule_init(&s, (SamplerKind)k, 1000, &c, err) == 0 && s.steps == 1000);
        check_true(ok1 && ok1000, "%s accepts 1 and 1000 steps", sampler_name((SamplerKind)k));
    }
    // DDIM "leading" + steps_offset 1 at 1000 steps reaches t = 1000: diffusers raises IndexError
    int rc = schedule_init(&s, SAMPLER_DDIM, 1000, &c, err);
    check_true(rc == -1 && one_line(err) && strstr(err, "1000"), "ddim 1000 leading steps rejected: %s", err);
    rc = schedule_init(&s, SAMPLER_DDIM, 999, &c, err);
    check_true(rc == 0 && s.timesteps[0] == 999.0f, "ddim 999 steps accepted (first t 999)");
    // "trailing" with 61 steps: numpy.arange makes 62 timesteps in diffusers
    SchedulerConfig tr = c;
    tr.timestep_spacing = SPACING_TRAILING;
    rc = schedule_init(&s, SAMPLER_EULER, 61, &tr, err);
    check_true(rc == -1 && one_line(err) && strstr(err, "62"), "trailing 61 steps rejected: %s", err);
    rc = schedule_init(&s, SAMPLER_EULER, 60, &tr, err);
    check_true(rc == 0 && s.steps == 60, "trailing 60 steps accepted");
    // DDIM with clip_sample true
    SchedulerConfig clip = c;
    clip.clip_sample = 1;
    rc = schedule_init(&s, SAMPLER_DDIM, 25, &clip, err);
    check_true(rc == -1 && one_line(err) && strstr(err, "clip_sample"), "ddim clip_sample rejected: %s", err);

    SamplerKind k = SAMPLER_DDIM;
    check_true(sampler_from_name("euler_ancestral", &k) == -1 && k == SAMPLER_DDIM, "unknown sampler name rejected");
    check_true(sampler_from_name("", &k) == -1, "empty sampler name rejected");
    int names_ok = 1;
    for (int i = 0; i < SAMPLER_COUNT; i++) {
        SamplerKind back;
        names_ok &= sampler_from_name(sampler_name((SamplerKind)i), &back) == 0 && back == (SamplerKind)i;
    }
    check_true(names_ok, "sampler_name / sampler_from_name round trip (euler, euler_a, ddim, dpmpp_2m_karras)");
}

const TestCase tests_sample[] = {
    {"sample_tables_match_diffusers", test_sample_tables_match_diffusers},
    {"sample_schedules_match_diffusers", test_sample_schedules_match_diffusers},
    {"sample_trajectories_match_diffusers", test_sample_trajectories_match_diffusers},
    {"sample_cfg_combine", test_sample_cfg_combine},
    {"sample_config_reading", test_sample_config_reading},
    {"sample_config_rejects_unsupported", test_sample_config_rejects_unsupported},
    {"sample_bad_inputs_rejected", test_sample_bad_inputs_rejected},
    {NULL, NULL},
};
