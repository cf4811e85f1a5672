"""Data stage: landed files -> validated raw + quarantine partitions -> features, plus the
reference tables; the ingest and reference jobs and the landing sensor that starts them."""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import (
    BACKLOG,
    INGEST_TAG,
    PRIORITY,
    PRIORITY_TAG,
    features_key,
    ingest_job_name,
    quarantine_key,
    raw_key,
    reference_job_name,
    reference_key,
)
from mlops_assets.core.partitions import partitions_def
from mlops_assets.data.features import build_features_asset, build_reference_asset
from mlops_assets.data.raw import build_landing_spec, build_raw_assets
from sensors.landing_sensor import build_landing_sensor


def build(decl: PipelineDeclaration) -> dg.Definitions:
    partitions = partitions_def(decl)
    assets: list = [build_landing_spec(decl), build_raw_assets(decl, partitions), build_features_asset(decl, partitions)]
    ingest_job = dg.define_asset_job(
        ingest_job_name(decl),
        selection=dg.AssetSelection.assets(raw_key(decl), quarantine_key(decl), features_key(decl)),
        partitions_def=partitions,
        description=f"Ingest, validate and featurize landed {decl.partitioning.unit}s (one, or a range in one run).",
        # the run queue limits this tag to one run per pipeline (deploy/local, deploy/helm), so that
        # days are featurized in landing order and each sees the history before it
        tags={INGEST_TAG: decl.name, PRIORITY_TAG: PRIORITY["ingest"], **BACKLOG},
        executor_def=dg.in_process_executor,  # steps in the run's own process: a subprocess per step cost ~3 s each of the lead time
    )
    jobs = [ingest_job]
    reference_job = None
    if decl.landing.reference_tables:
        assets.append(build_reference_asset(decl))
        reference_job = dg.define_asset_job(reference_job_name(decl), selection=dg.AssetSelection.assets(reference_key(decl)))
        jobs.append(reference_job)
    return dg.Definitions(assets=assets, jobs=jobs, sensors=[build_landing_sensor(decl, ingest_job, reference_job)])
