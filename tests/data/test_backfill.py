"""A range of partitions in one run: one read per file, one commit per table, each day its own rows,
features equal to day-by-day ingestion; a bad day held back alone; rows of another day quarantined."""

from __future__ import annotations

from datetime import date

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from mlops_assets.core.declaration import PromotionSpec, RolloutSpec, derive_declaration
from mlops_assets.core.partitions import backfill_policy, runs_of
from mlops_assets.defs.flights.upstream import day_frame, encode, land_days
from tests.support.platform import Platform, days

RANGE = days("2013-01-01", 10)


def commits(platform: Platform, table: str) -> int:
    return len(DeltaTable(platform.delta.table_uri("flights", table)).history())


@pytest.fixture
def landed(platform: Platform) -> Platform:
    land_days(platform.declarations["flights"], platform.landing, date(2013, 1, 1), len(RANGE))
    platform.run("flights_reference")
    return platform


def test_a_range_is_one_run_one_commit_per_table_and_equals_day_by_day_ingestion(landed: Platform):
    result = landed.ingest_range("flights", RANGE[0], RANGE[-1])
    assert result.success
    assert {t: commits(landed, t) for t in ("raw", "quarantine", "features")} == {"raw": 1, "quarantine": 1, "features": 1}
    assert landed.instance.get_materialized_partitions(dg.AssetKey(["flights", "features"])) == set(RANGE)
    ours = landed.delta.read_partitions("flights", "features", RANGE).sort("_partition", "_source_row")
    # each partition's events carry its own file, signature and rows (not the range's totals, not every file)
    landed_files = {d: landed.landing.stat("flights", f"flights_{d}.parquet").signature for d in RANGE}
    raw_rows = dict(ours.group_by("_partition").len().iter_rows())
    for table in ("raw", "quarantine", "features"):
        events = {
            e.partition: e.materialization.metadata
            for e in result.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey(["flights", table])
        }
        assert set(events) == set(RANGE)
        for day, meta in events.items():
            assert meta["partition"].value == day and meta["range"].value == f"{RANGE[0]} .. {RANGE[-1]}"
            if table == "raw":
                assert meta["source_signature"].value == landed_files[day] and meta["source_file"].value.endswith(f"flights_{day}.parquet")
                assert meta["rows"].value == meta["clean_rows"].value + meta["quarantined_rows"].value
                assert meta["range_rows"].value == sum(e["rows"].value for e in events.values())
            if table == "features":
                assert meta["rows"].value == meta["dagster/row_count"].value == raw_rows[day]
    # a re-run of part of the range replaces only those days
    before = landed.delta.read_partitions("flights", "raw", RANGE[:3])
    assert landed.ingest_range("flights", RANGE[3], RANGE[5]).success
    assert (
        landed.delta.read_partitions("flights", "raw", RANGE[:3])
        .sort("_partition", "_source_row")
        .equals(before.sort("_partition", "_source_row"))
    )
    assert dict(landed.delta.scan("flights", "raw").group_by("_partition").len().collect().iter_rows()) == {
        d: day_frame(date.fromisoformat(d)).height for d in RANGE
    }
    # the same days again, one run each (oldest first, as the sensor runs lone files): every value equal, history included
    written = landed.delta.version("flights", "features")
    assert all(r.success for r in landed.ingest("flights", RANGE))
    assert landed.delta.version("flights", "features") == written + len(RANGE), "each day's features written again"
    by_day = landed.delta.read_partitions("flights", "features", RANGE).sort("_partition", "_source_row")
    assert ours.equals(by_day.select(ours.columns))


