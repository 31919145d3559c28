"""Finds model definitions (`ModelSpec`) by name across the active projects."""

from __future__ import annotations

from orchard.projects import collect, lookup
from training.spec import ModelSpec


def _models() -> dict:
    return collect(ModelSpec, lambda m: m.name, "models")


def model_specs() -> dict[str, ModelSpec]:
    return {name: item.value for name, item in _models().items()}


def get_spec(name: str) -> ModelSpec:
    return lookup(_models(), name, "model")
