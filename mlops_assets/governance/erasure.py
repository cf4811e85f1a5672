"""Erasure of a data subject (GDPR art. 17): every row a predicate matches leaves raw, quarantine,
features, batch scores and the prediction log, the features its rows shaped (their days', and those of
the days whose history statistics counted them) are computed again without them, the Evidently drift reports
rendered from them are deleted, old Delta versions are vacuumed after the declared retention, the erasure is
audited (counts per table and the predicate, never the values), and every model version whose training window
held those rows is tagged, so the retrain sensor replaces it.

The predicate is a small language over declared columns, `tailnum = "N24211" and origin in ("EWR",
"JFK")`, parsed here and never passed through as SQL: columns are checked against the declaration,
literals against the column's type, and the SQL Delta runs is written from the parsed form.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.feature_contract import load_feature_module
from mlops_assets.core.names import (
    BATCH_SCORES,
    ERASED_TAG,
    FEATURES,
    PARTITION_COLUMN,
    PREDICTION_LOG,
    PROFILES,
    QUARANTINE,
    RAW,
    SOURCE_ROW,
    SUBJECT_PREFIX,
)
from mlops_assets.core.partitions import shift
from mlops_assets.data.features import featurize
from mlops_assets.governance import erased_reports
from resources.audit_log import AuditEvent, record
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.pipeline_tables import appended_us
from resources.registered_models import plan_of

KEYED_TABLES = (QUARANTINE, FEATURES, BATCH_SCORES)  # rows found by the raw rows they came from
OPERATORS = {"=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_TOKEN = re.compile(r"""\s*(?:(?P<str>"[^"]*"|'[^']*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op><=|>=|==|!=|<>|[=<>(),])|(?P<word>[A-Za-z_]\w*))""")


class PredicateError(ValueError):
    """A --where the platform cannot use; the message says which part and why."""


@dataclass(frozen=True)
class Clause:
    column: str
    op: str  # = != < <= > >= in
    values: tuple


@dataclass(frozen=True)
class Predicate:
    text: str
    clauses: tuple[Clause, ...]

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(c.column for c in self.clauses))

    def expr(self, prefix: str = "") -> pl.Expr:
        parts = []
        for c in self.clauses:
            col = pl.col(prefix + c.column)
            if c.op == "in":
                parts.append(col.is_in(list(c.values)))
            else:
                v = c.values[0]
                parts.append({"=": col == v, "!=": col != v, "<": col < v, "<=": col <= v, ">": col > v, ">=": col >= v}[c.op])
        out = parts[0]
        for p in parts[1:]:
            out = out & p
        return out

    def sql(self, prefix: str = "") -> str:
        def lit(v) -> str:
            if isinstance(v, bool):  # before repr: Python's True is no SQL literal
                return "true" if v else "false"
            if isinstance(v, date):  # dates and datetimes as ISO text, which Delta casts to the column's type
                v = v.isoformat()
            return "'" + v.replace("'", "''") + "'" if isinstance(v, str) else repr(v)

        parts = []
        for c in self.clauses:
            name = f'"{prefix}{c.column}"'  # quoted: a column may be named like a SQL keyword
            if c.op == "in":
                parts.append(f"{name} IN ({', '.join(lit(v) for v in c.values)})")
            else:
                parts.append(f"{name} {c.op} {lit(c.values[0])}")
        return " AND ".join(parts)


