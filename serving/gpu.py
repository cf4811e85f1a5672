"""GPU tree inference for GPU replicas: nvforest reading the same LightGBM text file.

LightGBM cannot predict on a GPU (LightGBM#2612); nvforest (pip `nvforest`, the
successor of cuML FIL) loads LightGBM text models and predicts on CUDA. It is an
optional dependency: the GPU replica group is only deployed where Ray sees a GPU (or
where $MLOPS_SERVE_GPU_GROUP says `as_declared`), and nvforest is only imported there.
"""

from __future__ import annotations

import os

import numpy as np

from mlops_assets.core.declaration import PipelineDeclaration

GPU_PACKAGE = "nvforest"
# when a declared GPU replica group is deployed: `when_seen` (the default), only where the connected Ray already
# offers its GPUs (a laptop without one serves on CPUs alone); `as_declared`, always (a cluster whose GPU nodes
# join later or are started by the autoscaler for the group's demand: KubeRay may build the applications before
# its GPU workers join, and `when_seen` then served on CPUs alone until the next deployment)
GPU_GROUP_ENV = "MLOPS_SERVE_GPU_GROUP"
GPU_GROUP_MODES = ("when_seen", "as_declared")


class GpuUnavailable(RuntimeError):
    """No usable GPU backend in this process."""


def ray_gpus() -> float:
    """GPUs the connected Ray cluster offers (0 when Ray is not initialized)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0


def load_gpu_forest(model_file: str, task: str):
    try:
        import nvforest
    except ImportError as err:
        raise GpuUnavailable(f"GPU replicas need the '{GPU_PACKAGE}' package ({err})") from None
    # precision=double keeps GPU answers comparable to LightGBM's float64 path
    return nvforest.load_model(model_file, model_type="lightgbm", device="gpu", precision="double")


def gpu_predict(forest, x: np.ndarray, task: str) -> np.ndarray:
    """Same output shape as the CPU path: values for regression, n x k probabilities otherwise."""
    if task == "regression":
        return np.asarray(forest.predict(x), dtype=float).reshape(-1)
    probs = np.asarray(forest.predict_proba(x), dtype=float)
    if task == "binary" and probs.ndim == 1:
        probs = np.column_stack([1.0 - probs, probs])
    return probs


def gpu_group_mode() -> str:
    """$MLOPS_SERVE_GPU_GROUP, checked: a misspelt value would silently serve on CPUs alone."""
    mode = os.environ.get(GPU_GROUP_ENV, "").strip() or GPU_GROUP_MODES[0]
    if mode not in GPU_GROUP_MODES:
        raise ValueError(f"{GPU_GROUP_ENV}={mode!r}: expected one of {', '.join(GPU_GROUP_MODES)}")
    return mode


def gpu_group_enabled(decl: PipelineDeclaration) -> bool:
    """GPU replicas where the declaration asks for them and, unless $MLOPS_SERVE_GPU_GROUP is `as_declared`,
    Ray already sees the GPUs they ask for; otherwise the CPU group serves alone."""
    gpu = decl.serving.gpu
    if not (gpu and gpu.replicas > 0 and gpu.num_gpus > 0):
        return False
    return gpu_group_mode() == "as_declared" or ray_gpus() >= gpu.num_gpus
