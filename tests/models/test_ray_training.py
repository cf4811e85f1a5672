"""Distributed LightGBM training on a local Ray instance with two workers, against the single-process path.

Both paths train the same plan (the flights window at one Delta version, small
settings); the Ray path's workers read their own training days from the Delta
table themselves. The hold-out quality must match within a tolerance, the
booster must be a plain LightGBM model over the plan's feature columns, each
worker must have read exactly its round-robin share of the training days, and
the trees must have been grown from all workers' rows (data-parallel), not from
one worker's half.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import lightgbm as lgb
import numpy as np
import pytest
import ray

from mlops_assets.core.lineage import TrainingPlan
from mlops_assets.core.metrics import score
from mlops_assets.core.names import FEATURES
from mlops_assets.models import training
from mlops_assets.models.ray_training import (
    RayTrainedModel,
    assign_partitions,
    train_on_ray,
    window_partitions,
)
from resources.delta_lake import DeltaLakeResource, pyarrow_filesystem
from tests.support import models as model_fixtures
from tests.support.platform import Platform

WORKERS = 2
HOLDOUT_TOLERANCE = 0.05  # relative, on hold-out MAE and RMSE


@dataclass
class BothPaths:
    plan: TrainingPlan
    data: training.TrainingData
    local: training.TrainedModel
    distributed: RayTrainedModel  # trained from the same table copied to an object store (below)
    distributed_plan: TrainingPlan
    checkpoint_keys: list[str]


@pytest.fixture(scope="module")
def both(flights_ingested: Platform, local_ray, tmp_path_factory) -> Iterator[BothPaths]:
    """The single-process path on the local table, and Ray workers on the same table on S3 (moto on
    loopback): one Ray Train run serves every comparison below. The credentials are only in the
    resource's storage_options, not in any environment the workers could fall back on; the run's
    checkpoint also goes to the object store."""
    import pyarrow.fs as pafs

    from tests.support.object_store import moto_s3_server

    decl = model_fixtures.flights_variant()
    delta = flights_ingested.delta
    plan = training.plan_training(decl, delta)
    data = training.prepare(training.read_window(plan, delta), plan, decl.training.min_rows)
    started = time.perf_counter()
    local = training.train(plan, data)
    local_s = time.perf_counter() - started
    with moto_s3_server(tmp_path_factory.mktemp("moto_ray")) as s3:
        explicit = {k.lower(): v for k, v in s3.env().items() if k not in ("AWS_ENDPOINT_URL",)}
        explicit["aws_endpoint_url"] = s3.endpoint
        s3_delta = DeltaLakeResource(root=f"s3://{s3.bucket}/ray/delta", storage_options=explicit)
        fs, _ = pyarrow_filesystem(s3_delta.root_uri(), explicit)
        pafs.copy_files(delta.table_uri("flights", FEATURES), f"{s3.bucket}/ray/delta/flights/{FEATURES}", destination_filesystem=fs)
        s3_plan = training.plan_training(decl, s3_delta)
        started = time.perf_counter()
        distributed = train_on_ray(s3_plan, s3_delta, num_workers=WORKERS, storage_path=f"s3://{s3.bucket}/ray/runs")
        print(f"single-process training {local_s:.1f}s; Ray x{WORKERS} {time.perf_counter() - started:.1f}s")
        yield BothPaths(plan, data, local, distributed, s3_plan, s3.keys("ray/runs/"))


def _holdout(model: training.TrainedModel, both: BothPaths) -> dict[str, float]:
    return score(both.plan.task, both.data.holdout.y, training.predict(model.booster, both.data.holdout.X, both.plan.task))


def test_holdout_quality_matches_the_single_process_path(both: BothPaths):
    local, distributed = _holdout(both.local, both), _holdout(both.distributed, both)
    print(
        f"hold-out local {local} / ray x{WORKERS} {distributed}; best iteration {both.local.best_iteration} / {both.distributed.best_iteration}"
    )
    for name in ("mae", "rmse"):
        assert distributed[name] == pytest.approx(local[name], rel=HOLDOUT_TOLERANCE), name
    # and it learned something: far better than predicting the training mean
    baseline = score("regression", both.data.holdout.y, np.full(both.data.holdout.rows, both.data.train.y.mean()))
    assert distributed["mae"] < 0.9 * baseline["mae"]


def test_booster_is_a_plain_lightgbm_model_over_the_plan_columns(both: BothPaths):
    model = both.distributed
    assert type(model.booster) is lgb.Booster
    assert model.booster.feature_name() == both.plan.feature_columns
    # LightGBM's text format round-trips, and keeps the best iteration only (as training.train registers it)
    reloaded = lgb.Booster(model_str=model.booster.model_to_string())
    assert reloaded.current_iteration() == model.best_iteration
    assert 1 <= model.best_iteration <= both.plan.num_boost_round
    predictions = training.predict(reloaded, both.data.holdout.X, both.plan.task)
    assert predictions.shape == (both.data.holdout.rows,) and np.isfinite(predictions).all()
    # the reported validation metrics are what training.train would compute for this booster
    expected = score(both.plan.task, both.data.validation.y, training.predict(model.booster, both.data.validation.X, both.plan.task))
    assert model.validation_metrics.keys() == both.local.validation_metrics.keys()
    for name, value in expected.items():
        assert model.validation_metrics[name] == pytest.approx(value, rel=1e-9), name
    assert len(model.curve["l1"]) >= model.best_iteration


def test_each_worker_read_only_its_own_days(both: BothPaths, flights_ingested: Platform):
    reads = both.distributed.worker_reads
    train_days, validation_days = window_partitions(both.plan, flights_ingested.delta)
    assert train_days == both.data.train.partitions and validation_days == both.data.validation.partitions
    shares = assign_partitions(train_days, WORKERS)
    assert sorted(reads) == list(range(WORKERS))
    for rank, read in reads.items():
        assert read.train_partitions == shares[rank] == train_days[rank::WORKERS]
        assert read.validation_partitions == validation_days
        assert not set(read.train_partitions) & set(both.data.holdout.partitions)
    assert not set(reads[0].train_partitions) & set(reads[1].train_partitions)
    assert sorted(reads[0].train_partitions + reads[1].train_partitions) == train_days
    # every training row with a target, each read by exactly one worker
    assert sum(r.train_rows for r in reads.values()) == both.distributed.train_rows == both.data.train.rows
    assert all(0 < r.train_rows < both.data.train.rows for r in reads.values())
    assert all(r.validation_rows == both.data.validation.rows for r in reads.values())


def test_trees_grew_from_all_workers_rows(both: BothPaths):
    """Data-parallel, not N independent models: the root of each tree splits all training rows."""
    model = both.distributed
    assert len({r.trees_sha256 for r in model.worker_reads.values()}) == 1
    trees = model.booster.dump_model()["tree_info"]
    assert trees[0]["tree_structure"]["internal_count"] == both.data.train.rows
    largest_share = max(r.train_rows for r in model.worker_reads.values())
    assert largest_share < both.data.train.rows


def test_more_workers_than_training_days_is_a_clear_error(flights_ingested: Platform):
    plan = training.plan_training(model_fixtures.flights_variant(), flights_ingested.delta)
    train_days, _ = window_partitions(plan, flights_ingested.delta)
    with pytest.raises(training.TrainingDataError, match=f"{len(train_days)} training days .* cannot be shared by"):
        train_on_ray(plan, flights_ingested.delta, num_workers=len(train_days) + 1)
    with pytest.raises(ValueError, match="at least 1"):
        train_on_ray(plan, flights_ingested.delta, num_workers=0)


def test_a_worker_data_error_reaches_the_caller_as_a_training_data_error(flights_ingested: Platform, local_ray):
    """Raised inside a Ray worker (labels outside the declared classes), unwrapped from Ray's WorkerGroupError."""
    plan = training.plan_training(model_fixtures.flights_variant(), flights_ingested.delta)
    wrong = replace(plan, task="binary", classes=["on time", "late"])
    with pytest.raises(training.TrainingDataError, match="outside the declared classes"):
        train_on_ray(wrong, flights_ingested.delta, num_workers=WORKERS)


