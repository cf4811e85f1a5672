"""GPU tree inference for GPU replicas: nvforest reading the same LightGBM text file.

LightGBM cannot predict on a GPU (LightGBM#2612); nvforest (pip `nvforest`, the
successor of cuML FIL) loads LightGBM text models and predicts on CUDA. It is an
optional dependency: the GPU replica group is only deployed where Ray sees a GPU,
and this module is only imported there.
"""

from __future__ import annotations

import numpy as np

from mlops_assets.core.declaration import PipelineDeclaration

GPU_PACKAGE = "nvforest"


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


def gpu_group_enabled(decl: PipelineDeclaration) -> bool:
    """GPU replicas only where Ray sees the GPUs they ask for; otherwise the CPU group serves alone."""
    gpu = decl.serving.gpu
    return bool(gpu and gpu.replicas > 0 and gpu.num_gpus > 0 and ray_gpus() >= gpu.num_gpus)
