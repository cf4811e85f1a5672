"""Reference tables and daily features, computed by the pipeline's feature module.

The features of day D use D's clean rows, the reference tables and statistics
over clean rows of the ``history_days`` days before D, never D itself or later,
so nothing leaks from the day being predicted. A range of days (a backfill) is one
step: the clean rows read once, each day's history computed in order, one commit.
A day whose validation failed is held back (its earlier features removed); the others are computed.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.feature_contract import FeatureModule, load_feature_module
from mlops_assets.core.names import (
    FEATURES,
    PARTITION_COLUMN,
    QUARANTINE,
    SOURCE_ROW,
    features_key,
    raw_key,
    reference_key,
    reference_table,
)
from mlops_assets.core.partitions import backfill_policy
from mlops_assets.core.records import LandedFileError, read_landed
from mlops_assets.core.validation import REASON
from mlops_assets.metadata import add_partition_metadata, preview, table_schema
from resources.delta_lake import DeltaLakeResource
from resources.landing_zone import LandingZoneResource, reference_signature
from resources.pipeline_tables import RangeReading, quarantined_share, read_clean, references_as_of


def build_reference_asset(decl: PipelineDeclaration) -> dg.AssetsDefinition:
    @dg.asset(
        key=reference_key(decl),
        group_name=decl.name,
        kinds={"delta"},
        description="Reference tables landed beside the daily files: "
        + ", ".join(f"{n} ({f})" for n, f in decl.landing.reference_tables.items()),
    )
    def reference(context: dg.AssetExecutionContext, landing: LandingZoneResource, delta: DeltaLakeResource):
        signature = reference_signature(decl, landing)
        if signature is None:
            missing = [f for f in decl.landing.reference_tables.values() if landing.stat(decl.name, "reference", f) is None]
            raise dg.Failure(f"reference files not landed yet: {', '.join(landing.uri(decl.name, 'reference', f) for f in missing)}")
        metadata: dict = {"source_signature": signature}
        for name, file_name in decl.landing.reference_tables.items():
            uri = landing.uri(decl.name, "reference", file_name)
            data = landing.read_bytes(decl.name, "reference", file_name)
            fmt = decl.landing.reference_format(file_name)
            columns = decl.table_schema.columns
            keys = {k for lookup in decl.features.lookups if lookup.table == name for k in lookup.keys if columns[k].type == "str"}
            try:
                # a CSV table's numbers looked up as numbers, not text; its text keys as the text they are (`007`)
                frame = read_landed(data, uri, fmt, infer_types=True, as_text=sorted(keys))
            except LandedFileError as err:
                raise dg.Failure(f"cannot read reference table {name}: {err}") from None
            version = delta.overwrite(decl.name, reference_table(name), frame, context.run.run_id)
            metadata[f"{name}_rows"] = frame.height
            metadata[f"{name}_delta_version"] = version
        return dg.MaterializeResult(metadata=metadata)

    return reference


def build_features_asset(decl: PipelineDeclaration, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    module = load_feature_module(decl)
    deps = [raw_key(decl)] + ([reference_key(decl)] if decl.landing.reference_tables else [])

    @dg.asset(
        key=features_key(decl),
        deps=deps,
        partitions_def=partitions,
        backfill_policy=backfill_policy(decl),
        group_name=decl.name,
        kinds={"delta", "polars"},
        code_version=module.code_hash(),
        description=f"Features from {module.name}.build_features over the {decl.partitioning.unit}'s clean rows "
        f"(history statistics from the {decl.features.history_days} {decl.partitioning.unit}s before).",
    )
    def features(context: dg.AssetExecutionContext, delta: DeltaLakeResource):
        partitions = sorted(context.partition_keys)  # one, or a whole backfill range in one run
        try:
            done = featurize(delta, decl, module, partitions, context.run.run_id)
        except LookupError as err:
            raise dg.Failure(str(err)) from None
        good, held, built, version = done.good, done.held, done.built, done.version
        if not good:
            raise dg.Failure(
                f"no features computed: {_held_back(held)}", metadata={"held_back": dg.MetadataValue.json(held)}, allow_retries=False
            )
        if held:  # the good days are materialized, each for itself; the run fails naming the others
            for p in good:
                context.log_event(
                    dg.AssetMaterialization(
                        asset_key=features_key(decl), partition=p, metadata=built.metadata(decl, module, delta, [p], version)
                    )
                )
            raise dg.Failure(
                f"features of {len(held)} of {len(partitions)} partitions held back: {_held_back(held)}",
                metadata={"held_back": dg.MetadataValue.json(held), "computed": ", ".join(good)},
                allow_retries=False,
            )
        if len(good) > 1:  # each partition's event says its own rows and history, beside the range's figures
            add_partition_metadata(context, features_key(decl), {d: built.day_figures(d) for d in good})
        return dg.MaterializeResult(metadata=built.metadata(decl, module, delta, good, version))

    return features


@dataclass
class Featurized:
    """What one featurization of partitions wrote: the partitions computed, those held back (and why), the commit."""

    good: list[str]
    held: dict[str, str]
    built: "_BuiltRange"
    version: int | None  # None when nothing was written: no partition computed and no features table yet


def featurize(delta: DeltaLakeResource, decl: PipelineDeclaration, module: FeatureModule, partitions: list[str], run_id: str) -> Featurized:
    """Features of `partitions` (sorted) from raw's clean rows as they are now, each seeing the history before it,
    written in one commit. The features asset's work, and an erasure's recomputation of the partitions it changed.
    LookupError when raw is gone."""
    limit = decl.validation.max_failure_rate
    shares = {
        row[PARTITION_COLUMN]: row
        for row in quarantined_share(delta, decl.name, pl.col(PARTITION_COLUMN).is_in(partitions)).iter_rows(named=True)
    }
    held = {
        p: f"{shares[p]['failure_rate']:.2%} of its rows failed validation (limit {limit:.1%})"
        for p in partitions
        if p in shares and shares[p]["failure_rate"] > limit
    }
    if held:  # the rate alone sent the user to the quarantine table to learn which column of the file was wrong
        for p, reason in _first_reasons(delta, decl.name, list(held)).items():
            held[p] += f", such as: {reason}"
    clean_rows = {p: shares[p]["rows"] - shares[p]["quarantined"] for p in partitions if p in shares}
    held.update({p: "no clean rows: ingest it first" for p in partitions if p not in held and clean_rows.get(p, 0) <= 0})
    good = [p for p in partitions if p not in held]
    built = _BuiltRange()
    version = None
    # the held-back days are emptied in the same commit: features built from an earlier file of a day no longer
    # match its raw rows (re-landed), and rows keyed by (day, source row) then name other flights, so an erasure
    # deleted the wrong rows
    if good or delta.table(decl.name, FEATURES) is not None:
        version = delta.write_partition_stream(
            decl.name,
            FEATURES,
            partitions,
            built.chunks(delta, decl, module, _chunks(good, clean_rows)),
            run_id,
            merge_schema=True,  # a feature the module adds reaches the table (earlier days read it as null)
        )
    return Featurized(good, held, built, version)


def _first_reasons(delta: DeltaLakeResource, pipeline: str, partitions: list[str]) -> dict[str, str]:
    """The first quarantined row's reason in each of `partitions` (those with none are left out)."""
    quarantine = delta.scan(pipeline, QUARANTINE)
    if quarantine is None:
        return {}
    first = (
        quarantine.filter(pl.col(PARTITION_COLUMN).is_in(partitions))
        .group_by(PARTITION_COLUMN)
        .agg(pl.col(REASON).sort_by(SOURCE_ROW).first())
        .collect()
    )
    return dict(first.iter_rows())


