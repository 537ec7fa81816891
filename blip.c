// blip.c: BLIP image captioning and MiniLM sentence similarity, the two text evaluators, on a
// shared BERT section (tokenizer and layers).
//
// Mirrors, all read in their installed versions (transformers 5.24, tokenizers 0.23,
// sentence-transformers 6.2):
//   1. BERT WordPiece tokenizer: transformers/models/bert/tokenization_bert.py (BertTokenizer is a
//      `tokenizers` pipeline in transformers 5) and tokenizers' normalizers/bert.rs (BertNormalizer:
//      clean text, CJK spacing, NFD + strip nonspacing marks, lowercase), pre_tokenizers/bert.rs
//      (split on whitespace, isolate punctuation), models/wordpiece (greedy longest match, "##",
//      100 characters a word at most), decoders/wordpiece.rs (decode with its per-token clean-up),
//      added_vocabulary.rs (special tokens are split out of the raw text first), and
//      tokenization_utils_tokenizers.py _decode (clean_up_tokenization_spaces, default false).
//      BLIP's tokenizer is bert-base-uncased plus [DEC] (its bos, 30522) and [ENC] (30523), as
//      salesforce/BLIP models/blip.py init_tokenizer adds them.
//      The character classes below were read off tokenizers 0.23 itself, one code point at a time
//      (normalize_str / pre_tokenize_str over U+0000..U+10FFFF). They come from the Rust crate
//      unicode_categories, an older Unicode than Python's: U+0890 (Cf since Unicode 14) is kept,
//      not dropped. NFD and lowercase come from unicode.c (shared with the CLIP tokenizer, also
//      checked against tokenizers). tests/test_blip.c runs the whole normalizer on 5,600 code points.
//   2. BERT layers: models/blip/modeling_blip_text.py (BlipTextEmbeddings, BlipTextLayer:
//      self-attention, cross-attention, feed-forward, each "LayerNorm(x + sublayer(x))", i.e.
//      post-LN) and models/bert/modeling_bert.py (BertModel: the same layer without cross-attention,
//      token type embeddings). GELU is the exact erf form ("gelu").
//   3. BLIP: models/blip/modeling_blip.py (BlipVisionEmbeddings: 16x16 patch conv with bias, class
//      token, position embedding; BlipEncoderLayer: pre-LN with a fused qkv; post_layernorm on every
//      token; BlipForConditionalGeneration.generate: input_ids [bos, ...], the last (sep) token
//      dropped, eos_token_id = sep_token_id), BlipTextLMPredictionHead (dense, GELU, LayerNorm,
//      decoder tied to the word embeddings, bias cls.predictions.bias), configuration_blip.py
//      (defaults), image_processing_pil_blip.py (BlipImageProcessorPil: 384x384 squash, BICUBIC,
//      /255, OPENAI_CLIP_MEAN/STD).
//      generation/utils.py: _sample (greedy: argmax of the processed logits) and _beam_search (the
//      vectorised beam search of 5.x: top 2*num_beams candidates, the first num_beams of them may
//      finish, scores / generated_length^length_penalty, early-stop heuristic), with
//      logits_process.py MinLengthLogitsProcessor and RepetitionPenaltyLogitsProcessor.
//   4. MiniLM: sentence-transformers base/modules/transformer.py (tokenize with truncation to
//      max_seq_length from sentence_bert_config.json), sentence_transformer/modules/pooling.py (mean
//      over the attention mask: [CLS] and [SEP] included) and normalize.py (F.normalize).
//
// Choices:
//   - The text decoder keeps no self-attention KV cache: every step runs the whole prefix (at most
//     max_length tokens, 20 for captions) through the decoder, which is the same arithmetic as
//     transformers' cached steps. The cross-attention keys and values of the image (577 tokens x
//     layers) are computed once per image, as transformers' EncoderDecoderCache does. On two CPU
//     cores a random-weight BLIP-base captions (3 beams) in 2.2 s against PyTorch's 3.2 s, with
//     the same ids, so the cache would buy little at 20 tokens.
//   - Sentences are encoded one at a time, without padding, which equals sentence-transformers'
//     padded batch with its attention mask (masked keys get exactly zero weight there).
//   - Preprocessing is BlipImageProcessorPil (PIL resize). transformers 5's default
//     BlipImageProcessor resizes with torchvision instead, whose uint8 bicubic differs from PIL by
//     one level in ~0.2% of the pixels.
//
// Dimension letters: N sequences (beams) or images, L tokens, D width, NH heads, HS head size,
// V vocabulary, T image tokens, S image size, P patch size.
#include "blip.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "json.h"
#include "ops.h"
#include "safetensors.h"
#include "unicode.h"

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

// ----------------------------------------------------------------------------
// Character classes of tokenizers' BERT normalizer and pre-tokenizer (read off tokenizers 0.23)

