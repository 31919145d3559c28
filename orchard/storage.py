"""The one storage layer: every persistent thing lives under one root URI.

Paths given to `Storage` are relative to the root and use "/" separators. The
file system comes from pyarrow, so a local folder and an object store are used
through the same calls.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow.fs as pafs

from orchard.errors import OrchardError


class StorageError(OrchardError):
    """A storage operation failed; the message names the path."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    """Path relative to the storage root."""
    size: int
    mtime_ns: int


class Storage:
    """Reads and writes under one root; writes of single files are atomic."""

    def __init__(self, root_uri: str):
        self.root_uri = root_uri.rstrip("/") or "/"
        self.fs, self.root = pafs.FileSystem.from_uri(self.root_uri)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Storage({self.root_uri!r})"

    # -- naming -----------------------------------------------------------------
    def path(self, relative: str = "") -> str:
        """The path inside `self.fs` for a path relative to the root."""
        relative = relative.strip("/")
        if ".." in relative.split("/"):
            raise StorageError(f"path {relative!r} must not leave the storage root")
        return posixpath.join(self.root, relative) if relative else self.root

    def uri(self, relative: str = "") -> str:
        """A full URI (or absolute local path) that Ray Data and deltalake accept."""
        if self.is_local:
            return self.path(relative)
        return f"{self.root_uri}/{relative.strip('/')}" if relative else self.root_uri

    def relative(self, fs_path: str) -> str:
        return posixpath.relpath(fs_path, self.root)

    # -- queries ------------------------------------------------------------------
    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def list_dir(self, relative: str) -> list[str]:
        """Names directly inside a folder; an absent folder is empty."""
        try:
            info = self.fs.get_file_info(pafs.FileSelector(self.path(relative), allow_not_found=True))
        except FileNotFoundError:
            # pyarrow's local listing opens the folder, then checks separately that it exists: a folder another
            # process creates in between raises despite allow_not_found. It was absent when the listing began.
            return []
        return sorted(posixpath.basename(entry.path) for entry in info)

    def find_files(self, relative: str, pattern: str = "*") -> Iterator[FileEntry]:
        """Files below a folder, recursively, whose name matches a glob pattern, sorted by path."""
        selector = pafs.FileSelector(self.path(relative), recursive=True, allow_not_found=True)
        base = self.path(relative)

        def visible(path: str) -> bool:  # skips temporary files and folders such as _delta_log
            return not any(part.startswith((".", "_")) for part in posixpath.relpath(path, base).split("/"))

        entries = [
            e for e in self.fs.get_file_info(selector)
            if e.type == pafs.FileType.File and fnmatch.fnmatch(posixpath.basename(e.path), pattern) and visible(e.path)
        ]
        for entry in sorted(entries, key=lambda e: e.path):
            yield FileEntry(self.relative(entry.path), entry.size, entry.mtime_ns or 0)

    # -- reads and writes -----------------------------------------------------------
    def read_bytes(self, relative: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(relative)) as stream:
                return stream.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"no file at {self.uri(relative)}") from None

    def read_json(self, relative: str) -> Any:
        raw = self.read_bytes(relative)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as error:
            raise StorageError(f"{self.uri(relative)} is not valid JSON: {error}") from None

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a file so that readers see either the old or the whole new content."""
        target = self.path(relative)
        self.fs.create_dir(posixpath.dirname(target), recursive=True)
        if self.is_local:
            temporary = posixpath.join(posixpath.dirname(target), f".tmp-{uuid.uuid4().hex}")
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        else:  # a single PUT to an object store is atomic
            with self.fs.open_output_stream(target) as stream:
                stream.write(data)

    def write_json(self, relative: str, value: Any) -> None:
        self.write_bytes(relative, json.dumps(value, indent=2, sort_keys=True, default=str).encode())

    def make_dir(self, relative: str) -> None:
        self.fs.create_dir(self.path(relative), recursive=True)

    def delete_dir(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.delete_dir(self.path(relative))

    def delete_file(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.delete_file(self.path(relative))

    def publish_dir(self, staging: str, final: str) -> bool:
        """Atomically move a fully written folder to its final name.

        Returns False, leaving `staging` in place, when `final` already exists, so
        two writers racing for one name never both win and a half-written folder
        is never visible under its final name.
        """
        if not self.is_local:
            raise StorageError(
                f"atomic folder publishing is only implemented for local storage, not {self.root_uri}"
            )
        self.fs.create_dir(posixpath.dirname(self.path(final)), recursive=True)
        try:
            os.rename(self.path(staging), self.path(final))
        except OSError as error:
            if os.path.exists(self.path(final)):
                return False
            raise StorageError(f"cannot publish {staging} as {final}: {error}") from error
        return True
