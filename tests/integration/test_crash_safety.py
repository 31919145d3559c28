"""Crash safety: the writers of stored state killed with SIGKILL at random points, many times over.

Each operation runs as its own process, as a user runs it, and is killed at a time drawn from a seeded random
generator over the span a whole run takes; after every kill the test reads what is stored and checks it: every
table and version stays readable, nothing half-written is visible, and nothing a finished step promised is lost.
After the last kill one run is let finish, and the totals must be exact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from surf.groups import BUOY_READINGS

from features.online import SqliteOnlineStore
from features.store import OfflineStore
from orchard.registry import ModelRegistry
from orchard.storage import STAGING_PREFIX, Storage
from tests.crash_driver import version_files
from tests.helpers import REPOSITORY

pytestmark = pytest.mark.slow  # about 10 minutes: 250 SIGKILLs, most of them of a process running Ray Data

KILLS = int(os.environ.get("ORCHARD_TEST_KILLS", "50"))  # fewer only while developing a test; CI runs 50
SEED = 20261203


@dataclass
class Kills:
    """What the kills of one operation did, for the summary line the test prints."""

    operation: str
    trials: int = 0
    by_phase: dict[str, int] = field(default_factory=dict)

    def count(self, phase: str) -> None:
        self.trials += 1
        self.by_phase[phase] = self.by_phase.get(phase, 0) + 1

    def summary(self) -> str:
        phases = ", ".join(f"{phase} {n}" for phase, n in sorted(self.by_phase.items()))
        return f"{self.operation}: {self.trials} SIGKILLs ({phases})"


def run_and_kill(argv: list[str], after_s: float, env: dict | None = None, *, after_ready: bool = False
                 ) -> tuple[int, str, str]:
    """Start `argv` and SIGKILL it (by PID) `after_s` seconds later unless it has ended; with `after_ready`, the
    seconds count from its first line ("ready"), so that start-up does not use up the kills. Returns (exit code,
    stdout after "ready", stderr)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPOSITORY,
                               env=env or os.environ.copy())
    if after_ready:
        first = process.stdout.readline()
        assert first == "ready\n", f"expected 'ready' first, got {first!r}: {process.stderr.read()[-2000:]}"
    try:
        process.wait(after_s)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


