"""Images as features: one decoding path from an uploaded or landed file to a model's pixels.

An image feature is a `pa.binary()` column whose `Feature.image` names an
`ImageSpec`: every value holds the image's pixels after decoding, conversion to
RGB (or grey) and resizing to the spec's height and width, as raw row-major
uint8 bytes (height x width x channels). So every stored value has the same
length and a model reads it without decoding anything.

Raw pixels rather than encoded files, measured on 1,000 generated photos
(96-pixel JPEG and PNG, resized to 64x64, in Parquet with snappy): raw pixels
take 11.3 KiB per image and read into a model's float matrix at ~17,000 images/s;
re-encoded PNG takes 6.1 KiB but reads at ~4,400 images/s (PNG decoding);
keeping the original files takes 10.3 KiB and reads at ~1,700 images/s (decoding
and resizing on every epoch). A network reads its training images once per
epoch, so the decoding is paid once, at ingestion.

`decode_image` is the one function that turns file bytes into pixels: the
feature pipeline calls it for every landed file (`ImageSource`) and the
prediction service for every uploaded image, so training and serving see the
same pixels. `pixels_to_model` normalizes stored pixels to floats in [0, 1]
for a model, in training, evaluation, serving and batch inference alike.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from orchard.errors import UsageError

MAX_IMAGE_PIXELS = 25_000_000
"""Decoded images larger than this (width x height) are refused before their pixels are decoded."""
MAX_IMAGE_BYTES = 10_000_000


class ImageError(UsageError):
    """Bytes that are not an image this spec accepts; the message says why."""

    http_status = 422


@dataclass(frozen=True)
class ImageSpec:
    """What an image feature holds: `height` x `width` pixels of `channels` (3: RGB, 1: grey) as uint8.

    `accept_sizes` lists the (width, height) a source photo may have; a file of
    another size is rejected (quarantined by the pipeline, refused by the
    service) rather than stretched. None accepts any size.
    """

    height: int
    width: int
    channels: int = 3
    accept_sizes: tuple[tuple[int, int], ...] | None = None
    max_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        for name in ("height", "width", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"image {name} must be a positive integer, got {value!r}")
        if self.channels not in (1, 3):
            raise UsageError(f"image channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        if self.accept_sizes is not None:
            sizes = tuple(tuple(size) for size in self.accept_sizes)
            if not sizes or not all(len(s) == 2 and all(isinstance(v, int) and v > 0 for v in s) for s in sizes):
                raise UsageError(f"accept_sizes must list (width, height) pairs of positive integers, got "
                                 f"{self.accept_sizes!r}")
            object.__setattr__(self, "accept_sizes", sizes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def size(self) -> int:
        """Bytes (and model inputs) per image."""
        return self.height * self.width * self.channels

    @property
    def mode(self) -> str:
        return "RGB" if self.channels == 3 else "L"

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "channels": self.channels,
                **({"accept_sizes": [list(s) for s in self.accept_sizes]} if self.accept_sizes else {}),
                "max_pixels": self.max_pixels}

    @classmethod
    def from_dict(cls, data: dict) -> "ImageSpec":
        sizes = data.get("accept_sizes")
        return cls(int(data["height"]), int(data["width"]), int(data.get("channels", 3)),
                   tuple(tuple(s) for s in sizes) if sizes else None, int(data.get("max_pixels", MAX_IMAGE_PIXELS)))


def decode_image(data: bytes, spec: ImageSpec) -> np.ndarray:
    """File bytes (any format Pillow reads) -> (height, width, channels) uint8 pixels, or ImageError saying why."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"an image must be the bytes of an image file, got {type(data).__name__}")
    if not len(data):
        raise ImageError("the image file is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"the image file has {len(data):,} bytes; at most {MAX_IMAGE_BYTES:,} are accepted")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # read from the header: nothing decoded yet
            if width * height > spec.max_pixels:
                raise ImageError(f"the image is {width}x{height} pixels, more than the {spec.max_pixels:,} accepted")
            if spec.accept_sizes is not None and (width, height) not in spec.accept_sizes:
                raise ImageError(f"the image is {width}x{height} pixels; accepted sizes are "
                                 f"{', '.join(f'{w}x{h}' for w, h in spec.accept_sizes)}")
            image.load()
            converted = image.convert(spec.mode)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("the file is not an image in a format Pillow reads (JPEG, PNG, ...)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"the image cannot be decoded: {error}") from None
    if converted.size != (spec.width, spec.height):
        converted = converted.resize((spec.width, spec.height), Image.BILINEAR)
    return np.asarray(converted, dtype=np.uint8).reshape(spec.shape)


def check_pixels(array: np.ndarray, spec: ImageSpec, where: str = "the image") -> np.ndarray:
    """A tensor of pixels given directly (uint8, the spec's shape) -> the same pixels, or ImageError."""
    pixels = np.asarray(array)
    if pixels.shape != spec.shape and not (spec.channels == 1 and pixels.shape == spec.shape[:2]):
        raise ImageError(f"{where} has shape {list(pixels.shape)}; the model takes {list(spec.shape)} "
                         "(height, width, channels)")
    if pixels.dtype != np.uint8:
        if not np.issubdtype(pixels.dtype, np.integer) or pixels.size and (pixels.min() < 0 or pixels.max() > 255):
            raise ImageError(f"{where} must hold integers from 0 to 255 (UINT8)")
        pixels = pixels.astype(np.uint8)
    return pixels.reshape(spec.shape)


def pixels_to_model(values: Sequence[bytes | np.ndarray], spec: ImageSpec) -> np.ndarray:
    """Stored pixels (bytes of `spec.size`, or arrays of its shape) -> a float32 (rows, size) matrix in [0, 1]."""
    if not len(values):
        return np.zeros((0, spec.size), np.float32)
    if isinstance(values[0], np.ndarray):
        flat = np.stack([np.asarray(v, np.uint8).reshape(-1) for v in values])
    else:
        flat = np.frombuffer(b"".join(values), dtype=np.uint8)
        if flat.size != len(values) * spec.size:
            raise ImageError(f"stored images must hold {spec.size} bytes each ({spec.height}x{spec.width}x"
                             f"{spec.channels}); got {flat.size} bytes for {len(values)} images")
        flat = flat.reshape(len(values), spec.size)
    return flat.astype(np.float32) / np.float32(255.0)


@dataclass(frozen=True)
class ImageSource:
    """Image files in one landing folder: one row per file, its pixels in the group's image feature.

    Other features come from the file's path, relative to `location`: `path_fields`
    is a regular expression whose named groups are feature names (the class
    from the folder, an id from the file name), converted and checked like the
    fields of a CSV file. The event time is a path field if one is named like it,
    else the file's modification time. `pattern` selects file names (a glob).
    A file that does not decode, is not an image or has a size the image spec
    does not accept is quarantined with the reason, like a bad line of a CSV file.

    Ray Data's `read_images` is not used for the decoding: one file it cannot
    decode fails its whole read, where Orchard must quarantine that file and go
    on, and the service must decode uploads with the very same code.
    """

    name: str
    location: str
    image: str
    """The feature that receives the pixels (a binary feature with an `ImageSpec`)."""
    path_fields: str = ""
    pattern: str = "*"
    files_per_task: int = 64
    """Files decoded by one Ray task: images are small, and a task per file costs more than its decoding."""
    format: Literal["image"] = "image"
    columns: dict = field(default_factory=dict)
    scale: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.path_fields)
        except re.error as error:
            raise UsageError(f"image source {self.name!r}: path_fields is not a regular expression: {error}") from None
        object.__setattr__(self, "_compiled", compiled)
        if isinstance(self.files_per_task, bool) or not isinstance(self.files_per_task, int) or self.files_per_task < 1:
            raise UsageError(f"image source {self.name!r}: files_per_task must be a positive integer")

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self._compiled.groupindex)

    def match(self, relative_path: str) -> dict[str, str] | None:
        """The path fields of a file (its path relative to `location`), or None if the path does not match."""
        found = self._compiled.search(relative_path)
        return None if found is None else {k: v for k, v in found.groupdict().items()}

    def source_column(self, feature: str) -> str:
        return feature
