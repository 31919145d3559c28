"""The model registry: immutable, integer-numbered model versions under the storage root.

Layout::

    models/<name>/<version>/model.json      card: flavor, signature, metrics, lineage, created time
    models/<name>/<version>/manifest.json   SHA-256 of every other file, checked on every read
    models/<name>/<version>/<artifact files>
    models/<name>/aliases.json              the model's state: where each alias points now, every alias change
                                            (time, alias, from, to, reason) and the rollout in progress
    models/<name>/retraining.jsonl          one line per step of continuous training

A version is written completely in a staging folder and then published under
its number (`Storage.publish_dir`: one rename locally; on S3 a conditional PUT
claims the number, then the files are copied with the manifest last), so
readers never see half a version and two concurrent registrations never get the
same number. A version is there once its manifest is.

Every alias change is one compare-and-swap of aliases.json (`Storage.update_json`:
under a file lock locally, `If-Match` on S3): the aliases, the change's history
entry and the rollout state are written together or not at all, and two
concurrent promotions lose neither an alias nor a history entry. Stores written
before the state moved into one document (a plain {alias: version} aliases.json
beside alias_history.jsonl and rollout.json) are read as they are and converted
by their next change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from orchard.errors import StateError, UsageError
from orchard.storage import STAGING_PREFIX, STALE_STAGING_S, Storage, StorageError

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "r2": True, "mae": False, "rmse": False, "mse": False,
                    "loss": False}
"""Which way each metric is better: the registry's best version, and training's comparison with the baseline."""

MODEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}\Z")
ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}\Z")
MANIFEST = "manifest.json"
RESERVED_FILES = {"model.json", MANIFEST}
CLAIM_ATTEMPTS = 100


class RegistryError(UsageError):
    """A registry operation was refused: a model, version or alias that is not there, or a malformed name."""

    http_status = 404


class IntegrityError(RegistryError):
    """Stored files do not match what was registered (a checksum, a missing file, a malformed card)."""

    exit_code = StateError.exit_code
    http_status = StateError.http_status


DEFAULT_ALIAS = "production"


def default_version(aliases: dict[str, int], versions: list[int]) -> int:
    """The version that answers for a model when none is named: the production alias, else the latest."""
    return aliases.get(DEFAULT_ALIAS, max(versions))


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    card: dict

    @property
    def flavor(self) -> str:
        return self._card_entry("flavor")

    @property
    def signature(self) -> dict:
        return self._card_entry("signature")

    @property
    def test_metrics(self) -> dict[str, float]:
        """The card's test metrics that are numbers; a confusion matrix and the like are left out."""
        return {metric: value for metric, value in _test_metrics(self.card).items() if _is_number(value)}

    def _card_entry(self, key: str) -> Any:
        if key not in self.card:
            raise IntegrityError(f"model {self.name}:{self.version}: its card (model.json) has no {key!r}")
        return self.card[key]


@dataclass(frozen=True)
class VersionSummary:
    """One version as a `models list` or `models show` shows it."""

    version: int
    created_at: str
    aliases: list[str]
    test_metrics: dict[str, float]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def check_name(name: str, kind: str = "model", pattern: re.Pattern = MODEL_NAME) -> str:
    if not isinstance(name, str) or not pattern.match(name):
        raise RegistryError(f"{kind} name {name!r} must be lower case letters, digits, '_' or '-' (at most 64, "
                            "starting with a letter)")
    return name


