#!/bin/sh
# Builds the C example filter into $SLUICE_EXAMPLES_OUT/c.wasm (a component of the world
# sluice:filter/filter@0.2.2). Installs what is missing, once: Debian's clang 14, lld, wasi-libc and
# the wasm32 compiler-rt (apt), then wit-bindgen-cli, wasm-tools and the WASI adapter into
# $SLUICE_TOOLS (see ../wasm-tools.sh). Rebuilds only when a source changed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
: "${SLUICE_ROOT:=$(cd "$here/../../.." && pwd)}"
: "${SLUICE_TOOLS:=${XDG_CACHE_HOME:-$HOME/.cache}/sluice/toolchains}"
: "${SLUICE_EXAMPLES_OUT:=$SLUICE_ROOT/target/example-filters}"
sluice_lang=c # the prefix of the lines printed
. "$here/../wasm-tools.sh"

out="$SLUICE_EXAMPLES_OUT/c.wasm"
build="$SLUICE_EXAMPLES_OUT/.build/c"
mkdir -p "$SLUICE_TOOLS" "$SLUICE_EXAMPLES_OUT" "$build"

# The compiler: Debian 12's clang 14 targets wasm32-wasi with the wasi-libc sysroot under /usr
# (headers in /usr/include/wasm32-wasi, libraries in /usr/lib/wasm32-wasi).
need=""
command -v clang >/dev/null 2>&1 || need="$need clang"
command -v wasm-ld >/dev/null 2>&1 || need="$need lld"
[ -f /usr/lib/wasm32-wasi/libc.a ] || need="$need wasi-libc"
if ! command -v clang >/dev/null 2>&1 || [ ! -f "$(clang --target=wasm32-wasi -print-libgcc-file-name)" ]; then
    need="$need libclang-rt-dev-wasm32"
fi
if [ -n "$need" ]; then
    echo "c: apt-get install$need"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need >/dev/null
fi
echo "c: $(clang --version | head -n 1)"
sluice_tools_install

sources="$here/example.c $here/sluice_filter.c $here/sluice_filter.h $here/build.sh $here/../wasm-tools.sh $SLUICE_ROOT/wit/filter.wit"
# shellcheck disable=SC2086
stamp=$(sluice_stamp $sources)
if [ -f "$out" ] && [ "$(cat "$build/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "c: $out is up to date"
    exit 0
fi

echo "c: bindings (wit-bindgen c)"
sluice_bindings "$build/gen"
echo "c: compile (clang --target=wasm32-wasi, reactor)"
# --strip-debug drops the DWARF that Debian's wasi-libc.a carries (~120 KiB) and keeps the names
# (function names in wasm backtraces when a filter traps). A 1 MiB stack placed first in linear
# memory: an overflow traps (a failure of the stage) instead of overwriting static data.
clang --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 -Wall -Wextra -Werror \
    -Wl,--strip-debug -Wl,--stack-first -Wl,-z,stack-size=1048576 \
    -I"$here" -I"$build/gen" \
    -o "$build/core.wasm" \
    "$here/example.c" "$here/sluice_filter.c" "$build/gen/filter.c" "$build/gen/filter_component_type.o"
echo "c: component (wasm-tools component new + WASI reactor adapter)"
sluice_componentize "$build/core.wasm" "$out"
echo "$stamp" >"$build/stamp"
echo "c: wrote $out ($(wc -c <"$out") bytes)"
