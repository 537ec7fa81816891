// train.h: the LoRA trainer (`sdxl train`). (Being written: see issue 6.)
#pragma once
