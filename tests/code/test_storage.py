import threading

import pytest

from orchard.storage import Storage, StorageError


def test_write_then_read_round_trips_bytes_and_json(tmp_path):
    storage = Storage(str(tmp_path))
    storage.write_bytes("a/b/c.bin", b"\x00\x01")
    storage.write_json("a/meta.json", {"x": 1})
    assert storage.read_bytes("a/b/c.bin") == b"\x00\x01"
    assert storage.read_json("a/meta.json") == {"x": 1}


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    storage = Storage(str(tmp_path))
    for i in range(5):
        storage.write_bytes("f.txt", str(i).encode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    assert storage.read_bytes("f.txt") == b"4"


def test_missing_file_error_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Storage(str(tmp_path)).read_bytes("nope.json")


def test_paths_cannot_escape_the_root(tmp_path):
    with pytest.raises(StorageError, match="leave the storage root"):
        Storage(str(tmp_path)).path("../etc/passwd")


def test_find_files_matches_pattern_recursively_and_skips_hidden(tmp_path):
    storage = Storage(str(tmp_path))
    for name in ("land/d1/a.csv", "land/d2/b.csv", "land/d2/c.jsonl", "land/.tmp-x.csv", "land/_log/z.csv"):
        storage.write_bytes(name, b"x")
    assert [e.path for e in storage.find_files("land", "*.csv")] == ["land/d1/a.csv", "land/d2/b.csv"]
    assert list(storage.find_files("absent", "*")) == []


def test_publish_dir_has_exactly_one_winner_per_name(tmp_path):
    storage = Storage(str(tmp_path))
    stagings = []
    for i in range(8):
        storage.write_bytes(f"s{i}/data", str(i).encode())
        stagings.append(f"s{i}")
    results = []
    threads = [threading.Thread(target=lambda s=s: results.append(storage.publish_dir(s, "final"))) for s in stagings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert storage.list_dir("final") == ["data"]
