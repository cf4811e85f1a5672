"""LightGBM training on a window of feature partitions, split by time.

The window's most recent ``gates.holdout_days`` days are the hold-out the gates
score on, the ``training.validation_days`` before them drive early stopping,
and the rest is trained on: never a random split across time. Everything a
re-run needs is in the ``TrainingPlan``, recorded on the model version, so
``mlops reproduce`` trains again from the same Delta version with the same
settings. LightGBM is deterministic given ``deterministic=True``, a fixed seed,
a fixed thread count and the same rows in the same order (rows are sorted by
partition and source row, never read in file order).
"""

from __future__ import annotations

import ctypes
import functools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from mlops_assets.core.declaration import DeclarationError, PipelineDeclaration
from mlops_assets.core.feature_contract import load_feature_module
from mlops_assets.core.lineage import TrainingPlan
from mlops_assets.core.metrics import score
from mlops_assets.core.names import FEATURES, PARTITION_COLUMN, RAW, SOURCE_ROW
from resources.delta_lake import DeltaLakeResource
from serving.single_row import lightgbm_library

if TYPE_CHECKING:  # lightgbm (and the scikit-learn it imports, about 2 s) only where a model is trained
    import lightgbm as lgb

BASE_OBJECTIVE = {"regression": "regression", "binary": "binary", "multiclass": "multiclass"}
EARLY_STOPPING_METRIC = {"regression": "l1", "binary": "binary_logloss", "multiclass": "multi_logloss"}


class TrainingDataError(ValueError):
    """The declared window does not hold data a model can be trained on."""


