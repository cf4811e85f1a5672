"""Feature code of the second test pipeline (machine telemetry): proves a new pipeline needs no platform change."""

import polars as pl

from mlops_assets.core.feature_contract import FeatureReference

CATEGORICAL_FEATURES = ["machine_code"]


def history_stats(history: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {"machine_stats": history.group_by("machine_id").agg(pl.col("temperature").mean().alias("machine_mean_temperature"))}


def build_features(records: pl.DataFrame, reference: FeatureReference) -> pl.DataFrame:
    """Row-wise: machine_mean_temperature is joined in by the declared lookup on machine_stats."""
    machines = reference.categories["machine_id"]
    return records.select(
        pl.col("machine_id").replace_strict(machines, list(range(len(machines))), default=None).alias("machine_code"),
        pl.col("temperature"),
        pl.col("vibration"),
        (pl.col("temperature") - pl.col("machine_mean_temperature").cast(pl.Float64)).alias("temperature_vs_usual"),
        pl.col("reading_time").dt.hour().alias("hour"),
    )
