"""Feature groups: named, versioned, typed tables of features with a key and an event time."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Mapping

import pyarrow as pa

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

EVENT_TIME_TYPE = pa.timestamp("us", tz="UTC")


class DefinitionError(ValueError):
    """A feature group or source is defined inconsistently."""


@dataclass(frozen=True)
class Feature:
    """One column of a feature group, with the expectations its values must meet."""

    name: str
    dtype: pa.DataType
    description: str
    sensitive: bool = False
    nullable: bool = False
    min_value: float | None = None
    max_value: float | None = None
    allowed_values: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise DefinitionError(f"feature name {self.name!r} must be lower_snake_case")
        if not self.description.strip():
            raise DefinitionError(f"feature {self.name!r} needs a description")


@dataclass(frozen=True)
class FileSource:
    """Raw files of one format in one landing folder, mapped onto a group's schema.

    `columns` maps a feature name to the source's column name where they differ;
    `scale` multiplies a numeric column to convert the source's units into the group's.
    """

    name: str
    format: Literal["csv", "jsonl", "parquet"]
    location: str
    """Folder relative to the storage root (or an absolute URI)."""
    pattern: str
    columns: Mapping[str, str] = field(default_factory=dict)
    scale: Mapping[str, float] = field(default_factory=dict)

    def source_column(self, feature: str) -> str:
        return self.columns.get(feature, feature)


@dataclass(frozen=True)
class FeatureGroup:
    name: str
    version: int
    description: str
    primary_key: tuple[str, ...]
    event_time: str
    features: tuple[Feature, ...]
    """Every column of the table, key and event time included."""
    sources: tuple[FileSource, ...] = ()

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise DefinitionError(f"feature group name {self.name!r} must be lower_snake_case")
        if self.version < 1:
            raise DefinitionError(f"feature group {self.name!r}: version must be >= 1")
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise DefinitionError(f"feature group {self.name!r} defines {duplicated} twice")
        for column in (*self.primary_key, self.event_time):
            if column not in names:
                raise DefinitionError(f"feature group {self.name!r}: key column {column!r} is not a feature")
        if self.feature(self.event_time).dtype != EVENT_TIME_TYPE:
            raise DefinitionError(f"feature group {self.name!r}: event time must be {EVENT_TIME_TYPE}")

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(f.name, f.dtype, nullable=f.nullable, metadata={"description": f.description})
             for f in self.features]
        )

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"feature group {self.ref} has no feature {name!r}")
