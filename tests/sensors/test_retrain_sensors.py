"""The retraining sensors (sensors/retrain_sensors.py) on state they did not write themselves, or on runs that
failed, with a real Dagster instance and a trained champion."""

import json

import pytest

from tests.support.models import flights_variant, sensor_tick, train

SENSORS = ("flights_new_data_sensor", "flights_drift_sensor", "flights_monitor_sensor")


@pytest.mark.parametrize("cursor", ["not json", "12345", "[]"])
def test_an_unreadable_cursor_starts_over_not_a_failed_tick(model_home, cursor):
    plat = model_home.platform(flights_variant(drift={"new_partitions_to_retrain": 5, "cooldown_minutes": 0}))
    assert train(plat).success
    for sensor in SENSORS:
        fresh = sensor_tick(plat, sensor)
        tick = sensor_tick(plat, sensor, cursor)  # before: JSONDecodeError or AttributeError, a failed tick every time
        assert [r.run_key for r in tick.run_requests] == [r.run_key for r in fresh.run_requests], sensor
        assert tick.skip_message == fresh.skip_message and isinstance(json.loads(tick.cursor or "{}"), dict), sensor
