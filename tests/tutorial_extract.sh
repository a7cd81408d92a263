#!/bin/sh
# The files of docs/tutorial.md, as its code blocks write them: a ```c, ```meson or ```python block
# whose first line is a comment naming a file ("/* train.c: ...", "# meson.build") starts that file,
# and one naming it ", continued" appends to it; every such block must name its file. The ```sh
# blocks go to tutorial_1.sh, tutorial_2.sh, ... in order.
#   tutorial_extract.sh TUTORIAL OUTDIR [FILE...]   writes into OUTDIR the FILEs named (by basename), or
#                                                   all of them; fails on a block without a file name,
#                                                   a file started twice, or a FILE that is not there
set -u
tutorial=$1 out=$2
shift 2
mkdir -p "$out" || exit 1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nabla-tutorial.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
awk -v dir="$tmp" '
function fail(msg) { printf "%s:%d: %s\n", FILENAME, NR, msg > "/dev/stderr"; bad = 1; exit 1 }
/^```/ && !inblock {
    lang = substr($0, 4); inblock = 1; first = 1; file = ""
    if (lang == "sh") { nsh++; file = dir "/tutorial_" nsh ".sh" }
    else if (lang != "c" && lang != "meson" && lang != "python") file = "-"   # output, not code
    next
}
/^```$/ && inblock { inblock = 0; if (file != "" && file != "-") close(file); next }
inblock && first {
    first = 0
    if (file == "") {
        if (lang == "c") ok = match($0, /^\/\* [A-Za-z0-9_.-]+\.[ch](, continued)?[:* ]/)
        else ok = match($0, /^# [A-Za-z0-9_.-]+(, continued)?([: ]|$)/)
        if (!ok) fail("a " lang " block whose first line does not name its file")
        name = $0; sub(/^(\/\*|#) /, "", name); sub(/[,: *].*$/, "", name)
        cont = index($0, name ", continued") > 0
        file = dir "/" name
        if (!cont && (file in started)) fail(name " is started twice")
        if (cont && !(file in started)) fail(name " is continued before it starts")
        if (!cont) { started[file] = 1; printf "" > file } else print "" >> file
    }
}
inblock && file != "-" { print >> file }
END { if (inblock && !bad) fail("a code block is not closed") }
' "$tutorial" || exit 1
if [ $# -eq 0 ]; then
    cp "$tmp"/* "$out"/ || exit 1
else
    for f in "$@"; do
        name=$(basename "$f")
        [ -f "$tmp/$name" ] || { echo "$tutorial: no code block makes $name" >&2; exit 1; }
        cp "$tmp/$name" "$out/$name" || exit 1
    done
fi
