"""How commands report results: human lines by default, one JSON document with --json."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Callable, Iterator


def emit(result: Any, *, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write((human(result) if human else _plain(result)) + "\n")
    sys.stdout.flush()


def _plain(result: Any) -> str:
    if isinstance(result, dict):
        return "\n".join(f"{key}: {value}" for key, value in result.items())
    return str(result)


def json_line(result: Any) -> str:
    return json.dumps(result, sort_keys=True, separators=(",", ":"), default=str) + "\n"


@contextlib.contextmanager
def stdout_reserved_for_json(active: bool) -> Iterator[Callable[[Any], None]]:
    """While active, send everything written to stdout (by us, Ray or C libraries) to stderr.

    A --json command must print only JSON on stdout, and Ray writes some of its
    own log lines there. Yields a function that writes one compact JSON line to
    the real stdout (for commands that report more than once, such as --follow).
    """
    if not active:
        yield lambda result: (sys.stdout.write(json_line(result)), sys.stdout.flush())
        return
    sys.stdout.flush()
    saved = os.dup(1)

    def write_line(result: Any) -> None:
        os.write(saved, json_line(result).encode())

    try:
        os.dup2(2, 1)
        yield write_line
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
