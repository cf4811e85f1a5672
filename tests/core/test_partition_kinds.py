"""Hourly, weekly and monthly pipelines: keys, file names, history windows and misplaced rows follow the kind.

A small telemetry pipeline per kind lands three partitions, the landing sensor asks for one run over them,
and the features of the third partition draw their history from the two before it."""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg
import polars as pl
import pytest

from mlops_assets.core.declaration import derive_declaration, load_declaration
from mlops_assets.core.partitions import key_time, partition_problem, partitions_before, partitions_def, shift
from mlops_assets.governance.erasure import erase
from mlops_assets.models.training import TrainingDataError, plan_training
from tests.support.models import sensor_tick
from tests.support.platform import TESTS, Platform

KEYS = {
    "hourly": ["2024-03-03-00:00", "2024-03-03-01:00", "2024-03-03-02:00"],
    "weekly": ["2024-03-03", "2024-03-10", "2024-03-17"],
    "monthly": ["2024-03-01", "2024-04-01", "2024-05-01"],
}


def telemetry(kind: str):
    base = load_declaration(TESTS / "pipelines" / "telemetry.yaml")
    return derive_declaration(
        base,
        f"telemetry ({kind})",
        partitioning={"kind": kind, "start": "2024-03-01", "end": "2024-07-01", "time_column": "reading_time"},
        features={"history_days": 3},
    )


def readings(start: datetime, temperatures: list[float]) -> str:
    rows = "".join(
        f"m{i % 4 + 1},{(start + timedelta(minutes=i)).strftime('%Y-%m-%dT%H:%M:%SZ')},{t},0.1,{i % 2}\n"
        for i, t in enumerate(temperatures)
    )
    return "machine_id,reading_time,temperature,vibration,failure\n" + rows


@pytest.mark.parametrize("kind", ["hourly", "weekly", "monthly"])
def test_a_pipeline_of_each_kind_ingests_a_burst_in_one_run_with_history_of_its_own_kind(tmp_path, kind):
    decl = telemetry(kind)
    keys = KEYS[kind]
    assert [shift(decl, keys[0], i) for i in range(3)] == keys
    assert partitions_before(decl, keys[2], 2) == keys[:2]
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        plat = Platform(tmp_path, [decl], instance)
        temps = {k: [20.0 + 10 * n + i for i in range(8)] for n, k in enumerate(keys)}
        for n, key in enumerate(keys):
            text = readings(key_time(decl, key), temps[key])
            if n == 0:  # a reading of the next partition in the first file
                stray = key_time(decl, keys[1]) + timedelta(minutes=30)
                text += f"m1,{stray.strftime('%Y-%m-%dT%H:%M:%SZ')},99.0,0.1,0\n"
            plat.landing.write_bytes("telemetry", decl.landing.file_name(key), text.encode())
        sensor = plat.defs.resolve_sensor_def("telemetry_landing_sensor")
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=plat.resources(), definitions=plat.defs))
        (burst,) = tick.run_requests
        assert (burst.partition_key_range.start, burst.partition_key_range.end) == (keys[0], keys[-1])
        assert plat.defs.resolve_job_def("telemetry_ingest").execute_in_process(instance=instance, tags=burst.tags).success
        assert plat.delta.partitions("telemetry", "features") == keys
        quarantine = plat.delta.read_partitions("telemetry", "quarantine", [keys[0]])
        assert quarantine.height == 1 and f"is outside partition {keys[0]}" in quarantine.get_column("_reason")[0]
        # the third partition's history: the machines' mean temperature over the two partitions before it
        features = plat.delta.read_partitions("telemetry", "features", [keys[2]])
        usual = features.select("machine_id", (pl.col("temperature") - pl.col("temperature_vs_usual")).alias("usual")).unique()
        expected = {f"m{m}": sum(t for k in keys[:2] for i, t in enumerate(temps[k]) if i % 4 + 1 == m) / 4 for m in range(1, 5)}
        assert {m: round(v, 6) for m, v in usual.iter_rows()} == {m: round(v, 6) for m, v in expected.items()}
        # what is said about them counts partitions of the kind: an hourly pipeline's said "3 featurized days"
        unit = {"hourly": "hour", "weekly": "week", "monthly": "month"}[kind]
        with pytest.raises(TrainingDataError, match=f"3 featurized {unit}s up to {keys[2]}; .* 7 validation {unit}s"):
            plan_training(decl, plat.delta)
        with pytest.raises(TrainingDataError, match=f"{unit} {keys[2]}x has no features; the window must end on a featurized {unit}$"):
            plan_training(decl, plat.delta, f"{keys[2]}x")
        if kind != "hourly":
            return  # the rest opens an MLflow store: once is enough
        erased = erase(decl, plat.delta, plat.resources()["mlflow"], 'machine_id = "m1"', "dpo", "t", True)
        assert f"; {keys[0]} .. {keys[2]} (3 {unit}s)" in erased.report()
        skip = sensor_tick(plat, "telemetry_new_data_sensor").skip_message
        assert skip == f"3 new featurized {unit}s since the start; 15 needed"


