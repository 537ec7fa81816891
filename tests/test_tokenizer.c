// tests/test_tokenizer.c: tokenizer.c against transformers 5.24 (token ids, as diffusers loads the
// SDXL tokenizers) and against A1111's emphasis and chunking (tests/golden/tokenizer_ref.json,
// written by scripts/make_golden_tokenizer.py, which says how each expected value was made), plus
// hand-checked ids and bad folders that must fail with one line naming the file.
//
// Folders other than the committed ones (tests/golden/tiny_sdxl/tokenizer*) are built under
// build/test_tokenizer/: a copy of the real vocabulary (tests/golden/clip_tokenizer/) next to the
// config files the golden recorded, exactly what the Python side loaded.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common.h"
#include "../json.h"
#include "../tokenizer.h"
#include "check.h"

#define WORK_DIR "build/test_tokenizer"

// ----------------------------------------------------------------------------
// helpers

static int load_ref(JsonDoc* doc) {
    char path[4096], err[ERR_MAX];
    snprintf(path, sizeof(path), "%s", golden_path("tokenizer_ref.json"));
    uint8_t* data;
    size_t size;
    int rc = read_file(path, &data, &size, err);
    if (rc == 0) {
        rc = json_parse(doc, (const char*)data, size, err);
        free(data);
    }
    return check_true(rc == 0, "read %s (%s; re-run scripts/make_golden_tokenizer.py)", path, rc ? err : "ok");
}

static void make_test_dir(const char* path) {
    mkdir("build", 0755);
    mkdir(WORK_DIR, 0755);
    mkdir(path, 0755);
}

static int write_text(const char* dir, const char* name, const char* text) {
    char path[4200], err[ERR_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (write_file_atomic(path, text, strlen(text), err) != 0) {
        check_true(0, "write %s", err);
        return -1;
    }
    return 0;
}

static int copy_golden(const char* golden_name, const char* dir, const char* name) {
    char src[4096], dst[4200], err[ERR_MAX];
    snprintf(src, sizeof(src), "%s", golden_path(golden_name));
    snprintf(dst, sizeof(dst), "%s/%s", dir, name);
    uint8_t* data;
    size_t size;
    int rc = read_file(src, &data, &size, err);
    if (rc == 0) {
        rc = write_file_atomic(dst, data, size, err);
        free(data);
    }
    if (rc != 0) check_true(0, "copy %s (%s)", src, err);
    return rc;
}

// Loads tokenizer `name` of the golden: the committed folder, or one built under WORK_DIR from the
// real vocabulary and the recorded config files.
static int load_named(const JsonValue* ref, const char* name, Tokenizer* tok) {
    const JsonValue* info = json_get(json_get(ref, "tokenizers"), name);
    const char* folder = json_get_string(info, "folder");
    int committed = 0;
    json_get_bool(info, "committed", &committed);
    char dir[4096], err[ERR_MAX];
    if (!folder) return check_true(0, "golden names tokenizer %s", name), -1;
    if (committed) {
        snprintf(dir, sizeof(dir), "%s", golden_path(folder));
    } else {
        snprintf(dir, sizeof(dir), WORK_DIR "/%s", folder);
        make_test_dir(dir);
        if (copy_golden("clip_tokenizer/vocab.json", dir, "vocab.json") || copy_golden("clip_tokenizer/merges.txt", dir, "merges.txt"))
            return -1;
        const JsonValue* files = json_get(json_get(ref, "folders"), folder);
        for (size_t i = 0; files && i < files->length; i++)
            if (write_text(dir, files->keys[i], files->items[i].string)) return -1;
    }
    if (tokenizer_load(tok, dir, err) != 0) return check_true(0, "load %s: %s", name, err), -1;
    return 0;
}

static int ints_equal(const JsonValue* want, const int32_t* got, int n) {
    if (!want || want->type != JSON_ARRAY || (int)want->length != n) return 0;
    for (int i = 0; i < n; i++)
        if (want->items[i].integer != got[i]) return 0;
    return 1;
}

static void print_ids(const char* label, const int32_t* ids, int n) {
    printf("    %s (%d):", label, n);
    for (int i = 0; i < n && i < 40; i++) printf(" %d", ids[i]);
    printf("%s\n", n > 40 ? " ..." : "");
}

static void print_json_ids(const char* label, const JsonValue* a) {
    printf("    %s (%zu):", label, a->length);
    for (size_t i = 0; i < a->length && i < 40; i++) printf(" %lld", (long long)a->items[i].integer);
    printf("%s\n", a->length > 40 ? " ..." : "");
}

// A golden list of 77 with its trailing `filler` run omitted, restored.
static void untrim_ids(const JsonValue* a, int32_t filler, int32_t out[CLIP_CONTEXT]) {
    for (int i = 0; i < CLIP_CONTEXT; i++) out[i] = i < (int)a->length ? (int32_t)a->items[i].integer : filler;
}

// ----------------------------------------------------------------------------
// tests

// Ids everyone can check by hand against the notes (section 2.2) and diffusers issue #4153.
static void test_tokenizer_known_ids(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    Tokenizer t1, t2;
    if (load_named(&ref.root, "sdxl_tokenizer", &t1) == 0) {
        if (load_named(&ref.root, "sdxl_tokenizer_2", &t2) == 0) {
            struct { const char* text; int32_t ids1[8]; int n1; int32_t ids2[8]; int n2; } cases[] = {
                {"a photo of a cat", {320, 1125, 539, 320, 2368}, 5, {320, 1125, 539, 320, 2368}, 5},
                {"An astronaut riding a green horse", {550, 18376, 6765, 320, 1901, 4558}, 6, {550, 18376, 6765, 320, 1901, 4558}, 6},
                {"Hello, World 123", {3306, 267, 1002, 272, 273, 274}, 6, {3306, 267, 1002, 272, 273, 274}, 6},
                // tokenizer_2's pad token "!" is split out of the text as id 0; tokenizer BPEs it
                {"! !! !!!", {256, 748, 995}, 3, {0, 0, 0, 0, 0, 0}, 6},
            };
            for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
                int32_t ids[16];
                int n1 = tokenizer_encode(&t1, cases[c].text, ids, 16);
                int ok1 = n1 == cases[c].n1 && memcmp(ids, cases[c].ids1, (size_t)n1 * 4) == 0;
                int n2 = tokenizer_encode(&t2, cases[c].text, ids, 16);
                int ok2 = n2 == cases[c].n2 && memcmp(ids, cases[c].ids2, (size_t)n2 * 4) == 0;
                check_true(ok1 && ok2, "'%s' -> tokenizer %d ids, tokenizer_2 %d ids, as in the notes", cases[c].text, n1, n2);
            }
            int32_t p1[CLIP_CONTEXT], p2[CLIP_CONTEXT];
            tokenizer_encode_padded(&t1, "a cat", p1);
            tokenizer_encode_padded(&t2, "a cat", p2);
            check_true(p1[0] == 49406 && p1[1] == 320 && p1[2] == 2368 && p1[3] == 49407 && p1[76] == 49407 &&
                           p2[3] == 49407 && p2[4] == 0 && p2[76] == 0,
                       "padded: [BOS] a cat [EOS] then EOS (tokenizer) or 0 (tokenizer_2) to 77");
            check_true(t1.comma_id == 267 && t2.pad_id == 0 && t1.pad_id == 49407 && t1.bos_id == 49406,
                       "ids from the vocabulary: ',</w>' 267, pads 49407 and 0, BOS 49406");
            check_true(tokenizer_encode(&t1, "a photo of a cat", NULL, 0) == 5, "count only (ids NULL, max 0)");
            tokenizer_free(&t2);
        }
        tokenizer_free(&t1);
    }
    json_free(&ref);
}

