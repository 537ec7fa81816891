// unicode.c: UTF-8, character classes, lowercase and the canonical normal forms (see unicode.h).
// Every function here was written against `tokenizers` 0.23 (normalizers/unicode.rs, the Lowercase
// normalizer, the Oniguruma classes of its regexes) and is checked through the two tokenizers'
// tests: tests/test_tokenizer.c and tests/test_blip.c run whole normalizers on thousands of code
// points against the Python library's output.
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "unicode_tables.h"

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

void codepoints_push(CodePoints* a, uint32_t cp) {
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 64;
        a->v = xrealloc(a->v, (size_t)a->cap * sizeof(uint32_t));
    }
    a->v[a->n++] = cp;
}

// ----------------------------------------------------------------------------
// UTF-8

void utf8_decode(const char* s, size_t len, CodePoints* out) {
    const uint8_t* p = (const uint8_t*)s;
    size_t i = 0;
    while (i < len) {
        uint8_t b = p[i];
        if (b < 0x80) {
            codepoints_push(out, b);
            i++;
            continue;
        }
        int need;
        uint32_t cp;
        uint8_t lo = 0x80, hi = 0xBF; // allowed range of the second byte
        if (b >= 0xC2 && b <= 0xDF) { need = 1; cp = b & 0x1F; }
        else if (b >= 0xE0 && b <= 0xEF) {
            need = 2;
            cp = b & 0x0F;
            if (b == 0xE0) lo = 0xA0;  // no overlong forms
            if (b == 0xED) hi = 0x9F;  // no surrogates
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3;
            cp = b & 0x07;
            if (b == 0xF0) lo = 0x90;
            if (b == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
        } else {
            codepoints_push(out, 0xFFFD);
            i++;
            continue;
        }
        size_t j = i + 1;
        int ok = 1;
        for (int k = 0; k < need; k++, j++) {
            uint8_t c = j < len ? p[j] : 0;
            uint8_t min = k == 0 ? lo : 0x80, max = k == 0 ? hi : 0xBF;
            if (j >= len || c < min || c > max) {
                ok = 0;
                break;
            }
            cp = (cp << 6) | (c & 0x3F);
        }
        codepoints_push(out, ok ? cp : 0xFFFD);
        i = j; // on failure j stops at the offending byte, which starts the next sequence
    }
}

int utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// ----------------------------------------------------------------------------
// Classes

int unicode_in_ranges(const UnicodeRange* r, int n, uint32_t cp) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < r[mid].first) hi = mid - 1;
        else if (cp > r[mid].last) lo = mid + 1;
        else return 1;
    }
    return 0;
}

int unicode_is_letter(uint32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return unicode_in_ranges(unicode_letters, COUNT(unicode_letters), cp);
}

int unicode_is_number(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return unicode_in_ranges(unicode_numbers, COUNT(unicode_numbers), cp);
}

static int in_list(const uint32_t* list, int n, uint32_t cp) {
    for (int i = 0; i < n; i++)
        if (list[i] == cp) return 1;
    return 0;
}

int unicode_is_space(uint32_t cp) { return in_list(unicode_spaces_onig, COUNT(unicode_spaces_onig), cp); }
int unicode_is_space_python(uint32_t cp) { return in_list(unicode_spaces_python, COUNT(unicode_spaces_python), cp); }
int unicode_is_word_python(uint32_t cp) { return cp == '_' || unicode_is_letter(cp) || unicode_is_number(cp); }

// ----------------------------------------------------------------------------
// Lowercase

void unicode_lowercase_push(CodePoints* out, uint32_t cp) {
    if (cp < 0x80) {
        codepoints_push(out, cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
        return;
    }
    if (cp == 0x130) { // LATIN CAPITAL LETTER I WITH DOT ABOVE: "i" + COMBINING DOT ABOVE (SpecialCasing)
        codepoints_push(out, 'i');
        codepoints_push(out, 0x307);
        return;
    }
    int lo = 0, hi = COUNT(unicode_lowercase) - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const UnicodeCaseRun* r = &unicode_lowercase[mid];
        if (cp < r->first) hi = mid - 1;
        else if (cp > r->last) lo = mid + 1;
        else {
            if ((cp - r->first) % r->stride == 0) cp = (uint32_t)((int32_t)cp + r->delta);
            break;
        }
    }
    codepoints_push(out, cp);
}

// ----------------------------------------------------------------------------
// Normal forms

static uint32_t combining_class(uint32_t cp) {
    if (cp < 0x300) return 0;
    int lo = 0, hi = COUNT(unicode_combining) - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < unicode_combining[mid].first) hi = mid - 1;
        else if (cp > unicode_combining[mid].last) lo = mid + 1;
        else return unicode_combining[mid].ccc;
    }
    return 0;
}

// Hangul syllables decompose and compose by arithmetic (Unicode ch. 3.12).
enum { HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7,
       HANGUL_NL = 19, HANGUL_NV = 21, HANGUL_NT = 28, HANGUL_NS = 19 * 21 * 28 };

