"""`mlops bench reliability`: the platform's fault and load cases on this machine, one table.

One run builds a platform home (flights days landed and ingested, a champion trained by the platform's
own jobs in a SQLite MLflow registry), then:

- **data and models** (each fault a real SIGKILL of a process running the real step, see
  ``fault_child``): an ingestion killed before, between and after its raw/quarantine commits and at a
  random moment; training killed mid-boosting and after registration; two promotions of one pipeline
  started at the same instant in two processes;
- **serving** (a real Ray Serve on loopback with the flights champion, clients posting V1 requests with
  their own request ids from threads of this process): a champion replica SIGKILLed under load; champion
  swaps under load; the prediction log's Delta table unreachable under load (its folder swapped for a
  file, atomically, and back); a soak at steady load (replica memory and errors over time).

Each case reports requests, failed requests, rows lost (accepted predictions missing from the log, or
invalid rows readable as clean) and the recovery time, against the targets of the hardening issue.
The test suite runs the fast cases with small settings (tests/cli/test_bench_reliability.py);
``--long`` is CI's run after the suite: ten swaps and the ten-minute soak.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import yaml

PIPELINE = "flights"
DAYS = 28  # Jan 1 - Jan 28 2013 land first; the killed ingestion lands the day after
TRAINING = {
    "window_days": 18,
    "validation_days": 3,
    "min_rows": 500,
    "num_boost_round": 40,
    "early_stopping_rounds": 40,
    "params": {"learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 50},
}
GATES = {"floors": {"mae": 40.0}, "max_regression": 0.5, "holdout_days": 3}
BAD_ROWS = 5  # rows of the killed ingestion's file with an unknown destination: quarantined, never clean
BAD_DEST = "XXX"


@dataclass
class Case:
    case: str
    load: str
    faults: str
    requests: int = 0
    failed: int = 0
    rows_lost: int = 0
    recovery_s: float | None = None
    target: str = ""
    passed: bool = False  # nothing lost or left inconsistent: what CI fails on
    met: bool = False  # the figures (share of failed requests, recovery time, memory growth) on this machine
    detail: str = ""


# -- the platform home ---------------------------------------------------------------------------------


@dataclass
class FaultHome:
    root: Path
    declaration: Path  # the bench's flights.yaml
    decl: object
    env: dict[str, str] = field(default_factory=dict)

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def delta(self):
        from resources.delta_lake import DeltaLakeResource

        return DeltaLakeResource(root=str(self.root / "delta"))

    def registry(self):
        from resources.mlflow_registry import MlflowRegistryResource

        return MlflowRegistryResource(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def aliases(self) -> dict[str, int | None]:
        from mlops_assets.core.names import CHALLENGER, CHAMPION
        from resources.registered_models import resolve_alias

        return {a: resolve_alias(self.tracking_uri, PIPELINE, a) for a in (CHAMPION, CHALLENGER)}


def bench_declaration():
    from mlops_assets.core.declaration import PACKAGED_PIPELINES, derive_declaration, load_declaration

    packaged = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    return derive_declaration(packaged, "flights (reliability bench)", training=TRAINING, gates=GATES, promotion={"policy": "auto"})


def prepare_home(root: Path, days: int = DAYS, delta_from: Path | None = None, log=print) -> FaultHome:
    """A home with `days` of flights ingested (or the Delta tables of `delta_from` copied) and a champion."""
    from mlops_assets.cli.bench.serving_bench import _env, home_definitions, land_and_ingest

    root = root.resolve()
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    decl = bench_declaration()
    path = root / "pipelines" / "flights.yaml"
    path.write_text(yaml.safe_dump(decl.model_dump(mode="json", by_alias=True)))
    env = _env(root, root / "pipelines")
    home = FaultHome(root, path, decl, env)
    if delta_from is not None:
        shutil.copytree(delta_from, root / "delta" / PIPELINE)
    else:
        land_and_ingest(root, decl, days, log)
    import dagster as dg

    defs, _ = home_definitions(root, decl)
    with dg.DagsterInstance.ephemeral() as instance:
        defs.resolve_job_def(f"{PIPELINE}_train").execute_in_process(instance=instance)
    if home.aliases()["champion"] is None:
        raise RuntimeError(f"training in {root} left no champion")
    return home


def _child(home: FaultHome, spec: dict) -> subprocess.Popen:
    spec = {"root": str(home.root), "declaration": str(home.declaration), **spec}
    return subprocess.Popen(
        [sys.executable, "-m", "mlops_assets.cli.bench.fault_child", json.dumps(spec)],
        env={**os.environ, **home.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(proc: subprocess.Popen, timeout_s: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out or ""


def _killed_at_random(proc: subprocess.Popen, within_s: float) -> bool:
    """SIGKILL once the step runs, after a random delay; False when it finished first."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("running"):
            break
    time.sleep(random.uniform(0.0, within_s))
    if proc.poll() is not None:
        return False
    proc.kill()
    proc.wait()
    return True


