"""Landed file -> raw + quarantine Delta partitions: idempotent, nothing lost, bad files fail loudly."""

import json
import shutil
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from mlops_assets.core.declaration import load_declaration
from mlops_assets.defs.flights.upstream import day_frame, encode, land_days
from tests.support.platform import TESTS, Platform, days

DAY1, DAY2, DAY3 = days("2013-01-01", 3)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    parts = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            parts.append(data.error.message if data.error else "")
            if data.user_failure_data and data.user_failure_data.description:
                parts.append(data.user_failure_data.description)
    return "\n".join(parts)


def counts(platform: Platform, table: str) -> dict[str, int]:
    lf = platform.delta.scan("flights", table)
    if lf is None:
        return {}
    return dict(lf.group_by("_partition").len().collect().iter_rows())


def land_frame(platform: Platform, day: str, frame: pl.DataFrame) -> None:
    platform.landing.write_bytes("flights", f"flights_{day}.parquet", encode(frame, "parquet"))


@pytest.fixture
def three_days(platform: Platform) -> Platform:
    land_days(platform.declarations["flights"], platform.landing, date(2013, 1, 1), 3)
    platform.run("flights_reference")
    platform.ingest("flights", [DAY1, DAY2, DAY3])
    return platform


def test_reingest_replaces_only_its_partition(three_days: Platform):
    platform = three_days
    before = counts(platform, "raw")
    assert before == {DAY1: 842, DAY2: 943, DAY3: 914}
    day1 = platform.delta.read_partitions("flights", "raw", [DAY1]).sort("_source_row")

    again = platform.run("flights_ingest", DAY2)
    assert counts(platform, "raw") == before, "re-running a partition must not duplicate rows"
    history = DeltaTable(platform.delta.table_uri("flights", "raw")).history(1)[0]
    assert history["dagster_run_id"] == again.run_id
    assert history["partition"] == DAY2 and history["operationParameters"]["mode"] == "Overwrite"
    log = Path(platform.delta.table_uri("flights", "raw")) / "_delta_log" / f"{history['version']:020d}.json"
    actions = [json.loads(line) for line in log.read_text().splitlines()]
    touched = {a[kind]["partitionValues"]["_partition"] for a in actions for kind in ("add", "remove") if kind in a}
    assert touched == {DAY2}, "the commit removes and adds files of its own partition only"

    corrected = day_frame(date(2013, 1, 2)).head(900)
    land_frame(platform, DAY2, corrected)
    platform.run("flights_ingest", DAY2)
    after = counts(platform, "raw")
    assert after == {DAY1: 842, DAY2: 900, DAY3: 914}
    assert counts(platform, "features")[DAY2] == 900
    assert platform.delta.read_partitions("flights", "raw", [DAY1]).sort("_source_row").equals(day1)


def test_raw_equals_clean_plus_quarantined(platform: Platform):
    decl = platform.declarations["flights"]
    land_days(decl, platform.landing, date(2013, 1, 1), 1)
    platform.run("flights_reference")
    frame = day_frame(date(2013, 1, 2)).with_row_index("i")
    frame = frame.with_columns(
        pl.when(pl.col("i").is_in([0, 1])).then(None).otherwise(pl.col("carrier")).alias("carrier"),
        pl.when(pl.col("i") == 2).then(pl.lit("XXX")).otherwise(pl.col("dest")).alias("dest"),
        pl.when(pl.col("i") == 3).then(pl.lit(13)).otherwise(pl.col("month")).alias("month"),
        pl.when(pl.col("i") == 4).then(pl.lit(99999.0)).otherwise(pl.col("dep_delay")).alias("dep_delay"),
    )
    duplicate = frame.filter(pl.col("i") == 10)
    frame = pl.concat([frame, duplicate]).drop("i")
    land_frame(platform, DAY2, frame)
    result = platform.run("flights_ingest", DAY2)
    assert result.success

    raw = platform.delta.read_partitions("flights", "raw", [DAY2])
    quarantine = platform.delta.read_partitions("flights", "quarantine", [DAY2])
    features = platform.delta.read_partitions("flights", "features", [DAY2])
    assert raw.height == frame.height == 944
    assert quarantine.height == 7  # 2 null carriers, 1 unknown dest, 1 bad month, 1 bad delay, 2 copies of a key
    assert raw.height == features.height + quarantine.height
    assert set(features.get_column("_source_row")).isdisjoint(quarantine.get_column("_source_row"))

    reasons = dict(quarantine.select("_source_row", "_reason").iter_rows())
    assert reasons[0] == "carrier: null in a required column"
    assert reasons[2] == "dest: unknown category 'XXX'"
    assert reasons[3] == "month: 13 is above the maximum 12.0"
    assert reasons[4].startswith("dep_delay: 99999.0 is above the maximum")
    assert reasons[10] == reasons[943] == "duplicate key (year, month, day, carrier, flight, origin)"
    assert json.loads(dict(quarantine.select("_source_row", "_original").iter_rows())[2])["dest"] == "XXX"

    check = result.get_asset_check_evaluations()[0]
    assert check.passed
    assert check.metadata["quarantined_rows"].value == 7
    assert check.metadata["clean_rows"].value == 937