def parse_predicate(text: str, decl: PipelineDeclaration) -> Predicate:
    """`col op literal [and ...]` with op one of = != < <= > >= or `in (a, b)`; strings quoted ' or "."""
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise PredicateError(f"--where: cannot read {text[pos:].strip()[:30]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    clauses, i = [], 0

    def literal(j: int, column: str):
        kind, value = tokens[j] if j < len(tokens) else (None, None)
        spec = decl.table_schema.columns[column]
        if kind == "str":
            if spec.type not in ("str", "date", "datetime"):
                raise PredicateError(f"--where: {column} is a {spec.type} column; {value} is a string")
            text = value[1:-1]
            try:
                if spec.type == "date":
                    return date.fromisoformat(text)
                if spec.type == "datetime":
                    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
                    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            except ValueError:
                raise PredicateError(f"--where: {column} is a {spec.type} column; {value} is not an ISO {spec.type}") from None
            return text
        if kind == "num" and spec.type != "bool":
            if spec.type in ("str", "date", "datetime"):
                raise PredicateError(f"--where: {column} is a {spec.type} column; compare it with a quoted value, not {value}")
            if "." in value and spec.type.startswith("int"):
                raise PredicateError(f"--where: {column} is an {spec.type} column; {value} is not an integer")
            if spec.type.startswith("float"):
                return float(value)  # one type per list
            number, bits = int(value), int(spec.type[3:])
            if not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
                # Delta cannot cast it to the column's type: its delete of raw failed after the other tables' deletes
                raise PredicateError(
                    f"--where: {column} is an {spec.type} column; {value} is outside its range "
                    f"({-(2 ** (bits - 1))} .. {2 ** (bits - 1) - 1})"
                )
            return number
        if kind == "word" and spec.type == "bool" and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if spec.type == "bool":  # it had no literal: a bool column could not be named at all
            raise PredicateError(f"--where: {column} is a bool column; compare it with true or false, not {value or 'nothing'}")
        if kind == "word" and spec.type in ("str", "date", "datetime"):  # carrier = UA
            raise PredicateError(f'--where: {column} is a {spec.type} column; quote its value, as in {column} = "{value}"')
        raise PredicateError(f"--where: expected a value after {column}, found {value or 'the end'}")

    while i < len(tokens):
        kind, column = tokens[i]
        if kind != "word":
            raise PredicateError(f"--where: expected a column name, found {column!r}")
        if column not in decl.table_schema.columns:
            raise PredicateError(
                f"--where: {column} is not a declared column of {decl.name}; declared: {', '.join(decl.table_schema.columns)}"
            )
        kind, op = tokens[i + 1] if i + 1 < len(tokens) else (None, None)
        if kind == "word" and op.lower() == "in":
            if i + 2 >= len(tokens) or tokens[i + 2][1] != "(":
                raise PredicateError(f"--where: `{column} in` needs a parenthesized list")
            values, j = [], i + 3
            while True:
                values.append(literal(j, column))
                j += 1
                if j < len(tokens) and tokens[j][1] == ",":
                    j += 1
                    continue
                if j < len(tokens) and tokens[j][1] == ")":
                    break
                raise PredicateError(f"--where: `{column} in (...)` is not closed")
            clauses.append(Clause(column, "in", tuple(values)))
            i = j + 1
        elif kind == "op" and op in OPERATORS:
            clauses.append(Clause(column, OPERATORS[op], (literal(i + 2, column),)))
            i += 3
        else:
            raise PredicateError(f"--where: expected an operator after {column} (= != < <= > >= in), found {op or 'the end'}")
        if i < len(tokens):
            if tokens[i][0] == "word" and tokens[i][1].lower() == "and":
                i += 1
                if i == len(tokens):
                    raise PredicateError("--where: nothing after `and`")
            else:
                raise PredicateError(f"--where: expected `and` between conditions, found {tokens[i][1]!r}")
    if not clauses:
        raise PredicateError("--where: an erasure needs a condition (an empty one would match every row)")
    return Predicate(text.strip(), tuple(clauses))


@dataclass
class Erasure:
    erasure_id: str
    predicate: str
    dry_run: bool
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows matched (deleted unless a dry run)
    partitions: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)  # partitions whose features were computed again without the rows
    held_back: dict[str, str] = field(default_factory=dict)  # of those, the ones the features asset holds back, and why
    features_version: int | None = None  # the commit of the recomputed features
    tagged_versions: list[int] = field(default_factory=list)
    drift_reports: int = 0  # Evidently drift reports rendered from the rows (removed unless a dry run)
    vacuumed_files: int = 0
    retention_hours: int = 0
    unsearchable_log_rows: int = 0  # prediction-log rows without a subject column the predicate reads
    unit: str = "day"  # what a partition is called (the declaration's partitioning.unit)

    def report(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        counts = ", ".join(f"{t} {n}" for t, n in self.rows.items())
        days = (
            f"{self.partitions[0]} .. {self.partitions[-1]} ({len(self.partitions)} {self.unit}s)"
            if self.partitions
            else f"no {self.unit}s"
        )
        lines = [f"erasure {self.erasure_id}: {verb} rows where {self.predicate}: {counts}; {days}"]
        if self.recomputed:
            lines.append(
                f"{'would recompute' if self.dry_run else 'recomputed'} the features of {len(self.recomputed)} {self.unit}s "
                f"({self.recomputed[0]} .. {self.recomputed[-1]}): the erased rows' {self.unit}s and the later ones whose "
                "history statistics counted them"
            )
        for partition, why in self.held_back.items():
            lines.append(f"features of {partition} held back: {why}")
        if self.tagged_versions:
            lines.append(
                f"model versions trained on them: {', '.join(f'v{v}' for v in self.tagged_versions)}"
                + (" (would be tagged)" if self.dry_run else f" (tagged {ERASED_TAG}; the retrain sensor replaces the champion)")
            )
        if self.drift_reports:
            lines.append(
                f"{'would remove' if self.dry_run else 'removed'} {self.drift_reports} Evidently drift reports rendered from "
                "them (from the versions' MLflow runs; drift_metrics keeps their scores)"
            )
        if self.unsearchable_log_rows:
            lines.append(
                f"warning: {self.unsearchable_log_rows} prediction-log rows carry no subject_ value for the columns of the "
                "predicate (logged before governance.subject_columns named them, or by requests without them): this "
                "erasure could not search them"
            )
        if not self.dry_run and self.retention_hours == 0:
            lines.append(f"vacuumed {self.vacuumed_files} data files: the rows are gone from every Delta version too")
        elif not self.dry_run:
            lines.append(
                f"vacuumed {self.vacuumed_files} data files older than {self.retention_hours:g} h; Delta versions from the last "
                f"{self.retention_hours:g} h still hold the rows until a later vacuum (`mlops erase` again with the same --where)"
            )
        return "\n".join(lines)


DAYS_PER_DELETE = 50  # a delete predicate per batch of days: one OR term per day over years of days overwhelms the parser


def _key_predicates(keys: pl.DataFrame) -> list[str]:
    """Delete predicates for these (partition, source row) keys, a few dozen days each."""
    per_day = keys.group_by(PARTITION_COLUMN).agg(pl.col(SOURCE_ROW).sort()).sort(PARTITION_COLUMN).rows()
    return [
        " OR ".join(f"({PARTITION_COLUMN} = '{day}' AND {SOURCE_ROW} IN ({', '.join(str(r) for r in rows)}))" for day, rows in chunk)
        for chunk in (per_day[i : i + DAYS_PER_DELETE] for i in range(0, len(per_day), DAYS_PER_DELETE))
    ]


def _shaped_by(delta: DeltaLakeResource, decl: PipelineDeclaration, partitions: list[str]) -> list[str]:
    """The partitions whose features rows of `partitions` shaped: those partitions, and the featurized ones within
    `features.history_days` after one, whose history statistics counted them (the window the features asset reads)."""
    if not partitions:
        return []
    featurized = set(delta.partitions(decl.name, FEATURES))
    shaped = set(partitions)
    for key in partitions:
        after = key
        for _ in range(decl.features.history_days):
            after = shift(decl, after, 1)
            if after in featurized:
                shaped.add(after)
    return sorted(shaped)


def _trained_on(mlflow: MlflowRegistryResource, pipeline: str, partitions: list[str]) -> list[int]:
    """Registered versions whose training window (hold-out included) covers any of these days."""
    if not partitions:
        return []
    found = []
    for mv in mlflow.client().search_model_versions(f"name='{pipeline}'"):
        try:
            plan = plan_of(mv)
        except LookupError:
            continue
        if any(plan.partition_start <= p <= plan.partition_end for p in partitions):
            found.append(int(mv.version))
    return sorted(found)


def erase(
    decl: PipelineDeclaration,
    delta: DeltaLakeResource,
    mlflow: MlflowRegistryResource,
    where: str,
    by: str,
    reason: str,
    dry_run: bool = False,
    dagster_run_id: str = "",
) -> Erasure:
    if not by.strip() or not reason.strip():
        raise PredicateError("an erasure needs who asks for it (--by) and why (--reason)")
    predicate = parse_predicate(where, decl)
    subjects = set(decl.governance.subject_columns)
    logged = delta.scan(decl.name, PREDICTION_LOG)
    if logged is not None and not set(predicate.columns) <= subjects:
        outside = [c for c in predicate.columns if c not in subjects]
        raise PredicateError(
            f"--where uses {outside}, which the prediction log does not carry: it logs governance.subject_columns "
            f"({', '.join(sorted(subjects)) or 'none declared'}); declare them, or erase by those columns"
        )
    result = Erasure(
        uuid.uuid4().hex[:12], predicate.text, dry_run, retention_hours=decl.governance.erasure_retention_hours, unit=decl.partitioning.unit
    )
    raw = delta.scan(decl.name, RAW)
    keys = (
        raw.filter(predicate.expr()).select(PARTITION_COLUMN, SOURCE_ROW).collect()
        if raw is not None
        else pl.DataFrame(schema={PARTITION_COLUMN: pl.String, SOURCE_ROW: pl.UInt32})
    )
    result.rows[RAW] = keys.height
    result.partitions = sorted(keys.get_column(PARTITION_COLUMN).unique().to_list())
    for table in KEYED_TABLES:
        lf = delta.scan(decl.name, table)
        if lf is None or not keys.height:
            result.rows[table] = 0
            continue
        result.rows[table] = lf.join(keys.lazy(), on=[PARTITION_COLUMN, SOURCE_ROW], how="semi").select(pl.len()).collect().item()
    erased_log = pl.DataFrame(schema={"model_version": pl.Int64, "appended_us": pl.Int64})  # served rows: what serving drift read
    if logged is not None:
        carried = logged.collect_schema()
        present = all(SUBJECT_PREFIX + c in carried for c in predicate.columns)
        result.rows[PREDICTION_LOG] = logged.filter(predicate.expr(SUBJECT_PREFIX)).select(pl.len()).collect().item() if present else 0
        if result.rows[PREDICTION_LOG]:
            matched = logged.filter(predicate.expr(SUBJECT_PREFIX) & pl.col("served"))
            erased_log = matched.select(pl.col("model_version").cast(pl.Int64), appended_us(logged).alias("appended_us")).collect()
        # rows logged without a subject column the predicate reads (before it was declared, or a request without
        # it) cannot be matched: counted, so the report and the audit row say what this erasure could not search
        unmarked = [pl.col(SUBJECT_PREFIX + c).is_null() for c in predicate.columns if SUBJECT_PREFIX + c in carried]
        result.unsearchable_log_rows = (
            logged.select(pl.len()).collect().item()
            if not present
            else logged.filter(pl.any_horizontal(unmarked)).select(pl.len()).collect().item()
        )
    else:
        result.rows[PREDICTION_LOG] = 0
    result.recomputed = _shaped_by(delta, decl, result.partitions)
    result.tagged_versions = _trained_on(mlflow, decl.name, result.partitions)
    reports = erased_reports.rendered_from(delta, decl.name, result.partitions, erased_log)
    result.drift_reports = reports.height
    if dry_run:
        return result

    # the tags and the audit row first: if a delete fails midway, a re-run (which finds fewer rows) still
    # leaves the versions tagged and the request on record; raw goes last, since the other tables are found through it
    with mlflow.writing() as client:
        for version in result.tagged_versions:
            client.set_model_version_tag(decl.name, str(version), ERASED_TAG, result.erasure_id)
    record(
        delta,
        decl.name,
        AuditEvent(
            action="erase",
            model_version=None,
            actor=by,
            reason=reason,
            metrics={
                "erasure_id": result.erasure_id,
                "predicate": predicate.text,
                "rows_deleted": result.rows,
                "days": len(result.partitions),
                "recomputed_partitions": len(result.recomputed),
                "tagged_versions": result.tagged_versions,
                "drift_reports_removed": result.drift_reports,
                "unsearchable_log_rows": result.unsearchable_log_rows,
                "retention_hours": decl.governance.erasure_retention_hours,
                "at": datetime.now(UTC).isoformat(),
            },
            dagster_run_id=dagster_run_id,
        ),
    )
    why = f"erasure {result.erasure_id} by {by}: {reason}"
    # before the rows go: a re-run finds the same rows, so the same reports, until the deletes are done
    erased_reports.remove(delta, mlflow, decl.name, reports, result.erasure_id, dagster_run_id, why)
    for table in KEYED_TABLES:
        if result.rows[table]:
            for where_keys in _key_predicates(keys):
                delta.delete(decl.name, table, where_keys, dagster_run_id, why)
    if result.rows[PREDICTION_LOG]:
        delta.delete(decl.name, PREDICTION_LOG, predicate.sql(SUBJECT_PREFIX), dagster_run_id, why)
    if result.tagged_versions:  # drift profiles of their windows (value counts; a small window's values): made again without the rows
        delta.delete(decl.name, PROFILES, f"model_version IN ({', '.join(map(str, result.tagged_versions))})", dagster_run_id, why)
    if keys.height:
        delta.delete(decl.name, RAW, predicate.sql(), dagster_run_id, why)
    if result.recomputed:  # from raw without the rows, in order, as the features asset computes them; before the vacuum takes the old files
        featurized = featurize(delta, decl, load_feature_module(decl), result.recomputed, dagster_run_id)
        result.held_back, result.features_version = featurized.held, featurized.version
    for table in (RAW, *KEYED_TABLES, PREDICTION_LOG, PROFILES):  # every table, every time: a re-run completes an interrupted vacuum
        result.vacuumed_files += len(delta.vacuum(decl.name, table, decl.governance.erasure_retention_hours))
    return result
