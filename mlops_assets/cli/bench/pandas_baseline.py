"""The flights pipeline written in plain pandas: what a user would write instead of the platform.

Same logic as ``ingest.conform`` + ``validation.validate`` + ``flights.features``,
vectorised the way a competent pandas user would write it (boolean masks per
check, ``merge`` for the joins, ``groupby`` for the history statistics), driven
by the same declaration so the checks and categories are the same. It returns
the same things the platform does: clean rows, quarantined rows with the same
readable reason per row, and one feature row per clean row, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlops_assets.core.declaration import ColumnSpec, SchemaSpec

SOURCE_ROW = "_source_row"
REASON = "_reason"
WEATHER_COLUMNS = ["temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
INT_RANGE = {t: (np.iinfo(t).min, np.iinfo(t).max) for t in ("int8", "int16", "int32", "int64")}
NULLABLE_INT = {"int8": "Int8", "int16": "Int16", "int32": "Int32", "int64": "Int64"}
BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass
class PandasResult:
    clean: pd.DataFrame
    quarantine: pd.DataFrame  # typed columns + _source_row + _reason


def _text(values: pd.Series) -> pd.Series:
    return values.astype(str).where(values.notna(), None)


def _cast(source: pd.Series, spec: ColumnSpec) -> pd.Series:
    t = spec.type
    if t in INT_RANGE:
        if source.dtype == object:
            source = pd.to_numeric(source.str.strip(), errors="coerce")
        values = source.astype("float64") if source.dtype.kind == "f" else source
        lo, hi = INT_RANGE[t]
        ok = values.notna() & (values >= lo) & (values <= hi)
        if values.dtype.kind == "f":
            ok &= values == values.round(0)
        return values.where(ok).astype(NULLABLE_INT[t])
    if t in ("float32", "float64"):
        if source.dtype == object:
            source = pd.to_numeric(source.str.strip(), errors="coerce")
        return source.astype(t)
    if t == "str":
        return source if source.dtype == object else _text(source)
    if t == "datetime":
        if source.dtype == object:
            source = source.str.strip()
        return pd.to_datetime(source, utc=True, errors="coerce").astype("datetime64[us, UTC]")
    if t == "date":
        return pd.to_datetime(source, errors="coerce").dt.date
    if t == "bool":
        if source.dtype == bool:
            return source
        return source.astype(str).str.strip().str.lower().map(BOOL_WORDS).astype("boolean")
    raise ValueError(f"unsupported type {t}")


def _number(values: pd.Series) -> pd.Series:
    """Numbers as polars prints them: integers plain, floats with at least one decimal."""
    if values.dtype.kind == "f":
        return values.map(repr)
    return values.astype(str)


def ingest_validate(frame: pd.DataFrame, schema: SchemaSpec) -> PandasResult:
    """Cast to the declared types and split into clean and quarantined rows, with reasons."""
    missing = [c for c in schema.columns if c not in frame.columns]
    if missing:
        raise ValueError(f"missing declared columns: {', '.join(missing)}")
    n = len(frame)
    rows = np.arange(n)
    typed = pd.DataFrame({name: _cast(frame[name], spec) for name, spec in schema.columns.items()})
    flagged: list[np.ndarray] = []
    reasons: list[pd.Series] = []

    def add(mask: pd.Series | np.ndarray, reason: str | Callable[[np.ndarray], pd.Series]) -> None:
        """Record `reason` for the rows in `mask`; reason texts are built for those rows only."""
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            hit = rows[mask]
            flagged.append(hit)
            text = reason if isinstance(reason, str) else np.asarray(reason(mask))
            reasons.append(pd.Series(text, index=hit))

    for name, spec in schema.columns.items():
        source, cast = frame[name], typed[name]
        failed = source.notna().to_numpy() & cast.isna().to_numpy()
        add(failed, lambda m, n=name, s=source, t=spec.type: f"{n}: cannot read '" + _text(s[m]) + f"' as {t}")
        null = cast.isna().to_numpy()
        if not spec.nullable:
            add(null, f"{name}: null in a required column")
        present = ~null
        if spec.min is not None:
            below = present & (cast < spec.min).fillna(False).to_numpy()
            add(below, lambda m, n=name, c=cast, v=spec.min: f"{n}: " + _number(c[m]) + f" is below the minimum {v}")
        if spec.max is not None:
            above = present & (cast > spec.max).fillna(False).to_numpy()
            add(above, lambda m, n=name, c=cast, v=spec.max: f"{n}: " + _number(c[m]) + f" is above the maximum {v}")
        if spec.allowed is not None:
            unknown = present & ~cast.isin(spec.allowed).to_numpy()
            add(unknown, lambda m, n=name, c=cast: f"{n}: unknown category '" + c[m].astype(str) + "'")
    if schema.unique:
        add(typed.duplicated(list(schema.unique), keep=False), f"duplicate key ({', '.join(schema.unique)})")

    typed[SOURCE_ROW] = rows.astype(np.uint32)
    if not flagged:
        quarantine = typed.iloc[:0].assign(**{REASON: pd.Series(dtype=object)})
        return PandasResult(clean=typed, quarantine=quarantine)
    problems = pd.concat(reasons).rename(REASON)
    problems = problems.groupby(level=0).agg(lambda r: "; ".join(sorted(set(r))))
    bad = np.zeros(n, dtype=bool)
    bad[problems.index.to_numpy()] = True
    quarantine = typed[bad].assign(**{REASON: problems.to_numpy()})
    return PandasResult(clean=typed[~bad].reset_index(drop=True), quarantine=quarantine.reset_index(drop=True))


def history_partial(day: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One day's share of the history statistics, computed once per day as the platform's feature module does:
    completed flights per route and delay, and delay sums per carrier (the same algorithm on both sides)."""
    flown = day[day["arr_delay"].notna()]
    return {
        "route_delays": flown.groupby(["origin", "dest", "arr_delay"], sort=False).size().rename("n").reset_index(),
        "carrier_delays": flown.groupby("carrier", sort=False)["arr_delay"].agg(["sum", "count"]).reset_index(),
    }


