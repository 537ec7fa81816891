// tests/test_yolo.c (placeholder until its tests land)
#include "check.h"
const TestCase tests_yolo[] = {{NULL, NULL}};
