"""The default ingress, end to end: `mlops serve start` with HAProxy + direct ingress, as a user runs it.

HAProxy forwards HTTP straight to the ingress replicas (the gateway, the champion for its
V2 infer route and the V1 route's champion replicas), each on a port of its own; an instance claims a private block of ports so two
instances on one host never answer each other's requests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import requests
import yaml

from mlops_assets.cli.bench.serving_bench import v2_body
from mlops_assets.core.declaration import PACKAGED_PIPELINES
from tests.support.serving import (
    free_port,
    offline_features,
    request_records,
)

TOKEN = "ingress-test-token"


def _serve_start(serving_registry, port: int, log: Path, until: str) -> subprocess.Popen:
    """`mlops serve start flights` (HAProxy by default) on the serving registry's home, in its own Ray and its own
    process group, once `until` shows in its output."""
    home = Path(serving_registry.delta.root).parent
    env = {**os.environ, "MLOPS_HOME": str(home), "MLOPS_SERVE_TOKEN": TOKEN, "MLOPS_PIPELINES": str(_declaration(home))}
    env.pop("RAY_ADDRESS", None)
    exe = Path(sys.executable).with_name("mlops")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(exe), "serve", "start", "flights", "--host", "127.0.0.1", "--port", str(port), "--num-cpus", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.time() + 240
    while until not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            _stop(proc)
            raise AssertionError(f"mlops serve start did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


def _declaration(home: Path) -> Path:
    """The packaged flights declaration with one champion replica on each route instead of two: every replica of
    this instance starts on the suite's 2 cores beside the session's Serve, and one is all these tests ask of it
    (the session's Serve and the reliability bench run the declared two)."""
    raw = yaml.safe_load((PACKAGED_PIPELINES / "flights" / "defs.yaml").read_text())
    raw["attributes"]["serving"]["cpu"]["replicas"] = 1
    raw["attributes"]["serving"]["v1_route"] = {"replicas": 1, "num_cpus": 0.25}
    path = home / "ingress-pipelines" / "flights.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # it shuts down the Ray it started
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _haproxy_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("mlops-haproxy-*"))


def _binding(folders: set[Path], port: int) -> dict[str, list[str]]:
    """Of these HAProxy folders, those whose config binds `port` (this test's instance, not another's), with their files."""
    ours = {}
    for folder in folders:
        files = [f for f in folder.rglob("*") if f.is_file()]
        if any(f":{port}" in f.read_text(errors="replace") for f in files if f.stat().st_size < 1_000_000):
            ours[str(folder)] = sorted(f.name for f in files)
    return ours


@pytest.mark.reliability  # a fault case (about 45 s): after the suite in .ci/run, beside the reliability bench's
def test_sigterm_to_the_whole_group_while_starting_leaves_nothing_behind(serving_registry, tmp_path):
    """What systemd's stop does (SIGTERM to every process at once), while the champion is still starting: Ray's
    driver used to abort (exit -6) without any cleanup, or wait 60 s on Ray's GCS, and HAProxy kept the port."""
    port, before = free_port(), _haproxy_folders()
    log = tmp_path / "serve-start.log"
    proc = _serve_start(serving_registry, port, log, until="Ray Serve on")  # Ray and HAProxy up, the champion not yet
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=90)
    finally:
        _stop(proc)
    output = log.read_text()
    # 128 + SIGTERM, after its cleanup; 0 only if the champion came up within the moment the signal took
    assert code == 143 or (code == 0 and "Ctrl-C" in output), output[-3000:]
    assert "SIGTERM received" not in output and "Traceback" not in output, output[-3000:]
    deadline = time.time() + 15  # the janitor removes the folder once the process is gone
    while _binding(_haproxy_folders() - before, port) and time.time() < deadline:
        time.sleep(0.2)
    assert not _binding(_haproxy_folders() - before, port), (_binding(_haproxy_folders() - before, port), output[-3000:])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # nothing listens there any more


OWN_RAY_THEN_A_RAY_CALL = """
from mlops_assets.cli.serve_commands import own_ray
with own_ray(1, "own-ray-test"):
    pass
import ray
try:
    ray.get_actor("anything")  # what a Serve handle's long poll does when it polls once more after the shutdown
except Exception as err:
    print("refused:", type(err).__name__, err)
print("initialized after:", ray.is_initialized())
"""


@pytest.mark.reliability  # starts a Ray of its own (about 10 s)
def test_no_ray_call_starts_a_second_ray_after_serve_start_shuts_its_own_down(tmp_path):
    """A handle's long poll outlives `ray.shutdown` on its own thread; when it polled again, Ray's auto-init
    started a fresh local Ray that nothing stopped (seen once in five SIGTERMs to `mlops serve start`'s group)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_AUTO_CONNECT")}
    done = subprocess.run(
        [sys.executable, "-c", OWN_RAY_THEN_A_RAY_CALL], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "initialized after: False" in output and "refused:" in output, output[-3000:]
    assert output.count("Started a local Ray instance") == 1, output[-3000:]


@pytest.fixture(scope="module")
def haproxy_server(serving_registry):
    home = Path(serving_registry.delta.root).parent
    port = free_port()
    proc = _serve_start(serving_registry, port, home / "serve-start.log", until="Ctrl-C")
    try:
        yield f"http://127.0.0.1:{port}", (home / "serve-start.log").read_text()
    finally:
        _stop(proc)


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
    v1 = requests.post(f"{base}/v1/models/flights:predict", json={"instances": records}, headers=auth, timeout=30)  # its own replicas
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["predictions"], expected, rtol=0, atol=1e-9)
    assert requests.post(f"{base}/v2/models/flights/infer", data=body, timeout=30).status_code == 401
    assert requests.get(f"{base}/v2/health/ready", timeout=30).json() == {"ready": True, "models": {"flights": True}}
