// tests/test_train.c: (being written: see issue 6).
#include "check.h"

const TestCase tests_train[] = {
    {NULL, NULL},
};
