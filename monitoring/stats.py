"""Mergeable distribution summaries and the drift measures computed from them.

A reference summary describes one feature on a model's training split: for a
number, a fine grid of `GRID_BINS` equal-width bins between the split's minimum
and maximum with its counts; for a category, the count of each value. A current
summary counts the logged values of that feature on the same grid (values below
or above the reference range counted apart, with their distance beyond it) or per
value. Current summaries of two blocks merge by adding their counts, so the
statistics of any amount of logs come from per-block summaries without the logs
ever meeting in one process.

From a reference and a current summary come the measures Evidently and NannyML
default to:

- **population stability index** (PSI) for every feature, over ten bins of equal
  reference mass (numbers) or over the categories, proportions clipped at 1e-4;
  it takes part in the verdict only with enough rows for its sampling noise
  (about (bins - 1)(1/n + 1/m) between two samples of one distribution) to stay
  under a quarter of its threshold;
- numbers: the **Kolmogorov–Smirnov** statistic (the largest gap between the two
  cumulative distributions, taken at the grid's edges: a lower bound of the
  exact statistic, within one fine bin of it) with its asymptotic p-value, and the
  **Wasserstein** distance (the area between the cumulative distributions, plus
  the exact distance of values beyond the reference range), also divided by the
  reference's standard deviation;
- categories: the **Jensen–Shannon** distance (base 2, from 0 to 1) and
  **chi-squared** against the reference proportions, with its p-value;
- the share of nulls on each side, and the share of values out of the reference
  range or categories never seen in training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

import numpy as np

GRID_BINS = 500
"""Equal-width bins of a numeric reference: fine enough that ten equal-mass bins and the cumulative distribution
come out of it for skewed features too."""
PSI_BINS = 10
MAX_CATEGORIES = 1000
"""Distinct values counted by name in one summary; more are folded into OTHER (a category's drift still shows)."""
OTHER = "\u0000other"
PROPORTION_FLOOR = 1e-4


class DriftSettingsError(ValueError):
    pass


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature (or the predictions) counts as drifted, and what is too little data to say.

    The defaults are Evidently's: a statistical test while either sample is small (KS or chi-squared, p-value
    below `p_value`), a distance once both are large (`wasserstein` of the reference's standard deviation, or
    `jensen_shannon`); and PSI of `psi` or more (the usual "significant shift" line; 0.1 to 0.2 is "moderate").
    """

    psi: float = 0.2
    p_value: float = 0.05
    wasserstein: float = 0.1
    jensen_shannon: float = 0.1
    large_reference: int = 1000
    """Samples of more rows than this (both of them) are judged by distance, not by test: tests flag tiny shifts
    in big data, distances are noisy on small samples."""
    min_rows: int = 30
    """Fewer current values than this: no drift verdict (reported as insufficient)."""
    null_rate_increase: float = 0.05
    out_of_range: float = 0.05
    performance_drop: float = 0.05
    """A live metric worse than the version's test metric by more than this share of it is a degradation."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise DriftSettingsError(f"drift threshold {item.name} must be a non-negative number, got {value!r}")
        if not 0 < self.p_value < 1:
            raise DriftSettingsError(f"drift threshold p_value must be between 0 and 1, got {self.p_value!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "DriftThresholds":
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise DriftSettingsError(f"unknown drift threshold(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values or {}))

    def to_dict(self) -> dict:
        return asdict(self)


# -- references (the training split) and current summaries


def numeric_reference(name: str, lo: float, hi: float, counts: Iterable[int], *, n: int, nulls: int,
                      mean: float, std: float) -> dict:
    counts = [int(c) for c in counts]
    return {"name": name, "kind": "numeric", "n": int(n), "nulls": int(nulls), "lo": float(lo), "hi": float(hi),
            "counts": counts, "mean": float(mean), "std": float(std)}


def grid_edges(reference: Mapping[str, Any]) -> np.ndarray:
    lo, hi = reference["lo"], reference["hi"]
    if hi <= lo:  # a constant feature: the grid spans its value +- 0.5
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, len(reference["counts"]) + 1)


def numeric_counts(values: np.ndarray, edges: np.ndarray) -> dict:
    """One block's values of a numeric feature counted on a reference grid (non-finite values count as nulls)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    below, above = finite[finite < edges[0]], finite[finite > edges[-1]]
    inside = finite[(finite >= edges[0]) & (finite <= edges[-1])]
    counts = np.histogram(inside, bins=edges)[0] if len(inside) else np.zeros(len(edges) - 1, dtype=np.int64)
    return {"kind": "numeric", "n": int(len(finite)), "nulls": int(len(values) - len(finite)),
            "counts": counts.astype(np.int64).tolist(), "below": int(len(below)), "above": int(len(above)),
            "below_distance": float((edges[0] - below).sum()), "above_distance": float((above - edges[-1]).sum()),
            "sum": float(finite.sum())}


def categorical_counts(values: Iterable[Any]) -> dict:
    """One block's values of a categorical feature counted per value (None counts as null)."""
    counts: dict[str, int] = {}
    nulls = 0
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            nulls += 1
            continue
        key = str(value)
        counts[key] = counts.get(key, 0) + 1
    return _capped({"kind": "categorical", "n": sum(counts.values()), "nulls": nulls, "counts": counts})


def _capped(summary: dict) -> dict:
    counts = summary["counts"]
    if len(counts) <= MAX_CATEGORIES:
        return summary
    kept = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_CATEGORIES - 1])
    kept[OTHER] = sum(counts.values()) - sum(kept.values())
    return {**summary, "counts": kept}


