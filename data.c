// data.c: see data.h.
#include "data.h"
