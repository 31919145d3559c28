"""Model-dependent transformations of training data: learned on the training split, served as JSON.

Four transforms in scikit-learn's fit / transform style, each on one column:
- `MinMaxScaler`: (x - min) / (max - min), so the training range maps to [0, 1].
  Not clipped: a value outside the fitted range (an electricity price spike
  never seen in training) maps outside [0, 1], e.g. 1.3. Clipping would hide
  drift and throw information away; a model or caller that needs [0, 1] clips.
  A constant training column maps every value to 0.0.
- `StandardScaler`: (x - mean) / std with the population std; std 0 maps to 0.0.
- `OneHotEncoder`: one float64 0/1 column `<column>=<category>` per category
  seen in training, in sorted order. A category not seen in training is never
  an error: it gives all zeros (unknown="ignore") or a 1 in an extra column
  `<column>=__other__` (unknown="other"). A null gives all zeros in both modes,
  so "missing" and "unknown" differ only with unknown="other".
- `LabelEncoder`: a class target to its int64 index in the sorted `classes_`.
  Labels are not served, so an unknown or null class is a ValueError naming it.

Nulls in numeric input are skipped by fit and stay null through transform (a
model that cannot take nulls needs an imputation step; it is not hidden here).
NaN and infinity are errors, in fit and in transform: they are broken data, not
missing data, and would otherwise poison the statistics or pass silently into a model.

Fitting is distributed: `partial_state(batch)` reduces one block to small JSON-able
statistics (min/max; count/mean/M2; category counts), `merge_states(a, b)` combines
two of them associatively (Chan et al.'s parallel update for mean and M2, which
stays accurate where a running sum of squares would cancel), and `from_state`
turns the merged statistics into the learned `_` attributes. The JSON form stores
those statistics, so a loaded transform derives its attributes by the very same
arithmetic and gives bit-identical outputs. `TransformSet` fits several
transforms in one pass over a Ray Dataset, moving only statistics to the driver.

`transform_rows` (serving) builds an Arrow table from the rows and calls
`transform`: one code path, so a served row gets exactly the training-time bits.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

FORMAT_NAME = "orchard.transform"
SET_FORMAT_NAME = "orchard.transform_set"
FORMAT_VERSION = 1
OTHER_CATEGORY = "__other__"
UNKNOWN_POLICIES = ("ignore", "other")
_STATES_COLUMN = "partial_states"


class NotFittedError(RuntimeError):
    """A transform was used before fit, from_state or from_json gave it its learned state."""


class Transform:
    """One column in, its learned mapping out; subclasses define the statistics and the arithmetic."""

    is_label = False
    """Label transforms are skipped by `TransformSet.transform` when their column is absent (serving)."""

    def __init__(self, column: str):
        self.column = column

    def __repr__(self) -> str:
        params = "".join(f", {name}={value!r}" for name, value in self._params().items())
        return f"{type(self).__name__}({self.column!r}{params})"

    # -- the fit / transform contract

    def partial_state(self, batch: pa.Table) -> dict:
        """Statistics of one block of training data, as plain JSON-able data."""
        self._check_declaration()
        return self._partial(_require_column(batch, self.column, repr(self)))

    def merge_states(self, a: dict, b: dict) -> dict:
        """Statistics of the union of two blocks; associative and commutative."""
        self._check_declaration()
        return self._merge(self._check_state(a), self._check_state(b))

    def from_state(self, state: dict) -> Transform:
        """Set the learned attributes from merged statistics; returns self."""
        self._check_declaration()
        state = self._check_state(state)
        self._learn(state)
        self.state_ = state
        return self

    def fit(self, table: pa.Table) -> Transform:
        """Learn from a whole training table at once (one partial state, then from_state)."""
        return self.from_state(self.partial_state(table))

    def transform(self, table: pa.Table) -> pa.Table:
        """`table` with this transform's column replaced, in place, by its output column(s)."""
        self._require_fitted()
        column = _require_column(table, self.column, repr(self))
        return _replace_column(table, self.column, self._apply(column), repr(self))

    def transform_rows(self, rows: list[dict]) -> list[dict]:
        """Transform a few rows (serving) through the same Arrow code path as `transform`."""
        self._require_fitted()
        return self.transform(rows_to_table(rows)).to_pylist() if rows else []

    def output_names(self) -> list[str]:
        """Names of the column(s) that replace the input column."""
        self._require_fitted()
        return [self.column]

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "state_")

    # -- JSON

    def to_dict(self) -> dict:
        self._check_declaration()
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "type": type(self).__name__,
            "column": self.column,
            "params": self._params(),
            "state": self.state_ if self.is_fitted else None,
        }

    def to_json(self) -> str:
        """Plain JSON: format, version, type, column, params and the learned statistics (null if unfitted)."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Transform:
        where = "transform JSON"
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object, got {type(data).__name__}")
        _require_keys(data, ("format", "format_version", "type", "column", "params", "state"), where)
        if data["format"] != FORMAT_NAME:
            raise ValueError(f"{where} 'format' must be {FORMAT_NAME!r}, got {data['format']!r}")
        if data["format_version"] != FORMAT_VERSION or isinstance(data["format_version"], bool):
            raise ValueError(f"{where} 'format_version' must be {FORMAT_VERSION}, got {data['format_version']!r}")
        kind = _transform_type(data["type"]) if isinstance(data["type"], str) else None
        if kind is None:
            raise ValueError(f"{where} 'type' must be one of {', '.join(_TRANSFORM_TYPES)}, got {data['type']!r}")
        if cls is not Transform and kind is not cls:
            raise ValueError(f"{where} holds a {data['type']}, not a {cls.__name__}")
        if not isinstance(data["params"], dict):
            raise ValueError(f"{where} 'params' must be an object, got {data['params']!r}")
        if sorted(data["params"]) != sorted(kind._param_names()):
            raise ValueError(f"{where} 'params' of a {data['type']} must have exactly the keys "
                             f"{kind._param_names()}, got {sorted(data['params'])}")
        transform = kind(data["column"], **data["params"])
        transform._check_declaration()
        if data["state"] is not None:
            transform.from_state(data["state"])
        return transform

    @classmethod
    def from_json(cls, text: str) -> Transform:
        """A transform from `to_json` output; `Transform.from_json` accepts any type, a subclass only its own."""
        return cls.from_dict(_parse_json(text, "transform JSON"))

    # -- what subclasses define

    @classmethod
    def _param_names(cls) -> list[str]:
        return []

    def _params(self) -> dict:
        return {}

    def _check_params(self) -> None:
        pass

    def _partial(self, column: pa.Array) -> dict:
        raise NotImplementedError

    def _check_state(self, state: Any) -> dict:
        raise NotImplementedError

    def _merge(self, a: dict, b: dict) -> dict:
        raise NotImplementedError

    def _learn(self, state: dict) -> None:
        raise NotImplementedError

    def _apply(self, column: pa.Array) -> list[tuple[str, pa.Array]]:
        raise NotImplementedError

    # -- helpers

    def _check_declaration(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            raise ValueError(f"{type(self).__name__} column must be a non-empty string, got {self.column!r}")
        self._check_params()

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"{self!r} is not fitted: call fit(table) or from_state(state), or load one with from_json(text)")

    def _state_error(self, message: str) -> ValueError:
        return ValueError(f"{self!r} state: {message}")


# -- numeric scalers


class MinMaxScaler(Transform):
    """(x - min) / (max - min) of the training data: [0, 1] on the training range, outside it beyond."""

    def _partial(self, column: pa.Array) -> dict:
        values, missing = _numbers(column, self.column, repr(self))
        present = _finite_present(values, missing, self.column, repr(self), "fit")
        if not len(present):
            return {"count": 0, "min": None, "max": None}
        return {"count": int(len(present)), "min": float(present.min()), "max": float(present.max())}

    def _check_state(self, state: Any) -> dict:
        _require_state_keys(self, state, ("count", "min", "max"))
        count = _state_count(self, state["count"], "count")
        if count == 0:
            if state["min"] is not None or state["max"] is not None:
                raise self._state_error(f"'min' and 'max' must be null when 'count' is 0, got {state!r}")
            return {"count": 0, "min": None, "max": None}
        low, high = _state_float(self, state["min"], "min"), _state_float(self, state["max"], "max")
        if low > high:
            raise self._state_error(f"'min' {low!r} is above 'max' {high!r}")
        return {"count": count, "min": low, "max": high}

    def _merge(self, a: dict, b: dict) -> dict:
        if not a["count"] or not b["count"]:
            return dict(b if not a["count"] else a)
        return {"count": a["count"] + b["count"], "min": min(a["min"], b["min"]), "max": max(a["max"], b["max"])}

    def _learn(self, state: dict) -> None:
        if not state["count"]:
            raise ValueError(f"{self!r}: column {self.column!r} has no non-null values to fit on")
        data_range = state["max"] - state["min"]
        if not math.isfinite(data_range):
            raise ValueError(f"{self!r}: the range of column {self.column!r} ({state['min']!r} to {state['max']!r}) "
                             "overflows float64")
        self.data_min_ = state["min"]
        self.data_max_ = state["max"]
        self.data_range_ = data_range
        self.n_samples_ = state["count"]

    def _apply(self, column: pa.Array) -> list[tuple[str, pa.Array]]:
        values, missing = _numbers(column, self.column, repr(self))
        _finite_present(values, missing, self.column, repr(self), "transform")
        if self.data_range_ > 0:
            scaled = (values - self.data_min_) / self.data_range_
        else:
            scaled = np.zeros(len(values), dtype=np.float64)
        return [(self.column, pa.array(scaled, type=pa.float64(), mask=missing))]


class StandardScaler(Transform):
    """(x - mean) / std of the training data, population std; a constant column maps to 0.0."""

    def _partial(self, column: pa.Array) -> dict:
        values, missing = _numbers(column, self.column, repr(self))
        present = _finite_present(values, missing, self.column, repr(self), "fit")
        if not len(present):
            return {"count": 0, "mean": 0.0, "m2": 0.0}
        if present.min() == present.max():
            # Exact for a constant block, so a constant column gets std exactly 0 (np.mean may be 1 ulp off).
            mean, m2 = float(present[0]), 0.0
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, by name
                mean = float(np.mean(present))
                m2 = float(np.sum(np.square(present - mean)))
        if not (math.isfinite(mean) and math.isfinite(m2)):
            raise ValueError(f"{self!r}: values of column {self.column!r} are too large for a float64 variance")
        return {"count": int(len(present)), "mean": mean, "m2": m2}

    def _check_state(self, state: Any) -> dict:
        _require_state_keys(self, state, ("count", "mean", "m2"))
        count = _state_count(self, state["count"], "count")
        mean, m2 = _state_float(self, state["mean"], "mean"), _state_float(self, state["m2"], "m2")
        if m2 < 0:
            raise self._state_error(f"'m2' (sum of squared deviations) must be >= 0, got {m2!r}")
        if count == 0 and (mean != 0 or m2 != 0):
            raise self._state_error(f"'mean' and 'm2' must be 0 when 'count' is 0, got {state!r}")
        return {"count": count, "mean": mean, "m2": m2}

    def _merge(self, a: dict, b: dict) -> dict:
        if not a["count"] or not b["count"]:
            return dict(b if not a["count"] else a)
        count = a["count"] + b["count"]
        delta = b["mean"] - a["mean"]
        mean = a["mean"] + delta * (b["count"] / count)
        m2 = a["m2"] + b["m2"] + delta * delta * (a["count"] * b["count"] / count)
        if not (math.isfinite(mean) and math.isfinite(m2)):
            raise ValueError(f"{self!r}: values of column {self.column!r} are too large for a float64 variance")
        return {"count": count, "mean": mean, "m2": m2}

    def _learn(self, state: dict) -> None:
        if not state["count"]:
            raise ValueError(f"{self!r}: column {self.column!r} has no non-null values to fit on")
        self.mean_ = state["mean"]
        self.var_ = state["m2"] / state["count"]
        self.std_ = math.sqrt(self.var_)
        self.n_samples_ = state["count"]

    def _apply(self, column: pa.Array) -> list[tuple[str, pa.Array]]:
        values, missing = _numbers(column, self.column, repr(self))
        _finite_present(values, missing, self.column, repr(self), "transform")
        if self.std_ > 0:
            scaled = (values - self.mean_) / self.std_
        else:
            scaled = np.zeros(len(values), dtype=np.float64)
        return [(self.column, pa.array(scaled, type=pa.float64(), mask=missing))]


# -- categorical transforms


class _CategoryTransform(Transform):
    """Shared statistics of the categorical transforms: how often each value occurs.

    Categories are strings or integers (kind "string" / "integer"); the kind is
    learned with them, so serving input of the other kind is rejected.
    """

    allows_nulls = True

    def _partial(self, column: pa.Array) -> dict:
        values, kind = _category_values(column, self.column, repr(self))
        if values.null_count and not self.allows_nulls:
            raise ValueError(f"{self!r}: column {self.column!r} has {values.null_count} null value(s); "
                             "every training row needs a class")
        if kind is None:
            return {"kind": None, "values": [], "counts": []}
        counted = pc.value_counts(values.drop_null())
        pairs = sorted(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))
        return {"kind": kind, "values": [value for value, _ in pairs], "counts": [count for _, count in pairs]}

    def _check_state(self, state: Any) -> dict:
        _require_state_keys(self, state, ("kind", "values", "counts"))
        kind, values, counts = state["kind"], state["values"], state["counts"]
        if kind not in (None, "string", "integer"):
            raise self._state_error(f"'kind' must be \"string\", \"integer\" or null, got {kind!r}")
        if not isinstance(values, list) or not isinstance(counts, list) or len(values) != len(counts):
            raise self._state_error("'values' and 'counts' must be lists of the same length")
        if kind is None and values:
            raise self._state_error("'values' must be empty when 'kind' is null")
        expected = str if kind == "string" else int
        for value in values:
            if not isinstance(value, expected) or isinstance(value, bool):
                raise self._state_error(f"'values' of kind {kind!r} must all be {expected.__name__}, got {value!r}")
        if any(later <= earlier for earlier, later in zip(values, values[1:])):
            raise self._state_error("'values' must be sorted and distinct")
        for count in counts:
            if not _is_integer(count) or count < 1:
                raise self._state_error(f"'counts' must be positive integers, got {count!r}")
        return {"kind": kind, "values": list(values), "counts": list(counts)}

    def _merge(self, a: dict, b: dict) -> dict:
        if a["kind"] is not None and b["kind"] is not None and a["kind"] != b["kind"]:
            raise ValueError(f"{self!r}: column {self.column!r} holds {a['kind']} values in one block "
                             f"and {b['kind']} values in another")
        totals = dict(zip(a["values"], a["counts"]))
        for value, count in zip(b["values"], b["counts"]):
            totals[value] = totals.get(value, 0) + count
        values = sorted(totals)
        return {"kind": a["kind"] or b["kind"], "values": values, "counts": [totals[value] for value in values]}

    def _learned_values(self, state: dict) -> list:
        if not state["values"]:
            raise ValueError(f"{self!r}: column {self.column!r} has no non-null values to learn categories from")
        self.kind_ = state["kind"]
        return list(state["values"])

    def _positions(self, column: pa.Array, known: list) -> tuple[np.ndarray, np.ndarray]:
        """(index of each value in `known`, -1 if unknown or null; null mask) of the input column."""
        values, kind = _category_values(column, self.column, repr(self))
        missing = np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if kind is None:
            return np.full(len(values), -1, dtype=np.int64), missing
        if kind != self.kind_:
            raise ValueError(f"{self!r}: column {self.column!r} must hold {self.kind_} values as in training, "
                             f"got {column.type}")
        value_set = pa.array(known, type=values.type)
        found = pc.index_in(values, value_set=value_set)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64), missing


class OneHotEncoder(_CategoryTransform):
    """One float64 0/1 column per training category; unseen categories give zeros or `<column>=__other__`."""

    def __init__(self, column: str, unknown: str = "ignore"):
        self.column = column
        self.unknown = unknown

    @classmethod
    def _param_names(cls) -> list[str]:
        return ["unknown"]

    def _params(self) -> dict:
        return {"unknown": self.unknown}

    def _check_params(self) -> None:
        if self.unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"{type(self).__name__}({self.column!r}) unknown must be one of "
                             f"{', '.join(map(repr, UNKNOWN_POLICIES))}, got {self.unknown!r}")

    def _learn(self, state: dict) -> None:
        categories = self._learned_values(state)
        names = self._names(categories)
        if len(set(names)) != len(names):
            clashing = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"{self!r}: output column name(s) {', '.join(map(repr, clashing))} would appear twice "
                             f"(a category named {OTHER_CATEGORY!r}?)")
        self.categories_ = categories

    def output_names(self) -> list[str]:
        self._require_fitted()
        return self._names(self.categories_)

    def _names(self, categories: list) -> list[str]:
        extra = [OTHER_CATEGORY] if self.unknown == "other" else []
        return [f"{self.column}={category}" for category in categories + extra]

    def _apply(self, column: pa.Array) -> list[tuple[str, pa.Array]]:
        positions, missing = self._positions(column, self.categories_)
        names = self.output_names()
        outputs = [(names[index], pa.array((positions == index).astype(np.float64), type=pa.float64()))
                   for index in range(len(self.categories_))]
        if self.unknown == "other":
            unseen = (positions == -1) & ~missing
            outputs.append((names[-1], pa.array(unseen.astype(np.float64), type=pa.float64())))
        return outputs


class LabelEncoder(_CategoryTransform):
    """A class target to its int64 index in the sorted training classes; unknown classes are errors."""

    is_label = True
    allows_nulls = False

    def _learn(self, state: dict) -> None:
        self.classes_ = self._learned_values(state)

    def _apply(self, column: pa.Array) -> list[tuple[str, pa.Array]]:
        positions, missing = self._positions(column, self.classes_)
        if missing.any():
            raise ValueError(f"{self!r}: column {self.column!r} has {int(missing.sum())} null label(s); "
                             "every row needs a class")
        unknown = positions == -1
        if unknown.any():
            unseen = pc.unique(_whole(column).filter(pa.array(unknown))).to_pylist()
            examples = ", ".join(repr(value) for value in unseen[:5])
            raise ValueError(f"{self!r}: unknown class(es) {examples} ({len(unseen)} in all, {int(unknown.sum())} "
                             f"row(s)) in column {self.column!r}; the classes seen in training are {self.classes_!r}")
        return [(self.column, pa.array(positions, type=pa.int64()))]

    def inverse_transform(self, table: pa.Table) -> pa.Table:
        """`table` with the column of class indices (e.g. predictions) replaced by the class values."""
        self._require_fitted()
        column = _whole(_require_column(table, self.column, repr(self)))
        if not pa.types.is_integer(column.type):
            raise ValueError(f"{self!r}: column {self.column!r} must hold integer class indices, got {column.type}")
        indices = column.cast(pa.int64())
        out_of_range = pc.or_(pc.less(indices, 0), pc.greater_equal(indices, len(self.classes_)))
        if pc.any(out_of_range).as_py():
            bad = indices.filter(out_of_range)[0].as_py()
            raise ValueError(f"{self!r}: class index {bad} is outside 0..{len(self.classes_) - 1}")
        value_type = pa.string() if self.kind_ == "string" else pa.int64()
        labels = pa.array(self.classes_, type=value_type).take(indices)
        return _replace_column(table, self.column, [(self.column, labels)], repr(self))


_TRANSFORM_TYPES: dict[str, type[Transform]] = {}


def register_transform(kind: type[Transform]) -> type[Transform]:
    """Class decorator: make a Transform subclass loadable from its JSON by its class name.

    A project's own transformation subclasses `Transform`, fills in `_partial`,
    `_merge`, `_check_state`, `_learn` and `_apply` (and `_param_names`/`_params`
    for constructor arguments), and registers itself with this decorator. Its
    fitted state is stored as JSON like the built-in ones' and is found again
    by name when a dataset or a model version is loaded, in any process that
    loads the project; nothing is pickled.
    """
    if not (isinstance(kind, type) and issubclass(kind, Transform)) or kind is Transform:
        raise TypeError(f"register_transform takes a subclass of Transform, got {kind!r}")
    name = kind.__name__
    known = _TRANSFORM_TYPES.get(name)
    if known is not None and known is not kind and _qualified(known) != _qualified(kind):
        raise ValueError(f"two transforms named {name!r}: {_qualified(known)} and {_qualified(kind)}; "
                         "rename one of the classes")
    _TRANSFORM_TYPES[name] = kind
    return kind


def _qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _transform_type(name: str) -> type[Transform] | None:
    """The registered class for `name`, loading the active projects first if it is not known yet."""
    if name not in _TRANSFORM_TYPES:
        from orchard.projects import active_modules

        active_modules()  # a project's transforms register themselves when its modules are imported
    return _TRANSFORM_TYPES.get(name)


for _builtin in (MinMaxScaler, StandardScaler, OneHotEncoder, LabelEncoder):
    register_transform(_builtin)


# -- several transforms, fitted in one pass


class TransformSet:
    """Several transforms on distinct columns, fitted together and applied in order.

    Label transforms (LabelEncoder) are skipped when their column is absent, so
    the same set serves rows that carry features but no label; every other
    transform's column must be present.
    """

    def __init__(self, transforms: list[Transform]):
        self.transforms = transforms

    def __repr__(self) -> str:
        return f"TransformSet({self.transforms!r})"

    @property
    def is_fitted(self) -> bool:
        return all(transform.is_fitted for transform in self._checked())

    def partial_states(self, batch: pa.Table) -> list[dict]:
        """Every transform's statistics of one block, in order."""
        transforms = self._checked()
        _require_columns(batch, [transform.column for transform in transforms], "the training data")
        return [transform.partial_state(batch) for transform in transforms]

    def merge_states(self, a: list[dict], b: list[dict]) -> list[dict]:
        transforms = self._checked()
        _require_state_list(a, transforms)
        _require_state_list(b, transforms)
        return [transform.merge_states(left, right) for transform, left, right in zip(transforms, a, b)]

    def from_states(self, states: list[dict]) -> TransformSet:
        transforms = self._checked()
        _require_state_list(states, transforms)
        for transform, state in zip(transforms, states):
            transform.from_state(state)
        return self

    def fit_table(self, table: pa.Table) -> TransformSet:
        """Fit every transform on one in-memory training table."""
        return self.from_states(self.partial_states(table))

    def fit_dataset(self, dataset: ray.data.Dataset) -> TransformSet:
        """Fit every transform in one pass over a Ray Dataset of training rows.

        Each block is reduced, where it lies, to every transform's statistics,
        returned as one row holding a JSON string; the driver merges those rows.
        Only statistics move, never rows.
        """
        transforms = self._checked()
        columns = list(dict.fromkeys(transform.column for transform in transforms))
        schema = dataset.schema()
        if schema is not None:
            missing = [name for name in columns if name not in schema.names]
            if missing:
                raise ValueError(f"the training dataset lacks column(s) {', '.join(map(repr, missing))} "
                                 f"that transforms need; it has {', '.join(schema.names) or 'none'}")
        declaration = TransformSet([Transform.from_dict({**t.to_dict(), "state": None}) for t in transforms])

        def block_states(batch: pa.Table) -> pa.Table:
            states = declaration.partial_states(batch)
            return pa.table({_STATES_COLUMN: pa.array([json.dumps(states, allow_nan=False)], type=pa.string())})

        partials = dataset.select_columns(columns).map_batches(
            block_states, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
        rows = partials.take_all()
        if not rows:
            raise ValueError("the training dataset is empty: there is nothing to fit on")
        merged = json.loads(rows[0][_STATES_COLUMN])
        for row in rows[1:]:
            merged = self.merge_states(merged, json.loads(row[_STATES_COLUMN]))
        log.info("fitted %d transform(s) from %d block(s)", len(transforms), len(rows))
        return self.from_states(merged)

    def output_columns(self, input_columns: Iterable[str]) -> list[str]:
        """The columns `transform` gives a table with `input_columns`, in order."""
        transforms = self._checked()
        for transform in transforms:
            transform._require_fitted()
        names = list(input_columns)
        targets = {transform.column: transform for transform in transforms}
        missing = [t.column for t in transforms if t.column not in names and not t.is_label]
        if missing:
            raise ValueError(f"input lacks column(s) {', '.join(map(repr, missing))} that transforms need; "
                             f"it has {', '.join(names) or 'none'}")
        outputs = []
        for name in names:
            outputs.extend(targets[name].output_names() if name in targets else [name])
        repeated = sorted({name for name in outputs if outputs.count(name) > 1})
        if repeated:
            raise ValueError(f"transformed columns would repeat the name(s) {', '.join(map(repr, repeated))}")
        return outputs

    def transform(self, table: pa.Table) -> pa.Table:
        """`table` with each transform's column replaced by its output, in the order of the transforms."""
        expected = self.output_columns(table.column_names)
        for transform in self.transforms:
            if transform.column in table.column_names:
                table = transform.transform(table)
        assert table.column_names == expected, (table.column_names, expected)
        return table

    def transform_rows(self, rows: list[dict]) -> list[dict]:
        """Transform a few rows (serving) through the same Arrow code path as `transform`."""
        if not rows:
            self.output_columns([t.column for t in self._checked()])  # still refuses an unfitted set
            return []
        return self.transform(rows_to_table(rows)).to_pylist()

    def to_json(self) -> str:
        """{"format", "format_version", "transforms": [each transform's to_json object]}."""
        transforms = self._checked()
        return json.dumps({"format": SET_FORMAT_NAME, "format_version": FORMAT_VERSION,
                           "transforms": [transform.to_dict() for transform in transforms]}, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> TransformSet:
        where = "transform set JSON"
        data = _parse_json(text, where)
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object, got {type(data).__name__}")
        _require_keys(data, ("format", "format_version", "transforms"), where)
        if data["format"] != SET_FORMAT_NAME:
            raise ValueError(f"{where} 'format' must be {SET_FORMAT_NAME!r}, got {data['format']!r}")
        if data["format_version"] != FORMAT_VERSION or isinstance(data["format_version"], bool):
            raise ValueError(f"{where} 'format_version' must be {FORMAT_VERSION}, got {data['format_version']!r}")
        if not isinstance(data["transforms"], list):
            raise ValueError(f"{where} 'transforms' must be a list, got {data['transforms']!r}")
        transform_set = cls([Transform.from_dict(item) for item in data["transforms"]])
        transform_set._checked()
        return transform_set

    def _checked(self) -> list[Transform]:
        """The transforms, after checking the declaration: Transform objects on distinct columns."""
        if not isinstance(self.transforms, (list, tuple)):
            raise ValueError(f"TransformSet needs a list of transforms, got {type(self.transforms).__name__}")
        seen: set[str] = set()
        for transform in self.transforms:
            if not isinstance(transform, Transform):
                raise ValueError(f"TransformSet items must be transforms, got {transform!r}")
            transform._check_declaration()
            if transform.column in seen:
                raise ValueError(f"column {transform.column!r} has more than one transform; "
                                 "give each column at most one")
            seen.add(transform.column)
        return list(self.transforms)


# -- rows and columns


def rows_to_table(rows: list[dict]) -> pa.Table:
    """An Arrow table from rows that all have the same keys; column types are inferred from the values."""
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"rows must be a non-empty list of dicts, got {rows!r}")
    if not isinstance(rows[0], dict):
        raise ValueError(f"row 0 must be a dict, got {type(rows[0]).__name__}")
    names = list(rows[0])
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != set(names):
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"row {index} must have the keys of row 0 ({', '.join(names)}), got {got}")
    columns = {}
    for name in names:
        try:
            columns[name] = pa.array([row[name] for row in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as error:
            raise ValueError(f"column {name!r} of the rows does not hold values of one type: {error}") from None
    return pa.table(columns)


def _replace_column(table: pa.Table, name: str, outputs: list[tuple[str, pa.Array]], owner: str) -> pa.Table:
    position = table.column_names.index(name)
    others = set(table.column_names) - {name}
    clashing = [output for output, _ in outputs if output in others]
    if clashing:
        raise ValueError(f"{owner}: output column(s) {', '.join(map(repr, clashing))} already exist in the table")
    table = table.remove_column(position)
    for offset, (output, values) in enumerate(outputs):
        table = table.add_column(position + offset, output, values)
    return table


def _require_column(table: pa.Table, name: str, owner: str) -> pa.Array:
    if not isinstance(table, pa.Table):
        raise ValueError(f"{owner} needs a pyarrow Table, got {type(table).__name__}")
    if name not in table.column_names:
        raise ValueError(f"{owner}: the table lacks column {name!r}; it has {', '.join(table.column_names) or 'none'}")
    return _whole(table.column(name))


def _require_columns(table: pa.Table, names: list[str], what: str) -> None:
    if not isinstance(table, pa.Table):
        raise ValueError(f"{what} must be a pyarrow Table, got {type(table).__name__}")
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(map(repr, missing))}; "
                         f"it has {', '.join(table.column_names) or 'none'}")


