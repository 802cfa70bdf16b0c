# The two commands (see README): `make run` and `make test`.
.PHONY: run test setup bench

# Run the gateway on its embedded default: 127.0.0.1:2525, delivering into ./mail.
run:
	cargo run --release --locked -p sluice -- serve

# Every test: unit tests, then end-to-end tests against real clients and real MTAs.
test: setup
	cargo test --workspace --locked

setup:
	./.ci/setup

# Throughput benchmark, side by side with Postfix smtp-source -> smtp-sink (not part of test).
bench: setup
	cargo build --release --locked -p sluice
	./bench/smtp-throughput
