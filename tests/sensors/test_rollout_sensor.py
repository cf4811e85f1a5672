"""The rollout sensor against a real instance and a real audit log: a run that recorded a step but failed
before Serve took its share is followed by `apply` runs, a bounded number of times."""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PACKAGED_PIPELINES, PromotionSpec, RolloutSpec, load_declaration
from mlops_assets.core.names import (
    PRIORITY,
    PRIORITY_TAG,
    REASON_TAG,
    ROLLOUT_ACTION_TAG,
    ROLLOUT_STEP_TAG,
    ROLLOUT_VERSION_TAG,
    RUN_KEY_TAG,
)
from mlops_assets.deployment import build as build_serving_definitions
from resources import rollouts
from resources.audit_log import AuditEvent, history, record
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.serving import ServingResource
from sensors.run_attempts import RETRIES

STEPS = (0.25, 0.5, 1.0)


def _recorded(delta: DeltaLakeResource, action: str, step: int) -> None:
    """The audit row a rollout run writes before it changes Serve."""
    metrics = rollouts.step_metrics(step, STEPS)
    record(delta, "flights", AuditEvent(action, 2, actor="t", reason="t", alias="challenger", from_version=1, metrics=metrics))


def test_a_step_recorded_by_a_failed_run_is_applied_again_a_bounded_number_of_times(tmp_path):
    base = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    # min_requests nobody sends here: every step keeps baking, so the sensor's only work is the repair
    spec = RolloutSpec(steps=list(STEPS), bake_minutes=60, min_requests=10_000, check_seconds=1)
    decl = base.model_copy(update={"promotion": PromotionSpec(policy="auto", rollout=spec)})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    resources = {"delta": delta, "mlflow": MlflowRegistryResource(tracking_uri=uri), "serving": ServingResource(tracking_uri=uri)}
    defs = dg.Definitions.merge(build_serving_definitions(decl), dg.Definitions(resources=resources))
    sensor, job = defs.resolve_sensor_def("flights_rollout_sensor"), defs.resolve_job_def("flights_rollout")

    with dg.instance_for_test() as instance:

        def tick():
            return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources))

        def ran(tags: dict, status: dg.DagsterRunStatus) -> None:  # a rollout run as the daemon would have launched it
            instance.create_run_for_job(job_def=job, tags=tags, status=status)

        _recorded(delta, "rollout_start", 0)
        assert "step 1/3" in tick().skip_message  # baking, nothing to do

        # an advance run recorded step 2, then failed before Serve took its share
        advance = {ROLLOUT_VERSION_TAG: "2", ROLLOUT_STEP_TAG: "0", ROLLOUT_ACTION_TAG: "advance"}
        _recorded(delta, "rollout_step", 1)
        ran(advance, dg.DagsterRunStatus.FAILURE)
        (request,) = tick().run_requests
        assert request.tags[ROLLOUT_ACTION_TAG] == "apply" and request.tags[ROLLOUT_STEP_TAG] == "1"
        # the run goes ahead of every other in the queue: the job's priority, above every other kind of run's
        assert request.tags[PRIORITY_TAG] == job.tags[PRIORITY_TAG]
        assert int(request.tags[PRIORITY_TAG]) > max(int(p) for kind, p in PRIORITY.items() if kind != "rollout")
        assert request.run_key == "rollout:v2:step1:apply"
        ran({**request.tags, RUN_KEY_TAG: request.run_key}, dg.DagsterRunStatus.SUCCESS)
        assert "step 2/3" in tick().skip_message and not tick().run_requests  # applied: baking again

        # the next step's run fails the same way, and so does every apply run after it
        _recorded(delta, "rollout_step", 2)
        ran({**advance, ROLLOUT_STEP_TAG: "1"}, dg.DagsterRunStatus.FAILURE)
        keys = []
        for attempt in range(RETRIES + 1):
            (request,) = tick().run_requests
            keys.append(request.run_key)
            if attempt:
                assert request.tags[REASON_TAG].startswith(f"retry {attempt} of {RETRIES}")
            ran({**request.tags, RUN_KEY_TAG: request.run_key}, dg.DagsterRunStatus.FAILURE)
        assert len(set(keys)) == RETRIES + 1
        given_up = tick()
        assert not given_up.run_requests
        assert "gave up" in given_up.skip_message and "materialize flights/rollout" in given_up.skip_message
        # as the skip reason says: the rollout materialized by hand (from the UI) applied the share
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=dg.AssetKey(["flights", "rollout"])))
        after = tick()
        assert not after.run_requests and "gave up" not in after.skip_message and "step 3/3" in after.skip_message

        # a rollout that ended has nothing to repair
        record(delta, "flights", AuditEvent("rollout_abort", 2, actor="t", reason="t", alias="challenger"))
        assert rollouts.current(history(delta, "flights")) is None
        assert "no rollout" in tick().skip_message


