// tests/test_blip.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_blip[] = {{NULL, NULL}};