def _with_bad_rows(day: date) -> pl.DataFrame:
    frame = day_frame(day).with_row_index("i")
    bad_dest = pl.when(pl.col("i") < 5).then(pl.lit("XXX")).otherwise(pl.col("dest")).alias("dest")
    return frame.with_columns(bad_dest).drop("i")


def test_a_step_stopped_between_the_raw_and_quarantine_commits_lets_no_invalid_row_read_as_clean(platform: Platform, monkeypatch):
    from resources.delta_lake import DeltaLakeResource
    from resources.pipeline_tables import read_clean

    land_days(platform.declarations["flights"], platform.landing, date(2013, 1, 1), 1)
    platform.run("flights_reference")
    land_frame(platform, DAY2, _with_bad_rows(date(2013, 1, 2)))
    write = DeltaLakeResource.write_partitions

    def stopped_before_quarantine(self, pipeline, table, *args, **kwargs):
        if table == "quarantine":
            raise OSError("process killed")  # the raw commit landed, the quarantine commit never did
        return write(self, pipeline, table, *args, **kwargs)

    monkeypatch.setattr(DeltaLakeResource, "write_partitions", stopped_before_quarantine)
    assert not platform.run("flights_ingest", DAY2, raise_on_error=False).success
    assert counts(platform, "raw") == {DAY2: 943} and counts(platform, "quarantine") == {}
    clean = read_clean(platform.delta, "flights", [DAY2])
    assert clean.height == 938 and "XXX" not in clean.get_column("dest").to_list() and "_valid" not in clean.columns
    monkeypatch.setattr(DeltaLakeResource, "write_partitions", write)
    assert platform.run("flights_ingest", DAY2).success  # the re-run completes the partition, once
    assert counts(platform, "raw") == {DAY2: 943} and counts(platform, "quarantine") == {DAY2: 5}
    assert counts(platform, "features") == {DAY2: 938}


def test_partitions_written_before_raw_carried_the_flag_read_as_raw_minus_quarantine(platform: Platform):
    from resources.pipeline_tables import read_clean

    decl = platform.declarations["flights"]
    land_days(decl, platform.landing, date(2013, 1, 1), 1)
    land_frame(platform, DAY2, _with_bad_rows(date(2013, 1, 2)))
    platform.run("flights_reference")
    platform.ingest("flights", [DAY1])
    old = platform.delta.read_partitions("flights", "raw", [DAY1]).drop("_valid", "_partition")
    shutil.rmtree(platform.delta.table_uri("flights", "raw"))
    platform.delta.write_partition("flights", "raw", old, DAY1, "old-run")  # as an earlier release wrote it: no flag
    platform.ingest("flights", [DAY2])  # adds the flag to the table; DAY1 reads it as null
    assert platform.delta.read_partitions("flights", "raw", [DAY1]).get_column("_valid").null_count() == 842
    clean = read_clean(platform.delta, "flights", [DAY1, DAY2])
    assert clean.group_by("_partition").len().sort("_partition").rows() == [(DAY1, 842), (DAY2, 938)]
    bad = platform.delta.read_partitions("flights", "raw", [DAY1]).head(3).get_column("_source_row").to_list()
    quarantined = (
        _quarantine_of(platform, DAY2)
        .head(3)
        .with_columns(pl.Series("_source_row", bad, dtype=pl.UInt32), pl.lit(DAY1).alias("_partition"))
    )
    platform.delta.write_partition("flights", "quarantine", quarantined.drop("_partition"), DAY1, "old-run")
    clean = read_clean(platform.delta, "flights", [DAY1, DAY2])
    assert clean.group_by("_partition").len().sort("_partition").rows() == [(DAY1, 839), (DAY2, 938)]
    assert not set(clean.filter(pl.col("_partition") == DAY1).get_column("_source_row")) & set(bad)


