"""Flight features: one pure function for training and serving.

Predicts arrival delay once a flight has left the gate: departure delay,
weather at the origin in the scheduled departure hour, calendar, plane age,
encoded carrier/origin/destination and per-route delay statistics from earlier
days. Arrival time and air time are never used: they are only known after landing.
"""

from __future__ import annotations

import polars as pl

from mlops_assets.feature_contract import FeatureReference

CATEGORICAL_FEATURES = ["carrier_code", "origin_code", "dest_code"]
# what a prediction request carries: known once the flight has left the gate
INPUT_COLUMNS = ["year", "month", "day", "sched_dep_time", "dep_delay", "carrier", "tailnum", "origin", "dest", "distance", "time_hour"]
WEATHER_COLUMNS = ["temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
UTC_US = pl.Datetime("us", "UTC")


def history_stats(history: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Delay statistics per route and per carrier over earlier days' completed flights."""
    flown = history.filter(pl.col("arr_delay").is_not_null())
    route = flown.group_by("origin", "dest").agg(
        pl.col("arr_delay").mean().alias("route_mean_arr_delay"),
        pl.col("arr_delay").quantile(0.75).alias("route_p75_arr_delay"),
        pl.len().cast(pl.Int32).alias("route_flights"),
    )
    carrier = flown.group_by("carrier").agg(pl.col("arr_delay").mean().alias("carrier_mean_arr_delay"))
    return {"route_stats": route, "carrier_stats": carrier}


def _code(column: str, values: list) -> pl.Expr:
    """Stable integer code from the declared categories; unknown values become null."""
    return pl.col(column).replace_strict(values, list(range(len(values))), default=None, return_dtype=pl.Int16)


def build_features(records: pl.DataFrame, reference: FeatureReference) -> pl.DataFrame:
    cats = reference.categories
    tables = reference.tables
    frame = records.with_columns(
        pl.col("time_hour").cast(UTC_US),
        pl.date(pl.col("year"), pl.col("month"), pl.col("day")).alias("_date"),
    )
    if "weather" in tables:
        weather = tables["weather"].select(
            "origin", pl.col("time_hour").cast(UTC_US), *[pl.col(c).cast(pl.Float64) for c in WEATHER_COLUMNS]
        ).unique(subset=["origin", "time_hour"], keep="first")
        frame = frame.join(weather, on=["origin", "time_hour"], how="left", maintain_order="left")
    else:
        frame = frame.with_columns([pl.lit(None, pl.Float64).alias(c) for c in WEATHER_COLUMNS])
    if "planes" in tables:
        planes = tables["planes"].select(
            "tailnum", pl.col("year").cast(pl.Float64).alias("_plane_year"), pl.col("seats").cast(pl.Float64)
        ).unique(subset=["tailnum"], keep="first")
        frame = frame.join(planes, on="tailnum", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(pl.lit(None, pl.Float64).alias("_plane_year"), pl.lit(None, pl.Float64).alias("seats"))
    route = tables.get("route_stats")
    if route is not None and route.height:
        frame = frame.join(route, on=["origin", "dest"], how="left", maintain_order="left")
    else:
        frame = frame.with_columns(
            pl.lit(None, pl.Float64).alias("route_mean_arr_delay"),
            pl.lit(None, pl.Float64).alias("route_p75_arr_delay"),
            pl.lit(None, pl.Int32).alias("route_flights"),
        )
    carrier = tables.get("carrier_stats")
    if carrier is not None and carrier.height:
        frame = frame.join(carrier, on="carrier", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(pl.lit(None, pl.Float64).alias("carrier_mean_arr_delay"))
    return frame.select(
        pl.col("month").cast(pl.Int8).alias("dep_month"),
        pl.col("_date").dt.weekday().cast(pl.Int8).alias("day_of_week"),
        (pl.col("sched_dep_time") // 100).cast(pl.Int8).alias("dep_hour"),
        pl.col("dep_delay").cast(pl.Float64),
        pl.col("distance").cast(pl.Float64),
        _code("carrier", cats["carrier"]).alias("carrier_code"),
        _code("origin", cats["origin"]).alias("origin_code"),
        _code("dest", cats["dest"]).alias("dest_code"),
        *[pl.col(c) for c in WEATHER_COLUMNS],
        (pl.col("year").cast(pl.Float64) - pl.col("_plane_year")).alias("plane_age"),
        pl.col("seats"),
        pl.col("route_mean_arr_delay"),
        pl.col("route_p75_arr_delay"),
        pl.col("route_flights").fill_null(0).cast(pl.Int32),
        pl.col("carrier_mean_arr_delay"),
    )
