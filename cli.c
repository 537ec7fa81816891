// cli.c: table-driven long options. See cli.h.
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ops.h"
#include "rng.h"
#include "tensor.h"

static const Option* find_option(const Option* options, int count, const char* name) {
    for (int i = 0; i < count; i++)
        if (strcmp(options[i].name, name) == 0) return &options[i];
    return NULL;
}

static void format_value(const Option* o, char* buf, size_t cap) {
    switch (o->type) {
    case OPT_INT: snprintf(buf, cap, "%d", *(int*)o->target); break;
    case OPT_FLOAT: snprintf(buf, cap, "%g", *(float*)o->target); break;
    case OPT_DOUBLE: snprintf(buf, cap, "%g", *(double*)o->target); break;
    case OPT_STRING: snprintf(buf, cap, "%s", *(const char**)o->target ? *(const char**)o->target : "(none)"); break;
    case OPT_FLAG: snprintf(buf, cap, "%s", *(int*)o->target ? "on" : "off"); break;
    case OPT_SEED: snprintf(buf, cap, "%llu", (unsigned long long)*(uint64_t*)o->target); break;
    }
}

void options_print_help(const Option* options, int count, const char* usage) {
    printf("usage: %s\n\noptions:\n", usage);
    for (int i = 0; i < count; i++) {
        char def[256];
        format_value(&options[i], def, sizeof(def));
        const char* arg = options[i].type == OPT_INT || options[i].type == OPT_SEED ? " N" : options[i].type == OPT_FLOAT || options[i].type == OPT_DOUBLE ? " F" : options[i].type == OPT_STRING ? " S" : "";
        char left[64];
        snprintf(left, sizeof(left), "%s%s", options[i].name, arg);
        // a string option without a value has its default described in its help text
        int unset = options[i].type == OPT_STRING && !*(const char**)options[i].target;
        if (unset || options[i].type == OPT_FLAG) printf("  %-22s %s\n", left, options[i].help);
        else printf("  %-22s %s (default: %s)\n", left, options[i].help, def);
    }
    printf("  %-22s show this help\n", "--help");
}

void options_print_values(const Option* options, int count) {
    for (int i = 0; i < count; i++) {
        char v[256];
        format_value(&options[i], v, sizeof(v));
        printf("  %-20s = %s\n", options[i].name + 2, v);
    }
}

int options_parse(const Option* options, int count, int argc, char** argv, int first, const char* usage) {
    for (int i = first; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            options_print_help(options, count, usage);
            return 1;
        }
        const Option* o = find_option(options, count, argv[i]);
        if (!o) fatal("unknown option '%s' (see --help)", argv[i]);
        if (o->type == OPT_FLAG) {
            *(int*)o->target = 1;
            continue;
        }
        if (i + 1 >= argc) fatal("option %s needs a value", o->name);
        const char* v = argv[++i];
        char* end;
        errno = 0;
        if (o->type == OPT_INT) {
            long x = strtol(v, &end, 10);
            if (*v == 0 || *end != 0 || errno == ERANGE || x < -2147483647L || x > 2147483647L)
                fatal("option %s expects an integer, got '%s'", o->name, v);
            *(int*)o->target = (int)x;
        } else if (o->type == OPT_SEED) {
            if (torch_seed_parse(v, (uint64_t*)o->target) != 0)
                fatal("option %s expects an integer from -9223372036854775808 to 18446744073709551615 (torch's seed range), got '%s'",
                      o->name, v);
        } else if (o->type == OPT_FLOAT) {
            float x = strtof(v, &end);
            if (*v == 0 || *end != 0 || errno == ERANGE) fatal("option %s expects a number, got '%s'", o->name, v);
            *(float*)o->target = x;
        } else if (o->type == OPT_DOUBLE) {
            double x = strtod(v, &end);
            if (*v == 0 || *end != 0 || errno == ERANGE) fatal("option %s expects a number, got '%s'", o->name, v);
            *(double*)o->target = x;
        } else {
            *(const char**)o->target = v;
        }
    }
    return 0;
}

// "cpu" or "cuda" -> the backend, selected; a one-line error otherwise.
int precision_by_name(const char* name, const char* option) {
    if (strcmp(name, "fp32") == 0) return DT_F32;
    if (strcmp(name, "fp16") == 0) return DT_F16;
    if (strcmp(name, "bf16") == 0) return DT_BF16;
    fatal("%s: expected fp32, fp16 or bf16, got '%s'", option, name);
}

const char* precision_name(DType t) { return t == DT_F32 ? "fp32" : t == DT_F16 ? "fp16" : "bf16"; }

SdxlPrecision model_precision(const char* unet, const char* vae) {
    int gpu = backend_current() == BACKEND_CUDA;
    SdxlPrecision p;
    p.unet = strcmp(unet, "auto") == 0 ? (gpu ? DT_F16 : DT_F32) : (DType)precision_by_name(unet, "--precision");
    p.vae = strcmp(vae, "auto") == 0 ? (gpu ? DT_BF16 : DT_F32) : (DType)precision_by_name(vae, "--vae-precision");
    p.text = p.unet == DT_F32 ? DT_F32 : DT_F16;
    return p;
}

void backend_select_by_name(const char* name) {
    if (strcmp(name, "cpu") == 0) backend_select(BACKEND_CPU);
    else if (strcmp(name, "cuda") == 0) backend_select(BACKEND_CUDA);
    else fatal("--backend: expected cpu or cuda, got '%s'", name);
}