def _run_job(home: FaultHome, job: str, partition: str | None = None, decl=None) -> bool:
    import dagster as dg

    from mlops_assets.cli.bench.serving_bench import home_definitions

    defs, _ = home_definitions(home.root, decl or home.decl)
    with dg.DagsterInstance.ephemeral() as instance:
        return (
            defs.resolve_job_def(f"{PIPELINE}_{job}")
            .execute_in_process(instance=instance, partition_key=partition, raise_on_error=False)
            .success
        )


# -- data and models -------------------------------------------------------------------------------------


def ingestion_killed(
    home: FaultHome, points=("before_raw_commit", "between_raw_and_quarantine", "before_features_commit", "random")
) -> Case:
    """A day with invalid rows is ingested by a process killed at each point, then re-run (twice).

    After each kill no invalid row reads as clean and no partial partition is visible (raw holds none or
    all of the file's rows, features none or all of its clean rows); after the re-runs raw = clean +
    quarantined, features = clean, and a second re-run changes no count."""
    import polars as pl

    from mlops_assets.defs.flights.upstream import day_frame, encode
    from resources.landing_zone import LandingZoneResource
    from resources.pipeline_tables import read_clean

    delta = home.delta()
    ingested = delta.partitions(PIPELINE, "raw")
    day = date.fromisoformat(ingested[-1]) + timedelta(days=1)
    key = day.isoformat()
    frame = day_frame(day).with_row_index("i")
    frame = frame.with_columns(pl.when(pl.col("i") < BAD_ROWS).then(pl.lit(BAD_DEST)).otherwise(pl.col("dest")).alias("dest")).drop("i")
    landing = LandingZoneResource(root=str(home.root / "landing"))
    landing.write_bytes(PIPELINE, home.decl.landing.file_name(key), encode(frame, home.decl.landing.format))
    others = {p: n for p, n in _counts(delta, "raw").items() if p != key}

    problems: list[str] = []
    leaked = 0
    started = time.perf_counter()
    recovery: list[float] = []
    for point in points:
        _unwrite(delta, key)  # each kill meets the day unwritten or half-written, in every table
        proc = _child(home, {"kind": "ingest", "partition": key, "kill_at": None if point == "random" else point})
        if point == "random":
            # a moment within the step: most of a re-run's time (the points before measured it), and shorter
            # again when the step finished first (a fast machine ingests a day in well under a second)
            window = 0.8 * min(recovery) if recovery else 1.5
            killed = _killed_at_random(proc, within_s=window)
            for _ in range(3):
                if killed:
                    break
                window /= 2
                _unwrite(delta, key)
                proc = _child(home, {"kind": "ingest", "partition": key, "kill_at": None})
                killed = _killed_at_random(proc, within_s=window)
        else:
            code, out = _wait(proc)
            killed = code == -signal.SIGKILL
            if not killed:
                problems.append(f"{point}: the child was not killed (exit {code}): {out[-300:]}")
        clean = read_clean(delta, PIPELINE, [key])
        raw_rows = _counts(delta, "raw").get(key, 0)
        feature_rows = _counts(delta, "features").get(key, 0)
        bad = 0 if clean is None else clean.filter(pl.col("dest") == BAD_DEST).height
        leaked += bad
        if bad:
            problems.append(f"{point}: {bad} invalid rows read as clean")
        if raw_rows not in (0, frame.height):
            problems.append(f"{point}: a partial raw partition is visible ({raw_rows} of {frame.height} rows)")
        if feature_rows not in (0, frame.height - BAD_ROWS):
            problems.append(f"{point}: a partial features partition is visible ({feature_rows} rows)")
        t0 = time.perf_counter()
        if not _run_job(home, "ingest", key):
            problems.append(f"{point}: the re-run failed")
        recovery.append(time.perf_counter() - t0)
        first = (_counts(delta, "raw").get(key), _counts(delta, "quarantine").get(key), _counts(delta, "features").get(key))
        _run_job(home, "ingest", key)
        second = (_counts(delta, "raw").get(key), _counts(delta, "quarantine").get(key), _counts(delta, "features").get(key))
        expected = (frame.height, BAD_ROWS, frame.height - BAD_ROWS)
        if first != expected or second != expected:
            problems.append(f"{point}: after the re-runs raw/quarantine/features = {first}, then {second}; expected {expected}")
        if not killed:
            problems.append(f"{point}: finished before the kill")
    if {p: n for p, n in _counts(delta, "raw").items() if p != key} != others:
        problems.append("other partitions changed")
    return Case(
        "ingestion killed mid-write",
        f"1 day ({frame.height} rows, {BAD_ROWS} invalid)",
        f"SIGKILL: {', '.join(points)}",
        rows_lost=leaked,
        recovery_s=max(recovery) if recovery else None,
        target="no partial partition, re-run idempotent, raw = clean + quarantined",
        passed=not problems,
        met=not problems,
        detail="; ".join(problems) or f"{len(points)} kills in {time.perf_counter() - started:.0f}s; re-run {max(recovery):.1f}s at most",
    )