def _moved_by_hand(tmp_path, empty_mlflow_store, move) -> tuple[dg.RunRequest, dict, object]:
    """v2 rolling out beside champion v1 (v3 registered too), an alias moved by `move(client)` while the first step
    bakes: the run the next tick asks for, run, and the audit log's last row after it. The rollout ended."""
    import shutil

    base = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    spec = RolloutSpec(steps=list(STEPS), bake_minutes=60, min_requests=10_000, check_seconds=1)
    decl = base.model_copy(update={"promotion": PromotionSpec(policy="auto", rollout=spec)})
    shutil.copy(empty_mlflow_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = MlflowRegistryResource(tracking_uri=uri)
    client = registry.client()
    client.create_registered_model("flights")
    for _ in range(3):
        client.create_model_version("flights", source=str(tmp_path))
    client.set_registered_model_alias("flights", "champion", "1")
    client.set_registered_model_alias("flights", "challenger", "2")
    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    resources = {"delta": delta, "mlflow": registry, "serving": ServingResource(tracking_uri=uri)}
    defs = dg.Definitions.merge(build_serving_definitions(decl), dg.Definitions(resources=resources))
    sensor, job = defs.resolve_sensor_def("flights_rollout_sensor"), defs.resolve_job_def("flights_rollout")
    _recorded(delta, "rollout_start", 0)
    with dg.instance_for_test() as instance:

        def tick():
            return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources))

        assert "step 1/3" in tick().skip_message  # baking
        move(client)
        (request,) = tick().run_requests
        assert request.tags[ROLLOUT_ACTION_TAG] == "abort"
        assert job.execute_in_process(instance=instance, tags=request.tags).success
        last = history(delta, "flights").row(-1, named=True)
        assert (last["action"], last["model_version"], last["from_version"]) == ("rollout_abort", 2, 1)
        assert client.get_model_version("flights", "2").tags["mlops.status"] == "aborted"
        assert rollouts.current(history(delta, "flights")) is None and "no rollout" in tick().skip_message
    return request, last, client


def test_a_rollout_whose_challenger_alias_was_moved_by_hand_is_aborted(tmp_path, empty_mlflow_store):
    """The alias removed in the MLflow UI: Serve, following it, gave the version no traffic, yet the rollout stayed open
    for ever (waiting for requests, `mlops status` showing its share, manual traffic refused). Now a run ends it."""
    request, last, _ = _moved_by_hand(tmp_path, empty_mlflow_store, lambda c: c.delete_registered_model_alias("flights", "challenger"))
    assert "names no version, not v2" in request.tags[REASON_TAG] and "names no version, not v2" in last["reason"]


def test_a_rollout_whose_champion_was_moved_by_hand_is_aborted_at_once(tmp_path, empty_mlflow_store):
    """The champion alias moved in the MLflow UI: the rollout went on judging v2 against v1, no longer served, and was
    caught only when its last step completed. Now the next tick asks for a run that ends it, naming the move."""
    request, last, client = _moved_by_hand(tmp_path, empty_mlflow_store, lambda c: c.set_registered_model_alias("flights", "champion", "3"))
    for reason in (request.tags[REASON_TAG], last["reason"]):
        assert "the champion alias names v3, not v1, which the rollout compares v2 with" in reason
        assert "mlops gate flights 2" in reason
    assert "challenger" not in client.get_registered_model("flights").aliases  # the redeploy gives v2 no more traffic
