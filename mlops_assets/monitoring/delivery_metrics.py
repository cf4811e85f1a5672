"""``<pipeline>/delivery_metrics``: the platform measures itself (lifecycle step 8).

From the audit log, the deployment asset's materializations and the run
history: deployment frequency, lead time from a day's file landing to a model
trained on it being served, change failure rate (rejected or rolled-back
promotions over all promotion decisions) and time to restore (drift-triggered
retraining request to a new champion served). Each materialization appends a
snapshot to ``<pipeline>/delivery_metrics`` (the history); the numbers are
also metadata, which Dagster plots across materializations.
"""

import json
from datetime import UTC, datetime, timedelta
from statistics import median

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import (
    DELIVERY_METRICS,
    TRIGGER_TAG,
    delivery_metrics_key,
    raw_key,
)
from mlops_assets.metadata import preview
from resources import audit_log, registered_models
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource

SNAPSHOT_SCHEMA = {
    "computed_at": pl.Datetime("us", "UTC"),
    "deployments_total": pl.Int64,
    "deployments_last_7d": pl.Int64,
    "deployment_frequency_per_day": pl.Float64,
    "lead_time_median_s": pl.Float64,
    "lead_time_last_s": pl.Float64,
    "promotion_decisions": pl.Int64,
    "failed_changes": pl.Int64,
    "change_failure_rate": pl.Float64,
    "restores": pl.Int64,
    "time_to_restore_median_s": pl.Float64,
    "rollouts_started": pl.Int64,
    "rollouts_completed": pl.Int64,
    "rollouts_rolled_back": pl.Int64,
    "rollback_time_to_restore_median_s": pl.Float64,
}


def snapshot_frame(snapshot: dict) -> pl.DataFrame:
    """One history row with fixed types: a metric with no value yet is a typed null, so the
    first snapshot does not fix a column as Null and refuse every later number."""
    return pl.DataFrame([snapshot], schema=SNAPSHOT_SCHEMA)


def materializations(instance: dg.DagsterInstance, key: dg.AssetKey) -> list:
    """Every materialization record of an asset, oldest first (paged: the store caps a page at 10,000)."""
    records, cursor = [], None
    while True:
        page = instance.fetch_materializations(key, limit=5_000, cursor=cursor, ascending=True)
        records.extend(page.records)
        if not page.has_more:
            return records
        cursor = page.cursor


def served_versions(instance: dg.DagsterInstance, deployment_key: dg.AssetKey) -> list[tuple[float, int]]:
    """(time, champion version) of each deployment materialization that served a new champion, oldest first."""
    served, current = [], None
    for record in materializations(instance, deployment_key):
        value = record.asset_materialization.metadata.get("champion_version")
        if value is None or value.value in (None, "none"):
            continue
        version = int(value.value)
        if version != current:
            served.append((record.timestamp, version))
            current = version
    return served


def landed_at(instance: dg.DagsterInstance, decl: PipelineDeclaration) -> dict[str, float]:
    """When each partition's current file landed (its mtime, recorded by ingestion)."""
    landed: dict[str, float] = {}
    for record in materializations(instance, raw_key(decl)):
        m = record.asset_materialization
        signature = m.metadata.get("source_signature")
        if m.partition and signature is not None:
            landed[m.partition] = int(str(signature.value).split("-")[0]) / 1e9
    return landed


def drift_requests(instance: dg.DagsterInstance, train_job: str) -> list[float]:
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=train_job, tags={TRIGGER_TAG: "drift"}), ascending=True)
    return [r.create_timestamp.timestamp() for r in records]


