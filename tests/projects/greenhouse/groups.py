"""Tomato plants measured on the benches, and the climate of each bed (from the greenhouse controller's database)."""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa

from features import (
                      EVENT_TIME_TYPE,
                      Feature,
                      FeatureGroup,
                      FeatureView,
                      FileSource,
                      Label,
                      OneHotEncoder,
                      Selection,
                      SqlSource,
                      StandardScaler,
)
from greenhouse.transforms import Log1p

LANDING = "landing/greenhouse"
VARIETIES = ("cherry", "roma", "beefsteak")

PLANTS = FeatureGroup(
    name="plants",
    version=1,
    description="One row per measured plant: size, variety, and the yield it went on to give.",
    primary_key=("plant_id",),
    event_time="measured_at",
    features=(
        Feature("plant_id", pa.string(), "Plant tag."),
        Feature("bed_id", pa.string(), "The bed it grows in."),
        Feature("measured_at", EVENT_TIME_TYPE, "When it was measured (UTC)."),
        Feature("leaf_area_cm2", pa.float64(), "Leaf area in square centimetres.", min_value=0, max_value=50_000),
        Feature("height_cm", pa.float64(), "Height in centimetres.", min_value=0, max_value=400),
        Feature("variety", pa.string(), "Tomato variety.", allowed_values=VARIETIES),
        Feature("yield_g", pa.float64(), "Grams of fruit harvested from it.", min_value=0, max_value=20_000),
    ),
    sources=(FileSource(name="bench_csv", format="csv", location=f"{LANDING}/plants", pattern="*.csv"),),
)

CLIMATE = FeatureGroup(
    name="bed_climate",
    version=1,
    description="Each bed's climate setting, as the controller last wrote it.",
    primary_key=("bed_id",),
    event_time="updated_at",
    features=(
        Feature("bed_id", pa.string(), "Bed."),
        Feature("updated_at", EVENT_TIME_TYPE, "When the setting was written (UTC)."),
        Feature("temperature_c", pa.float64(), "Air temperature in degrees Celsius.", min_value=-10, max_value=50),
        Feature("humidity_pct", pa.float64(), "Relative humidity in percent.", min_value=0, max_value=100),
    ),
    sources=(SqlSource(name="controller_db", database="greenhouse", table="climate", watermark="updated_at",
                       row_id="row_id"),),
)

PLANT_YIELD = FeatureView(
    name="plant_yield",
    version=1,
    description="A plant's yield from its size and variety and its bed's climate (at most two days old).",
    label=Label(group=PLANTS, target="yield_g", columns=("plant_id", "bed_id")),
    selections=(
        Selection(PLANTS, ("leaf_area_cm2", "height_cm", "variety"), join_keys={"plant_id": "plant_id"}),
        Selection(CLIMATE, ("temperature_c", "humidity_pct"), join_keys={"bed_id": "bed_id"}, ttl=timedelta(days=2)),
    ),
    transforms=(Log1p("leaf_area_cm2"), StandardScaler("height_cm"), StandardScaler("temperature_c"),
                OneHotEncoder("variety", unknown="other")),
)
