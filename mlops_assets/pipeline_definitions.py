"""Builds one declared pipeline's assets, checks, jobs and sensors."""

from __future__ import annotations

import dagster as dg

from mlops_assets.declaration import PipelineDeclaration
from mlops_assets.delivery_metrics_assets import build_delivery_metrics_asset, delivery_metrics_key
from mlops_assets.feature_assets import build_features_asset, build_reference_asset, features_key, reference_key
from mlops_assets.model_definitions import build_model_definitions, promotion_key, train_job_name
from mlops_assets.monitoring_assets import batch_scores_key, build_monitoring_assets, feature_drift_key, monitor_job_name
from mlops_assets.raw_assets import build_landing_spec, build_raw_assets, quarantine_key, raw_key
from mlops_assets.serving_drift_assets import build_serving_drift_asset, serving_drift_job_name, serving_drift_key
from sensors.landing_sensor import build_landing_sensor
from sensors.retrain_sensors import (
    build_delivery_sensor,
    build_drift_sensor,
    build_monitor_sensor,
    build_new_data_sensor,
    build_retrain_schedule,
    build_serving_drift_sensor,
)
from serving.deployment_definitions import build_serving_definitions, deployment_key


def daily_partitions(decl: PipelineDeclaration) -> dg.DailyPartitionsDefinition:
    end = decl.partitioning.end
    return dg.DailyPartitionsDefinition(
        start_date=decl.partitioning.start.isoformat(), end_date=end.isoformat() if end else None
    )


def ingest_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_ingest"


def build_pipeline(decl: PipelineDeclaration) -> dg.Definitions:
    partitions = daily_partitions(decl)
    assets: list = [build_landing_spec(decl), build_raw_assets(decl, partitions), build_features_asset(decl, partitions)]
    ingest_job = dg.define_asset_job(
        ingest_job_name(decl),
        selection=dg.AssetSelection.assets(raw_key(decl), quarantine_key(decl), features_key(decl)),
        partitions_def=partitions,
        description="Ingest, validate and featurize one landed day.",
        # the run queue limits this tag to one run per pipeline (deploy/local, deploy/helm), so that
        # days are featurized in landing order and each sees the history before it
        tags={"mlops/ingest": decl.name},
        executor_def=dg.in_process_executor,  # steps in the run's own process: a subprocess per step cost ~3 s each of the lead time
    )
    jobs = [ingest_job]
    reference_job = None
    if decl.landing.reference_tables:
        assets.append(build_reference_asset(decl))
        reference_job = dg.define_asset_job(f"{decl.name}_reference", selection=dg.AssetSelection.assets(reference_key(decl)))
        jobs.append(reference_job)
    data = dg.Definitions(assets=assets, jobs=jobs, sensors=[build_landing_sensor(decl, ingest_job, reference_job)])
    return dg.Definitions.merge(
        data, build_model_definitions(decl, partitions), build_monitoring(decl, partitions), build_serving_definitions(decl)
    )


def build_monitoring(decl: PipelineDeclaration, partitions: dg.PartitionsDefinition) -> dg.Definitions:
    monitor_job = dg.define_asset_job(
        monitor_job_name(decl),
        selection=dg.AssetSelection.assets(feature_drift_key(decl), batch_scores_key(decl)),
        partitions_def=partitions,
        description="Drift check and batch scores of one featurized day, against the champion.",
    )
    train_job = train_job_name(decl)
    serving_drift_job = dg.define_asset_job(serving_drift_job_name(decl), selection=dg.AssetSelection.assets(serving_drift_key(decl)))
    delivery_job = dg.define_asset_job(f"{decl.name}_delivery_metrics", selection=dg.AssetSelection.assets(delivery_metrics_key(decl)))
    deployed = deployment_key(decl)
    return dg.Definitions(
        assets=[
            *build_monitoring_assets(decl, partitions),
            build_serving_drift_asset(decl, deployed),
            build_delivery_metrics_asset(decl, deployed, promotion_key(decl), train_job),
        ],
        jobs=[monitor_job, serving_drift_job, delivery_job],
        sensors=[
            build_monitor_sensor(decl, monitor_job.name, train_job),
            build_new_data_sensor(decl, train_job),
            build_drift_sensor(decl, train_job),
            build_serving_drift_sensor(decl, serving_drift_job.name),
            build_delivery_sensor(decl, delivery_job.name, [promotion_key(decl), deployed]),
        ],
        schedules=[build_retrain_schedule(decl, train_job)],
    )
