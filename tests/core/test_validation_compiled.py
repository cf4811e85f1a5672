"""The compiled validation pass gives exactly what pandera's own validation gives.

``validate`` compiles the declared pandera schema into one polars pass; pandera's
polars backend (``engine="pandera"``) is the reference. Every check kind the
declaration produces is violated here (min, max, unknown category, null in a
required column, NaN in a required and in a nullable float column, duplicate keys
including null key parts, cells that cannot be cast), and both must quarantine
the same rows with the same reasons and keep the same clean rows.
"""

from __future__ import annotations

import math

import pandera.polars as pa
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mlops_assets.core.declaration import SchemaSpec
from mlops_assets.core.records import conform
from mlops_assets.core.validation import compile_schema, pandera_schema, validate
from tests.support.validation import SCHEMA, _row


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "site": pl.String,
            "n": pl.Int64,
            "small": pl.Int64,
            "x": pl.Float64,
            "y": pl.Float64,
            "tag": pl.String,
            "code": pl.Int64,
            "flag": pl.Boolean,
            "when": pl.Datetime("us", "UTC"),
            "free": pl.String,
        },
    )


def _violations() -> pl.DataFrame:
    rows = [_row(i) for i in range(270)]  # (site, n) is unique
    bad = {
        3: {"n": 0},  # below min
        5: {"n": 101},  # above max
        7: {"small": -6},  # below min, nullable column
        8: {"small": 6, "tag": "z"},  # above max + unknown category: two reasons
        9: {"small": None, "y": None, "tag": None, "flag": None, "free": None},  # nulls where allowed
        11: {"x": -1.6},  # float below min
        12: {"x": 2.6},  # float above max
        13: {"x": None},  # null in a required float
        14: {"x": math.nan},  # NaN in a required float
        15: {"y": math.nan},  # NaN in a nullable float with a max
        16: {"y": -0.0},  # edge: -0.0 >= 0
        17: {"y": 10.0, "x": 2.5, "n": 100},  # on the bounds
        18: {"y": math.inf},  # inf above max
        19: {"site": "zz"},  # unknown category
        20: {"site": None, "n": 95},  # null in a required, categorical key column ...
        21: {"site": None, "n": 95},  # ... twice with the same n: a duplicate key with a null part
        22: {"code": 4},  # unknown integer category
        23: {"when": None},  # null datetime
        24: {"n": 2, "site": "a"},  # (a, 2) is a new key ...
        25: {"n": 2, "site": "a"},  # ... and this makes it a duplicate pair
        30: {"n": 200, "small": 300},  # above max + out of the int8 range: a cast failure
    }
    for i, over in bad.items():
        rows[i] = _row(i, **over)
    rows += [_row(40), _row(40), _row(41)]  # three copies of row 40, two of row 41
    return _frame(rows)


def _both(frame: pl.DataFrame, schema: SchemaSpec = SCHEMA):
    conformed = conform(frame, schema, "test")
    return validate(conformed, schema), validate(conformed, schema, engine="pandera"), conformed


def test_compiled_and_pandera_agree_on_every_check_kind():
    frame = _violations()
    conformed = conform(frame, SCHEMA, "test")
    assert conformed.cast_failures.height > 0  # the cast-failure path runs too
    rules = compile_schema(pandera_schema(SCHEMA), conformed.frame.drop("_source_row").schema)
    assert rules is not None
    assert {r.check.split("(")[0] for r in rules} >= {
        "not_nullable",
        "greater_than_or_equal_to",
        "less_than_or_equal_to",
        "isin",
        "multiple_fields_uniqueness",
    }
    fast = validate(conformed, SCHEMA)
    reference = validate(conformed, SCHEMA, engine="pandera")
    assert_frame_equal(fast.clean, reference.clean)
    assert_frame_equal(fast.quarantine, reference.quarantine)
    assert_frame_equal(fast.reasons, reference.reasons, check_row_order=False)
    reasons = dict(fast.quarantine.select("_source_row", "_reason").iter_rows())
    assert reasons[3] == "n: 0 is below the minimum 1.0"
    assert reasons[8] == "small: 6 is above the maximum 5.0; tag: unknown category 'z'"
    assert 9 not in reasons and 16 not in reasons and 17 not in reasons
    assert reasons[14] == "x: NaN is not a number (the column's maximum is 2.5); x: null in a required column"
    assert reasons[15] == "y: NaN is not a number (the column's maximum is 10.0)"
    assert reasons[20] == reasons[21] == "duplicate key (site, n); site: null in a required column"
    assert reasons[30] == "n: 200 is above the maximum 100.0; small: cannot read '300' as int8"
    for row in (24, 25, 40, 41, 270, 271, 272):
        assert reasons[row] == "duplicate key (site, n)"
    assert len(reasons) == 23
    assert fast.clean.height + fast.quarantine.height == frame.height


