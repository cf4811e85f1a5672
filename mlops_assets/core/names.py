"""Every name the platform gives things, in one place: Delta tables and columns, registry
aliases and tags, asset keys, jobs, sensors and run tags. Other modules import them from
here, so a name is spelled once and no layer imports another for a constant."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:  # annotations only: the declaration checks its names against the ones given here
    from mlops_assets.core.declaration import PipelineDeclaration

# --- Delta tables (one folder per pipeline) and the platform's own columns -------------------
RAW = "raw"
QUARANTINE = "quarantine"
FEATURES = "features"
AUDIT_TABLE = "audit_log"
PROMOTION_LOCK = "promotion_lock"  # the lease one promotion decision per pipeline holds (resources/promotion_lock.py)
PROFILES = "drift_profiles"  # not reference_<x>: a landing reference table may be named "profiles"
DRIFT_METRICS = "drift_metrics"
BATCH_SCORES = "batch_scores"
LIVE_PERFORMANCE = "live_performance"
DELIVERY_METRICS = "delivery_metrics"
PREDICTION_LOG = "prediction_log"  # written by serving/prediction_log.py
# the prediction log's Delta properties. Its readers filter by `logged_at` and none travels back in time, so its
# log entries expire after 10 minutes (each append lists and replays the log; the writers' own checkpoints, every
# 100 commits, drop what expired), and the files compaction replaced go an hour after it (`prediction_log_compaction`)
PREDICTION_LOG_PROPERTIES = {"delta.logRetentionDuration": "interval 10 minutes", "delta.deletedFileRetentionDuration": "interval 1 hours"}
PREDICTION_LOG_FILE_RETENTION_HOURS = 1

PARTITION_COLUMN = "_partition"
APPENDED_AT = "appended_at"  # prediction log: when the row's batch was appended (a spilled batch: appended again)
SUBJECT_PREFIX = "subject_"  # prediction-log columns that carry governance.subject_columns (for erasure)
SOURCE_ROW = "_source_row"
VALID_ROW = "_valid"  # on raw rows: False where the same commit quarantined the row, so raw alone says what is clean


def reference_table(name: str) -> str:
    return f"reference_{name}"


# --- the model registry (MLflow) ---------------------------------------------------------------
CHAMPION = "champion"
ERASED_TAG = "mlops.trained_on_erased"  # on versions whose training window held rows since erased
CHALLENGER = "challenger"
PLAN_TAG = "mlops.training_plan"
STATUS_TAG = "mlops.status"
GATES_TAG = "mlops.gates"
GATES_CHAMPION_TAG = "mlops.gates_champion"  # the champion the gates compared a version with ("none": there was none)
# the tags that say how to call a version (registration writes them, serving.loaded_model reads them)
TASK_TAG = "mlops.task"
FEATURE_COLUMNS_TAG = "mlops.feature_columns"  # the model's input columns, in order (JSON list)
CLASSES_TAG = "mlops.classes"  # classifiers' labels, in the model's order (JSON list)
SERVING_TAGS = (TASK_TAG, FEATURE_COLUMNS_TAG, CLASSES_TAG)

GATES_ARTIFACT = "gates/evaluation.json"  # on the version's MLflow run: every gate's full comparison
DRIFT_REPORTS_ARTIFACT = "drift_reports"  # on the version's MLflow run: the Evidently reports against its window

# --- Dagster: resource keys, check names, metadata keys -----------------------------------------
MLFLOW_RESOURCE = "mlflow"
FLOORS = "quality_floors"
NO_REGRESSION = "no_regression"
DATA_CHECKS = "data_checks"
FAIRNESS = "fairness"
WATERMARK = "logged_through_us"  # serving_drift metadata: the append time (APPENDED_AT) the log was read up to

# --- run tags -------------------------------------------------------------------------------------
TRIGGER_TAG = "mlops/trigger"
REASON_TAG = "mlops/reason"
FILE_TAG = "mlops/landed_file"
LANDED_SIGNATURE = "mlops/landed_signature"
CHAMPION_VERSION_TAG = "mlops/champion_version"
CHALLENGER_VERSION_TAG = "mlops/challenger_version"
ROLLOUT_VERSION_TAG = "mlops/rollout_version"  # a rollout run: the version and step the rollout sensor judged
ROLLOUT_STEP_TAG = "mlops/rollout_step"
ROLLOUT_ACTION_TAG = "mlops/rollout_action"
ROLLOUT_GUARD_TAG = "mlops/rollout_guard"  # the version tag naming the guard that rolled it back
# the run queue allows one run per pipeline and tag (deploy/local, deploy/helm, `mlops demo`)
INGEST_TAG = "mlops/ingest"
TRAINING_TAG = "mlops/training"
DEPLOY_TAG = "mlops/deploy"
QUEUE_TAGS = (INGEST_TAG, TRAINING_TAG, DEPLOY_TAG)
# ingestion and monitoring runs (the backlog) may hold all but one or two run slots: training and
# rollouts always find one free instead of waiting for a backlog run to finish
BACKLOG_TAG = "mlops/backlog"
BACKLOG = {BACKLOG_TAG: "true"}
# Dagster's queue starts higher priorities first: a rollout, then training, go ahead of a backlog of
# ingestion and monitoring runs (what freshness waits on goes first; a drift report can wait)
PRIORITY_TAG = "dagster/priority"
# a run over a range of partitions (Dagster's single-run backfill tags)
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
RUN_KEY_TAG = "dagster/run_key"  # Dagster's tag for the run key of the sensor request that launched a run
PRIORITY = {"rollout": "30", "deploy": "20", "train": "10", "ingest": "0", "monitor": "-10"}


# --- asset keys ----------------------------------------------------------------------------------
def _key(decl: PipelineDeclaration, name: str) -> dg.AssetKey:
    return dg.AssetKey([decl.name, name])


def landing_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, "landing")


def raw_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, RAW)


def quarantine_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, QUARANTINE)


def reference_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, "reference")


def features_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, FEATURES)


def model_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, "model")


def promotion_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, "promotion")


def feature_drift_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, "feature_drift")


def batch_scores_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, BATCH_SCORES)


def live_performance_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, LIVE_PERFORMANCE)


def serving_drift_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, "serving_drift")


def prediction_log_compaction_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, "prediction_log_compaction")


def delivery_metrics_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, DELIVERY_METRICS)


def deployment_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, "deployment")


def model_card_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, "model_card")


def rollout_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return _key(decl, "rollout")


def model_versions_partitions(decl: PipelineDeclaration) -> str:
    """The dynamic partitions of a pipeline's per-version assets: one per registered version."""
    return f"{decl.name}_model_versions"


