"""`mlops bench leadtime`: from a file landing to the model trained on it answering requests.

The real local platform, as `mlops demo` runs it: Dagster webserver + daemon (sensors on,
queued runs) and Ray Serve, on a fresh home. The bench lands `--initial-days` days,
waits until a first champion answers, lets the platform settle, then lands ONE more
day and polls the V1 endpoint until a newer model version answers. The flights
declaration is copied with `drift.new_partitions_to_retrain: 1` and no cooldown, so
that one day triggers retraining; nothing else changes.

Orchestration is the part of the lead time in which no step of a run in the chain was
executing: sensor intervals, run queueing, run-process start-up, the wait for Serve to
report the new version. The rest is work (ingest, features, training, gates,
promotion, deployment). Figures come from Dagster's own event log.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import yaml

SPAN_EVENTS = ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE")


@dataclass
class RunSpan:
    job: str
    run_id: str
    created: float
    started: float | None
    ended: float | None
    status: str
    steps: list[tuple[str, float, float]] = field(default_factory=list)  # (step key, start, end)


def work_seconds(runs: list[RunSpan], since: float, until: float) -> float:
    """Union of the runs' step execution intervals inside [since, until]: time something was computing."""
    spans = sorted((max(s, since), min(e, until)) for run in runs for _, s, e in run.steps if e > since and s < until)
    total, current = 0.0, None
    for s, e in spans:
        if current is None or s > current[1]:
            total += 0.0 if current is None else current[1] - current[0]
            current = [s, e]
        else:
            current[1] = max(current[1], e)
    return total + (0.0 if current is None else current[1] - current[0])


@dataclass
class LeadTime:
    landed_day: str
    landed_at: float
    served_at: float
    version_before: str
    version_after: str
    runs: list[RunSpan]
    first_champion_seconds: float

    @property
    def seconds(self) -> float:
        return self.served_at - self.landed_at

    def work_seconds(self) -> float:
        return work_seconds(self.runs, self.landed_at, self.served_at)

    def to_dict(self) -> dict:
        return {
            "landed_day": self.landed_day,
            "lead_time_s": round(self.seconds, 2),
            "work_s": round(self.work_seconds(), 2),
            "orchestration_s": round(self.seconds - self.work_seconds(), 2),
            "orchestration_share": round(1 - self.work_seconds() / self.seconds, 3) if self.seconds > 0 else None,
            "version_before": self.version_before,
            "version_after": self.version_after,
            "first_champion_s": round(self.first_champion_seconds, 1),
            "runs": [
                {**asdict(r), "steps": [(k, round(s - self.landed_at, 2), round(e - self.landed_at, 2)) for k, s, e in r.steps]}
                | {
                    "created": round(r.created - self.landed_at, 2),
                    "started": None if r.started is None else round(r.started - self.landed_at, 2),
                    "ended": None if r.ended is None else round(r.ended - self.landed_at, 2),
                }
                for r in self.runs
            ],
        }


def bench_declaration(folder: Path) -> Path:
    """The flights declaration with one-day retraining and no cooldown, written into `folder`."""
    from mlops_assets.core.declaration import derive_declaration, load_declarations

    source = next(d for d in load_declarations() if d.name == "flights")
    decl = derive_declaration(source, "flights (lead-time bench)", drift={"new_partitions_to_retrain": 1, "cooldown_minutes": 0})
    path = folder / "flights.yaml"
    path.write_text(yaml.safe_dump(decl.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False))
    return path


def _trained_through(version: str) -> str:
    """The last day the version's training window read (its plan in the registry): any newer version answering
    is not yet one trained on the landed day."""
    from resources.mlflow_registry import MlflowRegistryResource
    from resources.registered_models import get_version, plan_of

    return plan_of(get_version(MlflowRegistryResource().client(), "flights", version)).partition_end


def _served_version(url: str, body: bytes) -> str | None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(json.loads(response.read())["model_version"])
    except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError, ValueError):
        return None


def _wait(predicate, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")


def _runs_since(instance, since: float, until: float) -> list[RunSpan]:
    import dagster as dg

    records = instance.get_run_records(filters=dg.RunsFilter(created_after=datetime.fromtimestamp(since - 1, UTC)))
    runs = []
    for record in records:
        run = record.dagster_run
        opened: dict[str, float] = {}
        steps = []
        for entry in instance.all_logs(run.run_id, of_type={getattr(dg.DagsterEventType, e) for e in SPAN_EVENTS}):
            key = entry.step_key or ""
            if entry.dagster_event_type == dg.DagsterEventType.STEP_START:
                opened[key] = entry.timestamp
            elif key in opened:
                steps.append((key, opened.pop(key), entry.timestamp))
        steps.extend((key, began, until) for key, began in opened.items())  # still running at `until`
        runs.append(
            RunSpan(
                job=run.job_name,
                run_id=run.run_id,
                created=record.create_timestamp.timestamp(),
                started=record.start_time,
                ended=record.end_time,
                status=run.status.value,
                steps=sorted(steps, key=lambda s: s[1]),
            )
        )
    return sorted(runs, key=lambda r: r.created)


def _busy(instance) -> bool:
    import dagster as dg

    unfinished = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
    ]
    return bool(instance.get_run_records(filters=dg.RunsFilter(statuses=unfinished), limit=1))