class PreparedJob:
    """An `orchard` command in a driver that has joined Ray and waits for "go" (tests/crash_driver.py `job`)."""

    def __init__(self, address: str, storage: Storage, arguments: list[str], env: dict):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_driver", "job", address, storage.root_uri, *arguments],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPOSITORY, env=env)

    def run(self, kill_after_s: float) -> tuple[int, str, float]:
        """Let the command go and SIGKILL it (by PID) `kill_after_s` later unless it ended: (exit code, stderr,
        seconds it ran)."""
        first = self.process.stdout.readline()
        assert first == "ready\n", f"expected 'ready', got {first!r}: {self.process.stderr.read()[-3000:]}"
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        started = time.monotonic()
        try:
            self.process.wait(kill_after_s)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
        _, err = self.process.communicate(timeout=120)
        return self.process.returncode, err, time.monotonic() - started

    def discard(self) -> None:
        """Stop a driver that was never let go (it has not touched the stores)."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.communicate(timeout=60)


def _clean_abandoned(storage: Storage, folder: str) -> int:
    """`orchard clean --older-than 0 --force` once the kills are over: every staging folder the killed writers left in
    `folder` goes; returns how many there were."""
    left = [name for name in storage.list_dir(folder) if name.startswith(STAGING_PREFIX)]
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "--storage", storage.root_uri, "clean",
                             "--older-than", "0", "--force", "--json"], capture_output=True, text=True, cwd=REPOSITORY,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(json.loads(result.stdout)["removed"]) == sorted(f"{folder}/{name}" for name in left)
    assert not [name for name in storage.list_dir(folder) if name.startswith(STAGING_PREFIX)]
    return len(left)


def _seconds_per_registration(registry: ModelRegistry) -> float:
    """The median time of three registrations of a version like the driver's (a model of their own), in this hour's
    machine and storage."""
    times = []
    for count in range(1, 4):
        started = time.monotonic()
        registry.register("timing", version_files(-2, count), {"task": "regression"})
        times.append(time.monotonic() - started)
    return sorted(times)[1]


def test_registration_killed_at_random_points_loses_no_version_and_shows_no_half_written_one(storage_root, capsys):
    """A process registering one version after another is killed 50 times. Every number it printed (register had
    returned it) is still there; the only version visible that it did not print is the one it had published when
    the kill came; every visible version passes its checksums and holds its own files. The kills fall within half a
    second of the writer's start, or three registrations' time (measured here first) where that is longer, as on
    S3 in a slow hour: so they land both in the first version and after some."""
    rng = random.Random(SEED)
    registry = ModelRegistry(Storage(storage_root))
    window = max(0.5, 3 * _seconds_per_registration(registry))
    promised: set[int] = set()
    seen: set[int] = set()
    kills = Kills("registration")
    for trial in range(KILLS):
        code, out, err = run_and_kill([sys.executable, "-m", "tests.crash_driver", "register", storage_root, "m",
                                       str(trial)], rng.uniform(0, window), after_ready=True)
        assert code == -signal.SIGKILL, f"the writer ended by itself ({code}): {err[-2000:]}"
        printed = {int(line) for line in out.split()}
        visible = set(registry.versions("m"))
        assert promised | printed <= visible, f"trial {trial}: versions lost: {sorted((promised | printed) - visible)}"
        unprinted = visible - seen - printed
        assert len(unprinted) <= 1, f"trial {trial}: more than the one in-flight version appeared: {unprinted}"
        for version in visible - seen:
            registry.verify("m", version)
            card = registry.get("m", version).card
            assert (card["version"], card["seed"]) == (version, trial)
            assert registry.read_file("m", version, "weights.bin") == version_files(trial, card["count"])[
                "weights.bin"]
        kills.count("after a version" if printed else "during the first version")
        promised |= printed
        seen = visible
    abandoned = _clean_abandoned(registry.storage, "models/m")
    final = registry.register("m", version_files(-1, 1), {"task": "regression"})
    assert final.version > max(seen, default=0)
    assert kills.by_phase.get("after a version"), f"no kill came after a whole version: {kills.summary()}"
    assert set(registry.versions("m")) == seen | {final.version}
    for version in seen:
        registry.verify("m", version)
    with capsys.disabled():
        print(f"\n{kills.summary()}; kills within {window:.2f} s of 'ready'; {len(seen)} versions published, "
              f"{len(promised)} of them printed before a kill; "
              f"{abandoned} abandoned staging folders removed")


# -- the feature pipeline and materialization ------------------------------------------------------------------------
BUOYS, HOURS = 20, 10
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
GROUP = BUOY_READINGS


def _readings(trial: int) -> list[dict]:
    """Trial `trial`'s readings: every buoy, `HOURS` hours of its own; values that differ between trials."""
    return [{"station": f"crash-{b:02d}", "time": (START + timedelta(hours=trial * HOURS + h)).strftime(
                 "%Y-%m-%dT%H:%M:%SZ"), "hs": round(0.5 + (trial * 7 + b * 3 + h) % 40 / 10, 2),
             "tp": float(8 + (trial + b) % 9), "dir": float((trial * 13 + b * 5 + h) % 360)}
            for h in range(HOURS) for b in range(BUOYS)]


def _write_trial(storage: Storage, trial: int) -> None:
    """A file of the trial's readings, one reading out of range (to quarantine) and, after the first, a reading of
    the trial before sent again (a duplicate)."""
    lines = [json.dumps(reading) for reading in _readings(trial)]
    lines.insert(len(lines) // 2, json.dumps({**_readings(trial)[0], "time": f"2026-01-01T00:{trial % 60:02d}:30Z",
                                              "hs": -1.0}))
    if trial:
        lines.append(json.dumps(_readings(trial - 1)[7]))
    storage.write_bytes(f"landing/surf/buoys/crash-{trial:03d}/readings.jsonl", ("\n".join(lines) + "\n").encode())


