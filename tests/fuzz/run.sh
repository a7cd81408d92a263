#!/bin/sh
# Build the readers' fuzz target with clang (libFuzzer + ASan + UBSan) and run it for SECONDS
# (default 60), seeded with the committed fixture files.
set -eu
cd "$(dirname "$0")/../.."
seconds=${1:-60}
out=${TMPDIR:-/tmp}/nabla-fuzz
mkdir -p "$out/corpus"
cp tests/fixtures/*.safetensors "$out/corpus/"
clang -g -O1 -fsanitize=fuzzer,address,undefined -std=c11 -Iinclude tests/fuzz/fuzz_readers.c \
    src/autograd/*.c src/ops/*.c src/nn/*.c src/train/*.c \
    $(pkg-config --cflags --libs openblas zlib) -lm -o "$out/fuzz_readers"
cd "$out" && ./fuzz_readers -max_total_time="$seconds" -rss_limit_mb=4096 corpus
