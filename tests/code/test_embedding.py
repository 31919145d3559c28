"""Click counts per user and the session reducer that embeds their click mix."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hotel.embedding import PAGES, SessionReducer, combine_counts, page_counts

EMBEDDING_COLUMNS = [f"session_emb_{i}" for i in range(4)]


def _counts(rows: dict[str, dict[str, int]]) -> pa.Table:
    """A counts table from {user: {page: clicks}}; pages not named have 0 clicks."""
    users = list(rows)
    table = {"user_id": pa.array(users, pa.string())}
    for page in PAGES:
        table[f"clicks_{page}"] = pa.array([rows[u].get(page, 0) for u in users], pa.int64())
    return pa.table(table)


# Three kinds of visitor, by the mix of pages they click.
BEHAVIOURS = {
    "browser": {"search": 0.35, "hotel_page": 0.2, "photos": 0.25, "reviews": 0.15, "map": 0.05},
    "booker": {"search": 0.2, "hotel_page": 0.3, "map": 0.1, "checkout": 0.4},
    "support": {"search": 0.05, "account": 0.5, "help": 0.45},
}


def _clustered_users(per_cluster: int = 40, seed: int = 11) -> tuple[pa.Table, list[str]]:
    rng = np.random.default_rng(seed)
    rows, kinds = {}, []
    for kind, mix in BEHAVIOURS.items():
        shares = np.array([mix.get(page, 0.0) for page in PAGES])
        for n in range(per_cluster):
            clicks = rng.multinomial(int(rng.integers(30, 400)), shares)
            rows[f"{kind}-{n}"] = dict(zip(PAGES, clicks.tolist()))
            kinds.append(kind)
    return _counts(rows), kinds


def _embeddings(table: pa.Table) -> np.ndarray:
    return np.column_stack([table.column(name).to_numpy() for name in table.column_names[1:]])


def test_page_counts_gives_one_row_per_user_with_clicks_per_page():
    events = pa.table({"user_id": ["b", "a", "b", "b", "a"], "page": ["search", "help", "search", "checkout", "help"],
                       "at": [1, 2, 3, 4, 5]})
    counts = page_counts(events)
    assert counts.column("user_id").to_pylist() == ["a", "b"]
    assert counts.column("clicks_help").to_pylist() == [2, 0]
    assert counts.column("clicks_search").to_pylist() == [0, 2]
    assert counts.column("clicks_checkout").to_pylist() == [0, 1]
    assert counts.schema.names == ["user_id"] + [f"clicks_{p}" for p in PAGES]
    assert all(counts.schema.field(f"clicks_{p}").type == pa.int64() for p in PAGES)


def test_unknown_page_value_is_named_in_the_error():
    events = pa.table({"user_id": ["a", "a"], "page": ["search", "spa_booking"]})
    with pytest.raises(ValueError, match="unknown page value.*'spa_booking'"):
        page_counts(events)


def test_null_page_is_an_unknown_page():
    events = pa.table({"user_id": ["a", "a"], "page": ["search", None]})
    with pytest.raises(ValueError, match="unknown page value.*None"):
        page_counts(events)


def test_combine_counts_is_associative_over_batches():
    rng = np.random.default_rng(5)
    batches = [pa.table({"user_id": rng.choice(["u1", "u2", "u3", "u4"], size=50).tolist(),
                         "page": rng.choice(PAGES, size=50).tolist()}) for _ in range(3)]
    a, b, c = (page_counts(batch) for batch in batches)
    left = combine_counts(pa.concat_tables([combine_counts(pa.concat_tables([a, b])), c]))
    right = combine_counts(pa.concat_tables([a, combine_counts(pa.concat_tables([b, c]))]))
    whole = page_counts(pa.concat_tables(batches))
    assert left.equals(right)
    assert left.equals(whole)
    assert sum(left.column(f"clicks_{p}").to_numpy().sum() for p in PAGES) == 150


def test_fit_is_deterministic_for_a_seed():
    counts, _ = _clustered_users()
    first = SessionReducer(components=3, seed=7).fit(counts)
    second = SessionReducer(components=3, seed=7).fit(counts)
    assert np.array_equal(first.components_, second.components_)
    assert np.array_equal(_embeddings(first.transform(counts)), _embeddings(second.transform(counts)))


def test_json_round_trip_transforms_bit_for_bit_identically():
    counts, _ = _clustered_users()
    fitted = SessionReducer(components=4, seed=1).fit(counts)
    loaded = SessionReducer.from_json(fitted.to_json())
    assert np.array_equal(_embeddings(loaded.transform(counts)), _embeddings(fitted.transform(counts)))
    assert loaded.transform(counts).column_names == ["user_id"] + EMBEDDING_COLUMNS
    assert (loaded.components, loaded.seed) == (4, 1)


def test_serialized_state_is_plain_json_with_version_and_page_order():
    counts, _ = _clustered_users()
    state = json.loads(SessionReducer(components=2).fit(counts).to_json())
    assert state["format_version"] == 1
    assert state["pages"] == list(PAGES)
    assert np.array(state["components"]).shape == (2, len(PAGES))


def test_transform_before_fit_is_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        SessionReducer().transform(_counts({"u": {"search": 1}}))


def test_more_components_than_pages_is_refused():
    counts, _ = _clustered_users()
    with pytest.raises(ValueError, match="components must be an integer from 1 to 8"):
        SessionReducer(components=9).fit(counts)


def test_same_click_mix_at_any_volume_gets_the_same_embedding():
    counts, _ = _clustered_users()
    reducer = SessionReducer(components=3).fit(counts)
    mix = {"search": 3, "photos": 2, "checkout": 1}
    users = _counts({"light": mix, "heavy": {page: 50 * n for page, n in mix.items()}})
    light, heavy = _embeddings(reducer.transform(users))
    np.testing.assert_allclose(light, heavy, rtol=0, atol=1e-12)


def test_users_of_one_behaviour_are_closer_to_each_other_than_to_other_behaviours():
    counts, kinds = _clustered_users()
    points = _embeddings(SessionReducer(components=2, seed=0).fit(counts).transform(counts))
    kinds = np.array(kinds)
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    same = kinds[:, None] == kinds[None, :]
    # Every user's farthest same-kind neighbour is nearer than their nearest other-kind user.
    assert np.all(np.where(same, distances, 0).max(axis=1) < np.where(same, np.inf, distances).min(axis=1))


def test_two_mixes_split_along_one_component_with_exact_scores():
    # Profiles sqrt(shares): (1, 0) for search-only, (1/2, sqrt(3)/2) for 1 search + 3 checkout.
    # Their difference has length 1, so each sits half a unit from the mean; checkout loads largest.
    counts = _counts({"s1": {"search": 1}, "s2": {"search": 5},
                      "c1": {"search": 1, "checkout": 3}, "c2": {"search": 2, "checkout": 6}})
    reducer = SessionReducer(components=1).fit(counts)
    np.testing.assert_allclose(reducer.transform(counts).column("session_emb_0").to_numpy(),
                               [-0.5, -0.5, 0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(reducer.components_[0, [0, 5]], [-0.5, np.sqrt(3) / 2], atol=1e-12)
    np.testing.assert_allclose(reducer.explained_variance_ratio_, [1.0], atol=1e-12)


def test_each_component_has_its_largest_loading_positive():
    counts, _ = _clustered_users()
    loadings = SessionReducer(components=4, seed=3).fit(counts).components_
    strongest = loadings[np.arange(4), np.abs(loadings).argmax(axis=1)]
    assert np.all(strongest > 0)


def test_from_json_rejects_text_that_is_not_json():
    with pytest.raises(ValueError, match="session reducer JSON is malformed"):
        SessionReducer.from_json("{not json")


def test_from_json_rejects_components_of_the_wrong_shape():
    counts, _ = _clustered_users()
    state = json.loads(SessionReducer(components=2).fit(counts).to_json())
    state["components"][1] = state["components"][1][:-1]
    with pytest.raises(ValueError, match=r"'components' must have shape \(2, 8\)"):
        SessionReducer.from_json(json.dumps(state))


def test_from_json_rejects_a_different_page_order():
    counts, _ = _clustered_users()
    state = json.loads(SessionReducer(components=2).fit(counts).to_json())
    state["pages"] = list(reversed(state["pages"]))
    with pytest.raises(ValueError, match="fitted on pages"):
        SessionReducer.from_json(json.dumps(state))


def test_a_user_without_clicks_is_refused_by_name():
    counts, _ = _clustered_users()
    reducer = SessionReducer(components=2).fit(counts)
    with pytest.raises(ValueError, match="1 user\\(s\\) have no clicks.*'ghost'"):
        reducer.transform(_counts({"ghost": {}, "real": {"search": 2}}))


def test_uncombined_partial_counts_are_refused():
    counts, _ = _clustered_users()
    with pytest.raises(ValueError, match="several rows for one user_id"):
        SessionReducer(components=2).fit(pa.concat_tables([counts, counts]))
