// tests/test_ops.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_ops[] = {{NULL, NULL}};
