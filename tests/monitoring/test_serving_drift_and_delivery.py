"""Serving drift/skew from the prediction log, and delivery metrics from the audit log and run history."""

import time
from datetime import UTC, date

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.core.declaration import DeclarationError
from mlops_assets.core.names import PREDICTION_LOG_PROPERTIES
from mlops_assets.defs.flights.upstream import land_days
from mlops_assets.monitoring.serving_drift import appended_bounds, log_window, with_earlier_rows
from resources import registered_models
from serving.prediction_log import log_rows
from tests.support.models import (
    flights_variant,
    sensor_tick,
    train,
)


def served_log(plat, day: str, version: int, plan) -> pl.DataFrame:
    """What the serving layer logs for a day of requests (its own row builder; Ray is not under test here)."""
    return logged(plat.delta.read_partitions("flights", "features", [day]), version, plan, f"req-{day}")


def logged(features: pl.DataFrame, version: int, plan, request_id: str) -> pl.DataFrame:
    """What the serving layer logs for these rows, answered by `version`."""
    return log_rows(
        features=features.select(plan.feature_columns),
        result={"predictions": [0.0] * features.height},
        pipeline="flights",
        model_version=version,
        role="champion",
        served=True,
        request_id=request_id,
        received_at=time.time(),
    )


def materialize(plat, key: list[str]) -> dg.ExecuteInProcessResult:
    return plat.defs.resolve_job_def("__ASSET_JOB").execute_in_process(instance=plat.instance, asset_selection=[dg.AssetKey(key)])


def test_serving_skew_and_delivery_metrics(model_home):
    decl = flights_variant(drift={"serving_window_rows": 1000, "html_report": False, "cooldown_minutes": 0, "serving_settle_seconds": 0})
    plat = model_home.platform(decl)
    land_days(decl, plat.landing, date(2013, 1, 28), 1)
    plat.ingest("flights", ["2013-01-28"])  # so the instance knows when the window's newest day landed
    assert train(plat).success
    champ = registered_models.champion("flights", plat.resources()["mlflow"])
    empty = plat.defs.resolve_job_def("__ASSET_JOB").execute_in_process(
        instance=plat.instance, asset_selection=[dg.AssetKey(["flights", "serving_drift"])], raise_on_error=False
    )
    assert not empty.success
    assert any(
        "no served predictions appended to the log" in (e.step_failure_data.user_failure_data.description or "")
        for e in empty.all_events
        if e.is_step_failure and e.step_failure_data.user_failure_data
    )
    assert "0 served predictions" in sensor_tick(plat, "flights_serving_drift_sensor").skip_message
    for day in ("2013-01-29", "2013-01-30"):
        plat.delta.append("flights", "prediction_log", served_log(plat, day, champ.version, champ.plan))
    # shadow rows are the challenger's: never counted as served traffic
    shadow = served_log(plat, "2013-01-31", champ.version, champ.plan).with_columns(
        pl.lit(False).alias("served"), pl.lit("shadow").alias("role")
    )
    plat.delta.append("flights", "prediction_log", shadow)

    tick = sensor_tick(plat, "flights_serving_drift_sensor")
    (request,) = tick.run_requests
    # the watermark moves only when a check succeeds: a failed check is asked for again, a few times
    failed = plat.failed(request)
    (retry,) = sensor_tick(plat, "flights_serving_drift_sensor").run_requests
    assert retry.run_key == f"{request.run_key}~retry-1" and retry.tags["mlops/reason"] == f"retry 1 of 3: run {failed.run_id} failure"
    logged_before = plat.delta.scan("flights", "prediction_log").collect().sort("request_id")
    result = plat.launch(retry)
    assert result.success
    meta = result.asset_materializations_for_node("flights__serving_drift")[0].metadata
    # the same run then compacts the log it read: its three appends' files as one, the rows the same, and the
    # table given the prediction log's properties (its log entries expire)
    compaction = result.asset_materializations_for_node("flights__prediction_log_compaction")[0].metadata
    assert compaction["files_before"].value == 3 and compaction["files_after"].value == 1
    assert_frame_equal(plat.delta.scan("flights", "prediction_log").collect().sort("request_id"), logged_before)
    assert plat.delta.table("flights", "prediction_log").metadata().configuration == PREDICTION_LOG_PROPERTIES
    served_rows = sum(plat.delta.read_partitions("flights", "features", [d]).height for d in ("2013-01-29", "2013-01-30"))
    assert meta["rows"].value == served_rows
    rows = plat.delta.scan("flights", "drift_metrics").filter(pl.col("source") == "serving").collect()
    assert set(rows.get_column("model_version")) == {champ.version}
    assert set(rows.get_column("column")) == set(champ.plan.feature_columns)
    assert rows.get_column("rows").unique().to_list() == [served_rows]
    assert "0 served predictions" in sensor_tick(plat, "flights_serving_drift_sensor").skip_message, "the watermark moved"

    # delivery metrics: the sensor asks for them after each promotion decision or deployment, once
    tick = sensor_tick(plat, "flights_delivery_sensor")
    (request,) = tick.run_requests
    assert sensor_tick(plat, "flights_delivery_sensor", cursor=tick.cursor).skip_message == "no new promotion decision or deployment"
    # the serving layer reports the champion it serves through the deployment asset
    plat.instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=dg.AssetKey(["flights", "deployment"]), metadata={"champion_version": champ.version})
    )
    result = materialize(plat, ["flights", "delivery_metrics"])
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["deployments_total"].value == 1.0
    assert meta["promotion_decisions"].value == 1.0 and meta["change_failure_rate"].value == 0.0
    landed = plat.landing.stat("flights", "flights_2013-01-28.parquet").mtime_ns / 1e9
    served_at = plat.instance.get_latest_materialization_event(dg.AssetKey(["flights", "deployment"])).timestamp
    assert abs(meta["lead_time_last_s"].value - (served_at - landed)) < 1e-3
    assert sensor_tick(plat, "flights_delivery_sensor", cursor=tick.cursor).run_requests, "a deployment is news"
    history = plat.delta.scan("flights", "delivery_metrics").collect()
    assert history.height == 1 and history.get_column("deployments_total").item() == 1


