# sdxl.c build.
#
#   make                 CPU build: ./sdxl and tests/run_tests
#   make test            build and run every test (CPU backend); ends with "N passed, N failed"
#   make CUDA=1          also compile kernels.cu with nvcc (-arch=sm_90; CUDA_ARCH=sm_80 to change)
#                        and link cuBLAS; `--backend cuda` on sdxl commands and tests/run_tests
#   make CUDA=1 DEBUG=1  synchronise after every kernel launch, so a fault names its kernel
#   make test CUDA=1     the same tests; CUDA-against-CPU tests run when a device is visible
#   make debug           ASan + UBSan build (./sdxl_debug, tests/run_tests_debug), then runs the tests
#   make bench           ./sdxl bench matmul
#   make fuzz            libFuzzer on the JSON, safetensors, PNG, JPEG and metadata.jsonl parsers and the config
#                        readers (clang; FUZZ_SECONDS=20)
#   make demo            everything that exists, end to end, to demo_out/ (see README)
#   make golden          regenerate tests/golden/ (needs Python with torch; never needed by `test`)
#   make clean
#
# CUDA is opt-in, never detected: CI has nvcc but no GPU, and what `make` builds must not depend
# on what happens to be installed. The reference path is compiled without fast-math and with
# -ffp-contract=off, so the compiler never fuses a*b+c on its own: where we want an FMA we call
# fmaf() (gemm.c, rng.c) and get the same bits on every machine. nvcc, by contrast, contracts to
# FMA by default (--fmad=true); the CUDA-against-CPU tolerances allow for that, and STRICT=1
# builds the kernels with --fmad=false for debugging.
# OpenMP is on by default (OMP=0 turns it off); results do not depend on the thread count.

CC ?= cc
NVCC ?= nvcc
CUDA_ARCH ?= sm_90
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC) 2>/dev/null))
OMP ?= 1

# -fno-math-errno and -fno-trapping-math change no value: they tell GCC that nobody reads errno
# after a math call or the floating-point exception flags, which lets it vectorise loops with
# selects (x > a ? x : a) and inline sqrtf. They are not fast-math: rounding stays IEEE-exact.
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -ffp-contract=off -fno-math-errno -fno-trapping-math
LDLIBS = -lz -lm

# Without OpenMP the `#pragma omp` lines are ignored by design (the loops run on one thread), so
# the warning that says so is turned off there and only there.
ifeq ($(OMP),1)
  CFLAGS_BASE += -fopenmp
  LDFLAGS_OMP = -fopenmp
  $(info ✓ OpenMP on (OMP=0 to turn off))
else
  CFLAGS_BASE += -Wno-unknown-pragmas
endif

LIB_SRC = common.c tensor.c ops.c gemm.c json.c safetensors.c png.c rng.c weights.c layers.c \
          unicode.c tokenizer.c sample.c vae.c clip.c sdxl.c lora.c pipeline.c image.c yolo.c blip.c eval.c \
          optim.c jpeg.c data.c train.c plot.c
