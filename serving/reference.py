"""The feature reference a serving replica joins request records against.

Built once per model load: the reference tables plus history statistics over
the clean rows of the `history_days` days up to and including the latest
ingested day, exactly what the features asset would use for the next day.
"""

from __future__ import annotations

from datetime import date, timedelta

from mlops_assets.declaration import PipelineDeclaration
from mlops_assets.feature_contract import FeatureModule, FeatureReference, categories
from mlops_assets.tables import RAW, days_before, read_clean, read_reference
from resources.delta_lake import DeltaLakeResource


def serving_reference(decl: PipelineDeclaration, module: FeatureModule, delta: DeltaLakeResource) -> tuple[FeatureReference, dict]:
    """The reference and what it was built from (for status and lineage)."""
    tables, versions = read_reference(delta, decl.name, list(decl.landing.reference_tables))
    ingested = delta.partitions(decl.name, RAW)
    history_window: list[str] = []
    if ingested and decl.features.history_days:
        next_day = (date.fromisoformat(ingested[-1]) + timedelta(days=1)).isoformat()
        history_window = days_before(next_day, decl.features.history_days)
    history = read_clean(delta, decl.name, history_window) if history_window else None
    if history is not None:
        tables.update(module.history_stats(history.select(list(decl.table_schema.columns))))
    info = {
        "reference_versions": versions,
        "history_range": f"{history_window[0]} .. {history_window[-1]}" if history_window else "none",
        "history_rows": 0 if history is None else history.height,
    }
    return FeatureReference(tables=tables, categories=categories(decl)), info