def _quarantine_of(platform: Platform, day: str) -> pl.DataFrame:
    return platform.delta.read_partitions("flights", "quarantine", [day]).drop("_partition")


def test_failure_rate_over_limit_fails_the_partition_but_keeps_the_data(platform: Platform):
    land_days(platform.declarations["flights"], platform.landing, date(2013, 1, 1), 1)
    platform.run("flights_reference")
    frame = day_frame(date(2013, 1, 1)).with_row_index("i")
    frame = frame.with_columns(pl.when(pl.col("i") % 10 == 0).then(pl.lit("ZZ")).otherwise(pl.col("carrier")).alias("carrier")).drop("i")
    land_frame(platform, DAY1, frame)
    result = platform.run("flights_ingest", DAY1, raise_on_error=False)
    assert not result.success
    check = result.get_asset_check_evaluations()[0]
    assert not check.passed
    assert check.metadata["failure_rate"].value > 0.05
    assert "limit 5.0%" in check.description
    assert counts(platform, "raw") == {DAY1: 842}
    assert counts(platform, "quarantine") == {DAY1: 85}
    assert counts(platform, "features") == {}, "features of a failed partition must not be computed"


def corrupt(frame: pl.DataFrame) -> bytes:
    return b"PAR1 this is not parquet at all"


@pytest.mark.parametrize(
    ("make_bytes", "problem"),
    [
        (lambda f: b"", "file is empty (0 bytes)"),
        (corrupt, "not a readable parquet file"),
        (lambda f: encode(f.head(0), "parquet"), "file has no rows"),
        (lambda f: encode(f.drop("carrier", "dest"), "parquet"), "missing declared columns: carrier, dest"),
        (lambda f: encode(f.with_columns(pl.lit(1).alias("gate")), "parquet"), "unexpected columns not in the declared schema: gate"),
    ],
    ids=["empty", "corrupt", "no-rows", "missing-columns", "extra-columns"],
)
def test_bad_file_fails_with_file_and_problem(three_days: Platform, make_bytes, problem):
    platform = three_days
    before = platform.delta.read_partitions("flights", "raw", [DAY2]).sort("_source_row")
    name = f"flights_{DAY2}.parquet"
    platform.landing.write_bytes("flights", name, make_bytes(day_frame(date(2013, 1, 2))))
    result = platform.run("flights_ingest", DAY2, raise_on_error=False)
    assert not result.success
    text = failure_text(result)
    assert name in text and problem in text
    assert platform.delta.read_partitions("flights", "raw", [DAY2]).sort("_source_row").equals(before), "nothing replaced"
    assert counts(platform, "raw") == {DAY1: 842, DAY2: 943, DAY3: 914}
    assert platform.landing.stat("flights", name) is not None, "the landed file is kept"
    assert platform.run("flights_ingest", DAY3).success, "other partitions keep flowing"


def test_extra_columns_can_be_declared_droppable(platform: Platform, flights_decl):
    data = flights_decl.model_dump(by_alias=True)
    data["schema"]["extra_columns"] = "drop"
    from mlops_assets.core.declaration import parse_declaration

    decl = parse_declaration(data)
    plat = Platform(platform.root, [decl], platform.instance)
    land_days(decl, plat.landing, date(2013, 1, 1), 1)
    plat.run("flights_reference")
    land_frame(plat, DAY1, day_frame(date(2013, 1, 1)).with_columns(pl.lit(1).alias("gate")))
    result = plat.run("flights_ingest", DAY1)
    raw_event = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "raw"][0]
    assert raw_event.materialization.metadata["dropped_columns"].value == "gate"
    assert "gate" not in plat.delta.scan("flights", "raw").collect_schema().names()


def test_missing_landed_file_fails_clearly(three_days: Platform):
    result = three_days.run("flights_ingest", "2013-01-09", raise_on_error=False)
    assert not result.success
    assert "no landed file for partition 2013-01-09" in failure_text(result)


