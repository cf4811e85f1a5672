"""Reference tables and daily features, computed by the pipeline's feature module.

The features of day D use D's clean rows, the reference tables and statistics
over clean rows of the ``history_days`` days before D, never D itself or later,
so nothing leaks from the day being predicted. A range of days (a backfill) is one
step: the clean rows read once, each day's history computed in order, one commit.
A day whose validation failed is held back; the others are computed.
"""

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.feature_contract import load_feature_module
from mlops_assets.core.names import (
    FEATURES,
    PARTITION_COLUMN,
    SOURCE_ROW,
    features_key,
    raw_key,
    reference_key,
    reference_table,
)
from mlops_assets.core.partitions import backfill_policy
from mlops_assets.core.records import LandedFileError, read_landed
from mlops_assets.metadata import preview, table_schema
from resources.delta_lake import DeltaLakeResource
from resources.landing_zone import LandingZoneResource, reference_signature
from resources.pipeline_tables import quarantined_share, read_clean, references_as_of


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
            fmt = "csv" if file_name.endswith(".csv") else "parquet"
            try:
                frame = read_landed(data, uri, fmt)
            except LandedFileError as err:
                raise dg.Failure(f"cannot read reference table {name}: {err}") from None
            version = delta.overwrite(decl.name, reference_table(name), frame, context.run.run_id)
            metadata[f"{name}_rows"] = frame.height
            metadata[f"{name}_delta_version"] = version
        return dg.MaterializeResult(metadata=metadata)

    return reference


def build_features_asset(decl: PipelineDeclaration, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    module = load_feature_module(decl)
    declared = list(decl.table_schema.columns)
    target = decl.target.column
    keys = list(dict.fromkeys([*decl.table_schema.unique, target]))
    deps = [raw_key(decl)] + ([reference_key(decl)] if decl.landing.reference_tables else [])

    @dg.asset(
        key=features_key(decl),
        deps=deps,
        partitions_def=partitions,
        backfill_policy=backfill_policy(decl),
        group_name=decl.name,
        kinds={"delta", "polars"},
        code_version=module.code_hash(),
        description=f"Features from {module.name}.build_features over the day's clean rows "
        f"(history statistics from the {decl.features.history_days} days before).",
    )
    def features(context: dg.AssetExecutionContext, delta: DeltaLakeResource):
        partitions = sorted(context.partition_keys)  # one, or a whole backfill range in one run
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
        records = read_clean(delta, decl.name, [p for p in partitions if p not in held])
        present = set() if records is None else set(records.get_column(PARTITION_COLUMN).unique().to_list())
        held.update({p: "no clean rows: ingest it first" for p in partitions if p not in held and p not in present})
        good = [p for p in partitions if p not in held]
        if not good:
            raise dg.Failure(
                f"no features computed: {_held_back(held)}", metadata={"held_back": dg.MetadataValue.json(held)}, allow_retries=False
            )
        try:
            # in order: each day sees the days before it (the range's own clean rows are not read twice)
            references = references_as_of(delta, decl, module, good, clean=records)
        except LookupError as err:
            raise dg.Failure(str(err)) from None
        built = module.build_partitions(records.select(*declared, PARTITION_COLUMN), {p: references[p][0] for p in good}, PARTITION_COLUMN)
        table = pl.concat([records.select(*keys, SOURCE_ROW), built, records.select(PARTITION_COLUMN)], how="horizontal")
        del records  # the columns the table does not carry are freed before the write (10M rows: about 1 GB)
        version = delta.write_partitioned(decl.name, FEATURES, table, context.run.run_id)
        if held:  # the good days are materialized, each for itself; the run fails naming the others
            for (p,), day in table.partition_by(PARTITION_COLUMN, as_dict=True).items():
                context.log_event(
                    dg.AssetMaterialization(
                        asset_key=features_key(decl),
                        partition=p,
                        metadata=_features_metadata(decl, module, delta, day, [p], references, built, version),
                    )
                )
            raise dg.Failure(
                f"features of {len(held)} of {len(partitions)} partitions held back: {_held_back(held)}",
                metadata={"held_back": dg.MetadataValue.json(held), "computed": ", ".join(good)},
                allow_retries=False,
            )
        return dg.MaterializeResult(metadata=_features_metadata(decl, module, delta, table, good, references, built, version))

    return features


def _held_back(held: dict[str, str]) -> str:
    shown = "; ".join(f"{p}: {why}" for p, why in list(held.items())[:5])
    return shown + (f"; and {len(held) - 5} more" if len(held) > 5 else "")


def _features_metadata(
    decl, module, delta, table: pl.DataFrame, days: list[str], references: dict, built: pl.DataFrame, version: int
) -> dict:
    """Metadata of the rows of `table` (the feature rows of `days`, with their partition column)."""
    rows = table.height
    target = decl.target.column
    history_used = sorted({d for p in days for d in references[p][1]["history_partitions"]})
    lineage = references[days[0]][1]
    where = {"partition": days[0]} if len(days) == 1 else {"partitions": len(days), "range": f"{days[0]} .. {days[-1]}"}
    return {
        **where,
        "rows": rows,
        "feature_columns": ", ".join(built.columns),
        "rows_without_target": table.get_column(target).null_count(),
        "rows_without_target_reason": decl.target.missing_reason,
        "history_partitions": len(history_used),
        "history_range": f"{history_used[0]} .. {history_used[-1]}" if history_used else "none",
        "raw_delta_version": lineage["raw_version"],
        "reference_delta_versions": lineage["reference_versions"],
        "feature_code_hash": module.code_hash(),
        "delta_table": delta.table_uri(decl.name, FEATURES),
        "delta_version": version,
        "dagster/row_count": rows,
        **({"dagster/column_schema": table_schema(table.drop(PARTITION_COLUMN))} if len(days) == 1 else {}),  # see raw._schema_and_preview
        "preview": preview(built),
    }