def merge(a: dict | None, b: dict | None) -> dict | None:
    """Two summaries of one feature as one (either may be None)."""
    if a is None or b is None:
        return a if b is None else b
    if a["kind"] != b["kind"]:
        raise ValueError(f"cannot merge a {a['kind']} summary with a {b['kind']} one")
    if a["kind"] == "numeric":
        if len(a["counts"]) != len(b["counts"]):
            raise ValueError("numeric summaries on different grids cannot be merged")
        merged = {key: a[key] + b[key] for key in ("n", "nulls", "below", "above", "below_distance",
                                                   "above_distance", "sum")}
        return {"kind": "numeric", **merged,
                "counts": (np.asarray(a["counts"], dtype=np.int64) + np.asarray(b["counts"], dtype=np.int64)).tolist()}
    counts = dict(a["counts"])
    for key, count in b["counts"].items():
        counts[key] = counts.get(key, 0) + count
    return _capped({"kind": "categorical", "n": a["n"] + b["n"], "nulls": a["nulls"] + b["nulls"], "counts": counts})


# -- the measures


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins."""
    r = np.clip(np.asarray(reference, dtype=np.float64) / max(np.sum(reference), 1), PROPORTION_FLOOR, None)
    c = np.clip(np.asarray(current, dtype=np.float64) / max(np.sum(current), 1), PROPORTION_FLOOR, None)
    return float(np.sum((c - r) * np.log(c / r)))


def equal_mass_groups(counts: np.ndarray, groups: int = PSI_BINS) -> np.ndarray:
    """For each fine bin, the index of the group it falls in: about `groups` groups of equal reference mass."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return np.zeros(len(counts), dtype=np.int64)
    before = (np.cumsum(counts) - counts) / total  # mass strictly before each bin
    return np.minimum((before * groups).astype(np.int64), groups - 1)


def _ks_p_value(statistic: float, n: int, m: int) -> float:
    from scipy.stats import kstwobign

    if n == 0 or m == 0:
        return 1.0
    return float(kstwobign.sf(statistic * math.sqrt(n * m / (n + m))))


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def numeric_drift(reference: Mapping[str, Any], current: Mapping[str, Any], thresholds: DriftThresholds,
                  family: int = 1) -> dict:
    edges = grid_edges(reference)
    ref = np.asarray(reference["counts"], dtype=np.float64)
    cur = np.asarray(current["counts"], dtype=np.float64)
    n_ref, n_cur = int(ref.sum()), int(current["n"])
    result = _common(reference, current, thresholds, out_of_range=current["below"] + current["above"])
    if n_cur == 0 or n_ref == 0:
        return result
    groups = equal_mass_groups(ref)
    ref_groups = np.bincount(groups, weights=ref, minlength=PSI_BINS)
    cur_groups = np.bincount(groups, weights=cur, minlength=PSI_BINS)
    cur_groups[0] += current["below"]
    cur_groups[groups[-1]] += current["above"]
    # Cumulative distributions at every grid edge (values below the range are left of the first edge).
    ref_cdf = np.concatenate([[0.0], np.cumsum(ref)]) / n_ref
    cur_cdf = (current["below"] + np.concatenate([[0.0], np.cumsum(cur)])) / n_cur
    gaps = np.abs(ref_cdf - cur_cdf)
    ks = float(gaps.max())
    wasserstein = float(np.sum(gaps[1:] * np.diff(edges))) if len(edges) > 2 or reference["hi"] > reference["lo"] \
        else 0.0
    wasserstein += (current["below_distance"] + current["above_distance"]) / n_cur
    scale = reference["std"] if reference["std"] > 0 else 1.0
    result.update(psi=psi(ref_groups, cur_groups), psi_bins=PSI_BINS, reference_rows=n_ref, ks=ks,
                  ks_p_value=_ks_p_value(ks, n_ref, n_cur),
                  wasserstein=wasserstein, wasserstein_normed=wasserstein / scale,
                  mean_reference=reference["mean"], mean_current=current["sum"] / n_cur)
    result["test"] = _test(min(n_ref, n_cur), thresholds, family,
                           distance=("wasserstein_normed", result["wasserstein_normed"], thresholds.wasserstein),
                           test=("ks", ks, result["ks_p_value"]))
    return _verdict(result, current, thresholds)


