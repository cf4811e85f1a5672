"""Guarded rollouts on the shared real Ray Serve, with a real Dagster instance: the rollout sensor judges
live traffic, the rollout runs change Serve, and clients keep getting answers throughout.

The flights application of tests/support/serving.py serves v1 (champion) and v2 (challenger);
each test here registers its own candidate, walks it through a rollout declared only on the
Dagster side (replicas do not read it), and puts the aliases and traffic back as it found them.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import dagster as dg
import polars as pl
import pytest
import requests

from mlops_assets.cli.model_commands import rollout_lines
from mlops_assets.core.declaration import PromotionSpec, RolloutGuardsSpec, RolloutSpec
from mlops_assets.core.names import (
    FEATURES,
    GATES_CHAMPION_TAG,
    GATES_TAG,
    ROLLOUT_ACTION_TAG,
    ROLLOUT_GUARD_TAG,
    ROLLOUT_STEP_TAG,
    ROLLOUT_VERSION_TAG,
    STATUS_TAG,
)
from mlops_assets.deployment import build as build_serving_definitions
from mlops_assets.models import promotion
from resources import rollouts
from resources.audit_log import AuditEvent, history, record
from resources.mlflow_registry import MlflowRegistryResource
from resources.registered_models import resolve_alias
from serving import control
from tests.support.ray_instance import ADMIN_TOKEN, PREDICT_TOKEN
from tests.support.serving import request_records, serving_resource, serving_settings, train

STEPS = [0.5, 1.0]


def rollout_decl(reg):
    spec = RolloutSpec(
        steps=STEPS,
        bake_minutes=2 / 60,
        min_requests=40,
        check_seconds=1,
        # latency on a busy 2-core test machine is noise; the guard itself is covered in tests/resources
        # two samples of 40 from one distribution exceed a KS distance of 0.45 with probability under 0.1%
        guards=RolloutGuardsSpec(min_rows=40, max_prediction_shift=0.45, max_p99_latency_ratio=50.0),
    )
    return reg.decl.model_copy(update={"promotion": PromotionSpec(policy="auto", rollout=spec)})


@dataclass
class Platform:
    reg: object
    decl: object
    defs: dg.Definitions
    resources: dict
    instance: dg.DagsterInstance
    base: str

    def sensor(self, name: str, instance: dg.DagsterInstance | None = None, cursor: str | None = None):
        sensor = self.defs.resolve_sensor_def(f"flights_{name}_sensor")
        ctx = dg.build_sensor_context(instance=instance or self.instance, cursor=cursor, resources=self.resources)
        return sensor.evaluate_tick(ctx)

    def run(self, job: str, tags: dict):
        return self.defs.resolve_job_def(job).execute_in_process(instance=self.instance, tags=tags, raise_on_error=False)

    def deploy(self) -> None:
        """What the champion sensor and the deploy job do after an alias moved."""
        requests_ = list(self.sensor("champion", cursor=json.dumps({"moves": 0})).run_requests or [])
        assert len(requests_) == 1
        assert self.run("flights_deploy", requests_[0].tags).success


@dataclass
class Clients:
    """Two clients sending single-record V1 predictions until stopped; every answer is kept."""

    base: str
    results: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _send(self) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {PREDICT_TOKEN}"
        records = request_records(60)
        i = 0
        while not self.stop.is_set():
            try:
                r = session.post(f"{self.base}/v1/models/flights:predict", json={"instances": [records[i % 60]]}, timeout=30)
                self.results.append((r.status_code, r.json().get("model_version", r.text)))
            except requests.RequestException as err:
                self.results.append((-1, repr(err)))
            i += 1

    def __enter__(self) -> Clients:
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(2)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def failures(self) -> list:
        return [r for r in self.results if r[0] != 200]


@pytest.fixture
def platform(served, serving_registry):
    reg = serving_registry
    decl = rollout_decl(reg)
    resources = {
        "serving": serving_resource(reg, served.port),
        "delta": reg.delta,
        "mlflow": MlflowRegistryResource(tracking_uri=reg.tracking_uri),
    }
    defs = dg.Definitions.merge(build_serving_definitions(decl), dg.Definitions(resources=resources))
    with dg.instance_for_test() as instance:
        yield Platform(reg, decl, defs, resources, instance, served.base_url)
    # the shared app as the other serving tests expect it: v1 champion, v2 challenger, no canary, no rollout open
    if rollouts.current(history(reg.delta, "flights")) is not None:
        record(reg.delta, "flights", AuditEvent("rollout_abort", None, actor="test", reason="test teardown"))
    reg.set_alias("champion", reg.champion)
    reg.set_alias("challenger", reg.challenger)
    control.deploy_pipeline(
        reg.decl, serving_settings(reg), reg.champion, reg.challenger, gateway_replicas=1, traffic={"canary_share": 0.0}
    )
    control.wait_for_version("flights", reg.champion, timeout_s=240)


def candidate(reg, kind: str) -> int:
    """A new version as training would register it, its gates passed against the current champion."""
    from mlflow import MlflowClient

    from mlops_assets.core.feature_contract import load_feature_module

    features = reg.delta.scan("flights", FEATURES).collect()
    target = reg.decl.target.column
    if kind == "shifted":  # a model that learned a different world: predictions 2 hours later
        features = features.with_columns(pl.col(target) + 120)
    if kind == "broken":  # trained on a column the feature code does not build: every answer fails
        features = features.with_columns(pl.lit(1.0).alias("weather_index"))
    version = reg.register(train(features, reg.decl, rounds=9, leaves=15), load_feature_module(reg.decl).categorical)
    client = MlflowClient(reg.tracking_uri, reg.tracking_uri)
    client.set_model_version_tag("flights", str(version), GATES_TAG, "passed")
    client.set_model_version_tag("flights", str(version), GATES_CHAMPION_TAG, str(reg.champion))
    return version


def start(platform: Platform, kind: str) -> int:
    reg = platform.reg
    version = candidate(reg, kind)
    mlflow = platform.resources["mlflow"]
    decision = promotion.promote_after_gates(platform.decl, reg.delta, mlflow, str(version), actor="test")
    assert decision.action == "rollout_start", decision
    assert resolve_alias(reg.tracking_uri, "flights", "challenger") == version
    assert resolve_alias(reg.tracking_uri, "flights", "champion") == reg.champion  # the champion stays until the end
    platform.deploy()
    assert control.traffic_of("flights")["canary_share"] == STEPS[0]  # the share comes from the audit log
    return version


def replica_status(platform: Platform, ok, timeout_s: float = 60) -> dict:
    """The replicas' own status once `ok` holds for it (they reconfigure after the config is applied)."""
    deadline, status = time.time() + timeout_s, {}
    while time.time() < deadline:
        url = f"{platform.base}/admin/models/flights/status"
        status = requests.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10).json()
        if ok(status):
            return status
        time.sleep(0.3)
    raise AssertionError(f"replicas never reached the expected state: {status}")