// clean_text drops these (tokenizers is_control: categories Cc Cf Co Cs but \t \n \r, plus U+0000 and U+FFFD): 25 ranges
static const UnicodeRange bert_removed[] = {
    {0x0, 0x8}, {0xB, 0xC}, {0xE, 0x1F}, {0x7F, 0x9F}, {0xAD, 0xAD}, {0x600, 0x605}, {0x61C, 0x61C}, {0x6DD, 0x6DD},
    {0x70F, 0x70F}, {0x180E, 0x180E}, {0x200B, 0x200F}, {0x202A, 0x202E}, {0x2060, 0x2064}, {0x2066, 0x206F},
    {0xE000, 0xF8FF}, {0xFEFF, 0xFEFF}, {0xFFF9, 0xFFFB}, {0xFFFD, 0xFFFD}, {0x110BD, 0x110BD}, {0x1BCA0, 0x1BCA3},
    {0x1D173, 0x1D17A}, {0xE0001, 0xE0001}, {0xE0020, 0xE007F}, {0xF0000, 0xFFFFD}, {0x100000, 0x10FFFD},
};
// clean_text turns these into ' ' (\t \n \r and Rust char::is_whitespace): 9 ranges
static const UnicodeRange bert_spaces[] = {
    {0x9, 0xA}, {0xD, 0xD}, {0xA0, 0xA0}, {0x1680, 0x1680}, {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F},
    {0x205F, 0x205F}, {0x3000, 0x3000},
};
// BertPreTokenizer isolates these (char::is_ascii_punctuation or unicode_categories is_punctuation: P*): 156 ranges
static const UnicodeRange bert_punctuation[] = {
    {0x21, 0x2F}, {0x3A, 0x40}, {0x5B, 0x60}, {0x7B, 0x7E}, {0xA1, 0xA1}, {0xA7, 0xA7}, {0xAB, 0xAB}, {0xB6, 0xB7},
    {0xBB, 0xBB}, {0xBF, 0xBF}, {0x37E, 0x37E}, {0x387, 0x387}, {0x55A, 0x55F}, {0x589, 0x58A}, {0x5BE, 0x5BE},
    {0x5C0, 0x5C0}, {0x5C3, 0x5C3}, {0x5C6, 0x5C6}, {0x5F3, 0x5F4}, {0x609, 0x60A}, {0x60C, 0x60D}, {0x61B, 0x61B},
    {0x61E, 0x61F}, {0x66A, 0x66D}, {0x6D4, 0x6D4}, {0x700, 0x70D}, {0x7F7, 0x7F9}, {0x830, 0x83E}, {0x85E, 0x85E},
    {0x964, 0x965}, {0x970, 0x970}, {0xAF0, 0xAF0}, {0xDF4, 0xDF4}, {0xE4F, 0xE4F}, {0xE5A, 0xE5B}, {0xF04, 0xF12},
    {0xF14, 0xF14}, {0xF3A, 0xF3D}, {0xF85, 0xF85}, {0xFD0, 0xFD4}, {0xFD9, 0xFDA}, {0x104A, 0x104F},
    {0x10FB, 0x10FB}, {0x1360, 0x1368}, {0x1400, 0x1400}, {0x166D, 0x166E}, {0x169B, 0x169C}, {0x16EB, 0x16ED},
    {0x1735, 0x1736}, {0x17D4, 0x17D6}, {0x17D8, 0x17DA}, {0x1800, 0x180A}, {0x1944, 0x1945}, {0x1A1E, 0x1A1F},
    {0x1AA0, 0x1AA6}, {0x1AA8, 0x1AAD}, {0x1B5A, 0x1B60}, {0x1BFC, 0x1BFF}, {0x1C3B, 0x1C3F}, {0x1C7E, 0x1C7F},
    {0x1CC0, 0x1CC7}, {0x1CD3, 0x1CD3}, {0x2010, 0x2027}, {0x2030, 0x2043}, {0x2045, 0x2051}, {0x2053, 0x205E},
    {0x207D, 0x207E}, {0x208D, 0x208E}, {0x2308, 0x230B}, {0x2329, 0x232A}, {0x2768, 0x2775}, {0x27C5, 0x27C6},
    {0x27E6, 0x27EF}, {0x2983, 0x2998}, {0x29D8, 0x29DB}, {0x29FC, 0x29FD}, {0x2CF9, 0x2CFC}, {0x2CFE, 0x2CFF},
    {0x2D70, 0x2D70}, {0x2E00, 0x2E2E}, {0x2E30, 0x2E42}, {0x3001, 0x3003}, {0x3008, 0x3011}, {0x3014, 0x301F},
    {0x3030, 0x3030}, {0x303D, 0x303D}, {0x30A0, 0x30A0}, {0x30FB, 0x30FB}, {0xA4FE, 0xA4FF}, {0xA60D, 0xA60F},
    {0xA673, 0xA673}, {0xA67E, 0xA67E}, {0xA6F2, 0xA6F7}, {0xA874, 0xA877}, {0xA8CE, 0xA8CF}, {0xA8F8, 0xA8FA},
    {0xA8FC, 0xA8FC}, {0xA92E, 0xA92F}, {0xA95F, 0xA95F}, {0xA9C1, 0xA9CD}, {0xA9DE, 0xA9DF}, {0xAA5C, 0xAA5F},
    {0xAADE, 0xAADF}, {0xAAF0, 0xAAF1}, {0xABEB, 0xABEB}, {0xFD3E, 0xFD3F}, {0xFE10, 0xFE19}, {0xFE30, 0xFE52},
    {0xFE54, 0xFE61}, {0xFE63, 0xFE63}, {0xFE68, 0xFE68}, {0xFE6A, 0xFE6B}, {0xFF01, 0xFF03}, {0xFF05, 0xFF0A},
    {0xFF0C, 0xFF0F}, {0xFF1A, 0xFF1B}, {0xFF1F, 0xFF20}, {0xFF3B, 0xFF3D}, {0xFF3F, 0xFF3F}, {0xFF5B, 0xFF5B},
    {0xFF5D, 0xFF5D}, {0xFF5F, 0xFF65}, {0x10100, 0x10102}, {0x1039F, 0x1039F}, {0x103D0, 0x103D0},
    {0x1056F, 0x1056F}, {0x10857, 0x10857}, {0x1091F, 0x1091F}, {0x1093F, 0x1093F}, {0x10A50, 0x10A58},
    {0x10A7F, 0x10A7F}, {0x10AF0, 0x10AF6}, {0x10B39, 0x10B3F}, {0x10B99, 0x10B9C}, {0x11047, 0x1104D},
    {0x110BB, 0x110BC}, {0x110BE, 0x110C1}, {0x11140, 0x11143}, {0x11174, 0x11175}, {0x111C5, 0x111C9},
    {0x111CD, 0x111CD}, {0x111DB, 0x111DB}, {0x111DD, 0x111DF}, {0x11238, 0x1123D}, {0x112A9, 0x112A9},
    {0x114C6, 0x114C6}, {0x115C1, 0x115D7}, {0x11641, 0x11643}, {0x1173C, 0x1173E}, {0x12470, 0x12474},
    {0x16A6E, 0x16A6F}, {0x16AF5, 0x16AF5}, {0x16B37, 0x16B3B}, {0x16B44, 0x16B44}, {0x1BC9F, 0x1BC9F},
    {0x1DA87, 0x1DA8B},
};
// strip_accents drops these after NFD (unicode_categories is_mark_nonspacing: Mn): 279 ranges
static const UnicodeRange bert_nonspacing_marks[] = {
    {0x300, 0x33F}, {0x342, 0x342}, {0x345, 0x36F}, {0x483, 0x487}, {0x591, 0x5BD}, {0x5BF, 0x5BF}, {0x5C1, 0x5C2},
    {0x5C4, 0x5C5}, {0x5C7, 0x5C7}, {0x610, 0x61A}, {0x64B, 0x65F}, {0x670, 0x670}, {0x6D6, 0x6DC}, {0x6DF, 0x6E4},
    {0x6E7, 0x6E8}, {0x6EA, 0x6ED}, {0x711, 0x711}, {0x730, 0x74A}, {0x7A6, 0x7B0}, {0x7EB, 0x7F3}, {0x816, 0x819},
    {0x81B, 0x823}, {0x825, 0x827}, {0x829, 0x82D}, {0x859, 0x85B}, {0x8E3, 0x902}, {0x93A, 0x93A}, {0x93C, 0x93C},
    {0x941, 0x948}, {0x94D, 0x94D}, {0x951, 0x957}, {0x962, 0x963}, {0x981, 0x981}, {0x9BC, 0x9BC}, {0x9C1, 0x9C4},
    {0x9CD, 0x9CD}, {0x9E2, 0x9E3}, {0xA01, 0xA02}, {0xA3C, 0xA3C}, {0xA41, 0xA42}, {0xA47, 0xA48}, {0xA4B, 0xA4D},
    {0xA51, 0xA51}, {0xA70, 0xA71}, {0xA75, 0xA75}, {0xA81, 0xA82}, {0xABC, 0xABC}, {0xAC1, 0xAC5}, {0xAC7, 0xAC8},
    {0xACD, 0xACD}, {0xAE2, 0xAE3}, {0xB01, 0xB01}, {0xB3C, 0xB3C}, {0xB3F, 0xB3F}, {0xB41, 0xB44}, {0xB4D, 0xB4D},
    {0xB56, 0xB56}, {0xB62, 0xB63}, {0xB82, 0xB82}, {0xBC0, 0xBC0}, {0xBCD, 0xBCD}, {0xC00, 0xC00}, {0xC3E, 0xC40},
    {0xC46, 0xC47}, {0xC4A, 0xC4D}, {0xC55, 0xC56}, {0xC62, 0xC63}, {0xC81, 0xC81}, {0xCBC, 0xCBC}, {0xCBF, 0xCBF},
    {0xCC6, 0xCC6}, {0xCCC, 0xCCD}, {0xCE2, 0xCE3}, {0xD01, 0xD01}, {0xD41, 0xD44}, {0xD4D, 0xD4D}, {0xD62, 0xD63},
    {0xDCA, 0xDCA}, {0xDD2, 0xDD4}, {0xDD6, 0xDD6}, {0xE31, 0xE31}, {0xE34, 0xE3A}, {0xE47, 0xE4E}, {0xEB1, 0xEB1},
    {0xEB4, 0xEB9}, {0xEBB, 0xEBC}, {0xEC8, 0xECD}, {0xF18, 0xF19}, {0xF35, 0xF35}, {0xF37, 0xF37}, {0xF39, 0xF39},
    {0xF71, 0xF72}, {0xF74, 0xF74}, {0xF77, 0xF77}, {0xF79, 0xF7E}, {0xF80, 0xF80}, {0xF82, 0xF84}, {0xF86, 0xF87},
    {0xF8D, 0xF92}, {0xF94, 0xF97}, {0xF99, 0xF9C}, {0xF9E, 0xFA1}, {0xFA3, 0xFA6}, {0xFA8, 0xFAB}, {0xFAD, 0xFB8},
    {0xFBA, 0xFBC}, {0xFC6, 0xFC6}, {0x102D, 0x1030}, {0x1032, 0x1037}, {0x1039, 0x103A}, {0x103D, 0x103E},
    {0x1058, 0x1059}, {0x105E, 0x1060}, {0x1071, 0x1074}, {0x1082, 0x1082}, {0x1085, 0x1086}, {0x108D, 0x108D},
    {0x109D, 0x109D}, {0x135D, 0x135F}, {0x1712, 0x1714}, {0x1732, 0x1734}, {0x1752, 0x1753}, {0x1772, 0x1773},
    {0x17B4, 0x17B5}, {0x17B7, 0x17BD}, {0x17C6, 0x17C6}, {0x17C9, 0x17D3}, {0x17DD, 0x17DD}, {0x180B, 0x180D},
    {0x18A9, 0x18A9}, {0x1920, 0x1922}, {0x1927, 0x1928}, {0x1932, 0x1932}, {0x1939, 0x193B}, {0x1A17, 0x1A18},
    {0x1A1B, 0x1A1B}, {0x1A56, 0x1A56}, {0x1A58, 0x1A5E}, {0x1A60, 0x1A60}, {0x1A62, 0x1A62}, {0x1A65, 0x1A6C},
    {0x1A73, 0x1A7C}, {0x1A7F, 0x1A7F}, {0x1AB0, 0x1ABD}, {0x1B00, 0x1B03}, {0x1B34, 0x1B34}, {0x1B36, 0x1B3A},
    {0x1B3C, 0x1B3C}, {0x1B42, 0x1B42}, {0x1B6B, 0x1B73}, {0x1B80, 0x1B81}, {0x1BA2, 0x1BA5}, {0x1BA8, 0x1BA9},
    {0x1BAB, 0x1BAD}, {0x1BE6, 0x1BE6}, {0x1BE8, 0x1BE9}, {0x1BED, 0x1BED}, {0x1BEF, 0x1BF1}, {0x1C2C, 0x1C33},
    {0x1C36, 0x1C37}, {0x1CD0, 0x1CD2}, {0x1CD4, 0x1CE0}, {0x1CE2, 0x1CE8}, {0x1CED, 0x1CED}, {0x1CF4, 0x1CF4},
    {0x1CF8, 0x1CF9}, {0x1DC0, 0x1DF5}, {0x1DFC, 0x1DFF}, {0x20D0, 0x20DC}, {0x20E1, 0x20E1}, {0x20E5, 0x20F0},
    {0x2CEF, 0x2CF1}, {0x2D7F, 0x2D7F}, {0x2DE0, 0x2DFF}, {0x302A, 0x302D}, {0x3099, 0x309A}, {0xA66F, 0xA66F},
    {0xA674, 0xA67D}, {0xA69E, 0xA69F}, {0xA6F0, 0xA6F1}, {0xA802, 0xA802}, {0xA806, 0xA806}, {0xA80B, 0xA80B},
    {0xA825, 0xA826}, {0xA8C4, 0xA8C4}, {0xA8E0, 0xA8F1}, {0xA926, 0xA92D}, {0xA947, 0xA951}, {0xA980, 0xA982},
    {0xA9B3, 0xA9B3}, {0xA9B6, 0xA9B9}, {0xA9BC, 0xA9BC}, {0xA9E5, 0xA9E5}, {0xAA29, 0xAA2E}, {0xAA31, 0xAA32},
    {0xAA35, 0xAA36}, {0xAA43, 0xAA43}, {0xAA4C, 0xAA4C}, {0xAA7C, 0xAA7C}, {0xAAB0, 0xAAB0}, {0xAAB2, 0xAAB4},
    {0xAAB7, 0xAAB8}, {0xAABE, 0xAABF}, {0xAAC1, 0xAAC1}, {0xAAEC, 0xAAED}, {0xAAF6, 0xAAF6}, {0xABE5, 0xABE5},
    {0xABE8, 0xABE8}, {0xABED, 0xABED}, {0xFB1E, 0xFB1E}, {0xFE00, 0xFE0F}, {0xFE20, 0xFE2F}, {0x101FD, 0x101FD},
    {0x102E0, 0x102E0}, {0x10376, 0x1037A}, {0x10A01, 0x10A03}, {0x10A05, 0x10A06}, {0x10A0C, 0x10A0F},
    {0x10A38, 0x10A3A}, {0x10A3F, 0x10A3F}, {0x10AE5, 0x10AE6}, {0x11001, 0x11001}, {0x11038, 0x11046},
    {0x1107F, 0x11081}, {0x110B3, 0x110B6}, {0x110B9, 0x110BA}, {0x11100, 0x11102}, {0x11127, 0x1112B},
    {0x1112D, 0x1112D}, {0x11130, 0x11134}, {0x11173, 0x11173}, {0x11180, 0x11181}, {0x111B6, 0x111BE},
    {0x111CA, 0x111CC}, {0x1122F, 0x11231}, {0x11234, 0x11234}, {0x11236, 0x11237}, {0x112DF, 0x112DF},
    {0x112E3, 0x112EA}, {0x11300, 0x11301}, {0x1133C, 0x1133C}, {0x11340, 0x11340}, {0x11366, 0x1136C},
    {0x11370, 0x11374}, {0x114B3, 0x114B8}, {0x114BA, 0x114BA}, {0x114BF, 0x114C0}, {0x114C2, 0x114C3},
    {0x115B2, 0x115B5}, {0x115BC, 0x115BD}, {0x115BF, 0x115C0}, {0x115DC, 0x115DD}, {0x11633, 0x1163A},
    {0x1163D, 0x1163D}, {0x1163F, 0x11640}, {0x116AB, 0x116AB}, {0x116AD, 0x116AD}, {0x116B0, 0x116B5},
    {0x116B7, 0x116B7}, {0x1171D, 0x1171F}, {0x11722, 0x11725}, {0x11727, 0x1172B}, {0x16AF0, 0x16AF4},
    {0x16B30, 0x16B36}, {0x16F8F, 0x16F92}, {0x1BC9D, 0x1BC9E}, {0x1D167, 0x1D169}, {0x1D17B, 0x1D182},
    {0x1D185, 0x1D18B}, {0x1D1AA, 0x1D1AD}, {0x1D242, 0x1D244}, {0x1DA00, 0x1DA36}, {0x1DA3B, 0x1DA6C},
    {0x1DA75, 0x1DA75}, {0x1DA84, 0x1DA84}, {0x1DA9B, 0x1DA9F}, {0x1DAA1, 0x1DAAF}, {0x1E8D0, 0x1E8D6},
    {0xE0100, 0xE01EF},
};
// handle_chinese_chars puts spaces around these (tokenizers is_chinese_char): 7 ranges
static const UnicodeRange bert_cjk[] = {
    {0x3400, 0x4DBF}, {0x4E00, 0x9FFF}, {0xF900, 0xFAFF}, {0x20000, 0x2A6DF}, {0x2A700, 0x2B81F},
    {0x2B920, 0x2CEAF}, {0x2F800, 0x2FA1F},
};


