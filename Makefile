# The two commands (see README): `make run` and `make test`.
.PHONY: run test setup filters example-filters bench

# The wasm filters (components for wasm32-wasip2): the stock ones and the host tests' `faults`.
FILTERS = -p eicar -p footer -p header-rules -p faults -p dkim-sign -p dkim-verify

# Run the gateway on its embedded default: 127.0.0.1:2525, delivering into ./mail, with the
# stock eicar filter.
run: filters
	cargo run --release --locked -p sluice -- serve

# Every test: unit tests, then end-to-end tests against real clients, real MTAs and the real
# wasm host (the filters are built once, before the tests).
test: setup filters example-filters
	cargo test --workspace --locked

setup:
	./.ci/setup

filters:
	rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	cargo build --release --locked --target wasm32-wasip2 $(FILTERS)

# The example filters in Python, JavaScript, C and Zig (examples/filters/): each build installs
# its own toolchain into target/toolchains once, and writes target/example-filters/LANGUAGE.wasm.
example-filters:
	./examples/filters/build

# The benchmark report (bench/RESULTS.md, bench/plots): sluice against direct delivery, clamsmtpd,
# Haraka and Postfix + rspamd in one run (not part of test; `bench/report --quick`: < 5 minutes).
bench: setup filters
	cargo build --release --locked -p sluice
	./bench/report
