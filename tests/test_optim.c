// tests/test_optim.c: optim.c against torch.optim.AdamW, torch.amp.GradScaler,
// torch.nn.utils.clip_grad_norm_ and diffusers' get_scheduler themselves (tests/golden/optim/*,
// made by scripts/make_golden_optim.py with torch 2.15 on the CPU, f32).
//
// What must be bit-exact, and why it can be:
//   - AdamW's moments (exp_avg, exp_avg_sq) after every step: f32 products, ATen's fused lerp and
//     addcmul (fmaf here), and the scalars rounded from Python doubles as torch rounds them;
//   - AdamW's parameters, against torch run with a correctly rounded sqrt (the golden's ExactMath);
//   - the GradScaler (scaled loss, inv_scale, unscaled gradients, found_inf, scale, growth
//     tracker): one f32 product per value and the double products of its update kernel;
//   - clip_grad_norm's total and clipped gradients, against torch with norms summed in double;
//   - the learning rates of every schedule (double arithmetic and libm's cos/pow, as Python's);
//   - the whole trainer step sequence, against torch with both of the above made exact.
// Within a tolerance, stated at each check: the same values from torch as it is, whose CPU sqrt
// (MKL vsSqrt) is 1 ulp off for about a fifth of inputs and whose vector_norm sums in f32.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../optim.h"
#include "check.h"

// A precondition of a check (golden shapes, a name that parses): prints a failed check only when
// it does not hold, so passing runs list the comparisons alone. Returns cond.
static int require(int cond, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static int require(int cond, const char* fmt, ...) {
    if (cond) return 1;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return check_true(0, "%s", msg);
}

static int one_line(const char* err) { return err[0] != 0 && strchr(err, '\n') == NULL; }

// A copy of golden tensor `name` as stored (dtype dt, which it must have), and its element count.
// NULL (and a failed check) when it is missing or of another dtype.
static void* golden_raw(const SafeTensors* st, const char* name, DType dt, size_t* count) {
    const SafeTensor* t = safetensors_find(st, name);
    if (!t || t->dtype != dt) {
        check_true(0, "golden tensor '%s' present as %s", name, dtype_name(dt));
        return NULL;
    }
    void* x = xmalloc(t->nbytes ? t->nbytes : 1);
    memcpy(x, t->data, t->nbytes);
    if (count) *count = t->nbytes / dtype_size(dt);
    return x;
}

// "<area>.<name>.<suffix>" in key (KEY_MAX bytes), returned for use in one golden_* call.
#define KEY_MAX 192
static const char* case_key(char* key, const char* area, const char* name, const char* suffix) {
    snprintf(key, KEY_MAX, "%s.%s.%s", area, name, suffix);
    return key;
}

// Calls fn(case name) for every golden tensor "<prefix>.<case>.<suffix>".
static int for_each_case(const SafeTensors* st, const char* prefix, const char* suffix,
                         void (*fn)(const SafeTensors*, const char*)) {
    int cases = 0;
    size_t lp = strlen(prefix), ls = strlen(suffix);
    for (int i = 0; i < st->count; i++) {
        const char* name = st->tensors[i].name;
        size_t ln = strlen(name);
        if (ln <= lp + ls + 2 || strncmp(name, prefix, lp) != 0 || name[lp] != '.') continue;
        if (strcmp(name + ln - ls, suffix) != 0 || name[ln - ls - 1] != '.') continue;
        char c[128];
        size_t lc = ln - lp - ls - 2;
        if (lc >= sizeof(c)) continue;
        memcpy(c, name + lp + 1, lc);
        c[lc] = 0;
        if (strchr(c, '.')) continue;
        fn(st, c);
        cases++;
    }
    return cases;
}

// Largest |got - want| / |want| over n doubles (want = 0 needs got = 0), and how many are equal.
static double max_rel_f64(const double* got, const double* want, size_t n, size_t* identical) {
    double worst = 0.0;
    *identical = 0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(double)) == 0) {
            (*identical)++;
            continue;
        }
        double d = fabs(got[i] - want[i]);
        double r = want[i] != 0.0 ? d / fabs(want[i]) : INFINITY;
        if (!(r <= worst)) worst = r; // NaN counts as worst
    }
    return worst;
}

// ----------------------------------------------------------------------------
// AdamW