def _trial_of(read_at: datetime) -> int:
    return int((read_at - START).total_seconds() // 3600) // HOURS


def _check_offline(storage: Storage, files: int) -> tuple[dict, dict]:
    """The table and quarantine are readable and hold whole files only, each row once. Returns the table's rows by
    (buoy, time) and the quarantined lines by file."""
    store = OfflineStore(storage)
    if not store.exists(GROUP):
        return {}, {}
    table = store.read_table(GROUP)
    rows = {(r["buoy_id"], r["read_at"]): r for r in table.to_pylist()}
    assert len(rows) == table.num_rows, "a reading is in the table twice"
    per_trial = Counter(_trial_of(read_at) for _, read_at in rows)
    assert set(per_trial.values()) <= {BUOYS * HOURS}, f"a file is in the table in part: {per_trial}"
    assert set(per_trial) <= set(range(files))
    quarantined = Counter((r["source"], r["line"]) for r in store.read_quarantine(GROUP).to_pylist())
    assert set(quarantined.values()) <= {1}, f"a line is quarantined twice: {quarantined.most_common(3)}"
    return rows, quarantined


def _check_online(path: Path, rows: dict) -> int | None:
    """Every row the online store holds is a row of the committed table; returns its materialized version."""
    if not path.exists():
        return None
    online = SqliteOnlineStore(str(path))
    try:
        found = online.read_rows(GROUP, [[f"crash-{b:02d}"] for b in range(BUOYS)])
        for b, entry in enumerate(found):
            if entry is not None:
                values = entry[1]
                stored = rows.get((f"crash-{b:02d}", values["read_at"]))
                assert stored is not None, f"the online store holds a reading the table does not: {values}"
                assert {k: stored[k] for k in values} == values
        return online.materialized_version(GROUP)
    finally:
        online.close()


def _feature_job(storage: Storage, kind: str, online: Path) -> PreparedJob:
    """`orchard features KIND` (run: ingest, commit, then materialization; materialize) of the group, into the
    online store at `online`, in a driver that joins the session's Ray now and starts on `run`."""
    import ray

    return PreparedJob(ray.get_runtime_context().gcs_address, storage, ["features", kind, GROUP.name],
                       {**os.environ, "ORCHARD_ONLINE_STORE": f"sqlite:///{online}"})


def _whole(job: PreparedJob) -> float:
    code, err, seconds = job.run(600)
    assert code == 0, err[-3000:]
    return seconds


def _check_everything(storage: Storage, files: int, online: Path) -> tuple[dict, dict]:
    """After a run that finished: every reading of every file in the table once, each file's bad line quarantined
    once, and the online store at the table's version with each buoy's latest reading."""
    rows, quarantined = _check_offline(storage, files)
    expected = {(r["station"], datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc))
                for trial in range(files) for r in _readings(trial)}
    assert set(rows) == expected
    assert len(quarantined) == files and all(line is not None for _, line in quarantined)
    assert _check_online(online, rows) == OfflineStore(storage).table_version(GROUP)
    latest = {f"crash-{b:02d}": max(t for buoy, t in rows if buoy == f"crash-{b:02d}") for b in range(BUOYS)}
    store = SqliteOnlineStore(str(online))
    try:
        found = store.read_rows(GROUP, [[buoy] for buoy in latest])
    finally:
        store.close()
    assert [entry[1]["read_at"] for entry in found] == list(latest.values())
    return rows, quarantined