// tokenizer/ plus tokenizer_set_pad_token(tok, "!") behaves as tokenizer_2/ (one SDXL single-file
// checkpoint ships no tokenizer_2 folder).
static void test_tokenizer_set_pad_token(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    Tokenizer t1, t2;
    char err[ERR_MAX] = "";
    if (load_named(&ref.root, "sdxl_tokenizer", &t1) == 0) {
        if (load_named(&ref.root, "sdxl_tokenizer_2", &t2) == 0) {
            check_true(tokenizer_set_pad_token(&t1, "!", err) == 0 && t1.pad_id == 0, "tokenizer/ with pad '!': pad id 0");
            const char* prompts[] = {"! !! !!!", "hello!world! a photo of a cat", "", "wow!!! (great:1.3)"};
            for (int i = 0; i < 4; i++) {
                int32_t a[CLIP_CONTEXT], b[CLIP_CONTEXT];
                tokenizer_encode_padded(&t1, prompts[i], a);
                tokenizer_encode_padded(&t2, prompts[i], b);
                check_true(memcmp(a, b, sizeof(a)) == 0, "'%s': same 77 ids as tokenizer_2/", prompts[i]);
            }
            check_true(tokenizer_set_pad_token(&t1, "<nope>", err) == -1 && strstr(err, "<nope>"), "unknown pad token -> %s", err);
            tokenizer_free(&t2);
        }
        tokenizer_free(&t1);
    }
    json_free(&ref);
}

// Special ids and added tokens (text, "normalized" flag) as transformers loaded each folder.
static void test_tokenizer_loads_folders(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    const JsonValue* tokenizers = json_get(&ref.root, "tokenizers");
    for (size_t i = 0; tokenizers && i < tokenizers->length; i++) {
        const char* name = tokenizers->keys[i];
        const JsonValue* info = &tokenizers->items[i];
        Tokenizer t;
        if (load_named(&ref.root, name, &t) != 0) continue;
        int64_t bos, eos, pad, unk, comma;
        json_get_int(info, "bos", &bos);
        json_get_int(info, "eos", &eos);
        json_get_int(info, "pad", &pad);
        json_get_int(info, "unk", &unk);
        json_get_int(info, "comma", &comma);
        const JsonValue* added = json_get(info, "added");
        int added_ok = (int)added->length == t.n_added;
        for (size_t k = 0; added_ok && k < added->length; k++) {
            int found = 0;
            int normalized = -1;
            json_get_bool(&added->items[k], "normalized", &normalized);
            for (int a = 0; a < t.n_added; a++)
                if (t.added[a].id == atoi(added->keys[k]) &&
                    strcmp(t.added[a].content, json_get_string(&added->items[k], "content")) == 0 &&
                    t.added[a].normalized == normalized)
                    found = 1;
            added_ok = found;
        }
        check_true(t.bos_id == bos && t.eos_id == eos && t.pad_id == pad && t.unk_id == unk && t.comma_id == comma && added_ok,
                   "%-19s bos %d eos %d pad %d unk %d comma %d, %d added tokens", name, t.bos_id, t.eos_id, t.pad_id,
                   t.unk_id, t.comma_id, t.n_added);
        tokenizer_free(&t);
    }
    json_free(&ref);
}

