"""Photos in class folders through the feature pipeline: pixels stored, bad files quarantined, only new files read."""

from __future__ import annotations

from collections import Counter

import pytest
from apple_images.generate import CLASSES, write_apple_images
from apple_images.groups import APPLE_PHOTOS, PHOTO
from deltalake import DeltaTable

from features.images import decode_image
from features.pipeline import run_feature_pipeline
from features.store import OfflineStore
from orchard.storage import Storage

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def photos(ray_cluster, tmp_path_factory):
    storage = Storage(str(tmp_path_factory.mktemp("photos")))
    first = write_apple_images(storage, rows=150, seed=3, bad_fraction=0.1)
    report = run_feature_pipeline(storage, APPLE_PHOTOS)
    return storage, first, report


def _quarantine(storage: Storage) -> list[dict]:
    return DeltaTable(OfflineStore(storage).quarantine_uri(APPLE_PHOTOS)).to_pyarrow_table().to_pylist()


def test_every_photo_is_a_row_or_in_quarantine_with_its_reason(photos):
    storage, generated, report = photos
    assert (report.files_read, report.rows_read) == (150, 150)
    assert (report.rows_written, report.rows_quarantined, report.rows_duplicate) == (135, 15, 0)
    quarantined = _quarantine(storage)
    assert sorted(row["source"] for row in quarantined) == sorted(generated.corrupt_files)
    reasons = Counter(row["reason"].split(": ", 1)[1].split(":")[0] for row in quarantined)
    assert reasons == {"the file is not an image in a format Pillow reads (JPEG, PNG, ...)": 5,
                       "the image cannot be decoded": 5,
                       "the image is 48x48 pixels; accepted sizes are 96x96": 5}


def test_the_stored_pixels_are_the_decoded_photo_and_the_class_its_folder(photos):
    storage, generated, _ = photos
    table = OfflineStore(storage).read_table(APPLE_PHOTOS)
    assert set(len(value) for value in table["image"].to_pylist()) == {PHOTO.size}
    assert Counter(table["label"].to_pylist()).keys() == set(CLASSES)
    by_id = {row["photo_id"]: row for row in table.to_pylist()}
    for path in generated.files[:12]:
        if path in generated.corrupt_files:
            continue
        folder, name = path.rsplit("/", 2)[-2:]
        row = by_id[name.rsplit(".", 1)[0]]
        assert row["label"] == folder
        assert row["image"] == decode_image(storage.read_bytes(path), PHOTO).tobytes()  # the service's decoding


def test_only_new_photos_are_read_on_the_next_run(photos):
    storage, _, first = photos
    assert run_feature_pipeline(storage, APPLE_PHOTOS).files_read == 0
    write_apple_images(storage, rows=40, seed=4)
    report = run_feature_pipeline(storage, APPLE_PHOTOS)
    assert (report.files_read, report.rows_written, report.rows_quarantined) == (40, 40, 0)
    ids = OfflineStore(storage).read_table(APPLE_PHOTOS)["photo_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 175
    assert len(_quarantine(storage)) == 15

