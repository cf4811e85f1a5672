"""LightGBM training on Ray: data-parallel across Ray Train workers, each reading its own days.

The same ``TrainingPlan`` as the single-process path (``training.train``), run by
Ray Train's ``LightGBMTrainer`` instead of in the Dagster step:

- the driver lists the window's partitions at ``plan.features_version`` (Delta log
  metadata only, no rows) and deals the *training* days round-robin over the
  worker ranks; hold-out days are never read by the workers (the gates score them);
- each worker opens the Delta table itself (``storage_options`` from the
  ``DeltaLakeResource``, so it works on an object store), reads only its days plus
  the validation days, and builds its ``lgb.Dataset`` with the same columns,
  categorical features, labels (``training.matrix`` / ``training.labels``), target
  filter and date split as ``training.prepare``;
- LightGBM trains data-parallel (``tree_learner=data``, network from
  ``ray.train.lightgbm.get_network_params()``): histograms are summed over all
  workers, so every worker grows the same trees from all training rows. Bin
  boundaries come from the workers' local samples, so the model is close to, not
  bit-identical with, the single-process one;
- every worker evaluates the *whole* validation window: LightGBM computes metrics
  on local data only, so validation sharded by worker would give each worker its
  own early-stopping decision and the workers would stop at different rounds and
  hang in the next collective. With the full validation days everywhere, every
  worker stops at the same, globally best iteration;
- rank 0 scores the best-iteration model on the validation days exactly like
  ``training.train`` and reports it as a checkpoint in ``RayTrainReportCallback``'s
  layout (``model.txt``, LightGBM's text format; the driver loads it with
  ``RayTrainReportCallback.get_model``); every rank adds a record of the days and
  rows it read and a hash of its trees to the same checkpoint (Ray Train merges
  the workers' checkpoint files), which the driver checks and returns.

``num_threads`` is the worker's CPU reservation (``resources_per_worker["CPU"]``,
default 1) rather than ``plan.params["num_threads"]``: each worker is a separate
process and oversubscribed OpenMP threads stall LightGBM's collectives. A model
trained on N workers is deterministic for that N (fixed seed, fixed day shares,
rows in partition/source-row order), but not identical with another N.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mlops_assets.core.lineage import TrainingPlan
from mlops_assets.core.metrics import score
from mlops_assets.core.names import FEATURES, PARTITION_COLUMN, SOURCE_ROW
from mlops_assets.models.training import (
    TrainedModel,
    TrainingDataError,
    labels,
    matrix,
    predict,
)
from resources.delta_lake import DeltaLakeResource, is_object_store, pyarrow_filesystem

MODEL_FILE = "model.txt"  # RayTrainReportCallback's file name (its get_model loads it): LightGBM's text format
SUMMARY_FILE = "training.json"
READS_PREFIX = "reads-rank-"
PARALLEL_TREE_LEARNERS = {"data", "data_parallel", "voting", "voting_parallel", "feature", "feature_parallel"}


@dataclass(frozen=True)
class WorkerRead:
    """What one Ray Train worker read from the features table and trained on."""

    rank: int
    train_partitions: list[str]
    validation_partitions: list[str]
    train_rows: int
    validation_rows: int
    rows_without_target: int
    trees_sha256: str  # hash of the worker's trees: equal on every rank when training was data-parallel


@dataclass
class RayTrainedModel(TrainedModel):
    """A ``TrainedModel`` plus how the Ray run was spread over its workers."""

    num_workers: int = 1
    worker_reads: dict[int, WorkerRead] = field(default_factory=dict)
    checkpoint_path: str = ""  # the reported checkpoint; empty when it lived in a removed temporary folder

    @property
    def train_rows(self) -> int:
        return sum(r.train_rows for r in self.worker_reads.values())


class HiddenOptions:
    """Storage options (they can hold credentials) that never show in a repr, a log or Ray's run state."""

    def __init__(self, value: dict[str, str] | None):
        self.value = value

    def __repr__(self) -> str:
        return "<storage options hidden>"


