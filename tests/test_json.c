// tests/test_json.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_json[] = {{NULL, NULL}};
