"""Continuous-training job: check a model's retraining policy and take the loop's next step.

    python -m pipelines.retrain MODEL [--force] [--challenger VERSION] [--follow [--interval 5m]] [--json]

Also `orchard retrain`. Runs unchanged under `ray job submit`. A step judges a rollout in progress (promote or
roll back), or trains and gates a challenger when the policy's triggers fire (`monitoring.retraining`). With
`--follow` it repeats every `--interval` until stopped (SIGTERM or Ctrl-C end it between steps).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import List, Optional

import typer

from orchard.config import OrchardConfig
from orchard.errors import UsageError
from orchard.output import emit, json_line, stdout_reserved_for_json
from pipelines import options

FORCE_HELP = "Train and gate a challenger now, whatever the policy's triggers say."
CHALLENGER_HELP = "Gate (and roll out) this registered version instead of training one."
FOLLOW_HELP = "Repeat the step every --interval until stopped."
INTERVAL_HELP = "Time between steps with --follow: 30s, 5m, 1h."


def run(config: OrchardConfig, model: str, *, force: bool = False, challenger: int | None = None,
        quiet: bool = False) -> dict:
    from monitoring.retraining import retrain_step
    from orchard.runtime import ray_session
    from orchard.storage import Storage

    with ray_session(config, quiet=quiet):
        return retrain_step(Storage(config.storage), model, force=force, challenger=challenger)


def follow(config: OrchardConfig, model: str, interval: str, *, as_json: bool) -> int:
    """Steps until SIGTERM or SIGINT, each printed as it ends (with --json, one JSON line each); returns how many.

    A signal lets the step in progress finish (a promotion is never left half done); a second one exits at once.
    """
    from monitoring.retraining import retrain_step
    from orchard.durations import parse_duration
    from orchard.runtime import ray_session
    from orchard.storage import Storage

    wait_s = parse_duration(interval, "--interval").total_seconds()
    stop = threading.Event()
    storage = Storage(config.storage)
    steps = 0
    with ray_session(config, quiet=as_json):  # Ray installs its own handlers: ours come after
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def request_stop(signum, _frame) -> None:
            if stop.is_set():
                raise SystemExit(128 + signum)
            stop.set()

        for sig in previous:
            signal.signal(sig, request_stop)
        try:
            while not stop.is_set():
                result = retrain_step(storage, model)
                steps += 1
                if as_json:
                    sys.stdout.write(json_line(result))
                    sys.stdout.flush()
                else:
                    emit(result, as_json=False, human=describe)
                stop.wait(wait_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return steps


def describe(result: dict) -> str:
    lines = [f"{result['model']}: {result['action'].replace('_', ' ')} — {result['message']}"]
    lines += [f"  trigger: {reason}" for reason in result.get("reasons", [])]
    return "\n".join(lines)


def main(
    model: str = typer.Argument(..., help="The model whose retraining loop to step."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    challenger: Optional[int] = typer.Option(None, "--challenger", min=1, help=CHALLENGER_HELP),
    follow_: bool = typer.Option(False, "--follow", help=FOLLOW_HELP),
    interval: str = typer.Option("5m", "--interval", help=INTERVAL_HELP),
    storage: Optional[str] = options.STORAGE,
    ray_address: Optional[str] = options.RAY_ADDRESS,
    projects: Optional[List[str]] = options.PROJECT,
    verbose: bool = options.VERBOSE,
    as_json: bool = options.JSON,
) -> None:
    """Check the model's retraining policy and take the loop's next step."""
    config = options.load_config(storage=storage, ray_address=ray_address, projects=projects, verbose=verbose)
    command(config, model, force=force, challenger=challenger, follow_=follow_, interval=interval, as_json=as_json)


def command(config: OrchardConfig, model: str, *, force: bool, challenger: int | None, follow_: bool, interval: str,
            as_json: bool) -> None:
    if follow_:
        if force or challenger is not None:
            raise UsageError("--follow repeats the policy's own steps; --force and --challenger are one-off steps "
                             "and cannot be combined with it")
        follow(config, model, interval, as_json=as_json)
        return
    with stdout_reserved_for_json(as_json):
        result = run(config, model, force=force, challenger=challenger, quiet=as_json)
    emit(result, as_json=as_json, human=describe)


if __name__ == "__main__":
    typer.run(main)
