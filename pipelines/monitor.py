"""Monitoring job: a model's prediction log joined with its outcomes; performance and drift per time window.

    python -m pipelines.monitor MODEL [--window 1d] [--since T] [--until T] [--horizon 7d] [--threshold psi=0.25]
                                [--json]

Also `orchard monitor`. Runs unchanged under `ray job submit`. Writes the report (JSON, an HTML page with PNG
plots, Prometheus gauges) under `<storage>/monitoring/MODEL/reports/` and prints where.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from orchard.config import OrchardConfig
from orchard.errors import UsageError
from orchard.output import emit, stdout_reserved_for_json
from pipelines import options

WINDOW_HELP = "Time window of the report's rows: 30m, 6h, 1d, 1w."
HORIZON_HELP = "How long after a prediction an outcome given by entity key may still resolve it."
THRESHOLD_HELP = ("A drift threshold NAME=VALUE (repeatable): psi, p_value, wasserstein, jensen_shannon, "
                  "large_reference, min_rows, null_rate_increase, out_of_range, performance_drop.")


def settings(window: str = "1d", since: str | None = None, until: str | None = None, horizon: str = "7d",
             thresholds: list[str] | None = None):
    from monitoring.monitor import MonitorSettings
    from monitoring.outcomes import OutcomeError, parse_time
    from monitoring.stats import DriftThresholds
    from orchard.durations import parse_duration

    def moment(text: str | None, option: str):
        try:
            return parse_time(text, option) if text is not None else None
        except OutcomeError as error:
            raise UsageError(str(error)) from None

    values = {}
    for item in thresholds or []:
        name, _, text = item.partition("=")
        try:
            values[name.strip()] = float(text) if "." in text or "e" in text.lower() else int(text)
        except ValueError:
            raise UsageError(f"--threshold {item!r} must be NAME=NUMBER") from None
    return MonitorSettings(window=parse_duration(window, "--window"), horizon=parse_duration(horizon, "--horizon"),
                           since=moment(since, "--since"), until=moment(until, "--until"),
                           thresholds=DriftThresholds.from_mapping(values))


def run(config: OrchardConfig, model: str, *, quiet: bool = False, **options) -> dict:
    from monitoring.monitor import monitor
    from monitoring.report import write_report
    from orchard.runtime import ray_session
    from orchard.storage import Storage

    chosen = settings(**options)
    storage = Storage(config.storage)
    with ray_session(config, quiet=quiet):
        report = monitor(storage, model, chosen)
    stored = write_report(storage, report)
    return {**stored, "page": storage.uri(f"{stored['folder']}/report.html")}


def describe(report: dict) -> str:
    lines = [f"{report['model']}: report {report['page']}"]
    for version, section in report["versions"].items():
        overall = section["overall"]
        performance = overall["performance"]
        shown = ", ".join(f"{name} {value:.3f}" for name, value in performance["metrics"].items()
                          if name in ("accuracy", "macro_f1", "mae", "rmse")) if performance else "no outcomes yet"
        share = overall["outcome_share"]
        lines.append(f"  version {version}: {overall['predictions']} predictions in {len(section['windows'])} "
                     f"window(s), {overall['with_outcome']} with an outcome ({(share or 0):.0%}); {shown}; drifted: "
                     f"{', '.join(overall['drifted_features']) or 'none'}")
    lines += [f"  alert: {alert}" for alert in report["alerts"]]
    if report["malformed_log_lines"]:
        lines.append(f"  {report['malformed_log_lines']} log line(s) could not be read and were skipped")
    return "\n".join(lines)


def main(
    model: str = typer.Argument(..., help="The registered model to monitor."),
    window: str = typer.Option("1d", "--window", help=WINDOW_HELP),
    since: Optional[str] = typer.Option(None, "--since", help="Only predictions from this time (ISO)."),
    until: Optional[str] = typer.Option(None, "--until", help="Only predictions before this time (ISO)."),
    horizon: str = typer.Option("7d", "--horizon", help=HORIZON_HELP),
    threshold: Optional[List[str]] = typer.Option(None, "--threshold", help=THRESHOLD_HELP),
    storage: Optional[str] = options.STORAGE,
    ray_address: Optional[str] = options.RAY_ADDRESS,
    projects: Optional[List[str]] = options.PROJECT,
    verbose: bool = options.VERBOSE,
    as_json: bool = options.JSON,
) -> None:
    """Monitor a model: live performance against outcomes, and drift against its training split."""
    config = options.load_config(storage=storage, ray_address=ray_address, projects=projects, verbose=verbose)
    with stdout_reserved_for_json(as_json):
        report = run(config, model, quiet=as_json, window=window, since=since, until=until, horizon=horizon,
                     thresholds=threshold)
    emit(report, as_json=as_json, human=describe)


if __name__ == "__main__":
    typer.run(main)
