"""The prediction log's writer thread: files per writer locally, objects per flush on S3, and it survives failures."""

import time

from orchard.storage import Storage
from serve.prediction_log import PredictionLog, read_predictions


def _record(log: PredictionLog, request_id: str) -> None:
    log.record("m", 1, request_id, [{"x": 1.0}], [0.5])


def test_each_flush_on_an_object_store_is_a_new_object_and_every_record_is_read_back(s3_root):
    storage = Storage(s3_root)
    log = PredictionLog(storage, flush_seconds=0.1)
    _record(log, "a")
    time.sleep(0.5)
    _record(log, "b")
    log.close()
    assert [r["request_id"] for r in read_predictions(storage, "m")] == ["a", "b"]
    assert len(list(storage.find_files("predictions/m", "*.jsonl"))) == 2


def test_a_failing_write_is_counted_and_the_writer_keeps_going(s3_root):
    broken = Storage(s3_root.replace("s3://", "s3://no-such-bucket-"))
    log = PredictionLog(broken, flush_seconds=0.1)
    _record(log, "lost")
    deadline = time.monotonic() + 30  # the failed write's round trip to the S3 server: slow on a busy machine
    while log.dropped == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.dropped == 1 and log._thread.is_alive()
    _record(log, "lost too")
    log.close()
    assert log.dropped == 2
