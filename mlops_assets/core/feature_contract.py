"""The contract between the platform and a pipeline's feature code.

A feature module is plain Python named in the declaration (``features.module``):

- ``build_features(records, reference) -> pl.DataFrame``: a pure function from raw
  records to one feature row per record, in the same order. Training calls it
  on a day's clean rows; serving calls the very same function on request
  records, so the two cannot drift apart. The records arrive with the columns of
  the declared ``features.lookups`` already joined in (core/lookups.py), so the
  function only transforms rows; ``reference`` still carries every table for a
  module that joins by itself.
- ``feature_expressions(reference) -> list[pl.Expr]`` (instead of ``build_features``):
  the same row-wise transformation as polars expressions, one per output column,
  which the platform evaluates on the joined records itself. A serving replica
  builds them once per loaded version and evaluates a few rows' worth one after
  another on its own thread (polars' thread pool costs more than such work):
  about 0.08 ms for a flights row where ``build_features`` took 0.21.
- ``history_stats(history) -> dict[str, pl.DataFrame]`` (optional): aggregates
  over clean rows of *earlier* days only (the platform never passes the day
  being featurized), joined in by a declared lookup (or read from ``reference``).
- ``history_partial(day) -> dict`` and ``combine_history(partials) -> dict``
  (optional, together): the same statistics in two steps, so each day is
  aggregated once and a window of days costs one combine of small partials
  instead of re-grouping every row of the window for every day.
  ``combine_history([history_partial(d) for d in days])`` must equal
  ``history_stats(pl.concat(days))``.
- ``CATEGORICAL_FEATURES`` (optional): output columns LightGBM treats as categories.
- ``INPUT_COLUMNS`` (optional): the raw columns a request must carry; by default
  every declared column but the target.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import traceback
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import polars as pl

from mlops_assets.core.declaration import DeclarationError, LookupSpec, PipelineDeclaration
from mlops_assets.core.lookups import LookupIndex, join_lookups


@dataclass(frozen=True)
class FeatureReference:
    """Everything a feature function may look up besides the records themselves."""

    tables: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    categories: Mapping[str, list[Any]] = field(default_factory=dict)


class FeatureCodeError(RuntimeError):
    """The feature code broke its contract (wrong height, clashing names, ...)."""


# up to this many rows, feature expressions run one after another on the caller's thread: waking polars'
# pool cost more than the work (a flights row 0.09 against 0.13 ms; by hand, still ahead at 16k rows)
SEQUENTIAL_ROWS = 10_000


@dataclass(frozen=True)
class FeatureModule:
    module: ModuleType
    reserved: frozenset[str]  # key, target and platform columns the output must not reuse
    lookups: tuple[LookupSpec, ...] = ()
    key_types: Mapping[str, pl.DataType] = field(default_factory=dict)  # the records' declared types of the lookup keys
    reference_tables: frozenset[str] = frozenset()  # the declaration's landing.reference_tables names
    # a serving replica's feature expressions, built once per lookup index (one per loaded version)
    _built: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.module.__name__

    @property
    def categorical(self) -> list[str]:
        return list(getattr(self.module, "CATEGORICAL_FEATURES", []))

    def input_columns(self, decl: PipelineDeclaration) -> list[str]:
        declared = [c for c in decl.table_schema.columns if c != decl.target.column]
        wanted = list(getattr(self.module, "INPUT_COLUMNS", declared))
        unknown = [c for c in wanted if c not in decl.table_schema.columns]
        if unknown:
            raise FeatureCodeError(f"{self.name}.INPUT_COLUMNS names undeclared columns: {unknown}")
        if decl.target.column in wanted:
            raise FeatureCodeError(
                f"{self.name}.INPUT_COLUMNS names the target '{decl.target.column}': a prediction request never carries it"
            )
        return wanted

    def code_hash(self) -> str:
        """Hash of the feature source, recorded in model lineage."""
        return hashlib.sha256(inspect.getsource(self.module).encode()).hexdigest()[:16]

    @property
    def has_history(self) -> bool:
        return callable(getattr(self.module, "history_stats", None)) or self.has_partials

    def history_stats(self, history: pl.DataFrame) -> dict[str, pl.DataFrame]:
        fn = getattr(self.module, "history_stats", None)
        return self._looked_up(dict(fn(history))) if fn is not None else {}

    def _looked_up(self, history: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
        """The module's history tables, once every declared lookup is known to find its table: a lookup of a
        table that is neither a reference table nor among these (a misspelt name) would join null columns into
        every feature row. (A partition with no earlier days has no history tables: its lookups stay null.)"""
        shadowed = sorted(self.reference_tables & set(history))
        if shadowed:  # a lookup of the name would find one of the two, silently
            raise DeclarationError(
                f"{self.name}'s history statistics return {shadowed}, the name of landing.reference_tables too; rename one"
            )
        for i, lookup in enumerate(self.lookups):
            if lookup.table not in self.reference_tables and lookup.table not in history:
                raise DeclarationError(
                    f"features.lookups.{i}: table '{lookup.table}' is neither a landing.reference_tables name "
                    f"({', '.join(sorted(self.reference_tables)) or 'none declared'}) nor a table {self.name}'s history "
                    f"statistics return ({', '.join(sorted(history)) or 'none'})"
                )
        return history

    @property
    def has_partials(self) -> bool:
        return callable(getattr(self.module, "history_partial", None)) and callable(getattr(self.module, "combine_history", None))

    def history_partial(self, day: pl.DataFrame) -> dict[str, pl.DataFrame] | pl.DataFrame:
        """One day's share of the history statistics (the day's rows themselves when the
        module has no partials)."""
        return dict(self.module.history_partial(day)) if self.has_partials else day

    def combine_history(self, partials: Sequence[dict[str, pl.DataFrame] | pl.DataFrame]) -> dict[str, pl.DataFrame]:
        """History statistics from per-day partials (oldest day first; at least one)."""
        if self.has_partials:
            return self._looked_up(dict(self.module.combine_history(list(partials))))
        return self.history_stats(pl.concat(list(partials)))

    def history_from_days(self, days: Sequence[pl.DataFrame]) -> dict[str, pl.DataFrame]:
        """History statistics over several days' clean rows (oldest first; at least one frame)."""
        return self.combine_history([self.history_partial(d) for d in days])

    def lookup_index(self, reference: FeatureReference) -> LookupIndex:
        """The declared lookups as hash indexes over this reference (a serving replica builds it once per version)."""
        return LookupIndex(reference.tables, self.lookups, self.key_types)

    def build(self, records: pl.DataFrame, reference: FeatureReference, index: LookupIndex | None = None) -> pl.DataFrame:
        """The declared lookups (joins, or probes of `index` when given: the same frame), then the module's
        transformation. With `index` (serving: one per loaded version) the expressions are built once for it."""
        joined = index.join(records) if index is not None else join_lookups(records, reference.tables, self.lookups, self.key_types)
        return self._checked(self._transform(joined, reference, index), records.height)

    def _transform(self, joined: pl.DataFrame, reference: FeatureReference, index: LookupIndex | None = None) -> pl.DataFrame:
        try:
            return self._run_module(joined, reference, index)
        except pl.exceptions.ColumnNotFoundError as err:
            first = str(err).strip().splitlines()[0]
            raise FeatureCodeError(
                f"{self.name} reads a column its records do not carry ({first}): feature code gets the columns a prediction "
                f"request carries (INPUT_COLUMNS) and the declared lookups' outputs, in training as in serving; it has: "
                f"{', '.join(joined.columns)}"
            ) from err

    def _run_module(self, joined: pl.DataFrame, reference: FeatureReference, index: LookupIndex | None) -> pl.DataFrame:
        build = getattr(self.module, "feature_expressions", None)
        if build is None:
            return self.module.build_features(joined, reference)
        if index is None:
            expressions = self._expressions(build, reference)
        else:
            expressions = self._built.get(index)
            if expressions is None:
                expressions = self._built[index] = self._expressions(build, reference)
        # a few rows: one expression after another on this thread; polars' pool is woken for more
        return joined.select_seq(expressions) if joined.height <= SEQUENTIAL_ROWS else joined.select(expressions)

    def _expressions(self, build, reference: FeatureReference) -> list[pl.Expr]:
        expressions = list(build(reference))
        if not expressions or not all(isinstance(e, pl.Expr) for e in expressions):
            raise FeatureCodeError(f"{self.name}.feature_expressions must return a non-empty list of polars expressions")
        return expressions

    def _checked(self, out: object, height: int) -> pl.DataFrame:
        if not isinstance(out, pl.DataFrame):
            raise FeatureCodeError(f"{self.name}.build_features returned {type(out).__name__}, not a polars DataFrame")
        if out.height != height:
            raise FeatureCodeError(
                f"{self.name}.build_features returned {out.height} rows for {height} records; it must return one row per record, in order"
            )
        clash = sorted(self.reserved & set(out.columns))
        if clash:
            raise FeatureCodeError(f"{self.name}.build_features output reuses key/target column names: {clash}")
        return out

    def _readable(self, out: pl.DataFrame) -> pl.DataFrame:
        """LightGBM reads numbers: a text column was written to Delta and failed only at training, with a cast error.
        Checked where features are written (a range), not per served request (20 us of a 0.9 ms answer)."""
        unusable = {c: str(t) for c, t in out.schema.items() if not (t.is_numeric() or t.is_temporal() or t in (pl.Boolean, pl.Null))}
        if unusable:
            raise FeatureCodeError(
                f"{self.name} outputs columns a model cannot read: {unusable}; encode them as numbers "
                "(categories as integer codes, listed in CATEGORICAL_FEATURES)"
            )
        return out

    def build_partitions(self, records: pl.DataFrame, references: Mapping[str, FeatureReference], partition_column: str) -> pl.DataFrame:
        """`build` for the records of several partitions (a backfill range), each against its own reference.

        When every table that differs between the partitions' references (the history statistics) is a
        declared lookup, the range is one pass: those tables stacked with the partition as one more key,
        one join per lookup, one `build_features` call, instead of a join and a call per day (365 of them
        for a year); `reference.tables` then holds only the tables the range shares. Otherwise (a module that
        reads a per-day table by itself) each partition is built alone. Either way: one row per record, in order."""
        first = next(iter(references.values()))
        varying = {n for ref in references.values() for n, t in ref.tables.items() if first.tables.get(n) is not t}
        varying |= {n for ref in references.values() for n in first.tables.keys() - ref.tables.keys()}
        if varying - {lookup.table for lookup in self.lookups}:  # the module reads a per-day table itself: day by day
            numbered = records.with_row_index("_record")
            parts = numbered.partition_by(partition_column, maintain_order=True, as_dict=True)
            built = pl.concat([self.build(part.drop(partition_column, "_record"), references[key]) for (key,), part in parts.items()])
            return self._readable(built[pl.concat([part.get_column("_record") for part in parts.values()]).arg_sort()])
        stacked = {
            name: pl.concat(
                [
                    ref.tables[name].with_columns(pl.lit(p, pl.String).alias(partition_column))
                    for p, ref in references.items()
                    if name in ref.tables  # a day without the table matches nothing: null columns, as for that day alone
                ],
                how="vertical_relaxed",
            )
            for name in varying
        }
        lookups = [
            lookup.model_copy(update={"keys": [*lookup.keys, partition_column]}) if lookup.table in varying else lookup
            for lookup in self.lookups
        ]
        tables = _RangeTables({n: t for n, t in first.tables.items() if n not in varying}, varying, self.name)
        shared = FeatureReference(tables=tables, categories=first.categories)
        key_types = {**self.key_types, partition_column: pl.String}
        joined = join_lookups(records, {**shared.tables, **stacked}, lookups, key_types).drop(partition_column)
        return self._readable(self._checked(self._transform(joined, shared), records.height))


