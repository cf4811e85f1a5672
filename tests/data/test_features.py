"""Features: nothing leaks from the day being featurized, and serving-time records give the same features."""

from datetime import date

import polars as pl
import pytest

from mlops_assets.core.feature_contract import load_feature_module
from mlops_assets.defs.flights.upstream import day_frame, encode, land_days
from resources.pipeline_tables import reference_as_of, references_as_of
from serving.requests import RequestSchema, typed_frame
from tests.support.platform import Platform, days

ROUTE_COLUMNS = ["route_mean_arr_delay", "route_p75_arr_delay", "route_flights", "carrier_mean_arr_delay"]


def features_of(platform: Platform, day: str) -> pl.DataFrame:
    return platform.delta.read_partitions("flights", "features", [day]).sort("_source_row")


def test_route_statistics_use_only_earlier_days(platform: Platform):
    decl = platform.declarations["flights"]
    d1, d2, d3, d4 = days("2013-01-01", 4)
    land_days(decl, platform.landing, date(2013, 1, 1), 3)
    platform.run("flights_reference")
    platform.ingest("flights", [d1, d2, d3])
    before = features_of(platform, d3)

    # the statistics equal a hand computation over the two earlier days only
    earlier = pl.concat([day_frame(date(2013, 1, 1)), day_frame(date(2013, 1, 2))]).filter(pl.col("arr_delay").is_not_null())
    expected = earlier.group_by("origin", "dest").agg(pl.col("arr_delay").mean().alias("expected"))
    raw3 = day_frame(date(2013, 1, 3)).with_row_index("_source_row")
    joined = raw3.join(expected, on=["origin", "dest"], how="left").sort("_source_row")
    assert joined.get_column("expected").equals(before.get_column("route_mean_arr_delay"), check_names=False)

    # a later day with extreme delays changes nothing for day 3
    later = day_frame(date(2013, 1, 4)).with_columns(pl.col("arr_delay") + 500)
    platform.landing.write_bytes("flights", f"flights_{d4}.parquet", encode(later, "parquet"))
    platform.ingest("flights", [d4])
    platform.ingest("flights", [d3])
    assert features_of(platform, d3).select(ROUTE_COLUMNS).equals(before.select(ROUTE_COLUMNS))

    # day 3's own outcomes do not feed its own statistics
    own = day_frame(date(2013, 1, 3)).with_columns(pl.col("arr_delay") + 777)
    platform.landing.write_bytes("flights", f"flights_{d3}.parquet", encode(own, "parquet"))
    platform.ingest("flights", [d3])
    after = features_of(platform, d3)
    assert after.select(ROUTE_COLUMNS).equals(before.select(ROUTE_COLUMNS))
    assert (after.get_column("arr_delay") - before.get_column("arr_delay")).drop_nulls().unique().to_list() == [777]


def test_serving_records_give_the_training_features(flights_ingested: Platform):
    """Training-serving parity: raw request records (only the input columns) through the same
    function and the same reference give exactly the stored training features."""
    decl = flights_ingested.declarations["flights"]
    module = load_feature_module(decl)
    day = "2013-01-30"
    stored = features_of(flights_ingested, day)
    requests = day_frame(date(2013, 1, 30)).select(module.input_columns(decl))
    assert decl.target.column not in requests.columns and "arr_time" not in requests.columns
    reference, lineage = reference_as_of(flights_ingested.delta, decl, module, day)
    assert len(lineage["history_partitions"]) == 28
    served = module.build(requests, reference)
    assert served.columns == [c for c in stored.columns if c in served.columns]
    assert served.equals(stored.select(served.columns))