@dataclass(frozen=True)
class Split:
    X: np.ndarray
    y: np.ndarray
    partitions: list[str]

    @property
    def rows(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class TrainingData:
    train: Split
    validation: Split
    holdout: Split
    rows_without_target: int


@dataclass
class TrainedModel:
    booster: lgb.Booster
    best_iteration: int
    validation_metrics: dict[str, float]
    curve: dict[str, list[float]] = field(default_factory=dict)


def feature_columns(decl: PipelineDeclaration, columns: list[str]) -> list[str]:
    """Every features-table column that is not a key, the target or a platform column, in table order."""
    reserved = {*decl.table_schema.unique, decl.target.column, SOURCE_ROW, PARTITION_COLUMN}
    return [c for c in columns if c not in reserved]


def lgb_params(decl: PipelineDeclaration) -> dict:
    t = decl.training
    params: dict = {
        "objective": BASE_OBJECTIVE[decl.target.task],
        "metric": EARLY_STOPPING_METRIC[decl.target.task],
        "verbosity": -1,
        "force_row_wise": True,
        **t.params,
        "seed": t.seed,
        "deterministic": True,
        "num_threads": t.num_threads,
    }
    if decl.target.task == "multiclass":
        params["num_class"] = len(decl.target_classes)
    return params


# LightGBM parameters the platform sets itself, with where a declaration sets them instead
PLATFORM_PARAMETERS = {
    "objective": "target.task",
    "num_class": "target.classes",
    "seed": "training.seed",
    "deterministic": "always on",
    "num_threads": "training.num_threads",
    "num_iterations": "training.num_boost_round",
    "early_stopping_round": "training.early_stopping_rounds",
}


def platform_parameter_problems(params: dict) -> list[str]:
    """`training.params` names, aliases included, that LightGBM does not know or that set what the platform sets:
    LightGBM ignores an unknown name silently (at the platform's verbosity), and an alias such as `n_estimators`
    or `random_state` overrode the declared value (the run logged `num_boost_round` 400 and trained 5 trees)."""
    aliases = lightgbm_parameter_aliases()
    canonical = {alias: name for name, names in aliases.items() for alias in (name, *names)}
    problems = []
    for name in sorted(params):
        if name not in canonical:
            problems.append(f"{name}: LightGBM does not know it")
        elif canonical[name] in PLATFORM_PARAMETERS:
            known_as = "" if canonical[name] == name else f" (LightGBM's {canonical[name]})"
            problems.append(f"{name}{known_as}: the platform sets it ({PLATFORM_PARAMETERS[canonical[name]]})")
    return problems


@functools.cache
def lightgbm_parameter_aliases() -> dict[str, tuple[str, ...]]:
    """Every parameter LightGBM reads and its aliases: its own list (`LGBM_DumpParamAliases`)."""
    lib, size, buffer = lightgbm_library(), ctypes.c_int64(0), ctypes.create_string_buffer(1 << 16)
    for _ in range(2):  # again with the size it asked for, if the first buffer was short
        if lib.LGBM_DumpParamAliases(ctypes.c_int64(len(buffer)), ctypes.byref(size), buffer) != 0:
            raise RuntimeError(f"LightGBM's parameter list: {lib.LGBM_GetLastError().decode(errors='replace')}")
        if size.value <= len(buffer):
            break
        buffer = ctypes.create_string_buffer(size.value)
    return {name: tuple(names) for name, names in json.loads(buffer.value).items()}


def plan_training(decl: PipelineDeclaration, delta: DeltaLakeResource, end: str | None = None) -> TrainingPlan:
    """The window ending at `end` (default: the newest featurized day) at the table's current version."""
    problems = platform_parameter_problems(decl.training.params)
    if problems:
        raise DeclarationError(f"pipeline {decl.name}: training.params: {'; '.join(problems)}")
    unit = decl.partitioning.unit
    version = delta.version(decl.name, FEATURES)
    available = delta.partitions(decl.name, FEATURES)
    if version is None or not available:
        raise TrainingDataError(f"pipeline {decl.name} has no featurized partitions yet: ingest some {unit}s first")
    if end is not None and end not in available:
        raise TrainingDataError(f"pipeline {decl.name}: {unit} {end} has no features; the window must end on a featurized {unit}")
    last = end or available[-1]
    # the last window_days featurized days, not calendar days: a gap in the data (summer days landed after a
    # spring) left the validation days in the gap, and the retraining the drift asked for failed
    window = [p for p in available if p <= last][-decl.training.window_days :]
    holdout_days, validation_days = decl.gates.holdout_days, decl.training.validation_days
    if len(window) <= holdout_days + validation_days:
        raise TrainingDataError(
            f"pipeline {decl.name}: {len(window)} featurized {unit}s up to {last}; training needs more than "
            f"{holdout_days} hold-out + {validation_days} validation {unit}s (gates.holdout_days, training.validation_days)"
        )
    holdout_start = window[-holdout_days]
    validation_start = window[-(holdout_days + validation_days)]
    columns = delta.scan(decl.name, FEATURES, version).collect_schema().names()  # type: ignore[union-attr]
    module = load_feature_module(decl)
    features = feature_columns(decl, columns)
    unbuilt = [c for c in module.categorical if c not in features]
    if unbuilt:  # a misspelt name was dropped, and the feature trained as a number
        raise TrainingDataError(
            f"pipeline {decl.name}: {module.name}.CATEGORICAL_FEATURES names {unbuilt}, which the features table does not "
            f"hold; its feature columns: {', '.join(features)}"
        )
    # a column without a value in the window teaches the model nothing, and one the feature code no longer builds
    # (renamed: the table keeps the old column, null from the rebuild on) would make every request fail
    empty = set(delta.empty_columns(decl.name, FEATURES, version, window, features))
    features = [c for c in features if c not in empty]
    return TrainingPlan(
        pipeline=decl.name,
        task=decl.target.task,
        target=decl.target.column,
        classes=decl.target_classes if decl.target.task != "regression" else [],
        feature_columns=features,
        categorical_features=[c for c in module.categorical if c in features],
        features_table=delta.table_uri(decl.name, FEATURES),
        features_version=version,
        raw_version=delta.version(decl.name, RAW),
        partition_start=window[0],
        partition_end=last,
        validation_start=validation_start,
        holdout_start=holdout_start,
        params=lgb_params(decl),
        num_boost_round=decl.training.num_boost_round,
        early_stopping_rounds=decl.training.early_stopping_rounds,
        missing_reason=decl.target.missing_reason,
        engine=decl.training.engine,
        ray_workers=decl.training.ray_workers if decl.training.engine == "ray" else 0,
        num_threads=decl.training.num_threads,
    )


def read_window(plan: TrainingPlan, delta: DeltaLakeResource, as_now: bool = False) -> pl.DataFrame:
    """The plan's partitions at the plan's exact Delta version, in a fixed row order; `as_now`: the same days as
    the table holds them now (for a version whose training rows were since erased and vacuumed away)."""
    uri = delta.table_uri(plan.pipeline, FEATURES)
    if uri != plan.features_table:
        raise ValueError(f"the features table is now {uri}, but the model was trained on {plan.features_table}")
    lf = delta.scan(plan.pipeline, FEATURES, None if as_now else plan.features_version)
    if lf is None:
        raise LookupError(f"features table {plan.features_table} does not exist")
    return (
        lf.filter(pl.col(PARTITION_COLUMN).is_between(pl.lit(plan.partition_start), pl.lit(plan.partition_end)))
        .collect()
        .sort(PARTITION_COLUMN, SOURCE_ROW)
    )


def matrix(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """Float matrix in the model's column order; nulls become NaN (LightGBM's missing value)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"feature columns missing from the data: {missing}")
    return frame.select([pl.col(c).cast(pl.Float64) for c in columns]).to_numpy()


def labels(frame: pl.DataFrame, plan: TrainingPlan) -> np.ndarray:
    """Regression targets as floats; class labels as their index in `plan.classes`."""
    target = frame.get_column(plan.target)
    if plan.task == "regression":
        return target.cast(pl.Float64).to_numpy()
    classes = plan.classes
    as_text = target.cast(pl.String)
    index = {str(c): i for i, c in enumerate(classes)}
    unknown = sorted(set(as_text.drop_nulls().unique().to_list()) - set(index))
    if unknown:
        raise TrainingDataError(f"target {plan.target} has values outside the declared classes {classes}: {unknown}")
    return as_text.replace_strict(index, return_dtype=pl.Int32).to_numpy()


def _split(frame: pl.DataFrame, plan: TrainingPlan) -> Split:
    return Split(
        X=matrix(frame, plan.feature_columns),
        y=labels(frame, plan),
        partitions=sorted(frame.get_column(PARTITION_COLUMN).unique().to_list()),
    )


def prepare(frame: pl.DataFrame, plan: TrainingPlan, min_rows: int = 1) -> TrainingData:
    with_target = frame.filter(pl.col(plan.target).is_not_null())
    part = pl.col(PARTITION_COLUMN)
    data = TrainingData(
        train=_split(with_target.filter(part < plan.validation_start), plan),
        validation=_split(with_target.filter((part >= plan.validation_start) & (part < plan.holdout_start)), plan),
        holdout=_split(with_target.filter(part >= plan.holdout_start), plan),
        rows_without_target=frame.height - with_target.height,
    )
    for name, split in [("training", data.train), ("validation", data.validation), ("hold-out", data.holdout)]:
        if split.rows == 0:
            raise TrainingDataError(
                f"pipeline {plan.pipeline}: the {name} part of the window {plan.partition_start}..{plan.partition_end} "
                f"(validation from {plan.validation_start}, hold-out from {plan.holdout_start}) has no rows with a target"
            )
    if data.train.rows < min_rows:
        raise TrainingDataError(
            f"pipeline {plan.pipeline}: {data.train.rows} training rows in {plan.partition_start}..{plan.validation_start}, "
            f"fewer than training.min_rows={min_rows}"
        )
    if plan.task != "regression":
        seen = set(np.unique(data.train.y).tolist())
        if len(seen) < 2:
            raise TrainingDataError(f"pipeline {plan.pipeline}: the training rows hold a single class only")
    return data


def predict(booster: lgb.Booster, X: np.ndarray, task: str) -> np.ndarray:
    """Regression values, P(classes[1]) for binary, per-class probabilities for multiclass."""
    return np.asarray(booster.predict(X))


def train(plan: TrainingPlan, data: TrainingData) -> TrainedModel:
    import lightgbm as lgb

    dtrain = lgb.Dataset(
        data.train.X,
        label=data.train.y,
        feature_name=plan.feature_columns,
        categorical_feature=plan.categorical_features,
        params={"verbosity": -1},
        free_raw_data=False,
    )
    dvalid = lgb.Dataset(data.validation.X, label=data.validation.y, reference=dtrain)
    curve: dict = {}
    booster = lgb.train(
        plan.params,
        dtrain,
        num_boost_round=plan.num_boost_round,
        valid_sets=[dvalid],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(plan.early_stopping_rounds, verbose=False), lgb.record_evaluation(curve)],
    )
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    # the saved text model keeps the best iteration only: use exactly what is registered
    saved = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    metrics = score(plan.task, data.validation.y, predict(saved, data.validation.X, plan.task))
    return TrainedModel(
        booster=saved,
        best_iteration=best,
        validation_metrics=metrics,
        curve={m: list(v) for m, v in curve.get("validation", {}).items()},
    )
