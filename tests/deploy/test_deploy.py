"""deploy/ is tested like code: images, Helm values, Kubernetes manifests and the Dagster
instance config are checked against the schemas of the tools that consume them, and the
Postgres storage and MLflow server run for real against a PostgreSQL started by the test."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from datetime import date
from pathlib import Path

import dagster as dg
import jsonschema
import polars as pl
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.network import free_port
from tests.support.object_store import moto_s3_server
from tests.support.postgres import postgres_server

# not (yet) in pyproject's dev extra: skip with the reason rather than fail at import
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install 'kubernetes-validate>=1.31,<2'")
DockerfileParser = pytest.importorskip("dockerfile_parse", reason="pip install 'dockerfile-parse>=2,<3'").DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33"  # oldest Kubernetes the manifests target


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def k8s_validate(resource: dict) -> None:
    """Strict: unknown fields fail, as `kubectl apply --validate=strict` would."""
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def validate_pod_template(template: dict) -> None:
    k8s_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template})


def validate_resources(resources: dict) -> None:
    """A container's resources block, validated as part of a minimal pod template."""
    validate_pod_template({"spec": {"containers": [{"name": "c", "image": "i", "resources": resources}]}})


# ---------------------------------------------------------------- images


def instructions(parser: DockerfileParser, kind: str) -> list[str]:
    return [i["value"] for i in parser.structure if i["instruction"] == kind]


def project_packages() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]


@pytest.mark.parametrize("name", ["Dockerfile.dagster", "Dockerfile.ray"])
def test_project_images_install_the_project_with_pinned_dependencies(name: str, tmp_path: Path):
    df = DockerfileParser(path=str(tmp_path / "Dockerfile"))
    df.content = (DEPLOY / "docker" / name).read_text()
    assert df.baseimage.startswith("python:3.11-slim"), "same Python as the tested virtualenv"
    copies = [c.split() for c in instructions(df, "COPY")]
    for *sources, _dest in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
    copied = {Path(src).name for *sources, _ in copies for src in sources}
    assert set(project_packages()) <= copied, "every package of the project is in the image"
    assert {"pyproject.toml", "constraints.txt"} <= copied
    installs = [r for r in instructions(df, "RUN") if "pip install" in r]
    assert any(re.search(r"pip install --constraint \S*constraints.txt \"?\.", r) for r in installs), installs
    assert not any(i == "0" or i.startswith("root") for i in instructions(df, "USER")), "images run as non-root"


def test_code_location_image_serves_the_definitions_module(tmp_path: Path):
    df = DockerfileParser(path=str(tmp_path / "Dockerfile"))
    df.content = (DEPLOY / "docker" / "Dockerfile.dagster").read_text()
    install = next(r for r in instructions(df, "RUN") if "pip install" in r)
    assert "dagster-postgres" in install and "dagster-k8s" in install, "run pods need Postgres storage and the K8s launcher"
    cmd = json.loads(df.cmd)
    module = cmd[cmd.index("-m") + 1]
    assert importlib.util.find_spec(module) is not None
    values = load_yaml(DEPLOY / "helm" / "dagster-values.yaml")
    args = values["dagster-user-deployments"]["deployments"][0]["dagsterApiGrpcArgs"]
    assert args == ["--module-name", module], "the Helm user deployment serves the same module"


def test_mlflow_image_matches_the_tested_mlflow(tmp_path: Path):
    df = DockerfileParser(path=str(tmp_path / "Dockerfile"))
    df.content = (DEPLOY / "docker" / "Dockerfile.mlflow").read_text()
    assert df.baseimage.startswith("python:3.11-slim")
    install = next(r for r in instructions(df, "RUN") if "pip install" in r)
    assert "--constraint" in install and {"mlflow", "psycopg2-binary", "boto3"} <= set(install.split())


def test_constraints_pin_every_dependency_within_pyproject_ranges():
    pins = {}
    for line in (DEPLOY / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for spec in pyproject["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned: run deploy/docker/freeze_constraints.py"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} is outside pyproject's {req.specifier}: regenerate constraints.txt"
        )
    # dagster libraries are released in lockstep: 1.13.N <-> 0.29.N
    patch = pins["dagster"].split(".")[2]
    for lib in ("dagster-postgres", "dagster-k8s", "dagster-webserver", "dagster-mlflow"):
        assert pins[lib].split(".")[2] == patch, f"{lib}=={pins[lib]} does not match dagster=={pins['dagster']}"


