"""`<pipeline>_erase`: erasure from the Dagster UI, with the same config and result as `mlops erase`."""

# no `from __future__ import annotations`: Dagster reads the Config and resource annotations of the op

import dagster as dg
from pydantic import Field

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import INGEST_TAG, erase_job_name, features_key, step_name
from mlops_assets.governance.erasure import PredicateError, erase
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource


class ErasureConfig(dg.Config):
    where: str = Field(description='Which rows, over declared columns: tailnum = "N24211" [and ...].')
    by: str = Field(min_length=1, description="Who asks for the erasure.")
    reason: str = Field(min_length=1, description="Why (the request, ticket, legal basis).")
    dry_run: bool = Field(default=False, description="Count the rows and the affected model versions; change nothing.")


def build_erase_job(decl: PipelineDeclaration) -> dg.JobDefinition:
    @dg.op(name=step_name(decl, "erase"), description=f"Erase a data subject's rows from every {decl.name} table.")
    def erase_op(context: dg.OpExecutionContext, config: ErasureConfig, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        try:
            result = erase(decl, delta, mlflow, config.where, config.by, config.reason, config.dry_run, context.run.run_id)
        except PredicateError as err:
            raise dg.Failure(str(err), allow_retries=False) from None
        context.log.info(result.report())
        for partition in result.recomputed:  # the features asset's history shows the erasure that rewrote each partition
            if partition not in result.held_back:
                context.log_event(
                    dg.AssetMaterialization(
                        asset_key=features_key(decl),
                        partition=partition,
                        description=f"recomputed by erasure {result.erasure_id} without the erased rows",
                        metadata={"erasure_id": result.erasure_id, "delta_version": result.features_version},
                    )
                )
        return dg.Output(
            None,
            metadata={
                "erasure_id": result.erasure_id,
                "dry_run": result.dry_run,
                "rows": dg.MetadataValue.json(result.rows),
                "days": len(result.partitions),
                "recomputed_partitions": len(result.recomputed),
                "tagged_versions": dg.MetadataValue.json(result.tagged_versions),
                "drift_reports": result.drift_reports,
                "vacuumed_files": result.vacuumed_files,
            },
        )

    # in the ingest queue (one run per pipeline): an ingest run beside it could write features from the rows it erases
    @dg.job(
        name=erase_job_name(decl),
        description=f"Erase a data subject from {decl.name}: run config where, by, reason.",
        tags={INGEST_TAG: decl.name},
    )
    def erase_job():
        erase_op()

    return erase_job
