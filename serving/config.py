"""The Serve config (what `serve deploy` / `serve run` and KubeRay's RayService take), built from declarations.

One application per declared pipeline, whose only HTTP route is its V2 infer
path (`/v2/models/<name>/infer`, taken by the champion itself); where the pipeline
declares `serving.v1_route` (the default), a second one whose champion replicas take
its V1 predict path (`/v1/models/<name>:predict`): a Serve application has one route
prefix, and the two paths share only `/`. Plus the gateway application on `/` for
everything else. Model versions and traffic shares are
`user_config` overrides, never builder `args`: Serve hashes args into the code
version, so changing them would restart replicas instead of reconfiguring them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from ray.serve.schema import ServeDeploySchema

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import GATEWAY_APP
from resources.registered_models import ModelSource
from resources.serving import ServeSettings

APP_BUILDER = "serving.app:build_app"
GATEWAY_BUILDER = "serving.app:build_gateway"
V1_APP_BUILDER = "serving.app:build_v1_app"


def settings_args(settings: ServeSettings | None) -> dict[str, Any]:
    """Only the settings that differ from the environment defaults, so the file stays portable."""
    if settings is None:
        return {}
    return {k: v for k, v in settings.model_dump(exclude={"pipeline"}).items() if v not in ("", None)}


def pipeline_app(
    decl: PipelineDeclaration,
    settings: ServeSettings | None = None,
    champion: int | None = None,
    challenger: int | None = None,
    traffic: dict | None = None,
    gpu: bool = False,
    pinned: bool = False,
    sources: Mapping[int, ModelSource] | None = None,
) -> dict:
    """`pinned`: the versions are what serves, None included (no challenger); otherwise a None version makes
    the replica follow its alias when it starts (the checked-in config for `serve run`). `sources`: where each
    version's files are, handed to its replicas with the version (`model_source`)."""
    traffic = {**decl.serving.traffic.model_dump(), **(traffic or {})}
    args: dict[str, Any] = {"pipeline": decl.name, **settings_args(settings)}

    def source(version: int | None) -> dict:
        found = (sources or {}).get(version) if version is not None else None
        return {"model_source": found.model_dump()} if found is not None else {}

    deployments = [
        {"name": CHAMPION_DEPLOYMENT, "user_config": {**champion_config(champion, traffic), **source(champion)}},
        {
            "name": CHALLENGER_DEPLOYMENT,
            "user_config": {
                "model_version": challenger,
                **source(challenger),
                **({"follow_alias": False} if pinned and challenger is None else {}),
            },
        },
    ]
    if gpu:
        deployments.insert(1, {"name": CHAMPION_GPU_DEPLOYMENT, "user_config": {"model_version": champion, **source(champion)}})
    return {"name": decl.name, "route_prefix": infer_route(decl.name), "import_path": APP_BUILDER, "args": args, "deployments": deployments}


def v1_app(pipeline_application: dict) -> dict:
    """The V1 route's application of a pipeline: its own champion replicas, configured as the pipeline
    application's champion is (version, model source, traffic shares), which hand canary, shadow and GPU
    requests to that application's challenger and GPU group."""
    name = pipeline_application["name"]
    champion = next(d for d in pipeline_application["deployments"] if d["name"] == CHAMPION_DEPLOYMENT)
    return {
        "name": v1_app_name(name),
        "route_prefix": predict_route(name),
        "import_path": V1_APP_BUILDER,
        "args": dict(pipeline_application["args"]),
        "deployments": [{"name": CHAMPION_DEPLOYMENT, "user_config": dict(champion["user_config"])}],
    }


def pipeline_apps(decl: PipelineDeclaration, *args, **kwargs) -> dict[str, dict]:
    """The pipeline's applications by name: `pipeline_app`, and `v1_app` where it declares `serving.v1_route`."""
    main = pipeline_app(decl, *args, **kwargs)
    return {main["name"]: main} | ({v1_app_name(decl.name): v1_app(main)} if decl.serving.v1_route is not None else {})


def infer_route(pipeline: str) -> str:
    """The pipeline application's route prefix: the hot path goes straight to its champion, not through the gateway."""
    return f"/v2/models/{pipeline}/infer"


def predict_route(pipeline: str) -> str:
    """The V1 route's application's route prefix (TF-Serving's predict URL)."""
    return f"/v1/models/{pipeline}:predict"


def v1_app_name(pipeline: str) -> str:
    """No pipeline is named so: a pipeline's name is an identifier, without '-'."""
    return f"{pipeline}-v1"


def gateway_app(settings: ServeSettings | None = None, replicas: int = 2) -> dict:
    args = settings_args(settings)
    if replicas != 2:
        args["replicas"] = replicas
    return {"name": GATEWAY_APP, "route_prefix": "/", "import_path": GATEWAY_BUILDER, "args": args}


def serve_config(
    decls: Sequence[PipelineDeclaration], host: str = "0.0.0.0", port: int = 8000, settings: ServeSettings | None = None
) -> dict:
    """The whole config; versions left null make each replica follow its alias when it starts."""
    apps = [gateway_app(settings)] + [app for d in decls for app in pipeline_apps(d, settings).values()]
    return {"proxy_location": "EveryNode", "http_options": {"host": host, "port": port}, "applications": apps}


def check(config: dict) -> ServeDeploySchema:
    """Raises pydantic's ValidationError where Serve would refuse the config."""
    return ServeDeploySchema.model_validate(config)


HEADER = """\
# Ray Serve config for every declared pipeline, generated from the declarations:
#   mlops serve config > deploy/serve_config.yaml   (tests/serving/test_serving_config.py checks it is current)
# Run it:  serve run deploy/serve_config.yaml   or   serve deploy deploy/serve_config.yaml
# Model versions are null: each replica loads what the `champion` / `challenger` alias names when
# it starts; the <pipeline>/deployment asset pins versions through user_config overrides.
"""


def to_yaml(config: dict) -> str:
    return HEADER + yaml.safe_dump(config, sort_keys=False)


CHAMPION_DEPLOYMENT = "champion"


CHAMPION_GPU_DEPLOYMENT = "champion_gpu"


CHALLENGER_DEPLOYMENT = "challenger"


GATEWAY_DEPLOYMENT = "gateway"


def champion_config(version: int | None, traffic: dict) -> dict:
    """The champion's `user_config`: its version and the traffic shares it routes by."""
    return {"model_version": version, "canary_share": float(traffic["canary_share"]), "shadow": bool(traffic["shadow"])}
