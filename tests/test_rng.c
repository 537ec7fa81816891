// tests/test_rng.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_rng[] = {{NULL, NULL}};
