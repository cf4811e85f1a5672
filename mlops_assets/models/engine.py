"""Where a training plan trains: in the Dagster step (LightGBM in process) or on Ray Train
workers (`training.engine: ray`). Training and `mlops reproduce` both come through here."""

from __future__ import annotations

import os

from mlops_assets.core.lineage import TrainingPlan
from mlops_assets.models import training
from mlops_assets.models.ray_training import train_on_ray
from mlops_assets.models.training import TrainedModel, TrainingData
from resources.delta_lake import DeltaLakeResource

# where Ray Train keeps its runs and checkpoints: storage every Ray node and the Dagster step reach (an object-store
# URI on a cluster); unset, a temporary folder of this process, which only a single-machine Ray shares
RAY_TRAIN_STORAGE_ENV = "MLOPS_RAY_TRAIN_STORAGE"


def train_as_planned(plan: TrainingPlan, data: TrainingData, delta: DeltaLakeResource) -> TrainedModel:
    """Train on the engine the plan names: here, or on Ray Train workers reading their own days.
    Training and `mlops reproduce` both come through here, so a model is reproduced as it was made."""
    if plan.engine == "ray":
        # a cluster's workers and this process share no folder: Ray Train keeps its run there (s3://...)
        storage = os.environ.get(RAY_TRAIN_STORAGE_ENV) or None
        return train_on_ray(plan, delta, plan.ray_workers, {"CPU": max(plan.num_threads, 1)}, storage_path=storage)
    return training.train(plan, data)
