import io

import pandas as pd
from fruit.generate import fruit_frame, write_fruit

from orchard.storage import Storage


def test_the_same_seed_gives_the_same_fruit():
    pd.testing.assert_frame_equal(fruit_frame(100, seed=3), fruit_frame(100, seed=3))


def test_red_apples_make_the_classes_non_linear():
    frame = fruit_frame(3000, seed=1)
    means = frame.groupby("variety")[["red", "green"]].mean()
    # Oranges lie between green and red apples on the red channel...
    assert means.loc["green_apple", "red"] < means.loc["orange", "red"]
    # ...and between red and green apples on the green channel.
    assert means.loc["red_apple", "green"] < means.loc["orange", "green"] < means.loc["green_apple", "green"]


def test_weight_grows_with_diameter():
    frame = fruit_frame(2000, seed=2)
    assert frame["weight_g"].corr(frame["diameter_mm"]) > 0.8


def test_each_run_writes_a_new_later_day_in_two_formats(tmp_path):
    storage = Storage(str(tmp_path))
    first = write_fruit(storage, rows=100, seed=0)
    second = write_fruit(storage, rows=100, seed=0)
    assert first.location.endswith("day-0001") and second.location.endswith("day-0002")
    assert {f.rsplit(".", 1)[1] for f in first.files} == {"csv", "jsonl"}
    day1 = pd.read_csv(io.BytesIO(storage.read_bytes(first.files[0])))
    day2 = pd.read_csv(io.BytesIO(storage.read_bytes(second.files[0])))
    assert pd.to_datetime(day2["measured_at"]).min() > pd.to_datetime(day1["measured_at"]).max()
    assert not set(day1["fruit_id"]) & set(day2["fruit_id"])
