#!/bin/sh
# The first ```c block after the heading HEADING (a whole line of README.md, such as
# "## Layers and training") into OUT, so that the suite compiles the README's code as it is shown.
#   readme_block.sh README HEADING OUT
set -u
awk -v h="$2" '$0 == h {s = 1; next} s == 1 && /^```c$/ {s = 2; next} s == 2 && /^```$/ {s = 3; exit} s == 2
               END {if (s != 3) {print FILENAME ": no closed ```c block after " h > "/dev/stderr"; exit 1}}' "$1" > "$3"