static int is_removed(uint32_t cp) { return unicode_in_ranges(bert_removed, COUNT(bert_removed), cp); }
static int is_space(uint32_t cp) { return cp == ' ' || unicode_in_ranges(bert_spaces, COUNT(bert_spaces), cp); }
static int is_punctuation(uint32_t cp) { return unicode_in_ranges(bert_punctuation, COUNT(bert_punctuation), cp); }
static int is_nonspacing_mark(uint32_t cp) { return cp >= 0x300 && unicode_in_ranges(bert_nonspacing_marks, COUNT(bert_nonspacing_marks), cp); }
static int is_cjk(uint32_t cp) { return cp >= 0x3400 && unicode_in_ranges(bert_cjk, COUNT(bert_cjk), cp); }

// ----------------------------------------------------------------------------
// String helpers (StrBuf is in common.h)

// Python's str.replace(from, to) on s, in place.
static void str_replace_all(StrBuf* s, const char* from, const char* to) {
    size_t nf = strlen(from), nt = strlen(to);
    if (!s->s || !strstr(s->s, from)) return;
    StrBuf r = {0};
    const char* p = s->s;
    for (const char* hit; (hit = strstr(p, from)); p = hit + nf) {
        strbuf_append(&r, p, (size_t)(hit - p));
        strbuf_append(&r, to, nt);
    }
    strbuf_append(&r, p, strlen(p));
    free(s->s);
    *s = r;
}

// Copies s into out (cap bytes, NUL-terminated, truncated) and returns its full length.
static size_t str_export(const StrBuf* s, char* out, size_t cap) {
    if (cap > 0) {
        size_t n = s->len < cap - 1 ? s->len : cap - 1;
        if (n) memcpy(out, s->s, n);
        out[n] = 0;
    }
    return s->len;
}

// ----------------------------------------------------------------------------
// Vocabulary: id -> text, and an open-addressing hash table text -> id

static uint32_t hash_string(const char* s) {
    uint32_t h = 2166136261u; // FNV-1a
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static void vocab_insert(BertTokenizer* tok, int32_t id) {
    uint32_t i = hash_string(tok->id_to_token[id]) & (tok->cap - 1);
    while (tok->slots[i] >= 0) {
        // vocab.txt may repeat a line: the later id wins, as load_vocab's dict does
        if (strcmp(tok->id_to_token[tok->slots[i]], tok->id_to_token[id]) == 0) break;
        i = (i + 1) & (tok->cap - 1);
    }
    tok->slots[i] = id;
}

int32_t bert_token_id(const BertTokenizer* tok, const char* token) {
    uint32_t i = hash_string(token) & (tok->cap - 1);
    for (; tok->slots[i] >= 0; i = (i + 1) & (tok->cap - 1))
        if (strcmp(tok->id_to_token[tok->slots[i]], token) == 0) return tok->slots[i];
    return -1;
}

// Room for n ids in the hash table at load factor <= 1/2 (rebuilt when the vocabulary grows).
static void vocab_rehash(BertTokenizer* tok, int32_t n) {
    uint32_t cap = 1024;
    while (cap < 2u * (uint32_t)n) cap *= 2;
    if (cap == tok->cap) return;
    free(tok->slots);
    tok->cap = cap;
    tok->slots = xmalloc(sizeof(int32_t) * cap);
    for (uint32_t i = 0; i < cap; i++) tok->slots[i] = -1;
    for (int32_t id = 0; id < tok->n_vocab; id++) vocab_insert(tok, id);
}

static int is_special(const BertTokenizer* tok, int32_t id) {
    for (int i = 0; i < tok->n_special; i++)
        if (tok->special[i] == id) return 1;
    return 0;
}

void bert_tokenizer_add_special(BertTokenizer* tok, const char* token, int32_t* id_out) {
    int32_t id = bert_token_id(tok, token);
    if (id < 0) {
        id = tok->n_vocab;
        tok->added = xrealloc(tok->added, sizeof(char*) * (size_t)(tok->n_added + 1));
        tok->added[tok->n_added++] = xstrdup(token);
        tok->id_to_token = xrealloc(tok->id_to_token, sizeof(char*) * (size_t)(tok->n_vocab + 1));
        tok->id_to_token[tok->n_vocab++] = tok->added[tok->n_added - 1];
        vocab_rehash(tok, tok->n_vocab);
        vocab_insert(tok, id);
    }
    if (!is_special(tok, id)) {
        if (tok->n_special == BERT_MAX_SPECIAL) fatal("bert_tokenizer_add_special: more than %d special tokens", BERT_MAX_SPECIAL);
        tok->special[tok->n_special++] = id;
    }
    if (id_out) *id_out = id;
}

// A tokenizer_config.json token entry: "[UNK]" or {"content": "[UNK]", ...}.
static const char* config_token(const JsonValue* cfg, const char* key, const char* fallback) {
    const JsonValue* v = cfg ? json_get(cfg, key) : NULL;
    if (v && v->type == JSON_STRING) return v->string;
    if (v && v->type == JSON_OBJECT) {
        const char* s = json_get_string(v, "content");
        if (s) return s;
    }
    return fallback;
}

int bert_tokenizer_load(BertTokenizer* tok, const char* folder, char* err) {
    memset(tok, 0, sizeof(*tok));
    char path[4200];
    snprintf(path, sizeof(path), "%s/vocab.txt", folder);
    uint8_t* data;
    size_t size;
    if (read_file(path, &data, &size, err) != 0) return -1;
    tok->pool = (char*)data;
    // one token per line ("\n" or "\r\n"), id = line number; a last line without "\n" counts
    int32_t lines = 0;
    for (size_t i = 0; i < size; i++) lines += data[i] == '\n';
    if (size && data[size - 1] != '\n') lines++;
    if (lines == 0) {
        bert_tokenizer_free(tok);
        return set_error(err, "%s: empty vocabulary", path);
    }
    tok->id_to_token = xmalloc(sizeof(char*) * (size_t)lines);
    char* p = tok->pool;
    for (int32_t id = 0; id < lines; id++) {
        char* nl = memchr(p, '\n', (size_t)(tok->pool + size - p));
        char* end = nl ? nl : tok->pool + size;
        if (end > p && end[-1] == '\r') end[-1] = 0;
        *end = 0; // read_file leaves a NUL after the data, so the last line has room
        tok->id_to_token[id] = p;
        p = end + 1;
    }
    tok->n_vocab = lines;
    vocab_rehash(tok, lines);

    tok->lowercase = 1;
    tok->chinese_chars = 1;
    tok->strip_accents = -1;
    JsonDoc doc;
    const JsonValue* cfg = NULL;
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", folder);
    int have_cfg = path_is_file(path);
    if (have_cfg) {
        if (json_read_file(&doc, path, err) != 0) {
            bert_tokenizer_free(tok);
            return -1;
        }
        cfg = &doc.root;
        json_get_bool(cfg, "do_lower_case", &tok->lowercase);
        json_get_bool(cfg, "tokenize_chinese_chars", &tok->chinese_chars);
        json_get_bool(cfg, "strip_accents", &tok->strip_accents); // null: follow lowercase
        json_get_bool(cfg, "clean_up_tokenization_spaces", &tok->clean_up_spaces);
    }
    if (tok->strip_accents < 0) tok->strip_accents = tok->lowercase;
    // the named special tokens, in the order transformers registers them
    struct { const char* key; const char* fallback; int32_t* id; } named[] = {
        {"unk_token", "[UNK]", &tok->unk_id}, {"sep_token", "[SEP]", &tok->sep_id}, {"pad_token", "[PAD]", &tok->pad_id},
        {"cls_token", "[CLS]", &tok->cls_id}, {"mask_token", "[MASK]", &tok->mask_id},
    };
    int rc = 0;
    for (int i = 0; i < COUNT(named) && rc == 0; i++) {
        const char* t = config_token(cfg, named[i].key, named[i].fallback);
        if (bert_token_id(tok, t) < 0) rc = set_error(err, "%s/vocab.txt: no %s \"%s\" in the vocabulary", folder, named[i].key, t);
        else bert_tokenizer_add_special(tok, t, named[i].id);
    }
    if (have_cfg) json_free(&doc);
    if (rc != 0) bert_tokenizer_free(tok);
    return rc;
}

void bert_tokenizer_free(BertTokenizer* tok) {
    for (int i = 0; i < tok->n_added; i++) free(tok->added[i]);
    free(tok->added);
    free(tok->id_to_token);
    free(tok->slots);
    free(tok->pool);
    memset(tok, 0, sizeof(*tok));
}

// ----------------------------------------------------------------------------
// Encoding: special tokens, BertNormalizer, BertPreTokenizer, WordPiece

// BertNormalizer on code points (normalizers/bert.rs): clean_text (drop controls, whitespace to
// ' '), handle_chinese_chars (' ' around CJK ideographs), strip_accents (NFD, then drop
// nonspacing marks), lowercase; in that order.
static void normalize_cps(const BertTokenizer* tok, const uint32_t* in, int n, CodePoints* out) {
    CodePoints a = {0};
    for (int i = 0; i < n; i++) {
        uint32_t c = in[i];
        if (is_removed(c)) continue;
        if (is_space(c)) c = ' ';
        if (tok->chinese_chars && is_cjk(c)) {
            codepoints_push(&a, ' ');
            codepoints_push(&a, c);
            codepoints_push(&a, ' ');
        } else {
            codepoints_push(&a, c);
        }
    }
    CodePoints b = {0};
    if (tok->strip_accents) {
        CodePoints d = {0};
        unicode_nfd(a.v, a.n, &d);
        for (int i = 0; i < d.n; i++)
            if (!is_nonspacing_mark(d.v[i])) codepoints_push(&b, d.v[i]);
        free(d.v);
    } else {
        b = a;
        a.v = NULL;
    }
    for (int i = 0; i < b.n; i++) {
        if (tok->lowercase) unicode_lowercase_push(out, b.v[i]);
        else codepoints_push(out, b.v[i]);
    }
    free(a.v);
    free(b.v);
}

size_t bert_normalize(const BertTokenizer* tok, const char* text, char* out, size_t cap) {
    CodePoints in = {0}, norm = {0};
    utf8_decode(text, strlen(text), &in);
    normalize_cps(tok, in.v, in.n, &norm);
    StrBuf s = {0};
    char buf[4];
    for (int i = 0; i < norm.n; i++) strbuf_append(&s, buf, (size_t)utf8_encode(norm.v[i], buf));
    size_t n = str_export(&s, out, cap);
    free(s.s);
    free(in.v);
    free(norm.v);
    return n;
}

typedef struct {
    int32_t* v;
    int n, cap;
} Ids;

static void ids_push(Ids* a, int32_t x) {
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 64;
        a->v = xrealloc(a->v, sizeof(int32_t) * (size_t)a->cap);
    }
    a->v[a->n++] = x;
}