class _RangeTables(dict):
    """The tables a backfill range shares; asking for a per-day one (joined by its declared lookup) says why it is not there."""

    def __init__(self, tables: Mapping[str, pl.DataFrame], per_day: set[str], module: str):
        super().__init__(tables)
        self._per_day, self._module = per_day, module

    def __missing__(self, name: str):
        if name in self._per_day:
            raise FeatureCodeError(
                f"{self._module}.build_features read reference.tables['{name}'], which differs per day in a backfill range and "
                "is joined in by its declared lookup; use the joined columns, or do not declare the lookup and join it yourself"
            )
        raise KeyError(name)


def reserved_columns(decl: PipelineDeclaration) -> frozenset[str]:
    return frozenset({*decl.table_schema.unique, decl.target.column, "_source_row", "_partition"})


def categories(decl: PipelineDeclaration) -> dict[str, list[Any]]:
    return {n: list(c.allowed) for n, c in decl.table_schema.columns.items() if c.allowed is not None}


def _raised_at(err: Exception) -> str:
    """file:line for the user to fix: a SyntaxError's own, else the line of the imported code that raised (the frame
    after the import machinery's last, so a library failing under it names the module's line that called it)."""
    if isinstance(err, SyntaxError):
        return f"{err.filename}:{err.lineno}"
    frames = traceback.extract_tb(err.__traceback__)
    machinery = [i for i, frame in enumerate(frames) if frame.filename.startswith("<frozen importlib")]
    frame = frames[min(machinery[-1] + 1, len(frames) - 1)] if machinery else frames[-1]
    return f"{frame.filename}:{frame.lineno}"