def test_the_local_home_plans_a_range_run_as_one_event_per_asset(landed: Platform, monkeypatch):
    """`mlops demo`'s environment opts into Dagster's partition-subset planned events: a year landed at once
    is planned in 3 events, not 1,095 SQLite writes; every partition is still materialized for itself."""
    from mlops_assets.cli.data_commands import DAGSTER_ENV

    def planned(result: dg.ExecuteInProcessResult) -> list:
        records = landed.instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED).records
        return [r.event_log_entry.dagster_event.event_specific_data for r in records]

    monkeypatch.delenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", raising=False)
    assert len(planned(landed.ingest_range("flights", RANGE[0], RANGE[2]))) == 3 * 3  # Dagster's default: one per partition
    for name, value in DAGSTER_ENV.items():
        monkeypatch.setenv(name, value)
    result = landed.ingest_range("flights", RANGE[0], RANGE[-1])
    assert result.success
    events = planned(result)
    assert sorted(e.asset_key.path[-1] for e in events) == ["features", "quarantine", "raw"]
    assert all(e.partition is None and sorted(e.partitions_subset.get_partition_keys()) == RANGE for e in events)
    for table in ("raw", "quarantine", "features"):
        assert landed.instance.get_materialized_partitions(dg.AssetKey(["flights", table])) == set(RANGE)


def test_a_bad_day_in_a_range_is_held_back_alone(landed: Platform):
    bad = RANGE[4]
    frame = day_frame(date.fromisoformat(bad)).with_row_index("i")
    frame = frame.with_columns(pl.when(pl.col("i") % 5 == 0).then(pl.lit("ZZ")).otherwise(pl.col("carrier")).alias("carrier")).drop("i")
    landed.landing.write_bytes("flights", f"flights_{bad}.parquet", encode(frame, "parquet"))
    result = landed.ingest_range("flights", RANGE[0], RANGE[-1], raise_on_error=False)
    assert not result.success
    check = result.get_asset_check_evaluations()[0]
    assert not check.passed and bad in check.description
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.user_failure_data
    assert f"{bad}: 20.0" in failure.description and "held back" in failure.description
    assert "(limit 5.0%), such as: carrier: unknown category 'ZZ'" in failure.description  # what was wrong, not only how much
    assert landed.delta.partitions("flights", "raw") == RANGE  # the data is kept
    assert landed.delta.partitions("flights", "features") == [d for d in RANGE if d != bad]
    # the days computed are materialized in Dagster, each for itself; the held-back day is not
    assert landed.instance.get_materialized_partitions(dg.AssetKey(["flights", "features"])) == set(RANGE) - {bad}
    # the held-back day's clean rows still count in the later days' history, as in a run of one day alone
    after = RANGE[5]
    ranged = landed.delta.read_partitions("flights", "features", [after]).sort("_source_row")
    landed.ingest("flights", [after])
    assert landed.delta.read_partitions("flights", "features", [after]).sort("_source_row").equals(ranged)


def test_rows_of_another_day_in_a_file_are_quarantined_not_ingested_twice(landed: Platform):
    day, other = RANGE[1], RANGE[2]
    stray = day_frame(date.fromisoformat(other)).head(3)
    landed.landing.write_bytes(
        "flights", f"flights_{day}.parquet", encode(pl.concat([day_frame(date.fromisoformat(day)), stray]), "parquet")
    )
    assert landed.ingest_range("flights", RANGE[0], RANGE[2]).success
    quarantine = landed.delta.read_partitions("flights", "quarantine", [day])
    assert quarantine.height == 3
    assert set(quarantine.get_column("_reason")) == {f"year/month/day: {other} is outside partition {day}"}
    features = landed.delta.scan("flights", "features").collect()
    keys = ["year", "month", "day", "carrier", "flight", "origin"]
    assert features.select(keys).is_duplicated().sum() == 0  # the stray rows are in their own day only


