// tests/test_safetensors.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_safetensors[] = {{NULL, NULL}};
