"""Changing what Serve runs: deploy a pipeline, move versions, set traffic; always declaratively.

Every change reads the applications Serve runs now, edits one pipeline's entry and
applies the whole set through the controller, as `serve deploy` would. Because
model versions and shares are `user_config` overrides, Serve reconfigures the
running replicas one at a time (rolling) instead of restarting them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import ray
from ray import serve
from ray.serve.schema import ApplicationStatus, ServeDeploySchema

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.home import MlopsHome
from mlops_assets.core.names import CHALLENGER, CHAMPION
from resources import audit_log, rollouts
from resources.registered_models import ModelSource, resolve_alias
from resources.serving import ServeSettings
from serving.config import (
    CHALLENGER_DEPLOYMENT,
    CHAMPION_DEPLOYMENT,
    CHAMPION_GPU_DEPLOYMENT,
    GATEWAY_APP,
    gateway_app,
    pipeline_apps,
    v1_app_name,
)
from serving.gpu import gpu_group_enabled
from serving.loaded_model import load_source, registered_source

_lock = threading.Lock()
log = logging.getLogger(__name__)


def published_address_file() -> Path:
    """Where the Ray cluster serving this platform home is named, for Dagster runs to join it."""
    return MlopsHome.from_env().root / "serving" / "ray_address"


def publish_address() -> None:
    """Name this process's Ray cluster (and its auth mode) in the platform home. Ray's own 'auto'
    picks the newest cluster on the host, which is the wrong one as soon as a second Ray runs
    beside ours. Ray 2.60 turns token auth on for local clusters: a process joining by address
    needs RAY_AUTH_MODE=token in its environment (the token is the user's ~/.ray/auth_token)."""
    path = published_address_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    published = {"address": ray.get_runtime_context().gcs_address, "auth_mode": os.environ.get("RAY_AUTH_MODE", "")}
    path.write_text(json.dumps(published))


def resolve_address(ray_address: str) -> str:
    """'auto' means the cluster published in the platform home while it answers, else Ray's 'auto'."""
    path = published_address_file()
    if ray_address != "auto" or not path.exists():
        return ray_address
    try:
        published = json.loads(path.read_text())
        answering = _answers(published["address"])
    except (OSError, ValueError, KeyError, TypeError):
        answering = False
    if not answering:
        return ray_address  # unreadable or stale: that cluster is gone
    if published.get("auth_mode") == "token" and os.environ.get("RAY_AUTH_MODE") != "token":
        # Ray reads the mode when it is imported, and never turns auth on for an explicit address
        raise LookupError(
            f"the serving Ray cluster at {published['address']} uses token auth: start this process with "
            "RAY_AUTH_MODE=token (the token is ~/.ray/auth_token; `mlops demo` sets it for Dagster)"
        )
    return published["address"]


def _answers(address: str) -> bool:
    """Whether something accepts connections at a Ray GCS address (host:port) within 2 s."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except (OSError, ValueError):
        return False
    return True


def connect(ray_address: str = "auto") -> None:
    """Join the running Ray cluster (no-op when this process already joined one). An address nothing answers
    at is refused at once: Ray itself retried it for minutes."""
    if not ray.is_initialized():
        address = resolve_address(ray_address)
        if address != "auto" and "://" not in address and not _answers(address):
            raise LookupError(f"no Ray cluster answers at '{address}': start one with `mlops serve start`, or give its --address")
        try:
            ray.init(address=address, namespace="serve", include_dashboard=False, log_to_driver=False)
        except ConnectionError as err:
            raise LookupError(f"no Ray cluster at '{address}': start one with `mlops serve start` ({err})") from None


def start(http_host: str = "127.0.0.1", http_port: int = 8000) -> None:
    """Start Serve's controller and proxy on this cluster if they are not running; name the cluster."""
    serve.start(http_options={"host": http_host, "port": http_port})
    publish_address()


def http_url() -> str:
    """Where the running Serve proxy listens (0.0.0.0 reported as 127.0.0.1)."""
    config = _client().http_config
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    return f"http://{host}:{config.port}"


def _client():
    from ray.serve.context import _get_global_client

    return _get_global_client()


def current_apps() -> dict[str, dict]:
    configs = ray.get(_client()._controller.get_app_configs.remote())
    return {name: cfg.model_dump(exclude_unset=True) for name, cfg in configs.items()}


def apply(apps: dict[str, dict]) -> None:
    """Apply the whole set. An application sent unchanged while Serve still builds it is waited for first:
    Serve compares code versions only once a build has finished, so resending it mid-build would cancel
    the build and start it again (the gateway, rebuilt while `mlops serve start` deployed the pipelines)."""
    current = current_apps()
    _await_builds([name for name, app in apps.items() if current.get(name) == app])
    _client().deploy_apps(ServeDeploySchema.model_validate({"applications": list(apps.values())}))


BUILD_WAIT_S = 60.0


def _await_builds(names: list[str], timeout_s: float = BUILD_WAIT_S) -> None:
    """Until none of these applications is being built (deploying with no deployments yet); past the
    timeout the caller applies anyway, and Serve restarts that build."""
    deadline = time.monotonic() + timeout_s
    while names:
        statuses = serve.status().applications
        building = [
            n for n in names if (s := statuses.get(n)) is not None and s.status == ApplicationStatus.DEPLOYING and not s.deployments
        ]
        if not building:
            return
        if time.monotonic() > deadline:
            log.warning("applications %s still building after %.0f s: applying anyway", building, timeout_s)
            return
        time.sleep(0.05)


def _user_config(app: dict, deployment: str) -> dict:
    for d in app.get("deployments", []):
        if d["name"] == deployment:
            return dict(d.get("user_config") or {})
    return {}


TRAFFIC_KEYS = ("canary_share", "shadow")


def _traffic(app: dict | None) -> dict:
    """The traffic shares in a running app's config (they sit in the champion's user_config)."""
    config = _user_config(app, CHAMPION_DEPLOYMENT) if app else {}
    return {k: config[k] for k in TRAFFIC_KEYS if k in config}


def deploy_pipeline(
    decl: PipelineDeclaration,
    settings: ServeSettings,
    champion: int | None,
    challenger: int | None,
    gateway_replicas: int = 2,
    traffic: dict | None = None,
    sources: Mapping[int, ModelSource] | None = None,
) -> dict:
    """Point the pipeline's application at these versions, keeping its traffic settings (`traffic` overrides them).

    Only `user_config` changes for a running app (a rolling reconfigure); its builder args stay
    as they are unless the settings differ, since Serve restarts every replica when args change.
    `sources`: the versions' registry entries where the caller already looked them up (else looked up here).
    """
    uri = settings.resolved_tracking_uri()
    sources = {v: (sources or {}).get(v) or registered_source(uri, decl.name, v) for v in (champion, challenger) if v is not None}
    with _lock:
        apps = current_apps()
        traffic = {**_traffic(apps.get(decl.name)), **(traffic or {})}
        apps.pop(v1_app_name(decl.name), None)  # gone if the declaration no longer has it
        apps.update(pipeline_apps(decl, settings, champion, challenger, traffic, gpu_group_enabled(decl), pinned=True, sources=sources))
        if GATEWAY_APP not in apps:
            apps[GATEWAY_APP] = gateway_app(settings, gateway_replicas)
        apply(apps)
        return apps[decl.name]


def ensure_gateway(settings: ServeSettings, replicas: int = 2) -> None:
    """Deploy the HTTP gateway if it is not running, so health endpoints answer before any model is served."""
    with _lock:
        apps = current_apps()
        if GATEWAY_APP not in apps:
            apps[GATEWAY_APP] = gateway_app(settings, replicas)
            apply(apps)


class NotGated(ValueError):
    """Traffic for a version the gates have not passed (by the platform's audit log)."""


def set_traffic(
    pipeline: str,
    canary_share: float | None = None,
    shadow: bool | None = None,
    *,
    settings: ServeSettings,
    actor: str,
    reason: str,
) -> dict:
    """Change the canary share and/or shadow switch: a champion reconfigure, no restarts and no model loads.
    Traffic only goes to a challenger whose gates passed, and the change is audited before it is applied."""
    with _lock:
        apps = current_apps()
        if pipeline not in apps:
            raise LookupError(f"pipeline '{pipeline}' is not deployed")
        app = apps[pipeline]
        before = _traffic(app)
        traffic = dict(before)
        if canary_share is not None:
            if not 0.0 <= canary_share <= 1.0:
                raise ValueError("canary_share must be between 0 and 1")
            traffic["canary_share"] = float(canary_share)
        if shadow is not None:
            traffic["shadow"] = bool(shadow)
        challenger = _user_config(app, CHALLENGER_DEPLOYMENT).get("model_version")
        if challenger is None:
            challenger = resolve_alias(settings.resolved_tracking_uri(), pipeline, CHALLENGER)
        delta = settings.delta()
        events = audit_log.history(delta, pipeline)
        if traffic.get("canary_share", 0.0) > 0 or traffic.get("shadow", False):
            if challenger is None:
                raise NotGated(f"{pipeline} has no challenger to send traffic to")
            if not audit_log.passed_gates(events, int(challenger)):
                raise NotGated(
                    f"{pipeline} v{challenger} has no record of passing its gates in the audit log: "
                    "canary and shadow traffic only go to a gated challenger"
                )
        if (rollout := rollouts.current(events)) is not None:
            raise RolloutInProgress(
                f"{pipeline}: the rollout of {rollout.describe()} sets the canary share; it ends by itself "
                f"(complete or rolled back by its guards), or `mlops abort {pipeline} --reason ...` ends it now"
            )
        audit_log.record(
            delta,
            pipeline,
            audit_log.AuditEvent(
                "traffic",
                int(challenger) if challenger is not None else None,
                actor=actor,
                reason=reason,
                alias=CHALLENGER,
                metrics={"before": before, "after": traffic},
            ),
        )
        _set_champion_config(apps, pipeline, traffic)
        apply(apps)
        return traffic


class RolloutInProgress(ValueError):
    """A manual traffic change while a progressive rollout owns the canary share."""


def _set_champion_config(apps: dict[str, dict], pipeline: str, traffic: dict) -> None:
    """The traffic shares into the champion's user_config of the pipeline's application and its V1 route's."""
    for name in (pipeline, v1_app_name(pipeline)):
        for d in apps.get(name, {}).get("deployments", []):
            if d["name"] == CHAMPION_DEPLOYMENT:
                d["user_config"] = {**(d.get("user_config") or {}), **traffic}


def apply_rollout_share(pipeline: str, share: float) -> dict:
    """The canary share a rollout step recorded in the audit log (the caller wrote that row first)."""
    with _lock:
        apps = current_apps()
        if pipeline not in apps:
            raise LookupError(f"pipeline '{pipeline}' is not deployed")
        traffic = {**_traffic(apps[pipeline]), "canary_share": float(share)}
        _set_champion_config(apps, pipeline, traffic)
        apply(apps)
        return traffic


def rollout_traffic(pipeline: str, settings: ServeSettings, challenger: int | None) -> dict | None:
    """The traffic the audit log says serving must have for these versions, where it says anything:
    the share of a rollout in progress for this challenger, or no canary without a challenger."""
    rollout = rollouts.current(audit_log.history(settings.delta(), pipeline))
    if rollout is not None and rollout.version == challenger:
        return {"canary_share": rollout.share}
    if challenger is None:
        return {"canary_share": 0.0, "shadow": False}
    return None


def traffic_of(pipeline: str) -> dict:
    return _traffic(current_apps().get(pipeline))


def aliases(decl: PipelineDeclaration, settings: ServeSettings) -> dict[str, int | None]:
    uri = settings.resolved_tracking_uri()
    return {CHAMPION: resolve_alias(uri, decl.name, CHAMPION), CHALLENGER: resolve_alias(uri, decl.name, CHALLENGER)}


def follow_aliases(decl: PipelineDeclaration, settings: ServeSettings, **kwargs) -> dict[str, int | None]:
    """Deploy what the aliases name now; each version is loaded here first, so a broken one never reaches replicas.
    A `challenger` with no record of passing its gates in the audit log (an alias set by hand in MLflow) is
    not served at all: no canary, shadow or pinned request can reach it."""
    versions = aliases(decl, settings)
    if versions[CHAMPION] is None:
        raise LookupError(f"model {decl.name} has no '{CHAMPION}' alias yet: nothing to serve")
    challenger = versions[CHALLENGER]
    if challenger is not None and not audit_log.passed_gates(audit_log.history(settings.delta(), decl.name), challenger):
        log.warning("%s: challenger v%s has no record of passing its gates in the audit log: not served", decl.name, challenger)
        versions[CHALLENGER] = None
    uri = settings.resolved_tracking_uri()
    # looked up once: the check loads what replicas will be handed (model_source)
    sources = {v: registered_source(uri, decl.name, v) for v in versions.values() if v is not None}
    with tempfile.TemporaryDirectory(prefix=f"mlops-check-{decl.name}-") as scratch:  # the check load leaves nothing behind
        for source in sources.values():
            load_source(decl.name, source, cache_dir=scratch, tracking_uri=uri)
    # a rollout's share comes from the audit log, so a restarted Serve resumes the step it was at
    traffic = rollout_traffic(decl.name, settings, versions[CHALLENGER])
    deploy_pipeline(decl, settings, versions[CHAMPION], versions[CHALLENGER], traffic=traffic, sources=sources, **kwargs)
    return versions


def app_status(name: str) -> dict:
    """Status of one application: app status and per-deployment status and replica counts."""
    status = serve.status().applications.get(name)
    if status is None:
        return {"status": "NOT_DEPLOYED", "deployments": {}}
    return {
        "status": str(status.status.value if hasattr(status.status, "value") else status.status),
        "message": status.message,
        "deployments": {
            n: {"status": str(d.status.value if hasattr(d.status, "value") else d.status), "replicas": dict(d.replica_states)}
            for n, d in status.deployments.items()
        },
    }


def wait_for_version(name: str, version: int, timeout_s: float = 180.0, deployments=(CHAMPION_DEPLOYMENT,)) -> dict:
    """Block until the pipeline's application (and its V1 route's, where deployed) runs, its deployments are
    healthy and their champions answer with `version`; the pipeline application's status."""
    deadline = time.time() + timeout_s
    apps = {name: deployments} | ({v1: (CHAMPION_DEPLOYMENT,)} if (v1 := v1_app_name(name)) in serve.status().applications else {})
    agreeing = 0
    last: dict = {}
    while time.time() < deadline:
        seen = {app: _serving(app, wanted) for app, wanted in apps.items()}
        last = {app: status for app, (status, _) in seen.items()}
        agreeing = agreeing + 1 if all(version_seen == version for _, version_seen in seen.values()) else 0
        if agreeing >= 6:
            return last[name]
        time.sleep(0.25)
    raise TimeoutError(f"application {name} did not serve version {version} within {timeout_s:.0f}s: {last}")


def _serving(app: str, deployments) -> tuple[dict, int | None]:
    """The application's status, and the version a champion replica answers with once its deployments are healthy."""
    status = app_status(app)
    healthy = status["status"] == "RUNNING" and all(status["deployments"].get(d, {}).get("status") == "HEALTHY" for d in deployments)
    if not healthy:
        return status, None
    try:
        return status, serve.get_app_handle(app).status.remote().result(timeout_s=10)["model_version"]  # a champion replica's
    except Exception:  # app still (re)building: keep polling until the deadline
        return status, None


__all__ = [
    "CHALLENGER_DEPLOYMENT",
    "CHAMPION_GPU_DEPLOYMENT",
    "apply",
    "connect",
    "current_apps",
    "deploy_pipeline",
    "follow_aliases",
    "set_traffic",
    "start",
    "wait_for_version",
]
