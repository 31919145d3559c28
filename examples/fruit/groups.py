"""Fruit domain: apples and oranges measured by colour, size and weight.

Two packing stations report the same fruit differently: the scale writes CSV in
grams and millimetres, the sorting line writes JSON Lines in kilograms and
centimetres with short column names. Both feed one feature group.
"""

from __future__ import annotations

import pyarrow as pa

from features import (
                      EVENT_TIME_TYPE,
                      Feature,
                      FeatureGroup,
                      FeatureView,
                      FileSource,
                      Label,
                      LabelEncoder,
                      Selection,
                      StandardScaler,
)

LANDING = "landing/fruit"

FRUIT_MEASUREMENTS = FeatureGroup(
    name="fruit_measurements",
    version=1,
    description="One row per measured fruit: colour channels, size, weight and the sorted label.",
    primary_key=("fruit_id",),
    event_time="measured_at",
    features=(
        Feature("fruit_id", pa.string(), "Identifier printed on the fruit's sticker."),
        Feature("measured_at", EVENT_TIME_TYPE, "When the fruit was measured (UTC)."),
        Feature("red", pa.float64(), "Mean red channel of the skin, 0 to 1.", min_value=0, max_value=1),
        Feature("green", pa.float64(), "Mean green channel of the skin, 0 to 1.", min_value=0, max_value=1),
        Feature("blue", pa.float64(), "Mean blue channel of the skin, 0 to 1.", min_value=0, max_value=1),
        Feature("weight_g", pa.float64(), "Weight in grams.", min_value=1, max_value=2000),
        Feature("diameter_mm", pa.float64(), "Widest diameter in millimetres.", min_value=10, max_value=300),
        Feature("smoothness", pa.float64(), "Skin smoothness, 0 (dimpled) to 1 (glossy).", min_value=0, max_value=1),
        Feature("label", pa.string(), "Sorted class.", allowed_values=("apple", "orange")),
    ),
    sources=(
        FileSource(name="scale_csv", format="csv", location=LANDING, pattern="*.csv"),
        FileSource(
            name="sorting_line_jsonl",
            format="jsonl",
            location=LANDING,
            pattern="*.jsonl",
            columns={
                "fruit_id": "id",
                "measured_at": "ts",
                "red": "r",
                "green": "g",
                "blue": "b",
                "weight_g": "weight_kg",
                "diameter_mm": "diameter_cm",
                "smoothness": "smooth",
                "label": "class",
            },
            scale={"weight_g": 1000.0, "diameter_mm": 10.0},
        ),
    ),
)

FRUIT_CLASSIFICATION = FeatureView(
    name="fruit_classification",
    version=1,
    description="Apple or orange, from a fruit's colour channels, size, weight and skin.",
    label=Label(group=FRUIT_MEASUREMENTS, target="label", columns=("fruit_id",)),
    selections=(Selection(FRUIT_MEASUREMENTS, ("red", "green", "blue", "weight_g", "diameter_mm", "smoothness"),
                          join_keys={"fruit_id": "fruit_id"}),),
    transforms=(StandardScaler("weight_g"), StandardScaler("diameter_mm"), LabelEncoder("label")),
)

APPLE_WEIGHT = FeatureView(
    name="apple_weight",
    version=1,
    description="An apple's weight in grams from its diameter and colour (the lecture's \"(red, 9 cm) -> 120 g\").",
    label=Label(group=FRUIT_MEASUREMENTS, target="weight_g", columns=("fruit_id",), where={"label": ("apple",)}),
    selections=(Selection(FRUIT_MEASUREMENTS, ("red", "green", "blue", "diameter_mm"),
                          join_keys={"fruit_id": "fruit_id"}),),
    transforms=(StandardScaler("diameter_mm"),),
)