def test_compiled_path_does_not_run_pandera(monkeypatch):
    conformed = conform(_violations(), SCHEMA, "test")

    def refuse(*args, **kwargs):
        raise AssertionError("pandera's validate ran on the compiled path")

    monkeypatch.setattr(pa.DataFrameSchema, "validate", refuse)
    assert validate(conformed, SCHEMA).quarantine.height > 0


def test_agree_on_a_clean_frame_and_on_a_frame_that_fails_everywhere():
    clean = _frame([_row(i) for i in range(50)])
    fast, reference, _ = _both(clean)
    for a, b in [(fast.clean, reference.clean), (fast.quarantine, reference.quarantine), (fast.reasons, reference.reasons)]:
        assert_frame_equal(a, b)
    assert fast.quarantine.height == 0 and fast.clean.height == 50
    assert fast.quarantine.columns == [*fast.clean.columns, "_reason", "_original"]
    broken = _frame([_row(1, n=0, x=None, site="q") for _ in range(5)])
    fast, reference, _ = _both(broken)
    assert_frame_equal(fast.quarantine, reference.quarantine)
    assert fast.clean.height == 0 and fast.quarantine.height == 5


def test_agree_on_the_flights_declaration_with_the_bench_breakage(tmp_path, flights_decl):
    from mlops_assets.cli.bench.pipeline_bench import DAYS_2013, day_files, generate
    from mlops_assets.core.records import read_landed

    generate(6_000, tmp_path, days=DAYS_2013[:4])
    schema = flights_decl.table_schema
    quarantined = 0
    for _, path in day_files(tmp_path):
        conformed = conform(read_landed(path.read_bytes(), str(path), "parquet"), schema, str(path))
        fast = validate(conformed, schema)
        reference = validate(conformed, schema, engine="pandera")
        assert_frame_equal(fast.clean, reference.clean)
        assert_frame_equal(fast.quarantine, reference.quarantine)
        quarantined += fast.quarantine.height
    assert quarantined > 0


def test_what_the_compiler_does_not_know_goes_to_pandera():
    dfs = pandera_schema(SCHEMA)
    data_schema = conform(_violations(), SCHEMA, "t").frame.drop("_source_row").schema
    custom = dfs.update_column("n", checks=[pa.Check(lambda d: d.lazyframe.select(pl.col(d.key) > 0))])
    assert compile_schema(custom, data_schema) is None
    wrong_dtype = pl.Schema({**data_schema, "n": pl.Int64})
    assert compile_schema(dfs, wrong_dtype) is None


def test_a_wrong_dtype_fails_the_whole_file_on_both_paths():
    conformed = conform(_violations(), SCHEMA, "t")
    wrong = type(conformed)(
        conformed.frame.with_columns(pl.col("n").cast(pl.Int64)), conformed.original, conformed.cast_failures, conformed.dropped_columns
    )
    for engine in ("compiled", "pandera"):
        with pytest.raises(ValueError, match="schema check failed for the whole file"):
            validate(wrong, SCHEMA, engine=engine)