// WordPiece on one word of n code points (models/wordpiece): the longest vocabulary entry at the
// start, then the longest "##" entry at each following position; any position without a match
// makes the whole word [UNK], and so does a word of more than 100 characters.
static void wordpiece(const BertTokenizer* tok, const uint32_t* cps, int n, Ids* out) {
    if (n > BERT_MAX_CHARS_PER_WORD) {
        ids_push(out, tok->unk_id);
        return;
    }
    char word[4 * BERT_MAX_CHARS_PER_WORD], piece[2 + 4 * BERT_MAX_CHARS_PER_WORD + 1];
    int at[BERT_MAX_CHARS_PER_WORD + 1], len = 0; // at[i]: byte offset of character i
    for (int i = 0; i < n; i++) {
        at[i] = len;
        len += utf8_encode(cps[i], word + len);
    }
    at[n] = len;
    int mark = out->n;
    for (int start = 0; start < n;) {
        int end = n, id = -1;
        for (; end > start; end--) {
            int plen = start > 0 ? 2 : 0; // a piece that continues a word is looked up as "##piece"
            memcpy(piece, "##", 2);
            memcpy(piece + plen, word + at[start], (size_t)(at[end] - at[start]));
            piece[plen + at[end] - at[start]] = 0;
            if ((id = bert_token_id(tok, piece)) >= 0) break;
        }
        if (id < 0) {
            out->n = mark;
            ids_push(out, tok->unk_id);
            return;
        }
        ids_push(out, id);
        start = end;
    }
}

// One run of raw text between special tokens: normalize, split on whitespace, isolate each
// punctuation character (BertPreTokenizer), WordPiece every word.
static void encode_text(const BertTokenizer* tok, const char* text, size_t len, Ids* out) {
    CodePoints raw = {0}, norm = {0};
    utf8_decode(text, len, &raw);
    normalize_cps(tok, raw.v, raw.n, &norm);
    int start = -1; // first character of the current word, -1 between words
    for (int i = 0; i <= norm.n; i++) {
        uint32_t c = i < norm.n ? norm.v[i] : ' ';
        int space = is_space(c), punct = !space && is_punctuation(c);
        if (space || punct) {
            if (start >= 0) wordpiece(tok, norm.v + start, i - start, out);
            start = -1;
            if (punct) wordpiece(tok, &c, 1, out);
        } else if (start < 0) {
            start = i;
        }
    }
    free(raw.v);
    free(norm.v);
}

// The special tokens are split out of the raw text first (AddedVocabulary: leftmost match, the
// longest at that position; case-sensitive, not normalized), the text between them is encoded.
static void encode_all(const BertTokenizer* tok, const char* text, Ids* out) {
    size_t len = strlen(text), seg = 0;
    for (size_t i = 0; i < len;) {
        int best = -1;
        size_t best_len = 0;
        for (int s = 0; s < tok->n_special; s++) {
            const char* t = tok->id_to_token[tok->special[s]];
            size_t tl = strlen(t);
            if (tl > best_len && tl <= len - i && memcmp(text + i, t, tl) == 0) {
                best = s;
                best_len = tl;
            }
        }
        if (best < 0) {
            i++;
            continue;
        }
        encode_text(tok, text + seg, i - seg, out);
        ids_push(out, tok->special[best]);
        i += best_len;
        seg = i;
    }
    encode_text(tok, text + seg, len - seg, out);
}

int bert_tokenize(const BertTokenizer* tok, const char* text, int32_t* ids, int max_ids) {
    Ids all = {0};
    encode_all(tok, text, &all);
    for (int i = 0; i < all.n && i < max_ids; i++) ids[i] = all.v[i];
    int n = all.n;
    free(all.v);
    return n;
}

int bert_encode(const BertTokenizer* tok, const char* text, int max_len, int32_t* ids) {
    if (max_len < 2) fatal("bert_encode: max_len %d leaves no room for [CLS] and [SEP]", max_len);
    Ids all = {0};
    encode_all(tok, text, &all);
    int n = all.n < max_len - 2 ? all.n : max_len - 2; // truncation from the right
    ids[0] = tok->cls_id;
    if (n) memcpy(ids + 1, all.v, sizeof(int32_t) * (size_t)n);
    ids[n + 1] = tok->sep_id;
    free(all.v);
    return n + 2;
}

// ----------------------------------------------------------------------------
// Decoding

