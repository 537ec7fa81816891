// tests/test_gemm.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_gemm[] = {{NULL, NULL}};
