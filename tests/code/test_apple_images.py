"""The synthetic apple photos: four classes in class folders, JPEG and PNG, and the damaged files asked for."""

from __future__ import annotations

import io

import numpy as np
import pytest
from apple_images.generate import CLASSES, SIZE, _apple, write_apple_images
from PIL import Image, UnidentifiedImageError

from orchard.storage import Storage


def _decoded(data: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError):
        return None


def test_a_day_of_photos_has_every_class_in_its_folder_in_both_formats(tmp_path):
    storage = Storage(str(tmp_path))
    generated = write_apple_images(storage, rows=40, seed=2)
    assert len(generated.files) == 40 and generated.bad_records == 0
    by_class = {c: [f for f in generated.files if f"/{c}/" in f] for c in CLASSES}
    assert all(len(files) == 10 for files in by_class.values())
    assert {f.rsplit(".", 1)[1] for f in generated.files} == {"jpg", "png"}
    for path in generated.files:
        image = _decoded(storage.read_bytes(path))
        assert image is not None and image.shape == (SIZE, SIZE, 3), path
    again = write_apple_images(storage, rows=4, seed=2)  # the next day, in a folder of its own
    assert all("/day-0002/" in f for f in again.files)


def test_the_same_seed_draws_the_same_photos(tmp_path):
    first = write_apple_images(Storage(str(tmp_path / "a")), rows=8, seed=5)
    second = write_apple_images(Storage(str(tmp_path / "b")), rows=8, seed=5)
    for a, b in zip(first.files, second.files):
        assert Storage(str(tmp_path / "a")).read_bytes(a) == Storage(str(tmp_path / "b")).read_bytes(b)


def test_damaged_files_are_truncated_not_images_or_the_wrong_size(tmp_path):
    storage = Storage(str(tmp_path))
    generated = write_apple_images(storage, rows=40, seed=1, bad_fraction=0.15)
    assert generated.bad_records == len(generated.corrupt_files) == 6
    kinds = []
    for path in generated.corrupt_files:
        image = _decoded(storage.read_bytes(path))
        kinds.append("undecodable" if image is None else "wrong size" if image.shape != (SIZE, SIZE, 3) else "fine")
    assert "fine" not in kinds and {"undecodable", "wrong size"} <= set(kinds)
    assert sum(_decoded(storage.read_bytes(f)) is not None for f in generated.files) >= 34


@pytest.mark.parametrize("defect", CLASSES)
def test_each_defect_leaves_its_own_mark(defect):
    """Defects darken the apple: a healthy one has the fewest dark pixels on its skin, on average."""
    rng = np.random.default_rng(0)
    dark = np.mean([(_apple(rng, defect).mean(axis=2) < 70).mean() for _ in range(30)])
    healthy = np.mean([(_apple(rng, "healthy").mean(axis=2) < 70).mean() for _ in range(30)])
    assert (dark > healthy) if defect != "healthy" else dark == pytest.approx(healthy, abs=0.02)


def test_orchard_generate_apple_images_with_a_count(tmp_path):
    import json

    from typer.testing import CliRunner

    from orchard.projects import activate, active
    from pipelines.cli import app
    from tests.helpers import REPOSITORY

    before = active()
    try:  # --project makes the image project the only active one: the session's projects come back after
        result = CliRunner().invoke(app, ["--project", str(REPOSITORY / "examples" / "apple_images"), "--storage",
                                          str(tmp_path), "generate", "apple_images", "--count", "8", "--json"])
    finally:
        activate(before)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == 8 and len(report["files"]) == 8
