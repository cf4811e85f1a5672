"""Declared lookups: the serving replica's hash-index probes give exactly the batch path's polars joins.

Randomized over key types (strings, integers, dates, times, several keys), tables with
repeated keys, null keys and keys no record has, records with missing and null keys and
unknown values, and a table that is absent; then the flights pipeline itself with
perturbed real records. The declaration's checks name the bad lookup.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from types import ModuleType

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.core.declaration import PACKAGED_PIPELINES as PACKAGED
from mlops_assets.core.declaration import DeclarationError, LookupSpec, derive_declaration, load_declaration
from mlops_assets.core.feature_contract import FeatureCodeError, FeatureReference, categories, load_feature_module
from mlops_assets.core.lookups import LookupIndex, LookupTableError, join_lookups
from mlops_assets.defs.flights.upstream import day_frame, flights_table, reference_frames

KEY_TYPES = {"site": pl.String(), "unit": pl.Int32(), "day": pl.Date(), "at": pl.Datetime("us", "UTC")}
SITES = ["a", "b", "c", "d"]
START = datetime(2024, 1, 1, tzinfo=UTC)


def _values(rng: np.random.Generator, n: int, column: str, nulls: float) -> list:
    if column == "site":
        values = [SITES[i] for i in rng.integers(0, len(SITES), n)]
    elif column == "unit":
        values = rng.integers(0, 6, n).tolist()
    elif column == "day":
        values = [date(2024, 1, 1) + timedelta(days=int(i)) for i in rng.integers(0, 4, n)]
    else:
        values = [START + timedelta(hours=int(i)) for i in rng.integers(0, 5, n)]
    return [None if rng.random() < nulls else v for v in values]


def _frame(rng: np.random.Generator, n: int, keys: list[str], nulls: float) -> pl.DataFrame:
    return pl.DataFrame({k: pl.Series(k, _values(rng, n, k, nulls), dtype=KEY_TYPES[k]) for k in keys})


@pytest.mark.parametrize("few_rows,join_rows", [(0, 10**9), (1000, 10**9), (0, 0)], ids=["gathered", "as-tuples", "joined"])
@pytest.mark.parametrize("seed", range(12))
def test_index_probes_equal_the_polars_joins(seed: int, few_rows: int, join_rows: int, monkeypatch):
    monkeypatch.setattr(LookupIndex, "FEW_ROWS", few_rows)  # every way a replica takes the rows
    monkeypatch.setattr(LookupIndex, "JOIN_ROWS", join_rows)
    rng = np.random.default_rng(seed)
    lookups, tables = [], {}
    for i, keys in enumerate([["site"], ["unit"], ["site", "at"], ["day", "unit"]]):
        name = f"t{i}"
        height = int(rng.integers(0, 30))  # an empty table too, sometimes
        table = _frame(rng, height, keys, nulls=0.1)
        # landed key types may differ from the records' (int64 units, strings kept): the platform casts them
        if "unit" in keys:
            table = table.with_columns(pl.col("unit").cast(pl.Int64))
        table = table.with_columns(
            pl.Series("value", rng.normal(size=height)),
            pl.Series("label", [None if rng.random() < 0.2 else f"v{j}" for j in range(height)], dtype=pl.String),
        )
        tables[name] = table
        lookups.append(LookupSpec(table=name, keys=keys, columns={"value": f"{name}_value", "label": f"{name}_label"}))
    lookups.append(LookupSpec(table="never_landed", keys=["site"], columns=["missing_value"]))
    records = _frame(rng, int(rng.integers(1, 40)), ["site", "unit", "day", "at"], nulls=0.15).with_columns(pl.lit(1.0).alias("x"))
    joined = join_lookups(records, tables, lookups, KEY_TYPES)
    probed = LookupIndex(tables, lookups, KEY_TYPES).join(records)
    assert_frame_equal(probed, joined)
    assert joined.height == records.height
    assert joined.get_column("missing_value").null_count() == records.height
    # repeated keys: the first row of the table wins, in both paths
    first = tables["t0"].drop_nulls("site").unique("site", keep="first", maintain_order=True)
    expect = records.join(first.select("site", pl.col("value").alias("t0_value")), on="site", how="left", maintain_order="left")
    assert joined.get_column("t0_value").equals(expect.get_column("t0_value"))


def test_a_lookup_the_table_cannot_satisfy_is_named():
    lookup = LookupSpec(table="sites", keys=["site"], columns=["height"])
    with pytest.raises(LookupTableError, match=r"table 'sites'.*no columns \['height'\]"):
        join_lookups(pl.DataFrame({"site": ["a"]}), {"sites": pl.DataFrame({"site": ["a"], "size": [1]})}, [lookup], KEY_TYPES)
    bad_keys = {"sites": pl.DataFrame({"site": ["a"], "height": [1.0]}).with_columns(pl.col("site").alias("day"))}
    with pytest.raises(LookupTableError, match=r"keys \['day'\] do not cast"):
        LookupIndex(bad_keys, [LookupSpec(table="sites", keys=["day"], columns=["height"])], KEY_TYPES)


@pytest.mark.parametrize(
    "lookup, message",
    [
        (
            {"table": "weather", "keys": ["airport"], "columns": ["temp"]},
            r"lookups\.0 \(weather\): keys name columns that are not declared: \['airport'\]",
        ),
        ({"table": "weather", "keys": ["dep_delay"], "columns": ["temp"]}, r"keys name float columns \['dep_delay'\]"),
        ({"table": "planes", "keys": ["tailnum"], "columns": ["year"]}, r"columns would overwrite \['year'\]"),
        ({"table": "planes", "keys": ["tailnum"], "columns": {"year": "age", "seats": "age"}}, r"columns would overwrite \['age'\]"),
    ],
)
def test_a_bad_lookup_is_refused_naming_it(lookup: dict, message: str):
    base = load_declaration(PACKAGED / "flights" / "defs.yaml")
    with pytest.raises(DeclarationError, match=message):
        derive_declaration(base, "test", features={"lookups": [lookup]})


def test_flights_features_are_the_same_through_the_index_for_perturbed_records():
    """The flights pipeline: unknown tail numbers and carriers, null keys, hours with no weather, routes never flown."""
    decl = load_declaration(PACKAGED / "flights" / "defs.yaml")
    module = load_feature_module(decl)
    earlier = flights_table().filter(pl.col("_date") < date(2013, 2, 1)).drop("_date")
    reference = FeatureReference(tables={**reference_frames(), **module.history_stats(earlier)}, categories=categories(decl))
    rng = np.random.default_rng(7)
    records = day_frame(date(2013, 2, 1)).sample(200, seed=7).select(module.input_columns(decl))
    records = records.cast({c: spec.dtype for c, spec in decl.table_schema.columns.items() if c in records.columns})
    n = records.height
    pick = rng.random(n)
    records = records.with_columns(
        pl.when(pl.lit(pick < 0.1)).then(pl.lit("N0NE")).when(pl.lit(pick < 0.2)).then(None).otherwise(pl.col("tailnum")).alias("tailnum"),
        pl.when(pl.lit(pick > 0.9)).then(pl.lit("QQ")).otherwise(pl.col("carrier")).alias("carrier"),
        pl.when(pl.lit((pick > 0.3) & (pick < 0.4)))
        .then(pl.col("time_hour") + pl.duration(days=400))
        .otherwise(pl.col("time_hour"))
        .alias("time_hour"),
        pl.when(pl.lit((pick > 0.5) & (pick < 0.55))).then(pl.lit("XXX")).otherwise(pl.col("dest")).alias("dest"),
    )
    by_join = module.build(records, reference)
    index = module.lookup_index(reference)
    assert_frame_equal(module.build(records, reference, index), by_join)
    for i in range(0, n, 5):  # single-row requests take the few-rows path
        assert_frame_equal(module.build(records.slice(i, 1), reference, index), by_join.slice(i, 1))
    many = pl.concat([records] * (LookupIndex.JOIN_ROWS // n + 1))  # a batch request: the index joins it
    assert_frame_equal(module.build(many, reference, index), pl.concat([by_join] * (LookupIndex.JOIN_ROWS // n + 1)))
    assert by_join.get_column("seats").null_count() >= int((pick < 0.2).sum())  # the unknown and null tail numbers
    assert by_join.get_column("temp").null_count() >= int(((pick > 0.3) & (pick < 0.4)).sum())


def test_a_lookup_on_a_column_requests_do_not_carry_is_refused_at_load():
    base = load_declaration(PACKAGED / "flights" / "defs.yaml")
    decl = derive_declaration(base, "test", features={"lookups": [{"table": "planes", "keys": ["flight"], "columns": ["seats"]}]})
    with pytest.raises(
        DeclarationError, match=r"features\.lookups\.0 \(planes\) matches on \['flight'\], which are not among .*INPUT_COLUMNS"
    ):
        load_feature_module(decl)


def test_a_range_built_in_one_pass_equals_each_day_built_alone():
    """A backfill's range: the per-day history tables stacked with the partition as a key, one build, rows in
    the records' order (days interleaved here); a module that joins a per-day table itself is built day by day."""
    decl = load_declaration(PACKAGED / "flights" / "defs.yaml")
    module = load_feature_module(decl)
    table, static = flights_table(), reference_frames()
    days = [date(2013, 2, 1) + timedelta(days=i) for i in range(4)]
    references = {
        d.isoformat(): FeatureReference(
            tables={
                **static,
                **module.history_stats(table.filter(pl.col("_date").is_between(d - timedelta(days=28), d, closed="left")).drop("_date")),
            },
            categories=categories(decl),
        )
        for d in days
    }
    types = {c: spec.dtype for c, spec in decl.table_schema.columns.items()}
    records = pl.concat([day_frame(d).cast(types).with_columns(pl.lit(d.isoformat()).alias("_partition")) for d in days])
    records = records.sample(fraction=1.0, shuffle=True, seed=3)
    history = [lookup for lookup in module.lookups if lookup.table in ("route_stats", "carrier_stats")]
    joins_itself = ModuleType("joins_itself")
    joins_itself.build_features = lambda rows, ref: join_lookups(rows, ref.tables, history, module.key_types).select(
        module.module.feature_expressions(ref)
    )
    day_by_day = replace(module, module=joins_itself, lookups=tuple(lk for lk in module.lookups if lk not in history))
    for built in (
        module.build_partitions(records, references, "_partition"),
        day_by_day.build_partitions(records, references, "_partition"),
    ):
        assert built.height == records.height
        for p, reference in references.items():
            mine = records.get_column("_partition") == p
            assert_frame_equal(built.filter(mine), module.build(records.filter(mine).drop("_partition"), reference))


