"""Benchmarks: the gateway against a direct call to the same fake upstream (`python -m bench --help`)."""