def _unwrite(delta, key: str) -> None:
    """The day gone from raw, quarantine and features: otherwise the previous re-run's complete features stayed, and
    "features none or all" held whatever the killed run left."""
    for table in ("raw", "quarantine", "features"):
        delta.delete(PIPELINE, table, f"_partition = '{key}'")


def _counts(delta, table: str) -> dict[str, int]:
    import polars as pl

    lf = delta.scan(PIPELINE, table)
    if lf is None:
        return {}
    return dict(lf.group_by("_partition").agg(pl.len()).collect().iter_rows())


def training_killed(home: FaultHome, points=("mid_training", "after_registration")) -> Case:
    """Training killed mid-boosting and after registering its version: no alias moves, nothing a person
    could approve by mistake, and the re-run trains and promotes."""
    from mlops_assets.models.promotion import approve

    problems: list[str] = []
    before = home.aliases()
    client = home.registry().client()
    versions_before = {int(v.version) for v in client.search_model_versions(f"name='{PIPELINE}'")}
    for point in points:
        code, out = _wait(_child(home, {"kind": "train", "kill_at": point}))
        if code != -signal.SIGKILL:
            problems.append(f"{point}: the child was not killed (exit {code}): {out[-300:]}")
        if home.aliases() != before:
            problems.append(f"{point}: aliases moved: {before} -> {home.aliases()}")
    new = sorted({int(v.version) for v in client.search_model_versions(f"name='{PIPELINE}'")} - versions_before)
    for version in new:
        mv = client.get_model_version(PIPELINE, str(version))
        if mv.tags.get("mlops.status") != "candidate" or mv.aliases:
            problems.append(f"v{version} left as {mv.tags.get('mlops.status')} with aliases {mv.aliases}")
        try:
            approve(PIPELINE, home.delta(), home.registry(), version, by="bench", reason="approving a killed candidate")
            problems.append(f"v{version}, killed before its gates, could be approved")
        except ValueError:
            pass
    t0 = time.perf_counter()
    if not _run_job(home, "train"):
        problems.append("the re-run failed")
    recovery = time.perf_counter() - t0
    after = home.aliases()["champion"]
    if after is None or after == before["champion"] or after in new:
        problems.append(f"the re-run did not promote a new version (champion v{before['champion']} -> v{after})")
    return Case(
        "training killed mid-run",
        "1 training run",
        f"SIGKILL: {', '.join(points)}",
        recovery_s=recovery,
        target="no half-registered version, no alias move",
        passed=not problems,
        met=not problems,
        detail="; ".join(problems) or f"killed runs left {len(new)} candidate version(s), none approvable; re-run promoted v{after}",
    )


