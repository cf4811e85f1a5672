"""The drift decision, fast at scale, agreeing with Evidently's DataDriftPreset.

Evidently needs pandas and is slow on large data (about 60 s for 1M rows x 10
columns, evidently#1526). We take the same decision from a stored *reference
profile* (quantiles, value counts and, for small references, the values) and
one pass over the current data:

- the same choice of test per column as Evidently's default
  (``_get_default_stattest``): reference above 1,000 rows -> normed Wasserstein
  distance for numerical columns with more than 5 distinct values, Jensen-Shannon
  distance otherwise (threshold 0.1); smaller references -> Kolmogorov-Smirnov,
  chi-square or a two-proportion z-test (p-value below 0.05 means drift);
- a column present in at least half the reference rows and in none of the current data (all
  null, NaN or infinite) counts as drifted (``all values missing``); Evidently would skip it;
- the Wasserstein distance is computed from quantile functions
  (W1 = integral of |Q_ref(u) - Q_cur(u)| du) on a fine grid, so the reference is
  a few thousand numbers, not the training data.

Evidently itself still renders the HTML report a person opens (drift_report.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl

Kind = Literal["numerical", "categorical"]
QUANTILE_GRID = 2000
SMALL_REFERENCE = 1000  # Evidently switches tests at this many reference rows
DISTANCE_THRESHOLD = 0.1
P_VALUE_THRESHOLD = 0.05
ALL_MISSING = "all values missing"  # the method of a column with no finite current value: its score is the share missing
MOSTLY_PRESENT = 0.5  # a column missing from at most this share of reference rows is drifted when it is missing entirely


@dataclass(frozen=True)
class ColumnProfile:
    name: str
    kind: Kind
    rows: int  # non-null reference values
    std: float = 0.0
    quantiles: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # categorical or few distinct values
    values: list[float] = field(default_factory=list)  # kept only for small references (KS test)
    distinct: int = 0
    missing: float = 0.0  # share of reference rows without a (finite) value


@dataclass(frozen=True)
class ReferenceProfile:
    columns: dict[str, ColumnProfile]

    def to_json(self) -> str:
        return json.dumps({n: c.__dict__ for n, c in self.columns.items()})

    @classmethod
    def from_json(cls, text: str) -> "ReferenceProfile":
        return cls({n: ColumnProfile(**c) for n, c in json.loads(text).items()})


def _grid() -> np.ndarray:
    return (np.arange(QUANTILE_GRID) + 0.5) / QUANTILE_GRID


def _quantiles(sorted_values: np.ndarray) -> np.ndarray:
    idx = np.minimum((_grid() * sorted_values.size).astype(np.int64), sorted_values.size - 1)
    return sorted_values[idx]


def _key_counts(series: pl.Series) -> dict[str, int]:
    vc = series.drop_nulls().cast(pl.String).value_counts()
    return {str(k): int(v) for k, v in vc.iter_rows()}


def _numeric(series: pl.Series) -> np.ndarray:
    values = series.cast(pl.Float64).drop_nulls().drop_nans().to_numpy()
    return values[np.isfinite(values)]


def profile(frame: pl.DataFrame, numerical: list[str], categorical: list[str]) -> ReferenceProfile:
    """Summarize the reference data once (at training time) for later drift decisions."""
    columns: dict[str, ColumnProfile] = {}
    for name in numerical:
        values = np.sort(_numeric(frame.get_column(name)))
        distinct = int(np.unique(values).size) if values.size else 0
        columns[name] = ColumnProfile(
            name=name,
            kind="numerical",
            rows=int(values.size),
            std=float(np.std(values)) if values.size else 0.0,
            quantiles=_quantiles(values).tolist() if values.size else [],
            counts=_key_counts(pl.Series(values)) if distinct <= 20 else {},
            values=values.tolist() if values.size <= SMALL_REFERENCE else [],
            distinct=distinct,
            missing=1 - values.size / frame.height if frame.height else 0.0,
        )
    for name in categorical:
        counts = _key_counts(frame.get_column(name))
        present = sum(counts.values())
        missing = 1 - present / frame.height if frame.height else 0.0
        columns[name] = ColumnProfile(name=name, kind="categorical", rows=present, counts=counts, distinct=len(counts), missing=missing)
    return ReferenceProfile(columns)


def _proportions(ref: dict[str, int], cur: dict[str, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    keys = sorted(set(ref) | set(cur))
    r, c = sum(ref.values()) or 1, sum(cur.values()) or 1
    return np.array([ref.get(k, 0) / r for k in keys]), np.array([cur.get(k, 0) / c for k in keys]), keys


def _js(ref: dict[str, int], cur: dict[str, int]) -> float:
    from scipy.spatial import (
        distance,  # scipy where drift is decided: every Dagster run imports this module
    )

    p, q, _ = _proportions(ref, cur)
    return float(distance.jensenshannon(p, q))


def _chi2(ref: dict[str, int], cur: dict[str, int]) -> float:
    from scipy import stats

    p, _, keys = _proportions(ref, cur)
    observed = np.array([cur.get(k, 0) for k in keys], dtype=float)
    expected = p * observed.sum()
    mask = expected > 0
    if (observed[~mask] > 0).any():  # a value never seen in the reference: certainly drift
        return 0.0
    return float(stats.chisquare(observed[mask], expected[mask]).pvalue)


def _z_test(ref: dict[str, int], cur: dict[str, int]) -> float:
    from scipy import stats

    keys = sorted(set(ref) | set(cur))
    if len(keys) < 2:
        return 1.0
    key = keys[0]
    n1, n2 = sum(ref.values()), sum(cur.values())
    p1, p2 = ref.get(key, 0) / n1, cur.get(key, 0) / n2
    pooled = (ref.get(key, 0) + cur.get(key, 0)) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if p1 == p2 else 0.0
    return float(2 * stats.norm.sf(abs(p1 - p2) / se))


def _column(ref: ColumnProfile, current: pl.Series) -> tuple[str, float, float, bool]:
    """(method, score, threshold, drifted) for one column, chosen as Evidently chooses."""
    from scipy import stats

    if ref.kind == "numerical":
        cur_values = _numeric(current)
        cur_counts = _key_counts(pl.Series(cur_values)) if ref.counts else {}
        distinct = len(set(ref.counts) | set(cur_counts)) if ref.counts else ref.distinct
        if ref.counts and distinct <= 5:
            cur_counts = cur_counts or _key_counts(pl.Series(cur_values))
            if ref.rows > SMALL_REFERENCE:
                score = _js(ref.counts, cur_counts)
                return "Jensen-Shannon distance", score, DISTANCE_THRESHOLD, score >= DISTANCE_THRESHOLD
            if distinct > 2:
                p = _chi2(ref.counts, cur_counts)
                return "chi-square p_value", p, P_VALUE_THRESHOLD, p < P_VALUE_THRESHOLD
            p = _z_test(ref.counts, cur_counts)
            return "Z-test p_value", p, P_VALUE_THRESHOLD, p < P_VALUE_THRESHOLD
        if ref.rows > SMALL_REFERENCE:
            cur_q = _quantiles(np.sort(cur_values))
            score = float(np.mean(np.abs(np.asarray(ref.quantiles) - cur_q))) / max(ref.std, 0.001)
            return "Wasserstein distance (normed)", score, DISTANCE_THRESHOLD, score >= DISTANCE_THRESHOLD
        p = float(stats.ks_2samp(np.asarray(ref.values), cur_values).pvalue)
        return "K-S p_value", p, P_VALUE_THRESHOLD, p < P_VALUE_THRESHOLD
    cur_counts = _key_counts(current)
    if ref.rows > SMALL_REFERENCE:
        score = _js(ref.counts, cur_counts)
        return "Jensen-Shannon distance", score, DISTANCE_THRESHOLD, score >= DISTANCE_THRESHOLD
    if len(set(ref.counts) | set(cur_counts)) > 2:
        p = _chi2(ref.counts, cur_counts)
        return "chi-square p_value", p, P_VALUE_THRESHOLD, p < P_VALUE_THRESHOLD
    p = _z_test(ref.counts, cur_counts)
    return "Z-test p_value", p, P_VALUE_THRESHOLD, p < P_VALUE_THRESHOLD


@dataclass(frozen=True)
class DriftResult:
    columns: pl.DataFrame  # column, method, score, threshold, drifted
    share: float
    share_threshold: float

    @property
    def dataset_drift(self) -> bool:
        return self.share >= self.share_threshold

    def drifted(self) -> list[str]:
        return self.columns.filter(pl.col("drifted")).get_column("column").to_list()


def detect(reference: ReferenceProfile, current: pl.DataFrame, share_threshold: float = 0.5) -> DriftResult:
    rows = []
    for name, ref in reference.columns.items():
        if name not in current.columns:
            raise KeyError(f"drift: column '{name}' of the reference is missing from the current data")
        values = current.get_column(name)
        if ref.rows == 0 or values.len() == 0:
            continue  # nothing to compare
        present = _numeric(values).size if ref.kind == "numerical" else values.drop_nulls().len()
        if present == 0:
            # Evidently skips an empty column; here a feature mostly present in the reference and lost entirely now (a
            # broken upstream join, say) is drift: the model sees nothing of it. One mostly missing already (wind gusts,
            # absent on whole days) is skipped, as Evidently does
            if ref.missing <= MOSTLY_PRESENT:
                rows.append((name, ALL_MISSING, 1.0, 1.0, True))
            continue
        method, score, threshold, drifted = _column(ref, values)
        rows.append((name, method, score, threshold, drifted))
    table = pl.DataFrame(
        rows,
        schema={"column": pl.String, "method": pl.String, "score": pl.Float64, "threshold": pl.Float64, "drifted": pl.Boolean},
        orient="row",
    )
    share = float(table.get_column("drifted").mean()) if table.height else 0.0
    return DriftResult(table, share, share_threshold)
