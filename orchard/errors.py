"""One root error type; each subsystem subclasses it, and each subclass says once how it surfaces.

`exit_code` is what the command line exits with, `http_status` what the
prediction service answers with. The CLI and the Serve app each have one
handler for `OrchardError` that reads these two attributes, so a new error
type needs no new `except` clause anywhere.

Exit codes: 1 a run that did not succeed (a model below its baseline, a
failed job), 2 a usage error (a bad name, option or definition), 3 stored
state that is damaged or missing.
"""

from __future__ import annotations


class OrchardError(Exception):
    """The root of every error Orchard raises on purpose."""

    exit_code = 1
    http_status = 500


class UsageError(OrchardError, ValueError):
    """The caller asked for something malformed or unknown."""

    exit_code = 2
    http_status = 400


class ConfigError(UsageError):
    """A configuration value is missing or malformed."""


class ProjectError(UsageError):
    """A project cannot be found or loaded, or two of its definitions clash."""


class NotFoundError(UsageError, KeyError):
    """A named thing (feature group, view, model, version) does not exist."""

    http_status = 404

    def __str__(self) -> str:  # KeyError quotes its message; this one reads as a sentence
        return str(self.args[0]) if self.args else ""


class StateError(OrchardError):
    """Stored state is damaged or not what this version of Orchard can read."""

    exit_code = 3