def concurrent_promotions(home: FaultHome, start_in_s: float = 8.0) -> Case:
    """Two versions gated against the same champion are promoted by two processes at one instant: the
    registry's write lock lets one move `champion`; the other finds its gates stale; both are audited."""
    from resources.audit_log import history

    problems: list[str] = []
    champion = home.aliases()["champion"]
    candidates = []
    for _ in range(2):  # policy manual: gates run, nothing moves `champion`
        code, out = _wait(_child(home, {"kind": "train", "policy": "manual"}))
        if code != 0:
            problems.append(f"training a candidate failed (exit {code}): {out[-300:]}")
        candidates.append(home.aliases()["challenger"])
    audited_before = history(home.delta(), PIPELINE).height
    at = time.time() + start_in_s  # both processes import and connect first, then start together
    procs = [_child(home, {"kind": "promote", "version": v, "at": at}) for v in candidates]
    results = [_wait(p) for p in procs]
    finished = time.time() - at
    codes = sorted(code for code, _ in results)
    if codes != [0, 3]:
        problems.append(f"exit codes {codes} (expected one promotion and one refusal): {[out[-200:] for _, out in results]}")
    now = home.aliases()["champion"]
    if now not in candidates or now == champion:
        problems.append(f"champion is v{now}, not one of {candidates}")
    audit = history(home.delta(), PIPELINE)
    rows = audit.tail(max(0, audit.height - audited_before))
    actions = sorted((r["action"], r["model_version"]) for r in rows.iter_rows(named=True))
    loser = next((v for v in candidates if v != now), None)
    if actions != sorted([("promote", now), ("reject", loser)]):
        problems.append(f"audit rows {actions}")
    return Case(
        "two concurrent promotions",
        "2 processes, same instant",
        "race on the champion alias",
        requests=len(procs),
        failed=sum(code not in (0, 3) for code in codes),  # neither promoted nor refused as stale: an error
        recovery_s=finished,
        target="one wins, both audited",
        passed=not problems,
        met=not problems,
        detail="; ".join(problems) or f"v{now} promoted; v{loser} refused as stale and audited",
    )


# -- serving ---------------------------------------------------------------------------------------------


@dataclass
class Served:
    """A flights application on a running Serve, and what the serving cases need to drive it."""

    base_url: str
    decl: object
    settings: object  # ServeSettings of the application
    versions: tuple[int, int]  # the champion, and a second version the swaps alternate with
    records: list[dict]
    headers: dict[str, str] = field(default_factory=dict)
    root_pid: int = field(default_factory=os.getpid)  # the replicas are descendants of this process
    pinned: int | None = None  # ask this version by V2 (through the gateway) instead of the champion by V1

    @property
    def url(self) -> str:
        if self.pinned is not None:
            return f"{self.base_url}/v2/models/{PIPELINE}/versions/{self.pinned}/infer"
        return f"{self.base_url}/v1/models/{PIPELINE}:predict"

    def body(self) -> bytes:
        if self.pinned is not None:
            from mlops_assets.cli.bench.serving_bench import v2_body

            return v2_body(self.records)
        return json.dumps({"instances": self.records}).encode()

    def set_champion(self, version: int) -> None:
        from mlflow import MlflowClient

        from mlops_assets.core.names import CHAMPION

        uri = self.settings.resolved_tracking_uri()
        MlflowClient(uri, uri).set_registered_model_alias(PIPELINE, CHAMPION, str(version))

    def roll_out(self, version: int) -> None:
        """What the deployment asset does after a promotion: follow the aliases, wait for the version."""
        from serving import control

        self.set_champion(version)
        control.follow_aliases(self.decl, self.settings)
        control.wait_for_version(PIPELINE, version, timeout_s=240)


@dataclass
class Answer:
    at: float
    status: int
    request_id: str
    version: str


class Load:
    """Clients posting one request (the target's) in a loop from threads, each answer recorded with its request id."""

    def __init__(self, target: Served, clients: int = 2, pause_s: float = 0.0, timeout_s: float = 10.0):
        self.target, self.clients, self.pause_s, self.timeout_s = target, clients, pause_s, timeout_s
        self.body = target.body()
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        import requests

        session = requests.Session()
        headers = {**self.target.headers, "Content-Type": "application/json"}
        while not self._stop.is_set():
            rid = uuid.uuid4().hex
            at = time.monotonic()
            try:
                r = session.post(self.target.url, data=self.body, headers={**headers, "X-Request-Id": rid}, timeout=self.timeout_s)
                version = str(r.json().get("model_version", "")) if r.status_code == 200 else r.text[:200]
                self.answers.append(Answer(at, r.status_code, rid, version))
            except (requests.RequestException, ValueError) as err:
                self.answers.append(Answer(at, -1, rid, repr(err)[:200]))
            if self.pause_s:
                self._stop.wait(self.pause_s)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)

    def failures(self) -> list[Answer]:
        return [a for a in list(self.answers) if a.status != 200]

    def accepted(self) -> set[str]:
        return {a.request_id for a in list(self.answers) if a.status == 200}


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def serve_pids(target: Served, prefix: str) -> list[int]:
    """Processes under the target's root whose Ray title starts with `prefix` (e.g. the champion's replicas)."""
    return sorted(p for p in _descendants(target.root_pid) if _cmdline(p).startswith(prefix))