class ModelRegistry:
    def __init__(self, storage: Storage):
        self.storage = storage

    def _folder(self, name: str, version: int | None = None) -> str:
        base = f"models/{check_name(name)}"
        return base if version is None else f"{base}/{version}"

    # -- writing ---------------------------------------------------------------
    def register(self, name: str, files: Mapping[str, bytes], card: Mapping[str, Any]) -> ModelVersion:
        """Store `files` and `card` as the next version of `name` and return it.

        The number is claimed by renaming the complete staging folder onto it. When
        another writer claimed that number first the rename fails, and the card and
        manifest are rewritten for the next number, so no version is ever overwritten.
        """
        check_name(name)
        if not files:
            raise RegistryError(f"model {name!r}: nothing to register")
        clashes = RESERVED_FILES & set(files)
        if clashes:
            raise RegistryError(f"model {name!r}: file names {sorted(clashes)} are reserved")
        for file_name in files:
            if "/" in file_name or file_name.startswith("."):
                raise RegistryError(f"model {name!r}: file name {file_name!r} must be a plain name")
        staging = f"{self._folder(name)}/{STAGING_PREFIX}{uuid.uuid4().hex}"
        try:
            checksums = {}
            for file_name, data in files.items():
                self.storage.write_bytes(f"{staging}/{file_name}", data)
                checksums[file_name] = _sha256(data)
            version = 0
            for _ in range(CLAIM_ATTEMPTS):  # a number claimed by a writer that died before publishing stays a gap
                version = max(max(self.versions(name), default=0), version) + 1
                full_card = {**card, "name": name, "version": version, "created_at": _now()}
                card_bytes = _json_bytes(full_card)
                manifest = {**checksums, "model.json": _sha256(card_bytes)}
                self.storage.write_bytes(f"{staging}/model.json", card_bytes)
                self.storage.write_bytes(f"{staging}/{MANIFEST}", _json_bytes(manifest))
                if self.storage.publish_dir(staging, self._folder(name, version), MANIFEST):
                    break
            else:
                raise RegistryError(f"model {name!r}: could not claim a version number after {CLAIM_ATTEMPTS} tries")
        finally:
            self.storage.delete_dir(staging)  # gone already when the version was published
        with contextlib.suppress(StorageError, OSError):  # the version is published; the next one tidies up
            self.storage.remove_stale_folders(self._folder(name), STAGING_PREFIX, STALE_STAGING_S)  # of dead writers
        return ModelVersion(name, version, full_card)

    def promote(self, name: str, version_or_reference: int | str, alias: str, *,
                reason: str | None = None) -> int | None:
        """Point `alias` at a version (a number, or an alias it is to follow); return where it pointed before.

        Rolling back is promoting the older version again. Each change is appended to
        the alias history, with `reason` when given; promoting the version the alias
        already names changes nothing.
        """
        check_name(alias, "alias", ALIAS_NAME)
        version = self.resolve(name, version_or_reference)
        self.verify(name, version)  # never point an alias, least of all production, at damaged files
        previous: list[int | None] = []

        def change(state: dict) -> None:
            previous[:] = [state["aliases"].get(alias)]
            if previous[0] != version:
                _point(state, alias, version, reason)

        self._change_state(name, change)
        return previous[0]

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """The older name of `promote`, kept for existing callers."""
        self.promote(name, version, alias)

    def delete_alias(self, name: str, alias: str, *, reason: str | None = None) -> int:
        """Remove `alias` from `name` and return the version it pointed at."""
        if not self.versions(name):
            raise RegistryError(f"no model named {name!r} is registered")
        previous: list[int] = []

        def change(state: dict) -> None:
            if alias not in state["aliases"]:
                raise RegistryError(f"model {name!r} has no alias {alias!r}; it has {sorted(state['aliases'])}")
            previous[:] = [state["aliases"][alias]]
            _point(state, alias, None, reason)

        self._change_state(name, change)
        return previous[0]

    # -- the model's state document -------------------------------------------------
    def _state_location(self, name: str) -> str:
        return f"{self._folder(name)}/aliases.json"

    def _state(self, name: str) -> dict:
        location = self._state_location(name)
        return self._parse_state(name, self.storage.read_json(location) if self.storage.exists(location) else None)

    def _parse_state(self, name: str, document: Any) -> dict:
        """{"aliases": {alias: version}, "history": [change, ...], "rollout": state or None}, from the stored
        document, or from the files of a store written before the state was one document."""
        if isinstance(document, dict) and isinstance(document.get("aliases"), dict):
            return {"aliases": dict(document["aliases"]), "history": list(document.get("history", [])),
                    "rollout": document.get("rollout")}
        if document is not None and not isinstance(document, dict):
            raise IntegrityError(f"{self._state_location(name)} must hold a JSON object")
        legacy_rollout = f"{self._folder(name)}/rollout.json"
        return {"aliases": dict(document or {}),
                "history": self._read_lines(f"{self._folder(name)}/alias_history.jsonl"),
                "rollout": self.storage.read_json(legacy_rollout) if self.storage.exists(legacy_rollout) else None}

    def _change_state(self, name: str, change: Callable[[dict], None]) -> dict:
        """Apply `change` (which edits the state in place, or raises to refuse) as one compare-and-swap."""
        def apply(document: Any) -> dict:
            state = self._parse_state(name, document)
            change(state)
            return state

        return self.storage.update_json(self._state_location(name), apply)

    def _append_line(self, location: str, entry: dict) -> None:
        self.storage.append_line(location, json.dumps(entry, sort_keys=True))

    # -- continuous training: the rollout in progress and the retraining history -----
    def rollout(self, name: str) -> dict | None:
        """The challenger rollout in progress for `name` (shadow or canary), or None."""
        return self._state(name)["rollout"]

    def start_rollout(self, name: str, state: dict, *, reason: str) -> None:
        """Point the `challenger` alias at `state["challenger"]` and record the rollout the service follows; refused
        while another rollout is in progress."""
        def change(current: dict) -> None:
            if current["rollout"] is not None:
                raise RegistryError(f"model {name!r} already has a rollout of version "
                                    f"{current['rollout']['challenger']} in progress; it must end first")
            if current["aliases"].get("challenger") != state["challenger"]:
                _point(current, "challenger", state["challenger"], reason)
            current["rollout"] = state

        self._change_state(name, change)

    def end_rollout(self, name: str, challenger: int, *, promote: bool, reason: str) -> None:
        """Finish the rollout of `challenger`: promote it to production, or drop it; the `challenger` alias goes.
        Refused if the rollout in progress is not that version's (another step ended it and began another)."""
        if promote:
            self.verify(name, challenger)

        def change(current: dict) -> None:
            state = current["rollout"]
            if state is None or state["challenger"] != challenger:
                raise RegistryError(f"model {name!r} has no rollout of version {challenger} in progress"
                                    + (f" (it has one of version {state['challenger']})" if state else ""))
            if promote and current["aliases"].get("production") != challenger:
                _point(current, "production", challenger, reason)
            if "challenger" in current["aliases"]:
                _point(current, "challenger", None, reason)
            current["rollout"] = None

        self._change_state(name, change)

    def record_event(self, name: str, event: dict) -> dict:
        """Append one step of continuous training (triggered, trained, gated, rolled out, promoted, rolled back)
        to the model's retraining history, with its time."""
        entry = {"time": _now(), **event}
        self._append_line(f"{self._folder(name)}/retraining.jsonl", entry)
        return entry

    def events(self, name: str) -> list[dict]:
        """The model's retraining history, oldest first."""
        return self._read_lines(f"{self._folder(name)}/retraining.jsonl")

    # -- reading ------------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of models that have at least one published version."""
        return [n for n in self.storage.list_dir("models") if MODEL_NAME.match(n) and self.versions(n)]

    def versions(self, name: str) -> list[int]:
        return sorted(int(n) for n in self.storage.published(self._folder(name), MANIFEST) if n.isdigit())

    def aliases(self, name: str) -> dict[str, int]:
        return self._state(name)["aliases"]

    def aliases_and_rollout(self, name: str) -> tuple[dict[str, int], dict | None]:
        """`aliases` and `rollout` from one read of the model's state (what a serving replica refreshes)."""
        state = self._state(name)
        return state["aliases"], state["rollout"]

    def alias_history(self, name: str) -> list[dict]:
        """Every alias change, oldest first: {"time", "alias", "from", "to"}; "to" is None for a deletion."""
        return self._state(name)["history"]

    def _read_lines(self, location: str) -> list[dict]:
        if not self.storage.exists(location):
            return []
        lines = self.storage.read_bytes(location).decode().splitlines()
        return [_json_loads(line, f"{location} line {number}") for number, line in enumerate(lines, 1) if line]

    def list_versions(self, name: str) -> list[VersionSummary]:
        """Every version of `name`, oldest first, with its aliases and numeric test metrics."""
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"no model named {name!r} is registered")
        aliases_of: dict[int, list[str]] = {}
        for alias, version in sorted(self.aliases(name).items()):
            aliases_of.setdefault(version, []).append(alias)
        models = [self.get(name, version) for version in versions]
        return [
            VersionSummary(m.version, m.card.get("created_at", ""), aliases_of.get(m.version, []), m.test_metrics)
            for m in models
        ]

    def best(self, name: str, metric: str, *, higher_is_better: bool | None = None) -> ModelVersion:
        """The version whose card has the best `metrics["test"][metric]`; of tied versions, the newest.

        Versions without the metric, or with NaN, are skipped. The direction is
        `higher_is_better` when given, else the known one for the metric.
        """
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"no model named {name!r} is registered")
        candidates: list[tuple[ModelVersion, float]] = []
        numeric_metrics: set[str] = set()
        for version in versions:
            model = self.get(name, version)
            numeric_metrics.update(model.test_metrics)
            value = _test_metrics(model.card).get(metric)
            if value is None:
                continue
            if not _is_number(value):
                raise RegistryError(
                    f"test metric {metric!r} of model {name}:{version} is a {type(value).__name__}, not a number, "
                    f"so versions cannot be ranked by it; numeric test metrics: {sorted(model.test_metrics)}"
                )
            if not math.isnan(value):
                candidates.append((model, value))
        if not candidates:
            raise RegistryError(
                f"no version of model {name!r} has a test metric {metric!r}; "
                f"the test metrics its versions have: {sorted(numeric_metrics) or 'none'}"
            )
        if higher_is_better is None:
            if metric not in HIGHER_IS_BETTER:
                raise RegistryError(
                    f"unknown metric {metric!r}: say whether higher is better, "
                    f"or use a known one: {sorted(HIGHER_IS_BETTER)}"
                )
            higher_is_better = HIGHER_IS_BETTER[metric]
        sign = 1 if higher_is_better else -1
        # Versions are in ascending order and max keeps the first maximum, so reverse for the newest.
        return max(reversed(candidates), key=lambda candidate: sign * candidate[1])[0]

    def resolve(self, name: str, reference: int | str | None = None) -> int:
        """A version number from a number, an alias, or None (production, else the latest)."""
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"no model named {name!r} is registered")
        if reference is None:
            return default_version(self.aliases(name), versions)
        if isinstance(reference, int) or (str(reference).isascii() and str(reference).isdigit()):
            version = int(reference)
            if version not in versions:
                raise RegistryError(f"model {name!r} has no version {version}; it has {versions}")
            return version
        aliases = self.aliases(name)
        if reference not in aliases:
            raise RegistryError(f"model {name!r} has no alias {reference!r}; it has {sorted(aliases)}")
        return aliases[reference]

    def get(self, name: str, reference: int | str | None = None) -> ModelVersion:
        version = self.resolve(name, reference)
        location = f"{self._folder(name, version)}/model.json"
        card = _json_loads(self.read_file(name, version, "model.json"), location)
        if not isinstance(card, dict):
            raise IntegrityError(f"{location} must hold a JSON object, not {type(card).__name__}")
        return ModelVersion(name, version, card)

    def read_file(self, name: str, version: int, file_name: str) -> bytes:
        """The bytes of one stored file, after checking them against the manifest."""
        manifest = self._manifest(name, version)
        if file_name not in manifest:
            raise RegistryError(f"model {name}:{version} has no file {file_name!r}; it has {sorted(manifest)}")
        data = self._read_stored(name, version, file_name)
        if _sha256(data) != manifest[file_name]:
            raise IntegrityError(
                f"model {name}:{version}: file {file_name!r} does not match its recorded SHA-256; "
                "it was changed after registration"
            )
        return data

    def verify(self, name: str, version: int) -> None:
        """Check every file of a version against its manifest, and that no file was added."""
        manifest = self._manifest(name, version)
        for file_name in manifest:
            self.read_file(name, version, file_name)
        added = set(self.storage.list_dir(self._folder(name, version))) - set(manifest) - {"manifest.json"}
        if added:
            raise IntegrityError(f"model {name}:{version}: files {sorted(added)} were added after registration")

    def _manifest(self, name: str, version: int) -> dict[str, str]:
        location = f"{self._folder(name, version)}/manifest.json"
        manifest = _json_loads(self._read_stored(name, version, "manifest.json"), location)
        if not isinstance(manifest, dict):
            raise IntegrityError(f"{location} must hold a JSON object of file name to SHA-256")
        return manifest

    def _read_stored(self, name: str, version: int, file_name: str) -> bytes:
        """A file of a version as stored, with a missing file or version named in a RegistryError."""
        folder = self._folder(name, version)
        try:
            return self.storage.read_bytes(f"{folder}/{file_name}")
        except FileNotFoundError:
            if not self.storage.exists(folder):
                raise RegistryError(f"model {name!r} has no version {version}") from None
            raise IntegrityError(f"model {name}:{version} is incomplete: {folder}/{file_name} is missing") from None


def _point(state: dict, alias: str, version: int | None, reason: str | None) -> None:
    """Point `alias` at `version` (None: remove it) in a state document, with its history entry."""
    entry = {"time": _now(), "alias": alias, "from": state["aliases"].get(alias), "to": version}
    if reason:
        entry["reason"] = reason
    state["history"].append(entry)
    if version is None:
        state["aliases"].pop(alias, None)
    else:
        state["aliases"][alias] = version


def _test_metrics(card: Mapping[str, Any]) -> dict[str, Any]:
    """`card["metrics"]["test"]`, or nothing when the card has no such section."""
    metrics = card.get("metrics")
    test = metrics.get("test") if isinstance(metrics, dict) else None
    return test if isinstance(test, dict) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()


def _json_loads(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        raise IntegrityError(f"{where} is not valid JSON: {error}") from None
