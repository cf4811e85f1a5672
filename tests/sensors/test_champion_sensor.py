"""The champion sensor starts a deployment run on every alias move, promotion and rollback alike."""

from __future__ import annotations

import json

import dagster as dg
import lightgbm as lgb
import numpy as np

from mlops_assets.core.declaration import PACKAGED_PIPELINES, load_declaration
from mlops_assets.deployment import build as build_serving_definitions
from resources.serving import ServingResource


def _register(uri: str, tmp_path, name: str) -> int:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.get_experiment_by_name(name) or mlflow.get_experiment(
        mlflow.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    )
    x = np.random.default_rng(0).normal(size=(100, 2))
    booster = lgb.train({"verbose": -1, "objective": "regression"}, lgb.Dataset(x, x[:, 0]), 2)
    with mlflow.start_run(experiment_id=exp.experiment_id):
        info = mlflow.lightgbm.log_model(booster, name="model", registered_model_name=name)
    return int(info.registered_model_version)


def _deployment(tmp_path) -> tuple:
    """A fresh MLflow store's URI, the serving resource on it, the champion sensor and the rollout job."""
    decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    resource = ServingResource(tracking_uri=uri)
    defs = dg.Definitions.merge(build_serving_definitions(decl), dg.Definitions(resources={"serving": resource}))
    return uri, resource, defs.resolve_sensor_def("flights_champion_sensor"), defs.resolve_job_def("flights_deploy")


class Ticker:
    """Evaluates the sensor against a real instance, carrying its cursor from tick to tick."""

    def __init__(self, sensor, instance, resource):
        self.sensor, self.instance, self.resource, self.cursor = sensor, instance, resource, None

    def __call__(self):
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources={"serving": self.resource})
        data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor or self.cursor
        return data


