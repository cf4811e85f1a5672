"""`<pipeline>/model_card`: one Markdown + HTML card per registered version (a dynamic partition per
version), opened from the Dagster UI and logged to the version's MLflow run."""

# no `from __future__ import annotations`: Dagster reads the resource annotations of the asset function

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import model_card_key, model_key
from mlops_assets.governance.model_card import build_card, write_card
from resources.delta_lake import DeltaLakeResource
from resources.mlflow_registry import MlflowRegistryResource
from resources.registered_models import get_version


def build_model_card_asset(decl: PipelineDeclaration, versions: dg.DynamicPartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key=model_card_key(decl),
        deps=[model_key(decl)],
        partitions_def=versions,
        group_name=decl.name,
        kinds={"mlflow"},
        description="The model card of a registered version: intended use, the data and Delta versions it read, features, "
        "metrics, every gate, fairness, approvals and promotions, drift and live performance. Regenerated when its story changes.",
    )
    def model_card(context: dg.AssetExecutionContext, delta: DeltaLakeResource, mlflow: MlflowRegistryResource) -> dg.MaterializeResult:
        try:
            version = int(context.partition_key)
            card = build_card(decl, delta, mlflow, version)
        except (ValueError, LookupError) as err:
            raise dg.Failure(f"model card of {decl.name} v{context.partition_key}: {err}", allow_retries=False) from None
        client = mlflow.client()
        run_id = get_version(client, decl.name, version).run_id
        md_path, html_path = write_card(card, mlflow, run_id)
        run_link = (  # a link where the platform knows the MLflow UI's address, as on the card
            dg.MetadataValue.url(mlflow.run_url(client.get_run(run_id).info.experiment_id, run_id))
            if run_id and mlflow.ui_url
            else run_id or "none"
        )
        return dg.MaterializeResult(
            metadata={
                "model_version": version,
                "card": dg.MetadataValue.md(card.markdown),
                "html": dg.MetadataValue.path(str(html_path)),
                "markdown": dg.MetadataValue.path(str(md_path)),
                "mlflow_run": run_link,
            }
        )

    return model_card