size_t bert_decode(const BertTokenizer* tok, const int32_t* ids, int n, int skip_special, char* out, size_t cap) {
    // tokenizers decoders/wordpiece.rs cleanup(), run on each token with its leading space
    static const char* const wordpiece_cleanup[][2] = {
        {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"},
        {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
    };
    // transformers clean_up_tokenization(), run on the whole text when clean_up_spaces is set
    static const char* const transformers_cleanup[][2] = {
        {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"},
        {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
    };
    StrBuf text = {0};
    strbuf_append(&text, "", 0);
    int first = 1;
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_vocab) continue;
        if (skip_special && is_special(tok, id)) continue;
        const char* t = tok->id_to_token[id];
        StrBuf piece = {0};
        if (first) strbuf_append(&piece, t, strlen(t)); // the first token keeps even a leading "##"
        else if (strncmp(t, "##", 2) == 0) strbuf_append(&piece, t + 2, strlen(t) - 2);
        else {
            strbuf_append(&piece, " ", 1);
            strbuf_append(&piece, t, strlen(t));
        }
        for (int r = 0; r < COUNT(wordpiece_cleanup); r++)
            str_replace_all(&piece, wordpiece_cleanup[r][0], wordpiece_cleanup[r][1]);
        strbuf_append(&text, piece.s, piece.len);
        free(piece.s);
        first = 0;
    }
    if (tok->clean_up_spaces)
        for (int r = 0; r < COUNT(transformers_cleanup); r++)
            str_replace_all(&text, transformers_cleanup[r][0], transformers_cleanup[r][1]);
    size_t len = str_export(&text, out, cap);
    free(text.s);
    return len;
}

// ----------------------------------------------------------------------------
// Configs

// A layer_norm_eps of a config, or `fallback` (transformers' default) when absent.
static int config_eps(const JsonValue* obj, double fallback, float* out, const char* path, char* err) {
    double v;
    if (json_config_number_or(obj, "layer_norm_eps", NORM_EPS_MIN, NORM_EPS_MAX, fallback, &v, path, err) < 0) return -1;
    *out = (float)v;
    return 0;
}

// hidden_act must be the exact GELU, the only activation these checkpoints use.
static int check_gelu(const JsonValue* obj, const char* path, char* err) {
    const char* act = obj ? json_get_string(obj, "hidden_act") : NULL;
    if (act && strcmp(act, "gelu") != 0) return set_error(err, "%s: hidden_act \"%s\" is not supported (only gelu)", path, act);
    return 0;
}

// The BERT fields of a config object; `defaults` holds the class's defaults (BertConfig, BlipTextConfig).
static int bert_config_parse(BertConfig* c, const JsonValue* obj, const BertConfig* defaults, const char* path, char* err) {
    *c = *defaults;
    struct { const char* key; int* dst; int lo, hi; } ints[] = {
        {"vocab_size", &c->vocab_size, 1, BERT_MAX_VOCAB}, {"hidden_size", &c->hidden, 1, BERT_MAX_HIDDEN},
        {"intermediate_size", &c->intermediate, 1, BERT_MAX_INTERMEDIATE}, {"num_hidden_layers", &c->layers, 1, BERT_MAX_LAYERS},
        {"num_attention_heads", &c->heads, 1, BERT_MAX_HIDDEN},
        {"max_position_embeddings", &c->max_positions, 2, BERT_MAX_POSITIONS}, // [CLS] and [SEP] at least
        {"type_vocab_size", &c->type_vocab_size, 1, BERT_MAX_TOKEN_TYPES},
    };
    // type_vocab_size only where the class has token types (BertConfig; BLIP's text decoder has none)
    int n = (int)(sizeof(ints) / sizeof(ints[0])) - (defaults->type_vocab_size ? 0 : 1);
    for (int i = 0; i < n; i++)
        if (json_config_int_or(obj, ints[i].key, ints[i].lo, ints[i].hi, *ints[i].dst, ints[i].dst, path, err) < 0) return -1;
    if (config_eps(obj, defaults->eps, &c->eps, path, err) != 0) return -1;
    if (check_gelu(obj, path, err)) return -1;
    const char* pos = obj ? json_get_string(obj, "position_embedding_type") : NULL;
    if (pos && strcmp(pos, "absolute") != 0)
        return set_error(err, "%s: position_embedding_type \"%s\" is not supported (only absolute)", path, pos);
    if (c->hidden % c->heads != 0 || c->hidden / c->heads > ATTENTION_MAX_HS)
        return set_error(err, "%s: \"hidden_size\" %d does not split into %d heads (\"num_attention_heads\") of at most %d",
                         path, c->hidden, c->heads, ATTENTION_MAX_HS);
    return 0;
}

int bert_config_read(BertConfig* c, const char* path, char* err) {
    JsonDoc doc;
    if (json_read_file(&doc, path, err) != 0) return -1;
    // transformers BertConfig's defaults (bert-base)
    BertConfig defaults = {.vocab_size = 30522, .hidden = 768, .intermediate = 3072, .layers = 12, .heads = 12,
                           .max_positions = 512, .type_vocab_size = 2, .encoder_hidden = 0, .eps = 1e-12f};
    int rc = bert_config_parse(c, &doc.root, &defaults, path, err);
    json_free(&doc);
    return rc;
}

// ----------------------------------------------------------------------------
// BERT layers

// Declares the parameters of a BERT under `prefix` ("text_decoder.bert." or "").
static void bert_build(Bert* b, Weights* w, const char* prefix) {
    const BertConfig* c = &b->cfg;
    char name[NAME_MAX_LEN];
    int D = c->hidden;
    b->word_embeddings = tensor_build(w, name_fmt(name, "%sembeddings.word_embeddings.weight", prefix), 2,
                                      (int64_t[]){c->vocab_size, D});
    b->position_embeddings = tensor_build(w, name_fmt(name, "%sembeddings.position_embeddings.weight", prefix), 2,
                                          (int64_t[]){c->max_positions, D});
    b->token_type_embeddings = c->type_vocab_size ? tensor_build(w, name_fmt(name, "%sembeddings.token_type_embeddings.weight", prefix), 2,
                                                                 (int64_t[]){c->type_vocab_size, D})
                                                  : NULL;
    b->emb_ln = layer_norm_build(w, name_fmt(name, "%sembeddings.LayerNorm", prefix), D, c->eps);
    for (int l = 0; l < c->layers; l++) {
        BertLayer* L = &b->layers[l];
        char p[NAME_MAX_LEN];
        name_fmt(p, "%sencoder.layer.%d", prefix, l);
        L->q = linear_build(w, name_fmt(name, "%s.attention.self.query", p), D, D, 1);
        L->k = linear_build(w, name_fmt(name, "%s.attention.self.key", p), D, D, 1);
        L->v = linear_build(w, name_fmt(name, "%s.attention.self.value", p), D, D, 1);
        L->attn_out = linear_build(w, name_fmt(name, "%s.attention.output.dense", p), D, D, 1);
        L->attn_ln = layer_norm_build(w, name_fmt(name, "%s.attention.output.LayerNorm", p), D, c->eps);
        if (c->encoder_hidden) {
            L->cq = linear_build(w, name_fmt(name, "%s.crossattention.self.query", p), D, D, 1);
            L->ck = linear_build(w, name_fmt(name, "%s.crossattention.self.key", p), c->encoder_hidden, D, 1);
            L->cv = linear_build(w, name_fmt(name, "%s.crossattention.self.value", p), c->encoder_hidden, D, 1);
            L->cross_out = linear_build(w, name_fmt(name, "%s.crossattention.output.dense", p), D, D, 1);
            L->cross_ln = layer_norm_build(w, name_fmt(name, "%s.crossattention.output.LayerNorm", p), D, c->eps);
        }
        L->inter = linear_build(w, name_fmt(name, "%s.intermediate.dense", p), D, c->intermediate, 1);
        L->out = linear_build(w, name_fmt(name, "%s.output.dense", p), c->intermediate, D, 1);
        L->out_ln = layer_norm_build(w, name_fmt(name, "%s.output.LayerNorm", p), D, c->eps);
    }
}

// Scratch floats of bert_embed + bert_layer_forward for N*L tokens.
static size_t bert_scratch_floats(const BertConfig* c, int N, int L) {
    size_t T = (size_t)N * L;
    // q, k, v, attention, sublayer out: 5 (T, D); the FFN (T, intermediate); the ids and token
    // types of the embeddings; alignment slack
    return 5 * T * c->hidden + T * c->intermediate + 2 * T + T * c->hidden + 16 * ARENA_ALIGN;
}

// x (N, L, D) = LayerNorm(word_embeddings[ids] + position_embeddings[0..L) (+ token_type[0])).
// ids: N*L ids, host.
static void bert_embed(const Bert* b, const int32_t* ids, int N, int L, float* x, Arena* scratch) {
    const BertConfig* c = &b->cfg;
    size_t T = (size_t)N * L, mark = arena_mark(scratch);
    int D = c->hidden;
    if (L > c->max_positions) fatal("bert: %d tokens, the position table has %d", L, c->max_positions);
    for (size_t i = 0; i < T; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size) fatal("bert: token id %d outside the vocabulary of %d", ids[i], c->vocab_size);
    int32_t* d_ids = arena_alloc(scratch, sizeof(int32_t) * T, "bert ids");
    copy_to_device(d_ids, ids, sizeof(int32_t) * T);
    embedding_forward(x, d_ids, b->word_embeddings, (int)T, c->vocab_size, D, DT_F32);
    for (int n = 0; n < N; n++) add_forward(x + (size_t)n * L * D, x + (size_t)n * L * D, b->position_embeddings, (size_t)L * D, DT_F32);
    if (b->token_type_embeddings) {
        // token_type_ids are all 0 for one sentence: add row 0 to every token (a gather of row 0)
        int32_t* zeros = arena_alloc(scratch, sizeof(int32_t) * T, "bert token types");
        device_memset_zero(zeros, sizeof(int32_t) * T);
        float* tt = arena_floats(scratch, T * D, "bert token type rows");
        embedding_forward(tt, zeros, b->token_type_embeddings, (int)T, c->type_vocab_size, D, DT_F32);
        add_forward(x, x, tt, T * D, DT_F32);
    }
    layer_norm(&b->emb_ln, x, x, (int)T);
    arena_release(scratch, mark);
}

// One post-LN BERT layer on x (N, L, D), in place:
//   x = LayerNorm(x + attention.output.dense(self_attention(x)))         causal for the decoder
//   x = LayerNorm(x + crossattention.output.dense(attention(q(x), K, V)))  when cross_k is given
//   x = LayerNorm(x + output.dense(gelu(intermediate.dense(x))))
// cross_k, cross_v: (Lk, D) keys and values of one encoder sequence that all N sequences attend
// to (BLIP's beams share one image), or NULL.
static void bert_layer_forward(const Bert* b, const BertLayer* ly, float* x, int N, int L, int causal, const float* cross_k,
                               const float* cross_v, int Lk, Arena* scratch) {
    const BertConfig* c = &b->cfg;
    size_t T = (size_t)N * L, mark = arena_mark(scratch);
    int D = c->hidden, NH = c->heads, HS = D / NH;
    float* q = arena_floats(scratch, T * D, "bert q");
    float* k = arena_floats(scratch, T * D, "bert k");
    float* v = arena_floats(scratch, T * D, "bert v");
    float* a = arena_floats(scratch, T * D, "bert attention");
    float* h = arena_floats(scratch, T * D, "bert sublayer");
    linear(&ly->q, q, x, (int)T);
    linear(&ly->k, k, x, (int)T);
    linear(&ly->v, v, x, (int)T);
    attention_forward(a, q, k, v, N, NH, L, L, HS, causal, DT_F32);
    linear(&ly->attn_out, h, a, (int)T);
    add_forward(x, x, h, T * D, DT_F32);
    layer_norm(&ly->attn_ln, x, x, (int)T);
    if (cross_k) {
        linear(&ly->cq, q, x, (int)T);
        for (int n = 0; n < N; n++) // every sequence against the same image tokens, no mask
            attention_forward(a + (size_t)n * L * D, q + (size_t)n * L * D, cross_k, cross_v, 1, NH, L, Lk, HS, 0, DT_F32);
        linear(&ly->cross_out, h, a, (int)T);
        add_forward(x, x, h, T * D, DT_F32);
        layer_norm(&ly->cross_ln, x, x, (int)T);
    }
    float* f = arena_floats(scratch, T * c->intermediate, "bert intermediate");
    linear(&ly->inter, f, x, (int)T);
    gelu_forward(f, f, T * c->intermediate, DT_F32);
    linear(&ly->out, h, f, (int)T);
    add_forward(x, x, h, T * D, DT_F32);
    layer_norm(&ly->out_ln, x, x, (int)T);
    arena_release(scratch, mark);
}

// ----------------------------------------------------------------------------
// BLIP: config and parameters

// OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (transformers image_utils.py), BlipImageProcessor's defaults
static const float BLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float BLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};
#define BLIP_MAX_BEAMS 16

// config.json of a BlipForConditionalGeneration: text_config and vision_config, each field
// defaulting as BlipTextConfig / BlipVisionConfig do. *tied: the LM head's weight is the word
// embedding table (tie_word_embeddings of the BlipConfig or of its text_config, both true by default).
static int blip_config_read(Blip* m, const char* path, int* tied, char* err) {
    JsonDoc doc;
    if (json_read_file(&doc, path, err) != 0) return -1;
    const JsonValue* root = &doc.root;
    const JsonValue* tc = json_get(root, "text_config");
    const JsonValue* vc = json_get(root, "vision_config");
    if (tc && tc->type != JSON_OBJECT) tc = NULL;
    if (vc && vc->type != JSON_OBJECT) vc = NULL;
    int rc = 0;
    BlipVisionConfig* v = &m->vision_cfg;
    // BlipVisionConfig's defaults
    *v = (BlipVisionConfig){.hidden = 768, .intermediate = 3072, .layers = 12, .heads = 12, .image_size = 384, .patch_size = 16};
    struct { const char* key; int* dst; int hi; } ints[] = {
        {"hidden_size", &v->hidden, BERT_MAX_HIDDEN}, {"intermediate_size", &v->intermediate, BERT_MAX_INTERMEDIATE},
        {"num_hidden_layers", &v->layers, BERT_MAX_LAYERS}, {"num_attention_heads", &v->heads, BERT_MAX_HIDDEN},
        {"image_size", &v->image_size, BLIP_MAX_IMAGE}, {"patch_size", &v->patch_size, BLIP_MAX_IMAGE},
    };
    for (int i = 0; i < COUNT(ints) && rc == 0; i++)
        if (json_config_int_or(vc, ints[i].key, 1, ints[i].hi, *ints[i].dst, ints[i].dst, path, err) < 0) rc = -1;
    if (rc == 0) rc = config_eps(vc, 1e-5, &v->eps, path, err);
    if (rc == 0) rc = check_gelu(vc, path, err);
    if (rc == 0 && (v->image_size < v->patch_size || v->image_size % v->patch_size != 0))
        rc = set_error(err, "%s: vision_config \"image_size\" %d is not a multiple of \"patch_size\" %d", path, v->image_size,
                       v->patch_size);
    if (rc == 0 && 1 + (v->image_size / v->patch_size) * (v->image_size / v->patch_size) > BLIP_MAX_VISION_TOKENS)
        rc = set_error(err, "%s: vision_config \"image_size\" %d in \"patch_size\" %d patches makes more than %d tokens", path,
                       v->image_size, v->patch_size, BLIP_MAX_VISION_TOKENS);
    if (rc == 0 && (v->hidden % v->heads != 0 || v->hidden / v->heads > ATTENTION_MAX_HS))
        rc = set_error(err, "%s: vision_config \"hidden_size\" %d does not split into %d heads (\"num_attention_heads\") of at "
                       "most %d", path, v->hidden, v->heads, ATTENTION_MAX_HS);
    // BlipTextConfig's defaults
    BertConfig text_defaults = {.vocab_size = 30524, .hidden = 768, .intermediate = 3072, .layers = 12, .heads = 8,
                                .max_positions = 512, .type_vocab_size = 0, .encoder_hidden = 0, .eps = 1e-12f};
    if (rc == 0) rc = bert_config_parse(&m->text_cfg, tc, &text_defaults, path, err);
    m->text_cfg.encoder_hidden = v->hidden; // BlipConfig.__post_init__: the cross-attention reads the image tokens
    int last_id = m->text_cfg.vocab_size - 1;
    if (rc == 0 && json_config_int_or(tc, "bos_token_id", 0, last_id, 30522, &m->bos_id, path, err) < 0) rc = -1;
    if (rc == 0 && json_config_int_or(tc, "sep_token_id", 0, last_id, 102, &m->sep_id, path, err) < 0) rc = -1;
    if (rc == 0 && (m->bos_id > last_id || m->sep_id > last_id)) // the defaults, against a small vocabulary
        rc = set_error(err, "%s: \"bos_token_id\" %d or \"sep_token_id\" %d is outside the vocabulary of %d", path, m->bos_id,
                       m->sep_id, m->text_cfg.vocab_size);
    int tie_top = 1, tie_text = 1;
    json_get_bool(root, "tie_word_embeddings", &tie_top);
    if (tc) json_get_bool(tc, "tie_word_embeddings", &tie_text);
    *tied = tie_top || tie_text;
    json_free(&doc);
    return rc;
}

static void blip_build(Blip* m, Weights* w, int tied) {
    const BlipVisionConfig* c = &m->vision_cfg;
    char name[NAME_MAX_LEN];
    int D = c->hidden, G = c->image_size / c->patch_size;
    BlipVision* vis = &m->vision;
    vis->patch = conv2d_build(w, "vision_model.embeddings.patch_embedding", 3, D, c->patch_size, c->patch_size, 0, 1);
    vis->class_embedding = tensor_build(w, "vision_model.embeddings.class_embedding", 3, (int64_t[]){1, 1, D});
    vis->position_embedding = tensor_build(w, "vision_model.embeddings.position_embedding", 3, (int64_t[]){1, 1 + G * G, D});
    for (int l = 0; l < c->layers; l++) {
        BlipVisionLayer* L = &vis->layers[l];
        char p[NAME_MAX_LEN];
        name_fmt(p, "vision_model.encoder.layers.%d", l);
        L->ln1 = layer_norm_build(w, name_fmt(name, "%s.layer_norm1", p), D, c->eps);
        L->qkv = linear_build(w, name_fmt(name, "%s.self_attn.qkv", p), D, 3 * D, 1);
        L->proj = linear_build(w, name_fmt(name, "%s.self_attn.projection", p), D, D, 1);
        L->ln2 = layer_norm_build(w, name_fmt(name, "%s.layer_norm2", p), D, c->eps);
        L->fc1 = linear_build(w, name_fmt(name, "%s.mlp.fc1", p), D, c->intermediate, 1);
        L->fc2 = linear_build(w, name_fmt(name, "%s.mlp.fc2", p), c->intermediate, D, 1);
    }
    vis->post_ln = layer_norm_build(w, "vision_model.post_layernorm", D, c->eps);

    const BertConfig* t = &m->text_cfg;
    bert_build(&m->bert, w, "text_decoder.bert.");
    m->head_dense = linear_build(w, "text_decoder.cls.predictions.transform.dense", t->hidden, t->hidden, 1);
    m->head_ln = layer_norm_build(w, "text_decoder.cls.predictions.transform.LayerNorm", t->hidden, t->eps);
    // transformers ties cls.predictions.decoder.{weight,bias} to the word embeddings and to
    // cls.predictions.bias, and save_pretrained leaves the tied copies out of the file
    m->decoder_weight = tied ? m->bert.word_embeddings
                             : tensor_build(w, "text_decoder.cls.predictions.decoder.weight", 2, (int64_t[]){t->vocab_size, t->hidden});
    m->decoder_bias = tensor_build(w, "text_decoder.cls.predictions.bias", 1, (int64_t[]){t->vocab_size});
}

void blip_free(Blip* m) {
    weights_free(&m->w);
    free(m->vision.layers);
    free(m->bert.layers);
    bert_tokenizer_free(&m->tok);
    memset(m, 0, sizeof(*m));
}

int blip_load(Blip* m, const char* folder, char* err) {
    memset(m, 0, sizeof(*m));
    char path[4200];
    int tied;
    snprintf(path, sizeof(path), "%s/config.json", folder);
    if (blip_config_read(m, path, &tied, err) != 0) return -1;
    if (bert_tokenizer_load(&m->tok, folder, err) != 0) return -1;
    // salesforce/BLIP init_tokenizer: bos_token [DEC], additional_special_tokens [ENC]
    int32_t dec;
    bert_tokenizer_add_special(&m->tok, "[DEC]", &dec);
    bert_tokenizer_add_special(&m->tok, "[ENC]", NULL);
    if (dec != m->bos_id || m->tok.n_vocab > m->text_cfg.vocab_size) {
        set_error(err, "%s/vocab.txt: [DEC] is id %d and the vocabulary has %d tokens, but config.json says bos_token_id %d "
                  "and vocab_size %d", folder, dec, m->tok.n_vocab, m->bos_id, m->text_cfg.vocab_size);
        blip_free(m);
        return -1;
    }
    m->bert.cfg = m->text_cfg;
    m->vision.layers = xcalloc((size_t)m->vision_cfg.layers, sizeof(BlipVisionLayer));
    m->bert.layers = xcalloc((size_t)m->text_cfg.layers, sizeof(BertLayer));
    SafeTensors st;
    if (safetensors_open_dir(&st, folder, "model", NULL, err) != 0) {
        blip_free(m);
        return -1;
    }
    weights_init(&m->w, "blip", DT_F32);
    blip_build(m, &m->w, tied);
    // every tensor checked against the file before the parameter memory is allocated
    int rc = weights_check(&m->w, &st, "", err);
    if (rc == 0) {
        weights_allocate(&m->w);
        blip_build(m, &m->w, tied);
        weights_finish(&m->w);
        rc = weights_load(&m->w, &st, "", err);
    }
    safetensors_close(&st);
    if (rc != 0) blip_free(m);
    return rc;
}

int blip_image_tokens(const Blip* m) {
    int G = m->vision_cfg.image_size / m->vision_cfg.patch_size;
    return 1 + G * G;
}

// ----------------------------------------------------------------------------
// BLIP: vision encoder (BlipVisionModel)

static size_t blip_vision_scratch_floats(const Blip* m, int N) {
    const BlipVisionConfig* c = &m->vision_cfg;
    int S = c->image_size, P = c->patch_size, G = S / P;
    size_t T = (size_t)N * (1 + G * G);
    // patches; x, h, qkv (3), q, kv (2), k, v, attention: 11 (T, D); the MLP (T, intermediate)
    return (size_t)N * c->hidden * G * G + conv2d_scratch_elems(3, S, S, P, P, 0) + 11 * T * c->hidden +
           T * c->intermediate + 16 * ARENA_ALIGN;
}

// The embeddings and the first n_layers layers; out = post_layernorm of that when post_ln is set.
static void vision_run(const Blip* m, const float* pixels, int N, int n_layers, int post_ln, float* out, Arena* scratch) {
    const BlipVisionConfig* c = &m->vision_cfg;
    const BlipVision* vis = &m->vision;
    int D = c->hidden, S = c->image_size, G = S / c->patch_size, GG = G * G, T = 1 + GG, HS = D / c->heads;
    size_t NT = (size_t)N * T, mark = arena_mark(scratch);
    // patch_embedding: Conv2d(3, D, P, stride P)                  (N, D, G, G)
    float* patches = arena_floats(scratch, (size_t)N * D * GG, "blip patches");
    conv2d(&vis->patch, patches, pixels, N, S, S, scratch);
    // x = [class_embedding, patches^T] + position_embedding      (N, T, D)
    float* x = arena_floats(scratch, NT * D, "blip vision x");
    for (int n = 0; n < N; n++) {
        float* x_n = x + (size_t)n * T * D;
        copy_device_to_device(x_n, vis->class_embedding, sizeof(float) * D);
        transpose_forward(x_n + D, patches + (size_t)n * D * GG, 1, D, GG, DT_F32);
        add_forward(x_n, x_n, vis->position_embedding, (size_t)T * D, DT_F32);
    }
    float* h = arena_floats(scratch, NT * D, "blip vision h");
    float* qkv = arena_floats(scratch, NT * 3 * D, "blip vision qkv");
    float* q = arena_floats(scratch, NT * D, "blip vision q");
    float* kv = arena_floats(scratch, NT * 2 * D, "blip vision kv");
    float* k = arena_floats(scratch, NT * D, "blip vision k");
    float* v = arena_floats(scratch, NT * D, "blip vision v");
    float* a = arena_floats(scratch, NT * D, "blip vision attention");
    float* f = arena_floats(scratch, NT * c->intermediate, "blip vision mlp");
    for (int l = 0; l < n_layers; l++) {
        const BlipVisionLayer* L = &vis->layers[l];
        // x = x + projection(attention(layer_norm1(x))); qkv rows hold [q | k | v], each NH*HS wide
        layer_norm(&L->ln1, h, x, (int)NT);
        linear(&L->qkv, qkv, h, (int)NT);
        split_forward(q, kv, qkv, (int)NT, D, 2 * D, DT_F32);
        split_forward(k, v, kv, (int)NT, D, D, DT_F32);
        attention_forward(a, q, k, v, N, c->heads, T, T, HS, 0, DT_F32);
        linear(&L->proj, h, a, (int)NT);
        add_forward(x, x, h, NT * D, DT_F32);
        // x = x + fc2(gelu(fc1(layer_norm2(x))))
        layer_norm(&L->ln2, h, x, (int)NT);
        linear(&L->fc1, f, h, (int)NT);
        gelu_forward(f, f, NT * c->intermediate, DT_F32);
        linear(&L->fc2, h, f, (int)NT);
        add_forward(x, x, h, NT * D, DT_F32);
    }
    // last_hidden_state: post_layernorm on every token (the decoder attends to all of them)
    if (post_ln) layer_norm(&vis->post_ln, out, x, (int)NT);
    else copy_device_to_device(out, x, sizeof(float) * NT * D);
    arena_release(scratch, mark);
}

void blip_vision_forward(const Blip* m, const float* pixels, int N, float* image_embeds, Arena* scratch) {
    vision_run(m, pixels, N, m->vision_cfg.layers, 1, image_embeds, scratch);
}

void blip_vision_hidden_state(const Blip* m, const float* pixels, int N, int n, float* out, Arena* scratch) {
    if (n < 0 || n > m->vision_cfg.layers) fatal("blip_vision_hidden_state: no hidden state %d", n);
    vision_run(m, pixels, N, n, 0, out, scratch);
}

// ----------------------------------------------------------------------------
// BLIP: text decoder (BlipTextLMHeadModel)

// Per image: each decoder layer's cross-attention keys and values of the image tokens, computed
// once (transformers keeps them in its EncoderDecoderCache after the first step).
typedef struct {
    float** k; // (layers) of (T, D)
    float** v;
    int T;
} CrossKV;

static void cross_kv_compute(const Blip* m, const float* image_embeds, CrossKV* kv, Arena* arena) {
    const BertConfig* c = &m->text_cfg;
    kv->T = blip_image_tokens(m);
    kv->k = xmalloc(sizeof(float*) * (size_t)c->layers);
    kv->v = xmalloc(sizeof(float*) * (size_t)c->layers);
    for (int l = 0; l < c->layers; l++) {
        kv->k[l] = arena_floats(arena, (size_t)kv->T * c->hidden, "blip cross keys");
        kv->v[l] = arena_floats(arena, (size_t)kv->T * c->hidden, "blip cross values");
        linear(&m->bert.layers[l].ck, kv->k[l], image_embeds, kv->T);
        linear(&m->bert.layers[l].cv, kv->v[l], image_embeds, kv->T);
    }
}

static void cross_kv_free(CrossKV* kv) {
    free(kv->k);
    free(kv->v);
}

// N sequences of L tokens (ids: N*L, host) through the embeddings and n_layers layers: x (N, L, D).
static void decoder_hidden(const Blip* m, const CrossKV* kv, const int32_t* ids, int N, int L, int n_layers, float* x,
                           Arena* scratch) {
    bert_embed(&m->bert, ids, N, L, x, scratch);
    for (int l = 0; l < n_layers; l++)
        bert_layer_forward(&m->bert, &m->bert.layers[l], x, N, L, 1, kv->k[l], kv->v[l], kv->T, scratch);
}

// The LM head on R rows: logits (R, V) = decoder(LayerNorm(gelu(dense(hidden)))) + bias.
static void decoder_head(const Blip* m, const float* hidden, int R, float* logits, Arena* scratch) {
    const BertConfig* c = &m->text_cfg;
    size_t mark = arena_mark(scratch);
    float* h = arena_floats(scratch, (size_t)R * c->hidden, "blip head");
    linear(&m->head_dense, h, hidden, R);
    gelu_forward(h, h, (size_t)R * c->hidden, DT_F32);
    layer_norm(&m->head_ln, h, h, R);
    Linear decoder = {m->decoder_weight, m->decoder_bias, c->hidden, c->vocab_size, m->w.dtype, NULL};
    linear(&decoder, logits, h, R);
    arena_release(scratch, mark);
}

static size_t decoder_scratch_floats(const Blip* m, int N, int L) {
    const BertConfig* c = &m->text_cfg;
    // x; the layers; the last rows, the head and the logits
    return (size_t)N * L * c->hidden + bert_scratch_floats(c, N, L) + 2 * (size_t)N * c->hidden +
           (size_t)N * c->vocab_size + 8 * ARENA_ALIGN;
}

size_t blip_scratch_bytes(const Blip* m, int num_beams, int max_length) {
    const BlipVisionConfig* v = &m->vision_cfg;
    size_t T = (size_t)blip_image_tokens(m);
    size_t floats = 3 * (size_t)v->image_size * v->image_size + T * v->hidden // pixels, image embeddings
                    + 2 * (size_t)m->text_cfg.layers * T * m->text_cfg.hidden // cross keys and values
                    + blip_vision_scratch_floats(m, 1) + decoder_scratch_floats(m, num_beams, max_length) +
                    (16 + 2 * (size_t)m->text_cfg.layers) * ARENA_ALIGN;
    return floats * sizeof(float);
}

// One sequence through the embeddings and n_layers layers, then the head when logits is set.
static void decoder_run(const Blip* m, const float* image_embeds, const int32_t* ids, int L, int n_layers, float* hidden,
                        float* logits, Arena* scratch) {
    size_t mark = arena_mark(scratch);
    CrossKV kv;
    cross_kv_compute(m, image_embeds, &kv, scratch);
    float* x = arena_floats(scratch, (size_t)L * m->text_cfg.hidden, "blip decoder x");
    decoder_hidden(m, &kv, ids, 1, L, n_layers, x, scratch);
    if (hidden) copy_device_to_device(hidden, x, sizeof(float) * L * m->text_cfg.hidden);
    if (logits) decoder_head(m, x, L, logits, scratch);
    cross_kv_free(&kv);
    arena_release(scratch, mark);
}

void blip_decoder_forward(const Blip* m, const float* image_embeds, const int32_t* ids, int L, float* hidden, float* logits,
                          Arena* scratch) {
    decoder_run(m, image_embeds, ids, L, m->text_cfg.layers, hidden, logits, scratch);
}

void blip_decoder_hidden_state(const Blip* m, const float* image_embeds, const int32_t* ids, int L, int n, float* out,
                               Arena* scratch) {
    if (n < 0 || n > m->text_cfg.layers) fatal("blip_decoder_hidden_state: no hidden state %d", n);
    decoder_run(m, image_embeds, ids, L, n, out, NULL, scratch);
}

// ----------------------------------------------------------------------------
// BLIP: generation (transformers generation/utils.py, 5.24)

BlipGenerateParams blip_default_params(void) {
    BlipGenerateParams p = {.num_beams = 3, .max_length = 20, .min_length = 5, .length_penalty = 1.0f,
                            .repetition_penalty = 1.0f, .early_stopping = 0};
    return p;
}

// What generation needs per image: the cross-attention cache, scratch, and a host buffer of logits.
typedef struct {
    const Blip* m;
    CrossKV kv;
    Arena* scratch;
    float* logits; // (beams, V) host
} Search;

// The next-token logits of N sequences of L tokens (ids: N rows of `stride` ids, host) into
// s->logits (N, V): the whole prefix runs, and only the last position goes through the head.
static void search_step(Search* s, const int32_t* ids, int stride, int N, int L) {
    const Blip* m = s->m;
    int D = m->text_cfg.hidden, V = m->text_cfg.vocab_size;
    size_t mark = arena_mark(s->scratch);
    int32_t* packed = xmalloc(sizeof(int32_t) * (size_t)N * L);
    for (int n = 0; n < N; n++) memcpy(packed + (size_t)n * L, ids + (size_t)n * stride, sizeof(int32_t) * L);
    float* x = arena_floats(s->scratch, (size_t)N * L * D, "blip decoder x");
    decoder_hidden(m, &s->kv, packed, N, L, m->text_cfg.layers, x, s->scratch);
    float* last = arena_floats(s->scratch, (size_t)N * D, "blip last rows");
    for (int n = 0; n < N; n++) copy_device_to_device(last + (size_t)n * D, x + ((size_t)n * L + L - 1) * D, sizeof(float) * D);
    float* logits = arena_floats(s->scratch, (size_t)N * V, "blip logits");
    decoder_head(m, last, N, logits, s->scratch);
    copy_to_host(s->logits, logits, sizeof(float) * N * V);
    free(packed);
    arena_release(s->scratch, mark);
}

// The logits processors generate() builds from these settings, on one row of scores:
// RepetitionPenaltyLogitsProcessor (each distinct token of the sequence: s < 0 ? s * p : s / p)
// and MinLengthLogitsProcessor ([SEP] to -inf while the sequence is shorter than min_length).
static void process_scores(const Blip* m, const BlipGenerateParams* p, const int32_t* seq, int len, float* scores) {
    if (p->repetition_penalty != 1.0f) {
        for (int i = 0; i < len; i++) {
            int seen = 0;
            for (int j = 0; j < i && !seen; j++) seen = seq[j] == seq[i];
            if (seen) continue; // torch's gather/scatter penalises a repeated token once
            float* s = &scores[seq[i]];
            *s = *s < 0 ? *s * p->repetition_penalty : *s / p->repetition_penalty;
        }
    }
    if (len < p->min_length) scores[m->sep_id] = -INFINITY;
}

// torch.log_softmax in place: x - max - log(sum(exp(x - max))).
static void log_softmax_row(float* x, int n) {
    float max = -INFINITY;
    for (int i = 0; i < n; i++) max = x[i] > max ? x[i] : max;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += expf(x[i] - max);
    float lse = (float)log(sum);
    for (int i = 0; i < n; i++) x[i] = (x[i] - max) - lse;
}

// _sample with do_sample=False: append the argmax (the first, on ties) until [SEP] or max_length.
static int greedy_search(Search* s, const BlipGenerateParams* p, int32_t* seq, int len) {
    const Blip* m = s->m;
    int V = m->text_cfg.vocab_size;
    while (len < p->max_length) {
        search_step(s, seq, len, 1, len);
        process_scores(m, p, seq, len, s->logits);
        int best = 0;
        for (int i = 1; i < V; i++)
            if (s->logits[i] > s->logits[best]) best = i;
        seq[len++] = best;
        if (best == m->sep_id) break;
    }
    return len;
}

typedef struct {
    float score;
    int beam, token;
} Candidate;

// _beam_search (generation/utils.py) for one image, written from its semantics:
//   - each step scores every continuation of every running beam: beam score + log_softmax(logits),
//     after the logits processors; the first step has one beam (transformers starts num_beams
//     copies, all but one at -1e9, so only that one's continuations can win);
//   - the best K = 2 * num_beams candidates are kept (ties: the lower beam, then the lower id);
//   - a candidate that ends in [SEP] (or reaches max_length) finishes only if it is among the
//     first num_beams of the K; its score is then divided by generated_length^length_penalty and
//     it joins the finished list, which keeps the best num_beams (earlier entries first on ties);
//   - the best num_beams unfinished candidates are the next running beams;
//   - the search stops when every candidate finished (max_length), or when num_beams hypotheses
//     are finished and the best running score / (generated length so far)^length_penalty is not
//     above the worst finished score (early_stopping False's heuristic), or at once with
//     early_stopping True;
//   - the answer is the best finished hypothesis.
static int beam_search(Search* s, const BlipGenerateParams* p, const int32_t* start, int P, int32_t* out) {
    const Blip* m = s->m;
    int V = m->text_cfg.vocab_size, nb = p->num_beams, K = 2 * nb, maxlen = p->max_length;
    int32_t* run = xmalloc(sizeof(int32_t) * (size_t)nb * maxlen);   // running beams, rows of maxlen
    int32_t* next = xmalloc(sizeof(int32_t) * (size_t)nb * maxlen);
    int32_t* fin = xmalloc(sizeof(int32_t) * (size_t)(nb + 1) * maxlen); // finished, best first
    float run_score[BLIP_MAX_BEAMS], next_score[BLIP_MAX_BEAMS], fin_score[BLIP_MAX_BEAMS + 1];
    int fin_len[BLIP_MAX_BEAMS + 1], n_fin = 0, n_run = 1;
    Candidate cand[2 * BLIP_MAX_BEAMS];
    memcpy(run, start, sizeof(int32_t) * P);
    run_score[0] = 0.0f;
    for (int cur = P;; cur++) {
        search_step(s, run, maxlen, n_run, cur);
        int n_cand = 0;
        for (int b = 0; b < n_run; b++) {
            float* row = s->logits + (size_t)b * V;
            log_softmax_row(row, V);
            process_scores(m, p, run + (size_t)b * maxlen, cur, row);
            for (int t = 0; t < V; t++) {
                float score = row[t] + run_score[b];
                // insert into the sorted top K; scanning in (beam, token) order and requiring
                // strictly better keeps the earlier candidate first on ties
                if (n_cand == K && !(score > cand[K - 1].score)) continue;
                int i = n_cand < K ? n_cand++ : K - 1;
                for (; i > 0 && score > cand[i - 1].score; i--) cand[i] = cand[i - 1];
                cand[i] = (Candidate){score, b, t};
            }
        }
        int hits[2 * BLIP_MAX_BEAMS], all_hit = 1;
        for (int i = 0; i < n_cand; i++) {
            hits[i] = cand[i].token == m->sep_id || cur + 1 >= maxlen;
            all_hit &= hits[i];
        }
        float norm = powf((float)(cur + 1 - P), p->length_penalty);
        for (int i = 0; i < nb && i < n_cand; i++) {
            if (!hits[i]) continue;
            float score = cand[i].score / norm;
            int at = n_fin;
            while (at > 0 && score > fin_score[at - 1]) at--;
            if (at >= nb) continue;
            memmove(fin + (size_t)(at + 1) * maxlen, fin + (size_t)at * maxlen, sizeof(int32_t) * (size_t)(n_fin - at) * maxlen);
            memmove(fin_score + at + 1, fin_score + at, sizeof(float) * (size_t)(n_fin - at));
            memmove(fin_len + at + 1, fin_len + at, sizeof(int) * (size_t)(n_fin - at));
            int32_t* h = fin + (size_t)at * maxlen;
            memcpy(h, run + (size_t)cand[i].beam * maxlen, sizeof(int32_t) * cur);
            h[cur] = cand[i].token;
            fin_score[at] = score;
            fin_len[at] = cur + 1;
            if (n_fin < nb) n_fin++;
        }
        int n_next = 0;
        for (int i = 0; i < n_cand && n_next < nb; i++) {
            if (hits[i]) continue;
            int32_t* h = next + (size_t)n_next * maxlen;
            memcpy(h, run + (size_t)cand[i].beam * maxlen, sizeof(int32_t) * cur);
            h[cur] = cand[i].token;
            next_score[n_next++] = cand[i].score;
        }
        int32_t* swap = run;
        run = next;
        next = swap;
        memcpy(run_score, next_score, sizeof(float) * (size_t)n_next);
        n_run = n_next;
        if (all_hit || n_run == 0) break;
        if (n_fin == nb) {
            float best_possible = run_score[0] / powf((float)(cur + 1 - P), p->length_penalty);
            if (p->early_stopping || !(best_possible > fin_score[nb - 1])) break;
        }
    }
    int len = fin_len[0];
    memcpy(out, fin, sizeof(int32_t) * len);
    free(run);
    free(next);
    free(fin);
    return len;
}

int blip_generate(const Blip* m, const float* pixels, const int32_t* prompt, int n_prompt, const BlipGenerateParams* p,
                  int32_t* out_ids, char* err) {
    const BertConfig* c = &m->text_cfg;
    int P = 1 + n_prompt;
    if (p->num_beams < 1 || p->num_beams > BLIP_MAX_BEAMS)
        return set_error(err, "blip: num_beams %d is outside [1, %d]", p->num_beams, BLIP_MAX_BEAMS);
    if (p->max_length <= P || p->max_length > c->max_positions)
        return set_error(err, "blip: max_length %d must exceed the prompt's %d tokens and be at most %d", p->max_length, P,
                         c->max_positions);
    if (!(p->repetition_penalty > 0)) return set_error(err, "blip: repetition_penalty must be positive");
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->vocab_size) return set_error(err, "blip: prompt token id %d is not in the vocabulary", prompt[i]);
    int32_t* seq = xmalloc(sizeof(int32_t) * (size_t)p->max_length);
    seq[0] = m->bos_id; // generate() writes bos over the tokenizer's [CLS]
    if (n_prompt) memcpy(seq + 1, prompt, sizeof(int32_t) * n_prompt);

    const BlipVisionConfig* v = &m->vision_cfg;
    Arena scratch;
    arena_init(&scratch, "blip scratch", blip_scratch_bytes(m, p->num_beams, p->max_length), backend_current() == BACKEND_CUDA);
    size_t n_pixels = 3 * (size_t)v->image_size * v->image_size;
    float* d_pixels = arena_floats(&scratch, n_pixels, "blip pixels");
    copy_to_device(d_pixels, pixels, sizeof(float) * n_pixels);
    float* image_embeds = arena_floats(&scratch, (size_t)blip_image_tokens(m) * v->hidden, "blip image embeddings");
    blip_vision_forward(m, d_pixels, 1, image_embeds, &scratch);
    Search s = {.m = m, .scratch = &scratch};
    cross_kv_compute(m, image_embeds, &s.kv, &scratch);
    s.logits = xmalloc(sizeof(float) * (size_t)p->num_beams * c->vocab_size);
    int len = p->num_beams == 1 ? greedy_search(&s, p, seq, P) : beam_search(&s, p, seq, P, seq);
    memcpy(out_ids, seq, sizeof(int32_t) * len);
    free(s.logits);
    cross_kv_free(&s.kv);
    arena_free(&scratch);
    free(seq);
    return len;
}

