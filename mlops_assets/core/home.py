"""Where the platform keeps its local state.

Everything lives under one folder, ``$MLOPS_HOME`` (default ``./.mlops``), so a
user can wipe or move it: the landing zone, Delta tables, Dagster's and MLflow's
SQLite stores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MlopsHome:
    root: Path

    @classmethod
    def from_env(cls) -> "MlopsHome":
        return cls(Path(os.environ.get("MLOPS_HOME", ".mlops")).expanduser().resolve())

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def delta(self) -> Path:
        return self.root / "delta"

    @property
    def dagster(self) -> Path:
        return self.root / "dagster"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow / 'mlflow.db'}"
