"""The Dagster partitions a declaration's `partitioning` section stands for: their definition and key
arithmetic (hourly, daily, weekly, monthly), how a range of them runs, and which rows of a landed file
belong to its partition. Every other module steps through partitions with these, never with dates."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, time, timedelta

import dagster as dg
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration

# Dagster's key formats: an hourly key carries the hour; weekly (from Sunday) and monthly keys are their first day
KEY_FORMATS = {"hourly": "%Y-%m-%d-%H:%M", "daily": "%Y-%m-%d", "weekly": "%Y-%m-%d", "monthly": "%Y-%m-%d"}
# the same, as messages show them to a person (who read "(%Y-%m-%d)" and had to know strftime)
KEY_FORMS = {"hourly": "YYYY-MM-DD-HH:MM", "daily": "YYYY-MM-DD", "weekly": "YYYY-MM-DD, a Sunday", "monthly": "YYYY-MM-01"}
DEFINITIONS = {
    "hourly": dg.HourlyPartitionsDefinition,
    "daily": dg.DailyPartitionsDefinition,
    "weekly": dg.WeeklyPartitionsDefinition,
    "monthly": dg.MonthlyPartitionsDefinition,
}


def partitions_def(decl: PipelineDeclaration) -> dg.TimeWindowPartitionsDefinition:
    p = decl.partitioning
    fmt = KEY_FORMATS[p.kind]
    start = datetime.combine(p.start, time()).strftime(fmt)
    end = datetime.combine(p.end, time()).strftime(fmt) if p.end else None
    return DEFINITIONS[p.kind](start_date=start, end_date=end)


def key_time(decl: PipelineDeclaration, key: str) -> datetime:
    """The start of the partition `key` (naive, UTC); ValueError for a string that is no key of this kind."""
    return datetime.strptime(key, KEY_FORMATS[decl.partitioning.kind])


def key_at(decl: PipelineDeclaration, when: datetime) -> str:
    return when.strftime(KEY_FORMATS[decl.partitioning.kind])


def _step(kind: str, when: datetime, n: int) -> datetime:
    if kind == "hourly":
        return when + timedelta(hours=n)
    if kind == "daily":
        return when + timedelta(days=n)
    if kind == "weekly":
        return when + timedelta(weeks=n)
    months = when.year * 12 + when.month - 1 + n
    return when.replace(year=months // 12, month=months % 12 + 1)


def shift(decl: PipelineDeclaration, key: str, n: int) -> str:
    """The key `n` partitions after `key` (before, for a negative `n`)."""
    return key_at(decl, _step(decl.partitioning.kind, key_time(decl, key), n))


def partitions_before(decl: PipelineDeclaration, key: str, n: int) -> list[str]:
    """The `n` keys strictly before `key`, oldest first (the history window of `features.history_days`)."""
    start = key_time(decl, key)
    kind = decl.partitioning.kind
    return [key_at(decl, _step(kind, start, -i)) for i in range(n, 0, -1)]


def first_partition(decl: PipelineDeclaration) -> str:
    return partitions_def(decl).get_first_partition_key()  # type: ignore[return-value]


def partition_problem(decl: PipelineDeclaration, key: str, now: datetime | None = None) -> str | None:
    """Why `key` is not a partition to ingest (None when it is): not a key of the declared kind, not aligned
    to one (a weekly key must be a Sunday, a monthly one the 1st), outside the declared range, or not ended."""
    kind = decl.partitioning.kind
    try:
        start = key_time(decl, key)
    except ValueError:
        start = None
    if start is None or key_at(decl, start) != key:  # strptime also reads 2013-1-5 and other scripts' digits
        return f"{key} is not a {kind} partition key ({KEY_FORMS[kind]})"
    if kind == "weekly" and start.weekday() != calendar.SUNDAY:
        return f"{key} is not the first day of a week (weekly partitions start on Sunday)"
    if kind == "monthly" and start.day != 1:
        return f"{key} is not the first day of a month"
    if kind == "hourly" and start.minute:
        return f"{key} is not the start of an hour"
    p = decl.partitioning
    try:
        ends = _step(kind, start, 1)
    except (OverflowError, ValueError):  # 9999-12-31: its end is past what datetime holds (a landed name failed every tick)
        ends = None
    # as Dagster's partitions: each one whole between start and end (a week running past `end` is none)
    if start < datetime.combine(p.start, time()) or ends is None or (p.end is not None and ends > datetime.combine(p.end, time())):
        return f"{key} is outside the declared partitions ({p.start} .. {p.end or 'open'})"
    if ends > (now or datetime.now(UTC)).replace(tzinfo=None):
        return f"{key} has not ended yet"
    return None


def backfill_policy(decl: PipelineDeclaration) -> dg.BackfillPolicy:
    """A range of partitions (a backfill from the UI, a burst of landed files) runs as one run, or as runs
    of `partitioning.partitions_per_run` partitions each where declared (spread over pods by a K8s launcher)."""
    per_run = decl.partitioning.partitions_per_run
    return dg.BackfillPolicy.single_run() if per_run is None else dg.BackfillPolicy.multi_run(max_partitions_per_run=per_run)


def runs_of(decl: PipelineDeclaration, keys: list[str]) -> list[list[str]]:
    """`keys` (sorted) grouped into what one run each can cover: contiguous ranges, at most
    `partitioning.partitions_per_run` long where declared (a burst of landed files becomes a few runs, not one per file)."""
    per_run = decl.partitioning.partitions_per_run
    groups: list[list[str]] = []
    for key in sorted(keys):
        last = groups[-1] if groups else None
        if last and shift(decl, last[-1], 1) == key and (per_run is None or len(last) < per_run):
            last.append(key)
        else:
            groups.append([key])
    return groups


def misplaced_in_files(decl: PipelineDeclaration, frames: list[pl.DataFrame], partitions: list[str], row_id: str) -> list[pl.DataFrame]:
    """Per file (landed for the partition at the same place in `partitions`): its rows whose declared time
    falls outside the partition's window, as (`row_id`, reason); none when the declaration names no
    `partitioning.time_column`. One pass over the rows of all the files of a range."""
    time = decl.partitioning.time_column
    none = pl.DataFrame(schema={row_id: pl.UInt32, "reason": pl.String})
    if time is None or not frames:
        return [none] * len(frames)
    kind = decl.partitioning.kind
    begins = [key_time(decl, p) for p in partitions]  # each partition's window, naive UTC (as Dagster's)
    ends = [_step(kind, b, 1) for b in begins]
    columns = [time] if isinstance(time, str) else list(time)
    if isinstance(time, str):
        when = pl.col(time)
        if decl.table_schema.columns[time].type == "date":
            begins, ends = [b.date() for b in begins], [e.date() for e in ends]
        elif frames[0].schema[time].time_zone:  # type: ignore[union-attr]
            when = when.dt.replace_time_zone(None)
        label = time
    else:
        year, month, day = time
        # not pl.date: an impossible date (month 13) is the schema's to report, not an error here
        part = [pl.col(c).cast(pl.String).str.zfill(w) for c, w in ((year, 4), (month, 2), (day, 2))]
        when = pl.format("{}-{}-{}", *part).str.to_date("%Y-%m-%d", strict=False)
        begins, ends = [b.date() for b in begins], [e.date() for e in ends]
        label = f"{year}/{month}/{day}"
    windows = pl.DataFrame({"_file": pl.Series(range(len(frames)), dtype=pl.UInt32), "_key": partitions, "_start": begins, "_end": ends})
    rows = pl.concat([f.select(row_id, *columns).with_columns(pl.lit(i, pl.UInt32).alias("_file")) for i, f in enumerate(frames)])
    impossible = pl.lit(False)
    reason = pl.format("{}: {} is outside partition {}", pl.lit(label), pl.col("_when").cast(pl.String), pl.col("_key"))
    if not isinstance(time, str):
        # rows whose year*10000 + month*100 + day lies in the window's are in it, unless the day may not exist in its
        # month (February 31 lies between February 28 and March 1): only the others are read as dates, as text
        number = pl.col(year).cast(pl.Int64) * 10_000 + pl.col(month).cast(pl.Int64) * 100 + pl.col(day).cast(pl.Int64)
        as_number = [b.year * 10_000 + b.month * 100 + b.day for b in begins], [e.year * 10_000 + e.month * 100 + e.day for e in ends]
        numbers = pl.DataFrame({"_file": windows.get_column("_file"), "_from": as_number[0], "_to": as_number[1]})
        maybe_no_such_day = pl.col(day).cast(pl.Int64) > 28
        rows = (
            rows.join(numbers, on="_file", how="left")
            .filter((number < pl.col("_from")) | (number >= pl.col("_to")) | maybe_no_such_day)
            .drop("_from", "_to")
        )
        # parts within the schema's ranges that make no date (2013-02-31): quarantined here, or the features of
        # the whole range failed on it; a part out of range (month 13) is the schema's to report
        within = pl.col(month).cast(pl.Int64).is_between(1, 12) & pl.col(day).cast(pl.Int64).is_between(1, 31)
        impossible = pl.col("_when").is_null() & pl.all_horizontal(pl.col(c).is_not_null() for c in columns) & within
        parts = [pl.col(c).cast(pl.String) for c in columns]
        reason = pl.when(impossible).then(pl.format("{}: {}-{}-{} is not a calendar date", pl.lit(label), *parts)).otherwise(reason)
    outside = (
        rows.with_columns(when.alias("_when"))
        .join(windows, on="_file", how="left")
        .filter((pl.col("_when").is_not_null() & ((pl.col("_when") < pl.col("_start")) | (pl.col("_when") >= pl.col("_end")))) | impossible)
        .select("_file", pl.col(row_id).cast(pl.UInt32), reason.alias("reason"))
    )
    found = {key: part.drop("_file") for (key,), part in outside.partition_by("_file", as_dict=True).items()}
    return [found.get(i, none) for i in range(len(frames))]
