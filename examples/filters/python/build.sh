#!/bin/sh
# Builds the Python example filter: $SLUICE_EXAMPLES_OUT/python.wasm, a component of the world
# sluice:filter/filter@0.2.2 made by componentize-py (CPython inside, ~18 MB).
# Installs componentize-py (pinned) into a venv at $SLUICE_TOOLS/python-venv once; rebuilds the
# .wasm only when a source, the WIT or this script changed. Run by examples/filters/build, or
# on its own (SLUICE_ROOT, SLUICE_TOOLS and SLUICE_EXAMPLES_OUT default to the checkout and its
# target/).
set -eu

COMPONENTIZE_PY_VERSION=0.25.1

here=$(cd "$(dirname "$0")" && pwd)
: "${SLUICE_ROOT:=$(cd "$here/../../.." && pwd)}"
: "${SLUICE_TOOLS:=${XDG_CACHE_HOME:-$HOME/.cache}/sluice/toolchains}"
: "${SLUICE_EXAMPLES_OUT:=$SLUICE_ROOT/target/example-filters}"
venv="$SLUICE_TOOLS/python-venv"
out="$SLUICE_EXAMPLES_OUT/python.wasm"
stamp="$SLUICE_EXAMPLES_OUT/python.wasm.stamp"
sources="example.py sluice_filter.py"

# 1. Python 3 with venv (Debian: python3, python3-venv), installed only when missing.
need=""
command -v python3 >/dev/null 2>&1 || need="python3 python3-venv"
[ -n "$need" ] || python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need="python3-venv"
if [ -n "$need" ]; then
    echo "python: installing $need (apt)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need
else
    echo "python: $(python3 --version 2>&1)"
fi

# 2. componentize-py, pinned, in its own venv.
if [ "$("$venv/bin/componentize-py" --version 2>/dev/null || true)" = "componentize-py $COMPONENTIZE_PY_VERSION" ]; then
    echo "python: componentize-py $COMPONENTIZE_PY_VERSION present in $venv"
else
    echo "python: installing componentize-py $COMPONENTIZE_PY_VERSION into $venv"
    [ -x "$venv/bin/python3" ] || python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install -q --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# 3. The component, rebuilt only when its inputs changed.
mkdir -p "$SLUICE_EXAMPLES_OUT"
key=$(cd "$here" && cat $sources build.sh "$SLUICE_ROOT/wit/filter.wit" | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
    echo "python: $out up to date"
    exit 0
fi
echo "python: componentize-py componentize example -> $out"
# Build from a copy: componentize-py runs the module at build time, which would leave
# __pycache__ in the source tree.
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-python.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
(cd "$here" && cp $sources "$work/")
"$venv/bin/componentize-py" -d "$SLUICE_ROOT/wit" -w filter componentize -p "$work" example -o "$work/python.wasm" >"$work/log" 2>&1 || {
    cat "$work/log" >&2
    exit 1
}
cp "$work/python.wasm" "$out.tmp"
mv "$out.tmp" "$out"
echo "$key" >"$stamp"
echo "python: wrote $out ($(wc -c <"$out") bytes)"
