"""Flight features: one pure function for training and serving.

Predicts arrival delay once a flight has left the gate: departure delay,
weather at the origin in the scheduled departure hour, calendar, plane age,
encoded carrier/origin/destination and per-route delay statistics from earlier
days. Arrival time and air time are never used: they are only known after landing.
"""

from __future__ import annotations

import functools

import polars as pl

from mlops_assets.core.feature_contract import FeatureReference

CATEGORICAL_FEATURES = ["carrier_code", "origin_code", "dest_code"]
# what a prediction request carries: known once the flight has left the gate
INPUT_COLUMNS = ["year", "month", "day", "sched_dep_time", "dep_delay", "carrier", "tailnum", "origin", "dest", "distance", "time_hour"]
WEATHER_COLUMNS = ["temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"]


def history_partial(day: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """One day's share of the history statistics, computed once per day: how many completed
    flights of each route arrived with each delay, and delay sums per carrier."""
    flown = day.filter(pl.col("arr_delay").is_not_null())
    return {
        "route_delays": flown.group_by("origin", "dest", "arr_delay").agg(pl.len().cast(pl.Int64).alias("n")),
        "carrier_delays": flown.group_by("carrier").agg(pl.col("arr_delay").sum().alias("sum"), pl.len().cast(pl.Int64).alias("n")),
    }


def combine_history(partials: list[dict[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    """Delay statistics per route and per carrier over the days whose partials are given.

    Exact, not approximate: the mean is the sum over the delay counts, and the 75th
    percentile is polars' 'nearest' quantile read off the combined counts (the value at
    sorted position round_half_away((n - 1) * 0.75))."""
    delay, n = pl.col("arr_delay"), pl.col("n")
    flights = n.sum()
    p75_position = ((flights - 1).cast(pl.Float64) * 0.75 + 0.5).floor()
    # a delay value may repeat across days' partials: cumulative counts over the values in order still
    # cross the position at the right value
    route = (
        pl.concat([p["route_delays"] for p in partials])
        .group_by("origin", "dest")
        .agg(
            ((delay * n).sum() / flights).alias("route_mean_arr_delay"),
            delay.sort().filter(n.sort_by(delay).cum_sum() > p75_position).first().alias("route_p75_arr_delay"),
            flights.cast(pl.Int32).alias("route_flights"),
        )
    )
    carrier = (
        pl.concat([p["carrier_delays"] for p in partials])
        .group_by("carrier")
        .agg((pl.col("sum").sum() / pl.col("n").sum()).alias("carrier_mean_arr_delay"))
    )
    return {"route_stats": route, "carrier_stats": carrier}


def history_stats(history: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Delay statistics per route and per carrier over earlier days' completed flights."""
    return combine_history([history_partial(history)])


def _code(column: str, values: list) -> pl.Expr:
    """Stable integer code from the declared categories (their position); unknown values become null."""
    return _code_expr(column, tuple(values))


@functools.lru_cache(maxsize=64)
def _code_expr(column: str, values: tuple) -> pl.Expr:
    # built once per category list: an Enum of a hundred categories costs more to build than a row to encode
    if values and all(isinstance(v, str) for v in values) and len(set(values)) == len(values):
        # an Enum's physical value is the category's position: one lookup, no per-call mapping table
        return pl.col(column).cast(pl.String).cast(pl.Enum(values), strict=False).to_physical().cast(pl.Int16)
    return pl.col(column).replace_strict(list(values), list(range(len(values))), default=None, return_dtype=pl.Int16)


def feature_expressions(reference: FeatureReference) -> list[pl.Expr]:
    """Row-wise only: weather, plane and delay statistics arrive joined in by the declared lookups.
    The platform evaluates these on the records (a serving replica builds them once per version)."""
    cats = reference.categories
    return [
        pl.col("month").cast(pl.Int8).alias("dep_month"),
        pl.date(pl.col("year"), pl.col("month"), pl.col("day")).dt.weekday().cast(pl.Int8).alias("day_of_week"),
        (pl.col("sched_dep_time") // 100).cast(pl.Int8).alias("dep_hour"),
        pl.col("dep_delay").cast(pl.Float64),
        pl.col("distance").cast(pl.Float64),
        _code("carrier", cats["carrier"]).alias("carrier_code"),
        _code("origin", cats["origin"]).alias("origin_code"),
        _code("dest", cats["dest"]).alias("dest_code"),
        *[pl.col(c).cast(pl.Float64) for c in WEATHER_COLUMNS],
        (pl.col("year").cast(pl.Float64) - pl.col("plane_year").cast(pl.Float64)).alias("plane_age"),
        pl.col("seats").cast(pl.Float64),
        pl.col("route_mean_arr_delay").cast(pl.Float64),
        pl.col("route_p75_arr_delay").cast(pl.Float64),
        pl.col("route_flights").fill_null(0).cast(pl.Int32),
        pl.col("carrier_mean_arr_delay").cast(pl.Float64),
    ]
