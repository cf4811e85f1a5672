"""`mlops bench backlog`: does the local platform keep up with a burst of landed files?

The real local platform as `mlops demo` runs it (Dagster `dg dev`: webserver, daemon with
sensors and the queued run coordinator; Ray Serve), on a fresh home. Two cases:

- ``year``: the reference tables are in, then the 365 daily files of 2013 land at once
  (encoded first, then written in one go). Timed from the first write until all 365 feature partitions are in the features
  table, with the runs it took, the time steps were executing (work) and the rest
  (orchestration: sensor ticks, queueing, run start-up).
- ``walkaway``: the demo's walk-away story. ``--initial-days`` days land, a first champion
  answers, then a day lands every ``--interval`` seconds and, ``--burst-after`` seconds
  in, seven July days land at once (the declaration's retraining cooldown set to 0, as in
  `mlops bench leadtime`). Measured until the drift-triggered training has started: the most runs queued at any time (sampled every second), and how long that
  training waited between the drift sensor's request (the run's creation) and its start; then how that training ended
  (met only when it succeeded).

Figures come from Dagster's own run records; the bench stops what it started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

from mlops_assets.cli.bench.lead_time_bench import _runs_since, _served_version, _wait, work_seconds

UNFINISHED = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")


class QueueSampler:
    """Samples the instance once a second: runs queued, runs in flight (starting or started)."""

    def __init__(self, instance):
        self.instance = instance
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> QueueSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        import dagster as dg

        statuses = [getattr(dg.DagsterRunStatus, s) for s in UNFINISHED]
        while not self._stop.is_set():
            try:
                records = self.instance.get_run_records(filters=dg.RunsFilter(statuses=statuses))
            except Exception:  # a locked SQLite read: skip this sample, take the next one
                records = None
            if records is not None:
                queued = sum(r.dagster_run.status == dg.DagsterRunStatus.QUEUED for r in records)
                self.samples.append((time.time(), queued, len(records) - queued))
            self._stop.wait(1.0)

    @property
    def max_queued(self) -> int:
        return max((q for _, q, _ in self.samples), default=0)

    @property
    def max_in_flight(self) -> int:
        return max((f for _, _, f in self.samples), default=0)


class LocalPlatform:
    """A fresh home, the flights declaration (optionally changed), Dagster and Serve started on it."""

    def __init__(self, port: int, serve_port: int, drift: dict | None = None):
        self.port, self.serve_port, self.drift = port, serve_port, drift
        self.root = Path(tempfile.mkdtemp(prefix="mlops-backlog-"))
        self.saved = {k: os.environ.get(k) for k in ("MLOPS_HOME", "DAGSTER_HOME", "MLOPS_PIPELINES")}
        self.processes: list = []

    def __enter__(self) -> LocalPlatform:
        import dagster as dg
        import yaml

        from mlops_assets.cli.data_commands import _prepare_home, landing_zone
        from mlops_assets.core.declaration import derive_declaration, load_declarations
        from mlops_assets.core.home import MlopsHome

        pipelines = self.root / "pipelines"
        pipelines.mkdir()
        source = next(d for d in load_declarations() if d.name == "flights")
        decl = derive_declaration(source, "flights (backlog bench)", drift=self.drift) if self.drift else source
        (pipelines / "flights.yaml").write_text(
            yaml.safe_dump(decl.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
        )
        os.environ.update(MLOPS_HOME=str(self.root / "home"), MLOPS_PIPELINES=str(pipelines))
        self.env = _prepare_home(MlopsHome.from_env())
        os.environ["DAGSTER_HOME"] = self.env["DAGSTER_HOME"]
        self.decl = next(d for d in load_declarations() if d.name == "flights")
        self.landing = landing_zone()
        self.instance = dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"])
        return self

    def start(self) -> None:
        from mlops_assets.cli.data_commands import start_local_platform

        self.processes = start_local_platform(self.env, "127.0.0.1", self.port, self.serve_port)

    def feature_days(self) -> int:
        from mlops_assets.core.names import FEATURES
        from resources.delta_lake import DeltaLakeResource

        delta = DeltaLakeResource(root=str(Path(self.env["MLOPS_HOME"]) / "delta"))
        return len(delta.partitions(self.decl.name, FEATURES))

    def land_reference(self) -> None:
        from mlops_assets.defs.flights.upstream import land_reference

        land_reference(self.decl, self.landing)

    def reference_done(self) -> bool:
        from mlops_assets.core.names import reference_key

        return self.instance.get_latest_materialization_event(reference_key(self.decl)) is not None

    def land(self, first: date, days: int) -> float:
        """Encode the days first, then write them all; returns when the first write began."""
        from mlops_assets.defs.flights.upstream import day_frame, encode

        self.land_reference()
        files = [
            (self.decl.landing.file_name((first + timedelta(days=i)).isoformat()), encode(day_frame(first + timedelta(days=i)), "parquet"))
            for i in range(days)
        ]
        began = time.time()
        for name, data in files:
            self.landing.write_bytes(self.decl.name, name, data)
        return began

    def settle(self, timeout: float = 300.0) -> None:
        """Until no run is in flight: a run still writing its events when the home goes away fails noisily."""
        from mlops_assets.cli.bench.lead_time_bench import _busy

        try:
            _wait(lambda: not _busy(self.instance), timeout, "the runs in flight to finish", poll=1.0)
        except TimeoutError:
            pass

    def __exit__(self, *exc) -> None:
        from mlops_assets.cli.data_commands import stop_local_platform

        if self.processes:
            stop_local_platform(self.processes)
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(self.root, ignore_errors=True)


def year_case(port: int = 3021, serve_port: int = 8021, timeout: float = 600.0) -> dict:
    with LocalPlatform(port, serve_port) as platform:
        platform.land_reference()  # the demo's reference tables are in before its days land
        platform.start()
        _wait(platform.reference_done, 300, "the reference tables to be materialized", poll=1.0)
        with QueueSampler(platform.instance) as sampler:
            landed_at = platform.land(date(2013, 1, 1), 365)
            _wait(lambda: platform.feature_days() >= 365, timeout, "365 feature partitions", poll=0.5)
            done_at = time.time()
        platform.settle()
        runs = _runs_since(platform.instance, landed_at, done_at)
        ingest = [r for r in runs if r.job.endswith("_ingest")]
        work = work_seconds(ingest, landed_at, done_at)
        seconds = done_at - landed_at
        return {
            "case": "year",
            "files": 365,
            "seconds": round(seconds, 1),
            "work_s": round(work, 1),
            "orchestration_s": round(seconds - work, 1),
            "ingest_runs": len(ingest),
            "runs": len(runs),
            "max_queued": sampler.max_queued,
            "max_in_flight": sampler.max_in_flight,
            "met": seconds <= 60,
        }


def walkaway_case(
    initial_days: int = 28,
    interval: float = 20.0,
    burst_after: float = 40.0,
    port: int = 3022,
    serve_port: int = 8022,
    timeout: float = 900.0,
) -> dict:
    import json

    import polars as pl

    from mlops_assets.defs.flights.features import INPUT_COLUMNS
    from mlops_assets.defs.flights.upstream import day_frame

    start = date(2013, 1, 1)
    # no retraining cooldown (as in `mlops bench leadtime`): the declared 30 minutes would hold the drift request back
    with LocalPlatform(port, serve_port, drift={"cooldown_minutes": 0}) as platform:
        platform.land(start, initial_days)
        began = time.time()
        platform.start()
        record = day_frame(start).filter(pl.col("dep_delay").is_not_null()).select(INPUT_COLUMNS).head(1)
        body = json.dumps({"instances": record.with_columns(pl.col("time_hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_dicts()}).encode()
        url = f"http://127.0.0.1:{serve_port}/v1/models/flights:predict"
        _wait(lambda: _served_version(url, body), timeout, "a first champion to answer", poll=1.0)
        first_champion = time.time() - began
        stop = threading.Event()
        landed: list[str] = []

        def keep_landing() -> None:  # as `mlops demo` does
            day = start + timedelta(days=initial_days)
            while not stop.wait(interval):
                platform.land(day, 1)
                landed.append(day.isoformat())
                day += timedelta(days=1)

        feeder = threading.Thread(target=keep_landing, daemon=True)
        with QueueSampler(platform.instance) as sampler:
            walk_began = time.time()
            feeder.start()
            time.sleep(burst_after)
            burst_at = platform.land(date(2013, 7, 1), 7)

            def drift_training():
                for r in _runs_since(platform.instance, burst_at, time.time()):
                    run = platform.instance.get_run_by_id(r.run_id)
                    if run.tags.get("mlops/trigger") == "drift" and r.started is not None:
                        return r
                return None

            training = _wait(drift_training, timeout, "the drift-triggered training to start", poll=1.0)
            stop.set()
            feeder.join(timeout=interval + 30)
            until = time.time()
        # the loop is closed only by a training that succeeds: one that started in time and then failed (its window's
        # validation days in the gap before July, when windows were counted in calendar days) met the target before
        finished = _wait(
            lambda: (run := platform.instance.get_run_by_id(training.run_id)) is not None and run.is_finished and run,
            timeout,
            "the drift-triggered training to finish",
            poll=1.0,
        )
        platform.settle()
        runs = _runs_since(platform.instance, walk_began, until)
        waited = training.started - training.created
        return {
            "case": "walkaway",
            "initial_days": initial_days,
            "interval_s": interval,
            "days_landed_one_by_one": len(landed),
            "first_champion_s": round(first_champion, 1),
            "burst_to_drift_request_s": round(training.created - burst_at, 1),
            "drift_training_waited_s": round(waited, 1),
            "drift_training_status": finished.status.value,
            "runs": len(runs),
            "runs_by_job": {job: sum(r.job == job for r in runs) for job in sorted({r.job for r in runs})},
            "max_queued": sampler.max_queued,
            "max_in_flight": sampler.max_in_flight,
            "queue_samples": len(sampler.samples),
            # a queue never read (every sample a locked read) is no evidence of a short one
            "met": len(sampler.samples) >= 3 and sampler.max_queued <= 10 and waited <= 30 and finished.status.value == "SUCCESS",
        }


def print_report(results: list[dict]) -> None:
    for r in results:
        verdict = "met" if r["met"] else "MISSED"
        if r["case"] == "year":
            print(
                f"year: 365 files landed -> 365 feature partitions in {r['seconds']:.1f} s (target 60 s, {verdict}); "
                f"work {r['work_s']:.1f} s, orchestration {r['orchestration_s']:.1f} s; {r['ingest_runs']} ingest run(s), "
                f"{r['runs']} runs in all; at most {r['max_queued']} queued, {r['max_in_flight']} in flight"
            )
        else:
            jobs = ", ".join(f"{k} {v}" for k, v in r["runs_by_job"].items())
            print(
                f"walkaway: a day every {r['interval_s']:g} s ({r['days_landed_one_by_one']} landed), seven July days at once: "
                f"at most {r['max_queued']} runs queued (target 10), {r['max_in_flight']} in flight; drift request "
                f"{r['burst_to_drift_request_s']:.0f} s after the burst, the training waited {r['drift_training_waited_s']:.1f} s "
                f"to start (target 30 s) and ended {r['drift_training_status']} -> {verdict}; runs: {jobs} (first champion after {r['first_champion_s']:.0f} s)"
            )
