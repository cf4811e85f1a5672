"""The declaration is validated at load, and errors name the file and the bad field."""

from pathlib import Path

import pytest
import yaml

from mlops_assets.core.declaration import (
    PACKAGED_PIPELINES,
    DeclarationError,
    declaration_attributes,
    load_declaration,
    load_declarations,
    parse_declaration,
)
from mlops_assets.core.feature_contract import FeatureCodeError, load_feature_module

TELEMETRY = Path(__file__).resolve().parents[1] / "pipelines" / "telemetry.yaml"


def flights_dict() -> dict:
    return declaration_attributes(PACKAGED_PIPELINES / "flights" / "defs.yaml")[0]


def test_packaged_flights_declaration_loads():
    decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    assert decl.name == "flights"
    assert decl.target.task == "regression"
    assert decl.landing.partition_of("flights_2013-02-03.parquet") == "2013-02-03"
    assert decl.landing.partition_of(".flights_2013-02-03.parquet.tmp") is None
    assert decl.landing.partition_of("flights_2013-02-03.csv") is None
    assert len(decl.fingerprint()) == 16


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda d: d["schema"]["columns"]["year"].update(type="integer"), "schema.columns.year.type", "Input should be"),
        (lambda d: d["target"].update(column="delay"), "target.column", "not a declared schema column"),
        (lambda d: d["target"].update(task="ranking"), "target.task", "Input should be"),
        (lambda d: d["landing"].update(file_pattern="flights.parquet"), "landing", "{partition}"),
        (lambda d: d["validation"].update(max_failure_rate=1.5), "validation.max_failure_rate", "less than or equal"),
        (lambda d: d["governance"].update(erasure_retention_hours=0.5), "governance.erasure_retention_hours", "fractional part"),
        (lambda d: d["schema"].update(unique=["year", "nope"]), "schema", "nope"),
        (lambda d: d.update(trainning={}), "trainning", "Extra inputs are not permitted"),
        (lambda d: d.update(name="Flights!"), "name", "should match pattern"),
        (lambda d: d["schema"]["columns"]["month"].update(min=12, max=1), "schema.columns.month", "greater than max"),
        (lambda d: d["training"].update(validation_days=90), "training", "validation_days"),
        (lambda d: d["landing"].update(format="csv"), "landing", "file_pattern 'flights_{partition}.parquet' names .parquet files"),
        (lambda d: d["landing"]["reference_tables"].update(weather="../weather.parquet"), "landing", "not a path"),
        (lambda d: d["landing"]["reference_tables"].update(weather="weather.PARQUET"), "landing", "must end in .csv or .parquet"),
        # what Serve would not follow: 0 replicas became 1, a GPU on a CPU group was waited for, a GPU group without one dropped
        (lambda d: d["serving"]["cpu"].update(replicas=0), "serving", "cpu.replicas: at least 1"),
        (lambda d: d["serving"]["cpu"].update(num_gpus=1), "serving", "cpu.num_gpus: the cpu group runs on CPUs"),
        (lambda d: d["serving"]["gpu"].update(num_gpus=0), "serving", "gpu.num_gpus: a GPU group needs num_gpus above 0"),
        # accepted once and never read: the landing sensor watched <landing root>/<pipeline> all the same
        (lambda d: d["landing"].update(uri="s3://bucket/flights"), "landing", "landing.uri is not a declaration setting"),
        (lambda d: d.update(name="mlops"), "name", "the serving gateway's Ray Serve application"),
        # a YAML quoting slip loaded, then failed every ingest; a number against a datetime passed every row
        (lambda d: d["schema"]["columns"]["month"].update(allowed=["1", "2"]), "schema.columns.month", "must be whole numbers"),
        (lambda d: d["schema"]["columns"]["month"].update(allowed=[1.5]), "schema.columns.month", "must be whole numbers"),
        (lambda d: d["schema"]["columns"]["carrier"].update(allowed=[1, 2]), "schema.columns.carrier", "must be text"),
        (lambda d: d["schema"]["columns"]["time_hour"].update(min=0), "schema.columns.time_hour", "do not apply to a datetime"),
    ],
)
def test_bad_field_is_named(mutate, field, message):
    data = flights_dict()
    mutate(data)
    with pytest.raises(DeclarationError) as err:
        parse_declaration(data, "flights.yaml")
    text = str(err.value)
    assert "flights.yaml" in text
    assert field in text
    assert message in text


