// unicode.h: the Unicode text handling the two tokenizers share (tokenizer.c, CLIP's byte-level
// BPE; blip.c, BERT's WordPiece): UTF-8 as Python decodes it, character classes, lowercase,
// and the NFC / NFD normal forms, each reproducing Hugging Face `tokenizers` 0.23 (the code the
// reference tokenizers run), not merely "Unicode". The tables behind them are generated and
// checked by scripts/make_unicode_tables.py into unicode_tables.h, which only unicode.c reads.
#pragma once

#include <stddef.h>
#include <stdint.h>

// A growable array of code points. Zero-initialise, push, free(v) when done.
typedef struct {
    uint32_t* v;
    int n, cap;
} CodePoints;

void codepoints_push(CodePoints* a, uint32_t cp);

// A closed range [first, last] of code points; tables of them are sorted and disjoint.
typedef struct {
    uint32_t first, last;
} UnicodeRange;

// 1 if cp lies in one of the n sorted ranges (binary search).
int unicode_in_ranges(const UnicodeRange* ranges, int n, uint32_t cp);

// Appends the code points of s[0..len). An ill-formed sequence becomes one U+FFFD per maximal
// subpart (the Unicode recommendation, and Python's decode(errors="replace")), so any byte string
// maps to the text a Python caller would have passed.
void utf8_decode(const char* s, size_t len, CodePoints* out);
// Writes cp (at most U+10FFFF) as 1 to 4 bytes to out; returns the byte count. No NUL.
int utf8_encode(uint32_t cp, char out[4]);

// Classes, as the CLIP pre-tokenizer regex (Oniguruma) and A1111's Python regexes see them.
int unicode_is_letter(uint32_t cp);       // general category L*
int unicode_is_number(uint32_t cp);       // general category N*
int unicode_is_space(uint32_t cp);        // Oniguruma \s: White_Space
int unicode_is_space_python(uint32_t cp); // Python re \s (str.isspace)
int unicode_is_word_python(uint32_t cp);  // Python re \w: letters, numbers, '_'

// Appends the lowercase of cp as Rust's char::to_lowercase gives it: one code point, or two for
// U+0130 ("i" + U+0307, from SpecialCasing).
void unicode_lowercase_push(CodePoints* out, uint32_t cp);

// Appends the canonical normal forms of in[0..n) to out (UAX #15). The decomposition data are
// those of tokenizers' normalisation crate (Unicode 9.0 characters; see unicode_tables.h).
void unicode_nfd(const uint32_t* in, int n, CodePoints* out);
void unicode_nfc(const uint32_t* in, int n, CodePoints* out);