# ---------------------------------------------------------------- Dagster Helm chart

# Excerpt of the official chart's values.schema.json (dagster-io/dagster helm/dagster, 1.13):
# the definitions this file sets, with their closed key sets. `required` is left out: Helm
# merges these values over the chart's defaults, which supply the rest.
SOURCE = {"anyOf": [{"type": "integer"}, {"type": "object"}, {"type": "null"}]}
CHART_SCHEMA_EXCERPT = {
    "type": "object",
    "properties": {
        "runLauncher": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "type": {"enum": ["CeleryK8sRunLauncher", "K8sRunLauncher", "CustomRunLauncher"]},
                "config": {
                    "type": "object",
                    "properties": {
                        "k8sRunLauncher": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                k: {}
                                for k in [
                                    "image",
                                    "imagePullPolicy",
                                    "jobNamespace",
                                    "loadInclusterConfig",
                                    "kubeconfigFile",
                                    "envConfigMaps",
                                    "envSecrets",
                                    "envVars",
                                    "volumeMounts",
                                    "volumes",
                                    "labels",
                                    "failPodOnRunFailure",
                                    "resources",
                                    "schedulerName",
                                    "securityContext",
                                    "runK8sConfig",
                                ]
                            }
                            | {
                                "envSecrets": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                                "envConfigMaps": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                                "runK8sConfig": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        k: {"type": ["object", "null"]}
                                        for k in [
                                            "containerConfig",
                                            "podSpecConfig",
                                            "podTemplateSpecMetadata",
                                            "jobSpecConfig",
                                            "jobMetadata",
                                        ]
                                    },
                                },
                            },
                        }
                    },
                },
            },
        },
        "dagsterDaemon": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                k: {}
                for k in [
                    "enabled",
                    "image",
                    "runCoordinator",
                    "heartbeatTolerance",
                    "env",
                    "envConfigMaps",
                    "envSecrets",
                    "deploymentLabels",
                    "labels",
                    "nodeSelector",
                    "affinity",
                    "tolerations",
                    "podSecurityContext",
                    "securityContext",
                    "resources",
                    "livenessProbe",
                    "readinessProbe",
                    "startupProbe",
                    "annotations",
                    "runMonitoring",
                    "runRetries",
                    "sensors",
                    "schedules",
                    "schedulerName",
                    "volumeMounts",
                    "volumes",
                    "initContainerResources",
                ]
            }
            | {
                "runCoordinator": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["enabled", "type", "config"],
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "type": {"enum": ["QueuedRunCoordinator", "CustomRunCoordinator"]},
                        "config": {
                            "type": "object",
                            "properties": {
                                "queuedRunCoordinator": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "maxConcurrentRuns": SOURCE,
                                        "dequeueIntervalSeconds": SOURCE,
                                        "dequeueNumWorkers": SOURCE,
                                        "dequeueUseThreads": {"type": ["boolean", "null"]},
                                        "blockOpConcurrencyLimitedRuns": {"type": ["object", "null"]},
                                        "tagConcurrencyLimits": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "additionalProperties": False,
                                                "required": ["key", "limit"],
                                                "properties": {
                                                    "key": {"type": "string"},
                                                    "limit": {"type": "integer"},
                                                    "value": {
                                                        "anyOf": [
                                                            {"type": "string"},
                                                            {"type": "null"},
                                                            {
                                                                "type": "object",
                                                                "additionalProperties": False,
                                                                "required": ["applyLimitPerUniqueValue"],
                                                                "properties": {"applyLimitPerUniqueValue": {"type": "boolean"}},
                                                            },
                                                        ]
                                                    },
                                                },
                                            },
                                        },
                                    },
                                }
                            },
                        },
                    },
                },
                "runMonitoring": {"type": "object"},
                "runRetries": {"type": "object"},
            },
        },
        "postgresql": {
            "type": "object",
            "properties": {
                "enabled": {"type": "boolean"},
                "postgresqlHost": {"type": "string"},
                "postgresqlUsername": {"type": "string"},
                "postgresqlDatabase": {"type": "string"},
                "postgresqlParams": {"type": "object"},
                "postgresqlScheme": {"type": "string"},
                "service": {"type": "object", "required": ["port"], "properties": {"port": {"type": "integer"}}},
            },
        },
        "generatePostgresqlPasswordSecret": {"type": "boolean"},
        "global": {
            "type": "object",
            "properties": {"postgresqlSecretName": {"type": "string"}, "dagsterHome": {"type": "string"}},
        },
        "dagster-user-deployments": {
            "type": "object",
            "properties": {
                "enabled": {"type": "boolean"},
                "deployments": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        # UserDeployment of charts/dagster-user-deployments/values.schema.json
                        "type": "object",
                        "required": ["name", "image", "port"],
                        "additionalProperties": False,
                        "properties": {
                            k: {}
                            for k in [
                                "name",
                                "image",
                                "dagsterApiGrpcArgs",
                                "codeServerArgs",
                                "includeConfigInLaunchedRuns",
                                "port",
                                "env",
                                "envConfigMaps",
                                "envSecrets",
                                "annotations",
                                "nodeSelector",
                                "affinity",
                                "tolerations",
                                "podSecurityContext",
                                "securityContext",
                                "resources",
                                "livenessProbe",
                                "readinessProbe",
                                "startupProbe",
                                "labels",
                                "volumeMounts",
                                "volumes",
                                "schedulerName",
                                "initContainers",
                                "sidecarContainers",
                            ]
                        }
                        | {
                            "image": {"type": "object", "required": ["repository", "pullPolicy"]},
                            "dagsterApiGrpcArgs": {"type": "array", "items": {"type": "string"}},
                            "port": {"type": "integer"},
                            "envSecrets": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                            "envConfigMaps": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                            "includeConfigInLaunchedRuns": {"type": "object", "properties": {"enabled": {"type": "boolean"}}},
                        },
                    },
                },
            },
        },
        "telemetry": {"type": "object", "additionalProperties": False, "properties": {"enabled": {"type": "boolean"}}},
    },
}


