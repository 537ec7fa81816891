// tests/test_optim.c: (being written: see issue 6).
#include "check.h"

const TestCase tests_optim[] = {
    {NULL, NULL},
};
