"""The platform under test: a real platform home in a temp folder, a real Dagster instance, the
flights declaration; `platform` and `flights_ingested` are its fixtures (a registered plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.core.declaration import (
    PACKAGED_PIPELINES,
    PipelineDeclaration,
    load_declaration,
)
from mlops_assets.core.home import MlopsHome
from mlops_assets.core.names import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG, RUN_KEY_TAG
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.flights.upstream import land_days
from resources.defaults import model_resources, serving_resources
from resources.delta_lake import DeltaLakeResource
from resources.landing_zone import LandingZoneResource

TESTS = Path(__file__).resolve().parent.parent


class Platform:
    """One platform home: landing zone, Delta tables, a Dagster instance and definitions."""

    def __init__(self, root: Path, declarations: list[PipelineDeclaration], instance: dg.DagsterInstance):
        self.root = root
        self.landing = LandingZoneResource(root=str(root / "landing"))
        self.delta = DeltaLakeResource(root=str(root / "delta"))
        self.declarations = {d.name: d for d in declarations}
        self.instance = instance
        self.defs = build_definitions(declarations, resources=self.resources())

    def resources(self) -> dict:
        return {
            "landing": self.landing,
            "delta": self.delta,
            **model_resources(MlopsHome(self.root)),
            **serving_resources(MlopsHome(self.root)),
        }

    def run(self, job_name: str, partition: str | None = None, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        return self.defs.resolve_job_def(job_name).execute_in_process(
            instance=self.instance, partition_key=partition, raise_on_error=raise_on_error
        )

    def launch(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        """The run the daemon launches for a sensor's request, with the run key tag it gives it (how sensors
        find the runs they asked for); a failure is returned, not raised."""
        job = self.defs.resolve_job_def(request.job_name)
        tags = {**request.tags, RUN_KEY_TAG: request.run_key}
        return job.execute_in_process(instance=self.instance, tags=tags, partition_key=request.partition_key, raise_on_error=False)

    def failed(self, request: dg.RunRequest, job_name: str | None = None) -> dg.DagsterRun:
        """A run of the request that failed: its record only, where the sensor's answer to a failure is under test.
        `job_name` for a sensor whose requests name no job (it targets one)."""
        job = self.defs.resolve_job_def(request.job_name or job_name)
        run = self.instance.create_run_for_job(job_def=job, tags={**request.tags, RUN_KEY_TAG: request.run_key})
        self.instance.report_run_failed(run)
        return run

    def ingest(self, pipeline: str, partitions: list[str], raise_on_error: bool = True) -> list[dg.ExecuteInProcessResult]:
        """One run per partition, as the landing sensor runs a lone late file."""
        return [self.run(f"{pipeline}_ingest", p, raise_on_error) for p in partitions]

    def ingest_range(self, pipeline: str, first: str, last: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        """Partitions `first`..`last` in one run, as a backfill (or the landing sensor's burst) runs them."""
        return self.defs.resolve_job_def(f"{pipeline}_ingest").execute_in_process(
            instance=self.instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
            raise_on_error=raise_on_error,
        )


def days(start: str, n: int) -> list[str]:
    first = date.fromisoformat(start)
    return [(first + timedelta(days=i)).isoformat() for i in range(n)]


@pytest.fixture(scope="session")
def flights_decl() -> PipelineDeclaration:
    return load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")


@pytest.fixture
def platform(tmp_path: Path, flights_decl: PipelineDeclaration, monkeypatch) -> Iterator[Platform]:
    """A fresh platform home with the flights pipeline; nothing landed yet."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield Platform(tmp_path, [flights_decl], instance)


@pytest.fixture(scope="session")
def flights_ingested(tmp_path_factory, flights_decl) -> Iterator[Platform]:
    """Shared, read-only: 35 flights days landed, reference loaded, ingested and featurized in one range run
    (tests/data/test_backfill.py holds a range run equal to one run per day)."""
    root = tmp_path_factory.mktemp("flights_home")
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        plat = Platform(root, [flights_decl], instance)
        land_days(flights_decl, plat.landing, date(2013, 1, 1), 35)
        plat.run("flights_reference")
        plat.ingest_range("flights", "2013-01-01", days("2013-01-01", 35)[-1])
        yield plat
