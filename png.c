// png.c: placeholder
#include "png.h"
