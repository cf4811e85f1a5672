"""Where the platform keeps its local state.

Everything lives under one folder, ``$MLOPS_HOME`` (default ``./.mlops``), so a
user can wipe or move it: the landing zone, Delta tables, Dagster's and MLflow's
SQLite stores.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# what the platform writes in a home (the only entries `mlops demo --reset` removes)
PLATFORM_FOLDERS = ("landing", "delta", "dagster", "mlflow", "reports", "serving")
LOCK_FILE = "platform.lock"  # held by the `mlops demo` running on the home; kept by `--reset`


@dataclass(frozen=True)
class MlopsHome:
    root: Path

    @classmethod
    def from_env(cls) -> "MlopsHome":
        # an empty MLOPS_HOME is unset: read as a path it was the current folder, which `demo --reset` deleted
        return cls(Path(os.environ.get("MLOPS_HOME") or ".mlops").expanduser().resolve())

    def is_platform(self) -> bool:
        return self.root.is_dir() and any((self.root / folder).is_dir() for folder in PLATFORM_FOLDERS)

    def require_platform(self) -> "MlopsHome":
        """For commands that read or change what a platform holds: a mistyped $MLOPS_HOME read as an empty
        platform (an erasure that found nothing reported as done, a status of no champion)."""
        if not self.is_platform():
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
        strangers = sorted(p.name for p in self.root.iterdir() if p.name not in (*PLATFORM_FOLDERS, LOCK_FILE))
        if strangers:
            shown = ", ".join(strangers[:5]) + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
            raise ValueError(
                f"--reset deletes a platform home only, and MLOPS_HOME {self.root} also holds {shown}: "
                "set MLOPS_HOME to the platform's own folder, or remove this one yourself"
            )

    def hold(self) -> IO[str]:
        """An exclusive lock on the home for as long as the returned file stays open: a second demo on the same
        home (or its `--reset`) deleted the stores of the one running, which went on serving a model its registry
        no longer held. Raises ValueError naming the process that holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = open(self.root / LOCK_FILE, "a+")  # noqa: SIM115 (held open on purpose: closing releases the lock)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise ValueError(
                f"a platform is already running on MLOPS_HOME {self.root} ({holder}): stop it first (Ctrl-C where it "
                "runs), or set MLOPS_HOME to another folder"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"mlops demo, pid {os.getpid()}\n")
        lock.flush()
        return lock

    def clear(self) -> None:
        """Remove what the platform wrote (the folders `require_resettable` allows), keeping the lock held on it."""
        for folder in PLATFORM_FOLDERS:
            if (self.root / folder).exists():
                shutil.rmtree(self.root / folder)

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