def test_snapshots_with_and_without_values_append_to_one_history(tmp_path):
    """The first snapshot has no lead time or restore yet; later ones do: one typed history table."""
    from datetime import datetime

    from mlops_assets.monitoring.delivery_metrics import SNAPSHOT_SCHEMA, snapshot_frame
    from resources.delta_lake import DeltaLakeResource

    delta = DeltaLakeResource(root=str(tmp_path))
    empty = {k: None for k in SNAPSHOT_SCHEMA} | {"computed_at": datetime.now(UTC), "deployments_total": 0}
    full = {k: 1.5 if v == pl.Float64 else 1 for k, v in SNAPSHOT_SCHEMA.items()} | {"computed_at": datetime.now(UTC)}
    delta.append("flights", "delivery_metrics", snapshot_frame(empty), "run-1")
    delta.append("flights", "delivery_metrics", snapshot_frame(full), "run-2")
    history = delta.scan("flights", "delivery_metrics").collect().sort("deployments_total")
    assert history.height == 2
    assert history.get_column("time_to_restore_median_s").to_list() == [None, 1.5]


def test_rollouts_count_in_delivery_metrics_and_a_rollback_is_a_failed_change_with_its_restore_time(tmp_path):
    from datetime import datetime

    from mlops_assets.monitoring.delivery_metrics import compute
    from resources.audit_log import AuditEvent, record
    from resources.delta_lake import DeltaLakeResource
    from resources.mlflow_registry import MlflowRegistryResource

    decl = flights_variant()
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    steps = {"step": 0, "steps": [0.5, 1.0], "share": 0.5}
    record(
        delta,
        "flights",
        AuditEvent("promote", 1, actor="t", reason="first", alias="champion"),
        AuditEvent("rollout_start", 2, actor="t", reason="gates passed", alias="challenger", from_version=1, metrics=steps),
        AuditEvent("rollout_complete", 2, actor="t", reason="baked", alias="challenger", from_version=1),
        AuditEvent("promote", 2, actor="t", reason="rollout completed", alias="champion", from_version=1),
        AuditEvent("rollout_start", 3, actor="t", reason="gates passed", alias="challenger", from_version=2, metrics=steps),
        AuditEvent(
            "rollout_rollback", 3, actor="t", reason="guard", alias="challenger", from_version=2, failed_gates=("error_rate_increase",),
            metrics={"guard": "error_rate_increase", "value": 1.0, "threshold": 0.01, "exposed_s": 42.0},
        ),
    )  # fmt: skip
    with dg.instance_for_test() as instance:
        snapshot, _ = compute(
            decl, instance, delta, MlflowRegistryResource(tracking_uri=f"sqlite:///{tmp_path}/m.db"),
            dg.AssetKey(["flights", "deployment"]), "flights_train", datetime.now(UTC),
        )  # fmt: skip
    assert (snapshot["rollouts_started"], snapshot["rollouts_completed"], snapshot["rollouts_rolled_back"]) == (2, 1, 1)
    assert snapshot["promotion_decisions"] == 3 and snapshot["failed_changes"] == 1  # two promotions, one rollback
    assert snapshot["change_failure_rate"] == 1 / 3
    assert snapshot["rollback_time_to_restore_median_s"] == 42.0


