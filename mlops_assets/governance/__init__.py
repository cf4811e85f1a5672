"""Governance stage: the `<pipeline>_erase` job (a data subject's rows out of every table, audited,
the models that learned from them tagged for retraining)."""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.governance.jobs import build_erase_job


def build(decl: PipelineDeclaration) -> dg.Definitions:
    return dg.Definitions(jobs=[build_erase_job(decl)])
