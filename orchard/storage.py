"""The one storage layer: every persistent thing lives under one root URI.

Paths given to `Storage` are relative to the root and use "/" separators. The
file system comes from pyarrow, so a local folder and an object store are used
through the same calls.
"""

from __future__ import annotations

import fcntl
import fnmatch
import functools
import hashlib
import json
import os
import posixpath
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterator

import pyarrow.fs as pafs

from orchard.errors import OrchardError

CONDITIONAL_PUT_ATTEMPTS = 8  # over about 15 s: an object store restarting, or a network fault, is bridged


STAGING_PREFIX = ".staging-"
"""Folders a writer fills before publishing them under their final name (`publish_dir`)."""
STALE_STAGING_S = 24 * 3600.0
"""A staging folder with nothing written for this long belongs to a writer that died; the next writer beside it
removes it (`remove_stale_folders`), `orchard clean` at once."""


class StorageError(OrchardError):
    """A storage operation failed; the message names the path."""


def _named(action: str):
    """A storage call that fails raises a StorageError naming what it did and where, not the file system library's
    own OSError (an object store that is away, a refused permission): callers and the CLI handle one error type.
    A missing file stays FileNotFoundError."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, relative, *args, **kwargs):
            try:
                return method(self, relative, *args, **kwargs)
            except (FileNotFoundError, FileExistsError):
                raise
            except OSError as error:  # pyarrow's messages name the bucket and key, never the credentials
                raise StorageError(f"cannot {action} {self.uri(relative)}: {error}") from None
        return wrapper
    return decorate


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
        self.is_s3 = self.root_uri.startswith("s3://")

    def __repr__(self) -> str:
        return f"Storage({self.root_uri!r})"

    # -- naming -----------------------------------------------------------------
    def path(self, relative: str = "") -> str:
        """The path inside `self.fs` for a path relative to the root."""
        relative = relative.strip("/")
        if ".." in relative.split("/") or "\x00" in relative:
            raise StorageError(f"path {relative!r} must not leave the storage root or hold a NUL character")
        return posixpath.join(self.root, relative) if relative else self.root

    def uri(self, relative: str = "") -> str:
        """A full URI (or absolute local path) that Ray Data and deltalake accept."""
        if self.is_local:
            return self.path(relative)
        self.path(relative)  # the same check: nothing outside the root
        return f"{self.root_uri}/{relative.strip('/')}" if relative else self.root_uri

    def relative(self, fs_path: str) -> str:
        return posixpath.relpath(fs_path, self.root)

    # -- queries ------------------------------------------------------------------
    @_named("read")
    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    @_named("list")
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
        base = relative.strip("/") or "."

        def visible(path: str) -> bool:  # skips temporary files and folders such as _delta_log
            return not any(part.startswith((".", "_")) for part in posixpath.relpath(path, base).split("/"))

        entries = [e for e in self._all_files(relative)
                   if fnmatch.fnmatch(posixpath.basename(e.path), pattern) and visible(e.path)]
        yield from sorted(entries, key=lambda e: e.path)

    # -- reads and writes -----------------------------------------------------------
    @_named("read")
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

    @_named("write")
    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a file so that readers see either the old or the whole new content."""
        target = self.path(relative)
        if self.is_local:
            self.fs.create_dir(posixpath.dirname(target), recursive=True)
            os.replace(self._local_temporary(target, data), target)
        elif self.is_s3:  # one PUT, atomic; pyarrow's stream would first create "folder" marker objects
            self._s3_put(relative, data)
        else:
            with self.fs.open_output_stream(target) as stream:
                stream.write(data)

    def write_json(self, relative: str, value: Any) -> None:
        self.write_bytes(relative, _json_bytes(value))

    @_named("write")
    def make_dir(self, relative: str) -> None:
        self.fs.create_dir(self.path(relative), recursive=True)

    @_named("delete")
    def delete_dir(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.delete_dir(self.path(relative))

    @_named("delete")
    def delete_file(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.delete_file(self.path(relative))

    @_named("publish")
    def publish_dir(self, staging: str, final: str, marker: str) -> bool:
        """Make the fully written folder `staging` visible as `final` at once; False if `final` was taken.

        `marker` is the name of the folder's file that readers check for (see `published`): on an object store it
        is copied last. On False, `staging` stays in place, so two writers racing for one name never both win and
        a half-written folder is never visible under its final name.
        """
        if self.is_local:
            self.fs.create_dir(posixpath.dirname(self.path(final)), recursive=True)
            try:
                os.rename(self.path(staging), self.path(final))
            except OSError as error:
                if os.path.exists(self.path(final)):
                    return False
                raise StorageError(f"cannot publish {staging} as {final}: {error}") from error
            return True
        parent, name = posixpath.split(final.strip("/"))
        files = [entry.path for entry in self._all_files(staging)]
        marker_path = f"{staging.strip('/')}/{marker}"
        if marker_path not in files:  # checked before the claim, so a bad folder takes no name
            raise StorageError(f"cannot publish {staging}: it has no {marker}")
        if not self.create_exclusive(f"{parent}/.claims/{name}", staging.encode()):
            return False
        for path in sorted(files, key=lambda p: p == marker_path):  # the marker last
            self.fs.copy_file(self.path(path), self.path(f"{final}/{posixpath.relpath(path, staging.strip('/'))}"))
        self.delete_dir(staging)
        return True

    @_named("clean")
    def remove_stale_folders(self, relative: str, prefix: str, older_than_s: float) -> list[str]:
        """Delete the folders directly inside `relative` whose name starts with `prefix` and in which nothing was
        written for `older_than_s` seconds: the staging folders of writers that died. Returns their names.

        A writer still at work keeps writing files, so a folder younger than the age is left alone; the age must
        exceed the longest write of one folder."""
        cutoff = time.time_ns() - int(older_than_s * 1e9)
        stale = []
        for name in self.list_dir(relative):  # one listing of the folder itself; its versions are not read
            if not name.startswith(prefix):
                continue
            folder = f"{relative}/{name}"
            try:
                written = [entry.mtime_ns for entry in self._all_files(folder)]
                if self.is_local:  # a local folder exists before its first file: its own time counts too
                    info = self.fs.get_file_info(self.path(folder))
                    if info.type == pafs.FileType.NotFound:
                        continue  # published (renamed) or removed by someone else meanwhile
                    written.append(info.mtime_ns or 0)
                if max(written, default=0) < cutoff and written:
                    self.fs.delete_dir(self.path(folder))
                    stale.append(name)
            except FileNotFoundError:
                continue  # gone meanwhile: another writer published it or another cleaner removed it
        return stale

    @_named("list")
    def _all_files(self, relative: str) -> list[FileEntry]:
        selector = pafs.FileSelector(self.path(relative), recursive=True, allow_not_found=True)
        return [FileEntry(self.relative(entry.path), entry.size, entry.mtime_ns or 0)
                for entry in self.fs.get_file_info(selector) if entry.type == pafs.FileType.File]

    # -- conditional writes: claims and compare-and-swap -------------------------------
    @_named("write")
    def create_exclusive(self, relative: str, data: bytes) -> bool:
        """Write `data` under `relative` only if nothing has that name; False if something had."""
        target = self.path(relative)
        if self.is_local:
            self.fs.create_dir(posixpath.dirname(target), recursive=True)
            temporary = self._local_temporary(target, data)
            try:
                os.link(temporary, target)
            except FileExistsError:
                return False
            finally:
                os.unlink(temporary)
            return True
        return self._s3_put(relative, data, IfNoneMatch="*") is not None

    @_named("read")
    def read_tagged(self, relative: str) -> tuple[bytes | None, str | None]:
        """A document's content and its tag for `replace_if`; (None, None) when there is none."""
        if self.is_local:
            try:
                with open(self.path(relative), "rb") as handle:
                    data = handle.read()
            except FileNotFoundError:
                return None, None
            return data, hashlib.sha256(data).hexdigest()
        self._s3_client()  # the same check: an s3:// root
        try:
            return self._get_tagged(self._client, relative)
        except Exception as error:  # noqa: BLE001 - botocore's errors, named without their details' secrets
            raise StorageError(f"cannot read {self.uri(relative)}: {_s3_error(error)}") from None

    @_named("write")
    def replace_if(self, relative: str, data: bytes, tag: str | None) -> bool:
        """Write `data` if the document still has `tag` (None: if there is still no document); False if not."""
        if self.is_local:
            with self._local_lock(relative):
                if self.read_tagged(relative)[1] != tag:
                    return False
                self.write_bytes(relative, data)
                return True
        if tag is None:
            return self._s3_put(relative, data, IfNoneMatch="*") is not None
        return self._s3_put(relative, data, IfMatch=tag) is not None

    @_named("update")
    def update_json(self, relative: str, change: Callable[[Any], Any], *, attempts: int = 100) -> Any:
        """Read a JSON document (None when absent), let `change` return its new value, and write that only if nobody
        wrote the document meanwhile; on a conflict, read and change again. Returns the value written."""
        def swap(data: bytes | None) -> tuple[bytes, Any]:
            try:
                current = None if data is None else json.loads(data)
            except json.JSONDecodeError as error:
                raise StorageError(f"{self.uri(relative)} is not valid JSON: {error}") from None
            value = change(current)
            return _json_bytes(value), value

        return self._swap(relative, swap, attempts)

    @_named("append to")
    def append_line(self, relative: str, line: str) -> None:
        """Append one line to a text file that several writers may append to; none of them loses a line."""
        line = line.rstrip("\n") + "\n"
        if self.is_local:
            self.fs.create_dir(posixpath.dirname(self.path(relative)), recursive=True)
            with self._local_lock(relative), open(self.path(relative), "a") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            return
        # an object store cannot append: rewrite the object if nobody else did meanwhile
        self._swap(relative, lambda data: ((data or b"") + line.encode(), None), 100)

    def _swap(self, relative: str, change: Callable[[bytes | None], tuple[bytes, Any]], attempts: int) -> Any:
        """Compare-and-swap until it holds: `change` maps the current bytes (None: absent) to (new bytes, result)."""
        for _ in range(attempts):
            data, tag = self.read_tagged(relative)
            new, result = change(data)
            if self.replace_if(relative, new, tag):
                return result
        raise StorageError(f"{self.uri(relative)}: gave up after {attempts} conflicting concurrent updates")

    def published(self, relative: str, marker: str) -> list[str]:
        """Names of the folders directly inside `relative` that `publish_dir` completed: those holding `marker`."""
        if self.is_local:  # published by one rename: a folder under its final name is complete
            return [name for name in self.list_dir(relative) if not name.startswith(".")]
        base = relative.strip("/") or "."  # one recursive listing rather than a request per folder
        inside = (posixpath.relpath(entry.path, base).split("/") for entry in self._all_files(relative))
        return sorted({parts[0] for parts in inside if len(parts) == 2 and parts[1] == marker
                       and not parts[0].startswith(".")})

    def _local_temporary(self, target: str, data: bytes) -> str:
        temporary = posixpath.join(posixpath.dirname(target), f".tmp-{uuid.uuid4().hex}")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return temporary

    @contextmanager
    def _local_lock(self, relative: str) -> Iterator[None]:
        target = self.path(relative)
        self.fs.create_dir(posixpath.dirname(target), recursive=True)
        lock_path = posixpath.join(posixpath.dirname(target), f".{posixpath.basename(target)}.lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # closing the file releases the lock, also when the process dies

    # -- S3 ---------------------------------------------------------------------------------
    def _s3_key(self, relative: str) -> tuple[str, str]:
        bucket, _, key = self.path(relative).partition("/")
        return bucket, key

    def _s3_client(self):
        if not self.is_s3:
            raise StorageError(f"claims and compare-and-swap writes are implemented for local folders and s3:// "
                               f"roots, not for {self.root_uri}")
        return self._client

    @cached_property
    def _client(self):
        # Stated, not left to the installed botocore's defaults: standard retries, 6 attempts with backoff (a few
        # seconds of outage bridged for idempotent calls), and no call waits on a silent server for ever.
        return _s3_client(attempts=6)

    @cached_property
    def _conditional_client(self):
        """A client that does not retry by itself: see `_conditional_put`."""
        return _s3_client(attempts=1)

    def _get_tagged(self, client, relative: str) -> tuple[bytes | None, str | None]:
        """A document's content and ETag through `client`, (None, None) when there is none; botocore's errors raise."""
        bucket, key = self._s3_key(relative)
        try:
            answer = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None, None
        return answer["Body"].read(), answer["ETag"]

    def _s3_put(self, relative: str, data: bytes, **condition: str) -> str | None:
        """PUT, with a condition if given; the new ETag, or None when the condition did not hold."""
        if condition:
            return self._conditional_put(relative, data, condition)
        client, bucket, key = self._s3_client(), *self._s3_key(relative)
        try:
            return client.put_object(Bucket=bucket, Key=key, Body=data)["ETag"]
        except Exception as error:  # noqa: BLE001 - no credentials, no endpoint, ...: botocore's own errors
            raise StorageError(f"cannot write {self.uri(relative)}: {_s3_error(error)}") from None

    def _conditional_put(self, relative: str, data: bytes, condition: dict[str, str]) -> str | None:
        """A conditional PUT that survives a lost answer.

        When the connection drops after the server wrote but before its answer arrived (a server restart, a network
        fault), a plain retry finds the writer's own object and fails its condition: a claim would look taken by
        someone else and a compare-and-swap would apply its change twice. So these PUTs are retried here, not by
        botocore, and after an answer that never came the object is read back: holding exactly these bytes, the
        write was this one's (the bytes of a claim or a swap hold the writer's own content, so two writers' bytes
        differ in practice). Returns the new ETag, or None when the condition did not hold."""
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as NoConnection

        self._s3_client()  # the same check: an s3:// root
        client, bucket, key = self._conditional_client, *self._s3_key(relative)
        problem = "no answer"
        for attempt in range(CONDITIONAL_PUT_ATTEMPTS):
            if attempt:
                time.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
                try:
                    current, tag = self._read_back(relative)
                except BotoCoreError:
                    continue  # the store is still away
                # The lost answer's write happened if the object holds these bytes; or, for a line appended to a
                # log, starts with them and another writer appended after (a JSON document never does).
                if current == data or ("IfMatch" in condition and current is not None and current.startswith(data)):
                    return tag
                if "IfNoneMatch" in condition and current is not None:
                    return None  # somebody else's object holds the name
                if "IfMatch" in condition and tag != condition["IfMatch"]:
                    return None  # somebody else changed the document
            try:
                return client.put_object(Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
            except ClientError as error:
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
                # 412: the condition failed; 409: a concurrent conditional write to the same key is in progress;
                # 404 on If-Match: the document is gone, so it no longer has the tag
                if status in (409, 412) or (status == 404 and "IfMatch" in condition):
                    return None
                if status < 500:
                    raise StorageError(f"cannot write {self.uri(relative)}: {_s3_error(error)}") from None
                problem = _s3_error(error)  # the server failed: it may or may not have written
            except (NoConnection, HTTPClientError) as error:  # the write may or may not have happened
                problem = _s3_error(error)
            except BotoCoreError as error:  # no credentials, a bad parameter: no retry helps
                raise StorageError(f"cannot write {self.uri(relative)}: {_s3_error(error)}") from None
        raise StorageError(f"cannot write {self.uri(relative)}: the object store did not answer "
                           f"{CONDITIONAL_PUT_ATTEMPTS} attempts ({problem})")

    def _read_back(self, relative: str) -> tuple[bytes | None, str | None]:
        """A document and its tag, read once, without botocore's retries (the caller's loop retries): raises
        botocore's error when the store does not answer."""
        from botocore.exceptions import ClientError

        try:
            return self._get_tagged(self._conditional_client, relative)
        except ClientError as error:
            raise StorageError(f"cannot read {self.uri(relative)}: {_s3_error(error)}") from None

    def __getstate__(self) -> dict:  # a boto3 client does not travel to Ray workers; they make their own
        state = dict(self.__dict__)
        state.pop("_client", None)
        state.pop("_conditional_client", None)
        return state


def _s3_client(attempts: int):
    """A boto3 S3 client from the standard AWS variables, making at most `attempts` tries per call."""
    import boto3  # only object-store roots need it
    from botocore.config import Config

    return boto3.session.Session().client("s3", config=Config(
        retries={"total_max_attempts": attempts, "mode": "standard"}, connect_timeout=10, read_timeout=60))


def _s3_error(error: Exception) -> str:
    """What went wrong in an S3 call, in words that never hold a credential: the error's type and code."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        details = response.get("Error", {})
        return f"{details.get('Code', type(error).__name__)} ({details.get('Message', 'no message')})"
    return type(error).__name__


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()
