"""GPU replicas: nvforest on the GPU answers like LightGBM on the CPU, from the same registered file.

Runs only where an NVIDIA GPU and nvforest are present; standalone:
    pip install nvforest-cu12   # or nvforest-cu13, matching the CUDA driver
    pytest tests/serving/test_serving_gpu.py
Elsewhere every test is skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest


def _gpu_reason() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA GPU visible (nvidia-smi not found)"
    probe = subprocess.run([smi, "-L"], capture_output=True, text=True)
    if probe.returncode != 0 or "GPU" not in probe.stdout:
        return f"no NVIDIA GPU visible (nvidia-smi -L: {probe.stdout.strip() or probe.stderr.strip()})"
    try:
        import nvforest  # noqa: F401  (probe: is it installed)
    except ImportError as err:
        return f"GPU present but nvforest is not installed (pip install nvforest-cu12): {err}"
    return None


REASON = _gpu_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _register(tmp_path, booster: lgb.Booster, task: str, classes: list) -> tuple[str, int]:
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.create_experiment(f"gpu-{task}", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.lightgbm.log_model(booster, name="model", registered_model_name=f"gpu_{task}")
    client = MlflowClient(uri, uri)
    version = info.registered_model_version
    client.set_model_version_tag(f"gpu_{task}", version, "mlops.feature_columns", json.dumps(booster.feature_name()))
    client.set_model_version_tag(f"gpu_{task}", version, "mlops.task", task)
    if classes:
        client.set_model_version_tag(f"gpu_{task}", version, "mlops.classes", json.dumps(classes))
    return uri, int(version)


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_gpu_predictions_match_lightgbm(tmp_path, task):
    from serving.loaded_model import load_version

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6))
    x[rng.random(x.shape) < 0.05] = np.nan  # missing values take LightGBM's default branches on both devices
    signal = x[:, 0] * 2 + np.nan_to_num(x[:, 1]) - x[:, 2] ** 2
    params = {"verbose": -1, "num_leaves": 31, "seed": 1}
    if task == "regression":
        y, classes, params["objective"] = signal, [], "regression"
    elif task == "binary":
        y, classes, params["objective"] = (signal > 0).astype(int), ["no", "yes"], "binary"
    else:
        y, classes = np.digitize(np.nan_to_num(signal), [-1, 1]), ["low", "mid", "high"]
        params.update(objective="multiclass", num_class=3)
    cols = [f"f{i}" for i in range(x.shape[1])]
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=cols), num_boost_round=40)
    uri, version = _register(tmp_path, booster, task, classes)
    features = pl.DataFrame(x[:500], schema=cols, orient="row")
    cpu = load_version(uri, f"gpu_{task}", version, device="cpu", cache_dir=str(tmp_path)).predict(features)
    gpu = load_version(uri, f"gpu_{task}", version, device="gpu", cache_dir=str(tmp_path)).predict(features)
    np.testing.assert_allclose(
        np.asarray(gpu.get("probabilities", gpu["predictions"]), dtype=float),
        np.asarray(cpu.get("probabilities", cpu["predictions"]), dtype=float),
        rtol=1e-5,
        atol=1e-6,
    )
    if task != "regression":
        assert np.mean(np.array(gpu["labels"]) == np.array(cpu["labels"])) > 0.999


def test_gpu_replica_group_is_built_only_where_ray_sees_a_gpu():
    import ray
    from ray.serve._private.build_app import build_app

    from mlops_assets.core.declaration import PACKAGED_PIPELINES, load_declaration
    from serving.app import build_app as build_pipeline_app
    from serving.config import CHAMPION_GPU_DEPLOYMENT
    from serving.gpu import gpu_group_enabled

    if ray.is_initialized():
        pytest.skip("run this file on its own: it starts its own Ray with the GPU visible")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
        assert gpu_group_enabled(decl)
        built = build_app(build_pipeline_app({"pipeline": "flights"}), name="flights")
        gpu = {d.name: d for d in built.deployments}[CHAMPION_GPU_DEPLOYMENT]
        assert gpu.ray_actor_options["num_gpus"] == decl.serving.gpu.num_gpus  # type: ignore[union-attr]
    finally:
        ray.shutdown()
