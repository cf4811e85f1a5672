"""Re-train a registered version from what it recorded, and compare predictions.

The version's training plan names the features table, its Delta version and
the partition range; the same rows in the same order with the same
deterministic LightGBM settings must give the same model. The registered model
and the re-trained one predict the hold-out; any difference is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlops_assets.models.engine import train_as_planned
from mlops_assets.models.training import predict, prepare, read_window
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.registered_models import get_version, load_booster, plan_of, require_unerased


@dataclass(frozen=True)
class Comparison:
    rows: int
    differing: int
    max_abs_diff: float

    @property
    def identical(self) -> bool:
        return self.differing == 0


def compare_predictions(registered: np.ndarray, retrained: np.ndarray) -> Comparison:
    """Exact comparison (no tolerance): a deterministic re-run gives bit-identical predictions."""
    if registered.shape != retrained.shape:
        raise ValueError(f"prediction shapes differ: registered {registered.shape}, re-trained {retrained.shape}")
    a = registered.reshape(len(registered), -1)
    b = retrained.reshape(len(retrained), -1)
    rows_differ = np.any(a != b, axis=1)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    return Comparison(rows=len(a), differing=int(rows_differ.sum()), max_abs_diff=diff)


@dataclass(frozen=True)
class Reproduction:
    pipeline: str
    version: str
    features: str
    partitions: str
    holdout_from: str
    comparison: Comparison
    same_model_text: bool

    def report(self) -> str:
        head = (
            f"model {self.pipeline} v{self.version}: re-trained from {self.features}, partitions {self.partitions}; "
            f"compared on {self.comparison.rows} hold-out rows from {self.holdout_from}"
        )
        if self.comparison.identical:
            return f"{head}\nREPRODUCED: all {self.comparison.rows} predictions identical" + (
                "; model text identical" if self.same_model_text else ""
            )
        return (
            f"{head}\nMISMATCH: {self.comparison.differing} of {self.comparison.rows} predictions differ "
            f"(max abs difference {self.comparison.max_abs_diff:.6g})"
        )


def reproduce(pipeline: str, version: str | int, delta: DeltaLakeResource, registry: MlflowRegistryResource) -> Reproduction:
    mv = get_version(registry.client(), pipeline, version)
    require_unerased(mv, "cannot be reproduced")
    plan = plan_of(mv)
    data = prepare(read_window(plan, delta), plan)
    retrained = train_as_planned(plan, data, delta)
    registered = load_booster(registry, pipeline, version)
    comparison = compare_predictions(predict(registered, data.holdout.X, plan.task), predict(retrained.booster, data.holdout.X, plan.task))
    same_text = registered.model_to_string() == retrained.booster.model_to_string()
    return Reproduction(
        pipeline=pipeline,
        version=str(mv.version),
        features=f"{plan.features_table}@v{plan.features_version}",
        partitions=f"{plan.partition_start}..{plan.partition_end}",
        holdout_from=plan.holdout_start,
        comparison=comparison,
        same_model_text=same_text,
    )
