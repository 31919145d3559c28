"""Finds feature groups, feature views and data generators by name across the active projects.

The engine imports no project: `orchard.projects` loads the configured ones,
and this module collects their definitions by type. Two definitions with one
name (and version) are an error that names both places.
"""

from __future__ import annotations

from features.definitions import FeatureGroup
from features.synthetic import DataGenerator
from features.views import FeatureView
from orchard.errors import UsageError
from orchard.projects import collect, lookup


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Split "name[:version]"."""
    name, _, version = ref.partition(":")
    if not version:
        return name, None
    try:
        return name, int(version)
    except ValueError:
        raise UsageError(f"version in {ref!r} must be an integer") from None


def _by_ref(found: dict, ref: str, what: str):
    """The definition named by "name[:version]"; without a version, the newest."""
    name, version = parse_ref(ref)
    if version is not None:
        return lookup(found, f"{name}:{version}", what)
    versions = [key for key, item in found.items() if item.value.name == name]
    if not versions:
        lookup(found, name, what)  # raises, listing the known ones
    return max((found[key].value for key in versions), key=lambda d: d.version)


def _groups() -> dict:
    return collect(FeatureGroup, lambda g: g.ref, "feature groups")


def _views() -> dict:
    return collect(FeatureView, lambda v: v.ref, "feature views")


def all_groups() -> list[FeatureGroup]:
    return sorted((item.value for item in _groups().values()), key=lambda g: (g.name, g.version))


def get_group(ref: str) -> FeatureGroup:
    """The group named by "name[:version]"; without a version, the newest."""
    return _by_ref(_groups(), ref, "feature group")


def all_views() -> list[FeatureView]:
    return sorted((item.value for item in _views().values()), key=lambda v: (v.name, v.version))


def get_view(ref: str) -> FeatureView:
    """The feature view named by "name[:version]"; without a version, the newest."""
    return _by_ref(_views(), ref, "feature view")


def generators() -> dict[str, DataGenerator]:
    """The active projects' development data generators, by name."""
    return {name: item.value for name, item in collect(DataGenerator, lambda g: g.name, "data generators").items()}
