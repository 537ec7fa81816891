// jpeg.h: a JPEG decoder (baseline and progressive, any chroma subsampling) on our own code,
// matching Pillow's decoding (libjpeg-turbo) sample for sample. (Being written: see issue 6.)
#pragma once
