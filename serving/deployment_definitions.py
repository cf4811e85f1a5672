"""The `<pipeline>/deployment` asset and the sensor that follows the champion alias.

Materializing the asset makes Serve run the versions the `champion` and
`challenger` aliases name now: each version is loaded once here first (a broken
model fails the run, not the replicas), then the pipeline's application is
updated through user_config, which Serve rolls out replica by replica with no
failed request. The sensor starts it whenever either alias moves (promotion,
rollback, new challenger).
"""

import json
from pathlib import Path

import dagster as dg
from pydantic import Field

from mlops_assets.declaration import PipelineDeclaration
from mlops_assets.home import MlopsHome
from serving.registry import CHALLENGER, CHAMPION, resolve_alias
from serving.settings import ServeSettings


class ServingResource(dg.ConfigurableResource):
    """Where Serve runs and where its replicas find models and tables."""

    ray_address: str = Field(default="auto", description="Ray cluster to join ('auto': the one running on this host).")
    http_host: str = Field(default="127.0.0.1", description="Serve HTTP proxy host (when this call starts Serve).")
    http_port: int = Field(default=8000)
    public_url: str = Field(default="", description="URL clients use; empty: http://<http_host>:<http_port>.")
    tracking_uri: str = Field(default="", description="MLflow tracking/registry URI; empty: $MLOPS_HOME's SQLite.")
    delta_root: str = Field(default="", description="Delta table root for replicas; empty: $MLOPS_HOME/delta.")
    pipelines: str = Field(default="", description="Declaration files for replicas; empty: $MLOPS_PIPELINES or packaged.")
    gateway_replicas: int = Field(default=2, ge=1)
    rollout_timeout_s: float = Field(default=300.0, gt=0)
    log_flush_seconds: float | None = Field(default=None, gt=0, description="Prediction-log flush interval; None: the declaration's.")

    def settings(self, pipeline: str = "") -> ServeSettings:
        return ServeSettings(
            pipeline=pipeline,
            tracking_uri=self.tracking_uri,
            delta_root=self.delta_root,
            pipelines=self.pipelines,
            log_flush_seconds=self.log_flush_seconds,
        )

    def url(self) -> str:
        """The public URL when set, else where the running proxy actually listens."""
        if self.public_url:
            return self.public_url.rstrip("/")
        from serving import control

        return control.http_url()


def deployment_key(decl: PipelineDeclaration) -> dg.AssetKey:
    return dg.AssetKey([decl.name, "deployment"])


def deploy_job_name(decl: PipelineDeclaration) -> str:
    return f"{decl.name}_deploy"


def build_deployment_asset(decl: PipelineDeclaration) -> dg.AssetsDefinition:
    @dg.asset(
        key=deployment_key(decl),
        group_name=decl.name,
        kinds={"ray"},
        description=f"The Ray Serve application of {decl.name}: the `champion` on "
        f"{decl.serving.cpu.replicas} CPU replicas" + (" (+ GPU replicas where Ray sees a GPU)" if decl.serving.gpu else "")
        + ", the `challenger` for canary/shadow traffic.",
    )
    def deployment(context: dg.AssetExecutionContext, serving: ServingResource) -> dg.MaterializeResult:
        from serving import control

        control.connect(serving.ray_address)
        control.start(serving.http_host, serving.http_port)
        settings = serving.settings(decl.name)
        try:
            versions = control.follow_aliases(decl, settings, gateway_replicas=serving.gateway_replicas)
        except LookupError as err:
            raise dg.Failure(str(err)) from None
        status = control.wait_for_version(decl.name, versions[CHAMPION], serving.rollout_timeout_s)  # type: ignore[arg-type]
        traffic = control.traffic_of(decl.name)
        url = serving.url()
        replicas = {n: d["replicas"].get("RUNNING", 0) for n, d in status["deployments"].items()}
        context.log.info(f"{decl.name}: serving champion v{versions[CHAMPION]} at {url}/v2/models/{decl.name}")
        return dg.MaterializeResult(
            metadata={
                "endpoint": dg.MetadataValue.url(f"{url}/v2/models/{decl.name}"),
                "infer_url": f"{url}/v2/models/{decl.name}/infer",
                "predict_url": f"{url}/v1/models/{decl.name}:predict",
                "openapi": dg.MetadataValue.url(f"{url}/docs"),
                "champion_version": versions[CHAMPION],
                "challenger_version": versions[CHALLENGER] if versions[CHALLENGER] is not None else "none",
                "canary_share": float(traffic.get("canary_share", 0.0)),
                "shadow": bool(traffic.get("shadow", False)),
                "replicas": dg.MetadataValue.json(replicas),
                "app_status": status["status"],
            }
        )

    return deployment


