"""The landing sensor, evaluated against a real Dagster instance."""

import json
import os
from datetime import date

import dagster as dg
import polars as pl
import pytest

from mlops_assets.defs.flights.upstream import encode, land_days, land_reference
from sensors.run_attempts import RETRIES
from tests.support.platform import Platform, days


def evaluate(platform: Platform, cursor: str | None = None) -> dg.SensorResult:
    sensor = platform.defs.resolve_sensor_def("flights_landing_sensor")
    context = dg.build_sensor_context(
        instance=platform.instance,
        cursor=cursor,
        resources=platform.resources(),
        definitions=platform.defs,
    )
    return sensor.evaluate_tick(context)


def partitions_of(result) -> list[str]:
    """The partitions the result's runs cover: one each, or a range each."""
    keys = []
    for r in result.run_requests:
        if r.partition_key:
            keys.append(r.partition_key)
        elif r.partition_key_range:
            first, last = date.fromisoformat(r.partition_key_range.start), date.fromisoformat(r.partition_key_range.end)
            keys.extend(days(first.isoformat(), (last - first).days + 1))
    return sorted(keys)


def test_sensor_is_on_by_default_and_targets_the_ingest_job(platform: Platform):
    sensor = platform.defs.resolve_sensor_def("flights_landing_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert {j.name for j in sensor.jobs} == {"flights_ingest", "flights_reference"}


def test_partitions_wait_for_reference_tables(platform: Platform):
    decl = platform.declarations["flights"]
    result = evaluate(platform)
    assert not result.run_requests and "waiting for the reference files" in result.skip_message

    land_days(decl, platform.landing, date(2013, 1, 1), 2)
    result = evaluate(platform)
    assert [r.job_name for r in result.run_requests] == ["flights_reference"]
    assert result.cursor is None, "partitions are not consumed while the reference is stale"

    platform.run("flights_reference")
    result = evaluate(platform)
    assert partitions_of(result) == ["2013-01-01", "2013-01-02"]
    assert all(r.job_name == "flights_ingest" for r in result.run_requests)

    # a new version of a reference file is loaded before more partitions are ingested
    os.utime(platform.landing.uri("flights", "reference", "weather.parquet"), ns=(1, 1))
    land_days(decl, platform.landing, date(2013, 1, 3), 1)
    result = evaluate(platform, result.cursor)
    assert [r.job_name for r in result.run_requests] == ["flights_reference"]


def test_a_failed_reference_run_is_asked_for_again_then_waits_for_corrected_files(platform: Platform):
    """Partitions wait for the reference tables: a failed reference run used to be asked for under the same run
    key on every tick, which Dagster skips, so ingestion waited for good without saying why."""
    decl = platform.declarations["flights"]
    land_reference(decl, platform.landing)
    land_days(decl, platform.landing, date(2013, 1, 1), 1)
    weather = platform.landing.uri("flights", "reference", "weather.parquet")
    with open(weather, "rb") as f:
        good = f.read()
    with open(weather, "wb") as f:
        f.write(b"not parquet")
    keys = []
    for _ in range(RETRIES + 1):
        (request,) = evaluate(platform).run_requests
        keys.append(request.run_key)
        assert not platform.launch(request).success
    assert keys[1:] == [f"{keys[0]}~retry-{n}" for n in range(1, RETRIES + 1)]
    stalled = evaluate(platform)
    assert not stalled.run_requests and f"gave up on {keys[0]} after {RETRIES + 1} failed runs" in stalled.skip_message
    assert "land corrected reference files" in stalled.skip_message
    with open(weather, "wb") as f:
        f.write(good)  # corrected: a new signature, a new run key
    (request,) = evaluate(platform).run_requests
    assert request.run_key not in keys and platform.launch(request).success
    assert partitions_of(evaluate(platform)) == ["2013-01-01"]


@pytest.fixture
def ready(platform: Platform) -> Platform:
    land_reference(platform.declarations["flights"], platform.landing)
    platform.run("flights_reference")
    return platform


def test_new_files_request_exactly_their_partitions_once(ready: Platform):
    decl = ready.declarations["flights"]
    land_days(decl, ready.landing, date(2013, 1, 1), 3)
    first = evaluate(ready)
    assert partitions_of(first) == ["2013-01-01", "2013-01-02", "2013-01-03"]
    (burst,) = first.run_requests  # the three files are one run over their range
    assert burst.run_key.startswith("2013-01-01..2013-01-03:") and burst.partition_key is None
    assert burst.tags["mlops/landed_file"] == "3 files, flights_2013-01-01.parquet .. flights_2013-01-03.parquet"
    assert set(json.loads(first.cursor)["files"]) == {f"flights_2013-01-0{i}.parquet" for i in (1, 2, 3)}

    second = evaluate(ready, first.cursor)
    assert not second.run_requests and second.skip_message == "no new or replaced files"

    land_days(decl, ready.landing, date(2013, 1, 4), 1)
    third = evaluate(ready, second.cursor)
    assert partitions_of(third) == ["2013-01-04"] and third.run_requests[0].partition_key == "2013-01-04"  # a late file runs alone


def test_an_unreadable_cursor_starts_over_instead_of_stopping_ingestion(ready: Platform):
    """A cursor set by hand failed every tick, and with it all ingestion of the pipeline; started over, the sensor
    asks again under the run keys Dagster already knows (it launches none twice)."""
    land_days(ready.declarations["flights"], ready.landing, date(2013, 1, 1), 2)
    fresh = evaluate(ready)
    for cursor in ("not json", "[1, 2]"):
        again = evaluate(ready, cursor)
        assert [r.run_key for r in again.run_requests] == [r.run_key for r in fresh.run_requests], cursor
        assert set(json.loads(again.cursor)["files"]) == {"flights_2013-01-01.parquet", "flights_2013-01-02.parquet"}


def test_files_already_ingested_from_these_very_files_are_not_asked_for_again(ready: Platform):
    """After a headless backfill (`dg launch`) the sensor's cursor had never seen the files, so its first tick
    ingested the whole landing zone again, and every sensor downstream saw new data. The raw partitions' lineage
    (the signature of the file each was ingested from) says which are done; a replaced file, or a partition
    whose features were never made, still runs."""
    decl = ready.declarations["flights"]
    land_days(decl, ready.landing, date(2013, 1, 1), 4)
    ready.ingest_range("flights", "2013-01-01", "2013-01-03")  # as `dg launch --partition-range` runs it
    path = ready.landing.uri("flights", "flights_2013-01-03.parquet")
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # replaced since it was ingested

    first = evaluate(ready)
    assert partitions_of(first) == ["2013-01-03", "2013-01-04"]  # 01-04 was never ingested
    assert set(json.loads(first.cursor)["files"]) == {f"flights_2013-01-0{i}.parquet" for i in (1, 2, 3, 4)}

    # raw ingested again without its features (as a run that stopped between them leaves it): not done
    ready.defs.resolve_job_def("flights_ingest").execute_in_process(
        instance=ready.instance,
        partition_key="2013-01-02",
        asset_selection=[dg.AssetKey(["flights", "raw"]), dg.AssetKey(["flights", "quarantine"])],
    )
    assert partitions_of(evaluate(ready)) == ["2013-01-02", "2013-01-03", "2013-01-04"]


def test_a_burst_with_gaps_becomes_one_run_per_contiguous_range(ready: Platform):
    decl = ready.declarations["flights"]
    land_days(decl, ready.landing, date(2013, 1, 1), 3)
    land_days(decl, ready.landing, date(2013, 1, 10), 2)
    result = evaluate(ready)
    ranges = sorted((r.partition_key_range.start, r.partition_key_range.end) for r in result.run_requests)
    assert ranges == [("2013-01-01", "2013-01-03"), ("2013-01-10", "2013-01-11")]


def test_replaced_file_is_ingested_again_with_a_new_run_key(ready: Platform):
    decl = ready.declarations["flights"]
    land_days(decl, ready.landing, date(2013, 1, 1), 1)
    first = evaluate(ready)
    path = ready.landing.uri("flights", "flights_2013-01-01.parquet")
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = evaluate(ready, first.cursor)
    assert partitions_of(again) == ["2013-01-01"]
    assert again.run_requests[0].run_key != first.run_requests[0].run_key


def test_partial_foreign_and_out_of_range_files_are_ignored(ready: Platform):
    folder = ready.landing.uri("flights")
    os.makedirs(folder, exist_ok=True)
    for name in [
        ".flights_2013-01-05.parquet.tmp",
        "flights_2013-01-06.parquet.part",
        "notes.txt",
        "flights_2012-12-31.parquet",
        "flights_2014-01-02.parquet",
    ]:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"x")
    result = evaluate(ready)
    assert not result.run_requests
    assert sorted(json.loads(result.cursor)["ignored"]) == ["flights_2012-12-31.parquet", "flights_2014-01-02.parquet", "notes.txt"]


