"""What a trained model version read and how it trained (its lineage), recorded on the
version as JSON: enough to train the same model again, and what monitoring compares with."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TrainingPlan:
    """What one training read and how it trained: enough to train the same model again."""

    pipeline: str
    task: str
    target: str
    classes: list
    feature_columns: list[str]
    categorical_features: list[str]
    features_table: str
    features_version: int
    partition_start: str
    partition_end: str
    validation_start: str
    holdout_start: str
    params: dict
    num_boost_round: int
    early_stopping_rounds: int
    missing_reason: str = "target is missing"
    engine: str = "local"  # local | ray: the model depends on it (and on the worker count), so it is part of the plan
    ray_workers: int = 0
    num_threads: int = 0
    raw_version: int | None = None  # raw at planning: what the hold-out rows' raw columns (fairness groups) are read at

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainingPlan":
        return cls(**json.loads(text))