def test_every_day_served_through_the_lookup_index_equals_its_feature_rows(flights_ingested: Platform):
    """Parity as serving runs it: each featurized day's records, as a client sends them (JSON values, only
    the input columns), typed by the request path and featurized through the hash-index lookups, equal
    that day's rows of the feature table exactly."""
    decl = flights_ingested.declarations["flights"]
    module = load_feature_module(decl)
    schema = RequestSchema.of(decl, module.input_columns(decl))
    featurized = flights_ingested.delta.partitions("flights", "features")
    assert len(featurized) >= 30
    references = references_as_of(flights_ingested.delta, decl, module, featurized)
    for day in featurized:
        stored = features_of(flights_ingested, day)
        sent = day_frame(date.fromisoformat(day)).select(module.input_columns(decl))
        records = sent.with_columns(pl.col("time_hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_dicts()
        reference = references[day][0]
        served = module.build(typed_frame(records, schema), reference, module.lookup_index(reference))
        assert served.equals(stored.select(served.columns)), day


def test_unknown_category_at_serving_time_encodes_as_null(flights_ingested: Platform):
    decl = flights_ingested.declarations["flights"]
    module = load_feature_module(decl)
    reference, _ = reference_as_of(flights_ingested.delta, decl, module, "2013-02-01")
    records = day_frame(date(2013, 2, 1)).head(2).with_columns(pl.Series("carrier", ["AA", "QQ"]))
    out = module.build(records.select(module.input_columns(decl)), reference)
    assert out.get_column("carrier_code").to_list() == [decl.table_schema.columns["carrier"].allowed.index("AA"), None]


def test_features_metadata_records_target_exclusions(flights_ingested: Platform):
    from dagster import AssetKey

    event = flights_ingested.instance.get_latest_materialization_event(AssetKey(["flights", "features"]))
    meta = event.asset_materialization.metadata
    rows = features_of(flights_ingested, event.asset_materialization.partition)
    assert meta["rows_without_target"].value == rows.get_column("arr_delay").null_count() > 0
    assert meta["rows_without_target_reason"].value == "cancelled or diverted flight: no arrival delay"
    assert meta["history_partitions"].value == 28
    assert meta["feature_code_hash"].value == load_feature_module(flights_ingested.declarations["flights"]).code_hash()


@pytest.mark.parametrize("bad", ["2013-01-05'", "x' OR 1=1 --"])
def test_partition_keys_cannot_inject_predicates(flights_ingested: Platform, bad):
    with pytest.raises(ValueError, match="invalid partition key"):
        flights_ingested.delta.write_partition("flights", "scratch", pl.DataFrame({"a": [1]}), bad, "run")


def test_a_csv_reference_table_is_looked_up_with_its_numbers_as_numbers(tmp_path):
    """A CSV reference table has no declared schema: its values were kept as text, so a lookup brought `temp` in as a
    string, and a datetime key could not be matched at all. Read with its types inferred, it looks up as Parquet does."""
    import dagster as dg

    from mlops_assets.core.declaration import PACKAGED_PIPELINES, derive_declaration, load_declaration
    from mlops_assets.core.names import reference_table

    base = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    decl = derive_declaration(
        base, "flights, weather as CSV", landing={"reference_tables": {"weather": "weather.csv", "planes": "planes.parquet"}}
    )
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        plat = Platform(tmp_path, [decl], instance)
        land_days(decl, plat.landing, date(2013, 1, 1), 2)  # the reference files too, each in its own format
        assert plat.landing.read_bytes("flights", "reference", "weather.csv").startswith(b"origin,")
        plat.run("flights_reference")
        weather = plat.delta.scan("flights", reference_table("weather")).collect()
        assert weather.schema["temp"] == pl.Float64 and weather.schema["origin"] == pl.String
        plat.ingest_range("flights", "2013-01-01", "2013-01-02")
        features = plat.delta.scan("flights", "features").collect()
    assert features.schema["temp"] == pl.Float64 and features.get_column("temp").null_count() < features.height


def test_a_csv_reference_tables_text_keys_keep_their_leading_zeros():
    """Inferred as numbers, `007` and `010` were cast back to "7" and "10" for the lookup: every record missed."""
    from mlops_assets.core.records import read_landed

    data = b"station,elevation,opened\n007,12.5,2013-01-01\n010,3,2013-02-01\n"
    inferred = read_landed(data, "stations.csv", "csv", infer_types=True, as_text=["station"])
    assert inferred.get_column("station").to_list() == ["007", "010"]
    assert inferred.schema["elevation"] == pl.Float64 and inferred.schema["opened"] == pl.Date


def test_feature_code_sees_in_training_only_what_a_request_carries(platform: Platform, monkeypatch):
    """Feature code reading a column known only after the fact (arrival time, the target) trained a leak that passed
    the gates, then failed every prediction: featurization now gets the request's columns only, and fails at once."""
    decl = platform.declarations["flights"]
    module = load_feature_module(decl)
    original = module.module.feature_expressions
    monkeypatch.setattr(module.module, "feature_expressions", lambda ref: [*original(ref), pl.col("arr_time").alias("arrived")])
    land_days(decl, platform.landing, date(2013, 1, 1), 1)
    platform.run("flights_reference")
    (result,) = platform.ingest("flights", ["2013-01-01"], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.cause
    assert failure.cls_name == "FeatureCodeError" and "flights.features reads a column its records do not carry" in failure.message
    assert 'unable to find column "arr_time"' in failure.message and "INPUT_COLUMNS" in failure.message
    assert platform.delta.scan("flights", "features") is None  # nothing featurized with the leak