// Every golden prompt: tokenizer_encode against tokenizer(text, add_special_tokens=False) and
// tokenizer_encode_padded against diffusers' padding="max_length", max_length=77, truncation=True.
static void test_tokenizer_matches_transformers(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    const JsonValue* tokenizers = json_get(&ref.root, "tokenizers");
    int n_tok = (int)tokenizers->length;
    Tokenizer* toks = xcalloc((size_t)n_tok, sizeof(Tokenizer));
    int* loaded = xcalloc((size_t)n_tok, sizeof(int));
    for (int i = 0; i < n_tok; i++) loaded[i] = load_named(&ref.root, tokenizers->keys[i], &toks[i]) == 0;
    const JsonValue* cases = json_get(&ref.root, "encode");
    int32_t* ids = xmalloc(4096 * sizeof(int32_t));
    for (size_t c = 0; c < cases->length; c++) {
        const char* prompt = json_get_string(&cases->items[c], "prompt");
        const JsonValue* want_ids = json_get(&cases->items[c], "ids");
        const JsonValue* want_padded = json_get(&cases->items[c], "padded");
        int ok = 1, compared = 0;
        for (int i = 0; i < n_tok; i++) {
            const JsonValue* w = json_get(want_ids, tokenizers->keys[i]);
            if (!w) continue;
            if (!loaded[i]) {
                ok = 0;
                continue;
            }
            int n = tokenizer_encode(&toks[i], prompt, ids, 4096);
            compared++;
            if (!ints_equal(w, ids, n)) {
                if (ok) {
                    printf("    %s ids differ\n", tokenizers->keys[i]);
                    print_ids("got ", ids, n);
                    print_json_ids("want", w);
                }
                ok = 0;
            }
            const JsonValue* wp = json_get(want_padded, tokenizers->keys[i]);
            if (wp) {
                int32_t padded[CLIP_CONTEXT], want[CLIP_CONTEXT];
                tokenizer_encode_padded(&toks[i], prompt, padded);
                untrim_ids(wp, toks[i].pad_id, want);
                compared++;
                if (memcmp(padded, want, sizeof(want)) != 0) {
                    if (ok) {
                        printf("    %s padded ids differ\n", tokenizers->keys[i]);
                        print_ids("got ", padded, CLIP_CONTEXT);
                        print_ids("want", want, CLIP_CONTEXT);
                    }
                    ok = 0;
                }
            }
        }
        check_true(ok && compared > 0, "%-46s %d lists identical", shown(prompt), compared);
    }
    free(ids);
    for (int i = 0; i < n_tok; i++)
        if (loaded[i]) tokenizer_free(&toks[i]);
    free(toks);
    free(loaded);
    json_free(&ref);
}

// transformers 5 saves only tokenizer.json: a folder without vocab.json/merges.txt loads from it.
static void test_tokenizer_json_fallback(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    const char* dir = WORK_DIR "/tokenizer_json_only";
    make_test_dir(dir);
    remove(WORK_DIR "/tokenizer_json_only/vocab.json");
    remove(WORK_DIR "/tokenizer_json_only/merges.txt");
    if (copy_golden("tiny_sdxl/tokenizer_2/tokenizer.json", dir, "tokenizer.json") ||
        copy_golden("tiny_sdxl/tokenizer_2/tokenizer_config.json", dir, "tokenizer_config.json")) {
        json_free(&ref);
        return;
    }
    Tokenizer t;
    char err[ERR_MAX];
    if (check_true(tokenizer_load(&t, dir, err) == 0, "load tokenizer.json only (%s)", err)) {
        check_true(t.n_vocab == 1014 && t.n_merges == 500 && t.bos_id == 1012 && t.eos_id == 1013 && t.pad_id == 0,
                   "tiny vocabulary 1014, 500 merges, BOS 1012, EOS 1013, pad 0");
        const JsonValue* cases = json_get(&ref.root, "encode");
        int same = 0, total = 0;
        int32_t ids[4096];
        for (size_t c = 0; c < cases->length; c++) {
            const JsonValue* w = json_get(json_get(&cases->items[c], "ids"), "tiny_tokenizer_2");
            if (!w) continue;
            total++;
            same += ints_equal(w, ids, tokenizer_encode(&t, json_get_string(&cases->items[c], "prompt"), ids, 4096));
        }
        check_true(total > 0 && same == total, "ids identical to tiny_sdxl/tokenizer_2 for %d of %d prompts", same, total);
        tokenizer_free(&t);
    }
    json_free(&ref);
}

