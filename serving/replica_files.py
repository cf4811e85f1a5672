"""Files a replica keeps on its host, named with the replica's process id.

A replica removes its model folder when Serve stops it. One that was killed (SIGKILL, the OOM killer, a
crash) cannot, and Serve starts a replacement that downloads the model again: every restart left a copy of
the model under the temp directory. The folder's name carries the process id, so the next replica on the
host removes the folders of processes that are gone. (The prediction log's spill claims use the same id
the same way.) This assumes the replicas sharing a temp directory share a process-id namespace, as the
processes of one Ray node do.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

MODEL_FOLDER_PREFIX = "mlops-serve-"
# mkdtemp's random suffix is letters, digits and underscores: the process id is the last number before it
_OWNER = re.compile(rf"{re.escape(MODEL_FOLDER_PREFIX)}.+-(\d+)-[a-z0-9_]+")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no process id at all (a stray folder's name)
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def model_folder(pipeline: str, role: str, parent: str | None = None) -> str:
    """A fresh folder for this replica's downloaded models, after removing those of replicas that are gone."""
    parent = parent or tempfile.gettempdir()
    remove_orphaned_model_folders(parent)
    return tempfile.mkdtemp(prefix=f"{MODEL_FOLDER_PREFIX}{pipeline}-{role}-{os.getpid()}-", dir=parent)


def remove_orphaned_model_folders(parent: str) -> list[Path]:
    """Remove the model folders whose replica process is gone; the folders removed."""
    removed = []
    for folder in Path(parent).glob(f"{MODEL_FOLDER_PREFIX}*"):
        owner = _OWNER.fullmatch(folder.name)
        if owner is None or not folder.is_dir() or process_alive(int(owner.group(1))):
            continue  # not one of these folders (or named before they carried the id), or its replica runs
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
