"""How commands report results: human lines by default, one JSON document with --json."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable


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