// Bytes that are not UTF-8 read as U+FFFD, one per maximal ill-formed subpart (Python's
// decode(errors="replace"), which is what a Python caller would have passed).
static void test_tokenizer_invalid_utf8(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    Tokenizer t;
    if (load_named(&ref.root, "sdxl_tokenizer", &t) == 0) {
        struct { const char* bad, *good; } cases[] = {
            {"caf\xC3", "caf\xEF\xBF\xBD"},                                            // truncated sequence
            {"a\xC0\xAF" "b", "a\xEF\xBF\xBD\xEF\xBF\xBD" "b"},                        // overlong '/'
            {"x\xED\xA0\x80y", "x\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDy"},              // a surrogate
            {"\xF0\x9F\x98" "cat", "\xEF\xBF\xBD" "cat"},                              // 3 of 4 bytes
            {"\xFF\xFE", "\xEF\xBF\xBD\xEF\xBF\xBD"},
        };
        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
            int32_t a[64], b[64];
            int na = tokenizer_encode(&t, cases[c].bad, a, 64), nb = tokenizer_encode(&t, cases[c].good, b, 64);
            check_true(na == nb && memcmp(a, b, (size_t)na * 4) == 0, "invalid UTF-8 case %zu: %d ids, same as with U+FFFD", c, na);
        }
        tokenizer_free(&t);
    }
    json_free(&ref);
}

// parse_prompt_attention: A1111's docstring examples and edge cases (texts and weights exactly).
static void test_emphasis_parse(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    const JsonValue* cases = json_get(&ref.root, "emphasis");
    for (size_t c = 0; c < cases->length; c++) {
        const char* prompt = json_get_string(&cases->items[c], "prompt");
        const JsonValue* want = json_get(&cases->items[c], "segments");
        PromptAttention pa;
        char err[ERR_MAX] = "";
        int rc = prompt_parse_attention(prompt, &pa, err);
        if (!want) { // A1111 raises ValueError from float()
            check_true(rc == -1 && strstr(err, "weight") && !strchr(err, '\n'), "%-34s -> error: %s", shown(prompt), err);
            continue;
        }
        int ok = rc == 0 && (int)want->length == pa.n;
        for (int i = 0; ok && i < pa.n; i++) {
            const JsonValue* seg = &want->items[i];
            ok = strcmp(pa.segments[i].text, seg->items[0].string) == 0 && pa.segments[i].weight == seg->items[1].number;
        }
        char summary[160] = "";
        for (int i = 0; rc == 0 && i < pa.n && strlen(summary) < 100; i++) {
            char one[64];
            snprintf(one, sizeof(one), "%s%.4g", i ? " " : "", pa.segments[i].weight);
            strcat(summary, one);
        }
        if (!ok && rc == 0)
            for (int i = 0; i < pa.n; i++) printf("    got [%s] %.17g\n", pa.segments[i].text, pa.segments[i].weight);
        check_true(ok, "%-34s -> %d segments, weights %s", shown(prompt), rc == 0 ? pa.n : -1, summary);
        if (rc == 0) prompt_attention_free(&pa);
    }
    json_free(&ref);
}

// The SDXL storyboard template, spelled out: "(((black and white)))" is 1.1 * 1.1 * 1.1.
static void test_emphasis_storyboard_template(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    Tokenizer t;
    if (load_named(&ref.root, "sdxl_tokenizer", &t) == 0) {
        PromptChunks pc;
        char err[ERR_MAX];
        int rc = prompt_chunks_build(&t, "(((black and white))) in the style of storyboard and cartoonish", &pc, err);
        float w3 = (float)(1.0 * 1.1 * 1.1 * 1.1);
        const char* words[12] = {"black</w>", "and</w>", "white</w>", "in</w>", "the</w>", "style</w>",
                                 "of</w>", "story", "board</w>", "and</w>", "cartoon", "ish</w>"};
        int ok = rc == 0 && pc.n_chunks == 1 && pc.token_count == 12 && pc.chunks[0].ids[0] == t.bos_id &&
                 pc.chunks[0].ids[13] == t.eos_id && pc.chunks[0].ids[76] == t.eos_id;
        for (int i = 0; ok && i < 12; i++) ok = pc.chunks[0].ids[1 + i] == tokenizer_token_id(&t, words[i]);
        check_true(ok, "one chunk: BOS black and white in the style of story board and cartoon ish EOS...");
        check_true(rc == 0 && pc.chunks[0].multipliers[0] == 1.0f && pc.chunks[0].multipliers[1] == w3 &&
                       pc.chunks[0].multipliers[2] == w3 && pc.chunks[0].multipliers[3] == w3 &&
                       pc.chunks[0].multipliers[4] == 1.0f && pc.chunks[0].multipliers[76] == 1.0f,
                   "'black and white' weighted 1.1^3 = %.7f; BOS, 'in' and padding 1.0", w3);
        if (rc == 0) prompt_chunks_free(&pc);
        tokenizer_free(&t);
    }
    json_free(&ref);
}

