"""Delta tables and the landing zone on a real S3-compatible server (moto on loopback).

The platform code is unchanged; only the roots are s3:// URIs and the standard
AWS_* variables are set, which is all a cluster deployment changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.flights.upstream import day_frame, land_days
from resources.delta_lake import DeltaLakeResource, object_store_options
from resources.landing_zone import LandingZoneResource
from tests.support.object_store import S3Server, moto_s3_server
from tests.support.platform import Platform, days

DAYS = days("2013-01-01", 3)
SOURCE_ROWS = {"2013-01-01": 842, "2013-01-02": 943, "2013-01-03": 914}


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    with moto_s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch) -> S3Server:
    """Credentials and endpoint only in the environment, as a Kubernetes Secret would set them."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


def s3_root(s3: S3Server, request) -> str:
    return f"s3://{s3.bucket}/{request.node.name}"


@pytest.fixture
def s3_platform(s3_env: S3Server, tmp_path: Path, flights_decl, monkeypatch, request) -> Iterator[Platform]:
    """The test platform with its landing zone and Delta tables on the object store."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    (tmp_path / "dagster").mkdir()
    root = s3_root(s3_env, request)
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        plat = Platform(tmp_path, [flights_decl], instance)
        plat.landing = LandingZoneResource(root=f"{root}/landing")
        plat.delta = DeltaLakeResource(root=f"{root}/delta")
        plat.defs = build_definitions([flights_decl], resources=plat.resources())
        yield plat


def evaluate_sensor(plat: Platform, cursor: str | None = None) -> dg.SensorResult:
    sensor = plat.defs.resolve_sensor_def("flights_landing_sensor")
    context = dg.build_sensor_context(instance=plat.instance, cursor=cursor, resources=plat.resources(), definitions=plat.defs)
    return sensor.evaluate_tick(context)


def partition_counts(delta: DeltaLakeResource, table: str) -> dict[str, int]:
    lf = delta.scan("flights", table)
    assert lf is not None, f"{table} was not written"
    return dict(lf.group_by("_partition").len().collect().iter_rows())


def test_options_come_from_the_environment_and_unsafe_commits_are_refused(s3_env: S3Server, monkeypatch):
    options = object_store_options("s3://bucket/delta")
    assert options["aws_endpoint_url"] == s3_env.endpoint
    assert options["aws_access_key_id"] == "testing"
    assert options["aws_conditional_put"] == "etag"
    assert object_store_options("/local/delta") == {}
    monkeypatch.setenv("MLOPS_STORAGE_AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false")
    assert object_store_options("s3://bucket/delta")["aws_virtual_hosted_style_request"] == "false"
    explicit = object_store_options("s3://bucket/delta", {"AWS_REGION": "eu-west-1"})
    assert explicit["aws_region"] == "eu-west-1", "explicit options beat the environment"
    with pytest.raises(ValueError, match="AWS_S3_ALLOW_UNSAFE_RENAME"):
        object_store_options("s3://bucket/delta", {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"})
    monkeypatch.setenv("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    with pytest.raises(ValueError, match="AWS_S3_ALLOW_UNSAFE_RENAME"):
        object_store_options("s3://bucket/delta")
    monkeypatch.delenv("AWS_S3_ALLOW_UNSAFE_RENAME")
    with pytest.raises(ValueError, match="only 'etag'"):
        DeltaLakeResource(root="s3://bucket/delta", storage_options={"aws_conditional_put": "disabled"}).version("flights", "raw")


def test_landing_zone_on_s3_lists_only_complete_files(s3_env: S3Server, request):
    landing = LandingZoneResource(root=f"{s3_root(s3_env, request)}/landing")
    uri = landing.write_bytes("flights", "flights_2013-01-01.parquet", b"complete")
    assert uri.startswith("s3://")
    # an upstream writer's in-progress upload under a temporary name is not a landed file
    key = f"{request.node.name}/landing/flights/.flights_2013-01-02.parquet.tmp"
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=b"partial")
    assert [f.name for f in landing.list_files("flights")] == ["flights_2013-01-01.parquet"]
    assert landing.read_bytes("flights", "flights_2013-01-01.parquet") == b"complete"
    stat = landing.stat("flights", "flights_2013-01-01.parquet")
    assert stat is not None and stat.size == len(b"complete")
    assert landing.stat("flights", "missing.parquet") is None
    assert DeltaLakeResource(root=f"{s3_root(s3_env, request)}/delta").version("flights", "raw") is None


def test_sensor_ingestion_and_features_on_s3(s3_platform: Platform, s3: S3Server, tmp_path: Path, request):
    plat = s3_platform
    decl = plat.declarations["flights"]
    land_days(decl, plat.landing, date(2013, 1, 1), len(DAYS))
    prefix = f"{request.node.name}/landing/flights/"
    landed = s3.keys(prefix)
    assert {k.removeprefix(prefix) for k in landed} >= {f"flights_{d}.parquet" for d in DAYS}

    # the sensor sees the landed files on S3: first the reference, then one run per day
    first = evaluate_sensor(plat)
    assert [r.job_name for r in first.run_requests] == ["flights_reference"]
    plat.run("flights_reference")
    second = evaluate_sensor(plat)
    (burst,) = second.run_requests  # the landed days are one run over their range
    assert (burst.partition_key_range.start, burst.partition_key_range.end) == (DAYS[0], DAYS[-1])
    assert plat.defs.resolve_job_def(burst.job_name).execute_in_process(instance=plat.instance, tags=burst.tags).success
    assert not evaluate_sensor(plat, second.cursor).run_requests, "each landed file runs once"

    assert partition_counts(plat.delta, "raw") == SOURCE_ROWS
    assert set(partition_counts(plat.delta, "features")) == set(DAYS)
    raw = plat.delta.read_partitions("flights", "raw", [DAYS[0]])
    source = day_frame(date(2013, 1, 1))
    assert raw.select(pl.col("flight").sum()).item() == source.select(pl.col("flight").sum()).item()
    assert plat.delta.partitions("flights", "raw") == DAYS
    assert s3.keys(f"{request.node.name}/delta/flights/raw/_delta_log/"), "Delta log lives on S3"
    assert not (tmp_path / "delta").exists() and not (tmp_path / "landing").exists(), "nothing written locally"

    # the same days through the laptop defaults give the same tables: only the storage differs
    local_root = tmp_path / "local"
    (local_root / "dagster").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(local_root / "dagster")) as local_instance:
        local = Platform(local_root, [decl], local_instance)
        land_days(decl, local.landing, date(2013, 1, 1), len(DAYS))
        local.run("flights_reference")
        local.ingest("flights", DAYS)
        for table in ("raw", "quarantine", "features"):
            on_s3 = plat.delta.read_partitions("flights", table, DAYS)
            on_disk = local.delta.read_partitions("flights", table, DAYS)
            assert on_s3.sort(on_s3.columns).equals(on_disk.sort(on_disk.columns)), f"{table} differs on S3"

    # idempotent re-ingest of a partition on S3
    features_before = plat.delta.read_partitions("flights", "features", [DAYS[1]]).sort(pl.all())
    version = plat.delta.version("flights", "raw")
    again = plat.run("flights_ingest", DAYS[1])
    assert partition_counts(plat.delta, "raw") == SOURCE_ROWS, "re-ingest must not duplicate rows"
    assert plat.delta.version("flights", "raw") > version
    last = DeltaTable(plat.delta.table_uri("flights", "raw"), storage_options=plat.delta.resolved_storage_options()).history(1)[0]
    assert last["dagster_run_id"] == again.run_id
    features_after = plat.delta.read_partitions("flights", "features", [DAYS[1]]).sort(pl.all())
    assert features_after.equals(features_before)


def _race(writers: list, *, timeout: float = 60) -> list[BaseException | None]:
    """Start all writers at the same instant; return each one's exception (None on success)."""
    barrier = threading.Barrier(len(writers))
    outcome: list[BaseException | None] = [None] * len(writers)

    def run(i: int) -> None:
        barrier.wait()
        try:
            writers[i]()
        except BaseException as err:  # reported to the test, not swallowed
            outcome[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a writer hung"
    return outcome


def _frame(n: int, marker: str) -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(n)), "writer": [marker] * n})


