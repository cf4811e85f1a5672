"""Reading a pipeline's Delta tables the way every layer needs them: its clean rows (raw minus
quarantine), the reference tables, the feature reference as of a day (what training and serving
both join records against), drift reports and new prediction-log rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.feature_contract import (
    FeatureModule,
    FeatureReference,
    categories,
)
from mlops_assets.core.names import (
    DRIFT_METRICS,
    PARTITION_COLUMN,
    PREDICTION_LOG,
    QUARANTINE,
    RAW,
    SOURCE_ROW,
    VALID_ROW,
    reference_table,
)
from resources.delta_lake import DeltaLakeResource


def read_clean(delta: DeltaLakeResource, pipeline: str, partitions: Sequence[str]) -> pl.DataFrame | None:
    """Raw rows that passed validation, by the `_valid` flag their own commit wrote. Partitions
    written before raw carried the flag read as raw minus quarantine (per partition and source row)."""
    raw = delta.read_partitions(pipeline, RAW, partitions)
    if raw is None:
        return None
    if VALID_ROW in raw.columns and raw.get_column(VALID_ROW).null_count() == 0:
        return raw.filter(pl.col(VALID_ROW)).drop(VALID_ROW)
    if VALID_ROW not in raw.columns:
        raw = raw.with_columns(pl.lit(None, pl.Boolean).alias(VALID_ROW))
    quarantined = delta.read_partitions(pipeline, QUARANTINE, partitions)
    keys = [PARTITION_COLUMN, SOURCE_ROW]
    if quarantined is None or quarantined.height == 0:
        return raw.filter(pl.col(VALID_ROW).fill_null(True)).drop(VALID_ROW)
    marked = quarantined.select(keys).unique().with_columns(pl.lit(False).alias("_in_quarantine"))
    return (
        raw.join(marked, on=keys, how="left", maintain_order="left")
        .filter(pl.coalesce(VALID_ROW, "_in_quarantine", pl.lit(True)))
        .drop(VALID_ROW, "_in_quarantine")
    )


def days_before(partition: str, days: int) -> list[str]:
    """The `days` partition keys strictly before `partition` (oldest first)."""
    d = date.fromisoformat(partition)
    return [(d - timedelta(days=i)).isoformat() for i in range(days, 0, -1)]


def read_reference(delta: DeltaLakeResource, pipeline: str, names: Sequence[str]) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
    """The current reference tables and their Delta versions (for lineage)."""
    tables: dict[str, pl.DataFrame] = {}
    versions: dict[str, int] = {}
    for name in names:
        version = delta.version(pipeline, reference_table(name))
        if version is None:
            raise LookupError(f"reference table '{name}' of pipeline {pipeline} has not been materialized yet")
        tables[name] = delta.scan(pipeline, reference_table(name), version).collect()  # type: ignore[union-attr]
        versions[name] = version
    return tables, versions


DRIFT_SCHEMA = {
    "report_id": pl.String,
    "computed_at": pl.Datetime("us", "UTC"),
    "source": pl.String,  # features | serving
    "window": pl.String,  # a partition, or a prediction-log version range
    "model_version": pl.Int64,
    "column": pl.String,
    "method": pl.String,
    "score": pl.Float64,
    "threshold": pl.Float64,
    "drifted": pl.Boolean,
    "drift_share": pl.Float64,
    "alert": pl.Boolean,
    "alert_reason": pl.String,
    "rows": pl.Int64,
    "dagster_run_id": pl.String,
    "html_report": pl.String,
}


def drift_reports(delta: DeltaLakeResource, pipeline: str) -> pl.DataFrame:
    """One row per drift report (not per column), oldest first."""
    lf = delta.scan(pipeline, DRIFT_METRICS)
    if lf is None:
        return pl.DataFrame(
            schema={
                k: DRIFT_SCHEMA[k]
                for k in ("report_id", "computed_at", "source", "window", "model_version", "drift_share", "alert", "alert_reason", "rows")
            }
        )
    return (
        lf.group_by("report_id")
        .agg(pl.col("computed_at", "source", "window", "model_version", "drift_share", "alert", "alert_reason", "rows").first())
        .sort("computed_at")
        .collect()
    )


def reference_as_of(
    delta: DeltaLakeResource, decl: PipelineDeclaration, module: FeatureModule, partition: str
) -> tuple[FeatureReference, dict]:
    """What build_features may look up for records of `partition`: reference tables and
    statistics over clean rows of the days strictly before it. Training and serving both use it."""
    history = read_clean(delta, decl.name, days_before(partition, decl.features.history_days))
    declared = list(decl.table_schema.columns)
    tables, versions = read_reference(delta, decl.name, list(decl.landing.reference_tables))
    if history is not None and history.height:
        days = history.partition_by(PARTITION_COLUMN, as_dict=True)
        used = sorted(key for (key,) in days)
        # one partial per day, combined (the module's history_partial/combine_history, when it has them)
        tables.update(module.history_from_days([days[(key,)].select(declared) for key in used]))
    else:
        empty = pl.DataFrame(schema={n: c.dtype for n, c in decl.table_schema.columns.items()})
        tables.update(module.history_from_days([empty]))
        used = []
    reference = FeatureReference(tables=tables, categories=categories(decl))
    return reference, {"history_partitions": used, "reference_versions": versions, "raw_version": delta.version(decl.name, RAW)}


def new_log_rows(delta: DeltaLakeResource, decl: PipelineDeclaration, after_us: int) -> pl.LazyFrame | None:
    log = delta.scan(decl.name, PREDICTION_LOG)
    if log is None:
        return None
    return log.filter(pl.col("served") & (pl.col("logged_at").dt.epoch("us") > after_us))