def _held_back(held: dict[str, str]) -> str:
    shown = "; ".join(f"{p}: {why}" for p, why in list(held.items())[:5])
    return shown + (f"; and {len(held) - 5} more" if len(held) > 5 else "")


# days featurized together: a range is read, built and written a chunk of days at a time (each day's history
# still computed in order), so a backfill holds one chunk of rows, never the range
FEATURE_CHUNK_ROWS = 250_000


def _chunks(days: list[str], clean_rows: dict[str, int]) -> Iterator[list[str]]:
    chunk: list[str] = []
    rows = 0
    for day in days:
        chunk.append(day)
        rows += clean_rows[day]
        if rows >= FEATURE_CHUNK_ROWS:
            yield chunk
            chunk, rows = [], 0
    if chunk:
        yield chunk


@dataclass
class _DayFigures:
    rows: int
    rows_without_target: int
    history: list[str]


@dataclass
class _BuiltRange:
    """The feature rows of a range built a chunk of days at a time for the streamed write; keeps what the
    materializations report (per-day figures, the first chunk's preview and schema, the lineage), not the rows."""

    days: dict[str, _DayFigures] = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)
    first: pl.DataFrame | None = None  # the first rows built, with their keys: the column schema
    feature_columns: list[str] = field(default_factory=list)

    def chunks(self, delta, decl, module, day_chunks: Iterator[list[str]]) -> Iterator[pl.DataFrame]:
        # the columns a prediction request carries, and no others: feature code reading the target or a column known
        # only later (arrival time) failed at serving only, after its leak had passed the gates
        requested = module.input_columns(decl)
        target = decl.target.column
        keys = list(dict.fromkeys([*decl.table_schema.unique, target]))
        # each day's share of the history statistics, the reference tables and the raw table, read or opened once
        reading = RangeReading().open(delta, decl)
        for days in day_chunks:
            records = read_clean(delta, decl.name, days, reading.raw_scan) if reading.raw_scan is not None else None
            if records is None:
                raise LookupError(f"raw table of pipeline {decl.name} is gone: ingest {days[0]} first")
            # in order: each day sees the days before it (the chunk's own clean rows are not read twice)
            references = references_as_of(delta, decl, module, days, clean=records, reading=reading)
            built = module.build_partitions(
                records.select(*requested, PARTITION_COLUMN), {p: references[p][0] for p in days}, PARTITION_COLUMN
            )
            table = pl.concat([records.select(*keys, SOURCE_ROW), built, records.select(PARTITION_COLUMN)], how="horizontal")
            del records  # the columns the table does not carry are freed before the write
            figures = table.group_by(PARTITION_COLUMN).agg(pl.len().alias("rows"), pl.col(target).null_count().alias("without_target"))
            for day, rows, without_target in figures.iter_rows():
                self.days[day] = _DayFigures(rows, without_target, references[day][1]["history_partitions"])
            if self.first is None:
                self.first, self.feature_columns = table.head(5), built.columns
                self.lineage = references[days[0]][1]
            yield table

    def day_figures(self, day: str) -> dict:
        """One day's own figures, for its event of a range run."""
        f = self.days[day]
        history = sorted(f.history)
        return {
            "partition": day,
            "rows": f.rows,
            "rows_without_target": f.rows_without_target,
            "history_partitions": len(history),
            "history_range": f"{history[0]} .. {history[-1]}" if history else "none",
            "dagster/row_count": f.rows,
        }

    def metadata(self, decl, module, delta, days: list[str], version: int) -> dict:
        """Metadata of the feature rows of `days`."""
        figures = [self.days[d] for d in days if d in self.days]
        rows = sum(f.rows for f in figures)
        history_used = sorted({d for f in figures for d in f.history})
        where = {"partition": days[0]} if len(days) == 1 else {"partitions": len(days), "range": f"{days[0]} .. {days[-1]}"}
        first = self.first if self.first is not None else pl.DataFrame()
        return {
            **where,
            "rows" if len(days) == 1 else "range_rows": rows,
            "feature_columns": ", ".join(self.feature_columns),
            "rows_without_target": sum(f.rows_without_target for f in figures),
            "rows_without_target_reason": decl.target.missing_reason,
            "history_partitions": len(history_used),
            "history_range": f"{history_used[0]} .. {history_used[-1]}" if history_used else "none",
            "raw_delta_version": self.lineage.get("raw_version"),
            "reference_delta_versions": self.lineage.get("reference_versions"),
            "feature_code_hash": module.code_hash(),
            "delta_table": delta.table_uri(decl.name, FEATURES),
            "delta_version": version,
            **(
                {"dagster/row_count": rows, "dagster/column_schema": table_schema(first.drop(PARTITION_COLUMN))} if len(days) == 1 else {}
            ),  # see raw._schema_and_preview
            "preview": preview(first.select(self.feature_columns)),
        }
