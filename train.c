// train.c: see train.h.
#include "train.h"