def test_a_validators_message_is_printed_as_it_reads():
    """A check over several fields was printed `(top level): Value error, target.column ...`: pydantic's framing, not the
    user's field."""
    data = flights_dict()
    data["target"]["column"] = "delay"
    data["landing"]["file_pattern"] = "flights.parquet"
    with pytest.raises(DeclarationError) as err:
        parse_declaration(data, "flights.yaml")
    assert str(err.value) == "invalid pipeline declaration flights.yaml:\n  landing: file_pattern must contain '{partition}' exactly once"
    data = flights_dict()
    data["target"]["column"] = "delay"
    with pytest.raises(DeclarationError) as err:
        parse_declaration(data, "flights.yaml")
    assert str(err.value) == "invalid pipeline declaration flights.yaml:\n  target.column 'delay' is not a declared schema column"


def test_a_float_column_may_list_allowed_fractions():
    data = flights_dict()
    data["schema"]["columns"]["dep_delay"].update(allowed=[0.5, 1.5, 2])
    assert parse_declaration(data).table_schema.columns["dep_delay"].allowed == [0.5, 1.5, 2]


def test_a_csv_pipeline_without_a_file_pattern_expects_csv_files():
    data = flights_dict()
    data["landing"] = {"format": "csv"}
    assert parse_declaration(data, "flights.yaml").landing.file_pattern == "{partition}.csv"


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(DeclarationError, match="bad.yaml is not valid YAML"):
        load_declaration(bad)
    with pytest.raises(DeclarationError, match="does not exist"):
        load_declarations(str(tmp_path / "missing"))
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(DeclarationError, match="expected a mapping"):
        load_declaration(top)


def test_pipelines_deriving_the_same_dagster_name_are_refused_naming_both(tmp_path):
    """`a` and `a_serving` both derived `a_serving_drift_sensor`: Dagster refused the code location naming neither."""
    for name in ("a", "a_serving"):
        data = {**flights_dict(), "name": name}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(DeclarationError, match="pipelines 'a' and 'a_serving' both derive the Dagster name 'a_serving_drift_sensor'"):
        load_declarations(str(tmp_path))


def test_duplicate_pipeline_names_rejected(tmp_path):
    (tmp_path / "a.yaml").write_text((PACKAGED_PIPELINES / "flights" / "defs.yaml").read_text())
    (tmp_path / "b.yaml").write_text((PACKAGED_PIPELINES / "flights" / "defs.yaml").read_text())
    with pytest.raises(DeclarationError, match="declared more than once: \\['flights'\\]"):
        load_declarations(str(tmp_path))


def test_feature_module_errors_name_the_module():
    data = flights_dict()
    data["features"]["module"] = "no_such_package.features"
    with pytest.raises(DeclarationError, match="features.module 'no_such_package.features' cannot be imported"):
        load_feature_module(parse_declaration(data))
    data["features"]["module"] = "json"
    with pytest.raises(DeclarationError, match="has no build_features"):
        load_feature_module(parse_declaration(data))


@pytest.mark.parametrize(
    ("source", "line", "error"),
    [
        ('import polars as pl\n\nraise RuntimeError("no such setting")\n', 3, "RuntimeError: no such setting"),
        ("import polars as pl\n\ndef feature_expressions(reference)\n    return []\n", 3, "SyntaxError: expected ':'"),
        ('import polars as pl\n\nX = pl.DataFrame({"a": [1]}).select(pl.col("b"))\n', 3, "ColumnNotFoundError"),
    ],
    ids=["raises", "syntax", "library-under-it"],
)
def test_feature_module_failing_as_it_loads_is_named_with_its_line(tmp_path, monkeypatch, source, line, error):
    """A module that does not compile, or whose top-level code raises, was a traceback from `mlops pipelines`: the error and
    the module's own line (not the library's under it) say what to fix."""
    name = f"features_failing_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = flights_dict()
    data["features"]["module"] = name
    with pytest.raises(DeclarationError) as caught:
        load_feature_module(parse_declaration(data))
    assert f"features.module '{name}' failed as it was imported, at {tmp_path / name}.py:{line}: {error}" in str(caught.value)


