#!/usr/bin/env bash
# Packaging checks (run by .ci/run): nabla as a meson subproject of a consumer builds only its
# library and installs nothing; an installed nabla is found by pkg-config and links shared, and
# statically with `pkg-config --static`. Prints one "ok: ..." or "FAIL: ..." line per check and
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
exit $((fails > 0))
