"""Batch scoring of a range of days on Ray Data (two workers) against the in-process path.

One champion, one features table; `batch_scores` over the same seven days runs once with
`batch_scoring.engine: local` and once with `engine: ray`: every row, every prediction and
the model version must be equal, and both commit the whole range at once.
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import polars as pl

from mlops_assets.core.names import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mlops_assets.models import training
from resources import registered_models
from tests.support.models import flights_variant, train

FIRST, LAST = "2013-01-29", "2013-02-04"


def score_range(plat, first: str = FIRST, last: str = LAST, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    return plat.defs.resolve_job_def("__ASSET_JOB").execute_in_process(
        instance=plat.instance,
        asset_selection=[dg.AssetKey(["flights", "batch_scores"])],
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
        raise_on_error=raise_on_error,
    )


def scored_table(plat) -> pl.DataFrame:
    return plat.delta.scan("flights", "batch_scores").collect().drop("scored_at").sort("_partition", "_source_row")


def test_ray_data_scores_a_range_exactly_as_the_dagster_step(model_home, local_ray):
    local = model_home.platform(flights_variant())
    assert train(local).success
    champ = registered_models.champion("flights", local.resources()["mlflow"])
    days = ["2013-01-29", "2013-01-30", "2013-01-31", "2013-02-01", "2013-02-02", "2013-02-03", "2013-02-04"]

    events = score_range(local).get_asset_materialization_events()
    assert sorted(e.partition for e in events) == days, "one materialization per day of the range"
    assert events[0].materialization.metadata["engine"].value == "local"
    assert events[0].materialization.metadata["partitions"].value == 7
    in_process = scored_table(local)
    history_before = len(local.delta.table("flights", "batch_scores").history())

    on_ray = model_home.platform(flights_variant(batch_scoring={"engine": "ray", "ray_workers": 2, "num_cpus": 0.5}))
    events = score_range(on_ray).get_asset_materialization_events()
    assert sorted(e.partition for e in events) == days
    assert events[0].materialization.metadata["engine"].value == "ray (2 workers)"
    assert len(on_ray.delta.table("flights", "batch_scores").history()) == history_before + 1, "one commit for the range"
    distributed = scored_table(on_ray)

    assert distributed.columns == in_process.columns
    assert distributed.height == in_process.height > 0
    assert sorted(distributed.get_column("_partition").unique()) == days
    assert distributed.equals(in_process), "Ray Data and the Dagster step scored different rows or values"

    # and both are the champion's own predictions on the features rows
    features = local.delta.scan("flights", "features").filter(pl.col("_partition").is_between(pl.lit(FIRST), pl.lit(LAST))).collect()
    features = features.sort("_partition", "_source_row")
    booster = registered_models.load_booster(local.resources()["mlflow"], "flights", champ.version)
    expected = booster.predict(training.matrix(features, champ.plan.feature_columns))
    assert np.array_equal(distributed.get_column("prediction").to_numpy(), expected)

    # a range reaching past the featurized days fails before scoring, naming the first missing day
    version = on_ray.delta.version("flights", "batch_scores")
    result = score_range(on_ray, "2013-02-03", "2013-02-06", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no features for partition 2013-02-05 (and 1 more): ingest it first" in str(failure.event_specific_data.error)
    assert on_ray.delta.version("flights", "batch_scores") == version, "nothing was written"