def _history_run_ids(delta: DeltaLakeResource, table: str) -> list[str]:
    dt = DeltaTable(delta.table_uri("race", table), storage_options=delta.resolved_storage_options())
    return [h["dagster_run_id"] for h in dt.history() if "dagster_run_id" in h]


def test_concurrent_writers_of_different_partitions_both_land(s3_env: S3Server, request):
    delta = DeltaLakeResource(root=f"{s3_root(s3_env, request)}/delta")
    delta.write_partition("race", "t", _frame(1, "seed"), "p0", "seed")
    parts = ["p1", "p2", "p3"]
    versions: dict[str, int] = {}

    def writer(p: str):
        return lambda: versions.__setitem__(p, delta.write_partition("race", "t", _frame(50, p), p, f"run-{p}"))

    outcome = _race([writer(p) for p in parts])
    assert outcome == [None] * len(parts)
    # each writer is told the version of its own commit, even when others committed after it
    dt = DeltaTable(delta.table_uri("race", "t"), storage_options=delta.resolved_storage_options())
    by_version = {h["version"]: h.get("dagster_run_id") for h in dt.history()}
    assert {p: by_version[v] for p, v in versions.items()} == {p: f"run-{p}" for p in parts}
    counts = partition_counts_of(delta, "t")
    assert counts == {"p0": 1, "p1": 50, "p2": 50, "p3": 50}
    assert sorted(_history_run_ids(delta, "t")) == sorted(["seed", *(f"run-{p}" for p in parts)])


