#!/usr/bin/env bash
# Packaging checks (run by .ci/run): nabla as a meson subproject of a consumer builds only its
# library and installs nothing; an installed nabla is found by pkg-config and links shared, and
# statically with `pkg-config --static`; the tutorial's project (docs/tutorial.md) builds against it. Prints one "ok: ..." or "FAIL: ..." line per check and
# exits non-zero when any failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/nabla-pkg.XXXXXX)
trap 'rm -rf "$work"' EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
copy_tree() { # the tracked files of the repository (as a clean clone has them) into $1
    mkdir -p "$1" && git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$1")
}
off=(-Dtests=disabled -Dexamples=disabled -Dbench=disabled)

# 1. subproject
c="$work/consumer"
mkdir -p "$c/subprojects"
cp "$root/tests/consumer/meson.build" "$root/tests/consumer/main.c" "$c/"
copy_tree "$c/subprojects/nabla"
if meson setup "$c/build" "$c" >"$work/sub.log" 2>&1 && ninja -C "$c/build" >>"$work/sub.log" 2>&1; then
    ok "a consumer builds with nabla as a subproject"
    "$c/build/consumer" && ok "the consumer runs" || bad "the consumer's result"
    extra=$(ninja -C "$c/build" -t targets all | grep -E '^subprojects/nabla/(tests|examples|bench)/' | head -n 3)
    [ -z "$extra" ] && ok "the subproject builds no tests, examples or benchmarks" \
        || bad "the subproject builds more than its library: $extra"
    grep -q -- '-march=native' "$c/build/compile_commands.json" && bad "the subproject compiles with -march=native" \
        || ok "the subproject does not compile with -march=native"
    DESTDIR="$work/sub-dest" meson install -C "$c/build" >>"$work/sub.log" 2>&1
    n=$(find "$work/sub-dest" -type f 2>/dev/null | wc -l)
    [ "$n" -eq 0 ] && ok "installing the consumer installs nothing of nabla" || bad "the consumer's install put $n files"
else
    bad "consumer with nabla as a subproject did not build:"; tail -n 20 "$work/sub.log"
fi

# 2. installed, shared and static, through pkg-config
src="$work/src"
copy_tree "$src"
for kind in shared static; do
    prefix="$work/prefix-$kind"
    if meson setup "$work/build-$kind" "$src" --prefix "$prefix" --libdir lib -Ddefault_library=$kind \
        -Dnative=false "${off[@]}" >"$work/$kind.log" 2>&1 && ninja -C "$work/build-$kind" >>"$work/$kind.log" 2>&1 &&
        meson install -C "$work/build-$kind" >>"$work/$kind.log" 2>&1; then
        ok "nabla ($kind) builds and installs"
    else
        bad "nabla ($kind) did not build or install:"; tail -n 20 "$work/$kind.log"; continue
    fi
    export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
    flags=(); [ $kind = static ] && flags=(--static)
    if cc -std=c11 "$root/tests/consumer/main.c" -o "$work/consumer-$kind" \
        $(pkg-config "${flags[@]}" --cflags --libs nabla) -lm 2>"$work/cc-$kind.log"; then
        ok "a program links against the $kind nabla with pkg-config ${flags[*]}"
        LD_LIBRARY_PATH="$prefix/lib" "$work/consumer-$kind" && ok "it runs" || bad "it computes a wrong result"
        if [ $kind = static ]; then
            ldd "$work/consumer-$kind" | grep -q libnabla && bad "the static link still needs libnabla.so" \
                || ok "the static link does not need libnabla.so"
        else
            [ -e "$prefix/lib/libnabla.so.0" ] && ok "libnabla.so.0 (soversion 0) is installed" \
                || bad "no libnabla.so.0"
        fi
    else
        bad "linking with pkg-config ${flags[*]}:"; cat "$work/cc-$kind.log"
    fi
done
# 3. docs/tutorial.md's project (tests/tutorial_extract.sh) in a folder of its own, against the
#    installed shared nabla: its meson.build (dependency('nabla') through pkg-config), then its cc lines
t="$work/tutorial"
if [ -e "$work/prefix-shared/lib/pkgconfig/nabla.pc" ] && mkdir -p "$t/fashion" &&
    sh "$root/tests/tutorial_extract.sh" "$root/docs/tutorial.md" "$t/blocks"; then
    cp "$t/blocks"/*.[ch] "$t/blocks/meson.build" "$t/fashion/"
    ccblock=$(grep -l 'pkg-config --cflags --libs nabla' "$t"/blocks/tutorial_*.sh | head -n 1)
    (
        export PKG_CONFIG_PATH="$work/prefix-shared/lib/pkgconfig" LD_LIBRARY_PATH="$work/prefix-shared/lib"
        cd "$t/fashion" || exit 1
        if meson setup build >"$t/meson.log" 2>&1 && meson compile -C build >>"$t/meson.log" 2>&1 &&
            ./build/check_block >>"$t/meson.log" 2>&1 && ./build/train --quick --out runs >>"$t/meson.log" 2>&1; then
            ok "the tutorial's project builds with its meson.build against the installed nabla and runs"
        else
            bad "the tutorial's project with its meson.build:"; tail -n 20 "$t/meson.log"
        fi
        if [ -n "$ccblock" ] && sh -e "$ccblock" >"$t/cc.log" 2>&1 && ./check_block >>"$t/cc.log" 2>&1 &&
            ./train --quick --out runs-cc >>"$t/cc.log" 2>&1; then
            ok "the tutorial's cc lines build it with pkg-config"
        else
            bad "the tutorial's cc lines (${ccblock:-no shell block with the pkg-config line}):"; cat "$t/cc.log" 2>/dev/null
        fi
    ) | tee "$t/result.log"
    fails=$((fails + $(grep -c '^FAIL: ' "$t/result.log")))
else
    bad "the tutorial's project could not be set up (no installed shared nabla, or its code blocks)"
fi
exit $((fails > 0))
