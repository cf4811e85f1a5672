"""Erasure of a data subject: gone from every table and from time travel, audited, models tagged and retrained."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.core.declaration import PACKAGED_PIPELINES, PipelineDeclaration, declaration_attributes
from mlops_assets.core.feature_contract import load_feature_module
from mlops_assets.core.names import (
    APPENDED_AT,
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    DRIFT_METRICS,
    DRIFT_REPORTS_ARTIFACT,
    ERASED_TAG,
    FEATURES,
    PARTITION_COLUMN,
    PREDICTION_LOG,
    PROFILES,
    QUARANTINE,
    RAW,
    SOURCE_ROW,
    SUBJECT_PREFIX,
    feature_drift_key,
    features_key,
    serving_drift_key,
)
from mlops_assets.core.partitions import partitions_before
from mlops_assets.governance.erasure import PredicateError, parse_predicate
from mlops_assets.monitoring import drift_metrics
from resources.audit_log import history
from resources.pipeline_tables import reference_as_of
from resources.registered_models import champion
from serving.prediction_log import log_rows
from tests.support.models import flights_variant, sensor_tick, train

GOVERNED = {"governance": {"subject_columns": ["tailnum"], "erasure_retention_hours": 0}}


def _log_predictions(plat, decl: PipelineDeclaration, records: pl.DataFrame, appended_at: datetime | None = None) -> None:
    """Prediction-log rows as a model server writes them: features, then the declared subject columns (and when their
    batch was appended, where given)."""
    module = load_feature_module(decl)
    reference, _ = reference_as_of(plat.delta, decl, module, "2013-01-30")
    features = module.build(records.select(list(decl.table_schema.columns)), reference)
    logged = features.hstack(records.select(pl.col(c).alias(SUBJECT_PREFIX + c) for c in decl.governance.subject_columns))
    result = {"predictions": [1.0] * records.height}
    rows = log_rows(
        features=logged,
        result=result,
        pipeline="flights",
        model_version=1,
        role="champion",
        served=True,
        request_id="r1",
        received_at=time.time(),
    )
    if appended_at is not None:
        rows = rows.with_columns(pl.lit(appended_at, dtype=pl.Datetime("us", "UTC")).alias(APPENDED_AT))
    plat.delta.append("flights", PREDICTION_LOG, rows, merge_schema=True)


def _matches(plat, table: str, predicate, keys: pl.DataFrame, version: int | None = None) -> int:
    lf = plat.delta.scan("flights", table, version)
    if table == PREDICTION_LOG:
        return lf.filter(predicate.expr(SUBJECT_PREFIX)).select(pl.len()).collect().item()
    if table == RAW:
        return lf.filter(predicate.expr()).select(pl.len()).collect().item()
    return lf.join(keys.lazy(), on=[PARTITION_COLUMN, SOURCE_ROW], how="semi").select(pl.len()).collect().item()


def test_erasure_leaves_no_row_in_any_table_or_version_audits_tags_and_retrains(model_home, capsys):
    decl = flights_variant(gates={"max_regression": 1.0}, **GOVERNED)
    model_home.declare(decl)
    plat = model_home.platform(decl)
    assert train(plat, end="2013-01-20").success  # v1: Jan 1 .. Jan 20
    assert plat.run("flights_train").success  # v2, the champion: the 21 days up to Feb 4
    raw = plat.delta.scan("flights", RAW).collect()
    # a plane that flew only after v1's window: v2 learned from its rows, v1 did not
    late = raw.group_by("tailnum").agg(pl.col(PARTITION_COLUMN).min().alias("first"), pl.len()).filter(pl.col("first") > "2013-01-20")
    subject = late.sort("len", descending=True).row(0)[0]
    where = f'tailnum = "{subject}"'
    predicate = parse_predicate(where, decl)
    _log_predictions(plat, decl, raw.filter(pl.col("tailnum") == subject).head(3).vstack(raw.filter(pl.col("tailnum") != subject).head(2)))
    keys = raw.filter(predicate.expr()).select(PARTITION_COLUMN, SOURCE_ROW)
    tables = (RAW, QUARANTINE, FEATURES, PREDICTION_LOG)
    before = {t: _matches(plat, t, predicate, keys) for t in tables}
    assert before[RAW] == keys.height > 3 and before[FEATURES] > 0 and before[PREDICTION_LOG] == 3
    versions_before = {t: plat.delta.version("flights", t) for t in tables}
    profiled = drift_metrics.reference_profile(plat.delta, champion("flights", model_home.registry))  # cached for v2
    profiled_rows = plat.delta.scan("flights", PROFILES).filter(pl.col("model_version") == 2).collect()["rows"][0]

    code, out, err = model_home.mlops(
        "erase", "flights", "--where", where, "--by", "dpo", "--reason", "request 7", "--dry-run", capsys=capsys
    )
    assert code == 0, err
    assert f"would delete rows where {where}: raw {before[RAW]}" in out and "versions trained on them: v2 (would be tagged)" in out
    assert {t: plat.delta.version("flights", t) for t in tables} == versions_before  # a dry run changes nothing

    config = {"ops": {"flights__erase": {"config": {"where": where, "by": "dpo", "reason": "request 7"}}}}
    result = plat.defs.resolve_job_def("flights_erase").execute_in_process(instance=plat.instance, run_config=config)
    assert result.success
    outputs = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert outputs[0].event_specific_data.metadata["vacuumed_files"].value > 0  # the vacuum removed the old files
    recomputed = outputs[0].event_specific_data.metadata["recomputed_partitions"].value
    rewritten = [e.partition for e in result.get_asset_materialization_events() if e.asset_key == features_key(decl)]
    assert recomputed > 0 and len(rewritten) == recomputed  # the features asset's history names the erasure's run
    assert all(_matches(plat, t, predicate, keys) == 0 for t in tables)
    assert plat.delta.scan("flights", PREDICTION_LOG).select(pl.len()).collect().item() == 2  # other people's rows stay
    unreadable = 0
    for table in tables:  # time travel: every older version either lost its files to the vacuum or holds no match
        for version in range(versions_before[table] + 1):
            try:
                found = _matches(plat, table, predicate, keys, version)
            except FileNotFoundError:  # a vacuumed version cannot be read at all: its files are gone
                unreadable += 1
                continue
            assert found == 0, f"{table}@v{version} still holds erased rows"
    assert unreadable > 0  # the versions that held the rows are the ones the vacuum took
    # drift against v2 still works: its cached profile (counted with the rows) is gone, and it is made again from
    # the same days without them, since the recorded version's files are gone too
    assert plat.delta.scan("flights", PROFILES).filter(pl.col("model_version") == 2).collect().height == 0
    erased = champion("flights", model_home.registry)
    assert erased.erased is not None
    again = drift_metrics.reference_profile(plat.delta, erased)
    cached = plat.delta.scan("flights", PROFILES).filter(pl.col("model_version") == 2).collect()
    assert cached.height == 1 and cached["rows"][0] == profiled_rows - before[FEATURES]
    assert again.columns.keys() == profiled.columns.keys()

    events = history(plat.delta, "flights").filter(pl.col("action") == "erase")
    assert events.height == 1
    row = events.row(0, named=True)
    details = json.loads(row["metrics"])
    assert row["actor"] == "dpo" and row["reason"] == "request 7" and details["predicate"] == where
    assert details["rows_deleted"][RAW] == before[RAW] and details["rows_deleted"][PREDICTION_LOG] == 3
    assert details["tagged_versions"] == [2]
    client = model_home.registry.client()
    tag = client.get_model_version("flights", "2").tags[ERASED_TAG]
    assert tag == details["erasure_id"] and ERASED_TAG not in client.get_model_version("flights", "1").tags

    tick = sensor_tick(plat, "flights_new_data_sensor")
    assert [r.tags["mlops/trigger"] for r in tick.run_requests] == ["erasure"]
    assert tag in tick.run_requests[0].tags["mlops/reason"]
    again = sensor_tick(plat, "flights_new_data_sensor", cursor=tick.cursor)
    assert not any(r.tags.get("mlops/trigger") == "erasure" for r in again.run_requests or [])

    code, _, err = model_home.mlops("reproduce", "flights", "2", capsys=capsys)
    assert code == 2 and "cannot be reproduced: rows of its training data were erased" in err
    code, _, err = model_home.mlops("gate", "flights", "2", "--by", "dpo", capsys=capsys)  # was polars' missing file
    assert code == 2 and f"model flights v2 cannot be gated again: rows of its training data were erased (erasure {tag}" in err


def test_erasure_recomputes_the_features_whose_history_held_the_erased_rows(model_home, capsys):
    """The features of the days after an erased row (within features.history_days) were computed from history
    statistics that counted it: the erasure recomputes them, so the table equals an in-order featurization of
    the data without the subject."""
    decl = flights_variant(**GOVERNED)
    model_home.declare(decl)
    plat = model_home.platform(decl)
    featurized = plat.delta.partitions("flights", FEATURES)
    raw = plat.delta.scan("flights", RAW).collect()
    # a plane that flew (and landed: its delays enter the history statistics) only in the first days
    flown = raw.filter(pl.col("arr_delay").is_not_null()).group_by("tailnum").agg(pl.col(PARTITION_COLUMN).max().alias("last"), pl.len())
    subject = flown.filter(pl.col("last") <= "2013-01-05").sort("len", "tailnum", descending=[True, False]).row(0)[0]
    where = f'tailnum = "{subject}"'
    erased_days = set(raw.filter(pl.col("tailnum") == subject)[PARTITION_COLUMN])
    followers = [
        p for p in featurized if p not in erased_days and erased_days & set(partitions_before(decl, p, decl.features.history_days))
    ]
    assert followers and followers[-1] < featurized[-1]  # days after the window stay as they were

    code, out, err = model_home.mlops("erase", "flights", "--where", where, "--by", "dpo", "--reason", "r", "--dry-run", capsys=capsys)
    assert code == 0, err
    recomputed = sorted(erased_days | set(followers))
    line = f"would recompute the features of {len(recomputed)} days ({recomputed[0]} .. {recomputed[-1]})"
    assert line in out, out
    untouched = plat.delta.version("flights", FEATURES)
    code, out, err = model_home.mlops("erase", "flights", "--where", where, "--by", "dpo", "--reason", "r", capsys=capsys)
    assert code == 0, err
    assert f"recomputed the features of {len(recomputed)} days ({recomputed[0]} .. {recomputed[-1]})" in out, out
    details = json.loads(history(plat.delta, "flights").filter(pl.col("action") == "erase")["metrics"][-1])
    assert details["recomputed_partitions"] == len(recomputed)
    after_erasure = plat.delta.scan("flights", FEATURES).collect()
    assert plat.delta.version("flights", FEATURES) > untouched

    # a fresh in-order featurization of every day from the data as it is now, without the subject
    in_order = plat.defs.resolve_job_def("flights_ingest").execute_in_process(
        instance=plat.instance,
        asset_selection=[features_key(decl)],
        tags={ASSET_PARTITION_RANGE_START_TAG: featurized[0], ASSET_PARTITION_RANGE_END_TAG: featurized[-1]},
    )
    assert in_order.success
    fresh = plat.delta.scan("flights", FEATURES).collect()
    order = [PARTITION_COLUMN, SOURCE_ROW]
    assert_frame_equal(after_erasure.sort(order), fresh.sort(order).select(after_erasure.columns))


def test_erasure_removes_the_drift_reports_rendered_from_the_erased_rows(model_home, capsys):
    """An Evidently report holds rows of its sample (each column's minimum and maximum, its categories with their
    counts, the mean and spread of 150 bins of rows in order), and its one copy, on the version's MLflow run, stayed
    after the erasure. The feature reports of the erased days and the serving reports whose rows held an erased log
    row are deleted, their drift_metrics rows say by which erasure; the other reports stay."""
    drift = {"html_report": True, "report_sample_rows": 500, "serving_min_rows": 3, "serving_window_rows": 1000, "cooldown_minutes": 0}
    decl = flights_variant(drift={**drift, "serving_settle_seconds": 0}, **GOVERNED)
    model_home.declare(decl)
    plat = model_home.platform(decl)
    assert train(plat).success  # v1, the champion
    raw = plat.delta.scan("flights", RAW).collect()
    subject = raw.group_by("tailnum").len().filter(pl.col("len") >= 5).sort("len", "tailnum").row(0)[0]
    flown = sorted(set(raw.filter(pl.col("tailnum") == subject)[PARTITION_COLUMN]))
    affected = flown[0]
    unaffected = next(p for p in plat.delta.partitions("flights", FEATURES) if p not in flown)
    for day in (affected, unaffected):
        run = plat.defs.resolve_job_def("__ASSET_JOB").execute_in_process(
            instance=plat.instance, asset_selection=[feature_drift_key(decl)], partition_key=day
        )
        assert run.success
    # two serving checks: the first (reading up to a minute ago) reads other people's rows, the second the subject's
    now = datetime.now(UTC)
    _log_predictions(plat, decl, raw.filter(pl.col("tailnum") != subject).head(20), now - timedelta(seconds=120))
    _log_predictions(plat, decl, raw.filter(pl.col("tailnum") == subject).head(5), now - timedelta(seconds=10))
    settled = model_home.platform(flights_variant(drift={**drift, "serving_settle_seconds": 60}, **GOVERNED))
    for checking in (settled, plat):
        run = checking.defs.resolve_job_def("__ASSET_JOB").execute_in_process(
            instance=plat.instance, asset_selection=[serving_drift_key(decl)]
        )
        assert run.success
    reports = (
        plat.delta.scan("flights", DRIFT_METRICS).group_by("report_id").agg(pl.col("source", "window", "html_report").first()).collect()
    )
    assert reports.height == 4 and (reports["html_report"] != "").all()
    linked = {(r["source"], r["window"]): r["html_report"] for r in reports.iter_rows(named=True)}
    mlflow = plat.resources()["mlflow"]
    run_id = mlflow.client().get_model_version("flights", "1").run_id

    def logged() -> set[str]:
        return {f"runs:/{run_id}/{a.path}" for a in mlflow.client().list_artifacts(run_id, DRIFT_REPORTS_ARTIFACT)}

    assert logged() == set(linked.values())
    removed = {linked[("features", affected)], linked[("serving", max(w for source, w in linked if source == "serving"))]}
    kept = set(linked.values()) - removed

    where = f'tailnum = "{subject}"'
    code, out, err = model_home.mlops("erase", "flights", "--where", where, "--by", "dpo", "--reason", "r", "--dry-run", capsys=capsys)
    assert code == 0 and "would remove 2 Evidently drift reports" in out, out + err
    assert logged() == set(linked.values())
    # an interrupted erasure had deleted one report already: the one already gone is no failure
    local = Path(mlflow.client().get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (local / linked[("features", affected)].split("/", 2)[2]).unlink()
    code, out, err = model_home.mlops("erase", "flights", "--where", where, "--by", "dpo", "--reason", "r", capsys=capsys)
    assert code == 0 and "removed 2 Evidently drift reports" in out, out + err
    assert logged() == kept
    details = json.loads(history(plat.delta, "flights").filter(pl.col("action") == "erase")["metrics"][-1])
    assert details["drift_reports_removed"] == 2
    rows = plat.delta.scan("flights", DRIFT_METRICS).select("report_id", "html_report").unique().collect()
    assert sorted(rows["html_report"]) == sorted([*kept, *[f"erased by erasure {details['erasure_id']}"] * 2])


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ('plane = "N1"', "plane is not a declared column"),
        ("tailnum = 5", "tailnum is a str column; compare it with a quoted value"),
        ("carrier=UA", 'carrier is a str column; quote its value, as in carrier = "UA"'),
        ("distance = far", "expected a value after distance, found far"),
        ('distance = "far"', "distance is a int32 column"),
        ("tailnum", "expected an operator after tailnum"),
        ('tailnum = "N1" or origin = "EWR"', "expected `and` between conditions"),
        ("", "needs a condition"),
        ('tailnum in ("N1", "N2"', "is not closed"),
        # Delta cannot cast these to the column's type: the raw delete failed after features and batch scores lost their rows
        ('month < 300 and tailnum = "N1"', r"month is an int8 column; 300 is outside its range \(-128 \.\. 127\)"),
        ("year in (2013, -40000)", "year is an int16 column; -40000 is outside its range"),
        ("flight = 99999999999999999999", "flight is an int32 column; 99999999999999999999 is outside its range"),
    ],
)
def test_bad_predicates_are_refused_naming_the_problem(where, message):
    with pytest.raises(PredicateError, match=message):
        parse_predicate(where, flights_variant())


def test_a_bool_column_is_compared_with_true_or_false(tmp_path):
    """A bool column had no literal (`cancelled = true` was "expected a value"): the same rows match in polars and in
    Delta's delete."""
    from deltalake import DeltaTable, write_deltalake

    attributes = declaration_attributes(PACKAGED_PIPELINES / "flights" / "defs.yaml")[0]["schema"]
    schema = {**attributes, "columns": {**attributes["columns"], "cancelled": {"type": "bool", "nullable": True}}}
    decl = flights_variant(schema=schema)
    predicate = parse_predicate('cancelled = TRUE and carrier = "UA"', decl)
    assert predicate.sql() == """"cancelled" = true AND "carrier" = 'UA'"""
    frame = pl.DataFrame({"cancelled": [True, False, None, True], "carrier": ["UA", "UA", "UA", "AA"]})
    assert frame.filter(predicate.expr()).height == 1
    write_deltalake(str(tmp_path / "t"), frame.to_arrow())
    table = DeltaTable(str(tmp_path / "t"))
    assert table.delete(predicate.sql())["num_deleted_rows"] == 1
    assert pl.from_arrow(table.to_pyarrow_table()).sort("carrier").rows() == [(True, "AA"), (False, "UA"), (None, "UA")]
    for where in ("cancelled = 1", "cancelled = yes", "cancelled ="):
        with pytest.raises(PredicateError, match="cancelled is a bool column; compare it with true or false"):
            parse_predicate(where, decl)


