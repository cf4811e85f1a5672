"""`mlops bench serving`: our Ray Serve endpoint against `mlflow models serve` and a naive FastAPI app.

One run:

1. builds a platform home (or reuses ``--workdir``): flights days landed, ingested and
   featurized by the platform's own jobs, then ``flights_train`` trains a LightGBM
   model (200 trees, 63 leaves) that the gates and auto promotion make ``champion``
   in a SQLite MLflow registry;
2. starts, each as its own process on loopback, one after the other:
   - ``ours``: ``mlops serve start`` (the platform's serving stack, as a user starts it),
     asked over V1 ``POST /v1/models/flights:predict`` and V2 ``POST /v2/models/flights/infer``
     with *raw* flight records (it validates them and computes the features itself);
   - ``mlflow``: ``mlflow models serve -m models:/flights/<champion>`` of the same
     version, asked with the *feature* rows of the same records (``dataframe_split``);
   - ``naive``: one uvicorn process, a FastAPI route calling ``Booster.predict`` on the
     same model file (``mlops_assets.bench.naive_app``), asked with the feature rows;
   - ``floor``: Ray Serve's own floor (``mlops_assets.cli.bench.floor_app``): the same
     ingress, replica group and request bodies as ``ours``, answered with a constant;
3. drives each with ``wrk`` (a separate C process, a Lua script POSTing fixed bodies):
   single-row requests at concurrency 1 and 16, then 1,000- and 10,000-row batches; each of
   ``ours``' cases starts once its replicas' prediction logs have written the earlier cases' rows;
4. measures in-process prediction of the same 10,000 feature rows (LightGBM, and
   lleaves' compiled trees where installed) as the ceiling for batches, and the champion's
   own work for one single-row request (typing, features, predict, log row), in-process.

Every server's answers are checked against ``Booster.predict`` on the offline features
before it is timed. The servers never share a Python process with the load generator.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import yaml

from mlops_assets.cli.ports import claim_port
from serving.single_row import UNCHECKED

if TYPE_CHECKING:
    from resources.delta_lake import DeltaLakeResource

PIPELINE = "flights"
DAYS = 35  # Jan 1 - Feb 4 2013 land; requests are flights of Feb 5 (the day after)
SERVE_DAY = date(2013, 2, 5)
# the reference model: 200 trees, 63 leaves (early stopping can not cut it short)
BENCH_TRAINING = {
    "window_days": 21,
    "validation_days": 4,
    "min_rows": 500,
    "num_boost_round": 200,
    "early_stopping_rounds": 200,
    "params": {"learning_rate": 0.01, "num_leaves": 63, "min_data_in_leaf": 50},
}
BENCH_GATES = {"floors": {"mae": 40.0}, "max_regression": 0.5, "holdout_days": 4}


# -- the platform home with a champion ---------------------------------------------------------------


@dataclass
class Home:
    root: Path
    pipelines: Path  # folder with the bench's flights.yaml
    tracking_uri: str
    version: int
    model_file: Path
    feature_columns: list[str]
    env: dict[str, str] = field(default_factory=dict)


def bench_declaration(compiled_trees: bool = False):
    from mlops_assets.core.declaration import (
        PACKAGED_PIPELINES,
        derive_declaration,
        load_declaration,
    )

    packaged = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    return derive_declaration(
        packaged,
        "flights (bench)",
        training=BENCH_TRAINING,
        gates=BENCH_GATES,
        promotion={"policy": "auto"},
        serving={"compiled_trees": compiled_trees},
    )


def _env(root: Path, pipelines: Path) -> dict[str, str]:
    return {
        "MLOPS_HOME": str(root),
        "MLOPS_DELTA_URI": str(root / "delta"),
        "MLOPS_PIPELINES": str(pipelines),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
    }


def prepare_home(root: Path, log=print, compiled_trees: bool = False) -> Home:
    """A platform home with a trained, promoted flights champion; reused when `root` already has one."""
    root = root.resolve()
    pipelines = root / "pipelines"
    pipelines.mkdir(parents=True, exist_ok=True)
    decl = bench_declaration(compiled_trees)
    (pipelines / "flights.yaml").write_text(yaml.safe_dump(decl.model_dump(mode="json", by_alias=True)))
    env = _env(root, pipelines)
    os.environ.update(env)  # this process (training) and every server it starts see the same home

    from mlops_assets.core.names import CHAMPION
    from resources.registered_models import resolve_alias

    uri = env["MLFLOW_TRACKING_URI"]
    if not ((root / "mlflow" / "mlflow.db").exists() and resolve_alias(uri, PIPELINE, CHAMPION) is not None):
        _train(root, decl, log)
    version = resolve_alias(uri, PIPELINE, CHAMPION)
    if version is None:
        raise RuntimeError(f"training in {root} left no champion")
    _compact_prediction_log(root, log)
    from serving.loaded_model import load_version

    cache = root / "model_cache"
    cache.mkdir(exist_ok=True)
    model = load_version(uri, PIPELINE, version, cache_dir=str(cache))
    return Home(root, pipelines, uri, version, Path(model.model_file), model.feature_columns, env)


def _compact_prediction_log(root: Path, log) -> None:
    """The home's prediction log as `<pipeline>/prediction_log_compaction` leaves it after each serving-drift
    check: a reused home holds every earlier run's appends, and each append costs more with each file and log
    entry the table keeps."""
    from mlops_assets.core.names import PREDICTION_LOG, PREDICTION_LOG_FILE_RETENTION_HOURS, PREDICTION_LOG_PROPERTIES
    from resources.delta_lake import DeltaLakeResource

    figures = DeltaLakeResource(root=str(root / "delta")).compact(
        PIPELINE, PREDICTION_LOG, PREDICTION_LOG_PROPERTIES, PREDICTION_LOG_FILE_RETENTION_HOURS
    )
    if figures["files_before"]:
        log(
            f"  prediction log compacted: {figures['files_before']:,} files to {figures['files_after']:,}, {figures['log_entries']:,} log entries"
        )


def home_definitions(root: Path, decl):
    """The platform's definitions for one declaration over the home at `root` (what `dg dev` would load)."""
    from mlops_assets.core.home import MlopsHome
    from mlops_assets.definitions import build_definitions
    from resources.defaults import model_resources, serving_resources
    from resources.delta_lake import DeltaLakeResource
    from resources.landing_zone import LandingZoneResource

    home = MlopsHome(root)
    for sub in ("landing", "delta", "mlflow", "dagster"):
        (root / sub).mkdir(exist_ok=True)
    landing = LandingZoneResource(root=str(home.landing))
    resources = {"landing": landing, "delta": DeltaLakeResource(root=str(home.delta)), **model_resources(home), **serving_resources(home)}
    return build_definitions([decl], resources=resources), landing


