"""Apple photos: one row per photo, its pixels resized to 64x64, its class from the folder it was filed in.

The camera writes 96x96 photos as JPEG or PNG into one folder per class
(`<day>/<class>/<photo>.jpg`, as image data sets are laid out); the class and the
photo's id come from that path, the event time is the file's arrival (its
modification time). A file that is not a 96x96 image is quarantined.
"""

from __future__ import annotations

import pyarrow as pa

from features import (
    EVENT_TIME_TYPE,
    Feature,
    FeatureGroup,
    FeatureView,
    ImageSource,
    ImageSpec,
    Label,
    LabelEncoder,
    Selection,
)

from .generate import CLASSES, LANDING, SIZE

PHOTO = ImageSpec(height=64, width=64, channels=3, accept_sizes=((SIZE, SIZE),))

APPLE_PHOTOS = FeatureGroup(
    name="apple_photos",
    version=1,
    description="One row per apple photo: its pixels (64x64 RGB) and the class it was filed under.",
    primary_key=("photo_id",),
    event_time="taken_at",
    features=(
        Feature("photo_id", pa.string(), "The photo's file name without its extension."),
        Feature("taken_at", EVENT_TIME_TYPE, "When the photo arrived (the file's modification time, UTC)."),
        Feature("image", pa.binary(), "The photo resized to 64x64 RGB pixels, row-major uint8.", image=PHOTO),
        Feature("label", pa.string(), "The class folder the photo was filed in.", allowed_values=CLASSES),
    ),
    sources=(
        ImageSource(name="camera", location=LANDING, image="image",
                    path_fields=r"(?:^|/)(?P<label>[^/]+)/(?P<photo_id>[^/]+)\.(?:jpe?g|png)$"),
    ),
)

APPLE_DEFECTS = FeatureView(
    name="apple_defects",
    version=1,
    description="Healthy, scab, rot or blotch, from the photo's pixels alone.",
    label=Label(group=APPLE_PHOTOS, target="label", columns=("photo_id",)),
    selections=(Selection(APPLE_PHOTOS, ("image",), join_keys={"photo_id": "photo_id"}),),
    transforms=(LabelEncoder("label"),),
)
