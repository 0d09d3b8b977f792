"""Benchmarks for agentgw: `python -m bench list`, `python -m bench run [--quick]`."""
