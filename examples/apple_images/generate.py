"""Synthetic apple photos in four classes, drawn here: no data set or weights can be downloaded.

Each photo is one apple on a plain background: a disc of random size and
position, coloured from green to red with a highlight from the light's
direction and a dark stem cavity, under random brightness, with sensor noise.
A defect leaves its own mark: **scab** many small dark rough spots, **rot**
one or two large soft brown patches with a darker centre, **blotch** a few
irregular dark-olive blotches. Photos are written as JPEG and PNG into one
folder per class (`<location>/day-NNNN/<class>/`), so the class is the
folder's name, as image data sets are laid out.

With `bad_fraction`, that share of the files is damaged in one of three ways,
each of which the feature pipeline must quarantine: a truncated JPEG, a text
file with an image's name, and a photo of the wrong size.
"""

from __future__ import annotations

import io
from typing import Mapping

import numpy as np

from features import DataGenerator, GeneratedSlice, begin_day
from orchard.storage import Storage

LANDING = "landing/apple_images"
CLASSES = ("healthy", "scab", "rot", "blotch")
SIZE = 96
"""Photos are SIZE x SIZE pixels (RGB); a wrong-size photo is half that."""


def _apple(rng: np.random.Generator, defect: str, size: int = SIZE) -> np.ndarray:
    """One photo as a (size, size, 3) uint8 array."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    background = rng.uniform(150, 245, 3) * rng.uniform(0.85, 1.0)
    image = np.ones((size, size, 3)) * background
    radius = rng.uniform(0.28, 0.42) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    distance = np.hypot(y - cy, x - cx)
    inside = distance <= radius
    redness = rng.uniform(0, 1)  # green apples to red apples
    skin = np.array([60 + 150 * redness, 170 - 120 * redness, 40 + 10 * rng.uniform()])
    light = rng.uniform(0, 2 * np.pi)
    shade = 0.75 + 0.35 * (np.cos(light) * (x - cx) + np.sin(light) * (y - cy)) / radius
    texture = 1 + 0.06 * rng.standard_normal((size, size))
    apple = skin[None, None, :] * np.clip(shade * texture, 0.4, 1.3)[..., None]
    image[inside] = apple[inside]
    stem = np.hypot(y - (cy - 0.6 * radius), x - cx) < 0.08 * radius
    image[stem & inside] = [70, 45, 25]

    def patch(center_y, center_x, r, colour, roughness):
        wobble = 1 + roughness * np.sin(np.arctan2(y - center_y, x - center_x) * rng.integers(3, 7)
                                        + rng.uniform(0, 6))
        spot = (np.hypot(y - center_y, x - center_x) < r * wobble) & inside
        image[spot] = colour * rng.uniform(0.85, 1.1)

    def point_inside() -> tuple[float, float]:
        angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.7) * radius
        return cy + reach * np.sin(angle), cx + reach * np.cos(angle)

    if defect == "scab":  # many small dark rough spots
        for _ in range(rng.integers(8, 16)):
            patch(*point_inside(), rng.uniform(0.04, 0.08) * radius, np.array([45, 40, 30]), 0.5)
    elif defect == "rot":  # large soft brown patches with a darker core
        for _ in range(rng.integers(1, 3)):
            center, r = point_inside(), rng.uniform(0.3, 0.5) * radius
            patch(*center, r, np.array([125, 80, 40]), 0.1)
            patch(*center, r * 0.45, np.array([80, 50, 25]), 0.1)
    elif defect == "blotch":  # a few irregular dark-olive blotches
        for _ in range(rng.integers(3, 6)):
            patch(*point_inside(), rng.uniform(0.12, 0.22) * radius, np.array([70, 75, 35]), 0.45)
    image = image * rng.uniform(0.8, 1.15) + rng.normal(0, 4, image.shape)  # exposure and sensor noise
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, kind: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG" if kind == "jpg" else "PNG", **({"quality": 92} if
                                                                                   kind == "jpg" else {}))
    return buffer.getvalue()


def write_apple_images(storage: Storage, rows: int = 200, seed: int = 0, location: str = LANDING,
                       bad_fraction: float = 0.0, databases: Mapping[str, str] | None = None) -> GeneratedSlice:
    """One day of photos: `rows` files, the classes in turn (so each has a quarter), half JPEG and half PNG."""
    day = begin_day(storage, location, rows, seed, bad_fraction)
    rng = day.rng
    damaged = set(rng.choice(rows, size=int(round(rows * bad_fraction)), replace=False).tolist()) \
        if bad_fraction else set()
    files, corrupt = [], []
    for index in range(rows):
        defect = CLASSES[index % len(CLASSES)]
        kind = "jpg" if index % 2 == 0 else "png"
        path = f"{location}/{day.folder}/{defect}/{defect}-{day.number:04d}-{index:05d}.{kind}"
        if index in damaged:
            damage = len(corrupt) % 3
            if damage == 0:
                data = encode(_apple(rng, defect), "jpg")[:200]  # truncated mid-stream
                path = path.rsplit(".", 1)[0] + ".jpg"
            elif damage == 1:
                data = b"not an image: a label printer's log line\n"
            else:
                data = encode(_apple(rng, defect, size=SIZE // 2), kind)  # a photo of the wrong size
            corrupt.append(path)
        else:
            data = encode(_apple(rng, defect), kind)
        storage.write_bytes(path, data)
        files.append(path)
    return GeneratedSlice("apple_images", location, tuple(files), rows, bad_records=len(corrupt),
                          corrupt_files=tuple(corrupt))


GENERATOR = DataGenerator("apple_images", write_apple_images,
                          "A day of synthetic apple photos (healthy, scab, rot, blotch; JPEG and PNG in class folders).",
                          default_rows=300)