def partition_counts_of(delta: DeltaLakeResource, table: str) -> dict[str, int]:
    lf = delta.scan("race", table)
    assert lf is not None
    return dict(lf.group_by("_partition").len().collect().iter_rows())


def test_concurrent_overwrites_of_one_partition_never_duplicate(s3_env: S3Server, request):
    delta = DeltaLakeResource(root=f"{s3_root(s3_env, request)}/delta", commit_retries=8)
    delta.write_partition("race", "t", _frame(40, "seed"), "p", "seed")
    writers = ["a", "b", "c"]
    outcome = _race([lambda w=w: delta.write_partition("race", "t", _frame(40, w), "p", f"run-{w}") for w in writers])
    assert outcome == [None] * len(writers), "losers retry on the new snapshot"
    rows = delta.read_partitions("race", "t", ["p"])
    assert rows.height == 40, "the partition is replaced, never stacked"
    assert rows["writer"].n_unique() == 1 and rows["id"].is_unique().all()
    committed = _history_run_ids(delta, "t")
    assert sorted(committed) == sorted(["seed", *(f"run-{w}" for w in writers)]), "no commit overwrote another"
    assert rows["writer"][0] == committed[0].removeprefix("run-"), "the last commit's rows are the table's"


def test_without_retries_a_losing_writer_fails_clearly(s3_env: S3Server, request):
    """No retry budget: every writer either commits or raises CommitFailedError; rows never duplicate."""
    delta = DeltaLakeResource(root=f"{s3_root(s3_env, request)}/delta", commit_retries=0)
    delta.write_partition("race", "t", _frame(30, "seed"), "p", "seed")
    writers = ["a", "b", "c", "d"]
    outcome = _race([lambda w=w: delta.write_partition("race", "t", _frame(30, w), "p", f"run-{w}") for w in writers])
    for err in outcome:
        assert err is None or (isinstance(err, CommitFailedError) and "not committed" in str(err)), err
    won = {f"run-{w}" for w, err in zip(writers, outcome) if err is None}
    assert won, "at least one writer commits"
    assert set(_history_run_ids(delta, "t")) - {"seed"} == won, "exactly the winners' commits are in the log"
    assert delta.read_partitions("race", "t", ["p"]).height == 30


def test_a_commit_built_on_a_stale_snapshot_cannot_overwrite_the_log(s3_env: S3Server, request):
    """The storage-level guarantee: the next log entry is created with a conditional put, so a
    writer that read version N before another writer committed N+1 conflicts instead of clobbering."""
    delta = DeltaLakeResource(root=f"{s3_root(s3_env, request)}/delta")
    delta.write_partition("race", "t", _frame(10, "seed"), "p", "seed")
    stale = DeltaTable(delta.table_uri("race", "t"), storage_options=delta.resolved_storage_options())
    delta.write_partition("race", "t", _frame(10, "winner"), "p", "winner")
    with pytest.raises(CommitFailedError):
        write_deltalake(
            stale,
            _frame(10, "loser").with_columns(pl.lit("p").alias("_partition")).to_arrow(),
            mode="overwrite",
            predicate="_partition = 'p'",
            partition_by=["_partition"],
        )
    rows = delta.read_partitions("race", "t", ["p"])
    assert rows["writer"].unique().to_list() == ["winner"] and rows.height == 10


def test_code_location_defaults_follow_the_environment(s3_env: S3Server, tmp_path: Path, flights_decl, monkeypatch, request):
    """The deployed code location (default resources) goes to S3 from environment variables alone."""
    from mlops_assets.defs.flights.upstream import land_reference

    root = s3_root(s3_env, request)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MLOPS_LANDING_URI", f"{root}/landing")
    monkeypatch.setenv("MLOPS_DELTA_URI", f"{root}/delta")
    (tmp_path / "dagster").mkdir()
    defs = build_definitions([flights_decl])  # resources=None: what the code location serves
    land_reference(flights_decl, LandingZoneResource(root=f"{root}/landing"))
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = defs.resolve_job_def("flights_reference").execute_in_process(instance=instance)
    assert result.success
    assert s3_env.keys(f"{request.node.name}/delta/flights/reference_weather/_delta_log/")
    assert not (tmp_path / "delta").exists()
