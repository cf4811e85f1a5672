"""Feature code of the second test pipeline (machine telemetry): proves a new pipeline needs no platform change."""

import polars as pl

from mlops_assets.core.feature_contract import FeatureReference

CATEGORICAL_FEATURES = ["machine_code"]


def history_stats(history: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {"machine_stats": history.group_by("machine_id").agg(pl.col("temperature").mean().alias("machine_mean_temperature"))}


def build_features(records: pl.DataFrame, reference: FeatureReference) -> pl.DataFrame:
    machines = reference.categories["machine_id"]
    stats = reference.tables.get("machine_stats")
    frame = records
    if stats is not None and stats.height:
        frame = frame.join(stats, on="machine_id", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(pl.lit(None, pl.Float64).alias("machine_mean_temperature"))
    return frame.select(
        pl.col("machine_id").replace_strict(machines, list(range(len(machines))), default=None).alias("machine_code"),
        pl.col("temperature"),
        pl.col("vibration"),
        (pl.col("temperature") - pl.col("machine_mean_temperature")).alias("temperature_vs_usual"),
        pl.col("reading_time").dt.hour().alias("hour"),
    )
