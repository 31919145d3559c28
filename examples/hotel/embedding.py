"""Session embeddings: each user's web-session clicks as a small fixed-size vector.

Click events are counted per user and page category in two steps that a
distributed run can spread over blocks: `page_counts` turns one batch of events
into one row per user, and `combine_counts` sums rows of the same user, in any
grouping or order. `SessionReducer` then learns, from the users' counts, a
projection of their click mix onto a few directions (TruncatedSVD) and applies
it with plain matrix maths; its fitted state is JSON that serving loads.

Profile of a user (what the projection sees): the square root of the share of
their clicks on each page, minus the mean profile of the users it was fitted on.
- Shares, not counts: the embedding says *what* a user looks at, not how much.
  Volume spans orders of magnitude and would take over the first component;
  it is a separate feature (total clicks) that needs no learning. Users with
  the same mix of clicks get the same embedding whatever their volume.
- Square root (the Hellinger transform): it evens out the variance of
  multinomial shares, so the page everyone clicks most (search) does not drown
  out rare but telling ones (checkout, help); Euclidean distance between
  profiles is the Hellinger distance between click distributions.
- Centering makes the SVD a PCA: without it the first component is spent on
  the average mix that every user shares.
A user with very few clicks has a coarse mix (one click is all one page); that
is a property of the data, which consumers can weigh with the total.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAGES = ("search", "hotel_page", "photos", "reviews", "map", "checkout", "account", "help")
USER_COLUMN = "user_id"
EMBEDDING_PREFIX = "session_emb_"
FORMAT_NAME = "orchard.session_reducer"
FORMAT_VERSION = 1


def count_column(page: str) -> str:
    return f"clicks_{page}"


def counts_schema() -> pa.Schema:
    return pa.schema([pa.field(USER_COLUMN, pa.string())] + [pa.field(count_column(p), pa.int64()) for p in PAGES])


def page_counts(events: pa.Table) -> pa.Table:
    """One row per user_id of a batch of click events, with an int64 `clicks_<page>` column per page."""
    _require_columns(events, [USER_COLUMN, "page"], "click events")
    users = _as_strings(events.column(USER_COLUMN), USER_COLUMN)
    pages = _as_strings(events.column("page"), "page")
    if users.null_count:
        raise ValueError(f"user_id is null in {users.null_count} click event(s); every click needs a user")
    unknown = pc.unique(pc.filter(pages, pc.invert(pc.is_in(pages, value_set=pa.array(PAGES)))))
    if len(unknown):
        names = ", ".join(repr(value) for value in unknown.to_pylist()[:5])
        raise ValueError(f"unknown page value(s) {names} ({len(unknown)} in all); expected one of {', '.join(PAGES)}")
    indicators = pa.table(
        {USER_COLUMN: users, **{count_column(p): pc.cast(pc.equal(pages, p), pa.int64()) for p in PAGES}}
    )
    return _sum_per_user(indicators)


def combine_counts(partials: pa.Table) -> pa.Table:
    """Sum rows that share a user_id; associative and commutative, so partials merge in any order."""
    _require_columns(partials, [USER_COLUMN] + [count_column(p) for p in PAGES], "click counts")
    extra = sorted(set(partials.column_names) - set(counts_schema().names))
    if extra:
        raise ValueError(f"click counts have column(s) {', '.join(extra)} that cannot be summed per user")
    table = partials.select(counts_schema().names)
    for name in table.column_names:
        if table.column(name).null_count:
            raise ValueError(f"click counts column {name!r} has {table.column(name).null_count} null value(s)")
    return _sum_per_user(table.cast(counts_schema()))


class SessionReducer:
    """Projects users' click mixes onto their main directions of variation (see the module docstring)."""

    def __init__(self, components: int = 4, seed: int = 0):
        self.components = components
        self.seed = seed

    def fit(self, counts: pa.Table) -> SessionReducer:
        """Learn the mean profile and the leading `components` directions from one row of counts per user."""
        from sklearn.decomposition import TruncatedSVD

        dimensions = len(PAGES)
        if not _is_integer(self.components) or not 1 <= self.components <= dimensions:
            raise ValueError(
                f"components must be an integer from 1 to {dimensions} (the number of pages), got {self.components!r}")
        if not _is_integer(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        _, matrix = _count_matrix(counts, PAGES)
        if len(matrix) <= self.components:
            raise ValueError(
                f"fitting {self.components} component(s) needs more than {self.components} users, got {len(matrix)}")
        profiles = _profiles(matrix)
        mean = profiles.mean(axis=0)
        centered = profiles - mean
        if not np.any(centered.var(axis=0) > 0):
            raise ValueError("all users have the same click mix; there is no variation to embed")
        svd = TruncatedSVD(n_components=self.components, algorithm="randomized", random_state=self.seed).fit(centered)
        loadings = svd.components_
        # An SVD direction is only defined up to sign: make each one's largest-magnitude loading positive.
        strongest = loadings[np.arange(len(loadings)), np.argmax(np.abs(loadings), axis=1)]
        loadings = loadings * np.where(strongest < 0, -1.0, 1.0)[:, None]

        self.pages_ = PAGES
        self.mean_ = np.ascontiguousarray(mean, dtype=np.float64)
        self.components_ = np.ascontiguousarray(loadings, dtype=np.float64)
        self.explained_variance_ratio_ = np.ascontiguousarray(svd.explained_variance_ratio_, dtype=np.float64)
        self.n_users_ = int(len(matrix))
        return self

    def transform(self, counts: pa.Table) -> pa.Table:
        """user_id and float64 `session_emb_0..k-1` for each row of counts, in input order."""
        if not hasattr(self, "components_"):
            raise RuntimeError("SessionReducer is not fitted: call fit(counts) or load one with from_json(text) first")
        users, matrix = _count_matrix(counts, self.pages_)
        embedding = (_profiles(matrix) - self.mean_) @ self.components_.T
        columns = {USER_COLUMN: users}
        for index in range(self.components_.shape[0]):
            columns[f"{EMBEDDING_PREFIX}{index}"] = pa.array(embedding[:, index], type=pa.float64())
        return pa.table(columns)

    def to_json(self) -> str:
        """The fitted state as plain JSON (numbers, lists, strings); floats round-trip exactly."""
        if not hasattr(self, "components_"):
            raise RuntimeError("SessionReducer is not fitted: there is no state to write")
        return json.dumps(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "pages": list(self.pages_),
                "params": {"components": self.components, "seed": self.seed},
                "mean": self.mean_.tolist(),
                "components": self.components_.tolist(),
                "explained_variance_ratio": self.explained_variance_ratio_.tolist(),
                "n_users": self.n_users_,
            },
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str) -> SessionReducer:
        """A fitted reducer from `to_json` output; rejects anything malformed or fitted on other pages."""
        try:
            state = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"session reducer JSON is malformed: {error}") from None
        if not isinstance(state, dict):
            raise ValueError(f"session reducer JSON must be an object, got {type(state).__name__}")
        if state.get("format") != FORMAT_NAME:
            raise ValueError(f"session reducer JSON 'format' must be {FORMAT_NAME!r}, got {state.get('format')!r}")
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"session reducer JSON 'format_version' must be {FORMAT_VERSION}, got {state.get('format_version')!r}")
        if state.get("pages") != list(PAGES):
            raise ValueError(f"session reducer was fitted on pages {state.get('pages')!r}; this code knows {list(PAGES)}")
        params = state.get("params")
        if not isinstance(params, dict) or not all(_is_integer(params.get(name)) for name in ("components", "seed")):
            raise ValueError(f"session reducer JSON 'params' must hold integers 'components' and 'seed', got {params!r}")
        components, dimensions = params["components"], len(PAGES)
        if not 1 <= components <= dimensions:
            raise ValueError(f"session reducer JSON 'params.components' must be from 1 to {dimensions}, got {components}")
        if not _is_integer(state.get("n_users")) or state["n_users"] <= components:
            raise ValueError(
                f"session reducer JSON 'n_users' must be an integer above {components}, got {state.get('n_users')!r}")
        reducer = cls(components=components, seed=params["seed"])
        reducer.pages_ = PAGES
        reducer.mean_ = _numbers(state.get("mean"), "mean", (dimensions,))
        reducer.components_ = _numbers(state.get("components"), "components", (components, dimensions))
        reducer.explained_variance_ratio_ = _numbers(
            state.get("explained_variance_ratio"), "explained_variance_ratio", (components,))
        reducer.n_users_ = state["n_users"]
        return reducer


