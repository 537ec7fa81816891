// data.h: training data for the LoRA trainer: a Hugging Face `imagefolder` (images and
// metadata.jsonl), the resize and crop modes, and the caches. (Being written: see issue 6.)
#pragma once
