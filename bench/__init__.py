"""Benchmarks; run each as a module, e.g. `python -m bench.bench_weekly_vacancy`."""
