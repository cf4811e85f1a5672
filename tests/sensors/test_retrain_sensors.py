"""The retraining sensors (sensors/retrain_sensors.py) on state they did not write themselves, or on runs that
failed, with a real Dagster instance and a trained champion."""

import json

import dagster as dg

from tests.support.models import flights_variant, sensor_tick, train

SENSORS = ("flights_new_data_sensor", "flights_drift_sensor", "flights_monitor_sensor")


def test_an_unreadable_cursor_starts_over_not_a_failed_tick(model_home):
    plat = model_home.platform(flights_variant(drift={"new_partitions_to_retrain": 5, "cooldown_minutes": 0}))
    assert train(plat).success
    for sensor in SENSORS:
        fresh = sensor_tick(plat, sensor)
        for cursor in ("not json", "12345", "[]"):  # before: JSONDecodeError or AttributeError, a failed tick every time
            tick = sensor_tick(plat, sensor, cursor)
            assert [r.run_key for r in tick.run_requests] == [r.run_key for r in fresh.run_requests], (sensor, cursor)
            assert tick.skip_message == fresh.skip_message and isinstance(json.loads(tick.cursor or "{}"), dict), (sensor, cursor)


def test_a_drift_cursor_that_followed_every_request_retries_the_newest(model_home):
    plat = model_home.platform(flights_variant(drift={"cooldown_minutes": 0}))
    assert train(plat).success
    # the cursor of ad571d2's drift sensor kept every retraining asked for against the champion; both failed
    asked = {"drift:v1:features:2013-07-01": "temp drifted", "drift:v1:features:2013-07-02": "wind drifted"}
    failed = [plat.failed(dg.RunRequest(run_key=key, job_name="flights_train", tags={"mlops/trigger": "drift"})) for key in asked]
    tick = sensor_tick(plat, "flights_drift_sensor", json.dumps({"after_us": 0, "asked": asked}))  # before: ValueError
    (retry,) = tick.run_requests
    assert retry.run_key == "drift:v1:features:2013-07-02~retry-1"
    assert retry.tags["mlops/reason"] == f"retry 1 of 3: run {failed[-1].run_id} failure"
    assert json.loads(tick.cursor)["asked"] == {"drift:v1:features:2013-07-02": "wind drifted"}


def test_a_failed_new_data_retraining_is_asked_for_again(model_home):
    plat = model_home.platform(flights_variant(drift={"new_partitions_to_retrain": 5, "cooldown_minutes": 0}))
    assert train(plat).success
    (request,) = sensor_tick(plat, "flights_new_data_sensor").run_requests  # 7 days after the window (Jan 28)
    cursor = sensor_tick(plat, "flights_new_data_sensor").cursor
    failed = plat.failed(request)
    # before: '0 new featurized days since 2013-02-04; 5 needed', until five more days landed
    (retry,) = sensor_tick(plat, "flights_new_data_sensor", cursor).run_requests
    assert retry.run_key == f"{request.run_key}~retry-1" and retry.tags["mlops/trigger"] == "new_data"
    assert retry.tags["mlops/reason"] == f"retry 1 of 3: run {failed.run_id} failure"
    assert plat.launch(retry).success
    done = sensor_tick(plat, "flights_new_data_sensor", cursor)
    assert not done.run_requests and json.loads(done.cursor)["asked"] == {}


def test_a_retraining_its_gates_rejected_is_not_asked_for_again(model_home):
    """A failed run that registered its version failed at its gates: asked for again, it trained the same model on the
    same window and registered it again, rejected each time (three more versions)."""
    drift = {"new_partitions_to_retrain": 5, "cooldown_minutes": 0}
    plat = model_home.platform(flights_variant(drift=drift))
    assert train(plat).success
    tick = sensor_tick(plat, "flights_new_data_sensor")
    (request,) = tick.run_requests
    strict = model_home.platform(flights_variant(drift=drift, gates={"floors": {"mae": 1.0}}))
    assert not strict.launch(request).success  # v2 trained, registered and rejected by its floors
    assert model_home.registry.client().get_model_version("flights", "2").tags["mlops.status"] == "rejected"
    after = sensor_tick(strict, "flights_new_data_sensor", tick.cursor)
    assert not after.run_requests and json.loads(after.cursor)["asked"] == {}
    assert len(model_home.registry.client().search_model_versions("name = 'flights'")) == 2


def test_the_monitor_sensor_names_the_days_it_gave_up_on_not_checked(model_home):
    plat = model_home.platform(flights_variant())
    assert train(plat).success
    tick = sensor_tick(plat, "flights_monitor_sensor")
    cursor, (request,) = tick.cursor, tick.run_requests
    last = plat.failed(request)
    for _ in range(3):  # each retry fails too
        tick = sensor_tick(plat, "flights_monitor_sensor", cursor)
        cursor, (retry,) = tick.cursor, tick.run_requests
        last = plat.failed(retry)
    for _ in range(2):  # the tick that gives up, and every one after it
        tick = sensor_tick(plat, "flights_monitor_sensor", cursor)
        cursor = tick.cursor
        assert not tick.run_requests
        assert tick.skip_message == (  # before: '...; 7 checked'
            "no new feature days to check after champion v1's window (2013-01-28); 7 asked for; not done: "
            f"gave up on {request.run_key} after 4 failed runs; the last: {last.run_id}"
        )
