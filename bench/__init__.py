"""Benchmarks; run each as a module, e.g. `python -m bench.bench_weekly_vacancy`.

They measure the example projects' workloads (the hotel's weekly vacancy, the fruit classifier), so importing
this package loads the projects this repository's pyproject.toml lists, as any Orchard command run here would.
"""

from pathlib import Path

from orchard.projects import activate, from_pyproject

activate(from_pyproject(Path(__file__).resolve().parents[1]) or ())