def test_workers_read_an_object_store_table_with_the_resource_options(both: BothPaths):
    """The workers opened the S3 copy with the options the resource resolves (the comparisons above are
    of that run), and the Ray run's checkpoint is on the object store too."""
    assert both.distributed_plan.features_table.startswith("s3://")
    assert both.distributed_plan.features_version == both.plan.features_version
    assert both.distributed_plan.feature_columns == both.plan.feature_columns
    assert both.distributed.checkpoint_path and any(k.endswith("/model.txt") for k in both.checkpoint_keys)


def test_model_asset_trains_on_ray_with_the_same_lineage_and_gates(local_ray, model_home):
    """The per-pipeline switch: same asset, tracking, registry lineage and gates; reproducible on Ray too."""
    from mlops_assets.models.reproduce import reproduce
    from tests.support.models import train

    plat = model_home.platform(model_fixtures.flights_variant(training={"engine": "ray", "ray_workers": WORKERS, "num_threads": 1}))
    result = train(plat)
    assert result.success
    model_event = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "model"][0]
    assert model_event.materialization.metadata["training_engine"].value == f"ray ({WORKERS} workers)"
    mlflow = plat.resources()["mlflow"]
    version = mlflow.client().get_model_version_by_alias("flights", "champion")
    assert version.tags["mlops.training_engine"] == "ray" and version.tags["mlops.ray_workers"] == str(WORKERS)
    assert {c.check_name for c in result.get_asset_check_evaluations() if c.passed} >= {"quality_floors", "no_regression", "data_checks"}
    again = reproduce("flights", version.version, plat.delta, mlflow)
    assert again.comparison.differing == 0, again.report()


def test_workers_that_can_never_fit_fail_at_once_naming_the_settings(local_ray, monkeypatch):
    """Ray Train would wait forever for CPUs a fixed local instance does not have."""
    from mlops_assets.models.ray_training import RayCapacityError, check_capacity

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cpus = ray.cluster_resources()["CPU"]  # the session's shared instance
    check_capacity(WORKERS, {"CPU": cpus / WORKERS})  # fits exactly
    per = cpus / WORKERS + 1
    with pytest.raises(
        RayCapacityError, match=rf"training.ray_workers=2 workers x {per:g}(\.0)? CPU .* need {WORKERS * per:g} CPU.* has {cpus:g}"
    ):
        check_capacity(WORKERS, {"CPU": per})