def step_now(reg) -> int | None:
    state = rollouts.current(history(reg.delta, "flights"))
    return None if state is None else state.step


def walk(platform: Platform, until, timeout_s: float = 150, instance_for=lambda i: None) -> list:
    """Tick the rollout sensor about once a second and run what it asks for, until `until()`."""
    results, deadline, tick = [], time.time() + timeout_s, 0
    while time.time() < deadline and not until():
        tick_result = platform.sensor("rollout", instance=instance_for(tick))
        for request in tick_result.run_requests or []:
            results.append((request.tags["mlops/rollout_action"], platform.run("flights_rollout", request.tags)))
        tick += 1
        time.sleep(1.0)
    assert until(), f"rollout did not get there in {timeout_s:.0f}s: {[(a, r.success) for a, r in results]}"
    return results


def test_a_healthy_version_walks_every_step_to_champion_and_survives_restarts(platform):
    reg = platform.reg
    with Clients(platform.base) as clients:
        version = start(platform, "healthy")
        # a daemon restart: the next ticks run against a fresh instance (no sensor cursor, no run history)
        with dg.instance_for_test() as restarted:
            runs = walk(platform, lambda: step_now(reg) == 1, instance_for=lambda tick: restarted)
            assert [a for a, _ in runs] == ["advance"] and runs[0][1].success
            assert control.traffic_of("flights")["canary_share"] == STEPS[1]
            # Serve restarted (its config lost the share): following the aliases restores the step's share
            control.apply_rollout_share("flights", 0.0)
            control.follow_aliases(platform.decl, serving_settings(reg), gateway_replicas=1)
            assert control.traffic_of("flights")["canary_share"] == STEPS[1]
            status = replica_status(platform, lambda s: s["traffic"]["canary_share"] == STEPS[1])
            shown = "\n".join(rollout_lines(platform.decl, reg.delta))  # what `mlops status` prints
            assert f"v{version} at step 2/2 (100% of traffic)" in shown and "guard:      error_rate_increase" in shown
            refused = requests.post(
                f"{platform.base}/admin/models/flights/traffic",
                json={"canary_share": 0.0},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=30,
            )
            assert refused.status_code == 409 and "rollout" in refused.json()["error"], refused.text
        runs = walk(platform, lambda: resolve_alias(reg.tracking_uri, "flights", "champion") == version)
        assert [a for a, _ in runs] == ["complete"] and runs[0][1].success
        platform.deploy()  # the champion sensor rolls serving to the new champion
        time.sleep(1.0)
    assert not clients.failures(), clients.failures()[:5]
    assert clients.results[-1][1] == str(version)
    assert status["traffic"]["canary_share"] == STEPS[1]
    events = history(reg.delta, "flights").filter(pl.col("model_version") == version)
    assert events["action"].to_list() == ["rollout_start", "rollout_step", "rollout_complete", "promote", "alias_removed"]
    assert resolve_alias(reg.tracking_uri, "flights", "challenger") is None
    meta = runs[0][1].asset_materializations_for_node("flights__rollout")[0].metadata
    assert meta["verdict"].value == "complete" and meta["step"].value == "2/2" and meta["canary_requests"].value >= 40