def test_each_version_that_answered_gets_its_own_html_report(model_home):
    """A canary window holds two versions' answers: each is compared with its own training window, in its own
    Evidently report (they all linked the first version's report)."""
    drift = {
        "serving_window_rows": 10,
        "serving_min_rows": 10,
        "html_report": True,
        "report_sample_rows": 500,
        "cooldown_minutes": 0,
        "serving_settle_seconds": 0,
    }
    decl = flights_variant(drift=drift)
    plat = model_home.platform(decl)
    assert train(plat, end="2013-01-20").success and train(plat).success
    models = {v: registered_models.model_version("flights", plat.resources()["mlflow"], v) for v in (1, 2)}
    for version, day in ((1, "2013-01-21"), (2, "2013-01-22")):
        plat.delta.append("flights", "prediction_log", served_log(plat, day, version, models[version].plan))
    result = materialize(plat, ["flights", "serving_drift"])
    meta = result.asset_materializations_for_node("flights__serving_drift")[0].metadata
    urls = {v: meta[f"report_url_v{v}"].value for v in (1, 2)}
    assert urls[1] != urls[2] and urls[1].endswith("_v1.html") and urls[2].endswith("_v2.html")
    client = plat.resources()["mlflow"].client()
    runs = {v: client.get_model_version("flights", str(v)).run_id for v in (1, 2)}
    assert all(f"/runs/{runs[v]}/artifacts/drift_reports/" in urls[v] for v in (1, 2)), "each on its own version's run"
    rows = plat.delta.scan("flights", "drift_metrics").filter(pl.col("source") == "serving").collect()
    linked = dict(rows.select("model_version", "html_report").unique().iter_rows())
    assert linked == {v: f"runs:/{runs[v]}/drift_reports/{urls[v].rsplit('/', 1)[1]}" for v in (1, 2)}


