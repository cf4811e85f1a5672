"""The `<pipeline>/deployment` asset (the champion sensor in sensors/ starts it).

Materializing the asset makes Serve run the versions the `champion` and
`challenger` aliases name now: each version is loaded once here first (a broken
model fails the run, not the replicas), then the pipeline's application is
updated through user_config, which Serve rolls out replica by replica with no
failed request.
"""

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import (
    CHALLENGER,
    CHAMPION,
    deployment_key,
)
from resources.serving import ServingResource


def build_deployment_asset(decl: PipelineDeclaration) -> dg.AssetsDefinition:
    @dg.asset(
        key=deployment_key(decl),
        group_name=decl.name,
        kinds={"ray"},
        description=f"The Ray Serve application of {decl.name}: the `champion` on "
        f"{decl.serving.cpu.replicas} CPU replicas"
        + (" (+ GPU replicas where Ray sees a GPU)" if decl.serving.gpu else "")
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
        refused = control.aliases(decl, settings)[CHALLENGER] if versions[CHALLENGER] is None else None
        if refused is not None:
            context.log.warning(f"{decl.name}: challenger v{refused} has no record of passing its gates: not served")
        status = control.wait_for_version(decl.name, versions[CHAMPION], serving.rollout_timeout_s)  # type: ignore[arg-type]
        traffic = control.traffic_of(decl.name)
        url = serving.public_url.rstrip("/") if serving.public_url else control.http_url()  # where the proxy listens
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
                "challenger_refused": f"v{refused}: no record of passing its gates" if refused is not None else "none",
                "canary_share": float(traffic.get("canary_share", 0.0)),
                "shadow": bool(traffic.get("shadow", False)),
                "replicas": dg.MetadataValue.json(replicas),
                "app_status": status["status"],
            }
        )

    return deployment
