"""Benchmarks printed by scripts/bench. Each bench_*.py module runs on its own."""