def load_feature_module(decl: PipelineDeclaration) -> FeatureModule:
    try:
        module = importlib.import_module(decl.features.module)
    except ImportError as err:
        raise DeclarationError(f"pipeline {decl.name}: features.module '{decl.features.module}' cannot be imported ({err})") from None
    except Exception as err:  # a SyntaxError, or the module's own code raising as it loads: `mlops` printed a traceback
        raise DeclarationError(
            f"pipeline {decl.name}: features.module '{decl.features.module}' failed as it was imported, at {_raised_at(err)}: "
            f"{type(err).__name__}: {err.msg if isinstance(err, SyntaxError) else err}"
        ) from err
    if not callable(getattr(module, "build_features", None)) and not callable(getattr(module, "feature_expressions", None)):
        raise DeclarationError(
            f"pipeline {decl.name}: features.module '{decl.features.module}' has no build_features(records, reference) "
            "or feature_expressions(reference)"
        )
    columns = decl.table_schema.columns
    lookups = tuple(decl.features.lookups)
    key_types = {k: columns[k].dtype for lookup in lookups for k in lookup.keys}
    feature_module = FeatureModule(module, reserved_columns(decl), lookups, key_types, frozenset(decl.landing.reference_tables))
    requested = set(feature_module.input_columns(decl))
    for i, lookup in enumerate(lookups):
        if lookup.table not in feature_module.reference_tables and not feature_module.has_history:
            raise DeclarationError(
                f"pipeline {decl.name}: features.lookups.{i}: table '{lookup.table}' is not a landing.reference_tables name "
                f"({', '.join(sorted(feature_module.reference_tables)) or 'none declared'}), and {feature_module.name} "
                "has no history statistics (history_stats, or history_partial and combine_history)"
            )
        if lookup.table not in feature_module.reference_tables and decl.features.history_days == 0:
            raise DeclarationError(
                f"pipeline {decl.name}: features.lookups.{i}: table '{lookup.table}' comes from the history statistics, "
                "but features.history_days is 0: it would be null in every row"
            )
        unsent = [k for k in lookup.keys if k not in requested]
        if unsent:  # a prediction request would not carry them
            raise DeclarationError(
                f"pipeline {decl.name}: features.lookups.{i} ({lookup.table}) matches on {unsent}, "
                f"which are not among {feature_module.name}.INPUT_COLUMNS"
            )
    return feature_module
