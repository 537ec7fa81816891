// tests/test_jpeg.c: (being written: see issue 6).
#include "check.h"

const TestCase tests_jpeg[] = {
    {NULL, NULL},
};