// ----------------------------------------------------------------------------
// BLIP: preprocessing and captions

int blip_preprocess(const Blip* m, const Image* img, float* out, char* err) {
    int S = m->vision_cfg.image_size;
    Image rgb = {0}, sized = {0};
    // BlipImageProcessor: convert_to_rgb (alpha composited over white), resize to S x S
    // (size {"height": 384, "width": 384}: no aspect ratio kept, no crop) with PIL BICUBIC
    if (image_to_rgb8_over_white(img, &rgb, err) != 0) return -1;
    int rc = image_resize_pil(&rgb, S, S, RESAMPLE_BICUBIC, &sized, err);
    if (rc == 0) image_to_chw_normalized(&sized, BLIP_MEAN, BLIP_STD, out);
    image_free(&rgb);
    image_free(&sized);
    return rc;
}

int blip_caption(const Blip* m, const Image* img, const char* prompt, const BlipGenerateParams* p, char* caption, size_t cap,
                 char* err) {
    int S = m->vision_cfg.image_size;
    float* pixels = xmalloc(sizeof(float) * 3 * (size_t)S * S);
    int rc = blip_preprocess(m, img, pixels, err);
    int32_t* ids = xmalloc(sizeof(int32_t) * (size_t)(p->max_length > 1 ? p->max_length : 1));
    int32_t* prompt_ids = NULL;
    int n_prompt = 0;
    if (rc == 0 && prompt && *prompt) {
        // processor(text=prompt): [CLS] ids [SEP]; generate() replaces [CLS] by [DEC] and drops [SEP]
        n_prompt = bert_tokenize(&m->tok, prompt, NULL, 0);
        prompt_ids = xmalloc(sizeof(int32_t) * (size_t)n_prompt);
        bert_tokenize(&m->tok, prompt, prompt_ids, n_prompt);
    }
    int n = rc == 0 ? blip_generate(m, pixels, prompt_ids, n_prompt, p, ids, err) : -1;
    if (n >= 0) bert_decode(&m->tok, ids, n, 1, caption, cap);
    free(prompt_ids);
    free(ids);
    free(pixels);
    return n >= 0 ? 0 : -1;
}