def test_a_version_with_too_few_logged_rows_is_not_judged(model_home):
    """A canary's 18 logged rows were judged like a full window: on a sample that small nearly every column reads as
    drifted (rows drawn from the version's own training window raised an alert), so noise asked for a retraining.
    Below `drift.serving_min_rows` the version is named as not judged, and raises no alert."""
    drift = {"key_columns": [], "html_report": False, "cooldown_minutes": 0, "serving_settle_seconds": 0}
    decl = flights_variant(drift=drift)
    assert decl.drift.serving_min_rows == 500
    plat = model_home.platform(decl)
    assert train(plat, end="2013-01-20").success and train(plat).success
    models = {v: registered_models.model_version("flights", plat.resources()["mlflow"], v) for v in (1, 2)}

    def own_window(version: int, rows: int) -> pl.DataFrame:  # no drift at all: rows the version trained on
        plan = models[version].plan
        window = pl.date_range(date.fromisoformat(plan.partition_start), date.fromisoformat(plan.partition_end), eager=True)
        features = plat.delta.read_partitions("flights", "features", [d.isoformat() for d in window])
        return logged(features.sample(rows, seed=1), version, plan, f"req-v{version}")

    plat.delta.append("flights", "prediction_log", own_window(1, 800))  # the champion's share of the window
    plat.delta.append("flights", "prediction_log", own_window(2, 18))  # the canary's
    meta = materialize(plat, ["flights", "serving_drift"]).asset_materializations_for_node("flights__serving_drift")[0].metadata
    assert meta["alert"].value is False, meta["alert_reason"].value
    assert meta["not_judged"].value == "v2: not enough rows (18 of 500)"
    assert "| 2 | 18 |  | not enough rows (18 of 500) |" in meta["by_version"].value
    judged = plat.delta.scan("flights", "drift_metrics").filter(pl.col("source") == "serving").collect()
    assert judged.get_column("model_version").unique().to_list() == [1] and not judged.get_column("alert").any()
    assert "no new drift alert" in sensor_tick(plat, "flights_drift_sensor").skip_message

    # the canary's share of the next window is small again: it is judged on its newest 500 rows, earlier ones too
    plat.delta.append("flights", "prediction_log", own_window(1, 800))
    plat.delta.append("flights", "prediction_log", own_window(2, 490))
    meta = materialize(plat, ["flights", "serving_drift"]).asset_materializations_for_node("flights__serving_drift")[0].metadata
    assert meta["not_judged"].value == "none" and meta["rows"].value == 1290
    assert "| 2 | 500 |" in meta["by_version"].value
    canary = plat.delta.scan("flights", "drift_metrics").filter(pl.col("model_version") == 2).collect()
    assert canary.get_column("rows").unique().to_list() == [500]  # a row per column checked
    assert canary.get_column("window").unique().str.ends_with("with earlier rows: its newest 500").to_list() == [True]

    with pytest.raises(DeclarationError, match=r"serving_min_rows \(500\) is above serving_window_rows \(100\)"):
        flights_variant(drift={"serving_window_rows": 100})


def test_rows_a_replica_commits_after_a_check_are_read_by_the_next_one(model_home):
    """Replica B answered first but flushed after replica A, and after a check had read A's rows: by answer time the
    check's watermark was past B's rows, and no check ever read them. By append time the next check reads them."""
    from serving.prediction_log import PredictionLogger

    decl = flights_variant(
        drift={"serving_window_rows": 1, "serving_min_rows": 1, "html_report": False, "cooldown_minutes": 0, "serving_settle_seconds": 0}
    )
    plat = model_home.platform(decl)
    assert train(plat).success
    champ = registered_models.champion("flights", plat.resources()["mlflow"])
    replicas = [PredictionLogger(plat.delta, "flights", max_rows=100_000, flush_seconds=3600) for _ in range(2)]
    try:
        a, b = replicas
        b.log(served_log(plat, "2013-01-29", champ.version, champ.plan))  # answered first, still queued in replica B
        a.log(served_log(plat, "2013-01-30", champ.version, champ.plan))
        assert a.flush() > 0
        first = materialize(plat, ["flights", "serving_drift"]).asset_materializations_for_node("flights__serving_drift")[0]
        late = b.flush()  # B's flush lands after the check: its rows were answered before the check's watermark
        assert late > 0
        assert sensor_tick(plat, "flights_serving_drift_sensor").run_requests, "the sensor counts the late rows"
        second = materialize(plat, ["flights", "serving_drift"]).asset_materializations_for_node("flights__serving_drift")[0]
    finally:
        for logger in replicas:
            logger.close()
    assert first.metadata["rows"].value == plat.delta.read_partitions("flights", "features", ["2013-01-30"]).height
    assert second.metadata["rows"].value == late


