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
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from mlops_assets.core.declaration import ColumnSpec, SchemaSpec
from mlops_assets.core.names import SOURCE_ROW

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


def read_landed(data: bytes, file: str, fmt: str, infer_types: bool = False, as_text: Sequence[str] = ()) -> pl.DataFrame:
    """A landed file's rows. CSV values stay strings, to be typed against the declaration, unless `infer_types`
    (a reference table, which has no declared schema: its numbers and ISO dates read as such, over every row);
    the `as_text` columns (a reference table's lookup keys) are never inferred: `007` read as the number 7 was
    looked up as "7", and matched nothing."""
    if len(data) == 0:
        raise LandedFileError(file, "file is empty (0 bytes)")
    try:
        if fmt == "parquet":
            frame = pl.read_parquet(io.BytesIO(data))
        else:
            frame = pl.read_csv(
                io.BytesIO(data),
                infer_schema=infer_types,
                infer_schema_length=None,
                try_parse_dates=infer_types,
                null_values=[""],
                schema_overrides=dict.fromkeys(as_text, pl.String) if infer_types else None,
            )
    except Exception as err:  # polars raises several exception types for a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LandedFileError(file, f"not a readable {fmt} file ({first})") from err
    if frame.height == 0:
        raise LandedFileError(file, "file has no rows")
    return frame


def _cast(source: pl.DataType, spec: ColumnSpec, name: str) -> pl.Expr | None:
    """The expression that reads column `name` (of type `source`) as the declared type; a value it cannot read
    becomes null. None where the types do not convert with a meaning: numbers read as times (epoch seconds were
    read as microseconds since 1970: 1357016400 became 1970-01-01 00:22:37) or times as numbers."""
    target = spec.dtype
    values = pl.col(name)
    if source == target:
        return values
    temporal = (pl.Date, pl.Datetime, pl.Time, pl.Duration)
    if (source.is_numeric() and target.is_temporal()) or (isinstance(source, temporal) and target.is_numeric()):
        return None
    if source.is_numeric() and spec.type == "bool":  # 1 and 0 are flags; 2 or -7 is no truth value
        return pl.when((values == 0) | (values == 1)).then(values).otherwise(None).cast(pl.Boolean)
    if source.is_decimal() and target.is_integer():  # as for floats: a fraction is not read away (checked exactly)
        whole = values.is_null() | (values.cast(target, strict=False).cast(source, strict=False) == values)
        return pl.when(whole).then(values).otherwise(None).cast(target, strict=False)
    if source.is_float() and target.is_float():  # a narrower float: a finite value that overflows is not read as inf
        narrowed = values.cast(target, strict=False)
        return pl.when(values.is_finite() & narrowed.is_infinite()).then(None).otherwise(narrowed)
    if source == pl.String:
        stripped = values.str.strip_chars()
        if spec.type == "date":
            return stripped.str.to_date(strict=False)
        if spec.type == "datetime":
            return stripped.str.to_datetime(strict=False, time_zone="UTC", time_unit="us")
        if spec.type == "bool":
            lowered = stripped.str.to_lowercase()
            return lowered.replace_strict(BOOL_WORDS, default=None, return_dtype=pl.Boolean)
        return stripped.cast(target, strict=False)
    if source.is_float() and target.is_integer():
        whole = values.is_null() | (values == values.round(0))
        return pl.when(whole).then(values).otherwise(None).cast(target, strict=False)
    if spec.type == "datetime" and isinstance(source, pl.Datetime):
        if source.time_zone is None:
            return values.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
        return values.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    return values.cast(target, strict=False)


MIXED_FORM_PASSES = 4


def _mixed_forms(text: pl.Series, typed: pl.Series, spec: ColumnSpec, name: str) -> pl.Series:
    """Times written in more than one valid form (`2013-02-05T11:00:00Z` and `2013-02-05 11:00:00`): polars reads a
    column in the form of its first value, and the others read as unreadable (a valid value quarantined). The values
    left unread are read again as a column of their own, a few forms deep; one that reads alone in no pass (the
    first of a pass that reads none) stays unread."""
    left = text.is_not_null() & typed.is_null()
    for _ in range(MIXED_FORM_PASSES):
        at = left.arg_true()
        if at.len() == 0:
            break
        again = pl.DataFrame({name: text.gather(at)}).select(_cast(pl.String, spec, name)).to_series()
        read = again.is_not_null()
        if read.any():
            typed = typed.scatter(at.filter(read), again.filter(read))
            left = text.is_not_null() & typed.is_null()
        else:  # its first value set the form and reads in none: the next pass starts after it
            left = left.scatter(at.head(1), False)
    return typed


def conform(frame: pl.DataFrame, schema: SchemaSpec, file: str) -> ConformedFile:
    """Cast a landed frame to the declared schema, reporting cells that do not fit."""
    return conform_files([frame], schema, [file])[0]