def compute(
    decl: PipelineDeclaration,
    instance: dg.DagsterInstance,
    delta: DeltaLakeResource,
    mlflow: MlflowRegistryResource,
    deployment_key: dg.AssetKey,
    train_job: str,
    now: datetime,
) -> tuple[dict, pl.DataFrame]:
    served = served_versions(instance, deployment_key)
    landed = landed_at(instance, decl)
    leads = []
    for at, version in served:
        end = registered_models.model_version(decl.name, mlflow, version).plan.partition_end
        if end in landed:
            leads.append(
                {
                    "model_version": version,
                    "served_at": datetime.fromtimestamp(at, UTC),
                    "newest_day": end,
                    "lead_time_s": at - landed[end],
                }
            )
    events = audit_log.history(delta, decl.name)
    # a rollout rolled back by its guards is a failed change; its time to restore runs from the
    # rollout's start (the new version got traffic) to the traffic taken back
    decisions = events.filter(pl.col("action").is_in(["promote", "approve", "reject", "rollback", "rollout_rollback"]))
    failures = events.filter(pl.col("action").is_in(["reject", "rollback", "rollout_rollback"]))
    rolled_back = events.filter(pl.col("action") == "rollout_rollback")
    rollout_restores = [json.loads(m).get("exposed_s") for m in rolled_back["metrics"]]
    rollout_restores = [r for r in rollout_restores if r is not None]
    # one restore per champion served, timed from the first drift request it answers: a failed retraining asked
    # for again (`~retry-<n>`, or a later alert) counted as a restore of its own, with a shorter time
    restored: dict[float, float] = {}
    for asked in drift_requests(instance, train_job):  # oldest first
        before = [v for t, v in served if t <= asked]
        after = [(t, v) for t, v in served if t > asked and (not before or v != before[-1])]
        if after:
            restored.setdefault(after[0][0], asked)
    restores = [at - asked for at, asked in restored.items()]
    week_ago = (now - timedelta(days=7)).timestamp()
    recent = [t for t, _ in served if t >= week_ago]
    snapshot = {
        "computed_at": now,
        "deployments_total": len(served),
        "deployments_last_7d": len(recent),
        "deployment_frequency_per_day": len(recent) / 7.0,
        "lead_time_median_s": median([r["lead_time_s"] for r in leads]) if leads else None,
        "lead_time_last_s": leads[-1]["lead_time_s"] if leads else None,
        "promotion_decisions": decisions.height,
        "failed_changes": failures.height,
        "change_failure_rate": failures.height / decisions.height if decisions.height else None,
        "restores": len(restores),
        "time_to_restore_median_s": median(restores) if restores else None,
        "rollouts_started": events.filter(pl.col("action") == "rollout_start").height,
        "rollouts_completed": events.filter(pl.col("action") == "rollout_complete").height,
        "rollouts_rolled_back": rolled_back.height,
        "rollback_time_to_restore_median_s": median(rollout_restores) if rollout_restores else None,
    }
    return snapshot, pl.DataFrame(leads) if leads else pl.DataFrame()


def build_delivery_metrics_asset(
    decl: PipelineDeclaration, deployment_key: dg.AssetKey, promotion_key: dg.AssetKey, train_job: str
) -> dg.AssetsDefinition:
    @dg.asset(
        key=delivery_metrics_key(decl),
        deps=[deployment_key, promotion_key],
        group_name=decl.name,
        kinds={"delta"},
        description="Deployment frequency, lead time (landing to served), change failure rate and time to restore, with history.",
    )
    def delivery_metrics(context: dg.AssetExecutionContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource):
        snapshot, leads = compute(decl, context.instance, delta, mlflow, deployment_key, train_job, datetime.now(UTC))
        # merge_schema: snapshots written before a column was added keep their rows
        history_version = delta.append(decl.name, DELIVERY_METRICS, snapshot_frame(snapshot), context.run.run_id, merge_schema=True)
        history = delta.scan(decl.name, DELIVERY_METRICS).sort("computed_at").collect()  # type: ignore[union-attr]
        metadata = {k: (float(v) if isinstance(v, (int, float)) else "n/a") for k, v in snapshot.items() if k != "computed_at"}
        metadata.update(
            {
                "delta_version": history_version,
                "lead_times": preview(leads, rows=leads.height) if leads.height else "no model served yet",
                "history": preview(history.tail(20), rows=20),
            }
        )
        return dg.MaterializeResult(metadata=metadata)

    return delivery_metrics
