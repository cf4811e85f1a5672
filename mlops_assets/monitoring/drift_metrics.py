"""Drift results kept in Delta: the champion's reference profile, and per-column drift scores.

The reference of a model version is its training window at the exact Delta
version recorded in its lineage, summarized once (drift.profile) and cached in
``<pipeline>/drift_profiles``. Every drift check appends its per-column
scores, methods, thresholds and the drift share to ``<pipeline>/drift_metrics``:
an append-only history a person (or a sensor) can query.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import polars as pl

from mlops_assets.core.declaration import DeclarationError
from mlops_assets.core.names import DRIFT_METRICS, PROFILES
from mlops_assets.models import training
from mlops_assets.monitoring.drift import DriftResult, ReferenceProfile, profile
from resources.delta_lake import DeltaLakeResource
from resources.pipeline_tables import DRIFT_SCHEMA
from resources.registered_models import Champion


def reference_window(delta: DeltaLakeResource, model: Champion) -> pl.DataFrame:
    """What drift is measured against: the version's training window at its recorded Delta version or, once rows it
    trained on were erased, the same days without them (a vacuum may have removed the recorded version's files, and
    the erased rows must not be read again)."""
    return training.read_window(model.plan, delta, as_now=model.erased is not None)


def describe_reference(model: Champion) -> str:
    """The reference window as `reference_window` reads it: an erased version's is no longer its recorded Delta version."""
    window = f"{model.plan.partition_start} .. {model.plan.partition_end}"
    if model.erased is not None:
        return f"{window} (features as they are now, without the rows erasure {model.erased} removed; trained on v{model.plan.features_version})"
    return f"{window} (features v{model.plan.features_version})"


class EmptyReference(LookupError):
    """A version's training window holds no feature rows any more (an erasure took them all)."""


def reference_profile(delta: DeltaLakeResource, model: Champion, run_id: str = "") -> ReferenceProfile:
    """The training-window profile of a model version, computed once and cached."""
    cached = delta.scan(model.plan.pipeline, PROFILES)
    if cached is not None:
        hit = cached.filter(pl.col("model_version") == model.version).select("profile").head(1).collect()
        if hit.height:
            return ReferenceProfile.from_json(hit.item())
    frame = reference_window(delta, model)
    if frame.height == 0:  # Evidently's report divided by zero columns compared: a bare ZeroDivisionError
        raise EmptyReference(
            f"model {model.plan.pipeline} v{model.version}'s training window {describe_reference(model)} holds no feature "
            "rows any more: drift cannot be measured against it" + (" (the retrain sensor replaces the champion)" if model.erased else "")
        )
    result = profile(frame, model.numerical, model.categorical)
    row = pl.DataFrame(
        {
            "model_version": [model.version],
            "features_delta_version": [model.plan.features_version],
            "partition_start": [model.plan.partition_start],
            "partition_end": [model.plan.partition_end],
            "rows": [frame.height],
            "profile": [result.to_json()],
            "created_at": [datetime.now(UTC)],
        }
    )
    delta.append(model.plan.pipeline, PROFILES, row, run_id)
    return result


def checked_key_columns(key_columns: list[str], reference: ReferenceProfile) -> list[str]:
    """`drift.key_columns`, each one a column the drift check compares: a misspelt one never asked for retraining."""
    unknown = [c for c in key_columns if c not in reference.columns]
    if unknown:
        raise DeclarationError(
            f"drift.key_columns names {unknown}, which the drift check does not compare; it compares: {', '.join(reference.columns)}"
        )
    return key_columns


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
    """Append a check's per-column scores; `html_report` is where its Evidently report is (runs:/<run id>/drift_reports/...,
    the model version's MLflow run; older rows hold a path under $MLOPS_HOME/reports), '' for none."""
    reason = alert_reason(result, key_columns)
    frame = result.columns.with_columns(
        pl.lit(uuid.uuid4().hex).alias("report_id"),
        pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("computed_at"),
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
