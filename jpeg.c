// jpeg.c: see jpeg.h.
#include "jpeg.h"
