"""The model registry: immutable, integer-numbered model versions under the storage root.

Layout::

    models/<name>/<version>/model.json      card: flavor, signature, metrics, lineage, created time
    models/<name>/<version>/manifest.json   SHA-256 of every other file, checked on every read
    models/<name>/<version>/<artifact files>
    models/<name>/aliases.json              {"production": 3, ...}

A version is written completely in a staging folder and then published under
its number with one atomic rename, so readers never see half a version and two
concurrent registrations never get the same number.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from orchard.storage import Storage

MODEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
RESERVED_FILES = {"model.json", "manifest.json"}


class RegistryError(RuntimeError):
    """A registry operation was refused or found inconsistent data."""


class IntegrityError(RegistryError):
    """A stored file does not match the checksum recorded when it was registered."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    card: dict

    @property
    def flavor(self) -> str:
        return self.card["flavor"]

    @property
    def signature(self) -> dict:
        return self.card["signature"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_name(name: str, kind: str = "model", pattern: re.Pattern = MODEL_NAME) -> str:
    if not pattern.match(name):
        raise RegistryError(f"{kind} name {name!r} must be lower case letters, digits, '_' or '-'")
    return name


class ModelRegistry:
    def __init__(self, storage: Storage):
        self.storage = storage

    def _folder(self, name: str, version: int | None = None) -> str:
        base = f"models/{check_name(name)}"
        return base if version is None else f"{base}/{version}"

    # -- writing ---------------------------------------------------------------
    def register(self, name: str, files: Mapping[str, bytes], card: Mapping[str, Any]) -> ModelVersion:
        """Store `files` and `card` as the next version of `name` and return it."""
        check_name(name)
        if not files:
            raise RegistryError(f"model {name!r}: nothing to register")
        clashes = RESERVED_FILES & set(files)
        if clashes:
            raise RegistryError(f"model {name!r}: file names {sorted(clashes)} are reserved")
        for file_name in files:
            if "/" in file_name or file_name.startswith("."):
                raise RegistryError(f"model {name!r}: file name {file_name!r} must be a plain name")
        staging = f"{self._folder(name)}/.staging-{uuid.uuid4().hex}"
        for attempt in range(100):
            version = max(self.versions(name), default=0) + 1
            full_card = {
                **card,
                "name": name,
                "version": version,
                "created_at": datetime.now(timezone.utc).isoformat(),
            }
            self.storage.delete_dir(staging)
            contents = {**files, "model.json": _json_bytes(full_card)}
            for file_name, data in contents.items():
                self.storage.write_bytes(f"{staging}/{file_name}", data)
            manifest = {file_name: _sha256(data) for file_name, data in contents.items()}
            self.storage.write_bytes(f"{staging}/manifest.json", _json_bytes(manifest))
            if self.storage.publish_dir(staging, self._folder(name, version)):
                return ModelVersion(name, version, full_card)
        self.storage.delete_dir(staging)
        raise RegistryError(f"model {name!r}: could not claim a version number after {attempt + 1} tries")

    def set_alias(self, name: str, alias: str, version: int) -> None:
        check_name(alias, "alias", ALIAS_NAME)
        if version not in self.versions(name):
            raise RegistryError(f"model {name!r} has no version {version}")
        aliases = self.aliases(name)
        aliases[alias] = version
        self.storage.write_json(f"{self._folder(name)}/aliases.json", aliases)

    # -- reading ------------------------------------------------------------------
    def models(self) -> list[str]:
        return [n for n in self.storage.list_dir("models") if MODEL_NAME.match(n)]

    def versions(self, name: str) -> list[int]:
        return sorted(int(n) for n in self.storage.list_dir(self._folder(name)) if n.isdigit())

    def aliases(self, name: str) -> dict[str, int]:
        location = f"{self._folder(name)}/aliases.json"
        return dict(self.storage.read_json(location)) if self.storage.exists(location) else {}

    def resolve(self, name: str, reference: int | str | None = None) -> int:
        """A version number from a number, an alias, or None (production, else the latest)."""
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"no model named {name!r} is registered")
        if reference is None:
            return self.aliases(name).get("production", versions[-1])
        if isinstance(reference, int) or str(reference).isdigit():
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
        card = _json_loads(self.read_file(name, version, "model.json"), f"{name}:{version}/model.json")
        return ModelVersion(name, version, card)

    def read_file(self, name: str, version: int, file_name: str) -> bytes:
        """The bytes of one stored file, after checking them against the manifest."""
        folder = self._folder(name, version)
        manifest = _json_loads(self.storage.read_bytes(f"{folder}/manifest.json"), f"{folder}/manifest.json")
        if file_name not in manifest:
            raise RegistryError(f"model {name}:{version} has no file {file_name!r}")
        data = self.storage.read_bytes(f"{folder}/{file_name}")
        if _sha256(data) != manifest[file_name]:
            raise IntegrityError(
                f"model {name}:{version}: file {file_name!r} does not match its recorded SHA-256; "
                "it was changed after registration"
            )
        return data

    def verify(self, name: str, version: int) -> None:
        """Check every file of a version against its manifest."""
        folder = self._folder(name, version)
        manifest = _json_loads(self.storage.read_bytes(f"{folder}/manifest.json"), f"{folder}/manifest.json")
        for file_name in manifest:
            self.read_file(name, version, file_name)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()


def _json_loads(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        raise RegistryError(f"{where} is not valid JSON: {error}") from None