def answering_app(target: Served) -> str:
    """The application whose champion replicas answer the load: the V1 route's own, where the pipeline declares
    one, else (and for pinned requests) the pipeline's application, through the gateway."""
    from serving.config import v1_app_name

    return v1_app_name(PIPELINE) if target.pinned is None and target.decl.serving.v1_route is not None else PIPELINE


def champion_replicas(target: Served) -> list[int]:
    from serving.config import CHAMPION_DEPLOYMENT

    return serve_pids(target, f"ray::ServeReplica:{answering_app(target)}:{CHAMPION_DEPLOYMENT}")


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _healthy(target: Served, replicas: int) -> bool:
    from serving import control
    from serving.config import CHAMPION_DEPLOYMENT

    status = control.app_status(answering_app(target))
    deployment = status["deployments"].get(CHAMPION_DEPLOYMENT, {})
    return status["status"] == "RUNNING" and deployment.get("replicas", {}).get("RUNNING", 0) >= replicas


def replica_killed(target: Served, clients: int = 4, before_s: float = 3.0, after_s: float = 10.0) -> Case:
    """One champion replica SIGKILLed under load; recovered when Serve runs a full set again and no
    request has failed since."""
    pids = champion_replicas(target)
    if len(pids) < 2:
        return Case(
            "replica killed under load", f"{clients} clients", "SIGKILL of 1 replica", detail=f"needs 2 champion replicas, found {pids}"
        )
    with Load(target, clients) as load:
        time.sleep(before_s)
        victim = pids[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        restored_at = spawned_at = None
        deadline = killed_at + 120
        while time.monotonic() < deadline:
            now = [p for p in champion_replicas(target) if p != victim]
            if spawned_at is None and len(now) >= len(pids):
                spawned_at = time.monotonic()
            if len(now) >= len(pids) and _healthy(target, len(pids)):
                restored_at = time.monotonic()
                break
            time.sleep(0.1)
        time.sleep(after_s)
    failures = load.failures()
    last_failure = max((a.at for a in failures), default=killed_at)
    recovery = None if restored_at is None else max(restored_at, last_failure) - killed_at
    share = len(failures) / max(1, len(load.answers))
    return Case(
        "replica killed under load",
        f"{clients} clients",
        "SIGKILL of 1 of 2 champion replicas",
        requests=len(load.answers),
        failed=len(failures),
        recovery_s=recovery,
        target="< 1% failed, recovered < 10 s",
        passed=recovery is not None,
        met=recovery is not None and share < 0.01 and recovery < 10,
        detail=(_failure_kinds(failures) + "; " if failures else "")
        + (
            f"a new replica process {spawned_at - killed_at:.1f}s after the kill, serving after {restored_at - killed_at:.1f}s"
            if restored_at and spawned_at
            else "not restored within 120 s"
        ),
    )


def _failure_kinds(failures: list[Answer]) -> str:
    kinds: dict[str, int] = {}
    for a in failures:
        k = f"{a.status} {a.version[:80]}"
        kinds[k] = kinds.get(k, 0) + 1
    return "; ".join(f"{n}x {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:3])


def champion_swaps(target: Served, swaps: int = 10, clients: int = 2) -> Case:
    """The champion alias moves back and forth under load, each move rolled out as the deployment asset does."""
    first, second = target.versions
    times = []
    with Load(target, clients) as load:
        time.sleep(1.0)
        for i in range(swaps):
            t0 = time.perf_counter()
            target.roll_out(second if i % 2 == 0 else first)
            times.append(time.perf_counter() - t0)
        time.sleep(1.0)
    if swaps % 2:
        target.roll_out(first)  # leave the champion where it was
    failures = load.failures()
    served = {a.version for a in load.answers if a.status == 200}
    return Case(
        f"{swaps} champion swaps under load",
        f"{clients} clients",
        f"alias moved {swaps}x (v{first} <-> v{second})",
        requests=len(load.answers),
        failed=len(failures),
        recovery_s=max(times) if times else None,
        target="0 failed",
        passed=not failures and served >= {str(first), str(second)},
        met=not failures,
        detail=_failure_kinds(failures) if failures else f"answers from {sorted(served)}; slowest roll-out {max(times):.1f}s",
    )


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE): replicas never see neither. Where the
    file system cannot, three renames (a replica may then meet no table for a moment: one more failure)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, "renameat2", None) is not None and libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:
        return
    spare = a.with_name(a.name + ".exchange")
    os.rename(a, spare)
    os.rename(b, a)
    os.rename(spare, b)


