// tests/test_eval.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_eval[] = {{NULL, NULL}};
