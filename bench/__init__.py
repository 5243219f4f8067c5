"""Benchmarks and experiment scripts for recbole-mind: run each from the repository root as ``python -m bench.<name>``."""
