// tests/test_clip_vision.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_clip_vision[] = {{NULL, NULL}};