def test_serving_drift_reads_rows_only_once_they_are_serving_settle_seconds_old(model_home):
    """Rows appended in the last `drift.serving_settle_seconds` may sit beside commits still landing: neither the
    sensor nor the check reads them yet (a watermark past them would skip those commits for good). Rows appended
    longer ago than that are read, and only they."""
    from datetime import datetime, timedelta

    from mlops_assets.core.names import APPENDED_AT

    decl = flights_variant(
        drift={"serving_window_rows": 1, "serving_min_rows": 1, "html_report": False, "cooldown_minutes": 0, "serving_settle_seconds": 3600}
    )
    plat = model_home.platform(decl)
    assert train(plat).success
    champ = registered_models.champion("flights", plat.resources()["mlflow"])

    def appended(day: str, at: datetime) -> pl.DataFrame:
        rows = served_log(plat, day, champ.version, champ.plan)
        return rows.with_columns(pl.lit(at, dtype=pl.Datetime("us", "UTC")).alias(APPENDED_AT))

    now = datetime.now(UTC)
    plat.delta.append("flights", "prediction_log", appended("2013-01-29", now))  # just appended: not settled
    tick = sensor_tick(plat, "flights_serving_drift_sensor")
    assert not tick.run_requests and "0 served predictions" in tick.skip_message
    unsettled = plat.defs.resolve_job_def("__ASSET_JOB").execute_in_process(
        instance=plat.instance, asset_selection=[dg.AssetKey(["flights", "serving_drift"])], raise_on_error=False
    )
    assert not unsettled.success
    assert any(
        "no served predictions appended to the log" in (e.step_failure_data.user_failure_data.description or "")
        and "(up to 3600 s ago)" in (e.step_failure_data.user_failure_data.description or "")
        for e in unsettled.all_events
        if e.is_step_failure and e.step_failure_data.user_failure_data
    )

    plat.delta.append("flights", "prediction_log", appended("2013-01-30", now - timedelta(hours=2)))  # settled
    settled = plat.delta.read_partitions("flights", "features", ["2013-01-30"]).height
    assert sensor_tick(plat, "flights_serving_drift_sensor").run_requests
    meta = materialize(plat, ["flights", "serving_drift"]).asset_materializations_for_node("flights__serving_drift")[0].metadata
    assert meta["rows"].value == settled


def test_a_drift_retraining_asked_for_again_is_one_restore_timed_from_the_first_request(tmp_path, monkeypatch):
    from datetime import datetime
    from types import SimpleNamespace

    from mlops_assets.monitoring import delivery_metrics
    from resources.delta_lake import DeltaLakeResource

    monkeypatch.setattr(
        delivery_metrics.registered_models, "model_version", lambda *_: SimpleNamespace(plan=SimpleNamespace(partition_end="2013-01-28"))
    )

    @dg.job(name="flights_train")
    def drift_retraining():
        dg.op(name="noop")(lambda: None)()

    deployment = dg.AssetKey(["flights", "deployment"])
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(deployment, metadata={"champion_version": 1}))
        for _ in range(3):  # the drift retraining, and two retries of it (its runs' outcome does not matter here)
            time.sleep(0.05)
            drift_retraining.execute_in_process(instance=instance, tags={"mlops/trigger": "drift"})
        time.sleep(0.05)
        instance.report_runless_asset_event(dg.AssetMaterialization(deployment, metadata={"champion_version": 2}))
        first = delivery_metrics.drift_requests(instance, "flights_train")[0]
        served = delivery_metrics.served_versions(instance, deployment)[-1][0]
        snapshot, _ = delivery_metrics.compute(
            flights_variant(),
            instance,
            DeltaLakeResource(root=str(tmp_path / "delta")),
            None,
            deployment,
            "flights_train",
            datetime.now(UTC),
        )
    assert snapshot["restores"] == 1  # before: 3, one per request
    assert snapshot["time_to_restore_median_s"] == served - first


def test_a_serving_checks_window_reads_back_as_the_append_times_it_held():
    """An erasure finds the serving reports that held an erased log row by the window the check wrote: to the second,
    so the range read back is widened to whole seconds, and a version judged with earlier rows held any row before."""
    after, through = 1_767_225_600_250_000, 1_767_225_660_750_000  # 2026-01-01T00:00:00.25 .. 00:01:00.75
    window = log_window(after, through)
    assert window == "log 2026-01-01T00:00:00..2026-01-01T00:01:00"
    assert appended_bounds(window) == (1_767_225_600_000_000, 1_767_225_661_000_000)
    lo, hi = appended_bounds(window)
    assert lo <= after + 1 and through < hi
    assert appended_bounds(with_earlier_rows(window, 500)) == (0, hi)
    with pytest.raises(ValueError, match="not a serving drift window"):
        appended_bounds("2013-01-21")
