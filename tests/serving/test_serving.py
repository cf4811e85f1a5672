"""Serving on a real local Ray Serve: HTTP protocols, parity, errors, canary, shadow, prediction log, swaps.

One Ray instance and one deployed flights application for the whole module
(tests/support/serving.py); requests are real HTTP on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pytest
import requests

from mlops_assets.core.names import PREDICTION_LOG
from resources.audit_log import AuditEvent, history, passed_gates, record
from serving import control
from serving.config import GATEWAY_APP
from tests.support.ray_instance import ADMIN_TOKEN, PREDICT_TOKEN
from tests.support.serving import (
    offline_features,
    request_records,
    serving_resource,
    serving_settings,
)

V2_TYPE = {int: "INT64", float: "FP64", str: "BYTES"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def client() -> requests.Session:
    """An HTTP client that carries the prediction bearer token the test instance requires."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {PREDICT_TOKEN}"
    return session


HTTP = client()


def predict(
    base: str, records: list[dict], request_id: str | None = None, session: requests.Session | None = None, **kw
) -> requests.Response:
    headers = {"X-Request-Id": request_id} if request_id else {}
    return (session or HTTP).post(f"{base}/v1/models/flights:predict", json={"instances": records}, headers=headers, timeout=30, **kw)


def set_traffic(base: str, **body) -> None:
    r = HTTP.post(f"{base}/admin/models/flights/traffic", json=body, headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    deadline = time.time() + 60
    while time.time() < deadline:  # the champion replicas reconfigure asynchronously
        status = HTTP.get(f"{base}/admin/models/flights/status", headers=ADMIN, timeout=10).json()
        if applied(status, body):
            seen = [HTTP.get(f"{base}/admin/models/flights/status", headers=ADMIN, timeout=10).json() for _ in range(6)]
            if all(applied(s, body) for s in seen):
                return
        time.sleep(0.3)
    raise TimeoutError(f"traffic {body} not applied")


def applied(status: dict, traffic: dict) -> bool:
    """The traffic in a champion replica of the V2 route and one of the V1 route (its own replicas)."""
    routes = (status["traffic"], status["v1_route"]["traffic"])
    return all(route[k] == v for route in routes for k, v in traffic.items())


def read_log(reg, request_ids: set[str], expected_rows: int, timeout_s: float = 60) -> pl.DataFrame:
    deadline = time.time() + timeout_s
    rows = pl.DataFrame()
    while time.time() < deadline:
        lf = reg.delta.scan("flights", PREDICTION_LOG)
        if lf is not None:
            rows = lf.filter(pl.col("request_id").is_in(list(request_ids))).collect()
            if rows.height >= expected_rows:
                return rows
        time.sleep(0.3)
    raise AssertionError(f"prediction log has {rows.height} of {expected_rows} rows for {len(request_ids)} requests")


def test_v1_prediction_equals_offline_prediction_of_the_same_version(served, serving_registry):
    records = request_records(25)
    r = predict(served.base_url, records)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == str(serving_registry.champion) == r.headers["X-Model-Version"]
    booster = serving_registry.boosters[serving_registry.champion]
    features = offline_features(serving_registry, records)
    expected = booster.predict(features.select(booster.feature_name()).cast(pl.Float64).to_numpy())
    np.testing.assert_allclose(body["predictions"], expected, rtol=0, atol=1e-9)


def test_v2_protocol_endpoints_and_infer(served, serving_registry):
    base = served.base_url
    assert HTTP.get(f"{base}/v2/health/live", timeout=10).json() == {"live": True}
    ready = HTTP.get(f"{base}/v2/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["models"] == {"flights": True}
    meta = HTTP.get(f"{base}/v2/models/flights", timeout=10).json()
    assert meta["versions"] == [str(serving_registry.champion)]
    assert [i["name"] for i in meta["inputs"]][:3] == ["year", "month", "day"]
    model_ready = HTTP.get(f"{base}/v2/models/flights/ready", timeout=10)
    assert model_ready.status_code == 200 and model_ready.json()["ready"] is True
    assert HTTP.get(f"{base}/v1/models/flights", timeout=10).json()["model_version_status"][0]["state"] == "AVAILABLE"

    records = request_records(10)
    inputs = [
        {"name": c, "shape": [len(records)], "datatype": V2_TYPE[type(records[0][c])], "data": [r[c] for r in records]} for c in records[0]
    ]
    r = HTTP.post(f"{base}/v2/models/flights/infer", json={"id": "v2-req", "inputs": inputs}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "flights" and body["model_version"] == str(serving_registry.champion) and body["id"] == "v2-req"
    v1 = predict(base, records).json()["predictions"]
    np.testing.assert_allclose(body["outputs"][0]["data"], v1, rtol=0, atol=1e-12)
    assert body["outputs"][0]["shape"] == [10]

    spec = HTTP.get(f"{base}/openapi.json", timeout=10).json()
    assert {"/v2/models/{name}/infer", "/v1/models/{name}:predict", "/v2/health/ready"} <= set(spec["paths"])


def test_the_api_docs_render_in_a_browser_from_the_gateway_alone(served):
    """`/docs` (the demo prints it) is Swagger UI whose scripts the gateway serves itself: FastAPI's own page loads
    them from a CDN, a blank page without the internet (as here). A real browser renders the operations."""
    base = served.base_url
    for page in ("/docs", "/redoc"):
        html = HTTP.get(base + page, timeout=10).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/") for a in assets), assets  # nothing from another host
        assert all(HTTP.get(base + a, timeout=10).status_code == 200 for a in assets)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium to render /docs (deploy/ci/install_system_packages.sh installs it)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=20000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", base + "/docs"], capture_output=True, text=True, timeout=120).stdout
    rendered = set(re.findall(r'data-path="([^"]+)"', dom))  # one per operation Swagger UI drew from /openapi.json
    assert {"/v2/models/{name}/infer", "/v1/models/{name}:predict", "/v2/health/ready"} <= rendered, dom[:2000]


def test_v2_version_pinned_endpoints(served, serving_registry):
    base, reg = served.base_url, serving_registry
    records = request_records(4)
    inputs = [{"name": c, "shape": [4], "datatype": V2_TYPE[type(records[0][c])], "data": [r[c] for r in records]} for c in records[0]]
    for version in (reg.champion, reg.challenger):
        assert HTTP.get(f"{base}/v2/models/flights/versions/{version}/ready", timeout=10).status_code == 200
        assert HTTP.get(f"{base}/v2/models/flights/versions/{version}", timeout=10).json()["versions"] == [str(version)]
        r = HTTP.post(f"{base}/v2/models/flights/versions/{version}/infer", json={"inputs": inputs}, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == str(version), r.text
        booster = reg.boosters[version]
        features = offline_features(reg, records)
        expected = booster.predict(features.select(booster.feature_name()).cast(pl.Float64).to_numpy())
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], expected, rtol=0, atol=1e-9)
    r = HTTP.post(f"{base}/v2/models/flights/versions/99/infer", json={"inputs": inputs}, timeout=30)
    assert r.status_code == 404 and "version 99" in r.json()["error"]
    # `²`.isdigit() is true in Python, int("²") raises: a version in other digits is a 404 naming it, never a 500
    # nor is `01` (the ready route knew no such version), or a number of 5,000 digits (int() refuses it: a 500)
    for odd in ("%C2%B2", f"0{reg.champion}", "9" * 5000):
        r = HTTP.post(f"{base}/v2/models/flights/versions/{odd}/infer", json={"inputs": inputs}, timeout=30)
        assert r.status_code == 404 and "model versions are numbers" in r.json()["error"], r.text
    missing = HTTP.get(f"{base}/v2/models/flights/versions/99/ready", timeout=10)
    assert missing.status_code == 404 and f"champion v{reg.champion}" in missing.json()["error"]


def _without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


BAD_V1 = {
    "missing field": (lambda r: [_without(r, "dep_delay")], 400, "dep_delay"),
    "unknown field": (lambda r: [dict(r, colour="red")], 400, "colour"),
    "wrong type": (lambda r: [dict(r, distance="far")], 422, "distance"),
    "unknown category": (lambda r: [dict(r, carrier="ZZ")], 422, "carrier"),
    "out of range": (lambda r: [dict(r, month=13)], 422, "month"),
    "null in required": (lambda r: [dict(r, origin=None)], 422, "origin"),
    "nested value": (lambda r: [dict(r, dest=["JFK"])], 400, "dest"),
    "empty batch": (lambda r: [], 400, "empty batch"),
    "oversized batch": (lambda r: [r] * 10_001, 413, "10000"),
}


@pytest.mark.parametrize("case", list(BAD_V1))
def test_bad_v1_requests_get_4xx_naming_the_problem(served, case):
    make, status, named = BAD_V1[case]
    r = predict(served.base_url, make(request_records(1)[0]))
    assert r.status_code == status, r.text
    assert named in r.json()["error"]


def test_malformed_unknown_and_oversized_bodies(served, serving_registry):
    base = served.base_url
    r = HTTP.post(f"{base}/v1/models/flights:predict", data=b'{"instances": [', headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = HTTP.post(f"{base}/v1/models/flights:predict", json={"records": []}, timeout=10)
    assert r.status_code == 400 and "instances" in r.json()["error"]
    r = HTTP.post(f"{base}/v1/models/nosuch:predict", json={"instances": request_records(1)}, timeout=10)
    assert r.status_code == 404 and "unknown model 'nosuch'" in r.json()["error"]
    assert HTTP.get(f"{base}/v2/models/nosuch/ready", timeout=10).status_code == 404
    big = b'{"instances": [' + b" " * (serving_registry.decl.serving.max_body_bytes + 1) + b"]}"
    r = HTTP.post(f"{base}/v1/models/flights:predict", data=big, timeout=30)
    assert r.status_code == 413 and "larger than the limit" in r.json()["error"]
    # a chunked body declares no length: the limit is enforced as it streams in
    chunks = (b" " * 65536 for _ in range(serving_registry.decl.serving.max_body_bytes // 65536 + 2))
    r = HTTP.post(f"{base}/v1/models/flights:predict", data=chunks, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "larger than the limit" in r.json()["error"]
    good = request_records(1)[0]
    bad_v2 = [
        ({"inputs": [{"name": "carrier", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, "carrier"),
        (
            {"inputs": [{"name": c, "shape": [1], "datatype": V2_TYPE[type(v)], "data": [v]} for c, v in good.items() if c != "dest"]},
            "dest",
        ),
        ({"inputs": [{"name": "nope", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, "nope"),
    ]
    for body, named in bad_v2:
        r = HTTP.post(f"{base}/v2/models/flights/infer", json=body, timeout=10)
        assert r.status_code == 400 and named in r.json()["error"], r.text
    # hostile JSON: a 5,000-digit integer, 100,000 nested brackets, a tensor name that is not a string
    hostile = [
        (b'{"instances": [{"distance": ' + b"9" * 5000 + b"}]}", "cannot be read"),
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    ]
    for path in ("/v1/models/flights:predict", "/v2/models/flights/infer"):
        for body, message in hostile:
            r = HTTP.post(f"{base}{path}", data=body, headers={"Content-Type": "application/json"}, timeout=10)
            assert r.status_code == 400 and message in r.json()["error"], (path, r.status_code, r.text[:200])
    r = HTTP.post(
        f"{base}/v2/models/flights/infer", json={"inputs": [{"name": ["x"], "shape": [1], "datatype": "FP64", "data": [1.0]}]}, timeout=10
    )
    assert r.status_code == 400 and "inputs[0].name must be a string" in r.json()["error"], r.text
    # the replicas are still answering
    assert predict(base, request_records(2)).status_code == 200


def test_admin_endpoints_refuse_without_the_token_and_reload_with_it(served, serving_registry):
    base = served.base_url
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert HTTP.post(f"{base}/admin/models/flights/traffic", json={"canary_share": 1.0}, headers=headers, timeout=10).status_code == 401
        assert HTTP.post(f"{base}/admin/models/flights/reload", headers=headers, timeout=10).status_code == 401
        assert HTTP.get(f"{base}/admin/models/flights/status", headers=headers, timeout=10).status_code == 401
    assert control.traffic_of("flights")["canary_share"] == 0.0
    r = HTTP.post(f"{base}/admin/models/flights/traffic", json={"canary_share": 2}, headers=ADMIN, timeout=10)
    assert r.status_code == 400
    for body, named in (({"canary_shre": 0.5}, "canary_shre"), ({}, "give canary_share and/or shadow")):  # nothing audited
        r = HTTP.post(f"{base}/admin/models/flights/traffic", json=body, headers=ADMIN, timeout=10)
        assert r.status_code == 400 and named in r.json()["error"], r.text
    r = HTTP.post(f"{base}/admin/models/flights/traffic", data=b" " * (9 * 2**20), headers=ADMIN, timeout=30)
    assert r.status_code == 413, r.text  # the declared body limit, as for predictions
    gated(serving_registry)  # a challenger with no record of passing its gates would not be served
    r = HTTP.post(f"{base}/admin/models/flights/reload", headers=ADMIN, timeout=120)
    assert r.status_code == 200, r.text
    assert (r.json()["champion"], r.json()["challenger"]) == (serving_registry.champion, serving_registry.challenger)
    assert control.current_apps()["flights"]["args"].get("log_flush_seconds") == 0.3  # a reload keeps the builder args (no restart)


def test_prediction_endpoints_need_the_bearer_token_when_one_is_set(served):
    base, body = served.base_url, {"instances": request_records(1)}
    assert requests.post(f"{base}/v1/models/flights:predict", json=body, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.post(f"{base}/v1/models/flights:predict", json=body, headers=wrong, timeout=10).status_code == 401
    assert requests.post(f"{base}/v2/models/flights/infer", json={"inputs": []}, timeout=10).status_code == 401
    assert HTTP.post(f"{base}/v1/models/flights:predict", json=body, timeout=10).status_code == 200
    assert requests.get(f"{base}/v2/health/ready", timeout=10).status_code == 200  # probes stay open


def gated(reg) -> None:
    """Record that the challenger passed its gates, as the promotion asset does under the manual policy."""
    if not passed_gates(history(reg.delta, "flights"), reg.challenger):
        record(reg.delta, "flights", AuditEvent("await_approval", reg.challenger, actor="test", reason="gates passed", alias="challenger"))


def test_traffic_goes_only_to_a_gated_challenger_and_every_change_is_audited(served, serving_registry):
    base = served.base_url
    if not passed_gates(history(serving_registry.delta, "flights"), serving_registry.challenger):
        r = HTTP.post(f"{base}/admin/models/flights/traffic", json={"canary_share": 1.0}, headers=ADMIN, timeout=60)
        assert r.status_code == 409 and "no record of passing its gates" in r.json()["error"], r.text
        status = HTTP.get(f"{base}/admin/models/flights/status", headers=ADMIN, timeout=10).json()
        assert status["traffic"]["canary_share"] == 0.0  # nothing changed
    gated(serving_registry)
    body = {"canary_share": 0.0, "shadow": False, "by": "carol", "reason": "ticket 7"}
    assert HTTP.post(f"{base}/admin/models/flights/traffic", json=body, headers=ADMIN, timeout=60).status_code == 200
    row = history(serving_registry.delta, "flights").filter(pl.col("action") == "traffic").tail(1).row(0, named=True)
    assert (row["actor"], row["reason"], row["model_version"]) == ("carol", "ticket 7", serving_registry.challenger)
    assert json.loads(row["metrics"])["after"] == {"canary_share": 0.0, "shadow": False}


def test_canary_share_is_observed_and_changes_without_restarts(served, serving_registry):
    base = served.base_url
    gated(serving_registry)
    before = HTTP.get(f"{base}/admin/models/flights/status", headers=ADMIN, timeout=10).json()
    set_traffic(base, canary_share=0.3)
    try:
        record = request_records(1)
        with ThreadPoolExecutor(4) as pool:
            versions = list(pool.map(lambda _: predict(base, record, session=client()).json()["model_version"], range(200)))
    finally:
        set_traffic(base, canary_share=0.0)
    share = versions.count(str(serving_registry.challenger)) / len(versions)
    assert 0.18 <= share <= 0.42, share  # binomial(200, 0.3): about 4 standard deviations
    assert set(versions) == {str(serving_registry.champion), str(serving_registry.challenger)}
    after = HTTP.get(f"{base}/admin/models/flights/status", headers=ADMIN, timeout=10).json()
    assert after["champion"]["loads"] == before["champion"]["loads"]  # model replicas were not reloaded


def test_shadow_is_logged_never_returned_and_log_rows_match_requests(served, serving_registry):
    base = served.base_url
    gated(serving_registry)
    set_traffic(base, shadow=True)
    try:
        sent: dict[str, tuple[list[dict], list[float]]] = {}
        for n in (1, 3, 7):
            rid = f"shadow-{uuid.uuid4().hex}"
            records = request_records(n)
            answer = predict(base, records, request_id=rid)
            body = answer.json()
            assert body["model_version"] == str(serving_registry.champion) and body["role"] == "champion"
            assert body["request_id"] == rid and answer.headers["X-Request-Id"] == rid  # once: requests joins repeats
            sent[rid] = (records, body["predictions"])
    finally:
        set_traffic(base, shadow=False)
    total = sum(len(r) for r, _ in sent.values())
    log = read_log(serving_registry, set(sent), expected_rows=2 * total)
    served_rows = log.filter(pl.col("served"))
    shadow_rows = log.filter(~pl.col("served"))
    assert served_rows.height == total and shadow_rows.height == total
    assert set(served_rows["model_version"]) == {serving_registry.champion}
    assert set(shadow_rows["model_version"]) == {serving_registry.challenger}
    assert set(shadow_rows["role"]) == {"shadow"}
    for rid, (records, predictions) in sent.items():
        rows = served_rows.filter(pl.col("request_id") == rid).sort("record")
        assert rows.height == len(records)
        np.testing.assert_allclose(rows["prediction"].to_list(), predictions, rtol=0, atol=1e-12)
        assert rows["dep_delay"].to_list() == [r["dep_delay"] for r in records]  # features are logged
        assert (rows["latency_ms"] > 0).all()
    challenger = serving_registry.boosters[serving_registry.challenger]
    rid = next(iter(sent))
    shadow = shadow_rows.filter(pl.col("request_id") == rid).sort("record")
    expected = challenger.predict(shadow.select(challenger.feature_name()).cast(pl.Float64).to_numpy())
    np.testing.assert_allclose(shadow["prediction"].to_list(), expected, rtol=0, atol=1e-9)


def champion_loads(served) -> set[int]:
    """How many versions each champion replica has loaded (the replicas answer status in turn)."""
    url = f"{served.base_url}/admin/models/flights/status"
    return {HTTP.get(url, headers=ADMIN, timeout=10).json()["champion"]["loads"] for _ in range(12)}


def test_swap_under_load_via_sensor_and_asset_has_no_failed_request(served, serving_registry):
    """A client hammers the endpoint while the champion alias moves and the deployment asset rolls it out."""
    import dagster as dg

    from mlops_assets.deployment import build as build_serving_definitions

    reg = serving_registry
    resource = serving_resource(reg, served.port)
    defs = dg.Definitions.merge(build_serving_definitions(reg.decl), dg.Definitions(resources={"serving": resource}))
    sensor = defs.resolve_sensor_def("flights_champion_sensor")
    job = defs.resolve_job_def("flights_deploy")
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer():
        records = request_records(3)
        session = client()
        while not stop.is_set():
            try:
                r = session.post(f"{served.base_url}/v1/models/flights:predict", json={"instances": records}, timeout=30)
                results.append((r.status_code, r.json().get("model_version", r.text)))
            except requests.RequestException as err:
                results.append((-1, repr(err)))

    loads_before = champion_loads(served)  # per replica (one may be younger: the reliability tests replace one)
    with dg.instance_for_test() as instance:
        cursor = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources={"serving": resource})).cursor
        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            reg.set_alias("champion", reg.challenger)  # promotion
            ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"serving": resource})
            run_requests = list(sensor.evaluate_tick(ctx).run_requests or [])
            assert len(run_requests) == 1 and run_requests[0].tags["mlops/champion_version"] == str(reg.challenger)
            result = job.execute_in_process(instance=instance, tags=run_requests[0].tags)
            assert result.success
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join()
            reg.set_alias("champion", reg.champion)  # the registry as the other tests expect it
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    versions = [v for _, v in results]
    assert versions[0] == str(reg.champion) and versions[-1] == str(reg.challenger)
    assert len(results) > 20
    meta = result.asset_materializations_for_node("flights__deployment")[0].metadata
    assert meta["champion_version"].value == reg.challenger
    assert meta["infer_url"].value == f"{served.base_url}/v2/models/flights/infer"
    # the swap reconfigured the running replicas (second load), it did not replace them
    loads = champion_loads(served)
    assert loads == {n + 1 for n in loads_before}, (loads_before, loads)


def test_an_application_resent_unchanged_while_serve_builds_it_is_built_once(ray_serve, tmp_path):
    """`mlops serve start` deploys the gateway, then each pipeline with the whole set of applications: Serve
    compares code versions only once a build has finished, so the resent gateway was built twice."""
    builds = tmp_path / "builds"
    app = {"name": "build-counter", "route_prefix": "/build-counter", "import_path": "tests.support.build_counter:build"}
    app["args"] = {"builds": str(builds), "seconds": 2.0}
    control.apply(control.current_apps() | {app["name"]: app})
    try:
        deadline = time.monotonic() + 60
        while not builds.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert builds.exists(), "the builder never ran"
        control.apply(control.current_apps())  # the same set, mid-build
        while control.app_status(app["name"])["status"] != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert control.app_status(app["name"])["status"] == "RUNNING"
        assert builds.read_text().splitlines() == ["built"]
    finally:
        apps = control.current_apps()
        apps.pop(app["name"], None)
        control.apply(apps)


def test_gateway_app_is_one_app_for_all_pipelines_and_each_predict_route_goes_straight_to_a_champion(served):
    apps = control.current_apps()
    assert set(apps) == {GATEWAY_APP, "flights", "flights-v1"}
    # the pipeline app's only route is its V2 infer path, answered by the champion itself (one Ray hand-off
    # fewer); V1 predict is its V1 route's application's, champion replicas of their own; everything else,
    # the pinned-version infer included, is the gateway's
    assert apps["flights"].get("route_prefix") == "/v2/models/flights/infer"
    assert apps["flights-v1"].get("route_prefix") == "/v1/models/flights:predict"
    r = HTTP.get(f"{served.base_url}/v2/models/flights/infer", timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "infer takes POST" in r.json()["error"]
    r = HTTP.get(f"{served.base_url}/v1/models/flights:predict", timeout=10)  # not "unknown model flights:predict"
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "predict takes POST" in r.json()["error"]
    for path in ("/v1/models/flights:predict/more", "/v2/models/flights/infer/more"):  # under a route prefix, no endpoint
        r = HTTP.post(f"{served.base_url}{path}", json={}, timeout=10)
        assert r.status_code == 404 and "predictions are asked at POST" in r.json()["error"], (path, r.text)

    def v1_routed() -> dict[str, int]:
        """Requests each V1 route replica answered as champion (status reaches one replica at a time)."""
        counts = {}
        for _ in range(16):
            status = HTTP.get(f"{served.base_url}/admin/models/flights/status", headers=ADMIN, timeout=10).json()
            v1 = status["v1_route"]
            assert v1["champion"]["model_version"] == status["champion"]["model_version"]  # the same champion
            counts[v1["champion"]["replica"]] = v1["routed"].get("champion", 0)
        return counts

    before = v1_routed()
    for _ in range(8):
        assert predict(served.base_url, request_records(1)).status_code == 200
    after = v1_routed()
    assert len(before) == len(after) == 2, (before, after)  # the declared replicas, both seen
    assert sum(after[r] - before[r] for r in after) == 8  # every request answered by the V1 route's own replicas


@pytest.mark.skipif(not os.environ.get("MLOPS_SERVING_SLOW"), reason="replaces every replica (about a minute); set MLOPS_SERVING_SLOW=1")
def test_restart_with_surge_under_load_has_no_failed_request(served, serving_registry):
    """A change Serve cannot apply in place (builder args) starts new replicas before stopping old ones."""
    reg = serving_registry
    results: list[int] = []
    stop = threading.Event()

    def hammer():
        session, records = client(), request_records(2)
        while not stop.is_set():
            try:
                results.append(predict(served.base_url, records, session=session).status_code)
            except requests.RequestException:
                results.append(-1)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        changed = serving_settings(reg).model_copy(update={"log_flush_seconds": 0.31})  # new args: new code version
        control.deploy_pipeline(reg.decl, changed, reg.champion, reg.challenger)
        deadline = time.time() + 240
        seen: list = []
        while time.time() < deadline:  # until every replica is a new one (first load)
            loads = {
                HTTP.get(f"{served.base_url}/admin/models/flights/status", headers=ADMIN, timeout=10).json()["champion"]["loads"]
                for _ in range(6)
            }
            app = control.app_status("flights")
            seen.append((round(time.time()), sorted(loads), app["status"], {n: d["replicas"] for n, d in app["deployments"].items()}))
            if loads == {1} and app["status"] == "RUNNING" and control.current_apps()["flights"]["args"].get("log_flush_seconds") == 0.31:
                break
            time.sleep(2.0)
        else:
            raise TimeoutError(f"replicas were not replaced: {seen[-5:]}")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert results and all(code == 200 for code in results), {c: results.count(c) for c in set(results)}


def test_lone_and_concurrent_v2_requests_answer_alike_and_replicas_size_polars_to_their_cpus(served, serving_registry):
    """A lone V2 request skips Serve's batch queue; concurrent ones still batch; both give the same answers."""
    from serving.app import polars_threads

    base = served.base_url
    records = request_records(8)

    def v2(record: dict) -> float:
        inputs = [{"name": c, "shape": [1], "datatype": V2_TYPE[type(v)], "data": [v]} for c, v in record.items()]
        r = HTTP.post(f"{base}/v2/models/flights/infer", json={"inputs": inputs}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["outputs"][0]["data"][0]

    expected = predict(base, records).json()["predictions"]
    alone = [v2(r) for r in records]  # one at a time
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda k: v2(records[k % len(records)]), range(160)))
    np.testing.assert_allclose(alone, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(together, [expected[k % len(records)] for k in range(160)], rtol=0, atol=1e-12)
    statuses = [HTTP.get(f"{base}/admin/models/flights/status", headers=ADMIN, timeout=10).json() for _ in range(8)]
    routed = [s["routed"] for s in statuses]
    assert any(r.get("alone", 0) > 0 for r in routed), routed
    # and concurrent ones shared Serve's batches: more requests through the queue than batches it ran
    assert any(r.get("champion", 0) - r.get("alone", 0) > r.get("batches", 0) > 0 for r in routed), routed
    assert {s["champion"]["polars_threads"] for s in statuses} == {polars_threads(serving_registry.decl.serving.cpu)}
    # Ray gives a half-CPU replica one OpenMP thread; a large request still predicts on every usable core (declared 0)
    assert serving_registry.decl.serving.cpu.batch_threads == 0
    assert {s["champion"]["batch_threads"] for s in statuses} == {len(os.sched_getaffinity(0))}
    assert {s["champion"]["openmp_wait_policy"] for s in statuses} == {"PASSIVE"}  # replica_env reached the replicas
    # each replica times its own stages (what `mlops bench serving` reads around each case): the requests
    # above were decoded and typed one by one, their batches featurized, predicted and handed to the log
    for s in statuses:
        stages = s["champion"]["stage_ms"]
        assert s["champion"]["replica"] and stages["decode"]["calls"] > 0 and stages["typing"]["calls"] >= stages["decode"]["calls"], stages
        assert 0 < stages["frame"]["calls"] == stages["features"]["calls"] == stages["predict"]["calls"] <= stages["typing"]["calls"], (
            stages
        )
    assert {s["champion"]["user_code_in_separate_thread"] for s in statuses} == {False}  # on Serve's own loop
    # the deployment handed each replica its version's model_source: none of them imported MLflow to load it
    assert {s["champion"]["mlflow_imported"] for s in statuses} == {False}
