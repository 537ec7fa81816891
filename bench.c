// bench.c: placeholder
