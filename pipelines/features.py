"""Feature pipeline job: raw landing data -> validated offline feature table.

    python -m pipelines.features fruit_measurements[:version] [--follow [--interval 10]] [--storage URI] [--json]
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Callable, List, Optional

import typer

from features.catalog import get_group
from features.pipeline import RunReport, run_feature_pipeline
from orchard.config import OrchardConfig
from orchard.output import emit, stdout_reserved_for_json
from orchard.runtime import ray_session
from orchard.storage import Storage
from pipelines import options

log = logging.getLogger(__name__)


def run(config: OrchardConfig, group_ref: str, *, quiet: bool = False) -> RunReport:
    group = get_group(group_ref)
    with ray_session(config, quiet=quiet):
        return run_feature_pipeline(Storage(config.storage), group, config.databases, config.online_store)


def follow(config: OrchardConfig, group_ref: str, interval: float, on_report: Callable[[RunReport], None],
           stop: threading.Event | None = None, *, quiet: bool = False) -> int:
    """Run the pipeline again and again, `interval` seconds apart, until stopped; returns the number of runs.

    SIGINT (Ctrl-C) and SIGTERM set `stop`: a run in progress finishes its
    commit first, so stopping never leaves half a run behind. A second signal
    exits at once (what that run had not committed is read again next time).
    """
    if interval < 0:
        raise ValueError(f"interval must be at least 0 seconds, got {interval}")
    group = get_group(group_ref)
    stop = stop or threading.Event()
    runs = 0
    with ray_session(config, quiet=quiet):
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def request_stop(signum, _frame) -> None:
            if stop.is_set():
                raise SystemExit(128 + signum)
            log.warning("%s received: stopping after the current run", signal.Signals(signum).name)
            stop.set()

        for sig in previous:
            signal.signal(sig, request_stop)
        try:
            while not stop.is_set():
                on_report(run_feature_pipeline(Storage(config.storage), group, config.databases, config.online_store))
                runs += 1
                stop.wait(interval)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return runs


def main(
    group: str = typer.Argument(..., help="Feature group as name[:version]; the newest version if omitted."),
    storage: Optional[str] = options.STORAGE,
    ray_address: Optional[str] = options.RAY_ADDRESS,
    projects: Optional[List[str]] = options.PROJECT,
    verbose: bool = options.VERBOSE,
    follow_: bool = typer.Option(False, "--follow", help="Keep running and pick up new data until Ctrl-C or SIGTERM."),
    interval: float = typer.Option(10.0, "--interval", min=0, help="Seconds between runs with --follow."),
    as_json: bool = typer.Option(False, "--json", help="Print the run report as JSON (one line per run with --follow)."),
) -> None:
    """Run the feature pipeline of one feature group."""
    run_command(options.load_config(storage=storage, ray_address=ray_address, projects=projects, verbose=verbose), group, follow_=follow_,
                interval=interval, as_json=as_json)


def run_command(config: OrchardConfig, group: str, *, follow_: bool, interval: float, as_json: bool) -> None:
    """What `orchard features run` and this module's command do: one run, or --follow, and their reports."""
    with stdout_reserved_for_json(as_json) as print_line:
        if follow_:
            follow(config, group, interval, lambda r: print_line(r.to_dict()) if as_json else emit_report(r),
                   quiet=as_json)
            return
        report = run(config, group, quiet=as_json)
    emit(report.to_dict(), as_json=as_json)


def emit_report(report: RunReport) -> None:
    """One human line per run."""
    emit(f"{report.group} run {report.run_id}: read {report.rows_read}, wrote {report.rows_written}, "
         f"quarantined {report.rows_quarantined}, duplicates {report.rows_duplicate} "
         f"({report.seconds:.1f} s, table version {report.table_version})", as_json=False)


if __name__ == "__main__":
    typer.run(main)
