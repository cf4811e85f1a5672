"""Governance stage: `<pipeline>/model_card` per registered version with the sensor that keeps the
cards current, and the `<pipeline>_erase` job (a data subject's rows out of every table, audited,
the models that learned from them tagged for retraining)."""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import model_card_job_name, model_card_key, model_versions_partitions
from mlops_assets.governance.assets import build_model_card_asset
from mlops_assets.governance.jobs import build_erase_job
from sensors.model_card_sensor import build_model_card_sensor


def build(decl: PipelineDeclaration) -> dg.Definitions:
    versions = dg.DynamicPartitionsDefinition(name=model_versions_partitions(decl))
    card_job = dg.define_asset_job(
        model_card_job_name(decl),
        selection=dg.AssetSelection.assets(model_card_key(decl)),
        partitions_def=versions,
        description="Write the model card of a registered version.",
        executor_def=dg.in_process_executor,
    )
    return dg.Definitions(
        assets=[build_model_card_asset(decl, versions)],
        jobs=[build_erase_job(decl), card_job],
        sensors=[build_model_card_sensor(decl, card_job, versions)],
    )
