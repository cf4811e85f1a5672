"""``<pipeline>/prediction_log_compaction``: the prediction log kept cheap to append to and to read.

Every replica appends a small file and a log entry to the prediction log every couple of seconds, so
left alone the table grows by thousands of both an hour, and each append, which lists and replays the
log, costs more with every one (by hand: 7 ms of CPU per 2,000-row append on a new table, 58 ms after
2,000 commits). This asset rewrites the small files into large ones, gives the table its properties
(`PREDICTION_LOG_PROPERTIES`: log entries expire after 10 minutes), removes the files compaction replaced
once no reader can need them, and checkpoints. It runs in the serving-drift job, after the check has read
the rows; the rows themselves are the same before and after.
"""

from __future__ import annotations

import dagster as dg

from mlops_assets.core.declaration import PipelineDeclaration
from mlops_assets.core.names import (
    PREDICTION_LOG,
    PREDICTION_LOG_FILE_RETENTION_HOURS,
    PREDICTION_LOG_PROPERTIES,
    prediction_log_compaction_key,
    serving_drift_key,
)
from resources.delta_lake import DeltaLakeResource


def build_prediction_log_compaction_asset(decl: PipelineDeclaration) -> dg.AssetsDefinition:
    @dg.asset(
        key=prediction_log_compaction_key(decl),
        deps=[serving_drift_key(decl)],
        group_name=decl.name,
        kinds={"delta"},
        description="The prediction log's small files rewritten into large ones, its expired log entries and "
        "replaced files removed, so replicas' appends and the monitors' reads stay cheap; the rows are unchanged.",
    )
    def prediction_log_compaction(delta: DeltaLakeResource) -> dg.MaterializeResult:
        figures = delta.compact(decl.name, PREDICTION_LOG, PREDICTION_LOG_PROPERTIES, PREDICTION_LOG_FILE_RETENTION_HOURS)
        return dg.MaterializeResult(metadata={k: dg.MetadataValue.int(v) for k, v in figures.items()})

    return prediction_log_compaction
