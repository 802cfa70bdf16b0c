#!/bin/sh
# Builds the JavaScript example filter: $SLUICE_EXAMPLES_OUT/javascript.wasm, a component of the
# world sluice:filter/filter@0.2.2 made by ComponentizeJS (SpiderMonkey inside, ~12 MB).
# Installs the npm packages pinned by package-lock.json (ComponentizeJS, jco) into the prefix
# $SLUICE_TOOLS/node once; rebuilds the .wasm only when a source, the WIT or this script changed.
# Run by examples/filters/build, or on its own (SLUICE_ROOT, SLUICE_TOOLS and SLUICE_EXAMPLES_OUT
# default to the checkout and its target/).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
: "${SLUICE_ROOT:=$(cd "$here/../../.." && pwd)}"
: "${SLUICE_TOOLS:=${XDG_CACHE_HOME:-$HOME/.cache}/sluice/toolchains}"
: "${SLUICE_EXAMPLES_OUT:=$SLUICE_ROOT/target/example-filters}"
prefix="$SLUICE_TOOLS/node"
out="$SLUICE_EXAMPLES_OUT/javascript.wasm"
stamp="$SLUICE_EXAMPLES_OUT/javascript.wasm.stamp"
sources="filter.js sluice-filter.js"

# 1. Node.js and npm (Debian: nodejs, npm), installed only when missing. Tested with Node.js 20.
need=""
command -v node >/dev/null 2>&1 || need="nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"
if [ -n "$need" ]; then
    echo "javascript: installing$need (apt)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need
fi
major=$(node -p 'process.versions.node.split(".")[0]')
echo "javascript: node $(node --version), npm $(npm --version)"
[ "$major" -ge 20 ] || echo "javascript: warning: built and tested with Node.js 20; this is $(node --version)" >&2

# 2. ComponentizeJS and jco at the versions package-lock.json pins (every transitive package too).
if [ -x "$prefix/node_modules/.bin/componentize-js" ] && cmp -s "$here/package-lock.json" "$prefix/.sluice-installed-lock"; then
    echo "javascript: componentize-js $(node -p "require('$prefix/node_modules/@bytecodealliance/componentize-js/package.json').version") present in $prefix"
else
    echo "javascript: installing the npm packages of package-lock.json into $prefix"
    mkdir -p "$prefix"
    rm -f "$prefix/.sluice-installed-lock"
    cp "$here/package.json" "$here/package-lock.json" "$prefix/"
    (cd "$prefix" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$here/package-lock.json" "$prefix/.sluice-installed-lock"
fi

# 3. The component, rebuilt only when its inputs changed.
mkdir -p "$SLUICE_EXAMPLES_OUT"
key=$(cd "$here" && cat $sources build.sh package-lock.json "$SLUICE_ROOT/wit/filter.wit" | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
    echo "javascript: $out up to date"
    exit 0
fi
echo "javascript: componentize-js filter.js -> $out"
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-javascript.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
# `--disable http fetch-event`: otherwise the component imports wasi:http, which the host does not
# offer. (No `--aot`: it fetches a compiler at build time.)
# Run from here: the paths in the component (in a trap's stack) are then `filter.js` and
# `sluice-filter.js`, whatever the caller's directory.
(cd "$here" && "$prefix/node_modules/.bin/componentize-js" filter.js --wit "$SLUICE_ROOT/wit" --world-name filter \
    --disable http fetch-event --out "$work/javascript.wasm") >"$work/log" 2>&1 || {
    cat "$work/log" >&2
    exit 1
}
cp "$work/javascript.wasm" "$out.tmp"
mv "$out.tmp" "$out"
echo "$key" >"$stamp"
echo "javascript: wrote $out ($(wc -c <"$out") bytes)"