def _sum_per_user(table: pa.Table) -> pa.Table:
    names = [count_column(p) for p in PAGES]
    summed = table.group_by(USER_COLUMN).aggregate([(name, "sum") for name in names])
    renamed = {f"{name}_sum": name for name in names}
    summed = summed.rename_columns([renamed.get(name, name) for name in summed.column_names])
    return summed.select(counts_schema().names).cast(counts_schema()).sort_by(USER_COLUMN)


def _count_matrix(counts: pa.Table, pages: tuple[str, ...]) -> tuple[pa.Array, np.ndarray]:
    """(user ids, float64 users x pages matrix) after checking the counts make sense as one row per user."""
    names = [count_column(p) for p in pages]
    _require_columns(counts, [USER_COLUMN] + names, "click counts")
    users = _as_strings(counts.column(USER_COLUMN), USER_COLUMN)
    if users.null_count:
        raise ValueError(f"click counts have {users.null_count} row(s) with a null user_id")
    if pc.count_distinct(users).as_py() != len(users):
        raise ValueError("click counts have several rows for one user_id; merge partial counts with combine_counts first")
    columns = []
    for name in names:
        column = counts.column(name)
        if not pa.types.is_integer(column.type):
            raise ValueError(f"click counts column {name!r} must hold integers, got {column.type}")
        if column.null_count:
            raise ValueError(f"click counts column {name!r} has {column.null_count} null value(s)")
        values = column.to_numpy().astype(np.float64)
        if len(values) and values.min() < 0:
            raise ValueError(f"click counts column {name!r} has negative value(s), e.g. {values.min():.0f}")
        columns.append(values)
    matrix = np.column_stack(columns) if columns else np.empty((0, 0))
    idle = matrix.sum(axis=1) == 0
    if idle.any():
        examples = ", ".join(repr(user) for user in users.filter(pa.array(idle)).to_pylist()[:3])
        raise ValueError(f"{int(idle.sum())} user(s) have no clicks, so no click mix to embed, e.g. {examples}")
    return users, matrix


def _profiles(matrix: np.ndarray) -> np.ndarray:
    """Square roots of each row's click shares (the Hellinger transform)."""
    return np.sqrt(matrix / matrix.sum(axis=1, keepdims=True))


def _require_columns(table: pa.Table, names: list[str], what: str) -> None:
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise ValueError(f"{what} lack column(s) {', '.join(missing)}; got {', '.join(table.column_names) or 'none'}")


def _as_strings(column: pa.ChunkedArray | pa.Array, name: str) -> pa.Array:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ValueError(f"column {name!r} must hold strings, got {column.type}")
    return column.cast(pa.string())


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A JSON list (of lists) of finite numbers of exactly `shape`, as float64."""
    def check(item, depth: int) -> None:
        if depth == len(shape):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                raise ValueError(f"session reducer JSON {name!r} must hold finite numbers, got {item!r}")
            return
        if not isinstance(item, list) or len(item) != shape[depth]:
            raise ValueError(f"session reducer JSON {name!r} must have shape {shape}")
        for element in item:
            check(element, depth + 1)

    check(value, 0)
    return np.ascontiguousarray(np.array(value, dtype=np.float64))
