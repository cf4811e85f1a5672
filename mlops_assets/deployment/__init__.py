"""Deployment stage: `<pipeline>/deployment` (Ray Serve runs the aliased versions), its job, and
the champion sensor that starts it when an alias moves; with a declared rollout also
`<pipeline>/rollout`, its job and the rollout sensor that walks a new version through its steps."""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import DEPLOY_TAG, PRIORITY, PRIORITY_TAG, deploy_job_name, deployment_key, rollout_job_name, rollout_key
from mlops_assets.deployment.assets import build_deployment_asset
from mlops_assets.deployment.rollout import build_rollout_asset
from sensors.champion_sensor import build_champion_sensor
from sensors.rollout_sensor import build_rollout_sensor


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
    defs = dg.Definitions(assets=[asset], jobs=[job], sensors=[build_champion_sensor(decl, job)])
    spec = decl.promotion.rollout
    if spec is None:
        return defs
    rollout_job = dg.define_asset_job(
        rollout_job_name(decl),
        selection=dg.AssetSelection.assets(rollout_key(decl)),
        description="Judge the rollout in progress on its live signals: next step, promotion or rollback.",
        # one change of Serve's config per pipeline at a time (deploy runs share the tag), rollouts first in the queue
        tags={DEPLOY_TAG: decl.name, PRIORITY_TAG: PRIORITY["rollout"]},
        executor_def=dg.in_process_executor,
    )
    return dg.Definitions.merge(
        defs,
        dg.Definitions(
            assets=[build_rollout_asset(decl, spec)], jobs=[rollout_job], sensors=[build_rollout_sensor(decl, spec, rollout_job)]
        ),
    )
