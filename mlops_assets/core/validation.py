"""The validation gate: a pandera schema built from the declaration, row by row.

Every failing row gets a readable reason; the split is exact, so
raw rows = clean rows + quarantined rows. Duplicate keys quarantine every copy
(pandera's polars backend reports them all, and which copy is right is unknown).

The pandera schema is the one definition of what valid means. Running it through
pandera's polars backend evaluates every check as its own query (about 170 per
flights partition), so by default the schema's checks are compiled into one
polars pass over the frame: the same expressions pandera's built-in checks and
core checks use (nullable, ``ge``/``le``/``isin``..., multi-column uniqueness),
with the same null handling, giving failure cases in pandera's own shape
(index, column, check, failure_case) for the failing rows only. A schema with
anything the compiler does not know (custom checks, grouped checks, a dtype
that does not match) is validated by pandera itself. ``engine="pandera"`` forces
that path; tests check that both give the same split and the same reasons.
"""

from __future__ import annotations

import functools
import operator
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandera.polars as pa
import polars as pl
from pandera.engines import polars_engine

from mlops_assets.core.declaration import SchemaSpec
from mlops_assets.core.names import SOURCE_ROW, VALID_ROW
from mlops_assets.core.records import ConformedFile

REASON = "_reason"
ORIGINAL = "_original"
CASES_SCHEMA = {"index": pl.UInt32, "column": pl.String, "check": pl.String, "failure_case": pl.String}


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
        bound = "minimum" if m.group(1).startswith("greater") else "maximum"
        if value == "NaN":  # polars orders NaN above every number, so a maximum is what it fails
            return f"{column}: NaN is not a number (the column's {bound} is {m.group(2)})"
        word = "below the" if bound == "minimum" else "above the"
        return f"{column}: {value} is {word} {bound} {m.group(2)}"
    return f"{column}: failed {check} (got '{value}')"


# -- the compiled pass ------------------------------------------------------------------------------

# pandera's built-in polars checks (pandera/backends/polars/builtin_checks.py), as expressions
_BUILTIN: dict = {
    "equal_to": lambda c, k: c.eq(k["value"]),
    "not_equal_to": lambda c, k: c.ne(k["value"]),
    "greater_than": lambda c, k: c.gt(k["min_value"]),
    "greater_than_or_equal_to": lambda c, k: c.ge(k["min_value"]),
    "less_than": lambda c, k: c.lt(k["max_value"]),
    "less_than_or_equal_to": lambda c, k: c.le(k["max_value"]),
    "isin": lambda c, k: c.is_in(list(k["allowed_values"])),
    "notin": lambda c, k: c.is_in(list(k["forbidden_values"])).not_(),
}


@dataclass(frozen=True)
class _Rule:
    """One check of the schema: `failed` is True where a row fails it."""

    column: str | None  # None: a frame-wide check (uniqueness)
    check: str  # the check's identifier as pandera reports it
    failed: pl.Expr | None  # a row-wise expression, or None for the uniqueness of `subset`
    subset: tuple[str, ...] = ()


def _identifier(check: pa.Check) -> str:
    # as pandera's failure_cases_metadata names a check
    return check.error if check.error is not None else (check.name if check.name is not None else str(check))