def land_and_ingest(root: Path, decl, days: int, log) -> None:
    """`days` flights days from Jan 1 2013 landed, the reference tables loaded, each day ingested and featurized."""
    import dagster as dg

    from mlops_assets.defs.flights.upstream import land_days

    defs, landing = home_definitions(root, decl)
    start = time.perf_counter()
    with dg.DagsterInstance.ephemeral() as instance:
        land_days(decl, landing, date(2013, 1, 1), days)
        defs.resolve_job_def(f"{decl.name}_reference").execute_in_process(instance=instance)
        for i in range(days):
            day = date.fromordinal(date(2013, 1, 1).toordinal() + i).isoformat()
            defs.resolve_job_def(f"{decl.name}_ingest").execute_in_process(instance=instance, partition_key=day)
    log(f"  ingested and featurized {days} days in {time.perf_counter() - start:.0f}s")


def _train(root: Path, decl, log) -> None:
    import dagster as dg

    land_and_ingest(root, decl, DAYS, log)
    defs, _ = home_definitions(root, decl)
    start = time.perf_counter()
    with dg.DagsterInstance.ephemeral() as instance:
        defs.resolve_job_def(f"{PIPELINE}_train").execute_in_process(instance=instance)
    log(f"  trained and promoted the champion in {time.perf_counter() - start:.0f}s")


# -- requests -----------------------------------------------------------------------------------------


@dataclass
class Requests:
    records: list[dict]  # raw records as a client sends them (input columns, ISO datetimes)
    features: pl.DataFrame  # the model's feature rows for those records, offline
    expected: np.ndarray  # Booster.predict on the features


