// image.c: placeholder while its owner writes it
#include "image.h"