def window_partitions(plan: TrainingPlan, delta: DeltaLakeResource) -> tuple[list[str], list[str]]:
    """(training days, validation days) of the plan's window at the plan's Delta version, from the log only."""
    from deltalake import DeltaTable

    uri = delta.table_uri(plan.pipeline, FEATURES)
    if uri != plan.features_table:
        raise ValueError(f"the features table is now {uri}, but the plan reads {plan.features_table}")
    table = DeltaTable(plan.features_table, version=plan.features_version, storage_options=delta.resolved_storage_options())
    days = sorted({p[PARTITION_COLUMN] for p in table.partitions()})
    days = [d for d in days if plan.partition_start <= d <= plan.partition_end]
    train_days = [d for d in days if d < plan.validation_start]
    validation_days = [d for d in days if plan.validation_start <= d < plan.holdout_start]
    return train_days, validation_days


def assign_partitions(days: list[str], num_workers: int) -> list[list[str]]:
    """Round-robin over ranks: rank r trains on days r, r+N, r+2N, ... (a spread of dates for every worker)."""
    return [days[rank::num_workers] for rank in range(num_workers)]


def read_partitions(plan: TrainingPlan, partitions: list[str], storage_options: dict[str, str] | None) -> pl.DataFrame:
    """The given days of the features table at the plan's version, in the same row order as ``read_window``."""
    return (
        pl.scan_delta(plan.features_table, version=plan.features_version, storage_options=storage_options)
        .filter(pl.col(PARTITION_COLUMN).is_in(partitions))
        .collect()
        .sort(PARTITION_COLUMN, SOURCE_ROW)
    )


def trees_hash(model_text: str) -> str:
    """Hash of the trees only: the text's parameter section differs per worker (its listen port)."""
    return hashlib.sha256(model_text.split("end of trees", 1)[0].encode()).hexdigest()


def _worker_params(plan: TrainingPlan, network: dict[str, Any], threads: int) -> dict:
    params = {**plan.params, **network, "num_threads": threads}
    if str(params.get("tree_learner", "serial")) not in PARALLEL_TREE_LEARNERS:
        # LightGBM's default (serial) quietly sets num_machines=1: every worker would train its own model
        params["tree_learner"] = "data"
    return params