def bench(
    initial_days: int = 28,
    start: str = "2013-01-01",
    port: int = 3019,
    serve_port: int = 8019,
    settle_seconds: float = 20.0,
    timeout: float = 900.0,
    keep: bool = False,
) -> dict:
    import dagster as dg

    from mlops_assets.cli.data_commands import (
        _prepare_home,
        landing_zone,
        start_local_platform,
        stop_local_platform,
    )
    from mlops_assets.core.declaration import load_declarations
    from mlops_assets.core.home import MlopsHome
    from mlops_assets.defs.flights.features import INPUT_COLUMNS
    from mlops_assets.defs.flights.upstream import day_frame, land_days

    root = Path(tempfile.mkdtemp(prefix="mlops-leadtime-"))
    saved = {k: os.environ.get(k) for k in ("MLOPS_HOME", "DAGSTER_HOME", "MLOPS_PIPELINES")}
    processes = []
    try:
        pipelines = root / "pipelines"
        pipelines.mkdir()
        bench_declaration(pipelines)
        os.environ.update(MLOPS_HOME=str(root / "home"), MLOPS_PIPELINES=str(pipelines))
        home = MlopsHome.from_env()
        env = _prepare_home(home)
        os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
        decl = next(d for d in load_declarations() if d.name == "flights")
        landing = landing_zone()
        first_day = date.fromisoformat(start)
        land_days(decl, landing, first_day, initial_days)
        began = time.time()
        processes = start_local_platform(env, "127.0.0.1", port, serve_port)

        trigger_day = first_day + timedelta(days=initial_days)
        flights = day_frame(trigger_day).filter(pl.col("dep_delay").is_not_null()).select(INPUT_COLUMNS).head(1)
        records = flights.with_columns(pl.col("time_hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_dicts()
        body = json.dumps({"instances": records}).encode()
        url = f"http://127.0.0.1:{serve_port}/v1/models/flights:predict"

        before = _wait(lambda: _served_version(url, body), timeout, "a first champion to answer", poll=1.0)
        first_champion = time.time() - began
        instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle_seconds:  # nothing queued or running for a while
            if _busy(instance):
                quiet_since = time.monotonic()
            time.sleep(1.0)
        before = _served_version(url, body) or before

        land_days(decl, landing, trigger_day, 1)
        landed_at = time.time()
        after = _wait(
            lambda: (v := _served_version(url, body)) and v != before and _trained_through(v) >= trigger_day.isoformat() and v,
            timeout,
            f"a model trained on {trigger_day} to answer",
        )
        served_at = time.time()
        try:  # let the chain's runs finish so their records are complete
            _wait(lambda: not _busy(instance), 120, "the runs to finish", poll=1.0)
        except TimeoutError:
            pass
        result = LeadTime(
            landed_day=trigger_day.isoformat(),
            landed_at=landed_at,
            served_at=served_at,
            version_before=before,
            version_after=after,
            runs=_runs_since(instance, landed_at, served_at),
            first_champion_seconds=first_champion,
        )
        return {"initial_days": initial_days, "home": str(root) if keep else None, **result.to_dict()}
    finally:
        if processes:
            stop_local_platform(processes)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def print_report(result: dict) -> None:
    lead, orch = result["lead_time_s"], result["orchestration_s"]
    print(f"\nlead time, file for {result['landed_day']} landed -> model trained on it answering: {lead:.1f} s")
    print(f"  work (steps executing): {result['work_s']:.1f} s; orchestration: {orch:.1f} s ({result['orchestration_share']:.0%})")
    print(f"  served version {result['version_before']} -> {result['version_after']}")
    print(f"  (cold start to the first champion answering: {result['first_champion_s']:.0f} s)\n")
    print(f"{'run':<34}{'queued':>8}{'start':>8}{'end':>8}  steps (s after landing)")
    for run in result["runs"]:
        steps = ", ".join(f"{k} {s:.1f}-{e:.1f}" for k, s, e in run["steps"])
        started = "-" if run["started"] is None else f"{run['started']:.1f}"
        ended = "-" if run["ended"] is None else f"{run['ended']:.1f}"
        print(f"{run['job'][:33]:<34}{run['created']:>8.1f}{started:>8}{ended:>8}  {steps}")
