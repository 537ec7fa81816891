// tests/test_image.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_image[] = {{NULL, NULL}};