static int chunks_equal(const PromptChunks* pc, const JsonValue* ids, const JsonValue* mults, int32_t pad) {
    if ((int)ids->length != pc->n_chunks) return 0;
    for (int k = 0; k < pc->n_chunks; k++) {
        int32_t want[CLIP_CONTEXT];
        untrim_ids(&ids->items[k], pad, want);
        if (memcmp(want, pc->chunks[k].ids, sizeof(want)) != 0) {
            printf("    chunk %d ids differ\n", k);
            print_ids("got ", pc->chunks[k].ids, CLIP_CONTEXT);
            print_ids("want", want, CLIP_CONTEXT);
            return 0;
        }
        if (!mults) continue;
        const JsonValue* m = &mults->items[k];
        for (int i = 0; i < CLIP_CONTEXT; i++) {
            float w = i < (int)m->length ? (float)m->items[i].number : 1.0f; // A1111 hands torch float32
            if (pc->chunks[k].multipliers[i] != w) {
                printf("    chunk %d multiplier %d: got %.9g want %.9g\n", k, i, pc->chunks[k].multipliers[i], w);
                return 0;
            }
        }
    }
    return 1;
}

// tokenize_line + process_tokens for both tokenizers: chunk count, A1111's token count, 77 ids
// and 77 multipliers per chunk (long prompts, commas near token 75, BREAK, emphasis).
static void test_chunks_match_a1111(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    Tokenizer toks[2];
    const char* names[2] = {"sdxl_tokenizer", "sdxl_tokenizer_2"};
    if (load_named(&ref.root, names[0], &toks[0]) == 0) {
        if (load_named(&ref.root, names[1], &toks[1]) == 0) {
            const JsonValue* cases = json_get(&ref.root, "chunks");
            for (size_t c = 0; c < cases->length; c++) {
                const JsonValue* cs = &cases->items[c];
                const char* prompt = json_get_string(cs, "prompt");
                int which = strcmp(json_get_string(cs, "tokenizer"), names[1]) == 0;
                int64_t count;
                json_get_int(cs, "token_count", &count);
                PromptChunks pc;
                char err[ERR_MAX];
                int rc = prompt_chunks_build(&toks[which], prompt, &pc, err);
                int ok = rc == 0 && pc.token_count == count &&
                         chunks_equal(&pc, json_get(cs, "ids"), json_get(cs, "multipliers"), toks[which].pad_id);
                check_true(ok, "%-40s %s: %d chunks, %d tokens", shown(prompt), which ? "tok2" : "tok1", rc == 0 ? pc.n_chunks : -1,
                           rc == 0 ? pc.token_count : -1);
                if (rc == 0) prompt_chunks_free(&pc);
            }
            tokenizer_free(&toks[1]);
        }
        tokenizer_free(&toks[0]);
    }
    json_free(&ref);
}

// A negative prompt is padded with empty-prompt chunks to the positive's count, and vice versa.
static void test_chunks_pad_negative(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    Tokenizer toks[2];
    const char* names[2] = {"sdxl_tokenizer", "sdxl_tokenizer_2"};
    if (load_named(&ref.root, names[0], &toks[0]) == 0) {
        if (load_named(&ref.root, names[1], &toks[1]) == 0) {
            const JsonValue* pairs = json_get(&ref.root, "pairs");
            for (size_t c = 0; c < pairs->length; c++) {
                const JsonValue* p = &pairs->items[c];
                int which = strcmp(json_get_string(p, "tokenizer"), names[1]) == 0;
                PromptChunks pos, neg;
                char err[ERR_MAX];
                int rc = prompt_chunks_build(&toks[which], json_get_string(p, "positive"), &pos, err);
                rc |= prompt_chunks_build(&toks[which], json_get_string(p, "negative"), &neg, err);
                int n = pos.n_chunks > neg.n_chunks ? pos.n_chunks : neg.n_chunks;
                int before_pos = pos.n_chunks, before_neg = neg.n_chunks;
                prompt_chunks_pad(&toks[which], &pos, n);
                prompt_chunks_pad(&toks[which], &neg, n);
                int ok = rc == 0 && chunks_equal(&pos, json_get(p, "positive_ids"), NULL, toks[which].pad_id) &&
                         chunks_equal(&neg, json_get(p, "negative_ids"), NULL, toks[which].pad_id);
                for (int k = 0; ok && k < n; k++)
                    for (int i = 0; i < CLIP_CONTEXT; i++) ok &= (k < before_neg || neg.chunks[k].multipliers[i] == 1.0f);
                check_true(ok, "%s: positive %d + negative %d chunks -> both %d", which ? "tok2" : "tok1", before_pos, before_neg, n);
                prompt_chunks_free(&pos);
                prompt_chunks_free(&neg);
            }
            tokenizer_free(&toks[1]);
        }
        tokenizer_free(&toks[0]);
    }
    json_free(&ref);
}