def test_csv_with_wrong_types_quarantines_cells_it_cannot_read(tmp_path):
    decl = load_declaration(TESTS / "pipelines" / "telemetry.yaml")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        plat = Platform(tmp_path, [decl], instance)
        csv = (
            "machine_id,reading_time,temperature,vibration,failure\n"
            "m1,2024-03-01T00:00:00Z,21.5,0.1,0\n"
            "m2,2024-03-01T00:00:00Z,hot,0.2,0\n"  # wrong type
            "m3,not-a-time,22.0,,1\n"  # unreadable timestamp; vibration may be null
            "m4,2024-03-01T01:00:00Z,23.0,0.3,\n"  # null target: a required column
            "m1,2024-03-01T01:00:00Z,24.0,0.4,1\n"
        )
        csv += "".join(f"m{i % 4 + 1},2024-03-01T{i:02d}:30:00Z,20.0,0.1,0\n" for i in range(2, 22))
        plat.landing.write_bytes("telemetry", "readings-2024-03-01.csv", csv.encode())
        result = plat.run("telemetry_ingest", "2024-03-01")
        assert result.success
        raw = plat.delta.read_partitions("telemetry", "raw", ["2024-03-01"])
        quarantine = plat.delta.read_partitions("telemetry", "quarantine", ["2024-03-01"]).sort("_source_row")
        assert raw.height == 25 and quarantine.height == 3
        reasons = quarantine.get_column("_reason").to_list()
        assert reasons[0].startswith("temperature: cannot read 'hot' as float64")
        assert reasons[1].startswith("reading_time: cannot read 'not-a-time' as datetime")
        assert reasons[2] == "failure: null in a required column"
        assert json.loads(quarantine.get_column("_original")[0])["temperature"] == "hot"
        assert plat.delta.read_partitions("telemetry", "features", ["2024-03-01"]).height == 22


def test_values_that_do_not_convert_with_a_meaning_are_refused_not_read_away():
    """Each was accepted as a valid row: epoch seconds read as microseconds since 1970, a fraction cut off a Decimal,
    2 read as true, a finite float overflowing to inf in a narrower column. Now the column is unreadable (a time
    from a number, a number from a time) or the value a cast failure, quarantined with its reason."""
    from decimal import Decimal

    from mlops_assets.core.declaration import SchemaSpec
    from mlops_assets.core.records import LandedFileError, conform

    def reasons(column: dict, values: pl.Series) -> list[str]:
        return conform(pl.DataFrame({"x": values}), SchemaSpec(columns={"x": column}), "f").cast_failures.get_column("reason").to_list()

    for declared, landed in (
        ("datetime", pl.Series([1357016400])),
        ("date", pl.Series([20130101])),
        ("int32", pl.Series([date(2013, 1, 1)])),
    ):
        with pytest.raises(LandedFileError, match=f"column x has type .*, which cannot be read as {declared}"):
            conform(pl.DataFrame({"x": landed}), SchemaSpec(columns={"x": {"type": declared}}), "f")
    assert reasons({"type": "int16"}, pl.Series([Decimal("3.75"), Decimal("4.00")])) == ["x: cannot read '3.75' as int16"]
    exact = pl.Series([Decimal("123456789012345678.5")], dtype=pl.Decimal(20, 1))  # a float's 53 bits would lose the .5
    assert reasons({"type": "int64"}, exact) == ["x: cannot read '123456789012345678.5' as int64"]
    assert reasons({"type": "bool"}, pl.Series([0, 1, 2])) == ["x: cannot read '2' as bool"]
    assert reasons({"type": "bool", "nullable": True}, pl.Series([0.0, 1.0, None, 0.5])) == ["x: cannot read '0.5' as bool"]
    assert reasons({"type": "float32"}, pl.Series([1.0, 1e40])) == ["x: cannot read '1e+40' as float32"]


def test_times_written_in_several_valid_forms_are_all_read():
    """polars reads a column in the form of its first value: a valid time in another form was quarantined as
    unreadable, and a served request of 20 records was refused where one of 2 was answered."""
    from mlops_assets.core.declaration import SchemaSpec
    from mlops_assets.core.records import conform

    values = ["2013-02-05", "2013-02-05T11:00:00Z", "2013-02-05 11:00:00", "garbage", "2013-02-05T16:00:00+05:00"]
    conformed = conform(pl.DataFrame({"t": values}), SchemaSpec(columns={"t": {"type": "datetime"}}), "f")
    read = [None if v is None else v.isoformat() for v in conformed.frame.get_column("t").to_list()]
    assert read == [
        "2013-02-05T00:00:00+00:00",
        "2013-02-05T11:00:00+00:00",
        "2013-02-05T11:00:00+00:00",
        None,
        "2013-02-05T11:00:00+00:00",
    ]
    assert conformed.cast_failures.get_column("reason").to_list() == ["t: cannot read 'garbage' as datetime"]