def test_an_unreadable_file_in_a_range_fails_the_run_naming_it_and_commits_nothing(landed: Platform):
    """An unreadable file in the middle of a range fails the run naming its file and partition, and no
    table gains a commit: the days before it, already validated, are not half-written."""
    bad = RANGE[6]
    landed.landing.write_bytes("flights", f"flights_{bad}.parquet", b"PAR1 this is not parquet")
    before = {t: landed.delta.version("flights", t) for t in ("raw", "quarantine", "features")}
    result = landed.ingest_range("flights", RANGE[0], RANGE[-1], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.user_failure_data
    assert f"flights_{bad}.parquet" in failure.description and failure.metadata["partition"].value == bad
    assert {t: landed.delta.version("flights", t) for t in before} == before


def test_a_range_builds_every_chunk_from_the_raw_version_its_lineage_records(landed: Platform, monkeypatch):
    """Features are built a chunk of days at a time; a raw commit by another run between two chunks is not
    mixed in: every chunk reads the raw version the features' metadata names."""
    from mlops_assets.data import features as features_step

    monkeypatch.setattr(features_step, "FEATURE_CHUNK_ROWS", 1)  # every day its own chunk
    late = RANGE[-1]
    real_read_clean = features_step.read_clean
    sneaked: list[int] = []

    def read_clean_after_another_commit(delta, pipeline, days, raw_scan=None):
        if not sneaked:  # before the first chunk: another run rewrites the range's last day with 10 rows
            rows = delta.read_partitions(pipeline, "raw", [late]).head(10).drop("_partition")
            sneaked.append(delta.write_partitions(pipeline, "raw", {late: rows}, "another-run"))
        return real_read_clean(delta, pipeline, days, raw_scan)

    monkeypatch.setattr(features_step, "read_clean", read_clean_after_another_commit)
    result = landed.ingest_range("flights", RANGE[0], RANGE[-1])
    assert result.success and sneaked
    meta = next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["flights", "features"]) and e.partition == late
    )
    assert meta["raw_delta_version"].value == sneaked[0] - 1  # the version before the other run's commit
    assert meta["rows"].value == day_frame(date.fromisoformat(late)).height  # its rows, not the 10 of the later commit


def test_a_range_validated_a_few_files_at_a_time_gives_the_same_tables(landed: Platform, monkeypatch):
    """A range is validated in chunks of files (bounding what it holds at once): a chunk of one file, or a
    few, quarantines and flags the same rows as the whole range at once, rows of another day included."""
    from mlops_assets.data import raw

    day, other = RANGE[1], RANGE[2]
    stray = day_frame(date.fromisoformat(other)).head(3)
    broken = day_frame(date.fromisoformat(day)).with_row_index("i")
    broken = broken.with_columns(pl.when(pl.col("i") % 50 == 0).then(pl.lit("ZZ")).otherwise(pl.col("carrier")).alias("carrier")).drop("i")
    landed.landing.write_bytes("flights", f"flights_{day}.parquet", encode(pl.concat([broken, stray]), "parquet"))

    def tables() -> dict[str, pl.DataFrame]:
        assert landed.ingest_range("flights", RANGE[0], RANGE[-1]).success
        return {
            t: landed.delta.read_partitions("flights", t, RANGE).sort("_partition", "_source_row")
            for t in ("raw", "quarantine", "features")
        }

    whole = tables()
    assert whole["quarantine"].height > 3
    for rows in (1, 2_000):  # every file its own chunk; two or three files a chunk
        monkeypatch.setattr(raw, "VALIDATION_CHUNK_ROWS", rows)
        assert {t: f.equals(whole[t]) for t, f in tables().items()} == {"raw": True, "quarantine": True, "features": True}


def test_bursts_split_into_declared_run_sizes(flights_decl):
    keys = [*days("2013-01-01", 5), *days("2013-01-10", 2)]
    assert runs_of(flights_decl, keys) == [days("2013-01-01", 5), days("2013-01-10", 2)]
    chunked = derive_declaration(flights_decl, "t", partitioning={"partitions_per_run": 2})
    assert runs_of(chunked, keys) == [days("2013-01-01", 2), days("2013-01-03", 2), ["2013-01-05"], days("2013-01-10", 2)]
    assert backfill_policy(flights_decl) == dg.BackfillPolicy.single_run()
    assert backfill_policy(chunked) == dg.BackfillPolicy.multi_run(2)


def test_a_time_column_that_is_not_a_date_is_refused_naming_the_field(flights_decl):
    from mlops_assets.core.declaration import DeclarationError

    with pytest.raises(DeclarationError, match="partitioning.time_column 'carrier' is a str column"):
        derive_declaration(flights_decl, "t", partitioning={"time_column": "carrier"})
    with pytest.raises(DeclarationError, match=r"three columns: \[year, month, day\]"):
        derive_declaration(flights_decl, "t", partitioning={"time_column": ["year", "month"]})


