"""Serving's configuration: `ServingResource` (where Serve runs, for the deployment asset
and the champion sensor) and `ServeSettings` (where a serving application finds models,
tables and declarations: one typed object passed to every deployment).

Empty values fall back to the platform's environment ($MLOPS_HOME, $MLOPS_PIPELINES),
so the checked-in serve config carries no machine-specific paths.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field

from mlops_assets.core.declaration import PipelineDeclaration, load_declarations
from mlops_assets.core.home import MlopsHome
from resources.delta_lake import DeltaLakeResource


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline: str = ""
    tracking_uri: str = ""
    delta_root: str = ""
    pipelines: str = ""  # declaration files/folders, os.pathsep separated; empty: $MLOPS_PIPELINES or packaged
    log_flush_seconds: float | None = None  # overrides the declaration (tests flush fast)
    spill_root: str = ""  # prediction-log batches the store refused; empty: $MLOPS_HOME/serving/prediction_log_spill

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or MlopsHome.from_env().mlflow_tracking_uri

    def spill_dir(self) -> Path:
        """This pipeline's spill folder, shared by its replicas on this host (each claims a file before appending it)."""
        root = Path(self.spill_root) if self.spill_root else MlopsHome.from_env().root / "serving" / "prediction_log_spill"
        return root / self.pipeline

    def delta(self) -> DeltaLakeResource:
        return DeltaLakeResource(root=self.delta_root or os.environ.get("MLOPS_DELTA_URI", ""))

    def declarations(self) -> dict[str, PipelineDeclaration]:
        return {d.name: d for d in load_declarations(self.pipelines or None)}

    def declaration(self) -> PipelineDeclaration:
        decls = self.declarations()
        if self.pipeline not in decls:
            raise LookupError(f"no pipeline named '{self.pipeline}'; declared: {', '.join(sorted(decls)) or 'none'}")
        return decls[self.pipeline]


class ServingResource(dg.ConfigurableResource):
    """Where Serve runs and where its replicas find models and tables."""

    ray_address: str = Field(default="auto", description="Ray cluster to join ('auto': the one running on this host).")
    http_host: str = Field(default="127.0.0.1", description="Serve HTTP proxy host (when this call starts Serve).")
    http_port: int = Field(default=8000, ge=1, le=65535)
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
