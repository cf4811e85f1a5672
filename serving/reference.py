"""The feature reference a serving replica joins request records against.

Built with the features asset's own `reference_as_of`, for the day after the
latest ingested day: the reference tables plus history statistics over the
`history_days` days up to and including that day, exactly what the features
asset would use for the next day. Built when a version loads, and again when a
table it was built from moves (`reference_sources`): a replica checks every
`serving.reference_refresh_seconds`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.feature_contract import FeatureModule, FeatureReference
from mlops_assets.core.names import RAW, reference_table
from mlops_assets.core.partitions import first_partition, shift
from resources.delta_lake import DeltaLakeResource
from resources.pipeline_tables import reference_as_of

log = logging.getLogger(__name__)


def reference_sources(decl: PipelineDeclaration, delta: DeltaLakeResource) -> dict[str, int | None]:
    """The versions of the tables a reference is built from: raw (clean rows, so the history) and each reference
    table. Reading them opens only the tables' logs."""
    tables = [RAW, *(reference_table(t) for t in decl.landing.reference_tables)]
    return {t: delta.version(decl.name, t) for t in tables}


def serving_reference(
    decl: PipelineDeclaration, module: FeatureModule, delta: DeltaLakeResource, sources: dict[str, int | None] | None = None
) -> tuple[FeatureReference, dict]:
    """The reference and what it was built from (for status, lineage and the refresh check). `sources`: the table
    versions already read (the refresh check's), else read here."""
    # read before the tables: a commit meanwhile means one more rebuild, never a missed one
    sources = reference_sources(decl, delta) if sources is None else sources
    ingested = delta.partitions(decl.name, RAW)
    next_day = shift(decl, ingested[-1], 1) if ingested else first_partition(decl)
    reference, lineage = reference_as_of(delta, decl, module, next_day)
    used = lineage["history_partitions"]
    info = {
        "reference_versions": lineage["reference_versions"],
        "history_range": f"{used[0]} .. {used[-1]}" if used else "none",
        "history_partitions": len(used),
        "sources": sources,
    }
    return reference, info


class ReferenceRefresher:
    """Calls `refresh` every `every` seconds on a thread of its own, off the request path, until closed. A check
    that fails (the store unreachable) leaves the replica serving the reference it has; the failure is logged
    and shown in the replica's status, and the next check tries again."""

    def __init__(self, refresh: Callable[[], bool], every: float, name: str):
        self.refresh = refresh
        self.every = every
        self.rebuilt = 0  # rebuilds since the replica started
        self.last_error: str | None = None
        self._closed = threading.Event()
        if every > 0:
            threading.Thread(target=self._run, name=f"reference-refresh-{name}", daemon=True).start()

    def _run(self) -> None:
        while not self._closed.wait(self.every):
            try:
                self.rebuilt += bool(self.refresh())
                self.last_error = None
            except Exception as err:
                self.last_error = f"{type(err).__name__}: {str(err)[:300]}"
                log.warning("feature reference not refreshed (kept the one it has): %s", self.last_error)

    def status(self) -> dict:
        return {"every_s": self.every, "rebuilt": self.rebuilt, "last_error": self.last_error}

    def close(self) -> None:
        self._closed.set()
