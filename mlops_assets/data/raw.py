"""Landed files -> raw Delta partitions, split into clean and quarantined rows.

One step writes two tables for one partition or a whole range (a backfill, a burst of
landed files: one run, one commit per table, each partition replaced only for itself):
``raw`` (every landed row, cast to the declared schema, each flagged ``_valid``) and
``quarantine`` (the rows that failed, with the reason and the values as landed). Raw is
committed first and alone says which rows are clean, so a step stopped between the two
commits never lets an invalid row read as clean; the re-run writes both. The
``validation`` check fails when a partition's failure rate passes the declared limit;
the features step then holds that partition back (and computes the others). The data
is written either way, so nothing is lost.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import (
    LANDED_SIGNATURE,
    PARTITION_COLUMN,
    QUARANTINE,
    RAW,
    SOURCE_ROW,
    VALID_ROW,
    landing_key,
    quarantine_key,
    raw_key,
    step_name,
)
from mlops_assets.core.partitions import backfill_policy, misplaced_in_files
from mlops_assets.core.records import LandedFileError, conform_files, read_landed
from mlops_assets.core.validation import validate_files
from mlops_assets.metadata import add_partition_metadata, counts_table, preview, table_schema
from resources.delta_lake import DeltaLakeResource
from resources.landing_zone import LandingZoneResource


def build_landing_spec(decl: PipelineDeclaration) -> dg.AssetSpec:
    return dg.AssetSpec(
        landing_key(decl),
        description=f"Files landed by the upstream system ({decl.landing.format}, {decl.landing.file_pattern}).",
        group_name=decl.name,
        kinds={decl.landing.format},
    )


@dataclass(frozen=True)
class IngestedFile:
    """What the step reports of one landed file once its rows went to the raw write: its figures and
    quarantined rows (few), not its rows."""

    partition: str
    uri: str
    signature: str
    rows: int
    dropped_columns: tuple[str, ...]
    clean_rows: int
    quarantine: pl.DataFrame  # the quarantined rows, with reasons and the values as landed
    reasons: pl.DataFrame  # reason kind -> rows

    @property
    def failure_rate(self) -> float:
        return self.quarantine.height / self.rows if self.rows else 0.0


# files validated together: a range is read, cast and validated a chunk of files at a time, and each chunk's
# rows are written before the next is read, so a backfill holds one chunk of rows, never the range
VALIDATION_CHUNK_ROWS = 250_000
PREVIEW_ROWS = 5  # of the first file: the raw materialization's preview


@dataclass
class IngestedRange:
    """The files of a range as they are ingested: `rows()` yields each file's flagged rows (every landed row,
    cast, with its _valid flag and partition column) for the raw write and keeps only the files' figures."""

    decl: PipelineDeclaration
    landing: LandingZoneResource
    partitions: list[str]
    files: list[IngestedFile] = field(default_factory=list)
    first_rows: pl.DataFrame | None = None  # the first file's rows: its column schema and preview

    def rows(self) -> Iterator[pl.DataFrame]:
        chunk: list[tuple[str, str, str, pl.DataFrame]] = []
        chunk_rows = 0
        for partition in self.partitions:
            chunk.append(self._read(partition))
            chunk_rows += chunk[-1][3].height
            if chunk_rows >= VALIDATION_CHUNK_ROWS:
                yield from self._validated(chunk)
                chunk, chunk_rows = [], 0
        if chunk:
            yield from self._validated(chunk)

    def _read(self, partition: str) -> tuple[str, str, str, pl.DataFrame]:
        """One landed file read as it landed (errors name the file); a file that cannot be read fails the run."""
        decl, landing = self.decl, self.landing
        file_name = decl.landing.file_name(partition)
        stat = landing.stat(decl.name, file_name)
        uri = landing.uri(decl.name, file_name)
        if stat is None:
            raise dg.Failure(f"no landed file for partition {partition}: {uri} does not exist")
        try:
            frame = read_landed(landing.read_bytes(decl.name, file_name), uri, decl.landing.format)
        except LandedFileError as err:
            raise _cannot_ingest(err, partition) from None
        return partition, uri, stat.signature, frame

    def _validated(self, chunk: list[tuple[str, str, str, pl.DataFrame]]) -> Iterator[pl.DataFrame]:
        """A chunk of files cast and validated in one pass each; their flagged rows as one frame, so the write
        encodes the chunk's files on its threads while the next chunk is read and validated (a frame per file
        made each file's write wait for the one before)."""
        try:
            conformed = conform_files([frame for *_, frame in chunk], self.decl.table_schema, [uri for _, uri, _, _ in chunk])
        except LandedFileError as err:
            raise _cannot_ingest(err, next(p for p, uri, _, _ in chunk if uri == err.file)) from None
        misplaced = misplaced_in_files(self.decl, [c.frame for c in conformed], [p for p, *_ in chunk], SOURCE_ROW)
        results = validate_files(conformed, self.decl.table_schema, misplaced=misplaced)
        del misplaced
        flagged_files = []
        for (partition, uri, signature, _), c, result in zip(chunk, conformed, results):
            flagged = result.rows.with_columns(result.valid)
            if self.first_rows is None:
                self.first_rows = flagged.head(PREVIEW_ROWS)
            self.files.append(
                IngestedFile(
                    partition,
                    uri,
                    signature,
                    result.rows.height,
                    tuple(c.dropped_columns),
                    result.clean_rows,
                    result.quarantine,
                    result.reasons,
                )
            )
            flagged_files.append(flagged.with_columns(pl.lit(partition, dtype=pl.String).alias(PARTITION_COLUMN)))
        yield pl.concat(flagged_files, how="diagonal_relaxed") if len(flagged_files) > 1 else flagged_files[0]