@pytest.fixture(scope="module")
def helm_values() -> dict:
    return load_yaml(DEPLOY / "helm" / "dagster-values.yaml")


def test_helm_values_match_the_chart_schema(helm_values: dict):
    jsonschema.validate(helm_values, CHART_SCHEMA_EXCERPT)
    # the excerpt rejects what the chart rejects
    broken = json.loads(json.dumps(helm_values))
    broken["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["maxConcurrentRun"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, CHART_SCHEMA_EXCERPT)


def test_helm_values_launch_runs_on_kubernetes_with_external_postgres(helm_values: dict):
    assert helm_values["runLauncher"]["type"] == "K8sRunLauncher"
    assert helm_values["dagster-user-deployments"]["enabled"] is True
    assert helm_values["postgresql"]["enabled"] is False, "external Postgres, no in-cluster database"
    assert helm_values["generatePostgresqlPasswordSecret"] is False
    assert helm_values["global"]["postgresqlSecretName"], "the password comes from a Secret"
    text = (DEPLOY / "helm" / "dagster-values.yaml").read_text()
    assert "postgresqlPassword" not in text and "AWS_SECRET_ACCESS_KEY:" not in text, "no credentials in the file"
    launcher = helm_values["runLauncher"]["config"]["k8sRunLauncher"]
    validate_resources(launcher["runK8sConfig"]["containerConfig"]["resources"])
    for deployment in helm_values["dagster-user-deployments"]["deployments"]:
        validate_resources(deployment["resources"])


def test_every_dagster_process_of_the_cluster_gets_the_dagster_settings_of_the_local_home(helm_values: dict):
    """DAGSTER_ENV (planned events per range, batched event writes) is in the platform ConfigMap the README
    creates, with the same values, and every Dagster process reads that ConfigMap: the webserver and the daemon
    create runs (planned events), the code location and the run pods store the materializations."""
    from mlops_assets.cli.data_commands import DAGSTER_ENV

    readme = (DEPLOY / "README.md").read_text()
    command = readme.split("create configmap mlops-platform", 1)[1].split("```", 1)[0]
    configmap = dict(re.findall(r"--from-literal=([A-Z_][A-Z0-9_]*)=(\S+)", command))
    assert {k: configmap.get(k) for k in DAGSTER_ENV} == DAGSTER_ENV
    launcher = helm_values["runLauncher"]["config"]["k8sRunLauncher"]
    readers = {
        "webserver": helm_values["dagsterWebserver"],
        "daemon": helm_values["dagsterDaemon"],
        "run pods": launcher,
        **{f"code location {d['name']}": d for d in helm_values["dagster-user-deployments"]["deployments"]},
    }
    for who, values in readers.items():
        assert {"name": "mlops-platform"} in values.get("envConfigMaps", []), f"{who} does not read the platform ConfigMap"


def test_helm_daemon_settings_are_valid_dagster_instance_config(helm_values: dict, tmp_path: Path):
    """The chart renders these values into dagster.yaml; Dagster's own validation must accept the result."""
    pytest.importorskip("dagster_k8s", reason="pip install 'dagster-k8s>=0.29,<0.30'")
    daemon = helm_values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    snake = lambda d: {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): v for k, v in d.items()}  # noqa: E731
    launcher = helm_values["runLauncher"]["config"]["k8sRunLauncher"]
    kubeconfig = tmp_path / "kubeconfig"  # stands in for the in-cluster service account
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )
    instance = {
        "run_launcher": {
            "module": "dagster_k8s",
            "class": helm_values["runLauncher"]["type"],
            "config": {
                "dagster_home": helm_values["global"]["dagsterHome"],
                "instance_config_map": "dagster-instance",
                "postgres_password_secret": helm_values["global"]["postgresqlSecretName"],
                "service_account_name": "dagster",
                "image_pull_policy": launcher["imagePullPolicy"],
                "load_incluster_config": False,
                "kubeconfig_file": str(kubeconfig),
                "env_config_maps": [c["name"] for c in launcher["envConfigMaps"]],
                "env_secrets": [c["name"] for c in launcher["envSecrets"]],
                "run_k8s_config": snake(launcher["runK8sConfig"]),
                "fail_pod_on_run_failure": launcher["failPodOnRunFailure"],
            },
        },
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": daemon["runCoordinator"]["type"],
            "config": {
                "max_concurrent_runs": queued["maxConcurrentRuns"],
                "dequeue_interval_seconds": queued["dequeueIntervalSeconds"],
                "tag_concurrency_limits": queued["tagConcurrencyLimits"],
            },
        },
        "run_monitoring": snake(daemon["runMonitoring"]),
        "run_retries": snake(daemon["runRetries"]),
    }
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=instance) as inst:
        assert type(inst.run_launcher).__name__ == "K8sRunLauncher" and inst.run_launcher.supports_resume_run
        assert inst.run_coordinator.get_run_queue_config().max_concurrent_runs == queued["maxConcurrentRuns"]
        assert inst.run_monitoring_enabled and inst.run_retries_enabled
        assert inst.run_monitoring_max_resume_run_attempts == daemon["runMonitoring"]["maxResumeRunAttempts"]
        assert inst.run_retries_max_retries == daemon["runRetries"]["maxRetries"]