static void adamw_case(const SafeTensors* st, const char* name) {
    char key[KEY_MAX], label[192];
    size_t ncfg = 0, n = 0, ng = 0, np = 0, nstep = 0;
    double* cfgv = golden_raw(st, case_key(key, "adamw", name, "config"), DT_F64, &ncfg);
    int64_t* step0 = golden_raw(st, case_key(key, "adamw", name, "step0"), DT_I64, &nstep);
    float* param = golden_f32(st, case_key(key, "adamw", name, "param0"), &n);
    float* m = golden_f32(st, case_key(key, "adamw", name, "exp_avg0"), NULL);
    float* v = golden_f32(st, case_key(key, "adamw", name, "exp_avg_sq0"), NULL);
    float* grads = golden_f32(st, case_key(key, "adamw", name, "grads"), &ng);
    float* want_x = golden_f32(st, case_key(key, "adamw", name, "params.exact"), NULL);
    float* want = golden_f32(st, case_key(key, "adamw", name, "params"), &np);
    float* want_m = golden_f32(st, case_key(key, "adamw", name, "exp_avg"), NULL);
    float* want_v = golden_f32(st, case_key(key, "adamw", name, "exp_avg_sq"), NULL);
    if (cfgv && step0 && param && m && v && grads && want_x && want && want_m && want_v &&
        require(ncfg == 5 && nstep == 1 && n > 0 && ng % n == 0 && np == ng, "adamw.%s: golden shapes", name)) {
        AdamWConfig c = {.lr = cfgv[0], .beta1 = cfgv[1], .beta2 = cfgv[2], .eps = cfgv[3], .weight_decay = cfgv[4]};
        size_t steps = ng / n;
        float* got = xmalloc(sizeof(float) * np);
        for (size_t k = 0; k < steps; k++) {
            adamw_step(param, grads + k * n, m, v, n, step0[0] + (int64_t)k + 1, &c);
            memcpy(got + k * n, param, sizeof(float) * n);
        }
        // The moments never pass through sqrt: bit-exact with torch as it is.
        snprintf(label, sizeof(label), "adamw.%s exp_avg after %zu steps", name, steps);
        check_bytes_equal(label, m, want_m, sizeof(float) * n);
        snprintf(label, sizeof(label), "adamw.%s exp_avg_sq after %zu steps", name, steps);
        check_bytes_equal(label, v, want_v, sizeof(float) * n);
        snprintf(label, sizeof(label), "adamw.%s params, %zu steps (exact sqrt)", name, steps);
        check_bytes_equal(label, got, want_x, sizeof(float) * np);
        // torch's MKL sqrt moves a denominator by an ulp now and then: the update by ~2^-23 of
        // itself (|update| <= ~lr * 3 here), the parameter by an ulp of its rounding, per step.
        // lr * 1e-5 + 1e-6 * |p| covers 12 steps of that many times over; a wrong sign, lr or
        // bias correction is off by ~lr.
        snprintf(label, sizeof(label), "adamw.%s params vs torch (MKL sqrt)", name);
        check_close(label, got, want, np, (float)(c.lr * 1e-5), 1e-6f);
        free(got);
    }
    free(cfgv), free(step0), free(param), free(m), free(v), free(grads), free(want_x), free(want), free(want_m),
        free(want_v);
}

static void test_optim_adamw_matches_torch(void) {
    SafeTensors st;
    if (!golden_open(&st, "optim/adamw.safetensors")) return;
    int cases = for_each_case(&st, "adamw", "config", adamw_case);
    check_true(cases >= 6, "adamw golden holds its cases (%d)", cases);
    safetensors_close(&st);
}

