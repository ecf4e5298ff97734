"""Benchmarks: ``python -m benchmarks`` runs every ``bench_*.py`` module in its own
process; ``python -m benchmarks bench_x`` runs one. Figures and how to read them:
docs/benchmarks.md."""
