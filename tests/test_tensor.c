// tests/test_tensor.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_tensor[] = {{NULL, NULL}};