static void test_optim_adamw_formula_and_checks(void) {
    AdamWConfig d = adamw_defaults();
    check_true(d.lr == 1e-3 && d.beta1 == 0.9 && d.beta2 == 0.999 && d.eps == 1e-8 && d.weight_decay == 1e-2,
               "adamw_defaults are torch.optim.AdamW's (1e-3, (0.9, 0.999), 1e-8, 1e-2)");
    char err[ERR_MAX] = "";
    check_true(adamw_config_check(&d, err) == 0, "defaults pass adamw_config_check");

    // The first step from zero moments, without decay: m = (1-b1) g and v = (1-b2) g^2, and the
    // bias corrections (1-b1) and sqrt(1-b2) divide those factors out again, so the update is
    // -lr * g / (|g| + eps) = -lr * sign(g) for these |g| >> eps (and 0 for g = 0). Both sides
    // round 0.5 -/+ 1e-3 to f32: within 2 ulp of 0.5 (1.2e-7); a wrong sign or scale is 1e-3 off.
    AdamWConfig c = d;
    c.weight_decay = 0.0;
    enum { N = 21 };
    float p[N], g[N], m[N] = {0}, v[N] = {0}, want[N];
    fill_uniform(g, N, 7, -2.0f, 2.0f);
    for (int i = 0; i < N; i++) {
        if (i == 3) g[i] = 0.0f; // zero gradient: no update at all
        p[i] = 0.5f;
        want[i] = g[i] > 0 ? 0.5f - 1e-3f : g[i] < 0 ? 0.5f + 1e-3f : 0.5f;
    }
    adamw_step(p, g, m, v, N, 1, &c);
    check_close("first step: p - lr * sign(g)", p, want, N, 1.2e-7f, 0.0f);
    // Decoupled weight decay alone (zero gradients): p * (1 - lr * wd) per step.
    for (int i = 0; i < N; i++) p[i] = 1.0f, g[i] = 0.0f, m[i] = 0.0f, v[i] = 0.0f;
    c = d;
    c.lr = 0.1;
    c.weight_decay = 0.5;
    for (int k = 1; k <= 3; k++) adamw_step(p, g, m, v, N, k, &c);
    float decayed = 1.0f * 0.95f * 0.95f * 0.95f; // f32 products, as torch's mul_ by (float)0.95
    int all = 1;
    for (int i = 0; i < N; i++) all &= p[i] == decayed;
    check_true(all, "zero gradients: 3 steps of decay give 0.95^3 in f32 (%.9g)", (double)p[0]);

    // Elementwise, so the result cannot depend on how the vector is split: one call on 70000
    // values (threaded with OpenMP above 65536) against seven calls on 10000 (single-threaded).
    enum { BIG = 70000, PART = 10000 };
    float* pb = xmalloc(sizeof(float) * BIG * 6);
    float *gb = pb + BIG, *mb = pb + 2 * BIG, *vb = pb + 3 * BIG, *mc = pb + 4 * BIG, *vc = pb + 5 * BIG;
    float* pc = xmalloc(sizeof(float) * BIG);
    fill_uniform(pb, BIG, 11, -1.0f, 1.0f);
    fill_uniform(gb, BIG, 12, -1e-2f, 1e-2f);
    memcpy(pc, pb, sizeof(float) * BIG);
    memset(mb, 0, sizeof(float) * BIG * 4);
    for (int k = 1; k <= 3; k++) {
        adamw_step(pb, gb, mb, vb, BIG, k, &d);
        for (int part = 0; part < BIG / PART; part++)
            adamw_step(pc + part * PART, gb + part * PART, mc + part * PART, vc + part * PART, PART, k, &d);
    }
    check_bytes_equal("70000 params in one call == in 7 calls", pb, pc, sizeof(float) * BIG);
    check_bytes_equal("... and their exp_avg_sq", vb, vc, sizeof(float) * BIG);
    free(pb), free(pc);

    // torch.optim.Adam.__init__'s ValueErrors, one line each
    struct { AdamWConfig c; const char* what; } bad[] = {
        {{-1e-3, 0.9, 0.999, 1e-8, 0.0}, "learning rate"},
        {{1e-3, 1.0, 0.999, 1e-8, 0.0}, "beta1"},
        {{1e-3, -0.1, 0.999, 1e-8, 0.0}, "beta1"},
        {{1e-3, 0.9, 1.0, 1e-8, 0.0}, "beta2"},
        {{1e-3, 0.9, 0.999, -1.0, 0.0}, "epsilon"},
        {{1e-3, 0.9, 0.999, 1e-8, -0.01}, "weight_decay"},
        {{NAN, 0.9, 0.999, 1e-8, 0.0}, "learning rate"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        int rc = adamw_config_check(&bad[i].c, err);
        check_true(rc == -1 && one_line(err) && strstr(err, bad[i].what), "bad AdamW %s rejected: %s", bad[i].what,
                   err);
    }
}

// ----------------------------------------------------------------------------
// GradScaler

static void scaler_case(const SafeTensors* st, const char* name) {
    char key[KEY_MAX], label[192];
    size_t ncfg = 0, n = 0, nsteps = 0, nunscaled = 0;
    double* cfgv = golden_raw(st, case_key(key, "scaler", name, "config"), DT_F64, &ncfg);
    float* grads = golden_f32(st, case_key(key, "scaler", name, "grads"), &n);
    float* loss = golden_f32(st, case_key(key, "scaler", name, "loss"), &nsteps);
    float* want_unscaled = golden_f32(st, case_key(key, "scaler", name, "unscaled"), &nunscaled);
    float* want_found = golden_f32(st, case_key(key, "scaler", name, "found_inf"), NULL);
    float* want_loss = golden_f32(st, case_key(key, "scaler", name, "scaled_loss"), NULL);
    float* want_inv = golden_f32(st, case_key(key, "scaler", name, "inv_scale"), NULL);
    float* want_scale = golden_f32(st, case_key(key, "scaler", name, "scale"), NULL);
    int32_t* want_tracker = golden_raw(st, case_key(key, "scaler", name, "tracker"), DT_I32, NULL);
    if (cfgv && grads && loss && want_unscaled && want_found && want_loss && want_inv && want_scale && want_tracker &&
        require(ncfg == 4 && nsteps > 0 && n % nsteps == 0 && nunscaled == n, "scaler.%s: golden shapes", name)) {
        GradScaler s = {.scale = (float)cfgv[0], .growth_tracker = 0, .growth_factor = cfgv[1],
                        .backoff_factor = cfgv[2], .growth_interval = (int64_t)cfgv[3]};
        char err[ERR_MAX] = "";
        require(grad_scaler_check(&s, err) == 0, "scaler.%s config accepted (%s)", name, err);
        size_t per = n / nsteps;
        float* unscaled = xmalloc(sizeof(float) * n);
        float found[64], scaled_loss[64], inv[64], scale[64];
        int32_t tracker[64];
        if (require(nsteps <= 64, "scaler.%s: at most 64 steps", name)) {
            memcpy(unscaled, grads, sizeof(float) * n);
            for (size_t k = 0; k < nsteps; k++) {
                scaled_loss[k] = grad_scaler_scale(&s, loss[k]);
                inv[k] = grad_scaler_inv_scale(&s);
                int f = grad_scaler_unscale(&s, unscaled + k * per, per);
                found[k] = (float)f;
                grad_scaler_update(&s, f);
                scale[k] = s.scale;
                tracker[k] = s.growth_tracker;
            }
            snprintf(label, sizeof(label), "scaler.%s found_inf per step", name);
            check_bytes_equal(label, found, want_found, sizeof(float) * nsteps);
            snprintf(label, sizeof(label), "scaler.%s scaled loss per step", name);
            check_bytes_equal(label, scaled_loss, want_loss, sizeof(float) * nsteps);
            snprintf(label, sizeof(label), "scaler.%s inv_scale per step", name);
            check_bytes_equal(label, inv, want_inv, sizeof(float) * nsteps);
            snprintf(label, sizeof(label), "scaler.%s unscaled grads (inf/NaN kept)", name);
            check_bytes_equal(label, unscaled, want_unscaled, sizeof(float) * n);
            snprintf(label, sizeof(label), "scaler.%s scale after each update", name);
            check_bytes_equal(label, scale, want_scale, sizeof(float) * nsteps);
            snprintf(label, sizeof(label), "scaler.%s growth tracker after each update", name);
            check_bytes_equal(label, tracker, want_tracker, sizeof(int32_t) * nsteps);
        }
        free(unscaled);
    }
    free(cfgv), free(grads), free(loss), free(want_unscaled), free(want_found), free(want_loss), free(want_inv),
        free(want_scale), free(want_tracker);
}

static void test_optim_grad_scaler_matches_torch(void) {
    SafeTensors st;
    if (!golden_open(&st, "optim/scaler.safetensors")) return;
    int cases = for_each_case(&st, "scaler", "config", scaler_case);
    check_true(cases >= 3, "scaler golden holds its cases (%d)", cases);
    // the default-interval case must have seen what it was made for
    size_t n;
    float* found = golden_f32(&st, "scaler.defaults_interval3.found_inf", &n);
    float* scale = golden_f32(&st, "scaler.defaults_interval3.scale", NULL);
    if (found && scale) {
        int infs = 0, grows = 0;
        for (size_t k = 0; k < n; k++) {
            infs += found[k] != 0.0f;
            grows += k > 0 && scale[k] > scale[k - 1];
        }
        check_true(infs >= 2 && grows >= 2, "golden sequence has backoffs (%d) and growths (%d)", infs, grows);
    }
    free(found), free(scale);
    safetensors_close(&st);
}

static void test_optim_grad_scaler_rules(void) {
    GradScaler s = grad_scaler_default();
    check_true(s.scale == 65536.0f && s.growth_tracker == 0 && s.growth_factor == 2.0 && s.backoff_factor == 0.5 &&
                   s.growth_interval == 2000,
               "grad_scaler_default is torch.amp.GradScaler's (2^16, 2.0, 0.5, 2000)");
    // The documented rule: 1999 clean updates leave the scale, the 2000th doubles it and resets.
    for (int k = 0; k < 1999; k++) grad_scaler_update(&s, 0);
    check_true(s.scale == 65536.0f && s.growth_tracker == 1999, "1999 clean updates: scale kept, tracker 1999");
    grad_scaler_update(&s, 0);
    check_true(s.scale == 131072.0f && s.growth_tracker == 0, "the 2000th: scale doubled, tracker 0");
    grad_scaler_update(&s, 0);
    grad_scaler_update(&s, 1);
    check_true(s.scale == 65536.0f && s.growth_tracker == 0, "inf: scale halved, tracker 0");
    // unscale: only the incoming values are checked; a scale < 1 may overflow a finite value to
    // inf without raising found_inf, as in torch (the flag is computed before the product)
    GradScaler small = grad_scaler_default();
    small.scale = 0.25f;
    float g[3] = {1e38f, -2.0f, 0.0f};
    int f = grad_scaler_unscale(&small, g, 3);
    check_true(f == 0 && isinf(g[0]) && g[1] == -8.0f, "unscale checks the incoming values only (found %d)", f);
    GradScaler one = grad_scaler_default();
    one.scale = 1.0f;
    float h[2] = {NAN, 3.0f};
    check_true(grad_scaler_unscale(&one, h, 2) == 1 && isnan(h[0]) && h[1] == 3.0f, "scale 1: NaN found, values kept");

    char err[ERR_MAX];
    struct { GradScaler s; const char* what; } bad[] = {
        {{65536.0f, 0, 1.0, 0.5, 2000}, "growth factor"},
        {{65536.0f, 0, 2.0, 1.0, 2000}, "backoff factor"},
        {{65536.0f, 0, 2.0, 0.0, 2000}, "backoff factor"},
        {{0.0f, 0, 2.0, 0.5, 2000}, "scale"},
        {{INFINITY, 0, 2.0, 0.5, 2000}, "scale"},
        {{65536.0f, 0, 2.0, 0.5, 0}, "growth interval"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        int rc = grad_scaler_check(&bad[i].s, err);
        check_true(rc == -1 && one_line(err) && strstr(err, bad[i].what), "bad scaler %s rejected: %s", bad[i].what, err);
    }
}

// ----------------------------------------------------------------------------
// clip_grad_norm

static void clip_case(const SafeTensors* st, const char* name) {
    char key[KEY_MAX], label[192];
    size_t count = 0, nmax = 0, n = 0, nout = 0;
    int64_t* sizes64 = golden_raw(st, case_key(key, "clip", name, "sizes"), DT_I64, &count);
    double* max_norm = golden_raw(st, case_key(key, "clip", name, "max_norm"), DT_F64, &nmax);
    float* grads = golden_f32(st, case_key(key, "clip", name, "grads"), &n);
    float* want_out = golden_f32(st, case_key(key, "clip", name, "out"), &nout);
    float* want_total = golden_f32(st, case_key(key, "clip", name, "total"), NULL);
    float* want_out_x = golden_f32(st, case_key(key, "clip", name, "out.exact"), NULL);
    float* want_total_x = golden_f32(st, case_key(key, "clip", name, "total.exact"), NULL);
    if (sizes64 && max_norm && grads && want_out && want_total && want_out_x && want_total_x &&
        require(count >= 1 && count <= 16 && nmax == 1 && nout == n, "clip.%s: golden shapes", name)) {
        size_t sizes[16], sum = 0;
        for (size_t t = 0; t < count; t++) sum += sizes[t] = (size_t)sizes64[t];
        if (require(sum == n, "clip.%s: sizes add up to %zu", name, n)) {
            float total = clip_grad_norm(grads, sizes, (int)count, max_norm[0]);
            snprintf(label, sizeof(label), "clip.%s total (double norms)", name);
            check_bytes_equal(label, &total, want_total_x, sizeof(float));
            snprintf(label, sizeof(label), "clip.%s grads (double norms)", name);
            check_bytes_equal(label, grads, want_out_x, sizeof(float) * n);
            // torch's f32 norms: a few ulp off a double sum (measured: <= 1 ulp for these sizes);
            // 1e-6 relative is 8 ulp, and a missing sqrt, square or per-tensor step is far off.
            snprintf(label, sizeof(label), "clip.%s total vs torch", name);
            check_close(label, &total, want_total, 1, 0.0f, 1e-6f);
            snprintf(label, sizeof(label), "clip.%s grads vs torch", name);
            check_close(label, grads, want_out, n, 0.0f, 1e-6f);
        }
    }
    free(sizes64), free(max_norm), free(grads), free(want_out), free(want_total), free(want_out_x), free(want_total_x);
}

static void test_optim_clip_grad_norm_matches_torch(void) {
    SafeTensors st;
    if (!golden_open(&st, "optim/clip.safetensors")) return;
    int cases = for_each_case(&st, "clip", "max_norm", clip_case);
    check_true(cases >= 15, "clip golden holds its cases (%d)", cases);
    safetensors_close(&st);

    // The formula on numbers worked by hand: tensors (3, 4) and (12): norms 5 and 12, total 13;
    // max_norm 6.5 gives coef (1 / (13 + 1e-6)) * 6.5 ~ 0.5; max_norm 26 gives 1 (clamped).
    float g[3] = {3.0f, 4.0f, 12.0f};
    size_t sizes[2] = {2, 1};
    float total = clip_grad_norm(g, sizes, 2, 6.5);
    float want[3] = {1.5f, 2.0f, 6.0f};
    check_true(total == 13.0f, "norm of norms (5, 12) is 13 (%.9g)", (double)total);
    check_close("max_norm 6.5: coef (1 / (13 + 1e-6)) * 6.5 ~ 0.5", g, want, 3, 0.0f, 1e-7f);
    float h[3] = {3.0f, 4.0f, 12.0f};
    clip_grad_norm(h, sizes, 2, 26.0);
    check_true(h[0] == 3.0f && h[1] == 4.0f && h[2] == 12.0f, "below max_norm: coef clamped to 1, grads unchanged");
}

// ----------------------------------------------------------------------------
// Learning-rate schedules

static void test_optim_lr_schedules_match_diffusers(void) {
    SafeTensors st;
    if (!golden_open(&st, "optim/lr.safetensors")) return;
    size_t nb = 0;
    double* base = golden_raw(&st, "lr.base_lr", DT_F64, &nb);
    int cases = 0;
    for (int i = 0; base && nb == 1 && i < st.count; i++) {
        const char* name = st.tensors[i].name;
        char sched[64];
        long long warmup, total;
        if (sscanf(name, "lr.%63[^.].w%lld.t%lld", sched, &warmup, &total) != 3) continue;
        LrSchedule s;
        char err[ERR_MAX] = "";
        if (!require(lr_schedule_from_name(sched, &s, err) == 0, "%s names a schedule (%s)", name, err)) continue;
        if (!require(lr_schedule_check(s, base[0], warmup, total, err) == 0, "%s accepted (%s)", name, err)) continue;
        size_t n;
        double* want = golden_raw(&st, name, DT_F64, &n);
        if (!want) continue;
        double got[64];
        if (require(n <= 64, "%s: at most 64 steps", name)) {
            for (size_t k = 0; k < n; k++) got[k] = lr_schedule_lr(s, base[0], (int64_t)k, warmup, total);
            // The same double operations as diffusers' lambdas, and the same libm cos/pow as
            // CPython's math.cos and float.__pow__: bit-exact here. Another libm may round cos
            // differently by an ulp, so the check allows 2 ulp (4.5e-16) and counts exact values.
            size_t same;
            double rel = max_rel_f64(got, want, n, &same);
            check_true(rel <= 4.5e-16, "%-40s %zu/%zu bit-identical, max rel %.2e", name, same, n, rel);
            if (s != LR_POLYNOMIAL) { // lr_multiplier is the same lambda
                int agree = 1;
                for (size_t k = 0; k < n; k++)
                    agree &= base[0] * lr_multiplier(s, (int64_t)k, warmup, total) == got[k];
                check_true(agree, "%s: base_lr * lr_multiplier == lr_schedule_lr", name);
            }
        }
        free(want);
        cases++;
    }
    check_true(cases >= 24, "lr golden holds its cases (%d)", cases);
    free(base);
    safetensors_close(&st);

    // Values the formulas give exactly (warmup 5, total 25): the warmup ramp k/5, the peak 1 at
    // k = warmup, linear's 0 at total, cosine's 0.5 halfway, restarts' 0 from total on.
    check_true(lr_multiplier(LR_LINEAR, 2, 5, 25) == 0.4 && lr_multiplier(LR_COSINE, 5, 5, 25) == 1.0 &&
                   lr_multiplier(LR_LINEAR, 25, 5, 25) == 0.0 && lr_multiplier(LR_LINEAR, 29, 5, 25) == 0.0 &&
                   fabs(lr_multiplier(LR_COSINE, 15, 5, 25) - 0.5) < 1e-15 &&
                   lr_multiplier(LR_COSINE_WITH_RESTARTS, 25, 5, 25) == 0.0 &&
                   lr_multiplier(LR_CONSTANT_WITH_WARMUP, 0, 5, 25) == 0.0 &&
                   lr_multiplier(LR_CONSTANT, 0, 5, 25) == 1.0,
               "lambdas at their documented points");
    check_true(lr_schedule_lr(LR_POLYNOMIAL, 1e-4, 25, 5, 25) == 1e-4 * (1e-7 / 1e-4),
               "polynomial ends at lr_end (as base_lr * (lr_end / lr_init))");
}

static void test_optim_lr_schedule_names(void) {
    int round_trip = 1;
    for (int i = 0; i < LR_SCHEDULE_COUNT; i++) {
        LrSchedule back;
        round_trip &= lr_schedule_from_name(lr_schedule_name((LrSchedule)i), &back, NULL) == 0 && back == (LrSchedule)i;
    }
    check_true(round_trip, "lr_schedule_name / lr_schedule_from_name round trip");
    static const char* unknown[] = {"piecewise_constant", "Cosine", "", "cosine "};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        LrSchedule s = LR_LINEAR;
        char err[ERR_MAX] = "";
        int rc = lr_schedule_from_name(unknown[i], &s, err);
        check_true(rc == -1 && s == LR_LINEAR && one_line(err) && strstr(err, "unknown lr schedule"),
                   "schedule name '%s' rejected: %s", unknown[i], err);
    }
    char err[ERR_MAX] = "";
    int rc = lr_schedule_check(LR_LINEAR, 1e-4, -1, 100, err);
    check_true(rc == -1 && one_line(err) && strstr(err, "warmup"), "negative warmup rejected: %s", err);
    rc = lr_schedule_check(LR_COSINE, 1e-4, 0, 0, err);
    check_true(rc == -1 && one_line(err) && strstr(err, "total"), "zero total steps rejected: %s", err);
    rc = lr_schedule_check(LR_POLYNOMIAL, 1e-4, 10, 10, err);
    check_true(rc == -1 && one_line(err) && strstr(err, "exceed"), "polynomial total <= warmup rejected: %s", err);
    rc = lr_schedule_check(LR_POLYNOMIAL, 1e-8, 0, 10, err);
    check_true(rc == -1 && one_line(err) && strstr(err, "lr_end"), "polynomial lr below lr_end rejected: %s", err);
    check_true(lr_schedule_check(LR_CONSTANT, 1e-4, -5, 0, err) == 0, "constant ignores warmup and total");
}

// ----------------------------------------------------------------------------
// The trainer's step sequence (accelerate, fp16 mixed precision)

static void test_optim_trainer_steps_match_torch(void) {
    SafeTensors st;
    if (!golden_open(&st, "optim/trainer.safetensors")) return;
    size_t count = 0, ncfg = 0, n = 0, nc = 0, nsteps = 0;
    int64_t* sizes64 = golden_raw(&st, "trainer.sizes", DT_I64, &count);
    double* cfgv = golden_raw(&st, "trainer.config", DT_F64, &ncfg);
    float* param = golden_f32(&st, "trainer.param0", &n);
    float* cs = golden_f32(&st, "trainer.c", &nc);
    float* want_loss_scale = golden_f32(&st, "trainer.loss_scale", &nsteps);
    float* want_found = golden_f32(&st, "trainer.found_inf", NULL);
    float* want_norm = golden_f32(&st, "trainer.norm", NULL);
    float* want_norm_x = golden_f32(&st, "trainer.norm.exact", NULL);
    double* want_lr = golden_raw(&st, "trainer.lr", DT_F64, NULL);
    float* want_params = golden_f32(&st, "trainer.params", NULL);
    float* want_params_x = golden_f32(&st, "trainer.params.exact", NULL);
    float* want_scale = golden_f32(&st, "trainer.scale", NULL);
    int32_t* want_tracker = golden_raw(&st, "trainer.tracker", DT_I32, NULL);
    if (sizes64 && cfgv && param && cs && want_loss_scale && want_found && want_norm && want_norm_x && want_lr &&
        want_params && want_params_x && want_scale && want_tracker &&
        require(count <= 8 && ncfg == 5 && nsteps <= 16 && nc == nsteps * n, "trainer: golden shapes")) {
        size_t sizes[8];
        for (size_t t = 0; t < count; t++) sizes[t] = (size_t)sizes64[t];
        // config = [lr, warmup, total, growth_interval, max_norm]; the schedule is cosine, the
        // optimizer AdamW's defaults but lr, the scaler GradScaler's defaults but the interval
        double base_lr = cfgv[0], max_norm = cfgv[4];
        int64_t warmup = (int64_t)cfgv[1], total = (int64_t)cfgv[2];
        AdamWConfig adam = adamw_defaults();
        GradScaler scaler = grad_scaler_default();
        scaler.growth_interval = (int64_t)cfgv[3];
        float* grad = xmalloc(sizeof(float) * n);
        float* m = xcalloc(n, sizeof(float));
        float* v = xcalloc(n, sizeof(float));
        float* params = xmalloc(sizeof(float) * nsteps * n);
        float loss_scale[16], found[16], norm[16], scale[16];
        double lr[16];
        int32_t tracker[16];
        int64_t updates = 0; // AdamW's step count = the schedule's step count (both skip with inf)
        for (size_t k = 0; k < nsteps; k++) {
            loss_scale[k] = scaler.scale;
            // backward of scale * sum(p * c): grad = scale * c, one f32 product
            for (size_t i = 0; i < n; i++) grad[i] = scaler.scale * cs[k * n + i];
            int f = grad_scaler_unscale(&scaler, grad, n);
            norm[k] = clip_grad_norm(grad, sizes, (int)count, max_norm);
            lr[k] = lr_schedule_lr(LR_COSINE, base_lr, updates, warmup, total);
            if (!f) {
                adam.lr = lr[k];
                adamw_step(param, grad, m, v, n, ++updates, &adam);
            }
            grad_scaler_update(&scaler, f);
            found[k] = (float)f;
            scale[k] = scaler.scale;
            tracker[k] = scaler.growth_tracker;
            memcpy(params + k * n, param, sizeof(float) * n);
        }
        check_bytes_equal("trainer: loss scale at each step", loss_scale, want_loss_scale, sizeof(float) * nsteps);
        check_bytes_equal("trainer: found_inf at each step", found, want_found, sizeof(float) * nsteps);
        check_bytes_equal("trainer: scale after each update", scale, want_scale, sizeof(float) * nsteps);
        check_bytes_equal("trainer: growth tracker after each update", tracker, want_tracker, sizeof(int32_t) * nsteps);
        size_t same;
        double rel = max_rel_f64(lr, want_lr, nsteps, &same);
        check_true(rel <= 4.5e-16, "trainer: lr at each step (skip holds the schedule) %zu/%zu bit-identical", same,
                   nsteps);
        check_bytes_equal("trainer: grad norms (double norms)", norm, want_norm_x, sizeof(float) * nsteps);
        check_bytes_equal("trainer: params (exact sqrt, double norms)", params, want_params_x,
                          sizeof(float) * nsteps * n);
        // against torch as it is: norms as in the clip test (8 ulp); params as in the AdamW test,
        // lr 1e-3 for 7 updates, plus the clip coefficient's ulp moving every gradient by 2^-23
        check_close("trainer: grad norms vs torch", norm, want_norm, nsteps, 0.0f, 1e-6f);
        check_close("trainer: params vs torch", params, want_params, nsteps * n, (float)(base_lr * 1e-5), 1e-6f);
        int skipped = 0;
        for (size_t k = 0; k < nsteps; k++) skipped += want_found[k] != 0.0f;
        check_true(skipped == 1 && updates == (int64_t)nsteps - 1, "one step skipped for inf, %lld updates made",
                   (long long)updates);
        free(grad), free(m), free(v), free(params);
    }
    free(sizes64), free(cfgv), free(param), free(cs), free(want_loss_scale), free(want_found), free(want_norm),
        free(want_norm_x), free(want_lr), free(want_params), free(want_params_x), free(want_scale), free(want_tracker);
    safetensors_close(&st);
}

const TestCase tests_optim[] = {
    {"optim_adamw_matches_torch", test_optim_adamw_matches_torch},
    {"optim_adamw_formula_and_checks", test_optim_adamw_formula_and_checks},
    {"optim_grad_scaler_matches_torch", test_optim_grad_scaler_matches_torch},
    {"optim_grad_scaler_rules", test_optim_grad_scaler_rules},
    {"optim_clip_grad_norm_matches_torch", test_optim_clip_grad_norm_matches_torch},
    {"optim_lr_schedules_match_diffusers", test_optim_lr_schedules_match_diffusers},
    {"optim_lr_schedule_names", test_optim_lr_schedule_names},
    {"optim_trainer_steps_match_torch", test_optim_trainer_steps_match_torch},
    {NULL, NULL},
};
