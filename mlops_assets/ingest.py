"""Reading a landed file and casting it to the declared schema.

File-level problems (unreadable, empty, missing or unexpected columns) raise
LandedFileError naming the file and the problem: the run fails, nothing is
written and the landed file stays where it is. Cell-level problems (a value
that cannot be read as the declared type) do not fail the file: the cell
becomes null in the typed frame and the row is reported, with its original
value, so validation can quarantine it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import polars as pl

from mlops_assets.declaration import ColumnSpec, SchemaSpec

SOURCE_ROW = "_source_row"
BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class LandedFileError(ValueError):
    def __init__(self, file: str, problem: str):
        super().__init__(f"{file}: {problem}")
        self.file = file
        self.problem = problem


@dataclass(frozen=True)
class ConformedFile:
    frame: pl.DataFrame  # declared columns, declared types, plus _source_row
    original: pl.DataFrame  # the columns as landed, plus _source_row (to keep failed values)
    cast_failures: pl.DataFrame  # _source_row, reason
    dropped_columns: list[str]


def read_landed(data: bytes, file: str, fmt: str) -> pl.DataFrame:
    if len(data) == 0:
        raise LandedFileError(file, "file is empty (0 bytes)")
    try:
        if fmt == "parquet":
            frame = pl.read_parquet(io.BytesIO(data))
        else:
            # strings first: typing is done against the declaration, not guessed
            frame = pl.read_csv(io.BytesIO(data), infer_schema=False, null_values=[""])
    except Exception as err:  # polars raises several exception types for a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LandedFileError(file, f"not a readable {fmt} file ({first})") from err
    if frame.height == 0:
        raise LandedFileError(file, "file has no rows")
    return frame


def _cast(values: pl.Series, spec: ColumnSpec) -> pl.Series:
    target = spec.dtype
    if values.dtype == target:
        return values
    if values.dtype == pl.String:
        stripped = values.str.strip_chars()
        if spec.type == "date":
            return stripped.str.to_date(strict=False)
        if spec.type == "datetime":
            return stripped.str.to_datetime(strict=False, time_zone="UTC", time_unit="us")
        if spec.type == "bool":
            lowered = stripped.str.to_lowercase()
            return lowered.replace_strict(BOOL_WORDS, default=None, return_dtype=pl.Boolean)
        return stripped.cast(target, strict=False)
    if values.dtype.is_float() and target.is_integer():
        whole = values.is_null() | (values == values.round(0))
        return pl.select(pl.when(whole).then(values).otherwise(None).cast(target, strict=False)).to_series()
    if spec.type == "datetime" and isinstance(values.dtype, pl.Datetime):
        if values.dtype.time_zone is None:
            return values.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
        return values.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    return values.cast(target, strict=False)


def conform(frame: pl.DataFrame, schema: SchemaSpec, file: str) -> ConformedFile:
    """Cast a landed frame to the declared schema, reporting cells that do not fit."""
    declared = list(schema.columns)
    missing = [c for c in declared if c not in frame.columns]
    if missing:
        raise LandedFileError(file, f"missing declared columns: {', '.join(missing)}")
    extra = [c for c in frame.columns if c not in schema.columns]
    if extra and schema.extra_columns == "fail":
        raise LandedFileError(
            file,
            f"unexpected columns not in the declared schema: {', '.join(extra)} "
            "(declare them, or set schema.extra_columns: drop)",
        )
    original = frame.select(declared).with_row_index(SOURCE_ROW)
    typed: list[pl.Series] = []
    failures: list[pl.DataFrame] = []
    for name, spec in schema.columns.items():
        source = frame.get_column(name)
        cast = _cast(source, spec).alias(name)
        typed.append(cast)
        if cast.dtype != spec.dtype:  # e.g. a nested type nothing can cast
            raise LandedFileError(file, f"column {name} has type {source.dtype}, which cannot be read as {spec.type}")
        failed = source.is_not_null() & cast.is_null()
        if failed.any():
            failures.append(
                pl.DataFrame({SOURCE_ROW: original[SOURCE_ROW], "value": source.cast(pl.String, strict=False)})
                .filter(failed)
                .select(
                    SOURCE_ROW,
                    pl.format("{}: cannot read '{}' as {}", pl.lit(name), pl.col("value"), pl.lit(spec.type)).alias(
                        "reason"
                    ),
                )
            )
    result = pl.DataFrame(typed).with_columns(original[SOURCE_ROW])
    cast_failures = (
        pl.concat(failures)
        if failures
        else pl.DataFrame(schema={SOURCE_ROW: pl.UInt32, "reason": pl.String})
    )
    return ConformedFile(result, original, cast_failures, extra)
