"""Landed file -> raw Delta partition, split into clean and quarantined rows.

One step per partition writes two tables: ``raw`` (every landed row, cast to
the declared schema, each flagged ``_valid``) and ``quarantine`` (the rows that
failed, with the reason and the values as landed). Raw is committed first and
alone says which rows are clean, so a step stopped between the two commits
never lets an invalid row read as clean; the re-run writes both. Its blocking ``validation`` check fails the
partition when the failure rate passes the declared limit, so its features are
not computed; the data is written either way, so nothing is lost.
"""

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import (
    LANDED_SIGNATURE,
    QUARANTINE,
    RAW,
    SOURCE_ROW,
    VALID_ROW,
    landing_key,
    quarantine_key,
    raw_key,
    step_name,
)
from mlops_assets.core.records import LandedFileError, conform, read_landed
from mlops_assets.core.validation import validate
from mlops_assets.metadata import counts_table, preview, table_schema
from resources.delta_lake import DeltaLakeResource
from resources.landing_zone import LandingZoneResource


def build_landing_spec(decl: PipelineDeclaration) -> dg.AssetSpec:
    return dg.AssetSpec(
        landing_key(decl),
        description=f"Files landed by the upstream system ({decl.landing.format}, {decl.landing.file_pattern}).",
        group_name=decl.name,
        kinds={decl.landing.format},
    )


def build_raw_assets(decl: PipelineDeclaration, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    limit = decl.validation.max_failure_rate

    @dg.multi_asset(
        name=step_name(decl, "ingest"),
        specs=[
            dg.AssetSpec(
                raw_key(decl),
                deps=[landing_key(decl)],
                description="Every landed row, cast to the declared schema (daily Delta partition).",
                group_name=decl.name,
                kinds={"delta", "polars"},
            ),
            dg.AssetSpec(
                quarantine_key(decl),
                deps=[landing_key(decl)],
                description="Rows that failed validation, with the reason and the values as landed.",
                group_name=decl.name,
                kinds={"delta", "pandera"},
            ),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                "validation",
                asset=raw_key(decl),
                blocking=True,
                description=f"pandera schema; fails when more than {limit:.1%} of rows are quarantined.",
            )
        ],
        partitions_def=partitions,
    )
    def ingest(context: dg.AssetExecutionContext, landing: LandingZoneResource, delta: DeltaLakeResource):
        partition = context.partition_key
        file_name = decl.landing.file_name(partition)
        landed = landing.stat(decl.name, file_name)
        uri = landing.uri(decl.name, file_name)
        if landed is None:
            raise dg.Failure(f"no landed file for partition {partition}: {uri} does not exist")
        try:
            frame = read_landed(landing.read_bytes(decl.name, file_name), uri, decl.landing.format)
            conformed = conform(frame, decl.table_schema, uri)
            result = validate(conformed, decl.table_schema)
        except LandedFileError as err:
            raise dg.Failure(
                description=f"cannot ingest {err.file}: {err.problem}",
                metadata={"file": err.file, "problem": err.problem, "partition": partition},
                allow_retries=False,
            ) from None
        run_id = context.run.run_id
        flagged = conformed.frame.with_columns(
            pl.col(SOURCE_ROW).is_in(result.quarantine.get_column(SOURCE_ROW).implode()).not_().alias(VALID_ROW)
        )
        raw_version = delta.write_partition(decl.name, RAW, flagged, partition, run_id, merge_schema=True)  # tables from before the flag
        quarantine_version = delta.write_partition(decl.name, QUARANTINE, result.quarantine, partition, run_id)
        total = conformed.frame.height
        passed = result.failure_rate <= limit
        context.log.info(
            f"{uri}: {total} rows, {result.clean.height} clean, {result.quarantine.height} quarantined "
            f"({result.failure_rate:.2%}, limit {limit:.1%})"
        )
        yield dg.MaterializeResult(
            asset_key=raw_key(decl),
            metadata={
                "partition": partition,
                "source_file": uri,
                "source_signature": landed.signature,
                "rows": total,
                "clean_rows": result.clean.height,
                "quarantined_rows": result.quarantine.height,
                "dropped_columns": ", ".join(conformed.dropped_columns) or "none",
                "delta_table": delta.table_uri(decl.name, RAW),
                "delta_version": raw_version,
                "dagster/row_count": total,
                "dagster/column_schema": table_schema(conformed.frame),
                "preview": preview(conformed.frame.drop(SOURCE_ROW)),
            },
            tags={LANDED_SIGNATURE: landed.signature},
        )
        yield dg.MaterializeResult(
            asset_key=quarantine_key(decl),
            metadata={
                "partition": partition,
                "rows": result.quarantine.height,
                "delta_table": delta.table_uri(decl.name, QUARANTINE),
                "delta_version": quarantine_version,
                "dagster/row_count": result.quarantine.height,
                "preview": preview(result.quarantine.select("_source_row", "_reason", "_original"))
                if result.quarantine.height
                else "no rows quarantined",
            },
        )
        yield dg.AssetCheckResult(
            asset_key=raw_key(decl),
            check_name="validation",
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=(f"{result.quarantine.height} of {total} rows ({result.failure_rate:.2%}) failed validation; limit {limit:.1%}"),
            metadata={
                "failure_rate": result.failure_rate,
                "max_failure_rate": limit,
                "rows": total,
                "clean_rows": result.clean.height,
                "quarantined_rows": result.quarantine.height,
                "failures_by_reason": counts_table(result.reasons.head(20)) if result.reasons.height else "none",
                "sample_failures": preview(result.quarantine.select("_source_row", "_reason"), rows=10)
                if result.quarantine.height
                else "none",
            },
        )

    return ingest
