"""Delta Lake tables of the platform, one folder per pipeline.

Writes go through deltalake directly rather than an IO manager: a partition is
replaced with a predicate overwrite, so re-running a day replaces only that day
(the Delta IO manager overwrites the whole table when the partition column is
not a date, dagster#34064). Every commit carries the Dagster run id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import polars as pl
from dagster import ConfigurableResource
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from pydantic import Field

from mlops_assets.home import MlopsHome

PARTITION_COLUMN = "_partition"


class DeltaLakeResource(ConfigurableResource):
    """Root of the Delta tables: a local folder by default, an object-store URI in production."""

    root: str = Field(default="", description="Table root URI; empty means $MLOPS_HOME/delta.")
    storage_options: dict[str, str] = Field(default_factory=dict)
    commit_retries: int = Field(default=5, ge=0)

    def root_uri(self) -> str:
        return (self.root or str(MlopsHome.from_env().delta)).rstrip("/")

    def table_uri(self, pipeline: str, table: str) -> str:
        return f"{self.root_uri()}/{pipeline}/{table}"

    def _options(self) -> dict[str, str] | None:
        return dict(self.storage_options) or None

    def table(self, pipeline: str, table: str) -> DeltaTable | None:
        try:
            return DeltaTable(self.table_uri(pipeline, table), storage_options=self._options())
        except TableNotFoundError:
            return None

    def version(self, pipeline: str, table: str) -> int | None:
        t = self.table(pipeline, table)
        return None if t is None else t.version()

    def _commit(self, write, what: str) -> None:
        """Retry a commit that lost a race with a concurrent writer of another partition."""
        for attempt in range(self.commit_retries + 1):
            try:
                write()
                return
            except CommitFailedError as err:
                if attempt == self.commit_retries:
                    raise CommitFailedError(f"{what}: gave up after {attempt + 1} attempts: {err}") from err
                time.sleep(0.05 * 2**attempt)

    def write_partition(
        self, pipeline: str, table: str, frame: pl.DataFrame, partition: str, run_id: str
    ) -> int:
        """Replace one partition of a table (creating the table if needed); returns the new version."""
        if "'" in partition:
            raise ValueError(f"invalid partition key {partition!r}")
        frame = frame.with_columns(pl.lit(partition, dtype=pl.String).alias(PARTITION_COLUMN))
        uri = self.table_uri(pipeline, table)
        self._commit(
            lambda: write_deltalake(
                uri,
                frame.to_arrow(),
                mode="overwrite",
                predicate=f"{PARTITION_COLUMN} = '{partition}'",
                partition_by=[PARTITION_COLUMN],
                storage_options=self._options(),
                commit_properties=CommitProperties(
                    custom_metadata={"dagster_run_id": run_id, "partition": partition}
                ),
            ),
            f"writing {table} partition {partition}",
        )
        return self.version(pipeline, table)  # type: ignore[return-value]

    def overwrite(self, pipeline: str, table: str, frame: pl.DataFrame, run_id: str) -> int:
        uri = self.table_uri(pipeline, table)
        self._commit(
            lambda: write_deltalake(
                uri,
                frame.to_arrow(),
                mode="overwrite",
                schema_mode="overwrite",
                storage_options=self._options(),
                commit_properties=CommitProperties(custom_metadata={"dagster_run_id": run_id}),
            ),
            f"overwriting {table}",
        )
        return self.version(pipeline, table)  # type: ignore[return-value]

    def append(self, pipeline: str, table: str, frame: pl.DataFrame, run_id: str = "") -> int:
        uri = self.table_uri(pipeline, table)
        self._commit(
            lambda: write_deltalake(
                uri,
                frame.to_arrow(),
                mode="append",
                storage_options=self._options(),
                commit_properties=CommitProperties(custom_metadata={"dagster_run_id": run_id}),
            ),
            f"appending to {table}",
        )
        return self.version(pipeline, table)  # type: ignore[return-value]

    def scan(self, pipeline: str, table: str, version: int | None = None) -> pl.LazyFrame | None:
        if self.table(pipeline, table) is None:
            return None
        return pl.scan_delta(
            self.table_uri(pipeline, table), version=version, storage_options=self._options()
        )

    def read_partitions(
        self, pipeline: str, table: str, partitions: Sequence[str], version: int | None = None
    ) -> pl.DataFrame | None:
        """Rows of the given partitions, or None when the table does not exist yet."""
        lf = self.scan(pipeline, table, version)
        if lf is None:
            return None
        return lf.filter(pl.col(PARTITION_COLUMN).is_in(list(partitions))).collect()

    def partitions(self, pipeline: str, table: str) -> list[str]:
        t = self.table(pipeline, table)
        if t is None:
            return []
        return sorted({p[PARTITION_COLUMN] for p in t.partitions()})
