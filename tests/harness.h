// tests/harness.h: state of the running test, shared by check.c and run_tests.c only.
#pragma once
typedef struct {
    int failed;            // a check failed
    int skipped;           // the test declared itself skipped
    int checks;            // checks run
    char skip_reason[256];
} TestState;
extern TestState g_test;
