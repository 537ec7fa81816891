// tests/test_png.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_png[] = {{NULL, NULL}};