# ---------------------------------------------------------------- KubeRay RayService

# Excerpt of KubeRay's CRD (ray-project/kuberay ray-operator/config/crd/bases/ray.io_rayservices.yaml,
# ray.io/v1): the fields this manifest uses and what the CRD requires of them. Pod templates are
# validated separately against the Kubernetes PodTemplateSpec schema.
RAYSERVICE_SCHEMA_EXCERPT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rayClusterConfig", "serveConfigV2"],
            "properties": {
                "serveConfigV2": {"type": "string"},
                "upgradeStrategy": {
                    "type": "object",
                    "properties": {"type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]}},
                },
                "deploymentUnhealthySecondThreshold": {"type": "integer"},
                "serviceUnhealthySecondThreshold": {"type": "integer"},
                "excludeHeadPodFromServeSvc": {"type": "boolean"},
                "serveService": {"type": "object"},
                "rayClusterConfig": {
                    "type": "object",
                    "required": ["headGroupSpec"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": {"type": "object"},
                        "headGroupSpec": {
                            "type": "object",
                            "required": ["template"],
                            "properties": {"rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}}},
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["groupName", "maxReplicas", "minReplicas", "rayStartParams", "template"],
                                "properties": {
                                    "groupName": {"type": "string"},
                                    "replicas": {"type": "integer"},
                                    "minReplicas": {"type": "integer"},
                                    "maxReplicas": {"type": "integer"},
                                    "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return load_yaml(DEPLOY / "k8s" / "rayservice.yaml")


def test_rayservice_matches_the_kuberay_crd_and_kubernetes_pod_schema(rayservice: dict):
    jsonschema.validate(rayservice, RAYSERVICE_SCHEMA_EXCERPT)
    k8s_validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": rayservice["metadata"]})  # name/labels
    cluster = rayservice["spec"]["rayClusterConfig"]
    validate_pod_template(cluster["headGroupSpec"]["template"])
    for group in cluster["workerGroupSpecs"]:
        validate_pod_template(group["template"])
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    typo = json.loads(json.dumps(cluster["workerGroupSpecs"][0]["template"]))
    typo["spec"]["containers"][0]["resource"] = typo["spec"]["containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pod_template(typo)


def test_rayservice_has_cpu_and_gpu_groups_and_upgrades_without_downtime(rayservice: dict):
    import ray

    spec = rayservice["spec"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__, "the cluster runs the Ray the project is tested with"
    groups = {g["groupName"]: g["template"]["spec"]["containers"][0]["resources"] for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert groups["gpu"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in groups["cpu"].get("limits", {})
    gpu_spec = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")["template"]["spec"]
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu_spec["tolerations"])


def test_every_ray_container_requires_the_serving_tokens(rayservice: dict):
    """On a cluster the endpoints are reachable: pods do not start without the prediction and admin tokens."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    for template in templates:
        for container in template["spec"]["containers"]:
            env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e}
            for name in ("MLOPS_SERVE_TOKEN", "MLOPS_SERVE_ADMIN_TOKEN"):
                assert env[name]["name"] == "mlops-serving" and not env[name].get("optional", False), (container["name"], name)
            assert all(not ref.get("secretRef", {}).get("optional", False) for ref in container["envFrom"] if "secretRef" in ref)


def test_embedded_serve_config_round_trips_through_ray_serve_schema(rayservice: dict):
    from ray.serve._private.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(raw)
    again = ServeDeploySchema.model_validate(yaml.safe_load(yaml.safe_dump(schema.model_dump(mode="json", exclude_unset=True))))
    assert again == schema
    apps = {a.name: a for a in schema.applications}
    assert apps["flights"].import_path == "serving.app:build_app"
    assert apps["flights"].args == {"pipeline": "flights"}
    for app in schema.applications:
        assert callable(import_attr(app.import_path)), f"{app.import_path} resolves in the image's code"
    typo = {k: v for k, v in raw["applications"][0].items() if k != "import_path"} | {"import_pth": "x:y"}
    with pytest.raises(Exception, match="import_path"):
        ServeDeploySchema.model_validate({**raw, "applications": [typo]})


def test_embedded_serve_config_is_the_one_generated_from_the_declarations(rayservice: dict):
    sys.path.insert(0, str(DEPLOY / "k8s"))
    try:
        import sync_rayservice
    finally:
        sys.path.remove(str(DEPLOY / "k8s"))
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == sync_rayservice.expected_serve_config(), (
        "deploy/k8s/rayservice.yaml is out of date: run .venv/bin/python deploy/k8s/sync_rayservice.py"
    )
    text = (DEPLOY / "k8s" / "rayservice.yaml").read_text()
    assert sync_rayservice.render(text, sync_rayservice.expected_serve_config()) == text, "re-rendering is a no-op"


# ---------------------------------------------------------------- MLflow


def test_mlflow_manifests_validate_and_keep_credentials_in_secrets():
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "mlflow.yaml").read_text()) if d]
    for doc in docs:
        k8s_validate(doc)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    backend = next(e for e in container["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert "secretKeyRef" in backend["valueFrom"], "the Postgres URI (with its password) comes from a Secret"
    assert any("secretRef" in e for e in container["envFrom"]), "object-store credentials come from a Secret"
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate({**deployment, "spec": {**deployment["spec"], "replica": 2}})


def test_mlflow_server_accepts_the_hosts_the_platform_configmap_names():
    """The server refuses a request whose Host header is not in --allowed-hosts (403, DNS-rebinding guard): every
    MLflow URL the README's ConfigMap sets (clients' tracking URI, the UI links in Dagster) must be allowed."""
    from urllib.parse import urlsplit

    from mlflow.server.security_utils import is_allowed_host_header

    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "mlflow.yaml").read_text()) if d]
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    allowed = next(a.split("=", 1)[1] for a in args if a.startswith("--allowed-hosts=")).split(",")
    readme = (DEPLOY / "README.md").read_text()
    command = readme.split("create configmap mlops-platform", 1)[1].split("```", 1)[0]
    configmap = dict(re.findall(r"--from-literal=([A-Z_][A-Z0-9_]*)=(\S+)", command))
    for name in ("MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_UI_URL"):
        host = urlsplit(configmap[name]).netloc  # the Host header a client sends for this URL
        assert is_allowed_host_header(allowed, host), f"{name}={configmap[name]}: the MLflow server refuses Host {host}"


S3_CLIENT_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_PROFILE")


def _expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in container args."""
    return re.sub(r"\$\(([A-Z_][A-Z0-9_]*)\)", lambda m: env[m.group(1)], arg)


def test_mlflow_server_runs_on_postgres_with_artifacts_on_the_object_store(tmp_path: Path, monkeypatch):
    """The manifest's own command line, against a real Postgres and a real S3-compatible store."""
    pytest.importorskip("psycopg2", reason="pip install 'dagster-postgres>=0.29,<0.30' (brings psycopg2-binary)")
    pytest.importorskip("boto3", reason="pip install boto3 (the MLflow server's S3 artifact client)")
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "mlflow.yaml").read_text()) if d]
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    with postgres_server() as pg, moto_s3_server(tmp_path) as s3:
        pg.create_database("mlflow")
        artifact_bucket = next(a for a in container["args"] if a.startswith("--artifacts-destination="))
        bucket = artifact_bucket.split("s3://", 1)[1].split("/")[0]
        s3.client().create_bucket(Bucket=bucket)
        port = free_port()
        env = {
            **os.environ,
            **s3.env(),
            "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
            "MLFLOW_BACKEND_STORE_URI": pg.url("mlflow"),
        }
        args = [_expand(a, env) for a in container["args"]]
        args = [a for a in args if not a.startswith(("--port=", "--host=", "--workers="))]
        args += ["--host=127.0.0.1", f"--port={port}", "--workers=1", f"--allowed-hosts=127.0.0.1:{port}"]
        args = [a for i, a in enumerate(args) if not (a.startswith("--allowed-hosts=") and i < len(args) - 1)]
        log = open(tmp_path / "mlflow.log", "wb")
        server = subprocess.Popen([str(mlflow_bin), *container["command"][1:], *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            uri = f"http://127.0.0.1:{port}"
            _wait_http(f"{uri}/health", server, tmp_path / "mlflow.log")
            from mlflow import MlflowClient

            # this process holds no object-store credentials: artifacts go through the server's proxy
            for name in (*S3_CLIENT_ENV, "MLFLOW_S3_ENDPOINT_URL"):
                monkeypatch.delenv(name, raising=False)
            client = MlflowClient(tracking_uri=uri)
            run = client.create_run(client.create_experiment("deploy-check"))
            run_id = run.info.run_id
            client.log_metric(run_id, "rmse", 1.5)
            client.log_text(run_id, "hello", "notes/hello.txt")
            client.set_terminated(run_id)
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")
            # the platform's own resource, as a run pod has it (MLOPS_HOME a folder of the pod): its experiments keep
            # their artifacts where the server puts them, not in the pod's folder that is gone once the run ends
            from resources.mlflow_registry import MlflowRegistryResource

            monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "pod"))
            platform = MlflowRegistryResource(tracking_uri=uri)
            with platform.writing() as writing:
                location = writing.get_experiment(platform.experiment_id(writing, "flights")).artifact_location
            assert location.startswith("mlflow-artifacts:"), location
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
        assert pg.query("mlflow", f"SELECT key, value FROM metrics WHERE run_uuid = '{run_id}'") == [("rmse", 1.5)]
        keys = s3.keys("mlflow/", bucket=bucket)
        assert any(k.endswith(f"{run_id}/artifacts/notes/hello.txt") for k in keys), keys


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:]}")


# ---------------------------------------------------------------- dagster.yaml on Postgres

PG_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD")


def test_dagster_yaml_passes_dagster_instance_config_validation(tmp_path: Path, monkeypatch):
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    text = (DEPLOY / "dagster" / "dagster.yaml").read_text()
    for name in PG_ENV:
        assert f"{{env: {name}}}" in text, f"{name} is read from the environment"
    config, _ = dagster_instance_config(str(DEPLOY / "dagster"), "dagster.yaml")
    assert set(config["storage"]) == {"postgres"}
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["enabled"]
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    (tmp_path / "dagster.yaml").write_text(text.replace("run_monitoring:", "run_monitorin:"))
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path), "dagster.yaml")


def test_dagster_runs_on_postgres_storage(tmp_path: Path, monkeypatch, flights_decl):
    """deploy/dagster/dagster.yaml, credentials from the environment, a real flights run, a real PostgreSQL; a
    backfill over a range with the deployment's Dagster settings (DAGSTER_ENV, the platform ConfigMap's): its
    per-partition materializations are stored in batches, each partition's event with its own figures."""
    pytest.importorskip("dagster_postgres", reason="pip install 'dagster-postgres>=0.29,<0.30'")
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres.event_log.event_log import PostgresEventLogStorage

    from mlops_assets.cli.data_commands import DAGSTER_ENV
    from mlops_assets.core.names import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
    from tests.support.platform import Platform

    batches: list[int] = []  # sizes of the batches Dagster handed to the Postgres storage
    store_event_batch = PostgresEventLogStorage.store_event_batch

    def counted(self, events):
        batches.append(len(events))
        return store_event_batch(self, events)

    monkeypatch.setattr(PostgresEventLogStorage, "store_event_batch", counted)
    with postgres_server() as pg:
        pg.create_database("dagster")
        for name, value in zip(PG_ENV, ("127.0.0.1", str(pg.port), "dagster", pg.user, pg.password)):
            monkeypatch.setenv(name, value)
        for name, value in DAGSTER_ENV.items():
            monkeypatch.setenv(name, value)
        home = tmp_path / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text((DEPLOY / "dagster" / "dagster.yaml").read_text())
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            assert isinstance(instance.run_coordinator, QueuedRunCoordinator)

            from mlops_assets.defs.flights.upstream import land_days

            plat = Platform(tmp_path, [flights_decl], instance)
            land_days(flights_decl, plat.landing, date(2013, 1, 1), 4)
            plat.run("flights_reference")
            result = plat.run("flights_ingest", "2013-01-01")
            assert result.success
            days = ["2013-01-02", "2013-01-03", "2013-01-04"]
            backfill = plat.defs.resolve_job_def("flights_ingest").execute_in_process(
                instance=instance, tags={ASSET_PARTITION_RANGE_START_TAG: days[0], ASSET_PARTITION_RANGE_END_TAG: days[-1]}
            )
            assert backfill.success
            assert batches and max(batches) >= len(days), f"no batch of the range's materializations: {batches}"
            raw_events = {
                day: instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=dg.AssetKey(["flights", "raw"]), asset_partitions=[day]), limit=1
                ).records
                for day in days
            }

        stored = dict(pg.query("dagster", "SELECT run_id, status FROM runs"))
        assert stored[result.run_id] == stored[backfill.run_id] == "SUCCESS"
        materialized = pg.query(
            "dagster",
            f"SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND run_id = '{result.run_id}'",
        )[0][0]
        assert materialized >= 2, "raw, quarantine and features materializations are in Postgres"
        per_partition = pg.query(
            "dagster",
            "SELECT asset_key, partition, count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            f"AND run_id = '{backfill.run_id}' GROUP BY asset_key, partition",
        )
        assert sorted((json.loads(k)[-1], p, n) for k, p, n in per_partition) == [
            (table, day, 1) for table in ("features", "quarantine", "raw") for day in days
        ]
        landed = {day: pl.read_parquet(plat.landing.uri("flights", flights_decl.landing.file_name(day))).height for day in days}
        for day, records in raw_events.items():  # each partition's own event, with its own file's rows
            (record,) = records
            assert record.partition_key == day and record.run_id == backfill.run_id
            assert record.asset_materialization.metadata["rows"].value == landed[day]  # type: ignore[union-attr]
        assert pg.query("dagster", "SELECT to_regclass('instigators') IS NOT NULL")[0][0], "schedule storage tables exist"


