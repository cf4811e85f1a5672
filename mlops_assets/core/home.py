"""Where the platform keeps its local state.

Everything lives under one folder, ``$MLOPS_HOME`` (default ``./.mlops``), so a
user can wipe or move it: the landing zone, Delta tables, Dagster's and MLflow's
SQLite stores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# what the platform writes in a home (the only entries `mlops demo --reset` removes)
PLATFORM_FOLDERS = ("landing", "delta", "dagster", "mlflow", "reports", "serving")


@dataclass(frozen=True)
class MlopsHome:
    root: Path

    @classmethod
    def from_env(cls) -> "MlopsHome":
        # an empty MLOPS_HOME is unset: read as a path it was the current folder, which `demo --reset` deleted
        return cls(Path(os.environ.get("MLOPS_HOME") or ".mlops").expanduser().resolve())

    def require_platform(self) -> "MlopsHome":
        """For commands that read or change what a platform holds: a mistyped $MLOPS_HOME read as an empty
        platform (an erasure that found nothing reported as done, a status of no champion)."""
        if not self.root.is_dir() or not any((self.root / folder).is_dir() for folder in PLATFORM_FOLDERS):
            raise ValueError(
                f"MLOPS_HOME {self.root} is not a platform home (it has none of {', '.join(PLATFORM_FOLDERS)}): "
                "set MLOPS_HOME to your platform's folder, or start one with `mlops demo`"
            )
        return self

    def require_resettable(self) -> None:
        """`--reset` deletes the home: only a folder that holds nothing but what the platform writes."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise ValueError(f"MLOPS_HOME {self.root} is a file, not a platform home")
        strangers = sorted(p.name for p in self.root.iterdir() if p.name not in PLATFORM_FOLDERS)
        if strangers:
            shown = ", ".join(strangers[:5]) + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
            raise ValueError(
                f"--reset deletes a platform home only, and MLOPS_HOME {self.root} also holds {shown}: "
                "set MLOPS_HOME to the platform's own folder, or remove this one yourself"
            )

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
