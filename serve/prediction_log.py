"""An append-only log of every prediction, written off the request's critical path.

A request only puts its record on an in-memory queue; one background thread per
process writes the records as JSON Lines under
`<storage>/predictions/<model>/<YYYY-MM-DD>/`, in files named after the writer,
which is unique to the process, so writers never share a file. On a local root
the thread appends to `<writer>.jsonl`; an object store cannot append, so there
each flush is one new object, `<writer>-<sequence>.jsonl`. Nothing is rewritten,
and monitoring jobs read the files as they are. The thread writes at least every
`flush_seconds`, and `close()` writes what is left.

When the queue is full (the disk cannot keep up), records are counted as
dropped rather than slowing requests down; the count is logged and exposed.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import queue
import threading
import uuid
from datetime import datetime, timezone
from typing import Any

from orchard.storage import Storage

log = logging.getLogger(__name__)


class PredictionLog:
    def __init__(self, storage: Storage, folder: str = "predictions", *, flush_seconds: float = 1.0,
                 capacity: int = 100_000):
        self.storage = storage
        self.folder = folder
        self._sequence = itertools.count(1)
        self.writer = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._flush_seconds = flush_seconds
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, model: str, version: int, request_id: str, inputs: list, outputs: list,
               entities: list[dict] | None = None, positions: list[int] | None = None,
               time: datetime | None = None, shadow: bool = False) -> None:
        """Queue one request's predictions (never blocks). `entities` are the entity keys the inputs were looked
        up for (one per input), so that outcomes reported by entity key can be joined to them later; `positions`
        each input's place in the request's answer where they differ (entities without features get none); `time`
        is now unless given (a backfill's); `shadow` marks a challenger's answers that were never returned."""
        entry = {"time": (time or datetime.now(timezone.utc)).isoformat(), "model": model, "version": version,
                 "request_id": request_id, "inputs": inputs, "outputs": outputs}
        if entities is not None:
            entry["entities"] = entities
        if positions is not None:
            entry["positions"] = positions
        if shadow:
            entry["shadow"] = True
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("prediction log queue full: %d record(s) dropped so far", self.dropped)

    def close(self, timeout: float = 10.0) -> None:
        self._closed.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._closed.wait(self._flush_seconds)
            self._write_pending()
        self._write_pending()

    def _write_pending(self) -> None:
        batches: dict[str, list[str]] = {}
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            path = f"{self.folder}/{entry['model']}/{entry['time'][:10]}/{self.writer}"
            try:
                batches.setdefault(path, []).append(json.dumps(entry, allow_nan=False, default=str))
            except ValueError:  # a non-finite output is logged as null, not as invalid JSON
                batches.setdefault(path, []).append(json.dumps(_finite(entry), allow_nan=False, default=str))
        for path, lines in batches.items():
            text = "\n".join(lines) + "\n"
            try:
                if self.storage.is_local:
                    file_path = self.storage.path(f"{path}.jsonl")
                    os.makedirs(os.path.dirname(file_path), exist_ok=True)
                    with open(file_path, "a", encoding="utf-8") as handle:
                        handle.write(text)
                else:
                    self.storage.write_bytes(f"{path}-{next(self._sequence):08d}.jsonl", text.encode())
            except Exception as error:  # noqa: BLE001 - a full disk, an unreachable object store: the service
                # keeps answering and this thread keeps writing; the loss is logged and counted
                self.dropped += len(lines)
                log.error("could not write %d prediction(s) to %s: %s", len(lines), self.storage.uri(path), error)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def read_predictions(storage: Storage, model: str, folder: str = "predictions") -> list[dict[str, Any]]:
    """Every logged prediction of `model`, oldest file first (for monitoring jobs and tests)."""
    records = []
    for entry in storage.find_files(f"{folder}/{model}", "*.jsonl"):
        records.extend(json.loads(line) for line in storage.read_bytes(entry.path).decode().splitlines() if line)
    return records
