"""Where a serving application finds things: one typed object passed to every deployment.

Empty values fall back to the platform's environment ($MLOPS_HOME, $MLOPS_PIPELINES),
so the checked-in serve config carries no machine-specific paths.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict

from mlops_assets.declaration import PipelineDeclaration, load_declarations
from mlops_assets.home import MlopsHome
from resources.delta_lake import DeltaLakeResource


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline: str = ""
    tracking_uri: str = ""
    delta_root: str = ""
    pipelines: str = ""  # declaration files/folders, os.pathsep separated; empty: $MLOPS_PIPELINES or packaged
    log_flush_seconds: float | None = None  # overrides the declaration (tests flush fast)

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or MlopsHome.from_env().mlflow_tracking_uri

    def delta(self) -> DeltaLakeResource:
        return DeltaLakeResource(root=self.delta_root or os.environ.get("MLOPS_DELTA_URI", ""))

    def declarations(self) -> dict[str, PipelineDeclaration]:
        return {d.name: d for d in load_declarations(self.pipelines or None)}

    def declaration(self) -> PipelineDeclaration:
        decls = self.declarations()
        if self.pipeline not in decls:
            raise LookupError(f"no pipeline named '{self.pipeline}'; declared: {', '.join(sorted(decls)) or 'none'}")
        return decls[self.pipeline]
