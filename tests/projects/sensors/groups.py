"""Greenhouse sensor readings, published by each sensor as JSON messages to the topic `sensor-readings`."""

from __future__ import annotations

import pyarrow as pa

from features import EVENT_TIME_TYPE, Feature, FeatureGroup, KafkaSource

TOPIC = "sensor-readings"

READINGS = FeatureGroup(
    name="sensor_readings",
    version=1,
    description="One row per reading: which sensor, when, and what it measured.",
    primary_key=("reading_id",),
    event_time="measured_at",
    features=(
        Feature("reading_id", pa.string(), "Unique per reading: sensor and sequence number."),
        Feature("sensor_id", pa.string(), "The sensor."),
        Feature("measured_at", EVENT_TIME_TYPE, "When it was measured (UTC)."),
        Feature("temperature_c", pa.float64(), "Air temperature in degrees Celsius.", min_value=-20, max_value=60),
    ),
    # the broker's address comes from ORCHARD_KAFKA_GREENHOUSE
    sources=(KafkaSource(name="readings_topic", broker="greenhouse", topic=TOPIC),),
)