def compile_schema(dfs: pa.DataFrameSchema, frame_schema: pl.Schema) -> list[_Rule] | None:
    """The schema's checks as expressions over a frame of `frame_schema`; None when some part
    cannot be compiled faithfully (then pandera validates)."""
    if dfs.checks or dfs.parsers or dfs.coerce or dfs.add_missing_columns or dfs.strict:
        return None
    rules: list[_Rule] = []
    for name, col in dfs.columns.items():
        if col.regex or col.unique or col.coerce or col.parsers or name not in frame_schema:
            return None
        dtype = frame_schema[name]
        if col.dtype is not None:
            try:
                if not col.dtype.check(polars_engine.Engine.dtype(dtype)):
                    return None  # pandera reports the wrong dtype for the whole frame
            except Exception:
                return None
        c = pl.col(name)
        if not col.nullable:
            null = c.is_null() | c.is_nan() if dtype.is_float() else c.is_null()
            rules.append(_Rule(name, "not_nullable", null))
        for check in col.checks:
            build = _BUILTIN.get(check.name)
            if build is None or check.groupby is not None or check.element_wise or check.n_failure_cases is not None:
                return None
            passed = build(c, check._check_kwargs)
            passed = passed | passed.is_null() if check.ignore_na else passed.fill_null(False)
            rules.append(_Rule(name, _identifier(check), passed.not_()))
    if dfs.unique:
        if not all(isinstance(x, str) for x in dfs.unique):
            return None
        subset = [x for x in dfs.unique if x in frame_schema]
        if subset:
            rules.append(_Rule(None, "multiple_fields_uniqueness", None, tuple(subset)))
    return rules


def _compiled_cases(data: pl.DataFrame, rules: list[_Rule], within: str | None = None) -> pl.DataFrame:
    """Failure cases of the compiled rules, in pandera's shape: one pass over the frame for
    every row-wise check, then the failing rows only. Keys are unique within `within` (a column
    naming the file of each row) when given."""
    row_rules = [r for r in rules if r.failed is not None]
    flags = data.select(*[r.failed.alias(f"_fail{i}") for i, r in enumerate(row_rules)]).get_columns() if row_rules else []
    for rule in rules:
        if rule.failed is None:  # as pandera's check_column_values_are_unique does it
            flags.append(data.select(*rule.subset, *([within] if within else [])).is_duplicated())
    ordered = row_rules + [r for r in rules if r.failed is None]
    if not flags:
        return pl.DataFrame(schema=CASES_SCHEMA)
    failing = functools.reduce(operator.or_, flags)
    if not failing.any():
        return pl.DataFrame(schema=CASES_SCHEMA)
    rows = data.with_row_index("index").filter(failing)
    index, column, check, value = [], [], [], []
    for rule, flag in zip(ordered, flags):
        hit = flag.filter(failing)
        if not hit.any():
            continue
        index.append(rows.get_column("index").filter(hit))
        n = index[-1].len()
        column.extend([rule.column] * n)
        check.extend([rule.check] * n)
        value.append(
            rows.get_column(rule.column).filter(hit).cast(pl.String) if rule.column is not None else pl.Series([None] * n, dtype=pl.String)
        )
    return pl.DataFrame(
        {"index": pl.concat(index).cast(pl.UInt32), "column": column, "check": check, "failure_case": pl.concat(value)},
        schema=CASES_SCHEMA,
    )


