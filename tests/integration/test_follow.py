"""`orchard features run --follow`: picks up files dropped while it runs, stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from fruit.generate import write_fruit

from features.catalog import get_group
from features.store import OfflineStore
from orchard.storage import Storage

pytestmark = pytest.mark.ray

FRUIT = get_group("fruit_measurements")


class _Lines:
    """Reads a process's stdout on a thread, so waiting for a line can time out."""

    def __init__(self, stream):
        self.lines: list[dict] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(json.loads(line))

    def wait_for(self, predicate, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if predicate(line):
                    return line
            time.sleep(0.2)
        raise AssertionError(f"no matching report within {timeout} s; got {self.lines}")


def test_follow_picks_up_a_file_dropped_while_running_and_stops_on_sigterm(ray_cluster, tmp_path):
    import ray

    storage = Storage(str(tmp_path))
    write_fruit(storage, rows=100, seed=21)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "--storage", str(tmp_path),
         "--ray-address", ray.get_runtime_context().gcs_address,
         "features", "run", "fruit_measurements", "--follow", "--interval", "0.5", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ},
    )
    try:
        reports = _Lines(process.stdout)
        reports.wait_for(lambda r: r["rows_written"] == 100)
        reports.wait_for(lambda r: r["rows_read"] == 0)  # caught up: polling with nothing new

        dropped = write_fruit(storage, rows=60, seed=21)  # lands while the loop runs
        picked_up = reports.wait_for(lambda r: r["rows_written"] == 60)
        assert picked_up["files_read"] == len(dropped.files)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "stopping after the current run" in process.stderr.read()
    assert all(set(r) >= {"rows_read", "rows_written", "rows_quarantined", "rows_duplicate", "seconds"}
               for r in reports.lines)
    ids = OfflineStore(storage).read_table(FRUIT).column("fruit_id").to_pylist()
    assert len(ids) == len(set(ids)) == 160
