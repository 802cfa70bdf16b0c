#!/bin/sh
# Builds the Zig example filter into $SLUICE_EXAMPLES_OUT/zig.wasm (a component of the world
# sluice:filter/filter@0.2.2). Installs what is missing, once: Zig 0.15.2 from PyPI's `ziglang`
# package into a venv at $SLUICE_TOOLS/zig-venv (it bundles clang, lld and wasi-libc), then
# wit-bindgen-cli, wasm-tools and the WASI adapter into $SLUICE_TOOLS (see ../wasm-tools.sh).
# Rebuilds only when a source changed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
: "${SLUICE_ROOT:=$(cd "$here/../../.." && pwd)}"
: "${SLUICE_TOOLS:=${XDG_CACHE_HOME:-$HOME/.cache}/sluice/toolchains}"
: "${SLUICE_EXAMPLES_OUT:=$SLUICE_ROOT/target/example-filters}"
sluice_lang=zig
. "$here/../wasm-tools.sh"

ZIG_VERSION=0.15.2
venv="$SLUICE_TOOLS/zig-venv"
out="$SLUICE_EXAMPLES_OUT/zig.wasm"
build="$SLUICE_EXAMPLES_OUT/.build/zig"
mkdir -p "$SLUICE_TOOLS" "$SLUICE_EXAMPLES_OUT" "$build"

zig() { "$venv/bin/python" -m ziglang "$@"; }

if [ -x "$venv/bin/python" ] && [ "$(zig version 2>/dev/null)" = "$ZIG_VERSION" ]; then
    echo "zig: zig $ZIG_VERSION present in $venv"
else
    if ! python3 -c "import ensurepip" >/dev/null 2>&1; then
        echo "zig: apt-get install python3-venv"
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -q >/dev/null
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null
    fi
    echo "zig: installing ziglang==$ZIG_VERSION into $venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "ziglang==$ZIG_VERSION"
fi
sluice_tools_install

sources="$here/example.zig $here/sluice.zig $here/build.sh $here/../wasm-tools.sh $SLUICE_ROOT/wit/filter.wit"
# shellcheck disable=SC2086
stamp=$(sluice_stamp $sources)
if [ -f "$out" ] && [ "$(cat "$build/stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "zig: $out is up to date"
    exit 0
fi

echo "zig: bindings (wit-bindgen c)"
sluice_bindings "$build/gen"
# The first build also compiles wasi-libc and compiler-rt for wasm32 (minutes; cached in
# $SLUICE_TOOLS/zig-cache).
# ReleaseSafe keeps Zig's safety checks (a bug traps, a failure of the stage, instead of corrupting
# memory); -fstrip drops the debug info (~180 KiB), which a filter cannot use anyway; the stack is
# 1 MiB (Zig's default of 16 MiB would be a quarter of the stage's default memory limit).
echo "zig: compile (zig build-exe -target wasm32-wasi, reactor, ReleaseSafe)"
(
    cd "$build"
    zig build-exe -target wasm32-wasi -mexec-model=reactor -O ReleaseSafe -fstrip --stack 1048576 -lc \
        -I"$build/gen" --name core \
        --cache-dir "$build/zig-cache" --global-cache-dir "$SLUICE_TOOLS/zig-cache" \
        "$here/example.zig" "$build/gen/filter.c" "$build/gen/filter_component_type.o"
)
echo "zig: component (wasm-tools component new + WASI reactor adapter)"
sluice_componentize "$build/core.wasm" "$out"
echo "$stamp" >"$build/stamp"
echo "zig: wrote $out ($(wc -c <"$out") bytes)"
