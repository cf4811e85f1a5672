"""Names of a pipeline's Delta tables, and the one way to read its clean rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import polars as pl

from mlops_assets.ingest import SOURCE_ROW
from resources.delta_lake import PARTITION_COLUMN, DeltaLakeResource

RAW = "raw"
QUARANTINE = "quarantine"
FEATURES = "features"


def reference_table(name: str) -> str:
    return f"reference_{name}"


def read_clean(delta: DeltaLakeResource, pipeline: str, partitions: Sequence[str]) -> pl.DataFrame | None:
    """Raw rows that passed validation: raw minus quarantine, per partition and source row."""
    raw = delta.read_partitions(pipeline, RAW, partitions)
    if raw is None:
        return None
    quarantined = delta.read_partitions(pipeline, QUARANTINE, partitions)
    if quarantined is None or quarantined.height == 0:
        return raw
    return raw.join(quarantined.select(PARTITION_COLUMN, SOURCE_ROW), on=[PARTITION_COLUMN, SOURCE_ROW], how="anti")


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
