"""What a person sees on a materialization: previews, schemas, counts."""

from __future__ import annotations

import dagster as dg
import polars as pl


def preview(frame: pl.DataFrame, rows: int = 5, max_columns: int = 12) -> dg.MetadataValue:
    shown = frame.head(rows).select(frame.columns[:max_columns])
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "---|" * len(shown.columns)
    body = ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in shown.iter_rows()]
    return dg.MetadataValue.md("\n".join([header, rule, *body]))


def table_schema(frame: pl.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()])


def counts_table(frame: pl.DataFrame) -> dg.MetadataValue:
    return preview(frame, rows=frame.height, max_columns=frame.width)


def add_partition_metadata(context: dg.AssetExecutionContext, asset_key: dg.AssetKey, figures: dict[str, dict]) -> None:
    """Each partition's own figures in its own materialization event of a range run. Dagster copies a range's
    metadata into every partition's event, so per-partition values given there would either repeat the
    range's totals 365 times or carry every partition's values in each event."""
    for partition, values in figures.items():
        context.add_asset_metadata(values, asset_key=asset_key, partition_key=partition)
