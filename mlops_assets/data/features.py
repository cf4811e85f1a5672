"""Reference tables and daily features, computed by the pipeline's feature module.

The features of day D use D's clean rows, the reference tables and statistics
over clean rows of the ``history_days`` days before D, never D itself or later,
so nothing leaks from the day being predicted.
"""

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.feature_contract import load_feature_module
from mlops_assets.core.names import (
    FEATURES,
    SOURCE_ROW,
    features_key,
    raw_key,
    reference_key,
    reference_table,
)
from mlops_assets.core.records import LandedFileError, read_landed
from mlops_assets.metadata import preview, table_schema
from resources.delta_lake import DeltaLakeResource
from resources.landing_zone import LandingZoneResource, reference_signature
from resources.pipeline_tables import read_clean, reference_as_of


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
        group_name=decl.name,
        kinds={"delta", "polars"},
        code_version=module.code_hash(),
        description=f"Features from {module.name}.build_features over the day's clean rows "
        f"(history statistics from the {decl.features.history_days} days before).",
    )
    def features(context: dg.AssetExecutionContext, delta: DeltaLakeResource):
        partition = context.partition_key
        records = read_clean(delta, decl.name, [partition])
        if records is None or records.height == 0:
            raise dg.Failure(f"no clean rows for partition {partition}: ingest it first")
        try:
            reference, lineage = reference_as_of(delta, decl, module, partition)
        except LookupError as err:
            raise dg.Failure(str(err)) from None
        built = module.build(records.select(declared), reference)
        frame = pl.concat([records.select(*keys, SOURCE_ROW), built], how="horizontal")
        version = delta.write_partition(decl.name, FEATURES, frame, partition, context.run.run_id)
        without_target = frame.get_column(target).null_count()
        history_used = lineage["history_partitions"]
        return dg.MaterializeResult(
            metadata={
                "partition": partition,
                "rows": frame.height,
                "feature_columns": ", ".join(built.columns),
                "rows_without_target": without_target,
                "rows_without_target_reason": decl.target.missing_reason,
                "history_partitions": len(history_used),
                "history_range": f"{history_used[0]} .. {history_used[-1]}" if history_used else "none",
                "raw_delta_version": lineage["raw_version"],
                "reference_delta_versions": lineage["reference_versions"],
                "feature_code_hash": module.code_hash(),
                "delta_table": delta.table_uri(decl.name, FEATURES),
                "delta_version": version,
                "dagster/row_count": frame.height,
                "dagster/column_schema": table_schema(frame),
                "preview": preview(built),
            }
        )

    return features