def combine_history(partials: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Route and carrier delay statistics over the days whose partials are given: the mean from the delay counts,
    the 75th percentile as polars' 'nearest' quantile read off the combined counts."""
    routes = pd.concat([p["route_delays"] for p in partials], ignore_index=True)
    routes = routes.groupby(["origin", "dest", "arr_delay"], sort=True)["n"].sum().reset_index()
    routes["weighted"] = routes["arr_delay"] * routes["n"]
    by_route = routes.groupby(["origin", "dest"], sort=False)
    flights = by_route["n"].transform("sum")
    position = np.floor((flights - 1) * 0.75 + 0.5)
    p75 = routes[by_route["n"].cumsum() > position].groupby(["origin", "dest"], sort=False)["arr_delay"].first()
    totals = by_route[["weighted", "n"]].sum()
    route = pd.DataFrame(
        {
            "route_mean_arr_delay": totals["weighted"] / totals["n"],
            "route_p75_arr_delay": p75,
            "route_flights": totals["n"].astype("int32"),
        }
    ).reset_index()
    carriers = pd.concat([p["carrier_delays"] for p in partials], ignore_index=True).groupby("carrier", sort=False)[["sum", "count"]].sum()
    carrier = (carriers["sum"] / carriers["count"]).rename("carrier_mean_arr_delay").reset_index()
    return {"route_stats": route, "carrier_stats": carrier}


def prepare_reference(weather: pd.DataFrame, planes: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Weather and planes as the joins need them (once, not per day)."""
    w = weather[["origin", "time_hour", *WEATHER_COLUMNS]].copy()
    w["time_hour"] = pd.to_datetime(w["time_hour"], utc=True).astype("datetime64[us, UTC]")
    w[WEATHER_COLUMNS] = w[WEATHER_COLUMNS].astype("float64")
    w = w.drop_duplicates(["origin", "time_hour"], keep="first")
    p = planes[["tailnum", "year", "seats"]].rename(columns={"year": "_plane_year"})
    p = p.astype({"_plane_year": "float64", "seats": "float64"}).drop_duplicates("tailnum", keep="first")
    return {"weather": w, "planes": p}


def _codes(values: pd.Series, allowed: list) -> pd.Series:
    return values.map({v: i for i, v in enumerate(allowed)}).astype("Int16")


def build_features(
    records: pd.DataFrame, reference: dict[str, pd.DataFrame], stats: dict[str, pd.DataFrame], categories: dict[str, list]
) -> pd.DataFrame:
    frame = records.merge(reference["weather"], on=["origin", "time_hour"], how="left")
    frame = frame.merge(reference["planes"], on="tailnum", how="left")
    route, carrier = stats["route_stats"], stats["carrier_stats"]
    if len(route):
        frame = frame.merge(route, on=["origin", "dest"], how="left")
    else:
        frame[["route_mean_arr_delay", "route_p75_arr_delay", "route_flights"]] = np.nan
    if len(carrier):
        frame = frame.merge(carrier, on="carrier", how="left")
    else:
        frame["carrier_mean_arr_delay"] = np.nan
    dates = pd.to_datetime(pd.DataFrame({"year": frame["year"], "month": frame["month"], "day": frame["day"]}), errors="coerce")
    out = pd.DataFrame(
        {
            "dep_month": frame["month"].astype("Int8"),
            "day_of_week": (dates.dt.dayofweek + 1).astype("Int8"),
            "dep_hour": (frame["sched_dep_time"] // 100).astype("Int8"),
            "dep_delay": frame["dep_delay"].astype("float64"),
            "distance": frame["distance"].astype("float64"),
            "carrier_code": _codes(frame["carrier"], categories["carrier"]),
            "origin_code": _codes(frame["origin"], categories["origin"]),
            "dest_code": _codes(frame["dest"], categories["dest"]),
        }
    )
    for c in WEATHER_COLUMNS:
        out[c] = frame[c]
    out["plane_age"] = frame["year"].astype("float64") - frame["_plane_year"]
    out["seats"] = frame["seats"]
    out["route_mean_arr_delay"] = frame["route_mean_arr_delay"].astype("float64")
    out["route_p75_arr_delay"] = frame["route_p75_arr_delay"].astype("float64")
    out["route_flights"] = frame["route_flights"].fillna(0).astype("int32")
    out["carrier_mean_arr_delay"] = frame["carrier_mean_arr_delay"].astype("float64")
    return out
