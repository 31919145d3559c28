"""What the benchmarks share: per-method timings, the result summary and the printed table."""

from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class MethodResult:
    method: str
    first_run_seconds: float | None = None
    """The untimed warm-up: Ray starts its workers and imports here, every method reads cold files."""
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def summarize(results: dict[str, MethodResult], baselines: tuple[str, ...]) -> dict:
    """Per method: median, every timed run, the warm-up, and the ratio of its median to each baseline's."""
    return {
        method: {
            "median_seconds": round(result.median, 3),
            "seconds": [round(s, 3) for s in result.seconds],
            "first_run_seconds": round(result.first_run_seconds, 3),
            **{f"vs_{base}": round(result.median / results[base].median, 2) for base in baselines},
        }
        for method, result in results.items()
    }


def format_table(title: str, methods: dict, baselines: tuple[str, ...]) -> str:
    header = f"{'method':<10}{'median s':>10}" + "".join(f"{'vs ' + b:>11}" for b in baselines)
    lines = [title, header + f"{'first run s':>13}   timed runs (s)"]
    for method, numbers in methods.items():
        runs = ", ".join(f"{s:.2f}" for s in numbers["seconds"])
        ratios = "".join(f"{numbers[f'vs_{b}']:>10.2f}x" for b in baselines)
        lines.append(f"{method:<10}{numbers['median_seconds']:>10.2f}{ratios}{numbers['first_run_seconds']:>13.2f}   {runs}")
    return "\n".join(lines)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
