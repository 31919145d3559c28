"""Finds feature groups by name and version across the domain modules."""

from __future__ import annotations

import importlib

from features.definitions import FeatureGroup

DOMAIN_MODULES = ("features.fruit", "features.surf", "features.hotel")


def all_groups() -> list[FeatureGroup]:
    groups: list[FeatureGroup] = []
    for module_name in DOMAIN_MODULES:
        groups.extend(importlib.import_module(module_name).FEATURE_GROUPS)
    return sorted(groups, key=lambda g: (g.name, g.version))


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Split "name[:version]"."""
    name, _, version = ref.partition(":")
    if not version:
        return name, None
    try:
        return name, int(version)
    except ValueError:
        raise ValueError(f"version in {ref!r} must be an integer") from None


def get_group(ref: str) -> FeatureGroup:
    """The group named by "name[:version]"; without a version, the newest."""
    name, version = parse_ref(ref)
    matches = [g for g in all_groups() if g.name == name and (version is None or g.version == version)]
    if not matches:
        known = ", ".join(sorted({g.ref for g in all_groups()}))
        raise KeyError(f"no feature group {ref!r}; known groups: {known}")
    return matches[-1]


def all_views() -> list:
    views = []
    for module_name in DOMAIN_MODULES:
        views.extend(getattr(importlib.import_module(module_name), "FEATURE_VIEWS", []))
    return sorted(views, key=lambda v: (v.name, v.version))


def get_view(ref: str):
    """The feature view named by "name[:version]"; without a version, the newest."""
    name, version = parse_ref(ref)
    matches = [v for v in all_views() if v.name == name and (version is None or v.version == version)]
    if not matches:
        known = ", ".join(sorted(v.ref for v in all_views()))
        raise KeyError(f"no feature view {ref!r}; known views: {known}")
    return matches[-1]
