"""Monitoring stage: feature drift, batch scores and live performance per day, serving drift
on the prediction log and the log's compaction, delivery metrics; their jobs, the sensors that
retrain, the fallback schedule."""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import (
    BACKLOG,
    PRIORITY,
    PRIORITY_TAG,
    batch_scores_key,
    delivery_job_name,
    delivery_metrics_key,
    deployment_key,
    feature_drift_key,
    monitor_job_name,
    prediction_log_compaction_key,
    promotion_key,
    serving_drift_job_name,
    serving_drift_key,
    train_job_name,
)
from mlops_assets.core.partitions import partitions_def
from mlops_assets.monitoring.assets import build_monitoring_assets
from mlops_assets.monitoring.delivery_metrics import build_delivery_metrics_asset
from mlops_assets.monitoring.prediction_log_compaction import build_prediction_log_compaction_asset
from mlops_assets.monitoring.serving_drift import build_serving_drift_asset
from sensors.retrain_sensors import (
    build_delivery_sensor,
    build_drift_sensor,
    build_monitor_sensor,
    build_new_data_sensor,
    build_retrain_schedule,
    build_serving_drift_sensor,
)


def build(decl: PipelineDeclaration) -> dg.Definitions:
    partitions = partitions_def(decl)
    monitor_job = dg.define_asset_job(
        monitor_job_name(decl),
        selection=dg.AssetSelection.assets(feature_drift_key(decl), batch_scores_key(decl)),
        partitions_def=partitions,
        description=f"Drift check and batch scores of featurized {decl.partitioning.unit}s, against the champion.",
        tags={PRIORITY_TAG: PRIORITY["monitor"], **BACKLOG},
    )
    train_job = train_job_name(decl)
    serving_drift_job = dg.define_asset_job(  # the check, then the log it read compacted: no run of its own
        serving_drift_job_name(decl),
        selection=dg.AssetSelection.assets(serving_drift_key(decl), prediction_log_compaction_key(decl)),
        tags=BACKLOG,
    )
    delivery_job = dg.define_asset_job(
        delivery_job_name(decl), selection=dg.AssetSelection.assets(delivery_metrics_key(decl)), tags=BACKLOG
    )
    deployed = deployment_key(decl)
    return dg.Definitions(
        assets=[
            *build_monitoring_assets(decl, partitions),
            build_serving_drift_asset(decl, deployed),
            build_prediction_log_compaction_asset(decl),
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