def logged_request_ids(target: Served) -> set[str]:
    from mlops_assets.core.names import PREDICTION_LOG
    from resources.delta_lake import DeltaLakeResource

    lf = DeltaLakeResource(root=target.settings.delta_root).scan(PIPELINE, PREDICTION_LOG)
    return set() if lf is None else set(lf.select("request_id").collect().get_column("request_id").to_list())


def log_store_down(target: Served, down_s: float = 30.0, clients: int = 2, drain_timeout_s: float = 120.0) -> Case:
    """The prediction log's table unreachable for `down_s` under load (every append fails); afterwards every
    accepted prediction must reach the table (spilled, then drained)."""
    from mlops_assets.core.names import PREDICTION_LOG

    table = Path(target.settings.delta_root) / PIPELINE / PREDICTION_LOG
    with Load(target, clients, pause_s=0.01) as load:
        deadline = time.monotonic() + 60
        while not table.is_dir() and time.monotonic() < deadline:  # the table exists before it goes away
            time.sleep(0.2)
        blocker = table.with_name(f".{PREDICTION_LOG}-unreachable-{uuid.uuid4().hex[:6]}")
        blocker.write_text("the prediction log is unreachable (mlops bench reliability)\n")
        _exchange(table, blocker)
        spill = Path(target.settings.spill_dir())
        try:
            time.sleep(down_s)
            # the fault happened: appends failed and batches went to the spill folder
            spilled = len(list(spill.glob("*.parquet"))) if spill.is_dir() else 0
        finally:
            _exchange(table, blocker)
            blocker.unlink()
        back_at = time.monotonic()
        time.sleep(1.0)
    accepted = load.accepted()
    missing = accepted - logged_request_ids(target)
    deadline = time.monotonic() + drain_timeout_s
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        missing -= logged_request_ids(target)
    drained = time.monotonic() - back_at
    failures = load.failures()
    return Case(
        f"prediction log store down {down_s:g}s",
        f"{clients} clients",
        "every Delta append fails",
        requests=len(load.answers),
        failed=len(failures),
        rows_lost=len(missing),
        recovery_s=drained if not missing else None,
        target="0 accepted rows lost, 0 failed",
        # vacuous without accepted requests, or without a batch the outage made the replicas spill
        passed=bool(accepted) and spilled > 0 and not missing and not failures,
        met=bool(accepted) and spilled > 0 and not missing and not failures,
        detail=_failure_kinds(failures)
        if failures
        else f"{len(accepted)} accepted, {spilled} spill files during the outage; all logged {drained:.1f}s after the store was back",
    )


def soak(target: Served, minutes: float = 10.0, clients: int = 2, pause_s: float = 0.02, warmup_s: float = 60.0) -> Case:
    """Steady load for `minutes`: no errors, and the serving processes' memory grows < 10% after warm-up."""
    prefixes = ("ray::ServeReplica", "ray::ProxyActor", "ray::ServeController")

    def serving_rss() -> float:
        return _rss_mb([p for p in _descendants(target.root_pid) if _cmdline(p).startswith(prefixes)])

    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    with Load(target, clients, pause_s=pause_s) as load:
        while time.monotonic() - start < minutes * 60:
            time.sleep(5.0)
            samples.append((time.monotonic() - start, serving_rss()))
    settled = [mb for t, mb in samples if t >= min(warmup_s, minutes * 30)]
    # the highest reading against the first: a replica restarted in between resets its memory, and the last reading
    # alone would hide the growth before it
    growth = (max(settled) - settled[0]) / settled[0] if len(settled) >= 2 and settled[0] else 0.0
    sampled = len(settled) >= 2 and bool(load.answers)  # no requests or no memory samples: nothing was shown
    failures = load.failures()
    return Case(
        f"soak {minutes:g} min",
        f"{clients} clients, {len(load.answers) / (minutes * 60):.0f} req/s",
        "none",
        requests=len(load.answers),
        failed=len(failures),
        target="memory growth < 10%, 0 errors",
        passed=sampled and not failures,
        met=sampled and not failures and growth < 0.10,
        detail=(_failure_kinds(failures) + "; " if failures else "")
        + f"serving memory {settled[0]:.0f} -> {settled[-1]:.0f} MB, at most {max(settled):.0f} ({growth:+.1%})"
        if settled
        else "no samples",
    )


