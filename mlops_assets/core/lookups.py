"""Declared lookups (``features.lookups``): the joins of records to reference and history tables, done by the platform.

A pipeline's feature code used to join request records against whole reference tables, so a
serving replica paid four polars joins of a one-row frame against tens of thousands of rows per
request. Declared, the platform performs them: a batch run as polars left joins
(`join_lookups`), a serving replica as probes of hash indexes built once per loaded version
(`LookupIndex`). Both start from the same prepared table (`prepare`: keys cast to the records'
declared types, the first row per key kept, null keys dropped, since a join never matches
them) and give the same frame, which `build_features` then only transforms row by row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import polars as pl

from mlops_assets.core.declaration import LookupSpec


class LookupTableError(ValueError):
    """A declared lookup that the tables cannot satisfy (a missing column, a key that cannot be typed)."""


def prepare(lookup: LookupSpec, table: pl.DataFrame, key_types: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """The table as every lookup reads it: keys typed as the records', renamed value columns, one row per key."""
    missing = [c for c in [*lookup.keys, *lookup.outputs] if c not in table.columns]
    if missing:
        raise LookupTableError(f"lookup on table '{lookup.table}': the table has no columns {missing} (it has {table.columns})")
    try:
        keyed = table.select(
            *[pl.col(k).cast(key_types[k]) for k in lookup.keys],
            *[pl.col(src).alias(out) for src, out in lookup.outputs.items()],
        )
    except pl.exceptions.PolarsError as err:
        raise LookupTableError(
            f"lookup on table '{lookup.table}': its keys {lookup.keys} do not cast to the records' types ({err})"
        ) from None
    return keyed.drop_nulls(subset=lookup.keys).unique(subset=lookup.keys, keep="first", maintain_order=True)


def _absent(lookup: LookupSpec, height: int) -> list[pl.Series]:
    """A table that is not there (a reference table never landed): its columns are null."""
    return [pl.Series(out, [None] * height, dtype=pl.Null) for out in lookup.outputs.values()]


class _Prepared:
    """Tables prepared once per table object: a backfill's days share the reference tables."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[pl.DataFrame, pl.DataFrame]] = {}

    def get(self, lookup: LookupSpec, table: pl.DataFrame, key_types: Mapping[str, pl.DataType]) -> pl.DataFrame:
        key = (lookup.table, tuple(lookup.keys), tuple(lookup.outputs.items()), id(table))
        hit = self._cache.get(key)
        if hit is None or hit[0] is not table:
            if len(self._cache) >= 32:
                self._cache.clear()
            hit = (table, prepare(lookup, table, key_types))
            self._cache[key] = hit
        return hit[1]


_PREPARED = _Prepared()


def join_lookups(
    records: pl.DataFrame, tables: Mapping[str, pl.DataFrame], lookups: Sequence[LookupSpec], key_types: Mapping[str, pl.DataType]
) -> pl.DataFrame:
    """The batch path: each lookup as a left join of the records' key columns only (a backfill's records are
    wide and long: joining them whole copied every column once per lookup), the looked-up columns then
    added to the records; order and height kept, since a prepared table has one row per key."""
    added: list[pl.Series] = []
    for lookup in lookups:
        table = tables.get(lookup.table)
        if table is None:
            added.extend(_absent(lookup, records.height))
            continue
        added.extend(_joined(records, lookup.keys, _PREPARED.get(lookup, table, key_types)))
    return records.hstack(added) if added else records


def _joined(records: pl.DataFrame, keys: list[str], prepared: pl.DataFrame) -> list[pl.Series]:
    """The looked-up columns of one prepared table for these records: a left join of their key columns only."""
    return records.select(keys).join(prepared, on=keys, how="left", maintain_order="left").drop(keys).get_columns()


class _IndexedTable(NamedTuple):
    lookup: LookupSpec
    prepared: pl.DataFrame  # keys and looked-up columns, one row per key: what a large request is joined to
    positions: dict  # key (a value, or a tuple of values) -> row
    values: pl.DataFrame  # the looked-up columns, one row per key
    rows: list[tuple]  # the same rows as Python tuples
    nulls: tuple  # what an unmatched key brings in


# records up to which serving works value by value in Python rather than through polars, whose thread pool
# sleeps between requests and costs a wake-up per call (a single-row request): the one home of that threshold
FEW_ROWS = 16


class LookupIndex:
    """The serving path: per lookup a dict from key to row, built once per loaded version.

    A few records (a single-row request) take their rows as Python tuples into one frame; more
    take them by one gather per lookup; many (a batch request) are joined as the batch path joins them,
    since polars' join outruns a dict probe per record there. Each gives the polars join's columns,
    types and values."""

    FEW_ROWS = FEW_ROWS
    JOIN_ROWS = 2_000  # about where a join (1.3 ms for any size up to here) outruns the probes (1 ms per 1,000 records)

    def __init__(self, tables: Mapping[str, pl.DataFrame], lookups: Sequence[LookupSpec], key_types: Mapping[str, pl.DataType]):
        self._tables: list[_IndexedTable] = []
        self._schema = pl.Schema()
        for lookup in lookups:
            table = tables.get(lookup.table)
            if table is None:  # never landed: its columns are null
                prepared = pl.DataFrame(schema={k: key_types[k] for k in lookup.keys}).with_columns(_absent(lookup, 0))
            else:
                prepared = prepare(lookup, table, key_types)
            keys = [prepared.get_column(k).to_list() for k in lookup.keys]
            probe = keys[0] if len(keys) == 1 else list(zip(*keys))
            values = prepared.drop(lookup.keys)
            self._schema.update(values.schema)
            positions = dict(zip(probe, range(prepared.height)))
            self._tables.append(_IndexedTable(lookup, prepared, positions, values, values.rows(), (None,) * values.width))

    def join(self, records: pl.DataFrame) -> pl.DataFrame:
        """`join_lookups` for these records, as dict probes: the same columns, types and values."""
        if not self._tables:
            return records
        if records.height > self.JOIN_ROWS:
            return records.hstack([column for table in self._tables for column in _joined(records, table.lookup.keys, table.prepared)])
        found = []  # per table, the row of each record (None: no match)
        for table in self._tables:
            keys = [records.get_column(k).to_list() for k in table.lookup.keys]
            probe = keys[0] if len(keys) == 1 else zip(*keys)
            found.append([table.positions.get(k) for k in probe])
        if records.height <= self.FEW_ROWS:
            rows = []
            for record in zip(*found):
                row: list = []
                for table, at in zip(self._tables, record):
                    row.extend(table.nulls if at is None else table.rows[at])
                rows.append(dict(zip(self._schema, row)))
            # from dicts: half the time of rows with a schema to unpack, for a frame of one row (by hand)
            added = pl.from_dicts(rows, schema=self._schema).get_columns()
        else:  # one gather per table; a null position gives a null row
            added = [
                column for table, at in zip(self._tables, found) for column in table.values[pl.Series(at, dtype=pl.UInt32)].get_columns()
            ]
        return records.hstack(added)
