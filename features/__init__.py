"""The feature engine: definitions, sources, validation, the offline store, point-in-time joins, datasets.

What a project uses to define its features is exported here; everything else
is the engine's own:

    from features import EVENT_TIME_TYPE, Feature, FeatureGroup, FileSource, FeatureView, Label, Selection
    from features import StandardScaler, OneHotEncoder, Transform, register_transform

Projects are found by configuration (`orchard.projects`), never imported by the
engine; `features.catalog` collects their groups and views by type.
"""

from features.definitions import (
                                  EVENT_TIME_TYPE,
                                  Aggregation,
                                  DefinitionError,
                                  Feature,
                                  FeatureGroup,
                                  FileSource,
                                  KafkaSource,
                                  SqlSource,
)
from features.images import ImageSource, ImageSpec
from features.ingest import REASON_COLUMN
from features.sql import count_rows, insert_rows, resolve_database, update_rows, writing_table
from features.synthetic import FIRST_DAY, DataGenerator, GeneratedSlice, begin_day, damage_lines, next_slice
from features.transforms import LabelEncoder, MinMaxScaler, OneHotEncoder, StandardScaler, Transform, register_transform
from features.views import FeatureView, Label, Selection

__all__ = [
    "EVENT_TIME_TYPE", "REASON_COLUMN", "FIRST_DAY", "Aggregation", "DataGenerator", "DefinitionError", "Feature",
    "FeatureGroup", "FeatureView", "FileSource", "GeneratedSlice", "ImageSource", "ImageSpec", "Label", "LabelEncoder", "MinMaxScaler",
    "KafkaSource", "OneHotEncoder", "Selection", "SqlSource", "StandardScaler", "Transform", "begin_day", "damage_lines",
    "next_slice", "register_transform",
    # development data generators that fill a project's SQL tables
    "count_rows", "insert_rows", "resolve_database", "update_rows", "writing_table",
]