def _pandera_cases(data: pl.DataFrame, dfs: pa.DataFrameSchema) -> pl.DataFrame:
    """pandera's own lazy validation: its failure cases, or none."""
    try:
        dfs.validate(data, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        if cases.get_column("index").null_count() > 0:
            # a frame-level failure with no row (for example a wrong dtype): fail everything loudly
            bad = cases.filter(pl.col("index").is_null()).select("column", "check").unique().rows()
            raise ValueError(f"schema check failed for the whole file: {bad}") from err
        return cases.select(
            pl.col("index").cast(pl.UInt32),
            pl.col("column").cast(pl.String),
            pl.col("check").cast(pl.String),
            pl.col("failure_case").cast(pl.String),
        )
    return pl.DataFrame(schema=CASES_SCHEMA)


@dataclass(frozen=True)
class _Compiled:
    declaration: SchemaSpec  # held, so its id is not reused while this entry exists
    schema: pa.DataFrameSchema
    rules: dict  # the frame's dtypes -> compiled rules (None: pandera validates)


_SCHEMAS: dict[int, _Compiled] = {}


def _compiled_for(schema: SchemaSpec) -> _Compiled:
    """The pandera schema of a declaration and its compiled rules, built once per declaration object."""
    hit = _SCHEMAS.get(id(schema))
    if hit is None or hit.declaration is not schema:
        if len(_SCHEMAS) >= 64:
            _SCHEMAS.clear()
        hit = _Compiled(schema, pandera_schema(schema), {})
        _SCHEMAS[id(schema)] = hit
    return hit


def _schema_for(schema: SchemaSpec) -> pa.DataFrameSchema:
    return _compiled_for(schema).schema


def _rules(data: pl.DataFrame, schema: SchemaSpec, engine: str) -> list[_Rule] | None:
    compiled = _compiled_for(schema)
    if engine != "compiled":
        return None
    key = tuple(data.schema.items())
    if key not in compiled.rules:
        compiled.rules[key] = compile_schema(compiled.schema, data.schema)
    return compiled.rules[key]


def failure_cases(data: pl.DataFrame, schema: SchemaSpec, engine: Literal["compiled", "pandera"] = "compiled") -> pl.DataFrame:
    """Row-level failure cases of the declared pandera schema: index, column, check, failure_case."""
    rules = _rules(data, schema, engine)
    if rules is None:
        return _pandera_cases(data, _schema_for(schema))
    return _compiled_cases(data, rules)


@dataclass(frozen=True)
class ValidationResult:
    """One file's split: its rows (in source-row order) and which of them are valid. The clean rows are
    cut from them only when asked for: the raw write needs the flags, not a copy of the clean rows."""

    rows: pl.DataFrame  # every row of the file, as conformed
    valid: pl.Series  # one flag per row: True where the row passed
    quarantine: pl.DataFrame  # typed columns + _source_row + _reason + _original
    reasons: pl.DataFrame  # reason kind -> rows

    @functools.cached_property
    def clean(self) -> pl.DataFrame:
        return self.rows.filter(self.valid)

    @property
    def clean_rows(self) -> int:
        return self.rows.height - self.quarantine.height

    @property
    def failure_rate(self) -> float:
        return self.quarantine.height / self.rows.height if self.rows.height else 0.0


def validate(
    conformed: ConformedFile,
    schema: SchemaSpec,
    engine: Literal["compiled", "pandera"] = "compiled",
    misplaced: pl.DataFrame | None = None,
) -> ValidationResult:
    """Split a conformed file into clean and quarantined rows (with readable reasons). `misplaced` adds
    (_source_row, reason) problems found outside the schema, such as rows of another partition."""
    return validate_files([conformed], schema, engine, [misplaced])[0]


FILE = "_file"  # which of the files validated together a row came from


def validate_files(
    files: list[ConformedFile],
    schema: SchemaSpec,
    engine: Literal["compiled", "pandera"] = "compiled",
    misplaced: list[pl.DataFrame | None] | None = None,
) -> list[ValidationResult]:
    """`validate` for many files at once (a backfill's range): one pass of the checks over all their
    rows, keys unique within each file, each file's rows split and explained exactly as alone.

    A few dozen polars calls for the whole range instead of for each file: at 2,700 rows a
    partition, each call's fixed cost was most of the time. pandera's own engine (a schema the
    compiler does not take) still validates file by file."""
    if not files:
        return []
    misplaced = misplaced or [None] * len(files)
    frames = [f.frame if f.frame.get_column(SOURCE_ROW).is_sorted() else f.frame.sort(SOURCE_ROW) for f in files]
    rules = _rules(frames[0].drop(SOURCE_ROW), schema, engine)
    if rules is None and len(files) > 1:
        return [validate_files([f], schema, engine, [m])[0] for f, m in zip(files, misplaced)]
    file_of_row = np.repeat(np.arange(len(frames), dtype=np.uint32), [f.height for f in frames])
    frame = (frames[0] if len(frames) == 1 else pl.concat(frames)).with_columns(pl.Series(FILE, file_of_row, dtype=pl.UInt32))
    data = frame.drop(SOURCE_ROW)
    cases = _compiled_cases(data, rules, within=FILE) if rules is not None else _pandera_cases(data.drop(FILE), _schema_for(schema))
    keyed = {FILE: pl.UInt32, SOURCE_ROW: pl.UInt32, "reason": pl.String}
    problems = []
    for i, (conformed, extra) in enumerate(zip(files, misplaced)):
        for found in (extra, conformed.cast_failures):
            if found is not None and found.height:
                problems.append(found.select(pl.lit(i, pl.UInt32).alias(FILE), pl.col(SOURCE_ROW).cast(pl.UInt32), pl.col("reason")))
    if cases.height:
        at = cases.get_column("index")
        problems.append(
            pl.DataFrame(
                {
                    FILE: frame.get_column(FILE).gather(at),
                    SOURCE_ROW: frame.get_column(SOURCE_ROW).gather(at),
                    "reason": [_readable(c, col, v, schema) for c, col, v in cases.select("check", "column", "failure_case").iter_rows()],
                },
                schema=keyed,
            )
        )
    no_reasons = pl.DataFrame(schema={"reason": pl.String, "rows": pl.UInt32})
    if not problems:
        empty = frames[0].clear().with_columns(pl.lit(None, pl.String).alias(REASON), pl.lit(None, pl.String).alias(ORIGINAL))
        return [ValidationResult(f, pl.repeat(True, f.height, eager=True).alias(VALID_ROW), empty, no_reasons) for f in frames]
    all_problems = pl.concat(problems).unique()
    per_row = all_problems.group_by(FILE, SOURCE_ROW).agg(pl.col("reason").sort().str.join("; ").alias(REASON))
    # a row's flag from its (file, source row) key, one probe per row; the rows themselves are not copied
    row_key = pl.col(FILE).cast(pl.UInt64) * (1 << 32) + pl.col(SOURCE_ROW).cast(pl.UInt64)
    bad = frame.select(row_key.is_in(per_row.select(row_key.implode()).item()).alias("_quarantined")).to_series()
    # frame is in (file, _source_row) order, and the filter and the left joins keep it
    quarantined = frame.filter(bad).join(per_row, on=[FILE, SOURCE_ROW], how="left", maintain_order="left")
    # the values as landed, of the quarantined rows: files landed with the same column types are read together
    by_types: dict[tuple, list[int]] = {}
    for i in per_row.get_column(FILE).unique().sort().to_list():
        by_types.setdefault(tuple(files[i].original.schema.items()), []).append(i)
    keys = per_row.select(FILE, SOURCE_ROW)
    original_json = pl.concat(
        [
            pl.concat([files[i].original for i in same])
            .with_columns(pl.Series(FILE, np.repeat(np.array(same, dtype=np.uint32), [files[i].original.height for i in same])))
            .join(keys, on=[FILE, SOURCE_ROW], how="semi")
            .select(FILE, SOURCE_ROW, pl.struct(pl.exclude(SOURCE_ROW, FILE).cast(pl.String)).struct.json_encode().alias(ORIGINAL))
            for same in by_types.values()
        ]
    )
    quarantined = quarantined.join(original_json, on=[FILE, SOURCE_ROW], how="left", maintain_order="left")
    kinds = (
        all_problems.lazy()
        .with_columns(pl.col("reason").str.replace(r"'[^']*'|-?\d+(\.\d+)?", "…", literal=False))
        .group_by(FILE, "reason")
        .agg(pl.col(SOURCE_ROW).n_unique().alias("rows"))
        .sort(FILE, "rows", "reason", descending=[False, True, False])
        .collect()
    )
    valid = bad.not_().alias(VALID_ROW)
    quarantined_of = _by_file(quarantined)
    kinds_of = _by_file(kinds)
    results = []
    start = 0
    for i, f in enumerate(frames):
        results.append(
            ValidationResult(
                rows=f,
                valid=valid.slice(start, f.height),
                quarantine=quarantined_of.get(i, quarantined.clear().drop(FILE)),
                reasons=kinds_of.get(i, no_reasons),
            )
        )
        start += f.height
    return results


def _by_file(frame: pl.DataFrame) -> dict[int, pl.DataFrame]:
    return {key: part for (key,), part in frame.partition_by(FILE, as_dict=True, maintain_order=True, include_key=False).items()}
