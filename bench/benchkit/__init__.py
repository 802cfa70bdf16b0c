"""Shared pieces of the benchmarks in bench/: processes and their trees, smtp-sink, clamd, peers.

`bench/report` drives them; each peer gateway (peers/*.py) implements the `Gateway` protocol of
`gateway.py`, so the report starts, measures and stops every gateway the same way."""
