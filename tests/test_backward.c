// tests/test_backward.c: (being written: see issue 6).
#include "check.h"

const TestCase tests_backward[] = {
    {NULL, NULL},
};