def test_a_lookup_of_a_table_nobody_provides_is_refused_not_joined_as_nulls(monkeypatch):
    """A misspelt table name used to join null columns into every feature row, training included."""
    base = load_declaration(PACKAGED / "flights" / "defs.yaml")
    lookups = [lookup.model_dump() for lookup in base.features.lookups]
    lookups[2]["table"] = "route_stat"
    module = load_feature_module(derive_declaration(base, "test", features={"lookups": lookups}))  # it has history statistics
    earlier = [day_frame(date(2013, 1, 1)), day_frame(date(2013, 1, 2))]
    message = (
        r"features\.lookups\.2: table 'route_stat' is neither a landing\.reference_tables name \(planes, weather\) "
        r"nor a table mlops_assets\.defs\.flights\.features's history statistics return \(carrier_stats, route_stats\)"
    )
    with pytest.raises(DeclarationError, match=message):
        module.history_from_days(earlier)  # the features step's path, and a backfill's
    with pytest.raises(DeclarationError, match=message):
        module.history_stats(pl.concat(earlier))
    no_history = ModuleType("no_history_features")  # row-wise only: nothing but the reference tables to look up
    no_history.feature_expressions = module.module.feature_expressions
    monkeypatch.setitem(sys.modules, no_history.__name__, no_history)
    with pytest.raises(DeclarationError, match=r"features\.lookups\.2: table 'route_stat' is not a landing\.reference_tables name"):
        load_feature_module(derive_declaration(base, "test", features={"lookups": lookups, "module": no_history.__name__}))  # at load


def test_a_module_reading_a_per_day_table_it_declared_as_a_lookup_is_told_why_in_a_range():
    decl = load_declaration(PACKAGED / "flights" / "defs.yaml")
    module = load_feature_module(decl)
    table, static = flights_table(), reference_frames()
    references = {
        d.isoformat(): FeatureReference(
            tables={**static, **module.history_stats(table.filter(pl.col("_date") < d).drop("_date"))}, categories=categories(decl)
        )
        for d in (date(2013, 1, 5), date(2013, 1, 6))
    }
    reads_it = ModuleType("reads_it")
    reads_it.build_features = lambda rows, ref: rows.select(module.module.feature_expressions(ref)).with_columns(
        pl.lit(ref.tables["route_stats"].height).alias("routes")
    )
    types = {c: spec.dtype for c, spec in decl.table_schema.columns.items()}
    records = pl.concat([day_frame(date.fromisoformat(p)).cast(types).with_columns(pl.lit(p).alias("_partition")) for p in references])
    with pytest.raises(FeatureCodeError, match=r"reference.tables\['route_stats'\], which differs per day"):
        replace(module, module=reads_it).build_partitions(records, references, "_partition")