def request_rows(home: Home, n: int) -> Requests:
    """`n` real flights of the served day (repeated when the day has fewer), their features and predictions."""
    import lightgbm as lgb

    from mlops_assets.core.feature_contract import load_feature_module
    from mlops_assets.defs.flights.upstream import day_frame
    from resources.delta_lake import DeltaLakeResource
    from serving.reference import serving_reference

    decl = bench_declaration()
    module = load_feature_module(decl)
    raw = day_frame(SERVE_DAY).filter(pl.col("dep_delay").is_not_null())
    raw = pl.concat([raw] * (n // raw.height + 1)).head(n)
    reference, _ = serving_reference(decl, module, DeltaLakeResource(root=str(home.root / "delta")))
    features = module.build(raw.select(list(decl.table_schema.columns)), reference).select(home.feature_columns).cast(pl.Float64)
    records = raw.select(module.input_columns(decl)).with_columns(pl.col("time_hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_dicts()
    expected = lgb.Booster(model_file=str(home.model_file)).predict(features.to_numpy(), num_threads=1)
    return Requests(records, features, expected)


def v1_body(records: list[dict]) -> bytes:
    return json.dumps({"instances": records}).encode()


def v2_body(records: list[dict]) -> bytes:
    """Open Inference Protocol: one tensor per raw input column."""
    columns = list(records[0])
    inputs = []
    for c in columns:
        data = [r[c] for r in records]
        sample = next((v for v in data if v is not None), "")
        dtype = "BYTES" if isinstance(sample, str) else "FP64" if isinstance(sample, float) else "INT64"
        inputs.append({"name": c, "shape": [len(data)], "datatype": dtype, "data": data})
    return json.dumps({"inputs": inputs}).encode()


def features_body(features: pl.DataFrame) -> bytes:
    """What `mlflow models serve` and the naive app take: the model's feature rows (`dataframe_split`)."""
    return json.dumps({"dataframe_split": {"columns": features.columns, "data": features.rows()}}).encode()


# -- servers ------------------------------------------------------------------------------------------


def _post(url: str, body: bytes, timeout: float = 60.0) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Server:
    """One server process (its own process group, so it and its children stop together)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_urls: tuple[str, ...]  # each must answer 200: a server deploying applications one after another is ready with the last
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self, timeout_s: float) -> float:
        started = time.perf_counter()
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready; log: {self.log_path}\n{self.tail()}"
                )
            if all(_get_ok(url) for url in self.ready_urls):
                return time.perf_counter() - started
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"{self.name} not ready at {', '.join(self.ready_urls)} within {timeout_s:.0f}s; log: {self.log_path}\n{self.tail()}"
        )

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (`mlops serve start` then shuts Serve and its own Ray down), SIGKILL to the group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever it left behind in its own group
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.log.close()


def session_cpu_s(sid: int) -> float:
    """CPU seconds (user + system) of the live processes of one session: a server and everything it started
    (Ray's raylet, workers and HAProxy included). Less sensitive to other work on the host than wall-clock rates."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) == sid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# a served stack's CPU with no requests: measured once it has settled after the load (right after start-up
# or load, Serve's controller, Ray's GCS and the replicas still catch up, which once read as 0.6 cores)
IDLE_SETTLE_S = 15.0
IDLE_WINDOW_S = 15.0


def settled_idle_cores(sid: int) -> float:
    time.sleep(IDLE_SETTLE_S)
    before = session_cpu_s(sid)
    time.sleep(IDLE_WINDOW_S)
    return (session_cpu_s(sid) - before) / IDLE_WINDOW_S


def _exe(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


BENCH_ADMIN_TOKEN = "mlops-bench-admin"  # our server's admin token in the bench: it reads the champion's status


def route_champions(port: int) -> dict[str, dict]:
    """The champion's status by protocol, from one reading of the admin route (through the gateway): a replica
    answering V2, and one answering V1 (the V1 route's own where the pipeline has them, else the V2 route's)."""
    url = f"http://127.0.0.1:{port}/admin/models/{PIPELINE}/status"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {BENCH_ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        status = json.loads(resp.read())
    v1 = status.get("v1_route")
    return {"v2": status["champion"], "v1": v1["champion"] if v1 and v1.get("champion") else status["champion"]}


def champion_status(port: int, protocol: str = "v2") -> dict:
    """The champion's status as one of the replicas answering `protocol` reports it."""
    return route_champions(port)[protocol]


def replica_statuses(port: int, replicas: int, protocol: str = "v2", tries: int = 12) -> dict[str, dict]:
    """Each champion replica's status, by replica: the status route answers from whichever replica the gateway
    picks, so it is asked until every replica has answered (or `tries` runs out)."""
    seen: dict[str, dict] = {}
    for _ in range(tries):
        champion = champion_status(port, protocol)
        seen[champion["replica"]] = champion
        if len(seen) >= replicas:
            break
    return seen


def replica_stage_times(port: int, replicas: int, protocol: str = "v2") -> dict[str, dict]:
    """Each champion replica's stage totals (`stage_ms`), by replica."""
    return {replica: status["stage_ms"] for replica, status in replica_statuses(port, replicas, protocol).items()}


def wait_for_written_log(port: int, replicas: dict[str, int], timeout_s: float = 60.0) -> None:
    """Until every champion replica's prediction log has written what earlier cases queued (nothing queued,
    and no row written between two readings), so a case does not start while the log's writer thread still
    writes the previous case's rows (a 10,000-row case leaves seconds of Delta appends behind)."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        seen = {r: s for protocol, n in replicas.items() for r, s in replica_statuses(port, n, protocol).items()}
        reading = {r: (s["prediction_log"]["queued_rows"], s["prediction_log"]["logged_rows"]) for r, s in seen.items()}
        if len(seen) >= sum(replicas.values()) and not any(queued for queued, _ in reading.values()) and reading == last:
            return
        last = reading
        time.sleep(0.3)


def served_split(before: dict[str, dict], after: dict[str, dict]) -> dict[str, float]:
    """Milliseconds per request of each of the champion's stages between two readings, over the replicas read
    both times (a replica missing from either reading is left out of both sides)."""
    from serving.stage_times import per_request, total

    both = sorted(before.keys() & after.keys())
    return per_request(total([before[r] for r in both]), total([after[r] for r in both]))


def wait_for_predictor(port: int, compiled_trees: bool, log, timeout_s: float = 180.0) -> str:
    """What predicts large requests in our champion (lightgbm, tl2cgen). The bench waits until a replica's
    background checks have settled (the single-row C API's; with compiled trees declared, their build), so no
    case measures a check or the predictor it replaces; a replica of each route is asked (V1's own, where declared)."""
    deadline = time.monotonic() + timeout_s
    while True:
        routes = route_champions(port)
        champion = routes["v2"]
        settled = all(
            (not compiled_trees or c.get("compiled_trees") != "building") and c.get("single_row") != UNCHECKED for c in routes.values()
        )
        if settled or time.monotonic() > deadline:
            note, lone = champion.get("compiled_trees"), champion.get("single_row")
            log(f"  ours: large requests predicted by {champion.get('predictor')}" + (f" ({note})" if note else ""))
            log("  ours: lone rows predicted by " + ("LightGBM's single-row C API" if lone is None else f"Booster.predict ({lone})"))
            return str(champion.get("predictor"))
        time.sleep(1.0)


def ours_server(
    home: Home, port: int, logs: Path, extra_env: dict[str, str] | None = None, num_cpus: int = 2, proxy: str = "haproxy"
) -> Server:
    env = {**os.environ, **home.env, "MLOPS_SERVE_ADMIN_TOKEN": BENCH_ADMIN_TOKEN, **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)  # a fresh Ray of its own, like `mlops serve start` on a laptop
    argv = [
        _exe("mlops"),
        "serve",
        "start",
        PIPELINE,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-cpus",
        str(num_cpus),
        "--proxy",
        proxy,
    ]
    return Server("ours", argv, env, (f"http://127.0.0.1:{port}/v2/health/ready",), logs / "ours.log")


def mlflow_server(home: Home, port: int, logs: Path) -> Server:
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH
    env = {**os.environ, **home.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = [
        _exe("mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{PIPELINE}/{home.version}",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    return Server("mlflow", argv, env, (f"http://127.0.0.1:{port}/ping",), logs / "mlflow.log")


def floor_server(home: Home, port: int, logs: Path, num_cpus: int = 2, proxy: str = "haproxy") -> Server:
    """The floor behind the ingress ours runs behind (`proxy`): the same ingress on both sides."""
    env = {**os.environ, **home.env}
    env.pop("RAY_ADDRESS", None)
    argv = [
        sys.executable,
        "-m",
        "mlops_assets.cli.bench.floor_app",
        "--port",
        str(port),
        "--num-cpus",
        str(num_cpus),
        "--pipeline",
        PIPELINE,
        "--proxy",
        proxy,
    ]
    # both applications: V1 deploys after V2 (a V1 case once ran into 1,742 HAProxy errors when only V2 was asked)
    routes = (f"http://127.0.0.1:{port}/v2/models/{PIPELINE}/infer", f"http://127.0.0.1:{port}/v1/models/{PIPELINE}:predict")
    return Server("floor", argv, env, routes, logs / "floor.log")


def naive_server(home: Home, port: int, logs: Path) -> Server:
    env = {**os.environ, "NAIVE_MODEL_FILE": str(home.model_file)}
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "mlops_assets.cli.bench.naive_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return Server("naive", argv, env, (f"http://127.0.0.1:{port}/ping",), logs / "naive.log")


# -- wrk ----------------------------------------------------------------------------------------------

WRK_MISSING = (
    "wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk`; the bench needs it as its load generator"
)

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"socket_errors\\": %d, \\"non2xx\\": %d, "
    .. "\\"p50_us\\": %.1f, \\"p99_us\\": %.1f, \\"mean_us\\": %.1f, \\"max_us\\": %.1f}}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(WRK_MISSING)
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict:
    """wrk's summary: requests, duration, req/s, p50/p99 ms, errors; the WRK_JSON line (our Lua `done`) where present."""
    out: dict = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if not m:
        raise ValueError(f"no wrk summary in:\n{output}")
    out["requests"] = int(m.group(1))
    out["duration_s"] = _ms(m.group(2) + m.group(3)) / 1e3
    m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    out["req_s"] = float(m.group(1)) if m else out["requests"] / out["duration_s"]
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", output, re.M)
        if m:
            out[f"p{pct}_ms"] = _ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    out["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    m = re.search(r"^WRK_JSON (\{.*\})$", output, re.M)
    if m:  # microsecond precision from the Lua `done` hook
        j = json.loads(m.group(1))
        out.update(
            requests=j["requests"],
            duration_s=j["duration_us"] / 1e6,
            non2xx=j["non2xx"],
            socket_errors=j["socket_errors"],
            p50_ms=j["p50_us"] / 1e3,
            p99_ms=j["p99_us"] / 1e3,
            mean_ms=j["mean_us"] / 1e3,
        )
        out["req_s"] = j["requests"] / (j["duration_us"] / 1e6) if j["duration_us"] else 0.0
    return out


def run_wrk(
    url: str,
    body: bytes,
    connections: int,
    duration_s: float,
    workdir: Path,
    tag: str,
    warmup_s: float = 1.0,
    server_sid: int | None = None,
    after_warmup: Callable[[], None] | None = None,
) -> dict:
    """One wrk run of `duration_s` after a warm-up of `warmup_s`; `after_warmup` is called between the two (where a
    reading taken before the timed run must not count the warm-up's requests)."""
    body_file = workdir / f"{tag}.json"
    body_file.write_bytes(body)
    script = workdir / f"{tag}.lua"
    script.write_text(LUA.format(body=body_file))
    wrk = wrk_path()
    base = [wrk, "-t1", f"-c{connections}", "--latency", "--timeout", "60s", "-s", str(script)]
    warm_answered = 0
    if warmup_s > 0:
        warm = subprocess.run([*base, f"-d{max(1, round(warmup_s))}s", url], capture_output=True, text=True, timeout=warmup_s + 120)
        if warm.returncode == 0:
            w = parse_wrk(warm.stdout)
            warm_answered = w["requests"] - w["non2xx"]
    if after_warmup is not None:
        after_warmup()
    cpu = session_cpu_s(server_sid) if server_sid else None
    done = subprocess.run([*base, f"-d{max(1, round(duration_s))}s", url], capture_output=True, text=True, timeout=duration_s + 180)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    out = parse_wrk(done.stdout)
    # requests answered with 200, the warm-up's included: what the prediction log must hold (`logged_requests`)
    out["answered"] = warm_answered + out["requests"] - out["non2xx"]
    if cpu is not None and out["requests"]:
        out["server_cpu_ms_per_req"] = (session_cpu_s(server_sid) - cpu) * 1e3 / out["requests"]  # type: ignore[arg-type]
    return out


# -- the run ------------------------------------------------------------------------------------------

# (case, rows per request, concurrency)
CASES = [("single c=1", 1, 1), ("single c=16", 1, 16), ("batch 1k", 1_000, 1), ("batch 10k", 10_000, 1)]
CHECKED_SIZES = (1, 10, 1000)  # requests compared with Booster.predict before a side is timed: each serving path once


def _check(name: str, answer: list, expected: np.ndarray) -> float:
    got = np.asarray(answer, dtype=float)
    if got.shape != expected.shape:
        raise AssertionError(f"{name} answered {got.shape[0]} predictions for {expected.shape[0]} rows")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if diff > 1e-6:
        raise AssertionError(f"{name} predictions differ from Booster.predict by up to {diff}")
    return diff


def in_process(home: Home, features: pl.DataFrame, repeat: int = 5) -> dict:
    """Rows/s of prediction in this process on the 10,000 feature rows: the ceiling for batches."""
    import lightgbm as lgb

    x = features.to_numpy()
    booster = lgb.Booster(model_file=str(home.model_file))
    out: dict = {}

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return x.shape[0] / min(times)

    out["lightgbm_rows_s"] = best(lambda: booster.predict(x))
    out["lightgbm_1thread_rows_s"] = best(lambda: booster.predict(x, num_threads=1))
    try:
        import hashlib

        import lleaves  # compiled trees; optional

        digest = hashlib.sha256(home.model_file.read_bytes()).hexdigest()[:16]
        model = lleaves.Model(model_file=str(home.model_file))
        start = time.perf_counter()
        model.compile(cache=str(home.root / f"lleaves-{digest}.bin"))  # compiled once per model file, then loaded
        out["lleaves_compile_s"] = time.perf_counter() - start
        out["lleaves_max_abs_diff"] = float(np.max(np.abs(model.predict(x) - booster.predict(x))))
        out["lleaves_rows_s"] = best(lambda: model.predict(x))
        out["lleaves_1thread_rows_s"] = best(lambda: model.predict(x, n_jobs=1))
    except ImportError:
        out["lleaves_rows_s"] = None
    out["ceiling"] = "lleaves" if out["lleaves_rows_s"] else "lightgbm"
    out["ceiling_rows_s"] = out["lleaves_rows_s"] or out["lightgbm_rows_s"]
    return out


def champion_steps(home: Home, records: list[dict], repeat: int = 300) -> dict:
    """Milliseconds of the champion's own work for one single-row request, in this process: the
    floor under any request path (typing, features, predict, log row), apart from Ray and HTTP."""
    from resources.serving import ServeSettings
    from serving.deployments import ModelServer
    from serving.prediction_log import answered_rows
    from serving.requests import typed_frame

    settings = ServeSettings(
        pipeline=PIPELINE, tracking_uri=home.tracking_uri, delta_root=str(home.root / "delta"), pipelines=str(home.pipelines)
    )
    server = ModelServer.func_or_class(settings.model_dump(), "champion")  # the class each replica runs
    try:
        server.reconfigure({"model_version": home.version})
        loaded = server.loaded
        frame = typed_frame(records, server.schema)
        features = server.module.build(frame, loaded.reference, loaded.index)
        result = loaded.model.predict(features)
        item = (frame, "bench", time.time(), "champion", True, None)

        def ms(fn, times: int = repeat) -> float:
            fn()
            start = time.perf_counter()
            for _ in range(times):
                fn()
            return (time.perf_counter() - start) / times * 1000

        return {
            "typing_ms": ms(lambda: typed_frame(records, server.schema)),
            "features_ms": ms(lambda: server.module.build(frame, loaded.reference, loaded.index)),
            "lookups_ms": ms(lambda: loaded.index.join(frame)),  # the declared lookups' probes, part of features
            "predict_ms": ms(lambda: loaded.model.predict(features)),
            "log_row_ms": ms(lambda: answered_rows([server._answered(loaded, features, result, [item], [1])])),
            # what the writer thread spends per request when a flush holds 100 of them
            "log_row_in_flush_ms": ms(lambda: answered_rows([server._answered(loaded, features, result, [item], [1])] * 100), 30) / 100,
            "predict_many_ms": ms(lambda: server.predict_many([item])),
        }
    finally:
        server.close()


def _load() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2), "cpus": os.cpu_count()}


def bench(
    workdir: Path | None = None,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
    sides: tuple[str, ...] = ("ours", "floor", "mlflow", "naive"),
    ours_env: dict[str, str] | None = None,
    num_cpus: int = 2,
    cases: tuple[str, ...] | None = None,
    protocols: tuple[str, ...] = ("v1", "v2"),
    proxy: str = "haproxy",
    compiled_trees: bool = False,
    log=print,
) -> dict:
    """Everything above in one run; `cases` (names from CASES) and `protocols` (ours: v1, v2) narrow it for lever runs."""
    chosen = [c for c in CASES if cases is None or c[0] in cases]
    if not chosen:
        raise ValueError(f"no case among {cases}; cases are {', '.join(c[0] for c in CASES)}")
    wrk_path()  # fail before any training when the load generator is missing
    keep = workdir is not None
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlops-bench-serving-"))
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        log(f"platform home {root} (training the champion unless it has one)")
        home = prepare_home(root, log, compiled_trees)
        sizes = sorted({n for _, n, _ in chosen} | set(CHECKED_SIZES))
        reqs = request_rows(home, max(sizes + [10_000]))
        bodies = {}
        for n in sizes:
            records, feats = reqs.records[:n], reqs.features.head(n)
            bodies[n] = {"v1": v1_body(records), "v2": v2_body(records), "features": features_body(feats)}
        result: dict = {
            "machine_before": _load(),
            "model": {"name": PIPELINE, "version": home.version, "trees": _trees(home), "features": len(home.feature_columns)},
            "duration_s": duration_s,
            "ours_env": ours_env or {},
            "ours_proxy": proxy,
            "ours_compiled_trees": compiled_trees,
            "results": [],
            "in_process": in_process(home, reqs.features.head(10_000)),
            "champion_steps": champion_steps(home, reqs.records[:1]),
        }
        ports = {side: claim_port() for side in sides}  # claimed (mlops_assets.cli.ports): none taken meanwhile
        serving = bench_declaration(compiled_trees).serving
        # the champion replicas answering each protocol, read per case: V1's own route where declared
        replicas = {"v2": max(1, serving.cpu.replicas)} | ({"v1": max(1, serving.v1_route.replicas)} if serving.v1_route else {})
        from resources.delta_lake import DeltaLakeResource

        delta = DeltaLakeResource(root=str(root / "delta"))  # the bench home's tables: the prediction log's requests
        for side in sides:
            if side == "ours":
                logged_before = logged_requests(delta)  # the bench home's log holds earlier runs' requests
                server = ours_server(home, ports["ours"], logs, ours_env, num_cpus, proxy)
                urls = {
                    "v1": f"http://127.0.0.1:{ports['ours']}/v1/models/{PIPELINE}:predict",
                    "v2": f"http://127.0.0.1:{ports['ours']}/v2/models/{PIPELINE}/infer",
                }
                urls = {k: v for k, v in urls.items() if k in protocols}
            elif side == "floor":
                server = floor_server(home, ports["floor"], logs, num_cpus, proxy)
                urls = {
                    "v1": f"http://127.0.0.1:{ports['floor']}/v1/models/{PIPELINE}:predict",
                    "v2": f"http://127.0.0.1:{ports['floor']}/v2/models/{PIPELINE}/infer",
                }
                urls = {k: v for k, v in urls.items() if k in protocols}
            elif side == "mlflow":
                server = mlflow_server(home, ports["mlflow"], logs)
                urls = {"features": f"http://127.0.0.1:{ports['mlflow']}/invocations"}
            else:
                server = naive_server(home, ports["naive"], logs)
                urls = {"features": f"http://127.0.0.1:{ports['naive']}/invocations"}
            log(f"{side}: starting ({' '.join(Path(a).name if i == 0 else a for i, a in enumerate(server.argv))})")
            try:
                startup = server.start(timeout_s=300)
                if side == "ours":
                    result["ours_predictor"] = wait_for_predictor(ports["ours"], compiled_trees, log)
                for protocol, url in urls.items() if side != "floor" else []:  # the floor answers a constant
                    # each path a request can take: one row (the single-row path), a small batch, a large one
                    diffs = [
                        _check(f"{side} {protocol} {n} rows", _predictions(_post(url, bodies[n][protocol]), protocol), reqs.expected[:n])
                        for n in CHECKED_SIZES
                    ]
                    checked = ", ".join(f"{n:,}" for n in CHECKED_SIZES)
                    log(
                        f"  {side} {protocol}: ready in {startup:.0f}s, requests of {checked} rows match Booster.predict (max diff {max(diffs):.1e})"
                    )
                for protocol, url in urls.items():
                    for case, n, c in chosen:
                        if side == "ours":
                            wait_for_written_log(ports["ours"], replicas)
                        group = protocol if protocol in replicas else "v2"  # the replicas that answer this protocol
                        stages: dict = {}  # read after the warm-up: the timed requests' work only

                        def read_stages(group=group, stages=stages) -> None:
                            stages.update(replica_stage_times(ports["ours"], replicas[group], group))

                        w = run_wrk(
                            url,
                            bodies[n][protocol],
                            c,
                            duration_s,
                            logs,
                            f"{side}-{protocol}-{n}-{c}",
                            warmup_s,
                            server.proc.pid,
                            read_stages if side == "ours" else None,
                        )
                        row = {"side": side, "protocol": protocol, "case": case, "rows": n, "concurrency": c, **w, "rows_s": w["req_s"] * n}
                        if side == "ours":  # the champion's own work in this case, per request, as served
                            row["served_ms"] = served_split(stages, replica_stage_times(ports["ours"], replicas[group], group))
                        result["results"].append(row)
                        log(
                            f"  {side:6} {protocol:8} {case:12} {row['req_s']:9.1f} req/s  {row['rows_s']:11.0f} rows/s  "
                            f"p50 {row.get('p50_ms', float('nan')):8.2f} ms  p99 {row.get('p99_ms', float('nan')):8.2f} ms  "
                            f"server CPU {row.get('server_cpu_ms_per_req', float('nan')):7.2f} ms/req"
                            + (
                                f"  ERRORS non2xx={row['non2xx']} socket={row['socket_errors']}"
                                if row["non2xx"] or row["socket_errors"]
                                else ""
                            )
                        )
                if side == "ours":  # idle means idle: the last case's rows written first, not being written
                    wait_for_written_log(ports["ours"], replicas)
                idle_cores = settled_idle_cores(server.proc.pid)
                result.setdefault("idle_cpu_cores", {})[side] = idle_cores
                log(f"  {side}: {idle_cores:.3f} cores busy while idle (its whole process session, settled)")
            finally:
                server.stop()
            if side == "ours":  # every answer logged: the replicas flush on the way down
                ours = [r for r in result["results"] if r["side"] == "ours"]
                answered = sum(r["answered"] for r in ours) + len(urls) * len(CHECKED_SIZES)  # + the checks
                logged = logged_requests(delta) - logged_before
                # requests still in flight when wrk stops are answered and logged but not counted by wrk: at most
                # one per connection per wrk run (warm-up and timed), so the log may run ahead by that much, no more
                in_flight = sum(2 * r["concurrency"] for r in ours)
                result["prediction_log"] = {"answered": answered, "logged": logged, "in_flight": in_flight}
                log(f"  ours: {logged:,} requests in the prediction log, {answered:,} answered (wrk's counts and the checks)")
        result["machine_after"] = _load()
        result["ratios"] = ratios(result)
        result["targets"] = targets(result)
        return result
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def logged_requests(delta: "DeltaLakeResource") -> int:
    """Requests the bench pipeline's prediction log holds (distinct request ids; a request logs a row per record)."""
    from mlops_assets.core.names import PREDICTION_LOG

    log = delta.scan(PIPELINE, PREDICTION_LOG)
    return 0 if log is None else log.select(pl.col("request_id").n_unique()).collect().item()


def _trees(home: Home) -> int:
    import lightgbm as lgb

    return lgb.Booster(model_file=str(home.model_file)).num_trees()


def _predictions(answer: dict, protocol: str) -> list:
    if protocol == "v2":
        return next(o["data"] for o in answer["outputs"] if o["name"] == "predictions")
    return answer["predictions"]


def _row(result: dict, side: str, case: str, protocol: str | None = None) -> dict | None:
    for r in result["results"]:
        if r["side"] == side and r["case"] == case and (protocol is None or r["protocol"] == protocol):
            return r
    return None


def ratios(result: dict) -> list[dict]:
    out = []
    for case, _, _ in CASES:
        for protocol in ("v1", "v2"):
            ours = _row(result, "ours", case, protocol)
            if ours is None:
                continue
            line = {"case": case, "protocol": protocol}
            for other in ("floor", "mlflow", "naive"):
                theirs = _row(result, other, case, protocol if other == "floor" else None)
                if theirs is not None and theirs["req_s"]:
                    line[f"ours/{other} throughput"] = ours["req_s"] / theirs["req_s"]
                    line[f"ours/{other} p50"] = ours["p50_ms"] / theirs["p50_ms"]
                    if ours.get("server_cpu_ms_per_req") and theirs.get("server_cpu_ms_per_req"):
                        line[f"ours/{other} CPU per request"] = ours["server_cpu_ms_per_req"] / theirs["server_cpu_ms_per_req"]
            out.append(line)
    return out


def targets(result: dict) -> list[dict]:
    """The issue's targets, each with the measured value and whether it is met (V1, the better protocol where both ran)."""

    def best(case: str) -> dict | None:
        rows = [r for r in result["results"] if r["side"] == "ours" and r["case"] == case]
        return max(rows, key=lambda r: r["req_s"]) if rows else None

    def clean(*rows: dict) -> bool:
        """Every timed request of these rows answered 200: a figure of failed answers meets nothing."""
        return all(not (r.get("non2xx") or r.get("socket_errors")) for r in rows)

    failed = [r for r in result["results"] if not clean(r)]
    out = [
        {
            "target": "every timed request answered 200 (every side)",
            "value": "; ".join(
                f"{r['side']} {r['protocol']} {r['case']}: {r['non2xx']} non-2xx, {r['socket_errors']} socket" for r in failed[:6]
            )
            or "all",
            "met": not failed,
        }
    ]
    c16, mlflow16, naive16 = best("single c=16"), _row(result, "mlflow", "single c=16"), _row(result, "naive", "single c=16")
    if c16 and mlflow16:
        v = c16["req_s"] / mlflow16["req_s"]
        out.append(
            {"target": "single-row c=16 throughput >= 20x mlflow serve", "value": f"{v:.1f}x", "met": v >= 20 and clean(c16, mlflow16)}
        )
    if c16 and naive16:
        v = c16["req_s"] / naive16["req_s"]
        out.append(
            {"target": "single-row c=16 throughput >= 1.0x naive app", "value": f"{v:.2f}x", "met": v >= 1.0 and clean(c16, naive16)}
        )
    for protocol in ("v1", "v2"):
        ours1, floor1 = _row(result, "ours", "single c=1", protocol), _row(result, "floor", "single c=1", protocol)
        if ours1:
            p50 = ours1["p50_ms"]
            out.append(
                {
                    "target": f"{protocol.upper()} single-row p50 at c=1 <= 1 ms",
                    "value": f"{p50:.2f} ms",
                    "met": p50 <= 1.0 and clean(ours1),
                }
            )
        if ours1 and floor1:
            over = ours1["p50_ms"] - floor1["p50_ms"]
            out.append(
                {
                    "target": f"{protocol.upper()} single-row p50 at c=1 <= floor p50 + 0.3 ms",
                    "value": f"{ours1['p50_ms']:.2f} vs {floor1['p50_ms']:.2f} ms (+{over:.2f})",
                    "met": over <= 0.3 and clean(ours1, floor1),
                }
            )
        ours16, floor16 = _row(result, "ours", "single c=16", protocol), _row(result, "floor", "single c=16", protocol)
        if ours16 and floor16 and floor16["req_s"]:
            v = ours16["req_s"] / floor16["req_s"]
            met = v >= 0.8 and clean(ours16, floor16)
            out.append({"target": f"{protocol.upper()} single-row c=16 throughput >= 0.8x floor", "value": f"{v:.2f}x", "met": met})
    b10 = best("batch 10k")
    if b10:
        ceiling = result["in_process"]["ceiling_rows_s"]
        v = b10["rows_s"] / ceiling
        out.append(
            {
                "target": f"10,000-row batches >= 0.5x in-process {result['in_process']['ceiling']} rows/s",
                "value": f"{v:.2f}x ({b10['rows_s']:,.0f} vs {ceiling:,.0f} rows/s)",
                "met": v >= 0.5 and clean(b10),
            }
        )
    logged = result.get("prediction_log")
    if logged:
        ahead = logged["logged"] - logged["answered"]
        out.append(
            {
                "target": "every prediction logged (requests logged >= answered, ahead by at most the requests in flight)",
                "value": f"{logged['logged']:,} of {logged['answered']:,} (at most {logged.get('in_flight', 0)} in flight)",
                "met": 0 <= ahead <= logged.get("in_flight", 0),
            }
        )
    idle = result.get("idle_cpu_cores", {}).get("ours")
    if idle is not None:
        out.append(
            {"target": "served stack idle CPU <= 0.05 cores (settled, no requests)", "value": f"{idle:.3f} cores", "met": idle <= 0.05}
        )
    return out


def print_report(r: dict) -> None:
    m = r["model"]
    before, after = r["machine_before"], r.get("machine_after", {})
    print(
        f"\nserving, LightGBM {m['name']} v{m['version']} ({m['trees']} trees, {m['features']} features), wrk on loopback, "
        f"{r['duration_s']:.0f}s per case; load {before['load_1m']} before / {after.get('load_1m', '?')} after, {before['cpus']} cpus"
    )
    print(
        f"ours: `mlops serve start --proxy {r.get('ours_proxy', 'haproxy')}`"
        + (f"; large requests predicted by {r['ours_predictor']}" if r.get("ours_predictor") else "")
    )
    if r.get("ours_env"):
        print(f"ours with {' '.join(f'{k}={v}' for k, v in r['ours_env'].items())}")
    print(
        f"| {'server':<7}| {'request':<9}| {'case':<12}| {'req/s':>9} | {'rows/s':>11} | {'p50 ms':>8} | {'p99 ms':>8} | {'CPU ms/req':>10} |"
    )
    print(f"|{'-' * 8}|{'-' * 10}|{'-' * 13}|{'-' * 10}:|{'-' * 12}:|{'-' * 9}:|{'-' * 9}:|{'-' * 11}:|")
    for row in r["results"]:
        request = {"v1": "V1 raw", "v2": "V2 raw", "features": "features"}[row["protocol"]]
        err = " (errors)" if row["non2xx"] or row["socket_errors"] else ""
        print(
            f"| {row['side']:<7}| {request:<9}| {row['case']:<12}| {row['req_s']:>9,.1f} | {row['rows_s']:>11,.0f} | "
            f"{row.get('p50_ms', float('nan')):>8.2f} | {row.get('p99_ms', float('nan')):>8.2f} | "
            f"{row.get('server_cpu_ms_per_req', float('nan')):>10.2f} |{err}"
        )
    ip = r["in_process"]
    lleaves = (
        f", lleaves {ip['lleaves_rows_s']:,.0f} (1 thread {ip['lleaves_1thread_rows_s']:,.0f}; max diff to LightGBM {ip['lleaves_max_abs_diff']:.1e})"
        if ip["lleaves_rows_s"]
        else ", lleaves not installed"
    )
    print(
        f"in-process prediction of 10,000 feature rows: LightGBM {ip['lightgbm_rows_s']:,.0f} rows/s "
        f"(1 thread {ip['lightgbm_1thread_rows_s']:,.0f}){lleaves}"
    )
    cs = r.get("champion_steps")
    if cs:
        print(
            f"champion's own work per single-row request, in-process: typing {cs['typing_ms']:.2f} ms, features "
            f"{cs['features_ms']:.2f} ms (lookups {cs['lookups_ms']:.2f}), predict {cs['predict_ms']:.2f} ms, log row "
            f"{cs['log_row_ms']:.2f} ms alone or {cs['log_row_in_flush_ms']:.3f} ms a request in a flush of 100, in the log's "
            f"writer thread (predict_many, on the request's path, all but typing: {cs['predict_many_ms']:.2f} ms)"
        )
    served = [row for row in r["results"] if row.get("served_ms")]
    if served:
        print("champion's own work per request as served (its replicas' stage totals around each case; ms):")
        for row in served:
            split = row["served_ms"]
            print(
                f"  {row['protocol']} {row['case']:12} "
                + ", ".join(f"{stage} {ms:.3f}" for stage, ms in split.items())
                + f"; sum {sum(split.values()):.3f} (p50 {row.get('p50_ms', float('nan')):.2f})"
            )
    if r.get("idle_cpu_cores"):
        print(
            "CPU while idle (cores): "
            + ", ".join(f"{k} {v:.3f}" for k, v in r["idle_cpu_cores"].items())
            + "; CPU ms/req counts the server's whole process session, idle work included"
        )
    for line in r["ratios"]:
        parts = [f"{k} {v:.2f}x" for k, v in line.items() if k not in ("case", "protocol")]
        if parts:
            print(f"  {line['case']:12} {line['protocol']}: " + ", ".join(parts))
    for t in r["targets"]:
        print(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']}")
