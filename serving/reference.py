"""The feature reference a serving replica joins request records against.

Built once per model load with the features asset's own `reference_as_of`, for
the day after the latest ingested day: the reference tables plus history
statistics over the `history_days` days up to and including that day, exactly
what the features asset would use for the next day.
"""

from __future__ import annotations

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.feature_contract import FeatureModule, FeatureReference
from mlops_assets.core.names import RAW
from mlops_assets.core.partitions import first_partition, shift
from resources.delta_lake import DeltaLakeResource
from resources.pipeline_tables import reference_as_of


def serving_reference(decl: PipelineDeclaration, module: FeatureModule, delta: DeltaLakeResource) -> tuple[FeatureReference, dict]:
    """The reference and what it was built from (for status and lineage)."""
    ingested = delta.partitions(decl.name, RAW)
    next_day = shift(decl, ingested[-1], 1) if ingested else first_partition(decl)
    reference, lineage = reference_as_of(delta, decl, module, next_day)
    used = lineage["history_partitions"]
    info = {
        "reference_versions": lineage["reference_versions"],
        "history_range": f"{used[0]} .. {used[-1]}" if used else "none",
        "history_partitions": len(used),
    }
    return reference, info