def test_sensor_follows_promotions_and_rollbacks(tmp_path):
    from mlflow import MlflowClient

    decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    resource = ServingResource(tracking_uri=uri)
    defs = dg.Definitions.merge(build_serving_definitions(decl), dg.Definitions(resources={"serving": resource}))
    sensor = defs.resolve_sensor_def("flights_champion_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING

    with dg.instance_for_test() as instance:
        tick = Ticker(sensor, instance, resource)

        assert "no MLflow registry yet" in tick().skip_message  # nothing created behind the user's back
        (tmp_path / "mlflow").mkdir()
        v1, v2 = _register(uri, tmp_path, "flights"), _register(uri, tmp_path, "flights")
        assert "no champion" in tick().skip_message
        client = MlflowClient(uri, uri)
        keys = []
        for version in (v1, v2, v1):  # promote v1, promote v2, roll back to v1
            client.set_registered_model_alias("flights", "champion", str(version))
            requests = tick().run_requests
            assert len(requests) == 1 and requests[0].tags["mlops/champion_version"] == str(version)
            assert requests[0].tags["mlops/challenger_version"] == "none"  # not Python's "None"
            keys.append(requests[0].run_key)
            assert "unchanged" in tick().skip_message
        assert len(set(keys)) == 3  # a rollback is a new run, not a duplicate run key
        assert requests[0].tags["mlops/reason"] == f"champion v{v2} -> v{v1}, challenger none -> none"
        client.set_registered_model_alias("flights", "challenger", str(v2))
        requests = tick().run_requests
        assert len(requests) == 1 and requests[0].tags["mlops/challenger_version"] == str(v2)
        assert json.loads(tick.cursor)["moves"] == 4


def test_a_failed_rollout_is_requested_again_a_bounded_number_of_times(tmp_path):
    from mlflow import MlflowClient

    from sensors.champion_sensor import ROLLOUT_RETRIES

    uri, resource, sensor, job = _deployment(tmp_path)
    MlflowClient(uri, uri).set_registered_model_alias("flights", "champion", str(_register(uri, tmp_path, "flights")))

    with dg.instance_for_test() as instance:
        tick = Ticker(sensor, instance, resource)

        def run_and_fail(request) -> None:  # the rollout run as the daemon would launch it, failing (no Ray here)
            run = instance.create_run_for_job(job_def=job, tags={**request.tags, "dagster/run_key": request.run_key})
            instance.report_run_failed(run)

        (request,) = tick().run_requests
        assert "unchanged" in tick().skip_message, "nothing to retry while the rollout has not failed"
        keys = [request.run_key]
        for attempt in range(1, ROLLOUT_RETRIES + 1):
            run_and_fail(request)
            (request,) = tick().run_requests
            assert request.tags["mlops/reason"].startswith(f"retry {attempt} of {ROLLOUT_RETRIES}")
            assert request.tags["mlops/champion_version"] == "1"
            keys.append(request.run_key)
        run_and_fail(request)
        assert "unchanged" in tick().skip_message, "retries are bounded"
        assert len(set(keys)) == ROLLOUT_RETRIES + 1


def test_an_unreadable_cursor_starts_over_and_still_rolls_the_next_move_out(tmp_path):
    """A cursor set by hand failed every tick; started over, the next move's run key must not be one Dagster
    already launched (it drops such a request: the new champion would never be rolled out)."""
    from mlflow import MlflowClient

    uri, resource, sensor, job = _deployment(tmp_path)
    client = MlflowClient(uri, uri)
    v1, v2 = _register(uri, tmp_path, "flights"), _register(uri, tmp_path, "flights")
    client.set_registered_model_alias("flights", "champion", str(v1))

    with dg.instance_for_test() as instance:
        tick = Ticker(sensor, instance, resource)
        (first,) = tick().run_requests
        instance.create_run_for_job(job_def=job, tags={**first.tags, "dagster/run_key": first.run_key})  # launched
        tick.cursor = "not json"  # before: JSONDecodeError on every tick
        client.set_registered_model_alias("flights", "champion", str(v2))
        (moved,) = tick().run_requests
        assert moved.tags["mlops/champion_version"] == str(v2) and moved.run_key != first.run_key
        assert json.loads(tick.cursor)["champion"] == v2


def test_a_rollout_that_starts_without_an_alias_move_is_deployed(tmp_path):
    """Policy manual: the version waiting for approval already holds `challenger` (no share of traffic), so its
    approval starts the rollout without an alias move. Only a deployment puts the first step's share on Serve: the
    sensor asked for none, the new version got no traffic and the rollout waited for its answers for ever."""
    from mlops_assets.core.names import GATES_CHAMPION_TAG, GATES_TAG
    from mlops_assets.models.promotion import approve, promote_after_gates
    from resources.delta_lake import DeltaLakeResource
    from resources.mlflow_registry import MlflowRegistryResource
    from tests.support.models import flights_variant

    rollout = {"steps": [0.1, 1.0], "bake_minutes": 1.0, "min_requests": 10}
    decl = flights_variant(promotion={"policy": "manual", "rollout": rollout})
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    delta, registry = DeltaLakeResource(root=str(tmp_path / "delta")), MlflowRegistryResource(tracking_uri=uri)
    resource = ServingResource(tracking_uri=uri, delta_root=delta.root)
    resources = {"serving": resource, "delta": delta, "mlflow": registry}
    sensor = dg.Definitions.merge(build_serving_definitions(decl), dg.Definitions(resources=resources))
    v1, v2 = _register(uri, tmp_path, "flights"), _register(uri, tmp_path, "flights")
    client = registry.client()
    client.set_registered_model_alias("flights", "champion", str(v1))
    client.set_model_version_tag("flights", str(v2), GATES_TAG, "passed")
    client.set_model_version_tag("flights", str(v2), GATES_CHAMPION_TAG, str(v1))

    with dg.instance_for_test() as instance:
        tick = Ticker(sensor.resolve_sensor_def("flights_champion_sensor"), instance, resource)
        assert len(tick().run_requests) == 1  # the champion
        promote_after_gates(decl, delta, registry, str(v2), actor="gates")  # waits for approval as the challenger
        (waiting,) = tick().run_requests
        assert waiting.tags["mlops/challenger_version"] == str(v2)
        assert "unchanged" in tick().skip_message

        approve("flights", delta, registry, v2, "carol", "looks good", rollout=decl.promotion.rollout)
        (rolling_out,) = tick().run_requests
        assert rolling_out.tags["mlops/reason"] == f"champion v{v1} -> v{v1}, challenger v{v2} -> v{v2}, rollout none -> v{v2}"
        assert rolling_out.run_key != waiting.run_key
        assert "unchanged" in tick().skip_message