@pytest.mark.timeout(1200)  # 50 Ray jobs and their drivers: about 5 minutes, twice that in a slow hour
def test_the_feature_pipeline_killed_at_random_points_loses_and_duplicates_nothing(ray_cluster, tmp_path, capsys):
    """Fifty times over: a new file lands and the feature job (ingest, commit, then materialization into the online
    store) is killed at a random point of a whole run's span. After each kill, the table holds whole files once, the
    quarantine each bad line at most once, and the online store only rows of the committed table; after one run that
    finishes, everything."""
    storage = Storage(str(tmp_path / "store"))
    online = tmp_path / "online.sqlite"
    rng = random.Random(SEED)
    _write_trial(storage, 0)
    run_s = _whole(_feature_job(storage, "run", online))
    files = 1
    kills = Kills("feature pipeline")
    ready = _feature_job(storage, "run", online)
    try:
        for _ in range(3 * KILLS):
            if kills.trials >= KILLS:
                break
            _write_trial(storage, files)
            files += 1
            offline = OfflineStore(storage)
            before = offline.table_version(GROUP)
            job, ready = ready, _feature_job(storage, "run", online)  # the next driver joins Ray while this one works
            code, err, _ = job.run(rng.uniform(0, run_s))
            rows, _ = _check_offline(storage, files)
            materialized = _check_online(online, rows)
            after = offline.table_version(GROUP)
            if code == -signal.SIGKILL:
                kills.count("before its commit" if after == before else
                            "after its commit, before materialization ended" if materialized != after else
                            "after materialization")
            else:
                assert code == 0, err[-3000:]
    finally:
        ready.discard()
    assert kills.trials >= KILLS
    _whole(_feature_job(storage, "run", online))
    rows, quarantined = _check_everything(storage, files, online)
    with capsys.disabled():
        print(f"\n{kills.summary()}\n{files} files, {len(rows)} rows, {len(quarantined)} quarantined lines: exact")


def _restore(snapshot: Path, online: Path) -> None:
    """The online store as `snapshot` holds it: the file copied over, and the journal a killed writer may have left
    beside the old one (SQLite's -wal and -shm files) removed, so that none of it is replayed into the copy."""
    for leftover in (online, online.with_name(online.name + "-wal"), online.with_name(online.name + "-shm")):
        leftover.unlink(missing_ok=True)
    shutil.copyfile(snapshot, online)


@pytest.mark.timeout(1200)
def test_materialization_killed_at_random_points_leaves_only_committed_rows_online(ray_cluster, tmp_path, capsys):
    """Fifty times over, `orchard features materialize` bringing the online store from the table's first version
    to its second is killed at a random point of a whole run's span. Kills follow each other on the same store (each
    run starts from what the killed one left) until one run has brought the store to the second version; then the
    store goes back to its first-version copy. After each kill the store holds only rows of the committed table, at
    the version it had or the new one; after one run that finishes, every buoy's latest reading."""
    import sqlite3

    from features.pipeline import run_feature_pipeline

    storage = Storage(str(tmp_path / "store"))
    online, pipeline_online = tmp_path / "online.sqlite", f"sqlite:///{tmp_path / 'pipeline-online.sqlite'}"
    snapshot = tmp_path / "online-at-version-1.sqlite"
    rng = random.Random(SEED + 1)
    _write_trial(storage, 0)
    run_feature_pipeline(storage, GROUP, online_store=pipeline_online)
    _whole(_feature_job(storage, "materialize", online))
    with sqlite3.connect(online) as source, sqlite3.connect(snapshot) as copy:
        source.backup(copy)  # one consistent file, whatever the store's journal holds
    _write_trial(storage, 1)
    run_feature_pipeline(storage, GROUP, online_store=pipeline_online)
    rows, _ = _check_offline(storage, files=2)
    first, committed = _check_online(online, rows), OfflineStore(storage).table_version(GROUP)
    assert first < committed
    materialize_s = _whole(_feature_job(storage, "materialize", online))
    assert _check_online(online, rows) == committed
    kills, restored = Kills("materialization"), 0
    ready = _feature_job(storage, "materialize", online)
    try:
        for _ in range(3 * KILLS):
            if kills.trials >= KILLS:
                break
            before = _check_online(online, rows)
            if before == committed:
                _restore(snapshot, online)
                restored += 1
                before = _check_online(online, rows)
            assert before == first
            job, ready = ready, _feature_job(storage, "materialize", online)
            code, err, _ = job.run(rng.uniform(0, materialize_s))
            materialized = _check_online(online, rows)
            assert materialized in (before, committed), (before, materialized, committed)
            if code == -signal.SIGKILL:
                kills.count("before it ended" if materialized != committed else "after it ended")
            else:
                assert code == 0, err[-3000:]
    finally:
        ready.discard()
    assert kills.trials >= KILLS
    if _check_online(online, rows) == committed:
        _restore(snapshot, online)
    _whole(_feature_job(storage, "materialize", online))
    rows, _ = _check_everything(storage, 2, online)
    with capsys.disabled():
        print(f"\n{kills.summary()}; {restored} runs from the first version's copy; the online store exact")


