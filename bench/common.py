"""What the benchmarks share: per-method timings, the result summary and the printed table."""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("bench")


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


class PeakMemory:
    """Samples the resident memory of this process and every Ray worker process (`ray::`) every 0.2 s; keeps the
    peak, and the total at the start in `before`."""

    def __init__(self):
        import psutil

        self._psutil, self.peak, self._stop = psutil, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        total = 0
        for process in self._psutil.process_iter(["pid", "name", "cmdline", "memory_info"]):
            try:
                command = " ".join(process.info["cmdline"] or [])
                if process.info["pid"] == os.getpid() or command.startswith("ray::"):
                    total += process.info["memory_info"].rss
            except (self._psutil.Error, TypeError):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            self._stop.wait(0.2)

    def __enter__(self):
        self.before = self._total()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def init_local_ray() -> None:
    """A local Ray of every core for a benchmark's process, whose workers import the example projects as
    Orchard's own jobs do (the projects' folders travel in the runtime env)."""
    import ray

    from orchard.config import OrchardConfig

    runtime_env = OrchardConfig.from_sources(env={}, cwd=Path(__file__).resolve().parent.parent).runtime_env()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
             runtime_env=runtime_env)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def time_methods(runners: dict, inputs, outputs_dir: Path, repeats: int, check) -> tuple[dict[str, MethodResult], object]:
    """One untimed warm-up round, then `repeats` timed rounds; the methods take turns within each round.

    After every round `check(outputs)` compares the methods' outputs (and fails if they differ); its last
    result is returned with the timings.
    """
    results = {method: MethodResult(method) for method in runners}
    checked = None
    for repeat in range(repeats + 1):
        outputs = {}
        for method, run in runners.items():
            output = outputs_dir / (method if method.startswith("orchard") else f"{method}.parquet")
            remove(output)
            started = time.perf_counter()
            run(inputs, output)
            seconds = time.perf_counter() - started
            if repeat == 0:
                results[method].first_run_seconds = seconds
            else:
                results[method].seconds.append(seconds)
            log.info("%s %s: %.2f s", f"repeat {repeat}" if repeat else "first run", method, seconds)
            outputs[method] = output
        checked = check(outputs)
    return results, checked


def publish(document: dict, table: str, out: Path | None, as_json: bool) -> None:
    """Write `out/result.json` when asked; print the document (--json) or the table."""
    if out is not None:
        (out / "result.json").write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2) if as_json else table)


class SectionResults:
    """A benchmark's result: the machine, then each section as it ends, written to `<work>/result.json` at once
    (a later section's failure loses none)."""

    def __init__(self, work: Path):
        self.path = work / "result.json"
        work.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"machine": {"cpus": os.cpu_count(), "memory_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}}

    def keep(self, section: str, value: dict) -> None:
        self.results[section] = value
        self.path.write_text(json.dumps(self.results, indent=2, default=str))