ROLLOUT_RETRIES = 3


def _retry_failed_rollout(context: dg.SensorEvaluationContext, decl: PipelineDeclaration, state: dict) -> dg.RunRequest | None:
    """Request the rollout again when the last one for these aliases failed (Ray busy, a replica that
    would not start): otherwise serving keeps the old champion until the next alias move.
    At most ROLLOUT_RETRIES times per move; the failed runs stay visible in the run history."""
    moves, retries = int(state.get("moves", 0)), int(state.get("retries", 0))
    if retries >= ROLLOUT_RETRIES:
        return None
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(job_name=deploy_job_name(decl), tags={"mlops/champion_version": str(state["champion"])}), limit=1
    )
    if not records or records[0].dagster_run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        return None
    failed = records[0].dagster_run
    context.update_cursor(json.dumps({**state, "retries": retries + 1}))
    return dg.RunRequest(
        run_key=f"{decl.name}-aliases-{moves}-retry-{retries + 1}",
        tags={
            **{k: v for k, v in failed.tags.items() if k.startswith("mlops/")},
            "mlops/reason": f"retry {retries + 1} of {ROLLOUT_RETRIES}: rollout run {failed.run_id} {failed.status.value.lower()}",
        },
    )


def build_champion_sensor(decl: PipelineDeclaration, job) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{decl.name}_champion_sensor",
        job=job,
        minimum_interval_seconds=10,  # a new champion waits at most this long for its rollout
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Redeploys {decl.name} when its `champion` or `challenger` alias moves.",
    )
    def champion_sensor(context: dg.SensorEvaluationContext, serving: ServingResource):
        uri = serving.settings(decl.name).resolved_tracking_uri()
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
            return dg.SkipReason(f"no MLflow registry yet at {uri}")
        now = {"champion": resolve_alias(uri, decl.name, CHAMPION), "challenger": resolve_alias(uri, decl.name, CHALLENGER)}
        if now["champion"] is None:
            return dg.SkipReason(f"model {decl.name} has no champion yet")
        before = json.loads(context.cursor) if context.cursor else {"moves": 0}
        if before.get("champion") == now["champion"] and before.get("challenger") == now["challenger"]:
            return _retry_failed_rollout(context, decl, before) or dg.SkipReason(f"aliases unchanged (champion v{now['champion']})")
        moves = int(before.get("moves", 0)) + 1
        context.update_cursor(json.dumps({**now, "moves": moves}))
        return dg.RunRequest(
            run_key=f"{decl.name}-aliases-{moves}",
            tags={
                "mlops/champion_version": str(now["champion"]),
                "mlops/challenger_version": str(now["challenger"]),
                "mlops/reason": f"champion {before.get('champion')} -> {now['champion']}, "
                f"challenger {before.get('challenger')} -> {now['challenger']}",
            },
        )

    return champion_sensor


def build_serving_definitions(decl: PipelineDeclaration) -> dg.Definitions:
    asset = build_deployment_asset(decl)
    job = dg.define_asset_job(
        deploy_job_name(decl),
        selection=dg.AssetSelection.assets(deployment_key(decl)),
        description="Roll serving to the aliased versions.",
        # the run queue allows one rollout per pipeline at a time: a rollout started for an
        # older alias move must not wait for its version while a newer one replaces it
        tags={"mlops/deploy": decl.name},
        executor_def=dg.in_process_executor,  # steps in the run's own process: a subprocess per step cost ~3 s each of the lead time
    )
    return dg.Definitions(assets=[asset], jobs=[job], sensors=[build_champion_sensor(decl, job)])


def serving_resources(home: MlopsHome | None = None) -> dict:
    if home is None:
        return {"serving": ServingResource()}
    return {"serving": ServingResource(tracking_uri=home.mlflow_tracking_uri, delta_root=str(home.delta))}
