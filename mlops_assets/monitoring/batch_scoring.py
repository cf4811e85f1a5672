"""The champion's predictions over a range of feature days: in this process, or on Ray Data workers.

Both engines call the same ``score_day`` on the same rows (the features table at one Delta
version, read once for the whole range), so their tables are equal; only where the work runs
differs. On Ray (``batch_scoring.engine: ray``) the days are a Ray Data dataset of one row
per day; an actor pool of ``batch_scoring.ray_workers`` actors each builds the booster once
from the registered model's text and then reads and scores whole days by itself (storage
options travel hidden, as Ray training's do), and the driver writes every day in one Delta
commit. Ray is imported only there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import FEATURES, PARTITION_COLUMN, SOURCE_ROW
from mlops_assets.models import training
from mlops_assets.models.ray_training import HiddenOptions, check_capacity
from resources.delta_lake import DeltaLakeResource
from resources.registered_models import Champion


def scores(booster, frame: pl.DataFrame, champ: Champion) -> pl.DataFrame:
    """Predictions in the registry contract's terms: a value, a probability or a label."""
    raw = training.predict(booster, training.matrix(frame, champ.plan.feature_columns), champ.plan.task)
    if champ.plan.task == "regression":
        return pl.DataFrame({"prediction": raw.astype(float)})
    classes = [str(c) for c in champ.plan.classes]
    if champ.plan.task == "binary":
        return pl.DataFrame({"prediction": [classes[int(p >= 0.5)] for p in raw], "score": raw.astype(float)})
    best = np.asarray(raw).argmax(axis=1)
    return pl.DataFrame({"prediction": [classes[i] for i in best], "score": np.asarray(raw).max(axis=1).astype(float)})


@dataclass(frozen=True)
class ScoringJob:
    """What a scorer needs besides the model: which rows (table at a version) and which columns to keep."""

    table_uri: str
    version: int
    keep: tuple[str, ...]  # key columns, the target and the source row, ahead of the scores

    def read(self, partitions: list[str], storage_options: dict | None) -> dict[str, pl.DataFrame]:
        """The days' feature rows at the pinned version, in one read, each day in source-row order."""
        frame = (
            pl.scan_delta(self.table_uri, version=self.version, storage_options=storage_options)
            .filter(pl.col(PARTITION_COLUMN).is_in(partitions))
            .collect()
            .sort(PARTITION_COLUMN, SOURCE_ROW)
        )
        return {key: day for (key,), day in frame.partition_by(PARTITION_COLUMN, as_dict=True, maintain_order=True).items()}


def score_day(booster, frame: pl.DataFrame, champ: Champion, job: ScoringJob) -> pl.DataFrame:
    return pl.concat([frame.select(*job.keep), scores(booster, frame, champ)], how="horizontal").with_columns(
        pl.lit(champ.version, pl.Int64).alias("model_version")
    )


def scoring_job(decl: PipelineDeclaration, delta: DeltaLakeResource, partitions: list[str]) -> ScoringJob:
    """The features table pinned at its current version; fails naming the first day that has no features."""
    table = delta.table(decl.name, FEATURES)
    present = {p[PARTITION_COLUMN] for p in table.partitions()} if table is not None else set()
    missing = [p for p in partitions if p not in present]
    if missing:
        raise MissingFeatures(f"no features for partition {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    keep = (*dict.fromkeys(decl.table_schema.unique), decl.target.column, SOURCE_ROW)
    return ScoringJob(delta.table_uri(decl.name, FEATURES), table.version(), tuple(dict.fromkeys(keep)))


class MissingFeatures(LookupError):
    pass


def score_locally(booster, champ: Champion, job: ScoringJob, partitions: list[str], delta: DeltaLakeResource) -> dict[str, pl.DataFrame]:
    days = job.read(partitions, delta.resolved_storage_options())
    return {p: score_day(booster, days[p], champ, job) for p in partitions}


class _DayScorer:
    """A Ray Data actor: the booster is built once per actor, then every day it is handed is read and scored."""

    def __init__(self, model_text: str, champ: Champion, job: ScoringJob, storage_options):
        import lightgbm as lgb

        self.booster = lgb.Booster(model_str=model_text)
        self.champ, self.job, self.options = champ, job, storage_options

    def __call__(self, batch: dict) -> "object":
        days = self.job.read(batch[PARTITION_COLUMN].tolist(), self.options.value)
        frames = [
            score_day(self.booster, day, self.champ, self.job).with_columns(pl.lit(p).alias(PARTITION_COLUMN)) for p, day in days.items()
        ]
        return pl.concat(frames).to_arrow(compat_level=pl.CompatLevel.oldest())


def score_on_ray(
    booster, champ: Champion, job: ScoringJob, partitions: list[str], delta: DeltaLakeResource, workers: int, num_cpus: float
) -> dict[str, pl.DataFrame]:
    """The same days scored by an actor pool of `workers` Ray Data actors (one model each)."""
    import pyarrow as pa
    import ray

    check_capacity(workers, {"CPU": num_cpus}, workers_setting="batch_scoring.ray_workers", size_setting="batch_scoring.num_cpus")
    days = ray.data.from_items([{PARTITION_COLUMN: p} for p in partitions], override_num_blocks=len(partitions))
    scored = days.map_batches(
        _DayScorer,
        fn_constructor_kwargs={
            "model_text": booster.model_to_string(),
            "champ": champ,
            "job": job,
            "storage_options": HiddenOptions(delta.resolved_storage_options()),
        },
        batch_size=1,
        concurrency=min(workers, len(partitions)),
        num_cpus=num_cpus,
    )
    table = pa.concat_tables(ray.get(scored.to_arrow_refs()))
    frame = pl.from_arrow(table)
    by_day = frame.partition_by(PARTITION_COLUMN, as_dict=True)
    return {p: by_day[(p,)].drop(PARTITION_COLUMN) for p in partitions}
