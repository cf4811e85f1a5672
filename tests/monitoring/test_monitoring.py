"""Monitoring: drift against the champion's recorded training window, batch scores, live
performance and the sensors that ask for retraining, on real Delta, MLflow and Dagster."""

import json
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from mlops_assets.core.names import PROFILES
from mlops_assets.defs.flights.upstream import land_days
from mlops_assets.models import training
from resources import registered_models
from sensors.retrain_sensors import retrain_blocker
from tests.support.models import (
    TRAIN_END,
    flights_variant,
    sensor_tick,
    train,
)


def test_drift_scores_and_retraining_requests(model_home):
    drift = {
        "share_threshold": 0.5,
        "key_columns": ["temp"],
        "new_partitions_to_retrain": 5,
        "cooldown_minutes": 0,
        "report_sample_rows": 2000,
    }
    decl = flights_variant(drift=drift)
    plat = model_home.platform(decl)
    assert sensor_tick(plat, "flights_monitor_sensor").skip_message == "no champion yet"
    assert train(plat).success
    champ = registered_models.champion("flights", plat.resources()["mlflow"])
    assert champ.version == 1 and champ.plan.partition_end == TRAIN_END

    # monitoring waits while a training run is queued or running (it would compete for the cores)
    queued = plat.instance.create_run_for_job(job_def=plat.defs.resolve_job_def("flights_train"))
    waiting = sensor_tick(plat, "flights_monitor_sensor")
    assert not waiting.run_requests and "7 feature day(s) wait for monitoring: a flights_train run" in waiting.skip_message
    plat.instance.delete_run(queued.run_id)

    # every featurized day after the champion's window is monitored, once
    tick = sensor_tick(plat, "flights_monitor_sensor")
    (burst,) = tick.run_requests  # the seven contiguous days are one monitoring run over their range
    assert (burst.partition_key_range.start, burst.partition_key_range.end) == ("2013-01-29", "2013-02-04")
    done = sensor_tick(plat, "flights_monitor_sensor", tick.cursor)
    assert (
        not done.run_requests and done.skip_message == "no new feature days to check after champion v1's window (2013-01-28); 7 asked for"
    )
    # a monitoring run that failed is asked for again, for the same days (sensors/run_attempts.py)
    failed = plat.failed(burst)
    (retry,) = sensor_tick(plat, "flights_monitor_sensor", tick.cursor).run_requests
    assert retry.run_key == f"{burst.run_key}~retry-1" and retry.partition_key_range == burst.partition_key_range
    assert retry.tags["mlops/reason"] == f"retry 1 of 3: run {failed.run_id} failure"

    # new data: 7 new days >= 5 declared
    tick = sensor_tick(plat, "flights_new_data_sensor")
    (request,) = tick.run_requests
    assert request.job_name == "flights_train" and request.tags["mlops/trigger"] == "new_data"
    assert "7 new featurized days 2013-01-29..2013-02-04" in request.tags["mlops/reason"]
    assert json.loads(tick.cursor) == {"requested_through": "2013-02-04", "asked": {request.run_key: [1, request.tags["mlops/reason"]]}}
    assert "0 new featurized days" in sensor_tick(plat, "flights_new_data_sensor", tick.cursor).skip_message

    # a winter day against the winter champion
    assert plat.run("flights_monitor", "2013-01-29").success
    scores = plat.delta.read_partitions("flights", "batch_scores", ["2013-01-29"]).sort("_source_row")
    features = plat.delta.read_partitions("flights", "features", ["2013-01-29"]).sort("_source_row")
    booster = registered_models.load_booster(plat.resources()["mlflow"], "flights", 1)
    expected = booster.predict(training.matrix(features, champ.plan.feature_columns))
    assert scores.height == features.height and scores.get_column("model_version").unique().to_list() == [1]
    assert np.array_equal(scores.get_column("prediction").to_numpy(), expected)

    # summer lands: real seasonal drift in the weather and delays
    land_days(decl, plat.landing, date(2013, 7, 1), 1)
    plat.ingest("flights", ["2013-07-01"])
    run = plat.run("flights_monitor", "2013-07-01")
    drift_event = [e for e in run.get_asset_materialization_events() if e.asset_key.path[-1] == "feature_drift"][0]
    meta = drift_event.materialization.metadata
    assert meta["alert"].value is True and "temp" in meta["drifted_columns"].value

    metrics = plat.delta.scan("flights", "drift_metrics").collect()
    winter = metrics.filter(pl.col("window") == "2013-01-29")
    summer = metrics.filter(pl.col("window") == "2013-07-01")
    from mlflow.artifacts import download_artifacts

    # the report's one copy is on the champion's MLflow run, named in drift_metrics; its page in the MLflow UI is linked
    artifact, run_id = summer.get_column("html_report")[0], plat.resources()["mlflow"].client().get_model_version("flights", "1").run_id
    assert artifact == f"runs:/{run_id}/drift_reports/feature_drift_2013-07-01_v1.html"
    assert meta["report_url"].value.endswith(f"/runs/{run_id}/artifacts/drift_reports/feature_drift_2013-07-01_v1.html")
    assert (
        Path(download_artifacts(artifact, tracking_uri=plat.resources()["mlflow"].resolved_tracking_uri())).read_text().count("<html") >= 1
    )
    assert set(winter.get_column("column")) == set(champ.plan.feature_columns)
    assert summer.get_column("drift_share")[0] > winter.get_column("drift_share")[0]
    assert summer.filter(pl.col("column") == "temp").get_column("method").item() == "Wasserstein distance (normed)"
    assert plat.delta.scan("flights", PROFILES).collect().height == 1, "the reference profile is computed once"

    tick = sensor_tick(plat, "flights_drift_sensor")
    (request,) = tick.run_requests
    assert request.tags["mlops/trigger"] == "drift"
    assert request.run_key == "drift:v1:features:2013-07-01"
    assert "key columns drifted: temp" in request.tags["mlops/reason"]
    # a drift retraining that failed is asked for again, under a new run key (it was dropped: with no later day
    # landing, no new alert asked again), and it holds back no cooldown (the failed one is no retraining)
    failed = plat.failed(request)
    (retry,) = sensor_tick(plat, "flights_drift_sensor", tick.cursor).run_requests
    assert retry.run_key == f"{request.run_key}~retry-1" and retry.tags["mlops/trigger"] == "drift"
    assert retry.tags["mlops/reason"] == f"retry 1 of 3: run {failed.run_id} failure"

    # the drift sensor's cooldown counts drift-triggered trainings only: counted from any, the first model (the
    # new-data sensor's, minutes before) held the README's walk-away retraining back for half an hour
    cooling = model_home.platform(flights_variant(drift={**drift, "cooldown_minutes": 60}))
    assert sensor_tick(cooling, "flights_drift_sensor").run_requests
    assert "cooldown: the last flights_train run started" in sensor_tick(cooling, "flights_new_data_sensor").skip_message

    # a drift-triggered training just started: a declared cooldown holds the next requests back
    assert train(plat, tags={"mlops/trigger": "drift"}).success
    blocked = sensor_tick(cooling, "flights_new_data_sensor")
    assert "cooldown: the last flights_train run started" in blocked.skip_message
    drift_blocker = retrain_blocker(cooling.instance, cooling.declarations["flights"], "flights_train", "drift")
    assert drift_blocker.startswith("cooldown: the last drift-triggered flights_train run started")  # type: ignore[union-attr]

    perf = plat.defs.resolve_job_def("__ASSET_JOB").execute_in_process(
        instance=plat.instance, asset_selection=[dg.AssetKey(["flights", "live_performance"])]
    )
    table = plat.delta.scan("flights", "live_performance").collect()
    day = table.filter(pl.col("day") == "2013-01-29")
    labelled = scores.join(features.select("_source_row", "arr_delay"), on="_source_row").filter(pl.col("arr_delay").is_not_null())
    errors = (labelled.get_column("prediction") - labelled.get_column("arr_delay")).to_numpy()
    assert day.get_column("mae").item() == pytest.approx(float(np.mean(np.abs(errors))), rel=1e-12)
    assert perf.success

    # during a rollout each day is scored by both versions; the live-metric guard compares them on those rows
    from mlops_assets.core.declaration import RolloutGuardsSpec
    from resources import rollouts
    from resources.audit_log import AuditEvent, history, record

    champion = registered_models.champion("flights", plat.resources()["mlflow"]).version
    candidate = 2 if champion == 1 else 1
    steps = rollouts.step_metrics(0, [0.5, 1.0])
    record(plat.delta, "flights", AuditEvent("rollout_start", candidate, actor="t", reason="t", from_version=champion, metrics=steps))
    assert plat.run("flights_monitor", "2013-01-29").success
    both = plat.delta.read_partitions("flights", "batch_scores", ["2013-01-29"])
    assert sorted(both.get_column("model_version").unique().to_list()) == [1, 2] and both.height == 2 * features.height
    labelled = both.join(features.select("_source_row", "arr_delay"), on="_source_row").filter(pl.col("arr_delay").is_not_null())
    mae = {
        v: float((g.get_column("prediction") - g.get_column("arr_delay")).abs().mean()) for (v,), g in labelled.group_by("model_version")
    }
    state = rollouts.current(history(plat.delta, "flights"))
    signals = rollouts.read_signals(plat.delta, state, RolloutGuardsSpec(min_rows=50), "regression", "arr_delay")
    reading = next(r for r in signals.readings if r.name == "live_metric_regression")
    assert reading.value == pytest.approx((mae[candidate] - mae[champion]) / mae[champion], rel=1e-9)
    record(plat.delta, "flights", AuditEvent("rollout_abort", candidate, actor="t", reason="end of test"))


