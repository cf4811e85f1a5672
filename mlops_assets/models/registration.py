"""One MLflow run per training and the registered model version with its lineage.

The registered model is named after the pipeline; its version tags are the
contract serving builds against (feature columns, classes, task) and the
lineage a person audits (Delta table and version, partition range, feature
code and declaration hashes, git commit, Dagster run id, metrics). Downstream
code gets a ``ModelPointer`` (name, version, URI), never a model object and
never "the latest file".
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import polars as pl

from mlops_assets.core.lineage import TrainingPlan
from mlops_assets.core.names import CLASSES_TAG, FEATURE_COLUMNS_TAG, PLAN_TAG, STATUS_TAG, TASK_TAG
from mlops_assets.models.training import TrainedModel, TrainingData
from resources.mlflow_registry import MlflowRegistryResource

if TYPE_CHECKING:  # mlflow and lightgbm are imported where used: every Dagster run imports this module,
    # and most runs (ingest, rollout) need neither (about 3 s of each run's start-up on 2 cores)
    import lightgbm as lgb

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ModelPointer:
    """Where a model version lives in the registry: what the model asset's materialization carries."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_metadata(self) -> dict:
        return {"model_name": self.name, "model_version": self.version, "model_uri": self.uri, "mlflow_run_id": self.run_id}

    @classmethod
    def from_metadata(cls, metadata: dict) -> "ModelPointer":
        def value(key: str) -> str:
            v = metadata.get(key)
            if v is None:
                raise LookupError(f"materialization metadata has no '{key}': not a model pointer")
            return str(getattr(v, "value", v))

        return cls(name=value("model_name"), version=value("model_version"), run_id=value("mlflow_run_id"))


