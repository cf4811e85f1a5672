"""Drift results kept in Delta: the champion's reference profile, and per-column drift scores.

The reference of a model version is its training window at the exact Delta
version recorded in its lineage, summarized once (drift.profile) and cached in
``<pipeline>/reference_profiles``. Every drift check appends its per-column
scores, methods, thresholds and the drift share to ``<pipeline>/drift_metrics``:
an append-only history a person (or a sensor) can query.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import polars as pl

from mlops_assets import registry, training
from mlops_assets.drift import DriftResult, ReferenceProfile, profile
from mlops_assets.training import TrainingPlan
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource

PROFILES = "reference_profiles"
DRIFT_METRICS = "drift_metrics"
DRIFT_SCHEMA = {
    "report_id": pl.String,
    "computed_at": pl.Datetime("us", "UTC"),
    "source": pl.String,  # features | serving
    "window": pl.String,  # a partition, or a prediction-log version range
    "model_version": pl.Int64,
    "column": pl.String,
    "method": pl.String,
    "score": pl.Float64,
    "threshold": pl.Float64,
    "drifted": pl.Boolean,
    "drift_share": pl.Float64,
    "alert": pl.Boolean,
    "alert_reason": pl.String,
    "rows": pl.Int64,
    "dagster_run_id": pl.String,
    "html_report": pl.String,
}


@dataclass(frozen=True)
class Champion:
    version: int
    plan: TrainingPlan

    @property
    def numerical(self) -> list[str]:
        return [c for c in self.plan.feature_columns if c not in self.plan.categorical_features]

    @property
    def categorical(self) -> list[str]:
        return list(self.plan.categorical_features)


def champion(pipeline: str, mlflow: MlflowRegistryResource) -> Champion | None:
    """The current champion and the training plan recorded on it, or None before the first promotion."""
    version = registry.alias_version(mlflow.client(), pipeline, registry.CHAMPION)
    if version is None:
        return None
    return Champion(int(version.version), registry.plan_of(version))


def model_version(pipeline: str, mlflow: MlflowRegistryResource, version: int) -> Champion:
    return Champion(version, registry.plan_of(registry.get_version(mlflow.client(), pipeline, version)))


def reference_profile(delta: DeltaLakeResource, model: Champion, run_id: str = "") -> ReferenceProfile:
    """The training-window profile of a model version, computed once and cached."""
    cached = delta.scan(model.plan.pipeline, PROFILES)
    if cached is not None:
        hit = cached.filter(pl.col("model_version") == model.version).select("profile").head(1).collect()
        if hit.height:
            return ReferenceProfile.from_json(hit.item())
    frame = training.read_window(model.plan, delta)
    result = profile(frame, model.numerical, model.categorical)
    row = pl.DataFrame(
        {
            "model_version": [model.version],
            "features_delta_version": [model.plan.features_version],
            "partition_start": [model.plan.partition_start],
            "partition_end": [model.plan.partition_end],
            "rows": [frame.height],
            "profile": [result.to_json()],
            "created_at": [datetime.now(timezone.utc)],
        }
    )
    delta.append(model.plan.pipeline, PROFILES, row, run_id)
    return result


def alert_reason(result: DriftResult, key_columns: list[str]) -> str:
    """Why this drift result asks for retraining ('' when it does not)."""
    reasons = []
    if result.dataset_drift:
        reasons.append(f"drift share {result.share:.2f} >= {result.share_threshold:.2f}")
    drifted_keys = [c for c in result.drifted() if c in key_columns]
    if drifted_keys:
        reasons.append(f"key columns drifted: {', '.join(drifted_keys)}")
    if reasons:
        top = result.columns.filter(pl.col("drifted")).sort("score", descending=True).head(5)
        detail = ", ".join(f"{c} ({m} {s:.3g})" for c, m, s in top.select("column", "method", "score").iter_rows())
        reasons.append(f"drifted: {detail}")
    return "; ".join(reasons)


def record(
    delta: DeltaLakeResource,
    pipeline: str,
    result: DriftResult,
    *,
    source: str,
    window: str,
    model_version: int,
    rows: int,
    key_columns: list[str],
    run_id: str,
    html_report: str = "",
) -> pl.DataFrame:
    reason = alert_reason(result, key_columns)
    frame = result.columns.with_columns(
        pl.lit(uuid.uuid4().hex).alias("report_id"),
        pl.lit(datetime.now(timezone.utc)).cast(pl.Datetime("us", "UTC")).alias("computed_at"),
        pl.lit(source).alias("source"),
        pl.lit(window).alias("window"),
        pl.lit(model_version, pl.Int64).alias("model_version"),
        pl.lit(result.share).alias("drift_share"),
        pl.lit(bool(reason)).alias("alert"),
        pl.lit(reason).alias("alert_reason"),
        pl.lit(rows, pl.Int64).alias("rows"),
        pl.lit(run_id).alias("dagster_run_id"),
        pl.lit(html_report).alias("html_report"),
    ).select([pl.col(c).cast(t) for c, t in DRIFT_SCHEMA.items()])
    delta.append(pipeline, DRIFT_METRICS, frame, run_id)
    return frame


def reports(delta: DeltaLakeResource, pipeline: str) -> pl.DataFrame:
    """One row per drift report (not per column), oldest first."""
    lf = delta.scan(pipeline, DRIFT_METRICS)
    if lf is None:
        return pl.DataFrame(schema={k: DRIFT_SCHEMA[k] for k in ("report_id", "computed_at", "source", "window", "model_version", "drift_share", "alert", "alert_reason", "rows")})
    return (
        lf.group_by("report_id")
        .agg(pl.col("computed_at", "source", "window", "model_version", "drift_share", "alert", "alert_reason", "rows").first())
        .sort("computed_at")
        .collect()
    )