def test_keys_that_are_not_partitions_of_the_kind_are_named():
    now = datetime(2030, 1, 1)
    assert "not the first day of a week" in partition_problem(telemetry("weekly"), "2024-03-04", now)
    assert "not the first day of a month" in partition_problem(telemetry("monthly"), "2024-03-02", now)
    assert "not the start of an hour" in partition_problem(telemetry("hourly"), "2024-03-03-05:30", now)
    # the form a person writes, not strftime's %Y-%m-%d-%H:%M
    assert "is not a hourly partition key (YYYY-MM-DD-HH:MM)" in partition_problem(telemetry("hourly"), "2024-03-03", now)
    assert "is not a weekly partition key (YYYY-MM-DD, a Sunday)" in partition_problem(telemetry("weekly"), "2024-3-3", now)
    assert "has not ended yet" in partition_problem(telemetry("monthly"), "2024-06-01", datetime(2024, 6, 15))
    assert partition_problem(telemetry("weekly"), "2024-03-10", now) is None


def test_a_key_whose_partition_ends_past_year_9999_is_outside_not_a_failed_landing_sensor_tick():
    """Its end overflowed datetime: a file named for it failed every landing sensor tick (and every other file with it)."""
    from sensors.landing_sensor import not_ingestible

    for kind, key in (("hourly", "9999-12-31-23:00"), ("daily", "9999-12-31"), ("weekly", "9999-12-26"), ("monthly", "9999-12-01")):
        open_ended = derive_declaration(telemetry(kind), "t", partitioning={"end": None})
        for decl in (telemetry(kind), open_ended):
            assert "is outside the declared partitions" in not_ingestible(decl, decl.landing.file_name(key)), (kind, decl.partitioning.end)


def test_a_period_running_past_the_declared_end_is_no_partition_as_in_dagster():
    """A week that ends after `end` is not one of Dagster's partitions: a landed file for it was asked for in a range
    run that failed (taking the valid weeks with it), then alone, with an unknown-partition error."""
    now = datetime(2030, 1, 1)
    for kind, last, past in (("weekly", "2024-06-23", "2024-06-30"), ("monthly", "2024-06-01", "2024-07-01")):
        decl = telemetry(kind).model_copy(deep=True)
        decl = derive_declaration(decl, "t", partitioning={**decl.partitioning.model_dump(), "end": "2024-07-03"})
        keys = partitions_def(decl).get_partition_keys()
        assert keys[-1] == last and partition_problem(decl, last, now) is None
        assert past not in keys and "outside the declared partitions" in partition_problem(decl, past, now)


def test_a_declared_range_without_a_whole_week_or_month_is_refused():
    """Dagster listed the first week or month though it ran past `end`, and every file of it was refused as outside."""
    from mlops_assets.core.declaration import DeclarationError

    for kind, start, end, first in (
        ("weekly", "2024-03-01", "2024-03-05", "2024-03-03"),
        ("monthly", "2024-03-15", "2024-04-10", "2024-04-01"),
    ):
        with pytest.raises(DeclarationError, match=f"no whole {kind} partition between start and end: the first, {first}, ends"):
            derive_declaration(telemetry(kind), "t", partitioning={"start": start, "end": end})
    for kind, start, end in (
        ("weekly", "2024-03-01", "2024-03-10"),
        ("monthly", "2024-03-15", "2024-05-01"),
        ("monthly", "2024-12-01", "2025-01-01"),
    ):
        decl = derive_declaration(telemetry(kind), "t", partitioning={"start": start, "end": end})
        (key,) = partitions_def(decl).get_partition_keys()
        assert partition_problem(decl, key, datetime(2030, 1, 1)) is None


