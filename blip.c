// blip.c: placeholder while its owner writes it
#include "blip.h"