# --- jobs, ops and checks ---------------------------------------------------------------------------
def ingest_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_ingest"


def reference_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_reference"


def train_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_train"


def approve_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_approve"


def monitor_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_monitor"


def serving_drift_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_serving_drift"


def delivery_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_delivery_metrics"


def deploy_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_deploy"


def rollout_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_rollout"


def erase_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_erase"


def model_card_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_model_card"


def step_name(decl: PipelineDeclaration, step: str) -> str:
    """Op and check names (`flights__ingest`, `flights__gates`, `flights__approve`)."""
    return f"{decl.name}__{step}"


# --- sensors and schedules ---------------------------------------------------------------------------
SENSORS = ("landing", "new_data", "drift", "monitor", "serving_drift", "delivery", "champion", "rollout", "model_card")


def sensor_name(decl: PipelineDeclaration, kind: str) -> str:
    """`<pipeline>_<kind>_sensor`, kind one of SENSORS."""
    if kind not in SENSORS:
        raise ValueError(f"unknown sensor kind {kind!r}; known: {', '.join(SENSORS)}")
    return f"{decl.name}_{kind}_sensor"


def retrain_schedule_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_weekly_retrain"


# --- Ray Serve applications ----------------------------------------------------------------------
GATEWAY_APP = "mlops"  # the HTTP gateway's application; each pipeline's is named as the pipeline


def derived_names(decl: PipelineDeclaration) -> set[str]:
    """The Dagster names made from a pipeline's name: two pipelines whose sets meet cannot share a code location
    (pipelines `a` and `a_serving` both had an `a_serving_drift_sensor`)."""
    jobs = (ingest_job_name, reference_job_name, train_job_name, approve_job_name, monitor_job_name, serving_drift_job_name)
    jobs += (delivery_job_name, deploy_job_name, rollout_job_name, erase_job_name, model_card_job_name)
    return (
        {f(decl) for f in jobs} | {sensor_name(decl, k) for k in SENSORS} | {retrain_schedule_name(decl), model_versions_partitions(decl)}
    )