def _train_worker(config: dict, storage_options: HiddenOptions) -> None:
    """Ray Train loop of one worker: read own days, train data-parallel, report the checkpoint."""
    import lightgbm as lgb
    import ray.train
    from ray.train import Checkpoint
    from ray.train.lightgbm import get_network_params

    rank = ray.train.get_context().get_world_rank()
    plan = TrainingPlan.from_json(config["plan"])
    own = config["shares"][rank]
    validation_days = config["validation_partitions"]
    frame = read_partitions(plan, [*own, *validation_days], storage_options.value)
    with_target = frame.filter(pl.col(plan.target).is_not_null())
    part = pl.col(PARTITION_COLUMN)
    train_frame = with_target.filter(part < plan.validation_start)
    valid_frame = with_target.filter((part >= plan.validation_start) & (part < plan.holdout_start))
    if train_frame.height == 0:
        raise TrainingDataError(f"pipeline {plan.pipeline}: worker {rank}'s days {own} hold no rows with a target")
    if valid_frame.height == 0:
        raise TrainingDataError(f"pipeline {plan.pipeline}: the validation days {validation_days} hold no rows with a target")

    dtrain = lgb.Dataset(
        matrix(train_frame, plan.feature_columns),
        label=labels(train_frame, plan),
        feature_name=plan.feature_columns,
        categorical_feature=plan.categorical_features,
        params={"verbosity": -1},
        free_raw_data=False,
    )
    X_valid, y_valid = matrix(valid_frame, plan.feature_columns), labels(valid_frame, plan)
    dvalid = lgb.Dataset(X_valid, label=y_valid, reference=dtrain)
    curve: dict = {}
    booster = lgb.train(
        _worker_params(plan, get_network_params(), config["threads"]),
        dtrain,
        num_boost_round=plan.num_boost_round,
        valid_sets=[dvalid],
        valid_names=["validation"],
        # No per-round RayTrainReportCallback: every ray.train.report is a barrier across the workers
        # (about 2 s each with Ray Train v2 here, 30x the training itself), and its end-of-training
        # checkpoint is never written when early stopping ends the run first. One report below
        # carries the best-iteration model in the callback's format instead.
        callbacks=[lgb.early_stopping(plan.early_stopping_rounds, verbose=False), lgb.record_evaluation(curve)],
    )
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    model_text = booster.model_to_string(num_iteration=best)
    read = WorkerRead(
        rank=rank,
        train_partitions=sorted(train_frame.get_column(PARTITION_COLUMN).unique().to_list()),
        validation_partitions=sorted(valid_frame.get_column(PARTITION_COLUMN).unique().to_list()),
        train_rows=train_frame.height,
        validation_rows=valid_frame.height,
        rows_without_target=frame.height - with_target.height,
        trees_sha256=trees_hash(model_text),
    )
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / f"{READS_PREFIX}{rank}.json").write_text(json.dumps(read.__dict__))
        if rank == 0:
            # the text model keeps the best iteration only, scored exactly as training.train scores it
            saved = lgb.Booster(model_str=model_text)
            metrics = score(plan.task, y_valid, predict(saved, X_valid, plan.task))
            (Path(folder) / MODEL_FILE).write_text(model_text)
            summary = {
                "best_iteration": best,
                "validation_metrics": metrics,
                "curve": {m: list(v) for m, v in curve.get("validation", {}).items()},
            }
            (Path(folder) / SUMMARY_FILE).write_text(json.dumps(summary))
        ray.train.report(
            {"best_iteration": best, **{f"validation_{k}": v for k, v in metrics.items()}},
            checkpoint=Checkpoint.from_directory(folder),
        )


class RayCapacityError(RuntimeError):
    """The Ray cluster cannot fit the declared training workers."""


def _data_error(err: BaseException) -> TrainingDataError | None:
    """A TrainingDataError raised in a worker, unwrapped from Ray's exceptions."""
    failures = getattr(err, "worker_failures", None) or {}
    pending: list[BaseException | None] = [err, *failures.values()]
    seen: set[int] = set()
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TrainingDataError):
            return e
        pending.extend([e.__cause__, getattr(e, "cause", None)])
    return None


def check_capacity(
    num_workers: int,
    resources: dict,
    workers_setting: str = "training.ray_workers",
    size_setting: str = "training.num_threads",
) -> None:
    """Fail now, naming the settings, when a fixed-size Ray cluster can never fit the workers.

    Ray Train otherwise waits for the resources forever and the training step hangs. Only a
    cluster without an autoscaler is judged (a local instance, `RAY_ADDRESS` unset); on a
    KubeRay cluster the autoscaler may still add the nodes.
    """
    import ray

    if os.environ.get("RAY_ADDRESS"):
        return
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    total = ray.cluster_resources()
    for name, amount in resources.items():
        needed = num_workers * float(amount)
        if float(total.get(name, 0.0)) < needed:
            raise RayCapacityError(
                f"{workers_setting}={num_workers} workers x {amount} {name} ({size_setting}) need {needed:g} {name}, "
                f"but the local Ray instance has {float(total.get(name, 0.0)):g}: lower {workers_setting} or "
                f"{size_setting}, or set RAY_ADDRESS to a larger cluster"
            )