def test_a_row_is_misplaced_only_when_its_date_parts_make_a_real_date_of_another_partition():
    from mlops_assets.core.declaration import PACKAGED_PIPELINES
    from mlops_assets.core.partitions import misplaced_in_files

    flights = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")  # time_column: [year, month, day]
    frame = pl.DataFrame(
        {
            "_source_row": [0, 1, 2, 3, 4, 5],
            "year": [2013, 2013, 2013, 2013, 2013, 2012],
            "month": [1, 2, 1, 13, None, 12],
            "day": [31, 1, 32, 1, 31, 31],  # its day; the next; day 32 (between the two as a number); month 13; null; the year before
        },
        schema={"_source_row": pl.UInt32, "year": pl.Int16, "month": pl.Int8, "day": pl.Int8},
    )
    (found,) = misplaced_in_files(flights, [frame], ["2013-01-31"], "_source_row")
    assert dict(found.iter_rows()) == {
        1: "year/month/day: 2013-02-01 is outside partition 2013-01-31",
        5: "year/month/day: 2012-12-31 is outside partition 2013-01-31",
    }  # parts out of the schema's ranges (month 13, day 32) and incomplete dates are the schema's to report
    # a day its month does not have lies between the partition's day and the next as a number: still read, and refused
    leap = pl.DataFrame({"_source_row": [0, 1], "year": [2013, 2013], "month": [2, 2], "day": [28, 31]}, schema=frame.schema)
    (found,) = misplaced_in_files(flights, [leap], ["2013-02-28"], "_source_row")
    assert dict(found.iter_rows()) == {1: "year/month/day: 2013-2-31 is not a calendar date"}


def test_an_hourly_pipeline_needs_a_datetime_to_place_its_rows():
    """A date names no hour: every row of an hourly file was quarantined as outside its partition."""
    from mlops_assets.core.declaration import PACKAGED_PIPELINES, DeclarationError

    flights = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")  # time_column: [year, month, day]
    with pytest.raises(DeclarationError, match="time_column of an hourly pipeline must be a datetime column"):
        derive_declaration(flights, "hourly flights", partitioning={"kind": "hourly"})


def test_history_days_counts_partitions_of_the_kind_so_an_hourly_history_may_span_weeks():
    """The cap of 366 was a year of days: an hourly pipeline could not look back more than 15 days."""
    from mlops_assets.core.declaration import DeclarationError

    month_of_hours = derive_declaration(telemetry("hourly"), "t", features={"history_days": 30 * 24})
    assert month_of_hours.features.history_days == 720
    assert partitions_before(month_of_hours, "2024-04-01-00:00", 720)[0] == "2024-03-02-00:00"
    with pytest.raises(DeclarationError, match="less than or equal to 8784"):
        derive_declaration(telemetry("hourly"), "t", features={"history_days": 366 * 24 + 1})
    for kind in ("weekly", "monthly"):
        with pytest.raises(DeclarationError, match=f"features.history_days \\(367\\) counts {kind} partitions: at most 366"):
            derive_declaration(telemetry(kind), "t", features={"history_days": 367})


@pytest.mark.parametrize("kind", ["hourly", "weekly"])
def test_what_the_dagster_ui_says_of_a_pipeline_counts_partitions_of_its_kind(kind):
    """The raw asset said 'daily Delta partition', the ingest job 'one landed day', the monitor job 'featurized days'
    and the data_checks gate 'Every day of the window' for an hourly or weekly pipeline too."""
    import re

    from mlops_assets.definitions import build_definitions

    defs = build_definitions([telemetry(kind)])
    repo = defs.get_repository_def()
    every = repo.asset_graph.assets_defs  # assets and asset checks
    said = {f"asset {'/'.join(k.path)}": d.descriptions_by_key.get(k) for d in every for k in d.keys}
    said |= {f"check {s.name}": s.description for d in every for s in d.check_specs}
    said |= {f"job {j.name}": j.description for j in repo.get_all_jobs()}
    said |= {f"sensor {s.name}": s.description for s in repo.sensor_defs}
    # a name in backticks is a column's (live_performance's `day`), not a count of partitions
    wrong = {what: text for what, text in said.items() if text and re.search(r"\b(daily|days?)\b", re.sub(r"`[^`]*`", "", text))}
    assert not wrong