def test_a_file_named_for_an_impossible_day_is_reported_once_and_never_stalls_the_others(ready: Platform):
    land_days(ready.declarations["flights"], ready.landing, date(2013, 1, 3), 1)
    folder = ready.landing.uri("flights")
    # an impossible day, and digits of another script (strptime reads them; Dagster knows no such partition)
    for name in ("flights_2013-02-30.parquet", "flights_\uff12\uff10\uff11\uff13-01-05.parquet"):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"x")
    first = evaluate(ready)
    assert partitions_of(first) == ["2013-01-03"]  # the good file flows
    assert json.loads(first.cursor)["ignored"] == sorted(["flights_2013-02-30.parquet", "flights_\uff12\uff10\uff11\uff13-01-05.parquet"])
    land_days(ready.declarations["flights"], ready.landing, date(2013, 1, 4), 1)
    second = evaluate(ready, first.cursor)  # and keeps flowing on later ticks
    assert partitions_of(second) == ["2013-01-04"]


def test_the_warning_about_a_file_for_an_impossible_day_is_logged_on_the_first_tick_only(ready: Platform, capsys):
    """A sensor ticks every few seconds: a file it cannot ingest is named once (the cursor remembers it), not in a
    warning on every tick for as long as the file stays in the folder. (The tick's log is Dagster's console logger,
    detached from Python's logging tree: read from the stream it writes to.)"""
    land_days(ready.declarations["flights"], ready.landing, date(2013, 1, 3), 1)
    with open(os.path.join(ready.landing.uri("flights"), "flights_2013-02-30.parquet"), "wb") as f:
        f.write(b"x")
    capsys.readouterr()
    first = evaluate(ready)
    evaluate(ready, first.cursor)
    logged = capsys.readouterr()
    warnings = [line for line in (logged.out + logged.err).splitlines() if "flights_2013-02-30.parquet" in line]
    assert len(warnings) == 1 and "WARNING - ignoring flights_2013-02-30.parquet: " in warnings[0], warnings


