"""The default ingress, end to end: `mlops serve start` with HAProxy + direct ingress, as a user runs it.

HAProxy forwards HTTP straight to the ingress replicas (the gateway, and the champion for its
V2 infer route), each on a port of its own; an instance claims a private block of ports so two
instances on one host never answer each other's requests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import requests

from mlops_assets.cli.bench.serving_bench import v2_body
from tests.support.serving import (
    free_port,
    offline_features,
    request_records,
)

TOKEN = "ingress-test-token"


@pytest.fixture(scope="module")
def haproxy_server(serving_registry):
    """`mlops serve start flights` (HAProxy by default) on the serving registry's home, in its own Ray."""
    home = Path(serving_registry.delta.root).parent
    port = free_port()
    env = {**os.environ, "MLOPS_HOME": str(home), "MLOPS_SERVE_TOKEN": TOKEN}
    env.pop("RAY_ADDRESS", None)
    log = home / "serve-start.log"
    exe = Path(sys.executable).with_name("mlops")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(exe), "serve", "start", "flights", "--host", "127.0.0.1", "--port", str(port), "--num-cpus", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 240
        while "Ctrl-C" not in log.read_text():
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"mlops serve start did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}", log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)  # it shuts down the Ray it started
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_default_ingress_is_haproxy_and_answers_like_lightgbm(haproxy_server, serving_registry):
    base, started = haproxy_server
    assert "via HAProxy + direct ingress" in started
    records = request_records(5)
    booster = serving_registry.boosters[serving_registry.champion]
    expected = booster.predict(offline_features(serving_registry, records).select(booster.feature_name()).cast(pl.Float64).to_numpy())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = v2_body(records)
    v2 = requests.post(f"{base}/v2/models/flights/infer", data=body, headers=auth, timeout=30)  # the champion's own route
    assert v2.status_code == 200, v2.text
    np.testing.assert_allclose(v2.json()["outputs"][0]["data"], expected, rtol=0, atol=1e-9)
    assert v2.headers["X-Model-Version"] == str(serving_registry.champion)
    v1 = requests.post(f"{base}/v1/models/flights:predict", json={"instances": records}, headers=auth, timeout=30)  # the gateway
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["predictions"], expected, rtol=0, atol=1e-9)
    assert requests.post(f"{base}/v2/models/flights/infer", data=body, timeout=30).status_code == 401
    assert requests.get(f"{base}/v2/health/ready", timeout=30).json() == {"ready": True, "models": {"flights": True}}