// ----------------------------------------------------------------------------
// MiniLM sentence embeddings (sentence-transformers: Transformer, Pooling(mean), Normalize)

void minilm_free(MiniLM* m) {
    weights_free(&m->w);
    free(m->bert.layers);
    bert_tokenizer_free(&m->tok);
    memset(m, 0, sizeof(*m));
}

// sentence_bert_config.json's max_seq_length, and 1_Pooling/config.json's mode, which must be mean.
static int minilm_read_st_configs(MiniLM* m, const char* folder, char* err) {
    char path[4200];
    JsonDoc doc;
    m->max_seq_length = m->cfg.max_positions;
    snprintf(path, sizeof(path), "%s/sentence_bert_config.json", folder);
    if (path_is_file(path)) {
        if (json_read_file(&doc, path, err) != 0) return -1;
        // [CLS] and [SEP] need 2; sentence-transformers truncates to the model's positions as well
        int n;
        int rc = json_config_int_or(&doc.root, "max_seq_length", 2, BERT_MAX_POSITIONS, m->cfg.max_positions, &n, path, err);
        json_free(&doc);
        if (rc < 0) return -1;
        m->max_seq_length = n < m->cfg.max_positions ? n : m->cfg.max_positions;
    }
    snprintf(path, sizeof(path), "%s/1_Pooling/config.json", folder);
    if (path_is_file(path)) {
        if (json_read_file(&doc, path, err) != 0) return -1;
        static const char* const others[] = {"pooling_mode_cls_token", "pooling_mode_max_tokens",
                                             "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                                             "pooling_mode_lasttoken"};
        int mean = 0, other = 0, rc = 0;
        json_get_bool(&doc.root, "pooling_mode_mean_tokens", &mean);
        for (int i = 0; i < COUNT(others); i++) {
            int on = 0;
            json_get_bool(&doc.root, others[i], &on);
            other |= on;
        }
        if (!mean || other) rc = set_error(err, "%s: only mean pooling (pooling_mode_mean_tokens alone) is supported", path);
        json_free(&doc);
        if (rc) return rc;
    }
    return 0;
}

int minilm_load(MiniLM* m, const char* folder, char* err) {
    memset(m, 0, sizeof(*m));
    char path[4200];
    snprintf(path, sizeof(path), "%s/config.json", folder);
    if (bert_config_read(&m->cfg, path, err) != 0) return -1;
    if (minilm_read_st_configs(m, folder, err) != 0) return -1;
    if (bert_tokenizer_load(&m->tok, folder, err) != 0) return -1;
    if (m->tok.n_vocab > m->cfg.vocab_size) {
        set_error(err, "%s/vocab.txt: %d tokens, but config.json says vocab_size %d", folder, m->tok.n_vocab, m->cfg.vocab_size);
        minilm_free(m);
        return -1;
    }
    m->bert.cfg = m->cfg;
    m->bert.layers = xcalloc((size_t)m->cfg.layers, sizeof(BertLayer));
    SafeTensors st;
    if (safetensors_open_dir(&st, folder, "model", NULL, err) != 0) {
        minilm_free(m);
        return -1;
    }
    // a BertModel saves "embeddings...."; a BertFor* model's file holds the same under "bert."
    const char* prefix = safetensors_find(&st, "bert.embeddings.word_embeddings.weight") ? "bert." : "";
    weights_init(&m->w, "minilm", DT_F32);
    bert_build(&m->bert, &m->w, "");
    // every tensor checked against the file before the parameter memory is allocated
    int rc = weights_check(&m->w, &st, prefix, err);
    if (rc == 0) {
        weights_allocate(&m->w);
        bert_build(&m->bert, &m->w, "");
        weights_finish(&m->w);
        rc = weights_load(&m->w, &st, prefix, err);
    }
    safetensors_close(&st);
    if (rc != 0) minilm_free(m);
    return rc;
}

void minilm_embed_ids(const MiniLM* m, const int32_t* ids, int L, float* out, float* hidden) {
    const BertConfig* c = &m->cfg;
    int D = c->hidden;
    Arena scratch;
    arena_init(&scratch, "minilm scratch", sizeof(float) * ((size_t)L * D + bert_scratch_floats(c, 1, L)),
               backend_current() == BACKEND_CUDA);
    float* x = arena_floats(&scratch, (size_t)L * D, "minilm x");
    bert_embed(&m->bert, ids, 1, L, x, &scratch);
    for (int l = 0; l < c->layers; l++) bert_layer_forward(&m->bert, &m->bert.layers[l], x, 1, L, 0, NULL, NULL, 0, &scratch);
    float* h = xmalloc(sizeof(float) * (size_t)L * D);
    copy_to_host(h, x, sizeof(float) * L * D);
    arena_free(&scratch);
    if (hidden) memcpy(hidden, h, sizeof(float) * L * D);
    // Pooling: the mean over every token of the sentence ([CLS] and [SEP] included: the attention
    // mask is 1 on them); Normalize: x / max(|x|, 1e-12)
    double norm2 = 0;
    for (int d = 0; d < D; d++) {
        double sum = 0;
        for (int i = 0; i < L; i++) sum += h[(size_t)i * D + d];
        out[d] = (float)(sum / L);
        norm2 += (double)out[d] * out[d];
    }
    double norm = sqrt(norm2);
    if (norm < 1e-12) norm = 1e-12;
    for (int d = 0; d < D; d++) out[d] = (float)(out[d] / norm);
    free(h);
}

void minilm_embed(const MiniLM* m, const char* text, float* out) {
    int32_t* ids = xmalloc(sizeof(int32_t) * (size_t)m->max_seq_length);
    int L = bert_encode(&m->tok, text, m->max_seq_length, ids);
    minilm_embed_ids(m, ids, L, out, NULL);
    free(ids);
}

float minilm_similarity(const MiniLM* m, const char* a, const char* b) {
    int D = m->cfg.hidden;
    float* ea = xmalloc(sizeof(float) * (size_t)D);
    float* eb = xmalloc(sizeof(float) * (size_t)D);
    minilm_embed(m, a, ea);
    minilm_embed(m, b, eb);
    // util.cos_sim normalises again; the embeddings already have length 1 up to rounding
    double dot = 0, na = 0, nb = 0;
    for (int d = 0; d < D; d++) {
        dot += (double)ea[d] * eb[d];
        na += (double)ea[d] * ea[d];
        nb += (double)eb[d] * eb[d];
    }
    free(ea);
    free(eb);
    return na > 0 && nb > 0 ? (float)(dot / (sqrt(na) * sqrt(nb))) : 0.0f;
}
