#!/bin/sh
# README.md's first program must be examples/first.c, and must print what README.md says it prints.
# Arguments: README.md, examples/first.c, the built first program.
set -u
readme=$1 src=$2 prog=$3
tmp=${TMPDIR:-/tmp}/nabla-readme.$$
trap 'rm -f "$tmp".*' EXIT
# the code block after "## A first program", and the output block after "prints"
awk '/^## A first program/ {s = 1; next} s == 1 && /^```c$/ {s = 2; next} s == 2 && /^```$/ {exit} s == 2' "$readme" > "$tmp.code"
awk '/`build\/examples\/first` prints/ {s = 1; next} s == 1 && /^```$/ {if (s2) exit; s2 = 1; next} s2' "$readme" > "$tmp.want"
# first.c is the code block after its two header comment lines
tail -n +3 "$src" > "$tmp.src"
"$prog" > "$tmp.got" 2>&1
fail=0
if ! cmp -s "$tmp.code" "$tmp.src"; then echo "README.md's first program differs from $src:"; diff "$tmp.code" "$tmp.src"; fail=1; fi
if [ ! -s "$tmp.want" ]; then echo "no expected output found in README.md"; fail=1; fi
if ! cmp -s "$tmp.want" "$tmp.got"; then echo "the first program's output differs from README.md:"; diff "$tmp.want" "$tmp.got"; fail=1; fi
[ $fail -eq 0 ] && echo "README.md's first program and its output match"
exit $fail