def _cannot_ingest(err: LandedFileError, partition: str) -> dg.Failure:
    return dg.Failure(
        description=f"cannot ingest {err.file}: {err.problem}",
        metadata={"file": err.file, "problem": err.problem, "partition": partition},
        allow_retries=False,
    )


PER_FILE_LOG_LINES = 10


def _raw_figures(d: IngestedFile) -> dict:
    """What one partition's raw event says of its file: the landed file (its signature is the lineage the
    landing sensor and delivery metrics read) and its rows."""
    return {
        "partition": d.partition,
        "source_file": d.uri,
        "source_signature": d.signature,
        "rows": d.rows,
        "clean_rows": d.clean_rows,
        "quarantined_rows": d.quarantine.height,
        "dagster/row_count": d.rows,
    }


def _schema_and_preview(frame: pl.DataFrame, single: bool) -> dict:
    """Column schema and a preview for one partition's run. Dagster copies a range run's metadata into
    every partition's materialization event: the column schema (dozens of typed objects) cost the
    365-day backfill more than its validation, so a range shows the preview of its first day only."""
    shown = {"preview": preview(frame.drop(SOURCE_ROW, VALID_ROW))}
    return {"dagster/column_schema": table_schema(frame), **shown} if single else shown


def build_raw_assets(decl: PipelineDeclaration, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    limit = decl.validation.max_failure_rate

    @dg.multi_asset(
        name=step_name(decl, "ingest"),
        specs=[
            dg.AssetSpec(
                raw_key(decl),
                deps=[landing_key(decl)],
                description=f"Every landed row, cast to the declared schema, flagged `_valid` (a Delta partition per {decl.partitioning.unit}).",
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
                description=f"pandera schema; fails when more than {limit:.1%} of a partition's rows are quarantined "
                "(the features of that partition are then held back).",
            )
        ],
        partitions_def=partitions,
        backfill_policy=backfill_policy(decl),
    )
    def ingest(context: dg.AssetExecutionContext, landing: LandingZoneResource, delta: DeltaLakeResource):
        partitions = list(context.partition_keys)  # one, or a whole backfill range in one run
        run_id = context.run.run_id
        # one commit per table for the whole range, each partition replaced only for itself; raw first, its
        # rows streamed as they are validated: its _valid flags alone say what is clean, so a stop before
        # the quarantine commit leaks nothing
        ingested = IngestedRange(decl, landing, partitions)
        raw_version = delta.write_partition_stream(decl.name, RAW, partitions, ingested.rows(), run_id, merge_schema=True)
        days = ingested.files
        # columns a declaration adds reach quarantine as they reach raw (without, its commit failed after raw's)
        quarantine = {d.partition: d.quarantine for d in days}
        quarantine_version = delta.write_partitions(decl.name, QUARANTINE, quarantine, run_id, merge_schema=True)
        total = sum(d.rows for d in days)
        clean = sum(d.clean_rows for d in days)
        quarantined = sum(d.quarantine.height for d in days)
        failing = [d for d in days if d.failure_rate > limit]
        # a line per file for a few files; a backfill's per-partition figures are in the check's metadata
        for d in days if len(days) <= PER_FILE_LOG_LINES else []:
            context.log.info(
                f"{d.uri}: {d.rows} rows, {d.clean_rows} clean, {d.quarantine.height} quarantined ({d.failure_rate:.2%}, limit {limit:.1%})"
            )
        if len(days) > PER_FILE_LOG_LINES:
            context.log.info(
                f"{len(days)} files {partitions[0]} .. {partitions[-1]}: {total} rows, {clean} clean, {quarantined} quarantined"
            )
        first = days[0]
        single = len(days) == 1
        where = {"partition": first.partition} if single else {"partitions": len(days), "range": f"{partitions[0]} .. {partitions[-1]}"}
        if not single:  # each partition's event names its own file and figures; the range's totals beside them
            add_partition_metadata(context, raw_key(decl), {d.partition: _raw_figures(d) for d in days})
            add_partition_metadata(
                context,
                quarantine_key(decl),
                {
                    d.partition: {"partition": d.partition, "rows": d.quarantine.height, "dagster/row_count": d.quarantine.height}
                    for d in days
                },
            )
        yield dg.MaterializeResult(
            asset_key=raw_key(decl),
            metadata={
                **where,
                **(
                    _raw_figures(first)
                    if single
                    else {
                        "source_file": f"{len(days)} files",
                        "range_rows": total,
                        "range_clean_rows": clean,
                        "range_quarantined_rows": quarantined,
                    }
                ),
                "dropped_columns": ", ".join(sorted({c for d in days for c in d.dropped_columns})) or "none",
                "delta_table": delta.table_uri(decl.name, RAW),
                "delta_version": raw_version,
                **_schema_and_preview(ingested.first_rows, single),
            },
            tags={LANDED_SIGNATURE: first.signature} if single else None,
        )
        sample = pl.concat([d.quarantine.select("_source_row", "_reason", "_original") for d in days])
        yield dg.MaterializeResult(
            asset_key=quarantine_key(decl),
            metadata={
                **where,
                **({"rows": quarantined, "dagster/row_count": quarantined} if single else {"range_rows": quarantined}),
                "delta_table": delta.table_uri(decl.name, QUARANTINE),
                "delta_version": quarantine_version,
                "preview": preview(sample) if sample.height else "no rows quarantined",
            },
        )
        reasons = pl.concat([d.reasons for d in days]).group_by("reason").agg(pl.col("rows").sum()).sort("rows", descending=True)
        rate = quarantined / total if total else 0.0
        yield dg.AssetCheckResult(
            asset_key=raw_key(decl),
            check_name="validation",
            passed=not failing,
            severity=dg.AssetCheckSeverity.ERROR,
            description=(
                f"{quarantined} of {total} rows ({rate:.2%}) failed validation; limit {limit:.1%}"
                if single
                else f"{len(failing)} of {len(days)} partitions over the {limit:.1%} limit"
                + (f": {', '.join(d.partition for d in failing[:10])}" if failing else "")
                + f"; {quarantined} of {total} rows quarantined"
            ),
            metadata={
                "failure_rate": first.failure_rate if single else max(d.failure_rate for d in days),
                "max_failure_rate": limit,
                "rows": total,
                "clean_rows": clean,
                "quarantined_rows": quarantined,
                "failing_partitions": ", ".join(d.partition for d in failing) or "none",
                "failures_by_reason": counts_table(reasons.head(20)) if reasons.height else "none",
                "sample_failures": preview(sample.select("_source_row", "_reason"), rows=10) if sample.height else "none",
            },
        )

    return ingest