def test_a_step_whose_run_failed_before_serve_took_its_share_is_applied_by_the_next_run(platform):
    reg = platform.reg
    version = start(platform, "healthy")  # no client traffic: every step keeps baking
    # what an advance run does before it fails on an unreachable Serve: the step recorded, its share not applied
    metrics = rollouts.step_metrics(1, STEPS)
    step = AuditEvent("rollout_step", version, actor="t", reason="t", alias="challenger", from_version=reg.champion, metrics=metrics)
    record(reg.delta, "flights", step)
    failed = {ROLLOUT_VERSION_TAG: str(version), ROLLOUT_STEP_TAG: "0", ROLLOUT_ACTION_TAG: "advance"}
    job = platform.defs.resolve_job_def("flights_rollout")
    platform.instance.create_run_for_job(job_def=job, tags=failed, status=dg.DagsterRunStatus.FAILURE)
    assert control.traffic_of("flights")["canary_share"] == STEPS[0]
    (request,) = platform.sensor("rollout").run_requests
    assert request.tags[ROLLOUT_ACTION_TAG] == "apply"
    result = platform.run("flights_rollout", request.tags)
    assert result.success
    assert control.traffic_of("flights")["canary_share"] == STEPS[1]
    replica_status(platform, lambda s: s["traffic"]["canary_share"] == STEPS[1])
    meta = result.asset_materializations_for_node("flights__rollout")[0].metadata
    assert meta["verdict"].value == "wait" and meta["applied_share"].value == STEPS[1] and meta["step"].value == "2/2"
    assert "step 2/2" in str(platform.sensor("rollout").skip_message)  # applied: the step bakes


@pytest.mark.parametrize(("kind", "guard"), [("broken", "error_rate_increase"), ("shifted", "prediction_shift")])
def test_a_bad_version_is_rolled_back_by_itself_and_no_client_request_fails(platform, kind, guard):
    reg = platform.reg
    with Clients(platform.base) as clients:
        version = start(platform, kind)
        runs = walk(platform, lambda: resolve_alias(reg.tracking_uri, "flights", "challenger") is None, timeout_s=120)
        assert [a for a, _ in runs] == ["rollback"]
        result = runs[0][1]
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.user_failure_data
        assert f"guard {guard} = " in failure.description and "rolled back" in failure.description
        assert control.traffic_of("flights")["canary_share"] == 0.0
        time.sleep(1.0)
    assert not clients.failures(), clients.failures()[:5]  # the broken canary's requests were answered by the champion
    assert clients.results[-1][1] == str(reg.champion)
    assert resolve_alias(reg.tracking_uri, "flights", "champion") == reg.champion  # the alias stayed where it was
    from mlflow import MlflowClient

    tags = MlflowClient(reg.tracking_uri, reg.tracking_uri).get_model_version("flights", str(version)).tags
    assert tags[STATUS_TAG] == "rolled_back" and guard in tags[ROLLOUT_GUARD_TAG]
    row = history(reg.delta, "flights").filter(pl.col("action") == "rollout_rollback").tail(1).row(0, named=True)
    metrics = json.loads(row["metrics"])
    assert row["model_version"] == version and row["failed_gates"] == guard
    assert metrics["guard"] == guard and metrics["value"] > metrics["threshold"] and metrics["exposed_s"] > 0
    # a version rolled back has no passed rollout to resume: the rollout sensor is idle again
    assert "no rollout" in str(platform.sensor("rollout").skip_message)


def test_a_challenger_set_by_hand_without_gates_is_not_served_and_gets_no_canary(platform):
    """An alias moved in MLflow directly: the version has no record of passing its gates in the audit log."""
    reg = platform.reg
    version = reg.register(reg.boosters[reg.challenger], [])  # no gates, no promotion: just an alias
    reg.set_alias("challenger", version)
    platform.deploy()
    meta = platform.instance.get_latest_materialization_event(dg.AssetKey(["flights", "deployment"])).asset_materialization.metadata
    assert meta["challenger_version"].value == "none" and f"v{version}" in meta["challenger_refused"].value
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    replica_status(platform, lambda s: s["challenger"]["model_version"] is None)  # the challenger replica holds nothing
    refused = requests.post(f"{platform.base}/admin/models/flights/traffic", json={"canary_share": 0.5}, headers=admin, timeout=30)
    assert refused.status_code == 409 and "no record of passing its gates" in refused.json()["error"], refused.text
    record = next(r for r in request_records(20) if None not in r.values())
    v2_type = {int: "INT64", float: "FP64", str: "BYTES"}
    body = {"inputs": [{"name": k, "shape": [1], "datatype": v2_type[type(v)], "data": [v]} for k, v in record.items()]}
    auth = {"Authorization": f"Bearer {PREDICT_TOKEN}"}
    pinned = requests.post(f"{platform.base}/v2/models/flights/versions/{version}/infer", json=body, headers=auth, timeout=10)
    assert pinned.status_code == 404 and "not being served" in pinned.json()["error"], pinned.text
    champion = requests.post(f"{platform.base}/v2/models/flights/versions/{reg.champion}/infer", json=body, headers=auth, timeout=10)
    assert champion.status_code == 200, champion.text
    assert control.traffic_of("flights")["canary_share"] == 0.0