CLI_SRC = main.c cli.c bench.c demo.c
TEST_SRC = $(wildcard tests/*.c)
HEADERS = $(wildcard *.h tests/*.h)

ifeq ($(CUDA),1)
  BUILD = build/cuda
  CFLAGS = $(CFLAGS_BASE) -O3 -g -DUSE_CUDA
  NVCCFLAGS = -O3 -arch=$(CUDA_ARCH) -std=c++17 -Xcompiler -Wall -DUSE_CUDA -lineinfo
  ifeq ($(STRICT),1)
    NVCCFLAGS += --fmad=false
  endif
  ifeq ($(DEBUG),1)
    NVCCFLAGS += -DSYNC_LAUNCHES
  endif
  CUDA_OBJ = $(BUILD)/kernels.o
  CUDA_LIBS = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
  $(info ✓ CUDA on: nvcc -arch=$(CUDA_ARCH), cuBLAS, from $(CUDA_HOME))
else
  BUILD = build/cpu
  CFLAGS = $(CFLAGS_BASE) -O3 -g
endif

LIB_OBJ = $(LIB_SRC:%.c=$(BUILD)/%.o) $(CUDA_OBJ)
CLI_OBJ = $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ = $(TEST_SRC:tests/%.c=$(BUILD)/tests/%.o)

# Remember which configuration built ./sdxl, so switching CUDA=1 on or off relinks it, and the
# compiler flags of each build folder, so changing them recompiles.
MODE_STAMP = build/mode
$(shell mkdir -p build; echo "$(BUILD)" | cmp -s - $(MODE_STAMP) || echo "$(BUILD)" > $(MODE_STAMP))
FLAGS_STAMP = $(BUILD)/flags
$(shell mkdir -p $(BUILD); echo "$(CC) $(CFLAGS) $(NVCCFLAGS)" | cmp -s - $(FLAGS_STAMP) || echo "$(CC) $(CFLAGS) $(NVCCFLAGS)" > $(FLAGS_STAMP))

.PHONY: all test debug bench demo golden fuzz clean
all: sdxl tests/run_tests

sdxl: $(CLI_OBJ) $(LIB_OBJ) $(MODE_STAMP)
	$(CC) $(LDFLAGS_OMP) -o $@ $(CLI_OBJ) $(LIB_OBJ) $(CUDA_LIBS) $(LDLIBS)

tests/run_tests: $(TEST_OBJ) $(LIB_OBJ) $(MODE_STAMP)
	$(CC) $(LDFLAGS_OMP) -o $@ $(TEST_OBJ) $(LIB_OBJ) $(CUDA_LIBS) $(LDLIBS)

$(BUILD)/%.o: %.c $(HEADERS) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%.o: tests/%.c $(HEADERS) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/kernels.o: kernels.cu ops.h tensor.h common.h rng.h $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

test: tests/run_tests sdxl
	./tests/run_tests

# Sanitizer build: its own objects, CPU only, no OpenMP (ASan and libgomp's thread pool do not
# mix cleanly), -O1 so it stays quick enough to run the whole suite.
DEBUG_BUILD = build/debug
DEBUG_CFLAGS = $(filter-out -fopenmp,$(CFLAGS_BASE)) -Wno-unknown-pragmas -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
DEBUG_LIB_OBJ = $(LIB_SRC:%.c=$(DEBUG_BUILD)/%.o)
DEBUG_CLI_OBJ = $(CLI_SRC:%.c=$(DEBUG_BUILD)/%.o)
DEBUG_TEST_OBJ = $(TEST_SRC:tests/%.c=$(DEBUG_BUILD)/tests/%.o)

DEBUG_FLAGS_STAMP = $(DEBUG_BUILD)/flags
$(shell mkdir -p $(DEBUG_BUILD); echo "$(CC) $(DEBUG_CFLAGS)" | cmp -s - $(DEBUG_FLAGS_STAMP) || echo "$(CC) $(DEBUG_CFLAGS)" > $(DEBUG_FLAGS_STAMP))

# The GEMM is where nearly all the time of a model test goes. Under ASan gemm.c gets no per-CPU
# clones (target_clones' resolver runs before ASan is set up), so at -O1 and the baseline x86-64 its
# micro-kernel calls fmaf() through the PLT for every product: about 100 times slower, which made
# the sanitized CLI training test alone take over half an hour. On an x86-64 machine with FMA,
# gemm.c alone is built at -O3 for x86-64-v3 (AVX2 + FMA; still fully instrumented by ASan and
# UBSan, and fmaf gives the same bits either way), so `make debug` stays minutes long.
ifeq ($(shell uname -m)$(shell grep -qw fma /proc/cpuinfo 2>/dev/null && echo fma),x86_64fma)
$(DEBUG_BUILD)/gemm.o: DEBUG_CFLAGS += -O3 -march=x86-64-v3
endif

$(DEBUG_BUILD)/%.o: %.c $(HEADERS) $(DEBUG_FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(DEBUG_CFLAGS) -c -o $@ $<

$(DEBUG_BUILD)/tests/%.o: tests/%.c $(HEADERS) $(DEBUG_FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(DEBUG_CFLAGS) -c -o $@ $<

sdxl_debug: $(DEBUG_CLI_OBJ) $(DEBUG_LIB_OBJ)
	$(CC) -fsanitize=address,undefined -o $@ $^ $(LDLIBS)

tests/run_tests_debug: $(DEBUG_TEST_OBJ) $(DEBUG_LIB_OBJ)
	$(CC) -fsanitize=address,undefined -o $@ $^ $(LDLIBS)

# The CLI tests run the sanitized binary too (SDXL_BIN), so `make debug` on a fresh clone needs no ./sdxl.
debug: sdxl_debug tests/run_tests_debug
	SDXL_BIN=./sdxl_debug ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ./tests/run_tests_debug

bench: sdxl
	./sdxl bench matmul

# libFuzzer targets for the parsers and the config readers (clang): make fuzz FUZZ_SECONDS=60.
# The library is compiled once into build/fuzz/obj with the sanitizers and libFuzzer's coverage
# (UBSan findings stop the run, as ASan's do); seeds come from the goldens; crashes are written to
# build/fuzz/ as crash-* files.
FUZZ_SECONDS ?= 20
FUZZ_TARGETS = json safetensors png jpeg metadata config
FUZZ_FLAGS = -std=c11 -D_GNU_SOURCE -g -O1 -ffp-contract=off -fno-sanitize-recover=undefined
FUZZ_OBJ = $(LIB_SRC:%.c=build/fuzz/obj/%.o)
.SECONDARY: $(FUZZ_OBJ)

build/fuzz/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_OBJ)
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(FUZZ_OBJ) -lz -lm

fuzz: $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)
	@for t in $(FUZZ_TARGETS); do mkdir -p build/fuzz/corpus_$$t; done
	@cp tests/golden/st/*.safetensors tests/golden/st/sharded/*.safetensors build/fuzz/corpus_safetensors/
	@cp tests/golden/st/sharded/*.json build/fuzz/corpus_json/
	@cp tests/golden/png/*.png build/fuzz/corpus_png/ 2>/dev/null || true
	@cp tests/golden/jpeg/*.jpg build/fuzz/corpus_jpeg/ 2>/dev/null || true
	@cp tests/golden/data/metadata.jsonl build/fuzz/corpus_metadata/
	@printf '{"file_name": "sub/../a.png", "text": "x"}\n\n{"file_name": "../a.png", "prompt": "\\u00e9"}\n{"file_name": "out.png", "text": ""}\n' \
	  > build/fuzz/corpus_metadata/seed_paths.jsonl
	@for f in tests/golden/tiny_sdxl/*/*config.json tests/golden/clip_vision/*/config.json tests/golden/blip/*/config.json; do \
	  cp $$f build/fuzz/corpus_config/$$(echo $$f | tr / _); done
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s"; \
	  (cd build/fuzz && ./fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 corpus_$$t > fuzz_$$t.log 2>&1; \
	   rc=$$?; tail -4 fuzz_$$t.log; exit $$rc) || { echo "fuzz_$$t failed: build/fuzz/fuzz_$$t.log"; exit 1; }; \
	done

# The whole pipeline with no download: a tiny random-weight SDXL written by C (demo_out/tiny_sdxl),
# `generate` with the storyboard defaults to demo_out/frames/storyboard_demo.png (noise: random
# weights), then `eval` on that frame with the tiny random-weight evaluators of tests/golden (CLIP,
# interrogator labels, YOLOv8, BLIP, MiniLM) to demo_out/eval/report.{json,csv,html}. The judge is
# left out: it needs a real LLM endpoint (scripts/judge_openai.sh), and the report says so.
DEMO_EVALUATORS = --clip tests/golden/clip_vision/tiny_clip --interrogator-lists tests/golden/clip_vision/labels \
                  --cache demo_out/label_cache --yolo tests/golden/yolo/tiny.safetensors \
                  --blip tests/golden/blip/tiny_blip --minilm tests/golden/blip/tiny_minilm
demo: sdxl
	./sdxl demo --out demo_out/frames/storyboard_demo.png   # writes the tiny model and frames, trains a LoRA, generates
	./sdxl eval --images demo_out/frames --out demo_out/eval $(DEMO_EVALUATORS)

golden:
	cd scripts && python3 make_golden_ops.py && python3 make_golden_rng.py && python3 make_golden_safetensors.py && \
	  python3 make_golden_png.py && python3 make_golden_tokenizer.py && python3 make_golden_sample.py && \
	  python3 make_golden_sdxl.py && python3 make_golden_sgm.py && python3 make_golden_vae.py && python3 make_golden_lora.py && \
	  python3 make_golden_image.py && python3 make_golden_clip_vision.py && python3 make_golden_yolo.py && python3 make_golden_blip.py && python3 make_golden_a1111.py && \
	  python3 make_golden_data.py && python3 make_golden_optim.py && python3 make_golden_backward.py && \
	  python3 make_golden_jpeg.py && python3 make_golden_train.py

clean:
	rm -rf build demo_out sdxl sdxl_debug tests/run_tests tests/run_tests_debug