# -- training-dataset creation ---------------------------------------------------------------------------------------
def _splits(storage: Storage, view, version: int) -> dict[str, list[str]]:
    """Each split's fruit ids, read straight from the published files; checks the version's metadata on the way."""
    import pyarrow.parquet as pq

    from features.datasets import SPLITS, TrainingDataset

    dataset = TrainingDataset.open(storage, view, version)
    assert dataset.metadata["version"] == version
    dataset.transforms()  # readable, and a valid transformation set
    splits = {}
    for split in SPLITS:
        ids = (pq.read_table(storage.path(f"{dataset.location}/{split}")).column("fruit_id").to_pylist()
               if dataset.metadata["rows"][split] else [])
        assert len(ids) == dataset.metadata["rows"][split], (version, split)
        splits[split] = sorted(ids)
    return splits


def test_training_dataset_creation_killed_at_random_points_never_shows_a_half_written_version(ray_cluster, tmp_path,
                                                                                               capsys):
    """`orchard datasets create` killed 50 times at random points: every version listed opens, matches its metadata
    and holds the same rows as an undisturbed run on the same data; a version that was not finished is not listed;
    numbers stay consecutive."""
    import ray
    from fruit.generate import write_fruit

    from features.catalog import get_view
    from features.datasets import RandomSplit, create_training_dataset, dataset_location, dataset_versions
    from features.pipeline import run_feature_pipeline

    storage = Storage(str(tmp_path / "store"))
    view = get_view("fruit_classification")
    write_fruit(storage, rows=400, seed=7)
    run_feature_pipeline(storage, view.label.group)
    create_training_dataset(storage, view, RandomSplit(seed=0))
    reference = _splits(storage, view, 1)
    address = ray.get_runtime_context().gcs_address

    def prepare() -> PreparedJob:
        return PreparedJob(address, storage, ["datasets", "create", view.ref], os.environ.copy())

    code, err, create_s = prepare().run(600)
    assert code == 0, err[-3000:]
    assert _splits(storage, view, 2) == reference
    checked = {1, 2}
    kills = Kills("training-dataset creation")
    rng = random.Random(SEED)
    ready = prepare()
    try:
        for _ in range(3 * KILLS):
            if kills.trials >= KILLS:
                break
            job, ready = ready, prepare()
            code, err, _ = job.run(rng.uniform(0, create_s))
            versions = dataset_versions(storage, view)
            assert versions == list(range(1, len(versions) + 1)), versions
            new = set(versions) - checked
            assert len(new) <= 1, versions
            for version in new:
                assert _splits(storage, view, version) == reference
            checked |= new
            if code == -signal.SIGKILL:
                kills.count("after publishing" if new else "before publishing")
            else:
                assert code == 0 and new, err[-3000:]
    finally:
        ready.discard()
    abandoned = _clean_abandoned(storage, dataset_location(view))
    code, err, _ = prepare().run(600)
    assert code == 0, err[-3000:]
    versions = dataset_versions(storage, view)
    assert versions == list(range(1, len(checked) + 2))
    for version in versions:
        assert _splits(storage, view, version) == reference
    with capsys.disabled():
        print(f"\n{kills.summary()}; {len(versions)} versions, each the same rows as the first; {abandoned} "
              "abandoned staging folders removed")