// Current A1111 allows whitespace on both sides of a weight: "(masterpiece: 1.2)" is weighted
// text, not the text "masterpiece: 1.2" at 1.1 (the older pattern). Whitespace inside the number
// or between the sign and the digits still leaves the whole thing text.
static void test_emphasis_weight_whitespace(void) {
    struct { const char* prompt; const char* text; double weight; } cases[] = {
        {"(masterpiece: 1.2)", "masterpiece", 1.2},
        {"(a:1.5 )", "a", 1.5},
        {"(a:\t1.5)", "a", 1.5},
        {"( a : 1.3 )", " a ", 1.3},
        {"(a:\n -0.5\r\n)", "a", -0.5},
        {"(a: - 1.5)", "a: - 1.5", 1.1},
        {"(a:1. 5)", "a:1. 5", 1.1},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        PromptAttention pa;
        char err[ERR_MAX] = "";
        int rc = prompt_parse_attention(cases[c].prompt, &pa, err);
        int ok = rc == 0 && pa.n == 1 && strcmp(pa.segments[0].text, cases[c].text) == 0 && pa.segments[0].weight == cases[c].weight;
        check_true(ok, "%-22s -> %d segment(s), the first at %g", shown(cases[c].prompt), rc == 0 ? pa.n : -1,
                   rc == 0 && pa.n > 0 ? pa.segments[0].weight : 0.0);
        if (rc == 0) prompt_attention_free(&pa);
    }
}

// An "<|endoftext|>" typed in a prompt: A1111's process_tokens pads after the first EOS only when
// the pad id is not EOS, so CLIP-L (pad = EOS) keeps "of a cat" and bigG (pad "!" = 0) drops it.
static void test_chunks_typed_eos(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    Tokenizer t1, t2;
    if (load_named(&ref.root, "sdxl_tokenizer", &t1) == 0) {
        if (load_named(&ref.root, "sdxl_tokenizer_2", &t2) == 0) {
            PromptChunks a, b;
            char err[ERR_MAX];
            int rc = prompt_chunks_build(&t1, "a photo <|endoftext|> of a cat", &a, err);
            rc |= prompt_chunks_build(&t2, "a photo <|endoftext|> of a cat", &b, err);
            if (check_true(rc == 0 && a.n_chunks == 1 && b.n_chunks == 1, "one chunk each (%s)", rc ? err : "ok")) {
                const int32_t want1[8] = {49406, 320, 1125, 49407, 539, 320, 2368, 49407}; // BOS a photo EOS of a cat EOS
                int ok1 = memcmp(a.chunks[0].ids, want1, sizeof(want1)) == 0 && a.chunks[0].ids[76] == 49407;
                int ok2 = b.chunks[0].ids[3] == 49407;
                for (int i = 4; i < CLIP_CONTEXT; i++) ok2 &= b.chunks[0].ids[i] == 0;
                check_true(ok1, "tokenizer (pad = EOS): BOS a photo EOS of a cat EOS..., the words after EOS kept");
                check_true(ok2, "tokenizer_2 (pad 0): BOS a photo EOS, then 0 to the end");
                check_true(a.token_count == 6 && b.token_count == 6, "A1111's token count 6 for both");
                prompt_chunks_free(&a);
                prompt_chunks_free(&b);
            }
            tokenizer_free(&t2);
        }
        tokenizer_free(&t1);
    }
    json_free(&ref);
}

// A prompt of `count` copies of `unit`, then `tail`.
static char* repeat_text(const char* unit, size_t count, const char* tail) {
    StrBuf b = {0};
    strbuf_cat(&b, "");
    for (size_t i = 0; i < count; i++) strbuf_cat(&b, unit);
    strbuf_cat(&b, tail);
    return b.s;
}

// prompt_chunks_build on `prompt`: expects success with n_chunks chunks, or (n_chunks < 0) an
// error mentioning `needle` on one line.
static void expect_chunks(const Tokenizer* t, const char* label, const char* prompt, int n_chunks, const char* needle) {
    PromptChunks pc;
    char err[ERR_MAX] = "";
    double t0 = now_seconds();
    int rc = prompt_chunks_build(t, prompt, &pc, err);
    double dt = now_seconds() - t0;
    if (n_chunks >= 0)
        check_true(rc == 0 && pc.n_chunks == n_chunks, "%-40s -> %d chunks, %d tokens (%.3f s) %s", label, rc ? -1 : pc.n_chunks,
                   rc ? -1 : pc.token_count, dt, rc ? err : "");
    else
        check_true(rc == -1 && strstr(err, needle) && !strchr(err, '\n') && pc.n_chunks == 0 && !pc.chunks,
                   "%-40s -> %s (%.3f s)", label, err, dt);
    if (rc == 0) prompt_chunks_free(&pc);
}