def categorical_drift(reference: Mapping[str, Any], current: Mapping[str, Any], thresholds: DriftThresholds,
                      family: int = 1) -> dict:
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2

    seen = reference["counts"]
    unseen = sum(count for key, count in current["counts"].items() if key not in seen)
    result = _common(reference, current, thresholds, out_of_range=unseen)
    n_ref, n_cur = sum(seen.values()), current["n"]
    if n_cur == 0 or n_ref == 0:
        return result
    categories = sorted(set(seen) | set(current["counts"]))
    ref = np.array([seen.get(c, 0) for c in categories], dtype=np.float64)
    cur = np.array([current["counts"].get(c, 0) for c in categories], dtype=np.float64)
    ref_share = np.clip(ref / n_ref, PROPORTION_FLOOR, None)
    ref_share /= ref_share.sum()
    expected = ref_share * n_cur
    statistic = float(np.sum((cur - expected) ** 2 / expected))
    dof = max(len(categories) - 1, 1)
    result.update(psi=psi(ref, cur), psi_bins=len(categories), reference_rows=int(n_ref),
                  jensen_shannon=float(jensenshannon(ref / n_ref, cur / n_cur, base=2)), chi2=statistic,
                  chi2_p_value=float(chi2.sf(statistic, dof)),
                  shares_reference={c: float(v / n_ref) for c, v in zip(categories, ref)},
                  shares_current={c: float(v / n_cur) for c, v in zip(categories, cur)})
    result["test"] = _test(min(n_ref, n_cur), thresholds, family,
                           distance=("jensen_shannon", result["jensen_shannon"], thresholds.jensen_shannon),
                           test=("chi2", statistic, result["chi2_p_value"]))
    return _verdict(result, current, thresholds)


def _test(smaller_sample: int, thresholds: DriftThresholds, family: int, *, distance: tuple[str, float, float],
          test: tuple[str, float, float]) -> dict:
    """The verdict's method: the distance (name, value, threshold) once both samples are large, else the test
    (name, statistic, p-value) with its threshold divided over the `family` of features tested together."""
    if smaller_sample > thresholds.large_reference:
        name, value, limit = distance
        return {"method": name, "value": value, "drifted": value >= limit}
    name, statistic, p_value = test
    return {"method": name, "value": statistic, "p_value": p_value, "drifted": p_value < thresholds.p_value / family}


def _common(reference: Mapping[str, Any], current: Mapping[str, Any], thresholds: DriftThresholds,
            out_of_range: int) -> dict:
    null_ref = _rate(reference["nulls"], reference["n"] + reference["nulls"])
    null_cur = _rate(current["nulls"], current["n"] + current["nulls"])
    alerts = []
    if null_cur is not None and null_cur - (null_ref or 0.0) > thresholds.null_rate_increase:
        alerts.append(f"null rate {null_cur:.1%} against {null_ref or 0:.1%} in training")
    outside = _rate(out_of_range, current["n"])
    if outside is not None and outside > thresholds.out_of_range:
        alerts.append(f"{outside:.1%} of values "
                      f"{'outside the training range' if reference['kind'] == 'numeric' else 'never seen in training'}")
    return {"kind": reference["kind"], "rows": int(current["n"]), "null_rate_reference": null_ref,
            "null_rate": null_cur, "out_of_range": outside, "drifted": None, "alerts": alerts,
            "reasons": ["insufficient data"] if current["n"] < thresholds.min_rows else []}


def _verdict(result: dict, current: Mapping[str, Any], thresholds: DriftThresholds) -> dict:
    if current["n"] < thresholds.min_rows:
        return result
    # PSI has a floor of about (bins - 1)(1/n_ref + 1/n_cur) on two samples of one distribution (0.3 for 30
    # rows in ten bins): it only counts once that floor is under a quarter of the threshold.
    floor = (result["psi_bins"] - 1) * (1 / max(result["reference_rows"], 1) + 1 / current["n"])
    result["psi_judged"] = floor <= thresholds.psi / 4
    reasons = []
    if result["test"]["drifted"]:
        test = result["test"]
        shown = f"p-value {test['p_value']:.3g}" if "p_value" in test else f"{test['value']:.3f}"
        reasons.append(f"{test['method']} {shown}")
    if result["psi_judged"] and result["psi"] >= thresholds.psi:
        reasons.append(f"PSI {result['psi']:.3f}")
    result.update(drifted=bool(reasons), reasons=reasons)
    return result


def drift(reference: Mapping[str, Any], current: Mapping[str, Any] | None, thresholds: DriftThresholds,
          family: int = 1) -> dict:
    """The drift measures of one feature; `current` None means no logged value in the period. `family` is the number
    of features tested together: a test's p-value must be below `p_value / family` (Bonferroni), so that a model
    of many inputs does not see drift in one of them by chance in every other window."""
    if current is None:
        current = numeric_counts(np.array([]), grid_edges(reference)) if reference["kind"] == "numeric" \
            else categorical_counts([])
    measure = numeric_drift if reference["kind"] == "numeric" else categorical_drift
    return measure(reference, current, thresholds, family)