def test_an_erasure_the_prediction_log_cannot_reach_is_refused_before_anything_changes(model_home, capsys):
    decl = flights_variant(governance={"subject_columns": []})  # the prediction log carries no subject column
    model_home.declare(decl)
    plat = model_home.platform(decl)
    raw = plat.delta.scan("flights", RAW).collect()
    _log_predictions(plat, flights_variant(**GOVERNED), raw.head(2))
    before = plat.delta.version("flights", RAW)
    code, _, err = model_home.mlops("erase", "flights", "--where", 'tailnum = "N1"', "--by", "dpo", "--reason", "r", capsys=capsys)
    assert code == 2 and "governance.subject_columns" in err and "none declared" in err
    assert plat.delta.version("flights", RAW) == before
    mixed = parse_predicate("dep_delay in (1, 2.5)", decl)  # a float column's list of ints and fractions: one type
    assert (
        mixed.clauses[0].values == (1.0, 2.5)
        and raw.filter(mixed.expr()).height == raw.filter(pl.col("dep_delay").is_in([1.0, 2.5])).height
    )
    assert parse_predicate('tailnum in ("N1", "N2") and origin = "EWR"', decl).sql() == "\"tailnum\" IN ('N1', 'N2') AND \"origin\" = 'EWR'"
    # quotes inside a value stay inside the literal; datetimes compare as datetimes
    assert parse_predicate("tailnum = \"N1' OR '1'='1\"", decl).sql() == "\"tailnum\" = 'N1'' OR ''1''=''1'"
    by_time = parse_predicate('time_hour >= "2013-01-02T05:00:00Z" and tailnum = "N1"', decl)
    rows = raw.filter(by_time.expr())
    assert rows.height == 0 or (rows["time_hour"].min() >= datetime(2013, 1, 2, 5, tzinfo=UTC))