# ---------------------------------------------------------------- README


def test_cluster_readme_names_settings_the_code_reads():
    """Every variable the README puts in the platform ConfigMap is read by the code or its libraries."""
    readme = (DEPLOY / "README.md").read_text()
    configmap = set(
        re.findall(r"--from-literal=([A-Z_][A-Z0-9_]*)=", readme.split("create configmap mlops-platform", 1)[1].split("```", 1)[0])
    )
    assert {"MLOPS_DELTA_URI", "MLOPS_LANDING_URI"} <= configmap
    source = "\n".join(p.read_text() for d in ("mlops_assets", "resources", "serving", "sensors") for p in (ROOT / d).rglob("*.py"))
    read_by_libraries = {"MLFLOW_TRACKING_URI", "AWS_REGION", "MLOPS_HOME"}
    for name in configmap - read_by_libraries:
        assert f'"{name}"' in source, f"the README sets {name}, which no code reads"


def test_ray_training_keeps_its_run_on_the_storage_the_configmap_names(monkeypatch):
    """`training.engine: ray` on a cluster: the workers (Ray pods) and the Dagster run pod share no folder, so Ray Train
    needs storage they all reach; the ConfigMap names an object store and the model asset's engine hands it on."""
    from types import SimpleNamespace

    from mlops_assets.models import engine

    readme = (DEPLOY / "README.md").read_text()
    command = readme.split("create configmap mlops-platform", 1)[1].split("```", 1)[0]
    configmap = dict(re.findall(r"--from-literal=([A-Z_][A-Z0-9_]*)=(\S+)", command))
    storage = configmap.get(engine.RAY_TRAIN_STORAGE_ENV, "")
    assert storage.startswith("s3://"), f"{engine.RAY_TRAIN_STORAGE_ENV}={storage!r}: Ray Train's runs need shared storage"
    calls: list[dict] = []
    monkeypatch.setattr(engine, "train_on_ray", lambda *args, **kwargs: calls.append(kwargs) or "trained")
    monkeypatch.setenv(engine.RAY_TRAIN_STORAGE_ENV, storage)
    plan = SimpleNamespace(engine="ray", ray_workers=2, num_threads=1)
    assert engine.train_as_planned(plan, None, None) == "trained"  # type: ignore[arg-type]
    assert calls == [{"storage_path": storage}]


