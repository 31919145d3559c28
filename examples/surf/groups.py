"""Surf domain: offshore buoys, beaches, and the surf height observed at each beach.

Buoys stream hourly swell readings as JSON Lines with the oceanographers'
short names (hs, tp, dir); beach metadata lives in a SQL table; lifeguards
report the observed surf height as CSV. The observed height is what the
regressor learns to predict from the swell that reached the beach.
"""

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

LANDING = "landing/surf"
DATABASE = "surf"
BOTTOMS = ("sand", "reef", "point")

BUOY_READINGS = FeatureGroup(
    name="buoy_readings",
    version=1,
    description="Hourly swell readings per offshore buoy.",
    primary_key=("buoy_id",),
    event_time="read_at",
    features=(
        Feature("buoy_id", pa.string(), "Buoy station id."),
        Feature("read_at", EVENT_TIME_TYPE, "Reading time (UTC)."),
        Feature("swell_height_m", pa.float64(), "Significant wave height in metres.", min_value=0, max_value=20),
        Feature("swell_period_s", pa.float64(), "Peak period in seconds.", min_value=1, max_value=30),
        Feature("swell_direction_deg", pa.float64(), "Direction the swell comes from, degrees from north.",
                min_value=0, max_value=360),
    ),
    sources=(FileSource(name="buoy_jsonl", format="jsonl", location=f"{LANDING}/buoys", pattern="*.jsonl",
                        columns={"buoy_id": "station", "read_at": "time", "swell_height_m": "hs",
                                 "swell_period_s": "tp", "swell_direction_deg": "dir"}),),
    partition_by_event_date=True,
    online=True,
)

BEACHES = FeatureGroup(
    name="beaches",
    version=1,
    description="Beach metadata: which buoy watches its swell, which way it faces, what breaks the waves.",
    primary_key=("beach_id",),
    event_time="updated_at",
    features=(
        Feature("beach_id", pa.string(), "Beach id."),
        Feature("updated_at", EVENT_TIME_TYPE, "When the row was last written (UTC)."),
        Feature("name", pa.string(), "Beach name."),
        Feature("buoy_id", pa.string(), "The buoy whose readings reach this beach."),
        Feature("facing_deg", pa.float64(), "Direction the beach faces, degrees from north.", min_value=0,
                max_value=360),
        Feature("bottom", pa.string(), "What the waves break on.", allowed_values=BOTTOMS),
    ),
    sources=(SqlSource(name="beach_registry", database=DATABASE, table="beaches", watermark="updated_at",
                       row_id="row_id"),),
    online=True,
)

SURF_OBSERVATIONS = FeatureGroup(
    name="surf_observations",
    version=1,
    description="Surf height observed at a beach by the lifeguards (the regression label).",
    primary_key=("beach_id",),
    event_time="observed_at",
    features=(
        Feature("beach_id", pa.string(), "Beach id."),
        Feature("observed_at", EVENT_TIME_TYPE, "Observation time (UTC)."),
        Feature("surf_height_m", pa.float64(), "Observed face height of breaking waves in metres.", min_value=0,
                max_value=15),
    ),
    sources=(FileSource(name="lifeguard_csv", format="csv", location=f"{LANDING}/observations", pattern="*.csv"),),
)

FEATURE_GROUPS = [BUOY_READINGS, BEACHES, SURF_OBSERVATIONS]

SURF_HEIGHT = FeatureView(
    name="surf_height",
    version=1,
    description="Surf height at a beach from the latest swell at its buoy (at most 3 hours old) and the beach's shape.",
    label=Label(group=SURF_OBSERVATIONS, target="surf_height_m", columns=("beach_id",)),
    selections=(
        Selection(BEACHES, ("buoy_id", "facing_deg", "bottom"), join_keys={"beach_id": "beach_id"}),
        # Joined on the buoy the beach row names: the beaches selection brings `buoy_id`.
        Selection(BUOY_READINGS, ("swell_height_m", "swell_period_s", "swell_direction_deg"),
                  join_keys={"buoy_id": "buoy_id"}, ttl=timedelta(hours=3)),
    ),
    transforms=(OneHotEncoder("bottom", unknown="other"), StandardScaler("swell_height_m"),
                StandardScaler("swell_period_s")),
)

FEATURE_VIEWS = [SURF_HEIGHT]
