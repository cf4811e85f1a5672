"""deploy/serve_config.yaml is current, is a valid Serve config, and every override names a real deployment.

No Ray needed: builders are imported and built the way Serve's build task does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray._common.utils import import_attr
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve._private.build_app import build_app
from ray.serve.schema import ServeDeploySchema

from mlops_assets.core.declaration import (
    PACKAGED_PIPELINES,
    load_declaration,
    load_declarations,
)
from serving.app import build_v1_app, group_options
from serving.config import (
    CHAMPION_GPU_DEPLOYMENT,
    check,
    pipeline_app,
    pipeline_apps,
    serve_config,
    to_yaml,
)

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve_config.yaml"


@pytest.fixture(scope="module")
def decls():
    return load_declarations(str(PACKAGED_PIPELINES))


def test_checked_in_config_is_generated_from_the_declarations(decls):
    expected = to_yaml(serve_config(decls))
    assert CONFIG.read_text() == expected, "deploy/serve_config.yaml is stale: run `mlops serve config -o deploy/serve_config.yaml`"


def test_config_round_trips_through_serve_deploy_schema():
    raw = yaml.safe_load(CONFIG.read_text())
    schema = check(raw)
    again = ServeDeploySchema.model_validate(schema.model_dump(exclude_unset=True))
    assert again == schema
    names = [a.name for a in schema.applications]
    assert names[0] == "mlops" and schema.applications[0].route_prefix == "/"
    apps = {a.name: a for a in schema.applications[1:]}
    for decl in load_declarations(str(PACKAGED_PIPELINES)):
        main = apps.pop(decl.name)
        assert main.route_prefix == f"/v2/models/{decl.name}/infer" and main.import_path == "serving.app:build_app"
        # V1 predict has an application of its own: a Serve application has one route prefix
        v1 = apps.pop(f"{decl.name}-v1")
        assert v1.route_prefix == f"/v1/models/{decl.name}:predict" and v1.import_path == "serving.app:build_v1_app"
        assert v1.deployments[0].user_config == main.deployments[0].user_config  # the same champion, traffic included
    assert not apps, f"applications of no declared pipeline: {sorted(apps)}"


def test_builders_build_apps_whose_deployments_match_the_overrides():
    schema = check(yaml.safe_load(CONFIG.read_text()))
    for app in schema.applications:
        builder = import_attr(app.import_path)
        built = build_app(call_user_app_builder_with_args_if_necessary(builder, app.args), name=app.name)
        deployed = {d.name for d in built.deployments}
        overridden = {d.name for d in app.deployments}
        assert overridden <= deployed, (app.name, overridden - deployed)
        if app.name != "mlops":
            assert built.ingress_deployment_name == "champion"  # the champion routes: no router hop
            assert CHAMPION_GPU_DEPLOYMENT not in deployed  # no Ray GPUs visible here: CPU replicas only


def test_a_cluster_deploys_the_declared_gpu_group_before_its_gpus_are_seen(monkeypatch):
    """KubeRay may build the applications before its GPU workers join (or the autoscaler starts one only for a
    demand): with $MLOPS_SERVE_GPU_GROUP=as_declared the GPU group is built as declared, asking Ray for its GPU,
    instead of serving on CPUs alone until the next deployment; a misspelt value is refused, naming the variable."""
    from serving.app import build_app as build_pipeline_app
    from serving.app import gpu_share
    from serving.gpu import GPU_GROUP_ENV

    decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    assert decl.serving.gpu is not None and decl.serving.gpu.num_gpus == 1

    def deployments() -> dict:
        return {d.name: d for d in build_app(build_pipeline_app({"pipeline": "flights"}), name="flights").deployments}

    monkeypatch.delenv(GPU_GROUP_ENV, raising=False)
    assert CHAMPION_GPU_DEPLOYMENT not in deployments() and gpu_share(decl) == 0.0  # no Ray GPUs here
    monkeypatch.setenv(GPU_GROUP_ENV, "as_declared")
    gpu = deployments()[CHAMPION_GPU_DEPLOYMENT]
    assert gpu.num_replicas == 1 and gpu.ray_actor_options["num_gpus"] == 1
    assert gpu_share(decl) == pytest.approx(1 / 3)  # one GPU replica beside the two CPU ones
    monkeypatch.setenv(GPU_GROUP_ENV, "as-declared")
    with pytest.raises(ValueError, match=f"{GPU_GROUP_ENV}='as-declared': expected one of when_seen, as_declared"):
        deployments()


def test_replica_groups_map_to_serve_options(monkeypatch):
    monkeypatch.delenv("POLARS_MAX_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", raising=False)
    decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    cpu = group_options(decl.serving.cpu)
    assert cpu["num_replicas"] == 2 and cpu["max_surge_percent"] == 100
    env = {"POLARS_MAX_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    assert cpu["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0, "runtime_env": {"env_vars": env}}
    wide = group_options(decl.serving.cpu.model_copy(update={"num_cpus": 2.5}))
    assert wide["ray_actor_options"]["runtime_env"]["env_vars"]["POLARS_MAX_THREADS"] == "3"  # the CPU share, rounded up
    monkeypatch.setenv("POLARS_MAX_THREADS", "4")  # the user's own setting wins: Ray's environment passes it on
    assert group_options(decl.serving.cpu)["ray_actor_options"]["runtime_env"] == {
        "env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    }
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "1")
    assert "runtime_env" not in group_options(decl.serving.cpu)["ray_actor_options"]
    scaled = group_options(decl.serving.cpu.model_copy(update={"min_replicas": 2, "max_replicas": 6}))
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 6
    gpu_app = pipeline_app(decl, champion=3, challenger=4, gpu=True)
    assert [d["name"] for d in gpu_app["deployments"]] == ["champion", CHAMPION_GPU_DEPLOYMENT, "challenger"]
    assert {d["user_config"].get("model_version") for d in gpu_app["deployments"][:2]} == {3}
    assert gpu_app["deployments"][0]["user_config"] == {"model_version": 3, "canary_share": 0.0, "shadow": False}
    kept = pipeline_app(decl, champion=3, traffic={"canary_share": 0.25})  # a partial override keeps the declared rest
    assert kept["deployments"][0]["user_config"] == {"model_version": 3, "canary_share": 0.25, "shadow": False}


def test_pinned_versions_carry_their_model_source_to_every_group_serving_them():
    from resources.registered_models import ModelSource

    decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    source = ModelSource(version=3, artifact_uri="file:///registry/3", run_id="r3", tags={"mlops.task": "regression"})
    app = pipeline_app(decl, champion=3, challenger=None, gpu=True, pinned=True, sources={3: source})
    configs = {d["name"]: d["user_config"] for d in app["deployments"]}
    assert configs["champion"]["model_source"] == configs[CHAMPION_GPU_DEPLOYMENT]["model_source"] == source.model_dump()
    assert "model_source" not in configs["challenger"] and configs["challenger"]["follow_alias"] is False
    check({"applications": [app]})  # still what Serve accepts
    assert ModelSource.model_validate(configs["champion"]["model_source"]) == source


def test_a_pipeline_without_a_v1_route_has_one_application_and_its_v1_stays_on_the_gateway(decls, tmp_path):
    decl = next(d for d in decls if d.name == "flights")
    assert set(pipeline_apps(decl)) == {"flights", "flights-v1"}
    v1 = pipeline_apps(decl, champion=3, traffic={"canary_share": 0.25})["flights-v1"]
    assert v1["deployments"][0]["user_config"] == {"model_version": 3, "canary_share": 0.25, "shadow": False}
    raw = yaml.safe_load((PACKAGED_PIPELINES / "flights" / "defs.yaml").read_text())
    raw["attributes"]["serving"]["v1_route"] = None  # as a user writes it: `v1_route: null`
    (tmp_path / "flights.yaml").write_text(yaml.safe_dump(raw))
    without = load_declaration(tmp_path / "flights.yaml")
    assert without.serving.v1_route is None
    assert set(pipeline_apps(without)) == {"flights"}  # the gateway's V1 route answers it
    with pytest.raises(ValueError, match="declares no serving.v1_route"):
        build_v1_app({"pipeline": "flights", "pipelines": str(tmp_path / "flights.yaml")})
