# Shared by examples/filters/c/build.sh and examples/filters/zig/build.sh (sourced, POSIX sh):
# the component tooling both need, installed once into $SLUICE_TOOLS (~/.cache/sluice/toolchains by default: shared by checkouts)
# and pinned to what the gateway's wasmtime 48.0.8 reads:
#   wit-bindgen-cli 0.60.0  (the workspace's wit-bindgen crate; `c` generator only) -> $WIT_BINDGEN
#   wasm-tools 1.254.2      (wit-component/wasmparser 0.254.2, as in Cargo.lock)  -> $WASM_TOOLS
#   the WASI preview1 reactor adapter of wasmtime 48.0.8 (crate
#   wasi-preview1-component-adapter-provider, fetched by cargo from crates.io)      -> $WASI_ADAPTER
# The two cargo installs compile for several minutes on 2 cores, once; a warm run checks versions.
# Functions: sluice_tools_install, sluice_bindings OUTDIR, sluice_componentize CORE OUT,
# sluice_stamp FILE... (a hash of files, for "rebuild only when the sources changed").

WIT_BINDGEN_VERSION=0.60.0
WASM_TOOLS_VERSION=1.254.2
WASI_ADAPTER_VERSION=48.0.8

SLUICE_CARGO_ROOT="$SLUICE_TOOLS/cargo"
WIT_BINDGEN="$SLUICE_CARGO_ROOT/bin/wit-bindgen"
WASM_TOOLS="$SLUICE_CARGO_ROOT/bin/wasm-tools"
WASI_ADAPTER="$SLUICE_TOOLS/wasi-adapter-$WASI_ADAPTER_VERSION/wasi_snapshot_preview1.reactor.wasm"

sluice_need_cargo() {
    command -v cargo >/dev/null 2>&1 || {
        echo "error: cargo is needed to install wit-bindgen-cli and wasm-tools (install Rust with rustup)" >&2
        exit 1
    }
}

sluice_tools_install() {
    if [ -x "$WIT_BINDGEN" ] && [ "$("$WIT_BINDGEN" --version 2>/dev/null)" = "wit-bindgen-cli $WIT_BINDGEN_VERSION" ]; then
        echo "$sluice_lang: wit-bindgen-cli $WIT_BINDGEN_VERSION present in $SLUICE_TOOLS"
    else
        sluice_need_cargo
        echo "$sluice_lang: wit-bindgen-cli $WIT_BINDGEN_VERSION installing into $SLUICE_CARGO_ROOT (compiles for minutes, once)"
        cargo install --quiet --locked --force --root "$SLUICE_CARGO_ROOT" wit-bindgen-cli \
            --version "$WIT_BINDGEN_VERSION" --no-default-features --features c
    fi
    if [ -x "$WASM_TOOLS" ] && [ "$("$WASM_TOOLS" --version 2>/dev/null | cut -d' ' -f1-2)" = "wasm-tools $WASM_TOOLS_VERSION" ]; then
        echo "$sluice_lang: wasm-tools $WASM_TOOLS_VERSION present in $SLUICE_TOOLS"
    else
        sluice_need_cargo
        echo "$sluice_lang: wasm-tools $WASM_TOOLS_VERSION installing into $SLUICE_CARGO_ROOT (compiles for minutes, once)"
        cargo install --quiet --locked --force --root "$SLUICE_CARGO_ROOT" wasm-tools \
            --version "$WASM_TOOLS_VERSION" --no-default-features --features component,validate,print,parse,metadata
    fi
    if [ -f "$WASI_ADAPTER" ]; then
        echo "$sluice_lang: wasi preview1 reactor adapter $WASI_ADAPTER_VERSION present in $SLUICE_TOOLS"
    else
        sluice_need_cargo
        echo "$sluice_lang: wasi preview1 reactor adapter $WASI_ADAPTER_VERSION fetching with cargo"
        # A throwaway crate depending on the adapter provider: cargo downloads (and checks) it
        # into its registry cache, and the adapter is copied out of the crate's source.
        fetch="$SLUICE_TOOLS/wasi-adapter-$WASI_ADAPTER_VERSION/fetch"
        mkdir -p "$fetch/src"
        cat >"$fetch/Cargo.toml" <<EOF
[package]
name = "sluice-fetch-wasi-adapter"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
wasi-preview1-component-adapter-provider = "=$WASI_ADAPTER_VERSION"

[workspace]
EOF
        : >"$fetch/src/lib.rs"
        cargo fetch --quiet --manifest-path "$fetch/Cargo.toml"
        manifest=$(cargo metadata --quiet --format-version 1 --manifest-path "$fetch/Cargo.toml" |
            tr ',' '\n' | sed -n 's/^"manifest_path":"\(.*wasi-preview1-component-adapter-provider-[^"]*\)"$/\1/p')
        [ -n "$manifest" ] || { echo "error: cargo did not fetch the WASI adapter" >&2; exit 1; }
        cp "$(dirname "$manifest")/artefacts/wasi_snapshot_preview1.reactor.wasm" "$WASI_ADAPTER.tmp"
        mv "$WASI_ADAPTER.tmp" "$WASI_ADAPTER"
    fi
}

# C bindings of the `filter` world (filter.h, filter.c, filter_component_type.o) into $1.
sluice_bindings() {
    rm -rf "$1"
    mkdir -p "$1"
    "$WIT_BINDGEN" c --world filter --out-dir "$1" "$SLUICE_ROOT/wit" >"$1/wit-bindgen.log" 2>&1 || {
        cat "$1/wit-bindgen.log" >&2
        exit 1
    }
}

# A core wasm module ($1, wasm32-wasi reactor with the bindings' component type) into a
# component ($2), validated.
sluice_componentize() {
    "$WASM_TOOLS" component new "$1" --adapt "wasi_snapshot_preview1=$WASI_ADAPTER" -o "$2.tmp"
    "$WASM_TOOLS" validate "$2.tmp"
    mv "$2.tmp" "$2"
}

# A hash of the given files and of the pinned versions.
sluice_stamp() {
    {
        echo "$WIT_BINDGEN_VERSION $WASM_TOOLS_VERSION $WASI_ADAPTER_VERSION"
        cat "$@"
    } | sha256sum | cut -d' ' -f1
}