// The limits of tokenizer.h, each just below and just above: PROMPT_MAX_BYTES, PROMPT_MAX_NESTING
// (round and square brackets together), PROMPT_MAX_CHUNKS (tokens, and BREAKs).
static void test_prompt_limits(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    Tokenizer t;
    if (load_named(&ref.root, "sdxl_tokenizer", &t) == 0) {
        char* p = repeat_text(" ", PROMPT_MAX_BYTES, "");
        expect_chunks(&t, "PROMPT_MAX_BYTES spaces", p, 1, NULL);
        free(p);
        p = repeat_text(" ", PROMPT_MAX_BYTES, "x");
        expect_chunks(&t, "PROMPT_MAX_BYTES + 1 bytes", p, -1, "PROMPT_MAX_BYTES");
        free(p);

        p = repeat_text("(", PROMPT_MAX_NESTING, "a");
        PromptAttention pa;
        char err[ERR_MAX] = "";
        double w = 1.0;
        for (int i = 0; i < PROMPT_MAX_NESTING; i++) w *= 1.1; // unclosed brackets, applied in order
        int rc = prompt_parse_attention(p, &pa, err);
        check_true(rc == 0 && pa.n == 1 && pa.segments[0].weight == w, "%d open '(' -> 'a' at 1.1^%d = %.6g (%s)",
                   PROMPT_MAX_NESTING, PROMPT_MAX_NESTING, w, rc ? err : "ok");
        if (rc == 0) prompt_attention_free(&pa);
        free(p);
        p = repeat_text("(", PROMPT_MAX_NESTING + 1, "a");
        expect_chunks(&t, "PROMPT_MAX_NESTING + 1 '('", p, -1, "PROMPT_MAX_NESTING");
        free(p);
        p = repeat_text("[(", PROMPT_MAX_NESTING / 2, "[a");
        expect_chunks(&t, "PROMPT_MAX_NESTING + 1 '[' and '('", p, -1, "PROMPT_MAX_NESTING");
        free(p);
        char* open = repeat_text("(", PROMPT_MAX_NESTING, "a");
        char* twice = repeat_text(")", PROMPT_MAX_NESTING, open); // never more than the limit open at once
        p = repeat_text(open, 1, twice);
        expect_chunks(&t, "PROMPT_MAX_NESTING '(', closed, again", p, 1, NULL);
        free(open);
        free(twice);
        free(p);

        int max_tokens = PROMPT_MAX_CHUNKS * CLIP_CHUNK_TOKENS; // "cat" is one token, no commas
        p = repeat_text("cat ", (size_t)max_tokens, "");
        expect_chunks(&t, "PROMPT_MAX_CHUNKS x 75 tokens", p, PROMPT_MAX_CHUNKS, NULL);
        free(p);
        p = repeat_text("cat ", (size_t)max_tokens + 1, "");
        expect_chunks(&t, "PROMPT_MAX_CHUNKS x 75 + 1 tokens", p, -1, "PROMPT_MAX_CHUNKS");
        free(p);
        p = repeat_text("a BREAK ", PROMPT_MAX_CHUNKS - 1, "a");
        expect_chunks(&t, "PROMPT_MAX_CHUNKS - 1 BREAKs", p, PROMPT_MAX_CHUNKS, NULL);
        free(p);
        p = repeat_text("a BREAK ", PROMPT_MAX_CHUNKS, "a");
        expect_chunks(&t, "PROMPT_MAX_CHUNKS BREAKs", p, -1, "PROMPT_MAX_CHUNKS");
        free(p);
        tokenizer_free(&t);
    }
    json_free(&ref);
}

// Long prompts end quickly: every step is linear in the length (BPE n log n in a word's), so a
// 100,000-character and a 1,000,000-byte prompt take milliseconds. Each input here took seconds
// to hours with the quadratic code (whitespace runs before BREAK, merging many pieces, BPE of a
// long word, canonical ordering of many marks). The times are printed, not checked: a slow
// machine must not fail, and a quadratic step would not finish.
static void test_prompt_long_inputs(void) {
    JsonDoc ref;
    if (!load_ref(&ref)) return;
    Tokenizer t;
    if (load_named(&ref.root, "sdxl_tokenizer", &t) == 0) {
        char* p = repeat_text("a photo of a cat, ", 100000 / 18, "");
        expect_chunks(&t, "100,000 characters of words", p, -1, "PROMPT_MAX_CHUNKS");
        free(p);
        // 1,000,000 bytes that hold no token: whitespace runs, lone backslashes, empty brackets
        p = repeat_text(" \t\\ ( )\n[\xe3\x80\x80] \r\f", 1000000 / 16, ""); // 16 bytes
        check_true(strlen(p) == 1000000, "1,000,000 bytes");
        expect_chunks(&t, "1,000,000 bytes of spaces and brackets", p, 1, NULL);
        free(p);
        p = repeat_text("(", 1000000, "");
        expect_chunks(&t, "1,000,000 '('", p, -1, "PROMPT_MAX_NESTING");
        free(p);
        // one word of 100,000 random letters, and one of 100,000 bytes of combining marks
        p = xmalloc(100001);
        uint32_t x = 12345;
        for (int i = 0; i < 100000; i++) {
            x = x * 1103515245u + 12345u;
            p[i] = (char)('a' + (x >> 16) % 26);
        }
        p[100000] = 0;
        int n = tokenizer_encode(&t, p, NULL, 0);
        check_true(n > PROMPT_MAX_CHUNKS * CLIP_CHUNK_TOKENS, "a word of 100,000 random letters -> %d tokens", n);
        expect_chunks(&t, "a word of 100,000 random letters", p, -1, "PROMPT_MAX_CHUNKS");
        free(p);
        const char* marks[4] = {"\xcc\x81", "\xcc\xa3", "\xcc\xa7", "\xcc\xb4"}; // classes 230, 220, 202, 1
        StrBuf m = {0};
        strbuf_cat(&m, "e");
        for (int i = 0; i < 50000; i++) strbuf_cat(&m, marks[i % 4]);
        expect_chunks(&t, "'e' and 50,000 combining marks", m.s, -1, "PROMPT_MAX_CHUNKS");
        free(m.s);
        tokenizer_free(&t);
    }
    json_free(&ref);
}

