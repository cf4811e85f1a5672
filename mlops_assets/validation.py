"""The validation gate: a pandera schema built from the declaration, row by row.

Every failing row gets a readable reason; the split is exact, so
raw rows = clean rows + quarantined rows. Duplicate keys quarantine every copy
(pandera's polars backend reports them all, and which copy is right is unknown).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandera.polars as pa
import polars as pl

from mlops_assets.declaration import SchemaSpec
from mlops_assets.ingest import SOURCE_ROW, ConformedFile

REASON = "_reason"
ORIGINAL = "_original"


def pandera_schema(schema: SchemaSpec) -> pa.DataFrameSchema:
    columns = {}
    for name, spec in schema.columns.items():
        checks = []
        if spec.min is not None:
            checks.append(pa.Check.ge(spec.min))
        if spec.max is not None:
            checks.append(pa.Check.le(spec.max))
        if spec.allowed is not None:
            checks.append(pa.Check.isin(list(spec.allowed)))
        columns[name] = pa.Column(spec.dtype, nullable=spec.nullable, checks=checks)
    return pa.DataFrameSchema(columns, unique=list(schema.unique) or None, strict=False)


def _readable(check: str, column: str | None, value: str | None, schema: SchemaSpec) -> str:
    if check == "multiple_fields_uniqueness" or check.startswith("field_uniqueness"):
        return f"duplicate key ({', '.join(schema.unique)})"
    if check == "not_nullable":
        return f"{column}: null in a required column"
    if check.startswith("isin"):
        return f"{column}: unknown category '{value}'"
    m = re.match(r"(greater_than_or_equal_to|less_than_or_equal_to)\((.*)\)", check)
    if m:
        word = "below the minimum" if m.group(1).startswith("greater") else "above the maximum"
        return f"{column}: {value} is {word} {m.group(2)}"
    return f"{column}: failed {check} (got '{value}')"


@dataclass(frozen=True)
class ValidationResult:
    clean: pl.DataFrame
    quarantine: pl.DataFrame  # typed columns + _source_row + _reason + _original
    reasons: pl.DataFrame  # reason kind -> rows

    @property
    def failure_rate(self) -> float:
        total = self.clean.height + self.quarantine.height
        return self.quarantine.height / total if total else 0.0


def validate(conformed: ConformedFile, schema: SchemaSpec) -> ValidationResult:
    frame = conformed.frame
    data = frame.drop(SOURCE_ROW)
    problems = [conformed.cast_failures.select(pl.col(SOURCE_ROW).cast(pl.UInt32), pl.col("reason"))]
    try:
        pandera_schema(schema).validate(data, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        if cases.get_column("index").null_count() > 0:
            # a frame-level failure with no row (for example a wrong dtype): fail everything loudly
            bad = cases.filter(pl.col("index").is_null()).select("column", "check").unique().rows()
            raise ValueError(f"schema check failed for the whole file: {bad}") from err
        rows = frame.get_column(SOURCE_ROW)
        problems.append(
            pl.DataFrame(
                {
                    SOURCE_ROW: rows.gather(cases.get_column("index").cast(pl.UInt32)),
                    "reason": [
                        _readable(c, col, v, schema)
                        for c, col, v in cases.select("check", "column", "failure_case").iter_rows()
                    ],
                },
                schema={SOURCE_ROW: pl.UInt32, "reason": pl.String},
            )
        )
    all_problems = pl.concat(problems).unique()
    per_row = all_problems.group_by(SOURCE_ROW).agg(pl.col("reason").sort().str.join("; ").alias(REASON))
    quarantined = frame.join(per_row, on=SOURCE_ROW, how="inner").sort(SOURCE_ROW)
    originals = conformed.original.filter(pl.col(SOURCE_ROW).is_in(quarantined.get_column(SOURCE_ROW).implode()))
    original_json = originals.select(
        SOURCE_ROW,
        pl.struct(pl.exclude(SOURCE_ROW).cast(pl.String)).struct.json_encode().alias(ORIGINAL),
    )
    quarantined = quarantined.join(original_json, on=SOURCE_ROW, how="left")
    clean = frame.join(per_row.select(SOURCE_ROW), on=SOURCE_ROW, how="anti").sort(SOURCE_ROW)
    kinds = (
        all_problems.with_columns(pl.col("reason").str.replace(r"'[^']*'|-?\d+(\.\d+)?", "…", literal=False))
        .group_by("reason")
        .agg(pl.col(SOURCE_ROW).n_unique().alias("rows"))
        .sort("rows", descending=True)
    )
    return ValidationResult(clean=clean, quarantine=quarantined, reasons=kinds)