# -- the run ---------------------------------------------------------------------------------------------


def start_serving(home: FaultHome, num_cpus: int):
    """Ray and Serve in this process (the driver, like `mlops serve start`), the flights application deployed."""
    import ray
    from ray import serve

    from mlops_assets.cli.ports import claim_port
    from resources.serving import ServeSettings
    from serving import control

    port = claim_port()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, namespace="mlops-reliability")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = ServeSettings(
        pipeline=PIPELINE,
        tracking_uri=home.tracking_uri,
        delta_root=str(home.root / "delta"),
        pipelines=str(home.declaration.parent),
        log_flush_seconds=0.5,
    )
    versions = control.follow_aliases(home.decl, settings)
    control.wait_for_version(PIPELINE, versions["champion"], timeout_s=300)
    return port, settings


def stop_serving() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def bench(workdir: Path | None = None, long: bool = False, num_cpus: int = 2, log=print) -> dict:
    from mlops_assets.cli.bench.serving_bench import _load

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mlops-bench-reliability-"))
    started = time.perf_counter()
    cases: list[Case] = []
    try:
        log(f"platform home {root}")
        home = prepare_home(root, log=log)
        log(f"  champion v{home.aliases()['champion']} in {time.perf_counter() - started:.0f}s")
        for case in (ingestion_killed, training_killed, concurrent_promotions):
            log(f"case: {case.__name__}")
            cases.append(case(home))
        client = home.registry().client()
        champion = home.aliases()["champion"]
        other = max(int(v.version) for v in client.search_model_versions(f"name='{PIPELINE}'") if int(v.version) != champion)
        port, settings = start_serving(home, num_cpus)
        try:
            from mlops_assets.cli.bench.serving_bench import SERVE_DAY
            from mlops_assets.defs.flights.upstream import day_frame

            records = _records(home, SERVE_DAY, day_frame)
            target = Served(f"http://127.0.0.1:{port}", home.decl, settings, (champion, other), records)
            log("case: replica_killed")
            cases.append(replica_killed(target))
            log("case: champion_swaps")
            cases.append(champion_swaps(target, swaps=10 if long else 4))
            log("case: log_store_down")
            cases.append(log_store_down(target, down_s=30.0))
            if long:
                log("case: soak")
                cases.append(soak(target, minutes=10.0))
        finally:
            stop_serving()
    finally:
        if not workdir:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "machine": {"cpus": os.cpu_count(), "load_before": _load()},
        "seconds": round(time.perf_counter() - started, 1),
        "cases": [asdict(c) for c in cases],
        "passed": all(c.passed for c in cases),
    }


def _records(home: FaultHome, day: date, day_frame) -> list[dict]:
    import polars as pl

    from mlops_assets.core.feature_contract import load_feature_module

    module = load_feature_module(home.decl)
    raw = day_frame(day).filter(pl.col("dep_delay").is_not_null()).head(2)
    return raw.select(module.input_columns(home.decl)).with_columns(pl.col("time_hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_dicts()


def print_report(result: dict) -> None:
    m = result["machine"]
    print(f"\nmlops bench reliability: {m['cpus']} CPUs, load before {m['load_before']}, {result['seconds']:.0f}s")
    header = ("case", "load", "faults", "requests", "failed", "rows lost", "recovery", "target", "target met", "invariants")
    rows = [
        (
            c["case"],
            c["load"],
            c["faults"],
            str(c["requests"]),
            str(c["failed"]),
            str(c["rows_lost"]),
            "-" if c["recovery_s"] is None else f"{c['recovery_s']:.1f}s",
            c["target"],
            "yes" if c["met"] else "NO",
            "held" if c["passed"] else "BROKEN",
        )
        for c in result["cases"]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    for c in result["cases"]:
        print(f"  {c['case']}: {c['detail']}")