def _whole(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def _numbers(column: pa.Array, name: str, owner: str) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, nulls as 0.0; null mask) of an integer or floating column (or an all-null one)."""
    if pa.types.is_null(column.type):
        return np.zeros(len(column), dtype=np.float64), np.ones(len(column), dtype=bool)
    if pa.types.is_floating(column.type):
        values = column.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
    elif pa.types.is_integer(column.type):
        # numpy rounds integers beyond 2**53 to the nearest float64, where Arrow's safe cast would refuse.
        values = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        raise ValueError(f"{owner}: column {name!r} must hold numbers (integer or floating), got {column.type}")
    missing = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return np.asarray(values, dtype=np.float64), missing


def _finite_present(values: np.ndarray, missing: np.ndarray, name: str, owner: str, step: str) -> np.ndarray:
    """The non-null values, after checking none is NaN or infinite."""
    bad = ~np.isfinite(values) & ~missing
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{owner}: column {name!r} has {int(bad.sum())} NaN or infinite value(s), e.g. row {row}: "
                         f"{values[row]!r}; {step} needs finite numbers (or null for missing)")
    return values[~missing]


def _category_values(column: pa.Array, name: str, owner: str) -> tuple[pa.Array, str | None]:
    """The column as string or int64 values, and its kind ("string", "integer", or None if all null)."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_null(column.type):
        return column, None
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        return column.cast(pa.string()), "string"
    if pa.types.is_integer(column.type):
        try:
            return column.cast(pa.int64()), "integer"
        except pa.ArrowInvalid:
            raise ValueError(f"{owner}: column {name!r} has integers beyond int64") from None
    raise ValueError(f"{owner}: column {name!r} must hold strings or integers as categories, got {column.type}")


# -- JSON checks


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{where} is malformed: {error}") from None


def _require_keys(data: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in data]
    extra = sorted(set(data) - set(keys))
    if missing or extra:
        raise ValueError(f"{where} must have exactly the keys {', '.join(keys)}; "
                         f"missing {missing or 'none'}, unexpected {extra or 'none'}")


def _require_state_keys(transform: Transform, state: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(state, dict):
        raise transform._state_error(f"must be an object, got {state!r}")
    if set(state) != set(keys):
        raise transform._state_error(f"must have exactly the keys {', '.join(keys)}, got {', '.join(sorted(state))}")


def _require_state_list(states: Any, transforms: list[Transform]) -> None:
    if not isinstance(states, list) or len(states) != len(transforms):
        raise ValueError(f"a transform set's states must be a list of {len(transforms)} state(s), got {states!r}")


def _state_count(transform: Transform, value: Any, key: str) -> int:
    if not _is_integer(value) or value < 0:
        raise transform._state_error(f"{key!r} must be a non-negative integer, got {value!r}")
    return value


def _state_float(transform: Transform, value: Any, key: str) -> float:
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise transform._state_error(f"{key!r} must be a finite number, got {value!r}")
    return number


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
