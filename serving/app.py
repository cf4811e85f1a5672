"""Application builders named in the Serve config (`serving.app:build_app`, `serving.app:build_gateway`).

`build_app({"pipeline": name, ...})` builds one pipeline's application from its
declaration: the challenger, the champion on the GPU group where Ray sees enough
GPUs, and the champion on the CPU replica group as ingress (it routes).
`build_v1_app({"pipeline": name, ...})` builds its V1 route's application: champion
replicas of their own, which hand canary, shadow and GPU requests to the pipeline
application's challenger and GPU group.
`build_gateway({...})` builds the HTTP ingress shared by all pipelines.
"""

from __future__ import annotations

import math
import os

from ray.serve import Application

from mlops_assets.core.declaration import PipelineDeclaration, ReplicaGroupSpec
from mlops_assets.core.names import CHALLENGER, CHAMPION
from resources.serving import ServeSettings
from serving.config import (
    CHALLENGER_DEPLOYMENT,
    CHAMPION_DEPLOYMENT,
    CHAMPION_GPU_DEPLOYMENT,
    GATEWAY_DEPLOYMENT,
    champion_config,
)
from serving.deployments import ModelServer
from serving.gateway import Gateway
from serving.gpu import gpu_group_enabled


def logging_options() -> dict:
    """Serve's per-request access log is off unless MLOPS_SERVE_ACCESS_LOG=1: every request is already in the
    prediction log, and an access line per Serve hop costs measurable CPU (`mlops bench serving`).
    Warnings and errors are logged either way."""
    return {"logging_config": {"enable_access_log": os.environ.get("MLOPS_SERVE_ACCESS_LOG", "0") == "1"}}


def polars_threads(group: ReplicaGroupSpec) -> int:
    """Polars threads of one replica: its share of CPUs, rounded up (at least one).

    Polars sizes its thread pool to the host's cores; a replica granted half a core then hands every
    expression to a pool of idle threads that must be woken first, on cores the other replicas use
    (the README's serving figures). A value the user set (POLARS_MAX_THREADS in Ray's environment) wins.
    """
    return max(1, math.ceil(group.num_cpus))


# Serve runs a replica's user code on the replica's own event loop, not on a second loop in its own thread:
# a request then crosses no thread (and no GIL hand-off) between the ingress and the model. `mlops bench serving
# --ours-env RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0`, two A/B pairs: V2 single-row p50 1.33-1.40 -> 1.01-1.03
# ms, c=16 2,339-2,704 -> 2,855-2,930 req/s, V1 p50 3.49 -> 2.82 ms. Large requests are typed, featurized and
# predicted on a worker thread (`INLINE_ROWS`), so the loop keeps reading the next request meanwhile.
SERVE_LOOP_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


def replica_env(group: ReplicaGroupSpec) -> dict[str, str]:
    """The environment a replica's libraries start with: polars' pool sized to its CPU share, OpenMP threads
    that sleep at a barrier instead of spinning, user code on Serve's own loop (SERVE_LOOP_ENV). LightGBM predicts
    a large request on `batch_threads` OpenMP threads; spinning ones took the cores the prediction-log writer and
    the other replicas needed (`mlops bench serving --ours-env OMP_WAIT_POLICY=ACTIVE`: 10,000-row batches 0.11x
    in-process LightGBM, against 0.37-0.53x)."""
    return {"POLARS_MAX_THREADS": str(polars_threads(group)), "OMP_WAIT_POLICY": "PASSIVE", **SERVE_LOOP_ENV}


def _runtime_env(env: dict[str, str]) -> dict:
    """`env` as a replica's runtime_env, without what the user set in Ray's environment (their setting wins)."""
    mine = {name: value for name, value in env.items() if name not in os.environ}
    return {"runtime_env": {"env_vars": mine}} if mine else {}


def group_options(group: ReplicaGroupSpec) -> dict:
    """Serve options of one replica group: fixed count or autoscaling bounds, resources, surge, polars threads."""
    actor: dict = {"num_cpus": group.num_cpus, "num_gpus": group.num_gpus, **_runtime_env(replica_env(group))}
    options: dict = {
        "ray_actor_options": actor,
        "max_ongoing_requests": group.max_ongoing_requests,
        "max_surge_percent": group.max_surge_percent,
        "graceful_shutdown_timeout_s": 30,
        "health_check_period_s": group.health_check_period_s,
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
    gpu = None
    if gpu_group_enabled(decl):
        assert serving.gpu is not None
        gpu = ModelServer.options(name=CHAMPION_GPU_DEPLOYMENT, user_config={"model_version": None}, **group_options(serving.gpu)).bind(
            payload, CHAMPION, "gpu"
        )
    return _champion(decl, serving.cpu).bind(payload, CHAMPION, "cpu", challenger, gpu, gpu_share(decl))


def build_v1_app(args: dict) -> Application:
    settings = _settings(args)
    decl = settings.declaration()
    if decl.serving.v1_route is None:
        raise ValueError(f"pipeline {decl.name} declares no serving.v1_route: its V1 predict goes through the gateway")
    return _champion(decl, decl.serving.v1_route).bind(
        settings.model_dump(), CHAMPION, "cpu", gpu_share=gpu_share(decl), protocol="v1", peers_app=decl.name
    )


def _champion(decl: PipelineDeclaration, group: ReplicaGroupSpec):
    """A champion CPU replica group (an application's ingress), as the declaration shapes it."""
    return ModelServer.options(
        name=CHAMPION_DEPLOYMENT, user_config=champion_config(None, decl.serving.traffic.model_dump()), **group_options(group)
    )


def gpu_share(decl: PipelineDeclaration) -> float:
    """The share of the champion's requests the GPU group answers: its share of the champion's replicas."""
    if not gpu_group_enabled(decl):
        return 0.0
    assert decl.serving.gpu is not None
    return decl.serving.gpu.replicas / (decl.serving.gpu.replicas + decl.serving.cpu.replicas)


def build_gateway(args: dict) -> Application:
    settings = _settings(args)
    return Gateway.options(
        name=GATEWAY_DEPLOYMENT,
        num_replicas=int(args.get("replicas", 2)),
        ray_actor_options={"num_cpus": 0, **_runtime_env(SERVE_LOOP_ENV)},
        max_ongoing_requests=256,
        max_surge_percent=100,
        **logging_options(),
    ).bind(settings.model_dump())