static void decompose_push(CodePoints* out, uint32_t cp) {
    if (cp < 0xC0) { // nothing below U+00C0 decomposes
        codepoints_push(out, cp);
        return;
    }
    if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_NS) {
        uint32_t s = cp - HANGUL_S;
        codepoints_push(out, HANGUL_L + s / (HANGUL_NV * HANGUL_NT));
        codepoints_push(out, HANGUL_V + (s % (HANGUL_NV * HANGUL_NT)) / HANGUL_NT);
        if (s % HANGUL_NT) codepoints_push(out, HANGUL_T + s % HANGUL_NT);
        return;
    }
    int lo = 0, hi = COUNT(unicode_pairs) - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < unicode_pairs[mid].cp) hi = mid - 1;
        else if (cp > unicode_pairs[mid].cp) lo = mid + 1;
        else {
            decompose_push(out, unicode_pairs[mid].first);
            decompose_push(out, unicode_pairs[mid].second);
            return;
        }
    }
    lo = 0, hi = COUNT(unicode_singletons) - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < unicode_singletons[mid].cp) hi = mid - 1;
        else if (cp > unicode_singletons[mid].cp) lo = mid + 1;
        else {
            decompose_push(out, unicode_singletons[mid].to);
            return;
        }
    }
    codepoints_push(out, cp);
}

// The primary composite of a + b, or 0.
static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_NL && b >= HANGUL_V && b < HANGUL_V + HANGUL_NV)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_NV + (b - HANGUL_V)) * HANGUL_NT;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_NS && (a - HANGUL_S) % HANGUL_NT == 0 && b > HANGUL_T &&
        b < HANGUL_T + HANGUL_NT)
        return a + (b - HANGUL_T);
    // A linear scan: this only runs for a combining character that follows a starter.
    for (int i = 0; i < COUNT(unicode_pairs); i++) {
        if (unicode_pairs[i].first != a || unicode_pairs[i].second != b) continue;
        uint32_t cp = unicode_pairs[i].cp;
        if (in_list(unicode_no_compose, COUNT(unicode_no_compose), cp)) return 0;
        return cp;
    }
    return 0;
}

// Canonical ordering of one run of non-starters v[0..n): a stable sort by combining class.
// Insertion sort for the usual few marks; a run can be as long as the text, where insertion sort
// is quadratic, so a long one gets a stable counting sort over the 256 classes instead.
static void sort_marks(uint32_t* v, int n) {
    if (n <= 16) {
        for (int i = 1; i < n; i++) {
            uint32_t c = v[i], cc = combining_class(c);
            int j = i;
            for (; j > 0 && combining_class(v[j - 1]) > cc; j--) v[j] = v[j - 1];
            v[j] = c;
        }
        return;
    }
    int start[257] = {0}; // start[k]: where the marks of class k go
    for (int i = 0; i < n; i++) start[combining_class(v[i]) + 1]++;
    for (int k = 1; k <= 256; k++) start[k] += start[k - 1];
    uint32_t* sorted = xmalloc(sizeof(uint32_t) * (size_t)n);
    for (int i = 0; i < n; i++) sorted[start[combining_class(v[i])]++] = v[i];
    memcpy(v, sorted, sizeof(uint32_t) * (size_t)n);
    free(sorted);
}

// Canonical decomposition, then canonical ordering of each run of non-starters.
void unicode_nfd(const uint32_t* in, int n, CodePoints* out) {
    int first = out->n;
    for (int i = 0; i < n; i++) decompose_push(out, in[i]);
    for (int i = first; i < out->n;) {
        int end = i;
        while (end < out->n && combining_class(out->v[end]) != 0) end++;
        if (end > i + 1) sort_marks(out->v + i, end - i);
        i = end > i ? end : i + 1;
    }
}

// NFD, then composition.
void unicode_nfc(const uint32_t* in, int n, CodePoints* out) {
    int simple = 1;
    for (int i = 0; i < n && simple; i++) simple = in[i] < 0x300; // below U+0300 NFC changes nothing
    if (simple) {
        for (int i = 0; i < n; i++) codepoints_push(out, in[i]);
        return;
    }
    CodePoints d = {0};
    unicode_nfd(in, n, &d);
    // composition: a character joins the last starter unless something between them blocks it
    // (a starter, or a mark of the same or higher class)
    int starter = -1;
    int last_class = -1; // class of the last character kept after the starter; -1: none yet
    for (int i = 0; i < d.n; i++) {
        uint32_t c = d.v[i], cc = combining_class(c);
        if (starter >= 0 && (last_class == -1 || (last_class != 0 && (int)cc > last_class))) {
            uint32_t comp = compose_pair(out->v[starter], c);
            if (comp) {
                out->v[starter] = comp;
                continue;
            }
        }
        if (cc == 0) {
            starter = out->n;
            last_class = -1;
        } else {
            last_class = (int)cc;
        }
        codepoints_push(out, c);
    }
    free(d.v);
}

