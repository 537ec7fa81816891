// optim.c: see optim.h.
#include "optim.h"
