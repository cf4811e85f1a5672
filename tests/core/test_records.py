"""Reading a landed file against the declared schema: file-level problems name the file and the problem."""

from datetime import date

import pytest

from mlops_assets.core.records import LandedFileError, checked_columns
from mlops_assets.defs.flights.upstream import day_frame


def test_a_declared_column_landed_in_another_case_is_named_beside_the_missing_one(flights_decl):
    frame = day_frame(date(2013, 1, 1)).rename({"year": "Year", "dep_delay": "DEP_DELAY"})
    with pytest.raises(LandedFileError) as err:
        checked_columns(frame, flights_decl.table_schema, "day.parquet")
    assert err.value.problem == (
        "missing declared columns: year, dep_delay (the file has Year for year, DEP_DELAY for dep_delay: column names are case-sensitive)"
    )


def test_a_missing_column_without_a_namesake_gets_no_hint(flights_decl):
    frame = day_frame(date(2013, 1, 1)).drop("year")
    with pytest.raises(LandedFileError) as err:
        checked_columns(frame, flights_decl.table_schema, "day.parquet")
    assert err.value.problem == "missing declared columns: year"