def test_only_ingestion_and_monitoring_jobs_carry_the_backlog_tag():
    """The run queues' `mlops/backlog` limit leaves a slot free only if backlog runs carry the tag, and only they:
    a year-long backfill must not hold every slot, and training, deployment and rollouts must never be held back
    by that limit."""
    from mlops_assets.core.declaration import PACKAGED_PIPELINES, PromotionSpec, RolloutSpec, load_declaration
    from mlops_assets.definitions import build_definitions, defs

    backlog = {job.name for job in defs.resolve_all_job_defs() if (job.tags or {}).get("mlops/backlog") == "true"}
    assert backlog == {"flights_ingest", "flights_monitor", "flights_serving_drift", "flights_delivery_metrics"}
    decl = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    rollout = PromotionSpec(policy="auto", rollout=RolloutSpec(steps=[0.5, 1.0]))
    with_rollout = build_definitions([decl.model_copy(update={"promotion": rollout})])
    for name in ("flights_train", "flights_deploy", "flights_rollout"):
        assert "mlops/backlog" not in (with_rollout.resolve_job_def(name).tags or {}), name


def test_every_queue_tag_the_jobs_carry_is_limited_in_every_run_queue_config():
    """One ingestion, one training and one rollout per pipeline at a time: laptop, VM and Helm agree."""
    from mlops_assets.cli.data_commands import DAGSTER_YAML
    from mlops_assets.definitions import defs

    queue_keys = {"mlops/ingest", "mlops/training", "mlops/deploy"}
    carried = {k for job in defs.resolve_all_job_defs() for k in (job.tags or {}) if k in queue_keys}
    assert carried == queue_keys, f"jobs carry {carried}"
    helm = load_yaml(DEPLOY / "helm" / "dagster-values.yaml")["dagsterDaemon"]["runCoordinator"]["config"]
    configs = {
        "local": yaml.safe_load(DAGSTER_YAML)["run_coordinator"]["config"]["tag_concurrency_limits"],
        "vm": load_yaml(DEPLOY / "dagster" / "dagster.yaml")["run_coordinator"]["config"]["tag_concurrency_limits"],
        "helm": helm["queuedRunCoordinator"]["tagConcurrencyLimits"],
    }
    slots = {
        "local": yaml.safe_load(DAGSTER_YAML)["run_coordinator"]["config"]["max_concurrent_runs"],
        "vm": load_yaml(DEPLOY / "dagster" / "dagster.yaml")["run_coordinator"]["config"]["max_concurrent_runs"],
        "helm": helm["queuedRunCoordinator"]["maxConcurrentRuns"],
    }
    for name, limits in configs.items():
        per_pipeline = {t["key"] for t in limits if t["limit"] == 1 and t.get("value") == {"applyLimitPerUniqueValue": True}}
        assert queue_keys <= per_pipeline, f"{name}: {queue_keys - per_pipeline} not limited to one per pipeline"
        # the backlog (ingestion, monitoring) never holds every slot: training and rollouts find one free
        backlog = [t["limit"] for t in limits if t["key"] == "mlops/backlog" and t.get("value") == "true"]
        assert backlog and backlog[0] < slots[name], f"{name}: backlog runs may take all {slots[name]} slots"
