"""Durations as people write them in options and settings: 30s, 5m, 6h, 1d, 2w."""

from __future__ import annotations

import re
from datetime import timedelta

from orchard.errors import UsageError

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class DurationError(UsageError):
    pass


def parse_duration(text: str, what: str) -> timedelta:
    """"30s", "5m", "6h", "1d", "2w" as a timedelta; `what` names the setting in the error."""
    match = _DURATION.match(str(text))
    if not match or int(match.group(1)) == 0:
        raise DurationError(f"{what} must be a positive duration such as 30s, 5m, 6h, 1d or 2w, got {text!r}")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