// Bad folders: each load fails with one line that names the file at fault.
static void test_tokenizer_rejects_bad_folders(void) {
    struct {
        const char* name;
        const char* vocab;  // NULL: no vocab.json
        const char* merges; // NULL: no merges.txt
        const char* config; // NULL: no tokenizer_config.json
        const char* needle; // expected in the error
    } cases[] = {
        {"no_files", NULL, NULL, NULL, "vocab.json: No such file"},
        {"no_merges", "{\"a\": 0, \"b\": 1}", NULL, NULL, "merges.txt: No such file"},
        {"no_vocab", NULL, "#version: 0.2\n", NULL, "vocab.json: No such file"},
        {"vocab_syntax", "{\"a\": 0,, }", "#version: 0.2\n", NULL, "vocab.json: byte "},
        {"vocab_array", "[\"a\", \"b\"]", "#version: 0.2\n", NULL, "vocab.json: expected a JSON object"},
        {"vocab_bad_id", "{\"a\": -3}", "#version: 0.2\n", NULL, "vocab.json: the id of token \"a\" must be an integer"},
        {"vocab_float_id", "{\"a\": 1.5}", "#version: 0.2\n", NULL, "vocab.json: the id of token \"a\" must be an integer"},
        {"merges_three", "{\"a\": 0, \"b\": 1, \"ab\": 2}", "#version: 0.2\na b c\n", NULL, "merges.txt:2: expected two tokens"},
        {"merges_unknown", "{\"a\": 0, \"b\": 1, \"ab\": 2}", "#version: 0.2\na b\na x\n", NULL, "merges.txt:3: merge token 'x'"},
        {"merges_result", "{\"a\": 0, \"b\": 1}", "#version: 0.2\na b\n", NULL, "merges.txt:2: merged token 'ab'"},
        {"no_specials", "{\"a\": 0, \"b\": 1, \"ab\": 2}", "#version: 0.2\na b\n", NULL, "token '<|startoftext|>' is not in the vocabulary"},
        {"config_syntax", "{\"a\": 0}", "#version: 0.2\n", "{\"pad_token\": }", "tokenizer_config.json: byte "},
        {"config_pad", "{\"<|startoftext|>\": 0, \"<|endoftext|>\": 1}", "#version: 0.2\n", "{\"pad_token\": \"<pad>\"}",
         "tokenizer_config.json: token '<pad>' is not in the vocabulary"},
        {"config_type", "{\"<|startoftext|>\": 0, \"<|endoftext|>\": 1}", "#version: 0.2\n", "{\"pad_token\": 7}",
         "tokenizer_config.json: pad_token is neither"},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        char dir[512];
        snprintf(dir, sizeof(dir), WORK_DIR "/bad_%s", cases[c].name);
        make_test_dir(dir);
        const char* files[3] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
        const char* texts[3] = {cases[c].vocab, cases[c].merges, cases[c].config};
        for (int f = 0; f < 3; f++) {
            char path[600];
            snprintf(path, sizeof(path), "%s/%s", dir, files[f]);
            remove(path);
            if (texts[f]) write_text(dir, files[f], texts[f]);
        }
        Tokenizer t;
        char err[ERR_MAX] = "";
        int rc = tokenizer_load(&t, dir, err);
        check_true(rc == -1 && strstr(err, cases[c].needle) && strstr(err, dir) && !strchr(err, '\n'), "%-14s -> %s", cases[c].name, err);
        if (rc == 0) tokenizer_free(&t);
    }
}

const TestCase tests_tokenizer[] = {
    {"tokenizer_known_ids", test_tokenizer_known_ids},
    {"tokenizer_loads_folders", test_tokenizer_loads_folders},
    {"tokenizer_matches_transformers", test_tokenizer_matches_transformers},
    {"tokenizer_json_fallback", test_tokenizer_json_fallback},
    {"tokenizer_set_pad_token", test_tokenizer_set_pad_token},
    {"tokenizer_invalid_utf8", test_tokenizer_invalid_utf8},
    {"tokenizer_rejects_bad_folders", test_tokenizer_rejects_bad_folders},
    {"tokenizer_emphasis_parse", test_emphasis_parse},
    {"tokenizer_emphasis_storyboard_template", test_emphasis_storyboard_template},
    {"tokenizer_emphasis_weight_whitespace", test_emphasis_weight_whitespace},
    {"tokenizer_chunks_typed_eos", test_chunks_typed_eos},
    {"tokenizer_prompt_limits", test_prompt_limits},
    {"tokenizer_prompt_long_inputs", test_prompt_long_inputs},
    {"tokenizer_chunks_match_a1111", test_chunks_match_a1111},
    {"tokenizer_chunks_pad_negative", test_chunks_pad_negative},
    {NULL, NULL},
};
