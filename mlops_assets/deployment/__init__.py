"""Deployment stage: `<pipeline>/deployment` (Ray Serve runs the aliased versions), its job, and
the champion sensor that starts it when an alias moves."""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import DEPLOY_TAG, PRIORITY, PRIORITY_TAG, deploy_job_name, deployment_key
from mlops_assets.deployment.assets import build_deployment_asset
from sensors.champion_sensor import build_champion_sensor


def build(decl: PipelineDeclaration) -> dg.Definitions:
    asset = build_deployment_asset(decl)
    job = dg.define_asset_job(
        deploy_job_name(decl),
        selection=dg.AssetSelection.assets(deployment_key(decl)),
        description="Roll serving to the aliased versions.",
        # the run queue allows one rollout per pipeline at a time: a rollout started for an
        # older alias move must not wait for its version while a newer one replaces it
        tags={DEPLOY_TAG: decl.name, PRIORITY_TAG: PRIORITY["deploy"]},
        executor_def=dg.in_process_executor,  # steps in the run's own process: a subprocess per step cost ~3 s each of the lead time
    )
    return dg.Definitions(assets=[asset], jobs=[job], sensors=[build_champion_sensor(decl, job)])