def test_monitoring_without_a_champion_fails_clearly(model_home):
    plat = model_home.platform(flights_variant())
    result = plat.run("flights_monitor", "2013-01-29", raise_on_error=False)
    assert not result.success
    messages = [
        e.step_failure_data.user_failure_data.description
        for e in result.all_events
        if e.is_step_failure and e.step_failure_data.user_failure_data
    ]
    assert any("has no champion model yet" in m for m in messages)


def test_a_range_run_links_each_partitions_drift_report(model_home):
    """A drift run over one partition linked its report (report_url); a run over a range linked none, though it
    rendered and logged one report per partition. Each partition's event now carries its own figures and link."""
    from mlops_assets.core.names import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    plat = model_home.platform(flights_variant(drift={"report_sample_rows": 500}))
    assert train(plat).success
    run_id = plat.resources()["mlflow"].client().get_model_version("flights", "1").run_id
    result = plat.defs.resolve_job_def("flights_monitor").execute_in_process(
        instance=plat.instance, tags={ASSET_PARTITION_RANGE_START_TAG: "2013-01-29", ASSET_PARTITION_RANGE_END_TAG: "2013-01-30"}
    )
    events = {m.partition: m.metadata for m in result.asset_materializations_for_node("flights__feature_drift")}
    assert set(events) == {"2013-01-29", "2013-01-30"}
    reports = dict(plat.delta.scan("flights", "drift_metrics").select("window", "html_report").unique().collect().iter_rows())
    for day, meta in events.items():
        assert meta["partition"].value == day
        assert meta["rows"].value == plat.delta.read_partitions("flights", "features", [day]).height
        assert meta["report_url"].value.endswith(f"/runs/{run_id}/artifacts/drift_reports/feature_drift_{day}_v1.html")
        assert reports[day] == f"runs:/{run_id}/drift_reports/feature_drift_{day}_v1.html"
    assert events["2013-01-29"]["range_rows"].value == sum(m["rows"].value for m in events.values())


def test_live_performance_counts_days_not_version_days(model_home):
    """During a rollout two versions score each day: `days` counted the table's version x day rows, so two days
    scored by two versions read as four."""
    plat = model_home.platform(flights_variant())
    scored = {}
    for day in ("2013-01-29", "2013-01-30"):
        rows = plat.delta.read_partitions("flights", "features", [day]).select("_partition", "_source_row")
        scored[day] = pl.concat([rows.with_columns(pl.lit(v).alias("model_version"), pl.lit(10.0).alias("prediction")) for v in (1, 2)])
    plat.delta.write_partitions("flights", "batch_scores", scored, "test")
    result = plat.defs.resolve_job_def("__ASSET_JOB").execute_in_process(
        instance=plat.instance, asset_selection=[dg.AssetKey(["flights", "live_performance"])]
    )
    table = plat.delta.scan("flights", "live_performance").collect()
    assert table.height == 4
    assert result.asset_materializations_for_node("flights__live_performance")[0].metadata["days"].value == 2