def checked_columns(frame: pl.DataFrame, schema: SchemaSpec, file: str) -> list[str]:
    """The file's columns the declaration does not know (dropped); a missing declared column, or an unknown
    one where the declaration says fail, fails the file."""
    missing = [c for c in schema.columns if c not in frame.columns]
    if missing:
        # a column landed as `Year` for `year` is missing too (names are matched exactly): say which it is
        by_case = {c.lower(): c for c in frame.columns if c not in schema.columns}
        cased = [f"{by_case[c.lower()]} for {c}" for c in missing if c.lower() in by_case]
        hint = f" (the file has {', '.join(cased)}: column names are case-sensitive)" if cased else ""
        raise LandedFileError(file, f"missing declared columns: {', '.join(missing)}{hint}")
    extra = [c for c in frame.columns if c not in schema.columns]
    if extra and schema.extra_columns == "fail":
        raise LandedFileError(
            file,
            f"unexpected columns not in the declared schema: {', '.join(extra)} (declare them, or set schema.extra_columns: drop)",
        )
    return extra


def conform_files(frames: list[pl.DataFrame], schema: SchemaSpec, files: list[str]) -> list[ConformedFile]:
    """`conform` for many landed files (a backfill's range): files landed with the same column types are cast
    together, in one polars call instead of one per file (at 2,700 rows a file its fixed cost was most of
    the time), and split back, each with its own source rows and cast failures."""
    declared = list(schema.columns)
    extras = [checked_columns(frame, schema, file) for frame, file in zip(frames, files)]
    landed = [frame.select(declared) for frame in frames]
    same_types: dict[tuple, list[int]] = {}
    for i, frame in enumerate(landed):
        same_types.setdefault(tuple(frame.schema.items()), []).append(i)
    out: dict[int, ConformedFile] = {}
    for group in same_types.values():
        out.update(zip(group, _conform_same_types([landed[i] for i in group], [extras[i] for i in group], schema, files[group[0]])))
    return [out[i] for i in range(len(frames))]


def _conform_same_types(frames: list[pl.DataFrame], extras: list[list[str]], schema: SchemaSpec, first_file: str) -> list[ConformedFile]:
    """Cast files of the same column types together, then split them back, each with its own rows."""
    declared = list(schema.columns)
    heights = [f.height for f in frames]
    frame = frames[0] if len(frames) == 1 else pl.concat(frames, rechunk=False)

    def unreadable(name: str) -> LandedFileError:  # e.g. a nested type nothing can cast
        return LandedFileError(
            first_file, f"column {name} has type {frame.schema[name]}, which cannot be read as {schema.columns[name].type}"
        )

    casts = {}
    for name, spec in schema.columns.items():
        expr = _cast(frame.schema[name], spec, name)
        if expr is None:
            raise unreadable(name)
        casts[name] = expr.alias(name)
    try:
        typed = frame.select(*casts.values())
    except pl.exceptions.PolarsError:
        for name, expr in casts.items():  # which column
            try:
                frame.select(expr)
            except pl.exceptions.PolarsError:
                raise unreadable(name) from None
        raise
    for name, spec in schema.columns.items():
        if typed.schema[name] != spec.dtype:
            raise unreadable(name)
    # which columns have values that could not be read: a cast only ever turns a value into null, never a null
    # into a value, so more nulls after it than before means lost values (null counts are kept, not counted)
    lost = [name for name in declared if typed.get_column(name).null_count() > frame.get_column(name).null_count()]
    for name in lost:
        if frame.schema[name] == pl.String and schema.columns[name].type in ("date", "datetime"):
            typed = typed.with_columns(_mixed_forms(frame.get_column(name), typed.get_column(name), schema.columns[name], name))
    lost = [name for name in lost if typed.get_column(name).null_count() > frame.get_column(name).null_count()]
    failures = pl.DataFrame(schema={"_at": pl.UInt32, "reason": pl.String})
    if lost:
        at = pl.int_range(pl.len(), dtype=pl.UInt32).alias("_at")
        failures = pl.concat(
            [
                pl.DataFrame({"value": frame.get_column(name).cast(pl.String, strict=False)})
                .with_columns(at)
                .filter(frame.get_column(name).is_not_null() & typed.get_column(name).is_null())
                .select(
                    "_at",
                    pl.format("{}: cannot read '{}' as {}", pl.lit(name), pl.col("value"), pl.lit(schema.columns[name].type)).alias(
                        "reason"
                    ),
                )
                for name in lost
            ]
        )
    out = []
    start = 0
    for height, extra in zip(heights, extras):
        rows = pl.int_range(height, dtype=pl.UInt32).alias(SOURCE_ROW)
        mine = failures.filter(pl.col("_at").is_between(start, start + height - 1)) if lost else failures
        cast_failures = mine.select((pl.col("_at") - start).alias(SOURCE_ROW), "reason")
        out.append(
            ConformedFile(
                typed.slice(start, height).with_columns(rows), frame.slice(start, height).with_columns(rows), cast_failures, extra
            )
        )
        start += height
    return out
