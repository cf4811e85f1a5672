"""History statistics from per-day partials equal the statistics over all the rows at once.

The flights feature module aggregates each day once (``history_partial``) and combines
the partials of the window (``combine_history``); the result must be what grouping
every row of the window gives: mean, polars' 'nearest' 75th percentile and count per
route, mean per carrier.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.core.feature_contract import load_feature_module
from mlops_assets.defs.flights import features
from mlops_assets.defs.flights.upstream import day_frame

SCHEMA = {"origin": pl.String, "dest": pl.String, "carrier": pl.String, "arr_delay": pl.Float64}


def direct(history: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The statistics grouped over every row (what the partials replace)."""
    flown = history.filter(pl.col("arr_delay").is_not_null())
    route = flown.group_by("origin", "dest").agg(
        pl.col("arr_delay").mean().alias("route_mean_arr_delay"),
        pl.col("arr_delay").quantile(0.75).alias("route_p75_arr_delay"),
        pl.len().cast(pl.Int32).alias("route_flights"),
    )
    carrier = flown.group_by("carrier").agg(pl.col("arr_delay").mean().alias("carrier_mean_arr_delay"))
    return {"route_stats": route, "carrier_stats": carrier}


def _same(a: dict, b: dict, exact: bool) -> None:
    assert a.keys() == b.keys()
    for name, key in [("route_stats", ["origin", "dest"]), ("carrier_stats", ["carrier"])]:
        assert_frame_equal(a[name].sort(key), b[name].sort(key), check_exact=exact, rel_tol=1e-12)


def _random_days(rng: np.random.Generator, fractional: bool) -> list[pl.DataFrame]:
    out = []
    for _ in range(int(rng.integers(1, 6))):
        n = int(rng.integers(0, 60))
        delay = rng.integers(-15, 15, n).astype(float) + (rng.random(n) if fractional else 0)
        out.append(
            pl.DataFrame(
                {
                    "origin": rng.choice(["EWR", "JFK"], n),
                    "dest": rng.choice(["ATL", "BOS", "ORD"], n),
                    "carrier": rng.choice(["AA", "DL"], n),
                    "arr_delay": pl.Series(np.where(rng.random(n) < 0.1, np.nan, delay)).fill_nan(None),
                },
                schema=SCHEMA,
            )
        )
    return out


@pytest.mark.parametrize("fractional", [False, True])
def test_combined_partials_equal_grouping_every_row(fractional):
    rng = np.random.default_rng(7 + fractional)
    for _ in range(150):  # many small windows: every route size and tie pattern for the percentile
        days = _random_days(rng, fractional)
        expected = direct(pl.concat(days))
        combined = features.combine_history([features.history_partial(d) for d in days])
        _same(expected, combined, exact=not fractional)  # minutes (integers) are summed exactly
        _same(expected, features.history_stats(pl.concat(days)), exact=not fractional)


def test_on_real_days_through_the_feature_module(flights_decl):
    module = load_feature_module(flights_decl)
    assert module.has_partials
    real = [day_frame(date(2013, 7, d)) for d in range(1, 8)]
    _same(direct(pl.concat(real)), module.history_from_days(real), exact=True)
    empty = real[0].clear()
    stats = module.history_from_days([empty])
    assert stats["route_stats"].height == 0 and stats["carrier_stats"].height == 0
    assert stats["route_stats"].schema == direct(empty)["route_stats"].schema


def test_category_codes_are_positions_and_unknowns_are_null():
    values = pl.DataFrame({"dest": ["BOS", None, "XXX", "ATL", "ORD", "BOS"]})
    allowed = ["ATL", "BOS", "ORD"]
    codes = values.select(features._code("dest", allowed)).to_series()
    mapped = values.select(pl.col("dest").replace_strict(allowed, [0, 1, 2], default=None, return_dtype=pl.Int16)).to_series()
    assert codes.dtype == pl.Int16 and codes.to_list() == [1, None, None, 0, 2, 1]
    assert codes.equals(mapped, check_names=False)