def test_rollouts_and_training_go_ahead_of_ingestion_and_monitoring_in_the_run_queue(platform: Platform):
    """A rollout's next step or rollback must not queue behind anything (a bad canary keeps serving meanwhile):
    its runs rank above every other job's, then deployment, training, ingestion, monitoring."""
    decl = platform.declarations["flights"]
    with_rollout = decl.model_copy(update={"promotion": PromotionSpec(policy="auto", rollout=RolloutSpec(steps=[0.5, 1.0]))})
    defs = Platform(platform.root, [with_rollout], platform.instance).defs
    priority = {job.name: int((job.tags or {}).get("dagster/priority", "0")) for job in defs.resolve_all_job_defs()}
    named = {name: priority[f"flights_{name}"] for name in ("rollout", "deploy", "train", "ingest", "monitor")}
    assert named["rollout"] > named["deploy"] > named["train"] > named["ingest"] > named["monitor"]
    assert named["rollout"] > max(p for job, p in priority.items() if job != "flights_rollout")


def _with_bad_carriers(day: str, share_every: int = 5) -> pl.DataFrame:
    frame = day_frame(date.fromisoformat(day)).with_row_index("i")
    bad = pl.when(pl.col("i") % share_every == 0).then(pl.lit("ZZ")).otherwise(pl.col("carrier"))
    return frame.with_columns(bad.alias("carrier")).drop("i").reverse()  # its rows in another order, too


def test_a_day_held_back_after_its_file_is_landed_again_loses_its_earlier_features(landed: Platform):
    """Features of the earlier file no longer match the day's raw rows: keyed by (day, source row), they named
    other flights, and an erasure through raw's keys deleted the wrong feature rows."""
    day = RANGE[0]
    assert landed.ingest("flights", [day])[0].success
    assert landed.delta.read_partitions("flights", "features", [day]).height == day_frame(date.fromisoformat(day)).height
    landed.landing.write_bytes("flights", f"flights_{day}.parquet", encode(_with_bad_carriers(day), "parquet"))
    (result,) = landed.ingest("flights", [day], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.user_failure_data
    assert "no features computed" in failure.description and f"{day}: 20.0" in failure.description
    assert landed.delta.read_partitions("flights", "features", [day]).height == 0


def test_a_day_that_does_not_exist_is_quarantined_not_a_failed_range(landed: Platform):
    """2013-02-30 lies between 2013-01-02 and its next day as a number and passes the schema's ranges: it was read as
    no date, let through, and the features step then failed the whole range on it."""
    day = RANGE[1]
    frame = day_frame(date.fromisoformat(day)).with_row_index("i")
    frame = frame.with_columns(
        pl.when(pl.col("i") == 0).then(2).otherwise(pl.col("month")).cast(frame.schema["month"]).alias("month"),
        pl.when(pl.col("i") == 0).then(30).otherwise(pl.col("day")).cast(frame.schema["day"]).alias("day"),
    ).drop("i")
    landed.landing.write_bytes("flights", f"flights_{day}.parquet", encode(frame, "parquet"))
    assert landed.ingest_range("flights", RANGE[0], RANGE[2]).success
    quarantine = landed.delta.read_partitions("flights", "quarantine", [day])
    assert quarantine.get_column("_reason").to_list() == ["year/month/day: 2013-2-30 is not a calendar date"]
    assert landed.delta.partitions("flights", "features") == RANGE[:3]


def test_a_column_the_declaration_adds_reaches_quarantine_as_it_reaches_raw(landed: Platform, flights_decl):
    """raw merges a new declared column into its schema; quarantine's commit, after raw's, refused it, on every run."""
    assert landed.ingest("flights", [RANGE[0]])[0].success
    columns = {**flights_decl.model_dump(mode="json", by_alias=True)["schema"]["columns"], "gate": {"type": "str", "nullable": True}}
    wider = derive_declaration(flights_decl, "with a gate", schema={"columns": columns})
    platform = Platform(landed.root, [wider], landed.instance)
    frame = _with_bad_carriers(RANGE[0], share_every=50).with_columns(pl.lit("B12").alias("gate"))
    landed.landing.write_bytes("flights", f"flights_{RANGE[0]}.parquet", encode(frame, "parquet"))
    assert platform.ingest("flights", [RANGE[0]])[0].success
    quarantine = platform.delta.read_partitions("flights", "quarantine", [RANGE[0]])
    assert quarantine.height > 0 and set(quarantine.get_column("gate")) == {"B12"}
