"""Reading a pipeline's Delta tables the way every layer needs them: its clean rows (raw minus
quarantine), the reference tables, the feature reference as of a day (what training and serving
both join records against), drift reports and new prediction-log rows."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.feature_contract import (
    FeatureModule,
    FeatureReference,
    categories,
)
from mlops_assets.core.names import (
    APPENDED_AT,
    DRIFT_METRICS,
    PARTITION_COLUMN,
    PREDICTION_LOG,
    QUARANTINE,
    RAW,
    SOURCE_ROW,
    VALID_ROW,
    reference_table,
)
from mlops_assets.core.partitions import partitions_before
from resources.delta_lake import DeltaLakeResource


def read_clean(
    delta: DeltaLakeResource, pipeline: str, partitions: Sequence[str], raw_scan: pl.LazyFrame | None = None
) -> pl.DataFrame | None:
    """Raw rows that passed validation, by the `_valid` flag their own commit wrote. Partitions
    written before raw carried the flag read as raw minus quarantine (per partition and source row).
    `raw_scan`: the raw table to read, as a range opened it (`RangeReading`); by default its latest version."""
    scan = delta.scan(pipeline, RAW) if raw_scan is None else raw_scan
    if scan is None:
        return None
    raw = scan.filter(pl.col(PARTITION_COLUMN).is_in(list(partitions))).collect()
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
    return references_as_of(delta, decl, module, [partition])[partition]


@dataclass
class RangeReading:
    """What the calls for the chunks of one range share: each day's history partial (computed once) and the
    reference tables with their versions, read once (every day of a range is built against the same
    versions; reading them again per chunk opened five Delta logs each time)."""

    partials: dict[str, dict[str, pl.DataFrame]] = field(default_factory=dict)
    tables: dict[str, pl.DataFrame] | None = None
    versions: dict[str, int] = field(default_factory=dict)
    raw_version: int | None = None
    # the raw table opened once, at `raw_version`: every chunk reads the version the lineage records (another
    # run's commit between two chunks is not mixed in), and its log is not read again per chunk
    raw_scan: pl.LazyFrame | None = None

    def open(self, delta: DeltaLakeResource, decl: PipelineDeclaration) -> "RangeReading":
        """Read the reference tables and open raw, once for the range."""
        if self.tables is None:
            self.tables, self.versions = read_reference(delta, decl.name, list(decl.landing.reference_tables))
            self.raw_version = delta.version(decl.name, RAW)
            self.raw_scan = None if self.raw_version is None else delta.scan(decl.name, RAW, self.raw_version)
        return self


def references_as_of(
    delta: DeltaLakeResource,
    decl: PipelineDeclaration,
    module: FeatureModule,
    partitions: Sequence[str],
    clean: pl.DataFrame | None = None,
    reading: RangeReading | None = None,
) -> dict[str, tuple[FeatureReference, dict]]:
    """`reference_as_of` for each of several partitions (a backfill range): the clean rows are read once and
    each day's share of the history statistics is computed once, then combined per partition over the
    `history_days` before it (the module's history_partial/combine_history, when it has them). `clean`: the
    clean rows of the range already read (by partition column); only the days before it are read. `reading`:
    what an earlier call for the same range read (a range built in chunks), extended by this one."""
    window = decl.features.history_days
    needed = sorted({d for p in partitions for d in partitions_before(decl, p, window)})
    declared = list(decl.table_schema.columns)
    reading = (RangeReading() if reading is None else reading).open(delta, decl)
    tables, versions, raw_version, partials = reading.tables, reading.versions, reading.raw_version, reading.partials
    assert tables is not None  # opened above
    missing = [d for d in needed if d not in partials]
    partials.update(
        {key: module.history_partial(day.select(declared)) for key, day in _clean_days(delta, decl.name, missing, clean, reading.raw_scan)}
    )
    references = {}
    for partition in partitions:
        used = [d for d in partitions_before(decl, partition, window) if d in partials]
        if used:
            stats = module.combine_history([partials[d] for d in used])
        else:
            stats = module.history_from_days([pl.DataFrame(schema={n: c.dtype for n, c in decl.table_schema.columns.items()})])
        reference = FeatureReference(tables={**tables, **stats}, categories=categories(decl))
        references[partition] = (reference, {"history_partitions": used, "reference_versions": versions, "raw_version": raw_version})
    return references


def _clean_days(
    delta: DeltaLakeResource, pipeline: str, partitions: list[str], clean: pl.DataFrame | None, raw_scan: pl.LazyFrame | None
) -> Iterator[tuple[str, pl.DataFrame]]:
    """The clean rows of each of `partitions` that has any: from `clean` where it holds them, else read."""
    have = set() if clean is None else set(clean.get_column(PARTITION_COLUMN).unique().to_list())
    wanted = set(partitions)
    read = None if raw_scan is None else read_clean(delta, pipeline, [p for p in partitions if p not in have], raw_scan)
    for source in (read, clean):
        if source is not None and source.height:
            for (key,), day in source.partition_by(PARTITION_COLUMN, as_dict=True).items():
                if key in wanted:
                    yield key, day


def quarantined_share(delta: DeltaLakeResource, pipeline: str, partitions: pl.Expr) -> pl.DataFrame:
    """Per partition matching `partitions` (an expression over the partition column): rows, quarantined
    rows and their share, from raw's `_valid` flags (the quarantine table for partitions written before them)."""
    raw_lf = delta.scan(pipeline, RAW)
    if raw_lf is None:
        return pl.DataFrame(schema={PARTITION_COLUMN: pl.String, "rows": pl.UInt32, "quarantined": pl.UInt32, "failure_rate": pl.Float64})
    if VALID_ROW not in raw_lf.collect_schema():
        raw_lf = raw_lf.with_columns(pl.lit(None, pl.Boolean).alias(VALID_ROW))
    raw = (
        raw_lf.filter(partitions)
        .group_by(PARTITION_COLUMN)
        .agg(pl.len().alias("rows"), pl.col(VALID_ROW).not_().sum().alias("flagged"), pl.col(VALID_ROW).null_count().alias("unflagged"))
        .collect()
    )
    q_lf = delta.scan(pipeline, QUARANTINE)
    in_quarantine = (
        q_lf.filter(partitions).group_by(PARTITION_COLUMN).agg(pl.col(SOURCE_ROW).n_unique().alias("in_quarantine")).collect()
        if q_lf is not None and raw.get_column("unflagged").sum()
        else pl.DataFrame(schema={PARTITION_COLUMN: pl.String, "in_quarantine": pl.UInt32})
    )
    return (
        raw.join(in_quarantine, on=PARTITION_COLUMN, how="left")
        .with_columns(
            pl.when(pl.col("unflagged") > 0).then(pl.col("in_quarantine").fill_null(0)).otherwise(pl.col("flagged")).alias("quarantined")
        )
        .with_columns((pl.col("quarantined") / pl.col("rows")).alias("failure_rate"))
        .select(PARTITION_COLUMN, "rows", "quarantined", "failure_rate")
        .sort(PARTITION_COLUMN)
    )


def settled_through_us(decl: PipelineDeclaration) -> int:
    """The newest append time serving drift reads up to now: `drift.serving_settle_seconds` ago."""
    return int((time.time() - decl.drift.serving_settle_seconds) * 1e6)


def new_log_rows(delta: DeltaLakeResource, decl: PipelineDeclaration, after_us: int, through_us: int) -> pl.LazyFrame | None:
    """Served rows appended after `after_us` and up to `through_us` (microseconds since the epoch, UTC). By append
    time, not answer time: a check's watermark then covers every row committed before it, in whatever order the
    replicas' flushes and spill re-appends committed them (rows logged before the column existed count by answer time)."""
    log = delta.scan(decl.name, PREDICTION_LOG)
    if log is None:
        return None
    us = appended_us(log)
    return log.filter(pl.col("served") & (us > after_us) & (us <= through_us))


def newest_log_rows(delta: DeltaLakeResource, decl: PipelineDeclaration, version: int, through_us: int, rows: int) -> pl.DataFrame:
    """A version's newest `rows` served rows appended up to `through_us`, in a window or before it: a canary's share of
    one window is too small to judge, and its rows of the windows before are what it served since."""
    log = delta.scan(decl.name, PREDICTION_LOG)
    if log is None:
        return pl.DataFrame()
    us = appended_us(log)
    served = log.filter(pl.col("served") & (pl.col("model_version") == version) & (us <= through_us))
    return served.with_columns(us.alias("_appended_us")).top_k(rows, by="_appended_us").drop("_appended_us").collect()


def appended_us(log: pl.LazyFrame) -> pl.Expr:
    """When a log row was appended, in µs since the epoch: what serving drift reads the log by."""
    stamp = pl.coalesce(APPENDED_AT, "logged_at") if APPENDED_AT in log.collect_schema() else pl.col("logged_at")
    return stamp.dt.epoch("us")