def test_a_failed_range_is_asked_for_again_one_partition_per_run_so_a_bad_file_holds_back_only_itself(ready: Platform):
    land_days(ready.declarations["flights"], ready.landing, date(2013, 1, 1), 3)
    with open(ready.landing.uri("flights", "flights_2013-01-02.parquet"), "wb") as f:
        f.write(b"")  # unreadable: the range run over the three days fails
    first = evaluate(ready)
    (burst,) = first.run_requests
    waiting = evaluate(ready, first.cursor)  # not launched yet: nothing to do
    assert not waiting.run_requests and json.loads(waiting.cursor)["ranges"] == {burst.run_key: days("2013-01-01", 3)}
    assert not ready.launch(burst).success
    again = evaluate(ready, waiting.cursor)
    assert [r.partition_key for r in again.run_requests] == days("2013-01-01", 3)
    assert json.loads(again.cursor)["ranges"] == {}
    results = {r.partition_key: ready.launch(r) for r in again.run_requests}
    assert {p: r.success for p, r in results.items()} == {"2013-01-01": True, "2013-01-02": False, "2013-01-03": True}
    failure = next(e for e in results["2013-01-02"].all_events if e.is_step_failure)
    assert "empty" in failure.step_failure_data.error.message  # the bad file's own run names its problem
    assert ready.delta.partitions("flights", "features") == ["2013-01-01", "2013-01-03"]
    assert not evaluate(ready, again.cursor).run_requests  # once: the bad file waits for a corrected one