def train_on_ray(
    plan: TrainingPlan,
    delta: DeltaLakeResource,
    num_workers: int,
    resources_per_worker: dict | None = None,
    storage_path: str | None = None,
) -> RayTrainedModel:
    """Train the plan's model with Ray Train's LightGBMTrainer on `num_workers` workers.

    Connects to the Ray cluster of the process (``ray.init`` done by the caller, or
    ``RAY_ADDRESS``; otherwise Ray Train starts a local instance). `storage_path` is
    where Ray Train keeps the run and its checkpoint: it must be storage every node
    sees on a multi-node cluster (``s3://...`` uses the Delta tables' object-store
    options); by default a temporary folder, removed after the model is loaded.
    """
    import ray.train
    from ray.train.lightgbm import LightGBMTrainer, RayTrainReportCallback

    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    resources = dict(resources_per_worker or {"CPU": 1})
    threads = max(1, int(resources.get("CPU", 1)))
    train_days, validation_days = window_partitions(plan, delta)
    if len(train_days) < num_workers:
        raise TrainingDataError(
            f"pipeline {plan.pipeline}: {len(train_days)} training days in {plan.partition_start}..{plan.validation_start} "
            f"cannot be shared by {num_workers} Ray workers (each worker trains on whole days)"
        )
    if not validation_days:
        raise TrainingDataError(f"pipeline {plan.pipeline}: no featurized validation days in {plan.validation_start}..{plan.holdout_start}")
    check_capacity(num_workers, resources)
    shares = assign_partitions(train_days, num_workers)
    options = HiddenOptions(delta.resolved_storage_options())

    def train_loop_per_worker(config: dict) -> None:
        _train_worker(config, options)

    temporary = storage_path is None
    storage = storage_path or tempfile.mkdtemp(prefix="mlops-ray-train-")
    filesystem = None
    if is_object_store(storage):
        filesystem, storage = pyarrow_filesystem(storage, delta.storage_options)
    trainer = LightGBMTrainer(
        train_loop_per_worker,
        # no secrets here: Ray Train exports the loop config to its run state (dashboard)
        train_loop_config={
            "plan": plan.to_json(),
            "shares": shares,
            "validation_partitions": validation_days,
            "threads": threads,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=False, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"{plan.pipeline}-lightgbm-{uuid.uuid4().hex[:8]}",
            storage_path=storage,
            storage_filesystem=filesystem,
        ),
    )
    try:
        try:
            result = trainer.fit()
        except Exception as err:
            data_error = _data_error(err)
            if data_error is not None:
                raise TrainingDataError(str(data_error)) from err
            raise
        if result.checkpoint is None:
            raise RuntimeError(f"Ray Train run {result.path} reported no checkpoint")
        booster = RayTrainReportCallback.get_model(result.checkpoint, MODEL_FILE)
        with result.checkpoint.as_directory() as folder:
            summary = json.loads((Path(folder) / SUMMARY_FILE).read_text())
            reads = {}
            for path in Path(folder).glob(f"{READS_PREFIX}*.json"):
                read = WorkerRead(**json.loads(path.read_text()))
                reads[read.rank] = read
    finally:
        if temporary:
            shutil.rmtree(storage, ignore_errors=True)
    if sorted(reads) != list(range(num_workers)):
        raise RuntimeError(f"Ray Train checkpoint holds read records of ranks {sorted(reads)}, expected 0..{num_workers - 1}")
    hashes = {r.trees_sha256 for r in reads.values()}
    if len(hashes) != 1:
        raise RuntimeError("Ray Train workers ended with different trees: LightGBM did not train data-parallel")
    return RayTrainedModel(
        booster=booster,
        best_iteration=int(summary["best_iteration"]),
        validation_metrics={k: float(v) for k, v in summary["validation_metrics"].items()},
        curve=summary["curve"],
        num_workers=num_workers,
        worker_reads=reads,
        checkpoint_path="" if temporary else result.checkpoint.path,
    )


__all__ = ["RayTrainedModel", "WorkerRead", "assign_partitions", "train_on_ray", "window_partitions"]
