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


@contextlib.contextmanager
def stdout_reserved_for_json(active: bool) -> Iterator[None]:
    """While active, send everything written to stdout (by us, Ray or C libraries) to stderr.

    A --json command must print exactly one JSON document on stdout, and Ray
    writes some of its own log lines there.
    """
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