def test_a_range_failed_only_by_a_held_back_day_asks_again_for_that_day_alone(ready: Platform):
    decl = ready.declarations["flights"]
    land_days(decl, ready.landing, date(2013, 1, 1), 3)
    day = pl.read_parquet(ready.landing.uri("flights", "flights_2013-01-02.parquet"))
    over_limit = day.with_columns(
        pl.when(pl.int_range(pl.len()) < day.height // 10).then(None).otherwise(pl.col("carrier")).alias("carrier")
    )
    ready.landing.write_bytes("flights", "flights_2013-01-02.parquet", encode(over_limit, "parquet"))
    first = evaluate(ready)
    (burst,) = first.run_requests
    assert not ready.launch(burst).success  # every day written; 2013-01-02's features held back
    assert ready.delta.partitions("flights", "features") == ["2013-01-01", "2013-01-03"]
    again = evaluate(ready, first.cursor)
    assert [r.partition_key for r in again.run_requests] == ["2013-01-02"]  # not the two featurized days again


def test_a_late_file_runs_with_the_days_its_history_reaches_so_their_features_equal_an_in_order_backfill(
    ready: Platform, flights_ingested: Platform
):
    """A late day ran alone: the stored features of the days after it kept a history without it (serving, reading
    the new history, then computed other values for them)."""
    decl = ready.declarations["flights"]
    land_days(decl, ready.landing, date(2013, 1, 1), 4)
    land_days(decl, ready.landing, date(2013, 1, 6), 3)
    first = evaluate(ready)
    bursts = sorted(first.run_requests, key=lambda r: r.partition_key_range.start)
    assert [(r.partition_key_range.start, r.partition_key_range.end) for r in bursts] == [
        ("2013-01-01", "2013-01-04"),
        ("2013-01-06", "2013-01-08"),
    ]
    assert all(ready.launch(r).success for r in bursts)
    after = days("2013-01-05", 4)
    stale = ready.delta.read_partitions("flights", "features", after[1:]).sort("_partition", "_source_row")
    ready.landing.write_bytes("flights", "flights_2013-01-09.parquet", b"")  # unreadable: 2013-01-09 is never featurized
    bad = evaluate(ready, first.cursor)
    assert not ready.launch(bad.run_requests[0]).success

    land_days(decl, ready.landing, date(2013, 1, 5), 1)
    late = evaluate(ready, bad.cursor)
    # the late day with the featurized days whose history it is part of; not 2013-01-09, which would fail the range
    (request,) = late.run_requests
    assert (request.partition_key_range.start, request.partition_key_range.end) == ("2013-01-05", "2013-01-08")
    assert ready.launch(request).success
    ours = ready.delta.read_partitions("flights", "features", after).sort("_partition", "_source_row")
    in_order = flights_ingested.delta.read_partitions("flights", "features", after).sort("_partition", "_source_row")
    assert ours.equals(in_order.select(ours.columns))
    assert not stale.equals(ours.filter(pl.col("_partition") != "2013-01-05"))  # they had been computed without it
    late = evaluate(ready, late.cursor)
    assert not late.run_requests

    # a new day at the end runs alone: nothing ingested before has it in its history
    land_days(decl, ready.landing, date(2013, 1, 10), 1)
    assert [r.partition_key for r in evaluate(ready, late.cursor).run_requests] == ["2013-01-10"]


def test_sensor_runs_through_the_daemon_path_and_ingests(ready: Platform):
    """Requests launched as real runs ingest exactly the landed partitions."""
    decl = ready.declarations["flights"]
    land_days(decl, ready.landing, date(2013, 1, 1), 2)
    result = evaluate(ready)
    (request,) = result.run_requests
    run = ready.launch(request)
    assert run.success
    assert ready.instance.get_run_by_id(run.run_id).tags["mlops/landed_file"].startswith("2 files")
    assert ready.delta.partitions("flights", "features") == ["2013-01-01", "2013-01-02"]
    materialized = ready.instance.get_materialized_partitions(dg.AssetKey(["flights", "features"]))
    assert materialized == {"2013-01-01", "2013-01-02"}
