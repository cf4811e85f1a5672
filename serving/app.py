"""Application builders named in the Serve config (`serving.app:build_app`, `serving.app:build_gateway`).

`build_app({"pipeline": name, ...})` builds one pipeline's application from its
declaration: the challenger, the champion on the GPU group where Ray sees enough
GPUs, and the champion on the CPU replica group as ingress (it routes).
`build_gateway({...})` builds the HTTP ingress shared by all pipelines.
"""

from __future__ import annotations

import os

from ray.serve import Application

from mlops_assets.declaration import PipelineDeclaration, ReplicaGroupSpec
from serving.deployments import ModelServer
from serving.gateway import Gateway
from serving.gpu import ray_gpus
from serving.registry import CHALLENGER, CHAMPION
from serving.settings import ServeSettings

CHAMPION_DEPLOYMENT = "champion"
CHAMPION_GPU_DEPLOYMENT = "champion_gpu"
CHALLENGER_DEPLOYMENT = "challenger"
GATEWAY_DEPLOYMENT = "gateway"


def logging_options() -> dict:
    """Serve's per-request access log is off unless MLOPS_SERVE_ACCESS_LOG=1: every request is already in the
    prediction log, and an access line per Serve hop costs measurable CPU (`mlops bench serving`).
    Warnings and errors are logged either way."""
    return {"logging_config": {"enable_access_log": os.environ.get("MLOPS_SERVE_ACCESS_LOG", "0") == "1"}}


def group_options(group: ReplicaGroupSpec) -> dict:
    """Serve options of one replica group: fixed count or autoscaling bounds, resources, surge."""
    options: dict = {
        "ray_actor_options": {"num_cpus": group.num_cpus, "num_gpus": group.num_gpus},
        "max_ongoing_requests": group.max_ongoing_requests,
        "max_surge_percent": group.max_surge_percent,
        "graceful_shutdown_timeout_s": 30,
        **logging_options(),
    }
    if group.min_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": group.min_replicas,
            "max_replicas": group.max_replicas,
            "initial_replicas": max(group.min_replicas, min(group.replicas, group.max_replicas or group.replicas)),
            "target_ongoing_requests": max(1, group.max_ongoing_requests // 2),
        }
    else:
        options["num_replicas"] = max(1, group.replicas)
    return options


def gpu_group_enabled(decl: PipelineDeclaration) -> bool:
    """GPU replicas only where Ray sees the GPUs they ask for; otherwise the CPU group serves alone."""
    gpu = decl.serving.gpu
    return bool(gpu and gpu.replicas > 0 and gpu.num_gpus > 0 and ray_gpus() >= gpu.num_gpus)


def _settings(args: dict) -> ServeSettings:
    return ServeSettings(**{k: v for k, v in (args or {}).items() if k in ServeSettings.model_fields})


def build_app(args: dict) -> Application:
    settings = _settings(args)
    decl = settings.declaration()
    serving = decl.serving
    payload = settings.model_dump()
    challenger = ModelServer.options(
        name=CHALLENGER_DEPLOYMENT, user_config={"model_version": None}, **group_options(serving.challenger)
    ).bind(payload, CHALLENGER, "cpu")
    gpu, gpu_share = None, 0.0
    if gpu_group_enabled(decl):
        assert serving.gpu is not None
        gpu = ModelServer.options(
            name=CHAMPION_GPU_DEPLOYMENT, user_config={"model_version": None}, **group_options(serving.gpu)
        ).bind(payload, CHAMPION, "gpu")
        gpu_share = serving.gpu.replicas / (serving.gpu.replicas + serving.cpu.replicas)
    return ModelServer.options(
        name=CHAMPION_DEPLOYMENT, user_config=champion_config(None, serving.traffic.model_dump()), **group_options(serving.cpu)
    ).bind(payload, CHAMPION, "cpu", challenger, gpu, gpu_share)


def champion_config(version: int | None, traffic: dict) -> dict:
    """The champion's `user_config`: its version and the traffic shares it routes by."""
    return {"model_version": version, "canary_share": float(traffic["canary_share"]), "shadow": bool(traffic["shadow"])}


def build_gateway(args: dict) -> Application:
    settings = _settings(args)
    return Gateway.options(
        name=GATEWAY_DEPLOYMENT,
        num_replicas=int(args.get("replicas", 2)),
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=256,
        max_surge_percent=100,
        **logging_options(),
    ).bind(settings.model_dump())