def run_pointer(instance: dg.DagsterInstance, key: dg.AssetKey, run_id: str) -> ModelPointer:
    """The pointer a model asset recorded in this run or, for a re-execution, in the run it re-executes (and
    that run's parent, up the chain); else (a check or promotion run started alone) its latest one.

    Reading the run's own lineage first keeps two overlapping trainings of one pipeline from gating or
    promoting each other's model, a re-execution from failure (which skips the model step) included.
    """
    run: dg.DagsterRun | None = instance.get_run_by_id(run_id)
    looked_at = run_id
    while looked_at is not None:
        records = instance.get_records_for_run(looked_at, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        mine = [
            r.event_log_entry.asset_materialization
            for r in records
            if r.event_log_entry.asset_materialization is not None and r.event_log_entry.asset_materialization.asset_key == key
        ]
        if mine:
            return ModelPointer.from_metadata(dict(mine[-1].metadata))
        looked_at = run.parent_run_id if run is not None else None
        run = instance.get_run_by_id(looked_at) if looked_at is not None else None
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise LookupError(f"{key.to_user_string()} has not been materialized yet: train a model first")
    return ModelPointer.from_metadata(dict(event.asset_materialization.metadata))


def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the code that trained: MLOPS_GIT_COMMIT where an image was built with it (an installed
    package has no checkout), else the checkout's; ('unknown', False) without either."""
    built = os.environ.get("MLOPS_GIT_COMMIT", "").strip()
    if built:
        return built, False
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return sha.stdout.strip(), bool(dirty.stdout.strip())


def version_tags(
    plan: TrainingPlan, model: TrainedModel, *, declaration_hash: str, feature_code_hash: str, dagster_run_id: str
) -> dict[str, str]:
    commit, dirty = git_commit()
    tags = {
        "mlops.pipeline": plan.pipeline,
        TASK_TAG: plan.task,
        FEATURE_COLUMNS_TAG: json.dumps(model.booster.feature_name()),
        "mlops.categorical_features": json.dumps(plan.categorical_features),
        "mlops.declaration_hash": declaration_hash,
        "mlops.feature_code_hash": feature_code_hash,
        "mlops.features_table": plan.features_table,
        "mlops.features_delta_version": str(plan.features_version),
        "mlops.partition_start": plan.partition_start,
        "mlops.partition_end": plan.partition_end,
        "mlops.validation_start": plan.validation_start,
        "mlops.holdout_start": plan.holdout_start,
        "mlops.git_commit": commit,
        "mlops.git_dirty": str(dirty).lower(),
        "mlops.dagster_run_id": dagster_run_id,
        "mlops.best_iteration": str(model.best_iteration),
        "mlops.training_engine": plan.engine,
        "mlops.ray_workers": str(plan.ray_workers),
        STATUS_TAG: "candidate",
        PLAN_TAG: plan.to_json(),
        **{f"metric.{k}": repr(float(v)) for k, v in model.validation_metrics.items()},
    }
    if plan.task != "regression":
        tags[CLASSES_TAG] = json.dumps(plan.classes)
    return tags


def _importance_figure(booster: lgb.Booster):
    """A matplotlib Figure without pyplot: no display, no global figure registry (Agg renders the PNG)."""
    from matplotlib.figure import Figure

    gains = booster.feature_importance(importance_type="gain")
    names = booster.feature_name()
    order = sorted(range(len(names)), key=lambda i: gains[i])[-25:]
    fig = Figure(figsize=(8, max(3, 0.3 * len(order))))
    ax = fig.subplots()
    ax.barh([names[i] for i in order], [gains[i] for i in order])
    ax.set_xlabel("total gain")
    ax.set_title("feature importance")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class Registered:
    pointer: ModelPointer
    experiment_id: str


@functools.cache
def _versioned_delta_source() -> type:
    from mlflow.data.delta_dataset_source import DeltaDatasetSource

    class VersionedDeltaSource(DeltaDatasetSource):
        """MLflow's Delta source, whose `to_dict` drops a version of 0 (a truthiness test): a features table
        whose first commit was a whole backfill is at version 0, and the run's input must still pin it."""

        def to_dict(self) -> dict:
            info = super().to_dict()
            if self.delta_table_version is not None:
                info["delta_table_version"] = self.delta_table_version
            return info

    return VersionedDeltaSource


def delta_source(path: str, version: int):
    """The MLflow dataset source of a training run's features: the Delta table at the version it read."""
    return _versioned_delta_source()(path=path, delta_table_version=version)


def log_and_register(
    registry: MlflowRegistryResource,
    plan: TrainingPlan,
    data: TrainingData,
    model: TrainedModel,
    tags: dict[str, str],
    sample: pl.DataFrame,
) -> Registered:
    """One MLflow run (params, metrics, input, importance plot, model) and one new model version, no alias."""
    import lightgbm as lgb
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    with registry.writing() as client:
        experiment_id = registry.experiment_id(client, plan.pipeline)
        run_name = f"{plan.pipeline}-{tags['mlops.dagster_run_id'][:8]}"
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name,
            tags={"mlops.pipeline": plan.pipeline, "mlops.dagster_run_id": tags["mlops.dagster_run_id"]},
        ) as run:
            mlflow.log_params(
                {
                    **{f"lgb.{k}": v for k, v in plan.params.items()},
                    "num_boost_round": plan.num_boost_round,
                    "early_stopping_rounds": plan.early_stopping_rounds,
                    "best_iteration": model.best_iteration,
                    "partition_start": plan.partition_start,
                    "partition_end": plan.partition_end,
                    "validation_start": plan.validation_start,
                    "holdout_start": plan.holdout_start,
                    "features_delta_version": plan.features_version,
                    "rows_without_target_reason": plan.missing_reason,
                }
            )
            mlflow.log_metrics(
                {
                    **{f"validation_{k}": v for k, v in model.validation_metrics.items()},
                    "train_rows": data.train.rows,
                    "validation_rows": data.validation.rows,
                    "holdout_rows": data.holdout.rows,
                    "rows_without_target": data.rows_without_target,
                }
            )
            for name, values in model.curve.items():
                client.log_batch(
                    run.info.run_id,
                    metrics=[mlflow.entities.Metric(f"curve_{name}", v, 0, i) for i, v in enumerate(values)],
                )
            source = delta_source(plan.features_table, plan.features_version)
            dataset = mlflow.data.from_polars(
                sample,
                source=source,
                name=f"{plan.pipeline}_features@v{plan.features_version}[{plan.partition_start}..{plan.partition_end}]",
            )
            mlflow.log_input(
                dataset,
                context="training",
                tags={
                    "delta_table": plan.features_table,
                    "delta_version": str(plan.features_version),
                    "partition_start": plan.partition_start,
                    "partition_end": plan.partition_end,
                },
            )
            fig = _importance_figure(model.booster)
            mlflow.log_figure(fig, "feature_importance.png")
            mlflow.log_dict(
                dict(zip(model.booster.feature_name(), model.booster.feature_importance("gain").tolist())),
                "feature_importance.json",
            )
            mlflow.log_text(plan.to_json(), "training_plan.json")
            example = pd.DataFrame(data.validation.X[:50], columns=plan.feature_columns)
            info = mlflow.lightgbm.log_model(
                model.booster,
                name="model",
                pip_requirements=[f"lightgbm=={lgb.__version__}"],
                signature=infer_signature(example, model.booster.predict(example.to_numpy())),
            )
            version = mlflow.register_model(info.model_uri, plan.pipeline, tags=tags)
        return Registered(ModelPointer(plan.pipeline, str(version.version), run.info.run_id), experiment_id)