def test_prediction_log_rows_logged_before_the_subject_column_was_declared_are_reported_unsearchable(model_home, capsys):
    """They carry no subject_ value, so no predicate reaches them: the erasure goes on through every other table and
    says, in its report and its audit row, how many log rows it could not search."""
    decl = flights_variant(**GOVERNED)
    model_home.declare(decl)
    plat = model_home.platform(decl)
    raw = plat.delta.scan("flights", RAW).collect()
    subject = raw.get_column("tailnum").drop_nulls()[0]
    _log_predictions(plat, flights_variant(governance={"subject_columns": []}), raw.head(3))  # no subject_tailnum column
    where = f'tailnum = "{subject}"'
    code, out, _ = model_home.mlops("erase", "flights", "--where", where, "--by", "dpo", "--reason", "r", capsys=capsys)
    assert code == 0 and "warning: 3 prediction-log rows carry no subject_ value" in out, out
    assert plat.delta.scan("flights", RAW).filter(pl.col("tailnum") == subject).collect().height == 0
    details = json.loads(history(plat.delta, "flights").filter(pl.col("action") == "erase").tail(1)["metrics"][0])
    assert details["unsearchable_log_rows"] == 3
    _log_predictions(plat, decl, raw.head(2))  # logged with the column now: those rows are searchable
    code, out, _ = model_home.mlops("erase", "flights", "--where", where, "--by", "dpo", "--reason", "r", capsys=capsys)
    assert code == 0 and "warning: 3 prediction-log rows" in out  # the old rows, null in the column now the log has it
