// libFuzzer target for metadata.jsonl (data.c dataset_parse): any bytes must give a dataset or a
// one-line error, never a crash, and no accepted file_name may resolve outside the dataset folder.
// The folder is made once: build/fuzz/metadata_ds/ with a.png, sub/b.png and a link out of it.
//   make fuzz            (all targets, FUZZ_SECONDS each)
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../common.h"
#include "../../data.h"

#define FOLDER "metadata_ds" // relative to build/fuzz, where make fuzz runs the targets

static char g_real_folder[PATH_MAX];

static void make_folder(void) {
    char err[ERR_MAX];
    mkdir(FOLDER, 0755);
    mkdir(FOLDER "/sub", 0755);
    mkdir("metadata_outside", 0755);
    write_file_atomic(FOLDER "/a.png", "x", 1, err);
    write_file_atomic(FOLDER "/sub/b.png", "x", 1, err);
    write_file_atomic("metadata_outside/secret.png", "x", 1, err);
    unlink(FOLDER "/out.png");
    if (symlink("../metadata_outside/secret.png", FOLDER "/out.png") != 0) __builtin_trap();
    if (!realpath(FOLDER, g_real_folder)) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (!g_real_folder[0]) make_folder();
    Dataset d;
    char err[ERR_MAX] = "";
    const char* columns[2] = {"text", "prompt"};
    for (int skip = 0; skip < 2; skip++) {
        DatasetOptions o = {columns[size % 2], skip, 0};
        int rc = dataset_parse(&d, (const char*)data, size, FOLDER "/metadata.jsonl", FOLDER, &o, err);
        if (rc != 0) {
            if (err[0] == 0 || strchr(err, '\n')) __builtin_trap(); // a rejection says why, on one line
            continue;
        }
        for (int i = 0; i < d.count; i++) {
            char real[PATH_MAX];
            size_t n = strlen(g_real_folder);
            if (!realpath(d.items[i].file, real) || strncmp(real, g_real_folder, n) != 0 || real[n] != '/')
                __builtin_trap(); // an accepted image outside the folder
        }
        dataset_free(&d);
    }
    return 0;
}
