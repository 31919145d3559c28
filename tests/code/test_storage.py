import threading
import time

import pytest

from orchard.storage import Storage, StorageError
from tests.helpers import FlakyProxy


def test_write_then_read_round_trips_bytes_and_json(storage_root):
    storage = Storage(storage_root)
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


def _race(function, arguments) -> list:
    results = []
    threads = [threading.Thread(target=lambda a=a: results.append(function(a))) for a in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_publish_dir_has_exactly_one_winner_per_name(storage_root):
    storage = Storage(storage_root)
    for i in range(8):
        storage.write_bytes(f"s{i}/data", str(i).encode())
        storage.write_bytes(f"s{i}/marker", b"done")
    results = _race(lambda staging: storage.publish_dir(staging, "out/final", "marker"), [f"s{i}" for i in range(8)])
    assert sorted(results) == [False] * 7 + [True]
    assert storage.published("out", "marker") == ["final"]
    assert storage.list_dir("out/final") == ["data", "marker"]
    winner = storage.read_bytes("out/final/data").decode()
    assert [storage.exists(f"s{i}") for i in range(8)] == [str(i) != winner for i in range(8)]


def test_an_object_store_folder_claimed_but_not_complete_is_not_published(s3_root):
    storage = Storage(s3_root)
    storage.write_bytes("out/half/data", b"copied before the writer died")  # no marker yet
    assert storage.published("out", "marker") == []
    storage.write_bytes("staging/data", b"x")
    with pytest.raises(StorageError, match="has no marker"):
        storage.publish_dir("staging", "out/other", "marker")


def test_create_exclusive_has_exactly_one_winner(storage_root):
    storage = Storage(storage_root)
    results = _race(lambda i: storage.create_exclusive("claims/7", str(i).encode()), range(8))
    assert sorted(results) == [False] * 7 + [True]
    assert storage.read_bytes("claims/7") in {str(i).encode() for i in range(8)}


def test_replace_if_writes_only_over_the_content_it_read(storage_root):
    storage = Storage(storage_root)
    assert storage.read_tagged("doc.json") == (None, None)
    assert storage.replace_if("doc.json", b"1", None)
    assert not storage.replace_if("doc.json", b"2", None)  # there is a document now
    data, tag = storage.read_tagged("doc.json")
    assert data == b"1"
    assert storage.replace_if("doc.json", b"2", tag)
    assert not storage.replace_if("doc.json", b"3", tag)  # stale: someone wrote "2" since
    assert storage.read_bytes("doc.json") == b"2"


def test_concurrent_json_updates_and_appends_lose_nothing(storage_root):
    storage = Storage(storage_root)

    def work(worker: int) -> None:
        for step in range(5):
            storage.update_json("counter.json", lambda value: {"n": (value or {"n": 0})["n"] + 1})
            storage.append_line("log.txt", f"{worker}-{step}")

    _race(work, range(4))
    assert storage.read_json("counter.json") == {"n": 20}
    assert sorted(storage.read_bytes("log.txt").decode().splitlines()) == sorted(
        f"{w}-{s}" for w in range(4) for s in range(5))


def test_an_object_store_that_refuses_a_write_is_a_storage_error_naming_the_path(s3_root):
    storage = Storage(s3_root.replace("s3://", "s3://no-such-bucket-").split("/store")[0] + "/store")
    with pytest.raises(StorageError, match="cannot write .*doc.json: NoSuchBucket"):
        storage.write_bytes("doc.json", b"{}")
    with pytest.raises(StorageError, match="cannot read .*doc.json: NoSuchBucket"):
        storage.read_tagged("doc.json")


@pytest.fixture()
def flaky_s3(s3_root, s3_server, monkeypatch):
    """The test's bucket, reached through a proxy that can lose the server's answers or take the server away."""
    with FlakyProxy(int(s3_server["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{proxy.address}")
        yield Storage(s3_root), proxy


def test_a_claim_whose_answer_was_lost_is_still_the_writers_own(flaky_s3):
    storage, proxy = flaky_s3
    proxy.lose_answers(1, "PUT")  # the server writes the claim; the writer only sees its connection drop
    assert storage.create_exclusive("claims/7", b"staging-of-writer-a")
    assert proxy.lost_answers == 1
    assert storage.read_bytes("claims/7") == b"staging-of-writer-a"
    assert not storage.create_exclusive("claims/7", b"staging-of-writer-b")


def test_a_compare_and_swap_whose_answer_was_lost_is_applied_once(flaky_s3):
    storage, proxy = flaky_s3
    storage.update_json("counter.json", lambda value: {"n": 1})
    storage.append_line("log.txt", "first")
    proxy.lose_answers(1, "PUT")
    storage.update_json("counter.json", lambda value: {"n": value["n"] + 1})
    proxy.lose_answers(1, "PUT")
    storage.append_line("log.txt", "second")
    assert proxy.lost_answers == 2
    assert storage.read_json("counter.json") == {"n": 2}
    assert storage.read_bytes("log.txt").decode().splitlines() == ["first", "second"]


def test_a_conditional_write_bridges_a_short_outage_and_names_the_path_after_a_long_one(flaky_s3, monkeypatch):
    storage, proxy = flaky_s3
    monkeypatch.setattr("orchard.storage.CONDITIONAL_PUT_ATTEMPTS", 5)  # gives up after about 2 s, not 15
    assert storage.create_exclusive("before", b"1")
    for path, seconds in (("short", 1.0), ("long", 10.0)):
        outage = threading.Thread(target=proxy.outage, args=(seconds,))
        outage.start()
        time.sleep(0.1)  # the server is away when the write starts
        started = time.monotonic()
        try:
            if path == "short":
                assert storage.create_exclusive(path, b"2")
            else:
                with pytest.raises(StorageError, match=f"cannot write .*{path}: the object store did not answer"):
                    storage.create_exclusive(path, b"3")
                assert time.monotonic() - started < seconds  # it gave up while the store was still away
        finally:
            proxy.end_outage()
            outage.join()
    assert proxy.outages == 2
    assert (storage.read_bytes("before"), storage.read_bytes("short")) == (b"1", b"2")
    assert not storage.exists("long")