def test_feature_code_breaking_the_contract_is_caught(monkeypatch):
    import polars as pl

    from mlops_assets.core.feature_contract import FeatureReference

    decl = load_declaration(TELEMETRY)
    module = load_feature_module(decl)
    records = pl.DataFrame({"machine_id": ["m1", "m2"], "temperature": [1.0, 2.0], "vibration": [0.1, None]}).with_columns(
        pl.lit(None, pl.Datetime("us", "UTC")).alias("reading_time")
    )
    ok = module.build(records, FeatureReference(categories={"machine_id": ["m1", "m2"]}))
    assert ok.height == 2 and ok.get_column("machine_code").to_list() == [0, 1]
    monkeypatch.setattr(module.module, "build_features", lambda r, ref: r.head(1))
    with pytest.raises(FeatureCodeError, match="returned 1 rows for 2 records"):
        module.build(records, FeatureReference(categories={"machine_id": ["m1"]}))
    monkeypatch.setattr(module.module, "build_features", lambda r, ref: r.select("machine_id"))
    with pytest.raises(FeatureCodeError, match="reuses key/target column names"):
        module.build(records, FeatureReference(categories={"machine_id": ["m1"]}))
    # text reached Delta and failed only at training, with a polars cast error
    monkeypatch.setattr(module.module, "build_features", lambda r, ref: r.select(pl.col("machine_id").alias("machine")))
    with pytest.raises(FeatureCodeError, match="outputs columns a model cannot read: {'machine': 'String'}"):
        ranged = records.with_columns(pl.lit("2024-03-01").alias("_partition"))  # where features are written
        module.build_partitions(ranged, {"2024-03-01": FeatureReference(categories={"machine_id": ["m1"]})}, "_partition")


def test_a_history_table_named_as_a_reference_table_is_refused():
    """A lookup of the name found one of the two, silently."""
    from datetime import date

    from mlops_assets.defs.flights.upstream import day_frame

    data = flights_dict()
    data["landing"]["reference_tables"]["route_stats"] = "route_stats.parquet"
    module = load_feature_module(parse_declaration(data))
    with pytest.raises(DeclarationError, match=r"history statistics return \['route_stats'\], the name of landing.reference_tables too"):
        module.history_stats(day_frame(date(2013, 1, 1)))


def test_feature_code_cannot_ask_for_what_a_request_never_carries(monkeypatch):
    """The target among INPUT_COLUMNS trained a leak that passed the gates and then failed every request; a
    history lookup with history_days 0 was null in every row."""
    decl = load_declaration(TELEMETRY)
    module = load_feature_module(decl)
    monkeypatch.setattr(module.module, "INPUT_COLUMNS", ["machine_id", "reading_time", "failure"], raising=False)
    with pytest.raises(FeatureCodeError, match="INPUT_COLUMNS names the target 'failure': a prediction request never carries it"):
        load_feature_module(decl)
    monkeypatch.undo()
    data = declaration_attributes(TELEMETRY)[0]
    data["features"]["history_days"] = 0
    with pytest.raises(DeclarationError, match="'machine_stats' comes from the history statistics, but features.history_days is 0"):
        load_feature_module(parse_declaration(data))


def test_feature_expressions_are_built_once_per_lookup_index_and_checked(monkeypatch):
    import polars as pl

    from mlops_assets.core.feature_contract import FeatureReference

    decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    module = load_feature_module(decl)
    assert not hasattr(module.module, "build_features")  # flights declares expressions only
    built = []
    original = module.module.feature_expressions
    monkeypatch.setattr(module.module, "feature_expressions", lambda ref: built.append(ref) or original(ref))
    reference = FeatureReference(tables={}, categories={"carrier": ["UA"], "origin": ["EWR"], "dest": ["ORD"]})
    index = module.lookup_index(reference)
    records = pl.DataFrame(
        {"year": [2013], "month": [7], "day": [1], "sched_dep_time": [930], "dep_delay": [4.0], "carrier": ["UA"], "tailnum": [None]}
        | {"origin": ["EWR"], "dest": ["ORD"], "distance": [719], "time_hour": [None]},
        schema_overrides={"tailnum": pl.String, "time_hour": pl.Datetime("us", "UTC")},
    )
    records = records.cast({c: decl.table_schema.columns[c].dtype for c in records.columns})
    one = module.build(records, reference, index)
    again = module.build(records, reference, index)
    assert len(built) == 1  # the serving path: once per loaded version's index
    assert one.equals(again) and one.row(0, named=True)["carrier_code"] == 0 and one.row(0, named=True)["dep_hour"] == 9
    assert module.build(records, reference).equals(one)  # the batch path (no index) gives the same row
    monkeypatch.setattr(module.module, "feature_expressions", lambda ref: ["dep_delay"])
    with pytest.raises(FeatureCodeError, match="must return a non-empty list of polars expressions"):
        module.build(records, reference)
